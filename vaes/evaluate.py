"""The evaluation driver: restore the latest checkpoint, evaluate on the whole
evaluation split, write WORKDIR/eval_metrics.json and PNG grids."""

import json
import math
import os

import jax
import numpy as np

from vaes import data as data_lib
from vaes.checkpoint import Checkpointer, CheckpointError
from vaes.metric_writers import write_final_images
from vaes.registry import get_family
from vaes.train import build_trainer, run_evaluation


def evaluate(config, workdir):
  checkpointer = Checkpointer(workdir, config.max_checkpoints_to_keep, async_save=False,
                              read_only=True)
  family = get_family(config.model.name)
  if family.prepare is not None:
    family.prepare(config)
  splits = data_lib.get_datasets(config)
  trainer = build_trainer(config, splits.info, splits.train.element_spec)
  # Parameters and model state only: the optimiser fields need not match the run's.
  abstract = trainer.abstract_state
  variables, step, _ = checkpointer.restore_variables(
      {'params': abstract.params, 'model_state': abstract.model_state}, config)
  if variables is None:
    raise CheckpointError(f'No checkpoint in {checkpointer.directory}: train first with '
                          f'`python train.py --config=... --workdir={workdir}`.')
  state = abstract.replace(step=np.int32(step), **variables)
  is_main = jax.process_index() == 0
  rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0xE7A1)
  metrics = run_evaluation(trainer, state, splits, workdir, rng,
                           image_dir=workdir if is_main else None, image_prefix='eval_')
  metrics = {k: float(v) for k, v in metrics.items()}
  metrics['step'] = float(step)
  if is_main:
    path = os.path.join(workdir, 'eval_metrics.json')
    with open(path, 'w', encoding='utf-8') as f:
      json.dump({k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()}, f,
                indent=2, sort_keys=True)
    write_final_images(workdir, step, workdir, 'eval_')   # the PNGs, into TensorBoard too
    print(f'Evaluation of step {step} on {splits.info.get("num_eval", "?")} examples '
          f'-> {path}', flush=True)
    for k in sorted(metrics):
      print(f'  {k}: {metrics[k]:.6g}', flush=True)
  return metrics
