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
eval.py the full bits_per_dim. Measured (2-core CPU shared with other jobs,
--config.num_train_steps=1500, ~8 min): test decoder_nll_bits_per_dim 1.136,
bits_per_dim_uniform_prior 3.011, NMSE 0.021, usage 1.0 on both levels; the
priors (configs/vqvae2_prior.py, 1500 steps, ~5 min): bits_per_dim 2.738,
prior_nll_per_code 3.496 (bottom) and 3.784 (top) nats vs log 64 = 4.159.
Samples are less often recognisable digits than the one-level model's.
"""

from configs import base


def get_config():
  c = base.get_base_config()
  c.batch_size = 64
  c.num_train_steps = 3000
  c.log_every_steps = 250
  c.eval_every_steps = 1500
  c.checkpoint_every_steps = 1000
  c.learning_rate = 1e-3

  c.model.name = 'vqvae2'
  c.model.hidden = 64
  c.model.res_hidden = 32
  c.model.num_res_blocks = 2
  c.model.num_levels = 2
  c.model.bottom_downsamples = 1
  c.model.num_codes = 64
  c.model.code_dim = 16
  c.model.beta = 0.25
  c.model.use_ema = True
  c.model.ema_decay = 0.99
  c.model.ema_eps = 1e-5
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

  c.data.name = 'digits'
  c.data.image_size = 8
  c.data.resize = 'pad'
  c.data.binarize = 'none'

  c.eval.batch_size = 128
  return c
