"""What a run shows in TensorBoard beyond scalars: the evaluation's image grids, the
hyper-parameters, and the jax.profiler trace of config.profile_steps."""

import glob
import gzip
import io
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from tests.helpers import load_config, read_events
from tests.test_failures import TINY_VQ
from vaes import evaluate
from vaes.registry import ConfigError
from vaes.preflight import validate_config
from vaes.train import train_and_evaluate

OVERRIDES = dict(TINY_VQ, num_train_steps=4, log_every_steps=2, checkpoint_every_steps=4,
                 eval_every_steps=4, profile_steps=(1, 2))


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('observed'))
  config = load_config('configs/vqvae.py', OVERRIDES)
  train_and_evaluate(config, workdir)
  evaluate.evaluate(config, workdir)
  return workdir, config


def test_profile_steps_writes_a_trace_of_those_steps(run):
  workdir, _ = run
  runs = glob.glob(os.path.join(workdir, 'tensorboard', 'plugins', 'profile', '*'))
  assert len(runs) == 1
  assert glob.glob(os.path.join(runs[0], '*.xplane.pb'))       # what XProf / TensorBoard read
  with gzip.open(glob.glob(os.path.join(runs[0], '*.trace.json.gz'))[0]) as f:
    events = json.load(f)['traceEvents']
  steps = sorted(int(e['args']['step_num']) for e in events if e.get('name') == 'train')
  assert steps == [1, 2]                                       # steps 1 and 2, annotated


def test_tensorboard_gets_the_evaluation_grids_and_the_hyperparameters(run):
  workdir, config = run
  from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData
  values = [(e.step, v) for e in read_events(os.path.join(workdir, 'tensorboard'))
            for v in e.summary.value]
  images = {(step, v.tag): v.image for step, v in values if v.HasField('image')}
  assert set(images) == {(4, 'images/reconstructions'), (4, 'final_images/reconstructions')}
  for (_, tag), image in images.items():
    png = (os.path.join(workdir, 'images', 'step_0000004_reconstructions.png')
           if tag.startswith('images/') else os.path.join(workdir, 'eval_reconstructions.png'))
    shown = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert('RGB'))
    np.testing.assert_array_equal(shown, np.asarray(Image.open(png).convert('RGB')))

  starts = [v for _, v in values if v.tag == '_hparams_/session_start_info']
  assert len(starts) == 1
  plugin = HParamsPluginData.FromString(starts[0].metadata.plugin_data.content)
  hparams = plugin.session_start_info.hparams
  assert hparams['learning_rate'].number_value == config.learning_rate
  assert hparams['model.num_codes'].number_value == 16
  assert hparams['data.name'].string_value == 'digits'
  assert hparams['profile_steps'].string_value == '(1, 2)'
  text = [v for _, v in values if v.tag.startswith('config')][0]
  assert b'| model.num_codes | 16 |' in text.tensor.string_val[0]
  scalars = {v.tag for _, v in values if v.HasField('simple_value')}
  assert {'loss', 'eval/loss'} <= scalars


@pytest.mark.parametrize('value', [(5,), (1, 0), (-1, 2), (1.5, 2), (1, 2, 3)])
def test_bad_profile_steps_are_refused(value):
  config = load_config('configs/vqvae.py', TINY_VQ)
  config.profile_steps = value
  with pytest.raises(ConfigError, match=r"config\.profile_steps=.*\(start_step, num_steps\)"):
    validate_config(config, num_devices=1)


def test_profile_steps_past_the_run_are_refused_or_noted():
  """A profile that starts at or after the run's end would trace nothing: refused (one
  line). One that the run ends inside of, or that a resumed run starts after, traces
  fewer steps than asked: a note says which at the start of the run."""
  from vaes import profiler
  config = load_config('configs/vqvae.py', dict(TINY_VQ, num_train_steps=50))
  config.profile_steps = (50, 5)
  with pytest.raises(ConfigError, match=re.escape(
      'config.profile_steps=(50, 5) starts at step 50, but the run ends at '
      "config.num_train_steps=50: nothing would be profiled. Start it earlier, e.g. "
      "--config.profile_steps='(10, 5)'")):
    validate_config(config, num_devices=1)
  config.profile_steps = (48, 5)
  validate_config(config, num_devices=1)
  assert profiler.note((48, 5), 50) == ('Note: config.profile_steps=(48, 5): the run ends at '
                                       'config.num_train_steps=50, so only steps 48..49 are '
                                       'profiled.')
  assert profiler.note((10, 5), 50, start_step=12) == (
      'Note: config.profile_steps=(10, 5): this run resumes at step 12, so only steps 12..14 '
      'are profiled.')
  assert 'nothing is profiled' in profiler.note((10, 5), 50, start_step=20)
  assert profiler.note((10, 5), 50) is None and profiler.note((), 50) is None
