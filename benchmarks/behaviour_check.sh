#!/usr/bin/env bash
# Behaviour check for refactors: 200-step runs of vqvae, vrae, lvae and the VQ-VAE
# prior, each trained then evaluated, their eval_metrics.json kept without wall
# times. Run it before and after a change and compare the two folders:
#
#   benchmarks/behaviour_check.sh /tmp/before        # at the old commit
#   benchmarks/behaviour_check.sh /tmp/after         # at the new one
#   diff -r /tmp/before/metrics /tmp/after/metrics   # empty = byte-identical
#
# PYTHON picks the interpreter (default: python). About 6 minutes on 2 CPU cores.
set -euo pipefail
OUT=${1:?usage: behaviour_check.sh OUT_DIR}
PY=${PYTHON:-python}
rm -rf "$OUT"; mkdir -p "$OUT/metrics"
STEPS=(--config.num_train_steps=200 --config.eval_every_steps=200
       --config.checkpoint_every_steps=200 --config.log_every_steps=100)

run() {  # run NAME CONFIG [overrides...]
  local name=$1 cfg=$2; shift 2
  "$PY" train.py --config="$cfg" --workdir="$OUT/$name" "${STEPS[@]}" "$@" > "$OUT/$name.log" 2>&1
  "$PY" eval.py --config="$cfg" --workdir="$OUT/$name" "${STEPS[@]}" "$@" >> "$OUT/$name.log" 2>&1
  "$PY" - "$OUT/$name/eval_metrics.json" "$OUT/metrics/$name.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
for k in [k for k in m if 'wall_time' in k]:
  del m[k]
json.dump(m, open(sys.argv[2], 'w'), indent=1, sort_keys=True)
EOF
  echo "$name: $(wc -c < "$OUT/metrics/$name.json") bytes of metrics"
}

run vqvae configs/vqvae.py
run vrae configs/vrae.py
run lvae configs/lvae.py
run vq_stage1 configs/vqvae_prior.py:vqvae
run vq_prior configs/vqvae_prior.py --config.data.vqvae_workdir="$OUT/vq_stage1"
