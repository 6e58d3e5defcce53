"""VRAE on JSB Chorales with the global latent (one z per sequence, Fabius & van Amersfoort
2014): the same data, sizes, schedule and checkpoint selection as configs/vrnn_jsb.py (the
VRNN prior p(z_t | z_<t, x_<t)), so the table rows differ only in the prior.

  python train.py --config=configs/vrae_global_jsb.py --workdir=/tmp/vrae_global_jsb
  python eval.py  --config=configs/vrae_global_jsb.py --workdir=/tmp/vrae_global_jsb
"""

from configs import vrnn_jsb


def get_config():
  c = vrnn_jsb.get_config()
  c.model.prior = 'global'
  return c
