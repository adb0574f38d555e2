/* oz_tokens and oz_text: the growable buffers tokenizers append to. */
#include "data/tokens.h"

#include <stdlib.h>

oz_status oz_tokens_reserve(oz_tokens *t, size_t cap, oz_err *err) {
    if (cap <= t->cap) return OZ_OK;
    /* Geometric growth keeps appends amortised O(1) even for 100 MB inputs. */
    size_t ncap = t->cap ? t->cap : 1024;
    while (ncap < cap) ncap *= 2;
    int32_t *p = realloc(t->ids, ncap * sizeof *p);
    if (!p) return oz_fail(err, OZ_ERR_NOMEM, "out of memory growing a token buffer to %zu ids", ncap);
    t->ids = p;
    t->cap = ncap;
    return OZ_OK;
}

oz_status oz_tokens_push(oz_tokens *t, int32_t id, oz_err *err) {
    if (t->len == t->cap) OZ_TRY(oz_tokens_reserve(t, t->len + 1, err));
    t->ids[t->len++] = id;
    return OZ_OK;
}

void oz_tokens_free(oz_tokens *t) {
    free(t->ids);
    t->ids = NULL;
    t->len = t->cap = 0;
}

void oz_text_free(oz_text *t) {
    free(t->data);
    t->data = NULL;
    t->len = t->cap = 0;
}
