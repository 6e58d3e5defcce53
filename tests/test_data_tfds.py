"""The TFDS data path (vaes/data/tfds_data.py).

Most checks run under `tfds.testing.mock_data`, which yields the same random
examples for every split. Sharding and eval coverage need data whose examples
can be told apart and whose sub-splits are honoured, so those tests read a tiny
'mnist' written to a temporary data dir by a local builder (no network): pixel
(0, 0) of example i holds its id.
"""

import subprocess
import sys
import tempfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs.base import get_base_config
from vaes.data import DataError, get_datasets

NUM_TRAIN, NUM_TEST = 50, 23


def make_config(name, batch_size=4, eval_batch_size=6, seed=0, **data):
  c = get_base_config()
  c.seed = seed
  c.batch_size = batch_size
  c.eval.batch_size = eval_batch_size
  c.data.name = name
  c.data.source = 'tfds'   # mnist and fashion_mnist read idx files by default
  for k, v in data.items():
    c.data[k] = v
  return c


def take(it, n):
  return [next(it) for _ in range(n)]


def ids(images):
  return np.rint(images[:, 0, 0, 0] * 255).astype(int)


class Mnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes files that the registered 'mnist' builder (3.0.1) reads: ids 1..50 train,
  101..123 test."""

  VERSION = tfds.core.Version('3.0.1')
  url_infos = None  # nothing to download; skips a checksum-file lookup by module path

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(28, 28, 1)),
        'label': tfds.features.ClassLabel(num_classes=10)}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(1, NUM_TRAIN),
            'test': self._generate_examples(101, NUM_TEST)}

  def _generate_examples(self, first_id, n):
    rng = np.random.default_rng(first_id)
    for i in range(n):
      image = rng.integers(0, 256, (28, 28, 1), dtype=np.uint8)
      image[0, 0, 0] = first_id + i
      yield i, {'image': image, 'label': i % 10}


@pytest.fixture(autouse=True, scope='module')
def _temporary_files_in_pytests_folder(tmp_path_factory):
  """Offline, TFDS's DatasetInfo.initialize_from_bucket (tfds 4.9) makes a folder with
  tempfile.mkdtemp and leaves it behind when GCS has no files for it: under pytest's
  temporary folder, which pytest removes."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(tempfile, 'tempdir', str(tmp_path_factory.mktemp('tempfile')))
    yield


@pytest.fixture(scope='module')
def fake_mnist_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  Mnist(data_dir=data_dir).download_and_prepare()
  return data_dir


def test_importing_vaes_data_does_not_import_tensorflow():
  code = ("import sys, vaes.data; "
          "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; "
          "assert 'tensorflow_datasets' not in sys.modules, 'tfds imported'; "
          "assert 'mnist' in vaes.data.dataset_names()")
  subprocess.run([sys.executable, '-c', code], check=True)


@pytest.mark.parametrize('name,shape', [('mnist', (28, 28, 1)), ('cifar10', (32, 32, 3))])
def test_mock_batches_shapes_dtypes_ranges(name, shape):
  with tfds.testing.mock_data(num_examples=10):
    splits = get_datasets(make_config(name), 0, 1)
    info = splits.info
    assert info.shape == shape and info.kind == 'image' and info.num_levels == 256
    assert info.num_train == info.num_eval == 10
    assert 0.0 < info.train_variance < 0.25
    assert splits.train.element_spec == {'image': (shape, np.dtype(np.float32))}
    assert (splits.train.local_batch_size, splits.train.global_batch_size) == (4, 4)
    for batch in take(splits.train.iterate(0), 3):
      x = batch['image']
      assert set(batch) == {'image'}
      assert x.shape == (4,) + shape and x.dtype == np.float32
      assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
    batches = list(splits.eval)
  assert len(batches) == len(splits.eval) == 2
  for b in batches:
    assert b['image'].shape == (6,) + shape and b['image'].dtype == np.float32
    assert b['valid'].dtype == bool and b['valid'].shape == (6,)
  assert [b['valid'].sum() for b in batches] == [6, 4]


def test_mock_binarize_and_other_datasets():
  with tfds.testing.mock_data(num_examples=10):
    for mode in ('threshold', 'dynamic'):
      splits = get_datasets(make_config('mnist', binarize=mode), 0, 1)
      assert splits.info.num_levels == 2
      a, b = take(splits.train.iterate(0), 2)
      assert set(np.unique(a['image'])) == {0.0, 1.0}
      assert set(np.unique(next(iter(splits.eval))['image'])) <= {0.0, 1.0}
    x = next(get_datasets(make_config('celeb_a'), 0, 1).train.iterate(0))['image']
    assert x.shape == (4, 64, 64, 3) and 0.0 <= x.min() and x.max() <= 1.0  # crop + resize
    x = next(get_datasets(make_config('cifar10', image_size=16), 0, 1).train.iterate(0))['image']
    assert x.shape == (4, 16, 16, 3)
  with tfds.testing.mock_data(num_examples=10, max_value=2):  # binarized_mnist stores {0, 1}
    splits = get_datasets(make_config('binarized_mnist', source='tfds'), 0, 1)
    x = next(splits.train.iterate(0))['image']
    assert splits.info.num_levels == 2 and set(np.unique(x)) == {0.0, 1.0}
  with tfds.testing.mock_data(num_examples=10, max_value=1):  # all-black omniglot pages
    splits = get_datasets(make_config('omniglot'), 0, 1)
    x = next(splits.train.iterate(0))['image']
    assert splits.info.shape == (28, 28, 1) and x.shape == (4, 28, 28, 1)
    np.testing.assert_allclose(x, 1.0, atol=1e-6)  # inverted: dark ink -> 1


def test_mock_determinism_by_seed():
  with tfds.testing.mock_data(num_examples=10):
    first = take(get_datasets(make_config('mnist', binarize='dynamic'), 0, 1).train.iterate(0), 5)
    again = take(get_datasets(make_config('mnist', binarize='dynamic'), 0, 1).train.iterate(0), 5)
    other = take(get_datasets(make_config('mnist', binarize='dynamic', seed=1), 0, 1)
                 .train.iterate(0), 5)
    grey = take(get_datasets(make_config('mnist'), 0, 1).train.iterate(0), 3)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a['image'], b['image'])
  assert any(not np.array_equal(a['image'], b['image']) for a, b in zip(first, other))
  # Two steps per epoch: steps 0 and 2 start different epochs, each shuffled afresh.
  assert not np.array_equal(grey[0]['image'], grey[2]['image'])


def test_mock_resume_continues_at_exact_position():
  # Dynamic binarisation: a resumed batch must match in both examples and noise.
  with tfds.testing.mock_data(num_examples=10):
    train = get_datasets(make_config('mnist', binarize='dynamic'), 1, 2).train
    assert train.steps_per_epoch == 2 and train.local_batch_size == 2
    reference = take(train.iterate(0), 6)
    for k in (1, 2, 5):
      resumed = take(train.iterate(k), 1)[0]
      np.testing.assert_array_equal(resumed['image'], reference[k]['image'])


@pytest.mark.parametrize('count,batch_size,eval_batch_size', [(2, 8, 6), (3, 6, 9)])
def test_per_host_sharding_and_eval_coverage(fake_mnist_dir, count, batch_size,
                                             eval_batch_size):
  cfg = make_config('mnist', batch_size, eval_batch_size, tfds_data_dir=fake_mnist_dir)
  single = get_datasets(cfg, 0, 1)
  hosts = [get_datasets(cfg, p, count) for p in range(count)]
  assert single.info.num_train == NUM_TRAIN and single.info.num_eval == NUM_TEST
  local = batch_size // count
  steps = hosts[0].train.steps_per_epoch
  assert steps == (NUM_TRAIN // count) // local
  seen = []
  for h in hosts:
    assert h.train.steps_per_epoch == steps and h.train.local_batch_size == local
    epoch = take(h.train.iterate(0), steps)
    assert all(b['image'].shape == (local, 28, 28, 1) for b in epoch)
    epoch_ids = np.concatenate([ids(b['image']) for b in epoch])
    assert len(set(epoch_ids)) == len(epoch_ids)  # no repeats within an epoch
    seen.append(set(epoch_ids))
  union = set().union(*seen)
  assert sum(map(len, seen)) == len(union) == count * steps * local  # hosts are disjoint
  assert union <= set(range(1, NUM_TRAIN + 1))

  # Eval: the whole test split once; each host holds its slice of every global batch.
  reference = list(single.eval)
  per_host = [list(h.eval) for h in hosts]
  assert all(len(batches) == len(reference) == -(-NUM_TEST // eval_batch_size)
             for batches in per_host)
  for b, ref in enumerate(reference):
    parts = [batches[b] for batches in per_host]
    assert all(part['image'].shape == (eval_batch_size // count, 28, 28, 1) for part in parts)
    np.testing.assert_array_equal(np.concatenate([p['image'] for p in parts]), ref['image'])
    np.testing.assert_array_equal(np.concatenate([p['valid'] for p in parts]), ref['valid'])
  valid_ids = np.concatenate([ids(b['image'])[b['valid']] for b in reference])
  assert sorted(valid_ids) == list(range(101, 101 + NUM_TEST))
  last = reference[-1]
  assert (~last['valid']).sum() == len(reference) * eval_batch_size - NUM_TEST > 0
  padded_ids = ids(last['image'])[~last['valid']]
  assert (padded_ids == valid_ids[-1]).all()  # padding repeats the split's last example


def test_missing_data_gives_the_prepare_command(tmp_path, monkeypatch):
  def no_download(*args, **kwargs):
    raise RuntimeError('download attempted')
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', no_download)
  empty = str(tmp_path / 'tfds')
  with pytest.raises(DataError) as err:
    get_datasets(make_config('mnist', tfds_data_dir=empty), 0, 1)
  msg = str(err.value)
  assert "'mnist'" in msg and empty in msg
  assert f'tfds build mnist --data_dir={empty}' in msg
  assert 'download_and_prepare --datasets=mnist' in msg and 'copy' in msg
  with pytest.raises(DataError, match='download attempted'):
    get_datasets(make_config('mnist', tfds_data_dir=empty, tfds_download=True), 0, 1)


@pytest.mark.parametrize('field,value,expect', [
    ('train_split', 'trian', r"config.data.train_split='trian'.*\['train', 'test'\]"),
    ('eval_split', 'validation', r"config.data.eval_split='validation'"),
    ('eval_split', 'test[:5]+train[x:]', r"config.data.eval_split=.* not a valid split spec"),
    ('image_size', 0, r'config.data.image_size=0: must be an integer >= 1'),
    ('resize', 'cubic', r"config.data.resize='cubic' is not one of"),
    ('binarize', 'yes', r"config.data.binarize='yes' is not one of"),
    ('crop_size', 500, r'config.data.crop_size=500: must be an integer in \[0, 28\]'),
])
def test_config_errors_name_field_value_and_choices(field, value, expect):
  with pytest.raises(DataError, match=expect):
    get_datasets(make_config('mnist', **{field: value}), 0, 1)
