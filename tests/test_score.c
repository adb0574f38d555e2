/* Sliding-window scoring (model/score.h) on a tiny random model: stride = window is consecutive
 * windows, computed here window by window; a smaller stride scores every token once, each with the
 * context of the window that scores it, which a forward over exactly that context reproduces. */
#include <string.h>

#include "backend/backend.h"
#include "harness.h"
#include "model/llama.h"
#include "model/score.h"
#include "util/rng.h"

enum { V = 31, N = 83, W = 16, BATCH = 3 };

typedef struct {
    oz_backend be;
    oz_arena arena;
    oz_llama *m;
} fx;

static void fx_open(fx *f) {
    oz_err err = {0};
    oz_llama_config c = {V, 24, 40, 2, 4, 2, 6, 64, 1e-5f, 10000.0f, true, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0, {{0}}};
    oz_backend_cpu_create(&f->be, 0, &err);
    oz_arena_init(&f->arena, f->be.allocator);
    oz_llama_shape shape = {.batch = BATCH, .seq = W};
    CHECK(oz_llama_create(&f->m, &c, &f->be, &f->arena, shape, &err) == OZ_OK, "%s", err.msg);
    const oz_param_layout *lay = oz_llama_get_layout(f->m);
    float *p = oz_llama_params(f->m);
    oz_llama_init_params(&c, lay, p, 3);
    for (size_t i = 0; i < lay->total; i++) p[i] *= 10.0f; /* norms too: a sharper model */
}

static void fx_close(fx *f) {
    oz_llama_destroy(f->m);
    oz_arena_destroy(&f->arena);
    f->be.destroy(&f->be);
}

/* The loss of predicting ids[t] from ids[b .. t), by one forward over that context. */
static double loss_at(fx *f, const int32_t *ids, int b, int t) {
    int32_t in[W], tg[W];
    int len = t - b;
    for (int i = 0; i < len; i++) in[i] = ids[b + i], tg[i] = i == len - 1 ? ids[t] : -1;
    oz_llama_batch batch = {in, tg, 1, len, NULL};
    double s = 0;
    long c = 0;
    oz_err err = {0};
    CHECK(oz_llama_forward(f->m, &batch, &s, &c, &err) == OZ_OK && c == 1, "%s", err.msg);
    return s;
}

static void test_stride_equals_window_is_consecutive(void) {
    fx f;
    fx_open(&f);
    int32_t ids[N];
    oz_rng rng;
    oz_rng_seed(&rng, 4);
    for (int i = 0; i < N; i++) ids[i] = (int32_t)oz_rng_below(&rng, V);
    double sum = 0;
    long count = 0;
    oz_err err = {0};
    oz_score_opts o = {W, W, BATCH, NULL, NULL};
    CHECK(oz_llama_score_tokens(f.m, ids, N, &o, &sum, &count, &err) == OZ_OK, "%s", err.msg);
    /* consecutive windows, one at a time: inputs [b, b + W), the next tokens as targets */
    double want = 0;
    long wcount = 0;
    for (int b = 0; b < N - 1; b += W) {
        int len = N - 1 - b < W ? N - 1 - b : W;
        oz_llama_batch batch = {ids + b, ids + b + 1, 1, len, NULL};
        double s = 0;
        long c = 0;
        CHECK(oz_llama_forward(f.m, &batch, &s, &c, &err) == OZ_OK, "%s", err.msg);
        want += s, wcount += c;
    }
    CHECK(count == N - 1 && wcount == N - 1, "every token but the first: %ld", count);
    CHECK_CLOSE(sum, want, 1e-6, 0, "stride = window: consecutive windows");
    CHECK(oz_score_window_count(N, W, W) == 6, "windows %ld", oz_score_window_count(N, W, W));
    fx_close(&f);
}

static void test_smaller_stride_scores_each_token_once(void) {
    fx f;
    fx_open(&f);
    int32_t ids[N];
    oz_rng rng;
    oz_rng_seed(&rng, 9);
    for (int i = 0; i < N; i++) ids[i] = (int32_t)oz_rng_below(&rng, V);
    static const int strides[] = {1, 5, 7, 15};
    for (size_t k = 0; k < sizeof strides / sizeof strides[0]; k++) {
        int S = strides[k];
        double sum = 0;
        long count = 0, calls = 0;
        oz_err err = {0};
        oz_score_opts o = {W, S, BATCH, NULL, NULL};
        CHECK(oz_llama_score_tokens(f.m, ids, N, &o, &sum, &count, &err) == OZ_OK, "%s", err.msg);
        (void)calls;
        /* Token t is scored by the first window reaching it: window j = ceil((t - W) / S) (0 while
         * t <= W), whose context starts at j * S. */
        double want = 0;
        for (int t = 1; t < N; t++) {
            int j = t <= W ? 0 : (t - W + S - 1) / S;
            want += loss_at(&f, ids, j * S, t);
        }
        CHECK(count == N - 1, "stride %d: %ld tokens scored", S, count);
        CHECK_CLOSE(sum, want, 1e-5, 0, "stride loss against each token's own context");
        double plain = 0;
        long pc = 0;
        oz_score_opts p = {W, W, BATCH, NULL, NULL};
        oz_llama_score_tokens(f.m, ids, N, &p, &plain, &pc, &err);
        CHECK(fabs(sum - plain) > 1e-3, "stride %d differs from consecutive windows (more context)", S);
    }
    oz_err err = {0};
    double s = 0;
    long c = 0;
    oz_score_opts bad = {W, W + 1, BATCH, NULL, NULL};
    CHECK(oz_llama_score_tokens(f.m, ids, N, &bad, &s, &c, &err) == OZ_ERR_INPUT, "stride past the window");
    fx_close(&f);
}

static void progress(void *ctx, long done, long total) {
    long *seen = ctx;
    CHECK(done > seen[0] && done <= total, "progress %ld of %ld after %ld", done, total, seen[0]);
    seen[0] = done, seen[1] = total;
}

static void test_progress(void) {
    fx f;
    fx_open(&f);
    int32_t ids[N] = {0};
    long seen[2] = {0, 0};
    double s = 0;
    long c = 0;
    oz_err err = {0};
    oz_score_opts o = {W, 4, BATCH, progress, seen};
    CHECK(oz_llama_score_tokens(f.m, ids, N, &o, &s, &c, &err) == OZ_OK, "%s", err.msg);
    CHECK(seen[0] == seen[1] && seen[1] == oz_score_window_count(N, W, 4), "ends at the total (%ld, %ld)", seen[0],
          seen[1]);
    fx_close(&f);
}

int main(void) {
    RUN(test_stride_equals_window_is_consecutive);
    RUN(test_smaller_stride_scores_each_token_once);
    RUN(test_progress);
    return oz_test_finish("score");
}
