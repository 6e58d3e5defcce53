"""Ladder VAE on OMNIGLOT, the paper's setup (Sonderby et al. 2016): configs/lvae_mnist.py
(5 layers 64-32-16-8-4, MLP 512-256-128-64-32, batch norm, warm-up over the first 10%
of the run = 200 of 2000 epochs, Adam 2e-4, batch 256, 5000 importance samples) on 28x28
OMNIGLOT re-binarised at every batch. Without a validation split, eval.py evaluates the
last checkpoint.

  python train.py --config=configs/lvae_omniglot.py --workdir=/tmp/lvae_omniglot
  python eval.py  --config=configs/lvae_omniglot.py --workdir=/tmp/lvae_omniglot

Data: TFDS 'omniglot' (105x105 -> 28x28, grey, inverted so strokes are 1), split
'train' (images_background, 19,280) / 'test' (images_evaluation, 13,180). The paper
used the 24,345 / 8,070 split of Burda et al. (2016), so numbers are close to but
not exactly comparable with the paper's. 19,280 // 256 = 75 steps per epoch.

Paper's numbers (REFERENCE.md; per-variant cells recalled), test log p(x) in nats:
VAE -110.46, VAE+BN -105.45, VAE+BN+warm-up -102.48, LVAE -102.11 (this config).
What we measure is `nll` in WORKDIR/eval_metrics.json (= -log p(x) estimate).

Hardware and runtime: one GPU (H100 class); 2000 epochs = 150k steps. Not measured
here (no GPU run of this config was made when it was written).
"""

from configs import lvae_mnist


def get_config():
  c = lvae_mnist.get_config()
  steps_per_epoch = 19280 // 256
  c.num_train_steps = 2000 * steps_per_epoch
  c.eval_every_steps = 100 * steps_per_epoch
  c.checkpoint_every_steps = 20 * steps_per_epoch
  c.data.name = 'omniglot'
  c.data.image_size = 28
  c.data.resize = 'bilinear'
  c.data.binarize = 'dynamic'   # grey strokes, re-binarised at every batch
  c.eval.select_metric = ''     # TFDS omniglot has no validation split: the last checkpoint
  return c
