"""A run's provenance beside its results: WORKDIR/config.json.

    {"config":   the resolved config (config.to_dict()),
     "versions": {"python", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"},
     "git":      {"commit", "dirty", "changes"} of the code's repository (None where the code
                 is not in a git checkout or git is missing),
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
import subprocess
import sys

import jax

from vaes import fs

CODE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
  of the checkout holding `repo_dir`; None values where git or the checkout is missing."""
  def git(*args):
    try:
      proc = subprocess.run(['git', '-C', repo_dir, *args], capture_output=True, text=True,
                            timeout=30)
    except (OSError, subprocess.SubprocessError):
      return None
    return proc.stdout if proc.returncode == 0 else None
  commit, status = git('rev-parse', 'HEAD'), git('status', '--porcelain')
  if commit is None or status is None:
    return {'commit': None, 'dirty': None, 'changes': [], 'num_changes': None}
  changes = status.splitlines()
  return {'commit': commit.strip(), 'dirty': bool(changes), 'changes': changes[:MAX_CHANGES],
          'num_changes': len(changes)}


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
