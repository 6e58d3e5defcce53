"""Grey MNIST as bundled (vaes/data/files/mnist/, read by vaes/data/idx.py), the grey source
of every static binarized_mnist image (binarized_mnist_grey_index.npz), and the dynamic
binarisation protocol of binarized_mnist built on them (vaes/data/local.py)."""

import gzip
import hashlib
import itertools
import os
import shutil

import numpy as np
import pytest

from tests.helpers import idx_bytes, load_config
from vaes import data as data_lib
from vaes.data import local
from vaes.data.core import DataError
from vaes.data.idx import read_idx

# sha256 of the decompressed idx files, as stated in the data README the files came with.
MNIST_RAW_SHA256 = {
    'train-images': 'ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db',
    'train-labels': '65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5',
    't10k-images': '0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7',
    't10k-labels': 'ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2',
}
BATCH = 100


def mnist_config(**data):
  overrides = {'batch_size': BATCH, 'eval.batch_size': 1000}
  overrides.update({f'data.{k}': v for k, v in data.items()})
  return load_config('configs/lvae_mnist.py', overrides)


@pytest.fixture(scope='module')
def grey():
  """{'train': (images, labels), 'test': (images, labels)}, the bundled grey MNIST."""
  return {split: local.mnist_grey(split) for split in ('train', 'test')}


@pytest.fixture(scope='module')
def grey_index():
  with np.load(local.local_file('binarized_mnist_grey_index')) as f:
    return {k: f[k] for k in ('train', 'valid', 'test')}


@pytest.fixture(scope='module')
def static():
  with np.load(local.local_file('binarized_mnist')) as f:
    return {k: f[k] for k in ('train', 'valid', 'test')}


@pytest.fixture(scope='module')
def dynamic():
  return data_lib.get_datasets(mnist_config(binarize='dynamic'), 0, 1)


# --- the idx reader ------------------------------------------------------------------------

def test_read_idx_gzip_and_raw(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {'images': rng.integers(0, 256, (4, 3, 5), dtype=np.uint8),
            'labels': rng.integers(0, 10, (7,), dtype=np.uint8)}
  for name, array in arrays.items():
    raw, gz = tmp_path / f'{name}-idx', tmp_path / f'{name}-idx.gz'
    raw.write_bytes(idx_bytes(array))
    gz.write_bytes(gzip.compress(idx_bytes(array)))
    for path in (raw, gz):
      out = read_idx(str(path))
      assert out.dtype == np.uint8 and out.shape == array.shape, path
      np.testing.assert_array_equal(out, array)


def test_read_idx_bad_files_are_one_clear_error(tmp_path):
  array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
  data = idx_bytes(array)
  cases = {
      'missing': None,
      'truncated': data[:-1],
      'long': data + b'\0',
      'header': data[:9],                       # 3 dimensions need a 16-byte header
      'magic': b'\x42\x00' + data[2:],
      'dtype': data[:2] + b'\x07' + data[3:],
      'gz_truncated': gzip.compress(data)[:-12],
  }
  for name, content in cases.items():
    path = tmp_path / f'{name}-idx3-ubyte'
    if content is not None:
      path.write_bytes(content)
    with pytest.raises(DataError, match=f'{path}.*; fix it') as e:
      read_idx(str(path), fix='fix it')
    assert '\n' not in str(e.value), name
  with pytest.raises(DataError, match='truncated'):
    read_idx(str(tmp_path / 'truncated-idx3-ubyte'))
  with pytest.raises(DataError, match='not an idx file'):
    read_idx(str(tmp_path / 'magic-idx3-ubyte'))


# --- the bundled grey MNIST ----------------------------------------------------------------

def test_bundled_grey_mnist_sizes_values_and_decompressed_sha256(grey):
  for split, n in (('train', 60000), ('test', 10000)):
    images, labels = grey[split]
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8, split
    assert images.min() == 0 and images.max() == 255, split
    assert labels.shape == (n,) and set(np.unique(labels).tolist()) == set(range(10)), split
  assert round(grey['train'][0].mean() / 255, 4) == 0.1307
  assert round(grey['test'][0].mean() / 255, 4) == 0.1325
  for name, expected in MNIST_RAW_SHA256.items():
    ndim = 3 if name.endswith('images') else 1
    with gzip.open(os.path.join(local.FILES_DIR, 'mnist', f'{name}-idx{ndim}-ubyte.gz')) as f:
      assert hashlib.sha256(f.read()).hexdigest() == expected, name


def test_a_damaged_bundled_file_names_the_restore_command(tmp_path, monkeypatch):
  shutil.copy(local.local_file('binarized_mnist'), tmp_path)
  monkeypatch.setattr(local, 'FILES_DIR', str(tmp_path))
  with pytest.raises(DataError, match="binarize='dynamic'.*missing.*git checkout -- "
                                      'vaes/data/files/binarized_mnist_grey_index.npz'):
    data_lib.get_datasets(mnist_config(binarize='dynamic'), 0, 1)
  with pytest.raises(DataError, match="source='local'.*name='mnist'"):
    data_lib.get_datasets(mnist_config(binarize='dynamic', source='tfds'), 0, 1)


# --- the grey source of every static image -------------------------------------------------

def test_grey_index_is_a_permutation_and_explains_every_binary_image(grey, grey_index, static):
  sizes = {k: v.shape for k, v in grey_index.items()}
  assert sizes == {'train': (50000,), 'valid': (10000,), 'test': (10000,)}
  assert all(v.dtype == np.int32 for v in grey_index.values())
  train_valid = np.concatenate([grey_index['train'], grey_index['valid']])
  np.testing.assert_array_equal(np.sort(train_valid), np.arange(60000))
  np.testing.assert_array_equal(grey_index['test'],
                                np.argsort(grey['test'][1], kind='stable'))
  for split in ('train', 'valid', 'test'):
    images = grey['test' if split == 'test' else 'train'][0].reshape(-1, 784)
    source = images[grey_index[split]]
    binary = static[split]
    # Bernoulli(grey / 255): never 1 where grey is 0, always 1 where grey is 255.
    assert not (binary[source == 0]).any(), split
    assert binary[source == 255].all(), split
    # And the ones follow the grey levels: 1s over mid-grey pixels at about grey / 255.
    mid = (source > 63) & (source < 192)
    assert abs(binary[mid].mean() - source[mid].mean() / 255) < 0.01, split


# --- dynamic binarisation ------------------------------------------------------------------

def test_dynamic_info_and_eval_images_are_the_static_ones(dynamic, static):
  info = dynamic.info
  assert info.binarization == 'dynamic' and info.num_levels == 2
  assert info.shape == (28, 28, 1) and info.num_train == 50000
  assert info.eval_split == 'test' and info.num_eval == 10000
  m = dynamic.train.arrays['image'].mean(dtype=np.float64) / 255
  assert info.train_variance == pytest.approx(m * (1 - m)) and 0.11 < m * (1 - m) < 0.12
  batches = list(dynamic.eval)
  images = np.concatenate([b['image'][b['valid']] for b in batches])
  assert images.dtype == np.float32
  np.testing.assert_array_equal(images.reshape(-1, 784), static['test'])
  valid = data_lib.get_datasets(mnist_config(binarize='dynamic', eval_split='valid'), 0, 1)
  np.testing.assert_array_equal(valid.eval.arrays['image'].reshape(-1, 784), static['valid'])
  plain = data_lib.get_datasets(mnist_config(), 0, 1)
  assert plain.info.binarization == 'static'


def test_dynamic_batches_are_fresh_samples_of_the_static_batches_sources(
    dynamic, grey, grey_index, static):
  train = dynamic.train
  assert train.element_spec == {'image': ((28, 28, 1), np.dtype(np.float32))}
  plain = data_lib.get_datasets(mnist_config(), 0, 1).train
  grey_train = grey['train'][0].reshape(-1, 784)
  batches = list(itertools.islice(train.iterate(0), 20))
  for step, batch in enumerate(batches):
    x = batch['image']
    assert x.shape == (BATCH, 28, 28, 1) and x.dtype == np.float32
    assert set(np.unique(x).tolist()) == {0.0, 1.0}
    if step == 0:
      data_lib.validate_batch(batch, train.element_spec, dynamic.info)
    # The same images as the static protocol's batch at this step, re-binarised.
    idx = train.global_indices(step)
    np.testing.assert_array_equal(idx, plain.global_indices(step))
    source = grey_train[grey_index['train'][idx]]
    x = x.reshape(BATCH, 784)
    assert not x[source == 0].any() and x[source == 255].all()
    assert abs(x.mean() - source.mean() / 255) < 0.006, step
    assert not np.array_equal(x, static['train'][idx])      # not the file's binarisation
    # The static protocol is what it was: the file's rows, as they are.
    np.testing.assert_array_equal(plain.batch(step)['image'].reshape(BATCH, 784),
                                  static['train'][idx])
  assert not np.array_equal(batches[0]['image'], batches[1]['image'])
  # An image drawn twice (in two epochs) gets two binarisations.
  image = train.global_indices(0)[0]
  step = next(s for s in itertools.count(train.steps_per_epoch)
              if image in train.global_indices(s))
  row = int(np.flatnonzero(train.global_indices(step) == image)[0])
  assert not np.array_equal(batches[0]['image'][0], train.batch(step)['image'][row])
  # The empirical pixel variance of the samples is info.train_variance.
  all_x = np.concatenate([b['image'] for b in batches])
  assert abs(all_x.var() - dynamic.info.train_variance) < 0.005


def test_dynamic_batches_are_a_pure_function_of_seed_and_step(dynamic):
  train = dynamic.train
  steps = list(itertools.islice(train.iterate(0), 6))
  resumed = list(itertools.islice(train.iterate(3), 3))
  for a, b in zip(steps[3:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
  rebuilt = data_lib.get_datasets(mnist_config(binarize='dynamic'), 0, 1).train
  np.testing.assert_array_equal(rebuilt.batch(5)['image'], steps[5]['image'])
  other_seed = mnist_config(binarize='dynamic')
  other_seed.seed = other_seed.seed + 1
  other = data_lib.get_datasets(other_seed, 0, 1).train
  assert not np.array_equal(other.batch(0)['image'], steps[0]['image'])


def test_dynamic_batches_are_the_same_on_one_and_two_processes(dynamic):
  halves = [data_lib.get_datasets(mnist_config(binarize='dynamic'), p, 2).train
            for p in (0, 1)]
  for step in (0, 1, 7, dynamic.train.steps_per_epoch + 2):
    parts = [h.batch(step)['image'] for h in halves]
    assert parts[0].shape == (BATCH // 2, 28, 28, 1)
    np.testing.assert_array_equal(np.concatenate(parts), dynamic.train.batch(step)['image'])


def test_dynamic_with_padding_keeps_the_border_empty():
  splits = data_lib.get_datasets(mnist_config(binarize='dynamic', image_size=32), 0, 1)
  x = splits.train.batch(0)['image']
  assert x.shape == (BATCH, 32, 32, 1) and splits.info.shape == (32, 32, 1)
  assert not x[:, :2].any() and not x[:, -2:].any() and x.any()
  assert next(iter(splits.eval))['image'].shape == (1000, 32, 32, 1)


def test_train_plus_valid_trains_on_all_60000_sources_and_refuses_valid(grey, grey_index, static):
  """data.train_split='train+valid' (configs/lvae_mnist_dynamic_60k.py, the Ladder VAE
  authors' training set): the grey sources of the static train images, then of the valid
  ones; static rows train on the file's 60,000 binary images; selecting on valid is refused."""
  both = data_lib.get_datasets(mnist_config(binarize='dynamic', train_split='train+valid'), 0, 1)
  grey_train = grey['train'][0]
  expected = grey_train[np.concatenate([grey_index['train'], grey_index['valid']])]
  np.testing.assert_array_equal(both.train.arrays['image'][..., 0], expected)
  assert both.info.num_train == 60000 and both.info.steps_per_epoch == 600
  assert len(np.unique(np.concatenate([grey_index['train'], grey_index['valid']]))) == 60000
  plain = data_lib.get_datasets(mnist_config(train_split='train+valid'), 0, 1)
  np.testing.assert_array_equal(plain.train.arrays['image'].reshape(-1, 784),
                                np.concatenate([static['train'], static['valid']]))
  np.testing.assert_array_equal(plain.eval.arrays['image'].reshape(-1, 784), static['test'])
  with pytest.raises(DataError) as err:
    data_lib.get_datasets(mnist_config(train_split='train+valid', eval_split='valid'), 0, 1)
  assert "trains on the 'valid' images" in str(err.value) and "select_metric=''" in str(err.value)
  with pytest.raises(DataError,
                     match=r"train_split='test' is not one of \('train', 'train\+valid'\)"):
    data_lib.get_datasets(mnist_config(train_split='test'), 0, 1)
