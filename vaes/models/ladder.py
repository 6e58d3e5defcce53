"""Hierarchical and Ladder VAEs (Sonderby et al. 2016), Flax Linen.

L stochastic layers z_1..z_L of diagonal Gaussians. The generative model is
top-down and the same in both inference modes:

    p(z_L) = N(0, I),   p(z_l | z_l+1) = N(mu_p,l(z_l+1), s_p,l^2(z_l+1)),   p(x | z_1).

Inference (`inference`):

* 'hierarchical' -- bottom-up, q(z | x) = q(z_1 | x) prod_{l>1} q(z_l | z_l-1):
      d_l = up_l(z_l-1)  (z_0 = x),   q(z_l | z_l-1) = N(mu_q,l(d_l), s_q,l^2(d_l)),
  each z_l sampled before d_l+1 is computed.
* 'ladder' -- a deterministic bottom-up pass
      d_l = up_l(d_l-1)  (d_0 = x),   (mu_hat_l, s_hat_l) = head_l(d_l),
  then a top-down pass that shares p(z_l | z_l+1) with the generative model:
      q(z_L | x) = N(mu_hat_L, s_hat_L^2),
      q(z_l | z_l+1, x) = N(mu_q, s_q^2) with the precision-weighted merge
      s_q^2 = 1 / (s_hat_l^-2 + s_p,l^-2),  mu_q = (mu_hat_l s_hat_l^-2 + mu_p,l s_p,l^-2) s_q^2.
  With `share_top_down=False` the merge takes (mu_t,l, s_t,l) from a top-down path of
  its own (`q_down_l`, `q_head_l`: the same shapes as `down_l`, `prior_head_l`, other
  parameters) fed the same z_l+1 sample, and p(z_l | z_l+1) serves the KL only: the
  authors' run_models.py with -ladder_share_params False, the setting of their README.
  With `up_from_mean` the bottom-up pass goes through the means, d_l = up_l(mu_hat_l-1)
  for l > 1 (their -only_mu_up True). `head_batch_norm` batch-normalises the linear maps
  of every Gaussian head (their `denselayer` with -batch_norm True).

Both modes use the same modules (`up_l`, `head_l`, `down_l`, `prior_head_l`,
the decoder); only the input of `up_l` and the use of `head_l` differ.

The top-down path is Markov by default, t_l = down_l(z_l+1) and
p(z_l | z_l+1) = prior_head_l(t_l), as in the paper. With `top_down_skip` it carries
its deterministic features down (skip connections in the generative path, as in
BIVA and the conv Ladder VAEs that followed the paper):

    t_l = down_l([z_l+1, t_l+1])  (t_L absent),   p(z_l | z_>l) = prior_head_l(t_l),
    p(x | z_1, t_1),

so every conditional sees all the layers above it. `residual` adds an identity path
around every layer of a block after its first (the one that may change the shape).

Blocks are MLPs (the paper's) or convolutions: with 'conv' every z_l is a
feature map at the resolution of d_l (the bottom-up block l downsamples by
`strides[l-1]`, the top-down block upsamples back).

The module returns distribution parameters and samples only; log-probabilities,
KLs and the ELBO live in `vaes.families.ladder`. Noise is an argument (a list of
N(0, I) arrays, one per layer, from `draw_noise`) so that callers draw it outside
compiled loops and tests can fix it. Parameters are float32; activations use
`dtype`; every Gaussian parameter is returned in float32.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vaes.distributions import gaussian_reparam, precision_weighted_merge

ACTIVATIONS = {
    'relu': nn.relu,
    'leaky_relu': nn.leaky_relu,
    'elu': nn.elu,
    'swish': nn.swish,
    'tanh': jnp.tanh,
    'linear': lambda h: h,
}
INFERENCE_MODES = ('hierarchical', 'ladder')
BLOCKS = ('mlp', 'conv')
LIKELIHOODS = ('bernoulli', 'logistic', 'gaussian')
# Variances are softplus(.) + MIN_VAR: positive, and the precisions in the merge stay finite.
MIN_VAR = 1e-4


class Block(nn.Module):
  """`depth` x [Dense | Conv 3x3 -> optional BatchNorm -> activation].

  With 'conv', the first layer has stride `stride` (a ConvTranspose when
  `upsample`). With `residual`, layers i >= 1 compute h + layer(h). BatchNorm uses
  batch statistics when `train` and the running averages in the 'batch_stats'
  collection otherwise.
  """
  features: int
  depth: int
  block: str
  stride: int
  upsample: bool
  batch_norm: bool
  activation: str
  residual: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h, train: bool):
    act = ACTIVATIONS[self.activation]
    # BatchNorm subtracts the batch mean, so a bias before it would get no gradient (only
    # rounding noise, which Adam would amplify): BatchNorm's own offset replaces it.
    bias = not self.batch_norm
    for i in range(self.depth):
      if self.block == 'mlp':
        out = nn.Dense(self.features, use_bias=bias, dtype=self.dtype)(h)
      elif i == 0 and self.upsample:
        out = nn.ConvTranspose(self.features, (3, 3), strides=(self.stride,) * 2,
                               padding='SAME', use_bias=bias, dtype=self.dtype)(h)
      else:
        s = self.stride if i == 0 else 1
        out = nn.Conv(self.features, (3, 3), strides=(s, s), padding='SAME', use_bias=bias,
                      dtype=self.dtype)(h)
      if self.batch_norm:
        out = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                           dtype=self.dtype)(out)
      out = act(out)
      h = h + out if self.residual and i > 0 else out
    return h


class GaussianHead(nn.Module):
  """h -> (mean, logvar) of a diagonal Gaussian, float32; var = softplus(.) + MIN_VAR.

  Two separate linear maps named 'mean' and 'var' (a 3x3 conv each for 'conv'). With
  `batch_norm` each is batch-normalised ('mean_bn', 'var_bn': batch statistics when
  `train`, running averages otherwise) before the softplus, as the authors' code does
  with -batch_norm True.
  """
  features: int
  block: str
  batch_norm: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h, train: bool = False):
    outs = []
    for name in ('mean', 'var'):
      if self.block == 'mlp':
        out = nn.Dense(self.features, use_bias=not self.batch_norm, dtype=self.dtype,
                       name=name)(h)
      else:
        out = nn.Conv(self.features, (3, 3), padding='SAME', use_bias=not self.batch_norm,
                      dtype=self.dtype, name=name)(h)
      if self.batch_norm:
        out = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                           dtype=self.dtype, name=f'{name}_bn')(out)
      outs.append(out)
    mean, pre = outs
    var = jax.nn.softplus(pre.astype(jnp.float32)) + MIN_VAR
    return mean.astype(jnp.float32), jnp.log(var)


def latent_shapes(model, x_shape):
  """Per-example shapes of z_1..z_L: (n_l,) for 'mlp', (H_l, W_l, n_l) for 'conv'."""
  if model.block == 'mlp':
    return [(n,) for n in model.latent_sizes]
  h, w = x_shape[0], x_shape[1]
  shapes = []
  for n, s in zip(model.latent_sizes, model.strides):
    h, w = h // s, w // s
    shapes.append((h, w, n))
  return shapes


def draw_noise(model, rng, batch_shape, x_shape):
  """One N(0, I) float32 array per layer, shaped batch_shape + latent shape of z_l."""
  keys = jax.random.split(rng, len(model.latent_sizes))
  return [jax.random.normal(k, tuple(batch_shape) + s, jnp.float32)
          for k, s in zip(keys, latent_shapes(model, x_shape))]


class LadderVAE(nn.Module):
  """Generative p(x | z_1) prod_l p(z_l | z_l+1) p(z_L); inference by `inference`.

  Fields: `latent_sizes` n_1..n_L (units, or channels for 'conv'),
  `hidden_sizes` h_1..h_L (width of d_l and of the top-down block into z_l),
  `block_depth` layers per block, `strides` (conv only, per layer),
  `x_shape` (H, W, C) and `likelihood` of x: 'bernoulli' (logits),
  'logistic' (discretised logistic: mean and log-scale), 'gaussian'
  (mean and logvar; continuous data and tests); `top_down_skip` and
  `residual` as in the module docstring; `share_top_down` (ladder only): the merge
  uses p(z_l | z_l+1) itself, or a top-down path of its own; `up_from_mean` (ladder
  only): d_l = up_l(mu_hat_l-1) instead of up_l(d_l-1); `head_batch_norm`: batch norm in
  every Gaussian head (`GaussianHead`). No field but `dtype` has a
  default here: their one home is `vaes.families.ladder.model_config()`.
  """
  latent_sizes: Sequence[int]
  hidden_sizes: Sequence[int]
  x_shape: Sequence[int]
  inference: str
  block: str
  block_depth: int
  strides: Sequence[int]
  batch_norm: bool
  activation: str
  likelihood: str
  top_down_skip: bool
  residual: bool
  share_top_down: bool
  up_from_mean: bool
  head_batch_norm: bool
  dtype: Any = jnp.float32

  def setup(self):
    num = len(self.latent_sizes)
    strides = tuple(self.strides) or (1,) * num

    def block(features, stride=1, upsample=False):
      return Block(features, self.block_depth, self.block, stride, upsample, self.batch_norm,
                   self.activation, self.residual, self.dtype)

    # Bottom-up: d_l = up_l(input), (mu, s) = head_l(d_l); in 'ladder' these are (mu_hat, s_hat).
    self.up = [block(self.hidden_sizes[l], strides[l]) for l in range(num)]
    def head(l):
      return GaussianHead(self.latent_sizes[l], self.block, self.head_batch_norm, self.dtype)

    def down(l):   # the top-down block into z_l (0-based l), from z_l+1
      return block(self.hidden_sizes[l], strides[l + 1], upsample=True)

    self.head = [head(l) for l in range(num)]
    # Top-down: p(z_l | z_l+1) = prior_head_l(down_l(z_l+1)), l = 1..L-1 (list index l-1).
    self.down = [down(l) for l in range(num - 1)]
    self.prior_head = [head(l) for l in range(num - 1)]
    if self.inference == 'ladder' and not self.share_top_down:
      # The merge's own top-down path: (mu_t, s_t) = q_head_l(q_down_l(z_l+1)).
      self.q_down = [down(l) for l in range(num - 1)]
      self.q_head = [head(l) for l in range(num - 1)]
    # p(x | z_1).
    self.decoder_block = block(self.hidden_sizes[0], strides[0], upsample=True)
    num_x_params = {'bernoulli': 1, 'logistic': 2, 'gaussian': 2}[self.likelihood]
    channels = self.x_shape[-1]
    if self.block == 'mlp':
      size = 1
      for d in self.x_shape:
        size *= d
      self.decoder_out = nn.Dense(num_x_params * size, dtype=self.dtype)
    else:
      self.decoder_out = nn.Conv(num_x_params * channels, (3, 3), padding='SAME',
                                 dtype=self.dtype)

  # -- generative pieces -------------------------------------------------------

  def _top_down_input(self, z, t):
    """z_l, or [z_l, t_l] (concatenated features) with `top_down_skip` below the top."""
    z = z.astype(self.dtype)
    if not self.top_down_skip or t is None:
      return z
    return jnp.concatenate([z, t.astype(self.dtype)], axis=-1)

  def top_down(self, l, z_above, t_above=None, train: bool = False):
    """(t_l, (mu_p, logvar_p) of p(z_l | z_l+1), or of p(z_l | z_>l) with `top_down_skip`);
    l is 1-based, 1 <= l < L; t_above is t_l+1 (None for l + 1 = L, and ignored when
    the path is Markov)."""
    t = self.down[l - 1](self._top_down_input(z_above, t_above), train)
    return t, self.prior_head[l - 1](t, train)

  def merge_top_down(self, l, z_above, t_above, p, train: bool = False):
    """(t, (mu_t, logvar_t)): what the ladder merge combines with head_l's (mu_hat, s_hat)
    for layer l (1-based): p = (mu_p, logvar_p) itself with its t_above (shared), else
    the merge's own path, q_head_l(q_down_l(z_l+1)), carrying its own t."""
    if self.share_top_down:
      return t_above, p
    t = self.q_down[l - 1](self._top_down_input(z_above, t_above), train)
    return t, self.q_head[l - 1](t, train)

  def decode(self, z1, t1=None, train: bool = False):
    """Parameters of p(x | z_1) (p(x | z_1, t_1) with `top_down_skip`), float32, each
    shaped (B,) + x_shape.

    'bernoulli': {'logits'}; 'logistic': {'mean', 'log_scale'} on [-1, 1];
    'gaussian': {'mean', 'logvar'}.
    """
    h = self.decoder_block(self._top_down_input(z1, t1), train)
    out = self.decoder_out(h).astype(jnp.float32)
    batch = z1.shape[0]
    if self.block == 'mlp':
      out = out.reshape((batch, -1) + tuple(self.x_shape))
    else:
      out = out.reshape(out.shape[:-1] + (-1, self.x_shape[-1]))
      out = jnp.moveaxis(out, -2, 1)
    if self.likelihood == 'bernoulli':
      return {'logits': out[:, 0]}
    if self.likelihood == 'logistic':
      return {'mean': out[:, 0], 'log_scale': out[:, 1]}
    return {'mean': out[:, 0], 'logvar': jnp.log(jax.nn.softplus(out[:, 1]) + MIN_VAR)}

  def _bottom_up_input(self, x):
    x = x.astype(self.dtype)
    return x.reshape((x.shape[0], -1)) if self.block == 'mlp' else x

  def _ladder_bottom_up(self, h, train):
    """[(mu_hat_l, logvar_hat_l) for l = 1..L]: d_l = up_l(d_l-1), or up_l(mu_hat_l-1)
    with `up_from_mean` (l > 1); d_0 = x."""
    bottom_up = []
    for l in range(len(self.latent_sizes)):
      if self.up_from_mean and bottom_up:
        h = bottom_up[-1][0].astype(self.dtype)
      h = self.up[l](h, train)
      bottom_up.append(self.head[l](h, train))
    return bottom_up

  # -- inference + generation ----------------------------------------------------

  def __call__(self, x, noise, train: bool = False):
    """Samples z ~ q(z | x) with the given noise and evaluates every conditional.

    Returns {'layers': [per layer l = 1..L: {'z', 'q_mean', 'q_logvar',
    'p_mean', 'p_logvar'}], 'x': decode(z_1)}. For l = L the prior entries are
    those of N(0, I). All values float32.
    """
    num = len(self.latent_sizes)
    h = self._bottom_up_input(x)
    q = [None] * num
    z = [None] * num
    if self.inference == 'hierarchical':
      for l in range(num):
        q[l] = self.head[l](self.up[l](h, train), train)
        z[l] = gaussian_reparam(*q[l], noise[l])
        h = z[l].astype(self.dtype)
    else:
      bottom_up = self._ladder_bottom_up(h, train)
      q[-1] = bottom_up[-1]
      z[-1] = gaussian_reparam(*q[-1], noise[-1])
    p = [None] * num
    p[-1] = (jnp.zeros_like(z[-1]), jnp.zeros_like(z[-1]))
    t = t_q = None
    for l in range(num - 2, -1, -1):          # top-down: p(z_l | z_l+1) or p(z_l | z_>l)
      t, p[l] = self.top_down(l + 1, z[l + 1], t, train)
      if self.inference == 'ladder':
        t_q, merged = self.merge_top_down(l + 1, z[l + 1], t_q, p[l], train)
        q[l] = precision_weighted_merge(*bottom_up[l], *merged)
        z[l] = gaussian_reparam(*q[l], noise[l])
    layers = [{'z': z[l], 'q_mean': q[l][0], 'q_logvar': q[l][1],
               'p_mean': p[l][0], 'p_logvar': p[l][1]} for l in range(num)]
    return {'layers': layers, 'x': self.decode(z[0], t, train)}

  def sample(self, noise, train: bool = False):
    """Ancestral sample from the top-down prior: z_L = eps_L, z_l ~ p(z_l | z_>l).

    Returns decode(z_1, t_1).
    """
    z, t = noise[-1], None
    for l in range(len(self.latent_sizes) - 2, -1, -1):
      t, p = self.top_down(l + 1, z, t, train)
      z = gaussian_reparam(*p, noise[l])
    return self.decode(z, t, train)

  def sample_given_top(self, x, noise_q, noise_p, keep: int, train: bool = False):
    """The top `keep` layers from the posterior of x, the rest from the prior (the
    figure of VDVAE, Child 2021, that shows what each layer holds):

        z_l ~ q(z_l | .) with noise_q for l > L - keep (as `__call__(x, noise_q)`),
        z_l ~ p(z_l | z_>l) with noise_p for l <= L - keep (as `sample(noise_p)`).

    keep = 0 is `sample(noise_p)`; keep = L gives the reconstruction of `__call__`. A
    temperature T (the prior's standard deviations times T) is noise_p times T. In
    'hierarchical' mode q(z_l | z_l-1) needs the layers below, so they are drawn from q
    (noise_q) on the way up and then replaced by prior draws. Returns decode(z_1, t_1).
    """
    num = len(self.latent_sizes)
    if keep == 0:
      return self.sample(noise_p, train)
    h = self._bottom_up_input(x)
    z = [None] * num
    if self.inference == 'hierarchical':
      for l in range(num):
        z[l] = gaussian_reparam(*self.head[l](self.up[l](h, train), train), noise_q[l])
        h = z[l].astype(self.dtype)
    else:
      bottom_up = self._ladder_bottom_up(h, train)
      z[-1] = gaussian_reparam(*bottom_up[-1], noise_q[-1])
    t = t_q = None
    for l in range(num - 2, -1, -1):          # top-down, 0-based l: layer l + 1
      t, p = self.top_down(l + 1, z[l + 1], t, train)
      if l < num - keep:
        z[l] = gaussian_reparam(*p, noise_p[l])
      elif self.inference == 'ladder':
        t_q, merged = self.merge_top_down(l + 1, z[l + 1], t_q, p, train)
        z[l] = gaussian_reparam(*precision_weighted_merge(*bottom_up[l], *merged), noise_q[l])
    return self.decode(z[0], t, train)
