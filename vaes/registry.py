"""The one place where the engine learns about model families.

`config.model.name` -> `ModelFamily`. The training loop, checkpointing, logging
and the evaluation loop only ever call the functions below, so a new
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

eval_stats(config, model, data_info) -> stats_fn
    stats_fn(variables, batch, rng) -> dict (a pytree) of sums over the batch's real
    examples (`batch['valid']`, bool per example, marks them; the last batch of a
    split is padded). Pure: the engine jits it, runs it over the whole evaluation
    split and adds the batches' sums up in float64. eval_stats itself is a pure
    function too (no cache, no side effects): the engine calls it and jits stats_fn
    once per run and evaluation config, so periodic evaluations reuse one compilation.

eval_metrics(config, data_info, totals) -> dict[str, float]
    Finishes the split's summed statistics (numpy float64) into metrics.

eval_images(ctx: ImageContext, host_batch) -> None  (optional)
    Writes PNG grids into `ctx.image_dir` (names prefixed by `ctx.image_prefix`),
    on process 0 only, from a local copy of the variables; `host_batch` is the
    first evaluation batch.

validate_config(config) -> None  (optional)
    Raise `ConfigError` naming the field, the value and what is allowed. The engine
    calls it once per run, before building anything.

eval_config() -> ml_collections.ConfigDict  (optional)
    The family's own `config.eval` fields (e.g. num_importance_samples, iw_chunk_size),
    with defaults and meanings; the engine's eval fields (batch_size, num_images,
    matmul_precision, select_*, checkpoint) are in configs/base.py. The configs of the
    family start their `config.eval` from both. None: the family has no eval fields.

selection_eval(config) -> config  (optional)
    The config of the cheap evaluations that choose the best checkpoint (the engine
    calls it once per run when config.eval.select_metric is set): with
    config.eval.select_num_importance_samples = k > 0, a copy with k importance samples;
    else `config` itself. Families without it evaluate the selection with `config`, and
    their validate_config refuses select_num_importance_samples > 0.

kl_warmup(config, data_info) -> (steps, description)  (optional)
    The length of the family's KL warm-up and the field that set it, e.g.
    (5000, 'config.model.kl_warmup_steps=5000'); the engine warns at the start of
    training when it outlasts the run.

sample(config, options: SampleOptions) -> sampler  (optional; sample.py)
    Refuses (ConfigError) options the family cannot honour with this config (e.g.
    --from_layer above the number of layers), before anything is restored; the engine has
    already refused the options not named in `sample_options`. sampler(ctx: SampleContext)
    -> dict: draws from the model with `ctx.variables` (the weights eval.py evaluates) and
    `ctx.rng` only, so the same checkpoint and seed write the same bytes; writes its files
    into `ctx.out_dir`, named from `ctx.stem`, on process 0; returns {'files': [names
    relative to ctx.out_dir], ...} plus anything else for the JSON sidecar. The
    temperature scales the standard deviation of the prior's draws (a softmax temperature
    for a prior over codes). A family without it whose codes a prior models
    (`prior_interface`) is sampled through that prior.

sample_options: tuple of SampleOptions fields beyond num, temperature and seed
    ('from_layer', 'impute') that `sample` takes; sample.py refuses the others.

implementation_fields: tuple of dotted config names (optional)
    Fields that change only how the same function is computed (`model.unroll`,
    `model.remat`, `model.upsample`); a checkpoint may be resumed with other values.

Each family module also declares its whole `config.model` group once, with defaults
and meanings, in `model_config()`; the configs in configs/ start from it. It is the one
home of those defaults: the Linen modules built from it take the fields without defaults.
"""

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from vaes.errors import ConfigError  # noqa: F401  (re-exported: vaes.registry.ConfigError)


@dataclasses.dataclass
class ImageContext:
  config: Any
  model: Any
  variables: Dict[str, Any]     # {'params': ..., other collections}, on this process
  data_info: Any               # vaes.data.DataInfo
  rng: Any                      # jax PRNG key of the evaluation
  image_dir: str
  image_prefix: str = ''
  step: int = 0


@dataclasses.dataclass(frozen=True)
class SampleOptions:
  """What sample.py asks for (its flags)."""
  num: int = 64                 # samples (sequences, images) to draw
  temperature: float = 1.0      # scale of the prior's standard deviation (> 0)
  seed: int = 0                 # the sampling key: jax.random.PRNGKey(seed)
  from_layer: int = 0           # ladder / hierarchical VAEs: layers kept from q(z | x)
  impute: bool = False          # sequences: fill a hidden block of evaluation sequences

  def family_options(self):
    """The options beyond num, temperature and seed that are set (not at their default)."""
    return tuple(f.name for f in dataclasses.fields(self)
                 if f.name not in ('num', 'temperature', 'seed')
                 and getattr(self, f.name) != f.default)


@dataclasses.dataclass
class SampleContext:
  config: Any
  model: Any
  variables: Dict[str, Any]     # {'params': ..., other collections}, on this process
  data_info: Any                # vaes.data.DataInfo
  eval_source: Any              # host batches of the evaluation split (test inputs)
  rng: Any                      # jax PRNG key of the samples: PRNGKey(options.seed)
  options: SampleOptions
  out_dir: str                  # WORKDIR/samples
  stem: str                     # e.g. 'samples_n8_t0.8_s0': the files' names start with it

  def eval_examples(self, n, spread=False):
    """(Up to) n real examples of the evaluation split, in its order: {key: numpy array
    (n', ...)} without 'valid'. The first n; with `spread`, n spaced evenly over the whole
    split (a split stored sorted by label, such as the bundled MNIST test images, then
    shows every class)."""
    parts, have = [], 0
    for batch in self.eval_source:
      valid = np.asarray(batch['valid'])
      parts.append({k: np.asarray(v)[valid] for k, v in batch.items() if k != 'valid'})
      have += int(valid.sum())
      if have >= n and not spread:
        break
    if not parts:
      return {}
    examples = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if not spread:
      return {k: v[:n] for k, v in examples.items()}
    index = np.unique(np.linspace(0, have - 1, min(n, have)).round().astype(int))
    return {k: v[index] for k, v in examples.items()}


@dataclasses.dataclass(frozen=True)
class ModelFamily:
  name: str
  build_model: Callable
  init_variables: Callable
  make_loss_fn: Callable
  eval_stats: Callable
  eval_metrics: Callable
  eval_images: Optional[Callable] = None
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
  # eval_config() -> ConfigDict: the family's own config.eval fields with their defaults.
  eval_config: Optional[Callable] = None
  # selection_eval(config) -> config of the checkpoint-selection evaluations (fewer
  # importance samples: config.eval.select_num_importance_samples).
  selection_eval: Optional[Callable] = None
  # sample(config, options) -> sampler(ctx: SampleContext) -> dict (sample.py); with
  # sample_options, the SampleOptions fields beyond num / temperature / seed it takes.
  sample: Optional[Callable] = None
  sample_options: Tuple[str, ...] = ()


_FAMILIES: Dict[str, ModelFamily] = {}


def register_family(family: ModelFamily, *aliases: str) -> ModelFamily:
  for name in (family.name,) + aliases:
    _FAMILIES[name] = family
  return family


def family_names() -> Tuple[str, ...]:
  """Every registered config.model.name (aliases included), sorted."""
  return tuple(sorted(_FAMILIES))


def get_family(name: str) -> ModelFamily:
  """The registered family; the entry points import `vaes.families`, whose modules
  register themselves (the registry imports no family)."""
  if name not in _FAMILIES:
    raise ConfigError(f"config.model.name='{name}' is not a known model; choose one of "
                      f'{sorted(_FAMILIES)}.')
  return _FAMILIES[name]
