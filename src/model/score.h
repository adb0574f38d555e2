/* The next-token loss of a model over one long token sequence, in windows: sliding-window
 * perplexity as Hugging Face's guide "Perplexity of fixed-length models" computes it. Windows of
 * `window` input tokens start every `stride` tokens; each predicts the token after each of its
 * inputs, and only targets no earlier window scored count, so every token but the first is scored
 * exactly once, with at least window - stride tokens of context once the first window is past.
 * stride == window is consecutive, non-overlapping windows. (HF's loop labels a window with its own
 * ids, so its non-overlapping windows each lose their first token; here the targets are the next
 * tokens, so none is lost.) Full windows run `batch` at a time; the last, shorter one alone. */
#ifndef OZ_SCORE_H
#define OZ_SCORE_H
#include <stddef.h>
#include <stdint.h>

#include "model/llama.h"
#include "util/err.h"

typedef struct {
    int window, stride, batch; /* 1 <= stride <= window <= the model's seq; batch <= its batch */
    /* Called after each forward with the windows done and their total (NULL: nothing). */
    void (*progress)(void *ctx, long done, long total);
    void *ctx;
} oz_score_opts;

/* Windows the sequence of n tokens is scored in (0 when n < 2). */
long oz_score_window_count(size_t n, int window, int stride);

/* Adds the summed loss (nats) and the count of scored tokens of ids (n, host) to *sum and *count.
 * OZ_ERR_INPUT for a stride outside [1, window]; OZ_ERR_INTERNAL for windows or batches beyond the
 * model's buffers. */
oz_status oz_llama_score_tokens(oz_llama *m, const int32_t *ids, size_t n, const oz_score_opts *o, double *sum,
                                long *count, oz_err *err);

#endif
