#!/bin/sh
# InRank against full rank: the same model trained from scratch on the same tokens, with and without
# --inrank (MLP matrices factorized, ranks grown by the explained-variance rule, frozen at
# FREEZE), back to back. Prints one JSON line per run: validation loss, tokens/s, peak memory, and
# for InRank the final ranks as a fraction of full rank. The corpus is
# ../shared/data/tinyshakespeare.txt when present, else Debian's fortunes.
# usage: bench/inrank.sh [STEPS] [THREADS] [FREEZE]   (env: OUNCE=binary, MODEL=preset or config, OUT=dir)
set -e
STEPS=${1:-300}
THREADS=${2:-2}
FREEZE=${3:-100}
OUNCE=${OUNCE:-./ounce}
CORPUS=../shared/data/tinyshakespeare.txt
[ -f "$CORPUS" ] || CORPUS=/usr/share/games/fortunes
OUT=${OUT:-/tmp/ounce-inrank}
MODEL=${MODEL:-bench/configs/llama-20m.json}
mkdir -p "$OUT"
[ "$OUNCE" = ./ounce ] && make -s ounce >/dev/null
[ -f "$OUT/data/meta.json" ] || $OUNCE prepare --input "$CORPUS" --out "$OUT/data" >/dev/null
# bench/quality.sh's setting (llama-20m by default, MODEL=demo on a busy machine; 8 x 128 tokens, AdamW lr 2e-3, warmup 30).
COMMON="--data $OUT/data --model $MODEL --steps $STEPS --batch 8 --seq 128 --warmup 30 \
    --eval-every $STEPS --eval-batches 16 --threads $THREADS --seed 1 --log-every 1000 --optim adamw --lr 2e-3 --json"
# The reference checks every 25 forward calls after 200, with 8 micro-batches per optimizer step:
# every ~3 optimizer steps after ~25. Our flags count optimizer steps, so this run says so.
INRANK="--inrank --inrank-warmup 25 --inrank-check-every 5 --inrank-freeze-after $FREEZE"
for name in full inrank; do
    case $name in
    full) flags="" ;;
    inrank) flags="$INRANK" ;;
    esac
    $OUNCE train $COMMON --out "$OUT/$name" $flags >"$OUT/$name.log"
    line=$(tail -n 1 "$OUT/$name.log")
    extra=""
    if [ $name = inrank ]; then
        frac=$(tail -n 1 "$OUT/$name/ranks.jsonl" | sed -E 's/.*"mean_fraction":([^,]+).*/\1/')
        ranks=$(tail -n 1 "$OUT/$name/ranks.jsonl" | sed -E 's/.*"ranks":(\{[^}]*\}).*/\1/')
        extra="\"mean_rank_fraction\":$frac,\"ranks\":$ranks,"
    fi
    echo "$line" | sed -E "s/^\{/{\"bench\":\"inrank\",\"run\":\"$name\",\"corpus\":\"$(basename $CORPUS)\",$extra/"
done
