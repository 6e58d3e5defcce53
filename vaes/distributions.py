"""Log-likelihoods and KL divergences, always computed in float32.

Every function returns *per-element* values (no reduction) so that callers can
mask padded frames, sum over the right axes and weight by `valid` examples.
Inputs of any float dtype (bf16 included) are upcast to float32 first. Bounds built
from them (KL warm-up, free bits, the importance-weighted bound, bits/dim) are in
vaes/objectives.py.
"""

import math

import jax
import jax.numpy as jnp

LOG_2PI = math.log(2.0 * math.pi)


def _f32(*xs):
  return tuple(jnp.asarray(x, jnp.float32) for x in xs)


# ----------------------------------------------------------------------------
# Diagonal Gaussians, parameterised by mean and log-variance.
# ----------------------------------------------------------------------------


def gaussian_log_prob(x, mean, logvar):
  """log N(x; mean, exp(logvar)), elementwise."""
  x, mean, logvar = _f32(x, mean, logvar)
  return -0.5 * (LOG_2PI + logvar + jnp.square(x - mean) * jnp.exp(-logvar))


def gaussian_kl(mean_q, logvar_q, mean_p=0.0, logvar_p=0.0):
  """KL(N(mean_q, exp(logvar_q)) || N(mean_p, exp(logvar_p))), elementwise.

  Closed form: 0.5 * (logvar_p - logvar_q + (var_q + (mean_q - mean_p)^2) / var_p - 1).
  """
  mean_q, logvar_q, mean_p, logvar_p = _f32(mean_q, logvar_q, mean_p, logvar_p)
  return 0.5 * (logvar_p - logvar_q
                + (jnp.exp(logvar_q) + jnp.square(mean_q - mean_p)) * jnp.exp(-logvar_p)
                - 1.0)


def gaussian_reparam(mean, logvar, eps):
  """mean + sigma * eps with given noise (lets callers draw all noise up front)."""
  mean, logvar, eps = _f32(mean, logvar, eps)
  return mean + jnp.exp(0.5 * logvar) * eps


def precision_weighted_merge(mean_a, logvar_a, mean_b, logvar_b):
  """Product of two diagonal Gaussians (Ladder VAE, Sonderby et al. 2016, eq. 18-19).

  s_q^2 = 1 / (s_a^-2 + s_b^-2),  mu_q = (mu_a s_a^-2 + mu_b s_b^-2) s_q^2.
  Returns (mean_q, logvar_q).
  """
  mean_a, logvar_a, mean_b, logvar_b = _f32(mean_a, logvar_a, mean_b, logvar_b)
  prec_a, prec_b = jnp.exp(-logvar_a), jnp.exp(-logvar_b)
  var_q = 1.0 / (prec_a + prec_b)
  mean_q = (mean_a * prec_a + mean_b * prec_b) * var_q
  return mean_q, jnp.log(var_q)


# ----------------------------------------------------------------------------
# Discrete observations.
# ----------------------------------------------------------------------------


def bernoulli_log_prob(x, logits):
  """log Bernoulli(x; sigmoid(logits)) for x in [0, 1], elementwise, stable.

  x * log sigmoid(l) + (1 - x) * log sigmoid(-l) = x * l - softplus(l).
  """
  x, logits = _f32(x, logits)
  return x * logits - jax.nn.softplus(logits)


def categorical_log_prob(labels, logits):
  """log softmax(logits)[labels] over the last axis; labels are int indices."""
  logits = jnp.asarray(logits, jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]


def discretized_logistic_log_prob(x, mean, log_scale, num_bins=256):
  """Discretised logistic likelihood of x on num_bins levels in [-1, 1].

  The probability of bin b is sigma((x + h - mean)/s) - sigma((x - h - mean)/s)
  with half bin width h = 1 / (num_bins - 1); the lowest and highest bins take
  the tails (PixelCNN++, Salimans et al. 2017). x must lie on the bin centres
  -1 + 2 b / (num_bins - 1). Elementwise log-probabilities in nats, so that the
  sum over dimensions divided by D ln 2 gives bits/dim.
  """
  x, mean, log_scale = _f32(x, mean, log_scale)
  log_scale = jnp.maximum(log_scale, -7.0)
  half = 1.0 / (num_bins - 1)
  inv_s = jnp.exp(-log_scale)
  centred = x - mean
  plus_in = inv_s * (centred + half)
  min_in = inv_s * (centred - half)
  log_cdf_plus = plus_in - jax.nn.softplus(plus_in)        # log sigma(plus_in)
  log_one_minus_cdf_min = -jax.nn.softplus(min_in)          # log (1 - sigma(min_in))
  cdf_delta = jax.nn.sigmoid(plus_in) - jax.nn.sigmoid(min_in)
  mid_in = inv_s * centred
  # Where the bin mass underflows, use the density at the centre times the bin width.
  log_pdf_mid = mid_in - log_scale - 2.0 * jax.nn.softplus(mid_in)
  log_mid = jnp.where(cdf_delta > 1e-5, jnp.log(jnp.maximum(cdf_delta, 1e-12)),
                      log_pdf_mid + jnp.log(2.0 * half))
  return jnp.where(x < -1.0 + half, log_cdf_plus,
                   jnp.where(x > 1.0 - half, log_one_minus_cdf_min, log_mid))
