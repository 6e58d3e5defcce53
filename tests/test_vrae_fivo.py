"""FIVO / SMC bounds of the VRAE family (VRAE.smc, config.model.train_bound, eval.fivo_*):
one particle gives the one-sample ELBO, no resampling the IWAE bound, padding changes
nothing, the scan equals a numpy particle filter driven by the same noise, the SMC and IW
estimates of log p(x) agree at large k (on a trained model too, and with the smoothing
posterior as proposal), every bound has finite gradients, and the config checks. Tiny
models called directly (tests/test_vrae.py's, and the golden vrnn_jsb export), no engine."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import assert_same_on_1_and_8_devices, load_config
from tests.test_vrae import B, D, H, P, SEQUENCE_INFO, T, data, loss_config, tiny
from vaes import export_file
from vaes import objectives
from vaes.families import vrae as family
from vaes.models import vrae as vrae_model
from vaes.registry import ConfigError


@functools.lru_cache(maxsize=None)
def smc_fn(prior, k, resample, resampler='multinomial', remat=False, posterior='filter'):
  """Jitted (variables, x, mask, rng) -> (log p^ (B,), resamples (B,)) of
  family.fivo_log_likelihood for the tiny model of tests/test_vrae.py."""
  m = tiny(prior, remat=remat, posterior=posterior)
  return jax.jit(lambda v, x, mask, rng: family.fivo_log_likelihood(
      m.model, v, x, mask, rng, k, resample, resampler))


@functools.lru_cache(maxsize=None)
def iw_fn(prior, k, posterior='filter'):
  """Jitted (variables, x, mask, rng) -> (B,) IWAE bound of family.iw_terms (k copies)."""
  m = tiny(prior, posterior=posterior)
  def fn(v, x, mask, rng):
    _, _, _, log_px, logw_z = family.iw_terms(m.model, v, x, mask, rng, k)
    return vrae_model.log_mean_exp(log_px + logw_z)
  return jax.jit(fn)


@functools.lru_cache(maxsize=None)
def loss_and_grad(prior, bound, k, resample='ess', resampler='multinomial', dropout=0.0,
                  warmup=0, remat=False, grad=True):
  """Jitted (params, batch, rng) -> ((loss, metrics), grads) of the family's loss at step 3
  (KL warm-up from 0.2 over `warmup` steps), or (loss, metrics) if not `grad`."""
  m = tiny(prior, remat=remat)
  config = loss_config(train_bound=bound, train_particles=k, fivo_resample=resample,
                       fivo_resampler=resampler, dropout=dropout, kl_warmup_steps=warmup,
                       kl_warmup_start=0.2)
  loss_fn = family.make_loss_fn(config, m.model, SEQUENCE_INFO)

  def fn(params, batch, rng):    # (loss, metrics) at step 3
    loss, (metrics, _) = loss_fn(params, {}, batch, rng, 3)
    return loss, metrics
  return jax.jit(jax.value_and_grad(fn, has_aux=True) if grad else fn)


def padded(x, mask, pad, seed=5):
  """x and mask with `pad` masked frames appended, garbage in every padded frame."""
  garbage = jax.random.uniform(jax.random.PRNGKey(seed), (B, T + pad, P))
  mask_long = jnp.pad(mask, ((0, 0), (0, pad)))
  x_long = jnp.where(mask_long[..., None] > 0, jnp.pad(x, ((0, 0), (0, pad), (0, 0))), garbage)
  return x_long, mask_long


# -----------------------------------------------------------------------------
# Special cases: one particle = the ELBO, no resampling = IWAE.
# -----------------------------------------------------------------------------


def test_one_particle_is_the_one_sample_elbo_whatever_the_resampling():
  """k = 1: log p^ = log p(x, z) - log q(z | x) at the z of elbo_terms with the same rng
  (FIVO and 'iwae' alike); 'iwae' with k = 1 computes exactly elbo_terms."""
  prior = 'latent'       # 'vrnn' in the tests below
  m = tiny(prior)
  x, mask = data()
  rng = jax.random.PRNGKey(21)
  recon, kl_dims, frames, log_w = jax.jit(
      lambda v: family.elbo_terms(m.model, v, x, mask, rng))(m.variables)
  for resample in vrae_model.RESAMPLE:
    log_p, resamples = smc_fn(prior, 1, resample)(m.variables, x, mask, rng)
    np.testing.assert_allclose(log_p, log_w, rtol=1e-6, atol=1e-5)
    # One particle: ESS = 1 = k never falls below k/2; 'always' resamples every real frame.
    expected = mask.sum(1) if resample == 'always' else jnp.zeros(B)
    np.testing.assert_array_equal(resamples, expected)
  terms = jax.jit(lambda v: family.iw_terms(m.model, v, x, mask, rng, 1))(m.variables)
  np.testing.assert_array_equal(terms[0], recon)
  np.testing.assert_array_equal(terms[1], kl_dims)
  np.testing.assert_array_equal(terms[2], frames)
  np.testing.assert_array_equal((terms[3] + terms[4])[:, 0], log_w)
  # The losses: -sum_b log w_b / F for both bounds; 'iwae' reports the ELBO of 'elbo'.
  batch, params = {'x': x, 'mask': mask}, m.variables['params']
  elbo_loss, elbo_metrics = loss_and_grad(prior, 'elbo', 1, grad=False)(params, batch, rng)
  iw_loss, iw_metrics = loss_and_grad(prior, 'iwae', 1, grad=False)(params, batch, rng)
  fivo_loss, _ = loss_and_grad(prior, 'fivo', 1, 'always', grad=False)(params, batch, rng)
  one_sample = -float(log_w.sum()) / float(frames)
  np.testing.assert_allclose(iw_loss, one_sample, rtol=1e-6)
  np.testing.assert_allclose(fivo_loss, one_sample, rtol=1e-6)
  assert iw_metrics['neg_elbo_per_frame'] == elbo_metrics['neg_elbo_per_frame']
  assert abs(one_sample - float(elbo_loss)) > 1e-4   # the closed-form KL is another estimate


def test_fivo_without_resampling_is_the_iwae_bound():
  """resample 'never': the particle filter's log p^ is log mean_k p(x, z^k) / q(z^k | x)
  of the k copies of iw_terms (the same z-noise), and the two training losses and their
  gradients agree, dropout masks and KL warm-up weight included."""
  prior, dropout = 'vrnn', 0.3
  m = tiny(prior)
  x, mask = data()
  rng, k = jax.random.PRNGKey(22), 5
  log_p, resamples = smc_fn(prior, k, 'never')(m.variables, x, mask, rng)
  np.testing.assert_allclose(log_p, iw_fn(prior, k)(m.variables, x, mask, rng),
                             rtol=1e-6, atol=1e-5)
  assert np.all(np.asarray(resamples) == 0)
  batch, params = {'x': x, 'mask': mask}, m.variables['params']
  (iw_loss, iw_m), g_iw = loss_and_grad(prior, 'iwae', k, dropout=dropout, warmup=10)(
      params, batch, rng)
  (fivo_loss, fivo_m), g_fivo = loss_and_grad(prior, 'fivo', k, 'never', dropout=dropout,
                                              warmup=10)(params, batch, rng)
  assert float(iw_m['kl_weight']) == pytest.approx(0.2 + 0.8 * 0.3)
  np.testing.assert_allclose(fivo_loss, iw_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               g_fivo, g_iw)
  # ... and resampling does change the estimate (the same z-noise at every step).
  always, _ = smc_fn(prior, k, 'always')(m.variables, x, mask, rng)
  assert np.abs(np.asarray(always - log_p)).max() > 1e-3


@pytest.mark.parametrize('prior', ['vrnn', 'srnn'])
def test_the_smoothing_posterior_as_proposal_keeps_both_special_cases(prior):
  """posterior='smooth' (the evaluation's SMC estimate of the SRNN rows): one particle is
  the one-sample ELBO at the z of elbo_terms, no resampling the IWAE bound of iw_terms;
  resampling changes the estimate, so the backward states b_t travel with the particles."""
  m = tiny(prior, posterior='smooth')
  x, mask = data()
  rng, k = jax.random.PRNGKey(23), 5
  _, _, _, log_w = jax.jit(lambda v: family.elbo_terms(m.model, v, x, mask, rng))(m.variables)
  one, _ = smc_fn(prior, 1, 'always', posterior='smooth')(m.variables, x, mask, rng)
  np.testing.assert_allclose(one, log_w, rtol=1e-6, atol=1e-5)
  never, _ = smc_fn(prior, k, 'never', posterior='smooth')(m.variables, x, mask, rng)
  np.testing.assert_allclose(never, iw_fn(prior, k, 'smooth')(m.variables, x, mask, rng),
                             rtol=1e-6, atol=1e-5)
  always, _ = smc_fn(prior, k, 'always', posterior='smooth')(m.variables, x, mask, rng)
  assert np.abs(np.asarray(always - never)).max() > 1e-3


# -----------------------------------------------------------------------------
# Padding.
# -----------------------------------------------------------------------------


@pytest.mark.parametrize('resample,resampler', [('always', 'multinomial'),
                                                ('ess', 'systematic')])
def test_padding_changes_neither_the_bound_nor_its_gradients_nor_the_resampling(resample,
                                                                                resampler):
  m = tiny('vrnn')
  x, mask = data()
  rng, k = jax.random.PRNGKey(23), 6
  x_long, mask_long = padded(x, mask, 4)
  fn = smc_fn('vrnn', k, resample, resampler)
  log_p, resamples = fn(m.variables, x, mask, rng)
  log_p_long, resamples_long = fn(m.variables, x_long, mask_long, rng)
  np.testing.assert_allclose(log_p_long, log_p, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(resamples_long, resamples)
  if resample == 'always':      # every real frame resamples, no padded one does
    np.testing.assert_array_equal(resamples, mask.sum(1))
  grad = loss_and_grad('vrnn', 'fivo', k, resample, resampler)
  params = m.variables['params']
  (loss_a, _), g_a = grad(params, {'x': x, 'mask': mask}, rng)
  (loss_b, _), g_b = grad(params, {'x': x_long, 'mask': mask_long}, rng)
  np.testing.assert_allclose(loss_b, loss_a, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g_a, g_b)
  # A masked frame in the middle: what it holds reaches nothing, and it does not resample.
  hole = jnp.ones((B, T)).at[:, 3].set(0.0)
  a, count = fn(m.variables, x, hole, rng)
  b, _ = fn(m.variables, x.at[:, 3].set(1.0 - x[:, 3]), hole, rng)
  np.testing.assert_array_equal(a, b)
  if resample == 'always':
    np.testing.assert_array_equal(count, jnp.full((B,), T - 1.0))


# -----------------------------------------------------------------------------
# The scan equals a numpy particle filter given the same noise.
# -----------------------------------------------------------------------------


def numpy_smc(m, x, mask, rng_z, rng_u, k, resample, resampler):
  """The SMC recursion by Python loops (time, sequences) in float64 numpy around the jitted
  posterior_step on the B k particle rows, with the noise VRAE.smc draws: z-noise
  step_noise(rng_z, T, (B, k, D)), uniforms step_noise(rng_u, T, (B, k), 'uniform')."""
  eps = np.asarray(vrae_model.step_noise(rng_z, T, (B, k, D))).reshape(T, B * k, D)
  u = np.asarray(vrae_model.step_noise(rng_u, T, (B, k), 'uniform'), np.float64)
  x, mask = np.asarray(x), np.asarray(mask)
  rep = lambda a: np.repeat(a, k, axis=0)
  lme = lambda a: np.log(np.mean(np.exp(a - a.max()))) + a.max()
  state = [np.zeros((B * k, n), np.float32) for n in (H, H, H, D, P)]
  log_w, log_p, count = np.zeros((B, k)), np.zeros(B), np.zeros(B)
  ones = np.ones((B * k, 1), np.float32)
  for t in range(T):
    state, ys = m.step(m.variables, tuple(state), (rep(x[:, t]), rep(mask[:, t]), eps[t],
                                                   np.zeros((B * k, 0), np.float32),
                                                   (ones, ones)))
    state = [np.array(a) for a in state]
    log_w += (np.asarray(ys['log_px'], np.float64)
              + np.asarray(ys['logw_z'], np.float64)).reshape(B, k)
    for b in range(B):
      if resample == 'never' or mask[b, t] == 0:
        continue
      w = np.exp(log_w[b] - log_w[b].max())
      if resample == 'ess' and w.sum() ** 2 / (w ** 2).sum() >= k / 2:
        continue
      cdf = np.cumsum(w / w.sum())
      v = u[t, b] if resampler == 'multinomial' else (np.arange(k) + u[t, b, 0]) / k
      ancestors = np.minimum(np.searchsorted(cdf, v, side='right'), k - 1)
      rows = slice(b * k, (b + 1) * k)
      for a in state:
        a[rows] = a[rows][ancestors]
      log_p[b] += lme(log_w[b])
      log_w[b] = 0.0
      count[b] += 1
  return log_p + np.array([lme(w) for w in log_w]), count


@pytest.mark.parametrize('resample,resampler', [('always', 'multinomial'),
                                                ('ess', 'multinomial'),
                                                ('ess', 'systematic')])
def test_scan_equals_a_numpy_particle_filter_with_the_same_noise(resample, resampler):
  m = tiny('vrnn')
  x, mask = data()
  rng, k = jax.random.PRNGKey(24), 8
  log_p, resamples = smc_fn('vrnn', k, resample, resampler)(m.variables, x, mask, rng)
  ref, count = numpy_smc(m, x, mask, rng, jax.random.fold_in(rng, family.RESAMPLE_STREAM), k,
                         resample, resampler)
  np.testing.assert_array_equal(resamples, count)
  np.testing.assert_allclose(log_p, ref, rtol=1e-5, atol=1e-4)
  if resample == 'ess':     # adaptive: some frames resample, not all
    assert 0 < count.sum() < mask.sum()


def test_resample_ancestors_follow_the_weights():
  """Both resamplers draw each ancestor with probability w_j / sum w (many rows), and
  systematic resampling gives particle j floor(k W_j) or ceil(k W_j) offspring."""
  k, rows = 5, 20000
  log_w = jnp.log(jnp.array([0.05, 0.4, 0.05, 0.3, 0.2]))
  u = jax.random.uniform(jax.random.PRNGKey(0), (rows, k), minval=1e-6, maxval=1 - 1e-6)
  for resampler in vrae_model.RESAMPLERS:
    a = np.asarray(vrae_model.resample_ancestors(jnp.tile(log_w, (rows, 1)), u, resampler))
    counts = np.stack([(a == j).sum(1) for j in range(k)], 1)      # offspring per row
    np.testing.assert_allclose(counts.mean(0) / k, np.exp(log_w), atol=0.01)
    if resampler == 'systematic':
      kw = k * np.exp(np.asarray(log_w))
      assert np.all((counts >= np.floor(kw) - 1e-9) & (counts <= np.ceil(kw) + 1e-9))
  ess = vrae_model.effective_sample_size(jnp.array([[0.0, 0.0, 0.0, 0.0], [0.0, -50, -50, -50]]))
  np.testing.assert_allclose(ess, [4.0, 1.0], rtol=1e-5)


# -----------------------------------------------------------------------------
# SMC and IW estimates of log p(x) agree at large k.
# -----------------------------------------------------------------------------


def assert_smc_and_iw_agree(model, variables, x, mask, k, repeats):
  """`repeats` independent estimates of log p(x) per sequence by the evaluation's two
  estimators, SMC (k particles, ESS resampling) and IW (k samples, `iw_log_likelihood`):
  both converge to log p(x), so their means agree within Monte Carlo error (4 standard
  errors of the difference, + 0.02 nats for the remaining O(1/k) biases). The comparison
  has power: the IW bound of 4 samples is further away than that."""
  keys = jax.random.split(jax.random.PRNGKey(25), repeats)

  def iw(num):     # (R, B)
    return np.asarray(jax.jit(jax.vmap(lambda key: family.iw_log_likelihood(
        model, variables, x, mask, key, num, min(num, 100))))(keys), np.float64)

  smc = jax.jit(jax.vmap(lambda key: family.fivo_log_likelihood(
      model, variables, x, mask, key, k, 'ess', 'multinomial')[0]))
  f, w, small = np.asarray(smc(keys), np.float64), iw(k), iw(4)
  se = np.sqrt(f.var(0, ddof=1) / repeats + w.var(0, ddof=1) / repeats)
  diff = f.mean(0) - w.mean(0)
  print('SMC', f.mean(0), 'IW', w.mean(0), 'IW k=4', small.mean(0), 'SE', se)
  assert np.all(np.abs(diff) < 4 * se + 0.02), (diff, se)
  assert np.any(w.mean(0) - small.mean(0) > 4 * se + 0.02), (w.mean(0), small.mean(0))


def test_smc_and_iw_estimates_agree_at_large_k_on_a_trained_model():
  """k = 500, 10 repeats, on a trained VRNN: the golden vrnn_jsb export (tests/golden: the
  VRNN of configs/vrnn_jsb.py at tiny sizes after 200 steps on JSB Chorales, so q differs
  from the prior), scoring the first 8 frames of three real test chorales."""
  from tests.golden import regenerate as golden_lib   # pylint: disable=import-outside-toplevel
  from vaes import data as data_lib                   # pylint: disable=import-outside-toplevel
  golden = golden_lib.GOLDEN['vrnn_jsb']
  config = golden_lib.load_golden_config(golden)
  splits = data_lib.get_datasets(config)
  batch = next(iter(splits.eval))
  x, mask = jnp.asarray(batch['x'][:3, :8]), jnp.asarray(batch['mask'][:3, :8])
  assert float(mask.sum()) == 24.0
  variables, _ = export_file.load_export(golden.export)
  assert_smc_and_iw_agree(family.build_model(config, splits.info), variables, x, mask, 500, 10)


def test_smc_and_iw_estimates_agree_at_large_k_with_the_smoothing_posterior():
  """k = 1000, 12 repeats, on the tiny SRNN with the smoothing posterior and its three
  sequences of 7, 5 and 3 frames: the proposal reads the future frames, and SMC is still
  unbiased (the evaluation's SMC estimate of the SRNN rows)."""
  m = tiny('srnn', posterior='smooth')
  x, mask = data()
  assert_smc_and_iw_agree(m.model, m.variables, x, mask, 1000, 12)


# -----------------------------------------------------------------------------
# Gradients, remat, evaluation.
# -----------------------------------------------------------------------------


@pytest.mark.parametrize('bound,k,resample,resampler', [
    ('elbo', 1, 'ess', 'multinomial'), ('iwae', 4, 'ess', 'multinomial'),
    ('fivo', 4, 'always', 'multinomial'), ('fivo', 4, 'ess', 'systematic'),
    ('fivo', 4, 'never', 'multinomial')])
def test_every_bound_has_finite_nonzero_gradients(bound, k, resample, resampler):
  m = tiny('vrnn')
  x, mask = data()
  (loss, metrics), grads = loss_and_grad('vrnn', bound, k, resample, resampler)(
      m.variables['params'], {'x': x, 'mask': mask}, jax.random.PRNGKey(26))
  assert np.isfinite(float(loss)) and float(loss) > 0
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
  assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0
  assert all(np.isfinite(float(v)) for v in metrics.values())


def test_fivo_step_same_on_1_and_8_devices(tmp_path):
  """The real train step with the FIVO bound (resampling at every frame, so particles are
  gathered by ancestor indices on the batch sharded over 8 devices) equals the 1-device step."""
  overrides = {'batch_size': 16, 'model.hidden': 16, 'model.latent': 4, 'model.mlp_hidden': 16,
               'data.max_len': 16, 'data.num_chorales': 10, 'data.cache_dir': str(tmp_path),
               'model.train_bound': 'fivo', 'model.train_particles': 3,
               'model.fivo_resample': 'always', 'model.kl_warmup_steps': 2}
  one, _ = assert_same_on_1_and_8_devices('configs/vrae.py', overrides, tmp_path, num_steps=3)
  assert all(m['resample_rate'] == 1.0 for m in one['metrics'])


def test_remat_does_not_change_the_fivo_loss_or_its_gradients():
  m = tiny('vrnn')
  x, mask = data()
  batch, rng, params = {'x': x, 'mask': mask}, jax.random.PRNGKey(27), m.variables['params']
  (a, _), g_a = loss_and_grad('vrnn', 'fivo', 4, 'always')(params, batch, rng)
  (b, _), g_b = loss_and_grad('vrnn', 'fivo', 4, 'always', remat=True)(params, batch, rng)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-6), g_a, g_b)


def test_evaluation_reports_the_smc_estimate_of_the_valid_sequences():
  m = tiny('vrnn')
  x, mask = data()
  batch = {'x': x, 'mask': mask, 'valid': jnp.array([True, True, False])}
  rng, k = jax.random.PRNGKey(28), 16
  fn = family.make_eval_batch_fn(m.model, 'bernoulli', 8, 4, fivo_particles=k,
                                 fivo_resample='always', fivo_resampler='systematic')
  out = jax.jit(fn)(m.variables, batch, rng)
  real = mask * jnp.array([1.0, 1.0, 0.0])[:, None]
  log_p, resamples = jax.jit(lambda v: family.fivo_log_likelihood(
      m.model, v, x, real, jax.random.fold_in(rng, 2), k, 'always', 'systematic'))(m.variables)
  np.testing.assert_allclose(out['nll_fivo'], -log_p[:2].sum(), rtol=1e-6)
  assert float(out['fivo_resamples']) == float(mask[:2].sum())     # 'always': every frame
  config = load_config('configs/vrae.py', {'eval.fivo_particles': k})
  totals = jax.tree.map(lambda a: np.asarray(a, np.float64), out)
  metrics = family.eval_metrics(config, None, totals)
  frames = float(real.sum())
  assert metrics['nll_fivo_per_frame'] == pytest.approx(float(out['nll_fivo']) / frames)
  assert metrics['fivo_resample_rate'] == 1.0 and metrics['fivo_particles'] == k
  plain = jax.jit(family.make_eval_batch_fn(m.model, 'bernoulli', 8, 4))(m.variables, batch, rng)
  assert 'nll_fivo' not in plain
  np.testing.assert_array_equal(plain['nll'], out['nll'])     # the IW estimate is unchanged
  assert 'nll_fivo_per_frame' not in family.eval_metrics(
      config, None, jax.tree.map(np.asarray, plain))


def test_the_per_sequence_average_weighs_each_valid_sequence_once():
  """nll_per_frame_seq_mean (the SRNN repository's average): each valid sequence's -log p(x)
  over its own frames, then the mean over sequences; nll_per_frame pools the frames."""
  m = tiny('vrnn')
  x, mask = data()                                   # lengths T, T - 2, 3
  batch = {'x': x, 'mask': mask, 'valid': jnp.array([True, False, True])}
  rng = jax.random.PRNGKey(29)
  out = jax.jit(family.make_eval_batch_fn(m.model, 'bernoulli', 8, 4))(m.variables, batch, rng)
  real = mask * jnp.array([1.0, 0.0, 1.0])[:, None]
  log_p = family.iw_log_likelihood(m.model, m.variables, x, real, jax.random.fold_in(rng, 1), 8, 4)
  lengths = np.asarray(mask.sum(1))
  per_sequence = [-float(log_p[i]) / lengths[i] for i in (0, 2)]
  np.testing.assert_allclose(out['nll_seq'], sum(per_sequence), rtol=1e-5)
  recon, kl_dims, _ = family.sequence_elbo_terms(m.model, m.variables, x, real,
                                                 jax.random.fold_in(rng, 0))
  elbo_per_sequence = [float(recon[i] + kl_dims[i].sum()) / lengths[i] for i in (0, 2)]
  metrics = family.eval_metrics(load_config('configs/vrae.py'), None,
                                jax.tree.map(lambda a: np.asarray(a, np.float64), out))
  assert metrics['nll_per_frame_seq_mean'] == pytest.approx(np.mean(per_sequence), rel=1e-5)
  assert metrics['neg_elbo_per_frame_seq_mean'] == pytest.approx(np.mean(elbo_per_sequence),
                                                                 rel=1e-5)
  assert metrics['neg_elbo_per_frame'] == pytest.approx(
      sum(elbo_per_sequence[j] * lengths[i] for j, i in enumerate((0, 2)))
      / (lengths[0] + lengths[2]), rel=1e-5)
  pooled = -float(log_p[0] + log_p[2]) / (lengths[0] + lengths[2])
  assert metrics['nll_per_frame'] == pytest.approx(pooled, rel=1e-5)
  assert abs(metrics['nll_per_frame_seq_mean'] - pooled) > 1e-3 * abs(pooled)   # T != 3


# -----------------------------------------------------------------------------
# Config.
# -----------------------------------------------------------------------------


@pytest.mark.parametrize('overrides,message', [
    ({'model.train_bound': 'smc'}, "config.model.train_bound='smc' is not one of"),
    ({'model.train_particles': 0}, 'config.model.train_particles=0: must be an integer >= 1'),
    ({'model.train_particles': 4}, "config.model.train_particles=4 needs "
                                   "config.model.train_bound='iwae' or 'fivo'"),
    ({'model.train_bound': 'fivo', 'model.posterior': 'smooth', 'model.prior': 'vrnn'},
     "config.model.train_bound='fivo' needs the filtering posterior q(z_t | z_<t, x_<=t) as "
     "proposal, not posterior='smooth': set config.model.posterior='filter' (or "
     "train_bound='iwae')."),
    ({'model.train_bound': 'fivo', 'model.prior': 'global'}, "prior='global' has one z"),
    ({'model.train_bound': 'iwae', 'model.free_bits': 0.1}, 'free bits act on'),
    ({'model.fivo_resample': 'sometimes'}, "config.model.fivo_resample='sometimes' is not"),
    ({'eval.fivo_resampler': 'stratified'}, "config.eval.fivo_resampler='stratified' is not"),
    ({'eval.fivo_particles': -1}, 'config.eval.fivo_particles=-1: must be an integer >= 0'),
])
def test_config_checks_name_the_field_and_the_fix(overrides, message):
  config = load_config('configs/vrae.py', overrides)
  with pytest.raises(ConfigError) as err:
    family.validate_config(config)
  assert message in str(err.value)
  assert '\n' not in str(err.value)


@pytest.mark.parametrize('path,overrides', [
    ('configs/vrnn_fivo_jsb.py', {}),
    ('configs/vrae.py', {'model.train_bound': 'iwae', 'model.train_particles': 3,
                         'model.posterior': 'smooth', 'model.dropout': 0.2}),
    ('configs/vrae.py', {'model.train_bound': 'iwae', 'model.train_particles': 2,
                         'model.prior': 'global'}),
])
def test_bound_configs_validate_and_their_losses_trace(path, overrides):
  config = load_config(path, overrides)
  family.validate_config(config)
  info = SEQUENCE_INFO.__class__(kind='sequence', shape=(12, 88), likelihood='bernoulli')
  batch = {'x': jnp.zeros((2, 12, 88)), 'mask': jnp.ones((2, 12))}
  model = family.build_model(config, info)
  params = jax.eval_shape(lambda r: family.init_variables(model, r, batch),
                          jax.random.PRNGKey(0))['params']
  loss, (metrics, _) = jax.eval_shape(family.make_loss_fn(config, model, info), params, {},
                                      batch, jax.random.PRNGKey(1), jnp.int32(0))
  assert loss.shape == () and 'loss' in metrics
  if config.model.train_bound == 'fivo':
    assert 'neg_fivo_bound_per_frame' in metrics and 'resample_rate' in metrics


def test_objectives_iw_bound_is_log_mean_exp():
  log_w = jax.random.normal(jax.random.PRNGKey(0), (4, 7)) * 3
  np.testing.assert_allclose(vrae_model.log_mean_exp(log_w, axis=0),
                             objectives.iw_bound(log_w, axis=0), rtol=1e-6)


def test_selection_evaluations_skip_the_smc_estimate_unless_it_selects():
  """eval.fivo_particles is eval.py's report: the cheap evaluations that choose the
  checkpoint leave it out, unless the checkpoint is chosen on it."""
  config = load_config('configs/vrnn_fivo_jsb.py')
  assert config.eval.fivo_particles == 500
  chosen = family.selection_eval(config)
  assert chosen.eval.fivo_particles == 0
  assert chosen.eval.num_importance_samples == config.eval.select_num_importance_samples
  assert config.eval.fivo_particles == 500          # the report's config is left as it was
  config = load_config('configs/vrnn_fivo_jsb.py', {'eval.select_metric': 'nll_fivo_per_frame'})
  assert family.selection_eval(config).eval.fivo_particles == 500
