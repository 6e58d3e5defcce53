"""Vector quantiser: nearest neighbour, stop-gradient semantics, EMA update."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaes import quantizers
from vaes.quantizers import VectorQuantizer


def test_nearest_code_equals_brute_force_loop():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(7, 5, 3)).astype(np.float32)
  codebook = rng.normal(size=(11, 3)).astype(np.float32)
  idx, _ = quantizers.nearest_code(jnp.asarray(z), jnp.asarray(codebook))
  expected = np.zeros(z.shape[:2], np.int64)
  for i in range(z.shape[0]):
    for j in range(z.shape[1]):
      best, best_d = -1, np.inf
      for k in range(codebook.shape[0]):
        d = float(np.sum((z[i, j] - codebook[k]) ** 2))
        if d < best_d:
          best, best_d = k, d
      expected[i, j] = best
  np.testing.assert_array_equal(np.asarray(idx), expected)
  z_q, _ = quantizers.lookup(idx, jnp.asarray(codebook))
  np.testing.assert_allclose(np.asarray(z_q), codebook[expected], rtol=1e-6)


def test_distances_are_float32_for_bf16_inputs():
  z = jnp.ones((4, 8), jnp.bfloat16)
  codebook = jnp.zeros((3, 8), jnp.bfloat16)
  _, d = quantizers.nearest_code(z, codebook)
  assert d.dtype == jnp.float32


def _apply(z_e, use_ema=False, beta=0.25):
  vq = VectorQuantizer(num_codes=6, code_dim=4, beta=beta, use_ema=use_ema)
  variables = vq.init(jax.random.PRNGKey(0), z_e)
  return vq, variables


def test_stop_gradient_semantics():
  """Codebook gets gradient only from the codebook term, the encoder output z_e from
  the commitment term and the straight-through path."""
  z_e = jax.random.normal(jax.random.PRNGKey(1), (10, 4))
  beta = 0.25
  vq, variables = _apply(z_e, beta=beta)
  codebook = variables['params']['codebook']

  def parts(params, z):
    out = vq.apply({'params': params}, z)
    return out

  # 1) Codebook term: d/de ||sg[z_e] - e||^2 is nonzero; wrt z_e it is zero.
  g_cb_e, g_cb_z = jax.grad(lambda p, z: parts(p, z)['codebook_loss'], argnums=(0, 1))(
      variables['params'], z_e)
  assert float(jnp.abs(g_cb_e['codebook']).sum()) > 0
  np.testing.assert_array_equal(np.asarray(g_cb_z), 0.0)

  # 2) Commitment term: gradient wrt z_e only, equal to 2 beta (z_e - z_q) / numel.
  g_cm_e, g_cm_z = jax.grad(lambda p, z: parts(p, z)['commitment_loss'], argnums=(0, 1))(
      variables['params'], z_e)
  np.testing.assert_array_equal(np.asarray(g_cm_e['codebook']), 0.0)
  out = parts(variables['params'], z_e)
  z_q = np.asarray(out['z_q'])
  np.testing.assert_allclose(np.asarray(g_cm_z), 2 * beta * (np.asarray(z_e) - z_q) / z_e.size,
                             rtol=1e-5, atol=1e-7)

  # 3) Straight-through: z_q's value is e_{k*}; d sum(w * z_q) / d z_e = w; no codebook grad.
  idx = np.asarray(out['indices'])
  np.testing.assert_allclose(z_q, np.asarray(codebook)[idx], rtol=1e-6)
  w = jax.random.normal(jax.random.PRNGKey(2), z_e.shape)
  g_st_e, g_st_z = jax.grad(lambda p, z: jnp.sum(w * parts(p, z)['z_q']), argnums=(0, 1))(
      variables['params'], z_e)
  np.testing.assert_allclose(np.asarray(g_st_z), np.asarray(w), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(g_st_e['codebook']), 0.0)


def test_ema_update_equals_hand_computation():
  decay, eps = 0.9, 1e-5
  z = np.array([[0.0, 1.0], [2.0, 1.0], [10.0, 10.0]], np.float32)
  codebook = np.array([[0.0, 0.0], [9.0, 9.0], [-5.0, -5.0]], np.float32)
  cluster = np.ones(3, np.float32)
  embed_sum = codebook.copy()
  # Hand computation: z0, z1 -> code 0, z2 -> code 1, code 2 unused.
  counts = np.array([2.0, 1.0, 0.0])
  sums = np.array([[2.0, 2.0], [10.0, 10.0], [0.0, 0.0]])
  n_new = decay * cluster + (1 - decay) * counts
  m_new = decay * embed_sum + (1 - decay) * sums
  n = n_new.sum()
  smoothed = (n_new + eps) / (n + 3 * eps) * n
  e_new = m_new / smoothed[:, None]

  idx, _ = quantizers.nearest_code(jnp.asarray(z), jnp.asarray(codebook))
  np.testing.assert_array_equal(np.asarray(idx), [0, 0, 1])
  one_hot = jax.nn.one_hot(idx, 3)
  c, s, e = quantizers.ema_update(jnp.asarray(cluster), jnp.asarray(embed_sum), one_hot,
                                  jnp.asarray(z), decay, eps)
  np.testing.assert_allclose(np.asarray(c), n_new, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(s), m_new, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(e), e_new, rtol=1e-5)
  # The unused code stays (almost) where it was.
  np.testing.assert_allclose(np.asarray(e)[2], codebook[2], rtol=1e-4)


def test_ema_module_updates_only_in_training_and_has_no_codebook_loss():
  z_e = jax.random.normal(jax.random.PRNGKey(3), (16, 4))
  vq, variables = _apply(z_e, use_ema=True)
  assert 'codebook' not in variables.get('params', {})
  out, new = vq.apply(variables, z_e, update_ema=True, mutable=['vq_ema'])
  assert float(out['codebook_loss']) == 0.0
  before = np.asarray(variables['vq_ema']['codebook'])
  after = np.asarray(new['vq_ema']['codebook'])
  assert not np.allclose(before, after)
  _, same = vq.apply(variables, z_e, update_ema=False, mutable=['vq_ema'])
  np.testing.assert_array_equal(np.asarray(same['vq_ema']['codebook']), before)


@pytest.mark.parametrize('k', [1, 4])
def test_perplexity_of_uniform_usage(k):
  one_hot = jax.nn.one_hot(jnp.arange(64) % k, 8)
  np.testing.assert_allclose(float(quantizers.code_perplexity(one_hot)), k, rtol=1e-4)
