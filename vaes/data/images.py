"""Image datasets: the embedded scikit-learn digits, and shared image transforms.

Batches are {'image': float32 (B, H, W, C) in [0, 1]}. Binarised datasets hold
{0, 1}. `info.num_levels` is the number of grey levels of the source (17 for
digits, 256 for 8-bit images, 2 for binary ones).
"""

import numpy as np

from vaes.data.core import register
from vaes.data.core import ArrayEvalSource, ArrayTrainSource, DataError, DataInfo, Splits

DIGITS_TEST_SIZE = 297  # fixed split: 1500 train / 297 test, by a permutation with seed 0


def resize_images(images: np.ndarray, size: int, mode: str) -> np.ndarray:
  """(N, h, w, C) -> (N, size, size, C) by 'pad' (zeros, centred) or 'nearest' upsampling."""
  n, h, w, c = images.shape
  if mode not in ('pad', 'nearest'):
    raise DataError(f"config.data.resize='{mode}' is not one of 'pad', 'nearest'.")
  if size == h and size == w:
    return images
  if mode == 'pad':
    if size < h or size < w:
      raise DataError(f'config.data.image_size={size} is smaller than the images ({h}x{w}); '
                      "use resize='nearest' with a multiple of the size, or a larger size.")
    top, left = (size - h) // 2, (size - w) // 2
    out = np.zeros((n, size, size, c), images.dtype)
    out[:, top:top + h, left:left + w] = images
    return out
  if mode == 'nearest':
    if size % h or size % w:
      raise DataError(f"config.data.image_size={size} must be a multiple of {h} for "
                      "resize='nearest'.")
  return images.repeat(size // h, axis=1).repeat(size // w, axis=2)


def binarize(mode: str):
  """None, 'threshold' (x > 0.5) or 'dynamic' (x ~ Bernoulli(pixel), fresh each batch)."""
  if mode in (None, '', 'none'):
    return None, lambda x: x
  if mode == 'threshold':
    return None, lambda x: (x > 0.5).astype(np.float32)
  if mode == 'dynamic':
    def transform(batch, rng):
      batch = dict(batch)
      batch['image'] = (rng.random(batch['image'].shape) < batch['image']).astype(np.float32)
      return batch
    return transform, lambda x: x
  raise DataError(f"config.data.binarize='{mode}' is not one of 'none', 'threshold', 'dynamic'.")


def load_digits_arrays():
  """The 1,797 8x8 digits of scikit-learn as float32 (N, 8, 8, 1) in [0, 1], labels."""
  from sklearn.datasets import load_digits
  d = load_digits()
  images = (d.images.astype(np.float32) / 16.0)[..., None]
  perm = np.random.default_rng(0).permutation(len(images))
  test, train = perm[:DIGITS_TEST_SIZE], perm[DIGITS_TEST_SIZE:]
  return (images[train], d.target[train]), (images[test], d.target[test])


def array_image_splits(config, x_train, x_eval, num_levels, default_size, process_index,
                       process_count, extra_info=None):
  """In-memory float32 (N, H, W, C) images in [0, 1] -> Splits, after config.data.image_size
  (default `default_size`), resize ('pad' | 'nearest') and binarize. `num_levels` is the
  source's number of grey levels (2 once binarised)."""
  size = default_size if config.data.image_size == -1 else config.data.image_size
  mode = config.data.resize or 'pad'
  x_train, x_eval = resize_images(x_train, size, mode), resize_images(x_eval, size, mode)
  train_transform, static = binarize(config.data.binarize)
  x_train, x_eval = static(x_train), static(x_eval)
  # Dynamic binarisation of the eval set is drawn once, with a fixed seed.
  eval_transform = train_transform
  binary = config.data.binarize not in (None, '', 'none')
  train = ArrayTrainSource({'image': x_train}, config.batch_size, config.seed,
                           process_index, process_count, transform=train_transform)
  evals = ArrayEvalSource({'image': x_eval}, config.eval.batch_size, process_index,
                          process_count, transform=eval_transform, seed=1234)
  info = DataInfo(
      kind='image',
      shape=x_train.shape[1:],
      num_levels=2 if binary else num_levels,
      train_variance=float(np.var(x_train)),
      num_train=len(x_train),
      num_eval=len(x_eval),
      steps_per_epoch=train.steps_per_epoch,
      **(extra_info or {}),
  )
  return Splits(train, evals, info)


@register('digits')
def digits(config, process_index, process_count):
  (x_train, _), (x_test, _) = load_digits_arrays()
  return array_image_splits(config, x_train, x_test, 17, 8, process_index, process_count)
