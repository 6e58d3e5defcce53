"""The benchmark sets that ship with the project (vaes/data/local.py), read through the
project's loaders from its own copies, against the facts stated with the files: split
sizes, shapes, value sets, mean pixels, frame counts, and a per-key Bernoulli baseline
computed here with numpy as an independent check of the frame encoding."""

import os
import pickle
import shutil
import subprocess

import numpy as np
import pytest

from tests.helpers import PYTHON, REPO, load_config, subprocess_env
from vaes import data as data_lib
from vaes.data import local
from vaes.data.core import ArrayTrainSource, DataError

MNIST = {'train': 50000, 'valid': 10000, 'test': 10000}
MNIST_MEAN = {'train': 0.1306, 'valid': 0.1311, 'test': 0.1325}
JSB_CHORALES = {'train': 229, 'valid': 76, 'test': 77}
JSB_FRAMES = {'train': 13807, 'valid': 4602, 'test': 4725}


def mnist_config(**data):
  overrides = {'batch_size': 100, 'eval.batch_size': 1000}
  overrides.update({f'data.{k}': v for k, v in data.items()})
  return load_config('configs/lvae_mnist.py', overrides)


def jsb_config(**data):
  overrides = {'batch_size': 16, 'eval.batch_size': 32}
  overrides.update({f'data.{k}': v for k, v in data.items()})
  return load_config('configs/vrnn_jsb.py', overrides)


@pytest.mark.parametrize('eval_split', ['valid', 'test', 'train'])
def test_binarized_mnist_splits_values_and_batches(eval_split):
  config = mnist_config(eval_split=eval_split)
  assert config.data.name == 'binarized_mnist' and config.data.source == 'local'
  splits = data_lib.get_datasets(config, 0, 1)
  info = splits.info
  assert info.kind == 'image' and info.shape == (28, 28, 1) and info.num_levels == 2
  assert info.eval_split == eval_split
  assert info.num_train == MNIST['train'] and info.num_eval == MNIST[eval_split]
  for split, source in (('train', splits.train), (eval_split, splits.eval)):
    x = source.arrays['image']
    assert x.shape == (MNIST[split], 28, 28, 1) and x.dtype == np.float32, split
    assert set(np.unique(x).tolist()) == {0.0, 1.0}, split
    assert round(float(x.mean(dtype=np.float64)), 4) == MNIST_MEAN[split], split
  # The batches the Ladder VAE family is fed, checked by the engine's own validator.
  batch = next(splits.train.iterate(0))
  data_lib.validate_batch(batch, splits.train.element_spec, info)
  assert batch['image'].shape == (100, 28, 28, 1)
  batches = list(splits.eval)
  assert len(batches) == MNIST[eval_split] // 1000 and all(b['valid'].all() for b in batches)
  if eval_split == 'train':     # the training images themselves, in the file's order
    np.testing.assert_array_equal(splits.eval.arrays['image'], splits.train.arrays['image'])


def test_binarized_mnist_rows_are_row_major_images():
  """Image i of a split is row i of the file, reshaped row-major to 28x28."""
  with np.load(local.local_file('binarized_mnist')) as f:
    rows = f['test'][:3]
  images = data_lib.get_datasets(mnist_config(), 0, 1).eval.arrays['image'][:3]
  np.testing.assert_array_equal(images[:, 2, 5, 0], rows[:, 2 * 28 + 5])
  np.testing.assert_array_equal(images.reshape(3, 784), rows)


def test_jsb_chorales_splits_frames_and_pitches():
  for eval_split in ('valid', 'test'):
    splits = data_lib.get_datasets(jsb_config(eval_split=eval_split), 0, 1)
    info = splits.info
    assert info.likelihood == 'bernoulli' and info.shape[1] == 88
    assert info.num_train == JSB_CHORALES['train']
    assert info.num_eval == JSB_CHORALES[eval_split]
    assert info.train_frames == JSB_FRAMES['train']
    assert info.eval_frames == JSB_FRAMES[eval_split]
    for source in (splits.train, splits.eval):
      x, mask = source.arrays['x'], source.arrays['mask']
      assert set(np.unique(x).tolist()) == {0.0, 1.0} and not x[mask == 0].any()
  # The raw pitches (the loader maps MIDI 21..108 onto the 88 columns).
  with open(local.local_file('jsb_chorales'), 'rb') as f:
    raw = pickle.load(f)
  pitches = np.array([int(p) for k in raw for seq in raw[k] for frame in seq for p in frame])
  assert pitches.min() >= 21 and pitches.max() <= 108
  assert {k: sum(map(len, raw[k])) for k in raw} == JSB_FRAMES


def test_eval_limit_keeps_the_first_examples_of_the_evaluation_split():
  """config.data.eval_limit=N: the first N examples, in order, the last batch padded;
  info counts them (and their frames); the training split is untouched."""
  full = data_lib.get_datasets(jsb_config(eval_split='test'), 0, 1)
  cut = data_lib.get_datasets(jsb_config(eval_split='test', eval_limit=40), 0, 1)
  assert cut.info.num_eval == 40 and full.info.num_eval == JSB_CHORALES['test']
  assert cut.info.eval_frames == int(full.eval.arrays['mask'][:40].sum()) < JSB_FRAMES['test']
  assert cut.info.num_train == full.info.num_train and cut.info.train_frames == JSB_FRAMES['train']
  batches = list(cut.eval)
  assert len(batches) == 2 and [int(b['valid'].sum()) for b in batches] == [32, 8]
  x = np.concatenate([b['x'][b['valid']] for b in batches])
  np.testing.assert_array_equal(x, full.eval.arrays['x'][:40])
  # A limit at or above the split's size is the whole split; a negative one is refused.
  assert data_lib.get_datasets(jsb_config(eval_limit=1000), 0, 1).info.num_eval == \
      JSB_CHORALES['test']
  with pytest.raises(DataError, match='config.data.eval_limit=-1'):
    data_lib.get_datasets(jsb_config(eval_limit=-1), 0, 1)


def test_jsb_per_key_bernoulli_baseline_is_11_06_nats_per_frame():
  """p_k = (count_k + 1) / (frames + 2) on train; -log p(x_t) per test frame, in float64."""
  splits = data_lib.get_datasets(jsb_config(eval_split='test'), 0, 1)
  def frames(source):
    x, mask = source.arrays['x'], source.arrays['mask']
    return x[mask > 0].astype(np.float64)
  train, test = frames(splits.train), frames(splits.eval)
  p = (train.sum(0) + 1.0) / (len(train) + 2.0)
  nll = -(test * np.log(p) + (1 - test) * np.log1p(-p)).sum(1).mean()
  assert round(nll, 2) == 11.06


def test_vrae_baseline_comes_from_the_datasets_frame_statistics():
  """The VRAE family's per-key Bernoulli baseline, built from `info` alone, equals the one
  fitted to the training frames; its test NLL is the 11.06 above."""
  from vaes.families import vrae
  splits = data_lib.get_datasets(jsb_config(eval_split='test'), 0, 1)
  x, mask = splits.train.arrays['x'], splits.train.arrays['mask']
  train = x[mask > 0].astype(np.float64)
  p = (train.sum(0) + 1.0) / (len(train) + 2.0)
  logits = vrae.fit_baseline('bernoulli', splits.info)
  np.testing.assert_allclose(logits, np.log(p / (1 - p)), rtol=1e-5, atol=1e-5)
  xt, mt = splits.eval.arrays['x'], splits.eval.arrays['mask']
  nll = -(np.asarray(vrae.baseline_log_prob('bernoulli', logits, xt)) * mt).sum() / mt.sum()
  assert round(float(nll), 2) == 11.06
  assert vrae.fit_baseline('bernoulli', data_lib.DataInfo(kind='sequence')) is None  # no statistics


def test_bad_input_is_one_clear_error(tmp_path, monkeypatch):
  with pytest.raises(DataError, match="eval_split='training'.*'valid'.*generalisation gap"):
    data_lib.get_datasets(mnist_config(eval_split='training'), 0, 1)
  with pytest.raises(DataError, match="eval_split='validation'"):
    data_lib.get_datasets(jsb_config(eval_split='validation'), 0, 1)
  with pytest.raises(DataError, match="source='gcs'.*'local', 'tfds'"):
    data_lib.get_datasets(mnist_config(source='gcs'), 0, 1)
  with pytest.raises(DataError, match="name='polyphonic_pickle'"):
    data_lib.get_datasets(jsb_config(path='/data/Nottingham.pickle'), 0, 1)
  # A missing or altered copy names the file and the command that restores it.
  monkeypatch.setattr(local, 'FILES_DIR', str(tmp_path))
  with pytest.raises(DataError,
                     match='missing.*git checkout -- vaes/data/files/binarized_mnist.npz'):
    data_lib.get_datasets(mnist_config(), 0, 1)
  shutil.copy(os.path.join(REPO, 'vaes', 'data', 'files', 'jsb_chorales_quarter.pkl'), tmp_path)
  with open(tmp_path / 'jsb_chorales_quarter.pkl', 'ab') as f:
    f.write(b'\0')
  with pytest.raises(DataError, match='sha256 .* expected be67b1e1.*git checkout'):
    data_lib.get_datasets(jsb_config(), 0, 1)


def test_local_loaders_do_not_import_tensorflow():
  code = ('import sys; from tests.helpers import load_config; from vaes import data\n'
          "for path in ('configs/lvae_mnist.py', 'configs/vae_mnist.py', 'configs/vrnn_jsb.py'):\n"
          '  c = load_config(path, {"batch_size": 16, "eval.batch_size": 16})\n'
          '  next(data.get_datasets(c, 0, 1).train.iterate(0))\n'
          "print(sorted(m for m in sys.modules if m.split('.')[0] in "
          "('tensorflow', 'tensorflow_datasets')))")
  proc = subprocess.run([PYTHON, '-c', code], cwd=REPO, env=subprocess_env(), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip().splitlines()[-1] == '[]'


def test_training_order_is_one_seeded_permutation_per_epoch_in_any_step_order():
  """The epoch's order is drawn once and kept (ArrayTrainSource._permutation); a step's
  indices stay default_rng([seed, epoch])'s, whatever step was asked for before it (a
  resumed run starts anywhere), and the kept order cannot be written through them."""
  n, b, seed = 10, 3, 7   # 3 steps per epoch, the tenth example dropped
  source = ArrayTrainSource({'x': np.arange(n)}, b, seed)
  for step in [4, 5, 0, 8, 3, 1, 7, 2, 6, 5, 0]:
    epoch, pos = divmod(step, 3)
    expected = np.random.default_rng([seed, epoch]).permutation(n)[pos * b:(pos + 1) * b]
    np.testing.assert_array_equal(source.global_indices(step), expected)
    np.testing.assert_array_equal(source.batch(step)['x'], expected)
  epoch_1 = np.concatenate([source.global_indices(s) for s in (3, 4, 5)])
  assert len(set(epoch_1.tolist())) == 9
  with pytest.raises(ValueError, match='read-only'):
    source.global_indices(0)[0] = 0
