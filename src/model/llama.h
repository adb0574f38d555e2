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
} oz_llama_config;

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
    oz_param_kind kind;
    int layer;             /* -1 for embedding, final norm, head */
    int ndim;
    int64_t shape[2];      /* (out, in) for matrices, (d) for norms */
    size_t offset;         /* in floats, into the flat parameter buffer */
    size_t numel;
    bool is_norm;          /* norms get no weight decay */
} oz_param_info;

/* Parameter table: embedding, then per layer {attn norm, q, k, v, o, mlp norm, gate, up, down},
 * then final norm and (when untied) lm_head. Each layer's tensors are contiguous, so a layer's
 * gradients form one span (what per-layer optimizer updates consume). */
typedef struct {
    int n;
    oz_param_info *params;
    size_t total;                 /* floats */
    size_t layer_begin, layer_stride; /* offset of layer 0 and floats per layer */
} oz_param_layout;

oz_status oz_param_layout_build(const oz_llama_config *cfg, oz_param_layout *layout, oz_err *err);
void oz_param_layout_free(oz_param_layout *layout);
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
    /* Q-GaLore: the seven attention/MLP matrices of every layer are stored as INT8 (groups of 256,
     * asymmetric, range including 0) and dequantized one layer at a time into a scratch buffer
     * for that layer's forward and backward. No fp32 copy of them exists. */
    bool int8_matrices;
    bool recompute;               /* keep only each layer's input; recompute the layer in backward */
    /* Mini-sequences (MsT): 0 = off. Otherwise the MLP runs over mlp_chunks chunks of the B*T
     * tokens (its intermediates are recomputed chunk by chunk in backward, never stored for all
     * tokens) and the LM head + loss over head_chunks chunks, so no tokens x intermediate or
     * tokens x vocab buffer exists. The last chunk may be shorter. */
    int mlp_chunks, head_chunks;
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
} oz_llama_plan;
oz_status oz_llama_plan_memory(const oz_llama_config *cfg, oz_llama_shape shape, oz_llama_plan *plan,
                               oz_err *err);

/* Called during backward as soon as a group of parameter gradients is complete: each layer
 * (layer = 0..L-1, in reverse order), then the embedding/final-norm/head group (layer = -1) at
 * the very end. Per-layer optimizers consume gradients here. */
typedef void (*oz_grad_hook)(void *user, int layer);

oz_status oz_llama_create(oz_llama **out, const oz_llama_config *cfg, oz_backend *be, oz_arena *arena,
                          oz_llama_shape shape, oz_err *err);
void oz_llama_destroy(oz_llama *model);

const oz_llama_config *oz_llama_get_config(const oz_llama *model);
const oz_param_layout *oz_llama_get_layout(const oz_llama *model);
float *oz_llama_params(oz_llama *model);  /* backend memory, layout->total floats; NULL with int8_matrices */
/* Parameter `index` in backend memory; NULL for an INT8 matrix. */
float *oz_llama_param(oz_llama *model, int index);
/* An INT8 matrix's codes (numel), scales and zero points (one per group of 256); false when the
 * parameter is not stored as INT8. */
bool oz_llama_param_int8(oz_llama *model, int index, uint8_t **q, float **scale, uint8_t **zero);
/* Sets every parameter from a host buffer in layout order (INT8 matrices are quantized,
 * round-to-nearest), or writes them out (INT8 matrices dequantized). */
void oz_llama_import_params(oz_llama *model, const float *host);
void oz_llama_export_params(oz_llama *model, float *host);
float *oz_llama_grads(oz_llama *model);   /* the full gradient buffer; NULL without it (per-layer mode) */
/* Gradient of parameter `index` (layout order): in per-layer mode a layer tensor's gradient is only
 * valid inside that layer's grad hook. */
float *oz_llama_grad(oz_llama *model, int index);

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

#endif
