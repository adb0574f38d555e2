/* Tokenizers. Only the byte-level one exists for now (ids 0..255 are raw bytes, then BOS and EOS);
 * callers go through the oz_tokenizer struct so a BPE tokenizer can be added without touching them. */
#ifndef OZ_TOKENIZER_H
#define OZ_TOKENIZER_H
#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

typedef enum { OZ_TOK_BYTE = 0 } oz_tok_type;

#define OZ_BYTE_VOCAB 258
#define OZ_BYTE_BOS 256
#define OZ_BYTE_EOS 257

typedef struct {
    oz_tok_type type;
    int vocab_size;
    int32_t bos_id;
    int32_t eos_id;
} oz_tokenizer;

/* A growable id buffer; zero-initialise it, free with oz_tokens_free. */
typedef struct {
    int32_t *ids;
    size_t len, cap;
} oz_tokens;

/* A growable NUL-terminated text buffer; zero-initialise it, free with oz_text_free. */
typedef struct {
    char *data;
    size_t len, cap;
} oz_text;

void oz_tokenizer_byte(oz_tokenizer *tok);
/* The name stored in meta.json ("byte"). */
const char *oz_tokenizer_name(const oz_tokenizer *tok);
/* Inverse of oz_tokenizer_name; unknown names are OZ_ERR_INPUT. */
oz_status oz_tokenizer_from_name(oz_tokenizer *tok, const char *name, oz_err *err);
/* "<|bos|>" / "<|eos|>" for special ids, NULL for ordinary ones. */
const char *oz_tokenizer_special_name(const oz_tokenizer *tok, int32_t id);

/* Appends the ids of text[0..len) to out (out->len grows; earlier contents are kept). */
oz_status oz_tokenizer_encode(const oz_tokenizer *tok, const char *text, size_t len, oz_tokens *out,
                              oz_err *err);
/* Appends the text of ids to out (kept NUL-terminated). Special ids add nothing unless
 * show_special, then their name. An id outside the vocabulary is OZ_ERR_INPUT. */
oz_status oz_tokenizer_decode(const oz_tokenizer *tok, const int32_t *ids, size_t n, int show_special,
                              oz_text *out, oz_err *err);

oz_status oz_tokens_reserve(oz_tokens *t, size_t cap, oz_err *err);
oz_status oz_tokens_push(oz_tokens *t, int32_t id, oz_err *err);
void oz_tokens_free(oz_tokens *t);
void oz_text_free(oz_text *t);

#endif
