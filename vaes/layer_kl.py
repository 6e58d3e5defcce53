"""Per-layer KL and active units of hierarchical runs, drawn from their eval_metrics.json:
the Ladder VAE paper's layer-by-layer comparison as one picture for the README.

    python -m vaes.layer_kl LABEL=DIR... --out layers.png [--units] [--title TEXT]

DIR is a workdir that eval.py has written to, or a results/<row>/seed<N> folder: its
eval_metrics.json holds kl_layer_<l> and active_units_layer_<l> for l = 1..L (the ladder
family's evaluation), and its config.json the layer sizes (model.latent_sizes), drawn as
dotted outlines behind the active units. Left: each layer's KL in nats per image; right: its
active units (Burda 2016: Cov_x(E_q[u | x]) > 0.01). Read the two together: in a ladder, a
collapsed middle layer's units still count as active when their posterior means follow the
layer above (README, MNIST rows). With --units, each unit instead, from DIR/units.json
(python -m vaes.units): one panel per run, a point per unit at its activity and its KL,
coloured by layer. A missing file, or a run without per-layer metrics, ends the command
with one line naming it and the fix.
This module does not import JAX.
"""

import argparse
import sys

from vaes import fs
from vaes.collect import CONFIG_JSON, METRICS_JSON, UNITS_JSON, CollectError, read_json
from vaes.curves import CurvesError, check_paths, parse_run
from vaes.plotting import save_layer_bars, save_unit_scatter


def read_layers(directory):
  """(kl, active, sizes) of DIR's evaluation, layer 1 first; sizes is None where
  DIR/config.json does not give one per layer."""
  path = fs.join(directory, METRICS_JSON)
  metrics = read_json(path, f'give a folder that eval.py has written (--workdir={directory})')
  num_layers = 0
  while f'kl_layer_{num_layers + 1}' in metrics:
    num_layers += 1
  if not num_layers:
    raise CurvesError(f'{path} has no kl_layer_1; give the evaluation of a ladder or '
                      'hierarchical run (model.name lvae or hvae).')
  layers = range(1, num_layers + 1)
  kl = [float(metrics[f'kl_layer_{l}']) for l in layers]
  active = [float(metrics.get(f'active_units_layer_{l}', float('nan'))) for l in layers]
  config_path = fs.join(directory, CONFIG_JSON)
  sizes = None
  if fs.exists(config_path):
    model = read_json(config_path, 'rerun train.py there').get('config', {}).get('model', {})
    if len(model.get('latent_sizes') or []) == num_layers:
      sizes = [int(n) for n in model['latent_sizes']]
  return kl, active, sizes


def read_units(directory):
  """[(kl, activity)] per layer (layer 1 first) and (the active-unit threshold, the KL
  threshold), from DIR/units.json."""
  path = fs.join(directory, UNITS_JSON)
  record = read_json(path, 'write it with python -m vaes.units --config=<the run\'s config> '
                           f'--workdir={directory}')
  try:
    layers = [(layer['kl'], layer['activity']) for layer in record['layers']]
    thresholds = float(record['active_threshold']), float(record['kl_threshold'])
  except (KeyError, TypeError, ValueError) as e:
    raise CurvesError(f'{path} is not a units.json of python -m vaes.units ({e!r}); write it '
                      'again with that command.') from e
  if not layers:
    raise CurvesError(f'{path} has no layers; write it again with python -m vaes.units.')
  return layers, thresholds


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m vaes.layer_kl', description=__doc__.split(
      '\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('runs', nargs='+', help='LABEL=DIR, one group of bars per run')
  parser.add_argument('--out', required=True, help='the PNG to write (path or URL)')
  parser.add_argument('--title', default='')
  parser.add_argument('--units', action='store_true',
                      help="each unit's KL and activity, from DIR/units.json (vaes.units)")
  args = parser.parse_args(argv)
  try:
    runs = [parse_run(r) for r in args.runs]
    check_paths(args.out, [directory for _, directory in runs])
    if args.units:
      units = [(label, read_units(directory)) for label, directory in runs]
    else:
      bars = [(label, *read_layers(directory)) for label, directory in runs]
  except (CurvesError, CollectError) as e:
    print(f'vaes.layer_kl: {e}', file=sys.stderr)
    return 1
  if args.units:
    _, (_, thresholds) = units[0]   # the same in every units.json of python -m vaes.units
    save_unit_scatter(args.out, [(label, layers) for label, (layers, _) in units],
                      *thresholds, title=args.title)
  else:
    save_layer_bars(args.out, bars, title=args.title)
  print(f'vaes.layer_kl: the {"units" if args.units else "layers"} of {len(runs)} runs '
        f'written to {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
