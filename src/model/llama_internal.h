/* Inside model/: the model instance's fields and the helpers its files share. Nothing outside
 * model/ includes this. */
#ifndef OZ_LLAMA_INTERNAL_H
#define OZ_LLAMA_INTERNAL_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/llama.h"


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
 * (oz_llama_shape.grads.factored) has w NULL and fm set: its backward hands (dY, X) to fm's gradient
 * sink as factors for parameter findex instead of forming dW. */
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

/* bf16 mode (shape.precision): one layer's activations, as forward_bf16.c keeps them: the same
 * tensors as layer_acts (no low-rank intermediates), bf16 but for the norms' 1/rms and the
 * attention's log-sum-exp. */
/* shape.bf16_weights: parameter index's bf16 weights and their row stride; false otherwise. */
bool oz_ll_weight16(oz_llama *m, int index, uint16_t **w, size_t *ld);
/* The bf16 head's chunk: its fp32 logits at most this many bytes (buffers.c, head16_rows). */
#define OZ_LL_HEAD16_BYTES ((size_t)64 << 20)
/* The fp32 staging a bf16-weights model reads and writes its weights through, in whole rows. */
#define OZ_LL_STAGE16_FLOATS ((size_t)1 << 22)

typedef struct {
    uint16_t *x, *ln1, *q, *k, *v, *att, *h, *ln2, *gate, *up, *mlp;
    float *rstd1, *rstd2, *lse;
} layer_acts16;

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
     * per-group scales and zero points; wmat holds a block of rows of one dense matrix, or one whole
     * factor pair, dequantized (wmat_id: layer * 7 + matrix of a cached pair; -1: nothing valid). */
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
    /* bf16 mode: params16 is the bf16 copy of params (at oz_param_info.offset16, rows ld16 apart)
     * that the GEMMs and norms read, rounded from params at the start of every forward; the MLP's
     * gate, up and hidden have rows ffn16 apart (the ffn rounded up to 8, for 16-byte aligned rows);
     * dw16_pad an fp32 weight gradient with padded rows (down_proj's at an ffn that is not a
     * multiple of 8), added into its gradient; NULL when no matrix needs it; acts16[l] layer l's activations, with the
     * layer inputs in xs16[0..L] (xs16[L] the final residual); lnf16 the final norm's output;
     * dlogits16 a logits chunk's gradient rounded for the head's GEMMs; dx16 .. dv16 the backward's
     * gradients (dq16 .. dv16 only where q_alias / kv_alias do not place them); demb_in the
     * embedding's output gradient widened for the fp32 scatter; attn_ws the attention's workspace. */
    uint16_t *params16;
    uint16_t *ln16, *mlp16; /* one layer's norm output and MLP hidden (acts16's ln1, ln2, mlp) */
    float *stage16;         /* shape.bf16_weights on cuda: stage16_floats for reading and writing weights */
    size_t stage16_floats;  /* the largest tensor, at most OZ_LL_STAGE16_FLOATS (whole rows fit) */
    int head16_rows;        /* tokens per bf16 head chunk */
    int ffn16;
    float *dw16_pad;
    layer_acts16 *acts16;
    uint16_t *lnf16, *dlogits16, *dx16, *dln16, *dq16, *datt16, *dk16, *dv16;
    float *demb_in;
    void *attn_ws;
    size_t attn_ws_bytes;
    /* every arena buffer, for destroy */
    void **owned;
    int n_owned;
};


/* ---- shared helpers (oz_ll_: model-internal) */
static inline size_t aligned16(size_t n) { return (n + 15) & ~(size_t)15; }
static inline bool is_layer_matrix(const oz_param_info *p) { return p->layer >= 0 && !p->is_norm; }
static inline bool is_vocab_tensor(const oz_param_info *p) { return p->kind == OZ_P_EMBED || p->kind == OZ_P_LM_HEAD; }

/* storage.c: an INT8 matrix's codes, scales and zero points (false if not INT8); one vocabulary
 * block's floats; the embedding/head rows window (weights_view.h). */
bool oz_ll_param_int8(oz_llama *m, int index, uint8_t **q, float **scale, uint8_t **zero);
size_t oz_ll_vocab_rows_floats(const oz_llama_config *c);
float *oz_ll_rows_load(oz_llama *m, int index, int row0, int rows);
void oz_ll_rows_store(oz_llama *m, int index, int row0, int rows, uint64_t key);

/* buffers.c: rows per dequantized block of an (out x in) INT8 matrix (whole quantization groups,
 * about `target` values); the per-tensor gradient group of a layer tensor (a matrix's own, or one
 * per norm; the three MLP matrices share one over several MLP chunks); the outer gradient floats. */
enum { GRP_ATTN_NORM = OZ_LLAMA_MATRICES, GRP_MLP_NORM, GRP_COUNT };
int oz_ll_deq_block_rows(int out, int in, size_t target);
int oz_ll_grad_group(const oz_llama_shape *s, const oz_param_info *p);
size_t oz_ll_outer_grad_floats(const oz_llama *m);

/* forward.c, shared with forward_bf16.c: the sizes of one call; the batch's checks; layer l's
 * gradient tensors; per-tensor mode's group brackets and hand-off; emitting what is buffered
 * (layer l, -1 the non-layer tensors, -2 all); the hand-offs after the head's and after the
 * embedding's backward (and the micro-batch count); the batch's summed loss from m->losses. */
typedef struct {
    int B, T, N, d, F, V, hd, Hq, Hkv, qd, kvd, L;
} oz_ll_dims;
oz_ll_dims oz_ll_dims_of(const oz_llama *m, int B, int T);
oz_status oz_ll_check_batch(const oz_llama *m, const oz_llama_batch *b, oz_err *err);
layer_grads oz_ll_layer_grads(oz_llama *m, int l);
void oz_ll_group_begin(oz_llama *m, int l, int group);
void oz_ll_group_end(oz_llama *m, int l, int group);
void oz_ll_hand_off(oz_llama *m, int i);
void oz_ll_emit_buffered(oz_llama *m, int l, bool partial);
void oz_ll_after_head(oz_llama *m);
void oz_ll_after_embedding(oz_llama *m);
oz_status oz_ll_sum_losses(oz_llama *m, const oz_llama_batch *b, double *loss_sum, long *n_targets, oz_err *err);
static inline int oz_ll_head_index(const oz_llama *m) { return m->cfg.tie_word_embeddings ? 0 : m->layout.n - 1; }
static inline int oz_ll_final_norm_index(const oz_llama *m) {
    return m->layout.n - (m->cfg.tie_word_embeddings ? 1 : 2);
}

/* forward_bf16.c: forward and forward + backward in bf16 (shape.precision == OZ_PREC_BF16), with
 * oz_llama_forward / oz_llama_forward_backward's contracts; the caller has checked the latter's
 * arguments. */
oz_status oz_ll_forward_bf16(oz_llama *m, const oz_llama_batch *b, double *loss_sum, long *n_targets, oz_err *err);
oz_status oz_ll_forward_backward_bf16(oz_llama *m, const oz_llama_batch *b, float grad_scale, double *loss_sum,
                                      long *n_targets, oz_err *err);

#endif
