"""vaes/registry.py: a family defined outside the package is a module plus one
`register_family` call; the engine trains, checkpoints, resumes and evaluates it with no
line that names it (README, "Adding a model family")."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import base
from vaes import registry
from vaes.evaluate import evaluate, load_trained
from vaes.train import train_and_evaluate


class ToyVAE(nn.Module):
  """One Gaussian latent layer, linear decoder, fixed-variance Gaussian likelihood."""
  latents: int

  @nn.compact
  def __call__(self, x, rng):
    flat = x.reshape(x.shape[0], -1)
    mean, log_var = jnp.split(nn.Dense(2 * self.latents)(flat), 2, axis=-1)
    z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(rng, mean.shape)
    kl = 0.5 * jnp.sum(jnp.exp(log_var) + mean ** 2 - 1.0 - log_var, axis=-1)
    return nn.Dense(flat.shape[-1])(z), kl


def toy_model_config():
  return ml_collections.ConfigDict({'name': 'toy_vae', 'latents': 4})


def build_model(config, data_info):
  del data_info
  return ToyVAE(config.model.latents)


def init_variables(model, rng, batch):
  return model.init(rng, batch['image'], rng)


def per_example_neg_elbo(model, params, x, rng, variance):
  mean, kl = model.apply({'params': params}, x, rng)
  flat = x.reshape(x.shape[0], -1)
  nll = 0.5 * jnp.sum((flat - mean) ** 2, axis=-1) / variance
  return nll + kl


def make_loss_fn(config, model, data_info):
  variance = float(data_info.train_variance)

  def loss_fn(params, model_state, batch, rng, step):
    del step
    loss = jnp.mean(per_example_neg_elbo(model, params, batch['image'], rng, variance))
    return loss, ({'loss': loss}, model_state)
  return loss_fn


def eval_stats(config, model, data_info):
  variance = float(data_info.train_variance)

  def stats_fn(variables, batch, rng):
    w = batch['valid'].astype(jnp.float32)
    neg_elbo = per_example_neg_elbo(model, variables['params'], batch['image'], rng, variance)
    return {'neg_elbo': jnp.sum(w * neg_elbo), 'count': jnp.sum(w)}
  return stats_fn


def eval_metrics(config, data_info, totals):
  return {'neg_elbo': float(totals['neg_elbo'] / totals['count']),
          'examples': float(totals['count'])}


TOY = registry.ModelFamily(name='toy_vae', build_model=build_model,
                           init_variables=init_variables, make_loss_fn=make_loss_fn,
                           eval_stats=eval_stats, eval_metrics=eval_metrics)


@pytest.fixture
def toy_config(monkeypatch):
  monkeypatch.setitem(registry._FAMILIES, 'toy_vae', TOY)  # pylint: disable=protected-access
  c = base.get_base_config()
  c.model = toy_model_config()
  c.data.name = 'digits'
  c.data.image_size = 8
  c.data.resize = 'pad'
  c.data.binarize = 'none'
  c.batch_size = 32
  c.num_train_steps = 150
  c.log_every_steps = 10
  c.eval_every_steps = 0
  c.checkpoint_every_steps = 75
  c.learning_rate = 3e-3
  c.eval.batch_size = 128
  return c


def test_an_unknown_family_names_the_registered_ones():
  with pytest.raises(registry.ConfigError, match=r"'no_such_vae' is not a known model; "
                     r"choose one of \[.*'lvae'.*\]"):
    registry.get_family('no_such_vae')


def test_a_family_registered_outside_the_package_trains_resumes_and_evaluates(toy_config,
                                                                             tmp_path):
  workdir = str(tmp_path / 'toy')
  half = toy_config.copy_and_resolve_references()
  half.num_train_steps = 75
  train_and_evaluate(half, workdir)
  train_and_evaluate(toy_config, workdir)  # the same workdir: resumes at step 75
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [r for r in map(json.loads, f) if 'loss' in r]
  steps = [r['step'] for r in rows]
  losses = {r['step']: r['loss'] for r in rows}
  # Every 10 steps and the last step of the first call; a list, so a repeat would show.
  assert steps == sorted(set(range(10, 151, 10)) | {75})
  assert losses[150] < 0.7 * losses[10]

  metrics = evaluate(toy_config, workdir)
  with open(os.path.join(workdir, 'eval_metrics.json')) as f:
    assert json.load(f)['neg_elbo'] == pytest.approx(metrics['neg_elbo'])
  trained = load_trained(toy_config, workdir)
  assert trained.step == 150
  images = np.concatenate([np.asarray(b['image'])[np.asarray(b['valid'])]
                           for b in trained.splits.eval])
  assert metrics['examples'] == len(images) == trained.splits.info.num_eval  # no padding
  # The engine's estimate (one z per image, summed over the batches) against the closed
  # form of the expected -ELBO of a linear decoder: E_q ||x - W z - b||^2 =
  # ||x - W mu - b||^2 + sum_j var_j ||W_j||^2.
  params = jax.device_get(trained.variables['params'])
  encoder, decoder = params['Dense_0'], params['Dense_1']
  flat = images.reshape(len(images), -1).astype(np.float64)
  mean, log_var = np.split(flat @ encoder['kernel'] + encoder['bias'], 2, axis=-1)
  var = np.exp(log_var)
  sq = (np.sum((flat - mean @ decoder['kernel'] - decoder['bias']) ** 2, axis=-1)
        + var @ np.sum(np.asarray(decoder['kernel'], np.float64) ** 2, axis=-1))
  kl = 0.5 * np.sum(var + mean ** 2 - 1.0 - log_var, axis=-1)
  exact = np.mean(0.5 * sq / trained.splits.info.train_variance + kl)
  assert metrics['neg_elbo'] == pytest.approx(exact, rel=0.02)  # 36.30 vs 36.54 when written
  assert exact < 0.7 * losses[10]
