#!/bin/sh
# The device run (on a machine with a GPU): the GPU tests (test_cuda; test_bf16 for the bf16 ops;
# test_sdpa for the fused bf16 attention) and the CPU-vs-GPU training checks, the 7b figure
# (bench/gpu_7b.sh), the per-op and bf16 GEMM timings, then bench/gpu.sh; `sdpa` runs the
# attention's test and benchmark beside PyTorch's (bench/gpu_sdpa.sh). Logs and results go to $OUT.
# Uses the binaries tools/gpu_dist.sh built into gpu-dist/ when they start here, else builds with
# `make CUDA=1`.
# usage: OUT=dir sh tools/gpu_check.sh [all|tests|7b|ops|bench|sdpa] [PRESETS]
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
WHAT=${1:-all}
PRESETS=${2:-"60m 130m 350m"}
mkdir -p "$OUT"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
head -n 12 "$OUT/nvidia-smi.txt"
OUNCE="" TEST="" TEST16="" OPS="" GEMM16=""
# Carried compressed (the device tool caps what travels).
[ -f gpu-dist.tgz ] && [ ! -d gpu-dist ] && tar xzf gpu-dist.tgz
if [ -x gpu-dist/ounce ] && [ -x gpu-dist/test_bf16 ]; then
    export LD_LIBRARY_PATH="$PWD/gpu-dist/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    if ! ldd gpu-dist/ounce | grep -q "not found" && ! ldd gpu-dist/test_cuda | grep -q "not found"; then
        OUNCE=gpu-dist/ounce TEST=gpu-dist/test_cuda TEST16=gpu-dist/test_bf16 OPS=gpu-dist/gpu_ops
        GEMM16=gpu-dist/gpu_gemm_bf16
        echo "using gpu-dist (commit $(cat gpu-dist/COMMIT))"
    else
        ldd gpu-dist/ounce | grep "not found"
    fi
fi
if [ -z "$OUNCE" ]; then
    echo "building here"
    make -j"$(nproc)" CUDA=1 build-cuda/ounce build-cuda/tests/gpu/test_cuda build-cuda/tests/gpu/test_bf16 \
        build-cuda/tests/gpu/test_sdpa build-cuda/bench/gpu_ops build-cuda/bench/gpu_gemm_bf16 >"$OUT/build.log" 2>&1 ||
        { tail -n 30 "$OUT/build.log"; exit 1; }
    OUNCE=build-cuda/ounce TEST=build-cuda/tests/gpu/test_cuda TEST16=build-cuda/tests/gpu/test_bf16
    OPS=build-cuda/bench/gpu_ops GEMM16=build-cuda/bench/gpu_gemm_bf16
fi
rc=0
if [ "$WHAT" = all ] || [ "$WHAT" = tests ]; then
    start=$(date +%s)
    "$TEST" >"$OUT/test_cuda.log" 2>&1 || rc=1
    echo "test_cuda: $(tail -n 1 "$OUT/test_cuda.log") ($(( $(date +%s) - start )) s)"
    grep -E "^FAIL|^  " "$OUT/test_cuda.log" | head -n 60
    # the bf16 ops against the CPU's (its "  " lines are per-op errors, so only failures here)
    start=$(date +%s)
    "$TEST16" >"$OUT/test_bf16.log" 2>&1 || rc=1
    echo "test_bf16: $(tail -n 1 "$OUT/test_bf16.log") ($(( $(date +%s) - start )) s)"
    grep -E "^FAIL" "$OUT/test_bf16.log" | head -n 60
    start=$(date +%s)
    "$(dirname "$TEST")/test_sdpa" >"$OUT/test_sdpa.log" 2>&1 || rc=1
    echo "test_sdpa: $(tail -n 1 "$OUT/test_sdpa.log") ($(( $(date +%s) - start )) s)"
    grep -E "^FAIL" "$OUT/test_sdpa.log" | head -n 40
fi
if [ "$WHAT" = all ] || [ "$WHAT" = tests ]; then
    # every optimizer and the models from files: the same losses on both devices (gpu-dist binaries)
    sh tools/gpu_optim_check.sh >"$OUT/optim_check.txt" 2>&1 || rc=1
    grep -E "^==|gpu_optim_check|FAIL" "$OUT/optim_check.txt" | head -n 30
    sh tools/gpu_models_check.sh >"$OUT/models_check.txt" 2>&1 || rc=1
    tail -n 5 "$OUT/models_check.txt"
fi
if [ "$WHAT" = all ] || [ "$WHAT" = 7b ]; then
    sh bench/gpu_7b.sh "$OUNCE" | tee "$OUT/gpu7b.jsonl"
fi
if [ "$WHAT" = all ] || [ "$WHAT" = ops ]; then
    "$OPS" 60m 64 256 | tee "$OUT/ops-60m.jsonl"
    "$GEMM16" | tee "$OUT/gemm-bf16.jsonl"
fi
if [ "$WHAT" = sdpa ]; then
    sh bench/gpu_sdpa.sh "$([ "$TEST" = gpu-dist/test_cuda ] && echo gpu-dist)" || rc=1
fi
if [ "$WHAT" = all ] || [ "$WHAT" = bench ]; then
    sh bench/gpu.sh "$OUNCE" "$PRESETS" | tee "$OUT/bench.jsonl"
fi
exit $rc
