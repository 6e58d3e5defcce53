"""Hierarchical VAE (bottom-up inference q(z_1 | x) prod_l q(z_l | z_l-1)) on the
embedded binarised digits: configs/lvae.py with model.name='hvae' (inference 'hierarchical').

  python train.py --config=configs/hvae.py --workdir=/tmp/hvae
  python eval.py  --config=configs/hvae.py --workdir=/tmp/hvae

Measured (2-core CPU shared with other jobs, 6000 steps): train + eval 2 min 09 s wall;
test neg_elbo 22.71, nll 22.24 nats; KL per layer 2.46 / 2.49 / 0.73 nats; active
units 16 / 6 / 3 of 16 / 8 / 4. Below the top layer the KL terms are one-sample Monte
Carlo estimates (no closed form for bottom-up inference), see vaes/families/ladder.py.
"""

from configs import lvae


def get_config():
  c = lvae.get_config()
  c.model.name = 'hvae'                # bottom-up inference ('hierarchical')
  return c
