"""VQ-VAE-2: level grids (the paper's 64x64 / 32x32 at 256x256), decoding codes
reproduces the forward pass, the train step has no gather/scatter in its
gradient, and a few steps on digits reduce the loss; model.upsample reaches every
transposed convolution; multi-stage quantisers are refused, naming the accepted ones."""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import data_and_trainer, load_config
from vaes import codebook
from vaes import data as data_lib
from vaes.families import vqvae2 as family
from vaes.models.vqvae2 import VQVAE2
from vaes.quantizers import QuantizerSpec
from vaes.registry import ConfigError

TINY = {'model.hidden': 16, 'model.res_hidden': 8, 'model.num_codes': 16, 'batch_size': 32}


def test_paper_config_has_64x64_bottom_and_32x32_top_codes():
  config = load_config('configs/vqvae2_256.py')
  info = data_lib.DataInfo(kind='image', shape=(256, 256, 3), train_variance=0.06, num_levels=256)
  model = family.build_model(config, info)
  x = jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: family.init_variables(
      model, jax.random.PRNGKey(0), {'image': x}), x)
  out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
  assert [o['indices'].shape for o in out['levels']] == [(2, 64, 64), (2, 32, 32)]
  assert [o['one_hot'].shape[-1] for o in out['levels']] == [512, 512]
  assert out['decoder_out'].shape == (2, 256, 256, 3)
  assert family.grids(config.model, (256, 256, 3)) == [(64, 64), (32, 32)]
  assert config.compute_dtype == 'bfloat16'


def test_decoding_the_codes_reproduces_the_forward_pass():
  for levels in (2, 3):
    model = VQVAE2(image_channels=1, hidden=16, res_hidden=8, num_res_blocks=2,
                   num_levels=levels, bottom_downsamples=1,
                   vq=QuantizerSpec(num_codes=8, code_dim=4, use_ema=True),
                   likelihood='gaussian', upsample='transpose')
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 16, 16, 1))
    variables = model.init(jax.random.PRNGKey(1), x)
    out = model.apply(variables, x)
    assert [o['indices'].shape[1] for o in out['levels']] == [8, 4, 2][:levels]
    dec = model.apply(variables, [o['indices'] for o in out['levels']],
                      method=VQVAE2.decode_indices)
    np.testing.assert_allclose(np.asarray(dec), np.asarray(out['decoder_out']),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('gathers', [False, True])
def test_train_step_gradient_has_no_gather_or_scatter_off_the_cpu_and_learns(gathers,
                                                                             monkeypatch):
  """Off the CPU codebook lookups and code sums are one-hot matmuls: no gather, and no
  scatter-add in the backward pass; on the CPU (vaes.codebook.use_gathers) they are
  gathers and segment sums."""
  monkeypatch.setattr(codebook, 'use_gathers', lambda: gathers)
  config = load_config('configs/vqvae2.py', TINY)
  splits, trainer = data_and_trainer(config)
  state = trainer.init_fn()
  batch = trainer.put(splits.train.batch(0))
  hlo = trainer.train_step.lower(state, batch).as_text()
  assert ('scatter' in hlo and 'gather' in hlo) == gathers
  assert ('scatter' in hlo or 'gather' in hlo) == gathers
  losses = []
  for _ in range(8):
    state, metrics = trainer.train_step(state, batch)
    losses.append(float(metrics['loss']))
  assert losses[-1] < losses[0], losses
  assert 'perplexity_level_1' in metrics


def _convolutions(jaxpr):
  """(lhs_dilation, rhs shape) of every conv_general_dilated, nested jaxprs included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      found.append((tuple(eqn.params['lhs_dilation']), eqn.invars[1].aval.shape))
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      found += _convolutions(sub)
  return found


def test_vqvae2_wires_the_upsample_choice_into_every_transposed_convolution():
  """Three levels: the decoders (VQ-VAE's Decoder) and the 1- and 2-step upsamplers
  use the chosen implementation, with the same variables (tests/test_layers.py checks
  that the implementations are the same function)."""
  x = jnp.zeros((2, 16, 16, 3))

  def make(upsample):
    return VQVAE2(image_channels=3, hidden=8, res_hidden=4, num_res_blocks=2, num_levels=3,
                  bottom_downsamples=1, vq=QuantizerSpec(num_codes=8, code_dim=4),
                  likelihood='gaussian', upsample=upsample)
  v = jax.eval_shape(make('transpose').init, jax.random.PRNGKey(1), x)
  convs = {}
  for implementation in ('transpose', 'phases', 'subpixel'):
    model = make(implementation)
    v_new = jax.eval_shape(model.init, jax.random.PRNGKey(1), x)
    assert jax.tree.structure(v_new) == jax.tree.structure(v)
    assert [a.shape for a in jax.tree.leaves(v_new)] == [b.shape for b in jax.tree.leaves(v)]
    convs[implementation] = _convolutions(jax.make_jaxpr(model.apply)(v, x).jaxpr)
  # 6 transposed convolutions: top-down decoders 2 x 1, upsamplers 1 + 2, decoder 1.
  assert sum(d == (2, 2) for d, _ in convs['transpose']) == 6
  assert all(d == (1, 1) for d, _ in convs['phases'] + convs['subpixel'])
  plain = len(convs['transpose']) - 6
  assert len(convs['phases']) == plain + 6 * 4                     # four 2x2 convs each
  assert sum(s[:2] == (2, 2) for _, s in convs['phases']) == 6 * 4
  assert len(convs['subpixel']) == plain + 6                       # one 3x3 conv each


def test_multi_stage_quantizers_are_refused_with_the_accepted_values_named():
  """VQ-VAE-2 takes one code per latent and level: every quantiser of ONE_CODE_QUANTIZERS,
  and 'rvq' / 'rfsq' with rvq_stages=1; the refusal names exactly these."""
  assert family.ONE_CODE_QUANTIZERS == ('vq', 'fsq', 'lfq', 'bsq')
  accepted = [{'model.quantizer': q} for q in family.ONE_CODE_QUANTIZERS] + [
      {'model.quantizer': q, 'model.rvq_stages': 1} for q in ('rvq', 'rfsq')]
  for overrides in accepted:
    family.validate_config(load_config('configs/vqvae2.py', overrides))
  for q in ('rvq', 'rfsq'):
    config = load_config('configs/vqvae2.py', {'model.quantizer': q, 'model.rvq_stages': 2})
    with pytest.raises(ConfigError) as e:
      family.validate_config(config)
    assert str(e.value) == (
        f"config.model.quantizer='{q}' with rvq_stages=2 is not offered for VQ-VAE-2 (one "
        "code per latent and level): use one of ('vq', 'fsq', 'lfq', 'bsq'), or rvq_stages=1.")
