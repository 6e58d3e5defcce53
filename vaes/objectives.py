"""What the latent-variable families (ladder / hierarchical, sequential) share in their
objectives and evaluations, as plain functions of model outputs, in float32.

  KL warm-up     beta(step) = min(1, beta_0 + (1 - beta_0) step / N)       (Sonderby et al.
                 2016; beta_0 = 0 there, N = 0 gives 1; N in steps or a fraction of the run)
  free bits      sum_i max(lambda, KL_i), lambda nats per group i           (Kingma et al. 2016)
  IW bound       log p(x) >= logsumexp_k(log w_k) - log k,
                 log w_k = log p(x, z^k) - log q(z^k | x), z^k ~ q(z | x)   (Burda et al. 2016)
  bits per dim   NLL_nats / (D ln 2)
"""

import copy
import math

import jax
import jax.numpy as jnp

F32 = jnp.float32


def iw_selection_eval(config):
  """A family's `selection_eval` (vaes/registry.py) for an importance-weighted bound:
  with config.eval.select_num_importance_samples = k > 0, the config of the evaluations
  that choose the best checkpoint, with k importance samples (in chunks of at most k)
  instead of eval.num_importance_samples, which eval.py reports; else `config`."""
  k = int(config.eval.select_num_importance_samples)
  if not k:
    return config
  chosen = copy.deepcopy(config)
  chosen.eval.num_importance_samples = k
  chosen.eval.iw_chunk_size = min(int(config.eval.iw_chunk_size), k)
  return chosen


def warmup_length(steps, fraction, num_train_steps):
  """N of a warm-up given as `steps`, or as a `fraction` > 0 of the run (which wins):
  round(fraction * num_train_steps), so a shortened run keeps its proportions."""
  return int(round(fraction * num_train_steps)) if fraction > 0 else int(steps)


def kl_warmup_weight(step, warmup_steps, start=0.0):
  """beta(step) = min(1, start + (1 - start) step / N), linear from `start` to 1; 1 if N <= 0."""
  if warmup_steps <= 0:
    return jnp.ones((), F32)
  frac = jnp.asarray(step, F32) / float(warmup_steps)
  return jnp.minimum(1.0, start + (1.0 - start) * frac)


def free_bits_kl(kls, free_bits):
  """sum_i max(lambda, KL_i) over the groups i of `kls` (lambda = free_bits nats each)."""
  return jnp.maximum(kls, free_bits).sum()


def iw_bound(log_weights, axis=0):
  """logsumexp_k(log w_k) - log k over `axis` (k = its size)."""
  log_weights = jnp.asarray(log_weights, F32)
  k = log_weights.shape[axis]
  return jax.nn.logsumexp(log_weights, axis=axis) - jnp.log(float(k))


def chunked_iw_bound(chunk_fn, num_samples, chunk_size, chunk_inputs=None):
  """The IW bound of `num_samples` samples, `chunk_size` at a time, so memory is that of
  one chunk whatever k.

  chunk_fn(input_c, weights) -> (log_w (chunk, B), aux) for chunk c, where `weights`
  (chunk,) is 1 for the samples c * chunk + i < num_samples and 0 for the padding of a
  last, partial chunk (masked out of the bound; aux should weight by it too).
  `chunk_inputs` (one leading entry per chunk) defaults to the chunk indices.
  The chunks run under `lax.map`; inside each, logsumexp over its real samples, then
  log p(x) >= logsumexp_c(lse_c) - log k.
  Returns (bound (B,), aux stacked over chunks).
  """
  chunk = min(chunk_size, num_samples)
  num_chunks = -(-num_samples // chunk)
  if chunk_inputs is None:
    chunk_inputs = jnp.arange(num_chunks)

  def one_chunk(args):
    c, inputs = args
    in_k = (c * chunk + jnp.arange(chunk)) < num_samples
    log_w, aux = chunk_fn(inputs, in_k.astype(F32))
    lse = jax.nn.logsumexp(jnp.where(in_k[:, None], log_w, -jnp.inf), axis=0)
    return lse, aux

  lses, aux = jax.lax.map(one_chunk, (jnp.arange(num_chunks), chunk_inputs))
  return jax.nn.logsumexp(lses, axis=0) - math.log(num_samples), aux


def bits_per_dim(nll_nats, num_dims):
  """bits/dim = NLL_nats / (D ln 2)."""
  return nll_nats / (num_dims * math.log(2.0))
