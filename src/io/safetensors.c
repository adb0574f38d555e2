/* safetensors reader (mmap + full header validation) and streaming atomic writer. */
#include "io/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/atomic.h"

/* The reference implementation refuses headers above 100 MB; anything bigger is a wrong file. */
#define OZ_ST_MAX_HEADER 100000000ull

static const char *const dtype_names[OZ_DT_COUNT] = {"F32", "F16", "BF16", "F64", "I32", "I64", "U8", "I8"};
static const size_t dtype_sizes[OZ_DT_COUNT] = {4, 2, 2, 8, 4, 8, 1, 1};

static int dtype_valid(oz_dtype dt) { return (unsigned)dt < OZ_DT_COUNT; }

const char *oz_dtype_name(oz_dtype dt) { return dtype_valid(dt) ? dtype_names[dt] : "?"; }

size_t oz_dtype_size(oz_dtype dt) { return dtype_valid(dt) ? dtype_sizes[dt] : 0; }

int oz_dtype_from_name(const char *name, oz_dtype *dt) {
    for (int i = 0; i < OZ_DT_COUNT; i++) {
        if (strcmp(name, dtype_names[i]) == 0) {
            *dt = (oz_dtype)i;
            return 1;
        }
    }
    return 0;
}

int oz_dtype_is_float(oz_dtype dt) {
    return dt == OZ_DT_F32 || dt == OZ_DT_F16 || dt == OZ_DT_BF16 || dt == OZ_DT_F64;
}

/* "[2, 3]" for messages; truncated with "..." if it does not fit. */
static void format_shape(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t len = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (len < cap) snprintf(buf + len, cap - len, "]");
}

/* shape product and byte size, or 0 on overflow of size_t. */
static int shape_bytes(int ndim, const int64_t *shape, oz_dtype dt, size_t *numel, size_t *nbytes) {
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (uint64_t)shape[i] > SIZE_MAX) return 0;
        if (__builtin_mul_overflow(n, (size_t)shape[i], &n)) return 0;
    }
    size_t b;
    if (__builtin_mul_overflow(n, oz_dtype_size(dt), &b)) return 0;
    *numel = n;
    *nbytes = b;
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Reader                                                                                     */

/* JSON numbers arrive as doubles; accept only exact non-negative integers up to 2^53. */
static int json_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= 9007199254740992.0) || d != (double)(uint64_t)d) return 0;
    *out = (uint64_t)d;
    return 1;
}

typedef struct {
    const oz_st_tensor *t;
    uint64_t begin, end;
} span;

static int span_cmp(const void *a, const void *b) {
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int by_name_cmp(const void *a, const void *b) {
    return strcmp((*(const oz_st_tensor *const *)a)->name, (*(const oz_st_tensor *const *)b)->name);
}

static int name_key_cmp(const void *key, const void *elem) {
    return strcmp((const char *)key, (*(const oz_st_tensor *const *)elem)->name);
}

static oz_status parse_tensor(const char *path, const cJSON *item, const unsigned char *data,
                              size_t data_size, oz_st_tensor *t, span *sp, oz_err *err) {
    const char *name = item->string;
    t->name = name;
    t->path = path;
    if (!cJSON_IsObject(item))
        return oz_fail(err, OZ_ERR_INPUT, "%s: header entry for tensor '%s' is not a JSON object", path, name);

    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    if (!cJSON_IsString(dt))
        return oz_fail(err, OZ_ERR_INPUT, "%s: tensor '%s' has no \"dtype\" string", path, name);
    if (!oz_dtype_from_name(dt->valuestring, &t->dtype))
        return oz_fail(err, OZ_ERR_INPUT,
                       "%s: tensor '%s' has unsupported dtype '%s' (supported: F32 F16 BF16 F64 I32 I64 U8 I8)",
                       path, name, dt->valuestring);

    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
    if (!cJSON_IsArray(shape))
        return oz_fail(err, OZ_ERR_INPUT, "%s: tensor '%s' has no \"shape\" array", path, name);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > OZ_ST_MAX_DIMS)
        return oz_fail(err, OZ_ERR_INPUT, "%s: tensor '%s' has %d dimensions (at most %d supported)", path,
                       name, ndim, OZ_ST_MAX_DIMS);
    t->ndim = ndim;
    int i = 0;
    const cJSON *d;
    cJSON_ArrayForEach(d, shape) {
        uint64_t v;
        if (!json_uint(d, &v))
            return oz_fail(err, OZ_ERR_INPUT, "%s: tensor '%s' has a shape entry that is not a non-negative integer",
                           path, name);
        t->shape[i++] = (int64_t)v;
    }
    char shape_str[160];
    format_shape(shape_str, sizeof shape_str, t->ndim, t->shape);
    if (!shape_bytes(t->ndim, t->shape, t->dtype, &t->numel, &t->nbytes))
        return oz_fail(err, OZ_ERR_INPUT, "%s: tensor '%s' shape %s is absurdly large", path, name, shape_str);

    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    uint64_t begin, end;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 || !json_uint(cJSON_GetArrayItem(offs, 0), &begin) ||
        !json_uint(cJSON_GetArrayItem(offs, 1), &end))
        return oz_fail(err, OZ_ERR_INPUT, "%s: tensor '%s' needs \"data_offsets\": [begin, end] with non-negative integers",
                       path, name);
    if (begin > end)
        return oz_fail(err, OZ_ERR_INPUT, "%s: tensor '%s' has data_offsets [%" PRIu64 ", %" PRIu64 "] with begin after end",
                       path, name, begin, end);
    if (end > data_size)
        return oz_fail(err, OZ_ERR_INPUT,
                       "%s: tensor '%s' data_offsets [%" PRIu64 ", %" PRIu64 "] run past the %zu-byte data region (file truncated?)",
                       path, name, begin, end, data_size);
    if (end - begin != t->nbytes)
        return oz_fail(err, OZ_ERR_INPUT,
                       "%s: tensor '%s' data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64 " bytes but shape %s of %s needs %zu",
                       path, name, begin, end, end - begin, shape_str, oz_dtype_name(t->dtype), t->nbytes);
    t->data = data + begin;
    sp->t = t;
    sp->begin = begin;
    sp->end = end;
    return OZ_OK;
}

static oz_status check_metadata(const char *path, const cJSON *meta, oz_err *err) {
    if (!cJSON_IsObject(meta))
        return oz_fail(err, OZ_ERR_INPUT, "%s: \"__metadata__\" is not a JSON object", path);
    const cJSON *kv;
    cJSON_ArrayForEach(kv, meta) {
        if (!cJSON_IsString(kv))
            return oz_fail(err, OZ_ERR_INPUT, "%s: metadata value for '%s' is not a string", path, kv->string);
    }
    return OZ_OK;
}

/* The spec requires the tensors to tile the data region exactly: no overlap, no holes, nothing
 * left over. Holes and leftovers usually mean a truncated or spliced file. */
static oz_status check_layout(const char *path, span *spans, int n, size_t data_size, oz_err *err) {
    qsort(spans, (size_t)n, sizeof *spans, span_cmp);
    uint64_t expect = 0;
    for (int i = 0; i < n; i++) {
        if (spans[i].begin < expect)
            return oz_fail(err, OZ_ERR_INPUT,
                           "%s: tensors '%s' [%" PRIu64 ", %" PRIu64 "] and '%s' [%" PRIu64 ", %" PRIu64 "] overlap",
                           path, spans[i - 1].t->name, spans[i - 1].begin, spans[i - 1].end, spans[i].t->name,
                           spans[i].begin, spans[i].end);
        if (spans[i].begin > expect)
            return oz_fail(err, OZ_ERR_INPUT, "%s: %" PRIu64 " bytes of the data region before tensor '%s' belong to no tensor",
                           path, spans[i].begin - expect, spans[i].t->name);
        expect = spans[i].end;
    }
    if (expect != data_size)
        return oz_fail(err, OZ_ERR_INPUT, "%s: data region is %zu bytes but the tensors cover %" PRIu64, path, data_size,
                       expect);
    return OZ_OK;
}

static oz_status open_impl(oz_safetensors *st, const char *path, oz_err *err) {
    size_t plen = strlen(path) + 1;
    st->path = malloc(plen);
    if (!st->path) return oz_fail(err, OZ_ERR_NOMEM, "out of memory opening %s", path);
    memcpy(st->path, path, plen);
    path = st->path;

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return oz_fail(err, e == ENOMEM ? OZ_ERR_NOMEM : OZ_ERR_INPUT, "cannot open %s: %s", path, strerror(e));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return oz_fail(err, OZ_ERR_INPUT, "cannot read %s: not a regular file", path);
    }
    size_t size = (size_t)sb.st_size;
    if (size < 8) {
        close(fd);
        return oz_fail(err, OZ_ERR_INPUT, "%s: file is only %zu bytes, too short for a safetensors header", path, size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd);
    if (map == MAP_FAILED)
        return oz_fail(err, map_errno == ENOMEM ? OZ_ERR_NOMEM : OZ_ERR_IO, "cannot map %s: %s", path, strerror(map_errno));
    st->map = map;
    st->map_size = size;

    const unsigned char *bytes = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | bytes[i];
    if (hlen > OZ_ST_MAX_HEADER)
        return oz_fail(err, OZ_ERR_INPUT, "%s: header length %" PRIu64 " bytes is absurd (limit %llu); not a safetensors file?",
                       path, hlen, OZ_ST_MAX_HEADER);
    if (hlen > size - 8)
        return oz_fail(err, OZ_ERR_INPUT, "%s: header length %" PRIu64 " runs past the end of the %zu-byte file (truncated?)",
                       path, hlen, size);
    const char *header = (const char *)bytes + 8;
    const char *parse_end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(header, (size_t)hlen, &parse_end, 0);
    if (!root) {
        size_t at = parse_end && parse_end >= header ? (size_t)(parse_end - header) : 0;
        return oz_fail(err, OZ_ERR_INPUT, "%s: header is not valid JSON (error near header byte %zu)", path, at);
    }
    st->json = root;
    for (const char *c = parse_end; c < header + hlen; c++) {
        if (*c != ' ' && *c != '\t' && *c != '\n' && *c != '\r')
            return oz_fail(err, OZ_ERR_INPUT, "%s: header is not valid JSON (stray bytes after the object at header byte %zu)",
                           path, (size_t)(c - header));
    }
    if (!cJSON_IsObject(root)) return oz_fail(err, OZ_ERR_INPUT, "%s: header is not a JSON object", path);

    const unsigned char *data = bytes + 8 + hlen;
    size_t data_size = size - 8 - (size_t)hlen;
    int count = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, root) {
        if (strcmp(item->string, "__metadata__") == 0) {
            OZ_TRY(check_metadata(path, item, err));
            st->metadata = (void *)item;
        } else {
            count++;
        }
    }
    st->tensors = calloc((size_t)count + 1, sizeof *st->tensors);
    st->by_name = calloc((size_t)count + 1, sizeof *st->by_name);
    span *spans = calloc((size_t)count + 1, sizeof *spans);
    if (!st->tensors || !st->by_name || !spans) {
        free(spans);
        return oz_fail(err, OZ_ERR_NOMEM, "out of memory reading the header of %s", path);
    }
    int k = 0;
    oz_status s = OZ_OK;
    cJSON_ArrayForEach(item, root) {
        if (strcmp(item->string, "__metadata__") == 0) continue;
        s = parse_tensor(path, item, data, data_size, &st->tensors[k], &spans[k], err);
        if (s != OZ_OK) break;
        k++;
    }
    if (s == OZ_OK) s = check_layout(path, spans, count, data_size, err);
    if (s == OZ_OK) {
        /* Hand tensors out in file order: it matches the writer's order and streams well. */
        oz_st_tensor *ordered = malloc(((size_t)count + 1) * sizeof *ordered);
        if (!ordered) {
            s = oz_fail(err, OZ_ERR_NOMEM, "out of memory reading the header of %s", path);
        } else {
            for (int i = 0; i < count; i++) ordered[i] = *spans[i].t;
            free(st->tensors);
            st->tensors = ordered;
        }
    }
    free(spans);
    if (s != OZ_OK) return s;
    st->n_tensors = count;

    for (int i = 0; i < count; i++) st->by_name[i] = &st->tensors[i];
    qsort(st->by_name, (size_t)count, sizeof *st->by_name, by_name_cmp);
    for (int i = 1; i < count; i++) {
        if (strcmp(st->by_name[i - 1]->name, st->by_name[i]->name) == 0)
            return oz_fail(err, OZ_ERR_INPUT, "%s: tensor '%s' appears twice in the header", path, st->by_name[i]->name);
    }
    return OZ_OK;
}

oz_status oz_safetensors_open(oz_safetensors *st, const char *path, oz_err *err) {
    memset(st, 0, sizeof *st);
    oz_status s = open_impl(st, path, err);
    if (s != OZ_OK) oz_safetensors_close(st);
    return s;
}

void oz_safetensors_close(oz_safetensors *st) {
    if (st->map) munmap(st->map, st->map_size);
    cJSON_Delete(st->json);
    free(st->tensors);
    free(st->by_name);
    free(st->path);
    memset(st, 0, sizeof *st);
}

const oz_st_tensor *oz_safetensors_find(const oz_safetensors *st, const char *name) {
    if (st->n_tensors == 0) return NULL;
    const oz_st_tensor *const *hit =
        bsearch(name, st->by_name, (size_t)st->n_tensors, sizeof *st->by_name, name_key_cmp);
    return hit ? *hit : NULL;
}

const char *oz_safetensors_metadata(const oz_safetensors *st, const char *key) {
    if (!st->metadata) return NULL;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive((const cJSON *)st->metadata, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Conversion                                                                                 */

static oz_status check_convert(const oz_st_tensor *t, size_t n, oz_err *err) {
    if (!oz_dtype_is_float(t->dtype))
        return oz_fail(err, OZ_ERR_INPUT, "%s: tensor '%s' has dtype %s; expected a floating type (F32, F16, BF16, F64)",
                       t->path ? t->path : "?", t->name, oz_dtype_name(t->dtype));
    if (n != t->numel)
        return oz_fail(err, OZ_ERR_INPUT, "%s: tensor '%s' has %zu elements but %zu were expected",
                       t->path ? t->path : "?", t->name, t->numel, n);
    return OZ_OK;
}

/* Elements are loaded with memcpy because the mapping gives no alignment guarantee. */
#define OZ_CONVERT_LOOP(DST_T, SRC_T, EXPR)              \
    for (size_t i = 0; i < n; i++) {                     \
        SRC_T v;                                         \
        memcpy(&v, src + i * sizeof(SRC_T), sizeof v);  \
        dst[i] = (DST_T)(EXPR);                          \
    }

oz_status oz_st_tensor_to_f32(const oz_st_tensor *t, float *dst, size_t n, oz_err *err) {
    OZ_TRY(check_convert(t, n, err));
    const unsigned char *src = t->data;
    switch (t->dtype) {
    case OZ_DT_F32: if (n) memcpy(dst, src, n * sizeof *dst); break;
    case OZ_DT_F16: OZ_CONVERT_LOOP(float, uint16_t, oz_f16_to_f32(v)) break;
    case OZ_DT_BF16: OZ_CONVERT_LOOP(float, uint16_t, oz_bf16_to_f32(v)) break;
    case OZ_DT_F64: OZ_CONVERT_LOOP(float, double, v) break;
    default: return oz_fail(err, OZ_ERR_INTERNAL, "unhandled dtype %d", (int)t->dtype);
    }
    return OZ_OK;
}

void oz_st_tensor_release(const oz_st_tensor *t) {
    if (!t->nbytes) return;
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0) return;
    /* Whole pages around the data; a neighbour sharing an edge page just reads it again. */
    uintptr_t a = (uintptr_t)t->data & ~(uintptr_t)(page - 1);
    uintptr_t e = ((uintptr_t)t->data + t->nbytes + (uintptr_t)page - 1) & ~(uintptr_t)(page - 1);
    (void)madvise((void *)a, e - a, MADV_DONTNEED); /* advice: a refusal only costs memory */
}

oz_status oz_st_tensor_to_f64(const oz_st_tensor *t, double *dst, size_t n, oz_err *err) {
    OZ_TRY(check_convert(t, n, err));
    const unsigned char *src = t->data;
    switch (t->dtype) {
    case OZ_DT_F32: OZ_CONVERT_LOOP(double, float, v) break;
    case OZ_DT_F16: OZ_CONVERT_LOOP(double, uint16_t, oz_f16_to_f32(v)) break;
    case OZ_DT_BF16: OZ_CONVERT_LOOP(double, uint16_t, oz_bf16_to_f32(v)) break;
    case OZ_DT_F64: if (n) memcpy(dst, src, n * sizeof *dst); break;
    default: return oz_fail(err, OZ_ERR_INTERNAL, "unhandled dtype %d", (int)t->dtype);
    }
    return OZ_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Writer                                                                                     */

static int str_ptr_cmp(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Entries come from ounce's own code, so a malformed one is a bug, not a user mistake. */
static oz_status check_entries(const char *path, const oz_st_entry *e, int n, size_t *nbytes, oz_err *err) {
    if (n < 0 || (n > 0 && !e)) return oz_fail(err, OZ_ERR_INTERNAL, "%s: bad tensor list (n=%d)", path, n);
    for (int i = 0; i < n; i++) {
        size_t numel;
        if (!e[i].name || !strcmp(e[i].name, "__metadata__"))
            return oz_fail(err, OZ_ERR_INTERNAL, "%s: tensor %d has an invalid name", path, i);
        if (!dtype_valid(e[i].dtype))
            return oz_fail(err, OZ_ERR_INTERNAL, "%s: tensor '%s' has an invalid dtype %d", path, e[i].name, (int)e[i].dtype);
        if (e[i].ndim < 0 || e[i].ndim > OZ_ST_MAX_DIMS)
            return oz_fail(err, OZ_ERR_INTERNAL, "%s: tensor '%s' has %d dimensions", path, e[i].name, e[i].ndim);
        if (!shape_bytes(e[i].ndim, e[i].shape, e[i].dtype, &numel, &nbytes[i]))
            return oz_fail(err, OZ_ERR_INTERNAL, "%s: tensor '%s' has a negative or overflowing shape", path, e[i].name);
        if (nbytes[i] > 0 && !e[i].data)
            return oz_fail(err, OZ_ERR_INTERNAL, "%s: tensor '%s' has no data", path, e[i].name);
    }
    const char **names = malloc(((size_t)n + 1) * sizeof *names);
    if (!names) return oz_fail(err, OZ_ERR_NOMEM, "out of memory writing %s", path);
    for (int i = 0; i < n; i++) names[i] = e[i].name;
    qsort(names, (size_t)n, sizeof *names, str_ptr_cmp);
    oz_status s = OZ_OK;
    for (int i = 1; i < n && s == OZ_OK; i++) {
        if (!strcmp(names[i - 1], names[i]))
            s = oz_fail(err, OZ_ERR_INTERNAL, "%s: tensor name '%s' is used twice", path, names[i]);
    }
    free(names);
    return s;
}

static oz_status check_metadata_kv(const char *path, const char *const *kv, oz_err *err) {
    for (const char *const *p = kv; p && *p; p += 2)
        if (!p[1]) return oz_fail(err, OZ_ERR_INTERNAL, "%s: metadata key '%s' has no value", path, p[0]);
    return OZ_OK;
}

/* The header as padded JSON text, malloc'd; NULL on allocation failure. */
static char *build_header(const oz_st_entry *e, int n, const size_t *nbytes, const char *const *kv, size_t *len) {
    cJSON *root = cJSON_CreateObject(), *meta = cJSON_CreateObject();
    int ok = root && meta && cJSON_AddItemToObject(root, "__metadata__", meta);
    if (!ok) cJSON_Delete(meta);
    ok = ok && cJSON_AddStringToObject(meta, "format", "pt");
    for (const char *const *p = kv; ok && p && p[0]; p += 2) {
        cJSON *v = cJSON_CreateString(p[1]);
        if (!v) ok = 0;
        else if (cJSON_GetObjectItemCaseSensitive(meta, p[0])) ok = cJSON_ReplaceItemInObjectCaseSensitive(meta, p[0], v);
        else ok = cJSON_AddItemToObject(meta, p[0], v);
        if (!ok) cJSON_Delete(v);
    }
    uint64_t offset = 0;
    for (int i = 0; ok && i < n; i++) {
        cJSON *t = cJSON_AddObjectToObject(root, e[i].name), *shape = NULL, *offs = NULL;
        ok = t && cJSON_AddStringToObject(t, "dtype", oz_dtype_name(e[i].dtype));
        ok = ok && (shape = cJSON_AddArrayToObject(t, "shape")) != NULL;
        for (int d = 0; ok && d < e[i].ndim; d++) {
            cJSON *v = cJSON_CreateNumber((double)e[i].shape[d]);
            ok = v && cJSON_AddItemToArray(shape, v);
        }
        if (ok) offs = cJSON_AddArrayToObject(t, "data_offsets");
        cJSON *b = offs ? cJSON_CreateNumber((double)offset) : NULL;
        ok = b && cJSON_AddItemToArray(offs, b);
        offset += nbytes[i];
        cJSON *en = ok ? cJSON_CreateNumber((double)offset) : NULL;
        ok = en && cJSON_AddItemToArray(offs, en);
    }
    char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!text) return NULL;
    size_t tl = strlen(text), padded = (tl + 7) & ~(size_t)7;
    char *out = malloc(padded + 1);
    if (out) {
        memcpy(out, text, tl);
        memset(out + tl, ' ', padded - tl);
        out[padded] = '\0';
        *len = padded;
    }
    cJSON_free(text);
    return out;
}

oz_status oz_safetensors_write(const char *path, const oz_st_entry *entries, int n,
                               const char *const *metadata_kv, oz_err *err) {
    size_t *nbytes = malloc(((size_t)(n > 0 ? n : 0) + 1) * sizeof *nbytes);
    if (!nbytes) return oz_fail(err, OZ_ERR_NOMEM, "out of memory writing %s", path);
    oz_status s = check_entries(path, entries, n, nbytes, err);
    if (s == OZ_OK) s = check_metadata_kv(path, metadata_kv, err);
    size_t hlen = 0;
    char *header = NULL;
    if (s == OZ_OK) {
        header = build_header(entries, n, nbytes, metadata_kv, &hlen);
        if (!header) s = oz_fail(err, OZ_ERR_NOMEM, "out of memory building the header of %s", path);
    }
    oz_atomic_file f;
    if (s == OZ_OK) s = oz_atomic_file_open(&f, path, err);
    if (s == OZ_OK) {
        unsigned char len8[8];
        for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
        s = oz_atomic_file_write(&f, len8, sizeof len8, err);
        if (s == OZ_OK) s = oz_atomic_file_write(&f, header, hlen, err);
        /* Straight from the caller's buffers: no copy of the (possibly huge) tensor data. */
        for (int i = 0; i < n && s == OZ_OK; i++) s = oz_atomic_file_write(&f, entries[i].data, nbytes[i], err);
        if (s == OZ_OK) s = oz_atomic_file_commit(&f, err);
        else oz_atomic_file_abort(&f);
    }
    free(header);
    free(nbytes);
    return s;
}
