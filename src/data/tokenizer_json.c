/* The Hugging Face tokenizer.json (and tokenizer_config.json) loader: parses the file with cJSON
 * into an oz_bpe's tables and pipeline steps (data/bpe_internal.h), checking every field bpe.h
 * lists as supported and failing with one line that names the file and the field otherwise. */
#include "data/bpe_internal.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/atomic.h"
#include "io/json.h"

static int strmap_build(strmap *m) {
    size_t cap = 16;
    while (cap < m->n * 2 + 2) cap *= 2;
    m->slot = calloc(cap, sizeof *m->slot);
    if (!m->slot) return 0;
    m->mask = cap - 1;
    for (size_t i = 0; i < m->n; i++) {
        size_t h = (size_t)hash_bytes(m->ent[i].s, m->ent[i].len) & m->mask;
        while (m->slot[h]) h = (h + 1) & m->mask;
        m->slot[h] = (uint32_t)i + 1;
    }
    return 1;
}

/* Returns 0 when the pair is already present (the first, lower rank wins as in the library). */
static int pairmap_put(pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t id) {
    uint64_t k = pair_key(a, b);
    size_t h = pair_hash(k, m->mask);
    while (m->t[h].key) {
        if (m->t[h].key == k) return 0;
        h = (h + 1) & m->mask;
    }
    m->t[h] = (pair_ent){k, rank, id};
    return 1;
}

typedef struct {
    oz_bpe *b;
    const char *name; /* file name for messages */
    oz_err *err;
    /* Every id must be below this: the tokens the file lists plus OZ_TOKENIZER_ID_SLACK. Ids are
     * dense in Hugging Face tokenizers, and tables are sized by the largest id, so a stray huge id
     * in a small file would otherwise allocate gigabytes. */
    double id_limit;
} loader;

#define OZ_TOKENIZER_ID_SLACK 1024

#define LFAIL(L, ...) oz_fail((L)->err, OZ_ERR_INPUT, __VA_ARGS__)

static const char *jstr(const cJSON *o, const char *key) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(j) ? j->valuestring : NULL;
}
static int jbool(const cJSON *o, const char *key, int dflt) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsBool(j) ? cJSON_IsTrue(j) : dflt;
}
static int jnull_or_missing(const cJSON *o, const char *key) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    return !j || cJSON_IsNull(j);
}

static char *dupstr(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* A {"String": s} or {"Regex": r} pattern object. */
static oz_status read_pattern(loader *L, const cJSON *pat, const char *where, const char **str, int *is_regex) {
    const char *s = jstr(pat, "String");
    const char *r = jstr(pat, "Regex");
    if (s) {
        *str = s;
        *is_regex = 0;
    } else if (r) {
        *str = r;
        *is_regex = 1;
    } else {
        return LFAIL(L, "%s: %s.pattern must be {\"String\": ...} or {\"Regex\": ...}", L->name, where);
    }
    return OZ_OK;
}

static oz_status add_norm(loader *L, const cJSON *n, const char *where) {
    oz_bpe *b = L->b;
    const char *type = jstr(n, "type");
    if (!type) return LFAIL(L, "%s: %s has no \"type\"", L->name, where);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
        if (!cJSON_IsArray(list)) return LFAIL(L, "%s: %s.normalizers must be a list", L->name, where);
        const cJSON *c;
        cJSON_ArrayForEach(c, list) OZ_TRY(add_norm(L, c, where));
        return OZ_OK;
    }
    norm_step st;
    memset(&st, 0, sizeof st);
    if (!strcmp(type, "Prepend")) {
        const char *p = jstr(n, "prepend");
        if (!p) return LFAIL(L, "%s: %s Prepend has no \"prepend\" string", L->name, where);
        st.kind = NORM_PREPEND;
        st.a = dupstr(p);
        if (!st.a) return oz_fail(L->err, OZ_ERR_NOMEM, "out of memory");
    } else if (!strcmp(type, "Replace")) {
        const char *pat = NULL, *content = jstr(n, "content");
        int is_re = 0;
        OZ_TRY(read_pattern(L, cJSON_GetObjectItemCaseSensitive(n, "pattern"), where, &pat, &is_re));
        if (!content) return LFAIL(L, "%s: %s Replace has no \"content\" string", L->name, where);
        st.kind = is_re ? NORM_REPLACE_RE : NORM_REPLACE;
        st.a = dupstr(pat);
        st.b = dupstr(content);
        if (!st.a || !st.b) {
            free(st.a);
            free(st.b);
            return oz_fail(L->err, OZ_ERR_NOMEM, "out of memory");
        }
        if (is_re) {
            oz_status s = oz_bpe_regex_compile(&st.re, pat, 0, L->name, L->err);
            if (s != OZ_OK) {
                free(st.a);
                free(st.b);
                return s;
            }
        }
    } else if (!strcmp(type, "Strip")) {
        st.kind = NORM_STRIP;
        st.left = jbool(n, "strip_left", 1);
        st.right = jbool(n, "strip_right", 1);
    } else {
        return LFAIL(L, "%s: %s.type \"%s\" is not supported (supported: Sequence, Prepend, Replace, Strip)", L->name,
                     where, type);
    }
    norm_step *q = realloc(b->norm, (size_t)(b->n_norm + 1) * sizeof *q);
    if (!q) {
        free(st.a);
        free(st.b);
        pcre2_code_free(st.re.code);
        return oz_fail(L->err, OZ_ERR_NOMEM, "out of memory");
    }
    b->norm = q;
    b->norm[b->n_norm++] = st;
    return OZ_OK;
}

static oz_status push_pre(loader *L, pre_step *st) {
    oz_bpe *b = L->b;
    pre_step *q = realloc(b->pre, (size_t)(b->n_pre + 1) * sizeof *q);
    if (!q) {
        pcre2_code_free(st->re.code);
        return oz_fail(L->err, OZ_ERR_NOMEM, "out of memory");
    }
    b->pre = q;
    b->pre[b->n_pre++] = *st;
    return OZ_OK;
}

static oz_status parse_behavior(loader *L, const cJSON *n, const char *where, split_behavior *out) {
    const char *beh = jstr(n, "behavior");
    static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
    for (int i = 0; beh && i < 5; i++)
        if (!strcmp(beh, names[i])) {
            *out = (split_behavior)i;
            return OZ_OK;
        }
    return LFAIL(L, "%s: %s.behavior \"%s\" is not a split behavior", L->name, where, beh ? beh : "(missing)");
}

static oz_status add_pre(loader *L, const cJSON *n, const char *where) {
    oz_bpe *b = L->b;
    const char *type = jstr(n, "type");
    if (!type) return LFAIL(L, "%s: %s has no \"type\"", L->name, where);
    if (b->byte_level) return LFAIL(L, "%s: %s: ByteLevel must be the last pre-tokenizer (found %s after it)", L->name, where, type);
    pre_step st;
    memset(&st, 0, sizeof st);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "pretokenizers");
        if (!cJSON_IsArray(list)) return LFAIL(L, "%s: %s.pretokenizers must be a list", L->name, where);
        const cJSON *c;
        cJSON_ArrayForEach(c, list) OZ_TRY(add_pre(L, c, where));
        return OZ_OK;
    } else if (!strcmp(type, "Split")) {
        const char *pat = NULL;
        int is_re = 0;
        OZ_TRY(read_pattern(L, cJSON_GetObjectItemCaseSensitive(n, "pattern"), where, &pat, &is_re));
        OZ_TRY(parse_behavior(L, n, where, &st.behavior));
        st.kind = PRE_SPLIT;
        st.invert = jbool(n, "invert", 0);
        OZ_TRY(oz_bpe_regex_compile(&st.re, pat, !is_re, L->name, L->err));
        if (b->n_pre == 0 && is_re && !st.invert && st.behavior == BEH_ISOLATED &&
            (!strcmp(pat, GPT2_PATTERN) || !strcmp(pat, LLAMA3_PATTERN)))
            b->chunk_safe = 1;
    } else if (!strcmp(type, "ByteLevel")) {
        st.kind = PRE_BYTELEVEL;
        st.add_prefix_space = jbool(n, "add_prefix_space", 1);
        if (jbool(n, "use_regex", 1)) OZ_TRY(oz_bpe_regex_compile(&st.re, GPT2_PATTERN, 0, L->name, L->err));
        if (b->n_pre == 0 && st.re.code && !st.add_prefix_space) b->chunk_safe = 1;
        b->byte_level = 1;
    } else if (!strcmp(type, "Metaspace")) {
        const char *r = jstr(n, "replacement");
        if (!r || !*r || strlen(r) > 4) return LFAIL(L, "%s: %s Metaspace needs a one-character \"replacement\"", L->name, where);
        st.kind = PRE_METASPACE;
        memcpy(st.repl, r, strlen(r));
        st.repl_len = (int)strlen(r);
        const char *scheme = jstr(n, "prepend_scheme");
        if (!scheme) st.scheme = jbool(n, "add_prefix_space", 1) ? PREPEND_ALWAYS : PREPEND_NEVER;
        else if (!strcmp(scheme, "always")) st.scheme = PREPEND_ALWAYS;
        else if (!strcmp(scheme, "first")) st.scheme = PREPEND_FIRST;
        else if (!strcmp(scheme, "never")) st.scheme = PREPEND_NEVER;
        else return LFAIL(L, "%s: %s.prepend_scheme \"%s\" is unknown", L->name, where, scheme);
        st.split = jbool(n, "split", 1);
    } else if (!strcmp(type, "Digits")) {
        st.kind = PRE_SPLIT;
        st.behavior = BEH_ISOLATED;
        OZ_TRY(oz_bpe_regex_compile(&st.re, jbool(n, "individual_digits", 0) ? "\\p{N}" : "\\p{N}+", 0, L->name, L->err));
    } else if (!strcmp(type, "WhitespaceSplit")) {
        st.kind = PRE_SPLIT;
        st.behavior = BEH_REMOVED;
        OZ_TRY(oz_bpe_regex_compile(&st.re, "\\s+", 0, L->name, L->err));
    } else if (!strcmp(type, "Whitespace")) {
        st.kind = PRE_SPLIT;
        st.behavior = BEH_REMOVED;
        st.invert = 1;
        OZ_TRY(oz_bpe_regex_compile(&st.re, "\\w+|[^\\w\\s]+", 0, L->name, L->err));
    } else {
        return LFAIL(L,
                     "%s: %s.type \"%s\" is not supported (supported: Sequence, Split, ByteLevel, Metaspace, Digits, "
                     "WhitespaceSplit, Whitespace)",
                     L->name, where, type);
    }
    return push_pre(L, &st);
}

static oz_status add_dec(loader *L, const cJSON *n, const char *where) {
    oz_bpe *b = L->b;
    const char *type = jstr(n, "type");
    if (!type) return LFAIL(L, "%s: %s has no \"type\"", L->name, where);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "decoders");
        if (!cJSON_IsArray(list)) return LFAIL(L, "%s: %s.decoders must be a list", L->name, where);
        const cJSON *c;
        cJSON_ArrayForEach(c, list) OZ_TRY(add_dec(L, c, where));
        return OZ_OK;
    }
    dec_step st;
    memset(&st, 0, sizeof st);
    const char *a = NULL, *bb = NULL;
    if (!strcmp(type, "ByteLevel")) st.kind = DEC_BYTELEVEL;
    else if (!strcmp(type, "ByteFallback")) st.kind = DEC_BYTEFALLBACK;
    else if (!strcmp(type, "Fuse")) st.kind = DEC_FUSE;
    else if (!strcmp(type, "Replace")) {
        int is_re = 0;
        OZ_TRY(read_pattern(L, cJSON_GetObjectItemCaseSensitive(n, "pattern"), where, &a, &is_re));
        if (is_re) return LFAIL(L, "%s: %s Replace with a Regex pattern is not supported", L->name, where);
        bb = jstr(n, "content");
        if (!bb) return LFAIL(L, "%s: %s Replace has no \"content\"", L->name, where);
        st.kind = DEC_REPLACE;
    } else if (!strcmp(type, "Strip")) {
        a = jstr(n, "content");
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(n, "start"), *e = cJSON_GetObjectItemCaseSensitive(n, "stop");
        if (!a || !oz_json_int_in(s, 0, 1 << 20, &st.start) || !oz_json_int_in(e, 0, 1 << 20, &st.stop))
            return LFAIL(L, "%s: %s Strip needs \"content\", \"start\" and \"stop\" (counts)", L->name, where);
        st.kind = DEC_STRIP;
    } else if (!strcmp(type, "Metaspace")) {
        a = jstr(n, "replacement");
        if (!a) return LFAIL(L, "%s: %s Metaspace has no \"replacement\"", L->name, where);
        const char *scheme = jstr(n, "prepend_scheme");
        st.kind = DEC_METASPACE;
        st.scheme = scheme ? (!strcmp(scheme, "never") ? PREPEND_NEVER : PREPEND_ALWAYS)
                           : (jbool(n, "add_prefix_space", 1) ? PREPEND_ALWAYS : PREPEND_NEVER);
    } else {
        return LFAIL(L,
                     "%s: %s.type \"%s\" is not supported (supported: Sequence, ByteLevel, Replace, ByteFallback, Fuse, "
                     "Strip, Metaspace)",
                     L->name, where, type);
    }
    st.a = a ? dupstr(a) : NULL;
    st.b = bb ? dupstr(bb) : NULL;
    dec_step *q = realloc(b->dec, (size_t)(b->n_dec + 1) * sizeof *q);
    if ((a && !st.a) || (bb && !st.b) || !q) {
        free(st.a);
        free(st.b);
        if (q) b->dec = q;
        return oz_fail(L->err, OZ_ERR_NOMEM, "out of memory");
    }
    b->dec = q;
    b->dec[b->n_dec++] = st;
    return OZ_OK;
}

static oz_status ivec_push(loader *L, ivec *v, int32_t id) {
    if (!ivec_reserve(v, v->n + 1)) return oz_fail(L->err, OZ_ERR_NOMEM, "out of memory");
    v->v[v->n++] = id;
    return OZ_OK;
}

static int32_t id_of(const oz_bpe *b, const char *content) { return oz_bpe_token_id(b, content); }

/* Post-processors add ids around the text: earlier ones inside later ones. */
static oz_status add_post(loader *L, const cJSON *n, const char *where) {
    oz_bpe *b = L->b;
    const char *type = jstr(n, "type");
    if (!type) return LFAIL(L, "%s: %s has no \"type\"", L->name, where);
    ivec pre = {0}, suf = {0};
    oz_status s = OZ_OK;
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "processors");
        if (!cJSON_IsArray(list)) return LFAIL(L, "%s: %s.processors must be a list", L->name, where);
        const cJSON *c;
        cJSON_ArrayForEach(c, list) OZ_TRY(add_post(L, c, where));
        return OZ_OK;
    } else if (!strcmp(type, "ByteLevel")) {
        return OZ_OK; /* offsets only */
    } else if (!strcmp(type, "TemplateProcessing")) {
        const cJSON *single = cJSON_GetObjectItemCaseSensitive(n, "single");
        const cJSON *specials = cJSON_GetObjectItemCaseSensitive(n, "special_tokens");
        if (!cJSON_IsArray(single)) return LFAIL(L, "%s: %s.single must be a list", L->name, where);
        int seen_a = 0;
        const cJSON *item;
        cJSON_ArrayForEach(item, single) {
            const cJSON *sp = cJSON_GetObjectItemCaseSensitive(item, "SpecialToken");
            const cJSON *sq = cJSON_GetObjectItemCaseSensitive(item, "Sequence");
            if (sq) {
                seen_a = 1;
                continue;
            }
            const char *name = sp ? jstr(sp, "id") : NULL;
            if (!name) {
                s = LFAIL(L, "%s: %s.single has an item that is neither SpecialToken nor Sequence", L->name, where);
                break;
            }
            const cJSON *def = cJSON_GetObjectItemCaseSensitive(specials, name);
            const cJSON *ids = cJSON_GetObjectItemCaseSensitive(def, "ids");
            if (!cJSON_IsArray(ids)) {
                s = LFAIL(L, "%s: %s.special_tokens has no ids for \"%s\"", L->name, where, name);
                break;
            }
            const cJSON *id;
            cJSON_ArrayForEach(id, ids) {
                int v;
                if (!oz_json_int_in(id, 0, L->id_limit - 1, &v)) {
                    s = LFAIL(L, "%s: %s.special_tokens.%s.ids must be token ids", L->name, where, name);
                    break;
                }
                s = ivec_push(L, seen_a ? &suf : &pre, v);
                if (s != OZ_OK) break;
            }
            if (s != OZ_OK) break;
        }
    } else if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
        const cJSON *cls = cJSON_GetObjectItemCaseSensitive(n, "cls"), *sep = cJSON_GetObjectItemCaseSensitive(n, "sep");
        const cJSON *ci = cJSON_GetArrayItem(cls, 1), *si = cJSON_GetArrayItem(sep, 1);
        int cv, sv;
        if (!oz_json_int_in(ci, 0, L->id_limit - 1, &cv) || !oz_json_int_in(si, 0, L->id_limit - 1, &sv))
            return LFAIL(L, "%s: %s needs \"cls\" and \"sep\" as [token, id]", L->name, where);
        s = ivec_push(L, &pre, cv);
        if (s == OZ_OK) s = ivec_push(L, &suf, sv);
    } else {
        return LFAIL(L,
                     "%s: %s.type \"%s\" is not supported (supported: Sequence, ByteLevel, TemplateProcessing, "
                     "RobertaProcessing, BertProcessing)",
                     L->name, where, type);
    }
    /* new prefix = pre + old prefix; new suffix = old suffix + suf */
    if (s == OZ_OK && pre.n) {
        if (!ivec_reserve(&pre, pre.n + b->prefix.n)) s = oz_fail(L->err, OZ_ERR_NOMEM, "out of memory");
        else {
            if (b->prefix.n) memcpy(pre.v + pre.n, b->prefix.v, b->prefix.n * sizeof(int32_t));
            pre.n += b->prefix.n;
            free(b->prefix.v);
            b->prefix = pre;
            pre = (ivec){0};
        }
    }
    for (size_t i = 0; s == OZ_OK && i < suf.n; i++) s = ivec_push(L, &b->suffix, suf.v[i]);
    free(pre.v);
    free(suf.v);
    return s;
}

static oz_status load_model(loader *L, const cJSON *model) {
    oz_bpe *b = L->b;
    if (!cJSON_IsObject(model)) return LFAIL(L, "%s: missing \"model\" object", L->name);
    const char *type = jstr(model, "type");
    if (type && strcmp(type, "BPE") != 0)
        return LFAIL(L, "%s: model.type \"%s\" is not supported (only BPE)", L->name, type);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!type && !merges) return LFAIL(L, "%s: model has no \"type\" and is not a BPE model (no merges)", L->name);
    if (!cJSON_IsObject(vocab)) return LFAIL(L, "%s: model.vocab must be an object of token -> id", L->name);
    if (!cJSON_IsArray(merges)) return LFAIL(L, "%s: model.merges must be a list", L->name);
    if (!jnull_or_missing(model, "dropout")) {
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(model, "dropout");
        if (!cJSON_IsNumber(d) || d->valuedouble != 0.0)
            return LFAIL(L, "%s: model.dropout is not supported (must be null)", L->name);
    }
    const char *pfx = jstr(model, "continuing_subword_prefix"), *sfx = jstr(model, "end_of_word_suffix");
    if ((pfx && *pfx) || (sfx && *sfx))
        return LFAIL(L, "%s: model.continuing_subword_prefix/end_of_word_suffix are not supported (must be null)",
                     L->name);
    b->fuse_unk = jbool(model, "fuse_unk", 0);
    b->byte_fallback = jbool(model, "byte_fallback", 0);
    b->ignore_merges = jbool(model, "ignore_merges", 0);
    /* vocab */
    size_t n = (size_t)cJSON_GetArraySize(vocab), pool_len = 0;
    int32_t max_id = -1;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) {
        int id;
        if (!oz_json_int_in(e, 0, L->id_limit - 1, &id))
            return LFAIL(L, "%s: model.vocab[\"%s\"] is not an id below %.0f (the tokens the file lists + %d)", L->name,
                         e->string ? e->string : "", L->id_limit, OZ_TOKENIZER_ID_SLACK);
        if ((int32_t)e->valuedouble > max_id) max_id = (int32_t)e->valuedouble;
        pool_len += strlen(e->string) + 1;
    }
    if (n == 0) return LFAIL(L, "%s: model.vocab is empty", L->name);
    b->model_size = max_id + 1;
    b->pool = malloc(pool_len);
    b->tok_off = malloc((size_t)b->model_size * sizeof *b->tok_off);
    b->tok_len = malloc((size_t)b->model_size * sizeof *b->tok_len);
    b->vocab.ent = malloc(n * sizeof *b->vocab.ent);
    if (!b->pool || !b->tok_off || !b->tok_len || !b->vocab.ent) return oz_fail(L->err, OZ_ERR_NOMEM, "out of memory");
    memset(b->tok_off, 0xFF, (size_t)b->model_size * sizeof *b->tok_off);
    size_t off = 0;
    cJSON_ArrayForEach(e, vocab) {
        int32_t id = (int32_t)e->valuedouble;
        size_t len = strlen(e->string);
        if (b->tok_off[id] != UINT32_MAX)
            return LFAIL(L, "%s: model.vocab gives id %d to two tokens", L->name, (int)id);
        memcpy(b->pool + off, e->string, len + 1);
        b->tok_off[id] = (uint32_t)off;
        b->tok_len[id] = (uint32_t)len;
        b->vocab.ent[b->vocab.n++] = (str_ent){b->pool + off, (uint32_t)len, id};
        off += len + 1;
    }
    if (!strmap_build(&b->vocab)) return oz_fail(L->err, OZ_ERR_NOMEM, "out of memory");
    for (int c = 0; c < 128; c++) {
        char s = (char)c;
        b->ascii[c] = strmap_get(&b->vocab, &s, 1);
    }
    for (int c = 0; c < 256; c++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", c);
        b->fallback[c] = strmap_get(&b->vocab, s, 6);
    }
    const char *unk = jstr(model, "unk_token");
    b->unk = -1;
    if (unk) {
        b->unk = strmap_get(&b->vocab, unk, strlen(unk));
        if (b->unk < 0) return LFAIL(L, "%s: model.unk_token \"%s\" is not in the vocabulary", L->name, unk);
    }
    /* merges */
    size_t nm = (size_t)cJSON_GetArraySize(merges), cap = 16;
    while (cap < nm * 2 + 2) cap *= 2;
    b->merges.t = calloc(cap, sizeof *b->merges.t);
    b->merges.mask = cap - 1;
    if (!b->merges.t) return oz_fail(L->err, OZ_ERR_NOMEM, "out of memory");
    bbuf cat = {0};
    int32_t rank = 0;
    oz_status s = OZ_OK;
    cJSON_ArrayForEach(e, merges) {
        const char *l, *r;
        size_t ll, rl;
        if (cJSON_IsString(e)) {
            const char *sp = strchr(e->valuestring, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                s = LFAIL(L, "%s: model.merges[%d] \"%s\" is not two tokens separated by one space", L->name, (int)rank,
                          e->valuestring);
                break;
            }
            l = e->valuestring;
            ll = (size_t)(sp - l);
            r = sp + 1;
            rl = strlen(r);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(cJSON_GetArrayItem(e, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
            l = cJSON_GetArrayItem(e, 0)->valuestring;
            r = cJSON_GetArrayItem(e, 1)->valuestring;
            ll = strlen(l);
            rl = strlen(r);
        } else {
            s = LFAIL(L, "%s: model.merges[%d] is neither \"a b\" nor [\"a\", \"b\"]", L->name, (int)rank);
            break;
        }
        int32_t a = strmap_get(&b->vocab, l, ll), c = strmap_get(&b->vocab, r, rl);
        cat.n = 0;
        if (!bbuf_add(&cat, l, ll) || !bbuf_add(&cat, r, rl)) {
            s = oz_fail(L->err, OZ_ERR_NOMEM, "out of memory");
            break;
        }
        int32_t m = strmap_get(&b->vocab, cat.p, cat.n);
        if (a < 0 || c < 0 || m < 0) {
            s = LFAIL(L, "%s: model.merges[%d] uses a token that is not in the vocabulary", L->name, (int)rank);
            break;
        }
        pairmap_put(&b->merges, a, c, rank, m);
        rank++;
    }
    free(cat.p);
    return s;
}

static oz_status load_added(loader *L, const cJSON *list) {
    oz_bpe *b = L->b;
    if (!list || cJSON_IsNull(list)) return OZ_OK;
    if (!cJSON_IsArray(list)) return LFAIL(L, "%s: added_tokens must be a list", L->name);
    int n = cJSON_GetArraySize(list);
    b->added = calloc((size_t)(n ? n : 1), sizeof *b->added);
    if (!b->added) return oz_fail(L->err, OZ_ERR_NOMEM, "out of memory");
    const cJSON *t;
    cJSON_ArrayForEach(t, list) {
        const char *content = jstr(t, "content");
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(t, "id");
        int idv;
        if (!content || !*content || !oz_json_int_in(id, 0, L->id_limit - 1, &idv))
            return LFAIL(L, "%s: added_tokens[%d] needs a non-empty \"content\" and an \"id\" below %.0f", L->name,
                         b->n_added, L->id_limit);
        added_tok *a = &b->added[b->n_added];
        a->content = dupstr(content);
        if (!a->content) return oz_fail(L->err, OZ_ERR_NOMEM, "out of memory");
        b->n_added++;
        a->len = strlen(content);
        a->id = idv;
        a->special = jbool(t, "special", 0);
        a->lstrip = jbool(t, "lstrip", 0);
        a->rstrip = jbool(t, "rstrip", 0);
        a->single_word = jbool(t, "single_word", 0);
        a->normalized = jbool(t, "normalized", !a->special);
    }
    return OZ_OK;
}

/* bos_token / eos_token of tokenizer_config.json: a string or {"content": ...}. */
static int32_t config_token(const oz_bpe *b, const cJSON *cfg, const char *key, int *present) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(cfg, key);
    *present = j != NULL;
    const char *s = cJSON_IsString(j) ? j->valuestring : jstr(j, "content");
    return s ? id_of(b, s) : -1;
}

static int32_t first_present(const oz_bpe *b, const char *const *names) {
    for (int i = 0; names[i]; i++) {
        int32_t id = id_of(b, names[i]);
        if (id >= 0) return id;
    }
    return -1;
}

static oz_status load_root(loader *L, const cJSON *root, const cJSON *config) {
    oz_bpe *b = L->b;
    if (!cJSON_IsObject(root)) return LFAIL(L, "%s: not a JSON object", L->name);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!model) return LFAIL(L, "%s: missing \"model\"", L->name);
    const cJSON *listed_vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *listed_added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    L->id_limit = (double)(cJSON_IsObject(listed_vocab) ? cJSON_GetArraySize(listed_vocab) : 0) +
                  (cJSON_IsArray(listed_added) ? cJSON_GetArraySize(listed_added) : 0) + OZ_TOKENIZER_ID_SLACK;
    OZ_TRY(load_model(L, model));
    OZ_TRY(load_added(L, cJSON_GetObjectItemCaseSensitive(root, "added_tokens")));
    b->vocab_size = b->model_size;
    for (int i = 0; i < b->n_added; i++)
        if (b->added[i].id + 1 > b->vocab_size) b->vocab_size = b->added[i].id + 1;
    b->added_of_id = malloc((size_t)b->vocab_size * sizeof *b->added_of_id);
    if (!b->added_of_id) return oz_fail(L->err, OZ_ERR_NOMEM, "out of memory");
    memset(b->added_of_id, 0xFF, (size_t)b->vocab_size * sizeof *b->added_of_id);
    for (int i = 0; i < b->n_added; i++) b->added_of_id[b->added[i].id] = i;
    /* GPT-2's byte <-> character map: printable Latin-1 maps to itself, the rest to 256 + k. */
    memset(b->cp_byte, 0xFF, sizeof b->cp_byte);
    for (int c = 0, k = 0; c < 256; c++) {
        int printable = (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
        b->byte_cp[c] = printable ? c : 256 + k++;
        b->cp_byte[b->byte_cp[c]] = (int16_t)c;
    }
    const struct {
        const char *key;
        oz_status (*fn)(loader *, const cJSON *, const char *);
    } parts[] = {{"normalizer", add_norm}, {"pre_tokenizer", add_pre}, {"post_processor", add_post}, {"decoder", add_dec}};
    for (int i = 0; i < 4; i++) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, parts[i].key);
        if (!p || cJSON_IsNull(p)) continue;
        if (!cJSON_IsObject(p)) return LFAIL(L, "%s: %s must be an object or null", L->name, parts[i].key);
        OZ_TRY(parts[i].fn(L, p, parts[i].key));
        if (i == 3) b->has_decoder = 1;
    }
    for (int c = 0; c < 256; c++) {
        char s[4];
        int n = utf8_put(s, b->byte_cp[c]);
        b->byte_sym[c] = strmap_get(&b->vocab, s, (size_t)n);
    }
    for (size_t i = 0; i < b->prefix.n + b->suffix.n; i++) {
        int32_t id = i < b->prefix.n ? b->prefix.v[i] : b->suffix.v[i - b->prefix.n];
        /* A template id must be a token: one no token has would be emitted and then refused by decode
         * (the tokenizer fuzz target's template-id-hole). */
        bool listed = id >= 0 && id < b->vocab_size &&
                      ((id < b->model_size && b->tok_off[id] != UINT32_MAX) || b->added_of_id[id] >= 0);
        if (!listed) return LFAIL(L, "%s: post_processor uses id %d, which no token has", L->name, (int)id);
    }
    OZ_TRY(oz_bpe_index_added(b, L->err));
    /* bos/eos: tokenizer_config.json when it names them, else the template's first special token
     * and the usual names. */
    static const char *bos_names[] = {"<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>", "<|endoftext|>", NULL};
    static const char *eos_names[] = {"<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>", NULL};
    int have_bos = 0, have_eos = 0;
    b->bos = b->eos = -1;
    if (config) {
        b->bos = config_token(b, config, "bos_token", &have_bos);
        b->eos = config_token(b, config, "eos_token", &have_eos);
    }
    if (!have_bos) b->bos = b->prefix.n ? b->prefix.v[0] : first_present(b, bos_names);
    if (!have_eos) b->eos = b->suffix.n ? b->suffix.v[b->suffix.n - 1] : first_present(b, eos_names);
    return OZ_OK;
}

oz_status oz_bpe_load_string(oz_bpe **out, const char *json, size_t len, const char *name, oz_err *err) {
    *out = NULL;
    oz_bpe *b = calloc(1, sizeof *b);
    if (!b) return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    b->path = dupstr(name);
    if (!b->path) {
        free(b);
        return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    }
    loader L = {b, name, err, 0};
    cJSON *root = cJSON_ParseWithLength(json, len);
    oz_status s = root ? load_root(&L, root, NULL) : LFAIL(&L, "%s: not valid JSON (truncated or corrupt?)", name);
    cJSON_Delete(root);
    if (s != OZ_OK) {
        oz_bpe_free(b);
        return s;
    }
    *out = b;
    return OZ_OK;
}

oz_status oz_bpe_load(oz_bpe **out, const char *json_path, const char *config_path, oz_err *err) {
    *out = NULL;
    char *text = NULL, *ctext = NULL;
    size_t n = 0, cn = 0;
    struct stat st;
    if (stat(json_path, &st) != 0) return oz_fail(err, OZ_ERR_INPUT, "%s: no such file", json_path);
    OZ_TRY(oz_read_file(json_path, &text, &n, err));
    cJSON *config = NULL;
    oz_status s = OZ_OK;
    if (config_path && stat(config_path, &st) == 0) {
        s = oz_read_file(config_path, &ctext, &cn, err);
        if (s == OZ_OK) {
            config = cJSON_ParseWithLength(ctext, cn);
            if (!cJSON_IsObject(config)) s = oz_fail(err, OZ_ERR_INPUT, "%s: not a valid JSON object", config_path);
        }
    }
    oz_bpe *b = NULL;
    if (s == OZ_OK) {
        b = calloc(1, sizeof *b);
        if (b) b->path = dupstr(json_path);
        if (!b || !b->path) s = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    }
    if (s == OZ_OK) {
        loader L = {b, json_path, err, 0};
        cJSON *root = cJSON_ParseWithLength(text, n);
        s = root ? load_root(&L, root, config) : LFAIL(&L, "%s: not valid JSON (truncated or corrupt?)", json_path);
        cJSON_Delete(root);
    }
    cJSON_Delete(config);
    free(text);
    free(ctext);
    if (s != OZ_OK) {
        oz_bpe_free(b);
        return s;
    }
    *out = b;
    return OZ_OK;
}
