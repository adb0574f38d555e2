/* GaLore subspace refresh cost on the CPU: exact thin SVD against the randomized range finder,
 * with the accuracy the randomized one gives up (largest principal angle to the exact subspace,
 * and the share of the optimal rank-r gradient energy it still captures). Prints JSON lines.
 *
 * usage: build/bench/subspace [THREADS] [7b [RANK...] | all1b]
 *   7b    one 4096 x 11008 (down_proj-shaped) matrix, exact once, randomized at each RANK
 *         (default 1024 and 256, GaLore's 7b rank and a smaller one)
 *   all1b every GaLore matrix of the 1b preset (24 layers x q,k,v,o 2048x2048, gate,up 5461x2048,
 *         down 2048x5461) refreshed with the randomized method at rank 512; exact SVD is timed
 *         on one matrix per shape and extrapolated, since all 168 would take about ten minutes
 *         on two cores.
 * Test matrices are G = A diag(s) B + noise with Gaussian A (m, K), B (K, n) and s_i = 2^(-i/256):
 * a smoothly decaying spectrum, built with one GEMM instead of an SVD. Timings do not depend on
 * the values, so each 1b shape reuses one matrix. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "numeric/subspace.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *xalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "bench/subspace: cannot allocate %zu bytes\n", bytes);
        exit(1);
    }
    return p;
}

static void die(const oz_err *err) {
    fprintf(stderr, "bench/subspace: %s\n", err->msg);
    exit(1);
}

static void fill_normal(float *x, size_t count, float scale, oz_rng *rng) {
    for (size_t i = 0; i < count; i += 2) {
        double u1 = ((double)(oz_rng_next(rng) >> 11) + 1.0) * 0x1p-53, u2 = (double)(oz_rng_next(rng) >> 11) * 0x1p-53;
        double rad = scale * sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
        x[i] = (float)(rad * cos(th));
        if (i + 1 < count) x[i + 1] = (float)(rad * sin(th));
    }
}

/* Columns of A and rows of B are about unit norm, so the singular values are roughly s_i. */
static float *make_matrix(int m, int n, int K, oz_rng *rng) {
    float *A = xalloc((size_t)m * K * sizeof(float)), *B = xalloc((size_t)K * n * sizeof(float));
    float *G = xalloc((size_t)m * n * sizeof(float));
    fill_normal(A, (size_t)m * K, 1.0f / sqrtf((float)m), rng);
    fill_normal(B, (size_t)K * n, 1.0f / sqrtf((float)n), rng);
    for (int i = 0; i < K; i++) cblas_sscal(m, powf(2.0f, -i / 256.0f), A + i, K);
    /* Uniform noise is cheap to draw and just as good at filling the tail of the spectrum. */
    const float noise = 1e-4f * sqrtf(12.0f);
    for (size_t i = 0; i < (size_t)m * n; i++) G[i] = noise * (oz_rng_uniform(rng) - 0.5f);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, K, 1.0f, A, K, B, n, 1.0f, G, n);
    free(A);
    free(B);
    return G;
}

/* ||P^T G||_F^2 for a LEFT basis (m, r) or ||G Q^T||_F^2 for a RIGHT one (r, n). */
static double captured_energy(const float *G, int m, int n, const float *basis, int r, int side) {
    const int out_rows = side == OZ_SUBSPACE_LEFT ? r : m, out_cols = side == OZ_SUBSPACE_LEFT ? n : r;
    float *R = xalloc((size_t)out_rows * out_cols * sizeof(float));
    if (side == OZ_SUBSPACE_LEFT)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, n, m, 1.0f, basis, r, G, n, 0.0f, R, n);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, r, n, 1.0f, G, n, basis, n, 0.0f, R, r);
    double e = 0;
    for (size_t i = 0; i < (size_t)out_rows * out_cols; i++) e += (double)R[i] * R[i];
    free(R);
    return e;
}

/* The leading `r` vectors of a basis of rank `k`, compact, in the side's layout. */
static float *leading(const float *basis, int dim, int k, int r, int side) {
    float *out = xalloc((size_t)dim * r * sizeof(float));
    if (side == OZ_SUBSPACE_RIGHT)
        memcpy(out, basis, (size_t)r * dim * sizeof(float));
    else
        for (int i = 0; i < dim; i++) memcpy(out + (size_t)i * r, basis + (size_t)i * k, (size_t)r * sizeof(float));
    return out;
}

static int layout_of(int side) { return side == OZ_SUBSPACE_LEFT ? OZ_SUBSPACE_COLUMNS : OZ_SUBSPACE_ROWS; }

/* Randomized vs exact at one rank: timing, workspace and accuracy, as one JSON line. */
static void compare(const char *mode, const char *name, const float *G, int m, int n, int side, int r,
                    const float *exact_full, int exact_rank, int threads, oz_rng *rng) {
    const int dim = side == OZ_SUBSPACE_LEFT ? m : n;
    float *rnd = xalloc((size_t)dim * r * sizeof(float));
    oz_err err = {0};
    double t0 = now_s();
    if (oz_subspace_randomized(G, m, n, r, side, OZ_SUBSPACE_DEFAULT_OVERSAMPLE, OZ_SUBSPACE_DEFAULT_POWER_ITERS, rng,
                               rnd, NULL, &err) != OZ_OK)
        die(&err);
    double secs = now_s() - t0;
    float *ex = leading(exact_full, dim, exact_rank, r, side);
    const int lay = layout_of(side), half = r / 2 > 0 ? r / 2 : 1;
    float *rh = leading(rnd, dim, r, half, side), *eh = leading(exact_full, dim, exact_rank, half, side);
    double e_rnd = captured_energy(G, m, n, rnd, r, side), e_ex = captured_energy(G, m, n, ex, r, side);
    printf("{\"bench\":\"subspace\",\"mode\":\"%s\",\"matrix\":\"%s\",\"method\":\"randomized\",\"m\":%d,\"n\":%d,"
           "\"side\":\"%s\",\"rank\":%d,\"oversample\":%d,\"power_iters\":%d,\"threads\":%d,\"seconds\":%.3f,"
           "\"workspace_mb\":%.1f,\"max_angle_rad\":%.4g,\"max_angle_leading_half_rad\":%.4g,"
           "\"energy_vs_exact\":%.6f,\"orthonormality_err\":%.2g}\n",
           mode, name, m, n, side == OZ_SUBSPACE_LEFT ? "left" : "right", r, OZ_SUBSPACE_DEFAULT_OVERSAMPLE,
           OZ_SUBSPACE_DEFAULT_POWER_ITERS, threads, secs,
           oz_subspace_workspace_bytes(m, n, r, OZ_SUBSPACE_RANDOMIZED) / 1e6,
           oz_subspace_principal_angles_max(rnd, ex, dim, r, lay),
           oz_subspace_principal_angles_max(rh, eh, dim, half, lay), e_rnd / e_ex,
           oz_subspace_orthonormality_error(rnd, dim, r, lay));
    fflush(stdout);
    free(rnd);
    free(ex);
    free(rh);
    free(eh);
}

static double time_exact(const float *G, int m, int n, int side, int r, float *basis) {
    oz_err err = {0};
    double t0 = now_s();
    if (oz_subspace_svd(G, m, n, r, side, basis, NULL, NULL, &err) != OZ_OK) die(&err);
    return now_s() - t0;
}

static void mode_7b(int argc, char **argv, int threads) {
    const int m = 4096, n = 11008, K = 2048, side = OZ_SUBSPACE_LEFT; /* down_proj: m < n, GaLore projects left */
    int ranks[16] = {1024, 256}, nr = 2, rmax = 0;
    if (argc > 3) {
        nr = 0;
        for (int i = 3; i < argc && nr < 16; i++) ranks[nr++] = atoi(argv[i]);
    }
    for (int i = 0; i < nr; i++) {
        if (ranks[i] <= 0 || ranks[i] > m) {
            fprintf(stderr, "bench/subspace: rank %d out of (0, %d]\n", ranks[i], m);
            exit(2);
        }
        if (ranks[i] > rmax) rmax = ranks[i];
    }
    oz_rng rng;
    oz_rng_seed(&rng, 42);
    double t0 = now_s();
    float *G = make_matrix(m, n, K, &rng);
    printf("{\"bench\":\"subspace\",\"mode\":\"7b\",\"what\":\"generate\",\"m\":%d,\"n\":%d,\"K\":%d,\"seconds\":%.2f}\n",
           m, n, K, now_s() - t0);
    fflush(stdout);
    float *exact = xalloc((size_t)m * rmax * sizeof(float));
    double secs = time_exact(G, m, n, side, rmax, exact);
    printf("{\"bench\":\"subspace\",\"mode\":\"7b\",\"matrix\":\"down_proj\",\"method\":\"exact\",\"m\":%d,\"n\":%d,"
           "\"side\":\"left\",\"rank\":%d,\"threads\":%d,\"seconds\":%.2f,\"workspace_mb\":%.1f}\n",
           m, n, rmax, threads, secs, oz_subspace_workspace_bytes(m, n, rmax, OZ_SUBSPACE_EXACT) / 1e6);
    fflush(stdout);
    for (int i = 0; i < nr; i++) compare("7b", "down_proj", G, m, n, side, ranks[i], exact, rmax, threads, &rng);
    free(exact);
    free(G);
}

static void mode_all1b(int threads) {
    const int r = 512, layers = 24;
    /* GaLore's "std" rule projects the smaller dimension: right for m >= n, left otherwise. */
    const struct { const char *name; int m, n, per_layer; } shapes[] = {
        {"q,k,v,o", 2048, 2048, 4}, {"gate,up", 5461, 2048, 2}, {"down", 2048, 5461, 1}};
    oz_rng rng;
    oz_rng_seed(&rng, 7);
    double total_rand = 0, total_exact_est = 0;
    int total_mats = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int m = shapes[s].m, n = shapes[s].n, side = m >= n ? OZ_SUBSPACE_RIGHT : OZ_SUBSPACE_LEFT;
        const int dim = side == OZ_SUBSPACE_LEFT ? m : n, count = layers * shapes[s].per_layer;
        float *G = make_matrix(m, n, m < n ? m : n, &rng);
        float *basis = xalloc((size_t)dim * r * sizeof(float));
        double ex = time_exact(G, m, n, side, r, basis);
        /* Accuracy once per shape, then the timed refreshes. */
        compare("all1b", shapes[s].name, G, m, n, side, r, basis, r, threads, &rng);
        oz_err err = {0};
        double t0 = now_s();
        for (int i = 0; i < count; i++)
            if (oz_subspace_randomized(G, m, n, r, side, -1, -1, &rng, basis, NULL, &err) != OZ_OK) die(&err);
        double rt = now_s() - t0;
        printf("{\"bench\":\"subspace\",\"mode\":\"all1b\",\"matrix\":\"%s\",\"m\":%d,\"n\":%d,\"side\":\"%s\","
               "\"rank\":%d,\"threads\":%d,\"count\":%d,\"randomized_seconds\":%.2f,\"randomized_each\":%.3f,"
               "\"exact_each_measured\":%.2f,\"exact_seconds_extrapolated\":%.1f}\n",
               shapes[s].name, m, n, side == OZ_SUBSPACE_LEFT ? "left" : "right", r, threads, count, rt, rt / count,
               ex, ex * count);
        fflush(stdout);
        total_rand += rt;
        total_exact_est += ex * count;
        total_mats += count;
        free(basis);
        free(G);
    }
    printf("{\"bench\":\"subspace\",\"mode\":\"all1b\",\"matrix\":\"all\",\"count\":%d,\"rank\":%d,\"threads\":%d,"
           "\"randomized_seconds\":%.1f,\"exact_seconds_extrapolated\":%.1f,\"speedup\":%.1f,"
           "\"note\":\"exact timed on one matrix per shape and multiplied by the count\"}\n",
           total_mats, r, threads, total_rand, total_exact_est, total_exact_est / total_rand);
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 0;
    if (threads > 0) {
        omp_set_num_threads(threads);
        openblas_set_num_threads(threads);
    }
    threads = omp_get_max_threads();
    const char *mode = argc > 2 ? argv[2] : "7b";
    if (strcmp(mode, "7b") == 0)
        mode_7b(argc, argv, threads);
    else if (strcmp(mode, "all1b") == 0)
        mode_all1b(threads);
    else {
        fprintf(stderr, "usage: %s [THREADS] [7b [RANK...] | all1b]\n", argv[0]);
        return 2;
    }
    return 0;
}
