"""Evaluate the latest checkpoint of a run on the whole evaluation split:
python eval.py --config=configs/vqvae.py --workdir=/tmp/vqvae
Writes WORKDIR/eval_metrics.json and PNG grids (WORKDIR/eval_*.png)."""

import sys

from absl import app
from absl import logging

from vaes import cli


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
  cli.maybe_initialize_distributed()
  from vaes import evaluate
  from vaes.checkpoint import CheckpointError
  from vaes.data import DataError
  from vaes.registry import ConfigError
  try:
    evaluate.evaluate(cli.FLAGS.config, cli.FLAGS.workdir)
  except (ConfigError, DataError, CheckpointError) as e:
    sys.exit(cli.report_error(e))
  return 0


if __name__ == '__main__':
  app.run(main)
