/* The optimizers behind `--optim` (AdamW, 8-bit AdamW, GaLore, 8-bit GaLore, Q-GaLore) over a
 * parameter layout. One slot per tensor holds its state. A step: begin_step, then every gradient
 * arrives as an event (oz_optimizer_sink, fed by the model's backward; immediate updates apply
 * there), then grad_sumsq (the clipping norm) and apply. docs/optimizers.md has the maths. */
#ifndef OZ_OPTIMIZER_H
#define OZ_OPTIMIZER_H
#include <stdbool.h>
#include <stdint.h>

#include "backend/backend.h"
#include "mem/arena.h"
#include "model/grad_sink.h"
#include "model/llama.h"
#include "model/weights_view.h"
#include "util/err.h"

typedef enum { OZ_OPTIM_ADAMW, OZ_OPTIM_ADAMW8BIT, OZ_OPTIM_GALORE, OZ_OPTIM_GALORE8BIT, OZ_OPTIM_QGALORE } oz_optim_kind;
/* The --optim spellings in enum order, for help texts and errors (test_optim checks them against
 * the traits table). */
#define OZ_OPTIM_KIND_NAMES "adamw, adamw8bit, galore, galore8bit, qgalore"
typedef enum { OZ_PROJ_STD, OZ_PROJ_REVERSE_STD, OZ_PROJ_LEFT, OZ_PROJ_RIGHT, OZ_PROJ_FULL } oz_proj_type;
typedef enum { OZ_SWITCH_KEEP, OZ_SWITCH_RESET, OZ_SWITCH_ROTATE } oz_switch_mode;

/* What each kind is: one row per kind (optimizer.c's table), read instead of comparing kinds. */
typedef struct {
    const char *name;   /* the --optim spelling */
    bool galore;        /* matrix gradients projected into a low-rank subspace */
    bool moments_8bit;  /* block-wise 8-bit Adam moments */
    bool int8_weights;  /* GaLore matrices stored INT8, updated with stochastic rounding */
    bool lazy_default;  /* --lazy-update auto */
    int proj_bits;      /* --proj-bits default: 32 (fp32 bases) or 4 (INT4) */
} oz_optim_traits;
const oz_optim_traits *oz_optim_traits_of(oz_optim_kind kind);

typedef struct {
    oz_optim_kind kind;
    float beta1, beta2, eps, weight_decay;
    /* GaLore */
    int rank, update_gap;
    float scale;
    oz_proj_type proj;
    oz_switch_mode at_switch;
    int subspace;                 /* OZ_SUBSPACE_EXACT or OZ_SUBSPACE_RANDOMIZED */
    bool galore_attn, galore_mlp; /* which matrices get GaLore */
    uint64_t seed;                /* randomized subspaces and SR streams derive from (seed, step, tensor) */
    /* Q-GaLore's lazy refreshes: a full window of cosines (old vs new first basis vector) whose
     * mean reaches cos_threshold multiplies the matrix's gap by gap_growth, up to max_gap. */
    bool lazy;
    float cos_threshold, gap_growth;
    int cos_window, max_gap;
    int proj_bits;                /* 32 or 4 */
    bool int8_weights;            /* the model stores GaLore matrices INT8 (int8_matrices) */
    size_t int8_block_bytes;      /* the INT8 update's row block (0: the pool's room, at least 4 MiB) */
    oz_grad_mode grads;           /* how gradients arrive: the model's (oz_llama_shape.grads) */
    /* Clipping inside immediate updates (--clip-mode running): each tensor's update, applied as its
     * gradient arrives, is clipped by the best estimate of the step's global norm available then:
     *     est^2 = (this step's sums of squares so far, its own included)
     *           + (last step's sums of squares of the tensors not yet seen this step),
     * scale = clip / (est + 1e-6) where est > clip, else 1, the exact mode's formula. The last
     * tensor's estimate is the exact norm; a spike in a tensor is seen by its own update. With no
     * history (the first step) the unseen part counts 0: a lower bound, clipping less, never more.
     * The history is optimizer state (saved; resume is bit-exact). 0 / false: off. */
    float clip;
    bool clip_running;
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
/* Bytes by arena category create allocates. gpu: the subspace workspace is device scratch. */
void oz_optimizer_plan(const oz_optim_config *cfg, const oz_param_layout *layout, bool gpu,
                       size_t bytes[OZ_MEM_NCATEGORIES]);
/* The weights updates go to (a model's oz_llama_weights, or oz_weights_flat). Required before a
 * step; int8_weights needs a model's view (its codes are saved with the optimizer state). */
void oz_optimizer_bind_weights(oz_optimizer *opt, oz_weights_view weights);

/* Starts step `step` (0-based) with learning rate lr: decides which subspaces refresh, clears
 * the first error. */
void oz_optimizer_begin_step(oz_optimizer *opt, int step, float lr);
/* Takes one gradient event (model/grad_sink.h): accumulates it, or with grads.immediate applies
 * it; a partial one only refreshes the tensor's subspace when due. A second event for a tensor
 * in a step accumulates (per-layer mode over micro-batches). */
oz_status oz_optimizer_take(oz_optimizer *opt, const oz_grad_event *ev, oz_err *err);
/* The sink the model emits to: oz_optimizer_take, its first failure kept for oz_optimizer_status. */
oz_grad_sink oz_optimizer_sink(oz_optimizer *opt);
/* The first failure of this step's sink events (OZ_OK if none), copied into err. */
oz_status oz_optimizer_status(const oz_optimizer *opt, oz_err *err);
/* Sum of squares of everything taken this step (the clipping norm squared; with immediate updates
 * it includes what was already applied). */
double oz_optimizer_grad_sumsq(oz_optimizer *opt);
/* The clip scale parameter `index`'s last running-clipped update used (1 when unclipped or not
 * in running mode): for tests and logs. */
float oz_optimizer_clip_scale(const oz_optimizer *opt, int index);
/* The mean subspace change of this step's refreshes of subspaces that existed before: per side,
 * 1 - |P_old^T P_new|_F^2 / r, which is 0 for the same subspace and 1 for an orthogonal one (the
 * mean squared sine of the principal angles); both sides averaged for a full projection. NAN when
 * no existing subspace was refreshed this step. */
double oz_optimizer_subspace_change(const oz_optimizer *opt);
/* The tensor whose gradient taken this step (not yet applied) is not finite and arrived first, in
 * backward order: where a NaN or infinity appeared; -1 when every one is finite. With immediate
 * updates a non-finite gradient is refused by take itself (OZ_ERR_NUMERIC naming the tensor) and
 * never applied. */
int oz_optimizer_first_nonfinite(oz_optimizer *opt);
/* Applies what was taken and not applied yet, gradients multiplied by grad_scale (clipping). */
void oz_optimizer_apply(oz_optimizer *opt, float lr, float grad_scale);

/* Counts and settings, for logs and tests. */
long oz_optimizer_subspace_refreshes(const oz_optimizer *opt);
int oz_optimizer_refreshes_due(const oz_optimizer *opt); /* set by begin_step */
/* Called after each subspace refresh with the step's refreshes done and planned (progress lines). */
typedef void (*oz_refresh_progress_fn)(void *user, int done, int total);
void oz_optimizer_on_refresh(oz_optimizer *opt, oz_refresh_progress_fn fn, void *user);
int oz_optimizer_gap(const oz_optimizer *opt, int index); /* a GaLore slot's refresh gap; 0 otherwise */
/* Test hook: fixes tensor `index`'s basis (backend memory) and stops refreshing it; false without
 * a GaLore slot. */
bool oz_optimizer_set_basis(oz_optimizer *opt, int index, const float *P, const float *Q);

/* The state (moments, bases, scales, counters, INT8 codes) as one safetensors file of
 * "<role>.<HF tensor name>" entries; load checks names and shapes. */
oz_status oz_optimizer_save(const oz_optimizer *opt, const char *path, oz_err *err);
oz_status oz_optimizer_load(oz_optimizer *opt, const char *path, oz_err *err);
/* Copies the state of every src tensor into dst's tensor of the same name, kind and shapes (with
 * reset_factors, low-rank factors keep dst's fresh state): InRank's freeze. */
oz_status oz_optimizer_copy_state(oz_optimizer *dst, const oz_optimizer *src, bool reset_factors, oz_err *err);

#endif
