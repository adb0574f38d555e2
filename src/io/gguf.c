/* GGUF reader (mmap, every field bounded by the file size before use) and streaming writer. */
#include "io/gguf.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/atomic.h"
#include "numeric/ggml_quant.h"

/* Nested arrays are legal GGUF but no model uses them; this bounds the reader's recursion. */
#define MAX_ARRAY_DEPTH 4
/* The spec's limit on key length; tensor names are far shorter in practice. */
#define MAX_KEY_LEN 65535
#define MAX_NAME_LEN 4096

static const size_t scalar_size[OZ_GGUF_NTYPES] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

int oz_gguf_is_file(const char *path) {
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) return 0;
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    char magic[4];
    int ok = fread(magic, 1, 4, f) == 4 && memcmp(magic, "GGUF", 4) == 0;
    fclose(f);
    return ok;
}

/* ------------------------------------------------------------------------------------------ */
/* Reader                                                                                     */

typedef struct {
    const uint8_t *base;
    size_t size, pos;
    const char *path;
    oz_err *err;
} cursor;

#define TRUNC(c, what) \
    oz_fail((c)->err, OZ_ERR_INPUT, "%s: truncated GGUF file (%s at byte %zu runs past its %zu bytes)", (c)->path, \
            (what), (c)->pos, (c)->size)

static size_t left(const cursor *c) { return c->size - c->pos; }

static oz_status take(cursor *c, size_t n, const char *what, const uint8_t **p) {
    if (n > left(c)) return TRUNC(c, what);
    *p = c->base + c->pos;
    c->pos += n;
    return OZ_OK;
}

static oz_status read_u32(cursor *c, const char *what, uint32_t *v) {
    const uint8_t *p = NULL;
    OZ_TRY(take(c, 4, what, &p));
    memcpy(v, p, 4);
    return OZ_OK;
}

static oz_status read_u64(cursor *c, const char *what, uint64_t *v) {
    const uint8_t *p = NULL;
    OZ_TRY(take(c, 8, what, &p));
    memcpy(v, p, 8);
    return OZ_OK;
}

/* A length-prefixed string; the length is checked against what is left before it is used. */
static oz_status read_str(cursor *c, const char *what, uint64_t max_len, oz_gguf_str *s) {
    uint64_t n;
    OZ_TRY(read_u64(c, what, &n));
    if (n > left(c)) return TRUNC(c, what);
    if (n > max_len)
        return oz_fail(c->err, OZ_ERR_INPUT, "%s: %s at byte %zu is %" PRIu64 " bytes long (at most %" PRIu64 ")",
                       c->path, what, c->pos, n, max_len);
    s->s = (const char *)c->base + c->pos;
    s->len = (size_t)n;
    c->pos += (size_t)n;
    return OZ_OK;
}

static char *dup_str(oz_gguf_str s) {
    char *d = malloc(s.len + 1);
    if (!d) return NULL;
    memcpy(d, s.s, s.len);
    d[s.len] = '\0';
    return d;
}

/* Walks (and so bounds) one value of `type`; arrays recursively up to MAX_ARRAY_DEPTH. */
static oz_status skip_value(cursor *c, uint32_t type, int depth, const char *key) {
    if (type >= OZ_GGUF_NTYPES)
        return oz_fail(c->err, OZ_ERR_INPUT, "%s: key \"%s\" has unknown value type %u", c->path, key, type);
    const uint8_t *p = NULL;
    if (type == OZ_GGUF_STRING) {
        oz_gguf_str s;
        return read_str(c, "a string value", UINT64_MAX, &s);
    }
    if (type == OZ_GGUF_ARRAY) {
        if (depth >= MAX_ARRAY_DEPTH)
            return oz_fail(c->err, OZ_ERR_INPUT, "%s: key \"%s\" nests arrays more than %d deep", c->path, key,
                           MAX_ARRAY_DEPTH);
        uint32_t et;
        uint64_t n;
        OZ_TRY(read_u32(c, "an array type", &et));
        OZ_TRY(read_u64(c, "an array length", &n));
        if (et >= OZ_GGUF_NTYPES)
            return oz_fail(c->err, OZ_ERR_INPUT, "%s: key \"%s\" is an array of unknown type %u", c->path, key, et);
        if (et != OZ_GGUF_STRING && et != OZ_GGUF_ARRAY) {
            /* Fixed-size elements: one bound for the whole array. */
            if (n > left(c) / scalar_size[et]) return TRUNC(c, "an array");
            if (et == OZ_GGUF_BOOL)
                for (uint64_t i = 0; i < n; i++)
                    if (c->base[c->pos + i] > 1)
                        return oz_fail(c->err, OZ_ERR_INPUT, "%s: key \"%s\" holds a bool that is neither 0 nor 1",
                                       c->path, key);
            c->pos += (size_t)n * scalar_size[et];
            return OZ_OK;
        }
        /* Every element takes at least 8 bytes (a length), so a huge count fails fast. */
        if (n > left(c) / 8) return TRUNC(c, "an array");
        for (uint64_t i = 0; i < n; i++) OZ_TRY(skip_value(c, et, depth + 1, key));
        return OZ_OK;
    }
    OZ_TRY(take(c, scalar_size[type], "a value", &p));
    if (type == OZ_GGUF_BOOL && *p > 1)
        return oz_fail(c->err, OZ_ERR_INPUT, "%s: key \"%s\" holds a bool that is neither 0 nor 1", c->path, key);
    return OZ_OK;
}

static int tensor_cmp(const void *a, const void *b) {
    const oz_gguf_tensor *x = *(const oz_gguf_tensor *const *)a, *y = *(const oz_gguf_tensor *const *)b;
    return strcmp(x->name, y->name);
}

static oz_status parse(oz_gguf *g, oz_err *err) {
    cursor c = {g->map, g->size, 0, g->path, err};
    const uint8_t *p = NULL;
    OZ_TRY(take(&c, 4, "the magic", &p));
    if (memcmp(p, "GGUF", 4) != 0) return oz_fail(err, OZ_ERR_INPUT, "%s: not a GGUF file (no \"GGUF\" magic)", g->path);
    OZ_TRY(read_u32(&c, "the version", &g->version));
    if (g->version != 2 && g->version != 3)
        return oz_fail(err, OZ_ERR_INPUT, "%s: GGUF version %u is not supported (2 or 3)", g->path, g->version);
    uint64_t n_tensors, n_kv;
    OZ_TRY(read_u64(&c, "the tensor count", &n_tensors));
    OZ_TRY(read_u64(&c, "the key-value count", &n_kv));
    /* A key-value pair takes at least 12 bytes (key length, value type), a tensor info 24 (name
     * length, dimension count, one dimension, type... at least 8 + 4 + 4 + 8): counts beyond what
     * the file could hold are refused before anything is allocated for them. */
    if (n_kv > left(&c) / 12)
        return oz_fail(err, OZ_ERR_INPUT, "%s: %" PRIu64 " key-value pairs cannot fit in a %zu-byte file", g->path, n_kv,
                       g->size);
    if (n_tensors > left(&c) / 24)
        return oz_fail(err, OZ_ERR_INPUT, "%s: %" PRIu64 " tensors cannot fit in a %zu-byte file", g->path, n_tensors,
                       g->size);
    g->kv = calloc(n_kv ? (size_t)n_kv : 1, sizeof *g->kv);
    g->tensors = calloc(n_tensors ? (size_t)n_tensors : 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors) return oz_fail(err, OZ_ERR_NOMEM, "out of memory reading %s", g->path);
    g->alignment = OZ_GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < n_kv; i++) {
        oz_gguf_kv *kv = &g->kv[i];
        oz_gguf_str key;
        OZ_TRY(read_str(&c, "a metadata key", MAX_KEY_LEN, &key));
        if (!(kv->key = dup_str(key))) return oz_fail(err, OZ_ERR_NOMEM, "out of memory reading %s", g->path);
        g->n_kv = (size_t)i + 1;
        if (strlen(kv->key) != key.len)
            return oz_fail(err, OZ_ERR_INPUT, "%s: metadata key %" PRIu64 " holds a NUL byte", g->path, i);
        for (uint64_t j = 0; j < i; j++)
            if (strcmp(g->kv[j].key, kv->key) == 0)
                return oz_fail(err, OZ_ERR_INPUT, "%s: metadata key \"%s\" appears twice", g->path, kv->key);
        OZ_TRY(read_u32(&c, "a value type", &kv->type));
        kv->raw = c.base + c.pos;
        if (kv->type == OZ_GGUF_ARRAY) {
            /* The header of the array, then its elements as skip_value bounds them. */
            if (left(&c) < 12) return TRUNC(&c, "an array header");
            memcpy(&kv->elem_type, c.base + c.pos, 4);
            memcpy(&kv->n, c.base + c.pos + 4, 8);
            kv->value = c.base + c.pos + 12;
        } else {
            kv->value = c.base + c.pos;
        }
        OZ_TRY(skip_value(&c, kv->type, 0, kv->key));
        kv->raw_len = (size_t)(c.base + c.pos - kv->raw);
        if (strcmp(kv->key, "general.alignment") == 0) {
            uint64_t a;
            if (!oz_gguf_get_uint(kv, &a) || a < 8 || a > (1u << 20) || (a & (a - 1)) != 0)
                return oz_fail(err, OZ_ERR_INPUT, "%s: general.alignment must be a power of two from 8 to 2^20",
                               g->path);
            g->alignment = (uint32_t)a;
        }
    }
    for (uint64_t i = 0; i < n_tensors; i++) {
        oz_gguf_tensor *t = &g->tensors[i];
        oz_gguf_str name;
        OZ_TRY(read_str(&c, "a tensor name", MAX_NAME_LEN, &name));
        if (!(t->name = dup_str(name))) return oz_fail(err, OZ_ERR_NOMEM, "out of memory reading %s", g->path);
        g->n_tensors = (size_t)i + 1;
        if (strlen(t->name) != name.len)
            return oz_fail(err, OZ_ERR_INPUT, "%s: tensor name %" PRIu64 " holds a NUL byte", g->path, i);
        OZ_TRY(read_u32(&c, "a dimension count", &t->ndim));
        if (t->ndim < 1 || t->ndim > OZ_GGUF_MAX_DIMS)
            return oz_fail(err, OZ_ERR_INPUT, "%s: tensor \"%s\" has %u dimensions (1 to %d)", g->path, t->name,
                           t->ndim, OZ_GGUF_MAX_DIMS);
        uint64_t numel = 1;
        for (int d = 0; d < OZ_GGUF_MAX_DIMS; d++) t->dims[d] = 1;
        for (uint32_t d = 0; d < t->ndim; d++) {
            OZ_TRY(read_u64(&c, "a dimension", &t->dims[d]));
            if (t->dims[d] == 0 || __builtin_mul_overflow(numel, t->dims[d], &numel))
                return oz_fail(err, OZ_ERR_INPUT, "%s: tensor \"%s\" has a zero or overflowing dimension", g->path,
                               t->name);
        }
        t->numel = numel;
        OZ_TRY(read_u32(&c, "a tensor type", &t->type));
        uint64_t off;
        OZ_TRY(read_u64(&c, "a tensor offset", &off));
        const char *tn = oz_ggml_type_name(t->type);
        if (!tn)
            return oz_fail(err, OZ_ERR_INPUT, "%s: tensor \"%s\" has unknown ggml type %u", g->path, t->name, t->type);
        if (!oz_ggml_type_readable(t->type))
            return oz_fail(err, OZ_ERR_INPUT,
                           "%s: tensor \"%s\" has type %s, which ounce does not read (F32, F16, BF16, Q8_0, Q4_0, "
                           "Q4_1, Q4_K, Q5_K, Q6_K)", g->path, t->name, tn);
        if (t->dims[0] % oz_ggml_block_elems(t->type) != 0)
            return oz_fail(err, OZ_ERR_INPUT, "%s: tensor \"%s\" (%s) has rows of %" PRIu64
                           " values, not a multiple of the %zu-value block", g->path, t->name, tn, t->dims[0],
                           oz_ggml_block_elems(t->type));
        size_t nb = oz_ggml_row_bytes(t->type, numel);
        if (!nb || off % g->alignment != 0)
            return oz_fail(err, OZ_ERR_INPUT, "%s: tensor \"%s\" has an unaligned offset or an impossible size",
                           g->path, t->name);
        t->nbytes = nb;
        t->offset = off; /* checked against the file once the data section's start is known */
    }
    size_t pad = (g->alignment - c.pos % g->alignment) % g->alignment;
    g->data_offset = c.pos + pad;
    if (n_tensors > 0 && g->data_offset > g->size) return TRUNC(&c, "the padding before the tensor data");
    for (size_t i = 0; i < g->n_tensors; i++) {
        oz_gguf_tensor *t = &g->tensors[i];
        uint64_t off = t->offset;
        size_t avail = g->size - g->data_offset;
        if (off > avail || t->nbytes > avail - (size_t)off)
            return oz_fail(err, OZ_ERR_INPUT,
                           "%s: tensor \"%s\" (%zu bytes at data offset %zu) lies past the end of the file (%zu bytes)",
                           g->path, t->name, t->nbytes, (size_t)off, g->size);
        t->data = (const uint8_t *)g->map + g->data_offset + off;
    }
    if (g->n_tensors > 1) {
        const oz_gguf_tensor **sorted = malloc(g->n_tensors * sizeof *sorted);
        if (!sorted) return oz_fail(err, OZ_ERR_NOMEM, "out of memory reading %s", g->path);
        for (size_t i = 0; i < g->n_tensors; i++) sorted[i] = &g->tensors[i];
        qsort(sorted, g->n_tensors, sizeof *sorted, tensor_cmp);
        oz_status st = OZ_OK;
        for (size_t i = 1; i < g->n_tensors && st == OZ_OK; i++)
            if (strcmp(sorted[i - 1]->name, sorted[i]->name) == 0)
                st = oz_fail(err, OZ_ERR_INPUT, "%s: tensor \"%s\" appears twice", g->path, sorted[i]->name);
        free(sorted);
        OZ_TRY(st);
    }
    return OZ_OK;
}

oz_status oz_gguf_open(oz_gguf *g, const char *path, oz_err *err) {
    memset(g, 0, sizeof *g);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return oz_fail(err, OZ_ERR_INPUT, "%s: cannot open", path);
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return oz_fail(err, OZ_ERR_INPUT, "%s: not a regular file", path);
    }
    g->size = (size_t)sb.st_size;
    g->path = malloc(strlen(path) + 1);
    if (!g->path) {
        close(fd);
        return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    }
    strcpy(g->path, path);
    if (g->size > 0) {
        g->map = mmap(NULL, g->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (g->map == MAP_FAILED) {
            g->map = NULL;
            close(fd);
            oz_gguf_close(g);
            return oz_fail(err, OZ_ERR_IO, "%s: cannot map the file", path);
        }
    }
    close(fd);
    oz_status st = parse(g, err);
    if (st != OZ_OK) oz_gguf_close(g);
    return st;
}

void oz_gguf_close(oz_gguf *g) {
    for (size_t i = 0; g->kv && i < g->n_kv; i++) free(g->kv[i].key);
    for (size_t i = 0; g->tensors && i < g->n_tensors; i++) free(g->tensors[i].name);
    free(g->kv);
    free(g->tensors);
    if (g->map) munmap(g->map, g->size);
    free(g->path);
    memset(g, 0, sizeof *g);
}

const oz_gguf_kv *oz_gguf_find(const oz_gguf *g, const char *key) {
    for (size_t i = 0; i < g->n_kv; i++)
        if (strcmp(g->kv[i].key, key) == 0) return &g->kv[i];
    return NULL;
}

const oz_gguf_tensor *oz_gguf_find_tensor(const oz_gguf *g, const char *name) {
    for (size_t i = 0; i < g->n_tensors; i++)
        if (strcmp(g->tensors[i].name, name) == 0) return &g->tensors[i];
    return NULL;
}

/* A scalar of `type` at p as double (integers exactly up to 2^53); 0 for strings and arrays. */
static int scalar_number(uint32_t type, const uint8_t *p, double *out, int *negative) {
    *negative = 0;
    switch (type) {
    case OZ_GGUF_U8: *out = *p; return 1;
    case OZ_GGUF_I8: *out = (int8_t)*p; break;
    case OZ_GGUF_U16: { uint16_t v; memcpy(&v, p, 2); *out = v; return 1; }
    case OZ_GGUF_I16: { int16_t v; memcpy(&v, p, 2); *out = v; break; }
    case OZ_GGUF_U32: { uint32_t v; memcpy(&v, p, 4); *out = v; return 1; }
    case OZ_GGUF_I32: { int32_t v; memcpy(&v, p, 4); *out = v; break; }
    case OZ_GGUF_U64: { uint64_t v; memcpy(&v, p, 8); *out = (double)v; return 1; }
    case OZ_GGUF_I64: { int64_t v; memcpy(&v, p, 8); *out = (double)v; break; }
    case OZ_GGUF_F32: { float v; memcpy(&v, p, 4); *out = v; return 2; }
    case OZ_GGUF_F64: { double v; memcpy(&v, p, 8); *out = v; return 2; }
    default: return 0;
    }
    *negative = *out < 0;
    return 1;
}

int oz_gguf_get_uint(const oz_gguf_kv *kv, uint64_t *out) {
    if (!kv) return 0;
    const uint8_t *p = kv->value;
    switch (kv->type) {
    case OZ_GGUF_U8: *out = *p; return 1;
    case OZ_GGUF_U16: { uint16_t v; memcpy(&v, p, 2); *out = v; return 1; }
    case OZ_GGUF_U32: { uint32_t v; memcpy(&v, p, 4); *out = v; return 1; }
    case OZ_GGUF_U64: memcpy(out, p, 8); return 1;
    case OZ_GGUF_I8:
    case OZ_GGUF_I16:
    case OZ_GGUF_I32:
    case OZ_GGUF_I64: {
        int64_t v = 0;
        if (kv->type == OZ_GGUF_I8) v = (int8_t)*p;
        else if (kv->type == OZ_GGUF_I16) { int16_t x; memcpy(&x, p, 2); v = x; }
        else if (kv->type == OZ_GGUF_I32) { int32_t x; memcpy(&x, p, 4); v = x; }
        else memcpy(&v, p, 8);
        if (v < 0) return 0;
        *out = (uint64_t)v;
        return 1;
    }
    default: return 0;
    }
}

int oz_gguf_get_number(const oz_gguf_kv *kv, double *out) {
    int neg;
    return kv && scalar_number(kv->type, kv->value, out, &neg) != 0;
}

int oz_gguf_get_bool(const oz_gguf_kv *kv, int *out) {
    if (!kv || kv->type != OZ_GGUF_BOOL) return 0;
    *out = kv->value[0] != 0;
    return 1;
}

int oz_gguf_get_str(const oz_gguf_kv *kv, oz_gguf_str *out) {
    if (!kv || kv->type != OZ_GGUF_STRING) return 0;
    uint64_t n;
    memcpy(&n, kv->value, 8);
    out->s = (const char *)kv->value + 8;
    out->len = (size_t)n;
    return 1;
}

int oz_gguf_array_number(const oz_gguf_kv *kv, uint64_t i, double *out) {
    int neg;
    if (!kv || kv->type != OZ_GGUF_ARRAY || kv->elem_type >= OZ_GGUF_NTYPES || i >= kv->n) return 0;
    size_t es = scalar_size[kv->elem_type];
    if (!es || kv->elem_type == OZ_GGUF_BOOL) return 0;
    return scalar_number(kv->elem_type, kv->value + i * es, out, &neg) != 0;
}

int oz_gguf_array_strings(const oz_gguf_kv *kv, oz_gguf_str *out) {
    if (!kv || kv->type != OZ_GGUF_ARRAY || kv->elem_type != OZ_GGUF_STRING) return 0;
    const uint8_t *p = kv->value; /* every length was checked when the file was opened */
    for (uint64_t i = 0; i < kv->n; i++) {
        uint64_t n;
        memcpy(&n, p, 8);
        out[i].s = (const char *)p + 8;
        out[i].len = (size_t)n;
        p += 8 + n;
    }
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Writer                                                                                     */

static int meta_put(oz_gguf_meta *m, const void *data, size_t n) {
    if (m->failed) return 0;
    if (m->len + n > m->cap) {
        size_t cap = m->cap ? m->cap : 4096;
        while (cap < m->len + n) cap *= 2;
        uint8_t *b = realloc(m->buf, cap);
        if (!b) {
            m->failed = 1;
            return 0;
        }
        m->buf = b;
        m->cap = cap;
    }
    memcpy(m->buf + m->len, data, n);
    m->len += n;
    return 1;
}

static void meta_strval(oz_gguf_meta *m, const char *s) {
    uint64_t n = strlen(s);
    meta_put(m, &n, 8);
    meta_put(m, s, (size_t)n);
}

static void meta_key(oz_gguf_meta *m, const char *key, uint32_t type) {
    meta_strval(m, key);
    meta_put(m, &type, 4);
    m->n++;
}

void oz_gguf_meta_u32(oz_gguf_meta *m, const char *key, uint32_t v) {
    meta_key(m, key, OZ_GGUF_U32);
    meta_put(m, &v, 4);
}

void oz_gguf_meta_i32(oz_gguf_meta *m, const char *key, int32_t v) {
    meta_key(m, key, OZ_GGUF_I32);
    meta_put(m, &v, 4);
}

void oz_gguf_meta_f32(oz_gguf_meta *m, const char *key, float v) {
    meta_key(m, key, OZ_GGUF_F32);
    meta_put(m, &v, 4);
}

void oz_gguf_meta_bool(oz_gguf_meta *m, const char *key, int v) {
    uint8_t b = v ? 1 : 0;
    meta_key(m, key, OZ_GGUF_BOOL);
    meta_put(m, &b, 1);
}

void oz_gguf_meta_str(oz_gguf_meta *m, const char *key, const char *s) {
    meta_key(m, key, OZ_GGUF_STRING);
    meta_strval(m, s);
}

static void meta_array(oz_gguf_meta *m, const char *key, uint32_t et, uint64_t n) {
    meta_key(m, key, OZ_GGUF_ARRAY);
    meta_put(m, &et, 4);
    meta_put(m, &n, 8);
}

void oz_gguf_meta_strs(oz_gguf_meta *m, const char *key, const char *const *s, size_t n) {
    meta_array(m, key, OZ_GGUF_STRING, n);
    for (size_t i = 0; i < n; i++) meta_strval(m, s[i]);
}

void oz_gguf_meta_f32s(oz_gguf_meta *m, const char *key, const float *v, size_t n) {
    meta_array(m, key, OZ_GGUF_F32, n);
    meta_put(m, v, n * sizeof *v);
}

void oz_gguf_meta_i32s(oz_gguf_meta *m, const char *key, const int32_t *v, size_t n) {
    meta_array(m, key, OZ_GGUF_I32, n);
    meta_put(m, v, n * sizeof *v);
}

void oz_gguf_meta_copy(oz_gguf_meta *m, const oz_gguf_kv *kv) {
    meta_key(m, kv->key, kv->type);
    meta_put(m, kv->raw, kv->raw_len);
}

void oz_gguf_meta_free(oz_gguf_meta *m) {
    free(m->buf);
    memset(m, 0, sizeof *m);
}

struct oz_gguf_writer {
    oz_atomic_file f;
    size_t *sizes;  /* each tensor's bytes */
    size_t n, next; /* tensors, the next one to write */
    uint32_t alignment;
};

static const uint8_t zeros[64];

static oz_status write_pad(oz_gguf_writer *w, size_t n, oz_err *err) {
    while (n > 0) {
        size_t k = n < sizeof zeros ? n : sizeof zeros;
        OZ_TRY(oz_atomic_file_write(&w->f, zeros, k, err));
        n -= k;
    }
    return OZ_OK;
}

static size_t align_up(size_t x, size_t a) { return x + (a - x % a) % a; }

oz_status oz_gguf_write_begin(oz_gguf_writer **out, const char *path, const oz_gguf_meta *meta,
                              const oz_gguf_tensor_spec *specs, size_t n, uint32_t alignment, oz_err *err) {
    *out = NULL;
    if (meta->failed) return oz_fail(err, OZ_ERR_NOMEM, "out of memory assembling %s's metadata", path);
    if (alignment < 8 || (alignment & (alignment - 1)))
        return oz_fail(err, OZ_ERR_INTERNAL, "GGUF alignment %u is not a power of two >= 8", alignment);
    oz_gguf_writer *w = calloc(1, sizeof *w);
    oz_gguf_meta infos = {0};
    if (!w || !(w->sizes = calloc(n ? n : 1, sizeof *w->sizes))) {
        if (w) free(w);
        return oz_fail(err, OZ_ERR_NOMEM, "out of memory writing %s", path);
    }
    w->n = n;
    w->alignment = alignment;
    size_t offset = 0;
    oz_status st = OZ_OK;
    for (size_t i = 0; i < n && st == OZ_OK; i++) {
        const oz_gguf_tensor_spec *s = &specs[i];
        uint64_t numel = 1;
        for (uint32_t d = 0; d < s->ndim; d++) numel *= s->dims[d];
        size_t nb = oz_ggml_row_bytes(s->type, numel);
        if (!oz_ggml_type_writable(s->type) || !nb || s->ndim < 1 || s->ndim > OZ_GGUF_MAX_DIMS ||
            s->dims[0] % oz_ggml_block_elems(s->type) != 0) {
            st = oz_fail(err, OZ_ERR_INTERNAL, "GGUF tensor %s: bad type or shape", s->name);
            break;
        }
        w->sizes[i] = nb;
        meta_strval(&infos, s->name);
        meta_put(&infos, &s->ndim, 4);
        for (uint32_t d = 0; d < s->ndim; d++) meta_put(&infos, &s->dims[d], 8);
        meta_put(&infos, &s->type, 4);
        uint64_t off = offset;
        meta_put(&infos, &off, 8);
        offset = align_up(offset + nb, alignment);
    }
    if (st == OZ_OK && infos.failed) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory writing %s", path);
    if (st == OZ_OK) st = oz_atomic_file_open(&w->f, path, err);
    if (st == OZ_OK) {
        uint32_t version = 3;
        uint64_t nt = n, nkv = meta->n;
        oz_atomic_file_write(&w->f, "GGUF", 4, err);
        oz_atomic_file_write(&w->f, &version, 4, err);
        oz_atomic_file_write(&w->f, &nt, 8, err);
        oz_atomic_file_write(&w->f, &nkv, 8, err);
        if (meta->len) oz_atomic_file_write(&w->f, meta->buf, meta->len, err);
        if (infos.len) oz_atomic_file_write(&w->f, infos.buf, infos.len, err);
        size_t pos = 24 + meta->len + infos.len;
        st = write_pad(w, align_up(pos, alignment) - pos, err);
        if (st != OZ_OK) oz_atomic_file_abort(&w->f);
    }
    oz_gguf_meta_free(&infos);
    if (st != OZ_OK) {
        free(w->sizes);
        free(w);
        return st;
    }
    *out = w;
    return OZ_OK;
}

oz_status oz_gguf_write_tensor(oz_gguf_writer *w, const void *data, size_t nbytes, oz_err *err) {
    if (w->next >= w->n || nbytes != w->sizes[w->next])
        return oz_fail(err, OZ_ERR_INTERNAL, "GGUF writer: tensor %zu has %zu bytes, expected %zu", w->next, nbytes,
                       w->next < w->n ? w->sizes[w->next] : 0);
    OZ_TRY(oz_atomic_file_write(&w->f, data, nbytes, err));
    w->next++;
    /* After the last tensor too, as ggml's and the gguf package's writers do. */
    return write_pad(w, align_up(nbytes, w->alignment) - nbytes, err);
}

oz_status oz_gguf_write_finish(oz_gguf_writer *w, oz_err *err) {
    oz_status st = w->next == w->n ? oz_atomic_file_commit(&w->f, err)
                                   : oz_fail(err, OZ_ERR_INTERNAL, "GGUF writer: %zu of %zu tensors written", w->next,
                                             w->n);
    oz_gguf_write_abort(w);
    return st;
}

void oz_gguf_write_abort(oz_gguf_writer *w) {
    if (!w) return;
    oz_atomic_file_abort(&w->f);
    free(w->sizes);
    free(w);
}
