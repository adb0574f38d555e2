/* Forward and backward in bf16 (oz_llama_shape.precision == OZ_PREC_BF16): forward.c's model on
 * the backend's bf16 ops, for the dense model with fp32 master weights.
 *
 * What is bf16: the layer inputs and outputs, every activation the backward reads (norm outputs,
 * q, k, v after RoPE, the attention output, the residual after attention, gate, up and the MLP
 * hidden), their gradients, and the copy of the weights the GEMMs and norms read (params16,
 * rounded to nearest from the fp32 weights at the start of every forward, so an update, a
 * write_param or a hand-off's immediate update is always seen). What is fp32: the master weights
 * (the optimizer updates them through the weights view, as in fp32), every weight gradient
 * (gemm_bf16 with an fp32 C and beta 1, so micro-batches accumulate in fp32), the norms' 1/rms,
 * the attention's log-sum-exp, the logits and the loss (gemm_bf16 writes fp32 logits, the fp32
 * cross-entropy turns them into their gradient, which is rounded once for the head's two GEMMs).
 *
 * Each op rounds its output once; a residual add is a GEMM with beta 1 (h = x + att o^T formed in
 * fp32, rounded once), and a norm's backward adds into the residual gradient with one rounding.
 * The buffers and their aliases are list_buffers_bf16's; the gradient events are forward.c's. */
#include <stdlib.h>
#include <string.h>

#include "model/llama_internal.h"

/* One matrix's bf16 weights in params16: out x in, zero-padded to out16 x in16 (the MLP's hidden
 * side rounded up to 8, oz_param_info.rows16 / ld16; rows in16 apart). The GEMMs run on the padded
 * shape; the MLP's gate, up and hidden activations have ffn16 columns, whose padding is zeros
 * (zero weight rows give zero outputs, swiglu(0, 0) = 0, and a zero weight column a zero
 * gradient), so every sum is the unpadded one. */
typedef struct {
    const uint16_t *w;
    int out, in, out16, in16;
} lin16;

typedef struct {
    const uint16_t *attn_norm, *mlp_norm;
    lin16 m[OZ_LLAMA_MATRICES];
} layer16;

static const uint16_t *param16(const oz_llama *m, int i) { return m->params16 + m->layout.params[i].offset16; }

static layer16 layer_weights16(const oz_llama *m, int l) {
    const oz_param_layout *lay = &m->layout;
    layer16 w;
    memset(&w, 0, sizeof w);
    for (int i = lay->layer_first[l]; i < lay->layer_first[l + 1]; i++) {
        const oz_param_info *p = &lay->params[i];
        if (p->kind == OZ_P_ATTN_NORM) w.attn_norm = param16(m, i);
        else if (p->kind == OZ_P_MLP_NORM) w.mlp_norm = param16(m, i);
        else w.m[p->matrix] = (lin16){param16(m, i), (int)p->shape[0], (int)p->shape[1], (int)p->rows16, (int)p->ld16};
    }
    return w;
}

/* y (rows, out16) = bf16(beta y + x W^T), x (rows, in16). */
static void lin_fwd16(oz_backend *be, const lin16 *w, const uint16_t *x, int rows, float beta, uint16_t *y) {
    be->gemm_bf16(be, 0, 1, rows, w->out16, w->in16, 1.0f, x, w->in16, w->w, w->in16, beta, y, w->out16, 1);
}

/* Backward of y = x W^T: dW += dy^T x in fp32 (unless frozen), then dx = bf16(beta_dx dx + dy W),
 * on the padded shape (dy (rows, out16), x and dx (rows, in16)). dx may be x's own buffer
 * (down_proj's): dW reads x before dx is written. A padded matrix forms dW on its padded shape in
 * m->dw16_pad and adds the real out x in part in. */
static void lin_bwd16(oz_llama *m, const lin16 *w, float *dw, const uint16_t *x, const uint16_t *dy, int rows,
                      float beta_dx, uint16_t *dx) {
    oz_backend *be = m->be;
    if (dw && (w->out16 != w->out || w->in16 != w->in)) {
        be->gemm_bf16(be, 1, 0, w->out16, w->in16, rows, 1.0f, dy, w->out16, x, w->in16, 0.0f, m->dw16_pad, w->in16, 0);
        be->add_2d(be, dw, (size_t)w->in, m->dw16_pad, (size_t)w->in16, (size_t)w->out, (size_t)w->in);
    } else if (dw) {
        be->gemm_bf16(be, 1, 0, w->out, w->in, rows, 1.0f, dy, w->out, x, w->in, 1.0f, dw, w->in, 0);
    }
    be->gemm_bf16(be, 0, 0, rows, w->in16, w->out16, 1.0f, dy, w->out16, w->w, w->in16, beta_dx, dx, w->in16, 1);
}

/* Layer l forward from a->x into a's buffers and out (the next layer's input). */
static void layer_forward16(oz_llama *m, int l, layer_acts16 *a, uint16_t *out, const oz_ll_dims *g) {
    oz_backend *be = m->be;
    const layer16 w = layer_weights16(m, l);
    const int N = g->N, d = g->d;
    const float eps = m->cfg.rms_norm_eps;
    be->rmsnorm_fwd_bf16(be, a->ln1, a->rstd1, a->x, w.attn_norm, N, d, eps);
    lin_fwd16(be, &w.m[OZ_M_Q], a->ln1, N, 0.0f, a->q);
    lin_fwd16(be, &w.m[OZ_M_K], a->ln1, N, 0.0f, a->k);
    lin_fwd16(be, &w.m[OZ_M_V], a->ln1, N, 0.0f, a->v);
    be->rope_bf16(be, a->q, m->rope_cos, m->rope_sin, g->B, g->T, g->Hq, g->hd, 0, 0);
    be->rope_bf16(be, a->k, m->rope_cos, m->rope_sin, g->B, g->T, g->Hkv, g->hd, 0, 0);
    be->attention_fwd_bf16(be, a->att, a->lse, a->q, a->k, a->v, g->B, g->T, g->Hq, g->Hkv, g->hd, m->attn_ws,
                           m->attn_ws_bytes);
    be->copy(be, a->h, a->x, (size_t)N * d * sizeof(uint16_t));
    lin_fwd16(be, &w.m[OZ_M_O], a->att, N, 1.0f, a->h);
    be->rmsnorm_fwd_bf16(be, a->ln2, a->rstd2, a->h, w.mlp_norm, N, d, eps);
    be->copy(be, out, a->h, (size_t)N * d * sizeof(uint16_t));
    lin_fwd16(be, &w.m[OZ_M_GATE], a->ln2, N, 0.0f, a->gate);
    lin_fwd16(be, &w.m[OZ_M_UP], a->ln2, N, 0.0f, a->up);
    /* Over the padded rows: the padding columns hold whatever they hold and no GEMM reads them. */
    be->swiglu_fwd_bf16(be, a->mlp, a->gate, a->up, (size_t)N * m->ffn16);
    lin_fwd16(be, &w.m[OZ_M_DOWN], a->mlp, N, 1.0f, out);
}

/* Layer l backward: m->dx16 holds dL/d(layer output) and ends holding dL/d(layer input); forward.c's
 * order, gradient groups and aliases (dL/d(att) and dL/dq in the MLP norm's output and the
 * attention residual, dL/dk and dL/dv in gate and up, all dead by then). */
static void layer_backward16(oz_llama *m, int l, layer_acts16 *a, const oz_ll_dims *g) {
    oz_backend *be = m->be;
    const layer16 w = layer_weights16(m, l);
    const layer_grads gw = oz_ll_layer_grads(m, l);
    const int N = g->N, d = g->d;
    if (m->layer_grads && !m->shape.grads.immediate) be->fill(be, m->layer_grads, 0.0f, m->layer_grad_n);
    /* MLP: dL/d(hidden) over the hidden (down's dW reads it first), then gate's and up's
     * gradients over their inputs (swiglu_bwd reads each element before it writes it). */
    /* The MLP hidden and the MLP norm's output again (the forward kept neither): the same ops on
     * the same inputs, so the same values. */
    be->swiglu_fwd_bf16(be, a->mlp, a->gate, a->up, (size_t)N * m->ffn16);
    oz_ll_group_begin(m, l, OZ_M_DOWN);
    lin_bwd16(m, &w.m[OZ_M_DOWN], gw.m[OZ_M_DOWN].w, a->mlp, m->dx16, N, 0.0f, a->mlp);
    oz_ll_group_end(m, l, OZ_M_DOWN);
    be->swiglu_bwd_bf16(be, a->gate, a->up, a->mlp, a->gate, a->up, (size_t)N * m->ffn16);
    be->rmsnorm_fwd_bf16(be, a->ln2, a->rstd2, a->h, w.mlp_norm, N, d, m->cfg.rms_norm_eps);
    oz_ll_group_begin(m, l, OZ_M_GATE);
    lin_bwd16(m, &w.m[OZ_M_GATE], gw.m[OZ_M_GATE].w, a->ln2, a->gate, N, 0.0f, m->dln16);
    oz_ll_group_end(m, l, OZ_M_GATE);
    oz_ll_group_begin(m, l, OZ_M_UP);
    lin_bwd16(m, &w.m[OZ_M_UP], gw.m[OZ_M_UP].w, a->ln2, a->up, N, 1.0f, m->dln16);
    oz_ll_group_end(m, l, OZ_M_UP);
    /* The residual: dL/dh = dL/d(out) + the MLP norm's part, one rounding. */
    oz_ll_group_begin(m, l, GRP_MLP_NORM);
    be->rmsnorm_bwd_bf16(be, m->dx16, gw.mlp_norm, m->dln16, a->h, w.mlp_norm, a->rstd2, N, d, 1);
    oz_ll_group_end(m, l, GRP_MLP_NORM);
    uint16_t *datt = m->q_alias ? a->ln2 : m->datt16, *dq = m->q_alias ? a->h : m->dq16;
    uint16_t *dk = m->kv_alias ? a->gate : m->dk16, *dv = m->kv_alias ? a->up : m->dv16;
    oz_ll_group_begin(m, l, OZ_M_O);
    lin_bwd16(m, &w.m[OZ_M_O], gw.m[OZ_M_O].w, a->att, m->dx16, N, 0.0f, datt);
    oz_ll_group_end(m, l, OZ_M_O);
    be->attention_bwd_bf16(be, dq, dk, dv, datt, a->q, a->k, a->v, a->att, a->lse, g->B, g->T, g->Hq, g->Hkv, g->hd,
                           m->attn_ws, m->attn_ws_bytes);
    be->rope_bf16(be, dq, m->rope_cos, m->rope_sin, g->B, g->T, g->Hq, g->hd, 0, 1);
    be->rope_bf16(be, dk, m->rope_cos, m->rope_sin, g->B, g->T, g->Hkv, g->hd, 0, 1);
    /* The attention norm's output again, now that dL/d(att) (which may sit in that buffer) is spent. */
    be->rmsnorm_fwd_bf16(be, a->ln1, a->rstd1, a->x, w.attn_norm, N, d, m->cfg.rms_norm_eps);
    static const int qkv[3] = {OZ_M_Q, OZ_M_K, OZ_M_V};
    uint16_t *dqkv[3] = {dq, dk, dv};
    for (int k = 0; k < 3; k++) {
        oz_ll_group_begin(m, l, qkv[k]);
        lin_bwd16(m, &w.m[qkv[k]], gw.m[qkv[k]].w, a->ln1, dqkv[k], N, k ? 1.0f : 0.0f, m->dln16);
        oz_ll_group_end(m, l, qkv[k]);
    }
    oz_ll_group_begin(m, l, GRP_ATTN_NORM);
    be->rmsnorm_bwd_bf16(be, m->dx16, gw.attn_norm, m->dln16, a->x, w.attn_norm, a->rstd1, N, d, 1);
    oz_ll_group_end(m, l, GRP_ATTN_NORM);
}

/* LM head + cross-entropy, in chunks of rows: fp32 logits from the bf16 GEMM, the fp32 loss and
 * its gradient in place; in training the gradient rounded once feeds dL/d(final norm output)
 * (into dln16) and the head's fp32 weight gradient. */
static oz_status head16(oz_llama *m, const oz_llama_batch *b, float grad_scale, const oz_ll_dims *g,
                        double *loss_sum, long *n_targets, oz_err *err) {
    oz_backend *be = m->be;
    const int N = g->N, d = g->d, V = g->V, hi = oz_ll_head_index(m);
    const uint16_t *w = param16(m, hi);
    float *dhead = oz_llama_grad(m, hi); /* NULL when the head is frozen */
    if (b->targets) be->to_device(be, m->targets, b->targets, (size_t)N * sizeof(int32_t));
    /* In chunks of head16_rows tokens (buffers.c): no tokens x vocabulary tensor exists. Each
     * chunk's rows are independent, and the head's gradient accumulates over them in fp32. */
    for (int r0 = 0; r0 < N; r0 += m->head16_rows) {
        const int R = N - r0 < m->head16_rows ? N - r0 : m->head16_rows;
        const uint16_t *x = m->lnf16 + (size_t)r0 * d;
        be->gemm_bf16(be, 0, 1, R, V, d, 1.0f, x, d, w, d, 0.0f, m->logits, V, 0);
        if (b->logits_out) be->to_host(be, b->logits_out + (size_t)r0 * V, m->logits, (size_t)R * V * sizeof(float));
        if (!b->targets) continue;
        be->cross_entropy(be, m->logits, m->losses + r0, m->targets + r0, R, V, grad_scale);
        if (grad_scale == 0.0f) continue;
        be->to_bf16(be, m->dlogits16, m->logits, (size_t)R * V);
        be->gemm_bf16(be, 0, 0, R, d, V, 1.0f, m->dlogits16, V, w, d, 0.0f, m->dln16 + (size_t)r0 * d, d, 1);
        if (dhead) be->gemm_bf16(be, 1, 0, V, d, R, 1.0f, m->dlogits16, V, x, d, 1.0f, dhead, d, 0);
    }
    return oz_ll_sum_losses(m, b, loss_sum, n_targets, err);
}

/* params16 = bf16(params): one conversion per run of tensors that sit at the same distance in both
 * layouts (all of them when no rows are padded), a strided one per padded matrix. */
static void round_weights16(oz_llama *m) {
    oz_backend *be = m->be;
    const oz_param_layout *lay = &m->layout;
    int i = 0;
    while (i < lay->n) {
        const oz_param_info *p = &lay->params[i];
        if (p->ndim == 2 && p->ld16 != p->shape[1]) { /* the padding (zeros) is not written */
            be->to_bf16_2d(be, m->params16 + p->offset16, (size_t)p->ld16, m->params + p->offset,
                           (size_t)p->shape[1], (size_t)p->shape[0], (size_t)p->shape[1]);
            i++;
            continue;
        }
        /* Extend while the next tensor's rows are as long in both and it sits at the same shift
         * (padded rows at a matrix's end do not move its own start). */
        int j = i + 1;
        while (j < lay->n && !(lay->params[j].ndim == 2 && lay->params[j].ld16 != lay->params[j].shape[1]) &&
               lay->params[j].offset16 - lay->params[j].offset == p->offset16 - p->offset)
            j++;
        const oz_param_info *last = &lay->params[j - 1];
        be->to_bf16(be, m->params16 + p->offset16, m->params + p->offset, last->offset + last->numel - p->offset);
        i = j;
    }
}

static oz_status forward16(oz_llama *m, const oz_llama_batch *b, float grad_scale, double *loss_sum,
                           long *n_targets, oz_err *err) {
    OZ_TRY(oz_ll_check_batch(m, b, err));
    oz_backend *be = m->be;
    const oz_ll_dims g = oz_ll_dims_of(m, b->B, b->T);
    /* The fp32 weights may have changed since the last pass (an update, oz_llama_write_param);
     * bf16 weights are params16 itself. */
    if (!m->shape.bf16_weights) round_weights16(m);
    be->to_device(be, m->ids, b->ids, (size_t)g.N * sizeof(int32_t));
    be->embedding_fwd_bf16out(be, m->xs16[0], param16(m, 0), m->ids, g.N, g.d);
    for (int l = 0; l < g.L; l++) layer_forward16(m, l, &m->acts16[l], m->xs16[l + 1], &g);
    be->rmsnorm_fwd_bf16(be, m->lnf16, m->rstdf, m->xs16[g.L], param16(m, oz_ll_final_norm_index(m)), g.N, g.d,
                         m->cfg.rms_norm_eps);
    return head16(m, b, grad_scale, &g, loss_sum, n_targets, err);
}

oz_status oz_ll_forward_bf16(oz_llama *m, const oz_llama_batch *b, double *loss_sum, long *n_targets, oz_err *err) {
    return forward16(m, b, 0.0f, loss_sum, n_targets, err);
}

oz_status oz_ll_forward_backward_bf16(oz_llama *m, const oz_llama_batch *b, float grad_scale, double *loss_sum,
                                      long *n_targets, oz_err *err) {
    oz_backend *be = m->be;
    const oz_ll_dims g = oz_ll_dims_of(m, b->B, b->T);
    const int fn = oz_ll_final_norm_index(m);
    /* Per-tensor mode: every call starts from zero (each gradient is handed off within it). */
    if (m->shape.grads.immediate && m->outer_grads)
        be->fill(be, m->outer_grads, 0.0f, oz_ll_outer_grad_floats(m));
    OZ_TRY(forward16(m, b, grad_scale, loss_sum, n_targets, err));
    /* The head's part ran inside the forward: dln16 holds dL/d(final norm output). */
    float *dnorm = oz_llama_grad(m, fn);
    be->rmsnorm_bwd_bf16(be, m->dx16, dnorm ? dnorm : m->norm_sink, m->dln16, m->xs16[g.L], param16(m, fn), m->rstdf,
                         g.N, g.d, 0);
    oz_ll_after_head(m);
    for (int l = g.L - 1; l >= 0; l--) {
        layer_backward16(m, l, &m->acts16[l], &g);
        if (m->shape.grads.per_layer && !m->shape.grads.immediate) oz_ll_emit_buffered(m, l, false);
    }
    /* A frozen embedding needs nothing from here. The scatter is the fp32 op on dx widened (exact). */
    float *demb = oz_llama_grad(m, 0);
    if (demb) {
        be->from_bf16(be, m->demb_in, m->dx16, (size_t)g.N * g.d);
        be->embedding_bwd(be, demb, m->demb_in, m->ids, g.N, g.d, g.V);
    }
    oz_ll_after_embedding(m);
    return OZ_OK;
}
