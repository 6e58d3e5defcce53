"""VRAE (prior p(z_t | z_<t)) on JSB Chorales, filtering posterior (configs/vrae_latent_jsb.py),
on the smoothing row's schedule: 3,000 steps and the weight average
(configs/vrnn_smooth_jsb.py `smoothing_row_schedule`, which lists the changes of the table).

  python train.py --config=configs/vrae_latent_jsb_3k_ema.py \
      --workdir=~/runs/vrae_latent_jsb_3k_ema_s0
  python eval.py  --config=configs/vrae_latent_jsb_3k_ema.py \
      --workdir=~/runs/vrae_latent_jsb_3k_ema_s0

Measured (seed 0; results/): test nll_per_frame 6.724 (k = 500), best valid 6.742 at
step 1,750.
Runtime: 70-120 minutes on the 2-core CPU shared by two to four runs (as vrnn_smooth_jsb).
Paper: DMM 6.39 nats/frame on JSB (Krishnan et al. 2017; REFERENCE.md).
"""

from configs import vrae_latent_jsb
from configs.vrnn_smooth_jsb import smoothing_row_schedule


def get_config():
  return smoothing_row_schedule(vrae_latent_jsb.get_config())
