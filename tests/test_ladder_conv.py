"""Ladder VAE with convolutional blocks, the discretised logistic and bf16 activations.

A file of its own because XLA:CPU compiles convolutions slowly (about 20 s of CPU for
this tiny model), which would dominate tests/test_ladder.py."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from tests.helpers import load_config
from vaes import data as data_lib
from vaes.models import ladder as ladder_model
from vaes.registry import get_family


def test_conv_blocks_logistic_likelihood_and_bfloat16():
  """Conv latents (strided feature maps), the discretised logistic on 17-level digits, bf16
  activations: losses and log-probs stay float32 and finite, samples have the data's shape.
  (One jitted function: XLA:CPU compiles convolutions slowly.)"""
  config = load_config('configs/lvae.py', {
      'model.latent_sizes': (4, 3), 'model.hidden_sizes': (16, 8), 'batch_size': 32,
      'model.block': 'conv', 'model.strides': (2, 2), 'model.block_depth': 1,
      'model.batch_norm': True, 'model.likelihood': 'logistic', 'data.binarize': 'none',
      'compute_dtype': 'bfloat16'})
  fam = get_family(config.model.name)
  splits = data_lib.get_datasets(config)
  assert splits.info.num_levels == 17
  model = fam.build_model(config, splits.info)
  assert ladder_model.latent_shapes(model, (8, 8, 1)) == [(4, 4, 4), (2, 2, 3)]
  loss_fn = fam.make_loss_fn(config, model, splits.info)
  batch = jax.tree.map(jnp.asarray, next(splits.train.iterate(0)))

  @jax.jit
  def run(rng):
    variables = fam.init_variables(model, rng, batch)
    params, state = variables.pop('params'), variables
    (loss, (m, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, state, batch, rng, 10)
    noise = ladder_model.draw_noise(model, rng, (3,), (8, 8, 1))
    sample = model.apply({'params': params, **new_state}, noise, method=model.sample)
    return loss, m, grads, sample, params

  loss, m, grads, sample, params = run(jax.random.PRNGKey(0))
  assert loss.dtype == jnp.float32 and np.isfinite(float(loss))
  assert all(v.dtype == jnp.float32 and np.isfinite(float(v)) for v in m.values())
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  # A random model is near uniform on 17 levels: ~log(17) nats per dimension.
  assert 0.5 * math.log(17) < float(m['recon_nll']) / 64 < 3 * math.log(17)
  assert sample['mean'].shape == (3, 8, 8, 1) and sample['mean'].dtype == jnp.float32
