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


# ----------------------------------------------------------------------------
# Rotation trick (Fifty et al. 2024).
# ----------------------------------------------------------------------------


def _rotation_np(z, e):
  """(||e|| / ||z||) R, R = I - 2 r r^T + 2 e_hat z_hat^T, built explicitly in float64."""
  z, e = np.asarray(z, np.float64), np.asarray(e, np.float64)
  z_hat, e_hat = z / np.linalg.norm(z), e / np.linalg.norm(e)
  r = (z_hat + e_hat) / np.linalg.norm(z_hat + e_hat)
  rot = np.eye(len(z)) - 2.0 * np.outer(r, r) + 2.0 * np.outer(e_hat, z_hat)
  # R is a rotation taking z_hat to e_hat.
  np.testing.assert_allclose(rot @ z_hat, e_hat, atol=1e-12)
  np.testing.assert_allclose(rot.T @ rot, np.eye(len(z)), atol=1e-12)
  np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-12)
  return np.linalg.norm(e) / np.linalg.norm(z) * rot


def test_rotation_trick_value_is_the_code_and_jacobian_is_the_scaled_rotation():
  z_e = jax.random.normal(jax.random.PRNGKey(1), (5, 4))
  vq = VectorQuantizer(num_codes=6, code_dim=4, use_ema=False, rotation_trick=True)
  variables = vq.init(jax.random.PRNGKey(0), z_e)
  codebook = np.asarray(variables['params']['codebook'])
  out = vq.apply(variables, z_e)
  idx = np.asarray(out['indices'])
  np.testing.assert_array_equal(np.asarray(out['z_q']), codebook[idx])   # exactly e_{k*}
  # dz_q / dz_e: block-diagonal over the 5 vectors, block i = (||e||/||z_e||) R_i.
  jac = np.asarray(jax.jacobian(lambda z: vq.apply(variables, z)['z_q'])(z_e))
  for i in range(5):
    for j in range(5):
      expected = (_rotation_np(np.asarray(z_e[i]), codebook[idx[i]]) if i == j
                  else np.zeros((4, 4)))
      np.testing.assert_allclose(jac[i, :, j, :], expected, rtol=1e-5, atol=1e-6)
  # No gradient reaches the codebook through z_q (as with straight-through).
  g = jax.grad(lambda p: jnp.sum(vq.apply({'params': p}, z_e)['z_q'] ** 2))(
      variables['params'])
  np.testing.assert_array_equal(np.asarray(g['codebook']), 0.0)


def test_rotation_trick_leaves_the_vq_losses_and_their_gradients_unchanged():
  z_e = jax.random.normal(jax.random.PRNGKey(2), (3, 2, 2, 4))
  plain = VectorQuantizer(num_codes=6, code_dim=4, use_ema=False)
  rot = VectorQuantizer(num_codes=6, code_dim=4, use_ema=False, rotation_trick=True)
  variables = plain.init(jax.random.PRNGKey(0), z_e)
  for term in ('codebook_loss', 'commitment_loss'):
    f = lambda m: jax.value_and_grad(
        lambda p, z: m.apply({'params': p}, z)[term], argnums=(0, 1))(variables['params'], z_e)
    (v0, (gp0, gz0)), (v1, (gp1, gz1)) = f(plain), f(rot)
    assert float(v0) == float(v1)
    np.testing.assert_array_equal(np.asarray(gp0['codebook']), np.asarray(gp1['codebook']))
    np.testing.assert_array_equal(np.asarray(gz0), np.asarray(gz1))


def test_rotation_trick_in_residual_vq_rotates_z_e_onto_the_sum_of_the_stages():
  rvq = quantizers.ResidualVQ(num_stages=2, num_codes=5, code_dim=3,
                              vq_kwargs=(('rotation_trick', True),))
  z = jax.random.normal(jax.random.PRNGKey(3), (1, 3))
  variables = rvq.init(jax.random.PRNGKey(1), z)
  out = rvq.apply(variables, z)
  books = [np.asarray(variables['params'][f'stages_{s}']['codebook']) for s in range(2)]
  total = sum(books[s][int(out['indices'][0, s])] for s in range(2))
  np.testing.assert_allclose(np.asarray(out['z_q'])[0], total, rtol=1e-6, atol=1e-7)
  jac = np.asarray(jax.jacobian(lambda x: rvq.apply(variables, x)['z_q'][0])(z))[:, 0, :]
  np.testing.assert_allclose(jac, _rotation_np(np.asarray(z[0]), total), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# SimVQ (Zhu et al. 2024).
# ----------------------------------------------------------------------------


def test_simvq_codes_are_frozen_codebook_times_learned_map():
  z_e = jax.random.normal(jax.random.PRNGKey(4), (2, 3, 3, 4))
  vq = VectorQuantizer(num_codes=8, code_dim=4, use_ema=False, simvq=True)
  variables = vq.init(jax.random.PRNGKey(0), z_e)
  assert set(variables['params']) == {'code_transform'}      # no learned codebook
  c = np.asarray(variables['vq_frozen']['codebook'], np.float64)
  w = np.asarray(variables['params']['code_transform'], np.float64)
  assert c.shape == (8, 4) and w.shape == (4, 4)
  book = c @ w                                               # effective codebook C W
  out = vq.apply(variables, z_e)
  z = np.asarray(z_e, np.float64).reshape(-1, 4)
  brute = np.argmin(((z[:, None, :] - book[None]) ** 2).sum(-1), axis=1)
  np.testing.assert_array_equal(np.asarray(out['indices']).reshape(-1), brute)
  np.testing.assert_allclose(np.asarray(out['z_q']).reshape(-1, 4), book[brute],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(vq.apply(variables, out['indices'], method=vq.embed)),
                             np.asarray(out['z_q']), rtol=1e-5, atol=1e-6)
  # The codebook loss ||sg[z_e] - C_k W||^2 trains W; C (the 'vq_frozen' collection)
  # gets no gradient, from any term.
  def total(v):
    o = vq.apply(v, z_e)
    return o['codebook_loss'] + o['commitment_loss'] + jnp.sum(o['z_q'] ** 2)
  g = jax.grad(total)(variables)
  assert float(jnp.abs(g['params']['code_transform']).sum()) > 0
  np.testing.assert_array_equal(np.asarray(g['vq_frozen']['codebook']), 0.0)
  expected_w = jax.grad(lambda w_: jnp.mean(
      (jnp.asarray(z[:, None, :]) - jnp.asarray(c, jnp.float32) @ w_)[
          jnp.arange(len(z)), brute] ** 2))(jnp.asarray(w, jnp.float32))
  g_cb = jax.grad(lambda v: vq.apply(v, z_e)['codebook_loss'])(variables)
  np.testing.assert_allclose(np.asarray(g_cb['params']['code_transform']),
                             np.asarray(expected_w), rtol=1e-4, atol=1e-6)


def test_simvq_needs_a_gradient_codebook():
  vq = VectorQuantizer(num_codes=4, code_dim=2, use_ema=True, simvq=True)
  with pytest.raises(ValueError, match='SimVQ'):
    vq.init(jax.random.PRNGKey(0), jnp.zeros((2, 2)))


# ----------------------------------------------------------------------------
# Entropy loss: lambda (E[H(q(k|z))] - gamma H(E[q(k|z)])).
# ----------------------------------------------------------------------------


def _entropy(p, axis=-1):
  return -np.sum(p * np.log(np.maximum(p, 1e-300)), axis=axis)


def _softmax(x):
  x = x - x.max(-1, keepdims=True)
  return np.exp(x) / np.exp(x).sum(-1, keepdims=True)


def test_vq_entropy_loss_equals_brute_force():
  z_e = jax.random.normal(jax.random.PRNGKey(5), (2, 3, 3, 4))
  lam, gamma, tau = 0.3, 0.7, 0.5
  vq = VectorQuantizer(num_codes=6, code_dim=4, use_ema=False, entropy_weight=lam,
                       entropy_gamma=gamma, entropy_temperature=tau)
  variables = vq.init(jax.random.PRNGKey(0), z_e)
  out = vq.apply(variables, z_e)
  z = np.asarray(z_e, np.float64).reshape(-1, 4)
  book = np.asarray(variables['params']['codebook'], np.float64)
  p = _softmax(-((z[:, None, :] - book[None]) ** 2).sum(-1) / tau)        # (M, K)
  expected = lam * (np.mean(_entropy(p)) - gamma * _entropy(p.mean(0)))
  np.testing.assert_allclose(float(out['entropy_loss']), expected, rtol=1e-5)
  # It trains both the encoder output and the codebook; other terms are unchanged.
  g = jax.grad(lambda v, x: vq.apply(v, x)['entropy_loss'], argnums=(0, 1))(variables, z_e)
  assert float(jnp.abs(g[0]['params']['codebook']).sum()) > 0
  assert float(jnp.abs(g[1]).sum()) > 0
  plain = VectorQuantizer(num_codes=6, code_dim=4, use_ema=False).apply(variables, z_e)
  assert float(plain['entropy_loss']) == 0.0
  for k in ('z_q', 'indices', 'codebook_loss', 'commitment_loss'):
    np.testing.assert_array_equal(np.asarray(plain[k]), np.asarray(out[k]))


# ----------------------------------------------------------------------------
# LFQ (Yu et al. 2023) and BSQ (Zhao et al. 2024).
# ----------------------------------------------------------------------------


def _codes_pm(d, s):
  """All 2^d codes {-s, s}^d, code k having bit i = (k >> i) & 1."""
  bits = (np.arange(2 ** d)[:, None] >> np.arange(d)) & 1
  return np.where(bits > 0, s, -s).astype(np.float64)


@pytest.mark.parametrize('spherical', [False, True])
def test_lfq_and_bsq_values_indices_and_losses(spherical):
  d, beta, lam, gamma, tau = 4, 0.25, 0.2, 0.9, 0.5
  lfq = quantizers.LFQ(bits=d, code_dim=6, spherical=spherical, beta=beta,
                       entropy_weight=lam, entropy_gamma=gamma, entropy_temperature=tau)
  z_e = jax.random.normal(jax.random.PRNGKey(6), (3, 2, 2, 6))
  variables = lfq.init(jax.random.PRNGKey(0), z_e)
  out = lfq.apply(variables, z_e)
  p_in, p_out = variables['params']['proj_in'], variables['params']['proj_out']
  z = np.asarray(z_e, np.float64) @ np.asarray(p_in['kernel']) + np.asarray(p_in['bias'])
  if spherical:
    z = z / np.linalg.norm(z, axis=-1, keepdims=True)
  s = 1.0 / np.sqrt(d) if spherical else 1.0
  q = np.sign(z) * s                                   # sign(z) (LFQ), sign(u)/sqrt(d) (BSQ)
  expected_zq = q @ np.asarray(p_out['kernel']) + np.asarray(p_out['bias'])
  np.testing.assert_allclose(np.asarray(out['z_q']), expected_zq, rtol=1e-5, atol=1e-5)
  expected_idx = np.sum((z > 0) * 2 ** np.arange(d), axis=-1)   # the binary number
  np.testing.assert_array_equal(np.asarray(out['indices']), expected_idx)
  assert lfq.codebook_size == 16 and out['one_hot'].shape == (3, 2, 2, 16)
  np.testing.assert_allclose(np.asarray(lfq.apply(variables, out['indices'], method=lfq.embed)),
                             np.asarray(out['z_q']), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(float(out['commitment_loss']), beta * np.mean((z - q) ** 2),
                             rtol=1e-5)
  assert float(out['codebook_loss']) == 0.0
  # Entropies by brute force over all 2^d codes c_k: q(k|z) = softmax(-||z - c_k||^2 / tau).
  flat = z.reshape(-1, d)
  codes = _codes_pm(d, s)
  p = _softmax(-((flat[:, None, :] - codes[None]) ** 2).sum(-1) / tau)   # (M, 2^d)
  per_sample = np.mean(_entropy(p))                    # exact: the softmax factorises
  avg = p.mean(0)
  # The batch term, factorised as the papers do: the entropy of the product of the
  # per-bit marginals of E[q(k|z)], here built over all 2^d codes.
  marginal_pos = np.array([avg[(np.arange(2 ** d) >> i) & 1 == 1].sum() for i in range(d)])
  product = np.prod(np.where(codes > 0, marginal_pos, 1.0 - marginal_pos), axis=1)
  np.testing.assert_allclose(product.sum(), 1.0, rtol=1e-12)
  batch = _entropy(product)
  assert batch >= _entropy(avg) - 1e-9                 # an upper bound of H(E[q(k|z)])
  values = np.array([-s, s])
  logits = -((flat[:, :, None] - values) ** 2) / tau   # (M, d, 2): per bit
  got_per_sample, got_batch = quantizers.entropy_terms(jnp.asarray(logits, jnp.float32))
  np.testing.assert_allclose(float(got_per_sample), per_sample, rtol=1e-5)
  np.testing.assert_allclose(float(got_batch), batch, rtol=1e-5)
  np.testing.assert_allclose(float(out['entropy_loss']), lam * (per_sample - gamma * batch),
                             rtol=1e-4)
  # Straight-through and the entropy loss train the input projection.
  g = jax.grad(lambda v: jnp.sum(lfq.apply(v, z_e)['z_q'] ** 2)
               + lfq.apply(v, z_e)['entropy_loss'])(variables)
  assert all(float(jnp.abs(x).sum()) > 0 for x in jax.tree.leaves(g))


def test_factorised_entropy_of_one_factor_is_the_codebook_entropy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(7, 1, 5)) * 3.0
  p = _softmax(logits[:, 0])
  per_sample, batch = quantizers.entropy_terms(jnp.asarray(logits, jnp.float32))
  np.testing.assert_allclose(float(per_sample), np.mean(_entropy(p)), rtol=1e-5)
  np.testing.assert_allclose(float(batch), _entropy(p.mean(0)), rtol=1e-5)
  w = np.array([1, 0, 1, 1, 0, 0, 1], np.float32)           # weights restrict E_m
  per_sample, batch = quantizers.entropy_terms(jnp.asarray(logits, jnp.float32), jnp.asarray(w))
  np.testing.assert_allclose(float(per_sample), np.mean(_entropy(p[w > 0])), rtol=1e-5)
  np.testing.assert_allclose(float(batch), _entropy(p[w > 0].mean(0)), rtol=1e-5)
