/* The training loop as a library call: data, model, optimizer, schedule, clipping, evaluation,
 * checkpoints and resume. It prints nothing; progress reaches the caller through callbacks. */
#ifndef OZ_TRAINER_H
#define OZ_TRAINER_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "mem/arena.h"
#include "train/options.h"
#include "util/err.h"

typedef struct {
    int step, total_steps;        /* step = number of completed updates */
    double loss;                  /* mean training loss of this step */
    double lr, grad_norm;
    double tokens_per_s;          /* over the steps run in this process */
    double elapsed_s, eta_s;
    const size_t *peak_bytes;     /* OZ_MEM_NCATEGORIES entries */
    size_t peak_total;
} oz_train_progress;

typedef struct {
    void (*on_start)(void *user, const char *summary);   /* a line describing the run */
    void (*on_step)(void *user, const oz_train_progress *p);
    void (*on_eval)(void *user, int step, double val_loss, long tokens);
    void (*on_save)(void *user, int step, const char *dir);
    void *user;
    void (*on_note)(void *user, const char *line);       /* an event worth a line (InRank's freeze) */
} oz_train_callbacks;

typedef struct {
    int steps;                    /* completed updates */
    double train_loss, val_loss;  /* last step's loss; last validation loss (NAN if none) */
    double tokens_per_s;
    size_t peak_bytes[OZ_MEM_NCATEGORIES];
    size_t peak_total;
    size_t host_bytes;            /* host memory outside the arena: offloaded checkpoints */
    long long params;
    long long trainable;          /* parameters not frozen */
    int skipped_steps;            /* --on-nonfinite skip: steps not applied in this process */
} oz_train_result;

/* Runs training from opts, or (when resume_dir is non-NULL) continues the run saved in resume_dir
 * (a step-N checkpoint) with its saved settings, to its planned end. */
oz_status oz_train(const oz_train_opts *opts, const char *resume_dir, const oz_train_callbacks *cb,
                   oz_train_result *result, oz_err *err);

#endif
