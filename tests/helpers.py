"""Shared test utilities: configs with overrides, runs on N simulated CPU devices
(in a subprocess, since XLA_FLAGS must be set before JAX starts), CLI runs, idx files."""

import dataclasses
import gzip
import importlib.util
import json
import os
import pickle
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable


def load_config(path, overrides=None):
  """get_config() of a config file, with {'a.b': value} overrides applied."""
  full = path if os.path.isabs(path) else os.path.join(REPO, path)
  spec = importlib.util.spec_from_file_location('_cfg', full)
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, REPO)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in (overrides or {}).items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise KeyError(f'unknown config field {key}')
    node[leaf] = value
  return config


def data_and_trainer(config):
  """The config's data (vaes.data.get_datasets) and its engine (vaes.train.build_trainer):
  (splits, trainer)."""
  from vaes import data as data_lib
  from vaes.train import build_trainer
  splits = data_lib.get_datasets(config)
  return splits, build_trainer(config, splits.info, splits.train.element_spec)


def two_train_steps(config):
  """The config's data, its engine and its state after two real train steps on the first
  two training batches: (splits, trainer, state, [loss, loss])."""
  splits, trainer = data_and_trainer(config)
  state, losses = trainer.init_fn(), []
  for step in range(2):
    state, metrics = trainer.train_step(state, trainer.put(splits.train.batch(step)))
    losses.append(float(metrics['loss']))
  return splits, trainer, state, losses


def model_fields(module_class, family, **given):
  """Keyword arguments of a family's Linen module built directly in a test: `given`, and
  every other field of `module_class` that is a `config.model` field, from the family
  module's `model_config()` (the one home of those defaults: the modules have none)."""
  schema = family.model_config()
  names = [f.name for f in dataclasses.fields(module_class)]
  return {**{n: schema[n] for n in names if n in schema and n not in given}, **given}


def subprocess_env(num_devices=1, extra=None):
  env = dict(os.environ)
  inherited = [f for f in env.get('XLA_FLAGS', '').split()      # tests/conftest.py's
               if not f.startswith('--xla_force_host_platform_device_count=')]
  env['XLA_FLAGS'] = ' '.join(inherited + [
      f'--xla_force_host_platform_device_count={num_devices}'])
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  env.pop('CUDA_VISIBLE_DEVICES', None)
  env.update(extra or {})
  return env


def train_steps_on_devices(config_path, overrides, device_counts, num_steps, out_dir):
  """Runs `num_steps` steps of the real jitted train step on meshes of each of
  `device_counts` simulated CPU devices, in one fresh process. Returns
  {n: {'num_devices', 'metrics': [per step dict], 'leaves': {path: array}}} with the
  params, model state (and EMA of the params, with config.weights_ema_decay > 0) after the
  last step."""
  out = os.path.join(out_dir, 'steps_' + '_'.join(map(str, device_counts)) + '.pkl')
  cmd = [PYTHON, '-m', 'tests.run_steps', '--config', config_path,
         '--overrides', json.dumps(overrides or {}), '--steps', str(num_steps),
         '--devices', ','.join(map(str, device_counts)), '--out', out]
  proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(max(device_counts)),
                        capture_output=True, text=True, timeout=600)
  if proc.returncode != 0:
    raise AssertionError(f'run_steps on {device_counts} devices failed:\n{proc.stderr[-4000:]}')
  with open(out, 'rb') as f:
    return pickle.load(f)


def assert_same_on_1_and_8_devices(config_path, overrides, tmp_path, num_steps=3,
                                   rtol=2e-4, atol=2e-5):
  """The train step on a mesh of 8 simulated devices gives the same metrics,
  parameters and model state (BN statistics, EMA codebooks, ...) as on 1 device.
  Returns the two results (see train_steps_on_devices)."""
  results = train_steps_on_devices(config_path, overrides, (1, 8), num_steps, str(tmp_path))
  one, eight = results[1], results[8]
  assert one['num_devices'] == 1 and eight['num_devices'] == 8
  for step, (m1, m8) in enumerate(zip(one['metrics'], eight['metrics'])):
    for k in m1:
      np.testing.assert_allclose(m8[k], m1[k], rtol=rtol, atol=atol,
                                 err_msg=f'metric {k} at step {step}')
  assert one['leaves'].keys() == eight['leaves'].keys()
  for k in one['leaves']:
    np.testing.assert_allclose(eight['leaves'][k], one['leaves'][k], rtol=rtol, atol=atol,
                               err_msg=f'state leaf {k}')
  return one, eight


def run_cli(script, config_path, workdir, overrides=None, num_devices=1, timeout=600,
            check=True, extra_args=(), env=None):
  """python {script} --config=... --workdir=... --config.k=v ...; returns CompletedProcess."""
  cmd = [PYTHON, os.path.join(REPO, script), f'--config={os.path.join(REPO, config_path)}',
         f'--workdir={workdir}']
  cmd += [f'--config.{k}={v}' for k, v in (overrides or {}).items()]
  cmd += list(extra_args)
  proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(num_devices, env),
                        capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f'{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n'
                         f'{proc.stderr[-5000:]}')
  return proc


def read_eval_metrics(workdir):
  with open(os.path.join(workdir, 'eval_metrics.json'), encoding='utf-8') as f:
    return json.load(f)


def read_events(logdir):
  """Every tensorboard Event (protos) in the event files under `logdir`, read with the
  TFRecord framing (length, crc, data, crc) and tensorboardX's Event proto."""
  import glob
  import struct
  from tensorboardX.proto.event_pb2 import Event
  events = []
  for path in sorted(glob.glob(os.path.join(logdir, '**', 'events.out.tfevents.*'),
                               recursive=True)):
    with open(path, 'rb') as f:
      data = f.read()
    pos = 0
    while pos + 12 <= len(data):
      (length,) = struct.unpack('<Q', data[pos:pos + 8])
      record = data[pos + 12:pos + 12 + length]
      pos += 12 + length + 4
      event = Event()
      event.ParseFromString(record)
      events.append(event)
  return events


def idx_bytes(array):
  """The idx file of a uint8 array: 00 00 08 ndim, the sizes as big-endian uint32, data."""
  header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, '>u4').tobytes()
  return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_idx_images(directory, train, test, gz=True):
  """train-images-idx3-ubyte[.gz] and t10k-images-idx3-ubyte[.gz] of two uint8 arrays
  in `directory` (the layout of MNIST and Fashion-MNIST); returns `directory` as str."""
  os.makedirs(directory, exist_ok=True)
  for stem, array in (('train-images-idx3-ubyte', train), ('t10k-images-idx3-ubyte', test)):
    data = idx_bytes(array)
    with open(os.path.join(directory, stem + ('.gz' if gz else '')), 'wb') as f:
      f.write(gzip.compress(data) if gz else data)
  return str(directory)
