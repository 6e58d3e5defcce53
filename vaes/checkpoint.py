"""Orbax checkpoints of the whole train state, resumed automatically from workdir.

The train state holds the step, so the data position (batches are a pure
function of (seed, step)) and the per-step randomness (fold_in(rng, step)) are
restored with it. Each checkpoint also stores a JSON `meta` item: the whole
resolved config and a checksum of every saved array.

What a restore tells apart:
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

WORKDIR/checkpoints holds the latest checkpoints (resumed from); WORKDIR/best,
when config.eval.select_metric is set, the one of the best evaluation during
training (vaes.train.BestCheckpoint), with its metric in the meta item. The meta
item also records the training wall time up to the checkpoint
('train_wall_time_s', over every run of the workdir) and the run it belongs to
('run': {'id', 'started'}, set at the run's first start and kept by its resumes), so
that a best checkpoint of an earlier run in the same workdir is told apart.
"""

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from vaes import fs
from vaes.registry import ConfigError, get_family


class CheckpointError(RuntimeError):
  pass



def implementation_fields(config):
  """The family's fields that choose how the same function is computed (speed and
  memory only): a run may resume with other values. `config` is a plain dict."""
  name = config.get('model', {}).get('name', '')
  try:
    return _ENGINE_IMPLEMENTATION_FIELDS | frozenset(get_family(name).implementation_fields)
  except ConfigError:
    return _ENGINE_IMPLEMENTATION_FIELDS

# The engine's own such fields (vaes/xla_options.py).
_ENGINE_IMPLEMENTATION_FIELDS = frozenset({'cpu_convolutions'})

# Fields that change neither the state nor the trained function: a finished run
# re-run with other values of these is still the same run.
_CADENCE_FIELDS = frozenset({'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
                             'max_checkpoints_to_keep', 'steps_per_dispatch', 'profile_steps'})


# Data fields that choose only what the evaluations report (the split eval.py and the
# evaluations during training run on), like config.eval.*: neither the trained state nor
# the trained function. eval.py and a resume compare neither with the run's.
EVAL_DATA_FIELDS = frozenset({'data.eval_split'})


def is_eval_field(name):
  """Whether the dotted config field `name` is evaluation-only (config.eval.*,
  config.data.eval_split)."""
  return name.startswith('eval.') or name in EVAL_DATA_FIELDS


def config_dict(config):
  """The config as plain JSON values (tuples become lists)."""
  return json.loads(config.to_json_best_effort())


def flatten(d, prefix=''):
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  out = {}
  for k, v in d.items():
    key = f'{prefix}{k}'
    if isinstance(v, dict) and v:
      out.update(flatten(v, key + '.'))
    else:
      out[key] = v
  return out


def config_diff(then, now, ignore=None):
  """Sorted [(field, checkpoint value, config value)] of the fields that differ
  (implementation-only fields of the family aside, unless `ignore` is given)."""
  ignore = implementation_fields(now) if ignore is None else ignore
  then, now = flatten(then), flatten(now)
  # Fields added after the checkpoint was written (absent there) keep their defaults.
  return [(k, then.get(k), now.get(k)) for k in sorted(then)
          if then.get(k) != now.get(k) and k not in ignore]


def describe_diff(diff, limit=12):
  text = ', '.join(f'{k}: checkpoint {a!r} vs config {b!r}' for k, a, b in diff[:limit])
  return text + (f' (and {len(diff) - limit} more)' if len(diff) > limit else '')


def finished_run_diff(then, now):
  """The differing fields that would make a finished run a different run."""
  return [(k, a, b) for k, a, b in config_diff(then, now)
          if k not in _CADENCE_FIELDS and not is_eval_field(k)]


def other_run_diff(then, now):
  """The differing fields that make the checkpoint of config `then` part of another run
  than `now`'s: those of `finished_run_diff` but config.num_train_steps (a resume may
  extend a run)."""
  return [d for d in finished_run_diff(then, now) if d[0] != 'num_train_steps']


def _state_suspects(diff):
  """The fields of `diff` that can change the train state's structure (not the cadence,
  the length of the run or the evaluation); all of `diff` when none is left."""
  kept = [d for d in diff if d[0] not in _CADENCE_FIELDS and d[0] != 'num_train_steps'
          and not is_eval_field(d[0])]
  return kept or diff


def new_run():
  """{'id', 'started'} of a run that starts now (process 0's on every process)."""
  values = np.array([int.from_bytes(os.urandom(4), 'little') >> 1,
                     int.from_bytes(os.urandom(4), 'little') >> 1, int(time.time())], np.int32)
  if jax.process_count() > 1:
    values = np.asarray(multihost_utils.broadcast_one_to_all(values))
  started = datetime.datetime.fromtimestamp(int(values[2]), datetime.timezone.utc)
  return {'id': f'{int(values[0]):08x}{int(values[1]):08x}',
          'started': started.isoformat(timespec='seconds')}


def describe_run(run):
  run = run or {}
  return f"run {run.get('id')} (started {run.get('started')})" if run.get('id') else \
      'a run without a recorded id (written before runs had one)'


def weights_note(info, config):
  """One line when the weights a checkpoint is evaluated with (its own: info['weights'],
  info['ema_decay']) are not what `config.ema_decay` would suggest; else None."""
  decay = float(config.get('ema_decay', 0.0) or 0.0)
  if info['weights'] == 'ema':
    if decay == info['ema_decay']:
      return None
    return (f"Note: the checkpoint was trained with config.ema_decay={info['ema_decay']!r}: "
            f'evaluating the moving average of its weights (this command says '
            f'config.ema_decay={decay!r}, which does not choose the weights).')
  if decay > 0:
    return (f'Note: the checkpoint holds no moving average of its weights (its run had '
            f'config.ema_decay={info["ema_decay"]!r}): evaluating its parameters (this '
            f'command says config.ema_decay={decay!r}, which does not choose the weights).')
  return None


# ----------------------------------------------------------------------------
# Trees: paths, host copies, checksums.
# ----------------------------------------------------------------------------


def _key_name(k):
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _path(path):
  return '/'.join(_key_name(k) for k in path)


def _leaves(tree):
  """{path: leaf} with path strings that agree between a TrainState and the
  dict/list tree Orbax keeps in its metadata."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {_path(p): x for p, x in flat}


def _host(x):
  """A numpy copy of this process's replica of a (replicated) array."""
  if isinstance(x, jax.Array):
    x = x.addressable_shards[0].data
  return np.asarray(x)


def _checksum(a):
  h = hashlib.blake2b(digest_size=16)
  h.update(f'{a.dtype.str}{a.shape}'.encode())
  h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def checksums(host_leaves):
  return {p: _checksum(a) for p, a in host_leaves.items()}


def nonfinite_parameters(host_leaves):
  """(number of non-finite values, number of values) under params/ and model_state/."""
  bad = total = 0
  for p, a in host_leaves.items():
    if p.split('/')[0] in ('params', 'model_state', 'ema_params') and \
        np.issubdtype(a.dtype, np.floating):
      bad += int(a.size - np.count_nonzero(np.isfinite(a)))
      total += a.size
  return bad, total


def _signature(leaf):
  return tuple(int(d) for d in leaf.shape), np.dtype(leaf.dtype).name


_ABSENT = object()   # no such entry (in _structure_diff)


def _structure(tree):
  """The nesting of `tree` without its arrays, as Orbax keeps it in a checkpoint's
  metadata: 'array' for a leaf, None for an empty entry (None, (), {}, optax's
  EmptyState), a tuple of the entries of a sequence, a dict of the rest (dicts,
  dataclasses, named tuples) by key. A TrainState and the dict/list tree of a saved
  one give the same structure when they are of the same structure."""
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is not tree)[0]
  if len(flat) == 1 and not flat[0][0]:
    return 'array'
  if not flat:
    return None
  if all(isinstance(p[0], jax.tree_util.SequenceKey) for p, _ in flat):
    return tuple(_structure(x) for _, x in flat)
  return {_key_name(p[0]): _structure(x) for p, x in flat}


def _describe_structure(node):
  if node is _ABSENT:
    return 'no such entry'
  if node is None:
    return 'an empty entry'
  if node == 'array':
    return 'an array'
  if isinstance(node, tuple):
    return f'a list of {len(node)} entries'
  keys = sorted(node)
  return f"the fields {', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''}"


def _structure_diff(theirs, ours, path=''):
  """[(path, checkpoint's structure, config's structure)] where they differ."""
  if theirs == ours:
    return []
  if isinstance(theirs, dict) and isinstance(ours, dict):
    out = []
    for k in sorted(set(theirs) | set(ours)):
      p = f'{path}/{k}' if path else k
      out += _structure_diff(theirs.get(k, _ABSENT), ours.get(k, _ABSENT), p)
    return out
  if isinstance(theirs, tuple) and isinstance(ours, tuple) and len(theirs) == len(ours):
    out = []
    for i, (a, b) in enumerate(zip(theirs, ours)):
      out += _structure_diff(a, b, f'{path}/{i}' if path else str(i))
    return out
  return [(path, theirs, ours)]


def _is_structure_error(e):
  """Orbax's ValueError for a restore target of another tree structure than the saved
  one: a config that differs, never damage."""
  return isinstance(e, ValueError) and 'tree structure' in str(e).lower()


class _Damaged(Exception):
  """A checkpoint that does not read back as it was written."""


LATEST_DIR = 'checkpoints'   # WORKDIR/checkpoints: the latest ones, resumed from
BEST_DIR = 'best'            # WORKDIR/best: the best by config.eval.select_metric


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` in `workdir/checkpoints` (or
  `workdir/{subdir}`).

  `workdir` is a local path, a file:// URL (both given to Orbax as absolute local
  paths) or a gs:// URL (given as it is; Orbax reads and writes it through epath and
  tensorstore). `read_only=True` (evaluation, code extraction) creates nothing: a workdir
  without checkpoints is an error naming the command that makes them."""

  def __init__(self, workdir, max_to_keep=3, async_save=True, read_only=False,
               subdir=LATEST_DIR):
    self.workdir = workdir
    self.read_only = read_only
    # Orbax takes absolute local paths and gs:// URLs (fs.resolve).
    self.directory = fs.resolve(fs.join(workdir, subdir))
    self.corrupted_dir = fs.join(fs.resolve(workdir), 'corrupted_checkpoints')
    if not isinstance(max_to_keep, int) or max_to_keep < 1:
      raise ConfigError(f'config.max_checkpoints_to_keep={max_to_keep!r}: must be a positive '
                        'integer (1 keeps only the latest checkpoint).')
    if read_only:
      if not fs.isdir(self.directory):
        raise CheckpointError(f'No checkpoint in {self.directory}: train first with '
                              f'`python train.py --config=... --workdir={workdir}`.')
    else:
      try:
        fs.makedirs(self.directory)
      except OSError as e:
        raise CheckpointError(f'Cannot create the checkpoint directory {self.directory}: {e}. '
                              'Choose a writable --workdir.') from e
      if fs.is_local(self.directory) and not os.access(self.directory, os.W_OK):
        raise CheckpointError(f'The checkpoint directory {self.directory} is not writable; '
                              'choose a writable --workdir.')
    self.options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=not read_only, enable_async_checkpointing=async_save,
        read_only=read_only)
    self.manager = self._manager()

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
    training run saves and deletes steps while eval.py reads. A step deleted while it
    is listed makes the listing fail; it is retried."""
    for attempt in range(5):
      try:
        self.manager.reload()
        return
      except Exception as e:  # pylint: disable=broad-except
        if attempt == 4:
          raise CheckpointError(f'Listing the checkpoints in {self.directory} failed: '
                                f'{_reason(e)}.') from e
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
                          self.directory, step, _reason(e))
          return step, {}
    return None, {}

  def corrupted(self):
    """Checkpoints set aside earlier in WORKDIR/corrupted_checkpoints/."""
    return fs.listdir(self.corrupted_dir) if fs.isdir(self.corrupted_dir) else []

  # --------------------------------------------------------------------------
  # Save.
  # --------------------------------------------------------------------------

  def save(self, step, state, config, force=False, extra_meta=None):
    """Saves `state` with its config, per-array checksums and `extra_meta` (a dict
    of JSON values: wall time, selection) in the meta item. A state whose
    parameters hold NaN/inf is never saved (CheckpointError)."""
    host = {p: _host(x) for p, x in _leaves(state).items()}
    bad, total = nonfinite_parameters(host)
    if bad:
      raise CheckpointError(
          f'The state at step {step} has {bad:,} non-finite parameter values (of {total:,}); '
          f'it was not saved and the earlier checkpoints in {self.directory} are intact. Lower '
          'config.learning_rate or set config.grad_clip_norm, then rerun.')
    meta = {**(extra_meta or {}), 'step': int(step), 'config': config_dict(config),
            'checksums': checksums(host)}
    try:
      return self.manager.save(
          int(step), force=force,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  meta=ocp.args.JsonSave(meta)))
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(f'Saving the checkpoint of step {step}', e) from e

  def delete(self, step):
    self.manager.delete(int(step))

  def wait(self):
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error('Finishing a checkpoint', e) from e

  def _write_error(self, what, e):
    # Orbax's writer (tensorstore) reports a full disk as ValueError('RESOURCE_EXHAUSTED: ...
    # No space left on device'), not as OSError.
    first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
    return CheckpointError(f'{what} in {self.directory} failed: {first}. Earlier checkpoints are '
                           'intact; free disk space or choose another --workdir, then rerun '
                           'the same command to resume.')

  # --------------------------------------------------------------------------
  # Restore.
  # --------------------------------------------------------------------------

  def read_meta(self, step):
    """The JSON meta item of `step` ({} for checkpoints written without one)."""
    return self.manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta'] or {}

  def restore_latest(self, abstract_state, config):
    """The newest checkpoint that reads back whole -> (state, step, saved config),
    or (None, None, None) when there is none. See the module docstring."""
    found = self._restore(abstract_state, config, None)
    return (found[0], found[1], found[2]['config']) if found else (None, None, None)

  def restore_variables(self, abstract_variables, config, sharding=None):
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
    recorded)}; (None, None, None) without checkpoints."""
    abstract_variables = {k: v for k, v in abstract_variables.items() if k != 'ema_params'}
    if sharding is None:
      sharding = jax.tree.leaves(abstract_variables)[0].sharding
    found = self._restore(abstract_variables, config, sharding)
    if not found:
      return None, None, None
    restored, step, info = found
    names = list(abstract_variables) + (['ema_params'] if info['weights'] == 'ema' else [])
    variables = {k: restored[k] for k in names}
    info['checksums'] = {p: c for p, c in info['checksums'].items()
                         if p.split('/')[0] in variables}
    return variables, step, info

  def _restore(self, abstract, config, variables_sharding):
    self.refresh()   # the steps as they are now, not when this Checkpointer was made
    steps = self.all_steps()
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
        restored, info = self._restore_step(step, abstract, now, variables_sharding)
        return restored, step, info
      except _Damaged as e:
        self.refresh()
        steps = self.all_steps()
        if self._vanished(step, steps):
          continue
        if self.read_only:
          self._leave_in_place(step, str(e))
          left.append(step)
        else:
          self._set_aside(step, str(e))
          moved.append(step)
          self.refresh()
          steps = self.all_steps()
    if not moved and not left:
      return None   # every step listed was deleted meanwhile, and none is left
    where = []
    if moved:
      where.append(f'{_steps(moved)} moved to {self.corrupted_dir}')
    if left:
      where.append(f'{_steps(left)} left in place (eval.py moves nothing; the next train.py '
                   'in this workdir sets damaged checkpoints aside)')
    raise CheckpointError(f'No checkpoint in {self.directory} could be restored (tried steps '
                          f'{sorted(tried)}; {"; ".join(where)}). Start afresh or restore '
                          'them by hand.')

  def _vanished(self, step, steps):
    """Whether `step`, which failed to read, is gone rather than damaged: deleted since it
    was listed, or (read-only) superseded by a newer step, i.e. being deleted by a live
    training run as it keeps config.max_checkpoints_to_keep."""
    if step not in steps or not fs.exists(fs.join(self.directory, str(step))):
      return True
    return self.read_only and steps[-1] > step

  def _restore_step(self, step, abstract, now, variables_sharding):
    """Restores `step` into `abstract` (a TrainState), or, with `variables_sharding`,
    the saved tree with `abstract`'s params and model_state (and the saved moving
    average of the params, when there is one) in it."""
    variables_only = variables_sharding is not None
    try:
      meta = self.read_meta(step)
      saved_tree = self.manager.item_metadata(step)['state']
      saved_tree = getattr(saved_tree, 'tree', saved_tree)
    except Exception as e:  # pylint: disable=broad-except
      raise _Damaged(_reason(e)) from e
    if not saved_tree:
      raise _Damaged('no array metadata')
    saved = meta.get('config') or {k: meta[k] for k in ('model', 'data') if k in meta}
    self._check_model_data(step, saved, now)
    full = meta.get('config') or {}

    weights = 'params'
    if variables_only:
      # The weights to evaluate are the checkpoint's: its moving average when it kept one.
      if _structure(saved_tree.get('ema_params')) is not None:
        abstract, weights = {**abstract, 'ema_params': abstract['params']}, 'ema'
      theirs_structure = {k: _structure(saved_tree.get(k)) for k in abstract}
      differ = _structure_diff(theirs_structure, _structure(abstract))
    else:
      theirs_structure, ours_structure = _structure(saved_tree), _structure(abstract)
      # A field added to the TrainState since the checkpoint was written (e.g. ema_params)
      # holds nothing here and keeps its value in `abstract` (None).
      differ = [(p, a, b) for p, a, b in _structure_diff(theirs_structure, ours_structure)
                if not ('/' not in p and a is _ABSENT and b is None)]
    ours = {p: _signature(x) for p, x in _leaves(abstract).items()}
    theirs = {p: _signature(x) for p, x in _leaves(saved_tree).items()}
    if variables_only:
      mismatch = sorted(p for p in set(ours) if ours[p] != theirs.get(p))
    else:
      mismatch = sorted(p for p in set(ours) | set(theirs) if ours.get(p) != theirs.get(p))
    if differ or mismatch:
      raise self._structure_error(step, full, now, differ, mismatch, ours, theirs,
                                  variables_only)

    if variables_only:
      target = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=variables_sharding),
          saved_tree)
      target = {**target, **{k: v for k, v in abstract.items() if k in target}}
    else:
      target = {f.name: getattr(abstract, f.name) for f in dataclasses.fields(abstract)
                if f.name in saved_tree}
    try:
      restored = self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))['state']
    except Exception as e:  # pylint: disable=broad-except
      if _is_structure_error(e):   # another structure is a config that differs, not damage
        raise self._structure_error(step, full, now, [], [], ours, theirs, variables_only,
                                    detail=_first_line(e)) from e
      raise _Damaged(_reason(e)) from e
    if not variables_only:
      restored = abstract.replace(**restored)
    host = {p: _host(x) for p, x in _leaves(restored).items()}
    sums = checksums(host)
    expected = meta.get('checksums')
    if expected is not None:
      wrong = sorted(p for p, c in sums.items() if expected.get(p) != c)
      if wrong:
        raise _Damaged(f'checksum mismatch in {len(wrong)} array(s), e.g. {wrong[0]}')
    bad, total = nonfinite_parameters(host)
    if bad:
      raise _Damaged(f'{bad:,} of {total:,} parameter values are NaN/inf')
    decay = full.get('ema_decay')
    return restored, {'config': full or saved, 'checksums': sums, 'meta': meta,
                      'weights': weights, 'ema_decay': None if decay is None else float(decay)}

  def _check_model_data(self, step, saved, now):
    """Refuses a checkpoint of different model/data fields (nothing is moved); the
    evaluation-only ones (config.data.eval_split) may differ."""
    if not saved:
      return
    pick = lambda d: {k: d[k] for k in ('model', 'data') if k in d}
    diff = [d for d in config_diff(pick(saved), pick(now)) if not is_eval_field(d[0])]
    if diff:
      raise ConfigError(
          f'The workdir {self.workdir} holds a checkpoint (step {step}) of '
          f'a different model/data config ({describe_diff(diff)}). Use the original config, or '
          'a fresh --workdir to start a new run.')

  def _structure_error(self, step, saved, now, differ, mismatch, ours, theirs, variables_only,
                       detail=None):
    """The ConfigError of a checkpoint whose tree has another structure than the
    config's: `differ` from _structure_diff, `mismatch` the array paths of other shapes,
    `detail` Orbax's own words."""
    diff = _state_suspects(config_diff(saved, now)) if saved else []
    parts = [detail] if detail else []
    parts += [f'{p or "state"}: checkpoint {_describe_structure(a)} vs config '
              f'{_describe_structure(b)}' for p, a, b in differ[:3]]
    parts += [f'{p} (checkpoint {theirs.get(p)}, config {ours.get(p)})'
              for p in mismatch[:max(0, 3 - len(parts))]]
    fields = (f'fields that differ: {describe_diff(diff)}' if diff else
              'no config field is recorded as different')
    hint = ('' if variables_only else
            ' eval.py reads only the parameters and works with any optimiser fields.')
    return ConfigError(
        f'The checkpoint of step {step} in {self.directory} holds a train state of another '
        f'structure than this config builds ({fields}; state: {"; ".join(parts)}). Nothing '
        'was moved: rerun with the original values, or use a fresh --workdir for a new '
        f'run.{hint}')

  def _set_aside(self, step, reason):
    """Moves the damaged `step` to WORKDIR/corrupted_checkpoints/ (process 0) and says so."""
    path = fs.join(self.directory, str(step))
    target = fs.join(self.corrupted_dir, f'{step}-{int(time.time())}')
    logging.warning('Checkpoint %s could not be restored (%s).', path, reason)
    if jax.process_index() != 0:
      return
    fs.makedirs(self.corrupted_dir)
    fs.replace(path, target)
    print(f'WARNING: checkpoint {path} is incomplete or corrupted ({reason}); moved it to '
          f'{target} and falling back to the previous checkpoint.', flush=True)

  def _leave_in_place(self, step, reason):
    path = fs.join(self.directory, str(step))
    logging.warning('Checkpoint %s could not be restored (%s).', path, reason)
    if jax.process_index() == 0:
      print(f'WARNING: checkpoint {path} is incomplete or corrupted ({reason}); left it in '
            'place (reading moves nothing; the next train.py in this workdir sets it aside) '
            'and falling back to the previous checkpoint.', flush=True)

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


def _steps(steps):
  return f'step{"s" if len(steps) > 1 else ""} {", ".join(map(str, sorted(steps)))}'


def _first_line(e):
  return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def _reason(e):
  return f'{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}'
