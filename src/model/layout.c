/* The parameter layout (Hugging Face tensor names, offsets, gradient spans, freezing) and the
 * deterministic initialisation. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/llama_internal.h"
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
        /* The bf16 copy: the MLP's hidden side of gate, up (rows) and down (columns) padded to a
         * multiple of 8 (see oz_param_info.rows16). Only that side: the other widths are those of
         * activations that RoPE, attention and the norms read densely. */
        const int64_t rows = p->ndim == 2 ? p->shape[0] : 1, cols = p->ndim == 2 ? p->shape[1] : (int64_t)p->numel;
        const bool dense = p->layer >= 0 && p->ndim == 2 && p->factor == 0;
        const bool pad_rows = dense && (p->kind == OZ_P_GATE || p->kind == OZ_P_UP), pad_cols = dense && p->kind == OZ_P_DOWN;
        p->rows16 = pad_rows ? (rows + 7) / 8 * 8 : rows;
        p->ld16 = pad_cols ? (cols + 7) / 8 * 8 : cols;
        p->offset16 = lay->total16;
        lay->total16 += ((size_t)p->rows16 * (size_t)p->ld16 + 15) & ~(size_t)15;
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

