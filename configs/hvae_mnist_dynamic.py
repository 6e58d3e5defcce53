"""Hierarchical VAE on dynamically binarised MNIST: configs/lvae_mnist_dynamic.py without
the ladder merge (bottom-up inference), the paper's "VAE" of the same depth with batch norm
and warm-up (Sonderby et al. 2016, Table 1).

  python train.py --config=configs/hvae_mnist_dynamic.py --workdir=~/runs/hvae_mnist_dynamic_s0
  python eval.py  --config=configs/hvae_mnist_dynamic.py --workdir=~/runs/hvae_mnist_dynamic_s0

Data, schedule, optimiser and evaluation as configs/lvae_mnist_dynamic.py (its docstring);
the model as configs/hvae_mnist.py. Paper: results/paper_numbers.json.
"""

from configs import lvae_mnist_dynamic


def get_config():
  c = lvae_mnist_dynamic.get_config()
  c.model.name = 'hvae'                # bottom-up inference ('hierarchical')
  return c
