/* Inside train/: a run directory's bookkeeping. trainer_state.json (the step, every setting, the
 * data cursor, InRank's state), the JSON-lines logs a resumed run continues, and the checkpoint
 * directories' life: pruning old ones, sweeping what a killed run left. */
#ifndef OZ_TRAIN_RUN_DIR_H
#define OZ_TRAIN_RUN_DIR_H
#include <cjson/cJSON.h>

#include "data/loader.h"
#include "train/options.h"
#include "util/err.h"

/* Where a run is: completed updates, the data cursor, tokens trained on. */
typedef struct {
    int step;
    oz_data_cursor cursor;
    double tokens_seen;
} oz_run_position;

/* trainer_state.json, atomically; inrank (may be NULL) is added under "inrank" and consumed. */
oz_status oz_run_state_write(const char *path, const oz_train_opts *o, const oz_run_position *pos,
                             const char *tokenizer, cJSON *inrank, oz_err *err);
/* Reads and validates one (every setting in its flag's range, step in [1, steps], a well-formed
 * cursor); OZ_ERR_INPUT with one line naming the file and field. */
oz_status oz_run_state_read(const char *path, oz_train_opts *o, oz_run_position *pos, oz_err *err);
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
