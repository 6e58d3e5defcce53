"""The project's train steps against PyTorch references on the CPU, timed side by side.

  pip install torch==2.13.0          # CPU build; only for this benchmark (not in requirements.txt)
  python benchmarks/vs_pytorch.py [--workloads=vqvae32,vrnn32,vrnn128,lvae] [--rounds=7] \
      [--cores=2] [--torch_threads=1,2]

For each workload it builds the project's real train step (`benchmarks.common.
compile_step`: forward, backward, Adam, donated state, exactly what training runs) and a
PyTorch model of the same sizes written after the reference implementation, then times
them in interleaved windows (ours, PyTorch at 1 thread, PyTorch at 2 threads, in an order
that rotates every round), so that both see the same machine load. The PyTorch side is
reported at its best thread count (its 2 threads collapse on a busy machine, REFERENCE.md).

Threads. `--cores=N` (0 = all) confines the whole process, both sides, to the first N
cores (`os.sched_setaffinity`, before JAX starts): XLA:CPU sizes its thread pool by the
cores it may use, and PyTorch is then timed at N threads by default, so `--cores=1`
compares one thread with one thread and `--cores=2` two with two. `--torch_threads=`
(empty) times the project's side alone, e.g. on a Python where PyTorch's CPU build is
not at hand (its numbers are then paired with another run's PyTorch column).
One JSON line per workload (median ms/step of each side and the ratio ours / PyTorch,
below 1 = the project is faster), then a Markdown table for benchmarks/README.md.

Workloads (float32, random data of the real shapes):
  vqvae32   configs/vqvae_cifar10_sonnet.py, batch 32 (Sonnet sizes: 128 hidden, 2 residual
            blocks of 32, K = 512, D = 64, EMA codebook). PyTorch: the rosinality/
            vq-vae-2-pytorch blocks (4x4 stride-2 convs, ResBlocks, EMA `Quantize`,
            `ConvTranspose2d` decoder), NCHW, MSE / variance + 0.25 commitment, Adam 3e-4.
  vrnn32    benchmarks/configs/vrnn_bench.py at T = 32, batch 32, unroll 1 (x 88, h 512,
  vrnn128   z 64; Bernoulli NLL + KL, Adam, clipping at 10) and at T = 128. PyTorch: the
            emited/VariationalRecurrentNeuralNetwork model (a Python loop over time with
            a GRU layer per step). The project's VRAE runs three GRUs per step (prior,
            posterior, decoder) where that VRNN runs one, so it does more work per frame.
  lvae      configs/lvae_mnist.py: the paper's MLP ladder (5 layers, 512-256-128-64-32
            units, z 64-32-16-8-4, two Dense+BatchNorm+leaky ReLU layers per block),
            batch 256, Bernoulli p(x | z_1), closed-form KLs, Adam 2e-4. PyTorch: the same
            model written in torch.nn (no public PyTorch MLP ladder of the paper's sizes
            exists; addtt/ladder-vae-pytorch is convolutional).
"""

import dataclasses
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

flags.DEFINE_list('workloads', ['vqvae32', 'vrnn32', 'vrnn128', 'lvae'], 'Which to run.')
flags.DEFINE_integer('rounds', 7, 'Interleaved rounds; medians over them are reported.')
flags.DEFINE_float('window_s', 1.0, 'Target length of one timed window, in seconds.')
flags.DEFINE_list('torch_threads', None, 'PyTorch thread counts to time (default: the '
                  '--cores count, or 1,2 with all cores); empty = the project side alone.')
flags.DEFINE_integer('cores', 0, 'Confine the process to its first N cores (0 = all).')
flags.DEFINE_list('overrides', [], 'Extra field=value config overrides for the project side, '
                  'read as train.py reads --config.field=value (e.g. model.upsample=phases), '
                  'applied to every workload.')
flags.DEFINE_string('output', '', 'Also append the JSON lines to this file.')
FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- the PyTorch references ---------------------------------------------------------

def torch_vqvae(torch, hidden=128, res_hidden=32, num_res=2, code_dim=64, num_codes=512,
                decay=0.99, beta=0.25, variance=0.06):
  """rosinality/vq-vae-2-pytorch's single-level blocks at the Sonnet sizes. Returns
  (model, loss_fn(model, x))."""
  nn, F = torch.nn, torch.nn.functional

  class ResBlock(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, res_hidden, 3, padding=1),
                                nn.ReLU(inplace=True), nn.Conv2d(res_hidden, hidden, 1))

    def forward(self, x):
      return x + self.conv(x)

  class Quantize(nn.Module):
    """EMA codebook: nearest code by squared distance, straight-through z_q."""
    def __init__(self):
      super().__init__()
      embed = torch.randn(code_dim, num_codes)
      self.register_buffer('embed', embed)
      self.register_buffer('cluster_size', torch.zeros(num_codes))
      self.register_buffer('embed_avg', embed.clone())

    def forward(self, z):
      flat = z.reshape(-1, code_dim)
      dist = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embed
              + self.embed.pow(2).sum(0, keepdim=True))
      _, ind = (-dist).max(1)
      onehot = F.one_hot(ind, num_codes).type(flat.dtype)
      quantize = F.embedding(ind.view(*z.shape[:-1]), self.embed.transpose(0, 1))
      if self.training:
        with torch.no_grad():
          self.cluster_size.mul_(decay).add_(onehot.sum(0), alpha=1 - decay)
          self.embed_avg.mul_(decay).add_(flat.transpose(0, 1) @ onehot, alpha=1 - decay)
          n = self.cluster_size.sum()
          size = (self.cluster_size + 1e-5) / (n + num_codes * 1e-5) * n
          self.embed.copy_(self.embed_avg / size.unsqueeze(0))
      diff = (quantize.detach() - z).pow(2).mean()
      return z + (quantize - z).detach(), diff

  class VQVAE(nn.Module):
    def __init__(self):
      super().__init__()
      self.enc = nn.Sequential(
          nn.Conv2d(3, hidden // 2, 4, stride=2, padding=1), nn.ReLU(inplace=True),
          nn.Conv2d(hidden // 2, hidden, 4, stride=2, padding=1), nn.ReLU(inplace=True),
          nn.Conv2d(hidden, hidden, 3, padding=1),
          *[ResBlock() for _ in range(num_res)], nn.ReLU(inplace=True))
      self.pre = nn.Conv2d(hidden, code_dim, 1)
      self.quantize = Quantize()
      self.dec = nn.Sequential(
          nn.Conv2d(code_dim, hidden, 3, padding=1),
          *[ResBlock() for _ in range(num_res)], nn.ReLU(inplace=True),
          nn.ConvTranspose2d(hidden, hidden // 2, 4, stride=2, padding=1), nn.ReLU(inplace=True),
          nn.ConvTranspose2d(hidden // 2, 3, 4, stride=2, padding=1))

    def forward(self, x):
      z = self.pre(self.enc(x)).permute(0, 2, 3, 1)
      q, diff = self.quantize(z)
      return self.dec(q.permute(0, 3, 1, 2)), diff

  def loss_fn(model, x):
    out, diff = model(x)
    return F.mse_loss(out, x) / variance + beta * diff

  return VQVAE(), loss_fn


def torch_vrnn(torch, x_dim=88, h_dim=512, z_dim=64):
  """emited/VariationalRecurrentNeuralNetwork's VRNN (one GRU layer; a Python loop over
  time). Input x: (T, B, x_dim). Returns (model, loss_fn(model, x))."""
  nn = torch.nn
  eps = 1e-6

  class VRNN(nn.Module):
    def __init__(self):
      super().__init__()
      relu = nn.ReLU
      self.phi_x = nn.Sequential(nn.Linear(x_dim, h_dim), relu(), nn.Linear(h_dim, h_dim), relu())
      self.phi_z = nn.Sequential(nn.Linear(z_dim, h_dim), relu())
      self.enc = nn.Sequential(nn.Linear(2 * h_dim, h_dim), relu(), nn.Linear(h_dim, h_dim), relu())
      self.enc_mean = nn.Linear(h_dim, z_dim)
      self.enc_std = nn.Sequential(nn.Linear(h_dim, z_dim), nn.Softplus())
      self.prior = nn.Sequential(nn.Linear(h_dim, h_dim), relu())
      self.prior_mean = nn.Linear(h_dim, z_dim)
      self.prior_std = nn.Sequential(nn.Linear(h_dim, z_dim), nn.Softplus())
      self.dec = nn.Sequential(nn.Linear(2 * h_dim, h_dim), relu(), nn.Linear(h_dim, h_dim), relu())
      self.dec_std = nn.Sequential(nn.Linear(h_dim, x_dim), nn.Softplus())
      self.dec_mean = nn.Sequential(nn.Linear(h_dim, x_dim), nn.Sigmoid())
      self.rnn = nn.GRU(2 * h_dim, h_dim, 1)

    def forward(self, x):
      kld, nll = 0.0, 0.0
      h = torch.zeros(1, x.size(1), h_dim)
      for t in range(x.size(0)):
        phi_x_t = self.phi_x(x[t])
        enc_t = self.enc(torch.cat([phi_x_t, h[-1]], 1))
        enc_mean_t, enc_std_t = self.enc_mean(enc_t), self.enc_std(enc_t)
        prior_t = self.prior(h[-1])
        prior_mean_t, prior_std_t = self.prior_mean(prior_t), self.prior_std(prior_t)
        z_t = enc_mean_t + enc_std_t * torch.randn_like(enc_std_t)
        phi_z_t = self.phi_z(z_t)
        dec_t = self.dec(torch.cat([phi_z_t, h[-1]], 1))
        dec_mean_t = self.dec_mean(dec_t)
        self.dec_std(dec_t)   # computed, as in the reference, though the Bernoulli NLL ignores it
        _, h = self.rnn(torch.cat([phi_x_t, phi_z_t], 1).unsqueeze(0), h)
        kld = kld + 0.5 * torch.sum(
            2 * torch.log(prior_std_t + eps) - 2 * torch.log(enc_std_t + eps)
            + (enc_std_t.pow(2) + (enc_mean_t - prior_mean_t).pow(2)) / (prior_std_t + eps).pow(2)
            - 1)
        nll = nll - torch.sum(x[t] * torch.log(dec_mean_t + eps)
                              + (1 - x[t]) * torch.log(1 - dec_mean_t + eps))
      return kld, nll

  def loss_fn(model, x):
    kld, nll = model(x)
    return (kld + nll) / x.size(1)

  return VRNN(), loss_fn


def torch_ladder(torch, latent=(64, 32, 16, 8, 4), hidden=(512, 256, 128, 64, 32), x_dim=784,
                 depth=2):
  """The project's MLP Ladder VAE (vaes/models/ladder.py, 'ladder' inference) in torch.nn:
  bottom-up d_l = up_l(d_l-1) with heads (mu_hat, s_hat), a top-down pass with the
  precision-weighted merge, closed-form KLs, Bernoulli p(x | z_1). Returns (model, loss_fn)."""
  nn, F = torch.nn, torch.nn.functional
  min_var = 1e-4

  def block(n_in, n_out):
    layers = []
    for i in range(depth):
      layers += [nn.Linear(n_in if i == 0 else n_out, n_out, bias=False),
                 nn.BatchNorm1d(n_out, eps=1e-5, momentum=0.1), nn.LeakyReLU(0.01)]
    return nn.Sequential(*layers)

  class Head(nn.Module):
    def __init__(self, n_in, n_out):
      super().__init__()
      self.mean, self.var = nn.Linear(n_in, n_out), nn.Linear(n_in, n_out)

    def forward(self, h):
      return self.mean(h), F.softplus(self.var(h)) + min_var

  def kl(qm, qv, pm, pv):
    return 0.5 * (torch.log(pv) - torch.log(qv) + (qv + (qm - pm).pow(2)) / pv - 1).sum(1)

  class Ladder(nn.Module):
    def __init__(self):
      super().__init__()
      num = len(latent)
      ins = (x_dim,) + tuple(hidden[:-1])
      self.up = nn.ModuleList([block(ins[l], hidden[l]) for l in range(num)])
      self.head = nn.ModuleList([Head(hidden[l], latent[l]) for l in range(num)])
      self.down = nn.ModuleList([block(latent[l + 1], hidden[l]) for l in range(num - 1)])
      self.prior_head = nn.ModuleList([Head(hidden[l], latent[l]) for l in range(num - 1)])
      self.decoder_block = block(latent[0], hidden[0])
      self.decoder_out = nn.Linear(hidden[0], x_dim)

    def forward(self, x):
      d, hats = x, []
      for up, head in zip(self.up, self.head):
        d = up(d)
        hats.append(head(d))
      qm, qv = hats[-1]
      total_kl = kl(qm, qv, torch.zeros_like(qm), torch.ones_like(qv))
      z = qm + qv.sqrt() * torch.randn_like(qm)
      for l in range(len(latent) - 2, -1, -1):
        pm, pv = self.prior_head[l](self.down[l](z))
        hm, hv = hats[l]
        qv = 1.0 / (1.0 / hv + 1.0 / pv)
        qm = (hm / hv + pm / pv) * qv
        total_kl = total_kl + kl(qm, qv, pm, pv)
        z = qm + qv.sqrt() * torch.randn_like(qm)
      logits = self.decoder_out(self.decoder_block(z))
      nll = F.binary_cross_entropy_with_logits(logits, x, reduction='none').sum(1)
      return (nll + total_kl).mean()

  return Ladder(), lambda model, x: model(x)


# -- the workloads ------------------------------------------------------------------

FAKE_PIANOROLL = os.path.join(tempfile.gettempdir(), 'vaes_bench_fake_jsb.pkl')


@dataclasses.dataclass(frozen=True)
class Workload:
  """The project's side (a config file and its overrides) and PyTorch's (a builder
  `torch -> (model, loss_fn(model, x))`, Adam's learning rate, gradient clipping, and
  the input batch `torch -> x`); `per_step` examples (or frames) per step, in `unit`."""
  config: str
  overrides: dict
  torch_model: Callable
  lr: float
  clip: Optional[float]
  make_input: Callable
  per_step: int
  unit: str


def _vrnn(seq_len, batch=32):
  return Workload('benchmarks/configs/vrnn_bench.py',
                  {'batch_size': batch, 'compute_dtype': 'float32', 'model.unroll': 1,
                   'data.max_len': seq_len, 'data.path': FAKE_PIANOROLL},
                  torch_vrnn, 1e-3, 10.0,
                  lambda torch: (torch.rand(seq_len, batch, 88) < 0.05).float(),
                  batch * seq_len, 'frames/s')


WORKLOADS = {
    'vqvae32': Workload('configs/vqvae_cifar10_sonnet.py', {'batch_size': 32}, torch_vqvae,
                        3e-4, None, lambda torch: torch.rand(32, 3, 32, 32), 32, 'img/s'),
    'vrnn32': _vrnn(32),
    'vrnn128': _vrnn(128),
    'lvae': Workload('configs/lvae_mnist.py', {}, torch_ladder, 2e-4, None,
                     lambda torch: (torch.rand(256, 784) < 0.15).float(), 256, 'img/s'),
}


def workload_config(workload, extra_flags=()):
  """The project's config of `workload`, built as train.py builds it from
  `--config=... --config.k=v` (its overrides, then `extra_flags`)."""
  from vaes import sweep
  return sweep.parse_config(os.path.join(REPO, workload.config),
                            sweep.override_flags(workload.overrides) + list(extra_flags))


def run_workload(name, rounds, window_s, torch_threads, extra_flags=()):
  import jax
  from benchmarks.common import compile_step

  workload = WORKLOADS[name]
  if workload.overrides.get('data.path') == FAKE_PIANOROLL and not os.path.exists(FAKE_PIANOROLL):
    from benchmarks import make_fake_pianoroll
    make_fake_pianoroll.main(FAKE_PIANOROLL)
  config = workload_config(workload, extra_flags)
  step = compile_step(config)
  compiled, batch, state = step.compiled, step.batch, step.state

  if torch_threads:
    import torch
    model, loss_fn = workload.torch_model(torch)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=workload.lr)
    x = workload.make_input(torch)

  def ours(n):
    nonlocal state
    for _ in range(n):
      state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))

  def theirs(threads):
    def run(n):
      torch.set_num_threads(threads)
      for _ in range(n):
        opt.zero_grad(set_to_none=True)
        loss_fn(model, x).backward()
        if workload.clip:
          torch.nn.utils.clip_grad_norm_(model.parameters(), workload.clip)
        opt.step()
    return run

  sides = {'ours': ours}
  sides.update({f'torch_{t}': theirs(int(t)) for t in torch_threads})
  steps = {}
  for side, fn in sides.items():   # warm-up, and a window size of about window_s
    fn(2)
    t0 = time.perf_counter()
    fn(1)
    steps[side] = max(1, round(window_s / max(time.perf_counter() - t0, 1e-6)))
  times = {side: [] for side in sides}
  order = list(sides)
  for r in range(rounds):
    for side in order[r % len(order):] + order[:r % len(order)]:
      t0 = time.perf_counter()
      sides[side](steps[side])
      times[side].append((time.perf_counter() - t0) / steps[side])
  ms = {side: 1e3 * statistics.median(t) for side, t in times.items()}
  best = min((s for s in ms if s != 'ours'), key=ms.get, default=None)
  return {
      'workload': name, 'config': workload.config, 'overrides': workload.overrides,
      'extra_flags': list(extra_flags),
      'jax_version': jax.__version__,
      'torch_version': torch.__version__ if torch_threads else None,
      'python': sys.version.split()[0], 'cores': sorted(os.sched_getaffinity(0)),
      'cpu_count': os.cpu_count(), 'load_average': os.getloadavg()[0],
      'rounds': rounds, 'compile_s': step.compile_s,
      'ms_per_step': ms, 'spread_ms': {s: [1e3 * min(t), 1e3 * max(t)] for s, t in times.items()},
      'torch_best': best, 'ratio_ours_over_torch': ms['ours'] / ms[best] if best else None,
      'ours_throughput': workload.per_step / ms['ours'] * 1e3, 'unit': workload.unit,
  }


def markdown(results):
  lines = ['| workload | this project | PyTorch (best threads) | ratio ours / PyTorch |',
           '|---|---|---|---|']
  for r in results:
    ms = r['ms_per_step']
    best = r['torch_best']
    if best is None:
      lines.append(f"| {r['workload']} | {ms['ours']:.1f} ms | - | - |")
      continue
    lines.append(f"| {r['workload']} | {ms['ours']:.1f} ms | {ms[best]:.1f} ms "
                 f"({best.split('_')[1]} thr.) | {r['ratio_ours_over_torch']:.2f} |")
  return '\n'.join(lines)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from benchmarks.common import emit
  unknown = [w for w in FLAGS.workloads if w not in WORKLOADS]
  if unknown:
    raise app.UsageError(f'--workloads: unknown {unknown}; choose from {sorted(WORKLOADS)}.')
  if FLAGS.cores:
    available = sorted(os.sched_getaffinity(0))
    if FLAGS.cores > len(available):
      raise app.UsageError(f'--cores={FLAGS.cores}: this process may use {len(available)}.')
    os.sched_setaffinity(0, available[:FLAGS.cores])   # before JAX creates its CPU client
  torch_threads = FLAGS.torch_threads
  if torch_threads is None:
    torch_threads = [str(FLAGS.cores)] if FLAGS.cores else ['1', '2']
  if torch_threads:
    try:
      import torch  # noqa: F401
    except ImportError as e:
      raise app.UsageError('PyTorch is not installed: pip install torch==2.13.0 (CPU build), '
                           'for this benchmark only; or --torch_threads= for the project '
                           'side alone.') from e
  extra_flags = [f'--config.{item}' for item in FLAGS.overrides]
  results = []
  for name in FLAGS.workloads:
    result = run_workload(name, FLAGS.rounds, FLAGS.window_s, torch_threads, extra_flags)
    emit(result, FLAGS.output)
    results.append(result)
  print(markdown(results))


if __name__ == '__main__':
  app.run(main)
