/* The fp32 reference backend: the generic ops of cpu_ops.inc instantiated for float, behind the
 * oz_backend op table. Memory is ordinary host memory, so the transfer hooks are memcpy. */
#include <omp.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/cpu/cpu_bf16.h"
#include "numeric/half.h"
#include "numeric/quant.h"
#include "numeric/subspace.h"

#define OZ_REAL float
#define OZ_SFX(name) name##_f32
#define OZ_GEMM cblas_sgemm
#include "backend/cpu/cpu_ops.inc"
#undef OZ_REAL
#undef OZ_SFX
#undef OZ_GEMM

/* Weak, so the library still links against a BLAS that is not OpenBLAS (the call is then skipped
 * and that BLAS keeps its own thread setting). */
extern void openblas_set_num_threads(int) __attribute__((weak));

static void cpu_memcpy(oz_backend *be, void *dst, const void *src, size_t bytes) {
    /* memmove: a device-to-device copy within one buffer may overlap. */
    (void)be;
    if (bytes) memmove(dst, src, bytes);
}

static void cpu_fill(oz_backend *be, float *x, float value, size_t n) {
    (void)be;
    oz_cpu_fill_f32(x, value, n);
}

static void cpu_to_bf16(oz_backend *be, uint16_t *dst, const float *src, size_t n) {
    (void)be;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) dst[i] = oz_f32_to_bf16(src[i]);
}

static void cpu_to_bf16_2d(oz_backend *be, uint16_t *dst, size_t ldd, const float *src, size_t lds, size_t rows,
                           size_t cols) {
    (void)be;
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++) dst[r * ldd + c] = oz_f32_to_bf16(src[r * lds + c]);
}

static void cpu_from_bf16_2d(oz_backend *be, float *dst, size_t ldd, const uint16_t *src, size_t lds, size_t rows,
                             size_t cols) {
    (void)be;
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++) dst[r * ldd + c] = oz_bf16_to_f32(src[r * lds + c]);
}

static void cpu_add_2d(oz_backend *be, float *dst, size_t ldd, const float *src, size_t lds, size_t rows,
                       size_t cols) {
    (void)be;
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++) dst[r * ldd + c] += src[r * lds + c];
}

static void cpu_from_bf16(oz_backend *be, float *dst, const uint16_t *src, size_t n) {
    (void)be;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) dst[i] = oz_bf16_to_f32(src[i]);
}

static void cpu_gemm(oz_backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha,
                     const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    (void)be;
    if (M == 1 && N > 0 && K > 0) {
        /* One row (decoding a token): a matrix-vector product. OpenBLAS's sgemm packs all of B for
         * one row, which reads the weights twice; sgemv streams them once. The row of A is strided
         * when A is stored transposed. beta == 0 must overwrite C even where it holds NaN, which
         * sgemv's scaling by 0 need not do: C is zeroed and then accumulated into. */
        if (beta == 0.0f) {
            for (int j = 0; j < N; j++) C[j] = 0.0f;
            beta = 1.0f;
        }
        int inc_a = trans_a ? lda : 1;
        if (trans_b) /* B stored (N, K): C = B a */
            cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, alpha, B, ldb, A, inc_a, beta, C, 1);
        else /* B stored (K, N): C = B^T a */
            cblas_sgemv(CblasRowMajor, CblasTrans, K, N, alpha, B, ldb, A, inc_a, beta, C, 1);
        return;
    }
    oz_cpu_gemm_f32(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

static void cpu_axpy(oz_backend *be, float *y, float alpha, const float *x, size_t n) {
    (void)be;
    oz_cpu_axpy_f32(y, alpha, x, n);
}

static void cpu_scale(oz_backend *be, float *x, float alpha, size_t n) {
    (void)be;
    oz_cpu_scale_f32(x, alpha, n);
}

static double cpu_sumsq(oz_backend *be, const float *x, size_t n) {
    (void)be;
    return oz_cpu_sumsq_f32(x, n);
}

static void cpu_embedding_fwd(oz_backend *be, float *out, const float *table, const int32_t *ids, int N,
                              int d) {
    (void)be;
    oz_cpu_embedding_fwd_f32(out, table, ids, N, d);
}

static void cpu_embedding_bwd(oz_backend *be, float *dtable, const float *dout, const int32_t *ids,
                              int N, int d, int V) {
    (void)be;
    oz_cpu_embedding_bwd_f32(dtable, dout, ids, N, d, V);
}

static void cpu_rmsnorm_fwd(oz_backend *be, float *out, float *rstd, const float *x, const float *w,
                            int N, int d, float eps) {
    (void)be;
    oz_cpu_rmsnorm_fwd_f32(out, rstd, x, w, N, d, eps);
}

static void cpu_rmsnorm_bwd(oz_backend *be, float *dx, float *dw, const float *dout, const float *x,
                            const float *w, const float *rstd, int N, int d) {
    (void)be;
    oz_cpu_rmsnorm_bwd_f32(dx, dw, dout, x, w, rstd, N, d);
}

static void cpu_rope(oz_backend *be, float *x, const float *cos_table, const float *sin_table, int B,
                     int T, int H, int hd, int pos0, int inverse) {
    (void)be;
    oz_cpu_rope_f32(x, cos_table, sin_table, B, T, H, hd, pos0, inverse);
}

static void cpu_attention_fwd(oz_backend *be, float *out, float *lse, const float *q, const float *k,
                              const float *v, int B, int T, int Hq, int Hkv, int hd) {
    (void)be;
    oz_cpu_attention_fwd_f32(out, lse, q, k, v, B, T, Hq, Hkv, hd);
}

static void cpu_attention_decode(oz_backend *be, float *out, const float *q, const float *k, const float *v,
                                 const int32_t *lens, float *scores, int B, int cap, int Hq, int Hkv, int hd) {
    (void)be, (void)scores; /* attention_fwd's arithmetic needs no score rows */
    oz_cpu_attention_decode_f32(out, q, k, v, lens, B, cap, Hq, Hkv, hd);
}

static void cpu_attention_bwd(oz_backend *be, float *dq, float *dk, float *dv, const float *dout,
                              const float *q, const float *k, const float *v, const float *out,
                              const float *lse, int B, int T, int Hq, int Hkv, int hd) {
    (void)be;
    oz_cpu_attention_bwd_f32(dq, dk, dv, dout, q, k, v, out, lse, B, T, Hq, Hkv, hd);
}

static void cpu_swiglu_fwd(oz_backend *be, float *h, const float *gate, const float *up, size_t n) {
    (void)be;
    oz_cpu_swiglu_fwd_f32(h, gate, up, n);
}

static void cpu_swiglu_bwd(oz_backend *be, float *dgate, float *dup, const float *dh, const float *gate,
                           const float *up, size_t n) {
    (void)be;
    oz_cpu_swiglu_bwd_f32(dgate, dup, dh, gate, up, n);
}

static void cpu_logsumexp_rows(oz_backend *be, float *lse, const float *logits, int N, int V) {
    (void)be;
    oz_cpu_logsumexp_rows_f32(lse, logits, N, V);
}

static void cpu_cross_entropy_block(oz_backend *be, float *logits, const float *lse, float *losses,
                                    const int32_t *targets, int N, int Vb, int v0, float grad_scale) {
    (void)be;
    oz_cpu_cross_entropy_block_f32(logits, lse, losses, targets, N, Vb, v0, grad_scale);
}

static void cpu_cross_entropy(oz_backend *be, float *logits, float *losses, const int32_t *targets,
                              int N, int V, float grad_scale) {
    (void)be;
    oz_cpu_cross_entropy_f32(logits, losses, targets, N, V, grad_scale);
}

static void cpu_adamw_step(oz_backend *be, float *param, const float *grad, float *m, float *v,
                           size_t n, const oz_adamw_args *args) {
    (void)be;
    oz_cpu_adamw_step_f32(param, grad, m, v, n, args);
}

/* oz_cpu_adamw_step's arithmetic, in the same order, on widened bf16 weights rounded back
 * stochastically (numeric/quant.h's oz_bf16_sr). */
static void cpu_adamw_step_bf16(oz_backend *be, uint16_t *w, size_t ldw, const float *grad, float *m, float *v,
                                size_t rows, size_t cols, const oz_adamw_args *a, uint64_t key) {
    (void)be;
    const float lr = a->lr, b1 = a->beta1, b2 = a->beta2, eps = a->eps;
    const float decay = 1 - lr * a->weight_decay, gs = a->grad_scale;
    const float step_size = lr / a->bias_correction1, bc2_sqrt = sqrtf(a->bias_correction2);
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++) {
            const size_t i = r * cols + c;
            const float g = grad[i] * gs;
            float p = oz_bf16_to_f32(w[r * ldw + c]) * decay;
            const float mi = b1 * m[i] + (1 - b1) * g;
            const float vi = b2 * v[i] + (1 - b2) * g * g;
            const float denom = sqrtf(vi) / bc2_sqrt + eps;
            p -= step_size * (mi / denom);
            m[i] = mi;
            v[i] = vi;
            w[r * ldw + c] = oz_bf16_sr(p, key, i);
        }
}

/* ---- quantized states and weights: quant.c is the reference, so the CPU ops are its functions. */

static void cpu_q8_zero(oz_backend *be, uint8_t *codes, float *absmax, size_t n, int map) {
    oz_q8_zero(codes, absmax, n, be->q8_map[map]);
}

static void cpu_q8_quantize(oz_backend *be, const float *x, size_t n, int map, uint8_t *codes, float *absmax) {
    oz_q8_quantize(x, n, be->q8_map[map], codes, absmax);
}

static void cpu_q8_dequantize(oz_backend *be, const uint8_t *codes, const float *absmax, size_t n, int map,
                              float *x) {
    oz_q8_dequantize(codes, absmax, n, be->q8_map[map], x);
}

static void cpu_adam8bit_step(oz_backend *be, float *param, const float *grad, uint8_t *m_codes, float *m_absmax,
                              uint8_t *v_codes, float *v_absmax, size_t n, const oz_adamw_args *args) {
    oz_adam8bit_step(param, grad, m_codes, m_absmax, v_codes, v_absmax, n, be->q8_map[OZ_Q8_MAP_SIGNED],
                     be->q8_map[OZ_Q8_MAP_UNSIGNED], args);
}

static void cpu_i8_quantize(oz_backend *be, const float *w, size_t n, uint8_t *q, float *s, uint8_t *z) {
    (void)be;
    oz_i8_quantize(w, n, q, s, z);
}

static void cpu_i8_dequantize(oz_backend *be, const uint8_t *q, const float *s, const uint8_t *z, size_t n,
                              float *w) {
    (void)be;
    oz_i8_dequantize(q, s, z, n, w);
}

static void cpu_i8_update_sr(oz_backend *be, uint8_t *q, float *s, uint8_t *z, size_t n, const float *delta,
                             float decay, float alpha, uint64_t seed, uint64_t step, uint64_t group0) {
    (void)be;
    oz_i8_update_sr(q, s, z, n, delta, decay, alpha, seed, step, group0);
}

static void cpu_i4_quantize(oz_backend *be, const float *w, size_t n, uint8_t *packed, float *s, uint8_t *z) {
    (void)be;
    oz_i4_quantize(w, n, packed, s, z);
}

static void cpu_i4_dequantize(oz_backend *be, const uint8_t *packed, const float *s, const uint8_t *z, size_t n,
                              float *w) {
    (void)be;
    oz_i4_dequantize(packed, s, z, n, w);
}

static void cpu_to_bf16_sr(oz_backend *be, uint16_t *dst, const float *src, size_t n, uint64_t key, uint64_t i0) {
    (void)be;
    oz_bf16_round_sr(src, n, key, i0, dst);
}

static void cpu_embedding_fwd_bf16(oz_backend *be, float *out, const uint16_t *table, const int32_t *ids, int N,
                                   int d) {
    (void)be;
#pragma omp parallel for schedule(static) if ((size_t)N * d > 65536)
    for (int i = 0; i < N; i++)
        for (int j = 0; j < d; j++) out[(size_t)i * d + j] = oz_bf16_to_f32(table[(size_t)ids[i] * d + j]);
}

static void cpu_square(oz_backend *be, float *y, const float *x, size_t n) {
    (void)be;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) y[i] = x[i] * x[i];
}

static oz_status cpu_subspace(oz_backend *be, const float *G, int m, int n, int r, int side, int method,
                              oz_rng *rng, void *workspace, float *basis, oz_err *err) {
    (void)be;
    (void)workspace; /* LAPACK's workspace is malloc'd inside the call (oz_subspace_workspace_bytes) */
    int got;
    if (method == OZ_SUBSPACE_RANDOMIZED) return oz_subspace_randomized(G, m, n, r, side, -1, -1, rng, basis, &got, err);
    if (method == OZ_SUBSPACE_EXACT) return oz_subspace_svd(G, m, n, r, side, basis, NULL, &got, err);
    return oz_fail(err, OZ_ERR_INPUT, "subspace: method %d is neither EXACT nor RANDOMIZED", method);
}

static oz_status cpu_subspace_factored(oz_backend *be, const float *dY, int ldy, const float *X, int ldx, int rows,
                                       int m, int n, int r, int side, oz_rng *rng, void *workspace, float *basis,
                                       oz_err *err) {
    (void)be;
    (void)workspace; /* malloc'd inside the call (oz_subspace_factored_workspace_bytes) */
    int got;
    return oz_subspace_randomized_factored(dY, ldy, X, ldx, rows, m, n, r, side, -1, -1, rng, basis, &got, err);
}

static void cpu_destroy(oz_backend *be) {
    /* No private state: nothing to release, but leave the table unusable. */
    memset(be, 0, sizeof *be);
}

oz_status oz_backend_cpu_create(oz_backend *be, int threads, oz_err *err) {
    if (!be) return oz_fail(err, OZ_ERR_INTERNAL, "oz_backend_cpu_create: NULL backend");
    memset(be, 0, sizeof *be);
    if (threads > 0) {
        omp_set_num_threads(threads);
        if (openblas_set_num_threads) openblas_set_num_threads(threads);
    }
    be->name = "cpu";
    be->allocator = oz_host_allocator();
    be->impl = NULL;
    be->threads = omp_get_max_threads();
    be->host_visible = 1;
    be->host_allocator = oz_host_allocator();
    be->to_device = cpu_memcpy;
    be->to_host = cpu_memcpy;
    be->copy = cpu_memcpy;
    be->fill = cpu_fill;
    be->to_bf16 = cpu_to_bf16;
    be->to_bf16_2d = cpu_to_bf16_2d;
    be->add_2d = cpu_add_2d;
    be->from_bf16_2d = cpu_from_bf16_2d;
    be->adamw_step_bf16 = cpu_adamw_step_bf16;
    be->from_bf16 = cpu_from_bf16;
    be->to_bf16_sr = cpu_to_bf16_sr;
    be->embedding_fwd_bf16 = cpu_embedding_fwd_bf16;
    be->gemm = cpu_gemm;
    be->axpy = cpu_axpy;
    be->scale = cpu_scale;
    be->sumsq = cpu_sumsq;
    be->embedding_fwd = cpu_embedding_fwd;
    be->embedding_bwd = cpu_embedding_bwd;
    be->rmsnorm_fwd = cpu_rmsnorm_fwd;
    be->rmsnorm_bwd = cpu_rmsnorm_bwd;
    be->rope = cpu_rope;
    be->attention_fwd = cpu_attention_fwd;
    be->attention_bwd = cpu_attention_bwd;
    be->attention_decode = cpu_attention_decode;
    be->swiglu_fwd = cpu_swiglu_fwd;
    be->swiglu_bwd = cpu_swiglu_bwd;
    be->cross_entropy = cpu_cross_entropy;
    be->logsumexp_rows = cpu_logsumexp_rows;
    be->cross_entropy_block = cpu_cross_entropy_block;
    be->adamw_step = cpu_adamw_step;
    oz_cpu_bf16_ops(be);
    oz_q8_map_signed(be->q8_map[OZ_Q8_MAP_SIGNED]);
    oz_q8_map_unsigned(be->q8_map[OZ_Q8_MAP_UNSIGNED]);
    be->q8_zero = cpu_q8_zero;
    be->q8_quantize = cpu_q8_quantize;
    be->q8_dequantize = cpu_q8_dequantize;
    be->adam8bit_step = cpu_adam8bit_step;
    be->i8_quantize = cpu_i8_quantize;
    be->i8_dequantize = cpu_i8_dequantize;
    be->i8_update_sr = cpu_i8_update_sr;
    be->i4_quantize = cpu_i4_quantize;
    be->i4_dequantize = cpu_i4_dequantize;
    be->square = cpu_square;
    be->subspace = cpu_subspace;
    be->subspace_factored = cpu_subspace_factored;
    be->destroy = cpu_destroy;
    return OZ_OK;
}
