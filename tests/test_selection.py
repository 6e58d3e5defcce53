"""Checkpoint selection on the valid split (config.eval.select_metric): the best is kept
in WORKDIR/best across a resume, eval.py evaluates it by default (or the latest when
asked), and eval_metrics.json records which one and the wall times."""

import json
import os
import time

import pytest

from tests.helpers import REPO, data_and_trainer, load_config, read_eval_metrics
from vaes import data as data_lib
from vaes import evaluate
from vaes.checkpoint import BEST_DIR, Checkpointer, CheckpointError
from vaes.registry import ConfigError
from vaes.selection import BestCheckpoint, selection_splits
from vaes.train import train_and_evaluate

# Gaussian series (train / valid / test in memory), a tiny model, an evaluation every 2
# steps. select_mode='max' makes the best an early step, not the last one, so that the
# test tells the best from the latest and sees the best survive the resume.
SERIES = {'batch_size': 4, 'log_every_steps': 2, 'eval_every_steps': 2,
          'checkpoint_every_steps': 2, 'model.hidden': 8, 'model.latent': 2,
          'model.mlp_hidden': 8, 'eval.batch_size': 8, 'eval.num_importance_samples': 2,
          'eval.iw_chunk_size': 2, 'eval.num_plot_sequences': 2, 'data.num_train': 16,
          'data.num_valid': 8, 'data.num_test': 8, 'data.series_length': 12,
          'data.series_min_length': 6, 'model.kl_warmup_steps': 10,
          'eval.select_metric': 'nll_per_frame', 'eval.select_mode': 'max'}


def _config(**overrides):
  return load_config('configs/vrae_series.py', dict(SERIES, **overrides))


def test_best_checkpoint_survives_resume_and_eval_picks_it(tmp_path, capsys):
  wd = str(tmp_path / 'run')
  train_and_evaluate(_config(num_train_steps=4), wd)
  out = capsys.readouterr()
  # The KL warm-up of 10 steps outlasts the 4-step run: said at the start, and the
  # logged training rows carry the weight.
  assert 'KL warm-up (config.model.kl_warmup_steps=10: 10 steps) outlasts the run' in out.err
  assert "on the 'valid' split" in out.out
  wall_first = Checkpointer(wd).read_meta(4)['train_wall_time_s']

  full = _config(num_train_steps=6)
  t0 = time.time()
  train_and_evaluate(full, wd)                   # resumes at step 4
  elapsed_second = time.time() - t0
  with open(os.path.join(wd, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert all(r['kl_weight'] < 1 for r in rows if 'loss' in r)
  valid = {r['step']: r['valid/nll_per_frame'] for r in rows if 'valid/nll_per_frame' in r}
  assert sorted(valid) == [2, 4, 6] and not any(k.startswith('eval/') for r in rows for k in r)
  best_step = max(valid, key=valid.get)
  assert best_step != 6, valid                   # else the test could not tell best from latest

  best = Checkpointer(wd, 1, subdir=BEST_DIR)
  assert best.all_steps() == [best_step]
  selection = best.read_meta(best_step)['selection']
  assert selection == {'metric': 'nll_per_frame', 'mode': 'max', 'split': 'valid',
                       'value': valid[best_step], 'step': best_step}

  metrics = evaluate.evaluate(full, wd)          # eval.checkpoint='auto': the best
  saved = read_eval_metrics(wd)
  assert saved['checkpoint'] == metrics['checkpoint'] == 'best'
  assert saved['step'] == best_step and saved['best_valid_nll_per_frame'] == valid[best_step]
  # Training wall time over both runs (the second alone took elapsed_second at most).
  wall = Checkpointer(wd).read_meta(6)['train_wall_time_s']
  assert saved['train_wall_time_s'] == pytest.approx(wall)
  assert wall > elapsed_second and wall > wall_first and saved['train_steps'] == 6
  assert 0 < saved['eval_wall_time_s'] < 600

  latest = _config(num_train_steps=6, **{'eval.checkpoint': 'latest'})
  evaluate.evaluate(latest, wd)
  saved = read_eval_metrics(wd)
  assert saved['checkpoint'] == 'latest' and saved['step'] == 6
  assert 'best_valid_nll_per_frame' not in saved


def test_unknown_select_metric_is_one_clear_line(tmp_path):
  config = _config(num_train_steps=2, **{'eval.select_metric': 'nll_per_frme'})
  with pytest.raises(ConfigError) as info:
    BestCheckpoint(str(tmp_path), config).update(
        2, None, config, {'nll_per_frame': 4.0, 'neg_elbo_per_frame': 4.1}, {})
  message = str(info.value)
  assert "config.eval.select_metric='nll_per_frme' is not a metric" in message
  assert "['neg_elbo_per_frame', 'nll_per_frame']" in message and '\n' not in message
  assert not os.listdir(os.path.join(str(tmp_path), BEST_DIR))   # nothing saved


def test_unknown_select_metric_is_refused_before_training(tmp_path):
  """The family's metric names come from its evaluation traced on shapes only: a typo is
  one line before the first step, not at the first evaluation after training."""
  wd = str(tmp_path / 'run')
  config = _config(num_train_steps=4, **{'eval.select_metric': 'nll_per_frme'})
  with pytest.raises(ConfigError) as info:
    train_and_evaluate(config, wd)
  message = str(info.value)
  assert "config.eval.select_metric='nll_per_frme' is not a metric of the 'vrae' " \
      'evaluation; choose one of' in message and "'nll_per_frame'" in message
  assert '\n' not in message
  assert not os.path.exists(os.path.join(wd, 'checkpoints'))   # before any step
  assert not os.path.exists(os.path.join(wd, 'metrics.jsonl'))
  names = evaluation_names(config)
  assert {'nll_per_frame', 'neg_elbo_per_frame', 'kl_per_frame'} <= names


def evaluation_names(config):
  from vaes.evaluation import evaluation_metric_names
  from vaes.selection import selection_config
  splits, trainer = data_and_trainer(config)
  state = trainer.abstract_state
  return evaluation_metric_names(trainer.family, selection_config(config), trainer.model,
                                 selection_splits(config, splits).info,
                                 {'params': state.params, 'model_state': state.model_state},
                                 splits.train.element_spec)


def test_run_selected_on_valid_is_reported_on_test_without_retraining(tmp_path):
  """data.eval_split is evaluation-only: eval.py evaluates a run trained (and selected)
  with data.eval_split='valid' on 'test', records the split, and a sweep rerun with
  --config.data.eval_split=test only evaluates again; train.py finds the run finished."""
  from vaes import sweep
  path = tmp_path / 's.py'
  path.write_text('def get_sweep():\n  return [{"seed": 0}]\n')
  series = os.path.join(REPO, 'configs/vrae_series.py')
  flags = lambda split: sweep.override_flags(dict(SERIES, num_train_steps=2,
                                                  **{'data.eval_split': split}))
  (run,) = sweep.plan(series, str(path), str(tmp_path / 'root'), flags('valid'))
  train_and_evaluate(run.config, run.workdir)
  evaluate.evaluate(run.config, run.workdir)
  assert read_eval_metrics(run.workdir)['eval_data'] == {'eval_split': 'valid'}
  assert run.status() == ('finished', [])

  (on_test,) = sweep.plan(series, str(path), str(tmp_path / 'root'), flags('test'))
  assert on_test.status() == ('evaluate', [('data.eval_split', 'valid', 'test')])
  metrics = evaluate.evaluate(on_test.config, on_test.workdir)   # no refusal, no training
  assert metrics['checkpoint'] == 'best' and metrics['eval_data'] == {'eval_split': 'test'}
  assert read_eval_metrics(run.workdir)['eval_data'] == {'eval_split': 'test'}
  assert on_test.status() == ('finished', [])
  assert train_and_evaluate(on_test.config, on_test.workdir) == {}   # finished, not refused


def test_dataset_without_a_valid_split_names_the_fix():
  config = load_config('configs/lvae.py', {'eval.select_metric': 'nll', 'eval_every_steps': 10})
  with pytest.raises(ConfigError) as info:
    selection_splits(config, data_lib.get_datasets(config))
  message = str(info.value)
  assert "config.data.name='digits' has no such split" in message
  assert "--config.eval.select_metric=''" in message and '\n' not in message


def test_selecting_on_the_training_images_is_refused():
  config = load_config('configs/lvae_mnist.py', {'eval.select_split': 'train'})
  with pytest.raises(ConfigError) as info:
    selection_splits(config, None)
  assert 'favour the most overfit checkpoint' in str(info.value)
  assert '--config.eval.select_split=valid' in str(info.value) and '\n' not in str(info.value)


def test_eval_of_best_without_one_names_the_fix(tmp_path):
  config = _config(**{'eval.checkpoint': 'best'})
  with pytest.raises(CheckpointError, match='--config.eval.checkpoint=latest'):
    evaluate.evaluate(config, str(tmp_path))
  assert not os.listdir(str(tmp_path))           # read-only: nothing created


def test_selection_evaluations_take_their_own_importance_sample_count():
  from vaes.selection import selection_config
  config = load_config('configs/vrnn_jsb.py', {'eval.select_num_importance_samples': 20})
  chosen = selection_config(config)
  assert (chosen.eval.num_importance_samples, chosen.eval.iw_chunk_size) == (20, 20)
  assert (config.eval.num_importance_samples, config.eval.iw_chunk_size) == (500, 25)
  config.eval.select_num_importance_samples = 0
  assert selection_config(config) is config


def test_selection_sample_count_is_checked_by_the_family_that_evaluates_with_it():
  """The engine only checks that the family evaluates with importance samples; whether
  the count must fill whole chunks is the family's rule: the ladder's bound masks a
  partial last chunk, the VRAE's needs whole chunks."""
  from vaes.registry import get_family
  from vaes.preflight import validate_config
  ladder = load_config('configs/lvae_mnist.py', {'eval.select_num_importance_samples': 700})
  validate_config(ladder, get_family('lvae'), num_devices=1)       # 500 + a partial 200
  vrnn = load_config('configs/vrnn_jsb.py', {'eval.select_num_importance_samples': 30})
  with pytest.raises(ConfigError, match='multiple of config.eval.iw_chunk_size=25'):
    validate_config(vrnn, get_family('vrae'), num_devices=1)
  vq = load_config('configs/vqvae.py', {'eval.select_num_importance_samples': 10})
  with pytest.raises(ConfigError, match='families that evaluate with importance samples'):
    validate_config(vq, get_family('vqvae'), num_devices=1)


def test_best_checkpoint_belongs_to_its_run(tmp_path, capsys):
  """WORKDIR/best is keyed to the run (an id set at its first start, kept in every
  checkpoint's meta): after checkpoints/ is deleted, eval.py refuses the best of the
  earlier run next to a run without one, and a new run with selection moves it aside
  and keeps its own, even where the old best value would never be beaten."""
  import shutil
  wd = str(tmp_path / 'run')
  first = _config(num_train_steps=4)
  train_and_evaluate(first, wd)
  old_best = Checkpointer(wd, 1, subdir=BEST_DIR)
  old_step = old_best.all_steps()[-1]
  old_run = old_best.read_meta(old_step)['run']
  assert old_run['id'] == Checkpointer(wd).read_meta(4)['run']['id']

  # checkpoints/ deleted, retrained with another learning rate and no selection: the best
  # left in the workdir is not this run's.
  shutil.rmtree(os.path.join(wd, 'checkpoints'))
  other = dict(num_train_steps=4, learning_rate=3e-3, **{'eval.select_metric': ''})
  train_and_evaluate(_config(**other), wd)
  with pytest.raises(CheckpointError) as info:
    evaluate.evaluate(_config(**other, **{'eval.checkpoint': 'best'}), wd)
  message = str(info.value)
  assert f'(step {old_step}) belongs to another run than the checkpoints in' in message
  assert f"it is of run {old_run['id']}" in message and '\n' not in message
  assert '--config.eval.checkpoint=latest' in message

  # A fresh run with selection (checkpoints/ deleted again): the old best is moved aside
  # (not deleted) with one line, and the best is this run's own. select_mode='min' on a
  # metric the earlier run maximised: its value would never have been beaten.
  shutil.rmtree(os.path.join(wd, 'checkpoints'))
  capsys.readouterr()
  new = _config(num_train_steps=4, learning_rate=3e-3, **{'eval.select_mode': 'min'})
  train_and_evaluate(new, wd)
  out = capsys.readouterr().out
  notes = [l for l in out.splitlines() if 'held the best checkpoint' in l]
  assert len(notes) == 1 and 'of another run than this one' in notes[0], out
  assert os.listdir(os.path.join(wd, 'best_of_earlier_runs'))[0].startswith(f'{old_step}-')
  best = Checkpointer(wd, 1, subdir=BEST_DIR)
  meta = best.read_meta(best.all_steps()[-1])
  assert meta['run']['id'] == Checkpointer(wd).read_meta(4)['run']['id'] != old_run['id']
  with open(os.path.join(wd, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  valid = {r['step']: r['valid/nll_per_frame'] for r in rows if 'valid/nll_per_frame' in r}
  assert meta['selection']['value'] == min(valid.values())
  metrics = evaluate.evaluate(new, wd)
  assert metrics['checkpoint'] == 'best' and metrics['step'] == meta['selection']['step']


def test_best_of_a_run_without_ids_is_told_apart_by_its_training_fields():
  """Checkpoints written before runs had ids: the training fields tell the run."""
  from vaes.run_config import config_dict
  from vaes.selection import _other_run
  config = _config(num_train_steps=6)
  run = {'id': 'abc', 'started': None}
  same = {'config': config_dict(_config(num_train_steps=4))}   # a resume may extend a run
  assert _other_run(same, run, 'legacy', config) is None
  other = {'config': config_dict(_config(num_train_steps=4, learning_rate=3e-3))}
  assert 'learning_rate: checkpoint 0.003 vs config 0.002' in _other_run(other, run, 'legacy',
                                                                        config)
  assert 'starts at step 0' in _other_run(same, run, 'fresh', config)
  assert _other_run({**same, 'run': {'id': 'abc'}}, run, 'checkpoint', config) is None
  assert 'it is of run xyz' in _other_run({**same, 'run': {'id': 'xyz'}}, run, 'checkpoint',
                                          config)
