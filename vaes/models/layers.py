"""Layers shared by the convolutional models.

`ConvTranspose4x4` is the 4x4 stride-2 'SAME' transposed convolution of the VQ-VAE
decoders (`flax.linen.ConvTranspose(features, (4, 4), strides=(2, 2))`: the same
parameters, initialisation and function) with three interchangeable implementations:

* 'transpose': `lax.conv_transpose`, a convolution of the zero-dilated input
  (`lhs_dilation`), what Flax does. Its weight gradient is a window-dilated
  convolution, which backends handle worst (jax-ml/jax#23783, #31662).
* 'phases': the four output phases y[2m+a, 2n+b] as four stride-1 2x2
  convolutions of the undilated input, interleaved: the exact multiply-adds, and
  every forward and backward convolution is a plain one.
* 'subpixel': one stride-1 3x3 convolution with 4x the output channels (each
  phase's 2x2 taps placed in a 3x3 window, zeros elsewhere) and a depth-to-space:
  one kernel instead of four, 9/4 the multiply-adds.

Derivation (1-D, kernel taps w_0..w_3; the 2-D kernel is the outer product of the
row and column cases): with Flax/lax semantics, y[2m] = w_0 x[m-1] + w_2 x[m] and
y[2m+1] = w_1 x[m] + w_3 x[m+1]. tests/test_layers.py checks all three against
`flax.linen.ConvTranspose`, values and gradients.

`UpsampleConv3x3` is the decoder step of the 'pool' VQ-VAE (vector-quantize-pytorch's
example): a 2x nearest-neighbour upsampling followed by a 3x3 'SAME' convolution
(`nn.Conv(features, (3, 3))`'s parameters, initialisation and function). Output phase a
reads the upsampled rows 2m+a-1, 2m+a, 2m+a+1, that is x[m-1], x[m], x[m] (a = 0) or
x[m], x[m], x[m+1] (a = 1): a 2x2 convolution of x with the taps summed where they
read the same row, (w_0, w_1 + w_2) or (w_0 + w_1, w_2) (`_fold_taps`). So the same
three implementations apply, with those 2x2 kernels: 'transpose' here names the direct
form (upsample, then convolve); 'phases' does 4/9 of its multiply-adds and never builds
the upsampled map; 'subpixel' is one 3x3 convolution of x with 4x the output channels.
tests/test_layers.py checks both against the direct form, values and gradients.

`Conv3x3` is `nn.Conv(features, (3, 3))` ('SAME'), computed on an input of one channel
(a grey image: the 'pool' encoder's first layer) as one matmul of its 3x3 patches,
(B, H, W, 9) @ (9, features): on XLA:CPU that layer's weight gradient, a convolution
whose contraction runs over the batch and the pixels, takes 4x the patch matmul's time
(256 x 28 x 28 -> 16 channels, forward and weight gradient: 11 against 50 ms, loaded
2-core CPU). With more input channels the patches, stacked on the minor axis, cost more
than they save (4 channels: 2x slower), so those are `lax` convolutions as Flax's.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

IMPLEMENTATIONS = ('transpose', 'phases', 'subpixel')
_DIMS = ('NHWC', 'HWIO', 'NHWC')
# Output phase a (0 or 1) uses kernel rows (columns) a and a + 2: kernel[a::2, b::2]
# (strided slices: neither the step nor its gradient has a gather or scatter).
# Phase a's input window, as padding: x[m-1], x[m] for a = 0; x[m], x[m+1] for a = 1.
_WINDOW = ((1, 0), (0, 1))


def _interleave(phases):
  """phases[a][b]: (B, H, W, C) -> (B, 2H, 2W, C) with y[:, 2m+a, 2n+b] = phases[a][b][:, m, n]."""
  y = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)   # B, H, 2, W, 2, C
  b, h, _, w, _, c = y.shape
  return y.reshape(b, 2 * h, 2 * w, c)


def _phase_convs(x, phase_kernel):
  """The four output phases as four 2x2 convolutions of x, interleaved; phase_kernel(a, b)
  is phase (a, b)'s (2, 2, in, out) kernel."""
  return _interleave([[
      lax.conv_general_dilated(x, phase_kernel(a, b), (1, 1), (_WINDOW[a], _WINDOW[b]),
                               dimension_numbers=_DIMS)
      for b in (0, 1)] for a in (0, 1)])


def _subpixel_conv(x, phase_kernel):
  """The four output phases as one 3x3 convolution with 4x the output channels."""
  # Phase a's two taps sit at window rows (0, 1) for a = 0 and (1, 2) for a = 1.
  place = ((0, 1), (1, 0))
  k3 = jnp.stack([jnp.stack([
      jnp.pad(phase_kernel(a, b), (place[a], place[b], (0, 0), (0, 0)))
      for b in (0, 1)], axis=-2) for a in (0, 1)], axis=-3)   # 3, 3, I, 2(a), 2(b), O
  k3 = k3.reshape(k3.shape[:3] + (-1,))
  y = lax.conv_general_dilated(x, k3, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_DIMS)
  b, h, w, _ = y.shape
  y = y.reshape(b, h, w, 2, 2, -1).transpose(0, 1, 3, 2, 4, 5)         # B, H, 2, W, 2, O
  return y.reshape(b, 2 * h, 2 * w, -1)


def phase_conv_transpose(x, kernel):
  """The transposed convolution's four phases as four 2x2 convolutions (exact
  multiply-adds)."""
  return _phase_convs(x, lambda a, b: kernel[a::2, b::2])


def subpixel_conv_transpose(x, kernel):
  """The transposed convolution's four phases as one 3x3 convolution."""
  return _subpixel_conv(x, lambda a, b: kernel[a::2, b::2])


def _fold_taps(kernel, a, axis):
  """Output phase a's two taps along `axis` of a 3x3 kernel applied after a 2x
  nearest-neighbour upsampling: (w_0, w_1 + w_2) for a = 0, (w_0 + w_1, w_2) for a = 1."""
  k0, k1, k2 = jnp.split(kernel, 3, axis=axis)
  return jnp.concatenate([k0, k1 + k2] if a == 0 else [k0 + k1, k2], axis=axis)


def upsample_conv3x3(x, kernel, implementation='phases'):
  """conv3x3_SAME(nearest_upsample_2x(x), kernel) (module docstring)."""
  if implementation == 'transpose':
    return conv3x3(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2), kernel)
  fold = lambda a, b: _fold_taps(_fold_taps(kernel, a, 0), b, 1)
  return _phase_convs(x, fold) if implementation == 'phases' else _subpixel_conv(x, fold)


def conv3x3(x, kernel):
  """conv3x3_SAME(x, kernel) by `lax`, as Flax's nn.Conv computes it."""
  return lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_DIMS)


def patch_conv3x3(x, kernel):
  """conv3x3_SAME(x, kernel) as one matmul of x's 3x3 patches, (B, H, W, 9C) @ (9C, O);
  a patch lists its taps row by row, as `kernel.reshape(9 * C, O)` does."""
  b, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  patches = jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)],
                            axis=-1)
  return patches @ kernel.reshape(9 * c, -1)


def _conv_params(module, x, size, choices=IMPLEMENTATIONS):
  """A layer's checked implementation and its 'kernel' (size, size, in, features) and
  'bias' (features,) parameters, float32 and initialised as Flax's convolutions are,
  returned with x, all cast to the compute dtype."""
  if module.implementation not in choices:
    raise ValueError(f'implementation={module.implementation!r}: choose one of {choices}.')
  kernel = module.param('kernel', nn.initializers.lecun_normal(),
                        (size, size, x.shape[-1], module.features), jnp.float32)
  bias = module.param('bias', nn.initializers.zeros_init(), (module.features,), jnp.float32)
  return tuple(v.astype(module.dtype) for v in (x, kernel, bias))


class ConvTranspose4x4(nn.Module):
  """`nn.ConvTranspose(features, (4, 4), strides=(2, 2))` with a choice of
  implementation (module docstring). Parameters 'kernel' (4, 4, in, features) and
  'bias' (features,), float32, initialised as Flax does; compute in `dtype`."""
  features: int
  implementation: str = 'transpose'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x, kernel, bias = _conv_params(self, x, 4)
    if self.implementation == 'transpose':
      y = lax.conv_transpose(x, kernel, (2, 2), 'SAME', dimension_numbers=_DIMS)
    elif self.implementation == 'phases':
      y = phase_conv_transpose(x, kernel)
    else:
      y = subpixel_conv_transpose(x, kernel)
    return y + bias


class UpsampleConv3x3(nn.Module):
  """A 2x nearest-neighbour upsampling, then `nn.Conv(features, (3, 3))` ('SAME'): the
  same parameters ('kernel' (3, 3, in, features), 'bias'), initialisation and function,
  computed as `implementation` says (module docstring); compute in `dtype`."""
  features: int
  implementation: str = 'phases'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x, kernel, bias = _conv_params(self, x, 3)
    return upsample_conv3x3(x, kernel, self.implementation) + bias


class Conv3x3(nn.Module):
  """`nn.Conv(features, (3, 3))` ('SAME'): the same parameters, initialisation and
  function; an input of one channel is convolved as a patch matmul (module docstring),
  any other by `lax`. `implementation` 'auto' (that rule), 'lax' or 'patches' (the tests
  compare them)."""
  features: int
  implementation: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x, kernel, bias = _conv_params(self, x, 3, ('auto', 'lax', 'patches'))
    patches = self.implementation == 'patches' or (
        self.implementation == 'auto' and x.shape[-1] == 1)
    return (patch_conv3x3(x, kernel) if patches else conv3x3(x, kernel)) + bias
