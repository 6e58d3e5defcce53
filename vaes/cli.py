"""Flags shared by train.py, eval.py and python -m vaes.export (eval.py and sample.py add
--export: `define_export_flag`), multi-host start-up, and one-line errors.

Expected failures (a bad flag, config, data, checkpoint or path) print one line
naming the field, the value and the fix, and exit with status 2; `--verbose` (or
VAES_VERBOSE=1) prints the traceback as well, and what the libraries log about it
(Orbax's error records and the asyncio noise of its failed writes, otherwise dropped:
see `_quiet_library_errors`).

A --workdir URL whose file system is missing or unknown is refused while the flags are
read, before anything is imported or built (`vaes.fs.check_url`)."""

import errno
import logging
import os
import re
import sys
import threading
import traceback

from absl import flags
from ml_collections import config_flags

from vaes import fs
from vaes.renames import renamed_field_message

FLAGS = flags.FLAGS

config_flags.DEFINE_config_file('config', None, 'Path to a config file (get_config()).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and images.')
flags.DEFINE_enum('jax_distributed', 'auto', ['auto', 'on', 'off'],
                  "Call jax.distributed.initialize(): 'on' always, 'auto' when a cluster "
                  'environment (TPU pod, SLURM, JAX_COORDINATOR_ADDRESS) is detected.')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-process).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process).')
flags.DEFINE_integer('process_id', None, 'This process (multi-process).')
flags.DEFINE_bool('verbose', False, 'Print tracebacks of expected errors too.')
flags.mark_flags_as_required(['config', 'workdir'])


def define_export_flag():
  """--export=FILE, for the commands that use a trained model (eval.py, sample.py): its
  variables from an export file (python -m vaes.export) instead of WORKDIR's checkpoints;
  WORKDIR then only receives the results. Checked when the flags are read (`parse_flags`)."""
  flags.DEFINE_string('export', None, 'An export file (python -m vaes.export) to use instead '
                      "of WORKDIR's checkpoints; WORKDIR receives the results.")


_CLUSTER_ENV = ('JAX_COORDINATOR_ADDRESS', 'TPU_WORKER_HOSTNAMES', 'SLURM_JOB_ID',
                'OMPI_COMM_WORLD_SIZE', 'MEGASCALE_COORDINATOR_ADDRESS')

EXIT_ERROR = 2


class StartupError(RuntimeError):
  """A failure before training starts (multi-host set-up)."""


def verbose(argv=None):
  if os.environ.get('VAES_VERBOSE', '') not in ('', '0'):
    return True
  if argv is not None:
    return '--verbose' in argv
  try:
    return bool(FLAGS.verbose)
  except flags.UnparsedFlagAccessError:
    return '--verbose' in sys.argv


def fail(message, argv=None):
  """Prints `ERROR: message` (and the traceback in verbose mode); exits with 2."""
  if verbose(argv) and sys.exc_info()[0] is not None:
    traceback.print_exc()
  print(f'ERROR: {message}', file=sys.stderr, flush=True)
  sys.exit(EXIT_ERROR)


def _config_arg(argv):
  for a in argv:
    if a.startswith('--config='):
      return a.split('=', 1)[1]
  return None


def _flag_error_message(e, argv):
  """One line for what went wrong while reading --config and its overrides."""
  text = str(e).strip().strip('\'"')
  path = _config_arg(argv)
  for a in argv:
    renamed = a.startswith('--config.') and renamed_field_message(a[9:].split('=', 1)[0])
    if renamed:
      return renamed
  m = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text.replace('\\"', '"'))
  if m:
    override = next((a for a in argv if a.startswith('--config.') and m.group(2) in a), None)
    shown = override.split('=', 1)[0] if override else f'--config...{m.group(2)}'
    return (f'{shown}: {path} has no field {m.group(2)!r}; did you mean '
            f'{shown.rsplit(".", 1)[0]}.{m.group(1)}?')
  if isinstance(e, SyntaxError):
    return (f'--config={path}: syntax error at line {e.lineno}: {e.msg}. Fix the file.')
  if path and not os.path.exists(path):
    return (f'--config={path}: no such file. Give the path of a config file, e.g. '
            '--config=configs/vqvae.py (relative to the current directory).')
  first = text.splitlines()[0] if text else type(e).__name__
  first = first.replace('\\n', ' ').replace('\\"', '"').split(' Other fields present')[0]
  if 'does not exist' in first or "has no attribute" in first or isinstance(
      e, (AttributeError, KeyError)):
    return (f'--config={path}: a field that does not exist: {first[:300].rstrip(".")}. '
            'Check the field names in the config file and the --config.* overrides.')
  return f'Reading --config={path} and its overrides failed: {type(e).__name__}: {first[:300]}'


def parse_flags(argv):
  """absl's flag parsing, with one line instead of a traceback for a bad --config,
  override or flag."""
  try:
    rest = FLAGS(argv)
    FLAGS.config.to_dict()  # a config file that failed to load raises only when used
  except flags.Error as e:
    fail(f'{e}. See --helpfull for the flags.', argv)
  except Exception as e:  # pylint: disable=broad-except  (config files run arbitrary code)
    fail(_flag_error_message(e, argv), argv)
  try:
    fs.check_url(FLAGS.workdir, '--workdir')   # before JAX, the data or the model
    if 'export' in FLAGS and FLAGS.export:
      fs.check_url(FLAGS.export, '--export', read_only=True)
  except fs.PathError as e:
    fail(str(e), argv)
  return rest


def _quiet_thread_errors():
  """Errors in background threads (Orbax's asynchronous checkpoint writer) reach the
  main thread as exceptions; print one line for them there, not a second traceback."""
  if verbose():
    return
  def hook(args):
    print(f'(background thread {args.thread.name}: {args.exc_type.__name__}: '
          f'{str(args.exc_value).splitlines()[0][:200] if str(args.exc_value) else ""})',
          file=sys.stderr, flush=True)
  threading.excepthook = hook


class _LibraryNoise(logging.Filter):
  """Drops what a failure the engine reports in one line leaves in the log: Orbax's
  error records, with their tracebacks (a save or restore that failed: CheckpointError,
  or a damaged checkpoint set aside), and asyncio's 'Future exception was never
  retrieved' for the other writes of the same save; and Orbax's warnings that a
  read-only manager (eval.py reading a workdir) is read-only."""

  def filter(self, record):
    if record.name == 'absl':   # Orbax logs through absl
      if '/orbax/' not in record.pathname.replace(os.sep, '/'):
        return True
      if record.levelno >= logging.ERROR:
        return False
      # A read-only CheckpointManager (eval.py, a second stage) is what we asked for.
      return not (record.levelno == logging.WARNING and 'read only' in
                  record.getMessage().replace('read_only', 'read only').lower())
    return False   # the asyncio and concurrent.futures loggers


# What tensorstore's callbacks raise, through sys.unraisablehook, when the event loop of
# an Orbax save or restore that failed was closed before its other reads or writes ended.
_HARMLESS_UNRAISABLE = ('Event loop is closed',
                        'cannot schedule new futures after interpreter shutdown')


def _harmless(exc):
  """An unraisable error that repeats a failure already reported in one line: the above,
  or a full disk met again by a writer's flush at exit."""
  if isinstance(exc, RuntimeError) and str(exc) in _HARMLESS_UNRAISABLE:
    return True
  return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


def _quiet_library_errors():
  """One line per expected failure, not 30 to 90 library tracebacks: filters Orbax's
  error records and the asyncio loggers (`_LibraryNoise`), and the 'Event loop is
  closed' RuntimeErrors tensorstore reports as unraisable (a disk-full save, the restore
  of a damaged checkpoint, and the interpreter's exit after either), with the full disk
  met again at exit (`_harmless`). --verbose keeps them all."""
  if verbose():
    return
  noise = _LibraryNoise()
  for name in ('absl', 'asyncio', 'concurrent.futures'):
    logging.getLogger(name).addFilter(noise)
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _harmless(unraisable.exc_value):
      previous(unraisable)
  sys.unraisablehook = hook


def maybe_initialize_distributed():
  """jax.distributed.initialize() before any computation, when asked or on a cluster."""
  import jax
  explicit = FLAGS.coordinator_address is not None
  detected = [k for k in _CLUSTER_ENV if k in os.environ]
  auto = FLAGS.jax_distributed == 'auto' and (explicit or detected)
  if FLAGS.jax_distributed == 'on' or auto:
    kwargs = {}
    if explicit:
      kwargs = dict(coordinator_address=FLAGS.coordinator_address,
                    num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    try:
      jax.distributed.initialize(**kwargs)
    except Exception as e:  # pylint: disable=broad-except
      why = (f'{", ".join(detected)} is set, so a multi-process job was assumed'
             if detected and not explicit else 'multi-process start-up was asked for')
      raise StartupError(
          f'jax.distributed.initialize() failed ({why}): '
          f'{str(e).splitlines()[0][:200].rstrip(".")}. '
          'For a single process (e.g. a salloc or interactive shell) pass '
          '--jax_distributed=off; for several, give --coordinator_address=host:port '
          '--num_processes=N --process_id=i.') from e


def run(body):
  """Runs `body()` (the work of train.py / eval.py) with the shared error handling:
  expected errors become one line and exit 2; `Preempted` exits 128 + signal."""
  _quiet_thread_errors()
  _quiet_library_errors()
  from vaes.data import DataError
  from vaes.errors import CheckpointError, ConfigError, Preempted, TrainingError
  try:
    maybe_initialize_distributed()
    body()
  except Preempted as e:
    print(str(e), flush=True)
    sys.exit(e.exit_code)
  except (ConfigError, DataError, CheckpointError, TrainingError, StartupError,
          fs.PathError) as e:
    fail(str(e))
  except KeyboardInterrupt:
    print('\nInterrupted before training started: nothing was saved.', file=sys.stderr,
          flush=True)
    sys.exit(130)
  return 0
