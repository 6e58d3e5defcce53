"""`config.profile_steps = (start_step, num_steps)`: a `jax.profiler` trace of those
train steps, on process 0, into WORKDIR/tensorboard/plugins/profile/<time>/ (the layout
TensorBoard's profile plugin and XProf read: `tensorboard --logdir WORKDIR/tensorboard`
with `pip install xprof`, or `xprof --logdir WORKDIR/tensorboard`). Each jitted call is
wrapped in `jax.profiler.StepTraceAnnotation('train', step_num=step)`, so the trace
viewer and the overview page show one region per step (per dispatch when
`config.steps_per_dispatch` > 1). `()` (the default) profiles nothing.

The trace is written by jax.profiler itself (local paths and file:// URLs are given as
absolute local paths, gs:// as it is; other URL schemes are not supported there).

Steps are counted as `state.step` before the update: (100, 5) traces the updates of
steps 100..104. A start at or past `config.num_train_steps` would trace nothing: it is
a ConfigError. A run that ends inside the steps, or is resumed after `start_step`, traces
only the steps it still runs, and says so in one line at its start (`note`).
"""

import contextlib

import jax

from vaes import fs

from vaes.registry import ConfigError


def validate(profile_steps, num_train_steps=None):
  """`()` or a pair (start_step >= 0, num_steps > 0) of integers; with `num_train_steps`,
  a start_step before it (else nothing would be profiled)."""
  value = tuple(profile_steps) if isinstance(profile_steps, (tuple, list)) else profile_steps
  ok = value == () or (isinstance(value, tuple) and len(value) == 2 and all(
      isinstance(v, int) and not isinstance(v, bool) for v in value) and value[0] >= 0
                       and value[1] > 0)
  if not ok:
    raise ConfigError(f'config.profile_steps={profile_steps!r}: give (start_step, num_steps), '
                      "e.g. --config.profile_steps='(100, 5)', or () for no profile.")
  if value and num_train_steps is not None and value[0] >= num_train_steps:
    start = max(0, min(10, num_train_steps - value[1]))
    raise ConfigError(f'config.profile_steps={value!r} starts at step {value[0]}, but the run '
                      f'ends at config.num_train_steps={num_train_steps}: nothing would be '
                      f"profiled. Start it earlier, e.g. --config.profile_steps='({start}, "
                      f"{min(value[1], num_train_steps)})', or give () for no profile.")


def note(profile_steps, num_train_steps, start_step=0):
  """One line when only part of `profile_steps` will be traced (the run ends inside them,
  or a resumed run starts after their first step), else None."""
  if not tuple(profile_steps):
    return None
  start, count = tuple(profile_steps)
  first, last = max(start, start_step), min(start + count, num_train_steps) - 1
  if first == start and last == start + count - 1:
    return None
  value = (start, count)
  if first > last:
    return (f'Note: config.profile_steps={value!r}: this run resumes at step {start_step}, '
            'after those steps: nothing is profiled.')
  why = ' and '.join(
      ([f'this run resumes at step {start_step}'] if first > start else []) +
      ([f'the run ends at config.num_train_steps={num_train_steps}']
       if last < start + count - 1 else []))
  return (f'Note: config.profile_steps={value!r}: {why}, so only steps {first}..{last} are '
          'profiled.')


class StepProfiler:
  """Starts the trace before the first jitted call that runs a profiled step, stops it
  (after the devices finish) once the last profiled step has run."""

  def __init__(self, profile_steps, logdir, enabled=True):
    validate(profile_steps)
    self.enabled = enabled and bool(tuple(profile_steps))
    self.start, count = tuple(profile_steps) if self.enabled else (0, 0)
    self.end = self.start + count
    self.logdir = logdir
    self.active = self.done = False

  def step(self, step, n=1):
    """Context for the jitted call that runs steps step .. step + n - 1."""
    if (self.enabled and not self.active and not self.done and step < self.end
        and step + n > self.start):
      fs.makedirs(self.logdir)
      jax.profiler.start_trace(fs.resolve(self.logdir))
      self.active = True
    if self.active:
      return jax.profiler.StepTraceAnnotation('train', step_num=step)
    return contextlib.nullcontext()

  def after(self, step, outputs):
    """Called with the step count after a jitted call and its outputs."""
    if self.active and step >= self.end:
      jax.block_until_ready(outputs)   # the trace holds the devices' work of these steps
      self.close()
      print(f'Profile of steps {self.start}..{self.end - 1} written to '
            f'{fs.join(self.logdir, "plugins", "profile")}; view it with `xprof '
            f'--logdir {self.logdir}` or TensorBoard with the xprof plugin.', flush=True)

  def close(self):
    if self.active:
      jax.profiler.stop_trace()
      self.active, self.done = False, True
