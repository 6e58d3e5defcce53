"""python -m vaes.units: each latent unit's KL and activity. The per-unit terms against a
numpy loop over units; the units of a trained run against eval.py's layers (same draws);
the CLI's file and its one-line refusals."""

import json
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import PYTHON, REPO, load_config, subprocess_env
from vaes import data as data_lib
from vaes import evaluate
from vaes import units
from vaes.errors import CheckpointError, ConfigError
from vaes.families import ladder
from vaes.models import ladder as ladder_model
from vaes.registry import get_family
from vaes.train import train_and_evaluate

TINY = {'model.latent_sizes': (4, 3, 2), 'model.hidden_sizes': (16, 8, 8),
        'batch_size': 32, 'eval.batch_size': 128, 'eval.num_importance_samples': 3,
        'eval.iw_chunk_size': 2, 'num_train_steps': 4, 'log_every_steps': 2,
        'checkpoint_every_steps': 4, 'eval_every_steps': 0}
CONFIGS = {'ladder': 'configs/lvae.py', 'hierarchical': 'configs/hvae.py'}


def _log_normal(z, mean, logvar):
  return -0.5 * (np.log(2 * np.pi) + logvar + (z - mean) ** 2 / np.exp(logvar))


@pytest.mark.parametrize('inference', ['ladder', 'hierarchical'])
def test_unit_kls_are_each_units_term_of_a_numpy_loop(inference):
  """Closed-form Gaussian KLs (the ladder's layers, every top layer) and one-sample log
  ratios (the hierarchical VAE's lower layers), unit by unit in float64; their sums are
  layer_kls."""
  config = load_config(CONFIGS[inference], TINY)
  fam = get_family(config.model.name)
  splits = data_lib.get_datasets(config)
  model = fam.build_model(config, splits.info)
  batch = jax.tree.map(jnp.asarray, next(splits.train.iterate(0)))
  variables = fam.init_variables(model, jax.random.PRNGKey(0), batch)
  x = batch['image'][:6]
  noise = ladder_model.draw_noise(model, jax.random.PRNGKey(1), x.shape[:1], x.shape[1:])
  layers = model.apply(variables, x, noise, train=False)['layers']
  got = ladder.unit_kls(inference, layers)
  top = len(layers) - 1
  for l, layer in enumerate(layers):
    q_m, q_lv, p_m, p_lv, z = (np.asarray(layer[k], np.float64).reshape(6, -1)
                               for k in ('q_mean', 'q_logvar', 'p_mean', 'p_logvar', 'z'))
    want = np.zeros_like(q_m)
    for b in range(6):
      for u in range(q_m.shape[1]):
        if inference == 'ladder' or l == top:
          want[b, u] = 0.5 * (p_lv[b, u] - q_lv[b, u] - 1 + (np.exp(q_lv[b, u])
                              + (q_m[b, u] - p_m[b, u]) ** 2) / np.exp(p_lv[b, u]))
        else:
          want[b, u] = (_log_normal(z[b, u], q_m[b, u], q_lv[b, u])
                        - _log_normal(z[b, u], p_m[b, u], p_lv[b, u]))
    assert got[l].shape == (6, config.model.latent_sizes[l])
    np.testing.assert_allclose(np.asarray(got[l]), want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ladder.layer_kls(inference, layers)),
                             np.stack([np.asarray(k).sum(1) for k in got]), rtol=1e-6)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """(config, workdir) of a 4-step run per inference, trained once for this module."""
  runs = {}

  def get(inference):
    if inference not in runs:
      config = load_config(CONFIGS[inference], TINY)
      workdir = str(tmp_path_factory.mktemp('units') / inference)
      train_and_evaluate(config, workdir)
      runs[inference] = workdir
    return load_config(CONFIGS[inference], TINY), runs[inference]
  return get


@pytest.mark.parametrize('inference', ['ladder', 'hierarchical'])
def test_units_add_up_to_the_evaluations_layers_with_the_same_draws(trained, inference):
  config, workdir = trained(inference)
  metrics = evaluate.evaluate(config, workdir)
  record = units.analyse(config, workdir, num_samples=3)
  assert config.eval.num_importance_samples == 3               # the caller's config is kept
  assert record['examples'] == data_lib.get_datasets(config).info.num_eval
  assert record['step'] == 4
  assert record['checkpoint'] == 'latest' and record['num_samples'] == 3
  assert record['active_threshold'] == record['kl_threshold'] == 0.01
  with open(os.path.join(workdir, 'units.json')) as f:
    assert json.load(f) == record
  assert os.path.getsize(os.path.join(workdir, 'units.png')) > 5000
  for layer in record['layers']:
    l, kl, activity = layer['layer'], np.array(layer['kl']), np.array(layer['activity'])
    assert len(kl) == len(activity) == config.model.latent_sizes[l - 1]
    np.testing.assert_allclose(kl.sum(), metrics[f'kl_layer_{l}'], rtol=1e-5, atol=1e-6)
    assert int(np.sum(activity > 0.01)) == metrics[f'active_units_layer_{l}']
    assert int(np.sum(kl > 0.01)) == metrics[f'informative_units_layer_{l}']
    assert np.all(activity >= -1e-9)                                   # variances


def test_cli_writes_the_same_units_and_refuses_in_one_line(trained):
  config, workdir = trained('ladder')
  want = units.analyse(config, workdir, num_samples=2)
  os.remove(os.path.join(workdir, 'units.json'))
  base = [PYTHON, '-m', 'vaes.units', f'--config={os.path.join(REPO, CONFIGS["ladder"])}',
          f'--workdir={workdir}'] + [f'--config.{k}={v}' for k, v in TINY.items()]
  env = subprocess_env()
  proc = subprocess.run(base + ['--num_samples=2'], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'layer 3: KL' in proc.stdout and 'units.json' in proc.stdout
  assert 'with KL > 0.01 nats' in proc.stdout
  with open(os.path.join(workdir, 'units.json')) as f:
    assert json.load(f) == want                                 # same draws, same numbers
  proc = subprocess.run(base + ['--num_samples=0'], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr
  assert lines[0].startswith('ERROR: --num_samples=0')


def test_refusals_before_anything_is_read(tmp_path):
  with pytest.raises(CheckpointError, match='train first'):
    units.analyse(load_config('configs/lvae.py', TINY), str(tmp_path / 'none'))
  with pytest.raises(ConfigError, match=r"vqvae.*no stochastic layers.*lvae, hvae"):
    units.analyse(load_config('configs/vqvae.py'), str(tmp_path / 'vq'))
  for bad in (0, 2.5, True):
    with pytest.raises(ConfigError, match='--num_samples'):
      units.analyse(load_config('configs/lvae.py', TINY), str(tmp_path / 'none'), bad)
  assert not os.path.exists(tmp_path / 'vq') and not os.path.exists(tmp_path / 'none')
