"""vaes/export.py and vaes/export_file.py: python -m vaes.export, eval.py --export, exports
refused in one line, and a prior over an exported first stage."""

import json
import os
import subprocess

import jax
import numpy as np
import pytest
from flax import serialization

from tests.helpers import PYTHON, REPO, load_config, read_eval_metrics, run_cli, subprocess_env
from vaes import evaluate, export_file, stages
from vaes.errors import CheckpointError, ConfigError
from vaes.export import export
from vaes.train import train_and_evaluate

# The VQ-VAE (logistic decoder) that configs/vqvae_prior.py's prior is trained over: one
# run serves the eval.py tests and, exported, the prior's first stage.
CONFIG = 'configs/vqvae_prior.py:vqvae'
TINY_VQ = {'batch_size': 32, 'model.hidden': 16, 'model.res_hidden': 8, 'model.num_codes': 16,
           'eval.batch_size': 128, 'eval.num_images': 8}
RUN = dict(TINY_VQ, num_train_steps=4, log_every_steps=2, eval_every_steps=0,
           checkpoint_every_steps=4, weights_ema_decay=0.5)


def vq_config(**overrides):
  """CONFIG with RUN's overrides and `overrides` ({'model.hidden': 32, ...})."""
  return prior_config('', **overrides).data.vqvae


def prior_config(first_stage, **overrides):
  """configs/vqvae_prior.py over the first stage `first_stage` (a workdir or an export),
  its first-stage config that of vq_config(**overrides)."""
  return load_config('configs/vqvae_prior.py', {
      **{f'data.vqvae.{k}': v for k, v in {**RUN, **overrides}.items()},
      'data.vqvae_workdir': first_stage})


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A 4-step VQ-VAE run that kept a moving average of its weights."""
  workdir = str(tmp_path_factory.mktemp('run'))
  train_and_evaluate(vq_config(), workdir)
  return workdir


def _numbers(metrics):
  return {k: v for k, v in metrics.items() if isinstance(v, float)
          and not k.endswith('wall_time_s')}


def test_an_export_evaluates_to_its_checkpoints_metrics(run, tmp_path):
  """python -m vaes.export, then eval.py on the workdir and eval.py --export: the same
  numbers, exactly (the same weights, bit for bit, through the same compiled evaluation
  with the same keys: any difference would be a different computation, not rounding)."""
  out = str(tmp_path / 'run.msgpack')
  flags = [f'--config.{k}={v}' for k, v in RUN.items()]
  proc = subprocess.run([PYTHON, '-m', 'vaes.export', f'--config={CONFIG}',
                         f'--workdir={run}', f'--out={out}'] + flags, cwd=REPO,
                        env=subprocess_env(1), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Exported the latest checkpoint (step 4, weights: ema)' in proc.stdout, proc.stdout
  run_cli('eval.py', CONFIG, run, RUN)
  from_checkpoint = read_eval_metrics(run)
  results = str(tmp_path / 'results')    # made by eval.py
  run_cli('eval.py', CONFIG, results, RUN, extra_args=[f'--export={out}'])
  from_export = read_eval_metrics(results)
  assert _numbers(from_export) == _numbers(from_checkpoint)
  assert len(_numbers(from_export)) > 8 and from_export['step'] == 4
  assert from_export['checkpoint'] == 'export' and from_export['export'] == out
  assert from_export['export_of']['kind'] == 'latest' and \
      from_export['export_of']['step'] == 4 and from_export['export_of']['workdir'] == run
  assert from_export['weights'] == from_checkpoint['weights'] == 'ema'
  assert from_export['weights_ema_decay'] == 0.5
  assert os.path.exists(os.path.join(results, 'eval_reconstructions.png'))
  # No optimiser state, and the run's config and checkpoint in the file.
  variables, meta = export_file.load_export(out)
  assert sorted(variables) == ['params', 'vq_ema']
  assert meta['config']['model']['hidden'] == 16 and meta['checkpoint']['step'] == 4
  assert meta['checkpoint']['run']['id'] and meta['versions']['jax'] == jax.__version__


def test_an_export_holds_the_weights_eval_evaluates(run, tmp_path):
  """The moving average when the run kept one (as eval.py), and the model state."""
  config = vq_config()
  out = str(tmp_path / 'e.msgpack')
  export(config, run, out)
  trained = evaluate.load_trained(config, run)
  variables, _ = export_file.load_export(out)
  want = export_file.host_tree(trained.variables)
  assert jax.tree.structure(variables) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  # And through load_trained (sample.py's way in): the same arrays, kind 'export'.
  loaded = evaluate.load_trained(config, str(tmp_path / 'out'), out)
  assert loaded.kind == 'export' and loaded.step == 4 and loaded.info['weights'] == 'ema'
  for a, b in zip(jax.tree.leaves(loaded.variables), jax.tree.leaves(trained.variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_an_export_of_another_model_is_refused_naming_the_fields(run, tmp_path):
  config = vq_config()
  out = str(tmp_path / 'e.msgpack')
  export(config, run, out)
  other = vq_config(**{'model.hidden': 32})
  with pytest.raises(ConfigError, match=r'model\.hidden: export 16 vs config 32'):
    evaluate.evaluate(other, str(tmp_path / 'results'), out)
  # Evaluation-only fields and where things are may differ.
  fine = vq_config(**{'eval.batch_size': 64, 'data.eval_limit': 10,
                      'data.cache_dir': '/elsewhere'})
  metrics = evaluate.evaluate(fine, str(tmp_path / 'results'), out)
  assert metrics['eval_data'] == {'eval_split': 'test', 'eval_limit': 10}


def _damaged(path, tmp_path):
  """Damaged, truncated and foreign files made from the export at `path`."""
  with open(path, 'rb') as f:
    data = f.read()
  variables, meta = export_file.load_export(path)
  kernel = variables['params']['encoder']['Conv_0']['kernel']
  needle = kernel.tobytes()[:16]
  flipped = bytearray(data)
  at = data.index(needle) + 3
  flipped[at] ^= 0x40
  assert data.count(b'"hidden": 16') == 1
  files = {'truncated': data[:len(data) // 2], 'flipped': bytes(flipped),
           'meta_edited': data.replace(b'"hidden": 16', b'"hidden": 36'),
           'bare_params': serialization.msgpack_serialize(
               jax.tree.map(np.asarray, variables['params'])),
           'json': json.dumps(meta).encode(), 'empty': b''}
  out = {}
  for name, content in files.items():
    out[name] = str(tmp_path / f'{name}.msgpack')
    with open(out[name], 'wb') as f:
      f.write(content)
  return out


@pytest.mark.parametrize('kind,message', [
    ('truncated', 'is not a readable export'), ('flipped', 'is damaged (checksum mismatch'),
    ('meta_edited', 'is damaged (checksum mismatch in its meta item'),
    ('bare_params', 'without the export format mark'), ('json', 'is not a readable export'),
    ('empty', 'is not a readable export')])
def test_a_damaged_or_foreign_export_is_refused(run, tmp_path, kind, message):
  out = str(tmp_path / 'good.msgpack')
  export(vq_config(), run, out)
  path = _damaged(out, tmp_path)[kind]
  with pytest.raises(CheckpointError, match='python -m vaes.export') as e:
    export_file.load_export(path)
  assert message in str(e.value) and path in str(e.value)
  assert '\n' not in str(e.value)


def test_a_bad_export_on_the_command_line_is_one_line(tmp_path):
  """eval.py --export with a file that is not an export, then with none: one line each,
  exit status 2, nothing written."""
  bad = tmp_path / 'bad.msgpack'
  bad.write_bytes(b'\x93\x01\x02\x03')   # a msgpack list, not an export
  for path, message in ((str(bad), 'is not a vaes export'),
                        (str(tmp_path / 'none.msgpack'), 'no such file')):
    results = str(tmp_path / 'results')
    proc = run_cli('eval.py', CONFIG, results, TINY_VQ, check=False,
                   extra_args=[f'--export={path}'])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-2000:]
    lines = [l for l in proc.stderr.splitlines() if l.startswith('ERROR')]
    assert len(lines) == 1 and message in lines[0] and path in lines[0], proc.stderr[-2000:]
    assert not os.path.exists(results)


def test_a_prior_over_an_exported_first_stage(run, tmp_path):
  """config.data.vqvae_workdir may name an export of the first stage: the same variables
  (its moving average) and the same codes (the cache key is that of its checkpoint),
  cached beside the file."""
  out = str(tmp_path / 'exported' / 'vq.msgpack')
  os.makedirs(os.path.dirname(out))
  export(vq_config(), run, out)
  from_checkpoint = stages.load_first_stage(prior_config(run))
  from_export = stages.load_first_stage(prior_config(out))
  assert from_export.key == from_checkpoint.key and from_export.step == 4
  assert from_export.weights == from_checkpoint.weights == 'ema'
  for a, b in zip(jax.tree.leaves(from_export.variables),
                  jax.tree.leaves(from_checkpoint.variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  path = stages.prepare_codes(prior_config(out))
  assert path == os.path.join(str(tmp_path / 'exported'), f'codes_{from_export.key}.npz')
  np.testing.assert_array_equal(np.load(path)['eval_codes_0'],
                                np.load(stages.prepare_codes(prior_config(run)))['eval_codes_0'])
  # A first-stage export of another model is refused by name.
  with pytest.raises(ConfigError, match=r'config\.data\.vqvae_workdir=.*model\.num_codes'):
    stages.load_first_stage(prior_config(out, **{'model.num_codes': 32}))
