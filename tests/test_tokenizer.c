/* Hugging Face tokenizers: ids, decodes and templates identical to the `tokenizers` library for
 * GPT-2, Llama-3 and Llama-2 style tokenizer.json files (fixtures made by
 * tools/gen_tokenizer_fixtures.py), the same ids for every thread count, round trips, the trainer,
 * and clear errors for corrupt or unsupported files. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/bpe.h"
#include "data/tokenizer.h"
#include "harness.h"
#include "io/atomic.h"

#define FIX "tests/fixtures/tokenizers"

static char g_root[256];
static cJSON *g_expected;

static const char *g_names[] = {"gpt2", "gpt2-prefix", "llama3", "llama2", "llama2-metaspace", "ounce"};
#define N_NAMES (sizeof g_names / sizeof g_names[0])

static void write_file(const char *path, const char *data, size_t n) {
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL, "cannot create %s", path);
    if (!f) return;
    if (n) fwrite(data, 1, n, f);
    fclose(f);
}

static int ids_equal(const oz_tokens *got, const cJSON *want, const char *what, const char *name, int text) {
    int n = cJSON_GetArraySize(want);
    int ok = (size_t)n == got->len;
    size_t first = 0;
    for (int i = 0; ok && i < n; i++) {
        if (got->ids[i] != (int32_t)cJSON_GetArrayItem(want, i)->valuedouble) {
            ok = 0;
            first = (size_t)i;
        }
    }
    if (!ok && (size_t)n == got->len) {
        CHECK(0, "%s %s text %d: id %zu is %d, HF gives %d", name, what, text, first, got->ids[first],
              (int)cJSON_GetArrayItem(want, (int)first)->valuedouble);
        return 0;
    }
    CHECK(ok, "%s %s text %d: %zu ids, HF gives %d", name, what, text, got->len, n);
    return ok;
}

static void test_byte_tokenizer_unchanged(void) {
    oz_tokenizer t;
    oz_tokenizer_byte(&t);
    oz_tokens ids = {0};
    oz_err err = {0};
    CHECK(oz_tokenizer_encode(&t, "ab\xff", 3, &ids, &err) == OZ_OK && ids.len == 3 && ids.ids[2] == 255, "byte encode");
    CHECK(strcmp(oz_tokenizer_name(&t), "byte") == 0, "name");
    CHECK(oz_tokenizer_source(&t) == NULL, "no source");
    oz_tokenizer_free(&t); /* a no-op, safe */
    oz_tokens_free(&ids);
    oz_tokenizer u;
    CHECK(oz_tokenizer_from_name(&u, "hf", &err) == OZ_ERR_INPUT && strstr(err.msg, "tokenizer.json"),
          "'hf' by name alone explains the missing file: %s", err.msg);
}

/* Every fixture tokenizer on every text, with and without the template, and both decodes. */
static void test_parity_with_hf(void) {
    const cJSON *texts = cJSON_GetObjectItemCaseSensitive(g_expected, "texts");
    const cJSON *toks = cJSON_GetObjectItemCaseSensitive(g_expected, "tokenizers");
    for (size_t k = 0; k < N_NAMES; k++) {
        const char *name = g_names[k];
        const cJSON *exp = cJSON_GetObjectItemCaseSensitive(toks, name);
        CHECK(exp != NULL, "expected.json has no %s", name);
        if (!exp) continue;
        char dir[256];
        snprintf(dir, sizeof dir, FIX "/%s", name);
        oz_tokenizer t;
        oz_err err = {0};
        if (oz_tokenizer_load(&t, dir, &err) != OZ_OK) {
            CHECK(0, "load %s: %s", dir, err.msg);
            continue;
        }
        CHECK(t.type == OZ_TOK_HF && strcmp(oz_tokenizer_name(&t), "hf") == 0, "type");
        int nt = cJSON_GetArraySize(texts);
        for (int i = 0; i < nt; i++) {
            const char *text = cJSON_GetArrayItem(texts, i)->valuestring;
            oz_tokens ids = {0}, sp = {0};
            oz_text dec = {0}, decs = {0};
            CHECK(oz_tokenizer_encode(&t, text, strlen(text), &ids, &err) == OZ_OK, "%s encode: %s", name, err.msg);
            ids_equal(&ids, cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(exp, "encode"), i), "encode", name, i);
            CHECK(oz_tokenizer_encode_special(&t, text, strlen(text), &sp, &err) == OZ_OK, "%s: %s", name, err.msg);
            ids_equal(&sp, cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(exp, "encode_special"), i),
                      "encode_special", name, i);
            CHECK(oz_tokenizer_decode(&t, sp.ids, sp.len, 0, &dec, &err) == OZ_OK, "%s decode: %s", name, err.msg);
            CHECK(oz_tokenizer_decode(&t, sp.ids, sp.len, 1, &decs, &err) == OZ_OK, "%s decode: %s", name, err.msg);
            const char *want = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(exp, "decode"), i)->valuestring;
            const char *wants = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(exp, "decode_special"), i)->valuestring;
            CHECK(dec.data && strcmp(dec.data, want) == 0, "%s decode text %d: '%s' vs HF '%s'", name, i,
                  dec.data ? dec.data : "", want);
            CHECK(decs.data && strcmp(decs.data, wants) == 0, "%s decode_special text %d: '%s' vs HF '%s'", name, i,
                  decs.data ? decs.data : "", wants);
            oz_tokens_free(&ids);
            oz_tokens_free(&sp);
            oz_text_free(&dec);
            oz_text_free(&decs);
        }
        oz_tokenizer_free(&t);
        oz_tokenizer_free(&t); /* twice is fine */
    }
}

static void test_bos_eos_and_specials(void) {
    oz_tokenizer t;
    oz_err err = {0};
    CHECK(oz_tokenizer_load(&t, FIX "/llama3/tokenizer.json", &err) == OZ_OK, "%s", err.msg);
    if (!err.status) {
        CHECK(t.bos_id == oz_bpe_token_id(t.bpe, "<|begin_of_text|>") && t.bos_id >= 0, "llama3 bos %d", t.bos_id);
        CHECK(t.eos_id == oz_bpe_token_id(t.bpe, "<|end_of_text|>") && t.eos_id >= 0, "llama3 eos %d", t.eos_id);
        CHECK(t.vocab_size == t.eos_id + 3, "added tokens after the model vocabulary count: %d", t.vocab_size);
        const char *name = oz_tokenizer_special_name(&t, t.bos_id);
        CHECK(name && strcmp(name, "<|begin_of_text|>") == 0, "special name");
        CHECK(oz_tokenizer_special_name(&t, 300) == NULL, "ordinary id");
        oz_tokens ids = {0};
        oz_text out = {0};
        int32_t bad = t.vocab_size;
        CHECK(oz_tokenizer_decode(&t, &bad, 1, 0, &out, &err) == OZ_ERR_INPUT, "id outside the vocabulary");
        oz_tokens_free(&ids);
        oz_text_free(&out);
        oz_tokenizer_free(&t);
    }
    err = (oz_err){0};
    CHECK(oz_tokenizer_load(&t, FIX "/llama2", &err) == OZ_OK, "%s", err.msg);
    if (!err.status) {
        CHECK(t.bos_id == 1 && t.eos_id == 2, "llama2 bos/eos from tokenizer_config.json: %d %d", t.bos_id, t.eos_id);
        oz_tokenizer_free(&t);
    }
    err = (oz_err){0};
    CHECK(oz_tokenizer_load(&t, FIX "/gpt2", &err) == OZ_OK, "%s", err.msg);
    if (!err.status) {
        /* No config and no template: GPT-2's single <|endoftext|> is both. */
        CHECK(t.bos_id == 0 && t.eos_id == 0, "gpt2 bos/eos guessed: %d %d", t.bos_id, t.eos_id);
        oz_tokenizer_free(&t);
    }
}

/* Large inputs are encoded in parallel chunks: the ids must not depend on the thread count, and
 * every byte-level encode must decode back to the exact bytes, invalid UTF-8 included. */
/* The parallel encoder cuts long text into units at safe newlines and gives each added token a unit
 * of its own; how many units a text makes depends on where its newlines and added tokens fall, not
 * on its length alone (a regression: added-token units were appended past the array's end). Texts
 * past the parallel threshold, with end-of-text tokens between documents of many sizes and safe
 * cuts as close as they come, give the single-threaded ids with 2 and 3 threads (and ASan sees
 * every write in the sanitizer run). */
static void test_parallel_units_with_added_tokens(void) {
    const char *names[] = {"gpt2", "llama3", "ounce"}, *eot[] = {"<|endoftext|>", "<|end_of_text|>", "<|end_of_text|>"};
    size_t cap = (size_t)3 << 20;
    char *big = malloc(cap);
    for (int k = 0; k < 3; k++) {
        char dir[256];
        snprintf(dir, sizeof dir, FIX "/%s", names[k]);
        oz_tokenizer t;
        oz_err err = {0};
        if (oz_tokenizer_load(&t, dir, &err) != OZ_OK) {
            CHECK(0, "%s", err.msg);
            continue;
        }
        for (int variant = 0; variant < 3; variant++) {
            /* 0: documents of 1 to ~200 KiB; 1: five of 229,730 bytes with safe cuts every 32 KiB + 1, which
             * make more units than the text's length suggests and end a document exactly when the unit
             * array is full (found by simulating the cuts), so the end-of-text unit lands past it;
             * 2: thousands of tiny documents (a unit per token). */
            size_t n = 0;
            int docs = 0;
            uint64_t r = 0x9E3779B97F4A7C15ull * (uint64_t)(variant + 1);
            while (variant == 1 ? docs < 5 : n < ((size_t)1 << 20) + 300000) {
                docs++;
                r = r * 6364136223846793005ull + 1442695040888963407ull;
                size_t doc = variant == 0 ? 1024 + (size_t)(r >> 33) % 200000 : variant == 1 ? 229730 : 1 + (r >> 60);
                for (size_t i = 0; i < doc && n < cap - 64; i++, n++) {
                    if (variant == 1) big[n] = i % 32769 == 0 ? '\n' : i % 32769 == 1 ? 'A' : "ab c"[i % 4];
                    else big[n] = i % 81 == 80 ? '\n' : "the quick brown fox "[i % 20];
                }
                n += (size_t)sprintf(big + n, "%s", eot[k]);
            }
            oz_tokens ref = {0};
            t.threads = 1;
            CHECK(oz_tokenizer_encode_special(&t, big, n, &ref, &err) == OZ_OK, "%s", err.msg);
            for (int th = 2; th <= 3; th++) {
                oz_tokens ids = {0};
                t.threads = th;
                CHECK(oz_tokenizer_encode_special(&t, big, n, &ids, &err) == OZ_OK, "%s", err.msg);
                CHECK(ids.len == ref.len && memcmp(ids.ids, ref.ids, ref.len * sizeof *ref.ids) == 0,
                      "%s, variant %d: %d threads give other ids (%zu vs %zu)", names[k], variant, th, ids.len, ref.len);
                oz_tokens_free(&ids);
            }
            oz_tokens_free(&ref);
        }
        oz_tokenizer_free(&t);
    }
    free(big);
}

/* Texts and words that encode to nothing (empty text, characters a vocabulary lacks, added tokens
 * alone) encode cleanly (a regression: memcpy from or to NULL with 0 bytes, which UBSan reports),
 * and give the same ids twice (the word cache is filled with empty entries on the first pass). */
static void test_encodes_to_nothing(void) {
    const char *names[] = {"gpt2", "llama3", "llama2", "llama2-metaspace", "ounce"};
    const char *texts[] = {"", "\x01", "\x01\x02 \x01", "<|endoftext|>", "</s>", " ", "\xff\xfe", "\xe2\x82"};
    for (int k = 0; k < 5; k++) {
        char dir[256];
        snprintf(dir, sizeof dir, FIX "/%s", names[k]);
        oz_tokenizer t;
        oz_err err = {0};
        if (oz_tokenizer_load(&t, dir, &err) != OZ_OK) {
            CHECK(0, "%s", err.msg);
            continue;
        }
        for (int i = 0; i < 8; i++)
            for (int special = 0; special <= 1; special++) {
                oz_tokens a = {0}, b = {0};
                size_t n = strlen(texts[i]);
                oz_status s1 = special ? oz_tokenizer_encode_special(&t, texts[i], n, &a, &err)
                                       : oz_tokenizer_encode(&t, texts[i], n, &a, &err);
                oz_status s2 = special ? oz_tokenizer_encode_special(&t, texts[i], n, &b, &err)
                                       : oz_tokenizer_encode(&t, texts[i], n, &b, &err);
                CHECK(s1 == OZ_OK && s2 == OZ_OK && a.len == b.len &&
                          (a.len == 0 || memcmp(a.ids, b.ids, a.len * sizeof *a.ids) == 0),
                      "%s: text %d (special %d) encodes differently twice or fails: %s", names[k], i, special, err.msg);
                oz_tokens_free(&a);
                oz_tokens_free(&b);
            }
        oz_tokenizer_free(&t);
    }
}

/* The vocabulary fingerprint: the same file loaded twice (or as a file path) agrees, every fixture
 * differs from every other and from the byte tokenizer. */
static void test_fingerprint(void) {
    const char *names[] = {"gpt2", "gpt2-prefix", "llama3", "llama2", "llama2-metaspace", "ounce"};
    uint64_t fp[7];
    oz_tokenizer byte;
    oz_tokenizer_byte(&byte);
    fp[6] = oz_tokenizer_fingerprint(&byte);
    for (int k = 0; k < 6; k++) {
        char dir[256], file[300];
        snprintf(dir, sizeof dir, FIX "/%s", names[k]);
        snprintf(file, sizeof file, "%s/tokenizer.json", dir);
        oz_tokenizer a, b;
        oz_err err = {0};
        fp[k] = 0;
        if (oz_tokenizer_load(&a, dir, &err) != OZ_OK || oz_tokenizer_load(&b, file, &err) != OZ_OK) {
            CHECK(0, "%s", err.msg);
            continue;
        }
        fp[k] = oz_tokenizer_fingerprint(&a);
        CHECK(fp[k] == oz_tokenizer_fingerprint(&b), "%s: two loads give two fingerprints", names[k]);
        oz_tokenizer_free(&a);
        oz_tokenizer_free(&b);
    }
    /* gpt2-prefix and llama2-metaspace differ from gpt2 and llama2 only in how text is split: the
     * same vocabularies, the same fingerprints */
    CHECK(fp[0] == fp[1] && fp[3] == fp[4], "fixtures sharing a vocabulary do not share a fingerprint");
    for (int i = 0; i < 7; i++)
        for (int j = i + 1; j < 7; j++)
            if (!(i == 0 && j == 1) && !(i == 3 && j == 4)) CHECK(fp[i] != fp[j], "fingerprints %d and %d collide", i, j);
}

static void test_threads_and_round_trip(void) {
    const cJSON *texts = cJSON_GetObjectItemCaseSensitive(g_expected, "texts");
    const char *base = cJSON_GetArrayItem(texts, 0)->valuestring;
    size_t bl = strlen(base), reps = 400000 / bl + 1;
    char *big = malloc(reps * (bl + 8) + 1);
    size_t n = 0;
    for (size_t r = 0; r < reps; r++) {
        memcpy(big + n, base, bl);
        n += bl;
        n += (size_t)sprintf(big + n, "%zu\n", r % 7 == 0 ? r : 0);
    }
    big[n] = '\0';
    const char *names[] = {"gpt2", "llama3", "llama2"};
    for (int k = 0; k < 3; k++) {
        char dir[256];
        snprintf(dir, sizeof dir, FIX "/%s", names[k]);
        oz_tokenizer t;
        oz_err err = {0};
        if (oz_tokenizer_load(&t, dir, &err) != OZ_OK) {
            CHECK(0, "%s", err.msg);
            continue;
        }
        oz_tokens ref = {0};
        t.threads = 1;
        CHECK(oz_tokenizer_encode(&t, big, n, &ref, &err) == OZ_OK, "%s", err.msg);
        for (int th = 2; th <= 3; th++) {
            oz_tokens ids = {0};
            t.threads = th;
            CHECK(oz_tokenizer_encode(&t, big, n, &ids, &err) == OZ_OK, "%s", err.msg);
            CHECK(ids.len == ref.len && memcmp(ids.ids, ref.ids, ref.len * sizeof *ref.ids) == 0,
                  "%s: %d threads give other ids (%zu vs %zu)", names[k], th, ids.len, ref.len);
            oz_tokens_free(&ids);
        }
        if (k < 2) {
            oz_text out = {0};
            CHECK(oz_tokenizer_decode(&t, ref.ids, ref.len, 1, &out, &err) == OZ_OK, "%s", err.msg);
            CHECK(out.len == n && memcmp(out.data, big, n) == 0, "%s: decode(encode(x)) != x", names[k]);
            oz_text_free(&out);
            const char junk[] = "ok \xff\xfe\xc3 bytes \xe2\x82 end\x80";
            oz_tokens ids = {0};
            oz_text back = {0};
            CHECK(oz_tokenizer_encode(&t, junk, sizeof junk - 1, &ids, &err) == OZ_OK, "%s", err.msg);
            CHECK(oz_tokenizer_decode(&t, ids.ids, ids.len, 1, &back, &err) == OZ_OK, "%s", err.msg);
            CHECK(back.len == sizeof junk - 1 && memcmp(back.data, junk, back.len) == 0, "%s: invalid UTF-8 round trip",
                  names[k]);
            oz_tokens_free(&ids);
            oz_text_free(&back);
        }
        oz_tokens_free(&ref);
        oz_tokenizer_free(&t);
    }
    free(big);
}

/* A tokenizer.json with one field replaced must fail with OZ_ERR_INPUT naming that field. */
static void expect_load_error(const char *label, const char *json, size_t n, const char *needle) {
    char path[512];
    snprintf(path, sizeof path, "%s/tokenizer.json", g_root);
    write_file(path, json, n);
    oz_tokenizer t;
    oz_err err = {0};
    oz_status s = oz_tokenizer_load(&t, g_root, &err);
    CHECK(s == OZ_ERR_INPUT, "%s: status %d", label, (int)s);
    CHECK(strstr(err.msg, needle) != NULL, "%s: message '%s' lacks '%s'", label, err.msg, needle);
    CHECK(strchr(err.msg, '\n') == NULL, "%s: one line", label);
    if (s == OZ_OK) oz_tokenizer_free(&t);
}

static void test_errors(void) {
    char *good = NULL;
    size_t n = 0;
    oz_err err = {0};
    CHECK(oz_read_file(FIX "/llama3/tokenizer.json", &good, &n, &err) == OZ_OK, "%s", err.msg);
    if (!good) return;
    expect_load_error("truncated", good, n / 2, "not valid JSON");
    expect_load_error("empty", "", 0, "not valid JSON");
    expect_load_error("not JSON", "hello", 5, "not valid JSON");
    expect_load_error("array", "[1,2]", 5, "not a JSON object");
    expect_load_error("no model", "{\"added_tokens\": []}", 20, "model");
    const char *wp = "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}}";
    expect_load_error("WordPiece", wp, strlen(wp), "model.type \"WordPiece\"");
    const char *uni = "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0]]}}";
    expect_load_error("Unigram", uni, strlen(uni), "model.type \"Unigram\"");
    cJSON *root = cJSON_ParseWithLength(good, n);
    const struct {
        const char *label, *key, *value, *needle;
    } edits[] = {
        {"unknown pre-tokenizer", "pre_tokenizer", "{\"type\": \"BertPreTokenizer\"}", "pre_tokenizer.type \"BertPreTokenizer\""},
        {"unknown normalizer", "normalizer", "{\"type\": \"NFKC\"}", "normalizer.type \"NFKC\""},
        {"unknown decoder", "decoder", "{\"type\": \"WordPiece\"}", "decoder.type \"WordPiece\""},
        {"unknown post-processor", "post_processor", "{\"type\": \"Frobnicate\"}", "post_processor.type \"Frobnicate\""},
        {"bad regex", "pre_tokenizer", "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}, \"behavior\": \"Isolated\", \"invert\": false}", "regex"},
        {"bad behavior", "pre_tokenizer", "{\"type\": \"Split\", \"pattern\": {\"String\": \" \"}, \"behavior\": \"Sideways\", \"invert\": false}", "behavior"},
    };
    for (size_t i = 0; i < sizeof edits / sizeof edits[0]; i++) {
        cJSON *copy = cJSON_Duplicate(root, 1);
        cJSON_ReplaceItemInObjectCaseSensitive(copy, edits[i].key, cJSON_Parse(edits[i].value));
        char *s = cJSON_PrintUnformatted(copy);
        expect_load_error(edits[i].label, s, strlen(s), edits[i].needle);
        free(s);
        cJSON_Delete(copy);
    }
    /* A merge naming a token the vocabulary lacks, and a merges entry of the wrong shape. */
    const char *bad_merge = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}";
    expect_load_error("merge result not in vocab", bad_merge, strlen(bad_merge), "model.merges[0]");
    const char *bad_shape = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [42]}}";
    expect_load_error("merge of the wrong shape", bad_shape, strlen(bad_shape), "model.merges[0]");
    /* Ids are bounded by the tokens the file lists (+1024) before any table is sized by them: the
     * audit's 61-byte file with id 2,147,483,646 allocated and filled 8 GiB. Ids beyond an int and
     * post-processor ids like 1e10 are refused before any cast. */
    const char *huge = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":2147483646},\"merges\":[]}}";
    expect_load_error("huge vocabulary id", huge, strlen(huge), "not an id below 1025");
    const char *huge_added = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
                             "\"added_tokens\":[{\"id\":2000000,\"content\":\"<x>\"}]}";
    expect_load_error("huge added id", huge_added, strlen(huge_added), "added_tokens[0]");
    const char *frac = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0.5},\"merges\":[]}}";
    expect_load_error("fractional id", frac, strlen(frac), "model.vocab[\"a\"]");
    const char *big_post = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"post_processor\":"
                           "{\"type\":\"BertProcessing\",\"cls\":[\"a\",1e10],\"sep\":[\"a\",0]}}";
    expect_load_error("post-processor id 1e10", big_post, strlen(big_post), "cls");
    /* A template id no token has (a hole in the ids) would be emitted by encode and refused by decode
     * (the tokenizer fuzz target's reproducer template-id-hole). */
    const char *hole = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"c\":2},\"merges\":[]},\"post_processor\":"
                       "{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"X\",\"type_id\":0}},"
                       "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"pair\":[],\"special_tokens\":{\"X\":{\"id\":\"X\","
                       "\"ids\":[1],\"tokens\":[\"X\"]}}}}";
    expect_load_error("template id no token has", hole, strlen(hole), "which no token has");
    const char *dropout = "{\"model\": {\"type\": \"BPE\", \"dropout\": 0.1, \"vocab\": {\"a\": 0}, \"merges\": []}}";
    expect_load_error("dropout", dropout, strlen(dropout), "model.dropout");
    cJSON_Delete(root);
    free(good);
    oz_tokenizer t;
    err = (oz_err){0};
    CHECK(oz_tokenizer_load(&t, "/nonexistent/tok", &err) == OZ_ERR_INPUT && strstr(err.msg, "/nonexistent/tok"),
          "missing path: %s", err.msg);
    char empty_dir[300];
    snprintf(empty_dir, sizeof empty_dir, "%s/empty", g_root);
    oz_mkdir_p(empty_dir, &err);
    err = (oz_err){0};
    CHECK(oz_tokenizer_load(&t, empty_dir, &err) == OZ_ERR_INPUT && strstr(err.msg, "tokenizer.json"),
          "directory without tokenizer.json: %s", err.msg);
}

/* The trainer: deterministic output that loads, names BOS/EOS, and round-trips text. */
static void test_train(void) {
    const cJSON *texts = cJSON_GetObjectItemCaseSensitive(g_expected, "texts");
    char corpus[300], out1[300], out2[300];
    snprintf(corpus, sizeof corpus, "%s/corpus", g_root);
    snprintf(out1, sizeof out1, "%s/tok1", g_root);
    snprintf(out2, sizeof out2, "%s/tok2", g_root);
    oz_err err = {0};
    oz_mkdir_p(corpus, &err);
    for (int i = 0; i < cJSON_GetArraySize(texts); i++) {
        char path[400];
        snprintf(path, sizeof path, "%s/doc%02d.txt", corpus, i);
        const char *t = cJSON_GetArrayItem(texts, i)->valuestring;
        write_file(path, t, strlen(t));
    }
    const char *inputs[] = {corpus};
    const char *specials[] = {"<s>", "</s>", "<pad>"};
    oz_bpe_train_opts o = {inputs, 1, 420, 2, specials, 3, OZ_BPE_PATTERN_LLAMA3, out1};
    oz_bpe_train_report rep;
    CHECK(oz_bpe_train(&o, &rep, &err) == OZ_OK, "%s", err.msg);
    CHECK(rep.vocab_size <= 420 && rep.vocab_size > 259 && rep.merges >= rep.vocab_size - 259, "report %d %d",
          rep.vocab_size, rep.merges);
    o.out_dir = out2;
    CHECK(oz_bpe_train(&o, &rep, &err) == OZ_OK, "%s", err.msg);
    char p1[400], p2[400];
    snprintf(p1, sizeof p1, "%s/tokenizer.json", out1);
    snprintf(p2, sizeof p2, "%s/tokenizer.json", out2);
    char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    oz_read_file(p1, &a, &na, &err);
    oz_read_file(p2, &b, &nb, &err);
    CHECK(a && b && na == nb && memcmp(a, b, na) == 0, "training is deterministic");
    free(a);
    free(b);
    oz_tokenizer t;
    if (oz_tokenizer_load(&t, out1, &err) != OZ_OK) {
        CHECK(0, "trained tokenizer loads: %s", err.msg);
        return;
    }
    CHECK(t.bos_id == 0 && t.eos_id == 1 && t.vocab_size == rep.vocab_size, "bos %d eos %d vocab %d", t.bos_id,
          t.eos_id, t.vocab_size);
    const char *text = cJSON_GetArrayItem(texts, 0)->valuestring;
    oz_tokens ids = {0};
    oz_text back = {0};
    CHECK(oz_tokenizer_encode_special(&t, text, strlen(text), &ids, &err) == OZ_OK && ids.ids[0] == 0, "BOS first");
    CHECK(ids.len * 5 < strlen(text) * 4, "merges compress the text it was trained on: %zu ids for %zu bytes", ids.len,
          strlen(text));
    CHECK(oz_tokenizer_decode(&t, ids.ids + 1, ids.len - 1, 1, &back, &err) == OZ_OK && strcmp(back.data, text) == 0,
          "round trip");
    oz_tokens_free(&ids);
    oz_text_free(&back);
    oz_tokenizer_free(&t);
    o.vocab_size = 200;
    CHECK(oz_bpe_train(&o, &rep, &err) == OZ_ERR_INPUT && strstr(err.msg, "256"), "vocab too small: %s", err.msg);
    const char *missing[] = {"/nonexistent/corpus"};
    o = (oz_bpe_train_opts){missing, 1, 1000, 0, NULL, 0, OZ_BPE_PATTERN_GPT2, out1};
    err = (oz_err){0};
    CHECK(oz_bpe_train(&o, &rep, &err) == OZ_ERR_INPUT && strstr(err.msg, "/nonexistent/corpus"), "missing input: %s",
          err.msg);
}

/* Prompts for generation: a tokenizer.json's as transformers 5 encodes them for generate()
 * (tests/fixtures/prompts/, tools/gen_prompt_fixtures.py: the post-processor decides, whatever
 * tokenizer_config.json's add_bos_token / add_eos_token say, and a null one adds nothing); the byte
 * tokenizer's after an end-of-document token, as before. */
static void test_prompt_encoding(void) {
    char *json = NULL;
    size_t n = 0;
    oz_err err = {0};
    CHECK(oz_read_file("tests/fixtures/prompts/expected.json", &json, &n, &err) == OZ_OK, "%s", err.msg);
    cJSON *exp = json ? cJSON_ParseWithLength(json, n) : NULL;
    free(json);
    const cJSON *texts = cJSON_GetObjectItemCaseSensitive(exp, "texts");
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(exp, "ids"), *c;
    int n_cases = 0;
    cJSON_ArrayForEach(c, cases) {
        char dir[256];
        snprintf(dir, sizeof dir, "tests/fixtures/prompts/%s", c->string);
        oz_tokenizer t;
        if (oz_tokenizer_load(&t, dir, &err) != OZ_OK) {
            CHECK(0, "load %s: %s", dir, err.msg);
            continue;
        }
        n_cases++;
        for (int i = 0; i < cJSON_GetArraySize(texts); i++) {
            const char *text = cJSON_GetArrayItem(texts, i)->valuestring;
            oz_tokens ids = {0};
            size_t from = 99;
            CHECK(oz_tokenizer_encode_prompt(&t, text, strlen(text), &ids, &from, &err) == OZ_OK, "%s", err.msg);
            CHECK(from == 0, "%s: no end-of-document token before a tokenizer.json's prompt", c->string);
            ids_equal(&ids, cJSON_GetArrayItem(c, i), "prompt", c->string, i);
            oz_tokens_free(&ids);
        }
        oz_tokenizer_free(&t);
    }
    CHECK(n_cases == 6, "%d prompt fixtures", n_cases);
    cJSON_Delete(exp);
    oz_tokenizer b;
    oz_tokenizer_byte(&b);
    oz_tokens ids = {0};
    size_t from = 0;
    CHECK(oz_tokenizer_encode_prompt(&b, "Hi", 2, &ids, &from, &err) == OZ_OK, "%s", err.msg);
    CHECK(ids.len == 3 && ids.ids[0] == OZ_BYTE_EOS && ids.ids[1] == 'H' && ids.ids[2] == 'i' && from == 1,
          "byte prompt: end-of-document, then the bytes");
    oz_tokens_free(&ids);
}

int main(void) {
    snprintf(g_root, sizeof g_root, "/tmp/ounce-test-tok-XXXXXX");
    if (!mkdtemp(g_root)) {
        perror("mkdtemp");
        return 1;
    }
    char *json = NULL;
    size_t n = 0;
    oz_err err = {0};
    if (oz_read_file(FIX "/expected.json", &json, &n, &err) != OZ_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    g_expected = cJSON_ParseWithLength(json, n);
    free(json);
    RUN(test_byte_tokenizer_unchanged);
    RUN(test_parity_with_hf);
    RUN(test_prompt_encoding);
    RUN(test_bos_eos_and_specials);
    RUN(test_threads_and_round_trip);
    RUN(test_parallel_units_with_added_tokens);
    RUN(test_encodes_to_nothing);
    RUN(test_fingerprint);
    RUN(test_errors);
    RUN(test_train);
    cJSON_Delete(g_expected);
    oz_remove_tree(g_root, &err);
    return oz_test_finish("test_tokenizer");
}
