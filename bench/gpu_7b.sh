#!/bin/sh
# The 7b preset on one GPU with Q-GaLore (issue 4's figure): the planner's prediction beside the
# measured arena peak and the most GPU memory nvidia-smi saw, for rank 1024, batch 1, at seq 2048
# (recompute with bf16 checkpoints + mini-sequences, --clip 0 so updates happen layer by layer) and
# at seq 256 (the PyTorch GaLore peer's setting, bench/RESULTS.md). Step 0 refreshes all 224
# subspaces on the GPU, so step 0 minus a later step is the refresh time; bench/torch_svd.py
# --device cuda times PyTorch's refresh (torch.linalg.svd) on the same GPU, in the same run.
# usage: [CONFIGS="SEQ,RECOMPUTE,MINISEQ ..."] [PEER=0] sh bench/gpu_7b.sh [OUNCE_BINARY] [STEPS]
# (one JSON line per measurement)
set -u
OUNCE=${1:-./ounce}
STEPS=${2:-4}
TMP=$(mktemp -d /tmp/ounce-gpu7b.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

. "$(dirname "$0")/smi_peak.sh"

CONFIGS=${CONFIGS:-"2048,layer-bf16,auto 2048,layer,auto 256,layer-bf16,auto"}
for cfg in $CONFIGS; do
    set -- $(echo "$cfg" | tr , " ")
    SEQ=$1 RC=$2 MS=$3
    FLAGS="--model 7b --optim qgalore --rank 1024 --batch 1 --seq $SEQ --recompute $RC --mini-seq $MS --clip 0"
    "$OUNCE" memory $FLAGS --device cuda --json | tail -n 1 >"$TMP/plan"
    rm -rf "$TMP/run"
    if smi_peak "$OUNCE" train --data random:32000 $FLAGS --out "$TMP/run" --steps "$STEPS" --warmup 0 --eval-every 0 \
        --log-every 1 --no-save --device cuda+tf32 --json >"$TMP/out" 2>"$TMP/err"; then
        python3 - "$TMP/run/metrics.jsonl" "$TMP/out" "$TMP/plan" "$SEQ" "$RC" "$MS" "${SMI_PEAK:-0}" <<'PY'
import json, statistics, sys
metrics, out, plan, seq, rc, ms, smi = sys.argv[1:8]
steps = [json.loads(l) for l in open(metrics) if '"step_s"' in l]
later = [s["step_s"] for s in steps[1:]]
res = json.loads(open(out).read().strip().splitlines()[-1])
planned = json.loads(open(plan).read())
print(json.dumps({"impl": "ounce", "preset": "7b", "optim": "qgalore", "rank": 1024, "seq": int(seq), "recompute": rc,
                  "mini_seq": ms, "device": "cuda+tf32",
                  "planned_peak_bytes": planned["peak_bytes"], "measured_peak_bytes": res.get("peak_bytes"),
                  "plan_equals_measured": planned["peak_bytes"] == res.get("peak_bytes"),
                  "planned_gib": round(planned["peak_bytes"]["total"] / 2**30, 3), "smi_peak_mib": int(smi),
                  "step0_s": round(steps[0]["step_s"], 2) if steps else None,
                  "step_s_median_after": round(statistics.median(later), 3) if later else None,
                  "losses": [round(s["loss"], 4) for s in steps]}))
PY
    else
        echo "{\"impl\":\"ounce\",\"seq\":$SEQ,\"recompute\":\"$RC\",\"error\":\"$(tail -n 2 "$TMP/err" | tr '"\n' "' ")\"}"
    fi
done
[ "${PEER:-1}" = 1 ] && python3 "$(dirname "$0")/torch_svd.py" 16 --device cuda
