"""Preemption: SIGTERM or Ctrl-C makes the training loop save a checkpoint of the
current step and stop (`vaes.errors.Preempted`), on one process or all of them."""

import os
import signal

import jax
from jax.experimental import multihost_utils


class Preemption:
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
