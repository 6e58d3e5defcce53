"""Vector quantisation as plain functions: the VQ objective, the nearest code and its
lookup, code statistics and codebook maintenance. The Flax quantisers are built from
them (vaes/quantizers.py: VQ and residual VQ; vaes/scalar_quantizers.py: FSQ, residual
FSQ, LFQ / BSQ), and vaes.quantizers re-exports every name here.

Notation of van den Oord et al. (2017): encoder output z_e(x) in R^D, codebook
e_k (k = 1..K), nearest code k* = argmin_k ||z_e - e_k||^2, quantised z_q = e_{k*}.

Losses (sg = jax.lax.stop_gradient), as means over latent vectors and dimensions:
  codebook   = ||sg[z_e] - e_{k*}||^2      (dropped when the codebook is EMA-updated)
  commitment = beta ||z_e - sg[e_{k*}]||^2
Straight-through: the decoder receives z_e + sg[z_q - z_e], whose value is z_q and
whose gradient w.r.t. z_e is the identity.

Distances and argmin are always computed in float32 (half precision ties and
overflows are the most common source of dead codes and NaNs). On GPUs and TPUs the
lookup is `one_hot(k*) @ codebook`, a matmul, whose backward is a matmul too, instead
of a gather whose backward is a collision-heavy scatter-add (much slower on GPUs), and
the per-code counts and sums of the EMA and k-means are one-hot matmuls too. On the CPU
(`use_gathers`) they are a gather and segment sums: XLA:CPU's one-hot matmuls cost
8-30x more there (Fashion-MNIST's 12,544 x 256 x 32, quiet 2-core CPU: lookup 1.3 vs
0.16 ms, code sums 2.8 vs 0.09 ms).

The three equations above are `codebook_loss`, `commitment_loss` and
`straight_through`, used by every quantiser (`rotation_trick` replaces the last
one on request). Code statistics: `code_perplexity`, `entropy_terms` / `entropy_loss`.
Codebook maintenance: `ema_update`, `kmeans` / `kmeans_once`, dead-code restarts
(`restart_dead_codes` / `restart_and_reset`, `expire_codes_below`), SimVQ codes
(`simvq_codebook`). Residual quantisers: `dropout_keep`, `mask_terms`.
"""

import jax
import jax.numpy as jnp

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
  """k* = argmin_k ||z - e_k||^2 for z (..., D) and codebook (K, D), in float32; at ties
  the first such k, as argmin. Found as the smallest k whose distance is the minimum:
  two plain reductions, which XLA:CPU runs 3x faster than argmin's paired one
  (12,544 x 256: 2.7 against 8.6 ms with the distances). A row without a finite
  minimum (NaN) gets k = K - 1.

  Returns (indices (...,), squared distances (..., K)).
  """
  z = z.astype(jnp.float32)
  codebook = codebook.astype(jnp.float32)
  d = (jnp.sum(z * z, axis=-1, keepdims=True)
       - 2.0 * jnp.einsum('...d,kd->...k', z, codebook, precision=jax.lax.Precision.HIGHEST)
       + jnp.sum(codebook * codebook, axis=-1))
  k = jax.lax.broadcasted_iota(jnp.int32, d.shape, d.ndim - 1)
  first = jnp.min(jnp.where(d == jnp.min(d, axis=-1, keepdims=True), k, d.shape[-1]), axis=-1)
  return jnp.minimum(first, d.shape[-1] - 1), d


def use_gathers():
  """Whether lookups and per-code sums are gathers and segment sums (the CPU) rather
  than one-hot matmuls (GPU, TPU): the module docstring."""
  return jax.default_backend() == 'cpu'


def _gathers(gathers):
  """An explicit choice of form, else the backend's (`use_gathers`)."""
  return use_gathers() if gathers is None else gathers


def lookup(indices, codebook, gathers=None):
  """z_q = e_{k*} and one_hot(k*): z_q as one_hot(k*) @ codebook (matmul forward and
  backward), or with `gathers` (default `use_gathers()`) as a gather (its backward, for a
  gradient codebook, a scatter-add): the same values and gradients."""
  one_hot = jax.nn.one_hot(indices, codebook.shape[0], dtype=jnp.float32)
  codebook = codebook.astype(jnp.float32)
  if _gathers(gathers):
    return jnp.take(codebook, indices, axis=0), one_hot
  return jnp.einsum('...k,kd->...d', one_hot, codebook,
                    precision=jax.lax.Precision.HIGHEST), one_hot


def code_sums(indices, z, num_codes, weights=None, gathers=None):
  """Per code k: n_k = sum_{i: k*_i = k} w_i and s_k = sum_{i: k*_i = k} w_i z_i, for
  indices (M,), z (M, D) and weights w (M,) (default 1), in float32, with no gradient; as
  one-hot matmuls or, with `gathers` (default `use_gathers()`), segment sums.
  Returns (counts (K,), sums (K, D))."""
  z = sg(z.astype(jnp.float32))
  w = jnp.ones(indices.shape, jnp.float32) if weights is None else sg(weights).astype(
      jnp.float32)
  if _gathers(gathers):
    return (jax.ops.segment_sum(w, indices, num_codes),
            jax.ops.segment_sum(z * w[:, None], indices, num_codes))
  one_hot = jax.nn.one_hot(indices, num_codes, dtype=jnp.float32) * w[:, None]
  return jnp.sum(one_hot, axis=0), jnp.einsum('mk,md->kd', one_hot, z,
                                              precision=jax.lax.Precision.HIGHEST)


def code_perplexity(one_hot, weights=None):
  """exp(entropy of the average one-hot code usage) over all leading axes."""
  flat = one_hot.reshape(-1, one_hot.shape[-1])
  if weights is not None:
    w = weights.reshape(-1, 1).astype(jnp.float32)
    probs = jnp.sum(flat * w, 0) / jnp.maximum(jnp.sum(w), 1.0)
  else:
    probs = jnp.mean(flat, 0)
  return jnp.exp(-jnp.sum(probs * jnp.log(probs + 1e-10)))


def ema_update(cluster_size, embed_sum, counts, sums, decay, eps):
  """One EMA codebook step (van den Oord et al. 2017, appendix, eqs. 6-8).

    N_k <- decay N_k + (1 - decay) n_k,          n_k = #{i : k*_i = k}
    m_k <- decay m_k + (1 - decay) sum_{i: k*_i = k} z_e,i
    N'_k = (N_k + eps) / (n + K eps) * n,          n = sum_k N_k  (Laplace smoothing)
    e_k  = m_k / N'_k

  `counts` n_k (K,) and `sums` (K, D) are `code_sums` over the *global* batch: under jit
  with a sharded batch they are global reductions on any number of devices.
  Returns (cluster_size, embed_sum, codebook).
  """
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
    return code_sums(idx, z, num_codes)

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
  dead = cluster_size < threshold

  def reseed(operand):
    codebook, cluster_size, embed_sum = operand
    num_codes, m = codebook.shape[0], z.shape[0]
    if m >= num_codes:
      draw = jax.random.choice(rng, m, (num_codes,), replace=False)
    else:
      draw = jax.random.randint(rng, (num_codes,), 0, m)
    fresh = jnp.take(sg(z.astype(jnp.float32)), draw, axis=0)
    codebook = jnp.where(dead[:, None], fresh, codebook)
    cluster_size = jnp.where(dead, jnp.float32(threshold), cluster_size)
    embed_sum = jnp.where(dead[:, None], threshold * codebook, embed_sum)
    return codebook, cluster_size, embed_sum

  # The draw (a shuffle of the batch's rows) only runs at steps with a dead code.
  codebook, cluster_size, embed_sum = jax.lax.cond(
      jnp.any(dead), reseed, lambda operand: operand, (codebook, cluster_size, embed_sum))
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


def dropout_keep(rng, batch, num_stages):
  """Quantize dropout (SoundStream; `quantize_dropout` of vector-quantize-pytorch),
  per example: n_b ~ U{1..S} for each example b; stage s (0-based) is kept for b iff
  s < n_b. Returns keep (S, B) in {0, 1}, float32."""
  n = jax.random.randint(rng, (batch,), 1, num_stages + 1)
  return (jnp.arange(num_stages)[:, None] < n[None, :]).astype(jnp.float32)
