/* Token shards: a 256-byte header then little-endian token ids, 2 bytes each when the vocabulary
 * fits in 16 bits, else 4. Header: "OZTOKENS", u32 version (1), u32 vocab_size, u32 token_bytes,
 * u32 reserved, u64 n_tokens, zero padding; all little-endian. Readers memory-map the file and
 * reject anything whose size or ids disagree with the header, naming the file. */
#ifndef OZ_SHARD_H
#define OZ_SHARD_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "util/err.h"

#define OZ_SHARD_MAGIC "OZTOKENS"
#define OZ_SHARD_VERSION 1u
#define OZ_SHARD_HEADER_BYTES 256u

typedef struct {
    char *path;              /* owned copy, for error messages */
    uint32_t vocab_size;
    uint32_t token_bytes;    /* 2 or 4 */
    uint64_t n_tokens;
    const unsigned char *tokens; /* first token inside the mapping */
    void *map;
    size_t map_len;
} oz_shard;

/* Width a shard uses for a vocabulary: 2 when vocab_size <= 65536, else 4. */
uint32_t oz_shard_token_bytes(uint32_t vocab_size);

/* Maps and validates path (magic, version, width, exact file size, every id < vocab_size).
 * A bad or truncated file is OZ_ERR_INPUT with a message naming it. */
oz_status oz_shard_open(oz_shard *s, const char *path, oz_err *err);
void oz_shard_close(oz_shard *s);

/* Token i (i < n_tokens). */
static inline uint32_t oz_shard_token(const oz_shard *s, uint64_t i) {
    const unsigned char *p = s->tokens + i * s->token_bytes;
    if (s->token_bytes == 2) return (uint32_t)p[0] | (uint32_t)p[1] << 8;
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
/* Copies tokens [start, start+n) into out; the range must lie inside the shard. */
void oz_shard_read(const oz_shard *s, uint64_t start, size_t n, int32_t *out);

/* Streaming writer: tokens go to a temp file beside path which finish fsyncs and renames over
 * path, so readers never see a half-written shard. abort (or a failed call) removes the temp. */
typedef struct {
    FILE *f;
    char *path;
    char *tmp_path;
    uint32_t vocab_size;
    uint32_t token_bytes;
    uint64_t n_tokens;
    unsigned char *buf; /* conversion buffer for append */
    size_t buf_tokens;
} oz_shard_writer;

oz_status oz_shard_writer_open(oz_shard_writer *w, const char *path, uint32_t vocab_size, oz_err *err);
/* Ids outside [0, vocab_size) are OZ_ERR_INPUT. */
oz_status oz_shard_writer_append(oz_shard_writer *w, const int32_t *ids, size_t n, oz_err *err);
/* Appends n tokens already encoded at the writer's width, little-endian (not range-checked). */
oz_status oz_shard_writer_append_raw(oz_shard_writer *w, const void *data, size_t n, oz_err *err);
oz_status oz_shard_writer_finish(oz_shard_writer *w, oz_err *err);
void oz_shard_writer_abort(oz_shard_writer *w);

/* One-shot write of a whole token array. */
oz_status oz_shard_write(const char *path, uint32_t vocab_size, const int32_t *ids, uint64_t n, oz_err *err);

#endif
