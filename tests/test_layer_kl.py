"""python -m vaes.layer_kl: per-layer KL and active units from eval_metrics.json."""

import json
import os

import numpy as np
from PIL import Image

from tests.helpers import REPO
from vaes import layer_kl


def make_eval(root, name, kl, active, latent_sizes=None):
  folder = root / name
  folder.mkdir()
  metrics = {'nll': 83.0, 'kl': sum(kl), 'active_units': sum(active)}
  for l, (k, a) in enumerate(zip(kl, active), start=1):
    metrics.update({f'kl_layer_{l}': k, f'active_units_layer_{l}': a})
  (folder / 'eval_metrics.json').write_text(json.dumps(metrics))
  if latent_sizes is not None:
    (folder / 'config.json').write_text(
        json.dumps({'config': {'model': {'latent_sizes': latent_sizes}}}))
  return str(folder)


def run_main(capsys, argv):
  rc = layer_kl.main(argv)
  out, err = capsys.readouterr()
  return rc, out, err


def test_read_layers_in_layer_order_with_sizes_where_config_gives_them(tmp_path):
  ladder = make_eval(tmp_path, 'ladder', [8.1, 10.7, 3.0, 3e-5, 2.2], [64, 32, 16, 8, 1],
                     [64, 32, 16, 8, 4])
  assert layer_kl.read_layers(ladder) == ([8.1, 10.7, 3.0, 3e-5, 2.2],
                                          [64.0, 32.0, 16.0, 8.0, 1.0], [64, 32, 16, 8, 4])
  # No config.json, or one whose sizes are not one per layer: no outline.
  assert layer_kl.read_layers(make_eval(tmp_path, 'bare', [5.0], [3]))[2] is None
  assert layer_kl.read_layers(make_eval(tmp_path, 'odd', [5.0, 1.0], [3, 1], [64]))[2] is None


def test_the_projects_ladder_rows_are_read_as_their_metrics_say():
  row = os.path.join(REPO, 'results', 'lvae_mnist_dynamic', 'seed0')
  kl, active, sizes = layer_kl.read_layers(row)
  with open(os.path.join(row, 'eval_metrics.json')) as f:
    metrics = json.load(f)
  assert np.isclose(sum(kl), metrics['kl'], rtol=1e-4)   # the layers add up to the total
  assert sum(active) == metrics['active_units'] and sizes == [64, 32, 16, 8, 4]


def test_a_png_of_two_panels_is_written(tmp_path, capsys):
  a = make_eval(tmp_path, 'a', [8.1, 10.7, 3.0, 3e-5, 2.2], [64, 32, 16, 8, 1],
                [64, 32, 16, 8, 4])
  b = make_eval(tmp_path, 'b', [30.7], [64], [64])
  out_png = tmp_path / 'figs' / 'layers.png'
  rc, out, err = run_main(capsys, [f'ladder={a}', f'one layer={b}', '--out', str(out_png),
                                   '--title', 'MNIST'])
  assert rc == 0, err
  assert 'the layers of 2 runs' in out
  image = np.asarray(Image.open(out_png).convert('L'))
  assert image.shape == (288, 800)   # 10 x 3.6 inches at 80 dpi
  assert image.min() < 128 < image.max()


def test_bad_folders_are_one_clear_line(tmp_path, capsys):
  flat = tmp_path / 'flat'
  flat.mkdir()
  (flat / 'eval_metrics.json').write_text(json.dumps({'nll': 90.0, 'kl': 20.0}))
  broken = tmp_path / 'broken'
  broken.mkdir()
  (broken / 'eval_metrics.json').write_text('{"nll": 9')
  for argv, words in [
      ([str(flat)], 'is not LABEL=WORKDIR'),
      ([f'a={tmp_path}/missing'], 'eval_metrics.json does not exist'),
      ([f'a={flat}'], 'has no kl_layer_1; give the evaluation of a ladder'),
      ([f'a={broken}'], 'is not readable JSON'),
      (['a=nosuch://bucket/run'], "unknown URL scheme 'nosuch://'"),
  ]:
    rc, out, err = run_main(capsys, argv + ['--out', str(tmp_path / 'x.png')])
    assert rc == 1 and not out
    assert err.count('\n') == 1 and words in err, err
  assert not (tmp_path / 'x.png').exists()


def make_units(root, name, layers):
  folder = root / name
  folder.mkdir()
  record = {'active_threshold': 0.01, 'kl_threshold': 0.01, 'layers': [
      {'layer': l, 'kl': kl, 'activity': activity}
      for l, (kl, activity) in enumerate(layers, start=1)]}
  (folder / 'units.json').write_text(json.dumps(record))
  return str(folder)


def test_units_are_one_panel_per_run_from_units_json(tmp_path, capsys):
  # A collapsed layer whose units follow the one above: active, with no KL of their own.
  ladder = make_units(tmp_path, 'ladder', [([2.0, 0.5, 1e-5], [0.9, 0.2, 0.001]),
                                           ([3e-6, 2e-6], [0.05, 0.3])])
  assert layer_kl.read_units(ladder) == ([([2.0, 0.5, 1e-5], [0.9, 0.2, 0.001]),
                                          ([3e-6, 2e-6], [0.05, 0.3])], (0.01, 0.01))
  one = make_units(tmp_path, 'one', [([1.5, -2e-4], [0.7, 1e-4])])   # a negative MC term
  out_png = tmp_path / 'units.png'
  rc, out, err = run_main(capsys, [f'ladder={ladder}', f'one layer={one}', '--units',
                                   '--out', str(out_png)])
  assert rc == 0, err
  assert 'the units of 2 runs' in out
  image = np.asarray(Image.open(out_png).convert('L'))
  assert image.shape == (304, 720)   # (2 x 4.2 + 0.6) x 3.8 inches at 80 dpi
  assert image.min() < 128 < image.max()
  # Without units.json, or with another file there: one line naming the command.
  bare = make_eval(tmp_path, 'bare', [5.0], [3])
  odd = tmp_path / 'odd'
  odd.mkdir()
  (odd / 'units.json').write_text(json.dumps({'layers': [{'kl': [1.0]}]}))
  for folder, words in ((bare, 'write it with python -m vaes.units'),
                        (str(odd), 'is not a units.json of python -m vaes.units')):
    rc, out, err = run_main(capsys, [f'a={folder}', '--units', '--out', str(tmp_path / 'x.png')])
    assert rc == 1 and not out
    assert err.count('\n') == 1 and words in err, err
  assert not (tmp_path / 'x.png').exists()
