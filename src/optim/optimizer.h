/* The optimizers behind `--optim`: AdamW, 8-bit AdamW, GaLore and 8-bit GaLore, over the model's
 * parameter layout. One slot per parameter tensor holds its state: dense Adam moments (fp32, or
 * block-wise 8-bit), or for a GaLore matrix a projection basis, low-rank moments and a low-rank
 * gradient accumulator.
 *
 * A step is: consume every parameter's gradient (whole-model mode: from the full gradient buffer
 * after the last micro-batch; per-layer mode: from each layer's gradients inside the model's grad
 * hook, projected and accumulated at once), then the gradient norm of what was consumed, then
 * apply. A GaLore matrix's clipping norm is that of its projected gradient, the quantity its Adam
 * step uses, so both modes clip identically. At a subspace refresh the basis is computed from
 * the first micro-batch's gradient of that step, in both modes.
 *
 * Frozen tensors (oz_param_info.frozen, set from oz_llama_shape.freeze) get an empty slot: no
 * state, consume is a no-op, they are never updated and not saved. Low-rank factors are ordinary
 * 2-D tensors (GaLore projects their gradients like any matrix's; qgalore stores them as INT8 like
 * dense matrices). */
#ifndef OZ_OPTIMIZER_H
#define OZ_OPTIMIZER_H
#include <stdbool.h>
#include <stdint.h>

#include "backend/backend.h"
#include "mem/arena.h"
#include "model/llama.h"
#include "util/err.h"

typedef enum { OZ_OPTIM_ADAMW, OZ_OPTIM_ADAMW8BIT, OZ_OPTIM_GALORE, OZ_OPTIM_GALORE8BIT, OZ_OPTIM_QGALORE } oz_optim_kind;
typedef enum { OZ_PROJ_STD, OZ_PROJ_REVERSE_STD, OZ_PROJ_LEFT, OZ_PROJ_RIGHT, OZ_PROJ_FULL } oz_proj_type;
typedef enum { OZ_SWITCH_KEEP, OZ_SWITCH_RESET, OZ_SWITCH_ROTATE } oz_switch_mode;

typedef struct {
    oz_optim_kind kind;
    float beta1, beta2, eps, weight_decay;
    /* GaLore */
    int rank, update_gap;
    float scale;
    oz_proj_type proj;
    oz_switch_mode at_switch;
    int subspace;          /* OZ_SUBSPACE_EXACT or OZ_SUBSPACE_RANDOMIZED */
    bool galore_attn, galore_mlp; /* which matrices get GaLore (default both) */
    uint64_t seed;         /* randomized subspaces draw from streams derived from (seed, step, tensor) */
    bool per_layer;        /* gradients arrive layer by layer (no full gradient buffer) */
    /* Q-GaLore's lazy subspace updates: after each refresh, the cosine between the old and new
     * first basis vectors joins a window; once the window is full and its mean reaches
     * cos_threshold, that matrix's gap is multiplied by gap_growth (at most max_gap). */
    bool lazy;
    float cos_threshold, gap_growth;
    int cos_window, max_gap;
    int proj_bits;         /* 32: fp32 bases; 4: INT4 bases (groups of 256, two codes per byte) */
    /* qgalore: GaLore matrices are INT8 in the model (oz_llama_shape.int8_matrices); each update
     * is dequantize, add, requantize with stochastic rounding from streams keyed by (seed, step,
     * tensor, group). qgalore is galore8bit plus this (and lazy updates, INT4 bases by default). */
    bool int8_weights;
    /* Per-layer mode without accumulation or clipping: every tensor is updated inside consume, the
     * moment its gradient is handed over (inside the model's hooks), so no projected-gradient
     * accumulator exists (GaLore's own per-layer mode, per tensor). */
    bool immediate;
    /* qgalore: bytes of the row block the INT8 update is built in (0: 4 MiB). Tests make it small
     * to check that blocked updates give the whole-matrix result. */
    size_t int8_block_bytes;
    /* Immediate mode, randomized subspaces: the GaLore matrices whose gradient arrives as its
     * factors (oz_optimizer_consume_factors), the model's oz_llama_shape.factored_grads (a bitmask
     * over OZ_M_*, oz_param_factored says which tensors), and tokens, the most rows a call's
     * factors have (batch x seq): the planner sizes their intermediates from it. */
    unsigned factored_matrices;
    int tokens;
} oz_optim_config;

#define OZ_LAZY_MAX_WINDOW 32

/* Parses names used on the command line; false if unknown. */
bool oz_optim_kind_parse(const char *name, oz_optim_kind *kind);
bool oz_proj_type_parse(const char *name, oz_proj_type *proj);
bool oz_switch_mode_parse(const char *name, oz_switch_mode *mode);
const char *oz_optim_kind_name(oz_optim_kind kind);

typedef struct oz_optimizer oz_optimizer;

oz_status oz_optimizer_create(oz_optimizer **out, const oz_optim_config *cfg, const oz_param_layout *layout,
                              oz_backend *be, oz_arena *arena, oz_err *err);
void oz_optimizer_destroy(oz_optimizer *opt);

/* Bytes by arena category the optimizer allocates for this layout (the analytic formula). gpu: the
 * backend's memory is not the host's (CUDA), so the subspace workspace is device scratch of
 * oz_subspace_device_workspace_bytes, not LAPACK's. */
void oz_optimizer_plan(const oz_optim_config *cfg, const oz_param_layout *layout, bool gpu,
                       size_t bytes[OZ_MEM_NCATEGORIES]);

/* Starts optimizer step `step` (0-based) with learning rate lr: decides which GaLore matrices
 * refresh their subspace (lr is used by immediate updates, which happen inside consume). */
void oz_optimizer_begin_step(oz_optimizer *opt, int step, float lr);
/* Whole-model mode, at a refresh step: compute the new subspaces from the first micro-batch's
 * gradients (call right after that micro-batch's backward). No-op when nothing refreshes. */
oz_status oz_optimizer_refresh_from(oz_optimizer *opt, oz_llama *model, oz_err *err);
/* Consumes parameter `index`'s gradient. accumulate=false starts this step's accumulator. */
oz_status oz_optimizer_consume(oz_optimizer *opt, int index, const float *grad, bool accumulate, oz_err *err);
/* Immediate mode, a dense 2-D tensor whose gradient arrives in row blocks (the model's
 * outer_grad_blocks): updates rows [row0, row0 + rows) at once with this step's learning rate, as
 * the whole-tensor update would (blocks in order, starting at row 0, each starting at a multiple of
 * 256 elements for 8-bit moments). */
oz_status oz_optimizer_consume_rows(oz_optimizer *opt, int index, int row0, int rows, const float *grad, oz_err *err);
/* Immediate mode: oz_optimizer_consume, with the gradient buffer the caller's scratch from here on
 * (it is not read again), so the update may be built in it: Q-GaLore then back-projects a whole
 * matrix in one GEMM instead of in row blocks (bitwise the same codes). */
oz_status oz_optimizer_consume_scratch(oz_optimizer *opt, int index, float *grad, oz_err *err);
/* Immediate mode, a factored tensor (oz_optim_config.factored_matrices): its gradient G = dY^T X
 * (a x b) given by its factors, dY (rows, a) and X (rows, b), row-major with leading dimensions ldy
 * and ldx (the model's factor hook). Refreshes the subspace if due (the factored randomized range
 * finder: the same draws as on the materialized G) and projects G from the factors ((dY P)^T X,
 * dY^T (X Q^T) or both), never forming it. The weight is not touched: the update is applied by the
 * oz_optimizer_consume or oz_optimizer_consume_scratch call for this tensor that must follow (with
 * a NULL gradient), once the caller no longer reads the weight. */
oz_status oz_optimizer_consume_factors(oz_optimizer *opt, int index, const float *dY, int ldy, const float *X, int ldx,
                                       int rows, oz_err *err);
/* Sum of squares of everything consumed this step (the clipping norm squared; with immediate
 * updates it includes what was already applied, for reporting). */
double oz_optimizer_grad_sumsq(oz_optimizer *opt);
/* Applies the step with learning rate lr and gradients multiplied by grad_scale, to the weights of
 * the bound model (oz_optimizer_bind_model), else to `params` (layout order). */
void oz_optimizer_apply(oz_optimizer *opt, float *params, float lr, float grad_scale);
/* Weights live in this model: dense ones through oz_llama_param, INT8 ones through
 * oz_llama_param_int8 (required for int8_weights; their codes are saved with the optimizer). */
void oz_optimizer_bind_model(oz_optimizer *opt, oz_llama *model);

/* Counts, for logs and tests. */
long oz_optimizer_subspace_refreshes(const oz_optimizer *opt);
/* Subspace refreshes still due in the current step (set by begin_step). */
int oz_optimizer_refreshes_due(const oz_optimizer *opt);
/* Called after each subspace refresh with the step's refreshes done so far and planned (a 7b
 * refresh is 224 SVD-like problems: minutes on a CPU, so the trainer shows progress). */
typedef void (*oz_refresh_progress_fn)(void *user, int done, int total);
void oz_optimizer_on_refresh(oz_optimizer *opt, oz_refresh_progress_fn fn, void *user);
/* Current refresh gap of tensor `index` (GaLore slots; 0 otherwise). */
int oz_optimizer_gap(const oz_optimizer *opt, int index);
/* GaLore test hook: replace tensor `index`'s basis (a GaLore slot) by `basis` (backend memory), and
 * stop refreshing it. Returns false if the tensor has no GaLore slot. */
bool oz_optimizer_set_basis(oz_optimizer *opt, int index, const float *P, const float *Q);

/* Saves every state buffer (moments, bases, scales, counters) as one safetensors file, and loads
 * it back; names are "<role>.<HF tensor name>". Loading checks names and shapes. */
oz_status oz_optimizer_save(const oz_optimizer *opt, const char *path, oz_err *err);
oz_status oz_optimizer_load(oz_optimizer *opt, const char *path, oz_err *err);
/* Copies the state (moments, bases, counters) of every tensor of src into the tensor of dst with
 * the same name, kind and shapes; dst's other tensors, and with reset_factors its low-rank factors,
 * keep their fresh state. InRank's freeze uses it when it rebuilds the model at smaller ranks. */
oz_status oz_optimizer_copy_state(oz_optimizer *dst, const oz_optimizer *src, bool reset_factors, oz_err *err);

#endif
