/* Error recording: the first failure wins so the user sees the root cause. */
#include "util/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

oz_status oz_fail(oz_err *err, oz_status status, const char *fmt, ...) {
    if (err && err->status == OZ_OK) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        /* Messages quote names and values from the user's files; their newlines, carriage returns and
         * terminal escapes must not break the one-line message (or drive the user's terminal). */
        for (char *c = err->msg; *c; c++)
            if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
        err->status = status;
    }
    return status;
}

void oz_err_clear(oz_err *err) {
    err->status = OZ_OK;
    err->msg[0] = '\0';
}

const char *oz_status_name(oz_status status) {
    switch (status) {
    case OZ_OK: return "ok";
    case OZ_ERR_INPUT: return "input error";
    case OZ_ERR_IO: return "I/O error";
    case OZ_ERR_NOMEM: return "out of memory";
    case OZ_ERR_NUMERIC: return "numeric error";
    case OZ_ERR_INTERNAL: return "internal error";
    }
    return "unknown error";
}
