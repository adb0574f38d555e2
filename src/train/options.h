/* Inside train/: training options in trainer_state.json, and their validation. */
#ifndef OZ_TRAIN_OPTIONS_H
#define OZ_TRAIN_OPTIONS_H
#include <cjson/cJSON.h>

#include "train/trainer.h"

/* The options as the "options" object of trainer_state.json, and back (settings absent in states
 * older than them get what those runs trained with; a missing required one is OZ_ERR_INPUT). */
cJSON *oz_train_opts_to_json(const oz_train_opts *o);
oz_status oz_train_opts_from_json(const cJSON *j, const char *path, oz_train_opts *o, oz_err *err);
/* Every setting in its flag's range (one line naming the flag). */
oz_status oz_train_opts_check(const oz_train_opts *o, oz_err *err);

#endif
