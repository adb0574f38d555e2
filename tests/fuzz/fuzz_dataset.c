/* Token shards and prepared datasets (data/shard.c, data/loader.c): the input is a dataset
 * directory's files and the sampling parameters, cut at OZ_FUZZ_SEP:
 *
 *     meta.json | train.bin | val.bin | tokenizer.json | tokenizer_config.json | "B T"
 *
 * (an empty part is an absent file; B and T default to 2 and 4, and are clipped to 8 and 1024).
 * Each shard on its own must open cleanly or be OZ_ERR_INPUT, and every token of one that opens
 * lies in its vocabulary. A dataset that opens must pass or refuse the window check, draw batches
 * of in-vocabulary ids, draw the same batch again after its cursor is restored, and fill its
 * validation windows. A meta.json starting with "random:" is taken as the spec random:V. */
#include "fuzz.h"

#include "data/loader.h"
#include "data/shard.h"

static const char *const names[] = {"meta.json",      "train.bin",   "val.bin", "tokenizer.json",
                                    "tokenizer_config.json", NULL};
#define N_FILES 5

static void check_error(oz_status s, const oz_err *err) {
    OZ_FUZZ_CHECK(s == OZ_ERR_INPUT && err->msg[0], "bad data must be OZ_ERR_INPUT with a message (got %d: %s)", (int)s,
                  err->msg);
    OZ_FUZZ_CHECK(!strchr(err->msg, '\n'), "the message is one line: %s", err->msg);
    oz_fuzz_note("data", err->msg);
}

static void check_shard(const char *name) {
    oz_shard sh;
    oz_err err = {0};
    oz_status s = oz_shard_open(&sh, oz_fuzz_path(name, 2), &err);
    if (s != OZ_OK) {
        check_error(s, &err);
        return;
    }
    OZ_FUZZ_CHECK(sh.token_bytes == oz_shard_token_bytes(sh.vocab_size), "width %u for vocab %u", sh.token_bytes,
                  sh.vocab_size);
    OZ_FUZZ_CHECK(OZ_SHARD_HEADER_BYTES + sh.n_tokens * sh.token_bytes == sh.map_len, "size");
    int32_t buf[256];
    for (uint64_t i = 0; i < sh.n_tokens; i += 256) {
        size_t k = sh.n_tokens - i < 256 ? (size_t)(sh.n_tokens - i) : 256;
        oz_shard_read(&sh, i, k, buf);
        for (size_t j = 0; j < k; j++)
            OZ_FUZZ_CHECK(buf[j] >= 0 && (uint32_t)buf[j] < sh.vocab_size && (uint32_t)buf[j] == oz_shard_token(&sh, i + j),
                          "token %llu = %d, vocab %u", (unsigned long long)(i + j), (int)buf[j], sh.vocab_size);
    }
    oz_shard_close(&sh);
}

static void check_rows(const oz_dataset *ds, const int32_t *ids, size_t n) {
    for (size_t i = 0; i < n; i++)
        OZ_FUZZ_CHECK(ids[i] >= 0 && ids[i] < ds->vocab_size, "id %d outside vocab %d", (int)ids[i], ds->vocab_size);
}

static void sample(oz_dataset *ds, int B, int T) {
    oz_err err = {0};
    oz_status s = oz_dataset_check_window(ds, T, &err);
    if (s != OZ_OK) {
        check_error(s, &err);
        return;
    }
    size_t n = (size_t)B * (size_t)T;
    int32_t *in = malloc(n * sizeof *in), *tg = malloc(n * sizeof *tg), *in2 = malloc(n * sizeof *in2),
            *tg2 = malloc(n * sizeof *tg2);
    if (!in || !tg || !in2 || !tg2) abort();
    oz_data_cursor c;
    for (int k = 0; k < 2; k++) {
        oz_dataset_get_cursor(ds, &c);
        OZ_FUZZ_CHECK(oz_dataset_next_batch(ds, B, T, in, tg) == OZ_OK, "next_batch after a passing window check");
        check_rows(ds, in, n);
        check_rows(ds, tg, n);
        /* Targets are the inputs shifted by one, within each row. */
        for (int b = 0; b < B; b++)
            OZ_FUZZ_CHECK(T < 2 || !memcmp(in + (size_t)b * T + 1, tg + (size_t)b * T, (size_t)(T - 1) * sizeof *in),
                          "targets are not the inputs shifted");
        oz_dataset_set_cursor(ds, &c);
        OZ_FUZZ_CHECK(oz_dataset_next_batch(ds, B, T, in2, tg2) == OZ_OK, "next_batch again");
        OZ_FUZZ_CHECK(!memcmp(in, in2, n * sizeof *in) && !memcmp(tg, tg2, n * sizeof *tg),
                      "a restored cursor draws another batch");
    }
    int windows = oz_dataset_val_windows(ds, T);
    OZ_FUZZ_CHECK(windows >= 0, "val windows %d", windows);
    for (int w = 0; w < windows && w < 64; w += B) {
        int rows = oz_dataset_val_batch(ds, w, B, T, in, tg);
        OZ_FUZZ_CHECK(rows >= 1 && rows <= B, "val batch at %d: %d rows", w, rows);
        check_rows(ds, in, (size_t)rows * T);
        check_rows(ds, tg, (size_t)rows * T);
    }
    OZ_FUZZ_CHECK(oz_dataset_val_batch(ds, windows, B, T, in, tg) == 0, "a window past the end");
    free(in);
    free(tg);
    free(in2);
    free(tg2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *dir = oz_fuzz_dir(names);
    oz_fuzz_part parts[N_FILES + 1];
    int n = oz_fuzz_split(data, size, parts, N_FILES + 1);
    int B = 2, T = 4;
    if (n > N_FILES) {
        char *p = oz_fuzz_strdup(&parts[N_FILES]);
        if (sscanf(p, "%d %d", &B, &T) < 1) B = 2;
        free(p);
        if (B < 1 || B > 8) B = 1 + (unsigned)B % 8;
        if (T < 1 || T > 1024) T = 1 + (unsigned)T % 1024;
    }
    oz_dataset ds;
    oz_err err = {0};
    if (n >= 1 && parts[0].n > 7 && !memcmp(parts[0].p, "random:", 7)) {
        char *spec = oz_fuzz_strdup(&parts[0]);
        oz_status s = oz_dataset_open(&ds, spec, 1, &err);
        free(spec);
        if (s != OZ_OK) {
            check_error(s, &err);
            return 0;
        }
        sample(&ds, B, T);
        oz_dataset_close(&ds);
        return 0;
    }
    for (int i = 0; i < N_FILES; i++) {
        if (i < n && parts[i].n) oz_fuzz_write(names[i], parts[i].p, parts[i].n, 0);
        else oz_fuzz_remove(names[i]);
    }
    check_shard("train.bin");
    check_shard("val.bin");
    oz_status s = oz_dataset_open(&ds, dir, (uint64_t)size, &err);
    if (s != OZ_OK) {
        check_error(s, &err);
        return 0;
    }
    OZ_FUZZ_CHECK(ds.vocab_size >= 1 && ds.has_tokenizer && ds.tokenizer.vocab_size == ds.vocab_size,
                  "vocab %d, tokenizer's %d", ds.vocab_size, ds.tokenizer.vocab_size);
    sample(&ds, B, T);
    oz_dataset_close(&ds);
    return 0;
}
