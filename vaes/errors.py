"""The engine's errors: each is reported by train.py / eval.py as one line (its
message names the field, path or fix), never as a traceback. A leaf module: it
imports nothing from vaes, so every layer may raise them.

The data layer's `DataError` (vaes/data/core.py), the file-system layer's `PathError`
(vaes/fs.py) and the sweep's, collect's and lock's errors live with their layers."""


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field and the fix."""


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be restored (missing, damaged, of another model or run);
  the message names the directory and what to do."""


class TrainingError(RuntimeError):
  """Training cannot go on (workdir in use, repeated non-finite updates, ...)."""


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
