"""The Hierarchical / Ladder VAE family: model, loss, evaluation.

`config.model.name` 'hvae' (inference 'hierarchical') or 'lvae' (inference
'ladder'): the name is enough, `config.model.inference` follows it unless set (and
must then agree); 'ladder_vae' takes either, set explicitly.

Objective (per example; layers l = 1..L, z_>l = z_l+1..z_L):

    ELBO = E_q[log p(x | z_1)] - sum_l E_q[KL(q(z_l | .) || p(z_l | z_l+1))].

* 'ladder': q(z_l | z_l+1, x) and p(z_l | z_l+1) are Gaussians given the same
  sample z_l+1, so each KL is in closed form (`gaussian_kl`).
* 'hierarchical': q(z_l | z_l-1) and p(z_l | z_l+1) condition on different
  samples (z_l+1 is drawn from q given z_l), so only the top layer (p(z_L) =
  N(0, I)) has a closed form; below it the KL term is the one-sample Monte Carlo
  estimate log q(z_l | z_l-1) - log p(z_l | z_l+1) at the drawn z_l.

Training loss = -E[log p(x | z_1)] + beta(step) sum_l max(lambda, E_batch[KL_l]),
with KL warm-up beta = min(1, step / N) (Sonderby et al. 2016; N in steps, epochs or
a fraction of the run, `kl_warmup`) and free bits
lambda nats per layer (Kingma et al. 2016); the reported `neg_elbo` is always the
true bound (beta = 1, lambda = 0).

With `config.model.train_importance_samples` = k > 1 the loss is instead the negative
importance-weighted bound of k samples (Burda et al. 2016; the Ladder VAE paper's
fine-tuning uses k = 10):

    loss = -mean_B [logsumexp_k(log w_k) - log k],
    log w_k = log p(x | z_1^k) + beta(step) sum_l [log p(z_l^k | .) - log q(z_l^k | .)],

the k samples drawn as k copies of the batch in one pass (batch norm sees k B rows),
the same `objectives.iw_bound` as the evaluation. k = 1 keeps the closed-form ELBO above.

Evaluation: the importance-weighted bound with k samples
    log p(x) >= logsumexp_k(log w_k) - log k,
    log w = log p(x | z_1) + sum_l [log p(z_l | z_l+1) - log q(z_l | .)],
computed in chunks of `config.eval.iw_chunk_size` samples with `lax.map`, so
k = 5000 costs the memory of one chunk. Active units (Burda et al. 2016): unit u
of z_l is active when Cov_x(E_q[u | x]) > 0.01, with E_q[u | x] estimated by the
average, over the same k posterior samples, of the conditional posterior mean
mu_q of u (exact for z_1 in 'hierarchical' mode, Rao-Blackwellised otherwise).
"""

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vaes import distributions as dist
from vaes import fs
from vaes import objectives
from vaes.models import ladder as ladder_model
from vaes.plotting import save_image_grid
from vaes.registry import ConfigError, ModelFamily, register_family

ACTIVE_UNIT_THRESHOLD = 0.01     # Cov_x(E_q[u | x]) of an active unit (Burda 2016)
INFORMATIVE_KL_THRESHOLD = 0.01  # nats per example: a unit above it carries information
_NAME_TO_INFERENCE = {'hvae': 'hierarchical', 'lvae': 'ladder'}


def name_inference(name):
  """The inference that `config.model.name` stands for; '' for 'ladder_vae' (either)."""
  return _NAME_TO_INFERENCE.get(name, '')


# -----------------------------------------------------------------------------
# Config and model.
# -----------------------------------------------------------------------------


def model_config():
  """Every `config.model` field of the family, with its default and meaning (the values
  of configs/lvae.py); configs start from it and override."""
  m = ml_collections.ConfigDict()
  m.name = 'lvae'                     # 'lvae' | 'hvae' | 'ladder_vae' (any inference)
  # 'ladder' | 'hierarchical'. Until set, the name's: an ml_collections reference (a lazy
  # op on model.name) that follows --config.model.name ('lvae' -> 'ladder', 'hvae' ->
  # 'hierarchical', 'ladder_vae' -> '', which must be set); config.json records the value.
  m.inference = m.get_ref('name')._apply_op(name_inference)
  m.latent_sizes = (16, 8, 4)         # z_1 .. z_L
  m.hidden_sizes = (128, 64, 32)      # d_1 .. d_L (and the top-down block into z_l)
  m.block = 'mlp'                     # 'mlp' | 'conv'
  m.block_depth = 2                   # layers per deterministic block
  m.strides = ()                      # conv only: one stride (1 or 2) per layer
  m.batch_norm = True                 # batch normalisation in the deterministic blocks
  m.activation = 'leaky_relu'         # one of ladder_model.ACTIVATIONS
  m.residual = False                  # identity paths around each block layer after the first
  m.top_down_skip = False             # p(z_l | z_>l): t_l = down_l([z_l+1, t_l+1]); False: Markov
  # Ladder only: the merge uses p(z_l | z_l+1) (the paper's text), or with False a top-down
  # path of its own (the authors' run_models.py, -ladder_share_params False).
  m.share_top_down = True
  m.up_from_mean = False              # ladder only: d_l = up_l(mu_hat_l-1) (their -only_mu_up)
  m.head_batch_norm = False           # batch norm in every Gaussian head's linear maps (theirs)
  m.likelihood = 'bernoulli'          # 'bernoulli' | 'logistic' (8-bit / grey levels) | 'gaussian'
  m.kl_warmup_steps = 1500            # beta = min(1, step / N); 0 = no warm-up
  m.kl_warmup_epochs = 0.0            # > 0 overrides kl_warmup_steps (epochs of the train split)
  m.kl_warmup_fraction = 0.0          # > 0 overrides kl_warmup_steps (fraction of num_train_steps)
  m.free_bits = 0.0                   # lambda nats per layer; 0 disables
  m.train_importance_samples = 1      # k of the training bound: 1 = the ELBO, > 1 = IWAE
  return m


def eval_config():
  """The family's `config.eval` fields, with defaults and meanings (the engine's own are
  in configs/base.py); configs start from them and override."""
  e = ml_collections.ConfigDict()
  e.num_importance_samples = 1000   # k of the importance-weighted bound (nll, bits_per_dim)
  e.iw_chunk_size = 100             # samples per lax.map chunk: the memory of one chunk
  return e


def validate_config(config):
  m = config.model
  inference, expected = m.inference, name_inference(m.name)
  if inference not in ladder_model.INFERENCE_MODES:
    raise ConfigError(f"config.model.inference='{inference}' is not one of "
                      f'{ladder_model.INFERENCE_MODES}' + ('.' if expected else
                      f" (config.model.name='{m.name}' leaves the choice to it)."))
  if expected and inference != expected:
    raise ConfigError(f"config.model.name='{m.name}' means inference '{expected}', but "
                      f"config.model.inference='{inference}'; leave the inference unset (it "
                      "follows the name) or use config.model.name='ladder_vae' to choose it.")
  latent, hidden = tuple(m.latent_sizes), tuple(m.hidden_sizes)
  if not latent or len(latent) != len(hidden) or min(latent + hidden) <= 0:
    raise ConfigError(f'config.model.latent_sizes={latent} and config.model.hidden_sizes={hidden} '
                      'must be non-empty lists of positive sizes, one per stochastic layer.')
  if m.block not in ladder_model.BLOCKS:
    raise ConfigError(f"config.model.block='{m.block}' is not one of {ladder_model.BLOCKS}.")
  if m.block == 'conv':
    if len(tuple(m.strides)) != len(latent) or any(s not in (1, 2) for s in m.strides):
      raise ConfigError(f'config.model.strides={tuple(m.strides)}: give one stride (1 or 2) per '
                        f'layer ({len(latent)} layers) for conv blocks.')
    if m.block_depth < 1:
      raise ConfigError(f'config.model.block_depth={m.block_depth}: conv blocks need >= 1.')
  if m.block_depth < 0:
    raise ConfigError(f'config.model.block_depth={m.block_depth} must be >= 0.')
  if m.activation not in ladder_model.ACTIVATIONS:
    raise ConfigError(f"config.model.activation='{m.activation}' is not one of "
                      f'{sorted(ladder_model.ACTIVATIONS)}.')
  if not m.share_top_down and inference != 'ladder':
    raise ConfigError("config.model.share_top_down=False gives the ladder merge a top-down path "
                      f"of its own; inference '{inference}' has no merge: keep it True.")
  if m.up_from_mean and inference != 'ladder':
    raise ConfigError("config.model.up_from_mean=True feeds the ladder's bottom-up blocks the "
                      f"means mu_hat; inference '{inference}' feeds them samples: keep it False.")
  if m.likelihood not in ladder_model.LIKELIHOODS:
    raise ConfigError(f"config.model.likelihood='{m.likelihood}' is not one of "
                      f'{ladder_model.LIKELIHOODS}.')
  if m.free_bits < 0 or m.kl_warmup_steps < 0 or m.kl_warmup_epochs < 0:
    raise ConfigError('config.model.free_bits, kl_warmup_steps and kl_warmup_epochs must be >= 0.')
  if not 0.0 <= m.kl_warmup_fraction <= 1.0:
    raise ConfigError(f'config.model.kl_warmup_fraction={m.kl_warmup_fraction}: must lie in '
                      '[0, 1] (a fraction of config.num_train_steps; 0 = use kl_warmup_steps).')
  if m.kl_warmup_fraction > 0 and m.kl_warmup_epochs > 0:
    raise ConfigError(f'config.model.kl_warmup_fraction={m.kl_warmup_fraction} and '
                      f'config.model.kl_warmup_epochs={m.kl_warmup_epochs} both set the KL '
                      'warm-up; set one of them to 0.')
  k = m.train_importance_samples
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ConfigError(f'config.model.train_importance_samples={k!r}: must be an integer >= 1 '
                      '(1 = the ELBO, k > 1 = the importance-weighted bound of k samples).')
  if k > 1 and m.free_bits > 0:
    raise ConfigError(f'config.model.train_importance_samples={k} with config.model.free_bits='
                      f'{m.free_bits}: free bits act on per-layer KLs, which the '
                      'importance-weighted bound does not have; set one of them to its default '
                      '(free_bits=0 or train_importance_samples=1).')
  if config.eval.num_importance_samples < 1 or config.eval.iw_chunk_size < 1:
    raise ConfigError('config.eval.num_importance_samples and config.eval.iw_chunk_size must be '
                      '>= 1.')


def build_model(config, data_info):
  m = config.model
  x_shape = tuple(data_info.shape)
  if m.likelihood == 'bernoulli' and data_info.num_levels != 2:
    raise ConfigError(
        f"config.model.likelihood='bernoulli' needs binary data, but config.data.name="
        f"'{config.data.name}' has {data_info.num_levels} levels; set "
        "config.data.binarize='dynamic' (or 'threshold') or config.model.likelihood='logistic'.")
  if m.block == 'conv':
    factor = int(np.prod(m.strides))
    if x_shape[0] % factor or x_shape[1] % factor:
      raise ConfigError(f'config.model.strides={tuple(m.strides)} downsample by {factor}, which '
                        f'does not divide the image size {x_shape[:2]}; change the strides or '
                        'config.data.image_size.')
  return ladder_model.LadderVAE(
      latent_sizes=tuple(m.latent_sizes), hidden_sizes=tuple(m.hidden_sizes), x_shape=x_shape,
      inference=m.inference, block=m.block, block_depth=m.block_depth,
      strides=tuple(m.strides) if m.block == 'conv' else (), batch_norm=bool(m.batch_norm),
      activation=m.activation, likelihood=m.likelihood, top_down_skip=bool(m.top_down_skip),
      residual=bool(m.residual), share_top_down=bool(m.share_top_down),
      up_from_mean=bool(m.up_from_mean), head_batch_norm=bool(m.head_batch_norm),
      dtype=jnp.dtype(config.compute_dtype))


def init_variables(model, rng, batch):
  x = batch['image']
  noise = [jnp.zeros((x.shape[0],) + s, jnp.float32)
           for s in ladder_model.latent_shapes(model, x.shape[1:])]
  return model.init({'params': rng}, x, noise, train=False)


# -----------------------------------------------------------------------------
# Per-example terms, float32.
# -----------------------------------------------------------------------------


def _sum_except_first(v):
  return v.reshape(v.shape[0], -1).sum(axis=1)


def log_likelihood(likelihood, x, x_params, num_levels):
  """log p(x | z_1) summed over dimensions, (B,). x in [0, 1]."""
  if likelihood == 'bernoulli':
    lp = dist.bernoulli_log_prob(x, x_params['logits'])
  elif likelihood == 'logistic':
    lp = dist.discretized_logistic_log_prob(2.0 * x - 1.0, x_params['mean'],
                                            x_params['log_scale'], num_bins=num_levels)
  else:
    lp = dist.gaussian_log_prob(x, x_params['mean'], x_params['logvar'])
  return _sum_except_first(lp)


def x_mean(likelihood, x_params):
  """E[x | z_1] in [0, 1] for pictures."""
  if likelihood == 'bernoulli':
    return jax.nn.sigmoid(x_params['logits'])
  if likelihood == 'logistic':
    return jnp.clip((x_params['mean'] + 1.0) / 2.0, 0.0, 1.0)
  return x_params['mean']


def unit_kls(inference, layers):
  """Each layer's KL term per latent unit, [(B, units_l)] for l = 1..L: closed form where
  available (the ladder's layers, the top layer), else the one-sample Monte Carlo term
  log q(z_u | .) - log p(z_u | z_l+1), which can be negative for one unit. Both
  factorise over units, so a layer's KL is the sum of its units'."""
  kls = []
  top = len(layers) - 1
  for l, layer in enumerate(layers):
    if inference == 'ladder' or l == top:
      kl = dist.gaussian_kl(layer['q_mean'], layer['q_logvar'], layer['p_mean'], layer['p_logvar'])
    else:
      kl = (dist.gaussian_log_prob(layer['z'], layer['q_mean'], layer['q_logvar'])
            - dist.gaussian_log_prob(layer['z'], layer['p_mean'], layer['p_logvar']))
    kls.append(kl.reshape(kl.shape[0], -1))
  return kls


def layer_kls(inference, layers):
  """Per-layer KL terms, (L, B): the sums of `unit_kls`."""
  return jnp.stack([kl.sum(axis=1) for kl in unit_kls(inference, layers)])


def log_weight(layers, log_px):
  """log w = log p(x | z_1) + sum_l [log p(z_l | z_l+1) - log q(z_l | .)], (B,)."""
  lw = log_px
  for layer in layers:
    lw = lw + _sum_except_first(
        dist.gaussian_log_prob(layer['z'], layer['p_mean'], layer['p_logvar'])
        - dist.gaussian_log_prob(layer['z'], layer['q_mean'], layer['q_logvar']))
  return lw


def kl_warmup(config, data_info):
  """(N, the field that set it): kl_warmup_fraction of the run, kl_warmup_epochs of the
  train split, or kl_warmup_steps."""
  m = config.model
  if m.kl_warmup_fraction > 0:
    return (objectives.warmup_length(0, m.kl_warmup_fraction, config.num_train_steps),
            f'config.model.kl_warmup_fraction={m.kl_warmup_fraction}')
  epochs = m.kl_warmup_epochs
  if not epochs:
    return int(m.kl_warmup_steps), f'config.model.kl_warmup_steps={m.kl_warmup_steps}'
  if not data_info.steps_per_epoch:
    raise ConfigError(f'config.model.kl_warmup_epochs={epochs} needs the steps per epoch, which '
                      f"dataset '{config.data.name}' does not report; use kl_warmup_steps.")
  return (int(round(epochs * data_info.steps_per_epoch)),
          f'config.model.kl_warmup_epochs={epochs}')


def _warmup_steps(config, data_info):
  return kl_warmup(config, data_info)[0]


# -----------------------------------------------------------------------------
# Training loss.
# -----------------------------------------------------------------------------


def iw_log_weights(layers, log_px, beta):
  """log w = log p(x | z_1) + beta sum_l [log p(z_l | .) - log q(z_l | .)], (B,): the
  importance weight of the drawn z, its prior-to-posterior ratio scaled by the KL warm-up
  weight (beta = 1: `log_weight`)."""
  return log_px + beta * (log_weight(layers, jnp.zeros_like(log_px)))


def make_loss_fn(config, model, data_info):
  """loss_fn(params, model_state, batch, rng, step) -> (loss, (metrics, new_model_state)).

  loss = -mean_B log p(x | z_1) + beta(step) sum_l max(free_bits, mean_B KL_l), or with
  k = config.model.train_importance_samples > 1 the negative IW bound (module docstring).
  """
  inference = config.model.inference
  likelihood = config.model.likelihood
  num_levels = int(data_info.num_levels)
  free_bits = float(config.model.free_bits)
  warmup = _warmup_steps(config, data_info)
  x_shape = tuple(data_info.shape)
  num_layers = len(config.model.latent_sizes)
  num_dims = int(np.prod(x_shape))
  k = int(config.model.train_importance_samples)

  def loss_fn(params, model_state, batch, rng, step):
    x = batch['image']
    if k > 1:   # k copies of the batch, sample-major: row s * B + b is sample s of x_b
      x = jnp.tile(x, (k,) + (1,) * (x.ndim - 1))
    noise = ladder_model.draw_noise(model, rng, x.shape[:1], x_shape)
    variables = {'params': params, **model_state}
    if model_state:
      out, new_state = model.apply(variables, x, noise, train=True,
                                   mutable=list(model_state.keys()))
      new_state = dict(new_state)
    else:
      out, new_state = model.apply(variables, x, noise, train=True), model_state
    log_px = log_likelihood(likelihood, x, out['x'], num_levels)
    kls = layer_kls(inference, out['layers'])              # (L, B)
    kl_means = kls.mean(axis=1)                            # (L,)
    beta = objectives.kl_warmup_weight(step, warmup)
    rec = -log_px.mean()
    neg_elbo = rec + kl_means.sum()
    metrics = {'neg_elbo': neg_elbo, 'recon_nll': rec, 'kl': kl_means.sum(),
               'kl_weight': beta, 'bits_per_dim': objectives.bits_per_dim(neg_elbo, num_dims)}
    if k > 1:
      log_w = iw_log_weights(out['layers'], log_px, beta).reshape(k, -1)   # (k, B)
      loss = -objectives.iw_bound(log_w).mean()
      metrics['neg_iw_bound'] = loss
    else:
      loss = rec + beta * objectives.free_bits_kl(kl_means, free_bits)
    metrics['loss'] = loss
    for l in range(num_layers):
      metrics[f'kl_layer_{l + 1}'] = kl_means[l]
    return loss, (metrics, new_state)

  return loss_fn


# -----------------------------------------------------------------------------
# Evaluation.
# -----------------------------------------------------------------------------


def make_eval_batch_fn(model, likelihood, inference, num_levels, num_samples, chunk_size):
  """Per-batch statistics with k = num_samples posterior samples in chunks (lax.map).

  fn(variables, batch, rng) -> dict of sums over the valid examples:
    'count', 'neg_elbo', 'nll' (= -IW bound), 'recon_nll',
    and per layer 'mean_sum_<l>', 'mean_sq_sum_<l>' (units,) of E_q[z_l | x],
    for the covariance over x of the active-unit criterion, and 'kl_unit_sum_<l>'
    (units,), each unit's KL term (`unit_kls`; a layer's KL is their sum, and
    python -m vaes.units reads them).
  The ELBO terms are averaged over the same k samples (closed-form KLs where
  available), so neg_elbo and nll are computed from one set of samples.
  """
  chunk = min(chunk_size, num_samples)

  def fn(variables, batch, rng):
    x = batch['image']
    valid = batch['valid'].astype(jnp.float32)
    x_shape = x.shape[1:]

    def one_chunk(c, w):
      noise = ladder_model.draw_noise(model, jax.random.fold_in(rng, c), (chunk, x.shape[0]),
                                      x_shape)
      out = jax.vmap(lambda eps: model.apply(variables, x, eps, train=False))(noise)
      log_px = jax.vmap(lambda p: log_likelihood(likelihood, x, p, num_levels))(out['x'])
      units = jax.vmap(lambda ls: unit_kls(inference, ls))(out['layers'])  # [(chunk, B, U)]
      lw = jax.vmap(log_weight)(out['layers'], log_px)                      # (chunk, B)
      means = [jnp.einsum('s,sb...->b...', w, layer['q_mean']) for layer in out['layers']]
      unit_sums = [jnp.einsum('s,sbu->bu', w, u) for u in units]
      return lw, (jnp.einsum('s,sb->b', w, log_px), means, unit_sums)

    iw, (log_px_sum, mean_sums, unit_sums) = objectives.chunked_iw_bound(
        one_chunk, num_samples, chunk)                                     # (B,)
    rec = -log_px_sum.sum(0) / num_samples                                 # (B,)
    unit_kl = [u.sum(0) / num_samples for u in unit_sums]                 # [(B, U)]
    kl = sum(u.sum(axis=1) for u in unit_kl)                               # (B,)
    out = {
        'count': valid.sum(),
        'nll': jnp.sum(-iw * valid),
        'neg_elbo': jnp.sum((rec + kl) * valid),
        'recon_nll': jnp.sum(rec * valid),
    }
    for l, m in enumerate(mean_sums):
      m = m.sum(0).reshape(x.shape[0], -1) / num_samples                  # E_q[z_l | x]
      out[f'mean_sum_{l + 1}'] = jnp.einsum('b,bu->u', valid, m)
      out[f'mean_sq_sum_{l + 1}'] = jnp.einsum('b,bu->u', valid, m * m)
      out[f'kl_unit_sum_{l + 1}'] = jnp.einsum('b,bu->u', valid, unit_kl[l])
    return out

  return fn


def unit_activity(mean_sum, mean_sq_sum, count):
  """Each unit's Cov_x(E_q[u | x]) = E[m^2] - E[m]^2 over the examples (float64)."""
  mean = np.asarray(mean_sum, np.float64) / count
  return np.asarray(mean_sq_sum, np.float64) / count - mean * mean


def unit_layers(totals):
  """[(kl, activity)] per layer, layer 1 first (float64 over its units: each unit's KL
  term per example and its Cov_x(E_q[u | x])), from the summed statistics of
  `make_eval_batch_fn` over a split."""
  count = float(totals['count'])
  layers, l = [], 1
  while f'kl_unit_sum_{l}' in totals:
    layers.append((np.asarray(totals[f'kl_unit_sum_{l}'], np.float64) / count,
                   unit_activity(totals[f'mean_sum_{l}'], totals[f'mean_sq_sum_{l}'], count)))
    l += 1
  return layers


def eval_stats(config, model, data_info):
  """Per-batch sums of `make_eval_batch_fn` (a pure function; the engine jits it once)."""
  return make_eval_batch_fn(model, config.model.likelihood, config.model.inference,
                            int(data_info.num_levels),
                            int(config.eval.num_importance_samples),
                            int(config.eval.iw_chunk_size))


def eval_metrics(config, data_info, totals):
  """Keys: neg_elbo, nll (importance-weighted, k = config.eval.num_importance_samples),
  bits_per_dim (of nll), recon_nll, kl, active_units, informative_units, and
  kl_layer_<l>, active_units_layer_<l>, informative_units_layer_<l> for l = 1..L. All per
  example, in nats. Active units vary with x (Burda's Cov_x(E_q[u | x]) > 0.01);
  informative ones have a KL term above 0.01 nats of their own: in a ladder a unit that
  follows the layer above is active and not informative (README, MNIST rows)."""
  count = totals['count']
  layers = unit_layers(totals)
  metrics = {
      'neg_elbo': totals['neg_elbo'] / count,
      'nll': totals['nll'] / count,
      'recon_nll': totals['recon_nll'] / count,
      'kl': sum(kl.sum() for kl, _ in layers),
      'num_importance_samples': int(config.eval.num_importance_samples),
  }
  dims = int(np.prod(tuple(data_info.shape)))
  metrics['bits_per_dim'] = float(objectives.bits_per_dim(metrics['nll'], dims))
  metrics['active_units'] = metrics['informative_units'] = 0
  for l, (kl, activity) in enumerate(layers, start=1):
    metrics[f'kl_layer_{l}'] = kl.sum()
    active = int(np.sum(activity > ACTIVE_UNIT_THRESHOLD))
    informative = int(np.sum(kl > INFORMATIVE_KL_THRESHOLD))
    metrics[f'active_units_layer_{l}'] = active
    metrics[f'informative_units_layer_{l}'] = informative
    metrics['active_units'] += active
    metrics['informative_units'] += informative
  return {k: float(v) if not isinstance(v, int) else v for k, v in metrics.items()}


def eval_images(ctx, host_batch):
  """Prior samples (top-down ancestral) and (data, reconstruction) pairs as PNG grids."""
  likelihood, x_shape = ctx.config.model.likelihood, tuple(ctx.data_info.shape)
  n = int(ctx.config.eval.num_images)
  rng_s, rng_r = jax.random.split(jax.random.fold_in(ctx.rng, 1 << 30))
  prefix = fs.join(ctx.image_dir, ctx.image_prefix)
  samples = _prior_samples(ctx.model, likelihood, x_shape, n, ctx.variables, rng_s)
  save_image_grid(prefix + 'prior_samples.png', np.asarray(samples))
  x = np.asarray(host_batch['image'])[np.asarray(host_batch['valid'])][:max(1, n // 2)]
  recon = np.asarray(_reconstructions(ctx.model, likelihood, x_shape, ctx.variables,
                                      jnp.asarray(x), rng_r))
  pairs = np.stack([x, recon], axis=1).reshape((-1,) + x.shape[1:])   # data, recon, data, ...
  ncols = 2 * max(1, math.ceil(math.sqrt(len(x) / 2)))   # square grid of pairs
  save_image_grid(prefix + 'reconstructions.png', pairs, ncols=ncols)


# The arguments before `variables` are static: jit compiles once per model and shape.
@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _prior_samples(model, likelihood, x_shape, n, variables, rng, temperature=1.0):
  """E[x | z_1] of n top-down ancestral samples z ~ p(z), every prior's standard
  deviation times `temperature` (its noise times T: T = 1 is p itself)."""
  noise = ladder_model.draw_noise(model, rng, (n,), x_shape)
  noise = [temperature * eps for eps in noise]
  return x_mean(likelihood, model.apply(variables, noise, train=False, method=model.sample))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _reconstructions(model, likelihood, x_shape, variables, x, rng):
  """E[x | z_1] with z ~ q(z | x)."""
  noise = ladder_model.draw_noise(model, rng, x.shape[:1], x_shape)
  return x_mean(likelihood, model.apply(variables, x, noise, train=False)['x'])


# -----------------------------------------------------------------------------
# Sampling (sample.py).
# -----------------------------------------------------------------------------

FROM_LAYER_IMAGES = 8     # evaluation images (grid columns) of a --from_layer grid


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _samples_given_top(model, likelihood, x_shape, keep, per_image, variables, x, rng,
                       temperature):
  """E[x | z_1] of `per_image` draws for each image x_b of x (B, ...), sample-major (row
  s * B + b is draw s of x_b): the top `keep` layers from q(z | x_b), one draw per image
  shared by its rows (noise draw_noise(rng), as `_reconstructions`), the layers below
  from the prior with its standard deviations times `temperature` (noise
  draw_noise(fold_in(rng, 1)), new for every row). `LadderVAE.sample_given_top`."""
  batch = x.shape[0]
  tile = lambda a: jnp.tile(a, (per_image,) + (1,) * (a.ndim - 1))
  noise_q = [tile(eps) for eps in ladder_model.draw_noise(model, rng, (batch,), x_shape)]
  noise_p = [temperature * eps for eps in ladder_model.draw_noise(
      model, jax.random.fold_in(rng, 1), (per_image * batch,), x_shape)]
  out = model.apply(variables, tile(x), noise_q, noise_p, keep, train=False,
                    method=model.sample_given_top)
  return x_mean(likelihood, out)


def sample(config, options):
  """sample.py: `options.num` prior samples at `options.temperature` (the prior's standard
  deviations times T) in one grid; with --from_layer=K, the top K layers from the
  posterior of min(8, num) evaluation images spaced evenly over the split and the rest
  from the prior:
  the images in the first row, num // images draws of each below them."""
  num_layers = len(config.model.latent_sizes)
  if not 0 <= options.from_layer <= num_layers:
    raise ConfigError(
        f'--from_layer={options.from_layer}: the model has {num_layers} stochastic layers '
        f'(config.model.latent_sizes={tuple(config.model.latent_sizes)}); give 0 (a prior '
        f'sample) to {num_layers} (the top {num_layers} from the posterior: a '
        'reconstruction).')
  likelihood, keep, num = config.model.likelihood, options.from_layer, options.num

  def sampler(ctx):
    x_shape = tuple(ctx.data_info.shape)
    name = ctx.stem + '.png'
    if keep == 0:
      images = _prior_samples(ctx.model, likelihood, x_shape, num, ctx.variables, ctx.rng,
                              options.temperature)
      save_image_grid(fs.join(ctx.out_dir, name), np.asarray(images))
      return {'files': [name]}
    x = ctx.eval_examples(min(FROM_LAYER_IMAGES, num), spread=True)['image']
    per_image = max(1, num // len(x))
    images = _samples_given_top(ctx.model, likelihood, x_shape, keep, per_image,
                                ctx.variables, jnp.asarray(x), ctx.rng, options.temperature)
    save_image_grid(fs.join(ctx.out_dir, name), np.concatenate([x, np.asarray(images)]),
                    ncols=len(x))
    return {'files': [name], 'images': len(x), 'draws_per_image': per_image,
            'grid': f'row 1: evaluation images; rows 2-{per_image + 1}: the top {keep} of '
                    f'{num_layers} layers from their posterior, the rest from the prior'}

  return sampler


register_family(
    ModelFamily(name='ladder_vae', build_model=build_model, init_variables=init_variables,
                make_loss_fn=make_loss_fn, eval_stats=eval_stats, eval_metrics=eval_metrics,
                eval_images=eval_images, validate_config=validate_config, kl_warmup=kl_warmup,
                eval_config=eval_config, selection_eval=objectives.iw_selection_eval,
                sample=sample, sample_options=('from_layer',)),
    'hvae', 'lvae')
