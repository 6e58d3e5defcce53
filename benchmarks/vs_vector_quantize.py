"""The project's quantisers against vector-quantize-pytorch's, on Fashion-MNIST, side by side.

  python3 -m venv ~/venvs/vqtorch && ~/venvs/vqtorch/bin/pip install torch==2.13.0 \
      vector-quantize-pytorch==1.32.0        # for the library's side only
  python benchmarks/vs_vector_quantize.py --out=runs/vs_vq [--steps=1000] \
      [--torch_python=~/venvs/vqtorch/bin/python] [--ours=vq,vq_rotation,...] \
      [--library=vq_st,vq_rot,...] [--rec_losses=l1,mse] [--markdown=FILE]

Both sides train the same model, the library's examples/autoencoder.py
`SimpleVQAutoEncoder` (ours: configs/vqvae_fashion_mnist.py, model.arch='pool', 9,569
weights beside the codebook), with batch 256, AdamW 3e-4, for --steps steps on the 60,000
training images, and report on the 10,000 test images: MSE per pixel in [0, 1], normalised
MSE (MSE / training-pixel variance), mean per-image PSNR, codebook usage (fraction of the
codes used at least once over the test set), perplexity, and the median train step time.

- The library: benchmarks/vs_vector_quantize_torch.py in the --torch_python venv, one
  subprocess per variant and reconstruction loss (the example's L1 + 10 x commitment, and
  MSE + 10 x commitment: the objective the test MSE measures), its own recipe otherwise.
- The project: `train.py` then the evaluation at the last step, one subprocess per
  variant of sweeps/vqvae_fashion_mnist_quantizers.py (--ours names them) on
  configs/vqvae_fashion_mnist.py:plain, the test split.
  Its step time is the median of the engine's steps_per_sec over the log intervals after
  the first (which holds the compilation), so it counts the host feed, as the library's
  counts its batch assembly.

Timings need a quiet machine: run nothing beside it. Each run's JSON stays in --out; a
finished run is not run again (delete its file or workdir to redo it). The table goes to
stdout and, with --markdown, to a file.
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY_VARIANTS = ('vq_st', 'vq_rot', 'vq_rot_dead', 'simvq_st', 'simvq_rot', 'lfq', 'fsq')
# Ours, named as in the sweep; each beside the library variant it corresponds to.
OURS_DEFAULT = ('vq', 'vq_rotation', 'vq_rotation_kmeans_ema_dead', 'vq_kmeans_restarts',
                'simvq_rotation', 'lfq', 'fsq')


def sweep_variants():
  path = os.path.join(ROOT, 'sweeps', 'vqvae_fashion_mnist_quantizers.py')
  spec = importlib.util.spec_from_file_location('fmnist_sweep', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.VARIANTS


def flag(field, value):
  if isinstance(value, tuple):
    value = '(' + ','.join(map(str, value)) + ',)'
  return f'--config.{field}={value}'


def run_library(args, variant, rec_loss):
  out = os.path.join(args.out, f'library_{variant}_{rec_loss}.json')
  if not os.path.exists(out):
    cmd = [os.path.expanduser(args.torch_python),
           os.path.join(ROOT, 'benchmarks', 'vs_vector_quantize_torch.py'),
           f'--variant={variant}', f'--steps={args.steps}', f'--rec_loss={rec_loss}',
           f'--threads={args.threads}', f'--data_dir={args.data_dir}', f'--out={out}']
    print('$', ' '.join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
  with open(out) as f:
    r = json.load(f)
  return dict(side='vector-quantize-pytorch', variant=f'{variant} ({rec_loss})',
              mse=r['test_mse'], nmse=r['test_normalized_mse'], psnr=r['test_psnr'],
              usage=r['codebook_usage'], perplexity=r['perplexity'], ms=r['train_step_ms_median'])


def run_ours(args, name, overrides):
  workdir = os.path.join(args.out, f'ours_{name}')
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  evals = read_evals(metrics_path)
  if args.steps not in evals:
    cmd = [sys.executable, os.path.join(ROOT, 'train.py'),
           '--config=' + os.path.join(ROOT, 'configs', 'vqvae_fashion_mnist.py') + ':plain',
           f'--workdir={workdir}', f'--config.num_train_steps={args.steps}',
           f'--config.eval_every_steps={args.steps}', '--config.log_every_steps=100',
           f'--config.checkpoint_every_steps={args.steps}', '--config.data.eval_split=test',
           f'--config.data.path={args.data_dir}']
    cmd += [flag(k, v) for k, v in overrides.items()]
    print('$', ' '.join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    evals = read_evals(metrics_path)
  e = evals[args.steps]
  rates = [r['steps_per_sec'] for r in read_train_logs(metrics_path)[1:]]
  return dict(side='this project', variant=name, mse=e['eval/recon_mse'],
              nmse=e['eval/normalized_mse'], psnr=e['eval/psnr'],
              usage=e['eval/codebook_usage'], perplexity=e['eval/perplexity'],
              ms=1000.0 / statistics.median(rates) if rates else float('nan'))


def read_lines(path):
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def read_evals(path):
  return {r['step']: r for r in read_lines(path) if 'eval/recon_mse' in r}


def read_train_logs(path):
  return [r for r in read_lines(path) if 'steps_per_sec' in r]


def markdown(rows, steps):
  lines = [f'| side | variant | test MSE | NMSE | PSNR (dB) | usage | perplexity | ms/step |',
           '|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {r['side']} | {r['variant']} | {r['mse']:.5f} | {r['nmse']:.4f} | "
                 f"{r['psnr']:.2f} | {r['usage']:.3f} | {r['perplexity']:.1f} | {r['ms']:.0f} |")
  header = f'{steps} steps, batch 256, Fashion-MNIST test split (10,000 images)\n\n'
  return header + '\n'.join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--out', required=True, help='directory for the runs and their JSON')
  p.add_argument('--steps', type=int, default=1000)
  p.add_argument('--torch_python', default='~/venvs/vqtorch/bin/python')
  p.add_argument('--threads', type=int, default=2, help="the library's torch threads")
  p.add_argument('--data_dir', default='/usr/share/datasets/fashion-mnist')
  p.add_argument('--ours', default=','.join(OURS_DEFAULT))
  p.add_argument('--library', default=','.join(LIBRARY_VARIANTS))
  p.add_argument('--rec_losses', default='l1,mse')
  p.add_argument('--markdown', default='')
  args = p.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  variants = sweep_variants()
  ours = [n for n in args.ours.split(',') if n]
  unknown = sorted(set(ours) - set(variants))
  if unknown:
    p.error(f'--ours: {unknown} are not in sweeps/vqvae_fashion_mnist_quantizers.py '
            f'({sorted(variants)}).')
  rows = []
  for v in [v for v in args.library.split(',') if v]:
    for loss in [l for l in args.rec_losses.split(',') if l]:
      rows.append(run_library(args, v, loss))
  for name in ours:
    rows.append(run_ours(args, name, variants[name]))
  table = markdown(rows, args.steps)
  print(table)
  if args.markdown:
    with open(args.markdown, 'w') as f:
      f.write(table + '\n')


if __name__ == '__main__':
  main()
