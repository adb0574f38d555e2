/* The CUDA backend in fp32: memory (cudaMalloc through the arena's allocator), cuBLAS GEMMs,
 * and hand-written kernels for every other op of backend.h. Semantics are the CPU backend's
 * (cpu_ops.inc), which the device tests hold these kernels to.
 *
 * Determinism: no floating-point atomics anywhere. Reductions that cross rows (rmsnorm's dw,
 * sumsq, the embedding gradient) split the work at boundaries that depend only on the problem size
 * and combine the pieces in a fixed order, so a run repeats bit for bit, and resume is exact.
 *
 * Errors: ops return void, so every CUDA/cuBLAS call goes through OZ_CUDA_CHECK / OZ_CUBLAS_CHECK,
 * which keep the first failure (call, file:line, hint); sync() reports it. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_internal.h"

/* ------------------------------------------------------------------ errors */

static const char *rt_hint(cudaError_t e) {
    switch (e) {
    case cudaErrorMemoryAllocation: return "the GPU is out of memory: try a smaller --batch, --recompute layer or --mini-seq auto";
    case cudaErrorNoDevice: return "no GPU is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)";
    case cudaErrorInvalidDevice: return "no GPU with that index (check nvidia-smi and --device cuda:N)";
    case cudaErrorInsufficientDriver: return "the NVIDIA driver is older than this CUDA runtime";
    case cudaErrorNoKernelImageForDevice: return "this build has no code for the GPU (built for sm_90)";
    case cudaErrorIllegalAddress: return "a kernel touched memory it does not own (a bug in ounce)";
    default: return "";
    }
}

static const char *blas_name(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "cuBLAS error";
    }
}

static void record(oz_cuda *c, const char *fmt, ...) {
    if (c->status != OZ_OK) return; /* keep the original cause */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->msg, sizeof c->msg, fmt, ap);
    va_end(ap);
    c->status = OZ_ERR_INTERNAL;
}

int oz_cuda_check_rt(oz_cuda *c, cudaError_t e, const char *what, const char *file, int line) {
    if (e == cudaSuccess) return 1;
    const char *hint = rt_hint(e);
    record(c, "CUDA: %s failed at %s:%d: %s%s%s", what, file, line, cudaGetErrorString(e), hint[0] ? " (" : "",
           hint[0] ? hint : "");
    if (hint[0]) strncat(c->msg, ")", sizeof c->msg - strlen(c->msg) - 1);
    if (e == cudaErrorMemoryAllocation && c->status == OZ_ERR_INTERNAL) c->status = OZ_ERR_NOMEM;
    return 0;
}

int oz_cuda_check_blas(oz_cuda *c, cublasStatus_t s, const char *what, const char *file, int line) {
    if (s == CUBLAS_STATUS_SUCCESS) return 1;
    record(c, "cuBLAS: %s failed at %s:%d: %s", what, file, line, blas_name(s));
    return 0;
}

void oz_cuda_fail(oz_cuda *c, const char *file, int line, const char *fmt, ...) {
    if (c->status != OZ_OK) return;
    char text[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    record(c, "CUDA backend: %s (%s:%d)", text, file, line);
}

static oz_cuda *C(oz_backend *be) { return (oz_cuda *)be->impl; }

/* Grid for an elementwise kernel over n items: enough blocks to fill the GPU several times over;
 * the kernels stride, so any n works. */
static unsigned grid_for(size_t n, int threads) {
    size_t blocks = (n + (size_t)threads - 1) / (size_t)threads;
    if (blocks > 132 * 32) blocks = 132 * 32;
    return blocks ? (unsigned)blocks : 1u;
}


__device__ float block_max(float v, float *sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    float t = sh[0];
    for (int w = 1; w < nw; w++) t = fmaxf(t, sh[w]);
    return t;
}

/* ------------------------------------------------------------------ memory */

static void *cuda_alloc(void *ctx, size_t bytes) {
    oz_cuda *c = (oz_cuda *)ctx;
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
        (void)cudaGetLastError(); /* an allocation failure is not sticky: the arena reports it */
        return NULL;
    }
    /* Zeroed like the host allocator's calloc: Adam moments and accumulators start at 0. */
    if (!OZ_CUDA_CHECK(c, cudaMemsetAsync(p, 0, bytes, c->stream))) {
        cudaFree(p);
        return NULL;
    }
    return p;
}

static void cuda_free(void *ctx, void *ptr) {
    oz_cuda *c = (oz_cuda *)ctx;
    if (ptr) OZ_CUDA_CHECK(c, cudaFree(ptr));
}

/* Page-locked host memory (offloaded checkpoints): zeroed like the host allocator's. */
static void *cuda_host_alloc(void *ctx, size_t bytes) {
    oz_cuda *c = (oz_cuda *)ctx;
    void *p = NULL;
    if (!OZ_CUDA_CHECK(c, cudaHostAlloc(&p, bytes, cudaHostAllocDefault))) return NULL;
    memset(p, 0, bytes);
    return p;
}

static void cuda_host_free(void *ctx, void *ptr) {
    oz_cuda *c = (oz_cuda *)ctx;
    if (ptr) OZ_CUDA_CHECK(c, cudaFreeHost(ptr));
}

static void cuda_to_device(oz_backend *be, void *dst, const void *src, size_t bytes) {
    oz_cuda *c = C(be);
    if (!bytes) return;
    OZ_CUDA_CHECK(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream));
    /* The caller may reuse or free its host buffer as soon as this returns. */
    OZ_CUDA_CHECK(c, cudaStreamSynchronize(c->stream));
}

static void cuda_to_host(oz_backend *be, void *dst, const void *src, size_t bytes) {
    oz_cuda *c = C(be);
    if (!bytes) return;
    OZ_CUDA_CHECK(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    OZ_CUDA_CHECK(c, cudaStreamSynchronize(c->stream));
}

static void cuda_copy(oz_backend *be, void *dst, const void *src, size_t bytes) {
    oz_cuda *c = C(be);
    if (!bytes || dst == src) return;
    /* cudaMemcpy handles overlap within one allocation like memmove only for non-overlapping
     * ranges; the model never copies overlapping ranges, and a same-pointer copy returns above. */
    OZ_CUDA_CHECK(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream));
}

__global__ void fill_k(float *x, float v, size_t n) {
    GRID_STRIDE(i, n) x[i] = v;
}

static void cuda_fill(oz_backend *be, float *x, float value, size_t n) {
    oz_cuda *c = C(be);
    if (!n) return;
    fill_k<<<grid_for(n, 256), 256, 0, c->stream>>>(x, value, n);
    OZ_CUDA_LAUNCHED(c);
}

/* Round to nearest even as oz_f32_to_bf16 does (NaN -> quiet NaN), in integer arithmetic so it
 * is bitwise the CPU's. */
__global__ void to_bf16_k(uint16_t *dst, const float *src, size_t n) {
    GRID_STRIDE(i, n) {
        uint32_t x = __float_as_uint(src[i]);
        if ((x & 0x7fffffffu) > 0x7f800000u) dst[i] = (uint16_t)((x >> 16) | 0x0040u);
        else dst[i] = (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
    }
}

/* to_bf16_k's rounding over a strided matrix (padding untouched). */
__global__ void to_bf16_2d_k(uint16_t *dst, size_t ldd, const float *src, size_t lds, size_t rows, size_t cols) {
    GRID_STRIDE(i, rows * cols) {
        const size_t r = i / cols, col = i % cols;
        uint32_t x = __float_as_uint(src[r * lds + col]);
        if ((x & 0x7fffffffu) > 0x7f800000u) dst[r * ldd + col] = (uint16_t)((x >> 16) | 0x0040u);
        else dst[r * ldd + col] = (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
    }
}

__global__ void from_bf16_2d_k(float *dst, size_t ldd, const uint16_t *src, size_t lds, size_t rows, size_t cols) {
    GRID_STRIDE(i, rows * cols) {
        const size_t r = i / cols, col = i % cols;
        dst[r * ldd + col] = __uint_as_float((uint32_t)src[r * lds + col] << 16);
    }
}

__global__ void add_2d_k(float *dst, size_t ldd, const float *src, size_t lds, size_t rows, size_t cols) {
    GRID_STRIDE(i, rows * cols) {
        const size_t r = i / cols, col = i % cols;
        dst[r * ldd + col] += src[r * lds + col];
    }
}

__global__ void from_bf16_k(float *dst, const uint16_t *src, size_t n) {
    GRID_STRIDE(i, n) dst[i] = __uint_as_float((uint32_t)src[i] << 16);
}

/* One token row per block: out[i] = widen(table[ids[i]]). */
__global__ void embedding_bf16_k(float *out, const uint16_t *table, const int32_t *ids, int d) {
    const uint16_t *row = table + (size_t)ids[blockIdx.x] * d;
    float *o = out + (size_t)blockIdx.x * d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) o[j] = __uint_as_float((uint32_t)row[j] << 16);
}

static void cuda_embedding_fwd_bf16(oz_backend *be, float *out, const uint16_t *table, const int32_t *ids, int N,
                                    int d) {
    oz_cuda *c = C(be);
    if (N <= 0) return;
    embedding_bf16_k<<<N, 256, 0, c->stream>>>(out, table, ids, d);
    OZ_CUDA_LAUNCHED(c);
}

static void cuda_to_bf16(oz_backend *be, uint16_t *dst, const float *src, size_t n) {
    oz_cuda *c = C(be);
    if (!n) return;
    to_bf16_k<<<grid_for(n, 256), 256, 0, c->stream>>>(dst, src, n);
    OZ_CUDA_LAUNCHED(c);
}

static void cuda_to_bf16_2d(oz_backend *be, uint16_t *dst, size_t ldd, const float *src, size_t lds, size_t rows,
                            size_t cols) {
    oz_cuda *c = C(be);
    if (!rows || !cols) return;
    to_bf16_2d_k<<<grid_for(rows * cols, 256), 256, 0, c->stream>>>(dst, ldd, src, lds, rows, cols);
    OZ_CUDA_LAUNCHED(c);
}

static void cuda_from_bf16_2d(oz_backend *be, float *dst, size_t ldd, const uint16_t *src, size_t lds, size_t rows,
                              size_t cols) {
    oz_cuda *c = C(be);
    if (!rows || !cols) return;
    from_bf16_2d_k<<<grid_for(rows * cols, 256), 256, 0, c->stream>>>(dst, ldd, src, lds, rows, cols);
    OZ_CUDA_LAUNCHED(c);
}

static void cuda_add_2d(oz_backend *be, float *dst, size_t ldd, const float *src, size_t lds, size_t rows,
                        size_t cols) {
    oz_cuda *c = C(be);
    if (!rows || !cols) return;
    add_2d_k<<<grid_for(rows * cols, 256), 256, 0, c->stream>>>(dst, ldd, src, lds, rows, cols);
    OZ_CUDA_LAUNCHED(c);
}

static void cuda_from_bf16(oz_backend *be, float *dst, const uint16_t *src, size_t n) {
    oz_cuda *c = C(be);
    if (!n) return;
    from_bf16_k<<<grid_for(n, 256), 256, 0, c->stream>>>(dst, src, n);
    OZ_CUDA_LAUNCHED(c);
}

/* The scratch the reductions use (after cuBLAS's part of the workspace). */
static char *reduce_ws(oz_cuda *c) { return c->ws ? c->ws + OZ_CUDA_CUBLAS_WORKSPACE_BYTES : NULL; }

/* ------------------------------------------------------------------ GEMM */

/* C (M,N) = beta * C over a strided matrix: a GEMM with K == 0, which not every BLAS accepts.
 * beta == 0 overwrites (even NaN), as BLAS does. */
__global__ void scale_matrix_k(float *C, int M, int N, int ldc, float beta) {
    GRID_STRIDE(i, (size_t)M * N) {
        float *p = C + (i / N) * (size_t)ldc + i % N;
        *p = beta == 0.0f ? 0.0f : beta * *p;
    }
}

static void cuda_gemm(oz_backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                      int lda, const float *B, int ldb, float beta, float *Cm, int ldc) {
    oz_cuda *c = C(be);
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        scale_matrix_k<<<grid_for((size_t)M * N, 256), 256, 0, c->stream>>>(Cm, M, N, ldc, beta);
        OZ_CUDA_LAUNCHED(c);
        return;
    }
    /* Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands; each
     * row-major matrix read column-major is its own transpose, so the op flags carry over. */
    OZ_CUBLAS_CHECK(c, cublasSgemm(c->blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                                   N, M, K, &alpha, B, ldb, A, lda, &beta, Cm, ldc));
}

/* ------------------------------------------------------------------ elementwise and reductions */

__global__ void axpy_k(float *y, float a, const float *x, size_t n) {
    GRID_STRIDE(i, n) y[i] += a * x[i];
}

static void cuda_axpy(oz_backend *be, float *y, float alpha, const float *x, size_t n) {
    oz_cuda *c = C(be);
    if (!n) return;
    axpy_k<<<grid_for(n, 256), 256, 0, c->stream>>>(y, alpha, x, n);
    OZ_CUDA_LAUNCHED(c);
}

__global__ void scale_k(float *x, float a, size_t n) {
    GRID_STRIDE(i, n) x[i] *= a;
}

static void cuda_scale(oz_backend *be, float *x, float alpha, size_t n) {
    oz_cuda *c = C(be);
    if (!n) return;
    scale_k<<<grid_for(n, 256), 256, 0, c->stream>>>(x, alpha, n);
    OZ_CUDA_LAUNCHED(c);
}

/* Sum of squares: SUMSQ_BLOCKS fixed chunks (boundaries from n only) summed in double, then the
 * chunks in index order: the same bits on every run and every GPU. */
#define SUMSQ_BLOCKS 1024
#define SUMSQ_THREADS 256

__global__ void sumsq_partial_k(double *part, const float *x, size_t n) {
    __shared__ double sh[32];
    const size_t chunk = (n + SUMSQ_BLOCKS - 1) / SUMSQ_BLOCKS;
    const size_t lo = (size_t)blockIdx.x * chunk, hi = lo + chunk < n ? lo + chunk : n;
    double acc = 0;
    for (size_t i = lo + threadIdx.x; i < hi; i += blockDim.x) acc += (double)x[i] * (double)x[i];
    acc = block_sum<double>(acc, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

__global__ void sumsq_final_k(double *part) {
    __shared__ double sh[32];
    double acc = 0;
    for (int i = threadIdx.x; i < SUMSQ_BLOCKS; i += blockDim.x) acc += part[i];
    acc = block_sum<double>(acc, sh);
    if (threadIdx.x == 0) part[SUMSQ_BLOCKS] = acc;
}

static int ensure_ws(oz_cuda *c);

static double cuda_sumsq(oz_backend *be, const float *x, size_t n) {
    oz_cuda *c = C(be);
    if (!n) return 0.0;
    if (!ensure_ws(c)) return NAN;
    double *part = (double *)reduce_ws(c);
    sumsq_partial_k<<<SUMSQ_BLOCKS, SUMSQ_THREADS, 0, c->stream>>>(part, x, n);
    OZ_CUDA_LAUNCHED(c);
    sumsq_final_k<<<1, SUMSQ_THREADS, 0, c->stream>>>(part);
    OZ_CUDA_LAUNCHED(c);
    double r = NAN;
    cuda_to_host(be, &r, part + SUMSQ_BLOCKS, sizeof r);
    return c->status == OZ_OK ? r : NAN; /* a failure must not pass for a finite norm */
}

/* ------------------------------------------------------------------ model ops */

__global__ void embedding_fwd_k(float *out, const float *table, const int32_t *ids, int N, int d) {
    GRID_STRIDE(i, (size_t)N * d) {
        const size_t row = i / d, col = i % d;
        out[i] = table[(size_t)ids[row] * d + col];
    }
}

static void cuda_embedding_fwd(oz_backend *be, float *out, const float *table, const int32_t *ids, int N, int d) {
    oz_cuda *c = C(be);
    if (N <= 0 || d <= 0) return;
    embedding_fwd_k<<<grid_for((size_t)N * d, 256), 256, 0, c->stream>>>(out, table, ids, N, d);
    OZ_CUDA_LAUNCHED(c);
}

/* dtable += scatter(dout) without atomics: warp w owns vocabulary row w and scans every id (a
 * tile at a time, staged in shared memory for the block's 8 rows); matches are added in token
 * order, the CPU's order, so the two backends agree bit for bit. The scan costs V*N/32 warp
 * steps, a fraction of a millisecond at V=32000, N=16384. The row is held in registers (EMB_COLS
 * columns at a time) while matches are added, so a frequent id costs independent loads, not a
 * chain of read-modify-writes through memory. */
#define EMB_WARPS 8
#define EMB_TILE 2048
#define EMB_PER_LANE 8
#define EMB_COLS (32 * EMB_PER_LANE)

__global__ void embedding_bwd_k(float *dtable, const float *dout, const int32_t *ids, int N, int d, int V) {
    __shared__ int32_t sid[EMB_TILE];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int row = blockIdx.x * EMB_WARPS + w;
    float *dst = dtable + (size_t)(row < V ? row : 0) * d;
    for (int c0 = 0; c0 < d; c0 += EMB_COLS) {
        float acc[EMB_PER_LANE];
#pragma unroll
        for (int u = 0; u < EMB_PER_LANE; u++) {
            const int col = c0 + lane + 32 * u;
            acc[u] = row < V && col < d ? dst[col] : 0.0f;
        }
        for (int i0 = 0; i0 < N; i0 += EMB_TILE) {
            const int n = N - i0 < EMB_TILE ? N - i0 : EMB_TILE;
            __syncthreads();
            for (int i = threadIdx.x; i < n; i += blockDim.x) sid[i] = ids[i0 + i];
            __syncthreads();
            if (row >= V) continue; /* warp-uniform: the ballot below sees whole warps */
            for (int j0 = 0; j0 < n; j0 += 32) {
                const int j = j0 + lane;
                unsigned mask = __ballot_sync(0xffffffffu, j < n && sid[j] == row);
                while (mask) {
                    const int k = __ffs(mask) - 1;
                    mask &= mask - 1;
                    const float *src = dout + (size_t)(i0 + j0 + k) * d;
#pragma unroll
                    for (int u = 0; u < EMB_PER_LANE; u++) {
                        const int col = c0 + lane + 32 * u;
                        if (col < d) acc[u] += src[col];
                    }
                }
            }
        }
        if (row < V)
#pragma unroll
            for (int u = 0; u < EMB_PER_LANE; u++) {
                const int col = c0 + lane + 32 * u;
                if (col < d) dst[col] = acc[u];
            }
    }
}

static void cuda_embedding_bwd(oz_backend *be, float *dtable, const float *dout, const int32_t *ids, int N, int d,
                               int V) {
    oz_cuda *c = C(be);
    if (N <= 0 || d <= 0 || V <= 0) return;
    embedding_bwd_k<<<(V + EMB_WARPS - 1) / EMB_WARPS, EMB_WARPS * 32, 0, c->stream>>>(dtable, dout, ids, N, d, V);
    OZ_CUDA_LAUNCHED(c);
}

/* One block per row; the sum of squares in double, as on the CPU. */
__global__ void rmsnorm_fwd_k(float *out, float *rstd, const float *x, const float *w, int d, float eps) {
    __shared__ double sh[32];
    const size_t row = blockIdx.x;
    const float *xr = x + row * d;
    float *yr = out + row * d;
    double ss = 0;
    for (int j = threadIdx.x; j < d; j += blockDim.x) ss += (double)xr[j] * (double)xr[j];
    ss = block_sum<double>(ss, sh);
    const float r = (float)(1.0 / sqrt(ss / d + (double)eps));
    if (threadIdx.x == 0) rstd[row] = r;
    for (int j = threadIdx.x; j < d; j += blockDim.x) yr[j] = xr[j] * r * w[j];
}

static int row_threads(int d) { return d >= 1024 ? 512 : d >= 256 ? 256 : 128; }

static void cuda_rmsnorm_fwd(oz_backend *be, float *out, float *rstd, const float *x, const float *w, int N, int d,
                             float eps) {
    oz_cuda *c = C(be);
    if (N <= 0 || d <= 0) return;
    rmsnorm_fwd_k<<<N, row_threads(d), 0, c->stream>>>(out, rstd, x, w, d, eps);
    OZ_CUDA_LAUNCHED(c);
}

__global__ void rmsnorm_bwd_dx_k(float *dx, const float *dout, const float *x, const float *w, const float *rstd,
                                 int d) {
    __shared__ double sh[32];
    const size_t row = blockIdx.x;
    const float *xr = x + row * d, *gr = dout + row * d;
    float *dxr = dx + row * d;
    const float r = rstd[row];
    double cacc = 0;
    for (int j = threadIdx.x; j < d; j += blockDim.x) cacc += (double)gr[j] * (double)w[j] * (double)xr[j];
    cacc = block_sum<double>(cacc, sh);
    const float coef = (float)(cacc * (double)r * (double)r * (double)r / d);
    for (int j = threadIdx.x; j < d; j += blockDim.x) dxr[j] += r * w[j] * gr[j] - coef * xr[j];
}

/* dw's column sums over N rows: chunk c of rows -> part[c][j] (32 columns x 8 row lanes per
 * block, lanes combined in order), then the chunks in order. Chunk boundaries depend on (N, d). */
__global__ void rmsnorm_dw_partial_k(double *part, const float *dout, const float *x, const float *rstd, int N,
                                     int d, int rows_per_chunk) {
    __shared__ double sh[8][33];
    const int j = blockIdx.x * 32 + threadIdx.x, chunk = blockIdx.y;
    const int r0 = chunk * rows_per_chunk, r1 = r0 + rows_per_chunk < N ? r0 + rows_per_chunk : N;
    double acc = 0;
    if (j < d)
        for (int i = r0 + threadIdx.y; i < r1; i += 8)
            acc += (double)dout[(size_t)i * d + j] * (double)x[(size_t)i * d + j] * (double)rstd[i];
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && j < d) {
        double t = 0;
        for (int k = 0; k < 8; k++) t += sh[k][threadIdx.x];
        part[(size_t)chunk * d + j] = t;
    }
}

__global__ void rmsnorm_dw_final_k(float *dw, const double *part, int d, int chunks) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    double t = 0;
    for (int k = 0; k < chunks; k++) t += part[(size_t)k * d + j];
    dw[j] += (float)t;
}

static void cuda_rmsnorm_bwd(oz_backend *be, float *dx, float *dw, const float *dout, const float *x, const float *w,
                             const float *rstd, int N, int d) {
    oz_cuda *c = C(be);
    if (N <= 0 || d <= 0 || !ensure_ws(c)) return;
    rmsnorm_bwd_dx_k<<<N, row_threads(d), 0, c->stream>>>(dx, dout, x, w, rstd, d);
    OZ_CUDA_LAUNCHED(c);
    int chunks, rows;
    if (!oz_cuda_dw_chunks(c, "rmsnorm_bwd", N, d, &chunks, &rows)) return;
    double *part = (double *)reduce_ws(c);
    rmsnorm_dw_partial_k<<<dim3((d + 31) / 32, chunks), dim3(32, 8), 0, c->stream>>>(part, dout, x, rstd, N, d, rows);
    OZ_CUDA_LAUNCHED(c);
    rmsnorm_dw_final_k<<<(d + 255) / 256, 256, 0, c->stream>>>(dw, part, d, chunks);
    OZ_CUDA_LAUNCHED(c);
}

__global__ void rope_k(float *x, const float *cos_t, const float *sin_t, int T, int H, int hd, int pos0, float sg,
                       size_t total) {
    const int half = hd / 2;
    GRID_STRIDE(idx, total) {
        const int i = (int)(idx % half);
        const size_t rh = idx / half; /* (b*T + t)*H + h */
        const int t = (int)((rh / H) % T);
        float *xr = x + rh * hd;
        const float cs = cos_t[(size_t)(pos0 + t) * half + i], sn = sg * sin_t[(size_t)(pos0 + t) * half + i];
        const float x1 = xr[i], x2 = xr[i + half];
        xr[i] = x1 * cs - x2 * sn;
        xr[i + half] = x2 * cs + x1 * sn;
    }
}

static void cuda_rope(oz_backend *be, float *x, const float *cos_table, const float *sin_table, int B, int T, int H,
                      int hd, int pos0, int inverse) {
    oz_cuda *c = C(be);
    const size_t total = (size_t)B * T * H * (hd / 2);
    if (!total) return;
    rope_k<<<grid_for(total, 256), 256, 0, c->stream>>>(x, cos_table, sin_table, T, H, hd, pos0,
                                                          inverse ? -1.0f : 1.0f, total);
    OZ_CUDA_LAUNCHED(c);
}

static void cuda_attention_fwd(oz_backend *be, float *out, float *lse, const float *q, const float *k, const float *v,
                               int B, int T, int Hq, int Hkv, int hd) {
    oz_cuda_attention_fwd(C(be), out, lse, q, k, v, B, T, Hq, Hkv, hd);
}

static void cuda_attention_decode(oz_backend *be, float *out, const float *q, const float *k, const float *v,
                                  const int32_t *lens, float *scores, int B, int cap, int Hq, int Hkv, int hd) {
    oz_cuda_attention_decode(C(be), out, q, k, v, lens, scores, B, cap, Hq, Hkv, hd);
}

static void cuda_attention_bwd(oz_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *q,
                               const float *k, const float *v, const float *out, const float *lse, int B, int T,
                               int Hq, int Hkv, int hd) {
    oz_cuda_attention_bwd(C(be), dq, dk, dv, dout, q, k, v, out, lse, B, T, Hq, Hkv, hd);
}

__global__ void swiglu_fwd_k(float *h, const float *gate, const float *up, size_t n) {
    GRID_STRIDE(i, n) {
        const float g = gate[i];
        h[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

static void cuda_swiglu_fwd(oz_backend *be, float *h, const float *gate, const float *up, size_t n) {
    oz_cuda *c = C(be);
    if (!n) return;
    swiglu_fwd_k<<<grid_for(n, 256), 256, 0, c->stream>>>(h, gate, up, n);
    OZ_CUDA_LAUNCHED(c);
}

/* dgate/dup may alias gate/up: both inputs are read before either output is written. */
__global__ void swiglu_bwd_k(float *dgate, float *dup, const float *dh, const float *gate, const float *up, size_t n) {
    GRID_STRIDE(i, n) {
        const float g = gate[i], u = up[i], d = dh[i];
        const float sg = 1.0f / (1.0f + expf(-g));
        dgate[i] = d * u * sg * (1.0f + g * (1.0f - sg));
        dup[i] = d * g * sg;
    }
}

static void cuda_swiglu_bwd(oz_backend *be, float *dgate, float *dup, const float *dh, const float *gate,
                            const float *up, size_t n) {
    oz_cuda *c = C(be);
    if (!n) return;
    swiglu_bwd_k<<<grid_for(n, 256), 256, 0, c->stream>>>(dgate, dup, dh, gate, up, n);
    OZ_CUDA_LAUNCHED(c);
}

/* A row's max and exp-sum over the block's threads: per-thread float partial sums combined in
 * double, as the CPU combines its lanes; every thread gets both. */
__device__ float row_max_expsum(const float *row, int V, double *sum, float *shf, double *shd) {
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, row[j]);
    mx = block_max(mx, shf);
    float part = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) part += expf(row[j] - mx);
    *sum = block_sum<double>((double)part, shd);
    return mx;
}

/* One block per row: max, then the exp-sum (per-thread float, combined in double as the CPU
 * combines its lanes), loss = lse - x[target]; with grad_scale the row becomes
 * grad_scale * (softmax - onehot) in place. */
__global__ void cross_entropy_k(float *logits, float *losses, const int32_t *targets, int V, float grad_scale) {
    __shared__ float shf[32];
    __shared__ double shd[32];
    const size_t i = blockIdx.x;
    float *row = logits + i * V;
    const int tgt = targets[i];
    if (tgt < 0 || tgt >= V) {
        /* Padding (negative) gives 0; an id past the vocabulary is a caller bug, reported as NaN. */
        const float fill = tgt < 0 ? 0.0f : __int_as_float(0x7fc00000);
        if (threadIdx.x == 0) losses[i] = fill;
        if (grad_scale != 0.0f)
            for (int j = threadIdx.x; j < V; j += blockDim.x) row[j] = fill;
        return;
    }
    double sum;
    const float mx = row_max_expsum(row, V, &sum, shf, shd);
    const float xt = row[tgt];
    const double lse = (double)mx + log(sum);
    if (threadIdx.x == 0) losses[i] = (float)(lse - (double)xt);
    if (grad_scale == 0.0f) return;
    const float f = (float)((double)grad_scale / sum);
    __syncthreads(); /* every thread has read row[tgt] */
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float g = expf(row[j] - mx) * f;
        if (j == tgt) g -= grad_scale;
        row[j] = g;
    }
}

static void cuda_cross_entropy(oz_backend *be, float *logits, float *losses, const int32_t *targets, int N, int V,
                               float grad_scale) {
    oz_cuda *c = C(be);
    if (N <= 0 || V <= 0) return;
    cross_entropy_k<<<N, V >= 8192 ? 1024 : 256, 0, c->stream>>>(logits, losses, targets, V, grad_scale);
    OZ_CUDA_LAUNCHED(c);
}

/* One block per row: max, exp-sum (per-thread float, combined in double), lse. */
__global__ void logsumexp_rows_k(float *lse, const float *logits, int V) {
    __shared__ float shf[32];
    __shared__ double shd[32];
    const float *row = logits + (size_t)blockIdx.x * V;
    double sum;
    const float mx = row_max_expsum(row, V, &sum, shf, shd);
    if (threadIdx.x == 0) lse[blockIdx.x] = (float)((double)mx + log(sum));
}

static void cuda_logsumexp_rows(oz_backend *be, float *lse, const float *logits, int N, int V) {
    oz_cuda *c = C(be);
    if (N <= 0 || V <= 0) return;
    logsumexp_rows_k<<<N, V >= 8192 ? 1024 : 256, 0, c->stream>>>(lse, logits, V);
    OZ_CUDA_LAUNCHED(c);
}

/* Elementwise over (N, Vb): each element needs only its row's lse and target. */
__global__ void cross_entropy_block_k(float *logits, const float *lse, float *losses, const int32_t *targets, int N,
                                      int Vb, int v0, float grad_scale) {
    GRID_STRIDE(e, (size_t)N * Vb) {
        const int i = (int)(e / Vb), j = (int)(e % Vb), tgt = targets[i];
        if (tgt < 0) {
            logits[e] = 0.0f;
            continue;
        }
        const float x = logits[e];
        if (tgt - v0 == j) losses[i] = lse[i] - x;
        float g = grad_scale * expf(x - lse[i]);
        if (tgt - v0 == j) g -= grad_scale;
        logits[e] = g;
    }
}

static void cuda_cross_entropy_block(oz_backend *be, float *logits, const float *lse, float *losses,
                                     const int32_t *targets, int N, int Vb, int v0, float grad_scale) {
    oz_cuda *c = C(be);
    if (N <= 0 || Vb <= 0) return;
    size_t n = (size_t)N * Vb;
    cross_entropy_block_k<<<grid_for(n, 256), 256, 0, c->stream>>>(logits, lse, losses, targets, N, Vb, v0, grad_scale);
    OZ_CUDA_LAUNCHED(c);
}

/* ------------------------------------------------------------------ optimizer */

/* torch.optim.AdamW's single-tensor operation order, as on the CPU. */
__global__ void adamw_k(float *param, const float *grad, float *m, float *v, size_t n, float lr, float b1, float b2,
                        float eps, float decay, float gs, float step_size, float bc2_sqrt) {
    GRID_STRIDE(i, n) {
        const float g = grad[i] * gs;
        float p = param[i] * decay;
        const float mi = b1 * m[i] + (1.0f - b1) * g;
        const float vi = b2 * v[i] + (1.0f - b2) * g * g;
        const float denom = sqrtf(vi) / bc2_sqrt + eps;
        p -= step_size * (mi / denom);
        m[i] = mi;
        v[i] = vi;
        param[i] = p;
    }
    (void)lr;
}

static void cuda_adamw_step(oz_backend *be, float *param, const float *grad, float *m, float *v, size_t n,
                            const oz_adamw_args *a) {
    oz_cuda *c = C(be);
    if (!n) return;
    const float decay = 1.0f - a->lr * a->weight_decay;
    const float step_size = a->lr / a->bias_correction1;
    const float bc2_sqrt = sqrtf(a->bias_correction2);
    adamw_k<<<grid_for(n, 256), 256, 0, c->stream>>>(param, grad, m, v, n, a->lr, a->beta1, a->beta2, a->eps, decay,
                                                       a->grad_scale, step_size, bc2_sqrt);
    OZ_CUDA_LAUNCHED(c);
}

/* adamw_k's step on bf16 weights, each product and sum rounded on its own (__fmul_rn, __fadd_rn:
 * no FMA contraction) so the new weight is the CPU's to the bit before its stochastic rounding,
 * which is oz_bf16_sr's (cuda_quant.cu's bf16_sr_k) in integer arithmetic. */
__global__ void adamw_bf16_k(uint16_t *w, size_t ldw, const float *grad, float *m, float *v, size_t rows, size_t cols,
                             float b1, float b2, float eps, float decay, float gs, float step_size, float bc2_sqrt,
                             uint64_t key) {
    GRID_STRIDE(i, rows * cols) {
        const size_t r = i / cols, col = i % cols;
        uint16_t *wp = w + r * ldw + col;
        const float g = __fmul_rn(grad[i], gs);
        float p = __fmul_rn(__uint_as_float((uint32_t)*wp << 16), decay);
        const float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(1.0f - b1, g));
        const float vi = __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(__fmul_rn(1.0f - b2, g), g));
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
        p = __fsub_rn(p, __fmul_rn(step_size, __fdiv_rn(mi, denom)));
        m[i] = mi;
        v[i] = vi;
        *wp = oz_cuda_bf16_sr(p, key, i);
    }
}

static void cuda_adamw_step_bf16(oz_backend *be, uint16_t *w, size_t ldw, const float *grad, float *m, float *v,
                                 size_t rows, size_t cols, const oz_adamw_args *a, uint64_t key) {
    oz_cuda *c = C(be);
    if (!rows || !cols) return;
    const float decay = 1.0f - a->lr * a->weight_decay;
    const float step_size = a->lr / a->bias_correction1;
    const float bc2_sqrt = sqrtf(a->bias_correction2);
    adamw_bf16_k<<<grid_for(rows * cols, 256), 256, 0, c->stream>>>(w, ldw, grad, m, v, rows, cols, a->beta1, a->beta2,
                                                                     a->eps, decay, a->grad_scale, step_size, bc2_sqrt,
                                                                     key);
    OZ_CUDA_LAUNCHED(c);
}

/* ------------------------------------------------------------------ lifecycle */

static int set_workspace(oz_cuda *c) {
    return OZ_CUBLAS_CHECK(c, cublasSetWorkspace(c->blas, c->ws, OZ_CUDA_CUBLAS_WORKSPACE_BYTES));
}

/* The workspace, cudaMalloc'ed here when no arena was attached (unit tests use the backend bare). */
static int ensure_ws(oz_cuda *c) {
    if (c->ws) return 1;
    if (!OZ_CUDA_CHECK(c, cudaMalloc((void **)&c->ws, OZ_CUDA_WORKSPACE_BYTES))) return 0;
    c->ws_owned = 1;
    return set_workspace(c);
}

int oz_cuda_ensure_ws(oz_cuda *c) { return ensure_ws(c); }
char *oz_cuda_reduce_ws(oz_cuda *c) { return reduce_ws(c); }

int oz_cuda_dw_chunks(oz_cuda *c, const char *op, int N, int d, int *chunks, int *rows) {
    const size_t cap = OZ_CUDA_REDUCE_BYTES / sizeof(double) / (size_t)d;
    if (cap < 1) {
        oz_cuda_fail(c, __FILE__, __LINE__, "%s: hidden size %d exceeds the reduction scratch", op, d);
        return 0;
    }
    int n = (int)(cap < 256 ? cap : 256);
    if (n > N) n = N;
    *rows = (N + n - 1) / n;
    *chunks = (N + *rows - 1) / *rows;
    return 1;
}

static oz_status cuda_sync(oz_backend *be, oz_err *err) {
    oz_cuda *c = C(be);
    OZ_CUDA_CHECK(c, cudaStreamSynchronize(c->stream));
    if (c->status != OZ_OK) return oz_fail(err, c->status, "%s", c->msg);
    return OZ_OK;
}

static oz_status cuda_attach_arena(oz_backend *be, oz_arena *arena, oz_err *err) {
    oz_cuda *c = C(be);
    if (c->arena) return oz_fail(err, OZ_ERR_INTERNAL, "CUDA backend: an arena is already attached");
    void *p;
    OZ_TRY(oz_arena_alloc(arena, OZ_MEM_SCRATCH, OZ_CUDA_WORKSPACE_BYTES, "CUDA workspace (cuBLAS + reductions)", &p,
                          err));
    OZ_TRY(cuda_sync(be, err)); /* nothing may still use the old workspace */
    if (c->ws_owned) OZ_CUDA_CHECK(c, cudaFree(c->ws));
    c->ws = (char *)p;
    c->ws_owned = 0;
    c->arena = arena;
    set_workspace(c);
    return cuda_sync(be, err);
}

static void cuda_destroy(oz_backend *be) {
    oz_cuda *c = C(be);
    if (c) {
        cudaStreamSynchronize(c->stream);
        if (c->blas) cublasDestroy(c->blas);
        if (c->solver) cusolverDnDestroy(c->solver);
        oz_cuda_bf16_release(c);
        if (c->ws_owned) cudaFree(c->ws);
        /* An attached workspace belongs to the arena, which frees it. */
        if (c->stream) cudaStreamDestroy(c->stream);
        free(c);
    }
    memset(be, 0, sizeof *be);
}

extern "C" oz_status oz_backend_cuda_set_tf32(oz_backend *be, int on, oz_err *err) {
    oz_cuda *c = C(be);
    if (!c || !be->name || strcmp(be->name, "cuda") != 0)
        return oz_fail(err, OZ_ERR_INTERNAL, "oz_backend_cuda_set_tf32: not a CUDA backend");
    c->tf32 = on != 0;
    if (!OZ_CUBLAS_CHECK(c, cublasSetMathMode(c->blas, on ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH)))
        return oz_fail(err, c->status, "%s", c->msg);
    return OZ_OK;
}

extern "C" oz_status oz_backend_cuda_create(oz_backend *be, int device, oz_err *err) {
    if (!be) return oz_fail(err, OZ_ERR_INTERNAL, "oz_backend_cuda_create: NULL backend");
    memset(be, 0, sizeof *be);
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        (void)cudaGetLastError();
        return oz_fail(err, OZ_ERR_INPUT, "--device cuda: no usable GPU (%s)",
                       e != cudaSuccess ? cudaGetErrorString(e) : "none found");
    }
    if (device < 0 || device >= count)
        return oz_fail(err, OZ_ERR_INPUT, "--device cuda:%d: this machine has %d GPU%s (0..%d)", device, count,
                       count == 1 ? "" : "s", count - 1);
    oz_cuda *c = (oz_cuda *)calloc(1, sizeof *c);
    if (!c) return oz_fail(err, OZ_ERR_NOMEM, "out of memory creating the CUDA backend");
    c->device = device;
    be->impl = c;
    be->name = "cuda";
    be->destroy = cuda_destroy;
    if (OZ_CUDA_CHECK(c, cudaSetDevice(device)) &&
        OZ_CUDA_CHECK(c, cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) &&
        OZ_CUBLAS_CHECK(c, cublasCreate(&c->blas)) && OZ_CUBLAS_CHECK(c, cublasSetStream(c->blas, c->stream)) &&
        OZ_CUBLAS_CHECK(c, cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH)) &&
        /* fp32 parity with the CPU: no reduced-precision reductions inside cuBLAS either. */
        OZ_CUBLAS_CHECK(c, cublasSetAtomicsMode(c->blas, CUBLAS_ATOMICS_NOT_ALLOWED)) && oz_cuda_attention_init(c)) {
    }
    if (c->status != OZ_OK) {
        oz_status st = oz_fail(err, c->status == OZ_ERR_INTERNAL ? OZ_ERR_INPUT : c->status, "--device cuda:%d: %s",
                               device, c->msg);
        cuda_destroy(be);
        return st;
    }
    be->allocator = (oz_allocator){cuda_alloc, cuda_free, c};
    be->threads = 1;
    be->host_visible = 0;
    be->host_allocator = (oz_allocator){cuda_host_alloc, cuda_host_free, c};
    be->to_device = cuda_to_device;
    be->to_host = cuda_to_host;
    be->copy = cuda_copy;
    be->fill = cuda_fill;
    be->to_bf16 = cuda_to_bf16;
    be->to_bf16_2d = cuda_to_bf16_2d;
    be->add_2d = cuda_add_2d;
    be->from_bf16_2d = cuda_from_bf16_2d;
    be->adamw_step_bf16 = cuda_adamw_step_bf16;
    be->from_bf16 = cuda_from_bf16;
    be->embedding_fwd_bf16 = cuda_embedding_fwd_bf16;
    be->gemm = cuda_gemm;
    be->axpy = cuda_axpy;
    be->scale = cuda_scale;
    be->sumsq = cuda_sumsq;
    be->embedding_fwd = cuda_embedding_fwd;
    be->embedding_bwd = cuda_embedding_bwd;
    be->rmsnorm_fwd = cuda_rmsnorm_fwd;
    be->rmsnorm_bwd = cuda_rmsnorm_bwd;
    be->rope = cuda_rope;
    be->attention_fwd = cuda_attention_fwd;
    be->attention_bwd = cuda_attention_bwd;
    be->attention_decode = cuda_attention_decode;
    be->swiglu_fwd = cuda_swiglu_fwd;
    be->swiglu_bwd = cuda_swiglu_bwd;
    be->cross_entropy = cuda_cross_entropy;
    be->logsumexp_rows = cuda_logsumexp_rows;
    be->cross_entropy_block = cuda_cross_entropy_block;
    be->adamw_step = cuda_adamw_step;
    oz_cuda_quant_ops(be);
    oz_cuda_subspace_ops(be);
    oz_cuda_bf16_ops(be);
    be->sync = cuda_sync;
    be->attach_arena = cuda_attach_arena;
    return OZ_OK;
}
