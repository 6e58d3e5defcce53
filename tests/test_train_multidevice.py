"""The train step on 8 simulated CPU devices equals the 1-device step."""

import numpy as np

from tests.helpers import assert_same_on_1_and_8_devices


def test_vqvae_ema_step_same_on_1_and_8_devices(tmp_path):
  one, eight = assert_same_on_1_and_8_devices(
      'configs/vqvae.py', {'batch_size': 32, 'model.hidden': 16, 'model.res_hidden': 8},
      tmp_path, num_steps=3)
  # The EMA codebook is in the compared state and moved during the steps.
  keys = [k for k in one['leaves'] if 'vq_ema' in k and 'codebook' in k]
  assert keys, one['leaves'].keys()


def test_vqvae_gradient_codebook_and_weight_ema_same_on_1_and_8_devices(tmp_path):
  # Three steps in one dispatch (lax.scan over stacked batches sharded P(None, 'data')),
  # with the moving average of the weights (config.weights_ema_decay) in the compared state.
  one, _ = assert_same_on_1_and_8_devices(
      'configs/vqvae.py', {'batch_size': 32, 'model.hidden': 16, 'model.res_hidden': 8,
                           'model.use_ema': False, 'steps_per_dispatch': 3,
                           'weights_ema_decay': 0.5}, tmp_path, num_steps=3)
  ema = {k[len("['ema_params']"):]: v for k, v in one['leaves'].items()
         if k.startswith("['ema_params']")}
  params = {k[len("['params']"):]: v for k, v in one['leaves'].items()
            if k.startswith("['params']")}
  assert ema.keys() == params.keys() and ema
  # The average lags the parameters: it moved, but not as far.
  assert any(not np.allclose(ema[k], params[k]) for k in ema)
