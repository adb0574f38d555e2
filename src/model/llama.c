/* The Llama decoder, written once against the backend op table: parameter layout with Hugging Face
 * names, initialisation, activation buffers, forward and hand-written backward.
 *
 * Per layer l the forward keeps what the backward needs: the layer input x[l], the two norm outputs
 * and their 1/rms, q/k (after RoPE), v, the attention output and its log-sum-exp, the residual h
 * after attention, and gate/up/silu(gate)*up. The backward overwrites gate/up with their gradients
 * (they are dead by then), so no second (N, intermediate) buffer is needed. */
#include "model/llama.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "numeric/quant.h"
#include "util/rng.h"

/* ------------------------------------------------------------------ parameter layout */

static oz_param_info *add_param(oz_param_layout *lay, oz_param_kind kind, int layer, const char *name,
                                int64_t rows, int64_t cols) {
    oz_param_info *p = &lay->params[lay->n++];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->kind = kind;
    p->layer = layer;
    p->ndim = cols > 0 ? 2 : 1;
    p->shape[0] = rows;
    p->shape[1] = cols > 0 ? cols : 0;
    p->numel = (size_t)rows * (size_t)(cols > 0 ? cols : 1);
    p->offset = lay->total;
    p->is_norm = kind == OZ_P_ATTN_NORM || kind == OZ_P_MLP_NORM || kind == OZ_P_FINAL_NORM;
    p->matrix = -1;
    /* Keep every tensor 16-float aligned (64 bytes) so vector loads never straddle tensors. */
    lay->total += (p->numel + 15) & ~(size_t)15;
    return p;
}

static size_t aligned16(size_t n) { return (n + 15) & ~(size_t)15; }

oz_status oz_param_layout_build(const oz_llama_config *c, oz_param_layout *lay, oz_err *err) {
    OZ_TRY(oz_llama_config_validate(c, err));
    memset(lay, 0, sizeof *lay);
    int L = c->num_hidden_layers;
    lay->n_layers = L;
    lay->params = calloc((size_t)L * (2 + 2 * OZ_LLAMA_MATRICES) + 3, sizeof *lay->params);
    lay->layer_first = calloc((size_t)L + 1, sizeof *lay->layer_first);
    lay->layer_offset = calloc((size_t)L + 1, sizeof *lay->layer_offset);
    lay->matrix_index = calloc((size_t)L * OZ_LLAMA_MATRICES, sizeof *lay->matrix_index);
    if (!lay->params || !lay->layer_first || !lay->layer_offset || !lay->matrix_index) {
        oz_param_layout_free(lay);
        return oz_fail(err, OZ_ERR_NOMEM, "out of memory building the parameter table");
    }
    static const oz_param_kind kinds[OZ_LLAMA_MATRICES] = {OZ_P_Q, OZ_P_K, OZ_P_V, OZ_P_O, OZ_P_GATE, OZ_P_UP, OZ_P_DOWN};
    int64_t d = c->hidden_size;
    char name[96];
    add_param(lay, OZ_P_EMBED, -1, "model.embed_tokens.weight", c->vocab_size, d);
    for (int l = 0; l < L; l++) {
        lay->layer_first[l] = lay->n;
        lay->layer_offset[l] = lay->total;
        for (int j = 0; j < OZ_LLAMA_MATRICES; j++) {
            if (j == OZ_M_Q) {
                snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
                add_param(lay, OZ_P_ATTN_NORM, l, name, d, 0);
            } else if (j == OZ_M_GATE) {
                snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
                add_param(lay, OZ_P_MLP_NORM, l, name, d, 0);
            }
            int64_t out, in;
            oz_llama_matrix_dims(c, j, &out, &in);
            int R = oz_llama_config_rank(c, l, j);
            lay->matrix_index[l * OZ_LLAMA_MATRICES + j] = lay->n;
            oz_param_info *p;
            if (!R) {
                snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, oz_llama_matrix_path(j));
                p = add_param(lay, kinds[j], l, name, out, in);
                p->matrix = j;
                continue;
            }
            /* PEFT's lora_A / lora_B shapes: A maps the input down to R, B maps R up to the output. */
            snprintf(name, sizeof name, "model.layers.%d.%s.lrc_A.weight", l, oz_llama_matrix_path(j));
            p = add_param(lay, kinds[j], l, name, R, in);
            p->matrix = j;
            p->factor = 1;
            snprintf(name, sizeof name, "model.layers.%d.%s.lrc_B.weight", l, oz_llama_matrix_path(j));
            p = add_param(lay, kinds[j], l, name, out, R);
            p->matrix = j;
            p->factor = 2;
        }
        size_t span = lay->total - lay->layer_offset[l];
        if (span > lay->max_layer) lay->max_layer = span;
    }
    lay->layer_first[L] = lay->n;
    lay->layer_offset[L] = lay->total;
    add_param(lay, OZ_P_FINAL_NORM, -1, "model.norm.weight", d, 0);
    if (!c->tie_word_embeddings) add_param(lay, OZ_P_LM_HEAD, -1, "lm_head.weight", c->vocab_size, d);
    size_t layers = lay->layer_offset[L] - lay->layer_offset[0];
    lay->outer_total = lay->total - layers;
    for (int i = 0; i < lay->n; i++) {
        oz_param_info *p = &lay->params[i];
        if (p->layer >= 0) p->span_offset = p->offset - lay->layer_offset[p->layer];
        else p->span_offset = p->offset < lay->layer_offset[0] ? p->offset : p->offset - layers;
    }
    oz_param_layout_freeze(lay, 0);
    return OZ_OK;
}

void oz_param_layout_freeze(oz_param_layout *lay, unsigned freeze) {
    bool tied = true;
    for (int i = 0; i < lay->n; i++) tied = tied && lay->params[i].kind != OZ_P_LM_HEAD;
    size_t g = 0, outer = 0, layer_g = 0;
    int cur = -1;
    lay->max_layer_grad = 0;
    for (int i = 0; i < lay->n; i++) {
        oz_param_info *p = &lay->params[i];
        unsigned need = p->kind == OZ_P_EMBED     ? (tied ? OZ_FREEZE_EMBED | OZ_FREEZE_HEAD : OZ_FREEZE_EMBED)
                        : p->kind == OZ_P_LM_HEAD ? OZ_FREEZE_HEAD
                        : p->is_norm              ? OZ_FREEZE_NORMS
                        : p->factor               ? OZ_FREEZE_FACTORS
                                                  : OZ_FREEZE_DENSE;
        p->frozen = (freeze & need) != 0;
        if (p->layer != cur) {
            cur = p->layer;
            layer_g = 0;
        }
        if (p->frozen) {
            p->grad_offset = p->grad_span_offset = OZ_NO_GRAD;
            continue;
        }
        p->grad_offset = g;
        g += aligned16(p->numel);
        if (p->layer >= 0) {
            p->grad_span_offset = layer_g;
            layer_g += aligned16(p->numel);
            if (layer_g > lay->max_layer_grad) lay->max_layer_grad = layer_g;
        } else {
            p->grad_span_offset = outer;
            outer += aligned16(p->numel);
        }
    }
    lay->grad_total = g;
    lay->outer_grad = outer;
}

void oz_param_layout_free(oz_param_layout *lay) {
    free(lay->params);
    free(lay->layer_first);
    free(lay->layer_offset);
    free(lay->matrix_index);
    memset(lay, 0, sizeof *lay);
}

const oz_param_info *oz_param_layout_find(const oz_param_layout *lay, const char *name) {
    for (int i = 0; i < lay->n; i++)
        if (strcmp(lay->params[i].name, name) == 0) return &lay->params[i];
    return NULL;
}

int oz_llama_matrix_index(const oz_param_layout *lay, int layer, int matrix) {
    return lay->matrix_index[layer * OZ_LLAMA_MATRICES + matrix];
}

void oz_llama_init_params(const oz_llama_config *cfg, const oz_param_layout *lay, float *params,
                          uint64_t seed) {
    (void)cfg;
    memset(params, 0, lay->total * sizeof *params);
    /* Tensors in parallel (a 7B model is 6.7e9 normals): each has its own stream, so the values do
     * not depend on the thread count. */
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < lay->n; i++) {
        const oz_param_info *p = &lay->params[i];
        float *w = params + p->offset;
        if (p->is_norm) {
            for (size_t j = 0; j < p->numel; j++) w[j] = 1.0f;
            continue;
        }
        /* One stream per tensor, so a tensor's values do not depend on the tensors before it. */
        oz_rng rng;
        oz_rng_seed(&rng, seed * 1000003u + (uint64_t)i);
        for (size_t j = 0; j < p->numel; j++) w[j] = (float)(0.02 * oz_rng_normal(&rng));
    }
}

/* ------------------------------------------------------------------ model instance */

/* One of a layer's seven matrices, ready for compute: dense w (out x in), or factors a (R x in)
 * and b (out x R) used at active rank r. */
typedef struct {
    const float *w, *a, *b;
    int out, in, R, r;
    /* An INT8 dense matrix: w is NULL and the GEMMs dequantize it block by block of rows into
     * blk_m's matrix scratch (parameter blk_index). */
    oz_llama *blk_m;
    int blk_index, blk_rows;
} lin;

/* Its gradients, each NULL when that tensor is frozen. A factored dense matrix
 * (oz_llama_shape.grads.factored) has w NULL and fm set: its backward hands (dY, X) to fm's factor
 * hook for parameter findex instead of forming dW. */
typedef struct {
    float *w, *a, *b;
    oz_llama *fm;
    int findex;
} lin_grad;

typedef struct {
    float *x, *ln1, *rstd1, *q, *k, *v, *att, *lse, *h, *ln2, *rstd2, *gate, *up, *mlp;
    /* Low-rank intermediates x A_r^T (tokens x R) of the low-rank matrices, kept for the backward
     * (dB needs them); the MLP's live in chunk buffers instead when mini-sequences are on. */
    float *t[OZ_LLAMA_MATRICES];
} layer_acts;

/* A layer's weights for compute. The matrices' pointers are only valid as returned by use_matrix
 * (INT8 mode fills them when it dequantizes). */
typedef struct {
    int layer;
    const float *attn_norm, *mlp_norm;
    lin m[OZ_LLAMA_MATRICES];
} layer_weights;

typedef struct {
    float *attn_norm, *mlp_norm;
    lin_grad m[OZ_LLAMA_MATRICES];
} layer_grads;

struct oz_llama {
    oz_llama_config cfg;
    oz_param_layout layout;
    oz_backend *be;
    oz_arena *arena;
    oz_llama_shape shape;
    float *params, *grads;
    float *layer_grads, *outer_grads; /* per-layer mode: one layer's gradients; embedding + tail */
    size_t layer_grad_n;              /* its size in floats */
    /* Per-tensor mode: each layer tensor's gradient offset in layer_grads (index order). */
    size_t *tgrad_off;
    /* INT8 mode: embedding + tail and each layer's two norms in fp32; matrices as codes with
     * per-group scales and zero points; one matrix (or factor pair) at a time dequantized into
     * wmat, which holds matrix wmat_id (layer * 7 + matrix; -1: nothing valid). */
    float *outer_params, *layer_norms, *wscale, *wmat;
    int wmat_id;
    size_t wmat_n; /* floats the matrix scratch holds */
    uint8_t *wq, *wzero;
    size_t *code_off, *group_off; /* per parameter index (INT8 matrices) */
    /* bf16_vocab: the embedding (V x d) then the head (V x d) in bf16; outer_params holds only the
     * final norm; vocab_rows is one vocabulary block of either in fp32 (the head's GEMMs, updates). */
    uint16_t *vocab16;
    float *vocab_rows;
    float *rope_cos, *rope_sin; /* (rope_len, hd/2) */
    int rope_len;
    int32_t *ids, *targets;     /* (N) in backend memory */
    /* acts[l] for l < L: what layer l's backward reads. With recompute, every acts[l] shares one
     * work set and only acts[l].x is the layer's own; xs[0..L] are the layer inputs (xs[L] is the
     * final residual stream). */
    layer_acts *acts;
    float **xs;
    /* bf16_checkpoints: the layer inputs live in xs16[0..L] and xwork is the fp32 copy of the one
     * in use (every acts[l].x points at it); xs is unused. */
    uint16_t **xs16;
    float *xwork;
    /* offload_checkpoints: every xs16[l] is one device staging buffer; layer l's input lives in
     * host16 + l * N * d (host memory from the backend's host allocator, host_bytes of it). */
    uint16_t *host16;
    size_t host_bytes;
    float *lnf, *rstdf, *logits, *losses;
    /* mini-sequence MLP chunk buffers (mlp_rows x F), and the chunk's low-rank intermediates of
     * gate, up and down (mlp_rows x R) */
    float *cgate, *cup, *cmlp;
    float *ct[OZ_LLAMA_MATRICES];
    /* backward scratch; dt holds the gradient of one low-rank intermediate (rows x r) */
    float *dx, *dln, *dq, *dk, *dv, *datt, *dt;
    bool q_alias, kv_alias; /* dq/datt, dk/dv live in dead activation buffers (list_buffers) */
    /* With recompute: the attention norm's output lives in the MLP hidden buffer (its chunk's, or
     * the layer's), dead while the attention runs; the backward renormalizes before q/k/v's. */
    bool ln1_alias;
    float *norm_sink;           /* frozen norms' weight gradients land here and are never read */
    int *active;                /* (L * 7) active ranks; 0 for dense matrices */
    oz_grad_sink sink;          /* where gradients go (model/grad_sink.h) */
    int backwards;              /* forward_backward calls since oz_llama_zero_grads */
    /* outer_grad_blocks: one block of embedding/head gradient rows, each row's log-sum-exp, and a
     * block's remapped token ids (-1 outside the block) */
    float *vblock, *lse;
    int32_t *ids_block;
    /* every arena buffer, for destroy */
    void **owned;
    int n_owned;
};

const oz_llama_config *oz_llama_get_config(const oz_llama *m) { return &m->cfg; }
const oz_param_layout *oz_llama_get_layout(const oz_llama *m) { return &m->layout; }
float *oz_llama_params(oz_llama *m) { return m->params; }

static bool is_layer_matrix(const oz_param_info *p) { return p->layer >= 0 && !p->is_norm; }

static bool is_vocab_tensor(const oz_param_info *p) { return p->kind == OZ_P_EMBED || p->kind == OZ_P_LM_HEAD; }

float *oz_llama_param(oz_llama *m, int index) {
    const oz_param_info *p = &m->layout.params[index];
    if (m->params) return m->params + p->offset;
    if (m->vocab16 && p->layer < 0) return is_vocab_tensor(p) ? NULL : m->outer_params; /* the final norm */
    if (p->layer < 0) return m->outer_params + p->span_offset;
    if (p->is_norm) {
        size_t d = (size_t)m->cfg.hidden_size;
        return m->layer_norms + (size_t)p->layer * 2 * d + (p->kind == OZ_P_MLP_NORM ? d : 0);
    }
    return NULL;
}

static bool param_int8(oz_llama *m, int index, uint8_t **q, float **scale, uint8_t **zero) {
    const oz_param_info *p = &m->layout.params[index];
    if (!m->wq || !is_layer_matrix(p)) return false;
    *q = m->wq + m->code_off[index];
    *scale = m->wscale + m->group_off[index];
    *zero = m->wzero + m->group_off[index];
    return true;
}

uint16_t *oz_llama_param_bf16(oz_llama *m, int index) {
    const oz_param_info *p = &m->layout.params[index];
    if (!m->vocab16 || !is_vocab_tensor(p)) return NULL;
    return m->vocab16 + (p->kind == OZ_P_LM_HEAD ? (size_t)m->cfg.vocab_size * m->cfg.hidden_size : 0);
}

/* Floats of the bf16 vocabulary row scratch: one vocabulary block. */
static size_t vocab_rows_floats(const oz_llama_config *c) {
    return (size_t)oz_llama_vocab_block_rows(c) * c->hidden_size;
}

static float *rows_load(oz_llama *m, int index, int row0, int rows) {
    size_t d = (size_t)m->layout.params[index].shape[1], off = (size_t)row0 * d;
    uint16_t *w16 = oz_llama_param_bf16(m, index);
    if (!w16) return oz_llama_param(m, index) + off;
    m->be->from_bf16(m->be, m->vocab_rows, w16 + off, (size_t)rows * d);
    return m->vocab_rows;
}

static void rows_store(oz_llama *m, int index, int row0, int rows, uint64_t key) {
    size_t d = (size_t)m->layout.params[index].shape[1], off = (size_t)row0 * d;
    uint16_t *w16 = oz_llama_param_bf16(m, index);
    if (w16) m->be->to_bf16_sr(m->be, w16 + off, m->vocab_rows, (size_t)rows * d, key, off);
}

/* Staging piece for INT8 parameters off the host: the matrix scratch, in whole groups. */
static size_t staging_piece(const oz_llama *m) { return m->wmat_n / OZ_QW_GROUP * OZ_QW_GROUP; }

void oz_llama_read_param(oz_llama *m, int index, float *host) {
    const oz_param_info *p = &m->layout.params[index];
    uint8_t *q, *z;
    float *sc;
    uint16_t *w16 = oz_llama_param_bf16(m, index);
    if (w16) { /* widened exactly; off the host through the row scratch */
        if (m->be->host_visible) {
            m->be->from_bf16(m->be, host, w16, p->numel);
            return;
        }
        size_t piece = vocab_rows_floats(&m->cfg);
        for (size_t e0 = 0; e0 < p->numel; e0 += piece) {
            size_t n = p->numel - e0 < piece ? p->numel - e0 : piece;
            m->be->from_bf16(m->be, m->vocab_rows, w16 + e0, n);
            m->be->to_host(m->be, host + e0, m->vocab_rows, n * sizeof(float));
        }
    } else if (param_int8(m, index, &q, &sc, &z)) {
        /* Dequantized by the backend; off the host through the matrix scratch, free between steps
         * (whatever it cached is then gone), in group-aligned pieces of its size. */
        if (m->be->host_visible) {
            m->be->i8_dequantize(m->be, q, sc, z, p->numel, host);
            return;
        }
        m->wmat_id = -1;
        size_t piece = staging_piece(m);
        for (size_t e0 = 0; e0 < p->numel; e0 += piece) {
            size_t n = p->numel - e0 < piece ? p->numel - e0 : piece, g0 = e0 / OZ_QW_GROUP;
            m->be->i8_dequantize(m->be, q + e0, sc + g0, z + g0, n, m->wmat);
            m->be->to_host(m->be, host + e0, m->wmat, n * sizeof(float));
        }
    } else m->be->to_host(m->be, host, oz_llama_param(m, index), p->numel * sizeof(float));
}

void oz_llama_write_param(oz_llama *m, int index, const float *host) {
    const oz_param_info *p = &m->layout.params[index];
    uint8_t *q, *z;
    float *sc;
    uint16_t *w16 = oz_llama_param_bf16(m, index);
    if (w16) { /* rounded to nearest (a checkpoint written from bf16 weights comes back exactly) */
        if (m->be->host_visible) {
            m->be->to_bf16(m->be, w16, host, p->numel);
            return;
        }
        size_t piece = vocab_rows_floats(&m->cfg);
        for (size_t e0 = 0; e0 < p->numel; e0 += piece) {
            size_t n = p->numel - e0 < piece ? p->numel - e0 : piece;
            m->be->to_device(m->be, m->vocab_rows, host + e0, n * sizeof(float));
            m->be->to_bf16(m->be, w16 + e0, m->vocab_rows, n);
        }
    } else if (param_int8(m, index, &q, &sc, &z)) {
        /* Quantized by the backend (the same codes everywhere: groups are independent, so pieces
         * that start on a group give the whole tensor's codes), from the matrix scratch off the
         * host; the weights change, so no cached dequantization stays valid. */
        m->wmat_id = -1;
        if (m->be->host_visible) {
            m->be->i8_quantize(m->be, host, p->numel, q, sc, z);
            return;
        }
        size_t piece = staging_piece(m);
        for (size_t e0 = 0; e0 < p->numel; e0 += piece) {
            size_t n = p->numel - e0 < piece ? p->numel - e0 : piece, g0 = e0 / OZ_QW_GROUP;
            m->be->to_device(m->be, m->wmat, host + e0, n * sizeof(float));
            m->be->i8_quantize(m->be, m->wmat, n, q + e0, sc + g0, z + g0);
        }
    } else m->be->to_device(m->be, oz_llama_param(m, index), host, p->numel * sizeof(float));
}

void oz_llama_import_params(oz_llama *m, const float *host) {
    if (m->params) {
        m->be->to_device(m->be, m->params, host, m->layout.total * sizeof(float));
        return;
    }
    for (int i = 0; i < m->layout.n; i++) oz_llama_write_param(m, i, host + m->layout.params[i].offset);
}

void oz_llama_export_params(oz_llama *m, float *host) {
    if (m->params) {
        m->be->to_host(m->be, host, m->params, m->layout.total * sizeof(float));
        return;
    }
    memset(host, 0, m->layout.total * sizeof(float));
    for (int i = 0; i < m->layout.n; i++) oz_llama_read_param(m, i, host + m->layout.params[i].offset);
}

float *oz_llama_grads(oz_llama *m) { return m->grads; }
size_t oz_llama_host_bytes(const oz_llama *m) { return m->host_bytes; }

bool oz_llama_grad_in_blocks(const oz_llama *m, int index) {
    const oz_param_info *p = &m->layout.params[index];
    return m->shape.grads.vocab_blocks && m->shape.with_grads && !p->frozen && is_vocab_tensor(p);
}

bool oz_param_factored(const oz_param_info *p, unsigned mask) {
    return p->layer >= 0 && p->factor == 0 && !p->frozen && p->matrix >= 0 && (mask >> p->matrix & 1u);
}

bool oz_llama_grad_factored(const oz_llama *m, int index) {
    return m->shape.with_grads && oz_param_factored(&m->layout.params[index], m->shape.grads.factored);
}

float *oz_llama_grad(oz_llama *m, int index) {
    const oz_param_info *p = &m->layout.params[index];
    if (p->frozen || !m->shape.with_grads || oz_llama_grad_factored(m, index)) return NULL;
    if (m->grads) return m->grads + p->grad_offset;
    if (!m->shape.grads.per_layer) return NULL;
    if (p->layer >= 0)
        return m->layer_grads + (m->shape.grads.immediate ? m->tgrad_off[index] : p->grad_span_offset);
    /* In blocks only the final norm's gradient is kept, alone in the outer buffer. */
    if (m->shape.grads.vocab_blocks) return is_vocab_tensor(p) ? NULL : m->outer_grads;
    return m->outer_grads + p->grad_span_offset;
}

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
static void emit_buffered(oz_llama *m, int l, bool partial) {
    const oz_param_layout *lay = &m->layout;
    for (int i = 0; i < lay->n; i++) {
        const oz_param_info *p = &lay->params[i];
        if (p->frozen || oz_llama_grad_in_blocks(m, i) || (l != -2 && p->layer != l)) continue;
        emit_tensor(m, i, false, partial);
    }
}

void oz_llama_emit_accumulated(oz_llama *m) {
    if (!m->shape.with_grads || m->shape.grads.immediate) return;
    emit_buffered(m, m->shape.grads.per_layer ? -1 : -2, false);
}

static float *view_f32(void *m, int i) { return oz_llama_param(m, i); }
static bool view_int8(void *m, int i, uint8_t **q, float **scale, uint8_t **zero) {
    return param_int8(m, i, q, scale, zero);
}
static float *view_rows_load(void *m, int i, int row0, int rows) { return rows_load(m, i, row0, rows); }
static void view_rows_store(void *m, int i, int row0, int rows, uint64_t key) { rows_store(m, i, row0, rows, key); }

oz_weights_view oz_llama_weights(oz_llama *m) {
    oz_weights_view v = {.owner = m, .f32 = view_f32, .int8 = view_int8, .rows_load = view_rows_load,
                         .rows_store = view_rows_store};
    return v;
}

int oz_llama_vocab_block_rows(const oz_llama_config *c) {
    int V = c->vocab_size, d = c->hidden_size;
    int blocks = (V + d - 1) / d;
    int rows = (V + blocks - 1) / blocks;
    int align = (int)oz_qw_row_unit((size_t)d); /* blocks start on 8-bit moment blocks */
    rows = (rows + align - 1) / align * align;
    return rows < V ? rows : V;
}

static bool valid_matrix(const oz_llama *m, int layer, int matrix) {
    return layer >= 0 && layer < m->cfg.num_hidden_layers && matrix >= 0 && matrix < OZ_LLAMA_MATRICES;
}

int oz_llama_rank(const oz_llama *m, int layer, int matrix) {
    return valid_matrix(m, layer, matrix) ? oz_llama_config_rank(&m->cfg, layer, matrix) : 0;
}

int oz_llama_active_rank(const oz_llama *m, int layer, int matrix) {
    return valid_matrix(m, layer, matrix) ? m->active[layer * OZ_LLAMA_MATRICES + matrix] : 0;
}

oz_status oz_llama_set_active_rank(oz_llama *m, int layer, int matrix, int r, oz_err *err) {
    int R = oz_llama_rank(m, layer, matrix);
    if (!R) return oz_fail(err, OZ_ERR_INPUT, "matrix %d of layer %d is not low-rank", matrix, layer);
    if (r < 1 || r > R)
        return oz_fail(err, OZ_ERR_INPUT, "active rank %d of model.layers.%d.%s must be between 1 and %d", r, layer,
                       oz_llama_matrix_path(matrix), R);
    m->active[layer * OZ_LLAMA_MATRICES + matrix] = r;
    return OZ_OK;
}

bool oz_llama_factors(oz_llama *m, int layer, int matrix, float **A, float **B, int *R) {
    if (!oz_llama_rank(m, layer, matrix)) return false;
    int i = oz_llama_matrix_index(&m->layout, layer, matrix);
    *A = oz_llama_param(m, i);
    *B = oz_llama_param(m, i + 1);
    *R = oz_llama_rank(m, layer, matrix);
    return true;
}

void oz_llama_mini_seq_auto(const oz_llama_config *cfg, int tokens, int *mlp_chunks, int *head_chunks) {
    int d = cfg->hidden_size;
    /* MsT's rule, with a floor on the chunk length: below a few hundred rows a chunk's GEMM stops
     * being compute-bound (the weight is re-read per chunk), and the rule would cut a 256-token
     * batch of a 32000-vocabulary model into 63 chunks of 4 rows. */
    int most = tokens / OZ_MINI_SEQ_MIN_ROWS;
    if (most < 1) most = 1;
    *mlp_chunks = (tokens + d - 1) / d;
    *head_chunks = (cfg->vocab_size + d - 1) / d;
    if (*mlp_chunks > most) *mlp_chunks = most;
    if (*head_chunks > most) *head_chunks = most;
    if (*mlp_chunks < 1) *mlp_chunks = 1;
    if (*head_chunks < 1) *head_chunks = 1;
}

static int ceil_div(int a, int b) { return (a + b - 1) / b; }

/* ---- the buffer list: one description drives both allocation and the memory plan */

/* When a buffer is live, so that buffers whose lives never meet can share memory:
 * LIFE_LAYER buffers are only used inside one layer's forward or backward (the MLP's chunk
 * buffers, backward scratch; with recompute the whole work set, rebuilt by every backward);
 * LIFE_HEAD buffers only outside the layers (the final norm's output, the logits, the
 * embedding/head row blocks and their fp32 rows, also staging checkpoints between steps). A head
 * buffer is carved out of a layer buffer where one has room (first fit, largest first), so it
 * costs no memory of its own. */
enum { LIFE_ALWAYS = 0, LIFE_LAYER, LIFE_HEAD };

typedef struct {
    void **dest;            /* where the pointer goes (NULL when only planning) */
    oz_mem_category cat;
    size_t bytes;
    const char *what;
    int life;
    int host;               /* LIFE_HEAD: the layer buffer it lives in (-1: its own allocation) */
    size_t offset, used;    /* its offset in the host; a host's bytes handed out */
} buffer_desc;

typedef struct {
    buffer_desc *items;
    int n, cap;
    bool planning;
    int life; /* the life of the buffers being listed */
} buffer_list;

static void want(buffer_list *bl, void *dest, oz_mem_category cat, size_t bytes, const char *what) {
    if (!bytes) return; /* e.g. no trainable tensor outside the layers: the pointer stays NULL */
    if (bl->n < bl->cap)
        bl->items[bl->n] = (buffer_desc){bl->planning ? NULL : (void **)dest, cat, bytes, what, bl->life, -1, 0, 0};
    bl->n++;
}

#define OVERLAY_ALIGN ((size_t)256)

/* Places every head buffer in a layer buffer with room for it: largest first, first fit, at
 * 256-byte aligned offsets. Deterministic, so the plan and the model place them alike. */
static void place_overlays(buffer_list *bl) {
    for (;;) {
        int pick = -1;
        for (int i = 0; i < bl->n; i++) {
            buffer_desc *h = &bl->items[i];
            if (h->life == LIFE_HEAD && h->host < 0 && !h->used && (pick < 0 || h->bytes > bl->items[pick].bytes))
                pick = i;
        }
        if (pick < 0) return;
        buffer_desc *h = &bl->items[pick];
        h->used = 1; /* visited (a head buffer never hosts) */
        size_t need = (h->bytes + OVERLAY_ALIGN - 1) / OVERLAY_ALIGN * OVERLAY_ALIGN;
        for (int j = 0; j < bl->n; j++) {
            buffer_desc *l = &bl->items[j];
            if (l->life != LIFE_LAYER || l->bytes < l->used + h->bytes) continue;
            h->host = j;
            h->offset = l->used;
            l->used += need;
            break;
        }
    }
}

#define F32(n) ((size_t)(n) * sizeof(float))

static bool is_mlp_matrix(int j) { return j >= OZ_M_GATE; }

/* Largest stored rank of matrix j over all layers (0: dense everywhere). */
static int max_rank(const oz_llama_config *c, int j) {
    int R = 0;
    for (int l = 0; l < c->num_hidden_layers; l++)
        if (oz_llama_config_rank(c, l, j) > R) R = oz_llama_config_rank(c, l, j);
    return R;
}

/* Floats of INT8 mode's dequantization scratch: the largest matrix, or factor pair (A, then B from
 * the next 16-float boundary), since one is dequantized at a time. */
/* Values per dequantized block of an INT8 dense matrix (32 MiB): its GEMMs take it a block of rows
 * at a time, so the scratch is this, not the matrix (172 MiB for a 7b MLP matrix). Not smaller:
 * with 4 MiB blocks a 7b Q-GaLore step on an H200 took 2.90 s instead of 2.23 s (~29,000 more
 * small GEMMs and dequantizations per step). */
#define OZ_DEQ_BLOCK_FLOATS ((size_t)8 << 20)

/* Rows per dequantized block of an (out x in) INT8 matrix: about OZ_DEQ_BLOCK_FLOATS values and a
 * whole number of quantization groups (a block starts at a multiple of OZ_QW_GROUP values). */
static int deq_block_rows(int out, int in, size_t target) {
    return (int)oz_qw_block_rows((size_t)out, (size_t)in, target ? target : OZ_DEQ_BLOCK_FLOATS);
}

/* The INT8 matrix scratch: a block of rows of a dense matrix, or a whole factor pair (A, then B). */
static size_t max_matrix_floats(const oz_param_layout *lay, size_t target) {
    size_t most = 0;
    for (int i = 0; i < lay->n; i++) {
        const oz_param_info *p = &lay->params[i];
        if (!is_layer_matrix(p) || p->factor == 2) continue;
        size_t n = p->factor == 1 ? aligned16(p->numel) + lay->params[i + 1].numel
                                  : (size_t)deq_block_rows((int)p->shape[0], (int)p->shape[1], target) * (size_t)p->shape[1];
        if (n > most) most = n;
    }
    return most < OZ_QW_GROUP ? OZ_QW_GROUP : most; /* at least one group: the staging piece */
}

/* Per-tensor mode hands gradients off by group, and a group's gradients are live together: a
 * matrix's tensors (W, or A and B, both complete after its backward) or one norm; with more than
 * one MLP chunk the three MLP matrices form one group, because their gradients accumulate over the
 * chunks and their weights are read again by every chunk. */
enum { GRP_ATTN_NORM = OZ_LLAMA_MATRICES, GRP_MLP_NORM, GRP_COUNT };

static int grad_group(const oz_llama_shape *s, const oz_param_info *p) {
    if (p->kind == OZ_P_ATTN_NORM) return GRP_ATTN_NORM;
    if (p->kind == OZ_P_MLP_NORM) return GRP_MLP_NORM;
    return s->mlp_chunks > 1 && is_mlp_matrix(p->matrix) ? OZ_M_GATE : p->matrix;
}

/* Per-tensor mode's layer gradient buffer: each trainable layer tensor's offset (off may be NULL
 * when only sizing) and the buffer's size in floats. A layer's groups each start at 0 (one group is
 * live at a time). Tensors outside the layers keep their per-layer-mode places. */
static void per_tensor_sizes(const oz_param_layout *lay, const oz_llama_shape *s, size_t *off, size_t *layer_n) {
    size_t run[GRP_COUNT] = {0};
    int cur = -1;
    *layer_n = 0;
    for (int i = 0; i < lay->n; i++) {
        const oz_param_info *p = &lay->params[i];
        /* A factored matrix's gradient is never formed: it takes no room. */
        if (p->frozen || p->layer < 0 || oz_param_factored(p, s->grads.factored)) continue;
        if (p->layer != cur) {
            cur = p->layer;
            memset(run, 0, sizeof run);
        }
        int g = grad_group(s, p);
        if (off) off[i] = run[g];
        run[g] += aligned16(p->numel);
        if (run[g] > *layer_n) *layer_n = run[g];
    }
}

/* Floats of the outer gradient buffer: the final norm alone in blocks, else the layout's span. */
static size_t outer_grad_floats(const oz_llama *m) {
    return m->shape.grads.vocab_blocks ? (size_t)m->cfg.hidden_size : m->layout.outer_grad;
}

/* Lists every buffer a model with this config and shape allocates. m may be a zeroed dummy when
 * planning (its acts/xs arrays must still exist). */
static void list_buffers(oz_llama *m, buffer_list *bl) {
    const oz_llama_config *c = &m->cfg;
    const oz_llama_shape *s = &m->shape;
    const oz_param_layout *lay = &m->layout;
    size_t N = (size_t)s->batch * s->seq;
    size_t d = c->hidden_size, F = c->intermediate_size, V = c->vocab_size;
    size_t qd = (size_t)c->num_attention_heads * c->head_dim;
    size_t kvd = (size_t)c->num_key_value_heads * c->head_dim;
    size_t lse = (size_t)s->batch * c->num_attention_heads * s->seq;
    int L = c->num_hidden_layers;
    bool mini = s->mlp_chunks > 0;
    size_t mlp_rows = mini ? (size_t)ceil_div((int)N, s->mlp_chunks) : N;
    size_t head_rows = s->head_chunks > 0 ? (size_t)ceil_div((int)N, s->head_chunks) : N;
    size_t rope = (size_t)(c->max_position_embeddings > s->seq ? c->max_position_embeddings : s->seq) *
                  (c->head_dim / 2);
    bl->life = LIFE_ALWAYS;

    if (!s->int8_matrices) {
        want(bl, &m->params, OZ_MEM_WEIGHTS, F32(lay->total), "weights");
    } else {
        size_t codes = 0, groups = 0;
        for (int i = 0; i < lay->n; i++) {
            const oz_param_info *p = &lay->params[i];
            if (!is_layer_matrix(p)) continue;
            codes += p->numel;
            groups += oz_qw_groups(p->numel);
        }
        if (s->bf16_vocab) {
            want(bl, &m->vocab16, OZ_MEM_WEIGHTS, 2 * V * d * sizeof(uint16_t), "embedding/head weights (bf16)");
            want(bl, &m->outer_params, OZ_MEM_WEIGHTS, F32(d), "final norm weight");
            bl->life = LIFE_HEAD;
            want(bl, &m->vocab_rows, OZ_MEM_SCRATCH, F32(vocab_rows_floats(c)), "embedding/head rows in fp32");
            bl->life = LIFE_ALWAYS;
        } else {
            want(bl, &m->outer_params, OZ_MEM_WEIGHTS, F32(lay->outer_total), "embedding/head weights");
        }
        want(bl, &m->layer_norms, OZ_MEM_WEIGHTS, F32((size_t)L * 2 * d), "layer norm weights");
        want(bl, &m->wq, OZ_MEM_WEIGHTS, codes, "INT8 matrices");
        want(bl, &m->wscale, OZ_MEM_QSCALES, F32(groups), "INT8 scales");
        want(bl, &m->wzero, OZ_MEM_QSCALES, groups, "INT8 zero points");
        want(bl, &m->wmat, OZ_MEM_SCRATCH, F32(max_matrix_floats(lay, s->int8_block_floats)), "dequantized INT8 rows (or factor pair)");
    }
    /* Frozen tensors have no gradient: the buffers hold the trainable tensors only. */
    if (s->with_grads && !s->grads.per_layer) want(bl, &m->grads, OZ_MEM_GRADS, F32(lay->grad_total), "gradients");
    if (s->with_grads && s->grads.per_layer) {
        size_t layer_n = lay->max_layer_grad;
        if (s->grads.immediate) per_tensor_sizes(lay, s, NULL, &layer_n);
        want(bl, &m->layer_grads, OZ_MEM_GRADS, F32(layer_n),
             s->grads.immediate ? "gradients handed off together" : "one layer's gradients");
        if (!s->grads.vocab_blocks) {
            want(bl, &m->outer_grads, OZ_MEM_GRADS, F32(lay->outer_grad), "embedding/head gradients");
        } else {
            bool embed = false, head = false, norm = false;
            for (int i = 0; i < lay->n; i++) {
                const oz_param_info *p = &lay->params[i];
                if (p->layer >= 0 || p->frozen) continue;
                if (p->kind == OZ_P_EMBED) embed = true;
                else if (p->kind == OZ_P_LM_HEAD) head = true;
                else norm = true;
            }
            if (norm) want(bl, &m->outer_grads, OZ_MEM_GRADS, F32(d), "final norm gradient");
            bl->life = LIFE_HEAD;
            if (embed || head)
                want(bl, &m->vblock, OZ_MEM_GRADS, F32((size_t)oz_llama_vocab_block_rows(c) * d),
                     "embedding/head gradient block");
            bl->life = LIFE_ALWAYS;
            if (head) want(bl, &m->lse, OZ_MEM_ACTIVATIONS, F32(N), "log-sum-exp per token");
            if (embed) want(bl, &m->ids_block, OZ_MEM_ACTIVATIONS, N * sizeof(int32_t), "token ids of a block");
        }
    }
    if (s->with_grads && (s->freeze & OZ_FREEZE_NORMS))
        want(bl, &m->norm_sink, OZ_MEM_SCRATCH, F32(d), "frozen norms' discarded gradient");
    want(bl, &m->rope_cos, OZ_MEM_SCRATCH, F32(rope), "RoPE cos table");
    want(bl, &m->rope_sin, OZ_MEM_SCRATCH, F32(rope), "RoPE sin table");
    want(bl, &m->ids, OZ_MEM_ACTIVATIONS, 2 * N * sizeof(int32_t), "token ids");
    if (s->offload_checkpoints) {
        want(bl, &m->xs16[0], OZ_MEM_ACTIVATIONS, N * d * sizeof(uint16_t), "layer input staging (bf16, offloaded)");
        want(bl, &m->xwork, OZ_MEM_ACTIVATIONS, F32(N * d), "layer input in use (fp32)");
    } else if (s->bf16_checkpoints) {
        for (int l = 0; l < L; l++)
            want(bl, &m->xs16[l], OZ_MEM_ACTIVATIONS, N * d * sizeof(uint16_t), "layer input (bf16)");
        /* the final residual is only rounded through it, between the last layer and the head */
        bl->life = LIFE_HEAD;
        want(bl, &m->xs16[L], OZ_MEM_ACTIVATIONS, N * d * sizeof(uint16_t), "final residual (bf16)");
        bl->life = LIFE_ALWAYS;
        want(bl, &m->xwork, OZ_MEM_ACTIVATIONS, F32(N * d), "layer input in use (fp32)");
    } else {
        for (int l = 0; l <= L; l++) want(bl, &m->xs[l], OZ_MEM_ACTIVATIONS, F32(N * d), "layer input");
    }
    /* Without recompute every layer keeps its own set; with it, one work set is shared (its
     * low-rank intermediates sized for the largest rank of each matrix over the layers). */
    int sets = s->recompute ? 1 : L;
    bl->life = s->recompute ? LIFE_LAYER : LIFE_ALWAYS; /* without recompute each set lives until its backward */
    m->ln1_alias = s->recompute && s->with_grads && N * d <= mlp_rows * F;
    for (int l = 0; l < sets; l++) {
        layer_acts *a = &m->acts[l];
        if (!m->ln1_alias) want(bl, &a->ln1, OZ_MEM_ACTIVATIONS, F32(N * d), "attention norm output");
        want(bl, &a->rstd1, OZ_MEM_ACTIVATIONS, F32(N), "attention norm rstd");
        want(bl, &a->q, OZ_MEM_ACTIVATIONS, F32(N * qd), "queries");
        want(bl, &a->k, OZ_MEM_ACTIVATIONS, F32(N * kvd), "keys");
        want(bl, &a->v, OZ_MEM_ACTIVATIONS, F32(N * kvd), "values");
        want(bl, &a->att, OZ_MEM_ACTIVATIONS, F32(N * qd), "attention output");
        want(bl, &a->lse, OZ_MEM_ACTIVATIONS, F32(lse), "attention log-sum-exp");
        want(bl, &a->h, OZ_MEM_ACTIVATIONS, F32(N * d), "attention residual");
        want(bl, &a->ln2, OZ_MEM_ACTIVATIONS, F32(N * d), "MLP norm output");
        want(bl, &a->rstd2, OZ_MEM_ACTIVATIONS, F32(N), "MLP norm rstd");
        if (!mini) {
            want(bl, &a->gate, OZ_MEM_ACTIVATIONS, F32(N * F), "MLP gate");
            want(bl, &a->up, OZ_MEM_ACTIVATIONS, F32(N * F), "MLP up");
            want(bl, &a->mlp, OZ_MEM_ACTIVATIONS, F32(N * F), "MLP hidden");
        }
        for (int j = 0; j < OZ_LLAMA_MATRICES; j++) {
            if (mini && is_mlp_matrix(j)) continue;
            int R = s->recompute ? max_rank(c, j) : oz_llama_config_rank(c, l, j);
            want(bl, &a->t[j], OZ_MEM_ACTIVATIONS, F32(N * (size_t)R), "low-rank intermediate");
        }
    }
    bl->life = LIFE_LAYER;
    if (mini) {
        want(bl, &m->cgate, OZ_MEM_SCRATCH, F32(mlp_rows * F), "MLP gate chunk");
        want(bl, &m->cup, OZ_MEM_SCRATCH, F32(mlp_rows * F), "MLP up chunk");
        want(bl, &m->cmlp, OZ_MEM_SCRATCH, F32(mlp_rows * F), "MLP hidden chunk");
        for (int j = OZ_M_GATE; j <= OZ_M_DOWN; j++)
            want(bl, &m->ct[j], OZ_MEM_SCRATCH, F32(mlp_rows * (size_t)max_rank(c, j)), "low-rank intermediate chunk");
    }
    bl->life = LIFE_HEAD;
    want(bl, &m->lnf, OZ_MEM_ACTIVATIONS, F32(N * d), "final norm output");
    want(bl, &m->logits, s->head_chunks > 0 ? OZ_MEM_SCRATCH : OZ_MEM_ACTIVATIONS, F32(head_rows * V), "logits");
    bl->life = LIFE_ALWAYS;
    want(bl, &m->rstdf, OZ_MEM_ACTIVATIONS, F32(N), "final norm rstd");
    want(bl, &m->losses, OZ_MEM_ACTIVATIONS, F32(N), "losses");
    if (s->with_grads) {
        want(bl, &m->dx, OZ_MEM_SCRATCH, F32(N * d), "residual gradient");
        want(bl, &m->dln, OZ_MEM_SCRATCH, F32(N * d), "norm-output gradient");
        /* The attention backward's gradients live in buffers that are dead by then, when they fit:
         * dL/d(att) and dL/dq in the MLP norm's output and the attention residual (read for the last
         * time by the MLP norm's backward), dL/dk and dL/dv in the MLP gate and up buffers (the
         * layer's, or the mini-sequence chunk's, free until the next layer's MLP). */
        m->q_alias = qd <= d;
        m->kv_alias = N * kvd <= mlp_rows * F;
        bl->life = LIFE_LAYER;
        if (!m->q_alias) {
            want(bl, &m->dq, OZ_MEM_SCRATCH, F32(N * qd), "query gradient");
            want(bl, &m->datt, OZ_MEM_SCRATCH, F32(N * qd), "attention gradient");
        }
        if (!m->kv_alias) {
            want(bl, &m->dk, OZ_MEM_SCRATCH, F32(N * kvd), "key gradient");
            want(bl, &m->dv, OZ_MEM_SCRATCH, F32(N * kvd), "value gradient");
        }
        size_t dt = 0;
        for (int j = 0; j < OZ_LLAMA_MATRICES; j++) {
            size_t rows = mini && is_mlp_matrix(j) ? mlp_rows : N;
            if (rows * (size_t)max_rank(c, j) > dt) dt = rows * (size_t)max_rank(c, j);
        }
        want(bl, &m->dt, OZ_MEM_SCRATCH, F32(dt), "low-rank intermediate gradient");
        bl->life = LIFE_ALWAYS;
    }
}

/* Host bytes of the offloaded layer inputs (layers 0..L-1; the final residual stays on the device). */
static size_t offload_bytes(const oz_llama *m) {
    if (!m->shape.offload_checkpoints) return 0;
    return (size_t)m->cfg.num_hidden_layers * m->shape.batch * m->shape.seq * m->cfg.hidden_size * sizeof(uint16_t);
}

static oz_status check_shape(const oz_llama_config *c, const oz_llama_shape *s, oz_err *err) {
    if (s->grads.vocab_blocks && (!s->with_grads || !s->grads.per_layer || c->tie_word_embeddings))
        return oz_fail(err, OZ_ERR_INPUT, "embedding/head gradients in blocks need per-layer gradients and an untied head");
    if (s->batch <= 0 || s->seq <= 0)
        return oz_fail(err, OZ_ERR_INPUT, "batch and sequence length must be positive (got %d, %d)", s->batch,
                       s->seq);
    if (s->mlp_chunks < 0 || s->head_chunks < 0 || (s->mlp_chunks > 0) != (s->head_chunks > 0))
        return oz_fail(err, OZ_ERR_INPUT, "mini-sequence chunk counts must both be positive or both 0");
    if (s->bf16_checkpoints && (!s->recompute || !s->with_grads))
        return oz_fail(err, OZ_ERR_INPUT, "bf16 checkpoints are recomputation's saved inputs: they need recompute (training)");
    if (s->bf16_vocab && !(s->int8_matrices && s->grads.vocab_blocks))
        return oz_fail(err, OZ_ERR_INPUT, "a bf16 embedding/head needs INT8 matrices and gradients in vocabulary blocks");
    if (s->offload_checkpoints && !s->bf16_checkpoints)
        return oz_fail(err, OZ_ERR_INPUT, "offloaded checkpoints are bf16 checkpoints: they need bf16_checkpoints");
    if ((long)s->mlp_chunks > (long)s->batch * s->seq || (long)s->head_chunks > (long)s->batch * s->seq)
        return oz_fail(err, OZ_ERR_INPUT, "more mini-sequences (%d, %d) than tokens (%ld)", s->mlp_chunks,
                       s->head_chunks, (long)s->batch * s->seq);
    if (s->grads.immediate && !(s->with_grads && s->grads.per_layer))
        return oz_fail(err, OZ_ERR_INTERNAL, "per-tensor gradients need with_grads and per_layer_grads");
    if (s->grads.factored && !s->grads.immediate)
        return oz_fail(err, OZ_ERR_INTERNAL, "factored gradients need per-tensor gradients");
    if (s->grads.factored >> OZ_LLAMA_MATRICES)
        return oz_fail(err, OZ_ERR_INTERNAL, "factored gradients: mask 0x%x names no matrix", s->grads.factored);
    unsigned mlp = (1u << OZ_M_GATE) | (1u << OZ_M_UP) | (1u << OZ_M_DOWN);
    if ((s->grads.factored & mlp) && s->mlp_chunks > 1)
        return oz_fail(err, OZ_ERR_INTERNAL, "factored MLP gradients need one MLP chunk (they accumulate over chunks)");
    return OZ_OK;
}

oz_status oz_llama_plan_memory(const oz_llama_config *cfg, oz_llama_shape shape, oz_llama_plan *plan,
                               oz_err *err) {
    memset(plan, 0, sizeof *plan);
    OZ_TRY(check_shape(cfg, &shape, err));
    oz_llama dummy;
    memset(&dummy, 0, sizeof dummy);
    dummy.cfg = *cfg;
    dummy.shape = shape;
    OZ_TRY(oz_param_layout_build(cfg, &dummy.layout, err));
    oz_param_layout_freeze(&dummy.layout, shape.freeze);
    int L = cfg->num_hidden_layers;
    dummy.acts = calloc((size_t)L, sizeof *dummy.acts);
    dummy.xs = calloc((size_t)L + 1, sizeof *dummy.xs);
    dummy.xs16 = calloc((size_t)L + 1, sizeof *dummy.xs16);
    buffer_list bl = {NULL, 0, 0, true, LIFE_ALWAYS};
    oz_status st = OZ_OK;
    if (!dummy.acts || !dummy.xs || !dummy.xs16) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory planning");
    if (st == OZ_OK) {
        list_buffers(&dummy, &bl); /* first pass counts */
        bl.items = calloc((size_t)bl.n + 1, sizeof *bl.items);
        if (!bl.items) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory planning");
    }
    if (st == OZ_OK) {
        bl.cap = bl.n;
        bl.n = 0;
        list_buffers(&dummy, &bl);
        place_overlays(&bl);
        plan->host_bytes = offload_bytes(&dummy);
        for (int i = 0; i < bl.n; i++) {
            if (bl.items[i].host >= 0) continue; /* inside a layer buffer */
            plan->bytes[bl.items[i].cat] += bl.items[i].bytes;
            if (bl.items[i].bytes > plan->largest[bl.items[i].cat]) plan->largest[bl.items[i].cat] = bl.items[i].bytes;
        }
    }
    free(bl.items);
    free(dummy.acts);
    free(dummy.xs);
    free(dummy.xs16);
    oz_param_layout_free(&dummy.layout);
    return st;
}

static oz_status build_rope_tables(oz_llama *m, oz_err *err) {
    int half = m->cfg.head_dim / 2;
    m->rope_len = m->cfg.max_position_embeddings > m->shape.seq ? m->cfg.max_position_embeddings : m->shape.seq;
    size_t n = (size_t)m->rope_len * half;
    float *c = malloc(n * sizeof *c), *s = malloc(n * sizeof *s);
    if (!c || !s) {
        free(c);
        free(s);
        return oz_fail(err, OZ_ERR_NOMEM, "out of memory building RoPE tables");
    }
    for (int pos = 0; pos < m->rope_len; pos++) {
        for (int i = 0; i < half; i++) {
            double inv_freq = oz_llama_rope_inv_freq(&m->cfg, i);
            double angle = pos * inv_freq;
            c[(size_t)pos * half + i] = (float)cos(angle);
            s[(size_t)pos * half + i] = (float)sin(angle);
        }
    }
    m->be->to_device(m->be, m->rope_cos, c, n * sizeof *c);
    m->be->to_device(m->be, m->rope_sin, s, n * sizeof *s);
    free(c);
    free(s);
    return OZ_OK;
}

oz_status oz_llama_create(oz_llama **out, const oz_llama_config *cfg, oz_backend *be, oz_arena *arena,
                          oz_llama_shape shape, oz_err *err) {
    *out = NULL;
    OZ_TRY(check_shape(cfg, &shape, err));
    oz_llama *m = calloc(1, sizeof *m);
    if (!m) return oz_fail(err, OZ_ERR_NOMEM, "out of memory creating the model");
    m->cfg = *cfg;
    m->be = be;
    m->arena = arena;
    m->shape = shape;
    oz_status st = oz_param_layout_build(cfg, &m->layout, err);
    if (st != OZ_OK) {
        free(m);
        return st;
    }
    oz_param_layout_freeze(&m->layout, shape.freeze);
    *out = m; /* from here on, oz_llama_destroy cleans up a partial model */
    int L = cfg->num_hidden_layers;
    m->acts = calloc((size_t)L, sizeof *m->acts);
    m->xs = calloc((size_t)L + 1, sizeof *m->xs);
    m->xs16 = calloc((size_t)L + 1, sizeof *m->xs16);
    m->active = calloc((size_t)L * OZ_LLAMA_MATRICES, sizeof *m->active);
    buffer_list bl = {NULL, 0, 0, false, LIFE_ALWAYS};
    if (m->acts && m->xs && m->xs16 && m->active) {
        list_buffers(m, &bl);
        bl.items = calloc((size_t)bl.n + 1, sizeof *bl.items);
        m->owned = calloc((size_t)bl.n + 1, sizeof *m->owned);
    }
    if (!bl.items || !m->owned) {
        free(bl.items);
        return oz_fail(err, OZ_ERR_NOMEM, "out of memory creating the model");
    }
    for (int l = 0; l < L; l++)
        for (int j = 0; j < OZ_LLAMA_MATRICES; j++)
            m->active[l * OZ_LLAMA_MATRICES + j] = oz_llama_config_rank(cfg, l, j);
    bl.cap = bl.n;
    bl.n = 0;
    list_buffers(m, &bl);
    place_overlays(&bl);
    for (int i = 0; i < bl.n && st == OZ_OK; i++) {
        if (bl.items[i].host >= 0) continue;
        st = oz_arena_alloc(arena, bl.items[i].cat, bl.items[i].bytes, bl.items[i].what, bl.items[i].dest, err);
        if (st == OZ_OK) m->owned[m->n_owned++] = *bl.items[i].dest;
    }
    for (int i = 0; i < bl.n && st == OZ_OK; i++) {
        const buffer_desc *h = &bl.items[i];
        if (h->host >= 0) *h->dest = (char *)*bl.items[h->host].dest + h->offset;
    }
    free(bl.items);
    if (st != OZ_OK) return st;
    m->targets = m->ids + (size_t)shape.batch * shape.seq;
    m->wmat_id = -1;
    m->wmat_n = shape.int8_matrices ? max_matrix_floats(&m->layout, shape.int8_block_floats) : 0;
    m->layer_grad_n = m->layout.max_layer_grad;
    if (shape.grads.immediate) {
        m->tgrad_off = calloc((size_t)m->layout.n, sizeof *m->tgrad_off);
        if (!m->tgrad_off) return oz_fail(err, OZ_ERR_NOMEM, "out of memory creating the model");
        per_tensor_sizes(&m->layout, &m->shape, m->tgrad_off, &m->layer_grad_n);
    }
    if (shape.int8_matrices) {
        m->code_off = calloc((size_t)m->layout.n, sizeof *m->code_off);
        m->group_off = calloc((size_t)m->layout.n, sizeof *m->group_off);
        if (!m->code_off || !m->group_off) return oz_fail(err, OZ_ERR_NOMEM, "out of memory creating the model");
        size_t codes = 0, groups = 0;
        for (int i = 0; i < m->layout.n; i++) {
            const oz_param_info *p = &m->layout.params[i];
            if (!is_layer_matrix(p)) continue;
            m->code_off[i] = codes;
            m->group_off[i] = groups;
            codes += p->numel;
            groups += oz_qw_groups(p->numel);
        }
    }
    if (shape.offload_checkpoints) {
        for (int l = 1; l <= L; l++) m->xs16[l] = m->xs16[0]; /* the staging buffer */
        m->host_bytes = offload_bytes(m);
        m->host16 = be->host_allocator.alloc(be->host_allocator.ctx, m->host_bytes);
        if (!m->host16)
            return oz_fail(err, OZ_ERR_NOMEM, "cannot allocate %.1f MiB of host memory for offloaded layer inputs",
                           (double)m->host_bytes / 1048576.0);
    }
    if (m->ln1_alias) m->acts[0].ln1 = shape.mlp_chunks > 0 ? m->cmlp : m->acts[0].mlp;
    if (shape.recompute)
        for (int l = 1; l < L; l++) m->acts[l] = m->acts[0];
    for (int l = 0; l < L; l++) m->acts[l].x = shape.bf16_checkpoints ? m->xwork : m->xs[l];
    return build_rope_tables(m, err);
}

void oz_llama_destroy(oz_llama *m) {
    if (!m) return;
    for (int i = 0; i < m->n_owned; i++) oz_arena_free(m->arena, m->owned[i]);
    if (m->host16) m->be->host_allocator.free(m->be->host_allocator.ctx, m->host16);
    free(m->owned);
    free(m->code_off);
    free(m->group_off);
    free(m->tgrad_off);
    free(m->acts);
    free(m->xs);
    free(m->xs16);
    free(m->active);
    oz_param_layout_free(&m->layout);
    free(m);
}

void oz_llama_zero_grads(oz_llama *m) {
    m->backwards = 0;
    if (m->grads) m->be->fill(m->be, m->grads, 0.0f, m->layout.grad_total);
    if (m->outer_grads) m->be->fill(m->be, m->outer_grads, 0.0f, outer_grad_floats(m));
}

/* Layer l's weights for compute: shapes, active ranks, the norms (always in place: INT8 mode keeps
 * them in fp32), and the matrices in place unless they are INT8 (see use_matrix). */
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
    if (param_int8(m, i, &q, &sc, &z)) m->be->i8_dequantize(m->be, q, sc, z, m->layout.params[i].numel, dst);
}

/* Matrix j of w's layer, ready for the GEMMs that read its weights. INT8 mode dequantizes it into the
 * one-matrix scratch unless that already holds it, so every such GEMM must take its matrix from here
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
        x->blk_rows = deq_block_rows(x->out, x->in, m->shape.int8_block_floats);
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
static layer_grads layer_grad_tensors(oz_llama *m, int l) {
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

static int lm_head_index(const oz_llama *m) { return m->cfg.tie_word_embeddings ? 0 : m->layout.n - 1; }
static int final_norm_index(const oz_llama *m) { return m->layout.n - (m->cfg.tie_word_embeddings ? 1 : 2); }

/* ---- one linear map y = x W^T, dense or through the factors */

/* t (rows, r) = x (rows, in) A_r^T: the low-rank intermediate. */
static void lr_down(oz_backend *be, const lin *w, const float *x, int rows, float *t) {
    be->gemm(be, 0, 1, rows, w->r, w->in, 1.0f, x, w->in, w->a, w->in, 0.0f, t, w->r);
}

/* y (rows, out) = beta y + x W^T, or beta y + t B_r^T for a low-rank matrix (t from lr_down). B's
 * row stride stays R: its first r columns are read in place. */
/* Rows [r0, r0 + n) of an INT8 dense matrix, dequantized into its model's matrix scratch (which
 * then caches nothing else). */
static const float *deq_rows(const lin *w, int r0, int n) {
    oz_llama *m = w->blk_m;
    uint8_t *q = NULL, *z = NULL;
    float *sc = NULL;
    param_int8(m, w->blk_index, &q, &sc, &z);
    size_t off = (size_t)r0 * w->in, g0 = off / OZ_QW_GROUP;
    m->wmat_id = -1;
    m->be->i8_dequantize(m->be, q + off, sc + g0, z + g0, (size_t)n * w->in, m->wmat);
    return m->wmat;
}

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

static oz_status check_batch(const oz_llama *m, const oz_llama_batch *b, oz_err *err) {
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

/* Sizes of one forward/backward call. */
typedef struct {
    int B, T, N, d, F, V, hd, Hq, Hkv, qd, kvd, L;
} dims;

static dims dims_of(const oz_llama *m, int B, int T) {
    const oz_llama_config *c = &m->cfg;
    dims g = {B, T, B * T, c->hidden_size, c->intermediate_size, c->vocab_size, c->head_dim,
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
static void layer_forward(oz_llama *m, int l, layer_acts *a, float *out, const dims *g, bool recompute) {
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
 * tensor hook. No-ops in the other modes. */
static void group_begin(oz_llama *m, int l, int group) {
    if (!m->shape.grads.immediate) return;
    const oz_param_layout *lay = &m->layout;
    for (int i = lay->layer_first[l]; i < lay->layer_first[l + 1]; i++) {
        float *g = oz_llama_grad(m, i);
        if (g && grad_group(&m->shape, &lay->params[i]) == group) m->be->fill(m->be, g, 0.0f, lay->params[i].numel);
    }
}

/* Hands tensor i's gradient to the tensor hook (not a frozen one, nor one whose rows went to the
 * rows hook). The hook may update weights, so the dequantized matrix is stale afterwards. */
static void hand_off(oz_llama *m, int i) {
    if (m->layout.params[i].frozen || !m->sink.take || oz_llama_grad_in_blocks(m, i)) return;
    m->wmat_id = -1;
    /* A layer tensor's buffer is not read again (the next group's are zeroed before they
     * accumulate), so the sink may build its update there. */
    emit_tensor(m, i, m->layout.params[i].layer >= 0, false);
}

static void group_end(oz_llama *m, int l, int group) {
    if (!m->shape.grads.immediate) return;
    const oz_param_layout *lay = &m->layout;
    for (int i = lay->layer_first[l]; i < lay->layer_first[l + 1]; i++)
        if (grad_group(&m->shape, &lay->params[i]) == group) hand_off(m, i);
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
    if (each) group_begin(m, l, OZ_M_DOWN);
    /* dL/d(hidden) replaces the hidden in its own buffer (down_proj's weight gradient reads the
     * hidden first): no separate rows x intermediate gradient buffer. */
    lin_bwd(be, use_matrix(m, w, OZ_M_DOWN), &gw->m[OZ_M_DOWN], mlp, t[OZ_M_DOWN], dx, rows, m->dt, 0.0f, mlp);
    if (each) group_end(m, l, OZ_M_DOWN);
    be->swiglu_bwd(be, gate, up, mlp, gate, up, (size_t)rows * F); /* gradients overwrite the inputs */
    if (each) group_begin(m, l, OZ_M_GATE);
    lin_bwd(be, use_matrix(m, w, OZ_M_GATE), &gw->m[OZ_M_GATE], ln2, t[OZ_M_GATE], gate, rows, m->dt, 0.0f, dln);
    if (each) group_end(m, l, OZ_M_GATE);
    if (each) group_begin(m, l, OZ_M_UP);
    lin_bwd(be, use_matrix(m, w, OZ_M_UP), &gw->m[OZ_M_UP], ln2, t[OZ_M_UP], up, rows, m->dt, 1.0f, dln);
    if (each) group_end(m, l, OZ_M_UP);
}

/* Layer l backward: m->dx holds dL/d(layer output) and ends holding dL/d(layer input). In per-tensor
 * mode each gradient group is handed off as soon as it is complete; nothing after reads that
 * group's weights, so the hook may already have updated them. */
static void layer_backward(oz_llama *m, int l, layer_acts *a, const dims *g) {
    oz_backend *be = m->be;
    layer_weights w = layer_params(m, l);
    layer_grads gw = layer_grad_tensors(m, l);
    bool per_tensor = m->shape.grads.immediate;
    if (m->layer_grads && !per_tensor) be->fill(be, m->layer_grads, 0.0f, m->layer_grad_n);
    int N = g->N, d = g->d, chunks = m->shape.mlp_chunks;
    if (chunks == 0) {
        mlp_backward_rows(m, &w, &gw, per_tensor, a->ln2, m->dx, m->dln, a->gate, a->up, a->mlp, a->t, N);
    } else {
        /* More than one chunk: the MLP's gradients accumulate over the chunks (one group). */
        if (chunks > 1) group_begin(m, l, OZ_M_GATE);
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
        if (chunks > 1) group_end(m, l, OZ_M_GATE);
    }
    group_begin(m, l, GRP_MLP_NORM);
    be->rmsnorm_bwd(be, m->dx, gw.mlp_norm, m->dln, a->h, w.mlp_norm, a->rstd2, N, d);
    group_end(m, l, GRP_MLP_NORM);
    /* Attention: h = x + att @ o^T. Its gradients go where list_buffers put them (q_alias, kv_alias). */
    bool mini = m->shape.mlp_chunks > 0;
    float *datt = m->q_alias ? a->ln2 : m->datt, *dq = m->q_alias ? a->h : m->dq;
    float *dk = m->kv_alias ? (mini ? m->cgate : a->gate) : m->dk;
    float *dv = m->kv_alias ? (mini ? m->cup : a->up) : m->dv;
    group_begin(m, l, OZ_M_O);
    lin_bwd(be, use_matrix(m, &w, OZ_M_O), &gw.m[OZ_M_O], a->att, a->t[OZ_M_O], m->dx, N, m->dt, 0.0f, datt);
    group_end(m, l, OZ_M_O);
    be->attention_bwd(be, dq, dk, dv, datt, a->q, a->k, a->v, a->att, a->lse, g->B, g->T, g->Hq, g->Hkv, g->hd);
    be->rope(be, dq, m->rope_cos, m->rope_sin, g->B, g->T, g->Hq, g->hd, 0, 1);
    be->rope(be, dk, m->rope_cos, m->rope_sin, g->B, g->T, g->Hkv, g->hd, 0, 1);
    if (m->ln1_alias) /* the MLP's backward overwrote it: the same values again */
        be->rmsnorm_fwd(be, a->ln1, a->rstd1, a->x, w.attn_norm, N, d, m->cfg.rms_norm_eps);
    static const int qkv[3] = {OZ_M_Q, OZ_M_K, OZ_M_V};
    float *dqkv[3] = {dq, dk, dv};
    for (int k = 0; k < 3; k++) {
        group_begin(m, l, qkv[k]);
        lin_bwd(be, use_matrix(m, &w, qkv[k]), &gw.m[qkv[k]], a->ln1, a->t[qkv[k]], dqkv[k], N, m->dt,
                k ? 1.0f : 0.0f, m->dln);
        group_end(m, l, qkv[k]);
    }
    group_begin(m, l, GRP_ATTN_NORM);
    be->rmsnorm_bwd(be, m->dx, gw.attn_norm, m->dln, a->x, w.attn_norm, a->rstd1, N, d);
    group_end(m, l, GRP_ATTN_NORM);
}

/* Rows [v0, v0 + vr) of the LM head in fp32 (vr <= the vocabulary block): in place, or a bf16
 * head's rows widened into the row scratch. */
static const float *head_rows(oz_llama *m, int v0, int vr) {
    int hi = lm_head_index(m);
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
static void embed_tokens(oz_llama *m, float *out, const dims *g) {
    if (m->vocab16) m->be->embedding_fwd_bf16(m->be, out, m->vocab16, m->ids, g->N, g->d);
    else m->be->embedding_fwd(m->be, out, oz_llama_param(m, 0), m->ids, g->N, g->d);
}

/* Training with the head's gradient in vocabulary blocks (outer_grad_blocks): each row's
 * log-sum-exp over the whole vocabulary first (chunk by chunk), then per block of vocabulary rows
 * and per token chunk the block's logits, its loss gradient, the rows' dX contribution (into dln)
 * and the block's weight gradient; the finished block goes to the rows hook, which may update
 * those rows at once (nothing reads them again in this step). Losses are those of the fused path
 * to fp32 rounding (tested). */
static void head_blocks(oz_llama *m, const oz_llama_batch *b, float grad_scale, const dims *g, int chunks) {
    oz_backend *be = m->be;
    int N = g->N, d = g->d, V = g->V, hi = lm_head_index(m);
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
 * block of rows at a time, tokens outside the block passed as id -1; each block goes to the rows
 * hook. */
static oz_status embedding_blocks(oz_llama *m, const oz_llama_batch *b, const dims *g, oz_err *err) {
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
static oz_status head_forward(oz_llama *m, const oz_llama_batch *b, float grad_scale, const dims *g,
                              double *loss_sum, long *n_targets, oz_err *err) {
    oz_backend *be = m->be;
    int N = g->N, d = g->d, V = g->V;
    float *dhead = oz_llama_grad(m, lm_head_index(m)); /* NULL when the head is frozen (or in blocks) */
    int chunks = m->shape.head_chunks > 0 ? m->shape.head_chunks : 1;
    if (b->targets) be->to_device(be, m->targets, b->targets, (size_t)N * sizeof(int32_t));
    bool blocks = grad_scale != 0.0f && b->targets && oz_llama_grad_in_blocks(m, lm_head_index(m));
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
    long count = 0;
    double sum = 0.0;
    if (b->targets) {
        float *host_losses = malloc((size_t)N * sizeof *host_losses);
        if (!host_losses) return oz_fail(err, OZ_ERR_NOMEM, "out of memory reading losses");
        be->to_host(be, host_losses, m->losses, (size_t)N * sizeof(float));
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
static void keep_layer_input(oz_llama *m, int l, const float *x, const dims *g) {
    oz_backend *be = m->be;
    size_t nd = (size_t)g->N * g->d;
    be->to_bf16(be, m->xs16[l], x, nd);
    if (m->host16 && l < g->L) be->to_host(be, m->host16 + (size_t)l * nd, m->xs16[l], nd * sizeof(uint16_t));
    be->from_bf16(be, m->xwork, m->xs16[l], nd);
}

/* bf16_checkpoints: layer l's saved input back into xwork (offloaded: through the staging buffer). */
static void restore_layer_input(oz_llama *m, int l, const dims *g) {
    oz_backend *be = m->be;
    size_t nd = (size_t)g->N * g->d;
    if (m->host16) be->to_device(be, m->xs16[l], m->host16 + (size_t)l * nd, nd * sizeof(uint16_t));
    be->from_bf16(be, m->xwork, m->xs16[l], nd);
}

static oz_status forward(oz_llama *m, const oz_llama_batch *b, float grad_scale, double *loss_sum,
                         long *n_targets, oz_err *err) {
    OZ_TRY(check_batch(m, b, err));
    oz_backend *be = m->be;
    dims g = dims_of(m, b->B, b->T);
    /* The weights may have changed since the last pass (an update, oz_llama_write_param): the
     * dequantized matrix is stale. Hand-offs invalidate it too (the hook may update weights). */
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
    be->rmsnorm_fwd(be, m->lnf, m->rstdf, final_input(m, g.L), oz_llama_param(m, final_norm_index(m)), g.N, g.d,
                    m->cfg.rms_norm_eps);
    return head_forward(m, b, grad_scale, &g, loss_sum, n_targets, err);
}

oz_status oz_llama_forward(oz_llama *m, const oz_llama_batch *b, double *loss_sum, long *n_targets,
                           oz_err *err) {
    return forward(m, b, 0.0f, loss_sum, n_targets, err);
}

oz_status oz_llama_forward_backward(oz_llama *m, const oz_llama_batch *b, float grad_scale,
                                    double *loss_sum, long *n_targets, oz_err *err) {
    if (!m->shape.with_grads) return oz_fail(err, OZ_ERR_INTERNAL, "model was created without gradient buffers");
    if (!b->targets) return oz_fail(err, OZ_ERR_INTERNAL, "backward needs targets");
    if (grad_scale == 0.0f) return oz_fail(err, OZ_ERR_INTERNAL, "backward needs a non-zero grad_scale");
    oz_backend *be = m->be;
    dims g = dims_of(m, b->B, b->T);
    bool per_tensor = m->shape.grads.immediate, tied = m->cfg.tie_word_embeddings;
    int fn = final_norm_index(m);
    /* Per-tensor mode: every call starts from zero (each gradient is handed off within it). */
    if (per_tensor && m->outer_grads) be->fill(be, m->outer_grads, 0.0f, outer_grad_floats(m));
    OZ_TRY(forward(m, b, grad_scale, loss_sum, n_targets, err));

    /* The head's part ran inside the forward: m->dln holds dL/d(final norm output). */
    be->fill(be, m->dx, 0.0f, (size_t)g.N * g.d);
    float *dnorm = oz_llama_grad(m, fn);
    be->rmsnorm_bwd(be, m->dx, dnorm ? dnorm : m->norm_sink, m->dln, final_input(m, g.L), oz_llama_param(m, fn),
                    m->rstdf, g.N, g.d);
    /* The final norm and an untied head (unless its blocks already went to the rows hook) are
     * complete now and never read again by this backward. */
    if (per_tensor && !tied) {
        hand_off(m, fn);
        hand_off(m, lm_head_index(m));
    }
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
        if (m->shape.grads.per_layer && !per_tensor) emit_buffered(m, l, false);
    }
    /* A frozen embedding needs nothing from here: nothing flows further back. */
    float *demb = oz_llama_grad(m, 0);
    if (demb) be->embedding_bwd(be, demb, m->dx, m->ids, g.N, g.d, g.V);
    if (oz_llama_grad_in_blocks(m, 0)) OZ_TRY(embedding_blocks(m, b, &g, err));
    if (per_tensor) {
        hand_off(m, 0);
        if (tied) hand_off(m, fn);
    } else if (!m->shape.grads.per_layer && m->backwards == 0) {
        /* The first micro-batch's gradients, for what needs them before more accumulate. */
        emit_buffered(m, -2, true);
    }
    m->backwards++;
    return OZ_OK;
}
