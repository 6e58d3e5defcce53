"""Workdirs given as URLs (vaes.fs): a file:// run writes every artefact where the URL
says, and the writers that do not go through Orbax write into an fsspec memory:// URL."""

import json
import os
import uuid

import fsspec
import numpy as np
import pytest

from tests.helpers import load_config, read_events
from vaes import fs
from vaes.evaluate import evaluate, write_eval_metrics
from vaes.metric_writers import TENSORBOARD_DIR, MetricWriter
from vaes.plotting import save_image_grid
from vaes.provenance import write_config_json
from vaes.train import train_and_evaluate

TINY_VQ = {'batch_size': 32, 'model.hidden': 16, 'model.res_hidden': 8, 'model.num_codes': 16,
           'eval.batch_size': 128}


def test_paths_resolve_and_join():
  assert fs.resolve('file:///tmp/run/checkpoints') == '/tmp/run/checkpoints'
  assert fs.resolve('gs://bucket/run/checkpoints') == 'gs://bucket/run/checkpoints'
  assert fs.resolve('run') == os.path.join(os.getcwd(), 'run')
  assert fs.join('gs://bucket/run/', 'images', 'a.png') == 'gs://bucket/run/images/a.png'
  assert fs.join('file:///tmp/run', 'x') == 'file:///tmp/run/x'
  assert fs.join('/tmp/run', 'x') == '/tmp/run/x'
  assert fs.is_local('file:///tmp/run') and fs.is_local('run')
  assert not fs.is_local('gs://bucket/run') and not fs.is_local('memory://run')


def test_train_and_eval_in_a_file_url_workdir(tmp_path, monkeypatch):
  """Checkpoints, metrics.jsonl, TensorBoard events, PNGs,
  config.json and eval_metrics.json all land in the folder the file:// URL names;
  nothing goes into a local folder called 'file:' (os.path.abspath of the URL)."""
  monkeypatch.chdir(tmp_path)        # where a stray 'file:' folder would appear
  local = tmp_path / 'runs' / 'vq'
  url = 'file://' + str(local)
  config = load_config('configs/vqvae.py', dict(
      TINY_VQ, num_train_steps=4, log_every_steps=2, eval_every_steps=4,
      checkpoint_every_steps=2))
  train_and_evaluate(config, url)
  metrics = evaluate(config, url)
  assert metrics['checkpoint'] == 'latest' and metrics['step'] == 4.0

  assert sorted(os.listdir(local / 'checkpoints')) == ['2', '4']
  rows = [json.loads(line) for line in open(local / 'metrics.jsonl', encoding='utf-8')]
  assert {r['step'] for r in rows} == {2, 4}
  assert json.load(open(local / 'config.json', encoding='utf-8'))['config']['num_train_steps'] == 4
  assert json.load(open(local / 'eval_metrics.json', encoding='utf-8'))['step'] == 4.0
  assert os.path.exists(local / 'images' / 'step_0000004_reconstructions.png')
  assert os.path.exists(local / 'eval_reconstructions.png')
  events = read_events(str(local / TENSORBOARD_DIR))
  tags = {v.tag for e in events for v in e.summary.value}
  assert {'loss', 'images/reconstructions', 'final_images/reconstructions'} <= tags
  strays = [os.path.join(d, n) for d, dirs, files in os.walk(tmp_path) for n in dirs + files
            if n.startswith('file:')]
  assert not strays and not os.path.exists('file:')


@pytest.fixture
def memory_url():
  url = f'memory://vaes-test-{uuid.uuid4().hex}/run'
  yield url
  fsspec.filesystem('memory').rm(url.split('/run')[0], recursive=True)


def _read(url, mode='r'):
  with fsspec.open(url, mode) as f:
    return f.read()


def test_writers_write_into_a_memory_url(memory_url):
  config = load_config('configs/vqvae.py', TINY_VQ)
  assert write_config_json(memory_url, config) == memory_url + '/config.json'
  assert json.loads(_read(memory_url + '/config.json'))['config']['batch_size'] == 32

  path = write_eval_metrics(memory_url, {'loss': 1.5, 'nll': float('nan')},
                            {'checkpoint': 'latest'})
  assert json.loads(_read(path)) == {'loss': 1.5, 'nll': 'nan', 'checkpoint': 'latest'}

  images = np.random.default_rng(0).uniform(size=(4, 8, 8, 1))
  save_image_grid(memory_url + '/images/step_0000002_samples.png', images)
  assert _read(memory_url + '/images/step_0000002_samples.png', 'rb')[:8] == b'\x89PNG\r\n\x1a\n'

  writer = MetricWriter(memory_url, config=config)
  for step in (1, 2, 3):
    writer.write(step, {'loss': float(step)})
  writer.write_images(2, memory_url + '/images', 'step_0000002_')
  writer.close()
  rows = [json.loads(line) for line in _read(memory_url + '/metrics.jsonl').splitlines()]
  assert [r['step'] for r in rows] == [1, 2, 3]
  event_files = fs.listdir(memory_url + '/' + TENSORBOARD_DIR)
  assert len(event_files) == 1 and event_files[0].startswith('events.out.tfevents')
  assert len(_read(f'{memory_url}/{TENSORBOARD_DIR}/{event_files[0]}', 'rb')) > 100

  # A resumed run drops the rows logged after its checkpoint (step 2), then appends.
  writer = MetricWriter(memory_url, resume_step=2, tensorboard=False)
  writer.write(3, {'loss': 30.0})
  writer.close()
  rows = [json.loads(line) for line in _read(memory_url + '/metrics.jsonl').splitlines()]
  assert [(r['step'], r['loss']) for r in rows] == [(1, 1.0), (2, 2.0), (3, 30.0)]
