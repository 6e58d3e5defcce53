"""Two processes on localhost (jax.distributed with a local coordinator, one CPU device
each): a SIGTERM sent to one of them stops both after the same step with one complete
checkpoint, and rerunning the same command ends bit-identical to an uninterrupted run."""

import os
import re
import signal
import subprocess
import time

from tests.helpers import PYTHON, REPO, load_config, subprocess_env
from tests.test_train import _free_port
from tests.test_failures import TINY_VQ, _assert_same_state, _state
from vaes.checkpoint import Checkpointer

OVERRIDES = dict(TINY_VQ, num_train_steps=60, log_every_steps=5, checkpoint_every_steps=1000,
                 eval_every_steps=0)


def _start(workdir, port, log_dir, tag):
  """Both processes of `python train.py ... --num_processes=2`; output to log files."""
  procs = []
  for pid in (0, 1):
    cmd = [PYTHON, os.path.join(REPO, 'train.py'),
           f'--config={os.path.join(REPO, "configs/vqvae.py")}', f'--workdir={workdir}',
           f'--coordinator_address=localhost:{port}', '--num_processes=2',
           f'--process_id={pid}'] + [f'--config.{k}={v}' for k, v in OVERRIDES.items()]
    log = open(os.path.join(log_dir, f'{tag}_{pid}.log'), 'w', encoding='utf-8')
    env = subprocess_env(1)   # the session's compilation cache (tests/conftest.py)
    procs.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log,
                                   stderr=subprocess.STDOUT), log))
  return procs


def _finish(procs, timeout=420):
  codes, logs = [], []
  for proc, log in procs:
    try:
      codes.append(proc.wait(timeout=timeout))
    finally:
      if proc.poll() is None:
        proc.kill()
      log.close()
    logs.append(_read(log.name))
  return codes, logs


def _read(path):
  with open(path, encoding='utf-8') as f:
    return f.read()


def test_sigterm_to_one_process_stops_both_at_one_step_and_resume_is_exact(tmp_path):
  port = _free_port()
  ref, wd = str(tmp_path / 'uninterrupted'), str(tmp_path / 'preempted')
  codes, logs = _finish(_start(ref, port, tmp_path, 'ref'))
  assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
  assert '2 process(es)' in logs[0]

  procs = _start(wd, port, tmp_path, 'pre')
  t0 = time.time()
  while '[step 5]' not in _read(tmp_path / 'pre_0.log'):            # training has started
    assert procs[0][0].poll() is None and time.time() - t0 < 300, _read(tmp_path / 'pre_0.log')
    time.sleep(0.1)
  procs[1][0].send_signal(signal.SIGTERM)                          # process 1 only
  codes, logs = _finish(procs)
  assert codes == [128 + signal.SIGTERM] * 2, logs[0][-3000:] + logs[1][-3000:]
  steps = [int(re.search(r'saved a checkpoint at step (\d+)', log).group(1)) for log in logs]
  assert steps[0] == steps[1] and 5 <= steps[0] < OVERRIDES['num_train_steps'], steps
  # One complete checkpoint, of that step; nothing half-written beside it.
  assert Checkpointer(wd, async_save=False).all_steps() == [steps[0]]
  assert sorted(os.listdir(os.path.join(wd, 'checkpoints'))) == [str(steps[0])]

  codes, logs = _finish(_start(wd, port, tmp_path, 'resume'))    # the same command
  assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
  assert f'Resuming from the checkpoint of step {steps[0]}' in logs[0]

  config = load_config('configs/vqvae.py', OVERRIDES)
  a, step_a = _state(config, ref)
  b, step_b = _state(config, wd)
  assert step_a == step_b == OVERRIDES['num_train_steps']
  _assert_same_state(a, b)
