/* WeLore rank reduction (see welore.h). */
#include "model/welore.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "numeric/subspace.h"

oz_status oz_welore_spectrum(const float *W, int out, int in, float *sv, oz_err *err) {
    int r = out < in ? out : in;
    float *basis = malloc((size_t)out * r * sizeof *basis);
    if (!basis) return oz_fail(err, OZ_ERR_NOMEM, "out of memory computing a spectrum");
    int got;
    oz_status st = oz_subspace_svd(W, out, in, r, OZ_SUBSPACE_LEFT, basis, sv, &got, err);
    free(basis);
    return st;
}

int oz_welore_pruned(const float *sv, int r, double tau) {
    double hi = sv[0], lo = sv[r - 1];
    if (!(hi > lo)) return 0;
    int p = 0;
    for (int i = 0; i < r; i++)
        if ((sv[i] - lo) / (hi - lo) < tau) p++;
    return p < r ? p : r - 1;
}

/* Kept ranks from pruned counts; returns the removed-rank ratio. */
static double classify(oz_welore_plan *pl, const int *pruned, double min_ratio) {
    double removed = 0, total = 0;
    for (int i = 0; i < pl->n; i++) {
        int r = pl->r[i], p = pruned[i];
        pl->lrc[i] = (double)p / r > min_ratio;
        pl->kept[i] = pl->lrc[i] ? r - p : r;
        if (pl->lrc[i]) removed += p;
        total += r;
    }
    return total > 0 ? removed / total : 0;
}

double oz_welore_assign(oz_welore_plan *pl, double tau, double min_ratio) {
    int *p = malloc((size_t)pl->n * sizeof *p);
    if (!p) return NAN;
    for (int i = 0; i < pl->n; i++) p[i] = oz_welore_pruned(pl->sv[i], pl->r[i], tau);
    double ratio = classify(pl, p, min_ratio);
    free(p);
    return ratio;
}

double oz_welore_find_tau(oz_welore_plan *pl, double target, double min_ratio, double *achieved) {
    double lo = 0, hi = 1, best = 0, best_gap = INFINITY;
    /* 50 halvings pin tau far below the spacing of any fp32 spectrum's normalised values. */
    for (int it = 0; it < 50; it++) {
        double mid = 0.5 * (lo + hi), got = oz_welore_assign(pl, mid, min_ratio);
        double gap = fabs(got - target);
        if (gap < best_gap || (gap == best_gap && mid < best)) best_gap = gap, best = mid;
        if (got < target) lo = mid;
        else hi = mid;
    }
    /* Either end of the final bracket may be the closer one. */
    for (int k = 0; k < 2; k++) {
        double t = k ? hi : lo, gap = fabs(oz_welore_assign(pl, t, min_ratio) - target);
        if (gap < best_gap) best_gap = gap, best = t;
    }
    *achieved = oz_welore_assign(pl, best, min_ratio);
    return best;
}

double oz_welore_uniform(oz_welore_plan *pl, double ratio, double min_ratio) {
    int *p = malloc((size_t)pl->n * sizeof *p);
    if (!p) return NAN;
    for (int i = 0; i < pl->n; i++) {
        int want = (int)lround(ratio * pl->r[i]);
        p[i] = want < pl->r[i] ? want : pl->r[i] - 1;
        if (p[i] < 0) p[i] = 0;
    }
    double got = classify(pl, p, min_ratio);
    free(p);
    return got;
}

oz_status oz_welore_factors(const float *W, int out, int in, int k, float *A, float *B, oz_err *err) {
    float *sv = malloc((size_t)k * sizeof *sv);
    if (!sv) return oz_fail(err, OZ_ERR_NOMEM, "out of memory factoring a matrix");
    int got;
    /* U_k (out x k) straight into B; then A = S^{-1/2} U_k^T W equals S^{1/2} V_k^T, which pairs
     * each right vector with its left one without a second SVD (signs cannot disagree). */
    oz_status st = oz_subspace_svd(W, out, in, k, OZ_SUBSPACE_LEFT, B, sv, &got, err);
    if (st == OZ_OK && got != k) st = oz_fail(err, OZ_ERR_INTERNAL, "factors: asked rank %d, got %d", k, got);
    if (st == OZ_OK) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, k, in, out, 1.0f, B, k, W, in, 0.0f, A, in);
        for (int i = 0; i < k; i++) {
            double s = sv[i] > 0 ? sqrt((double)sv[i]) : 0;
            float inv = s > 0 ? (float)(1.0 / s) : 0.0f;
            for (int c = 0; c < in; c++) A[(size_t)i * in + c] *= inv;
            for (int o = 0; o < out; o++) B[(size_t)o * k + i] *= (float)s;
        }
    }
    free(sv);
    return st;
}
