/* Corpus preparation: collect input files, encode every document into one token stream (kept in an
 * unlinked temp file so memory stays flat for large corpora), then split that stream into train
 * and val shards and describe them in meta.json. Nothing in OUT is replaced until the whole corpus
 * has been read without error. */
#include "data/prepare.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/shard.h"
#include "data/tokenizer_gguf.h"
#include "io/atomic.h"
#include "io/gguf.h"

#define DEFAULT_BLOCK 4096u
#define DEFAULT_MIN_VAL 513u
#define ENCODE_CHUNK ((size_t)1 << 20)
/* val_fraction is applied as an integer ratio so the block choice never depends on rounding. */
#define FRAC_DEN 1000000ull

void oz_prepare_opts_init(oz_prepare_opts *opts) {
    memset(opts, 0, sizeof *opts);
    opts->val_fraction = 0.05;
    opts->val_block_tokens = DEFAULT_BLOCK;
    opts->val_min_tokens = DEFAULT_MIN_VAL;
}

/* ---- input collection ---- */

typedef struct {
    char *path;
    dev_t dev;
    ino_t ino;
    int input;     /* index into opts->inputs */
    int explicit_; /* named on the command line rather than found in a directory */
    int dup;       /* another path to a file already listed */
    size_t order;
} file_ent;

typedef struct {
    file_ent *v;
    size_t n, cap;
} file_list;

static void files_free(file_list *l) {
    for (size_t i = 0; i < l->n; i++) free(l->v[i].path);
    free(l->v);
    memset(l, 0, sizeof *l);
}

static oz_status files_add(file_list *l, char *path, const struct stat *st, int input, int explicit_,
                           oz_err *err) {
    if (l->n == l->cap) {
        size_t ncap = l->cap ? l->cap * 2 : 64;
        file_ent *nv = realloc(l->v, ncap * sizeof *nv);
        if (!nv) {
            free(path);
            return oz_fail(err, OZ_ERR_NOMEM, "out of memory listing input files");
        }
        l->v = nv;
        l->cap = ncap;
    }
    l->v[l->n++] = (file_ent){path, st->st_dev, st->st_ino, input, explicit_, 0, 0};
    return OZ_OK;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* fortune ships X and its strfile index X.dat side by side; only X is text. */
static int is_strfile_index(const char *path) {
    if (!ends_with(path, ".dat")) return 0;
    size_t n = strlen(path) - 4;
    char *base = malloc(n + 1);
    if (!base) return 0;
    memcpy(base, path, n);
    base[n] = '\0';
    struct stat st;
    int r = stat(base, &st) == 0 && S_ISREG(st.st_mode);
    free(base);
    return r;
}

/* A directory the walk must not enter: the output directory, when it lies inside an input, so
 * re-running prepare does not read its own meta.json back as text. */
typedef struct {
    int active;
    dev_t dev;
    ino_t ino;
} dir_id;

/* Symlinked directories are not followed, so the walk cannot loop. */
static oz_status walk_dir(const char *dir, int input, const dir_id *exclude, file_list *out, uint64_t *skipped,
                          oz_err *err) {
    DIR *d = opendir(dir);
    if (!d) return oz_fail(err, OZ_ERR_INPUT, "cannot read directory %s: %s", dir, strerror(errno));
    oz_status s = OZ_OK;
    struct dirent *e;
    while (s == OZ_OK && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue; /* hidden, ".", ".." */
        char *p = oz_path_join(dir, e->d_name);
        if (!p) {
            s = oz_fail(err, OZ_ERR_NOMEM, "out of memory walking %s", dir);
            break;
        }
        struct stat lst, st;
        if (lstat(p, &lst) != 0 || stat(p, &st) != 0) {
            free(p); /* dangling symlink or a file that vanished mid-walk */
            continue;
        }
        if (S_ISDIR(st.st_mode)) {
            int excluded = exclude->active && st.st_dev == exclude->dev && st.st_ino == exclude->ino;
            if (!S_ISLNK(lst.st_mode) && !excluded) s = walk_dir(p, input, exclude, out, skipped, err);
            free(p);
        } else if (S_ISREG(st.st_mode)) {
            if (is_strfile_index(p)) {
                (*skipped)++;
                free(p);
            } else {
                s = files_add(out, p, &st, input, 0, err);
            }
        } else {
            free(p);
        }
    }
    closedir(d);
    return s;
}

static int cmp_path(const void *a, const void *b) {
    return strcmp(((const file_ent *)a)->path, ((const file_ent *)b)->path);
}

static int cmp_identity(const void *a, const void *b) {
    const file_ent *x = *(file_ent *const *)a, *y = *(file_ent *const *)b;
    if (x->dev != y->dev) return x->dev < y->dev ? -1 : 1;
    if (x->ino != y->ino) return x->ino < y->ino ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

static oz_status collect(const oz_prepare_opts *o, file_list *files, uint64_t *skipped, oz_err *err) {
    dir_id out_id = {0};
    struct stat ost;
    if (stat(o->out_dir, &ost) == 0 && S_ISDIR(ost.st_mode)) out_id = (dir_id){1, ost.st_dev, ost.st_ino};
    for (int i = 0; i < o->n_inputs; i++) {
        const char *in = o->inputs[i];
        if (!in || !*in) return oz_fail(err, OZ_ERR_INPUT, "input %d is an empty path", i + 1);
        struct stat st;
        if (stat(in, &st) != 0)
            return oz_fail(err, OZ_ERR_INPUT, "input %s: %s", in,
                           errno == ENOENT ? "no such file or directory" : strerror(errno));
        size_t first = files->n;
        if (S_ISDIR(st.st_mode)) {
            OZ_TRY(walk_dir(in, i, &out_id, files, skipped, err));
            /* Sorting whole paths (not per directory) makes the order independent of readdir. */
            qsort(files->v + first, files->n - first, sizeof *files->v, cmp_path);
        } else if (S_ISREG(st.st_mode)) {
            char *p = oz_path_join("", in);
            if (!p) return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
            OZ_TRY(files_add(files, p, &st, i, 1, err));
        } else {
            return oz_fail(err, OZ_ERR_INPUT, "input %s is neither a regular file nor a directory", in);
        }
    }
    /* Hard links and symlinks (e.g. fortune's X.u8 -> X) would otherwise repeat a text; the first
     * path in processing order wins. */
    file_ent **idx = malloc((files->n ? files->n : 1) * sizeof *idx);
    if (!idx) return oz_fail(err, OZ_ERR_NOMEM, "out of memory listing input files");
    for (size_t i = 0; i < files->n; i++) {
        files->v[i].order = i;
        idx[i] = &files->v[i];
    }
    qsort(idx, files->n, sizeof *idx, cmp_identity);
    for (size_t i = 1; i < files->n; i++)
        if (idx[i]->dev == idx[i - 1]->dev && idx[i]->ino == idx[i - 1]->ino) idx[i]->dup = 1;
    free(idx);
    return OZ_OK;
}

/* ---- encoding into the temp stream ---- */

typedef struct {
    const oz_tokenizer *tok;
    uint32_t width;
    FILE *stream;
    const char *stream_desc;
    oz_tokens ids;
    unsigned char *bytes; /* ids converted to shard width */
    size_t bytes_cap;
    uint64_t n_tokens;
    uint64_t documents;
    uint64_t text_bytes;
} encoder;

static oz_status emit_ids(encoder *e, const int32_t *ids, size_t n, oz_err *err) {
    size_t need = n * e->width;
    if (need > e->bytes_cap) {
        unsigned char *nb = realloc(e->bytes, need);
        if (!nb) return oz_fail(err, OZ_ERR_NOMEM, "out of memory encoding the corpus");
        e->bytes = nb;
        e->bytes_cap = need;
    }
    unsigned char *b = e->bytes;
    if (e->width == 2) {
        for (size_t i = 0; i < n; i++) {
            b[2 * i] = (unsigned char)ids[i];
            b[2 * i + 1] = (unsigned char)(ids[i] >> 8);
        }
    } else {
        for (size_t i = 0; i < n; i++)
            for (int k = 0; k < 4; k++) b[4 * i + k] = (unsigned char)((uint32_t)ids[i] >> (8 * k));
    }
    if (n && fwrite(b, e->width, n, e->stream) != n)
        return oz_fail(err, OZ_ERR_IO, "cannot write the temporary token stream in %s: %s", e->stream_desc,
                       strerror(errno));
    e->n_tokens += n;
    return OZ_OK;
}

/* One document: its text in chunks (so a huge file never needs a huge id buffer), then EOS. A
 * BPE tokenizer gets the whole text at once, since a cut could fall inside a word (it splits
 * large texts itself, at safe points, to encode them in parallel), wrapped in its template (BOS
 * for Llama), exactly as the `tokenizers` library encodes a document. */
static oz_status emit_document(encoder *e, const char *text, size_t len, oz_err *err) {
    if (len == 0) return OZ_OK;
    if (e->tok->type == OZ_TOK_HF) {
        e->ids.len = 0;
        OZ_TRY(oz_tokenizer_encode_special(e->tok, text, len, &e->ids, err));
        if (e->ids.len == 0 || e->ids.ids[e->ids.len - 1] != e->tok->eos_id)
            OZ_TRY(oz_tokens_push(&e->ids, e->tok->eos_id, err));
        OZ_TRY(emit_ids(e, e->ids.ids, e->ids.len, err));
        e->documents++;
        e->text_bytes += len;
        return OZ_OK;
    }
    for (size_t off = 0; off < len; off += ENCODE_CHUNK) {
        size_t m = len - off < ENCODE_CHUNK ? len - off : ENCODE_CHUNK;
        e->ids.len = 0;
        OZ_TRY(oz_tokenizer_encode(e->tok, text + off, m, &e->ids, err));
        OZ_TRY(emit_ids(e, e->ids.ids, e->ids.len, err));
    }
    int32_t eos = e->tok->eos_id;
    OZ_TRY(emit_ids(e, &eos, 1, err));
    e->documents++;
    e->text_bytes += len;
    return OZ_OK;
}

static oz_status emit_jsonl(encoder *e, const char *path, const char *data, size_t len, oz_err *err) {
    size_t line = 0, pos = 0;
    if (len >= 3 && memcmp(data, "\xEF\xBB\xBF", 3) == 0) pos = 3; /* UTF-8 byte-order mark */
    while (pos < len) {
        const char *start = data + pos;
        const char *nl = memchr(start, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - start) : len - pos;
        pos += n + 1;
        line++;
        size_t k = 0;
        while (k < n && (start[k] == ' ' || start[k] == '\t' || start[k] == '\r')) k++;
        if (k == n) continue; /* blank lines, e.g. a trailing newline */
        cJSON *obj = cJSON_ParseWithLength(start, n);
        if (!obj) return oz_fail(err, OZ_ERR_INPUT, "%s:%zu: invalid JSON", path, line);
        const cJSON *text = cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, "text") : NULL;
        oz_status s;
        if (!cJSON_IsObject(obj))
            s = oz_fail(err, OZ_ERR_INPUT, "%s:%zu: expected a JSON object with a \"text\" string", path, line);
        else if (!cJSON_IsString(text) || !text->valuestring)
            s = oz_fail(err, OZ_ERR_INPUT, "%s:%zu: missing \"text\" string field", path, line);
        else
            s = emit_document(e, text->valuestring, strlen(text->valuestring), err);
        cJSON_Delete(obj);
        OZ_TRY(s);
    }
    return OZ_OK;
}

/* Reads one file into the stream. *used is 0 when the file was skipped as binary. */
static oz_status emit_file(encoder *e, const file_ent *f, int *used, uint64_t *docs, oz_err *err) {
    *used = 0;
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return oz_fail(err, OZ_ERR_INPUT, "cannot open %s: %s", f->path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int en = errno;
        close(fd);
        return oz_fail(err, OZ_ERR_IO, "cannot stat %s: %s", f->path, strerror(en));
    }
    size_t len = (size_t)st.st_size;
    if (len == 0) {
        close(fd);
        *used = 1;
        return OZ_OK;
    }
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int en = errno;
    close(fd);
    if (map == MAP_FAILED) return oz_fail(err, OZ_ERR_IO, "cannot read %s: %s", f->path, strerror(en));
    madvise(map, len, MADV_SEQUENTIAL);
    oz_status s = OZ_OK;
    if (memchr(map, '\0', len)) {
        if (f->explicit_)
            s = oz_fail(err, OZ_ERR_INPUT, "input %s looks binary (it contains NUL bytes), not text", f->path);
    } else {
        uint64_t before = e->documents;
        *used = 1;
        if (ends_with(f->path, ".jsonl"))
            s = emit_jsonl(e, f->path, map, len, err);
        else
            s = emit_document(e, map, len, err);
        *docs += e->documents - before;
    }
    munmap(map, len);
    return s;
}

/* ---- splitting ---- */

typedef struct {
    const unsigned char *stream;
    uint32_t width;
    uint32_t vocab;
    oz_shard_writer *train, *val;
    uint64_t *hist; /* training-token counts */
} splitter;

static oz_status emit_range(splitter *sp, uint64_t start, uint64_t end, int to_val, oz_err *err) {
    if (end <= start) return OZ_OK;
    const unsigned char *p = sp->stream + start * sp->width;
    size_t n = (size_t)(end - start);
    if (to_val) return oz_shard_writer_append_raw(sp->val, p, n, err);
    if (sp->width == 2) {
        for (size_t i = 0; i < n; i++) sp->hist[(uint32_t)p[2 * i] | (uint32_t)p[2 * i + 1] << 8]++;
    } else {
        for (size_t i = 0; i < n; i++) {
            const unsigned char *q = p + 4 * i;
            sp->hist[(uint32_t)q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 | (uint32_t)q[3] << 24]++;
        }
    }
    return oz_shard_writer_append_raw(sp->train, p, n, err);
}

static int block_is_val(uint64_t i, uint64_t frac_num) {
    return (i + 1) * frac_num / FRAC_DEN > i * frac_num / FRAC_DEN;
}

static double entropy_nats(const uint64_t *hist, uint32_t vocab) {
    uint64_t total = 0;
    for (uint32_t i = 0; i < vocab; i++) total += hist[i];
    if (!total) return 0.0;
    double h = 0.0;
    for (uint32_t i = 0; i < vocab; i++) {
        if (!hist[i]) continue;
        double p = (double)hist[i] / (double)total;
        h -= p * log(p);
    }
    return h;
}

/* ---- meta.json ---- */

typedef struct {
    uint64_t files, documents, tokens;
} source_stats;

static oz_status write_meta(const oz_prepare_opts *o, const oz_tokenizer *tok, const source_stats *src,
                            const oz_prepare_report *r, oz_err *err) {
    cJSON *m = cJSON_CreateObject();
    cJSON *sources = cJSON_CreateArray();
    int ok = m && sources;
    if (ok) {
        cJSON_AddStringToObject(m, "format", "ounce-tokens");
        cJSON_AddNumberToObject(m, "version", 1);
        cJSON_AddStringToObject(m, "tokenizer", oz_tokenizer_name(tok));
        if (tok->type == OZ_TOK_HF) cJSON_AddStringToObject(m, "tokenizer_file", "tokenizer.json");
        cJSON_AddNumberToObject(m, "vocab_size", tok->vocab_size);
        cJSON_AddNumberToObject(m, "bos_token_id", tok->bos_id);
        cJSON_AddNumberToObject(m, "eos_token_id", tok->eos_id);
        /* Counts go through doubles: exact up to 2^53 tokens, far beyond any corpus here. */
        cJSON_AddNumberToObject(m, "train_tokens", (double)r->train_tokens);
        cJSON_AddNumberToObject(m, "val_tokens", (double)r->val_tokens);
        cJSON_AddNumberToObject(m, "documents", (double)r->documents);
        cJSON_AddNumberToObject(m, "unigram_entropy_nats", r->unigram_entropy_nats);
        cJSON_AddNumberToObject(m, "val_fraction", o->val_fraction);
        for (int i = 0; i < o->n_inputs && ok; i++) {
            cJSON *s = cJSON_CreateObject();
            ok = s != NULL;
            if (!ok) break;
            cJSON_AddStringToObject(s, "path", o->inputs[i]);
            cJSON_AddNumberToObject(s, "files", (double)src[i].files);
            cJSON_AddNumberToObject(s, "documents", (double)src[i].documents);
            cJSON_AddNumberToObject(s, "tokens", (double)src[i].tokens);
            cJSON_AddItemToArray(sources, s);
        }
        cJSON_AddItemToObject(m, "sources", sources);
        sources = NULL;
    }
    char *text = ok ? cJSON_Print(m) : NULL;
    cJSON_Delete(m);
    cJSON_Delete(sources);
    if (!text) return oz_fail(err, OZ_ERR_NOMEM, "out of memory building meta.json");
    char *path = oz_path_join(o->out_dir, "meta.json");
    oz_status s = path ? OZ_OK : oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    if (s == OZ_OK) {
        size_t n = strlen(text);
        text[n] = '\n'; /* cJSON_Print's NUL becomes the file's final newline */
        s = oz_atomic_write(path, text, n + 1, err);
    }
    free(path);
    free(text);
    return s;
}

/* ---- the tokenizer's files ---- */

/* Copies src to dst atomically (a no-op when they are the same file). */
static oz_status copy_file(const char *src, const char *dst, oz_err *err) {
    struct stat a, b;
    if (stat(src, &a) == 0 && stat(dst, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino) return OZ_OK;
    char *data = NULL;
    size_t n = 0;
    OZ_TRY(oz_read_file(src, &data, &n, err));
    oz_status s = oz_atomic_write(dst, data, n, err);
    free(data);
    return s;
}

/* An HF tokenizer travels with the data: OUT/tokenizer.json, and tokenizer_config.json when the
 * tokenizer had one beside it (a stale one from an earlier run is removed), so the trainer and
 * every checkpoint take the vocabulary from here. */
static oz_status copy_tokenizer(const oz_tokenizer *tok, const char *out_dir, oz_err *err) {
    const char *src = oz_tokenizer_source(tok);
    if (!src) return OZ_OK;
    if (oz_gguf_is_file(src)) { /* a GGUF's vocabulary, written out as tokenizer.json */
        oz_gguf g;
        OZ_TRY(oz_gguf_open(&g, src, err));
        oz_status s = oz_gguf_tokenizer_write_files(&g, out_dir, err);
        oz_gguf_close(&g);
        return s;
    }
    char *dst = oz_path_join(out_dir, "tokenizer.json");
    char *dst_cfg = oz_path_join(out_dir, "tokenizer_config.json");
    char *src_dir = oz_path_join("", src);
    char *src_cfg = NULL;
    oz_status s = dst && dst_cfg && src_dir ? OZ_OK : oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    if (s == OZ_OK) {
        char *slash = strrchr(src_dir, '/');
        if (slash) slash[1] = '\0';
        src_cfg = oz_path_join(slash ? src_dir : ".", "tokenizer_config.json");
        if (!src_cfg) s = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    }
    if (s == OZ_OK) s = copy_file(src, dst, err);
    struct stat st;
    if (s == OZ_OK && stat(src_cfg, &st) == 0) s = copy_file(src_cfg, dst_cfg, err);
    else if (s == OZ_OK) unlink(dst_cfg);
    free(dst);
    free(dst_cfg);
    free(src_dir);
    free(src_cfg);
    return s;
}

/* ---- driver ---- */

oz_status oz_prepare(const oz_prepare_opts *opts, oz_prepare_report *report, oz_err *err) {
    oz_prepare_opts o = *opts;
    oz_tokenizer byte_tok;
    oz_tokenizer_byte(&byte_tok);
    const oz_tokenizer *tok = o.tokenizer ? o.tokenizer : &byte_tok;
    if (!o.val_block_tokens) o.val_block_tokens = DEFAULT_BLOCK;
    if (!o.val_min_tokens) o.val_min_tokens = DEFAULT_MIN_VAL;
    if (o.n_inputs <= 0 || !o.inputs) return oz_fail(err, OZ_ERR_INPUT, "prepare: no inputs given");
    if (!o.out_dir || !*o.out_dir) return oz_fail(err, OZ_ERR_INPUT, "prepare: no output directory given");
    if (tok->eos_id < 0)
        return oz_fail(err, OZ_ERR_INPUT,
                       "prepare: tokenizer %s has no end-of-sequence token to end documents with (name one as "
                       "eos_token in tokenizer_config.json)",
                       oz_tokenizer_source(tok) ? oz_tokenizer_source(tok) : oz_tokenizer_name(tok));
    if (!(o.val_fraction >= 0.0 && o.val_fraction <= 0.5))
        return oz_fail(err, OZ_ERR_INPUT, "prepare: val_fraction %g is outside [0, 0.5]", o.val_fraction);

    oz_prepare_report r;
    memset(&r, 0, sizeof r);
    file_list files = {0};
    source_stats *src = calloc((size_t)o.n_inputs, sizeof *src);
    encoder e = {0};
    uint64_t *hist = NULL;
    void *map = MAP_FAILED;
    size_t map_len = 0;
    int tmp_fd = -1;
    char *tmp_path = NULL, *train_path = NULL, *val_path = NULL;
    /* A writer's f is non-NULL exactly while it holds a temp file that cleanup must remove. */
    oz_shard_writer train_w = {0}, val_w = {0};
    oz_status s = src ? OZ_OK : oz_fail(err, OZ_ERR_NOMEM, "out of memory");

    if (s == OZ_OK) s = collect(&o, &files, &r.skipped_files, err);
    if (s == OZ_OK) s = oz_mkdir_p(o.out_dir, err);
    if (s == OZ_OK) {
        tmp_path = oz_path_join(o.out_dir, ".prepare.tmp.XXXXXX");
        if (!tmp_path) s = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    }
    if (s == OZ_OK) {
        /* Unlinked at once: the stream lives only as long as our descriptor, even after a crash. */
        tmp_fd = mkstemp(tmp_path);
        if (tmp_fd < 0) s = oz_fail(err, OZ_ERR_INPUT, "cannot write in output directory %s: %s", o.out_dir, strerror(errno));
        else unlink(tmp_path);
    }
    if (s == OZ_OK) {
        e.tok = tok;
        e.width = oz_shard_token_bytes((uint32_t)tok->vocab_size);
        e.stream_desc = o.out_dir;
        e.stream = fdopen(dup(tmp_fd), "wb");
        if (!e.stream) s = oz_fail(err, OZ_ERR_IO, "cannot open a temporary file in %s: %s", o.out_dir, strerror(errno));
        else setvbuf(e.stream, NULL, _IOFBF, (size_t)1 << 20);
    }
    for (size_t i = 0; s == OZ_OK && i < files.n; i++) {
        const file_ent *f = &files.v[i];
        if (f->dup) {
            r.skipped_files++;
            continue;
        }
        uint64_t tokens_before = e.n_tokens;
        int used;
        s = emit_file(&e, f, &used, &src[f->input].documents, err);
        if (s == OZ_OK && used) {
            r.files++;
            src[f->input].files++;
            src[f->input].tokens += e.n_tokens - tokens_before;
        } else if (s == OZ_OK) {
            r.skipped_files++;
        }
    }
    if (e.stream) {
        if (fclose(e.stream) != 0 && s == OZ_OK)
            s = oz_fail(err, OZ_ERR_IO, "cannot write a temporary file in %s: %s", o.out_dir, strerror(errno));
        e.stream = NULL;
    }
    uint64_t N = e.n_tokens;
    if (s == OZ_OK && N == 0)
        s = oz_fail(err, OZ_ERR_INPUT, "prepare: empty corpus: no text found in the inputs (%llu files read, %llu skipped)",
                    (unsigned long long)r.files, (unsigned long long)r.skipped_files);
    if (s == OZ_OK) {
        map_len = (size_t)(N * e.width);
        map = mmap(NULL, map_len, PROT_READ, MAP_SHARED, tmp_fd, 0);
        if (map == MAP_FAILED) s = oz_fail(err, OZ_ERR_IO, "cannot map the temporary token stream: %s", strerror(errno));
        else madvise(map, map_len, MADV_SEQUENTIAL);
    }
    if (s == OZ_OK) {
        hist = calloc((size_t)tok->vocab_size, sizeof *hist);
        train_path = oz_path_join(o.out_dir, "train.bin");
        val_path = oz_path_join(o.out_dir, "val.bin");
        if (!hist || !train_path || !val_path) s = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    }
    if (s == OZ_OK) s = oz_shard_writer_open(&train_w, train_path, (uint32_t)tok->vocab_size, err);
    if (s == OZ_OK) s = oz_shard_writer_open(&val_w, val_path, (uint32_t)tok->vocab_size, err);
    if (s == OZ_OK) {
        splitter sp = {map, e.width, (uint32_t)tok->vocab_size, &train_w, &val_w, hist};
        uint64_t B = o.val_block_tokens;
        uint64_t num = (uint64_t)llround(o.val_fraction * (double)FRAC_DEN);
        uint64_t n_blocks = (N + B - 1) / B, val_count = 0;
        for (uint64_t i = 0; num && i < n_blocks; i++)
            if (block_is_val(i, num)) val_count += (i + 1) * B < N ? B : N - i * B;
        if (num == 0 || val_count >= o.val_min_tokens) {
            for (uint64_t i = 0; s == OZ_OK && i < n_blocks; i++)
                s = emit_range(&sp, i * B, (i + 1) * B < N ? (i + 1) * B : N, num && block_is_val(i, num), err);
        } else {
            /* Too small for whole blocks: hold out the tail instead, large enough for one window
             * whenever train can keep one too. */
            uint64_t v = (uint64_t)llround(o.val_fraction * (double)N);
            if (N >= 2 * o.val_min_tokens && v < o.val_min_tokens) v = o.val_min_tokens;
            if (v > N / 2) v = N / 2;
            s = emit_range(&sp, 0, N - v, 0, err);
            if (s == OZ_OK) s = emit_range(&sp, N - v, N, 1, err);
        }
    }
    if (s == OZ_OK) {
        r.train_tokens = train_w.n_tokens;
        r.val_tokens = val_w.n_tokens;
        r.documents = e.documents;
        r.text_bytes = e.text_bytes;
        r.unigram_entropy_nats = entropy_nats(hist, (uint32_t)tok->vocab_size);
        s = oz_shard_writer_finish(&train_w, err);
    }
    if (s == OZ_OK) {
        s = oz_shard_writer_finish(&val_w, err);
    }
    if (s == OZ_OK) s = copy_tokenizer(tok, o.out_dir, err);
    if (s == OZ_OK) s = write_meta(&o, tok, src, &r, err);
    if (train_w.f) oz_shard_writer_abort(&train_w);
    if (val_w.f) oz_shard_writer_abort(&val_w);
    if (map != MAP_FAILED) munmap(map, map_len);
    if (tmp_fd >= 0) close(tmp_fd);
    free(tmp_path);
    free(train_path);
    free(val_path);
    free(hist);
    free(src);
    free(e.bytes);
    oz_tokens_free(&e.ids);
    files_free(&files);
    if (s == OZ_OK && report) *report = r;
    return s;
}
