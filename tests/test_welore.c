/* WeLore's rank reduction: spectra, balanced factors that reproduce the truncated SVD, the
 * threshold bisection hitting a requested ratio, the LRC / N-LRC rule, the uniform baseline. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "model/welore.h"
#include "util/rng.h"

/* n orthonormal vectors of length dim as the columns of Q (dim x n, row-major), by Gram-Schmidt in
 * double on Gaussian vectors. */
static void orthonormal(double *Q, int dim, int n, oz_rng *rng) {
    for (int j = 0; j < n; j++) {
        for (int i = 0; i < dim; i++) Q[i * n + j] = oz_rng_normal(rng);
        for (int pass = 0; pass < 2; pass++)
            for (int k = 0; k < j; k++) {
                double dot = 0;
                for (int i = 0; i < dim; i++) dot += Q[i * n + j] * Q[i * n + k];
                for (int i = 0; i < dim; i++) Q[i * n + j] -= dot * Q[i * n + k];
            }
        double norm = 0;
        for (int i = 0; i < dim; i++) norm += Q[i * n + j] * Q[i * n + j];
        for (int i = 0; i < dim; i++) Q[i * n + j] /= sqrt(norm);
    }
}

/* W = U diag(s) V^T (out x in) with known singular values s (decreasing); U, V kept for the
 * truncation. */
static void known_matrix(int out, int in, const double *s, double *U, double *V, float *W, double *Wd, oz_rng *rng) {
    int r = out < in ? out : in;
    orthonormal(U, out, r, rng);
    orthonormal(V, in, r, rng);
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) {
            double acc = 0;
            for (int k = 0; k < r; k++) acc += U[o * r + k] * s[k] * V[i * r + k];
            Wd[o * in + i] = acc;
            W[o * in + i] = (float)acc;
        }
}

static void test_spectrum_and_factors(void) {
    enum { OUT = 24, IN = 14, R = 14 };
    oz_rng rng;
    oz_rng_seed(&rng, 3);
    double s[R], U[OUT * R], V[IN * R], Wd[OUT * IN];
    float W[OUT * IN], sv[R];
    for (int i = 0; i < R; i++) s[i] = 10.0 * pow(0.7, i) + 0.05; /* heavy-tailed, distinct */
    known_matrix(OUT, IN, s, U, V, W, Wd, &rng);
    oz_err err = {0};
    CHECK(oz_welore_spectrum(W, OUT, IN, sv, &err) == OZ_OK, "%s", err.msg);
    for (int i = 0; i < R; i++) CHECK_CLOSE(sv[i], s[i], 2e-5, 2e-6, "singular value");
    /* Wide matrices too (out < in). */
    float Wt[IN * OUT], svt[R];
    for (int o = 0; o < OUT; o++)
        for (int i = 0; i < IN; i++) Wt[i * OUT + o] = W[o * IN + i];
    CHECK(oz_welore_spectrum(Wt, IN, OUT, svt, &err) == OZ_OK, "%s", err.msg);
    for (int i = 0; i < R; i++) CHECK_CLOSE(svt[i], s[i], 2e-5, 2e-6, "singular value of the transpose");
    for (int k = 1; k <= R; k += 4) {
        float A[R * IN], B[OUT * R];
        CHECK(oz_welore_factors(W, OUT, IN, k, A, B, &err) == OZ_OK, "%s", err.msg);
        double worst = 0, norm = 0;
        for (int o = 0; o < OUT; o++)
            for (int i = 0; i < IN; i++) {
                double trunc = 0, ba = 0;
                for (int j = 0; j < k; j++) trunc += U[o * R + j] * s[j] * V[i * R + j];
                for (int j = 0; j < k; j++) ba += (double)B[o * k + j] * A[j * IN + i];
                worst = fmax(worst, fabs(ba - trunc));
                norm = fmax(norm, fabs(Wd[o * IN + i]));
            }
        CHECK(worst <= 1e-5 * norm, "rank %d: B A differs from the truncated SVD by %.3g (of %.3g)", k, worst, norm);
        /* Balanced: row i of A and column i of B both have norm sqrt(s_i). */
        for (int j = 0; j < k; j++) {
            double na = 0, nb = 0;
            for (int i = 0; i < IN; i++) na += (double)A[j * IN + i] * A[j * IN + i];
            for (int o = 0; o < OUT; o++) nb += (double)B[o * k + j] * B[o * k + j];
            CHECK_CLOSE(sqrt(na), sqrt(s[j]), 1e-4, 0, "A row norm");
            CHECK_CLOSE(sqrt(nb), sqrt(s[j]), 1e-4, 0, "B column norm");
        }
    }
}

/* Many synthetic spectra of different shapes: the bisected tau hits the requested ratio to within
 * one rank step (min-ratio 0), the ratio never falls as tau grows, and with min-ratio 0.5 every
 * matrix follows the LRC rule. */
static void test_bisection_and_rule(void) {
    enum { M = 40 };
    oz_rng rng;
    oz_rng_seed(&rng, 9);
    float *sv[M];
    int r[M], kept[M], total = 0;
    bool lrc[M];
    for (int m = 0; m < M; m++) {
        r[m] = 16 + (int)oz_rng_below(&rng, 48);
        total += r[m];
        sv[m] = malloc((size_t)r[m] * sizeof *sv[m]);
        double decay = 0.5 + 0.49 * (m % 10) / 9.0; /* heavy tails to nearly flat */
        double v = 5 + m;
        for (int i = 0; i < r[m]; i++, v *= decay) sv[m][i] = (float)(v + 1e-3 * (r[m] - i)); /* distinct values */
    }
    oz_welore_plan plan = {M, (const float *const *)sv, r, kept, lrc};
    double prev = -1;
    for (double tau = 0; tau <= 1.0001; tau += 0.05) {
        double got = oz_welore_assign(&plan, tau, 0.0);
        CHECK(got >= prev, "ratio fell from %.4f to %.4f at tau %.2f", prev, got, tau);
        prev = got;
    }
    const double targets[] = {0.1, 0.3, 0.5, 0.7};
    for (size_t t = 0; t < sizeof targets / sizeof targets[0]; t++) {
        double achieved;
        double tau = oz_welore_find_tau(&plan, targets[t], 0.0, &achieved);
        CHECK(fabs(achieved - targets[t]) <= 2.0 / total, "target %.2f: tau %.5f gives %.5f", targets[t], tau, achieved);
        int removed = 0;
        for (int m = 0; m < M; m++) {
            CHECK(lrc[m] == (kept[m] < r[m]), "min-ratio 0: matrix %d lrc %d with %d of %d kept", m, lrc[m], kept[m], r[m]);
            removed += r[m] - kept[m];
        }
        CHECK_CLOSE((double)removed / total, achieved, 1e-12, 0, "reported ratio matches the kept ranks");
        /* min-ratio 0.5: LRC iff more than half the rank is pruned; N-LRCs keep everything. */
        double got = oz_welore_assign(&plan, tau, 0.5);
        int removed5 = 0;
        for (int m = 0; m < M; m++) {
            int p = oz_welore_pruned(sv[m], r[m], tau);
            CHECK(lrc[m] == ((double)p / r[m] > 0.5), "matrix %d: %d of %d pruned, lrc %d", m, p, r[m], lrc[m]);
            CHECK(kept[m] == (lrc[m] ? r[m] - p : r[m]), "matrix %d keeps %d", m, kept[m]);
            removed5 += r[m] - kept[m];
        }
        CHECK_CLOSE(got, (double)removed5 / total, 1e-12, 0, "min-ratio 0.5 ratio counts only LRCs' pruned ranks");
    }
    /* The uniform baseline. */
    double u = oz_welore_uniform(&plan, 0.6, 0.5);
    int removed = 0;
    for (int m = 0; m < M; m++) {
        int p = (int)lround(0.6 * r[m]);
        CHECK(lrc[m] && kept[m] == r[m] - p, "uniform: matrix %d keeps %d of %d", m, kept[m], r[m]);
        removed += p;
    }
    CHECK_CLOSE(u, (double)removed / total, 1e-12, 0, "uniform ratio");
    oz_welore_uniform(&plan, 0.3, 0.5);
    for (int m = 0; m < M; m++) CHECK(!lrc[m] && kept[m] == r[m], "uniform 30%% with min-ratio 0.5 factored matrix %d", m);
    /* Edge cases: a flat spectrum prunes nothing; the top direction always stays. */
    float flat[4] = {2, 2, 2, 2}, steep[3] = {9, 1, 0};
    CHECK(oz_welore_pruned(flat, 4, 0.9) == 0, "flat spectrum pruned");
    CHECK(oz_welore_pruned(steep, 3, 1.0) == 2, "tau 1 should keep only the top direction");
    for (int m = 0; m < M; m++) free(sv[m]);
}

int main(void) {
    RUN(test_spectrum_and_factors);
    RUN(test_bisection_and_rule);
    return oz_test_finish("test_welore");
}
