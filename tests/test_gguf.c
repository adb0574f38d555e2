/* GGUF: the reader against files the `gguf` Python package wrote (tests/fixtures/gguf, made by
 * tools/gen_gguf_fixtures.py): metadata of every value type, every tensor type ounce reads
 * dequantized to the package's values; corrupt files refused with one line; models converted as
 * llama.cpp converts them giving transformers' logits; tokenizers from GGUF metadata encoding as
 * the tokenizers library does; ounce -> GGUF -> ounce round trips. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/backend.h"
#include "data/tokenizer.h"
#include "harness.h"
#include "io/atomic.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "model/gguf_model.h"
#include "model/hf_model.h"
#include "model/llama.h"
#include "numeric/ggml_quant.h"

#define FIX "tests/fixtures/gguf"
#define HF_FIX "tests/fixtures/hf"
#define TOK_FIX "tests/fixtures/tokenizers"

static oz_backend be;
static char g_tmp[64];

static const char *tmp_path(char *buf, size_t cap, const char *name) {
    snprintf(buf, cap, "%s/%s", g_tmp, name);
    return buf;
}

static int one_line(const char *msg) { return msg[0] && !strchr(msg, '\n'); }

/* ---- metadata and tensor types ---- */

static void test_metadata(void) {
    oz_gguf g;
    oz_err err = {0};
    if (oz_gguf_open(&g, FIX "/types.gguf", &err) != OZ_OK) {
        CHECK(0, "%s", err.msg);
        return;
    }
    CHECK(g.version == 3 && g.alignment == 32, "version %u alignment %u", g.version, g.alignment);
    uint64_t u;
    double d;
    int b;
    oz_gguf_str s;
    CHECK(oz_gguf_get_uint(oz_gguf_find(&g, "test.u8"), &u) && u == 200, "u8");
    CHECK(oz_gguf_get_number(oz_gguf_find(&g, "test.i8"), &d) && d == -100, "i8");
    CHECK(!oz_gguf_get_uint(oz_gguf_find(&g, "test.i8"), &u), "a negative value is no uint");
    CHECK(oz_gguf_get_uint(oz_gguf_find(&g, "test.u16"), &u) && u == 60000, "u16");
    CHECK(oz_gguf_get_number(oz_gguf_find(&g, "test.i16"), &d) && d == -30000, "i16");
    CHECK(oz_gguf_get_uint(oz_gguf_find(&g, "test.u32"), &u) && u == 4000000000u, "u32");
    CHECK(oz_gguf_get_number(oz_gguf_find(&g, "test.i32"), &d) && d == -2000000000, "i32");
    CHECK(oz_gguf_get_number(oz_gguf_find(&g, "test.f32"), &d) && d == 0.25, "f32");
    CHECK(oz_gguf_get_bool(oz_gguf_find(&g, "test.bool"), &b) && b == 1, "bool");
    CHECK(oz_gguf_get_str(oz_gguf_find(&g, "test.str"), &s) && s.len == 6 && memcmp(s.s, "h\xc3\xa9llo", 6) == 0,
          "string");
    CHECK(oz_gguf_get_uint(oz_gguf_find(&g, "test.u64"), &u) && u == (1ull << 40), "u64");
    CHECK(oz_gguf_get_number(oz_gguf_find(&g, "test.i64"), &d) && d == -(double)(1ull << 40), "i64");
    CHECK(oz_gguf_get_number(oz_gguf_find(&g, "test.f64"), &d) && d == 1.0 / 3.0, "f64");
    CHECK(oz_gguf_get_str(oz_gguf_find(&g, "general.architecture"), &s) && s.len == 10, "architecture");
    const oz_gguf_kv *strs = oz_gguf_find(&g, "test.strs");
    oz_gguf_str arr[3];
    CHECK(strs && strs->n == 3 && oz_gguf_array_strings(strs, arr) && arr[0].len == 1 && arr[1].len == 0 &&
              arr[2].len == 3 && memcmp(arr[2].s, "ccc", 3) == 0, "string array");
    const oz_gguf_kv *ints = oz_gguf_find(&g, "test.ints");
    CHECK(ints && ints->n == 3 && oz_gguf_array_number(ints, 1, &d) && d == -2, "int array");
    CHECK(!oz_gguf_array_number(ints, 3, &d), "past the array's end");
    const oz_gguf_kv *fl = oz_gguf_find(&g, "test.floats");
    CHECK(fl && oz_gguf_array_number(fl, 1, &d) && d == 1.5, "float array");
    CHECK(oz_gguf_find(&g, "test.nope") == NULL, "missing key");
    oz_gguf_close(&g);
}

/* Every tensor type against the values the gguf package dequantizes it to: exactly (both decode
 * the same bits with float arithmetic; a scale product may differ by an ulp). */
static void test_types(void) {
    oz_gguf g;
    oz_safetensors st;
    oz_err err = {0};
    if (oz_gguf_open(&g, FIX "/types.gguf", &err) != OZ_OK || oz_safetensors_open(&st, FIX "/types_expected.safetensors", &err) != OZ_OK) {
        CHECK(0, "%s", err.msg);
        return;
    }
    static const char *const names[] = {"t.f32", "t.f16", "t.bf16", "t.q8_0", "t.q4_0", "t.q4_1",
                                        "t.q4_k", "t.q5_k", "t.q6_k", "t.vec", "t.cube"};
    static const uint32_t types[] = {OZ_GGML_F32, OZ_GGML_F16, OZ_GGML_BF16, OZ_GGML_Q8_0, OZ_GGML_Q4_0, OZ_GGML_Q4_1,
                                     OZ_GGML_Q4_K, OZ_GGML_Q5_K, OZ_GGML_Q6_K, OZ_GGML_F32, OZ_GGML_F16};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const oz_gguf_tensor *t = oz_gguf_find_tensor(&g, names[i]);
        const oz_st_tensor *e = oz_safetensors_find(&st, names[i]);
        CHECK(t && e, "%s missing", names[i]);
        if (!t || !e) continue;
        CHECK(t->type == types[i], "%s: type %u", names[i], t->type);
        /* GGUF dims are innermost first, safetensors shapes outermost first. */
        int dims_ok = (int)t->ndim == e->ndim;
        for (int d = 0; dims_ok && d < e->ndim; d++) dims_ok = (int64_t)t->dims[t->ndim - 1 - d] == e->shape[d];
        CHECK(dims_ok && t->numel == e->numel, "%s: dims", names[i]);
        float *got = malloc(t->numel * sizeof *got), *want = malloc(e->numel * sizeof *want);
        oz_ggml_dequantize(t->type, t->data, got, t->numel);
        oz_st_tensor_to_f32(e, want, e->numel, &err);
        double worst = 0, scale = 0;
        for (size_t k = 0; k < t->numel; k++) {
            worst = fmax(worst, fabs((double)got[k] - want[k]));
            scale = fmax(scale, fabs(want[k]));
        }
        CHECK(worst <= 1e-6 * scale && scale > 0, "%s: max |ours - gguf's| = %g (values up to %g)", names[i], worst, scale);
        free(got);
        free(want);
    }
    oz_safetensors_close(&st);
    oz_gguf_close(&g);
}

/* Encoding then decoding is the format's own round trip: Q8_0 within half a step of its scale,
 * Q4_0 within a step, halves within their rounding. */
static void test_encode(void) {
    enum { N = 256 };
    float x[N], y[N];
    for (int i = 0; i < N; i++) x[i] = (float)sin(i * 0.37) * (i < 32 ? 4.0f : 0.1f);
    x[40] = 0;
    static const uint32_t types[] = {OZ_GGML_F32, OZ_GGML_F16, OZ_GGML_BF16, OZ_GGML_Q8_0, OZ_GGML_Q4_0};
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        uint8_t buf[N * 4];
        CHECK(oz_ggml_type_writable(types[t]), "%s writable", oz_ggml_type_name(types[t]));
        oz_ggml_quantize(types[t], x, buf, N);
        oz_ggml_dequantize(types[t], buf, y, N);
        int ok = 1;
        for (int b = 0; b < N / 32; b++) {
            float amax = 0;
            for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[32 * b + j]));
            double tol = types[t] == OZ_GGML_F32 ? 0 : types[t] == OZ_GGML_F16 ? amax / 1024.0
                       : types[t] == OZ_GGML_BF16 ? amax / 128.0 : types[t] == OZ_GGML_Q8_0 ? amax / 127.0 * 0.51
                                                                                               : amax / 8.0 * 1.01;
            for (int j = 0; j < 32; j++) ok &= fabs(x[32 * b + j] - y[32 * b + j]) <= tol;
        }
        CHECK(ok, "%s: decode(encode(x)) is not within the format's step", oz_ggml_type_name(types[t]));
    }
    CHECK(oz_ggml_type_from_name("q8_0") == OZ_GGML_Q8_0 && oz_ggml_type_from_name("BF16") == OZ_GGML_BF16 &&
              oz_ggml_type_from_name("q4_k") == -1 && oz_ggml_type_from_name("f3") == -1, "type names");
}

/* ---- corrupt files ---- */

/* A small valid file written by ounce's writer: two keys, two tensors. */
static size_t g_meta_len;
static void write_small(const char *path) {
    oz_gguf_meta m = {0};
    oz_gguf_meta_str(&m, "general.architecture", "llama");
    oz_gguf_meta_strs(&m, "tokenizer.ggml.tokens", (const char *const[]){"a", "bb"}, 2);
    g_meta_len = m.len;
    oz_gguf_tensor_spec specs[2] = {{"a.weight", OZ_GGML_F32, 2, {4, 2, 1, 1}}, {"b.weight", OZ_GGML_Q8_0, 1, {64, 1, 1, 1}}};
    oz_gguf_writer *w;
    oz_err err = {0};
    float a[8] = {1, 2, 3, 4, 5, 6, 7, 8}, bv[64];
    for (int i = 0; i < 64; i++) bv[i] = (float)i;
    uint8_t bq[68];
    oz_ggml_quantize(OZ_GGML_Q8_0, bv, bq, 64);
    oz_status st = oz_gguf_write_begin(&w, path, &m, specs, 2, 32, &err);
    if (st == OZ_OK) st = oz_gguf_write_tensor(w, a, sizeof a, &err);
    if (st == OZ_OK) st = oz_gguf_write_tensor(w, bq, sizeof bq, &err);
    if (st == OZ_OK) st = oz_gguf_write_finish(w, &err);
    else oz_gguf_write_abort(w);
    CHECK(st == OZ_OK, "writing %s: %s", path, err.msg);
    oz_gguf_meta_free(&m);
}

static uint8_t *slurp(const char *path, size_t *n) {
    char *d = NULL;
    oz_err err = {0};
    if (oz_read_file(path, &d, n, &err) != OZ_OK) return NULL;
    return (uint8_t *)d;
}

/* Writes bytes to path and opens it: must fail with OZ_ERR_INPUT, one line, naming the file and
 * containing `what` (NULL: any message). */
static void expect_refused(const char *path, const uint8_t *bytes, size_t n, const char *what, const char *label) {
    oz_err err = {0};
    CHECK(oz_atomic_write(path, bytes, n, &err) == OZ_OK, "%s", err.msg);
    oz_gguf g;
    oz_status st = oz_gguf_open(&g, path, &err);
    CHECK(st == OZ_ERR_INPUT, "%s: status %d (%s)", label, st, err.msg);
    if (st == OZ_OK) {
        oz_gguf_close(&g);
        return;
    }
    CHECK(one_line(err.msg) && strstr(err.msg, path), "%s: message \"%s\"", label, err.msg);
    if (what) CHECK(strstr(err.msg, what) != NULL, "%s: \"%s\" lacks \"%s\"", label, err.msg, what);
}

static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

static void test_corrupt(void) {
    char good[256], bad[256];
    tmp_path(good, sizeof good, "small.gguf");
    tmp_path(bad, sizeof bad, "bad.gguf");
    write_small(good);
    size_t n;
    uint8_t *f = slurp(good, &n), *c = malloc(n + 64);
    if (!f || !c) {
        CHECK(0, "cannot read %s", good);
        free(f);
        free(c);
        return;
    }
    oz_gguf g;
    oz_err err = {0};
    CHECK(oz_gguf_open(&g, good, &err) == OZ_OK, "the small file opens: %s", err.msg);
    size_t info = 24 + g_meta_len; /* the first tensor info */
    size_t data = g.data_offset;
    /* The file may end in padding after the last tensor; cutting that off leaves a valid file. */
    size_t end = g.n_tensors == 2 ? (size_t)((const uint8_t *)g.tensors[1].data - (const uint8_t *)g.map) + g.tensors[1].nbytes : n;
    if (g.map) oz_gguf_close(&g);

    /* Every truncation, from an empty file to one byte short of the last tensor's end. */
    int all_refused = 1;
    for (size_t k = 0; k < end; k++) {
        CHECK(oz_atomic_write(bad, f, k, &err) == OZ_OK, "%s", err.msg);
        oz_err e = {0};
        oz_status st = oz_gguf_open(&g, bad, &e);
        if (st == OZ_OK) oz_gguf_close(&g);
        if (st != OZ_ERR_INPUT || !one_line(e.msg)) {
            all_refused = 0;
            CHECK(0, "truncated at %zu of %zu: status %d \"%s\"", k, n, st, e.msg);
            break;
        }
    }
    CHECK(all_refused, "every truncation refused");
    expect_refused(bad, f, 100, "truncated", "truncated header");

#define CASE(label, what, edit)     \
    do {                            \
        memcpy(c, f, n);            \
        edit;                       \
        expect_refused(bad, c, n, what, label); \
    } while (0)
    CASE("magic", "not a GGUF", c[0] = 'X');
    CASE("version", "version", put32(c + 4, 7));
    CASE("huge tensor count", "cannot fit", put64(c + 8, 1ull << 60));
    CASE("huge key count", "cannot fit", put64(c + 16, 1ull << 60));
    CASE("huge key length", "truncated", put64(c + 24, 1ull << 62));
    /* The second key's array: its length sits after key length + key + type + elem type. */
    size_t arr = 24 + 8 + strlen("general.architecture") + 4 + 8 + strlen("llama") + 8 +
                 strlen("tokenizer.ggml.tokens") + 4 + 4;
    CASE("huge array length", "truncated", put64(c + arr, 1ull << 61));
    CASE("huge string in an array", "truncated", put64(c + arr + 8, 1ull << 50));
    CASE("unknown value type", "unknown value type", put32(c + 24 + 8 + strlen("general.architecture"), 99));
    size_t ti = info + 8 + strlen("a.weight");       /* ndim of the first tensor */
    CASE("zero dims", "dimensions", put32(c + ti, 0));
    CASE("five dims", "dimensions", put32(c + ti, 5));
    CASE("zero dimension", "dimension", put64(c + ti + 4, 0));
    CASE("unknown tensor type", "unknown ggml type", put32(c + ti + 4 + 16, 99));
    CASE("unsupported tensor type", "Q2_K", put32(c + ti + 4 + 16, 10));
    CASE("offset past the end", "past the end", put64(c + ti + 4 + 16 + 4, 1ull << 40));
    CASE("unaligned offset", "unaligned", put64(c + ti + 4 + 16 + 4, 4));
    size_t ti2 = ti + 4 + 16 + 4 + 8 + 8 + strlen("b.weight"); /* ndim of the second tensor */
    CASE("rows not whole blocks", "block", put64(c + ti2 + 4, 48));
    CASE("huge dims", "past the end", put64(c + ti2 + 4, 1ull << 40));
    CASE("overflowing dims", NULL, (put32(c + ti + 0, 2), put64(c + ti + 4, 1ull << 40), put64(c + ti + 12, 1ull << 40)));
#undef CASE
    /* Cut inside the tensor data: the last tensor no longer fits. */
    expect_refused(bad, f, data + 40, "past the end", "data cut short");
    free(f);
    free(c);
}

int main(void) {
    oz_err err = {0};
    if (oz_backend_open(&be, "cpu", 1, &err) != OZ_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    snprintf(g_tmp, sizeof g_tmp, "/tmp/oz_gguf_XXXXXX");
    if (!mkdtemp(g_tmp)) return 1;
    RUN(test_metadata);
    RUN(test_types);
    RUN(test_encode);
    RUN(test_corrupt);
    oz_remove_tree(g_tmp, &err);
    be.destroy(&be);
    return oz_test_finish("test_gguf");
}
