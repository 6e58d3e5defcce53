"""Golden evaluations: each tiny trained model of tests/golden/ (one per family: VQ-VAE,
its PixelCNN prior, VQ-VAE-2, ladder VAE, VRNN on JSB Chorales) is evaluated again from its
export through eval.py's own path (vaes.evaluate.evaluate with an export, in this
process), and every number of its golden.json must come back.

A failure here means that a change moved a model's output, a likelihood, an estimator
or the evaluation loop. If that was the purpose of the change, regenerate the golden files
and say why in the commit message (tests/golden/regenerate.py's docstring):

  python -m tests.golden.regenerate [family ...]

Tolerance: rtol = 1e-5 (atol = 1e-8 for values near 0). The evaluation is deterministic
(fixed seed, per-batch keys fold_in(rng, i), float64 sums of float32 statistics), so on
the machine and JAX release that wrote the files the numbers come back bit for bit (the
export evaluates to exactly its checkpoint's numbers; regenerate.py checks that). The
margin, about 100 float32 roundings, is for XLA:CPU on another CPU of the CI's type (a
reduction reordered by another vector width moves the last bits). What it lets through:
one of the VQ-VAE's 6,761 weights scaled by 1.001 moves its metrics by 1e-7 to 2.5e-5
(the commitment loss is caught, the reconstruction error is not); scaled by 1.01, by up
to 2.5e-4, caught (`test_the_comparison_catches_a_small_change_of_one_weight`). A
change to a model, a likelihood or an estimator moves them by far more. Wall times are
not compared; counts (steps, examples, active units) are numbers like the others.
"""

import json
import os

import numpy as np
import pytest

from tests.golden import regenerate as golden_lib
from vaes import export_file

RTOL = 1e-5
ATOL = 1e-8


def _record(golden):
  with open(golden.record, encoding='utf-8') as f:
    return json.load(f)


@pytest.mark.parametrize('name', sorted(golden_lib.GOLDEN))
def test_golden_evaluation(name, tmp_path):
  golden = golden_lib.GOLDEN[name]
  record = _record(golden)
  # The files are those the numbers were made from, with the overrides of GOLDEN.
  for file, made in record['files'].items():
    path = os.path.join(golden.folder, file)
    assert golden_lib.sha256(path) == made['sha256'], (
        f'{path} is not the file {golden.record} was made from: regenerate ({record["command"]})')
    assert made['bytes'] < 200 * 1024, f'{path}: keep golden exports small'
  assert record['overrides'] == golden_lib._plain(golden.overrides) and \
      record['eval_overrides'] == golden_lib._plain(golden.eval_overrides), (
          f'GOLDEN[{name!r}] changed since {golden.record} was made: regenerate '
          f'({record["command"]})')
  results = golden_lib.evaluate_golden(golden, str(tmp_path))
  assert results['checkpoint'] == 'export' and results['weights'] == \
      record['evaluation']['weights']
  differ = golden_lib.compare(record['metrics'], golden_lib.numbers(results), RTOL, ATOL)
  assert not differ, (
      f'{name}: the golden evaluation moved ({len(differ)} of {len(record["metrics"])} '
      'metrics):\n  ' + '\n  '.join(differ) + '\nIf the change is meant to move them, run '
      f'`{record["command"]}` and say why in the commit message.')


def test_the_comparison_catches_a_small_change_of_one_weight(tmp_path):
  """The golden test is not vacuous: the VQ-VAE's export with one of its 6,761 weights
  scaled by 1.01 is reported, metric by metric."""
  golden = golden_lib.GOLDEN['vqvae']
  variables, meta = export_file.load_export(golden.export)
  encoder = variables['params']['encoder']
  kernel = encoder['Conv_1']['kernel'].copy()   # the restored arrays are read-only
  kernel[1, 1, 0, 0] *= 1.01                    # the centre tap of one 3x3 filter
  encoder['Conv_1']['kernel'] = kernel
  changed = str(tmp_path / 'changed.msgpack')
  export_file.save_export(changed, variables, {k: v for k, v in meta.items()
                                                if k not in ('checksums', 'created')})
  results = golden_lib.evaluate_golden(golden, str(tmp_path / 'eval'), export=changed)
  differ = golden_lib.compare(_record(golden)['metrics'], golden_lib.numbers(results), RTOL,
                              ATOL)
  assert {'loss', 'commitment_loss'} <= {line.split(':')[0] for line in differ}, differ
  # And the comparison itself: a value beyond the tolerance, a missing and a new metric.
  assert golden_lib.compare({'a': 1.0, 'b': 2.0, 'n': float('nan')},
                            {'a': 1.0 + 0.5 * RTOL, 'b': 2.0, 'n': float('nan')},
                            RTOL, ATOL) == []
  lines = golden_lib.compare({'a': 1.0, 'b': 2.0}, {'a': 1.0 + 3 * RTOL, 'c': 0.0}, RTOL, ATOL)
  assert [line.split(':')[0] for line in lines] == ['a', 'b', 'c']


def test_golden_exports_hold_the_weights_eval_evaluates():
  """The VQ-VAE's golden run kept a moving average of its weights: the export holds it."""
  _, meta = export_file.load_export(golden_lib.GOLDEN['vqvae'].export)
  assert meta['weights'] == 'ema' and meta['weights_ema_decay'] == 0.95
  assert np.isfinite(meta['step']) and meta['checkpoint']['kind'] == 'latest'
