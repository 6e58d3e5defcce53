"""Restoring the newest checkpoint that reads back whole, by one of two paths:
`restore_latest`, the whole train state (a resume), and `restore_variables`, the
parameters and model state (evaluation, second stages). Both are reached as methods of
vaes.checkpoint.Checkpointer, whose Orbax I/O they use.

What a restore tells apart (both paths):
- a different model/data config, or a state of another structure (an optimiser
  field changed, e.g. adam <-> adamw, whose states differ only by an empty entry):
  refused with the differing fields named; nothing is moved. The saved tree's
  structure (its nesting, empty entries included, not only its array paths) is
  compared with the config's before anything is read, and an Orbax structure error
  is never taken for damage;
- a step that vanished after it was listed (deleted by a live training run's
  config.max_checkpoints_to_keep while eval.py reads): not damage; the steps are
  listed again and the newest that exists is taken;
- damage (bytes that do not read back as written: half-written, unreadable,
  checksum mismatch, non-finite parameters): the checkpoint is reported, moved to
  WORKDIR/corrupted_checkpoints/ (never deleted) and the previous one is tried. A
  read-only Checkpointer (eval.py, second stages) moves nothing: it reports the
  step, leaves it in place (the next train.py sets it aside) and tries the previous.
Evaluation restores the parameters and model state only, whatever the optimiser
fields say; which weights it evaluates follows from the checkpoint, not from the
evaluating command's config: their moving average (`ema_params`) when the run kept
one (it was trained with config.ema_decay > 0), else the parameters.
"""

import dataclasses
import functools

import jax

from vaes import checkpoint_integrity as integrity
from vaes import fs
from vaes.errors import CheckpointError, ConfigError
from vaes.run_config import (WEIGHTS_EMA, config_dict, config_diff, describe_diff,
                             model_data_diff, state_suspects)

# Said when a resume is refused for a state of another structure.
_EVAL_HINT = ' eval.py reads only the parameters and works with any optimiser fields.'


def restore_latest(checkpointer, abstract_state, config):
  """The newest checkpoint that reads back whole -> (state, step, saved config),
  or (None, None, None) when there is none. See the module docstring."""
  found = _newest(checkpointer, config,
                  lambda step, now: _state_step(checkpointer, step, abstract_state, now))
  return (found[0], found[1], found[2]['config']) if found else (None, None, None)


def restore_variables(checkpointer, abstract_variables, config, sharding=None,
                      same_model=True):
  """For evaluation and second stages: restores only what the model needs.

  `abstract_variables` = {'params': ..., 'model_state': ...} of ShapeDtypeStructs
  (with shardings); only these must match the config, the optimiser state is read as
  it was saved (placed with `sharding`, default that of the first variable).

  Which weights to evaluate follows from the checkpoint, not from `config`: when it
  holds a moving average of the parameters (its run had config.ema_decay > 0), that
  is restored too, as 'ema_params' (shaped as 'params'); an 'ema_params' entry of
  `abstract_variables` is ignored. Returns (variables, step, info) with variables
  holding 'params', 'model_state' (and 'ema_params' when kept), info = {'config':
  the saved config, 'checksums': {path: checksum} of the restored variables, 'meta':
  the checkpoint's meta item, 'weights': 'ema' (the moving average is the one to
  evaluate) or 'params', 'ema_decay': the run's config.ema_decay (None when not
  recorded)}; (None, None, None) without checkpoints.

  `same_model`: a checkpoint of other config.model / config.data fields is refused (a
  ConfigError naming them); False (fine-tuning, config.init_from) reads any checkpoint
  whose variables have the structure, shapes and dtypes of `abstract_variables`."""
  abstract_variables = {k: v for k, v in abstract_variables.items() if k != 'ema_params'}
  if sharding is None:
    sharding = jax.tree.leaves(abstract_variables)[0].sharding
  found = _newest(checkpointer, config, lambda step, now: _variables_step(
      checkpointer, step, abstract_variables, now, sharding, same_model))
  if not found:
    return None, None, None
  restored, step, info = found
  names = list(abstract_variables) + (['ema_params'] if info['weights'] == 'ema' else [])
  variables = {k: restored[k] for k in names}
  info['checksums'] = {p: c for p, c in info['checksums'].items()
                       if p.split('/')[0] in variables}
  return variables, step, info


# ----------------------------------------------------------------------------
# The two ways to read one step.
# ----------------------------------------------------------------------------


def _state_step(checkpointer, step, abstract, now):
  """Restores `step` into `abstract` (a TrainState): the whole saved tree must have the
  structure, shapes and dtypes the config builds. -> (state, info)."""
  meta, saved_tree = _read_saved(checkpointer, step, now)
  # A field added to the TrainState since the checkpoint was written (e.g. ema_params)
  # holds nothing here and keeps its value in `abstract` (None).
  differ = [(p, a, b) for p, a, b in integrity.structure_diff(integrity.structure(saved_tree),
                                                              integrity.structure(abstract))
            if not ('/' not in p and a is integrity.ABSENT and b is None)]
  ours, theirs = integrity.signatures(abstract), integrity.signatures(saved_tree)
  mismatch = sorted(p for p in set(ours) | set(theirs) if ours.get(p) != theirs.get(p))
  refuse = functools.partial(_structure_error, checkpointer, step, meta, now, hint=_EVAL_HINT)
  if differ or mismatch:
    raise refuse(differ, _mismatches(mismatch, ours, theirs))
  target = {f.name: getattr(abstract, f.name) for f in dataclasses.fields(abstract)
            if f.name in saved_tree}
  restored = abstract.replace(**_read(checkpointer, step, target, refuse))
  return restored, _verified(restored, meta, 'params')


def _variables_step(checkpointer, step, abstract, now, sharding, same_model=True):
  """Restores the saved tree of `step` with `abstract`'s params and model_state (and the
  saved moving average of the params, when there is one) in it; only these must match
  the config, the rest is read as saved, placed with `sharding`. -> (tree, info)."""
  meta, saved_tree = _read_saved(checkpointer, step, now, same_model)
  weights = 'params'
  # The weights to evaluate are the checkpoint's: its moving average when it kept one.
  if integrity.structure(saved_tree.get('ema_params')) is not None:
    abstract, weights = {**abstract, 'ema_params': abstract['params']}, 'ema'
  differ = integrity.structure_diff({k: integrity.structure(saved_tree.get(k)) for k in abstract},
                                    integrity.structure(abstract))
  ours, theirs = integrity.signatures(abstract), integrity.signatures(saved_tree)
  mismatch = sorted(p for p in set(ours) if ours[p] != theirs.get(p))
  refuse = functools.partial(_structure_error, checkpointer, step, meta, now, hint='')
  if differ or mismatch:
    raise refuse(differ, _mismatches(mismatch, ours, theirs))
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                        saved_tree)
  target = {**target, **{k: v for k, v in abstract.items() if k in target}}
  restored = _read(checkpointer, step, target, refuse)
  return restored, _verified(restored, meta, weights)


# ----------------------------------------------------------------------------
# What both paths share.
# ----------------------------------------------------------------------------


def _newest(checkpointer, config, read_step):
  """Tries the listed steps newest first with read_step(step, config as a dict) ->
  (restored, info) until one reads back whole -> (restored, step, info); None without
  checkpoints. Damaged steps are set aside (or, read-only, left in place); a step that
  vanished meanwhile is skipped. CheckpointError when every step was damaged."""
  checkpointer.refresh()   # the steps as they are now, not when the Checkpointer was made
  steps = checkpointer.all_steps()
  if not steps:
    return None
  now = config_dict(config)
  tried, moved, left = [], [], []
  while True:
    untried = [s for s in steps if s not in tried]
    if not untried:
      break
    step = untried[-1]
    tried.append(step)
    try:
      restored, info = read_step(step, now)
      return restored, step, info
    except integrity.Damaged as e:
      checkpointer.refresh()
      steps = checkpointer.all_steps()
      if _vanished(checkpointer, step, steps):
        continue
      if checkpointer.read_only:
        integrity.leave_in_place(checkpointer.directory, step, str(e))
        left.append(step)
      else:
        integrity.set_aside(checkpointer.directory, checkpointer.corrupted_dir, step, str(e))
        moved.append(step)
        checkpointer.refresh()
        steps = checkpointer.all_steps()
  if not moved and not left:
    return None   # every step listed was deleted meanwhile, and none is left
  where = []
  if moved:
    where.append(f'{integrity.describe_steps(moved)} moved to {checkpointer.corrupted_dir}')
  if left:
    where.append(f'{integrity.describe_steps(left)} left in place (eval.py moves nothing; the '
                 'next train.py in this workdir sets damaged checkpoints aside)')
  raise CheckpointError(f'No checkpoint in {checkpointer.directory} could be restored (tried '
                        f'steps {sorted(tried)}; {"; ".join(where)}). Start afresh or restore '
                        'them by hand.')


def _vanished(checkpointer, step, steps):
  """Whether `step`, which failed to read, is gone rather than damaged: deleted since it
  was listed, or (read-only) superseded by a newer step, i.e. being deleted by a live
  training run as it keeps config.max_checkpoints_to_keep."""
  if step not in steps or not fs.exists(fs.join(checkpointer.directory, str(step))):
    return True
  return checkpointer.read_only and steps[-1] > step


def _read_saved(checkpointer, step, now, same_model=True):
  """(meta item, saved tree's metadata) of `step`, read before any array. Damaged when
  they do not read; with `same_model`, ConfigError for a checkpoint of other model/data
  fields (the evaluation-only ones, config.data.eval_split, may differ; nothing is moved)."""
  try:
    meta = checkpointer.read_meta(step)
    saved_tree = checkpointer.saved_tree(step)
  except Exception as e:  # pylint: disable=broad-except
    raise integrity.Damaged(integrity.reason(e)) from e
  if not saved_tree:
    raise integrity.Damaged('no array metadata')
  saved = meta.get('config') or {k: meta[k] for k in ('model', 'data') if k in meta}
  diff = model_data_diff(saved, now) if saved and same_model else []
  if diff:
    raise ConfigError(
        f'The workdir {checkpointer.workdir} holds a checkpoint (step {step}) of '
        f'a different model/data config ({describe_diff(diff)}). Use the original config, or '
        'a fresh --workdir to start a new run.')
  return meta, saved_tree


def _read(checkpointer, step, target, refuse):
  """The arrays of `step` as `target`; an Orbax structure error is refuse(...)'s
  ConfigError (a config that differs), any other failure is damage."""
  try:
    return checkpointer.restore_state(step, target)
  except Exception as e:  # pylint: disable=broad-except
    if integrity.is_structure_error(e):   # another structure is a config that differs
      raise refuse([], [], detail=integrity.first_line(e)) from e
    raise integrity.Damaged(integrity.reason(e)) from e


def _verified(restored, meta, weights):
  """The info of a restored tree whose checksums and parameters are checked (Damaged
  otherwise); `weights`: which weights to evaluate, 'ema' or 'params'."""
  sums = integrity.verify(integrity.host_leaves(restored), meta.get('checksums'))
  full = meta.get('config') or {}
  saved = full or {k: meta[k] for k in ('model', 'data') if k in meta}
  decay = full.get(WEIGHTS_EMA)
  return {'config': saved, 'checksums': sums, 'meta': meta, 'weights': weights,
          'ema_decay': None if decay is None else float(decay)}


def _mismatches(paths, ours, theirs):
  """'path (checkpoint (shape, dtype), config (shape, dtype))' of each of `paths`."""
  return [f'{p} (checkpoint {theirs.get(p)}, config {ours.get(p)})' for p in paths]


def _structure_error(checkpointer, step, meta, now, differ, mismatches, hint, detail=None):
  """The ConfigError of a checkpoint whose tree has another structure than the
  config's: `differ` from structure_diff, `mismatches` the arrays of other shapes (see
  _mismatches), `detail` Orbax's own words, `hint` what else may work."""
  saved = meta.get('config') or {}
  diff = state_suspects(config_diff(saved, now)) if saved else []
  parts = [detail] if detail else []
  parts += [f'{p or "state"}: checkpoint {integrity.describe_structure(a)} vs config '
            f'{integrity.describe_structure(b)}' for p, a, b in differ[:3]]
  parts += mismatches[:max(0, 3 - len(parts))]
  fields = (f'fields that differ: {describe_diff(diff)}' if diff else
            'no config field is recorded as different')
  return ConfigError(
      f'The checkpoint of step {step} in {checkpointer.directory} holds a train state of '
      f'another structure than this config builds ({fields}; state: {"; ".join(parts)}). '
      f'Nothing was moved: rerun with the original values, or use a fresh --workdir for a '
      f'new run.{hint}')
