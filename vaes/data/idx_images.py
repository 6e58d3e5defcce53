"""Grey image sets in the idx format: MNIST, Fashion-MNIST, and a user's own idx files.

  mnist          LeCun et al.'s grey MNIST, 60,000 / 10,000 28x28 images in 256 levels:
                 the copy bundled in vaes/data/files/mnist/, or config.data.path.
  fashion_mnist  Zalando's Fashion-MNIST (Xiao et al. 2017), same sizes and file names:
                 config.data.path, else the first of FASHION_MNIST_DIRS that holds the files
                 (Debian's `dataset-fashion-mnist`, Keras's cache, the torchvision root of
                 vector-quantize-pytorch's examples). Not shipped (30 MB): a missing copy
                 is one line naming how to get it.
  idx_images     any directory config.data.path holding train-images-idx3-ubyte[.gz] and
                 t10k-images-idx3-ubyte[.gz], uint8 (N, H, W) or (N, H, W, C).

Batches are {'image': float32 (B, H, W, C) in [0, 1]}, as for 'digits'; data.image_size,
resize and binarize act as there (vaes/data/images.py). config.data.valid_size = N > 0
holds the last N training images out (the training set is the rest, whatever split is
evaluated); config.data.eval_split 'valid' evaluates on them (to tune; it needs N > 0),
'test' on the 10,000 test images (to report). The training data is chosen by valid_size,
a training field, never by eval_split (an evaluation-only field, vaes/run_config.py).
config.data.source='tfds' reads TFDS's mnist / fashion_mnist instead
(vaes/data/tfds_data.py). Known files are checked against the sha256 of their
decompressed bytes, so a damaged copy is an error, not a quiet number; a damaged bundled
MNIST file names the command that restores it (vaes/data/local.py `restore_hint`).
"""

import os

import numpy as np

from vaes.data import local
from vaes.data import tfds_data
from vaes.data.core import DataError, eval_split_name, register
from vaes.data.idx import read_idx
from vaes.data.images import array_image_splits

TRAIN_IMAGES = 'train-images-idx3-ubyte'
TEST_IMAGES = 't10k-images-idx3-ubyte'
BUNDLED_MNIST = os.path.join(local.FILES_DIR, 'mnist')   # the bundled grey MNIST
# Where the ecosystem puts Fashion-MNIST's idx files, searched in this order.
FASHION_MNIST_DIRS = (
    '/usr/share/datasets/fashion-mnist',                 # Debian: apt install dataset-fashion-mnist
    '~/.keras/datasets/fashion-mnist',                    # keras.datasets.fashion_mnist.load_data()
    '~/data/fashion_mnist/FashionMNIST/raw',              # torchvision (vector-quantize-pytorch)
)
FASHION_MNIST_FIX = (
    'install it with `apt install dataset-fashion-mnist` (Debian, Ubuntu), or download '
    'train-images-idx3-ubyte.gz and t10k-images-idx3-ubyte.gz from '
    'https://github.com/zalandoresearch/fashion-mnist/tree/master/data/fashion and pass '
    '--config.data.path=DIR, or read TFDS with --config.data.source=tfds')
# sha256 of the decompressed idx files (the canonical bytes, whatever the compression).
SHA256 = {
    'mnist': {
        TRAIN_IMAGES: 'ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db',
        TEST_IMAGES: '0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7'},
    'fashion_mnist': {
        TRAIN_IMAGES: 'c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888',
        TEST_IMAGES: '5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b'},
}
SOURCES = ('local', 'tfds')


def idx_file(directory, stem):
  """`directory`/`stem`.gz or `directory`/`stem`, whichever exists (None if neither)."""
  for name in (stem + '.gz', stem):
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      return path
  return None


def find_directory(name, path):
  """The directory to read `name`'s idx files from: config.data.path when set, else the
  bundled MNIST or the first Fashion-MNIST directory that holds both image files."""
  if path:
    return os.path.expanduser(path)
  if name == 'mnist':
    return BUNDLED_MNIST
  if name == 'fashion_mnist':
    for d in map(os.path.expanduser, FASHION_MNIST_DIRS):
      if idx_file(d, TRAIN_IMAGES) and idx_file(d, TEST_IMAGES):
        return d
    raise DataError(f"config.data.name='fashion_mnist': no copy of Fashion-MNIST in "
                    f"{', '.join(FASHION_MNIST_DIRS)}; {FASHION_MNIST_FIX}.")
  raise DataError(f"config.data.name='{name}' reads the idx files of config.data.path, which "
                  f'is empty; pass --config.data.path=DIR, DIR holding {TRAIN_IMAGES}[.gz] '
                  f'and {TEST_IMAGES}[.gz].')


def read_images(name, directory, stem):
  """uint8 (N, H, W, C) images of `directory`/`stem`[.gz], checked against SHA256."""
  path = idx_file(directory, stem)
  if directory == BUNDLED_MNIST:
    fix = local.restore_hint(f'mnist/{os.path.basename(path or stem + ".gz")}')
  else:
    fix = FASHION_MNIST_FIX if name == 'fashion_mnist' else 'check config.data.path'
  if path is None:
    raise DataError(f"config.data.name='{name}': {directory} holds no {stem}.gz or {stem}; "
                    f'{fix}.')
  images = read_idx(path, fix, sha256=SHA256.get(name, {}).get(stem))
  if images.dtype != np.uint8 or images.ndim not in (3, 4):
    raise DataError(f'{path}: expected uint8 images (N, H, W) or (N, H, W, C), got '
                    f'{images.dtype.name} {images.shape}.')
  return images if images.ndim == 4 else images[..., None]


@register('mnist', 'fashion_mnist', 'idx_images')
def idx_images(config, process_index, process_count):
  name, source = config.data.name, config.data.source
  if source == 'tfds' and name != 'idx_images':
    return tfds_data.tfds_images(config, process_index, process_count)
  if source != 'local':
    raise DataError(f"config.data.source='{source}' is not one of {SOURCES} for "
                    f"config.data.name='{name}' ('local': idx files, 'tfds': TensorFlow "
                    'Datasets; idx_images reads idx files only).')
  eval_split = eval_split_name(config)
  valid_size = int(config.data.valid_size)
  if eval_split == 'valid' and valid_size <= 0:
    raise DataError(f"config.data.eval_split='valid' on config.data.name='{name}' needs "
                    'held-out training images: set config.data.valid_size (e.g. 10000).')
  directory = find_directory(name, config.data.path)
  train = read_images(name, directory, TRAIN_IMAGES)
  if valid_size:
    if not 0 < valid_size < len(train):
      raise DataError(f'config.data.valid_size={valid_size}: must be in 1..{len(train) - 1} '
                      f'(the {len(train)} training images of {directory}), or 0.')
    train, valid = train[:-valid_size], train[-valid_size:]
  if eval_split == 'test':
    evals = read_images(name, directory, TEST_IMAGES)
  else:
    evals = valid if eval_split == 'valid' else train
  if train.shape[1:] != evals.shape[1:]:
    raise DataError(f'{directory}: training images are {train.shape[1:]}, test images '
                    f'{evals.shape[1:]}; both splits must share one shape.')
  return array_image_splits(
      config, train.astype(np.float32) / 255, evals.astype(np.float32) / 255, 256,
      train.shape[1], process_index, process_count,
      {'eval_split': eval_split, 'source': directory})
