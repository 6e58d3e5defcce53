"""The 'vq_codes' dataset: code indices of a trained VQ-VAE (or VQ-VAE-2), the data
of the second training stage, a learned prior over codes.

The codes are extracted from the first stage and cached by `vaes.stages.prepare_codes`
(the vq_prior family's `prepare`, run by the engine before the data is read), which
sets `config.data.codes_path`; this source only reads that file. Batches:
  train: {'codes_0': (B, h_0, w_0) int32, ..., 'codes_{L-1}': ...}  (level 0 = bottom)
  eval:  the same plus 'decoder_nll': -log p(x | z_q(x)) in nats per image,
         summed over the D dimensions (NaN without a discrete decoder likelihood).
`info` holds the grids, codebook sizes, the image shape and D.
"""

import json

import numpy as np

from vaes import fs

from vaes.data.core import register
from vaes.data.core import ArrayEvalSource, ArrayTrainSource, DataError, DataInfo, Splits

IN_MEMORY = {}   # path -> arrays, for processes other than 0 (see vaes.stages)


def read_codes(path):
  if path in IN_MEMORY:
    return dict(IN_MEMORY[path])
  if not path or not fs.exists(path):
    raise DataError(f"config.data.codes_path='{path}' is not a codes file: the codes of the "
                    'first stage are extracted before training by the vq_prior family; set '
                    'config.data.vqvae_workdir to the trained VQ-VAE and run train.py/eval.py.')
  with fs.open(path, 'rb') as f, np.load(f) as arrays:
    return {k: arrays[k] for k in arrays.files}


@register('vq_codes')
def vq_codes(config, process_index, process_count):
  arrays = read_codes(config.data.codes_path)
  meta = json.loads(str(arrays.pop('info_json')))
  n_levels = len(meta['grids'])
  train = ArrayTrainSource({f'codes_{l}': arrays[f'train_codes_{l}'] for l in range(n_levels)},
                           config.batch_size, config.seed, process_index, process_count)
  info = DataInfo(
      kind='codes',
      grids=tuple(tuple(g) for g in meta['grids']),
      num_codes=tuple(meta['num_codes']),
      image_shape=tuple(meta['image_shape']),
      num_dims=int(np.prod(meta['image_shape'])),
      num_train=len(arrays['train_codes_0']),
      num_eval=len(arrays['eval_codes_0']),
      steps_per_epoch=train.steps_per_epoch,
      vqvae_step=meta['vqvae_step'],
  )
  evals = {f'codes_{l}': arrays[f'eval_codes_{l}'] for l in range(n_levels)}
  evals['decoder_nll'] = arrays['eval_decoder_nll']
  return Splits(train, ArrayEvalSource(evals, config.eval.batch_size, process_index,
                                       process_count), info)
