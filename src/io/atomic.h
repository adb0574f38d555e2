/* Crash-safe file and directory output, plus small filesystem helpers. A reader of `path` sees
 * either the complete old contents or the complete new ones, never a torn file: everything is
 * written to a temp file next to the target, synced, and renamed over it. Checkpoint
 * directories get the same treatment through oz_replace_dir. */
#ifndef OZ_ATOMIC_H
#define OZ_ATOMIC_H
#include <stddef.h>
#include <stdio.h>
#include "util/err.h"

/* Writes `n` bytes to `path` atomically. On failure the old file (if any) is untouched and no
 * temp file is left behind. */
oz_status oz_atomic_write(const char *path, const void *data, size_t n, oz_err *err);

/* Streaming variant for outputs too large to assemble in memory:
 *     oz_atomic_file f;
 *     OZ_TRY(oz_atomic_file_open(&f, path, err));
 *     ... oz_atomic_file_write(&f, chunk, len, err) ...   (on any failure f is already cleaned up)
 *     return oz_atomic_file_commit(&f, err);              (or oz_atomic_file_abort(&f))
 * After a failed write, further writes and the commit return that status without touching disk,
 * so a caller may check only the commit. Abort is safe to call at any point, even twice or after
 * a commit, which makes it usable as unconditional cleanup. */
typedef struct {
    FILE *fp;         /* NULL once committed, aborted or failed */
    char *path;       /* final destination */
    char *tmp_path;   /* "<path>.tmp.XXXXXX" while open */
    oz_status status; /* first failure, sticky */
} oz_atomic_file;

oz_status oz_atomic_file_open(oz_atomic_file *f, const char *path, oz_err *err);
oz_status oz_atomic_file_write(oz_atomic_file *f, const void *data, size_t n, oz_err *err);
oz_status oz_atomic_file_commit(oz_atomic_file *f, oz_err *err);
void oz_atomic_file_abort(oz_atomic_file *f);

/* dir + "/" + name (no doubled slash), malloc'd; NULL when out of memory. */
char *oz_path_join(const char *dir, const char *name);

/* mkdir -p with mode 0755; fine if the directory already exists. */
oz_status oz_mkdir_p(const char *path, oz_err *err);

/* Reads a whole file into a malloc'd buffer with a NUL appended (not counted in *n); the
 * caller frees *data. */
oz_status oz_read_file(const char *path, char **data, size_t *n, oz_err *err);

/* rm -rf: removes a file or a directory tree without following symlinks. A missing path is
 * not an error. */
oz_status oz_remove_tree(const char *path, oz_err *err);

/* An advisory lock (flock) on directory `dir`, through its file ".lock" (created; it holds the
 * owner's pid), taken without waiting: while a process holds it, oz_dir_lock elsewhere fails with
 * OZ_ERR_INPUT naming the directory and that pid. *fd is the lock until oz_dir_unlock(*fd); the
 * kernel also drops it when the process ends, however it ends. */
oz_status oz_dir_lock(const char *dir, int *fd, oz_err *err);
void oz_dir_unlock(int fd);

/* Puts the fully written directory `tmp_dir` in place of `final_dir` (same filesystem). If
 * final_dir exists, the two are swapped atomically (renameat2 RENAME_EXCHANGE; on filesystems
 * without it the old one is renamed aside first, leaving a brief window where final_dir is
 * absent) and the old contents are then removed. A crash never leaves a half-written directory
 * at final_dir. tmp_dir no longer exists on success. */
oz_status oz_replace_dir(const char *tmp_dir, const char *final_dir, oz_err *err);

#endif
