/* The training loop as a library call: data, model, optimizer, schedule, clipping, evaluation,
 * checkpoints and resume. It prints nothing; progress reaches the caller through callbacks. */
#ifndef OZ_TRAINER_H
#define OZ_TRAINER_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "data/loader.h"
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

/* Where a saved run stands (trainer_state.json): completed updates, the data cursor, tokens seen. */
typedef struct {
    int step;
    oz_data_cursor cursor;
    double tokens_seen;
} oz_train_position;

/* Parses the text of a trainer_state.json (`path` names it in messages), as --resume reads it:
 * the run's options, each in its flag's range; "step" an integer in [1, steps]; the data cursor
 * (four decimal uint64 RNG words, not all zero, and the batches drawn). Anything else is
 * OZ_ERR_INPUT with one line. */
oz_status oz_train_state_parse(const char *text, size_t len, const char *path, oz_train_opts *o,
                               oz_train_position *pos, oz_err *err);

#endif
