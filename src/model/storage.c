/* Weight storage: fp32 in place, INT8 codes (Q-GaLore), bf16 embedding/head rows; reading and
 * writing parameters in any of them, the optimizer's weights view, low-rank factors and ranks. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/llama_internal.h"
#include "numeric/quant.h"

const oz_llama_config *oz_llama_get_config(const oz_llama *m) { return &m->cfg; }
const oz_param_layout *oz_llama_get_layout(const oz_llama *m) { return &m->layout; }
float *oz_llama_params(oz_llama *m) { return m->params; }

float *oz_llama_param(oz_llama *m, int index) {
    const oz_param_info *p = &m->layout.params[index];
    if (m->params) return m->params + p->offset;
    if (m->shape.bf16_weights) return NULL; /* oz_ll_weight16 */
    if (m->vocab16 && p->layer < 0) return is_vocab_tensor(p) ? NULL : m->outer_params; /* the final norm */
    if (p->layer < 0) return m->outer_params + p->span_offset;
    if (p->is_norm) {
        size_t d = (size_t)m->cfg.hidden_size;
        return m->layer_norms + (size_t)p->layer * 2 * d + (p->kind == OZ_P_MLP_NORM ? d : 0);
    }
    return NULL;
}

bool oz_ll_param_int8(oz_llama *m, int index, uint8_t **q, float **scale, uint8_t **zero) {
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

bool oz_ll_weight16(oz_llama *m, int index, uint16_t **w, size_t *ld) {
    if (!m->shape.bf16_weights) return false;
    const oz_param_info *p = &m->layout.params[index];
    *w = m->params16 + p->offset16;
    *ld = (size_t)p->ld16;
    return true;
}

/* A bf16-weights tensor as (rows, cols) with its bf16 row stride (1-D: one row). */
static void dims16(const oz_param_info *p, size_t *rows, size_t *cols, size_t *ld) {
    *rows = p->ndim == 2 ? (size_t)p->shape[0] : 1;
    *cols = p->ndim == 2 ? (size_t)p->shape[1] : p->numel;
    *ld = (size_t)p->ld16;
}

/* Host fp32 <-> bf16 weights: widened exactly, or rounded to nearest (so a checkpoint written
 * from bf16 weights comes back exactly); off the host through stage16 in whole rows. */
static void read16(oz_llama *m, const oz_param_info *p, float *host) {
    size_t rows, cols, ld;
    dims16(p, &rows, &cols, &ld);
    const uint16_t *w = m->params16 + p->offset16;
    if (m->be->host_visible) {
        m->be->from_bf16_2d(m->be, host, cols, w, ld, rows, cols);
        return;
    }
    const size_t per = m->stage16_floats / cols;
    for (size_t r0 = 0; r0 < rows; r0 += per) {
        size_t nr = rows - r0 < per ? rows - r0 : per;
        m->be->from_bf16_2d(m->be, m->stage16, cols, w + r0 * ld, ld, nr, cols);
        m->be->to_host(m->be, host + r0 * cols, m->stage16, nr * cols * sizeof(float));
    }
}

static void write16(oz_llama *m, const oz_param_info *p, const float *host) {
    size_t rows, cols, ld;
    dims16(p, &rows, &cols, &ld);
    uint16_t *w = m->params16 + p->offset16;
    if (m->be->host_visible) {
        m->be->to_bf16_2d(m->be, w, ld, host, cols, rows, cols);
        return;
    }
    const size_t per = m->stage16_floats / cols;
    for (size_t r0 = 0; r0 < rows; r0 += per) {
        size_t nr = rows - r0 < per ? rows - r0 : per;
        m->be->to_device(m->be, m->stage16, host + r0 * cols, nr * cols * sizeof(float));
        m->be->to_bf16_2d(m->be, w + r0 * ld, ld, m->stage16, cols, nr, cols);
    }
}

/* Floats of the bf16 vocabulary row scratch: one vocabulary block. */
size_t oz_ll_vocab_rows_floats(const oz_llama_config *c) {
    return (size_t)oz_llama_vocab_block_rows(c) * c->hidden_size;
}

float *oz_ll_rows_load(oz_llama *m, int index, int row0, int rows) {
    size_t d = (size_t)m->layout.params[index].shape[1], off = (size_t)row0 * d;
    uint16_t *w16 = oz_llama_param_bf16(m, index);
    if (!w16) return oz_llama_param(m, index) + off;
    m->be->from_bf16(m->be, m->vocab_rows, w16 + off, (size_t)rows * d);
    return m->vocab_rows;
}

void oz_ll_rows_store(oz_llama *m, int index, int row0, int rows, uint64_t key) {
    size_t d = (size_t)m->layout.params[index].shape[1], off = (size_t)row0 * d;
    uint16_t *w16 = oz_llama_param_bf16(m, index);
    if (w16) m->be->to_bf16_sr(m->be, w16 + off, m->vocab_rows, (size_t)rows * d, key, off);
}

/* Staging piece for INT8 parameters off the host: the matrix scratch, in whole groups. */
static size_t staging_piece(const oz_llama *m) { return m->wmat_n / OZ_QW_GROUP * OZ_QW_GROUP; }

void oz_llama_read_param(oz_llama *m, int index, float *host) {
    const oz_param_info *p = &m->layout.params[index];
    if (m->shape.bf16_weights) {
        read16(m, p, host);
        return;
    }
    uint8_t *q, *z;
    float *sc;
    uint16_t *w16 = oz_llama_param_bf16(m, index);
    if (w16) { /* widened exactly; off the host through the row scratch */
        if (m->be->host_visible) {
            m->be->from_bf16(m->be, host, w16, p->numel);
            return;
        }
        size_t piece = oz_ll_vocab_rows_floats(&m->cfg);
        for (size_t e0 = 0; e0 < p->numel; e0 += piece) {
            size_t n = p->numel - e0 < piece ? p->numel - e0 : piece;
            m->be->from_bf16(m->be, m->vocab_rows, w16 + e0, n);
            m->be->to_host(m->be, host + e0, m->vocab_rows, n * sizeof(float));
        }
    } else if (oz_ll_param_int8(m, index, &q, &sc, &z)) {
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
    if (m->shape.bf16_weights) {
        write16(m, p, host);
        return;
    }
    uint8_t *q, *z;
    float *sc;
    uint16_t *w16 = oz_llama_param_bf16(m, index);
    if (w16) { /* rounded to nearest (a checkpoint written from bf16 weights comes back exactly) */
        if (m->be->host_visible) {
            m->be->to_bf16(m->be, w16, host, p->numel);
            return;
        }
        size_t piece = oz_ll_vocab_rows_floats(&m->cfg);
        for (size_t e0 = 0; e0 < p->numel; e0 += piece) {
            size_t n = p->numel - e0 < piece ? p->numel - e0 : piece;
            m->be->to_device(m->be, m->vocab_rows, host + e0, n * sizeof(float));
            m->be->to_bf16(m->be, w16 + e0, m->vocab_rows, n);
        }
    } else if (oz_ll_param_int8(m, index, &q, &sc, &z)) {
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

static float *view_f32(void *m, int i) { return oz_llama_param(m, i); }
static bool view_int8(void *m, int i, uint8_t **q, float **scale, uint8_t **zero) {
    return oz_ll_param_int8(m, i, q, scale, zero);
}
static float *view_rows_load(void *m, int i, int row0, int rows) { return oz_ll_rows_load(m, i, row0, rows); }
static void view_rows_store(void *m, int i, int row0, int rows, uint64_t key) { oz_ll_rows_store(m, i, row0, rows, key); }
static bool view_bf16(void *m, int i, uint16_t **w, size_t *ld) { return oz_ll_weight16(m, i, w, ld); }

oz_weights_view oz_llama_weights(oz_llama *m) {
    oz_weights_view v = {.owner = m, .f32 = view_f32, .int8 = view_int8, .rows_load = view_rows_load,
                         .rows_store = view_rows_store, .bf16 = view_bf16};
    return v;
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

