/* The Llama decoder: configuration (Hugging Face field names), parameter layout (HF tensor names),
 * and forward/backward written once against the backend op table. */
#ifndef OZ_LLAMA_H
#define OZ_LLAMA_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "backend/backend.h"
#include "mem/arena.h"
#include "util/err.h"

typedef enum { OZ_ROPE_DEFAULT = 0, OZ_ROPE_LINEAR, OZ_ROPE_LLAMA3 } oz_rope_type;

/* The seven attention/MLP matrices of a decoder layer, in layout order. */
enum { OZ_M_Q, OZ_M_K, OZ_M_V, OZ_M_O, OZ_M_GATE, OZ_M_UP, OZ_M_DOWN, OZ_LLAMA_MATRICES };
/* Low-rank configs name layers 0..OZ_LLAMA_MAX_LAYERS-1 (Llama 3.1 405B has 126). */
#define OZ_LLAMA_MAX_LAYERS 256

typedef struct {
    int vocab_size;
    int hidden_size;
    int intermediate_size;
    int num_hidden_layers;
    int num_attention_heads;
    int num_key_value_heads;
    int head_dim;                 /* hidden_size / num_attention_heads unless the config says otherwise */
    int max_position_embeddings;
    float rms_norm_eps;
    float rope_theta;
    bool tie_word_embeddings;
    int bos_token_id, eos_token_id; /* -1 when unknown */
    /* HF rope_scaling (rope_parameters in transformers >= 5): default (none), linear (positions
     * divided by factor) or llama3 (Llama 3.1's frequency-dependent interpolation: wavelengths
     * beyond original_max_position_embeddings / low_freq_factor are stretched by factor, those
     * below original / high_freq_factor kept, a smooth blend between). */
    oz_rope_type rope_type;
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_position_embeddings;
    /* Low-rank matrices: low_rank[l][j] = R > 0 stores matrix j (OZ_M_Q..OZ_M_DOWN) of layer l as
     * two factors A (R x in) and B (out x R), W = B A; 0 keeps it dense. Part of the model (it
     * travels in config.json as "ounce_low_rank"); a value array so configs stay plain values. */
    int low_rank[OZ_LLAMA_MAX_LAYERS][OZ_LLAMA_MATRICES];
} oz_llama_config;

/* Stored rank of matrix j of layer l (0: dense; also 0 out of range). */
int oz_llama_config_rank(const oz_llama_config *cfg, int layer, int matrix);
/* True when any matrix is low-rank. */
bool oz_llama_config_is_low_rank(const oz_llama_config *cfg);
/* Matrix j's shape (out, in) and its Hugging Face module path inside a layer
 * ("self_attn.q_proj", ..., "mlp.down_proj"). */
void oz_llama_matrix_dims(const oz_llama_config *cfg, int matrix, int64_t *out, int64_t *in);
const char *oz_llama_matrix_path(int matrix);

/* RoPE's inverse frequency of pair i (0 <= i < head_dim / 2), after rope scaling. */
double oz_llama_rope_inv_freq(const oz_llama_config *cfg, int i);

/* Fills `cfg` from a preset name (tiny, demo, 60m, 130m, 350m, 1b, 7b, llama3-8b).
 * Returns false for an unknown name. */
bool oz_llama_preset(const char *name, oz_llama_config *cfg);
/* Comma-separated list of preset names, for help texts. */
const char *oz_llama_preset_names(void);
/* Checks the config is well formed (positive sizes, heads divide hidden, ...). */
oz_status oz_llama_config_validate(const oz_llama_config *cfg, oz_err *err);

/* One named parameter tensor inside the flat parameter buffer. */
typedef enum {
    OZ_P_EMBED, OZ_P_ATTN_NORM, OZ_P_Q, OZ_P_K, OZ_P_V, OZ_P_O, OZ_P_MLP_NORM, OZ_P_GATE, OZ_P_UP,
    OZ_P_DOWN, OZ_P_FINAL_NORM, OZ_P_LM_HEAD
} oz_param_kind;

typedef struct {
    char name[96];         /* Hugging Face name, e.g. model.layers.3.self_attn.q_proj.weight */
    oz_param_kind kind;    /* a factor has the kind of its matrix (OZ_P_UP for up_proj's A and B) */
    int layer;             /* -1 for embedding, final norm, head */
    int ndim;
    int64_t shape[2];      /* (out, in) for matrices, (R, in) for A, (out, R) for B, (d) for norms */
    size_t offset;         /* in floats, into the flat parameter buffer */
    size_t numel;
    bool is_norm;          /* norms get no weight decay */
    int matrix;            /* OZ_M_Q..OZ_M_DOWN for a layer matrix or factor, -1 otherwise */
    int factor;            /* 0 dense, 1 = A (lrc_A, R x in), 2 = B (lrc_B, out x R) */
    bool frozen;           /* no gradient buffer, no dW GEMM, no optimizer state (oz_param_layout_freeze) */
    size_t span_offset;    /* offset inside its layer's span (layer tensors), or inside the buffer of
                            * non-layer tensors (embedding, final norm, head) laid end to end */
    size_t grad_offset;    /* into a full gradient buffer of trainable tensors only; OZ_NO_GRAD if frozen */
    size_t grad_span_offset; /* inside one layer's trainable span, or the trainable non-layer span */
} oz_param_info;

/* Parameter table: embedding, then per layer {attn norm, q, k, v, o, mlp norm, gate, up, down},
 * where a low-rank matrix is two tensors (A then B: "<module>.lrc_A.weight", "<module>.lrc_B.weight"),
 * then final norm and (when untied) lm_head. Each layer's tensors are contiguous, so a layer's
 * gradients form one span (what per-layer optimizer updates consume); layers differ in size when
 * their ranks differ. Every tensor starts 16-float aligned. */
typedef struct {
    int n;
    oz_param_info *params;
    size_t total;                 /* floats */
    int n_layers;
    int *layer_first;             /* (L+1): index of layer l's first tensor; [L] = first after the layers */
    size_t *layer_offset;         /* (L+1): float offset of layer l's span; [L] = end of the layers */
    int *matrix_index;            /* (L*7): index of matrix j of layer l (dense W, or A with B at +1) */
    size_t max_layer;             /* floats of the largest layer span */
    size_t outer_total;           /* floats of the non-layer tensors */
    size_t grad_total;            /* floats of a full gradient buffer (trainable tensors only) */
    size_t max_layer_grad;        /* floats of the largest layer's trainable span */
    size_t outer_grad;            /* floats of the trainable non-layer tensors */
} oz_param_layout;

/* What a training run freezes (oz_llama_shape.freeze): frozen tensors get no gradient buffer, no
 * dW GEMM and no optimizer state, and never change; dX still flows through them. A tied embedding
 * is frozen by either EMBED or HEAD. WeLore freezes EMBED | HEAD | DENSE. */
enum {
    OZ_FREEZE_EMBED = 1,   /* model.embed_tokens */
    OZ_FREEZE_HEAD = 2,    /* lm_head */
    OZ_FREEZE_DENSE = 4,   /* dense (not low-rank) attention/MLP matrices */
    OZ_FREEZE_NORMS = 8,   /* every RMSNorm weight */
    OZ_FREEZE_FACTORS = 16 /* low-rank factors */
};
#define OZ_NO_GRAD ((size_t)-1)

oz_status oz_param_layout_build(const oz_llama_config *cfg, oz_param_layout *layout, oz_err *err);
void oz_param_layout_free(oz_param_layout *layout);
/* Marks the tensors `freeze` (OZ_FREEZE_* flags) names as frozen and recomputes the gradient
 * offsets and sizes (build calls it with 0). */
void oz_param_layout_freeze(oz_param_layout *layout, unsigned freeze);
const oz_param_info *oz_param_layout_find(const oz_param_layout *layout, const char *name);

/* Deterministic initialisation: normal(0, 0.02) for matrices (HF's initializer_range), ones for
 * norms. `params` is a host buffer of layout->total floats. */
void oz_llama_init_params(const oz_llama_config *cfg, const oz_param_layout *layout, float *params,
                          uint64_t seed);

/* A model instance on a backend: parameters, optional gradients, activations for (B, T). */
typedef struct oz_llama oz_llama;

typedef struct {
    int batch, seq;               /* activation buffers are sized for these */
    bool with_grads;              /* allocate gradient buffers */
    /* With with_grads: instead of a full-model gradient buffer, one layer's worth (reused by every
     * layer, zeroed before each layer's backward) plus the embedding/final-norm/head gradients.
     * A layer's gradients are only valid inside its grad hook: per-layer optimizers consume them
     * there. */
    bool per_layer_grads;
    /* With per_layer_grads, an untied head and updates applied as gradients arrive: the embedding
     * and LM-head gradients exist one block of vocabulary rows at a time (oz_llama_vocab_block_rows
     * rows, about hidden_size: 8 blocks of 4000 rows at 7b, 62.5 MiB instead of two 500 MiB
     * gradients) and go to the rows hook as each block completes. The head's loss then takes two
     * passes: each row's log-sum-exp over the whole vocabulary, then per block its logits, loss
     * gradient, dX contribution and weight gradient (one more logits GEMM than the fused path).
     * oz_llama_grad returns NULL for the embedding and head. */
    bool outer_grad_blocks;
    /* With per_layer_grads: each tensor's gradient is handed to the tensor hook
     * (oz_llama_set_tensor_hook) the moment it is complete in the backward, and is only valid inside
     * that call; the next tensors reuse its memory. The per-layer buffer then holds the largest set
     * of gradients that are live together: one matrix (both factors of a low-rank one) or one norm,
     * except that with mlp_chunks > 1 gate, up and down accumulate over the chunks and are handed off
     * together after the last one. The final norm and an untied head are handed off right after the
     * head's backward (before any layer's), the embedding at the very end (tied: with the final
     * norm); under outer_grad_blocks the embedding and head go to the rows hook instead. Every call's
     * gradients start from zero (nothing accumulates across calls), and the grad hook is not called.
     * For updates that need no whole-step quantity (no clipping, no accumulation): the trainer's
     * immediate mode. */
    bool per_tensor_grads;
    /* With per_tensor_grads: a bitmask over OZ_M_Q..OZ_M_DOWN (1u << matrix) of the dense layer
     * matrices whose weight gradient G = dY^T X (dY: the layer output's gradient, rows x out; X:
     * its input, rows x in) is never formed. Their backward skips the dW GEMM and hands (dY, X) to
     * the factor hook (oz_llama_set_factor_hook) before dX is computed (so X is intact; the weight
     * is read afterwards for dX, so the factor hook must not change it); the tensor hook follows
     * after dX as usual, with oz_llama_grad NULL. Such tensors take no gradient memory (the layer
     * buffer holds what is still materialized: norms, low-rank factors, other matrices). MLP bits
     * need mlp_chunks <= 1 (over chunks G accumulates). For optimizers that only need products of
     * G (GaLore's projections, the randomized range finder). oz_param_factored says which tensors. */
    unsigned factored_grads;
    /* Q-GaLore: the seven attention/MLP matrices of every layer are stored as INT8 (groups of 256,
     * asymmetric, range including 0). The GEMMs that read one (forward, recompute, the backward's
     * dX) dequantize it a block of rows at a time into a small scratch (int8_block_floats), a
     * low-rank one's factor pair whole; norms are read in place. No fp32 copy of a matrix exists. */
    bool int8_matrices;
    /* With int8_matrices and outer_grad_blocks (Q-GaLore's format for what it does not quantize):
     * the embedding and the LM head are stored in bf16, half their bytes. Their GEMMs read them a
     * vocabulary block at a time widened into an fp32 scratch (exact); their updates go through
     * oz_llama_rows_load / oz_llama_rows_store, which round the updated rows back with stochastic
     * rounding (quant.h's oz_bf16_sr), so small updates are not lost to rounding on average. The
     * final norm stays fp32. oz_llama_param returns NULL for the two (oz_llama_param_bf16 gives
     * them); read/write_param convert (write rounds to nearest). */
    bool bf16_vocab;
    /* INT8 dense matrices are dequantized for their GEMMs in blocks of rows of about this many
     * values (0: 8M, 32 MiB; tests use small blocks to run many). */
    size_t int8_block_floats;
    bool recompute;               /* keep only each layer's input; recompute the layer in backward */
    /* With recompute and with_grads: the saved layer inputs are stored in bf16 (half the bytes;
     * the dominant activation term at long sequences). The forward rounds the residual stream to
     * bf16 at every layer boundary (and after the embedding) and continues from the rounded value,
     * so the recomputation sees exactly what the forward saw and the step is still deterministic;
     * the backward treats the rounding as identity. */
    bool bf16_checkpoints;
    /* With bf16_checkpoints: the saved layer inputs live in host memory the backend copies fastest
     * (page-locked on CUDA; Unsloth's "offloaded gradient checkpointing"): each one goes out through
     * one device staging buffer as the forward leaves its layer and comes back through it before
     * the layer's recomputation. Device memory keeps one checkpoint instead of one per layer; the
     * numbers are those of bf16_checkpoints, bit for bit (the same rounding, only the place
     * differs). oz_llama_plan.host_bytes and oz_llama_host_bytes give the host side. */
    bool offload_checkpoints;
    /* Mini-sequences (MsT): 0 = off. Otherwise the MLP runs over mlp_chunks chunks of the B*T
     * tokens (its intermediates are recomputed chunk by chunk in backward, never stored for all
     * tokens) and the LM head + loss over head_chunks chunks, so no tokens x intermediate or
     * tokens x vocab buffer exists. The last chunk may be shorter. */
    int mlp_chunks, head_chunks;
    /* OZ_FREEZE_* flags: which tensors train (a training choice, not part of the model file). */
    unsigned freeze;
} oz_llama_shape;

/* MsT's rule for --mini-seq auto: MLP chunks of about hidden_size tokens, ceil(vocab/hidden)
 * LM-head chunks (so a logits chunk is about the size of the hidden states), but no chunk shorter
 * than OZ_MINI_SEQ_MIN_ROWS tokens (fewer chunks instead). */
#define OZ_MINI_SEQ_MIN_ROWS 256
void oz_llama_mini_seq_auto(const oz_llama_config *cfg, int tokens, int *mlp_chunks, int *head_chunks);

/* Bytes the model would allocate, by arena category, without allocating anything: the same
 * buffer list oz_llama_create allocates from. largest[] is the largest single buffer. */
typedef struct {
    size_t bytes[OZ_MEM_NCATEGORIES];
    size_t largest[OZ_MEM_NCATEGORIES];
    size_t host_bytes; /* offload_checkpoints: the host memory holding the layer inputs */
} oz_llama_plan;
oz_status oz_llama_plan_memory(const oz_llama_config *cfg, oz_llama_shape shape, oz_llama_plan *plan,
                               oz_err *err);

/* Called during backward as soon as a group of parameter gradients is complete: each layer
 * (layer = 0..L-1, in reverse order), then the embedding/final-norm/head group (layer = -1) at
 * the very end. Per-layer optimizers consume gradients here. */
typedef void (*oz_grad_hook)(void *user, int layer);
/* Per-tensor mode (oz_llama_shape.per_tensor_grads): called once per trainable tensor and
 * forward_backward call, as soon as that tensor's gradient is complete; oz_llama_grad(model, index)
 * is valid only during the call. The tensor's weight is never read again in that backward, so the
 * hook may update it on the spot, and a layer tensor's gradient buffer is not read again either
 * (the next group's gradients are zeroed before they accumulate), so the hook may use it as
 * scratch. */
typedef void (*oz_tensor_hook)(void *user, int index);
/* Factored gradients (oz_llama_shape.factored_grads): called in the backward of parameter `index`
 * with the factors of its gradient G = dy^T x (out x in, the gradient of this call's loss): dy
 * (rows, out) and x (rows, in), row-major with leading dimensions ldy and ldx, valid only during the
 * call. The weight is still read after it (for dX): the hook must not update it (the tensor hook,
 * called after dX, may). */
typedef void (*oz_factor_hook)(void *user, int index, const float *dy, int ldy, const float *x, int ldx, int rows);
/* True when parameter p's gradient is factored under mask (oz_llama_shape.factored_grads): a dense,
 * trainable layer matrix whose bit is set. */
bool oz_param_factored(const oz_param_info *p, unsigned mask);

oz_status oz_llama_create(oz_llama **out, const oz_llama_config *cfg, oz_backend *be, oz_arena *arena,
                          oz_llama_shape shape, oz_err *err);
void oz_llama_destroy(oz_llama *model);

const oz_llama_config *oz_llama_get_config(const oz_llama *model);
const oz_param_layout *oz_llama_get_layout(const oz_llama *model);
float *oz_llama_params(oz_llama *model);  /* backend memory, layout->total floats; NULL with int8_matrices */
/* Parameter `index` in backend memory; NULL for an INT8 matrix or a bf16 embedding/head. */
float *oz_llama_param(oz_llama *model, int index);
/* A bf16 embedding or head (oz_llama_shape.bf16_vocab) in backend memory; NULL otherwise. */
uint16_t *oz_llama_param_bf16(oz_llama *model, int index);
/* Rows [row0, row0 + rows) of the embedding or head (rows <= oz_llama_vocab_block_rows) as fp32
 * backend memory to update in place: the tensor itself, or for a bf16 one its rows widened into
 * the model's row scratch (valid until the next model call). oz_llama_rows_store then rounds the
 * scratch back into the bf16 rows with stochastic rounding from stream `key` (element indices
 * counted over the whole tensor); a no-op for an fp32 tensor. */
float *oz_llama_rows_load(oz_llama *model, int index, int row0, int rows);
void oz_llama_rows_store(oz_llama *model, int index, int row0, int rows, uint64_t key);
/* An INT8 matrix's codes (numel), scales and zero points (one per group of 256); false when the
 * parameter is not stored as INT8. */
bool oz_llama_param_int8(oz_llama *model, int index, uint8_t **q, float **scale, uint8_t **zero);
/* Sets every parameter from a host buffer in layout order (INT8 matrices are quantized,
 * round-to-nearest), or writes them out (INT8 matrices dequantized). */
void oz_llama_import_params(oz_llama *model, const float *host);
void oz_llama_export_params(oz_llama *model, float *host);
/* Copies parameter `index` (numel floats) from backend memory to host, or from host into the
 * model (an INT8 matrix is dequantized / quantized round-to-nearest). */
void oz_llama_read_param(oz_llama *model, int index, float *host);
void oz_llama_write_param(oz_llama *model, int index, const float *host);
/* The full gradient buffer (layout->grad_total floats, trainable tensors at grad_offset); NULL
 * without it (per-layer mode). */
float *oz_llama_grads(oz_llama *model);
/* Host memory the model holds outside the arena (offloaded checkpoints); 0 otherwise. */
size_t oz_llama_host_bytes(const oz_llama *model);
/* Gradient of parameter `index` (layout order); NULL for a frozen or factored tensor. In per-layer mode a layer
 * tensor's gradient is only valid inside that layer's grad hook; in per-tensor mode every tensor's
 * only inside its tensor hook. */
float *oz_llama_grad(oz_llama *model, int index);

/* ---- low-rank matrices
 * A low-rank matrix j of layer l has factors A (R x in) and B (out x R), R its stored rank
 * (oz_llama_config.low_rank), and an active rank 1 <= r <= R (R at creation): forward and backward
 * use A's first r rows and B's first r columns only (through the GEMMs' leading dimensions), so the
 * matrix is B[:, :r] A[:r, :]. The inactive parts keep their values and get zero gradient. Buffers
 * are sized for R, so r can change between steps at no cost (InRank grows it). The active ranks
 * are runtime state: checkpoints hold the factors at R and config.json the R's; a caller that
 * changes r keeps it in its own saved state. */

/* Layout index of matrix j of layer l: its dense weight, or its A factor (B is index + 1). */
int oz_llama_matrix_index(const oz_param_layout *layout, int layer, int matrix);
/* Stored rank R of matrix j of layer l; 0 for a dense matrix. */
int oz_llama_rank(const oz_llama *model, int layer, int matrix);
int oz_llama_active_rank(const oz_llama *model, int layer, int matrix);
/* Sets the active rank; OZ_ERR_INPUT unless the matrix is low-rank and 1 <= r <= R. */
oz_status oz_llama_set_active_rank(oz_llama *model, int layer, int matrix, int r, oz_err *err);
/* The factors of matrix j of layer l in backend memory: A (R x in, row stride in) and B (out x R,
 * row stride R); false for a dense matrix. Read/write them on the host with oz_llama_read_param /
 * oz_llama_write_param on oz_llama_matrix_index (A) and + 1 (B). */
bool oz_llama_factors(oz_llama *model, int layer, int matrix, float **A, float **B, int *R);

/* Forward over ids (B,T) with the model's batch/seq (B <= shape.batch, T <= shape.seq).
 * With targets, returns the mean cross-entropy over targets >= 0 in *loss and (if want_logits is
 * false) never materialises more than needed; with logits_out (host, (B,T,V)), copies the logits. */
typedef struct {
    const int32_t *ids;      /* host (B,T) */
    const int32_t *targets;  /* host (B,T) or NULL; -1 = ignore */
    int B, T;
    float *logits_out;       /* host (B,T,V) or NULL */
} oz_llama_batch;

/* Forward pass; *loss_sum and *n_targets receive the summed loss and the count of targets. */
oz_status oz_llama_forward(oz_llama *model, const oz_llama_batch *batch, double *loss_sum,
                           long *n_targets, oz_err *err);
/* Forward + backward; gradients are ACCUMULATED into the gradient buffer, scaled so that the
 * gradient is d(loss_sum * grad_scale). Call oz_llama_zero_grads first for a fresh step. */
oz_status oz_llama_forward_backward(oz_llama *model, const oz_llama_batch *batch, float grad_scale,
                                    double *loss_sum, long *n_targets, oz_err *err);
void oz_llama_zero_grads(oz_llama *model);
void oz_llama_set_grad_hook(oz_llama *model, oz_grad_hook hook, void *user);
/* outer_grad_blocks: called with the complete gradient of rows [row0, row0 + rows) of parameter
 * `index` (the embedding, 0, or the head), in blocks in row order: the head's right after the
 * head's backward, before any layer's; the embedding's at the very end. The head block's weights
 * are not read again in the step, so the hook may update them at once. */
typedef void (*oz_rows_hook)(void *user, int index, int row0, int rows, const float *grad);
void oz_llama_set_rows_hook(oz_llama *model, oz_rows_hook hook, void *user);
/* Rows per vocabulary block under outer_grad_blocks: ceil(V / ceil(V / hidden_size)), rounded up
 * so a block starts at a multiple of 256 elements (8-bit optimizer blocks). */
int oz_llama_vocab_block_rows(const oz_llama_config *cfg);
/* True when parameter `index`'s gradient goes through the rows hook (so oz_llama_grad is NULL). */
bool oz_llama_grad_in_blocks(const oz_llama *model, int index);
void oz_llama_set_tensor_hook(oz_llama *model, oz_tensor_hook hook, void *user);
void oz_llama_set_factor_hook(oz_llama *model, oz_factor_hook hook, void *user);
/* True when parameter `index`'s gradient goes to the factor hook (so oz_llama_grad is NULL). */
bool oz_llama_grad_factored(const oz_llama *model, int index);

#endif
