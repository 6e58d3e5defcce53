"""VQ-VAE on the digits: codebook size K = 16, 64 (the default), 256.

  python -m vaes.sweep --config=configs/vqvae.py --sweep=sweeps/vqvae_codebook_size.py \
      --workdir_root=runs/sweep_vqvae_k

Three runs of configs/vqvae.py (~5 min each on a 2-core CPU). What to read in the
table: perplexity grows with K while codebook_usage falls (more dead codes), and
normalized_mse drops until the 16 latents per image stop being the bottleneck.
"""


def get_sweep():
  return [{'model.num_codes': k} for k in (16, 64, 256)]
