"""Sequence datasets: Bach chorales from music21, polyphonic-music pickles (and the SRNN
repository's .npz files of the same music), a synthetic series.

Every builder here returns batches

    {'x': float32 (B, T, P), 'mask': float32 (B, T)}

where T is a fixed padded length, P = 88 piano keys (MIDI 21..108, binary) for
music and the series dimension for the synthetic series, and mask[b, t] = 1 on
real frames, 0 on padding (padding is always at the end). Eval batches also
carry the per-example boolean 'valid' of `ArrayEvalSource`.

`config.data.eval_split` ('valid' | 'test' | 'train') chooses the evaluation split.
`config.data.max_len` > 0 cuts longer sequences into consecutive pieces of at
most max_len frames (each piece an example); 0 keeps whole sequences. Each split
is padded to its own longest piece. `info` carries likelihood ('bernoulli' |
'gaussian'), shape (T, P) and max_len of the training split, and frame counts.
"""

import os
import pickle
import tempfile

import numpy as np

from vaes.data.core import register
from vaes.data.core import (ArrayEvalSource, ArrayTrainSource, DataError, DataInfo, Splits,
                            eval_split_name)

NUM_KEYS = 88
LOWEST_MIDI = 21          # A0; the 88 keys are MIDI 21..108
CHORALES_CACHE_VERSION = 1
CHORALE_SPLIT_FRACTIONS = (0.6, 0.2, 0.2)   # by chorale, permutation with seed 0


# ----------------------------------------------------------------------------
# Shared: piano rolls, padding, sources.
# ----------------------------------------------------------------------------


def pitches_to_roll(frames, where=''):
  """A sequence of frames, each an iterable of active MIDI pitches -> (T, 88) float32 {0,1}."""
  roll = np.zeros((len(frames), NUM_KEYS), np.float32)
  for t, frame in enumerate(frames):
    if not isinstance(frame, (list, tuple, set, frozenset, np.ndarray)):
      raise DataError(f'{where}: frame {t} is {frame!r}, not a list of MIDI pitches (an empty '
                      'list is a rest).')
    for pitch in frame:
      try:
        value = float(pitch)
      except (TypeError, ValueError):
        value = float('nan')
      if not np.isfinite(value):
        raise DataError(f'{where}: frame {t} holds {pitch!r}, not a MIDI pitch number '
                        f'({LOWEST_MIDI}..{LOWEST_MIDI + NUM_KEYS - 1}).')
      key = int(round(value)) - LOWEST_MIDI
      if not 0 <= key < NUM_KEYS:
        raise DataError(f'{where}: MIDI pitch {pitch} at frame {t} is outside the 88 piano '
                        f'keys {LOWEST_MIDI}..{LOWEST_MIDI + NUM_KEYS - 1}.')
      roll[t, key] = 1.0
  return roll


def cut_sequences(seqs, max_len):
  """Cuts each (T_i, P) sequence into consecutive pieces of at most max_len frames (0: keep)."""
  if not max_len:
    return list(seqs)
  out = []
  for s in seqs:
    for start in range(0, len(s), max_len):
      out.append(s[start:start + max_len])
  return out


def pad_sequences(seqs):
  """List of (T_i, P) -> x (N, T, P) zero-padded at the end to the longest, T = max T_i, and
  mask (N, T) float32."""
  length, dim = max(len(s) for s in seqs), seqs[0].shape[-1]
  x = np.zeros((len(seqs), length, dim), np.float32)
  mask = np.zeros((len(seqs), length), np.float32)
  for i, s in enumerate(seqs):
    x[i, :len(s)] = s
    mask[i, :len(s)] = 1.0
  return x, mask


def frame_statistics(x, mask):
  """Per-dimension statistics of the real frames (mask 1) of a split, for baselines:
  'train_frame_count', 'train_frame_sum' and 'train_frame_var' ((P,) float32)."""
  frames = x[mask > 0]
  return {'train_frame_count': int(len(frames)), 'train_frame_sum': frames.sum(0),
          'train_frame_var': frames.var(0)}


TRANSPOSE_TAG = 1 << 23   # in the seed of the transposition draws: [seed, TRANSPOSE_TAG, step]


def transpose_rolls(x, mask, semitones, u):
  """Each piece of x (B, T, 88) moved by s semitones, s uniform (from u (B,) in [0, 1)) over
  the whole numbers in [-semitones, semitones] that keep every note of its real frames
  (mask (B, T)) on the keys; a piece without notes stays."""
  keys = np.arange(x.shape[-1])
  played = (x * mask[..., None]).max(1) > 0                          # (B, P)
  any_note = played.any(1)
  lowest = np.where(any_note, np.where(played, keys, NUM_KEYS).min(1), 0)
  highest = np.where(any_note, np.where(played, keys, 0).max(1), NUM_KEYS - 1)
  low = np.maximum(-semitones, -lowest)
  high = np.minimum(semitones, NUM_KEYS - 1 - highest)
  shift = low + np.floor(u * (high - low + 1)).astype(int)
  source = keys[None, :] - shift[:, None]                             # (B, P)
  on = (source >= 0) & (source < NUM_KEYS)
  moved = np.take_along_axis(x, source.clip(0, NUM_KEYS - 1)[:, None, :], axis=2)
  return (moved * on[:, None, :]).astype(x.dtype)


class TransposedTrainSource(ArrayTrainSource):
  """ArrayTrainSource of piano rolls whose batches are moved by `transpose_rolls`
  (config.data.transpose = semitones): data augmentation. The uniforms of a step are drawn
  for the whole global batch from default_rng([seed, TRANSPOSE_TAG, step]) and each process
  keeps its rows, so a batch is a function of (seed, step, position in the global batch): a
  resumed run draws the same shifts, and N processes together see the batch one would."""

  def __init__(self, arrays, global_batch_size, seed, process_index, process_count, semitones):
    super().__init__(arrays, global_batch_size, seed, process_index, process_count)
    self.semitones = semitones

  def batch(self, step: int) -> dict:
    out = super().batch(step)
    u = np.random.default_rng([self.seed, TRANSPOSE_TAG, step]).random(self.global_batch_size)
    lo = self.process_index * self.local_batch_size
    u = u[lo:lo + self.local_batch_size]
    return {**out, 'x': transpose_rolls(out['x'], out['mask'], self.semitones, u)}


def make_sequence_splits(config, splits, process_index, process_count, likelihood, extra_info=None):
  """splits: {'train'|'valid'|'test': list of (T_i, P) float32} -> Splits with padded arrays.

  The training split is padded to its longest piece after cutting to config.data.max_len,
  the evaluation split to its own (the scans run over the padded length, so padding one
  split to another's longest only costs time); info.shape and max_len are the training
  split's, the length of samples drawn from the model.
  """
  max_len = int(config.data.max_len)
  if max_len < 0:
    raise DataError(f'config.data.max_len={max_len}: must be 0 (pad to the longest) or positive.')
  eval_split = eval_split_name(config)
  pieces = {k: [s for s in cut_sequences(v, max_len) if len(s)] for k, v in splits.items()}
  for k in ('train', eval_split):
    if not pieces.get(k):
      raise DataError(f"The '{k}' split of config.data.name='{config.data.name}' is empty.")
  x_train, m_train = pad_sequences(pieces['train'])
  x_eval, m_eval = pad_sequences(pieces[eval_split])
  semitones = config.data.transpose
  if isinstance(semitones, bool) or not isinstance(semitones, int) or semitones < 0:
    raise DataError(f'config.data.transpose={semitones!r}: must be a whole number of semitones '
                    '>= 0 (0 = off).')
  if semitones and (likelihood != 'bernoulli' or x_train.shape[-1] != NUM_KEYS):
    raise DataError(f'config.data.transpose={semitones} moves piano rolls of {NUM_KEYS} keys; '
                    f"config.data.name='{config.data.name}' has {x_train.shape[-1]} "
                    f"{likelihood} values per frame: set config.data.transpose=0.")
  arrays = {'x': x_train, 'mask': m_train}
  train = (TransposedTrainSource(arrays, config.batch_size, config.seed, process_index,
                                 process_count, semitones) if semitones else
           ArrayTrainSource(arrays, config.batch_size, config.seed, process_index, process_count))
  evals = ArrayEvalSource({'x': x_eval, 'mask': m_eval}, config.eval.batch_size,
                          process_index, process_count)
  info = DataInfo(
      kind='sequence',
      likelihood=likelihood,
      shape=x_train.shape[1:],
      max_len=x_train.shape[1],
      num_train=len(x_train),
      num_eval=len(x_eval),
      steps_per_epoch=train.steps_per_epoch,
      train_frames=int(m_train.sum()),
      eval_frames=int(m_eval.sum()),
      eval_split=eval_split,
      train_variance=float(x_train[m_train > 0].var()),
      **frame_statistics(x_train, m_train),
      **(extra_info or {}),
  )
  return Splits(train, evals, info)


# ----------------------------------------------------------------------------
# Bach chorales shipped with music21.
# ----------------------------------------------------------------------------


def _cache_dir(config):
  d = config.data.cache_dir or os.path.join(os.path.expanduser('~'), '.cache', 'vaes')
  try:
    os.makedirs(d, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=d)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise DataError(f"config.data.cache_dir='{d}' is not a writable folder ({e.strerror or e}); "
                    'set --config.data.cache_dir to one, e.g. ~/.cache/vaes.') from e
  return d


def chorale_to_roll(score):
  """A music21 score -> (T, 88) binary roll on a quarter-note grid.

  Frame t holds every pitch sounding at quarter offset t (onset <= t < onset +
  duration), as in the standard JSB rolls; notes between beats are not sampled.
  """
  length = int(np.ceil(float(score.highestTime) - 1e-6))
  frames = [set() for _ in range(max(length, 0))]
  for n in score.flatten().notes:
    start, end = float(n.offset), float(n.offset) + float(n.quarterLength)
    first = int(np.ceil(start - 1e-6))
    for t in range(first, min(int(np.ceil(end - 1e-6)), length)):
      frames[t].update(p.midi for p in n.pitches)
  return pitches_to_roll(frames, where=str(getattr(score, 'filePath', 'chorale')))


def build_chorale_rolls(limit=0):
  """The Riemenschneider chorales in music21's corpus (the first `limit` of them if
  limit > 0) -> (names, list of (T_i, 88) rolls)."""
  try:
    from music21 import corpus
  except ImportError as e:
    raise DataError('config.data.name=chorales needs the music21 package '
                    '(pip install music21).') from e
  names, rolls = [], []
  files = list(corpus.chorales.Iterator(numberingSystem='riemenschneider', returnType='filename'))
  for name in files[:limit] if limit > 0 else files:
    roll = chorale_to_roll(corpus.parse(name))
    if len(roll) and roll.sum() > 0:
      names.append(str(name))
      rolls.append(roll)
  if not rolls:
    raise DataError('music21 returned no Bach chorales; is its corpus installed?')
  return names, rolls


def load_chorale_rolls(cache_dir, limit=0):
  """Cached (names, rolls); the first call parses the corpus (1-3 minutes on 2 cores) and
  writes `chorales_v{CHORALES_CACHE_VERSION}.npz` (`..._first{limit}.npz` for a subset)
  atomically, later calls read it."""
  suffix = f'_first{limit}' if limit > 0 else ''
  path = os.path.join(cache_dir, f'chorales_v{CHORALES_CACHE_VERSION}{suffix}.npz')
  if os.path.exists(path):
    with np.load(path) as f:
      names, flat, lengths = list(f['names']), f['rolls'], f['lengths']
    bounds = np.cumsum(np.concatenate([[0], lengths]))
    return names, [flat[a:b].astype(np.float32) for a, b in zip(bounds[:-1], bounds[1:])]
  names, rolls = build_chorale_rolls(limit)
  fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix='.npz')
  os.close(fd)
  np.savez_compressed(tmp, names=np.array(names), lengths=np.array([len(r) for r in rolls]),
                      rolls=np.concatenate(rolls).astype(np.uint8))
  os.replace(tmp, path)
  return names, rolls


def split_by_chorale(rolls, fractions=CHORALE_SPLIT_FRACTIONS, seed=0):
  """Fixed train/valid/test split of whole chorales by a permutation with a fixed seed."""
  perm = np.random.default_rng(seed).permutation(len(rolls))
  n_train = int(round(fractions[0] * len(rolls)))
  n_valid = int(round(fractions[1] * len(rolls)))
  idx = {'train': perm[:n_train], 'valid': perm[n_train:n_train + n_valid],
         'test': perm[n_train + n_valid:]}
  return {k: [rolls[i] for i in sorted(v)] for k, v in idx.items()}


@register('chorales')
def chorales(config, process_index, process_count):
  eval_split_name(config)
  limit = int(config.data.num_chorales)
  if limit < 0 or 0 < limit < 5:
    raise DataError(f'config.data.num_chorales={limit}: use 0 (all) or at least 5, so that '
                    'each of train/valid/test gets a chorale.')
  names, rolls = load_chorale_rolls(_cache_dir(config), limit)
  splits = split_by_chorale(rolls)
  return make_sequence_splits(config, splits, process_index, process_count, 'bernoulli',
                              {'num_chorales': len(names), 'source': 'music21 corpus'})


# ----------------------------------------------------------------------------
# The standard polyphonic-music pickles (Boulanger-Lewandowski et al. 2012).
# ----------------------------------------------------------------------------

PICKLE_HELP = (
    'It is the pickle of Boulanger-Lewandowski et al. (ICML 2012): a dict with keys '
    "'train', 'valid', 'test', each a list of sequences, each a list of frames of active MIDI "
    'pitches 21..108. Download e.g. "JSB Chorales.pickle" (or Nottingham, MuseData, '
    'Piano-midi.de) from http://www-etud.iro.umontreal.ca/~boulanni/icml2012 and set '
    '--config.data.path=/path/to/JSB_Chorales.pickle (or a .npz of the SRNN repository, '
    'github.com/marcofraccaro/srnn, data/jsb_raw_batchsize16_seqlen100.npz).')
SRNN_NPZ_KEYS = ('x_train', 'x_valid', 'x_test', 'mask_test')


def load_polyphonic_pickle(path):
  """The pickle at `path` -> {'train'|'valid'|'test': list of (T_i, 88) rolls}; a path
  ending in .npz is read by `load_srnn_npz`."""
  if not path:
    raise DataError('config.data.path is empty: polyphonic_pickle needs the path of a '
                    'polyphonic-music pickle. ' + PICKLE_HELP)
  if not os.path.exists(path):
    raise DataError(f"config.data.path='{path}' does not exist. " + PICKLE_HELP)
  if not os.path.isfile(path):
    raise DataError(f"config.data.path='{path}' is a directory, not the pickle file: name the "
                    'file itself. ' + PICKLE_HELP)
  if path.endswith('.npz'):
    return load_srnn_npz(path)
  with open(path, 'rb') as f:
    try:
      data = pickle.load(f)
    except UnicodeDecodeError:
      f.seek(0)
      data = pickle.load(f, encoding='latin1')   # the files were written by Python 2
    except Exception as e:
      raise DataError(f"config.data.path='{path}' is not a readable pickle ({e}). "
                      + PICKLE_HELP) from e
  if not isinstance(data, dict) or not all(k in data for k in ('train', 'valid', 'test')):
    keys = sorted(data) if isinstance(data, dict) else type(data).__name__
    raise DataError(f"config.data.path='{path}' holds {keys}, not a dict with 'train', "
                    "'valid', 'test'. " + PICKLE_HELP)
  return {k: [pitches_to_roll(seq, where=f'{path} [{k}][{i}]') for i, seq in enumerate(data[k])]
          for k in ('train', 'valid', 'test')}


def load_srnn_npz(path):
  """The music files of the SRNN repository (Fraccaro et al. 2016, github.com/marcofraccaro/
  srnn, data/<set>_raw_batchsize16_seqlen100.npz) -> {'train'|'valid'|'test': list of (T_i, 88)
  rolls}. x_train and x_valid are (N, 100, 88) pieces whose frames are all real (the authors
  train and validate on them unmasked); x_test is (N, T, 88) whole sequences, mask_test (N, T)
  marking each one's first T_i frames (rows without a frame, the authors' batch padding, are
  dropped). Their JSB is on an eighth-note grid: 9,396 test frames for the 77 chorales that
  the quarter-note pickle gives 4,725, so per-frame numbers differ between the two grids."""
  try:
    with np.load(path) as f:
      missing = [k for k in SRNN_NPZ_KEYS if k not in f.files]
      arrays = {} if missing else {k: np.asarray(f[k], np.float32) for k in SRNN_NPZ_KEYS}
  except Exception as e:   # np.load: not a zip, a truncated file, a pickled object array
    raise DataError(f"config.data.path='{path}' is not a readable .npz ({e}). "
                    + PICKLE_HELP) from e
  if missing:
    raise DataError(f"config.data.path='{path}' has no {missing}: the SRNN repository's "
                    f'files hold {list(SRNN_NPZ_KEYS)}. ' + PICKLE_HELP)
  mask = arrays['mask_test']
  if mask.shape != arrays['x_test'].shape[:2]:
    raise DataError(f"config.data.path='{path}': mask_test is {mask.shape}, x_test "
                    f"{arrays['x_test'].shape}: the mask needs one entry per test frame.")
  lengths = mask.sum(1).astype(int)
  prefix = np.arange(mask.shape[1])[None, :] < lengths[:, None]
  if not np.array_equal(mask > 0, prefix):
    raise DataError(f"config.data.path='{path}': mask_test is not 1 on a prefix of each row "
                    'and 0 after it, as the SRNN repository writes it.')
  for k in ('x_train', 'x_valid', 'x_test'):
    x = arrays[k]
    if x.ndim != 3 or x.shape[-1] != NUM_KEYS or not np.isin(x, (0.0, 1.0)).all():
      raise DataError(f"config.data.path='{path}': {k} is {x.shape} {x.dtype}, not "
                      f'(N, T, {NUM_KEYS}) binary piano rolls.')
  return {'train': list(arrays['x_train']), 'valid': list(arrays['x_valid']),
          'test': [x[:n] for x, n in zip(arrays['x_test'], lengths) if n]}


@register('polyphonic_pickle')
def polyphonic_pickle(config, process_index, process_count):
  eval_split_name(config)   # fail on a bad eval_split before reading anything
  path = config.data.path
  splits = load_polyphonic_pickle(path)
  return make_sequence_splits(config, splits, process_index, process_count, 'bernoulli',
                              {'source': path})


# ----------------------------------------------------------------------------
# A synthetic real-valued series (for the Gaussian likelihood).
# ----------------------------------------------------------------------------


def synthetic_series(seed, num, length, dim, min_len=None, noise=0.1):
  """`num` sequences of (T_i, dim) float32, T_i uniform in [min_len, length].

  Each sequence is a noisy sum of two sinusoids per channel whose frequencies,
  phases and amplitudes are drawn per sequence, with a slow random-walk drift:
  x_t = sum_j a_j sin(w_j t + phi_j) + d_t + noise * e_t. The per-sequence
  parameters are the structure a latent variable model can pick up from x_<t.
  """
  rng = np.random.default_rng(seed)
  min_len = min_len or length
  out = []
  t = np.arange(length, dtype=np.float64)[:, None, None]
  for _ in range(num):
    n = int(rng.integers(min_len, length + 1))
    freq = rng.uniform(0.05, 0.4, (1, 2, dim))
    phase = rng.uniform(0, 2 * np.pi, (1, 2, dim))
    amp = rng.uniform(0.3, 1.0, (1, 2, dim))
    x = (amp * np.sin(freq * t + phase)).sum(1)
    x += np.cumsum(rng.normal(0, 0.05, (length, dim)), axis=0)
    x += noise * rng.normal(size=(length, dim))
    out.append(x[:n].astype(np.float32))
  return out


@register('synthetic_series')
def synthetic_series_builder(config, process_index, process_count):
  d = config.data
  seed = int(d.series_seed)
  length, dim = int(d.series_length), int(d.series_dim)
  min_len = int(d.series_min_length) or length // 2
  counts = {'train': int(d.num_train), 'valid': int(d.num_valid), 'test': int(d.num_test)}
  if min_len < 1 or min_len > length:
    raise DataError(f'config.data.series_min_length={min_len}: must lie in 1..{length}.')
  splits = {k: synthetic_series([seed, i], n, length, dim, min_len, float(d.series_noise))
            for i, (k, n) in enumerate(counts.items())}
  return make_sequence_splits(config, splits, process_index, process_count, 'gaussian',
                              {'source': f'synthetic_series seed={seed}'})
