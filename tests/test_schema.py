"""One schema per family: every config of a family holds every field of the family's
`model_config()`, and each switchable option can be overridden on the family's default
config (as `--config.model.X=...` would), giving a model whose loss traces."""

import glob
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import REPO, load_config
from vaes.data.core import data_config
from vaes.families import ladder, vqvae, vqvae2, vq_prior, vrae
from vaes.registry import get_family
from vaes.train import validate_config

SCHEMAS = {'vqvae': vqvae, 'vqvae2': vqvae2, 'lvae': ladder, 'hvae': ladder,
           'ladder_vae': ladder, 'vrae': vrae, 'vq_prior': vq_prior}
REMOVED = {'vqvae2': {'num_downsamples'}}


def _model_groups(config):
  yield config.model
  if 'vqvae' in config.data:        # a prior's first stage
    yield config.data.vqvae.model


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(REPO, 'configs', '*.py'))))
def test_every_config_holds_its_familys_whole_schema(path):
  if os.path.basename(path) in ('__init__.py', 'base.py'):
    return
  for m in _model_groups(load_config(path)):
    schema = SCHEMAS[m.name].model_config()
    missing = set(schema) - set(m) - REMOVED.get(m.name, set())
    assert not missing, (path, m.name, sorted(missing))
    extra = set(m) - set(schema)
    assert not extra, (path, m.name, sorted(extra))


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(REPO, 'configs', '*.py'))))
def test_every_config_holds_the_whole_data_schema(path):
  """Any config.data field can be overridden on any config (one declaration, in
  vaes.data.core.data_config); the data layer reads no field with a default of its own."""
  if os.path.basename(path) in ('__init__.py', 'base.py'):
    return
  config = load_config(path)
  missing = set(data_config()) - set(config.data)
  assert not missing, (path, sorted(missing))
  extra = set(config.data) - set(data_config()) - {'vqvae'}   # a prior's first-stage config
  assert not extra, (path, sorted(extra))


def test_data_layer_reads_no_field_with_a_default():
  sources = glob.glob(os.path.join(REPO, 'vaes', 'data', '*.py'))
  found = [(os.path.basename(f), line.strip()) for f in sources
           for line in open(f, encoding='utf-8') if re.search(r'\b(config\.)?data\.get\(|\bd\.get\(', line)]
  assert not found, found


def _image_case(shape, levels):
  info = {'shape': shape, 'train_variance': 0.05, 'num_levels': levels, 'num_train': 256}
  batch = {'image': jnp.asarray(np.random.default_rng(0).integers(0, levels, (8,) + shape)
                                / (levels - 1), jnp.float32)}
  return info, batch


def _sequence_case(likelihood):
  rng = np.random.default_rng(0)
  if likelihood == 'categorical':
    info = {'shape': (12,), 'likelihood': 'categorical', 'num_classes': 5}
    x = rng.integers(0, 5, (8, 12)).astype(np.int32)
  else:
    info = {'shape': (12, 5), 'likelihood': likelihood}
    x = (rng.random((8, 12, 5)) < 0.4).astype(np.float32)
  return info, {'x': jnp.asarray(x), 'mask': jnp.ones((8, 12), jnp.float32)}


CASES = [
    ('configs/vqvae.py', {'model.quantizer': 'fsq'}, 'image'),
    ('configs/vqvae.py', {'model.quantizer': 'rvq', 'model.rvq_stages': 2}, 'image'),
    ('configs/vqvae.py', {'model.cosine': True, 'model.lookup_dim': 4}, 'image'),
    ('configs/vqvae.py', {'model.kmeans_init': True, 'model.restart_after': 3}, 'image'),
    ('configs/vqvae.py', {'model.use_ema': False}, 'image'),
    ('configs/vqvae.py', {'model.likelihood': 'logistic'}, 'image'),
    ('configs/vqvae.py', {'model.upsample': 'transpose'}, 'image'),
    ('configs/vqvae2.py', {'model.quantizer': 'fsq'}, 'image'),
    ('configs/vqvae2.py', {'model.likelihood': 'gaussian', 'model.upsample': 'phases'}, 'image'),
    ('configs/lvae.py', {'model.name': 'ladder_vae', 'model.inference': 'hierarchical'},
     'binary'),
    ('configs/lvae.py', {'model.block': 'conv', 'model.strides': (1, 2, 2)}, 'binary'),
    ('configs/lvae.py', {'model.likelihood': 'logistic'}, 'image'),
    ('configs/lvae.py', {'model.likelihood': 'gaussian', 'model.batch_norm': False}, 'image'),
    ('configs/lvae.py', {'model.kl_warmup_epochs': 2.0, 'model.free_bits': 0.5}, 'binary'),
    ('configs/vrae.py', {'model.prior': 'vrnn'}, 'bernoulli'),
    ('configs/vrae.py', {'model.prior': 'vrnn', 'model.posterior': 'smooth',
                         'model.dropout': 0.2}, 'bernoulli'),
    ('configs/vrae.py', {'model.prior': 'global', 'model.free_bits': 0.1}, 'bernoulli'),
    ('configs/vrae.py', {'model.likelihood': 'gaussian'}, 'gaussian'),
    ('configs/vrae.py', {'model.likelihood': 'categorical'}, 'categorical'),
    ('configs/vrae.py', {'model.unroll': 2, 'model.remat': True}, 'bernoulli'),
]


@pytest.mark.parametrize('path,overrides,data', CASES)
def test_each_switch_overrides_the_default_config_and_traces(path, overrides, data):
  config = load_config(path, overrides)     # KeyError if the field were not in the config
  family = get_family(config.model.name)
  validate_config(config, family, num_devices=1)
  if data in ('bernoulli', 'gaussian', 'categorical'):
    info, batch = _sequence_case(data)
  else:
    info, batch = _image_case((8, 8, 1), 2 if data == 'binary' else 17)
  model = family.build_model(config, info)
  variables = jax.eval_shape(lambda r, b: family.init_variables(model, r, b),
                             jax.random.PRNGKey(0), batch)
  params = variables['params']
  state = {k: v for k, v in variables.items() if k != 'params'}
  loss_fn = family.make_loss_fn(config, model, info)
  loss, (metrics, new_state) = jax.eval_shape(loss_fn, params, state, batch,
                                              jax.random.PRNGKey(1), jnp.int32(0))
  assert loss.shape == () and loss.dtype == jnp.float32
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert 'loss' in metrics
