/* safetensors reader (io/safetensors.c): the input is a whole .safetensors file. An accepted file
 * must hand out tensors that lie inside the mapping, tile the data region, convert to f32/f64, and
 * come back unchanged through the writer (same names, dtypes, shapes, bytes and metadata). */
#include "fuzz.h"

#include <cjson/cJSON.h>

#include "io/safetensors.h"

static const char *const names[] = {"in.safetensors", "out.safetensors", NULL};

/* Largest tensor converted to floats per input (the reader's limits are what is fuzzed, not malloc). */
#define CONVERT_MAX ((size_t)1 << 20)

static uint64_t checksum(const unsigned char *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static void check_tensor(const oz_safetensors *st, const oz_st_tensor *t) {
    const unsigned char *lo = st->map, *hi = lo + st->map_size, *d = t->data;
    OZ_FUZZ_CHECK(d >= lo + 8 && d <= hi && t->nbytes <= (size_t)(hi - d), "tensor '%s' outside the %zu-byte map",
                  t->name, st->map_size);
    OZ_FUZZ_CHECK(t->ndim >= 0 && t->ndim <= OZ_ST_MAX_DIMS, "tensor '%s' ndim %d", t->name, t->ndim);
    size_t numel = 1;
    for (int i = 0; i < t->ndim; i++) {
        OZ_FUZZ_CHECK(t->shape[i] >= 0, "tensor '%s' negative dim", t->name);
        numel *= (size_t)t->shape[i];
    }
    OZ_FUZZ_CHECK(numel == t->numel && t->nbytes == numel * oz_dtype_size(t->dtype), "tensor '%s' size", t->name);
    OZ_FUZZ_CHECK(oz_safetensors_find(st, t->name) == t, "find('%s') is not the tensor", t->name);
    (void)checksum(d, t->nbytes);
    if (!oz_dtype_is_float(t->dtype) || t->numel > CONVERT_MAX) return;
    float *f = malloc(t->numel * sizeof *f + 1);
    double *g = malloc(t->numel * sizeof *g + 1);
    if (!f || !g) abort();
    oz_err err = {0};
    OZ_FUZZ_CHECK(oz_st_tensor_to_f32(t, f, t->numel, &err) == OZ_OK, "to_f32: %s", err.msg);
    OZ_FUZZ_CHECK(oz_st_tensor_to_f64(t, g, t->numel, &err) == OZ_OK, "to_f64: %s", err.msg);
    OZ_FUZZ_CHECK(oz_st_tensor_to_f32(t, f, t->numel + 1, &err) == OZ_ERR_INPUT, "to_f32 with a wrong count");
    free(f);
    free(g);
}

/* Writes what was read and reads it back: the writer must accept any file the reader accepts. */
static void round_trip(const oz_safetensors *st) {
    int n = st->n_tensors;
    oz_st_entry *e = calloc((size_t)n + 1, sizeof *e);
    const cJSON *meta = st->metadata;
    int n_meta = meta ? cJSON_GetArraySize(meta) : 0;
    const char **kv = calloc(2 * (size_t)n_meta + 1, sizeof *kv);
    if (!e || !kv) abort();
    for (int i = 0; i < n; i++) {
        const oz_st_tensor *t = &st->tensors[i];
        e[i] = (oz_st_entry){t->name, t->dtype, t->ndim, {0}, t->data};
        memcpy(e[i].shape, t->shape, sizeof t->shape);
    }
    int k = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, meta) {
        /* A key given twice reads as its first value; hand the writer that one. */
        kv[k++] = m->string;
        kv[k++] = oz_safetensors_metadata(st, m->string);
    }
    kv[k] = NULL;
    oz_err err = {0};
    const char *out = oz_fuzz_path("out.safetensors", 1);
    OZ_FUZZ_CHECK(oz_safetensors_write(out, e, n, kv, &err) == OZ_OK, "writing back a file that was read: %s",
                  err.msg);
    oz_safetensors back;
    OZ_FUZZ_CHECK(oz_safetensors_open(&back, out, &err) == OZ_OK, "reading back a file ounce wrote: %s", err.msg);
    OZ_FUZZ_CHECK(back.n_tensors == n, "%d tensors back, %d written", back.n_tensors, n);
    for (int i = 0; i < n; i++) {
        const oz_st_tensor *a = &st->tensors[i], *b = oz_safetensors_find(&back, a->name);
        OZ_FUZZ_CHECK(b && b->dtype == a->dtype && b->ndim == a->ndim && b->nbytes == a->nbytes &&
                          !memcmp(b->shape, a->shape, sizeof a->shape) &&
                          (a->nbytes == 0 || !memcmp(b->data, a->data, a->nbytes)),
                      "tensor '%s' changed in the round trip", a->name);
    }
    for (int i = 0; i < k; i += 2) {
        const char *v = oz_safetensors_metadata(&back, kv[i]);
        OZ_FUZZ_CHECK(v && !strcmp(v, kv[i + 1]), "metadata '%s' changed in the round trip", kv[i]);
    }
    const char *fmt = oz_safetensors_metadata(&back, "format");
    OZ_FUZZ_CHECK(fmt, "the writer's \"format\" metadata is missing");
    oz_safetensors_close(&back);
    free(e);
    free(kv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    oz_fuzz_dir(names);
    const char *path = oz_fuzz_write("in.safetensors", data, size, 0);
    oz_safetensors st;
    oz_err err = {0};
    oz_status s = oz_safetensors_open(&st, path, &err);
    if (s != OZ_OK) {
        OZ_FUZZ_CHECK(s == OZ_ERR_INPUT && err.msg[0], "a bad file must be OZ_ERR_INPUT with a message (got %d: %s)",
                      (int)s, err.msg);
        OZ_FUZZ_CHECK(!strchr(err.msg, '\n'), "the message is one line: %s", err.msg);
        oz_fuzz_note("file", err.msg);
        return 0;
    }
    size_t covered = 0;
    for (int i = 0; i < st.n_tensors; i++) {
        check_tensor(&st, &st.tensors[i]);
        covered += st.tensors[i].nbytes;
        if (i) OZ_FUZZ_CHECK((const char *)st.tensors[i].data >= (const char *)st.tensors[i - 1].data +
                                 st.tensors[i - 1].nbytes, "tensors out of file order or overlapping");
    }
    OZ_FUZZ_CHECK(covered <= size, "tensors cover %zu bytes of a %zu-byte file", covered, size);
    OZ_FUZZ_CHECK(!oz_safetensors_find(&st, "__metadata__"), "__metadata__ found as a tensor");
    round_trip(&st);
    oz_safetensors_close(&st);
    return 0;
}
