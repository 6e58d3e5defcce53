"""Subprocess entry for tests.helpers.train_steps_on_devices: runs the real jitted
train step on a mesh of the first N devices for each N in --devices (JAX must
start with enough simulated devices, so this is always a fresh process)."""

import argparse
import json
import pickle

import jax
import numpy as np

from tests.helpers import load_config
import vaes.families  # noqa: F401  (each family registers itself)
from vaes import data as data_lib
from vaes.train import build_trainer


def run(config, num_devices, steps):
  splits = data_lib.get_datasets(config)
  trainer = build_trainer(config, splits.info, splits.train.element_spec,
                          devices=jax.devices()[:num_devices])
  state = trainer.init_fn()
  batches = splits.train.iterate(0)
  metrics = []
  k = config.steps_per_dispatch   # > 1: groups of k steps through trainer.multi_step
  if steps % k:
    raise ValueError(f'--steps={steps} is not a multiple of steps_per_dispatch={k}')
  for _ in range(steps // k):
    if k == 1:
      state, m = trainer.train_step(state, trainer.put(next(batches)))
      metrics.append({name: float(v) for name, v in jax.device_get(m).items()})
    else:
      state, m = trainer.multi_step(state, trainer.put_stacked([next(batches) for _ in range(k)]))
      m = jax.device_get(m)
      metrics += [{name: float(v[i]) for name, v in m.items()} for i in range(k)]
  kept = {'params': state.params, 'model_state': state.model_state}
  if state.ema_params is not None:   # config.weights_ema_decay > 0
    kept['ema_params'] = state.ema_params
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(kept))[0]
  return {
      'num_devices': len(trainer.mesh.devices.flat),
      'metrics': metrics,
      'leaves': {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves},
  }


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--config', required=True)
  parser.add_argument('--overrides', default='{}')
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--devices', default='1,8')
  parser.add_argument('--out', required=True)
  args = parser.parse_args()
  config = load_config(args.config, json.loads(args.overrides))
  results = {int(n): run(config, int(n), args.steps) for n in args.devices.split(',')}
  with open(args.out, 'wb') as f:
    pickle.dump(results, f)


if __name__ == '__main__':
  main()
