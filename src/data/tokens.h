/* Growable buffers of token ids and of text: what encoding and decoding append to. Zero-initialise
 * one to start; its free function releases it and leaves it empty and reusable. */
#ifndef OZ_TOKENS_H
#define OZ_TOKENS_H
#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

/* A growable id buffer: ids[0..len) are valid, cap ids are allocated. */
typedef struct {
    int32_t *ids;
    size_t len, cap;
} oz_tokens;

/* A growable NUL-terminated text buffer: data[0..len) is the text (data[len] == '\0' once any
 * text was written), cap bytes are allocated. */
typedef struct {
    char *data;
    size_t len, cap;
} oz_text;

/* Makes room for at least cap ids in all; OZ_ERR_NOMEM leaves t as it was. */
oz_status oz_tokens_reserve(oz_tokens *t, size_t cap, oz_err *err);
oz_status oz_tokens_push(oz_tokens *t, int32_t id, oz_err *err);
void oz_tokens_free(oz_tokens *t);
void oz_text_free(oz_text *t);

#endif
