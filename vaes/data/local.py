"""Benchmark sets that ship with the project as files in vaes/data/files/, read with numpy
and pickle: no download and no TensorFlow, so the table configs run on a fresh clone.

  binarized_mnist  The statically binarised MNIST of Larochelle & Murray (2011), the fixed
                   50,000 / 10,000 / 10,000 train / valid / test split (TFDS's
                   binarized_mnist). Batches {'image': float32 (B, 28, 28, 1) in {0, 1}},
                   info.num_levels == 2, as from the TFDS path; data.image_size and
                   resize act as for 'digits'. config.data.source: 'local' (default) reads
                   the bundled copy, 'tfds' reads TFDS (vaes/data/tfds_data.py; its
                   eval_split is a TFDS split, 'validation' or 'test').
                   config.data.binarize: 'none' / 'threshold' (no-ops on these images)
                   train and evaluate on the file's one binarisation (info.binarization
                   'static'). 'dynamic' (source 'local' only) is the protocol of the Ladder
                   VAE paper and IWAE: each training batch is a fresh sample x ~
                   Bernoulli(grey / 255) of the grey MNIST sources (vaes/data/files/mnist/)
                   of the same 50,000 training images in the same order (a batch holds the
                   images the static protocol's batch holds, re-binarised), while the
                   evaluation split is still the file's own binary images, the ones the
                   static rows are scored on (info.binarization 'dynamic'). The grey
                   source of each binary image is in binarized_mnist_grey_index.npz, made
                   once by vaes/data/make_mnist_grey_index.py.
  jsb_chorales     JSB Chorales on a quarter-note grid in the split of Boulanger-Lewandowski
                   et al. (2012), 229 / 76 / 77 chorales, read by the `polyphonic_pickle`
                   loader of vaes/data/music.py (batches {'x', 'mask'}; data.max_len as
                   there). Other pickles (Nottingham, ...) go through polyphonic_pickle with
                   data.path.

config.data.eval_split ('valid' | 'test' | 'train', default 'test') picks the evaluation
split: tune on 'valid', report 'test', and 'train' for the generalisation gap (the binarised
MNIST file's own train images, under either protocol). Training uses 'train';
binarized_mnist also takes config.data.train_split='train+valid', all 60,000 images (the
Ladder VAE authors' training set), which leaves no held-out split to select on
(eval_split='valid' is refused). Every load checks the file's sha256 (a few milliseconds),
so a damaged or replaced copy is an error, not a quiet number.
"""

import hashlib
import os

import numpy as np

from vaes.data.core import register
from vaes.data import music
from vaes.data import tfds_data
from vaes.data.core import (ArrayEvalSource, ArrayTrainSource, DataError, DataInfo, Splits,
                            eval_split_name)
from vaes.data.idx import read_idx
from vaes.data.images import array_image_splits, resize_images

FILES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'files')
# Of the file vaes/data/make_mnist_grey_index.py wrote (it prints it).
GREY_INDEX_SHA256 = 'ec8cfcf8721e4c320ad66ad56c6e5abe4bee574a3f8f837b8b28af6c44d90d8e'
# name -> (file in FILES_DIR, sha256), as in the data README the files came with.
FILES = {
    'binarized_mnist': ('binarized_mnist.npz',
                        '7a049ae3a0d88e964af4b41bbdb14e4303595e1c5de65f8bd2455cdcebb3514b'),
    'jsb_chorales': ('jsb_chorales_quarter.pkl',
                     'be67b1e1d0ea22a0c64eb72db53a83dae65650a7b470ca09a34a1e43a3fb4405'),
    # Grey MNIST (LeCun et al.), the idx files as gzip -9 -n; sha256 of the .gz files
    # (the decompressed bytes are the canonical files, checked in tests/test_data_mnist.py).
    'mnist_train_images': ('mnist/train-images-idx3-ubyte.gz',
                           '0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971'),
    'mnist_train_labels': ('mnist/train-labels-idx1-ubyte.gz',
                           '1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203'),
    'mnist_test_images': ('mnist/t10k-images-idx3-ubyte.gz',
                          '1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be'),
    'mnist_test_labels': ('mnist/t10k-labels-idx1-ubyte.gz',
                          'b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b'),
    # int32 train / valid / test: the index of each binarized_mnist image's grey source among
    # the 60,000 grey training images (train, valid) or the 10,000 test images (test).
    'binarized_mnist_grey_index': ('binarized_mnist_grey_index.npz', GREY_INDEX_SHA256),
}
MNIST_SOURCES = ('local', 'tfds')
DYNAMIC = "config.data.binarize='dynamic' on config.data.name='binarized_mnist'"
DYNAMIC_TAG = 1 << 22   # in the seed of the dynamic binarisation: [seed, DYNAMIC_TAG, step]


def local_file(name, what=None):
  """The path of the bundled file `name` of FILES, after checking its sha256. `what`
  names what reads it in the error message (default: config.data.name='<name>')."""
  filename, expected = FILES[name]
  path = os.path.join(FILES_DIR, filename)
  restore = restore_hint(filename)
  if not os.path.isfile(path):
    what = what or f"config.data.name='{name}'"
    raise DataError(f'{what} reads the bundled file {path}, which is missing; {restore}.')
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  if digest.hexdigest() != expected:
    raise DataError(f'{path} has sha256 {digest.hexdigest()}, expected {expected}: the file '
                    f'is damaged or not the one this code was tested on; {restore}.')
  return path


def restore_hint(filename):
  return (f'restore it from the repository with `git checkout -- vaes/data/files/{filename}` '
          '(run in the repository root)')


def mnist_grey(split, what=None):
  """The bundled grey MNIST `split` ('train' | 'test'), sha256-checked: images uint8
  (N, 28, 28) in 0..255 and labels uint8 (N,)."""
  out = []
  for part in ('images', 'labels'):
    name = f'mnist_{split}_{part}'
    out.append(read_idx(local_file(name, what), fix=restore_hint(FILES[name][0])))
  return tuple(out)


class BernoulliGreyTrainSource(ArrayTrainSource):
  """ArrayTrainSource over uint8 grey images whose batches are binary samples x ~
  Bernoulli(grey / 255), float32 in {0, 1}. The uniforms of a step are drawn for the whole
  global batch from default_rng([seed, DYNAMIC_TAG, step]) and each process keeps its rows,
  so a batch is a pure function of (seed, step, position in the global batch): a resumed
  run sees the same bits, and N processes together see the batch one process would."""

  def __init__(self, grey, global_batch_size, seed, process_index=0, process_count=1):
    super().__init__({'image': grey}, global_batch_size, seed, process_index, process_count)

  @property
  def element_spec(self):
    return {'image': (self.arrays['image'].shape[1:], np.dtype(np.float32))}

  def batch(self, step: int) -> dict:
    idx = self.global_indices(step)
    grey = self.arrays['image']
    u = np.random.default_rng([self.seed, DYNAMIC_TAG, step]).random(
        (len(idx),) + grey.shape[1:], dtype=np.float32)
    rows = slice(self.process_index * self.local_batch_size,
                 (self.process_index + 1) * self.local_batch_size)
    p = grey[idx[rows]].astype(np.float32) / 255.0   # 0 -> never 1, 255 -> always 1
    return {'image': (u[rows] < p).astype(np.float32)}


@register('binarized_mnist')
def binarized_mnist(config, process_index, process_count):
  source = config.data.source
  dynamic = config.data.binarize == 'dynamic'
  if source == 'tfds':
    if dynamic:
      raise DataError(f"{DYNAMIC} needs config.data.source='local': TFDS's binarized_mnist "
                      "holds binary images only, no grey levels to re-sample (or use "
                      "config.data.name='mnist', TFDS's grey MNIST and its own 60,000 / "
                      '10,000 split).')
    return tfds_data.tfds_images(config, process_index, process_count)
  if source != 'local':
    raise DataError(f"config.data.source='{source}' is not one of {MNIST_SOURCES} "
                    "('local': the copy in vaes/data/files, 'tfds': TensorFlow Datasets).")
  eval_split = eval_split_name(config)
  train_splits = mnist_train_splits(config, eval_split)
  path = local_file('binarized_mnist')
  def images(rows):   # (N, 784) uint8 {0, 1}, row-major 28x28 -> float32 (N, 28, 28, 1)
    return rows.reshape(-1, 28, 28, 1).astype(np.float32)
  with np.load(path) as f:   # dynamic: the training images come from the grey files
    x_eval = f[eval_split]
    x_train = None if dynamic else np.concatenate([f[k] for k in train_splits])
  if dynamic:
    return dynamic_binarized_mnist(config, images(x_eval), eval_split, train_splits, path,
                                   process_index, process_count)
  return array_image_splits(config, images(x_train), images(x_eval), 2, 28, process_index,
                            process_count, {'eval_split': eval_split, 'source': path,
                                            'binarization': 'static'})


def mnist_train_splits(config, eval_split):
  """The static file's splits that config.data.train_split trains on: ('train',), or
  ('train', 'valid') for 'train+valid'."""
  train_split = config.data.train_split
  if train_split not in ('train', 'train+valid'):
    raise DataError(f"config.data.train_split='{train_split}' is not one of ('train', "
                    "'train+valid') for config.data.name='binarized_mnist' (source 'local').")
  if train_split == 'train+valid' and eval_split == 'valid':
    raise DataError("config.data.train_split='train+valid' trains on the 'valid' images: "
                    "evaluate on 'test' and select no checkpoint on valid "
                    "(config.eval.select_metric='').")
  return tuple(train_split.split('+'))


def dynamic_binarized_mnist(config, x_eval, eval_split, train_splits, path, process_index,
                            process_count):
  """Splits of the dynamic protocol: training batches re-sampled from the grey sources of
  the static `train_splits` ('train', then 'valid' if named), in their order; `x_eval`, the
  static binary eval images, as they are."""
  index_path = local_file('binarized_mnist_grey_index', DYNAMIC)
  with np.load(index_path) as f:
    train_index = np.concatenate([f[k] for k in train_splits])
  grey, _ = mnist_grey('train', DYNAMIC)
  grey = grey[train_index][..., None]    # uint8 (50000 or 60000, 28, 28, 1), in static order
  size = 28 if config.data.image_size == -1 else config.data.image_size
  mode = config.data.resize or 'pad'
  grey, x_eval = resize_images(grey, size, mode), resize_images(x_eval, size, mode)
  # The pixel variance of what the model trains on: over images, pixels and draws a pixel
  # is Bernoulli(m) with m = mean(grey / 255) (E[p(1 - p)] + Var(p) = m(1 - m)), which is
  # what np.var of a large set of samples gives (the static rows: np.var of their one sample).
  m = float(grey.mean(dtype=np.float64)) / 255.0
  train = BernoulliGreyTrainSource(grey, config.batch_size, config.seed, process_index,
                                   process_count)
  evals = ArrayEvalSource({'image': x_eval}, config.eval.batch_size, process_index,
                          process_count)
  info = DataInfo(
      kind='image',
      shape=grey.shape[1:],
      num_levels=2,
      train_variance=m * (1.0 - m),
      num_train=len(grey),
      num_eval=len(x_eval),
      steps_per_epoch=train.steps_per_epoch,
      eval_split=eval_split,
      source=path,   # the eval images: the file's own binarisation of `eval_split`
      train_source=os.path.join(FILES_DIR, FILES['mnist_train_images'][0]),
      binarization='dynamic',
  )
  return Splits(train, evals, info)


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
