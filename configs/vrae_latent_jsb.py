"""VRAE on JSB Chorales with the seed VRAE prior p(z_t | z_<t): the
same data, sizes, schedule and checkpoint selection as configs/vrnn_jsb.py (the VRNN prior
p(z_t | z_<t, x_<t)), so the table rows differ only in the prior.

  python train.py --config=configs/vrae_latent_jsb.py --workdir=/tmp/vrae_latent_jsb
  python eval.py  --config=configs/vrae_latent_jsb.py --workdir=/tmp/vrae_latent_jsb
"""

from configs import vrnn_jsb


def get_config():
  c = vrnn_jsb.get_config()
  c.model.prior = 'latent'
  return c
