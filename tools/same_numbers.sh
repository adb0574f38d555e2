#!/bin/sh
# Prints the numbers a refactor must not change: for a matrix of small training runs (every
# --optim, per-layer / immediate / factored / whole-model updates, recompute and mini-sequence
# modes, tied and untied heads, InRank, grad-accum), each step's loss and gradient norm, the
# validation loss, the measured peak bytes by category, the planner's bytes, and checksums of
# the last checkpoint's and the final weights and optimizer state. Run it with two binaries and diff:
#   sh tools/same_numbers.sh ./ounce-before >before.txt; sh tools/same_numbers.sh ./ounce >after.txt
# usage: tools/same_numbers.sh [OUNCE] [DEVICE]
OUNCE=${1:-./ounce}
DEVICE=${2:-cpu}
T=$(mktemp -d /tmp/ounce-same.XXXXXX)
trap 'rm -rf "$T"' EXIT
untied="$T/untied.json"
cat >"$untied" <<'EOF'
{"vocab_size": 96, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
 "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
 "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false}
EOF
base="--data random:96 --steps 6 --batch 2 --seq 32 --threads 2 --eval-every 3 --eval-batches 2 --seed 7 --device $DEVICE"
n=0
run() { # run NAME FLAGS...
    name=$1; shift
    n=$((n + 1))
    out="$T/run$n"
    echo "== $name: $*" | sed "s|$T|TMP|g"
    if ! $OUNCE train $base --out "$out" --save-every 5 --json "$@" >"$T/log" 2>&1; then
        echo "FAILED"; tail -n 3 "$T/log"; return
    fi
    # peak_bytes per line repeats the summary's (below); stripped so runs from before it was logged compare
    sed -E 's/,"tokens_per_s":[^,}]*//; s/,"step_s":[^,}]*//; s/,"peak_bytes":\{[^}]*\}//' "$out/metrics.jsonl"
    tail -n 1 "$T/log" | sed -E 's/"tokens_per_s":[^,}]*,//'
    for f in step-5/model.safetensors step-5/optimizer.safetensors model.safetensors; do
        [ -f "$out/$f" ] && echo "$f $(sha256sum <"$out/$f" | cut -c1-16)"
    done
    # the planner's prediction for the same run (memory takes the model-shape flags)
    mflags=$(echo "$@" | sed -E 's/--(inrank-[a-z-]+|lazy-update) [^ ]+//g')
    $OUNCE memory --seq 32 --batch 2 --vocab 96 --device "${DEVICE%%+*}" --json $mflags 2>&1 | tail -n 1
}
for model in tiny "$untied"; do
    m="--model $model"
    run "adamw" $m
    run "adamw accum" $m --grad-accum 2
    run "adamw clip0" $m --clip 0
    run "adamw8bit" $m --optim adamw8bit
    run "adamw8bit clip0" $m --optim adamw8bit --clip 0
    run "galore" $m --optim galore --rank 8 --update-gap 2
    run "galore whole" $m --optim galore --rank 8 --update-gap 2 --per-layer-update off
    run "galore immediate" $m --optim galore --rank 8 --update-gap 2 --clip 0
    run "galore immediate unfactored" $m --optim galore --rank 8 --update-gap 2 --clip 0 --factored-grads off
    run "galore svd full rotate" $m --optim galore --rank 8 --update-gap 2 --subspace svd --proj-type full --moments-at-switch rotate
    run "galore reverse reset" $m --optim galore --rank 8 --update-gap 3 --proj-type reverse_std --moments-at-switch reset
    run "galore left attn lazy" $m --optim galore --rank 8 --update-gap 1 --proj-type left --galore-targets attn --lazy-update on
    run "galore accum" $m --optim galore --rank 8 --update-gap 2 --grad-accum 2 --clip 0
    run "galore8bit" $m --optim galore8bit --rank 8 --update-gap 2
    run "galore8bit immediate" $m --optim galore8bit --rank 8 --update-gap 2 --clip 0
    run "qgalore" $m --optim qgalore --rank 8 --update-gap 2
    run "qgalore immediate" $m --optim qgalore --rank 8 --update-gap 2 --clip 0
    run "qgalore immediate fp32 vocab" $m --optim qgalore --rank 8 --update-gap 2 --clip 0 --vocab-bf16 off
    run "recompute layer mini auto" $m --recompute layer --mini-seq auto
    run "recompute layer-bf16 mini 3 galore" $m --recompute layer-bf16 --mini-seq 3 --optim galore --rank 8 --update-gap 2 --clip 0
    run "recompute offload qgalore" $m --recompute layer-offload --mini-seq auto --optim qgalore --rank 8 --update-gap 2 --clip 0
    run "mini 2 adamw8bit" $m --mini-seq 2 --optim adamw8bit
    run "inrank" $m --inrank --inrank-warmup 2 --inrank-check-every 2 --inrank-init-rank 2 --inrank-buffer 4
    run "inrank freeze adamw8bit" $m --inrank --inrank-warmup 2 --inrank-check-every 2 --inrank-freeze-after 4 --optim adamw8bit
done
echo "runs: $n"
