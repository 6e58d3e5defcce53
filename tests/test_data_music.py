"""Sequence data for the VRAE: piano rolls from music21 and from the polyphonic-music
pickle, padding and masks, the fixed split, the cache, the synthetic series."""

import os
import pickle

import numpy as np
import pytest

from tests.helpers import load_config
from vaes import data as data_lib
from vaes.data import music
from vaes.data.core import DataError


def test_chorale_to_roll_samples_sounding_pitches_on_the_quarter_grid():
  from music21 import chord, note, stream
  part = stream.Part()
  part.append(note.Note('C4', quarterLength=2.0))        # frames 0, 1
  part.append(note.Note('D4', quarterLength=0.5))        # frame 2
  part.append(note.Note('E4', quarterLength=0.5))        # between beats: not sampled
  part.append(note.Rest(quarterLength=1.0))              # frame 3 empty
  part.append(chord.Chord(['A0', 'C8'], quarterLength=1.0))   # frame 4: the extreme keys
  bass = stream.Part()
  bass.append(note.Note('C3', quarterLength=3.0))        # frames 0, 1, 2
  score = stream.Score([part, bass])
  roll = music.chorale_to_roll(score)
  active = [sorted((np.flatnonzero(f) + music.LOWEST_MIDI).tolist()) for f in roll]
  assert roll.shape == (5, 88) and roll.dtype == np.float32
  assert active == [[48, 60], [48, 60], [48, 62], [], [21, 108]]


def pickle_config(overrides=None):
  """configs/vrnn_jsb.py reading a user's pickle (data.path) instead of the bundled JSB."""
  return load_config('configs/vrnn_jsb.py',
                     dict({'data.name': 'polyphonic_pickle'}, **(overrides or {})))


def test_pickle_rolls_padding_masks_and_splits(tmp_path):
  rng = np.random.default_rng(0)
  def seq(n):
    return [sorted(set(rng.integers(21, 109, size=rng.integers(0, 5)).tolist())) for _ in range(n)]
  raw = {'train': [seq(n) for n in (5, 9, 7, 4)], 'valid': [seq(6)], 'test': [seq(3), seq(12)]}
  path = tmp_path / 'tiny.pickle'
  with open(path, 'wb') as f:
    pickle.dump(raw, f)
  overrides = {'data.path': str(path), 'batch_size': 2, 'eval.batch_size': 4}
  splits = data_lib.get_datasets(pickle_config(overrides), 0, 1)
  info = splits.info
  assert info.likelihood == 'bernoulli' and info.shape == (9, 88)   # the longest in train
  assert info.num_train == 4 and info.num_eval == 2 and info.eval_split == 'test'
  batch = next(iter(splits.eval))
  assert batch['x'].shape == (4, 12, 88) and batch['mask'].shape == (4, 12)   # test's own
  assert batch['valid'].tolist() == [True, True, False, False]
  for i, s in enumerate(raw['test']):
    assert batch['mask'][i].sum() == len(s)
    for t, frame in enumerate(s):
      assert (np.flatnonzero(batch['x'][i, t]) + 21).tolist() == frame
    assert not batch['x'][i, len(s):].any()
  train = next(splits.train.iterate(0))
  assert train['x'].shape == (2, 9, 88) and set(np.unique(train['x'])) <= {0.0, 1.0}
  # eval_split chooses the split; max_len cuts into pieces of at most max_len frames.
  valid = data_lib.get_datasets(pickle_config(dict(
      overrides, **{'data.eval_split': 'valid', 'data.max_len': 4})), 0, 1)
  assert valid.info.shape == (4, 88) and valid.info.num_eval == 2   # 6 frames -> 4 + 2
  assert valid.info.train_frames == 25 and valid.info.num_train == 2 + 3 + 2 + 1


def test_missing_or_bad_pickle_gives_a_clear_error(tmp_path):
  missing = str(tmp_path / 'nope' / 'JSB_Chorales.pickle')
  config = pickle_config({'data.path': missing})
  with pytest.raises(DataError, match='does not exist') as err:
    data_lib.get_datasets(config, 0, 1)
  assert missing in str(err.value) and 'icml2012' in str(err.value)
  with pytest.raises(DataError, match='data.path is empty'):
    data_lib.get_datasets(pickle_config(), 0, 1)
  bad = tmp_path / 'bad.pickle'
  with open(bad, 'wb') as f:
    pickle.dump({'train': [[[200]]], 'valid': [[[60]]], 'test': [[[60]]]}, f)
  with pytest.raises(DataError, match='outside the 88 piano keys'):
    data_lib.get_datasets(pickle_config({'data.path': str(bad)}), 0, 1)
  with pytest.raises(DataError, match="eval_split='validation'"):
    data_lib.get_datasets(pickle_config({
        'data.path': str(bad), 'data.eval_split': 'validation'}), 0, 1)


def srnn_npz(path, rng, test_lengths=(7, 3), width=9, **replace):
  """A tiny file in the SRNN repository's format: x/u train and valid pieces of 4 frames,
  x_test rows of `width` frames with mask_test on each one's first test_lengths[i], and one
  all-padding row (the authors pad the test set to whole batches). u is x shifted by one."""
  def rolls(*shape):
    return (rng.random(shape + (88,)) < 0.1).astype(np.float32)
  x_test = rolls(len(test_lengths) + 1, width)
  mask = (np.arange(width)[None] < np.array(list(test_lengths) + [0])[:, None]).astype(np.float32)
  x_test[len(test_lengths)] = 0.0
  arrays = {'x_train': rolls(5, 4), 'x_valid': rolls(2, 4), 'x_test': x_test, 'mask_test': mask}
  for k in ('train', 'valid', 'test'):
    x = arrays['x_' + k]
    arrays['u_' + k] = np.concatenate([np.zeros_like(x[:, :1]), x[:, :-1]], 1)
  arrays['u_test'][len(test_lengths), 0] = np.nan     # as in the authors' file: u is unused
  arrays.update(replace)
  np.savez(path, **arrays)
  return arrays


def test_srnn_repository_npz_reads_pieces_and_whole_test_sequences(tmp_path):
  rng = np.random.default_rng(1)
  path = str(tmp_path / 'jsb_raw_batchsize16_seqlen100.npz')
  arrays = srnn_npz(path, rng)
  rolls = music.load_polyphonic_pickle(path)
  assert [len(rolls[k]) for k in ('train', 'valid', 'test')] == [5, 2, 2]
  np.testing.assert_array_equal(np.stack(rolls['train']), arrays['x_train'])
  np.testing.assert_array_equal(np.stack(rolls['valid']), arrays['x_valid'])
  for roll, row, n in zip(rolls['test'], arrays['x_test'], (7, 3)):
    np.testing.assert_array_equal(roll, row[:n])      # the masked frames, nothing after
  splits = data_lib.get_datasets(pickle_config({'data.path': path, 'batch_size': 2,
                                                'eval.batch_size': 2}), 0, 1)
  assert splits.info.eval_frames == 10 and splits.info.train_frames == 20
  assert splits.info.num_eval == 2 and splits.info.shape == (4, 88)   # the training pieces'
  assert next(iter(splits.eval))['x'].shape == (2, 7, 88)             # the longest test chorale


@pytest.mark.parametrize('replace,message', [
    ({'mask_test': np.ones((2, 9), np.float32)}, 'mask_test is (2, 9), x_test (3, 9, 88)'),
    ({'mask_test': np.tile(np.array([[1, 0, 1, 0, 0, 0, 0, 0, 0]], np.float32), (3, 1))},
     'mask_test is not 1 on a prefix of each row'),
    ({'x_valid': np.full((2, 4, 88), 0.5, np.float32)}, 'x_valid is (2, 4, 88) float32, not'),
    ({'x_train': np.zeros((5, 4, 87), np.float32)}, 'x_train is (5, 4, 87) float32, not'),
])
def test_bad_srnn_npz_is_one_line_naming_the_array(tmp_path, replace, message):
  path = str(tmp_path / 'bad.npz')
  srnn_npz(path, np.random.default_rng(2), **replace)
  with pytest.raises(DataError) as err:
    music.load_polyphonic_pickle(path)
  assert message in str(err.value) and '\n' not in str(err.value)


def test_npz_without_the_srnn_arrays_or_not_a_zip_names_the_format(tmp_path):
  path = tmp_path / 'other.npz'
  np.savez(path, x_train=np.zeros((1, 2, 88)))
  with pytest.raises(DataError, match=r"has no \['x_valid', 'x_test', 'mask_test'\]"):
    music.load_polyphonic_pickle(str(path))
  path.write_bytes(b'not a zip file')
  with pytest.raises(DataError, match="is not a readable .npz") as err:
    music.load_polyphonic_pickle(str(path))
  assert 'marcofraccaro/srnn' in str(err.value)


def test_chorales_split_by_chorale_and_cache(tmp_path, monkeypatch):
  overrides = {'data.num_chorales': 10, 'data.cache_dir': str(tmp_path), 'batch_size': 4,
               'eval.batch_size': 4, 'data.max_len': 32}
  config = load_config('configs/vrae.py', overrides)
  splits = data_lib.get_datasets(config, 0, 1)
  assert os.path.exists(tmp_path / f'chorales_v{music.CHORALES_CACHE_VERSION}_first10.npz')
  info = splits.info
  assert info.num_chorales == 10 and info.shape == (32, 88)
  x, mask = splits.train.arrays['x'], splits.train.arrays['mask']
  assert set(np.unique(x)) <= {0.0, 1.0} and x.dtype == np.float32
  assert not x[mask == 0].any()                       # padding is empty
  active = x[mask > 0].sum(-1)
  assert 3.0 < active.mean() < 5.0                    # four voices, the odd rest or unison
  # The second build reads the cache instead of parsing the corpus.
  def no_parse(*a, **k):
    raise AssertionError('parsed the corpus again')
  monkeypatch.setattr(music, 'build_chorale_rolls', no_parse)
  again = data_lib.get_datasets(config, 0, 1)
  np.testing.assert_array_equal(again.train.arrays['x'], x)
  # The split is fixed and by whole chorales: the three parts partition the chorales.
  rolls = [np.ones((n, 88), np.float32) * n for n in range(1, 21)]
  parts = music.split_by_chorale(rolls)
  ids = {k: sorted(int(r[0, 0]) for r in v) for k, v in parts.items()}
  assert sorted(sum(ids.values(), [])) == list(range(1, 21))
  assert [len(v) for v in ids.values()] == [12, 4, 4]
  assert music.split_by_chorale(rolls)['test'][0][0, 0] == parts['test'][0][0, 0]


def test_synthetic_series_is_a_function_of_the_seed():
  config = load_config('configs/vrae_series.py', {'data.num_train': 64, 'data.num_valid': 8,
                                                  'data.num_test': 8, 'eval.batch_size': 8})
  a = data_lib.get_datasets(config, 0, 1)
  b = data_lib.get_datasets(config, 0, 1)
  np.testing.assert_array_equal(a.train.arrays['x'], b.train.arrays['x'])
  assert a.info.likelihood == 'gaussian' and a.info.shape == (64, 3)
  lengths = a.train.arrays['mask'].sum(1)
  assert lengths.min() >= 32 and lengths.max() <= 64 and len(set(lengths.tolist())) > 5
  config.data.series_seed = 1
  c = data_lib.get_datasets(config, 0, 1)
  assert not np.allclose(c.train.arrays['x'], a.train.arrays['x'])


def jsb_config(overrides=None):
  return load_config('configs/vrnn_jsb.py', dict({'batch_size': 16}, **(overrides or {})))


def test_transposition_moves_each_piece_by_a_drawn_shift_kept_on_the_keys():
  plain = data_lib.get_datasets(jsb_config(), 0, 1).train
  moved = data_lib.get_datasets(jsb_config({'data.transpose': 5}), 0, 1).train
  shifts = []
  for step in range(40):
    a, b = plain.batch(step), moved.batch(step)
    np.testing.assert_array_equal(a['mask'], b['mask'])
    np.testing.assert_array_equal(b['x'], moved.batch(step)['x'])       # a resume repeats it
    for x, y in zip(a['x'], b['x']):
      # Brute force: the one shift in [-5, 5] that turns x into y, every note kept.
      found = [s for s in range(-5, 6)
               if x.sum() == y.sum() and np.array_equal(np.roll(x, s, axis=-1), y)
               and not (x[:, -s:].any() if s > 0 else x[:, :-s].any() if s < 0 else False)]
      assert len(found) == 1
      shifts.append(found[0])
  assert set(shifts) == set(range(-5, 6))       # every shift is drawn (440 pieces)
  assert abs(np.mean(shifts)) < 0.6
  assert plain.batch(0)['x'].sum() == moved.batch(0)['x'].sum()


def test_transposition_splits_across_processes_as_one_process_draws_it():
  one = data_lib.get_datasets(jsb_config({'data.transpose': 5}), 0, 1).train
  halves = [data_lib.get_datasets(jsb_config({'data.transpose': 5}), i, 2).train
            for i in range(2)]
  for step in (0, 7):
    joined = np.concatenate([h.batch(step)['x'] for h in halves])
    np.testing.assert_array_equal(joined, one.batch(step)['x'])


def test_transposition_keeps_a_piece_at_the_top_of_the_keyboard_on_it():
  x = np.zeros((3, 4, music.NUM_KEYS), np.float32)
  x[0, 1, [85, 87]] = 1.0      # the top key: it can only move down
  x[1, 2, [0, 3]] = 1.0        # the bottom key: only up
  mask = np.ones((3, 4), np.float32)                 # piece 2: no notes, stays
  for seed in range(50):
    y = music.transpose_rolls(x, mask, 4, np.random.default_rng(seed).random(3))
    assert y.sum() == x.sum() and not y[2].any()
    top = np.flatnonzero(y[0, 1])
    assert top[1] - top[0] == 2 and 83 <= top[1] <= 87
    bottom = np.flatnonzero(y[1, 2])
    assert bottom[1] - bottom[0] == 3 and 0 <= bottom[0] <= 4


@pytest.mark.parametrize('overrides,message', [
    ({'data.transpose': -2}, 'config.data.transpose=-2: must be a whole number of semitones'),
    ({'data.transpose': 3, 'data.name': 'synthetic_series', 'model.likelihood': 'gaussian'},
     'config.data.transpose=3 moves piano rolls of 88 keys'),
])
def test_bad_transposition_is_one_line(overrides, message):
  with pytest.raises(DataError) as err:
    data_lib.get_datasets(jsb_config(overrides), 0, 1)
  assert message in str(err.value) and '\n' not in str(err.value)
