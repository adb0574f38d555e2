/* InRank's rank rule and the spectrum of a factored matrix (see inrank.h).
 *
 * The spectrum runs in double: the rule compares variances of singular values down to the tail,
 * and the truncation at the freeze must reproduce B_r A_r to fp32 rounding when k keeps its whole
 * rank. Matrices here are column-major (LAPACK's order); the factors arrive row-major, so A_r's
 * first r rows are, element for element, the columns of A_r^T. LAPACK is reached through its
 * Fortran symbols, as in subspace.c (no -llapacke, one BLAS). */
#include "optim/inrank.h"

#include <cblas.h>
#include <lapack.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int oz_inrank_max_rank(int out, int in) {
    if (out <= 0 || in <= 0) return 0;
    return (out < in ? out : in) / 2;
}

int oz_inrank_buffer(int b, int R) {
    int cap = R / 3;
    if (cap < 1) cap = 1;
    if (b < 1) b = 1;
    return b < cap ? b : cap;
}

/* Unbiased variance of the n_full-vector whose entries first..n-1 are s[first..n-1] and whose
 * other entries are zero (two passes: the mean, then squared deviations; the zeros contribute
 * (n_full - (n - first)) * mean^2). */
static double padded_var(const double *s, int first, int n, int n_full) {
    if (n_full < 2) return 0.0;
    double sum = 0;
    for (int i = first; i < n; i++) sum += s[i];
    double mean = sum / n_full, ss = 0;
    for (int i = first; i < n; i++) ss += (s[i] - mean) * (s[i] - mean);
    ss += (double)(n_full - (n - first)) * mean * mean;
    return ss / (n_full - 1);
}

double oz_inrank_explained(const double *s, int n, int n_full, int idx) {
    if (n_full < n) n_full = n;
    double all = padded_var(s, 0, n, n_full);
    if (!(all > 0)) return 0.0;
    if (idx > n) idx = n;
    if (idx < 0) idx = 0;
    return 1.0 - padded_var(s, idx, n, n_full) / all;
}

int oz_inrank_next_rank(const double *s, int n, int n_full, int k, int b, int R, double tau) {
    int end = k + b < R - b ? k + b : R - b;
    if (k >= end || n <= 0) return k;
    if (n_full < n) n_full = n;
    if (!(padded_var(s, 0, n, n_full) > 0)) return k;
    int idx = k;
    for (; idx < end; idx++)
        if (oz_inrank_explained(s, n, n_full, idx) > tau) break;
    if (idx == end) idx = end - 1; /* none passed: the last one tried */
    return idx > k ? idx : k;
}

/* ---- the factored SVD: one malloc, carved in doubles ---- */

typedef struct {
    size_t lwork;
    size_t bc, ac, rb, ra, m, u, vt, taub, taua, work, uk, vk, iwork, total; /* offsets in doubles */
} svd_plan;

static int plan_svd(int out, int in, int r, svd_plan *p) {
    if (out <= 0 || in <= 0 || r <= 0 || r > out || r > in) return 0;
    if ((int64_t)out * r > INT_MAX || (int64_t)in * r > INT_MAX) return 0;
    lapack_int o = out, i = in, rr = r, lw = -1, info = 0, iw = 0;
    double d = 0, q[5] = {0, 0, 0, 0, 0};
    LAPACK_dgeqrf(&o, &rr, &d, &o, &d, &q[0], &lw, &info);
    if (info) return 0;
    LAPACK_dgeqrf(&i, &rr, &d, &i, &d, &q[1], &lw, &info);
    if (info) return 0;
    LAPACK_dorgqr(&o, &rr, &rr, &d, &o, &d, &q[2], &lw, &info);
    if (info) return 0;
    LAPACK_dgesdd("S", &rr, &rr, &d, &rr, &d, &d, &rr, &d, &rr, &q[3], &lw, &iw, &info);
    if (info) return 0;
    LAPACK_dorgqr(&i, &rr, &rr, &d, &i, &d, &q[4], &lw, &info);
    if (info) return 0;
    double most = 0;
    for (int j = 0; j < 5; j++) most = q[j] > most ? q[j] : most;
    /* LAPACK returns sizes as a double; add slack so rounding never under-sizes it. */
    p->lwork = (size_t)(most * (1.0 + 1e-6)) + 64;
    if (p->lwork > INT_MAX) return 0;
    size_t c = 0, rr2 = (size_t)r * r;
#define TAKE(field, n) p->field = c, c += ((size_t)(n) + 7) & ~(size_t)7 /* 64-byte aligned pieces */
    TAKE(bc, (size_t)out * r);
    TAKE(ac, (size_t)in * r);
    TAKE(rb, rr2);
    TAKE(ra, rr2);
    TAKE(m, rr2);
    TAKE(u, rr2);
    TAKE(vt, rr2);
    TAKE(taub, r);
    TAKE(taua, r);
    TAKE(work, p->lwork);
    TAKE(uk, (size_t)out * r);
    TAKE(vk, (size_t)in * r);
    TAKE(iwork, (8 * (size_t)r * sizeof(lapack_int) + sizeof(double) - 1) / sizeof(double));
#undef TAKE
    p->total = c;
    return 1;
}

size_t oz_inrank_workspace_bytes(int out, int in, int r) {
    svd_plan p;
    return plan_svd(out, in, r, &p) ? p.total * sizeof(double) + 64 : 0;
}

/* The upper triangle of a QR's column-major (rows x r) result, as an r x r matrix with zeros below. */
static void upper(const double *qr, int rows, int r, double *R) {
    for (int j = 0; j < r; j++)
        for (int i = 0; i < r; i++) R[i + (size_t)j * r] = i <= j ? qr[i + (size_t)j * rows] : 0.0;
}

oz_status oz_inrank_factored_svd(const float *A, const float *B, int out, int in, int R, int r, double *s, int k,
                                 float *A_new, float *B_new, oz_err *err) {
    svd_plan p;
    /* Sized for R, not r: one figure per matrix, whatever its active rank, so the planner can
     * predict it (LAPACK's workspace needs only grow with the size). */
    if (!A || !B || !s || r < 1 || R < r || !plan_svd(out, in, R, &p) || k < 0 || k > r)
        return oz_fail(err, OZ_ERR_INPUT, "factored SVD: bad sizes (out %d, in %d, R %d, r %d, k %d)", out, in, R, r, k);
    void *block = aligned_alloc(64, p.total * sizeof(double) + 64);
    if (!block) return oz_fail(err, OZ_ERR_NOMEM, "out of memory for the factored SVD (%d x %d at rank %d)", out, in, r);
    double *w = block;
    double *bc = w + p.bc, *ac = w + p.ac;
    bool finite = true;
    for (int i = 0; i < out; i++)
        for (int j = 0; j < r; j++) {
            double v = B[(size_t)i * R + j];
            finite = finite && isfinite(v);
            bc[i + (size_t)j * out] = v;
        }
    for (size_t i = 0; i < (size_t)in * r; i++) {
        ac[i] = A[i];
        finite = finite && isfinite(ac[i]);
    }
    oz_status st = OZ_OK;
    lapack_int o = out, ii = in, rr = r, lw = (lapack_int)p.lwork, info = 0;
    if (!finite) {
        st = oz_fail(err, OZ_ERR_NUMERIC, "factored SVD: the factors hold NaN or Inf");
        goto done;
    }
    LAPACK_dgeqrf(&o, &rr, bc, &o, w + p.taub, w + p.work, &lw, &info);
    if (!info) LAPACK_dgeqrf(&ii, &rr, ac, &ii, w + p.taua, w + p.work, &lw, &info);
    if (info) {
        st = oz_fail(err, OZ_ERR_NUMERIC, "factored SVD: QR failed (info %d)", (int)info);
        goto done;
    }
    /* B_r A_r = Qb Rb Ra^T Qa^T: its singular values are those of the r x r core Rb Ra^T. */
    upper(bc, out, r, w + p.rb);
    upper(ac, in, r, w + p.ra);
    cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, r, r, r, 1.0, w + p.rb, r, w + p.ra, r, 0.0, w + p.m, r);
    LAPACK_dgesdd("S", &rr, &rr, w + p.m, &rr, s, w + p.u, &rr, w + p.vt, &rr, w + p.work, &lw,
                  (lapack_int *)(w + p.iwork), &info);
    if (info) {
        st = oz_fail(err, OZ_ERR_NUMERIC, "factored SVD: the SVD did not converge (info %d)", (int)info);
        goto done;
    }
    if (k > 0 && A_new && B_new) {
        LAPACK_dorgqr(&o, &rr, &rr, bc, &o, w + p.taub, w + p.work, &lw, &info);
        if (!info) LAPACK_dorgqr(&ii, &rr, &rr, ac, &ii, w + p.taua, w + p.work, &lw, &info);
        if (info) {
            st = oz_fail(err, OZ_ERR_NUMERIC, "factored SVD: forming Q failed (info %d)", (int)info);
            goto done;
        }
        /* U_k = Qb U[:, :k] (out x k); V_k = Qa (Vt[:k, :])^T (in x k). */
        cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, out, k, r, 1.0, bc, out, w + p.u, r, 0.0, w + p.uk, out);
        cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, in, k, r, 1.0, ac, in, w + p.vt, r, 0.0, w + p.vk, in);
        /* Balanced factors: each carries the square root of the spectrum, so neither dwarfs the
         * other when training continues. Column i of V_k is row i of A_new (row-major). */
        for (int i = 0; i < k; i++) {
            double root = sqrt(s[i] > 0 ? s[i] : 0);
            for (int c = 0; c < in; c++) A_new[(size_t)i * in + c] = (float)(root * w[p.vk + c + (size_t)i * in]);
            for (int c = 0; c < out; c++) B_new[(size_t)c * k + i] = (float)(root * w[p.uk + c + (size_t)i * out]);
        }
    }
done:
    free(block);
    return st;
}
