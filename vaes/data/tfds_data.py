"""TFDS image datasets behind the one iterator interface of `vaes.data.core`.

Names: mnist, fashion_mnist, binarized_mnist (with config.data.source='tfds'; by
default vaes/data/idx_images.py and vaes/data/local.py read their idx / npz files),
cifar10, svhn_cropped, omniglot, celeb_a. Batches are {'image': float32 (B, H, W, C) in
[0, 1]}, as for 'digits'.

Config (`config.data.*`, all optional except `name`):
  tfds_data_dir   '' = the TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR).
  tfds_download   False (default): never download at train time; missing data is
                  a DataError naming the command that prepares it. True: call
                  `download_and_prepare` (needs network; on several hosts, prepare
                  the data beforehand instead).
  train_split, eval_split   TFDS split specs ('train', 'test', 'train[:90%]', ...).
  image_size      output side; default the native one (28, 32), omniglot 28,
                  celeb_a 64.
  resize          'bilinear' (antialiased, default), 'nearest', 'pad' (centred zeros).
  crop_size       centre crop before resizing; default 148 for celeb_a (218x178),
                  0 = none elsewhere.
  binarize        'none' | 'threshold' | 'dynamic', as in `vaes.data.images`.
  shuffle_buffer  10_000 encoded examples.

Preprocessing: uint8 / 255 (binarized_mnist is stored as {0, 1} and stays binary),
omniglot to grey with inverted colours so strokes are 1 and the background 0
(105x105 -> 28x28, as in the LVAE and IWAE experiments), celeb_a centre crop then
resize.

Train. Host `process_index` of `process_count` reads its own part of the train
split, `tfds.even_splits(split, process_count)[process_index]` (parts differ by at
most one example), so the global batch is the concatenation of the hosts'
disjoint batches. Epoch e of a host is a fresh pipeline: file order and a
`shuffle_buffer` shuffle seeded by (config.seed, e, process_index), the first
`steps_per_epoch * local_batch_size` examples, decode + preprocess, batch with
drop_remainder. `steps_per_epoch(num_train, batch_size)` (vaes/data/core.py) is the
same on every host. Dynamic binarisation draws from
`default_rng([seed, 2**20, step, process_index])`, as `ArrayTrainSource` does. So
a batch is a function of (seed, step, process_index, process_count, batch size).

Resume. `iterate(start_step)` starts at epoch `start_step // steps_per_epoch` and
skips `start_step % steps_per_epoch` batches of it. The skip happens on the
encoded records, before decoding: it costs reading (not decoding) at most one
epoch of this host's examples, whatever `start_step` is. Epochs are chained in
Python, so each epoch boundary refills the shuffle buffer once.

Eval. The eval split is read in stored order (one file after another), cut into
global batches of `config.eval.batch_size`, the last one padded by repeating the
split's last example (the rule of `ArrayEvalSource`); host p takes positions
[p * local, (p + 1) * local) of every global batch, with `valid` marking the real
examples. Every host reads the encoded split once per pass and decodes only its
own examples.

info.train_variance is the pixel variance of the first 10,000 examples (in
stored order; fewer if the split is smaller) of the whole train split after the
same static preprocessing (resize, crop, threshold), identical on every host.
Dynamic binarisation is not applied to it, as for 'digits'.

TensorFlow and tensorflow_datasets are imported only inside the functions that
read data, so importing `vaes.data` never loads TensorFlow.
"""

import dataclasses
import math
import re
from typing import Optional, Tuple

import numpy as np

from vaes.data.core import register
from vaes.data.core import DataError, DataInfo, Splits, check_batch_split, steps_per_epoch
from vaes.data.images import binarize as make_binarize

VARIANCE_EXAMPLES = 10_000
RESIZE_MODES = ('bilinear', 'nearest', 'pad')


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  splits: Tuple[str, ...]
  native_shape: Tuple[int, int, int]  # of the stored 'image' feature
  image_size: int                     # default output side
  binary: bool = False                # stored as {0, 1}
  grey_inverted: bool = False         # to one channel, strokes = 1
  crop_size: int = 0                  # default centre crop, 0 = none
  note: str = ''


SPECS = {
    'mnist': DatasetSpec(('train', 'test'), (28, 28, 1), 28),
    'fashion_mnist': DatasetSpec(('train', 'test'), (28, 28, 1), 28),
    'binarized_mnist': DatasetSpec(('train', 'validation', 'test'), (28, 28, 1), 28,
                                   binary=True),
    'cifar10': DatasetSpec(('train', 'test'), (32, 32, 3), 32),
    'svhn_cropped': DatasetSpec(('train', 'test', 'extra'), (32, 32, 3), 32),
    'omniglot': DatasetSpec(('train', 'test', 'small1', 'small2'), (105, 105, 3), 28,
                            grey_inverted=True),
    'celeb_a': DatasetSpec(('train', 'validation', 'test'), (218, 178, 3), 64, crop_size=148,
                           note='celeb_a downloads from Google Drive, which rate-limits; '
                                'if the build fails with a quota error, retry later.'),
}


# ---------------------------------------------------------------------------
# Config

@dataclasses.dataclass(frozen=True)
class Options:
  name: str
  data_dir: Optional[str]
  download: bool
  train_split: str
  eval_split: str
  image_size: int
  resize: str
  crop_size: int
  binarize: str
  shuffle_buffer: int
  seed: int
  batch_size: int
  eval_batch_size: int

  @property
  def shape(self):
    channels = 1 if SPECS[self.name].grey_inverted else SPECS[self.name].native_shape[2]
    return (self.image_size, self.image_size, channels)


_SPLIT_PART = re.compile(r'^(?P<name>[\w-]+)(\[[\d\w%:.-]*\])?$')


def _check_split(field, value, name, allowed):
  if not isinstance(value, str) or not value.strip():
    raise DataError(f'config.data.{field}={value!r} must be a TFDS split of {name}: one of '
                    f'{list(allowed)}, optionally sliced and joined with +, e.g. '
                    f"'{allowed[0]}[:90%]'.")
  for part in re.split(r'\s*\+\s*', value.strip()):
    m = _SPLIT_PART.match(part)
    if not m or m.group('name') not in allowed:
      raise DataError(f'config.data.{field}={value!r}: {part!r} is not a split of {name}; '
                      f'choose from {list(allowed)}, optionally sliced and joined with +, '
                      f"e.g. '{allowed[0]}[:90%]'.")
  import tensorflow_datasets as tfds  # parses slices; does not load TensorFlow
  try:
    tfds.core.ReadInstruction.from_spec(value.strip())
  except ValueError as e:
    raise DataError(f'config.data.{field}={value!r} is not a valid split spec: {e}') from e
  return value.strip()


def _check_int(field, value, lo, hi=None, what=''):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo or (
      hi is not None and value > hi):
    bound = f'an integer in [{lo}, {hi}]' if hi is not None else f'an integer >= {lo}'
    raise DataError(f'config.{field}={value!r}: must be {bound}{what}.')
  return int(value)


def read_options(config) -> Options:
  """Every config value this module uses, validated before TensorFlow is touched."""
  data = config.data
  name = data.name
  spec = SPECS[name]
  data_dir = data.tfds_data_dir or ''
  if not isinstance(data_dir, str):
    raise DataError(f'config.data.tfds_data_dir={data_dir!r} must be a path string '
                    "('' = the TFDS default).")
  image_size = _check_int('data.image_size',
                          spec.image_size if data.image_size == -1 else data.image_size, 1)
  resize = data.resize or 'bilinear'
  if resize not in RESIZE_MODES:
    raise DataError(f'config.data.resize={resize!r} is not one of {list(RESIZE_MODES)} '
                    f'(for {name}).')
  h, w, _ = spec.native_shape
  crop_size = _check_int('data.crop_size',
                         spec.crop_size if data.crop_size == -1 else data.crop_size, 0, min(h, w),
                         what=f' ({name} images are {h}x{w}; 0 = no crop)')
  if resize == 'pad':
    ch, cw = (crop_size, crop_size) if crop_size else (h, w)
    if image_size < max(ch, cw):
      raise DataError(f"config.data.image_size={image_size} is smaller than the {ch}x{cw} "
                      f"{name} images, which resize='pad' cannot do; use at least "
                      f"{max(ch, cw)} or resize='bilinear'.")
  binarize = data.binarize
  make_binarize(binarize)  # validates
  return Options(
      name=name,
      data_dir=data_dir or None,
      download=bool(data.tfds_download),
      train_split=_check_split('train_split', data.train_split, name,
                               spec.splits),
      eval_split=_check_split('eval_split', data.eval_split, name, spec.splits),
      image_size=image_size,
      resize=resize,
      crop_size=crop_size,
      binarize=binarize,
      shuffle_buffer=_check_int('data.shuffle_buffer', data.shuffle_buffer, 1),
      seed=int(config.seed),
      batch_size=config.batch_size,
      eval_batch_size=config.eval.batch_size,
  )


# ---------------------------------------------------------------------------
# TensorFlow, lazily

def _tf():
  try:
    import tensorflow as tf
  except ImportError as e:
    raise DataError('The TFDS datasets need TensorFlow and tensorflow-datasets: '
                    'pip install tensorflow-cpu tensorflow-datasets') from e
  try:  # TF only feeds the host; keep it off any GPU that JAX uses.
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:
    pass  # already initialised, e.g. by an earlier builder call
  return tf


def _tfds():
  _tf()
  import tensorflow_datasets as tfds
  return tfds


def prepare_command(name, data_dir):
  return f'tfds build {name} --data_dir={data_dir}'


def missing_data_error(name, data_dir_root, configured, cause=''):
  spec = SPECS.get(name)
  note = f'\n{spec.note}' if spec is not None and spec.note else ''
  cause = f' ({cause})' if cause else ''
  return DataError(
      f"TFDS dataset '{name}' is not prepared in {data_dir_root} "
      f'(config.data.tfds_data_dir={configured!r}){cause}, and this run does not download '
      '(config.data.tfds_download is False).\n'
      'On a machine with network access, prepare it with\n'
      f'    {prepare_command(name, data_dir_root)}\n'
      f'or: python -m tensorflow_datasets.scripts.download_and_prepare --datasets={name} '
      f'--data_dir={data_dir_root}\n'
      f'then copy the folder {data_dir_root}/{name} (it holds the version directory) into the '
      f'same data dir here, e.g.\n'
      f'    rsync -a {data_dir_root}/{name} THIS_HOST:{data_dir_root}/\n'
      'and point config.data.tfds_data_dir at that directory. Alternatively set '
      'config.data.tfds_download = True in the config on a machine with network.' + note)


class Reader:
  """Opens splits of one TFDS builder as encoded images, and decodes/preprocesses them."""

  def __init__(self, opts: Options):
    self.opts = opts
    tfds = _tfds()
    self.builder = tfds.builder(opts.name, data_dir=opts.data_dir)
    self.data_dir_root = str(self.builder.data_dir_root)
    if opts.download:
      try:
        self.builder.download_and_prepare()
      except Exception as e:  # network, quota, disk: all end the same way
        raise DataError(f'Downloading {opts.name} into {self.data_dir_root} failed: {e}\n'
                        + str(missing_data_error(opts.name, self.data_dir_root,
                                                 opts.data_dir or ''))) from e
    feature = self.builder.info.features['image']
    stored = tuple(feature.shape)
    if stored != SPECS[opts.name].native_shape:
      raise DataError(f'TFDS {opts.name} images have shape {stored}, this module expects '
                      f'{SPECS[opts.name].native_shape}; update SPECS in {__name__}.')
    self.feature = feature

  def open(self, split, *, shuffle_seed=None):
    """Encoded images of `split`: shuffled files if `shuffle_seed` is given, else stored order."""
    tf, tfds = _tf(), _tfds()
    read_config = tfds.ReadConfig(
        shuffle_seed=shuffle_seed, try_autocache=False,
        interleave_cycle_length=16 if shuffle_seed is not None else 1)
    decoders = tfds.decode.PartialDecoding(
        {'image': True}, decoders={'image': tfds.decode.SkipDecoding()})
    try:
      ds = self.builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None,
                                   read_config=read_config, decoders=decoders)
    except (AssertionError, FileNotFoundError, tf.errors.NotFoundError) as e:
      # TFDS raises AssertionError('Dataset mnist: could not find data in ...').
      if isinstance(e, AssertionError) and 'could not find data' not in str(e):
        raise
      raise missing_data_error(self.opts.name, self.data_dir_root, self.opts.data_dir or '',
                               cause=str(e).split('.')[0]) from e
    return ds.map(lambda ex: ex['image'])

  def num_examples(self, split):
    n = int(self.open(split).cardinality())
    if n < 0:  # unknown: fall back to the metadata
      n = self.builder.info.splits[split].num_examples
    return n

  def preprocess(self, encoded):
    """Encoded image -> float32 (S, S, C) in [0, 1], before any binarisation."""
    tf, o, spec = _tf(), self.opts, SPECS[self.opts.name]
    x = tf.cast(self.feature.decode_example(encoded), tf.float32)
    x = x if spec.binary else x / 255.0
    if spec.grey_inverted:
      x = 1.0 - tf.reduce_mean(x, axis=-1, keepdims=True)
    h, w, _ = spec.native_shape
    if o.crop_size:
      x = tf.image.crop_to_bounding_box(x, (h - o.crop_size) // 2, (w - o.crop_size) // 2,
                                        o.crop_size, o.crop_size)
      h = w = o.crop_size
    s = o.image_size
    if (h, w) != (s, s):
      if o.resize == 'pad':
        x = tf.image.pad_to_bounding_box(x, (s - h) // 2, (s - w) // 2, s, s)
      elif o.resize == 'nearest':
        x = tf.image.resize(x, (s, s), method='nearest')
      else:
        x = tf.image.resize(x, (s, s), method='bilinear', antialias=True)
        if spec.binary:  # interpolation made grey values; keep the source binary
          x = tf.cast(x > 0.5, tf.float32)
    x = tf.clip_by_value(x, 0.0, 1.0)
    return tf.ensure_shape(x, o.shape)

  def decoded(self, ds):
    tf = _tf()
    return ds.map(self.preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _epoch_seed(seed, epoch, process_index):
  return int(np.random.SeedSequence([seed % (1 << 32), epoch, process_index])
             .generate_state(1)[0])


# ---------------------------------------------------------------------------
# Sources

class TfdsTrainSource:
  """This host's shuffled, drop-remainder batches of its part of the train split.

  See the module docstring for the order of examples and the cost of resuming.
  """

  def __init__(self, reader: Reader, num_examples: int, process_index: int,
               process_count: int):
    o = reader.opts
    self.reader = reader
    self.local_batch_size = check_batch_split(o.batch_size, process_count)
    self.global_batch_size = o.batch_size
    self.num_examples = num_examples
    self.steps_per_epoch = steps_per_epoch(num_examples, o.batch_size)
    if self.steps_per_epoch == 0:
      raise DataError(
          f'config.batch_size={o.batch_size} exceeds the {num_examples} examples of '
          f'{o.name} {o.train_split!r} (each of {process_count} processes holds '
          f'{num_examples // process_count}); choose at most '
          f'{(num_examples // process_count) * process_count}.')
    self.seed = o.seed
    self.process_index = process_index
    if process_count == 1:
      self.split = o.train_split
    else:
      self.split = _tfds().even_splits(o.train_split, n=process_count)[process_index]
    self.dynamic, self.static = make_binarize(o.binarize)

  @property
  def element_spec(self):
    return {'image': (self.reader.opts.shape, np.dtype(np.float32))}

  def _epoch(self, epoch, skip_batches):
    tf, tfds = _tf(), _tfds()
    b = self.local_batch_size
    seed = _epoch_seed(self.seed, epoch, self.process_index)
    ds = self.reader.open(self.split, shuffle_seed=seed)
    ds = ds.shuffle(self.reader.opts.shuffle_buffer, seed=seed)
    ds = ds.take(self.steps_per_epoch * b)
    ds = ds.skip(skip_batches * b)  # encoded records: read, never decoded
    ds = self.reader.decoded(ds).batch(b, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return tfds.as_numpy(ds.with_options(options))

  def iterate(self, start_step: int = 0):
    epoch, pos = divmod(int(start_step), self.steps_per_epoch)
    step = int(start_step)
    while True:
      count = 0
      for images in self._epoch(epoch, pos):
        images = self.static(images)
        batch = {'image': images}
        if self.dynamic is not None:
          rng = np.random.default_rng([self.seed, 1 << 20, step, self.process_index])
          batch = self.dynamic(batch, rng)
        yield batch
        step += 1
        count += 1
      if count != self.steps_per_epoch - pos:
        raise DataError(
            f'{self.reader.opts.name} {self.split!r} gave {count} batches in epoch {epoch}, '
            f'expected {self.steps_per_epoch - pos}: the prepared data does not match its '
            'metadata; rebuild it with ' + prepare_command(self.reader.opts.name,
                                                           self.reader.data_dir_root))
      epoch, pos = epoch + 1, 0


class TfdsEvalSource:
  """The eval split once, in stored order, in padded fixed-size global batches."""

  def __init__(self, reader: Reader, num_examples: int, process_index: int,
               process_count: int, seed: int = 1234):
    o = reader.opts
    if num_examples == 0:
      raise DataError(f'The evaluation split {o.eval_split!r} of {o.name} is empty.')
    self.reader = reader
    self.split = o.eval_split
    self.num_examples = num_examples
    self.local_batch_size = check_batch_split(o.eval_batch_size, process_count,
                                              name='eval.batch_size')
    self.global_batch_size = o.eval_batch_size
    self.process_index = process_index
    self.seed = seed
    self.dynamic, self.static = make_binarize(o.binarize)

  @property
  def element_spec(self):
    return {'image': (self.reader.opts.shape, np.dtype(np.float32))}

  def __len__(self):
    return math.ceil(self.num_examples / self.global_batch_size)

  def _last_example(self):
    tfds = _tfds()
    ds = self.reader.decoded(self.reader.open(self.split).skip(self.num_examples - 1).take(1))
    return next(iter(tfds.as_numpy(ds)))

  def __iter__(self):
    tf, tfds = _tf(), _tfds()
    n, gb, lb, p = self.num_examples, self.global_batch_size, self.local_batch_size, \
        self.process_index
    ds = self.reader.open(self.split).take(n).enumerate()   # n: config.data.eval_limit
    ds = ds.filter(lambda i, _: (i % gb) // lb == p).map(lambda _, x: x)
    ds = self.reader.decoded(ds).batch(lb).prefetch(tf.data.AUTOTUNE)
    mine = iter(tfds.as_numpy(ds))
    shape = self.reader.opts.shape
    pad = None
    for b in range(len(self)):
      real = min(max(n - b * gb - p * lb, 0), lb)
      images = next(mine) if real else np.zeros((0,) + shape, np.float32)
      if len(images) != real:
        raise DataError(f'{self.reader.opts.name} {self.split!r}: eval batch {b} has '
                        f'{len(images)} examples on process {p}, expected {real}.')
      if real < lb:
        if pad is None:
          pad = self._last_example()
        images = np.concatenate([images, np.repeat(pad[None], lb - real, axis=0)])
      batch = {'image': self.static(images)}
      if self.dynamic is not None:
        batch = self.dynamic(batch, np.random.default_rng([self.seed, 1 << 21, b]))
      batch['valid'] = np.arange(lb) < real
      yield batch


def train_variance(reader: Reader, split: str, limit: int = VARIANCE_EXAMPLES) -> float:
  """Pixel variance of the first `limit` stored examples of `split`, statically binarised."""
  tfds = _tfds()
  _, static = make_binarize(reader.opts.binarize)
  total, total_sq, count = 0.0, 0.0, 0
  for images in tfds.as_numpy(reader.decoded(reader.open(split).take(limit)).batch(1000)):
    images = static(images).astype(np.float64)
    total += images.sum()
    total_sq += np.square(images).sum()
    count += images.size
  mean = total / count
  return float(max(total_sq / count - mean * mean, 0.0))


# binarized_mnist (vaes/data/local.py), mnist and fashion_mnist (vaes/data/idx_images.py)
# are registered by the modules that read their idx / npz files by default; they call
# tfds_images for config.data.source='tfds'.
LOCAL_FIRST = ('binarized_mnist', 'mnist', 'fashion_mnist')


@register(*(name for name in SPECS if name not in LOCAL_FIRST))
def tfds_images(config, process_index, process_count):
  opts = read_options(config)
  reader = Reader(opts)
  num_train = reader.num_examples(opts.train_split)
  num_eval = reader.num_examples(opts.eval_split)
  train = TfdsTrainSource(reader, num_train, process_index, process_count)
  evals = TfdsEvalSource(reader, num_eval, process_index, process_count)
  binary = SPECS[opts.name].binary or opts.binarize not in (None, '', 'none')
  info = DataInfo(
      kind='image',
      shape=opts.shape,
      num_levels=2 if binary else 256,
      train_variance=train_variance(reader, opts.train_split),
      num_train=num_train,
      num_eval=num_eval,
      steps_per_epoch=train.steps_per_epoch,
      eval_split=opts.eval_split,
  )
  return Splits(train, evals, info)
