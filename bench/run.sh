#!/bin/sh
# CPU training throughput, ounce beside a plain PyTorch implementation of the same model and
# optimizer, same preset, batch, sequence length and thread count, in one run. Prints JSON lines.
# usage: bench/run.sh [PRESET] [BATCH] [SEQ] [STEPS] [THREADS]
# PyTorch is optional (pip install torch); without it only ounce is measured.
set -e
PRESET=${1:-60m}
BATCH=${2:-4}
SEQ=${3:-256}
STEPS=${4:-6}
THREADS=${5:-2}
OUT=$(mktemp -d /tmp/ounce-bench.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
make -s ounce build/bench/gemm >/dev/null
./build/bench/gemm "$THREADS"
./ounce train --data random:32000 --model "$PRESET" --out "$OUT/run" --steps "$STEPS" --batch "$BATCH" --seq "$SEQ" \
    --warmup 0 --eval-every 0 --log-every 1000 --threads "$THREADS" --json | tail -n 1 |
    sed -E "s/^\{/{\"impl\":\"ounce\",\"preset\":\"$PRESET\",\"batch\":$BATCH,\"seq\":$SEQ,\"threads\":$THREADS,/"
if python3 -c "import torch" 2>/dev/null; then
    python3 bench/torch_llama.py --preset "$PRESET" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --warmup-steps 1 \
        --threads "$THREADS"
else
    echo '{"impl":"pytorch","skipped":"torch is not installed"}'
fi
