/* Token shard reader (mmap) and atomic streaming writer. See shard.h for the format. */
#include "data/shard.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

uint32_t oz_shard_token_bytes(uint32_t vocab_size) { return vocab_size <= 65536u ? 2u : 4u; }

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get_u64(const unsigned char *p) { return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32; }
static void put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

oz_status oz_shard_open(oz_shard *s, const char *path, oz_err *err) {
    memset(s, 0, sizeof *s);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return oz_fail(err, (e == ENOENT || e == EACCES || e == ENOTDIR) ? OZ_ERR_INPUT : OZ_ERR_IO,
                       "cannot open token shard %s: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return oz_fail(err, OZ_ERR_IO, "cannot stat token shard %s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return oz_fail(err, OZ_ERR_INPUT, "token shard %s is not a regular file", path);
    }
    uint64_t fsize = (uint64_t)st.st_size;
    if (fsize < OZ_SHARD_HEADER_BYTES) {
        close(fd);
        return oz_fail(err, OZ_ERR_INPUT,
                       "token shard %s is truncated or not a shard: %llu bytes, shorter than the %u-byte header",
                       path, (unsigned long long)fsize, OZ_SHARD_HEADER_BYTES);
    }
    void *map = mmap(NULL, (size_t)fsize, PROT_READ, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file alive */
    if (map == MAP_FAILED) return oz_fail(err, OZ_ERR_IO, "cannot map token shard %s: %s", path, strerror(e));
    const unsigned char *h = map;
    oz_status st_ = OZ_OK;
    uint32_t version = get_u32(h + 8), vocab = get_u32(h + 12), width = get_u32(h + 16);
    uint64_t n = get_u64(h + 24);
    if (memcmp(h, OZ_SHARD_MAGIC, 8) != 0) {
        st_ = oz_fail(err, OZ_ERR_INPUT, "%s is not an ounce token shard (bad magic)", path);
    } else if (version != OZ_SHARD_VERSION) {
        st_ = oz_fail(err, OZ_ERR_INPUT, "token shard %s has unsupported version %u (expected %u)", path,
                      version, OZ_SHARD_VERSION);
    } else if (vocab == 0 || width != oz_shard_token_bytes(vocab)) {
        st_ = oz_fail(err, OZ_ERR_INPUT, "token shard %s is corrupt: vocab_size %u with %u-byte tokens", path,
                      vocab, width);
    } else if (n > (fsize - OZ_SHARD_HEADER_BYTES) / width || OZ_SHARD_HEADER_BYTES + n * width != fsize) {
        st_ = oz_fail(err, OZ_ERR_INPUT,
                      "token shard %s is corrupt or truncated: header says %llu tokens (%llu bytes) but the file has %llu bytes",
                      path, (unsigned long long)n,
                      (unsigned long long)(OZ_SHARD_HEADER_BYTES + (n <= UINT64_MAX / 4 ? n * width : 0)),
                      (unsigned long long)fsize);
    }
    if (st_ == OZ_OK) {
        /* Out-of-range ids would index past the embedding table later; catch them here, once. */
        const unsigned char *t = h + OZ_SHARD_HEADER_BYTES;
        uint64_t bad = UINT64_MAX;
        if (width == 2) {
            for (uint64_t i = 0; i < n; i++)
                if (((uint32_t)t[2 * i] | (uint32_t)t[2 * i + 1] << 8) >= vocab) { bad = i; break; }
        } else {
            for (uint64_t i = 0; i < n; i++)
                if (get_u32(t + 4 * i) >= vocab) { bad = i; break; }
        }
        if (bad != UINT64_MAX) {
            uint32_t v = width == 2 ? ((uint32_t)t[2 * bad] | (uint32_t)t[2 * bad + 1] << 8) : get_u32(t + 4 * bad);
            st_ = oz_fail(err, OZ_ERR_INPUT, "token shard %s is corrupt: token %llu has id %u, outside vocab_size %u",
                          path, (unsigned long long)bad, v, vocab);
        }
    }
    if (st_ == OZ_OK && !(s->path = dup_str(path))) st_ = oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    if (st_ != OZ_OK) {
        munmap(map, (size_t)fsize);
        return st_;
    }
    s->vocab_size = vocab;
    s->token_bytes = width;
    s->n_tokens = n;
    s->map = map;
    s->map_len = (size_t)fsize;
    s->tokens = h + OZ_SHARD_HEADER_BYTES;
    return OZ_OK;
}

void oz_shard_close(oz_shard *s) {
    if (s->map) munmap(s->map, s->map_len);
    free(s->path);
    memset(s, 0, sizeof *s);
}

void oz_shard_read(const oz_shard *s, uint64_t start, size_t n, int32_t *out) {
    const unsigned char *p = s->tokens + start * s->token_bytes;
    if (s->token_bytes == 2) {
        for (size_t i = 0; i < n; i++) out[i] = (int32_t)((uint32_t)p[2 * i] | (uint32_t)p[2 * i + 1] << 8);
    } else {
        for (size_t i = 0; i < n; i++) out[i] = (int32_t)get_u32(p + 4 * i);
    }
}

/* ---- writer ---- */

static void header_bytes(unsigned char h[OZ_SHARD_HEADER_BYTES], uint32_t vocab, uint32_t width, uint64_t n) {
    memset(h, 0, OZ_SHARD_HEADER_BYTES);
    memcpy(h, OZ_SHARD_MAGIC, 8);
    put_u32(h + 8, OZ_SHARD_VERSION);
    put_u32(h + 12, vocab);
    put_u32(h + 16, width);
    put_u32(h + 20, 0);
    put_u64(h + 24, n);
}

static void writer_free(oz_shard_writer *w) {
    free(w->path);
    free(w->tmp_path);
    free(w->buf);
    memset(w, 0, sizeof *w);
}

void oz_shard_writer_abort(oz_shard_writer *w) {
    if (w->f) fclose(w->f);
    if (w->tmp_path) unlink(w->tmp_path);
    writer_free(w);
}

static oz_status writer_io_fail(oz_shard_writer *w, oz_err *err, const char *what) {
    int e = errno;
    oz_fail(err, OZ_ERR_IO, "cannot %s token shard %s: %s", what, w->path ? w->path : "?", strerror(e));
    oz_shard_writer_abort(w);
    return OZ_ERR_IO;
}

oz_status oz_shard_writer_open(oz_shard_writer *w, const char *path, uint32_t vocab_size, oz_err *err) {
    memset(w, 0, sizeof *w);
    if (vocab_size == 0) return oz_fail(err, OZ_ERR_INPUT, "cannot write token shard %s: vocab_size is 0", path);
    size_t n = strlen(path);
    w->path = dup_str(path);
    w->tmp_path = malloc(n + 16);
    if (!w->path || !w->tmp_path) {
        writer_free(w);
        return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
    }
    /* The temp file sits beside the target so the final rename stays on one filesystem. */
    snprintf(w->tmp_path, n + 16, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(w->tmp_path);
    if (fd < 0) {
        int e = errno;
        free(w->tmp_path);
        w->tmp_path = NULL; /* nothing to unlink */
        errno = e;
        return writer_io_fail(w, err, "create");
    }
    fchmod(fd, 0644); /* mkstemp makes 0600; shards are ordinary data files */
    w->f = fdopen(fd, "wb");
    if (!w->f) {
        close(fd);
        return writer_io_fail(w, err, "open");
    }
    w->vocab_size = vocab_size;
    w->token_bytes = oz_shard_token_bytes(vocab_size);
    unsigned char h[OZ_SHARD_HEADER_BYTES];
    header_bytes(h, vocab_size, w->token_bytes, 0); /* n_tokens is patched in by finish */
    if (fwrite(h, 1, sizeof h, w->f) != sizeof h) return writer_io_fail(w, err, "write");
    return OZ_OK;
}

oz_status oz_shard_writer_append_raw(oz_shard_writer *w, const void *data, size_t n, oz_err *err) {
    if (n && fwrite(data, w->token_bytes, n, w->f) != n) return writer_io_fail(w, err, "write");
    w->n_tokens += n;
    return OZ_OK;
}

oz_status oz_shard_writer_append(oz_shard_writer *w, const int32_t *ids, size_t n, oz_err *err) {
    enum { CHUNK = 1 << 16 };
    if (!w->buf) {
        w->buf = malloc((size_t)CHUNK * 4);
        if (!w->buf) {
            oz_shard_writer_abort(w);
            return oz_fail(err, OZ_ERR_NOMEM, "out of memory");
        }
        w->buf_tokens = CHUNK;
    }
    for (size_t off = 0; off < n; off += CHUNK) {
        size_t m = n - off < CHUNK ? n - off : CHUNK;
        for (size_t i = 0; i < m; i++) {
            int32_t id = ids[off + i];
            if (id < 0 || (uint32_t)id >= w->vocab_size) {
                oz_fail(err, OZ_ERR_INPUT, "cannot write token shard %s: id %d outside vocab_size %u", w->path,
                        (int)id, w->vocab_size);
                oz_shard_writer_abort(w);
                return OZ_ERR_INPUT;
            }
            if (w->token_bytes == 2) {
                w->buf[2 * i] = (unsigned char)id;
                w->buf[2 * i + 1] = (unsigned char)(id >> 8);
            } else {
                put_u32(w->buf + 4 * i, (uint32_t)id);
            }
        }
        OZ_TRY(oz_shard_writer_append_raw(w, w->buf, m, err));
    }
    return OZ_OK;
}

static void fsync_parent_dir(const char *path) {
    /* Makes the rename itself durable; failure here is not worth failing the write over. */
    char *copy = dup_str(path);
    if (!copy) return;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(copy);
}

oz_status oz_shard_writer_finish(oz_shard_writer *w, oz_err *err) {
    unsigned char h[OZ_SHARD_HEADER_BYTES];
    header_bytes(h, w->vocab_size, w->token_bytes, w->n_tokens);
    if (fflush(w->f) != 0 || fseek(w->f, 0, SEEK_SET) != 0) return writer_io_fail(w, err, "write");
    if (fwrite(h, 1, sizeof h, w->f) != sizeof h || fflush(w->f) != 0) return writer_io_fail(w, err, "write");
    if (fsync(fileno(w->f)) != 0) return writer_io_fail(w, err, "sync");
    int rc = fclose(w->f);
    w->f = NULL;
    if (rc != 0) return writer_io_fail(w, err, "close");
    if (rename(w->tmp_path, w->path) != 0) return writer_io_fail(w, err, "rename into place");
    fsync_parent_dir(w->path);
    writer_free(w);
    return OZ_OK;
}

oz_status oz_shard_write(const char *path, uint32_t vocab_size, const int32_t *ids, uint64_t n, oz_err *err) {
    oz_shard_writer w;
    OZ_TRY(oz_shard_writer_open(&w, path, vocab_size, err));
    OZ_TRY(oz_shard_writer_append(&w, ids, (size_t)n, err));
    return oz_shard_writer_finish(&w, err);
}
