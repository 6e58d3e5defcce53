"""VQ-VAE family: model construction, objective and evaluation.

Objective (van den Oord et al. 2017, eq. 3), per example:
  L = -log p(x | z_q(x)) + ||sg[z_e(x)] - e||^2 + beta ||z_e(x) - sg[e]||^2
with -log p(x | z_q) either the Gaussian (MSE / training-pixel variance, as in
Sonnet's example), the same of the decoder output clipped to the data range [0, 1]
('clipped_gaussian': vector-quantize-pytorch's examples clamp their output so; a pixel
at 0 or 1 is fit by any output beyond it, and those outputs get no gradient), or a
discretised logistic in nats per dimension (usable for bits/dim). Whatever the
likelihood, the reconstruction that MSE, PSNR and SSIM score is the decoder's mean
clipped to [0, 1], the image one would show. With EMA codebook updates the codebook term
is dropped. With config.model.entropy_weight > 0 the training loss adds the batch term
lambda (E[H(q(k|z))] - gamma H(E[q(k|z)])) (vaes/codebook.py `entropy_loss`); it is
not part of the per-example evaluation loss.
"""

import functools

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

from vaes import distributions, fs, plotting
from vaes import quantizers
from vaes.models.layers import IMPLEMENTATIONS as UPSAMPLE_IMPLEMENTATIONS
from vaes.models.vqvae import VQVAE
from vaes.registry import ConfigError, ModelFamily, register_family

LIKELIHOODS = ('gaussian', 'clipped_gaussian', 'logistic')


def model_config():
  """Every `config.model` field of the VQ-VAE, with its default and meaning (the values
  of configs/vqvae.py); configs start from it and override."""
  # quantizer, num_codes, code_dim, beta, EMA, ...: each declared once, with its default
  # and meaning, in vaes/quantizers.py QuantizerSpec.
  m = quantizers.quantizer_config()
  m.name = 'vqvae'
  m.arch = 'residual'                 # 'residual' (the paper's) | 'pool' (vector-quantize-
                                      # pytorch's example model; vaes/models/vqvae.py)
  m.hidden = 64                       # channels of the convolutions
  m.res_hidden = 32                   # channels inside each residual block
  m.num_res_blocks = 2                # residual blocks in the encoder and the decoder
  m.num_downsamples = 1               # 4x4 stride-2 convolutions: latents are 2^n smaller
  m.likelihood = 'gaussian'           # 'gaussian' (MSE / train variance) | 'clipped_gaussian'
                                      # (of the output clipped to [0, 1]) | 'logistic'
  # Implementation of the decoder's 4x4 stride-2 transposed convolutions ('pool': of its
  # upsample-then-3x3 convolutions), the same function and parameters
  # (vaes/models/layers.py): 'transpose' (the direct form) | 'phases' | 'subpixel', or
  # 'auto': 'phases' when the model runs on the CPU, 'subpixel' elsewhere.
  m.upsample = 'auto'
  return m


# Fields that choose how the same function is computed; a run may resume with others.
IMPLEMENTATION_FIELDS = ('model.upsample',)


def compute_dtype(config):
  return jnp.dtype(config.compute_dtype)


def validate_config(config):
  m = config.model
  for field in ('hidden', 'res_hidden', 'num_codes', 'code_dim'):
    if m[field] <= 0:
      raise ConfigError(f'config.model.{field}={m[field]}: must be a positive integer.')
  validate_upsample(m)
  if m.arch not in ARCHITECTURES:
    raise ConfigError(f"config.model.arch='{m.arch}': choose one of {ARCHITECTURES}.")
  if m.num_res_blocks < 0 or m.num_downsamples < 0:
    raise ConfigError('config.model.num_res_blocks and num_downsamples must be >= 0.')
  if m.likelihood not in LIKELIHOODS:
    raise ConfigError(f"config.model.likelihood='{m.likelihood}': choose one of {LIKELIHOODS}.")
  validate_quantizer_config(m)


def validate_upsample(m):
  if m.upsample not in UPSAMPLE_CHOICES:
    raise ConfigError(f"config.model.upsample='{m.upsample}': choose one of "
                      f'{UPSAMPLE_CHOICES} (the same function; see vaes/models/layers.py).')


ARCHITECTURES = ('residual', 'pool')
UPSAMPLE_CHOICES = ('auto',) + UPSAMPLE_IMPLEMENTATIONS
# model.upsample='auto', per backend. On the 2-core CPU (with config.cpu_convolutions
# 'xla') the 32x32 VQ-VAE step took 134 ms with 'phases' against 143 ms with
# 'subpixel' (benchmarks/README.md); on GPUs 'subpixel' is one kernel instead of four.
AUTO_UPSAMPLE = {'cpu': 'phases'}


def resolve_upsample(name, backend=None):
  """The ConvTranspose4x4 implementation that model.upsample `name` stands for on
  `backend` (default: JAX's default backend)."""
  if name != 'auto':
    return name
  return AUTO_UPSAMPLE.get(backend or jax.default_backend(), 'subpixel')


def validate_quantizer_config(m):
  """Checks of the quantiser kind and codebook-health options of `config.model`."""
  if m.quantizer not in quantizers.QUANTIZERS:
    raise ConfigError(f"config.model.quantizer='{m.quantizer}': choose one of "
                      f'{quantizers.QUANTIZERS}.')
  if not 0.0 <= m.ema_decay < 1.0:
    raise ConfigError(f'config.model.ema_decay={m.ema_decay}: must be in [0, 1).')
  if m.quantizer in ('fsq', 'rfsq') and (not m.fsq_levels or min(m.fsq_levels) < 2):
    raise ConfigError(f'config.model.fsq_levels={m.fsq_levels}: FSQ needs a list of '
                      'levels >= 2 per channel, e.g. (8, 5, 5, 5).')
  if m.quantizer in ('rvq', 'rfsq') and m.rvq_stages < 1:
    raise ConfigError(f'config.model.rvq_stages={m.rvq_stages}: must be >= 1.')
  for field in ('kmeans_init', 'restart_after', 'dead_code_threshold'):
    if m[field] and not m.use_ema:
      raise ConfigError(f'config.model.{field}={m[field]} rewrites the codebook inside the '
                        'train step and needs config.model.use_ema=True.')
  if m.restart_after < 0 or m.lookup_dim < 0 or m.dead_code_threshold < 0:
    raise ConfigError('config.model.restart_after, lookup_dim and dead_code_threshold must '
                      'be >= 0.')
  if m.restart_after and m.dead_code_threshold:
    raise ConfigError(f'config.model.restart_after={m.restart_after} and dead_code_threshold='
                      f'{m.dead_code_threshold} are alternative dead-code restarts: set one.')
  codebook_options = ('rotation_trick', 'simvq', 'dead_code_threshold')
  for field in codebook_options + ('entropy_weight',):
    allowed = ('vq', 'rvq') + (('lfq', 'bsq') if field == 'entropy_weight' else ())
    if m[field] and m.quantizer not in allowed:
      raise ConfigError(f"config.model.{field}={m[field]} has no effect with quantizer="
                        f"'{m.quantizer}': use it with one of {allowed}.")
  if m.simvq and m.use_ema:
    raise ConfigError('config.model.simvq=True learns its code map W by gradient: set '
                      'config.model.use_ema=False.')
  if m.quantize_dropout and m.quantizer not in ('rvq', 'rfsq'):
    raise ConfigError(f"config.model.quantize_dropout=True drops residual stages: use "
                      f"quantizer='rvq' or 'rfsq', not '{m.quantizer}'.")
  if m.quantizer in ('lfq', 'bsq') and not 1 <= m.binary_bits <= 16:
    raise ConfigError(f'config.model.binary_bits={m.binary_bits}: must be in 1..16 '
                      '(2^bits codes, one-hot for the code statistics).')
  if m.entropy_weight < 0 or m.entropy_gamma < 0 or m.entropy_temperature <= 0:
    raise ConfigError(f'config.model.entropy_weight={m.entropy_weight} and entropy_gamma='
                      f'{m.entropy_gamma} must be >= 0, entropy_temperature='
                      f'{m.entropy_temperature} > 0.')


def build_model(config, data_info):
  m = config.model
  h, w, c = data_info.shape
  factor = 2 ** m.num_downsamples
  if h % factor or w % factor:
    raise ConfigError(
        f'config.model.num_downsamples={m.num_downsamples} needs image sides divisible by '
        f'{factor}, but the data is {h}x{w}; change config.data.image_size or num_downsamples.')
  return VQVAE(
      image_channels=c, hidden=m.hidden, res_hidden=m.res_hidden,
      num_res_blocks=m.num_res_blocks, num_downsamples=m.num_downsamples,
      vq=quantizers.QuantizerSpec.from_config(m), likelihood=m.likelihood,
      dtype=compute_dtype(config), upsample=resolve_upsample(m.upsample), arch=m.arch)


def codebook_size(m):
  """Number of distinct codes per latent (per stage for residual VQ)."""
  return quantizers.QuantizerSpec.from_config(m).codebook_size


def code_stages(m):
  return quantizers.QuantizerSpec.from_config(m).stages


def init_variables(model, rng, batch):
  return model.init({'params': rng}, batch['image'], train=False)


def _to_bins(x, num_levels):
  """[0, 1] pixels -> bin centres in [-1, 1] on num_levels levels."""
  b = jnp.round(x * (num_levels - 1))
  return 2.0 * b / (num_levels - 1) - 1.0


def _recon_terms(out, x, likelihood, train_variance, num_levels):
  """Per-example (B,) reconstruction NLL used in the loss, squared error of the
  reconstruction (the mean clipped to the data range [0, 1]), and that reconstruction."""
  axes = tuple(range(1, x.ndim))
  dec = out['decoder_out']
  if likelihood in ('gaussian', 'clipped_gaussian'):
    mean = jnp.clip(dec, 0.0, 1.0)
    fit = mean if likelihood == 'clipped_gaussian' else dec
    nll = jnp.mean(jnp.square(fit - x), axis=axes) / train_variance
  else:
    c = x.shape[-1]
    mean_m11, log_scale = dec[..., :c], dec[..., c:]
    logp = distributions.discretized_logistic_log_prob(
        _to_bins(x, num_levels), mean_m11, log_scale, num_bins=num_levels)
    nll = -jnp.mean(logp, axis=axes)  # nats per dimension
    mean = (jnp.clip(mean_m11, -1.0, 1.0) + 1.0) / 2.0
  sq_err = jnp.mean(jnp.square(mean - x), axis=axes)
  return nll, sq_err, mean


def make_loss_fn(config, model, data_info):
  """The VQ-VAE objective; also serves VQ-VAE-2, whose output has per-level 'levels'."""
  likelihood = config.model.likelihood
  variance = float(data_info.train_variance)
  levels = int(data_info.num_levels)
  entropy = config.model.entropy_weight > 0

  def loss_fn(params, model_state, batch, rng, step):
    del step
    x = batch['image']
    variables = {'params': params, **model_state}
    # The 'vq' rng is drawn only by k-means initialisation, dead-code restarts and
    # quantize dropout.
    if model_state:
      out, new_state = model.apply(variables, x, train=True, mutable=list(model_state),
                                   rngs={'vq': rng})
    else:
      out, new_state = model.apply(variables, x, train=True, rngs={'vq': rng}), model_state
    nll, sq_err, _ = _recon_terms(out, x, likelihood, variance, levels)
    recon = jnp.mean(nll)
    loss = recon + out['codebook_loss'] + out['commitment_loss']
    if entropy:  # lambda (E[H(q(k|z))] - gamma H(E[q(k|z)])), a batch term (not in eval)
      loss = loss + out['entropy_loss']
    metrics = dict(
        loss=loss, recon_loss=recon, recon_mse=jnp.mean(sq_err),
        normalized_mse=jnp.mean(sq_err) / variance,
        codebook_loss=out['codebook_loss'], commitment_loss=out['commitment_loss'],
        restarted_codes=out['restarted_codes'])
    if entropy:
      metrics['entropy_loss'] = out['entropy_loss']
    if 'levels' in out:  # VQ-VAE-2: one codebook per level
      for l, o in enumerate(out['levels']):
        metrics[f'perplexity_level_{l}'] = o['perplexity']
    else:
      metrics['perplexity'] = out['perplexity']
    return loss, (metrics, new_state)

  return loss_fn


SSIM_WINDOW = 11      # Wang et al. (2004): an 11x11 Gaussian window, sigma 1.5
PSNR_CAP_DB = 100.0   # the PSNR of a perfect reconstruction (infinite) is counted as this


def ssim_window(height, width):
  """SSIM's window side: 11, or the largest odd side that fits smaller images (7 on the
  8x8 digits)."""
  side = min(SSIM_WINDOW, height, width)
  return side if side % 2 else side - 1


def image_quality(x, mean):
  """Per-image PSNR (dB, peak 1, capped at PSNR_CAP_DB) and SSIM (`ssim_window`) of the
  reconstruction `mean`, clipped to [0, 1], against x (B, H, W, C) in [0, 1] (dm-pix)."""
  mean = jnp.clip(mean, 0.0, 1.0)
  psnr = jnp.minimum(pix.psnr(x, mean), PSNR_CAP_DB)
  ssim = pix.ssim(x, mean, max_val=1.0, filter_size=ssim_window(*x.shape[1:3]))
  return psnr, ssim


def _eval_batch_fn(model, likelihood, variance, levels):
  def fn(variables, batch, rng):
    del rng  # deterministic: nearest-code quantisation
    x = batch['image']
    w = batch['valid'].astype(jnp.float32)
    out = model.apply(variables, x, train=False)
    nll, sq_err, mean = _recon_terms(out, x, likelihood, variance, levels)
    psnr, ssim = image_quality(x, mean)
    codebook, commit = out['codebook_loss_per_example'], out['commitment_loss_per_example']
    return dict(
        loss=jnp.sum(w * (nll + codebook + commit)),
        recon_nll=jnp.sum(w * nll), sq_err=jnp.sum(w * sq_err),
        psnr=jnp.sum(w * psnr), ssim=jnp.sum(w * ssim),
        commitment_loss=jnp.sum(w * commit), count=jnp.sum(w),
        code_counts=[jnp.einsum('b,bnk->k', w, o['one_hot'].reshape(x.shape[0], -1,
                                                                    o['one_hot'].shape[-1]))
                     for o in out.get('levels', [out])])
  return fn


def eval_stats(config, model, data_info):
  """Per-batch sums: loss, recon_nll, sq_err, psnr, ssim, commitment_loss, count, and the
  code counts of each codebook (one per level for VQ-VAE-2)."""
  return _eval_batch_fn(model, config.model.likelihood, float(data_info.train_variance),
                        int(data_info.num_levels))


def code_use_metrics(counts, suffix=''):
  """perplexity (exp entropy of the average code use over the split), codebook_usage
  (fraction of codes used at least once), dead_codes (never used)."""
  probs = counts / counts.sum()
  return {f'perplexity{suffix}': float(np.exp(-np.sum(probs * np.log(probs + 1e-10)))),
          f'codebook_usage{suffix}': float(np.mean(counts > 0)),
          f'dead_codes{suffix}': float(np.sum(counts == 0))}


def reconstruction_metrics(config, data_info, totals, latents):
  """loss, recon_mse, normalized_mse, psnr and ssim (means over the images of
  `image_quality`), commitment_loss; for 'logistic' also the decoder NLL in bits per
  dimension and bits_per_dim_uniform_prior, with a uniform prior over the `latents`
  codes: -log p(z) = latents * log K."""
  n = totals['count']
  mse = totals['sq_err'] / n
  variance = float(data_info.train_variance)
  metrics = {'loss': totals['loss'] / n, 'recon_mse': mse, 'normalized_mse': mse / variance,
             'psnr': totals['psnr'] / n, 'ssim': totals['ssim'] / n,
             'commitment_loss': totals['commitment_loss'] / n}
  if config.model.likelihood == 'logistic':
    h, w, c = data_info.shape
    metrics['decoder_nll_bits_per_dim'] = totals['recon_nll'] / n / np.log(2.0)
    metrics['bits_per_dim_uniform_prior'] = (
        metrics['decoder_nll_bits_per_dim']
        + latents * np.log2(codebook_size(config.model)) / (h * w * c))
  return {k: float(v) for k, v in metrics.items()}


def eval_metrics(config, data_info, totals):
  """Whole-split metrics: `reconstruction_metrics` and `code_use_metrics` of the
  codebook (over all code stages of a residual quantiser)."""
  m = config.model
  h, w, _ = data_info.shape
  latents = (h // 2 ** m.num_downsamples) * (w // 2 ** m.num_downsamples) * code_stages(m)
  return {**reconstruction_metrics(config, data_info, totals, latents),
          **code_use_metrics(totals['code_counts'][0])}


def save_reconstructions(ctx, host_batch, reconstruct):
  """prefix+reconstructions.png: (data, reconstruction) pairs of the first batch."""
  k = min(ctx.config.eval.num_images // 2, len(host_batch['image']))
  x = np.asarray(host_batch['image'])[:k]
  xr = np.asarray(jax.device_get(reconstruct(ctx.variables, jnp.asarray(x))))
  pairs = np.stack([x, xr], 1).reshape((-1,) + x.shape[1:])  # original, reconstruction
  plotting.save_image_grid(
      fs.join(ctx.image_dir, f'{ctx.image_prefix}reconstructions.png'), pairs, ncols=16)


# The arguments before `variables` are static: jit compiles once per model and shape.
@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _reconstruct(model, likelihood, variance, levels, variables, x):
  out = model.apply(variables, x, train=False)
  return _recon_terms(out, x, likelihood, variance, levels)[2]


def eval_images(ctx, host_batch):
  save_reconstructions(ctx, host_batch, functools.partial(
      _reconstruct, ctx.model, ctx.config.model.likelihood,
      float(ctx.data_info.train_variance), int(ctx.data_info.num_levels)))


def prior_interface(config, model, data_info):
  """What a learned prior over this model's codes needs (see vaes/data/codes.py).

  Returns dict(levels=[(h, w)], num_codes=[K], encode, decode):
    encode(variables, x) -> ([k* (B, h, w)], decoder NLL -log p(x | z_q(x)) (B,) in
      nats summed over the D dimensions; NaN unless the likelihood is 'logistic'),
    decode(variables, [k* (B, h, w)]) -> decoder mean images in [0, 1].
  """
  m = config.model
  if code_stages(m) > 1:
    raise ConfigError(f"config.model.quantizer='{m.quantizer}': a prior over residual "
                      "codes is not supported; use 'vq' or 'fsq' for the first stage.")
  h, w, c = data_info.shape
  f = 2 ** m.num_downsamples
  levels = int(data_info.num_levels)
  variance = float(data_info.train_variance)
  dims = h * w * c

  def encode(variables, x):
    out = model.apply(variables, x, train=False)
    nll, _, _ = _recon_terms(out, x, m.likelihood, variance, levels)
    nll = nll * dims if m.likelihood == 'logistic' else jnp.full_like(nll, jnp.nan)
    return [out['indices'].astype(jnp.int32)], nll

  def decode(variables, codes):
    dec = model.apply(variables, codes[0], method=VQVAE.decode_indices)
    if m.likelihood == 'logistic':
      return (jnp.clip(dec[..., :c], -1.0, 1.0) + 1.0) / 2.0
    return jnp.clip(dec, 0.0, 1.0)

  return dict(levels=[(h // f, w // f)], num_codes=[codebook_size(m)], encode=encode,
              decode=decode)


register_family(ModelFamily(
    name='vqvae', build_model=build_model, init_variables=init_variables,
    make_loss_fn=make_loss_fn, eval_stats=eval_stats, eval_metrics=eval_metrics,
    eval_images=eval_images, validate_config=validate_config,
    implementation_fields=IMPLEMENTATION_FIELDS, prior_interface=prior_interface))
