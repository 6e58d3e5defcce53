"""The VRAE workload of REFERENCE.md's PyTorch VRNN comparison: x 88-dim piano
rolls, hidden 512, latent 64, batch 128, sequences of data.max_len frames, Bernoulli
NLL + KL, Adam, gradient clipping, VRNN prior. Data: a random piano-roll pickle
written by benchmarks/make_fake_pianoroll.py (throughput does not depend on it).

  python benchmarks/make_fake_pianoroll.py /tmp/fake_jsb.pkl
  python benchmarks/train_step.py --config=benchmarks/configs/vrnn_bench.py \
      --config.data.path=/tmp/fake_jsb.pkl --config.data.max_len=128
"""

from configs import vrae


def get_config():
  c = vrae.get_config()
  c.batch_size = 128
  c.grad_clip_norm = 10.0
  # Measured on one H100 at T=128 (benchmarks/README.md): f32 unroll 1 375k frames/s,
  # bf16 unroll 4 636k frames/s.
  c.compute_dtype = 'bfloat16'
  c.model.prior = 'vrnn'
  c.model.hidden = 512
  c.model.latent = 64
  c.model.mlp_hidden = 512
  c.model.unroll = 4
  c.data.name = 'polyphonic_pickle'
  c.data.path = '/tmp/fake_jsb.pkl'
  c.data.max_len = 128
  c.eval.batch_size = 128
  return c
