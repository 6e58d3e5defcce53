"""VRAE: a sequential VAE with one latent z_t per frame (Flax Linen).

Generative model and posterior (Fabius & van Amersfoort 2015, with the per-step latents
and prior p(z_t | z_<t) of Chung et al. 2015):

    p(x_1:T, z_1:T) = prod_t p(z_t | z_<t) p(x_t | z_<=t, x_<t)
    q(z_1:T | x_1:T) = prod_t q(z_t | z_<t, x_<=t)
    ELBO = sum_t E_q[log p(x_t | z_<=t, x_<t)] - sum_t KL(q(z_t | z_<t, x_<=t) || p(z_t | z_<t))

with three GRUs whose states summarise exactly the conditioning sets:

    prior      h^p_t = GRU_p(h^p_{t-1}, z_{t-1})           p(z_t | z_<t)       = N(mlp_p(h^p_t))
    posterior  h^q_t = GRU_q(h^q_{t-1}, [x_t, z_{t-1}])     q(z_t | z_<t, x_<=t) = N(mlp_q([h^q_t, h^p_t]))
    decoder    h^d_t = GRU_d(h^d_{t-1}, [z_t, x_{t-1}])     p(x_t | z_<=t, x_<t) = mlp_x([h^d_t, z_t])

`posterior` selects what q(z_t | .) sees of the sequence:
  'filter' (default): q(z_t | z_<t, x_<=t) as above.
  'smooth': q(z_t | z_<t, x_1:T) = N(mlp_q([h^q_t, h^p_t, b_t])) with a backward GRU over
     the frames, b_t = GRU_b(b_{t+1}, x_t), b_{T+1} = 0 (the structured inference of
     Krishnan et al. 2017 and Fraccaro et al. 2016): z_t can carry what the future frames
     need. Every bound stays valid (any q is); the generative model is unchanged.

`prior` selects the variant, all sharing this code:
  'latent' (default): p(z_t | z_<t) as above.
  'vrnn': the VRNN prior p(z_t | z_<t, x_<t): GRU_p also reads x_{t-1} (Chung et al. 2015).
  'global': the original VRAE (Fabius & van Amersfoort 2014): one z for the whole sequence,
     q(z | x_1:T) = N(mlp_q(h^q_T)) with h^q_t = GRU_q(h^q_{t-1}, x_t), p(z) = N(0, I),
     p(x_t | z, x_<t) with h^d_0 = tanh(W z) and h^d_t = GRU_d(h^d_{t-1}, [z, x_{t-1}]).
  'srnn': the SRNN of Fraccaro et al. 2016, a state-space layer on a deterministic RNN
     (no GRU over z: the prior's state is z_{t-1} and d_t):
       d_t = GRU_d(d_{t-1}, x_{t-1})  (x_0 = 0, d_0 = 0: d_t summarises x_<t)
       p(z_t | z_{t-1}, d_t) = N(mean_p, logvar_p) = N(mlp_p([z_{t-1}, d_t]))
       p(x_t | z_t, d_t) = mlp_x([d_t, z_t])
       q(z_t | z_{t-1}, a_t) = N(mean_q, logvar_q), (r_t, logvar_q) = mlp_q([z_{t-1}, a_t]),
       mean_q = mean_p + r_t with `q_residual` (the paper's "Resq": q learns a correction to
       the prior's mean), mean_q = r_t without;
     'smooth': a_t = GRU_a(a_{t+1}, [d_t, x_t]), a_{T+1} = 0, a backward GRU over the frames
       and the forward states: q(z_t | z_{t-1}, x_1:T) (the paper's smoothing posterior);
     'filter': a_t = [d_t, x_t]: q(z_t | z_{t-1}, x_<=t) (the paper's filtering one).
     d_1:T is deterministic, so it is computed first, in its own forward scan; then a_T:1
     ('smooth') in one reverse scan; then the z_t in one forward scan that reads both. The
     KL per step is between the two Gaussians in closed form given the sampled z_{t-1}.

Likelihoods p(x_t | .): 'bernoulli' (x in {0,1}^P, logits), 'gaussian' (diagonal, mean and
log-variance), 'categorical' (x an int token in [0, K), logits).

Frame-autoregressive emission (`made_hidden` = H_m > 0, Bernoulli only): the P dimensions of
a frame are no longer independent given the states, but a MADE (Germain et al. 2015) over
them, in the order d = 1..P (for piano rolls: low to high keys), conditioned on the
decoder's output o_t = mlp_x(.) = [b_t, c_t] (P + H_m values):

    p(x_t | .) = prod_d Bernoulli(x_td; sigmoid(l_td)),
    l_t = b_t + relu(c_t + x_t (W_in * M_in)) (W_out * M_out) + x_t (W_x * M_x)

M_in[j, k] = [m_k >= j], M_out[k, d] = [d > m_k] with hidden degrees m_k = 1 + (k mod
(P - 1)), and M_x[j, d] = [j < d] (direct connections): l_td depends on x_t<d alone, so
log p(x_t | .) is exact in one pass (the role NADE plays in RNN-NADE, Boulanger-Lewandowski
et al. 2012: the notes of a chord are strongly dependent, which a factorised Bernoulli
must push through z_t). Sampling draws x_t1, ..., x_tP in order (`made_sample`, one
lax.fori_loop of P passes).

Dropout (training only, the per-step priors): `keep = dropout_keep(rng, rate, T, B, dims)`
multiplies the frame features x_t wherever they enter a GRU (and as x_{t-1}; 'srnn': also
[d_t, x_t] of its filtering q) and the decoder's output-layer input [h^d_t, z_t] ('srnn':
[d_t, z_t]) by masks in {0, 1/(1 - rate)}; log p(x_t | .) scores the undropped x_t. Drawn
before the scan like all noise (below), so padding does not change the masks of real frames.

Every time loop is one `nn.scan` (compiled once whatever T), time-major inside ('global'
runs two in sequence: the encoder pass over x_1:T must finish before z exists; 'srnn' runs
d_1:T, then a_T:1 ('smooth'), then z_1:T, each one scan). All noise is drawn before the
scan: `step_noise(rng, T, shape)` gives a (T, ...) array whose slice t comes from
`fold_in(rng, t)`, so no two steps share noise and a frame's noise does not depend on T
(padding). Where mask_t = 0 every recurrent state, z_{t-1} and x_{t-1} are
carried through unchanged and the frame adds nothing to any sum, so padded frames change
neither the loss, nor its gradients, nor the state of real frames.

Particle filter (`smc`, per-step priors): the SMC / FIVO estimate of log p(x_1:T) with k
particles per sequence runs the same `posterior_step` on a batch of B k rows inside one
nn.scan, weighting each particle by p(x_t | .) p(z_t | .) / q(z_t | .) and resampling the
particles' carries by ancestor indices (`resample_ancestors`) when their weights degenerate.

Compute in `dtype` (float32 or bfloat16); parameters, recurrent carries, samples z_t and
every log-probability and KL are float32 (`vaes.distributions`).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vaes import distributions as dist

PRIORS = ('latent', 'vrnn', 'global', 'srnn')
POSTERIORS = ('filter', 'smooth')
RESAMPLE = ('always', 'ess', 'never')          # when `smc` resamples
RESAMPLERS = ('multinomial', 'systematic')     # how it draws the ancestors
LIKELIHOODS = ('bernoulli', 'gaussian', 'categorical')
LOGVAR_MIN, LOGVAR_MAX = -10.0, 6.0
F32 = jnp.float32


def step_noise(rng, length, shape, kind='normal'):
  """(length, *shape) float32 noise whose slice t is drawn from fold_in(rng, t).

  kind: 'normal' (z_t and Gaussian x_t) or 'uniform' in (0, 1) (Bernoulli and
  categorical x_t). Slices are independent across t, and slice t is the same for any
  `length` > t, so padding a sequence does not change the noise of its real frames.
  """
  return jax.vmap(lambda t: draw_noise(jax.random.fold_in(rng, t), shape, kind))(
      jnp.arange(length))


def draw_noise(key, shape, kind='normal'):
  """One slice of `step_noise`: float32 noise of `shape` from `key`."""
  if kind == 'normal':
    return jax.random.normal(key, shape, F32)
  if kind == 'uniform':
    return jax.random.uniform(key, shape, F32, minval=1e-6, maxval=1.0 - 1e-6)
  raise ValueError(f"kind='{kind}' is not 'normal' or 'uniform'.")


def step_keys(rng, length):
  """(length, ...) keys fold_in(rng, t): the keys of `step_noise`'s slices, for noise drawn
  inside a scan (`draw_noise(keys[t], shape, kind)` = `step_noise(rng, ...)[t]`)."""
  return jax.vmap(lambda t: jax.random.fold_in(rng, t))(jnp.arange(length))


def dropout_keep(rng, rate, length, batch, dims):
  """Inverted-dropout masks, one (length, batch, d) float32 array in {0, 1/(1 - rate)} per d
  in dims, slice t drawn from fold_in (`step_noise`); rate 0 gives ones of shape
  (length, batch, 1)."""
  if rate == 0:
    return tuple(jnp.ones((length, batch, 1), F32) for _ in dims)
  return tuple(jnp.where(step_noise(jax.random.fold_in(rng, i), length, (batch, d), 'uniform')
                         >= rate, 1.0 / (1.0 - rate), 0.0).astype(F32)
               for i, d in enumerate(dims))


def x_noise_kind(likelihood):
  return 'normal' if likelihood == 'gaussian' else 'uniform'


def _sel(m, new, old):
  """where(mask, new, old) per example, for carries of shape (B, ...)."""
  m = jnp.reshape(m > 0, m.shape + (1,) * (new.ndim - m.ndim))
  return jnp.where(m, new, old)


def log_mean_exp(log_w, axis=-1):
  """log (1/k) sum_i exp(log_w_i) over `axis` (k = its size), float32."""
  return jax.nn.logsumexp(log_w, axis=axis) - jnp.log(float(log_w.shape[axis]))


def effective_sample_size(log_w):
  """ESS = (sum_i w_i)^2 / sum_i w_i^2 of unnormalised log weights, over the last axis:
  k for equal weights, 1 when one particle holds all the weight."""
  return jnp.exp(2.0 * jax.nn.logsumexp(log_w, -1) - jax.nn.logsumexp(2.0 * log_w, -1))


def resample_ancestors(log_w, u, resampler):
  """Ancestor indices (B, k), int32: k draws per row from Categorical(w / sum_j w_j),
  w = exp(log_w) (B, k), by inverting the cumulative weights c_j = W_0 + ... + W_j:
  a_i = #{j : c_j <= v_i} (clipped to k - 1 against rounding), with
    'multinomial': v_i = u_i, k independent uniforms;
    'systematic':  v_i = (i + u_0) / k, one uniform (Kitagawa 1996; lower variance).
  u: (B, k) uniforms in (0, 1)."""
  k = log_w.shape[-1]
  cdf = jnp.cumsum(jax.nn.softmax(log_w.astype(F32), axis=-1), axis=-1)
  if resampler == 'systematic':
    u = (jnp.arange(k, dtype=F32) + u[:, :1]) / k
  elif resampler != 'multinomial':
    raise ValueError(f"resampler='{resampler}' is not one of {RESAMPLERS}.")
  a = jax.vmap(lambda c, v: jnp.searchsorted(c, v, side='right'))(cdf, u)
  return jnp.minimum(a, k - 1).astype(jnp.int32)


class GRU(nn.Module):
  """GRU cell with the gates fused into two matmuls (input and recurrent):
  r = sig(W_ir x + W_hr h + b_r), u = sig(W_iu x + W_hu h + b_u),
  n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1 - u) n + u h.
  The same equations as flax.linen.GRUCell, with fewer, larger matmuls (faster to compile
  and to run on CPUs). Returns h' in float32."""
  features: int
  dtype: Any = F32

  @nn.compact
  def __call__(self, h, x):
    dense = lambda name, init: nn.Dense(3 * self.features, dtype=self.dtype, param_dtype=F32,
                                        kernel_init=init, name=name)
    gi = dense('input', nn.initializers.lecun_normal())(x)
    gh = dense('recurrent', nn.initializers.orthogonal())(h)
    ir, iu, i_n = jnp.split(gi.astype(F32), 3, axis=-1)
    hr, hu, h_n = jnp.split(gh.astype(F32), 3, axis=-1)
    r = jax.nn.sigmoid(ir + hr)
    u = jax.nn.sigmoid(iu + hu)
    n = jnp.tanh(i_n + r * h_n)
    return (1.0 - u) * n + u * h.astype(F32)


class MLP(nn.Module):
  """One hidden ReLU layer; float32 output (distribution parameters)."""
  features: int
  hidden: int
  dtype: Any = F32

  @nn.compact
  def __call__(self, h):
    h = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, param_dtype=F32)(h))
    return nn.Dense(self.features, dtype=self.dtype, param_dtype=F32)(h).astype(F32)


def made_masks(features, hidden):
  """(M_in (P, H), M_out (H, P), M_x (P, P)) float32 masks of the frame MADE (module
  docstring): logit d reads x_j for j < d only."""
  degree = 1 + jnp.arange(hidden) % max(features - 1, 1)        # m_k in [1, P - 1]
  d = jnp.arange(1, features + 1)                               # input / output degrees
  m_in = (degree[None, :] >= d[:, None]).astype(F32)
  m_out = (d[None, :] > degree[:, None]).astype(F32)
  m_x = (d[:, None] < d[None, :]).astype(F32)
  return m_in, m_out, m_x


def made_logits(weights, x, out, dtype=F32):
  """Logits l_t (..., P) of the frame MADE at frames x (..., P), given the decoder output
  out = [b_t, c_t] (..., P + H) and the masked weights (W_in, W_out, W_x) of `FrameMADE`."""
  w_in, w_out, w_x = weights
  features = w_x.shape[0]
  b, c = out[..., :features], out[..., features:]
  xd = x.astype(dtype)
  h = nn.relu(c.astype(dtype) + xd @ w_in.astype(dtype))
  return b + (h @ w_out.astype(dtype) + xd @ w_x.astype(dtype)).astype(F32)


def made_sample(weights, out, u, dtype=F32):
  """x_t ~ the frame MADE given out, from uniforms u (..., P): x_td = [u_td < sigmoid(l_td)]
  with l_td computed (in `dtype`, as when scoring) at the x_t<d already drawn (P passes in
  one lax.fori_loop)."""
  def draw(d, x):
    logits = made_logits(weights, x, out, dtype)
    p_d = jax.nn.sigmoid(jax.lax.dynamic_index_in_dim(logits, d, -1, keepdims=False))
    u_d = jax.lax.dynamic_index_in_dim(u, d, -1, keepdims=False)
    return jax.lax.dynamic_update_index_in_dim(x, (u_d < p_d).astype(F32), d, -1)
  return jax.lax.fori_loop(0, u.shape[-1], draw, jnp.zeros(u.shape, F32))


class FrameMADE(nn.Module):
  """The weights of the frame MADE (module docstring), masked: `__call__()` returns
  (W_in * M_in, W_out * M_out, W_x * M_x) for `made_logits` / `made_sample`."""
  features: int
  hidden: int

  @nn.compact
  def __call__(self):
    p, h = self.features, self.hidden
    w_in = self.param('w_in', nn.initializers.variance_scaling(2.0, 'fan_in', 'normal'),
                      (p, h), F32)
    w_out = self.param('w_out', nn.initializers.lecun_normal(), (h, p), F32)
    w_x = self.param('w_x', nn.initializers.zeros_init(), (p, p), F32)
    m_in, m_out, m_x = made_masks(p, h)
    return w_in * m_in, w_out * m_out, w_x * m_x


def _gauss(params):
  mean, logvar = jnp.split(params, 2, axis=-1)
  return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)


class VRAE(nn.Module):
  """Sequential VAE; see the module docstring for the equations.

  Attributes: features (P for Bernoulli/Gaussian x of shape (.., P), K classes for
  categorical), likelihood, prior, posterior, hidden (GRU width), latent (dim of z_t), mlp_hidden,
  unroll (scan unroll factor), remat (rematerialise each step in the backward pass),
  made_hidden (H_m of the frame MADE; 0: a factorised p(x_t | .)), dtype,
  q_residual (prior='srnn' only: True / False, None for the other priors; build_model sets
  it from config.model.srnn_residual).
  No field of a config.model name has a default here: their one home is
  vaes.families.vrae.model_config(). q_residual is named apart and defaults to None, which
  prior='srnn' refuses, so no default of the residual choice lives here.

  Entry points (batch-major arrays in and out, time-major inside):
    __call__(x, mask, eps)                 posterior pass, ELBO terms and log weights
    smc(x, mask, rng_z, rng_u, k, ...)     particle filter: the FIVO / SMC estimate of log p(x)
    generate(eps, u)                       ancestral samples from the prior
    impute(x, observed, mask, eps, u)      fill frames where observed = 0, keep the others
  eps: (T, B, latent) standard normal noise for z (the 'global' prior uses eps[0]);
  u: (T, B, ...) noise for sampling x_t (`step_noise(.., kind=x_noise_kind(likelihood))`).
  """
  features: int
  likelihood: str
  prior: str
  posterior: str
  hidden: int
  latent: int
  mlp_hidden: int
  unroll: int
  remat: bool
  made_hidden: int
  dtype: Any = F32
  q_residual: Any = None

  def setup(self):
    if self.prior not in PRIORS:
      raise ValueError(f"prior='{self.prior}' is not one of {PRIORS}.")
    if self.likelihood not in LIKELIHOODS:
      raise ValueError(f"likelihood='{self.likelihood}' is not one of {LIKELIHOODS}.")
    if self.posterior not in POSTERIORS:
      raise ValueError(f"posterior='{self.posterior}' is not one of {POSTERIORS}.")
    if self.posterior == 'smooth' and self.prior == 'global':
      raise ValueError("posterior='smooth' needs per-step latents; prior='global' already "
                       'conditions its one z on x_1:T.')
    if self.prior == 'srnn' and self.q_residual not in (True, False):
      raise ValueError(f"prior='srnn' needs q_residual=True or False, got {self.q_residual!r} "
                       '(build_model sets it from config.model.srnn_residual).')
    if self.prior != 'srnn' and self.q_residual is not None:
      raise ValueError(f"q_residual={self.q_residual!r} is for prior='srnn' only; leave it None "
                       f"for prior='{self.prior}'.")
    if self.made_hidden and (self.likelihood != 'bernoulli' or self.features < 2):
      raise ValueError(f'made_hidden={self.made_hidden}: the frame MADE is for Bernoulli frames '
                       f"of >= 2 dimensions, not likelihood='{self.likelihood}' with "
                       f'{self.features}; set made_hidden=0.')
    gru = lambda: GRU(self.hidden, self.dtype)
    out = {'bernoulli': self.features + self.made_hidden, 'gaussian': 2 * self.features,
           'categorical': self.features}[self.likelihood]
    if self.made_hidden:
      self.made = FrameMADE(self.features, self.made_hidden)
    if self.prior == 'srnn':
      self.gru_d = gru()        # d_t, the deterministic forward GRU over x_<t
      self.prior_head = MLP(2 * self.latent, self.mlp_hidden, self.dtype)
      self.post_head = MLP(2 * self.latent, self.mlp_hidden, self.dtype)
      self.out_head = MLP(out, self.mlp_hidden, self.dtype)
      if self.posterior == 'smooth':
        self.gru_b = gru()      # a_t, the backward GRU over [d_t, x_t]
      return
    self.gru_q = gru()
    self.gru_d = gru()
    self.post_head = MLP(2 * self.latent, self.mlp_hidden, self.dtype)
    self.out_head = MLP(out, self.mlp_hidden, self.dtype)
    if self.prior == 'global':
      self.dec_init = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=F32)
    else:
      self.gru_p = gru()
      self.prior_head = MLP(2 * self.latent, self.mlp_hidden, self.dtype)
    if self.posterior == 'smooth':
      self.gru_b = gru()

  # --------------------------------------------------------------------------
  # Likelihood p(x_t | .) helpers (float32).
  # --------------------------------------------------------------------------

  def features_of(self, x_t):
    """x_t in data form -> float32 input features: the values, or one-hot tokens."""
    if self.likelihood == 'categorical':
      return jax.nn.one_hot(x_t.astype(jnp.int32), self.features, dtype=F32)
    return x_t.astype(F32)

  def logits(self, x_t, out):
    """Bernoulli logits of p(x_t | .): out itself, or the frame MADE's at x_t."""
    return made_logits(self.made(), x_t, out, self.dtype) if self.made_hidden else out

  def log_px(self, x_t, out):
    """log p(x_t | z_<=t, x_<t) summed over the frame's dimensions: (B,)."""
    if self.likelihood == 'bernoulli':
      return dist.bernoulli_log_prob(x_t, self.logits(x_t, out)).sum(-1)
    if self.likelihood == 'gaussian':
      mean, logvar = _gauss(out)
      return dist.gaussian_log_prob(x_t, mean, logvar).sum(-1)
    return dist.categorical_log_prob(x_t, out)

  def sample_x(self, out, u_t):
    """A sample of p(x_t | .) in data form from noise u_t (uniform, or normal if Gaussian)."""
    if self.likelihood == 'bernoulli':
      if self.made_hidden:
        return made_sample(self.made(), out, u_t, self.dtype)
      return (u_t < jax.nn.sigmoid(out)).astype(F32)
    if self.likelihood == 'gaussian':
      mean, logvar = _gauss(out)
      return dist.gaussian_reparam(mean, logvar, u_t)
    gumbel = -jnp.log(-jnp.log(u_t))
    return jnp.argmax(out + gumbel, axis=-1).astype(jnp.int32)

  def mean_x(self, out, x_t):
    """E[x_t] under p(x_t | .): probabilities, the Gaussian mean, or class probabilities.
    With the frame MADE, p(x_td = 1 | x_t<d, .) at the frame x_t (the data's when teacher
    forced, the sample's when generating): E[x_t] itself has no closed form there."""
    if self.likelihood == 'bernoulli':
      return jax.nn.sigmoid(self.logits(x_t, out))
    if self.likelihood == 'gaussian':
      return _gauss(out)[0]
    return jax.nn.softmax(out, axis=-1)

  # --------------------------------------------------------------------------
  # One step of each conditional.
  # --------------------------------------------------------------------------

  def _prior(self, h_p, z_prev, xf_prev):
    """h^p_t = GRU_p(h^p_{t-1}, z_{t-1} [, x_{t-1}]); p(z_t | z_<t [, x_<t]) = N(mean, logvar)."""
    inp = jnp.concatenate([z_prev, xf_prev], -1) if self.prior == 'vrnn' else z_prev
    h = self.gru_p(h_p, inp)
    mean, logvar = _gauss(self.prior_head(h))
    return h, mean, logvar

  def _posterior(self, h_q, h_p, xf_t, z_prev, b_t):
    """h^q_t = GRU_q(h^q_{t-1}, [x_t, z_{t-1}]); q(z_t | .) = N(mlp_q([h^q_t, h^p_t, b_t])),
    b_t the backward state ('smooth') or (B, 0) ('filter': q(z_t | z_<t, x_<=t))."""
    h = self.gru_q(h_q, jnp.concatenate([xf_t, z_prev], -1))
    mean, logvar = _gauss(self.post_head(jnp.concatenate([h, h_p, b_t], -1)))
    return h, mean, logvar

  def _decode(self, h_d, z_t, xf_prev, keep_h=1.0):
    """h^d_t = GRU_d(h^d_{t-1}, [z_t, x_{t-1}]); parameters of p(x_t | z_<=t, x_<t) =
    mlp_x([h^d_t, z_t] * keep_h) (keep_h: the dropout mask, or 1)."""
    h = self.gru_d(h_d, jnp.concatenate([z_t, xf_prev], -1))
    return h, self.out_head(jnp.concatenate([h, z_t], -1) * keep_h)

  # --------------------------------------------------------------------------
  # Scan bodies: (module, carry, per-step inputs) -> (carry, per-step outputs).
  # --------------------------------------------------------------------------

  def posterior_step(self, carry, inp):
    """One frame of the posterior pass. carry = (h^p, h^q, h^d, z_{t-1}, x_{t-1});
    inp = (x_t, mask_t, eps_t, b_t, (keep_x_t, keep_h_t)), b_t from `backward` ('smooth')
    or (B, 0), the keeps the dropout masks of x_t's features and the output layer. Outputs
    log p(x_t|.), KL_t per latent dim (closed form), log p(z_t|.) - log q(z_t|.) at the
    sample, z_t and the parameters of p(x_t|.). prior='srnn': `srnn_posterior_step`."""
    if self.prior == 'srnn':
      return self.srnn_posterior_step(carry, inp)
    h_p, h_q, h_d, z_prev, xf_prev = carry
    x_t, m_t, eps_t, b_t, (keep_x, keep_h) = inp
    x_t = _sel(m_t, x_t, jnp.zeros_like(x_t))       # padded values never reach the model
    xf_t = self.features_of(x_t) * keep_x
    h_p_new, mean_p, logvar_p = self._prior(h_p, z_prev, xf_prev)
    h_q_new, mean_q, logvar_q = self._posterior(h_q, h_p_new, xf_t, z_prev, b_t)
    z = dist.gaussian_reparam(mean_q, logvar_q, eps_t)
    h_d_new, out = self._decode(h_d, z, xf_prev, keep_h)
    log_px, kl, logw_z = self._frame_terms(x_t, m_t, out, z, mean_p, logvar_p, mean_q,
                                           logvar_q)
    new = tuple(_sel(m_t, a, b) for a, b in
                zip((h_p_new, h_q_new, h_d_new, z, xf_t), carry))
    return new, {'log_px': log_px, 'kl': kl, 'logw_z': logw_z, 'z': z, 'out': out}

  def smc_step(self, carry, inp, resample, resampler):
    """One frame of the particle filter `smc` on the particle-expanded batch, whose row
    b * k + i is particle i of sequence b. carry = (state, log_w, log_z, resamples, beta):
    state the carry of posterior_step ((B k, ...) each), log_w (B, k) the particles' log
    weights since the last resampling, log_z (B,) the bound's resampling terms so far,
    resamples (B,) their count; inp = (key_z_t, key_u_t, x_t, mask_t, b_t, (keep_x_t,
    keep_h_t)) per sequence ((B, ...): each particle of sequence b reads row b)."""
    state, log_w, log_z, resamples, beta = carry
    key_z, key_u, x_t, m_t, b_t, (keep_x, keep_h) = inp
    batch, k = log_w.shape
    rep = lambda a: jnp.repeat(a, k, axis=0)
    eps = draw_noise(key_z, (batch, k, self.latent)).reshape(batch * k, self.latent)
    state, ys = self.posterior_step(
        state, (rep(x_t), rep(m_t), eps, rep(b_t), (rep(keep_x), rep(keep_h))))
    # log alpha_t = log p(x_t | .) + beta [log p(z_t | .) - log q(z_t | .)]; 0 where mask_t = 0.
    log_w = log_w + (ys['log_px'] + beta * ys['logw_z']).reshape(batch, k)
    if resample == 'never':
      return (state, log_w, log_z, resamples, beta), None
    now = m_t > 0                                   # a padded frame never resamples
    if resample == 'ess':
      now = now & (effective_sample_size(log_w) < 0.5 * k)
    ancestors = resample_ancestors(jax.lax.stop_gradient(log_w),
                                   draw_noise(key_u, (batch, k), 'uniform'), resampler)
    ancestors = jnp.where(now[:, None], ancestors, jnp.arange(k, dtype=jnp.int32))
    pick = lambda a: jnp.take_along_axis(a.reshape(batch, k, -1), ancestors[..., None],
                                         axis=1).reshape(a.shape)
    state = tuple(pick(a) for a in state)
    log_z = log_z + jnp.where(now, log_mean_exp(log_w), 0.0)
    log_w = jnp.where(now[:, None], 0.0, log_w)
    return (state, log_w, log_z, resamples + now.astype(F32), beta), None

  def generate_step(self, carry, inp):
    """z_t ~ p(z_t | z_<t [, x_<t]), x_t ~ p(x_t | z_<=t, x_<t). carry = (h^p, h^d, z_{t-1},
    x_{t-1}); inp = (eps_t, u_t)."""
    h_p, h_d, z_prev, xf_prev = carry
    eps_t, u_t = inp
    h_p, mean_p, logvar_p = self._prior(h_p, z_prev, xf_prev)
    z = dist.gaussian_reparam(mean_p, logvar_p, eps_t)
    h_d, out = self._decode(h_d, z, xf_prev)
    x_t = self.sample_x(out, u_t)
    return (h_p, h_d, z, self.features_of(x_t)), {'x': x_t, 'mean': self.mean_x(out, x_t),
                                                   'z': z}

  def impute_step(self, carry, inp):
    """Observed frame (o_t = 1): z_t ~ q(z_t | .) and x_t kept ('smooth': b_t reads the
    observed frames s >= t). Missing frame:
    z_t ~ p(z_t | .), x_t ~ p(x_t | z_<=t, x_<t), and GRU_q reads the sampled x_t so later
    posteriors condition on the filled sequence. carry as in posterior_step;
    inp = (x_t, o_t, mask_t, eps_t, u_t, b_t), b_t the backward state of the observed
    frames ('smooth') or (B, 0)."""
    h_p, h_q, h_d, z_prev, xf_prev = carry
    x_t, o_t, m_t, eps_t, u_t, b_t = inp
    obs = (o_t > 0) & (m_t > 0)
    x_t = _sel(obs, x_t, jnp.zeros_like(x_t))
    h_p_new, mean_p, logvar_p = self._prior(h_p, z_prev, xf_prev)
    h_q_obs, mean_q, logvar_q = self._posterior(h_q, h_p_new, self.features_of(x_t), z_prev,
                                                b_t)
    z = _sel(obs, dist.gaussian_reparam(mean_q, logvar_q, eps_t),
             dist.gaussian_reparam(mean_p, logvar_p, eps_t))
    h_d_new, out = self._decode(h_d, z, xf_prev)
    x_new = _sel(obs, x_t, self.sample_x(out, u_t))
    xf_new = self.features_of(x_new)
    h_q_miss = self.gru_q(h_q, jnp.concatenate([xf_new, z_prev], -1))
    h_q_new = _sel(obs, h_q_obs, h_q_miss)
    new = tuple(_sel(m_t, a, b) for a, b in
                zip((h_p_new, h_q_new, h_d_new, z, xf_new), carry))
    return new, {'x': x_new, 'mean': self.mean_x(out, x_new)}

  def backward_step(self, b, inp):
    """b_t = GRU_b(b_{t+1}, x_t * keep_x_t) (run in reverse), carried unchanged where the
    frame is not used; outputs b_t."""
    x_t, m_t, keep_x = inp
    x_t = _sel(m_t, x_t, jnp.zeros_like(x_t))
    b = _sel(m_t, self.gru_b(b, self.features_of(x_t) * keep_x), b)
    return b, b

  def global_encode_step(self, h_q, inp):
    """h^q_t = GRU_q(h^q_{t-1}, x_t), carried unchanged where the frame is not used."""
    x_t, m_t = inp
    x_t = _sel(m_t, x_t, jnp.zeros_like(x_t))
    h = self.gru_q(h_q, self.features_of(x_t))
    return _sel(m_t, h, h_q), None

  def global_decode_step(self, carry, inp):
    """p(x_t | z, x_<t) with h^d_t = GRU_d(h^d_{t-1}, [z, x_{t-1}]). carry = (h^d, z, x_{t-1});
    inp = (x_t, o_t, mask_t, u_t): frames with o_t = 0 are sampled (generation, imputation),
    the others are teacher-forced and scored."""
    h_d, z, xf_prev = carry
    x_t, o_t, m_t, u_t = inp
    obs = (o_t > 0) & (m_t > 0)
    x_t = _sel(obs, x_t, jnp.zeros_like(x_t))
    h_d_new, out = self._decode(h_d, z, xf_prev)
    x_new = _sel(obs, x_t, self.sample_x(out, u_t))
    log_px = jnp.where(obs, self.log_px(x_t, out), 0.0)
    xf_new = self.features_of(x_new)
    new = (_sel(m_t, h_d_new, h_d), z, _sel(m_t, xf_new, xf_prev))
    return new, {'log_px': log_px, 'x': x_new, 'mean': self.mean_x(out, x_new), 'out': out}

  # --------------------------------------------------------------------------
  # SRNN (prior='srnn'): the steps of its scans (module docstring).
  # --------------------------------------------------------------------------

  def srnn_prior(self, z_prev, d_t):
    """p(z_t | z_{t-1}, d_t) = N(mlp_p([z_{t-1}, d_t])): (mean_p, logvar_p)."""
    return _gauss(self.prior_head(jnp.concatenate([z_prev, d_t], -1)))

  def srnn_distributions(self, z_prev, d_t, a_t):
    """(mean_p, logvar_p, mean_q, logvar_q): p(z_t | z_{t-1}, d_t) and q(z_t | z_{t-1}, a_t),
    (r_t, logvar_q) = mlp_q([z_{t-1}, a_t]), mean_q = mean_p + r_t (q_residual) or r_t."""
    mean_p, logvar_p = self.srnn_prior(z_prev, d_t)
    r_t, logvar_q = _gauss(self.post_head(jnp.concatenate([z_prev, a_t], -1)))
    mean_q = mean_p + r_t if self.q_residual else r_t
    return mean_p, logvar_p, mean_q, logvar_q

  def _srnn_d_a(self, c_t, xf_t):
    """(d_t, a_t) from the context c_t of `backward`: [d_t, a_t] ('smooth'), or d_t and
    a_t = [d_t, x_t] ('filter')."""
    d_t = c_t[..., :self.hidden]
    if self.posterior == 'smooth':
      return d_t, c_t[..., self.hidden:]
    return d_t, jnp.concatenate([d_t, xf_t], -1)

  def srnn_forward_step(self, carry, inp):
    """d_t = GRU_d(d_{t-1}, x_{t-1}); carry = (d_{t-1}, x_{t-1}), both carried unchanged
    where use_t = 0; inp = (x_t, use_t, keep_x_t); outputs d_t."""
    d, xf_prev = carry
    x_t, m_t, keep_x = inp
    x_t = _sel(m_t, x_t, jnp.zeros_like(x_t))
    d = _sel(m_t, self.gru_d(d, xf_prev), d)
    xf_prev = _sel(m_t, self.features_of(x_t) * keep_x, xf_prev)
    return (d, xf_prev), d

  def srnn_backward_step(self, a, inp):
    """a_t = GRU_a(a_{t+1}, [d_t, x_t * keep_x_t]) (run in reverse), carried unchanged where
    use_t = 0; inp = (x_t, use_t, keep_x_t, d_t); outputs a_t."""
    x_t, m_t, keep_x, d_t = inp
    x_t = _sel(m_t, x_t, jnp.zeros_like(x_t))
    a = _sel(m_t, self.gru_b(a, jnp.concatenate([d_t, self.features_of(x_t) * keep_x], -1)), a)
    return a, a

  def srnn_posterior_step(self, carry, inp):
    """One frame of the SRNN posterior pass. carry = (z_{t-1},); inp = (x_t, mask_t, eps_t,
    c_t, (keep_x_t, keep_h_t)), c_t = [d_t, a_t] ('smooth') or d_t ('filter') from
    `backward`. z_t ~ q(z_t | z_{t-1}, a_t), p(x_t | z_t, d_t) = mlp_x([d_t, z_t] * keep_h);
    the outputs of posterior_step."""
    (z_prev,) = carry
    x_t, m_t, eps_t, c_t, (keep_x, keep_h) = inp
    x_t = _sel(m_t, x_t, jnp.zeros_like(x_t))       # padded values never reach the model
    d_t, a_t = self._srnn_d_a(c_t, self.features_of(x_t) * keep_x)
    mean_p, logvar_p, mean_q, logvar_q = self.srnn_distributions(z_prev, d_t, a_t)
    z = dist.gaussian_reparam(mean_q, logvar_q, eps_t)
    out = self.out_head(jnp.concatenate([d_t, z], -1) * keep_h)
    log_px, kl, logw_z = self._frame_terms(x_t, m_t, out, z, mean_p, logvar_p, mean_q,
                                           logvar_q)
    return (_sel(m_t, z, z_prev),), {'log_px': log_px, 'kl': kl, 'logw_z': logw_z, 'z': z,
                                     'out': out}

  def _frame_terms(self, x_t, m_t, out, z, mean_p, logvar_p, mean_q, logvar_q):
    """log p(x_t | .), the KL per dimension and log p(z_t | .) - log q(z_t | .) of one frame,
    0 on padded frames (mask m_t = 0): what every posterior step returns."""
    real = m_t > 0
    log_px = jnp.where(real, self.log_px(x_t, out), 0.0)
    kl = jnp.where(real[:, None], dist.gaussian_kl(mean_q, logvar_q, mean_p, logvar_p), 0.0)
    logw_z = (dist.gaussian_log_prob(z, mean_p, logvar_p)
              - dist.gaussian_log_prob(z, mean_q, logvar_q)).sum(-1)
    return log_px, kl, jnp.where(real, logw_z, 0.0)

  def srnn_generate_step(self, carry, inp):
    """d_t = GRU_d(d_{t-1}, x_{t-1}), z_t ~ p(z_t | z_{t-1}, d_t), x_t ~ p(x_t | z_t, d_t).
    carry = (d_{t-1}, z_{t-1}, x_{t-1}) (x_{t-1} the sample); inp = (eps_t, u_t)."""
    d, z_prev, xf_prev = carry
    eps_t, u_t = inp
    d = self.gru_d(d, xf_prev)
    mean_p, logvar_p = self.srnn_prior(z_prev, d)
    z = dist.gaussian_reparam(mean_p, logvar_p, eps_t)
    out = self.out_head(jnp.concatenate([d, z], -1))
    x_t = self.sample_x(out, u_t)
    return (d, z, self.features_of(x_t)), {'x': x_t, 'mean': self.mean_x(out, x_t), 'z': z}

  def srnn_impute_step(self, carry, inp):
    """d_t = GRU_d(d_{t-1}, x_{t-1}) over the filled sequence (observed or sampled x_{t-1});
    observed frame (o_t = 1): z_t ~ q(z_t | z_{t-1}, a_t) and x_t kept; missing frame:
    z_t ~ p(z_t | z_{t-1}, d_t), x_t ~ p(x_t | z_t, d_t). 'smooth': a_t from c_t, the
    backward GRU run over the observed frames only with their d_t of the observed frames
    (`backward` with use = observed: the missing frames skipped, as the values that will
    fill them do not exist yet); 'filter': a_t = [d_t, x_t]. carry = (d_{t-1}, z_{t-1},
    x_{t-1}); inp = (x_t, o_t, mask_t, eps_t, u_t, c_t)."""
    d, z_prev, xf_prev = carry
    x_t, o_t, m_t, eps_t, u_t, c_t = inp
    obs = (o_t > 0) & (m_t > 0)
    x_t = _sel(obs, x_t, jnp.zeros_like(x_t))
    d_new = self.gru_d(d, xf_prev)
    a_t = (c_t[..., self.hidden:] if self.posterior == 'smooth'
           else jnp.concatenate([d_new, self.features_of(x_t)], -1))
    mean_p, logvar_p, mean_q, logvar_q = self.srnn_distributions(z_prev, d_new, a_t)
    z = _sel(obs, dist.gaussian_reparam(mean_q, logvar_q, eps_t),
             dist.gaussian_reparam(mean_p, logvar_p, eps_t))
    out = self.out_head(jnp.concatenate([d_new, z], -1))
    x_new = _sel(obs, x_t, self.sample_x(out, u_t))
    new = tuple(_sel(m_t, a, b) for a, b in
                zip((d_new, z, self.features_of(x_new)), carry))
    return new, {'x': x_new, 'mean': self.mean_x(out, x_new)}

  # --------------------------------------------------------------------------
  # Time loops.
  # --------------------------------------------------------------------------

  def _scan(self, body, carry, xs, reverse=False):
    """One nn.scan over the leading (time) axis of xs (last to first if `reverse`); params
    are broadcast across steps."""
    if self.remat:
      body = nn.remat(body, prevent_cse=False)
    scan = nn.scan(body, variable_broadcast='params', split_rngs={'params': False},
                   in_axes=0, out_axes=0, unroll=self.unroll, reverse=reverse)
    return scan(self, carry, xs)

  def backward(self, x_tm, use_tm, keep_x):
    """(T, B, hidden) states b_t summarising the frames s >= t with use_s = 1 ('smooth'),
    or (T, B, 0) ('filter'). Time-major inputs; keep_x (T, B, F or 1) dropout masks.
    prior='srnn': the context c_t of its posterior, d_t (T, B, hidden) of the forward scan
    ('filter') or [d_t, a_t] (T, B, 2 hidden) with a_t of the reverse scan ('smooth')."""
    length, batch = use_tm.shape
    if self.prior == 'srnn':
      _, d = self._scan(VRAE.srnn_forward_step,
                        (self._zeros(batch, self.hidden), self._zeros(batch, self.features)),
                        (x_tm, use_tm, keep_x))
      if self.posterior == 'filter':
        return d
      _, a = self._scan(VRAE.srnn_backward_step, self._zeros(batch, self.hidden),
                        (x_tm, use_tm, keep_x, d), reverse=True)
      return jnp.concatenate([d, a], -1)
    if self.posterior == 'filter':
      return jnp.zeros((length, batch, 0), F32)
    _, b = self._scan(VRAE.backward_step, self._zeros(batch, self.hidden),
                      (x_tm, use_tm, keep_x), reverse=True)
    return b

  @property
  def dropout_dims(self):
    """Widths of the dropout masks: the frame features, the output layer's input."""
    return (self.features, self.hidden + self.latent)

  def _zeros(self, batch, dim):
    return jnp.zeros((batch, dim), F32)

  def _posterior_carry(self, batch):
    """posterior_step's initial carry: h^p_0 = h^q_0 = h^d_0 = 0, z_0 = 0, x_0 = 0 ('srnn':
    z_0 = 0 alone; d_0 = 0 and x_0 = 0 are `backward`'s)."""
    if self.prior == 'srnn':
      return (self._zeros(batch, self.latent),)
    return (self._zeros(batch, self.hidden),) * 3 + (
        self._zeros(batch, self.latent), self._zeros(batch, self.features))

  def _global_posterior(self, x_tm, use_tm):
    """q(z | x) = N(mlp_q(h^q_T)) from the frames where use_t = 1 (time-major inputs)."""
    h_q, _ = self._scan(VRAE.global_encode_step, self._zeros(use_tm.shape[1], self.hidden),
                        (x_tm, use_tm))
    return _gauss(self.post_head(h_q))

  def _global_decoder_init(self, z):
    return jnp.tanh(self.dec_init(z).astype(F32))

  def __call__(self, x, mask, eps, keep=None):
    """Posterior pass. x: (B, T, ...) data, mask: (B, T), eps: (T, B, latent), keep: None
    (no dropout) or the pair (keep_x, keep_h) of `dropout_keep(rng, rate, T, B,
    self.dropout_dims)`.

    Returns batch-major
      log_px (B, T): log p(x_t | z_<=t, x_<t) at z ~ q, 0 on padding;
      kl (B, T): KL(q(z_t | .) || p(z_t | .)) summed over latent dims ('global': the one
        KL(q(z | x) || N(0, I)) at t = 0, zeros after);
      kl_dims (B, latent): the KL summed over time, per latent dim (for free bits);
      logw_z (B,): sum_t log p(z_t | .) - log q(z_t | .) at the sample, so that
        sum_t log_px + logw_z is the importance log weight log p(x, z) - log q(z | x);
      z (B, T, latent) ('global': (B, latent)); out (B, T, ...) parameters of p(x_t | .).
    """
    batch, length = mask.shape
    mask = mask.astype(F32)
    x_tm, m_tm = jnp.swapaxes(x, 0, 1), jnp.swapaxes(mask, 0, 1)
    if self.prior == 'global':
      if keep is not None:
        raise ValueError("dropout is implemented for the per-step priors, not prior='global'.")
      mean_q, logvar_q = self._global_posterior(x_tm, m_tm)
      z = dist.gaussian_reparam(mean_q, logvar_q, eps[0])
      has = (mask.sum(1) > 0)[:, None]
      kl_dims = jnp.where(has, dist.gaussian_kl(mean_q, logvar_q), 0.0)
      logw_z = jnp.where(has[:, 0], (dist.gaussian_log_prob(z, 0.0, 0.0)
                                     - dist.gaussian_log_prob(z, mean_q, logvar_q)).sum(-1), 0.0)
      carry = (self._global_decoder_init(z), z, self._zeros(batch, self.features))
      # Every real frame is observed, so the x-noise is never used: a constant will do.
      u = jnp.full(m_tm.shape + (1,), 0.0 if self.likelihood == 'gaussian' else 0.5, F32)
      _, ys = self._scan(VRAE.global_decode_step, carry, (x_tm, m_tm, m_tm, u))
      kl = jnp.zeros((batch, length), F32).at[:, 0].set(kl_dims.sum(-1))
      return {'log_px': ys['log_px'].T, 'kl': kl, 'kl_dims': kl_dims, 'logw_z': logw_z,
              'z': z, 'out': jnp.swapaxes(ys['out'], 0, 1)}
    keep = (jnp.ones((length, batch, 1), F32),) * 2 if keep is None else keep   # no dropout
    b = self.backward(x_tm, m_tm, keep[0])
    _, ys = self._scan(VRAE.posterior_step, self._posterior_carry(batch),
                       (x_tm, m_tm, eps, b, keep))
    return {'log_px': ys['log_px'].T, 'kl': ys['kl'].sum(-1).T, 'kl_dims': ys['kl'].sum(0),
            'logw_z': ys['logw_z'].sum(0), 'z': jnp.swapaxes(ys['z'], 0, 1),
            'out': jnp.swapaxes(ys['out'], 0, 1)}

  def smc(self, x, mask, rng_z, rng_u, num_particles, resample, resampler, keep=None,
          beta=1.0):
    """Sequential Monte Carlo estimate log p^(x) of log p(x_1:T), per sequence (B,), with
    k = num_particles particles and the posterior as proposal: the filtering bound of FIVO
    (Maddison et al. 2017; Le et al. 2018; Naesseth et al. 2018), E[log p^(x)] <= log p(x).
    For each real frame t (mask_t = 1), with log w^i = 0 and log p^ = 0 at the start:

      z_t^i ~ q(z_t | z_<t^i, x_<=t)
      log w^i += log p(x_t | z_<=t^i, x_<t) + beta [log p(z_t^i | z_<t^i, .) - log q(z_t^i | .)]
      if resampling at t:  log p^ += log (1/k) sum_i w^i,
                           a^i ~ Categorical(w / sum_j w_j)  (`resample_ancestors`),
                           every recurrent state, z_{t-1} and x_{t-1} of particle i <- those
                           of particle a^i,  log w^i <- 0
    and at the end log p^ += log (1/k) sum_i w^i. `resample` says when: 'always' (every real
    frame), 'ess' (when the effective sample size falls below k/2; Maddison et al.), 'never'
    (then log p^ is the importance-weighted bound of k samples). `resampler`: 'multinomial' |
    'systematic'. k = 1 (any `resample`): the one-sample ELBO log p(x, z) - log q(z | x).
    beta = 1 gives the bound; beta < 1 the KL warm-up's weights (as in the IW bound).

    Frames with mask_t = 0 add nothing, carry every particle through unchanged and never
    resample. The ancestors are integers drawn from stop_gradient(w): gradients flow along
    each particle's lineage, not through the choice of ancestors (FIVO's estimator, which
    drops the score-function term of resampling).

    One nn.scan over time on the particle-expanded batch, row b * k + i = particle i of
    sequence b. Noise drawn inside the scan from per-step keys (a (T, B k, latent) array
    would cost T carries of memory): slice t of z's noise is step_noise(rng_z, T, (B, k,
    latent))[t], of the resampling uniforms step_noise(rng_u, T, (B, k), 'uniform')[t]; so
    with k = 1 the z's are those of `__call__` with eps = step_noise(rng_z, T, (B, latent)).
    'smooth': b_t of each sequence is shared by its particles ('srnn': so is d_t, a function
    of x_<t alone, and a_t). SMC stays unbiased for a
    proposal that reads x_1:T (the weights' targets are still p(x_<=t, z_<=t)), but
    resampling then judges particles by the past frames only; vaes.families.vrae evaluates
    with either posterior and trains FIVO with 'filter' only.

    x: (B, T, ...), mask: (B, T), keep: None or the dropout masks (keep_x, keep_h) of
    `dropout_keep(rng, rate, T, B, self.dropout_dims)`, shared by a sequence's particles.
    Returns {'log_p': (B,) log p^(x), 'resamples': (B,) the number of resampling steps}.
    """
    if self.prior == 'global':
      raise ValueError("smc needs per-step latents z_t; prior='global' has one z.")
    if resample not in RESAMPLE:
      raise ValueError(f"resample='{resample}' is not one of {RESAMPLE}.")
    batch, length = mask.shape
    k = int(num_particles)
    mask = mask.astype(F32)
    x_tm, m_tm = jnp.swapaxes(x, 0, 1), jnp.swapaxes(mask, 0, 1)
    keep = (jnp.ones((length, batch, 1), F32),) * 2 if keep is None else keep   # no dropout
    b = self.backward(x_tm, m_tm, keep[0])
    zeros = jnp.zeros((batch,), F32)
    carry = (self._posterior_carry(batch * k), jnp.zeros((batch, k), F32), zeros, zeros,
             jnp.asarray(beta, F32))
    body = lambda module, c, xs: VRAE.smc_step(module, c, xs, resample, resampler)
    (_, log_w, log_z, resamples, _), _ = self._scan(
        body, carry, (step_keys(rng_z, length), step_keys(rng_u, length), x_tm, m_tm, b, keep))
    return {'log_p': log_z + log_mean_exp(log_w), 'resamples': resamples}

  def generate(self, eps, u):
    """Ancestral samples from the prior. eps: (T, B, latent), u: (T, B, ...) x-noise.
    Returns {'x': (B, T, ...) samples in data form, 'mean': (B, T, ...) E[x_t | .]}."""
    length, batch = eps.shape[:2]
    if self.prior == 'global':
      z = eps[0]    # z ~ N(0, I)
      ones = jnp.ones((length, batch), F32)
      carry = (self._global_decoder_init(z), z, self._zeros(batch, self.features))
      x_dummy = self._dummy_x(length, batch)
      _, ys = self._scan(VRAE.global_decode_step, carry, (x_dummy, 0.0 * ones, ones, u))
    elif self.prior == 'srnn':     # d_t reads the sampled x_{t-1}: one scan, d_0 = z_0 = x_0 = 0
      carry = (self._zeros(batch, self.hidden), self._zeros(batch, self.latent),
               self._zeros(batch, self.features))
      _, ys = self._scan(VRAE.srnn_generate_step, carry, (eps, u))
    else:
      carry = (self._zeros(batch, self.hidden), self._zeros(batch, self.hidden),
               self._zeros(batch, self.latent), self._zeros(batch, self.features))
      _, ys = self._scan(VRAE.generate_step, carry, (eps, u))
    return {'x': jnp.swapaxes(ys['x'], 0, 1), 'mean': jnp.swapaxes(ys['mean'], 0, 1)}

  def _dummy_x(self, length, batch):
    if self.likelihood == 'categorical':
      return jnp.zeros((length, batch), jnp.int32)
    return jnp.zeros((length, batch, self.features), F32)

  def impute(self, x, observed, mask, eps, u):
    """Fills the frames where observed = 0 (within mask) and returns x unchanged elsewhere.
    x: (B, T, ...), observed/mask: (B, T), eps: (T, B, latent), u: (T, B, ...).
    'global': z ~ q(z | observed frames), then the missing frames are sampled from
    p(x_t | z, x_<t) in order. 'srnn': `srnn_impute_step`, d_t over the filled sequence."""
    batch, length = mask.shape
    mask = mask.astype(F32)
    obs = observed.astype(F32) * mask
    x_tm, m_tm, o_tm = (jnp.swapaxes(a, 0, 1) for a in (x, mask, obs))
    if self.prior == 'global':
      mean_q, logvar_q = self._global_posterior(x_tm, o_tm)
      z = dist.gaussian_reparam(mean_q, logvar_q, eps[0])
      carry = (self._global_decoder_init(z), z, self._zeros(batch, self.features))
      _, ys = self._scan(VRAE.global_decode_step, carry, (x_tm, o_tm, m_tm, u))
    elif self.prior == 'srnn':
      c = (self.backward(x_tm, o_tm, jnp.ones(o_tm.shape + (1,), F32))   # observed frames only
           if self.posterior == 'smooth' else jnp.zeros((length, batch, 0), F32))
      carry = (self._zeros(batch, self.hidden), self._zeros(batch, self.latent),
               self._zeros(batch, self.features))
      _, ys = self._scan(VRAE.srnn_impute_step, carry, (x_tm, o_tm, m_tm, eps, u, c))
    else:
      b = self.backward(x_tm, o_tm, jnp.ones(o_tm.shape + (1,), F32))   # observed frames only
      _, ys = self._scan(VRAE.impute_step, self._posterior_carry(batch),
                         (x_tm, o_tm, m_tm, eps, u, b))
    filled = jnp.swapaxes(ys['x'], 0, 1)
    keep = obs > 0
    keep = keep.reshape(keep.shape + (1,) * (x.ndim - 2))
    return {'x': jnp.where(keep, x.astype(filled.dtype), filled),
            'mean': jnp.swapaxes(ys['mean'], 0, 1)}
