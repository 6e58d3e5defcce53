"""Metrics to stdout, WORKDIR/metrics.jsonl and TensorBoard; a progress line on a TTY.

TensorBoard (WORKDIR/tensorboard) gets the scalars, the run's hyper-parameters (the
HParams dashboard, and the flattened config as a table under Text), the PNG grids
written at each evaluation (Images: `images/<name>` during training,
`final_images/<name>` from eval.py) and, with `config.profile_steps`, the profile.

Every file goes through `vaes.fs`. tensorboardX writes its event files itself: into
local folders (local paths and file:// URLs), to gs:// and s3:// with its own writers
(which need `google-cloud-storage`, resp. `boto3`, installed), and to any other fsspec
URL (memory:// in tests) through `_FsspecEventFiles`. On an object store metrics.jsonl
is rewritten whole at each write (objects cannot be appended to)."""

import json
import math
import sys
import time

from vaes import fs

TENSORBOARD_DIR = 'tensorboard'


def _fmt(v):
  if isinstance(v, float):
    return f'{v:.5g}'
  return str(v)


def _read(path):
  if not fs.exists(path):
    return ''
  with fs.open(path) as f:
    return f.read()


def _kept_rows(text, step):
  """The lines of JSON-lines `text` of steps <= `step`."""
  keep = []
  for line in text.splitlines(keepends=True):
    try:
      if json.loads(line)['step'] <= step:
        keep.append(line if line.endswith('\n') else line + '\n')
    except (ValueError, KeyError, TypeError):
      pass  # a line cut short by a kill
  return keep


def drop_rows_after(path, step):
  """Rewrites the JSON-lines file `path` without its rows of steps > `step`."""
  before = _read(path)
  keep = ''.join(_kept_rows(before, step))
  if keep != before:
    fs.write_atomic(path, keep)


class _FsspecEventFiles:
  """tensorboardX's writer factory for URL schemes it has no writer of its own for."""

  class _File:
    def __init__(self, path):
      self._f = fs.open(path, 'wb')

    def write(self, data):
      self._f.write(data)

    def flush(self):
      self._f.flush()

    def close(self):
      self._f.close()

  def open(self, path):
    return self._File(path)

  def directory_check(self, path):
    fs.makedirs(path)


def summary_writer(logdir, **kwargs):
  """A tensorboardX SummaryWriter into `logdir` (see the module docstring), or None (and
  a note) without tensorboardX or the package its writer for `logdir` needs."""
  try:
    from tensorboardX import SummaryWriter
    from tensorboardX import record_writer
  except ImportError:
    print('tensorboardX is not installed: no TensorBoard event files.', flush=True)
    return None
  logdir = fs.resolve(logdir)
  if not fs.is_local(logdir):
    scheme = logdir.split('://', 1)[0]
    if scheme not in record_writer.REGISTERED_FACTORIES:
      record_writer.register_writer_factory(scheme, _FsspecEventFiles())
  try:
    return SummaryWriter(logdir, **kwargs)
  except ImportError as e:   # gs:// without google-cloud-storage, s3:// without boto3
    print(f'No TensorBoard event files in {logdir}: {e}', flush=True)
    return None


class MetricWriter:
  """Writes only on process 0; every other process is silent."""

  def __init__(self, workdir, enabled=True, tensorboard=True, resume_step=0, config=None):
    """Appends to WORKDIR/metrics.jsonl after dropping its rows past `resume_step`
    (logged after the checkpoint a resumed run starts from, and logged again). With
    `config`, TensorBoard also gets its fields as hyper-parameters."""
    self.enabled = enabled
    self.tb = None
    self.jsonl = None
    self.rows = None
    if not enabled:
      return
    self.path = fs.join(workdir, 'metrics.jsonl')
    if fs.is_local(self.path):
      drop_rows_after(self.path, resume_step)
      self.jsonl = fs.open(self.path, 'a')
    else:   # rewritten whole at each write
      self.rows = _kept_rows(_read(self.path), resume_step)
    if tensorboard:
      self.tb = summary_writer(fs.join(workdir, TENSORBOARD_DIR))
    if self.tb is not None and config is not None:
      write_hparams(self.tb, config)

  def write(self, step, metrics, prefix=''):
    if not self.enabled:
      return
    metrics = {f'{prefix}{k}': float(v) for k, v in metrics.items()}
    row = json.dumps({'step': int(step), **metrics}) + '\n'
    if self.jsonl is not None:
      self.jsonl.write(row)
      self.jsonl.flush()
    else:
      self.rows.append(row)
      fs.write_atomic(self.path, ''.join(self.rows))
    if self.tb is not None:
      for k, v in metrics.items():
        if math.isfinite(v):
          self.tb.add_scalar(k, v, int(step))
      self.tb.flush()
    print(f'[step {step}] ' + ' '.join(f'{k}={_fmt(v)}' for k, v in sorted(metrics.items())),
          flush=True)

  def write_images(self, step, image_dir, prefix, tag='images'):
    """The PNGs `image_dir/prefix*.png` (an evaluation's grids) as TensorBoard images
    `tag/<name without prefix>` at `step`."""
    if self.tb is not None and image_dir:
      add_pngs(self.tb, step, image_dir, prefix, tag)
      self.tb.flush()

  def close(self, quiet=False):
    """Closes metrics.jsonl and the event file. `quiet`: an OSError while closing (the run
    stops on an error already, e.g. a full disk) is not raised."""
    for f in (self.jsonl, self.tb):
      try:
        if f is not None:
          f.close()
      except OSError:
        if not quiet:
          raise


class Progress:
  """Steps/s and ETA: a redrawn line on an interactive terminal, else silent
  (log lines carry steps/s)."""

  def __init__(self, start_step, total_steps, enabled=True):
    self.start_step, self.total = start_step, total_steps
    self.t0 = time.time()
    self.last_draw = 0.0
    self.tty = enabled and sys.stdout.isatty()

  def rate(self, step):
    dt = time.time() - self.t0
    return (step - self.start_step) / dt if dt > 0 else 0.0

  def update(self, step):
    if not self.tty or time.time() - self.last_draw < 0.5:
      return
    self.last_draw = time.time()
    rate = self.rate(step)
    eta = (self.total - step) / rate if rate > 0 else float('inf')
    frac = step / max(self.total, 1)
    bar = '#' * int(30 * frac) + '.' * (30 - int(30 * frac))
    eta_s = f'{int(eta // 60)}m{int(eta % 60):02d}s' if math.isfinite(eta) else '?'
    sys.stdout.write(f'\r[{bar}] {step}/{self.total} {rate:.1f} steps/s ETA {eta_s}   ')
    sys.stdout.flush()

  def newline(self):
    if self.tty:
      sys.stdout.write('\n')


def _duration(seconds):
  if not math.isfinite(seconds):
    return '?'
  minutes, sec = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}h{minutes:02d}m{sec:02d}s' if hours else f'{minutes}m{sec:02d}s'


class EvalProgress:
  """Examples done, rate and ETA of a long evaluation, on stderr: redrawn on a
  terminal, else one line every `every_s` seconds. Quiet for evaluations shorter
  than `every_s`; a summary line when it printed anything."""

  def __init__(self, total, enabled=True, every_s=30.0, stream=None):
    self.total, self.enabled, self.every_s = total, enabled, every_s
    self.stream = stream or sys.stderr
    self.tty = self.stream.isatty()
    self.done_examples = 0
    self.t0 = self.last = time.time()
    self.printed = False

  def line(self):
    elapsed = time.time() - self.t0
    rate = self.done_examples / elapsed if elapsed > 0 else 0.0
    if self.total:
      eta = (self.total - self.done_examples) / rate if rate > 0 else float('inf')
      return (f'eval: {self.done_examples}/{self.total} examples, {rate:.1f} examples/s, '
              f'ETA {_duration(eta)}')
    return f'eval: {self.done_examples} examples, {rate:.1f} examples/s'

  def update(self, examples):
    self.done_examples += examples
    now = time.time()
    interval = 0.5 if self.tty else self.every_s
    if not self.enabled or now - self.last < interval or now - self.t0 < self.every_s:
      return
    self.last = now
    self.stream.write(('\r' + self.line() + '   ') if self.tty else self.line() + '\n')
    self.stream.flush()
    self.printed = True

  def done(self):
    if not (self.enabled and self.printed):
      return
    elapsed = time.time() - self.t0
    self.stream.write(('\n' if self.tty else '') + f'eval: {self.done_examples} examples in '
                      f'{_duration(elapsed)} ({self.done_examples / max(elapsed, 1e-9):.1f} '
                      'examples/s)\n')
    self.stream.flush()


def _hparam_value(v):
  """A value the HParams dashboard takes: numbers, strings and bools as they are,
  anything else (tuples, None) as its repr."""
  return v if isinstance(v, (bool, int, float, str)) else repr(v)


def write_hparams(tb, config):
  """The flattened config as the run's hyper-parameters (HParams dashboard, in this
  run's own event file, against the `loss` scalar) and as a Markdown table (Text)."""
  from tensorboardX.summary import hparams
  flat = {k: _hparam_value(v) for k, v in _flatten(config.to_dict()).items()}
  for summary in hparams(flat, {'loss': None}):   # experiment, session start, session end
    tb._get_file_writer().add_summary(summary)  # pylint: disable=protected-access
  rows = '\n'.join(f'| {k} | {str(v).replace("|", "/")} |' for k, v in sorted(flat.items()))
  tb.add_text('config', '| field | value |\n|---|---|\n' + rows, 0)
  tb.flush()


def _flatten(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def add_pngs(tb, step, image_dir, prefix, tag):
  import numpy as np
  from PIL import Image
  names = fs.listdir(image_dir) if fs.isdir(image_dir) else []
  for name in names:
    if not (name.startswith(prefix) and name.endswith('.png')):
      continue
    with fs.open(fs.join(image_dir, name), 'rb') as f, Image.open(f) as im:
      pixels = np.asarray(im.convert('RGB'))
    tb.add_image(f'{tag}/{name[len(prefix):-len(".png")]}', pixels, int(step),
                 dataformats='HWC')


def write_final_images(workdir, step, image_dir, prefix, tag='final_images'):
  """eval.py's grids into WORKDIR/tensorboard (an event file of their own, beside the
  training run's)."""
  tb = summary_writer(fs.join(workdir, TENSORBOARD_DIR), filename_suffix='.eval')
  if tb is None:
    return
  with tb:
    add_pngs(tb, step, image_dir, prefix, tag)
