"""Train a model: python train.py --config=configs/vqvae.py --workdir=/tmp/vqvae
[--config.batch_size=64 ...]. Reruns of the same command resume from the latest
checkpoint in --workdir. Exit status: 0 finished, 2 bad input (one line says what
to fix), 128 + signal when stopped by SIGTERM / Ctrl-C after saving a checkpoint,
130 for a Ctrl-C before training started (nothing saved)."""

import os
import signal
import sys


def _interrupted(signum, frame):
  """Ctrl-C before the training loop takes SIGINT over (vaes.train._Preemption): one
  line and exit 130 at once. Installed before anything else is imported: a
  KeyboardInterrupt raised inside an import, JAX's start-up or a gc callback printed a
  traceback, crashed the interpreter's exit, or was swallowed and the run went on."""
  del frame
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except Exception:  # pylint: disable=broad-except  (a write in progress)
      pass
  os.write(2, b'\nInterrupted before training started: nothing was saved.\n')
  os._exit(128 + signum)


signal.signal(signal.SIGINT, _interrupted)

from absl import app  # noqa: E402  pylint: disable=wrong-import-position
from absl import logging  # noqa: E402  pylint: disable=wrong-import-position

from vaes import cli  # noqa: E402  pylint: disable=wrong-import-position


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO

  def body():
    import vaes.families  # noqa: F401  (each family registers itself)
    from vaes import train  # after jax.distributed.initialize
    train.train_and_evaluate(cli.FLAGS.config, cli.FLAGS.workdir)
  return cli.run(body)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
