/* TensorBoard event files (see tfevents.h): CRC-32C, a hand-written protobuf encoder and decoder
 * for the few Event fields ounce uses, and the writer. */
#include "io/tfevents.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "io/atomic.h"

/* ------------------------------------------------------------------ CRC-32C */

/* Bitwise, no table: a table would be global state (or 1 KiB rebuilt per call), and event files
 * are a few hundred bytes a step. */
uint32_t oz_crc32c(const void *data, size_t n) {
    const uint8_t *p = data;
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return ~crc;
}

uint32_t oz_crc32c_masked(const void *data, size_t n) {
    uint32_t crc = oz_crc32c(data, n);
    return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

/* ------------------------------------------------------------------ protobuf encoding */

typedef struct {
    uint8_t *p;
    size_t n, cap;
    int overflow;
} pb;

static void put(pb *b, const void *src, size_t n) {
    if (b->overflow || n > b->cap - b->n) {
        b->overflow = 1;
        return;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void put_varint(pb *b, uint64_t v) {
    uint8_t tmp[10];
    size_t k = 0;
    do {
        tmp[k] = (uint8_t)(v & 0x7F);
        v >>= 7;
        if (v) tmp[k] |= 0x80;
        k++;
    } while (v);
    put(b, tmp, k);
}

static void put_le(pb *b, uint64_t v, int bytes) {
    uint8_t tmp[8];
    for (int i = 0; i < bytes; i++) tmp[i] = (uint8_t)(v >> (8 * i));
    put(b, tmp, (size_t)bytes);
}

static size_t varint_len(uint64_t v) {
    size_t k = 1;
    while (v >= 0x80) v >>= 7, k++;
    return k;
}

/* Summary.Value {tag = 1, simple_value = 2}: its encoded length. */
static size_t value_len(const oz_tf_scalar *s) {
    size_t t = strlen(s->tag);
    return 1 + varint_len(t) + t + 1 + 4;
}

size_t oz_tf_event_encode(uint8_t *buf, size_t cap, double wall_time, int64_t step, const char *version,
                          const oz_tf_scalar *scalars, int n) {
    pb b = {buf, 0, cap, 0};
    uint64_t bits;
    memcpy(&bits, &wall_time, sizeof bits);
    put_varint(&b, (1 << 3) | 1); /* wall_time: fixed64 */
    put_le(&b, bits, 8);
    if (step != 0) { /* proto3 leaves a zero step out, as TensorFlow's writer does */
        put_varint(&b, (2 << 3) | 0);
        put_varint(&b, (uint64_t)step);
    }
    if (version) {
        size_t len = strlen(version);
        put_varint(&b, (3 << 3) | 2);
        put_varint(&b, len);
        put(&b, version, len);
    } else {
        size_t summary = 0;
        for (int i = 0; i < n; i++) summary += 1 + varint_len(value_len(&scalars[i])) + value_len(&scalars[i]);
        put_varint(&b, (5 << 3) | 2);
        put_varint(&b, summary);
        for (int i = 0; i < n; i++) {
            size_t t = strlen(scalars[i].tag);
            put_varint(&b, (1 << 3) | 2); /* Summary.value */
            put_varint(&b, value_len(&scalars[i]));
            put_varint(&b, (1 << 3) | 2); /* Value.tag */
            put_varint(&b, t);
            put(&b, scalars[i].tag, t);
            uint32_t fb;
            memcpy(&fb, &scalars[i].value, sizeof fb);
            put_varint(&b, (2 << 3) | 5); /* Value.simple_value: fixed32 */
            put_le(&b, fb, 4);
        }
    }
    return b.overflow ? 0 : b.n;
}

size_t oz_tf_record_frame(uint8_t *out, size_t cap, const uint8_t *data, size_t n) {
    if (cap < n + 16) return 0;
    for (int i = 0; i < 8; i++) out[i] = (uint8_t)((uint64_t)n >> (8 * i));
    uint32_t c = oz_crc32c_masked(out, 8);
    for (int i = 0; i < 4; i++) out[8 + i] = (uint8_t)(c >> (8 * i));
    memcpy(out + 12, data, n);
    c = oz_crc32c_masked(data, n);
    for (int i = 0; i < 4; i++) out[12 + n + i] = (uint8_t)(c >> (8 * i));
    return n + 16;
}

/* ------------------------------------------------------------------ decoding */

static uint64_t get_le(const uint8_t *p, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

oz_status oz_tf_record_read(const uint8_t *buf, size_t n, const uint8_t **data, size_t *data_len,
                            size_t *record_len, oz_err *err) {
    if (n < 12) return oz_fail(err, OZ_ERR_INPUT, "event record: %zu bytes, shorter than its header", n);
    uint64_t len = get_le(buf, 8);
    if ((uint32_t)get_le(buf + 8, 4) != oz_crc32c_masked(buf, 8))
        return oz_fail(err, OZ_ERR_INPUT, "event record: the length's CRC does not match");
    if (len > n - 12 || n - 12 - len < 4)
        return oz_fail(err, OZ_ERR_INPUT, "event record: %llu bytes of data but %zu left", (unsigned long long)len, n - 12);
    if ((uint32_t)get_le(buf + 12 + len, 4) != oz_crc32c_masked(buf + 12, (size_t)len))
        return oz_fail(err, OZ_ERR_INPUT, "event record: the data's CRC does not match");
    *data = buf + 12;
    *data_len = (size_t)len;
    *record_len = (size_t)len + 16;
    return OZ_OK;
}

typedef struct {
    const uint8_t *p, *end;
} rd;

static int get_varint(rd *r, uint64_t *v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end) return 0;
        uint8_t c = *r->p++;
        *v |= (uint64_t)(c & 0x7F) << shift;
        if (!(c & 0x80)) return 1;
    }
    return 0;
}

/* Skips one field of wire type wt; 0 on malformed bytes. */
static int skip(rd *r, unsigned wt) {
    uint64_t v;
    switch (wt) {
    case 0: return get_varint(r, &v);
    case 1: if (r->end - r->p < 8) return 0; r->p += 8; return 1;
    case 5: if (r->end - r->p < 4) return 0; r->p += 4; return 1;
    case 2:
        if (!get_varint(r, &v) || v > (uint64_t)(r->end - r->p)) return 0;
        r->p += v;
        return 1;
    default: return 0;
    }
}

/* A length-delimited field's body. */
static int sub(rd *r, rd *out) {
    uint64_t len;
    if (!get_varint(r, &len) || len > (uint64_t)(r->end - r->p)) return 0;
    out->p = r->p;
    out->end = r->p + len;
    r->p += len;
    return 1;
}

static int decode_value(rd *r, oz_tf_event *ev) {
    const char *tag = NULL;
    size_t tag_len = 0;
    float value = 0;
    while (r->p < r->end) {
        uint64_t key;
        if (!get_varint(r, &key)) return 0;
        if (key == ((1 << 3) | 2)) {
            rd s;
            if (!sub(r, &s)) return 0;
            tag = (const char *)s.p;
            tag_len = (size_t)(s.end - s.p);
        } else if (key == ((2 << 3) | 5)) {
            if (r->end - r->p < 4) return 0;
            uint32_t bits = (uint32_t)get_le(r->p, 4);
            memcpy(&value, &bits, sizeof value);
            r->p += 4;
        } else if (!skip(r, (unsigned)(key & 7))) return 0;
    }
    if (tag && ev->n < OZ_TF_MAX_VALUES) {
        ev->values[ev->n].tag = tag;
        ev->values[ev->n].tag_len = tag_len;
        ev->values[ev->n].value = value;
        ev->n++;
    }
    return 1;
}

oz_status oz_tf_event_decode(const uint8_t *data, size_t n, oz_tf_event *ev, oz_err *err) {
    memset(ev, 0, sizeof *ev);
    rd r = {data, data + n};
    while (r.p < r.end) {
        uint64_t key;
        if (!get_varint(&r, &key)) goto bad;
        if (key == ((1 << 3) | 1)) {
            if (r.end - r.p < 8) goto bad;
            uint64_t bits = get_le(r.p, 8);
            memcpy(&ev->wall_time, &bits, sizeof bits);
            r.p += 8;
        } else if (key == ((2 << 3) | 0)) {
            uint64_t v;
            if (!get_varint(&r, &v)) goto bad;
            ev->step = (int64_t)v;
        } else if (key == ((3 << 3) | 2)) {
            rd s;
            if (!sub(&r, &s)) goto bad;
            ev->has_version = 1;
        } else if (key == ((5 << 3) | 2)) {
            rd s;
            if (!sub(&r, &s)) goto bad;
            while (s.p < s.end) {
                uint64_t k2;
                if (!get_varint(&s, &k2)) goto bad;
                if (k2 == ((1 << 3) | 2)) {
                    rd v;
                    if (!sub(&s, &v) || !decode_value(&v, ev)) goto bad;
                } else if (!skip(&s, (unsigned)(k2 & 7))) goto bad;
            }
        } else if (!skip(&r, (unsigned)(key & 7))) goto bad;
    }
    return OZ_OK;
bad:
    return oz_fail(err, OZ_ERR_INPUT, "event record: malformed Event protobuf");
}

/* ------------------------------------------------------------------ the writer */

static oz_status write_event(oz_tfevents *w, const uint8_t *data, size_t n, oz_err *err) {
    uint8_t stack[4096];
    uint8_t *rec = n + 16 <= sizeof stack ? stack : malloc(n + 16);
    if (!rec) return oz_fail(err, OZ_ERR_NOMEM, "out of memory writing %s", w->path);
    size_t len = oz_tf_record_frame(rec, n + 16, data, n);
    int ok = fwrite(rec, 1, len, w->f) == len && fflush(w->f) == 0;
    if (rec != stack) free(rec);
    if (!ok) return oz_fail(err, OZ_ERR_IO, "cannot write %s: %s", w->path, strerror(errno));
    return OZ_OK;
}

static double wall_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

oz_status oz_tfevents_open(oz_tfevents *w, const char *dir, oz_err *err) {
    memset(w, 0, sizeof *w);
    char host[256] = "localhost";
    if (gethostname(host, sizeof host - 1) != 0 || !host[0]) snprintf(host, sizeof host, "localhost");
    host[sizeof host - 1] = '\0';
    snprintf(w->path, sizeof w->path, "%s/events.out.tfevents.%lld.%s", dir, (long long)time(NULL), host);
    w->f = fopen(w->path, "ab");
    if (!w->f) return oz_fail(err, OZ_ERR_IO, "cannot write %s: %s", w->path, strerror(errno));
    if (ftell(w->f) > 0) return OZ_OK; /* this second's file of a run resumed at once: continue it */
    uint8_t buf[64];
    size_t n = oz_tf_event_encode(buf, sizeof buf, wall_now(), 0, "brain.Event:2", NULL, 0);
    oz_status st = write_event(w, buf, n, err);
    if (st != OZ_OK) oz_tfevents_close(w);
    return st;
}

oz_status oz_tfevents_scalars(oz_tfevents *w, int64_t step, const oz_tf_scalar *scalars, int n, oz_err *err) {
    size_t cap = 32;
    for (int i = 0; i < n; i++) cap += 8 + value_len(&scalars[i]);
    uint8_t stack[4096];
    uint8_t *buf = cap <= sizeof stack ? stack : malloc(cap);
    if (!buf) return oz_fail(err, OZ_ERR_NOMEM, "out of memory writing %s", w->path);
    size_t len = oz_tf_event_encode(buf, cap, wall_now(), step, NULL, scalars, n);
    oz_status st = len ? write_event(w, buf, len, err) : oz_fail(err, OZ_ERR_INTERNAL, "event larger than its bound");
    if (buf != stack) free(buf);
    return st;
}

void oz_tfevents_close(oz_tfevents *w) {
    if (w->f) fclose(w->f);
    w->f = NULL;
}

/* ------------------------------------------------------------------ resume */

static oz_status cut_file(const char *path, int64_t step, oz_err *err) {
    char *text;
    size_t n;
    OZ_TRY(oz_read_file(path, &text, &n, err));
    const uint8_t *buf = (const uint8_t *)text;
    size_t at = 0, keep = 0;
    while (at < n) {
        const uint8_t *data;
        size_t dlen, rlen;
        oz_err ignored = {0};
        oz_tf_event ev;
        if (oz_tf_record_read(buf + at, n - at, &data, &dlen, &rlen, &ignored) != OZ_OK) break;
        if (oz_tf_event_decode(data, dlen, &ev, &ignored) != OZ_OK) break;
        at += rlen;
        if (ev.step <= step) keep = at;
    }
    free(text);
    if (keep == n) return OZ_OK;
    /* Shrinking a file is one metadata change: a crash leaves it cut or not, never torn. */
    if (truncate(path, (off_t)keep) != 0)
        return oz_fail(err, OZ_ERR_IO, "cannot cut %s back to step %lld: %s", path, (long long)step, strerror(errno));
    return OZ_OK;
}

oz_status oz_tfevents_cut(const char *dir, int64_t step, oz_err *err) {
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? OZ_OK : oz_fail(err, OZ_ERR_IO, "cannot list %s: %s", dir, strerror(errno));
    oz_status st = OZ_OK;
    struct dirent *e;
    while (st == OZ_OK && (e = readdir(d))) {
        if (strncmp(e->d_name, "events.out.tfevents.", 20) != 0) continue;
        char *path = oz_path_join(dir, e->d_name);
        if (!path) {
            st = oz_fail(err, OZ_ERR_NOMEM, "out of memory listing %s", dir);
            break;
        }
        struct stat sb;
        if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) st = cut_file(path, step, err);
        free(path);
    }
    closedir(d);
    return st;
}
