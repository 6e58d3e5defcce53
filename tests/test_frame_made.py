"""The frame-autoregressive emission (config.model.made_hidden > 0): the MADE's logit d
reads x_t<d and nothing else, its p(x_t | .) sums to one over all 2^P frames, its samples
follow that distribution, the model's log p(x_t | .) equals a NumPy MADE built by loops
from the same weights, made_hidden = 0 is the factorised model, and the config checks and
the engine path work. Tiny models called directly (tests/test_vrae.py's shapes and data)."""

import functools
import itertools
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import load_config
from tests.test_vrae import B, D, H, P, T, data, random_variables
from vaes import distributions as dist
from vaes.data import DataInfo
from vaes.families import vrae as family
from vaes.models import vrae as vrae_model
from vaes.models.vrae import VRAE
from vaes.registry import ConfigError

HM = 10    # MADE units


@functools.lru_cache(maxsize=None)
def tiny(prior='srnn', made_hidden=HM, posterior='smooth'):
  model = VRAE(features=P, likelihood='bernoulli', prior=prior, posterior=posterior, hidden=H,
               latent=D, mlp_hidden=H, unroll=1, remat=False, made_hidden=made_hidden,
               q_residual=True if prior == 'srnn' else None)
  variables = random_variables(model, 'bernoulli')
  if made_hidden:    # the direct weights start at 0: give them values, as training would
    w_x = variables['params']['made']['w_x']
    variables = jax.tree.map(lambda a: a, variables)
    variables['params']['made']['w_x'] = jnp.asarray(
        np.random.default_rng(3).normal(size=w_x.shape), jnp.float32)
  return types.SimpleNamespace(
      model=model, variables=variables,
      fwd=jax.jit(lambda v, x, mask, rng: model.apply(
          v, x, mask, family.latent_noise(model, rng, mask))),
      log_px=jax.jit(lambda v, x, out: model.apply(v, x, out, method=VRAE.log_px)),
      sample_x=jax.jit(lambda v, out, u: model.apply(v, out, u, method=VRAE.sample_x)),
      sample=jax.jit(lambda v, rng: family.sample_prior(model, v, rng, B, T)),
      impute=jax.jit(lambda v, x, obs, mask, rng: family.impute(model, v, x, obs, mask, rng)))


def all_frames(p):
  return jnp.asarray(list(itertools.product([0.0, 1.0], repeat=p)), jnp.float32)   # (2^p, p)


def numpy_made_log_prob(w_in, w_out, w_x, x, out):
  """log p(x | out) of a MADE built by loops over units and dimensions (float64)."""
  p, h = w_in.shape
  deg = [1 + k % (p - 1) for k in range(h)]
  m_in = np.array([[float(deg[k] >= j + 1) for k in range(h)] for j in range(p)])
  m_out = np.array([[float(d + 1 > deg[k]) for d in range(p)] for k in range(h)])
  m_x = np.array([[float(j < d) for d in range(p)] for j in range(p)])
  x, out = np.asarray(x, np.float64), np.asarray(out, np.float64)
  hid = np.maximum(0.0, out[..., p:] + x @ (w_in * m_in))
  logits = out[..., :p] + hid @ (w_out * m_out) + x @ (w_x * m_x)
  return (x * -np.logaddexp(0, -logits) + (1 - x) * -np.logaddexp(0, logits)).sum(-1)


def test_each_logit_reads_the_earlier_dimensions_only():
  m = tiny()
  weights = m.model.apply(m.variables, method=lambda mod: mod.made())
  out = jax.random.normal(jax.random.PRNGKey(0), (P + HM,))
  x = (jax.random.uniform(jax.random.PRNGKey(1), (P,)) < 0.5).astype(jnp.float32)
  jac = np.asarray(jax.jacfwd(lambda v: vrae_model.made_logits(weights, v, out))(x))  # (d, j)
  reads = np.abs(jac) > 0
  assert not reads[np.triu_indices(P)].any()            # j >= d: never
  assert reads[np.tril_indices(P, -1)].all()            # j < d: here, through the direct weights
  assert np.abs(jac[0]).sum() == 0                      # the first logit is the bias alone


@pytest.mark.parametrize('prior', ['srnn', 'latent'])
def test_the_frame_distribution_sums_to_one_over_all_frames(prior):
  m = tiny(prior, posterior='filter')
  frames = all_frames(P)
  for seed in range(3):
    out = 2.0 * jax.random.normal(jax.random.PRNGKey(seed), (1, P + HM))
    log_p = m.log_px(m.variables, frames, jnp.repeat(out, len(frames), 0))
    np.testing.assert_allclose(float(jax.nn.logsumexp(log_p)), 0.0, atol=1e-5)
    assert float(log_p.max() - log_p.min()) > 1.0      # and it is not uniform


def test_samples_follow_the_frame_distribution():
  m = tiny()
  n, out = 40000, jax.random.normal(jax.random.PRNGKey(5), (1, P + HM))
  u = jax.random.uniform(jax.random.PRNGKey(6), (n, P))
  x = np.asarray(m.sample_x(m.variables, jnp.repeat(out, n, 0), u))
  assert set(np.unique(x)) <= {0.0, 1.0}
  codes = (x * (2 ** np.arange(P)[::-1])).sum(1).astype(int)        # row of all_frames
  freq = np.bincount(codes, minlength=2 ** P) / n
  frames = all_frames(P)
  prob = np.exp(np.asarray(m.log_px(m.variables, frames, jnp.repeat(out, len(frames), 0))))
  # Binomial standard errors: every frame's frequency within 5 of them of its probability.
  np.testing.assert_array_less(np.abs(freq - prob), 5 * np.sqrt(prob * (1 - prob) / n) + 1e-4)


@pytest.mark.parametrize('prior,posterior', [('srnn', 'smooth'), ('vrnn', 'filter')])
def test_model_log_px_equals_a_numpy_made_of_the_same_weights(prior, posterior):
  m = tiny(prior, posterior=posterior)
  x, mask = data()
  ys = m.fwd(m.variables, x, mask, jax.random.PRNGKey(7))
  made = m.variables['params']['made']
  ref = numpy_made_log_prob(*(np.asarray(made[k], np.float64) for k in ('w_in', 'w_out', 'w_x')),
                            x, ys['out'])
  ref = np.where(np.asarray(mask) > 0, ref, 0.0)
  np.testing.assert_allclose(np.asarray(ys['log_px']), ref, rtol=1e-5, atol=1e-5)


def test_made_hidden_zero_is_the_factorised_bernoulli():
  m = tiny(made_hidden=0)
  assert 'made' not in m.variables['params']
  x, mask = data()
  ys = m.fwd(m.variables, x, mask, jax.random.PRNGKey(8))
  ref = dist.bernoulli_log_prob(x, ys['out']).sum(-1) * mask
  np.testing.assert_allclose(np.asarray(ys['log_px']), np.asarray(ref), rtol=1e-6, atol=1e-6)
  u = jax.random.uniform(jax.random.PRNGKey(9), (B, P))
  np.testing.assert_array_equal(np.asarray(m.sample_x(m.variables, ys['out'][:, 0], u)),
                                np.asarray(u < jax.nn.sigmoid(ys['out'][:, 0])))


@pytest.mark.parametrize('prior', ['srnn', 'latent'])
def test_generation_and_imputation_with_the_frame_made(prior):
  m = tiny(prior, posterior='filter')
  gen = m.sample(m.variables, jax.random.PRNGKey(10))
  rolls, mean = np.asarray(gen['x']), np.asarray(gen['mean'])
  assert rolls.shape == (B, T, P) and set(np.unique(rolls)) <= {0.0, 1.0}
  assert 0 < rolls.mean() < 1 and np.all((mean >= 0) & (mean <= 1))
  x, mask = data()
  observed = jnp.asarray(family.hidden_block(mask, (0.3, 0.7)))
  filled = np.asarray(m.impute(m.variables, x, observed, mask, jax.random.PRNGKey(11))['x'])
  keep = np.asarray(observed > 0)
  np.testing.assert_array_equal(filled[keep], np.asarray(x)[keep])
  assert set(np.unique(filled)) <= {0.0, 1.0}


@pytest.mark.parametrize('overrides,likelihood,message', [
    ({'model.made_hidden': -1}, None, 'config.model.made_hidden=-1: must be an integer >= 0'),
    ({'model.made_hidden': 16, 'model.likelihood': 'gaussian'}, 'gaussian',
     "config.model.made_hidden=16: the frame MADE models Bernoulli frames"),
])
def test_config_checks_name_the_field_and_the_fix(overrides, likelihood, message):
  config = load_config('configs/vrae.py', overrides)
  with pytest.raises(ConfigError) as err:
    family.validate_config(config)
    family.build_model(config, DataInfo(kind='sequence', shape=(T, P), likelihood=likelihood))
  assert message in str(err.value) and '\n' not in str(err.value)


def test_made_config_trains_through_the_engine(tmp_path):
  """configs/srnn_made_jsb.py (tiny sizes, 2 steps, the bundled JSB Chorales cut to 16
  frames) trains and evaluates through train_and_evaluate, images and MIDI included."""
  from vaes.train import train_and_evaluate
  config = load_config('configs/srnn_made_jsb.py')
  family.validate_config(config)
  assert config.model.prior == 'srnn' and config.model.made_hidden > 0
  small = {'batch_size': 4, 'num_train_steps': 2, 'log_every_steps': 1, 'eval_every_steps': 2,
           'checkpoint_every_steps': 2, 'model.hidden': 8, 'model.latent': 2,
           'model.mlp_hidden': 8, 'model.made_hidden': 8, 'data.max_len': 16,
           'data.eval_limit': 8, 'eval.batch_size': 8, 'eval.num_importance_samples': 2,
           'eval.iw_chunk_size': 2, 'eval.num_plot_sequences': 2, 'eval.select_metric': '',
           'eval.select_num_importance_samples': 0}
  last = train_and_evaluate(load_config('configs/srnn_made_jsb.py', small),
                            str(tmp_path / 'made'))
  assert math.isfinite(last['loss'])
  for key in ('nll_per_frame', 'neg_elbo_per_frame', 'kl_per_frame'):
    assert math.isfinite(last[f'eval/{key}']), key
  for name in ('samples.png', 'imputation.png', 'reconstructions.png', 'samples_0.mid'):
    assert (tmp_path / 'made' / 'images' / f'step_0000002_{name}').exists(), name
