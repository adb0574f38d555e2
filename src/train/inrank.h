/* InRank in a training run (`ounce train --inrank`): which matrices are stored as factors, their
 * current ranks, the periodic rank check, the freeze (stage 2), the rank log and its plot.
 *
 * Stage 1: every target matrix is stored as factors A (R x in), B (out x R), R = floor(min/2),
 * and trained at active rank r = min(k + b, R), k its current rank and b the buffer. Every
 * check_every optimizer steps from warmup on, k grows by the explained-variance rule
 * (optim/inrank.h) on the spectrum of B_r A_r, and r follows. Stage 2 (optional, at step
 * freeze_after): each matrix is truncated to balanced factors at rank k and the model rebuilt at
 * fixed rank k, its factors' optimizer moments reset, the rest of the state kept.
 *
 * A factor's columns of B beyond the active rank start (and, untrained, stay) at zero, so
 * B_R A_R = B_r A_r at every step: a checkpoint at stored rank R computes exactly the trained
 * function (eval, sample and convert need no InRank state), and growing the rank changes no output
 * (the new components start as LoRA's do, B = 0, and train from there). */
#ifndef OZ_TRAIN_INRANK_H
#define OZ_TRAIN_INRANK_H
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "mem/arena.h"
#include "model/llama.h"
#include "optim/optimizer.h"
#include "train/options.h"
#include "util/err.h"

typedef struct {
    bool attn, mlp;            /* which matrices InRank factorizes */
    int init_rank, buffer, check_every, warmup, freeze_after; /* freeze_after 0: never */
    float threshold;
} oz_inrank_settings;

typedef struct {
    int stage;                 /* 1: ranks grow; 2: frozen at k (the model was rebuilt at rank k) */
    int froze_at;              /* step of the freeze, 0 before it */
    int k[OZ_LLAMA_MAX_LAYERS][OZ_LLAMA_MATRICES]; /* current rank; 0 for matrices InRank does not own */
    int n_layers;
    oz_param_layout layout;    /* after the freeze: the layout the rebuilt optimizer refers to */
    bool has_layout;
} oz_inrank_run;

/* The settings of a run's options (--inrank-*), validated: OZ_ERR_INPUT with one line naming the
 * flag. Not an InRank run: *s is zeroed and OZ_OK. */
oz_status oz_inrank_settings_from_opts(const oz_train_opts *o, oz_inrank_settings *s, oz_err *err);

/* "mlp" (gate, up, down) or "attn,mlp" (all seven); false otherwise. */
bool oz_inrank_targets_parse(const char *text, bool *attn, bool *mlp);
bool oz_inrank_owns(const oz_inrank_settings *s, int matrix);

/* Stores every target matrix of a dense config as factors of rank floor(min(in, out) / 2). A
 * config that already has low-rank matrices (a resumed run) is left as it is. */
void oz_inrank_factorize_config(oz_llama_config *cfg, const oz_inrank_settings *s);

/* Active rank of a matrix of stored rank R at current rank k: min(k + b, R) in stage 1, k in stage 2. */
int oz_inrank_active(const oz_inrank_run *run, const oz_inrank_settings *s, int k, int R);

/* A fresh run: k = min(init_rank, R) for every factored matrix of cfg, stage 1. */
void oz_inrank_begin(oz_inrank_run *run, const oz_llama_config *cfg, const oz_inrank_settings *s);

/* Initialises the factors in a host parameter buffer (layout order) for a fresh run. With r0 the
 * starting active rank, A and B's first r0 columns are normal(0, sigma^2), sigma^2 = 0.02 / sqrt(r0),
 * so each entry of B_r0 A_r0 has standard deviation 0.02 (ounce's dense init) and both factors
 * are the same size (the reference's Kaiming-uniform on both is balanced too, but its product is
 * about r0^(1/2)/(3 sqrt(in R)) per entry, far from our dense scale). B's other columns are zero. */
void oz_inrank_init_factors(const oz_inrank_run *run, const oz_inrank_settings *s, const oz_llama_config *cfg,
                            const oz_param_layout *layout, float *params, uint64_t seed);

/* Sets every factored matrix's active rank from the run's ranks. */
oz_status oz_inrank_apply(const oz_inrank_run *run, const oz_inrank_settings *s, oz_llama *model, oz_err *err);

/* True when the optimizer step just completed (`step`, 1-based) is a rank check. */
bool oz_inrank_due(const oz_inrank_run *run, const oz_inrank_settings *s, int step);

/* The rank check: grows each matrix's k by the rule and applies the new active ranks. *grown
 * receives how many matrices grew. Notes its host workspace in the arena (scratch, transient). */
oz_status oz_inrank_check(oz_inrank_run *run, const oz_inrank_settings *s, oz_llama *model, oz_arena *arena,
                          int *grown, oz_err *err);
/* Bytes a check holds for a moment on top of the arena (the planner adds them to scratch): the
 * largest over factored matrices of both factors' host copies plus the SVD workspace at rank R. */
size_t oz_inrank_check_bytes(const oz_llama_config *cfg);

/* The freeze: truncates every factored matrix to balanced factors at its rank k, rebuilds the
 * model at fixed rank k (cfg is updated), and builds a new optimizer that keeps every other
 * tensor's state (the factors' moments start fresh). On success *model and *opt are the new ones
 * (the old ones destroyed), the model's gradients going to the optimizer; on failure both are
 * destroyed and set to NULL. */
oz_status oz_inrank_freeze(oz_inrank_run *run, int step, oz_llama **model, oz_optimizer **opt, oz_llama_config *cfg,
                           oz_backend *be, oz_arena *arena, oz_llama_shape shape, const oz_optim_config *ocfg,
                           oz_err *err);
void oz_inrank_run_free(oz_inrank_run *run);

/* Trainer state: {"stage", "froze_at", "ranks": {"model.layers.L.<module>": k, ...}}. */
cJSON *oz_inrank_state_to_json(const oz_inrank_run *run, const oz_llama_config *cfg);
oz_status oz_inrank_state_from_json(oz_inrank_run *run, const cJSON *j, const oz_llama_config *cfg, const char *path,
                                    oz_err *err);

/* One JSON line of the rank log: {"step":S,"stage":N,"ranks":{...},"mean_fraction":f}, where
 * mean_fraction is the mean of k / min(in, out). */
void oz_inrank_log(FILE *f, int step, const oz_inrank_run *run, const oz_llama_config *cfg);
/* Mean of k / min(in, out) over the owned matrices (0 if none). */
double oz_inrank_mean_fraction(const oz_inrank_run *run, const oz_llama_config *cfg);

/* Plots a rank log as a standalone SVG: the mean rank over layers of each matrix type against
 * the step (a step that appears again, after a resume, replaces the later points). */
oz_status oz_inrank_plot(const char *log_path, const char *svg_path, oz_err *err);

#endif
