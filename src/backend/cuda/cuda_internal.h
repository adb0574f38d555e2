/* Private to the CUDA backend: its state (be->impl), the one check-macro family every CUDA and
 * cuBLAS call goes through, the attention entry points that live in cuda_attention.cu, and the
 * hooks the other .cu files register their ops and reach the workspace through. */
#ifndef OZ_CUDA_INTERNAL_H
#define OZ_CUDA_INTERNAL_H
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

extern "C" {
#include "backend/backend.h"
}

typedef struct {
    int device;
    cudaStream_t stream;      /* every op is queued here, in program order */
    cublasHandle_t blas;
    int tf32;
    /* The first failure since creation: ops return void, so it waits here until sync. */
    oz_status status;
    char msg[sizeof(((oz_err *)0)->msg)];
    /* Workspace: cuBLAS's part, then the reduction part (rmsnorm dw partials, sumsq partials). */
    char *ws;
    int ws_owned;             /* cudaMalloc'ed here (no arena attached) rather than the arena's */
    oz_arena *arena;
    cusolverDnHandle_t solver; /* created at the first subspace call (GaLore), NULL until then */
    /* cuBLASLt's handle and the bf16 GEMM plans (cuda_bf16.cu), made at the first gemm_bf16. */
    struct oz_cuda_lt *lt;
    /* cuDNN's fused attention (cuda_sdpa.h) for the bf16 attention ops, made at their first call. */
    struct oz_sdpa *sdpa;
} oz_cuda;

/* Records the first failure; returns 1 when `e` is a success. */
int oz_cuda_check_rt(oz_cuda *c, cudaError_t e, const char *what, const char *file, int line);
int oz_cuda_check_blas(oz_cuda *c, cublasStatus_t s, const char *what, const char *file, int line);
/* An op-level contract violation (e.g. a head_dim the kernels were not built for). */
void oz_cuda_fail(oz_cuda *c, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define OZ_CUDA_CHECK(c, call) oz_cuda_check_rt((c), (call), #call, __FILE__, __LINE__)
#define OZ_CUBLAS_CHECK(c, call) oz_cuda_check_blas((c), (call), #call, __FILE__, __LINE__)
/* After every kernel launch: a bad launch configuration shows up here, not at the next sync. */
#define OZ_CUDA_LAUNCHED(c) oz_cuda_check_rt((c), cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

void oz_cuda_attention_fwd(oz_cuda *c, float *out, float *lse, const float *q, const float *k, const float *v,
                           int B, int T, int Hq, int Hkv, int hd);
void oz_cuda_attention_bwd(oz_cuda *c, float *dq, float *dk, float *dv, const float *dout, const float *q,
                           const float *k, const float *v, const float *out, const float *lse, int B, int T,
                           int Hq, int Hkv, int hd);
void oz_cuda_attention_decode(oz_cuda *c, float *out, const float *q, const float *k, const float *v,
                              const int32_t *lens, float *scores, int B, int cap, int Hq, int Hkv, int hd);
/* Fill in the quantization ops (cuda_quant.cu), the subspace op (cuda_subspace.cu) and the bf16
 * ops (cuda_bf16.cu). */
void oz_cuda_quant_ops(oz_backend *be);
void oz_cuda_subspace_ops(oz_backend *be);
void oz_cuda_bf16_ops(oz_backend *be);
/* Frees c->lt and c->sdpa (at destroy). */
void oz_cuda_bf16_release(oz_cuda *c);

/* The backend workspace, cudaMalloc'ed at first use when no arena is attached (0 on failure,
 * recorded), and its reduction part (OZ_CUDA_REDUCE_BYTES after cuBLAS's). */
int oz_cuda_ensure_ws(oz_cuda *c);
char *oz_cuda_reduce_ws(oz_cuda *c);
/* Row chunks for RMSNorm's dw, a column sum over N rows of d values through the reduction part
 * (one double per chunk and column): boundaries depend on (N, d) only, so dw repeats bit for bit.
 * 0 (the failure recorded, naming op) when one chunk's d doubles do not fit. */
int oz_cuda_dw_chunks(oz_cuda *c, const char *op, int N, int d, int *chunks, int *rows);

#define GRID_STRIDE(i, n) \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

/* Block-wide sum in a fixed order (warp shuffles, then warps in index order): deterministic.
 * Every thread gets the total. `sh` holds 32 values. */
template <typename Tv>
static __device__ __forceinline__ Tv block_sum(Tv v, Tv *sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    __syncthreads(); /* sh may still be read by a previous call */
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    Tv t = 0;
    for (int w = 0; w < nw; w++) t += sh[w];
    return t;
}

/* splitmix64's output function, as numeric/quant.c's mix64 (the SR streams' keys and draws). */
static __device__ __forceinline__ uint64_t mix64(uint64_t x) {
    uint64_t z = x + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* oz_bf16_sr (numeric/quant.h) in integer arithmetic: bitwise the CPU's. */
static __device__ __forceinline__ uint16_t oz_cuda_bf16_sr(float x, uint64_t key, uint64_t i) {
    const uint32_t b = __float_as_uint(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((b >> 16) | 0x0040u);
    const uint32_t r = (uint32_t)(mix64(key + i * 0x9E3779B97F4A7C15ull) >> 48);
    return (uint16_t)((b + r) >> 16);
}

/* Opts the attention kernels into the shared memory they use (above the 48 KiB default). */
int oz_cuda_attention_init(oz_cuda *c);

#endif
