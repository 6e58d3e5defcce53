"""The first training losses of a config on its real data, for comparing software stacks.

  python benchmarks/first_losses.py --configs=configs/vqvae.py,configs/vrnn_jsb.py \
      --steps=50 --output=/tmp/losses_new.json
  python benchmarks/first_losses.py --compare=/tmp/losses_old.json,/tmp/losses_new.json

Runs the real jitted train step (`vaes.train.build_trainer`, the one `train.py` uses) for
`--steps` steps from the config's initial state on the config's own training batches,
and writes {config: {'versions': ..., 'loss': [...]}} as JSON. `--compare` prints, per
config, the largest absolute and relative difference of the losses of two such files
(e.g. one written under the old JAX and one under the new) and whether they agree to
`--rtol` (float32: XLA may fuse differently between releases, so bits need not match).

Rounding differences compound over training (Adam divides by the gradients' own scale),
so a later loss can differ by more than one step's rounding. `--one_step` separates the
two: every `--one_step_every` steps the state is saved (`--states=DIR`, written by the
first stack's run) and each stack then takes exactly one step from each saved state on
that step's batch; the losses and the updated parameters of the two stacks are compared
(`--compare`), so each step's function is checked from the same inputs.

  python benchmarks/first_losses.py --configs=configs/lvae_mnist.py --states=/tmp/st \
      --output=/tmp/old.json                                     # old stack: saves states
  python benchmarks/first_losses.py --configs=configs/lvae_mnist.py --states=/tmp/st \
      --one_step --output=/tmp/old1.json                         # old stack, one step each
  python benchmarks/first_losses.py ... --one_step --output=/tmp/new1.json   # new stack
  python benchmarks/first_losses.py --compare=/tmp/old1.json,/tmp/new1.json
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

flags.DEFINE_list('configs', ['configs/vqvae.py', 'configs/vrnn_jsb.py',
                              'configs/lvae_mnist.py'], 'Config files to run.')
flags.DEFINE_integer('steps', 50, 'Training steps per config.')
flags.DEFINE_string('output', '', 'Write the losses here (JSON).')
flags.DEFINE_list('compare', [], 'Two JSON files written by this script: compare them.')
flags.DEFINE_float('rtol', 1e-4, 'Relative tolerance of --compare.')
flags.DEFINE_string('states', '', 'Folder for the saved states (see the docstring).')
flags.DEFINE_integer('one_step_every', 10, 'Save / restart from every this many steps.')
flags.DEFINE_bool('one_step', False, 'One step from each state saved in --states.')
FLAGS = flags.FLAGS


def first_losses(config_path, steps, states_dir='', every=10, one_step=False):
  import jax
  import numpy as np
  import vaes.families  # noqa: F401  (each family registers itself)
  from tests.helpers import load_config
  from vaes import data as data_lib
  from vaes.train import build_trainer
  config = load_config(config_path)
  splits = data_lib.get_datasets(config)
  trainer = build_trainer(config, splits.info, splits.train.element_spec,
                          devices=jax.devices()[:1])
  state = trainer.init_fn()
  name = os.path.basename(config_path).replace('.py', '')
  if one_step:   # one step from each saved state; 'loss' then holds those losses
    treedef = jax.tree_util.tree_structure(state)
    losses, params = [], []
    for step in range(0, steps, every):
      with np.load(os.path.join(states_dir, f'{name}_{step}.npz')) as f:
        leaves = [f[f'a{i}'] for i in range(len(f.files))]
      start = jax.device_put(jax.tree_util.tree_unflatten(treedef, leaves), trainer.state_sharding)
      new, metrics = trainer.train_step(start, trainer.put(splits.train.batch(step)))
      losses.append(float(jax.device_get(metrics['loss'])))
      params.append([float(np.abs(np.asarray(x)).sum())
                     for x in jax.tree_util.tree_leaves(jax.device_get(new.params))])
    return losses, params
  batches = splits.train.iterate(0)
  losses = []
  for step in range(steps):
    if states_dir and step % every == 0:
      os.makedirs(states_dir, exist_ok=True)
      leaves = jax.tree_util.tree_leaves(jax.device_get(state))
      np.savez(os.path.join(states_dir, f'{name}_{step}.npz'),
               **{f'a{i}': np.asarray(x) for i, x in enumerate(leaves)})
    state, metrics = trainer.train_step(state, trainer.put(next(batches)))
    losses.append(float(jax.device_get(metrics['loss'])))
  return losses, None


def compare(path_a, path_b, rtol):
  with open(path_a) as f:
    a = json.load(f)
  with open(path_b) as f:
    b = json.load(f)
  ok = True
  for name in a:
    if name not in b:
      print(f'{name}: only in {path_a}')
      continue
    la, lb = a[name]['loss'], b[name]['loss']
    n = min(len(la), len(lb))
    abs_diff = [abs(x - y) for x, y in zip(la[:n], lb[:n])]
    rel_diff = [d / max(abs(x), 1e-12) for d, x in zip(abs_diff, la[:n])]
    if a[name].get('params') and b[name].get('params'):   # --one_step: |params| sums too
      pa = [x for row in a[name]['params'] for x in row]
      pb = [x for row in b[name]['params'] for x in row]
      rel_diff += [abs(x - y) / max(abs(x), 1e-12) for x, y in zip(pa, pb)]
    agree = max(rel_diff) <= rtol
    ok &= agree
    print(f"{name}: {n} steps, max |diff| {max(abs_diff):.3g}, max rel diff {max(rel_diff):.3g} "
          f"(step {rel_diff.index(max(rel_diff))}), first {la[0]:.6f} vs {lb[0]:.6f}, "
          f"last {la[n - 1]:.6f} vs {lb[n - 1]:.6f}: "
          f"{'agree' if agree else 'DIFFER'} to rtol {rtol:g} "
          f"({a[name]['versions']} vs {b[name]['versions']})")
  return ok


def main(argv):
  del argv
  if FLAGS.compare:
    if len(FLAGS.compare) != 2:
      raise app.UsageError('--compare takes two files: OLD,NEW')
    sys.exit(0 if compare(*FLAGS.compare, FLAGS.rtol) else 1)
  import flax
  import jax
  versions = f'jax {jax.__version__}, flax {flax.__version__}, python {sys.version.split()[0]}'
  out = {}
  for path in FLAGS.configs:
    losses, params = first_losses(path, FLAGS.steps, FLAGS.states, FLAGS.one_step_every,
                                  FLAGS.one_step)
    out[path] = {'versions': versions, 'loss': losses, 'params': params}
    print(json.dumps({'config': path, 'versions': versions, 'first': losses[0],
                      'last': losses[-1]}), flush=True)
  if FLAGS.output:
    with open(FLAGS.output, 'w') as f:
      json.dump(out, f, indent=1)


if __name__ == '__main__':
  app.run(main)
