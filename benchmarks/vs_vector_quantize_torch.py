"""The PyTorch half of a side-by-side VQ benchmark: lucidrains' vector-quantize-pytorch.

Trains the library's own example model on Fashion-MNIST with the example's recipe and
reports reconstruction quality, codebook usage and CPU step time as one JSON object.

  # its own venv: torch (CPU), numpy, einops, einx, vector_quantize_pytorch; not this project
  ~/venvs/vqtorch/bin/python benchmarks/vs_vector_quantize_torch.py --variant=vq_rot \
      [--steps=1000] [--rec_loss=l1|mse] [--threads=2] [--out=/tmp/vq_rot.json]

This file imports only the standard library, numpy and torch / vector_quantize_pytorch
(never `vaes`), so that it runs in a venv without JAX.

Model (examples/autoencoder.py `SimpleVQAutoEncoder`, built with the library's special
`Sequential`, which threads the quantiser's extra outputs through):
  Conv2d(1,16,3,p1) MaxPool2 GELU Conv2d(16,32,3,p1) MaxPool2 -> quantiser on the
  7x7x32 map -> Upsample2 nearest Conv2d(32,16,3,p1) GELU Upsample2 Conv2d(16,1,3,p1).
The LFQ and FSQ examples put a small adapter around the quantiser (LFQ: GroupNorm(4, 32,
affine=False) + 1x1 conv 32->8 before, 3x3 conv 8->32 after; FSQ: 1x1 conv 32->len(levels)
before, 3x3 conv len(levels)->32 after); those variants copy their example, adapter included.

Variants (--variant):
  vq_st        VectorQuantize(dim=32, codebook_size=256, accept_image_fmap=True,
               rotation_trick=False, straight_through=False, directional_reparam=False):
               plain straight-through estimator (the library's `straight_through=True` is
               NOT that: it is the Gumbel-softmax straight-through on the code one-hot,
               which only matters with stochastic sampling / a learnable codebook).
  vq_rot       the example as shipped: rotation_trick=True (the library's default when
               dim > 1), straight_through=False, directional_reparam=False.
  vq_rot_dead  vq_rot + kmeans_init=True, kmeans_iters=10, threshold_ema_dead_code=2.
  All three keep the library's default codebook: EMA (decay 0.8, eps 1e-5, Laplace
  smoothing), codebook not trained by gradient, commitment_weight 1.0 (MSE(sg(q), z)).
  simvq_rot    SimVQ as in examples/autoencoder_sim_vq.py (channel_first=True, codebook
  simvq_st     transform MLP 32->128->ReLU->32, frozen Gaussian codebook), rotation trick
               on / off (off = the library's plain straight-through).
  lfq          LFQ as in examples/autoencoder_lfq.py: codebook_size 256 (8 bits, via the
               example's 1x1 conv 32->8, not the library's Linear projection),
               entropy_loss_weight 0.02, diversity_gamma 1.0, spherical=True.
  fsq          FSQ as in examples/autoencoder_fsq.py, levels from --fsq_levels (default
               the example's 8,6,5 = 240 codes; 4,4,4,4 gives 256).

Loss: rec_loss + alpha * aux_loss, rec_loss = mean |out - x| (--rec_loss=l1, the examples)
or mean (out - x)^2 (--rec_loss=mse), on the [-1, 1] scale with out clamped to [-1, 1].
aux_loss is what the quantiser returns (VQ: commitment; SimVQ: codebook + 0.25 commitment;
LFQ: entropy loss x 0.02; FSQ: none). --alpha defaults to the example's own weight:
10 for vq_* (autoencoder.py), 1 for simvq_* and lfq (their examples add the aux loss
unweighted), 0 for fsq (no aux loss); pass --alpha to force one value for all.

Recipe: AdamW(lr 3e-4, torch defaults otherwise: betas (0.9, 0.999), eps 1e-8, weight
decay 0.01), batch 256, inputs (x/255 - 0.5)/0.5, torch.manual_seed(seed) before the model
is built (as the examples do). Batches: one numpy permutation per epoch from
np.random.default_rng(seed), incomplete last batch dropped (fixed shapes, like the JAX
side), no DataLoader; assembling the batch is inside the timed step.

Timing: every step is timed with time.perf_counter around zero_grad, batch fetch,
forward, backward and optimizer step; median and mean over the steps after the first 50.
Evaluation (not timed in the step numbers): all 10,000 test images, eval mode, batches of
1000, torch.no_grad(); codes from the indices the quantiser returns.
"""

import argparse
import gzip
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

import vector_quantize_pytorch as vqp
from vector_quantize_pytorch import FSQ, LFQ, Sequential, SimVQ, VectorQuantize

VARIANTS = ('vq_st', 'vq_rot', 'vq_rot_dead', 'simvq_rot', 'simvq_st', 'lfq', 'fsq')
IMAGE_HW = 28
LATENT_HW = 7


# --------------------------------------------------------------------------- data

def read_idx_images(path):
  """Reads an idx3-ubyte(.gz) image file into a (n, rows, cols) uint8 array."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    raw = f.read()
  magic, n, rows, cols = np.frombuffer(raw, dtype='>u4', count=4)
  if magic != 2051:
    raise ValueError(f'{path}: magic {magic}, expected 2051 (idx3 ubyte images)')
  if len(raw) != 16 + int(n) * int(rows) * int(cols):
    raise ValueError(f'{path}: {len(raw)} bytes for a header of {n}x{rows}x{cols}')
  images = np.frombuffer(raw, dtype=np.uint8, offset=16).copy()  # writable, for torch
  return images.reshape(int(n), int(rows), int(cols))


def load_fashion_mnist(data_dir):
  train = read_idx_images(os.path.join(data_dir, 'train-images-idx3-ubyte.gz'))
  test = read_idx_images(os.path.join(data_dir, 't10k-images-idx3-ubyte.gz'))
  assert train.shape == (60000, IMAGE_HW, IMAGE_HW) and train.dtype == np.uint8, train.shape
  assert test.shape == (10000, IMAGE_HW, IMAGE_HW) and test.dtype == np.uint8, test.shape
  return train, test


def pixel_variance_01(images_u8):
  """Exact variance (float64) of all pixels of a uint8 array, in [0, 1] scale."""
  counts = np.bincount(images_u8.reshape(-1), minlength=256).astype(np.float64)
  values = np.arange(256, dtype=np.float64) / 255.0
  total = counts.sum()
  mean = (counts * values).sum() / total
  return float((counts * (values - mean) ** 2).sum() / total)


def to_model_input(images_u8):
  """uint8 (b, 28, 28) -> float32 (b, 1, 28, 28) in [-1, 1] ((x/255 - 0.5)/0.5)."""
  x = torch.from_numpy(images_u8).to(torch.float32).div_(255.0)
  return x.sub_(0.5).div_(0.5).unsqueeze_(1)


class BatchStream:
  """Epochs of np.random.default_rng(seed) permutations, incomplete last batch dropped."""

  def __init__(self, images, batch_size, seed):
    self.images = images
    self.batch_size = batch_size
    self.rng = np.random.default_rng(seed)
    self.batches_per_epoch = len(images) // batch_size
    self.perm = None
    self.pos = self.batches_per_epoch
    self.epoch = -1

  def next(self):
    if self.pos >= self.batches_per_epoch:
      self.perm = self.rng.permutation(len(self.images))
      self.pos = 0
      self.epoch += 1
    idx = self.perm[self.pos * self.batch_size:(self.pos + 1) * self.batch_size]
    self.pos += 1
    return to_model_input(self.images[idx])


# --------------------------------------------------------------------------- models

def encoder_layers():
  return [
      nn.Conv2d(1, 16, kernel_size=3, stride=1, padding=1),
      nn.MaxPool2d(kernel_size=2, stride=2),
      nn.GELU(),
      nn.Conv2d(16, 32, kernel_size=3, stride=1, padding=1),
      nn.MaxPool2d(kernel_size=2, stride=2),
  ]


def decoder_layers():
  return [
      nn.Upsample(scale_factor=2, mode='nearest'),
      nn.Conv2d(32, 16, kernel_size=3, stride=1, padding=1),
      nn.GELU(),
      nn.Upsample(scale_factor=2, mode='nearest'),
      nn.Conv2d(16, 1, kernel_size=3, stride=1, padding=1),
  ]


def SimpleVQAutoEncoder(dim=32, **vq_kwargs):
  """examples/autoencoder.py, verbatim structure."""
  return Sequential(
      *encoder_layers(),
      VectorQuantize(dim=dim, accept_image_fmap=True, **vq_kwargs),
      *decoder_layers(),
  )


def SimpleSimVQAutoEncoder(dim=32, **vq_kwargs):
  """examples/autoencoder_sim_vq.py, verbatim structure."""
  return Sequential(
      *encoder_layers(),
      SimVQ(dim=dim, channel_first=True, **vq_kwargs),
      *decoder_layers(),
  )


def LFQAutoEncoder(codebook_size, **vq_kwargs):
  """examples/autoencoder_lfq.py, verbatim structure."""
  assert math.log2(codebook_size).is_integer()
  quantize_dim = int(math.log2(codebook_size))
  return Sequential(
      *encoder_layers(),
      nn.GroupNorm(4, 32, affine=False),
      nn.Conv2d(32, quantize_dim, kernel_size=1),
      LFQ(dim=quantize_dim, **vq_kwargs),
      nn.Conv2d(quantize_dim, 32, kernel_size=3, stride=1, padding=1),
      *decoder_layers(),
  )


def SimpleFSQAutoEncoder(levels, orthogonal_rotation=False):
  """examples/autoencoder_fsq.py, verbatim structure."""
  return Sequential(
      *encoder_layers(),
      nn.Conv2d(32, len(levels), kernel_size=1),
      FSQ(levels, orthogonal_rotation=orthogonal_rotation),
      nn.Conv2d(len(levels), 32, kernel_size=3, stride=1, padding=1),
      *decoder_layers(),
  )


def build_model(variant, fsq_levels, dim=32, num_codes=256):
  """Returns (model, quantiser config for the report, the example's aux-loss weight)."""
  if variant.startswith('vq_'):
    kwargs = dict(codebook_size=num_codes, straight_through=False, directional_reparam=False,
                  rotation_trick=(variant != 'vq_st'))
    if variant == 'vq_rot_dead':
      kwargs.update(kmeans_init=True, kmeans_iters=10, threshold_ema_dead_code=2)
    return SimpleVQAutoEncoder(dim=dim, **kwargs), dict(kwargs, dim=dim), 10.0
  if variant.startswith('simvq_'):
    kwargs = dict(codebook_size=num_codes, rotation_trick=(variant == 'simvq_rot'))
    model = SimpleSimVQAutoEncoder(
        dim=dim, codebook_transform=nn.Sequential(
            nn.Linear(dim, dim * 4), nn.ReLU(), nn.Linear(dim * 4, dim)), **kwargs)
    return model, dict(kwargs, dim=dim, codebook_transform='mlp 32-128-relu-32'), 1.0
  if variant == 'lfq':
    kwargs = dict(entropy_loss_weight=0.02, diversity_gamma=1.0, spherical=True,
                  orthogonal_rotation=False)
    return (LFQAutoEncoder(codebook_size=num_codes, **kwargs),
            dict(kwargs, codebook_size=num_codes, dim=int(math.log2(num_codes))), 1.0)
  if variant == 'fsq':
    return SimpleFSQAutoEncoder(fsq_levels), dict(levels=list(fsq_levels)), 0.0
  raise ValueError(f'unknown variant {variant!r}; one of {VARIANTS}')


def quantizer_of(model):
  (q,) = [m for m in model.fns if isinstance(m, vqp.utils.QUANTIZE_KLASSES)]
  return q


def library_settings(q):
  """Effective settings read back from the built quantiser (defaults included)."""
  out = {'class': type(q).__name__}
  if isinstance(q, VectorQuantize):
    cb = q._codebook
    out.update(
        rotation_trick=bool(q.rotation_trick), directional_reparam=bool(q.directional_reparam),
        ema_update=bool(cb.ema_update), learnable_codebook=bool(cb.learnable_codebook),
        decay=float(cb.decay), eps=float(cb.eps), commitment_weight=float(q.commitment_weight),
        has_commitment_loss=bool(q.has_commitment_loss),
        threshold_ema_dead_code=float(cb.threshold_ema_dead_code),
        kmeans_init=not bool(cb.initted),  # read at build time: initted == not kmeans_init
        kmeans_iters=int(cb.kmeans_iters), use_cosine_sim=bool(q.use_cosine_sim))
  elif isinstance(q, SimVQ):
    out.update(rotation_trick=bool(q.rotation_trick), commitment_weight=float(q.commitment_weight),
               input_to_quantize_commit_loss_weight=float(q.input_to_quantize_commit_loss_weight))
  elif isinstance(q, LFQ):
    out.update(entropy_loss_weight=float(q.entropy_loss_weight),
               diversity_gamma=float(q.diversity_gamma), spherical=bool(q.spherical),
               commitment_loss_weight=float(q.commitment_loss_weight),
               codebook_dim=int(q.codebook_dim), has_projections=bool(q.has_projections))
  elif isinstance(q, FSQ):
    out.update(levels=[int(v) for v in q._levels.tolist()], has_projections=bool(q.has_projections))
  out['codebook_size'] = int(q.codebook_size)
  return out


def split_outputs(outputs):
  """(out, indices[, aux]) from the library's Sequential -> (out, indices, aux or None)."""
  out, indices, *rest = outputs
  return out, indices, (rest[0] if rest else None)


# --------------------------------------------------------------------------- run

def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--variant', required=True, choices=VARIANTS)
  p.add_argument('--steps', type=int, default=1000)
  p.add_argument('--batch_size', type=int, default=256)
  p.add_argument('--lr', type=float, default=3e-4)
  p.add_argument('--alpha', type=float, default=None,
                 help='aux-loss weight; default: the example\'s (10 vq_*, 1 simvq_*/lfq, 0 fsq)')
  p.add_argument('--seed', type=int, default=1234)
  p.add_argument('--rec_loss', choices=('l1', 'mse'), default='l1')
  p.add_argument('--fsq_levels', default='8,6,5', help='comma-separated FSQ levels')
  p.add_argument('--data_dir', default='/usr/share/datasets/fashion-mnist')
  p.add_argument('--threads', type=int, default=2)
  p.add_argument('--eval_batch_size', type=int, default=1000)
  p.add_argument('--warmup_steps', type=int, default=50,
                 help='steps left out of the step-time statistics')
  p.add_argument('--log_every', type=int, default=100)
  p.add_argument('--out', default=None, help='JSON file to write (the JSON is also printed)')
  return p.parse_args(argv)


def log(msg):
  print(msg, file=sys.stderr, flush=True)


def evaluate(model, test_u8, codebook_size, batch_size):
  model.eval()
  per_image_mse = []
  counts = torch.zeros(codebook_size, dtype=torch.int64)
  index_shape = None
  with torch.no_grad():
    for start in range(0, len(test_u8), batch_size):
      chunk = test_u8[start:start + batch_size]
      x = to_model_input(chunk)
      out, indices, _ = split_outputs(model(x))
      assert out.shape == x.shape, (out.shape, x.shape)
      out01 = (out.clamp(-1.0, 1.0) + 1.0) / 2.0
      x01 = torch.from_numpy(chunk).to(torch.float32).div(255.0).unsqueeze(1)
      per_image_mse.append(((out01 - x01) ** 2).to(torch.float64).mean(dim=(1, 2, 3)))
      # Shape check of the indices the library returns: one code per 7x7 latent position.
      assert tuple(indices.shape) == (len(chunk), LATENT_HW, LATENT_HW), tuple(indices.shape)
      index_shape = list(indices.shape[1:])
      flat = indices.reshape(-1).to(torch.int64)
      assert int(flat.min()) >= 0 and int(flat.max()) < codebook_size, (flat.min(), flat.max())
      counts += torch.bincount(flat, minlength=codebook_size)
  mse_i = torch.cat(per_image_mse).numpy()
  total_codes = int(counts.sum())
  assert total_codes == len(test_u8) * LATENT_HW * LATENT_HW, total_codes
  p = counts.to(torch.float64) / total_codes
  nz = p[p > 0]
  entropy = float(-(nz * nz.log()).sum())
  with np.errstate(divide='ignore'):
    psnr_i = 10.0 * np.log10(1.0 / mse_i)
  return dict(
      test_mse=float(mse_i.mean()),
      test_psnr=float(psnr_i.mean()),
      codebook_usage=float((counts > 0).sum()) / codebook_size,
      codes_used=int((counts > 0).sum()),
      perplexity=math.exp(entropy),
      test_code_count=total_codes,
      index_shape_per_image=index_shape,
  )


def main(argv=None):
  args = parse_args(argv)
  torch.set_num_threads(args.threads)
  fsq_levels = [int(v) for v in args.fsq_levels.split(',') if v.strip()]

  train_u8, test_u8 = load_fashion_mnist(args.data_dir)
  train_var = pixel_variance_01(train_u8)

  torch.random.manual_seed(args.seed)
  model, quantizer_kwargs, example_alpha = build_model(args.variant, fsq_levels)
  alpha = example_alpha if args.alpha is None else args.alpha
  q = quantizer_of(model)
  codebook_size = int(q.codebook_size)
  settings = library_settings(q)
  num_params = sum(p.numel() for p in model.parameters())
  opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
  stream = BatchStream(train_u8, args.batch_size, args.seed)

  log(f'[{args.variant}] {settings} alpha={alpha} params={num_params} '
      f'threads={torch.get_num_threads()} torch={torch.__version__}')

  model.train()
  step_ms, rec_losses, aux_losses = [], [], []
  window_start = time.perf_counter()
  train_start = time.perf_counter()
  for step in range(1, args.steps + 1):
    t0 = time.perf_counter()
    opt.zero_grad()
    x = stream.next()
    out, indices, aux = split_outputs(model(x))
    out = out.clamp(-1.0, 1.0)
    if args.rec_loss == 'l1':
      rec_loss = (out - x).abs().mean()
    else:
      rec_loss = ((out - x) ** 2).mean()
    loss = rec_loss if aux is None or alpha == 0 else rec_loss + alpha * aux
    loss.backward()
    opt.step()
    step_ms.append((time.perf_counter() - t0) * 1e3)

    rec_losses.append(rec_loss.item())
    aux_losses.append(float(aux.item()) if aux is not None else 0.0)
    if not math.isfinite(rec_losses[-1]):
      raise FloatingPointError(f'rec loss {rec_losses[-1]} at step {step}')
    if step % args.log_every == 0 or step == args.steps:
      active = indices.unique().numel() / codebook_size
      n = step - (step - 1) // args.log_every * args.log_every
      ms = (time.perf_counter() - window_start) * 1e3 / n
      window_start = time.perf_counter()
      log(f'step {step:5d}  rec {rec_losses[-1]:.4f}  aux {aux_losses[-1]:.4f}  '
          f'active {active:.3f}  {ms:.1f} ms/step (wall, incl. logging)  '
          f'{statistics.median(step_ms[-n:]):.1f} ms/step (median step)')
  train_wall_s = time.perf_counter() - train_start

  eval_start = time.perf_counter()
  ev = evaluate(model, test_u8, codebook_size, args.eval_batch_size)
  eval_wall_s = time.perf_counter() - eval_start

  timed = step_ms[args.warmup_steps:] if len(step_ms) > args.warmup_steps else step_ms
  tail = rec_losses[-50:]
  result = dict(
      variant=args.variant,
      test_mse=ev['test_mse'],
      test_normalized_mse=ev['test_mse'] / train_var,
      test_psnr=ev['test_psnr'],
      codebook_usage=ev['codebook_usage'],
      codes_used=ev['codes_used'],
      perplexity=ev['perplexity'],
      codebook_size=codebook_size,
      train_step_ms_median=statistics.median(timed),
      train_step_ms_mean=statistics.fmean(timed),
      timed_steps=len(timed),
      train_wall_s=train_wall_s,
      eval_wall_s=eval_wall_s,
      steps=args.steps,
      epochs_started=stream.epoch + 1,
      final_train_rec_loss=rec_losses[-1],
      final_train_rec_loss_mean_last50=statistics.fmean(tail),
      final_train_aux_loss=aux_losses[-1],
      rec_loss_kind=args.rec_loss,
      alpha=alpha,
      alpha_is_example_default=args.alpha is None,
      train_pixel_variance=train_var,
      index_shape_per_image=ev['index_shape_per_image'],
      test_code_count=ev['test_code_count'],
      quantizer_kwargs=quantizer_kwargs,
      quantizer_settings=settings,
      fsq_levels=fsq_levels if args.variant == 'fsq' else None,
      num_params=num_params,
      optimizer=dict(name='AdamW', lr=args.lr, **{k: v for k, v in opt.defaults.items()
                                                   if k in ('betas', 'eps', 'weight_decay')}),
      drop_last=True,
      torch_version=torch.__version__,
      library_version=importlib.metadata.version('vector-quantize-pytorch'),
      numpy_version=np.__version__,
      python_version=platform.python_version(),
      threads=torch.get_num_threads(),
      args=vars(args),
  )
  text = json.dumps(result, indent=1, sort_keys=False)
  print(text, flush=True)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
      f.write(text + '\n')
  return result


if __name__ == '__main__':
  main()
