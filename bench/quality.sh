#!/bin/sh
# Same model, same data, same tokens, one run per optimizer: final validation loss and the
# optimizer's memory. The corpus is ../shared/data/tinyshakespeare.txt when present (the
# benchmark corpus of this project), else Debian's fortunes. JSON lines.
# usage: bench/quality.sh [STEPS] [THREADS] [RUN...]   (runs: adamw adamw-hi galore galore8bit qgalore adamw8bit)
set -e
STEPS=${1:-300}
THREADS=${2:-2}
shift 2 2>/dev/null || true
RUNS=${*:-"adamw adamw-hi galore galore8bit qgalore"}
CORPUS=../shared/data/tinyshakespeare.txt
[ -f "$CORPUS" ] || CORPUS=/usr/share/games/fortunes
OUT=${OUT:-/tmp/ounce-quality}
mkdir -p "$OUT"
make -s ounce >/dev/null
[ -f "$OUT/data/meta.json" ] || ./ounce prepare --input "$CORPUS" --out "$OUT/data" >/dev/null
COMMON="--data $OUT/data --model bench/configs/llama-20m.json --steps $STEPS --batch 8 --seq 128 --warmup 30 \
    --eval-every $STEPS --eval-batches 16 --threads $THREADS --seed 1 --log-every 1000 --json"
GALORE="--lr 8e-3 --galore-scale 0.25 --rank 128 --update-gap 50"
for name in $RUNS; do
    case $name in
    adamw) flags="--optim adamw --lr 2e-3" ;;
    adamw-hi) flags="--optim adamw --lr 8e-3" ;;  # AdamW at GaLore's base learning rate
    adamw8bit) flags="--optim adamw8bit --lr 8e-3" ;;
    galore) flags="--optim galore $GALORE" ;;
    galore8bit) flags="--optim galore8bit $GALORE" ;;
    qgalore) flags="--optim qgalore $GALORE" ;;
    *) echo "unknown run $name" >&2; exit 2 ;;
    esac
    ./ounce train $COMMON --out "$OUT/$name" $flags | tail -n 1 |
        sed -E "s/^\{/{\"bench\":\"quality\",\"run\":\"$name\",\"corpus\":\"$(basename $CORPUS)\",/"
done
