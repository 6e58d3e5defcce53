"""Each results-table config on its real, bundled data: two training steps of the real
jitted step, then the engine's evaluation loop on a small subset of the test split (a
few importance samples instead of the config's thousands). Nothing is trained to
convergence here; the table's numbers come from full runs (results/)."""

import jax
import numpy as np
import pytest

from tests.helpers import load_config, two_train_steps
from vaes.data.core import ArrayEvalSource
from vaes.registry import get_family
from vaes.run_config import flatten
from vaes.evaluation import evaluate_split

TABLE_CONFIGS = {
    'configs/lvae_mnist.py': 'nll', 'configs/hvae_mnist.py': 'nll',
    'configs/vae_mnist.py': 'nll', 'configs/lvae_conv_mnist.py': 'nll',
    'configs/lvae_mnist_dynamic.py': 'nll', 'configs/hvae_mnist_dynamic.py': 'nll',
    'configs/vae_mnist_dynamic.py': 'nll',
    'configs/vrnn_jsb.py': 'nll_per_frame', 'configs/vrnn_smooth_jsb.py': 'nll_per_frame',
    'configs/srnn_jsb.py': 'nll_per_frame', 'configs/srnn_made_jsb.py': 'nll_per_frame',
    'configs/srnn_made_transpose_jsb.py': 'nll_per_frame',
    'configs/vrae_latent_jsb.py': 'nll_per_frame', 'configs/vrae_global_jsb.py': 'nll_per_frame',
}


@pytest.mark.parametrize('path', sorted(TABLE_CONFIGS))
def test_table_config_trains_and_evaluates_on_its_real_data(path):
  config = load_config(path, {'batch_size': 8, 'eval.batch_size': 8,
                              'eval.num_importance_samples': 4, 'eval.iw_chunk_size': 4,
                              'eval.select_num_importance_samples': 0})
  assert config.data.eval_split == 'test' and config.eval.select_metric == TABLE_CONFIGS[path]
  splits, trainer, state, losses = two_train_steps(config)
  assert np.all(np.isfinite(losses)) and int(state.skipped_updates) == 0
  subset = ArrayEvalSource({k: v[:12] for k, v in splits.eval.arrays.items()}, 8)  # 8 + 4 padded
  metrics = evaluate_split(get_family(config.model.name), config, trainer.model,
                           {'params': state.params, **state.model_state}, subset, splits.info,
                           jax.random.PRNGKey(0), trainer.put, progress=False)
  metric = TABLE_CONFIGS[path]
  assert np.isfinite(metrics[metric]) and metrics[metric] > 0
  if metric == 'nll':   # the ladder's ELBO is averaged over the same k samples: Jensen
    assert metrics['nll'] <= metrics['neg_elbo'] + 1e-4 * metrics['neg_elbo']
  else:                 # frames of the 12 test chorales, counted once
    assert metrics['eval_sequences'] == 12
    assert metrics['eval_frames'] == splits.eval.arrays['mask'][:12].sum()


def test_the_60k_rows_differ_from_each_other_in_the_authors_three_model_fields_only():
  """configs/lvae_mnist_dynamic_authors_60k.py is configs/lvae_mnist_dynamic_60k.py with the
  three choices of the authors' run_models.py that the validation sweep chose (and both
  train 2000 epochs on all 60,000 images with nothing selected); its model trains on the
  real data."""
  base = flatten(load_config('configs/lvae_mnist_dynamic_60k.py').to_dict())
  authors = flatten(load_config('configs/lvae_mnist_dynamic_authors_60k.py').to_dict())
  assert {k for k in base if base[k] != authors[k]} == {
      'model.share_top_down', 'model.up_from_mean', 'model.head_batch_norm'}
  assert (authors['model.share_top_down'], authors['model.up_from_mean'],
          authors['model.head_batch_norm']) == (False, True, True)
  assert authors['data.train_split'] == 'train+valid' and authors['eval.select_metric'] == ''
  assert authors['num_train_steps'] == 2000 * (60000 // 256)
  _, trainer, state, losses = two_train_steps(
      load_config('configs/lvae_mnist_dynamic_authors_60k.py', {'batch_size': 8}))
  assert np.all(np.isfinite(losses)) and int(state.skipped_updates) == 0
  model = trainer.model   # the engine's model: five layers, the three choices in force
  assert len(model.latent_sizes) == 5 and (
      model.share_top_down, model.up_from_mean, model.head_batch_norm) == (False, True, True)


FINE_TUNINGS = [    # (the trained run's config, the config that fine-tunes its weights)
    ('configs/lvae_mnist_dynamic.py', 'configs/lvae_mnist_dynamic_finetune.py'),
    ('configs/lvae_mnist_dynamic_60k.py', 'configs/lvae_mnist_dynamic_60k_finetune.py'),
    ('configs/lvae_mnist_dynamic_authors_60k.py',
     'configs/lvae_mnist_dynamic_authors_60k_finetune.py'),
]


@pytest.mark.parametrize('trained_path,tune_path', FINE_TUNINGS)
def test_a_fine_tuning_config_is_its_trained_runs_config_on_the_iw_bound(trained_path,
                                                                         tune_path):
  """A fine-tuning config restores its trained run's weights (init_from), so it must build
  the same model on the same data with the same optimiser: of the model only the objective
  (k = 10) and the warm-up (off: KL weight 1) differ, and otherwise only the schedule and
  where it starts."""
  trained = flatten(load_config(trained_path).to_dict())
  tune = flatten(load_config(tune_path).to_dict())
  assert set(trained) == set(tune)
  assert {k for k in trained if trained[k] != tune[k]} <= {
      'model.train_importance_samples', 'model.kl_warmup_fraction', 'init_from',
      'init_from_checkpoint', 'num_train_steps', 'checkpoint_every_steps', 'eval_every_steps',
      'log_every_steps'}
  assert (trained['model.train_importance_samples'], tune['model.train_importance_samples'],
          tune['model.kl_warmup_fraction'], tune['model.kl_warmup_steps']) == (1, 10, 0.0, 0)
  assert trained['model.kl_warmup_fraction'] > 0


def test_the_60k_fine_tuning_is_the_50k_one_on_the_60k_runs_data_for_the_length_valid_chose():
  """configs/lvae_mnist_dynamic_60k_finetune.py is configs/lvae_mnist_dynamic_finetune.py
  (k = 10, KL weight 1) on the 60,000 images of the run it starts from, for 10 epochs of
  them, from that run's last checkpoint, with nothing selected."""
  tune = flatten(load_config('configs/lvae_mnist_dynamic_finetune.py').to_dict())
  tune_60k = flatten(load_config('configs/lvae_mnist_dynamic_60k_finetune.py').to_dict())
  assert {k for k in tune if tune[k] != tune_60k[k]} == {
      'data.train_split', 'init_from_checkpoint', 'num_train_steps', 'checkpoint_every_steps',
      'eval_every_steps', 'eval.select_metric'}
  trained = flatten(load_config('configs/lvae_mnist_dynamic_60k.py').to_dict())
  assert tune_60k['data.train_split'] == trained['data.train_split'] == 'train+valid'
  assert (tune_60k['init_from_checkpoint'], tune_60k['eval.select_metric'],
          tune_60k['eval_every_steps']) == ('latest', '', 0)
  assert tune_60k['num_train_steps'] == 10 * (60000 // 256)
  assert (tune_60k['model.train_importance_samples'], tune_60k['model.kl_warmup_steps']) == (10, 0)
