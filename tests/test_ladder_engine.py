"""Ladder / Hierarchical VAE through the engine: the CLI end to end, and the train step
with batch norm on 8 simulated CPU devices equal to the 1-device step."""

import json
import os

import numpy as np
import pytest

from tests.helpers import assert_same_on_1_and_8_devices, read_eval_metrics, run_cli

TINY = {'batch_size': 32, 'model.latent_sizes': '(4,3)', 'model.hidden_sizes': '(16,8)',
        'eval.batch_size': 128}


def test_lvae_cli_train_then_eval_smoke(tmp_path):
  wd = str(tmp_path / 'run')
  overrides = dict(TINY, num_train_steps=20, log_every_steps=10, eval_every_steps=20,
                   checkpoint_every_steps=10, **{'model.kl_warmup_steps': 10,
                                                 'eval.num_importance_samples': 20,
                                                 'eval.iw_chunk_size': 8, 'eval.num_images': 16})
  proc = run_cli('train.py', 'configs/lvae.py', wd, overrides)
  assert '[step 20]' in proc.stdout, proc.stdout
  records = [json.loads(l) for l in open(os.path.join(wd, 'metrics.jsonl'))]
  train = {r['step']: r for r in records if 'loss' in r}
  assert train[10]['kl_weight'] < 1.0 and train[20]['kl_weight'] == 1.0
  assert os.path.exists(os.path.join(wd, 'images', 'step_0000020_prior_samples.png'))
  run_cli('eval.py', 'configs/lvae.py', wd, overrides)
  metrics = read_eval_metrics(wd)
  keys = ['neg_elbo', 'nll', 'bits_per_dim', 'active_units', 'kl_layer_1', 'kl_layer_2',
          'active_units_layer_1', 'active_units_layer_2']
  for key in keys:
    assert isinstance(metrics[key], float) and np.isfinite(metrics[key]), key
  assert metrics['nll'] <= metrics['neg_elbo']
  assert metrics['active_units'] == (metrics['active_units_layer_1']
                                     + metrics['active_units_layer_2'])
  assert 0 <= metrics['active_units'] <= 7
  assert metrics['bits_per_dim'] == pytest.approx(metrics['nll'] / (64 * np.log(2)), rel=1e-5)
  for name in ('eval_prior_samples.png', 'eval_reconstructions.png'):
    assert os.path.getsize(os.path.join(wd, name)) > 0


@pytest.mark.parametrize('config_path', ['configs/lvae.py', 'configs/hvae.py'])
def test_batch_norm_step_same_on_1_and_8_devices(config_path, tmp_path):
  one, _ = assert_same_on_1_and_8_devices(
      config_path, {'batch_size': 32, 'model.latent_sizes': (4, 3), 'model.hidden_sizes': (16, 8),
                    'model.batch_norm': True, 'model.kl_warmup_steps': 2}, tmp_path, num_steps=3)
  # The batch-norm statistics are in the compared state, and they moved during the steps.
  stats = [k for k in one['leaves'] if 'batch_stats' in k]
  assert stats, one['leaves'].keys()
  assert any(np.abs(one['leaves'][k]).max() > 0 for k in stats if k.endswith("['mean']"))
