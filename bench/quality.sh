#!/bin/sh
# Same model, same data, same tokens, one run per optimizer: final validation loss and the
# optimizer's memory. The corpus is ../shared/data/tinyshakespeare.txt when present (the
# benchmark corpus of this project), else Debian's fortunes. JSON lines.
# usage: bench/quality.sh [STEPS] [THREADS]
set -e
STEPS=${1:-300}
THREADS=${2:-2}
CORPUS=../shared/data/tinyshakespeare.txt
[ -f "$CORPUS" ] || CORPUS=/usr/share/games/fortunes
OUT=${OUT:-/tmp/ounce-quality}
mkdir -p "$OUT"
make -s ounce >/dev/null
[ -f "$OUT/data/meta.json" ] || ./ounce prepare --input "$CORPUS" --out "$OUT/data" >/dev/null
COMMON="--data $OUT/data --model bench/configs/llama-20m.json --steps $STEPS --batch 8 --seq 128 --warmup 30 \
    --eval-every $STEPS --eval-batches 16 --threads $THREADS --seed 1 --log-every 1000 --json"
run() { # name, flags
    name=$1; shift
    ./ounce train $COMMON --out "$OUT/$name" "$@" | tail -n 1 | sed -E "s/^\{/{\"bench\":\"quality\",\"run\":\"$name\",\"corpus\":\"$(basename $CORPUS)\",/"
}
run adamw --optim adamw --lr 2e-3
run galore --optim galore --lr 8e-3 --galore-scale 0.25 --rank 128 --update-gap 50
run galore8bit --optim galore8bit --lr 8e-3 --galore-scale 0.25 --rank 128 --update-gap 50
run adamw8bit --optim adamw8bit --lr 2e-3
run galore-lazy-int4 --optim galore8bit --lr 8e-3 --galore-scale 0.25 --rank 128 --update-gap 50 --lazy-update on --proj-bits 4
