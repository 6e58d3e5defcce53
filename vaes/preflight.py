"""Preflight: what is checked before anything is built or compiled.

`validate_config` is the one validation of the whole config (engine fields, then the
family's own `validate_config`), run before any data, codes or model are made; the
data layer keeps only the checks that need the data. `check_memory` refuses, before
compiling, a train state that cannot fit on one device. `warmup_warnings` and
`startup_notes` are the lines printed at the start of training.
"""

import math
import os

import jax
import numpy as np

from vaes import objectives
from vaes import profiler as profiler_lib
from vaes import xla_options
from vaes.errors import ConfigError


def config_leaves(node, prefix=''):
  """(dotted name, value) of every leaf field of a ConfigDict."""
  for k, v in node.items():
    if hasattr(v, 'items'):
      yield from config_leaves(v, f'{prefix}{k}.')
    else:
      yield f'{prefix}{k}', v


def _validate_init_from(config):
  """config.init_from (None: a fine-tuning config without its source) and init_from_checkpoint."""
  if config.init_from is None:
    raise ConfigError('config.init_from is required by this config (it fine-tunes a trained '
                      'run): add --config.init_from=WORKDIR_OF_THE_TRAINED_RUN.')
  if config.init_from_checkpoint not in ('auto', 'best', 'latest'):
    raise ConfigError(f"config.init_from_checkpoint='{config.init_from_checkpoint}': choose "
                      "'auto', 'best' or 'latest'.")


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
  for field in ('adam_b1', 'adam_b2', 'weights_ema_decay'):
    if not 0.0 <= config[field] < 1.0:
      raise ConfigError(f'config.{field}={config[field]!r}: must be in [0, 1).')
  _validate_init_from(config)
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
  k = e.select_num_importance_samples   # used by the family's selection_eval
  cheaper = family is None or family.selection_eval is not None
  if not isinstance(k, int) or k < 0 or (k and not cheaper):
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
                 'below 1 (logged as kl_weight), so the trained objective is not a bound '
                 'on log p(x) (ELBO, IW or FIVO; evaluations still report the true bounds). '
                 'Give the warm-up as a fraction '
                 'of the run, e.g. --config.model.kl_warmup_fraction=0.25.')
  return out


def startup_notes(config, family, data_info, start_step):
  """The notes and warnings printed at the start of training, as (line, to_stderr)."""
  out = []
  if config.steps_per_dispatch > 1 and jax.devices()[0].platform == 'cpu':
    out.append((f'Note: config.steps_per_dispatch={config.steps_per_dispatch} on the CPU. '
                'XLA:CPU runs weight-gradient convolutions inside loops through a slow generic '
                'kernel (measured 15-35x slower per step); 1 is faster there.', False))
  out += [(line, True) for line in warmup_warnings(config, family, data_info)]
  profile_note = profiler_lib.note(config.profile_steps, config.num_train_steps, start_step)
  if profile_note:
    out.append((profile_note, False))
  return out


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


def check_memory(config, abstract_state, train_step, example, batch_sharding):
  """Refuses, before anything is allocated or compiled, a config whose train state
  (parameters, gradients, optimiser moments: 4x the parameters, plus the rest of the
  state) and largest intermediate array cannot fit on one device. The message names
  the config fields whose values appear in the offending shapes."""
  available = _available_bytes(jax.local_devices()[0])
  if available is None:
    return
  num_devices = batch_sharding.mesh.devices.size
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
    # One device's share of the batch. On one device that is the whole batch, given its
    # sharding so that JAX's trace cache hands this trace to the step's first call.
    spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(
        (a.shape[0] // num_devices,) + a.shape[1:], a.dtype,
        sharding=batch_sharding if num_devices == 1 else None), example)
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
