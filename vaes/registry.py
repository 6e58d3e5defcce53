"""The one place where the engine learns about model families.

`config.model.name` -> `ModelFamily`. The training loop, checkpointing, logging
and the evaluation driver only ever call the four functions below, so a new
family is a new module plus one `register_family` call; the engine never
special-cases a model.

Contract
--------
build_model(config, data_info) -> flax.linen.Module
    `data_info` is `Splits.info` of the dataset (shapes, kind, variance, ...).

init_variables(model, rng, batch) -> variables
    A dict of collections: 'params' plus any mutable state ('batch_stats',
    'vq_ema', ...). `batch` is an example batch (dict of arrays). Called
    under `jax.jit` (via `jax.eval_shape` first), so it must be pure.

make_loss_fn(config, model, data_info) -> loss_fn
    loss_fn(params, model_state, batch, rng, step) -> (loss, (metrics, new_model_state))
    * params: the 'params' collection; model_state: every other collection
      (possibly an empty dict), new_model_state has the same structure.
    * batch: dict of global (sharded) arrays; rng: a fresh key for this step
      (already folded with the step); step: int32 scalar (for warm-ups).
    * loss: float32 scalar to minimise; metrics: dict of float32 scalars,
      means over the global batch. Read the config in Python here and close
      over plain values: the ConfigDict never enters jit.

evaluate(ctx: EvalContext) -> dict[str, float]
    Runs over the *whole* evaluation split (`ctx.eval_source`, padded batches
    with a boolean 'valid' per example), returns a flat dict of floats and, when
    `ctx.image_dir` is set, writes PNG grids there (prefixed by ctx.image_prefix).

validate_config(config) -> None  (optional)
    Raise `ConfigError` naming the field, the value and what is allowed. The engine
    calls it once per run, before building anything.

kl_warmup(config, data_info) -> (steps, description)  (optional)
    The length of the family's KL warm-up and the field that set it, e.g.
    (5000, 'config.model.kl_warmup_steps=5000'); the engine warns at the start of
    training when it outlasts the run.

implementation_fields: tuple of dotted config names (optional)
    Fields that change only how the same function is computed (`model.unroll`,
    `model.remat`, `model.upsample`); a checkpoint may be resumed with other values.

Each family module also declares its whole `config.model` group once, with defaults
and meanings, in `model_config()`; the configs in configs/ start from it.
"""

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field and the fix."""


@dataclasses.dataclass
class EvalContext:
  config: Any
  model: Any
  variables: Dict[str, Any]     # {'params': ..., other collections}, replicated
  eval_source: Any              # iterable of host-local numpy batches with 'valid'
  data_info: dict
  rng: Any                      # jax PRNG key for the evaluation
  put: Callable[[dict], dict]   # host-local numpy batch -> global sharded jax arrays
  mesh: Any
  step: int = 0
  image_dir: Optional[str] = None
  image_prefix: str = ''
  train_source: Any = None      # for metrics that need training data (baselines)


@dataclasses.dataclass(frozen=True)
class ModelFamily:
  name: str
  build_model: Callable
  init_variables: Callable
  make_loss_fn: Callable
  evaluate: Callable
  validate_config: Optional[Callable] = None
  # Config fields ('model.unroll', ...) that choose how the same function is computed
  # (speed and memory only): a run may resume from a checkpoint with other values.
  implementation_fields: Tuple[str, ...] = ()
  # prepare(config) -> None, before the data is read (e.g. a prior extracts the codes of
  # its first stage and points config.data at them).
  prepare: Optional[Callable] = None
  # prior_interface(config, model, data_info) -> dict(levels, num_codes, encode, decode):
  # what a learned prior over this family's discrete codes needs (VQ families).
  prior_interface: Optional[Callable] = None
  # kl_warmup(config, data_info) -> (steps, 'config.model.<field>=<value>' that set them):
  # the engine warns when a KL warm-up outlasts the run.
  kl_warmup: Optional[Callable] = None


_FAMILIES: Dict[str, ModelFamily] = {}


def register_family(family: ModelFamily, *aliases: str) -> ModelFamily:
  for name in (family.name,) + aliases:
    _FAMILIES[name] = family
  return family


def get_family(name: str) -> ModelFamily:
  """The registered family; the entry points import `vaes.families`, whose modules
  register themselves (the registry imports no family)."""
  if name not in _FAMILIES:
    raise ConfigError(f"config.model.name='{name}' is not a known model; choose one of "
                      f'{sorted(_FAMILIES)}.')
  return _FAMILIES[name]
