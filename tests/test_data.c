/* Data layer tests: tokenizer, token shards, corpus preparation and the batch loader. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/loader.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "harness.h"
#include "io/atomic.h"
#include "util/rng.h"

static char g_root[256];

static void path_in(char *buf, size_t n, const char *rel) { snprintf(buf, n, "%s/%s", g_root, rel); }

static void write_bytes(const char *rel, const void *data, size_t n) {
    char p[512];
    path_in(p, sizeof p, rel);
    char dir[512];
    snprintf(dir, sizeof dir, "%s", p);
    char *slash = strrchr(dir, '/');
    *slash = '\0';
    oz_err err = {0};
    oz_mkdir_p(dir, &err);
    FILE *f = fopen(p, "wb");
    CHECK(f != NULL, "cannot create %s", p);
    if (!f) return;
    if (n) fwrite(data, 1, n, f);
    fclose(f);
}
static void write_str(const char *rel, const char *s) { write_bytes(rel, s, strlen(s)); }

static int contains(const char *hay, const char *needle) { return strstr(hay, needle) != NULL; }

/* ---- tokenizer ---- */

static void test_tokenizer(void) {
    oz_tokenizer tok;
    oz_tokenizer_byte(&tok);
    CHECK(tok.vocab_size == 258 && tok.bos_id == 256 && tok.eos_id == 257, "byte tokenizer constants");
    CHECK(strcmp(oz_tokenizer_name(&tok), "byte") == 0, "name");

    const char *utf8 = "h\xc3\xa9llo, \xd0\xbc\xd0\xb8\xd1\x80 \xf0\x9f\x8c\x8d!";
    oz_err err = {0};
    oz_tokens ids = {0};
    CHECK(oz_tokenizer_encode(&tok, utf8, strlen(utf8), &ids, &err) == OZ_OK, "%s", err.msg);
    CHECK(ids.len == strlen(utf8), "one id per byte: %zu", ids.len);
    CHECK(ids.ids[1] == 0xc3 && ids.ids[2] == 0xa9, "UTF-8 bytes are ids");
    oz_text text = {0};
    CHECK(oz_tokenizer_decode(&tok, ids.ids, ids.len, 0, &text, &err) == OZ_OK, "%s", err.msg);
    CHECK(text.len == strlen(utf8) && strcmp(text.data, utf8) == 0, "UTF-8 round trip");

    char all[256];
    for (int i = 0; i < 256; i++) all[i] = (char)i;
    ids.len = 0;
    CHECK(oz_tokenizer_encode(&tok, all, 256, &ids, &err) == OZ_OK, "%s", err.msg);
    int ok = ids.len == 256;
    for (int i = 0; ok && i < 256; i++) ok = ids.ids[i] == i;
    CHECK(ok, "all 256 bytes map to themselves");
    /* Appending: specials mixed in decode to nothing by default, to names when asked. */
    oz_tokens_push(&ids, tok.eos_id, &err);
    oz_tokens_push(&ids, tok.bos_id, &err);
    text.len = 0;
    CHECK(oz_tokenizer_decode(&tok, ids.ids, ids.len, 0, &text, &err) == OZ_OK, "%s", err.msg);
    CHECK(text.len == 256 && memcmp(text.data, all, 256) == 0, "all bytes round trip, specials silent");
    text.len = 0;
    CHECK(oz_tokenizer_decode(&tok, ids.ids + 250, ids.len - 250, 1, &text, &err) == OZ_OK, "%s", err.msg);
    CHECK(text.len == 6 + 14 && memcmp(text.data + 6, "<|eos|><|bos|>", 14) == 0, "special names shown");
    int32_t bad = 258;
    CHECK(oz_tokenizer_decode(&tok, &bad, 1, 0, &text, &err) == OZ_ERR_INPUT, "out-of-range id rejected");
    oz_err_clear(&err);
    CHECK(oz_tokenizer_from_name(&tok, "bpe-x", &err) == OZ_ERR_INPUT && contains(err.msg, "bpe-x"), "unknown name");
    oz_tokens_free(&ids);
    oz_text_free(&text);
}

/* ---- shards ---- */

static void shard_round_trip(uint32_t vocab, uint32_t width) {
    char p[512];
    path_in(p, sizeof p, vocab <= 65536 ? "shards/w2.bin" : "shards/w4.bin");
    oz_err err = {0};
    oz_mkdir_p(g_root, &err);
    char dir[512];
    path_in(dir, sizeof dir, "shards");
    oz_mkdir_p(dir, &err);
    enum { N = 100003 };
    int32_t *ids = malloc(N * sizeof *ids);
    oz_rng rng;
    oz_rng_seed(&rng, vocab);
    for (int i = 0; i < N; i++) ids[i] = (int32_t)oz_rng_below(&rng, vocab);
    ids[0] = 0;
    ids[1] = (int32_t)vocab - 1;
    CHECK(oz_shard_write(p, vocab, ids, N, &err) == OZ_OK, "%s", err.msg);
    struct stat st;
    CHECK(stat(p, &st) == 0 && (uint64_t)st.st_size == 256 + (uint64_t)N * width, "file size for width %u", width);
    oz_shard s;
    CHECK(oz_shard_open(&s, p, &err) == OZ_OK, "%s", err.msg);
    CHECK(s.vocab_size == vocab && s.token_bytes == width && s.n_tokens == N, "header fields");
    int ok = 1;
    for (uint64_t i = 0; ok && i < N; i++) ok = oz_shard_token(&s, i) == (uint32_t)ids[i];
    CHECK(ok, "token(i) round trip width %u", width);
    int32_t got[10];
    oz_shard_read(&s, 500, 10, got);
    CHECK(memcmp(got, ids + 500, sizeof got) == 0, "bulk read");
    /* The header is little-endian at the documented offsets. */
    const unsigned char *h = (const unsigned char *)s.map;
    CHECK(memcmp(h, "OZTOKENS", 8) == 0 && h[8] == 1 && h[16] == width && h[24] == (N & 0xff), "raw header");
    oz_shard_close(&s);

    /* Ids outside the vocabulary are refused at write time and leave no file behind. */
    char p2[512];
    path_in(p2, sizeof p2, "shards/bad.bin");
    ids[5] = (int32_t)vocab;
    oz_err_clear(&err);
    CHECK(oz_shard_write(p2, vocab, ids, N, &err) == OZ_ERR_INPUT, "bad id written");
    CHECK(access(p2, F_OK) != 0, "no partial shard left");
    free(ids);
}

static void test_shard_round_trip(void) {
    shard_round_trip(258, 2);
    shard_round_trip(65536, 2);
    shard_round_trip(100000, 4);
    char p[512];
    path_in(p, sizeof p, "shards/empty.bin");
    oz_err err = {0};
    CHECK(oz_shard_write(p, 258, NULL, 0, &err) == OZ_OK, "%s", err.msg);
    oz_shard s;
    CHECK(oz_shard_open(&s, p, &err) == OZ_OK && s.n_tokens == 0, "empty shard: %s", err.msg);
    oz_shard_close(&s);
}

static void expect_bad_shard(const char *path, const char *what, const char *needle) {
    oz_err err = {0};
    oz_shard s;
    oz_status st = oz_shard_open(&s, path, &err);
    CHECK(st == OZ_ERR_INPUT, "%s: status %d", what, (int)st);
    CHECK(contains(err.msg, path), "%s: message names the file: %s", what, err.msg);
    if (needle) CHECK(contains(err.msg, needle), "%s: message '%s' lacks '%s'", what, err.msg, needle);
}

static void test_shard_corrupt(void) {
    char good[512], p[512];
    path_in(good, sizeof good, "shards/c.bin");
    int32_t ids[1000];
    for (int i = 0; i < 1000; i++) ids[i] = i % 258;
    oz_err err = {0};
    CHECK(oz_shard_write(good, 258, ids, 1000, &err) == OZ_OK, "%s", err.msg);
    FILE *f = fopen(good, "rb");
    unsigned char buf[256 + 2000];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    CHECK(n == sizeof buf, "read back");

    write_bytes("shards/trunc.bin", buf, n - 1);
    path_in(p, sizeof p, "shards/trunc.bin");
    expect_bad_shard(p, "truncated by one byte", "truncated");

    write_bytes("shards/short.bin", buf, 100);
    path_in(p, sizeof p, "shards/short.bin");
    expect_bad_shard(p, "shorter than the header", "header");

    unsigned char bad[sizeof buf];
    memcpy(bad, buf, n);
    bad[0] = 'X';
    write_bytes("shards/magic.bin", bad, n);
    path_in(p, sizeof p, "shards/magic.bin");
    expect_bad_shard(p, "bad magic", "magic");

    memcpy(bad, buf, n);
    bad[8] = 2;
    write_bytes("shards/version.bin", bad, n);
    path_in(p, sizeof p, "shards/version.bin");
    expect_bad_shard(p, "bad version", "version");

    memcpy(bad, buf, n);
    bad[256 + 2 * 7 + 1] = 0x7f; /* token 7 becomes huge */
    write_bytes("shards/range.bin", bad, n);
    path_in(p, sizeof p, "shards/range.bin");
    expect_bad_shard(p, "id out of range", "token 7");

    memcpy(bad, buf, n);
    bad[24] = 0xe9; /* n_tokens 1000 -> 1001 */
    write_bytes("shards/count.bin", bad, n);
    path_in(p, sizeof p, "shards/count.bin");
    expect_bad_shard(p, "count larger than the data", "1001");

    path_in(p, sizeof p, "shards/missing.bin");
    expect_bad_shard(p, "missing file", NULL);
}

/* ---- prepare ---- */

static cJSON *load_meta(const char *dir) {
    char p[512];
    snprintf(p, sizeof p, "%s/meta.json", dir);
    char *text;
    size_t n;
    oz_err err = {0};
    if (oz_read_file(p, &text, &n, &err) != OZ_OK) return NULL;
    cJSON *j = cJSON_Parse(text);
    free(text);
    return j;
}

static double meta_num(const cJSON *m, const char *key) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(m, key);
    return cJSON_IsNumber(j) ? j->valuedouble : -1.0;
}

static int run_prepare(const char *const *inputs, int n, const char *out, double val_fraction,
                       oz_prepare_report *rep, oz_err *err) {
    oz_prepare_opts o;
    oz_prepare_opts_init(&o);
    o.inputs = inputs;
    o.n_inputs = n;
    o.out_dir = out;
    o.val_fraction = val_fraction;
    oz_err_clear(err);
    return oz_prepare(&o, rep, err);
}

static void test_prepare_tree(void) {
    write_str("corpus/a.txt", "hello world\n");
    write_str("corpus/sub/b.txt", "second doc");
    write_str("corpus/sub/deeper/c.txt", "\xf0\x9f\x8c\x8d deep");
    write_str("corpus/.hidden.txt", "never read");
    write_str("corpus/.git/x.txt", "never read either");
    write_bytes("corpus/bin.bin", "ab\0cd", 5);
    write_str("corpus/empty.txt", "");
    write_str("corpus/docs.jsonl",
              "\xEF\xBB\xBF{\"text\": \"json one\", \"id\": 1}\n\n{\"text\": \"caf\\u00e9\"}\r\n{\"meta\": 0, \"text\": \"three\"}\n");
    write_str("corpus/fort", "A fortune.\n%\nAnother.\n");
    write_str("corpus/fort.dat", "strfile index stand-in without NULs");
    char in[512], link[512], out[512];
    path_in(in, sizeof in, "corpus");
    path_in(link, sizeof link, "corpus/fort.u8");
    CHECK(symlink("fort", link) == 0, "symlink");
    path_in(out, sizeof out, "out/tree");

    const char *inputs[] = {in};
    oz_prepare_report rep;
    oz_err err;
    CHECK(run_prepare(inputs, 1, out, 0.0, &rep, &err) == OZ_OK, "%s", err.msg);
    CHECK(rep.documents == 7, "documents: %llu", (unsigned long long)rep.documents);
    CHECK(rep.files == 6, "files read: %llu", (unsigned long long)rep.files);
    CHECK(rep.skipped_files == 3, "skipped (binary, index, duplicate link): %llu", (unsigned long long)rep.skipped_files);

    /* Expected stream: files in path order, each document followed by EOS. */
    const char *docs[] = {"hello world\n", "json one", "caf\xc3\xa9", "three", "A fortune.\n%\nAnother.\n",
                          "second doc", "\xf0\x9f\x8c\x8d deep"};
    int32_t expect[256];
    size_t ne = 0;
    for (int d = 0; d < 7; d++) {
        for (const char *c = docs[d]; *c; c++) expect[ne++] = (unsigned char)*c;
        expect[ne++] = OZ_BYTE_EOS;
    }
    CHECK(rep.train_tokens == ne && rep.val_tokens == 0, "token counts %llu/%llu vs %zu",
          (unsigned long long)rep.train_tokens, (unsigned long long)rep.val_tokens, ne);
    char p[600];
    snprintf(p, sizeof p, "%s/train.bin", out);
    oz_shard s;
    CHECK(oz_shard_open(&s, p, &err) == OZ_OK, "%s", err.msg);
    int ok = s.n_tokens == ne;
    for (size_t i = 0; ok && i < ne; i++) ok = oz_shard_token(&s, i) == (uint32_t)expect[i];
    CHECK(ok, "train stream is the documents in path order with EOS after each");
    oz_shard_close(&s);

    cJSON *m = load_meta(out);
    CHECK(m != NULL, "meta.json parses");
    if (m) {
        const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(m, "format");
        const cJSON *tk = cJSON_GetObjectItemCaseSensitive(m, "tokenizer");
        CHECK(cJSON_IsString(fmt) && strcmp(fmt->valuestring, "ounce-tokens") == 0, "format");
        CHECK(cJSON_IsString(tk) && strcmp(tk->valuestring, "byte") == 0, "tokenizer");
        CHECK(meta_num(m, "version") == 1 && meta_num(m, "vocab_size") == 258, "version/vocab");
        CHECK(meta_num(m, "bos_token_id") == 256 && meta_num(m, "eos_token_id") == 257, "bos/eos");
        CHECK(meta_num(m, "train_tokens") == (double)ne && meta_num(m, "val_tokens") == 0, "token counts");
        CHECK(meta_num(m, "documents") == 7, "documents");
        CHECK_CLOSE(meta_num(m, "unigram_entropy_nats"), rep.unigram_entropy_nats, 1e-9, 0, "entropy in meta");
        const cJSON *src = cJSON_GetObjectItemCaseSensitive(m, "sources");
        CHECK(cJSON_IsArray(src) && cJSON_GetArraySize(src) == 1, "sources");
        const cJSON *s0 = cJSON_GetArrayItem(src, 0);
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(s0, "path");
        CHECK(cJSON_IsString(sp) && strcmp(sp->valuestring, in) == 0, "source path");
        CHECK(meta_num(s0, "documents") == 7 && meta_num(s0, "tokens") == (double)ne, "source stats");
        cJSON_Delete(m);
    }

    /* Preparing into a directory inside the input, twice: the second run must not read the first
     * run's output back in. */
    char inner[600];
    snprintf(inner, sizeof inner, "%s/prepared", in);
    for (int run = 0; run < 2; run++) {
        CHECK(run_prepare(inputs, 1, inner, 0.0, &rep, &err) == OZ_OK, "%s", err.msg);
        CHECK(rep.documents == 7 && rep.train_tokens == ne, "run %d inside the input: %llu documents", run,
              (unsigned long long)rep.documents);
    }
    oz_remove_tree(inner, &err);
}

static void test_prepare_entropy(void) {
    /* a a b EOS: p = 1/2, 1/4, 1/4 -> H = 1.5 ln 2. */
    write_str("ent/x.txt", "aab");
    char in[512], out[512];
    path_in(in, sizeof in, "ent/x.txt");
    path_in(out, sizeof out, "out/ent");
    const char *inputs[] = {in};
    oz_prepare_report rep;
    oz_err err;
    CHECK(run_prepare(inputs, 1, out, 0.0, &rep, &err) == OZ_OK, "%s", err.msg);
    CHECK_CLOSE(rep.unigram_entropy_nats, 1.5 * log(2.0), 1e-12, 1e-12, "unigram entropy");
    cJSON *m = load_meta(out);
    CHECK_CLOSE(meta_num(m, "unigram_entropy_nats"), 1.5 * log(2.0), 1e-9, 1e-12, "entropy in meta.json");
    cJSON_Delete(m);
}

/* ~400k tokens of pseudo-text, written as two files. */
static void make_big_corpus(void) {
    oz_rng rng;
    oz_rng_seed(&rng, 42);
    size_t n = 200000;
    char *t = malloc(n);
    for (int f = 0; f < 2; f++) {
        for (size_t i = 0; i < n; i++) t[i] = (char)('a' + oz_rng_below(&rng, 27) % 27);
        for (size_t i = 0; i < n; i++)
            if (t[i] == 'a' + 26) t[i] = ' ';
        write_bytes(f ? "big/2.txt" : "big/1.txt", t, n);
    }
    free(t);
}

static void test_prepare_split(void) {
    make_big_corpus();
    char in[512], out[512];
    path_in(in, sizeof in, "big");
    path_in(out, sizeof out, "out/big");
    const char *inputs[] = {in};
    oz_prepare_report rep;
    oz_err err;
    CHECK(run_prepare(inputs, 1, out, 0.05, &rep, &err) == OZ_OK, "%s", err.msg);
    uint64_t N = 400002;
    CHECK(rep.train_tokens + rep.val_tokens == N, "train+val = all tokens: %llu+%llu",
          (unsigned long long)rep.train_tokens, (unsigned long long)rep.val_tokens);
    double frac = (double)rep.val_tokens / (double)N;
    CHECK(frac > 0.03 && frac < 0.07, "val fraction %.4f near 0.05", frac);
    /* Every 20th block of 4096 goes to val: reassemble and compare with the source text. */
    char p[600];
    oz_shard tr, va;
    snprintf(p, sizeof p, "%s/train.bin", out);
    CHECK(oz_shard_open(&tr, p, &err) == OZ_OK, "%s", err.msg);
    snprintf(p, sizeof p, "%s/val.bin", out);
    CHECK(oz_shard_open(&va, p, &err) == OZ_OK, "%s", err.msg);
    char *all = malloc(N);
    FILE *f;
    char fp[512];
    path_in(fp, sizeof fp, "big/1.txt");
    f = fopen(fp, "rb");
    CHECK(fread(all, 1, 200000, f) == 200000, "read 1");
    fclose(f);
    path_in(fp, sizeof fp, "big/2.txt");
    f = fopen(fp, "rb");
    CHECK(fread(all + 200001, 1, 200000, f) == 200000, "read 2");
    fclose(f);
    uint64_t ti = 0, vi = 0, bad = 0;
    for (uint64_t i = 0; i < N; i++) {
        uint32_t want = (i == 200000 || i == 400001) ? OZ_BYTE_EOS : (unsigned char)all[i];
        int to_val = (i / 4096) % 20 == 19;
        uint32_t got = to_val ? oz_shard_token(&va, vi++) : oz_shard_token(&tr, ti++);
        bad += got != want;
    }
    CHECK(bad == 0 && ti == tr.n_tokens && vi == va.n_tokens, "split follows every 20th block (%llu mismatches)",
          (unsigned long long)bad);
    free(all);
    oz_shard_close(&tr);
    oz_shard_close(&va);

    /* A corpus too small for a whole val block still gets one 513-token window, from its tail. */
    char *small = malloc(2000);
    for (int i = 0; i < 2000; i++) small[i] = (char)('a' + i % 26);
    write_bytes("small/s.txt", small, 2000);
    free(small);
    path_in(in, sizeof in, "small");
    path_in(out, sizeof out, "out/small");
    CHECK(run_prepare(inputs, 1, out, 0.05, &rep, &err) == OZ_OK, "%s", err.msg);
    CHECK(rep.val_tokens == 513 && rep.train_tokens == 2001 - 513, "small corpus split %llu/%llu",
          (unsigned long long)rep.train_tokens, (unsigned long long)rep.val_tokens);
    snprintf(p, sizeof p, "%s/val.bin", out);
    CHECK(oz_shard_open(&va, p, &err) == OZ_OK, "%s", err.msg);
    CHECK(va.n_tokens == 513 && oz_shard_token(&va, 512) == OZ_BYTE_EOS &&
              oz_shard_token(&va, 0) == (uint32_t)('a' + (2000 - 512) % 26),
          "val is the tail of the stream");
    oz_shard_close(&va);
}

static void expect_prepare_error(const char *const *inputs, int n, const char *out, const char *what,
                                 const char *needle) {
    oz_err err;
    oz_status st = run_prepare(inputs, n, out, 0.05, NULL, &err);
    CHECK(st == OZ_ERR_INPUT, "%s: status %d (%s)", what, (int)st, err.msg);
    CHECK(contains(err.msg, needle), "%s: message '%s' lacks '%s'", what, err.msg, needle);
}

static void test_prepare_errors(void) {
    char in[512], out[512], file[512];
    path_in(out, sizeof out, "out/err");
    write_str("badjson/ok.txt", "fine");
    write_str("badjson/bad.jsonl", "{\"text\": \"ok\"}\n{\"text\": nope}\n");
    path_in(in, sizeof in, "badjson");
    const char *inputs[] = {in};
    expect_prepare_error(inputs, 1, out, "bad JSONL line", "bad.jsonl:2");
    char meta[600];
    snprintf(meta, sizeof meta, "%s/meta.json", out);
    CHECK(access(meta, F_OK) != 0, "no meta.json after a failed prepare");

    write_str("badjson2/x.jsonl", "{\"text\": \"ok\"}\n[1, 2]\n");
    path_in(in, sizeof in, "badjson2");
    expect_prepare_error(inputs, 1, out, "JSONL line not an object", "x.jsonl:2");
    write_str("badjson3/y.jsonl", "\n\n{\"txt\": \"ok\"}\n");
    path_in(in, sizeof in, "badjson3");
    expect_prepare_error(inputs, 1, out, "JSONL without text", "y.jsonl:3");

    expect_prepare_error(inputs, 0, out, "no inputs", "no inputs");
    path_in(in, sizeof in, "does/not/exist");
    expect_prepare_error(inputs, 1, out, "missing input", "does/not/exist");

    write_bytes("onlybin/b.bin", "\0\0\0", 3);
    write_str("onlybin/e.txt", "");
    path_in(in, sizeof in, "onlybin");
    expect_prepare_error(inputs, 1, out, "empty corpus", "empty corpus");

    path_in(in, sizeof in, "onlybin/b.bin");
    expect_prepare_error(inputs, 1, out, "explicit binary file", "b.bin");

    path_in(in, sizeof in, "ent/x.txt");
    path_in(file, sizeof file, "ent/x.txt/out");
    expect_prepare_error(inputs, 1, file, "output dir not creatable", "x.txt");
}

/* ---- loader ---- */

static int row_in_shard(const oz_shard *s, const int32_t *row, int T) {
    for (uint64_t p = 0; p + (uint64_t)T <= s->n_tokens; p++) {
        int t = 0;
        while (t < T && oz_shard_token(s, p + (uint64_t)t) == (uint32_t)row[t]) t++;
        if (t == T) return 1;
    }
    return 0;
}

static int same(const int32_t *a, const int32_t *b, size_t n) { return memcmp(a, b, n * sizeof *a) == 0; }

static void test_loader_prepared(void) {
    char dir[512];
    path_in(dir, sizeof dir, "out/big");
    enum { B = 4, T = 64 };
    int32_t in1[B * T], tg1[B * T], in2[B * T], tg2[B * T];
    oz_dataset a, b, c;
    oz_err err = {0};
    CHECK(oz_dataset_open(&a, dir, 7, &err) == OZ_OK, "%s", err.msg);
    CHECK(oz_dataset_open(&b, dir, 7, &err) == OZ_OK, "%s", err.msg);
    CHECK(oz_dataset_open(&c, dir, 8, &err) == OZ_OK, "%s", err.msg);
    CHECK(oz_dataset_vocab_size(&a) == 258 && a.has_tokenizer && a.tokenizer.type == OZ_TOK_BYTE, "vocab/tokenizer");
    CHECK(oz_dataset_check_window(&a, T, &err) == OZ_OK, "%s", err.msg);

    int same_seed = 1, diff_seed = 0, shifted = 1, in_shard = 1;
    for (int it = 0; it < 5; it++) {
        CHECK(oz_dataset_next_batch(&a, B, T, in1, tg1) == OZ_OK, "next_batch");
        oz_dataset_next_batch(&b, B, T, in2, tg2);
        same_seed &= same(in1, in2, B * T) && same(tg1, tg2, B * T);
        oz_dataset_next_batch(&c, B, T, in2, tg2);
        diff_seed |= !same(in1, in2, B * T);
        for (int r = 0; r < B; r++) {
            for (int t = 0; t + 1 < T; t++) shifted &= in1[r * T + t + 1] == tg1[r * T + t];
            /* inputs plus the last target form one contiguous window of the train shard */
            int32_t win[T + 1];
            memcpy(win, in1 + r * T, T * sizeof(int32_t));
            win[T] = tg1[r * T + T - 1];
            if (it == 0) in_shard &= row_in_shard(&a.train, win, T + 1);
        }
    }
    CHECK(same_seed, "same seed gives the same batches");
    CHECK(diff_seed, "different seeds give different batches");
    CHECK(shifted, "targets are inputs shifted by one");
    CHECK(in_shard, "rows are windows of the train shard");

    /* Save the cursor, draw, restore (also into a dataset opened with another seed), draw again. */
    oz_data_cursor cur;
    oz_dataset_get_cursor(&a, &cur);
    CHECK(cur.batches == 5, "cursor counts batches: %llu", (unsigned long long)cur.batches);
    int32_t ref_in[3][B * T], ref_tg[3][B * T];
    for (int k = 0; k < 3; k++) oz_dataset_next_batch(&a, B, T, ref_in[k], ref_tg[k]);
    oz_dataset_set_cursor(&a, &cur);
    oz_dataset_set_cursor(&c, &cur);
    int resumed = 1;
    for (int k = 0; k < 3; k++) {
        oz_dataset_next_batch(&a, B, T, in1, tg1);
        resumed &= same(in1, ref_in[k], B * T) && same(tg1, ref_tg[k], B * T);
        oz_dataset_next_batch(&c, B, T, in1, tg1);
        resumed &= same(in1, ref_in[k], B * T) && same(tg1, ref_tg[k], B * T);
    }
    CHECK(resumed, "restored cursor reproduces the same batches");

    /* Validation windows: consecutive, non-overlapping, deterministic, fewer rows at the end. */
    int W = oz_dataset_val_windows(&a, T);
    CHECK(W == (int)((a.val_tokens - 1) / T) && W > 0, "val windows %d for %llu tokens", W,
          (unsigned long long)a.val_tokens);
    int rows = oz_dataset_val_batch(&a, 0, B, T, in1, tg1);
    int rows2 = oz_dataset_val_batch(&b, 0, B, T, in2, tg2);
    CHECK(rows == B && rows2 == B && same(in1, in2, B * T) && same(tg1, tg2, B * T), "val batch deterministic");
    int ok = 1;
    for (int r = 0; r < B; r++)
        for (int t = 0; t < T; t++) {
            ok &= (uint32_t)in1[r * T + t] == oz_shard_token(&a.val, (uint64_t)r * T + t);
            ok &= (uint32_t)tg1[r * T + t] == oz_shard_token(&a.val, (uint64_t)r * T + t + 1);
        }
    CHECK(ok, "val rows are consecutive non-overlapping windows of the val shard");
    rows = oz_dataset_val_batch(&a, W - 2, B, T, in1, tg1);
    CHECK(rows == 2, "last val batch is short: %d rows", rows);
    CHECK(oz_dataset_val_batch(&a, W, B, T, in1, tg1) == 0, "past the end: no rows");
    oz_dataset_close(&a);
    oz_dataset_close(&b);
    oz_dataset_close(&c);
}

static void test_loader_random(void) {
    enum { B = 3, T = 50, V = 1000 };
    int32_t in1[B * T], tg1[B * T], in2[B * T], tg2[B * T];
    oz_dataset a, b, c;
    oz_err err = {0};
    CHECK(oz_dataset_open(&a, "random:1000", 1, &err) == OZ_OK, "%s", err.msg);
    CHECK(oz_dataset_open(&b, "random:1000", 1, &err) == OZ_OK, "%s", err.msg);
    CHECK(oz_dataset_open(&c, "random:1000", 2, &err) == OZ_OK, "%s", err.msg);
    CHECK(oz_dataset_vocab_size(&a) == V && oz_dataset_check_window(&a, 4096, &err) == OZ_OK, "random vocab");
    int in_range = 1, det = 1, diff = 0, shifted = 1;
    for (int it = 0; it < 4; it++) {
        oz_dataset_next_batch(&a, B, T, in1, tg1);
        oz_dataset_next_batch(&b, B, T, in2, tg2);
        det &= same(in1, in2, B * T) && same(tg1, tg2, B * T);
        oz_dataset_next_batch(&c, B, T, in2, tg2);
        diff |= !same(in1, in2, B * T);
        for (int i = 0; i < B * T; i++) in_range &= in1[i] >= 0 && in1[i] < V && tg1[i] >= 0 && tg1[i] < V;
        for (int r = 0; r < B; r++)
            for (int t = 0; t + 1 < T; t++) shifted &= in1[r * T + t + 1] == tg1[r * T + t];
    }
    CHECK(in_range && det && diff && shifted, "random:V range %d, determinism %d, seed dependence %d, shift %d",
          in_range, det, diff, shifted);
    CHECK(oz_dataset_val_windows(&a, T) == OZ_RANDOM_VAL_WINDOWS, "random val windows");
    /* Validation ignores the training seed and the training draws. */
    int r1 = oz_dataset_val_batch(&a, 10, B, T, in1, tg1);
    int r2 = oz_dataset_val_batch(&c, 10, B, T, in2, tg2);
    CHECK(r1 == B && r2 == B && same(in1, in2, B * T) && same(tg1, tg2, B * T), "random val deterministic");
    CHECK(!same(in1, in1 + T, T), "random val windows differ");
    CHECK(oz_dataset_val_batch(&a, OZ_RANDOM_VAL_WINDOWS - 1, B, T, in1, tg1) == 1, "random val runs out");
    oz_dataset_close(&a);
    oz_dataset_close(&b);
    oz_dataset_close(&c);

    const char *bad[] = {"random:0", "random:", "random:12x", "random:99999999999"};
    for (int i = 0; i < 4; i++) {
        oz_err_clear(&err);
        CHECK(oz_dataset_open(&a, bad[i], 1, &err) == OZ_ERR_INPUT && contains(err.msg, bad[i]), "bad spec %s: %s",
              bad[i], err.msg);
    }
}

static void test_loader_errors(void) {
    char dir[512];
    path_in(dir, sizeof dir, "out/small"); /* 1488 train, 513 val tokens */
    oz_dataset ds;
    oz_err err = {0};
    CHECK(oz_dataset_open(&ds, dir, 1, &err) == OZ_OK, "%s", err.msg);
    CHECK(oz_dataset_check_window(&ds, 512, &err) == OZ_OK, "T=512 fits: %s", err.msg);
    CHECK(oz_dataset_check_window(&ds, 1000, &err) == OZ_ERR_INPUT && contains(err.msg, "513") &&
              contains(err.msg, "1001") && contains(err.msg, "val.bin"),
          "val too short: %s", err.msg);
    oz_err_clear(&err);
    CHECK(oz_dataset_check_window(&ds, 1488, &err) == OZ_ERR_INPUT && contains(err.msg, "1488") &&
              contains(err.msg, "1489") && contains(err.msg, "train.bin"),
          "train too short: %s", err.msg);
    int32_t x[2000], y[2000];
    oz_data_cursor before, after;
    oz_dataset_get_cursor(&ds, &before);
    CHECK(oz_dataset_next_batch(&ds, 1, 1488, x, y) == OZ_ERR_INPUT, "next_batch refuses a too-long window");
    oz_dataset_get_cursor(&ds, &after);
    CHECK(memcmp(&before, &after, sizeof before) == 0, "a refused batch draws nothing");
    CHECK(oz_dataset_next_batch(&ds, 1, 1487, x, y) == OZ_OK, "longest window fits");
    CHECK(oz_dataset_val_windows(&ds, 512) == 1 && oz_dataset_val_windows(&ds, 513) == 0, "val windows at the edge");
    oz_dataset_close(&ds);

    oz_err_clear(&err);
    path_in(dir, sizeof dir, "no-such-dataset");
    CHECK(oz_dataset_open(&ds, dir, 1, &err) == OZ_ERR_INPUT && contains(err.msg, dir), "missing dataset: %s", err.msg);
    oz_err_clear(&err);
    path_in(dir, sizeof dir, "corpus");
    CHECK(oz_dataset_open(&ds, dir, 1, &err) == OZ_ERR_INPUT && contains(err.msg, "meta.json"), "not prepared: %s",
          err.msg);

    /* meta.json and a shard from different prepare runs are caught. */
    char src[600], dst[600];
    path_in(dir, sizeof dir, "out/ent");
    snprintf(src, sizeof src, "%s/out/tree/train.bin", g_root);
    snprintf(dst, sizeof dst, "%s/train.bin", dir);
    char *data;
    size_t n;
    oz_read_file(src, &data, &n, &err);
    oz_atomic_write(dst, data, n, &err);
    free(data);
    oz_err_clear(&err);
    CHECK(oz_dataset_open(&ds, dir, 1, &err) == OZ_ERR_INPUT && contains(err.msg, "train.bin"), "stale shard: %s",
          err.msg);
}

int main(void) {
    snprintf(g_root, sizeof g_root, "/tmp/ounce-test-data-XXXXXX");
    if (!mkdtemp(g_root)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_tokenizer);
    RUN(test_shard_round_trip);
    RUN(test_shard_corrupt);
    RUN(test_prepare_tree);
    RUN(test_prepare_entropy);
    RUN(test_prepare_split);
    RUN(test_prepare_errors);
    RUN(test_loader_prepared);
    RUN(test_loader_random);
    RUN(test_loader_errors);
    oz_err err = {0};
    oz_remove_tree(g_root, &err);
    return oz_test_finish("test_data");
}
