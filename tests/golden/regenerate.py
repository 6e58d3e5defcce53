"""Golden evaluations: numbers that cannot drift.

One tiny model per family, trained for a few hundred steps on the real bundled data (the
scikit-learn digits, the bundled JSB Chorales), is kept here as its export
(tests/golden/<family>/export.msgpack, python -m vaes.export's format) with its evaluation
metrics on a fixed subset of the test split (the first `data.eval_limit` examples), recorded
to full float precision in tests/golden/<family>/golden.json. tests/test_golden.py
evaluates every export again, through eval.py's own path (vaes.evaluate.evaluate with
--export), and compares each number: a change to a model, a likelihood, an estimator or
the evaluation loop that moves one fails until the golden files are regenerated, on
purpose:

  python -m tests.golden.regenerate [family ...]      # all of GOLDEN without names

then commit tests/golden/ with a line in the commit message saying why the numbers moved
(e.g. "golden: regenerated vrae, the IW bound now masks padded frames"). A JAX / XLA
upgrade may move the last bits of every number too: regenerate, and say so.

Regeneration trains each model in a temporary folder with its config file and the
overrides below (`Golden`), exports the checkpoint eval.py would evaluate, checks that the
export evaluates to exactly the checkpoint's metrics, and writes the export and
golden.json. The prior (vqvae_prior) keeps its first stage as an export too
(first_stage.msgpack, given to it as config.data.vqvae_workdir, a path that may name an
export): its evaluation encodes the digits with that first stage again, so a change to the
VQ-VAE's encoder or decoder likelihood moves its numbers as well. No first-stage workdir
is needed anywhere. Takes a few minutes on a 2-core CPU.
"""

import argparse
import copy
import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile

GOLDEN_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(GOLDEN_DIR))
EXPORT = 'export.msgpack'
FIRST_STAGE = 'first_stage.msgpack'   # vqvae_prior: its VQ-VAE, as an export
RECORD = 'golden.json'

# Metrics that are not functions of the weights and the data: never compared.
NOT_COMPARED_SUFFIX = 'wall_time_s'


@dataclasses.dataclass(frozen=True)
class Golden:
  """One golden model: its config file, the overrides that make it tiny and short (applied
  to training and evaluation alike: they must build the exported model), and the
  evaluation's own overrides (a fixed, small test subset; few importance samples)."""
  name: str
  config: str
  overrides: dict
  eval_overrides: dict
  first_stage: bool = False    # train config.data.vqvae first and keep it as FIRST_STAGE

  @property
  def folder(self):
    return os.path.join(GOLDEN_DIR, self.name)

  @property
  def export(self):
    return os.path.join(self.folder, EXPORT)

  @property
  def record(self):
    return os.path.join(self.folder, RECORD)


def _run(steps, **extra):
  """A short run: `steps` steps, one checkpoint at the end, no evaluation while training."""
  return {'num_train_steps': steps, 'log_every_steps': steps, 'eval_every_steps': 0,
          'checkpoint_every_steps': steps, **extra}


_TINY_VQ = {'model.hidden': 16, 'model.res_hidden': 8, 'model.num_res_blocks': 1,
            'model.num_codes': 16, 'model.code_dim': 8}
# 100 of the 297 test digits in batches of 64: two batches, the second padded.
_DIGITS_EVAL = {'data.eval_limit': 100, 'eval.batch_size': 64, 'eval.num_images': 8}

GOLDEN = {g.name: g for g in (
    # With a moving average of the weights: the export holds it, not the parameters.
    Golden('vqvae', 'configs/vqvae.py',
           {**_run(300), 'batch_size': 32, 'weights_ema_decay': 0.95, **_TINY_VQ},
           dict(_DIGITS_EVAL)),
    Golden('vqvae2', 'configs/vqvae2.py',
           {**_run(300), 'batch_size': 32, **_TINY_VQ},
           dict(_DIGITS_EVAL)),
    Golden('vqvae_prior', 'configs/vqvae_prior.py',
           {**_run(300, batch_size=32, lr_warmup_steps=30), 'model.channels': 8,
            'model.num_layers': 2, 'model.embed_dim': 4, 'model.out_hidden': 16,
            'model.cond_channels': 8,
            **{f'data.vqvae.{k}': v for k, v in {**_run(300), 'batch_size': 32,
                                                   **_TINY_VQ}.items()}},
           {**_DIGITS_EVAL, 'eval.num_images': 4, 'eval.temperatures': (1.0,)},
           first_stage=True),
    Golden('lvae', 'configs/lvae.py',
           {**_run(300), 'batch_size': 32, 'model.latent_sizes': (8, 4, 2),
            'model.hidden_sizes': (32, 16, 8), 'model.kl_warmup_steps': 100},
           {**_DIGITS_EVAL, 'eval.num_importance_samples': 16, 'eval.iw_chunk_size': 8}),
    Golden('vrnn_jsb', 'configs/vrnn_jsb.py',
           {**_run(200), 'batch_size': 8, 'model.hidden': 16, 'model.latent': 4,
            'model.mlp_hidden': 16, 'eval.select_metric': '',
            'eval.select_num_importance_samples': 0},
           # 12 of the 77 test chorales, whole, in batches of 8: two batches, one padded.
           {'data.eval_limit': 12, 'eval.batch_size': 8, 'eval.num_importance_samples': 8,
            'eval.iw_chunk_size': 4, 'eval.num_plot_sequences': 2}),
)}


def load_golden_config(golden, first_stage=None):
  """The config the golden model is evaluated with: its file, its overrides and the
  evaluation's; a prior's config.data.vqvae_workdir is `first_stage` (an export)."""
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  from tests.helpers import load_config   # pylint: disable=import-outside-toplevel
  overrides = {**golden.overrides, **golden.eval_overrides}
  if golden.first_stage:
    overrides['data.vqvae_workdir'] = first_stage
  return load_config(golden.config, overrides)


def evaluate_golden(golden, workdir, export=None):
  """eval.py --export=EXPORT --workdir=WORKDIR for the golden model (in this process):
  its metrics and record (vaes.evaluate.evaluate's return). A prior's first stage is
  copied into `workdir` first (its codes are cached beside it)."""
  import vaes.families  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  from vaes import evaluate   # pylint: disable=import-outside-toplevel
  first_stage = None
  if golden.first_stage:
    first_stage = os.path.join(workdir, FIRST_STAGE)
    os.makedirs(workdir, exist_ok=True)
    shutil.copyfile(os.path.join(golden.folder, FIRST_STAGE), first_stage)
  config = load_golden_config(golden, first_stage)
  return evaluate.evaluate(config, workdir, export or golden.export)


def numbers(results):
  """The compared metrics of an evaluation's results: every number but wall times."""
  return {k: v for k, v in results.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)
          and not k.endswith(NOT_COMPARED_SUFFIX)}


def compare(recorded, got, rtol, atol):
  """Lines naming each difference between the recorded metrics and `got` (both
  {name: float}): a value outside rtol / atol (NaN equals NaN), a metric missing, a new
  one. [] when they agree."""
  lines = []
  for k in sorted(set(recorded) | set(got)):
    if k not in got:
      lines.append(f'{k}: recorded {recorded[k]!r}, no longer reported')
    elif k not in recorded:
      lines.append(f'{k}: reported ({got[k]!r}) but not recorded')
    else:
      a, b = float(recorded[k]), float(got[k])
      if math.isnan(a) and math.isnan(b):
        continue
      if not abs(b - a) <= atol + rtol * abs(a):
        lines.append(f'{k}: recorded {a!r}, now {b!r} (relative change '
                     f'{(b - a) / abs(a) if a else float("inf"):.3g})')
  return lines


def sha256(path):
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def _train_and_export(config, workdir, out):
  from vaes import export as export_lib   # pylint: disable=import-outside-toplevel
  from vaes.train import train_and_evaluate   # pylint: disable=import-outside-toplevel
  train_and_evaluate(config, workdir)
  return export_lib.export(config, workdir, out)


def regenerate(golden, tmp):
  """Trains, exports and evaluates `golden` in the folder `tmp`; writes its files into
  tests/golden/<name>/. Returns the record written."""
  import jax   # pylint: disable=import-outside-toplevel
  import vaes.families  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  from vaes import evaluate, provenance   # pylint: disable=import-outside-toplevel
  os.makedirs(golden.folder, exist_ok=True)
  first_stage = None
  if golden.first_stage:
    first_stage = os.path.join(tmp, FIRST_STAGE)
    vq = copy.deepcopy(load_golden_config(golden, first_stage).data.vqvae)
    _train_and_export(vq, os.path.join(tmp, 'first_stage_run'), first_stage)
  run, export = os.path.join(tmp, 'run'), os.path.join(tmp, EXPORT)
  _train_and_export(load_golden_config(golden, first_stage), run, export)
  # The export evaluates to exactly its checkpoint's numbers (eval.py without --export).
  from_checkpoint = numbers(evaluate.evaluate(load_golden_config(golden, first_stage), run))
  shutil.copyfile(export, golden.export)
  if golden.first_stage:
    shutil.copyfile(first_stage, os.path.join(golden.folder, FIRST_STAGE))
  results = evaluate_golden(golden, os.path.join(tmp, 'eval'))
  metrics = numbers(results)
  differ = compare(from_checkpoint, metrics, rtol=0.0, atol=0.0)
  if differ:
    raise AssertionError(f'{golden.name}: the export does not evaluate to its checkpoint\'s '
                         f'metrics: {differ}')
  files = {EXPORT: {'sha256': sha256(golden.export), 'bytes': os.path.getsize(golden.export)}}
  if golden.first_stage:
    path = os.path.join(golden.folder, FIRST_STAGE)
    files[FIRST_STAGE] = {'sha256': sha256(path), 'bytes': os.path.getsize(path)}
  record = {
      'family': golden.name, 'config': golden.config,
      'overrides': _plain(golden.overrides), 'eval_overrides': _plain(golden.eval_overrides),
      'files': files, 'metrics': metrics,
      'evaluation': {k: v for k, v in results.items()   # what was evaluated, for readers
                     if k not in metrics and k not in ('export', 'export_of')
                     and not k.endswith(NOT_COMPARED_SUFFIX)},
      'made_with': {**provenance.versions(), 'machine': platform.machine(),
                    'processor': _cpu_model(), 'backend': jax.default_backend()},
      'regenerated': datetime.date.today().isoformat(),
      'command': f'python -m tests.golden.regenerate {golden.name}',
  }
  with open(golden.record, 'w', encoding='utf-8') as f:
    f.write(json.dumps(record, indent=2, sort_keys=True) + '\n')
  return record


def _plain(d):
  return json.loads(json.dumps(d))


def _cpu_model():
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n', 1)[0])
  parser.add_argument('families', nargs='*', help=f'some of {sorted(GOLDEN)} (default: all)')
  args = parser.parse_args(argv)
  unknown = sorted(set(args.families) - set(GOLDEN))
  if unknown:
    parser.error(f'unknown families {unknown}; choose from {sorted(GOLDEN)}.')
  from absl import logging   # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.ERROR)   # Orbax logs every file at INFO
  for name in args.families or sorted(GOLDEN):
    with tempfile.TemporaryDirectory(prefix=f'golden-{name}-') as tmp:
      record = regenerate(GOLDEN[name], tmp)
    sizes = ', '.join(f'{k} {v["bytes"] / 1024:.1f} KiB' for k, v in record['files'].items())
    print(f'{name}: {len(record["metrics"])} metrics -> {GOLDEN[name].record} ({sizes})',
          flush=True)
  print('Commit tests/golden/ with a line saying why the numbers moved.')


if __name__ == '__main__':
  main()
