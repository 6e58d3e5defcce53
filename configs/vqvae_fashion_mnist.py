"""VQ-VAE on Fashion-MNIST (60,000 / 10,000 28x28 grey images): the real-image row of
the VQ-VAE, with the model of vector-quantize-pytorch's examples/autoencoder.py.

  python train.py --config=configs/vqvae_fashion_mnist.py --workdir=runs/fmnist_vq
  python eval.py  --config=configs/vqvae_fashion_mnist.py --workdir=runs/fmnist_vq

`:plain` is the same model with plain EMA VQ and the straight-through gradient, the base
of the quantiser sweep (sweeps/vqvae_fashion_mnist_quantizers.py) and of the benchmark
against vector-quantize-pytorch (benchmarks/vs_vector_quantize.py).

The data is not shipped (30 MB): `apt install dataset-fashion-mnist` puts it where the
loader looks (vaes/data/idx_images.py; or --config.data.path=DIR, or
--config.data.source=tfds). Tune with --config.data.valid_size=10000
--config.data.eval_split=valid (the last 10,000 training images held out); report with
the defaults (all 60,000 to train, the 10,000 test images).

Model (model.arch='pool', the library's SimpleVQAutoEncoder layer for layer): 3x3 conv to
16, 2x2 max-pool, GELU, 3x3 conv to 32, 2x2 max-pool -> a 7x7 grid of D=32 vectors,
K=256 codes -> 2x nearest upsampling, 3x3 conv to 16, GELU, 2x upsampling, 3x3 conv to 1.
The library's recipe: batch 256, lr 3e-4 (AdamW), the output clamped to the data range.
Our objective: MSE of the output clipped to [0, 1] (model.likelihood='clipped_gaussian')
/ training-pixel variance + the codebook and commitment terms (the library: L1 + 10 x
commitment). Clipping is worth 14% of the validation NMSE at 1,000 steps (0.1085 against
0.1257 with the unclipped Gaussian, both scored on the clipped reconstruction; one run each,
benchmarks/README.md).
eval_metrics.json: normalized_mse, recon_mse, psnr, ssim, perplexity, codebook_usage and
a reconstruction grid (eval_reconstructions.png). The default quantiser is the sweep's
best on the validation split at 1,000 steps (benchmarks/README.md, "VQ-VAE on
Fashion-MNIST"): EMA VQ with the library's EMA decay 0.8, the rotation trick, a k-means
initial codebook and the EMA-count dead-code threshold. A PixelCNN prior over its codes:
configs/vqvae_fashion_mnist_prior.py.
"""

from configs import base
from vaes.families import vqvae as vqvae_family


def get_config(quantizer='best'):
  c = base.get_base_config()
  c.batch_size = 256
  c.num_train_steps = 10_000
  c.log_every_steps = 500
  c.eval_every_steps = 2500
  c.checkpoint_every_steps = 2500
  c.optimizer = 'adamw'
  c.learning_rate = 3e-4
  c.weight_decay = 0.01              # torch.optim.AdamW's default

  c.model = vqvae_family.model_config()   # every model field and its default
  c.model.arch = 'pool'
  c.model.hidden = 32
  c.model.num_downsamples = 2
  c.model.num_codes = 256
  c.model.code_dim = 32
  c.model.likelihood = 'clipped_gaussian'   # the library clamps its output to the data range
  if quantizer == 'best':
    c.model.ema_decay = 0.8
    c.model.rotation_trick = True
    c.model.kmeans_init = True
    c.model.dead_code_threshold = 2.0
  elif quantizer != 'plain':
    raise ValueError(f"configs/vqvae_fashion_mnist.py:{quantizer}: choose ':best' (the "
                     "default) or ':plain'.")

  c.data.name = 'fashion_mnist'
  c.data.binarize = 'none'

  c.eval.batch_size = 1000
  c.eval.num_images = 64
  return c
