"""One-layer VAE on binarised MNIST: the baseline of the Ladder VAE paper's comparison
(Sonderby et al. 2016), configs/lvae_mnist.py with a single stochastic layer.

  python train.py --config=configs/vae_mnist.py --workdir=/tmp/vae_mnist
  python eval.py  --config=configs/vae_mnist.py --workdir=/tmp/vae_mnist

z_1 of 64 units, q(z_1 | x) and p(x | z_1) MLPs of 2 x 512 units: the bottom layer of
configs/lvae_mnist.py (with one layer the 'hierarchical' and 'ladder' inference modes
coincide). Everything else is configs/lvae_mnist.py's, so that only the depth of the
latent hierarchy differs between the rows (configs/hvae_mnist.py: the same 5 layers as
the ladder, bottom-up inference): the bundled static binarisation, batch norm, KL
warm-up over the first 10% of the run (200 of 2000 epochs), Adam 2e-4, batch 256,
the best checkpoint on 'valid' by `nll`, 5000 importance samples on the test split. For
the paper's plain "VAE" row, add --config.model.batch_norm=False
--config.model.kl_warmup_fraction=0.

Reference numbers, recalled and approximate (REFERENCE.md gives the LVAE's -81.74
and the OMNIGLOT rows only): one-layer VAE on MNIST about -85 to -87 nats
(Burda et al. 2016: -86.76 for 50 latent units; the LVAE paper's table lists a
one-layer VAE + normalising flow at -85.10).

Hardware and runtime: as configs/lvae_mnist.py. Measured (results/vae_mnist): 50 of the 2000
epochs (--config.num_train_steps=9750 --config.eval_every_steps=4875
--config.checkpoint_every_steps=1950) on the 2-core CPU beside other runs: test nll 92.37 /
92.37 (seeds 0 / 1), 18 min 40 s / 16 min 24 s of training and 43 min 58 s / 25 min 00 s of
test evaluation.
"""

from configs import lvae_mnist


def get_config():
  c = lvae_mnist.get_config()
  c.model.name = 'hvae'                # bottom-up inference ('hierarchical')
  c.model.latent_sizes = (64,)
  c.model.hidden_sizes = (512,)
  return c
