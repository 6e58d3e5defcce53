"""VQ-VAE-2 (Razavi et al. 2019) on the embedded digits, small: two levels of
codes, bottom 4x4 (stride 2) and top 2x2 (stride 4) for the native 8x8 images,
the same 2:1 ratio as the paper's 64x64 / 32x32 for 256x256 inputs.

  python train.py --config=configs/vqvae2.py --workdir=runs/digits_vq2
  python eval.py  --config=configs/vqvae2.py --workdir=runs/digits_vq2
  # priors, top p(z_1) and bottom p(z_0 | z_1):
  python train.py --config=configs/vqvae2_prior.py --workdir=runs/digits_vq2_prior \
      --config.data.vqvae_workdir=runs/digits_vq2

The decoder likelihood is the discretised logistic, so eval.py reports
decoder_nll_bits_per_dim and bits_per_dim_uniform_prior, and the prior's
eval.py the full bits_per_dim. Measured with model.upsample='transpose' (the default
then; the same function) (2-core CPU shared with other jobs,
--config.num_train_steps=1500, ~8 min): test decoder_nll_bits_per_dim 1.136,
bits_per_dim_uniform_prior 3.011, NMSE 0.021, usage 1.0 on both levels; the
priors (configs/vqvae2_prior.py, 1500 steps, ~5 min): bits_per_dim 2.738,
prior_nll_per_code 3.496 (bottom) and 3.784 (top) nats vs log 64 = 4.159.
Samples are less often recognisable digits than the one-level model's.
"""

from configs import vqvae


def get_config():
  """The one-level digits config (configs/vqvae.py) with two levels of codes."""
  c = vqvae.get_config()
  c.model.name = 'vqvae2'
  del c.model['num_downsamples']      # per level: bottom_downsamples, then one per level
  c.model.num_levels = 2
  c.model.bottom_downsamples = 1
  c.model.likelihood = 'logistic'
  # Quantiser and codebook health (see vaes/quantizers.py).
  c.model.quantizer = 'vq'            # 'vq' | 'fsq' | 'rvq' (not for VQ-VAE-2)
  c.model.fsq_levels = (8, 5, 5, 5)
  c.model.rvq_stages = 1
  c.model.kmeans_init = False
  c.model.kmeans_iters = 10
  c.model.kmeans_points = 16384
  c.model.restart_after = 0           # >0: re-seed codes unused for this many steps
  c.model.cosine = False
  c.model.lookup_dim = 0
  return c
