"""benchmarks/train_step.py runs on CPU and prints one valid JSON line (not a timed test)."""

import json
import os

from tests.helpers import PYTHON, REPO, subprocess_env
import subprocess


def test_benchmark_prints_valid_json():
  cmd = [PYTHON, os.path.join(REPO, 'benchmarks', 'train_step.py'),
         f'--config={os.path.join(REPO, "configs", "vqvae.py")}', '--config.batch_size=16',
         '--config.model.hidden=16', '--config.model.res_hidden=8', '--repeats=2',
         '--steps_per_repeat=1', '--warmup=1']
  proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(1), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in proc.stdout.splitlines() if l.startswith('{')]
  assert len(lines) == 1
  result = json.loads(lines[0])
  assert result['batch_size'] == 16 and result['device_kind']
  assert result['ms_per_step'] > 0 and result['compile_s'] > 0
  assert abs(result['examples_per_sec'] - 16 / (result['ms_per_step'] / 1e3)) < 1e-6 * result['examples_per_sec']
  assert result['gflops_per_example'] > 0
