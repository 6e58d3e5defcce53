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


def test_vs_pytorch_workloads_name_real_configs_and_fields():
  """Every workload of benchmarks/vs_pytorch.py builds its config from its overrides the
  way train.py does (an unknown field fails), and the table reports ours / PyTorch at
  its best thread count."""
  import pytest
  from benchmarks import vs_pytorch
  for name, workload in vs_pytorch.WORKLOADS.items():
    config = vs_pytorch.workload_config(workload)
    for key, value in workload.overrides.items():
      node = config
      for part in key.split('.'):
        node = node[part]
      assert node == value, (name, key)
    assert workload.per_step % config.batch_size == 0 and workload.unit.endswith('/s'), name
  phases = vs_pytorch.workload_config(vs_pytorch.WORKLOADS['vqvae32'],
                                      ['--config.model.upsample=phases'])
  assert phases.model.upsample == 'phases' and phases.batch_size == 32
  with pytest.raises(Exception, match='no_such_field'):
    vs_pytorch.workload_config(vs_pytorch.WORKLOADS['vqvae32'], ['--config.no_such_field=1'])
  row = {'workload': 'w', 'ms_per_step': {'ours': 50.0, 'torch_1': 80.0, 'torch_2': 100.0},
         'torch_best': 'torch_1', 'ratio_ours_over_torch': 0.625}
  assert vs_pytorch.markdown([row]).splitlines()[-1] == '| w | 50.0 ms | 80.0 ms (1 thr.) | 0.62 |'


def test_vs_pytorch_without_torch_names_the_install(tmp_path):
  (tmp_path / 'torch.py').write_text("raise ImportError('no torch here')\n")
  env = subprocess_env(1, {'PYTHONPATH': f'{tmp_path}{os.pathsep}{REPO}'})
  proc = subprocess.run([PYTHON, os.path.join(REPO, 'benchmarks', 'vs_pytorch.py'),
                         '--workloads=vqvae32'], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode != 0
  assert 'pip install torch==2.13.0' in proc.stderr and 'Traceback' not in proc.stderr


def test_vs_vector_quantize_tables_finished_runs_and_checks_names(tmp_path, capsys):
  """benchmarks/vs_vector_quantize.py reads runs already in --out (nothing is run again):
  the library's JSON as written, ours from metrics.jsonl, the step time the median of the
  log intervals after the first (which holds the compilation)."""
  import pytest
  from benchmarks import vs_vector_quantize as vs
  assert set(vs.OURS_DEFAULT) <= set(vs.sweep_variants())
  (tmp_path / 'library_vq_rot_l1.json').write_text(json.dumps(dict(
      test_mse=0.0123, test_normalized_mse=0.0987, test_psnr=20.5, codebook_usage=0.25,
      perplexity=40.0, train_step_ms_median=55.0)))
  ours = tmp_path / 'ours_vq'
  ours.mkdir()
  rows = [{'step': 100, 'steps_per_sec': 1.0}, {'step': 200, 'steps_per_sec': 10.0},
          {'step': 300, 'steps_per_sec': 20.0}, {'step': 400, 'steps_per_sec': 40.0},
          {'step': 400, 'eval/recon_mse': 0.01, 'eval/normalized_mse': 0.08, 'eval/psnr': 21.0,
           'eval/codebook_usage': 0.5, 'eval/perplexity': 90.0}]
  (ours / 'metrics.jsonl').write_text('\n'.join(json.dumps(r) for r in rows) + '\n')
  vs.main([f'--out={tmp_path}', '--steps=400', '--library=vq_rot', '--rec_losses=l1',
           '--ours=vq', f'--markdown={tmp_path / "t.md"}'])
  table = (tmp_path / 't.md').read_text()
  assert ('| vector-quantize-pytorch | vq_rot (l1) | 0.01230 | 0.0987 | 20.50 | 0.250 | 40.0 | 55 |'
          in table)
  assert '| this project | vq | 0.01000 | 0.0800 | 21.00 | 0.500 | 90.0 | 50 |' in table   # 1000/20
  with pytest.raises(SystemExit):
    vs.main([f'--out={tmp_path}', '--ours=vq,no_such_variant', '--library='])
  assert 'no_such_variant' in capsys.readouterr().err
