"""Ladder VAE vs. bottom-up hierarchical VAE on the binarised digits, three seeds each
(Sonderby et al. 2016, Table 1's comparison at toy scale).

  python -m vaes.sweep --config=configs/lvae.py --sweep=sweeps/lvae_inference_seeds.py \
      --workdir_root=runs/sweep_lvae

Six runs of configs/lvae.py (~2.5 min each on a 2-core CPU); model.name='ladder_vae'
lets model.inference choose the inference network ('ladder': top-down, 'hierarchical':
bottom-up). The table's nll and neg_elbo say whether the gap between the two is larger
than the spread over seeds (README: 22.09 vs 22.24 nats at seed 0).
"""


def get_sweep():
  return [{'model.name': 'ladder_vae', 'model.inference': inference, 'seed': seed}
          for inference in ('ladder', 'hierarchical') for seed in (0, 1, 2)]
