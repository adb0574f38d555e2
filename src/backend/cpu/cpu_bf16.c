/* The bf16 ops of backend.h on the CPU: the reference the GPU is tested against. Each op is the
 * fp32 op of cpu_ops.inc, statement for statement, on inputs widened as they are loaded, with each
 * bf16 output rounded (oz_f32_to_bf16) as it is stored. So every op but gemm_bf16 equals
 * to_bf16(fp32 op(widened inputs)); tests/test_ops.c checks that. The file is compiled -std=c11, so
 * gcc does not contract a*b - c*d into an FMA. That is what lets a GPU kernel using
 * __fmul_rn/__fsub_rn reproduce these results bit for bit. */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "backend/cpu/cpu_bf16.h"
#include "numeric/half.h"

/* For oz_cpu_expf, OZ_PAR_MIN and OZ_COL_BLOCK: the very exp the fp32 swiglu uses. */
#define OZ_REAL float
#define OZ_SFX(name) name##_bf16ref
#define OZ_GEMM cblas_sgemm
#include "backend/cpu/cpu_ops.inc"
#undef OZ_REAL
#undef OZ_SFX
#undef OZ_GEMM

static inline float wid(uint16_t h) { return oz_bf16_to_f32(h); }
static inline uint16_t rnd(float f) { return oz_f32_to_bf16(f); }

/* ---- gemm ----
 * C is computed in tiles of GT_M x GT_N. Each tile's fp32 sum runs over K in GT_K-deep slices,
 * widened into stack buffers and multiplied by sgemm. So the widened copies are bounded: an op
 * cannot fail on memory, and it never mallocs. Tiles are independent, one thread each (OpenBLAS
 * runs single-threaded inside the parallel region). The tiling depends only on the shape, so the
 * result does not depend on the thread count. The bf16 rounding happens once per element, after
 * the whole K sum and the beta term. */
#define GT_M 64
#define GT_N 64
#define GT_K 128

static void cpu_gemm_bf16(oz_backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha,
                          const uint16_t *A, int lda, const uint16_t *B, int ldb, float beta, void *C, int ldc,
                          int c_bf16) {
    (void)be;
    if (M <= 0 || N <= 0) return;
    const int mt = (M + GT_M - 1) / GT_M, nt = (N + GT_N - 1) / GT_N;
    const long tiles = (long)mt * nt;
    uint16_t *C16 = c_bf16 ? (uint16_t *)C : NULL;
    float *C32 = c_bf16 ? NULL : (float *)C;
#pragma omp parallel for schedule(static) if (tiles > 1 && (double)M * N * (K > 0 ? K : 1) > 1e6)
    for (long tile = 0; tile < tiles; tile++) {
        const int i0 = (int)(tile / nt) * GT_M, j0 = (int)(tile % nt) * GT_N;
        const int mb = M - i0 < GT_M ? M - i0 : GT_M, nb = N - j0 < GT_N ? N - j0 : GT_N;
        float acc[GT_M * GT_N], a[GT_M * GT_K], b[GT_K * GT_N];
        for (int e = 0; e < mb * GT_N; e++) acc[e] = 0.0f;
        for (int k0 = 0; k0 < K; k0 += GT_K) {
            const int kb = K - k0 < GT_K ? K - k0 : GT_K;
            /* a (mb, kb) = op(A)[i0.., k0..], b (kb, nb) = op(B)[k0.., j0..], row-major. */
            for (int i = 0; i < mb; i++)
                for (int p = 0; p < kb; p++)
                    a[i * GT_K + p] = wid(trans_a ? A[(size_t)(k0 + p) * lda + i0 + i] : A[(size_t)(i0 + i) * lda + k0 + p]);
            for (int p = 0; p < kb; p++)
                for (int j = 0; j < nb; j++)
                    b[p * GT_N + j] = wid(trans_b ? B[(size_t)(j0 + j) * ldb + k0 + p] : B[(size_t)(k0 + p) * ldb + j0 + j]);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, mb, nb, kb, 1.0f, a, GT_K, b, GT_N, 1.0f, acc,
                        GT_N);
        }
        for (int i = 0; i < mb; i++)
            for (int j = 0; j < nb; j++) {
                const size_t at = (size_t)(i0 + i) * ldc + j0 + j;
                float t = alpha * acc[i * GT_N + j];
                /* beta == 0 must not read C: it may hold NaN (BLAS convention). */
                if (beta != 0.0f) t += beta * (c_bf16 ? wid(C16[at]) : C32[at]);
                if (c_bf16) C16[at] = rnd(t);
                else C32[at] = t;
            }
    }
}

/* ---- model ops: oz_cpu_*_f32 with widening loads and rounding stores ---- */

static void cpu_rmsnorm_fwd_bf16(oz_backend *be, uint16_t *out, float *rstd, const uint16_t *x, const uint16_t *w,
                                 int N, int d, float eps) {
    (void)be;
#pragma omp parallel for schedule(static) if ((size_t)N * d > OZ_PAR_MIN)
    for (int i = 0; i < N; i++) {
        const uint16_t *xr = x + (size_t)i * d;
        uint16_t *yr = out + (size_t)i * d;
        double ss = 0;
#pragma omp simd reduction(+ : ss)
        for (int j = 0; j < d; j++) ss += (double)wid(xr[j]) * (double)wid(xr[j]);
        const float r = (float)(1.0 / sqrt(ss / d + (double)eps));
        rstd[i] = r;
        for (int j = 0; j < d; j++) yr[j] = rnd(wid(xr[j]) * r * wid(w[j]));
    }
}

static void cpu_rmsnorm_bwd_bf16(oz_backend *be, uint16_t *dx, float *dw, const uint16_t *dout, const uint16_t *x,
                                 const uint16_t *w, const float *rstd, int N, int d, int accumulate_dx) {
    (void)be;
#pragma omp parallel for schedule(static) if ((size_t)N * d > OZ_PAR_MIN)
    for (int i = 0; i < N; i++) {
        const uint16_t *xr = x + (size_t)i * d, *gr = dout + (size_t)i * d;
        uint16_t *dxr = dx + (size_t)i * d;
        const float r = rstd[i];
        double c = 0;
#pragma omp simd reduction(+ : c)
        for (int j = 0; j < d; j++) c += (double)wid(gr[j]) * (double)wid(w[j]) * (double)wid(xr[j]);
        const float coef = (float)(c * (double)r * (double)r * (double)r / d);
        for (int j = 0; j < d; j++) {
            const float v = r * wid(w[j]) * wid(gr[j]) - coef * wid(xr[j]);
            dxr[j] = rnd(accumulate_dx ? wid(dxr[j]) + v : v);
        }
    }
    const int nblocks = (d + OZ_COL_BLOCK - 1) / OZ_COL_BLOCK;
#pragma omp parallel for schedule(static) if ((size_t)N * d > OZ_PAR_MIN)
    for (int cb = 0; cb < nblocks; cb++) {
        const int j0 = cb * OZ_COL_BLOCK, nj = j0 + OZ_COL_BLOCK < d ? OZ_COL_BLOCK : d - j0;
        double acc[OZ_COL_BLOCK] = {0};
        for (int i = 0; i < N; i++) {
            const uint16_t *xr = x + (size_t)i * d + j0, *gr = dout + (size_t)i * d + j0;
            const double r = rstd[i];
            for (int j = 0; j < nj; j++) acc[j] += (double)wid(gr[j]) * (double)wid(xr[j]) * r;
        }
        for (int j = 0; j < nj; j++) dw[j0 + j] += (float)acc[j];
    }
}

static void cpu_rope_bf16(oz_backend *be, uint16_t *x, const float *cos_table, const float *sin_table, int B, int T,
                          int H, int hd, int pos0, int inverse) {
    (void)be;
    const int half = hd / 2;
    const long rows = (long)B * T;
#pragma omp parallel for schedule(static) if ((size_t)rows * H * hd > OZ_PAR_MIN)
    for (long r = 0; r < rows; r++) {
        const int t = (int)(r % T);
        const float *c = cos_table + (size_t)(pos0 + t) * half;
        const float *s = sin_table + (size_t)(pos0 + t) * half;
        const float sg = inverse ? -1.0f : 1.0f;
        for (int h = 0; h < H; h++) {
            uint16_t *xr = x + ((size_t)r * H + h) * hd;
            for (int i = 0; i < half; i++) {
                const float x1 = wid(xr[i]), x2 = wid(xr[i + half]), sn = sg * s[i];
                xr[i] = rnd(x1 * c[i] - x2 * sn);
                xr[i + half] = rnd(x2 * c[i] + x1 * sn);
            }
        }
    }
}

static void cpu_swiglu_fwd_bf16(oz_backend *be, uint16_t *h, const uint16_t *gate, const uint16_t *up, size_t n) {
    (void)be;
#pragma omp parallel for schedule(static) if (n > OZ_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        const float g = wid(gate[i]);
        h[i] = rnd(g / (1 + oz_cpu_expf(-g)) * wid(up[i]));
    }
}

static void cpu_swiglu_bwd_bf16(oz_backend *be, uint16_t *dgate, uint16_t *dup, const uint16_t *dh,
                                const uint16_t *gate, const uint16_t *up, size_t n) {
    (void)be;
    /* dgate/dup may alias gate/up: all three inputs are loaded before either store. */
#pragma omp parallel for schedule(static) if (n > OZ_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        const float g = wid(gate[i]), u = wid(up[i]), d = wid(dh[i]);
        const float sg = 1 / (1 + oz_cpu_expf(-g));
        dgate[i] = rnd(d * u * sg * (1 + g * (1 - sg)));
        dup[i] = rnd(d * g * sg);
    }
}

static void cpu_embedding_fwd_bf16out(oz_backend *be, uint16_t *out, const uint16_t *table, const int32_t *ids,
                                      int N, int d) {
    (void)be;
#pragma omp parallel for schedule(static) if ((size_t)N * d > OZ_PAR_MIN)
    for (int i = 0; i < N; i++) memcpy(out + (size_t)i * d, table + (size_t)ids[i] * d, (size_t)d * sizeof *out);
}

static void cpu_add_bf16(oz_backend *be, uint16_t *out, const uint16_t *a, const uint16_t *b, size_t n) {
    (void)be;
#pragma omp parallel for schedule(static) if (n > OZ_PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = rnd(wid(a[i]) + wid(b[i]));
}

/* ---- attention: the fp32 op on one batch element at a time, widened into the workspace ----
 * Batch elements are independent in the fp32 op (its tasks are per batch, head and row block), so
 * a slice of one gives the full call's values; the workspace is then one element's fp32 copies. */

static void widen_n(float *dst, const uint16_t *src, size_t n) {
#pragma omp parallel for schedule(static) if (n > OZ_PAR_MIN)
    for (size_t i = 0; i < n; i++) dst[i] = wid(src[i]);
}

static void round_n(uint16_t *dst, const float *src, size_t n) {
#pragma omp parallel for schedule(static) if (n > OZ_PAR_MIN)
    for (size_t i = 0; i < n; i++) dst[i] = rnd(src[i]);
}

static void nan_n(uint16_t *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = 0x7fc0; /* a quiet NaN */
}

static int att_shape_ok(int B, int T, int Hq, int Hkv, int hd) {
    return B > 0 && T > 0 && Hq > 0 && Hkv > 0 && hd > 0 && Hq % Hkv == 0;
}

static oz_status cpu_attention_bf16_plan(oz_backend *be, int B, int T, int Hq, int Hkv, int hd, size_t *workspace,
                                         oz_err *err) {
    (void)be;
    *workspace = 0;
    if (!att_shape_ok(B, T, Hq, Hkv, hd))
        return oz_fail(err, OZ_ERR_INPUT, "attention_bf16: bad shape (B %d, T %d, heads %d/%d, head_dim %d)", B, T, Hq,
                       Hkv, hd);
    *workspace = oz_attention_bf16_device_workspace_bytes(0, B, T, Hq, Hkv, hd);
    return OZ_OK;
}

static void cpu_attention_fwd_bf16(oz_backend *be, uint16_t *out, float *lse, const uint16_t *q, const uint16_t *k,
                                   const uint16_t *v, int B, int T, int Hq, int Hkv, int hd, void *workspace,
                                   size_t workspace_bytes) {
    (void)be;
    const size_t nq = (size_t)T * Hq * hd, nk = (size_t)T * Hkv * hd, nl = (size_t)Hq * T;
    if (!att_shape_ok(B, T, Hq, Hkv, hd)) return;
    if (!workspace || workspace_bytes < oz_attention_bf16_device_workspace_bytes(0, B, T, Hq, Hkv, hd)) {
        nan_n(out, (size_t)B * nq); /* a contract violation must not pass for a result */
        for (size_t i = 0; i < (size_t)B * nl; i++) lse[i] = NAN;
        return;
    }
    float *qf = workspace, *kf = qf + nq, *vf = kf + nk, *of = vf + nk;
    for (int b = 0; b < B; b++) {
        widen_n(qf, q + b * nq, nq);
        widen_n(kf, k + b * nk, nk);
        widen_n(vf, v + b * nk, nk);
        oz_cpu_attention_fwd_bf16ref(of, lse + b * nl, qf, kf, vf, 1, T, Hq, Hkv, hd);
        round_n(out + b * nq, of, nq);
    }
}

static void cpu_attention_bwd_bf16(oz_backend *be, uint16_t *dq, uint16_t *dk, uint16_t *dv, const uint16_t *dout,
                                   const uint16_t *q, const uint16_t *k, const uint16_t *v, const uint16_t *out,
                                   const float *lse, int B, int T, int Hq, int Hkv, int hd, void *workspace,
                                   size_t workspace_bytes) {
    (void)be;
    const size_t nq = (size_t)T * Hq * hd, nk = (size_t)T * Hkv * hd, nl = (size_t)Hq * T;
    if (!att_shape_ok(B, T, Hq, Hkv, hd)) return;
    if (!workspace || workspace_bytes < oz_attention_bf16_device_workspace_bytes(0, B, T, Hq, Hkv, hd)) {
        nan_n(dq, (size_t)B * nq);
        nan_n(dk, (size_t)B * nk);
        nan_n(dv, (size_t)B * nk);
        return;
    }
    float *qf = workspace, *kf = qf + nq, *vf = kf + nk, *of = vf + nk, *dof = of + nq, *dqf = dof + nq;
    float *dkf = dqf + nq, *dvf = dkf + nk;
    for (int b = 0; b < B; b++) {
        widen_n(qf, q + b * nq, nq);
        widen_n(kf, k + b * nk, nk);
        widen_n(vf, v + b * nk, nk);
        widen_n(of, out + b * nq, nq);
        widen_n(dof, dout + b * nq, nq);
        oz_cpu_attention_bwd_bf16ref(dqf, dkf, dvf, dof, qf, kf, vf, of, lse + b * nl, 1, T, Hq, Hkv, hd);
        round_n(dq + b * nq, dqf, nq);
        round_n(dk + b * nk, dkf, nk);
        round_n(dv + b * nk, dvf, nk);
    }
}

void oz_cpu_bf16_ops(oz_backend *be) {
    be->gemm_bf16 = cpu_gemm_bf16;
    be->rmsnorm_fwd_bf16 = cpu_rmsnorm_fwd_bf16;
    be->rmsnorm_bwd_bf16 = cpu_rmsnorm_bwd_bf16;
    be->rope_bf16 = cpu_rope_bf16;
    be->swiglu_fwd_bf16 = cpu_swiglu_fwd_bf16;
    be->swiglu_bwd_bf16 = cpu_swiglu_bwd_bf16;
    be->embedding_fwd_bf16out = cpu_embedding_fwd_bf16out;
    be->add_bf16 = cpu_add_bf16;
    be->attention_bf16_plan = cpu_attention_bf16_plan;
    be->attention_fwd_bf16 = cpu_attention_fwd_bf16;
    be->attention_bwd_bf16 = cpu_attention_bwd_bf16;
}
