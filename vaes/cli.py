"""Flags shared by train.py and eval.py, and multi-host start-up."""

import os

from absl import flags
from ml_collections import config_flags

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
flags.mark_flags_as_required(['config', 'workdir'])

_CLUSTER_ENV = ('JAX_COORDINATOR_ADDRESS', 'TPU_WORKER_HOSTNAMES', 'SLURM_JOB_ID',
                'OMPI_COMM_WORLD_SIZE', 'MEGASCALE_COORDINATOR_ADDRESS')


def maybe_initialize_distributed():
  """jax.distributed.initialize() before any computation, when asked or on a cluster."""
  import jax
  explicit = FLAGS.coordinator_address is not None
  auto = FLAGS.jax_distributed == 'auto' and (
      explicit or any(k in os.environ for k in _CLUSTER_ENV))
  if FLAGS.jax_distributed == 'on' or auto:
    kwargs = {}
    if explicit:
      kwargs = dict(coordinator_address=FLAGS.coordinator_address,
                    num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    jax.distributed.initialize(**kwargs)


def report_error(e):
  """One clear line for expected failures (bad config, data, checkpoint) instead of a trace."""
  import sys
  print(f'ERROR ({type(e).__name__}): {e}', file=sys.stderr, flush=True)
  return 2
