"""Where a test lives (a newcomer should be able to guess):

- tests/test_<module>.py tests vaes/<module>.py: test_train (the train step, the loop,
  resume, steps per dispatch), test_checkpoint, test_selection, test_sweep, test_collect,
  test_curves, test_registry (a family defined in the test, through the engine),
  test_provenance, test_fs, test_workdir_lock, test_xla_options, test_quantizers (with
  vaes/codebook.py and vaes/scalar_quantizers.py), test_layers (vaes/models/layers.py);
  tests/test_data_<source>.py tests vaes/data/<source>.py (local, mnist, tfds, music).
- tests/test_<family>.py tests one model family end to end: its Linen model, its family
  module and its configs (test_vqvae, test_vqvae2, test_vq_prior, test_ladder, test_vrae);
  test_<family>_engine.py / _conv.py split a family's slow tests off.
- A few files test one concern across modules: test_failures (one-line failures,
  preemption, SIGKILL), test_train_multidevice and test_multiprocess (8 devices, 2
  processes), test_structure (the import graph), test_schema (one config schema),
  test_golden (the golden evaluations of tests/golden/: numbers that cannot drift),
  test_table_configs (every results-table config on its real data), test_sample
  (sample.py and every family's sample hook; test_midi: vaes/midi.py), test_observability
  (TensorBoard images, hyper-parameters, profiles), test_benchmark.
- tests/helpers.py holds what several files share (tiny configs, loading a config).

The entry points import the families (the registry imports none); so do the tests.

One persistent JAX compilation cache for the whole test session: most tests compile the
same few tiny programs (in this process, in xdist workers and in the train.py/eval.py
subprocesses they start), and on a 2-core CPU compiling is most of a test's time. A cached
executable is the one XLA compiled, so the numbers are the same. The cache lives in a
temporary folder made by the first pytest process (xdist workers and subprocesses inherit
it through the environment) and removed when that process exits. Set
JAX_COMPILATION_CACHE_DIR yourself to use another folder, or to '' to compile everything.

LLVM's O0 for the programs the tests compile (`--xla_backend_optimization_level=0` in
XLA_FLAGS, inherited by the workers and, through `tests.helpers.subprocess_env`, by the
subprocesses): XLA's HLO passes are the same, only the machine code is not optimised, and a
test's time is mostly compiling (tests/test_vqvae2.py: 189 s at jaxlib's default level, 39 s
at O1, most of it the threefry loops of the initialisers; the whole suite on a quiet 2-core
AMD EPYC, back to back: 1458 s at O1, 1045 s at O0). The engine's initial state, compiled at
O1 otherwise, follows the flag too (vaes/xla_options.py; the suite went from 1273 to 941 s
with that and one trace of the train step instead of two). Values can differ in the last
bits from a default-level build (where LLVM fuses a multiply-add); every comparison in the
tests is between two programs of the same session, or within a tolerance. Set
VAES_TESTS_DEFAULT_OPT=1 to test at jaxlib's default level.
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
_O0 = '--xla_backend_optimization_level=0'
if not os.environ.get('VAES_TESTS_DEFAULT_OPT') and _O0 not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = ' '.join([os.environ.get('XLA_FLAGS', ''), _O0]).strip()

import vaes.families  # noqa: E402,F401  (after the cache settings: JAX reads them at import)


def pytest_configure(config):
  """Every run ends with its 15 slowest tests (unless --durations says otherwise): CI has 30
  minutes on a 2-core machine, and its log then says where they go."""
  if config.option.durations is None:
    config.option.durations = 15
