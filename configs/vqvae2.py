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
from vaes.families import vqvae2 as vqvae2_family


def get_config():
  """The one-level digits config (configs/vqvae.py) with two levels of codes."""
  c = vqvae.get_config()
  c.model = vqvae2_family.model_config()   # every model field and its default
  return c
