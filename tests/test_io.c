/* Tests for src/io: safetensors round trips and validation, half-precision conversions,
 * compatibility with files from Python's safetensors, and the atomic-write helpers. Everything
 * happens in a fresh mkdtemp directory that is removed at the end. */
#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "io/atomic.h"
#include "io/safetensors.h"

static char g_tmp[256]; /* per-run scratch directory, set once in main */

static void tmp_path(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", g_tmp, name); }

static int write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = fwrite(data, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

static int file_equals(const char *path, const char *expect) {
    char *data;
    size_t n;
    oz_err err;
    oz_err_clear(&err);
    if (oz_read_file(path, &data, &n, &err) != OZ_OK) return 0;
    int ok = n == strlen(expect) && memcmp(data, expect, n) == 0;
    free(data);
    return ok;
}

/* Number of directory entries (besides . and ..) whose name contains `needle` ("" for all). */
static int count_entries(const char *dir, const char *needle) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        if (strstr(de->d_name, needle)) n++;
    }
    closedir(d);
    return n;
}

static int exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
}

/* Checks that opening `path` fails as a user error naming the file and mentioning `keyword`. */
static void expect_bad_file(const char *path, const char *keyword, const char *what) {
    oz_safetensors st;
    oz_err err;
    oz_err_clear(&err);
    oz_status s = oz_safetensors_open(&st, path, &err);
    CHECK(s == OZ_ERR_INPUT, "%s: status %s (%s)", what, oz_status_name(s), err.msg);
    CHECK(strstr(err.msg, path) != NULL, "%s: message lacks the file name: %s", what, err.msg);
    CHECK(strstr(err.msg, keyword) != NULL, "%s: message lacks '%s': %s", what, keyword, err.msg);
    CHECK(strchr(err.msg, '\n') == NULL, "%s: message is not one line", what);
    if (s == OZ_OK) oz_safetensors_close(&st);
}

/* A hand-made safetensors file: header text as given (unpadded) + data_len bytes of 0xAB. */
static void write_raw_st(const char *path, const char *header, size_t data_len) {
    size_t hl = strlen(header), total = 8 + hl + data_len;
    unsigned char *buf = malloc(total);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, header, hl);
    memset(buf + 8 + hl, 0xAB, data_len);
    CHECK(write_bytes(path, buf, total), "writing %s", path);
    free(buf);
}

/* ---------------------------------------------------------------------------------------- */

static void test_dtypes(void) {
    static const char *names[] = {"F32", "F16", "BF16", "F64", "I32", "I64", "U8", "I8"};
    static const size_t sizes[] = {4, 2, 2, 8, 4, 8, 1, 1};
    for (int i = 0; i < OZ_DT_COUNT; i++) {
        oz_dtype dt;
        CHECK(!strcmp(oz_dtype_name((oz_dtype)i), names[i]), "name of %d", i);
        CHECK(oz_dtype_size((oz_dtype)i) == sizes[i], "size of %s", names[i]);
        CHECK(oz_dtype_from_name(names[i], &dt) && dt == (oz_dtype)i, "parse %s", names[i]);
        CHECK(oz_dtype_is_float((oz_dtype)i) == (i <= OZ_DT_F64), "is_float %s", names[i]);
    }
    oz_dtype dt;
    CHECK(!oz_dtype_from_name("F8_E4M3", &dt), "unknown dtype parsed");
    CHECK(!oz_dtype_from_name("f32", &dt), "dtype names are case-sensitive");
}

static double f16_value(uint16_t h) { return oz_f16_to_f32(h); }
static double bf16_value(uint16_t h) { return oz_bf16_to_f32(h); }

/* Is `got` the round-to-nearest-even encoding of f? Checked against both magnitude neighbours,
 * which needs no second implementation of the rounding. */
static int is_rne(float f, uint16_t got, double (*value)(uint16_t), uint16_t inf_bits) {
    uint16_t mag = got & 0x7fff;
    if (mag >= inf_bits) return 0; /* callers only pass values that must stay finite */
    double x = fabs((double)f), d = fabs(x - fabs(value(got)));
    if (((got >> 15) & 1) != (f < 0 || (f == 0 && signbit(f))) && mag != 0) return 0;
    for (int step = -1; step <= 1; step += 2) {
        int nm = (int)mag + step;
        if (nm < 0 || nm >= inf_bits) continue;
        double dn = fabs(x - value((uint16_t)nm));
        if (dn < d) return 0;
        if (dn == d && (mag & 1)) return 0; /* tie must go to the even encoding */
    }
    return 1;
}

static void test_half_conversions(void) {
    /* f16 -> f32 known values */
    CHECK(oz_f16_to_f32(0x3c00) == 1.0f, "f16 1");
    CHECK(oz_f16_to_f32(0xc000) == -2.0f, "f16 -2");
    CHECK(oz_f16_to_f32(0x7bff) == 65504.0f, "f16 max");
    CHECK(oz_f16_to_f32(0x0400) == ldexpf(1, -14), "f16 min normal");
    CHECK(oz_f16_to_f32(0x0001) == ldexpf(1, -24), "f16 min subnormal");
    CHECK(oz_f16_to_f32(0x03ff) == ldexpf(1023, -24), "f16 max subnormal");
    CHECK(oz_f16_to_f32(0x3555) == 0.333251953125f, "f16 1/3");
    CHECK(oz_f16_to_f32(0x7c00) == INFINITY && oz_f16_to_f32(0xfc00) == -INFINITY, "f16 inf");
    CHECK(isnan(oz_f16_to_f32(0x7e00)), "f16 nan");
    CHECK(oz_f16_to_f32(0x8000) == 0 && signbit(oz_f16_to_f32(0x8000)), "f16 -0");
    /* f32 -> f16 rounding */
    CHECK(oz_f32_to_f16(1.0f) == 0x3c00, "to f16 1");
    CHECK(oz_f32_to_f16(1.0f + ldexpf(1, -11)) == 0x3c00, "tie rounds to even (down)");
    CHECK(oz_f32_to_f16(1.0f + 3 * ldexpf(1, -11)) == 0x3c02, "tie rounds to even (up)");
    CHECK(oz_f32_to_f16(65504.0f) == 0x7bff, "max");
    CHECK(oz_f32_to_f16(65519.0f) == 0x7bff, "below overflow threshold");
    CHECK(oz_f32_to_f16(65520.0f) == 0x7c00, "overflow threshold");
    CHECK(oz_f32_to_f16(1e10f) == 0x7c00 && oz_f32_to_f16(-1e10f) == 0xfc00, "overflow");
    CHECK(oz_f32_to_f16(ldexpf(1, -25)) == 0x0000, "2^-25 ties to zero");
    CHECK(oz_f32_to_f16(ldexpf(1.5f, -25)) == 0x0001, "1.5*2^-25 rounds up");
    CHECK(oz_f32_to_f16(ldexpf(3, -25)) == 0x0002, "subnormal tie to even");
    CHECK(oz_f32_to_f16(ldexpf(2047, -25)) == 0x0400, "carry into smallest normal");
    CHECK(oz_f32_to_f16(-0.0f) == 0x8000, "-0");
    CHECK(oz_f32_to_f16(INFINITY) == 0x7c00, "inf");
    uint16_t hn = oz_f32_to_f16(NAN);
    CHECK((hn & 0x7c00) == 0x7c00 && (hn & 0x3ff) != 0, "nan stays nan: %04x", hn);
    /* bf16 */
    CHECK(oz_bf16_to_f32(0x3f80) == 1.0f && oz_bf16_to_f32(0xc020) == -2.5f, "bf16 values");
    CHECK(oz_f32_to_bf16(1.0f) == 0x3f80, "to bf16 1");
    CHECK(oz_f32_to_bf16(1.0f + ldexpf(1, -8)) == 0x3f80, "bf16 tie to even (down)");
    CHECK(oz_f32_to_bf16(1.0f + 3 * ldexpf(1, -8)) == 0x3f82, "bf16 tie to even (up)");
    CHECK(oz_f32_to_bf16(1.0f + ldexpf(1, -8) + ldexpf(1, -20)) == 0x3f81, "bf16 above tie");
    CHECK(oz_f32_to_bf16(3.4e38f) == 0x7f80, "bf16 overflow to inf");
    uint16_t bn = oz_f32_to_bf16(NAN);
    CHECK((bn & 0x7f80) == 0x7f80 && (bn & 0x7f) != 0, "bf16 nan stays nan: %04x", bn);
    uint32_t snan_bits = 0x7f800001u; /* payload only in the low half: truncation would give inf */
    float snan;
    memcpy(&snan, &snan_bits, 4);
    CHECK(isnan(oz_bf16_to_f32(oz_f32_to_bf16(snan))), "bf16 low-payload nan");

    /* Every finite half value survives half -> f32 -> half. */
    int bad16 = 0, badbf = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) != 0x7c00 && oz_f32_to_f16(oz_f16_to_f32((uint16_t)h)) != h) bad16++;
        if ((h & 0x7f80) != 0x7f80 && oz_f32_to_bf16(oz_bf16_to_f32((uint16_t)h)) != h) badbf++;
    }
    CHECK(bad16 == 0, "%d f16 values do not round-trip", bad16);
    CHECK(badbf == 0, "%d bf16 values do not round-trip", badbf);

    /* Random f32 bit patterns, weighted toward the interesting exponent ranges. */
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    int bad_rne16 = 0, bad_rnebf = 0, bad_native = 0;
    for (int i = 0; i < 1000000; i++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        uint32_t bits = (uint32_t)rng;
        if (i & 1) bits = (bits & 0x807fffffu) | ((uint32_t)(96 + (rng >> 40) % 48) << 23); /* |x| ~ 2^-31..2^16 */
        float f;
        memcpy(&f, &bits, 4);
        if (isnan(f) || isinf(f)) continue;
        if (fabsf(f) < 65520.0f && !is_rne(f, oz_f32_to_f16(f), f16_value, 0x7c00)) bad_rne16++;
        if (fabsf(f) < 3.38e38f && !is_rne(f, oz_f32_to_bf16(f), bf16_value, 0x7f80)) bad_rnebf++;
#ifdef __FLT16_MAX__
        _Float16 ref = (_Float16)f;
        uint16_t rb;
        memcpy(&rb, &ref, 2);
        if (rb != oz_f32_to_f16(f)) bad_native++;
#endif
    }
    CHECK(bad_rne16 == 0, "%d f32->f16 results are not round-to-nearest-even", bad_rne16);
    CHECK(bad_rnebf == 0, "%d f32->bf16 results are not round-to-nearest-even", bad_rnebf);
    CHECK(bad_native == 0, "%d f32->f16 results differ from the compiler's _Float16", bad_native);
}

/* ---------------------------------------------------------------------------------------- */

static void test_roundtrip(void) {
    float f32[6] = {1.5f, -2.0f, 3.25e-20f, 1e30f, 0.0f, 0.0f};
    uint32_t nan_bits = 0x7fc01234u; /* a NaN payload must survive bit-exactly */
    memcpy(&f32[5], &nan_bits, 4);
    uint16_t f16[3] = {0x3c00, 0x8001, 0x7bff};
    uint16_t bf16[4] = {0x3f80, 0xc020, 0x0001, 0x7f7f};
    double f64[2] = {3.141592653589793, -1e-300};
    int32_t i32[3] = {INT32_MIN, 0, INT32_MAX};
    int64_t i64[2] = {INT64_MIN, (int64_t)1 << 50};
    uint8_t u8[5] = {0, 1, 127, 128, 255};
    int8_t i8[3] = {-128, 0, 127};
    float scalar = 42.5f;

    oz_st_entry e[] = {
        {"layers.0.w", OZ_DT_F32, 2, {2, 3}, f32},
        {"f16", OZ_DT_F16, 1, {3}, f16},
        {"bf16", OZ_DT_BF16, 2, {2, 2}, bf16},
        {"f64", OZ_DT_F64, 1, {2}, f64},
        {"i32", OZ_DT_I32, 1, {3}, i32},
        {"i64", OZ_DT_I64, 1, {2}, i64},
        {"u8", OZ_DT_U8, 1, {5}, u8},
        {"i8", OZ_DT_I8, 3, {1, 3, 1}, i8},
        {"scalar", OZ_DT_F32, 0, {0}, &scalar},
        {"empty \"quoted\"", OZ_DT_F32, 2, {0, 4}, NULL},
    };
    int n = (int)(sizeof e / sizeof e[0]);
    char path[300];
    tmp_path(path, sizeof path, "rt.safetensors");
    oz_err err;
    oz_err_clear(&err);
    CHECK(oz_safetensors_write(path, e, n, NULL, &err) == OZ_OK, "write: %s", err.msg);
    CHECK(count_entries(g_tmp, ".tmp.") == 0, "temp file left behind");

    /* Header length is a multiple of 8, so the data of a file starts 8-aligned. */
    char *raw;
    size_t raw_n;
    CHECK(oz_read_file(path, &raw, &raw_n, &err) == OZ_OK, "read raw: %s", err.msg);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | (unsigned char)raw[i];
    CHECK(hlen % 8 == 0, "header length %llu not padded", (unsigned long long)hlen);
    CHECK(raw_n == 8 + hlen + 24 + 6 + 8 + 16 + 12 + 16 + 5 + 3 + 4, "file size %zu", raw_n);
    free(raw);

    oz_safetensors st;
    oz_err_clear(&err);
    CHECK(oz_safetensors_open(&st, path, &err) == OZ_OK, "open: %s", err.msg);
    if (err.status != OZ_OK) return;
    CHECK(st.n_tensors == n, "tensor count %d", st.n_tensors);
    const unsigned char *prev_end = NULL;
    for (int i = 0; i < n && i < st.n_tensors; i++) {
        const oz_st_tensor *t = &st.tensors[i];
        CHECK(!strcmp(t->name, e[i].name), "order: %s vs %s", t->name, e[i].name);
        CHECK(oz_safetensors_find(&st, e[i].name) == t, "find %s", e[i].name);
        CHECK(t->dtype == e[i].dtype && t->ndim == e[i].ndim, "%s dtype/ndim", e[i].name);
        size_t numel = 1;
        for (int d = 0; d < e[i].ndim; d++) {
            CHECK(t->shape[d] == e[i].shape[d], "%s shape[%d]", e[i].name, d);
            numel *= (size_t)e[i].shape[d];
        }
        CHECK(t->numel == numel, "%s numel %zu", e[i].name, t->numel);
        CHECK(t->nbytes == numel * oz_dtype_size(e[i].dtype), "%s nbytes", e[i].name);
        CHECK(t->nbytes == 0 || memcmp(t->data, e[i].data, t->nbytes) == 0, "%s bytes differ", e[i].name);
        if (prev_end) CHECK((const unsigned char *)t->data == prev_end, "%s offsets not increasing", e[i].name);
        prev_end = (const unsigned char *)t->data + t->nbytes;
    }
    const oz_st_tensor *s = oz_safetensors_find(&st, "scalar");
    CHECK(s && s->ndim == 0 && s->numel == 1, "0-d tensor");
    CHECK(oz_safetensors_find(&st, "nope") == NULL, "missing tensor found");
    const char *fmt = oz_safetensors_metadata(&st, "format");
    CHECK(fmt && !strcmp(fmt, "pt"), "format metadata");
    CHECK(oz_safetensors_metadata(&st, "step") == NULL, "unexpected metadata");
    oz_safetensors_close(&st);

    /* Metadata pairs, and an overwrite of the existing file. */
    const char *kv[] = {"step", "12", "note", "multi word \"quoted\"", NULL};
    oz_err_clear(&err);
    CHECK(oz_safetensors_write(path, e, 2, kv, &err) == OZ_OK, "write with metadata: %s", err.msg);
    CHECK(oz_safetensors_open(&st, path, &err) == OZ_OK, "reopen: %s", err.msg);
    if (err.status != OZ_OK) return;
    CHECK(st.n_tensors == 2, "overwritten file has %d tensors", st.n_tensors);
    const char *v = oz_safetensors_metadata(&st, "step");
    CHECK(v && !strcmp(v, "12"), "step metadata");
    v = oz_safetensors_metadata(&st, "note");
    CHECK(v && !strcmp(v, "multi word \"quoted\""), "note metadata");
    v = oz_safetensors_metadata(&st, "format");
    CHECK(v && !strcmp(v, "pt"), "format kept");
    oz_safetensors_close(&st);

    /* The caller may replace "format"; a key without a value is refused before touching disk. */
    const char *kv_fmt[] = {"format", "np", NULL};
    oz_err_clear(&err);
    CHECK(oz_safetensors_write(path, e, 1, kv_fmt, &err) == OZ_OK, "write format: %s", err.msg);
    if (oz_safetensors_open(&st, path, &err) == OZ_OK) {
        v = oz_safetensors_metadata(&st, "format");
        CHECK(v && !strcmp(v, "np"), "format override");
        oz_safetensors_close(&st);
    }
    const char *kv_odd[] = {"lonely", NULL};
    char opath[300];
    tmp_path(opath, sizeof opath, "odd.safetensors");
    oz_err_clear(&err);
    CHECK(oz_safetensors_write(opath, e, 1, kv_odd, &err) == OZ_ERR_INTERNAL && !exists(opath), "odd metadata list");

    /* A file with no tensors is valid. */
    oz_err_clear(&err);
    CHECK(oz_safetensors_write(path, NULL, 0, NULL, &err) == OZ_OK, "write empty: %s", err.msg);
    CHECK(oz_safetensors_open(&st, path, &err) == OZ_OK, "open empty: %s", err.msg);
    if (err.status == OZ_OK) {
        CHECK(st.n_tensors == 0 && oz_safetensors_find(&st, "x") == NULL, "empty file");
        oz_safetensors_close(&st);
    }

    /* Writer refuses duplicate names without touching disk. */
    oz_st_entry dup[] = {{"a", OZ_DT_U8, 1, {1}, u8}, {"a", OZ_DT_U8, 1, {1}, u8}};
    oz_err_clear(&err);
    char dpath[300];
    tmp_path(dpath, sizeof dpath, "dup.safetensors");
    CHECK(oz_safetensors_write(dpath, dup, 2, NULL, &err) != OZ_OK && !exists(dpath), "duplicate names accepted");
}

static void test_convert(void) {
    uint16_t f16[7] = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x3555, 0x8000, 0x7c00};
    uint16_t bf16[4] = {0x3f80, 0xc020, 0x4049, 0x0001};
    double f64[3] = {0.1, -1e300, 3.5};
    float f32[2] = {0.25f, -8.0f};
    int32_t i32[1] = {7};
    oz_st_entry e[] = {
        {"f16", OZ_DT_F16, 1, {7}, f16}, {"bf16", OZ_DT_BF16, 1, {4}, bf16}, {"f64", OZ_DT_F64, 1, {3}, f64},
        {"f32", OZ_DT_F32, 2, {1, 2}, f32}, {"i32", OZ_DT_I32, 1, {1}, i32},
    };
    char path[300];
    tmp_path(path, sizeof path, "conv.safetensors");
    oz_err err;
    oz_err_clear(&err);
    CHECK(oz_safetensors_write(path, e, 5, NULL, &err) == OZ_OK, "write: %s", err.msg);
    oz_safetensors st;
    CHECK(oz_safetensors_open(&st, path, &err) == OZ_OK, "open: %s", err.msg);
    if (err.status != OZ_OK) return;

    float out[8];
    double out64[8];
    CHECK(oz_st_tensor_to_f32(oz_safetensors_find(&st, "f16"), out, 7, &err) == OZ_OK, "f16: %s", err.msg);
    const float want16[7] = {1.0f, -2.0f, 65504.0f, 5.9604644775390625e-08f, 0.333251953125f, -0.0f, INFINITY};
    for (int i = 0; i < 7; i++) CHECK(out[i] == want16[i], "f16[%d] = %g, want %g", i, out[i], want16[i]);
    CHECK(signbit(out[5]), "f16 -0 sign");
    CHECK(oz_st_tensor_to_f64(oz_safetensors_find(&st, "f16"), out64, 7, &err) == OZ_OK, "f16->f64: %s", err.msg);
    CHECK(out64[4] == 0.333251953125 && out64[3] == ldexp(1, -24), "f16->f64 values");

    CHECK(oz_st_tensor_to_f32(oz_safetensors_find(&st, "bf16"), out, 4, &err) == OZ_OK, "bf16: %s", err.msg);
    CHECK(out[0] == 1.0f && out[1] == -2.5f && out[2] == 3.140625f && out[3] == ldexpf(1, -133), "bf16 values %g %g %g %g",
          out[0], out[1], out[2], out[3]);

    CHECK(oz_st_tensor_to_f32(oz_safetensors_find(&st, "f64"), out, 3, &err) == OZ_OK, "f64: %s", err.msg);
    CHECK(out[0] == 0.1f && out[1] == -INFINITY && out[2] == 3.5f, "f64 values %g %g %g", out[0], out[1], out[2]);
    CHECK(oz_st_tensor_to_f64(oz_safetensors_find(&st, "f64"), out64, 3, &err) == OZ_OK, "f64->f64: %s", err.msg);
    CHECK(out64[0] == 0.1 && out64[1] == -1e300, "f64 exact");

    CHECK(oz_st_tensor_to_f32(oz_safetensors_find(&st, "f32"), out, 2, &err) == OZ_OK, "f32: %s", err.msg);
    CHECK(out[0] == 0.25f && out[1] == -8.0f, "f32 values");
    CHECK(oz_st_tensor_to_f64(oz_safetensors_find(&st, "f32"), out64, 2, &err) == OZ_OK, "f32->f64: %s", err.msg);
    CHECK(out64[0] == 0.25 && out64[1] == -8.0, "f32->f64 values");

    oz_err_clear(&err);
    CHECK(oz_st_tensor_to_f32(oz_safetensors_find(&st, "i32"), out, 1, &err) == OZ_ERR_INPUT, "int tensor converted");
    CHECK(strstr(err.msg, "I32") && strstr(err.msg, "'i32'") && strstr(err.msg, path), "int message: %s", err.msg);
    oz_err_clear(&err);
    CHECK(oz_st_tensor_to_f32(oz_safetensors_find(&st, "f16"), out, 6, &err) == OZ_ERR_INPUT, "count mismatch accepted");
    CHECK(strstr(err.msg, "7") && strstr(err.msg, "6"), "count message: %s", err.msg);
    oz_err_clear(&err);
    CHECK(oz_st_tensor_to_f64(oz_safetensors_find(&st, "f64"), out64, 4, &err) == OZ_ERR_INPUT, "f64 count mismatch");
    oz_safetensors_close(&st);
}

/* ---------------------------------------------------------------------------------------- */

static void test_corrupt(void) {
    /* A good file to damage: "a" F32 [2,3] at [0,24], "b" I8 [4] at [24,28]. */
    float a[6] = {1, 2, 3, 4, 5, 6};
    int8_t b[4] = {1, 2, 3, 4};
    oz_st_entry e[] = {{"a", OZ_DT_F32, 2, {2, 3}, a}, {"b", OZ_DT_I8, 1, {4}, b}};
    char good[300], p[300];
    tmp_path(good, sizeof good, "good.safetensors");
    oz_err err;
    oz_err_clear(&err);
    CHECK(oz_safetensors_write(good, e, 2, NULL, &err) == OZ_OK, "write: %s", err.msg);
    char *g;
    size_t gn;
    CHECK(oz_read_file(good, &g, &gn, &err) == OZ_OK, "read good: %s", err.msg);
    if (err.status != OZ_OK) return;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | (unsigned char)g[i];
    char *buf = malloc(gn + 16);

    tmp_path(p, sizeof p, "short.safetensors");
    write_bytes(p, g, 5);
    expect_bad_file(p, "too short", "5-byte file");
    write_bytes(p, g, 0);
    expect_bad_file(p, "too short", "empty file");

    tmp_path(p, sizeof p, "cut_header.safetensors");
    write_bytes(p, g, 8 + hlen - 10);
    expect_bad_file(p, "runs past the end", "file shorter than header");

    tmp_path(p, sizeof p, "absurd.safetensors");
    memcpy(buf, g, gn);
    buf[5] = 1; /* header length 2^40 + ... */
    write_bytes(p, buf, gn);
    expect_bad_file(p, "absurd", "absurd header length");

    tmp_path(p, sizeof p, "badjson.safetensors");
    memcpy(buf, g, gn);
    char *colon = memchr(buf + 8, ':', hlen);
    *colon = '#';
    write_bytes(p, buf, gn);
    expect_bad_file(p, "not valid JSON", "bad JSON");

    tmp_path(p, sizeof p, "cut_data.safetensors");
    write_bytes(p, g, gn - 2);
    expect_bad_file(p, "run past", "truncated data");

    tmp_path(p, sizeof p, "trailing.safetensors");
    memcpy(buf, g, gn);
    memset(buf + gn, 0, 8);
    write_bytes(p, buf, gn + 8);
    expect_bad_file(p, "data region is 36 bytes but the tensors cover 28", "trailing bytes");

    struct {
        const char *file, *header, *keyword;
        size_t data;
    } cases[] = {
        {"dtype.st", "{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", "unsupported dtype 'F8_E4M3'", 2},
        {"dtype2.st", "{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", "tensor 'w'", 2},
        {"range.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", "run past", 4},
        {"overlap.st",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
         "overlap", 12},
        {"size.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", "needs 24", 20},
        {"gap.st",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
         "belong to no tensor", 12},
        {"reversed.st", "{\"w\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}}", "begin after end", 4},
        {"negshape.st", "{\"w\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,0]}}", "non-negative", 0},
        {"fracshape.st", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1.5],\"data_offsets\":[0,0]}}", "non-negative", 0},
        {"ndim.st", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", "dimensions", 1},
        {"huge.st", "{\"w\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", "absurdly large", 0},
        {"nodtype.st", "{\"w\":{\"shape\":[1],\"data_offsets\":[0,1]}}", "dtype", 1},
        {"nooffsets.st", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1]}}", "data_offsets", 1},
        {"notobj.st", "[1,2]", "not a JSON object", 0},
        {"entry.st", "{\"w\":3}", "not a JSON object", 0},
        {"meta.st", "{\"__metadata__\":{\"x\":1}}", "metadata value for 'x'", 0},
        {"dupname.st",
         "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
         "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
         "appears twice", 2},
        {"stray.st", "{}  x", "stray bytes", 0},
        {"emptyhdr.st", "", "not valid JSON", 0},
        /* Strings quoted from the file come out on one line, control characters shown as '?'. */
        {"newline.st", "{\"w\":{\"dtype\":\"F\\n32\\r\",\"shape\":[1],\"data_offsets\":[0,4]}}",
         "unsupported dtype 'F?32?'", 4},
        {"escape.st", "{\"\\u001b[2J\\t\":{\"shape\":[1],\"data_offsets\":[0,1]}}", "tensor '?[2J?' has no", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tmp_path(p, sizeof p, cases[i].file);
        write_raw_st(p, cases[i].header, cases[i].data);
        expect_bad_file(p, cases[i].keyword, cases[i].file);
    }

    tmp_path(p, sizeof p, "does_not_exist.safetensors");
    expect_bad_file(p, "No such file", "missing file");
    expect_bad_file(g_tmp, "not a regular file", "directory");

    free(buf);
    free(g);
}

static void test_python_fixture(void) {
    const char *path = "tests/fixtures/python_small.safetensors";
    oz_safetensors st;
    oz_err err;
    oz_err_clear(&err);
    CHECK(oz_safetensors_open(&st, path, &err) == OZ_OK, "open (run from the repo root): %s", err.msg);
    if (err.status != OZ_OK) return;
    CHECK(st.n_tensors == 5, "%d tensors", st.n_tensors);
    const char *src = oz_safetensors_metadata(&st, "source");
    CHECK(src && !strcmp(src, "gen_safetensors_fixture.py"), "metadata");

    float f[8];
    const oz_st_tensor *w = oz_safetensors_find(&st, "weight");
    CHECK(w && w->dtype == OZ_DT_F32 && w->ndim == 2 && w->shape[0] == 2 && w->shape[1] == 3, "weight header");
    if (w && oz_st_tensor_to_f32(w, f, 6, &err) == OZ_OK) {
        const float want[6] = {1.5f, -2.25f, 3.0f, 0.125f, 0.001f, -7.0f};
        for (int i = 0; i < 6; i++) CHECK(f[i] == want[i], "weight[%d] = %g", i, f[i]);
    }
    const oz_st_tensor *b = oz_safetensors_find(&st, "bf16");
    CHECK(b && b->dtype == OZ_DT_BF16 && b->ndim == 1 && b->numel == 5, "bf16 header");
    if (b && oz_st_tensor_to_f32(b, f, 5, &err) == OZ_OK) {
        const float want[5] = {1.0f, -2.5f, 0.15625f, 256.0f, -0.0078125f};
        for (int i = 0; i < 5; i++) CHECK(f[i] == want[i], "bf16[%d] = %g", i, f[i]);
    }
    const oz_st_tensor *h = oz_safetensors_find(&st, "half");
    CHECK(h && h->dtype == OZ_DT_F16 && h->ndim == 2 && h->shape[0] == 2 && h->shape[1] == 2, "half header");
    if (h && oz_st_tensor_to_f32(h, f, 4, &err) == OZ_OK) {
        const float want[4] = {0.5f, -1.0f, 65504.0f, 5.9604644775390625e-08f};
        for (int i = 0; i < 4; i++) CHECK(f[i] == want[i], "half[%d] = %g", i, f[i]);
    }
    const oz_st_tensor *ids = oz_safetensors_find(&st, "ids");
    CHECK(ids && ids->dtype == OZ_DT_I64 && ids->numel == 3 && ids->nbytes == 24, "ids header");
    if (ids && ids->nbytes == 24) {
        int64_t v[3];
        memcpy(v, ids->data, sizeof v);
        CHECK(v[0] == -3 && v[1] == 0 && v[2] == ((int64_t)1 << 40) + 1, "ids values");
    }
    const oz_st_tensor *pi = oz_safetensors_find(&st, "pi");
    CHECK(pi && pi->dtype == OZ_DT_F64 && pi->ndim == 0 && pi->numel == 1, "pi header");
    double d;
    if (pi && oz_st_tensor_to_f64(pi, &d, 1, &err) == OZ_OK) CHECK(d == 3.141592653589793, "pi = %.17g", d);
    CHECK(err.status == OZ_OK, "conversion failed: %s", err.msg);
    oz_safetensors_close(&st);
}

/* ---------------------------------------------------------------------------------------- */

static void test_atomic_write(void) {
    char dir[300], path[320];
    tmp_path(dir, sizeof dir, "atomic");
    oz_err err;
    oz_err_clear(&err);
    CHECK(oz_mkdir_p(dir, &err) == OZ_OK, "mkdir: %s", err.msg);
    snprintf(path, sizeof path, "%s/out.txt", dir);

    CHECK(oz_atomic_write(path, "first", 5, &err) == OZ_OK, "new file: %s", err.msg);
    CHECK(file_equals(path, "first"), "new contents");
    chmod(path, 0640);
    CHECK(oz_atomic_write(path, "second version", 14, &err) == OZ_OK, "overwrite: %s", err.msg);
    CHECK(file_equals(path, "second version"), "overwritten contents");
    struct stat sb;
    CHECK(stat(path, &sb) == 0 && (sb.st_mode & 0777) == 0640, "mode not kept: %o", sb.st_mode & 0777);
    CHECK(count_entries(dir, "") == 1, "stray files after writes");

    /* A write that fails midway (file size limit => EFBIG) keeps the old file. */
    struct rlimit old_lim, lim;
    getrlimit(RLIMIT_FSIZE, &old_lim);
    lim = old_lim;
    lim.rlim_cur = 4096;
    void (*old_sig)(int) = signal(SIGXFSZ, SIG_IGN);
    size_t big_n = 1 << 16;
    char *big = calloc(1, big_n);
    oz_err_clear(&err);
    oz_status s = OZ_OK;
    if (setrlimit(RLIMIT_FSIZE, &lim) == 0) {
        s = oz_atomic_write(path, big, big_n, &err);
        setrlimit(RLIMIT_FSIZE, &old_lim);
        CHECK(s == OZ_ERR_IO, "oversized write: %s (%s)", oz_status_name(s), err.msg);
        CHECK(strstr(err.msg, path) != NULL, "message lacks path: %s", err.msg);
    } else {
        SKIP(2, "setrlimit(RLIMIT_FSIZE) refused");
    }
    signal(SIGXFSZ, old_sig);
    CHECK(file_equals(path, "second version"), "old contents lost after a failed write");
    CHECK(count_entries(dir, "") == 1, "temp file left after a failed write");

    /* Streaming writer: commit. */
    oz_atomic_file f;
    oz_err_clear(&err);
    CHECK(oz_atomic_file_open(&f, path, &err) == OZ_OK, "open: %s", err.msg);
    CHECK(count_entries(dir, ".tmp.") == 1, "no temp file while writing");
    oz_atomic_file_write(&f, "str", 3, &err);
    oz_atomic_file_write(&f, "", 0, &err);
    oz_atomic_file_write(&f, "eamed", 5, &err);
    CHECK(file_equals(path, "second version"), "target changed before commit");
    CHECK(oz_atomic_file_commit(&f, &err) == OZ_OK, "commit: %s", err.msg);
    CHECK(file_equals(path, "streamed"), "streamed contents");
    oz_atomic_file_abort(&f); /* after commit: must be a no-op */
    CHECK(file_equals(path, "streamed") && count_entries(dir, "") == 1, "abort after commit did something");

    /* Streaming writer: simulated failure via abort. */
    CHECK(oz_atomic_file_open(&f, path, &err) == OZ_OK, "open: %s", err.msg);
    oz_atomic_file_write(&f, big, big_n, &err);
    oz_atomic_file_abort(&f);
    oz_atomic_file_abort(&f);
    CHECK(file_equals(path, "streamed"), "abort changed the target");
    CHECK(count_entries(dir, "") == 1, "abort left a temp file");
    oz_err_clear(&err);
    CHECK(oz_atomic_file_write(&f, "x", 1, &err) != OZ_OK && err.status != OZ_OK, "write after abort");
    oz_err_clear(&err);
    CHECK(oz_atomic_file_commit(&f, &err) != OZ_OK && err.status != OZ_OK, "commit after abort");
    CHECK(file_equals(path, "streamed"), "commit after abort changed the target");
    free(big);

    /* The rename fails when the target is a non-empty directory: nothing changes. */
    char sub[340], inner[360];
    snprintf(sub, sizeof sub, "%s/subdir", dir);
    snprintf(inner, sizeof inner, "%s/keep", sub);
    oz_mkdir_p(sub, &err);
    write_bytes(inner, "k", 1);
    oz_err_clear(&err);
    s = oz_atomic_write(sub, "x", 1, &err);
    CHECK(s == OZ_ERR_INPUT && strstr(err.msg, sub), "write over a directory: %s (%s)", oz_status_name(s), err.msg);
    CHECK(file_equals(inner, "k") && count_entries(dir, ".tmp.") == 0, "directory target damaged or temp left");

    /* An unwritable directory. Root ignores permissions, so only run it as a normal user. */
    char ro[340], ro_file[360];
    snprintf(ro, sizeof ro, "%s/readonly", dir);
    snprintf(ro_file, sizeof ro_file, "%s/data", ro);
    oz_mkdir_p(ro, &err);
    write_bytes(ro_file, "old", 3);
    chmod(ro, 0555);
    if (geteuid() != 0) {
        oz_err_clear(&err);
        s = oz_atomic_write(ro_file, "new", 3, &err);
        CHECK(s == OZ_ERR_INPUT && strstr(err.msg, ro_file), "unwritable dir: %s (%s)", oz_status_name(s), err.msg);
        CHECK(file_equals(ro_file, "old") && count_entries(ro, "") == 1, "unwritable dir: old file changed");
    } else {
        SKIP(2, "running as root");
    }
    chmod(ro, 0755);

    /* A missing parent directory is the user's mistake. */
    char missing[340];
    snprintf(missing, sizeof missing, "%s/no/such/dir/file", dir);
    oz_err_clear(&err);
    s = oz_atomic_write(missing, "x", 1, &err);
    CHECK(s == OZ_ERR_INPUT && strstr(err.msg, missing), "missing dir: %s (%s)", oz_status_name(s), err.msg);
}

static void test_fs_helpers(void) {
    char base[300], p[400], q[400];
    tmp_path(base, sizeof base, "fs");
    oz_err err;
    oz_err_clear(&err);

    snprintf(p, sizeof p, "%s/a/b//c/", base);
    CHECK(oz_mkdir_p(p, &err) == OZ_OK, "mkdir -p: %s", err.msg);
    CHECK(oz_mkdir_p(p, &err) == OZ_OK, "mkdir -p again: %s", err.msg);
    struct stat sb;
    snprintf(p, sizeof p, "%s/a/b/c", base);
    CHECK(stat(p, &sb) == 0 && S_ISDIR(sb.st_mode), "nested dir missing");
    snprintf(p, sizeof p, "%s/a/file", base);
    write_bytes(p, "", 0);
    snprintf(q, sizeof q, "%s/a/file/x", base);
    oz_err_clear(&err);
    CHECK(oz_mkdir_p(q, &err) == OZ_ERR_INPUT && strstr(err.msg, q), "mkdir through a file: %s", err.msg);

    char *data;
    size_t n;
    oz_err_clear(&err);
    CHECK(oz_read_file(p, &data, &n, &err) == OZ_OK && n == 0 && data && data[0] == '\0', "empty file: %s", err.msg);
    free(data);
    snprintf(q, sizeof q, "%s/nothing", base);
    oz_err_clear(&err);
    CHECK(oz_read_file(q, &data, &n, &err) == OZ_ERR_INPUT && strstr(err.msg, q) && !data, "missing: %s", err.msg);
    oz_err_clear(&err);
    CHECK(oz_read_file(base, &data, &n, &err) == OZ_ERR_INPUT && strstr(err.msg, base), "directory read: %s", err.msg);

    /* remove_tree deletes a nested tree but does not follow a symlink out of it. */
    char outside[320], outside_file[340], tree[320];
    snprintf(outside, sizeof outside, "%s/outside", base);
    snprintf(outside_file, sizeof outside_file, "%s/precious", outside);
    oz_mkdir_p(outside, &err);
    write_bytes(outside_file, "p", 1);
    snprintf(tree, sizeof tree, "%s/tree", base);
    snprintf(p, sizeof p, "%s/x/y/z", tree);
    oz_mkdir_p(p, &err);
    snprintf(p, sizeof p, "%s/x/y/z/f", tree);
    write_bytes(p, "f", 1);
    snprintf(p, sizeof p, "%s/x/g", tree);
    write_bytes(p, "g", 1);
    snprintf(p, sizeof p, "%s/link", tree);
    CHECK(symlink(outside, p) == 0, "symlink");
    oz_err_clear(&err);
    CHECK(oz_remove_tree(tree, &err) == OZ_OK, "remove_tree: %s", err.msg);
    CHECK(!exists(tree), "tree still exists");
    CHECK(file_equals(outside_file, "p"), "remove_tree followed a symlink");
    CHECK(oz_remove_tree(tree, &err) == OZ_OK, "removing a missing path: %s", err.msg);
    CHECK(oz_remove_tree(outside_file, &err) == OZ_OK && !exists(outside_file), "remove a plain file: %s", err.msg);
}

static void test_replace_dir(void) {
    char base[300], tmp[400], fin[400], p[450];
    tmp_path(base, sizeof base, "ckpt");
    oz_err err;
    oz_err_clear(&err);
    oz_mkdir_p(base, &err);
    snprintf(tmp, sizeof tmp, "%s/step.tmp", base);
    snprintf(fin, sizeof fin, "%s/step", base);

    /* Target does not exist yet. */
    oz_mkdir_p(tmp, &err);
    snprintf(p, sizeof p, "%s/model.safetensors", tmp);
    oz_atomic_write(p, "v1", 2, &err);
    CHECK(oz_replace_dir(tmp, fin, &err) == OZ_OK, "replace (new): %s", err.msg);
    snprintf(p, sizeof p, "%s/model.safetensors", fin);
    CHECK(file_equals(p, "v1") && !exists(tmp), "new dir contents");

    /* Target exists with other contents: they must all be gone afterwards. */
    snprintf(p, sizeof p, "%s/old_only/deep", fin);
    oz_mkdir_p(p, &err);
    oz_mkdir_p(tmp, &err);
    snprintf(p, sizeof p, "%s/model.safetensors", tmp);
    oz_atomic_write(p, "v2", 2, &err);
    snprintf(p, sizeof p, "%s/state.json", tmp);
    oz_atomic_write(p, "{}", 2, &err);
    CHECK(err.status == OZ_OK, "setup: %s", err.msg);
    CHECK(oz_replace_dir(tmp, fin, &err) == OZ_OK, "replace (existing): %s", err.msg);
    snprintf(p, sizeof p, "%s/model.safetensors", fin);
    CHECK(file_equals(p, "v2"), "replaced contents");
    snprintf(p, sizeof p, "%s/state.json", fin);
    CHECK(file_equals(p, "{}"), "replaced contents (2)");
    snprintf(p, sizeof p, "%s/old_only", fin);
    CHECK(!exists(p), "old contents survived");
    CHECK(count_entries(base, "") == 1 && !exists(tmp), "leftovers next to the checkpoint");

    /* Errors: a missing source, and a target that is a file. */
    oz_err_clear(&err);
    CHECK(oz_replace_dir(tmp, fin, &err) == OZ_ERR_INPUT && strstr(err.msg, tmp), "missing tmp: %s", err.msg);
    snprintf(p, sizeof p, "%s/model.safetensors", fin);
    oz_mkdir_p(tmp, &err);
    oz_err_clear(&err);
    CHECK(oz_replace_dir(tmp, p, &err) == OZ_ERR_INPUT && strstr(err.msg, p), "file target: %s", err.msg);
    CHECK(file_equals(p, "v2") && exists(tmp), "failed replace changed something");
}

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/oz_test_io.XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_dtypes);
    RUN(test_half_conversions);
    RUN(test_roundtrip);
    RUN(test_convert);
    RUN(test_corrupt);
    RUN(test_python_fixture);
    RUN(test_atomic_write);
    RUN(test_fs_helpers);
    RUN(test_replace_dir);
    oz_err err;
    oz_err_clear(&err);
    CHECK(oz_remove_tree(g_tmp, &err) == OZ_OK, "cleanup: %s", err.msg);
    return oz_test_finish("test_io");
}
