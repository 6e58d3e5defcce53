"""VRAE family: sequential VAE with per-step latents z_t (vaes/models/vrae.py): the VRAE,
VRNN, global-latent VRAE and SRNN (config.model.prior='srnn': a state-space layer z_t on a
deterministic GRU d_t over x_<t, Fraccaro et al. 2016) variants of one model.

Training objective per batch, in nats per real frame (F = number of frames with mask 1):

    recon = -(1/F) sum_{b,t} mask_bt log p(x_t | z_<=t, x_<t),   z ~ q(z_1:T | x_1:T)
    KL_d  = (1/F) sum_{b,t} mask_bt KL(q(z_t,d | .) || p(z_t,d | z_<t))     (closed form)
    loss  = recon + beta(step) * sum_d max(free_bits, KL_d)

with the KL warm-up beta(step) = min(1, beta_0 + (1 - beta_0) step / N) (beta_0 =
config.model.kl_warmup_start, N = config.model.kl_warmup_steps, or kl_warmup_fraction *
num_train_steps when that is > 0; N = 0 gives 1) and free bits in nats per latent
dimension per frame (0 disables them). neg_elbo_per_frame = recon + sum_d KL_d is the
exact negative ELBO whatever beta and free bits. With config.model.dropout > 0, training
computes recon and KL_d under dropout masks (vaes/models/vrae.py); evaluation never drops.

config.model.train_bound chooses another bound of log p(x) with k = config.model.
train_particles samples per sequence (loss = -(1/F) sum_b bound_b, beta(step) on every
log p(z_t | .) - log q(z_t | .), no free bits):
  'iwae'  log mean_k p(x, z^k) / q(z^k | x), k copies of each sequence (independent z, the
          same dropout masks) in one posterior pass (Burda et al. 2016), any prior and posterior;
  'fivo'  the filtering bound of k particles (Maddison et al. 2017; Le et al. 2018; Naesseth
          et al. 2018): a particle filter with proposal q(z_t | z_<t, x_<=t), resampling
          when config.model.fivo_resample says ('ess': ESS < k/2, 'always', 'never' = 'iwae')
          by config.model.fivo_resampler, no gradient through the choice of ancestors
          (VRAE.smc). Filtering posterior and per-step latents only ('srnn' with
          posterior='filter' included).
k = 1 makes both the one-sample ELBO log p(x, z) - log q(z | x) (the same z as 'elbo', whose
closed-form KL has the same expectation and less variance).

Evaluation over the whole eval split (all metrics in nats per real frame):
  neg_elbo_per_frame, recon_per_frame, kl_per_frame  one z ~ q per sequence, closed-form KL;
  nll_per_frame   -log p(x) from the importance-weighted bound with k sequence-level samples
                  log p(x) >= logsumexp_k(log p(x, z^k) - log q(z^k | x)) - log k,
                  k = config.eval.num_importance_samples, in chunks of
                  config.eval.iw_chunk_size samples (lax.map over chunks, vmap inside);
  nll_per_frame_seq_mean, neg_elbo_per_frame_seq_mean  the same averaged the other way:
                  each sequence's -log p(x) (or -ELBO) over its own frames, then the mean
                  over sequences (the SRNN repository's average; the *_per_frame metrics
                  pool the frames, so long sequences weigh more);
  nll_fivo_per_frame  -log p(x) from the SMC (FIVO) estimate with k = config.eval.fivo_particles
                  particles per sequence (0 = not computed), resampling as config.eval.
                  fivo_resample / fivo_resampler say; fivo_resample_rate = resampling steps
                  per real frame. All k particles of a batch's sequences in one pass: memory
                  grows as eval.batch_size x k (lower eval.batch_size for large k). Any
                  per-step model: with posterior='smooth' the proposal q(z_t | z_<t, x_1:T)
                  reads the future frames too, and the estimate of p(x) stays unbiased. The
                  checkpoint-selection evaluations skip it unless it is the selection
                  metric (`selection_eval`);
  baseline_nll_per_frame  independent per-dimension model of the training frames, from
                  the dataset's frame statistics: per-key Bernoulli p_k = (n_k + 1) /
                  (F_train + 2) for binary rolls, a diagonal Gaussian for real series.
and, when ctx.image_dir is set, PNGs: samples from the prior, imputation of a hidden block
of frames (observed frames kept), reconstructions (piano rolls, or line plots for Gaussian);
for 88-key piano rolls also a MIDI file of each sample and imputed sequence (vaes/midi.py).
"""

import copy

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vaes import distributions as dist
from vaes import fs
from vaes import objectives
from vaes.models import vrae as vrae_model
from vaes.registry import ConfigError, ModelFamily, register_family

F32 = jnp.float32


# ----------------------------------------------------------------------------
# Config -> model.
# ----------------------------------------------------------------------------


def model_config():
  """Every `config.model` field of the family, with its default and meaning (the values
  of configs/vrae.py); configs start from it and override."""
  m = ml_collections.ConfigDict()
  m.name = 'vrae'
  m.prior = 'latent'          # 'latent' p(z_t|z_<t) | 'vrnn' p(z_t|z_<t,x_<t) | 'global' |
                              # 'srnn' p(z_t|z_t-1,d_t), d_t a GRU over x_<t (Fraccaro 2016)
  m.posterior = 'filter'      # 'filter' q(z_t|z_<t,x_<=t) | 'smooth' q(z_t|z_<t,x_1:T)
  m.srnn_residual = True      # prior='srnn' only: q's mean = p's mean + a learned residual
                              # (the paper's "Resq"); False: q's mean from its own MLP alone
  m.likelihood = 'bernoulli'  # 'bernoulli' | 'gaussian' | 'categorical' | '' (dataset's)
  m.num_classes = 0           # categorical only, when the dataset does not say (> 0)
  m.hidden = 64               # units of each GRU (prior, posterior, decoder; 'srnn': d_t, a_t)
  m.latent = 8                # dimensions of z_t
  m.mlp_hidden = 64           # units of the prior, posterior and decoder MLPs
  m.made_hidden = 0           # > 0: p(x_t | .) autoregressive over the frame's dimensions, a
                              # MADE of this many units (Bernoulli frames); 0 = factorised
  m.unroll = 1                # scan unroll (speed only)
  m.remat = False             # rematerialise each step in the backward pass (memory only)
  m.kl_warmup_start = 0.1     # beta_0
  m.kl_warmup_steps = 500     # N; 0 = no warm-up
  m.kl_warmup_fraction = 0.0  # > 0 overrides kl_warmup_steps: N = fraction * num_train_steps
  m.free_bits = 0.0           # nats per latent dimension per frame; 0 disables
  m.dropout = 0.0             # training only: rate on the frames fed to the GRUs and on the
                              # decoder's output-layer input (per-step priors); 0 = off
  m.train_bound = 'elbo'      # training bound: 'elbo' (closed-form KL) | 'iwae' (IW bound of
                              # train_particles samples) | 'fivo' (SMC filtering bound of
                              # train_particles particles; posterior='filter', per-step priors)
  m.train_particles = 1       # k of 'iwae' / 'fivo' (k times the step's cost); 1 with 'elbo'
  m.fivo_resample = 'ess'     # 'fivo': resample when ESS < k/2 ('ess') | 'always' | 'never'
  m.fivo_resampler = 'multinomial'   # 'fivo': 'multinomial' | 'systematic' ancestors
  return m


def eval_config():
  """The family's `config.eval` fields, with defaults and meanings (the engine's own are
  in configs/base.py); configs start from them and override."""
  e = ml_collections.ConfigDict()
  e.num_importance_samples = 100    # k of the importance-weighted bound (nll_per_frame)
  e.iw_chunk_size = 10              # samples per chunk (vmap inside, lax.map over chunks);
                                    # num_importance_samples must be a multiple of it
  e.num_plot_sequences = 6          # sequences in each PNG (samples, imputation, recon)
  e.fivo_particles = 0              # k of the SMC estimate nll_fivo_per_frame; 0 = off
  e.fivo_resample = 'ess'           # its resampling: 'ess' (ESS < k/2) | 'always' | 'never'
  e.fivo_resampler = 'multinomial'  # 'multinomial' | 'systematic' ancestors
  return e


# Fields that choose how the same function is computed; a run may resume with others.
IMPLEMENTATION_FIELDS = ('model.unroll', 'model.remat')


def _likelihood(config, data_info=None):
  data_lik = data_info.likelihood if data_info is not None else ''
  return config.model.likelihood or data_lik or 'bernoulli'


def validate_config(config):
  m = config.model
  if m.prior not in vrae_model.PRIORS:
    raise ConfigError(f"config.model.prior='{m.prior}' is not one of {vrae_model.PRIORS}.")
  if m.posterior not in vrae_model.POSTERIORS:
    raise ConfigError(f"config.model.posterior='{m.posterior}' is not one of "
                      f'{vrae_model.POSTERIORS}.')
  if not 0.0 <= m.dropout < 1.0:
    raise ConfigError(f'config.model.dropout={m.dropout}: must lie in [0, 1).')
  if m.dropout > 0 and m.prior == 'global':
    raise ConfigError(f"config.model.dropout={m.dropout} is implemented for the per-step "
                      "priors ('latent', 'vrnn', 'srnn'), not prior='global': set it to 0.")
  if not isinstance(m.srnn_residual, bool):
    raise ConfigError(f'config.model.srnn_residual={m.srnn_residual!r}: must be True or False.')
  if m.posterior == 'smooth' and m.prior == 'global':
    raise ConfigError("config.model.posterior='smooth' needs per-step latents: prior='global' "
                      "already conditions its z on x_1:T; use posterior='filter'.")
  lik = m.likelihood
  if lik and lik not in vrae_model.LIKELIHOODS:
    raise ConfigError(f"config.model.likelihood='{lik}' is not one of {vrae_model.LIKELIHOODS} "
                      "(or '' to take the dataset's).")
  for field in ('hidden', 'latent', 'mlp_hidden', 'unroll'):
    v = m[field]
    if not isinstance(v, int) or v <= 0:
      raise ConfigError(f'config.model.{field}={v!r}: must be a positive integer.')
  if isinstance(m.made_hidden, bool) or not isinstance(m.made_hidden, int) or m.made_hidden < 0:
    raise ConfigError(f'config.model.made_hidden={m.made_hidden!r}: must be an integer >= 0 '
                      '(0 = a factorised p(x_t | .)).')
  if m.free_bits < 0 or m.kl_warmup_steps < 0:
    raise ConfigError('config.model.free_bits and config.model.kl_warmup_steps must be >= 0, got '
                      f'{m.free_bits} and {m.kl_warmup_steps}.')
  if not 0.0 <= m.kl_warmup_fraction <= 1.0:
    raise ConfigError(f'config.model.kl_warmup_fraction={m.kl_warmup_fraction}: must lie in '
                      '[0, 1] (a fraction of config.num_train_steps; 0 = use kl_warmup_steps).')
  if not 0.0 <= m.kl_warmup_start <= 1.0:
    raise ConfigError(f'config.model.kl_warmup_start={m.kl_warmup_start}: must lie in '
                      '[0, 1].')
  _validate_bounds(config)
  k, chunk = config.eval.num_importance_samples, config.eval.iw_chunk_size
  if k < 1 or chunk < 1 or k % min(chunk, k):
    raise ConfigError(f'config.eval.num_importance_samples={k} must be a positive multiple of '
                      f'config.eval.iw_chunk_size={chunk} (or smaller than it).')
  k = config.eval.select_num_importance_samples
  if k and k % min(chunk, k):   # 0: the selection uses num_importance_samples
    raise ConfigError(f'config.eval.select_num_importance_samples={k}: must be 0 (the same as '
                      'eval.num_importance_samples) or a positive multiple of '
                      f'config.eval.iw_chunk_size={chunk} (or smaller than it).')


TRAIN_BOUNDS = ('elbo', 'iwae', 'fivo')


def _validate_bounds(config):
  """model.train_bound / train_particles / fivo_*, eval.fivo_* (module docstring)."""
  m, e = config.model, config.eval
  if m.train_bound not in TRAIN_BOUNDS:
    raise ConfigError(f"config.model.train_bound='{m.train_bound}' is not one of {TRAIN_BOUNDS}.")
  k = m.train_particles
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ConfigError(f'config.model.train_particles={k!r}: must be an integer >= 1.')
  if m.train_bound == 'elbo' and k > 1:
    raise ConfigError(f"config.model.train_particles={k} needs config.model.train_bound='iwae' "
                      "or 'fivo' (the 'elbo' loss uses one sample): set one of them.")
  if m.train_bound != 'elbo' and m.free_bits > 0:
    raise ConfigError(f"config.model.train_bound='{m.train_bound}' with config.model.free_bits="
                      f'{m.free_bits}: free bits act on per-dimension KLs, which that bound does '
                      "not have; set free_bits=0 or train_bound='elbo'.")
  for group, prefix in ((m, 'config.model'), (e, 'config.eval')):
    if group.fivo_resample not in vrae_model.RESAMPLE:
      raise ConfigError(f"{prefix}.fivo_resample='{group.fivo_resample}' is not one of "
                        f'{vrae_model.RESAMPLE}.')
    if group.fivo_resampler not in vrae_model.RESAMPLERS:
      raise ConfigError(f"{prefix}.fivo_resampler='{group.fivo_resampler}' is not one of "
                        f'{vrae_model.RESAMPLERS}.')
  n = e.fivo_particles
  if isinstance(n, bool) or not isinstance(n, int) or n < 0:
    raise ConfigError(f'config.eval.fivo_particles={n!r}: must be an integer >= 0 (0 = off).')
  for field, on in (('config.model.train_bound', m.train_bound == 'fivo'),
                    ('config.eval.fivo_particles', n > 0)):
    value = repr(m.train_bound) if field.endswith('bound') else n
    if on and m.prior == 'global':
      raise ConfigError(f"{field}={value}: the particle filter needs per-step latents z_t, "
                        "and prior='global' has one z; use prior='latent', 'vrnn' or 'srnn'.")
  # The SMC estimate is unbiased for any proposal, the smoothing posterior included, so it
  # evaluates every per-step model; as a training bound it stays the filtering one (FIVO).
  if m.train_bound == 'fivo' and m.posterior != 'filter':
    raise ConfigError("config.model.train_bound='fivo' needs the filtering posterior "
                      f"q(z_t | z_<t, x_<=t) as proposal, not posterior='{m.posterior}': set "
                      "config.model.posterior='filter' (or train_bound='iwae').")


def build_model(config, data_info):
  lik = _likelihood(config, data_info)
  data_lik = data_info.likelihood
  if data_lik and lik != data_lik and not (lik == 'gaussian' and data_lik == 'bernoulli'):
    raise ConfigError(f"config.model.likelihood='{lik}' does not fit config.data.name="
                      f"'{config.data.name}', whose frames call for '{data_lik}'; set "
                      f"config.model.likelihood='{data_lik}' (or '').")
  if lik == 'categorical':
    features = int(data_info.num_classes or config.model.num_classes)
    if features <= 0:
      raise ConfigError('A categorical likelihood needs data_info.num_classes or '
                        'config.model.num_classes > 0.')
  else:
    features = int(data_info.shape[-1])
  m = config.model
  if m.made_hidden and (lik != 'bernoulli' or features < 2):
    raise ConfigError(f'config.model.made_hidden={m.made_hidden}: the frame MADE models Bernoulli '
                      f"frames of >= 2 dimensions, not likelihood='{lik}' with {features}; "
                      'set config.model.made_hidden=0.')
  return vrae_model.VRAE(
      features=features, likelihood=lik, prior=m.prior, posterior=m.posterior,
      hidden=m.hidden, latent=m.latent, mlp_hidden=m.mlp_hidden, unroll=m.unroll,
      remat=bool(m.remat), made_hidden=int(m.made_hidden),
      q_residual=bool(m.srnn_residual) if m.prior == 'srnn' else None,
      dtype=jnp.dtype(config.compute_dtype))


def init_variables(model, rng, batch):
  x, mask = batch['x'], batch['mask']
  batch_size, length = mask.shape
  eps = jnp.zeros((length, batch_size, model.latent), F32)
  return model.init({'params': rng}, x, mask, eps)


# ----------------------------------------------------------------------------
# Loss.
# ----------------------------------------------------------------------------


def latent_noise(model, rng, mask):
  """eps (T, B, latent): slice t from fold_in(rng, t) (vaes.models.vrae.step_noise)."""
  batch_size, length = mask.shape
  return vrae_model.step_noise(rng, length, (batch_size, model.latent))


DROPOUT_STREAM = 1 << 30
RESAMPLE_STREAM = DROPOUT_STREAM + 1     # the particle filter's resampling uniforms


def _dropout_masks(model, rng, mask, dropout):
  """The dropout masks (T, B, d) of `dropout_keep` from fold_in(rng, DROPOUT_STREAM), or
  None when dropout = 0."""
  if dropout <= 0:
    return None
  batch_size, length = mask.shape
  return vrae_model.dropout_keep(jax.random.fold_in(rng, DROPOUT_STREAM), dropout, length,
                                 batch_size, model.dropout_dims)


def sequence_elbo_terms(model, variables, x, mask, rng, dropout=0.0):
  """Per sequence, at one z ~ q: recon = -sum_t mask log p(x_t|.) (B,), the closed-form KL
  per latent dimension (B, latent) and the log weight log p(x, z) - log q(z | x) (B,).
  dropout > 0 (training): masks from fold_in(rng, DROPOUT_STREAM), a key no time step's
  fold_in(rng, t) of the latent noise can equal."""
  mask = mask.astype(F32)
  keep = _dropout_masks(model, rng, mask, dropout)
  out = model.apply(variables, x, mask, latent_noise(model, rng, mask), keep)
  return -out['log_px'].sum(1), out['kl_dims'], out['log_px'].sum(1) + out['logw_z']


def elbo_terms(model, variables, x, mask, rng, dropout=0.0):
  """`sequence_elbo_terms` summed over the batch: recon, kl_dims (latent,), frames = sum
  mask, and the per-sequence log weights (B,)."""
  recon, kl_dims, log_w = sequence_elbo_terms(model, variables, x, mask, rng, dropout)
  return recon.sum(), kl_dims.sum(0), mask.astype(F32).sum(), log_w


def iw_terms(model, variables, x, mask, rng, k, dropout=0.0):
  """`elbo_terms` of k copies of each sequence in one posterior pass: row b * k + i is copy
  i of sequence b, with z-noise step_noise(rng, T, (B, k, latent)) and the dropout masks of
  sequence b. Returns sums over the B k rows recon, kl_dims (latent,), frames (of the B
  sequences), and log p(x | z^i) = sum_t log p(x_t | .) and log p(z^i) - log q(z^i | x),
  each (B, k). k = 1: exactly `elbo_terms`."""
  mask = mask.astype(F32)
  batch_size, length = mask.shape
  keep = _dropout_masks(model, rng, mask, dropout)
  if keep is not None:
    keep = tuple(jnp.repeat(a, k, axis=1) for a in keep)
  eps = vrae_model.step_noise(rng, length, (batch_size, k, model.latent))
  out = model.apply(variables, jnp.repeat(x, k, axis=0), jnp.repeat(mask, k, axis=0),
                    eps.reshape(length, batch_size * k, model.latent), keep)
  return (-out['log_px'].sum(), out['kl_dims'].sum(0), mask.sum(),
          out['log_px'].sum(1).reshape(batch_size, k), out['logw_z'].reshape(batch_size, k))


def fivo_log_likelihood(model, variables, x, mask, rng, k, resample, resampler, beta=1.0,
                        dropout=0.0):
  """The SMC estimate log p^(x) of k particles (VRAE.smc) per sequence (B,), and the number
  of resampling steps (B,). z-noise from rng (k = 1: the z of `elbo_terms` with the same
  rng), resampling uniforms from fold_in(rng, RESAMPLE_STREAM), dropout masks as in
  `elbo_terms` (shared by a sequence's particles); beta scales log p(z_t|.) - log q(z_t|.)."""
  mask = mask.astype(F32)
  out = model.apply(variables, x, mask, rng, jax.random.fold_in(rng, RESAMPLE_STREAM), k,
                    resample, resampler, _dropout_masks(model, rng, mask, dropout), beta,
                    method=vrae_model.VRAE.smc)
  return out['log_p'], out['resamples']


def kl_warmup(config, data_info=None):
  """(N, the field that set it): kl_warmup_fraction of the run, or kl_warmup_steps."""
  del data_info
  m = config.model
  if m.kl_warmup_fraction > 0:
    return (objectives.warmup_length(0, m.kl_warmup_fraction, config.num_train_steps),
            f'config.model.kl_warmup_fraction={m.kl_warmup_fraction}')
  return int(m.kl_warmup_steps), f'config.model.kl_warmup_steps={m.kl_warmup_steps}'


def make_loss_fn(config, model, data_info):
  """loss = recon + beta(step) * sum_d max(free_bits, KL_d), per real frame, or the negative
  'iwae' / 'fivo' bound per real frame (config.model.train_bound; module doc)."""
  free_bits = float(config.model.free_bits)
  warmup = kl_warmup(config, data_info)[0]
  start = float(config.model.kl_warmup_start)
  dropout = float(config.model.dropout)
  bound, k = config.model.train_bound, int(config.model.train_particles)
  resample, resampler = config.model.fivo_resample, config.model.fivo_resampler

  def loss_fn(params, model_state, batch, rng, step):
    variables = {'params': params, **model_state}
    beta = objectives.kl_warmup_weight(step, warmup, start)
    if bound == 'fivo':
      log_p, resamples = fivo_log_likelihood(model, variables, batch['x'], batch['mask'], rng,
                                             k, resample, resampler, beta, dropout)
      frames = jnp.maximum(batch['mask'].astype(F32).sum(), 1.0)
      loss = -log_p.sum() / frames
      return loss, ({'loss': loss, 'neg_fivo_bound_per_frame': loss, 'kl_weight': beta,
                     'resample_rate': resamples.sum() / frames}, model_state)
    if bound == 'iwae':
      recon, kl_dims, frames, log_px, logw_z = iw_terms(model, variables, batch['x'],
                                                        batch['mask'], rng, k, dropout)
      frames = jnp.maximum(frames, 1.0)
      loss = -vrae_model.log_mean_exp(log_px + beta * logw_z).sum() / frames
      recon, kl = recon / (k * frames), kl_dims.sum() / (k * frames)
      return loss, ({'loss': loss, 'neg_iw_bound_per_frame': loss,
                     'neg_elbo_per_frame': recon + kl, 'recon_per_frame': recon,
                     'kl_per_frame': kl, 'kl_weight': beta}, model_state)
    recon, kl_dims, frames, _ = elbo_terms(model, variables, batch['x'], batch['mask'], rng,
                                           dropout)
    frames = jnp.maximum(frames, 1.0)
    recon, kl_dims = recon / frames, kl_dims / frames
    kl = kl_dims.sum()
    kl_pen = objectives.free_bits_kl(kl_dims, free_bits) if free_bits > 0 else kl
    loss = recon + beta * kl_pen
    metrics = {'loss': loss, 'neg_elbo_per_frame': recon + kl, 'recon_per_frame': recon,
               'kl_per_frame': kl, 'kl_weight': beta}
    return loss, (metrics, model_state)

  return loss_fn


# ----------------------------------------------------------------------------
# Evaluation.
# ----------------------------------------------------------------------------


def iw_log_likelihood(model, variables, x, mask, rng, num_samples, chunk_size):
  """log p(x) >= logsumexp_k(log p(x, z^k) - log q(z^k | x)) - log k per sequence (B,).

  The k sequence-level samples z^k ~ q(z_1:T | x) use keys split from rng; they are
  evaluated `chunk_size` at a time (vmap) with lax.map over the chunks, so memory is
  that of chunk_size posterior passes."""
  chunk = min(chunk_size, num_samples)
  keys = jax.random.split(rng, num_samples)
  keys = keys.reshape((num_samples // chunk, chunk) + keys.shape[1:])

  def one_chunk(chunk_keys, weights):
    del weights  # num_samples is a multiple of the chunk (validate_config)
    log_w = jax.vmap(lambda key: sequence_elbo_terms(model, variables, x, mask, key)[2])
    return log_w(chunk_keys), ()

  return objectives.chunked_iw_bound(one_chunk, num_samples, chunk, keys)[0]


def fit_baseline(likelihood, data_info):
  """Per-dimension independent model of the training frames, from the dataset's frame
  statistics (`vaes.data.music.frame_statistics`) -> parameter array (float32), or None
  when the dataset gives no statistics for this likelihood."""
  if data_info.train_frame_sum is None or likelihood not in ('bernoulli', 'gaussian'):
    return None
  count = data_info.train_frame_count
  total = np.asarray(data_info.train_frame_sum, np.float32)
  if likelihood == 'bernoulli':
    p = (total + 1.0) / (count + 2.0)
    return np.log(p / (1 - p)).astype(np.float32)              # logits
  variance = np.asarray(data_info.train_frame_var, np.float32)
  return np.stack([total / np.float32(count), np.log(variance + 1e-6)]).astype(np.float32)


def baseline_log_prob(likelihood, base, x):
  """log p(x_t) under the independent baseline, per frame: (B, T)."""
  if likelihood == 'bernoulli':
    return dist.bernoulli_log_prob(x, base).sum(-1)
  return dist.gaussian_log_prob(x, base[0], base[1]).sum(-1)


def make_eval_batch_fn(model, likelihood, num_samples, chunk_size, base=None, fivo_particles=0,
                       fivo_resample='ess', fivo_resampler='multinomial'):
  """(variables, batch, rng) -> dict of sums over the batch's real frames; `base`, the
  baseline's parameters (`fit_baseline`) or None; fivo_particles = k > 0 adds the SMC
  estimate ('nll_fivo', 'fivo_resamples')."""
  base = None if base is None else jnp.asarray(base)

  def fn(variables, batch, rng):
    valid = batch['valid'].astype(F32)
    mask = batch['mask'].astype(F32) * valid[:, None]
    x = batch['x']
    recon, kl_dims, _ = sequence_elbo_terms(model, variables, x, mask, jax.random.fold_in(rng, 0))
    iw = iw_log_likelihood(model, variables, x, mask, jax.random.fold_in(rng, 1),
                           num_samples, chunk_size)
    per_frame = valid / jnp.maximum(mask.sum(1), 1.0)    # 1 / T_b, 0 on padding rows
    out = {'recon': recon.sum(), 'kl': kl_dims.sum(), 'frames': mask.sum(),
           'nll': -(iw * valid).sum(), 'sequences': valid.sum(),
           'nll_seq': -(iw * per_frame).sum(),
           'neg_elbo_seq': ((recon + kl_dims.sum(-1)) * per_frame).sum()}
    if base is not None:
      out['baseline'] = -(baseline_log_prob(likelihood, base, x) * mask).sum()
    if fivo_particles:
      log_p, resamples = fivo_log_likelihood(model, variables, x, mask, jax.random.fold_in(rng, 2),
                                             fivo_particles, fivo_resample, fivo_resampler)
      out['nll_fivo'] = -(log_p * valid).sum()
      out['fivo_resamples'] = (resamples * valid).sum()
    return out

  return fn


def eval_stats(config, model, data_info):
  e = config.eval
  return make_eval_batch_fn(model, model.likelihood, int(e.num_importance_samples),
                            int(e.iw_chunk_size), fit_baseline(model.likelihood, data_info),
                            int(e.fivo_particles), e.fivo_resample, e.fivo_resampler)


def eval_metrics(config, data_info, totals):
  """The split's metrics of the module docstring, per real frame."""
  del data_info
  frames = max(float(totals['frames']), 1.0)
  sequences = max(float(totals['sequences']), 1.0)
  metrics = {
      'neg_elbo_per_frame': (totals['recon'] + totals['kl']) / frames,
      'recon_per_frame': totals['recon'] / frames,
      'kl_per_frame': totals['kl'] / frames,
      'nll_per_frame': totals['nll'] / frames,
      'nll_per_frame_seq_mean': totals['nll_seq'] / sequences,
      'neg_elbo_per_frame_seq_mean': totals['neg_elbo_seq'] / sequences,
      'num_importance_samples': float(config.eval.num_importance_samples),
      'eval_frames': totals['frames'],
      'eval_sequences': totals['sequences'],
  }
  if 'baseline' in totals:
    metrics['baseline_nll_per_frame'] = totals['baseline'] / frames
  if 'nll_fivo' in totals:
    metrics['nll_fivo_per_frame'] = totals['nll_fivo'] / frames
    metrics['fivo_resample_rate'] = totals['fivo_resamples'] / frames
    metrics['fivo_particles'] = float(config.eval.fivo_particles)
  return {k: float(v) for k, v in metrics.items()}


# ----------------------------------------------------------------------------
# Generation, imputation, reconstruction.
# ----------------------------------------------------------------------------


def x_sample_shape(model, batch_size):
  """Noise per step for sampling x_t: (B, P) values, or (B, K) uniforms for the Gumbel trick."""
  return (batch_size, model.features)


def sample_prior(model, variables, rng, batch_size, length):
  """Ancestral samples x_1:T ~ p: {'x': (B, T, ...), 'mean': (B, T, ...)}."""
  eps = vrae_model.step_noise(jax.random.fold_in(rng, 0), length, (batch_size, model.latent))
  u = vrae_model.step_noise(jax.random.fold_in(rng, 1), length,
                            x_sample_shape(model, batch_size),
                            vrae_model.x_noise_kind(model.likelihood))
  return model.apply(variables, eps, u, method=vrae_model.VRAE.generate)


def impute(model, variables, x, observed, mask, rng):
  """Frames with observed = 0 are filled in; observed frames are returned unchanged."""
  batch_size, length = mask.shape
  eps = vrae_model.step_noise(jax.random.fold_in(rng, 0), length, (batch_size, model.latent))
  u = vrae_model.step_noise(jax.random.fold_in(rng, 1), length,
                            x_sample_shape(model, batch_size),
                            vrae_model.x_noise_kind(model.likelihood))
  return model.apply(variables, x, observed, mask, eps, u, method=vrae_model.VRAE.impute)


def reconstruct(model, variables, x, mask, rng):
  """E[x_t | z_<=t, x_<t] with z ~ q(z | x) (teacher forcing): (B, T, ...); with the frame
  MADE, p(x_td = 1 | x_t<d, z_<=t, x_<t) at the data."""
  mask = mask.astype(F32)
  out = model.apply(variables, x, mask, latent_noise(model, rng, mask))
  return model.apply(variables, out['out'], x, method=vrae_model.VRAE.mean_x)


def hidden_block(mask, frac=(1 / 3, 2 / 3)):
  """observed (B, T): 1 except a middle block [frac0 L, frac1 L) of each sequence's L frames."""
  mask = np.asarray(mask) > 0
  lengths = mask.sum(1)
  t = np.arange(mask.shape[1])[None]
  lo = np.floor(lengths * frac[0])[:, None]
  hi = np.ceil(lengths * frac[1])[:, None]
  return (mask & ~((t >= lo) & (t < hi))).astype(np.float32)


# Jitted prior sampling, imputation and reconstruction: the model (and the sample count
# and length) are static, so jit compiles once per model and shape.
_sample_prior_jit = jax.jit(sample_prior, static_argnums=(0, 3, 4))
_impute_jit = jax.jit(impute, static_argnums=0)
_reconstruct_jit = jax.jit(reconstruct, static_argnums=0)


def _hidden_range(observed, mask):
  hidden = np.flatnonzero((np.asarray(mask) > 0) & (np.asarray(observed) == 0))
  return f'{hidden[0]}-{hidden[-1]}' if len(hidden) else 'none'


def eval_images(ctx, host_batch):
  """prefix+samples.png, prefix+imputation.png, prefix+reconstructions.png in ctx.image_dir."""
  from vaes import plotting
  model, variables = ctx.model, ctx.variables
  valid = np.asarray(host_batch.get('valid', np.ones(len(host_batch['mask']), bool)))
  host_batch = {k: np.asarray(v)[valid] for k, v in host_batch.items() if k in ('x', 'mask')}
  n = max(1, min(int(ctx.config.eval.num_plot_sequences), len(host_batch['mask'])))
  length = host_batch['mask'].shape[1]
  rng = jax.random.fold_in(ctx.rng, 0x1A6E)
  prefix = fs.join(ctx.image_dir, ctx.image_prefix)
  x, mask = np.asarray(host_batch['x'])[:n], np.asarray(host_batch['mask'])[:n]
  observed = hidden_block(mask)
  gen = jax.device_get(_sample_prior_jit(model, variables, jax.random.fold_in(rng, 0), n,
                                         length))
  filled = jax.device_get(_impute_jit(model, variables, x, observed, mask,
                                      jax.random.fold_in(rng, 1)))['x']
  recon = jax.device_get(_reconstruct_jit(model, variables, x, mask,
                                          jax.random.fold_in(rng, 2)))
  paths = {}
  if model.likelihood == 'gaussian':
    m = np.where(mask[..., None] > 0, 1.0, np.nan)     # padding is not drawn
    paths['samples'] = plotting.save_line_plots(
        prefix + 'samples.png', gen['x'], titles=[f'prior sample {i}' for i in range(n)])
    paths['imputation'] = plotting.save_line_plots(
        prefix + 'imputation.png', filled * m, overlays=x * m,
        titles=[f'sequence {i}: imputed (solid; frames {_hidden_range(observed[i], mask[i])} '
                'hidden) vs data (dashed)' for i in range(n)])
    paths['reconstructions'] = plotting.save_line_plots(
        prefix + 'reconstructions.png', recon * m, overlays=x * m,
        titles=[f'sequence {i}: reconstruction mean (solid) vs data (dashed)' for i in range(n)])
    return paths
  to_roll = ((lambda a: np.eye(model.features, dtype=np.float32)[a.astype(int)])
             if model.likelihood == 'categorical' else (lambda a: a))
  paths['samples'] = plotting.save_piano_rolls(
      prefix + 'samples.png', to_roll(gen['x']), titles=[f'prior sample {i}' for i in range(n)])
  rolls, titles, masks = [], [], []
  for i in range(n):
    rolls += [to_roll(x[i]) * observed[i][:, None], to_roll(filled[i])]
    titles += [f'sequence {i}: observed (hidden block blank)', f'sequence {i}: imputed']
    masks += [mask[i], mask[i]]
  paths['imputation'] = plotting.save_piano_rolls(prefix + 'imputation.png', rolls, titles, masks)
  rolls, titles, masks = [], [], []
  for i in range(n):
    rolls += [to_roll(x[i]), recon[i]]
    titles += [f'sequence {i}: data', f'sequence {i}: reconstruction p(x_t | z_<=t, x_<t)']
    masks += [mask[i], mask[i]]
  paths['reconstructions'] = plotting.save_piano_rolls(
      prefix + 'reconstructions.png', rolls, titles, masks)
  from vaes import midi
  if midi.is_piano_roll(model.features, model.likelihood):   # 88-key rolls: hear them too
    for i in range(n):
      paths[f'samples_{i}_midi'] = midi.write_midi(f'{prefix}samples_{i}.mid', gen['x'][i])
      paths[f'imputation_{i}_midi'] = midi.write_midi(f'{prefix}imputation_{i}.mid',
                                                      filled[i, :int(mask[i].sum())])
  return paths


# ----------------------------------------------------------------------------
# sample.py, and MIDI files of generated and imputed chorales.
# ----------------------------------------------------------------------------


def sample_prior_at(model, variables, rng, batch_size, length, temperature):
  """`sample_prior` with the prior's standard deviations times `temperature` (its z-noise
  times T, the same noise: T = 1 gives sample_prior's samples). x_t ~ p(x_t | .) keeps
  its noise."""
  eps = vrae_model.step_noise(jax.random.fold_in(rng, 0), length, (batch_size, model.latent))
  u = vrae_model.step_noise(jax.random.fold_in(rng, 1), length,
                            x_sample_shape(model, batch_size),
                            vrae_model.x_noise_kind(model.likelihood))
  return model.apply(variables, temperature * eps, u, method=vrae_model.VRAE.generate)


def impute_at(model, variables, x, observed, mask, rng, temperature):
  """`impute` with the prior's standard deviations times `temperature` on the hidden
  frames (their z-noise times T, the same noise: T = 1 gives impute's); the posterior
  draws of observed frames, and 'global''s z ~ q(z | observed frames), keep theirs."""
  batch_size, length = mask.shape
  eps = vrae_model.step_noise(jax.random.fold_in(rng, 0), length, (batch_size, model.latent))
  u = vrae_model.step_noise(jax.random.fold_in(rng, 1), length,
                            x_sample_shape(model, batch_size),
                            vrae_model.x_noise_kind(model.likelihood))
  if model.prior != 'global':
    eps = eps * jnp.where(jnp.swapaxes(observed, 0, 1)[..., None] > 0, 1.0, temperature)
  return model.apply(variables, x, observed, mask, eps, u, method=vrae_model.VRAE.impute)


_sample_prior_at_jit = jax.jit(sample_prior_at, static_argnums=(0, 3, 4))
_impute_at_jit = jax.jit(impute_at, static_argnums=0)


def _as_roll(model, a):
  """Frames as a piano-roll-like (T, P) array (categorical tokens one-hot)."""
  a = np.asarray(a)
  if model.likelihood == 'categorical':
    return np.eye(model.features, dtype=np.float32)[a.astype(int)]
  return a


def _write_sequence(path, model, panels, titles, overlay=None, midi_roll=None):
  """path + '.png' (piano rolls, or line plots for a Gaussian likelihood, one panel per
  entry of `panels`) and, with `midi_roll` (an 88-key roll), path + '.mid'. Returns the
  paths written."""
  from vaes import midi, plotting
  if model.likelihood == 'gaussian':
    out = [plotting.save_line_plots(path + '.png', np.stack(panels), titles=titles,
                                    overlays=None if overlay is None else np.stack(overlay))]
  else:
    out = [plotting.save_piano_rolls(path + '.png', [_as_roll(model, p) for p in panels],
                                     titles=titles)]
  if midi_roll is not None:
    out.append(midi.write_midi(path + '.mid', midi_roll))
  return out


def sample(config, options):
  """sample.py: options.num sequences of the data's padded length from the prior, the
  prior's standard deviations times options.temperature; with --impute, the first num
  evaluation sequences with the middle third of their frames hidden (`hidden_block`)
  and filled in (`impute_at`). One folder WORKDIR/samples/<stem>/ with, per sequence,
  sequence_<i>.png (piano roll; line plots for Gaussian frames) and, for 88-key rolls,
  sequence_<i>.mid (vaes/midi.py: a frame is a quarter note)."""
  del config

  def sampler(ctx):
    from vaes import midi
    model, num, temperature = ctx.model, options.num, options.temperature
    playable = midi.is_piano_roll(model.features, model.likelihood)
    folder = fs.join(ctx.out_dir, ctx.stem)
    written = []
    if options.impute:
      data = ctx.eval_examples(num)
      x, mask = data['x'], data['mask']
      observed = hidden_block(mask)
      filled = np.asarray(jax.device_get(_impute_at_jit(
          model, ctx.variables, x, observed, mask, ctx.rng, temperature))['x'])
      for i in range(len(x)):
        n = int(np.asarray(mask[i]).sum())
        hidden = _hidden_range(observed[i], mask[i])
        if model.likelihood == 'gaussian':
          panels, titles = [filled[i, :n]], [f'sequence {i}: imputed (solid; frames {hidden} '
                                              'hidden) vs data (dashed)']
          overlay = [x[i, :n]]
        else:
          panels = [_as_roll(model, x[i, :n]) * observed[i, :n, None], filled[i, :n]]
          titles = [f'sequence {i}: observed (frames {hidden} hidden)',
                    f'sequence {i}: imputed, T={temperature:g}']
          overlay = None
        written += _write_sequence(fs.join(folder, f'sequence_{i:03d}'), model, panels, titles,
                                   overlay, filled[i, :n] if playable else None)
      extra = {'sequences': len(x), 'hidden': 'the middle third of each sequence\'s frames '
                                               '(vaes.families.vrae.hidden_block)'}
    else:
      length = int(ctx.data_info.shape[0])
      gen = np.asarray(jax.device_get(_sample_prior_at_jit(
          model, ctx.variables, ctx.rng, num, length, temperature))['x'])
      for i in range(num):
        written += _write_sequence(fs.join(folder, f'sequence_{i:03d}'), model, [gen[i]],
                                   [f'prior sample {i}, T={temperature:g}'], None,
                                   gen[i] if playable else None)
      extra = {'sequences': num, 'frames': length}
    prefix = fs.join(ctx.out_dir, '')
    return {'files': [p[len(prefix):] for p in written], **extra}

  return sampler


def selection_eval(config):
  """The checkpoint-selection evaluations: config.eval.select_num_importance_samples
  importance samples (`objectives.iw_selection_eval`), and no SMC estimate unless it is the
  selection metric (config.eval.fivo_particles is for eval.py's report)."""
  chosen = objectives.iw_selection_eval(config)
  if config.eval.fivo_particles and not config.eval.select_metric.startswith(
      ('nll_fivo', 'fivo')):
    chosen = copy.deepcopy(chosen)
    chosen.eval.fivo_particles = 0
  return chosen


register_family(ModelFamily(name='vrae', build_model=build_model, init_variables=init_variables,
                            make_loss_fn=make_loss_fn, eval_stats=eval_stats,
                            eval_metrics=eval_metrics, eval_images=eval_images,
                            validate_config=validate_config, kl_warmup=kl_warmup,
                            implementation_fields=IMPLEMENTATION_FIELDS,
                            eval_config=eval_config, selection_eval=selection_eval,
                            sample=sample, sample_options=('impute',)))
