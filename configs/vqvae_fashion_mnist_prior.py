"""A gated PixelCNN prior over the 7x7 codes of the Fashion-MNIST VQ-VAE (the second stage
of van den Oord et al. 2017), with samples and bits/dim.

The first stage is configs/vqvae_fashion_mnist.py with the discretised-logistic decoder
(so that bits/dim is defined); `:vqvae` selects it:

  python train.py --config=configs/vqvae_fashion_mnist_prior.py:vqvae --workdir=runs/fmnist_vq_l
  python train.py --config=configs/vqvae_fashion_mnist_prior.py --workdir=runs/fmnist_prior \
      --config.data.vqvae_workdir=runs/fmnist_vq_l
  python eval.py  --config=configs/vqvae_fashion_mnist_prior.py --workdir=runs/fmnist_prior \
      --config.data.vqvae_workdir=runs/fmnist_vq_l

The prior's first run extracts the codes of the VQ-VAE's latest checkpoint (vaes/stages.py).
eval_metrics.json: bits_per_dim (prior NLL of the codes + decoder NLL, per pixel),
prior_nll_per_code, decoder_nll_bits_per_dim, bits_per_dim_uniform_prior (the same decoder
with a uniform prior over the K = 256 codes: the prior's gain), and sample grids
eval_samples_t{T}.png decoded by the VQ-VAE.
"""

from configs import vqvae_fashion_mnist
from configs import vqvae_prior


def get_vqvae_config():
  """The first stage: configs/vqvae_fashion_mnist.py with a discrete decoder likelihood."""
  c = vqvae_fashion_mnist.get_config()
  c.model.likelihood = 'logistic'
  return c


def get_config(stage='prior'):
  if stage == 'vqvae':
    return get_vqvae_config()
  if stage not in ('', 'prior'):
    raise ValueError(f"configs/vqvae_fashion_mnist_prior.py:{stage}: choose ':vqvae' or "
                     "':prior'.")
  c = vqvae_prior.get_config()        # the digits prior's fields, resized below
  c.data.vqvae = get_vqvae_config()   # the first stage's config, as it was trained
  c.batch_size = 256
  c.num_train_steps = 10_000
  c.log_every_steps = 500
  c.eval_every_steps = 2500
  c.checkpoint_every_steps = 2500
  c.lr_warmup_steps = 200
  c.model.channels = 64
  c.model.num_layers = 6
  c.model.embed_dim = 32
  c.model.out_hidden = 256
  c.model.dropout = 0.1
  c.eval.batch_size = 1000
  return c
