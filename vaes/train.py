"""The training engine: TrainState, the optimiser, the jitted train step over a
('data',) mesh, the host feed and the loop. It knows nothing about any model family
beyond `vaes.registry.ModelFamily`.

Data flows one way: config -> data iterator -> loss_fn (model.apply) inside the
jitted step -> metrics / checkpoints. The jobs around the loop live beside it:
`vaes.preflight` (the config validated before anything is built, warnings, the
memory check), `vaes.evaluation` (the evaluation loop), `vaes.selection` (the best
checkpoint), `vaes.preemption` (SIGTERM / Ctrl-C) and `vaes.checkpoint`.
"""

import collections
import dataclasses
import itertools
import sys
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from vaes import data as data_lib
from vaes import fs
from vaes import preflight
from vaes import profiler as profiler_lib
from vaes import provenance
from vaes import selection
from vaes import workdir_lock
from vaes import xla_options
from vaes.checkpoint import BEST_DIR, LATEST_DIR, Checkpointer
from vaes.run_config import config_diff, config_dict, describe_diff, finished_run_diff, new_run
from vaes.errors import ConfigError, Preempted, TrainingError
from vaes.evaluation import Evaluator, check_select_metric, evaluation_variables
from vaes.mesh import Placement, make_mesh, matmul_precision
from vaes.metric_writers import TENSORBOARD_DIR, MetricWriter, Progress
from vaes.preemption import Preemption
from vaes.registry import get_family


@flax.struct.dataclass
class TrainState:
  step: jax.Array               # int32 scalar: number of updates attempted so far
  params: Any
  model_state: Any              # every non-'params' collection (batch_stats, vq_ema, ...)
  opt_state: Any
  rng: jax.Array                # base key; step keys are fold_in(rng, step)
  skipped_updates: jax.Array    # total updates skipped for non-finite / huge gradients
  consecutive_skips: jax.Array
  # Exponential moving average of params (config.weights_ema_decay > 0), else None.
  ema_params: Any = None

  def eval_variables(self):
    """The variables evaluations use (`vaes.evaluation.evaluation_variables`)."""
    return evaluation_variables(self.params, self.model_state, self.ema_params)


# ----------------------------------------------------------------------------
# The optimiser.
# ----------------------------------------------------------------------------


def make_optimizer(config):
  lr = config.learning_rate
  warmup = preflight.lr_warmup(config)[0]
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
  data_info: Any               # vaes.data.DataInfo
  placement: Placement
  tx: Any
  state_sharding: Any
  init_fn: Callable             # () -> TrainState, born sharded
  train_step: Callable          # (state, batch) -> (state, metrics), jitted, state donated
  abstract_state: Any
  # (state, batches) -> (state, metrics): len(batches) steps in one jitted call, a
  # `lax.scan` of the same step over batches stacked on a leading axis; metrics
  # come back stacked. See `config.steps_per_dispatch`.
  multi_step: Callable = None

  @property
  def mesh(self):
    return self.placement.mesh

  def put(self, batch):
    """Host-local numpy batch -> global arrays sharded along 'data'."""
    return self.placement.put(batch)

  def put_stacked(self, batches):
    """A list of host-local batches -> global arrays [len, batch, ...] for `multi_step`."""
    return self.placement.put_stacked(batches)

  def evaluator(self, config=None, data_info=None):
    """An `Evaluator` of this model with `config`'s eval fields and the evaluation split
    described by `data_info` (defaults: the trainer's)."""
    return Evaluator(self.family, config or self.config, self.model,
                     data_info or self.data_info, self.placement.put)


def make_init(config, family, model, tx, example):
  """() -> the initial TrainState: variables from fold_in(PRNGKey(seed), -1), the
  step keys' base PRNGKey(seed), and the moving average when config.weights_ema_decay > 0."""
  seed, ema = config.seed, config.weights_ema_decay > 0

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
        ema_params=jax.tree.map(jnp.copy, params) if ema else None)
  return init


def make_train_step(config, loss_fn, tx):
  """(state, batch) -> (state, metrics): one update, skipped (every field kept, counted)
  when the loss, the gradient or the update is not finite, or the gradient norm exceeds
  config.skip_grad_norm_above (> 0)."""
  max_skip_norm = float(config.skip_grad_norm_above)
  ema_decay = float(config.weights_ema_decay)
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
  return train_step


def build_trainer(config, data_info, element_spec, devices=None) -> Trainer:
  """Builds the model, the sharded initial state (shapes first) and the train step.

  Validates the config first (`preflight.validate_config`; the loop has done so before
  reading any data, but tests and benchmarks build trainers directly) and refuses a
  state that cannot fit on one device. `devices` defaults to all devices; tests pass a
  subset to compare meshes."""
  family = get_family(config.model.name)
  preflight.validate_config(config, family, len(devices) if devices is not None else None)
  model = family.build_model(config, data_info)
  placement = Placement(make_mesh(devices))
  tx = make_optimizer(config)
  example = data_lib.zeros_batch(element_spec, config.batch_size)
  init = make_init(config, family, model, tx, example)
  abstract = jax.eval_shape(init)
  state_sharding = jax.tree.map(lambda _: placement.replicated, abstract)
  abstract_state = jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract, state_sharding)
  train_step = make_train_step(config, family.make_loss_fn(config, model, data_info), tx)
  preflight.check_memory(config, abstract_state, train_step, example, placement.batch)
  options = xla_options.compiler_options(config.cpu_convolutions, placement.platform)
  jit = lambda f, batch_sharding: jax.jit(
      f, in_shardings=(state_sharding, batch_sharding),
      out_shardings=(state_sharding, placement.replicated), donate_argnums=(0,),
      compiler_options=options)
  return Trainer(
      config, family, model, data_info, placement, tx, state_sharding,
      init_fn=jax.jit(init, out_shardings=state_sharding,
                      compiler_options=xla_options.init_compiler_options(placement.platform)),
      train_step=jit(train_step, placement.batch), abstract_state=abstract_state,
      multi_step=jit(lambda state, batches: jax.lax.scan(train_step, state, batches),
                     placement.stacked))


# ----------------------------------------------------------------------------
# The host feed.
# ----------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------


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


@dataclasses.dataclass
class _Start:
  """Where a run starts: its state, step, run record and the wall time before it."""
  state: Any
  step: int
  run: dict                     # {'id', 'started'}: the run its checkpoints belong to
  origin: str                   # 'fresh' | 'checkpoint' | 'legacy' (see BestCheckpoint)
  wall_before: float = 0.0


@dataclasses.dataclass
class _Evaluations:
  """The evaluations during training: on data.eval_split (logged as eval/*), or, when
  they choose the checkpoint that eval.py reports, on eval.select_split (valid/*) with
  the family's selection eval fields, the best kept by `best`."""
  evaluate: Any                 # Evaluator
  source: Any
  prefix: str
  best: Any = None              # selection.BestCheckpoint


def _train_and_evaluate(config, workdir):
  t_start = time.time()
  family = get_family(config.model.name)
  preflight.validate_config(config, family)     # before any data, codes or model
  if family.prepare is not None:
    family.prepare(config)
  splits = data_lib.get_datasets(config)
  trainer = build_trainer(config, splits.info, splits.train.element_spec)
  eval_config, eval_splits = config, splits
  if config.eval.select_metric:
    eval_splits = selection.selection_splits(config, splits)
    eval_config = selection.selection_config(config)
    abstract = {'params': trainer.abstract_state.params,
                'model_state': trainer.abstract_state.model_state}
    check_select_metric(family, eval_config, trainer.model, eval_splits.info,
                        abstract, splits.train.element_spec)
  checkpointer = Checkpointer(workdir, config.max_checkpoints_to_keep)
  start = _restore_or_init(config, workdir, trainer, checkpointer)
  if start is None:
    return {}
  provenance.write_config_json(workdir, config)
  if int(jax.device_get(start.state.step)) != start.step:
    raise TrainingError(f'Checkpoint step {start.step} holds state.step={int(start.state.step)}.')
  evals = _Evaluations(
      trainer.evaluator(eval_config, eval_splits.info), eval_splits.eval,
      'valid/' if config.eval.select_metric else 'eval/',
      selection.BestCheckpoint(workdir, config, start.run, start.origin)
      if config.eval.select_metric else None)
  if jax.process_index() == 0:
    _announce(config, trainer, splits.info, start, evals.best)
  return _loop(config, workdir, trainer, splits.train, evals, checkpointer, start, t_start)


def _restore_or_init(config, workdir, trainer, checkpointer):
  """The `_Start` of this run: the latest checkpoint of the workdir, else a fresh state
  (with a warning when damaged checkpoints were set aside). None for a finished run of
  this config (nothing to train); a finished run of other training fields is refused."""
  is_main = jax.process_index() == 0
  state, step, saved_config = checkpointer.restore_latest(trainer.abstract_state, config)
  if state is None:
    set_aside = checkpointer.corrupted()
    if set_aside and is_main:
      banner = '!' * 78
      print(f'{banner}\nWARNING: starting from step 0, but {checkpointer.corrupted_dir} holds '
            f'{len(set_aside)} checkpoint(s) set aside as damaged ({", ".join(set_aside)}). '
            f'If they are yours, stop now and move them back.\n{banner}', flush=True,
            file=sys.stderr)
    state = trainer.init_fn()
    if config.init_from:
      state = _initialised_from(config, workdir, trainer, state)
    return _Start(state, 0, new_run(), 'fresh')
  step = int(step)
  meta = checkpointer.read_meta(step)
  run, origin = meta.get('run'), 'checkpoint'
  if not (isinstance(run, dict) and run.get('id')):   # written before runs had ids
    run, origin = new_run(), 'legacy'
  start = _Start(state, step, {'id': run['id'], 'started': run.get('started')}, origin,
                 float(meta.get('train_wall_time_s', 0.0)))
  now = config_dict(config)
  if step >= config.num_train_steps:
    differ = finished_run_diff(saved_config or {}, now) if saved_config else []
    if differ:
      raise ConfigError(
          f'The workdir {workdir} already holds a finished run of {step} steps with '
          f'other settings ({describe_diff(differ)}). Use a fresh --workdir for a new run '
          '(or the original config to evaluate this one).')
    if is_main:
      print(f'The workdir {workdir} already holds a finished run of {step} steps '
            f'(config.num_train_steps={config.num_train_steps}): nothing to train. Evaluate '
            f'it with `python eval.py --config=... --workdir={workdir}`.', flush=True)
    return None
  if is_main:
    print(f'Resuming from the checkpoint of step {step} in {checkpointer.directory}.',
          flush=True)
    changed = config_diff(saved_config, now) if saved_config else []
    if changed:
      print(f'Note: resuming with fields changed since that checkpoint: '
            f'{describe_diff(changed)}.', flush=True)
  return start


def _initialised_from(config, workdir, trainer, state):
  """`state` (a fresh one) with the weights and model state of config.init_from's
  checkpoint (config.init_from_checkpoint): the variables eval.py would evaluate there
  (the moving average of the parameters when that run kept one), a fresh optimiser state
  of them and, when this run keeps a moving average, its start at them."""
  fs.check_url(config.init_from, flag='--config.init_from', read_only=True)
  source = fs.resolve(config.init_from)
  if source == fs.resolve(workdir):
    raise ConfigError(f'config.init_from={source!r} is this run\'s own workdir: a run '
                      'resumes from its own checkpoints by itself; name another run\'s workdir.')
  kind = config.init_from_checkpoint
  if kind == 'auto':
    kind = 'best' if fs.isdir(fs.join(source, BEST_DIR)) else 'latest'
  if not fs.isdir(fs.join(source, BEST_DIR if kind == 'best' else LATEST_DIR)):
    raise ConfigError(
        f'config.init_from={source!r} holds no {kind} checkpoint '
        f'({fs.join(source, BEST_DIR if kind == "best" else LATEST_DIR)} is missing): name the '
        'workdir of a trained run' + (', or use --config.init_from_checkpoint=latest.'
                                      if kind == 'best' else '.'))
  checkpointer = Checkpointer(source, async_save=False, read_only=True,
                              subdir=BEST_DIR if kind == 'best' else LATEST_DIR)
  wanted = {'params': trainer.abstract_state.params,
            'model_state': trainer.abstract_state.model_state}
  # Other training fields (the bound, the KL warm-up, the optimiser) are the point of a
  # fine-tuning run: only the variables' structure must match.
  restored, step, info = checkpointer.restore_variables(wanted, config, same_model=False)
  if restored is None:
    raise ConfigError(f'config.init_from={source!r}: no {kind} checkpoint in '
                      f'{checkpointer.directory}; name the workdir of a trained run.')
  params = restored.get('ema_params', restored['params'])
  state = state.replace(params=params, model_state=restored['model_state'],
                        opt_state=jax.jit(trainer.tx.init, out_shardings=jax.tree.map(
                            lambda a: a.sharding, trainer.abstract_state.opt_state))(params),
                        ema_params=None if state.ema_params is None else
                        jax.tree.map(jnp.copy, params))
  if jax.process_index() == 0:
    print(f'Initialised from the {kind} checkpoint (step {step}, weights '
          f"{info['weights']}) of {source}; the optimiser, the step and the data start fresh.",
          flush=True)
  return state


def _announce(config, trainer, data_info, start, best):
  """The run's first lines: model, data, devices, then notes and warnings."""
  n_params = sum(x.size for x in jax.tree.leaves(start.state.params))
  print(f'{config.model.name} on {config.data.name}: {n_params:,} parameters, '
        f'{jax.device_count()} device(s) ({jax.devices()[0].platform}), '
        f'{jax.process_count()} process(es), global batch {config.batch_size}.', flush=True)
  for line, to_stderr in preflight.startup_notes(config, trainer.family, data_info, start.step):
    print(line, file=sys.stderr if to_stderr else sys.stdout, flush=True)
  if best is not None:
    so_far = (f'; best so far {best.value:.6g} at step {best.step}' if best.step is not None
              else '')
    print(f'Evaluations during training run on the {config.eval.select_split!r} split '
          f'(logged as valid/*); the checkpoint of the best {config.eval.select_metric} '
          f'({config.eval.select_mode}) is kept in {best.checkpointer.directory}{so_far}.',
          flush=True)


def _loop(config, workdir, trainer, train_source, evals, checkpointer, start, t_start):
  """Steps start.step .. config.num_train_steps: log, evaluate, keep the best, save;
  on a preemption notice, save and raise `Preempted`."""
  is_main = jax.process_index() == 0
  state, step, best = start.state, start.step, evals.best
  wall_meta = lambda: {'train_wall_time_s': start.wall_before + time.time() - t_start,
                       'run': start.run}   # over every run of this workdir (with checkpoints)
  writer = MetricWriter(workdir, enabled=is_main, resume_step=step, config=config)
  log = _Log(config, writer, Progress(step, config.num_train_steps, enabled=is_main), step)
  batches = _device_batches_from(train_source, step, config, trainer)
  eval_rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x5EED)
  image_dir = fs.join(workdir, 'images') if is_main else None
  profiler = profiler_lib.StepProfiler(config.profile_steps,
                                       fs.join(workdir, TENSORBOARD_DIR), enabled=is_main)
  # The last checkpoints are finished inside the handler's scope too: a Ctrl-C while
  # they are written is a preemption notice (a second one exits at once).
  with Preemption(step) as preempt:
    try:
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
        last_step = step == config.num_train_steps
        if log.add(step, metrics, state, last_step):
          _check_skips(config, state, checkpointer)
        if config.eval_every_steps and (step % config.eval_every_steps == 0 or last_step):
          prefix = f'step_{step:07d}_'
          eval_metrics = evals.evaluate(state.eval_variables(), evals.source, eval_rng,
                                        step=step, image_dir=image_dir, image_prefix=prefix)
          writer.write(step, eval_metrics, prefix=evals.prefix)
          writer.write_images(step, image_dir, prefix)
          log.last.update({f'{evals.prefix}{k}': v for k, v in eval_metrics.items()})
          if best is not None:
            best.update(step, state, config, eval_metrics, wall_meta())
        if step % config.checkpoint_every_steps == 0 or last_step or stop:
          _check_skips(config, state, checkpointer)
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
  return log.last


class _Log:
  """The training metrics of every step since the last log line, fetched and averaged
  every config.log_every_steps steps (and at the last step): one host sync per line."""

  def __init__(self, config, writer, progress, step):
    self.every, self.writer, self.progress = config.log_every_steps, writer, progress
    self.pending, self.last = [], {}
    self.t, self.step = time.time(), step

  def add(self, step, metrics, state, last_step):
    """Records the metrics of the call that ended at `step`; True when it logged."""
    self.pending.append(metrics)
    self.progress.update(step)
    if not (step % self.every == 0 or last_step):
      return False
    fetched = jax.device_get(self.pending)
    self.pending = []
    self.last = {k: float(np.mean(np.concatenate([np.ravel(m[k]) for m in fetched])))
                 for k in fetched[0]}
    now = time.time()
    self.last['steps_per_sec'] = (step - self.step) / max(now - self.t, 1e-9)
    self.last['skipped_updates_total'] = float(jax.device_get(state.skipped_updates))
    self.t, self.step = now, step
    self.progress.newline()
    self.writer.write(step, self.last)
    return True


def _check_skips(config, state, checkpointer):
  consecutive = int(jax.device_get(state.consecutive_skips))
  if consecutive >= config.max_consecutive_skips:
    raise TrainingError(
        f'{consecutive} consecutive updates had a non-finite (or too large) loss or gradient '
        f'at step {int(state.step)}; stopping. The last good checkpoint in '
        f'{checkpointer.directory} is intact. Lower config.learning_rate, set '
        'config.grad_clip_norm, or check the data.')


def _device_batches_from(train_source, start_step, config, trainer):
  """The run's (n, device batch) from `start_step` on; the first host batch is checked
  against the source's element spec first."""
  host_batches = train_source.iterate(start_step)
  first = next(host_batches)
  data_lib.validate_batch(first, train_source.element_spec, trainer.data_info)
  return device_batches(itertools.chain([first], host_batches),
                        dispatch_sizes(start_step, config), trainer)
