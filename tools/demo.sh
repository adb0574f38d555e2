#!/bin/sh
# The main job: prepare the English quotations Debian's fortune packages ship, train the `demo`
# Llama (3.0M parameters, byte-level) on them for a few minutes, show the validation loss against
# the corpus's unigram entropy, print samples, and draw the curves (demo-out/report.html).
# Override with STEPS=, THREADS=, OUT=.
set -e
OUNCE=${OUNCE:-./ounce}
CORPUS=${CORPUS:-/usr/share/games/fortunes}
OUT=${OUT:-demo-out}
STEPS=${STEPS:-300}
THREADS=${THREADS:-2}
mkdir -p "$OUT"
echo "== ounce demo: corpus $CORPUS"
$OUNCE prepare --input "$CORPUS" --out "$OUT/data" --json | tee "$OUT/prepare.log"
entropy=$(tail -n 1 "$OUT/prepare.log" | sed -E 's/.*"unigram_entropy_nats":([0-9.]+).*/\1/')
echo "== training the demo model for $STEPS steps on $THREADS threads"
$OUNCE train --data "$OUT/data" --model demo --out "$OUT/model" --steps "$STEPS" --batch 8 --seq 256 \
    --lr 2e-3 --eval-every 50 --eval-batches 8 --log-every 25 --threads "$THREADS" --json | tee "$OUT/train.log"
val=$(tail -n 1 "$OUT/train.log" | sed -E 's/.*"val_loss":([0-9.]+).*/\1/')
echo
echo "== validation loss $val nats/byte; unigram entropy of the corpus $entropy nats/byte"
awk -v v="$val" -v h="$entropy" 'BEGIN { printf "   the model is %.2f nats/byte (%.0f%%) below the unigram baseline\n", h - v, 100 * (h - v) / h }'
echo
for prompt in "The " "Life is " "A computer "; do
    echo "== sample: \"$prompt\""
    $OUNCE sample --model "$OUT/model" --prompt "$prompt" --tokens 240 --temperature 0.8 --seed 7 --threads "$THREADS"
    echo
done
echo "== the run's curves: ounce report"
$OUNCE report "$OUT/model" --out "$OUT/report.html"
echo "   open $(cd "$OUT" && pwd)/report.html in a browser (one self-contained file),"
echo "   or: tensorboard --logdir $OUT/model"
