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
