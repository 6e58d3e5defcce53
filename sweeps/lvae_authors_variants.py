"""The Ladder VAE as the paper describes it against the three choices of the authors'
run_models.py (github.com/casperkaae/LVAE, the ladder command of its README), all of them
together and one at a time, on the paper's protocol at a shortened schedule:

  python -m vaes.sweep --config=configs/lvae_mnist_dynamic.py \
      --sweep=sweeps/lvae_authors_variants.py --workdir_root=runs/sweep_lvae_authors

- model.share_top_down=False: the merge's own top-down path (-ladder_share_params False);
- model.up_from_mean=True: d_l = up_l(mu_hat_l-1) (-only_mu_up True);
- model.head_batch_norm=True: batch norm in every Gaussian head (their BN'd `denselayer`).

Each run is 39,000 steps (200 of the paper's 2000 epochs; the KL warm-up, a fraction of
the run, scales with it), evaluated on valid every 50 epochs: about 45 minutes of one idle
core. This is a choice of model, so it is made on the validation split and the test split
is not touched: eval.py scores each run's last step on the 10,000 valid images with 1,000
importance samples (data.eval_split='valid', about 9 minutes), and the sweep's table is of
valid nll. A variant that wins there is the one to run for the full 390,000 steps.
The order puts the paper's model and all three choices together first, so that the first
two runs already answer whether the authors' model is the better one.
"""


def get_sweep():
  authors = {'model.share_top_down': False, 'model.up_from_mean': True,
             'model.head_batch_norm': True}
  runs = [{}, authors] + [{k: v} for k, v in authors.items()]
  scored_on_valid = {'data.eval_split': 'valid', 'eval.checkpoint': 'latest',
                     'eval.num_importance_samples': 1000}
  return [{**run, **scored_on_valid, 'num_train_steps': 39000, 'eval_every_steps': 9750,
           'seed': 0} for run in runs]
