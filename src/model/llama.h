/* The Llama decoder: configuration (Hugging Face field names), parameter layout (HF tensor names),
 * and forward/backward written once against the backend op table. */
#ifndef OZ_LLAMA_H
#define OZ_LLAMA_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "backend/backend.h"
#include "mem/arena.h"
#include "model/grad_sink.h"
#include "model/weights_view.h"
#include "util/err.h"

typedef enum { OZ_ROPE_DEFAULT = 0, OZ_ROPE_LINEAR, OZ_ROPE_LLAMA3 } oz_rope_type;

/* The seven attention/MLP matrices of a decoder layer, in layout order. */
enum { OZ_M_Q, OZ_M_K, OZ_M_V, OZ_M_O, OZ_M_GATE, OZ_M_UP, OZ_M_DOWN, OZ_LLAMA_MATRICES };
/* Limits of a config (oz_llama_config_validate), checked before anything is sized by them: a few
 * times the largest models published, so that every size computed from them fits its type (the
 * parameter count in size_t, a layer's matrix rows in int) and a small config.json cannot make
 * ounce allocate without bound. Low-rank configs name layers 0..OZ_LLAMA_MAX_LAYERS-1 (Llama 3.1
 * 405B has 126 layers, hidden 16384, intermediate 53248; Llama 4 a context of 10M). */
#define OZ_LLAMA_MAX_LAYERS 256
#define OZ_LLAMA_MAX_VOCAB (1 << 24)     /* vocab_size */
#define OZ_LLAMA_MAX_WIDTH (1 << 18)     /* hidden_size, intermediate_size, heads x head_dim */
#define OZ_LLAMA_MAX_HEAD_DIM 4096
#define OZ_LLAMA_MAX_POSITIONS (1 << 24) /* max_position_embeddings and rope's original one */

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
/* Checks the config is well formed (positive sizes within the OZ_LLAMA_MAX_* limits, heads divide
 * hidden, ...). */
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
    /* The bf16 copy's layout (oz_llama_shape.precision bf16): offset into it, and a layer matrix's
     * rows and columns there, each rounded up to a multiple of 8 with zeros (gate and up get
     * ffn16 rows, down ffn16 columns at an ffn such as 1b's 5461): cuBLASLt's tensor-core
     * kernels run 4-5x slower on rows that are not 16-byte aligned, and as slowly on an odd
     * dimension with aligned rows, so the bf16 GEMMs run on the zero-padded shapes, which give
     * the same sums. Every other tensor (and a dense matrix's other side): rows16 = rows, ld16 =
     * its row length (1-D: 1, numel). */
    size_t offset16;
    int64_t rows16, ld16;
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
    size_t total16;               /* elements of the bf16 copy (offset16, ld16) */
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

/* The arithmetic of a model instance (oz_llama_shape.precision). fp32: everything fp32 (the
 * reference). bf16: activations and their gradients bf16, the GEMMs (fp32 accumulation) on bf16
 * copies of the fp32 master weights, which are rounded from them at the start of every forward;
 * weight gradients, norm statistics, softmax, log-sum-exp and the loss fp32 (docs/design.md,
 * precision policy). */
enum { OZ_PREC_FP32 = 0, OZ_PREC_BF16 = 1 };
#define OZ_PRECISION_NAMES "fp32, bf16"
/* "fp32" / "bf16" to OZ_PREC_*; false for anything else. */
bool oz_precision_parse(const char *name, int *precision);
const char *oz_precision_name(int precision);

/* What buffers a model instance has and how it stores its weights (docs/memory.md). */
typedef struct {
    int batch, seq;        /* activation buffers are sized for these */
    bool with_grads;       /* training: gradient buffers, backward */
    oz_grad_mode grads;    /* how gradients leave the model (model/grad_sink.h) */
    /* Q-GaLore: the seven matrices of every layer stored INT8 (groups of 256, numeric/quant.h),
     * dequantized a row block at a time (about int8_block_floats values; 0: 8M) for their GEMMs. */
    bool int8_matrices;
    size_t int8_block_floats;
    /* With int8_matrices and grads.vocab_blocks: embedding and head stored in bf16, read a
     * vocabulary block at a time widened to fp32, updated through the rows window with stochastic
     * rounding. */
    bool bf16_vocab;
    bool recompute;           /* keep only each layer's input; recompute the layer in backward */
    /* With recompute: the saved layer inputs in bf16 (the residual stream is rounded at every layer
     * boundary, so recomputation is exact); offload_checkpoints keeps them in host memory. */
    bool bf16_checkpoints;
    bool offload_checkpoints;
    /* Mini-sequences (MsT), 0 = off: the MLP over mlp_chunks chunks of the B*T tokens and the head
     * + loss over head_chunks, so no tokens x intermediate or tokens x vocab buffer exists. */
    int mlp_chunks, head_chunks;
    unsigned freeze; /* OZ_FREEZE_* flags */
    /* OZ_PREC_FP32 or OZ_PREC_BF16. bf16 does not yet take INT8 matrices, low-rank matrices,
     * recompute, mini-sequences, factored gradients or vocabulary blocks: create and the planner
     * refuse them (OZ_ERR_INPUT). */
    int precision;
    /* bf16 without fp32 master weights: the bf16 copy is the weights (2 bytes a parameter instead
     * of 6), updated in place with stochastic rounding (adamw_step_bf16); oz_llama_param gives
     * NULL and the weights view's bf16 reaches them. Needs precision bf16. */
    bool bf16_weights;
    /* bf16: the backend is CUDA, so the attention workspace planned is cuDNN's allowance, not the
     * CPU's (oz_attention_bf16_device_workspace_bytes); create checks it against the backend. */
    bool cuda;
} oz_llama_shape;

/* MsT's rule for --mini-seq auto: MLP chunks of about hidden_size tokens, ceil(vocab/hidden)
 * LM-head chunks (so a logits chunk is about the size of the hidden states), but no chunk shorter
 * than OZ_MINI_SEQ_MIN_ROWS tokens (fewer chunks instead). */
#define OZ_MINI_SEQ_MIN_ROWS 256
void oz_llama_mini_seq_auto(const oz_llama_config *cfg, int tokens, int *mlp_chunks, int *head_chunks);

/* What of this shape (with any precision) the bf16 model does not support yet, as a phrase for
 * "--precision bf16 does not support %s yet"; NULL when bf16 takes it. `--precision auto` (train's
 * default) picks bf16 on CUDA when this is NULL. */
const char *oz_llama_bf16_unsupported(const oz_llama_config *c, const oz_llama_shape *s);

/* Bytes the model would allocate, by arena category, without allocating anything: the same
 * buffer list oz_llama_create allocates from. largest[] is the largest single buffer. */
typedef struct {
    size_t bytes[OZ_MEM_NCATEGORIES];
    size_t largest[OZ_MEM_NCATEGORIES];
    size_t host_bytes; /* offload_checkpoints: the host memory holding the layer inputs */
} oz_llama_plan;
oz_status oz_llama_plan_memory(const oz_llama_config *cfg, oz_llama_shape shape, oz_llama_plan *plan,
                               oz_err *err);

/* True when parameter p's gradient is emitted as factors under mask (oz_grad_mode.factored): a dense,
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
/* A bf16 embedding or head (bf16_vocab) in backend memory; NULL otherwise. */
uint16_t *oz_llama_param_bf16(oz_llama *model, int index);
/* The optimizer's view of the weights: fp32 tensors, INT8 codes, the embedding/head rows window
 * (rows <= oz_llama_vocab_block_rows; SR element indices counted over the whole tensor). */
oz_weights_view oz_llama_weights(oz_llama *model);
/* Every parameter from a host buffer in layout order (INT8 matrices quantized, round to nearest),
 * or to one (dequantized). */
void oz_llama_import_params(oz_llama *model, const float *host);
void oz_llama_export_params(oz_llama *model, float *host);
/* Parameter `index` (numel floats) to or from the host, converted as above. */
void oz_llama_read_param(oz_llama *model, int index, float *host);
void oz_llama_write_param(oz_llama *model, int index, const float *host);
/* The full gradient buffer (layout->grad_total floats, trainable tensors at grad_offset); NULL in
 * per-layer mode. */
float *oz_llama_grads(oz_llama *model);
/* Host memory the model holds outside the arena (offloaded checkpoints); 0 otherwise. */
size_t oz_llama_host_bytes(const oz_llama *model);
/* Parameter `index`'s gradient buffer, for inspection: NULL for a frozen, factored or row-block
 * tensor; in per-layer mode only valid while its event is being taken. */
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
 * With targets, the cross-entropy summed over targets >= 0 (and their count) is returned, and the
 * logits are never materialised whole; with logits_out (host, (B,T,V)), they are copied there. */
typedef struct {
    const int32_t *ids;      /* host (B,T) */
    const int32_t *targets;  /* host (B,T) or NULL; -1 = ignore */
    int B, T;
    float *logits_out;       /* host (B,T,V) or NULL */
} oz_llama_batch;

/* Forward pass; *loss_sum and *n_targets receive the summed loss and the count of targets. */
oz_status oz_llama_forward(oz_llama *model, const oz_llama_batch *batch, double *loss_sum,
                           long *n_targets, oz_err *err);
/* Forward + backward of loss_sum * grad_scale. Gradients accumulate in the model's buffers and
 * are emitted to the sink as grads (oz_grad_mode) says: per layer or per tensor as the backward
 * completes them, in row blocks, as factors. In whole-model mode the first call after
 * oz_llama_zero_grads also emits every gradient as partial. */
oz_status oz_llama_forward_backward(oz_llama *model, const oz_llama_batch *batch, float grad_scale,
                                    double *loss_sum, long *n_targets, oz_err *err);
void oz_llama_zero_grads(oz_llama *model);
/* Emits, once the step's micro-batches are done, what accumulated in the model's buffers and was
 * not emitted during the backward: every tensor (whole-model mode), or the embedding, final norm
 * and head (per-layer mode). */
void oz_llama_emit_accumulated(oz_llama *model);
/* Where gradients go (a zeroed sink: nowhere). */
void oz_llama_set_grad_sink(oz_llama *model, oz_grad_sink sink);
/* Rows per vocabulary block: ceil(V / ceil(V / hidden_size)), rounded up so a block starts at a
 * multiple of 256 elements (8-bit optimizer blocks). */
int oz_llama_vocab_block_rows(const oz_llama_config *cfg);
/* True when parameter `index`'s gradient is emitted in row blocks / as factors. */
bool oz_llama_grad_in_blocks(const oz_llama *model, int index);
bool oz_llama_grad_factored(const oz_llama *model, int index);

#endif
