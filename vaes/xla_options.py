"""Per-backend XLA compiler options of the compiled steps (`config.cpu_convolutions`) and
of the initial state (`init_compiler_options`): the one home of code that depends on the
jaxlib release.

XLA:CPU (jaxlib 0.10 to 0.12) hands every convolution (and its gradients) to YNNPACK as
a fusion of its own. On the CPU workloads of `benchmarks/vs_pytorch.py` XLA's own
convolution kernels are faster: the 32x32 VQ-VAE train step (2 cores, 'subpixel')
took 143 ms with them against 206 ms with YNNPACK's (benchmarks/README.md); matmuls and
reductions stay with YNNPACK, which is the faster for them (turning YNNPACK off altogether slowed
the VRNN step from 400 to 568 ms).

The choice is made per compiled function, through `jax.jit(compiler_options=...)`,
not through XLA_FLAGS: it touches nothing else in the process, applies only to
computations compiled for the CPU, and a jaxlib that does not know the option
raises an error that can be caught (an unknown XLA_FLAGS entry aborts the process).
`compiler_options` tries the option once per process on a tiny computation and
falls back to jaxlib's defaults, with one line saying so, when it is refused.
"""

import functools
import os
import sys

import jax
import jax.numpy as jnp

from vaes.registry import ConfigError

CPU_CONVOLUTIONS = ('xla', 'ynnpack')
# The operations XLA:CPU gives to YNNPACK (the option is accepted and acts the same on
# jaxlib 0.11.2 and 0.12.0.1: tests/test_xla_options.py reads the optimised HLO). jaxlib
# 0.10.2's default is matmuls,
# convolutions and reductions (INDIVIDUAL_DOT, INDIVIDUAL_CONVOLUTION, REDUCE: that
# list compiles the VQ-VAE step to the same HLO as no option); 'xla' keeps the other
# two, and compiles to the same HLO as
# XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution.
_YNN_WITHOUT_CONVOLUTIONS = {
    'xla_cpu_experimental_ynn_fusion_type':
        'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}
# The initial state's: LLVM's O1 (`init_compiler_options`).
_INIT_AT_O1 = {'xla_backend_optimization_level': 1}


def validate(value):
  """ConfigError (one line) for a bad `config.cpu_convolutions`."""
  if value not in CPU_CONVOLUTIONS:
    raise ConfigError(f'config.cpu_convolutions={value!r}: choose one of {CPU_CONVOLUTIONS} '
                      "('xla': XLA's own convolution kernels on the CPU, 'ynnpack': "
                      "jaxlib's default).")


def compiler_options(cpu_convolutions, backend=None):
  """`compiler_options` for `jax.jit` of a step compiled for `backend` (default: JAX's
  default backend): None (jaxlib's defaults) except on the CPU with 'xla'."""
  if (backend or jax.default_backend()) != 'cpu' or cpu_convolutions != 'xla':
    return None
  return _supported(tuple(_YNN_WITHOUT_CONVOLUTIONS.items()))


def init_compiler_options(backend=None):
  """`compiler_options` for `jax.jit` of the initial state (`vaes.train.make_init`): LLVM's
  O1 on the CPU, None elsewhere or where XLA_FLAGS names a level itself (the tests' O0:
  conftest.py), which then holds for the initial state too.

  The initial state is compiled once per run and run once, so its compile time is all
  that counts. XLA:CPU compiles the threefry loop of every initialiser into a kernel of
  its own, which LLVM takes seconds each to optimise at jaxlib's default level: the
  digits VQ-VAE-2's initial state took 55-94 s to compile, 3.4 s at O1 (the VQ-VAE 9.4
  vs 1.7 s, lvae_mnist_dynamic 8.3 vs 5.8 s; 2-core CPU beside a training run). The values
  are the same bits for the VQ-VAEs and sequence models; the Ladder VAE's differ by one
  or two float32 ulps in a few weights (where LLVM fuses a multiply-add in the truncated
  normal): tests/test_xla_options.py."""
  if ((backend or jax.default_backend()) != 'cpu'
      or '--xla_backend_optimization_level=' in os.environ.get('XLA_FLAGS', '')):
    return None
  return None if _refusal(tuple(_INIT_AT_O1.items())) else dict(_INIT_AT_O1)


@functools.cache
def _supported(options):
  """`options` of config.cpu_convolutions='xla' if this jaxlib accepts them, else None
  with one line saying so."""
  refused = _refusal(options)
  if refused:
    print(f"note: this jaxlib ({jax.__version__}) refuses the XLA:CPU option of "
          f"config.cpu_convolutions='xla' ({refused[:160]}); compiling with its defaults, "
          "as with --config.cpu_convolutions=ynnpack.", file=sys.stderr, flush=True)
    return None
  return dict(options)


@functools.cache
def _refusal(options):
  """None if this jaxlib compiles a tiny computation with `options` ((name, value)
  pairs), else the first line of its error."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(
        jnp.zeros((), jnp.float32)).compile()
  except Exception as e:  # pylint: disable=broad-except  (jaxlib's error types vary)
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
  return None
