"""VRAE: scan vs Python loop, masking, closed-form KL, importance-weighted bound, noise,
imputation and generation. Tiny models called directly (no engine); the CLI and the
8-device step are in test_vrae_engine.py, the data in test_data_music.py."""

import functools
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tests.helpers import model_fields
from vaes import distributions as dist
from vaes.data import DataInfo
from vaes import objectives
from vaes.families import vrae as family
from vaes.models import vrae as vrae_model
from vaes.models.vrae import VRAE

P, H, D, B, T = 6, 8, 3, 3, 7
SEQUENCE_INFO = DataInfo(kind='sequence', shape=(T, P))   # what the loss reads: nothing


def random_variables(model, likelihood, seed=0):
  """Variables of the model's shapes (jax.eval_shape of init) filled with scaled normal
  values: compiling the real initialisers (orthogonal GRU kernels) would take longer than
  the tests themselves."""
  x, mask = data(likelihood)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, mask, jnp.zeros((T, B, D)))
  rng = np.random.default_rng(seed)
  scale = lambda s: 0.1 if len(s.shape) == 1 else 1.0 / np.sqrt(s.shape[0])
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * scale(s), s.dtype),
                      shapes)


@functools.lru_cache(maxsize=None)
def tiny(prior='latent', likelihood='bernoulli', unroll=1, remat=False, posterior='filter'):
  """A tiny VRAE, its variables and jitted functions, built once per variant (compiling
  is what costs time here, so tests share these functions and their input shapes).
  prior='srnn' has the paper's residual posterior mean (tests/test_srnn.py has its own)."""
  model = VRAE(features=P, likelihood=likelihood, prior=prior, posterior=posterior, hidden=H,
               latent=D, mlp_hidden=H, unroll=unroll, remat=remat, made_hidden=0,
               q_residual=True if prior == 'srnn' else None)
  variables = random_variables(model, likelihood)
  loss_fn = family.make_loss_fn(loss_config(free_bits=0.05), model, SEQUENCE_INFO)
  return types.SimpleNamespace(
      model=model, variables=variables,
      # posterior pass with the noise of family.latent_noise(model, rng, mask)
      fwd=jax.jit(lambda v, x, mask, rng, keep=None: model.apply(
          v, x, mask, family.latent_noise(model, rng, mask), keep)),
      step=jax.jit(functools.partial(model.apply, method=VRAE.posterior_step)),
      back_step=jax.jit(functools.partial(model.apply, method=VRAE.backward_step)),
      # loss (free bits 0.05, step 3) and its gradient
      grad=jax.jit(jax.value_and_grad(
          lambda p, b, rng: loss_fn(p, {}, b, rng, 3)[0])),
      sample=jax.jit(lambda v, rng: family.sample_prior(model, v, rng, B, T)),
      impute=jax.jit(lambda v, x, obs, mask, rng: family.impute(model, v, x, obs, mask, rng)))


def data(likelihood='bernoulli', seed=0):
  """x (B, T, ...) and mask (B, T) with lengths T, T-2, 3 (padding at the end)."""
  rng = np.random.default_rng(seed)
  if likelihood == 'categorical':
    x = rng.integers(0, P, (B, T)).astype(np.int32)
  elif likelihood == 'gaussian':
    x = rng.normal(size=(B, T, P)).astype(np.float32)
  else:
    x = (rng.random((B, T, P)) < 0.4).astype(np.float32)
  lengths = np.array([T, T - 2, 3])
  mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(mask)


def loss_config(**model):
  """The family's model fields (model_config) with no warm-up, free bits or dropout."""
  c = ml_collections.ConfigDict()
  c.model = family.model_config()
  c.model.update({'free_bits': 0.0, 'kl_warmup_steps': 0, 'kl_warmup_fraction': 0.0,
                  'kl_warmup_start': 0.0, 'dropout': 0.0, **model})
  return c


@functools.lru_cache(maxsize=None)
def pool(num=1024, seed=9, prior='latent', posterior='filter'):
  """`num` posterior passes of a tiny model on data(): per-sample log p(x_t|.), KL_t and
  log p(z)-log q(z) summed over time, each (num, B)."""
  m = tiny(prior, posterior=posterior)
  x, mask = data()
  keys = jax.random.split(jax.random.PRNGKey(seed), num)
  out = jax.jit(jax.vmap(lambda k: m.fwd(m.variables, x, mask, k)))(keys)
  return {'log_px': np.asarray(out['log_px']).sum(-1), 'kl': np.asarray(out['kl']).sum(-1),
          'logw_z': np.asarray(out['logw_z'])}


# -----------------------------------------------------------------------------
# The scan equals a Python loop over the same step, given the same noise.
# -----------------------------------------------------------------------------


def python_backward(m, x, mask, keep_x):
  """b_t = GRU_b(b_{t+1}, x_t * keep_x_t) by a Python loop from the last frame to the first:
  (T, B, H) for the smoothing posterior, (T, B, 0) for the filter."""
  if m.model.posterior == 'filter':
    return jnp.zeros((T, B, 0))
  b, out = jnp.zeros((B, H)), [None] * T
  for t in reversed(range(T)):
    b, out[t] = m.back_step(m.variables, b, (x[:, t], mask[:, t], keep_x[t]))
  return jnp.stack(out)


@pytest.mark.parametrize('prior,posterior,rate', [('latent', 'filter', 0.0),
                                                  ('vrnn', 'filter', 0.0),
                                                  ('vrnn', 'smooth', 0.4)])
def test_scan_equals_python_loop_step_by_step(prior, posterior, rate):
  m = tiny(prior, posterior=posterior)
  x, mask = data()
  rng = jax.random.PRNGKey(1)
  keep = vrae_model.dropout_keep(jax.random.PRNGKey(2), rate, T, B, m.model.dropout_dims)
  out = m.fwd(m.variables, x, mask, rng, keep)
  eps = family.latent_noise(m.model, rng, mask)
  back = python_backward(m, x, mask, keep[0])
  carry = (jnp.zeros((B, H)),) * 3 + (jnp.zeros((B, D)), jnp.zeros((B, P)))
  for t in range(T):
    carry, ys = m.step(m.variables, carry,
                       (x[:, t], mask[:, t], eps[t], back[t], (keep[0][t], keep[1][t])))
    np.testing.assert_allclose(out['log_px'][:, t], ys['log_px'], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out['kl'][:, t], ys['kl'].sum(-1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out['z'][:, t], ys['z'], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out['out'][:, t], ys['out'], rtol=1e-5, atol=1e-5)
  # The steps did differ: a scan that repeated step 0 would fail the checks above.
  assert np.abs(np.diff(np.asarray(out['z'][0]), axis=0)).min() > 0


def test_generation_scan_equals_python_loop():
  m = tiny('latent')
  rng = jax.random.PRNGKey(2)
  gen = m.sample(m.variables, rng)      # noise as in family.sample_prior
  eps = vrae_model.step_noise(jax.random.fold_in(rng, 0), T, (B, D))
  u = vrae_model.step_noise(jax.random.fold_in(rng, 1), T, (B, P), 'uniform')
  step = jax.jit(functools.partial(m.model.apply, method=VRAE.generate_step))
  carry = (jnp.zeros((B, H)), jnp.zeros((B, H)), jnp.zeros((B, D)), jnp.zeros((B, P)))
  for t in range(T):
    carry, ys = step(m.variables, carry, (eps[t], u[t]))
    np.testing.assert_array_equal(gen['x'][:, t], ys['x'])
    np.testing.assert_allclose(gen['mean'][:, t], ys['mean'], rtol=1e-5, atol=1e-6)


def test_unroll_and_remat_do_not_change_loss_or_gradients():
  x, mask = data()
  batch, rng = {'x': x, 'mask': mask}, jax.random.PRNGKey(4)
  base, remat = tiny('latent'), tiny('latent', remat=True)
  loss_a, g_a = base.grad(base.variables['params'], batch, rng)
  loss_b, g_b = remat.grad(base.variables['params'], batch, rng)
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g_a, g_b)
  unrolled = tiny('latent', unroll=3)
  out_a = base.fwd(base.variables, x, mask, rng)
  out_b = unrolled.fwd(base.variables, x, mask, rng)
  for key in ('log_px', 'kl', 'logw_z', 'z'):
    np.testing.assert_allclose(out_a[key], out_b[key], rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_log_probs():
  base = tiny('latent')
  model = VRAE(**model_fields(VRAE, family, features=P, hidden=H, latent=D, mlp_hidden=H,
                              dtype=jnp.bfloat16))
  x, mask = data()
  rng = jax.random.PRNGKey(4)
  out = jax.jit(lambda v: model.apply(v, x, mask, family.latent_noise(model, rng, mask)))(
      base.variables)
  ref = base.fwd(base.variables, x, mask, rng)
  for key in ('log_px', 'kl', 'logw_z', 'z'):
    assert out[key].dtype == jnp.float32, key
  np.testing.assert_allclose(out['log_px'].sum(), ref['log_px'].sum(), rtol=2e-2)
  np.testing.assert_allclose(out['kl'].sum(), ref['kl'].sum(), rtol=5e-2)


# -----------------------------------------------------------------------------
# Masks: padded frames change neither the loss, nor the gradients, nor the state.
# -----------------------------------------------------------------------------


@pytest.mark.parametrize('prior,posterior', [('latent', 'filter'), ('global', 'filter'),
                                             ('vrnn', 'smooth')])
def test_padding_changes_neither_loss_nor_gradients(prior, posterior):
  m = tiny(prior, posterior=posterior)
  x, mask = data()
  pad, rng = 5, jax.random.PRNGKey(4)
  garbage = jax.random.uniform(jax.random.PRNGKey(5), (B, T + pad, P))
  # Garbage in every padded frame, the shorter sequences' own padding included.
  mask_long = jnp.pad(mask, ((0, 0), (0, pad)))
  x_long = jnp.where(mask_long[..., None] > 0, jnp.pad(x, ((0, 0), (0, pad), (0, 0))), garbage)
  params = m.variables['params']
  loss_a, g_a = m.grad(params, {'x': x, 'mask': mask}, rng)
  loss_b, g_b = m.grad(params, {'x': x_long, 'mask': mask_long}, rng)
  assert np.isfinite(loss_a)
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g_a, g_b)
  # ... whereas the same garbage marked as real frames does change the loss.
  loss_c, _ = m.grad(params, {'x': x_long, 'mask': jnp.ones_like(mask_long)}, rng)
  assert abs(float(loss_c) - float(loss_a)) > 1e-3


def test_masked_frame_carries_the_recurrent_state_through_unchanged():
  m = tiny('vrnn')
  x, _ = data()
  rng = np.random.default_rng(7)
  carry = tuple(jnp.asarray(rng.normal(size=s), jnp.float32)
                for s in [(B, H)] * 3 + [(B, D), (B, P)])
  new, ys = m.step(m.variables, carry, (x[:, 0], jnp.array([1.0, 0.0, 0.0]), jnp.ones((B, D)),
                                        jnp.zeros((B, 0)), (jnp.ones((B, 1)),) * 2))
  for a, b in zip(new, carry):
    np.testing.assert_array_equal(a[1:], b[1:])          # masked examples: state untouched
    assert np.abs(np.asarray(a[0] - b[0])).max() > 1e-4   # the real one moved
  for key in ('log_px', 'kl', 'logw_z'):
    assert np.all(np.asarray(ys[key])[1:] == 0), key
  # A masked frame in the middle of a sequence: what it holds reaches nothing.
  mask = jnp.ones((B, T)).at[:, 3].set(0.0)
  full = m.fwd(m.variables, x, mask, jax.random.PRNGKey(8))
  changed = m.fwd(m.variables, x.at[:, 3].set(1.0 - x[:, 3]), mask, jax.random.PRNGKey(8))
  np.testing.assert_array_equal(full['log_px'], changed['log_px'])
  np.testing.assert_array_equal(full['kl'], changed['kl'])
  assert np.all(np.asarray(full['log_px'])[:, 3] == 0)


def test_smoothing_posterior_reads_future_frames_and_the_filter_does_not():
  """Flipping frame 5 moves z_t for t < 5 under q(z_t | z_<t, x_1:T) ('smooth') and leaves
  it, and every term of frames t < 5, untouched under q(z_t | z_<t, x_<=t) ('filter')."""
  x, mask = data()
  x_flip = x.at[:, 5].set(1.0 - x[:, 5])
  rng = jax.random.PRNGKey(3)
  for posterior in ('filter', 'smooth'):
    m = tiny('vrnn', posterior=posterior)
    a, b = m.fwd(m.variables, x, mask, rng), m.fwd(m.variables, x_flip, mask, rng)
    moved = np.abs(np.asarray(a['z'] - b['z']))[0, :5]    # sequence 0 has all T frames
    if posterior == 'filter':
      assert np.all(moved == 0)
      np.testing.assert_array_equal(a['log_px'][:, :5], b['log_px'][:, :5])
    else:
      assert np.all(moved.max(-1) > 1e-5), moved
  # A masked frame in the middle still reaches nothing, backward pass included.
  m = tiny('vrnn', posterior='smooth')
  hole = jnp.ones((B, T)).at[:, 3].set(0.0)
  a = m.fwd(m.variables, x, hole, rng)
  b = m.fwd(m.variables, x.at[:, 3].set(1.0 - x[:, 3]), hole, rng)
  np.testing.assert_array_equal(a['log_px'], b['log_px'])
  np.testing.assert_array_equal(a['z'], b['z'])


# -----------------------------------------------------------------------------
# Dropout (training only).
# -----------------------------------------------------------------------------


def test_dropout_masks_are_inverted_and_do_not_depend_on_padding():
  rate = 0.25
  keep = vrae_model.dropout_keep(jax.random.PRNGKey(0), rate, 50, 40, (30, 20))
  longer = vrae_model.dropout_keep(jax.random.PRNGKey(0), rate, 60, 40, (30, 20))
  for k, k_long in zip(keep, longer):
    k = np.asarray(k)
    assert set(np.unique(k)) == {0.0, np.float32(1 / (1 - rate))}
    assert abs((k == 0).mean() - rate) < 0.01                  # 60,000 and 40,000 draws
    assert abs(k.mean() - 1.0) < 0.02                          # inverted: E[keep] = 1
    np.testing.assert_array_equal(k_long[:50], k)
  assert not np.array_equal(np.asarray(keep[0])[:, :, :20], np.asarray(keep[1]))
  ones = vrae_model.dropout_keep(None, 0.0, 5, 3, (30, 20))
  assert all(np.all(np.asarray(o) == 1.0) and o.shape == (5, 3, 1) for o in ones)


def test_dropping_a_frames_features_hides_it_from_the_inputs_but_not_from_the_score():
  """keep_x = 0 on frame 2: every network input sees x_2 = 0 (as if the data had zeros
  there, backward pass included), while log p(x_2 | .) still scores the real x_2."""
  m = tiny('vrnn', posterior='smooth')
  x, mask = data()
  rng = jax.random.PRNGKey(6)
  keep_x = jnp.ones((T, B, P)).at[2].set(0.0)
  dropped = m.fwd(m.variables, x, mask, rng, (keep_x, jnp.ones((T, B, 1))))
  zeroed = m.fwd(m.variables, x.at[:, 2].set(0.0), mask, rng)
  others = np.arange(T) != 2
  np.testing.assert_allclose(dropped['log_px'][:, others], zeroed['log_px'][:, others],
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(dropped['z'], zeroed['z'], rtol=1e-6, atol=1e-6)
  lit = np.asarray(x[:, 2].sum(-1) > 0)                     # frame 2 has notes to score
  assert lit.any()
  assert np.all(np.abs(np.asarray(dropped['log_px'] - zeroed['log_px'])[lit, 2]) > 1e-4)


def test_dropout_training_loss_ignores_padding_and_differs_from_no_dropout():
  m = tiny('vrnn', posterior='smooth')
  loss_fn = family.make_loss_fn(loss_config(dropout=0.3), m.model, SEQUENCE_INFO)
  grad = jax.jit(jax.value_and_grad(lambda p, b, rng: loss_fn(p, {}, b, rng, 3)[0]))
  x, mask = data()
  pad, rng, params = 4, jax.random.PRNGKey(4), m.variables['params']
  mask_long = jnp.pad(mask, ((0, 0), (0, pad)))
  x_long = jnp.pad(x, ((0, 0), (0, pad), (0, 0)), constant_values=1.0)
  loss_a, g_a = grad(params, {'x': x, 'mask': mask}, rng)
  loss_b, g_b = grad(params, {'x': x_long, 'mask': mask_long}, rng)
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g_a, g_b)
  plain = family.make_loss_fn(loss_config(), m.model, SEQUENCE_INFO)
  loss_0 = jax.jit(lambda p: plain(p, {}, {'x': x, 'mask': mask}, rng, 3)[0])(params)
  assert abs(float(loss_a) - float(loss_0)) > 1e-3


# -----------------------------------------------------------------------------
# Closed-form KL.
# -----------------------------------------------------------------------------


def test_closed_form_gaussian_kl_matches_monte_carlo():
  rng = np.random.default_rng(0)
  mq, mp = rng.normal(size=4), rng.normal(size=4)
  lq, lp = rng.uniform(-1, 1, size=4), rng.uniform(-1, 1, size=4)
  z = mq + np.exp(0.5 * lq) * rng.normal(size=(200000, 4))
  mc = np.mean(np.asarray(dist.gaussian_log_prob(z, mq, lq) - dist.gaussian_log_prob(z, mp, lp)),
               axis=0)
  closed = np.asarray(dist.gaussian_kl(mq, lq, mp, lp))
  np.testing.assert_allclose(mc, closed, rtol=0.03, atol=0.01)
  assert np.all(closed > 0.01)
  np.testing.assert_array_equal(dist.gaussian_kl(mq, lq, mq, lq), np.zeros(4))


@pytest.mark.parametrize('prior,posterior', [('latent', 'filter'), ('vrnn', 'smooth')])
def test_model_kl_matches_monte_carlo_of_its_log_weights(prior, posterior):
  """E_q[sum_t log q(z_t|.) - log p(z_t|.)] = E_q[sum_t KL_t]: the closed-form KL per step
  agrees with the densities at the samples (z_<t sampled in both)."""
  s = pool(prior=prior, posterior=posterior)
  neg_logw, kl = -s['logw_z'], s['kl']                 # (N, B)
  se = neg_logw.std(0) / np.sqrt(len(kl))
  np.testing.assert_allclose(neg_logw.mean(0), kl.mean(0), atol=float(4 * se.max() + 1e-3))
  assert kl.mean() > 0.1


@pytest.mark.parametrize('prior', ['latent', 'vrnn'])
def test_model_kl_is_zero_when_posterior_equals_prior(prior):
  """Copy the prior head into the posterior head and zero its h^q rows: q(z_t|.) = p(z_t|.)."""
  m = tiny(prior)
  params = dict(m.variables['params'])
  pri = params['prior_head']
  first = {'kernel': jnp.concatenate([jnp.zeros((H, H)), pri['Dense_0']['kernel']], 0),
           'bias': pri['Dense_0']['bias']}
  params['post_head'] = {'Dense_0': first, 'Dense_1': pri['Dense_1']}
  x, mask = data()
  out = m.fwd({'params': params}, x, mask, jax.random.PRNGKey(10))
  np.testing.assert_allclose(out['kl'], 0.0, atol=1e-6)
  np.testing.assert_allclose(out['logw_z'], 0.0, atol=1e-4)
  assert float(m.fwd(m.variables, x, mask, jax.random.PRNGKey(10))['kl'].sum()) > 0.1


# -----------------------------------------------------------------------------
# Importance-weighted bound.
# -----------------------------------------------------------------------------


def test_iw_bound_is_above_elbo_and_grows_with_k():
  """From one pool of N sequence-level samples: IW_k over N/k disjoint groups of k."""
  s = pool()
  n = len(s['kl'])
  log_w = s['log_px'] + s['logw_z']                     # (N, B)
  elbo = (s['log_px'] - s['kl']).mean(0)                # closed-form KL
  iw = {}
  for k in (1, 4, 16, 64):
    groups = jnp.asarray(log_w.reshape(n // k, k, B))
    per_group = np.asarray(objectives.iw_bound(groups, axis=1))   # (N/k, B)
    iw[k] = (per_group.mean(0), per_group.std(0) / np.sqrt(n // k))
  # k = 1 is an unbiased estimate of the ELBO.
  np.testing.assert_allclose(iw[1][0], elbo, atol=float(4 * iw[1][1].max() + 1e-3))
  for lo, hi in ((1, 4), (4, 16), (16, 64)):
    assert np.all(iw[hi][0] >= iw[lo][0] - 1e-5), (lo, hi)
  assert np.all(iw[16][0] > elbo + 3 * iw[16][1]), (iw[16], elbo)


def test_chunked_iw_estimator_equals_the_bound_of_its_samples_one_by_one():
  """family.iw_log_likelihood (lax.map over chunks of 4, vmap inside) gives exactly
  logsumexp_k(log w_k) - log k of the same k keys evaluated one at a time."""
  m = tiny('latent')
  x, mask = data()
  rng, k = jax.random.PRNGKey(12), 8
  chunked = jax.jit(lambda: family.iw_log_likelihood(m.model, m.variables, x, mask, rng, k, 4))()
  log_w = []
  for key in jax.random.split(rng, k):
    out = m.fwd(m.variables, x, mask, key)
    log_w.append(np.asarray(out['log_px']).sum(1) + np.asarray(out['logw_z']))
  log_w = np.stack(log_w).astype(np.float64)
  expected = np.log(np.exp(log_w - log_w.max(0)).mean(0)) + log_w.max(0)
  np.testing.assert_allclose(chunked, expected, rtol=1e-5, atol=1e-4)
  assert np.all(np.asarray(chunked) > log_w.mean(0))


# -----------------------------------------------------------------------------
# Noise.
# -----------------------------------------------------------------------------


def test_a_different_rng_changes_the_noise_at_every_step():
  a = np.asarray(vrae_model.step_noise(jax.random.PRNGKey(0), T, (B, D)))
  b = np.asarray(vrae_model.step_noise(jax.random.PRNGKey(1), T, (B, D)))
  for t in range(T):
    assert np.all(a[t] != b[t]), t
    for s in range(t):
      assert np.all(a[t] != a[s]), (s, t)      # never the same noise at two steps
  # The noise of step t does not depend on the padded length.
  longer = np.asarray(vrae_model.step_noise(jax.random.PRNGKey(0), T + 4, (B, D)))
  np.testing.assert_array_equal(longer[:T], a)
  # Through the model: every latent z_t of every real frame differs between two rngs.
  m = tiny('latent')
  x, mask = data()
  za = np.asarray(m.fwd(m.variables, x, mask, jax.random.PRNGKey(0))['z'])
  zb = np.asarray(m.fwd(m.variables, x, mask, jax.random.PRNGKey(1))['z'])
  real = np.asarray(mask) > 0
  assert np.all(za[real] != zb[real])


# -----------------------------------------------------------------------------
# Loss terms.
# -----------------------------------------------------------------------------


def test_kl_warmup_is_linear_from_start_to_one():
  w = [float(objectives.kl_warmup_weight(s, 100, 0.2)) for s in (0, 50, 100, 1000)]
  np.testing.assert_allclose(w, [0.2, 0.6, 1.0, 1.0], rtol=1e-6)
  assert float(objectives.kl_warmup_weight(5, 0, 0.2)) == 1.0


def test_loss_is_per_frame_elbo_with_warmup_and_free_bits():
  m = tiny('latent')
  x, mask = data()
  batch, rng = {'x': x, 'mask': mask}, jax.random.PRNGKey(13)
  out = m.fwd(m.variables, x, mask, rng)
  frames = float(mask.sum())
  recon = -float(out['log_px'].sum()) / frames
  kl = float(out['kl'].sum()) / frames
  loss_fn = family.make_loss_fn(loss_config(kl_warmup_steps=10, kl_warmup_start=0.5), m.model,
                                SEQUENCE_INFO)
  loss, (metrics, _) = jax.jit(lambda p: loss_fn(p, {}, batch, rng, 4))(m.variables['params'])
  np.testing.assert_allclose(float(loss), recon + 0.7 * kl, rtol=1e-5)
  np.testing.assert_allclose(float(metrics['neg_elbo_per_frame']), recon + kl, rtol=1e-5)
  # Free bits: each latent dim's per-frame KL counts at least `free_bits` nats.
  fb = m.grad(m.variables['params'], batch, rng)[0]       # free_bits=0.05, step 3, no warm-up
  kl_dims = np.asarray(out['kl_dims']).sum(0) / frames
  np.testing.assert_allclose(float(fb), recon + np.maximum(kl_dims, 0.05).sum(), rtol=1e-5)


# -----------------------------------------------------------------------------
# Imputation and generation.
# -----------------------------------------------------------------------------


@pytest.mark.parametrize('prior,posterior', [('latent', 'filter'), ('global', 'filter'),
                                             ('vrnn', 'smooth')])
def test_imputation_keeps_observed_frames_and_ignores_hidden_values(prior, posterior):
  m = tiny(prior, posterior=posterior)
  x, mask = data()
  observed = jnp.asarray(family.hidden_block(mask, (0.3, 0.7)))
  hidden = np.asarray((observed == 0) & (mask > 0))
  assert hidden.sum() >= 3
  rng = jax.random.PRNGKey(14)
  filled = np.asarray(m.impute(m.variables, x, observed, mask, rng)['x'])
  keep = np.asarray(observed > 0)
  np.testing.assert_array_equal(filled[keep], np.asarray(x)[keep])
  assert set(np.unique(filled[hidden])) <= {0.0, 1.0}
  # The values behind the hidden frames never reach the model.
  x_other = jnp.where(jnp.asarray(hidden)[..., None], 1.0 - x, x)
  other = np.asarray(m.impute(m.variables, x_other, observed, mask, rng)['x'])
  np.testing.assert_array_equal(other[hidden], filled[hidden])


@pytest.mark.parametrize('prior', ['latent', 'global'])
def test_generated_rolls_have_the_right_shape_and_are_binary(prior):
  m = tiny(prior)
  out = m.sample(m.variables, jax.random.PRNGKey(15))
  rolls = np.asarray(out['x'])
  assert rolls.shape == (B, T, P)
  assert set(np.unique(rolls)) <= {0.0, 1.0}
  assert 0 < rolls.mean() < 1
  assert np.all((np.asarray(out['mean']) > 0) & (np.asarray(out['mean']) < 1))


@pytest.mark.parametrize('likelihood', ['gaussian', 'categorical'])
def test_other_likelihoods_score_and_impute(likelihood):
  m = tiny('latent', likelihood)
  x, mask = data(likelihood)
  out = m.fwd(m.variables, x, mask, jax.random.PRNGKey(16))
  log_px = np.asarray(out['log_px'])
  assert np.all(np.isfinite(log_px)) and np.all(log_px[np.asarray(mask) == 0] == 0)
  observed = jnp.asarray(family.hidden_block(mask))
  filled = np.asarray(m.impute(m.variables, x, observed, mask, jax.random.PRNGKey(18))['x'])
  keep = np.asarray(observed > 0)
  np.testing.assert_array_equal(filled[keep], np.asarray(x)[keep])
  hidden = np.asarray((observed == 0) & (mask > 0))
  new = filled[hidden]
  if likelihood == 'categorical':
    assert filled.dtype == np.int32 and new.min() >= 0 and new.max() < P
  else:
    assert np.all(np.isfinite(new)) and new.std() > 0.1
