/* Hugging Face tokenizer.json BPE: encoding and decoding, written to give the ids the `tokenizers`
 * library gives (tokenizer_json.c loads the file into the tables this reads). The pipeline is the
 * library's: added tokens are cut out of the raw text, each remaining piece is normalized (then
 * normalized added tokens are cut out), split into words by the pre-tokenizer, and each word is
 * merged by the BPE model; decoding maps ids to token strings and runs the decoder chain over them.
 *
 * Speed: words are encoded once per thread and kept in a cache (word bytes -> ids); the merge loop
 * works on an id array with ranks looked up in an open-addressing (left, right) -> (rank, merged)
 * table, by a linear scan for short words and a binary heap over a linked list for long ones.
 * Byte-level tokenizers keep raw bytes throughout (the byte -> character map of GPT-2 only decides
 * which vocabulary id a byte starts as), so no mapped copy of the text is ever built. Everything
 * mutable lives in per-thread workspaces owned by the tokenizer. */
#include "data/bpe_internal.h"

#include <omp.h>
#include <stdbool.h>
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

/* Words longer than this are not cached (the library's own limit), and words up to it are merged
 * by the linear scan rather than the heap. */
#define CACHE_MAX_WORD 256
#define LINEAR_MAX_SYMBOLS 48
#define CACHE_MAX_ENTRIES (1u << 19)
/* Inputs shorter than this are encoded on the calling thread; longer ones in units of about it. */
#define PARALLEL_UNIT ((size_t)1 << 16)

const char *oz_bpe_pattern_regex(oz_bpe_pattern p) { return p == OZ_BPE_PATTERN_LLAMA3 ? LLAMA3_PATTERN : GPT2_PATTERN; }

/* Decodes one UTF-8 character; an invalid or truncated sequence counts as one byte, code -1. */
static int utf8_next(const unsigned char *s, size_t n, int32_t *cp) {
    unsigned c = s[0];
    int len;
    int32_t v;
    if (c < 0x80) {
        *cp = (int32_t)c;
        return 1;
    } else if ((c & 0xE0) == 0xC0) {
        len = 2;
        v = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3;
        v = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
        len = 4;
        v = c & 0x07;
    } else {
        *cp = -1;
        return 1;
    }
    if ((size_t)len > n) {
        *cp = -1;
        return 1;
    }
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *cp = -1;
            return 1;
        }
        v = (v << 6) | (s[i] & 0x3F);
    }
    static const int32_t min_for_len[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (v < min_for_len[len] || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) {
        *cp = -1;
        return 1;
    }
    *cp = v;
    return len;
}

static int utf8_valid(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        int32_t cp;
        i += (size_t)utf8_next(s + i, n - i, &cp);
        if (cp < 0) return 0;
    }
    return 1;
}

/* Unicode White_Space, which is what Rust's char::is_whitespace tests. */
static int is_white(int32_t c) {
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Oniguruma's \s is Unicode White_Space; PCRE2's (with UCP) lacks U+0085. */
static char *widen_whitespace(const char *p) {
    size_t n = strlen(p);
    char *o = malloc(n * 12 + 1);
    if (!o) return NULL;
    size_t k = 0;
    int in_class = 0;
    for (size_t i = 0; i < n;) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char d = p[i + 1];
            const char *rep = NULL;
            if (d == 's') rep = in_class ? "\\s\\x{85}" : "[\\s\\x{85}]";
            else if (d == 'S' && !in_class) rep = "[^\\s\\x{85}]";
            if (rep) {
                size_t r = strlen(rep);
                memcpy(o + k, rep, r);
                k += r;
            } else {
                o[k++] = c;
                o[k++] = d;
            }
            i += 2;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = 1;
            o[k++] = c;
            i++;
            if (i < n && p[i] == '^') o[k++] = p[i++];
            if (i < n && p[i] == ']') o[k++] = p[i++]; /* a leading ] is literal */
            continue;
        }
        if (in_class && c == '[' && i + 1 < n && p[i + 1] == ':') { /* [:alpha:] */
            const char *end = strstr(p + i + 2, ":]");
            if (end) {
                size_t r = (size_t)(end + 2 - (p + i));
                memcpy(o + k, p + i, r);
                k += r;
                i += r;
                continue;
            }
        }
        if (in_class && c == ']') in_class = 0;
        o[k++] = c;
        i++;
    }
    o[k] = '\0';
    return o;
}

oz_status oz_bpe_regex_compile(regex *r, const char *pattern, int literal, const char *where, oz_err *err) {
    char *pat = literal ? NULL : widen_whitespace(pattern);
    if (!literal && !pat) return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    int code;
    PCRE2_SIZE off;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF | (literal ? PCRE2_LITERAL : 0);
    const char *src = literal ? pattern : pat;
    r->code = pcre2_compile((PCRE2_SPTR)src, PCRE2_ZERO_TERMINATED, opts, &code, &off, NULL);
    free(pat);
    if (!r->code) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(code, msg, sizeof msg);
        return oz_fail(err, OZ_ERR_INPUT, "%s: regex /%s/ does not compile at offset %zu: %s", where, pattern,
                       (size_t)off, (const char *)msg);
    }
    r->jit = pcre2_jit_compile(r->code, PCRE2_JIT_COMPLETE) == 0;
    return OZ_OK;
}

/* ---- per-thread state: everything encoding mutates, so only this file sees inside ---- */

/* One cached word: key bytes and ids live in the cache's pools. */
typedef struct {
    uint64_t hash;
    uint32_t key_off, key_len, ids_off, n_ids;
} cache_ent;

typedef struct {
    cache_ent *tab; /* hash == 0 marks an empty slot */
    size_t cap, used;
    bbuf keys;
    ivec ids;
} word_cache;

typedef struct {
    size_t off, len;   /* in the current buffer */
    size_t subj_end;   /* regexes see the subject up to here (lookahead past a unit's end) */
    size_t subj_start; /* and from here */
    int at_origin;     /* starts at offset 0 of the whole input (Metaspace's "first") */
} span;

typedef struct {
    span *v;
    size_t n, cap;
} spanv;

typedef struct oz_bpe_ws {
    int ready;
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit;
    bbuf buf[2];
    spanv sp[2];
    ivec sym, rank, prev, next, heap;
    bbuf mapped; /* a byte-level word in the vocabulary's characters (ignore_merges) */
    word_cache cache;
} workspace;

int oz_bpe_vocab_size(const oz_bpe *b) { return b->vocab_size; }

static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001B3ull;
    return h;
}

uint64_t oz_bpe_fingerprint(const oz_bpe *b) {
    uint64_t h = 0xCBF29CE484222325ull;
    int32_t n = b->vocab_size;
    h = fnv1a(h, &n, sizeof n);
    for (int32_t id = 0; id < b->vocab_size; id++) {
        int a = b->added_of_id ? b->added_of_id[id] : -1;
        if (a >= 0) h = fnv1a(h, b->added[a].content, b->added[a].len);
        else if (id < b->model_size && b->tok_off[id] != UINT32_MAX) h = fnv1a(h, b->pool + b->tok_off[id], b->tok_len[id]);
        else h = fnv1a(h, "\xff\xfe", 2); /* an id neither lists */
        h = fnv1a(h, "\0", 1);
    }
    return h;
}
int32_t oz_bpe_bos(const oz_bpe *b) { return b->bos; }
int32_t oz_bpe_eos(const oz_bpe *b) { return b->eos; }
const char *oz_bpe_path(const oz_bpe *b) { return b->path; }

const char *oz_bpe_special_content(const oz_bpe *b, int32_t id) {
    if (id < 0 || id >= b->vocab_size || b->added_of_id[id] < 0) return NULL;
    const added_tok *a = &b->added[b->added_of_id[id]];
    return a->special ? a->content : NULL;
}

int32_t oz_bpe_token_id(const oz_bpe *b, const char *content) {
    size_t n = strlen(content);
    for (int i = 0; i < b->n_added; i++)
        if (b->added[i].len == n && memcmp(b->added[i].content, content, n) == 0) return b->added[i].id;
    return strmap_get(&b->vocab, content, n);
}

/* ---- workspaces ---- */

static void cache_free(word_cache *c) {
    free(c->tab);
    free(c->keys.p);
    free(c->ids.v);
    memset(c, 0, sizeof *c);
}

static void ws_free(workspace *w) {
    if (!w->ready) return;
    pcre2_match_data_free(w->md);
    pcre2_match_context_free(w->mctx);
    pcre2_jit_stack_free(w->jit);
    for (int i = 0; i < 2; i++) {
        free(w->buf[i].p);
        free(w->sp[i].v);
    }
    free(w->sym.v);
    free(w->rank.v);
    free(w->prev.v);
    free(w->next.v);
    free(w->heap.v);
    free(w->mapped.p);
    cache_free(&w->cache);
    memset(w, 0, sizeof *w);
}

static oz_status ws_init(workspace *w, oz_err *err) {
    if (w->ready) return OZ_OK;
    memset(w, 0, sizeof *w);
    w->md = pcre2_match_data_create(16, NULL);
    w->mctx = pcre2_match_context_create(NULL);
    /* The default 32 KiB JIT stack on the machine stack is too small for long whitespace runs. */
    w->jit = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
    if (!w->md || !w->mctx || !w->jit) {
        pcre2_match_data_free(w->md);
        pcre2_match_context_free(w->mctx);
        pcre2_jit_stack_free(w->jit);
        memset(w, 0, sizeof *w);
        return oz_fail(err, OZ_ERR_NOMEM, "out of memory creating a tokenizer workspace");
    }
    pcre2_jit_stack_assign(w->mctx, NULL, w->jit);
    w->ready = 1;
    return OZ_OK;
}

static oz_status ensure_workspaces(oz_bpe *b, int n, oz_err *err) {
    if (n > b->n_ws) {
        workspace *nw = realloc(b->ws, (size_t)n * sizeof *nw);
        if (!nw) return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
        memset(nw + b->n_ws, 0, (size_t)(n - b->n_ws) * sizeof *nw);
        b->ws = nw;
        b->n_ws = n;
    }
    for (int i = 0; i < n; i++) OZ_TRY(ws_init(&b->ws[i], err));
    return OZ_OK;
}

/* ---- spans ---- */

static int spanv_push(spanv *v, span s) {
    if (v->n == v->cap) {
        size_t c = v->cap ? v->cap * 2 : 64;
        span *q = realloc(v->v, c * sizeof *q);
        if (!q) return 0;
        v->v = q;
        v->cap = c;
    }
    v->v[v->n++] = s;
    return 1;
}

/* Adds one piece of a split with the library's delimiter behaviors (NormalizedString::split);
 * `first` is the index in out where this span's pieces begin. */
static int add_piece(spanv *out, size_t first, size_t a, size_t b, int is_match, split_behavior beh, int *prev_match,
                     int at_origin) {
    span piece = {a, b - a, b, a, at_origin};
    int have_prev = out->n > first;
    span *last = have_prev ? &out->v[out->n - 1] : NULL;
    int extend = 0, keep = 1;
    switch (beh) {
    case BEH_REMOVED: keep = !is_match; break;
    case BEH_ISOLATED: break;
    case BEH_MERGED_PREV: extend = is_match && !*prev_match && have_prev; break;
    case BEH_MERGED_NEXT: extend = !is_match && *prev_match && have_prev; break; /* match + following gap */
    case BEH_CONTIGUOUS: extend = have_prev && is_match == *prev_match; break;
    }
    *prev_match = is_match;
    if (!keep) return 1;
    if (extend) {
        last->len = b - last->off;
        last->subj_end = b;
        return 1;
    }
    return spanv_push(out, piece);
}

/* Splits every span of `in` by the regex. Matches are found as Oniguruma's find_iter finds them;
 * empty matches produce nothing (the library drops empty pieces). */
static oz_status split_regex(workspace *w, const regex *re, split_behavior beh, int invert, const char *buf,
                             const spanv *in, spanv *out, oz_err *err) {
    out->n = 0;
    for (size_t i = 0; i < in->n; i++) {
        const span *s = &in->v[i];
        size_t end = s->off + s->len, first = out->n;
        const char *subj = buf + s->subj_start;
        size_t subj_len = s->subj_end - s->subj_start;
        size_t pos = s->off, gap = s->off;
        int prev_match = 0;
        while (pos < end) {
            int rc = re->jit ? pcre2_jit_match(re->code, (PCRE2_SPTR)subj, subj_len, pos - s->subj_start, 0, w->md, w->mctx)
                             : pcre2_match(re->code, (PCRE2_SPTR)subj, subj_len, pos - s->subj_start, 0, w->md, w->mctx);
            if (rc == PCRE2_ERROR_NOMATCH) break;
            if (rc < 0) {
                PCRE2_UCHAR msg[160];
                pcre2_get_error_message(rc, msg, sizeof msg);
                return oz_fail(err, OZ_ERR_INPUT, "pre-tokenizer regex failed: %s", (const char *)msg);
            }
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(w->md);
            size_t ms = s->subj_start + ov[0], me = s->subj_start + ov[1];
            if (ms >= end) break;
            if (me > end) me = end;
            if (me == ms) {
                int32_t cp;
                pos = ms + (size_t)utf8_next((const unsigned char *)buf + ms, end - ms, &cp);
                continue;
            }
            if (ms > gap && !add_piece(out, first, gap, ms, invert, beh, &prev_match, s->at_origin && gap == s->off))
                goto nomem;
            if (!add_piece(out, first, ms, me, !invert, beh, &prev_match, s->at_origin && ms == s->off)) goto nomem;
            gap = pos = me;
        }
        if (end > gap && !add_piece(out, first, gap, end, invert, beh, &prev_match, s->at_origin && gap == s->off))
            goto nomem;
    }
    return OZ_OK;
nomem:
    return oz_fail(err, OZ_ERR_NOMEM, "out of memory pre-tokenizing");
}

/* Metaspace: spaces become the replacement character, which is prepended when the scheme says
 * so, and optionally each replacement character starts a new word (MergedWithNext). */
static oz_status metaspace(workspace *w, const pre_step *p, const char *buf, const spanv *in, bbuf *nb, spanv *out,
                           oz_err *err) {
    nb->n = 0;
    out->n = 0;
    for (size_t i = 0; i < in->n; i++) {
        const span *s = &in->v[i];
        size_t start = nb->n;
        for (size_t k = 0; k < s->len; k++) {
            char c = buf[s->off + k];
            if (!(c == ' ' ? bbuf_add(nb, p->repl, (size_t)p->repl_len) : bbuf_add(nb, &c, 1))) goto nomem;
        }
        int starts = nb->n - start >= (size_t)p->repl_len && memcmp(nb->p + start, p->repl, (size_t)p->repl_len) == 0;
        if (!starts && (p->scheme == PREPEND_ALWAYS || (p->scheme == PREPEND_FIRST && s->at_origin))) {
            if (!bbuf_reserve(nb, nb->n + (size_t)p->repl_len + 1)) goto nomem;
            memmove(nb->p + start + p->repl_len, nb->p + start, nb->n - start);
            memcpy(nb->p + start, p->repl, (size_t)p->repl_len);
            nb->n += (size_t)p->repl_len;
        }
        size_t end = nb->n;
        if (!p->split) {
            span t = {start, end - start, end, start, s->at_origin};
            if (end > start && !spanv_push(out, t)) goto nomem;
            continue;
        }
        size_t first = out->n, gap = start;
        int prev_match = 0;
        for (size_t k = start; k + (size_t)p->repl_len <= end;) {
            if (memcmp(nb->p + k, p->repl, (size_t)p->repl_len) == 0) {
                if (k > gap && !add_piece(out, first, gap, k, 0, BEH_MERGED_NEXT, &prev_match, s->at_origin && gap == start))
                    goto nomem;
                if (!add_piece(out, first, k, k + (size_t)p->repl_len, 1, BEH_MERGED_NEXT, &prev_match,
                               s->at_origin && k == start))
                    goto nomem;
                k += (size_t)p->repl_len;
                gap = k;
            } else {
                k++;
            }
        }
        if (end > gap && !add_piece(out, first, gap, end, 0, BEH_MERGED_NEXT, &prev_match, s->at_origin && gap == start))
            goto nomem;
    }
    (void)w;
    return OZ_OK;
nomem:
    return oz_fail(err, OZ_ERR_NOMEM, "out of memory pre-tokenizing");
}

/* ByteLevel's add_prefix_space: a space before every piece that does not start with one. */
static oz_status prefix_space(const char *buf, const spanv *in, bbuf *nb, spanv *out, oz_err *err) {
    nb->n = 0;
    out->n = 0;
    for (size_t i = 0; i < in->n; i++) {
        const span *s = &in->v[i];
        size_t start = nb->n;
        if ((s->len == 0 || buf[s->off] != ' ') && !bbuf_add(nb, " ", 1)) goto nomem;
        if (!bbuf_add(nb, buf + s->off, s->len)) goto nomem;
        span t = {start, nb->n - start, nb->n, start, s->at_origin};
        if (!spanv_push(out, t)) goto nomem;
    }
    return OZ_OK;
nomem:
    return oz_fail(err, OZ_ERR_NOMEM, "out of memory pre-tokenizing");
}

/* ---- the BPE model on one word ---- */

static int32_t char_id(const oz_bpe *b, const char *s, size_t n) {
    if (n == 1 && (unsigned char)s[0] < 128) return b->ascii[(unsigned char)s[0]];
    return strmap_get(&b->vocab, s, n);
}

/* The library's BPE::merge_word start: one symbol per character, with byte fallback and unknown
 * handling; a byte-level word's characters are its bytes. */
static int word_symbols(const oz_bpe *b, workspace *w, const char *s, size_t n) {
    ivec *sym = &w->sym;
    sym->n = 0;
    if (!ivec_reserve(sym, n * 4 + 4)) return 0; /* at most 4 fallback bytes per character byte */
    int32_t unk_pending = 0;
    for (size_t i = 0; i < n;) {
        const char *cs;
        size_t clen;
        char mapped[4];
        int32_t id;
        if (b->byte_level) {
            unsigned char c = (unsigned char)s[i];
            id = b->byte_sym[c];
            clen = (size_t)utf8_put(mapped, b->byte_cp[c]);
            cs = mapped;
            i++;
        } else {
            int32_t cp;
            clen = (size_t)utf8_next((const unsigned char *)s + i, n - i, &cp);
            cs = s + i;
            id = char_id(b, cs, clen);
            i += clen;
        }
        if (id >= 0) {
            if (unk_pending) {
                sym->v[sym->n++] = b->unk;
                unk_pending = 0;
            }
            sym->v[sym->n++] = id;
            continue;
        }
        if (b->byte_fallback) {
            int all = 1;
            for (size_t k = 0; k < clen; k++) all &= b->fallback[(unsigned char)cs[k]] >= 0;
            if (all) {
                for (size_t k = 0; k < clen; k++) sym->v[sym->n++] = b->fallback[(unsigned char)cs[k]];
                continue;
            }
        }
        if (b->unk >= 0) {
            if (unk_pending && !b->fuse_unk) sym->v[sym->n++] = b->unk;
            unk_pending = 1;
        }
    }
    if (unk_pending) sym->v[sym->n++] = b->unk;
    return 1;
}

static inline int32_t pair_rank(const oz_bpe *b, int32_t l, int32_t r, int32_t *merged) {
    const pair_ent *e = pairmap_get(&b->merges, l, r);
    if (!e) return INT32_MAX;
    *merged = e->id;
    return e->rank;
}

/* Lowest rank first, leftmost among equals: a linear scan over at most LINEAR_MAX_SYMBOLS. */
static void merge_linear(const oz_bpe *b, workspace *w) {
    int32_t *sym = w->sym.v;
    size_t n = w->sym.n;
    int32_t *rank = w->rank.v, *mid = w->prev.v;
    for (size_t i = 0; i + 1 < n; i++) rank[i] = pair_rank(b, sym[i], sym[i + 1], &mid[i]);
    while (n > 1) {
        size_t best = 0;
        for (size_t i = 1; i + 1 < n; i++)
            if (rank[i] < rank[best]) best = i;
        if (rank[best] == INT32_MAX) break;
        sym[best] = mid[best];
        memmove(sym + best + 1, sym + best + 2, (n - best - 2) * sizeof *sym);
        memmove(rank + best, rank + best + 1, (n - best - 2) * sizeof *rank);
        memmove(mid + best, mid + best + 1, (n - best - 2) * sizeof *mid);
        n--;
        if (best > 0) rank[best - 1] = pair_rank(b, sym[best - 1], sym[best], &mid[best - 1]);
        if (best + 1 < n) rank[best] = pair_rank(b, sym[best], sym[best + 1], &mid[best]);
    }
    w->sym.n = n;
}

/* The same order for long words: a min-heap of (rank, position) over a linked list; stale heap
 * entries are recognised when popped. */
static void heap_push(uint64_t *h, size_t *n, uint64_t v) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}
static uint64_t heap_pop(uint64_t *h, size_t *n) {
    uint64_t top = h[0], v = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && h[c + 1] < h[c]) c++;
        if (v <= h[c]) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = v;
    return top;
}

static int merge_heap(const oz_bpe *b, workspace *w) {
    size_t n = w->sym.n;
    /* The heap holds at most every push: n - 1 pairs, then two per merge (at most n - 1 merges);
     * entries are 64-bit, two int32 slots each. */
    if (!ivec_reserve(&w->prev, n) || !ivec_reserve(&w->next, n) || !ivec_reserve(&w->heap, 6 * n + 2)) return 0;
    int32_t *sym = w->sym.v, *prev = w->prev.v, *next = w->next.v;
    uint64_t *heap = (uint64_t *)w->heap.v;
    size_t hn = 0;
    int32_t mid;
    for (size_t i = 0; i < n; i++) {
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        int32_t r = pair_rank(b, sym[i], sym[i + 1], &mid);
        if (r != INT32_MAX) heap_push(heap, &hn, (uint64_t)r << 32 | i);
    }
    while (hn) {
        uint64_t top = heap_pop(heap, &hn);
        int32_t r = (int32_t)(top >> 32), pos = (int32_t)(uint32_t)top;
        if (sym[pos] < 0 || next[pos] < 0) continue;
        int32_t q = next[pos];
        if (pair_rank(b, sym[pos], sym[q], &mid) != r) continue;
        sym[pos] = mid;
        sym[q] = -1;
        next[pos] = next[q];
        if (next[q] >= 0) prev[next[q]] = pos;
        if (prev[pos] >= 0) {
            int32_t rr = pair_rank(b, sym[prev[pos]], sym[pos], &mid);
            if (rr != INT32_MAX) heap_push(heap, &hn, (uint64_t)rr << 32 | (uint32_t)prev[pos]);
        }
        if (next[pos] >= 0) {
            int32_t rr = pair_rank(b, sym[pos], sym[next[pos]], &mid);
            if (rr != INT32_MAX) heap_push(heap, &hn, (uint64_t)rr << 32 | (uint32_t)pos);
        }
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (sym[i] >= 0) sym[k++] = sym[i];
    w->sym.n = k;
    return 1;
}

static int cache_insert(word_cache *c, uint64_t h, const char *s, size_t n, const int32_t *ids, size_t m) {
    if ((c->used + 1) * 2 > c->cap) {
        if (c->cap >= CACHE_MAX_ENTRIES) {
            /* Full: start over rather than grow without bound on huge vocabularies of words. */
            memset(c->tab, 0, c->cap * sizeof *c->tab);
            c->used = 0;
            c->keys.n = 0;
            c->ids.n = 0;
        } else {
            size_t ncap = c->cap ? c->cap * 2 : 4096;
            cache_ent *nt = calloc(ncap, sizeof *nt);
            if (!nt) return 0;
            for (size_t i = 0; i < c->cap; i++) {
                if (!c->tab[i].hash) continue;
                size_t j = (size_t)c->tab[i].hash & (ncap - 1);
                while (nt[j].hash) j = (j + 1) & (ncap - 1);
                nt[j] = c->tab[i];
            }
            free(c->tab);
            c->tab = nt;
            c->cap = ncap;
        }
    }
    if (!bbuf_reserve(&c->keys, c->keys.n + n + 1) || !ivec_reserve(&c->ids, c->ids.n + m)) return 0;
    size_t j = (size_t)h & (c->cap - 1);
    while (c->tab[j].hash) j = (j + 1) & (c->cap - 1);
    c->tab[j] = (cache_ent){h, (uint32_t)c->keys.n, (uint32_t)n, (uint32_t)c->ids.n, (uint32_t)m};
    /* n or m may be 0 (a word that encodes to nothing), and then the buffers may still be NULL:
     * memcpy's pointers must be valid even for 0 bytes. */
    if (n) memcpy(c->keys.p + c->keys.n, s, n);
    c->keys.n += n;
    if (m) memcpy(c->ids.v + c->ids.n, ids, m * sizeof *ids);
    c->ids.n += m;
    c->used++;
    return 1;
}

static oz_status encode_word(const oz_bpe *b, workspace *w, const char *s, size_t n, oz_tokens *out, oz_err *err) {
    uint64_t h = 0;
    word_cache *c = &w->cache;
    if (n <= CACHE_MAX_WORD && c->cap) {
        h = hash_bytes(s, n) | 1;
        for (size_t j = (size_t)h & (c->cap - 1); c->tab[j].hash; j = (j + 1) & (c->cap - 1)) {
            const cache_ent *e = &c->tab[j];
            if (e->hash == h && e->key_len == n && memcmp(c->keys.p + e->key_off, s, n) == 0) {
                OZ_TRY(oz_tokens_reserve(out, out->len + e->n_ids, err));
                if (e->n_ids) memcpy(out->ids + out->len, c->ids.v + e->ids_off, e->n_ids * sizeof(int32_t));
                out->len += e->n_ids;
                return OZ_OK;
            }
        }
    }
    int32_t whole = -1;
    if (b->ignore_merges) {
        if (b->byte_level) {
            w->mapped.n = 0;
            if (!bbuf_reserve(&w->mapped, n * 2 + 1)) return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
            for (size_t i = 0; i < n; i++)
                w->mapped.n += (size_t)utf8_put(w->mapped.p + w->mapped.n, b->byte_cp[(unsigned char)s[i]]);
            whole = strmap_get(&b->vocab, w->mapped.p, w->mapped.n);
        } else {
            whole = strmap_get(&b->vocab, s, n);
        }
    }
    if (whole >= 0) {
        w->sym.n = 0;
        if (!ivec_reserve(&w->sym, 1)) return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
        w->sym.v[w->sym.n++] = whole;
    } else {
        if (!word_symbols(b, w, s, n)) return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
        if (w->sym.n <= LINEAR_MAX_SYMBOLS) {
            if (!ivec_reserve(&w->rank, w->sym.n) || !ivec_reserve(&w->prev, w->sym.n))
                return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
            merge_linear(b, w);
        } else if (!merge_heap(b, w)) {
            return oz_fail(err, OZ_ERR_NOMEM, "out of memory merging a %zu-byte word", n);
        }
    }
    OZ_TRY(oz_tokens_reserve(out, out->len + w->sym.n, err));
    if (w->sym.n) memcpy(out->ids + out->len, w->sym.v, w->sym.n * sizeof(int32_t));
    out->len += w->sym.n;
    if (n <= CACHE_MAX_WORD) {
        if (!c->cap) h = hash_bytes(s, n) | 1;
        if (!cache_insert(c, h, s, n, w->sym.v, w->sym.n)) return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    }
    return OZ_OK;
}

/* Pre-tokenizes one piece of text (buf[off, off+len), regexes seeing [subj_start, subj_end)) and
 * appends the ids of its words. */
static oz_status encode_piece(const oz_bpe *b, workspace *w, const char *buf, size_t off, size_t len, size_t subj_start,
                              size_t subj_end, int at_origin, oz_tokens *out, oz_err *err) {
    spanv *cur = &w->sp[0], *nxt = &w->sp[1];
    cur->n = 0;
    span s0 = {off, len, subj_end, subj_start, at_origin};
    if (!spanv_push(cur, s0)) return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    const char *text = buf;
    int nb = 0; /* which workspace buffer a rewrite goes to next */
    for (int i = 0; i < b->n_pre; i++) {
        const pre_step *p = &b->pre[i];
        switch (p->kind) {
        case PRE_SPLIT: OZ_TRY(split_regex(w, &p->re, p->behavior, p->invert, text, cur, nxt, err)); break;
        case PRE_BYTELEVEL:
            if (p->add_prefix_space) {
                OZ_TRY(prefix_space(text, cur, &w->buf[nb], nxt, err));
                text = w->buf[nb].p;
                nb ^= 1;
                spanv *t = cur;
                cur = nxt;
                nxt = t;
            }
            if (p->re.code) {
                OZ_TRY(split_regex(w, &p->re, BEH_ISOLATED, 0, text, cur, nxt, err));
            } else {
                continue; /* the byte map itself is implicit: words stay raw bytes */
            }
            break;
        case PRE_METASPACE:
            OZ_TRY(metaspace(w, p, text, cur, &w->buf[nb], nxt, err));
            text = w->buf[nb].p;
            nb ^= 1;
            break;
        }
        spanv *t = cur;
        cur = nxt;
        nxt = t;
    }
    for (size_t i = 0; i < cur->n; i++) OZ_TRY(encode_word(b, w, text + cur->v[i].off, cur->v[i].len, out, err));
    return OZ_OK;
}

/* ---- added tokens ---- */

static int trie_add(trie *t, const char *s, size_t n, int32_t tok) {
    if (!t->n) {
        t->cap = 64;
        t->v = calloc(t->cap, sizeof *t->v);
        if (!t->v) return 0;
        t->v[0].tok = -1;
        t->n = 1;
    }
    size_t node = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!t->v[node].next[c]) {
            if (t->n == t->cap) {
                trie_node *q = realloc(t->v, t->cap * 2 * sizeof *q);
                if (!q) return 0;
                t->v = q;
                t->cap *= 2;
            }
            memset(&t->v[t->n], 0, sizeof *t->v);
            t->v[t->n].tok = -1;
            t->v[node].next[c] = (int32_t)t->n++;
        }
        node = (size_t)t->v[node].next[c];
    }
    if (t->v[node].tok < 0) t->v[node].tok = tok; /* the first of two equal contents wins */
    t->used = 1;
    return 1;
}

typedef struct {
    int src;        /* 0: the input text, 1: the normalized buffer */
    size_t off, len;
    int32_t added;  /* index into added, -1 for text */
    int at_origin;
} seg;

typedef struct {
    seg *v;
    size_t n, cap;
} segv;

static int segv_push(segv *v, seg s) {
    if (v->n == v->cap) {
        size_t c = v->cap ? v->cap * 2 : 64;
        seg *q = realloc(v->v, c * sizeof *q);
        if (!q) return 0;
        v->v = q;
        v->cap = c;
    }
    v->v[v->n++] = s;
    return 1;
}

static int is_word_char(const char *s, size_t n, size_t at) {
    int32_t cp;
    utf8_next((const unsigned char *)s + at, n - at, &cp);
    /* \w: ASCII letters, digits and '_'; other characters count as word characters unless
     * whitespace or ASCII punctuation, which covers letters and digits of every script. */
    if (cp >= 0 && cp < 128) return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
    return cp >= 0 && !is_white(cp);
}

static size_t char_start_before(const char *s, size_t at) {
    size_t i = at - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80 && at - i < 4) i--;
    return i;
}

/* Cuts the added tokens of trie t out of text[0, len) (leftmost-longest, as the library's
 * Aho-Corasick does), appending text and token segments to out. */
static int split_added(const oz_bpe *b, const trie *t, int src, const char *text, size_t len, size_t base, int origin,
                       segv *out) {
    size_t start = 0, pos = 0;
    if (t->used) {
        while (pos < len) {
            int32_t nx = t->v[0].next[(unsigned char)text[pos]];
            if (!nx) {
                pos++;
                continue;
            }
            int32_t best = -1;
            size_t best_end = 0, node = (size_t)nx, i = pos + 1;
            for (;;) {
                if (t->v[node].tok >= 0) {
                    best = t->v[node].tok;
                    best_end = i;
                }
                if (i >= len || !t->v[node].next[(unsigned char)text[i]]) break;
                node = (size_t)t->v[node].next[(unsigned char)text[i]];
                i++;
            }
            if (best < 0) {
                pos++;
                continue;
            }
            const added_tok *a = &b->added[best];
            size_t ms = pos, me = best_end;
            if (a->single_word) {
                int left_ok = ms == 0 || !is_word_char(text, len, char_start_before(text, ms));
                int right_ok = me == len || !is_word_char(text, len, me);
                if (!left_ok || !right_ok) {
                    pos = me;
                    continue;
                }
            }
            if (a->lstrip) {
                while (ms > start) {
                    size_t k = char_start_before(text, ms);
                    int32_t cp;
                    utf8_next((const unsigned char *)text + k, len - k, &cp);
                    if (!is_white(cp)) break;
                    ms = k;
                }
            }
            if (a->rstrip) {
                while (me < len) {
                    int32_t cp;
                    int k = utf8_next((const unsigned char *)text + me, len - me, &cp);
                    if (!is_white(cp)) break;
                    me += (size_t)k;
                }
            }
            if (ms > start && !segv_push(out, (seg){src, base + start, ms - start, -1, origin && start == 0})) return 0;
            if (!segv_push(out, (seg){src, base + ms, me - ms, best, 0})) return 0;
            start = pos = me;
        }
    }
    if (len > start && !segv_push(out, (seg){src, base + start, len - start, -1, origin && start == 0})) return 0;
    return 1;
}

/* ---- normalizers ---- */

static oz_status replace_all(const char *s, size_t n, const char *pat, const char *rep, bbuf *out, oz_err *err) {
    size_t pl = strlen(pat), rl = strlen(rep);
    out->n = 0;
    if (!bbuf_reserve(out, n + 1)) return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n;) {
        if (pl && i + pl <= n && memcmp(s + i, pat, pl) == 0) {
            if (!bbuf_add(out, rep, rl)) return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
            i += pl;
        } else {
            if (!bbuf_add(out, s + i, 1)) return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
            i++;
        }
    }
    return OZ_OK;
}

/* Normalizes s[0, n) and appends the result to out. */
static oz_status normalize(const oz_bpe *b, workspace *w, const char *s, size_t n, bbuf *out, oz_err *err) {
    bbuf *bufs[2] = {&w->buf[0], &w->buf[1]};
    const char *cur = s;
    size_t cn = n;
    int k = 0;
    for (int i = 0; i < b->n_norm; i++) {
        const norm_step *st = &b->norm[i];
        bbuf *o = bufs[k];
        o->n = 0;
        if (!bbuf_reserve(o, cn + 16)) return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
        switch (st->kind) {
        case NORM_PREPEND:
            if (cn && (!bbuf_add(o, st->a, strlen(st->a)))) return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
            if (!bbuf_add(o, cur, cn)) return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
            break;
        case NORM_REPLACE: OZ_TRY(replace_all(cur, cn, st->a, st->b, o, err)); break;
        case NORM_REPLACE_RE: {
            size_t pos = 0, gap = 0;
            while (pos < cn) {
                int rc = pcre2_match(st->re.code, (PCRE2_SPTR)cur, cn, pos, 0, w->md, w->mctx);
                if (rc < 0) break;
                PCRE2_SIZE *ov = pcre2_get_ovector_pointer(w->md);
                if (ov[1] == ov[0]) {
                    pos = ov[0] + 1;
                    continue;
                }
                if (!bbuf_add(o, cur + gap, ov[0] - gap) || !bbuf_add(o, st->b, strlen(st->b)))
                    return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
                gap = pos = ov[1];
            }
            if (!bbuf_add(o, cur + gap, cn - gap)) return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
            break;
        }
        case NORM_STRIP: {
            size_t a = 0, e = cn;
            while (st->left && a < e) {
                int32_t cp;
                int l = utf8_next((const unsigned char *)cur + a, e - a, &cp);
                if (!is_white(cp)) break;
                a += (size_t)l;
            }
            while (st->right && e > a) {
                size_t k2 = char_start_before(cur, e);
                int32_t cp;
                utf8_next((const unsigned char *)cur + k2, e - k2, &cp);
                if (!is_white(cp)) break;
                e = k2;
            }
            if (!bbuf_add(o, cur + a, e - a)) return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
            break;
        }
        }
        cur = o->p;
        cn = o->n;
        k ^= 1;
    }
    if (!bbuf_add(out, cur, cn)) return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    return OZ_OK;
}

/* Added tokens: raw ones matched before normalization, normalized ones after (their content
 * normalized the same way, as the library does). */
oz_status oz_bpe_index_added(oz_bpe *b, oz_err *err) {
    workspace tmp = {0};
    OZ_TRY(ws_init(&tmp, err));
    oz_status s = OZ_OK;
    for (int i = 0; s == OZ_OK && i < b->n_added; i++) {
        added_tok *a = &b->added[i];
        if (!a->normalized || !b->n_norm) {
            if (!trie_add(a->normalized ? &b->norm_trie : &b->raw_trie, a->content, a->len, i))
                s = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
            continue;
        }
        bbuf nc = {0};
        s = normalize(b, &tmp, a->content, a->len, &nc, err);
        if (s == OZ_OK && nc.n && !trie_add(&b->norm_trie, nc.p, nc.n, i)) s = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
        free(nc.p);
    }
    ws_free(&tmp);
    return s;
}

/* ---- decoding ---- */

typedef struct {
    bbuf pool;
    size_t *off, *len;
    size_t n, cap;
} toklist;

static int toklist_add(toklist *t, const char *s, size_t n) {
    if (t->n == t->cap) {
        size_t c = t->cap ? t->cap * 2 : 64;
        size_t *o = realloc(t->off, c * sizeof *o);
        if (!o) return 0;
        t->off = o;
        size_t *l = realloc(t->len, c * sizeof *l);
        if (!l) return 0;
        t->len = l;
        t->cap = c;
    }
    t->off[t->n] = t->pool.n;
    t->len[t->n] = n;
    t->n++;
    return bbuf_add(&t->pool, s, n);
}

static void toklist_free(toklist *t) {
    free(t->pool.p);
    free(t->off);
    free(t->len);
    memset(t, 0, sizeof *t);
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* One decoder step from `in` to `out` (the library's decode_chain). */
static int decode_step(const oz_bpe *b, const dec_step *d, const toklist *in, toklist *out) {
    out->n = 0;
    out->pool.n = 0;
    switch (d->kind) {
    case DEC_BYTELEVEL: {
        /* Each token's characters back to bytes; a token with a character outside the map
         * (an added token such as "<|endoftext|>" with a space) keeps its own bytes. */
        bbuf acc = {0};
        for (size_t i = 0; i < in->n; i++) {
            const char *s = in->pool.p + in->off[i];
            size_t n = in->len[i], start = acc.n;
            int ok = 1;
            for (size_t k = 0; k < n;) {
                int32_t cp;
                k += (size_t)utf8_next((const unsigned char *)s + k, n - k, &cp);
                if (cp < 0 || cp >= 324 || b->cp_byte[cp] < 0) {
                    ok = 0;
                    break;
                }
                char c = (char)b->cp_byte[cp];
                if (!bbuf_add(&acc, &c, 1)) goto fail;
            }
            if (!ok) {
                acc.n = start;
                if (!bbuf_add(&acc, s, n)) goto fail;
            }
        }
        int r = toklist_add(out, acc.p ? acc.p : "", acc.n);
        free(acc.p);
        return r;
    fail:
        free(acc.p);
        return 0;
    }
    case DEC_REPLACE: {
        bbuf tmp = {0};
        for (size_t i = 0; i < in->n; i++) {
            oz_err e = {0};
            if (replace_all(in->pool.p + in->off[i], in->len[i], d->a, d->b, &tmp, &e) != OZ_OK ||
                !toklist_add(out, tmp.p, tmp.n)) {
                free(tmp.p);
                return 0;
            }
        }
        free(tmp.p);
        return 1;
    }
    case DEC_BYTEFALLBACK: {
        bbuf bytes = {0};
        size_t nbytes = 0;
        for (size_t i = 0; i <= in->n; i++) {
            const char *s = i < in->n ? in->pool.p + in->off[i] : NULL;
            size_t n = i < in->n ? in->len[i] : 0;
            int byte = -1;
            if (s && n == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' && hexval(s[3]) >= 0 && hexval(s[4]) >= 0)
                byte = hexval(s[3]) * 16 + hexval(s[4]);
            if (byte >= 0) {
                char c = (char)byte;
                if (!bbuf_add(&bytes, &c, 1)) goto bf_fail;
                nbytes++;
                continue;
            }
            if (nbytes) {
                if (utf8_valid((const unsigned char *)bytes.p, bytes.n)) {
                    if (!toklist_add(out, bytes.p, bytes.n)) goto bf_fail;
                } else {
                    for (size_t k = 0; k < nbytes; k++)
                        if (!toklist_add(out, "\xEF\xBF\xBD", 3)) goto bf_fail;
                }
                bytes.n = 0;
                nbytes = 0;
            }
            if (s && !toklist_add(out, s, n)) goto bf_fail;
        }
        free(bytes.p);
        return 1;
    bf_fail:
        free(bytes.p);
        return 0;
    }
    case DEC_FUSE: {
        size_t total = 0;
        for (size_t i = 0; i < in->n; i++) total += in->len[i];
        if (!toklist_add(out, "", 0) || !bbuf_reserve(&out->pool, total + 1)) return 0;
        for (size_t i = 0; i < in->n; i++) bbuf_add(&out->pool, in->pool.p + in->off[i], in->len[i]);
        out->len[0] = total;
        return 1;
    }
    case DEC_STRIP: {
        size_t cl = strlen(d->a);
        for (size_t i = 0; i < in->n; i++) {
            const char *s = in->pool.p + in->off[i];
            size_t a = 0, e = in->len[i];
            for (int k = 0; k < d->start && a + cl <= e && cl && memcmp(s + a, d->a, cl) == 0; k++) a += cl;
            for (int k = 0; k < d->stop && e >= a + cl && cl && memcmp(s + e - cl, d->a, cl) == 0; k++) e -= cl;
            if (!toklist_add(out, s + a, e - a)) return 0;
        }
        return 1;
    }
    case DEC_METASPACE: {
        bbuf tmp = {0};
        for (size_t i = 0; i < in->n; i++) {
            oz_err e = {0};
            if (replace_all(in->pool.p + in->off[i], in->len[i], d->a, " ", &tmp, &e) != OZ_OK) {
                free(tmp.p);
                return 0;
            }
            size_t skip = i == 0 && d->scheme != PREPEND_NEVER && tmp.n && tmp.p[0] == ' ';
            if (!toklist_add(out, tmp.p + skip, tmp.n - skip)) {
                free(tmp.p);
                return 0;
            }
        }
        free(tmp.p);
        return 1;
    }
    }
    return 0;
}

oz_status oz_bpe_decode(oz_bpe *b, const int32_t *ids, size_t n, int show_special, oz_text *out, oz_err *err) {
    toklist a = {0}, c = {0};
    oz_status st = OZ_OK;
    for (size_t i = 0; i < n && st == OZ_OK; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= b->vocab_size ||
            (b->added_of_id[id] < 0 && (id >= b->model_size || b->tok_off[id] == UINT32_MAX))) {
            st = oz_fail(err, OZ_ERR_INPUT, "cannot decode token id %d: not in the %d-token vocabulary of %s", (int)id,
                         b->vocab_size, b->path);
            break;
        }
        const char *s;
        size_t len;
        if (b->added_of_id[id] >= 0) {
            const added_tok *t = &b->added[b->added_of_id[id]];
            if (t->special && !show_special) continue;
            s = t->content;
            len = t->len;
        } else {
            s = b->pool + b->tok_off[id];
            len = b->tok_len[id];
        }
        if (!toklist_add(&a, s, len)) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory decoding");
    }
    for (int i = 0; st == OZ_OK && b->has_decoder && i < b->n_dec; i++) {
        if (!decode_step(b, &b->dec[i], &a, &c)) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory decoding");
        toklist t = a;
        a = c;
        c = t;
    }
    if (st == OZ_OK) {
        size_t total = 0;
        for (size_t i = 0; i < a.n; i++) total += a.len[i] + 1;
        char *p = realloc(out->data, out->len + total + 1);
        if (!p) {
            st = oz_fail(err, OZ_ERR_NOMEM, "out of memory decoding");
        } else {
            out->data = p;
            out->cap = out->len + total + 1;
            for (size_t i = 0; i < a.n; i++) {
                /* Without a decoder the library joins the tokens with spaces. */
                if (!b->has_decoder && i) out->data[out->len++] = ' ';
                memcpy(out->data + out->len, a.pool.p + a.off[i], a.len[i]);
                out->len += a.len[i];
            }
            out->data[out->len] = '\0';
        }
    }
    toklist_free(&a);
    toklist_free(&c);
    return st;
}

/* ---- encoding driver ---- */

/* A cut at p is safe for the GPT-2 and Llama-3 patterns when text[p-1] is a newline and text[p]
 * printable ASCII: no alternative matches across a newline into a non-space, and every such
 * character starts a match. */
static size_t safe_cut(const char *s, size_t lo, size_t want, size_t hi) {
    for (size_t p = want; p > lo + 1; p--)
        if (s[p - 1] == '\n' && (unsigned char)s[p] > 0x20 && (unsigned char)s[p] < 0x7F) return p;
    for (size_t p = want + 1; p < hi; p++)
        if (s[p - 1] == '\n' && (unsigned char)s[p] > 0x20 && (unsigned char)s[p] < 0x7F) return p;
    return hi;
}

typedef struct {
    int src;
    size_t off, len, subj_start, subj_end;
    int32_t added;
    int at_origin;
} unit;

/* The parallel encoder's units and, one longer, its batch starts (a batch per unit at most). */
typedef struct {
    unit *v;
    size_t *batch_start;
    size_t n, cap;
} unitv;

/* Appends u, growing both arrays; false when out of memory. Every unit goes through here: how many
 * a text makes depends on its added tokens and its cuts, not on its length alone. */
static bool unitv_push(unitv *u, unit x) {
    if (u->n == u->cap) {
        size_t cap = u->cap ? 2 * u->cap : 64;
        unit *v = realloc(u->v, cap * sizeof *v);
        if (!v) return false;
        u->v = v;
        size_t *bs = realloc(u->batch_start, (cap + 1) * sizeof *bs);
        if (!bs) return false;
        u->batch_start = bs;
        u->cap = cap;
    }
    u->v[u->n++] = x;
    return true;
}

oz_status oz_bpe_encode(oz_bpe *b, const char *text, size_t len, int add_special, int threads, oz_tokens *out,
                        oz_err *err) {
    int nt = threads > 0 ? threads : omp_get_max_threads();
    if (len < 4 * PARALLEL_UNIT || !b->chunk_safe) nt = 1;
    OZ_TRY(ensure_workspaces(b, nt, err));
    if (add_special && b->prefix.n) {
        OZ_TRY(oz_tokens_reserve(out, out->len + b->prefix.n, err));
        memcpy(out->ids + out->len, b->prefix.v, b->prefix.n * sizeof(int32_t));
        out->len += b->prefix.n;
    }
    segv raw = {0}, segs = {0};
    bbuf norm = {0};
    unitv uv = {0};
    oz_tokens *outs = NULL;
    size_t n_batches = 0;
    oz_status st = OZ_OK;
    /* Added tokens in the raw text, then normalization of the rest and the normalized tokens. */
    if (!split_added(b, &b->raw_trie, 0, text, len, 0, 1, &raw)) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    if (st == OZ_OK && (b->n_norm || b->norm_trie.used)) {
        for (size_t i = 0; st == OZ_OK && i < raw.n; i++) {
            seg s = raw.v[i];
            if (s.added >= 0) {
                if (!segv_push(&segs, s)) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
                continue;
            }
            size_t base = norm.n;
            st = normalize(b, &b->ws[0], text + s.off, s.len, &norm, err);
            if (st == OZ_OK && !bbuf_reserve(&norm, norm.n + 1)) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
            if (st == OZ_OK && !split_added(b, &b->norm_trie, 1, norm.p + base, norm.n - base, base, s.at_origin, &segs))
                st = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
        }
    } else {
        segv t = raw;
        raw = segs;
        segs = t;
    }
    const char *srcs[2] = {text, norm.p};
    if (st == OZ_OK && nt == 1) {
        workspace *w = &b->ws[0];
        for (size_t i = 0; st == OZ_OK && i < segs.n; i++) {
            const seg *s = &segs.v[i];
            if (s->added >= 0) st = oz_tokens_push(out, b->added[s->added].id, err);
            else st = encode_piece(b, w, srcs[s->src], s->off, s->len, s->off, s->off + s->len, s->at_origin, out, err);
        }
    } else if (st == OZ_OK) {
        /* Units of about PARALLEL_UNIT bytes (long pieces cut at safe newlines), grouped into
         * batches encoded in parallel, each into its own id buffer, concatenated in order. */
        for (size_t i = 0; st == OZ_OK && i < segs.n; i++) {
            const seg *s = &segs.v[i];
            if (s->added >= 0) {
                if (!unitv_push(&uv, (unit){0, 0, 0, 0, 0, b->added[s->added].id, 0}))
                    st = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
                continue;
            }
            const char *t = srcs[s->src];
            size_t a = s->off, end = s->off + s->len;
            while (st == OZ_OK && a < end) {
                size_t cut = end - a > 2 * PARALLEL_UNIT ? safe_cut(t, a, a + PARALLEL_UNIT, end) : end;
                if (!unitv_push(&uv, (unit){s->src, a, cut - a, s->off, end, -1, s->at_origin && a == s->off}))
                    st = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
                a = cut;
            }
        }
        /* No unit at all (an empty text) still has batch_start[0]. */
        if (st == OZ_OK && !uv.batch_start && !(uv.batch_start = malloc(sizeof *uv.batch_start)))
            st = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
        const unit *units = uv.v;
        size_t n_units = uv.n, *batch_start = uv.batch_start;
        size_t acc = 0;
        for (size_t i = 0; st == OZ_OK && i < n_units; i++) {
            if (i == 0 || acc >= PARALLEL_UNIT) {
                batch_start[n_batches++] = i;
                acc = 0;
            }
            acc += units[i].len + 1;
        }
        if (st == OZ_OK) {
            batch_start[n_batches] = n_units;
            outs = calloc(n_batches ? n_batches : 1, sizeof *outs);
            if (!outs) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
        }
        if (st == OZ_OK) {
            oz_status *bst = calloc(n_batches ? n_batches : 1, sizeof *bst);
            oz_err *berr = calloc(n_batches ? n_batches : 1, sizeof *berr);
            if (!bst || !berr) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
            if (st == OZ_OK) {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
                for (size_t k = 0; k < n_batches; k++) {
                    workspace *w = &b->ws[omp_get_thread_num()];
                    for (size_t i = batch_start[k]; i < batch_start[k + 1] && bst[k] == OZ_OK; i++) {
                        const unit *u = &units[i];
                        if (u->added >= 0) bst[k] = oz_tokens_push(&outs[k], u->added, &berr[k]);
                        else
                            bst[k] = encode_piece(b, w, srcs[u->src], u->off, u->len, u->subj_start, u->subj_end,
                                                  u->at_origin, &outs[k], &berr[k]);
                    }
                }
                size_t total = 0;
                for (size_t k = 0; k < n_batches; k++) {
                    if (bst[k] != OZ_OK && st == OZ_OK) st = oz_fail(err, bst[k], "%s", berr[k].msg);
                    total += outs[k].len;
                }
                if (st == OZ_OK) st = oz_tokens_reserve(out, out->len + total, err);
                for (size_t k = 0; st == OZ_OK && k < n_batches; k++) {
                    if (outs[k].len) memcpy(out->ids + out->len, outs[k].ids, outs[k].len * sizeof(int32_t));
                    out->len += outs[k].len;
                }
            }
            free(bst);
            free(berr);
        }
        for (size_t k = 0; outs && k < n_batches; k++) oz_tokens_free(&outs[k]);
    }
    if (st == OZ_OK && add_special && b->suffix.n) {
        st = oz_tokens_reserve(out, out->len + b->suffix.n, err);
        if (st == OZ_OK) {
            memcpy(out->ids + out->len, b->suffix.v, b->suffix.n * sizeof(int32_t));
            out->len += b->suffix.n;
        }
    }
    free(raw.v);
    free(segs.v);
    free(norm.p);
    free(uv.v);
    free(outs);
    free(uv.batch_start);
    return st;
}

/* ---- freeing (tokenizer_json.c builds it) ---- */

void oz_bpe_free(oz_bpe *b) {
    if (!b) return;
    for (int i = 0; i < b->n_ws; i++) ws_free(&b->ws[i]);
    free(b->ws);
    for (int i = 0; i < b->n_norm; i++) {
        free(b->norm[i].a);
        free(b->norm[i].b);
        pcre2_code_free(b->norm[i].re.code);
    }
    free(b->norm);
    for (int i = 0; i < b->n_pre; i++) pcre2_code_free(b->pre[i].re.code);
    free(b->pre);
    for (int i = 0; i < b->n_dec; i++) {
        free(b->dec[i].a);
        free(b->dec[i].b);
    }
    free(b->dec);
    for (int i = 0; i < b->n_added; i++) free(b->added[i].content);
    free(b->added);
    free(b->added_of_id);
    free(b->raw_trie.v);
    free(b->norm_trie.v);
    free(b->prefix.v);
    free(b->suffix.v);
    free(b->vocab.ent);
    free(b->vocab.slot);
    free(b->merges.t);
    free(b->pool);
    free(b->tok_off);
    free(b->tok_len);
    free(b->path);
    free(b);
}

/* ---- pre-tokenization alone, for the trainer ---- */

struct oz_pretok {
    regex re;
    workspace ws;
};

oz_status oz_pretok_create(oz_pretok **out, oz_bpe_pattern p, oz_err *err) {
    *out = NULL;
    oz_pretok *pt = calloc(1, sizeof *pt);
    if (!pt) return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    oz_status s = oz_bpe_regex_compile(&pt->re, oz_bpe_pattern_regex(p), 0, "pre-tokenizer", err);
    if (s == OZ_OK) s = ws_init(&pt->ws, err);
    if (s != OZ_OK) {
        oz_pretok_free(pt);
        return s;
    }
    *out = pt;
    return OZ_OK;
}

oz_status oz_pretok_words(oz_pretok *pt, const char *text, size_t len, int (*fn)(void *ctx, const char *w, size_t n),
                          void *ctx, oz_err *err) {
    workspace *w = &pt->ws;
    /* In slices cut where the patterns cannot match across, so span lists stay small. */
    for (size_t a = 0; a < len;) {
        size_t cut = len - a > 2 * PARALLEL_UNIT ? safe_cut(text, a, a + PARALLEL_UNIT, len) : len;
        w->sp[0].n = 0;
        span s0 = {a, cut - a, len, 0, a == 0};
        if (!spanv_push(&w->sp[0], s0)) return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
        OZ_TRY(split_regex(w, &pt->re, BEH_ISOLATED, 0, text, &w->sp[0], &w->sp[1], err));
        for (size_t i = 0; i < w->sp[1].n; i++)
            if (!fn(ctx, text + w->sp[1].v[i].off, w->sp[1].v[i].len))
                return oz_fail(err, OZ_ERR_NOMEM, "out of memory counting words");
        a = cut;
    }
    return OZ_OK;
}

void oz_pretok_free(oz_pretok *pt) {
    if (!pt) return;
    pcre2_code_free(pt->re.code);
    ws_free(&pt->ws);
    free(pt);
}
