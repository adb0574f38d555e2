/* GaLore subspace computation: exact thin SVD and randomized range finder (see subspace.h).
 *
 * Layout trick used throughout: a row-major (m, n) matrix is, byte for byte, the column-major
 * (n, m) matrix G^T. LAPACK and the ColMajor CBLAS calls therefore work on G^T directly, with no
 * transposed copies: the left singular vectors of G^T are G's right ones and vice versa, and a
 * row-major (m, r) output is a column-major (r, m) one.
 *
 * LAPACK is reached through its Fortran symbols (declared in Debian's <lapack.h>), which the
 * linked OpenBLAS exports. LAPACKE would add -llapacke, and Debian's liblapacke pulls in the
 * alternatives' liblapack.so.3, i.e. a second (pthread) OpenBLAS with its own thread pool. */
#include "numeric/subspace.h"

#include <cblas.h>
#include <lapack.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ALIGN 64

/* ---- workspace planning: one malloc per call, carved into aligned pieces; the same plan
 * answers oz_subspace_workspace_bytes so the planner's figure is what really gets allocated ---- */

static size_t carve(size_t *cursor, size_t bytes) {
    size_t at = *cursor;
    *cursor += (bytes + ALIGN - 1) / ALIGN * ALIGN;
    return at;
}

/* LAPACK reports workspace sizes as a float; older releases round large ones down, so add slack. */
static size_t lwork_from_query(float q) { return (size_t)((double)q * (1.0 + 1e-6)) + 64; }

static int imin(int a, int b) { return a < b ? a : b; }

typedef struct {
    int k, rank;
    size_t lwork;                             /* floats for sgesdd */
    size_t off_a, off_sq, off_s, off_work, off_iwork, total;
} exact_plan;

/* sgesdd with JOBZ='O' on the column-major (n, m) copy: the larger factor overwrites the copy and
 * only a k x k square is extra, about 100 MB less than 'S' at 4096 x 11008 and faster in tests. */
static int plan_exact(int m, int n, int r, exact_plan *pl) {
    lapack_int M = n, N = m, k = imin(m, n), ld = k, lw = -1, info = 0, iw = 0;
    float a = 0, s = 0, sq = 0, q = 0;
    LAPACK_sgesdd("O", &M, &N, &a, &M, &s, &sq, &M, &sq, &ld, &q, &lw, &iw, &info);
    if (info != 0) return 0;
    pl->k = k;
    pl->rank = imin(r, k);
    pl->lwork = lwork_from_query(q);
    if (pl->lwork > INT_MAX) return 0;
    size_t cur = 0;
    pl->off_a = carve(&cur, (size_t)m * n * sizeof(float));
    pl->off_sq = carve(&cur, (size_t)k * k * sizeof(float));
    pl->off_s = carve(&cur, (size_t)k * sizeof(float));
    pl->off_work = carve(&cur, pl->lwork * sizeof(float));
    pl->off_iwork = carve(&cur, (size_t)8 * k * sizeof(lapack_int));
    pl->total = cur;
    return 1;
}

typedef struct {
    int p, q, rank, l;
    size_t lwork_qr, lwork_svd;
    size_t off_y, off_z, off_tau, off_qrwork, off_r, off_vt, off_s, off_svdwork, off_iwork, total;
} rand_plan;

static size_t query_qr(int rows, int cols) {
    lapack_int M = rows, N = cols, lw = -1, info = 0;
    float a = 0, tau = 0, q1 = 0, q2 = 0;
    LAPACK_sgeqrf(&M, &N, &a, &M, &tau, &q1, &lw, &info);
    if (info != 0) return 0;
    LAPACK_sorgqr(&M, &N, &N, &a, &M, &tau, &q2, &lw, &info);
    if (info != 0) return 0;
    return lwork_from_query(q1 > q2 ? q1 : q2);
}

/* p = length of the basis vectors, q = the other dimension; l = sketch width. */
static int plan_randomized(int m, int n, int r, int side, int oversample, rand_plan *pl) {
    int k = imin(m, n);
    pl->p = side == OZ_SUBSPACE_LEFT ? m : n;
    pl->q = side == OZ_SUBSPACE_LEFT ? n : m;
    pl->rank = imin(r, k);
    pl->l = (int)(pl->rank + (long)oversample > k ? k : pl->rank + oversample);
    size_t wp = query_qr(pl->p, pl->l), wq = query_qr(pl->q, pl->l);
    if (!wp || !wq) return 0;
    pl->lwork_qr = wp > wq ? wp : wq;
    lapack_int L = pl->l, lw = -1, info = 0, iw = 0;
    float a = 0, s = 0, sq = 0, qs = 0;
    LAPACK_sgesdd("O", &L, &L, &a, &L, &s, &sq, &L, &sq, &L, &qs, &lw, &iw, &info);
    if (info != 0) return 0;
    pl->lwork_svd = lwork_from_query(qs);
    if (pl->lwork_qr > INT_MAX || pl->lwork_svd > INT_MAX) return 0;
    size_t L2 = (size_t)pl->l * pl->l, cur = 0;
    pl->off_y = carve(&cur, (size_t)pl->p * pl->l * sizeof(float));
    pl->off_z = carve(&cur, (size_t)pl->q * pl->l * sizeof(float));
    pl->off_tau = carve(&cur, (size_t)pl->l * sizeof(float));
    pl->off_qrwork = carve(&cur, pl->lwork_qr * sizeof(float));
    pl->off_r = carve(&cur, L2 * sizeof(float));
    pl->off_vt = carve(&cur, L2 * sizeof(float));
    pl->off_s = carve(&cur, (size_t)pl->l * sizeof(float));
    pl->off_svdwork = carve(&cur, pl->lwork_svd * sizeof(float));
    pl->off_iwork = carve(&cur, (size_t)8 * pl->l * sizeof(lapack_int));
    pl->total = cur;
    return 1;
}

int oz_subspace_rank(int m, int n, int r) {
    if (m <= 0 || n <= 0 || r <= 0) return 0;
    return imin(r, imin(m, n));
}

size_t oz_subspace_workspace_bytes(int m, int n, int r, int method) {
    if (m <= 0 || n <= 0 || r <= 0) return 0;
    if (method == OZ_SUBSPACE_EXACT) {
        exact_plan pl;
        return plan_exact(m, n, r, &pl) ? pl.total : 0;
    }
    if (method == OZ_SUBSPACE_RANDOMIZED) {
        rand_plan pl; /* the footprint does not depend on the side: p and q just swap */
        return plan_randomized(m, n, r, OZ_SUBSPACE_LEFT, OZ_SUBSPACE_DEFAULT_OVERSAMPLE, &pl) ? pl.total : 0;
    }
    return 0;
}

size_t oz_subspace_factored_workspace_bytes(int m, int n, int r, int rows) {
    if (m <= 0 || n <= 0 || r <= 0 || rows <= 0) return 0;
    rand_plan pl;
    if (!plan_randomized(m, n, r, OZ_SUBSPACE_LEFT, OZ_SUBSPACE_DEFAULT_OVERSAMPLE, &pl)) return 0;
    return pl.total + (size_t)rows * pl.l * sizeof(float);
}

/* ---- the GPU layout (sizes only: the CUDA backend does the work) ---- */

static size_t carve_gpu(size_t *cursor, size_t bytes) {
    size_t at = *cursor;
    *cursor += (bytes + 255) / 256 * 256; /* cuSOLVER and cuBLAS like 256-byte aligned operands */
    return at;
}

int oz_subspace_gpu_layout(int m, int n, int r, int side, int method, oz_subspace_gpu_plan *pl) {
    memset(pl, 0, sizeof *pl);
    if (m <= 0 || n <= 0 || r <= 0 || (side != OZ_SUBSPACE_LEFT && side != OZ_SUBSPACE_RIGHT)) return 0;
    const size_t f = sizeof(float);
    size_t cur = 0;
    int k = imin(m, n);
    pl->rank = imin(r, k);
    if (method == OZ_SUBSPACE_RANDOMIZED) {
        pl->p = side == OZ_SUBSPACE_LEFT ? m : n;
        pl->q = side == OZ_SUBSPACE_LEFT ? n : m;
        pl->l = pl->rank + OZ_SUBSPACE_DEFAULT_OVERSAMPLE > k ? k : pl->rank + OZ_SUBSPACE_DEFAULT_OVERSAMPLE;
        size_t l = (size_t)pl->l;
        /* Blocked Householder QR needs panels of the long side; gesvd of a square n x n asked
         * for a few n^2 on an H200 (2048 x 512 asked 4.3 * rows * cols floats): 128 panel columns
         * per row, 8 squares and a spare megafloat. The GPU test runs large shapes against it. */
        pl->lwork = ((size_t)pl->p + pl->q) * 128 + 8 * l * l + ((size_t)1 << 20);
        pl->off_y = carve_gpu(&cur, (size_t)pl->p * l * f);
        pl->off_z = carve_gpu(&cur, (size_t)pl->q * l * f);
        pl->off_tau = carve_gpu(&cur, l * f);
        pl->off_r = carve_gpu(&cur, l * l * f);
        pl->off_vt = carve_gpu(&cur, l * l * f);
        pl->off_s = carve_gpu(&cur, l * f);
        pl->off_e = carve_gpu(&cur, l * f);
    } else if (method == OZ_SUBSPACE_EXACT) {
        pl->rows = m > n ? m : n;
        pl->cols = k;
        size_t rows = (size_t)pl->rows, cols = (size_t)pl->cols;
        pl->lwork = (rows + cols) * 128 + 8 * cols * cols + ((size_t)1 << 20);
        pl->off_y = carve_gpu(&cur, rows * cols * f); /* a: the tall copy, then Q */
        pl->off_r = carve_gpu(&cur, cols * cols * f);
        pl->off_z = carve_gpu(&cur, cols * cols * f); /* Ur */
        pl->off_vt = carve_gpu(&cur, cols * cols * f);
        pl->off_ua = carve_gpu(&cur, rows * (size_t)pl->rank * f);
        pl->off_tau = carve_gpu(&cur, cols * f);
        pl->off_s = carve_gpu(&cur, cols * f);
        pl->off_e = carve_gpu(&cur, cols * f);
    } else {
        return 0;
    }
    pl->off_work = carve_gpu(&cur, pl->lwork * f);
    pl->off_info = carve_gpu(&cur, 4 * sizeof(int)); /* solver info, non-finite count */
    pl->total = cur;
    return 1;
}

int oz_subspace_gpu_layout_factored(int m, int n, int r, int side, int rows, oz_subspace_gpu_plan *pl) {
    if (rows <= 0 || !oz_subspace_gpu_layout(m, n, r, side, OZ_SUBSPACE_RANDOMIZED, pl)) {
        memset(pl, 0, sizeof *pl);
        return 0;
    }
    size_t cur = pl->total;
    pl->off_t = carve_gpu(&cur, (size_t)rows * pl->l * sizeof(float));
    pl->total = cur;
    return 1;
}

/* ---- shared checks and output conventions ---- */

static oz_status check_args(const char *fn, const float *G, int m, int n, int r, int side,
                            const float *basis, oz_err *err) {
    if (!G || !basis) return oz_fail(err, OZ_ERR_INPUT, "%s: NULL matrix or basis pointer", fn);
    if (m <= 0 || n <= 0) return oz_fail(err, OZ_ERR_INPUT, "%s: matrix shape (%d, %d) must be positive", fn, m, n);
    if (r <= 0) return oz_fail(err, OZ_ERR_INPUT, "%s: rank %d must be positive", fn, r);
    if (side != OZ_SUBSPACE_LEFT && side != OZ_SUBSPACE_RIGHT)
        return oz_fail(err, OZ_ERR_INPUT, "%s: side %d is neither LEFT nor RIGHT", fn, side);
    /* LAPACK would loop or fail obscurely on NaN; the gradient is the real culprit, say so. */
    const size_t total = (size_t)m * n;
    for (size_t i = 0; i < total; i++)
        if (!isfinite(G[i]))
            return oz_fail(err, OZ_ERR_NUMERIC, "%s: the (%d, %d) matrix has a non-finite entry at %zu", fn, m, n, i);
    return OZ_OK;
}

/* LAPACK returns each singular vector up to sign. Fixing the sign (largest-magnitude entry
 * positive) makes the result reproducible across methods and refreshes of a stable subspace,
 * which matters because GaLore keeps its Adam moments, in basis coordinates, across refreshes. */
static void fix_signs(float *basis, int dim, int rank, int side) {
    /* LEFT: vector j is column j of (dim, rank); RIGHT: row j of (rank, dim). */
    const size_t stride = side == OZ_SUBSPACE_LEFT ? (size_t)rank : 1;
    for (int j = 0; j < rank; j++) {
        float *v = side == OZ_SUBSPACE_LEFT ? basis + j : basis + (size_t)j * dim;
        float best = 0.0f;
        for (int i = 0; i < dim; i++) {
            float x = v[i * stride];
            if (fabsf(x) > fabsf(best)) best = x;
        }
        if (best < 0.0f)
            for (int i = 0; i < dim; i++) v[i * stride] = -v[i * stride];
    }
}

static void *alloc_ws(size_t bytes) { return aligned_alloc(ALIGN, (bytes + ALIGN - 1) / ALIGN * ALIGN); }

/* ---- exact ---- */

oz_status oz_subspace_svd(const float *G, int m, int n, int r, int side, float *basis, float *sv,
                          int *rank_out, oz_err *err) {
    OZ_TRY(check_args("subspace_svd", G, m, n, r, side, basis, err));
    exact_plan pl;
    if (!plan_exact(m, n, r, &pl))
        return oz_fail(err, OZ_ERR_INPUT, "subspace_svd: (%d, %d) is too large for 32-bit LAPACK workspace", m, n);
    char *ws = alloc_ws(pl.total);
    if (!ws) return oz_fail(err, OZ_ERR_NOMEM, "subspace_svd: cannot allocate %zu bytes of workspace", pl.total);
    float *a = (float *)(ws + pl.off_a), *sq = (float *)(ws + pl.off_sq), *s = (float *)(ws + pl.off_s);
    float *work = (float *)(ws + pl.off_work);
    lapack_int *iwork = (lapack_int *)(ws + pl.off_iwork);
    memcpy(a, G, (size_t)m * n * sizeof(float));

    /* Decompose G^T (column-major (n, m)) = U' S VT': U' = V (n, k), VT' = U^T (k, m). With
     * JOBZ='O' the tall factor overwrites the copy and the square one goes to sq. */
    lapack_int M = n, N = m, k = pl.k, ldu = n, ldvt = k, lwork = (lapack_int)pl.lwork, info = 0;
    LAPACK_sgesdd("O", &M, &N, a, &M, s, sq, &ldu, sq, &ldvt, work, &lwork, iwork, &info);
    if (info != 0) {
        free(ws);
        if (info > 0) return oz_fail(err, OZ_ERR_NUMERIC, "subspace_svd: sgesdd did not converge on the (%d, %d) matrix", m, n);
        return oz_fail(err, OZ_ERR_INTERNAL, "subspace_svd: sgesdd rejected argument %d", (int)-info);
    }
    const float *u_t = n >= m ? a : sq;  /* U' = V, column-major (n, k), ld n */
    const float *vt_t = n >= m ? sq : a; /* VT' = U^T, column-major (k, m), ld k */
    const int rank = pl.rank;
    if (side == OZ_SUBSPACE_RIGHT) {
        /* Vt[:r, :] row-major (r, n) is V[:, :r] column-major: the first r columns of U'. */
        memcpy(basis, u_t, (size_t)rank * n * sizeof(float));
    } else {
        /* U[:, :r] row-major (m, r): row i is the first r entries of VT' column i. */
        for (int i = 0; i < m; i++) memcpy(basis + (size_t)i * rank, vt_t + (size_t)i * k, (size_t)rank * sizeof(float));
    }
    if (sv) memcpy(sv, s, (size_t)rank * sizeof(float));
    free(ws);
    fix_signs(basis, side == OZ_SUBSPACE_LEFT ? m : n, rank, side);
    if (rank_out) *rank_out = rank;
    return OZ_OK;
}

/* ---- randomized ---- */

/* Box-Muller using both outputs: half the transcendental calls of oz_rng_normal, and the test
 * matrix is generated sequentially so it depends only on the rng state. */
/* Normals per substream: a 7b matrix's sketch (11008 x 1032) is 2,774 substreams. */
#define GAUSSIAN_CHUNK 4096

void oz_subspace_gaussian(float *x, size_t count, oz_rng *rng) {
    /* One draw from rng seeds the substreams; substream k fills elements [k * CHUNK, ...) by
     * Box-Muller. The values depend on rng's state alone, never on the thread count, and the
     * chunks run in parallel: drawn in one stream, the sketches of a 7b refresh took 51 s of the
     * 69 s it spends on an H200. */
    const uint64_t base = oz_rng_next(rng);
    const size_t chunks = (count + GAUSSIAN_CHUNK - 1) / GAUSSIAN_CHUNK;
#pragma omp parallel for schedule(static) if (count > 4 * GAUSSIAN_CHUNK)
    for (size_t k = 0; k < chunks; k++) {
        oz_rng sub;
        oz_rng_seed(&sub, base ^ (0x9E3779B97F4A7C15ull * (uint64_t)(k + 1)));
        const size_t end = (k + 1) * GAUSSIAN_CHUNK < count ? (k + 1) * GAUSSIAN_CHUNK : count;
        for (size_t i = k * GAUSSIAN_CHUNK; i < end; i += 2) {
            double u1 = ((double)(oz_rng_next(&sub) >> 11) + 1.0) * 0x1p-53; /* (0, 1]: log is finite */
            double u2 = (double)(oz_rng_next(&sub) >> 11) * 0x1p-53;
            double rad = sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
            x[i] = (float)(rad * cos(th));
            if (i + 1 < end) x[i + 1] = (float)(rad * sin(th));
        }
    }
}

/* Replace the column-major (rows, cols) matrix by an orthonormal basis of its range. */
static int orthonormalize(float *a, int rows, int cols, float *tau, float *work, size_t lwork) {
    lapack_int M = rows, N = cols, lw = (lapack_int)lwork, info = 0;
    LAPACK_sgeqrf(&M, &N, a, &M, tau, work, &lw, &info);
    if (info != 0) return (int)info;
    LAPACK_sorgqr(&M, &N, &N, a, &M, tau, work, &lw, &info);
    return (int)info;
}

/* Where the range finder's products come from: G itself (row-major (m, n)), or its factors
 * G = dY^T X with dY (rows, m) and X (rows, n), row-major with leading dimensions ldy and ldx,
 * multiplied through t (rows, l), column-major. */
typedef struct {
    const float *G;
    const float *dy, *x;
    int ldy, ldx, rows;
    float *t;
} gsource;

/* out (column-major, ld_out) = X_side in, or X_side^T in (transpose), where X_side = G for LEFT and
 * G^T for RIGHT; in is column-major with leading dimension ld_in, `cols` columns. */
static void gprod(const gsource *g, int m, int n, int side, int transpose, const float *in, int ld_in, float *out,
                  int ld_out, int cols) {
    /* The product with G itself (g_side) or G^T. */
    const int with_g = (side == OZ_SUBSPACE_LEFT) != (transpose != 0);
    if (g->G) {
        /* G's bytes are the column-major (n, m) G^T: G = op(T), G^T = op(N). */
        if (with_g)
            cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, m, cols, n, 1.0f, g->G, n, in, ld_in, 0.0f, out, ld_out);
        else
            cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, n, cols, m, 1.0f, g->G, n, in, ld_in, 0.0f, out, ld_out);
        return;
    }
    /* dY's bytes are the column-major (m, rows) dY^T, X's the column-major (n, rows) X^T. */
    const int R = g->rows;
    if (with_g) { /* G in = dY^T (X in) */
        cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, R, cols, n, 1.0f, g->x, g->ldx, in, ld_in, 0.0f, g->t, R);
        cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, m, cols, R, 1.0f, g->dy, g->ldy, g->t, R, 0.0f, out, ld_out);
    } else { /* G^T in = X^T (dY in) */
        cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, R, cols, m, 1.0f, g->dy, g->ldy, in, ld_in, 0.0f, g->t, R);
        cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, n, cols, R, 1.0f, g->x, g->ldx, g->t, R, 0.0f, out, ld_out);
    }
}

/* The range finder over either source (the materialized G or its factors: only gprod differs). */
static oz_status randomized_core(const char *fn, gsource *g, int m, int n, int r, int side, int oversample,
                                 int power_iters, oz_rng *rng, float *basis, int *rank_out, oz_err *err) {
    if (!rng) return oz_fail(err, OZ_ERR_INPUT, "%s: NULL rng", fn);
    if (oversample < 0) oversample = OZ_SUBSPACE_DEFAULT_OVERSAMPLE;
    if (power_iters < 0) power_iters = OZ_SUBSPACE_DEFAULT_POWER_ITERS;
    rand_plan pl;
    if (!plan_randomized(m, n, r, side, oversample, &pl))
        return oz_fail(err, OZ_ERR_INPUT, "%s: (%d, %d) at rank %d is too large for 32-bit LAPACK workspace", fn, m, n, r);
    size_t t_off = pl.total, total = pl.total;
    if (!g->G) total += (size_t)g->rows * pl.l * sizeof(float); /* t (rows, l) after the plan's pieces */
    char *ws = alloc_ws(total);
    if (!ws) return oz_fail(err, OZ_ERR_NOMEM, "%s: cannot allocate %zu bytes of workspace", fn, total);
    if (!g->G) g->t = (float *)(ws + t_off);
    float *y = (float *)(ws + pl.off_y), *z = (float *)(ws + pl.off_z), *tau = (float *)(ws + pl.off_tau);
    float *qrwork = (float *)(ws + pl.off_qrwork), *rr = (float *)(ws + pl.off_r), *vt = (float *)(ws + pl.off_vt);
    float *s = (float *)(ws + pl.off_s), *svdwork = (float *)(ws + pl.off_svdwork);
    lapack_int *iwork = (lapack_int *)(ws + pl.off_iwork);
    const int p = pl.p, q = pl.q, l = pl.l, rank = pl.rank;

    /* X is the matrix whose left singular vectors we want: G for LEFT, G^T for RIGHT. */
    int info = 0;
    const char *stage = "";

    oz_subspace_gaussian(z, (size_t)q * l, rng); /* Omega (q, l) */
    gprod(g, m, n, side, 0, z, q, y, p, l);       /* Y = X Omega */
    /* Re-orthonormalize after every product: otherwise the columns collapse onto the top singular
     * vector in floating point and the power iterations lose the rest of the subspace. */
    if ((info = orthonormalize(y, p, l, tau, qrwork, pl.lwork_qr)) != 0) { stage = "range QR"; goto fail; }
    for (int it = 0; it < power_iters; it++) {
        gprod(g, m, n, side, 1, y, p, z, q, l); /* Z = X^T Y */
        if ((info = orthonormalize(z, q, l, tau, qrwork, pl.lwork_qr)) != 0) { stage = "power QR"; goto fail; }
        gprod(g, m, n, side, 0, z, q, y, p, l); /* Y = X Z */
        if ((info = orthonormalize(y, p, l, tau, qrwork, pl.lwork_qr)) != 0) { stage = "power QR"; goto fail; }
    }

    /* B = Y^T X (l, q). Rather than an SVD of the wide B, factor B^T = Qb R and decompose the
     * small R (l, l) = Ur S VTr: then B = VTr^T S (Qb Ur)^T, so B's left singular vectors are
     * VTr^T and X's are approximately Y VTr^T. Only the l x l problem needs an SVD. */
    gprod(g, m, n, side, 1, y, p, z, q, l); /* Z = B^T */
    {
        lapack_int M = q, N = l, lw = (lapack_int)pl.lwork_qr, linfo = 0;
        LAPACK_sgeqrf(&M, &N, z, &M, tau, qrwork, &lw, &linfo);
        if ((info = (int)linfo) != 0) { stage = "projection QR"; goto fail; }
    }
    for (int j = 0; j < l; j++)
        for (int i = 0; i < l; i++) rr[i + (size_t)j * l] = i <= j ? z[i + (size_t)j * q] : 0.0f;
    {
        lapack_int L = l, lw = (lapack_int)pl.lwork_svd, linfo = 0;
        LAPACK_sgesdd("O", &L, &L, rr, &L, s, vt, &L, vt, &L, svdwork, &lw, iwork, &linfo);
        if ((info = (int)linfo) != 0) { stage = "small SVD"; goto fail; }
    }
    /* basis vectors = Y (p, l) * VTr[:rank, :]^T. LEFT wants them row-major (m, rank), i.e. the
     * column-major (rank, p) transpose; RIGHT wants row-major (rank, n), i.e. column-major (p, rank). */
    if (side == OZ_SUBSPACE_LEFT)
        cblas_sgemm(CblasColMajor, CblasNoTrans, CblasTrans, rank, p, l, 1.0f, vt, l, y, p, 0.0f, basis, rank);
    else
        cblas_sgemm(CblasColMajor, CblasNoTrans, CblasTrans, p, rank, l, 1.0f, y, p, vt, l, 0.0f, basis, p);
    free(ws);
    fix_signs(basis, p, rank, side);
    if (rank_out) *rank_out = rank;
    return OZ_OK;

fail:
    free(ws);
    if (info > 0) return oz_fail(err, OZ_ERR_NUMERIC, "%s: %s did not converge on the (%d, %d) matrix", fn, stage, m, n);
    return oz_fail(err, OZ_ERR_INTERNAL, "%s: LAPACK rejected argument %d in the %s", fn, -info, stage);
}

oz_status oz_subspace_randomized(const float *G, int m, int n, int r, int side, int oversample,
                                 int power_iters, oz_rng *rng, float *basis, int *rank_out, oz_err *err) {
    OZ_TRY(check_args("subspace_randomized", G, m, n, r, side, basis, err));
    gsource g = {G, NULL, NULL, 0, 0, 0, NULL};
    return randomized_core("subspace_randomized", &g, m, n, r, side, oversample, power_iters, rng, basis, rank_out,
                           err);
}

/* Every entry of the (rows, cols) row-major matrix of leading dimension ld is finite. */
static bool all_finite(const float *a, int rows, int cols, int ld) {
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++)
            if (!isfinite(a[(size_t)i * ld + j])) return false;
    return true;
}

oz_status oz_subspace_randomized_factored(const float *dY, int ldy, const float *X, int ldx, int rows, int m, int n,
                                          int r, int side, int oversample, int power_iters, oz_rng *rng, float *basis,
                                          int *rank_out, oz_err *err) {
    const char *fn = "subspace_randomized_factored";
    if (!dY || !X || !basis) return oz_fail(err, OZ_ERR_INPUT, "%s: NULL factor or basis pointer", fn);
    if (m <= 0 || n <= 0 || rows <= 0 || ldy < m || ldx < n)
        return oz_fail(err, OZ_ERR_INPUT, "%s: shapes (%d, %d) over %d rows (ld %d, %d) are not valid", fn, m, n, rows,
                       ldy, ldx);
    if (r <= 0) return oz_fail(err, OZ_ERR_INPUT, "%s: rank %d must be positive", fn, r);
    if (side != OZ_SUBSPACE_LEFT && side != OZ_SUBSPACE_RIGHT)
        return oz_fail(err, OZ_ERR_INPUT, "%s: side %d is neither LEFT nor RIGHT", fn, side);
    if (!all_finite(dY, rows, m, ldy) || !all_finite(X, rows, n, ldx))
        return oz_fail(err, OZ_ERR_NUMERIC, "%s: a factor of the (%d, %d) gradient has a non-finite entry", fn, m, n);
    gsource g = {NULL, dY, X, ldy, ldx, rows, NULL};
    return randomized_core(fn, &g, m, n, r, side, oversample, power_iters, rng, basis, rank_out, err);
}

/* ---- diagnostics ---- */

/* Copy a float basis into a column-major (dim, r) double matrix, whatever its layout. */
static void to_double_cols(const float *x, int dim, int r, int layout, double *out) {
    for (int j = 0; j < r; j++)
        for (int i = 0; i < dim; i++)
            out[i + (size_t)j * dim] = layout == OZ_SUBSPACE_ROWS ? x[(size_t)j * dim + i] : x[(size_t)i * r + j];
}

/* Singular values (decreasing) of a column-major (r, r) double matrix, overwritten. */
static int singular_values_sq(double *c, int r, double *s) {
    lapack_int R = r, lw = -1, info = 0, one = 1;
    double q = 0, dummy = 0;
    lapack_int *iwork = malloc((size_t)8 * r * sizeof(lapack_int));
    if (!iwork) return -1;
    LAPACK_dgesdd("N", &R, &R, c, &R, s, &dummy, &one, &dummy, &one, &q, &lw, iwork, &info);
    size_t nw = (size_t)q + 64;
    double *work = info == 0 ? malloc(nw * sizeof(double)) : NULL;
    if (!work) {
        free(iwork);
        return -1;
    }
    lw = (lapack_int)nw;
    LAPACK_dgesdd("N", &R, &R, c, &R, s, &dummy, &one, &dummy, &one, work, &lw, iwork, &info);
    free(work);
    free(iwork);
    return (int)info;
}

double oz_subspace_principal_angles_max(const float *A, const float *B, int dim, int r, int layout) {
    if (!A || !B || r <= 0 || dim < r) return NAN;
    const size_t dr = (size_t)dim * r, rr = (size_t)r * r;
    double *a = malloc(dr * sizeof(double)), *b = malloc(dr * sizeof(double));
    double *c = malloc(rr * sizeof(double)), *g = malloc(rr * sizeof(double)), *s = malloc((size_t)r * sizeof(double));
    double angle = NAN;
    if (!a || !b || !c || !g || !s) goto done;
    to_double_cols(A, dim, r, layout, a);
    to_double_cols(B, dim, r, layout, b);
    cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, r, r, dim, 1.0, a, dim, b, dim, 0.0, c, r); /* A^T B */
    cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, dim, r, r, -1.0, a, dim, c, r, 1.0, b, dim); /* b = B - A A^T B */
    cblas_dsyrk(CblasColMajor, CblasUpper, CblasTrans, r, dim, 1.0, b, dim, 0.0, g, r);
    for (int j = 0; j < r; j++)
        for (int i = j + 1; i < r; i++) g[i + (size_t)j * r] = g[j + (size_t)i * r];
    if (singular_values_sq(c, r, s) != 0) goto done;
    const double cos_min = s[r - 1];
    if (singular_values_sq(g, r, s) != 0) goto done;
    const double sin_max = sqrt(s[0] > 0 ? s[0] : 0.0);
    /* Each formula is accurate where its argument is not near 1. */
    angle = cos_min < M_SQRT1_2 ? acos(cos_min > 0 ? cos_min : 0.0) : asin(sin_max < 1 ? sin_max : 1.0);
done:
    free(a);
    free(b);
    free(c);
    free(g);
    free(s);
    return angle;
}

double oz_subspace_orthonormality_error(const float *basis, int dim, int r, int layout) {
    if (!basis || r <= 0 || dim <= 0) return NAN;
    double *a = malloc((size_t)dim * r * sizeof(double)), *g = malloc((size_t)r * r * sizeof(double));
    double worst = NAN;
    if (a && g) {
        to_double_cols(basis, dim, r, layout, a);
        cblas_dsyrk(CblasColMajor, CblasUpper, CblasTrans, r, dim, 1.0, a, dim, 0.0, g, r);
        worst = 0.0;
        for (int j = 0; j < r; j++)
            for (int i = 0; i <= j; i++) {
                double d = fabs(g[i + (size_t)j * r] - (i == j ? 1.0 : 0.0));
                if (d > worst) worst = d;
            }
    }
    free(a);
    free(g);
    return worst;
}
