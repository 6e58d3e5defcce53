"""Quantisers: the one import for the VQ models and their callers.

Every quantiser is a Flax module behind the same interface (`__call__(z_e, update_ema)
-> dict(z_q, indices, one_hot, codebook_loss, commitment_loss,
codebook_loss_per_example, commitment_loss_per_example (B,), entropy_loss, perplexity,
restarted_codes)` and `embed(indices) -> z_q`):
  here                       `VectorQuantizer` (with k-means initialisation, dead-code
                             restarts by steps unused or by EMA count, cosine codes, a
                             projected lookup space, the rotation trick, SimVQ codes and
                             an entropy loss) and `ResidualVQ` (with quantize dropout);
  vaes/scalar_quantizers.py  the codebook-free `FSQ`, `ResidualFSQ` and `LFQ`
                             (lookup-free and binary spherical quantisation).
Both are built from the plain functions of vaes/codebook.py (the VQ objective of van
den Oord et al. 2017, eq. 3: `codebook_loss`, `commitment_loss`, `straight_through`;
nearest code, one-hot lookup, EMA, k-means, restarts). This module re-exports them and
the scalar quantisers: callers import `vaes.quantizers` only.

`QuantizerSpec` declares every quantiser field once (the `config.model` fields of the
VQ families, `quantizer_config`); `build_quantizer(spec)` builds the one it names.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

# Re-exported, so that `quantizers.<name>` reaches every quantiser and function.
from vaes.codebook import (  # noqa: F401
    code_perplexity, code_sums, codebook_loss, commitment_loss, dropout_keep, ema_update,
    entropy_loss,
    entropy_terms, expire_codes_below, kmeans, kmeans_once, l2_normalize, lookup, mask_terms,
    nearest_code, per_example_axes, restart_and_reset, restart_dead_codes, rotation_trick, sg,
    simvq_codebook, straight_through)
from vaes.scalar_quantizers import (  # noqa: F401
    FSQ, LFQ, ResidualFSQ, fsq_basis, fsq_bound, fsq_digits_to_codes, fsq_round)


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
    self._check_options()
    codebook, ema = self._codebook()

    z32 = z_e.astype(jnp.float32)
    if self.lookup_dim:
      z32 = nn.Dense(self.lookup_dim, name='proj_in', dtype=jnp.float32)(z32)
    if self.cosine:
      z32 = l2_normalize(z32)
    training = self.use_ema and update_ema and not self.is_initializing()
    flat_z = z32.reshape(-1, self.space_dim)

    if training and self.kmeans_init:
      codebook, ema['cluster_size'].value, ema['embed_sum'].value = kmeans_once(
          ema['initialized'].value, codebook, ema['cluster_size'].value,
          ema['embed_sum'].value, flat_z, self.make_rng('vq'), self.kmeans_iters,
          self.kmeans_points)
      ema['codebook'].value = codebook
      ema['initialized'].value = jnp.ones((), jnp.int32)

    lookup_book = l2_normalize(codebook) if self.cosine else codebook
    indices, _ = nearest_code(sg(z32), lookup_book)
    z_q, one_hot = lookup(indices, lookup_book)

    # Weights (M,) of the latent vectors: 0 for those of examples with keep_b = 0.
    flat_w = None if keep is None else jnp.broadcast_to(
        keep.reshape((-1,) + (1,) * (z32.ndim - 2)), z32.shape[:-1]).reshape(-1)
    terms, restarted = self._loss_terms(z32, z_q, indices, flat_z, flat_w, training, ema)
    if keep is not None:
      terms = mask_terms(terms, keep)
    terms['entropy_loss'] = self._entropy_loss(flat_z, lookup_book, flat_w)

    if self.rotation_trick:
      z_q_st = rotation_trick(z32, z_q)
    else:
      z_q_st = straight_through(z32, z_q)
    if self.lookup_dim:
      z_q_st = nn.Dense(self.code_dim, name='proj_out', dtype=jnp.float32)(z_q_st)
    return dict(z_q=z_q_st.astype(z_e.dtype), indices=indices, one_hot=one_hot,
                perplexity=code_perplexity(one_hot), restarted_codes=restarted, **terms)

  def _check_options(self):
    rewrites = self.kmeans_init or self.restart_after or self.dead_code_threshold
    if rewrites and not self.use_ema:
      raise ValueError('k-means initialisation and dead-code restarts rewrite the codebook '
                       'inside the train step: they need use_ema=True.')
    if self.simvq and self.use_ema:
      raise ValueError('SimVQ learns its code map W by gradient: it needs use_ema=False.')
    if self.restart_after and self.dead_code_threshold:
      raise ValueError('restart_after and dead_code_threshold are alternative dead-code '
                       'restarts: set one of them.')

  def _codebook(self):
    """The codebook e (K, space_dim), declared here: a param, SimVQ's sg[C] W, or (with
    use_ema) the 'vq_ema' variables, returned by name as the second value (else None)."""
    init = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')
    shape = (self.num_codes, self.space_dim)
    if self.use_ema:
      key = self.make_rng('params') if self.is_initializing() else None
      ema = {'codebook': self.variable('vq_ema', 'codebook',
                                       lambda: init(key, shape, jnp.float32))}
      ema['cluster_size'] = self.variable('vq_ema', 'cluster_size',
                                          lambda: jnp.ones((self.num_codes,), jnp.float32))
      ema['embed_sum'] = self.variable('vq_ema', 'embed_sum', lambda: ema['codebook'].value)
      if self.kmeans_init:
        ema['initialized'] = self.variable('vq_ema', 'initialized',
                                           lambda: jnp.zeros((), jnp.int32))
      if self.restart_after:
        ema['steps_unused'] = self.variable('vq_ema', 'steps_unused',
                                            lambda: jnp.zeros((self.num_codes,), jnp.int32))
      return ema['codebook'].value, ema
    if self.simvq:
      key = self.make_rng('params') if self.is_initializing() else None
      frozen = self.variable('vq_frozen', 'codebook', lambda: jax.random.normal(
          key, shape, jnp.float32) * self.space_dim ** -0.5)
      w = self.param('code_transform', nn.initializers.lecun_normal(),
                     (self.space_dim, self.space_dim), jnp.float32)
      return simvq_codebook(frozen.value, w), None
    return self.param('codebook', init, shape, jnp.float32), None

  def _loss_terms(self, z32, z_q, indices, flat_z, flat_w, training, ema):
    """The commitment and codebook terms, batch and per example. With use_ema the
    codebook term is 0 and, in training, the EMA codebook takes its step (`_ema_step`).
    Returns (terms, number of restarted codes)."""
    axes = per_example_axes(z32)
    terms = dict(commitment_loss=commitment_loss(z32, z_q, self.beta),
                 commitment_loss_per_example=commitment_loss(z32, z_q, self.beta, axes))
    restarted = jnp.zeros((), jnp.float32)
    if self.use_ema:  # the codebook term is replaced by the EMA update
      terms.update(codebook_loss=jnp.zeros((), jnp.float32),
                   codebook_loss_per_example=jnp.zeros(z32.shape[:1], jnp.float32))
      if training:
        restarted = self._ema_step(ema, indices, flat_z, flat_w, restarted)
    else:
      terms.update(codebook_loss=codebook_loss(z32, z_q),
                   codebook_loss_per_example=codebook_loss(z32, z_q, axes))
    return terms, restarted

  def _ema_step(self, ema, indices, flat_z, flat_w, restarted):
    """`ema_update` of the 'vq_ema' variables from the (kept) latent vectors, then the
    dead-code restarts. Returns the number of restarted codes (`restarted` if none ran)."""
    counts, sums = code_sums(indices.reshape(-1), flat_z, self.num_codes, flat_w)
    cluster, embed_sum, codebook = ema_update(ema['cluster_size'].value, ema['embed_sum'].value,
                                              counts, sums, self.ema_decay, self.ema_eps)
    if self.restart_after:
      codebook, ema['steps_unused'].value, cluster, embed_sum, restarted = restart_and_reset(
          self.make_rng('vq'), codebook, cluster, embed_sum, ema['steps_unused'].value,
          counts, flat_z, self.restart_after)
    elif self.dead_code_threshold:
      codebook, cluster, embed_sum, restarted = expire_codes_below(
          self.make_rng('vq'), codebook, cluster, embed_sum, flat_z,
          self.dead_code_threshold)
    ema['cluster_size'].value, ema['embed_sum'].value, ema['codebook'].value = (
        cluster, embed_sum, codebook)
    return restarted

  def _entropy_loss(self, flat_z, lookup_book, flat_w):
    if not self.entropy_weight:
      return jnp.zeros((), jnp.float32)
    _, dist = nearest_code(flat_z, lookup_book)   # with gradients to z_e (and e_k)
    return entropy_loss(-dist[:, None, :] / self.entropy_temperature, self.entropy_weight,
                        self.entropy_gamma, flat_w)

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
