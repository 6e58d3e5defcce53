"""Wall time of a config's full evaluation, on random data of its shapes.

  python benchmarks/evaluation.py --config=configs/lvae_mnist.py [--num_examples=10000]

Runs the model family's own `evaluate` (the code `eval.py` runs, e.g. the Ladder
VAE's importance-weighted bound with config.eval.num_importance_samples samples)
over `num_examples` synthetic examples with freshly initialised parameters, and
prints one JSON line: device kind, examples, the time of a one-batch warm-up
(compilation included) and of the whole evaluation after it, examples/s, and,
where the config has them, importance samples/s. PNG grids are not drawn.
"""

import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
flags.DEFINE_integer('num_examples', 10_000, 'Synthetic evaluation examples.')
flags.DEFINE_string('output', '', 'Also append the JSON line to this file.')
FLAGS = flags.FLAGS


def benchmark(config, num_examples):
  import jax
  from benchmarks.common import synthetic_inputs
  from vaes.data.core import ArrayEvalSource
  import vaes.families  # noqa: F401  (each family registers itself)
  from vaes.evaluation import evaluate_split
  from vaes.train import build_trainer

  info, spec, make_batch = synthetic_inputs(config)
  info = dataclasses.replace(info, num_eval=num_examples)
  trainer = build_trainer(config, info, spec)
  state = trainer.init_fn()
  variables = {'params': state.params, **state.model_state}
  arrays = make_batch(num_examples)

  def run(n):
    source = ArrayEvalSource({k: v[:n] for k, v in arrays.items()}, config.eval.batch_size)
    t0 = time.perf_counter()
    metrics = evaluate_split(trainer.family, config, trainer.model, variables, source, info,
                             jax.random.PRNGKey(config.seed), trainer.put,
                             progress=False)   # host floats: synchronised
    return time.perf_counter() - t0, metrics

  warmup_s, _ = run(min(num_examples, config.eval.batch_size))
  eval_s, metrics = run(num_examples)
  result = {
      'config': config.model.name,
      'data': config.data.name,
      'device_kind': jax.devices()[0].device_kind,
      'num_devices': jax.device_count(),
      'jax_version': jax.__version__,
      'num_examples': num_examples,
      'eval_batch_size': config.eval.batch_size,
      'warmup_one_batch_s': warmup_s,
      'eval_s': eval_s,
      'examples_per_sec': num_examples / eval_s,
      'metrics': {k: float(v) for k, v in sorted(metrics.items())},
  }
  k = config.eval.get('num_importance_samples')
  if k:
    result['num_importance_samples'] = int(k)
    result['importance_samples_per_sec'] = num_examples * int(k) / eval_s
  return result


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from benchmarks.common import emit
  emit(benchmark(FLAGS.config, FLAGS.num_examples), FLAGS.output)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
