"""One iterator interface for every data source.

A dataset builder returns `Splits(train, eval, info)`:

* `train.iterate(start_step)` yields this host's share of the global batch for
  global steps start_step, start_step + 1, ... forever. Batches are a pure
  function of (seed, step), so a resumed run sees exactly the data it would have
  seen (the checkpointed step *is* the data position).
* `iter(eval)` yields this host's share of fixed-size global batches covering the
  whole evaluation split once, the last one padded; `batch['valid']` (bool, per
  example) marks the real examples.
* `info`, a `DataInfo`, holds facts the models and metrics need (kind, shapes,
  training-pixel variance, ...).

Batches are dicts of numpy arrays whose leading axis is the (host-local) batch.
"""

import dataclasses
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

import ml_collections
import numpy as np


BUILDERS: Dict[str, Callable] = {}   # config.data.name -> builder


def data_config():
  """Every `config.data` field, with its default and meaning; configs/base.py starts
  from it, so any field can be overridden on any config (`--config.data.max_len=64`).
  A builder reads only the fields of its dataset."""
  d = ml_collections.ConfigDict()
  d.name = 'digits'           # a registered builder: vaes.data.dataset_names()
  d.eval_split = 'test'       # 'valid' while tuning, 'test' to report ('train': the
                              # training images, for the generalisation gap)
  d.eval_limit = 0            # > 0: evaluate on the first N examples of the evaluation
                              # split only (quick checks, tests/golden); 0 = all of it
  # Images.
  d.image_size = -1           # side after resizing; -1 = the dataset's own
  d.resize = ''               # 'pad' | 'nearest' (in memory), 'bilinear' | 'pad' (TFDS);
                              # '' = 'pad' in memory, 'bilinear' for TFDS
  d.binarize = 'none'         # 'none' | 'threshold' (x > 0.5) | 'dynamic' (x ~ Bernoulli(x),
                              # fresh each batch); no-op on data that is binary already
  d.source = 'local'          # binarized_mnist, mnist, fashion_mnist: 'local' (files) | 'tfds'
  # TensorFlow Datasets (mnist, cifar10, celeb_a, ...; binarized_mnist with source='tfds').
  d.tfds_data_dir = ''        # '' = the TFDS default (~/tensorflow_datasets)
  d.tfds_download = False     # let TFDS download a missing dataset
  d.train_split = 'train'
  d.valid_size = 0            # mnist, fashion_mnist, idx_images: the last N training images
                              # held out as the 'valid' split (0: train on all of them)
  d.crop_size = -1            # centre crop before resizing; -1 = the dataset's, 0 = none
  d.shuffle_buffer = 10_000
  # Sequences.
  d.max_len = 0               # cut pieces into at most this many frames; 0 = whole pieces
  d.transpose = 0             # music: training pieces moved by a random number of semitones
                              # in [-N, N] (kept on the keys), per batch; 0 = off
  d.path = ''                 # polyphonic_pickle: the pickle of MIDI pitches per frame;
                              # mnist, fashion_mnist, idx_images: the idx files' directory
  d.cache_dir = ''            # chorales: where the piano rolls are cached; '' = ~/.cache/vaes
  d.num_chorales = 0          # chorales: the first N only; 0 = all
  d.series_seed = 0           # synthetic_series: the generator's seed
  d.series_length = 64        # frames of the longest series
  d.series_min_length = 0     # frames of the shortest; 0 = series_length // 2
  d.series_dim = 3            # channels per frame
  d.series_noise = 0.1        # observation noise standard deviation
  d.num_train = 1000          # synthetic_series: sequences per split
  d.num_valid = 200
  d.num_test = 200
  # Codes of a trained first stage, for a prior (vaes/stages.py fills codes_path).
  d.vqvae_workdir = ''         # its workdir, or an export of it (python -m vaes.export)
  d.codes_path = ''
  return d


def register(*names):
  """Registers a builder(config, process_index, process_count) -> Splits."""
  def wrap(fn):
    for name in names:
      BUILDERS[name] = fn
    return fn
  return wrap


def dataset_names():
  return sorted(BUILDERS)


class DataError(ValueError):
  """Data that is missing or does not match what the config asks for."""


@dataclasses.dataclass(frozen=True, eq=False)   # eq=False: it holds arrays (frame statistics)
class DataInfo:
  """What a builder says about its dataset (`Splits.info`), every field declared once with
  its default; a builder sets the fields of its kind, the rest keep the default."""
  kind: str                                  # 'image' | 'sequence' | 'codes'
  shape: Tuple[int, ...] = ()                # one example: (H, W, C) or (T, P); () for codes
  num_train: int = 0                         # examples of the train split
  num_eval: int = 0                          # examples of the evaluation split
  steps_per_epoch: int = 0                   # train batches (global) per epoch; 0: unknown
  eval_split: Optional[str] = None           # 'valid' | 'test' | 'train'; None: fixed (digits)
  train_variance: Optional[float] = None     # pixel / value variance of the training data
  num_levels: int = 256                      # grey levels of the source; 2 = binary
  source: str = ''                           # where the data came from (a path, a corpus, a seed)
  # Images: binarized_mnist.
  binarization: str = ''                     # 'static' | 'dynamic' (re-sampled from grey)
  train_source: str = ''                     # dynamic: the grey training images' file
  # Sequences (vaes/data/music.py): frames are (T, P), padded to max_len with a mask.
  likelihood: str = ''                       # 'bernoulli' | 'gaussian'; '' = the data names none
  num_classes: int = 0                       # categorical: classes; 0 = config.model.num_classes
  max_len: int = 0                           # T, the padded length of the training split
  train_frames: int = 0                      # real (unpadded) frames of the train split
  eval_frames: int = 0                       # real frames of the evaluation split
  train_frame_count: int = 0                 # frame_statistics: frames summed over
  train_frame_sum: Optional[np.ndarray] = None   # (P,) sum of the training frames
  train_frame_var: Optional[np.ndarray] = None   # (P,) variance of the training frames
  num_chorales: int = 0                      # chorales: pieces read
  # Codes of a first stage (vaes/data/codes.py).
  grids: Tuple[Tuple[int, int], ...] = ()    # (h, w) of the code grid per level, bottom first
  num_codes: Tuple[int, ...] = ()            # codebook size per level
  image_shape: Tuple[int, ...] = ()          # (H, W, C) of the images the codes encode
  num_dims: int = 0                          # D = H * W * C
  vqvae_step: int = 0                        # the first stage's checkpoint step


@dataclasses.dataclass
class Splits:
  train: Any
  eval: Any
  info: DataInfo


def zeros_batch(element_spec, batch_size):
  """A batch of zeros of `element_spec` ({name: (shape, dtype)}): what shapes are
  traced with."""
  return {k: np.zeros((batch_size,) + tuple(shape), dtype)
          for k, (shape, dtype) in element_spec.items()}


EVAL_SPLITS = ('valid', 'test', 'train')


def eval_split_name(config):
  """config.data.eval_split of the datasets split train / valid / test: tune on 'valid',
  report on 'test'; 'train' scores the training examples (the generalisation gap is its
  difference from 'valid')."""
  split = config.data.eval_split
  if split not in EVAL_SPLITS:
    raise DataError(f"config.data.eval_split='{split}' is not one of {EVAL_SPLITS}: "
                    "use 'valid' while tuning and 'test' to report ('train' for the "
                    'generalisation gap).')
  return split


def check_batch_split(global_batch_size: int, process_count: int, name='batch_size'):
  if global_batch_size <= 0:
    raise DataError(f'config.{name}={global_batch_size}: must be a positive integer.')
  if global_batch_size % process_count:
    raise DataError(
        f'config.{name}={global_batch_size} is not divisible by the number of processes '
        f'({process_count}); choose a multiple of {process_count}.')
  return global_batch_size // process_count


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Whole global batches in one pass over `num_examples` (the remainder dropped). The
  one count of an epoch: with p processes each holding num_examples // p examples, a
  process's (num_examples // p) // (global_batch_size // p) batches are this number."""
  return num_examples // global_batch_size


class ArrayTrainSource:
  """Shuffled, drop-remainder batches over in-memory arrays; random access by step.

  Each epoch uses the permutation `default_rng([seed, epoch])`. The global batch
  for a step is cut into `process_count` equal contiguous parts, and this host
  takes part `process_index`, so N processes together see exactly the batch one
  process would.

  `transform(batch, np_rng)` (optional) is applied per batch with a generator
  seeded by (seed, step), e.g. dynamic binarisation.
  """

  def __init__(self, arrays: Mapping[str, np.ndarray], global_batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1,
               transform: Optional[Callable] = None):
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
      raise DataError(f'Arrays of a split must share their first dimension, got {sizes}.')
    self.num_examples = next(iter(sizes.values()))
    if self.num_examples == 0:
      raise DataError('The training split is empty.')
    self.local_batch_size = check_batch_split(global_batch_size, process_count)
    if global_batch_size > self.num_examples:
      raise DataError(
          f'config.batch_size={global_batch_size} exceeds the {self.num_examples} training '
          f'examples; choose at most {self.num_examples}.')
    self.arrays = dict(arrays)
    self.global_batch_size = global_batch_size
    self.seed = seed
    self.process_index = process_index
    self.transform = transform
    self.steps_per_epoch = steps_per_epoch(self.num_examples, global_batch_size)
    self._epoch_order = (None, None)     # (epoch, its permutation): see _permutation

  @property
  def element_spec(self):
    return {k: (v.shape[1:], v.dtype) for k, v in self.arrays.items()}

  def global_indices(self, step: int) -> np.ndarray:
    epoch, pos = divmod(step, self.steps_per_epoch)
    return self._permutation(epoch)[pos * self.global_batch_size:(pos + 1) * self.global_batch_size]

  def _permutation(self, epoch: int) -> np.ndarray:
    """The order of `epoch` (read-only), drawn once for the epoch's steps: drawn at every
    step, it took ~2 ms of a ~50 ms Ladder VAE step on the 2-core CPU (50,000 examples)."""
    if self._epoch_order[0] != epoch:
      order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
      order.flags.writeable = False
      self._epoch_order = (epoch, order)
    return self._epoch_order[1]

  def batch(self, step: int) -> dict:
    idx = self.global_indices(step)
    lo = self.process_index * self.local_batch_size
    idx = idx[lo:lo + self.local_batch_size]
    out = {k: v[idx] for k, v in self.arrays.items()}
    if self.transform is not None:
      rng = np.random.default_rng([self.seed, 1 << 20, step, self.process_index])
      out = self.transform(out, rng)
    return out

  def iterate(self, start_step: int = 0) -> Iterator[dict]:
    step = start_step
    while True:
      yield self.batch(step)
      step += 1


class ArrayEvalSource:
  """The whole evaluation split once, in order, in padded fixed-size batches."""

  def __init__(self, arrays: Mapping[str, np.ndarray], global_batch_size: int,
               process_index: int = 0, process_count: int = 1,
               transform: Optional[Callable] = None, seed: int = 0):
    self.arrays = dict(arrays)
    self.num_examples = len(next(iter(self.arrays.values())))
    if self.num_examples == 0:
      raise DataError('The evaluation split is empty.')
    self.local_batch_size = check_batch_split(global_batch_size, process_count,
                                              name='eval.batch_size')
    self.global_batch_size = global_batch_size
    self.process_index = process_index
    self.transform = transform
    self.seed = seed

  @property
  def element_spec(self):
    return {k: (v.shape[1:], v.dtype) for k, v in self.arrays.items()}

  def __len__(self):
    return -(-self.num_examples // self.global_batch_size)

  def __iter__(self):
    n, b = self.num_examples, self.global_batch_size
    for i, start in enumerate(range(0, n, b)):
      idx = np.arange(start, start + b)
      valid = idx < n
      idx = np.where(valid, idx, n - 1)  # pad by repeating the last example
      lo = self.process_index * self.local_batch_size
      sl = slice(lo, lo + self.local_batch_size)
      out = {k: v[idx[sl]] for k, v in self.arrays.items()}
      if self.transform is not None:
        out = self.transform(out, np.random.default_rng([self.seed, 1 << 21, i]))
      out['valid'] = valid[sl]
      yield out


def limit_eval(splits, limit):
  """`splits` with the evaluation split cut to its first `limit` examples
  (config.data.eval_limit; 0: all of it). Every eval source yields its first
  `num_examples` examples; `info` says how many (and, for sequences, their frames)."""
  if limit < 0:
    raise DataError(f'config.data.eval_limit={limit}: must be 0 (the whole evaluation split) '
                    'or a positive number of examples.')
  if not limit or limit >= splits.info.num_eval:
    return splits
  splits.eval.num_examples = limit
  masks = getattr(splits.eval, 'arrays', {}).get('mask')
  frames = int(np.sum(masks[:limit])) if masks is not None else splits.info.eval_frames
  return Splits(splits.train, splits.eval,
                dataclasses.replace(splits.info, num_eval=limit, eval_frames=frames))


def validate_batch(batch, element_spec, info, where='the first training batch'):
  """Checks a host batch against what the model was built for, with a clear message.

  Keys, per-example shapes and dtypes must match `element_spec`; floats must be
  finite; images must lie in [0, 1] ({0, 1} when info.num_levels == 2); masks
  must be 0/1. Raises DataError naming the array, what was found and what was expected.
  """
  missing = set(element_spec) - set(batch)
  if missing:
    raise DataError(f'{where} lacks {sorted(missing)}; the model expects keys '
                    f'{sorted(element_spec)}.')
  for key, (shape, dtype) in element_spec.items():
    x = np.asarray(batch[key])
    if tuple(x.shape[1:]) != tuple(shape):
      raise DataError(f'{where}: {key!r} has per-example shape {tuple(x.shape[1:])}, but the '
                      f'model was built for {tuple(shape)}; check config.data.* (image_size, '
                      'max_len, ...).')
    if np.dtype(x.dtype).kind != np.dtype(dtype).kind:
      raise DataError(f'{where}: {key!r} has dtype {x.dtype}, expected {np.dtype(dtype)}.')
    if x.size == 0:
      raise DataError(f'{where}: {key!r} is empty.')
    if x.dtype.kind == 'f':
      bad = ~np.isfinite(x)
      if bad.any():
        raise DataError(f'{where}: {key!r} holds {int(bad.sum())} NaN/inf values; clean the '
                        'data (the model cannot train on them).')
    if key == 'image':
      lo, hi = float(x.min()), float(x.max())
      if lo < 0.0 or hi > 1.0:
        raise DataError(f'{where}: image values span [{lo:g}, {hi:g}], expected [0, 1] '
                        '(divide 8-bit images by 255).')
      if info.num_levels == 2 and not np.all((x == 0) | (x == 1)):
        raise DataError(f'{where}: the dataset is declared binary but images hold values '
                        'other than 0 and 1; set config.data.binarize.')
    if key == 'mask' and not np.all((x == 0) | (x == 1)):
      raise DataError(f"{where}: 'mask' must hold only 0 and 1.")
