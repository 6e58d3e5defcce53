"""Pictures people would rather look at than read: image grids, piano rolls, curves,
per-layer bars.

Each writes one PNG at `path`, a local path or URL (vaes.fs), creating its folder."""

import numpy as np

from vaes import fs


def image_grid(images, ncols=None, pad=1):
  """(N, H, W, C) floats in [0, 1] -> one (rows*(H+pad), cols*(W+pad), C) uint8 image."""
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  if images.ndim == 3:
    images = images[..., None]
  n, h, w, c = images.shape
  ncols = ncols or int(np.ceil(np.sqrt(n)))
  nrows = int(np.ceil(n / ncols))
  grid = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), np.float32)
  for i in range(n):
    r, col = divmod(i, ncols)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h,
         pad + col * (w + pad):pad + col * (w + pad) + w] = images[i]
  return (grid * 255).round().astype(np.uint8)


def save_image_grid(path, images, ncols=None, upscale=None):
  """Writes a PNG grid; small images are upscaled (nearest) to be visible."""
  from PIL import Image
  grid = image_grid(images, ncols)
  if upscale is None:  # small images (8x8 digits) are blown up to >= 512 pixels a side
    upscale = max(1, -(-512 // max(grid.shape[0], grid.shape[1])))
  if upscale > 1:
    grid = grid.repeat(upscale, 0).repeat(upscale, 1)
  if grid.shape[-1] == 1:
    grid = grid[..., 0]
  with fs.open(path, 'wb') as f:
    Image.fromarray(grid).save(f, format='PNG')
  return path


def save_piano_rolls(path, rolls, titles=None, masks=None):
  """rolls: (N, T, P) in [0, 1]; one panel per sequence, time on x, pitch on y."""
  plt = _pyplot()
  rolls = np.asarray(rolls)
  n = len(rolls)
  fig, axes = plt.subplots(n, 1, figsize=(10, 1.8 * n), squeeze=False)
  for i, ax in enumerate(axes[:, 0]):
    roll = rolls[i]
    if masks is not None:
      roll = roll[: int(np.asarray(masks[i]).sum())]
    ax.imshow(roll.T, origin='lower', aspect='auto', cmap='gray_r', interpolation='nearest',
              vmin=0, vmax=1)
    ax.set_ylabel('key')
    if titles is not None:
      ax.set_title(titles[i], fontsize=8)
  axes[-1, 0].set_xlabel('frame')
  return _save(fig, path)


def save_line_plots(path, series, titles=None, overlays=None):
  """series: (N, T, D) real values; optional overlays (N, T, D) drawn dashed."""
  plt = _pyplot()
  series = np.asarray(series)
  n = len(series)
  fig, axes = plt.subplots(n, 1, figsize=(10, 1.8 * n), squeeze=False)
  for i, ax in enumerate(axes[:, 0]):
    ax.plot(series[i])
    if overlays is not None:
      ax.set_prop_cycle(None)
      ax.plot(np.asarray(overlays[i]), linestyle='--')
    if titles is not None:
      ax.set_title(titles[i], fontsize=8)
  return _save(fig, path)


def save_curves(path, curves, xlabel='step', ylabel='', title=''):
  """curves: [(label, xs, ys)], one line each, with a marker at every logged point."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4))
  for label, xs, ys in curves:
    ax.plot(xs, ys, marker='.', label=label)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)


def save_layer_bars(path, runs, title=''):
  """runs: [(label, kl, active, sizes)], per-layer lists (layer 1 first; sizes may be
  None). Two panels of grouped bars: each layer's KL, and its active units, with the
  layer's size as an outlined bar behind them."""
  plt = _pyplot()
  num_layers = max(len(kl) for _, kl, _, _ in runs)
  width = 0.8 / len(runs)
  fig, (ax_kl, ax_units) = plt.subplots(1, 2, figsize=(10, 3.6))
  for i, (label, kl, active, sizes) in enumerate(runs):
    x = np.arange(1, len(kl) + 1) - 0.4 + width * (i + 0.5)
    ax_kl.bar(x, kl, width, label=label, color=f'C{i}')
    ax_units.bar(x, active, width, color=f'C{i}')
    if sizes is not None:
      ax_units.bar(x, sizes, width, fill=False, edgecolor=f'C{i}', linestyle=':')
  for ax, ylabel in ((ax_kl, 'KL (nats per image)'), (ax_units, 'active units (of the layer)')):
    ax.set_xticks(np.arange(1, num_layers + 1))
    ax.set_xlabel('stochastic layer (1 = next to x)')
    ax.set_ylabel(ylabel)
    ax.grid(axis='y', alpha=0.3)
  ax_kl.legend(fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  return _save(fig, path)


def save_unit_scatter(path, runs, active_threshold, kl_threshold, floor=1e-6, title=''):
  """runs: [(label, layers)], layers [(kl, activity)] per layer (layer 1 first), arrays
  over the layer's units. One panel per run: each unit a point at (its activity, its KL),
  coloured by layer, both axes logarithmic with values below `floor` drawn at it, and the
  thresholds as lines: activity dashed, KL dotted (each layer's counts above them in the
  legend)."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs) + 0.6, 3.8), sharey=True,
                           squeeze=False)
  for ax, (label, layers) in zip(axes[0], runs):
    for l, (kl, activity) in enumerate(layers):
      kl, activity = np.asarray(kl, np.float64), np.asarray(activity, np.float64)
      ax.scatter(np.maximum(activity, floor), np.maximum(kl, floor), s=12, alpha=0.7,
                 color=f'C{l}', label=f'layer {l + 1} ({kl.size}): KL {kl.sum():.3g}; '
                                      f'{int(np.sum(activity > active_threshold))} active, '
                                      f'{int(np.sum(kl > kl_threshold))} KL > {kl_threshold:g}')
    ax.axvline(active_threshold, color='0.4', linestyle='--', linewidth=1)
    ax.axhline(kl_threshold, color='0.4', linestyle=':', linewidth=1)
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_title(label, fontsize=10)
    ax.set_xlabel('activity: Cov_x(E_q[u | x])')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc='upper left')
  axes[0][0].set_ylabel('KL of the unit (nats per image)')
  if title:
    fig.suptitle(title, fontsize=10)
  return _save(fig, path)


def _pyplot():
  """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def _save(fig, path):
  """Writes `fig` as a PNG at `path` (vaes.fs), closes it and returns `path`."""
  plt = _pyplot()
  fig.tight_layout()
  with fs.open(path, 'wb') as f:
    fig.savefig(f, dpi=80, format='png')
  plt.close(fig)
  return path
