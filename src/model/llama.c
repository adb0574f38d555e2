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

#include "optim/quant.h"
#include "util/rng.h"

/* ------------------------------------------------------------------ parameter layout */

static void add_param(oz_param_layout *lay, oz_param_kind kind, int layer, const char *name,
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
    /* Keep every tensor 16-float aligned (64 bytes) so vector loads never straddle tensors. */
    lay->total += (p->numel + 15) & ~(size_t)15;
}

oz_status oz_param_layout_build(const oz_llama_config *c, oz_param_layout *lay, oz_err *err) {
    OZ_TRY(oz_llama_config_validate(c, err));
    memset(lay, 0, sizeof *lay);
    int L = c->num_hidden_layers;
    lay->params = calloc((size_t)L * 9 + 3, sizeof *lay->params);
    if (!lay->params) return oz_fail(err, OZ_ERR_NOMEM, "out of memory building the parameter table");
    int64_t d = c->hidden_size, F = c->intermediate_size, hd = c->head_dim;
    int64_t qdim = c->num_attention_heads * hd, kvdim = c->num_key_value_heads * hd;
    char name[96];
    add_param(lay, OZ_P_EMBED, -1, "model.embed_tokens.weight", c->vocab_size, d);
    lay->layer_begin = lay->total;
    for (int l = 0; l < L; l++) {
#define P(kind, suffix, rows, cols)                                      \
    snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix);        \
    add_param(lay, kind, l, name, rows, cols)
        P(OZ_P_ATTN_NORM, "input_layernorm.weight", d, 0);
        P(OZ_P_Q, "self_attn.q_proj.weight", qdim, d);
        P(OZ_P_K, "self_attn.k_proj.weight", kvdim, d);
        P(OZ_P_V, "self_attn.v_proj.weight", kvdim, d);
        P(OZ_P_O, "self_attn.o_proj.weight", d, qdim);
        P(OZ_P_MLP_NORM, "post_attention_layernorm.weight", d, 0);
        P(OZ_P_GATE, "mlp.gate_proj.weight", F, d);
        P(OZ_P_UP, "mlp.up_proj.weight", F, d);
        P(OZ_P_DOWN, "mlp.down_proj.weight", d, F);
#undef P
        if (l == 0) lay->layer_stride = lay->total - lay->layer_begin;
    }
    add_param(lay, OZ_P_FINAL_NORM, -1, "model.norm.weight", d, 0);
    if (!c->tie_word_embeddings) add_param(lay, OZ_P_LM_HEAD, -1, "lm_head.weight", c->vocab_size, d);
    return OZ_OK;
}

void oz_param_layout_free(oz_param_layout *lay) {
    free(lay->params);
    memset(lay, 0, sizeof *lay);
}

const oz_param_info *oz_param_layout_find(const oz_param_layout *lay, const char *name) {
    for (int i = 0; i < lay->n; i++)
        if (strcmp(lay->params[i].name, name) == 0) return &lay->params[i];
    return NULL;
}

void oz_llama_init_params(const oz_llama_config *cfg, const oz_param_layout *lay, float *params,
                          uint64_t seed) {
    (void)cfg;
    memset(params, 0, lay->total * sizeof *params);
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

typedef struct {
    float *x, *ln1, *rstd1, *q, *k, *v, *att, *lse, *h, *ln2, *rstd2, *gate, *up, *mlp;
} layer_acts;

typedef struct {
    const float *attn_norm, *q, *k, *v, *o, *mlp_norm, *gate, *up, *down;
} layer_weights;

struct oz_llama {
    oz_llama_config cfg;
    oz_param_layout layout;
    oz_backend *be;
    oz_arena *arena;
    oz_llama_shape shape;
    float *params, *grads;
    float *layer_grads, *outer_grads; /* per-layer mode: one layer's gradients; embedding + tail */
    /* INT8 mode: embedding + tail and each layer's two norms in fp32; matrices as codes with
     * per-group scales and zero points; one layer dequantized at a time into wlayer. */
    float *outer_params, *layer_norms, *wscale, *wlayer;
    uint8_t *wq, *wzero;
    size_t *code_off, *group_off; /* per parameter index (INT8 matrices) */
    float *rope_cos, *rope_sin; /* (rope_len, hd/2) */
    int rope_len;
    int32_t *ids, *targets;     /* (N) in backend memory */
    /* acts[l] for l < L: what layer l's backward reads. With recompute, every acts[l] shares one
     * work set and only acts[l].x is the layer's own; xs[0..L] are the layer inputs (xs[L] is the
     * final residual stream). */
    layer_acts *acts;
    float **xs;
    float *lnf, *rstdf, *logits, *losses;
    /* mini-sequence MLP chunk buffers (mlp_rows x F) */
    float *cgate, *cup, *cmlp;
    /* backward scratch */
    float *dx, *dln, *dq, *dk, *dv, *datt, *dmlp;
    oz_grad_hook hook;
    void *hook_user;
    /* every arena buffer, for destroy */
    void **owned;
    int n_owned;
};

const oz_llama_config *oz_llama_get_config(const oz_llama *m) { return &m->cfg; }
const oz_param_layout *oz_llama_get_layout(const oz_llama *m) { return &m->layout; }
float *oz_llama_params(oz_llama *m) { return m->params; }

static bool is_layer_matrix(const oz_param_info *p) { return p->layer >= 0 && !p->is_norm; }

/* Offset of a non-layer tensor inside an "outer" buffer (embedding, then final norm and head). */
static size_t outer_offset(const oz_llama *m, const oz_param_info *p) {
    size_t layers_end = m->layout.layer_begin + (size_t)m->cfg.num_hidden_layers * m->layout.layer_stride;
    return p->offset < m->layout.layer_begin ? p->offset : p->offset - (layers_end - m->layout.layer_begin);
}

/* Offset of a tensor inside its layer's span. */
static size_t layer_offset(const oz_llama *m, const oz_param_info *p) {
    return p->offset - m->layout.layer_begin - (size_t)p->layer * m->layout.layer_stride;
}

float *oz_llama_param(oz_llama *m, int index) {
    const oz_param_info *p = &m->layout.params[index];
    if (m->params) return m->params + p->offset;
    if (p->layer < 0) return m->outer_params + outer_offset(m, p);
    if (p->is_norm) {
        size_t d = (size_t)m->cfg.hidden_size;
        return m->layer_norms + (size_t)p->layer * 2 * d + (p->kind == OZ_P_MLP_NORM ? d : 0);
    }
    return NULL;
}

bool oz_llama_param_int8(oz_llama *m, int index, uint8_t **q, float **scale, uint8_t **zero) {
    const oz_param_info *p = &m->layout.params[index];
    if (!m->wq || !is_layer_matrix(p)) return false;
    *q = m->wq + m->code_off[index];
    *scale = m->wscale + m->group_off[index];
    *zero = m->wzero + m->group_off[index];
    return true;
}

void oz_llama_import_params(oz_llama *m, const float *host) {
    oz_backend *be = m->be;
    if (m->params) {
        be->to_device(be, m->params, host, m->layout.total * sizeof(float));
        return;
    }
    for (int i = 0; i < m->layout.n; i++) {
        const oz_param_info *p = &m->layout.params[i];
        uint8_t *q, *z;
        float *sc;
        if (oz_llama_param_int8(m, i, &q, &sc, &z)) oz_i8_quantize(host + p->offset, p->numel, q, sc, z);
        else be->to_device(be, oz_llama_param(m, i), host + p->offset, p->numel * sizeof(float));
    }
}

void oz_llama_export_params(oz_llama *m, float *host) {
    oz_backend *be = m->be;
    if (m->params) {
        be->to_host(be, host, m->params, m->layout.total * sizeof(float));
        return;
    }
    memset(host, 0, m->layout.total * sizeof(float));
    for (int i = 0; i < m->layout.n; i++) {
        const oz_param_info *p = &m->layout.params[i];
        uint8_t *q, *z;
        float *sc;
        if (oz_llama_param_int8(m, i, &q, &sc, &z)) oz_i8_dequantize(q, sc, z, p->numel, host + p->offset);
        else be->to_host(be, host + p->offset, oz_llama_param(m, i), p->numel * sizeof(float));
    }
}
float *oz_llama_grads(oz_llama *m) { return m->grads; }

float *oz_llama_grad(oz_llama *m, int index) {
    const oz_param_info *p = &m->layout.params[index];
    if (m->grads) return m->grads + p->offset;
    if (!m->outer_grads) return NULL;
    if (p->layer >= 0) return m->layer_grads + layer_offset(m, p);
    return m->outer_grads + outer_offset(m, p);
}
void oz_llama_set_grad_hook(oz_llama *m, oz_grad_hook hook, void *user) {
    m->hook = hook;
    m->hook_user = user;
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

typedef struct {
    void **dest;            /* where the pointer goes (NULL when only planning) */
    oz_mem_category cat;
    size_t bytes;
    const char *what;
} buffer_desc;

typedef struct {
    buffer_desc *items;
    int n, cap;
    bool planning;
} buffer_list;

static void want(buffer_list *bl, void *dest, oz_mem_category cat, size_t bytes, const char *what) {
    if (bl->n < bl->cap) bl->items[bl->n] = (buffer_desc){bl->planning ? NULL : (void **)dest, cat, bytes, what};
    bl->n++;
}

#define F32(n) ((size_t)(n) * sizeof(float))

/* Lists every buffer a model with this config and shape allocates. m may be a zeroed dummy when
 * planning (its acts/xs arrays must still exist). */
static void list_buffers(oz_llama *m, buffer_list *bl) {
    const oz_llama_config *c = &m->cfg;
    const oz_llama_shape *s = &m->shape;
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

    if (!s->int8_matrices) {
        want(bl, &m->params, OZ_MEM_WEIGHTS, F32(m->layout.total), "weights");
    } else {
        size_t codes = 0, groups = 0;
        for (int i = 0; i < m->layout.n; i++) {
            const oz_param_info *p = &m->layout.params[i];
            if (!is_layer_matrix(p)) continue;
            codes += p->numel;
            groups += oz_qw_groups(p->numel);
        }
        want(bl, &m->outer_params, OZ_MEM_WEIGHTS, F32(m->layout.total - (size_t)L * m->layout.layer_stride),
             "embedding/head weights");
        want(bl, &m->layer_norms, OZ_MEM_WEIGHTS, F32((size_t)L * 2 * d), "layer norm weights");
        want(bl, &m->wq, OZ_MEM_WEIGHTS, codes, "INT8 matrices");
        want(bl, &m->wscale, OZ_MEM_QSCALES, F32(groups), "INT8 scales");
        want(bl, &m->wzero, OZ_MEM_QSCALES, groups, "INT8 zero points");
        want(bl, &m->wlayer, OZ_MEM_SCRATCH, F32(m->layout.layer_stride), "dequantized layer weights");
    }
    if (s->with_grads && !s->per_layer_grads) want(bl, &m->grads, OZ_MEM_GRADS, F32(m->layout.total), "gradients");
    if (s->with_grads && s->per_layer_grads) {
        size_t layers = (size_t)L * m->layout.layer_stride;
        want(bl, &m->layer_grads, OZ_MEM_GRADS, F32(m->layout.layer_stride), "one layer's gradients");
        want(bl, &m->outer_grads, OZ_MEM_GRADS, F32(m->layout.total - layers), "embedding/head gradients");
    }
    want(bl, &m->rope_cos, OZ_MEM_SCRATCH, F32(rope), "RoPE cos table");
    want(bl, &m->rope_sin, OZ_MEM_SCRATCH, F32(rope), "RoPE sin table");
    want(bl, &m->ids, OZ_MEM_ACTIVATIONS, 2 * N * sizeof(int32_t), "token ids");
    for (int l = 0; l <= L; l++) want(bl, &m->xs[l], OZ_MEM_ACTIVATIONS, F32(N * d), "layer input");
    /* Without recompute every layer keeps its own set; with it, one work set is shared. */
    int sets = s->recompute ? 1 : L;
    for (int l = 0; l < sets; l++) {
        layer_acts *a = &m->acts[l];
        want(bl, &a->ln1, OZ_MEM_ACTIVATIONS, F32(N * d), "attention norm output");
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
    }
    if (mini) {
        want(bl, &m->cgate, OZ_MEM_SCRATCH, F32(mlp_rows * F), "MLP gate chunk");
        want(bl, &m->cup, OZ_MEM_SCRATCH, F32(mlp_rows * F), "MLP up chunk");
        want(bl, &m->cmlp, OZ_MEM_SCRATCH, F32(mlp_rows * F), "MLP hidden chunk");
    }
    want(bl, &m->lnf, OZ_MEM_ACTIVATIONS, F32(N * d), "final norm output");
    want(bl, &m->rstdf, OZ_MEM_ACTIVATIONS, F32(N), "final norm rstd");
    want(bl, &m->logits, s->head_chunks > 0 ? OZ_MEM_SCRATCH : OZ_MEM_ACTIVATIONS, F32(head_rows * V), "logits");
    want(bl, &m->losses, OZ_MEM_ACTIVATIONS, F32(N), "losses");
    if (s->with_grads) {
        want(bl, &m->dx, OZ_MEM_SCRATCH, F32(N * d), "residual gradient");
        want(bl, &m->dln, OZ_MEM_SCRATCH, F32(N * d), "norm-output gradient");
        want(bl, &m->dq, OZ_MEM_SCRATCH, F32(N * qd), "query gradient");
        want(bl, &m->dk, OZ_MEM_SCRATCH, F32(N * kvd), "key gradient");
        want(bl, &m->dv, OZ_MEM_SCRATCH, F32(N * kvd), "value gradient");
        want(bl, &m->datt, OZ_MEM_SCRATCH, F32(N * qd), "attention gradient");
        want(bl, &m->dmlp, OZ_MEM_SCRATCH, F32(mlp_rows * F), "MLP gradient");
    }
}

static oz_status check_shape(const oz_llama_shape *s, oz_err *err) {
    if (s->batch <= 0 || s->seq <= 0)
        return oz_fail(err, OZ_ERR_INPUT, "batch and sequence length must be positive (got %d, %d)", s->batch,
                       s->seq);
    if (s->mlp_chunks < 0 || s->head_chunks < 0 || (s->mlp_chunks > 0) != (s->head_chunks > 0))
        return oz_fail(err, OZ_ERR_INPUT, "mini-sequence chunk counts must both be positive or both 0");
    if ((long)s->mlp_chunks > (long)s->batch * s->seq || (long)s->head_chunks > (long)s->batch * s->seq)
        return oz_fail(err, OZ_ERR_INPUT, "more mini-sequences (%d, %d) than tokens (%ld)", s->mlp_chunks,
                       s->head_chunks, (long)s->batch * s->seq);
    return OZ_OK;
}

oz_status oz_llama_plan_memory(const oz_llama_config *cfg, oz_llama_shape shape, oz_llama_plan *plan,
                               oz_err *err) {
    memset(plan, 0, sizeof *plan);
    OZ_TRY(check_shape(&shape, err));
    oz_llama dummy;
    memset(&dummy, 0, sizeof dummy);
    dummy.cfg = *cfg;
    dummy.shape = shape;
    OZ_TRY(oz_param_layout_build(cfg, &dummy.layout, err));
    int L = cfg->num_hidden_layers;
    dummy.acts = calloc((size_t)L, sizeof *dummy.acts);
    dummy.xs = calloc((size_t)L + 1, sizeof *dummy.xs);
    buffer_list bl = {NULL, 0, 0, true};
    oz_status st = OZ_OK;
    if (!dummy.acts || !dummy.xs) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory planning");
    if (st == OZ_OK) {
        list_buffers(&dummy, &bl); /* first pass counts */
        bl.items = calloc((size_t)bl.n, sizeof *bl.items);
        if (!bl.items) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory planning");
    }
    if (st == OZ_OK) {
        bl.cap = bl.n;
        bl.n = 0;
        list_buffers(&dummy, &bl);
        for (int i = 0; i < bl.n; i++) {
            plan->bytes[bl.items[i].cat] += bl.items[i].bytes;
            if (bl.items[i].bytes > plan->largest[bl.items[i].cat]) plan->largest[bl.items[i].cat] = bl.items[i].bytes;
        }
    }
    free(bl.items);
    free(dummy.acts);
    free(dummy.xs);
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
    OZ_TRY(check_shape(&shape, err));
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
    *out = m; /* from here on, oz_llama_destroy cleans up a partial model */
    int L = cfg->num_hidden_layers;
    m->acts = calloc((size_t)L, sizeof *m->acts);
    m->xs = calloc((size_t)L + 1, sizeof *m->xs);
    buffer_list bl = {NULL, 0, 0, false};
    if (m->acts && m->xs) {
        list_buffers(m, &bl);
        bl.items = calloc((size_t)bl.n, sizeof *bl.items);
        m->owned = calloc((size_t)bl.n, sizeof *m->owned);
    }
    if (!bl.items || !m->owned) {
        free(bl.items);
        return oz_fail(err, OZ_ERR_NOMEM, "out of memory creating the model");
    }
    bl.cap = bl.n;
    bl.n = 0;
    list_buffers(m, &bl);
    for (int i = 0; i < bl.n && st == OZ_OK; i++) {
        st = oz_arena_alloc(arena, bl.items[i].cat, bl.items[i].bytes, bl.items[i].what, bl.items[i].dest, err);
        if (st == OZ_OK) m->owned[m->n_owned++] = *bl.items[i].dest;
    }
    free(bl.items);
    if (st != OZ_OK) return st;
    m->targets = m->ids + (size_t)shape.batch * shape.seq;
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
    if (shape.recompute)
        for (int l = 1; l < L; l++) m->acts[l] = m->acts[0];
    for (int l = 0; l < L; l++) m->acts[l].x = m->xs[l];
    return build_rope_tables(m, err);
}

void oz_llama_destroy(oz_llama *m) {
    if (!m) return;
    for (int i = 0; i < m->n_owned; i++) oz_arena_free(m->arena, m->owned[i]);
    free(m->owned);
    free(m->code_off);
    free(m->group_off);
    free(m->acts);
    free(m->xs);
    oz_param_layout_free(&m->layout);
    free(m);
}

void oz_llama_zero_grads(oz_llama *m) {
    if (m->grads) m->be->fill(m->be, m->grads, 0.0f, m->layout.total);
    if (m->outer_grads)
        m->be->fill(m->be, m->outer_grads, 0.0f,
                    m->layout.total - (size_t)m->cfg.num_hidden_layers * m->layout.layer_stride);
}

/* Pointers to layer l's tensors inside a buffer holding that layer's span (layout offsets
 * relative to the layer's start). */
static layer_weights layer_view(const oz_llama *m, const float *span, int l) {
    const oz_param_info *p = &m->layout.params[1 + 9 * l];
    layer_weights w = {span + layer_offset(m, &p[0]), span + layer_offset(m, &p[1]), span + layer_offset(m, &p[2]),
                       span + layer_offset(m, &p[3]), span + layer_offset(m, &p[4]), span + layer_offset(m, &p[5]),
                       span + layer_offset(m, &p[6]), span + layer_offset(m, &p[7]), span + layer_offset(m, &p[8])};
    return w;
}

/* Layer l's weights for compute: in place, or (INT8 mode) its norms copied and its matrices
 * dequantized into the layer scratch buffer, which then holds only this layer. */
static layer_weights layer_params(oz_llama *m, int l) {
    if (m->params) return layer_view(m, m->params + m->layout.layer_begin + (size_t)l * m->layout.layer_stride, l);
    for (int i = 1 + 9 * l; i < 1 + 9 * (l + 1); i++) {
        const oz_param_info *p = &m->layout.params[i];
        float *dst = m->wlayer + layer_offset(m, p);
        uint8_t *q, *z;
        float *sc;
        if (oz_llama_param_int8(m, i, &q, &sc, &z)) oz_i8_dequantize(q, sc, z, p->numel, dst);
        else m->be->copy(m->be, dst, oz_llama_param(m, i), p->numel * sizeof(float));
    }
    return layer_view(m, m->wlayer, l);
}

/* Pointers to layer l's gradient tensors (in the full buffer, or the per-layer one). */
static layer_weights layer_grad_tensors(oz_llama *m, int l) {
    int i = 1 + 9 * l;
    layer_weights w = {oz_llama_grad(m, i), oz_llama_grad(m, i + 1), oz_llama_grad(m, i + 2),
                       oz_llama_grad(m, i + 3), oz_llama_grad(m, i + 4), oz_llama_grad(m, i + 5),
                       oz_llama_grad(m, i + 6), oz_llama_grad(m, i + 7), oz_llama_grad(m, i + 8)};
    return w;
}

static int lm_head_index(const oz_llama *m) { return m->cfg.tie_word_embeddings ? 0 : m->layout.n - 1; }
static int final_norm_index(const oz_llama *m) { return m->layout.n - (m->cfg.tie_word_embeddings ? 1 : 2); }


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
 * MLP norm's output, into the chunk buffers. */
static void mlp_chunk_forward(oz_llama *m, const layer_weights *w, const float *xin, int rows, const dims *g) {
    oz_backend *be = m->be;
    int d = g->d, F = g->F;
    be->gemm(be, 0, 1, rows, F, d, 1.0f, xin, d, w->gate, d, 0.0f, m->cgate, F);
    be->gemm(be, 0, 1, rows, F, d, 1.0f, xin, d, w->up, d, 0.0f, m->cup, F);
    be->swiglu_fwd(be, m->cmlp, m->cgate, m->cup, (size_t)rows * F);
}

/* Layer l forward from a->x into a's buffers and out (the next layer's input). */
static void layer_forward(oz_llama *m, int l, layer_acts *a, float *out, const dims *g) {
    oz_backend *be = m->be;
    const oz_llama_config *c = &m->cfg;
    layer_weights w = layer_params(m, l);
    int N = g->N, d = g->d, F = g->F;
    be->rmsnorm_fwd(be, a->ln1, a->rstd1, a->x, w.attn_norm, N, d, c->rms_norm_eps);
    be->gemm(be, 0, 1, N, g->qd, d, 1.0f, a->ln1, d, w.q, d, 0.0f, a->q, g->qd);
    be->gemm(be, 0, 1, N, g->kvd, d, 1.0f, a->ln1, d, w.k, d, 0.0f, a->k, g->kvd);
    be->gemm(be, 0, 1, N, g->kvd, d, 1.0f, a->ln1, d, w.v, d, 0.0f, a->v, g->kvd);
    be->rope(be, a->q, m->rope_cos, m->rope_sin, g->B, g->T, g->Hq, g->hd, 0, 0);
    be->rope(be, a->k, m->rope_cos, m->rope_sin, g->B, g->T, g->Hkv, g->hd, 0, 0);
    be->attention_fwd(be, a->att, a->lse, a->q, a->k, a->v, g->B, g->T, g->Hq, g->Hkv, g->hd);
    be->copy(be, a->h, a->x, (size_t)N * d * sizeof(float));
    be->gemm(be, 0, 1, N, d, g->qd, 1.0f, a->att, g->qd, w.o, g->qd, 1.0f, a->h, d);
    be->rmsnorm_fwd(be, a->ln2, a->rstd2, a->h, w.mlp_norm, N, d, c->rms_norm_eps);
    be->copy(be, out, a->h, (size_t)N * d * sizeof(float));
    if (m->shape.mlp_chunks == 0) {
        be->gemm(be, 0, 1, N, F, d, 1.0f, a->ln2, d, w.gate, d, 0.0f, a->gate, F);
        be->gemm(be, 0, 1, N, F, d, 1.0f, a->ln2, d, w.up, d, 0.0f, a->up, F);
        be->swiglu_fwd(be, a->mlp, a->gate, a->up, (size_t)N * F);
        be->gemm(be, 0, 1, N, d, F, 1.0f, a->mlp, F, w.down, F, 1.0f, out, d);
        return;
    }
    /* Mini-sequences: one chunk of the MLP's intermediates exists at a time. */
    for (int i = 0; i < m->shape.mlp_chunks; i++) {
        int r0, r1;
        chunk_rows(N, m->shape.mlp_chunks, i, &r0, &r1);
        int rows = r1 - r0;
        if (rows <= 0) continue;
        mlp_chunk_forward(m, &w, a->ln2 + (size_t)r0 * d, rows, g);
        be->gemm(be, 0, 1, rows, d, F, 1.0f, m->cmlp, F, w.down, F, 1.0f, out + (size_t)r0 * d, d);
    }
}

/* MLP backward for rows [r0, r1): dx (rows of the residual gradient) flows in; dln gets the
 * gradient of the MLP norm's output; weight gradients accumulate. gate/up/mlp hold the rows'
 * forward values (they are overwritten with gradients). */
static void mlp_backward_rows(oz_llama *m, const layer_weights *w, const layer_weights *gw, const float *ln2,
                              const float *dx, float *dln, float *gate, float *up, const float *mlp, int rows,
                              const dims *g) {
    oz_backend *be = m->be;
    int d = g->d, F = g->F;
    be->gemm(be, 0, 0, rows, F, d, 1.0f, dx, d, w->down, F, 0.0f, m->dmlp, F);
    be->gemm(be, 1, 0, d, F, rows, 1.0f, dx, d, mlp, F, 1.0f, (float *)gw->down, F);
    be->swiglu_bwd(be, gate, up, m->dmlp, gate, up, (size_t)rows * F); /* gradients overwrite the inputs */
    be->gemm(be, 0, 0, rows, d, F, 1.0f, gate, F, w->gate, d, 0.0f, dln, d);
    be->gemm(be, 0, 0, rows, d, F, 1.0f, up, F, w->up, d, 1.0f, dln, d);
    be->gemm(be, 1, 0, F, d, rows, 1.0f, gate, F, ln2, d, 1.0f, (float *)gw->gate, d);
    be->gemm(be, 1, 0, F, d, rows, 1.0f, up, F, ln2, d, 1.0f, (float *)gw->up, d);
}

/* Layer l backward: m->dx holds dL/d(layer output) and ends holding dL/d(layer input). */
static void layer_backward(oz_llama *m, int l, layer_acts *a, const dims *g) {
    oz_backend *be = m->be;
    layer_weights w = layer_params(m, l);
    layer_weights gw = layer_grad_tensors(m, l);
    if (m->layer_grads) be->fill(be, m->layer_grads, 0.0f, m->layout.layer_stride);
    int N = g->N, d = g->d, qd = g->qd, kvd = g->kvd;
    if (m->shape.mlp_chunks == 0) {
        mlp_backward_rows(m, &w, &gw, a->ln2, m->dx, m->dln, a->gate, a->up, a->mlp, N, g);
    } else {
        for (int i = 0; i < m->shape.mlp_chunks; i++) {
            int r0, r1;
            chunk_rows(N, m->shape.mlp_chunks, i, &r0, &r1);
            int rows = r1 - r0;
            if (rows <= 0) continue;
            const float *xin = a->ln2 + (size_t)r0 * d;
            /* Recompute this chunk's intermediates (MsT Alg. 3), then its backward. */
            mlp_chunk_forward(m, &w, xin, rows, g);
            mlp_backward_rows(m, &w, &gw, xin, m->dx + (size_t)r0 * d, m->dln + (size_t)r0 * d, m->cgate,
                              m->cup, m->cmlp, rows, g);
        }
    }
    be->rmsnorm_bwd(be, m->dx, (float *)gw.mlp_norm, m->dln, a->h, w.mlp_norm, a->rstd2, N, d);
    /* Attention: h = x + att @ o^T */
    be->gemm(be, 0, 0, N, qd, d, 1.0f, m->dx, d, w.o, qd, 0.0f, m->datt, qd);
    be->gemm(be, 1, 0, d, qd, N, 1.0f, m->dx, d, a->att, qd, 1.0f, (float *)gw.o, qd);
    be->attention_bwd(be, m->dq, m->dk, m->dv, m->datt, a->q, a->k, a->v, a->att, a->lse, g->B, g->T, g->Hq,
                      g->Hkv, g->hd);
    be->rope(be, m->dq, m->rope_cos, m->rope_sin, g->B, g->T, g->Hq, g->hd, 0, 1);
    be->rope(be, m->dk, m->rope_cos, m->rope_sin, g->B, g->T, g->Hkv, g->hd, 0, 1);
    be->gemm(be, 0, 0, N, d, qd, 1.0f, m->dq, qd, w.q, d, 0.0f, m->dln, d);
    be->gemm(be, 0, 0, N, d, kvd, 1.0f, m->dk, kvd, w.k, d, 1.0f, m->dln, d);
    be->gemm(be, 0, 0, N, d, kvd, 1.0f, m->dv, kvd, w.v, d, 1.0f, m->dln, d);
    be->gemm(be, 1, 0, qd, d, N, 1.0f, m->dq, qd, a->ln1, d, 1.0f, (float *)gw.q, d);
    be->gemm(be, 1, 0, kvd, d, N, 1.0f, m->dk, kvd, a->ln1, d, 1.0f, (float *)gw.k, d);
    be->gemm(be, 1, 0, kvd, d, N, 1.0f, m->dv, kvd, a->ln1, d, 1.0f, (float *)gw.v, d);
    be->rmsnorm_bwd(be, m->dx, (float *)gw.attn_norm, m->dln, a->x, w.attn_norm, a->rstd1, N, d);
}

/* LM head + cross-entropy over head chunks. With grad_scale != 0 (training) each chunk's
 * gradient is taken right away (Liger-style): dL/d(final norm output) goes to m->dln and the head's
 * weight gradient accumulates, so only one chunk of logits ever exists. */
static oz_status head_forward(oz_llama *m, const oz_llama_batch *b, float grad_scale, const dims *g,
                              double *loss_sum, long *n_targets, oz_err *err) {
    oz_backend *be = m->be;
    int N = g->N, d = g->d, V = g->V;
    const float *head = oz_llama_param(m, lm_head_index(m));
    int chunks = m->shape.head_chunks > 0 ? m->shape.head_chunks : 1;
    if (b->targets) be->to_device(be, m->targets, b->targets, (size_t)N * sizeof(int32_t));
    for (int i = 0; i < chunks; i++) {
        int r0, r1;
        chunk_rows(N, chunks, i, &r0, &r1);
        int rows = r1 - r0;
        if (rows <= 0) continue;
        const float *xin = m->lnf + (size_t)r0 * d;
        be->gemm(be, 0, 1, rows, V, d, 1.0f, xin, d, head, d, 0.0f, m->logits, V);
        if (b->logits_out)
            be->to_host(be, b->logits_out + (size_t)r0 * V, m->logits, (size_t)rows * V * sizeof(float));
        if (!b->targets) continue;
        be->cross_entropy(be, m->logits, m->losses + r0, m->targets + r0, rows, V, grad_scale);
        if (grad_scale != 0.0f) {
            be->gemm(be, 0, 0, rows, d, V, 1.0f, m->logits, V, head, d, 0.0f, m->dln + (size_t)r0 * d, d);
            be->gemm(be, 1, 0, V, d, rows, 1.0f, m->logits, V, xin, d, 1.0f, oz_llama_grad(m, lm_head_index(m)), d);
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

static oz_status forward(oz_llama *m, const oz_llama_batch *b, float grad_scale, double *loss_sum,
                         long *n_targets, oz_err *err) {
    OZ_TRY(check_batch(m, b, err));
    oz_backend *be = m->be;
    dims g = dims_of(m, b->B, b->T);
    be->to_device(be, m->ids, b->ids, (size_t)g.N * sizeof(int32_t));
    be->embedding_fwd(be, m->xs[0], oz_llama_param(m, 0), m->ids, g.N, g.d);
    for (int l = 0; l < g.L; l++) layer_forward(m, l, &m->acts[l], m->xs[l + 1], &g);
    be->rmsnorm_fwd(be, m->lnf, m->rstdf, m->xs[g.L], oz_llama_param(m, final_norm_index(m)), g.N, g.d, m->cfg.rms_norm_eps);
    return head_forward(m, b, grad_scale, &g, loss_sum, n_targets, err);
}

oz_status oz_llama_forward(oz_llama *m, const oz_llama_batch *b, double *loss_sum, long *n_targets,
                           oz_err *err) {
    return forward(m, b, 0.0f, loss_sum, n_targets, err);
}

oz_status oz_llama_forward_backward(oz_llama *m, const oz_llama_batch *b, float grad_scale,
                                    double *loss_sum, long *n_targets, oz_err *err) {
    if (!m->grads && !m->outer_grads)
        return oz_fail(err, OZ_ERR_INTERNAL, "model was created without gradient buffers");
    if (!b->targets) return oz_fail(err, OZ_ERR_INTERNAL, "backward needs targets");
    if (grad_scale == 0.0f) return oz_fail(err, OZ_ERR_INTERNAL, "backward needs a non-zero grad_scale");
    OZ_TRY(forward(m, b, grad_scale, loss_sum, n_targets, err));

    oz_backend *be = m->be;
    dims g = dims_of(m, b->B, b->T);
    /* The head's part ran inside the forward: m->dln holds dL/d(final norm output). */
    be->fill(be, m->dx, 0.0f, (size_t)g.N * g.d);
    be->rmsnorm_bwd(be, m->dx, oz_llama_grad(m, final_norm_index(m)), m->dln, m->xs[g.L],
                    oz_llama_param(m, final_norm_index(m)), m->rstdf, g.N, g.d);
    for (int l = g.L - 1; l >= 0; l--) {
        layer_acts *a = &m->acts[l];
        if (m->shape.recompute) {
            /* Rebuild this layer's activations from its saved input; the output it writes is scratch
             * (the next layer's input was saved in the forward and is not needed any more). */
            a->x = m->xs[l];
            layer_forward(m, l, a, m->dln, &g);
        }
        layer_backward(m, l, a, &g);
        if (m->hook) m->hook(m->hook_user, l);
    }
    be->embedding_bwd(be, oz_llama_grad(m, 0), m->dx, m->ids, g.N, g.d, g.V);
    if (m->hook) m->hook(m->hook_user, -1);
    return OZ_OK;
}
