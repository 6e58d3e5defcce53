"""Checkpoints: Orbax I/O (vaes.checkpoint), integrity (vaes.checkpoint_integrity:
checksums, non-finite parameters, tree structures, damaged steps set aside), config
compatibility (vaes.run_config) and the two restore paths (vaes.checkpoint_restore:
the whole train state for a resume, the variables for evaluation)."""

import dataclasses
import glob
import os
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import optax
import pytest

from tests.helpers import (PYTHON, REPO, data_and_trainer, load_config, run_cli,
                           subprocess_env)
from tests.test_failures import (SHORT, TINY_VQ, _assert_same_state, _mounted, _state,
                                 _train_cmd, _wait_for_checkpoint)
from vaes import checkpoint_integrity as integrity
from vaes import data as data_lib
from vaes import evaluate
from vaes import run_config
from vaes.checkpoint import Checkpointer, CheckpointError
from vaes.errors import ConfigError
from vaes.train import train_and_evaluate


# ----------------------------------------------------------------------------
# Config compatibility (vaes.run_config): plain functions of plain dicts.
# ----------------------------------------------------------------------------


def test_flatten_and_config_diff_name_the_fields_that_differ():
  assert run_config.flatten({'a': {'b': 1, 'c': {}}, 'd': [1, 2]}) == \
      {'a.b': 1, 'a.c': {}, 'd': [1, 2]}
  then = {'model': {'name': 'vqvae', 'num_codes': 16, 'upsample': 'transpose'}, 'seed': 0}
  now = {'model': {'name': 'vqvae', 'num_codes': 32, 'upsample': 'phases', 'new': 1},
         'seed': 0}
  # model.upsample only chooses how the same function is computed; a field added since
  # (model.new, absent in `then`) keeps its default.
  assert run_config.config_diff(then, now) == [('model.num_codes', 16, 32)]
  assert run_config.config_diff(then, now, ignore=()) == [('model.num_codes', 16, 32),
                                                         ('model.upsample', 'transpose',
                                                          'phases')]
  assert run_config.describe_diff([('a', 1, 2)]) == 'a: checkpoint 1 vs config 2'
  many = [(f'f{i}', i, i + 1) for i in range(5)]
  assert run_config.describe_diff(many, limit=2) == \
      'f0: checkpoint 0 vs config 1, f1: checkpoint 1 vs config 2 (and 3 more)'


def test_implementation_fields_are_the_engine_s_and_the_family_s():
  assert run_config.implementation_fields({'model': {'name': 'vqvae'}}) == \
      {'cpu_convolutions', 'model.upsample'}
  assert run_config.implementation_fields({'model': {'name': 'no such family'}}) == \
      {'cpu_convolutions'}
  assert run_config.implementation_fields({}) == {'cpu_convolutions'}


def test_cadence_evaluation_and_length_fields_keep_a_run_the_same_run():
  assert run_config.is_eval_field('eval.batch_size')
  assert run_config.is_eval_field('data.eval_split')
  assert not run_config.is_eval_field('data.name') and not run_config.is_eval_field('evals')
  then = {'model': {'name': 'vqvae'}, 'data': {'eval_split': 'test', 'name': 'a'},
          'eval': {'batch_size': 8}, 'log_every_steps': 10, 'num_train_steps': 4,
          'learning_rate': 1e-3}
  now = {'model': {'name': 'vqvae'}, 'data': {'eval_split': 'valid', 'name': 'a'},
         'eval': {'batch_size': 16}, 'log_every_steps': 5, 'num_train_steps': 8,
         'learning_rate': 1e-3}
  assert run_config.finished_run_diff(then, now) == [('num_train_steps', 4, 8)]
  assert run_config.other_run_diff(then, now) == []
  assert run_config.model_data_diff(then, now) == []
  other = dict(now, learning_rate=3e-4, data={'eval_split': 'valid', 'name': 'b'})
  assert run_config.other_run_diff(then, other) == [('data.name', 'a', 'b'),
                                                    ('learning_rate', 1e-3, 3e-4)]
  assert run_config.model_data_diff(then, other) == [('data.name', 'a', 'b')]
  # The fields that may change the train state's structure; all of them when none may.
  diff = run_config.config_diff(then, other)
  assert run_config.state_suspects(diff) == [('data.name', 'a', 'b'),
                                             ('learning_rate', 1e-3, 3e-4)]
  cadence = [('log_every_steps', 10, 5), ('num_train_steps', 4, 8)]
  assert run_config.state_suspects(cadence) == cadence
  assert run_config.CADENCE_FIELDS >= {'log_every_steps', 'checkpoint_every_steps'}


def test_config_dict_is_plain_json():
  config = load_config('configs/vqvae.py', TINY_VQ)
  plain = run_config.config_dict(config)
  assert isinstance(plain, dict) and plain['model']['num_codes'] == 16
  assert not [k for k, v in run_config.flatten(plain).items() if isinstance(v, tuple)]


def test_a_new_run_has_an_id_and_a_start_time():
  a, b = run_config.new_run(), run_config.new_run()
  assert len(a['id']) == 16 and int(a['id'], 16) >= 0 and a['id'] != b['id']
  assert a['started'].endswith('+00:00')
  assert run_config.describe_run(a) == f"run {a['id']} (started {a['started']})"
  assert run_config.describe_run(None) == run_config.describe_run({}) == \
      'a run without a recorded id (written before runs had one)'


def test_weights_note_says_when_the_command_does_not_choose_the_weights():
  ema = {'weights': 'ema', 'ema_decay': 0.9}
  raw = {'weights': 'params', 'ema_decay': 0.0}
  assert run_config.weights_note(ema, {'weights_ema_decay': 0.9}) is None
  assert run_config.weights_note(raw, {'weights_ema_decay': 0.0}) is None
  assert run_config.weights_note(raw, {}) is None
  assert 'evaluating the moving average' in run_config.weights_note(ema, {'weights_ema_decay': 0.0})
  assert 'evaluating its parameters' in run_config.weights_note(raw, {'weights_ema_decay': 0.5})


# ----------------------------------------------------------------------------
# Integrity (vaes.checkpoint_integrity): checksums, non-finite values, structures.
# ----------------------------------------------------------------------------


def test_checksums_tell_values_dtypes_and_shapes_apart():
  tree = {'params': {'w': np.arange(6, dtype=np.float32).reshape(2, 3)}, 'step': np.int32(3)}
  host = integrity.host_leaves(tree)
  assert sorted(host) == ['params/w', 'step']
  sums = integrity.checksums(host)
  assert integrity.checksums(integrity.host_leaves(tree)) == sums
  changed = [np.arange(6, dtype=np.float32).reshape(3, 2), np.arange(6, dtype=np.float64),
             np.array([0, 1, 2, 3, 4, np.nextafter(np.float32(5), np.float32(6))],
                      np.float32).reshape(2, 3)]
  for w in changed:
    assert integrity.checksums({'params/w': w})['params/w'] != sums['params/w']
  assert integrity.verify(host, sums) == sums
  assert integrity.verify(host, None) == sums     # checkpoints written without checksums
  with pytest.raises(integrity.Damaged, match=r'checksum mismatch in 1 array\(s\), e.g. step'):
    integrity.verify(host, dict(sums, step='0'))


def test_non_finite_values_count_only_in_parameters_and_model_state():
  host = {'params/w': np.array([1.0, np.nan, np.inf], np.float32),
          'model_state/bn': np.array([0.0, -np.inf], np.float32),
          'ema_params/w': np.array([1.0, 2.0], np.float32),
          'params/count': np.array([1, 2], np.int32),
          'opt_state/0/mu': np.array([np.nan], np.float32)}
  assert integrity.nonfinite_parameters(host) == (3, 7)
  with pytest.raises(integrity.Damaged, match='3 of 7 parameter values are NaN/inf'):
    integrity.verify(host, None)


def test_structure_tells_empty_entries_and_lists_apart():
  adam = optax.adam(1e-3).init({'w': np.zeros(2, np.float32)})
  adamw = optax.adamw(1e-3).init({'w': np.zeros(2, np.float32)})
  # The same array paths, another nesting: only the structure tells them apart.
  assert set(integrity.leaves(adam)) == {'0/count', '0/mu/w', '0/nu/w'}
  assert integrity.structure(adam) == ({'count': 'array', 'mu': {'w': 'array'},
                                        'nu': {'w': 'array'}}, None)
  assert len(integrity.structure(adamw)) == 3
  assert integrity.structure({'a': None, 'b': (), 'c': {}}) == {'a': None, 'b': None,
                                                                'c': None}
  theirs = {'opt_state': integrity.structure(adam), 'step': 'array'}
  ours = {'opt_state': integrity.structure(adamw), 'ema_params': None}
  assert integrity.structure_diff(theirs, theirs) == []
  diff = integrity.structure_diff(theirs, ours)
  assert diff == [('ema_params', integrity.ABSENT, None),
                  ('opt_state', theirs['opt_state'], ours['opt_state']),
                  ('step', 'array', integrity.ABSENT)]
  assert [integrity.describe_structure(d[1]) for d in diff] == [
      'no such entry', 'a list of 2 entries', 'an array']
  assert integrity.describe_structure(None) == 'an empty entry'
  assert integrity.describe_structure({k: 'array' for k in 'gfedcba'}) == \
      'the fields a, b, c, d, e, f, ...'
  abstract = {'w': jax.ShapeDtypeStruct((2, 3), np.float32)}
  assert integrity.signatures(abstract) == {'w': ((2, 3), 'float32')}
  assert integrity.signatures({'w': np.zeros((2, 3), np.float32)}) == \
      integrity.signatures(abstract)


def test_only_orbax_s_tree_structure_error_is_a_config_error():
  assert integrity.is_structure_error(ValueError('User-provided restore item and on-disk '
                                                 'value metadata tree structures do not match'))
  assert not integrity.is_structure_error(ValueError('RESOURCE_EXHAUSTED: no space'))
  assert not integrity.is_structure_error(OSError('tree structure'))


def test_damaged_steps_are_moved_aside_or_left_in_place(tmp_path, capsys):
  directory, corrupted = tmp_path / 'checkpoints', tmp_path / 'corrupted_checkpoints'
  for step in ('2', '4'):
    (directory / step).mkdir(parents=True)
  integrity.set_aside(str(directory), str(corrupted), 4, 'bad bytes')
  out = capsys.readouterr().out
  assert sorted(os.listdir(directory)) == ['2'] and len(os.listdir(corrupted)) == 1
  assert os.listdir(corrupted)[0].startswith('4-')
  assert 'checkpoints/4 is incomplete or corrupted (bad bytes); moved it to' in out
  integrity.leave_in_place(str(directory), 2, 'bad bytes')
  assert 'left it in place' in capsys.readouterr().out
  assert sorted(os.listdir(directory)) == ['2']


def test_error_texts():
  assert integrity.describe_steps([4]) == 'step 4'
  assert integrity.describe_steps([4, 2]) == 'steps 2, 4'
  assert integrity.first_line(ValueError('one\ntwo')) == 'one'
  assert integrity.first_line(ValueError()) == 'ValueError'
  assert integrity.reason(OSError('disk\nfull')) == 'OSError: disk'


# ----------------------------------------------------------------------------
# Orbax I/O and the restore paths.
# ----------------------------------------------------------------------------


def test_restore_variables_reads_only_what_the_model_needs(tmp_path):
  config = load_config('configs/vqvae.py', dict(TINY_VQ, weights_ema_decay=0.5))
  _, trainer = data_and_trainer(config)
  state = trainer.init_fn()
  state = state.replace(ema_params=jax.tree.map(lambda p: p + 1.0, state.params))
  checkpointer = Checkpointer(str(tmp_path), async_save=False)
  checkpointer.save(3, state, config)
  assert checkpointer.all_steps() == [3] and checkpointer.latest_step() == 3
  assert checkpointer.read_meta(3)['step'] == 3 and checkpointer.latest_meta()[0] == 3
  assert set(checkpointer.saved_tree(3)) >= {'params', 'opt_state', 'ema_params'}
  abstract = trainer.abstract_state
  reader = Checkpointer(str(tmp_path), read_only=True)
  variables, step, info = reader.restore_variables(
      {'params': abstract.params, 'model_state': abstract.model_state}, config)
  assert step == 3 and set(variables) == {'params', 'model_state', 'ema_params'}
  assert info['weights'] == 'ema' and info['ema_decay'] == 0.5
  assert {p.split('/')[0] for p in info['checksums']} <= set(variables)
  for x, y in zip(jax.tree.leaves(jax.device_get(state.ema_params)),
                  jax.tree.leaves(jax.device_get(variables['ema_params']))):
    np.testing.assert_array_equal(x, y)
  restored, step, saved = reader.restore_latest(abstract, config)
  assert step == 3 and saved['weights_ema_decay'] == 0.5
  _assert_same_state(restored, state)
  checkpointer.delete(3)
  assert checkpointer.all_steps() == []
  assert reader.restore_latest(abstract, config) == (None, None, None)
  assert reader.restore_variables({'params': abstract.params}, config) == (None, None, None)


def test_move_aside_moves_whole_steps_and_lists_again(tmp_path):
  config = load_config('configs/vqvae.py', TINY_VQ)
  state = data_and_trainer(config)[1].init_fn()
  checkpointer = Checkpointer(str(tmp_path / 'run'), async_save=False)
  for step in (1, 2):
    checkpointer.save(step, state, config, extra_meta={'note': step})
  targets = checkpointer.move_aside([1], str(tmp_path / 'aside'))
  assert checkpointer.all_steps() == [2] and checkpointer.read_meta(2)['note'] == 2
  assert len(targets) == 1 and os.path.isdir(targets[0])
  assert os.path.basename(targets[0]).startswith('1-')


def test_a_step_deleted_while_it_is_listed_is_listed_again(tmp_path, monkeypatch):
  """A live training run deletes a step between Orbax's listing of it and its reading of
  the step's metadata (CI saw it in eval.py: with the metadata file gone Orbax reads the
  step directory's time and fails). Making the read-only manager, and listing again, are
  retried and list the steps that are left."""
  config = load_config('configs/vqvae.py', TINY_VQ)
  state = data_and_trainer(config)[1].init_fn()
  wd = str(tmp_path / 'run')
  writer = Checkpointer(wd, async_save=False)
  for step in (1, 2, 3):
    writer.save(step, state, config)
  real_stat, doomed, deleted = os.stat, [], []

  def stat_racing_a_deletion(path, *a, **k):   # the step goes as its metadata is read
    if doomed and str(path) == os.path.join(doomed[0], '_CHECKPOINT_METADATA'):
      shutil.rmtree(doomed.pop())
      deleted.append(path)
    return real_stat(path, *a, **k)

  monkeypatch.setattr(os, 'stat', stat_racing_a_deletion)
  doomed.append(os.path.join(wd, 'checkpoints', '3'))
  reader = Checkpointer(wd, read_only=True)
  assert len(deleted) == 1 and reader.all_steps() == [1, 2]
  doomed.append(os.path.join(wd, 'checkpoints', '2'))
  reader.refresh()
  assert len(deleted) == 2 and reader.all_steps() == [1]


def test_checkpointer_refuses_a_bad_keep_count_and_a_missing_read_only_directory(tmp_path):
  with pytest.raises(ConfigError, match='max_checkpoints_to_keep=0'):
    Checkpointer(str(tmp_path / 'run'), max_to_keep=0)
  with pytest.raises(CheckpointError, match='No checkpoint in .*: train first'):
    Checkpointer(str(tmp_path / 'none'), read_only=True)
  assert not os.path.exists(tmp_path / 'none')


# ----------------------------------------------------------------------------
# Whole runs: damaged steps set aside, other configs refused, full disks, old states.
# ----------------------------------------------------------------------------


def test_corrupted_latest_checkpoint_falls_back_to_previous(tmp_path):
  wd = str(tmp_path / 'run')
  config = load_config('configs/vqvae.py', dict(TINY_VQ, num_train_steps=6,
                                                checkpoint_every_steps=3))
  train_and_evaluate(config, wd)
  reference, _ = _state(load_config('configs/vqvae.py', dict(TINY_VQ, num_train_steps=6,
                                                             checkpoint_every_steps=3)), wd)
  # Garble every data file of the step-6 checkpoint.
  files = [f for f in glob.glob(os.path.join(wd, 'checkpoints', '6', 'state', '**'),
                                recursive=True) if os.path.isfile(f)]
  assert files
  for f in files:
    with open(f, 'wb') as fh:
      fh.write(b'garbage')
  state, step = _state(config, wd)
  assert step == 3 and int(state.step) == 3
  moved = glob.glob(os.path.join(wd, 'corrupted_checkpoints', '6-*'))
  assert len(moved) == 1  # set aside, not deleted
  assert Checkpointer(wd).all_steps() == [3]
  # Rerunning the command recomputes step 6 exactly.
  train_and_evaluate(config, wd)
  again, step = _state(config, wd)
  assert step == 6
  _assert_same_state(again, reference)


def test_restart_with_different_model_shape_is_refused(tmp_path):
  wd = str(tmp_path / 'run')
  train_and_evaluate(load_config('configs/vqvae.py', dict(TINY_VQ, num_train_steps=2,
                                                          checkpoint_every_steps=2)), wd)
  changed = load_config('configs/vqvae.py', dict(TINY_VQ, num_train_steps=4,
                                                 checkpoint_every_steps=2,
                                                 **{'model.num_codes': 32}))
  with pytest.raises(ConfigError, match=r'model\.num_codes: checkpoint 16 vs config 32'):
    train_and_evaluate(changed, wd)
  assert Checkpointer(wd).all_steps() == [2]  # nothing lost
  # Implementation-only fields (same function and parameters) may change on resume.
  faster = load_config('configs/vqvae.py', dict(TINY_VQ, num_train_steps=4, eval_every_steps=0,
                                                checkpoint_every_steps=2,
                                                **{'model.upsample': 'phases'}))
  train_and_evaluate(faster, wd)
  assert Checkpointer(wd).all_steps()[-1] == 4


def test_disk_full_while_saving_is_a_clear_error_and_keeps_earlier_checkpoints(
    tmp_path, monkeypatch):
  import errno
  import orbax.checkpoint as ocp
  wd = str(tmp_path / 'run')
  config = load_config('configs/vqvae.py', dict(TINY_VQ, num_train_steps=4,
                                                checkpoint_every_steps=2))
  real_save = ocp.CheckpointManager.save

  def save(self, step, *a, **k):
    if step >= 4:
      raise OSError(errno.ENOSPC, 'No space left on device')
    return real_save(self, step, *a, **k)
  monkeypatch.setattr(ocp.CheckpointManager, 'save', save)
  with pytest.raises(CheckpointError, match='No space left on device.*Earlier checkpoints are '
                     'intact; free disk space'):
    train_and_evaluate(config, wd)
  monkeypatch.setattr(ocp.CheckpointManager, 'save', real_save)
  state, step = _state(config, wd)
  assert step == 2 and int(state.step) == 2


# (the run's fields, the field changed on resume, its new value). adam <-> adamw: the
# optimiser states differ only by an empty entry (the same array paths), which only the
# tree structure tells; Orbax's structure error is never taken for damage.
CHANGED_OPTIMISER = [({}, 'grad_clip_norm', 1.0), ({}, 'lr_schedule', 'cosine'),
                     ({}, 'optimizer', 'adamw'), ({'optimizer': 'adamw'}, 'optimizer', 'adam')]


@pytest.mark.parametrize('base,field,value', CHANGED_OPTIMISER,
                         ids=['grad_clip_norm', 'lr_schedule', 'adam_to_adamw', 'adamw_to_adam'])
def test_changed_optimiser_field_moves_nothing_and_eval_still_works(tmp_path, base, field, value):
  wd = str(tmp_path / 'run')
  train_and_evaluate(load_config('configs/vqvae.py', dict(SHORT, **base)), wd)
  changed = load_config('configs/vqvae.py', dict(SHORT, num_train_steps=6,
                                                 **dict(base, **{field: value})))
  with pytest.raises(ConfigError) as e:
    train_and_evaluate(changed, wd)
  assert f'{field}: checkpoint' in str(e.value) and 'Nothing was moved' in str(e.value)
  assert Checkpointer(wd).all_steps() == [2, 4]
  assert not os.path.exists(os.path.join(wd, 'corrupted_checkpoints'))
  # eval.py reads the parameters only, whatever the optimiser fields say.
  metrics = evaluate.evaluate(changed, wd)
  assert metrics['step'] == 4.0 and np.isfinite(metrics['loss'])
  # The original command still resumes (here: finds the finished run).
  assert train_and_evaluate(load_config('configs/vqvae.py', dict(SHORT, **base)), wd) == {}
  assert Checkpointer(wd).all_steps() == [2, 4]


def test_optimizer_switch_on_resume_is_one_line_and_the_original_command_resumes(tmp_path,
                                                                                capsys):
  """train.py --config.optimizer=adamw on an adam run: one ERROR line naming the
  optimiser, exit status 2, every checkpoint in place; the original command resumes."""
  wd = str(tmp_path / 'run')
  train_and_evaluate(load_config('configs/vqvae.py', SHORT), wd)
  proc = run_cli('train.py', 'configs/vqvae.py', wd, dict(SHORT, num_train_steps=6,
                                                          optimizer='adamw'), check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith('ERROR')]
  assert len(lines) == 1 and "optimizer: checkpoint 'adam' vs config 'adamw'" in lines[0], \
      proc.stderr[-3000:]
  assert 'opt_state: checkpoint a list of 2 entries vs config a list of 3 entries' in lines[0]
  assert 'Traceback' not in proc.stderr and 'moved it to' not in proc.stdout + proc.stderr
  assert Checkpointer(wd).all_steps() == [2, 4]
  assert not os.path.exists(os.path.join(wd, 'corrupted_checkpoints'))
  capsys.readouterr()
  train_and_evaluate(load_config('configs/vqvae.py', dict(SHORT, num_train_steps=6)), wd)
  assert 'Resuming from the checkpoint of step 4' in capsys.readouterr().out
  assert Checkpointer(wd).all_steps()[-1] == 6


def _largest_data_file(step_dir):
  files = [f for f in glob.glob(os.path.join(step_dir, 'state', '**', 'd', '*'), recursive=True)
           if os.path.isfile(f)]
  return max(files, key=os.path.getsize)


def test_flipped_bytes_are_detected_and_fall_back(tmp_path, capsys):
  wd = str(tmp_path / 'run')
  config = load_config('configs/vqvae.py', SHORT)
  train_and_evaluate(config, wd)
  reference, _ = _state(config, wd)
  path = _largest_data_file(os.path.join(wd, 'checkpoints', '4'))
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:    # same size, bytes inverted in the middle of the file
    f.seek(size // 2)
    chunk = f.read(64)
    f.seek(size // 2)
    f.write(bytes(255 - b for b in chunk))
  assert os.path.getsize(path) == size
  capsys.readouterr()
  state, step = _state(config, wd)
  out = capsys.readouterr().out
  assert step == 2 and int(state.step) == 2
  assert 'checkpoints/4 is incomplete or corrupted' in out
  assert glob.glob(os.path.join(wd, 'corrupted_checkpoints', '4-*'))
  # The rerun recomputes step 4 exactly.
  train_and_evaluate(config, wd)
  again, step = _state(config, wd)
  assert step == 4
  _assert_same_state(again, reference)


def test_checksums_catch_a_silently_changed_array(tmp_path, capsys, monkeypatch):
  """A value changed on disk that still decodes (the case a file-level check of
  the storage layer cannot see) is caught by the per-array checksum."""
  import vaes.checkpoint_integrity as ckpt
  wd = str(tmp_path / 'run')
  config = load_config('configs/vqvae.py', SHORT)
  train_and_evaluate(config, wd)
  real = ckpt.host_array

  def altered(x):   # what a flipped mantissa bit in a stored float looks like
    a = real(x).copy()
    if a.dtype == np.float32 and a.size > 100:
      a.reshape(-1)[7] = np.nextafter(a.reshape(-1)[7], np.float32(np.inf))
    return a
  monkeypatch.setattr(ckpt, 'host_array', altered)
  capsys.readouterr()
  with pytest.raises(CheckpointError, match='could be restored'):
    _state(config, wd)
  assert 'checksum mismatch' in capsys.readouterr().out
  monkeypatch.setattr(ckpt, 'host_array', real)
  # Every checkpoint was set aside: a restart from scratch says so loudly.
  train_and_evaluate(config, wd)
  err = capsys.readouterr().err
  assert 'WARNING: starting from step 0' in err and 'set aside as damaged' in err


def test_eval_beside_a_run_that_deletes_what_it_listed_moves_nothing(tmp_path, capsys,
                                                                    monkeypatch):
  """eval.py while train.py saves every step and keeps one: the steps eval.py listed are
  deleted while it builds the data and the model. A step that vanished is not damage:
  the newest that exists is evaluated, nothing is moved and no 'moved' is printed."""
  wd = str(tmp_path / 'run')
  overrides = dict(TINY_VQ, num_train_steps=100_000, checkpoint_every_steps=1,
                   max_checkpoints_to_keep=1, log_every_steps=1000)
  config = load_config('configs/vqvae.py', overrides)
  steps_dir = os.path.join(wd, 'checkpoints')
  on_disk = lambda: {int(d) for d in os.listdir(steps_dir) if d.isdigit()}
  original = data_lib.get_datasets

  def slow_datasets(cfg, *a, **k):   # data built while training moves on past every step
    listed, t0 = on_disk(), time.time()
    while on_disk() & listed and time.time() - t0 < 60:
      time.sleep(0.01)
    assert not on_disk() & listed, 'training did not move on'
    return original(cfg, *a, **k)

  proc = subprocess.Popen(_train_cmd(wd, overrides), cwd=REPO, env=subprocess_env(1),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    _wait_for_checkpoint(wd, proc)
    capsys.readouterr()
    monkeypatch.setattr(data_lib, 'get_datasets', slow_datasets)
    steps = [evaluate.evaluate(config, wd)['step']]
    monkeypatch.setattr(data_lib, 'get_datasets', original)
    for _ in range(3):
      steps.append(evaluate.evaluate(config, wd)['step'])
    assert proc.poll() is None, 'training ended early'
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
  out = capsys.readouterr()
  assert steps == sorted(steps) and steps[0] >= 1, steps
  assert 'moved' not in out.out + out.err and 'corrupted' not in out.out + out.err
  assert not os.path.exists(os.path.join(wd, 'corrupted_checkpoints'))


def test_read_only_restore_leaves_a_damaged_step_in_place(tmp_path, capsys):
  """eval.py moves nothing: a damaged latest step is reported as left in place and the
  previous one is evaluated; the next train.py sets it aside."""
  wd = str(tmp_path / 'run')
  config = load_config('configs/vqvae.py', SHORT)
  train_and_evaluate(config, wd)
  with open(_largest_data_file(os.path.join(wd, 'checkpoints', '4')), 'r+b') as f:
    f.write(b'garbage')
  capsys.readouterr()
  assert evaluate.evaluate(config, wd)['step'] == 2.0
  out = capsys.readouterr().out
  assert 'checkpoints/4 is incomplete or corrupted' in out and 'left it in place' in out
  assert 'moved' not in out and not os.path.exists(os.path.join(wd, 'corrupted_checkpoints'))
  assert sorted(os.listdir(os.path.join(wd, 'checkpoints'))) == ['2', '4']
  state, step = _state(config, wd)   # what train.py does: sets it aside
  assert step == 2 and glob.glob(os.path.join(wd, 'corrupted_checkpoints', '4-*'))


def test_non_finite_parameters_are_never_saved(tmp_path):
  config = load_config('configs/vqvae.py', SHORT)
  _, trainer = data_and_trainer(config)
  state = trainer.init_fn()
  poisoned = state.replace(params=jax.tree.map(lambda p: p * np.nan, state.params))
  checkpointer = Checkpointer(str(tmp_path / 'run'), async_save=False)
  with pytest.raises(CheckpointError, match='non-finite parameter values.*not saved'):
    checkpointer.save(1, poisoned, config)
  assert checkpointer.all_steps() == []


# Runs train.py (argv[2:]) with Orbax's save filling the disk (the folder argv[1]) just
# before the checkpoint of step 4 is written.
_FILL_THEN_TRAIN = """
import os, runpy, sys
import orbax.checkpoint as ocp
real_save, mount = ocp.CheckpointManager.save, sys.argv[1]

def fill_then_save(self, step, *a, **k):
  if step == 4:
    self.wait_until_finished()
    with open(os.path.join(mount, 'filler'), 'wb') as f:
      try:
        while True:
          f.write(b'\\0' * 65536)
      except OSError:
        pass
  return real_save(self, step, *a, **k)

ocp.CheckpointManager.save = fill_then_save
script, sys.argv = sys.argv[2], sys.argv[2:]
runpy.run_path(script, run_name='__main__')
"""


def _wait_for_orbax_writers(timeout=120):
  """Orbax's wait raises at the first failed write of a save while its other writes go on
  in their threads; in this process (not on the command line, which exits) they may then
  finish the step once there is space again. Waits until they have ended."""
  import threading
  names = ('async_save', 'save_finalize', 'json_ch_save', 'serialize_shardings',
           'array_type_handler', 'write_metadata_after_commits')
  t0 = time.time()
  while any(t.name.startswith(names) for t in threading.enumerate()):
    assert time.time() - t0 < timeout, [t.name for t in threading.enumerate()]
    time.sleep(0.05)


def test_disk_full_with_the_real_checkpoint_writer(tmp_path):
  """A small tmpfs that fills up after the first checkpoint: Orbax's writer raises
  ValueError('RESOURCE_EXHAUSTED ...'), reported as one line; step 2 stays intact. On the
  command line the ERROR line comes without Orbax's and asyncio's tracebacks."""
  mount = tmp_path / 'small'
  mount.mkdir()
  with _mounted(['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', str(mount)]):
    wd = str(mount / 'run')
    config = load_config('configs/vqvae.py', SHORT)
    import orbax.checkpoint as ocp
    real_save = ocp.CheckpointManager.save

    def fill_then_save(self, step, *a, **k):
      if step == 4:   # once step 2 is on disk, fill the disk
        self.wait_until_finished()
        with open(mount / 'filler', 'wb') as f:
          try:
            while True:
              f.write(b'\0' * 65536)
          except OSError:
            pass
      return real_save(self, step, *a, **k)
    ocp.CheckpointManager.save = fill_then_save
    try:
      with pytest.raises(CheckpointError) as e:
        train_and_evaluate(config, wd)
      proc_err = str(e.value)
    finally:
      ocp.CheckpointManager.save = real_save
    assert 'No space left on device' in proc_err or 'RESOURCE_EXHAUSTED' in proc_err
    assert 'Earlier checkpoints are intact' in proc_err
    _wait_for_orbax_writers()   # else one may finish step 4 once the space is back
    os.remove(mount / 'filler')
    state, step = _state(config, wd)
    assert step == 2 and int(state.step) == 2

    # The same on the command line (it resumes at step 2): one line, no tracebacks.
    driver = tmp_path / 'fill_then_train.py'
    driver.write_text(_FILL_THEN_TRAIN)
    proc = subprocess.run([PYTHON, str(driver), str(mount)] + _train_cmd(wd, SHORT)[1:],
                          cwd=REPO, env=subprocess_env(1), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [l for l in proc.stderr.splitlines() if l.startswith('ERROR')]
    assert len(lines) == 1 and 'Earlier checkpoints are intact' in lines[0], proc.stderr[-3000:]
    assert 'No space left on device' in lines[0] or 'RESOURCE_EXHAUSTED' in lines[0], lines
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert 'Resuming from the checkpoint of step 2' in proc.stdout
    os.remove(mount / 'filler')
    assert _state(config, wd)[1] == 2


def test_checkpoint_written_before_ema_params_existed_still_restores(tmp_path):
  config = load_config('configs/vqvae.py', TINY_VQ)
  _, trainer = data_and_trainer(config)
  state = trainer.init_fn()
  old = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
         if f.name != 'ema_params'}
  checkpointer = Checkpointer(str(tmp_path), async_save=False)
  checkpointer.save(0, old, config)
  restored, step, _ = checkpointer.restore_latest(trainer.abstract_state, config)
  assert step == 0 and restored.ema_params is None
  for x, y in zip(jax.tree.leaves(jax.device_get(state)),
                  jax.tree.leaves(jax.device_get(restored))):
    np.testing.assert_array_equal(x, y)


# ----------------------------------------------------------------------------
# Renamed config fields (vaes/renames.py): config.ema_decay -> config.weights_ema_decay.
# ----------------------------------------------------------------------------


def test_upgrade_config_renames_old_fields_and_leaves_the_rest():
  from vaes.renames import upgrade_config
  old = {'ema_decay': 0.9, 'model': {'ema_decay': 0.99}, 'seed': 1}
  new = upgrade_config(old)
  assert new == {'weights_ema_decay': 0.9, 'model': {'ema_decay': 0.99}, 'seed': 1}
  assert old['ema_decay'] == 0.9                         # a copy: the input is unchanged
  assert upgrade_config({'weights_ema_decay': 0.5}) == {'weights_ema_decay': 0.5}
  # A saved config of the old name compares equal to today's config of the new name.
  assert run_config.config_diff({'ema_decay': 0.9, 'seed': 1},
                                {'weights_ema_decay': 0.9, 'seed': 1}, ignore=()) == []
  assert run_config.config_diff({'ema_decay': 0.9}, {'weights_ema_decay': 0.5}, ignore=()) == [
      ('weights_ema_decay', 0.9, 0.5)]


def test_a_checkpoint_saved_with_the_old_ema_decay_name_resumes_and_evaluates(tmp_path,
                                                                              capsys):
  """A run saved while the field was config.ema_decay: its meta item reads back under
  the new name, so the same run (now weights_ema_decay) resumes with only the fields
  that did change noted, and eval.py evaluates its moving average."""
  wd = str(tmp_path / 'run')
  config = load_config('configs/vqvae.py', dict(TINY_VQ, weights_ema_decay=0.5,
                                                num_train_steps=2, checkpoint_every_steps=2))
  train_and_evaluate(config, wd)
  metas = [p for p in glob.glob(os.path.join(wd, 'checkpoints', '*', 'meta', '*'))
           if os.path.isfile(p) and '"weights_ema_decay"' in open(p).read()]
  assert metas   # the meta item is a JSON file: write it as the old code did
  for p in metas:
    text = open(p).read()
    with open(p, 'w') as f:
      f.write(text.replace('"weights_ema_decay"', '"ema_decay"'))
  reader = Checkpointer(wd, read_only=True)
  assert reader.read_meta(2)['config']['weights_ema_decay'] == 0.5
  assert 'ema_decay' not in reader.read_meta(2)['config']
  capsys.readouterr()
  train_and_evaluate(load_config('configs/vqvae.py', dict(
      TINY_VQ, weights_ema_decay=0.5, num_train_steps=4, checkpoint_every_steps=2)), wd)
  out = capsys.readouterr().out
  assert 'Resuming from the checkpoint of step 2' in out
  changed = [l for l in out.splitlines() if 'fields changed' in l]
  assert changed and 'num_train_steps' in changed[0] and 'ema_decay' not in changed[0]
  metrics = evaluate.evaluate(config, wd)
  assert metrics['weights'] == 'ema' and metrics['weights_ema_decay'] == 0.5


def test_the_old_ema_decay_flag_is_one_line_naming_the_new_one(tmp_path):
  result = run_cli('train.py', 'configs/vqvae.py', str(tmp_path / 'w'), {'ema_decay': 0.9},
                   check=False, timeout=120)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert '--config.ema_decay was renamed --config.weights_ema_decay' in lines[0]
  assert not os.path.exists(tmp_path / 'w')
