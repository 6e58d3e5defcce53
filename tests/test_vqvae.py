"""The VQ-VAE family (vaes/families/vqvae.py, vaes/models/vqvae.py) and its configs:
every quantiser option is a config.model field that builds and traces, the entropy loss
enters the training loss only when weighted, bad values are one-line config errors,
codebook restarts are the same on 1 and 8 devices (configs/vqvae_codebook.py), and
model.upsample='auto' resolves per backend."""

import jax
import jax.numpy as jnp
import pytest

from tests.helpers import assert_same_on_1_and_8_devices, load_config
from vaes import data as data_lib
from vaes.families.vqvae import build_model, resolve_upsample
from vaes.preflight import validate_config
from vaes.registry import ConfigError, get_family


TINY_CB = {'batch_size': 32, 'model.hidden': 16, 'model.res_hidden': 8,
           'model.num_codes': 64, 'model.restart_after': 1, 'model.kmeans_init': True,
           'model.kmeans_iters': 3, 'data.image_size': 8, 'eval.batch_size': 128}


def test_restarts_are_identical_on_1_and_8_devices(tmp_path):
  one, eight = assert_same_on_1_and_8_devices('configs/vqvae_codebook.py', TINY_CB, tmp_path,
                                              num_steps=3)
  # Restarts did happen within the steps (and k-means ran at the first one).
  assert sum(m['restarted_codes'] for m in one['metrics']) > 0
  assert any('steps_unused' in k for k in one['leaves'])
  init_flag = [v for k, v in one['leaves'].items() if 'initialized' in k]
  assert init_flag and int(init_flag[0]) == 1


# ----------------------------------------------------------------------------
# Each option is a config.model field of configs/vqvae.py, checked and wired.
# ----------------------------------------------------------------------------


OPTION_CASES = [
    {'model.rotation_trick': True},
    {'model.simvq': True, 'model.use_ema': False},
    {'model.dead_code_threshold': 2.0},
    {'model.quantizer': 'lfq', 'model.binary_bits': 4, 'model.entropy_weight': 0.1},
    {'model.quantizer': 'bsq', 'model.binary_bits': 4, 'model.entropy_weight': 0.1},
    {'model.entropy_weight': 0.1, 'model.entropy_gamma': 2.0, 'model.entropy_temperature': 0.5},
    {'model.quantizer': 'rvq', 'model.rvq_stages': 2, 'model.quantize_dropout': True},
    {'model.quantizer': 'rfsq', 'model.rvq_stages': 2, 'model.quantize_dropout': True},
]


def _vqvae_case(overrides):
  config = load_config('configs/vqvae.py', {'model.hidden': 8, 'model.res_hidden': 4,
                                            **overrides})
  family = get_family(config.model.name)
  validate_config(config, family, num_devices=1)
  info = data_lib.DataInfo(kind='image', shape=(8, 8, 1), train_variance=0.05, num_levels=17,
                           num_train=64)
  batch = {'image': jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 1))}
  return config, family, info, batch


def test_each_option_is_a_config_field_that_builds_and_traces():
  for overrides in OPTION_CASES:
    config, family, info, batch = _vqvae_case(overrides)
    model = family.build_model(config, info)
    spec = model.vq
    for key, value in overrides.items():
      assert getattr(spec, key.split('.')[1]) == value, key
    variables = jax.eval_shape(lambda r, b: family.init_variables(model, r, b),
                               jax.random.PRNGKey(0), batch)
    state = {k: v for k, v in variables.items() if k != 'params'}
    loss_fn = family.make_loss_fn(config, model, info)
    loss, (metrics, new_state) = jax.eval_shape(loss_fn, variables['params'], state, batch,
                                                jax.random.PRNGKey(1), jnp.int32(0))
    assert loss.shape == () and jax.tree.structure(new_state) == jax.tree.structure(state)
    assert ('entropy_loss' in metrics) == (config.model.entropy_weight > 0), overrides


def test_the_entropy_loss_enters_the_training_loss_only_when_weighted():
  class Stub:   # a model whose quantiser terms are known: decoder output = x (zero NLL)
    def apply(self, variables, x, train, rngs):
      one = jnp.ones((), jnp.float32)
      return dict(decoder_out=x, codebook_loss=1.0 * one, commitment_loss=2.0 * one,
                  entropy_loss=-0.5 * one, restarted_codes=0.0 * one, perplexity=one)
  for weight, expected in ((0.0, 3.0), (0.1, 2.5)):
    config, family, info, batch = _vqvae_case({'model.entropy_weight': weight})
    loss, (metrics, _) = family.make_loss_fn(config, Stub(), info)(
        {}, {}, batch, jax.random.PRNGKey(1), jnp.int32(0))
    assert float(loss) == expected
    assert ('entropy_loss' in metrics) == (weight > 0)


def test_bad_option_values_are_one_line_config_errors():
  bad = [
      ({'model.simvq': True}, 'use_ema=False'),
      ({'model.simvq': True, 'model.use_ema': False, 'model.quantizer': 'fsq'}, 'no effect'),
      ({'model.rotation_trick': True, 'model.quantizer': 'lfq'}, 'no effect'),
      ({'model.dead_code_threshold': 1.0, 'model.use_ema': False}, 'use_ema=True'),
      ({'model.dead_code_threshold': 1.0, 'model.restart_after': 5}, 'set one'),
      ({'model.dead_code_threshold': -1.0}, '>= 0'),
      ({'model.quantize_dropout': True}, "'rvq' or 'rfsq'"),
      ({'model.quantizer': 'lfq', 'model.binary_bits': 0}, 'binary_bits=0'),
      ({'model.quantizer': 'bsq', 'model.binary_bits': 17}, 'binary_bits=17'),
      ({'model.entropy_weight': -0.1}, 'entropy_weight=-0.1'),
      ({'model.entropy_weight': 0.1, 'model.entropy_temperature': 0.0}, 'entropy_temperature'),
      ({'model.entropy_weight': 0.1, 'model.quantizer': 'fsq'}, 'no effect'),
      ({'model.quantizer': 'rfsq', 'model.rvq_stages': 0}, 'rvq_stages=0'),
      ({'model.quantizer': 'rfsq', 'model.fsq_levels': (4, 1)}, 'fsq_levels'),
      ({'model.quantizer': 'xq'}, 'choose one of'),
  ]
  for overrides, words in bad:
    with pytest.raises(ConfigError, match=words.replace('(', r'\(').replace(')', r'\)')) as e:
      _vqvae_case(overrides)
    assert '\n' not in str(e.value), str(e.value)


# ----------------------------------------------------------------------------
# The decoder's transposed convolutions (vaes/models/layers.py).
# ----------------------------------------------------------------------------


def test_auto_upsample_is_phases_on_the_cpu_and_subpixel_elsewhere():
  assert resolve_upsample('auto', 'cpu') == 'phases'
  assert resolve_upsample('auto', 'gpu') == resolve_upsample('auto', 'tpu') == 'subpixel'
  assert resolve_upsample('transpose', 'cpu') == 'transpose'
  config = load_config('configs/vqvae.py')
  assert config.model.upsample == 'auto'
  model = build_model(config, data_lib.get_datasets(config).info)
  assert model.upsample == ('phases' if jax.default_backend() == 'cpu' else 'subpixel')
