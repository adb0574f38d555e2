/* Byte-level tokenizer: every byte is its own token, so any input (including invalid UTF-8)
 * round-trips exactly and there is nothing to train. */
#include "data/tokenizer.h"

#include <stdlib.h>
#include <string.h>

void oz_tokenizer_byte(oz_tokenizer *tok) {
    tok->type = OZ_TOK_BYTE;
    tok->vocab_size = OZ_BYTE_VOCAB;
    tok->bos_id = OZ_BYTE_BOS;
    tok->eos_id = OZ_BYTE_EOS;
}

const char *oz_tokenizer_name(const oz_tokenizer *tok) {
    switch (tok->type) {
    case OZ_TOK_BYTE: return "byte";
    }
    return "unknown";
}

oz_status oz_tokenizer_from_name(oz_tokenizer *tok, const char *name, oz_err *err) {
    if (name && strcmp(name, "byte") == 0) {
        oz_tokenizer_byte(tok);
        return OZ_OK;
    }
    return oz_fail(err, OZ_ERR_INPUT, "unknown tokenizer '%s' (supported: byte)", name ? name : "(null)");
}

const char *oz_tokenizer_special_name(const oz_tokenizer *tok, int32_t id) {
    if (id == tok->bos_id) return "<|bos|>";
    if (id == tok->eos_id) return "<|eos|>";
    return NULL;
}

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

static oz_status text_reserve(oz_text *t, size_t need, oz_err *err) {
    if (need + 1 <= t->cap) return OZ_OK;
    size_t ncap = t->cap ? t->cap : 256;
    while (ncap < need + 1) ncap *= 2;
    char *p = realloc(t->data, ncap);
    if (!p) return oz_fail(err, OZ_ERR_NOMEM, "out of memory growing a text buffer to %zu bytes", ncap);
    t->data = p;
    t->cap = ncap;
    return OZ_OK;
}

oz_status oz_tokenizer_encode(const oz_tokenizer *tok, const char *text, size_t len, oz_tokens *out,
                              oz_err *err) {
    if (tok->type != OZ_TOK_BYTE) return oz_fail(err, OZ_ERR_INTERNAL, "encode: unsupported tokenizer type %d", (int)tok->type);
    OZ_TRY(oz_tokens_reserve(out, out->len + len, err));
    const unsigned char *s = (const unsigned char *)text;
    int32_t *dst = out->ids + out->len;
    for (size_t i = 0; i < len; i++) dst[i] = s[i];
    out->len += len;
    return OZ_OK;
}

oz_status oz_tokenizer_decode(const oz_tokenizer *tok, const int32_t *ids, size_t n, int show_special,
                              oz_text *out, oz_err *err) {
    if (tok->type != OZ_TOK_BYTE) return oz_fail(err, OZ_ERR_INTERNAL, "decode: unsupported tokenizer type %d", (int)tok->type);
    /* Upper bound: every id is a byte or a short special name. */
    OZ_TRY(text_reserve(out, out->len + n * (show_special ? 8 : 1), err));
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id >= 0 && id < 256) {
            out->data[out->len++] = (char)(unsigned char)id;
        } else if (id == tok->bos_id || id == tok->eos_id) {
            if (show_special) {
                const char *name = oz_tokenizer_special_name(tok, id);
                size_t k = strlen(name);
                memcpy(out->data + out->len, name, k);
                out->len += k;
            }
        } else {
            if (out->data) out->data[out->len] = '\0';
            return oz_fail(err, OZ_ERR_INPUT, "cannot decode token id %d: outside the %d-token vocabulary",
                           (int)id, tok->vocab_size);
        }
    }
    if (out->data) out->data[out->len] = '\0';
    return OZ_OK;
}
