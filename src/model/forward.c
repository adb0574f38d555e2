/* Forward and hand-written backward over the backend op table, and the gradient events the
 * backward emits (model/grad_sink.h).
 *
 * Per layer l the forward keeps what the backward needs: the layer input x[l], the two norm outputs
 * and their 1/rms, q/k (after RoPE), v, the attention output and its log-sum-exp, the residual h
 * after attention, and gate/up/silu(gate)*up. The backward overwrites gate/up with their gradients
 * (they are dead by then), so no second (N, intermediate) buffer is needed. With --precision bf16
 * the same model runs in forward_bf16.c (dispatched from the two entry points at the end). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/llama_internal.h"
#include "numeric/quant.h"

void oz_llama_set_grad_sink(oz_llama *m, oz_grad_sink sink) { m->sink = sink; }

static void emit(oz_llama *m, const oz_grad_event *ev) {
    if (m->sink.take) m->sink.take(m->sink.self, ev);
}

/* Tensor i's gradient as it stands in the model's buffer. */
static void emit_tensor(oz_llama *m, int i, bool scratch, bool partial) {
    oz_grad_event ev = {.form = OZ_GRAD_TENSOR, .index = i, .grad = oz_llama_grad(m, i), .scratch = scratch,
                        .partial = partial};
    emit(m, &ev);
}

static void emit_rows(oz_llama *m, int i, int row0, int rows, float *grad) {
    oz_grad_event ev = {.form = OZ_GRAD_ROWS, .index = i, .grad = grad, .row0 = row0, .rows = rows};
    emit(m, &ev);
}

static void emit_factors(oz_llama *m, int i, const float *dy, int ldy, const float *x, int ldx, int rows) {
    oz_grad_event ev = {.form = OZ_GRAD_FACTORS, .index = i, .dy = dy, .ldy = ldy, .x = x, .ldx = ldx, .rows = rows};
    emit(m, &ev);
}

/* Every trainable tensor whose gradient lives in a buffer: layer l's (l >= 0), the non-layer ones
 * (l == -1), or all (l == -2). */
void oz_ll_emit_buffered(oz_llama *m, int l, bool partial) {
    const oz_param_layout *lay = &m->layout;
    for (int i = 0; i < lay->n; i++) {
        const oz_param_info *p = &lay->params[i];
        if (p->frozen || oz_llama_grad_in_blocks(m, i) || (l != -2 && p->layer != l)) continue;
        emit_tensor(m, i, false, partial);
    }
}

void oz_llama_emit_accumulated(oz_llama *m) {
    if (!m->shape.with_grads || m->shape.grads.immediate) return;
    oz_ll_emit_buffered(m, m->shape.grads.per_layer ? -1 : -2, false);
}

static layer_weights layer_params(oz_llama *m, int l) {
    const oz_param_layout *lay = &m->layout;
    layer_weights w;
    memset(&w, 0, sizeof w);
    w.layer = l;
    for (int i = lay->layer_first[l]; i < lay->layer_first[l + 1]; i++) {
        const oz_param_info *p = &lay->params[i];
        const float *ptr = m->params ? m->params + p->offset : NULL;
        if (p->kind == OZ_P_ATTN_NORM) w.attn_norm = oz_llama_param(m, i);
        else if (p->kind == OZ_P_MLP_NORM) w.mlp_norm = oz_llama_param(m, i);
        else {
            lin *x = &w.m[p->matrix];
            if (p->factor == 0) x->w = ptr, x->out = (int)p->shape[0], x->in = (int)p->shape[1];
            else if (p->factor == 1) x->a = ptr, x->R = (int)p->shape[0], x->in = (int)p->shape[1];
            else x->b = ptr, x->out = (int)p->shape[0];
        }
    }
    for (int j = 0; j < OZ_LLAMA_MATRICES; j++) w.m[j].r = m->active[l * OZ_LLAMA_MATRICES + j];
    return w;
}

/* INT8 parameter i dequantized into dst (numel floats). The forward and backward turn codes into
 * weights only here. */
static void dequantize_param(oz_llama *m, int i, float *dst) {
    uint8_t *q, *z;
    float *sc;
    if (oz_ll_param_int8(m, i, &q, &sc, &z)) m->be->i8_dequantize(m->be, q, sc, z, m->layout.params[i].numel, dst);
}

/* Matrix j of w's layer, ready for the GEMMs that read its weights. In INT8 mode a dense matrix is
 * dequantized a block of rows at a time by its GEMMs (deq_rows) and a factor pair whole into the
 * matrix scratch unless that already holds it, so every such GEMM must take its matrix from here
 * (another matrix may have replaced it since the last call). */
static const lin *use_matrix(oz_llama *m, layer_weights *w, int j) {
    lin *x = &w->m[j];
    if (m->params) return x;
    int i = oz_llama_matrix_index(&m->layout, w->layer, j);
    const oz_param_info *p = &m->layout.params[i];
    if (!p->factor) { /* dequantized a block of rows at a time inside its GEMMs */
        x->w = NULL;
        x->blk_m = m;
        x->blk_index = i;
        x->blk_rows = oz_ll_deq_block_rows(x->out, x->in, m->shape.int8_block_floats);
        return x;
    }
    size_t b_off = aligned16(p->numel); /* a factor pair: B after A */
    x->a = m->wmat, x->b = m->wmat + b_off;
    int id = w->layer * OZ_LLAMA_MATRICES + j;
    if (m->wmat_id != id) {
        dequantize_param(m, i, m->wmat);
        if (p->factor) dequantize_param(m, i + 1, m->wmat + b_off);
        m->wmat_id = id;
    }
    return x;
}

/* Pointers to layer l's gradient tensors (in the full buffer, or the per-layer one); NULL for
 * frozen matrices, the sink for frozen norms (the norm backward always writes a dw). */
layer_grads oz_ll_layer_grads(oz_llama *m, int l) {
    const oz_param_layout *lay = &m->layout;
    layer_grads g;
    memset(&g, 0, sizeof g);
    for (int i = lay->layer_first[l]; i < lay->layer_first[l + 1]; i++) {
        const oz_param_info *p = &lay->params[i];
        float *ptr = oz_llama_grad(m, i);
        if (p->kind == OZ_P_ATTN_NORM) g.attn_norm = ptr ? ptr : m->norm_sink;
        else if (p->kind == OZ_P_MLP_NORM) g.mlp_norm = ptr ? ptr : m->norm_sink;
        else if (p->factor == 0) {
            g.m[p->matrix].w = ptr;
            if (oz_llama_grad_factored(m, i)) g.m[p->matrix].fm = m, g.m[p->matrix].findex = i;
        }
        else if (p->factor == 1) g.m[p->matrix].a = ptr;
        else g.m[p->matrix].b = ptr;
    }
    return g;
}

/* ---- one linear map y = x W^T, dense or through the factors */

/* t (rows, r) = x (rows, in) A_r^T: the low-rank intermediate. */
static void lr_down(oz_backend *be, const lin *w, const float *x, int rows, float *t) {
    be->gemm(be, 0, 1, rows, w->r, w->in, 1.0f, x, w->in, w->a, w->in, 0.0f, t, w->r);
}

/* Rows [r0, r0 + n) of an INT8 dense matrix, dequantized into its model's matrix scratch (which
 * then caches nothing else). */
static const float *deq_rows(const lin *w, int r0, int n) {
    oz_llama *m = w->blk_m;
    uint8_t *q = NULL, *z = NULL;
    float *sc = NULL;
    oz_ll_param_int8(m, w->blk_index, &q, &sc, &z);
    size_t off = (size_t)r0 * w->in, g0 = off / OZ_QW_GROUP;
    m->wmat_id = -1;
    m->be->i8_dequantize(m->be, q + off, sc + g0, z + g0, (size_t)n * w->in, m->wmat);
    return m->wmat;
}

/* y (rows, out) = beta y + x W^T, or beta y + t B_r^T for a low-rank matrix (t from lr_down). B's
 * row stride stays R: its first r columns are read in place. */
static void lin_apply(oz_backend *be, const lin *w, const float *x, const float *t, int rows, float beta,
                      float *y) {
    if (w->blk_m) { /* y's columns [r0, r0 + n) from W's rows [r0, r0 + n) */
        int step = w->blk_rows;
        for (int r0 = 0; r0 < w->out; r0 += step) {
            int n = w->out - r0 < step ? w->out - r0 : step;
            be->gemm(be, 0, 1, rows, n, w->in, 1.0f, x, w->in, deq_rows(w, r0, n), w->in, beta, y + r0, w->out);
        }
    } else if (!w->a) be->gemm(be, 0, 1, rows, w->out, w->in, 1.0f, x, w->in, w->w, w->in, beta, y, w->out);
    else be->gemm(be, 0, 1, rows, w->out, w->r, 1.0f, t, w->r, w->b, w->R, beta, y, w->out);
}

static void lin_fwd(oz_backend *be, const lin *w, const float *x, float *t, int rows, float beta, float *y) {
    if (w->a) lr_down(be, w, x, rows, t);
    lin_apply(be, w, x, t, rows, beta, y);
}

/* Backward of y = x W^T: dx = beta_dx dx + dy W, and the weight gradients accumulate (unless
 * frozen). Low-rank: dt = dy B_r, dB_r += dy^T t, dA_r += dt^T x, dx = dt A_r; the inactive parts'
 * gradients are never touched, so they stay 0. dt is scratch of rows x r. */
static void lin_bwd(oz_backend *be, const lin *w, const lin_grad *gw, const float *x, const float *t,
                    const float *dy, int rows, float *dt, float beta_dx, float *dx) {
    /* dx may be x's own buffer (down_proj writes its dX over the MLP hidden it no longer needs):
     * every read of x comes before dx is written. */
    if (!w->a) {
        if (gw->w) be->gemm(be, 1, 0, w->out, w->in, rows, 1.0f, dy, w->out, x, w->in, 1.0f, gw->w, w->in);
        /* Factored: the gradient dy^T x goes out as its factors, before dx may overwrite x. */
        if (gw->fm) emit_factors(gw->fm, gw->findex, dy, w->out, x, w->in, rows);
        if (!w->blk_m) {
            be->gemm(be, 0, 0, rows, w->in, w->out, 1.0f, dy, w->out, w->w, w->in, beta_dx, dx, w->in);
            return;
        }
        /* dx = sum over W's row blocks of dy's matching columns times the block */
        int step = w->blk_rows;
        for (int r0 = 0; r0 < w->out; r0 += step) {
            int n = w->out - r0 < step ? w->out - r0 : step;
            be->gemm(be, 0, 0, rows, w->in, n, 1.0f, dy + r0, w->out, deq_rows(w, r0, n), w->in,
                     r0 == 0 ? beta_dx : 1.0f, dx, w->in);
        }
        return;
    }
    int r = w->r;
    be->gemm(be, 0, 0, rows, r, w->out, 1.0f, dy, w->out, w->b, w->R, 0.0f, dt, r);
    if (gw->b) be->gemm(be, 1, 0, w->out, r, rows, 1.0f, dy, w->out, t, r, 1.0f, gw->b, w->R);
    if (gw->a) be->gemm(be, 1, 0, r, w->in, rows, 1.0f, dt, r, x, w->in, 1.0f, gw->a, w->in);
    be->gemm(be, 0, 0, rows, w->in, r, 1.0f, dt, r, w->a, w->in, beta_dx, dx, w->in);
}

oz_status oz_ll_check_batch(const oz_llama *m, const oz_llama_batch *b, oz_err *err) {
    if (b->B <= 0 || b->T <= 0 || b->B > m->shape.batch || b->T > m->shape.seq)
        return oz_fail(err, OZ_ERR_INTERNAL, "batch (%d, %d) exceeds the model's buffers (%d, %d)", b->B, b->T,
                       m->shape.batch, m->shape.seq);
    size_t N = (size_t)b->B * b->T;
    for (size_t i = 0; i < N; i++) {
        if (b->ids[i] < 0 || b->ids[i] >= m->cfg.vocab_size)
            return oz_fail(err, OZ_ERR_INPUT, "token id %d at position %zu is outside the vocabulary (%d)",
                           b->ids[i], i, m->cfg.vocab_size);
        if (b->targets && b->targets[i] >= m->cfg.vocab_size)
            return oz_fail(err, OZ_ERR_INPUT, "target id %d at position %zu is outside the vocabulary (%d)",
                           b->targets[i], i, m->cfg.vocab_size);
    }
    return OZ_OK;
}

oz_ll_dims oz_ll_dims_of(const oz_llama *m, int B, int T) {
    const oz_llama_config *c = &m->cfg;
    oz_ll_dims g = {B, T, B * T, c->hidden_size, c->intermediate_size, c->vocab_size, c->head_dim,
                    c->num_attention_heads, c->num_key_value_heads, c->num_attention_heads * c->head_dim,
                    c->num_key_value_heads * c->head_dim, c->num_hidden_layers};
    return g;
}

/* Rows [r0, r1) of chunk i when n rows are split into `chunks` pieces whose sizes differ by at
 * most one (none is empty while chunks <= n; no piece exceeds ceil(n / chunks), the buffer size). */
static void chunk_rows(int n, int chunks, int i, int *r0, int *r1) {
    *r0 = (int)((long)i * n / chunks);
    *r1 = (int)((long)(i + 1) * n / chunks);
}

/* One mini-sequence of the MLP's intermediates: gate, up and silu(gate)*up of `rows` rows of the
 * MLP norm's output, into the chunk buffers (and down's low-rank intermediate of that chunk). */
static void mlp_chunk_forward(oz_llama *m, layer_weights *w, const float *xin, int rows) {
    oz_backend *be = m->be;
    int F = m->cfg.intermediate_size;
    lin_fwd(be, use_matrix(m, w, OZ_M_GATE), xin, m->ct[OZ_M_GATE], rows, 0.0f, m->cgate);
    lin_fwd(be, use_matrix(m, w, OZ_M_UP), xin, m->ct[OZ_M_UP], rows, 0.0f, m->cup);
    be->swiglu_fwd(be, m->cmlp, m->cgate, m->cup, (size_t)rows * F);
    if (w->m[OZ_M_DOWN].R) lr_down(be, use_matrix(m, w, OZ_M_DOWN), m->cmlp, rows, m->ct[OZ_M_DOWN]);
}

/* Layer l forward from a->x into a's buffers and out (the next layer's input). recompute: the
 * backward's rebuild of the layer's activations, which needs no output: with mini-sequences the
 * MLP is left to the backward's chunk loop (which recomputes its intermediates anyway), without
 * them its intermediates are computed but not down_proj's product (only its low-rank
 * intermediate, which the backward reads). */
static void layer_forward(oz_llama *m, int l, layer_acts *a, float *out, const oz_ll_dims *g, bool recompute) {
    oz_backend *be = m->be;
    const oz_llama_config *c = &m->cfg;
    layer_weights w = layer_params(m, l);
    int N = g->N, d = g->d, F = g->F;
    be->rmsnorm_fwd(be, a->ln1, a->rstd1, a->x, w.attn_norm, N, d, c->rms_norm_eps);
    lin_fwd(be, use_matrix(m, &w, OZ_M_Q), a->ln1, a->t[OZ_M_Q], N, 0.0f, a->q);
    lin_fwd(be, use_matrix(m, &w, OZ_M_K), a->ln1, a->t[OZ_M_K], N, 0.0f, a->k);
    lin_fwd(be, use_matrix(m, &w, OZ_M_V), a->ln1, a->t[OZ_M_V], N, 0.0f, a->v);
    be->rope(be, a->q, m->rope_cos, m->rope_sin, g->B, g->T, g->Hq, g->hd, 0, 0);
    be->rope(be, a->k, m->rope_cos, m->rope_sin, g->B, g->T, g->Hkv, g->hd, 0, 0);
    be->attention_fwd(be, a->att, a->lse, a->q, a->k, a->v, g->B, g->T, g->Hq, g->Hkv, g->hd);
    be->copy(be, a->h, a->x, (size_t)N * d * sizeof(float));
    lin_fwd(be, use_matrix(m, &w, OZ_M_O), a->att, a->t[OZ_M_O], N, 1.0f, a->h);
    be->rmsnorm_fwd(be, a->ln2, a->rstd2, a->h, w.mlp_norm, N, d, c->rms_norm_eps);
    if (recompute && m->shape.mlp_chunks > 0) return;
    if (!recompute) be->copy(be, out, a->h, (size_t)N * d * sizeof(float));
    if (m->shape.mlp_chunks == 0) {
        lin_fwd(be, use_matrix(m, &w, OZ_M_GATE), a->ln2, a->t[OZ_M_GATE], N, 0.0f, a->gate);
        lin_fwd(be, use_matrix(m, &w, OZ_M_UP), a->ln2, a->t[OZ_M_UP], N, 0.0f, a->up);
        be->swiglu_fwd(be, a->mlp, a->gate, a->up, (size_t)N * F);
        const lin *down = use_matrix(m, &w, OZ_M_DOWN);
        if (!recompute) lin_fwd(be, down, a->mlp, a->t[OZ_M_DOWN], N, 1.0f, out);
        else if (down->a) lr_down(be, down, a->mlp, N, a->t[OZ_M_DOWN]);
        return;
    }
    /* Mini-sequences: one chunk of the MLP's intermediates exists at a time. */
    for (int i = 0; i < m->shape.mlp_chunks; i++) {
        int r0, r1;
        chunk_rows(N, m->shape.mlp_chunks, i, &r0, &r1);
        int rows = r1 - r0;
        if (rows <= 0) continue;
        mlp_chunk_forward(m, &w, a->ln2 + (size_t)r0 * d, rows);
        lin_apply(be, use_matrix(m, &w, OZ_M_DOWN), m->cmlp, m->ct[OZ_M_DOWN], rows, 1.0f, out + (size_t)r0 * d);
    }
}

/* Per-tensor mode brackets the backward of each gradient group of layer l (grad_group): begin
 * zeroes the group's gradients (the buffer holds the group before), end hands each tensor to the
 * gradient sink. No-ops in the other modes. */
void oz_ll_group_begin(oz_llama *m, int l, int group) {
    if (!m->shape.grads.immediate) return;
    const oz_param_layout *lay = &m->layout;
    for (int i = lay->layer_first[l]; i < lay->layer_first[l + 1]; i++) {
        float *g = oz_llama_grad(m, i);
        if (g && oz_ll_grad_group(&m->shape, &lay->params[i]) == group) m->be->fill(m->be, g, 0.0f, lay->params[i].numel);
    }
}

/* Hands tensor i's gradient to the sink (not a frozen one, nor one whose rows went there as row
 * blocks). The sink may update weights, so the dequantized matrix is stale afterwards. */
void oz_ll_hand_off(oz_llama *m, int i) {
    if (m->layout.params[i].frozen || !m->sink.take || oz_llama_grad_in_blocks(m, i)) return;
    m->wmat_id = -1;
    /* A layer tensor's buffer is not read again (the next group's are zeroed before they
     * accumulate), so the sink may build its update there. */
    emit_tensor(m, i, m->layout.params[i].layer >= 0, false);
}

void oz_ll_group_end(oz_llama *m, int l, int group) {
    if (!m->shape.grads.immediate) return;
    const oz_param_layout *lay = &m->layout;
    for (int i = lay->layer_first[l]; i < lay->layer_first[l + 1]; i++)
        if (oz_ll_grad_group(&m->shape, &lay->params[i]) == group) oz_ll_hand_off(m, i);
}

/* MLP backward for rows [r0, r1): dx (rows of the residual gradient) flows in; dln gets the
 * gradient of the MLP norm's output; weight gradients accumulate. gate/up/mlp hold the rows'
 * forward values (they are overwritten with gradients), t[] the rows' low-rank intermediates.
 * each: the rows are all rows (one chunk), so each matrix's gradient is complete after its
 * backward and is handed off there (per-tensor mode). */
static void mlp_backward_rows(oz_llama *m, layer_weights *w, const layer_grads *gw, bool each, const float *ln2,
                              const float *dx, float *dln, float *gate, float *up, float *mlp,
                              float *const *t, int rows) {
    oz_backend *be = m->be;
    int F = m->cfg.intermediate_size, l = w->layer;
    if (each) oz_ll_group_begin(m, l, OZ_M_DOWN);
    /* dL/d(hidden) replaces the hidden in its own buffer (down_proj's weight gradient reads the
     * hidden first): no separate rows x intermediate gradient buffer. */
    lin_bwd(be, use_matrix(m, w, OZ_M_DOWN), &gw->m[OZ_M_DOWN], mlp, t[OZ_M_DOWN], dx, rows, m->dt, 0.0f, mlp);
    if (each) oz_ll_group_end(m, l, OZ_M_DOWN);
    be->swiglu_bwd(be, gate, up, mlp, gate, up, (size_t)rows * F); /* gradients overwrite the inputs */
    if (each) oz_ll_group_begin(m, l, OZ_M_GATE);
    lin_bwd(be, use_matrix(m, w, OZ_M_GATE), &gw->m[OZ_M_GATE], ln2, t[OZ_M_GATE], gate, rows, m->dt, 0.0f, dln);
    if (each) oz_ll_group_end(m, l, OZ_M_GATE);
    if (each) oz_ll_group_begin(m, l, OZ_M_UP);
    lin_bwd(be, use_matrix(m, w, OZ_M_UP), &gw->m[OZ_M_UP], ln2, t[OZ_M_UP], up, rows, m->dt, 1.0f, dln);
    if (each) oz_ll_group_end(m, l, OZ_M_UP);
}

/* Layer l backward: m->dx holds dL/d(layer output) and ends holding dL/d(layer input). In per-tensor
 * mode each gradient group is handed off as soon as it is complete; nothing after reads that
 * group's weights, so the sink may already have updated them. */
static void layer_backward(oz_llama *m, int l, layer_acts *a, const oz_ll_dims *g) {
    oz_backend *be = m->be;
    layer_weights w = layer_params(m, l);
    layer_grads gw = oz_ll_layer_grads(m, l);
    bool per_tensor = m->shape.grads.immediate;
    if (m->layer_grads && !per_tensor) be->fill(be, m->layer_grads, 0.0f, m->layer_grad_n);
    int N = g->N, d = g->d, chunks = m->shape.mlp_chunks;
    if (chunks == 0) {
        mlp_backward_rows(m, &w, &gw, per_tensor, a->ln2, m->dx, m->dln, a->gate, a->up, a->mlp, a->t, N);
    } else {
        /* More than one chunk: the MLP's gradients accumulate over the chunks (one group). */
        if (chunks > 1) oz_ll_group_begin(m, l, OZ_M_GATE);
        for (int i = 0; i < chunks; i++) {
            int r0, r1;
            chunk_rows(N, chunks, i, &r0, &r1);
            int rows = r1 - r0;
            if (rows <= 0) continue;
            const float *xin = a->ln2 + (size_t)r0 * d;
            /* Recompute this chunk's intermediates (MsT Alg. 3), then its backward. */
            mlp_chunk_forward(m, &w, xin, rows);
            mlp_backward_rows(m, &w, &gw, per_tensor && chunks == 1, xin, m->dx + (size_t)r0 * d,
                              m->dln + (size_t)r0 * d, m->cgate, m->cup, m->cmlp, m->ct, rows);
        }
        if (chunks > 1) oz_ll_group_end(m, l, OZ_M_GATE);
    }
    oz_ll_group_begin(m, l, GRP_MLP_NORM);
    be->rmsnorm_bwd(be, m->dx, gw.mlp_norm, m->dln, a->h, w.mlp_norm, a->rstd2, N, d);
    oz_ll_group_end(m, l, GRP_MLP_NORM);
    /* Attention: h = x + att @ o^T. Its gradients go where list_buffers put them (q_alias, kv_alias). */
    bool mini = m->shape.mlp_chunks > 0;
    float *datt = m->q_alias ? a->ln2 : m->datt, *dq = m->q_alias ? a->h : m->dq;
    float *dk = m->kv_alias ? (mini ? m->cgate : a->gate) : m->dk;
    float *dv = m->kv_alias ? (mini ? m->cup : a->up) : m->dv;
    oz_ll_group_begin(m, l, OZ_M_O);
    lin_bwd(be, use_matrix(m, &w, OZ_M_O), &gw.m[OZ_M_O], a->att, a->t[OZ_M_O], m->dx, N, m->dt, 0.0f, datt);
    oz_ll_group_end(m, l, OZ_M_O);
    be->attention_bwd(be, dq, dk, dv, datt, a->q, a->k, a->v, a->att, a->lse, g->B, g->T, g->Hq, g->Hkv, g->hd);
    be->rope(be, dq, m->rope_cos, m->rope_sin, g->B, g->T, g->Hq, g->hd, 0, 1);
    be->rope(be, dk, m->rope_cos, m->rope_sin, g->B, g->T, g->Hkv, g->hd, 0, 1);
    if (m->ln1_alias) /* the MLP's backward overwrote it: the same values again */
        be->rmsnorm_fwd(be, a->ln1, a->rstd1, a->x, w.attn_norm, N, d, m->cfg.rms_norm_eps);
    static const int qkv[3] = {OZ_M_Q, OZ_M_K, OZ_M_V};
    float *dqkv[3] = {dq, dk, dv};
    for (int k = 0; k < 3; k++) {
        oz_ll_group_begin(m, l, qkv[k]);
        lin_bwd(be, use_matrix(m, &w, qkv[k]), &gw.m[qkv[k]], a->ln1, a->t[qkv[k]], dqkv[k], N, m->dt,
                k ? 1.0f : 0.0f, m->dln);
        oz_ll_group_end(m, l, qkv[k]);
    }
    oz_ll_group_begin(m, l, GRP_ATTN_NORM);
    be->rmsnorm_bwd(be, m->dx, gw.attn_norm, m->dln, a->x, w.attn_norm, a->rstd1, N, d);
    oz_ll_group_end(m, l, GRP_ATTN_NORM);
}

/* Rows [v0, v0 + vr) of the LM head in fp32 (vr <= the vocabulary block): in place, or a bf16
 * head's rows widened into the row scratch. */
static const float *head_rows(oz_llama *m, int v0, int vr) {
    int hi = oz_ll_head_index(m);
    size_t d = (size_t)m->cfg.hidden_size;
    uint16_t *w16 = oz_llama_param_bf16(m, hi);
    if (!w16) return oz_llama_param(m, hi) + (size_t)v0 * d;
    m->be->from_bf16(m->be, m->vocab_rows, w16 + (size_t)v0 * d, (size_t)vr * d);
    return m->vocab_rows;
}

/* logits (rows, V) = x (rows, d) head^T: one GEMM, or for a bf16 head one per vocabulary block. */
static void head_logits(oz_llama *m, const float *x, int rows, float *logits) {
    oz_backend *be = m->be;
    int d = m->cfg.hidden_size, V = m->cfg.vocab_size;
    int block = m->vocab16 ? oz_llama_vocab_block_rows(&m->cfg) : V;
    for (int v0 = 0; v0 < V; v0 += block) {
        int vr = V - v0 < block ? V - v0 : block;
        be->gemm(be, 0, 1, rows, vr, d, 1.0f, x, d, head_rows(m, v0, vr), d, 0.0f, logits + v0, V);
    }
}

/* dx (rows, d) = dlogits (rows, V) head: one GEMM, or for a bf16 head a sum over its blocks. */
static void head_dx(oz_llama *m, const float *dlogits, int rows, float *dx) {
    oz_backend *be = m->be;
    int d = m->cfg.hidden_size, V = m->cfg.vocab_size;
    int block = m->vocab16 ? oz_llama_vocab_block_rows(&m->cfg) : V;
    for (int v0 = 0; v0 < V; v0 += block) {
        int vr = V - v0 < block ? V - v0 : block;
        be->gemm(be, 0, 0, rows, d, vr, 1.0f, dlogits + v0, V, head_rows(m, v0, vr), d, v0 == 0 ? 0.0f : 1.0f, dx, d);
    }
}

/* The token embeddings of the batch into out (N, d), from an fp32 or a bf16 table. */
static void embed_tokens(oz_llama *m, float *out, const oz_ll_dims *g) {
    if (m->vocab16) m->be->embedding_fwd_bf16(m->be, out, m->vocab16, m->ids, g->N, g->d);
    else m->be->embedding_fwd(m->be, out, oz_llama_param(m, 0), m->ids, g->N, g->d);
}

/* Training with the head's gradient in vocabulary blocks (grads.vocab_blocks): each row's
 * log-sum-exp over the whole vocabulary first (chunk by chunk), then per block of vocabulary rows
 * and per token chunk the block's logits, its loss gradient, the rows' dX contribution (into dln)
 * and the block's weight gradient; the finished block goes to the sink as a row block, which may
 * update those rows at once (nothing reads them again in this step). Losses are those of the fused path
 * to fp32 rounding (tested). */
static void head_blocks(oz_llama *m, const oz_llama_batch *b, float grad_scale, const oz_ll_dims *g, int chunks) {
    oz_backend *be = m->be;
    int N = g->N, d = g->d, V = g->V, hi = oz_ll_head_index(m);
    for (int i = 0; i < chunks; i++) {
        int r0, r1;
        chunk_rows(N, chunks, i, &r0, &r1);
        if (r1 <= r0) continue;
        head_logits(m, m->lnf + (size_t)r0 * d, r1 - r0, m->logits);
        if (b->logits_out)
            be->to_host(be, b->logits_out + (size_t)r0 * V, m->logits, (size_t)(r1 - r0) * V * sizeof(float));
        be->logsumexp_rows(be, m->lse + r0, m->logits, r1 - r0, V);
    }
    be->fill(be, m->losses, 0.0f, (size_t)N); /* each target's loss is written by its block */
    int block = oz_llama_vocab_block_rows(&m->cfg);
    for (int v0 = 0; v0 < V; v0 += block) {
        int vr = V - v0 < block ? V - v0 : block;
        const float *wb = head_rows(m, v0, vr);
        for (int i = 0; i < chunks; i++) {
            int r0, r1;
            chunk_rows(N, chunks, i, &r0, &r1);
            int rows = r1 - r0;
            if (rows <= 0) continue;
            const float *xin = m->lnf + (size_t)r0 * d;
            be->gemm(be, 0, 1, rows, vr, d, 1.0f, xin, d, wb, d, 0.0f, m->logits, vr);
            be->cross_entropy_block(be, m->logits, m->lse + r0, m->losses + r0, m->targets + r0, rows, vr, v0,
                                    grad_scale);
            be->gemm(be, 0, 0, rows, d, vr, 1.0f, m->logits, vr, wb, d, v0 == 0 ? 0.0f : 1.0f, m->dln + (size_t)r0 * d, d);
            be->gemm(be, 1, 0, vr, d, rows, 1.0f, m->logits, vr, xin, d, i == 0 ? 0.0f : 1.0f, m->vblock, d);
        }
        emit_rows(m, hi, v0, vr, m->vblock);
    }
}

/* The embedding's gradient in vocabulary blocks: dx (dL/d embedding output) scattered into one
 * block of rows at a time, tokens outside the block passed as id -1; each block goes to the
 * gradient sink as row blocks. */
static oz_status embedding_blocks(oz_llama *m, const oz_llama_batch *b, const oz_ll_dims *g, oz_err *err) {
    oz_backend *be = m->be;
    int N = g->N, d = g->d, V = g->V, block = oz_llama_vocab_block_rows(&m->cfg);
    int32_t *ids = malloc((size_t)N * sizeof *ids);
    if (!ids) return oz_fail(err, OZ_ERR_NOMEM, "out of memory remapping token ids");
    for (int v0 = 0; v0 < V; v0 += block) {
        int vr = V - v0 < block ? V - v0 : block;
        for (int i = 0; i < N; i++) ids[i] = b->ids[i] >= v0 && b->ids[i] < v0 + vr ? b->ids[i] - v0 : -1;
        be->to_device(be, m->ids_block, ids, (size_t)N * sizeof *ids);
        be->fill(be, m->vblock, 0.0f, (size_t)vr * d);
        be->embedding_bwd(be, m->vblock, m->dx, m->ids_block, N, d, vr);
        emit_rows(m, 0, v0, vr, m->vblock);
    }
    free(ids);
    return OZ_OK;
}

/* LM head + cross-entropy over head chunks. With grad_scale != 0 (training) each chunk's
 * gradient is taken right away (Liger-style): dL/d(final norm output) goes to m->dln and the head's
 * weight gradient accumulates, so only one chunk of logits ever exists. */
static oz_status head_forward(oz_llama *m, const oz_llama_batch *b, float grad_scale, const oz_ll_dims *g,
                              double *loss_sum, long *n_targets, oz_err *err) {
    oz_backend *be = m->be;
    int N = g->N, d = g->d, V = g->V;
    float *dhead = oz_llama_grad(m, oz_ll_head_index(m)); /* NULL when the head is frozen (or in blocks) */
    int chunks = m->shape.head_chunks > 0 ? m->shape.head_chunks : 1;
    if (b->targets) be->to_device(be, m->targets, b->targets, (size_t)N * sizeof(int32_t));
    bool blocks = grad_scale != 0.0f && b->targets && oz_llama_grad_in_blocks(m, oz_ll_head_index(m));
    if (blocks) head_blocks(m, b, grad_scale, g, chunks);
    for (int i = 0; i < chunks && !blocks; i++) {
        int r0, r1;
        chunk_rows(N, chunks, i, &r0, &r1);
        int rows = r1 - r0;
        if (rows <= 0) continue;
        const float *xin = m->lnf + (size_t)r0 * d;
        head_logits(m, xin, rows, m->logits);
        if (b->logits_out)
            be->to_host(be, b->logits_out + (size_t)r0 * V, m->logits, (size_t)rows * V * sizeof(float));
        if (!b->targets) continue;
        be->cross_entropy(be, m->logits, m->losses + r0, m->targets + r0, rows, V, grad_scale);
        if (grad_scale != 0.0f) {
            head_dx(m, m->logits, rows, m->dln + (size_t)r0 * d);
            if (dhead) be->gemm(be, 1, 0, V, d, rows, 1.0f, m->logits, V, xin, d, 1.0f, dhead, d);
        }
    }
    return oz_ll_sum_losses(m, b, loss_sum, n_targets, err);
}

oz_status oz_ll_sum_losses(oz_llama *m, const oz_llama_batch *b, double *loss_sum, long *n_targets, oz_err *err) {
    long count = 0;
    double sum = 0.0;
    int N = b->B * b->T;
    if (b->targets) {
        float *host_losses = malloc((size_t)N * sizeof *host_losses);
        if (!host_losses) return oz_fail(err, OZ_ERR_NOMEM, "out of memory reading losses");
        m->be->to_host(m->be, host_losses, m->losses, (size_t)N * sizeof(float));
        for (int i = 0; i < N; i++) {
            if (b->targets[i] < 0) continue;
            sum += host_losses[i];
            count++;
        }
        free(host_losses);
    }
    if (loss_sum) *loss_sum = sum;
    if (n_targets) *n_targets = count;
    return OZ_OK;
}

/* The final residual stream (the final norm's input): in bf16 mode the fp32 work copy, which holds
 * x_L from the end of the forward until the first layer's recomputation. */
static const float *final_input(const oz_llama *m, int L) { return m->shape.bf16_checkpoints ? m->xwork : m->xs[L]; }

/* bf16_checkpoints: layer input l (l = L: the final residual) rounded to bf16 and saved (offloaded:
 * through the staging buffer to host memory; the final residual is not kept), and xwork set to the
 * rounded value the forward continues from. */
static void keep_layer_input(oz_llama *m, int l, const float *x, const oz_ll_dims *g) {
    oz_backend *be = m->be;
    size_t nd = (size_t)g->N * g->d;
    be->to_bf16(be, m->xs16[l], x, nd);
    if (m->host16 && l < g->L) be->to_host(be, m->host16 + (size_t)l * nd, m->xs16[l], nd * sizeof(uint16_t));
    be->from_bf16(be, m->xwork, m->xs16[l], nd);
}

/* bf16_checkpoints: layer l's saved input back into xwork (offloaded: through the staging buffer). */
static void restore_layer_input(oz_llama *m, int l, const oz_ll_dims *g) {
    oz_backend *be = m->be;
    size_t nd = (size_t)g->N * g->d;
    if (m->host16) be->to_device(be, m->xs16[l], m->host16 + (size_t)l * nd, nd * sizeof(uint16_t));
    be->from_bf16(be, m->xwork, m->xs16[l], nd);
}

static oz_status forward(oz_llama *m, const oz_llama_batch *b, float grad_scale, double *loss_sum,
                         long *n_targets, oz_err *err) {
    OZ_TRY(oz_ll_check_batch(m, b, err));
    oz_backend *be = m->be;
    oz_ll_dims g = oz_ll_dims_of(m, b->B, b->T);
    /* The weights may have changed since the last pass (an update, oz_llama_write_param): the
     * dequantized matrix is stale. Hand-offs invalidate it too (the sink may update weights). */
    m->wmat_id = -1;
    be->to_device(be, m->ids, b->ids, (size_t)g.N * sizeof(int32_t));
    if (m->shape.bf16_checkpoints) {
        /* Each layer's output goes to dln (free until the head's backward), is saved in bf16, and
         * the next layer starts from the saved (rounded) value, as its recomputation will. */
        embed_tokens(m, m->xwork, &g);
        keep_layer_input(m, 0, m->xwork, &g);
        for (int l = 0; l < g.L; l++) {
            layer_forward(m, l, &m->acts[l], m->dln, &g, false);
            keep_layer_input(m, l + 1, m->dln, &g);
        }
    } else {
        embed_tokens(m, m->xs[0], &g);
        for (int l = 0; l < g.L; l++) layer_forward(m, l, &m->acts[l], m->xs[l + 1], &g, false);
    }
    be->rmsnorm_fwd(be, m->lnf, m->rstdf, final_input(m, g.L), oz_llama_param(m, oz_ll_final_norm_index(m)), g.N, g.d,
                    m->cfg.rms_norm_eps);
    return head_forward(m, b, grad_scale, &g, loss_sum, n_targets, err);
}

oz_status oz_llama_forward(oz_llama *m, const oz_llama_batch *b, double *loss_sum, long *n_targets,
                           oz_err *err) {
    if (m->shape.precision == OZ_PREC_BF16) return oz_ll_forward_bf16(m, b, loss_sum, n_targets, err);
    return forward(m, b, 0.0f, loss_sum, n_targets, err);
}

oz_status oz_llama_forward_backward(oz_llama *m, const oz_llama_batch *b, float grad_scale,
                                    double *loss_sum, long *n_targets, oz_err *err) {
    if (!m->shape.with_grads) return oz_fail(err, OZ_ERR_INTERNAL, "model was created without gradient buffers");
    if (!b->targets) return oz_fail(err, OZ_ERR_INTERNAL, "backward needs targets");
    if (grad_scale == 0.0f) return oz_fail(err, OZ_ERR_INTERNAL, "backward needs a non-zero grad_scale");
    if (m->shape.precision == OZ_PREC_BF16)
        return oz_ll_forward_backward_bf16(m, b, grad_scale, loss_sum, n_targets, err);
    oz_backend *be = m->be;
    oz_ll_dims g = oz_ll_dims_of(m, b->B, b->T);
    bool per_tensor = m->shape.grads.immediate;
    int fn = oz_ll_final_norm_index(m);
    /* Per-tensor mode: every call starts from zero (each gradient is handed off within it). */
    if (per_tensor && m->outer_grads) be->fill(be, m->outer_grads, 0.0f, oz_ll_outer_grad_floats(m));
    OZ_TRY(forward(m, b, grad_scale, loss_sum, n_targets, err));

    /* The head's part ran inside the forward: m->dln holds dL/d(final norm output). */
    be->fill(be, m->dx, 0.0f, (size_t)g.N * g.d);
    float *dnorm = oz_llama_grad(m, fn);
    be->rmsnorm_bwd(be, m->dx, dnorm ? dnorm : m->norm_sink, m->dln, final_input(m, g.L), oz_llama_param(m, fn),
                    m->rstdf, g.N, g.d);
    oz_ll_after_head(m);
    for (int l = g.L - 1; l >= 0; l--) {
        layer_acts *a = &m->acts[l];
        if (m->shape.recompute) {
            /* Rebuild this layer's activations from its saved input (no output: the next layer's
             * input was saved in the forward). */
            if (m->shape.bf16_checkpoints) restore_layer_input(m, l, &g);
            else a->x = m->xs[l];
            layer_forward(m, l, a, NULL, &g, true);
        }
        layer_backward(m, l, a, &g);
        if (m->shape.grads.per_layer && !per_tensor) oz_ll_emit_buffered(m, l, false);
    }
    /* A frozen embedding needs nothing from here: nothing flows further back. */
    float *demb = oz_llama_grad(m, 0);
    if (demb) be->embedding_bwd(be, demb, m->dx, m->ids, g.N, g.d, g.V);
    if (oz_llama_grad_in_blocks(m, 0)) OZ_TRY(embedding_blocks(m, b, &g, err));
    oz_ll_after_embedding(m);
    return OZ_OK;
}

void oz_ll_after_head(oz_llama *m) {
    /* The final norm and an untied head (unless its blocks already went to the sink) are complete now
     * and never read again by this backward. */
    if (m->shape.grads.immediate && !m->cfg.tie_word_embeddings) {
        oz_ll_hand_off(m, oz_ll_final_norm_index(m));
        oz_ll_hand_off(m, oz_ll_head_index(m));
    }
}

void oz_ll_after_embedding(oz_llama *m) {
    if (m->shape.grads.immediate) {
        oz_ll_hand_off(m, 0);
        if (m->cfg.tie_word_embeddings) oz_ll_hand_off(m, oz_ll_final_norm_index(m));
    } else if (!m->shape.grads.per_layer && m->backwards == 0) {
        /* The first micro-batch's gradients, for what needs them before more accumulate. */
        oz_ll_emit_buffered(m, -2, true);
    }
    m->backwards++;
}

