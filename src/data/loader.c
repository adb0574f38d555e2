/* Dataset loading and batch sampling. See loader.h for the sampling contract. */
#include "data/loader.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/atomic.h"

/* Fixed so random:V validation is the same for every training seed and every run. */
#define RANDOM_VAL_SEED 0x0BADC0FFEE5EEDull

static oz_status open_random(oz_dataset *ds, const char *spec, const char *arg, oz_err *err) {
    char *end;
    errno = 0;
    long long v = strtoll(arg, &end, 10);
    if (errno || end == arg || *end || v < 1 || v > INT32_MAX)
        return oz_fail(err, OZ_ERR_INPUT, "bad dataset '%s': expected random:V with V a vocabulary size in [1, %d]",
                       spec, INT32_MAX);
    ds->kind = OZ_DATA_RANDOM;
    ds->vocab_size = (int)v;
    return OZ_OK;
}

/* Reads a non-negative integer field that must be exactly representable. */
static int meta_uint(const cJSON *meta, const char *key, uint64_t *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(meta, key);
    if (!cJSON_IsNumber(j) || j->valuedouble < 0 || j->valuedouble > 9007199254740992.0 ||
        j->valuedouble != (double)(uint64_t)j->valuedouble)
        return 0;
    *out = (uint64_t)j->valuedouble;
    return 1;
}

static oz_status read_meta(oz_dataset *ds, const char *dir, const char *meta_path, oz_err *err) {
    char *text;
    size_t n;
    struct stat st;
    if (stat(meta_path, &st) != 0)
        return oz_fail(err, OZ_ERR_INPUT, "%s is not a prepared dataset: %s is missing (run `ounce prepare`)", dir,
                       meta_path);
    OZ_TRY(oz_read_file(meta_path, &text, &n, err));
    cJSON *meta = cJSON_ParseWithLength(text, n);
    free(text);
    if (!cJSON_IsObject(meta)) {
        cJSON_Delete(meta);
        return oz_fail(err, OZ_ERR_INPUT, "%s is not valid JSON", meta_path);
    }
    oz_status s = OZ_OK;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(meta, "format");
    const cJSON *tokname = cJSON_GetObjectItemCaseSensitive(meta, "tokenizer");
    uint64_t version = 0, vocab = 0, bos = 0, eos = 0;
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "ounce-tokens") != 0)
        s = oz_fail(err, OZ_ERR_INPUT, "%s: \"format\" is not \"ounce-tokens\"", meta_path);
    else if (!meta_uint(meta, "version", &version) || version != 1)
        s = oz_fail(err, OZ_ERR_INPUT, "%s: unsupported \"version\" (expected 1)", meta_path);
    else if (!meta_uint(meta, "vocab_size", &vocab) || vocab < 1 || vocab > INT32_MAX)
        s = oz_fail(err, OZ_ERR_INPUT, "%s: missing or bad \"vocab_size\"", meta_path);
    else if (!meta_uint(meta, "train_tokens", &ds->train_tokens) || !meta_uint(meta, "val_tokens", &ds->val_tokens))
        s = oz_fail(err, OZ_ERR_INPUT, "%s: missing or bad \"train_tokens\"/\"val_tokens\"", meta_path);
    else if (!cJSON_IsString(tokname))
        s = oz_fail(err, OZ_ERR_INPUT, "%s: missing \"tokenizer\"", meta_path);
    /* An "hf" dataset carries its tokenizer.json (and tokenizer_config.json) beside meta.json. */
    int hf = s == OZ_OK && strcmp(tokname->valuestring, OZ_TOKENIZER_HF_NAME) == 0;
    if (s == OZ_OK && hf) {
        s = oz_tokenizer_load(&ds->tokenizer, dir, err);
        if (s == OZ_OK) ds->has_tokenizer = 1; /* owned from here on: oz_dataset_close frees it */
    } else if (s == OZ_OK) {
        s = oz_tokenizer_from_name(&ds->tokenizer, tokname->valuestring, err);
    }
    if (s == OZ_OK && (uint64_t)ds->tokenizer.vocab_size != vocab)
        s = oz_fail(err, OZ_ERR_INPUT, "%s: vocab_size %llu does not match the %s tokenizer's %d", meta_path,
                    (unsigned long long)vocab, tokname->valuestring, ds->tokenizer.vocab_size);
    if (s == OZ_OK && hf) {
        /* A tokenizer may lack BOS or EOS: those are recorded as -1. */
        const cJSON *jb = cJSON_GetObjectItemCaseSensitive(meta, "bos_token_id");
        const cJSON *je = cJSON_GetObjectItemCaseSensitive(meta, "eos_token_id");
        if (!cJSON_IsNumber(jb) || !cJSON_IsNumber(je) || jb->valuedouble != (double)ds->tokenizer.bos_id ||
            je->valuedouble != (double)ds->tokenizer.eos_id)
            s = oz_fail(err, OZ_ERR_INPUT, "%s: bos/eos token ids do not match %s/tokenizer.json", meta_path, dir);
    } else if (s == OZ_OK && (!meta_uint(meta, "bos_token_id", &bos) || !meta_uint(meta, "eos_token_id", &eos) ||
                              bos != (uint64_t)ds->tokenizer.bos_id || eos != (uint64_t)ds->tokenizer.eos_id)) {
        s = oz_fail(err, OZ_ERR_INPUT, "%s: bos/eos token ids do not match the %s tokenizer", meta_path,
                    tokname->valuestring);
    }
    cJSON_Delete(meta);
    if (s == OZ_OK) {
        ds->vocab_size = (int)vocab;
        ds->has_tokenizer = 1;
    }
    return s;
}

static oz_status check_shard(const oz_dataset *ds, const oz_shard *sh, uint64_t expect, const char *meta_path,
                             oz_err *err) {
    if (sh->vocab_size != (uint32_t)ds->vocab_size)
        return oz_fail(err, OZ_ERR_INPUT, "%s has vocab_size %u but %s says %d", sh->path, sh->vocab_size,
                       meta_path, ds->vocab_size);
    if (sh->n_tokens != expect)
        return oz_fail(err, OZ_ERR_INPUT, "%s has %llu tokens but %s says %llu (re-run `ounce prepare`)", sh->path,
                       (unsigned long long)sh->n_tokens, meta_path, (unsigned long long)expect);
    return OZ_OK;
}

static oz_status open_prepared(oz_dataset *ds, const char *dir, oz_err *err) {
    struct stat st;
    if (stat(dir, &st) != 0)
        return oz_fail(err, OZ_ERR_INPUT, "dataset %s does not exist (expected a directory from `ounce prepare` or random:V)", dir);
    if (!S_ISDIR(st.st_mode))
        return oz_fail(err, OZ_ERR_INPUT, "dataset %s is not a directory (expected one from `ounce prepare` or random:V)", dir);
    char *meta_path = oz_path_join(dir, "meta.json");
    char *train_path = oz_path_join(dir, "train.bin");
    char *val_path = oz_path_join(dir, "val.bin");
    oz_status s = meta_path && train_path && val_path ? OZ_OK : oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    ds->kind = OZ_DATA_PREPARED;
    if (s == OZ_OK) s = read_meta(ds, dir, meta_path, err);
    if (s == OZ_OK) s = oz_shard_open(&ds->train, train_path, err);
    if (s == OZ_OK) s = oz_shard_open(&ds->val, val_path, err);
    if (s == OZ_OK) s = check_shard(ds, &ds->train, ds->train_tokens, meta_path, err);
    if (s == OZ_OK) s = check_shard(ds, &ds->val, ds->val_tokens, meta_path, err);
    free(meta_path);
    free(train_path);
    free(val_path);
    return s;
}

oz_status oz_dataset_open(oz_dataset *ds, const char *spec, uint64_t seed, oz_err *err) {
    memset(ds, 0, sizeof *ds);
    if (!spec || !*spec) return oz_fail(err, OZ_ERR_INPUT, "no dataset given");
    oz_status s = strncmp(spec, "random:", 7) == 0 ? open_random(ds, spec, spec + 7, err) : open_prepared(ds, spec, err);
    if (s != OZ_OK) {
        oz_dataset_close(ds);
        return s;
    }
    oz_rng_seed(&ds->cursor.rng, seed);
    ds->cursor.batches = 0;
    return OZ_OK;
}

void oz_dataset_close(oz_dataset *ds) {
    if (ds->has_tokenizer) oz_tokenizer_free(&ds->tokenizer);
    oz_shard_close(&ds->train);
    oz_shard_close(&ds->val);
    memset(ds, 0, sizeof *ds);
}

int oz_dataset_vocab_size(const oz_dataset *ds) { return ds->vocab_size; }

oz_status oz_dataset_check_window(const oz_dataset *ds, int T, oz_err *err) {
    if (T < 1) return oz_fail(err, OZ_ERR_INPUT, "context length must be at least 1 (got %d)", T);
    if (ds->kind == OZ_DATA_RANDOM) return OZ_OK;
    uint64_t need = (uint64_t)T + 1;
    if (ds->train_tokens < need)
        return oz_fail(err, OZ_ERR_INPUT,
                       "training split %s has %llu tokens, but a context of %d needs at least %llu; "
                       "add text or lower the context length",
                       ds->train.path, (unsigned long long)ds->train_tokens, T, (unsigned long long)need);
    if (ds->val_tokens > 0 && ds->val_tokens < need)
        return oz_fail(err, OZ_ERR_INPUT,
                       "validation split %s has %llu tokens, but a context of %d needs at least %llu; "
                       "prepare with more text or a larger val fraction, or lower the context length",
                       ds->val.path, (unsigned long long)ds->val_tokens, T, (unsigned long long)need);
    return OZ_OK;
}

static void random_row(oz_rng *rng, uint64_t V, int T, int32_t *in, int32_t *tg) {
    int32_t prev = (int32_t)oz_rng_below(rng, V);
    for (int t = 0; t < T; t++) {
        int32_t next = (int32_t)oz_rng_below(rng, V);
        in[t] = prev;
        tg[t] = next;
        prev = next;
    }
}

oz_status oz_dataset_next_batch(oz_dataset *ds, int B, int T, int32_t *inputs, int32_t *targets) {
    if (B < 1 || T < 1) return OZ_ERR_INPUT;
    if (ds->kind == OZ_DATA_PREPARED && ds->train_tokens < (uint64_t)T + 1) return OZ_ERR_INPUT;
    for (int b = 0; b < B; b++) {
        int32_t *in = inputs + (size_t)b * T, *tg = targets + (size_t)b * T;
        if (ds->kind == OZ_DATA_RANDOM) {
            random_row(&ds->cursor.rng, (uint64_t)ds->vocab_size, T, in, tg);
        } else {
            uint64_t pos = oz_rng_below(&ds->cursor.rng, ds->train_tokens - (uint64_t)T);
            oz_shard_read(&ds->train, pos, (size_t)T, in);
            oz_shard_read(&ds->train, pos + 1, (size_t)T, tg);
        }
    }
    ds->cursor.batches++;
    return OZ_OK;
}

void oz_dataset_get_cursor(const oz_dataset *ds, oz_data_cursor *cursor) { *cursor = ds->cursor; }
void oz_dataset_set_cursor(oz_dataset *ds, const oz_data_cursor *cursor) { ds->cursor = *cursor; }

int oz_dataset_val_windows(const oz_dataset *ds, int T) {
    if (T < 1) return 0;
    if (ds->kind == OZ_DATA_RANDOM) return OZ_RANDOM_VAL_WINDOWS;
    if (ds->val_tokens < (uint64_t)T + 1) return 0;
    uint64_t w = (ds->val_tokens - 1) / (uint64_t)T;
    return w > INT_MAX ? INT_MAX : (int)w;
}

int oz_dataset_val_batch(const oz_dataset *ds, int first_window, int B, int T, int32_t *inputs,
                         int32_t *targets) {
    int windows = oz_dataset_val_windows(ds, T);
    if (B < 1 || first_window < 0 || first_window >= windows) return 0;
    int rows = windows - first_window < B ? windows - first_window : B;
    for (int r = 0; r < rows; r++) {
        int32_t *in = inputs + (size_t)r * T, *tg = targets + (size_t)r * T;
        uint64_t w = (uint64_t)first_window + (uint64_t)r;
        if (ds->kind == OZ_DATA_RANDOM) {
            /* Each window has its own stream, so any subset of windows can be generated alone. */
            oz_rng rng;
            oz_rng_seed(&rng, RANDOM_VAL_SEED + w);
            random_row(&rng, (uint64_t)ds->vocab_size, T, in, tg);
        } else {
            oz_shard_read(&ds->val, w * (uint64_t)T, (size_t)T, in);
            oz_shard_read(&ds->val, w * (uint64_t)T + 1, (size_t)T, tg);
        }
    }
    return rows;
}
