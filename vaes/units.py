"""Each latent unit of a trained ladder or hierarchical VAE: its KL and its activity.

  python -m vaes.units --config=configs/lvae_mnist_dynamic.py --workdir=runs/lvae \
      [--num_samples=10] [--export=FILE] [--config.data.eval_split=valid]

The weights are those eval.py evaluates (`vaes.evaluate.load_trained`: the checkpoint
config.eval.checkpoint names, the moving average when the run kept one, or an export), on
the whole evaluation split with --num_samples posterior samples per image. Per unit u of
layer l, averaged over the images:
  kl        the unit's KL term E_q[KL(q(u | .) || p(u | z_l+1))] in nats per image, in
            closed form for the ladder's layers and the top layer, else the Monte Carlo
            term log q(u | .) - log p(u | z_l+1) (a hierarchical VAE's lower layers),
            which may be slightly negative for a unit that carries nothing;
  activity  Cov_x(E_q[u | x]), Burda et al.'s criterion: active above 0.01.
Each layer's summary counts both the active units and the informative ones, with a KL
above 0.01 nats (eval.py's informative_units_layer_<l>).
The draws are eval.py's (`vaes.evaluate.eval_rng`): with --num_samples equal to
config.eval.num_importance_samples, a layer's units sum to eval.py's kl_layer_<l> and
counting the active ones gives its active_units_layer_<l>. Both are read together: a unit
that only follows the layer above is "active" with no KL of its own (README, MNIST rows).

Writes WORKDIR/units.json (the vectors, with the checkpoint, step, weights, split and
samples) and WORKDIR/units.png (each unit a point at its activity and KL, by layer);
`python -m vaes.layer_kl LABEL=DIR... --units --out FILE` draws several runs' side by side.
A model without stochastic layers, or a bad flag, is one line (exit status 2).
"""

from vaes import startup_interrupt  # first: Ctrl-C from here on is one line

if __name__ == '__main__':
  startup_interrupt.install('Interrupted: python -m vaes.units stopped before it finished; '
                            'nothing was written, rerun it.')

from absl import app  # noqa: E402  pylint: disable=wrong-import-position
from absl import flags  # noqa: E402  pylint: disable=wrong-import-position
from absl import logging  # noqa: E402  pylint: disable=wrong-import-position

from vaes import cli  # noqa: E402  pylint: disable=wrong-import-position

UNITS_PNG = 'units.png'


def analyse(config, workdir, num_samples=10, export_path=None):
  """Per-unit KL and activity of the model eval.py evaluates in `workdir` (or of the
  export file `export_path`) over config.data.eval_split; writes WORKDIR/units.json and
  units.png on process 0 and returns the JSON's content."""
  import copy   # pylint: disable=import-outside-toplevel
  import json   # pylint: disable=import-outside-toplevel
  import jax    # pylint: disable=import-outside-toplevel  (after jax.distributed.initialize)
  from vaes import evaluate, fs, plotting   # pylint: disable=import-outside-toplevel
  from vaes.collect import UNITS_JSON   # pylint: disable=import-outside-toplevel
  from vaes.errors import ConfigError   # pylint: disable=import-outside-toplevel
  from vaes.evaluation import Evaluator   # pylint: disable=import-outside-toplevel
  from vaes.families import ladder   # pylint: disable=import-outside-toplevel
  from vaes.registry import get_family   # pylint: disable=import-outside-toplevel
  fs.check_url(workdir)
  if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
    raise ConfigError(f'--num_samples={num_samples}: give the posterior samples per image, '
                      'an integer >= 1 (e.g. 10).')
  if get_family(config.model.name).eval_stats is not ladder.eval_stats:
    raise ConfigError(f"config.model.name='{config.model.name}' has no stochastic layers of "
                      'units; vaes.units reads ladder and hierarchical VAEs (lvae, hvae, '
                      'ladder_vae).')
  config = copy.deepcopy(config)   # the caller's config keeps its eval fields
  config.eval.num_importance_samples = num_samples
  trained = evaluate.load_trained(config, workdir, export_path, output_dir=workdir)
  evaluator = Evaluator(trained.family, config, trained.model, trained.splits.info,
                        trained.placement.put)
  totals, _ = evaluator.sums(trained.variables, trained.splits.eval, evaluate.eval_rng(config))
  layers = ladder.unit_layers(totals)
  info = trained.info
  record = {'checkpoint': trained.kind, 'step': int(trained.step), 'weights': info['weights'],
            'eval_split': config.data.eval_split, 'examples': int(totals['count']),
            'num_samples': num_samples, 'active_threshold': ladder.ACTIVE_UNIT_THRESHOLD,
            'kl_threshold': ladder.INFORMATIVE_KL_THRESHOLD,
            'layers': [{'layer': l + 1, 'kl': [float(v) for v in kl],
                        'activity': [float(v) for v in activity]}
                       for l, (kl, activity) in enumerate(layers)]}
  if trained.export:
    record['export'] = trained.export
  if jax.process_index() == 0:
    path = fs.join(workdir, UNITS_JSON)
    try:
      fs.write_atomic(path, json.dumps(record, indent=1) + '\n')
      plotting.save_unit_scatter(fs.join(workdir, UNITS_PNG), [(workdir, layers)],
                                 ladder.ACTIVE_UNIT_THRESHOLD, ladder.INFORMATIVE_KL_THRESHOLD)
    except OSError as e:
      raise fs.PathError(f'--workdir={workdir}: writing {path} failed ({e}). Make it '
                         'writable (or free disk space) and rerun the same command.') from e
    _report(path, record, layers)
  return record


def _report(path, record, layers):
  print(f"Units of the {record['checkpoint']} checkpoint (step {record['step']}, weights "
        f"{record['weights']}) on {record['examples']} examples of the "
        f"{record['eval_split']} split, {record['num_samples']} samples each -> {path}",
        flush=True)
  for l, (kl, activity) in enumerate(layers):
    print(f'  layer {l + 1}: KL {kl.sum():.4g} nats over {kl.size} units (largest '
          f'{kl.max():.3g}); {int((activity > record["active_threshold"]).sum())} active '
          f'(Cov_x > {record["active_threshold"]:g}), '
          f'{int((kl > record["kl_threshold"]).sum())} with KL > {record["kl_threshold"]:g} '
          'nats (informative)', flush=True)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it reads at INFO

  def body():
    import vaes.families  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    analyse(cli.FLAGS.config, cli.FLAGS.workdir, cli.FLAGS.num_samples, cli.FLAGS.export)
  return cli.run(body)


if __name__ == '__main__':
  cli.define_export_flag()
  flags.DEFINE_integer('num_samples', 10, 'Posterior samples per evaluation image.')
  app.run(main, flags_parser=cli.parse_flags)
