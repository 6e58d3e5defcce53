"""SRNN (config.model.prior='srnn', Fraccaro et al. 2016): the three scans equal a Python
loop over the paper's equations with the same noise, padding and masked frames change
nothing, the closed-form KL per step equals Monte Carlo, the residual ("Resq") moves q's
mean by exactly the prior's mean, generation / imputation / IW and SMC estimates work, the
config checks, and configs/srnn_jsb.py trains through the engine. Tiny models called
directly (tests/test_vrae.py's shapes and data), as for the other variants."""

import functools
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import load_config
from tests.test_vrae import (B, D, H, P, SEQUENCE_INFO, T, data, loss_config,
                             random_variables)
from vaes import distributions as dist
from vaes import objectives
from vaes.families import vrae as family
from vaes.models import vrae as vrae_model
from vaes.models.vrae import VRAE
from vaes.registry import ConfigError


@functools.lru_cache(maxsize=None)
def tiny(posterior='smooth', residual=True, dropout=0.0):
  """A tiny SRNN, its variables and jitted functions (built once per variant)."""
  model = VRAE(features=P, likelihood='bernoulli', prior='srnn', posterior=posterior,
               hidden=H, latent=D, mlp_hidden=H, unroll=1, remat=False, q_residual=residual,
               made_hidden=0)
  variables = random_variables(model, 'bernoulli')
  loss_fn = family.make_loss_fn(loss_config(dropout=dropout), model, SEQUENCE_INFO)
  return types.SimpleNamespace(
      model=model, variables=variables,
      fwd=jax.jit(lambda v, x, mask, rng, keep=None: model.apply(
          v, x, mask, family.latent_noise(model, rng, mask), keep)),
      grad=jax.jit(jax.value_and_grad(lambda p, b, rng: loss_fn(p, {}, b, rng, 3)[0])),
      sample=jax.jit(lambda v, rng: family.sample_prior(model, v, rng, B, T)),
      impute=jax.jit(lambda v, x, obs, mask, rng: family.impute(model, v, x, obs, mask, rng)))


# -----------------------------------------------------------------------------
# The scans equal a Python loop over the equations, with the same noise.
# -----------------------------------------------------------------------------


def _call(m, name, *args):
  """One submodule of the model (gru_d, gru_b, prior_head, post_head, out_head) applied
  eagerly to `args` with the model's variables."""
  return m.model.apply(m.variables, *args, method=lambda mod, *a: getattr(mod, name)(*a))


def _gauss(params):
  mean, logvar = np.split(np.asarray(params, np.float64), 2, axis=-1)
  return mean, np.clip(logvar, vrae_model.LOGVAR_MIN, vrae_model.LOGVAR_MAX)


def python_srnn(m, x, mask, eps, keep_x, keep_h):
  """The SRNN by Python loops over t, from the module docstring's equations (float64 for
  everything but the layers): per-frame log p(x_t | z_t, d_t), KL_t, the log weight
  log p(z_t | .) - log q(z_t | .), and z_t, each (B, T, ...). Masked frames carry d, a, z
  and x_{t-1} through unchanged and score 0."""
  x, mask = np.asarray(x), np.asarray(mask)
  keep_x, keep_h = np.asarray(keep_x), np.asarray(keep_h)
  real = lambda t: mask[:, t, None] > 0
  xs = [x[:, t] * real(t) * keep_x[t] for t in range(T)]       # what the networks read
  d, x_prev, ds = np.zeros((B, H)), np.zeros((B, P)), []
  for t in range(T):                                            # d_t = GRU_d(d_{t-1}, x_{t-1})
    d = np.where(real(t), _call(m, 'gru_d', d, x_prev), d)
    x_prev = np.where(real(t), xs[t], x_prev)
    ds.append(d)
  smooth = m.model.posterior == 'smooth'
  a, a_s = np.zeros((B, H)), [None] * T
  for t in reversed(range(T)):                                  # a_t = GRU_a(a_{t+1}, [d_t, x_t])
    if smooth:
      a = np.where(real(t), _call(m, 'gru_b', a, np.concatenate([ds[t], xs[t]], -1)), a)
      a_s[t] = a
    else:
      a_s[t] = np.concatenate([ds[t], xs[t]], -1)               # filter: a_t = [d_t, x_t]
  z, out = np.zeros((B, D)), {k: [] for k in ('log_px', 'kl', 'logw_z', 'z')}
  for t in range(T):
    mean_p, logvar_p = _gauss(_call(m, 'prior_head', np.concatenate([z, ds[t]], -1)))
    r, logvar_q = _gauss(_call(m, 'post_head', np.concatenate([z, a_s[t]], -1)))
    mean_q = mean_p + r if m.model.q_residual else r
    z_t = mean_q + np.exp(0.5 * logvar_q) * np.asarray(eps[t])
    logits = np.asarray(_call(m, 'out_head', np.concatenate([ds[t], z_t], -1) * keep_h[t]),
                        np.float64)
    log_px = (x[:, t] * -np.logaddexp(0, -logits) + (1 - x[:, t]) * -np.logaddexp(0, logits))
    kl = 0.5 * (logvar_p - logvar_q + (np.exp(logvar_q) + (mean_q - mean_p) ** 2)
                / np.exp(logvar_p) - 1)
    log_n = lambda v, mu, lv: -0.5 * (np.log(2 * np.pi) + lv + (v - mu) ** 2 / np.exp(lv))
    logw = (log_n(z_t, mean_p, logvar_p) - log_n(z_t, mean_q, logvar_q)).sum(-1)
    on = mask[:, t] > 0
    out['log_px'].append(np.where(on, log_px.sum(-1), 0.0))
    out['kl'].append(np.where(on, kl.sum(-1), 0.0))
    out['logw_z'].append(np.where(on, logw, 0.0))
    out['z'].append(z_t)
    z = np.where(real(t), z_t, z)
  return {k: np.stack(v, 1) for k, v in out.items()}


@pytest.mark.parametrize('posterior,residual,rate', [('smooth', True, 0.4),
                                                     ('filter', False, 0.0)])
def test_scans_equal_a_python_loop_of_the_equations(posterior, residual, rate):
  m = tiny(posterior, residual)
  x, mask = data()
  mask = mask.at[1, 2].set(0.0)                 # a hole in the middle of sequence 1 too
  rng = jax.random.PRNGKey(1)
  keep = vrae_model.dropout_keep(jax.random.PRNGKey(2), rate, T, B, m.model.dropout_dims)
  out = m.fwd(m.variables, x, mask, rng, keep)
  ref = python_srnn(m, x, mask, family.latent_noise(m.model, rng, mask), *keep)
  np.testing.assert_allclose(out['log_px'], ref['log_px'], rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(out['kl'], ref['kl'], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out['logw_z'], ref['logw_z'].sum(1), rtol=1e-4, atol=1e-4)
  real = np.asarray(mask) > 0
  np.testing.assert_allclose(np.asarray(out['z'])[real], ref['z'][real], rtol=1e-5, atol=1e-5)
  assert np.abs(np.diff(ref['z'][0], axis=0)).min() > 0     # the steps did differ
  assert np.all(np.asarray(out['log_px'])[~real] == 0)


def test_generation_and_the_particle_filter_are_the_same_equations():
  """generate: z_t ~ p(z_t | z_{t-1}, d_t) with d_t over the sampled x_<t equals a Python
  loop; SMC with one particle (the filtering SRNN) is the one-sample ELBO of its z."""
  m = tiny('filter')
  rng = jax.random.PRNGKey(2)
  gen = m.sample(m.variables, rng)       # the noise of family.sample_prior
  eps = np.asarray(vrae_model.step_noise(jax.random.fold_in(rng, 0), T, (B, D)))
  u = np.asarray(vrae_model.step_noise(jax.random.fold_in(rng, 1), T, (B, P), 'uniform'))
  d, z, x_prev = np.zeros((B, H)), np.zeros((B, D)), np.zeros((B, P))
  for t in range(T):
    d = np.asarray(_call(m, 'gru_d', d, x_prev))
    mean_p, logvar_p = _gauss(_call(m, 'prior_head', np.concatenate([z, d], -1)))
    z = mean_p + np.exp(0.5 * logvar_p) * eps[t]
    logits = np.asarray(_call(m, 'out_head', np.concatenate([d, z], -1)), np.float64)
    prob = 1 / (1 + np.exp(-logits))
    x_prev = (u[t] < prob).astype(np.float32)
    np.testing.assert_allclose(gen['mean'][:, t], prob, rtol=1e-4, atol=1e-5)
    near = np.abs(u[t] - prob) < 1e-4          # a draw that rounding may flip
    np.testing.assert_array_equal(np.asarray(gen['x'][:, t])[~near], x_prev[~near])
    x_prev = np.asarray(gen['x'][:, t])          # follow the scan's draws
  x, mask = data()
  rng = jax.random.PRNGKey(21)
  log_w = jax.jit(lambda v: family.elbo_terms(m.model, v, x, mask, rng)[3])(m.variables)
  for resample in ('always', 'never'):
    log_p, _ = jax.jit(lambda v: family.fivo_log_likelihood(
        m.model, v, x, mask, rng, 1, resample, 'multinomial'))(m.variables)
    np.testing.assert_allclose(log_p, log_w, rtol=1e-5, atol=1e-4)


# -----------------------------------------------------------------------------
# Masks: padded frames change neither the loss nor the gradients.
# -----------------------------------------------------------------------------


@pytest.mark.parametrize('posterior,dropout', [('smooth', 0.3), ('filter', 0.0)])
def test_padding_changes_neither_loss_nor_gradients(posterior, dropout):
  m = tiny(posterior, dropout=dropout)
  x, mask = data()
  pad, rng = 5, jax.random.PRNGKey(4)
  garbage = jax.random.uniform(jax.random.PRNGKey(5), (B, T + pad, P))
  mask_long = jnp.pad(mask, ((0, 0), (0, pad)))
  x_long = jnp.where(mask_long[..., None] > 0, jnp.pad(x, ((0, 0), (0, pad), (0, 0))), garbage)
  params = m.variables['params']
  loss_a, g_a = m.grad(params, {'x': x, 'mask': mask}, rng)
  loss_b, g_b = m.grad(params, {'x': x_long, 'mask': mask_long}, rng)
  assert np.isfinite(loss_a)
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g_a, g_b)
  # Every parameter (d_t's GRU, a_t's, the three heads) gets a finite, non-zero gradient.
  for path, g in jax.tree_util.tree_leaves_with_path(g_a):
    g = np.asarray(g)
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, jax.tree_util.keystr(path)
  names = set(params)
  assert names == ({'gru_d', 'prior_head', 'post_head', 'out_head'}
                   | ({'gru_b'} if posterior == 'smooth' else set())), names
  # ... whereas the same garbage marked as real frames does change the loss.
  loss_c, _ = m.grad(params, {'x': x_long, 'mask': jnp.ones_like(mask_long)}, rng)
  assert abs(float(loss_c) - float(loss_a)) > 1e-3


def test_smoothing_reads_future_frames_the_filter_does_not_and_holes_reach_nothing():
  """Flipping frame 5 moves z_t for t < 5 under the smoothing posterior (a_t reads x_t:T)
  and leaves every term of frames t < 5 untouched under the filtering one (d_t reads x_<t
  only); a masked frame in the middle reaches nothing, the backward scan included."""
  x, mask = data()
  x_flip = x.at[:, 5].set(1.0 - x[:, 5])
  rng = jax.random.PRNGKey(3)
  for posterior in ('filter', 'smooth'):
    m = tiny(posterior)
    a, b = m.fwd(m.variables, x, mask, rng), m.fwd(m.variables, x_flip, mask, rng)
    moved = np.abs(np.asarray(a['z'] - b['z']))[0, :5]    # sequence 0 has all T frames
    if posterior == 'filter':
      assert np.all(moved == 0)
      for key in ('log_px', 'kl'):
        np.testing.assert_array_equal(a[key][:, :5], b[key][:, :5])
      assert np.abs(np.asarray(a['log_px'] - b['log_px']))[0, 5:].min() > 0  # x_5 and d_>5
    else:
      assert np.all(moved.max(-1) > 1e-5), moved
    hole = jnp.ones((B, T)).at[:, 3].set(0.0)
    a = m.fwd(m.variables, x, hole, rng)
    b = m.fwd(m.variables, x.at[:, 3].set(1.0 - x[:, 3]), hole, rng)
    for key in ('log_px', 'kl', 'z'):
      np.testing.assert_array_equal(a[key], b[key])
    assert np.all(np.asarray(a['log_px'])[:, 3] == 0)


# -----------------------------------------------------------------------------
# KL, the residual posterior mean.
# -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def one_step(residual):
  """(mean_p, logvar_p, mean_q, logvar_q) of srnn_distributions at fixed random z_{t-1},
  d_t and a_t, the smoothing model's variables (residual on or off: the same weights)."""
  m = tiny('smooth', residual)
  variables = tiny('smooth', True).variables
  rng = np.random.default_rng(3)
  z_prev, d_t, a_t = (jnp.asarray(rng.normal(size=(B, n)), jnp.float32) for n in (D, H, H))
  return tuple(np.asarray(a, np.float64) for a in m.model.apply(
      variables, z_prev, d_t, a_t, method=VRAE.srnn_distributions))


def test_residual_moves_the_posterior_mean_by_exactly_the_prior_mean():
  """Resq: mean_q = mean_p(z_{t-1}, d_t) + r_t with srnn_residual, r_t without, from the
  same weights; the prior and q's variance do not depend on the choice."""
  mean_p, logvar_p, on_mean, on_logvar = one_step(True)
  mean_p_off, logvar_p_off, off_mean, off_logvar = one_step(False)
  np.testing.assert_array_equal(mean_p, mean_p_off)
  np.testing.assert_array_equal(logvar_p, logvar_p_off)
  np.testing.assert_array_equal(on_logvar, off_logvar)
  np.testing.assert_allclose(on_mean - off_mean, mean_p, rtol=1e-6, atol=1e-6)
  assert np.abs(mean_p).min() > 0
  # Through the whole pass: the same noise, another z.
  x, mask = data()
  rng = jax.random.PRNGKey(7)
  z_on = tiny('smooth', True).fwd(tiny('smooth', True).variables, x, mask, rng)['z']
  z_off = tiny('smooth', False).fwd(tiny('smooth', True).variables, x, mask, rng)['z']
  assert np.abs(np.asarray(z_on - z_off)).max() > 1e-3


def test_closed_form_kl_of_one_step_matches_monte_carlo():
  mean_p, logvar_p, mean_q, logvar_q = one_step(True)
  closed = np.asarray(dist.gaussian_kl(mean_q, logvar_q, mean_p, logvar_p)).sum(-1)
  n = 200_000
  z = mean_q + np.exp(0.5 * logvar_q) * np.random.default_rng(0).normal(size=(n,) + mean_q.shape)
  log_n = lambda v, mu, lv: -0.5 * (np.log(2 * np.pi) + lv + (v - mu) ** 2 / np.exp(lv))
  ratio = (log_n(z, mean_q, logvar_q) - log_n(z, mean_p, logvar_p)).sum(-1)   # (n, B)
  se = ratio.std(0) / math.sqrt(n)
  np.testing.assert_allclose(ratio.mean(0), closed, atol=float(4 * se.max() + 1e-4))
  assert np.all(closed > 0.01)


@functools.lru_cache(maxsize=None)
def pool(num=1024, seed=9):
  """`num` posterior passes of the smoothing SRNN on data(): per-sample log p(x | z),
  sum_t KL_t and log p(z) - log q(z | x), each (num, B)."""
  m = tiny('smooth')
  x, mask = data()
  keys = jax.random.split(jax.random.PRNGKey(seed), num)
  out = jax.jit(jax.vmap(lambda k: m.fwd(m.variables, x, mask, k)))(keys)
  return {'log_px': np.asarray(out['log_px'], np.float64).sum(-1),
          'kl': np.asarray(out['kl'], np.float64).sum(-1),
          'logw_z': np.asarray(out['logw_z'], np.float64)}


def test_sequence_kl_matches_monte_carlo_of_its_log_weights():
  """E_q[sum_t log q(z_t|.) - log p(z_t|.)] = E_q[sum_t KL_t]: each step's closed-form KL
  is taken at the sampled z_{t-1}, as the log weights are."""
  s = pool()
  neg_logw, kl = -s['logw_z'], s['kl']
  se = neg_logw.std(0) / np.sqrt(len(kl))
  np.testing.assert_allclose(neg_logw.mean(0), kl.mean(0), atol=float(4 * se.max() + 1e-3))
  assert kl.mean() > 0.1


def test_iw_bound_is_above_the_elbo_and_its_gains_shrink_with_k():
  """IW_k from one pool of N samples (N/k disjoint groups of k): IW_1 is the ELBO, IW_k
  grows with k, and by less and less (it converges, to log p(x)); the family's chunked
  estimator gives finite values above the mean log weight."""
  s = pool()
  n = len(s['kl'])
  log_w = s['log_px'] + s['logw_z']
  elbo = (s['log_px'] - s['kl']).mean(0)
  iw = {}
  for k in (1, 4, 16, 64):
    per_group = np.asarray(objectives.iw_bound(jnp.asarray(log_w.reshape(n // k, k, B)), axis=1))
    iw[k] = (per_group.mean(0), per_group.std(0) / np.sqrt(n // k))
  np.testing.assert_allclose(iw[1][0], elbo, atol=float(4 * iw[1][1].max() + 1e-3))
  gains = [iw[hi][0] - iw[lo][0] for lo, hi in ((1, 4), (4, 16), (16, 64))]
  assert all(np.all(g >= -1e-5) for g in gains), gains
  assert np.all(gains[0] > gains[2]), gains
  assert np.all(iw[16][0] > elbo + 3 * iw[16][1])
  m = tiny('smooth')
  x, mask = data()
  chunked = np.asarray(jax.jit(lambda v: family.iw_log_likelihood(
      m.model, v, x, mask, jax.random.PRNGKey(12), 8, 4))(m.variables))
  assert chunked.shape == (B,) and np.all(np.isfinite(chunked))


# -----------------------------------------------------------------------------
# Generation and imputation.
# -----------------------------------------------------------------------------


@pytest.mark.parametrize('posterior', ['smooth', 'filter'])
def test_samples_are_binary_and_imputation_keeps_observed_frames(posterior):
  m = tiny(posterior)
  gen = m.sample(m.variables, jax.random.PRNGKey(15))
  rolls = np.asarray(gen['x'])
  assert rolls.shape == (B, T, P) and set(np.unique(rolls)) <= {0.0, 1.0}
  assert 0 < rolls.mean() < 1 and np.all(np.isfinite(np.asarray(gen['mean'])))
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


# -----------------------------------------------------------------------------
# Config: checks, and configs/srnn_jsb.py through the engine.
# -----------------------------------------------------------------------------


@pytest.mark.parametrize('overrides,message', [
    ({'model.prior': 'srnn', 'model.posterior': 'smooth', 'model.train_bound': 'fivo'},
     "config.model.train_bound='fivo' needs the filtering posterior"),
    ({'model.prior': 'srnn', 'model.srnn_residual': None},
     'config.model.srnn_residual=None: must be True or False'),
])
def test_config_checks_name_the_field_and_the_fix(overrides, message):
  config = load_config('configs/vrae.py', overrides)
  with pytest.raises(ConfigError) as err:
    family.validate_config(config)
  assert message in str(err.value) and '\n' not in str(err.value)


def test_the_module_refuses_a_residual_choice_that_does_not_fit_the_prior():
  fields = dict(features=P, likelihood='bernoulli', posterior='smooth', hidden=H, latent=D,
                mlp_hidden=H, unroll=1, remat=False, made_hidden=0)
  x, mask = data()
  for prior, residual, message in (('srnn', None, "needs q_residual=True or False"),
                                   ('vrnn', True, "is for prior='srnn' only")):
    with pytest.raises(ValueError, match=message):
      jax.eval_shape(VRAE(prior=prior, q_residual=residual, **fields).init,
                     jax.random.PRNGKey(0), x, mask, jnp.zeros((T, B, D)))


def test_srnn_config_builds_the_paper_model_and_trains_through_the_engine(tmp_path):
  """configs/srnn_jsb.py (tiny sizes, 2 steps, the bundled JSB Chorales cut to 16 frames)
  trains and evaluates through train_and_evaluate (images: samples, imputation,
  reconstructions) with the SMC estimate beside the IW one; the filtering variant's FIVO
  bound validates and traces."""
  from vaes.train import train_and_evaluate
  config = load_config('configs/srnn_jsb.py')
  family.validate_config(config)
  assert (config.model.prior, config.model.posterior, config.model.srnn_residual) == (
      'srnn', 'smooth', True)
  assert config.num_train_steps == 3000 and config.weights_ema_decay == 0.995
  assert config.eval.select_metric == 'nll_per_frame'
  small = {'batch_size': 4, 'num_train_steps': 2, 'log_every_steps': 1, 'eval_every_steps': 2,
           'checkpoint_every_steps': 2, 'model.hidden': 8, 'model.latent': 2,
           'model.mlp_hidden': 8, 'data.max_len': 16, 'data.eval_limit': 8,
           'eval.batch_size': 8, 'eval.num_importance_samples': 2, 'eval.iw_chunk_size': 2,
           'eval.num_plot_sequences': 2, 'eval.select_metric': '',
           'eval.select_num_importance_samples': 0, 'eval.fivo_particles': 2}
  config = load_config('configs/srnn_jsb.py', small)
  last = train_and_evaluate(config, str(tmp_path / 'srnn'))
  assert math.isfinite(last['loss']) and math.isfinite(last['neg_elbo_per_frame'])
  # The SMC estimate with the smoothing posterior as proposal (tests/test_vrae_fivo.py).
  for key in ('nll_per_frame', 'neg_elbo_per_frame', 'kl_per_frame', 'nll_fivo_per_frame'):
    assert math.isfinite(last[f'eval/{key}']), key
  for png in ('samples', 'imputation', 'reconstructions'):     # generate, impute, recon
    assert (tmp_path / 'srnn' / 'images' / f'step_0000002_{png}.png').exists(), png
  config = load_config('configs/srnn_jsb.py', {'model.posterior': 'filter',
                                               'model.train_bound': 'fivo',
                                               'model.train_particles': 2})
  family.validate_config(config)
  info = SEQUENCE_INFO.__class__(kind='sequence', shape=(12, 88), likelihood='bernoulli')
  batch = {'x': jnp.zeros((2, 12, 88)), 'mask': jnp.ones((2, 12))}
  model = family.build_model(config, info)
  assert model.prior == 'srnn' and model.q_residual is True
  params = jax.eval_shape(lambda r: family.init_variables(model, r, batch),
                          jax.random.PRNGKey(0))['params']
  loss, (metrics, _) = jax.eval_shape(family.make_loss_fn(config, model, info), params, {},
                                      batch, jax.random.PRNGKey(1), jnp.int32(0))
  assert loss.shape == () and 'neg_fivo_bound_per_frame' in metrics
