"""One schema per family: every config of a family holds every field of the family's
`model_config()` and `eval_config()`, each switchable option can be overridden on the
family's default config (as `--config.model.X=...` would), giving a model whose loss
traces, and the Linen modules hold no default of their own for a `config.model` field."""

import dataclasses
import glob
import inspect
import os
import re
import sys

import flax.linen as nn

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from tests.helpers import REPO, load_config
from vaes.data.core import DataInfo, data_config
from vaes.families import ladder, vqvae, vqvae2, vq_prior, vrae
from vaes.registry import ConfigError, get_family
from vaes.preflight import validate_config

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
           for line in open(f, encoding='utf-8')
           if re.search(r'\b(config\.)?data\.get\(|\bd\.get\(', line)]
  assert not found, found


def _image_case(shape, levels):
  info = DataInfo(kind='image', shape=shape, train_variance=0.05, num_levels=levels,
                  num_train=256, steps_per_epoch=256 // 64)   # configs/lvae.py's batch
  batch = {'image': jnp.asarray(np.random.default_rng(0).integers(0, levels, (8,) + shape)
                                / (levels - 1), jnp.float32)}
  return info, batch


def _sequence_case(likelihood):
  rng = np.random.default_rng(0)
  if likelihood == 'categorical':
    info = DataInfo(kind='sequence', shape=(12,), likelihood='categorical', num_classes=5)
    x = rng.integers(0, 5, (8, 12)).astype(np.int32)
  else:
    info = DataInfo(kind='sequence', shape=(12, 5), likelihood=likelihood)
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


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(REPO, 'configs', '*.py'))))
def test_every_config_holds_the_engines_and_its_familys_whole_eval_schema(path):
  """config.eval = the engine's fields (configs/base.py) + the family's `eval_config()`,
  each with the schema's type: any of them can be overridden on any config of the family."""
  if os.path.basename(path) in ('__init__.py', 'base.py'):
    return
  config = load_config(path)
  groups = [config] + ([config.data.vqvae] if 'vqvae' in config.data else [])
  for c in groups:
    family = get_family(c.model.name)
    schema = base.get_base_config().eval
    if family.eval_config is not None:
      schema.update(family.eval_config())
    assert set(c.eval) == set(schema), (path, c.model.name, set(c.eval) ^ set(schema))
    for k in schema:
      assert type(c.eval[k]) is type(schema[k]), (path, k, c.eval[k], schema[k])


FAMILY_NAMES = ('vqvae', 'vqvae2', 'ladder_vae', 'vrae', 'vq_prior')
DEFAULT_CONFIGS = {'vqvae': 'configs/vqvae.py', 'vqvae2': 'configs/vqvae2.py',
                   'ladder_vae': 'configs/lvae.py', 'vrae': 'configs/vrae.py',
                   'vq_prior': 'configs/vqvae_prior.py'}
FLAX_FIELDS = {'parent', 'name'}    # every Linen module's own


def linen_defaults_of_config_fields(family_name):
  """[(module class, field, its default, model_config() value)] for every Linen module
  defined beside the model the family builds (vaes/models/<x>.py) whose dataclass field
  named like a `config.model` field has a default: each one duplicates or contradicts
  the one home of that default, the family's model_config()."""
  family = get_family(family_name)
  config = load_config(DEFAULT_CONFIGS[family_name])
  info = {'vqvae': _image_case((8, 8, 1), 17)[0], 'vqvae2': _image_case((8, 8, 1), 17)[0],
          'ladder_vae': _image_case((8, 8, 1), 2)[0], 'vrae': _sequence_case('bernoulli')[0],
          'vq_prior': DataInfo(kind='codes', num_codes=(16,), grids=((4, 4),))}[family_name]
  model = family.build_model(config, info)
  schema = SCHEMAS[config.model.name].model_config()
  module = sys.modules[type(model).__module__]
  classes = [c for _, c in inspect.getmembers(module, inspect.isclass)
             if issubclass(c, nn.Module) and c.__module__ == module.__name__]
  assert type(model) in classes
  found = []
  for cls in classes:
    for f in dataclasses.fields(cls):
      has_default = (f.default is not dataclasses.MISSING
                     or f.default_factory is not dataclasses.MISSING)
      if f.name in schema and f.name not in FLAX_FIELDS and has_default:
        found.append((cls.__name__, f.name, f.default, schema[f.name]))
  return found


@pytest.mark.parametrize('family_name', FAMILY_NAMES)
def test_linen_modules_hold_no_default_of_a_config_field(family_name):
  """model_config() is the one home of a model field's default: a Linen module field of
  the same name has none, so the two can never disagree."""
  found = linen_defaults_of_config_fields(family_name)
  assert not found, [f'{c}.{f} = {d!r} ({"agrees with" if d == v else "contradicts"} '
                     f'model_config() {v!r})' for c, f, d, v in found]


def test_the_name_is_enough_to_choose_the_ladder_inference():
  """--config.model.name=hvae on configs/lvae.py builds a bottom-up (hierarchical) model;
  an explicit inference that contradicts the name is refused in one line; 'ladder_vae'
  needs one."""
  from vaes.sweep import parse_config     # train.py's flag parsing
  config = parse_config(os.path.join(REPO, 'configs', 'lvae.py'), ['--config.model.name=hvae'])
  validate_config(config, get_family('hvae'), num_devices=1)
  model = get_family('hvae').build_model(config, _image_case((8, 8, 1), 2)[0])
  assert config.model.inference == 'hierarchical' and model.inference == 'hierarchical'
  assert ladder.build_model(load_config('configs/hvae.py', {'model.name': 'lvae'}),
                            _image_case((8, 8, 1), 2)[0]).inference == 'ladder'
  refused = {('hvae', 'ladder'): "config.model.name='hvae' means inference 'hierarchical'",
             ('ladder_vae', ''): "config.model.name='ladder_vae' leaves the choice to it"}
  for (name, inference), message in refused.items():
    config = load_config('configs/lvae.py', {'model.name': name, 'model.inference': inference})
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
      ladder.validate_config(config)
    assert '\n' not in str(e.value)
  config = load_config('configs/lvae.py', {'model.name': 'ladder_vae',
                                           'model.inference': 'hierarchical'})
  ladder.validate_config(config)
  assert ladder.build_model(config, _image_case((8, 8, 1), 2)[0]).inference == 'hierarchical'


@pytest.mark.parametrize('path', ['configs/lvae.py', 'configs/vrae.py'])
def test_selection_eval_uses_fewer_importance_samples_and_leaves_the_config(path):
  config = load_config(path)
  config.lock()
  family = get_family(config.model.name)
  assert family.selection_eval(config) is config                     # k = 0: the same
  chunk, full = config.eval.iw_chunk_size, config.eval.num_importance_samples
  for k in (chunk // 2, 3 * chunk):
    config.eval.select_num_importance_samples = k
    chosen = family.selection_eval(config)
    assert chosen.eval.num_importance_samples == k
    assert chosen.eval.iw_chunk_size == min(chunk, k)
    assert config.eval.num_importance_samples == full and config.eval.iw_chunk_size == chunk
    assert chosen.model.to_dict() == config.model.to_dict()


@pytest.mark.parametrize('path', ['configs/vqvae.py', 'configs/vqvae2.py',
                                  'configs/vqvae_prior.py'])
def test_families_without_importance_samples_refuse_a_selection_count(path):
  config = load_config(path, {'eval.select_num_importance_samples': 10})
  family = get_family(config.model.name)
  assert family.selection_eval is None   # so the engine's validation refuses the count
  with pytest.raises(ConfigError, match='config.eval.select_num_importance_samples=10'):
    validate_config(config, family, num_devices=1)
