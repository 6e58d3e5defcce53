"""Second stages: what a learned prior over codes needs from a trained first stage.

As big_vision's UViM loads its oracle by path, a prior restores the first stage's
*variables* (parameters, or their moving average when it kept one, and model state)
from `config.data.vqvae_workdir`, not a trainer, and never from inside the data layer.
That is the first stage's workdir (its latest checkpoint) or an export file of it
(python -m vaes.export; the codes are then cached beside the file, under the same key as
its checkpoint's).
Which weights follows from the first stage's checkpoint (it kept a moving average when
it was trained with config.weights_ema_decay > 0), not from
config.data.vqvae.weights_ema_decay:

  load_first_stage(config) -> FirstStage(model, variables, interface, step, key)
  prepare_codes(config)    -> path of the cached codes; sets config.data.codes_path

The codes of the train split (one epoch in the order of step 0, drop remainder) and
of the whole evaluation split are extracted once with one jitted encoder pass per
batch and cached as `{vqvae_workdir}/codes_{key}.npz`. The key is a hash of the
checkpoint's content (the per-array checksums of its parameters and model state)
and of the extraction fields (the first stage's data fields, batch size and seed),
so a retrained first stage, or other extraction fields, never reuse stale codes.
The 'vq_codes' data source (vaes/data/codes.py) only reads that file.
"""

import dataclasses
import hashlib
import io
import json
from typing import Any

import jax
import numpy as np

from vaes import data as data_lib
from vaes import export_file
from vaes import fs
from vaes.checkpoint import Checkpointer
from vaes.data import DataError
from vaes.data import codes as codes_data
from vaes.data import core as data_core
from vaes.errors import CheckpointError
from vaes.evaluation import abstract_variables, evaluation_variables
from vaes.registry import get_family
from vaes.run_config import config_dict, weights_note

CODES_FORMAT = 2     # bump when the cached arrays change meaning
# The config.data fields of the key's format. A field added since enters the key only
# away from its default, so the caches, and the codes_path recorded by runs and exports,
# made before it existed keep their names (data.transpose is one such field).
KEY_DATA_FIELDS = frozenset((
    'binarize', 'cache_dir', 'codes_path', 'crop_size', 'eval_limit', 'eval_split',
    'image_size', 'max_len', 'name', 'num_chorales', 'num_test', 'num_train', 'num_valid',
    'path', 'resize', 'series_dim', 'series_length', 'series_min_length', 'series_noise',
    'series_seed', 'shuffle_buffer', 'source', 'tfds_data_dir', 'tfds_download',
    'train_split', 'valid_size', 'vqvae_workdir'))


@dataclasses.dataclass
class FirstStage:
  model: Any
  variables: dict            # {'params': ..., other collections}
  interface: dict            # levels, num_codes, encode, decode (family.prior_interface)
  step: int
  key: str                   # content + extraction hash, names the codes cache
  splits: Any
  workdir: str
  weights: str = 'params'    # 'ema' (the checkpoint's moving average) or 'params'


_LOADED = {}


def _first_stage_config(config):
  vq_config = config.data.vqvae
  workdir = config.data.vqvae_workdir
  family = get_family(vq_config.model.name)
  if family.prior_interface is None:
    raise DataError(f"config.data.vqvae.model.name='{vq_config.model.name}': a prior needs the "
                    'codes of a VQ model (vqvae or vqvae2).')
  if not workdir:
    raise DataError('config.data.vqvae_workdir is empty: name the workdir of a trained '
                    'VQ-VAE, e.g. --config.data.vqvae_workdir=runs/vqvae.')
  return vq_config, workdir, family


def _checkpointer(workdir):
  try:
    checkpointer = Checkpointer(workdir, async_save=False, read_only=True)
    step = checkpointer.latest_step()
  except CheckpointError:
    step = None
  if step is None:
    raise DataError(f'No VQ-VAE checkpoint in {fs.join(workdir, "checkpoints")}. Train the '
                    f'first stage first: python train.py --config=<its config> '
                    f'--workdir={workdir} (see the docstring of the prior config).')
  return checkpointer


def _key(variables_checksums, vq_config):
  data, defaults = config_dict(vq_config.data), data_core.data_config()
  for name in set(data) - KEY_DATA_FIELDS:
    if name in defaults and data[name] == defaults[name]:
      del data[name]
  fields = {'format': CODES_FORMAT, 'data': data,
            'batch_size': vq_config.batch_size, 'seed': vq_config.seed,
            'variables': sorted(variables_checksums.items())}
  return hashlib.blake2b(json.dumps(fields, sort_keys=True).encode(),
                         digest_size=8).hexdigest()


def load_first_stage(config) -> FirstStage:
  """Restores the first stage's variables named by `config.data` (cached per
  checkpoint within a process): config.data.vqvae_workdir is its workdir, or an export
  of it (python -m vaes.export). Every process reads the whole splits."""
  vq_config, workdir, family = _first_stage_config(config)
  # A missing *.msgpack is a missing export (one line naming it), not a missing workdir.
  exported = export_file.is_export(workdir) or str(workdir).endswith('.msgpack')
  checkpointer = None if exported else _checkpointer(workdir)
  splits = data_lib.get_datasets(vq_config, process_index=0, process_count=1)
  model = family.build_model(vq_config, splits.info)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = abstract_variables(family, model, splits.train.element_spec, 1, device)
  # A first stage whose checkpoint kept a moving average (trained with config.weights_ema_decay
  # > 0) is used through it, as its own evaluation does, whatever vq_config says.
  if exported:   # its checksums under the checkpoint's paths: the same codes key
    variables, step, info = export_file.restore_variables(
        workdir, abstract, vq_config, sharding=device, flag='config.data.vqvae_workdir')
  else:
    variables, step, info = checkpointer.restore_variables(abstract, vq_config, sharding=device)
  name = 'ema_params' if info['weights'] == 'ema' else 'params'
  # The key: the checksums of the weights used and the model state.
  key = _key({p: c for p, c in info['checksums'].items()
              if p.split('/')[0] in (name, 'model_state')}, vq_config)
  cache = (fs.resolve(workdir), key)
  if cache not in _LOADED:
    note = weights_note(info, vq_config)
    if note and jax.process_index() == 0:
      print(f'{note[:-1]} (first stage in {workdir}).', flush=True)
    _LOADED[cache] = FirstStage(
        model=model, variables=evaluation_variables(variables['params'], variables['model_state'],
                                                    variables.get('ema_params')),
        interface=family.prior_interface(vq_config, model, splits.info), step=int(step),
        key=key, splits=splits, workdir=workdir, weights=info['weights'])
  return _LOADED[cache]


def extract_codes(first: FirstStage):
  """Encodes one epoch of the train split and the whole eval split (jitted)."""
  encode = jax.jit(first.interface['encode'])
  n_levels = len(first.interface['levels'])
  train, out = first.splits.train, {}
  it = train.iterate(0)
  parts = [[] for _ in range(n_levels)]
  for _ in range(train.steps_per_epoch):
    codes, _ = jax.device_get(encode(first.variables, next(it)['image']))
    for l in range(n_levels):
      parts[l].append(np.asarray(codes[l]))
  for l in range(n_levels):
    out[f'train_codes_{l}'] = np.concatenate(parts[l]).astype(np.int32)
  parts, nlls = [[] for _ in range(n_levels)], []
  for batch in first.splits.eval:
    valid = np.asarray(batch['valid'])
    codes, nll = jax.device_get(encode(first.variables, batch['image']))
    for l in range(n_levels):
      parts[l].append(np.asarray(codes[l])[valid])
    nlls.append(np.asarray(nll)[valid])
  for l in range(n_levels):
    out[f'eval_codes_{l}'] = np.concatenate(parts[l]).astype(np.int32)
  out['eval_decoder_nll'] = np.concatenate(nlls).astype(np.float32)
  info = {
      'grids': [list(g) for g in first.interface['levels']],
      'num_codes': [int(k) for k in first.interface['num_codes']],
      'image_shape': list(first.splits.info.shape),
      'vqvae_step': first.step, 'key': first.key, 'vqvae_weights': first.weights,
  }
  out['info_json'] = np.array(json.dumps(info))
  return out


def prepare_codes(config):
  """Extracts (once) the codes of the first stage named by `config.data` and points
  `config.data.codes_path` at the cache. Returns the path."""
  first = load_first_stage(config)
  where = export_file.folder(first.workdir) if export_file.is_export(first.workdir) else \
      first.workdir   # an export's codes go beside it
  path = fs.join(where, f'codes_{first.key}.npz')
  if not fs.exists(path):
    arrays = extract_codes(first)
    if jax.process_index() == 0:
      buffer = io.BytesIO()
      np.savez(buffer, **arrays)
      fs.write_atomic(path, buffer.getvalue())
    else:   # the other processes use their own (identical) extraction
      codes_data.IN_MEMORY[path] = arrays
  config.data.codes_path = path
  return path
