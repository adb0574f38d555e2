/* The bf16 ops of backend.h on the GPU. The reference is src/backend/cpu/cpu_bf16.c, and every
 * kernel here follows it expression for expression in fp32:
 *  - Where the CPU op is a fixed sequence of fp32 multiplies and adds (rope, add, the rmsnorm
 *    outputs), the kernels spell them __fmul_rn/__fadd_rn/__fsub_rn. nvcc then cannot contract
 *    them into FMAs, and the results are the CPU's bit for bit.
 *  - Double sums (rmsnorm) are of exact products, so only their order differs from the CPU's.
 *  - swiglu uses the GPU's expf (the CPU has its own polynomial), so it matches to bf16
 *    rounding only.
 *  - Rounding to bf16 is the integer rule of oz_f32_to_bf16 (ties to even, NaN kept quiet), not
 *    __float2bfloat16_rn. A NaN's bits are then the CPU's too.
 * Loads and stores are 8 bf16 in one 16-byte access wherever the pointers are 16-byte aligned and
 * the size allows, with a scalar tail; otherwise the scalar path does everything.
 *
 * gemm_bf16 goes through cuBLASLt (bf16 inputs, CUBLAS_COMPUTE_32F, fp32 scale). The descriptors
 * and the heuristic's algorithm are made once per plan key and kept in a small per-backend table
 * (struct oz_cuda_lt, hung off oz_cuda). The key is shape, transposes, leading dimensions, C's
 * type and the pointers' alignment. The workspace is cuBLAS's part of the backend workspace, used
 * on the same stream, so the two libraries never use it at once. */
#include <cublasLt.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_internal.h"
#include "backend/cuda/cuda_sdpa.h"

static oz_cuda *C(oz_backend *be) { return (oz_cuda *)be->impl; }

/* Enough blocks to fill the GPU several times over; the kernels stride over the rest. */
static unsigned grid_for(size_t n, int threads) {
    size_t blocks = (n + (size_t)threads - 1) / (size_t)threads;
    if (blocks > 132 * 32) blocks = 132 * 32;
    return blocks ? (unsigned)blocks : 1u;
}

static int aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

/* ------------------------------------------------------------------ bf16 bits */

__device__ __forceinline__ float wid(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }

__device__ __forceinline__ uint16_t rnd(float f) {
    const uint32_t x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x0040u);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

/* 8 bf16 <-> 8 floats through one 16-byte access; element 0 is the low half of the first word
 * (little-endian, as in memory). p must be 16-byte aligned. */
__device__ __forceinline__ void load8(const uint16_t *p, float *f) {
    const uint4 u = *reinterpret_cast<const uint4 *>(p);
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
        f[2 * k] = __uint_as_float(w[k] << 16);
        f[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
    }
}

__device__ __forceinline__ void store8(uint16_t *p, const float *f) {
    uint32_t w[4];
#pragma unroll
    for (int k = 0; k < 4; k++) w[k] = (uint32_t)rnd(f[2 * k]) | ((uint32_t)rnd(f[2 * k + 1]) << 16);
    *reinterpret_cast<uint4 *>(p) = make_uint4(w[0], w[1], w[2], w[3]);
}


static int row_threads(int d) { return d >= 2048 ? 512 : d >= 512 ? 256 : 128; }

/* ------------------------------------------------------------------ GEMM */

#define LT_PLANS 64

struct lt_plan {
    int used;
    int key[12];
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc; /* cuBLASLt's A, B, C (= D): our B, A, C (see gemm_bf16) */
    cublasLtMatmulAlgo_t algo;
    /* The heuristic had no algorithm for this key: cublasGemmEx (same types, same compute) runs it. */
    int gemmex;
};

struct oz_cuda_lt {
    cublasLtHandle_t handle;
    lt_plan plan[LT_PLANS];
    int next; /* the slot the next new key takes once all are used: round robin */
};

/* The largest power of two (at most 256) dividing the address: cuBLASLt's alignment preference. */
static int align_of(const void *p) {
    const uintptr_t a = (uintptr_t)p;
    int al = 256;
    while (al > 1 && (a & (uintptr_t)(al - 1))) al >>= 1;
    return al;
}

static void plan_release(lt_plan *p) {
    if (p->la) cublasLtMatrixLayoutDestroy(p->la);
    if (p->lb) cublasLtMatrixLayoutDestroy(p->lb);
    if (p->lc) cublasLtMatrixLayoutDestroy(p->lc);
    if (p->op) cublasLtMatmulDescDestroy(p->op);
    memset(p, 0, sizeof *p);
}

void oz_cuda_bf16_release(oz_cuda *c) {
    oz_sdpa_destroy(c->sdpa);
    c->sdpa = NULL;
    if (!c->lt) return;
    for (int i = 0; i < LT_PLANS; i++) plan_release(&c->lt->plan[i]);
    if (c->lt->handle) cublasLtDestroy(c->lt->handle);
    free(c->lt);
    c->lt = NULL;
}

/* Builds plan p for `key` (ta, tb, M, N, K, lda, ldb, ldc, c_bf16, alignments of A, B, C). */
static int plan_build(oz_cuda *c, lt_plan *p, const int *key) {
    const int ta = key[0], tb = key[1], M = key[2], N = key[3], K = key[4], lda = key[5], ldb = key[6],
              ldc = key[7], c_bf16 = key[8];
    memcpy(p->key, key, sizeof p->key);
    /* Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T. A row-major matrix read
     * column-major is its transpose, so cuBLASLt's A is our B with our trans_b, its B our A. */
    const cublasOperation_t opa = tb ? CUBLAS_OP_T : CUBLAS_OP_N, opb = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cudaDataType ctype = c_bf16 ? CUDA_R_16BF : CUDA_R_32F;
    cublasLtMatmulPreference_t pref = NULL;
    const uint64_t ws = OZ_CUDA_CUBLAS_WORKSPACE_BYTES;
    const uint32_t al_a = (uint32_t)key[10], al_b = (uint32_t)key[9], al_c = (uint32_t)key[11];
    int ok = OZ_CUBLAS_CHECK(c, cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F)) &&
             OZ_CUBLAS_CHECK(c, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa)) &&
             OZ_CUBLAS_CHECK(c, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb)) &&
             OZ_CUBLAS_CHECK(c, cublasLtMatrixLayoutCreate(&p->la, CUDA_R_16BF, tb ? K : N, tb ? N : K, ldb)) &&
             OZ_CUBLAS_CHECK(c, cublasLtMatrixLayoutCreate(&p->lb, CUDA_R_16BF, ta ? M : K, ta ? K : M, lda)) &&
             OZ_CUBLAS_CHECK(c, cublasLtMatrixLayoutCreate(&p->lc, ctype, N, M, ldc)) &&
             OZ_CUBLAS_CHECK(c, cublasLtMatmulPreferenceCreate(&pref)) &&
             OZ_CUBLAS_CHECK(c, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                                     sizeof ws)) &&
             OZ_CUBLAS_CHECK(c, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                                     &al_a, sizeof al_a)) &&
             OZ_CUBLAS_CHECK(c, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                                     &al_b, sizeof al_b)) &&
             OZ_CUBLAS_CHECK(c, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                                     &al_c, sizeof al_c)) &&
             OZ_CUBLAS_CHECK(c, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                                     &al_c, sizeof al_c));
    if (ok) {
        cublasLtMatmulHeuristicResult_t res;
        int got = 0;
        memset(&res, 0, sizeof res);
        const cublasStatus_t s =
            cublasLtMatmulAlgoGetHeuristic(c->lt->handle, p->op, p->la, p->lb, p->lc, p->lc, pref, 1, &res, &got);
        if (s == CUBLAS_STATUS_NOT_SUPPORTED || (s == CUBLAS_STATUS_SUCCESS && (got < 1 || res.state != CUBLAS_STATUS_SUCCESS)))
            p->gemmex = 1;
        else if (OZ_CUBLAS_CHECK(c, s))
            p->algo = res.algo;
        else
            ok = 0;
    }
    if (pref && !OZ_CUBLAS_CHECK(c, cublasLtMatmulPreferenceDestroy(pref))) ok = 0;
    if (!ok) {
        plan_release(p);
        return 0;
    }
    p->used = 1;
    return 1;
}

/* The plan for key, built on first use (the oldest slot is reused once the table is full). */
static lt_plan *plan_for(oz_cuda *c, const int *key) {
    if (!c->lt) {
        c->lt = (oz_cuda_lt *)calloc(1, sizeof *c->lt);
        if (!c->lt) {
            oz_cuda_fail(c, __FILE__, __LINE__, "gemm_bf16: out of host memory for the cuBLASLt plans");
            return NULL;
        }
        if (!OZ_CUBLAS_CHECK(c, cublasLtCreate(&c->lt->handle))) {
            free(c->lt);
            c->lt = NULL;
            return NULL;
        }
    }
    oz_cuda_lt *lt = c->lt;
    for (int i = 0; i < LT_PLANS; i++)
        if (lt->plan[i].used && !memcmp(lt->plan[i].key, key, sizeof lt->plan[i].key)) return &lt->plan[i];
    lt_plan *p = &lt->plan[lt->next];
    lt->next = (lt->next + 1) % LT_PLANS;
    /* Host-side descriptors only: kernels already queued with them have their parameters. */
    plan_release(p);
    return plan_build(c, p, key) ? p : NULL;
}

/* C = beta * C over a strided (M, N): gemm with K == 0. beta == 0 writes zeros (C may be NaN). */
__global__ void scale_c_k(void *Cv, int c_bf16, int M, int N, int ldc, float beta) {
    GRID_STRIDE(i, (size_t)M * N) {
        const size_t at = (i / N) * (size_t)ldc + i % N;
        if (c_bf16) {
            uint16_t *p = (uint16_t *)Cv + at;
            *p = beta == 0.0f ? (uint16_t)0 : rnd(__fmul_rn(beta, wid(*p)));
        } else {
            float *p = (float *)Cv + at;
            *p = beta == 0.0f ? 0.0f : __fmul_rn(beta, *p);
        }
    }
}

static void cuda_gemm_bf16(oz_backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha,
                           const uint16_t *A, int lda, const uint16_t *B, int ldb, float beta, void *Cm, int ldc,
                           int c_bf16) {
    oz_cuda *c = C(be);
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        scale_c_k<<<grid_for((size_t)M * N, 256), 256, 0, c->stream>>>(Cm, c_bf16 != 0, M, N, ldc, beta);
        OZ_CUDA_LAUNCHED(c);
        return;
    }
    if (!oz_cuda_ensure_ws(c)) return;
    const int key[12] = {trans_a != 0, trans_b != 0, M, N, K, lda, ldb, ldc, c_bf16 != 0,
                         align_of(A), align_of(B), align_of(Cm)};
    lt_plan *p = plan_for(c, key);
    if (!p) return;
    if (p->gemmex) {
        OZ_CUBLAS_CHECK(c, cublasGemmEx(c->blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                                        N, M, K, &alpha, B, CUDA_R_16BF, ldb, A, CUDA_R_16BF, lda, &beta, Cm,
                                        c_bf16 ? CUDA_R_16BF : CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        return;
    }
    OZ_CUBLAS_CHECK(c, cublasLtMatmul(c->lt->handle, p->op, &alpha, B, p->la, A, p->lb, &beta, Cm, p->lc, Cm, p->lc,
                                      &p->algo, c->ws, OZ_CUDA_CUBLAS_WORKSPACE_BYTES, c->stream));
}

/* ------------------------------------------------------------------ rmsnorm */

/* One block per row, as rmsnorm_fwd_k: the sum of squares in double, rstd in fp32, then
 * out = (x * r) * w rounded. V = 8 reads and writes 8 bf16 at a time (d % 8 == 0, aligned rows). */
template <int V>
__global__ void rmsnorm_fwd_bf16_k(uint16_t *out, float *rstd, const uint16_t *x, const uint16_t *w, int d, float eps) {
    __shared__ double sh[32];
    const size_t row = blockIdx.x;
    const uint16_t *xr = x + row * d;
    uint16_t *yr = out + row * d;
    double ss = 0;
    for (int j = threadIdx.x * V; j < d; j += blockDim.x * V) {
        float f[V];
        if constexpr (V == 8) load8(xr + j, f);
        else f[0] = wid(xr[j]);
#pragma unroll
        for (int k = 0; k < V; k++) ss += (double)f[k] * (double)f[k];
    }
    ss = block_sum<double>(ss, sh);
    const float r = (float)(1.0 / sqrt(ss / d + (double)eps));
    if (threadIdx.x == 0) rstd[row] = r;
    for (int j = threadIdx.x * V; j < d; j += blockDim.x * V) {
        float f[V], g[V];
        if constexpr (V == 8) load8(xr + j, f), load8(w + j, g);
        else f[0] = wid(xr[j]), g[0] = wid(w[j]);
#pragma unroll
        for (int k = 0; k < V; k++) f[k] = __fmul_rn(__fmul_rn(f[k], r), g[k]);
        if constexpr (V == 8) store8(yr + j, f);
        else yr[j] = rnd(f[0]);
    }
}

static void cuda_rmsnorm_fwd_bf16(oz_backend *be, uint16_t *out, float *rstd, const uint16_t *x, const uint16_t *w,
                                  int N, int d, float eps) {
    oz_cuda *c = C(be);
    if (N <= 0 || d <= 0) return;
    if (d % 8 == 0 && aligned16(out) && aligned16(x) && aligned16(w))
        rmsnorm_fwd_bf16_k<8><<<N, row_threads(d), 0, c->stream>>>(out, rstd, x, w, d, eps);
    else
        rmsnorm_fwd_bf16_k<1><<<N, row_threads(d), 0, c->stream>>>(out, rstd, x, w, d, eps);
    OZ_CUDA_LAUNCHED(c);
}

/* dx of one row per block: c = sum g w x in double, coef = c r^3 / d, then
 * v = (r w) g - coef x, and dx = v or dx + v, rounded once. */
template <int V>
__global__ void rmsnorm_bwd_dx_bf16_k(uint16_t *dx, const uint16_t *dout, const uint16_t *x, const uint16_t *w,
                                      const float *rstd, int d, int accumulate) {
    __shared__ double sh[32];
    const size_t row = blockIdx.x;
    const uint16_t *xr = x + row * d, *gr = dout + row * d;
    uint16_t *dxr = dx + row * d;
    const float r = rstd[row];
    double cacc = 0;
    for (int j = threadIdx.x * V; j < d; j += blockDim.x * V) {
        float xf[V], gf[V], wf[V];
        if constexpr (V == 8) load8(xr + j, xf), load8(gr + j, gf), load8(w + j, wf);
        else xf[0] = wid(xr[j]), gf[0] = wid(gr[j]), wf[0] = wid(w[j]);
#pragma unroll
        for (int k = 0; k < V; k++) cacc += (double)gf[k] * (double)wf[k] * (double)xf[k];
    }
    cacc = block_sum<double>(cacc, sh);
    const float coef = (float)(cacc * (double)r * (double)r * (double)r / d);
    for (int j = threadIdx.x * V; j < d; j += blockDim.x * V) {
        float xf[V], gf[V], wf[V], df[V];
        if constexpr (V == 8) {
            load8(xr + j, xf), load8(gr + j, gf), load8(w + j, wf);
            if (accumulate) load8(dxr + j, df);
        } else {
            xf[0] = wid(xr[j]), gf[0] = wid(gr[j]), wf[0] = wid(w[j]);
            if (accumulate) df[0] = wid(dxr[j]);
        }
#pragma unroll
        for (int k = 0; k < V; k++) {
            const float v = __fsub_rn(__fmul_rn(__fmul_rn(r, wf[k]), gf[k]), __fmul_rn(coef, xf[k]));
            df[k] = accumulate ? __fadd_rn(df[k], v) : v;
        }
        if constexpr (V == 8) store8(dxr + j, df);
        else dxr[j] = rnd(df[0]);
    }
}

/* dw's column sums, as rmsnorm_dw_partial_k: chunk `blockIdx.y` of rows -> part[chunk][j], with
 * 32 x V columns and 8 row lanes per block, the lanes combined in order. */
template <int V>
__global__ void rmsnorm_dw_partial_bf16_k(double *part, const uint16_t *dout, const uint16_t *x, const float *rstd,
                                          int N, int d, int rows_per_chunk) {
    __shared__ double sh[8][32 * V + 1];
    const int j0 = (blockIdx.x * 32 + threadIdx.x) * V, chunk = blockIdx.y;
    const int r0 = chunk * rows_per_chunk, r1 = r0 + rows_per_chunk < N ? r0 + rows_per_chunk : N;
    double acc[V];
#pragma unroll
    for (int k = 0; k < V; k++) acc[k] = 0;
    if (j0 < d)
        for (int i = r0 + threadIdx.y; i < r1; i += 8) {
            float gf[V], xf[V];
            if constexpr (V == 8) load8(dout + (size_t)i * d + j0, gf), load8(x + (size_t)i * d + j0, xf);
            else gf[0] = wid(dout[(size_t)i * d + j0]), xf[0] = wid(x[(size_t)i * d + j0]);
            const double r = rstd[i];
#pragma unroll
            for (int k = 0; k < V; k++) acc[k] += (double)gf[k] * (double)xf[k] * r;
        }
#pragma unroll
    for (int k = 0; k < V; k++) sh[threadIdx.y][threadIdx.x * V + k] = acc[k];
    __syncthreads();
    if (threadIdx.y == 0 && j0 < d)
#pragma unroll
        for (int k = 0; k < V; k++) {
            double t = 0;
            for (int y = 0; y < 8; y++) t += sh[y][threadIdx.x * V + k];
            part[(size_t)chunk * d + j0 + k] = t;
        }
}

__global__ void rmsnorm_dw_final_bf16_k(float *dw, const double *part, int d, int chunks) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    double t = 0;
    for (int k = 0; k < chunks; k++) t += part[(size_t)k * d + j];
    dw[j] += (float)t;
}

static void cuda_rmsnorm_bwd_bf16(oz_backend *be, uint16_t *dx, float *dw, const uint16_t *dout, const uint16_t *x,
                                  const uint16_t *w, const float *rstd, int N, int d, int accumulate_dx) {
    oz_cuda *c = C(be);
    if (N <= 0 || d <= 0 || !oz_cuda_ensure_ws(c)) return;
    const int vec = d % 8 == 0 && aligned16(dx) && aligned16(dout) && aligned16(x) && aligned16(w);
    if (vec)
        rmsnorm_bwd_dx_bf16_k<8><<<N, row_threads(d), 0, c->stream>>>(dx, dout, x, w, rstd, d, accumulate_dx != 0);
    else
        rmsnorm_bwd_dx_bf16_k<1><<<N, row_threads(d), 0, c->stream>>>(dx, dout, x, w, rstd, d, accumulate_dx != 0);
    OZ_CUDA_LAUNCHED(c);
    int chunks, rows;
    if (!oz_cuda_dw_chunks(c, "rmsnorm_bwd_bf16", N, d, &chunks, &rows)) return;
    double *part = (double *)oz_cuda_reduce_ws(c);
    if (vec)
        rmsnorm_dw_partial_bf16_k<8><<<dim3((d / 8 + 31) / 32, chunks), dim3(32, 8), 0, c->stream>>>(part, dout, x, rstd,
                                                                                                   N, d, rows);
    else
        rmsnorm_dw_partial_bf16_k<1><<<dim3((d + 31) / 32, chunks), dim3(32, 8), 0, c->stream>>>(part, dout, x, rstd, N,
                                                                                               d, rows);
    OZ_CUDA_LAUNCHED(c);
    rmsnorm_dw_final_bf16_k<<<(d + 255) / 256, 256, 0, c->stream>>>(dw, part, d, chunks);
    OZ_CUDA_LAUNCHED(c);
}

/* ------------------------------------------------------------------ rope */

/* One item = V consecutive pairs (i, i + hd/2) of one (token, head): V = 8 when hd/2 % 8 == 0 and
 * x and the tables are 16-byte aligned, else 1. x1 c - x2 s and x2 c + x1 s are spelled out so
 * that no FMA forms: these are the CPU's roundings. */
template <int V>
__global__ void rope_bf16_k(uint16_t *x, const float *cos_t, const float *sin_t, int T, int H, int hd, int pos0,
                            float sg, size_t items) {
    const int half = hd / 2, per = half / V;
    GRID_STRIDE(it, items) {
        const int i = (int)(it % per) * V;
        const size_t rh = it / per; /* (b*T + t)*H + h */
        const int t = (int)((rh / H) % T);
        uint16_t *xr = x + rh * hd;
        const float *cr = cos_t + (size_t)(pos0 + t) * half + i, *sr = sin_t + (size_t)(pos0 + t) * half + i;
        float x1[V], x2[V], cs[V], sn[V];
        if constexpr (V == 8) {
            load8(xr + i, x1), load8(xr + i + half, x2);
            const float4 c0 = *reinterpret_cast<const float4 *>(cr), c1 = *reinterpret_cast<const float4 *>(cr + 4);
            const float4 s0 = *reinterpret_cast<const float4 *>(sr), s1 = *reinterpret_cast<const float4 *>(sr + 4);
            const float cv[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
            const float sv[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
#pragma unroll
            for (int k = 0; k < V; k++) cs[k] = cv[k], sn[k] = sv[k];
        } else {
            x1[0] = wid(xr[i]), x2[0] = wid(xr[i + half]), cs[0] = cr[0], sn[0] = sr[0];
        }
        float y1[V], y2[V];
#pragma unroll
        for (int k = 0; k < V; k++) {
            const float s = __fmul_rn(sg, sn[k]);
            y1[k] = __fsub_rn(__fmul_rn(x1[k], cs[k]), __fmul_rn(x2[k], s));
            y2[k] = __fadd_rn(__fmul_rn(x2[k], cs[k]), __fmul_rn(x1[k], s));
        }
        if constexpr (V == 8) {
            store8(xr + i, y1), store8(xr + i + half, y2);
        } else {
            xr[i] = rnd(y1[0]), xr[i + half] = rnd(y2[0]);
        }
    }
}

static void cuda_rope_bf16(oz_backend *be, uint16_t *x, const float *cos_table, const float *sin_table, int B, int T,
                           int H, int hd, int pos0, int inverse) {
    oz_cuda *c = C(be);
    const int half = hd / 2;
    const size_t pairs = (size_t)B * T * H * half;
    if (!pairs) return;
    const float sg = inverse ? -1.0f : 1.0f;
    if (half % 8 == 0 && aligned16(x) && aligned16(cos_table) && aligned16(sin_table))
        rope_bf16_k<8><<<grid_for(pairs / 8, 256), 256, 0, c->stream>>>(x, cos_table, sin_table, T, H, hd, pos0, sg,
                                                                         pairs / 8);
    else
        rope_bf16_k<1><<<grid_for(pairs, 256), 256, 0, c->stream>>>(x, cos_table, sin_table, T, H, hd, pos0, sg, pairs);
    OZ_CUDA_LAUNCHED(c);
}

/* ------------------------------------------------------------------ elementwise */

/* The elementwise kernels take nvec 8-wide groups (0 when a pointer is not 16-byte aligned), then
 * the n - 8 nvec elements left one at a time. An output may alias an input: each thread reads all
 * its inputs before it writes. */

__device__ __forceinline__ float silu_fwd(float g, float u) { return g / (1.0f + expf(-g)) * u; }

__device__ __forceinline__ void silu_bwd(float g, float u, float d, float *dg, float *du) {
    const float sg = 1.0f / (1.0f + expf(-g));
    /* d u sg (1 + g (1 - sg)) and d g sg in the CPU's order, not contracted */
    *dg = __fmul_rn(__fmul_rn(__fmul_rn(d, u), sg), __fadd_rn(1.0f, __fmul_rn(g, __fsub_rn(1.0f, sg))));
    *du = __fmul_rn(__fmul_rn(d, g), sg);
}

__global__ void swiglu_fwd_bf16_k(uint16_t *h, const uint16_t *gate, const uint16_t *up, size_t n, size_t nvec) {
    GRID_STRIDE(v, nvec) {
        float g[8], u[8];
        load8(gate + 8 * v, g), load8(up + 8 * v, u);
#pragma unroll
        for (int k = 0; k < 8; k++) g[k] = silu_fwd(g[k], u[k]);
        store8(h + 8 * v, g);
    }
    GRID_STRIDE(i, n - 8 * nvec) {
        const size_t e = 8 * nvec + i;
        h[e] = rnd(silu_fwd(wid(gate[e]), wid(up[e])));
    }
}

__global__ void swiglu_bwd_bf16_k(uint16_t *dgate, uint16_t *dup, const uint16_t *dh, const uint16_t *gate,
                                  const uint16_t *up, size_t n, size_t nvec) {
    GRID_STRIDE(v, nvec) {
        float g[8], u[8], d[8], dg[8], du[8];
        load8(gate + 8 * v, g), load8(up + 8 * v, u), load8(dh + 8 * v, d);
#pragma unroll
        for (int k = 0; k < 8; k++) silu_bwd(g[k], u[k], d[k], &dg[k], &du[k]);
        store8(dgate + 8 * v, dg), store8(dup + 8 * v, du);
    }
    GRID_STRIDE(i, n - 8 * nvec) {
        const size_t e = 8 * nvec + i;
        float dg, du;
        silu_bwd(wid(gate[e]), wid(up[e]), wid(dh[e]), &dg, &du);
        dgate[e] = rnd(dg), dup[e] = rnd(du);
    }
}

__global__ void add_bf16_k(uint16_t *out, const uint16_t *a, const uint16_t *b, size_t n, size_t nvec) {
    GRID_STRIDE(v, nvec) {
        float x[8], y[8];
        load8(a + 8 * v, x), load8(b + 8 * v, y);
#pragma unroll
        for (int k = 0; k < 8; k++) x[k] = __fadd_rn(x[k], y[k]);
        store8(out + 8 * v, x);
    }
    GRID_STRIDE(i, n - 8 * nvec) {
        const size_t e = 8 * nvec + i;
        out[e] = rnd(__fadd_rn(wid(a[e]), wid(b[e])));
    }
}

/* Launch size for n elements of which nvec groups of 8 go vectorised. */
static size_t ew_items(size_t n, size_t nvec) { return nvec > n - 8 * nvec ? nvec : n - 8 * nvec; }

static void cuda_swiglu_fwd_bf16(oz_backend *be, uint16_t *h, const uint16_t *gate, const uint16_t *up, size_t n) {
    oz_cuda *c = C(be);
    if (!n) return;
    const size_t nvec = aligned16(h) && aligned16(gate) && aligned16(up) ? n / 8 : 0;
    swiglu_fwd_bf16_k<<<grid_for(ew_items(n, nvec), 256), 256, 0, c->stream>>>(h, gate, up, n, nvec);
    OZ_CUDA_LAUNCHED(c);
}

static void cuda_swiglu_bwd_bf16(oz_backend *be, uint16_t *dgate, uint16_t *dup, const uint16_t *dh,
                                 const uint16_t *gate, const uint16_t *up, size_t n) {
    oz_cuda *c = C(be);
    if (!n) return;
    const size_t nvec =
        aligned16(dgate) && aligned16(dup) && aligned16(dh) && aligned16(gate) && aligned16(up) ? n / 8 : 0;
    swiglu_bwd_bf16_k<<<grid_for(ew_items(n, nvec), 256), 256, 0, c->stream>>>(dgate, dup, dh, gate, up, n, nvec);
    OZ_CUDA_LAUNCHED(c);
}

static void cuda_add_bf16(oz_backend *be, uint16_t *out, const uint16_t *a, const uint16_t *b, size_t n) {
    oz_cuda *c = C(be);
    if (!n) return;
    const size_t nvec = aligned16(out) && aligned16(a) && aligned16(b) ? n / 8 : 0;
    add_bf16_k<<<grid_for(ew_items(n, nvec), 256), 256, 0, c->stream>>>(out, a, b, n, nvec);
    OZ_CUDA_LAUNCHED(c);
}

/* ------------------------------------------------------------------ embedding */

/* One token row per block (grid-stride over rows past the grid): out[i] = table[ids[i]]. */
template <int V>
__global__ void embedding_bf16out_k(uint16_t *out, const uint16_t *table, const int32_t *ids, int N, int d) {
    for (int i = blockIdx.x; i < N; i += gridDim.x) {
        const uint16_t *src = table + (size_t)ids[i] * d;
        uint16_t *dst = out + (size_t)i * d;
        if constexpr (V == 8)
            for (int j = threadIdx.x * 8; j < d; j += blockDim.x * 8)
                *reinterpret_cast<uint4 *>(dst + j) = *reinterpret_cast<const uint4 *>(src + j);
        else
            for (int j = threadIdx.x; j < d; j += blockDim.x) dst[j] = src[j];
    }
}

static void cuda_embedding_fwd_bf16out(oz_backend *be, uint16_t *out, const uint16_t *table, const int32_t *ids, int N,
                                       int d) {
    oz_cuda *c = C(be);
    if (N <= 0 || d <= 0) return;
    const unsigned blocks = N < 65536 ? (unsigned)N : 65536u;
    if (d % 8 == 0 && aligned16(out) && aligned16(table))
        embedding_bf16out_k<8><<<blocks, 128, 0, c->stream>>>(out, table, ids, N, d);
    else
        embedding_bf16out_k<1><<<blocks, 256, 0, c->stream>>>(out, table, ids, N, d);
    OZ_CUDA_LAUNCHED(c);
}

/* ------------------------------------------------------------------ registration */

/* ------------------------------------------------------------------ attention (cuDNN) */

/* cuda_sdpa's shape for ours: causal, and the fp32 op's scale computed as the CPU computes it
 * (cuda_sdpa's default, 1 / sqrtf(hd), may differ from it in the last bit). */
static oz_sdpa_shape sdpa_shape(int B, int T, int Hq, int Hkv, int hd) {
    oz_sdpa_shape sh = {B, T, Hq, Hkv, hd, 1, (float)(1.0 / sqrt((double)hd))};
    return sh;
}

/* The fused attention's handle, made on the backend's stream at first use. The default (fast)
 * backward: cuDNN's deterministic one keeps a B * Hq * T^2 workspace. */
static oz_status sdpa_ready(oz_cuda *c, oz_err *err) {
    if (c->sdpa) return OZ_OK;
    return oz_sdpa_create(&c->sdpa, c->stream, 0, err);
}

static oz_status cuda_attention_bf16_plan(oz_backend *be, int B, int T, int Hq, int Hkv, int hd, size_t *workspace,
                                          oz_err *err) {
    oz_cuda *c = C(be);
    *workspace = 0;
    OZ_TRY(sdpa_ready(c, err));
    const oz_sdpa_shape sh = sdpa_shape(B, T, Hq, Hkv, hd);
    oz_sdpa_info info;
    OZ_TRY(oz_sdpa_plan(c->sdpa, &sh, &info, err));
    *workspace = info.fwd_workspace > info.bwd_workspace ? info.fwd_workspace : info.bwd_workspace;
    return OZ_OK;
}

static void cuda_attention_fwd_bf16(oz_backend *be, uint16_t *out, float *lse, const uint16_t *q, const uint16_t *k,
                                    const uint16_t *v, int B, int T, int Hq, int Hkv, int hd, void *workspace,
                                    size_t workspace_bytes) {
    oz_cuda *c = C(be);
    oz_err err = {OZ_OK, ""};
    const oz_sdpa_shape sh = sdpa_shape(B, T, Hq, Hkv, hd);
    if (sdpa_ready(c, &err) != OZ_OK ||
        oz_sdpa_fwd(c->sdpa, &sh, out, lse, q, k, v, workspace, workspace_bytes, &err) != OZ_OK)
        oz_cuda_fail(c, __FILE__, __LINE__, "attention_fwd_bf16: %s", err.msg);
}

static void cuda_attention_bwd_bf16(oz_backend *be, uint16_t *dq, uint16_t *dk, uint16_t *dv, const uint16_t *dout,
                                    const uint16_t *q, const uint16_t *k, const uint16_t *v, const uint16_t *out,
                                    const float *lse, int B, int T, int Hq, int Hkv, int hd, void *workspace,
                                    size_t workspace_bytes) {
    oz_cuda *c = C(be);
    oz_err err = {OZ_OK, ""};
    const oz_sdpa_shape sh = sdpa_shape(B, T, Hq, Hkv, hd);
    if (sdpa_ready(c, &err) != OZ_OK ||
        oz_sdpa_bwd(c->sdpa, &sh, dq, dk, dv, dout, q, k, v, out, lse, workspace, workspace_bytes, &err) != OZ_OK)
        oz_cuda_fail(c, __FILE__, __LINE__, "attention_bwd_bf16: %s", err.msg);
}

void oz_cuda_bf16_ops(oz_backend *be) {
    be->gemm_bf16 = cuda_gemm_bf16;
    be->rmsnorm_fwd_bf16 = cuda_rmsnorm_fwd_bf16;
    be->rmsnorm_bwd_bf16 = cuda_rmsnorm_bwd_bf16;
    be->rope_bf16 = cuda_rope_bf16;
    be->swiglu_fwd_bf16 = cuda_swiglu_fwd_bf16;
    be->swiglu_bwd_bf16 = cuda_swiglu_bwd_bf16;
    be->embedding_fwd_bf16out = cuda_embedding_fwd_bf16out;
    be->add_bf16 = cuda_add_bf16;
    be->attention_bf16_plan = cuda_attention_bf16_plan;
    be->attention_fwd_bf16 = cuda_attention_fwd_bf16;
    be->attention_bwd_bf16 = cuda_attention_bwd_bf16;
}
