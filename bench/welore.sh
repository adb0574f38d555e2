#!/bin/sh
# WeLore on a model ounce pretrains itself: validation loss against the removed-rank ratio for
# WeLore and uniform rank reduction, then fine-tuning the 50% model WeLore's way (--welore: only
# factors and norms train) against full fine-tuning of the dense model on the same tokens.
# JSON lines. The corpus is ../shared/data/tinyshakespeare.txt when present, else Debian's fortunes.
# usage: [OUNCE=./ounce] [CORPUS=...] [OUT=/tmp/ounce-welore] [EVAL_BATCHES=16] bench/welore.sh [PRETRAIN_STEPS] [FINETUNE_STEPS] [THREADS]
set -e
PRE=${1:-300}
FT=${2:-100}
THREADS=${3:-2}
OUNCE=${OUNCE:-./ounce}
CORPUS=${CORPUS:-../shared/data/tinyshakespeare.txt}
[ -f "$CORPUS" ] || CORPUS=/usr/share/games/fortunes
OUT=${OUT:-/tmp/ounce-welore}
mkdir -p "$OUT"
[ -f "$OUT/data/meta.json" ] || $OUNCE prepare --input "$CORPUS" --out "$OUT/data" >/dev/null
EVAL="--data $OUT/data --seq 128 --batch 8 --max-batches ${EVAL_BATCHES:-16} --threads $THREADS --json"
# The base model: bench/quality.sh's ~19M AdamW run.
[ -f "$OUT/base/model.safetensors" ] || $OUNCE train --data "$OUT/data" --model bench/configs/llama-20m.json \
    --out "$OUT/base" --steps "$PRE" --batch 8 --seq 128 --lr 2e-3 --warmup 30 --eval-every 0 --threads "$THREADS" \
    --seed 1 --log-every 1000 >/dev/null
loss() { $OUNCE eval --model "$1" $EVAL | tail -n 1 | sed -E 's/.*"loss":([^,]+).*/\1/'; }
echo "{\"bench\":\"welore\",\"what\":\"dense\",\"ratio\":0,\"val_loss\":$(loss "$OUT/base")}"
# Ratio sweep with every matrix truncated (--min-ratio 0: the reference's compression-only setting,
# so both methods remove exactly the reported rank).
for ratio in 0.1 0.2 0.3 0.4 0.5 0.6 0.7; do
    for method in welore uniform; do
        flag=""; [ $method = uniform ] && flag="--uniform"
        line=$($OUNCE compress --model "$OUT/base" --out "$OUT/c_$method" --ratio $ratio $flag --min-ratio 0 \
            --threads "$THREADS" --json | tail -n 1)
        achieved=$(echo "$line" | sed -E 's/.*"achieved_ratio":([^,]+).*/\1/')
        before=$(echo "$line" | sed -E 's/.*"matrix_params_before":([^,]+).*/\1/')
        after=$(echo "$line" | sed -E 's/.*"matrix_params_after":([^,]+).*/\1/')
        echo "{\"bench\":\"welore\",\"what\":\"$method\",\"ratio\":$ratio,\"achieved\":$achieved,\"matrix_params\":$after,\"matrix_params_dense\":$before,\"val_loss\":$(loss "$OUT/c_$method")}"
    done
done
# Fine-tuning: the 50% model with WeLore's LRC rule (--min-ratio 0.5) and --welore, against full
# fine-tuning of the dense model, same data, tokens and schedule.
$OUNCE compress --model "$OUT/base" --out "$OUT/c50" --ratio 0.5 --threads "$THREADS" --json | tail -n 1 |
    sed -E 's/"matrices":.*/"matrices":"..."}/; s/^\{/{"bench":"welore","what":"compress50",/'
echo "{\"bench\":\"welore\",\"what\":\"c50_before_finetune\",\"val_loss\":$(loss "$OUT/c50")}"
FTFLAGS="--data $OUT/data --steps $FT --batch 8 --seq 128 --lr 1e-3 --warmup 10 --eval-every 0 --threads $THREADS --seed 2 --log-every 1000 --json"
for run in welore full; do
    if [ $run = welore ]; then src="$OUT/c50 --welore"; else src="$OUT/base"; fi
    res=$($OUNCE train $FTFLAGS --init $src --out "$OUT/ft_$run" | tail -n 1)
    echo "$res" | sed -E "s/^\{/{\"bench\":\"welore\",\"what\":\"finetune_$run\",\"val_loss_eval\":$(loss "$OUT/ft_$run"),/"
done
