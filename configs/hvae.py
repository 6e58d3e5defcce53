"""Hierarchical VAE (bottom-up inference q(z_1 | x) prod_l q(z_l | z_l-1)) on the
embedded binarised digits: configs/lvae.py with inference='hierarchical'.

  python train.py --config=configs/hvae.py --workdir=/tmp/hvae
  python eval.py  --config=configs/hvae.py --workdir=/tmp/hvae
"""

from configs import lvae


def get_config():
  c = lvae.get_config()
  c.model.name = 'hvae'
  c.model.inference = 'hierarchical'
  return c
