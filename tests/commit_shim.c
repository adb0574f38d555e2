/* An LD_PRELOAD shim for tests/e2e.sh: logs every fsync (with the file's path), rename and renameat2
 * the process makes to the file named by OZ_COMMIT_LOG, one line each, so the test can check the
 * commit order of every atomic write: the file synced before it is renamed into place, and the
 * directory holding it synced after. It changes nothing the calls do. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void log_line(const char *fmt, const char *a, const char *b) {
    const char *path = getenv("OZ_COMMIT_LOG");
    if (!path) return;
    char line[3 * PATH_MAX];
    int n = snprintf(line, sizeof line, fmt, a, b);
    if (n <= 0 || (size_t)n >= sizeof line) return;
    int saved = errno;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0) {
        ssize_t w = write(fd, line, (size_t)n); /* one write: lines from threads do not interleave */
        (void)w;
        close(fd);
    }
    errno = saved;
}

/* src's absolute path (it exists), dst's as its directory's absolute path + its name. */
static void absolute(const char *p, int exists, char *out) {
    if (exists && realpath(p, out)) return;
    char a[PATH_MAX], b[PATH_MAX], dir[PATH_MAX];
    snprintf(a, sizeof a, "%s", p);
    snprintf(b, sizeof b, "%s", p);
    if (!realpath(dirname(a), dir)) snprintf(dir, sizeof dir, "?");
    snprintf(out, PATH_MAX, "%s/%s", dir, basename(b));
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n > 0) {
        path[n] = '\0';
        log_line("fsync %s%s\n", path, "");
    }
    return real(fd);
}

int rename(const char *from, const char *to) {
    static int (*real)(const char *, const char *);
    if (!real) real = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "rename");
    char a[PATH_MAX], b[PATH_MAX];
    absolute(from, 1, a);
    absolute(to, 0, b);
    int r = real(from, to);
    if (r == 0) log_line("rename %s %s\n", a, b);
    return r;
}

int renameat2(int olddirfd, const char *from, int newdirfd, const char *to, unsigned int flags) {
    static int (*real)(int, const char *, int, const char *, unsigned int);
    if (!real) real = (int (*)(int, const char *, int, const char *, unsigned int))dlsym(RTLD_NEXT, "renameat2");
    char a[PATH_MAX], b[PATH_MAX];
    absolute(from, 1, a);
    absolute(to, 1, b);
    int r = real(olddirfd, from, newdirfd, to, flags);
    if (r == 0) log_line("rename %s %s\n", a, b);
    return r;
}
