/* A run directory's files other than the model: trainer_state.json, the logs resumed runs cut
 * back, the leftovers a killed run leaves, and pruning old checkpoints (train/run_dir.h). */
#include "train/run_dir.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/atomic.h"
#include "io/json.h"

oz_status oz_run_state_write(const char *path, const oz_train_opts *o, const oz_train_position *pos,
                             const char *tokenizer, cJSON *inrank, oz_err *err) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "format", "ounce-trainer-state");
    cJSON_AddNumberToObject(root, "version", 1);
    cJSON_AddNumberToObject(root, "step", pos->step);
    cJSON_AddNumberToObject(root, "tokens_seen", pos->tokens_seen);
    cJSON_AddStringToObject(root, "tokenizer", tokenizer);
    cJSON_AddItemToObject(root, "options", oz_train_opts_to_json(o));
    if (inrank) cJSON_AddItemToObject(root, "inrank", inrank);
    cJSON *cur = cJSON_AddObjectToObject(root, "data_cursor");
    char buf[32];
    cJSON *rng = cJSON_AddArrayToObject(cur, "rng");
    for (int i = 0; i < 4; i++) {
        snprintf(buf, sizeof buf, "%" PRIu64, pos->cursor.rng.s[i]);
        cJSON_AddItemToArray(rng, cJSON_CreateString(buf));
    }
    snprintf(buf, sizeof buf, "%" PRIu64, (uint64_t)pos->cursor.batches);
    cJSON_AddStringToObject(cur, "batches", buf);
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return oz_fail(err, OZ_ERR_NOMEM, "out of memory writing %s", path);
    oz_status st = oz_atomic_write(path, text, strlen(text), err);
    free(text);
    return st;
}

/* A decimal uint64 and nothing else (strtoull alone takes "-1", " 7" and "12abc"). */
static bool parse_u64(const char *s, uint64_t *out) {
    if (!s || *s < '0' || *s > '9') return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end != '\0') return false;
    *out = (uint64_t)v;
    return true;
}

oz_status oz_train_state_parse(const char *text, size_t len, const char *path, oz_train_opts *o,
                               oz_train_position *pos, oz_err *err) {
    cJSON *root = cJSON_ParseWithLength(text, len);
    oz_status st = OZ_OK;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    if (!root || !cJSON_IsString(fmt) || strcmp(fmt->valuestring, "ounce-trainer-state") != 0) {
        st = oz_fail(err, OZ_ERR_INPUT, "%s: not an ounce trainer state file", path);
        goto done;
    }
    const cJSON *step = cJSON_GetObjectItemCaseSensitive(root, "step");
    const cJSON *seen = cJSON_GetObjectItemCaseSensitive(root, "tokens_seen");
    const cJSON *cur = cJSON_GetObjectItemCaseSensitive(root, "data_cursor");
    const cJSON *rng = cJSON_GetObjectItemCaseSensitive(cur, "rng");
    const cJSON *batches = cJSON_GetObjectItemCaseSensitive(cur, "batches");
    if (!cJSON_IsNumber(step) || !cJSON_IsArray(rng) ||
        cJSON_GetArraySize(rng) != 4 || !cJSON_IsString(batches)) {
        st = oz_fail(err, OZ_ERR_INPUT, "%s: trainer state is incomplete", path);
        goto done;
    }
    st = oz_train_opts_from_json(cJSON_GetObjectItemCaseSensitive(root, "options"), path, o, err);
    if (st == OZ_OK) st = oz_train_opts_check(o, err);
    if (st != OZ_OK) goto done;
    /* A step outside the run would train with a negative or absurd schedule position. */
    if (!oz_json_int_in(step, 1, o->steps, &pos->step)) {
        st = oz_fail(err, OZ_ERR_INPUT, "%s: \"step\" must be an integer in [1, %d] (the run's steps)", path, o->steps);
        goto done;
    }
    pos->tokens_seen = cJSON_IsNumber(seen) && isfinite(seen->valuedouble) ? seen->valuedouble : 0;
    /* The data cursor: the sampler's xoshiro256** state (never all zero: that state only repeats
     * zeros) and the batches drawn, each a decimal uint64 string. */
    bool cursor_ok = parse_u64(batches->valuestring, &pos->cursor.batches);
    uint64_t any = 0;
    for (int i = 0; cursor_ok && i < 4; i++) {
        const cJSON *w = cJSON_GetArrayItem(rng, i);
        cursor_ok = cJSON_IsString(w) && parse_u64(w->valuestring, &pos->cursor.rng.s[i]);
        any |= cursor_ok ? pos->cursor.rng.s[i] : 0;
    }
    if (!cursor_ok || any == 0) st = oz_fail(err, OZ_ERR_INPUT, "%s: the data cursor is malformed", path);
done:
    cJSON_Delete(root);
    return st;
}

oz_status oz_run_state_read(const char *path, oz_train_opts *o, oz_train_position *pos, oz_err *err) {
    char *text;
    size_t n;
    OZ_TRY(oz_read_file(path, &text, &n, err));
    oz_status st = oz_train_state_parse(text, n, path, o, pos, err);
    free(text);
    return st;
}

static int step_dir_number(const char *name) {
    if (strncmp(name, "step-", 5) != 0) return -1;
    char *end;
    long n = strtol(name + 5, &end, 10);
    return (*end == '\0' && n >= 0 && n < 1000000000) ? (int)n : -1;
}

/* What this run writes under OUT before it is complete, or removes after it was: a hidden name
 * with the run's pid (.step-N.tmp.PID being written, .step-N.pruned.PID being deleted), or the
 * aside name oz_replace_dir gives an old directory (step-N.old.XXXXXX). A run that holds OUT's lock
 * removes what a killed one left (oz_run_dir_sweep). */
static bool is_leftover(const char *name) {
    return strncmp(name, ".step-", 6) == 0 || (strncmp(name, "step-", 5) == 0 && strstr(name, ".old."));
}

oz_status oz_run_dir_sweep(const char *out, oz_err *err) {
    DIR *d = opendir(out);
    if (!d) return OZ_OK;
    oz_status st = OZ_OK;
    struct dirent *e;
    while (st == OZ_OK && (e = readdir(d))) {
        if (!is_leftover(e->d_name)) continue;
        char path[OZ_PATH_MAX + 300];
        snprintf(path, sizeof path, "%s/%s", out, e->d_name);
        st = oz_remove_tree(path, err);
    }
    closedir(d);
    return st;
}

/* A JSON-lines log ({"step":N,...} per line) cut after the last line of step <= step, in place
 * and atomically: a resumed run's log then continues where its checkpoint was, without the steps
 * the interrupted run logged after it. A missing log is fine. */
oz_status oz_run_log_truncate(const char *path, int step, oz_err *err) {
    if (access(path, F_OK) != 0) return OZ_OK;
    char *text;
    size_t n;
    OZ_TRY(oz_read_file(path, &text, &n, err));
    size_t keep = 0;
    for (size_t at = 0; at < n;) {
        char *nl = memchr(text + at, '\n', n - at);
        size_t end = nl ? (size_t)(nl - text) + 1 : n;
        int s;
        if (sscanf(text + at, "{\"step\":%d", &s) == 1 && s > step) break;
        keep = at = end;
    }
    oz_status st = keep == n ? OZ_OK : oz_atomic_write(path, text, keep, err);
    free(text);
    return st;
}

/* Removes the oldest step-N directories so that at most `keep` remain: each is renamed aside
 * first, so a kill mid-delete leaves a hidden name (swept by the next run), never a half step-N. */
oz_status oz_run_prune(const char *out, int keep, oz_err *err) {
    if (keep <= 0) return OZ_OK;
    DIR *d = opendir(out);
    if (!d) return OZ_OK;
    int steps[4096], n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 4096) {
        int s = step_dir_number(e->d_name);
        if (s >= 0) steps[n++] = s;
    }
    closedir(d);
    while (n > keep) {
        int oldest = 0;
        for (int i = 1; i < n; i++)
            if (steps[i] < steps[oldest]) oldest = i;
        char path[OZ_PATH_MAX + 32], aside[OZ_PATH_MAX + 64];
        snprintf(path, sizeof path, "%s/step-%d", out, steps[oldest]);
        snprintf(aside, sizeof aside, "%s/.step-%d.pruned.%ld", out, steps[oldest], (long)getpid());
        if (rename(path, aside) != 0)
            return oz_fail(err, OZ_ERR_IO, "cannot move %s aside to delete it: %s", path, strerror(errno));
        OZ_TRY(oz_remove_tree(aside, err));
        steps[oldest] = steps[--n];
    }
    return OZ_OK;
}
