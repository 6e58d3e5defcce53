"""Ladder VAE on dynamically binarised MNIST with the authors' training set: all 60,000 images.

  python train.py --config=configs/lvae_mnist_dynamic_60k.py \
      --workdir=~/runs/lvae_mnist_dynamic_60k_s0
  python eval.py  --config=configs/lvae_mnist_dynamic_60k.py \
      --workdir=~/runs/lvae_mnist_dynamic_60k_s0

configs/lvae_mnist_dynamic.py (model, optimiser, dynamic binarisation, 2000 epochs with the
KL warm-up over the first 200) trained as the authors' run_models.py does (dataset
'mnistresample'): on all 60,000 grey training images (config.data.train_split='train+valid':
the static file's 50,000 train and 10,000 valid images' grey sources), with no held-out split,
so no checkpoint is selected: eval.py reports the last one (2000 epochs of 60,000 images,
468,000 steps of 256) on the same 10,000 static test images as every MNIST row. No
evaluation runs during training (it could only be on test). The row beside
lvae_mnist_dynamic measures what the 10,000 held-out images cost: that row's seed-0 weights
score 79.78 nats on training images and 83.71 on valid (k = 200, README).

Paper (REFERENCE.md): LVAE, 5 layers, -82.12 before fine-tuning (the issue's target: at or
below 82.1), -81.74 best.

Measured (seed 0, code e448efa): test nll **82.31** nats (k = 5000; -ELBO 85.85), against
83.09 for lvae_mnist_dynamic seed 0 trained on 50,000 images.
Measured (seed 1, code 35a3555): test nll 82.69 (-ELBO 86.36); its layer 4 collapsed
(KL 1.6e-04 nats). The row: 82.50 nats, the mean of the two seeds.

Hardware and runtime: 468,000 steps on the 2-core CPU at 40 ms a step in its quietest
stretch (25 steps/s) and up to 140 ms beside other runs: the seed-0 run took 14 h 52 min of
training over six sessions, then 21 min 41 s for the 5000-sample test evaluation; seed 1,
19 h 42 min over eight sessions, then 39 min 50 s.
"""

from configs import lvae_mnist_dynamic

NUM_TRAIN_IMAGES = 60_000


def get_config():
  c = lvae_mnist_dynamic.get_config()
  c.data.train_split = 'train+valid'    # the authors' 60,000 training images
  steps_per_epoch = NUM_TRAIN_IMAGES // c.batch_size          # 234
  c.num_train_steps = 2000 * steps_per_epoch                  # 468,000
  c.checkpoint_every_steps = 10 * steps_per_epoch
  c.eval_every_steps = 0              # no held-out split: nothing to select on
  c.eval.select_metric = ''           # eval.py reports the last checkpoint
  return c
