/* Status codes and error messages. The library never prints or exits: a failing function
 * fills an oz_err and returns its status; the CLI prints the message and maps the status
 * to an exit code (user mistakes -> 2). */
#ifndef OZ_ERR_H
#define OZ_ERR_H

typedef enum {
    OZ_OK = 0,
    OZ_ERR_INPUT,    /* user's mistake: bad flag, bad/missing/corrupt file, shape mismatch */
    OZ_ERR_IO,       /* the OS refused a read/write that should have worked */
    OZ_ERR_NOMEM,    /* an allocation failed */
    OZ_ERR_NUMERIC,  /* NaN/Inf loss or gradient */
    OZ_ERR_INTERNAL  /* a bug in ounce */
} oz_status;

typedef struct {
    oz_status status;
    char msg[512];
} oz_err;

/* Records the first error (later calls keep the original cause) and returns `status`. The message
 * is one line: control characters (newlines, tabs, escapes) in it become '?'. */
oz_status oz_fail(oz_err *err, oz_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void oz_err_clear(oz_err *err);
const char *oz_status_name(oz_status status);

/* Propagate a failing status from an expression. */
#define OZ_TRY(expr)                          \
    do {                                      \
        oz_status oz_try_s_ = (expr);         \
        if (oz_try_s_ != OZ_OK) return oz_try_s_; \
    } while (0)

#endif
