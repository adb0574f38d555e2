#!/bin/sh
# Builds the CUDA binaries (ounce, the GPU tests and benchmarks) on this machine into gpu-dist/, with
# the shared libraries they need that a GPU machine's image may lack (OpenBLAS, cJSON, PCRE2, libgfortran),
# for tools/gpu_check.sh to run where nothing can be installed. Portable code (x86-64-v3, not
# -march=native): the GPU machine's CPU is not this one.
set -e
cd "$(dirname "$0")/.."
make -s -j"$(nproc)" CUDA=1 BUILD=build-cuda-dist OPT="-O3 -march=x86-64-v3" build-cuda-dist/ounce \
    build-cuda-dist/tests/gpu/test_cuda build-cuda-dist/tests/gpu/test_bf16 build-cuda-dist/tests/gpu/test_sdpa \
    build-cuda-dist/bench/gpu_ops build-cuda-dist/bench/gpu_gemm_bf16 build-cuda-dist/bench/gpu_sdpa
rm -rf gpu-dist
mkdir -p gpu-dist/lib
BINS="ounce tests/gpu/test_cuda tests/gpu/test_bf16 tests/gpu/test_sdpa bench/gpu_ops bench/gpu_gemm_bf16 bench/gpu_sdpa"
for b in $BINS; do cp "build-cuda-dist/$b" gpu-dist/; strip --strip-debug "gpu-dist/$(basename "$b")"; done
for lib in libopenblas.so.0 libcjson.so.1 libpcre2-8.so.0 libgfortran.so.5 libquadmath.so.0; do
    path=$(ldd gpu-dist/ounce | awk -v l="$lib" '$1 == l {print $3}')
    [ -n "$path" ] && cp -L "$path" gpu-dist/lib/
done
git rev-parse HEAD >gpu-dist/COMMIT
git status --short -- src tests bench tools Makefile >gpu-dist/DIRTY || true
tar czf gpu-dist.tgz gpu-dist  # what tools/gpu_check.sh unpacks on the GPU machine
du -sh gpu-dist gpu-dist.tgz
