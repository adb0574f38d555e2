/* Inside train/: a run directory's bookkeeping. trainer_state.json (the step, every setting, the
 * data cursor, InRank's state), the JSON-lines logs a resumed run continues, and the checkpoint
 * directories' life: pruning old ones, sweeping what a killed run left. */
#ifndef OZ_TRAIN_RUN_DIR_H
#define OZ_TRAIN_RUN_DIR_H
#include <cjson/cJSON.h>

#include "data/loader.h"
#include "train/options.h"
#include "util/err.h"

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

/* trainer_state.json, atomically; inrank (may be NULL) is added under "inrank" and consumed. */
oz_status oz_run_state_write(const char *path, const oz_train_opts *o, const oz_train_position *pos,
                             const char *tokenizer, cJSON *inrank, oz_err *err);
/* Reads the file and parses it (oz_train_state_parse). */
oz_status oz_run_state_read(const char *path, oz_train_opts *o, oz_train_position *pos, oz_err *err);
/* Removes what a killed run left under out (hidden .step-* entries, step-N.old.* asides); call
 * holding out's lock. */
oz_status oz_run_dir_sweep(const char *out, oz_err *err);
/* Cuts a JSON-lines log ({"step":N,...} lines) after its last line of step <= step, atomically; a
 * missing log is fine. */
oz_status oz_run_log_truncate(const char *path, int step, oz_err *err);
/* Keeps the newest `keep` step-N directories of out (0: all), each older one renamed aside before
 * it is deleted. */
oz_status oz_run_prune(const char *out, int keep, oz_err *err);

#endif
