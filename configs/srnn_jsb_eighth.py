"""SRNN on the SRNN paper's own JSB Chorales file: the data its 4.74 nats/frame was measured on.

  git clone https://github.com/marcofraccaro/srnn ~/srnn     # the file is in the repository
  python train.py --config=configs/srnn_jsb_eighth.py --workdir=~/runs/srnn_jsb_eighth_s0 \
      --config.data.path=$HOME/srnn/data/jsb_raw_batchsize16_seqlen100.npz
  python eval.py  --config=configs/srnn_jsb_eighth.py --workdir=~/runs/srnn_jsb_eighth_s0 \
      --config.data.path=$HOME/srnn/data/jsb_raw_batchsize16_seqlen100.npz

Data (vaes/data/music.py, `load_srnn_npz`): the authors' data/jsb_raw_batchsize16_seqlen100.npz
holds the same 229 / 76 / 77 chorales as the quarter-note pickle of the other JSB rows, on an
eighth-note grid: 9,396 test frames where the quarter grid has 4,725 (about 2T frames for a
chorale of T quarter notes), and 55% of consecutive test frames equal the one before (11% on
the quarter grid).
Training and validation are the authors' pieces of 100 frames (272 and 80, all frames real),
the test split the 77 whole chorales. A frame that repeats its predecessor is cheap to
predict, so per-frame numbers on the two grids are not comparable: the paper's 4.74 belongs
beside this config's number, DMM's 6.39 and STORN's 6.91 beside configs/srnn_jsb.py's.

What the paper reports (SRNN repository, ml/models/SRNN_midi.py and train_srnn_midi.py): the
ELBO per frame of each test chorale, averaged over chorales; here neg_elbo_per_frame_seq_mean
(the same average) and nll_per_frame_seq_mean (the importance-weighted bound, k = 500,
tighter) beside the pooled *_per_frame metrics.

Model and schedule: configs/srnn_jsb.py unchanged (256 units, 32 latents, 3,000 steps of 16,
weight average 0.995, the best valid nll kept), so that this row and srnn_jsb differ in the
data grid alone. The authors' run used d_t and a_t of 300 units, z_t of 100, one 500-unit
layer per MLP, Adam 1e-3 with decay, KL temperature 0.2 -> 1 over 20 of 50 epochs.
"""

from configs import srnn_jsb


def get_config():
  c = srnn_jsb.get_config()
  c.data.name = 'polyphonic_pickle'   # a path ending in .npz is read as the SRNN repository's
  c.data.path = ''                    # required: the .npz's path (above)
  return c
