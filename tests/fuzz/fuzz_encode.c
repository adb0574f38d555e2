/* Encoding arbitrary text (data/bpe.c, data/tokenizer.c) with each fixture tokenizer
 * (tests/fixtures/tokenizers/: gpt2, gpt2-prefix, llama2, llama2-metaspace, llama3, ounce) and the
 * byte tokenizer, loaded once. The first input byte chooses:
 *
 *     bits 0-2  the tokenizer (0-5 the fixtures in that order, 6-7 the byte tokenizer)
 *     bits 3-4  threads: 1, 2, 3 or 4
 *     bit  5    add_special (the post-processor's template)
 *     bit  6    tile: bytes 1-4 are D0 D1 D2 E and the rest is PATTERN [OZ_FUZZ_SEP TAIL]; the
 *               text is documents, each PATTERN repeated to 1 + (D0 + 2^8 D1 + 2^16 D2) mod 2^20
 *               bytes then TAIL,
 *               until it is 4 x 64 KiB (the parallel encoder's threshold, data/bpe.c's
 *               PARALLEL_UNIT) + 4 KiB x E long (up to 1.25 MiB). The chunked, multi-threaded
 *               path runs on it: the pattern's newlines say where it may cut a document, the
 *               tail's added tokens end each one (the structure of the unit-array overflow
 *               fixed in 5e3f0c2: 229,730-byte documents cut every 32 KiB + 1)
 *
 * and otherwise the rest is the text. Every id must lie in the vocabulary and decode; more than one thread
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
    if ((mode & 0x40) && size > 5) {
        size_t doc = 1 + (((size_t)data[1] | (size_t)data[2] << 8 | (size_t)data[3] << 16) & 0xFFFFF);
        size_t total = PARALLEL_THRESHOLD + 4096 * (size_t)data[4];
        oz_fuzz_part parts[2];
        int n = oz_fuzz_split(data + 5, size - 5, parts, 2);
        const oz_fuzz_part *pat = &parts[0], *tail = n > 1 ? &parts[1] : NULL;
        size_t tn = tail ? tail->n : 0;
        if (pat->n == 0) return 0;
        size_t cap = total + doc + tn;
        if (tiled_cap < cap) {
            free(tiled);
            tiled = malloc(cap);
            if (!tiled) abort();
            tiled_cap = cap;
        }
        len = 0;
        while (len < total) {
            for (size_t i = 0; i < doc; i += pat->n) memcpy(tiled + len + i, pat->p, doc - i < pat->n ? doc - i : pat->n);
            len += doc;
            if (tn) memcpy(tiled + len, tail->p, tn);
            len += tn;
        }
        text = tiled;
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
