/* Fused bf16 attention through cuDNN's graph API (contract in cuda_sdpa.h).
 *
 * cuDNN has no single "attention" operation for this version and mask; it recognises attention
 * written out as a graph of matmul, pointwise and reduction operations and runs the whole graph as
 * one flash-attention kernel. The engines match a fixed pattern, so the graphs below are built in
 * the shape that cuDNN's own frontend builds for causal SDPA (operation order, data types of the
 * intermediate tensors, where reshapes sit); a graph that means the same but is built differently
 * may find no engine. Every intermediate tensor is "virtual": it names a value inside the fused
 * kernel and never exists in memory.
 *
 * Tensors are described as 4-D (batch, head, row, column) views of our (B, T, H, hd) buffers, so
 * no transpose is ever run: q is dims (B, Hq, T, hd) with strides (T*Hq*hd, hd, Hq*hd, 1), and k
 * enters the first matmul as its transpose (B, Hkv, hd, T) by swapping the last two strides.
 * Grouped-query heads are cuDNN's broadcast over the head dimension (query head h reads kv head
 * h / (Hq/Hkv)); in the backward, dk and dv are first formed per query head and then summed over
 * each group by a reduction the engine fuses.
 *
 * Forward:   S = scale * q k^T; S = causal ? (row >= col ? S : -inf) : S; m = max_row S;
 *            e = exp(S - m); z = sum_row e; stats = m + log z; out = (e / z) v.
 * Backward:  D = sum_row(dout * out) (fp32, kept in our workspace); S as above minus stats, then
 *            masked; P = exp(S); dv = P^T dout; dS = scale * P * (dout v^T - D); dk = dS^T q;
 *            dq = dS k (fp32 accumulator in our workspace, unless deterministic).
 *
 * cuDNN up to 9.15.0 (SDPA_PAD_BUG_LAST) needs the backward of a T that is not a multiple of 128 to
 * carry a padding mask: per-batch sequence lengths (all T, int32, in our workspace) that mask the
 * scores past them and bound every matmul (the "override" sizes), as the frontend builds it.
 *
 * Scalars (scale, -inf, 1) are "by value" tensors: their host addresses go in the variant pack and
 * cuDNN reads them at each launch, so they live in the plan, which never moves. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_sdpa.h"

#if !defined(CUDNN_MAJOR) || CUDNN_MAJOR < 9
#error "cuda_sdpa.cu needs cuDNN 9 (its graph API and flash-attention engines)"
#endif

/* cuDNN versions as cudnnGetVersion() counts them. Older than 9.10.2 is refused: cuDNN's frontend
 * works around more there (a zeroed dq accumulator before 9.6, a second padding mask and a finite
 * mask value before 9.10, a broken backward in 9.10.0/9.10.1). Up to 9.15.0 the backward gives wrong
 * gradients when T % 128 != 0 unless the graph carries a padding mask (sequence lengths = T), which
 * the frontend adds and so do we. Tested on 9.14 and 9.19. */
#define SDPA_MIN_CUDNN 91002
#define SDPA_PAD_BUG_LAST 91500

/* ------------------------------------------------------------------ errors */

static oz_status cudnn_fail(oz_err *err, cudnnStatus_t st, const char *what, const char *file, int line) {
    char last[256];
    last[0] = 0;
    cudnnGetLastErrorString(last, sizeof last);
    return oz_fail(err, st == CUDNN_STATUS_ALLOC_FAILED ? OZ_ERR_NOMEM : OZ_ERR_INTERNAL,
                   "cuDNN: %s failed at %s:%d: %s%s%s", what, file, line, cudnnGetErrorString(st),
                   last[0] ? ": " : "", last);
}

static oz_status cuda_fail(oz_err *err, cudaError_t e, const char *what, const char *file, int line) {
    return oz_fail(err, e == cudaErrorMemoryAllocation ? OZ_ERR_NOMEM : OZ_ERR_INTERNAL,
                   "CUDA: %s failed at %s:%d: %s", what, file, line, cudaGetErrorString(e));
}

/* In functions that return oz_status and have `err` in scope. */
#define DNN(call)                                                                        \
    do {                                                                                 \
        cudnnStatus_t dnn_st_ = (call);                                                  \
        if (dnn_st_ != CUDNN_STATUS_SUCCESS) return cudnn_fail(err, dnn_st_, #call, __FILE__, __LINE__); \
    } while (0)
#define RT(call)                                                                      \
    do {                                                                              \
        cudaError_t rt_e_ = (call);                                                   \
        if (rt_e_ != cudaSuccess) return cuda_fail(err, rt_e_, #call, __FILE__, __LINE__); \
    } while (0)

/* ------------------------------------------------------------------ plans */

/* Unique ids of the tensors that have memory behind them (the variant pack's keys). Virtual
 * tensors take ids from UID_VIRTUAL up. */
enum {
    UID_Q = 1, UID_K, UID_V, UID_O, UID_STATS, UID_DO, UID_DQ, UID_DK, UID_DV,
    UID_SCALE, UID_NEG_INF, UID_ONE, UID_DSUM, UID_DQ_ACC, UID_SEQ_Q, UID_SEQ_KV,
    UID_VIRTUAL = 100
};

#define MAX_DESCS 320 /* descriptors one plan keeps alive (the backward graph uses about 150) */
#define MAX_OPS 48

typedef struct sdpa_plan {
    struct sdpa_plan *next;
    oz_sdpa_shape shape; /* the key, scale resolved */
    /* Every descriptor the two graphs and their plans use: cuDNN's plans refer to them. */
    cudnnBackendDescriptor_t descs[MAX_DESCS];
    int ndescs;
    cudnnBackendDescriptor_t fwd, bwd; /* execution plans; NULL on the T == 1 kernels */
    size_t cudnn_fwd_ws, cudnn_bwd_ws;
    /* Backward workspace layout: cuDNN | D | dq accumulator | sequence lengths (padding workaround). */
    size_t dsum_off, dq_acc_off, seq_off, bwd_ws;
    int pad; /* the backward carries the padding-mask workaround */
    int64_t fwd_engine, bwd_engine;
    int fwd_det, bwd_det;
    float scale, neg_inf, one; /* by-value scalars, read by cuDNN at each launch */
} sdpa_plan;

struct oz_sdpa {
    cudnnHandle_t handle;
    cudaStream_t stream;
    int deterministic;
    size_t version;
    sdpa_plan *plans;
};

size_t oz_sdpa_cudnn_version(void) { return cudnnGetVersion(); }

static size_t align256(size_t n) { return (n + 255) & ~(size_t)255; }

static oz_status new_desc(sdpa_plan *p, cudnnBackendDescriptorType_t type, cudnnBackendDescriptor_t *out, oz_err *err) {
    if (p->ndescs == MAX_DESCS)
        return oz_fail(err, OZ_ERR_INTERNAL, "cuda_sdpa: more than %d cuDNN descriptors in one plan", MAX_DESCS);
    DNN(cudnnBackendCreateDescriptor(type, out));
    p->descs[p->ndescs++] = *out;
    return OZ_OK;
}

static void plan_free(sdpa_plan *p) {
    /* Plans first: they refer to the graphs. */
    for (int i = p->ndescs - 1; i >= 0; i--) cudnnBackendDestroyDescriptor(p->descs[i]);
    free(p);
}

/* One graph under construction: its operations in order, and the next virtual uid. */
typedef struct {
    sdpa_plan *p;
    size_t version;
    cudnnBackendDescriptor_t ops[MAX_OPS];
    int nops;
    int64_t next_uid;
} graph;

typedef cudnnBackendDescriptor_t desc_t;

static oz_status tensor(graph *g, int64_t uid, cudnnDataType_t dt, int nd, const int64_t *dims,
                        const int64_t *strides, int is_virtual, int by_value, desc_t *out, oz_err *err) {
    desc_t t = NULL;
    OZ_TRY(new_desc(g->p, CUDNN_BACKEND_TENSOR_DESCRIPTOR, &t, err));
    const int64_t align = 16;
    const bool virt = is_virtual != 0, byval = by_value != 0;
    DNN(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt));
    DNN(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, nd, dims));
    DNN(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, nd, strides));
    DNN(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid));
    DNN(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align));
    DNN(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &virt));
    if (byval) DNN(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &byval));
    DNN(cudnnBackendFinalize(t));
    *out = t;
    return OZ_OK;
}

/* A 4-D tensor with memory behind it, and a virtual one. */
static oz_status real4(graph *g, int64_t uid, cudnnDataType_t dt, const int64_t d[4], const int64_t s[4], desc_t *out,
                       oz_err *err) {
    return tensor(g, uid, dt, 4, d, s, 0, 0, out, err);
}
static oz_status virt4(graph *g, cudnnDataType_t dt, const int64_t d[4], const int64_t s[4], desc_t *out, oz_err *err) {
    return tensor(g, g->next_uid++, dt, 4, d, s, 1, 0, out, err);
}
/* A float scalar passed by value, broadcast against 4-D tensors. */
static oz_status scalar(graph *g, int64_t uid, desc_t *out, oz_err *err) {
    const int64_t one[4] = {1, 1, 1, 1};
    return tensor(g, uid, CUDNN_DATA_FLOAT, 4, one, one, 0, 1, out, err);
}

static oz_status add_op(graph *g, desc_t op, oz_err *err) {
    if (g->nops == MAX_OPS)
        return oz_fail(err, OZ_ERR_INTERNAL, "cuda_sdpa: more than %d operations in one graph", MAX_OPS);
    g->ops[g->nops++] = op;
    return OZ_OK;
}

/* y = mode(x[, b[, t]]), computed in `prec`; axis >= 0 for GEN_INDEX. */
static oz_status pointwise(graph *g, cudnnPointwiseMode_t mode, cudnnDataType_t prec, desc_t x, desc_t b, desc_t t,
                           desc_t y, int64_t axis, oz_err *err) {
    desc_t pw = NULL, op = NULL;
    OZ_TRY(new_desc(g->p, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, &pw, err));
    DNN(cudnnBackendSetAttribute(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode));
    DNN(cudnnBackendSetAttribute(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec));
    if (axis >= 0) DNN(cudnnBackendSetAttribute(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis));
    DNN(cudnnBackendFinalize(pw));
    OZ_TRY(new_desc(g->p, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, &op, err));
    const float alpha = 1.0f;
    DNN(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                 &pw));
    DNN(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x));
    if (b)
        DNN(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b));
    if (t)
        DNN(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t));
    DNN(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y));
    DNN(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, 1, &alpha));
    DNN(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, 1, &alpha));
    DNN(cudnnBackendFinalize(op));
    return add_op(g, op, err);
}

/* c = a @ b over the last two dimensions, broadcast over the others, fp32 accumulation; m, n, k
 * (or NULL) are per-batch sizes that bound the product (the padding workaround). */
static oz_status matmul_sized(graph *g, desc_t a, desc_t b, desc_t c, desc_t m, desc_t n, desc_t k, oz_err *err) {
    desc_t mm = NULL, op = NULL;
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    OZ_TRY(new_desc(g->p, CUDNN_BACKEND_MATMUL_DESCRIPTOR, &mm, err));
    DNN(cudnnBackendSetAttribute(mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp));
    DNN(cudnnBackendFinalize(mm));
    OZ_TRY(new_desc(g->p, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, &op, err));
    DNN(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a));
    DNN(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b));
    DNN(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c));
    DNN(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &mm));
    if (m)
        DNN(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC,
                                     CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &m));
    if (n)
        DNN(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC,
                                     CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n));
    if (k)
        DNN(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC,
                                     CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &k));
    DNN(cudnnBackendFinalize(op));
    return add_op(g, op, err);
}
static oz_status matmul(graph *g, desc_t a, desc_t b, desc_t c, oz_err *err) {
    return matmul_sized(g, a, b, c, NULL, NULL, NULL, err);
}

/* y = reduce(x) over the dimensions where y is smaller, in fp32. */
static oz_status reduction(graph *g, cudnnReduceTensorOp_t mode, desc_t x, desc_t y, oz_err *err) {
    desc_t rd = NULL, op = NULL;
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    OZ_TRY(new_desc(g->p, CUDNN_BACKEND_REDUCTION_DESCRIPTOR, &rd, err));
    DNN(cudnnBackendSetAttribute(rd, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode));
    DNN(cudnnBackendSetAttribute(rd, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp));
    if (g->version >= 91100) { /* the attribute exists from 9.11; the frontend sets it, to false */
        const bool det = false;
        DNN(cudnnBackendSetAttribute(rd, CUDNN_ATTR_REDUCTION_IS_DETERMINISTIC, CUDNN_TYPE_BOOLEAN, 1, &det));
    }
    DNN(cudnnBackendFinalize(rd));
    OZ_TRY(new_desc(g->p, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, &op, err));
    DNN(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x));
    DNN(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y));
    DNN(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &rd));
    DNN(cudnnBackendFinalize(op));
    return add_op(g, op, err);
}

/* y is x seen through other dims/strides (here: a transpose of the last two dimensions). */
static oz_status reshape(graph *g, desc_t x, desc_t y, oz_err *err) {
    desc_t op = NULL;
    OZ_TRY(new_desc(g->p, CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, &op, err));
    DNN(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x));
    DNN(cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y));
    DNN(cudnnBackendFinalize(op));
    return add_op(g, op, err);
}

/* S = causal ? (row >= col ? S : -inf) : S, as cuDNN's frontend writes the top-left causal mask. */
static oz_status causal_mask(graph *g, desc_t s_in, desc_t neg_inf, const int64_t sd[4], const int64_t ss[4],
                             desc_t *s_out, oz_err *err) {
    desc_t row = NULL, col = NULL, keep = NULL;
    OZ_TRY(virt4(g, CUDNN_DATA_INT32, sd, ss, &row, err));
    OZ_TRY(pointwise(g, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, s_in, NULL, NULL, row, 2, err));
    OZ_TRY(virt4(g, CUDNN_DATA_INT32, sd, ss, &col, err));
    OZ_TRY(pointwise(g, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, s_in, NULL, NULL, col, 3, err));
    OZ_TRY(virt4(g, CUDNN_DATA_BOOLEAN, sd, ss, &keep, err));
    OZ_TRY(pointwise(g, CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, row, col, NULL, keep, -1, err));
    OZ_TRY(virt4(g, CUDNN_DATA_FLOAT, sd, ss, s_out, err));
    return pointwise(g, CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, s_in, neg_inf, keep, *s_out, -1, err);
}

/* S = (row < seq_q && col < seq_kv) ? S : -inf, as the frontend writes its padding mask. */
static oz_status padding_mask(graph *g, desc_t s_in, desc_t neg_inf, desc_t seq_q, desc_t seq_kv, const int64_t sd[4],
                              const int64_t ss[4], desc_t *s_out, oz_err *err) {
    desc_t row = NULL, col = NULL, row_ok = NULL, col_ok = NULL, ok = NULL;
    OZ_TRY(virt4(g, CUDNN_DATA_INT32, sd, ss, &row, err));
    OZ_TRY(pointwise(g, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32, s_in, NULL, NULL, row, 2, err));
    OZ_TRY(virt4(g, CUDNN_DATA_INT32, sd, ss, &col, err));
    OZ_TRY(pointwise(g, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32, s_in, NULL, NULL, col, 3, err));
    OZ_TRY(virt4(g, CUDNN_DATA_BOOLEAN, sd, ss, &row_ok, err));
    OZ_TRY(pointwise(g, CUDNN_POINTWISE_CMP_LT, CUDNN_DATA_BOOLEAN, row, seq_q, NULL, row_ok, -1, err));
    OZ_TRY(virt4(g, CUDNN_DATA_BOOLEAN, sd, ss, &col_ok, err));
    OZ_TRY(pointwise(g, CUDNN_POINTWISE_CMP_LT, CUDNN_DATA_BOOLEAN, col, seq_kv, NULL, col_ok, -1, err));
    OZ_TRY(virt4(g, CUDNN_DATA_BOOLEAN, sd, ss, &ok, err));
    OZ_TRY(pointwise(g, CUDNN_POINTWISE_LOGICAL_AND, CUDNN_DATA_BOOLEAN, row_ok, col_ok, NULL, ok, -1, err));
    OZ_TRY(virt4(g, CUDNN_DATA_FLOAT, sd, ss, s_out, err));
    return pointwise(g, CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, s_in, neg_inf, ok, *s_out, -1, err);
}

/* The 4-D views of our buffers (see the top of the file). */
typedef struct {
    int64_t q_d[4], q_s[4];   /* q, out, dq, dout: (B, Hq, T, hd) */
    int64_t kv_d[4], kv_s[4]; /* k, v, dk, dv: (B, Hkv, T, hd) */
    int64_t kt_d[4], kt_s[4]; /* k or v transposed: (B, Hkv, hd, T) */
    int64_t st_d[4], st_s[4]; /* stats and other per-row values: (B, Hq, T, 1) */
    int64_t s_d[4], s_s[4];   /* scores: (B, Hq, T, T), row-major */
    int64_t sT_d[4], sT_s[4]; /* scores transposed: (B, Hq, T, T) with the last two strides swapped */
    int64_t hf_d[4], hf_s[4]; /* dk or dv per query head: (B, Hq, T, hd), row-major */
} views;

static void make_views(const oz_sdpa_shape *sh, views *w) {
    const int64_t B = sh->B, T = sh->T, Hq = sh->Hq, Hkv = sh->Hkv, D = sh->hd;
    const int64_t q_d[4] = {B, Hq, T, D}, q_s[4] = {T * Hq * D, D, Hq * D, 1};
    const int64_t kv_d[4] = {B, Hkv, T, D}, kv_s[4] = {T * Hkv * D, D, Hkv * D, 1};
    const int64_t kt_d[4] = {B, Hkv, D, T}, kt_s[4] = {T * Hkv * D, D, 1, Hkv * D};
    const int64_t st_d[4] = {B, Hq, T, 1}, st_s[4] = {Hq * T, T, 1, 1};
    const int64_t s_d[4] = {B, Hq, T, T}, s_s[4] = {Hq * T * T, T * T, T, 1};
    const int64_t sT_s[4] = {Hq * T * T, T * T, 1, T};
    const int64_t hf_s[4] = {Hq * T * D, T * D, D, 1};
    memcpy(w->q_d, q_d, sizeof q_d), memcpy(w->q_s, q_s, sizeof q_s);
    memcpy(w->kv_d, kv_d, sizeof kv_d), memcpy(w->kv_s, kv_s, sizeof kv_s);
    memcpy(w->kt_d, kt_d, sizeof kt_d), memcpy(w->kt_s, kt_s, sizeof kt_s);
    memcpy(w->st_d, st_d, sizeof st_d), memcpy(w->st_s, st_s, sizeof st_s);
    memcpy(w->s_d, s_d, sizeof s_d), memcpy(w->s_s, s_s, sizeof s_s);
    memcpy(w->sT_d, s_d, sizeof s_d), memcpy(w->sT_s, sT_s, sizeof sT_s);
    memcpy(w->hf_d, q_d, sizeof q_d), memcpy(w->hf_s, hf_s, sizeof hf_s);
}

static oz_status build_fwd(graph *g, const oz_sdpa_shape *sh, oz_err *err) {
    views w;
    make_views(sh, &w);
    const cudnnDataType_t BF = CUDNN_DATA_BFLOAT16, F = CUDNN_DATA_FLOAT;
    desc_t q = NULL, kt = NULL, v = NULL, o = NULL, stats = NULL, scale = NULL, neg_inf = NULL;
    OZ_TRY(real4(g, UID_Q, BF, w.q_d, w.q_s, &q, err));
    OZ_TRY(real4(g, UID_K, BF, w.kt_d, w.kt_s, &kt, err));
    OZ_TRY(real4(g, UID_V, BF, w.kv_d, w.kv_s, &v, err));
    OZ_TRY(real4(g, UID_O, BF, w.q_d, w.q_s, &o, err));
    OZ_TRY(real4(g, UID_STATS, F, w.st_d, w.st_s, &stats, err));
    OZ_TRY(scalar(g, UID_SCALE, &scale, err));
    if (sh->causal) OZ_TRY(scalar(g, UID_NEG_INF, &neg_inf, err));

    desc_t s0 = NULL, s1 = NULL, s = NULL, m = NULL, sub = NULL, e = NULL, z = NULL, logz = NULL, p = NULL;
    OZ_TRY(virt4(g, F, w.s_d, w.s_s, &s0, err));
    OZ_TRY(matmul(g, q, kt, s0, err));
    OZ_TRY(virt4(g, F, w.s_d, w.s_s, &s1, err));
    OZ_TRY(pointwise(g, CUDNN_POINTWISE_MUL, F, s0, scale, NULL, s1, -1, err));
    s = s1;
    if (sh->causal) OZ_TRY(causal_mask(g, s1, neg_inf, w.s_d, w.s_s, &s, err));
    OZ_TRY(virt4(g, F, w.st_d, w.st_s, &m, err));
    OZ_TRY(reduction(g, CUDNN_REDUCE_TENSOR_MAX, s, m, err));
    OZ_TRY(virt4(g, F, w.s_d, w.s_s, &sub, err));
    OZ_TRY(pointwise(g, CUDNN_POINTWISE_SUB, F, s, m, NULL, sub, -1, err));
    OZ_TRY(virt4(g, F, w.s_d, w.s_s, &e, err));
    OZ_TRY(pointwise(g, CUDNN_POINTWISE_EXP, F, sub, NULL, NULL, e, -1, err));
    OZ_TRY(virt4(g, F, w.st_d, w.st_s, &z, err));
    OZ_TRY(reduction(g, CUDNN_REDUCE_TENSOR_ADD, e, z, err));
    OZ_TRY(virt4(g, F, w.st_d, w.st_s, &logz, err));
    OZ_TRY(pointwise(g, CUDNN_POINTWISE_LOG, F, z, NULL, NULL, logz, -1, err));
    OZ_TRY(pointwise(g, CUDNN_POINTWISE_ADD, F, m, logz, NULL, stats, -1, err));
    /* The probabilities enter the second matmul in the inputs' type: the engine's pattern. */
    OZ_TRY(virt4(g, BF, w.s_d, w.s_s, &p, err));
    OZ_TRY(pointwise(g, CUDNN_POINTWISE_DIV, F, e, z, NULL, p, -1, err));
    return matmul(g, p, v, o, err);
}

static oz_status build_bwd(graph *g, const oz_sdpa_shape *sh, int deterministic, int pad, oz_err *err) {
    views w;
    make_views(sh, &w);
    const cudnnDataType_t BF = CUDNN_DATA_BFLOAT16, F = CUDNN_DATA_FLOAT;
    const int gqa = sh->Hq != sh->Hkv;
    desc_t q = NULL, kt = NULL, vt = NULL, o = NULL, dout = NULL, stats = NULL, dq = NULL, dk = NULL, dv = NULL;
    desc_t dsum = NULL, dq_acc = NULL, scale = NULL, one = NULL, neg_inf = NULL, sq = NULL, skv = NULL;
    OZ_TRY(real4(g, UID_Q, BF, w.q_d, w.q_s, &q, err));
    OZ_TRY(real4(g, UID_K, BF, w.kt_d, w.kt_s, &kt, err));
    OZ_TRY(real4(g, UID_V, BF, w.kt_d, w.kt_s, &vt, err));
    OZ_TRY(real4(g, UID_O, BF, w.q_d, w.q_s, &o, err));
    OZ_TRY(real4(g, UID_DO, BF, w.q_d, w.q_s, &dout, err));
    OZ_TRY(real4(g, UID_STATS, F, w.st_d, w.st_s, &stats, err));
    OZ_TRY(real4(g, UID_DQ, BF, w.q_d, w.q_s, &dq, err));
    OZ_TRY(real4(g, UID_DK, BF, w.kv_d, w.kv_s, &dk, err));
    OZ_TRY(real4(g, UID_DV, BF, w.kv_d, w.kv_s, &dv, err));
    OZ_TRY(real4(g, UID_DSUM, F, w.st_d, w.st_s, &dsum, err));
    if (!deterministic) OZ_TRY(real4(g, UID_DQ_ACC, F, w.hf_d, w.hf_s, &dq_acc, err));
    OZ_TRY(scalar(g, UID_SCALE, &scale, err));
    OZ_TRY(scalar(g, UID_ONE, &one, err));
    if (sh->causal || pad) OZ_TRY(scalar(g, UID_NEG_INF, &neg_inf, err));
    if (pad) {
        const int64_t ld[4] = {sh->B, 1, 1, 1}, ls[4] = {1, 1, 1, 1};
        OZ_TRY(real4(g, UID_SEQ_Q, CUDNN_DATA_INT32, ld, ls, &sq, err));
        OZ_TRY(real4(g, UID_SEQ_KV, CUDNN_DATA_INT32, ld, ls, &skv, err));
    }

    /* D = sum over hd of dout * out, per query row (times 1: the frontend's dropout-scale slot). */
    desc_t dto = NULL, dsum0 = NULL;
    OZ_TRY(virt4(g, F, w.q_d, w.q_s, &dto, err));
    OZ_TRY(pointwise(g, CUDNN_POINTWISE_MUL, F, dout, o, NULL, dto, -1, err));
    OZ_TRY(virt4(g, F, w.st_d, w.st_s, &dsum0, err));
    OZ_TRY(reduction(g, CUDNN_REDUCE_TENSOR_ADD, dto, dsum0, err));
    OZ_TRY(pointwise(g, CUDNN_POINTWISE_MUL, F, dsum0, one, NULL, dsum, -1, err));

    /* P = exp(scale * q k^T - stats), masked. */
    desc_t s0 = NULL, s1 = NULL, s2 = NULL, s = NULL, p = NULL, pT = NULL;
    OZ_TRY(virt4(g, F, w.s_d, w.s_s, &s0, err));
    OZ_TRY(matmul_sized(g, q, kt, s0, sq, skv, NULL, err));
    OZ_TRY(virt4(g, F, w.s_d, w.s_s, &s1, err));
    OZ_TRY(pointwise(g, CUDNN_POINTWISE_MUL, F, s0, scale, NULL, s1, -1, err));
    if (pad) OZ_TRY(padding_mask(g, s1, neg_inf, sq, skv, w.s_d, w.s_s, &s1, err));
    OZ_TRY(virt4(g, F, w.s_d, w.s_s, &s2, err));
    OZ_TRY(pointwise(g, CUDNN_POINTWISE_SUB, F, s1, stats, NULL, s2, -1, err));
    s = s2;
    if (sh->causal) OZ_TRY(causal_mask(g, s2, neg_inf, w.s_d, w.s_s, &s, err));
    OZ_TRY(virt4(g, F, w.s_d, w.s_s, &p, err));
    OZ_TRY(pointwise(g, CUDNN_POINTWISE_EXP, F, s, NULL, NULL, p, -1, err));

    /* dv = P^T dout (per query head, then summed over each group). */
    OZ_TRY(virt4(g, BF, w.sT_d, w.sT_s, &pT, err));
    OZ_TRY(reshape(g, p, pT, err));
    if (gqa) {
        desc_t dvf = NULL;
        OZ_TRY(virt4(g, BF, w.hf_d, w.hf_s, &dvf, err));
        OZ_TRY(matmul_sized(g, pT, dout, dvf, skv, NULL, sq, err));
        OZ_TRY(reduction(g, CUDNN_REDUCE_TENSOR_ADD, dvf, dv, err));
    } else {
        OZ_TRY(matmul_sized(g, pT, dout, dv, skv, NULL, sq, err));
    }

    /* dS = scale * P * (dout v^T - D). */
    desc_t dp0 = NULL, dp1 = NULL, dp2 = NULL, ds = NULL, dsT = NULL;
    OZ_TRY(virt4(g, F, w.s_d, w.s_s, &dp0, err));
    OZ_TRY(matmul_sized(g, dout, vt, dp0, sq, skv, NULL, err));
    OZ_TRY(virt4(g, F, w.s_d, w.s_s, &dp1, err));
    OZ_TRY(pointwise(g, CUDNN_POINTWISE_SUB, F, dp0, dsum, NULL, dp1, -1, err));
    OZ_TRY(virt4(g, F, w.s_d, w.s_s, &dp2, err));
    OZ_TRY(pointwise(g, CUDNN_POINTWISE_MUL, F, dp1, p, NULL, dp2, -1, err));
    OZ_TRY(virt4(g, F, w.s_d, w.s_s, &ds, err));
    OZ_TRY(pointwise(g, CUDNN_POINTWISE_MUL, F, dp2, scale, NULL, ds, -1, err));

    /* dk = dS^T q (per query head, then summed over each group). */
    OZ_TRY(virt4(g, BF, w.sT_d, w.sT_s, &dsT, err));
    OZ_TRY(reshape(g, ds, dsT, err));
    if (gqa) {
        desc_t dkf = NULL;
        OZ_TRY(virt4(g, BF, w.hf_d, w.hf_s, &dkf, err));
        OZ_TRY(matmul_sized(g, dsT, q, dkf, skv, NULL, sq, err));
        OZ_TRY(reduction(g, CUDNN_REDUCE_TENSOR_ADD, dkf, dk, err));
    } else {
        OZ_TRY(matmul_sized(g, dsT, q, dk, skv, NULL, sq, err));
    }

    /* dq = dS k: k seen untransposed again (fp32, as the frontend leaves this view's type). */
    desc_t kr = NULL;
    OZ_TRY(virt4(g, F, w.kv_d, w.kv_s, &kr, err));
    OZ_TRY(reshape(g, kt, kr, err));
    if (deterministic) {
        /* Without the fp32 accumulator cuDNN picks its dP-in-workspace kernel: no atomics. */
        return matmul_sized(g, ds, kr, dq, sq, NULL, skv, err);
    }
    OZ_TRY(matmul_sized(g, ds, kr, dq_acc, sq, NULL, skv, err));
    return pointwise(g, CUDNN_POINTWISE_IDENTITY, F, dq_acc, NULL, NULL, dq, -1, err);
}

/* Finalizes the operation graph, asks cuDNN's heuristics for engine configurations (mode A, then
 * the fallback list) and keeps the first that finalizes into an execution plan; with
 * want_det, configurations cuDNN marks nondeterministic are skipped. */
static oz_status make_plan(oz_sdpa *s, graph *g, const char *what, int want_det, desc_t *plan, size_t *ws,
                           int64_t *engine, int *det, oz_err *err) {
    desc_t og = NULL;
    OZ_TRY(new_desc(g->p, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, &og, err));
    DNN(cudnnBackendSetAttribute(og, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, g->nops, g->ops));
    DNN(cudnnBackendSetAttribute(og, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &s->handle));
    DNN(cudnnBackendFinalize(og));

    char tried[256] = "";
    size_t used = 0;
    const cudnnBackendHeurMode_t modes[2] = {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK};
    for (int mi = 0; mi < 2; mi++) {
        desc_t heur = NULL;
        OZ_TRY(new_desc(g->p, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, &heur, err));
        DNN(cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                     &og));
        DNN(cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &modes[mi]));
        if (cudnnBackendFinalize(heur) != CUDNN_STATUS_SUCCESS) continue; /* no engine in this mode */
        int64_t count = 0;
        DNN(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count,
                                     NULL));
        if (count <= 0) continue;
        if (count > 16) count = 16; /* the best few are enough */
        desc_t cfgs[16] = {NULL};
        for (int64_t i = 0; i < count; i++) OZ_TRY(new_desc(g->p, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &cfgs[i], err));
        int64_t got = 0;
        DNN(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got,
                                     cfgs));
        for (int64_t i = 0; i < got; i++) {
            desc_t eng = NULL;
            OZ_TRY(new_desc(g->p, CUDNN_BACKEND_ENGINE_DESCRIPTOR, &eng, err));
            int64_t n = 0, index = -1, nnotes = 0;
            DNN(cudnnBackendGetAttribute(cfgs[i], CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n,
                                         &eng));
            DNN(cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n, &index));
            cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
            DNN(cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                         CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &nnotes, notes));
            int nondet = 0;
            for (int64_t j = 0; j < nnotes; j++) nondet |= notes[j] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC;
            if (want_det && nondet) {
                used += (size_t)snprintf(tried + used, used < sizeof tried ? sizeof tried - used : 0,
                                         " engine %lld: nondeterministic;", (long long)index);
                continue;
            }
            desc_t ep = NULL;
            DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &ep));
            cudnnStatus_t st =
                cudnnBackendSetAttribute(ep, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &s->handle);
            if (st == CUDNN_STATUS_SUCCESS)
                st = cudnnBackendSetAttribute(ep, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                                              CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfgs[i]);
            if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendFinalize(ep);
            if (st != CUDNN_STATUS_SUCCESS) {
                char last[96];
                last[0] = 0;
                cudnnGetLastErrorString(last, sizeof last);
                used += (size_t)snprintf(tried + used, used < sizeof tried ? sizeof tried - used : 0,
                                         " engine %lld: %s %s;", (long long)index, cudnnGetErrorString(st), last);
                cudnnBackendDestroyDescriptor(ep);
                continue;
            }
            if (g->p->ndescs == MAX_DESCS) {
                cudnnBackendDestroyDescriptor(ep);
                return oz_fail(err, OZ_ERR_INTERNAL, "cuda_sdpa: more than %d cuDNN descriptors in one plan",
                               MAX_DESCS);
            }
            g->p->descs[g->p->ndescs++] = ep;
            int64_t bytes = 0;
            DNN(cudnnBackendGetAttribute(ep, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n,
                                         &bytes));
            *plan = ep;
            *ws = (size_t)bytes;
            *engine = index;
            *det = !nondet;
            return OZ_OK;
        }
    }
    const oz_sdpa_shape *sh = &g->p->shape;
    return oz_fail(err, OZ_ERR_INPUT,
                   "cuDNN %zu has no engine for the attention %s (B %d, T %d, Hq %d, Hkv %d, hd %d, causal %d%s):%s",
                   s->version, what, sh->B, sh->T, sh->Hq, sh->Hkv, sh->hd, sh->causal,
                   want_det ? ", deterministic" : "", tried[0] ? tried : " the heuristics returned none");
}

static oz_status check_shape(const oz_sdpa_shape *sh, oz_err *err) {
    if (sh->B < 1 || sh->T < 1 || sh->Hq < 1 || sh->Hkv < 1 || sh->Hq % sh->Hkv != 0 || sh->hd < 8 || sh->hd > 128 ||
        sh->hd % 8 != 0 || (sh->causal != 0 && sh->causal != 1) || !(sh->scale >= 0.0f) || isinf(sh->scale))
        return oz_fail(
            err, OZ_ERR_INPUT,
            "cuda_sdpa: unsupported shape B %d, T %d, Hq %d, Hkv %d, hd %d, causal %d, scale %g (needs B, T >= "
            "1, Hkv dividing Hq, hd a multiple of 8 in [8, 128], causal 0 or 1, a finite scale >= 0)",
            sh->B, sh->T, sh->Hq, sh->Hkv, sh->hd, sh->causal, (double)sh->scale);
    return OZ_OK;
}

static oz_status find_plan(oz_sdpa *s, const oz_sdpa_shape *shape, sdpa_plan **out, oz_err *err) {
    OZ_TRY(check_shape(shape, err));
    oz_sdpa_shape key = *shape;
    if (key.scale == 0.0f) key.scale = 1.0f / sqrtf((float)key.hd);
    for (sdpa_plan *p = s->plans; p; p = p->next)
        if (memcmp(&p->shape, &key, sizeof key) == 0) {
            *out = p;
            return OZ_OK;
        }
    sdpa_plan *p = (sdpa_plan *)calloc(1, sizeof *p);
    if (!p) return oz_fail(err, OZ_ERR_NOMEM, "cuda_sdpa: out of host memory for a plan");
    p->shape = key;
    p->scale = key.scale;
    p->neg_inf = -INFINITY;
    p->one = 1.0f;
    p->fwd_engine = p->bwd_engine = -1;
    p->fwd_det = p->bwd_det = 1;
    p->pad = key.T > 1 && s->version <= SDPA_PAD_BUG_LAST && key.T % 128 != 0;
    oz_status st = OZ_OK;
    if (key.T > 1) {
        graph g;
        memset(&g, 0, sizeof g);
        g.p = p, g.version = s->version, g.next_uid = UID_VIRTUAL;
        st = build_fwd(&g, &key, err);
        if (st == OZ_OK)
            st = make_plan(s, &g, "forward", 0, &p->fwd, &p->cudnn_fwd_ws, &p->fwd_engine, &p->fwd_det, err);
        if (st == OZ_OK) {
            memset(&g, 0, sizeof g);
            g.p = p, g.version = s->version, g.next_uid = UID_VIRTUAL;
            st = build_bwd(&g, &key, s->deterministic, p->pad, err);
        }
        if (st == OZ_OK)
            st = make_plan(s, &g, "backward", s->deterministic, &p->bwd, &p->cudnn_bwd_ws, &p->bwd_engine, &p->bwd_det,
                           err);
    }
    if (st != OZ_OK) {
        plan_free(p);
        return st;
    }
    const size_t rows = (size_t)key.B * key.Hq * key.T;
    p->dsum_off = align256(p->cudnn_bwd_ws);
    p->dq_acc_off = p->dsum_off + align256(rows * sizeof(float));
    p->seq_off = p->dq_acc_off + (s->deterministic ? 0 : align256(rows * key.hd * sizeof(float)));
    p->bwd_ws = key.T == 1 ? 0 : p->seq_off + (p->pad ? 2 * (size_t)key.B * sizeof(int32_t) : 0);
    p->next = s->plans;
    s->plans = p;
    *out = p;
    return OZ_OK;
}

/* Runs one execution plan on the pointers given by uid. */
static oz_status execute(oz_sdpa *s, desc_t plan, int n, const int64_t *uids, void *const *ptrs, void *ws,
                         oz_err *err) {
    desc_t vp = NULL;
    DNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp));
    const char *what = NULL;
    cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
#define STEP(call) \
    if (st == CUDNN_STATUS_SUCCESS && (st = (call)) != CUDNN_STATUS_SUCCESS) what = #call
    STEP(cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids));
    STEP(cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, ptrs));
    STEP(cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws));
    STEP(cudnnBackendFinalize(vp));
    STEP(cudnnBackendExecute(s->handle, plan, vp));
#undef STEP
    oz_status r = st == CUDNN_STATUS_SUCCESS ? OZ_OK : cudnn_fail(err, st, what, __FILE__, __LINE__);
    cudnnBackendDestroyDescriptor(vp);
    return r;
}

static oz_status check_ptrs(const void *const *ptrs, int n, oz_err *err) {
    for (int i = 0; i < n; i++)
        if (!ptrs[i] || ((uintptr_t)ptrs[i] & 15u))
            return oz_fail(err, OZ_ERR_INPUT, "cuda_sdpa: argument %d is %s (every buffer must be 16-byte aligned)", i,
                           ptrs[i] ? "misaligned" : "NULL");
    return OZ_OK;
}

/* ------------------------------------------------------------------ T == 1 */

static __device__ float bf16f(uint16_t x) { return __uint_as_float((uint32_t)x << 16); }
static __device__ uint16_t f2bf16(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }

#define T1_THREADS 128 /* >= the largest hd */

/* One block per (query head, batch): out = v of the head's group, stats = scale * q.k, the dot
 * product summed in a fixed tree order. */
static __global__ void __launch_bounds__(T1_THREADS)
    t1_fwd_k(uint16_t *out, float *stats, const uint16_t *q, const uint16_t *k, const uint16_t *v, int Hq, int Hkv,
             int hd, float scale) {
    __shared__ float part[T1_THREADS];
    const int h = blockIdx.x, b = blockIdx.y, g = h / (Hq / Hkv), d = threadIdx.x;
    const size_t qi = ((size_t)b * Hq + h) * hd + d, ki = ((size_t)b * Hkv + g) * hd + d;
    part[d] = d < hd ? bf16f(q[qi]) * bf16f(k[ki]) : 0.0f;
    if (d < hd) out[qi] = v[ki];
    __syncthreads();
    for (int w = T1_THREADS / 2; w > 0; w /= 2) {
        if (d < w) part[d] += part[d + w];
        __syncthreads();
    }
    if (d == 0) stats[(size_t)b * Hq + h] = scale * part[0];
}

/* One block per (kv head, batch): dv = the sum over the group's query heads of dout, in head order. */
static __global__ void __launch_bounds__(T1_THREADS)
    t1_bwd_k(uint16_t *dv, const uint16_t *dout, int Hq, int Hkv, int hd) {
    const int g = blockIdx.x, b = blockIdx.y, d = threadIdx.x, G = Hq / Hkv;
    if (d >= hd) return;
    float acc = 0.0f;
    for (int j = 0; j < G; j++) acc += bf16f(dout[((size_t)b * Hq + (size_t)g * G + j) * hd + d]);
    dv[((size_t)b * Hkv + g) * hd + d] = f2bf16(acc);
}

/* The padding workaround's sequence lengths: n int32 values, all T. */
static __global__ void fill_i32_k(int32_t *x, int n, int32_t value) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) x[i] = value;
}

/* ------------------------------------------------------------------ API */

oz_status oz_sdpa_create(oz_sdpa **out, cudaStream_t stream, int deterministic, oz_err *err) {
    *out = NULL;
    const size_t version = cudnnGetVersion();
    if (version < SDPA_MIN_CUDNN)
        return oz_fail(err, OZ_ERR_INPUT,
                       "cuda_sdpa: cuDNN %zu is loaded; the fused attention needs %d or newer (older ones need "
                       "workarounds this code does not build)",
                       version, SDPA_MIN_CUDNN);
    oz_sdpa *s = (oz_sdpa *)calloc(1, sizeof *s);
    if (!s) return oz_fail(err, OZ_ERR_NOMEM, "cuda_sdpa: out of host memory");
    s->stream = stream;
    s->deterministic = deterministic != 0;
    s->version = version;
    cudnnStatus_t st = cudnnCreate(&s->handle);
    if (st != CUDNN_STATUS_SUCCESS) {
        free(s);
        return cudnn_fail(err, st, "cudnnCreate", __FILE__, __LINE__);
    }
    st = cudnnSetStream(s->handle, stream);
    if (st != CUDNN_STATUS_SUCCESS) {
        cudnnDestroy(s->handle);
        free(s);
        return cudnn_fail(err, st, "cudnnSetStream", __FILE__, __LINE__);
    }
    *out = s;
    return OZ_OK;
}

void oz_sdpa_destroy(oz_sdpa *s) {
    if (!s) return;
    while (s->plans) {
        sdpa_plan *next = s->plans->next;
        plan_free(s->plans);
        s->plans = next;
    }
    cudnnDestroy(s->handle);
    free(s);
}

oz_status oz_sdpa_plan(oz_sdpa *s, const oz_sdpa_shape *shape, oz_sdpa_info *info, oz_err *err) {
    sdpa_plan *p;
    OZ_TRY(find_plan(s, shape, &p, err));
    if (info) {
        info->fwd_workspace = p->cudnn_fwd_ws;
        info->bwd_workspace = p->bwd_ws;
        info->cudnn_fwd_workspace = p->cudnn_fwd_ws;
        info->cudnn_bwd_workspace = p->cudnn_bwd_ws;
        info->fwd_engine = p->fwd_engine;
        info->bwd_engine = p->bwd_engine;
        info->fwd_deterministic = p->fwd_det;
        info->bwd_deterministic = p->bwd_det;
    }
    return OZ_OK;
}

static oz_status check_ws(size_t need, const void *ws, size_t have, const char *what, oz_err *err) {
    if (have < need)
        return oz_fail(err, OZ_ERR_INPUT, "cuda_sdpa: the %s needs %zu bytes of workspace, %zu given", what, need,
                       have);
    if (need && (!ws || ((uintptr_t)ws & 255u)))
        return oz_fail(err, OZ_ERR_INPUT, "cuda_sdpa: the %s workspace must be 256-byte aligned", what);
    return OZ_OK;
}

oz_status oz_sdpa_fwd(oz_sdpa *s, const oz_sdpa_shape *shape, uint16_t *out, float *stats, const uint16_t *q,
                      const uint16_t *k, const uint16_t *v, void *workspace, size_t workspace_bytes, oz_err *err) {
    sdpa_plan *p;
    OZ_TRY(find_plan(s, shape, &p, err));
    void *ptrs[8] = {(void *)q, (void *)k, (void *)v, out, stats, &p->scale, &p->neg_inf};
    OZ_TRY(check_ptrs(ptrs, 5, err));
    const oz_sdpa_shape *sh = &p->shape;
    if (sh->T == 1) {
        t1_fwd_k<<<dim3(sh->Hq, sh->B), T1_THREADS, 0, s->stream>>>(out, stats, q, k, v, sh->Hq, sh->Hkv, sh->hd,
                                                                    sh->scale);
        RT(cudaGetLastError());
        return OZ_OK;
    }
    OZ_TRY(check_ws(p->cudnn_fwd_ws, workspace, workspace_bytes, "forward", err));
    const int64_t uids[7] = {UID_Q, UID_K, UID_V, UID_O, UID_STATS, UID_SCALE, UID_NEG_INF};
    return execute(s, p->fwd, sh->causal ? 7 : 6, uids, ptrs, workspace, err);
}

oz_status oz_sdpa_bwd(oz_sdpa *s, const oz_sdpa_shape *shape, uint16_t *dq, uint16_t *dk, uint16_t *dv,
                      const uint16_t *dout, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                      const uint16_t *out, const float *stats, void *workspace, size_t workspace_bytes,
                      oz_err *err) {
    sdpa_plan *p;
    OZ_TRY(find_plan(s, shape, &p, err));
    const oz_sdpa_shape *sh = &p->shape;
    void *ptrs[9] = {(void *)q, (void *)k, (void *)v, (void *)out, (void *)dout, (void *)stats, dq, dk, dv};
    OZ_TRY(check_ptrs(ptrs, 9, err));
    if (sh->T == 1) {
        RT(cudaMemsetAsync(dq, 0, (size_t)sh->B * sh->Hq * sh->hd * sizeof(uint16_t), s->stream));
        RT(cudaMemsetAsync(dk, 0, (size_t)sh->B * sh->Hkv * sh->hd * sizeof(uint16_t), s->stream));
        t1_bwd_k<<<dim3(sh->Hkv, sh->B), T1_THREADS, 0, s->stream>>>(dv, dout, sh->Hq, sh->Hkv, sh->hd);
        RT(cudaGetLastError());
        return OZ_OK;
    }
    OZ_TRY(check_ws(p->bwd_ws, workspace, workspace_bytes, "backward", err));
    char *ws = (char *)workspace;
    int64_t uids[16] = {UID_Q, UID_K, UID_V, UID_O, UID_DO, UID_STATS, UID_DQ, UID_DK, UID_DV,
                        UID_SCALE, UID_ONE, UID_DSUM};
    void *all[16];
    memcpy(all, ptrs, 9 * sizeof *ptrs);
    all[9] = &p->scale, all[10] = &p->one, all[11] = ws + p->dsum_off;
    int n = 12;
    if (sh->causal || p->pad) uids[n] = UID_NEG_INF, all[n++] = &p->neg_inf;
    if (!s->deterministic) uids[n] = UID_DQ_ACC, all[n++] = ws + p->dq_acc_off;
    if (p->pad) {
        int32_t *seq = (int32_t *)(ws + p->seq_off);
        fill_i32_k<<<1, 256, 0, s->stream>>>(seq, 2 * sh->B, sh->T); /* the workspace is scratch: every call */
        RT(cudaGetLastError());
        uids[n] = UID_SEQ_Q, all[n++] = seq;
        uids[n] = UID_SEQ_KV, all[n++] = seq + sh->B;
    }
    return execute(s, p->bwd, n, uids, all, workspace, err);
}
