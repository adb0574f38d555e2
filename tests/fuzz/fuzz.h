/* Shared helpers of the libFuzzer targets (tests/fuzz/fuzz_*.c, built by `make fuzz`).
 *
 * Most of ounce's readers take paths, so a target writes its input to files in a scratch directory
 * of its own (under $OZ_FUZZ_TMP, which tests/fuzz/run.sh sets and removes, else /dev/shm or /tmp)
 * and calls the library on them. Targets that read several files take one input holding them all,
 * cut at OZ_FUZZ_SEP ("\n--8<--\n", in every target's dictionary): part 0, part 1, ...
 *
 * A property that does not hold is reported with OZ_FUZZ_CHECK, which prints the condition and
 * aborts, so libFuzzer saves the input like any crash. Targets may keep static state (the scratch
 * directory, tokenizers loaded once): they are test programs, not the library. */
#ifndef OZ_FUZZ_H
#define OZ_FUZZ_H
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define OZ_FUZZ_SEP "\n--8<--\n"
#define OZ_FUZZ_MAX_PARTS 8

#define OZ_FUZZ_CHECK(cond, ...)                                                               \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "fuzz check failed at %s:%d: %s: ", __FILE__, __LINE__, #cond);   \
            fprintf(stderr, __VA_ARGS__);                                                      \
            fprintf(stderr, "\n");                                                             \
            abort();                                                                           \
        }                                                                                      \
    } while (0)

/* With OZ_FUZZ_DEBUG set, a target says why an input was refused (to check that seeds are valid):
 *     OZ_FUZZ_DEBUG=1 build-fuzz/fuzz_config tests/fuzz/corpus/config/NAME */
static inline void oz_fuzz_note(const char *what, const char *msg) {
    static int on = -1;
    if (on < 0) on = getenv("OZ_FUZZ_DEBUG") != NULL;
    if (on) fprintf(stderr, "fuzz: %s refused: %s\n", what, msg);
}

typedef struct {
    const uint8_t *p;
    size_t n;
} oz_fuzz_part;

/* Cuts data at OZ_FUZZ_SEP into at most max parts (the last one keeps any further separators).
 * Returns the number of parts, at least 1 (an input without a separator is one part). */
static inline int oz_fuzz_split(const uint8_t *data, size_t size, oz_fuzz_part *parts, int max) {
    const size_t sl = sizeof OZ_FUZZ_SEP - 1;
    int k = 0;
    size_t start = 0;
    for (size_t i = 0; k < max - 1 && i + sl <= size; i++) {
        if (memcmp(data + i, OZ_FUZZ_SEP, sl) != 0) continue;
        parts[k++] = (oz_fuzz_part){data + start, i - start};
        start = i + sl;
        i = start - 1;
    }
    parts[k++] = (oz_fuzz_part){data + start, size - start};
    return k;
}

/* The target's scratch directory, created on first use and removed (with the files the target
 * wrote there) at exit. */
static char oz_fuzz_dir_path[512];
static const char *const *oz_fuzz_dir_names;

static void oz_fuzz_dir_cleanup(void) {
    if (!oz_fuzz_dir_path[0]) return;
    char path[1024];
    for (const char *const *n = oz_fuzz_dir_names; n && *n; n++) {
        snprintf(path, sizeof path, "%s/%s", oz_fuzz_dir_path, *n);
        unlink(path);
    }
    rmdir(oz_fuzz_dir_path);
}

/* names: every file name the target may write (NULL-terminated, static), removed at exit. */
static inline const char *oz_fuzz_dir(const char *const *names) {
    if (oz_fuzz_dir_path[0]) return oz_fuzz_dir_path;
    const char *base = getenv("OZ_FUZZ_TMP");
    struct stat st;
    if (!base || !*base) base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp";
    snprintf(oz_fuzz_dir_path, sizeof oz_fuzz_dir_path, "%s/ounce-fuzz-XXXXXX", base);
    if (!mkdtemp(oz_fuzz_dir_path)) {
        fprintf(stderr, "fuzz: cannot create a scratch directory under %s: %s\n", base, strerror(errno));
        abort();
    }
    oz_fuzz_dir_names = names;
    atexit(oz_fuzz_dir_cleanup);
    return oz_fuzz_dir_path;
}

/* DIR/name as a path (in a static buffer per slot 0..3). */
static inline const char *oz_fuzz_path(const char *name, int slot) {
    static char buf[4][1024];
    snprintf(buf[slot & 3], sizeof buf[0], "%s/%s", oz_fuzz_dir_path, name);
    return buf[slot & 3];
}

/* Writes bytes to DIR/name (replacing it); returns its path. Aborts on a failed write: that is the
 * machine, not the input. */
static inline const char *oz_fuzz_write(const char *name, const void *p, size_t n, int slot) {
    const char *path = oz_fuzz_path(name, slot);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "fuzz: cannot write %s: %s\n", path, strerror(errno));
        abort();
    }
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w <= 0) {
            fprintf(stderr, "fuzz: cannot write %s: %s\n", path, strerror(errno));
            abort();
        }
        c += w;
        n -= (size_t)w;
    }
    close(fd);
    return path;
}

static inline void oz_fuzz_remove(const char *name) { unlink(oz_fuzz_path(name, 3)); }

/* A NUL-terminated copy of a part (free it). */
static inline char *oz_fuzz_strdup(const oz_fuzz_part *p) {
    char *s = malloc(p->n + 1);
    if (!s) abort();
    if (p->n) memcpy(s, p->p, p->n);
    s[p->n] = '\0';
    return s;
}

#endif
