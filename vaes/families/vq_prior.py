"""Learned prior over VQ-VAE codes (the second stage of van den Oord et al. 2017,
and of Razavi et al. 2019 for VQ-VAE-2): a gated PixelCNN per level of codes,
trained on the 'vq_codes' dataset (vaes/data/codes.py) through the same engine.

Objective (teacher forcing), per image, with level 0 the bottom and L-1 the top:
  -log p_prior(z) = -log p(z_{L-1}) - sum_{l < L-1} log p(z_l | z_{l+1})
                  = -sum_l sum_{ij} log p(z_l,ij | z_l,<ij, z_{l+1}),
minimised as nats per code (divided by the number of codes per image).

Likelihood of the two-stage model (the VQ-VAE paper's bits/dim):
  bits/dim = (-log p(x | z_q(x)) - log p_prior(z(x))) / (D ln 2),
with the first stage's discrete (discretised logistic) decoder likelihood and
z(x) the encoder's codes. With a uniform prior, -log p(z) = sum_l n_l log K_l.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vaes import distributions, fs, plotting, stages
from vaes.models.pixelcnn import CodePrior, sample_level
from vaes.registry import ConfigError, ModelFamily, register_family


def model_config():
  """Every `config.model` field of the prior, with its default and meaning (the values of
  configs/vqvae_prior.py); configs start from it and override."""
  m = ml_collections.ConfigDict()
  m.name = 'vq_prior'
  m.channels = 32             # channels of the gated PixelCNN stacks
  m.num_layers = 4            # gated layers per level
  m.kernel_size = 3           # odd size of the masked convolutions
  m.embed_dim = 16            # embedding size of a code index
  m.out_hidden = 64           # hidden units of the output head
  m.dropout = 0.3             # dropout in the gated layers (training only)
  m.cond_channels = 32        # conditioning channels from the level above (VQ-VAE-2)
  return m


def eval_config():
  """The family's `config.eval` fields, with defaults and meanings (the engine's own are
  in configs/base.py); configs start from them and override."""
  e = ml_collections.ConfigDict()
  e.temperatures = (1.0, 0.7)   # softmax temperatures of the sample grids (one PNG each)
  return e


def validate_config(config):
  m = config.model
  for field in ('channels', 'num_layers', 'embed_dim', 'out_hidden', 'cond_channels'):
    if m[field] <= 0:
      raise ConfigError(f'config.model.{field}={m[field]}: must be a positive integer.')
  if not 0.0 <= m.dropout < 1.0:
    raise ConfigError(f'config.model.dropout={m.dropout}: must be in [0, 1).')
  if m.kernel_size < 2 or m.kernel_size % 2 == 0:
    raise ConfigError(f'config.model.kernel_size={m.kernel_size}: must be odd and >= 3.')
  if config.data.name != 'vq_codes':
    raise ConfigError(f"config.data.name='{config.data.name}': the prior trains on "
                      "'vq_codes' (codes of the VQ-VAE named by config.data.vqvae*).")
  for t in config.eval.temperatures:
    if not t > 0:
      raise ConfigError(f'config.eval.temperatures={tuple(config.eval.temperatures)}: '
                        'temperatures must be > 0.')


def build_model(config, data_info):
  m = config.model
  return CodePrior(
      num_codes=tuple(data_info.num_codes), grids=tuple(data_info.grids),
      channels=m.channels, num_layers=m.num_layers, kernel_size=m.kernel_size,
      embed_dim=m.embed_dim, out_hidden=m.out_hidden, cond_channels=m.cond_channels,
      dropout=m.dropout, dtype=jnp.dtype(config.compute_dtype))


def _codes(batch, n_levels):
  return [batch[f'codes_{l}'].astype(jnp.int32) for l in range(n_levels)]


def init_variables(model, rng, batch):
  return model.init({'params': rng}, _codes(batch, len(model.num_codes)))


def per_example_nll(model, params, codes, dropout_rng=None):
  """-log p(z_l | z_{l+1}) per level, each (B,) in nats (summed over positions);
  dropout is active when `dropout_rng` is given (training)."""
  if dropout_rng is None:
    logits = model.apply({'params': params}, codes)
  else:
    logits = model.apply({'params': params}, codes, deterministic=False,
                         rngs={'dropout': dropout_rng})
  return [-jnp.sum(distributions.categorical_log_prob(z, lg), axis=(1, 2))
          for z, lg in zip(codes, logits)]


def make_loss_fn(config, model, data_info):
  del config
  n_levels = len(data_info.num_codes)
  per_level = [h * w for h, w in data_info.grids]
  total_codes = float(sum(per_level))

  def loss_fn(params, model_state, batch, rng, step):
    del step
    nlls = per_example_nll(model, params, _codes(batch, n_levels), rng)
    loss = jnp.mean(sum(nlls)) / total_codes
    metrics = dict(loss=loss, prior_nll_per_code=loss, prior_bits_per_code=loss / np.log(2.0))
    for l, (nll, n) in enumerate(zip(nlls, per_level)):
      metrics[f'prior_nll_per_code_level_{l}'] = jnp.mean(nll) / n
    return loss, (metrics, model_state)

  return loss_fn


def sample_codes(model, params, rng, num, temperature=1.0):
  """Ancestral samples of every level, top first (each level by `sample_level`,
  a `jax.lax.fori_loop` over its positions), the lower ones conditioned on the
  sampled codes above. Returns a list of (num, h_l, w_l) int32, level 0 first."""
  n_levels = len(model.num_codes)
  codes = [None] * n_levels
  for l in reversed(range(n_levels)):  # a few levels, each its own network
    above = codes[l + 1] if l + 1 < n_levels else None

    def logits_fn(z, l=l, above=above):
      return model.apply({'params': params}, l, z, above, method=CodePrior.level_logits)

    codes[l] = sample_level(logits_fn, jax.random.fold_in(rng, l), num, model.grids[l],
                            temperature)
  return codes


def _eval_batch_fn(model, n_levels):
  def fn(variables, batch, rng):
    del rng
    w = batch['valid'].astype(jnp.float32)
    nlls = per_example_nll(model, variables['params'], _codes(batch, n_levels))
    dec = jnp.where(w > 0, batch['decoder_nll'], 0.0)
    return dict(count=jnp.sum(w), decoder=jnp.sum(w * dec),
                levels=jnp.stack([jnp.sum(w * n) for n in nlls]))
  return fn


def eval_stats(config, model, data_info):
  """Per-batch sums: count, the decoder NLL of the first stage, the prior NLL per level."""
  del config
  return _eval_batch_fn(model, len(data_info.num_codes))


def eval_metrics(config, info, totals):
  """Whole eval split: prior_nll_per_code (nats) and per level, bits_per_dim,
  decoder_nll_bits_per_dim, bits_per_dim_uniform_prior (same decoder, uniform
  prior over codes), uniform_prior_nll_per_code."""
  del config
  per_level = [h * w for h, w in info.grids]
  n = float(totals['count'])
  prior = float(np.sum(totals['levels'])) / n           # nats per image
  dims = info.num_dims
  uniform = float(sum(c * np.log(k) for c, k in zip(per_level, info.num_codes)))
  metrics = {
      'prior_nll_per_code': prior / sum(per_level),
      'prior_bits_per_code': prior / sum(per_level) / np.log(2.0),
      'uniform_prior_nll_per_code': uniform / sum(per_level),
      'num_eval_images': n,
  }
  for l in range(len(per_level)):
    metrics[f'prior_nll_per_code_level_{l}'] = float(totals['levels'][l]) / n / per_level[l]
  decoder = float(totals['decoder']) / n
  if np.isfinite(decoder):
    metrics['decoder_nll_bits_per_dim'] = decoder / (dims * np.log(2.0))
    metrics['bits_per_dim'] = (decoder + prior) / (dims * np.log(2.0))
    metrics['bits_per_dim_uniform_prior'] = (decoder + uniform) / (dims * np.log(2.0))
  return {k: float(v) for k, v in metrics.items()}


def eval_images(ctx, host_batch):
  """Sample grids decoded by the first stage at each of config.eval.temperatures."""
  del host_batch
  config, model, params = ctx.config, ctx.model, ctx.variables['params']
  first = stages.load_first_stage(config)
  decode = jax.jit(first.interface['decode'])
  num = int(config.eval.num_images)
  for t in config.eval.temperatures:
    sampler = jax.jit(lambda p, r, t=float(t): sample_codes(model, p, r, num, t))
    codes = sampler(params, jax.random.fold_in(ctx.rng, int(round(1000 * t))))
    images = np.asarray(jax.device_get(decode(first.variables, codes)))
    plotting.save_image_grid(
        fs.join(ctx.image_dir, f'{ctx.image_prefix}samples_t{t:g}.png'), images,
        ncols=int(np.ceil(np.sqrt(num))))


def sample(config, options):
  """sample.py: options.num codes drawn from the prior at softmax temperature
  options.temperature (every level, top first: `sample_codes`), decoded by the first
  stage (config.data.vqvae_workdir, its moving average when it kept one) into one grid.
  The sidecar names the first stage's checkpoint step and weights."""
  del config

  def sampler(ctx):
    first = stages.load_first_stage(ctx.config)
    codes = jax.jit(lambda p, r: sample_codes(ctx.model, p, r, options.num,
                                              options.temperature))(
        ctx.variables['params'], ctx.rng)
    images = np.asarray(jax.device_get(jax.jit(first.interface['decode'])(first.variables,
                                                                          codes)))
    name = ctx.stem + '.png'
    plotting.save_image_grid(fs.join(ctx.out_dir, name), images,
                             ncols=int(np.ceil(np.sqrt(options.num))))
    return {'files': [name], 'first_stage': {'workdir': first.workdir, 'step': first.step,
                                             'weights': first.weights}}

  return sampler


register_family(ModelFamily(
    name='vq_prior', build_model=build_model, init_variables=init_variables,
    make_loss_fn=make_loss_fn, eval_stats=eval_stats, eval_metrics=eval_metrics,
    eval_images=eval_images, validate_config=validate_config, prepare=stages.prepare_codes,
    eval_config=eval_config, sample=sample))
