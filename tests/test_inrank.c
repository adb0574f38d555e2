/* InRank: the rank-growth rule on known spectra, the factored SVD (singular values and balanced
 * truncation from the factors alone), the factor init, the rank check on a model, and the freeze
 * (same function, optimizer state carried over except the factors'). Factored gradients against
 * finite differences, at full and partial active rank, are test_model's test_fd_low_rank. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "harness.h"
#include "io/safetensors.h"
#include <unistd.h>
#include "model/llama.h"
#include "optim/inrank.h"
#include "optim/optimizer.h"
#include "numeric/subspace.h"
#include "train/inrank.h"
#include "util/rng.h"

/* ---- the rule against a direct transcription of the reference's loop */

static double naive_var(const double *x, int n) {
    double mean = 0, ss = 0;
    for (int i = 0; i < n; i++) mean += x[i];
    mean /= n;
    for (int i = 0; i < n; i++) ss += (x[i] - mean) * (x[i] - mean);
    return ss / (n - 1);
}

/* The reference: s padded with zeros to n_full, tail = s with its first idx entries zeroed. */
static int naive_rule(const double *s, int n, int n_full, int k, int b, int R, double tau) {
    if (k >= R - b) return k;
    double *full = calloc((size_t)n_full, sizeof *full), *tail = calloc((size_t)n_full, sizeof *tail);
    memcpy(full, s, (size_t)n * sizeof *s);
    double vs = naive_var(full, n_full);
    int end = k + b < R - b ? k + b : R - b, idx = k;
    for (; idx < end; idx++) {
        memcpy(tail, full, (size_t)n_full * sizeof *tail);
        for (int i = 0; i < idx; i++) tail[i] = 0;
        if (1 - naive_var(tail, n_full) / vs > tau) break;
    }
    if (idx == end) idx = end - 1;
    free(full);
    free(tail);
    return idx;
}

static void test_rule_known_spectra(void) {
    /* Three large values and a flat small tail: the first three explain nearly all variance. */
    double s[40];
    for (int i = 0; i < 40; i++) s[i] = i < 3 ? 100.0 - 10 * i : 0.01;
    int n_full = 64, R = 32, b = 10;
    /* From k = 1: idx 1 and 2 leave large values in the tail; idx 3 removes them all. */
    CHECK(oz_inrank_explained(s, 40, n_full, 2) < 0.9, "idx 2 explains %g", oz_inrank_explained(s, 40, n_full, 2));
    CHECK(oz_inrank_explained(s, 40, n_full, 3) > 0.99, "idx 3 explains %g", oz_inrank_explained(s, 40, n_full, 3));
    CHECK(oz_inrank_next_rank(s, 40, n_full, 1, b, R, 0.9) == 3, "rank %d, expected 3",
          oz_inrank_next_rank(s, 40, n_full, 1, b, R, 0.9));
    /* Already past the knee: k stays (idx = k passes at once). */
    CHECK(oz_inrank_next_rank(s, 40, n_full, 5, b, R, 0.9) == 5, "k = 5 moved");
    /* A flat spectrum: nothing passes, so the rank takes the last idx tried, min(k+b, R-b) - 1. */
    double flat[40];
    for (int i = 0; i < 40; i++) flat[i] = 1.0;
    CHECK(oz_inrank_next_rank(flat, 40, n_full, 2, b, R, 0.9) == 11, "flat from 2: %d",
          oz_inrank_next_rank(flat, 40, n_full, 2, b, R, 0.9));
    CHECK(oz_inrank_next_rank(flat, 40, n_full, 18, b, R, 0.9) == 21, "flat from 18 (cap R-b-1 = 21): %d",
          oz_inrank_next_rank(flat, 40, n_full, 18, b, R, 0.9));
    /* At or past R - b the rule stops; an all-zero spectrum changes nothing. */
    CHECK(oz_inrank_next_rank(flat, 40, n_full, 22, b, R, 0.9) == 22, "k = R - b moved");
    double zero[8] = {0};
    CHECK(oz_inrank_next_rank(zero, 8, 16, 2, 3, 12, 0.9) == 2, "zero spectrum moved the rank");
    /* The zeros beyond the active rank count: without them (n_full = n) the same values give a
     * different ratio, which is why the variance runs over min(in, out) entries. */
    double pad = oz_inrank_explained(s, 40, 400, 2), nopad = oz_inrank_explained(s, 40, 40, 2);
    CHECK(fabs(pad - nopad) > 1e-3, "padding does not matter (%g vs %g)", pad, nopad);
    /* Buffer clamp: the reference's 100 where R >= 300, a third of R below. */
    CHECK(oz_inrank_buffer(100, 384) == 100 && oz_inrank_buffer(100, 128) == 42 && oz_inrank_buffer(100, 2) == 1,
          "buffer clamp %d %d %d", oz_inrank_buffer(100, 384), oz_inrank_buffer(100, 128), oz_inrank_buffer(100, 2));
    CHECK(oz_inrank_max_rank(1376, 512) == 256 && oz_inrank_max_rank(16, 32) == 8, "max rank");
}

/* Random decaying spectra, random k: the rule equals the reference loop and never shrinks. */
static void test_rule_random_never_shrinks(void) {
    oz_rng rng;
    oz_rng_seed(&rng, 11);
    int mismatches = 0, shrinks = 0, over = 0;
    for (int trial = 0; trial < 400; trial++) {
        int R = 8 + (int)oz_rng_below(&rng, 120), b = oz_inrank_buffer(1 + (int)oz_rng_below(&rng, 60), R);
        int k = 1 + (int)oz_rng_below(&rng, (uint64_t)R - 1), n = k + b < R ? k + b : R;
        int n_full = 2 * R + (int)oz_rng_below(&rng, 3);
        double decay = 0.5 + 0.5 * oz_rng_uniform(&rng), tau = 0.5 + 0.49 * oz_rng_uniform(&rng);
        double s[256];
        for (int i = 0; i < n; i++) s[i] = pow(decay, i) * (1 + 0.1 * oz_rng_uniform(&rng));
        for (int i = 1; i < n; i++) if (s[i] > s[i - 1]) s[i] = s[i - 1];
        int got = oz_inrank_next_rank(s, n, n_full, k, b, R, tau);
        mismatches += got != naive_rule(s, n, n_full, k, b, R, tau);
        shrinks += got < k;
        over += got > k && got > (k + b < R - b ? k + b : R - b) - 1;
    }
    CHECK(mismatches == 0, "%d of 400 differ from the reference loop", mismatches);
    CHECK(shrinks == 0, "rank shrank %d times", shrinks);
    CHECK(over == 0, "rank grew past min(k+b, R-b)-1 %d times", over);
}

/* ---- factored SVD */

/* Columns of a random (rows x cols) matrix orthonormalized (Gram-Schmidt in double), column-major. */
static void random_orthonormal(oz_rng *rng, int rows, int cols, double *q) {
    for (int j = 0; j < cols; j++) {
        double *c = q + (size_t)j * rows;
        for (int i = 0; i < rows; i++) c[i] = oz_rng_normal(rng);
        for (int pass = 0; pass < 2; pass++)
            for (int p = 0; p < j; p++) {
                double d = 0;
                for (int i = 0; i < rows; i++) d += c[i] * q[(size_t)p * rows + i];
                for (int i = 0; i < rows; i++) c[i] -= d * q[(size_t)p * rows + i];
            }
        double nrm = 0;
        for (int i = 0; i < rows; i++) nrm += c[i] * c[i];
        for (int i = 0; i < rows; i++) c[i] /= sqrt(nrm);
    }
}

/* Factors with a chosen spectrum: B_r A_r = U diag(s) V^T, split unevenly (B = U diag(s) G,
 * A = G^-1 V^T with G diagonal and far from identity) so the factors themselves are not balanced;
 * A's rows and B's columns beyond r hold garbage that must be ignored. */
static void make_factors(oz_rng *rng, int out, int in, int R, int r, const double *s, float *A, float *B) {
    double *U = malloc(sizeof *U * (size_t)out * r), *V = malloc(sizeof *V * (size_t)in * r);
    random_orthonormal(rng, out, r, U);
    random_orthonormal(rng, in, r, V);
    for (int i = 0; i < R; i++) {
        double g = 0.3 + 3.0 * i / R;
        for (int c = 0; c < in; c++) A[(size_t)i * in + c] = i < r ? (float)(V[(size_t)i * in + c] / g) : 7.0f;
        for (int o = 0; o < out; o++) B[(size_t)o * R + i] = i < r ? (float)(U[(size_t)i * out + o] * s[i] * g) : -5.0f;
    }
    free(U);
    free(V);
}

static void product(const float *A, const float *B, int out, int in, int R, int r, double *W) {
    for (int o = 0; o < out; o++)
        for (int c = 0; c < in; c++) {
            double acc = 0;
            for (int i = 0; i < r; i++) acc += (double)B[(size_t)o * R + i] * A[(size_t)i * in + c];
            W[(size_t)o * in + c] = acc;
        }
}

static void test_factored_svd(void) {
    oz_rng rng;
    oz_rng_seed(&rng, 3);
    int out = 40, in = 24, R = 12, r = 9;
    double s_true[9] = {9, 7, 5, 3.5, 2, 1, 0.5, 0.25, 0.125};
    float *A = malloc(sizeof *A * (size_t)R * in), *B = malloc(sizeof *B * (size_t)out * R);
    make_factors(&rng, out, in, R, r, s_true, A, B);
    oz_err err = {0};
    double s[9];
    CHECK(oz_inrank_factored_svd(A, B, out, in, R, r, s, 0, NULL, NULL, &err) == OZ_OK, "%s", err.msg);
    for (int i = 0; i < r; i++) CHECK_CLOSE(s[i], s_true[i], 1e-5, 1e-6, "singular value");
    /* The same values through a dense SVD of the product (the route InRank avoids). */
    double *W = malloc(sizeof *W * (size_t)out * in);
    product(A, B, out, in, R, r, W);
    float *Wf = malloc(sizeof *Wf * (size_t)out * in), basis[24 * 9], sv[9];
    for (int i = 0; i < out * in; i++) Wf[i] = (float)W[i];
    CHECK(oz_subspace_svd(Wf, out, in, r, OZ_SUBSPACE_RIGHT, basis, sv, NULL, &err) == OZ_OK, "%s", err.msg);
    for (int i = 0; i < r; i++) CHECK_CLOSE(s[i], sv[i], 1e-4, 1e-5, "vs dense SVD");

    /* Truncation at k = r reproduces B_r A_r; at k < r it is the best rank-k approximation
     * (Frobenius error sqrt of the dropped s^2), and the factors are balanced. */
    for (int k = r; k >= 4; k -= 5) {
        float *An = malloc(sizeof *An * (size_t)k * in), *Bn = malloc(sizeof *Bn * (size_t)out * k);
        CHECK(oz_inrank_factored_svd(A, B, out, in, R, r, s, k, An, Bn, &err) == OZ_OK, "%s", err.msg);
        double *Wk = malloc(sizeof *Wk * (size_t)out * in), e2 = 0, want = 0;
        product(An, Bn, out, in, k, k, Wk);
        for (int i = 0; i < out * in; i++) e2 += (Wk[i] - W[i]) * (Wk[i] - W[i]);
        for (int i = k; i < r; i++) want += s_true[i] * s_true[i];
        CHECK_CLOSE(sqrt(e2), sqrt(want), 1e-4, 1e-5, "truncation error");
        for (int i = 0; i < k; i++) {
            double na = 0, nb = 0;
            for (int c = 0; c < in; c++) na += (double)An[(size_t)i * in + c] * An[(size_t)i * in + c];
            for (int o = 0; o < out; o++) nb += (double)Bn[(size_t)o * k + i] * Bn[(size_t)o * k + i];
            CHECK_CLOSE(na, s_true[i], 1e-4, 1e-6, "|A row|^2 = s_i");
            CHECK_CLOSE(nb, s_true[i], 1e-4, 1e-6, "|B col|^2 = s_i");
        }
        free(An);
        free(Bn);
        free(Wk);
    }
    /* The rule on the computed spectrum chooses what it chooses on the true one. */
    int n_full = in < out ? in : out;
    CHECK(oz_inrank_next_rank(s, r, n_full, 1, 3, R, 0.9) == oz_inrank_next_rank(s_true, r, n_full, 1, 3, R, 0.9),
          "rank from computed spectrum differs");
    /* Bad input: NaN, r above R. */
    A[5] = NAN;
    CHECK(oz_inrank_factored_svd(A, B, out, in, R, r, s, 0, NULL, NULL, &err) == OZ_ERR_NUMERIC, "NaN accepted");
    CHECK(oz_inrank_factored_svd(A, B, out, in, R, R + 1, s, 0, NULL, NULL, &err) == OZ_ERR_INPUT, "r > R accepted");
    CHECK(oz_inrank_workspace_bytes(out, in, r) > 0 && oz_inrank_workspace_bytes(out, in, 0) == 0, "workspace");
    free(A);
    free(B);
    free(W);
    free(Wf);
}

/* ---- on a model */

typedef struct {
    oz_backend be;
    oz_arena arena;
    oz_llama *m;
    oz_optimizer *opt;
    oz_llama_config cfg;
    oz_llama_shape shape;
    oz_optim_config ocfg;
    oz_inrank_settings s;
    oz_inrank_run run;
    int32_t ids[2 * 9], targets[2 * 9];
} ir_model;

/* A small model with every matrix InRank-factorized (attn,mlp), factors initialised as a fresh
 * run does, and an AdamW optimizer. */
static bool ir_setup_kind(ir_model *t, int buffer, oz_optim_kind kind) {
    memset(t, 0, sizeof *t);
    oz_err err = {0};
    oz_llama_config c = {31, 32, 48, 2, 4, 2, 8, 32, 1e-5f, 10000.0f, false, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0, {{0}}};
    t->s = (oz_inrank_settings){true, true, 2, buffer, 1, 0, 0, 0.9f};
    oz_inrank_factorize_config(&c, &t->s);
    t->cfg = c;
    oz_backend_cpu_create(&t->be, 0, &err);
    oz_arena_init(&t->arena, t->be.allocator);
    t->shape = (oz_llama_shape){.batch = 2, .seq = 9, .with_grads = true};
    bool ok = oz_llama_create(&t->m, &c, &t->be, &t->arena, t->shape, &err) == OZ_OK;
    CHECK(ok, "%s", err.msg);
    if (!ok) return false;
    const oz_param_layout *lay = oz_llama_get_layout(t->m);
    oz_llama_init_params(&c, lay, oz_llama_params(t->m), 5);
    oz_inrank_begin(&t->run, &c, &t->s);
    oz_inrank_init_factors(&t->run, &t->s, &c, lay, oz_llama_params(t->m), 5);
    CHECK(oz_inrank_apply(&t->run, &t->s, t->m, &err) == OZ_OK, "%s", err.msg);
    t->ocfg = (oz_optim_config){.kind = kind, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f};
    ok = oz_optimizer_create(&t->opt, &t->ocfg, lay, &t->be, &t->arena, &err) == OZ_OK;
    CHECK(ok, "%s", err.msg);
    if (!ok) return false;
    oz_optimizer_bind_weights(t->opt, oz_llama_weights(t->m));
    oz_llama_set_grad_sink(t->m, oz_optimizer_sink(t->opt));
    oz_rng rng;
    oz_rng_seed(&rng, 17);
    for (int i = 0; i < 18; i++) {
        t->ids[i] = (int32_t)oz_rng_below(&rng, 31);
        t->targets[i] = (int32_t)oz_rng_below(&rng, 31);
    }
    return true;
}

static bool ir_setup(ir_model *t, int buffer) { return ir_setup_kind(t, buffer, OZ_OPTIM_ADAMW); }

static void ir_teardown(ir_model *t) {
    if (t->opt) oz_optimizer_destroy(t->opt);
    if (t->m) oz_llama_destroy(t->m);
    oz_inrank_run_free(&t->run);
    oz_arena_destroy(&t->arena);
    t->be.destroy(&t->be);
}

static void ir_logits(ir_model *t, float *logits) {
    oz_err err = {0};
    oz_llama_batch b = {t->ids, NULL, 2, 9, logits};
    double s;
    long c;
    CHECK(oz_llama_forward(t->m, &b, &s, &c, &err) == OZ_OK, "%s", err.msg);
}

static double max_rel(const float *a, const float *b, size_t n) {
    double d = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        m = fmax(m, fabs((double)b[i]));
    }
    return d / (m + 1e-30);
}

static void ir_train_steps(ir_model *t, int steps) {
    oz_err err = {0};
    for (int st = 0; st < steps; st++) {
        oz_llama_batch b = {t->ids, t->targets, 2, 9, NULL};
        double s;
        long c;
        oz_llama_zero_grads(t->m);
        oz_optimizer_begin_step(t->opt, st, 1e-2f);
        CHECK(oz_llama_forward_backward(t->m, &b, 1.0f / 18, &s, &c, &err) == OZ_OK, "%s", err.msg);
        oz_llama_emit_accumulated(t->m);
        CHECK(oz_optimizer_status(t->opt, &err) == OZ_OK, "%s", err.msg);
        oz_optimizer_apply(t->opt, 1e-2f, 1.0f);
    }
}

/* Init: B_r0 A_r0 at ounce's dense scale; B's inactive columns zero, so growing the active rank
 * (even after training) changes no logit, and a checkpoint at R is the trained function. */
static void init_and_growth(oz_optim_kind kind) {
    ir_model t;
    if (!ir_setup_kind(&t, 4, kind)) return ir_teardown(&t);
    const oz_param_layout *lay = oz_llama_get_layout(t.m);
    /* Gate of layer 0: out 48, in 32, R 16, buffer min(4, 5) = 4, r0 = 6. */
    CHECK(oz_llama_rank(t.m, 0, OZ_M_GATE) == 16 && oz_llama_active_rank(t.m, 0, OZ_M_GATE) == 6, "R %d r %d",
          oz_llama_rank(t.m, 0, OZ_M_GATE), oz_llama_active_rank(t.m, 0, OZ_M_GATE));
    double sum2 = 0;
    size_t n = 0;
    for (int l = 0; l < 2; l++)
        for (int j = 0; j < OZ_LLAMA_MATRICES; j++) {
            float *A, *B;
            int R;
            oz_llama_factors(t.m, l, j, &A, &B, &R);
            int r = oz_llama_active_rank(t.m, l, j);
            int64_t out, in;
            oz_llama_matrix_dims(&t.cfg, j, &out, &in);
            double *W = malloc(sizeof *W * (size_t)(out * in));
            product(A, B, (int)out, (int)in, R, r, W);
            for (int64_t i = 0; i < out * in; i++) sum2 += W[i] * W[i];
            n += (size_t)(out * in);
            free(W);
        }
    CHECK_CLOSE(sqrt(sum2 / n), 0.02, 0.15, 0, "std of B_r0 A_r0 entries");
    (void)lay;
    ir_train_steps(&t, 5);
    size_t nl = (size_t)18 * 31;
    float *before = malloc(nl * sizeof *before), *after = malloc(nl * sizeof *after);
    ir_logits(&t, before);
    oz_err err = {0};
    double inactive = 0;
    for (int l = 0; l < 2; l++)
        for (int j = 0; j < OZ_LLAMA_MATRICES; j++) {
            float *A, *B;
            int R, r = oz_llama_active_rank(t.m, l, j);
            oz_llama_factors(t.m, l, j, &A, &B, &R);
            int64_t out, in;
            oz_llama_matrix_dims(&t.cfg, j, &out, &in);
            for (int64_t o = 0; o < out; o++)
                for (int c = r; c < R; c++) inactive += fabs(B[o * R + c]);
            oz_llama_set_active_rank(t.m, l, j, R, &err);
        }
    CHECK(inactive == 0, "inactive columns of B moved during training (sum %g)", inactive);
    ir_logits(&t, after);
    /* Only the GEMMs' summation order differs (longer inner dimension, zeros added). */
    CHECK(max_rel(after, before, nl) < 1e-6, "growing to R after training changed logits by %g", max_rel(after, before, nl));
    free(before);
    free(after);
    ir_teardown(&t);
}

static void test_init_and_growth_keep_function(void) {
    init_and_growth(OZ_OPTIM_ADAMW);
    init_and_growth(OZ_OPTIM_ADAMW8BIT); /* zero moments stay exactly zero through 8-bit codes */
}

/* The check on a model: a matrix given a chosen spectrum gets the rank the rule gives that
 * spectrum; a flat-spectrum matrix grows by b - 1; ranks never shrink over repeated checks. */
static void test_check_on_model(void) {
    ir_model t;
    if (!ir_setup(&t, 5)) return ir_teardown(&t);
    oz_rng rng;
    oz_rng_seed(&rng, 8);
    float *A, *B;
    int R;
    oz_llama_factors(t.m, 1, OZ_M_UP, &A, &B, &R); /* out 48, in 32, R 16, b 5 */
    int r = oz_llama_active_rank(t.m, 1, OZ_M_UP); /* 2 + 5 = 7 */
    double s_true[7] = {10, 8, 6, 0.1, 0.1, 0.1, 0.1};
    make_factors(&rng, 48, 32, R, r, s_true, A, B);
    for (int o = 0; o < 48; o++) for (int c = r; c < R; c++) B[o * R + c] = 0;
    int want = oz_inrank_next_rank(s_true, r, 32, 2, 5, R, 0.9);
    CHECK(want == 3, "expected rule to give 3, got %d", want);
    oz_err err = {0};
    int grown = 0;
    CHECK(oz_inrank_check(&t.run, &t.s, t.m, &t.arena, &grown, &err) == OZ_OK, "%s", err.msg);
    CHECK(t.run.k[1][OZ_M_UP] == want, "check chose %d, rule %d", t.run.k[1][OZ_M_UP], want);
    CHECK(oz_llama_active_rank(t.m, 1, OZ_M_UP) == want + 5, "active %d", oz_llama_active_rank(t.m, 1, OZ_M_UP));
    CHECK(t.arena.peak[OZ_MEM_SCRATCH] >= oz_inrank_check_bytes(&t.cfg) - oz_inrank_check_bytes(&t.cfg) / 2,
          "workspace not noted");
    int prev[2][OZ_LLAMA_MATRICES];
    memcpy(prev, t.run.k, sizeof prev);
    for (int round = 0; round < 6; round++) {
        ir_train_steps(&t, 2);
        CHECK(oz_inrank_check(&t.run, &t.s, t.m, &t.arena, &grown, &err) == OZ_OK, "%s", err.msg);
        for (int l = 0; l < 2; l++)
            for (int j = 0; j < OZ_LLAMA_MATRICES; j++) {
                CHECK(t.run.k[l][j] >= prev[l][j], "rank of %d/%d shrank %d -> %d", l, j, prev[l][j], t.run.k[l][j]);
                int Rj = oz_llama_rank(t.m, l, j);
                CHECK(t.run.k[l][j] <= Rj - oz_inrank_buffer(5, Rj) || t.run.k[l][j] == prev[l][j], "rank past R - b");
                prev[l][j] = t.run.k[l][j];
            }
    }
    ir_teardown(&t);
}

/* The freeze: truncating at ranks that keep every nonzero singular value gives the same logits;
 * the rebuilt model has ranks k, the embedding's moments survive, the factors' start fresh, and
 * training continues. */
static void test_freeze_same_function(void) {
    ir_model t;
    if (!ir_setup(&t, 4)) return ir_teardown(&t);
    ir_train_steps(&t, 3);
    /* Ranks k = the active rank: B_r A_r has rank <= r, so nothing nonzero is dropped. */
    for (int l = 0; l < 2; l++)
        for (int j = 0; j < OZ_LLAMA_MATRICES; j++) t.run.k[l][j] = oz_llama_active_rank(t.m, l, j);
    size_t nl = (size_t)18 * 31;
    float *before = malloc(nl * sizeof *before), *after = malloc(nl * sizeof *after);
    ir_logits(&t, before);
    const oz_param_layout *lay = oz_llama_get_layout(t.m);
    const oz_param_info *emb = oz_param_layout_find(lay, "model.embed_tokens.weight");
    float *embed_m = malloc(emb->numel * sizeof *embed_m);
    char path[] = "/tmp/ounce-test-inrank-opt.XXXXXX";
    int fd = mkstemp(path);
    if (fd >= 0) close(fd);
    oz_err err = {0};
    CHECK(oz_optimizer_save(t.opt, path, &err) == OZ_OK, "%s", err.msg);
    size_t weights_before = t.arena.current[OZ_MEM_WEIGHTS];
    CHECK(oz_inrank_freeze(&t.run, 3, &t.m, &t.opt, &t.cfg, &t.be, &t.arena, t.shape, &t.ocfg, &err) == OZ_OK, "%s",
          err.msg);
    if (!t.m) {
        free(before), free(after), free(embed_m);
        return ir_teardown(&t);
    }
    ir_logits(&t, after);
    CHECK(max_rel(after, before, nl) < 2e-5, "freeze changed logits by %g", max_rel(after, before, nl));
    CHECK(t.run.stage == 2 && oz_llama_rank(t.m, 0, OZ_M_GATE) == 6 && oz_llama_active_rank(t.m, 0, OZ_M_GATE) == 6,
          "rebuilt at rank %d", oz_llama_rank(t.m, 0, OZ_M_GATE));
    CHECK(t.arena.current[OZ_MEM_WEIGHTS] < weights_before, "weights did not shrink (%zu -> %zu)", weights_before,
          t.arena.current[OZ_MEM_WEIGHTS]);
    /* Moments: the embedding's equal the saved ones, the factors' are zero (fresh). */
    char path2[] = "/tmp/ounce-test-inrank-opt2.XXXXXX";
    fd = mkstemp(path2);
    if (fd >= 0) close(fd);
    CHECK(oz_optimizer_save(t.opt, path2, &err) == OZ_OK, "%s", err.msg);
    oz_safetensors a, b;
    if (oz_safetensors_open(&a, path, &err) == OZ_OK) {
        if (oz_safetensors_open(&b, path2, &err) == OZ_OK) {
            const oz_st_tensor *ea = oz_safetensors_find(&a, "exp_avg.model.embed_tokens.weight");
            const oz_st_tensor *eb = oz_safetensors_find(&b, "exp_avg.model.embed_tokens.weight");
            CHECK(ea && eb && ea->nbytes == eb->nbytes && memcmp(ea->data, eb->data, ea->nbytes) == 0,
                  "embedding moments not carried over");
            const oz_st_tensor *fa = oz_safetensors_find(&b, "exp_avg.model.layers.0.mlp.gate_proj.lrc_A.weight");
            double nz = 0;
            for (size_t i = 0; fa && i < fa->numel; i++) nz += fabs(((const float *)fa->data)[i]);
            CHECK(fa && nz == 0, "factor moments not reset");
            oz_safetensors_close(&b);
        }
        oz_safetensors_close(&a);
    }
    remove(path);
    remove(path2);
    ir_train_steps(&t, 2);
    ir_logits(&t, after);
    CHECK(max_rel(after, before, nl) > 1e-4 && isfinite(after[0]), "training after the freeze did nothing");
    free(before);
    free(after);
    free(embed_m);
    ir_teardown(&t);
}

static void test_settings_and_state(void) {
    bool attn, mlp;
    CHECK(oz_inrank_targets_parse("mlp", &attn, &mlp) && !attn && mlp, "mlp");
    CHECK(oz_inrank_targets_parse("attn,mlp", &attn, &mlp) && attn && mlp, "attn,mlp");
    CHECK(!oz_inrank_targets_parse("attn", &attn, &mlp) && !oz_inrank_targets_parse("", &attn, &mlp), "bad targets");
    oz_llama_config c = {31, 32, 48, 2, 4, 2, 8, 32, 1e-5f, 10000.0f, false, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0, {{0}}};
    oz_inrank_settings s = {false, true, 2, 100, 25, 200, 0, 0.9f};
    oz_inrank_factorize_config(&c, &s);
    CHECK(c.low_rank[0][OZ_M_GATE] == 16 && c.low_rank[1][OZ_M_DOWN] == 16 && c.low_rank[0][OZ_M_Q] == 0,
          "factorize mlp");
    oz_inrank_run run, back;
    memset(&run, 0, sizeof run);
    oz_inrank_begin(&run, &c, &s);
    run.k[1][OZ_M_UP] = 9;
    cJSON *j = oz_inrank_state_to_json(&run, &c);
    oz_err err = {0};
    memset(&back, 0, sizeof back);
    CHECK(oz_inrank_state_from_json(&back, j, &c, "state", &err) == OZ_OK, "%s", err.msg);
    CHECK(memcmp(back.k, run.k, sizeof run.k) == 0 && back.stage == 1, "state round trip");
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(j, "ranks"), "model.layers.1.mlp.up_proj", cJSON_CreateNumber(99));
    CHECK(oz_inrank_state_from_json(&back, j, &c, "state", &err) == OZ_ERR_INPUT, "rank above R accepted");
    cJSON_Delete(j);
    /* The check schedule: from warmup on, every check_every optimizer steps, stage 1 only. */
    CHECK(!oz_inrank_due(&run, &s, 199) && oz_inrank_due(&run, &s, 200) && !oz_inrank_due(&run, &s, 210) &&
              oz_inrank_due(&run, &s, 225),
          "schedule");
    run.stage = 2;
    CHECK(!oz_inrank_due(&run, &s, 225), "checks after the freeze");
}

int main(void) {
    RUN(test_rule_known_spectra);
    RUN(test_rule_random_never_shrinks);
    RUN(test_factored_svd);
    RUN(test_settings_and_state);
    RUN(test_init_and_growth_keep_function);
    RUN(test_check_on_model);
    RUN(test_freeze_same_function);
    return oz_test_finish("test_inrank");
}
