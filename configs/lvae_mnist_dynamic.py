"""Ladder VAE on dynamically binarised MNIST: the Ladder VAE paper's own protocol
(Sonderby et al. 2016, "Ladder Variational Autoencoders", Table 1, MNIST).

  python train.py --config=configs/lvae_mnist_dynamic.py --workdir=~/runs/lvae_mnist_dynamic_s0
  python eval.py  --config=configs/lvae_mnist_dynamic.py --workdir=~/runs/lvae_mnist_dynamic_s0

The model and schedule of configs/lvae_mnist.py (5 stochastic layers 64-32-16-8-4, MLP
blocks 512-256-128-64-32 of two Dense + batch norm + leaky ReLU layers, KL warm-up over the
first 200 of 2000 epochs, Adam 2e-4, batch 256); only the data and two optimiser details
differ:

Data (config.data.binarize='dynamic' on the bundled 'binarized_mnist', vaes/data/local.py):
every training batch is a fresh sample x ~ Bernoulli(grey / 255) of the grey MNIST images
(shipped in vaes/data/files/mnist/) that are the sources of the static file's 50,000
training images, drawn from (seed, step), so a resumed run sees the same bits. The
10,000 valid images that select the checkpoint and the 10,000 test images that eval.py
reports on are the static file's own binary images (one fixed Bernoulli sample of their
grey sources): the static rows (configs/lvae_mnist.py) are scored on the same binary test
images, so the two protocols compare directly. The authors' code (github.com/casperkaae/LVAE,
run_models.py, dataset 'mnistresample') trains on all 60,000 images and scores one random
binarisation of the test set; here 10,000 are held out to choose the checkpoint.

Optimiser, as in the authors' run_models.py: Adam with epsilon 1e-4 (not 1e-8) and the
gradient's global norm clipped at 4 (their element-wise clip at 0.9 after it is left out).

Paper (nats, test log-likelihood with 5000 importance samples, higher is better): LVAE 5
layers -82.12, with fine-tuning -81.84 (REFERENCE.md: -81.74 for the best variant, which
adds IW training; results/paper_numbers.json has the cells). Fine-tuning with the IW bound:
--config.model.train_importance_samples=10 on a trained workdir's checkpoint (see README).

Checkpoint selection: the best valid `nll` (200 importance samples) of the evaluations
every 100 epochs; eval.py then reports `nll` with 5000 samples on the 10,000 test images.

Hardware and runtime: the paper's 2000 epochs are 390,000 steps of 256; on the 2-core CPU
of this repository's machines about 30 ms a step alone, 55 ms with a second run beside it
(benchmarks/README.md), so 3.5-6 hours of training, 20 selection evaluations of about
2 minutes, and a test evaluation of about 45 minutes of one core.

Measured (seed 0, code 5b48b58; results/lvae_mnist_dynamic): test nll 83.09 (-ELBO 87.03),
best valid 83.72 at step 390,000, the last. 12 h 37 min of training over several sessions
beside other runs (116 ms a step on average, the selection evaluations included), and
27 min 19 s for the test evaluation.
"""

from configs import lvae_mnist


def get_config():
  c = lvae_mnist.get_config()
  c.data.binarize = 'dynamic'     # fresh Bernoulli(grey / 255) training batches
  c.adam_eps = 1e-4               # the authors' run_models.py (lasagne adam, epsilon=1e-4)
  c.grad_clip_norm = 4.0          # their total_norm_constraint(max_norm=4)
  # The selection evaluations on 'valid': every 100 epochs (the authors' eval_epochs), with
  # 200 importance samples (about 2 minutes of one core each; 500 would be 4 minutes,
  # and 40 of them at the static config's 50-epoch cadence would add 2.8 hours a run).
  c.eval_every_steps = 100 * (lvae_mnist.NUM_TRAIN_IMAGES // c.batch_size)
  c.eval.select_num_importance_samples = 200
  return c
