"""The evaluation driver: restore a checkpoint, evaluate on the whole evaluation split
(config.data.eval_split), write WORKDIR/eval_metrics.json and PNG grids.

Which checkpoint (config.eval.checkpoint): 'best', the one kept in WORKDIR/best by
the best evaluation on config.eval.select_split during training; 'latest', the newest
in WORKDIR/checkpoints; 'auto' (default), 'best' when config.eval.select_metric is
set, else 'latest'. A best checkpoint of another run than the one in
WORKDIR/checkpoints (an earlier run of the workdir) is refused with one line.

Which weights are evaluated follows from the checkpoint, not from this command's
config: the moving average of the parameters when the run kept one (it was trained
with config.weights_ema_decay > 0), else the parameters. eval_metrics.json records them
('weights': 'ema' | 'params', and 'weights_ema_decay', the run's decay, for 'ema'),
the checkpoint ('checkpoint': 'best' | 'latest', 'step'), the eval fields it ran with
('eval_config': config.eval, and 'eval_data': {'eval_split', and 'eval_limit' when set},
so that a sweep tells an evaluation of other eval fields apart), the training wall time of
the run
('train_wall_time_s', over every run of the workdir, up to its latest checkpoint of
'train_steps' steps) and the wall time of this evaluation ('eval_wall_time_s').

What eval.py writes (eval_metrics.json, WORKDIR/eval_*.png, an event file in
WORKDIR/tensorboard) is checked to be writable before anything is built, and a write
that fails anyway (a full disk) is one line naming the path, after the metrics are
printed. Evaluation-only fields (config.eval.*, config.data.eval_split and eval_limit)
may differ from the run's: a run selected on 'valid' is reported on 'test' without
retraining.

An export (python -m vaes.export, vaes/export_file.py) is evaluated instead of WORKDIR's
checkpoints with eval.py --export=FILE: its variables and the run's config travel in the
file, WORKDIR only receives the results (made if missing), and eval_metrics.json records
'checkpoint': 'export', 'export' (the file) and 'export_of' (the checkpoint it was made
from: kind, step, workdir, run). `load_trained` is what eval.py and sample.py share: the
model and the variables of a workdir's checkpoint or of an export."""

import dataclasses
import glob
import json
import math
import os
import time
from typing import Any

import jax

from vaes import data as data_lib
from vaes import export_file
from vaes import fs
from vaes import preflight
from vaes.checkpoint import BEST_DIR, LATEST_DIR, Checkpointer
from vaes.errors import CheckpointError, ImageWriteError
from vaes.evaluation import Evaluator, abstract_variables, evaluation_variables
from vaes.mesh import Placement, make_mesh
from vaes.metric_writers import TENSORBOARD_DIR, write_final_images
from vaes.registry import get_family
from vaes.run_config import describe_diff, describe_run, other_run_diff, weights_note


def checkpoint_kind(config):
  """'best' or 'latest': what config.eval.checkpoint asks eval.py to evaluate."""
  kind = config.eval.checkpoint
  if kind == 'auto':
    return 'best' if config.eval.select_metric else 'latest'
  return kind


def _checkpointer(config, workdir, kind):
  if kind == 'best' and not fs.isdir(fs.join(workdir, BEST_DIR)):
    raise CheckpointError(
        f'No best checkpoint in {fs.join(workdir, BEST_DIR)}: it is kept '
        'by training with config.eval.select_metric set (and eval_every_steps > 0); evaluate '
        'the latest checkpoint with --config.eval.checkpoint=latest.')
  return Checkpointer(workdir, config.max_checkpoints_to_keep, async_save=False,
                      read_only=True, subdir=BEST_DIR if kind == 'best' else LATEST_DIR)


def _latest_meta(workdir):
  """The meta item of the newest checkpoint in WORKDIR/checkpoints ({} without one)."""
  if not fs.isdir(fs.join(workdir, LATEST_DIR)):
    return {}
  return Checkpointer(workdir, async_save=False, read_only=True).latest_meta()[1]


def check_best_is_of_the_run(checkpointer, latest):
  """Refuses (CheckpointError) a best checkpoint that belongs to another run than the
  latest checkpoint's meta `latest` (an earlier run of the workdir, whose
  WORKDIR/checkpoints were deleted): other run ids, or, where one is not recorded,
  other training fields."""
  step, best = checkpointer.latest_meta()
  if step is None or not latest:
    return
  theirs, ours = best.get('run') or {}, latest.get('run') or {}
  if theirs.get('id') and ours.get('id'):
    if theirs['id'] == ours['id']:
      return
    why = f'it is of {describe_run(theirs)}, they are of {describe_run(ours)}'
  else:
    diff = other_run_diff(best.get('config') or {}, latest.get('config') or {})
    if not diff:
      return
    why = f'it was trained with other settings: {describe_diff(diff)}'
  raise CheckpointError(
      f'The best checkpoint in {checkpointer.directory} (step {step}) belongs to another run '
      f'than the checkpoints in {fs.join(checkpointer.workdir, LATEST_DIR)} ({why}). Train '
      'this run with config.eval.select_metric set (its first evaluation replaces the best), '
      'or evaluate its latest checkpoint with --config.eval.checkpoint=latest.')


def _training_record(kind, meta, latest):
  """(train_wall_time_s, train_steps) of the run, from its latest checkpoint's meta."""
  if kind == 'best':
    meta = latest
  wall = meta.get('train_wall_time_s')
  return (None if wall is None else float(wall)), meta.get('step')


def write_eval_metrics(workdir, metrics, record):
  """WORKDIR/eval_metrics.json: `metrics` (floats; NaN/inf as strings) and `record`.
  Returns its path."""
  path = fs.join(workdir, 'eval_metrics.json')
  out = {k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()}
  fs.write_atomic(path, json.dumps({**out, **record}, indent=2, sort_keys=True))
  return path


def check_writable(workdir):
  """Refuses (fs.PathError, one line), before anything is built, a local workdir that
  eval.py could evaluate but not write its results into: the folder itself, and what it
  overwrites there (WORKDIR/tensorboard, earlier eval_*.png). Object stores are not
  checked (a failed write is reported when it happens)."""
  if not fs.is_local(workdir):
    return
  local = fs.resolve(workdir)
  targets = [local] + [p for p in [os.path.join(local, TENSORBOARD_DIR)] if os.path.isdir(p)]
  targets += sorted(glob.glob(os.path.join(glob.escape(local), 'eval_*.png')))
  for path in targets:
    if os.access(path, os.W_OK):
      continue
    try:
      read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
      read_only = False
    why = 'on a read-only file system' if read_only else 'not writable by this user'
    raise fs.PathError(
        f'--workdir={workdir}: {path} is {why}, and eval.py writes eval_metrics.json, '
        'eval_*.png and TensorBoard images there. Make it writable, or evaluate a copy '
        f'(cp -r {workdir} COPY; python eval.py ... --workdir=COPY).')


@dataclasses.dataclass
class Trained:
  """A trained model as eval.py evaluates it (`load_trained`)."""
  family: Any
  model: Any                 # the Linen module, built from the config and splits.info
  splits: Any                # the config's data (data_lib.Splits)
  variables: dict            # {'params': the weights evaluated, **model_state}, replicated
  placement: Placement       # the mesh of every device the variables are on
  step: int                  # the training step of the weights
  kind: str                  # 'best' | 'latest' (WORKDIR's checkpoints) | 'export' (a file)
  info: dict                 # 'weights' ('ema' | 'params'), 'ema_decay', 'config' (the
                             # run's), 'meta' (selection, training record), 'checksums'
  latest: dict               # kind 'best': the meta item of WORKDIR's latest checkpoint
  export: str = ''           # kind 'export': the file

  def training_record(self):
    """(train_wall_time_s, train_steps) of the run; None where not recorded."""
    return _training_record(self.kind, self.info['meta'], self.latest)


def load_trained(config, workdir, export_path=None, output_dir=None):
  """The model and the variables eval.py evaluates (`Trained`): those of WORKDIR's
  checkpoint config.eval.checkpoint asks for, or, with `export_path`, of that export file
  (python -m vaes.export; WORKDIR is then only where results go). The parameters are their
  moving average when the run kept one, whatever config.weights_ema_decay says; with the
  model state, on a mesh of every device. No optimiser is built: its fields need not match
  the run's. The checkpoints (or the export file) are checked first, then, on process 0,
  that `output_dir` (made when `export_path` is given) can take eval.py's results, before
  any data, codes or model is built. eval.py and sample.py share it."""
  latest, checkpointer, kind, loaded = {}, None, 'export', None
  if export_path:
    loaded = export_file.load_export(export_path)   # a missing or damaged file: first
  else:
    kind = checkpoint_kind(config)
    checkpointer = _checkpointer(config, workdir, kind)
  if output_dir is not None and jax.process_index() == 0:
    if export_path and fs.is_local(output_dir):
      try:
        fs.makedirs(output_dir)
      except OSError as e:
        raise fs.PathError(f'--workdir={output_dir}: cannot create it ({e}); give a '
                           'writable folder for the results.') from e
    check_writable(output_dir)
  if kind == 'best':
    latest = _latest_meta(workdir)
    check_best_is_of_the_run(checkpointer, latest)
  family = get_family(config.model.name)
  preflight.validate_config(config, family)     # before any data, codes or model
  if family.prepare is not None:
    family.prepare(config)
  splits = data_lib.get_datasets(config)
  placement = Placement(make_mesh())
  model = family.build_model(config, splits.info)
  wanted = abstract_variables(family, model, splits.train.element_spec, config.batch_size,
                              placement.replicated)
  if export_path:
    restored, step, info = export_file.restore_variables(export_path, wanted, config,
                                                         loaded=loaded)
  else:
    restored, step, info = checkpointer.restore_variables(wanted, config)
  if restored is None:
    raise CheckpointError(f'No checkpoint in {checkpointer.directory}: train first with '
                          f'`python train.py --config=... --workdir={workdir}`.')
  variables = evaluation_variables(restored['params'], restored['model_state'],
                                   restored.get('ema_params'))
  return Trained(family, model, splits, variables, placement, step, kind, info, latest,
                 export_path or '')


def eval_rng(config):
  """The key of eval.py's evaluation (and of python -m vaes.units: with the same samples
  per image, the same draws)."""
  return jax.random.fold_in(jax.random.PRNGKey(config.seed), 0xE7A1)


def evaluate(config, workdir, export_path=None):
  """Evaluates the checkpoint config.eval.checkpoint asks for (or, with `export_path`, the
  variables of that export file); writes and returns eval_metrics.json's content."""
  t_start = time.time()
  fs.check_url(workdir)
  trained = load_trained(config, workdir, export_path, output_dir=workdir)
  kind, step, info, splits = trained.kind, trained.step, trained.info, trained.splits
  evaluator = Evaluator(trained.family, config, trained.model, splits.info,
                        trained.placement.put)
  is_main = jax.process_index() == 0
  note = weights_note(info, config)
  if note and is_main:
    print(note, flush=True)
  rng = eval_rng(config)
  unwritten = None   # the OSError of a result that could not be written
  try:
    metrics = evaluator(trained.variables, splits.eval, rng, step=step,
                        image_dir=workdir if is_main else None, image_prefix='eval_')
  except ImageWriteError as e:   # the metrics are kept and printed; then one line
    metrics, unwritten = e.metrics, e.__cause__
  metrics, record = _results(config, kind, metrics, step, info, trained.latest)
  if export_path:
    record['export'] = export_path
    record['export_of'] = info['export'].get('checkpoint')
  metrics['eval_wall_time_s'] = time.time() - t_start
  if is_main:
    _report(workdir, kind, step, splits.info, metrics, record, info, unwritten)
  return {**metrics, **record}


def _results(config, kind, metrics, step, info, latest):
  """(metrics as floats with the checkpoint's step, selection and training wall time;
  the record of what was evaluated: checkpoint, weights, eval fields)."""
  metrics = {k: float(v) for k, v in metrics.items()}
  metrics['step'] = float(step)
  # The eval fields it ran with: a sweep tells an evaluation of other eval fields apart.
  eval_data = {'eval_split': config.data.eval_split}
  if config.data.eval_limit:
    eval_data['eval_limit'] = config.data.eval_limit
  record = {'checkpoint': kind, 'weights': info['weights'],
            'eval_config': json.loads(config.eval.to_json_best_effort()),
            'eval_data': eval_data}
  if info['weights'] == 'ema':
    record['weights_ema_decay'] = info['ema_decay']
  selection = info['meta'].get('selection')
  if kind != 'latest' and selection:   # a best checkpoint, or the export of one
    metrics[f'best_{selection["split"]}_{selection["metric"]}'] = float(selection['value'])
  train_wall, train_steps = _training_record(kind, info['meta'], latest)
  if train_wall is not None:
    metrics['train_wall_time_s'] = train_wall
    metrics['train_steps'] = float(train_steps)
  return metrics, record


def _report(workdir, kind, step, data_info, metrics, record, info, unwritten):
  """Writes eval_metrics.json and the PNGs (into TensorBoard too), prints the metrics,
  then reports a write that failed as one line (fs.PathError): nothing is lost."""
  try:   # the metrics are written even when the PNGs could not be
    path = write_eval_metrics(workdir, metrics, record)
  except OSError as e:
    path, unwritten = None, unwritten or e
  if unwritten is None:
    try:
      write_final_images(workdir, step, workdir, 'eval_')   # the PNGs, into TensorBoard too
    except OSError as e:
      unwritten = e
  # Printed before a failed write is reported: the metrics are not lost.
  what = f"the export {record['export']}" if kind == 'export' else f'the {kind} checkpoint'
  print(f'Evaluation of {what} (step {step}) on '
        f'{data_info.num_eval} examples of the '
        f'{data_info.eval_split or "evaluation"} split -> '
        f'{path or "(eval_metrics.json not written)"}', flush=True)
  for k in sorted(metrics):
    print(f'  {k}: {metrics[k]:.6g}', flush=True)
  print(f'  checkpoint: {kind}' + (f" (of the {record['export_of']['kind']} checkpoint of "
                                    f"{record['export_of']['workdir']})"
                                    if kind == 'export' else ''), flush=True)
  print(f"  weights: {info['weights']}" + (f" (weights_ema_decay={info['ema_decay']})"
                                           if info['weights'] == 'ema' else ''), flush=True)
  if unwritten is not None:
    kept = 'printed above' + (f' and in {path}' if path else '')
    raise fs.PathError(
        f'--workdir={workdir}: writing the results failed ({unwritten}); the metrics are '
        f'{kept}. Make the workdir writable (or free disk space), or evaluate a copy '
        f'(cp -r {workdir} COPY; python eval.py ... --workdir=COPY).') from unwritten
