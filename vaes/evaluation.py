"""The evaluation loop: a family's per-batch sums over a whole split, added up in
float64 and finished by the family, with its pictures.

`Evaluator` jits the family's `eval_stats` once, so the periodic evaluations of a run
and eval.py's one evaluation compile it once. It builds no optimiser and no train step:
evaluation needs the model, the variables and where batches go (`vaes.mesh.Placement`).

One rule says which weights are evaluated (`evaluation_variables`): the moving average
of the parameters when the run kept one (trained with config.weights_ema_decay > 0),
else the parameters. Training (TrainState.eval_variables), eval.py and a second stage
(vaes/stages.py) all use it.
"""

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from vaes import data as data_lib
from vaes import xla_options
from vaes.errors import ConfigError, ImageWriteError
from vaes.mesh import matmul_precision
from vaes.metric_writers import EvalProgress
from vaes.registry import ImageContext


def evaluation_variables(params, model_state, ema_params=None):
  """The variables an evaluation uses: {'params': the moving average of the parameters
  when there is one, else the parameters, **model_state}."""
  return {'params': params if ema_params is None else ema_params, **model_state}


def abstract_variables(family, model, element_spec, batch_size, sharding=None):
  """{'params', 'model_state'}: the shapes and dtypes of the model's variables, placed
  on `sharding` when given (what a restore reads into); nothing is initialised or
  compiled."""
  example = data_lib.zeros_batch(element_spec, batch_size)
  variables = dict(jax.eval_shape(lambda r, b: family.init_variables(model, r, b),
                                  jax.random.PRNGKey(0), example))
  if sharding is not None:
    variables = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), variables)
  return {'params': variables.pop('params'), 'model_state': variables}


@dataclasses.dataclass
class Evaluator:
  """Evaluates variables over whole splits with one config's eval fields; `put` places a
  host batch on the devices (`Placement.put`)."""
  family: Any
  config: Any
  model: Any
  data_info: data_lib.DataInfo
  put: Callable
  stats_fn: Callable = None     # the family's eval_stats, jitted (built once)

  def __post_init__(self):
    if self.stats_fn is None:
      self.stats_fn = jax.jit(
          self.family.eval_stats(self.config, self.model, self.data_info),
          compiler_options=xla_options.compiler_options(self.config.cpu_convolutions))

  def __call__(self, variables, source, rng, step=0, image_dir=None, image_prefix='',
               progress=True):
    """Metrics of `variables` over one pass of `source`; with `image_dir`, its pictures.

    Batch i draws its randomness from fold_in(rng, i). The sums of batch i are fetched
    after batch i + 1 is dispatched, so the device never waits for the host. Runs at
    `config.eval.matmul_precision` (default 'highest': reported likelihoods do not
    depend on the backend's fast float32 matmul modes)."""
    with matmul_precision(self.config.eval.matmul_precision):
      totals, first = self.sums(variables, source, rng, progress)
      metrics = self.family.eval_metrics(self.config, self.data_info, totals)
      if image_dir and self.family.eval_images is not None and jax.process_index() == 0:
        self._images(variables, rng, step, image_dir, image_prefix, first, metrics)
    return metrics

  def sums(self, variables, source, rng, progress=True):
    """The split's summed statistics (the family's eval_stats over every batch, float64
    numpy) and its first host batch: what eval_metrics reads, for tools that read more
    (python -m vaes.units). Runs at config.eval.matmul_precision, as `__call__`."""
    meter = EvalProgress(self.data_info.num_eval,
                         enabled=progress and jax.process_index() == 0)
    totals, first, in_flight = None, None, None

    def add(totals, sums):
      sums = jax.tree.map(lambda v: np.asarray(v, np.float64), jax.device_get(sums))
      return sums if totals is None else jax.tree.map(np.add, totals, sums)

    with matmul_precision(self.config.eval.matmul_precision):
      for i, host_batch in enumerate(source):
        if first is None:
          first = host_batch
        sums = self.stats_fn(variables, self.put(host_batch), jax.random.fold_in(rng, i))
        if in_flight is not None:
          totals = add(totals, in_flight)
        in_flight = sums
        meter.update(int(np.sum(host_batch['valid'])) * jax.process_count())
    if in_flight is None:
      raise data_lib.DataError('The evaluation split yielded no batches.')
    totals = add(totals, in_flight)
    meter.done()
    return totals, first

  def _images(self, variables, rng, step, image_dir, image_prefix, first, metrics):
    # A local copy of the (replicated) variables: no computation spans processes.
    local = jax.tree.map(
        lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a, variables)
    try:
      self.family.eval_images(ImageContext(
          config=self.config, model=self.model, variables=local, data_info=self.data_info,
          rng=rng, image_dir=image_dir, image_prefix=image_prefix, step=step), first)
    except OSError as e:
      raise ImageWriteError(
          f'Writing the evaluation images of step {step} into {image_dir} failed: {e}. Make '
          'it writable (or free disk space) and rerun the same command.', metrics) from e


def evaluate_split(family, config, model, variables, source, data_info, rng, put, step=0,
                   image_dir=None, image_prefix='', progress=True):
  """One evaluation of `variables` over `source` (an `Evaluator` used once)."""
  return Evaluator(family, config, model, data_info, put)(
      variables, source, rng, step=step, image_dir=image_dir, image_prefix=image_prefix,
      progress=progress)


def evaluation_metric_names(family, config, model, data_info, abstract, element_spec):
  """The names of the metrics an evaluation with `config` reports, without evaluating:
  the family's eval_stats traced on shapes only (jax.eval_shape, nothing compiled or
  run) for the abstract variables `abstract` ({'params', 'model_state'}), its sums
  filled with ones and finished by eval_metrics. None when the family's functions do
  not allow it (the first evaluation then tells)."""
  n = config.eval.batch_size
  batch = {k: jax.ShapeDtypeStruct((n,) + tuple(shape), dtype)
           for k, (shape, dtype) in element_spec.items()}
  batch['valid'] = jax.ShapeDtypeStruct((n,), np.bool_)
  try:
    stats_fn = family.eval_stats(config, model, data_info)
    sums = jax.eval_shape(stats_fn, {'params': abstract['params'], **abstract['model_state']},
                          batch, jax.random.PRNGKey(0))
    totals = jax.tree.map(lambda s: np.ones(s.shape, np.float64), sums)
    with np.errstate(all='ignore'):
      return set(family.eval_metrics(config, data_info, totals))
  except Exception:  # pylint: disable=broad-except  (a best effort: BestCheckpoint checks too)
    return None


def check_select_metric(family, config, model, data_info, abstract, element_spec):
  """Refuses (ConfigError), before training, a config.eval.select_metric that the family's
  evaluation does not report (see `evaluation_metric_names`)."""
  metric = config.eval.select_metric
  names = evaluation_metric_names(family, config, model, data_info, abstract, element_spec)
  if names is not None and metric not in names:
    raise ConfigError(f"config.eval.select_metric='{metric}' is not a metric of the "
                      f"'{config.model.name}' evaluation; choose one of {sorted(names)}.")
