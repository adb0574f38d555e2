/* The oz_tokenizer front: the byte-level tokenizer itself (every byte is its own token, so any
 * input, invalid UTF-8 included, round-trips exactly and there is nothing to train), and dispatch
 * to the Hugging Face BPE tokenizer in data/bpe.c. */
#include "data/tokenizer.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data/bpe.h"
#include "data/tokenizer_gguf.h"
#include "io/atomic.h"

void oz_tokenizer_byte(oz_tokenizer *tok) {
    tok->type = OZ_TOK_BYTE;
    tok->vocab_size = OZ_BYTE_VOCAB;
    tok->bos_id = OZ_BYTE_BOS;
    tok->eos_id = OZ_BYTE_EOS;
    tok->bpe = NULL;
    tok->threads = 0;
}

oz_status oz_tokenizer_load(oz_tokenizer *tok, const char *dir_or_file, oz_err *err) {
    memset(tok, 0, sizeof *tok);
    struct stat st;
    if (stat(dir_or_file, &st) != 0)
        return oz_fail(err, OZ_ERR_INPUT, "tokenizer %s: no such file or directory", dir_or_file);
    if (S_ISREG(st.st_mode) && oz_gguf_is_file(dir_or_file)) {
        oz_gguf g;
        OZ_TRY(oz_gguf_open(&g, dir_or_file, err));
        oz_status s = oz_tokenizer_from_gguf(tok, &g, err);
        oz_gguf_close(&g);
        return s;
    }
    char *json = NULL, *config = NULL;
    if (S_ISDIR(st.st_mode)) {
        json = oz_path_join(dir_or_file, "tokenizer.json");
        config = oz_path_join(dir_or_file, "tokenizer_config.json");
    } else {
        /* tokenizer_config.json is looked for beside the file. */
        json = oz_path_join("", dir_or_file);
        const char *slash = strrchr(dir_or_file, '/');
        if (slash) {
            char *dir = malloc((size_t)(slash - dir_or_file) + 2);
            if (dir) {
                memcpy(dir, dir_or_file, (size_t)(slash - dir_or_file) + 1);
                dir[slash - dir_or_file + 1] = '\0';
                config = oz_path_join(dir, "tokenizer_config.json");
                free(dir);
            }
        } else {
            config = oz_path_join("", "tokenizer_config.json");
        }
    }
    oz_status s = json && config ? OZ_OK : oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    if (s == OZ_OK && S_ISDIR(st.st_mode) && stat(json, &st) != 0)
        s = oz_fail(err, OZ_ERR_INPUT, "tokenizer directory %s has no tokenizer.json", dir_or_file);
    oz_bpe *b = NULL;
    if (s == OZ_OK) s = oz_bpe_load(&b, json, config, err);
    free(json);
    free(config);
    if (s != OZ_OK) return s;
    tok->type = OZ_TOK_HF;
    tok->bpe = b;
    tok->vocab_size = oz_bpe_vocab_size(b);
    tok->bos_id = oz_bpe_bos(b);
    tok->eos_id = oz_bpe_eos(b);
    return OZ_OK;
}

oz_status oz_tokenizer_from_gguf(oz_tokenizer *tok, const oz_gguf *g, oz_err *err) {
    memset(tok, 0, sizeof *tok);
    if (oz_gguf_is_byte_tokenizer(g)) {
        oz_tokenizer_byte(tok);
        return OZ_OK;
    }
    char *json, *cfg;
    OZ_TRY(oz_gguf_tokenizer_json(g, &json, &cfg, err));
    free(cfg);
    oz_bpe *b = NULL;
    oz_status s = oz_bpe_load_string(&b, json, strlen(json), g->path, err);
    free(json);
    OZ_TRY(s);
    tok->type = OZ_TOK_HF;
    tok->bpe = b;
    tok->vocab_size = oz_bpe_vocab_size(b);
    /* The file's own ids where it names them; else the loader's guesses from the template and the
     * usual token names, as for a tokenizer.json without tokenizer_config.json. */
    uint64_t v;
    const oz_gguf_kv *tk = oz_gguf_find(g, "tokenizer.ggml.tokens");
    tok->bos_id = oz_gguf_get_uint(oz_gguf_find(g, "tokenizer.ggml.bos_token_id"), &v) && v < tk->n ? (int32_t)v
                                                                                                    : oz_bpe_bos(b);
    tok->eos_id = oz_gguf_get_uint(oz_gguf_find(g, "tokenizer.ggml.eos_token_id"), &v) && v < tk->n ? (int32_t)v
                                                                                                    : oz_bpe_eos(b);
    return OZ_OK;
}

void oz_tokenizer_free(oz_tokenizer *tok) {
    if (tok->type == OZ_TOK_HF) oz_bpe_free(tok->bpe);
    tok->bpe = NULL;
}

const char *oz_tokenizer_source(const oz_tokenizer *tok) {
    return tok->type == OZ_TOK_HF && tok->bpe ? oz_bpe_path(tok->bpe) : NULL;
}

uint64_t oz_tokenizer_fingerprint(const oz_tokenizer *tok) {
    return tok->type == OZ_TOK_HF ? oz_bpe_fingerprint(tok->bpe) : 0x6279746534A17E58ull; /* "byte" */
}

const char *oz_tokenizer_name(const oz_tokenizer *tok) {
    switch (tok->type) {
    case OZ_TOK_BYTE: return "byte";
    case OZ_TOK_HF: return OZ_TOKENIZER_HF_NAME;
    }
    return "unknown";
}

oz_status oz_tokenizer_from_name(oz_tokenizer *tok, const char *name, oz_err *err) {
    if (name && strcmp(name, "byte") == 0) {
        oz_tokenizer_byte(tok);
        return OZ_OK;
    }
    if (name && strcmp(name, OZ_TOKENIZER_HF_NAME) == 0)
        return oz_fail(err, OZ_ERR_INPUT, "the '%s' tokenizer is loaded from its tokenizer.json, which is missing here",
                       name);
    return oz_fail(err, OZ_ERR_INPUT, "unknown tokenizer '%s' (supported: byte, hf)", name ? name : "(null)");
}

const char *oz_tokenizer_special_name(const oz_tokenizer *tok, int32_t id) {
    if (tok->type == OZ_TOK_HF) return oz_bpe_special_content(tok->bpe, id);
    if (id == tok->bos_id) return "<|bos|>";
    if (id == tok->eos_id) return "<|eos|>";
    return NULL;
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
    if (tok->type == OZ_TOK_HF) return oz_bpe_encode(tok->bpe, text, len, 0, tok->threads, out, err);
    if (tok->type != OZ_TOK_BYTE) return oz_fail(err, OZ_ERR_INTERNAL, "encode: unsupported tokenizer type %d", (int)tok->type);
    OZ_TRY(oz_tokens_reserve(out, out->len + len, err));
    const unsigned char *s = (const unsigned char *)text;
    int32_t *dst = out->ids + out->len;
    for (size_t i = 0; i < len; i++) dst[i] = s[i];
    out->len += len;
    return OZ_OK;
}

oz_status oz_tokenizer_encode_special(const oz_tokenizer *tok, const char *text, size_t len, oz_tokens *out,
                                      oz_err *err) {
    if (tok->type == OZ_TOK_HF) return oz_bpe_encode(tok->bpe, text, len, 1, tok->threads, out, err);
    return oz_tokenizer_encode(tok, text, len, out, err);
}

oz_status oz_tokenizer_encode_prompt(const oz_tokenizer *tok, const char *text, size_t len, oz_tokens *out,
                                     size_t *text_from, oz_err *err) {
    if (tok->type == OZ_TOK_BYTE && tok->eos_id >= 0) OZ_TRY(oz_tokens_push(out, tok->eos_id, err));
    *text_from = out->len;
    return oz_tokenizer_encode_special(tok, text, len, out, err);
}

oz_status oz_tokenizer_decode(const oz_tokenizer *tok, const int32_t *ids, size_t n, int show_special,
                              oz_text *out, oz_err *err) {
    if (tok->type == OZ_TOK_HF) return oz_bpe_decode(tok->bpe, ids, n, show_special, out, err);
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
