"""python -m vaes.curves: training curves from metrics.jsonl, x in steps or epochs."""

import json

import numpy as np
import pytest
from PIL import Image

from vaes import curves


def make_run(root, name, batch_size, rows, tail=''):
  workdir = root / name
  workdir.mkdir()
  lines = ''.join(json.dumps(r) + '\n' for r in rows)
  (workdir / 'metrics.jsonl').write_text(lines + tail)
  (workdir / 'config.json').write_text(json.dumps({'config': {'batch_size': batch_size}}))
  return str(workdir)


@pytest.fixture
def run(tmp_path):
  rows = [{'step': 1000, 'loss': 95.0}, {'step': 2000, 'valid/nll': 88.5, 'valid/kl': 25.0},
          {'step': 3000, 'loss': 91.0}, {'step': 4000, 'valid/nll': 87.25}]
  return make_run(tmp_path, 'a', 50, rows, tail='{"step": 5000, "valid/n')  # cut by a kill


def run_main(capsys, argv):
  rc = curves.main(argv)
  out, err = capsys.readouterr()
  return rc, out, err


def test_read_curve_keeps_the_metrics_rows_in_step_order(tmp_path):
  rows = [{'step': 300, 'valid/nll': 3.0}, {'step': 100, 'valid/nll': 1.0},
          {'step': 200, 'loss': 9.0}]
  assert curves.read_curve(make_run(tmp_path, 'b', 8, rows), 'valid/nll') == (
      [100, 300], [1.0, 3.0])


def test_the_plot_gets_each_run_in_epochs(run, tmp_path, capsys, monkeypatch):
  drawn = {}
  monkeypatch.setattr(curves, 'save_curves', lambda path, c, **kw: drawn.update(c=c, **kw))
  other = make_run(tmp_path, 'b', 100, [{'step': 500, 'valid/nll': 90.0}])
  rc, out, err = run_main(capsys, [f'ladder={run}', f'hier={other}', '--metric', 'valid/nll',
                                   '--epoch_images', '1000', '--out', 'x.png'])
  assert rc == 0, err
  # 2000 steps of 50 images are 100 epochs of 1000; 500 steps of 100 are 50.
  assert drawn['c'] == [('ladder', [100.0, 200.0], [88.5, 87.25]), ('hier', [50.0], [90.0])]
  assert drawn['xlabel'] == 'epoch' and drawn['ylabel'] == 'valid/nll'
  assert '2 curves' in out


def test_a_png_is_written_in_steps(run, tmp_path, capsys):
  out_png = tmp_path / 'plots' / 'curve.png'
  rc, _, err = run_main(capsys, [f'ladder={run}', '--metric', 'valid/nll', '--out',
                                 str(out_png)])
  assert rc == 0, err
  image = np.asarray(Image.open(out_png).convert('L'))
  assert image.shape == (320, 560)  # 7 x 4 inches at 80 dpi
  assert image.min() < 128 < image.max()  # something is drawn on the white figure


def test_bad_runs_and_metrics_are_one_clear_line(run, tmp_path, capsys):
  for argv, words in [
      ([run], 'is not LABEL=WORKDIR'),
      ([f'a={tmp_path}/missing'], 'metrics.jsonl does not exist'),
      ([f'a={run}', '--metric', 'test/nll'], "has no 'test/nll'; give one of its metrics, "
                                             'e.g. valid/nll.'),
      (['a=nosuch://bucket/run'], "unknown URL scheme 'nosuch://'"),
  ]:
    argv = argv + ([] if '--metric' in argv else ['--metric', 'valid/nll'])
    rc, out, err = run_main(capsys, argv + ['--out', str(tmp_path / 'x.png')])
    assert rc == 1 and not out
    assert err.count('\n') == 1 and words in err, err
  assert not (tmp_path / 'x.png').exists()


def test_epochs_need_the_batch_size_of_config_json(run, tmp_path, capsys):
  (tmp_path / 'a' / 'config.json').unlink()
  rc, _, err = run_main(capsys, [f'a={run}', '--metric', 'valid/nll', '--epoch_images', '10',
                                 '--out', str(tmp_path / 'x.png')])
  assert rc == 1 and 'config.json: no config.batch_size' in err and err.count('\n') == 1
