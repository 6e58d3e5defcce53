#!/usr/bin/env bash
# The GPU measurements of benchmarks/README.md, in one go. Usage (repo root):
#   OUT=/tmp/bench bash benchmarks/run_gpu.sh [extra --config.* flags for every run]
# Writes $OUT/results.jsonl (one JSON line per run) and $OUT/log.txt.
set -u
OUT=${OUT:-/tmp/bench}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export TF_CPP_MIN_LOG_LEVEL=3
PY=${PY:-python3}
[ -f .bench/fake_jsb.pkl ] || { mkdir -p .bench && $PY benchmarks/make_fake_pianoroll.py .bench/fake_jsb.pkl; }
B="$PY benchmarks/train_step.py --output=$OUT/results.jsonl --repeats=${REPEATS:-10}"
run() { echo "== $*"; timeout ${RUN_TIMEOUT:-240} $B "$@" "${EXTRA[@]}" 2>&1 | grep -v "^W\|^I0\|^E0000" | tail -4; }
EXTRA=("$@")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
$PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
run --config=configs/vqvae_cifar10_sonnet.py --config.batch_size=128 --config.compute_dtype=bfloat16
run --config=configs/vqvae_cifar10_sonnet.py --config.batch_size=128 --config.compute_dtype=float32
run --config=configs/vqvae2_256.py --config.batch_size=128 --config.compute_dtype=bfloat16
for T in 128 32 512 1024; do
  run --config=benchmarks/configs/vrnn_bench.py --config.data.path=.bench/fake_jsb.pkl --config.data.max_len=$T --config.compute_dtype=float32 --config.model.unroll=1
  run --config=benchmarks/configs/vrnn_bench.py --config.data.path=.bench/fake_jsb.pkl --config.data.max_len=$T
done
[ -f configs/lvae_mnist.py ] && run --config=configs/lvae_mnist.py
cat "$OUT/results.jsonl"
