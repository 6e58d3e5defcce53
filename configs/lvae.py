"""Ladder VAE (Sonderby et al. 2016) on the embedded scikit-learn digits, binarised:
the default that runs anywhere in minutes, no download.

  python train.py --config=configs/lvae.py --workdir=/tmp/lvae
  python eval.py  --config=configs/lvae.py --workdir=/tmp/lvae

8x8 digits (64 binary pixels, re-binarised every batch: data.binarize='dynamic'),
3 stochastic layers z_1..z_3 of 16-8-4 units, MLP blocks (2 x 128/64/32 units),
batch norm, KL warm-up over the first quarter of training, Bernoulli p(x | z_1).
The eval split (297 images) is binarised once with a fixed seed; the NLL uses
1000 importance samples.

Measured (2-core CPU shared with other jobs, load average 6-9, 6000 steps):
train + eval 2 min 19 s wall (1 min 30 s CPU); test neg_elbo 22.50, nll 22.09 nats
(0.498 bits/dim); KL per layer 2.20 / 2.26 / 0.86 nats, active units 16 / 6 / 2 of
16 / 8 / 4: all three layers are used. configs/hvae.py (same settings, bottom-up
inference): 2 min 09 s; neg_elbo 22.71, nll 22.24; KL 2.46 / 2.49 / 0.73; active
units 16 / 6 / 3.
"""

from configs import base
from vaes.families import ladder as ladder_family


def get_config():
  c = base.get_base_config()
  c.batch_size = 64
  c.num_train_steps = 6000
  c.log_every_steps = 500
  c.eval_every_steps = 0
  c.checkpoint_every_steps = 2000
  c.learning_rate = 2e-3
  c.lr_schedule = 'cosine'

  c.model = ladder_family.model_config()   # every model field and its default
  c.eval.update(ladder_family.eval_config())   # the family's eval fields and defaults

  c.data.name = 'digits'
  c.data.image_size = 8
  c.data.resize = 'pad'
  c.data.binarize = 'dynamic'

  c.eval.batch_size = 128
  c.eval.num_images = 64
  return c
