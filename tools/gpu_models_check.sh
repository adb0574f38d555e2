#!/bin/sh
# Device check (a machine with a GPU and tools/gpu_dist.sh's gpu-dist.tgz): models that come from
# files train on cuda as on the CPU. A Hugging Face checkpoint (sharded f16, llama3 rope scaling)
# through --init, and a WeLore model (factors trained, N-LRCs, embedding and head frozen) through
# --init --welore: the same data, steps and seed on both devices; per-step losses go to $OUT.
# usage: OUT=dir sh tools/gpu_models_check.sh
set -eu
. "$(dirname "$0")/gpu_env.sh"
$O train --data random:258 --model tiny --out "$T/base" --steps 30 --batch 4 --seq 64 --eval-every 0 >"$OUT/base.log"
$O compress --model "$T/base" --out "$T/wl" --ratio 0.5 >"$OUT/compress.log"
for dev in cpu cuda; do
    $O train --init tests/fixtures/hf/llama3_sharded_f16 --data random:80 --out "$T/init_$dev" --steps 5 --batch 2 \
        --seq 32 --eval-every 0 --log-every 1 --precision fp32 --device $dev --json >"$OUT/init_$dev.log" 2>&1 || echo "init on $dev failed"
    $O train --init "$T/wl" --welore --data random:258 --out "$T/wl_$dev" --steps 5 --batch 4 --seq 64 \
        --eval-every 0 --log-every 1 --device $dev --json >"$OUT/welore_$dev.log" 2>&1 || echo "welore on $dev failed"
done
losses() { grep -o '"step":[0-9]*,"loss":[0-9.]*' "$1/metrics.jsonl" 2>/dev/null | sed -E 's/"step":([0-9]+),"loss":(.*)/\1 \2/'; }
for run in init wl; do
    for dev in cpu cuda; do losses "$T/${run}_$dev" >"$OUT/${run}_$dev.losses"; done
    echo "== $run: step, loss on cpu | step, loss on cuda"
    paste "$OUT/${run}_cpu.losses" "$OUT/${run}_cuda.losses"
done
tail -n 1 "$OUT/welore_cuda.log"
# eval and sample on the GPU: the same loss and the same greedy continuation as on the CPU.
$O prepare --input README.md --out "$T/text" >/dev/null
$O train --data "$T/text" --model tiny --out "$T/bytes" --steps 40 --batch 4 --seq 64 --lr 3e-3 --eval-every 0 >/dev/null
for dev in cpu cuda; do
    echo "== eval and greedy sample on $dev"
    $O eval --model "$T/bytes" --data "$T/text" --seq 64 --device $dev --json | tail -n 1
    $O sample --model "$T/bytes" --prompt "The " --tokens 32 --temperature 0 --device $dev | od -c | head -n 3
done
# InRank on the GPU: rank checks (factors read back to the host) and the freeze (optimizer state
# copied device to device) give the CPU's losses and ranks.
for dev in cpu cuda; do
    $O train --data "$T/text" --model tiny --out "$T/ir_$dev" --steps 12 --batch 4 --seq 64 --lr 3e-3 --eval-every 0 \
        --inrank --inrank-init-rank 2 --inrank-buffer 4 --inrank-warmup 2 --inrank-check-every 2 --inrank-freeze-after 6 \
        --device $dev >"$OUT/inrank_$dev.log" 2>&1 || echo "inrank on $dev failed: $(tail -n 1 "$OUT/inrank_$dev.log")"
    losses "$T/ir_$dev" >"$OUT/inrank_$dev.losses"
    tail -n 1 "$T/ir_$dev/ranks.jsonl" | sed -E 's/"step".*"ranks"/"ranks"/' >"$OUT/inrank_$dev.ranks"
done
echo "== inrank: step, loss on cpu | step, loss on cuda"
paste "$OUT/inrank_cpu.losses" "$OUT/inrank_cuda.losses"
cmp -s "$OUT/inrank_cpu.ranks" "$OUT/inrank_cuda.ranks" && echo "inrank: same final ranks on both devices" || echo "inrank: ranks differ"
cat "$OUT/inrank_cuda.ranks"
rm -rf "$T"
