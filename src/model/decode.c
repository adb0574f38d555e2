/* Prefill and cached decoding (model/decode.h) on the backend ops, in the order forward.c runs a
 * layer, so that each position's arithmetic is the full forward's: the same norms, the same GEMMs
 * per row (a residual add is a GEMM with beta 1 onto a copy of the input, as there), RoPE from the
 * model's own tables, and attention either attention_fwd itself (prefill: the prompt is a whole
 * causal sequence, its keys and values written straight into the cache slot) or attention_decode,
 * which reproduces attention_fwd's row for the new position. */
#include <stdlib.h>
#include <string.h>

#include "model/decode.h"
#include "model/llama_internal.h"

struct oz_decode {
    oz_llama *m;
    oz_backend *be;
    oz_arena *arena;
    oz_decode_shape shape;
    int rows;              /* activation rows: max(prefill, batch) */
    int *lens;             /* host (batch): positions cached per slot */
    int32_t *hlens;        /* host (batch): the lengths the attention reads, staged for upload */
    int32_t *hids;         /* host (batch): a step's ids, 0 for a slot that sits the step out */
    /* backend memory */
    float *kc, *vc;        /* (L, batch, cap, Hkv, hd) */
    float *x, *h, *ln, *rstd, *q, *att, *lse, *k1, *v1, *gate, *up, *mlp, *t, *logits, *scores;
    int32_t *ids, *dlens;
    void **owned;
    int n_owned;
};

/* ---- the buffer list: one description for the planner and for create */

typedef struct {
    size_t cache, kv_rows, act, lse, gate, t, logits, scores, ids, lens;
} dec_sizes;

static int max_rank(const oz_llama_config *c) {
    int r = 0;
    for (int l = 0; l < c->num_hidden_layers; l++)
        for (int j = 0; j < OZ_LLAMA_MATRICES; j++)
            if (oz_llama_config_rank(c, l, j) > r) r = oz_llama_config_rank(c, l, j);
    return r;
}

static int rows_of(oz_decode_shape s) { return s.prefill > s.batch ? s.prefill : s.batch; }

static dec_sizes sizes_of(const oz_llama_config *c, oz_decode_shape s) {
    size_t R = (size_t)rows_of(s), B = (size_t)s.batch, kvd = (size_t)c->num_key_value_heads * c->head_dim;
    size_t qd = (size_t)c->num_attention_heads * c->head_dim, d = (size_t)c->hidden_size;
    dec_sizes z;
    z.cache = (size_t)c->num_hidden_layers * B * (size_t)s.cap * kvd * sizeof(float);
    z.kv_rows = B * kvd * sizeof(float);
    z.act = R * (d > qd ? d : qd) * sizeof(float);
    z.lse = (size_t)c->num_attention_heads * (size_t)s.prefill * sizeof(float);
    z.gate = R * (size_t)c->intermediate_size * sizeof(float);
    z.t = R * (size_t)max_rank(c) * sizeof(float);
    z.logits = B * (size_t)c->vocab_size * sizeof(float);
    z.scores = B * (size_t)c->num_attention_heads * (size_t)s.cap * sizeof(float);
    z.ids = R * sizeof(int32_t);
    z.lens = B * sizeof(int32_t);
    return z;
}

typedef void (*want_fn)(void *ctx, void **slot, oz_mem_category cat, size_t bytes, const char *what);

/* Every buffer of the state, in allocation order. slot is NULL when only counting. */
static void list_buffers(oz_decode *d, const oz_llama_config *c, oz_decode_shape s, want_fn want, void *ctx) {
    dec_sizes z = sizes_of(c, s);
#define SLOT(f) (d ? (void **)&d->f : NULL)
    want(ctx, SLOT(kc), OZ_MEM_ACTIVATIONS, z.cache, "key cache");
    want(ctx, SLOT(vc), OZ_MEM_ACTIVATIONS, z.cache, "value cache");
    /* d and qd rows share one size (the larger): x, h and ln hold d, q and att hold qd */
    want(ctx, SLOT(x), OZ_MEM_ACTIVATIONS, z.act, "decode residual stream");
    want(ctx, SLOT(h), OZ_MEM_ACTIVATIONS, z.act, "decode residual after attention");
    want(ctx, SLOT(ln), OZ_MEM_ACTIVATIONS, z.act, "decode norm output");
    want(ctx, SLOT(rstd), OZ_MEM_ACTIVATIONS, (size_t)rows_of(s) * sizeof(float), "decode 1/rms");
    want(ctx, SLOT(q), OZ_MEM_ACTIVATIONS, z.act, "decode queries");
    want(ctx, SLOT(att), OZ_MEM_ACTIVATIONS, z.act, "decode attention output");
    want(ctx, SLOT(lse), OZ_MEM_ACTIVATIONS, z.lse, "prefill log-sum-exp");
    want(ctx, SLOT(k1), OZ_MEM_ACTIVATIONS, z.kv_rows, "decode new keys");
    want(ctx, SLOT(v1), OZ_MEM_ACTIVATIONS, z.kv_rows, "decode new values");
    want(ctx, SLOT(gate), OZ_MEM_ACTIVATIONS, z.gate, "decode MLP gate");
    want(ctx, SLOT(up), OZ_MEM_ACTIVATIONS, z.gate, "decode MLP up");
    want(ctx, SLOT(mlp), OZ_MEM_ACTIVATIONS, z.gate, "decode MLP hidden");
    if (z.t) want(ctx, SLOT(t), OZ_MEM_ACTIVATIONS, z.t, "decode low-rank intermediate");
    want(ctx, SLOT(logits), OZ_MEM_SCRATCH, z.logits, "decode logits");
    want(ctx, SLOT(scores), OZ_MEM_SCRATCH, z.scores, "decode attention scores");
    want(ctx, SLOT(ids), OZ_MEM_SCRATCH, z.ids, "decode token ids");
    want(ctx, SLOT(dlens), OZ_MEM_SCRATCH, z.lens, "decode lengths");
#undef SLOT
}

static void count_one(void *ctx, void **slot, oz_mem_category cat, size_t bytes, const char *what) {
    (void)slot, (void)what;
    ((oz_decode_plan *)ctx)->bytes[cat] += bytes;
    ((oz_decode_plan *)ctx)->total += bytes;
}

static oz_status check_shape(const oz_llama_config *c, oz_decode_shape s, oz_err *err) {
    if (s.batch < 1 || s.cap < 1 || s.prefill < 1)
        return oz_fail(err, OZ_ERR_INPUT, "decode needs batch, positions and prefill >= 1 (got %d, %d, %d)", s.batch,
                       s.cap, s.prefill);
    if (s.cap > c->max_position_embeddings)
        return oz_fail(err, OZ_ERR_INPUT, "%d positions exceed the model's context (max_position_embeddings %d)",
                       s.cap, c->max_position_embeddings);
    if (s.prefill > s.cap)
        return oz_fail(err, OZ_ERR_INPUT, "a prompt of %d tokens does not fit %d positions", s.prefill, s.cap);
    return OZ_OK;
}

oz_status oz_decode_plan_memory(const oz_llama_config *cfg, oz_decode_shape shape, oz_decode_plan *plan,
                                oz_err *err) {
    memset(plan, 0, sizeof *plan);
    OZ_TRY(check_shape(cfg, shape, err));
    list_buffers(NULL, cfg, shape, count_one, plan);
    plan->cache_bytes = 2 * sizes_of(cfg, shape).cache;
    return OZ_OK;
}

typedef struct {
    oz_decode *d;
    oz_err *err;
} alloc_ctx;

static void alloc_one(void *ctx, void **slot, oz_mem_category cat, size_t bytes, const char *what) {
    alloc_ctx *a = ctx;
    if (a->err->status) return;
    void *p = NULL;
    if (oz_arena_alloc(a->d->arena, cat, bytes, what, &p, a->err) != OZ_OK) return;
    a->d->owned[a->d->n_owned++] = p;
    *slot = p;
}

enum { DEC_MAX_BUFFERS = 32 };

void oz_decode_destroy(oz_decode *d) {
    if (!d) return;
    for (int i = 0; i < d->n_owned; i++) oz_arena_free(d->arena, d->owned[i]);
    free(d->owned);
    free(d->lens);
    free(d->hlens);
    free(d->hids);
    free(d);
}

oz_status oz_decode_create(oz_decode **out, oz_llama *m, oz_arena *arena, oz_decode_shape shape, oz_err *err) {
    *out = NULL;
    OZ_TRY(check_shape(&m->cfg, shape, err));
    if (!m->params || m->vocab16 || m->shape.precision != OZ_PREC_FP32)
        return oz_fail(err, OZ_ERR_INPUT, "cached decoding needs a model with fp32 weights (not INT8, bf16 or a bf16 "
                                          "embedding)");
    oz_decode *d = calloc(1, sizeof *d);
    if (!d) return oz_fail(err, OZ_ERR_NOMEM, "out of memory for the decode state");
    d->m = m, d->be = m->be, d->arena = arena, d->shape = shape, d->rows = rows_of(shape);
    d->owned = calloc(DEC_MAX_BUFFERS, sizeof *d->owned);
    d->lens = calloc((size_t)shape.batch, sizeof *d->lens);
    d->hlens = calloc((size_t)shape.batch, sizeof *d->hlens);
    d->hids = calloc((size_t)shape.batch, sizeof *d->hids);
    if (!d->owned || !d->lens || !d->hlens || !d->hids) {
        oz_decode_destroy(d);
        return oz_fail(err, OZ_ERR_NOMEM, "out of memory for the decode state");
    }
    alloc_ctx a = {d, err};
    list_buffers(d, &m->cfg, shape, alloc_one, &a);
    if (err->status) {
        oz_decode_destroy(d);
        return err->status;
    }
    *out = d;
    return OZ_OK;
}

int oz_decode_len(const oz_decode *d, int seq) { return seq >= 0 && seq < d->shape.batch ? d->lens[seq] : 0; }
oz_decode_shape oz_decode_get_shape(const oz_decode *d) { return d->shape; }

/* ---- the forward */

/* y (rows, out) = beta y + x W^T for matrix j of layer l, dense or through its factors at their
 * active rank (forward.c's lr_down and lin_apply, same GEMMs). */
static void dec_lin(oz_decode *d, int l, int j, const float *x, int rows, float beta, float *y) {
    oz_llama *m = d->m;
    oz_backend *be = d->be;
    int i = oz_llama_matrix_index(&m->layout, l, j);
    const oz_param_info *p = &m->layout.params[i];
    int64_t o64, in64;
    oz_llama_matrix_dims(&m->cfg, j, &o64, &in64);
    int out = (int)o64, in = (int)in64;
    if (!p->factor) {
        be->gemm(be, 0, 1, rows, out, in, 1.0f, x, in, oz_llama_param(m, i), in, beta, y, out);
        return;
    }
    int R = (int)p->shape[0], r = oz_llama_active_rank(m, l, j);
    be->gemm(be, 0, 1, rows, r, in, 1.0f, x, in, oz_llama_param(m, i), in, 0.0f, d->t, r);
    be->gemm(be, 0, 1, rows, out, r, 1.0f, d->t, r, oz_llama_param(m, i + 1), R, beta, y, out);
}

static const float *norm_weight(oz_llama *m, int l, oz_param_kind kind) {
    for (int i = m->layout.layer_first[l]; i < m->layout.layer_first[l + 1]; i++)
        if (m->layout.params[i].kind == kind) return oz_llama_param(m, i);
    return NULL;
}

/* Layer l's key (or value) cache of slot b: (cap, Hkv, hd). */
static float *cache_at(oz_decode *d, float *c, int l, int b) {
    size_t kvd = (size_t)d->m->cfg.num_key_value_heads * d->m->cfg.head_dim;
    return c + ((size_t)l * d->shape.batch + b) * (size_t)d->shape.cap * kvd;
}

/* The layers over `rows` rows of d->x. prefill >= 0: the rows are positions 0 .. rows-1 of slot
 * `prefill`; else row b is the new token of slot b, at position lens[b] (dlens already holds
 * lens[b] + 1, the keys it sees), unless hlens[b] == lens[b]: that slot sits the step out, its row
 * computed against what is cached and thrown away, nothing written to its cache. */
static void layers(oz_decode *d, int rows, int prefill) {
    oz_llama *m = d->m;
    oz_backend *be = d->be;
    const oz_llama_config *c = &m->cfg;
    int dm = c->hidden_size, F = c->intermediate_size, Hq = c->num_attention_heads, Hkv = c->num_key_value_heads;
    int hd = c->head_dim, qd = Hq * hd, kvd = Hkv * hd;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        be->rmsnorm_fwd(be, d->ln, d->rstd, d->x, norm_weight(m, l, OZ_P_ATTN_NORM), rows, dm, c->rms_norm_eps);
        dec_lin(d, l, OZ_M_Q, d->ln, rows, 0.0f, d->q);
        if (prefill >= 0) {
            float *kc = cache_at(d, d->kc, l, prefill), *vc = cache_at(d, d->vc, l, prefill);
            dec_lin(d, l, OZ_M_K, d->ln, rows, 0.0f, kc);
            dec_lin(d, l, OZ_M_V, d->ln, rows, 0.0f, vc);
            be->rope(be, d->q, m->rope_cos, m->rope_sin, 1, rows, Hq, hd, 0, 0);
            be->rope(be, kc, m->rope_cos, m->rope_sin, 1, rows, Hkv, hd, 0, 0);
            be->attention_fwd(be, d->att, d->lse, d->q, kc, vc, 1, rows, Hq, Hkv, hd);
        } else {
            dec_lin(d, l, OZ_M_K, d->ln, rows, 0.0f, d->k1);
            dec_lin(d, l, OZ_M_V, d->ln, rows, 0.0f, d->v1);
            for (int b = 0; b < rows; b++) { /* each slot at its own position */
                int pos = d->lens[b];
                if (d->hlens[b] == pos) continue;
                be->rope(be, d->q + (size_t)b * qd, m->rope_cos, m->rope_sin, 1, 1, Hq, hd, pos, 0);
                be->rope(be, d->k1 + (size_t)b * kvd, m->rope_cos, m->rope_sin, 1, 1, Hkv, hd, pos, 0);
                be->copy(be, cache_at(d, d->kc, l, b) + (size_t)pos * kvd, d->k1 + (size_t)b * kvd,
                         (size_t)kvd * sizeof(float));
                be->copy(be, cache_at(d, d->vc, l, b) + (size_t)pos * kvd, d->v1 + (size_t)b * kvd,
                         (size_t)kvd * sizeof(float));
            }
            be->attention_decode(be, d->att, d->q, cache_at(d, d->kc, l, 0), cache_at(d, d->vc, l, 0), d->dlens,
                                 d->scores, rows, d->shape.cap, Hq, Hkv, hd);
        }
        be->copy(be, d->h, d->x, (size_t)rows * dm * sizeof(float));
        dec_lin(d, l, OZ_M_O, d->att, rows, 1.0f, d->h);
        be->rmsnorm_fwd(be, d->ln, d->rstd, d->h, norm_weight(m, l, OZ_P_MLP_NORM), rows, dm, c->rms_norm_eps);
        be->copy(be, d->x, d->h, (size_t)rows * dm * sizeof(float));
        dec_lin(d, l, OZ_M_GATE, d->ln, rows, 0.0f, d->gate);
        dec_lin(d, l, OZ_M_UP, d->ln, rows, 0.0f, d->up);
        be->swiglu_fwd(be, d->mlp, d->gate, d->up, (size_t)rows * F);
        dec_lin(d, l, OZ_M_DOWN, d->mlp, rows, 1.0f, d->x);
    }
}

/* Logits of rows [r0, r0 + n) of d->x (n <= batch) into host (n, V): the final norm, then the head. */
static void head(oz_decode *d, int r0, int n, float *host) {
    oz_llama *m = d->m;
    oz_backend *be = d->be;
    int dm = m->cfg.hidden_size, V = m->cfg.vocab_size;
    be->rmsnorm_fwd(be, d->ln, d->rstd, d->x + (size_t)r0 * dm, oz_llama_param(m, oz_ll_final_norm_index(m)), n, dm,
                    m->cfg.rms_norm_eps);
    be->gemm(be, 0, 1, n, V, dm, 1.0f, d->ln, dm, oz_llama_param(m, oz_ll_head_index(m)), dm, 0.0f, d->logits, V);
    be->to_host(be, host, d->logits, (size_t)n * V * sizeof(float));
}

static oz_status check_ids(const oz_decode *d, const int32_t *ids, int n, oz_err *err) {
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= d->m->cfg.vocab_size)
            return oz_fail(err, OZ_ERR_INPUT, "token id %d is outside the vocabulary (%d)", ids[i],
                           d->m->cfg.vocab_size);
    return OZ_OK;
}

oz_status oz_decode_prefill(oz_decode *d, int seq, const int32_t *ids, int n, float *logits, float *all_logits,
                            oz_err *err) {
    if (seq < 0 || seq >= d->shape.batch || n < 1 || n > d->shape.prefill)
        return oz_fail(err, OZ_ERR_INTERNAL, "prefill of slot %d with %d tokens exceeds the decode state (%d slots, "
                                             "prompts up to %d)", seq, n, d->shape.batch, d->shape.prefill);
    OZ_TRY(check_ids(d, ids, n, err));
    oz_backend *be = d->be;
    int dm = d->m->cfg.hidden_size, V = d->m->cfg.vocab_size;
    be->to_device(be, d->ids, ids, (size_t)n * sizeof *ids);
    be->embedding_fwd(be, d->x, oz_llama_param(d->m, 0), d->ids, n, dm);
    layers(d, n, seq);
    d->lens[seq] = n;
    if (all_logits) {
        /* The head a batch of rows at a time: the logits buffer has batch rows. */
        for (int r0 = 0; r0 < n; r0 += d->shape.batch) {
            int k = n - r0 < d->shape.batch ? n - r0 : d->shape.batch;
            head(d, r0, k, all_logits + (size_t)r0 * V);
        }
        if (logits) memcpy(logits, all_logits + (size_t)(n - 1) * V, (size_t)V * sizeof *logits);
    } else if (logits) {
        head(d, n - 1, 1, logits);
    }
    return OZ_OK;
}

oz_status oz_decode_step(oz_decode *d, int n, const int32_t *ids, float *logits, oz_err *err) {
    if (n < 1 || n > d->shape.batch) return oz_fail(err, OZ_ERR_INTERNAL, "decode step of %d slots (batch %d)", n,
                                                    d->shape.batch);
    for (int b = 0; b < n; b++) {
        bool skip = ids[b] < 0;
        if (d->lens[b] < 1 || (!skip && d->lens[b] >= d->shape.cap))
            return oz_fail(err, OZ_ERR_INTERNAL, "slot %d holds %d positions: %s", b, d->lens[b],
                           d->lens[b] < 1 ? "not prefilled" : "the cache is full");
        if (!skip && ids[b] >= d->m->cfg.vocab_size)
            return oz_fail(err, OZ_ERR_INPUT, "token id %d is outside the vocabulary (%d)", ids[b],
                           d->m->cfg.vocab_size);
        d->hids[b] = skip ? 0 : ids[b];
        d->hlens[b] = d->lens[b] + (skip ? 0 : 1);
    }
    oz_backend *be = d->be;
    be->to_device(be, d->dlens, d->hlens, (size_t)n * sizeof *d->hlens);
    be->to_device(be, d->ids, d->hids, (size_t)n * sizeof *d->hids);
    be->embedding_fwd(be, d->x, oz_llama_param(d->m, 0), d->ids, n, d->m->cfg.hidden_size);
    layers(d, n, -1);
    for (int b = 0; b < n; b++) d->lens[b] = d->hlens[b];
    head(d, 0, n, logits);
    return OZ_OK;
}
