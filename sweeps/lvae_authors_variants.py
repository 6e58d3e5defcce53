"""The Ladder VAE as the paper describes it against the three choices of the authors'
run_models.py (github.com/casperkaae/LVAE, the ladder command of its README), one at a time
and together, on the paper's protocol at a shortened schedule:

  python -m vaes.sweep --config=configs/lvae_mnist_dynamic.py \
      --sweep=sweeps/lvae_authors_variants.py --workdir_root=runs/sweep_lvae_authors

- model.share_top_down=False: the merge's own top-down path (-ladder_share_params False);
- model.up_from_mean=True: d_l = up_l(mu_hat_l-1) (-only_mu_up True);
- model.head_batch_norm=True: batch norm in every Gaussian head (their BN'd `denselayer`).

Each run is 39,000 steps (200 of the paper's 2000 epochs; the KL warm-up, a fraction of
the run, scales with it), evaluated on valid every 50 epochs: about 45 minutes of one idle
core. Read the table's best valid nll (k = 200): a variant that wins there is the one to
run for the full 390,000 steps.
Not yet run (README, MNIST rows).
"""


def get_sweep():
  authors = {'model.share_top_down': False, 'model.up_from_mean': True,
             'model.head_batch_norm': True}
  runs = [{}] + [{k: v} for k, v in authors.items()] + [authors]
  return [{**run, 'num_train_steps': 39000, 'eval_every_steps': 9750, 'seed': 0}
          for run in runs]
