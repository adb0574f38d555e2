#!/bin/sh
# GPU training throughput: ounce's CUDA backend (fp32, and fp32 with TF32 GEMMs) beside the PyTorch
# peer (bench/torch_llama.py: the same model and AdamW, in fp32 and in bf16) on the same GPU, in one
# run. Random tokens over a 32000-token vocabulary, seq 256. Prints one JSON line per measurement:
# median ms/step over the timed steps (the first two steps are warm-up), tokens/s, the arena's peak
# (ounce) or torch's allocator peak, and the most GPU memory nvidia-smi saw in use.
# usage: bench/gpu.sh [OUNCE_BINARY] [PRESETS] [BATCH] [STEPS]
# RUNS: ounce's device:precision pairs ["cuda:fp32 cuda+tf32:fp32"]; TORCH_DTYPES: the peer's ["fp32 bf16"]
set -u
OUNCE=${1:-./ounce}
PRESETS=${2:-"60m 130m 350m"}
BATCH=${3:-64}
STEPS=${4:-12}
SEQ=256
TMP=$(mktemp -d /tmp/ounce-gpu-bench.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

. "$(dirname "$0")/smi_peak.sh"

for P in $PRESETS; do
    for RUN in ${RUNS:-cuda:fp32 cuda+tf32:fp32}; do
        DEV=${RUN%%:*} PREC=${RUN##*:}
        rm -rf "$TMP/run"
        if smi_peak timeout 150 "$OUNCE" train --data random:32000 --model "$P" --out "$TMP/run" --steps "$STEPS" --batch "$BATCH" \
            --seq "$SEQ" --warmup 0 --eval-every 0 --log-every 1000 --device "$DEV" --precision "$PREC" --json >"$TMP/out" 2>"$TMP/err"; then
            python3 - "$TMP/run/metrics.jsonl" "$TMP/out" "$P" "$DEV" "$BATCH" "$SEQ" "$SMI_PEAK" "$PREC" <<'EOF'
import json, statistics, sys
metrics, out, preset, dev, batch, seq, smi, prec = sys.argv[1:9]
steps = [json.loads(l) for l in open(metrics) if '"step_s"' in l]
timed = [s["step_s"] for s in steps[2:]] or [s["step_s"] for s in steps]
ms = statistics.median(timed) * 1e3
res = json.loads(open(out).read().strip().splitlines()[-1])
print(json.dumps({"impl": "ounce", "device": dev, "precision": prec, "preset": preset, "batch": int(batch), "seq": int(seq),
                  "steps_timed": len(timed), "ms_per_step": round(ms, 2),
                  "tokens_per_s": round(int(batch) * int(seq) / (ms / 1e3), 1),
                  "arena_peak_bytes": res.get("peak_bytes", {}).get("total"),
                  "smi_peak_mib": int(smi) if smi else None, "final_loss": steps[-1]["loss"]}))
EOF
        else
            echo "{\"impl\":\"ounce\",\"device\":\"$DEV\",\"precision\":\"$PREC\",\"preset\":\"$P\",\"error\":\"$(tail -n 1 "$TMP/err" | tr '"' "'")\"}"
        fi
    done
    for DT in ${TORCH_DTYPES:-fp32 bf16}; do
        if smi_peak timeout 150 python3 bench/torch_llama.py --device cuda --dtype "$DT" --preset "$P" --batch "$BATCH" --seq "$SEQ" \
            --steps $((STEPS - 2)) --warmup-steps 2 >"$TMP/out" 2>"$TMP/err"; then
            tail -n 1 "$TMP/out" | sed -E "s/\}$/,\"smi_peak_mib\":${SMI_PEAK:-null}}/"
        else
            echo "{\"impl\":\"pytorch\",\"dtype\":\"$DT\",\"preset\":\"$P\",\"error\":\"$(tail -n 1 "$TMP/err" | tr '"' "'")\"}"
        fi
    done
done
