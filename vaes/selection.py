"""Checkpoint selection: the evaluations during training that choose the checkpoint
eval.py reports (config.eval.select_metric on config.eval.select_split), and the best
one kept in WORKDIR/best (`BestCheckpoint`)."""

import copy
import dataclasses
import math

import jax

from vaes import data as data_lib
from vaes import fs
from vaes.checkpoint import BEST_DIR, Checkpointer
from vaes.errors import ConfigError
from vaes.registry import get_family
from vaes.run_config import config_dict, describe_diff, describe_run, other_run_diff


def selection_config(config):
  """The config of the evaluations that choose the best checkpoint: the family's
  `selection_eval` (e.g. config.eval.select_num_importance_samples importance samples
  instead of eval.num_importance_samples, so that frequent selection evaluations stay
  cheap while eval.py reports the full count), else `config` itself."""
  family = get_family(config.model.name)
  return config if family.selection_eval is None else family.selection_eval(config)


def selection_splits(config, splits):
  """`splits` with the evaluation source of config.eval.select_split: the data builder
  run again with data.eval_split = select_split (the datasets are in memory, or read
  lazily, so a second build is cheap)."""
  split, metric = config.eval.select_split, config.eval.select_metric
  chosen = copy.deepcopy(config)
  with chosen.unlocked():
    chosen.data.eval_split = split
  why = (f"config.eval.select_metric='{metric}' selects checkpoints on "
         f"config.eval.select_split='{split}'")
  if split == 'train':
    raise ConfigError(f"{why}: the training images favour the most overfit checkpoint; "
                      "select on --config.eval.select_split=valid.")
  try:
    built = data_lib.get_datasets(chosen)
  except data_lib.DataError as e:
    raise ConfigError(f'{why}, which config.data.name=\'{config.data.name}\' cannot give: '
                      f'{e}') from e
  if built.info.eval_split != split:
    raise ConfigError(f"{why}, but config.data.name='{config.data.name}' has no such split "
                      "(it evaluates on a fixed split); set --config.eval.select_metric='' or "
                      'use a dataset with a validation split (binarized_mnist, jsb_chorales, '
                      '...).')
  return dataclasses.replace(built, train=splits.train)


# Where a best checkpoint of an earlier run of the workdir is moved (never deleted).
EARLIER_BEST_DIR = 'best_of_earlier_runs'


class BestCheckpoint:
  """The checkpoint of the best evaluation during training by config.eval.select_metric,
  in WORKDIR/best (one kept). Its meta item records 'selection': {metric, mode, split,
  value, step} and 'run', the run it belongs to. A resumed run reads the best so far
  back from there.

  The best belongs to one run: with `run` ({'id', 'started'} of this run) and `origin`
  ('fresh': this run starts at step 0; 'checkpoint': its id was read from the checkpoint
  it resumes; 'legacy': it resumes a checkpoint written before runs had ids), a best of
  another run (another id; for ids not recorded, other training fields; any best, for
  a run that starts at step 0) is moved to WORKDIR/best_of_earlier_runs/ with one line,
  and this run keeps its own from its next evaluation on. Without `run` nothing is
  checked."""

  def __init__(self, workdir, config, run=None, origin='checkpoint'):
    e = config.eval
    self.metric, self.mode, self.split = e.select_metric, e.select_mode, e.select_split
    self.checkpointer = Checkpointer(workdir, 1, subdir=BEST_DIR)
    self.value = self.step = None
    steps = self.checkpointer.all_steps()
    if steps and run is not None:
      meta = self.checkpointer.read_meta(steps[-1])
      other = _other_run(meta, run, origin, config)
      if other:
        targets = self.checkpointer.move_aside(steps, fs.join(workdir, EARLIER_BEST_DIR))
        if jax.process_index() == 0:
          found = meta.get('selection') or {}
          print(f'Note: {self.checkpointer.directory} held the best checkpoint (step '
                f'{found.get("step", steps[-1])}, {found.get("split")} {found.get("metric")}='
                f'{found.get("value")}) of another run than this one ({other}); moved it to '
                f'{", ".join(targets)}. This run keeps its own best from its next '
                'evaluation.', flush=True)
        steps = []
    if steps:
      found = self.checkpointer.read_meta(steps[-1]).get('selection') or {}
      if all(found.get(k) == v for k, v in (('metric', self.metric), ('mode', self.mode),
                                            ('split', self.split))):
        self.value, self.step = float(found['value']), int(found['step'])
      elif jax.process_index() == 0:
        print(f'Note: the best checkpoint in {self.checkpointer.directory} was chosen by '
              f'{found.get("metric")!r} ({found.get("mode")}, {found.get("split")!r}); from '
              f'now on by {self.metric!r} ({self.mode}, {self.split!r}): the next evaluation '
              'replaces it.', flush=True)

  def better(self, value):
    if not math.isfinite(value):
      return False
    if self.value is None:
      return True
    return value < self.value if self.mode == 'min' else value > self.value

  def update(self, step, state, config, metrics, extra_meta):
    """Saves `state` when metrics[select_metric] beats the best so far; True if it did."""
    if self.metric not in metrics:
      raise ConfigError(f"config.eval.select_metric='{self.metric}' is not a metric of the "
                        f"'{config.model.name}' evaluation; choose one of {sorted(metrics)}.")
    value = float(metrics[self.metric])
    if not self.better(value):
      return False
    for s in self.checkpointer.all_steps():   # a resumed run replaying past the saved best
      if s >= step:
        self.checkpointer.delete(s)
    selection = {'metric': self.metric, 'mode': self.mode, 'split': self.split,
                 'value': value, 'step': int(step)}
    self.checkpointer.save(step, state, config, force=True,
                           extra_meta={**extra_meta, 'selection': selection})
    if jax.process_index() == 0:
      before = ('' if self.value is None else
                f' (previous best {self.value:.6g} at step {self.step})')
      print(f'New best {self.split} {self.metric}={value:.6g} at step {step}{before}: saved in '
            f'{self.checkpointer.directory}.', flush=True)
    self.value, self.step = value, int(step)
    return True


def _other_run(meta, run, origin, config):
  """Why the best checkpoint of `meta` belongs to another run than `run` (one clause),
  or None when it is this run's."""
  theirs = meta.get('run') or {}
  if origin == 'fresh':
    return (f'it is of {describe_run(theirs)}; this run, {describe_run(run)}, starts at '
            'step 0')
  if theirs.get('id') and origin == 'checkpoint':
    return None if theirs['id'] == run['id'] else \
        f'it is of {describe_run(theirs)}, this one is {describe_run(run)}'
  # An id is missing on one side: the training fields tell.
  diff = other_run_diff(meta.get('config') or {}, config_dict(config))
  return f'it was trained with other settings: {describe_diff(diff)}' if diff else None
