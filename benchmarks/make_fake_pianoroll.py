"""Writes a random piano-roll pickle in the standard polyphonic-music format
(dict of 'train'/'valid'/'test' lists of sequences of active MIDI pitches), so the
VRAE train step can be benchmarked on any machine without the real JSB file.

  python benchmarks/make_fake_pianoroll.py /tmp/fake_jsb.pkl
"""

import pickle
import sys

import numpy as np


def main(path, num=160, length=1024, seed=0):
  rng = np.random.default_rng(seed)
  def seqs(n):
    return [[sorted(rng.choice(np.arange(21, 109), size=4, replace=False).tolist())
             for _ in range(length)] for _ in range(n)]
  with open(path, 'wb') as f:
    pickle.dump({'train': seqs(num), 'valid': seqs(8), 'test': seqs(8)}, f)


if __name__ == '__main__':
  main(sys.argv[1])
