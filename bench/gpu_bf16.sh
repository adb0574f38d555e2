#!/bin/sh
# bf16 training throughput on one GPU (issue 14): ounce at its default precision on cuda (auto: bf16
# for these runs) beside two PyTorch bf16 peers in the same run: bench/torch_llama.py's lean model
# and transformers' LlamaForCausalLM (SDPA attention), both with bf16 parameters and fused AdamW.
# Random tokens over the presets' 32,000-token vocabulary, AdamW, clipping 1.0, median of the timed
# steps (the first two are warm-up). One JSON line per run: ms/step, tokens/s, MFU, peak memory
# (ounce: its arena's peak; PyTorch: its allocator's peak; both: the most nvidia-smi saw).
# MFU counts model FLOPs, 6 x parameters x tokens + 6 x layers x seq^2 x hidden x batch (causal
# attention's QK^T and PV, forward and backward), against the 790 TFLOP/s this H200 measures for
# bf16 GEMMs (bench/RESULTS.md).
# usage: bench/gpu_bf16.sh OUNCE "PRESET:BATCH:SEQ ..." [STEPS] [PEERS]   (PEERS: "lean hf")
set -u
OUNCE=$1
ROWS=$2
STEPS=${3:-12}
PEERS=${4:-"lean hf"}
TMP=$(mktemp -d /tmp/ounce-bf16-bench.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
. "$(dirname "$0")/smi_peak.sh"

for ROW in $ROWS; do
    P=${ROW%%:*} rest=${ROW#*:}
    B=${rest%%:*} S=${rest#*:}
    rm -rf "$TMP/run"
    if smi_peak timeout 300 "$OUNCE" train --data random:32000 --model "$P" --out "$TMP/run" --steps "$STEPS" --batch "$B" \
        --seq "$S" --warmup 0 --eval-every 0 --log-every 1000 --no-save --device cuda --json >"$TMP/out" 2>"$TMP/err"; then
        python3 - "$TMP/run/metrics.jsonl" "$TMP/out" "$P" "$B" "$S" "$SMI_PEAK" "$TMP/err" <<'EOF'
import json, statistics, sys
metrics, out, preset, batch, seq, smi, err = sys.argv[1:8]
batch, seq = int(batch), int(seq)
steps = [json.loads(l) for l in open(metrics) if '"step_s"' in l]
timed = [s["step_s"] for s in steps[2:]] or [s["step_s"] for s in steps]
ms = statistics.median(timed) * 1e3
res = json.loads(open(out).read().strip().splitlines()[-1])
start = next((l for l in open(out) if l.startswith("model ")), "")
cfg = {"60m": (512, 8), "130m": (768, 12), "350m": (1024, 24), "1b": (2048, 24), "7b": (4096, 32)}.get(preset, (0, 0))
flops = 6 * res["params"] * batch * seq + 6 * cfg[1] * seq * seq * cfg[0] * batch
print(json.dumps({"impl": "ounce", "precision": "bf16" if " in bf16" in start else "fp32",
                  "bf16_weights": " (bf16 weights)" in start, "preset": preset,
                  "batch": batch, "seq": seq, "steps_timed": len(timed), "ms_per_step": round(ms, 2),
                  "tokens_per_s": round(batch * seq / (ms / 1e3), 1), "mfu": round(flops / (ms / 1e3) / 790e12, 4),
                  "peak_gib": round(res["peak_bytes"]["total"] / 2**30, 2), "smi_peak_mib": int(smi) if smi else None,
                  "final_loss": steps[-1]["loss"]}))
EOF
    else
        echo "{\"impl\":\"ounce\",\"preset\":\"$P\",\"batch\":$B,\"seq\":$S,\"error\":\"$(tail -n 1 "$TMP/err" | tr '"' "'")\"}"
    fi
    for PEER in $PEERS; do
        if smi_peak timeout 300 python3 "$(dirname "$0")/torch_llama.py" --impl "$PEER" --device cuda --dtype bf16 --preset "$P" \
            --batch "$B" --seq "$S" --steps $((STEPS - 2)) --warmup-steps 2 >"$TMP/out" 2>"$TMP/err"; then
            python3 - "$TMP/out" "$P" "$B" "$S" "$SMI_PEAK" <<'EOF'
import json, sys
out, preset, batch, seq, smi = sys.argv[1:6]
batch, seq = int(batch), int(seq)
r = json.loads(open(out).read().strip().splitlines()[-1])
cfg = {"60m": (512, 8), "130m": (768, 12), "350m": (1024, 24), "1b": (2048, 24), "7b": (4096, 32)}.get(preset, (0, 0))
flops = 6 * r["params"] * batch * seq + 6 * cfg[1] * seq * seq * cfg[0] * batch
print(json.dumps({"impl": r["impl"], "precision": "bf16", "preset": preset, "batch": batch, "seq": seq,
                  "ms_per_step": r["ms_per_step"], "tokens_per_s": r["tokens_per_s"],
                  "mfu": round(flops / (r["ms_per_step"] / 1e3) / 790e12, 4),
                  "peak_gib": round(r["peak_gpu_bytes"] / 2**30, 2), "smi_peak_mib": int(smi) if smi else None,
                  "final_loss": r["final_loss"]}))
EOF
        else
            echo "{\"impl\":\"$PEER\",\"preset\":\"$P\",\"batch\":$B,\"seq\":$S,\"error\":\"$(tail -n 1 "$TMP/err" | tr '"' "'")\"}"
        fi
    done
done
