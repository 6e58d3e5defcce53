"""Training curves of runs, drawn from their metrics.jsonl: one picture for the README.

    python -m vaes.curves LABEL=WORKDIR... --metric valid/nll --out curves.png
        [--epoch_images 50000] [--title TEXT]

One line per run: `metric` at every step WORKDIR/metrics.jsonl logged it (vaes.metric_writers
writes one JSON object a line, dropping the rows past a resumed step, so a preempted run's
curve has no repeats). The x axis is the step, or the epoch with --epoch_images (the training
images an epoch holds; the batch size is read from WORKDIR/config.json). A missing file, a
metric no row has, or a URL whose file system is missing or unknown, ends the command with
one line naming the file and the fix.
This module does not import JAX.
"""

import argparse
import json
import sys

from vaes import fs
from vaes.plotting import save_curves


class CurvesError(ValueError):
  """A missing file or metric: the message names it and the fix."""


def read_curve(workdir, metric):
  """(steps, values) of `metric` in WORKDIR/metrics.jsonl, in step order."""
  path = fs.join(workdir, 'metrics.jsonl')
  if not fs.exists(path):
    raise CurvesError(f'{path} does not exist; give a workdir of train.py.')
  points, seen = {}, set()
  with fs.open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue  # a line cut short by a kill
      seen.update(row)
      if metric in row:
        points[int(row['step'])] = float(row[metric])
  if not points:
    near = sorted(k for k in seen if k != 'step' and metric.split('/')[-1] in k)
    raise CurvesError(f'{path} has no {metric!r}; give one of its metrics'
                      + (f', e.g. {", ".join(near[:6])}.' if near else '.'))
  steps = sorted(points)
  return steps, [points[s] for s in steps]


def batch_size(workdir):
  """The run's global batch size, from WORKDIR/config.json (vaes.provenance)."""
  path = fs.join(workdir, 'config.json')
  try:
    with fs.open(path) as f:
      return int(json.load(f)['config']['batch_size'])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CurvesError(f'{path}: no config.batch_size ({e}); --epoch_images needs the run\'s '
                      'config.json, or leave it out to plot against steps.') from e


def parse_run(text):
  label, sep, workdir = text.partition('=')
  if not sep or not label or not workdir:
    raise CurvesError(f'{text!r} is not LABEL=WORKDIR; name each run, e.g. ladder=runs/lvae.')
  return label, workdir


def check_paths(out, folders):
  """--out and each run's folder, as vaes.fs can reach them; else CurvesError."""
  for path, flag in [(out, '--out')] + [(folder, None) for folder in folders]:
    try:
      fs.check_url(path, flag, read_only=True)
    except fs.PathError as e:
      raise CurvesError(str(e)) from e


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m vaes.curves', description=__doc__.split(
      '\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('runs', nargs='+', help='LABEL=WORKDIR, one per line of the plot')
  parser.add_argument('--metric', required=True, help='a key of metrics.jsonl, e.g. valid/nll')
  parser.add_argument('--out', required=True, help='the PNG to write (path or URL)')
  parser.add_argument('--epoch_images', type=int, default=0,
                      help='training images per epoch: x in epochs instead of steps')
  parser.add_argument('--title', default='')
  args = parser.parse_args(argv)
  try:
    runs = [parse_run(r) for r in args.runs]
    check_paths(args.out, [workdir for _, workdir in runs])
    curves = []
    for label, workdir in runs:
      steps, values = read_curve(workdir, args.metric)
      if args.epoch_images > 0:
        images_per_step = batch_size(workdir)   # read once per run, not once per point
        steps = [s * images_per_step / args.epoch_images for s in steps]
      curves.append((label, steps, values))
  except CurvesError as e:
    print(f'vaes.curves: {e}', file=sys.stderr)
    return 1
  xlabel = 'epoch' if args.epoch_images > 0 else 'step'
  save_curves(args.out, curves, xlabel=xlabel, ylabel=args.metric, title=args.title)
  print(f'vaes.curves: {len(curves)} curves of {args.metric} written to {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
