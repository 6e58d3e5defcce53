"""Preemption-safe training and clear failures: SIGKILL/SIGTERM, consecutive non-finite
updates, and a table of bad configs and data (damaged, incompatible and unwritable
checkpoints: tests/test_checkpoint.py)."""

import contextlib
import glob
import json
import os
import re
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from tests.helpers import (PYTHON, REPO, data_and_trainer, load_config, read_eval_metrics,
                           run_cli, subprocess_env)
from vaes import data as data_lib
from vaes import evaluate
from vaes import fs
from vaes.checkpoint import Checkpointer
from vaes.data import DataError
from vaes.data.core import ArrayTrainSource, DataInfo, validate_batch
from vaes.registry import ConfigError, get_family
from vaes.errors import TrainingError
from vaes.preflight import validate_config
from vaes.train import build_trainer, train_and_evaluate

TINY_VQ = {'batch_size': 32, 'model.hidden': 16, 'model.res_hidden': 8, 'model.num_codes': 16,
           'eval.batch_size': 128, 'eval_every_steps': 0}


def _state(config, workdir):
  _, trainer = data_and_trainer(config)
  return Checkpointer(workdir, async_save=False).restore_latest(trainer.abstract_state,
                                                                config)[:2]


def _assert_same_state(a, b):
  for x, y in zip(jax.tree.leaves(jax.device_get((a.params, a.model_state, a.opt_state))),
                  jax.tree.leaves(jax.device_get((b.params, b.model_state, b.opt_state)))):
    np.testing.assert_array_equal(x, y)


def _train_cmd(workdir, overrides):
  return [PYTHON, os.path.join(REPO, 'train.py'),
          f'--config={os.path.join(REPO, "configs/vqvae.py")}', f'--workdir={workdir}'] + [
              f'--config.{k}={v}' for k, v in overrides.items()]


def _wait_for_checkpoint(workdir, proc, timeout=300):
  t0 = time.time()
  while time.time() - t0 < timeout:
    if [d for d in glob.glob(os.path.join(workdir, 'checkpoints', '*')) if
        os.path.basename(d).isdigit()]:
      return
    if proc.poll() is not None:
      raise AssertionError(f'training ended early: {proc.communicate()[1][-3000:]}')
    time.sleep(0.05)
  raise AssertionError('no checkpoint appeared')


def test_sigkill_then_restart_matches_uninterrupted_run(tmp_path):
  overrides = dict(TINY_VQ, num_train_steps=40, checkpoint_every_steps=10, log_every_steps=20,
                   eval_every_steps=0)
  config = load_config('configs/vqvae.py', overrides)
  train_and_evaluate(config, str(tmp_path / 'full'))

  wd = str(tmp_path / 'killed')
  proc = subprocess.Popen(_train_cmd(wd, overrides), cwd=REPO, env=subprocess_env(1),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _wait_for_checkpoint(wd, proc)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  steps_before = Checkpointer(wd, async_save=False).all_steps()
  assert steps_before and steps_before[-1] < 40
  run_cli('train.py', 'configs/vqvae.py', wd, overrides)  # the same command again

  a, step_a = _state(config, str(tmp_path / 'full'))
  b, step_b = _state(config, wd)
  assert step_a == step_b == 40
  _assert_same_state(a, b)


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT], ids=['SIGTERM', 'SIGINT'])
def test_signal_saves_checkpoint_and_exits_nonzero(tmp_path, signum):
  wd = str(tmp_path / 'run')
  overrides = dict(TINY_VQ, num_train_steps=100_000, checkpoint_every_steps=5,
                   log_every_steps=1000)
  proc = subprocess.Popen(_train_cmd(wd, overrides), cwd=REPO, env=subprocess_env(1),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _wait_for_checkpoint(wd, proc)
  proc.send_signal(signum)
  out, err = proc.communicate(timeout=120)
  # Saved, but not finished: `train.py && eval.py` must not go on to evaluate.
  assert proc.returncode == 128 + signum, err[-3000:]
  assert 'KeyboardInterrupt' not in err and 'Traceback' not in err
  done = out.index(f'{signal.Signals(signum).name} received: saved a checkpoint at step')
  notice = 'Ctrl-C' if signum == signal.SIGINT else signal.Signals(signum).name
  # Said when the signal came, before the save that can take tens of seconds.
  assert 0 <= out.find(f'{notice}: saving a checkpoint at the end of this step') < done, out
  step = int(out.split('saved a checkpoint at step ')[1].split()[0])
  assert step in Checkpointer(wd, async_save=False).all_steps()


def test_nan_batch_is_skipped_and_training_continues(tmp_path):
  config = load_config('configs/vqvae.py', TINY_VQ)
  splits, trainer = data_and_trainer(config)
  clean = trainer.init_fn()
  poisoned = trainer.init_fn()
  losses_clean, losses_poisoned = [], []
  for step in range(8):
    batch = splits.train.batch(step)
    clean, m = trainer.train_step(clean, trainer.put(batch))
    losses_clean.append(float(m['loss']))
    if step == 3:
      batch = dict(batch, image=np.full_like(batch['image'], np.nan))
    poisoned, m = trainer.train_step(poisoned, trainer.put(batch))
    losses_poisoned.append(float(m['loss']))
  assert int(poisoned.skipped_updates) == 1 and int(clean.skipped_updates) == 0
  assert np.isnan(losses_poisoned[3])
  finite = [l for i, l in enumerate(losses_poisoned) if i != 3]
  assert all(np.isfinite(finite))
  # Same loss scale after the skipped update (one batch fewer seen).
  assert abs(losses_poisoned[-1] - losses_clean[-1]) < 0.5 * losses_clean[-1]
  assert losses_poisoned[-1] < losses_poisoned[0]


def test_consecutive_skips_stop_the_run_with_good_checkpoint(tmp_path, monkeypatch):
  wd = str(tmp_path / 'run')
  config = load_config('configs/vqvae.py', dict(TINY_VQ, num_train_steps=50,
                                                checkpoint_every_steps=4, log_every_steps=2,
                                                max_consecutive_skips=3))
  original = data_lib.get_datasets

  def poisoned(cfg, *a, **k):
    splits = original(cfg, *a, **k)
    batch = splits.train.batch

    def bad_after_4(step):
      b = batch(step)
      if step >= 4:
        b = dict(b, image=np.where(np.arange(b['image'].size).reshape(b['image'].shape) == 0,
                                   np.inf, b['image']).astype(np.float32))
      return b
    splits.train.batch = bad_after_4
    return splits
  monkeypatch.setattr(data_lib, 'get_datasets', poisoned)
  with pytest.raises(TrainingError, match='consecutive updates had a non-finite'):
    train_and_evaluate(config, wd)
  monkeypatch.setattr(data_lib, 'get_datasets', original)
  state, step = _state(config, wd)
  assert step == 4 and int(state.skipped_updates) == 0


def test_unwritable_workdir_is_a_clear_error(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  proc = run_cli('train.py', 'configs/vqvae.py', str(blocker / 'run'),
                 dict(TINY_VQ, num_train_steps=2), check=False)
  assert proc.returncode == 2
  assert 'Choose a writable --workdir' in proc.stderr


# ----------------------------------------------------------------------------
# A table of bad configs: each fails before compilation with a message naming
# the field, the value and what is allowed.
# ----------------------------------------------------------------------------

BAD_CONFIGS = [
    ('configs/vqvae.py', {'model.name': 'vqvea'}, ConfigError, "config.model.name='vqvea'"),
    ('configs/vqvae.py', {'data.name': 'mnits'}, DataError, "config.data.name='mnits'"),
    ('configs/vqvae.py', {'batch_size': 0}, ConfigError, 'config.batch_size=0'),
    ('configs/vqvae.py', {'batch_size': -8}, ConfigError, 'config.batch_size=-8'),
    ('configs/vqvae.py', {'num_train_steps': -1}, ConfigError, 'config.num_train_steps=-1'),
    ('configs/vqvae.py', {'log_every_steps': 0}, ConfigError, 'config.log_every_steps=0'),
    ('configs/vqvae.py', {'checkpoint_every_steps': 0}, ConfigError,
     'config.checkpoint_every_steps=0'),
    ('configs/vqvae.py', {'learning_rate': 0.0}, ConfigError, 'config.learning_rate=0.0'),
    ('configs/vqvae.py', {'learning_rate': float('inf')}, ConfigError,
     'config.learning_rate=inf: must be a finite number'),
    ('configs/vqvae.py', {'model.beta': float('nan')}, ConfigError,
     'config.model.beta=nan: must be a finite number'),
    ('configs/vqvae.py', {'max_checkpoints_to_keep': 0}, ConfigError,
     'config.max_checkpoints_to_keep=0: must be a positive integer'),
    ('configs/vqvae.py', {'num_train_steps': 0}, ConfigError,
     'config.num_train_steps=0: must be a positive integer'),
    ('configs/vqvae.py', {'weight_decay': 0.01}, ConfigError,
     "config.weight_decay=0.01 has no effect with config.optimizer='adam': use "
     '--config.optimizer=adamw'),
    ('configs/vqvae.py', {'adam_b1': 1.5}, ConfigError, 'config.adam_b1=1.5: must be in [0, 1)'),
    ('configs/vqvae.py', {'adam_b2': -0.1}, ConfigError,
     'config.adam_b2=-0.1: must be in [0, 1)'),
    ('configs/vqvae.py', {'grad_clip_norm': -1.0}, ConfigError,
     'config.grad_clip_norm=-1.0: must be >= 0'),
    ('configs/vqvae.py', {'lr_warmup_steps': -10}, ConfigError,
     'config.lr_warmup_steps=-10: must be a non-negative integer'),
    ('configs/vqvae.py', {'seed': -1}, ConfigError, 'config.seed=-1: must be a non-negative'),
    ('configs/vqvae.py', {'skip_grad_norm_above': -2.0}, ConfigError,
     'config.skip_grad_norm_above=-2.0: must be >= 0'),
    ('configs/vqvae.py', {'optimizer': 'sgd'}, ConfigError, "config.optimizer='sgd'"),
    ('configs/vqvae.py', {'lr_schedule': 'linear'}, ConfigError, "config.lr_schedule='linear'"),
    ('configs/vqvae.py', {'compute_dtype': 'float16'}, ConfigError,
     "config.compute_dtype='float16'"),
    ('configs/vqvae.py', {'max_consecutive_skips': 0}, ConfigError,
     'config.max_consecutive_skips=0'),
    ('configs/vqvae.py', {'steps_per_dispatch': 0}, ConfigError, 'config.steps_per_dispatch=0'),
    ('configs/vqvae2.py', {'model.upsample': 'deconv'}, ConfigError,
     "config.model.upsample='deconv'"),
    ('configs/vqvae.py', {'matmul_precision': 'tf32'}, ConfigError,
     "config.matmul_precision='tf32'"),
    ('configs/vqvae.py', {'eval.matmul_precision': 'fp32'}, ConfigError,
     "config.eval.matmul_precision='fp32'"),
    ('configs/vqvae.py', {'eval.batch_size': 0}, ConfigError, 'config.eval.batch_size=0'),
    ('configs/vqvae.py', {'model.num_codes': 0}, ConfigError, 'config.model.num_codes=0'),
    ('configs/vqvae.py', {'model.code_dim': -4}, ConfigError, 'config.model.code_dim=-4'),
    ('configs/vqvae.py', {'model.likelihood': 'poisson'}, ConfigError,
     "config.model.likelihood='poisson'"),
    ('configs/vqvae.py', {'model.ema_decay': 1.5}, ConfigError, 'config.model.ema_decay=1.5'),
    ('configs/vqvae.py', {'model.num_downsamples': 4}, ConfigError,
     'config.model.num_downsamples=4'),
    ('configs/vqvae.py', {'data.image_size': 6}, DataError, 'config.data.image_size=6'),
    ('configs/vqvae.py', {'data.resize': 'bicubic'}, DataError, "config.data.resize='bicubic'"),
    ('configs/vqvae.py', {'data.binarize': 'maybe'}, DataError, "config.data.binarize='maybe'"),
    ('configs/vqvae.py', {'batch_size': 4096}, DataError, 'config.batch_size=4096 exceeds'),
    ('configs/vqvae.py', {'data.name': 'mnist', 'data.image_size': 0}, DataError,
     'config.data.image_size=0'),
    ('configs/vqvae.py', {'data.name': 'cifar10', 'data.image_size': 16}, DataError,
     "config.data.image_size=16 is smaller than the 32x32 cifar10 images"),
    ('configs/vqvae.py', {'weights_ema_decay': 1.0}, ConfigError,
     'config.weights_ema_decay=1.0: must be in [0, 1)'),
    ('configs/vqvae.py', {'lr_warmup_fraction': 1.5}, ConfigError,
     'config.lr_warmup_fraction=1.5: must lie in [0, 1]'),
    ('configs/vqvae.py', {'eval.select_mode': 'lowest'}, ConfigError,
     "config.eval.select_mode='lowest': choose 'min' or 'max'"),
    ('configs/vqvae.py', {'eval.select_num_importance_samples': 10}, ConfigError,
     'config.eval.select_num_importance_samples=10: must be 0'),
    ('configs/vrnn_jsb.py', {'eval.select_num_importance_samples': 30}, ConfigError,
     'config.eval.select_num_importance_samples=30: must be 0'),
    ('configs/vqvae.py', {'eval.checkpoint': 'first'}, ConfigError,
     "config.eval.checkpoint='first'"),
    ('configs/vqvae.py', {'profile_steps': (100, 5), 'num_train_steps': 50}, ConfigError,
     'config.profile_steps=(100, 5) starts at step 100, but the run ends at '
     'config.num_train_steps=50: nothing would be profiled'),
    ('configs/vqvae.py', {'eval.select_metric': 'loss', 'eval_every_steps': 0}, ConfigError,
     'config.eval_every_steps=0 evaluates none: set --config.eval_every_steps=N'),
    ('configs/lvae.py', {'model.kl_warmup_fraction': 1.5}, ConfigError,
     'config.model.kl_warmup_fraction=1.5: must lie in [0, 1]'),
    ('configs/lvae.py', {'model.kl_warmup_fraction': 0.2, 'model.kl_warmup_epochs': 3.0},
     ConfigError, 'both set the KL warm-up; set one of them to 0'),
    ('configs/vrae_series.py', {'model.kl_warmup_fraction': -0.1}, ConfigError,
     'config.model.kl_warmup_fraction=-0.1: must lie in [0, 1]'),
    ('configs/vrae.py', {'model.posterior': 'backward'}, ConfigError,
     "config.model.posterior='backward' is not one of"),
    ('configs/vrae.py', {'model.prior': 'global', 'model.posterior': 'smooth'}, ConfigError,
     "posterior='smooth' needs per-step latents"),
    ('configs/vrae.py', {'model.dropout': 1.0}, ConfigError,
     'config.model.dropout=1.0: must lie in [0, 1)'),
    ('configs/vrae.py', {'model.prior': 'global', 'model.dropout': 0.2}, ConfigError,
     'is implemented for the per-step priors'),
    ('configs/vqvae.py', {'data.name': 'cifar10', 'data.image_size': 32,
                          'data.tfds_data_dir': '/nonexistent/tfds'},
     DataError, 'tfds build cifar10 --data_dir=/nonexistent/tfds'),
]


def _prepare(config, num_devices=None):
  """Everything train.py does before compiling: family, engine checks, data, model."""
  family = get_family(config.model.name)
  validate_config(config, family, num_devices)
  splits = data_lib.get_datasets(config)
  family.build_model(config, splits.info)
  return splits


@pytest.mark.parametrize('path,overrides,error,message', BAD_CONFIGS,
                         ids=[';'.join(f'{k}={v}' for k, v in o.items()) for _, o, _, _ in
                              BAD_CONFIGS])
def test_bad_config_fails_with_clear_message(path, overrides, error, message):
  config = load_config(path, overrides)
  with pytest.raises(error) as info:
    _prepare(config)
  assert message in str(info.value)


def test_batch_not_divisible_by_device_count_names_the_fix():
  config = load_config('configs/vqvae.py', {'batch_size': 30})
  with pytest.raises(ConfigError, match=r'config.batch_size=30 is not divisible by the 8 '
                     r'devices; use a multiple of 8 \(e.g. --config.batch_size=24\)'):
    validate_config(config, None, num_devices=8)


# ----------------------------------------------------------------------------
# Bad data: fails on the first batch with a clear message.
# ----------------------------------------------------------------------------

SPEC = {'image': ((8, 8, 1), np.float32)}
GOOD = np.full((4, 8, 8, 1), 0.5, np.float32)
IMAGES = DataInfo(kind='image')   # num_levels 256: no binary check
BAD_DATA = [
    ({'image': GOOD[:, :4]}, IMAGES, "per-example shape (4, 8, 1), but the model was built "
                                     "for (8, 8, 1)"),
    ({'image': (GOOD * 255).astype(np.int64)}, IMAGES, 'has dtype int64, expected float32'),
    ({'image': GOOD * 255}, IMAGES, 'image values span [127.5, 127.5], expected [0, 1]'),
    ({'image': np.where(np.eye(8)[None, :, :, None] > 0, np.nan, GOOD)}, IMAGES,
     'holds 32 NaN/inf values'),
    ({'image': GOOD}, DataInfo(kind='image', num_levels=2),
     'declared binary but images hold values'),
    ({'pixels': GOOD}, IMAGES, "lacks ['image']"),
    ({'image': GOOD[:0]}, IMAGES, "'image' is empty"),
]


@pytest.mark.parametrize('batch,info,message', BAD_DATA)
def test_bad_data_fails_on_first_batch(batch, info, message):
  with pytest.raises(DataError) as e:
    validate_batch(batch, SPEC, info)
  assert message in str(e.value)


def test_bad_mask_and_empty_split():
  spec = {'x': ((5, 3), np.float32), 'mask': ((5,), np.float32)}
  with pytest.raises(DataError, match="'mask' must hold only 0 and 1"):
    validate_batch({'x': np.zeros((2, 5, 3), np.float32),
                    'mask': np.full((2, 5), 0.5, np.float32)}, spec,
                   DataInfo(kind='sequence'))
  with pytest.raises(DataError, match='The training split is empty'):
    ArrayTrainSource({'image': np.zeros((0, 8, 8, 1), np.float32)}, 4, 0)


def test_bad_first_batch_stops_training_before_any_update(tmp_path, monkeypatch):
  original = data_lib.get_datasets

  def scaled(cfg, *a, **k):
    splits = original(cfg, *a, **k)
    batch = splits.train.batch
    splits.train.batch = lambda step: {'image': batch(step)['image'] * 255.0}
    return splits
  monkeypatch.setattr(data_lib, 'get_datasets', scaled)
  with pytest.raises(DataError, match=r'expected \[0, 1\] \(divide 8-bit images by 255\)'):
    train_and_evaluate(load_config('configs/vqvae.py', dict(TINY_VQ, num_train_steps=2)),
                       str(tmp_path / 'run'))
  assert not glob.glob(os.path.join(str(tmp_path / 'run'), 'checkpoints', '[0-9]*'))


def test_gradient_norm_threshold_skips_large_updates():
  config = load_config('configs/vqvae.py', dict(TINY_VQ, skip_grad_norm_above=1e-6))
  splits, trainer = data_and_trainer(config)
  state = trainer.init_fn()
  before = jax.device_get(state.params)
  state, metrics = trainer.train_step(state, trainer.put(splits.train.batch(0)))
  assert float(metrics['grad_norm']) > 1e-6 and float(metrics['skipped_update']) == 1.0
  for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(state.params))):
    np.testing.assert_array_equal(x, y)


# ----------------------------------------------------------------------------
# Nothing lost, nothing silent: resumes with other fields, damaged bytes,
# non-finite states, finished runs, duplicate metric rows.
# ----------------------------------------------------------------------------

SHORT = dict(TINY_VQ, num_train_steps=4, checkpoint_every_steps=2, log_every_steps=1)


def test_eval_weights_follow_the_checkpoint_not_the_command(tmp_path, capsys):
  """eval.py without the training's --config.weights_ema_decay still evaluates the moving
  average (and with one, a run that kept none is evaluated with its parameters);
  eval_metrics.json says which weights, and vaes.collect refuses a record that
  contradicts its config.json."""
  from vaes import collect
  ema = str(tmp_path / 'ema')
  train_and_evaluate(load_config('configs/vqvae.py', dict(SHORT, weights_ema_decay=0.9)), ema)
  with_flag = evaluate.evaluate(
      load_config('configs/vqvae.py', dict(SHORT, weights_ema_decay=0.9)), ema)
  capsys.readouterr()
  without = evaluate.evaluate(load_config('configs/vqvae.py', SHORT), ema)
  out = capsys.readouterr().out
  assert 'trained with config.weights_ema_decay=0.9: evaluating the moving average' in out
  assert without['loss'] == with_flag['loss']
  saved = read_eval_metrics(ema)
  assert saved['weights'] == 'ema' and saved['weights_ema_decay'] == 0.9
  assert collect.load_run(ema)[1]['weights'] == 'ema'

  raw = str(tmp_path / 'raw')
  train_and_evaluate(load_config('configs/vqvae.py', SHORT), raw)
  evaluate.evaluate(load_config('configs/vqvae.py', dict(SHORT, weights_ema_decay=0.9)), raw)
  saved = read_eval_metrics(raw)
  assert saved['weights'] == 'params' and 'weights_ema_decay' not in saved
  # config.json of a weights_ema_decay=0.9 run beside numbers of the raw weights: refused.
  with open(os.path.join(ema, 'eval_metrics.json'), 'w', encoding='utf-8') as f:
    json.dump(saved, f)
  with pytest.raises(collect.CollectError, match=r'holds the numbers of the raw weights, but '
                     r'.*config.json says weights_ema_decay=0.9: they are not of one run'):
    collect.load_run(ema)


def test_second_stage_uses_the_first_stage_weights_its_checkpoint_kept(tmp_path):
  """A prior whose config.data.vqvae lacks the first stage's weights_ema_decay still encodes with
  the first stage's moving average, and says so in the codes' record."""
  from vaes import stages
  vq_dir = str(tmp_path / 'vq')
  stage1 = dict(TINY_VQ, num_train_steps=2, log_every_steps=1, checkpoint_every_steps=2)
  prior = lambda **first: load_config('configs/vqvae_prior.py', dict(
      {f'data.vqvae.{k}': v for k, v in dict(stage1, **first).items()},
      **{'data.vqvae_workdir': vq_dir}))
  trained = prior(weights_ema_decay=0.5).data.vqvae
  train_and_evaluate(trained, vq_dir)
  config = prior()
  assert config.data.vqvae.weights_ema_decay == 0.0
  first = stages.load_first_stage(config)
  assert first.weights == 'ema'
  state, _ = _state(trained, vq_dir)
  for u, e in zip(jax.tree.leaves(jax.device_get(first.variables['params'])),
                  jax.tree.leaves(jax.device_get(state.ema_params))):
    np.testing.assert_array_equal(u, e)


def test_damaged_checkpoint_on_the_command_line_is_one_warning_not_tracebacks(tmp_path):
  """eval.py falling back from a step whose every data file is damaged, for a model of
  the default size: the reads still in flight when the first one fails find their event
  loop closed, which tensorstore reports as dozens of unraisable 'Event loop is closed'
  tracebacks (85 measured); only the WARNING line about the step is left."""
  wd = str(tmp_path / 'run')
  overrides = {'num_train_steps': 2, 'checkpoint_every_steps': 1, 'log_every_steps': 1,
               'eval_every_steps': 0}
  train_and_evaluate(load_config('configs/vqvae.py', overrides), wd)
  files = glob.glob(os.path.join(wd, 'checkpoints', '2', 'state', '**', 'd', '*'),
                    recursive=True)
  assert files
  for path in files:
    with open(path, 'r+b') as f:
      f.write(b'garbage')
  proc = run_cli('eval.py', 'configs/vqvae.py', wd, overrides, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'checkpoints/2 is incomplete or corrupted' in proc.stdout
  assert 'Traceback' not in proc.stderr and 'Event loop is closed' not in proc.stderr, \
      proc.stderr[-3000:]
  assert read_eval_metrics(wd)['step'] == 1


def test_library_noise_filters_drop_only_that_noise(monkeypatch):
  """What cli.run silences (not in --verbose): tensorstore's unraisable 'Event loop is
  closed', a full disk met again at exit, Orbax's error records and asyncio's log; other
  unraisable errors and other records stay."""
  import errno
  import logging
  import sys
  from vaes import cli
  seen = []   # what reaches the hook that was there before
  monkeypatch.setattr(sys, 'unraisablehook', lambda u: seen.append(str(u.exc_value)))
  loggers = [logging.getLogger(n) for n in ('absl', 'asyncio', 'concurrent.futures')]
  before = [list(l.filters) for l in loggers]
  try:
    cli._quiet_library_errors()   # pylint: disable=protected-access

    class Raises:
      def __init__(self, error):
        self.error = error

      def __del__(self):
        raise self.error
    Raises(RuntimeError('Event loop is closed'))
    Raises(OSError(errno.ENOSPC, 'No space left on device'))   # a writer's flush at exit
    Raises(RuntimeError('another error'))
    Raises(OSError(errno.EACCES, 'Permission denied'))
    assert seen == ['another error', '[Errno 13] Permission denied']
    record = lambda name, path, level: logging.LogRecord(name, level, path, 1, 'm', (), None)
    absl, asyncio_log, _ = loggers
    assert not absl.filter(record('absl', '/site-packages/orbax/checkpoint/x.py',
                                  logging.ERROR))
    assert absl.filter(record('absl', '/site-packages/orbax/checkpoint/x.py', logging.WARNING))
    assert absl.filter(record('absl', '/work/vaes/checkpoint.py', logging.ERROR))
    assert not asyncio_log.filter(record('asyncio', '/asyncio/base_events.py', logging.ERROR))
  finally:
    for logger, filters in zip(loggers, before):
      logger.filters[:] = filters


def test_update_into_non_finite_parameters_is_skipped():
  # Finite loss and gradients, but a step size that overflows float32.
  config = load_config('configs/vqvae.py', dict(TINY_VQ, learning_rate=3e38))
  splits, trainer = data_and_trainer(config)
  state = trainer.init_fn()
  for step in range(3):
    state, metrics = trainer.train_step(state, trainer.put(splits.train.batch(step)))
  params = jax.device_get(state.params)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  assert int(state.skipped_updates) >= 1


def test_finished_run_with_other_fields_is_refused_by_name(tmp_path, capsys):
  wd = str(tmp_path / 'run')
  train_and_evaluate(load_config('configs/vqvae.py', SHORT), wd)
  with pytest.raises(ConfigError, match=r'already holds a finished run of 4 steps with other '
                     r'settings \(learning_rate: checkpoint 0.001 vs config 0.0003\)'):
    train_and_evaluate(load_config('configs/vqvae.py', dict(SHORT, learning_rate=3e-4)), wd)
  capsys.readouterr()
  assert train_and_evaluate(load_config('configs/vqvae.py', SHORT), wd) == {}
  assert 'already holds a finished run of 4 steps' in capsys.readouterr().out


def test_resume_drops_metric_rows_past_the_checkpoint(tmp_path):
  import shutil
  wd = str(tmp_path / 'run')
  config = load_config('configs/vqvae.py', SHORT)
  train_and_evaluate(config, wd)
  shutil.rmtree(os.path.join(wd, 'checkpoints', '4'))   # as if killed after logging step 4
  train_and_evaluate(config, wd)
  with open(os.path.join(wd, 'metrics.jsonl'), encoding='utf-8') as f:
    steps = [json.loads(line)['step'] for line in f]
  assert steps == [1, 2, 3, 4]


def test_memory_estimate_refuses_what_cannot_fit():
  config = load_config('configs/vqvae.py', {'model.num_codes': 1_000_000_000})
  splits = data_lib.get_datasets(config)
  with pytest.raises(ConfigError, match=r'needs at least .* GiB on one device.*Reduce .*'
                     r'config\.model\.num_codes=1000000000'):
    build_trainer(config, splits.info, splits.train.element_spec)


def _unmount(path):
  """umount, lazily when the test's own Orbax threads still keep the mount busy."""
  if subprocess.run(['umount', str(path)], capture_output=True).returncode != 0:
    subprocess.run(['umount', '-l', str(path)], check=False)


@contextlib.contextmanager
def _mounted(*mounts):
  """Runs each `mount` command line (the last argument: where), unmounts them all at the
  end in reverse order."""
  done = []
  try:
    for args in mounts:
      if subprocess.run(['mount', *args], capture_output=True).returncode != 0:
        pytest.fail('this test needs root to mount a small tmpfs or a read-only view (CI '
                    'runs as root)')
      done.append(args[-1])
    yield
  finally:
    for path in reversed(done):
      _unmount(path)


# ----------------------------------------------------------------------------
# One line, not a traceback: the command line.
# ----------------------------------------------------------------------------

BAD_CLI = [
    (['--config.batchsize=8'], None, {},
     "--config.batchsize: configs/vqvae.py has no field 'batchsize'; did you mean "
     '--config.batch_size?'),
    ([], 'configs/no_such_config.py', {}, 'configs/no_such_config.py: no such file'),
    ([], 'SYNTAX', {}, 'syntax error at line 2'),
    ([], 'LOCKED', {}, 'a field that does not exist: Key "nonexistent" does not exist'),
    ([], None, {'SLURM_JOB_ID': '1234'}, 'pass --jax_distributed=off'),
]


@pytest.mark.parametrize('args,config,env,message', BAD_CLI,
                         ids=['typo', 'missing', 'syntax', 'locked', 'slurm'])
def test_bad_command_line_is_one_line(tmp_path, args, config, env, message):
  if config == 'SYNTAX':
    config = str(tmp_path / 'bad.py')
    with open(config, 'w') as f:
      f.write('def get_config():\n  return dict(a=\n')
  elif config == 'LOCKED':
    config = str(tmp_path / 'locked.py')
    with open(config, 'w') as f:
      f.write('from configs import vqvae\n\ndef get_config():\n  c = vqvae.get_config()\n'
              '  c.lock()\n  c.model.nonexistent = 1\n  return c\n')
  cmd = [PYTHON, os.path.join(REPO, 'train.py'), f'--config={config or "configs/vqvae.py"}',
         f'--workdir={tmp_path / "run"}'] + args
  proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(1, env), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith('ERROR')]
  assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
  # --verbose brings the traceback back.
  proc = subprocess.run(cmd + ['--verbose'], cwd=REPO, env=subprocess_env(1, env),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and 'Traceback' in proc.stderr


def test_eval_of_a_missing_workdir_creates_nothing(tmp_path):
  wd = tmp_path / 'never_trained'
  proc = run_cli('eval.py', 'configs/vqvae.py', str(wd), check=False)
  assert proc.returncode == 2
  assert 'No checkpoint in' in proc.stderr and 'train first' in proc.stderr
  assert not wd.exists()


# A workdir URL whose file system is missing or unknown: one line naming the package (or
# that the scheme is unknown), before anything is built, from every command.
BAD_URLS = [
    ('train.py', 'memory://vaes-run', 'memory:// keeps files inside one Python process'),
    ('train.py', 'gs://bucket/run', 'gs:// URLs need the gcsfs package, which is not installed: '
     'pip install gcsfs'),
    ('eval.py', 's3://bucket/run', 's3:// URLs need the s3fs package, which is not installed: '
     'pip install s3fs'),
    ('eval.py', 'foo://x', "--workdir=foo://x: unknown URL scheme 'foo://'"),
    ('vaes.collect', 'gs://bucket/run', 'gs://bucket/run: gs:// URLs need the gcsfs package'),
    ('vaes.sweep', 'foo://x/root', "--workdir_root=foo://x/root: unknown URL scheme 'foo://'"),
]


@pytest.mark.parametrize('command,url,message', BAD_URLS,
                         ids=[f'{c}:{u.split(":")[0]}' for c, u, _ in BAD_URLS])
def test_workdir_url_without_its_file_system_is_one_line(tmp_path, command, url, message):
  import importlib.util
  package = fs.WORKDIR_URLS.get(url.split('://')[0])
  if package and importlib.util.find_spec(package):   # installed here: the URL is accepted
    assert fs.check_url(url) is None
    return
  config = os.path.join(REPO, 'configs/vqvae.py')
  if command == 'vaes.collect':
    cmd, prefix, code = [PYTHON, '-m', command, url], 'vaes.collect: ', 1
  elif command == 'vaes.sweep':
    cmd = [PYTHON, '-m', command, f'--config={config}', f'--workdir_root={url}',
           f'--sweep={os.path.join(REPO, "sweeps/vqvae_codebook_size.py")}']
    prefix, code = 'ERROR: ', 2
  else:
    cmd, prefix, code = [PYTHON, os.path.join(REPO, command), f'--config={config}',
                         f'--workdir={url}'], 'ERROR: ', 2
  t0 = time.time()
  proc = subprocess.run(cmd, cwd=str(tmp_path), env=subprocess_env(1), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == code, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(prefix) and message in lines[0], lines
  assert time.time() - t0 < 120 and os.listdir(tmp_path) == []   # nothing built or made
  if command == 'train.py':   # the Python API refuses it as well, before anything
    with pytest.raises(fs.PathError, match=re.escape(message)):
      train_and_evaluate(load_config('configs/vqvae.py', TINY_VQ), url)


@contextlib.contextmanager
def _read_only_view(src, dst):
  """`dst`: a read-only bind mount of the folder `src` (root's writes fail there too)."""
  dst.mkdir()
  with _mounted(['--bind', str(src), str(dst)]):
    if subprocess.run(['mount', '-o', 'remount,bind,ro', str(dst)],
                      capture_output=True).returncode != 0:
      pytest.fail('this test needs root to remount a bind mount read-only')
    yield str(dst)


def test_eval_of_a_read_only_run_is_one_line_and_keeps_the_metrics(tmp_path, capsys,
                                                                   monkeypatch):
  """eval.py on a finished run it cannot write to: refused up front with one line naming
  the path (nothing built); a write that fails anyway (the check bypassed, as for a full
  disk) prints the metrics, then one line naming the path."""
  config = load_config('configs/vqvae.py', SHORT)
  train_and_evaluate(config, str(tmp_path / 'run'))
  with _read_only_view(tmp_path / 'run', tmp_path / 'ro') as wd:
    proc = run_cli('eval.py', 'configs/vqvae.py', wd, SHORT, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    lines = [l for l in proc.stderr.splitlines() if l.startswith('ERROR')]
    assert len(lines) == 1 and f'--workdir={wd}: {wd} is on a read-only file system, and ' \
        'eval.py writes eval_metrics.json, eval_*.png and TensorBoard images there' in lines[0]
    assert 'Evaluation of the' not in proc.stdout   # refused before evaluating

    monkeypatch.setattr(evaluate, 'check_writable', lambda workdir: None)
    capsys.readouterr()
    with pytest.raises(fs.PathError) as e:
      evaluate.evaluate(config, wd)
    out = capsys.readouterr().out
    assert f'--workdir={wd}: writing the results failed' in str(e.value)
    assert 'Read-only file system' in str(e.value) and 'metrics are printed above' in str(e.value)
    assert 'split -> (eval_metrics.json not written)' in out and '  loss: ' in out
    assert '\n' not in str(e.value)
  assert not os.path.exists(tmp_path / 'run' / 'eval_metrics.json')


# Moments of train.py's start-up (before its training loop) to send Ctrl-C at: after
# 0.5 s and 2 s, JAX being imported, the data and model being built (the workdir's lock
# is held), the checkpoints being looked for. Before the fix: a KeyboardInterrupt
# traceback (exit -2 or 1), an abort (-6), or a Ctrl-C swallowed (exit 0).
STARTUP_MOMENTS = {
    'after_0.5s': lambda proc, wd, elapsed: elapsed >= 0.5,
    'after_2s': lambda proc, wd, elapsed: elapsed >= 2.0,
    'jax_import': lambda proc, wd, _: 'jaxlib' in open(f'/proc/{proc.pid}/maps').read(),
    'data_and_model': lambda proc, wd, _: os.path.exists(os.path.join(wd, 'train.lock')),
    'checkpoints': lambda proc, wd, _: os.path.isdir(os.path.join(wd, 'checkpoints')),
}


@pytest.mark.parametrize('moment', sorted(STARTUP_MOMENTS))
def test_ctrl_c_during_start_up_exits_130_with_one_line(tmp_path, moment):
  wd = str(tmp_path / 'run')
  proc = subprocess.Popen(_train_cmd(wd, dict(TINY_VQ, num_train_steps=100_000)), cwd=REPO,
                          env=subprocess_env(1), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  t0 = time.time()
  try:
    while not STARTUP_MOMENTS[moment](proc, wd, time.time() - t0):
      assert proc.poll() is None, proc.communicate()[1][-3000:]
      assert time.time() - t0 < 300, f'train.py never reached {moment}'
      time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.communicate()
  assert proc.returncode == 130, err[-3000:]
  assert 'Traceback' not in err and 'KeyboardInterrupt' not in err, err[-3000:]
  if 'Interrupted before training started: nothing was saved.' in err:
    assert not glob.glob(os.path.join(wd, 'checkpoints', '[0-9]*'))
  else:   # the loop had just taken SIGINT over: it saved its first step, as when training
    assert 'SIGINT received: saved a checkpoint at step' in out, err[-3000:]


# ----------------------------------------------------------------------------
# Bad sequence data and caches: one clear DataError.
# ----------------------------------------------------------------------------


def _pickle(tmp_path, train):
  import pickle
  path = tmp_path / 'music.pkl'
  with open(path, 'wb') as f:
    pickle.dump({'train': train, 'valid': [[(60,)]], 'test': [[(60,)]]}, f)
  return str(path)


@pytest.mark.parametrize('train,message', [
    ([[(60, 'C4')]], "frame 0 holds 'C4', not a MIDI pitch number"),
    ([[(60,), (float('nan'),)]], 'frame 1 holds nan, not a MIDI pitch number'),
    ([[60, 62]], 'frame 0 is 60, not a list of MIDI pitches'),
])
def test_bad_pitches_in_a_pickle(tmp_path, train, message):
  from vaes.data.music import load_polyphonic_pickle
  with pytest.raises(DataError) as e:
    load_polyphonic_pickle(_pickle(tmp_path, train))
  assert message in str(e.value)


def test_pickle_path_that_is_a_directory(tmp_path):
  from vaes.data.music import load_polyphonic_pickle
  with pytest.raises(DataError, match='is a directory, not the pickle file'):
    load_polyphonic_pickle(str(tmp_path))


def test_unwritable_cache_dir():
  config = load_config('configs/vrae.py', {'data.cache_dir': '/proc/vaes_cache'})
  with pytest.raises(DataError, match=r"config.data.cache_dir='/proc/vaes_cache' is not a "
                     'writable folder'):
    data_lib.get_datasets(config)


def test_orbax_read_only_warnings_are_dropped_and_other_warnings_kept():
  """eval.py opens the workdir read-only on purpose; Orbax's three warnings saying so
  are dropped (not in --verbose), its other warnings stay."""
  import logging
  from vaes import cli
  noise = cli._LibraryNoise()   # pylint: disable=protected-access
  orbax = '/site-packages/orbax/checkpoint/checkpoint_manager.py'
  record = lambda path, level, msg: logging.LogRecord('absl', level, path, 1, msg, (), None)
  for msg in ('CheckpointManagerOptions.read_only=True, setting save_interval_steps=0.',
              'CheckpointManagerOptions.read_only=True, setting max_to_keep=None.',
              'Given directory is read only=/tmp/w/checkpoints'):
    assert not noise.filter(record(orbax, logging.WARNING, msg)), msg
  assert noise.filter(record(orbax, logging.WARNING, 'Waiting for a save to finish'))
  assert noise.filter(record(orbax, logging.INFO, 'read only=/tmp/w'))
  assert noise.filter(record('/work/vaes/evaluate.py', logging.WARNING, 'read only'))
