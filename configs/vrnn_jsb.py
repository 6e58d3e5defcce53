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
Bernoulli decoder p(x_t | z_<=t, x_<t) (configs/vrnn_smooth_jsb.py: the same with the
smoothing posterior q(z_t | z_<t, x_1:T), 3,000 steps and a moving average of the weights;
configs/vrnn_fivo_jsb.py: the same trained on the FIVO bound of 4 particles);
eval.py reports nll_per_frame from 500 importance samples, nats per real frame over the whole
test split.

Published test NLL per frame on JSB (nats, lower is better; REFERENCE.md, "recalled" cells
are approximate): RNN 8.71 / LSTM 8.45 (recalled), STORN 6.91 (recalled), DMM 6.39, SRNN
4.74, RNN-NADE 5.19 (recalled); Pyro's DMM example reaches test -ELBO 6.87 per frame.
Compare with STORN / DMM (6.4-6.9); the measured rows are in the README's results table.
Schedule: 1,500 steps of batch 16 (whole chorales, T up to 160 frames; about 105 epochs
of 229 chorales), warm-ups as fractions of the run so that a shortened run
(--config.num_train_steps=N) keeps them in proportion (learning rate over the first 5%,
KL weight 0 -> 1 over the first 30%), and every 250 steps an evaluation on 'valid'
(k = 25) that keeps the checkpoint of the lowest valid nll_per_frame in WORKDIR/best
(config.eval.select_metric); eval.py reports that one on 'test' with k = 500
(--config.eval.checkpoint=latest for the last). The model overfits 229 chorales within a
few thousand steps (REFERENCE.md: test 6.91 after 1,500 steps, 7.71 after 4,000), so the
selection, not the step count, ends training.
Sizes: 256 GRU units, 32 latents, 256-unit MLPs. Measured on the 2-core CPU, seeds 0 and 1:
test nll_per_frame 6.883 and 6.956 (mean 6.920), the best valid step the last in both, about
10 minutes of training and 2.5 of evaluation each. At 128 / 16 / 128 units and 2,500 steps
this config gave 7.289: the larger model is 0.41 nats/frame better in fewer steps.
"""

from configs import base
from configs import vrae


def get_config():
  c = vrae.get_config()
  c.batch_size = 16
  c.num_train_steps = 1500          # ~105 epochs of 229 chorales; the best valid step is kept
  c.log_every_steps = 250
  c.eval_every_steps = 250          # on 'valid': chooses the checkpoint eval.py reports
  c.checkpoint_every_steps = 500
  c.learning_rate = 1e-3
  c.lr_schedule = 'cosine'
  c.lr_warmup_steps = 0
  c.lr_warmup_fraction = 0.05
  c.grad_clip_norm = 10.0

  c.model.prior = 'vrnn'
  c.model.hidden = 256
  c.model.latent = 32
  c.model.mlp_hidden = 256
  c.model.kl_warmup_start = 0.0
  c.model.kl_warmup_steps = 0
  c.model.kl_warmup_fraction = 0.3
  c.model.free_bits = 0.0

  c.data = base.get_base_config().data   # the data defaults, not the chorales config's
  c.data.name = 'jsb_chorales'      # the bundled copy; 'polyphonic_pickle' reads data.path
  c.data.path = ''                  # polyphonic_pickle only: --config.data.path=/path/x.pickle
  c.data.eval_split = 'test'
  c.data.max_len = 0                # whole sequences, padded to the longest (standard protocol)

  c.eval.batch_size = 32
  c.eval.num_importance_samples = 500
  c.eval.iw_chunk_size = 25
  c.eval.select_metric = 'nll_per_frame'   # the best checkpoint on 'valid', in WORKDIR/best
  c.eval.select_mode = 'min'
  c.eval.select_num_importance_samples = 25   # cheap selection; eval.py reports k = 500
  return c
