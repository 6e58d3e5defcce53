"""VQ-VAE on CIFAR-10 as in Sonnet's example notebook (the 10k-step reference).

128 hidden channels, 2 residual blocks of 32, K = 512 codes of D = 64,
beta = 0.25, EMA codebook (decay 0.99), Adam 3e-4, batch 32, 10k steps,
Gaussian likelihood (MSE / training variance).

Command:
  python train.py --config=configs/vqvae_cifar10_sonnet.py --workdir=runs/vq_sonnet \
      --config.data.tfds_data_dir=$TFDS_DIR
  python eval.py --config=configs/vqvae_cifar10_sonnet.py --workdir=runs/vq_sonnet \
      --config.data.tfds_data_dir=$TFDS_DIR

Hardware: a single GPU takes a few minutes; a 2-core CPU about an hour.
Reference result (Sonnet, test): normalised MSE 0.056, perplexity 326 of 512.
"""

from configs import vqvae_cifar10


def get_config():
  c = vqvae_cifar10.get_config()
  c.batch_size = 32
  c.num_train_steps = 10_000
  c.eval_every_steps = 5_000
  c.checkpoint_every_steps = 2_000
  c.learning_rate = 3e-4
  c.model.hidden = 128
  c.model.res_hidden = 32
  c.model.use_ema = True
  c.model.ema_decay = 0.99
  c.model.likelihood = 'gaussian'
  return c
