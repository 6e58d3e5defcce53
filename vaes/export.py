"""Export a trained run: the variables eval.py evaluates, with the run's config, in one file.

  python -m vaes.export --config=configs/vqvae.py --workdir=runs/vqvae --out=vqvae.msgpack \
      [--config.eval.checkpoint=best|latest]
  python eval.py --config=configs/vqvae.py --workdir=results/vqvae --export=vqvae.msgpack

The file (vaes/export_file.py) holds the parameters eval.py would evaluate in WORKDIR (their
moving average when the run kept one: `weights`), the model state (batch statistics, EMA
codebooks), and a meta item: the run's resolved config, the checkpoint it came from (kind,
step, workdir, run id), the selection of a best checkpoint, the training wall time and the
per-array checksums. No optimiser state: an export is for using the model (evaluation,
samples, a second stage's first stage: data.vqvae_workdir may name an export), not for
resuming its training. Flags and errors are those of eval.py (vaes/cli.py): a bad config,
a workdir without checkpoints or an unwritable --out is one line, exit status 2.
"""

from vaes import startup_interrupt  # first: Ctrl-C from here on is one line

if __name__ == '__main__':
  startup_interrupt.install('Interrupted: python -m vaes.export stopped before it finished; '
                            'nothing was written, rerun it.')

from absl import app  # noqa: E402  pylint: disable=wrong-import-position
from absl import flags  # noqa: E402  pylint: disable=wrong-import-position
from absl import logging  # noqa: E402  pylint: disable=wrong-import-position

from vaes import cli  # noqa: E402  pylint: disable=wrong-import-position


def export(config, workdir, out):
  """Writes the variables eval.py would evaluate in `workdir` (config.eval.checkpoint:
  best, latest or auto) and the run's config to the export file `out`; returns its meta."""
  import jax   # pylint: disable=import-outside-toplevel  (after jax.distributed.initialize)
  from vaes import evaluate, export_file, fs, provenance  # pylint: disable=import-outside-toplevel
  fs.check_url(workdir)
  fs.check_url(out, '--out', read_only=True)
  trained = evaluate.load_trained(config, workdir)
  info = trained.info
  wall, steps = trained.training_record()
  meta = {'config': info['config'], 'step': int(trained.step),
          'checkpoint': {'kind': trained.kind, 'step': int(trained.step), 'workdir': workdir,
                         'run': info['meta'].get('run')},
          'weights': info['weights'], 'weights_ema_decay': info['ema_decay'],
          'selection': info['meta'].get('selection') if trained.kind == 'best' else None,
          'train_wall_time_s': wall, 'train_steps': steps, 'versions': provenance.versions()}
  if jax.process_index() == 0:
    meta, size = export_file.save_export(out, trained.variables, meta)
    sizes = [a.size for a in jax.tree.leaves(trained.variables)]
    print(f'Exported the {trained.kind} checkpoint (step {trained.step}, weights: '
          f"{info['weights']}) of {workdir} to {out}: {len(sizes)} arrays, {sum(sizes):,} "
          f'values, {size / 1024:,.1f} KiB.', flush=True)
  return meta


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO

  def body():
    import vaes.families  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    export(cli.FLAGS.config, cli.FLAGS.workdir, cli.FLAGS.out)
  return cli.run(body)


if __name__ == '__main__':
  flags.DEFINE_string('out', None, 'The export file to write (e.g. run.msgpack).')
  flags.mark_flag_as_required('out')
  app.run(main, flags_parser=cli.parse_flags)
