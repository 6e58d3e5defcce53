"""Vector quantisation: the one place for codebook logic.

Notation of van den Oord et al. (2017): encoder output z_e(x) in R^D, codebook
e_k (k = 1..K), nearest code k* = argmin_k ||z_e - e_k||^2, quantised z_q = e_{k*}.

Losses (sg = jax.lax.stop_gradient), as means over latent vectors and dimensions:
  codebook   = ||sg[z_e] - e_{k*}||^2      (dropped when the codebook is EMA-updated)
  commitment = beta ||z_e - sg[e_{k*}]||^2
Straight-through: the decoder receives z_e + sg[z_q - z_e], whose value is z_q and
whose gradient w.r.t. z_e is the identity.

Distances and argmin are always computed in float32 (half precision ties and
overflows are the most common source of dead codes and NaNs). The lookup is
`one_hot(k*) @ codebook`, a matmul, whose backward is a matmul too, instead of
a gather whose backward is a collision-heavy scatter-add (50x slower on GPU, see
REFERENCE.md).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

sg = jax.lax.stop_gradient


def nearest_code(z, codebook):
  """k* = argmin_k ||z - e_k||^2 for z (..., D) and codebook (K, D), in float32.

  Returns (indices (...,), squared distances (..., K)).
  """
  z = z.astype(jnp.float32)
  codebook = codebook.astype(jnp.float32)
  d = (jnp.sum(z * z, axis=-1, keepdims=True)
       - 2.0 * jnp.einsum('...d,kd->...k', z, codebook, precision=jax.lax.Precision.HIGHEST)
       + jnp.sum(codebook * codebook, axis=-1))
  return jnp.argmin(d, axis=-1), d


def lookup(indices, codebook):
  """z_q = e_{k*} written as one_hot(k*) @ codebook (matmul forward and backward)."""
  one_hot = jax.nn.one_hot(indices, codebook.shape[0], dtype=jnp.float32)
  return jnp.einsum('...k,kd->...d', one_hot, codebook.astype(jnp.float32),
                    precision=jax.lax.Precision.HIGHEST), one_hot


def code_perplexity(one_hot, weights=None):
  """exp(entropy of the average one-hot code usage) over all leading axes."""
  flat = one_hot.reshape(-1, one_hot.shape[-1])
  if weights is not None:
    w = weights.reshape(-1, 1).astype(jnp.float32)
    probs = jnp.sum(flat * w, 0) / jnp.maximum(jnp.sum(w), 1.0)
  else:
    probs = jnp.mean(flat, 0)
  return jnp.exp(-jnp.sum(probs * jnp.log(probs + 1e-10)))


def ema_update(cluster_size, embed_sum, one_hot, z, decay, eps):
  """One EMA codebook step (van den Oord et al. 2017, appendix, eqs. 6-8).

    N_k <- decay N_k + (1 - decay) n_k,          n_k = #{i : k*_i = k}
    m_k <- decay m_k + (1 - decay) sum_{i: k*_i = k} z_e,i
    N'_k = (N_k + eps) / (n + K eps) * n,          n = sum_k N_k  (Laplace smoothing)
    e_k  = m_k / N'_k

  `one_hot` (M, K) and `z` (M, D) are over the *global* batch: under jit with a
  sharded batch the sums below are global reductions on any number of devices.
  Returns (cluster_size, embed_sum, codebook).
  """
  z = sg(z.astype(jnp.float32))
  one_hot = sg(one_hot)
  counts = jnp.sum(one_hot, axis=0)
  sums = jnp.einsum('mk,md->kd', one_hot, z, precision=jax.lax.Precision.HIGHEST)
  cluster_size = decay * cluster_size + (1.0 - decay) * counts
  embed_sum = decay * embed_sum + (1.0 - decay) * sums
  n = jnp.sum(cluster_size)
  k = cluster_size.shape[0]
  smoothed = (cluster_size + eps) / (n + k * eps) * n
  return cluster_size, embed_sum, embed_sum / smoothed[:, None]


class VectorQuantizer(nn.Module):
  """Nearest-neighbour quantiser with a gradient- or EMA-updated codebook.

  With `use_ema`, the codebook lives in the 'vq_ema' collection (not a param),
  together with its EMA statistics, initialised as if each code had been chosen
  once for its own initial value (N_k = 1, m_k = e_k), so codes that are unused
  early keep their place instead of collapsing to zero. The statistics are
  updated only when `update_ema` is true (training), from the global batch.
  """
  num_codes: int
  code_dim: int
  beta: float = 0.25
  use_ema: bool = False
  ema_decay: float = 0.99
  ema_eps: float = 1e-5

  @nn.compact
  def __call__(self, z_e, update_ema: bool = False):
    init = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')
    shape = (self.num_codes, self.code_dim)
    if self.use_ema:
      key = self.make_rng('params') if self.is_initializing() else None
      codebook_var = self.variable('vq_ema', 'codebook', lambda: init(key, shape, jnp.float32))
      cluster_var = self.variable('vq_ema', 'cluster_size',
                                  lambda: jnp.ones((self.num_codes,), jnp.float32))
      sum_var = self.variable('vq_ema', 'embed_sum', lambda: codebook_var.value)
      codebook = codebook_var.value
    else:
      codebook = self.param('codebook', init, shape, jnp.float32)

    z32 = z_e.astype(jnp.float32)
    indices, _ = nearest_code(sg(z32), codebook)
    z_q, one_hot = lookup(indices, codebook)

    commitment = self.beta * jnp.mean(jnp.square(z32 - sg(z_q)))
    if self.use_ema:
      codebook_loss = jnp.zeros((), jnp.float32)
      if update_ema and not self.is_initializing():
        flat_oh = one_hot.reshape(-1, self.num_codes)
        flat_z = z32.reshape(-1, self.code_dim)
        c, s, e = ema_update(cluster_var.value, sum_var.value, flat_oh, flat_z,
                             self.ema_decay, self.ema_eps)
        cluster_var.value, sum_var.value, codebook_var.value = c, s, e
    else:
      codebook_loss = jnp.mean(jnp.square(sg(z32) - z_q))

    z_q_st = z32 + sg(z_q - z32)  # straight-through estimator
    return dict(
        z_q=z_q_st.astype(z_e.dtype),
        indices=indices,
        one_hot=one_hot,
        codebook_loss=codebook_loss,
        commitment_loss=commitment,
        perplexity=code_perplexity(one_hot),
    )


def make_quantizer(cfg: Any) -> VectorQuantizer:
  """Quantiser from a `config.model` group (num_codes, code_dim, beta, use_ema...)."""
  return VectorQuantizer(
      num_codes=cfg.num_codes, code_dim=cfg.code_dim, beta=cfg.beta,
      use_ema=cfg.get('use_ema', False), ema_decay=cfg.get('ema_decay', 0.99),
      ema_eps=cfg.get('ema_eps', 1e-5))
