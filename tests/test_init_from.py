"""config.init_from: a fresh run that starts from another run's weights (fine-tuning)."""

import jax
import numpy as np
import pytest

from tests.helpers import data_and_trainer, load_config
from vaes import workdir_lock
from vaes.checkpoint import BEST_DIR, Checkpointer
from vaes.errors import ConfigError
from vaes.train import _restore_or_init, train_and_evaluate

TINY_VQ = {'batch_size': 32, 'model.hidden': 16, 'model.res_hidden': 8, 'model.num_codes': 16,
           'eval.batch_size': 128, 'log_every_steps': 1, 'eval_every_steps': 0,
           'checkpoint_every_steps': 3}


def _start(config, workdir):
  _, trainer = data_and_trainer(config)
  return trainer, _restore_or_init(config, workdir, trainer, Checkpointer(workdir))


def _saved(config, workdir):
  _, trainer = data_and_trainer(config)
  state, _, _ = Checkpointer(workdir).restore_latest(trainer.abstract_state, config)
  return jax.device_get(state)


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  """A 3-step run that keeps a moving average of its weights."""
  workdir = str(tmp_path_factory.mktemp('source'))
  config = load_config('configs/vqvae.py', dict(TINY_VQ, num_train_steps=3,
                                                weights_ema_decay=0.5))
  train_and_evaluate(config, workdir)
  return config, workdir


def test_a_fresh_run_starts_from_the_weights_eval_would_evaluate(source, tmp_path):
  config, workdir = source
  saved = _saved(config, workdir)
  # Fine-tuning with another learning rate and no moving average of its own.
  tune = load_config('configs/vqvae.py', dict(TINY_VQ, num_train_steps=2, learning_rate=1e-4,
                                              init_from=workdir))
  _, start = _start(tune, str(tmp_path / 'tune'))
  assert start.step == 0 and int(start.state.step) == 0
  got = jax.device_get(start.state)
  # The moving average, not the last parameters (the two differ after 3 steps at 0.5).
  for ema, p, new in zip(jax.tree.leaves(saved.ema_params), jax.tree.leaves(saved.params),
                         jax.tree.leaves(got.params)):
    np.testing.assert_array_equal(new, ema)
  assert any(not np.array_equal(e, p) for e, p in zip(jax.tree.leaves(saved.ema_params),
                                                     jax.tree.leaves(saved.params)))
  for a, b in zip(jax.tree.leaves(saved.model_state), jax.tree.leaves(got.model_state)):
    np.testing.assert_array_equal(a, b)   # the codebook's EMA statistics come along
  # A fresh optimiser: Adam's moments are zero and its count starts again.
  assert all(not np.any(x) for x in jax.tree.leaves(got.opt_state))
  assert got.ema_params is None


def test_the_moving_average_of_a_fine_tuning_run_starts_at_its_first_weights(source, tmp_path):
  config, workdir = source
  tune = load_config('configs/vqvae.py', dict(TINY_VQ, num_train_steps=2, init_from=workdir,
                                              weights_ema_decay=0.9))
  _, start = _start(tune, str(tmp_path / 'tune'))
  got = jax.device_get(start.state)
  for p, e in zip(jax.tree.leaves(got.params), jax.tree.leaves(got.ema_params)):
    np.testing.assert_array_equal(p, e)


def test_a_resume_ignores_init_from(source, tmp_path):
  """Once the fine-tuning run has checkpoints, it resumes from them, not from the source."""
  config, workdir = source
  tune = load_config('configs/vqvae.py', dict(TINY_VQ, num_train_steps=3, init_from=workdir))
  train_and_evaluate(tune, str(tmp_path / 'tune'))
  longer = load_config('configs/vqvae.py', dict(TINY_VQ, num_train_steps=6, init_from=workdir))
  _, start = _start(longer, str(tmp_path / 'tune'))
  assert start.step == 3
  np.testing.assert_array_equal(
      jax.tree.leaves(jax.device_get(start.state.params))[0],
      jax.tree.leaves(_saved(tune, str(tmp_path / 'tune')).params)[0])


@pytest.mark.parametrize('case', ['own workdir', 'no checkpoints', 'no best', 'other model'])
def test_bad_init_from_is_one_line_naming_the_fix(source, tmp_path, case):
  config, workdir = source
  target = str(tmp_path / 'tune')
  overrides = dict(TINY_VQ, num_train_steps=2, init_from=workdir)
  if case == 'own workdir':
    overrides['init_from'] = target
    expected = "this run's own workdir"
  elif case == 'no checkpoints':
    overrides['init_from'] = str(tmp_path / 'nothing')
    expected = 'holds no latest checkpoint'
  elif case == 'no best':
    overrides['init_from_checkpoint'] = 'best'
    expected = 'init_from_checkpoint=latest'
  else:
    overrides['model.hidden'] = 32
    expected = 'hidden'
  tune = load_config('configs/vqvae.py', overrides)
  with pytest.raises(Exception) as e:
    _start(tune, target)
  message = str(e.value)
  assert expected in message and '\n' not in message
  if case != 'other model':
    assert isinstance(e.value, ConfigError)
  assert not (tmp_path / 'nothing').exists()
  assert not (tmp_path / workdir / BEST_DIR).exists()


@pytest.mark.parametrize('trained_path,tune_path,tune_overrides', [
    ('configs/lvae_mnist_dynamic.py', 'configs/lvae_mnist_dynamic_finetune.py',
     {'init_from_checkpoint': 'latest'}),   # its own default, 'best', needs a selected run
    ('configs/lvae_mnist_dynamic_60k.py', 'configs/lvae_mnist_dynamic_60k_finetune.py', {}),
    ('configs/lvae_mnist_dynamic_authors_60k.py',
     'configs/lvae_mnist_dynamic_authors_60k_finetune.py', {}),
])
def test_the_ladder_fine_tuning_configs_need_init_from_and_train_on_the_iw_bound(
    trained_path, tune_path, tune_overrides, tmp_path):
  """The ladder fine-tuning configs, shrunk: refused without init_from (one line); with it, a
  trained ladder's weights go on training on the k = 10 bound from step 0 (the 60k ones
  from the trained run's last checkpoint by default: that run selects none)."""
  tiny = {'model.latent_sizes': (4, 2), 'model.hidden_sizes': (16, 8), 'batch_size': 32,
          'log_every_steps': 1, 'eval_every_steps': 0, 'checkpoint_every_steps': 2,
          'eval.batch_size': 100, 'eval.select_metric': ''}
  trained = str(tmp_path / 'trained')
  trained_config = load_config(trained_path, dict(tiny, num_train_steps=2))
  train_and_evaluate(trained_config, trained)
  config = load_config(tune_path, dict(tiny, num_train_steps=2, **tune_overrides))
  assert config.model.train_importance_samples == 10
  with pytest.raises(ConfigError, match='--config.init_from=WORKDIR_OF_THE_TRAINED_RUN'):
    train_and_evaluate(config, str(tmp_path / 'tune'))
  # Refused before anything is written but the workdir's lock file.
  assert [p.name for p in (tmp_path / 'tune').iterdir()] == [workdir_lock.LOCK_NAME]
  config.init_from = trained
  _, start = _start(config, str(tmp_path / 'tune'))
  source = _saved(trained_config, trained)
  started = jax.device_get(start.state.params)
  for a, b in zip(jax.tree.leaves(source.params), jax.tree.leaves(started)):
    np.testing.assert_array_equal(a, b)
  metrics = train_and_evaluate(config, str(tmp_path / 'tune'))
  assert np.isfinite(metrics['loss']) and metrics['kl_weight'] == 1.0
