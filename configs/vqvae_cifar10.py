"""VQ-VAE on CIFAR-10, the paper's setup (van den Oord et al. 2017, sec. 4.1).

Encoder: two 4x4 stride-2 convolutions, two residual blocks (ReLU, 3x3 conv,
ReLU, 1x1 conv) with 256 hidden units; 8x8 latents, K = 512 codes of D = 64,
beta = 0.25; Adam 2e-4, batch 128, 250k steps. The decoder likelihood is a
discretised logistic so that bits/dim is defined.

Command (data prepared once with `tfds build cifar10 --data_dir=$TFDS_DIR`):
  python train.py --config=configs/vqvae_cifar10.py --workdir=runs/vqvae_cifar10 \
      --config.data.tfds_data_dir=$TFDS_DIR
  python eval.py  --config=configs/vqvae_cifar10.py --workdir=runs/vqvae_cifar10 \
      --config.data.tfds_data_dir=$TFDS_DIR

Hardware: one GPU (H100-class) or a TPU slice; expected runtime of the order of
an hour on one H100 (not yet measured in this project).
Paper numbers (test bits/dim, with a PixelCNN prior over the codes, see
configs/vqvae_prior.py for the prior stage): VQ-VAE 4.67, VAE 4.51, VIMCO 5.14;
independent reproductions land near 5.0. eval.py of this stage reports the
decoder NLL and `bits_per_dim_uniform_prior` (a uniform prior over codes, an
upper bound the learned prior improves on).
"""

from configs import vqvae


def get_config():
  c = vqvae.get_config()
  c.batch_size = 128
  c.num_train_steps = 250_000
  c.log_every_steps = 500
  c.eval_every_steps = 10_000
  c.checkpoint_every_steps = 5_000
  c.learning_rate = 2e-4

  c.model.hidden = 256
  c.model.res_hidden = 256
  c.model.num_res_blocks = 2
  c.model.num_downsamples = 2
  c.model.num_codes = 512
  c.model.code_dim = 64
  c.model.beta = 0.25
  c.model.use_ema = False
  c.model.likelihood = 'logistic'

  c.data.name = 'cifar10'
  c.data.image_size = 32
  c.eval.batch_size = 500
  return c
