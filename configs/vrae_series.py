"""VRAE with a diagonal Gaussian likelihood on a synthetic real-valued series (sums of
sinusoids with per-sequence frequencies, phases and amplitudes, a random-walk drift and
noise; 3 channels, 32-64 frames, generated from data.series_seed): runs anywhere in minutes.

  python train.py --config=configs/vrae_series.py --workdir=/tmp/vrae_series
  python eval.py  --config=configs/vrae_series.py --workdir=/tmp/vrae_series

eval.py writes line plots (prior samples, imputation of a hidden block, reconstructions)
and nll_per_frame / neg_elbo_per_frame against baseline_nll_per_frame (an independent
Gaussian per channel fitted to the training frames); values are in nats per frame of
3 continuous channels, so they can be negative.
"""

from configs import base
from configs import vrae


def get_config():
  c = vrae.get_config()
  c.batch_size = 32
  c.num_train_steps = 2000
  c.learning_rate = 2e-3
  c.lr_warmup_steps = 50
  c.grad_clip_norm = 5.0

  c.model.prior = 'latent'
  c.model.likelihood = 'gaussian'
  c.model.hidden = 64
  c.model.latent = 4
  c.model.mlp_hidden = 64
  c.model.kl_warmup_start = 0.1
  c.model.kl_warmup_steps = 500

  c.data = base.get_base_config().data   # the data defaults, not the chorales config's
  c.data.name = 'synthetic_series'
  c.data.eval_split = 'test'
  c.data.max_len = 0
  c.data.series_seed = 0
  c.data.series_length = 64
  c.data.series_min_length = 32
  c.data.series_dim = 3
  c.data.series_noise = 0.1
  c.data.num_train = 1000
  c.data.num_valid = 200
  c.data.num_test = 200

  c.eval.batch_size = 100
  c.eval.num_importance_samples = 100
  c.eval.iw_chunk_size = 10
  return c
