"""Evaluate the latest checkpoint of a run on the whole evaluation split:
python eval.py --config=configs/vqvae.py --workdir=/tmp/vqvae
Writes WORKDIR/eval_metrics.json and PNG grids (WORKDIR/eval_*.png). Reads only
the parameters, so optimiser fields need not match the run's; creates nothing in
a workdir without checkpoints. --export=FILE evaluates an export (python -m vaes.export)
instead, writing the results into WORKDIR. Exit status: 0 done, 2 bad input (one line
says what to fix), 130 for a Ctrl-C."""

from vaes import startup_interrupt  # first: Ctrl-C from here on is one line

startup_interrupt.install('Interrupted: eval.py stopped before it finished; rerun it.')

from absl import app  # noqa: E402  pylint: disable=wrong-import-position
from absl import logging  # noqa: E402  pylint: disable=wrong-import-position

from vaes import cli  # noqa: E402  pylint: disable=wrong-import-position

cli.define_export_flag()


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO

  def body():
    import vaes.families  # noqa: F401  (each family registers itself)
    from vaes import evaluate  # after jax.distributed.initialize
    evaluate.evaluate(cli.FLAGS.config, cli.FLAGS.workdir, cli.FLAGS.export)
  return cli.run(body)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
