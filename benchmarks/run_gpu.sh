#!/usr/bin/env bash
# The GPU measurements of benchmarks/README.md, in one go, most wanted first. Usage
# (repo root):  OUT=/tmp/bench bash benchmarks/run_gpu.sh [extra --config.* flags for every run]
# Writes $OUT/results.jsonl (one JSON line per run) and prints a short log.
# About 10 minutes on one H100 (each run: start-up and compilation, then timed steps).
# PART=1 (VQ-VAE, VQ-VAE-2) and PART=2 (Ladder VAE, VRNN) split it into two ~5-minute calls.
set -u
OUT=${OUT:-/tmp/bench}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export TF_CPP_MIN_LOG_LEVEL=3
PY=${PY:-python3}
[ -f .bench/fake_jsb.pkl ] || { mkdir -p .bench && $PY benchmarks/make_fake_pianoroll.py .bench/fake_jsb.pkl; }
EXTRA=("$@")
step() { echo "== train_step $*"; timeout ${RUN_TIMEOUT:-180} $PY benchmarks/train_step.py \
  --output="$OUT/results.jsonl" --repeats=${REPEATS:-10} "$@" "${EXTRA[@]}" 2>&1 | grep -v "^W\|^I0\|^E0000" | tail -3; }
evaluation() { echo "== evaluation $*"; timeout ${RUN_TIMEOUT:-180} $PY benchmarks/evaluation.py \
  --output="$OUT/results.jsonl" "$@" "${EXTRA[@]}" 2>&1 | grep -v "^W\|^I0\|^E0000" | tail -3; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
$PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"

if [ "${PART:-all}" != 2 ]; then
VQ="--config=configs/vqvae_cifar10_sonnet.py --config.batch_size=128 --config.compute_dtype=bfloat16"
V2="--config=configs/vqvae2_256.py --config.batch_size=128 --config.compute_dtype=bfloat16"
for U in subpixel phases transpose; do                                       # same function
  step $VQ --config.model.upsample=$U; step $V2 --config.model.upsample=$U; done
for K in 8 32; do step $VQ --config.steps_per_dispatch=$K; done             # launch-bound small step
step $V2 --config.steps_per_dispatch=4
step --config=configs/vqvae_cifar10_sonnet.py --config.batch_size=128 --config.compute_dtype=float32
fi
if [ "${PART:-all}" != 1 ]; then
step --config=configs/lvae_mnist.py                                          # paper's MNIST LVAE
evaluation --config=configs/lvae_mnist.py --num_examples=10000               # IW k=5000, 10k images
R="--config=benchmarks/configs/vrnn_bench.py --config.data.path=.bench/fake_jsb.pkl"
step $R                                                                      # bf16, unroll 4
step $R --config.model.unroll=8
step $R --config.model.remat=True
[ "${SCALING:-0}" = 1 ] && for T in 32 128 512 1024; do
  step $R --config.data.max_len=$T --config.compute_dtype=float32 --config.model.unroll=1; done
fi
cat "$OUT/results.jsonl"
