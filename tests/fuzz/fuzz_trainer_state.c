/* trainer_state.json as --resume reads it (train/run_dir.c: oz_train_state_parse; train/options.c;
 * train/inrank.c for the "inrank" object): the input is the file's text. An accepted state must
 * hold options that pass their checks and configure a run, a step in [1, steps], a cursor that is
 * not all zero, and options and InRank ranks that come back unchanged through their writers. */
#include "fuzz.h"

#include <cjson/cJSON.h>

#include "model/llama.h"
#include "train/inrank.h"
#include "train/options.h"
#include "train/run_dir.h"
#include "train/trainer.h"

static char *print(const oz_train_opts *o) {
    cJSON *j = oz_train_opts_to_json(o);
    char *s = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (!s) abort();
    return s;
}

/* The "inrank" object against a preset's config factorized as the options say. */
static void check_inrank(const oz_train_opts *o, const char *text, size_t len) {
    oz_inrank_settings set;
    oz_err err = {0};
    /* The InRank flags are checked here, when the run is set up, not by oz_train_opts_check. */
    oz_status s = oz_inrank_settings_from_opts(o, &set, &err);
    OZ_FUZZ_CHECK(s == OZ_OK || (s == OZ_ERR_INPUT && o->inrank), "InRank settings: %d %s", (int)s, err.msg);
    if (s != OZ_OK || !o->inrank) return;
    oz_llama_config cfg;
    if (!oz_llama_preset(o->model, &cfg)) oz_llama_preset("tiny", &cfg);
    oz_inrank_factorize_config(&cfg, &set);
    cJSON *root = cJSON_ParseWithLength(text, len);
    oz_inrank_run run;
    memset(&run, 0, sizeof run);
    s = oz_inrank_state_from_json(&run, cJSON_GetObjectItemCaseSensitive(root, "inrank"), &cfg, "state", &err);
    cJSON_Delete(root);
    if (s != OZ_OK) {
        OZ_FUZZ_CHECK(s == OZ_ERR_INPUT && !strchr(err.msg, '\n'), "%d %s", (int)s, err.msg);
        return;
    }
    cJSON *j = oz_inrank_state_to_json(&run, &cfg);
    oz_inrank_run back;
    memset(&back, 0, sizeof back);
    s = oz_inrank_state_from_json(&back, j, &cfg, "state", &err);
    cJSON_Delete(j);
    OZ_FUZZ_CHECK(s == OZ_OK, "the InRank state ounce writes does not read back: %s", err.msg);
    OZ_FUZZ_CHECK(back.stage == run.stage && back.froze_at == run.froze_at && !memcmp(back.k, run.k, sizeof run.k),
                  "the InRank state changed in a round trip");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    oz_train_opts o;
    oz_train_opts_default(&o);
    oz_train_position pos;
    memset(&pos, 0, sizeof pos);
    oz_err err = {0};
    oz_status s = oz_train_state_parse((const char *)data, size, "trainer_state.json", &o, &pos, &err);
    if (s != OZ_OK) {
        OZ_FUZZ_CHECK(s == OZ_ERR_INPUT && err.msg[0], "a bad state must be OZ_ERR_INPUT with a message (got %d: %s)",
                      (int)s, err.msg);
        OZ_FUZZ_CHECK(!strchr(err.msg, '\n'), "the message is one line: %s", err.msg);
        oz_fuzz_note("state", err.msg);
        return 0;
    }
    OZ_FUZZ_CHECK(pos.step >= 1 && pos.step <= o.steps, "step %d of %d", pos.step, o.steps);
    OZ_FUZZ_CHECK(pos.cursor.rng.s[0] | pos.cursor.rng.s[1] | pos.cursor.rng.s[2] | pos.cursor.rng.s[3],
                  "all-zero RNG state accepted");
    OZ_FUZZ_CHECK(pos.tokens_seen == pos.tokens_seen, "tokens_seen is NaN");
    oz_err cerr = {0};
    OZ_FUZZ_CHECK(oz_train_opts_check(&o, &cerr) == OZ_OK, "accepted options fail their check: %s", cerr.msg);

    /* The options as written into the next checkpoint read back to the same options. */
    char *a = print(&o);
    cJSON *j = cJSON_Parse(a);
    oz_train_opts o2;
    oz_train_opts_default(&o2);
    s = oz_train_opts_from_json(j, "again", &o2, &err);
    cJSON_Delete(j);
    OZ_FUZZ_CHECK(s == OZ_OK, "the options ounce writes do not read back: %s", err.msg);
    char *b = print(&o2);
    OZ_FUZZ_CHECK(!strcmp(a, b), "options changed in a round trip:\n%s\n%s", a, b);
    free(a);
    free(b);

    /* What a run with them builds, against a small preset (the planner's arithmetic). */
    oz_llama_config cfg;
    if (oz_llama_preset(o.model, &cfg) || oz_llama_preset("tiny", &cfg)) {
        oz_llama_shape shape;
        oz_optim_config oc;
        s = oz_train_configure(&o, &cfg, &shape, &oc, &err);
        OZ_FUZZ_CHECK(s == OZ_OK || s == OZ_ERR_INPUT, "configure: %d %s", (int)s, err.msg);
    }
    check_inrank(&o, (const char *)data, size);
    return 0;
}
