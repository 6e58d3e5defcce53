"""VRNN-prior VRAE on JSB Chorales (Boulanger-Lewandowski et al. 2012: 382 chorales split
229/76/77, 88 keys, quarter-note frames), full sequences, test split.

The data ships with the project (data.name='jsb_chorales': vaes/data/files/
jsb_chorales_quarter.pkl, no download, no TensorFlow):

  python train.py --config=configs/vrnn_jsb.py --workdir=/tmp/vrnn_jsb
  python eval.py  --config=configs/vrnn_jsb.py --workdir=/tmp/vrnn_jsb

data.eval_split='valid' while tuning, 'test' to report. Your own pickle of the same format
(Nottingham, MuseData, Piano-midi.de, or "JSB Chorales.pickle" from
http://www-etud.iro.umontreal.ca/~boulanni/icml2012):
--config.data.name=polyphonic_pickle --config.data.path=/path/to/file.pickle.

Model: prior p(z_t | z_<t, x_<t) (VRNN, Chung et al. 2015), posterior q(z_t | z_<t, x_<=t),
Bernoulli decoder p(x_t | z_<=t, x_<t); eval.py reports nll_per_frame from 500 importance
samples, nats per real frame over the whole test split.

Published test NLL per frame on JSB (nats, lower is better; REFERENCE.md, "recalled" cells
are approximate): RNN 8.71 / LSTM 8.45 (recalled), STORN 6.91 (recalled), DMM 6.39, SRNN
4.74, RNN-NADE 5.19 (recalled); Pyro's DMM example reaches test -ELBO 6.87 per frame.
A run of this config should be compared with STORN / DMM (6.4-6.9): it has not been run in
this repository yet, so no number of ours is claimed.
Hardware and time: about 20k steps of batch 16 at T ~ 160 frames; a CPU does a few steps a
second at this size, a GPU is preferable.
"""

from configs import base
from configs import vrae


def get_config():
  c = vrae.get_config()
  c.batch_size = 16
  c.num_train_steps = 20000
  c.log_every_steps = 200
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 2000
  c.learning_rate = 1e-3
  c.lr_schedule = 'cosine'
  c.lr_warmup_steps = 500
  c.grad_clip_norm = 10.0

  c.model.prior = 'vrnn'
  c.model.hidden = 256
  c.model.latent = 32
  c.model.mlp_hidden = 256
  c.model.kl_warmup_start = 0.0
  c.model.kl_warmup_steps = 5000
  c.model.free_bits = 0.0

  c.data = base.get_base_config().data   # the data defaults, not the chorales config's
  c.data.name = 'jsb_chorales'      # the bundled copy; 'polyphonic_pickle' reads data.path
  c.data.path = ''                  # polyphonic_pickle only: --config.data.path=/path/to/file.pickle
  c.data.eval_split = 'test'
  c.data.max_len = 0                # whole sequences, padded to the longest (standard protocol)

  c.eval.batch_size = 32
  c.eval.num_importance_samples = 500
  c.eval.iw_chunk_size = 25
  return c
