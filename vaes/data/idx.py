"""The idx format of MNIST, Fashion-MNIST and their kin, read with numpy.

An idx file is a big-endian header, then the array's bytes in row-major order:
2 zero bytes, a dtype code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
0x0E float64), the number of dimensions, then one uint32 size per dimension. Files are
often gzipped (`*-ubyte.gz`); `read_idx` tells the two apart by their first bytes.
"""

import gzip
import hashlib
import os
import zlib

import numpy as np

from vaes.data.core import DataError

DTYPES = {0x08: '>u1', 0x09: '>i1', 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4', 0x0E: '>f8'}
GZIP_MAGIC = b'\x1f\x8b'
DEFAULT_FIX = 'check the path, or fetch the file again (idx files are gzipped or raw)'


def read_idx(path, fix=DEFAULT_FIX, sha256=None) -> np.ndarray:
  """The array in the idx file `path` (gzipped or raw), in native byte order. A missing,
  truncated or malformed file, or one whose decompressed bytes do not have the `sha256`
  given, is a DataError naming `path` and `fix`, the way to repair it."""
  if not os.path.isfile(path):
    raise DataError(f'{path}: no such idx file; {fix}.')
  with open(path, 'rb') as f:
    data = f.read()
  if data[:2] == GZIP_MAGIC:
    try:
      data = gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as e:
      raise DataError(f'{path}: a damaged or truncated gzip file ({e}); {fix}.') from None
  if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
    raise DataError(f'{path}: its decompressed bytes have sha256 '
                    f'{hashlib.sha256(data).hexdigest()}, expected {sha256} (a damaged copy, or '
                    f'not the file this code knows); {fix}.')
  if len(data) < 4 or data[:2] != b'\0\0' or data[2] not in DTYPES or data[3] == 0:
    raise DataError(f'{path}: not an idx file (it starts with bytes {data[:4].hex(" ")}, '
                    f'expected 00 00, a dtype code, a number of dimensions); {fix}.')
  ndim, dtype = data[3], np.dtype(DTYPES[data[2]])
  offset = 4 + 4 * ndim
  if len(data) < offset:
    raise DataError(f'{path}: truncated idx header ({len(data)} bytes, {ndim} dimensions '
                    f'need {offset}); {fix}.')
  shape = tuple(int(s) for s in np.frombuffer(data, '>u4', ndim, 4))
  expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(data) != expected:
    what = 'truncated' if len(data) < expected else 'longer than its header says'
    raise DataError(f'{path}: {what}: {len(data)} bytes, the header {shape} {dtype.name} '
                    f'needs {expected}; {fix}.')
  return np.frombuffer(data, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder('='))
