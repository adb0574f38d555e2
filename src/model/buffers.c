/* The model's buffers: one list of what a shape needs, with lifetimes, that drives both the
 * memory plan and the allocation (so the plan is the arena, byte for byte); create and destroy;
 * where each gradient lives. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/llama_internal.h"
#include "numeric/quant.h"

int oz_llama_vocab_block_rows(const oz_llama_config *c) {
    int V = c->vocab_size, d = c->hidden_size;
    int blocks = (V + d - 1) / d;
    int rows = (V + blocks - 1) / blocks;
    int align = (int)oz_qw_row_unit((size_t)d); /* blocks start on 8-bit moment blocks */
    rows = (rows + align - 1) / align * align;
    return rows < V ? rows : V;
}

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

/* Values per dequantized block of an INT8 dense matrix (32 MiB): its GEMMs take it a block of rows
 * at a time, so the scratch is this, not the whole matrix. Block size measured in bench/RESULTS.md. */
#define OZ_DEQ_BLOCK_FLOATS ((size_t)8 << 20)

/* Rows per dequantized block of an (out x in) INT8 matrix: about OZ_DEQ_BLOCK_FLOATS values and a
 * whole number of quantization groups (a block starts at a multiple of OZ_QW_GROUP values). */
int oz_ll_deq_block_rows(int out, int in, size_t target) {
    return (int)oz_qw_block_rows((size_t)out, (size_t)in, target ? target : OZ_DEQ_BLOCK_FLOATS);
}

/* The INT8 matrix scratch: a block of rows of a dense matrix, or a whole factor pair (A, then B). */
static size_t max_matrix_floats(const oz_param_layout *lay, size_t target) {
    size_t most = 0;
    for (int i = 0; i < lay->n; i++) {
        const oz_param_info *p = &lay->params[i];
        if (!is_layer_matrix(p) || p->factor == 2) continue;
        size_t n = p->factor == 1 ? aligned16(p->numel) + lay->params[i + 1].numel
                                  : (size_t)oz_ll_deq_block_rows((int)p->shape[0], (int)p->shape[1], target) * (size_t)p->shape[1];
        if (n > most) most = n;
    }
    return most < OZ_QW_GROUP ? OZ_QW_GROUP : most; /* at least one group: the staging piece */
}

/* Per-tensor mode hands gradients off by group, and a group's gradients are live together: a
 * matrix's tensors (W, or A and B, both complete after its backward) or one norm; with more than
 * one MLP chunk the three MLP matrices form one group, because their gradients accumulate over the
 * chunks and their weights are read again by every chunk. */
int oz_ll_grad_group(const oz_llama_shape *s, const oz_param_info *p) {
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
        int g = oz_ll_grad_group(s, p);
        if (off) off[i] = run[g];
        run[g] += aligned16(p->numel);
        if (run[g] > *layer_n) *layer_n = run[g];
    }
}

/* Floats of the outer gradient buffer: the final norm alone in blocks, else the layout's span. */
size_t oz_ll_outer_grad_floats(const oz_llama *m) {
    return m->shape.grads.vocab_blocks ? (size_t)m->cfg.hidden_size : m->layout.outer_grad;
}

/* The gradient buffers (fp32 in every precision): the full buffer, or one layer's (per-tensor
 * mode: one group's) and the outer tensors' or their row blocks; the frozen norms' sink. */
static void list_grads(oz_llama *m, buffer_list *bl) {
    const oz_llama_config *c = &m->cfg;
    const oz_llama_shape *s = &m->shape;
    const oz_param_layout *lay = &m->layout;
    size_t N = (size_t)s->batch * s->seq, d = c->hidden_size;
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
}

#define B16(n) ((size_t)(n) * sizeof(uint16_t))

/* The sizes both buffer lists are written in: tokens, widths, the LSE and the RoPE tables. */
typedef struct {
    size_t N, d, F, V, qd, kvd, lse, rope;
    int L;
    size_t F16; /* the bf16 MLP activations' row stride: F rounded up to 8 (16-byte rows) */
} buf_sizes;

static buf_sizes buf_sizes_of(const oz_llama *m) {
    const oz_llama_config *c = &m->cfg;
    const oz_llama_shape *s = &m->shape;
    size_t pos = (size_t)(c->max_position_embeddings > s->seq ? c->max_position_embeddings : s->seq);
    buf_sizes z = {(size_t)s->batch * s->seq, (size_t)c->hidden_size, (size_t)c->intermediate_size,
                   (size_t)c->vocab_size, (size_t)c->num_attention_heads * c->head_dim,
                   (size_t)c->num_key_value_heads * c->head_dim, (size_t)s->batch * c->num_attention_heads * s->seq,
                   pos * (size_t)(c->head_dim / 2), c->num_hidden_layers, 0};
    z.F16 = (z.F + 7) / 8 * 8;
    return z;
}

/* The buffer list of a bf16 model (shape.precision; forward_bf16.c uses them): the fp32 master
 * weights and their bf16 copy, the fp32 gradients as in fp32, every layer's activations and the
 * layer inputs in bf16, the head's fp32 logits, their gradient rounded, and the backward's bf16
 * gradients aliased into dead activations as the fp32 model does (q_alias, kv_alias); the
 * attention's workspace inside the layers. check_shape has refused what this does not cover
 * (INT8, low-rank, recompute, mini-sequences, vocabulary blocks). */
static void list_buffers_bf16(oz_llama *m, buffer_list *bl) {
    const oz_llama_config *c = &m->cfg;
    const oz_llama_shape *s = &m->shape;
    const oz_param_layout *lay = &m->layout;
    const buf_sizes z = buf_sizes_of(m);
    size_t N = z.N, d = z.d, F = z.F, V = z.V, qd = z.qd, kvd = z.kvd, lse = z.lse, rope = z.rope;
    int L = z.L;
    bl->life = LIFE_ALWAYS;
    if (!s->bf16_weights) want(bl, &m->params, OZ_MEM_WEIGHTS, F32(lay->total), "weights");
    want(bl, &m->params16, OZ_MEM_WEIGHTS, B16(lay->total16), s->bf16_weights ? "weights (bf16)" : "weights (bf16 copy)");
    /* Reading and writing bf16 weights off the device goes through this much fp32 at a time (the
     * CPU's are host memory: no staging). */
    m->stage16_floats = 0;
    for (int i = 0; i < lay->n; i++)
        if (lay->params[i].numel > m->stage16_floats) m->stage16_floats = lay->params[i].numel;
    if (m->stage16_floats > OZ_LL_STAGE16_FLOATS) m->stage16_floats = OZ_LL_STAGE16_FLOATS;
    if (s->bf16_weights && s->cuda)
        want(bl, &m->stage16, OZ_MEM_SCRATCH, F32(m->stage16_floats), "bf16 weights staging (fp32)");
    list_grads(m, bl);
    m->ffn16 = (int)z.F16;
    /* A trainable matrix padded in bf16 has its dW formed on the padded shape and its real part
     * added in (gemm_bf16 into fp32 rows that are not 16-byte aligned is as slow as the bf16 case). */
    size_t pad_dw = 0;
    for (int i = 0; i < lay->n && s->with_grads; i++) {
        const oz_param_info *p = &lay->params[i];
        if (!p->frozen && p->ndim == 2 && (p->ld16 != p->shape[1] || p->rows16 != p->shape[0])) {
            size_t n = (size_t)p->rows16 * (size_t)p->ld16;
            pad_dw = n > pad_dw ? n : pad_dw;
        }
    }
    if (pad_dw) want(bl, &m->dw16_pad, OZ_MEM_SCRATCH, F32(pad_dw), "weight gradient with padded rows (fp32)");
    want(bl, &m->rope_cos, OZ_MEM_SCRATCH, F32(rope), "RoPE cos table");
    want(bl, &m->rope_sin, OZ_MEM_SCRATCH, F32(rope), "RoPE sin table");
    want(bl, &m->ids, OZ_MEM_ACTIVATIONS, 2 * N * sizeof(int32_t), "token ids");
    for (int l = 0; l <= L; l++) want(bl, &m->xs16[l], OZ_MEM_ACTIVATIONS, B16(N * d), "layer input (bf16)");
    for (int l = 0; l < L; l++) {
        layer_acts16 *a = &m->acts16[l];
        want(bl, &a->rstd1, OZ_MEM_ACTIVATIONS, F32(N), "attention norm rstd");
        want(bl, &a->q, OZ_MEM_ACTIVATIONS, B16(N * qd), "queries (bf16)");
        want(bl, &a->k, OZ_MEM_ACTIVATIONS, B16(N * kvd), "keys (bf16)");
        want(bl, &a->v, OZ_MEM_ACTIVATIONS, B16(N * kvd), "values (bf16)");
        want(bl, &a->att, OZ_MEM_ACTIVATIONS, B16(N * qd), "attention output (bf16)");
        want(bl, &a->lse, OZ_MEM_ACTIVATIONS, F32(lse), "attention log-sum-exp");
        want(bl, &a->h, OZ_MEM_ACTIVATIONS, B16(N * d), "attention residual (bf16)");
        want(bl, &a->rstd2, OZ_MEM_ACTIVATIONS, F32(N), "MLP norm rstd");
        want(bl, &a->gate, OZ_MEM_ACTIVATIONS, B16(N * z.F16), "MLP gate (bf16)");
        want(bl, &a->up, OZ_MEM_ACTIVATIONS, B16(N * z.F16), "MLP up (bf16)");
    }
    bl->life = LIFE_HEAD;
    want(bl, &m->lnf16, OZ_MEM_ACTIVATIONS, B16(N * d), "final norm output (bf16)");
    /* The head in chunks of rows whose fp32 logits take at most OZ_LL_HEAD16_BYTES (a multiple of
     * 64 rows, at least 256, at most all): Liger's and Cut Cross-Entropy's point that no tokens x
     * vocabulary tensor need exist. */
    size_t hr = OZ_LL_HEAD16_BYTES / (4 * V) / 64 * 64;
    hr = hr < 256 ? 256 : hr;
    m->head16_rows = (int)(hr < N ? hr : N);
    want(bl, &m->logits, OZ_MEM_ACTIVATIONS, F32((size_t)m->head16_rows * V), "logits, one chunk");
    if (s->with_grads) {
        want(bl, &m->dlogits16, OZ_MEM_SCRATCH, B16((size_t)m->head16_rows * V), "logits gradient, one chunk (bf16)");
        /* The embedding's gradient scatters fp32 rows (embedding_bwd): its input widened, after the
         * layers' backward. */
        const oz_param_info *emb = &lay->params[0];
        if (!emb->frozen) want(bl, &m->demb_in, OZ_MEM_SCRATCH, F32(N * d), "embedding output gradient (fp32)");
    }
    bl->life = LIFE_ALWAYS;
    want(bl, &m->rstdf, OZ_MEM_ACTIVATIONS, F32(N), "final norm rstd");
    want(bl, &m->losses, OZ_MEM_ACTIVATIONS, F32(N), "losses");
    if (s->with_grads) {
        want(bl, &m->dx16, OZ_MEM_SCRATCH, B16(N * d), "residual gradient (bf16)");
        want(bl, &m->dln16, OZ_MEM_SCRATCH, B16(N * d), "norm-output gradient (bf16)");
        m->q_alias = qd <= d;
        m->kv_alias = kvd <= F;
        bl->life = LIFE_LAYER;
        if (!m->q_alias) {
            want(bl, &m->dq16, OZ_MEM_SCRATCH, B16(N * qd), "query gradient (bf16)");
            want(bl, &m->datt16, OZ_MEM_SCRATCH, B16(N * qd), "attention gradient (bf16)");
        }
        if (!m->kv_alias) {
            want(bl, &m->dk16, OZ_MEM_SCRATCH, B16(N * kvd), "key gradient (bf16)");
            want(bl, &m->dv16, OZ_MEM_SCRATCH, B16(N * kvd), "value gradient (bf16)");
        }
    }
    bl->life = LIFE_LAYER;
    /* Not kept per layer: the norms' outputs and the MLP hidden are recomputed in the backward
     * from what is (the layer input or attention residual with its 1/rms; gate and up), one
     * elementwise pass each, which saves 2 d + ffn bf16 values a token a layer. */
    want(bl, &m->ln16, OZ_MEM_ACTIVATIONS, B16(N * d), "norm output, one layer's (bf16)");
    want(bl, &m->mlp16, OZ_MEM_ACTIVATIONS, B16(N * z.F16), "MLP hidden, one layer's (bf16)");
    m->attn_ws_bytes = oz_attention_bf16_device_workspace_bytes(s->cuda, s->batch, s->seq, c->num_attention_heads,
                                                                c->num_key_value_heads, c->head_dim);
    want(bl, &m->attn_ws, OZ_MEM_SCRATCH, m->attn_ws_bytes, "attention workspace");
    bl->life = LIFE_ALWAYS;
}

/* Lists every buffer a model with this config and shape allocates. m may be a zeroed dummy when
 * planning (its acts/xs arrays must still exist). */
static void list_buffers(oz_llama *m, buffer_list *bl) {
    const oz_llama_config *c = &m->cfg;
    const oz_llama_shape *s = &m->shape;
    const oz_param_layout *lay = &m->layout;
    const buf_sizes z = buf_sizes_of(m);
    size_t N = z.N, d = z.d, F = z.F, V = z.V, qd = z.qd, kvd = z.kvd, lse = z.lse, rope = z.rope;
    int L = z.L;
    bool mini = s->mlp_chunks > 0;
    size_t mlp_rows = mini ? (size_t)ceil_div((int)N, s->mlp_chunks) : N;
    size_t head_rows = s->head_chunks > 0 ? (size_t)ceil_div((int)N, s->head_chunks) : N;
    if (s->precision == OZ_PREC_BF16) {
        list_buffers_bf16(m, bl);
        return;
    }
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
            want(bl, &m->vocab_rows, OZ_MEM_SCRATCH, F32(oz_ll_vocab_rows_floats(c)), "embedding/head rows in fp32");
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
    list_grads(m, bl);
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
    if (s->precision != OZ_PREC_FP32 && s->precision != OZ_PREC_BF16)
        return oz_fail(err, OZ_ERR_INTERNAL, "precision %d is not known", s->precision);
    if (s->bf16_weights && s->precision != OZ_PREC_BF16)
        return oz_fail(err, OZ_ERR_INTERNAL, "bf16 weights need precision bf16");
    if (s->precision == OZ_PREC_BF16) {
        const char *no = oz_llama_bf16_unsupported(c, s);
        if (no) return oz_fail(err, OZ_ERR_INPUT, "--precision bf16 does not support %s yet", no);
    }
    unsigned mlp = (1u << OZ_M_GATE) | (1u << OZ_M_UP) | (1u << OZ_M_DOWN);
    if ((s->grads.factored & mlp) && s->mlp_chunks > 1)
        return oz_fail(err, OZ_ERR_INTERNAL, "factored MLP gradients need one MLP chunk (they accumulate over chunks)");
    return OZ_OK;
}

/* Phase 1 of bf16: the dense model with fp32 master weights. What it does not cover is refused
 * (check_shape) rather than computed some other way. */
const char *oz_llama_bf16_unsupported(const oz_llama_config *c, const oz_llama_shape *s) {
    return s->int8_matrices || s->bf16_vocab ? "INT8 matrices (--optim qgalore)"
           : oz_llama_config_is_low_rank(c)    ? "low-rank matrices (WeLore, InRank, compressed models)"
           : s->recompute                      ? "recomputation (--recompute)"
           : s->mlp_chunks || s->head_chunks   ? "mini-sequences (--mini-seq)"
           : s->grads.factored                 ? "factored gradients (--factored-grads off turns them off)"
           : s->grads.vocab_blocks             ? "embedding/head gradients in vocabulary blocks (per-tensor updates "
                                                 "with an untied head: --clip or --grad-accum > 1 avoid them)"
                                               : NULL;
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
    dummy.acts16 = calloc((size_t)L, sizeof *dummy.acts16);
    buffer_list bl = {NULL, 0, 0, true, LIFE_ALWAYS};
    oz_status st = OZ_OK;
    if (!dummy.acts || !dummy.xs || !dummy.xs16 || !dummy.acts16) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory planning");
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
    free(dummy.acts16);
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

/* bf16: the attention workspace the plan gives (list_buffers_bf16) must cover what the backend
 * asks for at (batch, seq), and be planned for this kind of backend. */
static oz_status check_attention_workspace(oz_llama *m, oz_err *err) {
    const oz_llama_config *c = &m->cfg;
    const oz_llama_shape *s = &m->shape;
    if (s->cuda != !m->be->host_visible)
        return oz_fail(err, OZ_ERR_INTERNAL, "the model's shape was planned for %s but the backend is %s",
                       s->cuda ? "CUDA" : "the CPU", m->be->name);
    size_t need = 0, planned = oz_attention_bf16_device_workspace_bytes(s->cuda, s->batch, s->seq, c->num_attention_heads,
                                                                        c->num_key_value_heads, c->head_dim);
    OZ_TRY(m->be->attention_bf16_plan(m->be, s->batch, s->seq, c->num_attention_heads, c->num_key_value_heads,
                                      c->head_dim, &need, err));
    if (need > planned)
        return oz_fail(err, OZ_ERR_INPUT,
                       "the bf16 attention asks for %zu bytes of workspace at batch %d x seq %d, more than the %zu "
                       "the memory plan allows (oz_attention_bf16_device_workspace_bytes)",
                       need, s->batch, s->seq, planned);
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
    if (shape.precision == OZ_PREC_BF16) OZ_TRY(check_attention_workspace(m, err));
    if (shape.bf16_weights && !be->host_visible && !shape.cuda)
        return oz_fail(err, OZ_ERR_INTERNAL, "bf16 weights on a device backend need shape.cuda (their staging)");
    int L = cfg->num_hidden_layers;
    m->acts = calloc((size_t)L, sizeof *m->acts);
    m->xs = calloc((size_t)L + 1, sizeof *m->xs);
    m->xs16 = calloc((size_t)L + 1, sizeof *m->xs16);
    m->acts16 = calloc((size_t)L, sizeof *m->acts16);
    m->active = calloc((size_t)L * OZ_LLAMA_MATRICES, sizeof *m->active);
    buffer_list bl = {NULL, 0, 0, false, LIFE_ALWAYS};
    if (m->acts && m->xs && m->xs16 && m->acts16 && m->active) {
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
    /* The bf16 copy's padding is zeros, once: rounding the weights in never writes it. */
    if (m->params16) be->fill(be, (float *)(void *)m->params16, 0.0f, m->layout.total16 / 2);
    for (int l = 0; l < L && shape.precision == OZ_PREC_BF16; l++) {
        m->acts16[l].x = m->xs16[l];
        m->acts16[l].ln1 = m->acts16[l].ln2 = m->ln16; /* recomputed in the backward */
        m->acts16[l].mlp = m->mlp16;
    }
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
    free(m->acts16);
    free(m->active);
    oz_param_layout_free(&m->layout);
    free(m);
}

void oz_llama_zero_grads(oz_llama *m) {
    m->backwards = 0;
    if (m->grads) m->be->fill(m->be, m->grads, 0.0f, m->layout.grad_total);
    if (m->outer_grads) m->be->fill(m->be, m->outer_grads, 0.0f, oz_ll_outer_grad_floats(m));
}

/* Layer l's weights for compute: shapes, active ranks, the norms (always in place: INT8 mode keeps
 * them in fp32), and the matrices in place unless they are INT8 (see use_matrix). */
