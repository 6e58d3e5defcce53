"""Throughput of the real train step of any config, on random data of its shapes.

  python benchmarks/train_step.py --config=configs/vqvae_cifar10.py \
      --config.batch_size=128 --config.compute_dtype=bfloat16 [--repeats=20]

Prints one JSON line per run: device kind, batch size, examples/s (and frames/s
for sequences), ms per step (median over timed windows after warm-up, the device
synchronised at the end of each window), compile time, peak device memory where
the backend reports it, the compiled step's temporary memory (XLA's buffer
assignment: activations kept for the backward pass, scratch), and XLA's FLOP
estimate per example with the fraction of the device's peak it reaches. The step is
exactly `vaes.train.build_trainer`'s: forward, backward, optimiser update, donated state.
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
flags.DEFINE_integer('warmup', 3, 'Untimed steps after compilation.')
flags.DEFINE_integer('repeats', 10, 'Timed windows; the median is reported.')
flags.DEFINE_integer('steps_per_repeat', 5, 'Steps per timed window.')
flags.DEFINE_string('output', '', 'Also append the JSON line to this file.')
FLAGS = flags.FLAGS

# Dense peak FLOP/s by device kind and compute dtype (float32 matmuls run as TF32 on
# NVIDIA GPUs under JAX's default precision).
PEAK_FLOPS = {
    'NVIDIA H100 80GB HBM3': {'bfloat16': 989e12, 'float32': 494e12},
    'NVIDIA H100': {'bfloat16': 989e12, 'float32': 494e12},
    'NVIDIA H200': {'bfloat16': 989e12, 'float32': 494e12},
    'NVIDIA A100-SXM4-80GB': {'bfloat16': 312e12, 'float32': 156e12},
    'TPU v4': {'bfloat16': 275e12, 'float32': 275e12},
    'TPU v5 lite': {'bfloat16': 197e12, 'float32': 197e12},
}


def benchmark(config, warmup=3, repeats=10, steps_per_repeat=5):
  import jax
  import numpy as np
  from benchmarks.common import compile_step

  step = compile_step(config)
  trainer, compiled, state, batch = step.trainer, step.compiled, step.state, step.batch
  host_batch, info, spec, compile_s = step.host_batch, step.info, step.spec, step.compile_s
  k = config.steps_per_dispatch

  for _ in range(max(warmup, 1)):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(steps_per_repeat):
      state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times.append((time.perf_counter() - t0) / (steps_per_repeat * k))
  step_s = statistics.median(times)

  device = jax.devices()[0]
  # XLA's FLOP estimate of one step. It counts a loop body once, not once per trip,
  # so for k > 1 it is read from the single step's compilation.
  flops = None
  try:
    single = compiled if k == 1 else trainer.train_step.lower(
        state, trainer.put(host_batch)).compile()
    cost = single.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get('flops', 0.0)) or None
  except Exception:  # pylint: disable=broad-except
    flops = None
  temp_mem = None   # XLA's buffer assignment: activations and scratch of one call
  try:
    temp_mem = compiled.memory_analysis().temp_size_in_bytes
  except Exception:  # pylint: disable=broad-except
    temp_mem = None
  peak_mem = None
  try:
    stats = device.memory_stats() or {}
    peak_mem = stats.get('peak_bytes_in_use')
  except Exception:  # pylint: disable=broad-except
    peak_mem = None

  b = config.batch_size
  result = {
      'config': config.model.name,
      'data': config.data.name,
      'device_kind': device.device_kind,
      'num_devices': jax.device_count(),
      'jax_version': jax.__version__,
      'compute_dtype': config.compute_dtype,
      'batch_size': b,
      'steps_per_dispatch': k,
      'ms_per_step': step_s * 1e3,
      'examples_per_sec': b / step_s,
      'compile_s': compile_s,
      'peak_memory_gib': peak_mem / 2**30 if peak_mem else None,
      'temp_memory_gib': temp_mem / 2**30 if temp_mem else None,
      'loss': float(np.ravel(jax.device_get(metrics['loss']))[-1]),
  }
  if 'mask' in spec or info.kind == 'sequence':
    seq_len = spec['x'][0][0]
    result['seq_len'] = int(seq_len)
    result['frames_per_sec'] = b * seq_len / step_s
  if flops:
    # Per device for a sharded program.
    per_example = flops * jax.device_count() / b
    result['gflops_per_example'] = per_example / 1e9
    peak = PEAK_FLOPS.get(device.device_kind, {}).get(config.compute_dtype)
    if peak:
      result['fraction_of_peak'] = flops / step_s / peak
  return result


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from benchmarks.common import emit
  emit(benchmark(FLAGS.config, FLAGS.warmup, FLAGS.repeats, FLAGS.steps_per_repeat), FLAGS.output)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
