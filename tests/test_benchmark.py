"""benchmarks/train_step.py runs on CPU and prints one valid JSON line (not a timed test)."""

import json
import os
import subprocess

from tests.helpers import PYTHON, REPO, subprocess_env


def _benchmark(*overrides):
  cmd = [PYTHON, os.path.join(REPO, 'benchmarks', 'train_step.py'),
         f'--config={os.path.join(REPO, "configs", "vqvae.py")}', '--config.batch_size=16',
         '--config.model.hidden=16', '--config.model.res_hidden=8', '--repeats=2',
         '--steps_per_repeat=1', '--warmup=1', *overrides]
  proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(1), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in proc.stdout.splitlines() if l.startswith('{')]
  assert len(lines) == 1
  return json.loads(lines[0])


def test_benchmark_prints_valid_json():
  single = _benchmark()
  grouped = _benchmark('--config.steps_per_dispatch=2')   # lax.scan over 2 batches per call
  for result, k in ((single, 1), (grouped, 2)):
    assert result['batch_size'] == 16 and result['device_kind']
    assert result['steps_per_dispatch'] == k
    assert result['ms_per_step'] > 0 and result['compile_s'] > 0
    assert abs(result['examples_per_sec'] - 16 / (result['ms_per_step'] / 1e3)) < (
        1e-6 * result['examples_per_sec'])
    assert result['gflops_per_example'] > 0
  # FLOPs are per step, whatever the grouping (XLA counts a loop body once).
  assert abs(grouped['gflops_per_example'] / single['gflops_per_example'] - 1) < 1e-3


def test_evaluation_benchmark_prints_valid_json():
  cmd = [PYTHON, os.path.join(REPO, 'benchmarks', 'evaluation.py'),
         f'--config={os.path.join(REPO, "configs", "lvae.py")}', '--num_examples=40',
         '--config.eval.batch_size=16', '--config.eval.num_importance_samples=30',
         '--config.eval.iw_chunk_size=8']
  proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(1), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in proc.stdout.splitlines() if l.startswith('{')]
  assert len(lines) == 1
  result = json.loads(lines[0])
  assert result['num_examples'] == 40 and result['num_importance_samples'] == 30
  assert result['eval_s'] > 0 and result['warmup_one_batch_s'] > 0
  assert abs(result['importance_samples_per_sec'] * result['eval_s'] - 40 * 30) < 1e-6 * 1200
  # The family's own evaluation ran: a finite IW bound no larger than the negative ELBO.
  metrics = result['metrics']
  assert metrics['num_importance_samples'] == 30
  assert 0 < metrics['nll'] <= metrics['neg_elbo'] + 1e-4
