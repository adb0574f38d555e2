/* GaLore subspace tests. Matrices are built as G = U diag(s) V^T + small noise from random
 * orthonormal U, V, so the true top-r subspace and singular values are known. The exact SVD must
 * recover them; the randomized finder must land close to the exact subspace, and power
 * iterations must measurably help when the spectrum is flat. The diagnostics are checked on
 * hand-made bases with known angles first, since every other check relies on them. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "numeric/subspace.h"

#define PI 3.14159265358979323846

static void *xalloc(size_t bytes) {
    void *p = calloc(bytes ? bytes : 1, 1);
    if (!p) {
        fprintf(stderr, "test_subspace: out of memory\n");
        exit(1);
    }
    return p;
}

/* Column-major (rows, cols) double matrix with orthonormal columns: Gaussian, then modified
 * Gram-Schmidt twice (once is not enough in floating point for a tight orthonormality test). */
static double *random_orthonormal(int rows, int cols, oz_rng *rng) {
    double *q = xalloc((size_t)rows * cols * sizeof(double));
    for (size_t i = 0; i < (size_t)rows * cols; i++) q[i] = oz_rng_normal(rng);
    for (int pass = 0; pass < 2; pass++)
        for (int j = 0; j < cols; j++) {
            double *v = q + (size_t)j * rows;
            for (int k = 0; k < j; k++) {
                const double *u = q + (size_t)k * rows;
                double d = 0;
                for (int i = 0; i < rows; i++) d += u[i] * v[i];
                for (int i = 0; i < rows; i++) v[i] -= d * u[i];
            }
            double nrm = 0;
            for (int i = 0; i < rows; i++) nrm += v[i] * v[i];
            nrm = sqrt(nrm);
            for (int i = 0; i < rows; i++) v[i] /= nrm;
        }
    return q;
}

typedef struct {
    int m, n, k;
    float *G;       /* (m, n) row-major */
    float *P;       /* true U[:, :k] as (m, k) row-major: COLUMNS layout */
    float *Qt;      /* true Vt[:k, :] as (k, n) row-major: ROWS layout */
    double *s;      /* (k) */
} test_matrix;

/* spectrum(i) gives s_i; noise is Gaussian with that standard deviation per entry. */
static test_matrix make_matrix(int m, int n, double (*spectrum)(int), double noise, uint64_t seed) {
    test_matrix t = {m, n, m < n ? m : n, NULL, NULL, NULL, NULL};
    oz_rng rng;
    oz_rng_seed(&rng, seed);
    double *u = random_orthonormal(m, t.k, &rng), *v = random_orthonormal(n, t.k, &rng);
    t.s = xalloc((size_t)t.k * sizeof(double));
    for (int i = 0; i < t.k; i++) t.s[i] = spectrum(i);
    t.G = xalloc((size_t)m * n * sizeof(float));
    t.P = xalloc((size_t)m * t.k * sizeof(float));
    t.Qt = xalloc((size_t)t.k * n * sizeof(float));
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double acc = 0;
            for (int l = 0; l < t.k; l++) acc += u[i + (size_t)l * m] * t.s[l] * v[j + (size_t)l * n];
            t.G[(size_t)i * n + j] = (float)(acc + noise * oz_rng_normal(&rng));
        }
    for (int i = 0; i < m; i++)
        for (int l = 0; l < t.k; l++) t.P[(size_t)i * t.k + l] = (float)u[i + (size_t)l * m];
    for (int l = 0; l < t.k; l++)
        for (int j = 0; j < n; j++) t.Qt[(size_t)l * n + j] = (float)v[j + (size_t)l * n];
    free(u);
    free(v);
    return t;
}

static void free_matrix(test_matrix *t) {
    free(t->G);
    free(t->P);
    free(t->Qt);
    free(t->s);
}

/* The leading r vectors of a basis of rank k in the given side's layout, as a compact copy. */
static float *leading(const float *basis, int dim, int k, int r, int side) {
    float *out = xalloc((size_t)dim * r * sizeof(float));
    if (side == OZ_SUBSPACE_RIGHT)
        memcpy(out, basis, (size_t)r * dim * sizeof(float));
    else
        for (int i = 0; i < dim; i++) memcpy(out + (size_t)i * r, basis + (size_t)i * k, (size_t)r * sizeof(float));
    return out;
}

static int layout_of(int side) { return side == OZ_SUBSPACE_LEFT ? OZ_SUBSPACE_COLUMNS : OZ_SUBSPACE_ROWS; }

static double decaying(int i) { return pow(0.8, i) + 0.01; } /* floor keeps the full range well conditioned */

/* ---- diagnostics on hand-made bases ---- */

static void test_principal_angle_helper(void) {
    /* dim 5, r 2. A = [e0, e1]; B rotates e0 towards e2 by t, and mixes within span(A) too. */
    const double ts[] = {0.0, 1e-5, 0.3, 1.2, PI / 2};
    for (size_t c = 0; c < sizeof ts / sizeof ts[0]; c++) {
        const double t = ts[c];
        float A[10] = {0}, B[10] = {0}, Ar[10], Br[10];
        A[0 * 2 + 0] = 1; /* (dim, r) columns layout: A[i*2 + j] */
        A[1 * 2 + 1] = 1;
        /* b0 = cos t e0 + sin t e2, b1 = e1, then rotate (b0, b1) by 0.7 inside their span. */
        double b0[5] = {cos(t), 0, sin(t), 0, 0}, b1[5] = {0, 1, 0, 0, 0}, c7 = cos(0.7), s7 = sin(0.7);
        for (int i = 0; i < 5; i++) {
            B[i * 2 + 0] = (float)(c7 * b0[i] - s7 * b1[i]);
            B[i * 2 + 1] = (float)(s7 * b0[i] + c7 * b1[i]);
        }
        for (int i = 0; i < 5; i++)
            for (int j = 0; j < 2; j++) {
                Ar[j * 5 + i] = A[i * 2 + j];
                Br[j * 5 + i] = B[i * 2 + j];
            }
        double tol = t < 1e-3 ? 1e-6 : 1e-6 * (1 + t);
        char what[64];
        snprintf(what, sizeof what, "angle %.3g (columns)", t);
        CHECK_CLOSE(oz_subspace_principal_angles_max(A, B, 5, 2, OZ_SUBSPACE_COLUMNS), t, 0, tol, what);
        snprintf(what, sizeof what, "angle %.3g (rows)", t);
        CHECK_CLOSE(oz_subspace_principal_angles_max(Ar, Br, 5, 2, OZ_SUBSPACE_ROWS), t, 0, tol, what);
        CHECK_CLOSE(oz_subspace_principal_angles_max(B, A, 5, 2, OZ_SUBSPACE_COLUMNS), t, 0, tol, "symmetric");
    }
    /* Orthogonal complements in R^6: span(e0..e2) vs span(e3..e5) -> pi/2. */
    float X[18] = {0}, Y[18] = {0};
    for (int j = 0; j < 3; j++) {
        X[j * 3 + j] = 1;
        Y[(j + 3) * 3 + j] = 1;
    }
    CHECK_CLOSE(oz_subspace_principal_angles_max(X, Y, 6, 3, OZ_SUBSPACE_COLUMNS), PI / 2, 0, 1e-7, "complements");
    CHECK_CLOSE(oz_subspace_principal_angles_max(X, X, 6, 3, OZ_SUBSPACE_COLUMNS), 0.0, 0, 1e-7, "identical");
    CHECK(isnan(oz_subspace_principal_angles_max(X, Y, 2, 3, OZ_SUBSPACE_COLUMNS)), "dim < r must give NaN");
    CHECK(isnan(oz_subspace_principal_angles_max(X, Y, 6, 0, OZ_SUBSPACE_COLUMNS)), "r = 0 must give NaN");

    /* Orthonormality error: columns e0 and 2 e1 -> Gram diag(1, 4) -> 3; add 0.5 e0 to column 2
     * -> off-diagonal 0.5, diagonal 4.25 -> 3.25. */
    float Z[6] = {1, 0, 0, 2, 0, 0};
    CHECK_CLOSE(oz_subspace_orthonormality_error(Z, 3, 2, OZ_SUBSPACE_COLUMNS), 3.0, 0, 1e-12, "orth error");
    Z[1] = 0.5f;
    CHECK_CLOSE(oz_subspace_orthonormality_error(Z, 3, 2, OZ_SUBSPACE_COLUMNS), 3.25, 0, 1e-12, "orth error 2");
    CHECK_CLOSE(oz_subspace_orthonormality_error(X, 6, 3, OZ_SUBSPACE_COLUMNS), 0.0, 0, 0, "orth error of identity");
}

/* ---- exact SVD ---- */

static void check_exact(const test_matrix *t, int r, int side) {
    const int dim = side == OZ_SUBSPACE_LEFT ? t->m : t->n, rank = oz_subspace_rank(t->m, t->n, r);
    float *basis = xalloc(((size_t)dim * rank + 16) * sizeof(float)), *sv = xalloc(((size_t)rank + 1) * sizeof(float));
    for (int i = 0; i < 16; i++) basis[(size_t)dim * rank + i] = 12345.0f; /* canary past the end */
    sv[rank] = 12345.0f;
    oz_err err = {0};
    int got_rank = -1;
    oz_status st = oz_subspace_svd(t->G, t->m, t->n, r, side, basis, sv, &got_rank, &err);
    CHECK(st == OZ_OK, "svd (%d,%d) r=%d side=%d: %s", t->m, t->n, r, side, err.msg);
    CHECK(got_rank == rank && rank == (r < t->k ? r : t->k), "rank %d, expected %d", got_rank, rank);
    int canary_ok = sv[rank] == 12345.0f;
    for (int i = 0; i < 16; i++) canary_ok &= basis[(size_t)dim * rank + i] == 12345.0f;
    CHECK(canary_ok, "svd wrote past rank %d", rank);

    double orth = oz_subspace_orthonormality_error(basis, dim, rank, layout_of(side));
    CHECK(orth < 1e-5, "exact orthonormality error %.3g (%d,%d) r=%d side=%d", orth, t->m, t->n, rank, side);
    const float *truth = side == OZ_SUBSPACE_LEFT ? t->P : t->Qt;
    float *true_r = leading(truth, dim, t->k, rank, side);
    double ang = oz_subspace_principal_angles_max(basis, true_r, dim, rank, layout_of(side));
    CHECK(ang < 1e-3, "exact angle to the true subspace %.3g rad (%d,%d) r=%d side=%d", ang, t->m, t->n, rank, side);
    double worst_sv = 0;
    for (int i = 0; i < rank; i++) {
        double d = fabs(sv[i] - t->s[i]);
        if (d > worst_sv) worst_sv = d;
        if (i > 0) CHECK(sv[i] <= sv[i - 1], "singular values must decrease: %g > %g", sv[i], sv[i - 1]);
    }
    CHECK(worst_sv < 1e-4, "singular values off by %.3g", worst_sv);
    /* Sign convention: each vector's largest-magnitude entry is positive. */
    int signs_ok = 1;
    for (int j = 0; j < rank; j++) {
        float best = 0;
        for (int i = 0; i < dim; i++) {
            float x = side == OZ_SUBSPACE_LEFT ? basis[(size_t)i * rank + j] : basis[(size_t)j * dim + i];
            if (fabsf(x) > fabsf(best)) best = x;
        }
        signs_ok &= best > 0;
    }
    CHECK(signs_ok, "sign convention violated");
    free(true_r);
    free(basis);
    free(sv);
}

static void test_exact(void) {
    test_matrix wide = make_matrix(40, 70, decaying, 1e-6, 11), tall = make_matrix(90, 30, decaying, 1e-6, 12);
    for (int side = 0; side < 2; side++) {
        const int rs[] = {1, 6, 1000};
        for (int i = 0; i < 3; i++) {
            check_exact(&wide, rs[i], side);
            check_exact(&tall, rs[i], side);
        }
    }
    free_matrix(&wide);
    free_matrix(&tall);
}

/* ---- randomized ---- */

/* Largest angle between the randomized basis and the exact one at the same rank. */
static double randomized_angle(const test_matrix *t, int r, int side, int oversample, int power, uint64_t seed,
                               double *orth_out) {
    const int dim = side == OZ_SUBSPACE_LEFT ? t->m : t->n, rank = oz_subspace_rank(t->m, t->n, r);
    float *exact = xalloc(((size_t)dim * rank) * sizeof(float)), *rnd = xalloc(((size_t)dim * rank + 16) * sizeof(float));
    for (int i = 0; i < 16; i++) rnd[(size_t)dim * rank + i] = 12345.0f;
    oz_err err = {0};
    oz_rng rng;
    oz_rng_seed(&rng, seed);
    int got_rank = -1;
    CHECK(oz_subspace_svd(t->G, t->m, t->n, r, side, exact, NULL, NULL, &err) == OZ_OK, "%s", err.msg);
    CHECK(oz_subspace_randomized(t->G, t->m, t->n, r, side, oversample, power, &rng, rnd, &got_rank, &err) == OZ_OK,
          "randomized: %s", err.msg);
    CHECK(got_rank == rank, "randomized rank %d, expected %d", got_rank, rank);
    int canary_ok = 1;
    for (int i = 0; i < 16; i++) canary_ok &= rnd[(size_t)dim * rank + i] == 12345.0f;
    CHECK(canary_ok, "randomized wrote past rank %d", rank);
    if (orth_out) *orth_out = oz_subspace_orthonormality_error(rnd, dim, rank, layout_of(side));
    double ang = oz_subspace_principal_angles_max(rnd, exact, dim, rank, layout_of(side));
    free(exact);
    free(rnd);
    return ang;
}

static void test_randomized(void) {
    test_matrix wide = make_matrix(40, 70, decaying, 1e-6, 21), tall = make_matrix(90, 30, decaying, 1e-6, 22);
    const test_matrix *ms[] = {&wide, &tall};
    double worst = 0;
    for (int mi = 0; mi < 2; mi++)
        for (int side = 0; side < 2; side++) {
            const int rs[] = {1, 6, 1000};
            for (int i = 0; i < 3; i++) {
                double orth = -1;
                double ang = randomized_angle(ms[mi], rs[i], side, -1, -1, 100 + i, &orth);
                CHECK(orth < 1e-5, "randomized orthonormality error %.3g (%d,%d) r=%d side=%d", orth, ms[mi]->m,
                      ms[mi]->n, rs[i], side);
                /* Expected about (s_{r+8}/s_r)^5 < 1e-4 for r = 1, 6, and rounding only at r = min(m, n). */
                CHECK(ang < 1e-2, "randomized angle %.3g rad (%d,%d) r=%d side=%d", ang, ms[mi]->m, ms[mi]->n, rs[i], side);
                if (ang > worst) worst = ang;
            }
        }
    fprintf(stderr, "  randomized vs exact, decaying spectrum: largest angle %.2e rad (bound 1e-2)\n", worst);
    free_matrix(&wide);
    free_matrix(&tall);
}

/* Ten equal singular values over a long flat tail at half their size: without power iterations
 * the sketch mixes in the tail; each iteration shrinks its weight by (1/2)^2. */
static double flat_spectrum(int i) { return i < 10 ? 1.0 : 0.5; }

static void test_power_iterations_matter(void) {
    test_matrix t = make_matrix(150, 200, flat_spectrum, 1e-6, 31);
    for (int side = 0; side < 2; side++) {
        double a0 = randomized_angle(&t, 10, side, 8, 0, 7, NULL);
        double a2 = randomized_angle(&t, 10, side, 8, 2, 7, NULL);
        fprintf(stderr, "  flat spectrum side %d: largest angle %.3g rad with 0 power iterations, %.3g with 2\n", side,
                a0, a2);
        CHECK(a0 > 0.3, "0 power iterations should be far off on a flat spectrum: %.3g", a0);
        CHECK(a2 < a0 / 2, "2 power iterations should be much closer: %.3g vs %.3g", a2, a0);
    }
    free_matrix(&t);
}

static void test_determinism(void) {
    test_matrix t = make_matrix(50, 80, decaying, 1e-6, 41);
    const int r = 7;
    float *a = xalloc((size_t)50 * r * sizeof(float)), *b = xalloc((size_t)50 * r * sizeof(float));
    float *c = xalloc((size_t)50 * r * sizeof(float));
    oz_rng r1, r2, r3;
    oz_rng_seed(&r1, 5);
    oz_rng_seed(&r2, 5);
    oz_rng_seed(&r3, 6);
    oz_err err = {0};
    CHECK(oz_subspace_randomized(t.G, 50, 80, r, OZ_SUBSPACE_LEFT, 8, 2, &r1, a, NULL, &err) == OZ_OK, "%s", err.msg);
    CHECK(oz_subspace_randomized(t.G, 50, 80, r, OZ_SUBSPACE_LEFT, 8, 2, &r2, b, NULL, &err) == OZ_OK, "%s", err.msg);
    CHECK(oz_subspace_randomized(t.G, 50, 80, r, OZ_SUBSPACE_LEFT, 8, 2, &r3, c, NULL, &err) == OZ_OK, "%s", err.msg);
    CHECK(memcmp(a, b, (size_t)50 * r * sizeof(float)) == 0, "same seed must give a bitwise identical basis");
    CHECK(memcmp(&r1, &r2, sizeof r1) == 0, "same seed must leave the same rng state");
    CHECK(memcmp(a, c, (size_t)50 * r * sizeof(float)) != 0, "another seed should draw another sketch");
    /* ...and, with the sign convention, land on (numerically) the same vectors anyway. */
    double maxdiff = 0;
    for (size_t i = 0; i < (size_t)50 * r; i++) maxdiff = fmax(maxdiff, fabs(a[i] - c[i]));
    CHECK(maxdiff < 1e-3, "two seeds disagree by %.3g after sign fixing", maxdiff);
    free(a);
    free(b);
    free(c);
    free_matrix(&t);
}

static void test_bad_arguments(void) {
    float G[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, basis[64];
    oz_rng rng;
    oz_rng_seed(&rng, 1);
    const struct { int m, n, r, side; } bad[] = {{3, 4, 0, 0}, {3, 4, -2, 1}, {0, 4, 2, 0}, {3, 0, 2, 1},
                                                 {-1, 4, 2, 0}, {3, 4, 2, 2}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        oz_err e1 = {0}, e2 = {0};
        CHECK(oz_subspace_svd(G, bad[i].m, bad[i].n, bad[i].r, bad[i].side, basis, NULL, NULL, &e1) == OZ_ERR_INPUT,
              "svd case %zu", i);
        CHECK(oz_subspace_randomized(G, bad[i].m, bad[i].n, bad[i].r, bad[i].side, 8, 2, &rng, basis, NULL, &e2) ==
                  OZ_ERR_INPUT, "randomized case %zu", i);
        CHECK(e1.msg[0] && e2.msg[0], "an error must carry a message");
    }
    oz_err e = {0};
    CHECK(oz_subspace_randomized(G, 3, 4, 2, 0, 8, 2, NULL, basis, NULL, &e) == OZ_ERR_INPUT, "NULL rng");
    oz_err_clear(&e);
    CHECK(oz_subspace_svd(NULL, 3, 4, 2, 0, basis, NULL, NULL, &e) == OZ_ERR_INPUT, "NULL G");
    oz_err_clear(&e);
    G[5] = NAN;
    CHECK(oz_subspace_svd(G, 3, 4, 2, 0, basis, NULL, NULL, &e) == OZ_ERR_NUMERIC, "NaN gradient: %s", e.msg);
    oz_err_clear(&e);
    G[5] = INFINITY;
    CHECK(oz_subspace_randomized(G, 3, 4, 2, 0, 8, 2, &rng, basis, NULL, &e) == OZ_ERR_NUMERIC, "Inf gradient");
    CHECK(oz_subspace_rank(3, 4, 0) == 0 && oz_subspace_rank(3, 4, 9) == 3 && oz_subspace_rank(5, 4, 2) == 2, "rank clamp");
}

static void test_workspace_bytes(void) {
    CHECK(oz_subspace_workspace_bytes(0, 5, 2, OZ_SUBSPACE_EXACT) == 0, "bad shape -> 0");
    CHECK(oz_subspace_workspace_bytes(5, 5, 2, 9) == 0, "bad method -> 0");
    size_t ex = oz_subspace_workspace_bytes(300, 500, 16, OZ_SUBSPACE_EXACT);
    size_t rn = oz_subspace_workspace_bytes(300, 500, 16, OZ_SUBSPACE_RANDOMIZED);
    CHECK(ex >= (size_t)300 * 500 * 4 + (size_t)300 * 300 * 4, "exact workspace %zu too small to hold the copy", ex);
    CHECK(rn >= (size_t)(300 + 500) * 24 * 4 && rn < ex, "randomized workspace %zu (exact %zu)", rn, ex);
    CHECK(oz_subspace_workspace_bytes(300, 500, 16, OZ_SUBSPACE_RANDOMIZED) ==
              oz_subspace_workspace_bytes(500, 300, 16, OZ_SUBSPACE_RANDOMIZED), "side-independent");
}

/* The factored range finder (G = dY^T X given only dY and X, with padded leading dimensions) against
 * the materialized one on G formed from the same factors: the same draws, only the products' fp32
 * rounding differs, so the subspaces agree to ~1e-6 (and both match the exact SVD's, the spectrum
 * having a clear gap after r). Shapes: tall and wide, more rows than either side, and fewer rows
 * than the sketch width (G's rank below l). */
static void check_factored(int m, int n, int rows, int r, uint64_t seed) {
    const int ldy = m + 3, ldx = n + 5, k = r + 3;
    oz_rng rng;
    oz_rng_seed(&rng, seed);
    float *dy = xalloc((size_t)rows * ldy * sizeof(float)), *x = xalloc((size_t)rows * ldx * sizeof(float));
    double *u = xalloc((size_t)rows * k * sizeof(double)), *a = xalloc((size_t)m * k * sizeof(double));
    double *b = xalloc((size_t)n * k * sizeof(double));
    for (size_t i = 0; i < (size_t)rows * k; i++) u[i] = oz_rng_normal(&rng);
    for (size_t i = 0; i < (size_t)m * k; i++) a[i] = oz_rng_normal(&rng);
    for (size_t i = 0; i < (size_t)n * k; i++) b[i] = oz_rng_normal(&rng);
    /* dY = U diag(s) A^T, X = U B^T, plus noise: G's top r directions stand far above the rest. */
    for (int t = 0; t < rows; t++) {
        for (int i = 0; i < m; i++) {
            double v = 0.01 * oz_rng_normal(&rng);
            for (int c = 0; c < k; c++) v += u[(size_t)t * k + c] * a[(size_t)i * k + c] * (c < r ? 10.0 - 0.5 * c : 0.05);
            dy[(size_t)t * ldy + i] = (float)v;
        }
        for (int j = 0; j < n; j++) {
            double v = 0.01 * oz_rng_normal(&rng);
            for (int c = 0; c < k; c++) v += u[(size_t)t * k + c] * b[(size_t)j * k + c];
            x[(size_t)t * ldx + j] = (float)v;
        }
        for (int i = m; i < ldy; i++) dy[(size_t)t * ldy + i] = NAN; /* padding is never read */
        for (int j = n; j < ldx; j++) x[(size_t)t * ldx + j] = NAN;
    }
    float *G = xalloc((size_t)m * n * sizeof(float));
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double v = 0;
            for (int t = 0; t < rows; t++) v += (double)dy[(size_t)t * ldy + i] * x[(size_t)t * ldx + j];
            G[(size_t)i * n + j] = (float)v;
        }
    oz_err err = {0};
    for (int side = OZ_SUBSPACE_LEFT; side <= OZ_SUBSPACE_RIGHT; side++) {
        int dim = side == OZ_SUBSPACE_LEFT ? m : n, layout = side == OZ_SUBSPACE_LEFT ? OZ_SUBSPACE_COLUMNS : OZ_SUBSPACE_ROWS;
        int rank = oz_subspace_rank(m, n, r), got = 0;
        float *bm = xalloc((size_t)dim * rank * sizeof(float)), *bf = xalloc((size_t)dim * rank * sizeof(float));
        float *be = xalloc((size_t)dim * rank * sizeof(float));
        oz_rng r1, r2;
        oz_rng_seed(&r1, seed + 77);
        oz_rng_seed(&r2, seed + 77);
        CHECK(oz_subspace_randomized(G, m, n, r, side, -1, -1, &r1, bm, NULL, &err) == OZ_OK, "%s", err.msg);
        CHECK(oz_subspace_randomized_factored(dy, ldy, x, ldx, rows, m, n, r, side, -1, -1, &r2, bf, &got, &err) == OZ_OK,
              "%s", err.msg);
        CHECK(got == rank, "factored rank %d, expected %d", got, rank);
        CHECK(oz_rng_next(&r1) == oz_rng_next(&r2), "the two finders drew differently from the rng");
        CHECK(oz_subspace_svd(G, m, n, r, side, be, NULL, NULL, &err) == OZ_OK, "%s", err.msg);
        double ang = oz_subspace_principal_angles_max(bm, bf, dim, rank, layout);
        double exact = oz_subspace_principal_angles_max(be, bf, dim, rank, layout);
        double orth = oz_subspace_orthonormality_error(bf, dim, rank, layout);
        double maxdiff = 0; /* the same vectors, signs included, not only the same span */
        for (size_t i = 0; i < (size_t)dim * rank; i++) maxdiff = fmax(maxdiff, fabs((double)bm[i] - bf[i]));
        CHECK(ang < 1e-5, "(%d, %d) over %d rows r %d side %d: factored vs materialized angle %.3g", m, n, rows, r, side, ang);
        CHECK(maxdiff < 1e-4, "(%d, %d) over %d rows r %d side %d: basis entries differ by %.3g", m, n, rows, r, side,
              maxdiff);
        CHECK(exact < 1e-3, "(%d, %d) over %d rows r %d side %d: factored vs exact angle %.3g", m, n, rows, r, side, exact);
        CHECK(orth < 1e-5, "factored basis orthonormality error %.3g", orth);
        free(bm);
        free(bf);
        free(be);
    }
    /* A non-finite factor entry is a numeric error naming the gradient; a short leading dimension an input error. */
    float keep = x[ldx + 1];
    x[ldx + 1] = INFINITY;
    float *basis = xalloc((size_t)(m > n ? m : n) * r * sizeof(float));
    CHECK(oz_subspace_randomized_factored(dy, ldy, x, ldx, rows, m, n, r, 0, -1, -1, &rng, basis, NULL, &err) ==
              OZ_ERR_NUMERIC,
          "a non-finite factor was accepted");
    x[ldx + 1] = keep;
    CHECK(oz_subspace_randomized_factored(dy, m - 1, x, ldx, rows, m, n, r, 0, -1, -1, &rng, basis, NULL, &err) ==
              OZ_ERR_INPUT,
          "a leading dimension below the width was accepted");
    /* The workspace: the randomized one plus the (rows, l) intermediate. */
    int l = oz_subspace_rank(m, n, r) + OZ_SUBSPACE_DEFAULT_OVERSAMPLE;
    if (l > (m < n ? m : n)) l = m < n ? m : n;
    CHECK(oz_subspace_factored_workspace_bytes(m, n, r, rows) ==
              oz_subspace_workspace_bytes(m, n, r, OZ_SUBSPACE_RANDOMIZED) + (size_t)rows * l * sizeof(float),
          "factored workspace bytes");
    oz_subspace_gpu_plan g1, g2;
    CHECK(oz_subspace_gpu_layout(m, n, r, 1, OZ_SUBSPACE_RANDOMIZED, &g1) &&
              oz_subspace_gpu_layout_factored(m, n, r, 1, rows, &g2) && g2.off_t >= g1.total &&
              g2.total >= g2.off_t + (size_t)rows * g2.l * sizeof(float) && g2.off_work == g1.off_work,
          "the factored GPU layout adds (rows, l) after the randomized one");
    free(basis);
    free(G);
    free(dy);
    free(x);
    free(u);
    free(a);
    free(b);
}

static void test_factored(void) {
    check_factored(64, 48, 40, 6, 11);   /* tall */
    check_factored(48, 80, 100, 8, 12);  /* wide, more rows than either side */
    check_factored(30, 20, 9, 5, 13);    /* fewer rows than the sketch width (13) */
    check_factored(160, 120, 64, 16, 14);
}

int main(void) {
    RUN(test_principal_angle_helper);
    RUN(test_exact);
    RUN(test_randomized);
    RUN(test_power_iterations_matter);
    RUN(test_determinism);
    RUN(test_bad_arguments);
    RUN(test_workspace_bytes);
    RUN(test_factored);
    return oz_test_finish("test_subspace");
}
