"""VQ-VAE-2 at the paper's sizes (Razavi et al. 2019): 256x256x3 inputs, bottom
codes 64x64 (stride 4), top codes 32x32 (stride 8), K = 512 codes of D = 64 per
level, 128 hidden channels, 2 residual blocks of 32 channels, EMA codebooks
(decay 0.99), beta = 0.25, MSE reconstruction, Adam 3e-4, batch 128 -- the
defaults of the reference PyTorch implementation (rosinality/vq-vae-2-pytorch).
Data: TFDS celeb_a, centre crop 148 then resized to 256 (vaes/data/tfds_data.py).

  tfds build celeb_a --data_dir=$TFDS_DIR        # once, needs network
  python train.py --config=configs/vqvae2_256.py --workdir=runs/vqvae2_celeba \
      --config.data.tfds_data_dir=$TFDS_DIR
  python eval.py  --config=configs/vqvae2_256.py --workdir=runs/vqvae2_celeba \
      --config.data.tfds_data_dir=$TFDS_DIR
  # then the priors (top, and bottom conditioned on top):
  python train.py --config=configs/vqvae2_prior.py:celeb_a --workdir=runs/vqvae2_celeba_prior \
      --config.data.vqvae_workdir=runs/vqvae2_celeba \
      --config.data.vqvae.data.tfds_data_dir=$TFDS_DIR

Hardware: one H100. Speed: bf16 compute (config.compute_dtype), float32
quantisation with one-hot matmul lookups (no gather / scatter-add in the
backward). Reference throughput of the train step at batch 128 (REFERENCE.md,
H100): PyTorch 2,130 img/s fp32, 4,610 img/s bf16 + torch.compile; target for
this config 6,900 img/s. Measured here (one H100 80GB, JAX 0.11.2, random
inputs, benchmarks/train_step.py's step): bf16 34.7 ms/step = 3,690 img/s,
float32 99.9 ms = 1,280 img/s, peak 5.4 GiB. Without any quantiser (identity in
its place) the bf16 step still takes 30.5 ms (4,200 img/s), and quantising in
bf16 instead of float32 saves 1.5 ms: the convolutions, not the VQ, set the pace.
Paper numbers (ImageNet 256x256, not CelebA, recalled): prior NLL in bits per
code, top 3.40 train / 3.41 val, bottom 3.45 / 3.44 (Razavi 2019, table 1);
reconstruction MSE 0.0047 (bottom + top) on ImageNet. CelebA numbers are not in
the paper. `--config.model.likelihood=logistic` gives a discrete decoder for
bits/dim (the paper's and the reference's loss is MSE).
"""

from configs import vqvae2


def get_config():
  c = vqvae2.get_config()
  c.batch_size = 128
  c.num_train_steps = 100_000
  c.log_every_steps = 500
  c.eval_every_steps = 10_000
  c.checkpoint_every_steps = 5_000
  c.learning_rate = 3e-4
  c.compute_dtype = 'bfloat16'

  c.model.hidden = 128
  c.model.res_hidden = 32
  c.model.num_res_blocks = 2
  c.model.num_levels = 2
  c.model.bottom_downsamples = 2
  c.model.num_codes = 512
  c.model.code_dim = 64
  c.model.likelihood = 'gaussian'

  c.data.name = 'celeb_a'
  c.data.image_size = 256
  c.data.resize = 'bilinear'
  c.data.crop_size = 148
  c.eval.batch_size = 128
  c.eval.num_images = 32
  return c
