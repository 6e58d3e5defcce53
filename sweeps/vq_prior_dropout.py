"""PixelCNN prior over the codes of a digits VQ-VAE: dropout 0, 0.3 (the default), 0.5.

  python train.py --config=configs/vqvae_prior.py:vqvae --workdir=runs/digits_vq
  python -m vaes.sweep --config=configs/vqvae_prior.py --sweep=sweeps/vq_prior_dropout.py \
      --workdir_root=runs/sweep_prior --config.data.vqvae_workdir=runs/digits_vq

The first stage is trained once; the three priors (~4 min each on a 2-core CPU) read its
codes from the same cache. With 1,500 training images the prior overfits without dropout:
compare prior_nll_per_code and bits_per_dim on the test split.
"""


def get_sweep():
  return [{'model.dropout': p} for p in (0.0, 0.3, 0.5)]
