"""VRAE on the Bach chorales shipped with music21 (88-key binary piano rolls, quarter-note
frames, fixed 60/20/20 split by chorale, pieces of at most 64 frames): the default that
runs anywhere, no download.

  python train.py --config=configs/vrae.py --workdir=/tmp/vrae
  python eval.py  --config=configs/vrae.py --workdir=/tmp/vrae

Prior p(z_t | z_<t), posterior q(z_t | z_<t, x_<=t), Bernoulli decoder p(x_t | z_<=t, x_<t).
The first run parses the corpus (about 1-3 minutes) into ~/.cache/vaes/chorales_v1.npz.
Target on a 2-core CPU: train + eval in under 10 minutes, test nll_per_frame <= 0.8 x
baseline_nll_per_frame (independent per-key Bernoullis fitted to the training frames).
Numbers on these chorales are not comparable with the standard JSB split
(configs/vrnn_jsb.py).

Measured (2-core CPU shared with other jobs, load average 7-9; first run with the corpus
already cached): train.py 1500 steps + eval.py = 2 min 57 s wall; test split (87 pieces,
4002 frames): nll_per_frame 7.47 (IW, k = 100), neg_elbo_per_frame 7.79 (recon 5.32 +
kl 2.47), baseline_nll_per_frame 11.56, i.e. nll / baseline = 0.65.
"""

from configs import base
from vaes.families import vrae as vrae_family


def get_config():
  c = base.get_base_config()
  c.batch_size = 32
  c.num_train_steps = 1500
  c.log_every_steps = 100
  c.eval_every_steps = 0
  c.checkpoint_every_steps = 500
  c.learning_rate = 3e-3
  c.lr_schedule = 'cosine'
  c.lr_warmup_steps = 50
  c.grad_clip_norm = 5.0

  c.model = vrae_family.model_config()   # every model field and its default
  c.eval.update(vrae_family.eval_config())   # the family's eval fields and defaults

  c.data.name = 'chorales'
  c.data.eval_split = 'test'        # 'valid' | 'test' | 'train'
  c.data.max_len = 64               # longer chorales are cut into pieces of <= 64 frames
  c.data.cache_dir = ''             # '' = ~/.cache/vaes
  c.data.num_chorales = 0           # 0 = all 371; N > 0 = the first N (quick tests)

  c.eval.batch_size = 64
  return c
