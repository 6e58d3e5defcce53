"""configs/srnn_jsb.py with a frame-autoregressive emission: p(x_t | z_t, d_t) is a MADE
over the 88 keys (Germain et al. 2015; config.model.made_hidden units) conditioned on the
decoder's output, instead of 88 independent Bernoullis. The notes of a chord are strongly
dependent; the factorised emission of DMM, VRNN and SRNN must carry that through z_t,
whereas RNN-NADE (Boulanger-Lewandowski et al. 2012) models it inside the frame.

  python train.py --config=configs/srnn_made_jsb.py --workdir=~/runs/srnn_made_jsb_s0
  python eval.py  --config=configs/srnn_made_jsb.py --workdir=~/runs/srnn_made_jsb_s0

srnn_jsb -> srnn_made_jsb changes the emission alone (data, sizes, schedule, moving average
of the weights and checkpoint selection are srnn_jsb's). The bound and its k = 500
importance-weighted estimate stay exact: the MADE gives log p(x_t | .) in one pass.

Measured (seed 0, 2-core CPU shared with two to four other jobs): 3,000 steps in 26 min,
best valid nll_per_frame 6.413 at step 1,250 (srnn_jsb: 6.819 at 1,250), test 6.303
(srnn_jsb 6.776 / 6.782): the emission is worth 0.48 nats/frame. It overfits as early
as srnn_jsb: valid 12.8 at step 3,000 while the train -ELBO falls to 1.93. On 1,500 steps
(--config.num_train_steps=1500, warm-ups and cosine in proportion) best valid 6.390 at
1,250, test 6.335: valid favours 1,500 steps by 0.02 and test favours 3,000 by 0.03, one
seed each, so the schedule stays srnn_jsb's (one change from it).
"""

from configs import srnn_jsb


def get_config():
  c = srnn_jsb.get_config()
  c.model.made_hidden = 256          # MADE units over the 88 keys of a frame
  return c
