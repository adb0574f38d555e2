#!/bin/sh
# Peak memory against sequence length for plain, recompute, recompute + mini-sequences, and the
# last with bf16 checkpoints (--recompute layer-bf16):
# the planner's prediction for every length, and a measured one-step training run for the lengths
# in MEASURE. Then the throughput cost of mini-sequences over recompute alone. JSON lines.
# usage: bench/memory.sh [PRESET] [THREADS]
set -e
PRESET=${1:-60m}
THREADS=${2:-2}
MEASURE=${MEASURE:-"256 1024 4096"}
OUT=$(mktemp -d /tmp/ounce-membench.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
make -s ounce >/dev/null
for mode in "none off" "layer off" "layer auto" "layer-bf16 auto"; do
    set -- $mode
    for seq in 256 512 1024 2048 4096 8192 16384; do
        ./ounce memory --model "$PRESET" --batch 1 --seq $seq --recompute $1 --mini-seq $2 --json | tail -n 1 |
            sed -E "s/^\{/{\"bench\":\"memory\",\"kind\":\"planned\",\"preset\":\"$PRESET\",\"seq\":$seq,\"recompute\":\"$1\",\"mini_seq\":\"$2\",/"
    done
    for seq in $MEASURE; do
        ./ounce train --data random:32000 --model "$PRESET" --out "$OUT/run" --steps 1 --batch 1 --seq $seq \
            --recompute $1 --mini-seq $2 --eval-every 0 --threads "$THREADS" --json | tail -n 1 |
            sed -E "s/^\{/{\"bench\":\"memory\",\"kind\":\"measured\",\"preset\":\"$PRESET\",\"seq\":$seq,\"recompute\":\"$1\",\"mini_seq\":\"$2\",/"
    done
done
# Throughput: mini-sequences on top of recompute (same work plus chunking), several steps each.
for mode in "layer off" "layer auto" "layer-bf16 auto" "none off"; do
    set -- $mode
    ./ounce train --data random:32000 --model "$PRESET" --out "$OUT/run" --steps ${TSTEPS:-4} --batch 1 --seq ${TSEQ:-2048} \
        --recompute $1 --mini-seq $2 --warmup 0 --eval-every 0 --threads "$THREADS" --json | tail -n 1 |
        sed -E "s/^\{/{\"bench\":\"throughput\",\"preset\":\"$PRESET\",\"seq\":${TSEQ:-2048},\"recompute\":\"$1\",\"mini_seq\":\"$2\",/"
done
