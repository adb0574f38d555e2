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
    float *rope_cos, *rope_sin; /* (rope_len, hd/2) */
    int rope_len;
    int32_t *ids, *targets;     /* (N) in backend memory */
    layer_acts *acts;           /* L+1 entries: acts[L].x is the final residual stream */
    float *lnf, *rstdf, *logits, *losses;
    /* backward scratch */
    float *dx, *dln, *dq, *dk, *dv, *datt, *dmlp;
};

const oz_llama_config *oz_llama_get_config(const oz_llama *m) { return &m->cfg; }
const oz_param_layout *oz_llama_get_layout(const oz_llama *m) { return &m->layout; }
float *oz_llama_params(oz_llama *m) { return m->params; }
float *oz_llama_grads(oz_llama *m) { return m->grads; }

static oz_status alloc_floats(oz_llama *m, oz_mem_category cat, size_t n, const char *what, float **out,
                              oz_err *err) {
    void *p;
    OZ_TRY(oz_arena_alloc(m->arena, cat, n * sizeof(float), what, &p, err));
    *out = p;
    return OZ_OK;
}

static oz_status build_rope_tables(oz_llama *m, oz_err *err) {
    int half = m->cfg.head_dim / 2;
    m->rope_len = m->cfg.max_position_embeddings > m->shape.seq ? m->cfg.max_position_embeddings
                                                                 : m->shape.seq;
    size_t n = (size_t)m->rope_len * half;
    OZ_TRY(alloc_floats(m, OZ_MEM_SCRATCH, n, "RoPE cos table", &m->rope_cos, err));
    OZ_TRY(alloc_floats(m, OZ_MEM_SCRATCH, n, "RoPE sin table", &m->rope_sin, err));
    float *c = malloc(n * sizeof *c), *s = malloc(n * sizeof *s);
    if (!c || !s) {
        free(c);
        free(s);
        return oz_fail(err, OZ_ERR_NOMEM, "out of memory building RoPE tables");
    }
    for (int pos = 0; pos < m->rope_len; pos++) {
        for (int i = 0; i < half; i++) {
            double inv_freq = pow((double)m->cfg.rope_theta, -(2.0 * i) / m->cfg.head_dim);
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
    if (shape.batch <= 0 || shape.seq <= 0)
        return oz_fail(err, OZ_ERR_INPUT, "batch and sequence length must be positive (got %d, %d)",
                       shape.batch, shape.seq);
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

    const oz_llama_config *c = cfg;
    size_t N = (size_t)shape.batch * shape.seq;
    size_t d = c->hidden_size, F = c->intermediate_size, V = c->vocab_size;
    size_t qd = (size_t)c->num_attention_heads * c->head_dim;
    size_t kvd = (size_t)c->num_key_value_heads * c->head_dim;
    int L = c->num_hidden_layers;

    OZ_TRY(alloc_floats(m, OZ_MEM_WEIGHTS, m->layout.total, "weights", &m->params, err));
    if (shape.with_grads)
        OZ_TRY(alloc_floats(m, OZ_MEM_GRADS, m->layout.total, "gradients", &m->grads, err));
    OZ_TRY(build_rope_tables(m, err));

    void *p;
    OZ_TRY(oz_arena_alloc(arena, OZ_MEM_ACTIVATIONS, 2 * N * sizeof(int32_t), "token ids", &p, err));
    m->ids = p;
    m->targets = m->ids + N;

    /* One activation block per layer, carved into the tensors the backward needs. */
    m->acts = calloc((size_t)L + 1, sizeof *m->acts);
    if (!m->acts) return oz_fail(err, OZ_ERR_NOMEM, "out of memory creating the model");
    size_t per_layer = N * (4 * d + 2 * qd + 2 * kvd + 3 * F + 2) + (size_t)shape.batch *
                       c->num_attention_heads * shape.seq;
    float *block;
    OZ_TRY(alloc_floats(m, OZ_MEM_ACTIVATIONS, per_layer * L + N * d, "layer activations", &block, err));
    for (int l = 0; l < L; l++) {
        layer_acts *a = &m->acts[l];
        float *cur = block + (size_t)l * per_layer;
#define CARVE(field, count) a->field = cur, cur += (count)
        CARVE(x, N * d);
        CARVE(ln1, N * d);
        CARVE(rstd1, N);
        CARVE(q, N * qd);
        CARVE(k, N * kvd);
        CARVE(v, N * kvd);
        CARVE(att, N * qd);
        CARVE(lse, (size_t)shape.batch * c->num_attention_heads * shape.seq);
        CARVE(h, N * d);
        CARVE(ln2, N * d);
        CARVE(rstd2, N);
        CARVE(gate, N * F);
        CARVE(up, N * F);
        CARVE(mlp, N * F);
#undef CARVE
    }
    m->acts[L].x = block + (size_t)L * per_layer;
    OZ_TRY(alloc_floats(m, OZ_MEM_ACTIVATIONS, N * d, "final norm output", &m->lnf, err));
    OZ_TRY(alloc_floats(m, OZ_MEM_ACTIVATIONS, N, "final norm rstd", &m->rstdf, err));
    OZ_TRY(alloc_floats(m, OZ_MEM_ACTIVATIONS, N * V, "logits", &m->logits, err));
    OZ_TRY(alloc_floats(m, OZ_MEM_ACTIVATIONS, N, "losses", &m->losses, err));
    if (shape.with_grads) {
        size_t wide = qd > d ? qd : d;
        OZ_TRY(alloc_floats(m, OZ_MEM_SCRATCH, N * d, "residual gradient", &m->dx, err));
        OZ_TRY(alloc_floats(m, OZ_MEM_SCRATCH, N * wide, "norm-output gradient", &m->dln, err));
        OZ_TRY(alloc_floats(m, OZ_MEM_SCRATCH, N * qd, "q gradient", &m->dq, err));
        OZ_TRY(alloc_floats(m, OZ_MEM_SCRATCH, N * kvd, "k gradient", &m->dk, err));
        OZ_TRY(alloc_floats(m, OZ_MEM_SCRATCH, N * kvd, "v gradient", &m->dv, err));
        OZ_TRY(alloc_floats(m, OZ_MEM_SCRATCH, N * qd, "attention gradient", &m->datt, err));
        OZ_TRY(alloc_floats(m, OZ_MEM_SCRATCH, N * F, "MLP gradient", &m->dmlp, err));
    }
    return OZ_OK;
}

void oz_llama_destroy(oz_llama *m) {
    if (!m) return;
    float *bufs[] = {m->params, m->grads, m->rope_cos, m->rope_sin, (float *)m->ids,
                     m->acts ? m->acts[0].x : NULL, m->lnf, m->rstdf, m->logits, m->losses,
                     m->dx, m->dln, m->dq, m->dk, m->dv, m->datt, m->dmlp};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) oz_arena_free(m->arena, bufs[i]);
    free(m->acts);
    oz_param_layout_free(&m->layout);
    free(m);
}

void oz_llama_zero_grads(oz_llama *m) {
    if (m->grads) m->be->fill(m->be, m->grads, 0.0f, m->layout.total);
}

/* Pointers to layer l's tensors inside a flat buffer (weights or gradients). */
static layer_weights layer_tensors(const oz_llama *m, const float *base, int l) {
    const oz_param_info *p = &m->layout.params[1 + 9 * l];
    layer_weights w = {base + p[0].offset, base + p[1].offset, base + p[2].offset, base + p[3].offset,
                       base + p[4].offset, base + p[5].offset, base + p[6].offset, base + p[7].offset,
                       base + p[8].offset};
    return w;
}

static const float *lm_head_of(const oz_llama *m, const float *base) {
    const oz_param_info *last = &m->layout.params[m->layout.n - 1];
    return m->cfg.tie_word_embeddings ? base + m->layout.params[0].offset : base + last->offset;
}

static const float *final_norm_of(const oz_llama *m, const float *base) {
    int idx = m->layout.n - (m->cfg.tie_word_embeddings ? 1 : 2);
    return base + m->layout.params[idx].offset;
}

static oz_status check_batch(const oz_llama *m, const oz_llama_batch *b, oz_err *err) {
    if (b->B <= 0 || b->T <= 0 || b->B > m->shape.batch || b->T > m->shape.seq)
        return oz_fail(err, OZ_ERR_INTERNAL, "batch (%d, %d) exceeds the model's buffers (%d, %d)", b->B,
                       b->T, m->shape.batch, m->shape.seq);
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

/* Runs the forward pass; with grad_scale != 0 the logits buffer ends holding dL/dlogits. */
static oz_status forward(oz_llama *m, const oz_llama_batch *b, float grad_scale, double *loss_sum,
                         long *n_targets, oz_err *err) {
    OZ_TRY(check_batch(m, b, err));
    oz_backend *be = m->be;
    const oz_llama_config *c = &m->cfg;
    int B = b->B, T = b->T, N = B * T;
    int d = c->hidden_size, F = c->intermediate_size, V = c->vocab_size, hd = c->head_dim;
    int Hq = c->num_attention_heads, Hkv = c->num_key_value_heads, qd = Hq * hd, kvd = Hkv * hd;
    int L = c->num_hidden_layers;

    be->to_device(be, m->ids, b->ids, (size_t)N * sizeof(int32_t));
    be->embedding_fwd(be, m->acts[0].x, m->params, m->ids, N, d);
    for (int l = 0; l < L; l++) {
        layer_acts *a = &m->acts[l];
        layer_weights w = layer_tensors(m, m->params, l);
        be->rmsnorm_fwd(be, a->ln1, a->rstd1, a->x, w.attn_norm, N, d, c->rms_norm_eps);
        be->gemm(be, 0, 1, N, qd, d, 1.0f, a->ln1, d, w.q, d, 0.0f, a->q, qd);
        be->gemm(be, 0, 1, N, kvd, d, 1.0f, a->ln1, d, w.k, d, 0.0f, a->k, kvd);
        be->gemm(be, 0, 1, N, kvd, d, 1.0f, a->ln1, d, w.v, d, 0.0f, a->v, kvd);
        be->rope(be, a->q, m->rope_cos, m->rope_sin, B, T, Hq, hd, 0, 0);
        be->rope(be, a->k, m->rope_cos, m->rope_sin, B, T, Hkv, hd, 0, 0);
        be->attention_fwd(be, a->att, a->lse, a->q, a->k, a->v, B, T, Hq, Hkv, hd);
        be->copy(be, a->h, a->x, (size_t)N * d * sizeof(float));
        be->gemm(be, 0, 1, N, d, qd, 1.0f, a->att, qd, w.o, qd, 1.0f, a->h, d);
        be->rmsnorm_fwd(be, a->ln2, a->rstd2, a->h, w.mlp_norm, N, d, c->rms_norm_eps);
        be->gemm(be, 0, 1, N, F, d, 1.0f, a->ln2, d, w.gate, d, 0.0f, a->gate, F);
        be->gemm(be, 0, 1, N, F, d, 1.0f, a->ln2, d, w.up, d, 0.0f, a->up, F);
        be->swiglu_fwd(be, a->mlp, a->gate, a->up, (size_t)N * F);
        float *next = m->acts[l + 1].x;
        be->copy(be, next, a->h, (size_t)N * d * sizeof(float));
        be->gemm(be, 0, 1, N, d, F, 1.0f, a->mlp, F, w.down, F, 1.0f, next, d);
    }
    be->rmsnorm_fwd(be, m->lnf, m->rstdf, m->acts[L].x, final_norm_of(m, m->params), N, d,
                    c->rms_norm_eps);
    be->gemm(be, 0, 1, N, V, d, 1.0f, m->lnf, d, lm_head_of(m, m->params), d, 0.0f, m->logits, V);
    if (b->logits_out) be->to_host(be, b->logits_out, m->logits, (size_t)N * V * sizeof(float));

    long count = 0;
    double sum = 0.0;
    if (b->targets) {
        be->to_device(be, m->targets, b->targets, (size_t)N * sizeof(int32_t));
        be->cross_entropy(be, m->logits, m->losses, m->targets, N, V, grad_scale);
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

oz_status oz_llama_forward(oz_llama *m, const oz_llama_batch *b, double *loss_sum, long *n_targets,
                           oz_err *err) {
    return forward(m, b, 0.0f, loss_sum, n_targets, err);
}

oz_status oz_llama_forward_backward(oz_llama *m, const oz_llama_batch *b, float grad_scale,
                                    double *loss_sum, long *n_targets, oz_err *err) {
    if (!m->grads) return oz_fail(err, OZ_ERR_INTERNAL, "model was created without gradient buffers");
    if (!b->targets) return oz_fail(err, OZ_ERR_INTERNAL, "backward needs targets");
    if (grad_scale == 0.0f) return oz_fail(err, OZ_ERR_INTERNAL, "backward needs a non-zero grad_scale");
    OZ_TRY(forward(m, b, grad_scale, loss_sum, n_targets, err));

    oz_backend *be = m->be;
    const oz_llama_config *c = &m->cfg;
    int B = b->B, T = b->T, N = B * T;
    int d = c->hidden_size, F = c->intermediate_size, V = c->vocab_size, hd = c->head_dim;
    int Hq = c->num_attention_heads, Hkv = c->num_key_value_heads, qd = Hq * hd, kvd = Hkv * hd;
    int L = c->num_hidden_layers;
    float *g = m->grads;

    /* LM head: logits now hold dL/dlogits. */
    float *dlogits = m->logits;
    be->gemm(be, 0, 0, N, d, V, 1.0f, dlogits, V, lm_head_of(m, m->params), d, 0.0f, m->dln, d);
    be->gemm(be, 1, 0, V, d, N, 1.0f, dlogits, V, m->lnf, d, 1.0f, (float *)lm_head_of(m, g), d);
    be->fill(be, m->dx, 0.0f, (size_t)N * d);
    be->rmsnorm_bwd(be, m->dx, (float *)final_norm_of(m, g), m->dln, m->acts[L].x,
                    final_norm_of(m, m->params), m->rstdf, N, d);

    for (int l = L - 1; l >= 0; l--) {
        layer_acts *a = &m->acts[l];
        layer_weights w = layer_tensors(m, m->params, l);
        layer_weights gw = layer_tensors(m, g, l);
        /* MLP: next = h + mlp @ down^T */
        be->gemm(be, 0, 0, N, F, d, 1.0f, m->dx, d, w.down, F, 0.0f, m->dmlp, F);
        be->gemm(be, 1, 0, d, F, N, 1.0f, m->dx, d, a->mlp, F, 1.0f, (float *)gw.down, F);
        float *dgate = a->gate, *dup = a->up; /* gradients overwrite the dead activations */
        be->swiglu_bwd(be, dgate, dup, m->dmlp, a->gate, a->up, (size_t)N * F);
        be->gemm(be, 0, 0, N, d, F, 1.0f, dgate, F, w.gate, d, 0.0f, m->dln, d);
        be->gemm(be, 0, 0, N, d, F, 1.0f, dup, F, w.up, d, 1.0f, m->dln, d);
        be->gemm(be, 1, 0, F, d, N, 1.0f, dgate, F, a->ln2, d, 1.0f, (float *)gw.gate, d);
        be->gemm(be, 1, 0, F, d, N, 1.0f, dup, F, a->ln2, d, 1.0f, (float *)gw.up, d);
        be->rmsnorm_bwd(be, m->dx, (float *)gw.mlp_norm, m->dln, a->h, w.mlp_norm, a->rstd2, N, d);
        /* Attention: h = x + att @ o^T */
        be->gemm(be, 0, 0, N, qd, d, 1.0f, m->dx, d, w.o, qd, 0.0f, m->datt, qd);
        be->gemm(be, 1, 0, d, qd, N, 1.0f, m->dx, d, a->att, qd, 1.0f, (float *)gw.o, qd);
        be->attention_bwd(be, m->dq, m->dk, m->dv, m->datt, a->q, a->k, a->v, a->att, a->lse, B, T, Hq,
                          Hkv, hd);
        be->rope(be, m->dq, m->rope_cos, m->rope_sin, B, T, Hq, hd, 0, 1);
        be->rope(be, m->dk, m->rope_cos, m->rope_sin, B, T, Hkv, hd, 0, 1);
        be->gemm(be, 0, 0, N, d, qd, 1.0f, m->dq, qd, w.q, d, 0.0f, m->dln, d);
        be->gemm(be, 0, 0, N, d, kvd, 1.0f, m->dk, kvd, w.k, d, 1.0f, m->dln, d);
        be->gemm(be, 0, 0, N, d, kvd, 1.0f, m->dv, kvd, w.v, d, 1.0f, m->dln, d);
        be->gemm(be, 1, 0, qd, d, N, 1.0f, m->dq, qd, a->ln1, d, 1.0f, (float *)gw.q, d);
        be->gemm(be, 1, 0, kvd, d, N, 1.0f, m->dk, kvd, a->ln1, d, 1.0f, (float *)gw.k, d);
        be->gemm(be, 1, 0, kvd, d, N, 1.0f, m->dv, kvd, a->ln1, d, 1.0f, (float *)gw.v, d);
        be->rmsnorm_bwd(be, m->dx, (float *)gw.attn_norm, m->dln, a->x, w.attn_norm, a->rstd1, N, d);
    }
    be->embedding_bwd(be, g, m->dx, m->ids, N, d, V);
    return OZ_OK;
}
