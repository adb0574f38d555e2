/* Hugging Face safetensors files: an 8-byte little-endian header length, a JSON header
 * {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}} padded
 * with spaces to a multiple of 8, then the raw little-endian tensor bytes. The reader maps the
 * file and checks every header field before handing out pointers; the writer streams tensors
 * through an atomic file. (The bf16/f16 conversions are in numeric/half.h.) */
#ifndef OZ_SAFETENSORS_H
#define OZ_SAFETENSORS_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "numeric/half.h"
#include "util/err.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this code assumes a little-endian host"
#endif

typedef enum { OZ_DT_F32, OZ_DT_F16, OZ_DT_BF16, OZ_DT_F64, OZ_DT_I32, OZ_DT_I64, OZ_DT_U8, OZ_DT_I8 } oz_dtype;
#define OZ_DT_COUNT 8
#define OZ_ST_MAX_DIMS 8

/* The safetensors spelling ("F32", "BF16", ...); "?" for an invalid value. */
const char *oz_dtype_name(oz_dtype dt);
/* Bytes per element; 0 for an invalid value. */
size_t oz_dtype_size(oz_dtype dt);
/* Parses a safetensors dtype name; returns 0 if it is not one ounce supports. */
int oz_dtype_from_name(const char *name, oz_dtype *dt);
int oz_dtype_is_float(oz_dtype dt);

typedef struct {
    const char *name;
    const char *path;  /* the file it lives in, for error messages */
    oz_dtype dtype;
    int ndim;          /* 0 for a scalar */
    int64_t shape[OZ_ST_MAX_DIMS];
    size_t numel;      /* product of shape; 1 for a scalar */
    const void *data;  /* inside the read-only mapping; may be unaligned, so read with memcpy */
    size_t nbytes;
} oz_st_tensor;

typedef struct {
    char *path;
    void *map;
    size_t map_size;
    void *json;                     /* parsed header; tensor names point into it */
    void *metadata;                 /* its "__metadata__" object or NULL */
    oz_st_tensor *tensors;          /* in file (data offset) order */
    int n_tensors;
    const oz_st_tensor **by_name;   /* sorted by name for lookup */
} oz_safetensors;

/* Maps and validates `path`. Every malformed file is OZ_ERR_INPUT with one line naming the file
 * and the problem. On failure *st needs no close. Tensor data points into the mapping, so it is
 * valid until close, and the file must not be truncated meanwhile (that would raise SIGBUS). */
oz_status oz_safetensors_open(oz_safetensors *st, const char *path, oz_err *err);
/* NULL if there is no tensor called `name`. */
const oz_st_tensor *oz_safetensors_find(const oz_safetensors *st, const char *name);
/* A "__metadata__" value, or NULL if absent. */
const char *oz_safetensors_metadata(const oz_safetensors *st, const char *key);
void oz_safetensors_close(oz_safetensors *st);

/* Converts a floating tensor (F32, F16, BF16, F64) to f32 / f64. `n` must equal t->numel. */
oz_status oz_st_tensor_to_f32(const oz_st_tensor *t, float *dst, size_t n, oz_err *err);
oz_status oz_st_tensor_to_f64(const oz_st_tensor *t, double *dst, size_t n, oz_err *err);
/* Drops the pages of the mapping that hold t's data from this process's resident memory (they are
 * read again from the file if touched later), so a loader that has copied a tensor out does not hold
 * the file and the copy at once: the peak resident memory of a load is the weights, not twice them. */
void oz_st_tensor_release(const oz_st_tensor *t);

typedef struct {
    const char *name;
    oz_dtype dtype;
    int ndim;
    int64_t shape[OZ_ST_MAX_DIMS];
    const void *data;  /* numel * dtype size bytes, host byte order (little-endian) */
} oz_st_entry;

/* Writes the tensors, in the given order with increasing offsets, atomically to `path`, streaming
 * each tensor from its buffer. `metadata_kv` is NULL or "key", "value", ..., NULL; "format": "pt"
 * is always included (a "format" pair given by the caller replaces it) because transformers
 * refuses files without it. Malformed entries (bad dtype/shape, duplicate names, a key without a
 * value) are OZ_ERR_INTERNAL: they come from ounce's code, not from the user. */
oz_status oz_safetensors_write(const char *path, const oz_st_entry *entries, int n,
                               const char *const *metadata_kv, oz_err *err);

#endif
