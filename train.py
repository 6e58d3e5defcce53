"""Train a model: python train.py --config=configs/vqvae.py --workdir=/tmp/vqvae
[--config.batch_size=64 ...]. Reruns of the same command resume from the latest
checkpoint in --workdir. Exit status: 0 finished, 2 bad input (one line says what
to fix), 128 + signal when stopped by SIGTERM / Ctrl-C after saving a checkpoint,
130 for a Ctrl-C before training started (nothing saved)."""

from vaes import startup_interrupt  # first: Ctrl-C from here on is one line

startup_interrupt.install('Interrupted before training started: nothing was saved.')

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
