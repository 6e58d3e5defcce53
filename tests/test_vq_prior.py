"""Learned prior over codes: causal masked convolutions, deterministic ancestral
sampling, and the two-stage CLI (VQ-VAE -> cached codes -> prior -> bits/dim)."""

import glob
import os
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from tests.helpers import load_config, model_fields, read_eval_metrics, run_cli
from vaes.families import vq_prior
from vaes.families.vq_prior import sample_codes
from vaes.models.pixelcnn import CodePrior, GatedPixelCNN
from vaes.train import train_and_evaluate


def _dependence(net, params, x, i, j):
  """|d logits[0, i, j] / d x| summed over channels: (H, W) map of dependence."""
  w = jax.random.normal(jax.random.PRNGKey(7), (net.num_codes,))
  g = jax.grad(lambda e: jnp.sum(
      net.apply(params, None, embedded=e)[0, i, j] * w))(x)
  return np.asarray(jnp.sum(jnp.abs(g[0]), -1))


def test_masked_convolutions_are_causal_and_have_no_blind_spot():
  h = w = 5
  net = GatedPixelCNN(**model_fields(GatedPixelCNN, vq_prior, num_codes=7, channels=8,
                                     num_layers=5, kernel_size=3, embed_dim=4, out_hidden=8,
                                     dropout=0.0))
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, h, w), jnp.int32))
  x = jax.random.normal(jax.random.PRNGKey(1), (1, h, w, 4))
  order = np.arange(h * w).reshape(h, w)
  for i in range(h):
    for j in range(w):
      dep = _dependence(net, params, x, i, j)
      p = order[i, j]
      # Nothing at or after (i, j) in raster order influences the logits at (i, j).
      np.testing.assert_array_equal(dep[order >= p], 0.0, err_msg=f'position {(i, j)}')
  # Five layers of 3x3 / 1x3 kernels see every earlier position of a 5x5 grid from the
  # middle of the last row: the vertical + horizontal stacks leave no blind spot.
  dep = _dependence(net, params, x, 4, 2)
  assert np.all(dep[order < order[4, 2]] > 0), dep


def test_conditioning_reaches_every_position_and_stays_causal():
  prior = CodePrior(**model_fields(CodePrior, vq_prior, num_codes=(5, 3),
                                   grids=((4, 4), (2, 2)), channels=8, num_layers=2, embed_dim=4,
                                   out_hidden=8, cond_channels=4, dropout=0.0))
  codes = [jnp.zeros((1, 4, 4), jnp.int32), jnp.zeros((1, 2, 2), jnp.int32)]
  params = prior.init(jax.random.PRNGKey(0), codes)
  bottom, top = prior.apply(params, codes)
  # Changing the top codes changes the bottom logits (conditioning) ...
  codes2 = [codes[0], codes[1].at[0, 1, 1].set(2)]
  bottom2, top2 = prior.apply(params, codes2)
  assert not np.allclose(np.asarray(bottom), np.asarray(bottom2))
  # ... and the top prior ignores the bottom codes; its (1, 1) logits ignore z_top[1, 1].
  codes3 = [codes[0].at[0, 0, 0].set(4), codes[1]]
  np.testing.assert_array_equal(np.asarray(prior.apply(params, codes3)[1]), np.asarray(top))
  np.testing.assert_array_equal(np.asarray(top2)[0, 1, 1], np.asarray(top)[0, 1, 1])


def test_sampling_with_a_fixed_rng_is_deterministic():
  prior = CodePrior(**model_fields(CodePrior, vq_prior, num_codes=(6, 4),
                                   grids=((4, 4), (2, 2)), channels=8, num_layers=2, embed_dim=4,
                                   out_hidden=8, cond_channels=4, dropout=0.0))
  params = prior.init(jax.random.PRNGKey(0), [jnp.zeros((1, 4, 4), jnp.int32),
                                              jnp.zeros((1, 2, 2), jnp.int32)])['params']
  sampler = jax.jit(lambda p, r: sample_codes(prior, p, r, 8, 1.0))
  a = jax.device_get(sampler(params, jax.random.PRNGKey(3)))
  b = jax.device_get(sampler(params, jax.random.PRNGKey(3)))
  c = jax.device_get(sampler(params, jax.random.PRNGKey(4)))
  assert [x.shape for x in a] == [(8, 4, 4), (8, 2, 2)]
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not all(np.array_equal(x, y) for x, y in zip(a, c))
  assert a[0].min() >= 0 and a[0].max() < 6 and a[1].max() < 4
  # Different positions get different keys: samples are not constant over the grid.
  assert len(np.unique(a[0])) > 1


def test_sampling_at_low_temperature_follows_the_argmax():
  prior = CodePrior(**model_fields(CodePrior, vq_prior, num_codes=(6,), grids=((3, 3),),
                                   channels=8, num_layers=2, embed_dim=4, out_hidden=8,
                                   dropout=0.0))
  params = prior.init(jax.random.PRNGKey(0), [jnp.zeros((1, 3, 3), jnp.int32)])['params']
  # Random biases too, so that no conditional is a tie (at init the first position's
  # logits are all exactly 0).
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(5), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.5 * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, keys)])
  codes = sample_codes(prior, params, jax.random.PRNGKey(1), 2, temperature=1e-4)[0]
  logits = prior.apply({'params': params}, [codes])[0]
  # Each sampled code is the mode of its conditional given the codes before it.
  np.testing.assert_array_equal(np.asarray(jnp.argmax(logits, -1)), np.asarray(codes))


TINY_VQ = {'model.hidden': 16, 'model.res_hidden': 8, 'model.num_codes': 16,
           'batch_size': 32, 'eval.batch_size': 128}
TINY_PRIOR = {'batch_size': 32, 'num_train_steps': 6, 'log_every_steps': 3,
              'eval_every_steps': 0, 'checkpoint_every_steps': 6, 'model.channels': 8,
              'model.num_layers': 2, 'model.out_hidden': 8, 'eval.num_images': 4,
              'eval.temperatures': '(1.0,)'}


def test_cli_prior_stage_smoke(tmp_path):
  """Stage 1 (in process), then train.py and eval.py of the prior on its cached codes."""
  vq_dir = str(tmp_path / 'vq')
  stage1 = dict(TINY_VQ, num_train_steps=4, log_every_steps=2, eval_every_steps=0,
                checkpoint_every_steps=4)
  # The ':vqvae' stage is the prior config's data.vqvae, here with the tiny overrides.
  vq_config = load_config('configs/vqvae_prior.py',
                          {f'data.vqvae.{k}': v for k, v in stage1.items()}).data.vqvae
  train_and_evaluate(vq_config, vq_dir)

  overrides = dict(TINY_PRIOR, **{f'data.vqvae.{k}': v for k, v in TINY_VQ.items()})
  overrides['data.vqvae_workdir'] = vq_dir
  wd = str(tmp_path / 'prior')
  proc = run_cli('train.py', 'configs/vqvae_prior.py', wd, overrides)
  assert '[step 6]' in proc.stdout, proc.stdout
  assert len(glob.glob(os.path.join(vq_dir, 'codes_*.npz'))) == 1
  run_cli('eval.py', 'configs/vqvae_prior.py', wd, overrides)
  m = read_eval_metrics(wd)
  for key in ('bits_per_dim', 'prior_nll_per_code', 'decoder_nll_bits_per_dim',
              'bits_per_dim_uniform_prior'):
    assert np.isfinite(m[key]), key
  # bits/dim = decoder + prior terms; the uniform prior costs 16 log 16 nats per image
  # (16 latents of K = 16 codes) over D = 64 dimensions.
  np.testing.assert_allclose(m['bits_per_dim_uniform_prior'] - m['decoder_nll_bits_per_dim'],
                             16 * np.log2(16) / 64, rtol=1e-5)
  np.testing.assert_allclose(m['bits_per_dim'] - m['decoder_nll_bits_per_dim'],
                             16 * m['prior_nll_per_code'] / (64 * np.log(2)), rtol=1e-4)
  assert m['num_eval_images'] == 297
  assert os.path.exists(os.path.join(wd, 'eval_samples_t1.png'))


def test_codes_cache_follows_the_checkpoint_content(tmp_path):
  """Retraining the first stage in the same workdir (same step, other weights) or
  changing the extraction fields gives a new cache; the same checkpoint reuses it."""
  import shutil
  from vaes import stages
  vq_dir = str(tmp_path / 'vq')
  stage1 = dict(TINY_VQ, num_train_steps=2, log_every_steps=1, eval_every_steps=0,
                checkpoint_every_steps=2)
  prior = lambda seed, **o: load_config('configs/vqvae_prior.py', dict(
      {f'data.vqvae.{k}': v for k, v in dict(stage1, seed=seed, **o).items()},
      **{'data.vqvae_workdir': vq_dir}))
  train_and_evaluate(prior(0).data.vqvae, vq_dir)
  first = stages.prepare_codes(prior(0))
  assert stages.prepare_codes(prior(0)) == first          # cached: same content
  first_codes = np.load(first)['eval_codes_0']
  # Stage 1 retrained in the same workdir with another seed: same step, other weights.
  shutil.rmtree(os.path.join(vq_dir, 'checkpoints'))
  train_and_evaluate(prior(1).data.vqvae, vq_dir)
  second = stages.prepare_codes(prior(1))
  assert second != first and os.path.exists(second)
  fresh = stages.extract_codes(stages.load_first_stage(prior(1)))['eval_codes_0']
  np.testing.assert_array_equal(np.load(second)['eval_codes_0'], fresh)
  assert not np.array_equal(first_codes, fresh)
  # Other extraction fields (the first stage's batch size): another cache.
  third = stages.prepare_codes(prior(1, batch_size=64))
  assert third not in (first, second)


def test_first_stage_with_weight_ema_is_used_through_its_average(tmp_path):
  """A first stage trained with config.weights_ema_decay > 0 encodes with its moving average,
  as its own evaluation does."""
  from vaes import data as data_lib
  from vaes import stages
  from vaes.checkpoint import Checkpointer
  from vaes.train import build_trainer
  vq_dir = str(tmp_path / 'vq')
  stage1 = dict(TINY_VQ, num_train_steps=2, log_every_steps=1, eval_every_steps=0,
                checkpoint_every_steps=2, weights_ema_decay=0.5)
  config = load_config('configs/vqvae_prior.py', dict(
      {f'data.vqvae.{k}': v for k, v in stage1.items()}, **{'data.vqvae_workdir': vq_dir}))
  train_and_evaluate(config.data.vqvae, vq_dir)
  first = stages.load_first_stage(config)
  splits = data_lib.get_datasets(config.data.vqvae)
  trainer = build_trainer(config.data.vqvae, splits.info, splits.train.element_spec)
  state, _, _ = Checkpointer(vq_dir).restore_latest(trainer.abstract_state, config.data.vqvae)
  used = jax.tree.leaves(jax.device_get(first.variables['params']))
  for u, e in zip(used, jax.tree.leaves(jax.device_get(state.ema_params))):
    np.testing.assert_array_equal(u, e)
  assert any(not np.array_equal(u, p)
             for u, p in zip(used, jax.tree.leaves(jax.device_get(state.params))))


def test_codes_key_ignores_data_fields_added_later_at_their_default():
  """The cache key hashes every config.data field, but one added after the key's format
  (any field outside stages.KEY_DATA_FIELDS) enters it only away from its default: caches
  and recorded codes_path made before the field existed keep their names
  (tests/golden/vqvae_prior holds such a name), while a value that changes the data still
  changes the key. A field added tomorrow needs no list to be kept up to date."""
  from vaes import stages
  from vaes.data import core
  config = load_config('configs/vqvae.py')
  sums = {'params/w': 'abc'}
  key = stages._key(sums, config)
  added = set(core.data_config()) - stages.KEY_DATA_FIELDS
  assert 'transpose' in added
  without = load_config('configs/vqvae.py')
  for name in added:
    del without.data[name]                            # the config as it was before the fields
  assert stages._key(sums, without) == key
  config.data.transpose = 3
  assert stages._key(sums, config) != key
  config.data.transpose = 0
  with mock.patch.object(core, 'data_config', _with_field(core.data_config, 'new_field', 5)):
    config.data.new_field = 5                         # a field added later, at its default
    assert stages._key(sums, config) == key
    config.data.new_field = 6
    assert stages._key(sums, config) != key
  del config.data.new_field
  config.data.max_len = 7                           # an original field, default or not
  assert stages._key(sums, config) != key


def _with_field(data_config, name, default):
  def patched():
    c = data_config()
    c[name] = default
    return c
  return patched
