"""WORKDIR/config.json (vaes/provenance.py): the resolved config, versions, git state,
devices, command line and time, written by process 0 only."""

import datetime
import importlib.metadata
import io
import json
import os
import pathlib
import platform
import subprocess
import sys
import tarfile

import jax

from tests.helpers import REPO, load_config
from vaes import provenance


def git(cwd, *args):
  return subprocess.run(['git', '-C', str(cwd), '-c', 'user.name=t', '-c', 'user.email=t@t',
                         *args], capture_output=True, text=True, check=True).stdout


def test_config_json_contents(tmp_path):
  config = load_config('configs/lvae.py', {'batch_size': 32, 'model.latent_sizes': (4, 2)})
  path = provenance.write_config_json(str(tmp_path / 'run'), config)
  assert path == str(tmp_path / 'run' / 'config.json')
  with open(path, encoding='utf-8') as f:
    record = json.load(f)
  assert set(record) == {'config', 'versions', 'git', 'devices', 'command', 'time'}
  assert record['config'] == json.loads(json.dumps(config.to_dict()))
  assert record['config']['batch_size'] == 32
  assert record['config']['model']['latent_sizes'] == [4, 2]
  assert record['versions']['python'] == platform.python_version()
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy'):
    assert record['versions'][name] == importlib.metadata.version(name), name
  assert record['versions']['jax'] == jax.__version__
  assert record['devices'] == {'platform': jax.devices()[0].platform,
                               'kind': jax.devices()[0].device_kind,
                               'count': jax.device_count(),
                               'local_count': jax.local_device_count(),
                               'process_count': jax.process_count(),
                               'host_cpus': len(os.sched_getaffinity(0))}
  assert record['command'] == sys.argv
  age = datetime.datetime.now(datetime.timezone.utc) - datetime.datetime.fromisoformat(
      record['time'])
  assert datetime.timedelta(0) <= age < datetime.timedelta(minutes=5)
  # The code's own checkout (this worktree): its HEAD, and dirty iff git status says so.
  head = subprocess.run(['git', '-C', REPO, 'rev-parse', 'HEAD'], capture_output=True,
                        text=True)
  if head.returncode == 0:
    status = subprocess.run(['git', '-C', REPO, 'status', '--porcelain'], capture_output=True,
                            text=True).stdout
    assert record['git']['commit'] == head.stdout.strip()
    assert record['git']['dirty'] == bool(status.strip())
  assert not os.path.exists(path + '.tmp')


def test_git_state_clean_dirty_and_no_git(tmp_path, monkeypatch):
  repo = tmp_path / 'repo'
  repo.mkdir()
  git(repo, 'init', '-q')
  (repo / 'a.py').write_text('x = 1\n')
  git(repo, 'add', 'a.py')
  git(repo, 'commit', '-qm', 'one')
  state = provenance.git_state(str(repo))
  assert state == {'commit': git(repo, 'rev-parse', 'HEAD').strip(), 'dirty': False,
                   'changes': [], 'num_changes': 0}
  (repo / 'a.py').write_text('x = 2\n')
  state = provenance.git_state(str(repo))
  assert state['dirty'] is True and state['changes'] == [' M a.py'] and state['num_changes'] == 1
  # Not a checkout, and no git at all: recorded as unknown, not an error.
  none = {'commit': None, 'dirty': None, 'changes': [], 'num_changes': None}
  (tmp_path / 'plain').mkdir()
  assert provenance.git_state(str(tmp_path / 'plain')) == none
  monkeypatch.setenv('PATH', str(tmp_path / 'empty'))
  assert provenance.git_state(str(repo)) == none


def test_git_state_of_a_git_archive_snapshot(tmp_path, monkeypatch):
  # `git archive` of this repository's HEAD (how long runs are snapshotted) writes HEAD
  # into vaes/REVISION (.gitattributes: export-subst), and git_state reads it from there.
  tar = subprocess.run(['git', '-C', REPO, 'archive', '--format=tar', 'HEAD', 'vaes/REVISION'],
                       capture_output=True, check=True).stdout
  snapshot = tmp_path / 'snapshot'
  with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
    archive.extractall(snapshot, filter='data')
  head = git(REPO, 'rev-parse', 'HEAD').strip()
  assert provenance.git_state(str(snapshot)) == {'commit': head, 'dirty': None,
                                                 'changes': [], 'num_changes': None}
  # The checkout's own copy holds the placeholder, which is no commit; with no git at all,
  # the checkout's state is unknown rather than the placeholder.
  assert (snapshot / 'vaes' / 'REVISION').read_text() != (
      pathlib.Path(REPO, 'vaes', 'REVISION').read_text(encoding='utf-8'))
  monkeypatch.setenv('PATH', str(tmp_path / 'empty'))
  assert provenance.git_state(REPO)['commit'] is None
  (snapshot / 'vaes' / 'REVISION').write_text('not a commit\n')
  assert provenance.git_state(str(snapshot))['commit'] is None


def test_only_process_zero_writes(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  assert provenance.write_config_json(str(tmp_path / 'run'), load_config('configs/lvae.py')) is None
  assert not os.path.exists(tmp_path / 'run' / 'config.json')


def test_collect_reads_what_write_config_json_writes(tmp_path, capsys):
  from vaes import collect
  for name, lr in (('a', 1e-3), ('b', 3e-4)):
    workdir = str(tmp_path / name)
    provenance.write_config_json(workdir, load_config('configs/lvae.py', {'learning_rate': lr}))
    with open(os.path.join(workdir, 'eval_metrics.json'), 'w') as f:
      json.dump({'nll': 22.5 if name == 'a' else 23.0}, f)
  assert collect.main(['--csv', str(tmp_path / 'a'), str(tmp_path / 'b')]) == 0
  assert capsys.readouterr().out.splitlines() == [
      'run,learning_rate,nll', f'{tmp_path / "a"},0.001,22.5', f'{tmp_path / "b"},0.0003,23']
