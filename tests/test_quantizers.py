"""The quantiser modules, a section each: vaes/codebook.py (the VQ objective and codebook
functions: nearest code, EMA, k-means, dead-code restarts, entropies), vaes/quantizers.py
(VectorQuantizer: stop-gradient semantics, EMA, codebook health, rotation trick, SimVQ,
entropy loss; ResidualVQ with quantize dropout) and vaes/scalar_quantizers.py (FSQ,
residual FSQ, LFQ / BSQ)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaes import quantizers
from vaes.quantizers import FSQ, ResidualVQ, VectorQuantizer


# ----------------------------------------------------------------------------
# vaes/codebook.py: the VQ objective and codebook functions.
# ----------------------------------------------------------------------------


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


def test_nearest_code_takes_the_first_of_tied_codes_and_a_valid_index_for_nan():
  codebook = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
  z = jnp.array([[1.0, 0.0], [0.5, 0.5], [-1.0, 0.0], [jnp.nan, 0.0]])
  idx, _ = quantizers.nearest_code(z, codebook)
  np.testing.assert_array_equal(np.asarray(idx), [0, 0, 3, 3])   # ties: 0 of {0, 2}; {0, 1, 2}


@pytest.mark.parametrize('weighted', [False, True])
def test_gathers_and_one_hot_matmuls_agree(weighted):
  """lookup and code_sums have the same values (and lookup the same gradients) in both
  forms; the CPU runs the gathers, so the one-hot form is checked against them here."""
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.normal(size=(50, 3)), jnp.float32)
  codebook = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
  idx = jnp.asarray(rng.integers(0, 5, size=50))              # code 5 unused
  w = jnp.asarray(rng.integers(0, 2, size=50), jnp.float32) if weighted else None
  brute_n = np.zeros(6)
  brute_s = np.zeros((6, 3))
  for i, k in enumerate(np.asarray(idx)):
    wi = 1.0 if w is None else float(w[i])
    brute_n[k] += wi
    brute_s[k] += wi * np.asarray(z[i])
  for gathers in (False, True):
    n, s = quantizers.code_sums(idx, z, 6, w, gathers=gathers)
    np.testing.assert_allclose(np.asarray(n), brute_n, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(s), brute_s, rtol=1e-5, atol=1e-6)
  cot = jnp.asarray(rng.normal(size=(50, 3)), jnp.float32)
  grads = [jax.grad(lambda c: jnp.sum(cot * quantizers.lookup(idx, c, gathers)[0]))(codebook)
           for gathers in (False, True)]
  np.testing.assert_allclose(np.asarray(grads[1]), np.asarray(grads[0]), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(grads[0][5]), 0.0)
  for gathers in (False, True):
    np.testing.assert_allclose(np.asarray(quantizers.lookup(idx, codebook, gathers)[0]),
                               np.asarray(codebook)[np.asarray(idx)], rtol=1e-6)


def test_distances_are_float32_for_bf16_inputs():
  z = jnp.ones((4, 8), jnp.bfloat16)
  codebook = jnp.zeros((3, 8), jnp.bfloat16)
  _, d = quantizers.nearest_code(z, codebook)
  assert d.dtype == jnp.float32


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
  counts_, sums_ = quantizers.code_sums(idx, jnp.asarray(z), 3)
  np.testing.assert_allclose(np.asarray(counts_), counts)
  np.testing.assert_allclose(np.asarray(sums_), sums)
  c, s, e = quantizers.ema_update(jnp.asarray(cluster), jnp.asarray(embed_sum), counts_,
                                  sums_, decay, eps)
  np.testing.assert_allclose(np.asarray(c), n_new, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(s), m_new, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(e), e_new, rtol=1e-5)
  # The unused code stays (almost) where it was.
  np.testing.assert_allclose(np.asarray(e)[2], codebook[2], rtol=1e-4)


@pytest.mark.parametrize('k', [1, 4])
def test_perplexity_of_uniform_usage(k):
  one_hot = jax.nn.one_hot(jnp.arange(64) % k, 8)
  np.testing.assert_allclose(float(quantizers.code_perplexity(one_hot)), k, rtol=1e-4)


def test_kmeans_reaches_a_lloyd_fixed_point_and_lowers_the_distortion():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(4, 2)) * 5
  z = (centres[rng.integers(0, 4, 400)] + 0.3 * rng.normal(size=(400, 2))).astype(np.float32)
  c, counts = quantizers.kmeans(jax.random.PRNGKey(0), jnp.asarray(z), 4, 20)
  c = np.asarray(c)
  assign = np.argmin(((z[:, None] - c[None]) ** 2).sum(-1), 1)
  np.testing.assert_array_equal(np.bincount(assign, minlength=4), np.asarray(counts))
  for k in range(4):  # each centre is the mean of its cluster
    np.testing.assert_allclose(c[k], z[assign == k].mean(0), rtol=1e-4, atol=1e-4)
  start = z[np.asarray(jax.random.choice(jax.random.split(jax.random.PRNGKey(0), 3)[1], 400,
                                         (4,), replace=False))]
  inertia = lambda cc: np.sum(np.min(((z[:, None] - cc[None]) ** 2).sum(-1), 1))
  assert inertia(c) < inertia(start)


def test_restart_reseeds_only_codes_unused_for_n_steps():
  codebook = jnp.arange(12.0).reshape(4, 3)
  z = jnp.asarray(np.random.default_rng(1).normal(size=(50, 3)), jnp.float32) + 100.0
  steps_unused = jnp.array([0, 4, 1, 4], jnp.int32)
  counts = jnp.array([3.0, 0.0, 0.0, 2.0])
  new, unused, dead = quantizers.restart_dead_codes(jax.random.PRNGKey(0), codebook,
                                                    steps_unused, counts, z, 5)
  np.testing.assert_array_equal(np.asarray(dead), [False, True, False, False])
  np.testing.assert_array_equal(np.asarray(unused), [0, 0, 2, 0])
  new = np.asarray(new)
  np.testing.assert_array_equal(new[[0, 2, 3]], np.asarray(codebook)[[0, 2, 3]])
  assert any(np.array_equal(new[1], row) for row in np.asarray(z))  # an encoder output


def test_codes_with_ema_count_below_threshold_are_reseeded_from_the_batch():
  codebook = jnp.arange(12.0).reshape(4, 3)
  embed_sum = codebook * 2.0
  cluster = jnp.array([0.5, 3.0, 1.9, 2.0], jnp.float32)
  z = jnp.asarray(np.random.default_rng(1).normal(size=(50, 3)), jnp.float32) + 100.0
  new, n, m, count = quantizers.expire_codes_below(jax.random.PRNGKey(0), codebook, cluster,
                                                   embed_sum, z, 2.0)
  new, n, m = np.asarray(new), np.asarray(n), np.asarray(m)
  assert float(count) == 2.0
  np.testing.assert_array_equal(new[[1, 3]], np.asarray(codebook)[[1, 3]])   # N_k >= 2 kept
  rows = [i for k in (0, 2) for i, row in enumerate(np.asarray(z)) if np.array_equal(new[k], row)]
  assert len(rows) == 2 and rows[0] != rows[1]          # two distinct encoder outputs
  np.testing.assert_array_equal(n, [2.0, 3.0, 2.0, 2.0])  # reset to the threshold
  np.testing.assert_array_equal(m[[0, 2]], 2.0 * new[[0, 2]])
  np.testing.assert_array_equal(m[[1, 3]], np.asarray(embed_sum)[[1, 3]])
  again = quantizers.expire_codes_below(jax.random.PRNGKey(0), codebook, cluster, embed_sum,
                                        z, 2.0)
  np.testing.assert_array_equal(np.asarray(again[0]), new)   # deterministic given the rng
  other = quantizers.expire_codes_below(jax.random.PRNGKey(1), codebook, cluster, embed_sum,
                                        z, 2.0)
  assert not np.array_equal(np.asarray(other[0]), new)


def _entropy(p, axis=-1):
  return -np.sum(p * np.log(np.maximum(p, 1e-300)), axis=axis)


def _softmax(x):
  x = x - x.max(-1, keepdims=True)
  return np.exp(x) / np.exp(x).sum(-1, keepdims=True)


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


# ----------------------------------------------------------------------------
# vaes/quantizers.py: VectorQuantizer.
# ----------------------------------------------------------------------------


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


def test_quantizer_kmeans_init_runs_once():
  z = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 3)) * 3.0 + 7.0
  vq = VectorQuantizer(num_codes=16, code_dim=3, use_ema=True, kmeans_init=True)
  variables = vq.init(jax.random.PRNGKey(1), z)
  assert int(variables['vq_ema']['initialized']) == 0
  out, state = vq.apply(variables, z, update_ema=True, mutable=['vq_ema'],
                        rngs={'vq': jax.random.PRNGKey(2)})
  assert int(state['vq_ema']['initialized']) == 1
  # The random init lies around 0, the data around 7: after k-means the codes sit in the data.
  assert float(jnp.mean(state['vq_ema']['codebook'])) > 5.0
  assert float(jnp.mean(variables['vq_ema']['codebook'])) < 2.0
  assert float(out['perplexity']) > 8.0
  # A second call does not cluster again: a moved codebook stays put, apart from the
  # small EMA step (decay 0.99); clustering afresh would permute and move the codes.
  moved = jax.tree.map(lambda x: x, state)
  moved['vq_ema']['codebook'] = state['vq_ema']['codebook'] + 0.3
  moved['vq_ema']['embed_sum'] = (moved['vq_ema']['codebook']
                                  * state['vq_ema']['cluster_size'][:, None])
  _, state2 = vq.apply(moved, z, update_ema=True, mutable=['vq_ema'],
                       rngs={'vq': jax.random.PRNGKey(3)})
  assert int(state2['vq_ema']['initialized']) == 1
  delta = np.abs(np.asarray(state2['vq_ema']['codebook'] - moved['vq_ema']['codebook']))
  assert delta.max() < 0.1, delta.max()


def test_cosine_and_projected_codes():
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 8))
  vq = VectorQuantizer(num_codes=10, code_dim=8, cosine=True, lookup_dim=3)
  variables = vq.init(jax.random.PRNGKey(1), z)
  assert variables['params']['codebook'].shape == (10, 3)
  assert set(variables['params']) == {'codebook', 'proj_in', 'proj_out'}
  out = vq.apply(variables, z)
  assert out['z_q'].shape == z.shape
  # Decoding the indices gives the forward's z_q (projected unit-norm codes).
  np.testing.assert_allclose(np.asarray(vq.apply(variables, out['indices'], method=vq.embed)),
                             np.asarray(out['z_q']), rtol=1e-5, atol=1e-5)
  unit = quantizers.l2_normalize(variables['params']['codebook'])
  np.testing.assert_allclose(np.linalg.norm(np.asarray(unit), axis=-1), 1.0, rtol=1e-5)
  grads = jax.grad(lambda p: jnp.sum(vq.apply({'params': p}, z)['z_q'] ** 2)
                   + vq.apply({'params': p}, z)['codebook_loss'])(variables['params'])
  for name in ('codebook', 'proj_in', 'proj_out'):
    assert float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(grads[name]))) > 0, name


def test_quantizer_with_dead_code_threshold_reseeds_after_the_ema_step():
  decay, threshold = 0.99, 1.0
  vq = VectorQuantizer(num_codes=4, code_dim=2, use_ema=True, ema_decay=decay,
                       dead_code_threshold=threshold)
  z = jnp.asarray(np.random.default_rng(2).normal(size=(16, 2)) * 0.1, jnp.float32)
  vq.init(jax.random.PRNGKey(0), z)
  state = {'codebook': jnp.array([[0.0, 0.0], [9.0, 9.0], [-9.0, 9.0], [9.0, -9.0]]),
           'cluster_size': jnp.array([5.0, 50.0, 0.1, 0.1]),
           'embed_sum': jnp.zeros((4, 2))}
  state['embed_sum'] = state['codebook'] * state['cluster_size'][:, None]
  out, new = vq.apply({'vq_ema': state}, z, update_ema=True, mutable=['vq_ema'],
                      rngs={'vq': jax.random.PRNGKey(3)})
  np.testing.assert_array_equal(np.asarray(out['indices']), 0)   # only code 0 is used
  assert float(out['restarted_codes']) == 2.0
  # Codes 0 and 1 (EMA counts 0.99 * 5 + 0.16 and 0.99 * 50, above 1) take the plain
  # EMA step; codes 2 and 3 (0.099 < 1) become encoder outputs of the batch.
  n, _, e = quantizers.ema_update(state['cluster_size'], state['embed_sum'],
                                  *quantizers.code_sums(out['indices'].reshape(-1),
                                                        z.reshape(-1, z.shape[-1]), 4),
                                  decay, 1e-5)
  book = np.asarray(new['vq_ema']['codebook'])
  np.testing.assert_allclose(book[:2], np.asarray(e)[:2], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(new['vq_ema']['cluster_size'])[:2], np.asarray(n)[:2])
  for k in (2, 3):
    assert any(np.array_equal(book[k], row) for row in np.asarray(z))
  np.testing.assert_array_equal(np.asarray(new['vq_ema']['cluster_size'])[2:], threshold)
  # Without update_ema (evaluation) nothing is re-seeded.
  _, same = vq.apply({'vq_ema': state}, z, mutable=['vq_ema'])
  np.testing.assert_array_equal(np.asarray(same['vq_ema']['codebook']),
                                np.asarray(state['codebook']))


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
# vaes/quantizers.py: ResidualVQ; quantize dropout (SoundStream): per example, the
# first n_b ~ U{1..S} stages.
# ----------------------------------------------------------------------------


def test_residual_vq_round_trip_shapes_and_gradients():
  rvq = ResidualVQ(num_stages=3, num_codes=8, code_dim=4, vq_kwargs=(('beta', 0.25),))
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 3, 4))
  variables = rvq.init(jax.random.PRNGKey(1), z)
  out = rvq.apply(variables, z)
  assert out['indices'].shape == (2, 3, 3, 3) and out['one_hot'].shape == (2, 3, 3, 3, 8)
  # z_q = sum of the stages' codes, and embed(indices) reproduces it.
  books = [np.asarray(variables['params'][f'stages_{s}']['codebook']) for s in range(3)]
  idx = np.asarray(out['indices'])
  expected = sum(books[s][idx[..., s]] for s in range(3))
  np.testing.assert_allclose(np.asarray(out['z_q']), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(rvq.apply(variables, out['indices'], method=rvq.embed)),
                             expected, rtol=1e-5, atol=1e-5)
  # Straight-through to z_e; each stage's codebook gets gradient from its codebook loss.
  w = jax.random.normal(jax.random.PRNGKey(2), z.shape)
  g = jax.grad(lambda x: jnp.sum(w * rvq.apply(variables, x)['z_q']))(z)
  np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6)
  g_p = jax.grad(lambda p: rvq.apply({'params': p}, z)['codebook_loss'])(variables['params'])
  for s in range(3):
    assert float(jnp.abs(g_p[f'stages_{s}']['codebook']).sum()) > 0


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


def _stage_codes(books, idx):
  """(S, B, ..., D) stage codes e^{(s)}_{k*_s} of indices (B, ..., S)."""
  return np.stack([books[s][idx[..., s]] for s in range(len(books))])


def _prefix_fits(z_q, codes):
  """fits (S, B): z_q[b] = sum_{s < n} codes[s, b] for n = 1..S."""
  sums = np.cumsum(codes, axis=0)                        # (S, B, ...)
  axes = tuple(range(2, sums.ndim))
  return np.all(np.isclose(sums, z_q[None], rtol=1e-5, atol=1e-5), axis=axes)


def _prefix_lengths(z_q, codes):
  """n_b such that z_q[b] = sum_{s < n_b} codes[s, b] (asserting exactly one n_b fits)."""
  fits = _prefix_fits(z_q, codes)
  assert np.all(fits.sum(0) == 1), fits
  return np.argmax(fits, axis=0) + 1


def test_residual_vq_quantize_dropout_keeps_a_prefix_of_stages_per_example():
  beta = 0.25
  rvq = ResidualVQ(num_stages=3, num_codes=8, code_dim=4, vq_kwargs=(('beta', beta),),
                   quantize_dropout=True)
  z = jax.random.normal(jax.random.PRNGKey(0), (32, 2, 2, 4))
  variables = rvq.init(jax.random.PRNGKey(1), z)
  books = [np.asarray(variables['params'][f'stages_{s}']['codebook']) for s in range(3)]
  ev = rvq.apply(variables, z)                           # evaluation: nothing dropped
  tr = rvq.apply(variables, z, update_ema=True, rngs={'vq': jax.random.PRNGKey(2)})
  idx = np.asarray(ev['indices'])
  np.testing.assert_array_equal(np.asarray(tr['indices']), idx)   # the stages are unchanged
  codes = _stage_codes(books, idx)
  np.testing.assert_allclose(np.asarray(ev['z_q']), codes.sum(0), rtol=1e-5, atol=1e-5)
  n = _prefix_lengths(np.asarray(tr['z_q']), codes)
  assert set(n) == {1, 2, 3}
  # Per-example losses: those of the first n_b stages only (brute force over stages).
  residual, commit = np.asarray(z, np.float64), []
  for s in range(3):
    commit.append(beta * np.mean((residual - codes[s]) ** 2, axis=(1, 2, 3)))
    residual = residual - codes[s]
  commit = np.stack(commit)                              # (S, B)
  kept = np.arange(3)[:, None] < n[None]
  np.testing.assert_allclose(np.asarray(tr['commitment_loss_per_example']),
                             (commit * kept).sum(0), rtol=1e-5)
  np.testing.assert_allclose(float(tr['commitment_loss']), (commit * kept).sum(0).mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(np.asarray(tr['codebook_loss_per_example']),
                             (commit * kept).sum(0) / beta, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(ev['commitment_loss_per_example']), commit.sum(0),
                             rtol=1e-5)
  # Deterministic given the rng; straight-through gradient to z_e either way.
  tr2 = rvq.apply(variables, z, update_ema=True, rngs={'vq': jax.random.PRNGKey(2)})
  np.testing.assert_array_equal(np.asarray(tr2['z_q']), np.asarray(tr['z_q']))
  w = jax.random.normal(jax.random.PRNGKey(4), z.shape)
  g = jax.grad(lambda x: jnp.sum(w * rvq.apply(variables, x, update_ema=True,
                                               rngs={'vq': jax.random.PRNGKey(2)})['z_q']))(z)
  np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6)


def test_quantize_dropout_leaves_dropped_examples_out_of_the_ema_statistics():
  decay = 0.9
  rvq = ResidualVQ(num_stages=2, num_codes=4, code_dim=2, quantize_dropout=True,
                   vq_kwargs=(('ema_decay', decay), ('use_ema', True)))
  z = jax.random.normal(jax.random.PRNGKey(0), (16, 3, 2))
  variables = rvq.init(jax.random.PRNGKey(1), z)
  out, new = rvq.apply(variables, z, update_ema=True, mutable=['vq_ema'],
                       rngs={'vq': jax.random.PRNGKey(5)})
  books = [np.asarray(variables['vq_ema'][f'stages_{s}']['codebook']) for s in range(2)]
  idx = np.asarray(out['indices'])
  n = _prefix_lengths(np.asarray(out['z_q']), _stage_codes(books, idx))
  assert set(n) == {1, 2}
  for s in range(2):
    kept = np.broadcast_to((n > s)[:, None], idx.shape[:2])
    counts = np.bincount(idx[..., s][kept], minlength=4)
    np.testing.assert_allclose(np.asarray(new['vq_ema'][f'stages_{s}']['cluster_size']),
                               decay * 1.0 + (1 - decay) * counts, rtol=1e-6)


# ----------------------------------------------------------------------------
# vaes/scalar_quantizers.py: FSQ and residual FSQ.
# ----------------------------------------------------------------------------


def test_fsq_round_trip_shapes_and_gradients():
  levels = (5, 4, 3)
  fsq = FSQ(levels=levels, code_dim=6)
  z = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 6))
  variables = fsq.init(jax.random.PRNGKey(1), z)
  out = fsq.apply(variables, z)
  assert out['z_q'].shape == z.shape and out['indices'].shape == (2, 5, 5)
  assert out['one_hot'].shape == (2, 5, 5, 60) and fsq.codebook_size == 60
  idx = np.asarray(out['indices'])
  assert idx.min() >= 0 and idx.max() < 60 and len(np.unique(idx)) > 5
  np.testing.assert_allclose(np.asarray(fsq.apply(variables, out['indices'], method=fsq.embed)),
                             np.asarray(out['z_q']), rtol=1e-5, atol=1e-5)
  # Each channel takes at most L_i values after rounding.
  bounded = quantizers.fsq_bound(fsq.apply(variables, z, method=lambda m, x: m.proj_in(x)),
                                 levels)
  for i, l in enumerate(levels):
    assert len(np.unique(np.round(np.asarray(bounded[..., i])))) <= l
  # Straight-through: gradients reach the input and both projections.
  g_z = jax.grad(lambda x: jnp.sum(fsq.apply(variables, x)['z_q'] ** 2))(z)
  assert float(jnp.abs(g_z).sum()) > 0
  g_p = jax.grad(lambda p: jnp.sum(fsq.apply({'params': p}, z)['z_q'] ** 2))(
      variables['params'])
  assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(g_p))


def _fsq_level_np(x, levels):
  """Plain-numpy FSQ of one level: (round(f(x)) / (L // 2), mixed-radix index)."""
  levels = np.asarray(levels, np.float32)
  half = (levels - 1) * (1 + 1e-3) / 2
  offset = np.where(levels % 2 == 0, 0.5, 0.0).astype(np.float32)
  bounded = np.tanh(x + np.arctanh(offset / half)) * half - offset
  hw = np.floor(levels / 2)
  digits = np.round(bounded) + hw
  basis = np.cumprod(np.concatenate([[1], levels[:-1]]))
  return np.round(bounded) / hw, (digits * basis).sum(-1).astype(np.int64)


def test_residual_fsq_equals_a_loop_over_levels_and_starts_with_plain_fsq():
  levels, stages = (7, 6, 5), 3
  rfsq = quantizers.ResidualFSQ(levels=levels, code_dim=4, num_stages=stages)
  z_e = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 3, 4))
  variables = rfsq.init(jax.random.PRNGKey(1), z_e)
  out = rfsq.apply(variables, z_e)
  p_in, p_out = variables['params']['proj_in'], variables['params']['proj_out']
  z = np.asarray(z_e) @ np.asarray(p_in['kernel']) + np.asarray(p_in['bias'])
  residual, total, idx = z.astype(np.float32), 0.0, []
  for s in range(stages):            # the brute-force loop: level s on r_s / (L - 1)^-s
    scale = (np.asarray(levels, np.float32) - 1) ** -s
    zhat, k = _fsq_level_np(residual / scale, levels)
    total, residual = total + zhat * scale, residual - zhat * scale
    idx.append(k)
  np.testing.assert_array_equal(np.asarray(out['indices']), np.stack(idx, -1))
  np.testing.assert_allclose(np.asarray(out['z_q']),
                             total @ np.asarray(p_out['kernel']) + np.asarray(p_out['bias']),
                             rtol=1e-5, atol=1e-5)
  assert out['one_hot'].shape == (4, 3, 3, stages, 210) and rfsq.codebook_size == 210
  np.testing.assert_allclose(np.asarray(rfsq.apply(variables, out['indices'],
                                                   method=rfsq.embed)),
                             np.asarray(out['z_q']), rtol=1e-5, atol=1e-5)
  # Level 0 is plain FSQ (same projections): its index, and all of z_q with one level.
  fsq_out = FSQ(levels=levels, code_dim=4).apply(variables, z_e)
  np.testing.assert_array_equal(np.asarray(out['indices'][..., 0]),
                                np.asarray(fsq_out['indices']))
  one = quantizers.ResidualFSQ(levels=levels, code_dim=4, num_stages=1).apply(variables, z_e)
  np.testing.assert_array_equal(np.asarray(one['z_q']), np.asarray(fsq_out['z_q']))
  # Gradients reach z_e and both projections.
  g = jax.grad(lambda v, x: jnp.sum(rfsq.apply(v, x)['z_q'] ** 2), argnums=(0, 1))(
      variables, z_e)
  assert all(float(jnp.abs(x).sum()) > 0 for x in jax.tree.leaves(g))


def test_residual_fsq_reconstructs_better_with_more_levels():
  levels = (7, 5, 5)
  # Inputs inside the range the levels can reach together (|z| < sum_s c_s, about 1.2
  # here; even L reach less on the positive side): beyond it every level saturates.
  # The error falls fast, then levels off: tanh bounds each level, so a residual near
  # the edge of a level's range can exceed what the later levels reach.
  z_e = 0.3 * jax.random.normal(jax.random.PRNGKey(2), (8, 4, 4, 4))
  variables = quantizers.ResidualFSQ(levels=levels, code_dim=4, num_stages=1).init(
      jax.random.PRNGKey(3), z_e)
  p_in = variables['params']['proj_in']
  z = np.asarray(z_e) @ np.asarray(p_in['kernel']) + np.asarray(p_in['bias'])
  errors = []
  for stages in range(1, 5):          # the same projections serve any number of levels
    idx = np.asarray(quantizers.ResidualFSQ(levels=levels, code_dim=4, num_stages=stages)
                     .apply(variables, z_e)['indices'])
    total = 0.0
    for s in range(stages):           # sum of the levels' codes, decoded from the indices
      digits = (idx[..., s, None] // np.cumprod((1,) + levels[:-1])) % np.asarray(levels)
      hw = np.asarray(levels) // 2
      total = total + (digits - hw) / hw * (np.asarray(levels, np.float64) - 1) ** -s
    errors.append(np.mean((z - total) ** 2))
  assert all(b < a for a, b in zip(errors, errors[1:])), errors
  assert errors[-1] < 0.02 * errors[0], errors


def test_residual_fsq_quantize_dropout_keeps_a_prefix_of_levels():
  levels = (5, 4)
  rfsq = quantizers.ResidualFSQ(levels=levels, code_dim=3, num_stages=3, quantize_dropout=True)
  z_e = jax.random.normal(jax.random.PRNGKey(0), (32, 3))
  variables = rfsq.init(jax.random.PRNGKey(1), z_e)
  ev = rfsq.apply(variables, z_e)
  tr = rfsq.apply(variables, z_e, update_ema=True, rngs={'vq': jax.random.PRNGKey(2)})
  idx = np.asarray(ev['indices'])
  np.testing.assert_array_equal(np.asarray(tr['indices']), idx)
  np.testing.assert_allclose(np.asarray(rfsq.apply(variables, ev['indices'], method=rfsq.embed)),
                             np.asarray(ev['z_q']), rtol=1e-5, atol=1e-5)
  # z_q (minus the output bias) is linear in the level codes: level s's contribution
  # is embed(indices with only level s) - bias.
  bias = np.asarray(variables['params']['proj_out']['bias'])
  codes = []
  for s in range(3):
    only = np.zeros_like(idx)
    only[..., s] = idx[..., s]
    mid = np.zeros_like(idx)      # digits at L // 2 (the zero code) on the other levels
    base = sum((l // 2) * int(np.prod(levels[:i])) for i, l in enumerate(levels))
    mid[...] = base
    mid[..., s] = idx[..., s]
    codes.append(np.asarray(rfsq.apply(variables, jnp.asarray(mid), method=rfsq.embed)) - bias)
  codes = np.stack(codes)
  np.testing.assert_allclose(codes.sum(0), np.asarray(ev['z_q']) - bias, rtol=1e-5, atol=1e-5)
  # Each example's z_q is the sum of a prefix of its levels (two prefixes fit when a
  # level's code is the zero code); each prefix length is the only fit for some example.
  fits = _prefix_fits(np.asarray(tr['z_q']) - bias, codes)
  assert fits.any(0).all()
  unique = fits[:, fits.sum(0) == 1]
  assert unique.any(1).all(), fits


# ----------------------------------------------------------------------------
# vaes/scalar_quantizers.py: LFQ (Yu et al. 2023) and BSQ (Zhao et al. 2024).
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
