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
a gather whose backward is a collision-heavy scatter-add (much slower on GPUs).

The three equations above are `codebook_loss`, `commitment_loss` and
`straight_through`, used by every quantiser (`rotation_trick` replaces the last
one on request). Behind the same interface (`__call__(z_e, update_ema) -> dict(z_q,
indices, one_hot, codebook_loss, commitment_loss, codebook_loss_per_example,
commitment_loss_per_example (B,), entropy_loss, perplexity, restarted_codes)` and
`embed(indices) -> z_q`): `VectorQuantizer` (with k-means initialisation, dead-code
restarts by steps unused or by EMA count, cosine codes, a projected lookup space,
the rotation trick, SimVQ codes and an entropy loss), `FSQ`, `ResidualVQ` (with
quantize dropout), `ResidualFSQ` and `LFQ` (lookup-free and binary spherical
quantisation). `QuantizerSpec` declares every quantiser field once (the
`config.model` fields of the VQ families, `quantizer_config`); `build_quantizer(spec)`
builds the one it names.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sg = jax.lax.stop_gradient


# ----------------------------------------------------------------------------
# The VQ objective (van den Oord et al. 2017, eq. 3), one function per term.
# `axis=None` gives the mean over every latent vector and dimension (the batch
# term of the loss); axis=(1, ..) the per-example terms (B,).
# ----------------------------------------------------------------------------


def codebook_loss(z_e, z_q, axis=None):
  """||sg[z_e] - e_{k*}||^2: moves the codes towards the encoder outputs."""
  return jnp.mean(jnp.square(sg(z_e) - z_q), axis=axis)


def commitment_loss(z_e, z_q, beta, axis=None):
  """beta ||z_e - sg[e_{k*}]||^2: keeps the encoder outputs near their codes."""
  return beta * jnp.mean(jnp.square(z_e - sg(z_q)), axis=axis)


def straight_through(z_e, z_q):
  """z_e + sg[z_q - z_e]: the value of z_q with the identity gradient w.r.t. z_e."""
  return z_e + sg(z_q - z_e)


def rotation_trick(z_e, z_q, eps=1e-6):
  """The rotation trick (Fifty et al. 2024): the value of z_q = e_{k*}, with the
  gradient w.r.t. z_e of the linear map that rotates and rescales z_e onto e_{k*}:

    z_q = sg[(||e|| / ||z_e||) R] z_e,   R = I - 2 r r^T + 2 e_hat z_hat^T,
    z_hat = z_e / ||z_e||,  e_hat = e / ||e||,  r = (z_hat + e_hat) / ||z_hat + e_hat||

  R = (I - 2 r r^T)(I - 2 z_hat z_hat^T) is a product of two reflections, a rotation
  with R z_hat = e_hat. Computed as sg[e] + (t - sg[t]), t = sg[||e||/||z_e||] R z_e
  with R applied as vector products (no D x D matrix), so the forward value is e_{k*}
  exactly; no gradient reaches the codebook through this path (as with sg[.] in
  `straight_through`). Norms are clamped at eps.
  """
  z_e = z_e.astype(jnp.float32)
  e = sg(z_q.astype(jnp.float32))
  z_hat = sg(l2_normalize(z_e, eps=eps))
  e_hat = l2_normalize(e, eps=eps)
  r = l2_normalize(z_hat + e_hat, eps=eps)
  norm = lambda x: jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  scale = sg(norm(e) / jnp.maximum(norm(z_e), eps))
  dot = lambda a, b: jnp.sum(a * b, axis=-1, keepdims=True)
  t = scale * (z_e - 2.0 * r * dot(r, z_e) + 2.0 * e_hat * dot(z_hat, z_e))
  return e + (t - sg(t))


def entropy_terms(logits, weights=None):
  """The two entropies of the entropy loss, in float32, for q(k|z) = softmax_k(logits).

  logits (M, F, K): M latent vectors, F independent factors of K values each (F = 1,
  K codes for VQ; F = d bits, K = 2 for LFQ/BSQ, whose q(k|z) factorises per
  dimension). Returns
    per_sample = E_m[H(q(.|z_m))] = E_m[sum_f H(q_f(.|z_m))]     (exact)
    batch      = sum_f H(E_m[q_f(.|z_m)])
  For F = 1 `batch` is the codebook entropy H(E[q(k|z)]); for F > 1 it is the entropy
  of the product of the per-factor batch marginals, the papers' factorisation, an
  upper bound of H(E[q(k|z)]). `weights` (M,) (0/1) restrict E_m to some vectors.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  p = jnp.exp(logp)
  h = -jnp.sum(p * logp, axis=(-2, -1))                          # (M,)
  if weights is None:
    per_sample, avg = jnp.mean(h), jnp.mean(p, axis=0)
  else:
    w = weights.astype(jnp.float32)
    total = jnp.maximum(jnp.sum(w), 1.0)
    per_sample = jnp.sum(w * h) / total
    avg = jnp.einsum('m,mfk->fk', w, p, precision=jax.lax.Precision.HIGHEST) / total
  batch = -jnp.sum(avg * jnp.log(jnp.maximum(avg, 1e-10)))
  return per_sample, batch


def entropy_loss(logits, weight, gamma, weights=None):
  """weight (E[H(q(k|z))] - gamma H(E[q(k|z)])) (MaskGIT / MAGVIT-v2 / BSQ): confident
  per-vector assignments, diverse use of the codes over the batch (`entropy_terms`)."""
  per_sample, batch = entropy_terms(logits, weights)
  return weight * (per_sample - gamma * batch)


def per_example_axes(x):
  """The axes of one example's latents: all but the leading batch axis."""
  return tuple(range(1, x.ndim))


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


def l2_normalize(x, axis=-1, eps=1e-6):
  """x / ||x||_2 along `axis` (cosine codes: distances between unit vectors)."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


def kmeans(rng, z, num_codes, num_iters, max_points=0):
  """Lloyd's k-means on the rows of z (M, D), in float32.

  Centres start at num_codes rows drawn without replacement (with replacement,
  plus a little noise, when M < K); each iteration assigns
  k*_i = argmin_k ||z_i - c_k||^2 and moves c_k = mean{z_i : k*_i = k}; an empty
  cluster keeps its centre. With max_points > 0 a random subset of that many rows
  is clustered. Returns (centres (K, D), counts (K,) of the last assignment).
  """
  z = sg(z.astype(jnp.float32))
  m = z.shape[0]
  k_sub, k_init, k_noise = jax.random.split(rng, 3)
  if max_points and m > max_points:
    z = jnp.take(z, jax.random.choice(k_sub, m, (max_points,), replace=False), axis=0)
    m = max_points
  replace = m < num_codes
  centres = jnp.take(z, jax.random.choice(k_init, m, (num_codes,), replace=replace), axis=0)
  if replace:
    centres = centres + 1e-3 * jnp.std(z) * jax.random.normal(k_noise, centres.shape)

  def assign(c):
    idx, _ = nearest_code(z, c)
    one_hot = jax.nn.one_hot(idx, num_codes, dtype=jnp.float32)
    counts = jnp.sum(one_hot, 0)
    sums = jnp.einsum('mk,md->kd', one_hot, z, precision=jax.lax.Precision.HIGHEST)
    return counts, sums

  def step(_, c):
    counts, sums = assign(c)
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], c)

  centres = jax.lax.fori_loop(0, num_iters, step, centres)
  counts, _ = assign(centres)
  return centres, counts


def restart_dead_codes(rng, codebook, steps_unused, counts, z, restart_after):
  """Dead-code restarts: a code unused for `restart_after` consecutive training
  steps is re-seeded with an encoder output drawn uniformly from the batch.

    u_k <- 0 if n_k > 0 else u_k + 1;   dead_k = u_k >= restart_after
    e_k <- z_e,j  (j ~ U{1..M}, one draw per code)   where dead_k

  `counts` (K,) and `z` (M, D) are over the global batch and `rng` is the step's
  key, so the draw, and the new codebook, are the same on every device.
  Returns (codebook, steps_unused, dead mask).
  """
  steps_unused = jnp.where(counts > 0, 0, steps_unused + 1)
  dead = steps_unused >= restart_after
  draw = jax.random.randint(rng, (codebook.shape[0],), 0, z.shape[0])
  fresh = jnp.take(sg(z.astype(jnp.float32)), draw, axis=0)
  codebook = jnp.where(dead[:, None], fresh, codebook)
  return codebook, jnp.where(dead, 0, steps_unused), dead


def expire_codes_below(rng, codebook, cluster_size, embed_sum, z, threshold):
  """EMA-count dead codes (`threshold_ema_dead_code` of vector-quantize-pytorch): after
  the EMA step, a code whose EMA count N_k is below `threshold` is re-seeded with an
  encoder output of the batch, and its statistics reset as the library does:

    dead_k = N_k < threshold
    e_k <- z_e,j_k,  N_k <- threshold,  m_k <- threshold e_k      where dead_k

  j_k are M >= K distinct rows drawn without replacement (with replacement when the
  batch has fewer rows than codes), one per code. `z` (M, D) is the global batch and
  `rng` the step's key, so the draw is the same on every device.
  Returns (codebook, cluster_size, embed_sum, number of re-seeded codes).
  """
  num_codes, m = codebook.shape[0], z.shape[0]
  if m >= num_codes:
    draw = jax.random.choice(rng, m, (num_codes,), replace=False)
  else:
    draw = jax.random.randint(rng, (num_codes,), 0, m)
  fresh = jnp.take(sg(z.astype(jnp.float32)), draw, axis=0)
  dead = cluster_size < threshold
  codebook = jnp.where(dead[:, None], fresh, codebook)
  cluster_size = jnp.where(dead, jnp.float32(threshold), cluster_size)
  embed_sum = jnp.where(dead[:, None], threshold * codebook, embed_sum)
  return codebook, cluster_size, embed_sum, jnp.sum(dead.astype(jnp.float32))


def mask_terms(terms, keep):
  """Loss terms of a residual stage that is off for the examples with keep_b = 0
  (quantize dropout): per-example terms times keep (B,), batch terms their mean."""
  out = dict(terms)
  for name in ('codebook_loss', 'commitment_loss'):
    per_example = terms[f'{name}_per_example'] * keep
    out[f'{name}_per_example'], out[name] = per_example, jnp.mean(per_example)
  return out


def kmeans_once(initialized, codebook, cluster_size, embed_sum, flat_z, rng, num_iters,
                max_points):
  """k-means initialisation at the first training call: when `initialized` is 0 the
  codebook becomes the `kmeans` centres of flat_z, with N_k = max(n_k, 1) and
  m_k = N_k e_k; otherwise everything is kept (`jax.lax.cond`).
  Returns (codebook, cluster_size, embed_sum)."""
  num_codes = codebook.shape[0]

  def from_kmeans(operand):
    _, _, _, key = operand
    centres, counts = kmeans(key, flat_z, num_codes, num_iters, max_points)
    counts = jnp.maximum(counts, 1.0)
    return centres, counts, centres * counts[:, None]

  def keep(operand):
    c, n, s, _ = operand
    return c, n, s

  return jax.lax.cond(initialized == 0, from_kmeans, keep,
                      (codebook, cluster_size, embed_sum, rng))


def restart_and_reset(rng, codebook, cluster_size, embed_sum, steps_unused, counts, flat_z,
                      restart_after):
  """`restart_dead_codes`, then the EMA statistics of each restarted code reset to
  N_k = 1, m_k = e_k. Returns (codebook, steps_unused, cluster_size, embed_sum,
  number of restarted codes)."""
  codebook, steps_unused, dead = restart_dead_codes(rng, codebook, steps_unused, counts,
                                                    flat_z, restart_after)
  cluster_size = jnp.where(dead, 1.0, cluster_size)
  embed_sum = jnp.where(dead[:, None], codebook, embed_sum)
  return codebook, steps_unused, cluster_size, embed_sum, jnp.sum(dead.astype(jnp.float32))


def simvq_codebook(frozen, w):
  """SimVQ codes (Zhu et al. 2024): e_k = sg[C_k] W, C (K, D) frozen, W (D, D) learned."""
  return jnp.einsum('kd,de->ke', sg(frozen.astype(jnp.float32)), w.astype(jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)


class VectorQuantizer(nn.Module):
  """Nearest-neighbour quantiser with a gradient- or EMA-updated codebook.

  With `use_ema`, the codebook lives in the 'vq_ema' collection (not a param),
  together with its EMA statistics, initialised as if each code had been chosen
  once for its own initial value (N_k = 1, m_k = e_k), so codes that are unused
  early keep their place instead of collapsing to zero. The statistics are
  updated only when `update_ema` is true (training), from the global batch.

  Codebook health (all off by default; the first two need `use_ema`, since they
  write the codebook from inside the train step, and draw from the 'vq' rng):
  * kmeans_init: at the first training call the codebook is replaced by k-means
    centres of that (global) batch's encoder outputs (`kmeans`), under
    `jax.lax.cond` on an 'initialized' flag kept in 'vq_ema'.
  * restart_after > 0: dead-code restarts (`restart_dead_codes`); the EMA
    statistics of a restarted code are reset to N_k = 1, m_k = e_k.
  * cosine: z_e and e_k are l2-normalised before distances and lookup, so
    k* = argmax_k cos(z_e, e_k) and z_q = e_{k*} / ||e_{k*}||.
  * lookup_dim > 0: factorised codes; z_e is projected to a lookup_dim space
    (a Dense layer), quantised there, and z_q is projected back to code_dim.
    Commitment and codebook losses are measured in the lookup space.
  * dead_code_threshold > 0 (EMA, instead of restart_after): codes whose EMA count
    N_k falls below it are re-seeded (`expire_codes_below`).

  Other options (off by default):
  * rotation_trick: the decoder's z_q carries the gradient of `rotation_trick`
    instead of `straight_through`.
  * simvq (SimVQ, Zhu et al. 2024; gradient codebook only): e_k = sg[C_k] W, with C
    (K, D) random and frozen (the 'vq_frozen' collection, never seen by the optimiser)
    and W (D, D) a learned param 'code_transform'; the nearest neighbour and the
    codebook loss are over the transformed codes C W, so W gets the codebook gradient.
  * entropy_weight > 0: `entropy_loss` of q(k|z) = softmax_k(-||z_e - e_k||^2 / tau)
    over the codebook (MaskGIT's entropy loss; gamma weighs the codebook entropy).

  `keep` (B,) (0/1, from `ResidualVQ`'s quantize dropout) turns the quantiser off for
  some examples: their losses are 0 and they do not count in the EMA statistics,
  restarts and entropies.
  """
  num_codes: int
  code_dim: int
  beta: float = 0.25
  use_ema: bool = False
  ema_decay: float = 0.99
  ema_eps: float = 1e-5
  kmeans_init: bool = False
  kmeans_iters: int = 10
  kmeans_points: int = 16384
  restart_after: int = 0
  cosine: bool = False
  lookup_dim: int = 0
  dead_code_threshold: float = 0.0
  rotation_trick: bool = False
  simvq: bool = False
  entropy_weight: float = 0.0
  entropy_gamma: float = 1.0
  entropy_temperature: float = 0.01

  @property
  def space_dim(self):
    return self.lookup_dim or self.code_dim

  @nn.compact
  def __call__(self, z_e, update_ema: bool = False, keep=None):
    """z_e (B, ..., code_dim) -> dict(z_q = z_e + sg[e_{k*} - z_e], indices k*, one_hot,
    codebook_loss, commitment_loss (batch means), *_per_example (B,), entropy_loss,
    perplexity, restarted_codes). With `update_ema` (training) the EMA codebook takes
    one step. `keep` (B,): see the class docstring."""
    rewrites = self.kmeans_init or self.restart_after or self.dead_code_threshold
    if rewrites and not self.use_ema:
      raise ValueError('k-means initialisation and dead-code restarts rewrite the codebook '
                       'inside the train step: they need use_ema=True.')
    if self.simvq and self.use_ema:
      raise ValueError('SimVQ learns its code map W by gradient: it needs use_ema=False.')
    if self.restart_after and self.dead_code_threshold:
      raise ValueError('restart_after and dead_code_threshold are alternative dead-code '
                       'restarts: set one of them.')
    init = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')
    shape = (self.num_codes, self.space_dim)
    if self.use_ema:
      key = self.make_rng('params') if self.is_initializing() else None
      codebook_var = self.variable('vq_ema', 'codebook', lambda: init(key, shape, jnp.float32))
      cluster_var = self.variable('vq_ema', 'cluster_size',
                                  lambda: jnp.ones((self.num_codes,), jnp.float32))
      sum_var = self.variable('vq_ema', 'embed_sum', lambda: codebook_var.value)
      if self.kmeans_init:
        init_flag = self.variable('vq_ema', 'initialized', lambda: jnp.zeros((), jnp.int32))
      if self.restart_after:
        unused_var = self.variable('vq_ema', 'steps_unused',
                                   lambda: jnp.zeros((self.num_codes,), jnp.int32))
      codebook = codebook_var.value
    elif self.simvq:
      key = self.make_rng('params') if self.is_initializing() else None
      frozen = self.variable('vq_frozen', 'codebook', lambda: jax.random.normal(
          key, shape, jnp.float32) * self.space_dim ** -0.5)
      w = self.param('code_transform', nn.initializers.lecun_normal(),
                     (self.space_dim, self.space_dim), jnp.float32)
      codebook = simvq_codebook(frozen.value, w)
    else:
      codebook = self.param('codebook', init, shape, jnp.float32)

    z32 = z_e.astype(jnp.float32)
    if self.lookup_dim:
      z32 = nn.Dense(self.lookup_dim, name='proj_in', dtype=jnp.float32)(z32)
    if self.cosine:
      z32 = l2_normalize(z32)
    training = self.use_ema and update_ema and not self.is_initializing()
    flat_z = z32.reshape(-1, self.space_dim)

    if training and self.kmeans_init:
      codebook, cluster_var.value, sum_var.value = kmeans_once(
          init_flag.value, codebook, cluster_var.value, sum_var.value, flat_z,
          self.make_rng('vq'), self.kmeans_iters, self.kmeans_points)
      codebook_var.value = codebook
      init_flag.value = jnp.ones((), jnp.int32)

    lookup_book = l2_normalize(codebook) if self.cosine else codebook
    indices, _ = nearest_code(sg(z32), lookup_book)
    z_q, one_hot = lookup(indices, lookup_book)

    axes = per_example_axes(z32)
    # Weights (M,) of the latent vectors: 0 for those of examples with keep_b = 0.
    flat_w = None if keep is None else jnp.broadcast_to(
        keep.reshape((-1,) + (1,) * (z32.ndim - 2)), z32.shape[:-1]).reshape(-1)
    terms = dict(commitment_loss=commitment_loss(z32, z_q, self.beta),
                 commitment_loss_per_example=commitment_loss(z32, z_q, self.beta, axes))
    restarted = jnp.zeros((), jnp.float32)
    if self.use_ema:  # the codebook term is replaced by the EMA update
      terms.update(codebook_loss=jnp.zeros((), jnp.float32),
                   codebook_loss_per_example=jnp.zeros(z32.shape[:1], jnp.float32))
      if training:
        flat_oh = one_hot.reshape(-1, self.num_codes)
        if flat_w is not None:
          flat_oh = flat_oh * flat_w[:, None]
        cluster, embed_sum, codebook = ema_update(cluster_var.value, sum_var.value, flat_oh,
                                                  flat_z, self.ema_decay, self.ema_eps)
        if self.restart_after:
          codebook, unused_var.value, cluster, embed_sum, restarted = restart_and_reset(
              self.make_rng('vq'), codebook, cluster, embed_sum, unused_var.value,
              jnp.sum(flat_oh, 0), flat_z, self.restart_after)
        elif self.dead_code_threshold:
          codebook, cluster, embed_sum, restarted = expire_codes_below(
              self.make_rng('vq'), codebook, cluster, embed_sum, flat_z,
              self.dead_code_threshold)
        cluster_var.value, sum_var.value, codebook_var.value = cluster, embed_sum, codebook
    else:
      terms.update(codebook_loss=codebook_loss(z32, z_q),
                   codebook_loss_per_example=codebook_loss(z32, z_q, axes))
    if keep is not None:
      terms = mask_terms(terms, keep)
    if self.entropy_weight:
      _, dist = nearest_code(flat_z, lookup_book)   # with gradients to z_e (and e_k)
      terms['entropy_loss'] = entropy_loss(-dist[:, None, :] / self.entropy_temperature,
                                           self.entropy_weight, self.entropy_gamma, flat_w)
    else:
      terms['entropy_loss'] = jnp.zeros((), jnp.float32)

    if self.rotation_trick:
      z_q_st = rotation_trick(z32, z_q)
    else:
      z_q_st = straight_through(z32, z_q)
    if self.lookup_dim:
      z_q_st = nn.Dense(self.code_dim, name='proj_out', dtype=jnp.float32)(z_q_st)
    return dict(z_q=z_q_st.astype(z_e.dtype), indices=indices, one_hot=one_hot,
                perplexity=code_perplexity(one_hot), restarted_codes=restarted, **terms)

  def embed(self, indices):
    """z_q for given code indices (..., ) -> (..., code_dim), without the encoder."""
    if self.use_ema:
      codebook = self.get_variable('vq_ema', 'codebook')
    elif self.simvq:
      codebook = simvq_codebook(self.get_variable('vq_frozen', 'codebook'),
                                self.get_variable('params', 'code_transform'))
    else:
      codebook = self.get_variable('params', 'codebook')
    if self.cosine:
      codebook = l2_normalize(codebook)
    z_q, _ = lookup(indices, codebook)
    if self.lookup_dim:
      p = self.get_variable('params', 'proj_out')
      z_q = z_q @ p['kernel'] + p['bias']
    return z_q

  @property
  def codebook_size(self):
    return self.num_codes


def fsq_bound(z, levels):
  """FSQ bounding (Mentzer et al. 2023): f(z) = tanh(z + s) * h - o per channel with
  h = (L - 1)(1 + eps) / 2, o = 1/2 for even L (0 for odd), s = atanh(o / h), so
  that round(f(z)) takes exactly L values."""
  levels = jnp.asarray(levels, jnp.float32)
  half = (levels - 1.0) * (1.0 + 1e-3) / 2.0
  offset = jnp.where(jnp.mod(levels, 2.0) == 0.0, 0.5, 0.0)
  shift = jnp.arctanh(offset / half)
  return jnp.tanh(z + shift) * half - offset


def fsq_basis(levels):
  """The mixed-radix place values (1, L_1, L_1 L_2, ...) of the FSQ digits."""
  return jnp.asarray(np.cumprod((1,) + tuple(levels[:-1])), jnp.int32)


def fsq_round(z, levels):
  """One FSQ quantisation of z (..., len(levels)): zhat = round(f(z)) / (L // 2) with a
  straight-through gradient (f + sg[round(f) - f]), in [-1, 1]; and the code index,
  the mixed-radix number of the digits round(f(z)) + L // 2. Returns (zhat, indices)."""
  bounded = fsq_bound(z, levels)
  rounded = bounded + sg(jnp.round(bounded) - bounded)
  half_width = jnp.asarray([l // 2 for l in levels], jnp.float32)
  digits = (jnp.round(sg(bounded)) + half_width).astype(jnp.int32)
  indices = jnp.sum(digits * fsq_basis(levels), axis=-1)
  return rounded / half_width, indices


def fsq_digits_to_codes(indices, levels):
  """The normalised FSQ code zhat (..., len(levels)) of code indices (...)."""
  digits = (indices[..., None] // fsq_basis(levels)) % jnp.asarray(levels, jnp.int32)
  half_width = jnp.asarray([l // 2 for l in levels], jnp.float32)
  return (digits.astype(jnp.float32) - half_width) / half_width


class FSQ(nn.Module):
  """Finite scalar quantisation (Mentzer et al. 2023) behind the VQ interface.

  z_e (.., code_dim) -> Dense -> len(levels) channels -> f(z) (see `fsq_bound`)
  -> zhat = round(f(z)) with a straight-through gradient (f + sg[round(f) - f]),
  normalised to [-1, 1] by L // 2 -> Dense back to code_dim. The implicit codebook
  is the grid prod_i L_i; the index is the mixed-radix number of the digits
  (zhat_i + L_i // 2). No codebook or commitment loss (both returned as 0).
  """
  levels: tuple
  code_dim: int

  def setup(self):
    self.proj_in = nn.Dense(len(self.levels), dtype=jnp.float32)
    self.proj_out = nn.Dense(self.code_dim, dtype=jnp.float32)

  @property
  def codebook_size(self):
    return int(math.prod(self.levels))

  def __call__(self, z_e, update_ema: bool = False):
    del update_ema
    z = self.proj_in(z_e.astype(jnp.float32))
    zhat, indices = fsq_round(z, self.levels)
    one_hot = jax.nn.one_hot(indices, self.codebook_size, dtype=jnp.float32)
    return _codebook_free_output(self.proj_out(zhat), z_e, indices, one_hot)

  def embed(self, indices):
    return self.proj_out(fsq_digits_to_codes(indices, self.levels))


def _codebook_free_output(z_q, z_e, indices, one_hot):
  """The quantiser output of FSQ and residual FSQ: no codebook, so no codebook,
  commitment or entropy loss (zeros of the shapes the VQ objective sums)."""
  zero, zeros = jnp.zeros((), jnp.float32), jnp.zeros(z_e.shape[:1], jnp.float32)
  return dict(z_q=z_q.astype(z_e.dtype), indices=indices, one_hot=one_hot,
              codebook_loss=zero, commitment_loss=zero, codebook_loss_per_example=zeros,
              commitment_loss_per_example=zeros, entropy_loss=zero,
              perplexity=code_perplexity(one_hot), restarted_codes=zero)


def dropout_keep(rng, batch, num_stages):
  """Quantize dropout (SoundStream; `quantize_dropout` of vector-quantize-pytorch),
  per example: n_b ~ U{1..S} for each example b; stage s (0-based) is kept for b iff
  s < n_b. Returns keep (S, B) in {0, 1}, float32."""
  n = jax.random.randint(rng, (batch,), 1, num_stages + 1)
  return (jnp.arange(num_stages)[:, None] < n[None, :]).astype(jnp.float32)


class ResidualFSQ(nn.Module):
  """Residual FSQ (the ResidualFSQ of vector-quantize-pytorch): one projection
  z = W_in z_e to len(levels) channels, then S FSQ levels on the residual, level s
  on a scale c_s = (L - 1)^(-s) per channel:

    r_0 = z,  q_s = c_s fsq_round(r_s / c_s),  r_{s+1} = r_s - sg[q_s],
    z_q = W_out sum_s q_s

  (each level with FSQ's straight-through rounding). The levels have no parameters:
  they run under `jax.lax.scan` over s. Level 0 is plain FSQ. `indices` (..., S) are
  each level's FSQ index; `one_hot` (..., S, prod L). No codebook or commitment loss.
  With `quantize_dropout`, training keeps the first n_b ~ U{1..S} levels of each
  example (`dropout_keep`, from the 'vq' rng); evaluation keeps them all.
  """
  levels: tuple
  code_dim: int
  num_stages: int
  quantize_dropout: bool = False

  def setup(self):
    self.proj_in = nn.Dense(len(self.levels), dtype=jnp.float32)
    self.proj_out = nn.Dense(self.code_dim, dtype=jnp.float32)

  @property
  def codebook_size(self):
    return int(math.prod(self.levels))

  def scales(self):
    """c_s = (L - 1)^(-s), (S, len(levels))."""
    levels = np.asarray(self.levels, np.float64)
    return jnp.asarray(np.stack([(levels - 1.0) ** -s for s in range(self.num_stages)]),
                       jnp.float32)

  def __call__(self, z_e, update_ema: bool = False):
    z = self.proj_in(z_e.astype(jnp.float32))

    def level(residual, scale):
      zhat, idx = fsq_round(residual / scale, self.levels)
      q = zhat * scale
      return residual - sg(q), (q, idx)

    _, (qs, idx) = jax.lax.scan(level, z, self.scales())   # (S, ..., d), (S, ...)
    if self.quantize_dropout and update_ema:
      keep = dropout_keep(self.make_rng('vq'), z.shape[0], self.num_stages)
      qs = qs * keep.reshape(keep.shape + (1,) * (qs.ndim - 2))
    indices = jnp.moveaxis(idx, 0, -1)
    one_hot = jax.nn.one_hot(indices, self.codebook_size, dtype=jnp.float32)
    return _codebook_free_output(self.proj_out(jnp.sum(qs, axis=0)), z_e, indices, one_hot)

  def embed(self, indices):
    codes = fsq_digits_to_codes(jnp.moveaxis(indices, -1, 0), self.levels)   # (S, ..., d)
    scales = self.scales().reshape((self.num_stages,) + (1,) * (codes.ndim - 2) + (-1,))
    return self.proj_out(jnp.sum(codes * scales, axis=0))


class LFQ(nn.Module):
  """Lookup-free quantisation (LFQ, Yu et al. 2023, MAGVIT-v2) and, with `spherical`,
  binary spherical quantisation (BSQ, Zhao et al. 2024), behind the VQ interface.

  z = W_in z_e (d = `bits` channels; BSQ: u = z / ||z||), then per channel
    LFQ: q_i = sign(z_i) in {-1, 1};   BSQ: q_i = sign(u_i) / sqrt(d)
  (sign(0) = -1), decoder input W_out (z + sg[q - z]) (straight-through). The implicit
  codebook is {-s, s}^d (2^d codes); the index is the binary number
  k = sum_i [z_i > 0] 2^i (channel 0 the least significant bit, as FSQ's digits).
  Losses: commitment beta ||z - sg[q]||^2 (no codebook loss) and, with
  entropy_weight > 0, `entropy_loss` of q(k|z) = softmax_k(-||z - c_k||^2 / tau),
  which factorises over the channels: q_i(b|z_i) = softmax_b(-(z_i - b)^2 / tau),
  b in {-s, s}.
  """
  bits: int
  code_dim: int
  spherical: bool = False
  beta: float = 0.25
  entropy_weight: float = 0.0
  entropy_gamma: float = 1.0
  entropy_temperature: float = 0.01

  def setup(self):
    self.proj_in = nn.Dense(self.bits, dtype=jnp.float32)
    self.proj_out = nn.Dense(self.code_dim, dtype=jnp.float32)

  @property
  def codebook_size(self):
    return 2 ** self.bits

  @property
  def level(self):
    """s: the codes are {-s, s}^d (1 for LFQ, 1/sqrt(d) for BSQ)."""
    return 1.0 / math.sqrt(self.bits) if self.spherical else 1.0

  def _basis(self):
    return jnp.asarray([2 ** i for i in range(self.bits)], jnp.int32)

  def __call__(self, z_e, update_ema: bool = False):
    del update_ema
    z = self.proj_in(z_e.astype(jnp.float32))
    if self.spherical:
      z = l2_normalize(z)
    positive = sg(z) > 0
    q = jnp.where(positive, self.level, -self.level).astype(jnp.float32)
    indices = jnp.sum(positive.astype(jnp.int32) * self._basis(), axis=-1)
    one_hot = jax.nn.one_hot(indices, self.codebook_size, dtype=jnp.float32)
    axes = per_example_axes(z)
    zero, zeros = jnp.zeros((), jnp.float32), jnp.zeros(z_e.shape[:1], jnp.float32)
    terms = dict(codebook_loss=zero, codebook_loss_per_example=zeros,
                 commitment_loss=commitment_loss(z, q, self.beta),
                 commitment_loss_per_example=commitment_loss(z, q, self.beta, axes),
                 entropy_loss=zero)
    if self.entropy_weight:
      values = jnp.asarray([-self.level, self.level], jnp.float32)
      logits = -jnp.square(z.reshape(-1, self.bits, 1) - values) / self.entropy_temperature
      terms['entropy_loss'] = entropy_loss(logits, self.entropy_weight, self.entropy_gamma)
    z_q = self.proj_out(straight_through(z, q))
    return dict(z_q=z_q.astype(z_e.dtype), indices=indices, one_hot=one_hot,
                perplexity=code_perplexity(one_hot), restarted_codes=zero, **terms)

  def embed(self, indices):
    bits = (indices[..., None] // self._basis()) % 2
    return self.proj_out(jnp.where(bits > 0, self.level, -self.level).astype(jnp.float32))


class ResidualVQ(nn.Module):
  """Residual VQ (Zeghidour et al. 2021): S quantisers in sequence, stage s
  quantising the residual r_s = z_e - sum_{j<s} q_j (r_1 = z_e), z_q = sum_s q_s.

  Each stage is a `VectorQuantizer` (own codebook, losses on its own residual,
  optional EMA / k-means / restarts). The decoder receives
  z_e + sg[z_q - z_e] (straight-through); losses are summed over stages.
  `indices` has a trailing stage axis (..., S); `one_hot` is (..., S, K).

  With `quantize_dropout` (SoundStream), training keeps only the first
  n_b ~ U{1..S} stages of each example b (`dropout_keep`, from the 'vq' rng):
  z_q = sum_{s < n_b} q_s; a dropped stage adds nothing to that example's z_q,
  losses, EMA statistics or entropies. Evaluation keeps every stage.
  """
  num_stages: int
  num_codes: int
  code_dim: int
  vq_kwargs: tuple = ()     # (name, value) pairs passed to every VectorQuantizer
  quantize_dropout: bool = False

  def setup(self):
    self.stages = [VectorQuantizer(self.num_codes, self.code_dim, **dict(self.vq_kwargs))
                   for _ in range(self.num_stages)]

  @property
  def codebook_size(self):
    return self.num_codes

  def __call__(self, z_e, update_ema: bool = False):
    z32 = z_e.astype(jnp.float32)
    residual, total = z32, jnp.zeros_like(z32)
    outs = []
    dropout = self.quantize_dropout and update_ema
    keep = dropout_keep(self.make_rng('vq'), z32.shape[0], self.num_stages) if dropout else None
    for s, stage in enumerate(self.stages):  # a few stages, each with its own parameters
      keep_s = keep[s] if dropout else None
      out = stage(residual, update_ema=update_ema, keep=keep_s)
      q = sg(out['z_q'].astype(jnp.float32))
      total = total + (q if keep_s is None else keep_s.reshape((-1,) + (1,) * (q.ndim - 1)) * q)
      residual = residual - q
      outs.append(out)
    one_hot = jnp.stack([o['one_hot'] for o in outs], axis=-2)
    return dict(
        z_q=(rotation_trick(z32, total) if dict(self.vq_kwargs).get('rotation_trick')
             else straight_through(z32, total)).astype(z_e.dtype),
        indices=jnp.stack([o['indices'] for o in outs], axis=-1),
        one_hot=one_hot,
        perplexity=code_perplexity(one_hot),
        **{k: sum(o[k] for o in outs) for k in LOSS_TERMS + ('restarted_codes',)})

  def embed(self, indices):
    return sum(stage.embed(indices[..., s]) for s, stage in enumerate(self.stages))


QUANTIZERS = ('vq', 'fsq', 'rvq', 'rfsq', 'lfq', 'bsq')
LOSS_TERMS = ('codebook_loss', 'commitment_loss', 'codebook_loss_per_example',
              'commitment_loss_per_example', 'entropy_loss')


@dataclasses.dataclass(frozen=True)
class QuantizerSpec:
  """Every quantiser field, declared once: the `config.model` fields of the VQ families
  (`quantizer_config`) and the one argument the VQ models take."""
  quantizer: str = 'vq'              # 'vq' | 'fsq' | 'rvq' | 'rfsq' (residual FSQ) | 'lfq' | 'bsq'
  num_codes: int = 64                # K, codes per codebook ('vq', 'rvq')
  code_dim: int = 16                 # D of z_e and e_k
  beta: float = 0.25                 # commitment weight ('vq', 'rvq', 'lfq', 'bsq')
  use_ema: bool = True               # EMA codebook updates instead of the codebook loss
  ema_decay: float = 0.99            # EMA decay of N_k and m_k
  ema_eps: float = 1e-5              # Laplace smoothing of N_k
  fsq_levels: tuple = (8, 5, 5, 5)   # 'fsq', 'rfsq': levels L_i per channel (prod L_i codes)
  rvq_stages: int = 1                # 'rvq', 'rfsq': number of residual stages S
  kmeans_init: bool = False          # k-means codebook at the first training step (EMA)
  kmeans_iters: int = 10             # Lloyd iterations of that k-means
  kmeans_points: int = 16384         # encoder outputs it clusters at most (0 = all)
  restart_after: int = 0             # >0: re-seed codes unused for this many steps (EMA)
  cosine: bool = False               # l2-normalised z_e and e_k (cosine codes)
  lookup_dim: int = 0                # >0: quantise in a projected space of this size
  dead_code_threshold: float = 0.0   # >0: re-seed codes of EMA count N_k below it (EMA)
  rotation_trick: bool = False       # gradient sg[(|e|/|z_e|) R] z_e, not straight-through
  simvq: bool = False                # SimVQ codes e_k = sg[C_k] W, C frozen (use_ema=False)
  binary_bits: int = 8               # 'lfq', 'bsq': bits d per latent (2^d codes)
  entropy_weight: float = 0.0        # lambda of lambda (E[H(q(k|z))] - gamma H(E[q(k|z)]))
  entropy_gamma: float = 1.0         # gamma: weight of the batch (codebook) entropy
  entropy_temperature: float = 0.01  # tau of q(k|z) = softmax_k(-||z - c_k||^2 / tau)
  quantize_dropout: bool = False     # 'rvq', 'rfsq': train on stages 1..n_b, n_b ~ U{1..S}

  @classmethod
  def from_config(cls, m):
    """The spec of a `config.model` group (which holds every field of `quantizer_config`)."""
    return cls(**{f.name: (tuple(m[f.name]) if f.name == 'fsq_levels' else m[f.name])
                  for f in dataclasses.fields(cls)})

  @property
  def codebook_size(self):
    """Distinct codes per latent (per stage for residual VQ)."""
    if self.quantizer in ('fsq', 'rfsq'):
      return int(math.prod(self.fsq_levels))
    if self.quantizer in ('lfq', 'bsq'):
      return 2 ** self.binary_bits
    return self.num_codes

  @property
  def stages(self):
    return self.rvq_stages if self.quantizer in ('rvq', 'rfsq') else 1


def quantizer_config():
  """The quantiser fields of `config.model`, with their defaults (`QuantizerSpec`)."""
  return ml_collections.ConfigDict(dataclasses.asdict(QuantizerSpec()))


def build_quantizer(spec: QuantizerSpec):
  """'vq' -> VectorQuantizer, 'fsq' -> FSQ(fsq_levels), 'rvq' -> ResidualVQ(rvq_stages),
  'rfsq' -> ResidualFSQ(fsq_levels, rvq_stages), 'lfq' / 'bsq' -> LFQ(binary_bits)."""
  vq_kw = dict(beta=spec.beta, use_ema=spec.use_ema, ema_decay=spec.ema_decay,
               ema_eps=spec.ema_eps, kmeans_init=spec.kmeans_init,
               kmeans_iters=spec.kmeans_iters, kmeans_points=spec.kmeans_points,
               restart_after=spec.restart_after, cosine=spec.cosine,
               lookup_dim=spec.lookup_dim, dead_code_threshold=spec.dead_code_threshold,
               rotation_trick=spec.rotation_trick, simvq=spec.simvq,
               entropy_weight=spec.entropy_weight, entropy_gamma=spec.entropy_gamma,
               entropy_temperature=spec.entropy_temperature)
  if spec.quantizer == 'vq':
    return VectorQuantizer(num_codes=spec.num_codes, code_dim=spec.code_dim, **vq_kw)
  if spec.quantizer == 'fsq':
    return FSQ(levels=tuple(spec.fsq_levels), code_dim=spec.code_dim)
  if spec.quantizer == 'rvq':
    return ResidualVQ(num_stages=spec.rvq_stages, num_codes=spec.num_codes,
                      code_dim=spec.code_dim, vq_kwargs=tuple(sorted(vq_kw.items())),
                      quantize_dropout=spec.quantize_dropout)
  if spec.quantizer == 'rfsq':
    return ResidualFSQ(levels=tuple(spec.fsq_levels), code_dim=spec.code_dim,
                       num_stages=spec.rvq_stages, quantize_dropout=spec.quantize_dropout)
  if spec.quantizer in ('lfq', 'bsq'):
    return LFQ(bits=spec.binary_bits, code_dim=spec.code_dim,
               spherical=spec.quantizer == 'bsq', beta=spec.beta,
               entropy_weight=spec.entropy_weight, entropy_gamma=spec.entropy_gamma,
               entropy_temperature=spec.entropy_temperature)
  raise ValueError(f"quantizer='{spec.quantizer}': choose one of {QUANTIZERS}.")
