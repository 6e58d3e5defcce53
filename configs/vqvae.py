"""VQ-VAE on the embedded scikit-learn digits (8x8, 17 grey levels): the default
that runs anywhere in minutes, no download.

  python train.py --config=configs/vqvae.py --workdir=/tmp/vqvae
  python eval.py  --config=configs/vqvae.py --workdir=/tmp/vqvae

Images are used at their native 8x8 (data.image_size=8, no resize); one 4x4
stride-2 convolution gives a 4x4 grid of latents (16 codes per image).
Expected on a 2-core CPU (see README): training in under 5 minutes; test
perplexity >= 16, codebook usage >= 0.25, normalised MSE <= 0.1.
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

  c.model.name = 'vqvae'
  c.model.hidden = 64
  c.model.res_hidden = 32
  c.model.num_res_blocks = 2
  c.model.num_downsamples = 1
  c.model.num_codes = 64
  c.model.code_dim = 16
  c.model.beta = 0.25
  c.model.use_ema = True
  c.model.ema_decay = 0.99
  c.model.ema_eps = 1e-5
  c.model.likelihood = 'gaussian'   # 'gaussian' (MSE / train variance) | 'logistic'
  # Implementation of the decoder's 4x4 stride-2 transposed convolutions, the same
  # function and parameters (vaes/models/layers.py): 'transpose' (lax.conv_transpose)
  # | 'phases' | 'subpixel'. 'subpixel' measured 1.9x (32x32 VQ-VAE) and 2.9x
  # (VQ-VAE-2 256) faster train steps than 'transpose' on the CPU (benchmarks/README.md).
  c.model.upsample = 'subpixel'

  c.data.name = 'digits'
  c.data.image_size = 8
  c.data.resize = 'pad'
  c.data.binarize = 'none'

  c.eval.batch_size = 128
  return c
