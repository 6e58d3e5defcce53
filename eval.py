"""Evaluate the latest checkpoint of a run on the whole evaluation split:
python eval.py --config=configs/vqvae.py --workdir=/tmp/vqvae
Writes WORKDIR/eval_metrics.json and PNG grids (WORKDIR/eval_*.png). Reads only
the parameters, so optimiser fields need not match the run's; creates nothing in
a workdir without checkpoints."""

from absl import app
from absl import logging

from vaes import cli


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO

  def body():
    import vaes.families  # noqa: F401  (each family registers itself)
    from vaes import evaluate  # after jax.distributed.initialize
    evaluate.evaluate(cli.FLAGS.config, cli.FLAGS.workdir)
  return cli.run(body)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
