"""VQ-VAE-2 on the digits: commitment weight beta = 0.1, 0.25 (the paper's), 1.0.

  python -m vaes.sweep --config=configs/vqvae2.py --sweep=sweeps/vqvae2_commitment.py \
      --workdir_root=runs/sweep_vqvae2_beta --config.num_train_steps=1500

Three runs of configs/vqvae2.py (~8 min each at 1500 steps on a 2-core CPU). A larger
beta pulls the encoder outputs z_e onto their codes e_k: the commitment loss falls and
reconstruction (normalized_mse, decoder_nll_bits_per_dim) gets worse past some point.
"""


def get_sweep():
  return [{'model.beta': beta} for beta in (0.1, 0.25, 1.0)]
