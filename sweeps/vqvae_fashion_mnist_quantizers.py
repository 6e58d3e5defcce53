"""Fashion-MNIST VQ-VAE: the quantisers and codebook controls, each on its own, on the
validation split (the last 10,000 training images held out), 1,000 steps each (the step
count of vector-quantize-pytorch's examples/autoencoder.py).

  python -m vaes.sweep --config=configs/vqvae_fashion_mnist.py:plain \
      --sweep=sweeps/vqvae_fashion_mnist_quantizers.py --workdir_root=runs/fmnist_vq_sweep \
      --config.data.valid_size=10000 --config.data.eval_split=valid \
      --config.num_train_steps=1000 --config.eval_every_steps=1000

Every run is configs/vqvae_fashion_mnist.py:plain (EMA VQ, K = 256, D = 32, beta 0.25,
straight-through) with the overrides below; the table it prints, and what it says about
each option, is in benchmarks/README.md ("VQ-VAE on Fashion-MNIST").
"""

VARIANTS = {
    'vq': {},                                                       # EMA VQ, straight-through
    'vq_rotation': {'model.rotation_trick': True},                  # Fifty et al. 2024
    'vq_kmeans_restarts': {'model.kmeans_init': True, 'model.restart_after': 20},
    'vq_kmeans_ema_dead': {'model.kmeans_init': True, 'model.dead_code_threshold': 2.0},
    'vq_rotation_kmeans_ema_dead': {'model.rotation_trick': True, 'model.kmeans_init': True,
                                    'model.dead_code_threshold': 2.0},
    # The library's EMA decay, 0.8 (ours 0.99): a codebook that follows the encoder faster.
    'vq_rotation_decay08': {'model.rotation_trick': True, 'model.ema_decay': 0.8},
    'vq_rotation_kmeans_ema_dead_decay08': {
        'model.rotation_trick': True, 'model.kmeans_init': True,
        'model.dead_code_threshold': 2.0, 'model.ema_decay': 0.8},
    'vq_entropy': {'model.entropy_weight': 0.1},                    # codebook diversity loss
    'simvq_rotation': {'model.simvq': True, 'model.use_ema': False,
                       'model.rotation_trick': True},
    'lfq': {'model.quantizer': 'lfq', 'model.binary_bits': 8, 'model.entropy_weight': 0.1},
    'bsq': {'model.quantizer': 'bsq', 'model.binary_bits': 8, 'model.entropy_weight': 0.1},
    'fsq': {'model.quantizer': 'fsq', 'model.fsq_levels': (8, 6, 5)},   # 240 codes
    # Two residual stages: 16 bits per latent, twice the others' (their own row).
    'rvq2_dropout': {'model.quantizer': 'rvq', 'model.rvq_stages': 2,
                     'model.quantize_dropout': True},
    'rfsq2_dropout': {'model.quantizer': 'rfsq', 'model.fsq_levels': (8, 6, 5),
                      'model.rvq_stages': 2, 'model.quantize_dropout': True},
}


def get_sweep():
  return list(VARIANTS.values())
