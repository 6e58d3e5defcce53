"""A run's provenance beside its results: WORKDIR/config.json.

    {"config":   the resolved config (config.to_dict()),
     "versions": {"python", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"},
     "git":      {"commit", "dirty", "changes"} of the code's repository; for a snapshot made
                 by `git archive` (no .git), the commit it wrote into vaes/REVISION and
                 dirty None (unknown); all None where neither tells,
     "devices":  {"platform", "kind", "count", "local_count", "process_count",
                  "host_cpus" (the CPU cores this process may use)},
     "command":  sys.argv,
     "time":     UTC start time, ISO 8601}

Only process 0 writes it. A resumed run rewrites it (the file describes the latest start).
`vaes.collect` reads it to tell runs apart.
"""

import datetime
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys

import jax

from vaes import fs

CODE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REVISION = os.path.join('vaes', 'REVISION')   # `git archive` fills it in: .gitattributes
PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy')
MAX_CHANGES = 50   # changed paths listed in git.changes (the count is always exact)


def versions():
  out = {'python': platform.python_version()}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def git_state(repo_dir=CODE_DIR):
  """{'commit': HEAD, 'dirty': bool, 'changes': `git status --porcelain` lines, 'num_changes'}
  of the checkout holding `repo_dir`. Where git or the checkout is missing, the commit that
  `git archive` wrote into REPO_DIR/vaes/REVISION, with the rest unknown (None), since the
  snapshot may have been edited; all None where that file holds no commit either."""
  def git(*args):
    try:
      proc = subprocess.run(['git', '-C', repo_dir, *args], capture_output=True, text=True,
                            timeout=30)
    except (OSError, subprocess.SubprocessError):
      return None
    return proc.stdout if proc.returncode == 0 else None
  commit, status = git('rev-parse', 'HEAD'), git('status', '--porcelain')
  if commit is None or status is None:
    return {'commit': archived_commit(repo_dir), 'dirty': None, 'changes': [],
            'num_changes': None}
  changes = status.splitlines()
  return {'commit': commit.strip(), 'dirty': bool(changes), 'changes': changes[:MAX_CHANGES],
          'num_changes': len(changes)}


def archived_commit(repo_dir=CODE_DIR):
  """The commit in REPO_DIR/vaes/REVISION, or None: a checkout's copy holds the unexpanded
  placeholder, and the file may be missing."""
  try:
    with open(os.path.join(repo_dir, REVISION), encoding='utf-8') as f:
      text = f.read().strip()
  except OSError:
    return None
  return text if re.fullmatch(r'[0-9a-f]{40}([0-9a-f]{24})?', text) else None


def devices():
  return {'platform': jax.devices()[0].platform, 'kind': jax.devices()[0].device_kind,
          'count': jax.device_count(), 'local_count': jax.local_device_count(),
          'process_count': jax.process_count(),
          'host_cpus': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
                       else os.cpu_count()}


def provenance(config):
  return {
      'config': config.to_dict(),
      'versions': versions(),
      'git': git_state(),
      'devices': devices(),
      'command': list(sys.argv),
      'time': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
  }


def write_config_json(workdir, config):
  """Writes WORKDIR/config.json (atomically) on process 0; returns its path there, None on
  the other processes."""
  if jax.process_index() != 0:
    return None
  record = provenance(config)
  path = fs.join(workdir, 'config.json')
  fs.write_atomic(path, json.dumps(record, indent=2, sort_keys=True, default=str) + '\n')
  return path
