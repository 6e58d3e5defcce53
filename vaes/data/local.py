"""Benchmark sets that ship with the project as files in vaes/data/files/, read with numpy
and pickle: no download and no TensorFlow, so the table configs run on a fresh clone.

  binarized_mnist  The statically binarised MNIST of Larochelle & Murray (2011), the fixed
                   50,000 / 10,000 / 10,000 train / valid / test split (TFDS's
                   binarized_mnist). Batches {'image': float32 (B, 28, 28, 1) in {0, 1}},
                   info['num_levels'] == 2, as from the TFDS path; data.image_size, resize
                   and binarize act as for 'digits' (binarize is a no-op on these images).
                   config.data.source: 'local' (default) reads the bundled copy, 'tfds'
                   reads TFDS (vaes/data/tfds_data.py; its eval_split is a TFDS split,
                   'validation' or 'test').
  jsb_chorales     JSB Chorales on a quarter-note grid in the split of Boulanger-Lewandowski
                   et al. (2012), 229 / 76 / 77 chorales, read by the `polyphonic_pickle`
                   loader of vaes/data/music.py (batches {'x', 'mask'}; data.max_len as
                   there). Other pickles (Nottingham, ...) go through polyphonic_pickle with
                   data.path.

config.data.eval_split ('valid' | 'test', default 'test') picks the evaluation split: tune
on 'valid', report 'test'. Training always uses 'train'. Every load checks the file's
sha256 (a few milliseconds), so a damaged or replaced copy is an error, not a quiet number.
"""

import hashlib
import os

import numpy as np

from vaes.data.core import register
from vaes.data import music
from vaes.data import tfds_data
from vaes.data.core import DataError, eval_split_name
from vaes.data.images import array_image_splits

FILES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'files')
# name -> (file in FILES_DIR, sha256), as in the data README the files came with.
FILES = {
    'binarized_mnist': ('binarized_mnist.npz',
                        '7a049ae3a0d88e964af4b41bbdb14e4303595e1c5de65f8bd2455cdcebb3514b'),
    'jsb_chorales': ('jsb_chorales_quarter.pkl',
                     'be67b1e1d0ea22a0c64eb72db53a83dae65650a7b470ca09a34a1e43a3fb4405'),
}
MNIST_SOURCES = ('local', 'tfds')


def local_file(name):
  """The path of the bundled file of dataset `name`, after checking its sha256."""
  filename, expected = FILES[name]
  path = os.path.join(FILES_DIR, filename)
  restore = (f'restore it from the repository with `git checkout -- vaes/data/files/{filename}` '
             '(run in the repository root)')
  if not os.path.isfile(path):
    raise DataError(f"config.data.name='{name}' reads the bundled file {path}, which is "
                    f'missing; {restore}.')
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  if digest.hexdigest() != expected:
    raise DataError(f'{path} has sha256 {digest.hexdigest()}, expected {expected}: the file '
                    f'is damaged or not the one this code was tested on; {restore}.')
  return path


@register('binarized_mnist')
def binarized_mnist(config, process_index, process_count):
  source = config.data.source
  if source == 'tfds':
    return tfds_data.tfds_images(config, process_index, process_count)
  if source != 'local':
    raise DataError(f"config.data.source='{source}' is not one of {MNIST_SOURCES} "
                    "('local': the copy in vaes/data/files, 'tfds': TensorFlow Datasets).")
  eval_split = eval_split_name(config)
  path = local_file('binarized_mnist')
  with np.load(path) as f:
    x_train, x_eval = f['train'], f[eval_split]
  def images(rows):   # (N, 784) uint8 {0, 1}, row-major 28x28 -> float32 (N, 28, 28, 1)
    return rows.reshape(-1, 28, 28, 1).astype(np.float32)
  return array_image_splits(config, images(x_train), images(x_eval), 2, 28, process_index,
                            process_count, {'eval_split': eval_split, 'source': path})


@register('jsb_chorales')
def jsb_chorales(config, process_index, process_count):
  eval_split_name(config)   # fail on a bad eval_split before reading anything
  if config.data.path:
    raise DataError(f"config.data.path='{config.data.path}' is set, but "
                    "config.data.name='jsb_chorales' reads the bundled JSB copy; to read "
                    "your own pickle, set config.data.name='polyphonic_pickle' (or clear "
                    'config.data.path).')
  path = local_file('jsb_chorales')
  splits = music.load_polyphonic_pickle(path)
  return music.make_sequence_splits(config, splits, process_index, process_count, 'bernoulli',
                                    {'source': path})
