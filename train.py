"""Train a model: python train.py --config=configs/vqvae.py --workdir=/tmp/vqvae
[--config.batch_size=64 ...]. Reruns of the same command resume from the latest
checkpoint in --workdir."""

import sys

from absl import app
from absl import logging

from vaes import cli


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
  cli.maybe_initialize_distributed()
  from vaes import train  # after jax.distributed.initialize
  from vaes.checkpoint import CheckpointError
  from vaes.data import DataError
  from vaes.registry import ConfigError
  try:
    train.train_and_evaluate(cli.FLAGS.config, cli.FLAGS.workdir)
  except train.Preempted as e:
    print(str(e), flush=True)
    return 0
  except (ConfigError, DataError, CheckpointError, train.TrainingError) as e:
    sys.exit(cli.report_error(e))
  return 0


if __name__ == '__main__':
  app.run(main)
