"""VRAE (one global z per sequence) on JSB Chorales, filtering posterior
(configs/vrae_global_jsb.py), on the smoothing row's schedule: 3,000 steps and the weight
average (configs/vrnn_smooth_jsb.py `smoothing_row_schedule`, which lists the changes of
the table).

  python train.py --config=configs/vrae_global_jsb_3k_ema.py \
      --workdir=~/runs/vrae_global_jsb_3k_ema_s0
  python eval.py  --config=configs/vrae_global_jsb_3k_ema.py \
      --workdir=~/runs/vrae_global_jsb_3k_ema_s0

Measured (seed 0, code e448efa; results/): test nll_per_frame 8.281 (k = 500), best valid
8.249 at step 1,500; 56 min of training beside another run.
Runtime: estimated at 70-120 minutes on the 2-core CPU shared by two to four runs (as
vrnn_smooth_jsb); the measured 56 min above was beside one.
Paper: DMM 6.39 nats/frame on JSB (Krishnan et al. 2017; REFERENCE.md).
"""

from configs import vrae_global_jsb
from configs.vrnn_smooth_jsb import smoothing_row_schedule


def get_config():
  return smoothing_row_schedule(vrae_global_jsb.get_config())
