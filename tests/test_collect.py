"""`python -m vaes.collect` on workdirs and a results/ folder made here by hand (fake runs:
the numbers below are inputs, not results)."""

import ast
import csv
import io
import json
import os
import re
import shutil
import subprocess

import pytest

from tests.helpers import PYTHON, REPO, load_config, subprocess_env
from vaes import run_config
from vaes import collect
from vaes.renames import RENAMED_FIELDS


def make_run(workdir, config, metrics, devices=None):
  os.makedirs(workdir, exist_ok=True)
  record = {'config': config, 'versions': {'jax': '0.0'}, 'git': {'commit': 'abc'},
            'devices': devices or {'kind': 'cpu', 'count': 1, 'process_count': 1},
            'command': ['train.py'], 'time': '2026-01-01T00:00:00+00:00'}
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(record, f)
  with open(os.path.join(workdir, 'eval_metrics.json'), 'w') as f:
    json.dump(metrics, f)
  return str(workdir)


def config(lr, num_codes, sizes=(4, 2), seed=0):
  return {'seed': seed, 'learning_rate': lr, 'batch_size': 64, 'num_train_steps': 100,
          'model': {'name': 'vqvae', 'num_codes': num_codes, 'sizes': list(sizes)},
          'data': {'name': 'digits'}}


@pytest.fixture
def sweep(tmp_path):
  return [make_run(tmp_path / 'a', config(1e-3, 32), {'nll': 80.123456, 'mse': 0.5, 'step': 100.0}),
          make_run(tmp_path / 'b', config(1e-3, 64, (8, 4)), {'nll': 79.5, 'mse': 0.25}),
          make_run(tmp_path / 'c', config(3e-4, 64), {'nll': 81.0, 'step': 100.0})]


def run_main(capsys, argv):
  rc = collect.main(argv)
  out, err = capsys.readouterr()
  return rc, out, err


def test_markdown_table_has_the_differing_fields_then_all_metrics(sweep, capsys):
  rc, out, err = run_main(capsys, sweep)
  assert rc == 0 and err == ''
  lines = out.strip().splitlines()
  assert lines[0] == '| run | learning_rate | model.num_codes | model.sizes | mse | nll | step |'
  assert lines[1] == '|---|---|---|---|---|---|---|'
  assert lines[2] == f'| {sweep[0]} | 0.001 | 32 | [4, 2] | 0.5 | 80.123 | 100 |'
  assert lines[3] == f'| {sweep[1]} | 0.001 | 64 | [8, 4] | 0.25 | 79.5 |  |'
  assert lines[4] == f'| {sweep[2]} | 0.0003 | 64 | [4, 2] |  | 81 | 100 |'
  assert len(lines) == 5


def test_csv_and_chosen_metrics(sweep, capsys):
  rc, out, _ = run_main(capsys, ['--csv', '--metrics', 'nll,mse'] + sweep)
  rows = list(csv.reader(io.StringIO(out)))
  assert rc == 0 and rows[0] == ['run', 'learning_rate', 'model.num_codes', 'model.sizes',
                                 'nll', 'mse']
  assert rows[1] == [sweep[0], '0.001', '32', '[4, 2]', '80.123456', '0.5']   # full precision
  assert rows[3][-2:] == ['81', '']
  # One run: no config columns; a field present in only some runs is a differing field.
  rc, out, _ = run_main(capsys, ['--csv', sweep[0]])
  assert out.splitlines()[0] == 'run,mse,nll,step'
  c = config(1e-3, 32)
  c['eval'] = {'k': 5}
  extra = make_run(os.path.join(os.path.dirname(sweep[0]), 'd'), c, {'nll': 1.0})
  rc, out, _ = run_main(capsys, ['--csv', '--metrics', 'nll', sweep[0], extra])
  assert out.splitlines() == ['run,eval.k,nll', f'{sweep[0]},,80.123456', f'{extra},5,1']


def test_missing_files_are_one_clear_line(sweep, tmp_path, capsys):
  os.remove(os.path.join(sweep[1], 'eval_metrics.json'))
  rc, out, err = run_main(capsys, sweep)
  assert rc == 1 and out == ''
  assert err.count('\n') == 1 and os.path.join(sweep[1], 'eval_metrics.json') in err
  assert 'eval.py' in err
  os.remove(os.path.join(sweep[0], 'config.json'))
  rc, _, err = run_main(capsys, [sweep[0]])
  assert rc == 1 and err.count('\n') == 1 and 'config.json does not exist' in err
  with open(os.path.join(sweep[2], 'eval_metrics.json'), 'w') as f:
    f.write('{"nll": ')
  rc, _, err = run_main(capsys, [sweep[2]])
  assert rc == 1 and err.count('\n') == 1 and 'not readable JSON' in err
  rc, _, err = run_main(capsys, ['--metrics', 'bpd', sweep[0].replace('/a', '/c')])
  assert rc == 1
  # From the command line: the same one line, no traceback.
  proc = subprocess.run([PYTHON, '-m', 'vaes.collect', str(tmp_path / 'nowhere')], cwd=REPO,
                        env=subprocess_env(), capture_output=True, text=True, timeout=60)
  assert proc.returncode == 1 and proc.stdout == ''
  assert proc.stderr.splitlines() == [
      f'vaes.collect: {tmp_path / "nowhere" / "eval_metrics.json"} does not exist: evaluate the '
      f'run first (python eval.py --config=... --workdir={tmp_path / "nowhere"}).']


def test_results_table_from_fake_rows(tmp_path, capsys):
  results = tmp_path / 'results'
  results.mkdir()
  paper = {'row_a': {'metric': 'nll', 'paper': 79.24, 'paper_note': '(note)',
                     'paper_schedule': '2000 epochs'},
           'row_b': {'metric': 'nll_per_frame', 'paper': None},
           'row_c': {'metric': 'nll', 'paper': 1.5, 'paper_schedule': '10 epochs'}}
  with open(results / 'paper_numbers.json', 'w') as f:
    json.dump(paper, f)
  gpu = {'kind': 'NVIDIA H200', 'count': 1, 'process_count': 1}
  make_run(results / 'row_a' / 'seed0', config(1e-3, 32, seed=0),
           {'nll': 80.0, 'step': 5000.0, 'train_wall_time_s': 3725.0, 'eval_wall_time_s': 61.0},
           gpu)
  make_run(results / 'row_a' / 'seed1', config(1e-3, 32, seed=1),
           {'nll': 81.0, 'step': 5000.0, 'train_wall_time_s': 3700.0, 'eval_wall_time_s': 59.0},
           gpu)
  make_run(results / 'row_b', config(1e-3, 32), {'nll_per_frame': 'nan'},
           {'kind': 'TPU v4', 'count': 8, 'process_count': 2})
  rc, out, err = run_main(capsys, ['--results', str(results)])
  assert rc == 0 and err == ''
  lines = out.strip().splitlines()
  assert lines[0] == '| row | metric | paper | ours | schedule | hardware | wall time |'
  assert lines[2] == ('| row_a | nll | 79.24 (note) | 80.5 (80, 81) | 5,000 steps x 64 '
                      '(paper: 2000 epochs) | 1 x NVIDIA H200 | 1 h 02 min train + 1 min 01 s '
                      'eval / 1 h 02 min train + 0 min 59 s eval |')  # 1 h 01 min 40 s
  assert lines[3] == ('| row_b | nll_per_frame | - | nan | 100 steps x 64 | 8 x TPU v4, '
                      '2 processes | not recorded |')
  assert lines[4] == '| row_c | nll | 1.5 | not run | paper: 10 epochs |  |  |'
  # A row whose run lacks its metric, and a folder that is not a row: one line each.
  make_run(results / 'row_c', config(1e-3, 32), {'neg_elbo': 2.0})
  rc, _, err = run_main(capsys, ['--results', str(results)])
  assert rc == 1 and err.count('\n') == 1 and "no 'nll'" in err
  shutil.rmtree(results / 'row_c')
  os.makedirs(results / 'row_d')
  rc, _, err = run_main(capsys, ['--results', str(results)])
  assert rc == 1 and err.count('\n') == 1 and 'row_d' in err and 'paper_numbers.json' in err


def test_readme_flag_writes_the_table_between_the_markers_and_keeps_the_rest(tmp_path,
                                                                             capsys):
  results = tmp_path / 'results'
  results.mkdir()
  with open(results / 'paper_numbers.json', 'w') as f:
    json.dump({'row_a': {'metric': 'nll', 'paper': 79.24}}, f)
  make_run(results / 'row_a', config(1e-3, 32), {'nll': 80.0, 'step': 5000.0})
  readme = tmp_path / 'README.md'
  before = '# Title\n\ntext\n<!-- results-table: generated; do not edit -->\n'
  after = '<!-- /results-table -->\n\nmore text\n'
  readme.write_text(before + '| an old | table |\n|---|---|\n' + after)
  rc, out, err = run_main(capsys, ['--results', str(results), '--readme', str(readme)])
  assert rc == 0 and err == '' and out.count('\n') == 1 and str(readme) in out
  _, table, _ = run_main(capsys, ['--results', str(results)])
  assert readme.read_text() == before + table + after
  # Again: the same file (a table replaced, not added).
  assert run_main(capsys, ['--results', str(results), '--readme', str(readme)])[0] == 0
  assert readme.read_text() == before + table + after
  # No end marker: one line naming both markers, the file untouched.
  readme.write_text(before + 'no end\n')
  rc, out, err = run_main(capsys, ['--results', str(results), '--readme', str(readme)])
  assert rc == 1 and out == '' and err.count('\n') == 1 and collect.TABLE_END in err
  assert readme.read_text() == before + 'no end\n'
  rc, _, err = run_main(capsys, ['--results', str(results),
                                 '--readme', str(tmp_path / 'nowhere.md')])
  assert rc == 1 and err.count('\n') == 1 and 'nowhere.md' in err


def test_the_readmes_results_table_is_the_generated_one():
  """README.md's results table is what `python -m vaes.collect --results results` makes of
  results/ as it stands: a row added or changed there without rerunning it with
  `--readme README.md`, or a hand edit of the table, fails here."""
  with open(os.path.join(REPO, 'README.md')) as f:
    text = f.read()
  header, rows = collect.results_table(os.path.join(REPO, 'results'))
  assert collect.splice_table(text, collect.markdown(header, rows), 'README.md') == text


def test_schedule_names_the_training_steps_and_the_best_checkpoint():
  config = {'batch_size': 16, 'num_train_steps': 20000, 'eval.select_split': 'valid'}
  assert collect.schedule(config, {'step': 20000.0}) == '20,000 steps x 16'
  best = {'step': 3000.0, 'train_steps': 20000.0, 'checkpoint': 'best'}
  assert collect.schedule(config, best) == '20,000 steps x 16, best valid at 3,000'


def test_durations_show_seconds_under_an_hour_and_round_to_the_minute_above():
  assert collect.duration(1282.84) == '21 min 23 s'
  assert collect.duration(3569.6) == '59 min 30 s'
  assert collect.duration(3599.6) == '1 h 00 min'
  assert collect.duration(4313) == '1 h 12 min'      # 1 h 11 min 53 s
  assert collect.duration(7374.7) == '2 h 03 min'    # 2 h 02 min 55 s
  assert collect.duration(30846) == '8 h 34 min'     # 8 h 34 min 06 s


def test_hardware_names_cpu_cores_and_processes():
  assert collect.hardware({'devices': {'kind': 'cpu', 'count': 1, 'host_cpus': 2}}) == \
      '1 x cpu (2 cores)'
  assert collect.hardware({'devices': {'kind': 'TPU v4', 'count': 8, 'process_count': 2,
                                       'host_cpus': 96}}) == '8 x TPU v4, 2 processes'
  assert collect.hardware({'devices': {'kind': 'cpu', 'count': 1}}) == '1 x cpu'


def test_the_projects_results_folder():
  """results/paper_numbers.json: every row names an existing config and a metric."""
  with open(os.path.join(REPO, 'results', 'paper_numbers.json')) as f:
    rows = json.load(f)
  for name, row in rows.items():
    assert os.path.exists(os.path.join(REPO, row['config'])), name
    assert row['metric'] and 'source' in row, name
  header, table = collect.results_table(os.path.join(REPO, 'results'))
  assert [r[0] for r in table] == list(rows)


def _command_overrides(command, config):
  """{'a.b': value} from the recorded command's --config.a.b=v flags, typed as the field."""
  out = {}
  for arg in command:
    if not arg.startswith('--config.') or '=' not in arg:
      continue
    key, text = arg[len('--config.'):].split('=', 1)
    key = RENAMED_FIELDS.get(key, key)   # a run recorded before a field was renamed
    node = config
    for part in key.split('.'):
      node = node[part]
    kind = type(node)
    if node is None:     # a field with no default (a path such as init_from): its text
      out[key] = text
    else:
      out[key] = (text.lower() in ('1', 'true')) if kind is bool else kind(text)
  return out


def test_every_results_row_was_made_by_its_config_as_it_stands():
  """Each results/<row>/[seedN/]config.json holds the config its run resolved and the
  command line. Rebuilt from configs/<row>.py as it stands plus that command's --config
  overrides, it must be the same run (run_config.finished_run_diff: fields added since
  keep their defaults; eval.* and cadence fields aside). A config changed after its row was
  run fails here: rerun the row, or give the change a row of its own."""
  with open(os.path.join(REPO, 'results', 'paper_numbers.json')) as f:
    rows = json.load(f)
  checked = 0
  for name, row in rows.items():
    for run in collect.row_runs(os.path.join(REPO, 'results', name)):
      with open(os.path.join(run, 'config.json')) as f:
        recorded = json.load(f)
      now = load_config(row['config'])
      now = load_config(row['config'], _command_overrides(recorded['command'], now))
      if now.data.vqvae_workdir:
        # A prior's codes cache: train.py derives its path from the first stage's checkpoint
        # (vaes/stages.prepare_codes); the command's data.vqvae_workdir is compared.
        now.data.codes_path = recorded['config']['data']['codes_path']
      diff = run_config.finished_run_diff(recorded['config'], run_config.config_dict(now))
      assert not diff, f'{run}: {run_config.describe_diff(diff)}'
      checked += 1
  assert checked >= 6


def _rounds_to(value, text):
  """Whether `value` rounds to the quoted number `text` ('82.31') at the decimals it shows."""
  decimals = len(text.split('.')[1])
  return abs(float(text) - value) <= 0.5 * 10 ** -decimals + 1e-9


def test_the_readmes_summary_tables_quote_the_results_folder():
  """The README's MNIST and JSB summaries (| `row` | ... | ... | seeds | test nll | -ELBO |
  paper |) are written by hand beside the generated table: each of their rows must give the
  number of seeds in results/<row>/ and their mean of the row's metric and of its -ELBO to
  the decimals quoted."""
  with open(os.path.join(REPO, 'README.md')) as f:
    readme = f.read()
  with open(os.path.join(REPO, 'results', 'paper_numbers.json')) as f:
    rows = json.load(f)
  cell = r'(?:[^|\\]|\\.)+'     # a table cell's text; \| is a pipe inside it
  quoted = re.findall(rf'^\| `(\w+)` \|{cell}\|{cell}\| (\d+) \| \**([\d.]+)\**[^|]* \| '
                      r'([\d.]+) \|', readme, re.M)
  names = [q[0] for q in quoted]
  assert {'lvae_mnist_dynamic_60k_finetune', 'srnn_made_transpose_jsb'} <= set(names)
  assert len(quoted) >= 18 and len(set(names)) == len(names)
  for name, seeds, value, neg_elbo in quoted:
    metric = rows[name]['metric']
    elbo_key = 'neg_elbo_per_frame' if metric.endswith('_per_frame') else 'neg_elbo'
    metrics = [collect.load_run(run)[1]
               for run in collect.row_runs(os.path.join(REPO, 'results', name))]
    assert len(metrics) == int(seeds), name
    for text, key in ((value, metric), (neg_elbo, elbo_key)):
      mean = sum(m[key] for m in metrics) / len(metrics)
      assert _rounds_to(mean, text), (name, key, text, mean)


def _docstring_measurements(path):
  """[(seed, metric or None, quoted text)] of a config's docstring: each 'Measured (seed S'
  and the first 'test [metric] V' after it in the same paragraph."""
  with open(os.path.join(REPO, path)) as f:
    doc = ast.get_docstring(ast.parse(f.read()), clean=False) or ''
  found = []
  for paragraph in re.split(r'\n\s*\n', doc):
    for measured in re.finditer(r'Measured \(seed (\d+)', paragraph):
      quoted = re.search(r'\btest\s+(?:([a-z_]+)\s+)?\**(\d+\.\d+)',
                         paragraph[measured.end():])
      if quoted:
        found.append((int(measured.group(1)), quoted.group(1), quoted.group(2)))
  return found


def test_config_docstrings_quote_their_rows_results():
  """A row's config states its measured number in its docstring ('Measured (seed 0, ...):
  test nll **82.31**'): that number must be the one in results/<row>/ for that seed, to the
  decimals quoted, so a rerun row cannot leave its config's docstring behind."""
  with open(os.path.join(REPO, 'results', 'paper_numbers.json')) as f:
    rows = json.load(f)
  checked = 0
  for name, row in rows.items():
    by_seed = {}
    for run in collect.row_runs(os.path.join(REPO, 'results', name)):
      config, metrics, _ = collect.load_run(run)
      by_seed[config['seed']] = metrics
    for seed, metric, text in _docstring_measurements(row['config']):
      assert seed in by_seed, f'{row["config"]} quotes seed {seed}; results/{name} lacks it'
      value = by_seed[seed][metric or row['metric']]
      assert _rounds_to(value, text), (name, seed, text, value)
      checked += 1
  assert checked >= 9
