"""Piano rolls as MIDI files, to hear what a sequence model generated or imputed.

A roll is (T, 88) in [0, 1] on the grid of the data (vaes/data/music.py): frame t is
quarter note t (the JSB chorale grid of `chorale_to_roll`), key k is MIDI pitch
LOWEST_MIDI + k = 21 + k (A0..C8). A key on for frames a..b-1 (value > 0.5) is one note
of b - a quarter notes: a piano roll does not tell a held note from repeated ones, and
the held note is what `chorale_to_roll` reads back as the same frames.

music21 writes the file. Its MIDI reader (music21 10.5) misplaces notes that follow a
note held across them when one part needs voices, so the notes go into the fewest parts
in which no two notes overlap (one MIDI track each; about four for a chorale): then
`read_roll(path)` (music21's parse, then `chorale_to_roll`) gives the roll back, with
silent frames after the last note dropped or padded to the end of a 4/4 bar (a MIDI file
ends with its last note). The tempo is QUARTER_BPM quarter notes a minute.
"""

import numpy as np

from vaes import fs
from vaes.data.music import LOWEST_MIDI, NUM_KEYS, chorale_to_roll

QUARTER_BPM = 80      # a chorale's pace: one frame (a quarter note) is 0.75 s


def is_piano_roll(features, likelihood):
  """Whether frames of `features` values under `likelihood` are the 88 keys of a roll."""
  return likelihood == 'bernoulli' and int(features) == NUM_KEYS


def roll_notes(roll):
  """(start frame, end frame, key) of each note of a (T, 88) roll, sorted by start."""
  on = np.asarray(roll) > 0.5
  if on.ndim != 2 or on.shape[1] != NUM_KEYS:
    raise ValueError(f'A piano roll is (frames, {NUM_KEYS}); got {on.shape}.')
  edges = np.diff(np.pad(on.astype(np.int8), ((1, 1), (0, 0))), axis=0)
  notes = []
  for key in range(NUM_KEYS):
    starts, ends = np.flatnonzero(edges[:, key] == 1), np.flatnonzero(edges[:, key] == -1)
    notes += [(int(a), int(b), key) for a, b in zip(starts, ends)]
  return sorted(notes)


def roll_to_score(roll):
  """A music21 Score of the roll: notes in the fewest parts without overlaps (see the
  module docstring), the tempo in the first."""
  from music21 import note, stream, tempo
  parts = []         # each a list of (start, end, key) that do not overlap
  for start, end, key in roll_notes(roll):
    for part in parts:
      if part[-1][1] <= start:
        part.append((start, end, key))
        break
    else:
      parts.append([(start, end, key)])
  score = stream.Score()
  for i, notes in enumerate(parts or [[]]):
    part = stream.Part()
    if i == 0:
      part.insert(0, tempo.MetronomeMark(number=QUARTER_BPM))
    for start, end, key in notes:
      part.insert(float(start), note.Note(midi=LOWEST_MIDI + key,
                                          quarterLength=float(end - start)))
    score.insert(0, part)
  return score


def write_midi(path, roll):
  """Writes the roll as a MIDI file at `path` (local path or URL); returns `path`.
  The same roll gives the same bytes."""
  from music21 import midi
  data = midi.translate.streamToMidiFile(roll_to_score(roll)).writestr()
  with fs.open(path, 'wb') as f:
    f.write(data)
  return path


def read_roll(path):
  """The (T, 88) roll of a MIDI file (music21's parse, then `chorale_to_roll`)."""
  from music21 import converter
  with fs.open(path, 'rb') as f:
    data = f.read()
  return chorale_to_roll(converter.parse(data, format='midi'))
