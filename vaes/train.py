"""The training engine: one jitted train step over a ('data',) mesh, the loop,
checkpoints, logging, and the evaluation loop (`evaluate_split`: a family's per-batch
sums over the whole split, finished by the family). It knows nothing about any model
family beyond `vaes.registry.ModelFamily`.

Data flows one way: config -> data iterator -> loss_fn (model.apply) inside the
jitted step -> metrics / checkpoints.
"""

import collections
import contextlib
import copy
import dataclasses
import itertools
import math
import os
import signal
import sys
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from vaes import data as data_lib
from vaes import fs
from vaes import objectives
from vaes import profiler as profiler_lib
from vaes import provenance
from vaes import workdir_lock
from vaes import xla_options
from vaes.checkpoint import (BEST_DIR, Checkpointer, config_diff, config_dict, describe_diff,
                             describe_run, finished_run_diff, new_run, other_run_diff)
from vaes.metric_writers import TENSORBOARD_DIR, EvalProgress, MetricWriter, Progress
from vaes.registry import ConfigError, ImageContext, get_family


class TrainingError(RuntimeError):
  pass


class ImageWriteError(TrainingError):
  """Writing an evaluation's PNG grids failed (an OSError: a read-only or full disk);
  `metrics` holds that evaluation's metrics, computed before, so that they are not lost."""

  def __init__(self, message, metrics):
    super().__init__(message)
    self.metrics = metrics


class Preempted(Exception):
  """SIGTERM or SIGINT arrived; a checkpoint of the current step was saved. The
  process should exit with `exit_code` (128 + the signal number): an unfinished
  run must not look finished to `train.py && eval.py`."""

  def __init__(self, message, signum):
    super().__init__(message)
    self.exit_code = 128 + signum


@flax.struct.dataclass
class TrainState:
  step: jax.Array               # int32 scalar: number of updates attempted so far
  params: Any
  model_state: Any              # every non-'params' collection (batch_stats, vq_ema, ...)
  opt_state: Any
  rng: jax.Array                # base key; step keys are fold_in(rng, step)
  skipped_updates: jax.Array    # total updates skipped for non-finite / huge gradients
  consecutive_skips: jax.Array
  # Exponential moving average of params (config.ema_decay > 0), else None (no arrays).
  ema_params: Any = None


# ----------------------------------------------------------------------------
# Config checks, mesh, optimiser.
# ----------------------------------------------------------------------------


def config_leaves(node, prefix=''):
  """(dotted name, value) of every leaf field of a ConfigDict."""
  for k, v in node.items():
    if hasattr(v, 'items'):
      yield from config_leaves(v, f'{prefix}{k}.')
    else:
      yield f'{prefix}{k}', v


def validate_config(config, family=None, num_devices=None):
  """Engine-level checks that must fail before any compilation."""
  for field, v in config_leaves(config):
    if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f'config.{field}={v!r}: must be a finite number.')
  for field in ('batch_size', 'num_train_steps', 'log_every_steps', 'checkpoint_every_steps',
                'max_checkpoints_to_keep'):
    v = config[field]
    if not isinstance(v, int) or v <= 0:
      raise ConfigError(f'config.{field}={v!r}: must be a positive integer.')
  for field in ('eval_every_steps', 'lr_warmup_steps', 'seed'):
    v = config[field]
    if not isinstance(v, int) or v < 0:
      raise ConfigError(f'config.{field}={v!r}: must be a non-negative integer.')
  if not config.learning_rate > 0:
    raise ConfigError(f'config.learning_rate={config.learning_rate!r}: must be positive.')
  if config.optimizer not in ('adam', 'adamw'):
    raise ConfigError(f"config.optimizer='{config.optimizer}': choose 'adam' or 'adamw'.")
  for field in ('adam_b1', 'adam_b2', 'ema_decay'):
    if not 0.0 <= config[field] < 1.0:
      raise ConfigError(f'config.{field}={config[field]!r}: must be in [0, 1).')
  if not config.adam_eps > 0:
    raise ConfigError(f'config.adam_eps={config.adam_eps!r}: must be positive.')
  for field in ('weight_decay', 'grad_clip_norm', 'skip_grad_norm_above'):
    if not config[field] >= 0:
      raise ConfigError(f'config.{field}={config[field]!r}: must be >= 0 (0 disables it).')
  if config.weight_decay > 0 and config.optimizer != 'adamw':
    raise ConfigError(f'config.weight_decay={config.weight_decay!r} has no effect with '
                      f"config.optimizer='{config.optimizer}': use --config.optimizer=adamw "
                      '(decoupled weight decay) or weight_decay=0.')
  if not 0.0 <= config.lr_warmup_fraction <= 1.0:
    raise ConfigError(f'config.lr_warmup_fraction={config.lr_warmup_fraction!r}: must lie in '
                      '[0, 1] (a fraction of config.num_train_steps; 0 = use lr_warmup_steps).')
  e = config.eval
  if e.select_mode not in ('min', 'max'):
    raise ConfigError(f"config.eval.select_mode='{e.select_mode}': choose 'min' or 'max'.")
  if e.checkpoint not in EVAL_CHECKPOINTS:
    raise ConfigError(f"config.eval.checkpoint='{e.checkpoint}': choose one of "
                      f'{EVAL_CHECKPOINTS}.')
  k = e.select_num_importance_samples
  if not isinstance(k, int) or k < 0 or (k and 'num_importance_samples' not in e):
    raise ConfigError(f'config.eval.select_num_importance_samples={k!r}: must be 0 (the same '
                      'as eval.num_importance_samples) or, for families that evaluate with '
                      'importance samples (eval.num_importance_samples), a positive integer.')
  if e.select_metric and not config.eval_every_steps:
    raise ConfigError(f"config.eval.select_metric='{e.select_metric}' keeps the checkpoint of "
                      'the best evaluation during training, but config.eval_every_steps=0 '
                      'evaluates none: set --config.eval_every_steps=N (or select_metric=\'\').')
  if config.lr_schedule not in ('constant', 'cosine'):
    raise ConfigError(f"config.lr_schedule='{config.lr_schedule}': choose 'constant' or "
                      "'cosine'.")
  if config.compute_dtype not in ('float32', 'bfloat16'):
    raise ConfigError(f"config.compute_dtype='{config.compute_dtype}': choose 'float32' or "
                      "'bfloat16'.")
  k = config.steps_per_dispatch
  if not isinstance(k, int) or k <= 0:
    raise ConfigError(f'config.steps_per_dispatch={k!r}: must be a positive integer '
                      '(1 = one train step per jitted call).')
  profiler_lib.validate(config.profile_steps, config.num_train_steps)
  xla_options.validate(config.cpu_convolutions)
  if config.max_consecutive_skips <= 0:
    raise ConfigError(f'config.max_consecutive_skips={config.max_consecutive_skips}: must be '
                      'a positive integer.')
  for field, value in (('matmul_precision', config.matmul_precision),
                       ('eval.matmul_precision', config.eval.matmul_precision)):
    if value not in MATMUL_PRECISIONS:
      raise ConfigError(f'config.{field}={value!r}: choose one of {MATMUL_PRECISIONS}.')
  n = num_devices or jax.device_count()
  for field in ('batch_size',):
    if config[field] % n:
      raise ConfigError(
          f'config.{field}={config[field]} is not divisible by the {n} devices; '
          f'use a multiple of {n} (e.g. --config.{field}={max(n, config[field] // n * n)}).')
  if config.eval.batch_size <= 0 or config.eval.batch_size % n:
    raise ConfigError(f'config.eval.batch_size={config.eval.batch_size} must be a positive '
                      f'multiple of the {n} devices.')
  if family is not None and family.validate_config is not None:
    family.validate_config(config)


MATMUL_PRECISIONS = ('default', 'high', 'highest')
# config.eval.checkpoint: what eval.py evaluates ('auto': 'best' when eval.select_metric is set).
EVAL_CHECKPOINTS = ('auto', 'best', 'latest')


def matmul_precision(name):
  """Context for the precision of float32 matmuls and convolutions traced inside it:
  'default' keeps JAX's (TF32 on recent NVIDIA GPUs, one bfloat16 pass on TPUs),
  'high' (TF32 / 3 bfloat16 passes), 'highest' (full float32)."""
  return contextlib.nullcontext() if name == 'default' else jax.default_matmul_precision(name)


def make_mesh(devices=None):
  """A 1-D ('data',) mesh over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), ('data',), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def lr_warmup(config):
  """(N, the field that set it): lr_warmup_fraction of the run, or lr_warmup_steps."""
  if config.lr_warmup_fraction > 0:
    return (objectives.warmup_length(0, config.lr_warmup_fraction, config.num_train_steps),
            f'config.lr_warmup_fraction={config.lr_warmup_fraction}')
  return config.lr_warmup_steps, f'config.lr_warmup_steps={config.lr_warmup_steps}'


def warmup_warnings(config, family, data_info):
  """One line per warm-up (learning rate, KL weight) that lasts the whole run or more."""
  steps = config.num_train_steps
  out = []
  n, field = lr_warmup(config)
  if n >= steps:
    out.append(f'WARNING: the learning-rate warm-up ({field}: {n} steps) outlasts the run '
               f'(config.num_train_steps={steps}): the learning rate never reaches '
               'config.learning_rate. Give the warm-up as a fraction of the run, e.g. '
               '--config.lr_warmup_fraction=0.05 --config.lr_warmup_steps=0.')
  if family.kl_warmup is not None:
    n, field = family.kl_warmup(config, data_info)
    if n >= steps:
      out.append(f'WARNING: the KL warm-up ({field}: {n} steps) outlasts the run '
                 f'(config.num_train_steps={steps}): every update is made with a KL weight '
                 'below 1 (logged as kl_weight), so the trained objective is not the ELBO '
                 '(evaluations still report the true bound). Give the warm-up as a fraction '
                 'of the run, e.g. --config.model.kl_warmup_fraction=0.25.')
  return out


def make_optimizer(config):
  lr = config.learning_rate
  warmup = lr_warmup(config)[0]
  if config.lr_schedule == 'cosine':
    lr = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, max(warmup, 1), max(config.num_train_steps, warmup + 1))
  elif warmup > 0:
    lr = optax.linear_schedule(0.0, config.learning_rate, warmup)
  if config.optimizer == 'adamw':
    opt = optax.adamw(lr, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps,
                      weight_decay=config.weight_decay)
  else:
    opt = optax.adam(lr, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)
  if config.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), opt)
  return opt


# ----------------------------------------------------------------------------
# The pieces a test, a benchmark or the loop assemble.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Trainer:
  """Everything built from a config: model, optimiser, shardings and the jitted step."""
  config: Any
  family: Any
  model: Any
  data_info: dict
  mesh: Any
  tx: Any
  state_sharding: Any
  batch_sharding: Any
  init_fn: Callable             # () -> TrainState, born sharded
  train_step: Callable          # (state, batch) -> (state, metrics), jitted, state donated
  abstract_state: Any
  # (state, batches) -> (state, metrics): len(batches) steps in one jitted call, a
  # `lax.scan` of the same step over batches stacked on a leading axis; metrics
  # come back stacked. See `config.steps_per_dispatch`.
  multi_step: Callable = None
  stacked_sharding: Any = None

  def put(self, batch):
    """Host-local numpy batch -> global arrays sharded along 'data'."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(x)),
        batch)

  def put_stacked(self, batches):
    """A list of host-local batches -> global arrays [len, batch, ...] for `multi_step`."""
    return jax.tree.map(
        lambda *xs: jax.make_array_from_process_local_data(self.stacked_sharding, np.stack(xs)),
        *batches)


def example_batch_from_spec(spec, batch_size):
  return {k: np.zeros((batch_size,) + tuple(shape), dtype) for k, (shape, dtype) in spec.items()}


def build_trainer(config, data_info, element_spec, devices=None) -> Trainer:
  """Builds the model, the sharded initial state (shapes first) and the train step.

  `devices` defaults to all devices; tests pass a subset to compare meshes."""
  family = get_family(config.model.name)
  validate_config(config, family, len(devices) if devices is not None else None)
  model = family.build_model(config, data_info)
  mesh = make_mesh(devices)
  tx = make_optimizer(config)
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P('data'))
  loss_fn = family.make_loss_fn(config, model, data_info)
  example = example_batch_from_spec(element_spec, config.batch_size)
  seed = config.seed
  max_skip_norm = float(config.skip_grad_norm_above)
  ema_decay = float(config.ema_decay)

  def init():
    rng = jax.random.PRNGKey(seed)
    variables = family.init_variables(model, jax.random.fold_in(rng, -1 & 0x7FFFFFFF),
                                      jax.tree.map(jnp.asarray, example))
    variables = flax.core.unfreeze(variables)
    params = variables.pop('params')
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
        opt_state=tx.init(params), rng=rng,
        skipped_updates=jnp.zeros((), jnp.int32), consecutive_skips=jnp.zeros((), jnp.int32),
        ema_params=jax.tree.map(jnp.copy, params) if ema_decay > 0 else None)

  abstract = jax.eval_shape(init)
  state_sharding = jax.tree.map(lambda _: replicated, abstract)
  init_fn = jax.jit(init, out_shardings=state_sharding)
  abstract_state = jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract, state_sharding)

  precision = config.matmul_precision

  def train_step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    with matmul_precision(precision):
      (loss, (metrics, new_model_state)), grads = grad_fn(
          state.params, state.model_state, batch, rng, state.step)
    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if max_skip_norm > 0:
      ok &= grad_norm <= max_skip_norm
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    ok &= jnp.isfinite(optax.tree.norm(updates))   # never step into NaN/inf parameters
    new_params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    skipped = 1 - ok.astype(jnp.int32)
    ema_params = state.ema_params
    if ema_decay > 0:   # ema <- decay * ema + (1 - decay) * params_new; kept on a skip
      ema_params = keep(jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
                                     ema_params, new_params), ema_params)
    new_state = state.replace(
        step=state.step + 1,
        params=keep(new_params, state.params),
        ema_params=ema_params,
        model_state=keep(new_model_state, state.model_state),
        opt_state=keep(new_opt_state, state.opt_state),
        skipped_updates=state.skipped_updates + skipped,
        consecutive_skips=jnp.where(ok, 0, state.consecutive_skips + 1))
    metrics = dict(metrics)
    metrics['grad_norm'] = grad_norm
    metrics['skipped_update'] = skipped.astype(jnp.float32)
    return new_state, metrics

  check_memory(config, abstract, train_step, example, len(mesh.devices.flat))
  options = xla_options.compiler_options(config.cpu_convolutions,
                                         mesh.devices.flat[0].platform)
  step_fn = jax.jit(train_step, in_shardings=(state_sharding, batch_sharding),
                    out_shardings=(state_sharding, replicated), donate_argnums=(0,),
                    compiler_options=options)
  stacked_sharding = NamedSharding(mesh, P(None, 'data'))
  multi_step_fn = jax.jit(lambda state, batches: jax.lax.scan(train_step, state, batches),
                          in_shardings=(state_sharding, stacked_sharding),
                          out_shardings=(state_sharding, replicated), donate_argnums=(0,),
                          compiler_options=options)
  return Trainer(config, family, model, data_info, mesh, tx, state_sharding, batch_sharding,
                 init_fn, step_fn, abstract_state, multi_step_fn, stacked_sharding)


def _available_bytes(device):
  """Memory one device can hold: the accelerator's limit, or the host's free RAM."""
  try:
    stats = device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    stats = {}
  if stats.get('bytes_limit'):
    return int(stats['bytes_limit']) - int(stats.get('bytes_in_use', 0))
  try:
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_AVPHYS_PAGES')
  except (ValueError, OSError, AttributeError):
    return None


def _largest_intermediate(jaxpr):
  """(bytes, shape, dtype) of the largest array a jaxpr (or any jaxpr inside it) makes."""
  best = (0, (), None)
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      aval = getattr(v, 'aval', None)
      if hasattr(aval, 'shape') and isinstance(getattr(aval, 'dtype', None), np.dtype):
        size = math.prod(aval.shape) * aval.dtype.itemsize
        best = max(best, (size, tuple(aval.shape), str(aval.dtype)), key=lambda t: t[0])
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (tuple, list)) else (param,)):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          best = max(best, _largest_intermediate(inner), key=lambda t: t[0])
  return best


def check_memory(config, abstract_state, train_step, example, num_devices):
  """Refuses, before anything is allocated or compiled, a config whose train state
  (parameters, gradients, optimiser moments: 4x the parameters, plus the rest of the
  state) and largest intermediate array cannot fit on one device. The message names
  the config fields whose values appear in the offending shapes."""
  available = _available_bytes(jax.local_devices()[0])
  if available is None:
    return
  nbytes = lambda x: math.prod(x.shape) * np.dtype(x.dtype).itemsize
  params = sum(nbytes(x) for x in jax.tree.leaves(abstract_state.params))
  leaves = jax.tree_util.tree_flatten_with_path(
      {'params': abstract_state.params, 'model_state': abstract_state.model_state})[0]
  state = sum(nbytes(x) for x in jax.tree.leaves(abstract_state))
  need = state + 2 * params      # the state, the gradients and the updated parameters
  biggest_path, biggest = max(leaves, key=lambda t: nbytes(t[1]), default=(None, None))
  shapes = [('/'.join(str(getattr(k, 'key', k)) for k in biggest_path), tuple(biggest.shape))
            ] if biggest else []
  if need <= available:
    spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(
        (a.shape[0] // num_devices,) + a.shape[1:], a.dtype), example)
    jaxpr = jax.make_jaxpr(train_step)(abstract_state, spec).jaxpr
    size, shape, dtype = _largest_intermediate(jaxpr)
    need += size
    shapes.append((f'an intermediate {dtype} array', shape))
  if need <= available:
    return
  gib = lambda b: f'{b / 2**30:.1f} GiB'
  values = {f'config.model.{k}={v}' for k, v in config_leaves(config.model)
            if isinstance(v, int) and not isinstance(v, bool) and v > 1
            for _, shape in shapes if v in shape} | {
                f'config.batch_size={config.batch_size}' for _, shape in shapes
                if config.batch_size // num_devices in shape[:1]}
  raise ConfigError(
      f'This config needs at least {gib(need)} on one device (train state {gib(state)}; '
      + '; '.join(f'{name} of shape {shape}' for name, shape in shapes)
      + f') but {jax.local_devices()[0].platform} has {gib(available)} free. Reduce '
      + (', '.join(sorted(values)) if values else 'the model or batch size') + '.')


def dispatch_sizes(start_step, config):
  """Steps per jitted call from `start_step` to the end: `config.steps_per_dispatch`
  where a whole group fits before the next log / evaluation / checkpoint step, single
  steps otherwise, so those events happen at exactly the same steps for any value."""
  k = config.steps_per_dispatch
  intervals = [config.log_every_steps, config.checkpoint_every_steps]
  if config.eval_every_steps:
    intervals.append(config.eval_every_steps)
  step = start_step
  while step < config.num_train_steps:
    next_event = min([config.num_train_steps] + [(step // n + 1) * n for n in intervals])
    n = k if next_event - step >= k else 1
    yield n
    step += n


def device_batches(host_batches, sizes, trainer, prefetch=2):
  """Yields (n, device batch) for each n of `sizes`: one batch for n == 1, n stacked
  batches otherwise; `prefetch` dispatches' batches are kept in flight on the devices
  (the transfers are asynchronous)."""
  def grouped():
    for n in sizes:
      group = list(itertools.islice(host_batches, n))
      yield n, (trainer.put(group[0]) if n == 1 else trainer.put_stacked(group))
  return _read_ahead(grouped(), prefetch)


def _read_ahead(iterator, size):
  """Yields the items of `iterator`, keeping `size` more already produced."""
  queue = collections.deque()
  for item in iterator:
    queue.append(item)
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def run_evaluation(trainer, state, splits, workdir, rng, image_dir=None, image_prefix='',
                   config=None):
  """The whole evaluation split of `splits` with the parameters of `state`: their
  moving average when the run keeps one (config.ema_decay > 0). `config` (default the
  trainer's) may differ in its eval fields (see `selection_config`)."""
  del workdir
  params = state.params if state.ema_params is None else state.ema_params
  variables = {'params': params, **state.model_state}
  return evaluate_split(trainer.family, config or trainer.config, trainer.model, variables,
                        splits.eval,
                        splits.info, rng, trainer.put, step=int(state.step),
                        image_dir=image_dir, image_prefix=image_prefix)


def evaluate_split(family, config, model, variables, source, data_info, rng, put, step=0,
                   image_dir=None, image_prefix='', progress=True):
  """Metrics of `variables` over one pass of `source`, the family's per-batch sums
  added up in float64, then finished by the family; with `image_dir`, its pictures.

  Batch i draws its randomness from fold_in(rng, i). The sums of batch i are fetched
  after batch i + 1 is dispatched, so the device never waits for the host. Runs at
  `config.eval.matmul_precision` (default 'highest': reported likelihoods do not
  depend on the backend's fast float32 matmul modes)."""
  stats_fn = jax.jit(family.eval_stats(config, model, data_info),
                     compiler_options=xla_options.compiler_options(config.cpu_convolutions))
  total_examples = data_info.get('num_eval')
  meter = EvalProgress(total_examples, enabled=progress and jax.process_index() == 0)
  totals, first, in_flight = None, None, None

  def add(totals, sums):
    sums = jax.tree.map(lambda v: np.asarray(v, np.float64), jax.device_get(sums))
    return sums if totals is None else jax.tree.map(np.add, totals, sums)

  with matmul_precision(config.eval.matmul_precision):
    for i, host_batch in enumerate(source):
      if first is None:
        first = host_batch
      sums = stats_fn(variables, put(host_batch), jax.random.fold_in(rng, i))
      if in_flight is not None:
        totals = add(totals, in_flight)
      in_flight = sums
      meter.update(int(np.sum(host_batch['valid'])) * jax.process_count())
    if in_flight is None:
      raise data_lib.DataError('The evaluation split yielded no batches.')
    totals = add(totals, in_flight)
    metrics = family.eval_metrics(config, data_info, totals)
    meter.done()
    if image_dir and family.eval_images is not None and jax.process_index() == 0:
      # A local copy of the (replicated) variables: no computation spans processes.
      local = jax.tree.map(
          lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a, variables)
      try:
        family.eval_images(ImageContext(config=config, model=model, variables=local,
                                        data_info=data_info, rng=rng, image_dir=image_dir,
                                        image_prefix=image_prefix, step=step), first)
      except OSError as e:
        raise ImageWriteError(
            f'Writing the evaluation images of step {step} into {image_dir} failed: {e}. Make '
            'it writable (or free disk space) and rerun the same command.', metrics) from e
  return metrics


def evaluation_metric_names(trainer, config, data_info, element_spec):
  """The names of the metrics an evaluation with `config` reports, without evaluating:
  the family's eval_stats traced on shapes only (jax.eval_shape, nothing compiled or
  run), its sums filled with ones and finished by eval_metrics. None when the family's
  functions do not allow it (the first evaluation then tells)."""
  family, state = trainer.family, trainer.abstract_state
  n = config.eval.batch_size
  batch = {k: jax.ShapeDtypeStruct((n,) + tuple(shape), dtype)
           for k, (shape, dtype) in element_spec.items()}
  batch['valid'] = jax.ShapeDtypeStruct((n,), np.bool_)
  try:
    stats_fn = family.eval_stats(config, trainer.model, data_info)
    sums = jax.eval_shape(stats_fn, {'params': state.params, **state.model_state}, batch,
                          jax.random.PRNGKey(0))
    totals = jax.tree.map(lambda s: np.ones(s.shape, np.float64), sums)
    with np.errstate(all='ignore'):
      return set(family.eval_metrics(config, data_info, totals))
  except Exception:  # pylint: disable=broad-except  (a best effort: BestCheckpoint checks too)
    return None


def check_select_metric(trainer, config, data_info, element_spec):
  """Refuses (ConfigError), before training, a config.eval.select_metric that the family's
  evaluation does not report (see `evaluation_metric_names`)."""
  metric = config.eval.select_metric
  names = evaluation_metric_names(trainer, config, data_info, element_spec)
  if names is not None and metric not in names:
    raise ConfigError(f"config.eval.select_metric='{metric}' is not a metric of the "
                      f"'{config.model.name}' evaluation; choose one of {sorted(names)}.")


def selection_config(config):
  """The config of the evaluations that choose the best checkpoint: with
  config.eval.select_num_importance_samples (> 0) importance samples instead of
  eval.num_importance_samples, so that frequent selection evaluations stay cheap while
  eval.py reports the full count."""
  k = int(config.eval.select_num_importance_samples)
  if not k or 'num_importance_samples' not in config.eval:
    return config
  chosen = copy.deepcopy(config)
  with chosen.unlocked():
    chosen.eval.num_importance_samples = k
    chosen.eval.iw_chunk_size = min(int(config.eval.iw_chunk_size), k)
  return chosen


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
  try:
    built = data_lib.get_datasets(chosen)
  except data_lib.DataError as e:
    raise ConfigError(f'{why}, which config.data.name=\'{config.data.name}\' cannot give: '
                      f'{e}') from e
  if built.info.get('eval_split') != split:
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


class _Preemption:
  """SIGTERM or SIGINT (Ctrl-C) sets a flag; the loop saves a checkpoint at the
  current step and stops with `Preempted`. A second Ctrl-C exits at once.

  Several processes: a notice that reaches any one process stops all of them after
  the same step. JAX's preemption service (started by `jax.distributed.initialize`)
  catches SIGTERM in C++, tells every process, and they agree on the step after the
  furthest one's; `multihost_utils.reached_preemption_sync_point(t)`, called for every
  step t by every process (`poll`), is True at that step on all of them. This handler
  leaves SIGTERM to it and turns Ctrl-C into a SIGTERM to this process. Orbax calls the
  same function with the step it saves, so the step ids here are those of Orbax: the
  step count after each update."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, start_step=0):
    self.signum = None
    self.previous = {}
    self.synced = False
    if jax.process_count() > 1:
      try:
        # The step the sync protocol would take for this process if a notice came now.
        multihost_utils.reached_preemption_sync_point(start_step)
        self.synced = True
      except RuntimeError as e:  # jax_enable_preemption_service=False
        print(f'WARNING: {str(e).splitlines()[0]} Without it, a SIGTERM stops only the '
              'process that receives it.', flush=True)

  @property
  def requested(self):
    return self.signum is not None

  def __enter__(self):
    for signum in self.SIGNALS:
      if self.synced and signum == signal.SIGTERM:
        continue   # JAX's handler, installed by jax.distributed.initialize, keeps it
      try:
        self.previous[signum] = signal.signal(signum, self._handle)
      except ValueError:  # not the main thread
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.signum == signal.SIGINT:
      print('\nSecond Ctrl-C: exiting now without a checkpoint of this step.', flush=True)
      os._exit(128 + signum)
    if self.signum is None:
      self.signum = signum
      # Said at once: the step in flight, the save and Orbax's wait can take a while.
      if signum == signal.SIGINT:
        print('\nCtrl-C: saving a checkpoint at the end of this step (Ctrl-C again to exit '
              'at once).', flush=True)
      else:
        print(f'\n{signal.Signals(signum).name}: saving a checkpoint at the end of this step.',
              flush=True)
      if self.synced:
        os.kill(os.getpid(), signal.SIGTERM)   # to JAX's preemption notifier

  def poll(self, step, n=1):
    """Whether to save and stop after the jitted call that ran steps step-n+1 .. step."""
    if not self.synced:
      return self.requested
    reached = [multihost_utils.reached_preemption_sync_point(t)
               for t in range(step - n + 1, step + 1)]   # every step id, none skipped
    if any(reached) and self.signum is None:
      self.signum = signal.SIGTERM
    return any(reached)

  def message(self, step, directory):
    if self.synced:
      return (f'Preemption notice (SIGTERM or Ctrl-C to one of the {jax.process_count()} '
              f'processes): every process saved a checkpoint at step {step} in {directory}; '
              'rerun the same command on every process to resume.')
    return (f'{signal.Signals(self.signum).name} received: saved a checkpoint at step {step} in '
            f'{directory}; rerun the same command to resume.')

  def __exit__(self, *exc):
    for signum, previous in self.previous.items():
      signal.signal(signum, previous)


def train_and_evaluate(config, workdir):
  """Trains `config` in `workdir`, resuming from its latest checkpoint. Returns the
  last logged training metrics (and the last evaluation's, prefixed 'eval/').

  Process 0 holds WORKDIR/train.lock for the whole run (`vaes.workdir_lock`): a second
  run on a workdir in use is refused before it reads or writes anything there. A URL
  whose file system is missing or unknown is refused first (fs.PathError)."""
  fs.check_url(workdir)
  lock, busy = None, ''
  if jax.process_index() == 0:
    try:
      lock = workdir_lock.acquire(workdir)
    except workdir_lock.LockError as e:
      busy = str(e)
  if jax.process_count() > 1 and int(multihost_utils.broadcast_one_to_all(np.int32(bool(busy)))):
    busy = busy or f'Process 0 found the workdir {workdir} in use by another training run.'
  if busy:
    raise TrainingError(busy)
  try:
    return _train_and_evaluate(config, workdir)
  finally:
    if lock is not None:
      lock.release()


def _train_and_evaluate(config, workdir):
  t_start = time.time()
  is_main = jax.process_index() == 0
  family = get_family(config.model.name)
  if family.prepare is not None:
    family.prepare(config)
  splits = data_lib.get_datasets(config)
  trainer = build_trainer(config, splits.info, splits.train.element_spec)   # validates
  # Evaluations during training: on data.eval_split, or on eval.select_split when they
  # choose the checkpoint that eval.py reports.
  eval_splits, eval_prefix, best = splits, 'eval/', None
  eval_config = config
  if config.eval.select_metric:
    eval_splits, eval_prefix = selection_splits(config, splits), 'valid/'
    eval_config = selection_config(config)
    check_select_metric(trainer, eval_config, eval_splits.info, splits.train.element_spec)

  checkpointer = Checkpointer(workdir, config.max_checkpoints_to_keep)
  state, restored_step, saved_config = checkpointer.restore_latest(trainer.abstract_state,
                                                                   config)
  if state is None:
    set_aside = checkpointer.corrupted()
    if set_aside and is_main:
      banner = '!' * 78
      print(f'{banner}\nWARNING: starting from step 0, but {checkpointer.corrupted_dir} holds '
            f'{len(set_aside)} checkpoint(s) set aside as damaged ({", ".join(set_aside)}). '
            f'If they are yours, stop now and move them back.\n{banner}', flush=True,
            file=sys.stderr)
    state = trainer.init_fn()
    start_step = 0
    wall_before = 0.0
    run, run_origin = new_run(), 'fresh'   # the run this start begins
  else:
    start_step = int(restored_step)
    meta = checkpointer.read_meta(start_step)
    wall_before = float(meta.get('train_wall_time_s', 0.0))
    run, run_origin = meta.get('run'), 'checkpoint'
    if not (isinstance(run, dict) and run.get('id')):   # written before runs had ids
      run, run_origin = new_run(), 'legacy'
    run = {'id': run['id'], 'started': run.get('started')}
    now = config_dict(config)
    if start_step >= config.num_train_steps:
      differ = finished_run_diff(saved_config or {}, now) if saved_config else []
      if differ:
        raise ConfigError(
            f'The workdir {workdir} already holds a finished run of {start_step} steps with '
            f'other settings ({describe_diff(differ)}). Use a fresh --workdir for a new run '
            '(or the original config to evaluate this one).')
      if is_main:
        print(f'The workdir {workdir} already holds a finished run of {start_step} steps '
              f'(config.num_train_steps={config.num_train_steps}): nothing to train. Evaluate '
              f'it with `python eval.py --config=... --workdir={workdir}`.', flush=True)
      return {}
    if is_main:
      print(f'Resuming from the checkpoint of step {start_step} in {checkpointer.directory}.',
            flush=True)
      changed = config_diff(saved_config, now) if saved_config else []
      if changed:
        print(f'Note: resuming with fields changed since that checkpoint: '
              f'{describe_diff(changed)}.', flush=True)
  provenance.write_config_json(workdir, config)
  if int(jax.device_get(state.step)) != start_step:
    raise TrainingError(f'Checkpoint step {start_step} holds state.step={int(state.step)}.')
  if config.eval.select_metric:
    best = BestCheckpoint(workdir, config, run, run_origin)

  def wall_meta():
    """Training wall time up to now, over every run of this workdir (with checkpoints),
    and the run the checkpoint belongs to."""
    return {'train_wall_time_s': wall_before + time.time() - t_start, 'run': run}

  if is_main:
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    print(f'{config.model.name} on {config.data.name}: {n_params:,} parameters, '
          f'{jax.device_count()} device(s) ({jax.devices()[0].platform}), '
          f'{jax.process_count()} process(es), global batch {config.batch_size}.', flush=True)
    if config.steps_per_dispatch > 1 and jax.devices()[0].platform == 'cpu':
      print(f'Note: config.steps_per_dispatch={config.steps_per_dispatch} on the CPU. XLA:CPU '
            'runs weight-gradient convolutions inside loops through a slow generic kernel '
            '(measured 15-35x slower per step); 1 is faster there.', flush=True)
    for line in warmup_warnings(config, family, splits.info):
      print(line, file=sys.stderr, flush=True)
    profile_note = profiler_lib.note(config.profile_steps, config.num_train_steps, start_step)
    if profile_note:
      print(profile_note, flush=True)
    if best is not None:
      so_far = (f'; best so far {best.value:.6g} at step {best.step}' if best.step is not None
                else '')
      print(f'Evaluations during training run on the {config.eval.select_split!r} split '
            f'(logged as valid/*); the checkpoint of the best {config.eval.select_metric} '
            f'({config.eval.select_mode}) is kept in {best.checkpointer.directory}{so_far}.',
            flush=True)

  writer = MetricWriter(workdir, enabled=is_main, resume_step=start_step, config=config)
  progress = Progress(start_step, config.num_train_steps, enabled=is_main)
  host_batches = splits.train.iterate(start_step)
  first = next(host_batches)
  data_lib.validate_batch(first, splits.train.element_spec, splits.info)
  batches = device_batches(itertools.chain([first], host_batches),
                           dispatch_sizes(start_step, config), trainer)
  eval_rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x5EED)
  image_dir = fs.join(workdir, 'images') if is_main else None
  pending, last = [], {}
  t_log, step_log = time.time(), start_step

  def check_skips(st):
    consecutive = int(jax.device_get(st.consecutive_skips))
    if consecutive >= config.max_consecutive_skips:
      raise TrainingError(
          f'{consecutive} consecutive updates had a non-finite (or too large) loss or gradient '
          f'at step {int(st.step)}; stopping. The last good checkpoint in '
          f'{checkpointer.directory} is intact. Lower config.learning_rate, set '
          'config.grad_clip_norm, or check the data.')

  profiler = profiler_lib.StepProfiler(config.profile_steps,
                                       fs.join(workdir, TENSORBOARD_DIR), enabled=is_main)
  # The last checkpoints are finished inside the handler's scope too: a Ctrl-C while
  # they are written is a preemption notice (a second one exits at once).
  with _Preemption(start_step) as preempt:
    try:
      step = start_step
      while step < config.num_train_steps:
        n, batch = next(batches)
        with profiler.step(step, n):
          if n == 1:
            state, metrics = trainer.train_step(state, batch)
          else:
            state, metrics = trainer.multi_step(state, batch)   # metrics stacked [n]
        step += n
        profiler.after(step, state)
        stop = preempt.poll(step, n)   # a notice to any process: all stop after this step
        pending.append(metrics)
        progress.update(step)
        last_step = step == config.num_train_steps

        if step % config.log_every_steps == 0 or last_step:
          fetched = jax.device_get(pending)
          pending = []
          last = {k: float(np.mean(np.concatenate([np.ravel(m[k]) for m in fetched])))
                  for k in fetched[0]}
          now = time.time()
          last['steps_per_sec'] = (step - step_log) / max(now - t_log, 1e-9)
          last['skipped_updates_total'] = float(jax.device_get(state.skipped_updates))
          t_log, step_log = now, step
          progress.newline()
          writer.write(step, last)
          check_skips(state)

        if config.eval_every_steps and (step % config.eval_every_steps == 0 or last_step):
          eval_metrics = run_evaluation(trainer, state, eval_splits, workdir, eval_rng,
                                        image_dir, f'step_{step:07d}_', eval_config)
          writer.write(step, eval_metrics, prefix=eval_prefix)
          writer.write_images(step, image_dir, f'step_{step:07d}_')
          last.update({f'{eval_prefix}{k}': v for k, v in eval_metrics.items()})
          if best is not None:
            best.update(step, state, config, eval_metrics, wall_meta())

        if step % config.checkpoint_every_steps == 0 or last_step or stop:
          check_skips(state)
          checkpointer.save(step, state, config, force=True, extra_meta=wall_meta())

        if stop and not last_step:
          checkpointer.wait()
          raise Preempted(preempt.message(step, checkpointer.directory), preempt.signum)
    finally:
      profiler.close()
      try:
        checkpointer.wait()  # finish checkpoints in flight, also when stopping on an error
        if best is not None:
          best.checkpointer.wait()
      finally:
        # Closed also when a wait failed (a full disk): else its buffered events are written
        # at exit, as a traceback. Errors of its own are not raised over the first one.
        writer.close(quiet=sys.exc_info()[0] is not None)
  if is_main:
    done = (f'; best {config.eval.select_split} {config.eval.select_metric}={best.value:.6g} '
            f'at step {best.step} in {best.checkpointer.directory}'
            if best is not None and best.step is not None else '')
    print(f'Training wall time {wall_meta()["train_wall_time_s"]:.1f} s (over every run of '
          f'this workdir){done}.', flush=True)
  return last
