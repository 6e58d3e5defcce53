"""Orbax checkpoints of the whole train state, resumed automatically from workdir.

The train state holds the step, so the data position (batches are a pure
function of (seed, step)) and the per-step randomness (fold_in(rng, step)) are
restored with it. Each checkpoint also stores a JSON `meta` item: the whole
resolved config and a checksum of every saved array.

WORKDIR/checkpoints holds the latest checkpoints (resumed from); WORKDIR/best,
when config.eval.select_metric is set, the one of the best evaluation during
training (vaes.selection), with its metric in the meta item. The meta item also
records the training wall time up to the checkpoint ('train_wall_time_s', over every
run of the workdir) and the run it belongs to ('run': {'id', 'started'}, set at the
run's first start and kept by its resumes), so that a best checkpoint of an earlier
run in the same workdir is told apart.

This module is the Orbax I/O (`Checkpointer`); beside it:
- vaes/checkpoint_restore.py: the two restore paths (`Checkpointer.restore_latest`,
  `Checkpointer.restore_variables`): which step, what is refused, what is set aside;
- vaes/checkpoint_integrity.py: checksums, non-finite parameters, tree structures,
  setting damaged steps aside;
- vaes/run_config.py: which configs make the same run (config diffs, run ids).
"""

import logging
import os
import time

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from vaes import checkpoint_integrity as integrity
from vaes import checkpoint_restore
from vaes import fs
from vaes.errors import CheckpointError, ConfigError
from vaes.renames import upgrade_config
from vaes.run_config import config_dict

LATEST_DIR = 'checkpoints'   # WORKDIR/checkpoints: the latest ones, resumed from
BEST_DIR = 'best'            # WORKDIR/best: the best by config.eval.select_metric


class Checkpointer:
  """An `ocp.CheckpointManager` in `workdir/checkpoints` (or `workdir/{subdir}`) with the
  items 'state' (the train state) and 'meta' (JSON): save, list, read, delete and move
  steps. A save refuses non-finite parameters and records the config and checksums;
  restoring (vaes/checkpoint_restore.py) is reached through `restore_latest` and
  `restore_variables`.

  `workdir` is a local path, a file:// URL (both given to Orbax as absolute local
  paths) or a gs:// URL (given as it is; Orbax reads and writes it through epath and
  tensorstore). `read_only=True` (evaluation, code extraction) creates nothing: a workdir
  without checkpoints is an error naming the command that makes them."""

  def __init__(self, workdir, max_to_keep=3, async_save=True, read_only=False,
               subdir=LATEST_DIR):
    self.workdir = workdir
    self.read_only = read_only
    self.directory = _directory(workdir, subdir, max_to_keep, read_only)
    self.corrupted_dir = fs.join(fs.resolve(workdir), 'corrupted_checkpoints')
    self.options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=not read_only, enable_async_checkpointing=async_save,
        read_only=read_only)
    self.manager = self._listed(self._manager)

  def _manager(self):
    # Handlers named up front, so that `item_metadata` reads the saved tree of a
    # checkpoint before anything is restored.
    return ocp.CheckpointManager(
        self.directory, options=self.options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'meta': ocp.JsonCheckpointHandler()})

  def all_steps(self):
    return sorted(self.manager.all_steps())

  def latest_step(self):
    return self.manager.latest_step()

  def refresh(self):
    """Lists the steps again (the manager lists them once, when it is made): a live
    training run saves and deletes steps while eval.py reads."""
    self._listed(self.manager.reload)

  def _listed(self, list_steps):
    """`list_steps()` (making the manager or reloading it lists the steps), retried: a
    step that a live training run deletes while it is listed makes the listing fail."""
    for attempt in range(5):
      try:
        return list_steps()
      except Exception as e:  # pylint: disable=broad-except
        if attempt == 4:
          raise CheckpointError(f'Listing the checkpoints in {self.directory} failed: '
                                f'{integrity.reason(e)}.') from e
        time.sleep(0.2)

  def latest_meta(self):
    """(step, meta item) of the newest checkpoint, listed now; (None, {}) without one. A
    step deleted between the listing and the reading (a live training run) is skipped."""
    for _ in range(5):
      self.refresh()
      step = self.latest_step()
      if step is None:
        return None, {}
      try:
        return step, self.read_meta(step)
      except Exception as e:  # pylint: disable=broad-except
        self.refresh()
        if step in self.all_steps():   # there, but unreadable: a restore reports it
          logging.warning('The meta item of checkpoint %s/%s is unreadable (%s).',
                          self.directory, step, integrity.reason(e))
          return step, {}
    return None, {}

  def corrupted(self):
    """Checkpoints set aside earlier in WORKDIR/corrupted_checkpoints/."""
    return fs.listdir(self.corrupted_dir) if fs.isdir(self.corrupted_dir) else []

  def read_meta(self, step):
    """The JSON meta item of `step` ({} for checkpoints written without one)."""
    meta = self.manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta'] or {}
    if 'config' in meta:   # saved before a field was renamed: read with the new names
      meta = {**meta, 'config': upgrade_config(meta['config'])}
    return meta

  def saved_tree(self, step):
    """The metadata tree (shapes, dtypes, nesting) of the state saved at `step`."""
    tree = self.manager.item_metadata(step)['state']
    return getattr(tree, 'tree', tree)

  def restore_state(self, step, target):
    """The state saved at `step`, read into `target` (a tree of ShapeDtypeStructs)."""
    return self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))['state']

  def restore_latest(self, abstract_state, config):
    """-> (state, step, saved config); see vaes.checkpoint_restore.restore_latest."""
    return checkpoint_restore.restore_latest(self, abstract_state, config)

  def restore_variables(self, abstract_variables, config, sharding=None, same_model=True):
    """-> (variables, step, info); see vaes.checkpoint_restore.restore_variables."""
    return checkpoint_restore.restore_variables(self, abstract_variables, config, sharding,
                                                same_model)

  def save(self, step, state, config, force=False, extra_meta=None):
    """Saves `state` with its config, per-array checksums and `extra_meta` (a dict
    of JSON values: wall time, selection) in the meta item. A state whose
    parameters hold NaN/inf is never saved (CheckpointError)."""
    host = integrity.host_leaves(state)
    bad, total = integrity.nonfinite_parameters(host)
    if bad:
      raise CheckpointError(
          f'The state at step {step} has {bad:,} non-finite parameter values (of {total:,}); '
          f'it was not saved and the earlier checkpoints in {self.directory} are intact. Lower '
          'config.learning_rate or set config.grad_clip_norm, then rerun.')
    meta = {**(extra_meta or {}), 'step': int(step), 'config': config_dict(config),
            'checksums': integrity.checksums(host)}
    try:
      return self.manager.save(
          int(step), force=force,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  meta=ocp.args.JsonSave(meta)))
    except Exception as e:  # pylint: disable=broad-except
      raise _write_error(self.directory, f'Saving the checkpoint of step {step}', e) from e

  def delete(self, step):
    self.manager.delete(int(step))

  def wait(self):
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise _write_error(self.directory, 'Finishing a checkpoint', e) from e

  def move_aside(self, steps, target_dir):
    """Moves `steps` (whole, not damaged) into `target_dir`/{step}-{time}/ on process 0;
    every process then lists the steps again. Returns the targets."""
    stamp = int(time.time())
    targets = [fs.join(target_dir, f'{step}-{stamp}') for step in steps]
    self.wait()
    if jax.process_index() == 0:
      fs.makedirs(target_dir)
      for step, target in zip(steps, targets):
        fs.replace(fs.join(self.directory, str(step)), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'vaes_move_aside_{self.directory}')
    self.manager = self._manager()
    return targets


def _directory(workdir, subdir, max_to_keep, read_only):
  """The checkpoint directory `workdir`/`subdir` as Orbax takes it (an absolute local path
  or a gs:// URL, fs.resolve), checked: made and writable, or (read-only) there."""
  directory = fs.resolve(fs.join(workdir, subdir))
  if not isinstance(max_to_keep, int) or max_to_keep < 1:
    raise ConfigError(f'config.max_checkpoints_to_keep={max_to_keep!r}: must be a positive '
                      'integer (1 keeps only the latest checkpoint).')
  if read_only:
    if not fs.isdir(directory):
      raise CheckpointError(f'No checkpoint in {directory}: train first with '
                            f'`python train.py --config=... --workdir={workdir}`.')
    return directory
  try:
    fs.makedirs(directory)
  except OSError as e:
    raise CheckpointError(f'Cannot create the checkpoint directory {directory}: {e}. '
                          'Choose a writable --workdir.') from e
  if fs.is_local(directory) and not os.access(directory, os.W_OK):
    raise CheckpointError(f'The checkpoint directory {directory} is not writable; '
                          'choose a writable --workdir.')
  return directory


def _write_error(directory, what, e):
  """The CheckpointError of a failed write (`what`: the save or the wait) in `directory`."""
  # Orbax's writer (tensorstore) reports a full disk as ValueError('RESOURCE_EXHAUSTED: ...
  # No space left on device'), not as OSError.
  first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
  return CheckpointError(f'{what} in {directory} failed: {first}. Earlier checkpoints are '
                         'intact; free disk space or choose another --workdir, then rerun '
                         'the same command to resume.')
