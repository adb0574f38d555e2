/* TensorBoard event files (io/tfevents): CRC-32C against known vectors, the bytes of a few events
 * against tests/fixtures/tfevents/events.out.tfevents.fixture (written by this program with
 * --write-fixture and read back by TensorBoard's own reader into expected.json by
 * tools/gen_tfevents_fixture.py), our reader against that JSON, corrupt records refused, and the
 * resume cut leaving each step once. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "io/atomic.h"
#include "io/tfevents.h"

#define FIXTURE_DIR "tests/fixtures/tfevents"
#define FIXTURE FIXTURE_DIR "/events.out.tfevents.fixture"

static void test_crc_vectors(void) {
    CHECK(oz_crc32c("123456789", 9) == 0xE3069283u, "crc32c(123456789) = %08x", oz_crc32c("123456789", 9));
    CHECK(oz_crc32c("", 0) == 0x00000000u, "crc32c('') = %08x", oz_crc32c("", 0));
    uint8_t zeros[32] = {0}, ones[32], inc[32];
    memset(ones, 0xFF, sizeof ones);
    for (int i = 0; i < 32; i++) inc[i] = (uint8_t)i;
    /* RFC 3720 (iSCSI) B.4 */
    CHECK(oz_crc32c(zeros, 32) == 0x8A9136AAu, "32 zeros: %08x", oz_crc32c(zeros, 32));
    CHECK(oz_crc32c(ones, 32) == 0x62A8AB43u, "32 0xFF: %08x", oz_crc32c(ones, 32));
    CHECK(oz_crc32c(inc, 32) == 0x46DD794Eu, "0..31: %08x", oz_crc32c(inc, 32));
    uint32_t c = oz_crc32c("123456789", 9);
    CHECK(oz_crc32c_masked("123456789", 9) == ((c >> 15) | (c << 17)) + 0xa282ead8u, "masked");
}

/* The fixture's events: varints of 1, 2, 3 and 10 bytes' worth, a tag longer than 127 bytes (a
 * two-byte length), negative, tiny and huge values. */
#define N_EVENTS 5
static const int64_t steps[N_EVENTS] = {1, 2, 300, 1000000, 1099511627776LL};
static const char long_tag[] = "a/tag/longer/than/one/hundred/and/twenty/seven/bytes/so/that/its/length/needs/"
                               "a/two/byte/varint/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

static int event_scalars(int e, oz_tf_scalar *s) {
    int n = 0;
    s[n++] = (oz_tf_scalar){"train/loss", 5.5f - 0.5f * (float)e};
    s[n++] = (oz_tf_scalar){"train/lr", 1e-3f * (float)(e + 1)};
    if (e % 2 == 0) s[n++] = (oz_tf_scalar){"val/loss", -2.25f};
    if (e == 3) s[n++] = (oz_tf_scalar){"memory/peak_mib/weights", 1.5e30f};
    if (e == 4) s[n++] = (oz_tf_scalar){long_tag, 1e-20f};
    return n;
}

static double event_wall(int e) { return 1733280000.25 + 1.5 * e; }

/* The fixture's bytes, built from the encoder and framer. Returns a malloc'd buffer. */
static uint8_t *build_fixture(size_t *len) {
    size_t cap = 8192, n = 0;
    uint8_t *out = malloc(cap), ev[1024];
    if (!out) return NULL;
    size_t k = oz_tf_event_encode(ev, sizeof ev, 1733280000.0, 0, "brain.Event:2", NULL, 0);
    n += oz_tf_record_frame(out + n, cap - n, ev, k);
    for (int e = 0; e < N_EVENTS; e++) {
        oz_tf_scalar s[8];
        int m = event_scalars(e, s);
        k = oz_tf_event_encode(ev, sizeof ev, event_wall(e), steps[e], NULL, s, m);
        n += oz_tf_record_frame(out + n, cap - n, ev, k);
    }
    *len = n;
    return out;
}

static void test_encode_small_things(void) {
    uint8_t buf[64];
    /* wall_time 0, step 1, one value "a" = 1.0f: every byte by hand */
    oz_tf_scalar s = {"a", 1.0f};
    size_t n = oz_tf_event_encode(buf, sizeof buf, 0.0, 1, NULL, &s, 1);
    static const uint8_t want[] = {0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0x01, 0x2a, 0x0a, 0x0a, 0x08, 0x0a, 0x01, 'a',
                                   0x15, 0x00, 0x00, 0x80, 0x3f};
    CHECK(n == sizeof want && memcmp(buf, want, n) == 0, "event bytes (%zu)", n);
    n = oz_tf_event_encode(buf, sizeof buf, 0.0, 300, NULL, &s, 1);
    CHECK(n > 11 && buf[9] == 0x10 && buf[10] == 0xAC && buf[11] == 0x02, "step 300 as varint ac 02");
    CHECK(oz_tf_event_encode(buf, 10, 0.0, 1, NULL, &s, 1) == 0, "too small a buffer is refused");
    uint8_t rec[64];
    CHECK(oz_tf_record_frame(rec, 10, buf, 1) == 0, "frame: too small");
}

static void test_fixture_bytes(void) {
    size_t n = 0;
    uint8_t *mine = build_fixture(&n);
    char *theirs = NULL;
    size_t tn = 0;
    oz_err err = {0};
    CHECK(mine != NULL, "alloc");
    if (oz_read_file(FIXTURE, &theirs, &tn, &err) != OZ_OK) {
        CHECK(0, "%s", err.msg);
        free(mine);
        return;
    }
    CHECK(n == tn && memcmp(mine, theirs, n) == 0, "our bytes equal the committed fixture (%zu vs %zu bytes)", n, tn);
    free(mine);
    free(theirs);
}

/* Our reader against what TensorBoard's reader made of the fixture. */
static void test_reader_against_json(void) {
    char *bytes = NULL, *json = NULL;
    size_t n = 0, jn = 0;
    oz_err err = {0};
    if (oz_read_file(FIXTURE, &bytes, &n, &err) != OZ_OK || oz_read_file(FIXTURE_DIR "/expected.json", &json, &jn, &err) != OZ_OK) {
        CHECK(0, "%s", err.msg);
        free(bytes);
        return;
    }
    cJSON *root = cJSON_Parse(json);
    cJSON *events = cJSON_GetObjectItemCaseSensitive(root, "events");
    CHECK(cJSON_IsArray(events), "expected.json has events");
    int idx = 0, matched = 0, total = cJSON_GetArraySize(events);
    size_t at = 0;
    const uint8_t *buf = (const uint8_t *)bytes;
    while (at < n) {
        const uint8_t *data;
        size_t dlen, rlen;
        oz_tf_event ev;
        if (oz_tf_record_read(buf + at, n - at, &data, &dlen, &rlen, &err) != OZ_OK ||
            oz_tf_event_decode(data, dlen, &ev, &err) != OZ_OK) {
            CHECK(0, "record at %zu: %s", at, err.msg);
            break;
        }
        at += rlen;
        cJSON *je = cJSON_GetArrayItem(events, idx++);
        if (!je) {
            CHECK(0, "more records than TensorBoard read");
            break;
        }
        double jstep = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(je, "step"));
        double jwall = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(je, "wall_time"));
        CHECK((double)ev.step == jstep, "step %lld vs %.0f", (long long)ev.step, jstep);
        CHECK(ev.wall_time == jwall, "wall_time %.17g vs %.17g", ev.wall_time, jwall);
        cJSON *ver = cJSON_GetObjectItemCaseSensitive(je, "file_version");
        CHECK(ev.has_version == (ver != NULL), "file_version presence");
        cJSON *vals = cJSON_GetObjectItemCaseSensitive(je, "values");
        CHECK(cJSON_GetArraySize(vals) == ev.n, "values: %d vs %d", ev.n, cJSON_GetArraySize(vals));
        for (int i = 0; i < ev.n && i < cJSON_GetArraySize(vals); i++) {
            cJSON *v = cJSON_GetArrayItem(vals, i);
            const char *tag = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(v, "tag"));
            double value = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(v, "value"));
            int ok = tag && strlen(tag) == ev.values[i].tag_len && memcmp(tag, ev.values[i].tag, ev.values[i].tag_len) == 0 &&
                     (float)value == ev.values[i].value;
            CHECK(ok, "value %d of step %lld: %.*s = %g vs %s = %g", i, (long long)ev.step, (int)ev.values[i].tag_len,
                  ev.values[i].tag, (double)ev.values[i].value, tag ? tag : "?", value);
            matched += ok;
        }
    }
    CHECK(idx == total, "records: %d, TensorBoard read %d", idx, total);
    CHECK(matched >= 2 * N_EVENTS, "values matched: %d", matched);
    cJSON_Delete(root);
    free(json);
    free(bytes);
}

/* A flipped bit in the length, its CRC, the data or the data's CRC is refused. */
static void test_corrupt_refused(void) {
    size_t n = 0;
    uint8_t *rec = build_fixture(&n);
    if (!rec) return;
    const uint8_t *data;
    size_t dlen, rlen;
    oz_err err = {0};
    CHECK(oz_tf_record_read(rec, n, &data, &dlen, &rlen, &err) == OZ_OK, "first record reads");
    size_t positions[] = {0, 9, 14, rlen - 2};
    for (size_t i = 0; i < sizeof positions / sizeof positions[0]; i++) {
        rec[positions[i]] ^= 0x04;
        oz_err e2 = {0};
        CHECK(oz_tf_record_read(rec, n, &data, &dlen, &rlen, &e2) != OZ_OK, "flip at byte %zu refused", positions[i]);
        rec[positions[i]] ^= 0x04;
    }
    CHECK(oz_tf_record_read(rec, 11, &data, &dlen, &rlen, &err) != OZ_OK, "short header refused");
    free(rec);
    uint8_t bad[] = {0x10, 0xFF, 0xFF}; /* a varint that never ends */
    oz_tf_event ev;
    CHECK(oz_tf_event_decode(bad, sizeof bad, &ev, &err) != OZ_OK, "truncated varint refused");
}

/* Steps of every event file in dir, counted per step (steps 1..100). */
static void count_steps(const char *dir, int *counts) {
    memset(counts, 0, 101 * sizeof *counts);
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (strncmp(e->d_name, "events.out.tfevents.", 20) != 0) continue;
        char *path = oz_path_join(dir, e->d_name), *text;
        size_t n, at = 0;
        oz_err err = {0};
        if (path && oz_read_file(path, &text, &n, &err) == OZ_OK) {
            const uint8_t *data;
            size_t dlen, rlen;
            oz_tf_event ev;
            while (at < n && oz_tf_record_read((uint8_t *)text + at, n - at, &data, &dlen, &rlen, &err) == OZ_OK &&
                   oz_tf_event_decode(data, dlen, &ev, &err) == OZ_OK) {
                at += rlen;
                if (ev.step >= 1 && ev.step <= 100) counts[ev.step]++;
            }
            free(text);
        }
        free(path);
    }
    if (d) closedir(d);
}

/* A run logs 1..30, is killed, resumes from step 20 and logs 21..40: every step once. */
static void test_resume_cut(void) {
    char dir[] = "/tmp/ounce-tfevents.XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK(0, "mkdtemp");
        return;
    }
    oz_err err = {0};
    oz_tfevents w;
    CHECK(oz_tfevents_open(&w, dir, &err) == OZ_OK, "%s", err.msg);
    for (int s = 1; s <= 30; s++) {
        oz_tf_scalar v = {"train/loss", (float)s};
        CHECK(oz_tfevents_scalars(&w, s, &v, 1, &err) == OZ_OK, "%s", err.msg);
    }
    /* a killed writer's half record */
    fwrite("\x20\x00\x00", 1, 3, w.f);
    oz_tfevents_close(&w);
    char first[sizeof w.path];
    snprintf(first, sizeof first, "%s", w.path);
    CHECK(oz_tfevents_cut(dir, 20, &err) == OZ_OK, "%s", err.msg);
    sleep(1); /* a new second: a new file, as a later resume makes */
    CHECK(oz_tfevents_open(&w, dir, &err) == OZ_OK, "%s", err.msg);
    CHECK(strcmp(first, w.path) != 0, "a new file");
    for (int s = 21; s <= 40; s++) {
        oz_tf_scalar v = {"train/loss", (float)s};
        CHECK(oz_tfevents_scalars(&w, s, &v, 1, &err) == OZ_OK, "%s", err.msg);
    }
    oz_tfevents_close(&w);
    int counts[101], once = 0, more = 0;
    count_steps(dir, counts);
    for (int s = 1; s <= 40; s++) once += counts[s] == 1, more += counts[s] > 1;
    CHECK(once == 40 && more == 0, "steps 1..40 once each: %d once, %d more than once", once, more);
    CHECK(counts[25] == 1, "step 25 once");
    CHECK(oz_tfevents_cut("/nonexistent/dir", 3, &err) == OZ_OK, "a missing directory has nothing to cut");
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "cleanup");
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--write-fixture") == 0) { /* tools/gen_tfevents_fixture.py */
        size_t n;
        uint8_t *b = build_fixture(&n);
        oz_err err = {0};
        if (!b || oz_atomic_write(argv[2], b, n, &err) != OZ_OK) {
            fprintf(stderr, "cannot write %s: %s\n", argv[2], err.msg);
            return 1;
        }
        free(b);
        return 0;
    }
    RUN(test_crc_vectors);
    RUN(test_encode_small_things);
    RUN(test_fixture_bytes);
    RUN(test_reader_against_json);
    RUN(test_corrupt_refused);
    RUN(test_resume_cut);
    return oz_test_finish("test_tfevents");
}
