/* GGUF files (llama.cpp's model format, version 2 and 3, little-endian): a header ("GGUF",
 * version, tensor count, key-value count), typed key-value metadata, tensor infos (name, up to 4
 * dimensions innermost first, ggml type, offset), padding to general.alignment (default 32), then
 * the tensor data, each tensor at an aligned offset.
 *
 * The reader maps the file and checks every count, length, type and offset against the file's
 * size before it allocates or hands out a pointer: a malformed file is OZ_ERR_INPUT with one line
 * naming the file and the problem, never a large allocation or a read past the end. The writer
 * streams a file through an atomic file (io/atomic.h): metadata first, then one tensor at a time. */
#ifndef OZ_GGUF_H
#define OZ_GGUF_H
#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "GGUF data is little-endian; this code assumes a little-endian host"
#endif

enum {
    OZ_GGUF_U8 = 0, OZ_GGUF_I8, OZ_GGUF_U16, OZ_GGUF_I16, OZ_GGUF_U32, OZ_GGUF_I32, OZ_GGUF_F32,
    OZ_GGUF_BOOL, OZ_GGUF_STRING, OZ_GGUF_ARRAY, OZ_GGUF_U64, OZ_GGUF_I64, OZ_GGUF_F64, OZ_GGUF_NTYPES
};
#define OZ_GGUF_DEFAULT_ALIGNMENT 32
#define OZ_GGUF_MAX_DIMS 4

/* A string inside the mapping: not NUL-terminated. */
typedef struct {
    const char *s;
    size_t len;
} oz_gguf_str;

typedef struct {
    char *key;            /* NUL-terminated copy */
    uint32_t type;        /* OZ_GGUF_* */
    uint32_t elem_type;   /* arrays: the elements' type */
    uint64_t n;           /* arrays: element count (checked against the file) */
    const uint8_t *value; /* the value's bytes in the mapping (an array's first element) */
    const uint8_t *raw;   /* the value as stored, after its type (an array's header included) */
    size_t raw_len;
} oz_gguf_kv;

typedef struct {
    char *name;                        /* NUL-terminated copy */
    uint32_t ndim;
    uint64_t dims[OZ_GGUF_MAX_DIMS];   /* dims[0] is the innermost (contiguous) one; unused = 1 */
    uint32_t type;                     /* a ggml type ounce reads (numeric/ggml_quant.h) */
    uint64_t numel;
    size_t nbytes;
    uint64_t offset;                   /* from the start of the data section */
    const void *data;                  /* in the mapping, inside the file */
} oz_gguf_tensor;

typedef struct {
    char *path;
    void *map;
    size_t size;
    uint32_t version;
    uint32_t alignment;
    oz_gguf_kv *kv;
    size_t n_kv;
    oz_gguf_tensor *tensors;  /* in file order */
    size_t n_tensors;
    size_t data_offset;       /* start of the tensor data section */
} oz_gguf;

/* True when `path` is a regular file that starts with the GGUF magic. */
int oz_gguf_is_file(const char *path);

/* Maps and validates `path`: structure, counts and lengths against the file size, value types,
 * bools, alignment (a power of two), tensor dims (1..4, each >= 1, the innermost a multiple of the
 * block size), duplicate names, offsets (aligned, data inside the file). A tensor of a type ounce
 * cannot decode is refused here, naming it. On failure *g needs no close. */
oz_status oz_gguf_open(oz_gguf *g, const char *path, oz_err *err);
void oz_gguf_close(oz_gguf *g);

const oz_gguf_kv *oz_gguf_find(const oz_gguf *g, const char *key);
const oz_gguf_tensor *oz_gguf_find_tensor(const oz_gguf *g, const char *name);

/* Typed reads of a scalar value; each returns 0 (leaving *out) when the value is another kind:
 * uint accepts any integer type with a non-negative value, number any integer or float type. */
int oz_gguf_get_uint(const oz_gguf_kv *kv, uint64_t *out);
int oz_gguf_get_number(const oz_gguf_kv *kv, double *out);
int oz_gguf_get_bool(const oz_gguf_kv *kv, int *out);
int oz_gguf_get_str(const oz_gguf_kv *kv, oz_gguf_str *out);
/* Array element i (< kv->n) of a numeric array as a double; 0 for other arrays. */
int oz_gguf_array_number(const oz_gguf_kv *kv, uint64_t i, double *out);
/* An array of strings: fills out[0..kv->n) (the caller allocates kv->n entries; n is bounded by
 * the file size, at most one per 8 bytes). 0 when kv is not an array of strings. */
int oz_gguf_array_strings(const oz_gguf_kv *kv, oz_gguf_str *out);

/* ---- writing ---- */

/* Key-value metadata assembled in memory (it precedes the tensor infos in the file). Add calls
 * record an out-of-memory failure in `failed`, reported by oz_gguf_write_begin. */
typedef struct {
    uint8_t *buf;
    size_t len, cap;
    uint64_t n;
    int failed;
} oz_gguf_meta;

void oz_gguf_meta_u32(oz_gguf_meta *m, const char *key, uint32_t v);
void oz_gguf_meta_i32(oz_gguf_meta *m, const char *key, int32_t v);
void oz_gguf_meta_f32(oz_gguf_meta *m, const char *key, float v);
void oz_gguf_meta_bool(oz_gguf_meta *m, const char *key, int v);
void oz_gguf_meta_str(oz_gguf_meta *m, const char *key, const char *s);
void oz_gguf_meta_strs(oz_gguf_meta *m, const char *key, const char *const *s, size_t n);
void oz_gguf_meta_f32s(oz_gguf_meta *m, const char *key, const float *v, size_t n);
void oz_gguf_meta_i32s(oz_gguf_meta *m, const char *key, const int32_t *v, size_t n);
/* Copies a key-value pair read from another file, value bytes unchanged. */
void oz_gguf_meta_copy(oz_gguf_meta *m, const oz_gguf_kv *kv);
void oz_gguf_meta_free(oz_gguf_meta *m);

typedef struct {
    const char *name;
    uint32_t type;                  /* a writable ggml type */
    uint32_t ndim;
    uint64_t dims[OZ_GGUF_MAX_DIMS]; /* innermost first */
} oz_gguf_tensor_spec;

typedef struct oz_gguf_writer oz_gguf_writer;

/* Opens `path` for atomic writing and writes the header, the metadata (general.alignment is the
 * caller's to add when alignment is not 32), the tensor infos and the padding. Tensors then follow
 * with oz_gguf_write_tensor, in `specs` order, each exactly its size; oz_gguf_write_finish checks
 * they all came and commits. Any failure cleans up; abort is safe at any point. */
oz_status oz_gguf_write_begin(oz_gguf_writer **out, const char *path, const oz_gguf_meta *meta,
                              const oz_gguf_tensor_spec *specs, size_t n, uint32_t alignment, oz_err *err);
oz_status oz_gguf_write_tensor(oz_gguf_writer *w, const void *data, size_t nbytes, oz_err *err);
oz_status oz_gguf_write_finish(oz_gguf_writer *w, oz_err *err);
void oz_gguf_write_abort(oz_gguf_writer *w);

#endif
