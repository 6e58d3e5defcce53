"""Tables generated from runs, not typed by hand.

    python -m vaes.collect WORKDIR... [--metrics nll,neg_elbo] [--csv]

One row per workdir: the config fields that differ between the runs (dotted names, from
each WORKDIR/config.json written by vaes/provenance.py), then the metrics of
WORKDIR/eval_metrics.json (--metrics: those, in that order; default: every metric any run
has; the record of the weights evaluated, 'weights', is one of them, and a run whose
'weights' disagree with its config.json's weights_ema_decay is an error). Markdown by default,
CSV with --csv. A sweep's table is one command: `python -m vaes.collect runs/sweep/*`.

    python -m vaes.collect --results results [--csv]

The results table of the README, from the results/ folder (see results/README.md):
results/paper_numbers.json names the rows, each row's metric, the paper's number (with
an optional short note) and the paper's schedule; results/<row>/ holds the run's
eval_metrics.json and config.json, or one sub-folder per seed (results/<row>/seed0/, ...).
Columns: row, metric, paper, ours (the mean and each seed's value when there are several),
schedule, hardware, wall time. Rows without a run folder say 'not run'; a folder that
paper_numbers.json does not name is an error.

    python -m vaes.collect --results results --readme README.md

writes that table into the file between its two marker lines, `<!-- results-table ... -->`
and `<!-- /results-table -->`, instead of printing it (the rest of the file is kept).

Missing or unreadable files, and a URL whose file system is missing or unknown, end the
command with one line naming the file and the fix.
This module does not import JAX, so it runs anywhere in a second.
"""

import argparse
import csv
import io
import json
import math
import sys

from vaes import fs
from vaes.renames import upgrade_config

CONFIG_JSON = 'config.json'
METRICS_JSON = 'eval_metrics.json'
UNITS_JSON = 'units.json'      # python -m vaes.units
PAPER_JSON = 'paper_numbers.json'
# Wall times, in seconds, that eval_metrics.json may carry (the engine's to record).
WALL_TIME_KEYS = ('train_wall_time_s', 'eval_wall_time_s')


class CollectError(ValueError):
  """A run folder or results file that cannot be read; the message names the fix."""


def read_json(path, what):
  if not fs.exists(path):
    raise CollectError(f'{path} does not exist: {what}.')
  try:
    with fs.open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise CollectError(f'{path} is not readable JSON ({e}): {what}.') from e


def flatten(tree, prefix=''):
  """{'a': {'b': 1}, 'c': [1, 2]} -> {'a.b': 1, 'c': [1, 2]}."""
  out = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      out.update(flatten(value, name + '.'))
    else:
      out[name] = value
  return out


def load_run(workdir):
  """(flat config, metrics, provenance record) of one workdir."""
  metrics = read_json(fs.join(workdir, METRICS_JSON),
                      f'evaluate the run first (python eval.py --config=... --workdir={workdir})')
  record = read_json(fs.join(workdir, CONFIG_JSON),
                     'the run was made before runs wrote their provenance, or not by train.py; '
                     'rerun it (it resumes) to write it')
  if not isinstance(record, dict) or not isinstance(record.get('config'), dict):
    raise CollectError(f"{fs.join(workdir, CONFIG_JSON)} has no 'config' section: it was "
                       'not written by vaes.provenance; rerun train.py in that workdir.')
  if not isinstance(metrics, dict):
    raise CollectError(f'{fs.join(workdir, METRICS_JSON)} is not a JSON object of metrics.')
  record = {**record, 'config': upgrade_config(record['config'])}   # renamed fields
  check_weights(workdir, record['config'], metrics)
  return flatten(record['config']), metrics, record


def check_weights(workdir, config, metrics):
  """Refuses numbers of other weights than the config's: eval_metrics.json's 'weights'
  ('ema': the moving average, 'params'; absent in files written before it was recorded)
  against config.json's weights_ema_decay (ema_decay in runs saved before its rename)."""
  weights = metrics.get('weights')
  if weights not in ('ema', 'params'):
    return
  decay = config.get('weights_ema_decay') or 0.0
  if weights == ('ema' if decay > 0 else 'params') and (
      weights == 'params' or metrics.get('weights_ema_decay') == decay):
    return
  used = ('the moving average of the weights (weights_ema_decay='
          f'{metrics.get("weights_ema_decay")})' if weights == 'ema' else 'the raw weights')
  raise CollectError(f'{fs.join(workdir, METRICS_JSON)} holds the numbers of {used}, but '
                     f'{fs.join(workdir, CONFIG_JSON)} says weights_ema_decay={decay}: they '
                     f'are not of one run. Evaluate it again (python eval.py --config=... '
                     f'--workdir={workdir}).')


def differing_fields(configs):
  """Dotted names whose value is not the same in every config (absent counts as a value)."""
  names = sorted(set().union(*configs))
  missing = object()
  return [n for n in names
          if len({json.dumps(c.get(n, missing), sort_keys=True, default=repr)
                  for c in configs}) > 1]


def fmt(value, precise=False):
  """A table cell: '' for None, ints without a point, floats to 5 significant digits
  (all digits when `precise`), lists as JSON."""
  if value is None:
    return ''
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
    return str(int(value))
  if isinstance(value, float):
    return repr(value) if precise else f'{value:.5g}'
  if isinstance(value, (list, dict)):
    return json.dumps(value)
  return str(value)


def run_table(workdirs, metrics=None, precise=False):
  """(header, rows) of the runs in `workdirs`."""
  runs = [load_run(w) for w in workdirs]
  configs = [r[0] for r in runs]
  fields = differing_fields(configs) if len(runs) > 1 else []
  # Records that are not values (eval_config: the eval fields of the evaluation) are no
  # columns.
  present = sorted({k for r in runs for k, v in r[1].items() if not isinstance(v, dict)})
  if metrics:
    unknown = [m for m in metrics if m not in present]
    if unknown:
      raise CollectError(f'--metrics {",".join(unknown)}: no run has it; the runs have '
                         f'{",".join(present)}.')
  else:
    metrics = present
  header = ['run'] + fields + list(metrics)
  rows = [[w] + [fmt(c.get(f), precise) for f in fields]
          + [fmt(m.get(k), precise) for k in metrics]
          for w, (c, m, _) in zip(workdirs, runs)]
  return header, rows


# ---------------------------------------------------------------------------
# The results folder.

def row_runs(row_dir):
  """The run folders of one results row: the row folder itself when it holds the files,
  else its sub-folders (one per seed), sorted."""
  if fs.exists(fs.join(row_dir, METRICS_JSON)):
    return [row_dir]
  if not fs.isdir(row_dir):
    return []
  subs = sorted(fs.join(row_dir, d) for d in fs.listdir(row_dir)
                if fs.isdir(fs.join(row_dir, d)))
  if not subs:
    raise CollectError(f'{row_dir} holds neither {METRICS_JSON} nor per-seed folders; copy the '
                       f"run's {METRICS_JSON} and {CONFIG_JSON} into it.")
  return subs


def duration(seconds):
  """'M min SS s' under an hour, else 'H h MM min' to the nearest minute."""
  seconds = int(round(seconds))
  if seconds < 3600:
    return f'{seconds // 60} min {seconds % 60:02d} s'
  h, m = divmod(int(round(seconds / 60)), 60)
  return f'{h} h {m:02d} min'


def schedule(config, metrics):
  """'N steps x batch' of the training (eval_metrics.json's train_steps, else the
  evaluated step), and the step of the checkpoint reported when it was the best one."""
  steps = metrics.get('train_steps', metrics.get('step', config.get('num_train_steps')))
  if not isinstance(steps, (int, float)):
    return ''
  text = f'{int(steps):,} steps x {config.get("batch_size")}'
  if metrics.get('checkpoint') == 'best' and isinstance(metrics.get('step'), (int, float)):
    text += f', best {config.get("eval.select_split", "valid")} at {int(metrics["step"]):,}'
  return text


def hardware(record):
  d = record.get('devices') or {}
  if not d:
    return ''
  procs = f', {d["process_count"]} processes' if (d.get('process_count') or 1) > 1 else ''
  cores = f' ({d["host_cpus"]} cores)' if d.get('kind') == 'cpu' and d.get('host_cpus') else ''
  return f'{d.get("count")} x {d.get("kind")}{cores}{procs}'


def wall_time(metrics):
  parts = [f'{duration(metrics[k])} {k.split("_")[0]}' for k in WALL_TIME_KEYS
           if isinstance(metrics.get(k), (int, float))]
  return ' + '.join(parts) or 'not recorded'


def joined(values):
  """Distinct cells of a row's seeds, in order, joined by ' / '."""
  return ' / '.join(dict.fromkeys(values))


def ours(values, precise):
  """One run: its value; several: 'mean (a, b)'. Non-finite values (stored as strings by
  vaes.evaluate) are shown as they are, and no mean is taken."""
  if not all(isinstance(v, (int, float)) for v in values):
    return ' / '.join(fmt(v, precise) for v in values)
  if len(values) == 1:
    return fmt(float(values[0]), precise)
  mean = fmt(math.fsum(values) / len(values), precise)
  return f'{mean} ({", ".join(fmt(float(v), precise) for v in values)})'


def results_table(results_dir, precise=False):
  """(header, rows) of the results folder: one row per entry of paper_numbers.json, in its
  order; a row folder it does not name is an error."""
  paper = read_json(fs.join(results_dir, PAPER_JSON),
                    'it names the rows of the results table (see results/README.md)')
  names = list(paper) + sorted(
      d for d in fs.listdir(results_dir)
      if fs.isdir(fs.join(results_dir, d)) and d not in paper)
  header = ['row', 'metric', 'paper', 'ours', 'schedule', 'hardware', 'wall time']
  rows = []
  for name in names:
    if name not in paper:
      raise CollectError(f'{fs.join(results_dir, name)} is not a row of '
                         f'{fs.join(results_dir, PAPER_JSON)}; add "{name}": '
                         '{"metric": ..., "paper": ...} there (or move the folder out).')
    meta = paper[name]
    metric = meta.get('metric')
    if not metric:
      raise CollectError(f"{fs.join(results_dir, PAPER_JSON)}: row '{name}' has no "
                         "'metric'; add it (e.g. \"metric\": \"nll\").")
    paper_cell = ' '.join(c for c in (fmt(meta.get('paper'), precise) or '-',
                                      meta.get('paper_note', '')) if c)
    paper_schedule = meta.get('paper_schedule')
    dirs = row_runs(fs.join(results_dir, name))
    runs = [load_run(d) for d in dirs]
    if not runs:
      rows.append([name, metric, paper_cell, 'not run', f'paper: {paper_schedule}'
                   if paper_schedule else '', '', ''])
      continue
    missing = [d for d, (_, m, _) in zip(dirs, runs) if metric not in m]
    if missing:
      raise CollectError(f'{fs.join(missing[0], METRICS_JSON)} has no {metric!r}, the '
                         f"metric of row '{name}' in {PAPER_JSON}.")
    sched = joined(schedule(c, m) for c, m, _ in runs)
    if paper_schedule:
      sched += f' (paper: {paper_schedule})'
    rows.append([name, metric, paper_cell, ours([m[metric] for _, m, _ in runs], precise), sched,
                 joined(hardware(r) for _, _, r in runs), joined(wall_time(m) for _, m, _ in runs)])
  return header, rows


# ---------------------------------------------------------------------------
# Output.

def markdown(header, rows):
  def line(cells):
    return '| ' + ' | '.join(str(c).replace('|', '\\|') for c in cells) + ' |'
  return '\n'.join([line(header), '|' + '---|' * len(header)] + [line(r) for r in rows])


def to_csv(header, rows):
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator='\n')
  writer.writerow(header)
  writer.writerows(rows)
  return buf.getvalue().rstrip('\n')


TABLE_BEGIN = '<!-- results-table'     # a README's marker lines around the generated table
TABLE_END = '<!-- /results-table -->'


def splice_table(text, table, path):
  """`text` with the lines between its marker lines (TABLE_BEGIN ... and TABLE_END)
  replaced by `table`; `path` names the file in the error when a marker is missing."""
  begin = text.find(TABLE_BEGIN)
  end = text.find(TABLE_END, begin) if begin >= 0 else -1
  if end < 0 or '\n' not in text[begin:end]:
    raise CollectError(f'{path} has no line "{TABLE_BEGIN} ... -->" followed by a line '
                       f'"{TABLE_END}"; add the two where the table goes.')
  start = text.index('\n', begin) + 1
  return text[:start] + table.rstrip('\n') + '\n' + text[end:]


def write_into(path, table):
  """Splices `table` into the file `path` (splice_table), replacing it whole."""
  try:
    with fs.open(path) as f:
      text = f.read()
  except OSError as e:
    raise CollectError(f'--readme {path}: {e.strerror or e}; give the README to write the '
                       'table into.') from e
  fs.write_atomic(path, splice_table(text, table, path))


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m vaes.collect', description=__doc__.split(
      '\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('workdirs', nargs='*', help='run folders (each with eval_metrics.json '
                      'and config.json)')
  parser.add_argument('--metrics', default='', help='comma-separated metrics (default: all)')
  parser.add_argument('--csv', action='store_true', help='CSV (full precision) instead of '
                      'Markdown')
  parser.add_argument('--results', default='', help='a results/ folder: the README table')
  parser.add_argument('--readme', default='', help='with --results: write the table into '
                      'this file between its marker lines instead of printing it')
  args = parser.parse_args(argv)
  if bool(args.results) == bool(args.workdirs):
    parser.error('give either WORKDIR... or --results DIR')
  if args.readme and (not args.results or args.csv):
    parser.error('--readme writes the Markdown table of --results DIR; give --results '
                 'without --csv')
  if args.results and args.metrics:
    parser.error('--metrics is for WORKDIR...; --results takes each row\'s metric from '
                 'paper_numbers.json')
  try:
    for path, flag in ([(args.results, '--results')] if args.results else
                       [(w, None) for w in args.workdirs]):
      try:
        fs.check_url(path, flag, read_only=True)
      except fs.PathError as e:
        raise CollectError(str(e)) from e
    if args.results:
      header, rows = results_table(args.results, precise=args.csv)
    else:
      metrics = [m.strip() for m in args.metrics.split(',') if m.strip()]
      header, rows = run_table(args.workdirs, metrics, precise=args.csv)
    if args.readme:
      write_into(args.readme, markdown(header, rows))
      print(f'vaes.collect: the table of {len(rows)} rows written into {args.readme}')
      return 0
  except CollectError as e:
    print(f'vaes.collect: {e}', file=sys.stderr)
    return 1
  print(to_csv(header, rows) if args.csv else markdown(header, rows))
  return 0


if __name__ == '__main__':
  sys.exit(main())
