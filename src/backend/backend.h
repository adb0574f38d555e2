/* The op table the model is written against. Every tensor argument is a pointer in the backend's
 * memory (host memory for the CPU backend, device memory for CUDA) with its row-major shape in a
 * comment; N is a token count (batch x sequence). The CPU backend is the fp32 reference; every
 * other backend is tested op by op against it. No model logic lives here. */
#ifndef OZ_BACKEND_H
#define OZ_BACKEND_H
#include <stddef.h>
#include <stdint.h>
#include "mem/arena.h"
#include "numeric/adamw.h"
#include "util/err.h"
#include "util/rng.h"

typedef struct oz_backend oz_backend;
struct oz_backend {
    const char *name;
    oz_allocator allocator; /* memory the ops can read and write */
    void *impl;             /* backend-private state (handles, workspaces) */
    int threads;
    int host_visible;       /* backend memory is ordinary host memory (no staging copies needed) */
    /* Host memory that to_device/to_host move fastest (page-locked on CUDA, so copies run at the
     * bus's speed; plain host memory on the CPU). Offloaded layer checkpoints live there. */
    oz_allocator host_allocator;

    /* ---- memory ---- */
    void (*to_device)(oz_backend *be, void *dst, const void *host_src, size_t bytes);
    void (*to_host)(oz_backend *be, void *host_dst, const void *src, size_t bytes);
    void (*copy)(oz_backend *be, void *dst, const void *src, size_t bytes);
    void (*fill)(oz_backend *be, float *x /* (n) */, float value, size_t n);
    /* bf16 storage (recomputation's saved layer inputs): dst = src rounded to nearest, ties to
     * even (NaN stays a quiet NaN), and back (exact). Bitwise the same on every backend. */
    void (*to_bf16)(oz_backend *be, uint16_t *dst /* (n) */, const float *src /* (n) */, size_t n);
    void (*from_bf16)(oz_backend *be, float *dst /* (n) */, const uint16_t *src /* (n) */, size_t n);
    /* bf16 weights: dst = src with quant.h's stochastic rounding (oz_bf16_sr), element i drawing
     * index i0 + i of stream `key`. */
    void (*to_bf16_sr)(oz_backend *be, uint16_t *dst /* (n) */, const float *src /* (n) */, size_t n, uint64_t key,
                       uint64_t i0);
    /* Strided forms, for a matrix whose rows are padded in one of the two (the bf16 copy's
     * oz_param_info.ld16): dst[r * ldd + c] = bf16(src[r * lds + c]), and the fp32
     * dst[r * ldd + c] += src[r * lds + c], for r < rows, c < cols; the padding is not touched.
     * [bitwise] */
    void (*to_bf16_2d)(oz_backend *be, uint16_t *dst, size_t ldd, const float *src, size_t lds, size_t rows,
                       size_t cols);
    void (*add_2d)(oz_backend *be, float *dst, size_t ldd, const float *src, size_t lds, size_t rows, size_t cols);
    /* dst[r * ldd + c] = widen(src[r * lds + c]) (exact). [bitwise] */
    void (*from_bf16_2d)(oz_backend *be, float *dst, size_t ldd, const uint16_t *src, size_t lds, size_t rows,
                         size_t cols);

    /* ---- linear algebra ----
     * C = alpha * op(A) @ op(B) + beta * C, row-major, op(A) is (M,K), op(B) is (K,N), C is (M,N).
     * trans_a means A is stored (K,M); trans_b means B is stored (N,K). */
    void (*gemm)(oz_backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha,
                 const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);

    /* ---- elementwise and reductions ---- */
    void (*axpy)(oz_backend *be, float *y /* (n) */, float alpha, const float *x /* (n) */, size_t n);
    void (*scale)(oz_backend *be, float *x /* (n) */, float alpha, size_t n);
    /* Sum of squares accumulated in double; NaN/Inf propagate. Deterministic for fixed threads. */
    double (*sumsq)(oz_backend *be, const float *x /* (n) */, size_t n);

    /* ---- model ops ---- */
    void (*embedding_fwd)(oz_backend *be, float *out /* (N,d) */, const float *table /* (V,d) */,
                          const int32_t *ids /* (N) */, int N, int d);
    /* The same from a bf16 table (exact: bf16 widens to fp32 without rounding). */
    void (*embedding_fwd_bf16)(oz_backend *be, float *out /* (N,d) */, const uint16_t *table /* (V,d) */,
                               const int32_t *ids /* (N) */, int N, int d);
    /* dtable += scatter(dout); deterministic (no atomics). Tokens with ids[i] < 0 are skipped
     * (a block of the table: ids outside it are passed as -1). */
    void (*embedding_bwd)(oz_backend *be, float *dtable /* (V,d) */, const float *dout /* (N,d) */,
                          const int32_t *ids /* (N) */, int N, int d, int V);
    /* out = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps) saved for backward. */
    void (*rmsnorm_fwd)(oz_backend *be, float *out /* (N,d) */, float *rstd /* (N) */,
                        const float *x /* (N,d) */, const float *w /* (d) */, int N, int d, float eps);
    /* dx += dL/dx, dw += dL/dw (both accumulate). */
    void (*rmsnorm_bwd)(oz_backend *be, float *dx /* (N,d) */, float *dw /* (d) */,
                        const float *dout /* (N,d) */, const float *x /* (N,d) */,
                        const float *w /* (d) */, const float *rstd /* (N) */, int N, int d);
    /* Rotate-half RoPE in place on x (B,T,H,hd): pairs (i, i+hd/2) rotated by angle pos*inv_freq[i],
     * pos = pos0 + t. cos/sin tables are (max_pos, hd/2). inverse != 0 rotates by -angle, which is the
     * backward (the rotation's transpose). */
    void (*rope)(oz_backend *be, float *x /* (B,T,H,hd) */, const float *cos_table,
                 const float *sin_table, int B, int T, int H, int hd, int pos0, int inverse);
    /* Causal softmax(q k^T / sqrt(hd)) v with grouped-query heads: q head h reads kv head
     * h / (Hq/Hkv). lse (B,Hq,T) keeps each row's log-sum-exp for the backward. */
    void (*attention_fwd)(oz_backend *be, float *out /* (B,T,Hq,hd) */, float *lse /* (B,Hq,T) */,
                          const float *q /* (B,T,Hq,hd) */, const float *k /* (B,T,Hkv,hd) */,
                          const float *v /* (B,T,Hkv,hd) */, int B, int T, int Hq, int Hkv, int hd);
    /* Overwrites dq, dk, dv. */
    void (*attention_bwd)(oz_backend *be, float *dq /* (B,T,Hq,hd) */, float *dk /* (B,T,Hkv,hd) */,
                          float *dv /* (B,T,Hkv,hd) */, const float *dout /* (B,T,Hq,hd) */,
                          const float *q, const float *k, const float *v,
                          const float *out /* (B,T,Hq,hd) */, const float *lse /* (B,Hq,T) */,
                          int B, int T, int Hq, int Hkv, int hd);
    /* Decoding with a key/value cache: one new query row per sequence. Sequence b's q (Hq, hd) is
     * the token at position lens[b] - 1; its keys and values at positions 0 .. lens[b] - 1 (that
     * token's included) are rows of the caches k, v (B, cap, Hkv, hd). out is attention_fwd's
     * output row for that position (grouped-query heads as there; no lse, nothing to backward).
     * The CPU computes it with attention_fwd's arithmetic, bitwise; CUDA within fp32 rounding.
     * lens (B) and scores (B, Hq, cap: scratch the op may overwrite) are backend memory;
     * 1 <= lens[b] <= cap. */
    void (*attention_decode)(oz_backend *be, float *out /* (B,Hq,hd) */, const float *q /* (B,Hq,hd) */,
                             const float *k /* (B,cap,Hkv,hd) */, const float *v /* (B,cap,Hkv,hd) */,
                             const int32_t *lens /* (B) */, float *scores /* (B,Hq,cap) */, int B, int cap,
                             int Hq, int Hkv, int hd);
    /* h = silu(gate) * up. */
    void (*swiglu_fwd)(oz_backend *be, float *h /* (n) */, const float *gate /* (n) */,
                       const float *up /* (n) */, size_t n);
    /* Overwrites dgate and dup; they may alias gate and up (elementwise, read before write). */
    void (*swiglu_bwd)(oz_backend *be, float *dgate /* (n) */, float *dup /* (n) */,
                       const float *dh /* (n) */, const float *gate /* (n) */, const float *up /* (n) */,
                       size_t n);
    /* losses[i] = logsumexp(logits[i]) - logits[i][targets[i]] (0 where targets[i] < 0). If
     * grad_scale != 0, logits are overwritten by grad_scale * (softmax - onehot) (0 rows where
     * targets[i] < 0): the fused backward, so no second (N,V) buffer exists. */
    void (*cross_entropy)(oz_backend *be, float *logits /* (N,V) */, float *losses /* (N) */,
                          const int32_t *targets /* (N) */, int N, int V, float grad_scale);

    /* The same loss with the vocabulary taken in blocks (training with the LM head's gradient
     * handed off block by block): lse[i] = log sum_j exp(logits[i][j]) over full rows first; then
     * for each block, logits (N, Vb) of entries [v0, v0 + Vb) are overwritten with
     * grad_scale * (softmax - onehot) (0 rows where targets[i] < 0), and losses[i] =
     * lse[i] - logit of targets[i] for rows whose target is in the block. */
    void (*logsumexp_rows)(oz_backend *be, float *lse /* (N) */, const float *logits /* (N,V) */, int N, int V);
    void (*cross_entropy_block)(oz_backend *be, float *logits /* (N,Vb) */, const float *lse /* (N) */,
                                float *losses /* (N) */, const int32_t *targets /* (N) */, int N, int Vb, int v0,
                                float grad_scale);

    /* ---- bf16 ops ----
     * uint16_t tensors hold bf16 bit patterns (numeric/half.h). Each op is the fp32 op above run on
     * its inputs widened to fp32 (exact), with each bf16 output rounded once, to nearest even
     * (oz_f32_to_bf16; NaN stays NaN). So the arithmetic, and where it sums in double, is the fp32
     * op's; fp32 arguments (RoPE tables, rstd, dw, an fp32 C) stay fp32. On the CPU every op but
     * gemm_bf16 gives exactly to_bf16(fp32 op(widened inputs)). Other backends match the CPU
     * bit for bit where an op says [bitwise]. Elsewhere they match to bf16 rounding (a different
     * summation order or exp can move an output by one bf16 ulp); tests/gpu/test_bf16.c checks
     * both. */

    /* gemm's contract (row-major; op(A) (M,K), op(B) (K,N), C (M,N) with leading dimension ldc) with
     * A and B bf16, products and sums in fp32. C is bf16 when c_bf16 != 0 (alpha * AB + beta * C
     * formed in fp32, then rounded once) and fp32 otherwise (fp32 weight gradients, fp32 logits).
     * beta == 0 overwrites C, even NaN; K == 0 gives beta * C. */
    void (*gemm_bf16)(oz_backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha,
                      const uint16_t *A, int lda, const uint16_t *B, int ldb, float beta, void *C, int ldc,
                      int c_bf16);
    /* rmsnorm_fwd: sum of squares in double, rstd fp32 (N), out bf16. */
    void (*rmsnorm_fwd_bf16)(oz_backend *be, uint16_t *out /* (N,d) */, float *rstd /* (N) */,
                             const uint16_t *x /* (N,d) */, const uint16_t *w /* (d) */, int N, int d, float eps);
    /* rmsnorm_bwd's math. dx = bf16(dL/dx), or bf16(dx + dL/dx) when accumulate_dx != 0. The sum is
     * formed in fp32 and rounded once: the residual gradient takes the norm's gradient without a
     * second rounding or a separate add pass. dw += dL/dw in fp32. */
    void (*rmsnorm_bwd_bf16)(oz_backend *be, uint16_t *dx /* (N,d) */, float *dw /* (d) */,
                             const uint16_t *dout /* (N,d) */, const uint16_t *x /* (N,d) */,
                             const uint16_t *w /* (d) */, const float *rstd /* (N) */, int N, int d,
                             int accumulate_dx);
    /* rope in place on bf16 x, with rope's fp32 tables and arguments. [bitwise] */
    void (*rope_bf16)(oz_backend *be, uint16_t *x /* (B,T,H,hd) */, const float *cos_table,
                      const float *sin_table, int B, int T, int H, int hd, int pos0, int inverse);
    /* swiglu_fwd / swiglu_bwd; dgate and dup may alias gate and up. */
    void (*swiglu_fwd_bf16)(oz_backend *be, uint16_t *h /* (n) */, const uint16_t *gate /* (n) */,
                            const uint16_t *up /* (n) */, size_t n);
    void (*swiglu_bwd_bf16)(oz_backend *be, uint16_t *dgate /* (n) */, uint16_t *dup /* (n) */,
                            const uint16_t *dh /* (n) */, const uint16_t *gate /* (n) */,
                            const uint16_t *up /* (n) */, size_t n);
    /* embedding_fwd from a bf16 table into bf16 rows (a copy). [bitwise] */
    void (*embedding_fwd_bf16out)(oz_backend *be, uint16_t *out /* (N,d) */, const uint16_t *table /* (V,d) */,
                                  const int32_t *ids /* (N) */, int N, int d);
    /* out = bf16(a + b), the residual add. out may alias a or b. There are three operands so that
     * the block's input can be kept (for the norm's backward) without a copy. [bitwise] */
    void (*add_bf16)(oz_backend *be, uint16_t *out /* (n) */, const uint16_t *a /* (n) */,
                     const uint16_t *b /* (n) */, size_t n);
    /* attention_fwd / attention_bwd with bf16 q, k, v, out, dout, dq, dk, dv and the fp32 lse
     * (B,Hq,T): the same layouts, the same lse (each row's natural log-sum-exp of the scaled
     * scores), dq, dk, dv overwritten. The CPU gives exactly to_bf16(fp32 op(widened inputs)), a
     * batch element at a time through the workspace; CUDA runs cuDNN's fused attention
     * (cuda/cuda_sdpa.h), which matches it to bf16 rounding, lse to fp32 rounding.
     * workspace: at least attention_bf16_plan's bytes for this shape, 256-byte aligned backend
     * memory; with fewer the op fails (CUDA: recorded for sync; the CPU writes NaN outputs). */
    oz_status (*attention_bf16_plan)(oz_backend *be, int B, int T, int Hq, int Hkv, int hd, size_t *workspace,
                                     oz_err *err);
    void (*attention_fwd_bf16)(oz_backend *be, uint16_t *out /* (B,T,Hq,hd) */, float *lse /* (B,Hq,T) */,
                               const uint16_t *q /* (B,T,Hq,hd) */, const uint16_t *k /* (B,T,Hkv,hd) */,
                               const uint16_t *v /* (B,T,Hkv,hd) */, int B, int T, int Hq, int Hkv, int hd,
                               void *workspace, size_t workspace_bytes);
    void (*attention_bwd_bf16)(oz_backend *be, uint16_t *dq /* (B,T,Hq,hd) */, uint16_t *dk /* (B,T,Hkv,hd) */,
                               uint16_t *dv /* (B,T,Hkv,hd) */, const uint16_t *dout /* (B,T,Hq,hd) */,
                               const uint16_t *q, const uint16_t *k, const uint16_t *v,
                               const uint16_t *out /* (B,T,Hq,hd) */, const float *lse /* (B,Hq,T) */, int B, int T,
                               int Hq, int Hkv, int hd, void *workspace, size_t workspace_bytes);

    /* ---- optimizer ---- */
    void (*adamw_step)(oz_backend *be, float *param /* (n) */, const float *grad /* (n) */,
                       float *m /* (n) */, float *v /* (n) */, size_t n, const oz_adamw_args *args);
    /* bf16 weights (no fp32 master): adamw_step on w widened (exact) in the same operation order,
     * the new weight rounded back with oz_bf16_sr from stream `key`, element (r, c) drawing index
     * r * cols + c (numeric/quant.h). w's rows are ldw apart (the bf16 copy's padded rows); grad,
     * m and v are dense (rows, cols). [bitwise] */
    void (*adamw_step_bf16)(oz_backend *be, uint16_t *w, size_t ldw, const float *grad, float *m, float *v,
                            size_t rows, size_t cols, const oz_adamw_args *args, uint64_t key);

    /* ---- quantized optimizer states and weights ----
     * Formats, rounding rules and SR streams are numeric/quant.h's, to the bit: every backend gives
     * the CPU functions' bytes for the same inputs. `map` picks one of the q8 code maps below
     * (OZ_Q8_MAP_SIGNED for first moments, OZ_Q8_MAP_UNSIGNED for second moments). */
    float q8_map[2][256];    /* oz_q8_map_signed / oz_q8_map_unsigned, built at create */
    void (*q8_zero)(oz_backend *be, uint8_t *codes /* (n) */, float *absmax /* (blocks) */, size_t n, int map);
    void (*q8_quantize)(oz_backend *be, const float *x /* (n) */, size_t n, int map, uint8_t *codes,
                        float *absmax);
    void (*q8_dequantize)(oz_backend *be, const uint8_t *codes, const float *absmax, size_t n, int map,
                          float *x /* (n) */);
    /* oz_adam8bit_step: m with the signed map, v with the unsigned one. */
    void (*adam8bit_step)(oz_backend *be, float *param /* (n) */, const float *grad /* (n) */, uint8_t *m_codes,
                          float *m_absmax, uint8_t *v_codes, float *v_absmax, size_t n, const oz_adamw_args *args);
    /* i8: q (n), s and z (groups); i4: packed ((n + 1) / 2), s and z (groups). */
    void (*i8_quantize)(oz_backend *be, const float *w, size_t n, uint8_t *q, float *s, uint8_t *z);
    void (*i8_dequantize)(oz_backend *be, const uint8_t *q, const float *s, const uint8_t *z, size_t n, float *w);
    void (*i8_update_sr)(oz_backend *be, uint8_t *q, float *s, uint8_t *z, size_t n, const float *delta,
                         float decay, float alpha, uint64_t seed, uint64_t step, uint64_t group0);
    void (*i4_quantize)(oz_backend *be, const float *w, size_t n, uint8_t *packed, float *s, uint8_t *z);
    void (*i4_dequantize)(oz_backend *be, const uint8_t *packed, const float *s, const uint8_t *z, size_t n,
                          float *w);
    /* y = x * x elementwise (fp32, one rounding); y may alias x. */
    void (*square)(oz_backend *be, float *y /* (n) */, const float *x /* (n) */, size_t n);
    /* Top-r singular subspace of G (m, n) into basis ((m, rank) for OZ_SUBSPACE_LEFT, (rank, n) for
     * RIGHT), method OZ_SUBSPACE_EXACT or RANDOMIZED (default oversample and power iterations; the
     * test matrix drawn from rng exactly as oz_subspace_randomized draws it), signs as subspace.h.
     * workspace: oz_backend_subspace_workspace_bytes(be, ...) bytes of backend memory from the
     * caller (NULL when that is 0: the CPU backend mallocs LAPACK's workspace inside the call).
     * Errors as oz_subspace_svd (a non-finite G is OZ_ERR_NUMERIC); it waits for the result. */
    oz_status (*subspace)(oz_backend *be, const float *G, int m, int n, int r, int side, int method, oz_rng *rng,
                          void *workspace, float *basis, oz_err *err);
    /* The randomized subspace (method RANDOMIZED, as above) of G = dY^T X (m, n) from its factors,
     * which is never formed: dY (rows, m) and X (rows, n), row-major with leading dimensions ldy and
     * ldx (a linear layer's output gradient and input). Each product with G or G^T is two GEMMs
     * through a (rows, l) intermediate (oz_subspace_randomized_factored; the same test matrix).
     * workspace: oz_backend_subspace_factored_workspace_bytes(be, ...) bytes (NULL when 0). */
    oz_status (*subspace_factored)(oz_backend *be, const float *dY /* (rows, m) */, int ldy,
                                   const float *X /* (rows, n) */, int ldx, int rows, int m, int n, int r, int side,
                                   oz_rng *rng, void *workspace, float *basis, oz_err *err);

    void (*destroy)(oz_backend *be);

    /* ---- asynchronous backends (NULL on the CPU backend, where nothing is queued) ----
     * The ops above return nothing, so a backend whose work runs asynchronously (CUDA) records its
     * first failure (with file:line) and reports it here, after waiting for queued work. */
    oz_status (*sync)(oz_backend *be, oz_err *err);
    /* Moves the backend's own workspaces (cuBLAS workspace, reduction buffers: OZ_CUDA_WORKSPACE_BYTES
     * of scratch) into `arena`, so the arena accounts every byte the run holds. */
    oz_status (*attach_arena)(oz_backend *be, oz_arena *arena, oz_err *err);
};

enum { OZ_Q8_MAP_SIGNED = 0, OZ_Q8_MAP_UNSIGNED = 1 };

/* Bytes of backend memory the subspace op needs from its caller on a backend of this kind (cuda:
 * the CUDA backend, else the CPU, whose op needs none: see oz_subspace_workspace_bytes for what
 * LAPACK mallocs there). The planner asks with the device name, the optimizer with its backend. */
size_t oz_subspace_device_workspace_bytes(int cuda, int m, int n, int r, int method);
size_t oz_backend_subspace_workspace_bytes(const oz_backend *be, int m, int n, int r, int method);
/* The same for subspace_factored over `rows` rows of factors (the GPU layout includes the
 * (rows, l) intermediate; the CPU mallocs it: oz_subspace_factored_workspace_bytes). */
size_t oz_subspace_device_factored_workspace_bytes(int cuda, int m, int n, int r, int rows);
size_t oz_backend_subspace_factored_workspace_bytes(const oz_backend *be, int m, int n, int r, int rows);

/* The workspace the planner gives the bf16 attention at this shape on a backend of this kind
 * (cuda, else the CPU), without a backend. The CPU's is exact: fp32 copies of one batch element's
 * q, k, v, out, dout, dq, dk, dv, T * (4 Hq + 4 Hkv) * hd floats. CUDA's is exact for our part of
 * cuda_sdpa's backward workspace (fp32 row sums and dq accumulator, the padding workaround's
 * sequence lengths) plus an allowance for cuDNN's own part, which is only known once cuDNN has
 * chosen its engines: twice the B * Hq * T * hd * 4 bytes measured on cuDNN 9.19 at 32:8 heads,
 * plus 1 MiB. A model refuses at creation when the backend asks for more than this. */
size_t oz_attention_bf16_device_workspace_bytes(int cuda, int B, int T, int Hq, int Hkv, int hd);

/* The fp32 reference backend: OpenMP + BLAS. threads <= 0 keeps the library defaults. */
oz_status oz_backend_cpu_create(oz_backend *be, int threads, oz_err *err);

/* The CUDA backend on GPU `device`. Its fp32 ops use cuBLAS GEMMs in fp32, TF32 only when asked
 * for; its bf16 ops use cuBLASLt.
 * A build without CUDA=1 has a stub that fails with OZ_ERR_INPUT. */
oz_status oz_backend_cuda_create(oz_backend *be, int device, oz_err *err);
/* TF32 tensor-core GEMMs (10-bit mantissa inputs, fp32 accumulation): faster, not fp32-exact. */
oz_status oz_backend_cuda_set_tf32(oz_backend *be, int on, oz_err *err);
/* Scratch the CUDA backend holds for itself (cuBLAS workspace + deterministic reduction buffers),
 * accounted in the arena by attach_arena and predicted by the planner. */
#define OZ_CUDA_CUBLAS_WORKSPACE_BYTES ((size_t)32 << 20)
#define OZ_CUDA_REDUCE_BYTES ((size_t)4 << 20)
#define OZ_CUDA_WORKSPACE_BYTES (OZ_CUDA_CUBLAS_WORKSPACE_BYTES + OZ_CUDA_REDUCE_BYTES)

/* Opens the backend a `--device` string names: "cpu", "cuda", "cuda:N", with "+tf32" allowed after
 * a cuda name ("cuda+tf32"). A name that is not known, or a GPU this build or machine lacks, is an
 * OZ_ERR_INPUT with one clear line. */
oz_status oz_backend_open(oz_backend *be, const char *device, int threads, oz_err *err);
/* True when `device` names the CUDA backend (whether or not this build has it). */
int oz_backend_is_cuda(const char *device);
/* be->attach_arena when the backend has one; be->sync when it has one. */
oz_status oz_backend_attach(oz_backend *be, oz_arena *arena, oz_err *err);
oz_status oz_backend_sync(oz_backend *be, oz_err *err);

#endif
