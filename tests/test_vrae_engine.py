"""VRAE through the engine: the 8-simulated-device step equals the 1-device step, the
CLI trains and evaluates configs/vrae.py end to end, and the pickle and Gaussian-series
configs run through train_and_evaluate / evaluate."""

import math
import os
import pickle

import numpy as np

from tests.helpers import (assert_same_on_1_and_8_devices, load_config, read_eval_metrics,
                           run_cli)

TINY = {'batch_size': 16, 'model.hidden': 16, 'model.latent': 4, 'model.mlp_hidden': 16,
        'data.max_len': 16, 'data.num_chorales': 10, 'eval.batch_size': 16,
        'eval.num_importance_samples': 4, 'eval.iw_chunk_size': 2}
METRICS = ('neg_elbo_per_frame', 'nll_per_frame', 'kl_per_frame', 'recon_per_frame',
           'baseline_nll_per_frame')


def test_vrae_step_same_on_1_and_8_devices(tmp_path):
  overrides = dict(TINY, **{'data.cache_dir': str(tmp_path), 'model.free_bits': 0.02,
                            'model.kl_warmup_steps': 2})
  one, _ = assert_same_on_1_and_8_devices('configs/vrae.py', overrides, tmp_path, num_steps=3)
  assert all(math.isfinite(m['loss']) for m in one['metrics'])
  assert one['metrics'][0]['kl_weight'] < one['metrics'][2]['kl_weight'] == 1.0


def test_srnn_step_same_on_1_and_8_devices(tmp_path):
  """The SRNN's two scans (forward deterministic RNN, backward smoothing RNN) and its
  residual posterior under a batch sharded over 8 devices, with dropout's keys."""
  overrides = dict(TINY, **{'data.cache_dir': str(tmp_path), 'model.dropout': 0.25,
                            'model.kl_warmup_steps': 2, 'eval.select_num_importance_samples': 0})
  one, _ = assert_same_on_1_and_8_devices('configs/srnn_jsb.py', overrides, tmp_path,
                                          num_steps=3)
  assert all(math.isfinite(m['loss']) for m in one['metrics'])
  # Both recurrences are in the compared state: the forward d_t GRU and the backward one.
  for rnn in ('gru_d', 'gru_b'):
    assert any(f"['params']['{rnn}']" in k for k in one['leaves']), rnn


def test_cli_train_then_eval_writes_metrics_and_piano_rolls(tmp_path):
  wd = str(tmp_path / 'run')
  overrides = dict(TINY, **{'data.cache_dir': str(tmp_path), 'num_train_steps': 4,
                            'log_every_steps': 2, 'checkpoint_every_steps': 4,
                            'eval_every_steps': 0})
  proc = run_cli('train.py', 'configs/vrae.py', wd, overrides)
  assert 'vrae on chorales' in proc.stdout
  run_cli('eval.py', 'configs/vrae.py', wd, overrides)
  metrics = read_eval_metrics(wd)
  for key in METRICS:
    assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert metrics[key] >= 0 or key == 'kl_per_frame', key
  np.testing.assert_allclose(metrics['neg_elbo_per_frame'],
                             metrics['recon_per_frame'] + metrics['kl_per_frame'], rtol=1e-5)
  assert metrics['step'] == 4 and metrics['num_importance_samples'] == 4
  for name in ('samples', 'imputation', 'reconstructions'):
    assert os.path.getsize(os.path.join(wd, f'eval_{name}.png')) > 1000, name


def test_pickle_vrnn_and_gaussian_series_configs_run(tmp_path):
  """configs/vrnn_jsb.py trains from a pickle at data.path (polyphonic_pickle);
  configs/vrae_series.py trains and evaluates in the loop (Gaussian likelihood, line plots)."""
  from vaes.train import train_and_evaluate
  rng = np.random.default_rng(0)
  def seq(n):
    return [sorted(set(rng.integers(50, 80, size=4).tolist())) for _ in range(n)]
  raw = {k: [seq(int(n)) for n in rng.integers(5, 20, size=12)] for k in ('train', 'valid', 'test')}
  path = tmp_path / 'jsb.pickle'
  with open(path, 'wb') as f:
    pickle.dump(raw, f)
  small = {'batch_size': 4, 'num_train_steps': 2, 'log_every_steps': 1, 'eval_every_steps': 0,
           'checkpoint_every_steps': 2, 'model.hidden': 8, 'model.latent': 2,
           'model.mlp_hidden': 8, 'eval.batch_size': 8, 'eval.num_importance_samples': 2,
           'eval.iw_chunk_size': 2, 'eval.num_plot_sequences': 2, 'eval.select_metric': '',
           'eval.select_num_importance_samples': 0}
  config = load_config('configs/vrnn_jsb.py', dict(small, **{'data.name': 'polyphonic_pickle',
                                                           'data.path': str(path)}))
  last = train_and_evaluate(config, str(tmp_path / 'jsb'))
  assert config.model.prior == 'vrnn' and math.isfinite(last['neg_elbo_per_frame'])

  config = load_config('configs/vrae_series.py', dict(small, **{
      'eval_every_steps': 2, 'data.num_train': 16, 'data.num_test': 8,
      'data.series_length': 12, 'data.series_min_length': 6}))
  wd = str(tmp_path / 'series')
  last = train_and_evaluate(config, wd)
  for key in METRICS:
    assert math.isfinite(last[f'eval/{key}']), key
  for png in ('samples', 'imputation', 'reconstructions'):
    assert os.path.exists(os.path.join(wd, 'images', f'step_0000002_{png}.png')), png
