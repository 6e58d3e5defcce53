"""config.cpu_convolutions (vaes/xla_options.py): which kernels run the convolutions of
the steps compiled for the CPU, read off the optimised HLO; the same losses either way.
The initial state compiled at LLVM's O1 is the default level's within float32 rounding."""

import re

import jax
import numpy as np
import pytest

from tests.helpers import data_and_trainer, load_config
from vaes import data as data_lib
from vaes import xla_options
from vaes.registry import ConfigError
from vaes.train import build_trainer

VQ = {'batch_size': 16, 'model.hidden': 64, 'model.res_hidden': 16, 'model.num_codes': 16}


def _computations(hlo):
  """{name: body} of every computation in an optimised HLO module's text."""
  found = re.findall(r'^(?:ENTRY )?%(\S+) \(.*?\{\n(.*?)^\}', hlo, re.M | re.S)
  return dict(found)


def _ynn_bodies(hlo):
  """Bodies of the computations XLA:CPU hands to YNNPACK (fusions of kind __ynn_fusion)."""
  bodies = _computations(hlo)
  called = re.findall(r'calls=%([^,\s]+),[^\n]*"__ynn_fusion"', hlo)
  assert called, 'no YNNPACK fusion at all: the matmuls should keep theirs'
  return [bodies[name] for name in called]


def _compiled_step(conv):
  config = load_config('configs/vqvae.py', dict(VQ, cpu_convolutions=conv))
  splits, trainer = data_and_trainer(config)
  return trainer, splits, trainer.train_step.lower(
      trainer.init_fn(), trainer.put(splits.train.batch(0))).compile().as_text()


def test_xla_convolutions_leave_ynnpack_the_matmuls():
  _, _, xla = _compiled_step('xla')
  _, _, ynn = _compiled_step('ynnpack')
  assert len(re.findall(r'= \S+ convolution\(', xla)) >= 10   # forward and both gradients
  assert not [b for b in _ynn_bodies(xla) if ' convolution(' in b]
  assert [b for b in _ynn_bodies(ynn) if ' convolution(' in b]   # jaxlib's default
  assert [b for b in _ynn_bodies(xla) if ' dot(' in b]


def test_both_choices_train_the_same_function():
  losses = {}
  for conv in ('xla', 'ynnpack'):
    trainer, splits, _ = _compiled_step(conv)
    state = trainer.init_fn()
    for i in range(3):
      state, metrics = trainer.train_step(state, trainer.put(splits.train.batch(i)))
    losses[conv] = float(metrics['loss'])
  np.testing.assert_allclose(losses['xla'], losses['ynnpack'], rtol=1e-4)


def test_options_only_for_the_cpu_and_only_for_xla():
  assert xla_options.compiler_options('xla', 'cpu') is not None
  assert xla_options.compiler_options('ynnpack', 'cpu') is None
  assert xla_options.compiler_options('xla', 'gpu') is None
  assert xla_options.compiler_options('xla', 'tpu') is None


def test_an_option_the_jaxlib_refuses_falls_back_with_one_note(capsys):
  refused = (('xla_cpu_experimental_ynn_fusion_type', 'LIBRARY_FUSION_TYPE_NOT_A_TYPE'),)
  assert xla_options._supported(refused) is None   # pylint: disable=protected-access
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'cpu_convolutions=ynnpack' in err


def test_unknown_value_is_one_config_error():
  config = load_config('configs/vqvae.py', dict(VQ, cpu_convolutions='mkl'))
  splits = data_lib.get_datasets(config)
  with pytest.raises(ConfigError, match=r"cpu_convolutions='mkl': choose one of"):
    build_trainer(config, splits.info, splits.train.element_spec)


def test_the_initial_state_compiled_at_o1_is_the_default_levels(monkeypatch):
  """The engine's initial state (LLVM O1 on the CPU: `init_compiler_options`, unless
  XLA_FLAGS names a level, as the tests' do) against the same function compiled at XLA's
  default level 3: equal but for a few float32 ulps. (A one-layer ladder: level 3 takes 6 s
  to compile it on a 2-core CPU, the full lvae 73 s.)"""
  assert xla_options.init_compiler_options('gpu') is None
  monkeypatch.setenv('XLA_FLAGS', '--xla_backend_optimization_level=0')
  assert xla_options.init_compiler_options('cpu') is None
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=1')
  assert xla_options.init_compiler_options('cpu') == {'xla_backend_optimization_level': 1}
  # With no level named, the trainer built below compiles its initial state at O1.
  config = load_config('configs/lvae.py', {'model.latent_sizes': (4,),
                                           'model.hidden_sizes': (16,)})
  _, trainer = data_and_trainer(config)
  engine = trainer.init_fn()
  init = trainer.init_fn.__wrapped__                 # the Python function the engine jits
  default = jax.jit(init, compiler_options={'xla_backend_optimization_level': 3})()
  leaves = jax.tree.leaves(engine)
  assert len(leaves) == len(jax.tree.leaves(default)) > 10
  for a, b in zip(leaves, jax.tree.leaves(default)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=0)
