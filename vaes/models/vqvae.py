"""VQ-VAE (van den Oord et al. 2017): encoder -> z_e(x), quantise to z_q, decode.

Two architectures (`arch`):
  'residual'  the paper's and Sonnet's example: `num_downsamples` 4x4 stride-2
              convolutions, a 3x3 convolution, a stack of residual blocks (ReLU, 3x3 conv,
              ReLU, 1x1 conv), a 1x1 projection to D; the decoder mirrors it with 4x4
              stride-2 transposed convolutions.
  'pool'      vector-quantize-pytorch's `SimpleVQAutoEncoder` (examples/autoencoder.py):
              per downsampling a 3x3 convolution and a 2x2 max-pool, GELU between them
              (hidden // 2 channels, the last one D); the decoder: per upsampling a 2x
              nearest-neighbour upsampling and a 3x3 convolution, GELU between them
              (`UpsampleConv3x3`; on the CPU four 2x2 convolutions of the small map, 4/9
              of the multiply-adds). With hidden 32, D 32 and 2 downsamplings it is the
              library's example, layer for layer (9,569 weights beside the codebook).
NHWC throughout; compute in `dtype` (bf16 or f32), parameters in float32, quantisation
in float32.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vaes.models.layers import Conv3x3, ConvTranspose4x4, UpsampleConv3x3
from vaes.quantizers import QuantizerSpec, build_quantizer


class ResidualStack(nn.Module):
  hidden: int
  res_hidden: int
  num_blocks: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h):
    for _ in range(self.num_blocks):
      r = nn.relu(h)
      r = nn.Conv(self.res_hidden, (3, 3), dtype=self.dtype)(r)
      r = nn.relu(r)
      r = nn.Conv(self.hidden, (1, 1), dtype=self.dtype)(r)
      h = h + r
    return nn.relu(h)


class Encoder(nn.Module):
  hidden: int
  res_hidden: int
  num_res_blocks: int
  num_downsamples: int
  code_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = x.astype(self.dtype)
    for i in range(self.num_downsamples):
      width = self.hidden // 2 if i < self.num_downsamples - 1 else self.hidden
      h = nn.relu(nn.Conv(width, (4, 4), strides=(2, 2), dtype=self.dtype)(h))
    h = nn.Conv(self.hidden, (3, 3), dtype=self.dtype)(h)
    h = ResidualStack(self.hidden, self.res_hidden, self.num_res_blocks, self.dtype)(h)
    return nn.Conv(self.code_dim, (1, 1), dtype=self.dtype)(h)  # z_e(x)


class Decoder(nn.Module):
  hidden: int
  res_hidden: int
  num_res_blocks: int
  num_upsamples: int
  out_channels: int
  dtype: Any
  upsample: str   # ConvTranspose4x4 implementation (vaes/models/layers.py)

  @nn.compact
  def __call__(self, z_q):
    h = nn.Conv(self.hidden, (3, 3), dtype=self.dtype)(z_q.astype(self.dtype))
    h = ResidualStack(self.hidden, self.res_hidden, self.num_res_blocks, self.dtype)(h)
    for i in range(self.num_upsamples):
      last = i == self.num_upsamples - 1
      width = self.out_channels if last else self.hidden // 2
      h = ConvTranspose4x4(width, self.upsample, self.dtype, name=f'ConvTranspose_{i}')(h)
      if not last:
        h = nn.relu(h)
    if self.num_upsamples == 0:
      h = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype)(h)
    return h.astype(jnp.float32)


def max_pool_2x2(h):
  """2x2 max-pooling, stride 2: nn.max_pool's value, as the maximum of the four strided
  slices, whose backward XLA:CPU runs far faster than nn.max_pool's reduce-window (9x, fwd
  + bwd of 256x28x28x16) and than a reshape-and-max's (the Fashion-MNIST encoder's fwd +
  bwd, quiet 2-core CPU: 46 against 58 ms). At ties the gradient is split among the
  maxima (each binary maximum halves it) instead of going to the first one: another
  subgradient."""
  return jnp.maximum(jnp.maximum(h[:, 0::2, 0::2], h[:, 0::2, 1::2]),
                     jnp.maximum(h[:, 1::2, 0::2], h[:, 1::2, 1::2]))


class PoolEncoder(nn.Module):
  hidden: int
  num_downsamples: int
  code_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = x.astype(self.dtype)
    for i in range(self.num_downsamples):
      last = i == self.num_downsamples - 1
      # nn.Conv's function and parameters (a grey image's layer as a patch matmul)
      h = Conv3x3(self.code_dim if last else self.hidden // 2, dtype=self.dtype,
                  name=f'Conv_{i}')(h)
      h = max_pool_2x2(h)
      if not last:
        h = nn.gelu(h, approximate=False)
    if self.num_downsamples == 0:
      h = nn.Conv(self.code_dim, (3, 3), dtype=self.dtype)(h)
    return h  # z_e(x)


class UpsampleDecoder(nn.Module):
  hidden: int
  num_upsamples: int
  out_channels: int
  upsample: str   # UpsampleConv3x3's implementation (model.upsample): same function, speed only
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z_q):
    h = z_q.astype(self.dtype)
    for i in range(self.num_upsamples):
      last = i == self.num_upsamples - 1
      # 2x nearest-neighbour upsampling and a 3x3 convolution; named as the nn.Conv it
      # computes, so that checkpoints of either implementation load in the other.
      h = UpsampleConv3x3(self.out_channels if last else self.hidden // 2, self.upsample,
                          self.dtype, name=f'Conv_{i}')(h)
      if not last:
        h = nn.gelu(h, approximate=False)
    if self.num_upsamples == 0:
      h = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype)(h)
    return h.astype(jnp.float32)


class VQVAE(nn.Module):
  """x -> z_e(x) -> z_q = e_{k*} -> decoder output (likelihood parameters).

  `likelihood` 'gaussian' or 'clipped_gaussian' outputs the mean of x (MSE loss);
  'logistic' outputs (mean, log_scale) per channel of a discretised logistic, for bits/dim.
  """
  image_channels: int
  # No field but dtype has a default here: their one home is
  # vaes.families.vqvae.model_config() (the quantiser's: vaes.quantizers.QuantizerSpec).
  hidden: int
  res_hidden: int
  num_res_blocks: int
  num_downsamples: int
  vq: QuantizerSpec   # the quantiser: kind, K, D, beta, EMA, ...
  likelihood: str
  upsample: str   # ConvTranspose4x4 / UpsampleConv3x3 implementation: speed only
  arch: str       # 'residual' | 'pool' (the module docstring)
  dtype: Any = jnp.float32

  def setup(self):
    out = self.image_channels * (2 if self.likelihood == 'logistic' else 1)
    if self.arch == 'pool':
      self.encoder = PoolEncoder(self.hidden, self.num_downsamples, self.vq.code_dim,
                                 self.dtype)
      self.decoder = UpsampleDecoder(self.hidden, self.num_downsamples, out, self.upsample,
                                     self.dtype)
    else:
      self.encoder = Encoder(self.hidden, self.res_hidden, self.num_res_blocks,
                             self.num_downsamples, self.vq.code_dim, self.dtype)
      self.decoder = Decoder(self.hidden, self.res_hidden, self.num_res_blocks,
                             self.num_downsamples, out, self.dtype, self.upsample)
    self.quantizer = build_quantizer(self.vq)

  def __call__(self, x, train: bool = False):
    z_e = self.encoder(x)
    vq = self.quantizer(z_e, update_ema=train)
    out = self.decoder(vq['z_q'])
    vq['z_e'] = z_e
    vq['decoder_out'] = out
    return vq

  def decode_indices(self, indices):
    """Decoder output for a grid of code indices (B, h, w) (or (B, h, w, S) for RVQ)."""
    return self.decoder(self.quantizer.embed(indices).astype(self.dtype))
