/* Atomic file output (temp file + fsync + rename + directory fsync) and filesystem helpers. */
#include "io/atomic.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* Errors the user can fix (wrong path, permissions, read-only mount) are input errors; the rest
 * (disk full, EIO, ...) mean the OS failed us. */
static oz_status status_for_errno(int e) {
    switch (e) {
    case ENOENT: case ENOTDIR: case EACCES: case EPERM: case EROFS: case EISDIR:
    case ENAMETOOLONG: case ELOOP: case EEXIST: case ENOTEMPTY: case EXDEV:
        return OZ_ERR_INPUT;
    case ENOMEM:
        return OZ_ERR_NOMEM;
    default:
        return OZ_ERR_IO;
    }
}

static oz_status fail_errno(oz_err *err, int e, const char *what, const char *path) {
    return oz_fail(err, status_for_errno(e), "cannot %s %s: %s", what, path, strerror(e));
}

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* Directory holding `path` ("." for a bare name), malloc'd. */
static char *parent_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return dup_str(".");
    while (slash > path && slash[-1] == '/') slash--;
    if (slash == path) return dup_str("/");
    size_t n = (size_t)(slash - path);
    char *d = malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, path, n);
    d[n] = '\0';
    return d;
}

/* A rename is only durable once the directory entry itself reaches the disk. */
static oz_status sync_parent(const char *path, oz_err *err) {
    char *dir = parent_dir(path);
    if (!dir) return oz_fail(err, OZ_ERR_NOMEM, "out of memory syncing the directory of %s", path);
    oz_status s = OZ_OK;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        s = fail_errno(err, errno, "open directory", dir);
    } else {
        /* Some filesystems cannot fsync a directory at all; there is nothing more to do there. */
        if (fsync(fd) != 0 && errno != EINVAL && errno != ENOTSUP)
            s = fail_errno(err, errno, "sync directory", dir);
        close(fd);
    }
    free(dir);
    return s;
}

static void release(oz_atomic_file *f) {
    free(f->path);
    free(f->tmp_path);
    f->path = f->tmp_path = NULL;
    f->fp = NULL;
}

/* Drops the temp file after a failure; keeps `status` so later calls report it. */
static oz_status fail_and_discard(oz_atomic_file *f, oz_status status) {
    if (f->fp) fclose(f->fp);
    if (f->tmp_path) unlink(f->tmp_path);
    release(f);
    f->status = status;
    return status;
}

oz_status oz_atomic_file_open(oz_atomic_file *f, const char *path, oz_err *err) {
    memset(f, 0, sizeof *f);
    f->path = dup_str(path);
    f->tmp_path = malloc(strlen(path) + sizeof ".tmp.XXXXXX");
    if (!f->path || !f->tmp_path) {
        release(f);
        return f->status = oz_fail(err, OZ_ERR_NOMEM, "out of memory opening %s", path);
    }
    strcpy(f->tmp_path, path);
    strcat(f->tmp_path, ".tmp.XXXXXX");
    int fd = mkostemp(f->tmp_path, O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        release(f);
        return f->status = oz_fail(err, status_for_errno(e), "cannot create a temp file next to %s: %s",
                                   path, strerror(e));
    }
    /* mkstemp makes the file 0600; a replaced file keeps its mode, a new one gets the usual 0644
     * so checkpoints stay readable by the other tools that consume them. */
    struct stat st;
    mode_t mode = stat(path, &st) == 0 ? (st.st_mode & 07777) : 0644;
    if (fchmod(fd, mode) != 0) {
        int e = errno;
        close(fd);
        unlink(f->tmp_path);
        release(f);
        return f->status = fail_errno(err, e, "set the mode of", path);
    }
    f->fp = fdopen(fd, "wb");
    if (!f->fp) {
        int e = errno;
        close(fd);
        unlink(f->tmp_path);
        release(f);
        return f->status = fail_errno(err, e, "open", path);
    }
    return OZ_OK;
}

oz_status oz_atomic_file_write(oz_atomic_file *f, const void *data, size_t n, oz_err *err) {
    /* With the same err as the failed call this keeps the original message. */
    if (f->status != OZ_OK) return oz_fail(err, f->status, "atomic file write after an earlier failure");
    if (!f->fp) return oz_fail(err, OZ_ERR_INTERNAL, "write to an atomic file that is not open");
    if (n == 0) return OZ_OK;
    errno = 0;
    if (fwrite(data, 1, n, f->fp) != n) {
        int e = errno ? errno : EIO;
        oz_status st = e == ENOMEM ? OZ_ERR_NOMEM : OZ_ERR_IO;
        oz_fail(err, st, "cannot write %s: %s", f->path, strerror(e));
        return fail_and_discard(f, st);
    }
    return OZ_OK;
}

oz_status oz_atomic_file_commit(oz_atomic_file *f, oz_err *err) {
    if (f->status != OZ_OK) return oz_fail(err, f->status, "atomic file commit after an earlier failure");
    if (!f->fp) return oz_fail(err, OZ_ERR_INTERNAL, "commit of an atomic file that is not open");
    errno = 0;
    if (fflush(f->fp) != 0 || fsync(fileno(f->fp)) != 0) {
        int e = errno ? errno : EIO;
        oz_fail(err, OZ_ERR_IO, "cannot write %s: %s", f->path, strerror(e));
        return fail_and_discard(f, OZ_ERR_IO);
    }
    FILE *fp = f->fp;
    f->fp = NULL;
    if (fclose(fp) != 0) {
        oz_fail(err, OZ_ERR_IO, "cannot write %s: %s", f->path, strerror(errno));
        return fail_and_discard(f, OZ_ERR_IO);
    }
    if (rename(f->tmp_path, f->path) != 0) {
        int e = errno;
        fail_errno(err, e, "replace", f->path);
        return fail_and_discard(f, status_for_errno(e));
    }
    oz_status s = sync_parent(f->path, err);
    release(f);
    return s;
}

void oz_atomic_file_abort(oz_atomic_file *f) {
    if (!f->fp && !f->tmp_path) return;
    fail_and_discard(f, f->status != OZ_OK ? f->status : OZ_ERR_INTERNAL);
}

oz_status oz_atomic_write(const char *path, const void *data, size_t n, oz_err *err) {
    oz_atomic_file f;
    OZ_TRY(oz_atomic_file_open(&f, path, err));
    OZ_TRY(oz_atomic_file_write(&f, data, n, err));
    return oz_atomic_file_commit(&f, err);
}

static oz_status mkdir_one(const char *dir, const char *full, oz_err *err) {
    if (mkdir(dir, 0755) == 0) return OZ_OK;
    int e = errno;
    struct stat st;
    if (e == EEXIST && stat(dir, &st) == 0 && S_ISDIR(st.st_mode)) return OZ_OK;
    if (e == EEXIST) return oz_fail(err, OZ_ERR_INPUT, "cannot create directory %s: %s exists and is not a directory", full, dir);
    return oz_fail(err, status_for_errno(e), "cannot create directory %s: %s", full, strerror(e));
}

oz_status oz_mkdir_p(const char *path, oz_err *err) {
    if (!path || !*path) return oz_fail(err, OZ_ERR_INPUT, "cannot create a directory with an empty name");
    char *p = dup_str(path);
    if (!p) return oz_fail(err, OZ_ERR_NOMEM, "out of memory creating directory %s", path);
    oz_status s = OZ_OK;
    for (char *c = p + 1; *c && s == OZ_OK; c++) {
        if (*c != '/' || c[-1] == '/') continue;
        *c = '\0';
        s = mkdir_one(p, path, err);
        *c = '/';
    }
    if (s == OZ_OK) s = mkdir_one(p, path, err);
    free(p);
    return s;
}

oz_status oz_read_file(const char *path, char **data, size_t *n, oz_err *err) {
    *data = NULL;
    *n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fail_errno(err, errno, "open", path);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return fail_errno(err, e, "stat", path);
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        return oz_fail(err, OZ_ERR_INPUT, "cannot read %s: it is a directory", path);
    }
    /* st_size is only a hint: pipes and /proc files report 0, so grow until EOF. */
    size_t cap = st.st_size > 0 ? (size_t)st.st_size + 1 : 4096, len = 0;
    char *buf = malloc(cap);
    oz_status s = OZ_OK;
    if (!buf) s = oz_fail(err, OZ_ERR_NOMEM, "out of memory reading %s (%zu bytes)", path, cap);
    while (s == OZ_OK) {
        if (len + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                s = oz_fail(err, OZ_ERR_NOMEM, "out of memory reading %s (%zu bytes)", path, cap * 2);
                break;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + len, cap - 1 - len);
        if (r < 0) {
            if (errno == EINTR) continue;
            s = fail_errno(err, errno, "read", path);
        } else if (r == 0) {
            break;
        } else {
            len += (size_t)r;
        }
    }
    close(fd);
    if (s != OZ_OK) {
        free(buf);
        return s;
    }
    buf[len] = '\0';
    *data = buf;
    *n = len;
    return OZ_OK;
}

oz_status oz_remove_tree(const char *path, oz_err *err) {
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT) return OZ_OK;
        return fail_errno(err, errno, "remove", path);
    }
    if (!S_ISDIR(st.st_mode)) {
        if (unlink(path) != 0 && errno != ENOENT) return fail_errno(err, errno, "remove", path);
        return OZ_OK;
    }
    DIR *d = opendir(path);
    if (!d) return fail_errno(err, errno, "open directory", path);
    oz_status s = OZ_OK;
    size_t plen = strlen(path);
    struct dirent *de;
    while (s == OZ_OK && (errno = 0, de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        size_t nlen = strlen(de->d_name);
        char *child = malloc(plen + nlen + 2);
        if (!child) {
            s = oz_fail(err, OZ_ERR_NOMEM, "out of memory removing %s", path);
            break;
        }
        memcpy(child, path, plen);
        child[plen] = '/';
        memcpy(child + plen + 1, de->d_name, nlen + 1);
        s = oz_remove_tree(child, err);
        free(child);
    }
    if (s == OZ_OK && errno != 0) s = fail_errno(err, errno, "list directory", path);
    closedir(d);
    if (s == OZ_OK && rmdir(path) != 0 && errno != ENOENT) s = fail_errno(err, errno, "remove directory", path);
    return s;
}

/* Durability of both directory entries touched by a rename. */
static oz_status sync_both_parents(const char *a, const char *b, oz_err *err) {
    OZ_TRY(sync_parent(a, err));
    char *pa = parent_dir(a), *pb = parent_dir(b);
    int same = pa && pb && strcmp(pa, pb) == 0;
    free(pa);
    free(pb);
    return same ? OZ_OK : sync_parent(b, err);
}

oz_status oz_replace_dir(const char *tmp_dir, const char *final_dir, oz_err *err) {
    struct stat st;
    if (stat(tmp_dir, &st) != 0) return fail_errno(err, errno, "use new directory", tmp_dir);
    if (!S_ISDIR(st.st_mode)) return oz_fail(err, OZ_ERR_INPUT, "cannot use %s: not a directory", tmp_dir);
    if (lstat(final_dir, &st) != 0) {
        if (errno != ENOENT) return fail_errno(err, errno, "replace", final_dir);
        if (rename(tmp_dir, final_dir) != 0) return fail_errno(err, errno, "move a new directory to", final_dir);
        return sync_both_parents(tmp_dir, final_dir, err);
    }
    if (!S_ISDIR(st.st_mode))
        return oz_fail(err, OZ_ERR_INPUT, "cannot replace %s: it exists and is not a directory", final_dir);

#ifdef RENAME_EXCHANGE
    if (renameat2(AT_FDCWD, tmp_dir, AT_FDCWD, final_dir, RENAME_EXCHANGE) == 0) {
        /* tmp_dir now holds the old contents. */
        OZ_TRY(sync_both_parents(tmp_dir, final_dir, err));
        return oz_remove_tree(tmp_dir, err);
    }
    if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
        return fail_errno(err, errno, "replace", final_dir);
#endif

    /* No atomic swap here: move the old directory onto an empty placeholder (a directory may be
     * renamed over an empty one), then the new one into place; undo the first step on failure. */
    char *aside = malloc(strlen(final_dir) + sizeof ".old.XXXXXX");
    if (!aside) return oz_fail(err, OZ_ERR_NOMEM, "out of memory replacing %s", final_dir);
    strcpy(aside, final_dir);
    strcat(aside, ".old.XXXXXX");
    oz_status s = OZ_OK;
    if (!mkdtemp(aside)) {
        s = fail_errno(err, errno, "create a directory next to", final_dir);
    } else if (rename(final_dir, aside) != 0) {
        s = fail_errno(err, errno, "move aside", final_dir);
        rmdir(aside);
    } else if (rename(tmp_dir, final_dir) != 0) {
        s = fail_errno(err, errno, "move a new directory to", final_dir);
        rename(aside, final_dir);
    } else {
        s = sync_both_parents(tmp_dir, final_dir, err);
        if (s == OZ_OK) s = oz_remove_tree(aside, err);
    }
    free(aside);
    return s;
}

oz_status oz_dir_lock(const char *dir, int *fd, oz_err *err) {
    *fd = -1;
    char *path = oz_path_join(dir, ".lock");
    if (!path) return oz_fail(err, OZ_ERR_NOMEM, "out of memory locking %s", dir);
    int f = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (f < 0) {
        oz_status s = fail_errno(err, errno, "create the lock", path);
        free(path);
        return s;
    }
    if (flock(f, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        char owner[32] = "";
        ssize_t n = pread(f, owner, sizeof owner - 1, 0);
        owner[n > 0 ? n : 0] = '\0';
        owner[strcspn(owner, "\n")] = '\0';
        close(f);
        free(path);
        if (e == EWOULDBLOCK)
            return oz_fail(err, OZ_ERR_INPUT, "%s is in use by another run%s%s%s (one run per output directory)", dir,
                           owner[0] ? " (pid " : "", owner, owner[0] ? ")" : "");
        return fail_errno(err, e, "lock", dir);
    }
    char pid[32];
    int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    /* The pid is for the message above; the lock itself is the flock. */
    if (ftruncate(f, 0) != 0 || pwrite(f, pid, (size_t)len, 0) != len) {
        oz_status s = fail_errno(err, errno, "write the lock", path);
        close(f);
        free(path);
        return s;
    }
    free(path);
    *fd = f;
    return OZ_OK;
}

void oz_dir_unlock(int fd) {
    if (fd >= 0) close(fd); /* closing the last descriptor releases the flock */
}

char *oz_path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    int slash = a > 0 && dir[a - 1] != '/';
    char *p = malloc(a + (size_t)slash + b + 1);
    if (!p) return NULL;
    memcpy(p, dir, a);
    if (slash) p[a] = '/';
    memcpy(p + a + slash, name, b + 1);
    return p;
}
