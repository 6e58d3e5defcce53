"""Codebook health and alternative quantisers: k-means, dead-code restarts
(identical on 1 and 8 devices), cosine and projected codes, FSQ, residual VQ."""

import jax
import jax.numpy as jnp
import numpy as np

from tests.helpers import assert_same_on_1_and_8_devices
from vaes import quantizers
from vaes.quantizers import FSQ, ResidualVQ, VectorQuantizer


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


TINY_CB = {'batch_size': 32, 'model.hidden': 16, 'model.res_hidden': 8,
           'model.num_codes': 64, 'model.restart_after': 1, 'model.kmeans_init': True,
           'model.kmeans_iters': 3, 'data.image_size': 8, 'eval.batch_size': 128}


def test_restarts_are_identical_on_1_and_8_devices(tmp_path):
  one, eight = assert_same_on_1_and_8_devices('configs/vqvae_codebook.py', TINY_CB, tmp_path,
                                              num_steps=3)
  # Restarts did happen within the steps (and k-means ran at the first one).
  assert sum(m['restarted_codes'] for m in one['metrics']) > 0
  assert any('steps_unused' in k for k in one['leaves'])
  init_flag = [v for k, v in one['leaves'].items() if 'initialized' in k]
  assert init_flag and int(init_flag[0]) == 1


# ----------------------------------------------------------------------------
# EMA-count dead codes (threshold_ema_dead_code of vector-quantize-pytorch).
# ----------------------------------------------------------------------------


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


def test_quantizer_with_dead_code_threshold_reseeds_after_the_ema_step():
  decay, threshold = 0.99, 1.0
  vq = VectorQuantizer(num_codes=4, code_dim=2, use_ema=True, ema_decay=decay,
                       dead_code_threshold=threshold)
  z = jnp.asarray(np.random.default_rng(2).normal(size=(16, 2)) * 0.1, jnp.float32)
  variables = vq.init(jax.random.PRNGKey(0), z)
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
                                  jax.nn.one_hot(out['indices'], 4), z, decay, 1e-5)
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
# Quantize dropout (SoundStream): per example, the first n_b ~ U{1..S} stages.
# ----------------------------------------------------------------------------


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
# Residual FSQ.
# ----------------------------------------------------------------------------


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
# Each option is a config.model field of configs/vqvae.py, checked and wired.
# ----------------------------------------------------------------------------

OPTION_CASES = [
    {'model.rotation_trick': True},
    {'model.simvq': True, 'model.use_ema': False},
    {'model.dead_code_threshold': 2.0},
    {'model.quantizer': 'lfq', 'model.binary_bits': 4, 'model.entropy_weight': 0.1},
    {'model.quantizer': 'bsq', 'model.binary_bits': 4, 'model.entropy_weight': 0.1},
    {'model.entropy_weight': 0.1, 'model.entropy_gamma': 2.0, 'model.entropy_temperature': 0.5},
    {'model.quantizer': 'rvq', 'model.rvq_stages': 2, 'model.quantize_dropout': True},
    {'model.quantizer': 'rfsq', 'model.rvq_stages': 2, 'model.quantize_dropout': True},
]


def _vqvae_case(overrides):
  from tests.helpers import load_config
  from vaes.registry import get_family
  from vaes.train import validate_config
  config = load_config('configs/vqvae.py', {'model.hidden': 8, 'model.res_hidden': 4,
                                            **overrides})
  family = get_family(config.model.name)
  validate_config(config, family, num_devices=1)
  info = {'shape': (8, 8, 1), 'train_variance': 0.05, 'num_levels': 17, 'num_train': 64}
  batch = {'image': jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 1))}
  return config, family, info, batch


def test_each_option_is_a_config_field_that_builds_and_traces():
  for overrides in OPTION_CASES:
    config, family, info, batch = _vqvae_case(overrides)
    model = family.build_model(config, info)
    spec = model.vq
    for key, value in overrides.items():
      assert getattr(spec, key.split('.')[1]) == value, key
    variables = jax.eval_shape(lambda r, b: family.init_variables(model, r, b),
                               jax.random.PRNGKey(0), batch)
    state = {k: v for k, v in variables.items() if k != 'params'}
    loss_fn = family.make_loss_fn(config, model, info)
    loss, (metrics, new_state) = jax.eval_shape(loss_fn, variables['params'], state, batch,
                                                jax.random.PRNGKey(1), jnp.int32(0))
    assert loss.shape == () and jax.tree.structure(new_state) == jax.tree.structure(state)
    assert ('entropy_loss' in metrics) == (config.model.entropy_weight > 0), overrides


def test_the_entropy_loss_enters_the_training_loss_only_when_weighted():
  class Stub:   # a model whose quantiser terms are known: decoder output = x (zero NLL)
    def apply(self, variables, x, train, rngs):
      one = jnp.ones((), jnp.float32)
      return dict(decoder_out=x, codebook_loss=1.0 * one, commitment_loss=2.0 * one,
                  entropy_loss=-0.5 * one, restarted_codes=0.0 * one, perplexity=one)
  for weight, expected in ((0.0, 3.0), (0.1, 2.5)):
    config, family, info, batch = _vqvae_case({'model.entropy_weight': weight})
    loss, (metrics, _) = family.make_loss_fn(config, Stub(), info)(
        {}, {}, batch, jax.random.PRNGKey(1), jnp.int32(0))
    assert float(loss) == expected
    assert ('entropy_loss' in metrics) == (weight > 0)


def test_bad_option_values_are_one_line_config_errors():
  import pytest
  from vaes.registry import ConfigError
  bad = [
      ({'model.simvq': True}, 'use_ema=False'),
      ({'model.simvq': True, 'model.use_ema': False, 'model.quantizer': 'fsq'}, 'no effect'),
      ({'model.rotation_trick': True, 'model.quantizer': 'lfq'}, 'no effect'),
      ({'model.dead_code_threshold': 1.0, 'model.use_ema': False}, 'use_ema=True'),
      ({'model.dead_code_threshold': 1.0, 'model.restart_after': 5}, 'set one'),
      ({'model.dead_code_threshold': -1.0}, '>= 0'),
      ({'model.quantize_dropout': True}, "'rvq' or 'rfsq'"),
      ({'model.quantizer': 'lfq', 'model.binary_bits': 0}, 'binary_bits=0'),
      ({'model.quantizer': 'bsq', 'model.binary_bits': 17}, 'binary_bits=17'),
      ({'model.entropy_weight': -0.1}, 'entropy_weight=-0.1'),
      ({'model.entropy_weight': 0.1, 'model.entropy_temperature': 0.0}, 'entropy_temperature'),
      ({'model.entropy_weight': 0.1, 'model.quantizer': 'fsq'}, 'no effect'),
      ({'model.quantizer': 'rfsq', 'model.rvq_stages': 0}, 'rvq_stages=0'),
      ({'model.quantizer': 'rfsq', 'model.fsq_levels': (4, 1)}, 'fsq_levels'),
      ({'model.quantizer': 'xq'}, 'choose one of'),
  ]
  for overrides, words in bad:
    with pytest.raises(ConfigError, match=words.replace('(', r'\(').replace(')', r'\)')) as e:
      _vqvae_case(overrides)
    assert '\n' not in str(e.value), str(e.value)
