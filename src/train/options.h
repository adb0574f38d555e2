/* A training run's options (the flags of `ounce train`): defaults, validation, their JSON in
 * trainer_state.json, and what they configure (the model's shape, the optimizer, the gradient
 * mode). */
#ifndef OZ_TRAIN_OPTIONS_H
#define OZ_TRAIN_OPTIONS_H
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>

#include "model/llama.h"
#include "optim/optimizer.h"
#include "util/err.h"

#define OZ_PATH_MAX 1024

typedef struct {
    char data[OZ_PATH_MAX];   /* prepared directory or random:V */
    char model[OZ_PATH_MAX];  /* preset name, config.json path, or directory holding one */
    char init[OZ_PATH_MAX];   /* "" or a model directory (ours or Hugging Face's) whose weights start the run */
    char out[OZ_PATH_MAX];
    char optim[32];           /* adamw | adamw8bit | galore | galore8bit | qgalore */
    char device[16];          /* cpu | cuda | cuda:N | cuda+tf32 */
    char precision[8];        /* auto | fp32 | bf16 (oz_llama_shape.precision; auto: oz_train_configure) */
    char master_weights[8];   /* auto | on | off: bf16 with fp32 master weights (off: bf16 weights, SR updates;
                               * auto: off for adamw, on for the optimizers bf16 weights do not take yet) */
    char recompute[16];       /* none | layer | layer-bf16 | layer-offload */
    char mini_seq[16];        /* off | auto | N (MLP and LM-head chunk count) */
    /* GaLore family */
    int rank, update_gap;
    float galore_scale;
    char proj_type[16];       /* std | reverse_std | left | right | full */
    char moments_at_switch[16]; /* keep | reset | rotate */
    char subspace[16];        /* svd | randomized */
    char galore_targets[16];  /* attn,mlp | attn | mlp */
    char per_layer_update[8]; /* auto | on | off (auto: on for the GaLore family) */
    char lazy_update[8];      /* auto | on | off: Q-GaLore's cosine-driven refresh gaps (auto: qgalore) */
    char vocab_bf16[8];       /* auto | on | off: embedding and head stored in bf16 (auto: qgalore, immediate) */
    char factored_grads[8];   /* auto | off: GaLore matrices' gradients kept as factors (auto: immediate, randomized) */
    char on_nonfinite[8];     /* stop | skip: a step whose loss or gradient is not finite stops the run, or is
                               * not applied (not with immediate updates, which apply as gradients arrive) */
    float cos_threshold, gap_growth;
    int cos_window, max_gap;  /* max_gap 0: 8 x update_gap */
    int proj_bits;            /* 32 | 4; 0: the kind's default (4 for qgalore) */
    int steps, batch, seq, grad_accum;
    float lr, min_lr_ratio;
    int warmup;
    float weight_decay, clip, beta1, beta2, adam_eps;
    char clip_mode[12];       /* auto | exact | running (oz_optim_config.clip_running; auto: running where
                               * updates can come as gradients arrive, exact otherwise) */
    uint64_t seed;
    int eval_every, eval_batches, save_every, keep, log_every, threads;
    /* WeLore: train only a low-rank model's factors and the norms; embedding, head and dense
     * (N-LRC) matrices are frozen. */
    bool welore;
    bool no_save;              /* benchmarks: no final model (metrics only); periodic saves still happen */
    bool force;                /* train although the model's and the data's vocabularies differ (not saved) */
    /* InRank (train/inrank.h): the target matrices as factors whose rank grows; freeze_after 0 = never */
    bool inrank;
    int inrank_init_rank, inrank_buffer, inrank_check_every, inrank_warmup, inrank_freeze_after;
    float inrank_threshold;
    char inrank_targets[16];  /* mlp | attn,mlp */
} oz_train_opts;

/* The defaults documented in `ounce train --help`. */
void oz_train_opts_default(oz_train_opts *o);

/* The most tokens (batch x seq) a step may have: token counts are ints in the model and kernels. */
#define OZ_TRAIN_MAX_TOKENS (1 << 30)

/* What a run with these options builds: the model's shape and the optimizer's configuration,
 * with the gradient mode (oz_grad_mode) decided once and given to both. */
oz_status oz_train_configure(const oz_train_opts *o, const oz_llama_config *cfg, oz_llama_shape *shape,
                             oz_optim_config *oc, oz_err *err);

/* The options as the "options" object of trainer_state.json, and back (settings absent in states
 * older than them get what those runs trained with; a missing required one is OZ_ERR_INPUT). */
cJSON *oz_train_opts_to_json(const oz_train_opts *o);
oz_status oz_train_opts_from_json(const cJSON *j, const char *path, oz_train_opts *o, oz_err *err);
/* Every setting in its flag's range (one line naming the flag). */
oz_status oz_train_opts_check(const oz_train_opts *o, oz_err *err);

#endif
