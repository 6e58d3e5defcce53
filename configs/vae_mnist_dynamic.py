"""One-layer VAE on dynamically binarised MNIST: configs/lvae_mnist_dynamic.py with a
single stochastic layer of 64 units (MLPs of 2 x 512), the baseline row of the Ladder VAE
paper's comparison (Sonderby et al. 2016, Table 1).

  python train.py --config=configs/vae_mnist_dynamic.py --workdir=~/runs/vae_mnist_dynamic_s0
  python eval.py  --config=configs/vae_mnist_dynamic.py --workdir=~/runs/vae_mnist_dynamic_s0

Data, schedule, optimiser and evaluation as configs/lvae_mnist_dynamic.py (its docstring);
the model as configs/vae_mnist.py. Paper: results/paper_numbers.json.

Measured (seed 0, code 35a3555): test nll **85.36** nats (k = 5000; -ELBO 89.75), 2.27
behind lvae_mnist_dynamic seed 0 (83.09) on the same schedule; the best valid step was the
last (390,000). 8 h 34 min of training on a 2-core CPU beside another run, 38 min of evaluation.
"""

from configs import lvae_mnist_dynamic


def get_config():
  c = lvae_mnist_dynamic.get_config()
  c.model.name = 'hvae'                # bottom-up inference ('hierarchical')
  c.model.latent_sizes = (64,)
  c.model.hidden_sizes = (512,)
  return c
