"""One live training run per workdir (vaes.workdir_lock): a second train.py on a workdir in
use is refused with one line and harms nothing; a killed holder leaves no stuck lock."""

import os
import signal
import socket
import subprocess

import pytest

from tests.helpers import PYTHON, REPO, load_config, run_cli, subprocess_env
from tests.test_failures import TINY_VQ, _train_cmd, _wait_for_checkpoint
from vaes import workdir_lock
from vaes.checkpoint import Checkpointer
from vaes.errors import TrainingError
from vaes.train import train_and_evaluate


def test_lock_is_exclusive_names_its_holder_and_is_released(tmp_path):
  wd = str(tmp_path / 'run')
  lock = workdir_lock.acquire(wd)
  with pytest.raises(workdir_lock.WorkdirBusy) as e:
    workdir_lock.acquire(wd)
  assert f'pid {os.getpid()} on host {socket.gethostname()}' in str(e.value)
  lock.release()
  with workdir_lock.acquire(wd):   # free again
    pass


def test_lock_of_a_killed_process_is_not_stuck(tmp_path):
  wd = str(tmp_path / 'run')
  holder = subprocess.Popen(
      [PYTHON, '-c', 'import sys, time; from vaes import workdir_lock; '
       'lock = workdir_lock.acquire(sys.argv[1]); print("held", flush=True); time.sleep(600)', wd],
      cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(workdir_lock.WorkdirBusy, match=f'pid {holder.pid} '):
      workdir_lock.acquire(wd)
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with workdir_lock.acquire(wd):   # the OS released it with the process
    pass


def test_second_train_on_a_live_workdir_is_refused_and_the_first_is_unharmed(tmp_path):
  wd = str(tmp_path / 'run')
  overrides = dict(TINY_VQ, num_train_steps=100_000, checkpoint_every_steps=5,
                   log_every_steps=1000)
  first = subprocess.Popen(_train_cmd(wd, overrides), cwd=REPO, env=subprocess_env(1),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    _wait_for_checkpoint(wd, first)
    second = run_cli('train.py', 'configs/vqvae.py', wd, overrides, check=False)
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f'ERROR: The workdir {wd} is in use by another training run (pid {first.pid} on host '
        f'{socket.gethostname()}'), second.stderr[-2000:]
    assert 'choose another --workdir' in lines[0]
    assert first.poll() is None                     # the first run goes on
    assert not os.path.exists(os.path.join(wd, 'corrupted_checkpoints'))
  finally:
    first.send_signal(signal.SIGKILL)               # killed: no chance to release anything
    first.communicate()
  steps = Checkpointer(wd, async_save=False).all_steps()
  assert steps and all(s % 5 == 0 for s in steps)   # the first run's checkpoints, intact
  # A new start on the workdir of the killed run resumes from its checkpoint.
  config = load_config('configs/vqvae.py', dict(overrides, num_train_steps=steps[-1] + 2))
  train_and_evaluate(config, wd)
  assert Checkpointer(wd, async_save=False).latest_step() == steps[-1] + 2


def test_train_and_evaluate_refuses_a_held_workdir_before_touching_it(tmp_path):
  wd = str(tmp_path / 'run')
  config = load_config('configs/vqvae.py', dict(TINY_VQ, num_train_steps=2))
  with workdir_lock.acquire(wd):
    with pytest.raises(TrainingError, match='is in use by another training run'):
      train_and_evaluate(config, wd)
  assert os.listdir(wd) == [workdir_lock.LOCK_NAME]   # no checkpoints, logs or config.json
