"""The codebook-free scalar quantisers, behind the interface of vaes/quantizers.py
(`__call__(z_e, update_ema) -> dict(z_q, indices, one_hot, the loss terms, perplexity,
restarted_codes)`, `embed(indices) -> z_q`): each channel of a projection of z_e is
rounded on its own grid, and the implicit codebook is the product of the grids.

  FSQ          finite scalar quantisation (Mentzer et al. 2023): L_i levels per channel
  ResidualFSQ  FSQ on the residual, S levels of shrinking scale (with quantize dropout)
  LFQ          lookup-free quantisation (Yu et al. 2023) and, with `spherical`, binary
               spherical quantisation (BSQ, Zhao et al. 2024): one bit per channel

They share the VQ objective's terms (vaes/codebook.py): LFQ / BSQ the commitment loss,
the straight-through gradient and the entropy loss; FSQ and residual FSQ have no loss.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vaes.codebook import (code_perplexity, commitment_loss, dropout_keep, entropy_loss,
                           l2_normalize, per_example_axes, sg, straight_through)


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


class ResidualFSQ(FSQ):
  """Residual FSQ (the ResidualFSQ of vector-quantize-pytorch), with FSQ's projections
  and implicit codebook: one projection z = W_in z_e to len(levels) channels, then S FSQ
  levels on the residual, level s on a scale c_s = (L - 1)^(-s) per channel:

    r_0 = z,  q_s = c_s fsq_round(r_s / c_s),  r_{s+1} = r_s - sg[q_s],
    z_q = W_out sum_s q_s

  (each level with FSQ's straight-through rounding). The levels have no parameters:
  they run under `jax.lax.scan` over s. Level 0 is plain FSQ. `indices` (..., S) are
  each level's FSQ index; `one_hot` (..., S, prod L). No codebook or commitment loss.
  With `quantize_dropout`, training keeps the first n_b ~ U{1..S} levels of each
  example (`dropout_keep`, from the 'vq' rng); evaluation keeps them all.
  """
  num_stages: int
  quantize_dropout: bool = False

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
