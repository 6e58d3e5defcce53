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
from vaes.families import vqvae as vqvae_family


def get_config():
  c = base.get_base_config()
  c.batch_size = 64
  c.num_train_steps = 3000
  c.log_every_steps = 250
  c.eval_every_steps = 1500
  c.checkpoint_every_steps = 1000
  c.learning_rate = 1e-3

  c.model = vqvae_family.model_config()   # every model field and its default

  c.data.name = 'digits'
  c.data.image_size = 8
  c.data.resize = 'pad'
  c.data.binarize = 'none'

  c.eval.batch_size = 128
  return c
