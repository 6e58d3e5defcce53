"""The engine: resume, CLI smoke test, two processes on localhost, skipped updates,
steps per dispatch, matmul precision."""

import dataclasses
import json
import os
import re
import socket
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import (PYTHON, REPO, data_and_trainer, load_config, read_eval_metrics, run_cli,
                           subprocess_env)
from vaes import data as data_lib
from vaes.checkpoint import Checkpointer
from vaes.registry import get_family
from vaes.families import ladder, vrae
from vaes.evaluation import evaluate_split
from vaes.preflight import lr_warmup, warmup_warnings
from vaes.train import build_trainer, dispatch_sizes, make_optimizer, train_and_evaluate

TINY_VQ = {'batch_size': 32, 'model.hidden': 16, 'model.res_hidden': 8, 'model.num_codes': 16,
           'eval.batch_size': 128}


def _latest_state(config, workdir):
  _, trainer = data_and_trainer(config)
  state, step, _ = Checkpointer(workdir).restore_latest(trainer.abstract_state, config)
  return state, step


def test_resume_after_checkpoint_matches_uninterrupted_run(tmp_path):
  """With the moving average of the weights on: it is restored bit for bit too."""
  base = dict(TINY_VQ, num_train_steps=6, checkpoint_every_steps=3, log_every_steps=1,
              eval_every_steps=0, weights_ema_decay=0.9)
  full = load_config('configs/vqvae.py', base)
  train_and_evaluate(full, str(tmp_path / 'full'))

  first_half = load_config('configs/vqvae.py', dict(base, num_train_steps=3))
  train_and_evaluate(first_half, str(tmp_path / 'resumed'))
  _, step = _latest_state(full, str(tmp_path / 'resumed'))
  assert step == 3
  train_and_evaluate(full, str(tmp_path / 'resumed'))  # same command again: resumes at 3

  a, step_a = _latest_state(full, str(tmp_path / 'full'))
  b, step_b = _latest_state(full, str(tmp_path / 'resumed'))
  assert step_a == step_b == 6
  leaves_a = jax.tree.leaves(jax.device_get((a.params, a.model_state, a.opt_state,
                                              a.ema_params)))
  leaves_b = jax.tree.leaves(jax.device_get((b.params, b.model_state, b.opt_state,
                                              b.ema_params)))
  assert len(leaves_a) == len(leaves_b) > len(jax.tree.leaves(a.params)) * 2
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)
  # The logged losses of steps 4-6 are the same too.
  def losses(wd):
    with open(os.path.join(wd, 'metrics.jsonl')) as f:
      return {r['step']: r['loss'] for r in map(json.loads, f) if 'loss' in r}
  la, lb = losses(str(tmp_path / 'full')), losses(str(tmp_path / 'resumed'))
  assert [la[s] for s in (4, 5, 6)] == [lb[s] for s in (4, 5, 6)]


def test_cli_train_then_eval_smoke(tmp_path):
  wd = str(tmp_path / 'run')
  overrides = dict(TINY_VQ, num_train_steps=20, log_every_steps=10, eval_every_steps=20,
                   checkpoint_every_steps=10)
  proc = run_cli('train.py', 'configs/vqvae.py', wd, overrides)
  assert '[step 20]' in proc.stdout, proc.stdout
  assert os.path.exists(os.path.join(wd, 'images', 'step_0000020_reconstructions.png'))
  records = [json.loads(l) for l in open(os.path.join(wd, 'metrics.jsonl'))]
  assert {r['step'] for r in records} >= {10, 20}
  assert any(f.startswith('events.out.tfevents')
             for f in os.listdir(os.path.join(wd, 'tensorboard')))
  run_cli('eval.py', 'configs/vqvae.py', wd, overrides)
  metrics = read_eval_metrics(wd)
  for key in ('loss', 'recon_mse', 'normalized_mse', 'perplexity', 'codebook_usage',
              'commitment_loss'):
    assert isinstance(metrics[key], float) and np.isfinite(metrics[key]), key
  assert 1.0 <= metrics['perplexity'] <= 16.0
  assert 0.0 < metrics['codebook_usage'] <= 1.0
  assert os.path.exists(os.path.join(wd, 'eval_reconstructions.png'))


def test_cli_rejects_mistyped_override(tmp_path):
  proc = run_cli('train.py', 'configs/vqvae.py', str(tmp_path / 'x'),
                 {'model.hiden': 3}, check=False)
  assert proc.returncode != 0
  assert 'hiden' in proc.stderr


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_on_localhost_match_one_process(tmp_path):
  overrides = dict(TINY_VQ, num_train_steps=4, log_every_steps=2, eval_every_steps=0,
                   checkpoint_every_steps=4)
  run_cli('train.py', 'configs/vqvae.py', str(tmp_path / 'one'), overrides)
  # The two processes take 2 steps per dispatch: each feeds its half of the stacked batches.
  overrides['steps_per_dispatch'] = 2

  port = _free_port()
  wd = str(tmp_path / 'two')
  procs = []
  for pid in range(2):
    cmd = [PYTHON, os.path.join(REPO, 'train.py'),
           f'--config={os.path.join(REPO, "configs/vqvae.py")}', f'--workdir={wd}',
           f'--coordinator_address=localhost:{port}', '--num_processes=2',
           f'--process_id={pid}'] + [f'--config.{k}={v}' for k, v in overrides.items()]
    procs.append(subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(1), text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE))
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  assert '2 process(es)' in outs[0][0]
  assert 'config.steps_per_dispatch=2 on the CPU' in outs[0][0]

  def losses(d):
    with open(os.path.join(d, 'metrics.jsonl')) as f:
      return [r['loss'] for r in map(json.loads, f) if 'loss' in r]
  np.testing.assert_allclose(losses(wd), losses(str(tmp_path / 'one')), rtol=1e-5)
  assert len(losses(wd)) == 2


def test_nonfinite_batch_update_is_skipped_and_counted():
  config = load_config('configs/vqvae.py', TINY_VQ)
  splits, trainer = data_and_trainer(config)
  state = trainer.init_fn()
  batch = splits.train.batch(0)
  before = jax.device_get((state.params, state.model_state))
  bad = dict(batch, image=np.where(np.arange(batch['image'].size).reshape(batch['image'].shape)
                                   == 5, np.nan, batch['image']).astype(np.float32))
  state, metrics = trainer.train_step(state, trainer.put(bad))
  assert float(metrics['skipped_update']) == 1.0
  assert int(state.skipped_updates) == 1 and int(state.consecutive_skips) == 1
  after = jax.device_get((state.params, state.model_state))
  for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(x, y)
  state, metrics = trainer.train_step(state, trainer.put(batch))
  assert float(metrics['skipped_update']) == 0.0 and np.isfinite(float(metrics['loss']))
  assert int(state.consecutive_skips) == 0 and int(state.step) == 2


def test_batch_not_divisible_by_devices_fails_before_compilation(tmp_path):
  proc = run_cli('train.py', 'configs/vqvae.py', str(tmp_path / 'x'),
                 dict(TINY_VQ, batch_size=30), num_devices=8, check=False)
  assert proc.returncode == 2
  assert 'config.batch_size=30 is not divisible by the 8 devices' in proc.stderr


def test_dispatch_groups_never_cross_log_eval_or_checkpoint_steps():
  config = load_config('configs/vqvae.py', dict(
      steps_per_dispatch=4, num_train_steps=45, log_every_steps=10,
      checkpoint_every_steps=15, eval_every_steps=25))
  for start in (0, 7, 30):
    sizes = list(dispatch_sizes(start, config))
    ends = set(start + np.cumsum(sizes))
    assert set(sizes) <= {1, 4} and max(ends) == 45
    events = {s for s in range(start + 1, 46) if s % 10 == 0 or s % 15 == 0 or s % 25 == 0}
    assert events <= ends, (start, sizes)
  assert list(dispatch_sizes(0, config))[:3] == [4, 4, 1]    # 4, 8, then 9, 10 singly


def test_steps_per_dispatch_trains_like_single_steps(tmp_path):
  """Groups of 3 steps per jitted call (lax.scan) give the single-step run's state and
  logged metrics; log and checkpoint steps 4 and 8 force dispatches of 3, 1, 3, 1."""
  base = dict(TINY_VQ, num_train_steps=8, checkpoint_every_steps=4, log_every_steps=4,
              eval_every_steps=0)
  runs = {}
  for k in (1, 3):
    config = load_config('configs/vqvae.py', dict(base, steps_per_dispatch=k))
    wd = str(tmp_path / f'k{k}')
    train_and_evaluate(config, wd)
    state, step = _latest_state(config, wd)
    with open(os.path.join(wd, 'metrics.jsonl')) as f:
      logged = {r['step']: r for r in map(json.loads, f) if 'loss' in r}
    runs[k] = step, jax.device_get((state.params, state.model_state, state.opt_state)), logged
  assert list(dispatch_sizes(0, config)) == [3, 1, 3, 1]
  assert runs[1][0] == runs[3][0] == 8
  for x, y in zip(jax.tree.leaves(runs[1][1]), jax.tree.leaves(runs[3][1])):
    np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)
  assert sorted(runs[1][2]) == sorted(runs[3][2]) == [4, 8]
  for s in (4, 8):   # the mean over the same 4 steps, whether they came as 3 + 1 or 1 x 4
    for name in ('loss', 'grad_norm', 'perplexity'):
      np.testing.assert_allclose(runs[3][2][s][name], runs[1][2][s][name], rtol=1e-5,
                                 err_msg=f'{name} at step {s}')


def _dot_precisions(lowered_text):
  return re.findall(r'(?:dot_general|convolution)[^\n]*precision = \[(\w+),', lowered_text)


@pytest.mark.parametrize('precision', ['default', 'highest'])
def test_matmul_precision_reaches_every_matmul_of_the_train_step(precision):
  config = load_config('configs/lvae.py', {'batch_size': 16, 'matmul_precision': precision})
  splits, trainer = data_and_trainer(config)
  state = trainer.init_fn()
  text = trainer.train_step.lower(state, trainer.put(splits.train.batch(0))).as_text()
  found = _dot_precisions(text)
  assert len(found) > 10
  assert set(found) == {precision.upper()}


def test_evaluation_runs_at_eval_matmul_precision():
  """The per-batch statistics are traced, and the metrics finished, at
  config.eval.matmul_precision."""
  config = load_config('configs/lvae.py', {'batch_size': 16})
  assert config.eval.matmul_precision == 'highest'
  seen = []

  def eval_stats(config, model, data_info):
    def fn(variables, batch, rng):
      seen.append(('stats', jax.config.jax_default_matmul_precision))
      return {'count': jnp.sum(batch['valid'])}
    return fn

  def eval_metrics(config, data_info, totals):
    seen.append(('metrics', jax.config.jax_default_matmul_precision))
    return {'count': float(totals['count'])}

  family = dataclasses.replace(get_family('lvae'), eval_stats=eval_stats,
                               eval_metrics=eval_metrics, eval_images=None)
  batches = [{'valid': np.array([True, True, False])}, {'valid': np.array([True, False, False])}]
  for precision in ('highest', 'default'):
    config.eval.matmul_precision = precision
    metrics = evaluate_split(family, config, None, {}, batches, data_lib.DataInfo(kind='image'),
                             jax.random.PRNGKey(0),
                             lambda b: jax.tree.map(jnp.asarray, b))
    assert metrics == {'count': 3.0}
  assert seen[:2] == [('stats', 'highest'), ('metrics', 'highest')]
  assert seen[2][1] in (None, 'default') and seen[3][1] in (None, 'default')


def test_eval_progress_reports_examples_rate_and_eta():
  import io
  from vaes.metric_writers import EvalProgress
  stream = io.StringIO()
  meter = EvalProgress(1000, stream=stream, every_s=0.0)
  for _ in range(4):
    meter.update(250)
  meter.done()
  lines = stream.getvalue().splitlines()
  assert lines[0].startswith('eval: 250/1000 examples, ') and 'examples/s, ETA ' in lines[0]
  assert lines[-2].startswith('eval: 1000/1000 examples') and lines[-2].endswith('ETA 0m00s')
  assert re.fullmatch(r'eval: 1000 examples in 0m00s \([0-9.]+ examples/s\)', lines[-1])
  quiet = io.StringIO()
  short = EvalProgress(1000, stream=quiet, every_s=60.0)   # a short evaluation prints nothing
  short.update(1000)
  short.done()
  assert quiet.getvalue() == ''


# ----------------------------------------------------------------------------
# Moving average of the weights (config.weights_ema_decay).
# ----------------------------------------------------------------------------


def _nan_batch(batch):
  image = batch['image'].copy()
  image.flat[5] = np.nan
  return dict(batch, image=image)


def test_ema_is_one_hand_computed_update_and_a_skipped_update_keeps_it():
  config = load_config('configs/vqvae.py', dict(TINY_VQ, weights_ema_decay=0.9))
  splits, trainer = data_and_trainer(config)
  state = trainer.init_fn()
  p0 = jax.tree.leaves(jax.device_get(state.params))
  for x, y in zip(p0, jax.tree.leaves(jax.device_get(state.ema_params))):
    np.testing.assert_array_equal(x, y)          # starts at the initial parameters
  state, _ = trainer.train_step(state, trainer.put(splits.train.batch(0)))
  p1 = jax.tree.leaves(jax.device_get(state.params))
  e1 = jax.tree.leaves(jax.device_get(state.ema_params))
  for a, b, e in zip(p0, p1, e1):                # ema <- 0.9 ema + 0.1 params_new
    np.testing.assert_allclose(e, 0.9 * a + 0.1 * b, rtol=1e-6, atol=1e-7)
  assert any(not np.allclose(a, b) for a, b in zip(p0, p1))
  state, metrics = trainer.train_step(state, trainer.put(_nan_batch(splits.train.batch(1))))
  assert float(metrics['skipped_update']) == 1.0
  for x, y in zip(e1, jax.tree.leaves(jax.device_get(state.ema_params))):
    np.testing.assert_array_equal(x, y)

  off = load_config('configs/vqvae.py', TINY_VQ)
  assert off.weights_ema_decay == 0.0
  assert build_trainer(off, splits.info, splits.train.element_spec).abstract_state.ema_params \
      is None                                    # off: nothing carried, nothing saved


def test_evaluation_uses_the_moving_average_when_kept():
  config = load_config('configs/vqvae.py', dict(TINY_VQ, weights_ema_decay=0.9))
  splits, trainer = data_and_trainer(config)
  seen = []

  def eval_stats(config, model, data_info):      # sums of the parameters it was given
    return lambda variables, batch, rng: {'params': jax.tree.leaves(variables['params']),
                                          'batches': jnp.float32(1.0)}

  def eval_metrics(config, data_info, totals):
    seen.append([p / totals['batches'] for p in totals['params']])
    return {}

  trainer = dataclasses.replace(trainer, family=dataclasses.replace(
      trainer.family, eval_stats=eval_stats, eval_metrics=eval_metrics, eval_images=None))
  state = trainer.init_fn()
  state = state.replace(ema_params=jax.tree.map(lambda p: p + 1.0, state.params))
  trainer.evaluator()(state.eval_variables(), splits.eval, jax.random.PRNGKey(0))
  for e, p in zip(seen[0], jax.tree.leaves(state.ema_params)):
    np.testing.assert_allclose(e, p, rtol=1e-6)


# ----------------------------------------------------------------------------
# Warm-ups as fractions of the run.
# ----------------------------------------------------------------------------


def test_warmup_fractions_resolve_against_num_train_steps():
  config = load_config('configs/vrnn_jsb.py', {'num_train_steps': 1500, 'lr_schedule': 'constant',
                                               'lr_warmup_fraction': 0.1,
                                               'model.kl_warmup_steps': 5000,
                                               'model.kl_warmup_fraction': 0.25})
  assert lr_warmup(config) == (150, 'config.lr_warmup_fraction=0.1')
  assert vrae.kl_warmup(config) == (375, 'config.model.kl_warmup_fraction=0.25')
  config.model.kl_warmup_fraction = 0.0          # 0: the steps field again
  assert vrae.kl_warmup(config)[0] == config.model.kl_warmup_steps
  lvae = load_config('configs/lvae.py', {'num_train_steps': 600, 'model.kl_warmup_fraction': 0.5})
  assert ladder.kl_warmup(lvae, {'num_train': 1500}) == (300, 'config.model.kl_warmup_fraction=0.5')
  # The optimiser's linear warm-up: Adam's update on a constant gradient is ~ the learning
  # rate, so the 76th update (after 75 of the 150 warm-up steps) is half of it.
  tx = make_optimizer(config)
  params = {'w': np.zeros(3, np.float32)}
  opt_state = tx.init(params)
  grads = {'w': np.ones(3, np.float32)}
  for _ in range(76):
    updates, opt_state = tx.update(grads, opt_state, params)
  np.testing.assert_allclose(-np.asarray(updates['w']), 0.5 * config.learning_rate, rtol=1e-3)


def test_warmups_that_outlast_the_run_are_named():
  config = load_config('configs/vrnn_jsb.py', {
      'num_train_steps': 1500, 'lr_warmup_steps': 500, 'lr_warmup_fraction': 0.0,
      'model.kl_warmup_steps': 5000, 'model.kl_warmup_fraction': 0.0})
  lines = warmup_warnings(config, get_family('vrae'), {})
  assert len(lines) == 1 and 'config.model.kl_warmup_steps=5000: 5000 steps' in lines[0]
  assert 'config.num_train_steps=1500' in lines[0] and 'kl_warmup_fraction' in lines[0]
  config.lr_warmup_steps = 2000
  assert any('config.lr_warmup_steps=2000' in l and 'lr_warmup_fraction' in l
             for l in warmup_warnings(config, get_family('vrae'), {}))
  config.lr_warmup_steps, config.model.kl_warmup_fraction = 0, 0.25
  assert warmup_warnings(config, get_family('vrae'), {}) == []


def test_a_run_traces_its_evaluation_statistics_once(tmp_path, monkeypatch):
  """Periodic evaluations reuse one compilation: the engine builds and jits the family's
  eval_stats once per run (vaes.evaluation.Evaluator), with no cache in the family."""
  from vaes import registry
  family = get_family('vqvae')
  built, traced = [], []

  def eval_stats(config, model, data_info):
    built.append(1)
    inner = family.eval_stats(config, model, data_info)

    def stats_fn(variables, batch, rng):
      traced.append(1)   # runs while jax.jit traces, not when the compiled function runs
      return inner(variables, batch, rng)
    return stats_fn

  monkeypatch.setitem(registry._FAMILIES, 'vqvae',   # pylint: disable=protected-access
                      dataclasses.replace(family, eval_stats=eval_stats, eval_images=None))
  config = load_config('configs/vqvae.py', dict(TINY_VQ, num_train_steps=3, eval_every_steps=1,
                                                log_every_steps=1, checkpoint_every_steps=3))
  metrics = train_and_evaluate(config, str(tmp_path))
  assert 'eval/loss' in metrics          # three evaluations ran (steps 1, 2, 3)
  assert built == [1] and traced == [1]


def test_the_memory_check_and_the_first_step_share_one_trace_on_one_device(monkeypatch):
  """build_trainer's memory check reads the step's largest intermediate from a trace that
  JAX's trace cache then hands to the step's first call: one trace of the step, not two."""
  from vaes import train as train_lib
  make, traced = train_lib.make_train_step, []

  def counting(*args):
    step = make(*args)

    def train_step(state, batch):
      traced.append(1)   # runs while JAX traces, not when the compiled step runs
      return step(state, batch)
    return train_step

  monkeypatch.setattr(train_lib, 'make_train_step', counting)
  splits, trainer = data_and_trainer(load_config('configs/vqvae.py', TINY_VQ))
  assert trainer.placement.mesh.devices.size == 1 and traced == [1]   # the memory check's
  state, metrics = trainer.train_step(trainer.init_fn(), trainer.put(splits.train.batch(0)))
  assert np.isfinite(float(metrics['loss'])) and traced == [1]
