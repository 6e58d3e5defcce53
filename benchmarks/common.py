"""What the benchmarks share: random data of a config's shapes, its compiled train step,
JSON output."""

import json
import time
from typing import Any, NamedTuple


def synthetic_inputs(config):
  """(data_info, element_spec, make_batch) for random data of the config's shapes.

  Uses the dataset builder when its data is at hand (embedded data); for a TFDS
  dataset whose files are absent, the shapes come from the TFDS spec table."""
  import numpy as np
  from vaes import data as data_lib
  try:
    splits = data_lib.get_datasets(config)
    info, spec = splits.info, splits.train.element_spec
  except (data_lib.DataError, ImportError):  # TFDS files (or TensorFlow) not at hand
    from vaes.data import tfds_data
    if config.data.name not in tfds_data.SPECS:
      raise
    ds = tfds_data.SPECS[config.data.name]
    size = config.data.get('image_size', ds.image_size)
    shape = (size, size, 1 if ds.grey_inverted else ds.native_shape[2])
    binary = ds.binary or config.data.get('binarize', 'none') != 'none'
    info = data_lib.DataInfo(kind='image', shape=shape, num_levels=2 if binary else 256,
                             train_variance=0.06, num_train=50_000, num_eval=10_000,
                             steps_per_epoch=50_000 // config.batch_size)
    spec = {'image': (shape, np.float32)}
  rng = np.random.default_rng(0)
  levels = info.num_levels

  def make_batch(batch_size):
    batch = {}
    for k, (shape, dtype) in spec.items():
      shape = (batch_size,) + tuple(shape)
      if np.issubdtype(dtype, np.floating):
        if k == 'mask':
          batch[k] = np.ones(shape, dtype)
        elif info.kind == 'image' or k == 'x':
          steps = max(levels - 1, 1)
          batch[k] = (rng.integers(0, steps + 1, shape) / steps).astype(dtype)
        else:
          batch[k] = rng.normal(size=shape).astype(dtype)
      elif dtype == np.bool_:
        batch[k] = np.ones(shape, dtype)
      else:
        batch[k] = np.zeros(shape, dtype)
    return batch
  return info, spec, make_batch


class CompiledStep(NamedTuple):
  """What `compile_step` returns: `compiled(state, batch)` -> (state, metrics) runs
  config.steps_per_dispatch train steps; host_batch is one step's batch on the host."""
  trainer: Any
  compiled: Any
  state: Any
  batch: Any
  host_batch: dict
  info: Any                 # vaes.data.DataInfo
  spec: dict
  compile_s: float


def compile_step(config):
  """The config's train step (`vaes.train.build_trainer`), compiled, with a fresh state
  and one device batch of random data of the config's shapes (`steps_per_dispatch`
  batches stacked when that is above 1)."""
  import jax
  import vaes.families  # noqa: F401  (each family registers itself)
  from vaes.train import build_trainer

  info, spec, make_batch = synthetic_inputs(config)
  trainer = build_trainer(config, info, spec)
  state = trainer.init_fn()
  host_batch = make_batch(config.batch_size // jax.process_count())
  k = config.steps_per_dispatch    # train steps per jitted call
  if k == 1:
    batch, step_fn = trainer.put(host_batch), trainer.train_step
  else:
    batch, step_fn = trainer.put_stacked([host_batch] * k), trainer.multi_step

  t0 = time.perf_counter()
  compiled = step_fn.lower(state, batch).compile()
  return CompiledStep(trainer, compiled, state, batch, host_batch, info, spec,
                      time.perf_counter() - t0)


def emit(result, output=''):
  """Prints `result` as one JSON line and, if `output` is set, appends it there."""
  line = json.dumps(result)
  print(line, flush=True)
  if output:
    with open(output, 'a', encoding='utf-8') as f:
      f.write(line + '\n')
