#!/bin/sh
# The fused bf16 attention on a GPU machine, in one run: tests/gpu/test_sdpa, then bench/gpu_sdpa
# (ours, through cuDNN) and bench/torch_sdpa.py (PyTorch's SDPA) on the same shapes. Logs and JSON
# lines go to $OUT (test_sdpa-TAG.log, gpu_sdpa-TAG.jsonl, torch_sdpa.jsonl; TAG names the cuDNN).
# usage: OUT=dir [SDPA_CUDNN=system|torch] [SDPA_PEER=1|0] sh bench/gpu_sdpa.sh [BIN_DIR] [ITERS]
#   BIN_DIR holds test_sdpa and gpu_sdpa built elsewhere (tools/gpu_dist.sh's gpu-dist/); without it,
#   or when those do not load here, they are built with `make CUDA=1`. SDPA_CUDNN=torch loads the
#   cuDNN PyTorch's wheel carries instead of the system's (the two differ on the device image: 9.19
#   and 9.14 when this was written). SDPA_PEER=0 skips the PyTorch peer.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
BIN=${1:-}
ITERS=${2:-10}
mkdir -p "$OUT"
TO=$(command -v timeout >/dev/null 2>&1 && echo "timeout" || echo "")

CUDNN_FROM=${SDPA_CUDNN:-system}
PEER=${SDPA_PEER:-1}
# cuDNN: the system's where the loader finds it, else (or with SDPA_CUDNN=torch) the copy PyTorch's
# wheel carries (nvidia-cudnn), with the NVRTC its runtime-compiled engines load.
find_cudnn() {
    if [ "$CUDNN_FROM" != torch ] && ! ldd "$1" | grep -q "libcudnn.*not found"; then return 0; fi
    d=$(python3 -c 'import os, nvidia.cudnn as m; print(os.path.join(list(m.__path__)[0], "lib"))' 2>/dev/null)
    n=$(python3 -c 'import nvidia, os; print(list(nvidia.__path__)[0])' 2>/dev/null)
    n=$([ -n "$n" ] && find "$n" -name 'libnvrtc.so*' 2>/dev/null | head -n 1)
    [ -n "$d" ] && export LD_LIBRARY_PATH="$d${n:+:$(dirname "$n")}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "cuDNN from PyTorch's wheel: ${d:-none found}"
}

TEST="" BENCH=""
if [ -n "$BIN" ] && [ -x "$BIN/test_sdpa" ] && [ -x "$BIN/gpu_sdpa" ]; then
    find_cudnn "$BIN/test_sdpa"
    if ldd "$BIN/test_sdpa" | grep -q "not found"; then
        ldd "$BIN/test_sdpa" | grep "not found"
    else
        TEST=$BIN/test_sdpa BENCH=$BIN/gpu_sdpa
    fi
fi
if [ -z "$TEST" ]; then
    echo "building here"
    make -j"$(nproc)" CUDA=1 build-cuda/tests/gpu/test_sdpa build-cuda/bench/gpu_sdpa >"$OUT/build_sdpa.log" 2>&1 ||
        { tail -n 30 "$OUT/build_sdpa.log"; exit 1; }
    TEST=build-cuda/tests/gpu/test_sdpa BENCH=build-cuda/bench/gpu_sdpa
    find_cudnn "$TEST"
fi
ldd "$TEST" | grep -E "cudnn|cudart|not found"

rc=0
start=$(date +%s)
$TO ${TO:+150} "$TEST" >"$OUT/test_sdpa.log" 2>&1 || rc=1
TAG=cudnn$(sed -n 's/.*cuDNN \([0-9]*\).*/\1/p' "$OUT/test_sdpa.log" | head -n 1)
mv "$OUT/test_sdpa.log" "$OUT/test_sdpa-$TAG.log"
echo "test_sdpa ($TAG): $(tail -n 1 "$OUT/test_sdpa-$TAG.log") ($(( $(date +%s) - start )) s)"
grep -E "^FAIL" "$OUT/test_sdpa-$TAG.log" | head -n 40
start=$(date +%s)
$TO ${TO:+100} "$BENCH" "$ITERS" | tee "$OUT/gpu_sdpa-$TAG.jsonl"
echo "gpu_sdpa ($TAG): $(( $(date +%s) - start )) s"
if [ "$PEER" = 1 ]; then
    start=$(date +%s)
    $TO ${TO:+120} python3 bench/torch_sdpa.py --iters "$ITERS" | tee "$OUT/torch_sdpa.jsonl"
    echo "torch_sdpa: $(( $(date +%s) - start )) s"
fi
exit $rc
