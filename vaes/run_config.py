"""Which configs make the same run: the config as JSON, the fields that differ between a
checkpoint's config and a command's, which of them matter, and a run's identity.

A checkpoint records the whole resolved config (vaes.checkpoint); these functions compare
it with the config of the command that reads it:
- implementation-only fields (the family's and the engine's: how the same function is
  computed) may differ on resume;
- cadence fields (logging, evaluation and checkpoint intervals) and evaluation-only fields
  (config.eval.*, config.data.eval_split) change neither the state nor the trained function:
  a finished run re-run with other values is the same run;
- config.num_train_steps may grow on resume (the run is extended).
A run's id ('run': {'id', 'started'} in every checkpoint's meta item) tells apart the runs
made in one workdir.
"""

import datetime
import json
import os
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from vaes.errors import ConfigError
from vaes.renames import WEIGHTS_EMA, upgrade_config
from vaes.registry import get_family

# The engine's own implementation-only fields (vaes/xla_options.py).
_ENGINE_IMPLEMENTATION_FIELDS = frozenset({'cpu_convolutions'})

# Fields that change neither the state nor the trained function: a finished run
# re-run with other values of these is still the same run.
CADENCE_FIELDS = frozenset({'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
                            'max_checkpoints_to_keep', 'steps_per_dispatch', 'profile_steps'})

# Data fields that choose only what the evaluations report (the split eval.py and the
# evaluations during training run on, and how much of it), like config.eval.*: neither the
# trained state nor the trained function. eval.py and a resume compare none with the run's.
EVAL_DATA_FIELDS = frozenset({'data.eval_split', 'data.eval_limit'})


def implementation_fields(config):
  """The family's fields that choose how the same function is computed (speed and
  memory only): a run may resume with other values. `config` is a plain dict."""
  name = config.get('model', {}).get('name', '')
  try:
    return _ENGINE_IMPLEMENTATION_FIELDS | frozenset(get_family(name).implementation_fields)
  except ConfigError:
    return _ENGINE_IMPLEMENTATION_FIELDS


def is_eval_field(name):
  """Whether the dotted config field `name` is evaluation-only (config.eval.*,
  config.data.eval_split)."""
  return name.startswith('eval.') or name in EVAL_DATA_FIELDS


def config_dict(config):
  """The config as plain JSON values (tuples become lists)."""
  return json.loads(config.to_json_best_effort())


def flatten(d, prefix=''):
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  out = {}
  for k, v in d.items():
    key = f'{prefix}{k}'
    if isinstance(v, dict) and v:
      out.update(flatten(v, key + '.'))
    else:
      out[key] = v
  return out


def config_diff(then, now, ignore=None):
  """Sorted [(field, checkpoint value, config value)] of the fields that differ
  (implementation-only fields of the family aside, unless `ignore` is given). `then`, a
  saved config, is read with renamed fields under their current names."""
  ignore = implementation_fields(now) if ignore is None else ignore
  then, now = flatten(upgrade_config(then)), flatten(now)
  # Fields added after the checkpoint was written (absent there) keep their defaults.
  return [(k, then.get(k), now.get(k)) for k in sorted(then)
          if then.get(k) != now.get(k) and k not in ignore]


def describe_diff(diff, limit=12):
  """'field: checkpoint a vs config b, ...' of the first `limit` entries of a config_diff."""
  text = ', '.join(f'{k}: checkpoint {a!r} vs config {b!r}' for k, a, b in diff[:limit])
  return text + (f' (and {len(diff) - limit} more)' if len(diff) > limit else '')


def model_data_diff(then, now):
  """The differing config.model / config.data fields (evaluation-only ones aside): a
  checkpoint of `then` holds another model than `now` builds."""
  pick = lambda d: {k: d[k] for k in ('model', 'data') if k in d}
  return [d for d in config_diff(pick(then), pick(now)) if not is_eval_field(d[0])]


def finished_run_diff(then, now):
  """The differing fields that would make a finished run a different run."""
  return [(k, a, b) for k, a, b in config_diff(then, now)
          if k not in CADENCE_FIELDS and not is_eval_field(k)]


def other_run_diff(then, now):
  """The differing fields that make the checkpoint of config `then` part of another run
  than `now`'s: those of `finished_run_diff` but config.num_train_steps (a resume may
  extend a run)."""
  return [d for d in finished_run_diff(then, now) if d[0] != 'num_train_steps']


def state_suspects(diff):
  """The fields of `diff` that can change the train state's structure (not the cadence,
  the length of the run or the evaluation); all of `diff` when none is left."""
  kept = [d for d in diff if d[0] not in CADENCE_FIELDS and d[0] != 'num_train_steps'
          and not is_eval_field(d[0])]
  return kept or diff


def new_run():
  """{'id', 'started'} of a run that starts now (process 0's on every process)."""
  values = np.array([int.from_bytes(os.urandom(4), 'little') >> 1,
                     int.from_bytes(os.urandom(4), 'little') >> 1, int(time.time())], np.int32)
  if jax.process_count() > 1:
    values = np.asarray(multihost_utils.broadcast_one_to_all(values))
  started = datetime.datetime.fromtimestamp(int(values[2]), datetime.timezone.utc)
  return {'id': f'{int(values[0]):08x}{int(values[1]):08x}',
          'started': started.isoformat(timespec='seconds')}


def describe_run(run):
  """'run <id> (started <time>)' of a meta item's 'run' entry (None: one without an id)."""
  run = run or {}
  return f"run {run.get('id')} (started {run.get('started')})" if run.get('id') else \
      'a run without a recorded id (written before runs had one)'


def weights_note(info, config):
  """One line when the weights a checkpoint is evaluated with (its own: info['weights'],
  info['ema_decay']) are not what `config.weights_ema_decay` would suggest; else None."""
  decay = float(config.get(WEIGHTS_EMA, 0.0) or 0.0)
  if info['weights'] == 'ema':
    if decay == info['ema_decay']:
      return None
    return (f"Note: the checkpoint was trained with config.{WEIGHTS_EMA}={info['ema_decay']!r}: "
            f'evaluating the moving average of its weights (this command says '
            f'config.{WEIGHTS_EMA}={decay!r}, which does not choose the weights).')
  if decay > 0:
    return (f'Note: the checkpoint holds no moving average of its weights (its run had '
            f'config.{WEIGHTS_EMA}={info["ema_decay"]!r}): evaluating its parameters (this '
            f'command says config.{WEIGHTS_EMA}={decay!r}, which does not choose the weights).')
  return None

