"""Whether a checkpoint reads back as it was written, and what is done when it does not.

- Checksums: every saved array's blake2b digest (of its dtype, shape and bytes) is kept
  in the checkpoint's meta item; a restored array with another digest is damage.
- Non-finite parameters (params/, model_state/, ema_params/) are never saved, and a
  restored checkpoint holding any is damage.
- Structure: the nesting of a saved tree (empty entries included, not only its array
  paths) against the one a config builds. A difference is a config that differs (a
  ConfigError naming the fields, built by vaes.checkpoint_restore), never damage.
- Damage (`Damaged`): the step is moved to WORKDIR/corrupted_checkpoints/ (`set_aside`,
  never deleted), or, by a read-only reader, reported and left in place (`leave_in_place`).
"""

import hashlib
import logging
import time

import jax
import numpy as np

from vaes import fs


class Damaged(Exception):
  """A checkpoint that does not read back as it was written."""


# ----------------------------------------------------------------------------
# Trees: paths, host copies, checksums.
# ----------------------------------------------------------------------------


def _key_name(k):
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _path(path):
  return '/'.join(_key_name(k) for k in path)


def leaves(tree):
  """{path: leaf} with path strings that agree between a TrainState and the
  dict/list tree Orbax keeps in its metadata."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {_path(p): x for p, x in flat}


def host_array(x):
  """A numpy copy of this process's replica of a (replicated) array."""
  if isinstance(x, jax.Array):
    x = x.addressable_shards[0].data
  return np.asarray(x)


def host_leaves(tree):
  """{path: numpy copy} of the leaves of `tree` (see `leaves`, `host_array`)."""
  return {p: host_array(x) for p, x in leaves(tree).items()}


def _checksum(a):
  h = hashlib.blake2b(digest_size=16)
  h.update(f'{a.dtype.str}{a.shape}'.encode())
  h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def checksums(host):
  """{path: checksum} of {path: numpy array}."""
  return {p: _checksum(a) for p, a in host.items()}


def nonfinite_parameters(host):
  """(number of non-finite values, number of values) under params/ and model_state/."""
  bad = total = 0
  for p, a in host.items():
    if p.split('/')[0] in ('params', 'model_state', 'ema_params') and \
        np.issubdtype(a.dtype, np.floating):
      bad += int(a.size - np.count_nonzero(np.isfinite(a)))
      total += a.size
  return bad, total


def verify(host, expected):
  """The checksums of the restored `host` leaves; raises Damaged when one differs from
  `expected` (the meta item's; None for checkpoints written without) or a parameter is
  NaN/inf."""
  sums = checksums(host)
  if expected is not None:
    wrong = sorted(p for p, c in sums.items() if expected.get(p) != c)
    if wrong:
      raise Damaged(f'checksum mismatch in {len(wrong)} array(s), e.g. {wrong[0]}')
  bad, total = nonfinite_parameters(host)
  if bad:
    raise Damaged(f'{bad:,} of {total:,} parameter values are NaN/inf')
  return sums


# ----------------------------------------------------------------------------
# Structure: nesting, shapes and dtypes, without reading any array.
# ----------------------------------------------------------------------------


def signatures(tree):
  """{path: (shape, dtype name)} of the leaves of `tree` (arrays or their metadata)."""
  return {p: (tuple(int(d) for d in x.shape), np.dtype(x.dtype).name)
          for p, x in leaves(tree).items()}


ABSENT = object()   # no such entry (in structure_diff)


def structure(tree):
  """The nesting of `tree` without its arrays, as Orbax keeps it in a checkpoint's
  metadata: 'array' for a leaf, None for an empty entry (None, (), {}, optax's
  EmptyState), a tuple of the entries of a sequence, a dict of the rest (dicts,
  dataclasses, named tuples) by key. A TrainState and the dict/list tree of a saved
  one give the same structure when they are of the same structure."""
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is not tree)[0]
  if len(flat) == 1 and not flat[0][0]:
    return 'array'
  if not flat:
    return None
  if all(isinstance(p[0], jax.tree_util.SequenceKey) for p, _ in flat):
    return tuple(structure(x) for _, x in flat)
  return {_key_name(p[0]): structure(x) for p, x in flat}


def describe_structure(node):
  """A node of `structure` in words ('an array', 'a list of 3 entries', ...)."""
  if node is ABSENT:
    return 'no such entry'
  if node is None:
    return 'an empty entry'
  if node == 'array':
    return 'an array'
  if isinstance(node, tuple):
    return f'a list of {len(node)} entries'
  keys = sorted(node)
  return f"the fields {', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''}"


def structure_diff(theirs, ours, path=''):
  """[(path, checkpoint's structure, config's structure)] where they differ."""
  if theirs == ours:
    return []
  if isinstance(theirs, dict) and isinstance(ours, dict):
    out = []
    for k in sorted(set(theirs) | set(ours)):
      p = f'{path}/{k}' if path else k
      out += structure_diff(theirs.get(k, ABSENT), ours.get(k, ABSENT), p)
    return out
  if isinstance(theirs, tuple) and isinstance(ours, tuple) and len(theirs) == len(ours):
    out = []
    for i, (a, b) in enumerate(zip(theirs, ours)):
      out += structure_diff(a, b, f'{path}/{i}' if path else str(i))
    return out
  return [(path, theirs, ours)]


def is_structure_error(e):
  """Orbax's ValueError for a restore target of another tree structure than the saved
  one: a config that differs, never damage."""
  return isinstance(e, ValueError) and 'tree structure' in str(e).lower()


# ----------------------------------------------------------------------------
# Damaged steps: set aside or left in place, and said so.
# ----------------------------------------------------------------------------


def set_aside(directory, corrupted_dir, step, reason):
  """Moves the damaged `directory`/`step` to `corrupted_dir`/{step}-{time} (process 0)
  and says so."""
  path = fs.join(directory, str(step))
  target = fs.join(corrupted_dir, f'{step}-{int(time.time())}')
  logging.warning('Checkpoint %s could not be restored (%s).', path, reason)
  if jax.process_index() != 0:
    return
  fs.makedirs(corrupted_dir)
  fs.replace(path, target)
  print(f'WARNING: checkpoint {path} is incomplete or corrupted ({reason}); moved it to '
        f'{target} and falling back to the previous checkpoint.', flush=True)


def leave_in_place(directory, step, reason):
  """Says that the damaged `directory`/`step` is left where it is (a read-only reader)."""
  path = fs.join(directory, str(step))
  logging.warning('Checkpoint %s could not be restored (%s).', path, reason)
  if jax.process_index() == 0:
    print(f'WARNING: checkpoint {path} is incomplete or corrupted ({reason}); left it in '
          'place (reading moves nothing; the next train.py in this workdir sets it aside) '
          'and falling back to the previous checkpoint.', flush=True)


def describe_steps(steps):
  """'step 4' or 'steps 2, 4'."""
  return f'step{"s" if len(steps) > 1 else ""} {", ".join(map(str, sorted(steps)))}'


def first_line(e):
  """The first line of an exception's message (its type when it has none)."""
  return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def reason(e):
  """'Type: first line' of an exception."""
  return f'{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}'
