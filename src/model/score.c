/* Sliding-window scoring (model/score.h). Window k has inputs [k * stride, e_k), e_k =
 * min(k * stride + window, n - 1), and targets the next token of each input; a target at a position
 * up to e_{k-1} was scored by an earlier window and is masked (-1). */
#include <stdlib.h>
#include <string.h>

#include "model/score.h"

long oz_score_window_count(size_t n, int window, int stride) {
    if (n < 2 || window < 1 || stride < 1) return 0;
    long k = 0;
    for (size_t b = 0;; b += (size_t)stride) {
        k++;
        if (b + (size_t)window >= n - 1) return k;
    }
}

oz_status oz_llama_score_tokens(oz_llama *m, const int32_t *ids, size_t n, const oz_score_opts *o, double *sum,
                                long *count, oz_err *err) {
    int W = o->window, S = o->stride, B = o->batch;
    if (S < 1 || S > W)
        return oz_fail(err, OZ_ERR_INPUT, "--stride must be between 1 and the window (%d), got %d", W, S);
    if (B < 1) return oz_fail(err, OZ_ERR_INTERNAL, "scoring needs a batch of at least 1");
    if (n < 2) return OZ_OK;
    long total = oz_score_window_count(n, W, S), done = 0;
    int32_t *in = malloc((size_t)B * W * sizeof *in), *tg = malloc((size_t)B * W * sizeof *tg);
    if (!in || !tg) {
        free(in);
        free(tg);
        return oz_fail(err, OZ_ERR_NOMEM, "out of memory for %d windows of %d tokens", B, W);
    }
    oz_status st = OZ_OK;
    size_t b = 0, scored = 0; /* next window's start; targets up to this position are scored */
    while (st == OZ_OK && done < total) {
        int rows = 0, len = 0;
        /* Windows of one length go together: full ones up to B, the last (shorter) one alone. */
        while (rows < B && done + rows < total) {
            size_t e = b + (size_t)W < n - 1 ? b + (size_t)W : n - 1;
            int l = (int)(e - b);
            if (rows > 0 && l != len) break;
            len = l;
            for (int i = 0; i < l; i++) {
                size_t t = b + (size_t)i + 1; /* the target's position */
                in[(size_t)rows * l + i] = ids[b + (size_t)i];
                tg[(size_t)rows * l + i] = t > scored ? ids[t] : -1;
            }
            scored = e;
            rows++;
            b += (size_t)S;
        }
        oz_llama_batch batch = {in, tg, rows, len, NULL};
        double s = 0;
        long c = 0;
        st = oz_llama_forward(m, &batch, &s, &c, err);
        *sum += s;
        *count += c;
        done += rows;
        if (st == OZ_OK && o->progress) o->progress(o->ctx, done, total);
    }
    free(in);
    free(tg);
    return st;
}
