"""The VQ-VAE family (vaes/families/vqvae.py, vaes/models/vqvae.py) and its configs:
every quantiser option is a config.model field that builds and traces, the entropy loss
enters the training loss only when weighted, bad values are one-line config errors,
codebook restarts are the same on 1 and 8 devices (configs/vqvae_codebook.py), and
model.upsample='auto' resolves per backend."""

import jax
import jax.numpy as jnp
import pytest

from tests.helpers import assert_same_on_1_and_8_devices, load_config
from vaes import data as data_lib
from vaes.families.vqvae import _recon_terms, build_model, resolve_upsample
from vaes.preflight import validate_config
from vaes.registry import ConfigError, get_family


TINY_CB = {'batch_size': 32, 'model.hidden': 16, 'model.res_hidden': 8,
           'model.num_codes': 64, 'model.restart_after': 1, 'model.kmeans_init': True,
           'model.kmeans_iters': 3, 'data.image_size': 8, 'eval.batch_size': 128}


def test_restarts_are_identical_on_1_and_8_devices(tmp_path):
  one, eight = assert_same_on_1_and_8_devices('configs/vqvae_codebook.py', TINY_CB, tmp_path,
                                              num_steps=3)
  # Restarts did happen within the steps (and k-means ran at the first one).
  assert sum(m['restarted_codes'] for m in one['metrics']) > 0
  assert any('steps_unused' in k for k in one['leaves'])
  init_flag = [v for k, v in one['leaves'].items() if 'initialized' in k]
  assert init_flag and int(init_flag[0]) == 1


# ----------------------------------------------------------------------------
# Each option is a config.model field of configs/vqvae.py, checked and wired.
# ----------------------------------------------------------------------------


OPTION_CASES = [
    {'model.rotation_trick': True},
    {'model.simvq': True, 'model.use_ema': False},
    {'model.dead_code_threshold': 2.0},
    {'model.quantizer': 'lfq', 'model.binary_bits': 4, 'model.entropy_weight': 0.1},
    {'model.quantizer': 'bsq', 'model.binary_bits': 4, 'model.entropy_weight': 0.1},
    {'model.entropy_weight': 0.1, 'model.entropy_gamma': 2.0, 'model.entropy_temperature': 0.5},
    {'model.quantizer': 'rvq', 'model.rvq_stages': 2, 'model.quantize_dropout': True},
    {'model.quantizer': 'rfsq', 'model.rvq_stages': 2, 'model.quantize_dropout': True},
]


def _vqvae_case(overrides):
  config = load_config('configs/vqvae.py', {'model.hidden': 8, 'model.res_hidden': 4,
                                            **overrides})
  family = get_family(config.model.name)
  validate_config(config, family, num_devices=1)
  info = data_lib.DataInfo(kind='image', shape=(8, 8, 1), train_variance=0.05, num_levels=17,
                           num_train=64)
  batch = {'image': jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 1))}
  return config, family, info, batch


def test_each_option_is_a_config_field_that_builds_and_traces():
  for overrides in OPTION_CASES:
    config, family, info, batch = _vqvae_case(overrides)
    model = family.build_model(config, info)
    spec = model.vq
    for key, value in overrides.items():
      assert getattr(spec, key.split('.')[1]) == value, key
    variables = jax.eval_shape(lambda r, b: family.init_variables(model, r, b),
                               jax.random.PRNGKey(0), batch)
    state = {k: v for k, v in variables.items() if k != 'params'}
    loss_fn = family.make_loss_fn(config, model, info)
    loss, (metrics, new_state) = jax.eval_shape(loss_fn, variables['params'], state, batch,
                                                jax.random.PRNGKey(1), jnp.int32(0))
    assert loss.shape == () and jax.tree.structure(new_state) == jax.tree.structure(state)
    assert ('entropy_loss' in metrics) == (config.model.entropy_weight > 0), overrides


def test_the_entropy_loss_enters_the_training_loss_only_when_weighted():
  class Stub:   # a model whose quantiser terms are known: decoder output = x (zero NLL)
    def apply(self, variables, x, train, rngs):
      one = jnp.ones((), jnp.float32)
      return dict(decoder_out=x, codebook_loss=1.0 * one, commitment_loss=2.0 * one,
                  entropy_loss=-0.5 * one, restarted_codes=0.0 * one, perplexity=one)
  for weight, expected in ((0.0, 3.0), (0.1, 2.5)):
    config, family, info, batch = _vqvae_case({'model.entropy_weight': weight})
    loss, (metrics, _) = family.make_loss_fn(config, Stub(), info)(
        {}, {}, batch, jax.random.PRNGKey(1), jnp.int32(0))
    assert float(loss) == expected
    assert ('entropy_loss' in metrics) == (weight > 0)


def test_bad_option_values_are_one_line_config_errors():
  bad = [
      ({'model.simvq': True}, 'use_ema=False'),
      ({'model.simvq': True, 'model.use_ema': False, 'model.quantizer': 'fsq'}, 'no effect'),
      ({'model.rotation_trick': True, 'model.quantizer': 'lfq'}, 'no effect'),
      ({'model.dead_code_threshold': 1.0, 'model.use_ema': False}, 'use_ema=True'),
      ({'model.dead_code_threshold': 1.0, 'model.restart_after': 5}, 'set one'),
      ({'model.dead_code_threshold': -1.0}, '>= 0'),
      ({'model.quantize_dropout': True}, "'rvq' or 'rfsq'"),
      ({'model.quantizer': 'lfq', 'model.binary_bits': 0}, 'binary_bits=0'),
      ({'model.quantizer': 'bsq', 'model.binary_bits': 17}, 'binary_bits=17'),
      ({'model.entropy_weight': -0.1}, 'entropy_weight=-0.1'),
      ({'model.entropy_weight': 0.1, 'model.entropy_temperature': 0.0}, 'entropy_temperature'),
      ({'model.entropy_weight': 0.1, 'model.quantizer': 'fsq'}, 'no effect'),
      ({'model.quantizer': 'rfsq', 'model.rvq_stages': 0}, 'rvq_stages=0'),
      ({'model.quantizer': 'rfsq', 'model.fsq_levels': (4, 1)}, 'fsq_levels'),
      ({'model.quantizer': 'xq'}, 'choose one of'),
  ]
  for overrides, words in bad:
    with pytest.raises(ConfigError, match=words.replace('(', r'\(').replace(')', r'\)')) as e:
      _vqvae_case(overrides)
    assert '\n' not in str(e.value), str(e.value)


# ----------------------------------------------------------------------------
# The decoder's transposed convolutions (vaes/models/layers.py).
# ----------------------------------------------------------------------------


def test_auto_upsample_is_phases_on_the_cpu_and_subpixel_elsewhere():
  assert resolve_upsample('auto', 'cpu') == 'phases'
  assert resolve_upsample('auto', 'gpu') == resolve_upsample('auto', 'tpu') == 'subpixel'
  assert resolve_upsample('transpose', 'cpu') == 'transpose'
  config = load_config('configs/vqvae.py')
  assert config.model.upsample == 'auto'
  model = build_model(config, data_lib.get_datasets(config).info)
  assert model.upsample == ('phases' if jax.default_backend() == 'cpu' else 'subpixel')


# --- model.arch='pool': vector-quantize-pytorch's example model ---------------------------

def test_pool_arch_is_the_librarys_example_layer_for_layer():
  config = load_config('configs/vqvae_fashion_mnist.py')
  info = data_lib.DataInfo(kind='image', shape=(28, 28, 1), train_variance=0.12)
  model = build_model(config, info)
  variables = jax.eval_shape(model.init, {'params': jax.random.PRNGKey(0)},
                             jnp.zeros((2, 28, 28, 1)))
  shapes = jax.tree.map(lambda a: a.shape, variables['params'])
  # Conv2d(1,16,3) Conv2d(16,32,3) | Conv2d(32,16,3) Conv2d(16,1,3), HWIO kernels.
  assert shapes['encoder'] == {'Conv_0': {'kernel': (3, 3, 1, 16), 'bias': (16,)},
                               'Conv_1': {'kernel': (3, 3, 16, 32), 'bias': (32,)}}
  assert shapes['decoder'] == {'Conv_0': {'kernel': (3, 3, 32, 16), 'bias': (16,)},
                               'Conv_1': {'kernel': (3, 3, 16, 1), 'bias': (1,)}}
  assert sum(a.size for a in jax.tree.leaves(variables['params'])) == 9569
  out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, jnp.zeros((2, 28, 28, 1)))
  assert out['z_e'].shape == (2, 7, 7, 32) and out['decoder_out'].shape == (2, 28, 28, 1)


def test_max_pool_2x2_is_nn_max_pool():
  from flax import linen as nn
  from vaes.models.vqvae import max_pool_2x2
  h = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 6, 5))   # no ties
  pool = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
  assert jnp.array_equal(max_pool_2x2(h), pool(h))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 3, 5))
  grad = lambda f: jax.grad(lambda x: jnp.sum(w * f(x)))(h)
  assert jnp.array_equal(grad(max_pool_2x2), grad(pool))
  # Ties (a zero background convolved: common on Fashion-MNIST): each window's gradient
  # is split among its maxima only, in shares in [0, 1] that sum to 1.
  tied = jnp.round(h)
  g = jax.grad(lambda x: jnp.sum(w * max_pool_2x2(x)))(tied).reshape(3, 4, 2, 3, 2, 5)
  share = g / w[:, :, None, :, None, :]
  windows = tied.reshape(3, 4, 2, 3, 2, 5)
  is_max = windows == windows.max(axis=(2, 4), keepdims=True)
  assert int(jnp.sum(jnp.sum(is_max, axis=(2, 4)) > 1)) > 10          # ties were there
  assert bool(jnp.all(jnp.where(is_max, (share >= 0) & (share <= 1), share == 0)))
  assert jnp.allclose(jnp.sum(share, axis=(2, 4)), 1.0, atol=1e-6)


# --- PSNR and SSIM (dm-pix) against a brute-force computation ------------------------------

def _ssim_numpy(x, y, window, sigma=1.5, k1=0.01, k2=0.03):
  """Wang et al. (2004) per image, with loops: Gaussian-weighted local statistics over
  every valid window position, one channel at a time, averaged over positions and channels."""
  import numpy as np
  r = np.arange(window) - (window - 1) / 2
  g = np.exp(-r ** 2 / (2 * sigma ** 2))
  w2 = np.outer(g, g) / np.outer(g, g).sum()
  c1, c2 = k1 ** 2, k2 ** 2
  out = []
  for a, b in zip(np.asarray(x, np.float64), np.asarray(y, np.float64)):
    values = []
    for ch in range(a.shape[-1]):
      for i in range(a.shape[0] - window + 1):
        for j in range(a.shape[1] - window + 1):
          pa, pb = a[i:i + window, j:j + window, ch], b[i:i + window, j:j + window, ch]
          ma, mb = (w2 * pa).sum(), (w2 * pb).sum()
          va, vb = (w2 * pa * pa).sum() - ma ** 2, (w2 * pb * pb).sum() - mb ** 2
          cov = (w2 * pa * pb).sum() - ma * mb
          values.append((2 * ma * mb + c1) * (2 * cov + c2)
                        / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    out.append(np.mean(values))
  return np.array(out)


@pytest.mark.parametrize('shape,window', [((3, 14, 13, 1), 11), ((2, 8, 8, 2), 7)])
def test_psnr_and_ssim_match_a_brute_force_computation(shape, window):
  import numpy as np
  from vaes.families.vqvae import PSNR_CAP_DB, image_quality, ssim_window
  assert ssim_window(*shape[1:3]) == window
  x = jax.random.uniform(jax.random.PRNGKey(0), shape)
  noise = 0.1 * jax.random.normal(jax.random.PRNGKey(1), shape)
  recon = x + noise          # partly outside [0, 1]: image_quality clips it
  psnr, ssim = image_quality(x, recon)
  clipped = np.clip(np.asarray(recon, np.float64), 0, 1)
  mse = np.mean((clipped - np.asarray(x, np.float64)) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(psnr, -10 * np.log10(mse), rtol=1e-5)
  np.testing.assert_allclose(ssim, _ssim_numpy(x, clipped, window), atol=2e-5)
  same_psnr, same_ssim = image_quality(x, x)
  np.testing.assert_allclose(same_psnr, PSNR_CAP_DB)
  np.testing.assert_allclose(same_ssim, 1.0, atol=1e-6)


def test_fashion_config_trains_and_reports_psnr_and_ssim(tmp_path):
  """configs/vqvae_fashion_mnist.py (its data read as idx files of the same shapes):
  two train steps, then the evaluation reports psnr and ssim beside normalized_mse."""
  import numpy as np
  from tests.helpers import two_train_steps, write_idx_images
  from vaes.evaluation import evaluate_split
  rng = np.random.default_rng(0)
  path = write_idx_images(tmp_path, rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
                          rng.integers(0, 256, (12, 28, 28), dtype=np.uint8))
  config = load_config('configs/vqvae_fashion_mnist.py', {
      'batch_size': 8, 'eval.batch_size': 8, 'data.name': 'idx_images', 'data.path': path})
  splits, trainer, state, losses = two_train_steps(config)
  assert np.isfinite(losses[-1])
  metrics = evaluate_split(get_family('vqvae'), config, trainer.model,
                           {'params': state.params, **state.model_state}, splits.eval,
                           splits.info, jax.random.PRNGKey(0), trainer.put, progress=False)
  assert 0 < metrics['psnr'] < 100 and -1 <= metrics['ssim'] <= 1
  assert np.isfinite(metrics['normalized_mse']) and 0 < metrics['codebook_usage'] <= 1


# --- likelihoods: what the loss fits and what MSE / PSNR score -----------------------------

def test_gaussian_likelihoods_fit_and_score_by_hand():
  """x = (0, .5, 1, .2), decoder output (-.3, .7, 1.4, .1), training variance .25.
  'gaussian' fits the raw output: mean((.3, .2, .4, .1)^2) / .25 = .3; 'clipped_gaussian'
  fits (0, .7, 1, .1): mean((0, .2, 0, .1)^2) / .25 = .05. Both score the clipped image:
  squared error .0125."""
  x = jnp.array([0.0, 0.5, 1.0, 0.2]).reshape(1, 2, 2, 1)
  dec = jnp.array([-0.3, 0.7, 1.4, 0.1]).reshape(1, 2, 2, 1)
  terms = lambda lik, d: _recon_terms({'decoder_out': d}, x, lik, 0.25, 256)
  for lik, nll in (('gaussian', 0.3), ('clipped_gaussian', 0.05)):
    got_nll, sq_err, mean = terms(lik, dec)
    assert got_nll.shape == sq_err.shape == (1,)
    assert abs(float(got_nll[0]) - nll) < 1e-6, lik
    assert abs(float(sq_err[0]) - 0.0125) < 1e-7, lik
    assert jnp.allclose(mean.ravel(), jnp.array([0.0, 0.7, 1.0, 0.1]))
  # Outputs beyond the data range get no gradient from the clipped fit, all do from the raw.
  grad = lambda lik: jax.grad(lambda d: terms(lik, d)[0].sum())(dec).ravel()
  assert jnp.array_equal(grad('clipped_gaussian') == 0, jnp.array([True, False, True, False]))
  assert bool(jnp.all(grad('gaussian') != 0))


def test_clipped_gaussian_is_a_known_likelihood_and_others_are_refused():
  config = load_config('configs/vqvae.py')
  config.model.likelihood = 'clipped_gaussian'
  validate_config(config, get_family('vqvae'))
  config.model.likelihood = 'laplace'
  with pytest.raises(ConfigError, match="likelihood='laplace'"):
    validate_config(config, get_family('vqvae'))
