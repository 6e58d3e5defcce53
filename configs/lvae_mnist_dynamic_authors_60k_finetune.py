"""Fine-tuning the authors' Ladder VAE on all 60,000 images
(configs/lvae_mnist_dynamic_authors_60k.py) on the importance-weighted bound of k = 10
samples, as configs/lvae_mnist_dynamic_60k_finetune.py fine-tunes the paper's model.

  python train.py --config=configs/lvae_mnist_dynamic_authors_60k_finetune.py \\
      --workdir=~/runs/lvae_mnist_dynamic_authors_60k_iw10_s0 \\
      --config.init_from=~/runs/lvae_mnist_dynamic_authors_60k_s0
  python eval.py  --config=configs/lvae_mnist_dynamic_authors_60k_finetune.py \\
      --workdir=~/runs/lvae_mnist_dynamic_authors_60k_iw10_s0 \\
      --config.init_from=~/runs/lvae_mnist_dynamic_authors_60k_s0

configs/lvae_mnist_dynamic_60k_finetune.py (k = 10, KL weight 1, a fresh Adam state, 10
epochs of the 60,000 images from the trained run's last checkpoint, nothing selected) with
the model of the run it starts from: the authors' three choices
(`lvae_mnist_dynamic_authors_60k.authors_choices`). The length is the one valid chose for
the paper's model (50,000 images, lvae_mnist_dynamic_finetune: 10 epochs, then level); it
was not chosen again for this model, which has no held-out split.

Runtime (an estimate, not yet measured): the paper's model's fine-tuning took 11 min 29 s
(3.4 steps/s); this model's step is slower (its own top-down path in the merge and batch
norm in every head: 2,485,824 parameters against 2,176,376), so expect 15-25 minutes on the
2-core CPU, then the 5000-sample test evaluation (about 25 minutes).
"""

from configs import lvae_mnist_dynamic_60k_finetune, lvae_mnist_dynamic_authors_60k


def get_config():
  c = lvae_mnist_dynamic_60k_finetune.get_config()
  lvae_mnist_dynamic_authors_60k.authors_choices(c.model)
  return c
