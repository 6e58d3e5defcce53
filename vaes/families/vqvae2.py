"""VQ-VAE-2 family (Razavi et al. 2019): hierarchical VQ-VAE, objective and evaluation.

Objective per example (sum over levels l of the VQ-VAE terms, eq. 3 of van den
Oord et al. 2017, with its own codebook per level):
  L = -log p(x | z_q,0..L-1) + sum_l ( ||sg[z_e,l] - e^{(l)}||^2 + beta ||z_e,l - sg[e^{(l)}]||^2 )
The codebook term is dropped with EMA updates. Priors per level: vq_prior on
the 'vq_codes' of a trained run (configs/vqvae2_prior.py).
"""

import jax.numpy as jnp

from vaes.families import vqvae as _vqvae_family
from vaes.families.vqvae import (LIKELIHOODS, _recon_terms, code_stages, codebook_size,
                                 compute_dtype, resolve_upsample, validate_quantizer_config,
                                 validate_upsample)
from vaes.quantizers import QUANTIZERS, QuantizerSpec
from vaes.models.vqvae2 import VQVAE2
from vaes.registry import ConfigError, ModelFamily, register_family

# The quantisers that give one code per latent whatever rvq_stages ('rvq' and 'rfsq'
# do with rvq_stages=1 only).
ONE_CODE_QUANTIZERS = tuple(q for q in QUANTIZERS
                            if QuantizerSpec(quantizer=q, rvq_stages=2).stages == 1)


def model_config():
  """Every `config.model` field of VQ-VAE-2: the VQ-VAE's (vaes.families.vqvae
  .model_config) but num_downsamples, plus the hierarchy; the values of configs/vqvae2.py."""
  m = _vqvae_family.model_config()
  m.name = 'vqvae2'
  del m['num_downsamples']            # per level: bottom_downsamples, then one per level
  del m['arch']                       # the residual architecture only
  m.num_levels = 2                    # latent maps, each one stride-2 step above the last
  m.bottom_downsamples = 1            # stride 2^n of the bottom level
  m.likelihood = 'logistic'
  return m


def validate_config(config):
  m = config.model
  for field in ('hidden', 'res_hidden', 'num_codes', 'code_dim', 'num_levels',
                'bottom_downsamples'):
    if m[field] <= 0:
      raise ConfigError(f'config.model.{field}={m[field]}: must be a positive integer.')
  if m.likelihood not in LIKELIHOODS:
    raise ConfigError(f"config.model.likelihood='{m.likelihood}': choose one of {LIKELIHOODS}.")
  validate_quantizer_config(m)
  validate_upsample(m)
  if code_stages(m) > 1:
    raise ConfigError(f"config.model.quantizer='{m.quantizer}' with rvq_stages={m.rvq_stages} "
                      'is not offered for VQ-VAE-2 (one code per latent and level): use one of '
                      f'{ONE_CODE_QUANTIZERS}, or rvq_stages=1.')


def grids(m, shape):
  """(h_l, w_l) of each level, bottom first."""
  h, w = shape[:2]
  return [(h // 2 ** (m.bottom_downsamples + l), w // 2 ** (m.bottom_downsamples + l))
          for l in range(m.num_levels)]


def build_model(config, data_info):
  m = config.model
  h, w, c = data_info.shape
  factor = 2 ** (m.bottom_downsamples + m.num_levels - 1)
  if h % factor or w % factor:
    raise ConfigError(
        f'config.model.bottom_downsamples={m.bottom_downsamples} with num_levels='
        f'{m.num_levels} needs image sides divisible by {factor}, but the data is {h}x{w}; '
        'change config.data.image_size, bottom_downsamples or num_levels.')
  return VQVAE2(
      image_channels=c, hidden=m.hidden, res_hidden=m.res_hidden,
      num_res_blocks=m.num_res_blocks, num_levels=m.num_levels,
      bottom_downsamples=m.bottom_downsamples, vq=QuantizerSpec.from_config(m),
      likelihood=m.likelihood, dtype=compute_dtype(config),
      upsample=resolve_upsample(m.upsample))


def init_variables(model, rng, batch):
  return model.init({'params': rng}, batch['image'], train=False)


make_loss_fn = _vqvae_family.make_loss_fn  # the same objective; per-level perplexities


eval_stats = _vqvae_family.eval_stats    # the code counts come per level
eval_images = _vqvae_family.eval_images


def eval_metrics(config, data_info, totals):
  """Whole split: `vqvae.reconstruction_metrics` (uniform prior over every level's
  codes) and per level l perplexity_level_l, codebook_usage_level_l, dead_codes_level_l."""
  latents = sum(a * b for a, b in grids(config.model, data_info.shape))
  metrics = _vqvae_family.reconstruction_metrics(config, data_info, totals, latents)
  for l, counts in enumerate(totals['code_counts']):
    metrics.update(_vqvae_family.code_use_metrics(counts, f'_level_{l}'))
  return metrics


def prior_interface(config, model, data_info):
  """As vaes.families.vqvae.prior_interface, with one code grid per level."""
  m = config.model
  h, w, c = data_info.shape
  num_levels = int(data_info.num_levels)
  variance = float(data_info.train_variance)
  dims = h * w * c

  def encode(variables, x):
    out = model.apply(variables, x, train=False)
    nll, _, _ = _recon_terms(out, x, m.likelihood, variance, num_levels)
    nll = nll * dims if m.likelihood == 'logistic' else jnp.full_like(nll, jnp.nan)
    return [o['indices'].astype(jnp.int32) for o in out['levels']], nll

  def decode(variables, codes):
    dec = model.apply(variables, codes, method=VQVAE2.decode_indices)
    if m.likelihood == 'logistic':
      return (jnp.clip(dec[..., :c], -1.0, 1.0) + 1.0) / 2.0
    return jnp.clip(dec, 0.0, 1.0)

  return dict(levels=grids(m, data_info.shape), num_codes=[codebook_size(m)] * m.num_levels,
              encode=encode, decode=decode)


register_family(ModelFamily(
    name='vqvae2', build_model=build_model, init_variables=init_variables,
    make_loss_fn=make_loss_fn, eval_stats=eval_stats, eval_metrics=eval_metrics,
    eval_images=eval_images, validate_config=validate_config,
    implementation_fields=_vqvae_family.IMPLEMENTATION_FIELDS, prior_interface=prior_interface))
