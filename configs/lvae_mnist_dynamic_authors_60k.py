"""The Ladder VAE as the authors' code runs it, on dynamically binarised MNIST: the model of
their README's ladder command and their training set (all 60,000 images).

  python train.py --config=configs/lvae_mnist_dynamic_authors_60k.py \
      --workdir=~/runs/lvae_mnist_dynamic_authors_60k_s0
  python eval.py  --config=configs/lvae_mnist_dynamic_authors_60k.py \
      --workdir=~/runs/lvae_mnist_dynamic_authors_60k_s0

configs/lvae_mnist_dynamic_60k.py (2000 epochs of all 60,000 grey training images, the last
checkpoint reported on the 10,000 static test images) with the three choices of the authors'
run_models.py (github.com/casperkaae/LVAE) that the paper's text does not state:

- model.share_top_down=False: the precision-weighted merge has a top-down path of its own
  instead of p(z_l | z_l+1)'s (-ladder_share_params False);
- model.up_from_mean=True: each bottom-up block reads the previous layer's mean mu_hat
  instead of its hidden features (-only_mu_up True);
- model.head_batch_norm=True: batch norm in every Gaussian head (their BN'd denselayer).

Chosen on the validation split (sweeps/lvae_authors_variants.py: 200 of the 2000 epochs on
the 50,000 training images, seed 0, valid nll with 1,000 importance samples): all three
together 84.93 nats against the paper's model's 85.34 (-ELBO 89.85 against 89.52: a looser
bound, more active units, 124 against 121). The final run trains on all 60,000 images, as
the authors did, so nothing is held out to select on.

Paper (REFERENCE.md): LVAE, 5 layers, -82.12 before fine-tuning (the issue's target: at or
below 82.1), -81.74 best.

Hardware and runtime: 468,000 steps at about 70 ms a step alone on the 2-core CPU (the
unshared top-down path and the heads' batch norm: 2,485,824 parameters against 2,176,376):
about 9 hours, then the 5000-sample test evaluation.
"""

from configs import lvae_mnist_dynamic_60k


def authors_choices(model):
  """The three model fields above, set on `model` (a config's `model`) in place; also the
  model of configs/lvae_mnist_dynamic_authors_60k_finetune.py, which must restore these
  weights."""
  model.share_top_down = False
  model.up_from_mean = True
  model.head_batch_norm = True


def get_config():
  c = lvae_mnist_dynamic_60k.get_config()
  authors_choices(c.model)
  return c
