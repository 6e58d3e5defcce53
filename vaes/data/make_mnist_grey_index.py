"""Finds the grey MNIST source of every image of the static binarized_mnist file, and writes
vaes/data/files/binarized_mnist_grey_index.npz (int32 train (50000,), valid (10000,),
test (10000,)): the index of each binary image's source among the 60,000 grey training
images (train, valid) or the 10,000 grey test images (test). Dynamic binarisation of
binarized_mnist (vaes/data/local.py) trains on Bernoulli samples of these sources.

Run once, in the repository root (a minute or a few on two cores):

  nice .venv/bin/python -m vaes.data.make_mnist_grey_index

then put the sha256 it prints in GREY_INDEX_SHA256 of vaes/data/local.py. The output is
byte-reproducible (fixed zip timestamps), so a re-run gives the same sha256.

test: the file's test split is the grey test set sorted stably by label, so its index is
the stable argsort of the labels. train, valid (no labels): each binary image b is scored
against every grey training image g by the Bernoulli log-likelihood
  score(b, g) = sum_j b_j log p_j + (1 - b_j) log(1 - p_j),  p = clip(g / 255, 1e-3, 1 - 1e-3)
              = b . logit(p) + sum_j log(1 - p_j),
float32 matmuls in chunks (about 6e12 flops); its 20 best candidates are rescored exactly
(p = g / 255: a 1 where g = 0 or a 0 where g = 255 is impossible, and the file is exactly
Bernoulli(g / 255) of its sources), and the sources are the assignment (each grey image used
once) of greatest total exact log-likelihood. The best score alone is not enough: thin
'1's are so alike that on the test split the best clipped score picks a wrong '1' for 9
of the 10,000 images, and the best exact score for 8; the assignment recovers all 10,000,
and is checked to do so (same method, test split against the label sort) on every run.
On train + valid (six times the look-alikes) the pairwise odds of the assignment against
swapping two sources put about 10 of its pairs (all '1's) swapped, about 3 of them across
train / valid: harmless for training, and the test split is exact.
Checks before writing: the 60,000 train + valid indices are a permutation of 0..59999, and
no binary pixel of any image of any split is 1 where its source is 0. Prints, per split,
how clear the matches were (margins between the best and the second-best scores).
"""

import hashlib
import io
import os
import time
import zipfile

import numpy as np

from vaes.data import local

EPS = 1e-3
CHUNK = 1000
TOP_K = 20
OUTPUT = os.path.join(local.FILES_DIR, 'binarized_mnist_grey_index.npz')


def candidates(binary, grey, k=TOP_K):
  """The `k` rows of `grey` (M, 784) uint8 of best clipped score for each row of `binary`
  (N, 784) {0, 1}, best first, and the margin of the best score over the second best."""
  p = np.clip(grey.astype(np.float32) / 255.0, EPS, 1.0 - EPS)
  logit_t = np.ascontiguousarray((np.log(p) - np.log1p(-p)).T)   # (784, M)
  bias = np.log1p(-p).sum(1, dtype=np.float32)                     # (M,)
  top = np.empty((len(binary), k), np.int64)
  margin = np.empty(len(binary), np.float32)
  for lo in range(0, len(binary), CHUNK):
    scores = binary[lo:lo + CHUNK].astype(np.float32) @ logit_t
    scores += bias
    part = np.argpartition(-scores, k, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, 1)
    order = np.argsort(-part_scores, axis=1, kind='stable')
    top[lo:lo + CHUNK] = np.take_along_axis(part, order, 1)
    best2 = np.take_along_axis(part_scores, order[:, :2], 1)
    margin[lo:lo + CHUNK] = best2[:, 0] - best2[:, 1]
  return top, margin


def exact_scores(binary, grey, top):
  """The unclipped log-likelihood log Bernoulli(b | g / 255) of each candidate, float64:
  -inf where a pixel is 1 with g = 0 or 0 with g = 255 (impossible under the sampling)."""
  v = np.arange(256) / 255.0
  with np.errstate(divide='ignore'):
    log1, log0 = np.log(v), np.log1p(-v)
  out = np.empty(top.shape, np.float64)
  for lo in range(0, len(binary), CHUNK):
    g = grey[top[lo:lo + CHUNK]]                       # (chunk, k, 784)
    b = binary[lo:lo + CHUNK, None, :] > 0
    out[lo:lo + CHUNK] = np.where(b, log1[g], log0[g]).sum(2)
  return out


def match(binary, grey, split):
  """The source of each binary image: the assignment (each grey image used at most once) of
  greatest total exact log-likelihood over the top-k candidates of each image. Prints how
  clear the matches were."""
  from scipy.sparse import csr_matrix
  from scipy.sparse.csgraph import min_weight_full_bipartite_matching
  top, margin = candidates(binary, grey)
  exact = exact_scores(binary, grey, top)
  feasible = np.isfinite(exact)
  if not feasible.any(1).all():
    raise SystemExit(f'{split}: {int((~feasible.any(1)).sum())} images have no possible source '
                     f'among their {TOP_K} best candidates.')
  rows, cols = np.nonzero(feasible)
  # Weights > 0 (a sparse matrix drops zeros); a constant per edge leaves the optimum as is.
  graph = csr_matrix((1e4 - exact[rows, cols], (rows, top[rows, cols])),
                     shape=(len(binary), len(grey)))
  _, source = min_weight_full_bipartite_matching(graph)
  rank = np.argmax(top == source[:, None], axis=1)
  ranked = np.sort(np.where(feasible, exact, -np.inf), axis=1)[:, ::-1]
  exact_margin = ranked[:, 0] - ranked[:, 1]        # inf where one candidate is possible
  single = np.isinf(exact_margin)
  print(f'{split}: clipped score (eps {EPS}): best - second best: min {margin.min():.3f}, '
        f'0.1% {np.quantile(margin, 1e-3):.2f}, median {np.median(margin):.1f} nats; the best '
        f'is the assigned source for {int((rank == 0).sum())} of {len(binary)}', flush=True)
  print(f'{split}: exact log-likelihood: {int(single.sum())} images have one possible source '
        f'among their top {TOP_K}; the others: best - second best min '
        f'{exact_margin[~single].min():.3f}, median {np.median(exact_margin[~single]):.1f} nats; '
        f'the assigned source is the exact best for '
        f'{int((np.argmax(exact, 1) == rank).sum())}; worst rank of an assigned source '
        f'{int(rank.max())}', flush=True)
  swap_report(binary, grey, top, exact, source, split)
  return source


def swap_report(binary, grey, top, exact, source, split):
  """How sure the assignment is: for each image i and possible candidate g' != its source g,
  owned by image i', the gap in log-likelihood between the assignment and the one with g, g'
  swapped. A gap d means odds e^d : 1 for the chosen pair; the sum of 1 / (1 + e^d) over the
  pairs estimates how many pairs are swapped."""
  owner = np.full(len(grey), -1)
  owner[source] = np.arange(len(binary))
  i, k = np.nonzero(np.isfinite(exact) & (top != source[:, None]))
  i2 = owner[top[i, k]]
  keep = i2 >= 0
  i, k, i2 = i[keep], k[keep], i2[keep]
  own = exact[np.arange(len(binary)), np.argmax(top == source[:, None], axis=1)]
  v = np.arange(256) / 255.0
  with np.errstate(divide='ignore'):
    log1, log0 = np.log(v), np.log1p(-v)
  cross = np.empty(len(i))                           # log-likelihood of image i2 under g
  for lo in range(0, len(i), CHUNK * 10):
    sl = slice(lo, lo + CHUNK * 10)
    g = grey[source[i[sl]]]
    cross[sl] = np.where(binary[i2[sl]] > 0, log1[g], log0[g]).sum(1)
  gap = own[i] + own[i2] - exact[i, k] - cross
  pairs = {}
  for a, b, d in zip(i, i2, gap):                  # each pair is seen from both ends
    pairs[min(a, b), max(a, b)] = d
  d = np.array(sorted(pairs.values()))
  print(f'{split}: {len(d)} possible swaps of two sources; smallest gaps '
        f'{", ".join(f"{x:.2f}" for x in d[:4])} nats; {int((d < 1).sum())} under 1 nat, '
        f'{int((d < 3).sum())} under 3; expected swapped pairs {np.sum(1 / (1 + np.exp(d))):.1f}',
        flush=True)


def check_support(binary, grey, split):
  """No binary pixel is 1 where the grey source is 0."""
  bad = ((binary > 0) & (grey == 0)).any(1)
  if bad.any():
    raise SystemExit(f'{split}: {int(bad.sum())} images have a 1 where the grey source is 0 '
                     f'(first: {int(np.flatnonzero(bad)[0])}); the matching is wrong.')


def save_npz(path, arrays):
  """np.savez_compressed, with fixed zip timestamps so that the bytes are reproducible."""
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as z:
    for key, value in arrays.items():
      buf = io.BytesIO()
      np.lib.format.write_array(buf, np.ascontiguousarray(value), allow_pickle=False)
      info = zipfile.ZipInfo(key + '.npy', date_time=(1980, 1, 1, 0, 0, 0))
      info.compress_type = zipfile.ZIP_DEFLATED
      info.external_attr = 0o644 << 16
      z.writestr(info, buf.getvalue())


def main():
  t0 = time.time()
  with np.load(local.local_file('binarized_mnist')) as f:
    static = {k: f[k] for k in ('train', 'valid', 'test')}
  grey_train, _ = local.mnist_grey('train')
  grey_test, labels_test = local.mnist_grey('test')
  grey_train, grey_test = grey_train.reshape(-1, 784), grey_test.reshape(-1, 784)

  test = np.argsort(labels_test, kind='stable')
  check_support(static['test'], grey_test[test], 'test')
  matched = match(static['test'], grey_test, 'test')
  if not np.array_equal(matched, test):
    raise SystemExit(f'test: the matching disagrees with the stable label sort on '
                     f'{int((matched != test).sum())} images.')
  print('test: the matching gives the stable label sort, all 10000 images', flush=True)

  binary = np.concatenate([static['train'], static['valid']])
  matched = match(binary, grey_train, 'train + valid')
  if not np.array_equal(np.sort(matched), np.arange(len(grey_train))):
    raise SystemExit('train + valid: the sources are not a permutation of 0..59999.')
  check_support(binary, grey_train[matched], 'train + valid')
  n = len(static['train'])
  print('train + valid: a permutation of 0..59999; no 1 where the grey source is 0 (any split)')

  save_npz(OUTPUT, {'train': matched[:n].astype(np.int32), 'valid': matched[n:].astype(np.int32),
                    'test': test.astype(np.int32)})
  with open(OUTPUT, 'rb') as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  print(f'wrote {OUTPUT} ({os.path.getsize(OUTPUT)} bytes) in {time.time() - t0:.0f} s')
  print(f'sha256 {digest}  (GREY_INDEX_SHA256 in vaes/data/local.py)')


if __name__ == '__main__':
  main()
