"""Sweeps (vaes.sweep): workdir names, checks of the sweep file before any run, the
example sweeps, and a sweep of three tiny runs, one finished, one interrupted, one new."""

import contextlib
import glob
import io
import json
import os
import re
import shlex
import shutil
import subprocess

import pytest

from tests.helpers import PYTHON, REPO, read_eval_metrics, subprocess_env
from tests.test_failures import TINY_VQ
from vaes import evaluate, sweep
from vaes.train import train_and_evaluate

VQ = os.path.join(REPO, 'configs/vqvae.py')
COMMON = [f'--config.{k}={v}' for k, v in dict(
    TINY_VQ, num_train_steps=4, checkpoint_every_steps=2, log_every_steps=2).items()]


def _sweep_file(tmp_path, body, name='s.py'):
  path = tmp_path / name
  path.write_text(body)
  return str(path)


def _field(config, dotted):
  for part in dotted.split('.'):
    config = config[part]
  return config


def test_workdir_names_are_readable_safe_deterministic_and_distinct():
  assert sweep.workdir_name({'seed': 1, 'model.num_codes': 32}) == 'model.num_codes=32,seed=1'
  assert sweep.workdir_name({'model.num_codes': 32, 'seed': 1}) == 'model.num_codes=32,seed=1'
  assert sweep.workdir_name({}) == 'base'
  assert sweep.workdir_name({'learning_rate': 1e-4}) == 'learning_rate=0.0001'
  odd = [{'data.path': 'a/b'}, {'data.path': 'a_b'}, {'data.path': 'a b'},
         {'model.strides': (1, 2)}, {'model.strides': '1-2'}, {'x': 'y' * 300}]
  names = [sweep.workdir_name(o) for o in odd]
  assert len(set(names)) == len(names), names
  for name in names:
    assert re.fullmatch(r'[A-Za-z0-9._+\-=,]+', name) and len(name) <= 130, name
  assert names == [sweep.workdir_name(o) for o in odd]


def test_fields_every_run_sets_alike_are_left_out_of_the_names(tmp_path):
  runs = [{'seed': 0, 'num_train_steps': 9},
          {'seed': 0, 'num_train_steps': 9, 'model.beta': 1.0},
          {'seed': 0, 'num_train_steps': 9, 'model.beta': 2.0}]
  assert sweep.shared_fields(runs) == {'seed', 'num_train_steps'}
  assert sweep.shared_fields(runs[:1]) == set()   # one run: its name says what it set
  assert sweep.shared_fields([{'seed': 0}, {'seed': 1}]) == set()
  assert sweep.shared_fields([{'seed': 0}, {'model.beta': 1.0}]) == set()
  path = _sweep_file(tmp_path, f'def get_sweep():\n  return {runs!r}\n')
  names = [os.path.basename(run.workdir) for run in sweep.plan(VQ, path, str(tmp_path), [])]
  assert names == ['base', 'model.beta=1.0', 'model.beta=2.0']
  path = os.path.join(REPO, 'sweeps', 'lvae_authors_variants.py')
  names = [os.path.basename(run.workdir) for run in sweep.plan(
      os.path.join(REPO, 'configs/lvae_mnist_dynamic.py'), path, str(tmp_path), [])]
  assert names[:3] == ['base', 'model.head_batch_norm=True,model.share_top_down=False,'
                       'model.up_from_mean=True', 'model.share_top_down=False'], names


@pytest.mark.parametrize('body,expected', [
    ('X = 1\n', 'defines no get_sweep()'),
    ('def get_sweep():\n  return [{"model.num_code": 8}]\n',
     "sets 'model.num_code', which"),
    ('def get_sweep():\n  return [{"model": 8}]\n', "sets 'model', a group of fields"),
    ('def get_sweep():\n  return [{"model.code_dim": "many"}]\n', 'does not make a config'),
    ('def get_sweep():\n  return {"seed": 1}\n', 'return a non-empty list of dicts'),
    ('def get_sweep():\n  return [{"seed": 1}, {"seed": 1}]\n', 'runs 0 and 1 are the same'),
    ('def get_sweep(:\n', 'syntax error at line 1'),
    # Values train.py would refuse at a run's start: caught before the first run trains.
    ('def get_sweep():\n  return [{"seed": 0}, {"model.code_dim": -4}]\n',
     "run 1 ({'model.code_dim': -4}) would be refused by train.py: config.model.code_dim=-4"),
    ('def get_sweep():\n  return [{"seed": 0}, {"profile_steps": (10, 2)}]\n',
     "run 1 ({'profile_steps': (10, 2)}) would be refused by train.py: "
     'config.profile_steps=(10, 2) starts at step 10, but the run ends at '
     'config.num_train_steps=4'),
    ('def get_sweep():\n  return [{"seed": 0}, {"data.name": "mnits"}]\n',
     "run 1 ({'data.name': 'mnits'}) would be refused by train.py: config.data.name='mnits' "
     'is not a known dataset'),
    ('def get_sweep():\n  return [{"seed": 0}, {"eval.select_mode": "lowest"}]\n',
     "config.eval.select_mode='lowest': choose 'min' or 'max'"),
], ids=['no_get_sweep', 'unknown_field', 'group', 'bad_value', 'not_a_list', 'duplicate',
        'syntax', 'family_refuses', 'profile_past_the_run', 'unknown_dataset',
        'engine_refuses'])
def test_bad_sweep_file_is_refused_before_any_run(tmp_path, body, expected):
  path = _sweep_file(tmp_path, body)
  with pytest.raises(sweep.SweepError, match=re.escape(expected)) as e:
    sweep.plan(VQ, path, str(tmp_path / 'root'), COMMON)
  assert '\n' not in str(e.value)
  if 'num_code' in body and 'num_codes' not in body:
    assert "did you mean 'model.num_codes'?" in str(e.value)
  assert not os.path.exists(tmp_path / 'root')


def test_bad_sweep_file_is_one_error_line_on_the_command_line(tmp_path):
  path = _sweep_file(tmp_path, 'def get_sweep():\n  return [{"model.num_code": 8}]\n')
  proc = subprocess.run([PYTHON, '-m', 'vaes.sweep', f'--config={VQ}', f'--sweep={path}',
                         f'--workdir_root={tmp_path / "root"}'], cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      f"ERROR: --sweep={path}: run 0 sets 'model.num_code', which {VQ} does not have; did you "
      "mean 'model.num_codes'?"]


def test_value_the_engine_refuses_stops_the_sweep_before_its_first_run(tmp_path):
  """model.num_codes=0 in the second run: one ERROR line before the first run trains (the
  README's promise), not a failure of run 2 after run 1 trained."""
  path = _sweep_file(tmp_path, 'def get_sweep():\n  return [{"model.num_codes": 16}, '
                     '{"model.num_codes": 0}]\n')
  root = tmp_path / 'root'
  proc = subprocess.run([PYTHON, '-m', 'vaes.sweep', f'--config={VQ}', f'--sweep={path}',
                         f'--workdir_root={root}'], cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines() == [
      f"ERROR: --sweep={path}: run 1 ({{'model.num_codes': 0}}) would be refused by train.py: "
      'config.model.num_codes=0: must be a positive integer. Fix the value in the sweep file '
      'or on the command line; no run was started.']
  assert proc.stdout == '' and not root.exists()


# The example sweep of each family and the config it is written for.
EXAMPLES = {'vqvae_codebook_size.py': 'configs/vqvae.py',
            'vqvae2_commitment.py': 'configs/vqvae2.py',
            'lvae_inference_seeds.py': 'configs/lvae.py',
            'vrae_free_bits.py': 'configs/vrae.py',
            'vq_prior_dropout.py': 'configs/vqvae_prior.py',
            'vqvae_fashion_mnist_quantizers.py': 'configs/vqvae_fashion_mnist.py:plain',
            'lvae_authors_variants.py': 'configs/lvae_mnist_dynamic.py'}


def test_example_sweeps_plan_against_their_configs(tmp_path):
  assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, 'sweeps', '*.py'))
                ) == sorted(EXAMPLES)
  families = set()
  for name, config in EXAMPLES.items():
    path = os.path.join(REPO, 'sweeps', name)
    with open(path, encoding='utf-8') as f:
      assert f'--config={config}' in f.read(), f'{name}: its docstring names another config'
    runs = sweep.plan(os.path.join(REPO, config), path, str(tmp_path), [])
    assert len(runs) >= 3
    families.add(runs[0].config.model.name)
    for run in runs:
      for field, value in run.overrides.items():
        assert _field(run.config, field) == value, (name, field)
  assert {'vqvae', 'vqvae2', 'ladder_vae', 'vrae', 'vq_prior'} <= families


def test_print_only_prints_one_command_line_per_run_that_parses_back(tmp_path):
  path = _sweep_file(tmp_path, 'def get_sweep():\n  return [{"learning_rate": 3e-4, '
                     '"model.use_ema": False}, {"learning_rate": 1e-3, '
                     '"model.fsq_levels": (8, 5, 5)}]\n')
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert sweep.main([f'--config={VQ}', f'--sweep={path}', f'--workdir_root={tmp_path}',
                       '--print_only', '--config.seed=3']) == 0
  lines = out.getvalue().strip().splitlines()
  assert len(lines) == 2
  assert os.listdir(tmp_path) == ['s.py']   # nothing run, nothing created
  for line, overrides in zip(lines, sweep.load_sweep(path)):
    train, evaluate_ = line.split(' && ')
    for command, script in ((train, 'train.py'), (evaluate_, 'eval.py')):
      args = shlex.split(command)
      assert args[0] == 'python' and os.path.basename(args[1]) == script
      workdir = [a for a in args if a.startswith('--workdir=')][0].split('=', 1)[1]
      assert workdir == os.path.join(str(tmp_path), sweep.workdir_name(overrides))
      config = sweep.parse_config(VQ, [a for a in args if a.startswith('--config.')])
      assert config.seed == 3
      for field, value in overrides.items():
        assert _field(config, field) == value, field


def test_sweep_skips_the_finished_run_resumes_the_interrupted_one_and_prints_the_table(
    tmp_path):
  path = _sweep_file(tmp_path, 'def get_sweep():\n  return [{"seed": s} for s in (0, 1, 2)]\n')
  root = tmp_path / 'root'
  runs = sweep.plan(VQ, path, str(root), COMMON)
  finished, interrupted, fresh = (r.workdir for r in runs)
  assert [os.path.basename(w) for w in (finished, interrupted, fresh)] == [
      'seed=0', 'seed=1', 'seed=2']
  # seed=0 trained and evaluated; seed=1 stopped with a checkpoint of step 2 of 4.
  train_and_evaluate(runs[0].config, finished)
  evaluate.evaluate(runs[0].config, finished)
  train_and_evaluate(runs[1].config, interrupted)
  shutil.rmtree(os.path.join(interrupted, 'checkpoints', '4'))
  before = {f: (os.stat(f).st_mtime_ns, open(f, 'rb').read())
            for f in glob.glob(os.path.join(finished, '**'), recursive=True) if os.path.isfile(f)}

  proc = subprocess.run([PYTHON, '-m', 'vaes.sweep', f'--config={VQ}', f'--sweep={path}',
                         f'--workdir_root={root}', *COMMON], cwd=REPO,
                        env=subprocess_env(1),
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  out = proc.stdout
  assert '[sweep 1/3] seed=0: finished' in out and '[sweep 1/3] seed=0: train.py' not in out
  assert '[sweep 2/3] seed=1: train.py' in out and '[sweep 3/3] seed=2: eval.py' in out
  assert out.count('Resuming from the checkpoint of step 2') == 1
  after = {f: (os.stat(f).st_mtime_ns, open(f, 'rb').read())
           for f in glob.glob(os.path.join(finished, '**'), recursive=True) if os.path.isfile(f)}
  assert after == before    # the finished run was not touched

  table = out[out.index('3 of 3 runs finished:'):].splitlines()[1:]
  header = [c.strip() for c in table[0].strip('|').split('|')]
  rows = [[c.strip() for c in line.strip('|').split('|')] for line in table[2:5]]
  assert header[:2] == ['run', 'seed'] and 'loss' in header, header
  assert [r[:2] for r in rows] == [[finished, '0'], [interrupted, '1'], [fresh, '2']]
  for row, workdir in zip(rows, (finished, interrupted, fresh)):
    metrics = read_eval_metrics(workdir)
    assert metrics['step'] == 4
    assert float(row[header.index('loss')]) == pytest.approx(metrics['loss'], rel=1e-4)
  assert table[5].startswith('(The same table later: python -m vaes.collect ')
  with open(os.path.join(interrupted, 'config.json'), encoding='utf-8') as f:
    assert json.load(f)['config']['seed'] == 1


def _flags(**changes):
  """COMMON with some fields changed (or added)."""
  values = dict(TINY_VQ, num_train_steps=4, checkpoint_every_steps=2, log_every_steps=2)
  values.update({k.replace('__', '.'): v for k, v in changes.items()})
  return [f'--config.{k}={v}' for k, v in values.items()]


def test_rerun_with_other_settings_is_refused_and_not_reported_as_finished(tmp_path, capsys):
  """A finished sweep rerun with another common flag: its runs are not the new ones.
  Training fields: refused before any run (one line naming them), with or without
  --print_only; cadence fields: still finished; eval fields: evaluated again."""
  path = _sweep_file(tmp_path, 'def get_sweep():\n  return [{"seed": 0}]\n')
  root = str(tmp_path / 'root')
  (run,) = sweep.plan(VQ, path, root, COMMON)
  train_and_evaluate(run.config, run.workdir)
  evaluate.evaluate(run.config, run.workdir)
  assert run.status() == ('finished', [])
  args = [f'--config={VQ}', f'--sweep={path}', f'--workdir_root={root}']

  for extra in ([], ['--print_only']):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
      sweep.main(args + _flags(learning_rate=3e-4) + extra)
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == ''
    assert err.strip().splitlines() == [
        f'ERROR: {run.workdir} already holds a finished run of 4 steps with other settings '
        '(learning_rate: run 0.001 vs sweep 0.0003); this sweep would report its numbers as '
        'those of the new ones. Use a fresh --workdir_root for the new settings (or the '
        'original flags to finish this sweep).']
    assert 'trains nothing' not in err

  # The cadence of logs and checkpoints changes nothing: still finished.
  from vaes import run_config
  assert sweep._CADENCE_FIELDS == run_config.CADENCE_FIELDS   # pylint: disable=protected-access
  (same,) = sweep.plan(VQ, path, root, _flags(log_every_steps=1, checkpoint_every_steps=4))
  assert same.status() == ('finished', [])
  capsys.readouterr()
  assert sweep.main(args + COMMON + ['--print_only']) == 0
  assert '# 1 of 1 already finished (their train.py trains nothing): seed=0' in \
      capsys.readouterr().err

  # Other eval fields: the numbers are of another evaluation; only eval.py runs again.
  (other_eval,) = sweep.plan(VQ, path, root, _flags(eval__num_images=8))
  assert other_eval.status() == ('evaluate', [('eval.num_images', 64, 8)])
  proc = subprocess.run([PYTHON, '-m', 'vaes.sweep', *args, *_flags(eval__num_images=8)],
                        cwd=REPO, env=subprocess_env(1), capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert ('[sweep 1/1] seed=0: trained, evaluated with other eval fields (eval.num_images: '
          'run 64 vs sweep 8); evaluating.') in proc.stdout
  assert 'seed=0: train.py' not in proc.stdout and 'seed=0: eval.py' in proc.stdout
  assert read_eval_metrics(run.workdir)['eval_config']['num_images'] == 8
  assert other_eval.status() == ('finished', [])


def test_fashion_mnist_default_is_the_sweeps_chosen_variant():
  """configs/vqvae_fashion_mnist.py's default quantiser is :plain with the overrides of the
  sweep entry it was chosen from, so the two cannot drift apart."""
  import importlib.util
  def load(name, *path):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, *path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
  configs = load('fmnist_config', 'configs', 'vqvae_fashion_mnist.py')
  variants = load('fmnist_sweep', 'sweeps', 'vqvae_fashion_mnist_quantizers.py').VARIANTS
  chosen = configs.get_config('plain')
  for field, value in variants['vq_rotation_kmeans_ema_dead_decay08'].items():
    _, leaf = field.split('.')
    chosen.model[leaf] = value
  assert chosen.to_dict() == configs.get_config().to_dict()
  assert configs.get_config('plain').to_dict() != chosen.to_dict()
