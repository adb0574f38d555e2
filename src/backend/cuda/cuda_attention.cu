/* Causal attention with grouped-query heads in fp32, flash-attention style: scores are computed
 * tile by tile in registers and never stored; the forward keeps each row's log-sum-exp, from which
 * the backward recomputes the probabilities.
 *
 * Layouts are backend.h's: q/out/dq (B,T,Hq,hd), k/v/dk/dv (B,T,Hkv,hd), lse (B,Hq,T).
 * Kernels are built for head_dim classes 32, 64 and 128 (HD); a smaller head_dim runs in the
 * next class up with its tiles zero-padded, which adds nothing to any dot product.
 *
 * One thread owns one row (a query row in the forward and in the dq pass, a key row in the dk/dv
 * pass), so every output element has exactly one writer and a fixed summation order: no atomics,
 * bitwise reproducible. The operand that all threads of a block read at the same time (the other
 * side's tile) sits row-major in shared memory and is read as float4 broadcasts; the thread's own
 * row sits transposed, so lanes read consecutive words. The backward runs as two kernels (dk/dv
 * over key tiles, dq over query tiles), recomputing the scores in each rather than accumulating dq
 * with atomics. Wide heads (HD 128) split the dk/dv/dq accumulators into column chunks of 64
 * (grid dimension), recomputing the scores per chunk, to stay within the register file. */
#include <math.h>

#include "backend/cuda/cuda_internal.h"

#define ATT_THREADS 64 /* rows per block (query rows, or key rows in the dk/dv pass) */
#define FWD_BC 32      /* keys per tile in the forward and the dq pass */
#define DKV_BQ 16      /* query rows per tile in the dk/dv pass */

template <int HD>
struct att_dims {
    static constexpr int DC = HD < 64 ? HD : 64; /* accumulator columns per pass */
    static constexpr int NCH = HD / DC;
    static constexpr size_t fwd_smem = sizeof(float) * (HD * ATT_THREADS + 2 * FWD_BC * HD);
    static constexpr size_t dq_smem = sizeof(float) * (2 * HD * ATT_THREADS + 2 * FWD_BC * HD);
    static constexpr size_t dkv_smem = sizeof(float) * (2 * HD * ATT_THREADS + 2 * DKV_BQ * HD + 2 * DKV_BQ);
};

/* rows [r0, r0 + R) of one head (row stride `stride`, hd columns) into dst, transposed (HD x R)
 * or row-major (R x HD), zero-padded past T and past hd. */
template <int HD, int R, bool TRANSPOSED>
__device__ void load_tile(float *dst, const float *src, size_t stride, int r0, int T, int hd) {
    for (int idx = threadIdx.x; idx < R * HD; idx += blockDim.x) {
        const int r = idx / HD, d = idx % HD;
        const float val = (r0 + r < T && d < hd) ? src[(size_t)(r0 + r) * stride + d] : 0.0f;
        if (TRANSPOSED) dst[d * R + r] = val;
        else dst[idx] = val;
    }
}

template <int HD>
__global__ void __launch_bounds__(ATT_THREADS)
    att_fwd_k(float *out, float *lse, const float *q, const float *k, const float *v, int T, int Hq, int Hkv, int hd,
              float scale) {
    extern __shared__ float4 smem4[];
    float *qT = (float *)smem4;        /* (HD, ATT_THREADS) */
    float *ks = qT + HD * ATT_THREADS; /* (FWD_BC, HD) */
    float *vs = ks + FWD_BC * HD;
    const int tid = threadIdx.x, t0 = blockIdx.x * ATT_THREADS, h = blockIdx.y, b = blockIdx.z;
    const int g = h / (Hq / Hkv), t = t0 + tid;
    const size_t qstride = (size_t)Hq * hd, kvstride = (size_t)Hkv * hd;
    const float *qb = q + (size_t)b * T * qstride + (size_t)h * hd;
    const float *kb = k + (size_t)b * T * kvstride + (size_t)g * hd;
    const float *vb = v + (size_t)b * T * kvstride + (size_t)g * hd;
    load_tile<HD, ATT_THREADS, true>(qT, qb, qstride, t0, T, hd);
    float o[HD];
#pragma unroll
    for (int d = 0; d < HD; d++) o[d] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    const int kend = T < t0 + ATT_THREADS ? T : t0 + ATT_THREADS; /* keys any row of the block sees */
    for (int j0 = 0; j0 < kend; j0 += FWD_BC) {
        __syncthreads();
        load_tile<HD, FWD_BC, false>(ks, kb, kvstride, j0, T, hd);
        load_tile<HD, FWD_BC, false>(vs, vb, kvstride, j0, T, hd);
        __syncthreads();
        float s[FWD_BC];
#pragma unroll
        for (int j = 0; j < FWD_BC; j++) s[j] = 0.0f;
#pragma unroll 2
        for (int d = 0; d < HD; d += 4) {
            const float q0 = qT[d * ATT_THREADS + tid], q1 = qT[(d + 1) * ATT_THREADS + tid];
            const float q2 = qT[(d + 2) * ATT_THREADS + tid], q3 = qT[(d + 3) * ATT_THREADS + tid];
#pragma unroll
            for (int j = 0; j < FWD_BC; j++) {
                const float4 kk = *(const float4 *)&ks[j * HD + d];
                s[j] = fmaf(q3, kk.w, fmaf(q2, kk.z, fmaf(q1, kk.y, fmaf(q0, kk.x, s[j]))));
            }
        }
        float bm = -INFINITY;
#pragma unroll
        for (int j = 0; j < FWD_BC; j++) {
            s[j] *= scale;
            if (j0 + j > t || j0 + j >= T) s[j] = -INFINITY;
            bm = fmaxf(bm, s[j]);
        }
        if (bm > m) { /* online softmax: rescale what was summed under the old maximum */
            const float corr = expf(m - bm);
            l *= corr;
#pragma unroll
            for (int d = 0; d < HD; d++) o[d] *= corr;
            m = bm;
        }
        float psum = 0.0f;
#pragma unroll
        for (int j = 0; j < FWD_BC; j++) {
            s[j] = expf(s[j] - m);
            psum += s[j];
        }
        l += psum;
#pragma unroll
        for (int d = 0; d < HD; d += 4) {
#pragma unroll
            for (int j = 0; j < FWD_BC; j++) {
                const float4 vv = *(const float4 *)&vs[j * HD + d];
                o[d] = fmaf(s[j], vv.x, o[d]);
                o[d + 1] = fmaf(s[j], vv.y, o[d + 1]);
                o[d + 2] = fmaf(s[j], vv.z, o[d + 2]);
                o[d + 3] = fmaf(s[j], vv.w, o[d + 3]);
            }
        }
    }
    if (t >= T) return;
    const float inv = 1.0f / l;
    float *orow = out + ((size_t)b * T + t) * qstride + (size_t)h * hd;
#pragma unroll
    for (int d = 0; d < HD; d++)
        if (d < hd) orow[d] = o[d] * inv;
    lse[((size_t)b * Hq + h) * T + t] = m + logf(l);
}

/* dq for one tile of query rows (one column chunk): dq = scale * sum_j p_j (dp_j - D) k_j. */
template <int HD>
__global__ void __launch_bounds__(ATT_THREADS)
    att_dq_k(float *dq, const float *dout, const float *q, const float *k, const float *v, const float *out,
             const float *lse, int T, int Hq, int Hkv, int hd, float scale) {
    constexpr int DC = att_dims<HD>::DC, NCH = att_dims<HD>::NCH;
    extern __shared__ float4 smem4[];
    float *qT = (float *)smem4;         /* (HD, ATT_THREADS) */
    float *eT = qT + HD * ATT_THREADS;  /* dout, (HD, ATT_THREADS) */
    float *ks = eT + HD * ATT_THREADS;  /* (FWD_BC, HD) */
    float *vs = ks + FWD_BC * HD;
    const int tid = threadIdx.x, tile = blockIdx.x / NCH, c0 = (blockIdx.x % NCH) * DC;
    const int h = blockIdx.y, b = blockIdx.z, g = h / (Hq / Hkv);
    const int t0 = tile * ATT_THREADS, t = t0 + tid;
    const size_t qstride = (size_t)Hq * hd, kvstride = (size_t)Hkv * hd;
    const size_t qoff = (size_t)b * T * qstride + (size_t)h * hd;
    const float *kb = k + (size_t)b * T * kvstride + (size_t)g * hd;
    const float *vb = v + (size_t)b * T * kvstride + (size_t)g * hd;
    load_tile<HD, ATT_THREADS, true>(qT, q + qoff, qstride, t0, T, hd);
    load_tile<HD, ATT_THREADS, true>(eT, dout + qoff, qstride, t0, T, hd);
    float D = 0.0f, L = 0.0f;
    if (t < T) {
        const float *er = dout + qoff + (size_t)t * qstride, *orow = out + qoff + (size_t)t * qstride;
        for (int d = 0; d < hd; d++) D = fmaf(er[d], orow[d], D);
        L = lse[((size_t)b * Hq + h) * T + t];
    }
    float acc[DC];
#pragma unroll
    for (int d = 0; d < DC; d++) acc[d] = 0.0f;
    const int kend = T < t0 + ATT_THREADS ? T : t0 + ATT_THREADS;
    for (int j0 = 0; j0 < kend; j0 += FWD_BC) {
        __syncthreads();
        load_tile<HD, FWD_BC, false>(ks, kb, kvstride, j0, T, hd);
        load_tile<HD, FWD_BC, false>(vs, vb, kvstride, j0, T, hd);
        __syncthreads();
        float s[FWD_BC], dp[FWD_BC];
#pragma unroll
        for (int j = 0; j < FWD_BC; j++) s[j] = dp[j] = 0.0f;
#pragma unroll 2
        for (int d = 0; d < HD; d += 4) {
            const float q0 = qT[d * ATT_THREADS + tid], q1 = qT[(d + 1) * ATT_THREADS + tid];
            const float q2 = qT[(d + 2) * ATT_THREADS + tid], q3 = qT[(d + 3) * ATT_THREADS + tid];
            const float e0 = eT[d * ATT_THREADS + tid], e1 = eT[(d + 1) * ATT_THREADS + tid];
            const float e2 = eT[(d + 2) * ATT_THREADS + tid], e3 = eT[(d + 3) * ATT_THREADS + tid];
#pragma unroll
            for (int j = 0; j < FWD_BC; j++) {
                const float4 kk = *(const float4 *)&ks[j * HD + d];
                const float4 vv = *(const float4 *)&vs[j * HD + d];
                s[j] = fmaf(q3, kk.w, fmaf(q2, kk.z, fmaf(q1, kk.y, fmaf(q0, kk.x, s[j]))));
                dp[j] = fmaf(e3, vv.w, fmaf(e2, vv.z, fmaf(e1, vv.y, fmaf(e0, vv.x, dp[j]))));
            }
        }
#pragma unroll
        for (int j = 0; j < FWD_BC; j++) {
            const bool live = j0 + j <= t && j0 + j < T && t < T;
            const float p = live ? expf(scale * s[j] - L) : 0.0f;
            s[j] = live ? scale * p * (dp[j] - D) : 0.0f; /* ds */
        }
#pragma unroll
        for (int d = 0; d < DC; d += 4) {
#pragma unroll
            for (int j = 0; j < FWD_BC; j++) {
                const float4 kk = *(const float4 *)&ks[j * HD + c0 + d];
                acc[d] = fmaf(s[j], kk.x, acc[d]);
                acc[d + 1] = fmaf(s[j], kk.y, acc[d + 1]);
                acc[d + 2] = fmaf(s[j], kk.z, acc[d + 2]);
                acc[d + 3] = fmaf(s[j], kk.w, acc[d + 3]);
            }
        }
    }
    if (t >= T) return;
    float *row = dq + qoff + (size_t)t * qstride;
#pragma unroll
    for (int d = 0; d < DC; d++)
        if (c0 + d < hd) row[c0 + d] = acc[d];
}

/* dk, dv for one tile of key rows (one column chunk), summed over every query row that sees them
 * in every q head of the group: dv = sum p e, dk = sum ds q. */
template <int HD>
__global__ void __launch_bounds__(ATT_THREADS)
    att_dkv_k(float *dk, float *dv, const float *dout, const float *q, const float *k, const float *v,
              const float *out, const float *lse, int T, int Hq, int Hkv, int hd, float scale) {
    constexpr int DC = att_dims<HD>::DC, NCH = att_dims<HD>::NCH;
    extern __shared__ float4 smem4[];
    float *kT = (float *)smem4;         /* (HD, ATT_THREADS) */
    float *vT = kT + HD * ATT_THREADS;
    float *qs = vT + HD * ATT_THREADS;  /* (DKV_BQ, HD) */
    float *es = qs + DKV_BQ * HD;       /* dout rows */
    float *Ls = es + DKV_BQ * HD;       /* (DKV_BQ) */
    float *Ds = Ls + DKV_BQ;
    const int tid = threadIdx.x, tile = blockIdx.x / NCH, c0 = (blockIdx.x % NCH) * DC;
    const int g = blockIdx.y, b = blockIdx.z, group = Hq / Hkv;
    const int k0 = tile * ATT_THREADS, j = k0 + tid;
    const size_t qstride = (size_t)Hq * hd, kvstride = (size_t)Hkv * hd;
    const size_t kvoff = (size_t)b * T * kvstride + (size_t)g * hd;
    load_tile<HD, ATT_THREADS, true>(kT, k + kvoff, kvstride, k0, T, hd);
    load_tile<HD, ATT_THREADS, true>(vT, v + kvoff, kvstride, k0, T, hd);
    float ak[DC], av[DC];
#pragma unroll
    for (int d = 0; d < DC; d++) ak[d] = av[d] = 0.0f;
    for (int h = g * group; h < (g + 1) * group; h++) {
        const size_t qoff = (size_t)b * T * qstride + (size_t)h * hd;
        for (int i0 = (k0 / DKV_BQ) * DKV_BQ; i0 < T; i0 += DKV_BQ) {
            __syncthreads();
            load_tile<HD, DKV_BQ, false>(qs, q + qoff, qstride, i0, T, hd);
            load_tile<HD, DKV_BQ, false>(es, dout + qoff, qstride, i0, T, hd);
            /* D = dout . out per query row, a warp per row (lanes over columns, then a fixed
             * shuffle tree): one thread per row looping over hd serialised every tile. */
            for (int r = tid >> 5; r < DKV_BQ; r += ATT_THREADS / 32) {
                const int lane = tid & 31;
                float D = 0.0f;
                if (i0 + r < T) {
                    const float *er = dout + qoff + (size_t)(i0 + r) * qstride;
                    const float *orow = out + qoff + (size_t)(i0 + r) * qstride;
                    for (int d = lane; d < hd; d += 32) D = fmaf(er[d], orow[d], D);
                }
                for (int o = 16; o > 0; o >>= 1) D += __shfl_xor_sync(0xffffffffu, D, o);
                if (lane == 0) {
                    Ds[r] = D;
                    Ls[r] = i0 + r < T ? lse[((size_t)b * Hq + h) * T + i0 + r] : 0.0f;
                }
            }
            __syncthreads();
            float s[DKV_BQ], dp[DKV_BQ];
#pragma unroll
            for (int i = 0; i < DKV_BQ; i++) s[i] = dp[i] = 0.0f;
#pragma unroll 2
            for (int d = 0; d < HD; d += 4) {
                const float k0v = kT[d * ATT_THREADS + tid], k1v = kT[(d + 1) * ATT_THREADS + tid];
                const float k2v = kT[(d + 2) * ATT_THREADS + tid], k3v = kT[(d + 3) * ATT_THREADS + tid];
                const float v0 = vT[d * ATT_THREADS + tid], v1 = vT[(d + 1) * ATT_THREADS + tid];
                const float v2 = vT[(d + 2) * ATT_THREADS + tid], v3 = vT[(d + 3) * ATT_THREADS + tid];
#pragma unroll
                for (int i = 0; i < DKV_BQ; i++) {
                    const float4 qq = *(const float4 *)&qs[i * HD + d];
                    const float4 ee = *(const float4 *)&es[i * HD + d];
                    s[i] = fmaf(qq.w, k3v, fmaf(qq.z, k2v, fmaf(qq.y, k1v, fmaf(qq.x, k0v, s[i]))));
                    dp[i] = fmaf(ee.w, v3, fmaf(ee.z, v2, fmaf(ee.y, v1, fmaf(ee.x, v0, dp[i]))));
                }
            }
#pragma unroll
            for (int i = 0; i < DKV_BQ; i++) {
                const bool live = i0 + i >= j && i0 + i < T && j < T;
                const float p = live ? expf(scale * s[i] - Ls[i]) : 0.0f;
                dp[i] = live ? scale * p * (dp[i] - Ds[i]) : 0.0f; /* ds */
                s[i] = p;
            }
#pragma unroll
            for (int d = 0; d < DC; d += 4) {
#pragma unroll
                for (int i = 0; i < DKV_BQ; i++) {
                    const float4 ee = *(const float4 *)&es[i * HD + c0 + d];
                    const float4 qq = *(const float4 *)&qs[i * HD + c0 + d];
                    av[d] = fmaf(s[i], ee.x, av[d]);
                    av[d + 1] = fmaf(s[i], ee.y, av[d + 1]);
                    av[d + 2] = fmaf(s[i], ee.z, av[d + 2]);
                    av[d + 3] = fmaf(s[i], ee.w, av[d + 3]);
                    ak[d] = fmaf(dp[i], qq.x, ak[d]);
                    ak[d + 1] = fmaf(dp[i], qq.y, ak[d + 1]);
                    ak[d + 2] = fmaf(dp[i], qq.z, ak[d + 2]);
                    ak[d + 3] = fmaf(dp[i], qq.w, ak[d + 3]);
                }
            }
        }
    }
    if (j >= T) return;
    float *krow = dk + kvoff + (size_t)j * kvstride, *vrow = dv + kvoff + (size_t)j * kvstride;
#pragma unroll
    for (int d = 0; d < DC; d++)
        if (c0 + d < hd) {
            krow[c0 + d] = ak[d];
            vrow[c0 + d] = av[d];
        }
}

template <int HD>
static int init_class(oz_cuda *c) {
    return OZ_CUDA_CHECK(c, cudaFuncSetAttribute(att_fwd_k<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 (int)att_dims<HD>::fwd_smem)) &&
           OZ_CUDA_CHECK(c, cudaFuncSetAttribute(att_dq_k<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 (int)att_dims<HD>::dq_smem)) &&
           OZ_CUDA_CHECK(c, cudaFuncSetAttribute(att_dkv_k<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 (int)att_dims<HD>::dkv_smem));
}

int oz_cuda_attention_init(oz_cuda *c) { return init_class<32>(c) && init_class<64>(c) && init_class<128>(c); }

/* The head_dim class, or 0 (with the failure recorded) when the shape is not supported. */
static int head_class(oz_cuda *c, int T, int Hq, int Hkv, int hd) {
    if (hd <= 0 || Hkv <= 0 || Hq % Hkv != 0 || T <= 0) {
        oz_cuda_fail(c, __FILE__, __LINE__, "attention: bad shape (T %d, heads %d/%d, head_dim %d)", T, Hq, Hkv, hd);
        return 0;
    }
    if (hd > 128) {
        oz_cuda_fail(c, __FILE__, __LINE__, "attention: head_dim %d > 128 is not supported on CUDA yet", hd);
        return 0;
    }
    return hd <= 32 ? 32 : hd <= 64 ? 64 : 128;
}

template <int HD>
static void fwd(oz_cuda *c, float *out, float *lse, const float *q, const float *k, const float *v, int B, int T,
                int Hq, int Hkv, int hd) {
    dim3 grid((T + ATT_THREADS - 1) / ATT_THREADS, Hq, B);
    att_fwd_k<HD><<<grid, ATT_THREADS, att_dims<HD>::fwd_smem, c->stream>>>(out, lse, q, k, v, T, Hq, Hkv, hd,
                                                                          (float)(1.0 / sqrt((double)hd)));
    OZ_CUDA_LAUNCHED(c);
}

template <int HD>
static void bwd(oz_cuda *c, float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                const float *v, const float *out, const float *lse, int B, int T, int Hq, int Hkv, int hd) {
    const float scale = (float)(1.0 / sqrt((double)hd));
    const int tiles = (T + ATT_THREADS - 1) / ATT_THREADS;
    att_dkv_k<HD><<<dim3(tiles * att_dims<HD>::NCH, Hkv, B), ATT_THREADS, att_dims<HD>::dkv_smem, c->stream>>>(
        dk, dv, dout, q, k, v, out, lse, T, Hq, Hkv, hd, scale);
    OZ_CUDA_LAUNCHED(c);
    att_dq_k<HD><<<dim3(tiles * att_dims<HD>::NCH, Hq, B), ATT_THREADS, att_dims<HD>::dq_smem, c->stream>>>(
        dq, dout, q, k, v, out, lse, T, Hq, Hkv, hd, scale);
    OZ_CUDA_LAUNCHED(c);
}

void oz_cuda_attention_fwd(oz_cuda *c, float *out, float *lse, const float *q, const float *k, const float *v, int B,
                           int T, int Hq, int Hkv, int hd) {
    if (B <= 0) return;
    switch (head_class(c, T, Hq, Hkv, hd)) {
    case 32: fwd<32>(c, out, lse, q, k, v, B, T, Hq, Hkv, hd); break;
    case 64: fwd<64>(c, out, lse, q, k, v, B, T, Hq, Hkv, hd); break;
    case 128: fwd<128>(c, out, lse, q, k, v, B, T, Hq, Hkv, hd); break;
    default: break;
    }
}

void oz_cuda_attention_bwd(oz_cuda *c, float *dq, float *dk, float *dv, const float *dout, const float *q,
                           const float *k, const float *v, const float *out, const float *lse, int B, int T, int Hq,
                           int Hkv, int hd) {
    if (B <= 0) return;
    switch (head_class(c, T, Hq, Hkv, hd)) {
    case 32: bwd<32>(c, dq, dk, dv, dout, q, k, v, out, lse, B, T, Hq, Hkv, hd); break;
    case 64: bwd<64>(c, dq, dk, dv, dout, q, k, v, out, lse, B, T, Hq, Hkv, hd); break;
    case 128: bwd<128>(c, dq, dk, dv, dout, q, k, v, out, lse, B, T, Hq, Hkv, hd); break;
    default: break;
    }
}

/* ---- decoding: one query row per (sequence, head) against the cache, one block each. Three passes
 * over the scores row in `scores` (global scratch, so any cache length fits): the scaled dots and
 * their maximum, the exponentials and their sum, then each output column's weighted sum over the
 * keys in order. Block sums are block_sum's fixed order: deterministic, no atomics. */
#define DEC_THREADS 128

static __device__ __forceinline__ float block_max(float v, float *sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    float t = -INFINITY;
    for (int w = 0; w < nw; w++) t = fmaxf(t, sh[w]);
    return t;
}

__global__ void att_decode_k(float *out, const float *q, const float *k, const float *v, const int32_t *lens,
                             float *scores, int cap, int Hq, int Hkv, int hd, float scale) {
    __shared__ float sh[32];
    extern __shared__ float qs[]; /* (hd) */
    const int h = blockIdx.x, b = blockIdx.y, g = h / (Hq / Hkv), n = lens[b];
    const size_t kvstride = (size_t)Hkv * hd;
    const float *kb = k + (size_t)b * cap * kvstride + (size_t)g * hd;
    const float *vb = v + (size_t)b * cap * kvstride + (size_t)g * hd;
    float *s = scores + ((size_t)b * Hq + h) * cap;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) qs[i] = q[((size_t)b * Hq + h) * hd + i];
    __syncthreads();
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float *kr = kb + (size_t)j * kvstride;
        float dot = 0.0f;
        for (int i = 0; i < hd; i++) dot += qs[i] * kr[i];
        s[j] = dot * scale;
        mx = fmaxf(mx, s[j]);
    }
    mx = block_max(mx, sh);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float p = expf(s[j] - mx);
        s[j] = p;
        sum += p;
    }
    sum = block_sum(sum, sh); /* its barriers also make every s[j] visible to the block */
    const float inv = 1.0f / sum;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < n; j++) acc += s[j] * vb[(size_t)j * kvstride + i];
        out[((size_t)b * Hq + h) * hd + i] = acc * inv;
    }
}

void oz_cuda_attention_decode(oz_cuda *c, float *out, const float *q, const float *k, const float *v,
                              const int32_t *lens, float *scores, int B, int cap, int Hq, int Hkv, int hd) {
    if (B <= 0) return;
    att_decode_k<<<dim3(Hq, B), DEC_THREADS, sizeof(float) * hd, c->stream>>>(
        out, q, k, v, lens, scores, cap, Hq, Hkv, hd, (float)(1.0 / sqrt((double)hd)));
    OZ_CUDA_LAUNCHED(c);
}
