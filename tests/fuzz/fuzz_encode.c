/* Encoding arbitrary text (data/bpe.c, data/tokenizer.c) with each fixture tokenizer
 * (tests/fixtures/tokenizers/: gpt2, gpt2-prefix, llama2, llama2-metaspace, llama3, ounce) and the
 * byte tokenizer, loaded once. The first input byte chooses:
 *
 *     bits 0-2  the tokenizer (0-5 the fixtures in that order, 6-7 the byte tokenizer)
 *     bits 3-4  threads: 1, 2, 3 or 4
 *     bit  5    add_special (the post-processor's template)
 *     bit  6    tile: the rest of the input is repeated past the parallel encoder's threshold
 *               (4 x 64 KiB, data/bpe.c's PARALLEL_UNIT), plus up to 64 KiB more (bytes 1-2),
 *               so the chunked, multi-threaded path runs on it
 *
 * and the rest is the text. Every id must lie in the vocabulary and decode; more than one thread
 * must give the ids one thread gives; llama3, ounce and byte must decode back to the exact bytes. */
#include "fuzz.h"

#include "data/tokenizer.h"

#ifndef OZ_FUZZ_FIXTURES
#define OZ_FUZZ_FIXTURES "tests/fixtures"
#endif

#define PARALLEL_THRESHOLD ((size_t)4 << 16)

static const char *const fixture_names[] = {"gpt2", "gpt2-prefix", "llama2", "llama2-metaspace", "llama3", "ounce"};
#define N_FIXTURES 6
/* Byte-level without normalizer and without lstrip/rstrip tokens (gpt2's <|mask|> swallows the
 * space before it): decoding gives back the exact bytes. */
static const int exact_round_trip[N_FIXTURES + 1] = {0, 0, 0, 0, 1, 1, 1};

static oz_tokenizer toks[N_FIXTURES + 1];
static char *tiled;
static size_t tiled_cap;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *root = getenv("OZ_FUZZ_FIXTURES");
    if (!root || !*root) root = OZ_FUZZ_FIXTURES;
    for (int i = 0; i < N_FIXTURES; i++) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/tokenizers/%s", root, fixture_names[i]);
        oz_err err = {0};
        if (oz_tokenizer_load(&toks[i], dir, &err) != OZ_OK) {
            fprintf(stderr, "fuzz_encode: cannot load the fixture tokenizer %s: %s (set OZ_FUZZ_FIXTURES)\n", dir,
                    err.msg);
            exit(1);
        }
    }
    oz_tokenizer_byte(&toks[N_FIXTURES]);
    return 0;
}

static void encode(oz_tokenizer *t, int threads, int special, const char *text, size_t len, oz_tokens *out) {
    oz_err err = {0};
    t->threads = threads;
    oz_status s = special ? oz_tokenizer_encode_special(t, text, len, out, &err)
                          : oz_tokenizer_encode(t, text, len, out, &err);
    OZ_FUZZ_CHECK(s == OZ_OK, "encoding %zu bytes with %d threads: %s", len, threads, err.msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    unsigned mode = data[0];
    int which = (int)(mode & 7);
    if (which > N_FIXTURES) which = N_FIXTURES;
    int threads = 1 + (int)((mode >> 3) & 3);
    int special = (mode >> 5) & 1;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    if ((mode & 0x40) && len > 0) {
        size_t extra = size >= 3 ? ((size_t)data[1] | (size_t)data[2] << 8) : 0;
        size_t want = PARALLEL_THRESHOLD + extra;
        if (tiled_cap < want) {
            free(tiled);
            tiled = malloc(want);
            if (!tiled) abort();
            tiled_cap = want;
        }
        for (size_t i = 0; i < want; i += len) memcpy(tiled + i, text, want - i < len ? want - i : len);
        text = tiled;
        len = want;
    }
    oz_tokenizer *t = &toks[which];
    oz_tokens ids = {0};
    encode(t, threads, special, text, len, &ids);
    for (size_t i = 0; i < ids.len; i++)
        OZ_FUZZ_CHECK(ids.ids[i] >= 0 && ids.ids[i] < t->vocab_size, "id %d outside the %d-token vocabulary",
                      (int)ids.ids[i], t->vocab_size);
    if (threads > 1) {
        oz_tokens one = {0};
        encode(t, 1, special, text, len, &one);
        OZ_FUZZ_CHECK(one.len == ids.len && (ids.len == 0 || !memcmp(one.ids, ids.ids, ids.len * sizeof *ids.ids)),
                      "%s: %d threads give other ids than 1 (%zu vs %zu ids)",
                      which < N_FIXTURES ? fixture_names[which] : "byte", threads, ids.len, one.len);
        oz_tokens_free(&one);
    }
    oz_text back = {0};
    oz_err err = {0};
    OZ_FUZZ_CHECK(oz_tokenizer_decode(t, ids.ids, ids.len, 1, &back, &err) == OZ_OK, "decode: %s", err.msg);
    if (exact_round_trip[which] && !special)
        OZ_FUZZ_CHECK(back.len == len && (len == 0 || !memcmp(back.data, text, len)),
                      "%s: decode(encode(x)) != x (%zu bytes back of %zu)",
                      which < N_FIXTURES ? fixture_names[which] : "byte", back.len, len);
    oz_text_free(&back);
    oz_tokens_free(&ids);
    return 0;
}
