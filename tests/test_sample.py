"""sample.py (vaes/sample.py and the families' sample hooks): the ladder's temperature and
--from_layer against its prior samples and reconstructions, byte-identical files for the
same checkpoint and seed, the one-line refusals, VQ samples through a prior, and
generated / imputed sequences as MIDI files that read back to the sampled rolls."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import load_config, run_cli
from vaes import data as data_lib
from vaes import midi
from vaes import sample as sample_lib
from vaes.errors import CheckpointError, ConfigError
from vaes.families import ladder, vrae
from vaes.models import ladder as ladder_model
from vaes.registry import SampleOptions, get_family
from vaes.train import train_and_evaluate

TINY_LADDER = {'model.latent_sizes': (4, 3, 2), 'model.hidden_sizes': (16, 8, 8),
               'batch_size': 32, 'eval.batch_size': 128, 'eval.num_importance_samples': 2,
               'eval.iw_chunk_size': 2, 'num_train_steps': 4, 'log_every_steps': 2,
               'checkpoint_every_steps': 4, 'eval_every_steps': 0}


def _ladder(path, overrides=None):
  """(config, model, variables, eval images, x_shape) of a freshly initialised tiny model."""
  config = load_config(path, {**TINY_LADDER, **(overrides or {})})
  fam = get_family(config.model.name)
  splits = data_lib.get_datasets(config)
  model = fam.build_model(config, splits.info)
  batch = jax.tree.map(jnp.asarray, next(splits.train.iterate(0)))
  variables = fam.init_variables(model, jax.random.PRNGKey(0), batch)
  x = np.asarray(next(iter(splits.eval))['image'])[:5]
  return config, model, variables, jnp.asarray(x), tuple(splits.info.shape)


@pytest.mark.parametrize('path,overrides', [
    ('configs/lvae.py', {}), ('configs/hvae.py', {}),
    ('configs/lvae.py', {'model.top_down_skip': True, 'model.batch_norm': False})])
def test_ladder_temperature_and_from_layer(path, overrides):
  config, model, variables, x, x_shape = _ladder(path, overrides)
  lik, num_layers = config.model.likelihood, len(config.model.latent_sizes)
  rng = jax.random.PRNGKey(3)
  # T = 1 is the model's own ancestral sample (the noise of draw_noise, unscaled).
  noise = ladder_model.draw_noise(model, rng, (6,), x_shape)
  plain = ladder.x_mean(lik, model.apply(variables, noise, train=False, method=model.sample))
  default = ladder._prior_samples(model, lik, x_shape, 6, variables, rng)
  np.testing.assert_allclose(default, plain, rtol=0, atol=1e-6)   # jitted vs not: rounding
  np.testing.assert_array_equal(
      ladder._prior_samples(model, lik, x_shape, 6, variables, rng, 1.0), default)
  # from_layer = 0 is a prior sample with the same key (the prior's noise, fold_in(rng, 1)).
  for t in (1.0, 0.5):
    np.testing.assert_allclose(
        ladder._samples_given_top(model, lik, x_shape, 0, 2, variables, x, rng, t),
        ladder._prior_samples(model, lik, x_shape, 2 * len(x), variables,
                              jax.random.fold_in(rng, 1), t), rtol=0, atol=1e-6)
  # from_layer = L keeps every layer of the posterior: the reconstruction, whatever T.
  recon = ladder._reconstructions(model, lik, x_shape, variables, x, rng)
  for t in (1.0, 1e-4):
    given = ladder._samples_given_top(model, lik, x_shape, num_layers, 3, variables, x, rng, t)
    np.testing.assert_allclose(given, jnp.tile(recon, (3, 1, 1, 1)), rtol=0, atol=1e-5)
  # As T -> 0 the prior's draws collapse onto its means: the draws of one image agree.
  for keep in range(num_layers):
    cold = np.asarray(ladder._samples_given_top(model, lik, x_shape, keep, 3, variables, x,
                                                rng, 1e-5)).reshape((3, len(x)) + x_shape)
    warm = np.asarray(ladder._samples_given_top(model, lik, x_shape, keep, 3, variables, x,
                                                rng, 1.0)).reshape((3, len(x)) + x_shape)
    assert np.abs(cold - cold[:1]).max() < 1e-3, keep
    assert np.abs(warm - warm[:1]).max() > 1e-2, keep
  # The top layers come from x's posterior: keeping more of them moves the draws towards
  # the reconstruction (mean over images and draws).
  dist = [float(np.mean(np.abs(np.asarray(ladder._samples_given_top(
      model, lik, x_shape, keep, 3, variables, x, rng, 1.0)) - np.tile(recon, (3, 1, 1, 1)))))
          for keep in range(num_layers + 1)]
  assert dist[-1] < 1e-5 and dist[0] > dist[-1], dist


def _files(directory):
  out = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, directory)] = f.read()
  return out


def test_ladder_cli_same_seed_same_bytes_and_one_line_refusals(tmp_path):
  wd = str(tmp_path / 'lvae')
  with pytest.raises(CheckpointError, match='train first'):
    sample_lib.sample(load_config('configs/lvae.py', TINY_LADDER), wd, SampleOptions())
  assert not os.path.exists(wd)                # nothing made in a workdir without checkpoints
  train_and_evaluate(load_config('configs/lvae.py', TINY_LADDER), wd)
  args = ['--num=8', '--temperature=0.8']
  run_cli('sample.py', 'configs/lvae.py', wd, TINY_LADDER, extra_args=args)
  first = _files(os.path.join(wd, 'samples'))
  assert sorted(first) == ['samples_n8_t0.8_s0.json', 'samples_n8_t0.8_s0.png']
  record = json.loads(first['samples_n8_t0.8_s0.json'])
  assert record['step'] == 4 and record['checkpoint'] == 'latest'
  assert record['weights'] == 'params' and record['seed'] == 0
  assert record['temperature'] == 0.8 and record['num'] == 8 and record['from_layer'] == 0
  assert record['files'] == ['samples_n8_t0.8_s0.png']
  assert record['config']['model']['latent_sizes'] == [4, 3, 2]
  run_cli('sample.py', 'configs/lvae.py', wd, TINY_LADDER, extra_args=args)
  assert _files(os.path.join(wd, 'samples')) == first       # same checkpoint + seed: same bytes
  # Another seed, other samples; --from_layer writes its own grid.
  config = load_config('configs/lvae.py', TINY_LADDER)
  sample_lib.sample(config, wd, SampleOptions(num=8, temperature=0.8, seed=1))
  other = _files(os.path.join(wd, 'samples'))
  assert other['samples_n8_t0.8_s1.png'] != first['samples_n8_t0.8_s0.png']
  # An export of the checkpoint (vaes/export.py) draws the same bytes into another workdir.
  from vaes import export as export_lib
  export_lib.export(config, wd, str(tmp_path / 'lvae.msgpack'))
  record = sample_lib.sample(config, str(tmp_path / 'from_export'),
                             SampleOptions(num=8, temperature=0.8),
                             export_path=str(tmp_path / 'lvae.msgpack'))
  assert record['checkpoint'] == 'export' and record['step'] == 4
  with open(tmp_path / 'from_export' / 'samples' / 'samples_n8_t0.8_s0.png', 'rb') as f:
    assert f.read() == first['samples_n8_t0.8_s0.png']
  record = sample_lib.sample(config, wd, SampleOptions(num=8, from_layer=3))
  assert record['files'] == ['from_layer3_n8_t1_s0.png'] and record['images'] == 8
  assert record['draws_per_image'] == 1
  # Bad flags: one line, exit status 2, before anything is read.
  proc = run_cli('sample.py', 'configs/lvae.py', wd, TINY_LADDER, check=False,
                 extra_args=['--from_layer=4'])
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('ERROR: --from_layer=4') and '3' in lines[0]
  for options, words in ((SampleOptions(temperature=0.0), '--temperature=0.0'),
                         (SampleOptions(temperature=float('nan')), 'finite'),
                         (SampleOptions(num=0), '--num=0'),
                         (SampleOptions(from_layer=-1), '--from_layer=-1'),
                         (SampleOptions(impute=True), 'vrae')):
    with pytest.raises(ConfigError, match=words):
      sample_lib.sample(config, wd, options)


TINY_SEQUENCES = {'batch_size': 4, 'num_train_steps': 2, 'log_every_steps': 1,
                  'eval_every_steps': 0, 'checkpoint_every_steps': 2, 'model.hidden': 8,
                  'model.latent': 2, 'model.mlp_hidden': 8, 'eval.batch_size': 8,
                  'eval.num_importance_samples': 2, 'eval.iw_chunk_size': 2,
                  'eval.num_plot_sequences': 2, 'eval.select_metric': '',
                  'eval.select_num_importance_samples': 0, 'data.name': 'polyphonic_pickle'}


def _pickle(path):
  import pickle
  rng = np.random.default_rng(0)
  def seq(n):
    return [sorted(set(rng.integers(50, 80, size=4).tolist())) for _ in range(n)]
  raw = {k: [seq(int(n)) for n in rng.integers(5, 20, size=12)]
         for k in ('train', 'valid', 'test')}
  with open(path, 'wb') as f:
    pickle.dump(raw, f)
  return str(path)


def test_sequences_generation_and_imputation_as_midi(tmp_path):
  """Generated and imputed rolls are written as MIDI files that read back to the sampled
  rolls; T = 1 is vrae.sample_prior; eval.py writes MIDI files beside its piano rolls."""
  from vaes.evaluate import evaluate
  overrides = dict(TINY_SEQUENCES, **{'data.path': _pickle(tmp_path / 'jsb.pickle')})
  config = load_config('configs/vrnn_jsb.py', overrides)
  wd = str(tmp_path / 'vrnn')
  train_and_evaluate(config, wd)
  record = sample_lib.sample(config, wd, SampleOptions(num=3, temperature=0.7, seed=2))
  assert record['files'] == [f'samples_n3_t0.7_s2/sequence_{i:03d}.{e}' for i in range(3)
                             for e in ('png', 'mid')]
  trained, variables, _ = sample_lib.load_variables(config, wd)
  model, length = trained.model, trained.splits.info.shape[0]
  gen = np.asarray(vrae._sample_prior_at_jit(model, variables, jax.random.PRNGKey(2), 3, length,
                                             0.7)['x'])
  for i in range(3):
    roll = midi.read_roll(os.path.join(wd, 'samples', f'samples_n3_t0.7_s2/sequence_{i:03d}.mid'))
    np.testing.assert_array_equal(roll[:length], gen[i][:len(roll)])
    assert roll[length:].sum() == 0 and gen[i][len(roll):].sum() == 0
  # T = 1 draws sample_prior's samples.
  for a, b in zip(jax.tree.leaves(vrae.sample_prior_at(model, variables, jax.random.PRNGKey(2), 3,
                                                       length, 1.0)),
                  jax.tree.leaves(vrae.sample_prior(model, variables, jax.random.PRNGKey(2), 3,
                                                    length))):
    np.testing.assert_array_equal(a, b)
  # Imputation: the observed frames of each written sequence are the data's.
  record = sample_lib.sample(config, wd, SampleOptions(num=20, impute=True))
  data = trained.splits.info.num_eval
  assert record['sequences'] == min(20, data) and record['impute']
  first = next(iter(trained.splits.eval))
  x, mask = np.asarray(first['x'])[:2], np.asarray(first['mask'])[:2]
  observed = vrae.hidden_block(mask)
  for i in range(2):
    n = int(mask[i].sum())
    roll = midi.read_roll(os.path.join(wd, 'samples', f'imputation_n20_t1_s0/sequence_{i:03d}.mid'))
    roll = np.pad(roll, ((0, max(0, n - len(roll))), (0, 0)))[:n]
    keep = observed[i, :n] > 0
    np.testing.assert_array_equal(roll[keep], x[i, :n][keep])
  with pytest.raises(ConfigError, match='--from_layer'):
    sample_lib.sample(config, wd, SampleOptions(from_layer=1))
  # eval.py: MIDI files of its prior samples and imputed sequences beside the PNGs.
  evaluate(config, wd)
  for i in range(2):
    n = int(mask[i].sum())
    roll = midi.read_roll(os.path.join(wd, f'eval_imputation_{i}.mid'))
    roll = np.pad(roll, ((0, max(0, n - len(roll))), (0, 0)))[:n]
    keep = observed[i, :n] > 0
    np.testing.assert_array_equal(roll[keep], x[i, :n][keep])
    assert midi.read_roll(os.path.join(wd, f'eval_samples_{i}.mid')).shape[1] == 88


TINY_VQ = {'model.hidden': 16, 'model.res_hidden': 8, 'model.num_codes': 16,
           'batch_size': 32, 'eval.batch_size': 128}
TINY_PRIOR = {'batch_size': 32, 'num_train_steps': 2, 'log_every_steps': 1,
              'eval_every_steps': 0, 'checkpoint_every_steps': 2, 'model.channels': 8,
              'model.num_layers': 2, 'model.out_hidden': 8, 'eval.num_images': 4,
              'eval.temperatures': (1.0,)}


def test_vq_samples_through_the_prior(tmp_path):
  vq_dir, prior_dir = str(tmp_path / 'vq'), str(tmp_path / 'prior')
  stage1 = dict(TINY_VQ, num_train_steps=2, log_every_steps=1, eval_every_steps=0,
                checkpoint_every_steps=2)
  overrides = dict(TINY_PRIOR, **{f'data.vqvae.{k}': v for k, v in stage1.items()})
  overrides['data.vqvae_workdir'] = vq_dir
  config = load_config('configs/vqvae_prior.py', overrides)
  train_and_evaluate(config.data.vqvae, vq_dir)
  # A VQ-VAE alone: one line naming the prior to train.
  with pytest.raises(ConfigError, match='configs/vqvae_prior.py'):
    sample_lib.sample(config.data.vqvae, vq_dir, SampleOptions())
  train_and_evaluate(load_config('configs/vqvae_prior.py', overrides), prior_dir)
  options = SampleOptions(num=9, temperature=0.7)
  record = sample_lib.sample(load_config('configs/vqvae_prior.py', overrides), prior_dir,
                             options)
  assert record['files'] == ['samples_n9_t0.7_s0.png'] and record['step'] == 2
  assert record['first_stage']['step'] == 2 and record['first_stage']['weights'] == 'params'
  first = _files(os.path.join(prior_dir, 'samples'))
  sample_lib.sample(load_config('configs/vqvae_prior.py', overrides), prior_dir, options)
  assert _files(os.path.join(prior_dir, 'samples')) == first
  with pytest.raises(ConfigError, match='--impute'):
    sample_lib.sample(config, prior_dir, SampleOptions(impute=True))


def test_eval_examples_first_or_spread_over_the_split():
  """--from_layer's images: spaced evenly over the evaluation split (the bundled MNIST test
  split is sorted by label: its first 8 images are all zeros), padding never chosen."""
  from vaes.data.core import ArrayEvalSource
  from vaes.registry import SampleContext
  arrays = {'image': np.arange(23, dtype=np.float32)[:, None]}
  ctx = SampleContext(config=None, model=None, variables={}, data_info=None,
                      eval_source=ArrayEvalSource(arrays, 5), rng=None,
                      options=SampleOptions(), out_dir='', stem='')
  np.testing.assert_array_equal(ctx.eval_examples(4)['image'][:, 0], [0, 1, 2, 3])
  np.testing.assert_array_equal(ctx.eval_examples(4, spread=True)['image'][:, 0],
                                [0, 7, 15, 22])
  np.testing.assert_array_equal(ctx.eval_examples(40, spread=True)['image'][:, 0],
                                np.arange(23))
