"""Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with
PixelCNN Decoders") over a grid of code indices, optionally conditioned on a
spatial map (the codes of the level above, VQ-VAE-2).

Autoregressive order: raster scan, p(z) = prod_{i,j} p(z_ij | z_<ij, c).
Causality comes from masked convolutions (kernel * mask):

* vertical stack, k x k kernel with centre row c: mask 'A' (first layer) keeps
  rows < c, mask 'B' keeps rows <= c. Then the vertical features at row i
  depend on input rows < i only, so they feed the horizontal stack at the same
  position through a 1x1 convolution without a shift.
* horizontal stack, 1 x k kernel with centre column c: mask 'A' keeps columns
  < c, mask 'B' keeps columns <= c.

Each gated layer (eq. 2 of the paper, with conditioning, eq. 5):
  y = tanh(W_f * x + V_f c) . sigmoid(W_g * x + V_g c),
the horizontal stack adds a 1x1 projection of y_v before its gate and has a
residual 1x1 connection after it (fig. 2). The first layer has no residual.
Compute in `dtype`; logits are returned in float32.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def causal_mask(kh, kw, mask_type, stack):
  """(kh, kw) 0/1 mask of a vertical ('v') or horizontal ('h') masked kernel."""
  m = np.zeros((kh, kw), np.float32)
  c_row, c_col = kh // 2, kw // 2
  if stack == 'v':
    m[:c_row + (mask_type == 'B')] = 1.0
  else:
    m[c_row, :c_col + (mask_type == 'B')] = 1.0
  return m


class MaskedConv(nn.Module):
  """Convolution with SAME padding whose kernel is multiplied by a causal mask."""
  features: int
  kernel_size: tuple
  mask_type: str
  stack: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (kh, kw, x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    mask = jnp.asarray(causal_mask(kh, kw, self.mask_type, self.stack))[:, :, None, None]
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), (kernel * mask).astype(self.dtype), (1, 1), 'SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y + bias.astype(self.dtype)


def _gate(x):
  a, b = jnp.split(x, 2, axis=-1)
  return jnp.tanh(a) * jax.nn.sigmoid(b)


class GatedLayer(nn.Module):
  channels: int
  kernel_size: int
  first: bool
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, v, h, cond, deterministic=True):
    k = self.kernel_size
    mtype = 'A' if self.first else 'B'
    v_pre = MaskedConv(2 * self.channels, (k, k), mtype, 'v', self.dtype, name='v_conv')(v)
    h_pre = MaskedConv(2 * self.channels, (1, k), mtype, 'h', self.dtype, name='h_conv')(h)
    h_pre = h_pre + nn.Conv(2 * self.channels, (1, 1), dtype=self.dtype, name='v_to_h')(v_pre)
    if cond is not None:
      v_pre = v_pre + nn.Conv(2 * self.channels, (1, 1), dtype=self.dtype, name='cond_v')(cond)
      h_pre = h_pre + nn.Conv(2 * self.channels, (1, 1), dtype=self.dtype, name='cond_h')(cond)
    v_out = _gate(v_pre)
    h_out = nn.Conv(self.channels, (1, 1), dtype=self.dtype, name='h_out')(_gate(h_pre))
    h_out = nn.Dropout(self.dropout)(h_out, deterministic=deterministic)
    if not self.first:
      h_out = h_out + h
    return v_out, h_out


class GatedPixelCNN(nn.Module):
  """Logits (B, H, W, K) of p(z_ij | z_<ij, c) for code indices z (B, H, W)."""
  num_codes: int
  channels: int
  num_layers: int
  kernel_size: int
  embed_dim: int
  out_hidden: int
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, codes, cond=None, embedded=None, deterministic=True):
    """`embedded` (B, H, W, embed_dim), if given, replaces the code embedding (tests
    differentiate through it to check causality)."""
    embed = nn.Embed(self.num_codes, self.embed_dim, name='embed')
    x = embed(codes) if embedded is None else embedded
    x = x.astype(self.dtype)
    if cond is not None:
      cond = cond.astype(self.dtype)
    v, h = x, x
    for i in range(self.num_layers):  # layers (not time steps): each has its own weights
      v, h = GatedLayer(self.channels, self.kernel_size, first=i == 0, dropout=self.dropout,
                        dtype=self.dtype, name=f'layer_{i}')(v, h, cond, deterministic)
    out = nn.Conv(self.out_hidden, (1, 1), dtype=self.dtype, name='out_hidden')(nn.relu(h))
    logits = nn.Conv(self.num_codes, (1, 1), dtype=self.dtype, name='logits')(nn.relu(out))
    return logits.astype(jnp.float32)


class CodePrior(nn.Module):
  """A prior per level of codes, level 0 = bottom (finest) ... L-1 = top:

    p(z_0, ..., z_{L-1}) = p(z_{L-1}) prod_{l < L-1} p(z_l | z_{l+1}),

  each factor a GatedPixelCNN; level l < L-1 is conditioned on an embedding of
  the codes z_{l+1}, nearest-upsampled to its grid and refined by a 3x3 conv.
  `__call__` returns the list of logits per level (teacher forcing).
  """
  num_codes: tuple          # K per level
  grids: tuple              # (h, w) per level
  # The fields below (but dtype) have no default here: their one home is
  # vaes.families.vq_prior.model_config().
  channels: int
  num_layers: int
  kernel_size: int
  embed_dim: int
  out_hidden: int
  cond_channels: int
  dropout: float
  dtype: Any = jnp.float32

  def setup(self):
    self.nets = [GatedPixelCNN(k, self.channels, self.num_layers, self.kernel_size,
                               self.embed_dim, self.out_hidden, self.dropout, self.dtype)
                 for k in self.num_codes]
    self.cond_embed = [nn.Embed(self.num_codes[l + 1], self.cond_channels)
                       for l in range(len(self.num_codes) - 1)]
    self.cond_conv = [nn.Conv(self.cond_channels, (3, 3), dtype=self.dtype)
                      for _ in range(len(self.num_codes) - 1)]

  def condition(self, level, codes_above):
    """Spatial conditioning map of level `level` from the codes of level + 1."""
    if level == len(self.num_codes) - 1:
      return None
    (h, w), (ha, wa) = self.grids[level], self.grids[level + 1]
    c = self.cond_embed[level](codes_above).astype(self.dtype)
    c = jnp.repeat(jnp.repeat(c, h // ha, axis=1), w // wa, axis=2)
    return nn.relu(self.cond_conv[level](c))

  def level_logits(self, level, codes, codes_above=None, deterministic=True):
    return self.nets[level](codes, self.condition(level, codes_above),
                            deterministic=deterministic)

  def __call__(self, codes, deterministic=True):
    """codes: list of (B, h_l, w_l) int arrays -> list of (B, h_l, w_l, K_l) logits.
    With deterministic=False, dropout (rate `dropout`) draws from the 'dropout' rng."""
    n = len(self.num_codes)
    return [self.level_logits(l, codes[l], codes[l + 1] if l + 1 < n else None,
                              deterministic)
            for l in range(n)]


def sample_level(apply_logits, rng, batch_size, grid, temperature=1.0):
  """Ancestral sampling of one level in raster order under `jax.lax.fori_loop`:

    z_ij ~ softmax(logits_ij(z_<ij) / temperature),  key of position p = fold_in(rng, p).

  `apply_logits(codes (B, h, w)) -> (B, h, w, K)` runs the whole network (the
  masks make position (i, j) see only z_<ij), so one compiled body serves every
  position. Returns (B, h, w) int32 codes.
  """
  h, w = grid

  def body(p, codes):
    i, j = p // w, p % w
    logits = apply_logits(codes)
    logits_ij = jax.lax.dynamic_slice(logits, (0, i, j, 0),
                                      (batch_size, 1, 1, logits.shape[-1]))[:, 0, 0]
    draw = jax.random.categorical(jax.random.fold_in(rng, p),
                                  logits_ij / temperature).astype(jnp.int32)
    return jax.lax.dynamic_update_slice(codes, draw[:, None, None], (0, i, j))

  return jax.lax.fori_loop(0, h * w, body, jnp.zeros((batch_size, h, w), jnp.int32))
