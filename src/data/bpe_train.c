/* Byte-level BPE training (`ounce tokenizer train`). The corpus is split into words by the same
 * pre-tokenizer encoding uses (GPT-2 or Llama-3 regex), words are counted, and pairs of adjacent
 * symbols are merged most-frequent first (ties: the smaller pair of ids) until the vocabulary is
 * full or no pair reaches min_frequency. Pair counts are kept exactly and updated incrementally:
 * each merge revisits only the words holding the pair (found through per-pair word lists) and a
 * max-heap with lazy re-validation picks the next pair. The result is written as a tokenizer.json
 * the `tokenizers` library loads (vocab in id order, merges as pairs) plus tokenizer_config.json. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data/bpe.h"
#include "io/atomic.h"

static uint64_t hash64(const void *data, size_t n) {
    const unsigned char *s = data;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

/* ---- input files ---- */

typedef struct {
    char **v;
    size_t n, cap;
} paths;

static int paths_add(paths *p, char *s) {
    if (!s) return 0;
    if (p->n == p->cap) {
        size_t c = p->cap ? p->cap * 2 : 16;
        char **q = realloc(p->v, c * sizeof *q);
        if (!q) {
            free(s);
            return 0;
        }
        p->v = q;
        p->cap = c;
    }
    p->v[p->n++] = s;
    return 1;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static oz_status walk(const char *dir, paths *out, oz_err *err) {
    DIR *d = opendir(dir);
    if (!d) return oz_fail(err, OZ_ERR_INPUT, "cannot read directory %s: %s", dir, strerror(errno));
    struct dirent *e;
    oz_status s = OZ_OK;
    size_t first = out->n;
    while (s == OZ_OK && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char *p = oz_path_join(dir, e->d_name);
        struct stat lst, st;
        if (!p) s = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
        else if (lstat(p, &lst) != 0 || stat(p, &st) != 0) free(p);
        else if (S_ISDIR(st.st_mode) && !S_ISLNK(lst.st_mode)) {
            s = walk(p, out, err);
            free(p);
        } else if (S_ISREG(st.st_mode)) {
            if (!paths_add(out, p)) s = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
        } else {
            free(p);
        }
    }
    closedir(d);
    if (s == OZ_OK) qsort(out->v + first, out->n - first, sizeof *out->v, cmp_str);
    return s;
}

/* ---- word counts ---- */

typedef struct {
    uint64_t hash;
    size_t off;   /* key in the pool */
    uint32_t len;
    uint64_t count;
} word_ent;

typedef struct {
    word_ent *t;
    size_t cap, n;
    char *pool;
    size_t pool_n, pool_cap;
} word_map;

static int word_add(void *ctx, const char *w, size_t n) {
    word_map *m = ctx;
    if ((m->n + 1) * 2 > m->cap) {
        size_t nc = m->cap ? m->cap * 2 : 1 << 16;
        word_ent *nt = calloc(nc, sizeof *nt);
        if (!nt) return 0;
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->t[i].count) continue;
            size_t j = m->t[i].hash & (nc - 1);
            while (nt[j].count) j = (j + 1) & (nc - 1);
            nt[j] = m->t[i];
        }
        free(m->t);
        m->t = nt;
        m->cap = nc;
    }
    uint64_t h = hash64(w, n);
    size_t j = h & (m->cap - 1);
    for (; m->t[j].count; j = (j + 1) & (m->cap - 1)) {
        word_ent *e = &m->t[j];
        if (e->hash == h && e->len == n && memcmp(m->pool + e->off, w, n) == 0) {
            e->count++;
            return 1;
        }
    }
    if (m->pool_n + n > m->pool_cap) {
        size_t nc = m->pool_cap ? m->pool_cap : 1 << 20;
        while (nc < m->pool_n + n) nc *= 2;
        char *q = realloc(m->pool, nc);
        if (!q) return 0;
        m->pool = q;
        m->pool_cap = nc;
    }
    memcpy(m->pool + m->pool_n, w, n);
    m->t[j] = (word_ent){h, m->pool_n, (uint32_t)n, 1};
    m->pool_n += n;
    m->n++;
    return 1;
}

/* ---- pairs ---- */

typedef struct {
    uint64_t key; /* (a << 32 | b) + 1; 0 = empty */
    int64_t count;
    uint32_t *words; /* indices of words that held the pair at some point (may repeat or be stale) */
    uint32_t n_words, cap_words;
} pair_rec;

typedef struct {
    pair_rec *t;
    size_t cap, n;
} pair_map;

static size_t pslot(const pair_map *m, uint64_t key) { return (size_t)hash64(&key, sizeof key) & (m->cap - 1); }

static pair_rec *pair_get(pair_map *m, int32_t a, int32_t b, int create) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1;
    if (create && (m->n + 1) * 2 > m->cap) {
        size_t nc = m->cap ? m->cap * 2 : 1 << 16;
        pair_rec *nt = calloc(nc, sizeof *nt);
        if (!nt) return NULL;
        pair_map nm = {nt, nc, m->n};
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->t[i].key) continue;
            size_t j = pslot(&nm, m->t[i].key);
            while (nt[j].key) j = (j + 1) & (nc - 1);
            nt[j] = m->t[i];
        }
        free(m->t);
        *m = nm;
    }
    if (!m->cap) return NULL;
    for (size_t j = pslot(m, key);; j = (j + 1) & (m->cap - 1)) {
        if (m->t[j].key == key) return &m->t[j];
        if (!m->t[j].key) {
            if (!create) return NULL;
            m->t[j].key = key;
            m->n++;
            return &m->t[j];
        }
    }
}

static int pair_note_word(pair_rec *p, uint32_t w) {
    if (p->n_words && p->words[p->n_words - 1] == w) return 1;
    if (p->n_words == p->cap_words) {
        uint32_t c = p->cap_words ? p->cap_words * 2 : 4;
        uint32_t *q = realloc(p->words, c * sizeof *q);
        if (!q) return 0;
        p->words = q;
        p->cap_words = c;
    }
    p->words[p->n_words++] = w;
    return 1;
}

/* Max-heap of (count, pair), larger count first, then the smaller pair. */
typedef struct {
    int64_t count;
    uint64_t key;
} heap_ent;

static int heap_before(const heap_ent *x, const heap_ent *y) {
    return x->count > y->count || (x->count == y->count && x->key < y->key);
}

typedef struct {
    heap_ent *v;
    size_t n, cap;
} pair_heap;

static int hpush(pair_heap *h, heap_ent e) {
    if (h->n == h->cap) {
        size_t c = h->cap ? h->cap * 2 : 1 << 16;
        heap_ent *q = realloc(h->v, c * sizeof *q);
        if (!q) return 0;
        h->v = q;
        h->cap = c;
    }
    size_t i = h->n++;
    while (i > 0 && heap_before(&e, &h->v[(i - 1) / 2])) {
        h->v[i] = h->v[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->v[i] = e;
    return 1;
}

static heap_ent hpop(pair_heap *h) {
    heap_ent top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && heap_before(&h->v[c + 1], &h->v[c])) c++;
        if (!heap_before(&h->v[c], &last)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n) h->v[i] = last;
    return top;
}

/* ---- training ---- */

typedef struct {
    int32_t *sym; /* symbols, in a shared pool */
    uint32_t n;
    uint64_t count;
    uint32_t stamp; /* the merge that last rewrote it */
} word;

typedef struct {
    char *s;
    size_t n;
} tok_str;

/* Adds (sign = +1) or removes (-1) a word's pair occurrences; on adding, pairs holding `fresh`
 * (the token just made) note the word so later merges can find it. */
static int word_pairs(pair_map *pm, const word *w, uint32_t wi, int sign, int32_t fresh) {
    for (uint32_t i = 0; i + 1 < w->n; i++) {
        int32_t a = w->sym[i], b = w->sym[i + 1];
        pair_rec *p = pair_get(pm, a, b, sign > 0);
        if (!p) {
            if (sign > 0) return 0;
            continue;
        }
        p->count += sign * (int64_t)w->count;
        if (sign > 0 && (fresh < 0 || a == fresh || b == fresh) && !pair_note_word(p, wi)) return 0;
    }
    return 1;
}

static cJSON *json_pretokenizer(oz_bpe_pattern pattern) {
    cJSON *bl = cJSON_CreateObject();
    cJSON_AddStringToObject(bl, "type", "ByteLevel");
    cJSON_AddBoolToObject(bl, "add_prefix_space", 0);
    cJSON_AddBoolToObject(bl, "trim_offsets", 1);
    cJSON_AddBoolToObject(bl, "use_regex", pattern == OZ_BPE_PATTERN_GPT2);
    if (pattern == OZ_BPE_PATTERN_GPT2) return bl;
    cJSON *seq = cJSON_CreateObject(), *list = cJSON_CreateArray(), *split = cJSON_CreateObject(),
          *pat = cJSON_CreateObject();
    cJSON_AddStringToObject(seq, "type", "Sequence");
    cJSON_AddStringToObject(split, "type", "Split");
    cJSON_AddStringToObject(pat, "Regex", oz_bpe_pattern_regex(pattern));
    cJSON_AddItemToObject(split, "pattern", pat);
    cJSON_AddStringToObject(split, "behavior", "Isolated");
    cJSON_AddBoolToObject(split, "invert", 0);
    cJSON_AddItemToArray(list, split);
    cJSON_AddItemToArray(list, bl);
    cJSON_AddItemToObject(seq, "pretokenizers", list);
    return seq;
}

static cJSON *json_template(const char *bos, int32_t bos_id) {
    cJSON *tp = cJSON_CreateObject();
    cJSON_AddStringToObject(tp, "type", "TemplateProcessing");
    for (int pair = 0; pair < 2; pair++) {
        cJSON *items = cJSON_CreateArray();
        for (int k = 0; k < (pair ? 2 : 1); k++) {
            cJSON *sp = cJSON_CreateObject(), *spi = cJSON_CreateObject();
            cJSON_AddStringToObject(spi, "id", bos);
            cJSON_AddNumberToObject(spi, "type_id", k);
            cJSON_AddItemToObject(sp, "SpecialToken", spi);
            cJSON_AddItemToArray(items, sp);
            cJSON *sq = cJSON_CreateObject(), *sqi = cJSON_CreateObject();
            cJSON_AddStringToObject(sqi, "id", k ? "B" : "A");
            cJSON_AddNumberToObject(sqi, "type_id", k);
            cJSON_AddItemToObject(sq, "Sequence", sqi);
            cJSON_AddItemToArray(items, sq);
        }
        cJSON_AddItemToObject(tp, pair ? "pair" : "single", items);
    }
    cJSON *specials = cJSON_CreateObject(), *def = cJSON_CreateObject(), *ids = cJSON_CreateArray(),
          *toks = cJSON_CreateArray();
    cJSON_AddStringToObject(def, "id", bos);
    cJSON_AddItemToArray(ids, cJSON_CreateNumber(bos_id));
    cJSON_AddItemToObject(def, "ids", ids);
    cJSON_AddItemToArray(toks, cJSON_CreateString(bos));
    cJSON_AddItemToObject(def, "tokens", toks);
    cJSON_AddItemToObject(specials, bos, def);
    cJSON_AddItemToObject(tp, "special_tokens", specials);
    return tp;
}

/* Token string -> id, so a string reached by two merge paths keeps one id (as the library's
 * trainer does). Slots hold id + 1. */
typedef struct {
    int32_t *slot;
    size_t mask;
} tok_index;

static int32_t tok_find(const tok_index *ix, const tok_str *toks, const char *s, size_t n, size_t *where) {
    size_t j = (size_t)hash64(s, n) & ix->mask;
    for (; ix->slot[j]; j = (j + 1) & ix->mask) {
        const tok_str *t = &toks[ix->slot[j] - 1];
        if (t->n == n && memcmp(t->s, s, n) == 0) return ix->slot[j] - 1;
    }
    *where = j;
    return -1;
}

static oz_status write_json(const char *dir, const char *name, cJSON *root, oz_err *err) {
    char *text = root ? cJSON_PrintUnformatted(root) : NULL;
    char *path = oz_path_join(dir, name);
    oz_status s = text && path ? oz_atomic_write(path, text, strlen(text), err) : oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    free(text);
    free(path);
    return s;
}

static oz_status write_tokenizer(const oz_bpe_train_opts *o, const char *const *specials, int n_spec, const tok_str *toks,
                                 int n_toks, const int32_t (*merges)[2], int n_merges, oz_err *err) {
    cJSON *root = cJSON_CreateObject(), *added = cJSON_CreateArray();
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation");
    cJSON_AddNullToObject(root, "padding");
    for (int i = 0; i < n_spec; i++) {
        cJSON *t = cJSON_CreateObject();
        cJSON_AddNumberToObject(t, "id", i);
        cJSON_AddStringToObject(t, "content", specials[i]);
        cJSON_AddBoolToObject(t, "single_word", 0);
        cJSON_AddBoolToObject(t, "lstrip", 0);
        cJSON_AddBoolToObject(t, "rstrip", 0);
        cJSON_AddBoolToObject(t, "normalized", 0);
        cJSON_AddBoolToObject(t, "special", 1);
        cJSON_AddItemToArray(added, t);
    }
    cJSON_AddItemToObject(root, "added_tokens", added);
    cJSON_AddNullToObject(root, "normalizer");
    cJSON_AddItemToObject(root, "pre_tokenizer", json_pretokenizer(o->pattern));
    if (n_spec >= 2) {
        cJSON_AddItemToObject(root, "post_processor", json_template(specials[0], 0));
    } else {
        cJSON *bl = cJSON_CreateObject();
        cJSON_AddStringToObject(bl, "type", "ByteLevel");
        cJSON_AddBoolToObject(bl, "add_prefix_space", 1);
        cJSON_AddBoolToObject(bl, "trim_offsets", 0);
        cJSON_AddBoolToObject(bl, "use_regex", 1);
        cJSON_AddItemToObject(root, "post_processor", bl);
    }
    cJSON *dec = cJSON_CreateObject();
    cJSON_AddStringToObject(dec, "type", "ByteLevel");
    cJSON_AddBoolToObject(dec, "add_prefix_space", 1);
    cJSON_AddBoolToObject(dec, "trim_offsets", 1);
    cJSON_AddBoolToObject(dec, "use_regex", 1);
    cJSON_AddItemToObject(root, "decoder", dec);
    cJSON *model = cJSON_CreateObject(), *vocab = cJSON_CreateObject(), *ml = cJSON_CreateArray();
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddNullToObject(model, "continuing_subword_prefix");
    cJSON_AddNullToObject(model, "end_of_word_suffix");
    cJSON_AddBoolToObject(model, "fuse_unk", 0);
    cJSON_AddBoolToObject(model, "byte_fallback", 0);
    /* Llama 3 takes a word that is itself a token as it is. */
    cJSON_AddBoolToObject(model, "ignore_merges", o->pattern == OZ_BPE_PATTERN_LLAMA3);
    for (int i = 0; i < n_toks; i++) cJSON_AddItemToObject(vocab, toks[i].s, cJSON_CreateNumber(i));
    cJSON_AddItemToObject(model, "vocab", vocab);
    for (int i = 0; i < n_merges; i++) {
        cJSON *pr = cJSON_CreateArray();
        cJSON_AddItemToArray(pr, cJSON_CreateString(toks[merges[i][0]].s));
        cJSON_AddItemToArray(pr, cJSON_CreateString(toks[merges[i][1]].s));
        cJSON_AddItemToArray(ml, pr);
    }
    cJSON_AddItemToObject(model, "merges", ml);
    cJSON_AddItemToObject(root, "model", model);
    oz_status s = oz_mkdir_p(o->out_dir, err);
    if (s == OZ_OK) s = write_json(o->out_dir, "tokenizer.json", root, err);
    cJSON_Delete(root);
    if (s != OZ_OK) return s;
    cJSON *cfg = cJSON_CreateObject();
    cJSON_AddStringToObject(cfg, "tokenizer_class", "PreTrainedTokenizerFast");
    cJSON_AddStringToObject(cfg, "bos_token", specials[0]);
    cJSON_AddStringToObject(cfg, "eos_token", specials[n_spec >= 2 ? 1 : 0]);
    cJSON_AddBoolToObject(cfg, "clean_up_tokenization_spaces", 0);
    s = write_json(o->out_dir, "tokenizer_config.json", cfg, err);
    cJSON_Delete(cfg);
    return s;
}

oz_status oz_bpe_train(const oz_bpe_train_opts *o, oz_bpe_train_report *report, oz_err *err) {
    static const char *default_specials[] = {"<|endoftext|>"};
    const char *const *specials = o->n_specials ? o->specials : default_specials;
    int n_spec = o->n_specials ? o->n_specials : 1;
    if (o->n_inputs <= 0) return oz_fail(err, OZ_ERR_INPUT, "tokenizer train: no inputs given");
    if (o->vocab_size < 256 + n_spec)
        return oz_fail(err, OZ_ERR_INPUT, "tokenizer train: vocab size %d is below the 256 bytes + %d special tokens",
                       o->vocab_size, n_spec);
    for (int i = 0; i < n_spec; i++) {
        if (!specials[i] || !*specials[i]) return oz_fail(err, OZ_ERR_INPUT, "tokenizer train: empty special token");
        for (int j = 0; j < i; j++)
            if (!strcmp(specials[i], specials[j]))
                return oz_fail(err, OZ_ERR_INPUT, "tokenizer train: special token %s given twice", specials[i]);
    }
    oz_bpe_train_report rep = {0};
    paths files = {0};
    word_map wm = {0};
    oz_pretok *pt = NULL;
    word *words = NULL;
    int32_t *sym_pool = NULL;
    tok_str *toks = NULL;
    int32_t (*merges)[2] = NULL;
    pair_map pm = {0};
    pair_heap heap = {0};
    int n_toks = 0, n_merges = 0, merges_cap = o->vocab_size;
    oz_status s = oz_pretok_create(&pt, o->pattern, err);
    /* Files, in order; every word of every text file counted. */
    for (int i = 0; s == OZ_OK && i < o->n_inputs; i++) {
        struct stat st;
        if (stat(o->inputs[i], &st) != 0) s = oz_fail(err, OZ_ERR_INPUT, "input %s: no such file or directory", o->inputs[i]);
        else if (S_ISDIR(st.st_mode)) s = walk(o->inputs[i], &files, err);
        else if (!paths_add(&files, oz_path_join("", o->inputs[i]))) s = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; s == OZ_OK && i < files.n; i++) {
        char *text = NULL;
        size_t n = 0;
        s = oz_read_file(files.v[i], &text, &n, err);
        if (s == OZ_OK && !memchr(text, '\0', n)) { /* binary files are skipped */
            s = oz_pretok_words(pt, text, n, word_add, &wm, err);
            rep.bytes += n;
        }
        free(text);
    }
    if (s == OZ_OK && wm.n == 0) s = oz_fail(err, OZ_ERR_INPUT, "tokenizer train: no text in the inputs");
    /* Initial vocabulary: the special tokens, then the 256 byte characters in code-point order. */
    int32_t byte_cp[256], byte_id[256];
    for (int c = 0, k = 0; c < 256; c++) {
        int printable = (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
        byte_cp[c] = printable ? c : 256 + k++;
    }
    if (s == OZ_OK) {
        toks = calloc((size_t)o->vocab_size, sizeof *toks);
        merges = calloc((size_t)o->vocab_size, sizeof *merges);
        words = calloc(wm.n, sizeof *words);
        sym_pool = malloc(wm.pool_n * sizeof *sym_pool);
        if (!toks || !merges || !words || !sym_pool) s = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; s == OZ_OK && i < n_spec; i++) {
        toks[n_toks].n = strlen(specials[i]);
        toks[n_toks].s = malloc(toks[n_toks].n + 1);
        if (!toks[n_toks].s) s = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
        else memcpy(toks[n_toks++].s, specials[i], strlen(specials[i]) + 1);
    }
    for (int32_t cp = 0; s == OZ_OK && cp < 324; cp++) {
        for (int c = 0; c < 256; c++) {
            if (byte_cp[c] != cp) continue;
            byte_id[c] = n_toks;
            char *t = malloc(3);
            if (!t) {
                s = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
                break;
            }
            if (cp < 0x80) {
                t[0] = (char)cp;
                t[1] = '\0';
            } else {
                t[0] = (char)(0xC0 | (cp >> 6));
                t[1] = (char)(0x80 | (cp & 0x3F));
                t[2] = '\0';
            }
            toks[n_toks++] = (tok_str){t, strlen(t)};
        }
    }
    /* Words as symbol arrays, in a deterministic order (first appearance in the pool). */
    size_t nw = 0;
    if (s == OZ_OK) {
        for (size_t j = 0; j < wm.cap; j++) {
            if (!wm.t[j].count) continue;
            const word_ent *e = &wm.t[j];
            words[nw] = (word){sym_pool + e->off, e->len, e->count, 0};
            for (uint32_t k = 0; k < e->len; k++) sym_pool[e->off + k] = byte_id[(unsigned char)wm.pool[e->off + k]];
            nw++;
        }
        rep.words = nw;
        for (size_t i = 0; s == OZ_OK && i < nw; i++)
            if (!word_pairs(&pm, &words[i], (uint32_t)i, +1, -1)) s = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
        for (size_t j = 0; s == OZ_OK && j < pm.cap; j++)
            if (pm.t[j].key && pm.t[j].count > 0 && !hpush(&heap, (heap_ent){pm.t[j].count, pm.t[j].key}))
                s = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    }
    tok_index ix = {0};
    if (s == OZ_OK) {
        size_t cap = 16;
        while (cap < (size_t)o->vocab_size * 2) cap *= 2;
        ix.slot = calloc(cap, sizeof *ix.slot);
        ix.mask = cap - 1;
        if (!ix.slot) s = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
        for (int i = 0; s == OZ_OK && i < n_toks; i++) {
            size_t j = 0;
            if (tok_find(&ix, toks, toks[i].s, toks[i].n, &j) < 0) ix.slot[j] = i + 1;
        }
    }
    uint64_t min_freq = o->min_frequency ? o->min_frequency : 1;
    uint32_t stamp = 0;
    while (s == OZ_OK && n_toks < o->vocab_size && heap.n) {
        heap_ent top = hpop(&heap);
        int32_t a = (int32_t)((top.key - 1) >> 32), b = (int32_t)(uint32_t)(top.key - 1);
        pair_rec *p = pair_get(&pm, a, b, 0);
        if (!p || p->count <= 0) continue;
        if (p->count != top.count) { /* stale: back in with its true count */
            if (!hpush(&heap, (heap_ent){p->count, top.key})) s = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
            continue;
        }
        if ((uint64_t)p->count < min_freq) break;
        size_t ln = toks[a].n + toks[b].n, where = 0;
        char *t = malloc(ln + 1);
        if (!t) {
            s = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
            break;
        }
        memcpy(t, toks[a].s, toks[a].n);
        memcpy(t + toks[a].n, toks[b].s, toks[b].n + 1);
        int32_t fresh = tok_find(&ix, toks, t, ln, &where);
        if (fresh >= 0) {
            free(t);
        } else {
            fresh = n_toks;
            ix.slot[where] = n_toks + 1;
            toks[n_toks++] = (tok_str){t, ln};
        }
        if (n_merges == merges_cap) {
            int32_t(*q)[2] = realloc(merges, (size_t)merges_cap * 2 * sizeof *q);
            if (!q) {
                s = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
                break;
            }
            merges = q;
            merges_cap *= 2;
        }
        merges[n_merges][0] = a;
        merges[n_merges++][1] = b;
        stamp++;
        /* The word list may grow while we walk it (a word can hold (fresh, fresh) only after this
         * merge, never (a, b)), so copy it first. */
        uint32_t nwl = p->n_words, *wl = malloc((nwl ? nwl : 1) * sizeof *wl);
        if (!wl) {
            s = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
            break;
        }
        memcpy(wl, p->words, nwl * sizeof *wl);
        free(p->words);
        p->words = NULL;
        p->n_words = p->cap_words = 0;
        for (uint32_t k = 0; s == OZ_OK && k < nwl; k++) {
            word *w = &words[wl[k]];
            if (w->stamp == stamp) continue;
            int has = 0;
            for (uint32_t i = 0; i + 1 < w->n && !has; i++) has = w->sym[i] == a && w->sym[i + 1] == b;
            if (!has) continue;
            w->stamp = stamp;
            word_pairs(&pm, w, wl[k], -1, -1);
            uint32_t m = 0;
            for (uint32_t i = 0; i < w->n; i++) {
                if (i + 1 < w->n && w->sym[i] == a && w->sym[i + 1] == b) {
                    w->sym[m++] = fresh;
                    i++;
                } else {
                    w->sym[m++] = w->sym[i];
                }
            }
            w->n = m;
            if (!word_pairs(&pm, w, wl[k], +1, fresh)) s = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
            /* New pairs (those holding the fresh token) enter the heap with their counts as they
             * stand after this word; later words re-push, and stale entries are re-validated. */
            for (uint32_t i = 0; s == OZ_OK && i + 1 < w->n; i++) {
                if (w->sym[i] != fresh && w->sym[i + 1] != fresh) continue;
                pair_rec *q = pair_get(&pm, w->sym[i], w->sym[i + 1], 0);
                if (q && !hpush(&heap, (heap_ent){q->count, q->key})) s = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
            }
        }
        free(wl);
    }
    if (s == OZ_OK) s = write_tokenizer(o, specials, n_spec, toks, n_toks, (const int32_t(*)[2])merges, n_merges, err);
    rep.merges = n_merges;
    rep.vocab_size = n_toks;
    for (int i = 0; toks && i < n_toks; i++) free(toks[i].s);
    free(toks);
    free(ix.slot);
    free(merges);
    free(words);
    free(sym_pool);
    for (size_t j = 0; j < pm.cap; j++) free(pm.t[j].words);
    free(pm.t);
    free(heap.v);
    free(wm.t);
    free(wm.pool);
    for (size_t i = 0; i < files.n; i++) free(files.v[i]);
    free(files.v);
    oz_pretok_free(pt);
    if (s == OZ_OK && report) *report = rep;
    return s;
}
