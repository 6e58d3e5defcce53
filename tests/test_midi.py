"""vaes/midi.py: piano rolls written as MIDI files read back (music21's parse) to the same
rolls, held notes and chords included; the same roll gives the same bytes."""

import numpy as np
import pytest

from vaes import midi


@pytest.mark.parametrize('seed,density', [(0, 0.03), (1, 0.1), (2, 0.5)])
def test_a_written_roll_reads_back_the_same(tmp_path, seed, density):
  rng = np.random.default_rng(seed)
  length = int(rng.integers(8, 48))
  roll = (rng.random((length, 88)) < density).astype(np.float32)
  roll[0] = 0                         # a rest first
  roll[:, 40] = 0
  roll[2:9, 40] = 1                   # a note held across others (voices in one part)
  roll[-1, 87] = roll[-1, 0] = 1      # the lowest and highest keys, in the last frame
  path = str(tmp_path / 'roll.mid')
  midi.write_midi(path, roll)
  back = midi.read_roll(path)
  np.testing.assert_array_equal(back[:length], roll)
  assert back[length:].sum() == 0     # at most padding to the end of a bar
  with open(path, 'rb') as f:
    data = f.read()
  midi.write_midi(str(tmp_path / 'again.mid'), roll)
  with open(tmp_path / 'again.mid', 'rb') as f:
    assert f.read() == data


def test_notes_of_a_roll_and_its_shape():
  roll = np.zeros((6, 88), np.float32)
  roll[1:4, 39] = 1.0                 # middle C (MIDI 60) for three quarter notes
  roll[5, 39] = 1.0
  assert midi.roll_notes(roll) == [(1, 4, 39), (5, 6, 39)]
  score = midi.roll_to_score(roll)
  notes = list(score.flatten().notes)
  assert [(float(n.offset), float(n.quarterLength), n.pitch.midi) for n in notes] == [
      (1.0, 3.0, 60), (5.0, 1.0, 60)]
  assert midi.is_piano_roll(88, 'bernoulli') and not midi.is_piano_roll(3, 'gaussian')
  with pytest.raises(ValueError, match='88'):
    midi.roll_notes(np.zeros((4, 12)))
