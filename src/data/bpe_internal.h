/* Inside data/: the fields of an oz_bpe and the small tables and helpers that the tokenizer.json
 * loader (tokenizer_json.c, which fills them in) and the encoder/decoder (bpe.c, which reads them)
 * share. Nothing outside data/ includes this. */
#ifndef OZ_BPE_INTERNAL_H
#define OZ_BPE_INTERNAL_H
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "data/bpe.h"

#define GPT2_PATTERN "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define LLAMA3_PATTERN                                                                                   \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|" \
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

/* ---- small containers ---- */

typedef struct {
    char *p;
    size_t n, cap;
} bbuf;

static inline int bbuf_reserve(bbuf *b, size_t need) {
    if (need <= b->cap) return 1;
    size_t c = b->cap ? b->cap : 256;
    while (c < need) c *= 2;
    char *q = realloc(b->p, c);
    if (!q) return 0;
    b->p = q;
    b->cap = c;
    return 1;
}
static inline int bbuf_add(bbuf *b, const void *s, size_t n) {
    if (!bbuf_reserve(b, b->n + n + 1)) return 0;
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return 1;
}

typedef struct {
    int32_t *v;
    size_t n, cap;
} ivec;

static inline int ivec_reserve(ivec *a, size_t need) {
    if (need <= a->cap) return 1;
    size_t c = a->cap ? a->cap : 64;
    while (c < need) c *= 2;
    int32_t *q = realloc(a->v, c * sizeof *q);
    if (!q) return 0;
    a->v = q;
    a->cap = c;
    return 1;
}

static inline uint64_t hash_bytes(const void *data, size_t n) {
    const unsigned char *s = data;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        h = (h ^ v) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
        s += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, s, n);
    h = (h ^ v) * 0x94d049bb133111ebull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return h;
}

static inline int utf8_put(char *out, int32_t cp) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    } else if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    } else if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---- string -> id table (open addressing over entries kept elsewhere) ---- */

typedef struct {
    const char *s;
    uint32_t len;
    int32_t id;
} str_ent;

typedef struct {
    str_ent *ent;  /* owned array */
    size_t n;
    uint32_t *slot; /* entry index + 1; 0 = empty */
    size_t mask;
} strmap;

static inline int32_t strmap_get(const strmap *m, const char *s, size_t len) {
    if (!m->slot) return -1;
    size_t h = (size_t)hash_bytes(s, len) & m->mask;
    for (uint32_t e; (e = m->slot[h]) != 0; h = (h + 1) & m->mask) {
        const str_ent *x = &m->ent[e - 1];
        if (x->len == len && memcmp(x->s, s, len) == 0) return x->id;
    }
    return -1;
}

/* ---- merges: (left, right) -> (rank, merged id) ---- */

typedef struct {
    uint64_t key; /* left << 32 | right, + 1 so 0 means empty */
    int32_t rank, id;
} pair_ent;

typedef struct {
    pair_ent *t;
    size_t mask;
} pairmap;

/* Both ids must reach the low bits the mask keeps: a full 64-bit finalizer, not one multiply. */
static inline size_t pair_hash(uint64_t k, size_t mask) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ull;
    k ^= k >> 33;
    return (size_t)k & mask;
}
static inline uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1; }

static inline const pair_ent *pairmap_get(const pairmap *m, int32_t a, int32_t b) {
    uint64_t k = pair_key(a, b);
    size_t h = pair_hash(k, m->mask);
    for (;;) {
        const pair_ent *e = &m->t[h];
        if (e->key == k) return e;
        if (!e->key) return NULL;
        h = (h + 1) & m->mask;
    }
}

/* ---- regexes ---- */

typedef struct {
    pcre2_code *code;
    int jit;
} regex;

/* ---- the tokenizer: what tokenizer_json.c fills in ---- */

typedef enum { NORM_PREPEND, NORM_REPLACE, NORM_REPLACE_RE, NORM_STRIP } norm_kind;
typedef struct {
    norm_kind kind;
    char *a, *b; /* prepend text; replace pattern and content */
    regex re;
    int left, right; /* Strip */
} norm_step;

typedef enum { BEH_REMOVED, BEH_ISOLATED, BEH_MERGED_PREV, BEH_MERGED_NEXT, BEH_CONTIGUOUS } split_behavior;
typedef enum { PRE_SPLIT, PRE_BYTELEVEL, PRE_METASPACE } pre_kind;
typedef enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } prepend_scheme;
typedef struct {
    pre_kind kind;
    regex re;
    split_behavior behavior;
    int invert;
    int add_prefix_space;  /* ByteLevel */
    char repl[8];          /* Metaspace replacement, UTF-8 */
    int repl_len;
    prepend_scheme scheme; /* Metaspace */
    int split;             /* Metaspace */
} pre_step;

typedef enum { DEC_BYTELEVEL, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE } dec_kind;
typedef struct {
    dec_kind kind;
    char *a, *b;      /* Replace pattern, content; Strip content; Metaspace replacement */
    int start, stop;  /* Strip */
    prepend_scheme scheme;
} dec_step;

typedef struct {
    char *content;
    size_t len;
    int32_t id;
    int special, lstrip, rstrip, single_word, normalized;
} added_tok;

/* A byte trie over added-token contents, for leftmost-longest matching. */
typedef struct {
    int32_t next[256]; /* child node index, 0 = none (the root is node 0 and never a child) */
    int32_t tok;       /* index into added, -1 if no token ends here */
} trie_node;

typedef struct {
    trie_node *v;
    size_t n, cap;
    int used; /* any token inserted */
} trie;

struct oz_bpe {
    char *path;
    int vocab_size;  /* 1 + largest id */
    int model_size;  /* 1 + largest model-vocabulary id */
    int32_t bos, eos;
    /* model */
    char *pool;        /* every model token string, NUL-separated */
    uint32_t *tok_off; /* id -> offset in pool, UINT32_MAX for ids the model lacks */
    uint32_t *tok_len;
    strmap vocab;
    pairmap merges;
    int32_t unk;       /* -1 if none */
    int fuse_unk, byte_fallback, ignore_merges;
    int32_t fallback[256]; /* <0xXX> ids, -1 if missing */
    int32_t ascii[128];    /* single-character ids for ASCII (non-byte-level models), -1 if missing */
    /* GPT-2's byte <-> character map */
    int32_t byte_cp[256];
    int16_t cp_byte[324];
    int32_t byte_sym[256]; /* byte-level: the vocabulary id each byte starts as, -1 if missing */
    int byte_level;        /* the pre-tokenizer ends in ByteLevel: words are raw bytes */
    /* pipeline */
    norm_step *norm;
    int n_norm;
    pre_step *pre;
    int n_pre;
    int chunk_safe; /* large inputs may be cut at "\n" + printable ASCII */
    dec_step *dec;
    int n_dec;
    int has_decoder;
    ivec prefix, suffix; /* post-processor ids around the text */
    added_tok *added;
    int n_added;
    trie raw_trie, norm_trie;
    int32_t *added_of_id; /* id -> index into added, -1 */
    /* per-thread state (bpe.c) */
    struct oz_bpe_ws *ws;
    int n_ws;
};

/* Compiles a tokenizer.json pattern (literal: a String pattern) the way the library's Oniguruma
 * reads it; a bad regex is OZ_ERR_INPUT naming `where`. Free with pcre2_code_free(r->code). */
oz_status oz_bpe_regex_compile(regex *r, const char *pattern, int literal, const char *where, oz_err *err);
/* Fills raw_trie and norm_trie from added[] once the normalizers are loaded: a normalized added
 * token is matched by its normalized content, as the library does. */
oz_status oz_bpe_index_added(oz_bpe *b, oz_err *err);

#endif
