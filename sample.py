"""Draw from a trained model: python sample.py --config=configs/lvae.py --workdir=/tmp/lvae
[--num=64] [--temperature=0.8] [--seed=0] [--from_layer=K (ladder / hierarchical VAEs)]
[--impute (sequence models)] [--export=FILE]. Uses the checkpoint and weights eval.py
evaluates (the moving average when the run kept one; or an export file's) and writes PNG
grids, or per-sequence piano rolls and MIDI files, into WORKDIR/samples/ with a JSON
sidecar (vaes/sample.py). The same checkpoint and seed write the same files. Exit status:
0 done, 2 bad input (one line says what to fix), 130 for a Ctrl-C."""

from vaes import startup_interrupt  # first: Ctrl-C from here on is one line

startup_interrupt.install('Interrupted: sample.py stopped before it finished; rerun it.')

from absl import app  # noqa: E402  pylint: disable=wrong-import-position
from absl import flags  # noqa: E402  pylint: disable=wrong-import-position
from absl import logging  # noqa: E402  pylint: disable=wrong-import-position

from vaes import cli  # noqa: E402  pylint: disable=wrong-import-position

cli.define_export_flag()   # --export=FILE: an export's variables instead of WORKDIR's
flags.DEFINE_integer('num', 64, 'Samples to draw (images, or sequences).')
flags.DEFINE_float('temperature', 1.0, "Scale of the prior's standard deviation (a softmax "
                   'temperature for a prior over VQ codes); 1 = the model as trained.')
flags.DEFINE_integer('seed', 0, 'Sampling seed: the same checkpoint and seed give the same files.')
flags.DEFINE_integer('from_layer', 0, 'Ladder / hierarchical VAEs: keep the top K layers of '
                     "evaluation images' posterior and sample the rest (0 = prior samples).")
flags.DEFINE_bool('impute', False, 'Sequence models: fill in the hidden middle third of '
                  'evaluation sequences instead of generating.')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
  f = cli.FLAGS

  def body():
    import vaes.families  # noqa: F401  (each family registers itself)
    from vaes import sample  # after jax.distributed.initialize
    from vaes.registry import SampleOptions
    sample.sample(f.config, f.workdir, SampleOptions(
        num=f.num, temperature=f.temperature, seed=f.seed, from_layer=f.from_layer,
        impute=f.impute), export_path=f.export)
  return cli.run(body)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
