"""VQ-VAE-2 (Razavi et al. 2019): a hierarchy of quantised latent maps, the top
level conditioning the ones below.

Level 0 (bottom) has stride 2^bottom_downsamples, each level above one more
stride-2 step (for 256x256 inputs and bottom_downsamples = 2: bottom 64x64,
top 32x32, the paper's sizes). With L levels, l = 0..L-1:

  encoder, bottom-up:  h_0 = Enc_0(x),  h_l = Enc_l(h_{l-1})
  quantise, top-down:  z_e,{L-1} = W_{L-1} h_{L-1}
                       z_e,l = W_l [h_l, D_l(z_q,{l+1})]     (D_l: res stack, 2x up)
                       z_q,l = e^{(l)}_{k*}   (own codebook per level)
  decoder:             x_hat = Dec([z_q,0, Up_1(z_q,1), ..., Up_{L-1}(z_q,{L-1})])

The blocks are those of the VQ-VAE (vaes/models/vqvae.py), as in the paper's
figure 2a. Loss per level as in the
VQ-VAE; quantisation in float32 with one-hot matmul lookups; compute in `dtype`.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vaes.models.layers import ConvTranspose4x4
from vaes.models.vqvae import Decoder, Encoder
from vaes.quantizers import LOSS_TERMS, QuantizerSpec, build_quantizer


class Upsample(nn.Module):
  """`times` 4x4 stride-2 transposed convolutions (ReLU between them)."""
  features: int
  times: int
  dtype: Any
  upsample: str   # ConvTranspose4x4 implementation

  @nn.compact
  def __call__(self, z):
    h = z.astype(self.dtype)
    for i in range(self.times):
      h = ConvTranspose4x4(self.features, self.upsample, self.dtype, name=f'ConvTranspose_{i}')(h)
      if i < self.times - 1:
        h = nn.relu(h)
    return h


class VQVAE2(nn.Module):
  image_channels: int
  # No field but dtype has a default here: their one home is
  # vaes.families.vqvae2.model_config() (the quantiser's: vaes.quantizers.QuantizerSpec).
  hidden: int
  res_hidden: int
  num_res_blocks: int
  num_levels: int
  bottom_downsamples: int
  vq: QuantizerSpec   # one quantiser of this kind per level
  likelihood: str
  upsample: str   # ConvTranspose4x4 implementation: same function, speed only
  dtype: Any = jnp.float32

  def setup(self):
    n = self.num_levels
    self.encoders = [
        Encoder(self.hidden, self.res_hidden, self.num_res_blocks,
                self.bottom_downsamples if l == 0 else 1, self.hidden, self.dtype)
        for l in range(n)]
    self.pre_quant = [nn.Conv(self.vq.code_dim, (1, 1), dtype=self.dtype) for _ in range(n)]
    self.quantizers = [build_quantizer(self.vq) for _ in range(n)]
    self.top_down = [Decoder(self.hidden, self.res_hidden, self.num_res_blocks, 1,
                             self.vq.code_dim, self.dtype, self.upsample) for _ in range(n - 1)]
    self.upsamplers = [Upsample(self.vq.code_dim, l, self.dtype, self.upsample)
                       for l in range(1, n)]
    out = self.image_channels * (2 if self.likelihood == 'logistic' else 1)
    self.decoder = Decoder(self.hidden, self.res_hidden, self.num_res_blocks,
                           self.bottom_downsamples, out, self.dtype, self.upsample)

  def _decode(self, z_qs):
    feats = [z_qs[0].astype(self.dtype)] + [
        up(z).astype(self.dtype) for up, z in zip(self.upsamplers, z_qs[1:])]
    return self.decoder(jnp.concatenate(feats, axis=-1))

  def __call__(self, x, train: bool = False):
    n = self.num_levels
    hs, h = [], x
    for enc in self.encoders:  # levels, bottom-up
      h = enc(h)
      hs.append(h)
    levels = [None] * n
    for l in reversed(range(n)):  # levels, top-down
      if l == n - 1:
        inp = hs[l]
      else:
        cond = self.top_down[l](levels[l + 1]['z_q']).astype(self.dtype)
        inp = jnp.concatenate([hs[l], cond], axis=-1)
      z_e = self.pre_quant[l](inp)
      out = self.quantizers[l](z_e, update_ema=train)
      out['z_e'] = z_e
      levels[l] = out
    return dict(
        levels=levels,
        decoder_out=self._decode([o['z_q'] for o in levels]),
        **{k: sum(o[k] for o in levels) for k in LOSS_TERMS + ('restarted_codes',)})

  def decode_indices(self, codes):
    """Decoder output for code grids [k*_0 (B, h_0, w_0), ..., k*_{L-1}]."""
    return self._decode([q.embed(c) for q, c in zip(self.quantizers, codes)])
