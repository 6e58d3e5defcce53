"""Orbax checkpoints of the whole train state, resumed automatically from workdir.

The train state holds the step, so the data position (batches are a pure
function of (seed, step)) and the per-step randomness (fold_in(rng, step)) are
restored with it. Each checkpoint also stores a JSON `meta` item with the model
and data config, used to refuse a restart whose shapes would not match.
"""

import json
import logging
import os
import shutil
import time

import jax

import orbax.checkpoint as ocp

from vaes.registry import ConfigError


class CheckpointError(RuntimeError):
  pass


# Fields that choose how the same function is computed (speed and memory only); a
# run may resume with other values.
IMPLEMENTATION_FIELDS = frozenset({'model.unroll', 'model.remat', 'model.upsample'})


def _shape_fields(config):
  """The config fields that determine parameter shapes (model.* and data.*)."""
  return {'model': config.model.to_dict(), 'data': config.data.to_dict()}


def _flatten(d, prefix=''):
  out = {}
  for k, v in d.items():
    key = f'{prefix}{k}'
    if isinstance(v, dict):
      out.update(_flatten(v, key + '.'))
    else:
      out[key] = v
  return out


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` in `workdir/checkpoints`."""

  def __init__(self, workdir, max_to_keep=3, async_save=True):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    try:
      os.makedirs(self.directory, exist_ok=True)
    except OSError as e:
      raise CheckpointError(f'Cannot create the checkpoint directory {self.directory}: {e}. '
                            'Choose a writable --workdir.') from e
    if not os.access(self.directory, os.W_OK):
      raise CheckpointError(f'The checkpoint directory {self.directory} is not writable; '
                            'choose a writable --workdir.')
    self.corrupted_dir = os.path.join(os.path.dirname(self.directory), 'corrupted_checkpoints')
    self.options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=self.options,
                                         item_names=('state', 'meta'))

  def all_steps(self):
    return sorted(self.manager.all_steps())

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step, state, config, force=False):
    meta = {'step': int(step), **_shape_fields(config)}
    try:
      return self.manager.save(
          int(step), force=force,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  meta=ocp.args.JsonSave(json.loads(json.dumps(meta)))))
    except OSError as e:
      raise CheckpointError(f'Saving the checkpoint of step {step} in {self.directory} failed: '
                            f'{e}. Earlier checkpoints are intact; free disk space or choose '
                            'another --workdir, then rerun the same command to resume.') from e

  def wait(self):
    try:
      self.manager.wait_until_finished()
    except OSError as e:
      raise CheckpointError(f'Finishing a checkpoint in {self.directory} failed: {e}. Earlier '
                            'checkpoints are intact; free disk space or choose another '
                            '--workdir, then rerun the same command to resume.') from e

  def check_compatible(self, step, config):
    """Refuses to resume when model/data fields differ from those of the checkpoint."""
    try:
      meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      saved = meta['meta']
    except Exception:  # older or partial meta: the restore itself will check shapes
      return
    now = _flatten(json.loads(json.dumps(_shape_fields(config))))
    then = _flatten({k: saved[k] for k in ('model', 'data') if k in saved})
    diff = sorted(k for k in set(now) | set(then)
                  if now.get(k) != then.get(k) and k not in IMPLEMENTATION_FIELDS)
    if diff:
      details = ', '.join(f'{k}: checkpoint {then.get(k)!r} vs config {now.get(k)!r}'
                          for k in diff)
      raise ConfigError(
          f'The workdir {os.path.dirname(self.directory)} holds a checkpoint (step {step}) of '
          f'a different model/data config ({details}). Use the original config, or a fresh '
          '--workdir to start a new run.')

  def restore_latest(self, abstract_state, config):
    """Restores the newest checkpoint that reads back completely.

    A checkpoint that fails to restore (half-written, corrupted) is reported by
    path, moved aside to WORKDIR/corrupted_checkpoints/ (never deleted), and the
    previous one is used. Returns (state, step), or (None, None) when there is
    no checkpoint.
    """
    steps = self.all_steps()
    if not steps:
      return None, None
    self.check_compatible(steps[-1], config)
    moved = False
    try:
      for step in reversed(steps):
        try:
          restored = self.manager.restore(
              step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
          return restored['state'], step
        except Exception as e:  # pylint: disable=broad-except
          moved |= self._set_aside(step, e)
    finally:
      if moved:  # the manager caches its list of steps
        self.manager = ocp.CheckpointManager(self.directory, options=self.options,
                                             item_names=('state', 'meta'))
    raise CheckpointError(f'No checkpoint in {self.directory} could be restored '
                          f'(tried steps {steps}); they were moved to '
                          f'{self.corrupted_dir}. Start afresh or restore them by hand.')

  def _set_aside(self, step, error):
    path = os.path.join(self.directory, str(step))
    os.makedirs(self.corrupted_dir, exist_ok=True)
    target = os.path.join(self.corrupted_dir, f'{step}-{int(time.time())}')
    reason = f'{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ""}'
    logging.warning('Checkpoint %s could not be restored (%s).', path, reason)
    if jax.process_index() == 0 and os.path.exists(path):
      shutil.move(path, target)
    print(f'WARNING: checkpoint {path} is incomplete or corrupted ({reason}); moved it to '
          f'{target} and falling back to the previous checkpoint.', flush=True)
    return True
