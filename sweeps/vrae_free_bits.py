"""VRAE on the Bach chorales: free bits lambda = 0 (the default), 0.05, 0.25 nats per
latent dimension per frame, with and without KL warm-up.

  python -m vaes.sweep --config=configs/vrae.py --sweep=sweeps/vrae_free_bits.py \
      --workdir_root=runs/sweep_vrae_kl

Six runs of configs/vrae.py (~3 min each on a 2-core CPU). Free bits and warm-up both
keep q(z_t | z_<t, x_<=t) from collapsing onto the prior early on; the table's
kl_per_frame shows how much the latents carry, nll_per_frame whether it pays.
"""


def get_sweep():
  return [{'model.free_bits': free_bits, 'model.kl_warmup_steps': warmup}
          for free_bits in (0.0, 0.05, 0.25) for warmup in (0, 500)]
