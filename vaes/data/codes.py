"""The 'vq_codes' dataset: code indices of a trained VQ-VAE (or VQ-VAE-2), the data
of the second training stage, a learned prior over codes.

`config.data.vqvae` is the first stage's whole config and
`config.data.vqvae_workdir` its workdir. The latest checkpoint there is restored
once, the train split (one epoch, drop remainder) and the whole evaluation split
are encoded with one jitted pass per batch, and the result is cached in
`{vqvae_workdir}/codes_step{N}.npz` (N = the checkpoint step), which later runs
read back. Batches:
  train: {'codes_0': (B, h_0, w_0) int32, ..., 'codes_{L-1}': ...}  (level 0 = bottom)
  eval:  the same plus 'decoder_nll': -log p(x | z_q(x)) in nats per image,
         summed over the D dimensions (NaN without a discrete decoder likelihood).
`info` holds the grids, codebook sizes, the image shape and D.
"""

import importlib
import os

import jax
import numpy as np

from vaes.data import register
from vaes.data.core import ArrayEvalSource, ArrayTrainSource, DataError, Splits

# First-stage families that expose `prior_interface(config, model, data_info)`.
CODE_FAMILIES = {'vqvae': 'vaes.families.vqvae', 'vqvae2': 'vaes.families.vqvae2'}

_LOADED = {}


def load_first_stage(config):
  """Restores the first stage named by `config.data` -> dict(model, variables, splits,
  step, interface). Cached per (workdir, step) within a process."""
  from vaes import data as data_lib
  from vaes.checkpoint import Checkpointer
  from vaes.train import build_trainer

  vq_config = config.data.vqvae
  workdir = config.data.get('vqvae_workdir', '')
  name = vq_config.model.name
  if name not in CODE_FAMILIES:
    raise DataError(f"config.data.vqvae.model.name='{name}': a prior needs the codes of one "
                    f'of {sorted(CODE_FAMILIES)}.')
  if not workdir:
    raise DataError('config.data.vqvae_workdir is empty: name the workdir of a trained '
                    'VQ-VAE, e.g. --config.data.vqvae_workdir=runs/vqvae.')
  from vaes.checkpoint import CheckpointError
  try:
    checkpointer = Checkpointer(workdir, async_save=False, read_only=True)
    step = checkpointer.latest_step()
  except CheckpointError:
    step = None
  if step is None:
    raise DataError(f'No VQ-VAE checkpoint in {os.path.join(workdir, "checkpoints")}. Train the first stage '
                    f'first: python train.py --config=<its config> --workdir={workdir} '
                    '(see the docstring of the prior config).')
  key = (os.path.abspath(workdir), int(step))
  if key in _LOADED:
    return _LOADED[key]
  splits = data_lib.get_datasets(vq_config)
  trainer = build_trainer(vq_config, splits.info, splits.train.element_spec)
  state, step, _ = checkpointer.restore_variables(trainer.abstract_state, vq_config)
  family = importlib.import_module(CODE_FAMILIES[name])
  interface = family.prior_interface(vq_config, trainer.model, splits.info)
  loaded = dict(model=trainer.model, variables={'params': state.params, **state.model_state},
                splits=splits, step=int(step), interface=interface, trainer=trainer,
                workdir=workdir)
  _LOADED[key] = loaded
  return loaded


def _gather(tree):
  from jax.experimental import multihost_utils
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def extract_codes(loaded):
  """Encodes one epoch of the train split and the whole eval split (jitted)."""
  interface, trainer = loaded['interface'], loaded['trainer']
  encode = jax.jit(interface['encode'])
  variables = loaded['variables']
  n_levels = len(interface['levels'])
  out = {}
  train = loaded['splits'].train
  it = train.iterate(0)
  parts = [[] for _ in range(n_levels)]
  for _ in range(train.steps_per_epoch):
    codes, _ = _gather(encode(variables, trainer.put(next(it))['image']))
    for l in range(n_levels):
      parts[l].append(np.asarray(codes[l]))
  for l in range(n_levels):
    out[f'train_codes_{l}'] = np.concatenate(parts[l]).astype(np.int32)
  parts, nlls = [[] for _ in range(n_levels)], []
  for batch in loaded['splits'].eval:
    valid = np.asarray(_gather(trainer.put({'v': batch['valid']})['v']))
    codes, nll = _gather(encode(variables, trainer.put({'image': batch['image']})['image']))
    for l in range(n_levels):
      parts[l].append(np.asarray(codes[l])[valid])
    nlls.append(np.asarray(nll)[valid])
  for l in range(n_levels):
    out[f'eval_codes_{l}'] = np.concatenate(parts[l]).astype(np.int32)
  out['eval_decoder_nll'] = np.concatenate(nlls).astype(np.float32)
  return out


def cached_codes(config):
  """The cached codes of the first stage's latest checkpoint (extracted if absent)."""
  loaded = load_first_stage(config)
  path = os.path.join(loaded['workdir'], f'codes_step{loaded["step"]}.npz')
  if os.path.exists(path):
    with np.load(path) as f:
      return {k: f[k] for k in f.files}, loaded
  arrays = extract_codes(loaded)
  if jax.process_index() == 0:
    tmp = path + f'.tmp{os.getpid()}.npz'
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
  return arrays, loaded


@register('vq_codes')
def vq_codes(config, process_index, process_count):
  arrays, loaded = cached_codes(config)
  interface = loaded['interface']
  n_levels = len(interface['levels'])
  info = {
      'kind': 'codes',
      'grids': tuple(tuple(g) for g in interface['levels']),
      'num_codes': tuple(int(k) for k in interface['num_codes']),
      'image_shape': tuple(loaded['splits'].info['shape']),
      'num_dims': int(np.prod(loaded['splits'].info['shape'])),
      'num_train': len(arrays['train_codes_0']),
      'num_eval': len(arrays['eval_codes_0']),
      'vqvae_step': loaded['step'],
  }
  train = ArrayTrainSource({f'codes_{l}': arrays[f'train_codes_{l}'] for l in range(n_levels)},
                           config.batch_size, config.seed, process_index, process_count)
  evals = {f'codes_{l}': arrays[f'eval_codes_{l}'] for l in range(n_levels)}
  evals['decoder_nll'] = arrays['eval_decoder_nll']
  return Splits(train, ArrayEvalSource(evals, config.eval.batch_size, process_index,
                                       process_count), info)
