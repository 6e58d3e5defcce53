"""The entry points import the families (the registry imports none); so do the tests.

One persistent JAX compilation cache for the whole test session: most tests compile the
same few tiny programs (in this process, in xdist workers and in the train.py/eval.py
subprocesses they start), and on a 2-core CPU compiling is most of a test's time. A cached
executable is the one XLA compiled, so the numbers are the same. The cache lives in a
temporary folder made by the first pytest process (xdist workers and subprocesses inherit
it through the environment) and removed when that process exits. Set
JAX_COMPILATION_CACHE_DIR yourself to use another folder, or to '' to compile everything.
"""

import atexit
import os
import shutil
import tempfile

if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache = tempfile.mkdtemp(prefix='vaes-tests-jax-cache-')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')

import vaes.families  # noqa: E402,F401  (after the cache settings: JAX reads them at import)
