"""The export file of a trained model (written by `python -m vaes.export`): the variables
an evaluation uses and what they are, in one msgpack file.

    flax.serialization.msgpack_serialize({
      'format': 'vaes-export', 'version': 1,
      'meta': a JSON string: {
        'config':     the run's resolved config, as its checkpoint recorded it,
        'checkpoint': {'kind': 'best' | 'latest', 'step', 'workdir', 'run'} it came from,
        'step', 'weights': 'ema' | 'params', 'weights_ema_decay' (the run's),
        'selection' (a best checkpoint's metric and value), 'train_wall_time_s',
        'train_steps', 'checksums': {path: blake2b of each array}, 'versions', 'created'},
      'meta_checksum': blake2b of that string,
      'variables': {'params': the weights evaluated (the moving average when the run
                    kept one), <collection>: the model state (batch_stats, vq_ema, ...)}
                   as numpy arrays})

The meta item is inside the file, not a sidecar JSON: an export is copied, mailed and
checked in (tests/golden/) as one file, and its variables can never travel without the
config that builds their model, nor with another run's. `load_export` refuses a missing,
damaged (truncated, flipped bytes: the checksums) or foreign file with one line.

`restore_variables` is `Checkpointer.restore_variables` for an export: the same
{'params', 'model_state'} for a config, refused (ConfigError, the fields named) when the
export's model/data fields differ from the config's. Where the data and a first stage
live (data.vqvae_workdir, data.cache_dir, data.tfds_data_dir, the folder of
data.codes_path) may differ: an export is meant to move. eval.py (`--export`),
second stages (data.vqvae_workdir naming an export) and vaes.export read exports
through this module.
"""

import datetime
import hashlib
import json
import os

import jax
from flax import serialization

from vaes import checkpoint_integrity as integrity
from vaes import fs
from vaes.errors import CheckpointError, ConfigError
from vaes.run_config import config_dict, model_data_diff

FORMAT = 'vaes-export'
VERSION = 1

# Config fields that say where things are, not what the model is: an export evaluated
# on another machine may have other values (matched by their last component, so that a
# prior's first-stage config, data.vqvae.data.*, is covered too).
LOCATION_FIELDS = frozenset({'vqvae_workdir', 'cache_dir', 'tfds_data_dir'})

_MAKE = 'python -m vaes.export --config=CONFIG --workdir=RUN --out={path}'


def is_export(path):
  """Whether `path` names a file (an export) rather than a folder (a workdir)."""
  return bool(path) and fs.exists(path) and not fs.isdir(path)


def folder(path):
  """The folder holding the file `path` (a local path or a URL)."""
  if fs.is_local(path):
    return os.path.dirname(fs.resolve(path))
  return str(path).rstrip('/').rsplit('/', 1)[0]


def host_tree(tree):
  """A numpy copy of this process's replica of every array of `tree`."""
  return jax.tree.map(integrity.host_array, tree)


def _text_checksum(text):
  return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _nonfinite(host):
  """(non-finite values, values) of the float arrays of {path: array}."""
  return integrity.nonfinite_parameters({f'params/{p}': a for p, a in host.items()})


def save_export(path, variables, meta):
  """Writes `variables` ({'params': ..., <collection>: ...}, arrays) and `meta` (JSON
  values) to `path` (whole or not at all). Returns (the meta written, with the format,
  the checksums and the creation time; the file's size in bytes)."""
  variables = host_tree(variables)
  bad, total = _nonfinite(integrity.leaves(variables))
  if bad:
    raise CheckpointError(f'The variables to export hold {bad:,} non-finite values (of '
                          f'{total:,}); nothing was written to {path}.')
  meta = {**meta, 'format': FORMAT, 'version': VERSION,
          'checksums': integrity.checksums(integrity.leaves(variables)),
          'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}
  text = json.dumps(meta, sort_keys=True)
  payload = {'format': FORMAT, 'version': VERSION, 'meta': text,
             'meta_checksum': _text_checksum(text), 'variables': variables}
  data = serialization.msgpack_serialize(payload)
  try:
    fs.write_atomic(path, data)
  except OSError as e:
    raise fs.PathError(f'--out={path}: writing the export failed ({e}). Choose a writable '
                       'path (or free disk space).') from e
  return meta, len(data)


def load_export(path, flag='--export'):
  """(variables: nested dicts of numpy arrays, meta) of the export file `path`.
  CheckpointError (one line naming `flag`=`path` and the fix) for a file that is
  missing, damaged or not an export."""
  named = f'{flag}={path}' if flag else str(path)
  remake = f'Export the run again: {_MAKE.format(path=path)}.'
  if not path or not fs.exists(path):
    raise CheckpointError(f'{named}: no such file. Make one with '
                          f'{_MAKE.format(path=path or "FILE.msgpack")}.')
  if fs.isdir(path):
    raise CheckpointError(f'{named} is a folder; an export is one file '
                          f'({_MAKE.format(path="FILE.msgpack")}). To evaluate a run in a '
                          'workdir, give it as --workdir without --export.')
  try:
    with fs.open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise CheckpointError(f'{named}: cannot be read ({e}).') from e
  try:
    payload = serialization.msgpack_restore(data)
  except Exception as e:  # pylint: disable=broad-except  (msgpack raises several types)
    raise CheckpointError(
        f'{named} is not a readable export (damaged, truncated, or another kind of file: '
        f'{type(e).__name__}: {integrity.first_line(e)[:120]}). {remake}') from e
  if not isinstance(payload, dict) or payload.get('format') != FORMAT:
    what = ('a msgpack file without the export format mark (e.g. flax.serialization of '
            'bare parameters)' if isinstance(payload, dict) else 'not a vaes export')
    raise CheckpointError(f'{named} is {what}. {remake}')
  if not isinstance(payload.get('version'), int) or payload['version'] > VERSION:
    raise CheckpointError(f"{named} has export format version {payload.get('version')!r}; "
                          f'this code reads version {VERSION} and older. Use the code that '
                          'wrote it, or export the run again with this code.')
  try:
    if _text_checksum(payload['meta']) != payload['meta_checksum']:
      raise integrity.Damaged('checksum mismatch in its meta item')
    meta = json.loads(payload['meta'])
    variables = payload['variables']
    sums, listed = integrity.checksums(integrity.leaves(variables)), meta['checksums']
    wrong = sorted(p for p in set(sums) | set(listed) if sums.get(p) != listed.get(p))
    if wrong:
      raise integrity.Damaged(f'checksum mismatch in {len(wrong)} array(s), e.g. {wrong[0]}')
    bad, total = _nonfinite(integrity.leaves(variables))
    if bad:
      raise integrity.Damaged(f'{bad:,} of {total:,} values are NaN/inf')
  except (KeyError, TypeError, ValueError, integrity.Damaged) as e:
    raise CheckpointError(f'{named} is damaged ({integrity.first_line(e)[:160]}). '
                          f'{remake}') from e
  return variables, meta


def export_diff(then, now):
  """The model/data fields (config_diff entries) in which the export's config `then`
  and the config `now` (plain dicts) make other models: `model_data_diff` less the
  location fields, and data.codes_path compared by file name (its name is a hash of the
  first stage's weights and extraction fields; its folder is where it was cached)."""
  out = []
  for k, a, b in model_data_diff(then, now):
    if k.rsplit('.', 1)[-1] in LOCATION_FIELDS:
      continue
    if k.endswith('codes_path') and a and b and \
        str(a).rstrip('/').rsplit('/', 1)[-1] == str(b).rstrip('/').rsplit('/', 1)[-1]:
      continue
    out.append((k, a, b))
  return out


def check_config(meta, config, path, flag='--export'):
  """Refuses (ConfigError) an export whose model/data fields differ from `config`'s."""
  diff = export_diff(meta.get('config') or {}, config_dict(config))
  if diff:
    shown = ', '.join(f'{k}: export {a!r} vs config {b!r}' for k, a, b in diff[:12])
    more = f' (and {len(diff) - 12} more)' if len(diff) > 12 else ''
    raise ConfigError(
        f'{flag}={path} holds a model of other model/data fields than the config '
        f'({shown}{more}). Evaluate it with the config it was exported with (its values as '
        '--config.* overrides), or export the run of this config.')


def _checkpoint_path(path, weights):
  """The path of an exported array in the checkpoint it came from: the weights under
  'params/' or 'ema_params/', the model state under 'model_state/'."""
  top = path.split('/', 1)[0]
  if top == 'params':
    return ('ema_params' if weights == 'ema' else 'params') + path[len('params'):]
  return f'model_state/{path}'


def restore_variables(path, abstract_variables, config, sharding=None, flag='--export',
                      loaded=None, same_model=True):
  """What `Checkpointer.restore_variables` returns, from an export:
  ({'params', 'model_state'} placed with `sharding` (default that of the first abstract
  array), step, info), info = {'config', 'meta' (the export's selection and training
  record, as a checkpoint's meta item holds them), 'weights', 'ema_decay', 'checksums'
  (under the checkpoint's paths, so a first stage's codes cache key is the same for its
  checkpoint and its export), 'export': meta}. The params are already the weights to
  evaluate (the moving average when the run kept one). ConfigError for an export of
  other model/data fields, or arrays of other shapes than the config's. `loaded`: what
  load_export(path) returned, when it was read already. `same_model=False` (fine-tuning,
  as for checkpoints) skips the model/data comparison: only the arrays must fit."""
  variables, meta = loaded or load_export(path, flag)
  if same_model:
    check_config(meta, config, path, flag)
  abstract = {'params': abstract_variables['params'], **abstract_variables['model_state']}
  if sharding is None:
    sharding = jax.tree.leaves(abstract)[0].sharding
  ours, theirs = integrity.signatures(abstract), integrity.signatures(variables)
  wrong = sorted(p for p in set(ours) | set(theirs) if ours.get(p) != theirs.get(p))
  if wrong:
    shown = '; '.join(f'{p} (export {theirs.get(p)}, config {ours.get(p)})' for p in wrong[:3])
    raise ConfigError(f'{flag}={path} holds arrays of other shapes than the config builds '
                      f'({len(wrong)} differ: {shown}). Evaluate it with the config it was '
                      'exported with.')
  host = integrity.leaves(variables)
  placed = jax.tree_util.tree_unflatten(
      jax.tree_util.tree_structure(abstract),
      [jax.device_put(host[p], sharding) for p in integrity.leaves(abstract)])
  model_state = {k: v for k, v in placed.items() if k != 'params'}
  decay = meta.get('weights_ema_decay')
  info = {'config': meta['config'], 'export': meta, 'weights': meta['weights'],
          'ema_decay': None if decay is None else float(decay),
          'meta': {'selection': meta.get('selection'), 'step': meta.get('train_steps'),
                   'train_wall_time_s': meta.get('train_wall_time_s'),
                   'run': (meta.get('checkpoint') or {}).get('run')},
          'checksums': {_checkpoint_path(p, meta['weights']): c
                        for p, c in meta['checksums'].items()}}
  return {'params': placed['params'], 'model_state': model_state}, int(meta['step']), info
