"""VRNN on JSB Chorales with the filtering posterior (configs/vrnn_jsb.py), on the schedule
of configs/vrnn_smooth_jsb.py: 3,000 steps and the moving average of the weights at 0.995;
everything else as configs/vrnn_jsb.py. The JSB table's rows then differ by one change
each: vrnn_jsb -> vrnn_jsb_3k_ema is the schedule and the weight average, vrnn_jsb_3k_ema ->
vrnn_smooth_jsb the posterior alone.

  python train.py --config=configs/vrnn_jsb_3k_ema.py --workdir=~/runs/vrnn_jsb_3k_ema_s0
  python eval.py  --config=configs/vrnn_jsb_3k_ema.py --workdir=~/runs/vrnn_jsb_3k_ema_s0

Runtime: 70-120 minutes on the 2-core CPU shared by two to four runs (as vrnn_smooth_jsb).
Paper: DMM 6.39 nats/frame on JSB (Krishnan et al. 2017; REFERENCE.md).
"""

from configs import vrnn_jsb
from configs.vrnn_smooth_jsb import smoothing_row_schedule


def get_config():
  return smoothing_row_schedule(vrnn_jsb.get_config())
