"""Priors over VQ-VAE-2 codes (Razavi et al. 2019, sec. 3.2): a gated PixelCNN
for the top level p(z_1) and one for the bottom level conditioned on the top
codes p(z_0 | z_1), trained together (the loss is the sum of both NLLs) on the
codes of a trained configs/vqvae2.py run.

  python train.py --config=configs/vqvae2.py --workdir=runs/digits_vq2
  python train.py --config=configs/vqvae2_prior.py --workdir=runs/digits_vq2_prior \
      --config.data.vqvae_workdir=runs/digits_vq2
  python eval.py  --config=configs/vqvae2_prior.py --workdir=runs/digits_vq2_prior \
      --config.data.vqvae_workdir=runs/digits_vq2

`:celeb_a` selects the paper-size variant over configs/vqvae2_256.py (32x32 top,
64x64 bottom codes). The paper's priors are PixelSNAIL-like (with attention);
this one is a gated PixelCNN without attention, 20 layers of 5x5 kernels.
Paper (ImageNet 256, recalled): top prior 3.41, bottom prior 3.44 bits per code (val).
"""

from configs import vqvae2
from configs import vqvae2_256
from configs import vqvae_prior


def get_config(variant='digits'):
  c = vqvae_prior.get_config()
  c.data.vqvae = vqvae2.get_config()
  if variant == 'celeb_a':
    c.data.vqvae = vqvae2_256.get_config()
    c.batch_size = 64
    c.num_train_steps = 100_000
    c.compute_dtype = 'bfloat16'
    c.model.channels = 128
    c.model.num_layers = 20
    c.model.kernel_size = 5
    c.model.cond_channels = 64
    c.model.dropout = 0.0
    c.eval.batch_size = 64
    c.eval.num_images = 16
    c.eval.temperatures = (1.0,)
  elif variant not in ('', 'digits'):
    raise ValueError(f"configs/vqvae2_prior.py:{variant}: choose ':digits' or ':celeb_a'.")
  return c
