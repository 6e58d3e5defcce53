"""Grey image sets in the idx format (vaes/data/idx_images.py): a user's own idx files by
path, Fashion-MNIST found where the ecosystem puts it (checked by sha256), the bundled
grey MNIST, the held-out validation split, and one-line errors. The files are small
fixtures written here, not the 30 MB data sets."""

import hashlib

import numpy as np
import pytest

from tests.helpers import idx_bytes, load_config, write_idx_images
from vaes.data import get_datasets, idx_images
from vaes.data.core import DataError

TRAIN, TEST = 60, 20


@pytest.fixture(scope='module')
def arrays():
  rng = np.random.default_rng(0)
  return (rng.integers(0, 256, (TRAIN, 28, 28), dtype=np.uint8),
          rng.integers(0, 256, (TEST, 28, 28), dtype=np.uint8))


@pytest.fixture(scope='module')
def idx_dir(tmp_path_factory, arrays):
  return write_idx_images(tmp_path_factory.mktemp('idx'), *arrays)


def config(name='idx_images', **data):
  c = load_config('configs/vqvae_fashion_mnist.py', {'batch_size': 8, 'eval.batch_size': 16})
  c.data.name = name
  for key, value in data.items():
    c.data[key] = value
  return c


def test_own_idx_files_by_path_gzipped_or_raw(idx_dir, arrays, tmp_path):
  raw_dir = write_idx_images(tmp_path / 'raw', *arrays, gz=False)
  for directory in (idx_dir, raw_dir):
    splits = get_datasets(config(path=directory), 0, 1)
    info = splits.info
    assert (info.shape, info.num_train, info.num_eval, info.num_levels, info.eval_split,
            info.source) == ((28, 28, 1), TRAIN, TEST, 256, 'test', directory)
    np.testing.assert_allclose(info.train_variance, np.var(arrays[0] / 255.0), rtol=1e-5)
    evals = np.concatenate([b['image'][b['valid']] for b in splits.eval])
    np.testing.assert_array_equal(evals, arrays[1][..., None].astype(np.float32) / 255)
    batch = splits.train.batch(0)['image']   # a training batch: rows of the train images
    assert batch.shape == (8, 28, 28, 1) and batch.dtype == np.float32
    flat = (arrays[0].reshape(TRAIN, -1) / 255).astype(np.float32)
    for image in batch:
      assert (np.abs(flat - image.reshape(-1)).max(axis=1) == 0).any()


def test_valid_size_holds_out_the_last_training_images(idx_dir, arrays):
  for split in ('valid', 'test', 'train'):
    splits = get_datasets(config(path=idx_dir, valid_size=10, eval_split=split), 0, 1)
    assert splits.info.num_train == TRAIN - 10     # the training set: eval_split aside
    evals = np.concatenate([b['image'][b['valid']] for b in splits.eval])
    expected = {'valid': arrays[0][-10:], 'test': arrays[1], 'train': arrays[0][:-10]}[split]
    np.testing.assert_array_equal(evals, expected[..., None].astype(np.float32) / 255)
  with pytest.raises(DataError, match=r"eval_split='valid'.*set config.data.valid_size"):
    get_datasets(config(path=idx_dir, eval_split='valid'), 0, 1)
  with pytest.raises(DataError, match=r'config.data.valid_size=60: must be in 1..59'):
    get_datasets(config(path=idx_dir, valid_size=TRAIN), 0, 1)


def test_fashion_mnist_is_found_where_the_ecosystem_puts_it_and_checked(
    idx_dir, arrays, tmp_path, monkeypatch):
  digests = {stem: hashlib.sha256(idx_bytes(a)).hexdigest()
             for stem, a in ((idx_images.TRAIN_IMAGES, arrays[0]),
                             (idx_images.TEST_IMAGES, arrays[1]))}
  empty = str(tmp_path / 'empty')
  monkeypatch.setattr(idx_images, 'FASHION_MNIST_DIRS', (empty, idx_dir))
  # Not the real Fashion-MNIST: its sha256 is refused, naming how to get the real one.
  with pytest.raises(DataError, match=r'sha256 .*apt install dataset-fashion-mnist'):
    get_datasets(config('fashion_mnist'), 0, 1)
  monkeypatch.setitem(idx_images.SHA256, 'fashion_mnist', digests)
  assert get_datasets(config('fashion_mnist'), 0, 1).info.source == idx_dir   # the 2nd dir
  monkeypatch.setattr(idx_images, 'FASHION_MNIST_DIRS', (empty,))
  with pytest.raises(DataError) as e:
    get_datasets(config('fashion_mnist'), 0, 1)
  message = str(e.value)
  assert '\n' not in message and empty in message
  assert 'apt install dataset-fashion-mnist' in message and '--config.data.path' in message
  with pytest.raises(DataError, match=r'holds no train-images-idx3-ubyte.gz'):
    get_datasets(config('fashion_mnist', path=empty), 0, 1)


def test_bundled_grey_mnist_and_the_tfds_source(monkeypatch):
  info = get_datasets(config('mnist', valid_size=10_000, eval_split='valid'), 0, 1).info
  assert (info.num_train, info.num_eval, info.source) == (50_000, 10_000,
                                                          idx_images.BUNDLED_MNIST)
  np.testing.assert_allclose(info.train_variance, 0.0949, atol=5e-4)
  calls = []
  monkeypatch.setattr(idx_images.tfds_data, 'tfds_images',
                      lambda c, i, n: calls.append(c.data.name) or 'tfds')
  for name in ('mnist', 'fashion_mnist'):
    assert get_datasets(config(name, source='tfds'), 0, 1) == 'tfds'
  assert calls == ['mnist', 'fashion_mnist']
  with pytest.raises(DataError, match=r"config.data.source='disk' is not one of"):
    get_datasets(config('mnist', source='disk'), 0, 1)


def test_idx_images_needs_a_path_and_uint8_images(tmp_path):
  with pytest.raises(DataError, match=r'config.data.path, which is empty'):
    get_datasets(config(), 0, 1)
  bad = tmp_path / 'int32'
  bad.mkdir()
  (bad / 'train-images-idx3-ubyte').write_bytes(
      bytes([0, 0, 0x0C, 3]) + np.array((2, 4, 4), '>u4').tobytes() + bytes(2 * 16 * 4))
  with pytest.raises(DataError, match=r'expected uint8 images'):
    get_datasets(config(path=str(bad)), 0, 1)


def test_a_damaged_bundled_mnist_names_the_restore_command(arrays, tmp_path, monkeypatch):
  bundled = write_idx_images(tmp_path / 'mnist', *arrays)   # right format, wrong sha256
  monkeypatch.setattr(idx_images, 'BUNDLED_MNIST', bundled)
  with pytest.raises(DataError, match=r'git checkout -- vaes/data/files/mnist/'
                                      r'train-images-idx3-ubyte.gz'):
    get_datasets(config('mnist'), 0, 1)
