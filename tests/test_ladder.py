"""Hierarchical / Ladder VAE: merge, KLs, importance-weighted bound, active units,
batch norm. Tiny models, called directly (no engine); see test_ladder_engine.py
for the CLI and the 8-device step."""

import copy
import functools
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import load_config, model_fields
from vaes import data as data_lib
from vaes import distributions as dist
from vaes import objectives
from vaes.families import ladder as family
from vaes.models import ladder as ladder_model
from vaes.registry import ConfigError, get_family
from vaes.evaluation import evaluate_split

TINY = {'model.latent_sizes': (4, 3), 'model.hidden_sizes': (16, 8), 'model.batch_norm': False,
        'batch_size': 32, 'eval.batch_size': 128, 'eval.num_images': 8}


@functools.lru_cache(maxsize=None)
def _cached_setup(inference, overrides):
  path = 'configs/lvae.py' if inference == 'ladder' else 'configs/hvae.py'
  config = load_config(path, {**TINY, **dict(overrides)})
  fam = get_family(config.model.name)
  splits = data_lib.get_datasets(config)
  model = fam.build_model(config, splits.info)
  batch = jax.tree.map(jnp.asarray, next(splits.train.iterate(0)))
  variables = jax.jit(lambda rng, b: fam.init_variables(model, rng, b))(jax.random.PRNGKey(0),
                                                                         batch)
  return config, fam, splits, model, batch, variables


def tiny_setup(inference='ladder', overrides=None):
  """(config, family, splits, model, first train batch, variables), a fresh copy each call."""
  config, fam, splits, model, batch, variables = _cached_setup(
      inference, tuple(sorted((overrides or {}).items())))
  variables = flax.core.unfreeze(jax.tree.map(lambda v: v, variables))
  return copy.deepcopy(config), fam, splits, model, batch, variables


def evaluate(config, fam, model, variables, splits, rng=0):
  """The engine's evaluation loop over the whole eval split, on one device."""
  return evaluate_split(fam, config, model, variables, splits.eval, splits.info,
                        jax.random.PRNGKey(rng), lambda b: jax.tree.map(jnp.asarray, b))


# -----------------------------------------------------------------------------
# Precision-weighted merge and KL.
# -----------------------------------------------------------------------------


def test_precision_weighted_merge_equals_product_of_gaussians_on_a_grid():
  """N(mu_a, s_a^2) N(mu_b, s_b^2), normalised numerically on a grid, has the merge's moments."""
  grid = np.linspace(-30.0, 30.0, 600001)
  dx = grid[1] - grid[0]
  rng = np.random.default_rng(0)
  for _ in range(5):
    mu_a, mu_b = rng.normal(0, 2, size=2)
    lv_a, lv_b = rng.uniform(-2, 2, size=2)
    log_prod = (dist.gaussian_log_prob(grid, mu_a, lv_a) + dist.gaussian_log_prob(grid, mu_b, lv_b))
    log_prod = np.asarray(log_prod, np.float64)
    dens = np.exp(log_prod - log_prod.max())
    dens /= dens.sum() * dx
    mean = (grid * dens).sum() * dx
    var = ((grid - mean) ** 2 * dens).sum() * dx
    mu_q, lv_q = dist.precision_weighted_merge(mu_a, lv_a, mu_b, lv_b)
    np.testing.assert_allclose(float(mu_q), mean, atol=1e-4)
    np.testing.assert_allclose(float(np.exp(lv_q)), var, rtol=1e-4)
    # The merged density itself, not only its moments.
    np.testing.assert_allclose(np.exp(np.asarray(dist.gaussian_log_prob(grid, mu_q, lv_q))), dens,
                               atol=1e-4 * dens.max())


def test_ladder_posterior_is_merge_of_bottom_up_and_top_down_prior():
  """In 'ladder' mode q(z_l | z_l+1, x) is the precision-weighted merge of (mu_hat_l, s_hat_l)
  from the bottom-up pass and p(z_l | z_l+1); the top layer uses (mu_hat_L, s_hat_L)."""
  config, _, _, model, batch, variables = tiny_setup('ladder')
  x = batch['image']
  noise = ladder_model.draw_noise(model, jax.random.PRNGKey(1), x.shape[:1], x.shape[1:])

  def bottom_up(m, x):
    h, heads = m._bottom_up_input(x), []
    for up, head in zip(m.up, m.head):
      h = up(h, False)
      heads.append(head(h))
    return heads

  @jax.jit
  def run(variables):
    out = model.apply(variables, x, noise)
    heads = model.apply(variables, x, method=bottom_up)
    _, prior = model.apply(variables, 1, out['layers'][1]['z'], method=model.top_down)
    return out, heads, prior

  out, heads, p = run(variables)
  layers = out['layers']
  np.testing.assert_allclose(layers[-1]['q_mean'], heads[-1][0], rtol=1e-6)
  np.testing.assert_allclose(layers[-1]['q_logvar'], heads[-1][1], rtol=1e-6)
  mu_q, lv_q = dist.precision_weighted_merge(*heads[0], layers[0]['p_mean'], layers[0]['p_logvar'])
  np.testing.assert_allclose(layers[0]['q_mean'], mu_q, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(layers[0]['q_logvar'], lv_q, rtol=1e-5, atol=1e-6)
  # The prior of z_1 is computed from the sampled z_2 through the shared top-down path.
  np.testing.assert_allclose(layers[0]['p_mean'], p[0], rtol=1e-6)
  # And z_l = mu_q + s_q eps_l.
  np.testing.assert_allclose(layers[0]['z'], mu_q + np.exp(0.5 * lv_q) * noise[0], rtol=1e-5,
                             atol=1e-6)


def test_unshared_top_down_copied_from_the_prior_is_the_shared_model():
  """share_top_down=False (the authors' -ladder_share_params False): the merge's own
  top-down path (q_down, q_head) with the prior's weights copied into it gives the shared
  model's every output; other weights change q(z_1 | .) but neither p(z_1 | z_2) at a
  given z_2 nor the generative model's samples, and the KL has gradients in both paths."""
  config, fam, _, model, batch, variables = tiny_setup('ladder', {'model.batch_norm': True})
  config_u, _, _, model_u, _, variables_u = tiny_setup(
      'ladder', {'model.batch_norm': True, 'model.share_top_down': False})
  params_u = variables_u['params']
  assert {'q_down_0', 'q_head_0'} <= set(params_u) and 'q_down_0' not in variables['params']
  x = batch['image']
  noise = ladder_model.draw_noise(model, jax.random.PRNGKey(1), x.shape[:1], x.shape[1:])
  copied = {**variables, 'params': {**variables['params'],
                                    'q_down_0': variables['params']['down_0'],
                                    'q_head_0': variables['params']['prior_head_0']},
            'batch_stats': {**variables['batch_stats'],
                            'q_down_0': variables['batch_stats']['down_0']}}
  for train in (False, True):
    out, _ = model.apply(variables, x, noise, train=train, mutable=['batch_stats'])
    out_u, _ = model_u.apply(copied, x, noise, train=train, mutable=['batch_stats'])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
                 out, out_u)
  other = {**copied, 'params': {**copied['params'],
                                'q_head_0': variables_u['params']['q_head_0']}}
  out = model_u.apply(copied, x, noise)['layers']
  out_o = model_u.apply(other, x, noise)['layers']
  assert np.abs(out_o[0]['q_mean'] - out[0]['q_mean']).max() > 1e-3
  np.testing.assert_array_equal(out_o[1]['z'], out[1]['z'])     # z_2: the bottom-up head
  np.testing.assert_array_equal(out_o[0]['p_mean'], out[0]['p_mean'])
  eps = ladder_model.draw_noise(model, jax.random.PRNGKey(2), (5,), x.shape[1:])
  np.testing.assert_array_equal(model_u.apply(other, eps, method=model_u.sample)['logits'],
                                model_u.apply(copied, eps, method=model_u.sample)['logits'])
  np.testing.assert_array_equal(  # the shared model samples the same from the same weights
      model.apply(variables, eps, method=model.sample)['logits'],
      model_u.apply(copied, eps, method=model_u.sample)['logits'])

  def kl(params):
    layers = model_u.apply({**variables_u, 'params': params}, x, noise)['layers']
    return family.layer_kls('ladder', layers).sum()
  grads = jax.grad(kl)(params_u)
  for name in ('q_head_0', 'prior_head_0', 'q_down_0', 'down_0'):
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads[name])) > 0, name


def test_up_from_mean_feeds_each_bottom_up_block_the_mean_below():
  """up_from_mean (the authors' -only_mu_up True): d_1 = up_1(x), d_l = up_l(mu_hat_l-1),
  so the top layer's q is head_L(up_L(mu_hat_L-1)) computed by hand, and up_2 reads
  n_1 = 4 features (not d_1's 16)."""
  _, _, _, model, batch, variables = tiny_setup('ladder', {'model.up_from_mean': True})
  assert variables['params']['up_1']['Dense_0']['kernel'].shape[0] == 4
  x = batch['image']
  noise = ladder_model.draw_noise(model, jax.random.PRNGKey(1), x.shape[:1], x.shape[1:])

  def by_hand(m, x):
    mu_1, _ = m.head[0](m.up[0](m._bottom_up_input(x), False))
    return m.head[1](m.up[1](mu_1, False))

  top = model.apply(variables, x, noise)['layers'][-1]
  mu_2, lv_2 = model.apply(variables, x, method=by_hand)
  np.testing.assert_allclose(top['q_mean'], mu_2, rtol=1e-6)
  np.testing.assert_allclose(top['q_logvar'], lv_2, rtol=1e-6)


def test_head_batch_norm_normalises_every_gaussian_head_in_training():
  """head_batch_norm (the authors' BN'd `denselayer` heads): in train mode each unit of
  the top layer's q mean (a head output, no merge) has batch mean 0 and variance 1 at
  initialisation; the heads' linear maps lose their bias (BatchNorm's offset replaces it);
  eval mode uses the running averages the train step updated."""
  _, _, _, model, batch, variables = tiny_setup('ladder', {'model.head_batch_norm': True})
  params = variables['params']
  for name in ('head_0', 'head_1', 'prior_head_0'):
    assert set(params[name]) == {'mean', 'var', 'mean_bn', 'var_bn'}, name
    assert 'bias' not in params[name]['mean']
  x = batch['image']
  noise = ladder_model.draw_noise(model, jax.random.PRNGKey(1), x.shape[:1], x.shape[1:])
  out, state = model.apply(variables, x, noise, train=True, mutable=['batch_stats'])
  top = np.asarray(out['layers'][-1]['q_mean'])
  np.testing.assert_allclose(top.mean(0), 0.0, atol=1e-5)
  # v / (v + eps) for the pre-normalisation variance v (eps = 1e-5): within 1% of 1 here
  np.testing.assert_allclose(top.var(0), 1.0, rtol=0.02)
  before = model.apply(variables, x, noise)['layers'][-1]['q_mean']
  after = model.apply({**variables, **state}, x, noise)['layers'][-1]['q_mean']
  assert np.abs(np.asarray(after) - np.asarray(before)).max() > 1e-3


def test_closed_form_kl_matches_monte_carlo():
  rng = np.random.default_rng(1)
  mq, mp = rng.normal(size=(2, 6))
  lq, lp = rng.uniform(-1.5, 1.5, size=(2, 6))
  z = mq + np.exp(0.5 * lq) * rng.normal(size=(400000, 6))
  mc = np.mean(np.asarray(dist.gaussian_log_prob(z, mq, lq) - dist.gaussian_log_prob(z, mp, lp)),
               axis=0)
  np.testing.assert_allclose(np.asarray(dist.gaussian_kl(mq, lq, mp, lp)), mc, atol=0.02)


@functools.lru_cache(maxsize=None)
def _posterior_pool(inference, num=1000):
  """A tiny model whose q means are scaled up (q farther from the posterior), and for every
  eval example `num` posterior samples: log w, the closed-form-KL ELBO terms, the per-layer
  KLs (S, L, B) and the per-layer Monte Carlo log-ratios log q(z_l | .) - log p(z_l | z_l+1)."""
  config, fam, splits, model, _, variables = tiny_setup(inference)
  for head in variables['params']['head_0'], variables['params']['head_1']:
    head['mean']['kernel'] = head['mean']['kernel'] * 4.0
  x = jnp.asarray(np.concatenate([b['image'][b['valid']] for b in splits.eval]))

  @jax.jit
  def pool(variables, rng):
    noise = ladder_model.draw_noise(model, rng, (num, x.shape[0]), x.shape[1:])
    out = jax.vmap(lambda eps: model.apply(variables, x, eps))(noise)
    log_px = jax.vmap(lambda p: family.log_likelihood('bernoulli', x, p, 2))(out['x'])
    kls = jax.vmap(lambda ls: family.layer_kls(inference, ls))(out['layers'])     # (S, L, B)
    ratio = jnp.stack([
        (dist.gaussian_log_prob(l['z'], l['q_mean'], l['q_logvar'])
         - dist.gaussian_log_prob(l['z'], l['p_mean'], l['p_logvar'])).reshape(num, x.shape[0],
                                                                                 -1).sum(-1)
        for l in out['layers']], axis=1)                                          # (S, L, B)
    log_w = jax.vmap(family.log_weight)(out['layers'], log_px)                     # (S, B)
    return {'log_w': log_w, 'elbo': log_px - kls.sum(1), 'kls': kls, 'ratio': ratio}

  out = jax.tree.map(lambda v: np.asarray(v, np.float64), pool(variables, jax.random.PRNGKey(7)))
  return config, fam, splits, model, variables, out


@pytest.mark.parametrize('inference', ['ladder', 'hierarchical'])
def test_model_layer_kls_match_monte_carlo_log_ratio(inference):
  """E_q[layer_kls] (closed form where available) = E_q[log q(z_l | .) - log p(z_l | z_l+1)]:
  in 'ladder' mode every layer's KL is closed form, in 'hierarchical' mode the top one."""
  pool = _posterior_pool(inference)[-1]
  kls, ratio = pool['kls'].mean(-1), pool['ratio'].mean(-1)          # (S, L), mean over x
  se = (ratio - kls).std(0) / math.sqrt(len(kls))
  assert np.all(kls.mean(0) > 0.1)
  np.testing.assert_array_less(np.abs(kls.mean(0) - ratio.mean(0)), 4 * se + 1e-4)
  top_differs = np.abs(kls - ratio)[:, -1].max() > 0.01             # closed form != one sample
  assert top_differs


# -----------------------------------------------------------------------------
# Importance-weighted bound.
# -----------------------------------------------------------------------------


@pytest.mark.parametrize('inference', ['ladder', 'hierarchical'])
def test_elbo_below_iw_bound_which_grows_with_k(inference):
  """On the eval split, with 1000 posterior samples per example: IW_k (mean over disjoint
  groups of k) grows with k; IW_1 estimates the ELBO computed with closed-form KLs;
  evaluate() (chunked, with a masked partial chunk) agrees with the pool."""
  config, fam, splits, model, variables, pool = _posterior_pool(inference)
  config = copy.deepcopy(config)
  log_w, elbo = pool['log_w'], pool['elbo']
  num = len(log_w)
  iw = {}
  for k in (1, 10, 100, 1000):
    groups = log_w.reshape(num // k, k, -1)
    per_group = (np.logaddexp.reduce(groups, axis=1) - math.log(k)).mean(-1)   # over examples
    iw[k] = per_group.mean()
    if k == 100:
      iw100_se = per_group.std() / math.sqrt(len(per_group))
  elbo_mean, elbo_se = elbo.mean(), elbo.mean(-1).std() / math.sqrt(num)
  assert elbo_mean < iw[1000] - 0.3
  assert iw[1] < iw[10] < iw[100] < iw[1000], iw
  assert abs(iw[1] - elbo_mean) < 4 * (log_w.mean(-1).std() / math.sqrt(num) + elbo_se)

  config.eval.num_importance_samples = 100
  config.eval.iw_chunk_size = 30       # 3 full chunks + a masked partial one
  r = evaluate(config, fam, model, variables, splits)
  assert r['neg_elbo'] > r['nll'] + 0.3
  assert abs(-r['nll'] - iw[100]) < 6 * iw100_se + 0.05, (r['nll'], iw[100], iw100_se)
  assert abs(-r['neg_elbo'] - elbo_mean) < 6 * math.sqrt(10) * elbo_se + 0.02
  assert r['bits_per_dim'] == pytest.approx(r['nll'] / (64 * math.log(2)))
  assert r['neg_elbo'] == pytest.approx(r['recon_nll'] + r['kl'], rel=1e-6)
  assert r['kl'] == pytest.approx(r['kl_layer_1'] + r['kl_layer_2'], rel=1e-6)


def _linear_gaussian(inference):
  """p(z_2) = N(0, I), p(z_1 | z_2) = N(z_2 A + a, v_1 I), p(x | z_1) = N(z_1 B + b, v_0 I).

  The model with block_depth=0, linear activations and the variance maps zeroed is
  exactly this, so log p(x) = log N(x; a B + b, B^T (A^T A + v_1 I) B + v_0 I). The
  inference side keeps (scaled-down) linear means and broad constant variances
  (s^2 = 4), a proposal far from exact (ELBO gap > 1 nat) that still covers the posterior.
  """
  model = ladder_model.LadderVAE(**model_fields(
      ladder_model.LadderVAE, family, latent_sizes=(3, 2), hidden_sizes=(1, 1),
      x_shape=(2, 2, 1), inference=inference, block_depth=0, activation='linear',
      likelihood='gaussian', batch_norm=False))
  x0 = jnp.zeros((1, 2, 2, 1))
  noise = ladder_model.draw_noise(model, jax.random.PRNGKey(0), (1,), (2, 2, 1))
  params = flax.core.unfreeze(jax.jit(model.init)(jax.random.PRNGKey(4), x0, noise))['params']
  softplus = lambda v: float(np.log1p(np.exp(v))) + ladder_model.MIN_VAR
  prior_head, out = params['prior_head_0'], params['decoder_out']
  prior_head['var']['kernel'] = jnp.zeros_like(prior_head['var']['kernel'])
  prior_head['var']['bias'] = jnp.full((3,), 0.3)
  out['kernel'] = out['kernel'].at[:, 4:].set(0.0)
  out['bias'] = out['bias'].at[4:].set(1.0)
  for name in ('head_0', 'head_1'):
    head = params[name]
    head['mean']['kernel'] = head['mean']['kernel'] * 0.3
    head['var']['kernel'] = jnp.zeros_like(head['var']['kernel'])
    head['var']['bias'] = jnp.full_like(head['var']['bias'], 3.98)
  f64 = lambda v: np.asarray(v, np.float64)
  a_mat, a = f64(prior_head['mean']['kernel']), f64(prior_head['mean']['bias'])
  b_mat, b = f64(out['kernel'][:, :4]), f64(out['bias'][:4])
  cov = (b_mat.T @ (a_mat.T @ a_mat + softplus(0.3) * np.eye(3)) @ b_mat
         + softplus(1.0) * np.eye(4))
  return model, {'params': params}, a @ b_mat + b, cov


def _exact_batch(mean, cov, seed, num=64):
  """Exact log N(x; mean, cov) of num draws x ~ N(mean, cov), and x as a (num, 2, 2, 1)
  eval batch."""
  x = np.random.default_rng(seed).multivariate_normal(mean, cov, size=num)
  diff = x - mean
  exact = -0.5 * (np.einsum('bi,ij,bj->b', diff, np.linalg.inv(cov), diff)
                  + np.linalg.slogdet(2 * np.pi * cov)[1])
  batch = {'image': jnp.asarray(x.reshape(num, 2, 2, 1), jnp.float32),
           'valid': jnp.ones((num,), bool)}
  return exact, batch


@pytest.mark.parametrize('inference', ['ladder', 'hierarchical'])
def test_iw_bound_converges_to_exact_log_likelihood_of_linear_gaussian_model(inference):
  model, variables, mean, cov = _linear_gaussian(inference)
  exact, batch = _exact_batch(mean, cov, seed=5)
  gaps = {}
  for k in (30, 3000):
    fn = jax.jit(family.make_eval_batch_fn(model, 'gaussian', inference, 256, k, 1000))
    out = fn(variables, batch, jax.random.PRNGKey(k))
    gaps[k] = float(out['nll']) / 64 + exact.mean()          # -IW_k - (-log p(x)) per example
    # IW_1 is a one-sample ELBO: its expected gap is the ELBO's (averaged over the k samples).
    gaps[1] = float(out['neg_elbo']) / 64 + exact.mean()
  assert gaps[1] > 1.0 and 0 < gaps[30] < gaps[1] / 5, gaps
  assert abs(gaps[3000]) < min(0.03, gaps[30] / 5), gaps


def _linear_gaussian_skip():
  """The 3-layer linear-Gaussian model with skip connections in the generative path:
  block_depth=0 makes t_2 = z_3 and t_1 = [z_2, z_3], so
      p(z_2 | z_3) = N(z_3 A_2 + a_2, v_2 I),   p(z_1 | z_2, z_3) = N([z_2, z_3] A_1 + a_1, v_1 I),
      p(x | z_1, z_2, z_3) = N([z_1, z_2, z_3] B + b, v_0 I).
  x is then linear in the independent N(0, I) noises e = (e_3, e_2, e_1, e_0): written
  x = e M + c by composing the maps one layer at a time, log p(x) = log N(x; c, M^T M).
  Inference keeps scaled-down means and broad constant variances (s^2 = 4)."""
  sizes, x_dim = (3, 2, 2), 4
  model = ladder_model.LadderVAE(**model_fields(
      ladder_model.LadderVAE, family, latent_sizes=sizes, hidden_sizes=(1, 1, 1),
      x_shape=(2, 2, 1), inference='ladder', block_depth=0, activation='linear',
      likelihood='gaussian', top_down_skip=True, batch_norm=False))
  x0 = jnp.zeros((1, 2, 2, 1))
  noise = ladder_model.draw_noise(model, jax.random.PRNGKey(0), (1,), (2, 2, 1))
  params = flax.core.unfreeze(jax.jit(model.init)(jax.random.PRNGKey(6), x0, noise))['params']
  softplus = lambda v: float(np.log1p(np.exp(v))) + ladder_model.MIN_VAR
  variances = {'prior_head_1': 0.2, 'prior_head_0': 0.4}      # pre-softplus, of z_2 and z_1
  for name, pre in variances.items():
    head = params[name]
    head['var']['kernel'] = jnp.zeros_like(head['var']['kernel'])
    head['var']['bias'] = jnp.full_like(head['var']['bias'], pre)
  out = params['decoder_out']
  out['kernel'] = out['kernel'].at[:, x_dim:].set(0.0)
  out['bias'] = out['bias'].at[x_dim:].set(1.0)
  for name in ('head_0', 'head_1', 'head_2'):
    head = params[name]
    head['mean']['kernel'] = head['mean']['kernel'] * 0.3
    head['var']['kernel'] = jnp.zeros_like(head['var']['kernel'])
    head['var']['bias'] = jnp.full_like(head['var']['bias'], 3.98)
  f64 = lambda v: np.asarray(v, np.float64)
  num_noise = sum(sizes) + x_dim
  offsets = np.cumsum([0, sizes[2], sizes[1], sizes[0]])      # e_3, e_2, e_1, then e_0

  def noise_map(start, size, scale):
    m = np.zeros((num_noise, size))
    m[start:start + size] = scale * np.eye(size)
    return m

  def gaussian(inp, kernel, bias, start, size, var):
    """(M, c) of N(inp W + b, var I), given inp's (M, c) and its own noise e[start:start+size]."""
    return (inp[0] @ f64(kernel) + noise_map(start, size, math.sqrt(var)),
            inp[1] @ f64(kernel) + f64(bias))

  def concat(*maps):
    return np.concatenate([m[0] for m in maps], 1), np.concatenate([m[1] for m in maps])

  # (M, c) of z_3, z_2, z_1, x in turn: value = e M + c.
  z3 = (noise_map(offsets[0], sizes[2], 1.0), np.zeros(sizes[2]))
  head = params['prior_head_1']['mean']
  z2 = gaussian(z3, head['kernel'], head['bias'], offsets[1], sizes[1], softplus(0.2))
  t1 = concat(z2, z3)
  head = params['prior_head_0']['mean']
  z1 = gaussian(t1, head['kernel'], head['bias'], offsets[2], sizes[0], softplus(0.4))
  x_map = gaussian(concat(z1, t1), out['kernel'][:, :x_dim], out['bias'][:x_dim], offsets[3],
                   x_dim, softplus(1.0))
  return model, {'params': params}, x_map[1], x_map[0].T @ x_map[0]


def test_skip_connections_iw_bound_and_samples_match_the_exact_marginal():
  """top_down_skip: the IW bound converges to the exact log p(x) of the composed linear-
  Gaussian model (so p(z_l | z_>l) and p(x | z_1, t_1) are the ones log w uses), and
  ancestral samples have its mean and covariance (so `sample` walks the same path). The
  generative path is the same in both inference modes; 'ladder' gives the proposal that
  converges at k = 3000 (bottom-up proposals of this linear model are 37 nats off)."""
  model, variables, mean, cov = _linear_gaussian_skip()
  exact, batch = _exact_batch(mean, cov, seed=8)
  fn = jax.jit(family.make_eval_batch_fn(model, 'gaussian', 'ladder', 256, 3000, 1000))
  out = fn(variables, batch, jax.random.PRNGKey(3))
  gap_elbo = float(out['neg_elbo']) / 64 + exact.mean()
  gap_iw = float(out['nll']) / 64 + exact.mean()
  assert gap_elbo > 0.5 and abs(gap_iw) < min(0.03, gap_elbo / 10), (gap_elbo, gap_iw)

  n = 100_000
  noise = ladder_model.draw_noise(model, jax.random.PRNGKey(9), (n,), (2, 2, 1))
  params = jax.jit(lambda v, e: model.apply(v, e, method=model.sample))(variables, noise)
  x_mean = np.asarray(params['mean'], np.float64).reshape(n, -1)
  x_var = np.exp(np.asarray(params['logvar'], np.float64)).reshape(n, -1)
  sample_cov = np.cov(x_mean, rowvar=False) + np.diag(x_var.mean(0))   # law of total variance
  se = np.sqrt(np.diag(cov) / n)
  np.testing.assert_array_less(np.abs(x_mean.mean(0) - mean), 5 * se)
  np.testing.assert_allclose(sample_cov, cov, atol=0.03 * np.abs(cov).max())


def test_skip_connections_make_the_prior_depend_on_every_layer_above():
  """With top_down_skip, p(z_1 | z_>1) changes with z_3 at a fixed z_2; without it, it does not."""
  prior_means = {}
  for skip in (False, True):
    model = ladder_model.LadderVAE(**model_fields(
        ladder_model.LadderVAE, family, latent_sizes=(4, 3, 2), hidden_sizes=(8, 8, 8),
        x_shape=(2, 2, 1), top_down_skip=skip, batch_norm=False))
    x = jnp.zeros((5, 2, 2, 1))
    noise = ladder_model.draw_noise(model, jax.random.PRNGKey(0), (5,), (2, 2, 1))
    variables = model.init(jax.random.PRNGKey(1), x, noise)
    z2 = jax.random.normal(jax.random.PRNGKey(2), (5, 3))

    def prior_of_z1(m, z3):
      t2, _ = m.top_down(2, z3)
      return m.top_down(1, z2, t2)[1][0]

    z3 = jax.random.normal(jax.random.PRNGKey(3), (2, 5, 2))
    prior_means[skip] = [model.apply(variables, z, method=prior_of_z1) for z in z3]
  np.testing.assert_array_equal(*prior_means[False])
  assert np.abs(prior_means[True][0] - prior_means[True][1]).min() > 1e-4


# -----------------------------------------------------------------------------
# Active units.
# -----------------------------------------------------------------------------


def test_unit_activity_on_constructed_means():
  """Units with Cov_x(E_q[u | x]) = 0, 0.005, 0.02, 1 -> exactly the last two are active."""
  n = 1000
  base = np.random.default_rng(0).normal(size=(n, 1))
  base = (base - base.mean()) / base.std()
  variances = np.array([0.0, 0.005, 0.02, 1.0])
  means = 3.0 + base * np.sqrt(variances)
  activity = family.unit_activity(means.sum(0), (means ** 2).sum(0), n)
  np.testing.assert_allclose(activity, variances, atol=1e-9)
  assert np.sum(activity > family.ACTIVE_UNIT_THRESHOLD) == 2
  assert np.sum(activity > 0.001) == 3


@pytest.mark.parametrize('inference', ['ladder', 'hierarchical'])
def test_active_units_of_a_model_with_known_answer(inference):
  """Zeroing the mean map of q at the top layer makes E_q[z_L | x] constant in x: those
  units are inactive, and scaling up the others makes them active. Informative units
  (KL > 0.01 nats) are another count: with a unit variance, a constant mean of 0 makes
  q(z_L | .) the prior N(0, 1) (no KL), and a constant mean of 3 costs 4.5 nats whatever x
  (inactive, informative)."""
  config, fam, splits, model, _, variables = tiny_setup(inference)
  config.eval.num_importance_samples, config.eval.iw_chunk_size = 100, 30   # as above: compiled
  head = variables['params']['head_1']['mean']
  head['kernel'] = (head['kernel'] * 50.0).at[:, :2].set(0.0)      # z_2 has 3 units
  metrics = evaluate(config, fam, model, variables, splits)
  assert metrics['active_units_layer_2'] == 1
  assert metrics['active_units'] == metrics['active_units_layer_1'] + 1
  var = variables['params']['head_1']['var']            # var = softplus(.) + MIN_VAR = 1
  var['kernel'] = var['kernel'].at[:, :2].set(0.0)
  var['bias'] = var['bias'].at[:2].set(math.log(math.expm1(1.0 - ladder_model.MIN_VAR)))
  head['bias'] = head['bias'].at[:2].set(jnp.array([3.0, 0.0]))
  metrics = evaluate(config, fam, model, variables, splits)
  assert metrics['active_units_layer_2'] == 1 and metrics['informative_units_layer_2'] == 2
  assert metrics['informative_units'] == metrics['informative_units_layer_1'] + 2


# -----------------------------------------------------------------------------
# Batch norm, loss, warm-up, free bits.
# -----------------------------------------------------------------------------


def test_batch_norm_train_and_eval_modes():
  config, fam, splits, model, batch, variables = tiny_setup('ladder', {'model.batch_norm': True})
  params = variables['params']
  state = {'batch_stats': variables['batch_stats']}
  x = batch['image']
  noise = ladder_model.draw_noise(model, jax.random.PRNGKey(1), x.shape[:1], x.shape[1:])
  x_other = x.at[1:].set(1.0 - x[1:])                 # same first example, other batch-mates

  @functools.partial(jax.jit, static_argnums=2)
  def logits(variables, x, train):
    if train:
      out, new = model.apply(variables, x, noise, train=True, mutable=['batch_stats'])
      return out['x']['logits'][0], new
    return model.apply(variables, x, noise, train=False)['x']['logits'][0], None

  # Train mode: batch statistics, so example 0 depends on the rest of the batch, and the
  # running averages move.
  a, new_stats = logits({'params': params, **state}, x, True)
  b, _ = logits({'params': params, **state}, x_other, True)
  assert not np.allclose(a, b, atol=1e-4)
  moved = jax.tree.map(lambda u, v: float(jnp.abs(u - v).max()), new_stats['batch_stats'],
                       state['batch_stats'])
  assert min(jax.tree.leaves(moved)) > 0
  # Eval mode: running averages, so example 0 does not see its batch-mates.
  np.testing.assert_allclose(logits({'params': params, **state}, x, False)[0],
                             logits({'params': params, **state}, x_other, False)[0], rtol=1e-6)
  # Running averages converge to this batch's statistics (momentum 0.9): then the two modes agree.
  stats = state
  for _ in range(200):
    _, stats = logits({'params': params, **stats}, x, True)
  np.testing.assert_allclose(logits({'params': params, **stats}, x, False)[0], a, rtol=1e-3,
                             atol=1e-3)
  # The loss returns the updated statistics as new_model_state, with the same structure.
  loss_fn = jax.jit(fam.make_loss_fn(config, model, splits.info))
  _, (_, new_state) = loss_fn(params, state, batch, jax.random.PRNGKey(0), 0)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert not np.allclose(jax.tree.leaves(new_state)[0], jax.tree.leaves(state)[0])


def test_kl_warmup_and_free_bits_in_the_loss():
  config, fam, splits, model, batch, variables = tiny_setup('ladder')
  config.model.kl_warmup_steps = 100
  params, rng = variables['params'], jax.random.PRNGKey(0)
  loss_and_grad = jax.jit(jax.value_and_grad(fam.make_loss_fn(config, model, splits.info),
                                             has_aux=True))
  for step, beta in ((0, 0.0), (25, 0.25), (100, 1.0), (1000, 1.0)):
    (loss, (m, _)), grads = loss_and_grad(params, {}, batch, rng, step)
    assert float(m['kl_weight']) == pytest.approx(beta)
    np.testing.assert_allclose(loss, m['recon_nll'] + beta * m['kl'], rtol=1e-5)
    np.testing.assert_allclose(m['neg_elbo'], m['recon_nll'] + m['kl'], rtol=1e-5)
    if step == 0:
      recon_grads = grads                  # beta = 0: the gradient of -log p(x | z_1) alone
  config.model.free_bits = 1000.0          # every layer below lambda: the KL term is 2 * lambda
  loss_and_grad = jax.jit(jax.value_and_grad(fam.make_loss_fn(config, model, splits.info),
                                             has_aux=True))
  (loss, (m, _)), grads = loss_and_grad(params, {}, batch, rng, 1000)
  np.testing.assert_allclose(loss, m['recon_nll'] + 2000.0, rtol=1e-5)
  # Below lambda the KL term is constant: its gradient is cut, only the reconstruction's is left
  # (the same noise as at step 0, since the rng is the same).
  jax.tree.map(lambda g, r: np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6), grads,
               recon_grads)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 0


def test_config_errors_name_the_field():
  config = load_config('configs/hvae.py', {'model.inference': 'ladder'})
  with pytest.raises(ConfigError, match='model.inference'):
    family.validate_config(config)
  config = load_config('configs/lvae.py', {'data.binarize': 'none'})
  splits = data_lib.get_datasets(config)
  with pytest.raises(ConfigError, match='binarize'):
    family.build_model(config, splits.info)
  config = load_config('configs/lvae.py', {'model.block': 'conv', 'model.strides': (2,)})
  with pytest.raises(ConfigError, match='strides'):
    family.validate_config(config)
  config = load_config('configs/hvae.py', {'model.share_top_down': False})
  with pytest.raises(ConfigError, match='share_top_down'):
    family.validate_config(config)
  config = load_config('configs/hvae.py', {'model.up_from_mean': True})
  with pytest.raises(ConfigError, match='up_from_mean'):
    family.validate_config(config)


@pytest.mark.parametrize('path,layers', [('configs/lvae_mnist.py', 5),
                                         ('configs/hvae_mnist.py', 5),
                                         ('configs/lvae_omniglot.py', 5),
                                         ('configs/vae_mnist.py', 1)])
def test_paper_configs_build_with_their_data_shapes(path, layers):
  """Paper configs (data not needed here): model, loss and eval shapes, traced only."""
  config = load_config(path)
  fam = get_family(config.model.name)
  fam.validate_config(config)
  info = data_lib.DataInfo(kind='image', shape=(28, 28, 1), num_levels=2, num_train=50000,
                           steps_per_epoch=50000 // config.batch_size)
  model = fam.build_model(config, info)
  batch = {'image': jax.ShapeDtypeStruct((config.batch_size, 28, 28, 1), jnp.float32)}
  variables = jax.eval_shape(lambda b: fam.init_variables(model, jax.random.PRNGKey(0), b), batch)
  params = variables.pop('params')
  n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
  assert 1e6 < n_params < 5e6
  assert len(model.latent_sizes) == layers and 'batch_stats' in variables
  loss_fn = fam.make_loss_fn(config, model, info)
  loss, (metrics, _) = jax.eval_shape(loss_fn, params, variables, batch, jax.random.PRNGKey(0), 0)
  assert loss.shape == () and f'kl_layer_{layers}' in metrics
  assert config.eval.num_importance_samples == 5000 and config.learning_rate == 2e-4
  if 'mnist' in path:   # 2000 epochs of the 50,000 bundled images, warm-up over the first 200
    steps_per_epoch = 50000 // 256
    assert config.num_train_steps == 2000 * steps_per_epoch
    assert family.kl_warmup(config, info)[0] == 200 * steps_per_epoch
    assert config.data.binarize == 'none' and config.eval.select_metric == 'nll'
    assert config.model.inference == ('ladder' if 'lvae' in path else 'hierarchical')


# -----------------------------------------------------------------------------
# Importance-weighted training objective (config.model.train_importance_samples).
# -----------------------------------------------------------------------------


def _iw_loss_fn(inference, model, k, warmup_steps=0):
  config = load_config('configs/lvae.py' if inference == 'ladder' else 'configs/hvae.py',
                       {'model.latent_sizes': (3, 2), 'model.hidden_sizes': (1, 1),
                        'model.likelihood': 'gaussian', 'model.batch_norm': False,
                        'model.kl_warmup_steps': warmup_steps,
                        'model.train_importance_samples': k})
  family.validate_config(config)
  info = data_lib.DataInfo(kind='image', shape=(2, 2, 1), num_levels=256)
  return jax.jit(family.make_loss_fn(config, model, info))


@pytest.mark.parametrize('inference', ['ladder', 'hierarchical'])
def test_iw_training_loss_falls_with_k_to_the_exact_log_likelihood(inference):
  """The linear-Gaussian model, whose log p(x) is exact: the training loss with k = 1 is the
  closed-form ELBO's; with k > 1 it is the negative IW bound, which falls with k towards
  -log p(x); one importance weight averaged over samples estimates the same ELBO."""
  model, variables, mean, cov = _linear_gaussian(inference)
  exact, batch = _exact_batch(mean, cov, seed=7)
  params = variables['params']
  loss = {}
  for k in (1, 10, 100, 3000):
    fn = _iw_loss_fn(inference, model, k)
    values = [fn(params, {}, batch, jax.random.key(r), 10) for r in range(4)]
    loss[k] = float(np.mean([float(v[0]) for v in values]))
    if k == 1:
      assert 'neg_iw_bound' not in values[0][1][0]
    else:
      np.testing.assert_allclose(float(values[0][1][0]['neg_iw_bound']), float(values[0][0]))
  assert loss[1] > loss[10] > loss[100] > loss[3000], loss
  assert loss[1] - loss[3000] > 0.5, loss
  assert abs(loss[3000] + exact.mean()) < 0.05, (loss, -exact.mean())
  # k = 1 in the IW form: one log weight per example, whose mean over samples is the ELBO.
  noise = ladder_model.draw_noise(model, jax.random.key(9), (4000 * 64,), (2, 2, 1))
  x = jnp.tile(batch['image'], (4000, 1, 1, 1))
  out = model.apply(variables, x, noise, train=False)
  log_px = family.log_likelihood('gaussian', x, out['x'], 256)
  log_w = family.iw_log_weights(out['layers'], log_px, 1.0)
  kl = family.layer_kls(inference, out['layers']).sum(0)           # closed form where it exists
  np.testing.assert_allclose(-float(log_w.mean()), -float(log_px.mean()) + float(kl.mean()),
                             atol=0.05)
  np.testing.assert_allclose(float(objectives.iw_bound(log_w[None])[0]), float(log_w[0]),
                             rtol=1e-6)


def test_iw_training_warmup_scales_the_log_ratio_and_gradients_are_finite():
  """beta = 0: the bound is over log p(x | z_k) alone; with batch norm and k = 5 the
  gradients and the updated batch statistics are finite and the statistics move."""
  config, fam, splits, model, batch, variables = tiny_setup('ladder', {'model.batch_norm': True})
  config.model.train_importance_samples = 5
  config.model.kl_warmup_steps = 100
  fam.validate_config(config)
  model_state = {k: v for k, v in variables.items() if k != 'params'}
  assert model_state, 'batch norm should give batch statistics'
  loss_and_grad = jax.jit(jax.value_and_grad(fam.make_loss_fn(config, model, splits.info),
                                             has_aux=True))
  (loss, (m, new_state)), grads = loss_and_grad(variables['params'], model_state, batch,
                                                jax.random.key(0), 0)
  assert float(m['kl_weight']) == 0.0
  assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 0
  assert all(bool(jnp.isfinite(v).all()) for v in jax.tree.leaves(new_state))
  assert any(float(jnp.abs(a - b).max()) > 0
             for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(model_state)))
  # beta = 0 and beta = 1 differ (the log-ratio term is scaled by beta).
  (loss_1, _), _ = loss_and_grad(variables['params'], model_state, batch, jax.random.key(0),
                                 100)
  assert float(loss) != pytest.approx(float(loss_1), rel=1e-3)
  assert float(loss) < float(m['recon_nll'])   # logmeanexp_k of log p(x|z_k) >= its mean


def test_iw_training_config_errors():
  config = load_config('configs/lvae.py', {'model.train_importance_samples': 0})
  with pytest.raises(ConfigError, match='train_importance_samples=0'):
    family.validate_config(config)
  config = load_config('configs/lvae.py', {'model.train_importance_samples': 4,
                                           'model.free_bits': 0.5})
  with pytest.raises(ConfigError, match='free_bits'):
    family.validate_config(config)
