"""Hierarchical VAE on binarised MNIST: configs/lvae_mnist.py without the ladder merge,
the middle row of the Ladder VAE paper's comparison (Sonderby et al. 2016: the "VAE"
of the same depth, trained with batch norm and warm-up, below the LVAE).

  python train.py --config=configs/hvae_mnist.py --workdir=/tmp/hvae_mnist
  python eval.py  --config=configs/hvae_mnist.py --workdir=/tmp/hvae_mnist

The same 5 stochastic layers (64-32-16-8-4 units), MLP blocks (512-256-128-64-32),
batch norm, schedule, data and evaluation as configs/lvae_mnist.py (see its docstring);
only the inference differs: bottom-up q(z_1 | x) prod_l q(z_l | z_l-1) instead of the
precision-weighted merge of the bottom-up estimate with the top-down prior. Below the
top layer the KL terms are one-sample Monte Carlo estimates (vaes/families/ladder.py).
configs/vae_mnist.py is the one-layer baseline.

Reference numbers: the paper reports its hierarchical VAEs below the LVAE on MNIST
(cells not in REFERENCE.md; OMNIGLOT there: VAE -110.46, +BN -105.45, +BN+warm-up
-102.48, LVAE -102.11). The table should show ladder > hierarchical > one layer.

Hardware and runtime: as configs/lvae_mnist.py. Measured (results/hvae_mnist): 50 of the
2000 epochs (--config.num_train_steps=9750 --config.eval_every_steps=4875
--config.checkpoint_every_steps=1950) on the 2-core CPU beside other runs: test nll 88.83 /
88.87 (seeds 0 / 1), 21 min 23 s / 27 min 08 s of training and 21 min 26 s / 46 min 10 s of
test evaluation.
"""

from configs import lvae_mnist


def get_config():
  c = lvae_mnist.get_config()
  c.model.name = 'hvae'                # bottom-up inference ('hierarchical')
  return c
