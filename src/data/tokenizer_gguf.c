/* Tokenizers in GGUF metadata <-> tokenizer.json (see tokenizer_gguf.h). Reading assembles a
 * tokenizer.json with cJSON and hands it to the same loader a file on disk goes through, so a GGUF
 * vocabulary is checked and encoded exactly like a Hugging Face one. */
#include "data/tokenizer_gguf.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/bpe.h"
#include "io/atomic.h"

enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };

#define SPM_SPACE "\xe2\x96\x81" /* U+2581, SentencePiece's space */

int oz_gguf_has_tokenizer(const oz_gguf *g) {
    oz_gguf_str s;
    const oz_gguf_kv *t = oz_gguf_find(g, "tokenizer.ggml.tokens");
    return oz_gguf_get_str(oz_gguf_find(g, "tokenizer.ggml.model"), &s) && t && t->type == OZ_GGUF_ARRAY &&
           t->elem_type == OZ_GGUF_STRING && t->n > 0;
}

static int str_eq(oz_gguf_str s, const char *c) { return s.len == strlen(c) && memcmp(s.s, c, s.len) == 0; }

/* ---- a string -> id table over the mapping ---- */

typedef struct {
    const oz_gguf_str *tok;
    uint32_t *slot; /* id + 1, 0 empty */
    size_t mask;
} tok_index;

static uint64_t fnv(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static int index_build(tok_index *x, const oz_gguf_str *tok, size_t n) {
    size_t cap = 16;
    while (cap < 2 * n + 2) cap *= 2;
    x->tok = tok;
    x->mask = cap - 1;
    if (!(x->slot = calloc(cap, sizeof *x->slot))) return 0;
    for (size_t i = 0; i < n; i++) {
        size_t h = (size_t)fnv(tok[i].s, tok[i].len) & x->mask;
        int dup = 0;
        while (x->slot[h] && !dup) {
            const oz_gguf_str *o = &tok[x->slot[h] - 1];
            dup = o->len == tok[i].len && memcmp(o->s, tok[i].s, o->len) == 0;
            if (!dup) h = (h + 1) & x->mask;
        }
        if (!dup) x->slot[h] = (uint32_t)i + 1; /* the first id of a repeated string wins */
    }
    return 1;
}

static long index_find(const tok_index *x, const char *s, size_t n) {
    size_t h = (size_t)fnv(s, n) & x->mask;
    while (x->slot[h]) {
        const oz_gguf_str *o = &x->tok[x->slot[h] - 1];
        if (o->len == n && memcmp(o->s, s, n) == 0) return (long)x->slot[h] - 1;
        h = (h + 1) & x->mask;
    }
    return -1;
}

/* ---- GGUF -> tokenizer.json ---- */

typedef struct {
    float score;
    uint32_t piece, left;
    uint32_t split; /* bytes of the left part */
} spm_merge;

static int merge_cmp(const void *a, const void *b) {
    const spm_merge *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    if (x->piece != y->piece) return x->piece < y->piece ? -1 : 1;
    return x->left < y->left ? -1 : x->left > y->left;
}

static char *cstr(oz_gguf_str s) {
    char *d = malloc(s.len + 1);
    if (d) {
        memcpy(d, s.s, s.len);
        d[s.len] = '\0';
    }
    return d;
}

static cJSON *added_token(int id, const char *content, int special) {
    cJSON *a = cJSON_CreateObject();
    cJSON_AddNumberToObject(a, "id", id);
    cJSON_AddStringToObject(a, "content", content);
    cJSON_AddBoolToObject(a, "single_word", 0);
    cJSON_AddBoolToObject(a, "lstrip", 0);
    cJSON_AddBoolToObject(a, "rstrip", 0);
    cJSON_AddBoolToObject(a, "normalized", 0);
    cJSON_AddBoolToObject(a, "special", special);
    return a;
}

static cJSON *template_piece(const char *special) {
    cJSON *o = cJSON_CreateObject(), *in = cJSON_CreateObject();
    if (special) {
        cJSON_AddStringToObject(in, "id", special);
        cJSON_AddNumberToObject(in, "type_id", 0);
        cJSON_AddItemToObject(o, "SpecialToken", in);
    } else {
        cJSON_AddStringToObject(in, "id", "A");
        cJSON_AddNumberToObject(in, "type_id", 0);
        cJSON_AddItemToObject(o, "Sequence", in);
    }
    return o;
}

/* BOS and/or EOS around the text, as HF's TemplateProcessing writes it. */
static cJSON *post_processor(const char *bos, int bos_id, const char *eos, int eos_id) {
    cJSON *tp = cJSON_CreateObject();
    cJSON_AddStringToObject(tp, "type", "TemplateProcessing");
    cJSON *single = cJSON_AddArrayToObject(tp, "single");
    if (bos) cJSON_AddItemToArray(single, template_piece(bos));
    cJSON_AddItemToArray(single, template_piece(NULL));
    if (eos) cJSON_AddItemToArray(single, template_piece(eos));
    cJSON *pair = cJSON_AddArrayToObject(tp, "pair");
    if (bos) cJSON_AddItemToArray(pair, template_piece(bos));
    cJSON_AddItemToArray(pair, template_piece(NULL));
    if (eos) cJSON_AddItemToArray(pair, template_piece(eos));
    cJSON *sp = cJSON_AddObjectToObject(tp, "special_tokens");
    for (int k = 0; k < 2; k++) {
        const char *t = k ? eos : bos;
        if (!t || cJSON_GetObjectItemCaseSensitive(sp, t)) continue;
        cJSON *e = cJSON_AddObjectToObject(sp, t);
        cJSON_AddStringToObject(e, "id", t);
        cJSON *ids = cJSON_AddArrayToObject(e, "ids");
        cJSON_AddItemToArray(ids, cJSON_CreateNumber(k ? eos_id : bos_id));
        cJSON *ts = cJSON_AddArrayToObject(e, "tokens");
        cJSON_AddItemToArray(ts, cJSON_CreateString(t));
    }
    return tp;
}

static cJSON *byte_level(int use_regex) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "ByteLevel");
    cJSON_AddBoolToObject(o, "add_prefix_space", 0);
    cJSON_AddBoolToObject(o, "trim_offsets", 1);
    cJSON_AddBoolToObject(o, "use_regex", use_regex);
    return o;
}

/* tokenizer.ggml.pre -> the pre-tokenizer it stands for; NULL when ounce does not know it. */
static cJSON *gpt2_pre_tokenizer(oz_gguf_str pre, int *ignore_merges) {
    *ignore_merges = 0;
    if (!pre.s || str_eq(pre, "gpt2") || str_eq(pre, "default")) return byte_level(1);
    cJSON *seq = cJSON_CreateObject();
    cJSON_AddStringToObject(seq, "type", "Sequence");
    cJSON *list = cJSON_AddArrayToObject(seq, "pretokenizers");
    if (str_eq(pre, "llama-bpe") || str_eq(pre, "llama3") || str_eq(pre, "llama-v3")) {
        *ignore_merges = 1; /* Llama 3's tokenizer.json sets it: a word that is a token stays whole */
        cJSON *split = cJSON_CreateObject(), *pat = cJSON_CreateObject();
        cJSON_AddStringToObject(split, "type", "Split");
        cJSON_AddStringToObject(pat, "Regex", oz_bpe_pattern_regex(OZ_BPE_PATTERN_LLAMA3));
        cJSON_AddItemToObject(split, "pattern", pat);
        cJSON_AddStringToObject(split, "behavior", "Isolated");
        cJSON_AddBoolToObject(split, "invert", 0);
        cJSON_AddItemToArray(list, split);
        cJSON_AddItemToArray(list, byte_level(0));
        return seq;
    }
    if (str_eq(pre, "smollm") || str_eq(pre, "starcoder") || str_eq(pre, "refact")) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "type", "Digits");
        cJSON_AddBoolToObject(d, "individual_digits", 1);
        cJSON_AddItemToArray(list, d);
        cJSON_AddItemToArray(list, byte_level(1));
        return seq;
    }
    cJSON_Delete(seq);
    return NULL;
}

static int get_bool(const oz_gguf *g, const char *key, int dflt) {
    int b;
    return oz_gguf_get_bool(oz_gguf_find(g, key), &b) ? b : dflt;
}

static long get_id(const oz_gguf *g, const char *key, size_t n) {
    uint64_t v;
    return oz_gguf_get_uint(oz_gguf_find(g, key), &v) && v < n ? (long)v : -1;
}

/* SentencePiece merges from the scores: every way a normal piece splits into two normal pieces,
 * the higher the piece's score the earlier (Hugging Face's converter derives Llama 2's the same
 * way). Appends "left right" strings to `merges`. */
static oz_status spm_merges(const oz_gguf *g, const oz_gguf_str *tok, size_t n, const int32_t *types,
                            const float *scores, const tok_index *x, cJSON *merges, oz_err *err) {
    size_t cap = 1024, len = 0;
    spm_merge *m = malloc(cap * sizeof *m);
    if (!m) return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        if (types[i] != TT_NORMAL || tok[i].len < 2) continue;
        for (size_t k = 1; k < tok[i].len; k++) {
            if (((unsigned char)tok[i].s[k] & 0xC0) == 0x80) continue; /* inside a character */
            long a = index_find(x, tok[i].s, k), b = index_find(x, tok[i].s + k, tok[i].len - k);
            if (a < 0 || b < 0 || types[a] != TT_NORMAL || types[b] != TT_NORMAL) continue;
            if (len == cap) {
                spm_merge *t = realloc(m, 2 * cap * sizeof *m);
                if (!t) {
                    free(m);
                    return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
                }
                m = t;
                cap *= 2;
            }
            m[len++] = (spm_merge){scores[i], (uint32_t)i, (uint32_t)a, (uint32_t)k};
        }
    }
    qsort(m, len, sizeof *m, merge_cmp);
    oz_status st = OZ_OK;
    char *buf = NULL;
    size_t bcap = 0;
    for (size_t i = 0; i < len && st == OZ_OK; i++) {
        const oz_gguf_str *t = &tok[m[i].piece];
        if (t->len + 2 > bcap) {
            bcap = 2 * (t->len + 2);
            char *nb = realloc(buf, bcap);
            if (!nb) {
                st = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
                break;
            }
            buf = nb;
        }
        memcpy(buf, t->s, m[i].split);
        buf[m[i].split] = ' ';
        memcpy(buf + m[i].split + 1, t->s + m[i].split, t->len - m[i].split);
        buf[t->len + 1] = '\0';
        cJSON_AddItemToArray(merges, cJSON_CreateString(buf));
    }
    (void)g;
    free(buf);
    free(m);
    return st;
}

oz_status oz_gguf_tokenizer_json(const oz_gguf *g, char **json_out, char **config_out, oz_err *err) {
    *json_out = *config_out = NULL;
    oz_gguf_str model = {0}, pre = {0}, tmpl = {0};
    if (!oz_gguf_has_tokenizer(g))
        return oz_fail(err, OZ_ERR_INPUT, "%s: no tokenizer in the metadata (tokenizer.ggml.model and .tokens)",
                       g->path);
    oz_gguf_get_str(oz_gguf_find(g, "tokenizer.ggml.model"), &model);
    oz_gguf_get_str(oz_gguf_find(g, "tokenizer.ggml.pre"), &pre);
    int spm = str_eq(model, "llama");
    if (!spm && !str_eq(model, "gpt2"))
        return oz_fail(err, OZ_ERR_INPUT, "%s: tokenizer.ggml.model \"%.*s\" is not supported (gpt2, llama)", g->path,
                       (int)(model.len > 40 ? 40 : model.len), model.s);
    const oz_gguf_kv *tk = oz_gguf_find(g, "tokenizer.ggml.tokens");
    const oz_gguf_kv *ty = oz_gguf_find(g, "tokenizer.ggml.token_type");
    const oz_gguf_kv *sc = oz_gguf_find(g, "tokenizer.ggml.scores");
    const oz_gguf_kv *mg = oz_gguf_find(g, "tokenizer.ggml.merges");
    size_t n = (size_t)tk->n;
    if (ty && (ty->type != OZ_GGUF_ARRAY || ty->n != n))
        return oz_fail(err, OZ_ERR_INPUT, "%s: tokenizer.ggml.token_type must hold one number per token", g->path);
    if (sc && (sc->type != OZ_GGUF_ARRAY || sc->n != n))
        return oz_fail(err, OZ_ERR_INPUT, "%s: tokenizer.ggml.scores must hold one number per token", g->path);
    if (!spm && (!mg || mg->type != OZ_GGUF_ARRAY || mg->elem_type != OZ_GGUF_STRING))
        return oz_fail(err, OZ_ERR_INPUT, "%s: a gpt2 tokenizer needs tokenizer.ggml.merges (strings)", g->path);
    if (spm && !sc) return oz_fail(err, OZ_ERR_INPUT, "%s: a llama tokenizer needs tokenizer.ggml.scores", g->path);
    int ignore_merges = 0;
    cJSON *pretok = spm ? NULL : gpt2_pre_tokenizer(pre, &ignore_merges);
    if (!spm && !pretok)
        return oz_fail(err, OZ_ERR_INPUT,
                       "%s: tokenizer.ggml.pre \"%.*s\" is not supported (gpt2, default, llama-bpe, smollm, starcoder, "
                       "refact)", g->path, (int)(pre.len > 40 ? 40 : pre.len), pre.s);

    oz_gguf_str *tok = malloc(n * sizeof *tok);
    int32_t *types = malloc(n * sizeof *types);
    float *scores = malloc(n * sizeof *scores);
    tok_index x = {0};
    cJSON *root = cJSON_CreateObject(), *cfg = cJSON_CreateObject();
    oz_status st = tok && types && scores && root && cfg ? OZ_OK : oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    if (st == OZ_OK) {
        oz_gguf_array_strings(tk, tok);
        for (size_t i = 0; i < n; i++) {
            double v = TT_NORMAL, s = 0;
            if (ty && !oz_gguf_array_number(ty, i, &v)) st = oz_fail(err, OZ_ERR_INPUT, "%s: tokenizer.ggml.token_type "
                                                                     "must be numbers", g->path);
            if (sc && !oz_gguf_array_number(sc, i, &s)) st = oz_fail(err, OZ_ERR_INPUT, "%s: tokenizer.ggml.scores "
                                                                     "must be numbers", g->path);
            if (st != OZ_OK) break;
            types[i] = (int32_t)v;
            scores[i] = (float)s;
            if (memchr(tok[i].s, '\0', tok[i].len)) {
                st = oz_fail(err, OZ_ERR_INPUT, "%s: token %zu holds a NUL byte", g->path, i);
                break;
            }
        }
    }
    if (st == OZ_OK && !index_build(&x, tok, n)) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    long bos = get_id(g, "tokenizer.ggml.bos_token_id", n), eos = get_id(g, "tokenizer.ggml.eos_token_id", n);
    long unk = get_id(g, "tokenizer.ggml.unknown_token_id", n);
    int add_bos = get_bool(g, "tokenizer.ggml.add_bos_token", spm), add_eos = get_bool(g, "tokenizer.ggml.add_eos_token", 0);
    int space_prefix = get_bool(g, "tokenizer.ggml.add_space_prefix", 1);
    if (st == OZ_OK && unk < 0 && spm)
        for (size_t i = 0; i < n && unk < 0; i++)
            if (types[i] == TT_UNKNOWN) unk = (long)i;

    cJSON *vocab = NULL, *merges = NULL;
    char **owned = NULL; /* NUL-terminated copies of the tokens, for cJSON */
    if (st == OZ_OK && !(owned = calloc(n, sizeof *owned))) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    for (size_t i = 0; st == OZ_OK && i < n; i++)
        if (!(owned[i] = cstr(tok[i]))) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    if (st == OZ_OK) {
        cJSON_AddStringToObject(root, "version", "1.0");
        cJSON_AddNullToObject(root, "truncation");
        cJSON_AddNullToObject(root, "padding");
        cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
        for (size_t i = 0; i < n; i++) {
            int t = types[i];
            if (t == TT_CONTROL || t == TT_UNKNOWN || t == TT_USER)
                cJSON_AddItemToArray(added, added_token((int)i, owned[i], t != TT_USER));
        }
        if (spm) {
            cJSON *norm = cJSON_AddObjectToObject(root, "normalizer");
            cJSON_AddStringToObject(norm, "type", "Sequence");
            cJSON *list = cJSON_AddArrayToObject(norm, "normalizers");
            if (space_prefix) {
                cJSON *p = cJSON_CreateObject();
                cJSON_AddStringToObject(p, "type", "Prepend");
                cJSON_AddStringToObject(p, "prepend", SPM_SPACE);
                cJSON_AddItemToArray(list, p);
            }
            cJSON *r = cJSON_CreateObject(), *pat = cJSON_CreateObject();
            cJSON_AddStringToObject(r, "type", "Replace");
            cJSON_AddStringToObject(pat, "String", " ");
            cJSON_AddItemToObject(r, "pattern", pat);
            cJSON_AddStringToObject(r, "content", SPM_SPACE);
            cJSON_AddItemToArray(list, r);
            cJSON_AddNullToObject(root, "pre_tokenizer");
        } else {
            cJSON_AddNullToObject(root, "normalizer");
            cJSON_AddItemToObject(root, "pre_tokenizer", pretok);
            pretok = NULL;
        }
        const char *b = add_bos && bos >= 0 ? owned[bos] : NULL, *e = add_eos && eos >= 0 ? owned[eos] : NULL;
        if (b || e) cJSON_AddItemToObject(root, "post_processor", post_processor(b, (int)bos, e, (int)eos));
        else cJSON_AddNullToObject(root, "post_processor");
        cJSON *dec = cJSON_AddObjectToObject(root, "decoder");
        if (spm) {
            cJSON_AddStringToObject(dec, "type", "Sequence");
            cJSON *list = cJSON_AddArrayToObject(dec, "decoders");
            cJSON *r = cJSON_CreateObject(), *pat = cJSON_CreateObject();
            cJSON_AddStringToObject(r, "type", "Replace");
            cJSON_AddStringToObject(pat, "String", SPM_SPACE);
            cJSON_AddItemToObject(r, "pattern", pat);
            cJSON_AddStringToObject(r, "content", " ");
            cJSON_AddItemToArray(list, r);
            cJSON *bf = cJSON_CreateObject(), *fu = cJSON_CreateObject();
            cJSON_AddStringToObject(bf, "type", "ByteFallback");
            cJSON_AddStringToObject(fu, "type", "Fuse");
            cJSON_AddItemToArray(list, bf);
            cJSON_AddItemToArray(list, fu);
            if (space_prefix) {
                cJSON *s = cJSON_CreateObject();
                cJSON_AddStringToObject(s, "type", "Strip");
                cJSON_AddStringToObject(s, "content", " ");
                cJSON_AddNumberToObject(s, "start", 1);
                cJSON_AddNumberToObject(s, "stop", 0);
                cJSON_AddItemToArray(list, s);
            }
        } else {
            cJSON_AddStringToObject(dec, "type", "ByteLevel");
            cJSON_AddBoolToObject(dec, "add_prefix_space", 1);
            cJSON_AddBoolToObject(dec, "trim_offsets", 1);
            cJSON_AddBoolToObject(dec, "use_regex", 1);
        }
        cJSON *mdl = cJSON_AddObjectToObject(root, "model");
        cJSON_AddStringToObject(mdl, "type", "BPE");
        cJSON_AddNullToObject(mdl, "dropout");
        if (spm && unk >= 0) cJSON_AddStringToObject(mdl, "unk_token", owned[unk]);
        else cJSON_AddNullToObject(mdl, "unk_token");
        cJSON_AddNullToObject(mdl, "continuing_subword_prefix");
        cJSON_AddNullToObject(mdl, "end_of_word_suffix");
        cJSON_AddBoolToObject(mdl, "fuse_unk", spm);
        cJSON_AddBoolToObject(mdl, "byte_fallback", spm);
        cJSON_AddBoolToObject(mdl, "ignore_merges", ignore_merges);
        vocab = cJSON_AddObjectToObject(mdl, "vocab");
        for (size_t i = 0; i < n; i++)
            if (tok[i].len > 0 && index_find(&x, tok[i].s, tok[i].len) == (long)i)
                cJSON_AddItemToObject(vocab, owned[i], cJSON_CreateNumber((double)i));
        merges = cJSON_AddArrayToObject(mdl, "merges");
        if (spm) {
            st = spm_merges(g, tok, n, types, scores, &x, merges, err);
        } else {
            oz_gguf_str *ms = malloc((size_t)mg->n * sizeof *ms + 1);
            if (!ms) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
            else oz_gguf_array_strings(mg, ms);
            for (uint64_t i = 0; st == OZ_OK && i < mg->n; i++) {
                char *s = cstr(ms[i]);
                if (!s || memchr(ms[i].s, '\0', ms[i].len)) {
                    free(s);
                    st = s ? oz_fail(err, OZ_ERR_INPUT, "%s: merge %llu holds a NUL byte", g->path, (unsigned long long)i)
                           : oz_fail(err, OZ_ERR_NOMEM, "out of memory");
                    break;
                }
                cJSON_AddItemToArray(merges, cJSON_CreateString(s));
                free(s);
            }
            free(ms);
        }
        /* tokenizer_config.json: what transformers reads beside the tokenizer. */
        if (bos >= 0) cJSON_AddStringToObject(cfg, "bos_token", owned[bos]);
        if (eos >= 0) cJSON_AddStringToObject(cfg, "eos_token", owned[eos]);
        if (unk >= 0) cJSON_AddStringToObject(cfg, "unk_token", owned[unk]);
        cJSON_AddBoolToObject(cfg, "add_bos_token", add_bos);
        cJSON_AddBoolToObject(cfg, "add_eos_token", add_eos);
        if (oz_gguf_get_str(oz_gguf_find(g, "tokenizer.chat_template"), &tmpl)) {
            char *t = cstr(tmpl);
            if (t) cJSON_AddStringToObject(cfg, "chat_template", t);
            free(t);
        }
        cJSON_AddStringToObject(cfg, "tokenizer_class", spm ? "LlamaTokenizerFast" : "PreTrainedTokenizerFast");
    }
    if (st == OZ_OK) {
        *json_out = cJSON_PrintUnformatted(root);
        *config_out = cJSON_Print(cfg);
        if (!*json_out || !*config_out) {
            free(*json_out);
            free(*config_out);
            *json_out = *config_out = NULL;
            st = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
        }
    }
    for (size_t i = 0; owned && i < n; i++) free(owned[i]);
    free(owned);
    cJSON_Delete(pretok);
    cJSON_Delete(root);
    cJSON_Delete(cfg);
    free(x.slot);
    free(tok);
    free(types);
    free(scores);
    return st;
}

int oz_gguf_is_byte_tokenizer(const oz_gguf *g) {
    oz_gguf_str kind;
    return oz_gguf_get_str(oz_gguf_find(g, "ounce.tokenizer"), &kind) && str_eq(kind, "byte");
}

oz_status oz_gguf_tokenizer_write_files(const oz_gguf *g, const char *dir, oz_err *err) {
    if (!oz_gguf_has_tokenizer(g) || oz_gguf_is_byte_tokenizer(g)) return OZ_OK;
    char *json, *cfg;
    OZ_TRY(oz_gguf_tokenizer_json(g, &json, &cfg, err));
    char *p1 = oz_path_join(dir, "tokenizer.json"), *p2 = oz_path_join(dir, "tokenizer_config.json");
    oz_status st = p1 && p2 ? oz_atomic_write(p1, json, strlen(json), err) : oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    if (st == OZ_OK) st = oz_atomic_write(p2, cfg, strlen(cfg), err);
    free(p1);
    free(p2);
    free(json);
    free(cfg);
    return st;
}

/* ---- tokenizer.json -> GGUF ---- */

/* GPT-2's byte-to-character map: printable Latin-1 bytes stand for themselves, the rest take
 * U+0100 onwards in byte order. Writes the UTF-8 of byte b's character. */
static void byte_char(int b, char out[4]) {
    int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    int cp = b;
    if (!printable) {
        int k = 0;
        for (int i = 0; i < b; i++) k += !((i >= 33 && i <= 126) || (i >= 161 && i <= 172) || (i >= 174 && i <= 255));
        cp = 256 + k;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = '\0';
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = '\0';
    }
}

void oz_gguf_tokenizer_meta_byte(oz_gguf_meta *m, int vocab_size, int bos_id, int eos_id) {
    int n = vocab_size;
    if (n < bos_id + 1) n = bos_id + 1;
    if (n < eos_id + 1) n = eos_id + 1;
    if (n < 256) n = 256;
    char (*bufs)[16] = calloc((size_t)n, sizeof *bufs);
    const char **tokens = calloc((size_t)n, sizeof *tokens);
    int32_t *types = calloc((size_t)n, sizeof *types);
    if (!bufs || !tokens || !types) {
        m->failed = 1;
    } else {
        for (int i = 0; i < n; i++) {
            if (i < 256) byte_char(i, bufs[i]), types[i] = TT_NORMAL;
            else if (i == bos_id) snprintf(bufs[i], sizeof bufs[i], "<|bos|>"), types[i] = TT_CONTROL;
            else if (i == eos_id) snprintf(bufs[i], sizeof bufs[i], "<|eos|>"), types[i] = TT_CONTROL;
            else snprintf(bufs[i], sizeof bufs[i], "[PAD%d]", i), types[i] = TT_UNUSED;
            tokens[i] = bufs[i];
        }
        oz_gguf_meta_str(m, "tokenizer.ggml.model", "gpt2");
        oz_gguf_meta_str(m, "tokenizer.ggml.pre", "gpt2");
        oz_gguf_meta_strs(m, "tokenizer.ggml.tokens", tokens, (size_t)n);
        oz_gguf_meta_i32s(m, "tokenizer.ggml.token_type", types, (size_t)n);
        oz_gguf_meta_strs(m, "tokenizer.ggml.merges", NULL, 0);
        if (bos_id >= 0) oz_gguf_meta_u32(m, "tokenizer.ggml.bos_token_id", (uint32_t)bos_id);
        if (eos_id >= 0) oz_gguf_meta_u32(m, "tokenizer.ggml.eos_token_id", (uint32_t)eos_id);
        oz_gguf_meta_bool(m, "tokenizer.ggml.add_bos_token", 0);
        oz_gguf_meta_str(m, "ounce.tokenizer", "byte");
    }
    free(bufs);
    free(tokens);
    free(types);
}

void oz_gguf_tokenizer_meta_copy(oz_gguf_meta *m, const oz_gguf *g) {
    for (size_t i = 0; i < g->n_kv; i++)
        if (!strncmp(g->kv[i].key, "tokenizer.", 10)) oz_gguf_meta_copy(m, &g->kv[i]);
}

static const char *jstr(const cJSON *o, const char *key) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(j) ? j->valuestring : NULL;
}

/* Whether a post-processor template puts a special token first (BOS) or last (EOS). */
static void template_ends(const cJSON *pp, int *bos, int *eos) {
    const char *type = jstr(pp, "type");
    if (!type) return;
    if (!strcmp(type, "Sequence")) {
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(pp, "processors")) template_ends(c, bos, eos);
        return;
    }
    if (strcmp(type, "TemplateProcessing") != 0) return;
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(pp, "single");
    int n = cJSON_GetArraySize(single);
    if (n < 1) return;
    *bos |= cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(single, 0), "SpecialToken") != NULL;
    *eos |= n > 1 && cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(single, n - 1), "SpecialToken") != NULL;
}

/* The GGUF name of a byte-level tokenizer.json's pre-tokenizer, NULL when it has none. */
static const char *pre_name(const cJSON *pre) {
    const char *type = jstr(pre, "type");
    if (!type) return NULL;
    if (!strcmp(type, "ByteLevel")) return cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(pre, "use_regex")) ? NULL : "gpt2";
    if (strcmp(type, "Sequence") != 0) return NULL;
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(pre, "pretokenizers");
    if (cJSON_GetArraySize(list) != 2) return NULL;
    const cJSON *a = cJSON_GetArrayItem(list, 0), *b = cJSON_GetArrayItem(list, 1);
    const char *ta = jstr(a, "type"), *tb = jstr(b, "type");
    if (!ta || !tb || strcmp(tb, "ByteLevel") != 0) return NULL;
    int b_regex = !cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(b, "use_regex"));
    if (!strcmp(ta, "Digits") && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "individual_digits")) && b_regex)
        return "smollm";
    if (!strcmp(ta, "Split") && !b_regex) {
        const char *re = jstr(cJSON_GetObjectItemCaseSensitive(a, "pattern"), "Regex");
        if (re && !strcmp(re, oz_bpe_pattern_regex(OZ_BPE_PATTERN_LLAMA3))) return "llama-bpe";
        if (re && !strcmp(re, oz_bpe_pattern_regex(OZ_BPE_PATTERN_GPT2))) return "gpt2";
    }
    return NULL;
}

static int is_byte_piece(const char *s) {
    return strlen(s) == 6 && !strncmp(s, "<0x", 3) && s[5] == '>';
}

static oz_status read_json(const char *path, cJSON **out, int required, oz_err *err) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return required ? oz_fail(err, OZ_ERR_INPUT, "%s: no such file", path) : OZ_OK;
    fclose(f);
    char *text;
    size_t n;
    OZ_TRY(oz_read_file(path, &text, &n, err));
    *out = cJSON_ParseWithLength(text, n);
    free(text);
    if (!cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        *out = NULL;
        return oz_fail(err, OZ_ERR_INPUT, "%s: not a valid JSON object", path);
    }
    return OZ_OK;
}

oz_status oz_gguf_tokenizer_meta_from_dir(oz_gguf_meta *m, const char *dir, int vocab_size, oz_err *err) {
    char path[4200], cpath[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    snprintf(cpath, sizeof cpath, "%s/tokenizer_config.json", dir);
    /* The loader checks the file is one ounce encodes with, and names bos and eos. */
    oz_bpe *bpe;
    FILE *cf = fopen(cpath, "rb");
    if (cf) fclose(cf);
    OZ_TRY(oz_bpe_load(&bpe, path, cf ? cpath : NULL, err));
    int32_t bos = oz_bpe_bos(bpe), eos = oz_bpe_eos(bpe);
    int tk_vocab = oz_bpe_vocab_size(bpe);
    oz_bpe_free(bpe);
    cJSON *root = NULL, *cfg = NULL;
    oz_status st = read_json(path, &root, 1, err);
    if (st == OZ_OK) st = read_json(cpath, &cfg, 0, err);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    int spm = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback"));
    const char *pre = spm ? NULL : pre_name(cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"));
    if (st == OZ_OK && !spm && !pre)
        st = oz_fail(err, OZ_ERR_INPUT, "%s: its pre_tokenizer has no GGUF name (gpt2, llama-bpe, smollm), so llama.cpp "
                     "could not split text as it does", path);
    int n = vocab_size > tk_vocab ? vocab_size : tk_vocab;
    const char **tokens = calloc((size_t)n, sizeof *tokens);
    char (*pads)[24] = calloc((size_t)n, sizeof *pads);
    int32_t *types = calloc((size_t)n, sizeof *types);
    float *scores = calloc((size_t)n, sizeof *scores);
    const char **merges = NULL;
    char **merge_bufs = NULL;
    int n_merges = 0;
    if (st == OZ_OK && (!tokens || !pads || !types || !scores)) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    if (st == OZ_OK) {
        for (int i = 0; i < n; i++) {
            snprintf(pads[i], sizeof pads[i], "[PAD%d]", i);
            tokens[i] = pads[i];
            types[i] = TT_UNUSED;
        }
        const char *unk = jstr(model, "unk_token");
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(model, "vocab")) {
            int id = (int)e->valuedouble;
            if (!cJSON_IsNumber(e) || id < 0 || id >= n) continue;
            tokens[id] = e->string;
            types[id] = spm && unk && !strcmp(e->string, unk) ? TT_UNKNOWN
                      : spm && is_byte_piece(e->string)     ? TT_BYTE
                                                             : TT_NORMAL;
        }
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(root, "added_tokens")) {
            const cJSON *idj = cJSON_GetObjectItemCaseSensitive(e, "id");
            const char *content = jstr(e, "content");
            int id = cJSON_IsNumber(idj) ? (int)idj->valuedouble : -1;
            if (!content || id < 0 || id >= n) continue;
            tokens[id] = content;
            types[id] = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "special")) ? TT_CONTROL : TT_USER;
            if (spm && unk && !strcmp(content, unk)) types[id] = TT_UNKNOWN;
        }
        const cJSON *ml = cJSON_GetObjectItemCaseSensitive(model, "merges");
        int nm = cJSON_GetArraySize(ml);
        merges = calloc((size_t)nm + 1, sizeof *merges);
        merge_bufs = calloc((size_t)nm + 1, sizeof *merge_bufs);
        if (!merges || !merge_bufs) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
        cJSON_ArrayForEach(e, ml) {
            if (st != OZ_OK) break;
            const char *a = NULL, *b = NULL;
            char *s = NULL;
            if (cJSON_IsString(e)) {
                s = malloc(strlen(e->valuestring) + 1);
                if (s) strcpy(s, e->valuestring);
            } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2) {
                a = cJSON_GetStringValue(cJSON_GetArrayItem(e, 0));
                b = cJSON_GetStringValue(cJSON_GetArrayItem(e, 1));
                if (a && b && (s = malloc(strlen(a) + strlen(b) + 2))) sprintf(s, "%s %s", a, b);
            }
            if (!s) {
                st = oz_fail(err, OZ_ERR_INPUT, "%s: merge %d is neither \"a b\" nor [a, b]", path, n_merges);
                break;
            }
            merge_bufs[n_merges] = s;
            merges[n_merges++] = s;
        }
        if (spm && st == OZ_OK) {
            /* SentencePiece scores from the merge ranks: the piece merge r makes scores -r, the
             * first (best) merge making it wins; pieces no merge makes score 0. llama.cpp then
             * merges in the same order. */
            int *seen = calloc((size_t)n, sizeof *seen);
            if (!seen) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
            cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
            for (int r = 0; st == OZ_OK && r < n_merges; r++) {
                char *joined = malloc(strlen(merges[r]) + 1);
                if (!joined) {
                    st = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
                    break;
                }
                const char *sp = strchr(merges[r], ' ');
                size_t k = sp ? (size_t)(sp - merges[r]) : strlen(merges[r]);
                memcpy(joined, merges[r], k);
                strcpy(joined + k, sp ? sp + 1 : "");
                const cJSON *idj = cJSON_GetObjectItemCaseSensitive(vocab, joined);
                int id = cJSON_IsNumber(idj) ? (int)idj->valuedouble : -1;
                if (id >= 0 && id < n && !seen[id]) {
                    seen[id] = 1;
                    scores[id] = -(float)r;
                }
                free(joined);
            }
            free(seen);
        }
    }
    if (st == OZ_OK) {
        oz_gguf_meta_str(m, "tokenizer.ggml.model", spm ? "llama" : "gpt2");
        if (!spm) oz_gguf_meta_str(m, "tokenizer.ggml.pre", pre);
        oz_gguf_meta_strs(m, "tokenizer.ggml.tokens", tokens, (size_t)n);
        oz_gguf_meta_i32s(m, "tokenizer.ggml.token_type", types, (size_t)n);
        if (spm) oz_gguf_meta_f32s(m, "tokenizer.ggml.scores", scores, (size_t)n);
        else oz_gguf_meta_strs(m, "tokenizer.ggml.merges", merges, (size_t)n_merges);
        if (bos >= 0) oz_gguf_meta_u32(m, "tokenizer.ggml.bos_token_id", (uint32_t)bos);
        if (eos >= 0) oz_gguf_meta_u32(m, "tokenizer.ggml.eos_token_id", (uint32_t)eos);
        for (int i = 0; spm && i < n; i++)
            if (types[i] == TT_UNKNOWN) {
                oz_gguf_meta_u32(m, "tokenizer.ggml.unknown_token_id", (uint32_t)i);
                break;
            }
        int add_bos = 0, add_eos = 0;
        template_ends(cJSON_GetObjectItemCaseSensitive(root, "post_processor"), &add_bos, &add_eos);
        const cJSON *ab = cJSON_GetObjectItemCaseSensitive(cfg, "add_bos_token");
        const cJSON *ae = cJSON_GetObjectItemCaseSensitive(cfg, "add_eos_token");
        if (cJSON_IsBool(ab)) add_bos = cJSON_IsTrue(ab);
        if (cJSON_IsBool(ae)) add_eos = cJSON_IsTrue(ae);
        oz_gguf_meta_bool(m, "tokenizer.ggml.add_bos_token", add_bos);
        oz_gguf_meta_bool(m, "tokenizer.ggml.add_eos_token", add_eos);
        if (spm) {
            const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
            const cJSON *pt = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
            char *ns = cJSON_PrintUnformatted(norm), *ps = cJSON_PrintUnformatted(pt);
            int prefix = (ns && strstr(ns, "\"Prepend\"")) ||
                         (ps && strstr(ps, "\"Metaspace\"") && !strstr(ps, "\"never\""));
            free(ns);
            free(ps);
            oz_gguf_meta_bool(m, "tokenizer.ggml.add_space_prefix", prefix);
        }
        const char *tmpl = jstr(cfg, "chat_template");
        if (tmpl) oz_gguf_meta_str(m, "tokenizer.chat_template", tmpl);
    }
    for (int i = 0; merge_bufs && i < n_merges; i++) free(merge_bufs[i]);
    free(merge_bufs);
    free(merges);
    free(tokens);
    free(pads);
    free(types);
    free(scores);
    cJSON_Delete(root);
    cJSON_Delete(cfg);
    return st;
}
