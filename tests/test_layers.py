"""ConvTranspose4x4: every implementation is flax.linen.ConvTranspose(f, (4, 4), strides=2).
UpsampleConv3x3: every implementation is a 2x nearest-neighbour upsampling then nn.Conv(f, (3, 3)).
Conv3x3: every implementation is nn.Conv(f, (3, 3))."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vaes.models.layers import Conv3x3, ConvTranspose4x4, UpsampleConv3x3


def _reference_and_candidate(implementation, shape=(2, 5, 6, 3), features=4):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  ref = nn.ConvTranspose(features, (4, 4), strides=(2, 2))
  new = ConvTranspose4x4(features, implementation)
  return x, ref, new


def _assert_same_module(ref, new, x, out_shape):
  """ref and new have the same parameter names, shapes and initial values (so checkpoints
  are interchangeable), and the same outputs and gradients at parameters with a non-zero
  bias (so that its handling is compared too)."""
  p_ref = ref.init(jax.random.PRNGKey(1), x)
  p_new = new.init(jax.random.PRNGKey(1), x)
  assert jax.tree.structure(p_ref) == jax.tree.structure(p_new)
  for a, b in zip(jax.tree.leaves(p_ref), jax.tree.leaves(p_new)):
    np.testing.assert_array_equal(a, b)
  p = jax.tree.map(lambda v: v + 0.1 * jnp.arange(v.size).reshape(v.shape) / v.size, p_ref)
  y_ref, y_new = ref.apply(p, x), new.apply(p, x)
  assert y_new.shape == y_ref.shape == out_shape
  np.testing.assert_allclose(y_new, y_ref, rtol=1e-5, atol=1e-5)

  w = jax.random.normal(jax.random.PRNGKey(2), y_ref.shape)
  loss = lambda m: lambda p, x: jnp.sum(w * m.apply(p, x) ** 2)
  g_ref = jax.jit(jax.grad(loss(ref), argnums=(0, 1)))(p, x)
  g_new = jax.jit(jax.grad(loss(new), argnums=(0, 1)))(p, x)
  for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_new)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('implementation', ['transpose', 'phases', 'subpixel'])
def test_same_parameters_values_and_gradients_as_flax_conv_transpose(implementation):
  x, ref, new = _reference_and_candidate(implementation)
  _assert_same_module(ref, new, x, (2, 10, 12, 4))


def test_each_output_phase_uses_its_two_taps_per_axis():
  """A single input pixel x[m, n] = 1 spreads to output rows 2m-1..2m+2 with kernel
  rows 3, 2, 1, 0 (y[2m] = w_2 x[m] + w_0 x[m-1], y[2m+1] = w_1 x[m] + w_3 x[m+1])."""
  x = jnp.zeros((1, 4, 4, 1)).at[0, 1, 2, 0].set(1.0)
  kernel = jnp.arange(16.0).reshape(4, 4, 1, 1)
  p = {'params': {'kernel': kernel, 'bias': jnp.zeros((1,))}}
  for implementation in ('transpose', 'phases', 'subpixel'):
    y = ConvTranspose4x4(1, implementation).apply(p, x)[0, :, :, 0]
    rows, cols = np.nonzero(np.asarray(y))
    assert set(rows) == {1, 2, 3, 4} and set(cols) == {3, 4, 5, 6}, implementation
    for r, kr in {1: 3, 2: 2, 3: 1, 4: 0}.items():      # m = 1: rows 2m-1 .. 2m+2
      for c, kc in {3: 3, 4: 2, 5: 1, 6: 0}.items():    # n = 2: columns 2n-1 .. 2n+2
        assert float(y[r, c]) == float(kernel[kr, kc, 0, 0]), (implementation, r, c)


def test_unknown_implementation_is_refused():
  x = jnp.zeros((1, 2, 2, 1))
  with pytest.raises(ValueError, match="implementation='fft'"):
    ConvTranspose4x4(1, 'fft').init(jax.random.PRNGKey(0), x)


def test_phase_and_subpixel_gradients_use_only_undilated_convolutions():
  x = jnp.ones((2, 4, 4, 3))
  for implementation, dilated in (('transpose', True), ('phases', False), ('subpixel', False)):
    m = ConvTranspose4x4(5, implementation)
    p = m.init(jax.random.PRNGKey(0), x)
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(m.apply(p, x) ** 2), argnums=(0, 1)))
    text = grad.lower(p, x).as_text()
    assert text.count('stablehlo.convolution') >= 3
    factors = re.findall(r'(?:lhs|rhs)_dilate = \[(\d+), (\d+)\]', text)
    assert any(int(f) > 1 for pair in factors for f in pair) == dilated, implementation


class _UpsampleThenConv(nn.Module):
  """The direct form, written independently of vaes: repeat rows and columns, nn.Conv."""
  features: int

  @nn.compact
  def __call__(self, x):
    up = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return nn.Conv(self.features, (3, 3))(up)


class _Named(nn.Module):
  """A layer under the name the nn.Conv it replaces has (as the models name it)."""
  features: int
  implementation: str
  layer: type = UpsampleConv3x3

  @nn.compact
  def __call__(self, x):
    return self.layer(self.features, self.implementation, name='Conv_0')(x)


class _FlaxConv(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    return nn.Conv(self.features, (3, 3))(x)


@pytest.mark.parametrize('channels', [1, 3])
@pytest.mark.parametrize('implementation', ['auto', 'lax', 'patches'])
def test_conv3x3_is_flax_conv(implementation, channels):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 6, channels))
  _assert_same_module(_FlaxConv(4), _Named(4, implementation, Conv3x3), x, (2, 5, 6, 4))


def test_conv3x3_convolves_one_channel_as_a_patch_matmul_and_more_with_lax():
  for channels, convolutions in ((1, 0), (3, 1)):
    x = jnp.ones((2, 5, 6, channels))
    m = Conv3x3(4)
    text = jax.jit(m.apply).lower(m.init(jax.random.PRNGKey(0), x), x).as_text()
    assert text.count('stablehlo.convolution') == convolutions, channels
  with pytest.raises(ValueError, match="implementation='fft'"):
    Conv3x3(4, 'fft').init(jax.random.PRNGKey(0), x)


@pytest.mark.parametrize('implementation', ['transpose', 'phases', 'subpixel'])
def test_upsample_conv_is_upsampling_then_flax_conv(implementation):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 6, 3))
  _assert_same_module(_UpsampleThenConv(4), _Named(4, implementation), x, (2, 10, 12, 4))


def test_upsample_conv_folds_the_taps_that_read_the_same_row():
  """One input pixel x[m, n] = 1 reaches output rows 2m-1 .. 2m+2: row 2m-1 through
  kernel row 2 only, rows 2m and 2m+1 through two kernel rows each (w_0 + w_1 and
  w_1 + w_2), row 2m+2 through kernel row 0; the same for columns."""
  x = jnp.zeros((1, 4, 4, 1)).at[0, 1, 2, 0].set(1.0)
  kernel = jnp.arange(9.0).reshape(3, 3, 1, 1) ** 2          # no two sums alike
  taps = {1: (2,), 2: (1, 2), 3: (0, 1), 4: (0,)}              # output row -> kernel rows
  ctaps = {3: (2,), 4: (1, 2), 5: (0, 1), 6: (0,)}             # n = 2: columns 3 .. 6
  p = {'params': {'kernel': kernel, 'bias': jnp.zeros((1,))}}
  for implementation in ('transpose', 'phases', 'subpixel'):
    y = UpsampleConv3x3(1, implementation).apply(p, x)[0, :, :, 0]
    rows, cols = np.nonzero(np.asarray(y))
    assert set(rows) == set(taps) and set(cols) == set(ctaps), implementation
    for r, kr in taps.items():
      for c, kc in ctaps.items():
        expected = sum(float(kernel[i, j, 0, 0]) for i in kr for j in kc)
        assert float(y[r, c]) == expected, (implementation, r, c)
