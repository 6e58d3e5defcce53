"""Learned prior over the codes of a digits VQ-VAE (second stage of van den Oord
et al. 2017): a gated PixelCNN over the 4x4 grid of code indices.

The first stage is configs/vqvae.py with the discretised-logistic decoder (so
that bits/dim is defined); `--config=configs/vqvae_prior.py:vqvae` selects it:

  python train.py --config=configs/vqvae_prior.py:vqvae --workdir=runs/digits_vq
  python train.py --config=configs/vqvae_prior.py --workdir=runs/digits_prior \
      --config.data.vqvae_workdir=runs/digits_vq
  python eval.py  --config=configs/vqvae_prior.py --workdir=runs/digits_prior \
      --config.data.vqvae_workdir=runs/digits_vq

The first run of the prior extracts the codes of the VQ-VAE's latest checkpoint
once (one jitted encoder pass) into runs/digits_vq/codes_{key}.npz, the key a hash of
the checkpoint's content and the extraction fields (a retrained VQ-VAE gets new codes).
eval.py writes bits_per_dim, prior_nll_per_code, decoder_nll_bits_per_dim and
bits_per_dim_uniform_prior (same decoder, uniform prior over the K codes) to
eval_metrics.json, and sample grids eval_samples_t{T}.png decoded by the VQ-VAE.
Measured with model.upsample='transpose' (the default then; the same function) (2-core
CPU shared with other jobs, seed 0): the VQ-VAE, 3000 steps in ~2.5 min, test
decoder_nll_bits_per_dim 1.319, normalised MSE 0.029, usage 1.0;
this prior, 1500 steps in ~4 min: test prior_nll_per_code 2.950 nats (uniform:
log 64 = 4.159), bits_per_dim 2.383 vs bits_per_dim_uniform_prior 2.819.
Samples at temperature 0.7 are mostly recognisable digits, at 1.0 about half.
(Without dropout, a 685k-parameter prior reached 0.7 nats/code on the 1,472
training sequences and 5.5 on the test ones: the data is small.)
"""

from configs import base
from configs import vqvae
from vaes.families import vq_prior as vq_prior_family


def get_vqvae_config():
  """The first stage: configs/vqvae.py with a discrete decoder likelihood."""
  c = vqvae.get_config()
  c.model.likelihood = 'logistic'
  return c


def get_config(stage='prior'):
  if stage == 'vqvae':
    return get_vqvae_config()
  if stage not in ('', 'prior'):
    raise ValueError(f"configs/vqvae_prior.py:{stage}: choose ':vqvae' or ':prior'.")
  c = base.get_base_config()
  c.batch_size = 64
  c.num_train_steps = 1500
  c.log_every_steps = 250
  c.eval_every_steps = 250
  c.checkpoint_every_steps = 1000
  c.learning_rate = 1e-3
  c.lr_schedule = 'cosine'
  c.lr_warmup_steps = 100

  c.model = vq_prior_family.model_config()   # every model field and its default
  c.eval.update(vq_prior_family.eval_config())   # the family's eval fields and defaults

  c.data.name = 'vq_codes'
  c.data.vqvae = get_vqvae_config()   # the first stage's config, as it was trained
  c.data.vqvae_workdir = ''           # its workdir (required)
  c.data.codes_path = ''              # set by vaes.stages: the cache of the extracted codes

  c.eval.batch_size = 128
  c.eval.num_images = 64
  return c
