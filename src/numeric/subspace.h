/* Top-r singular subspaces of a gradient matrix, the projector GaLore refreshes every T steps:
 * an exact thin SVD through LAPACK, and a randomized range finder (Halko, Martinsson & Tropp) that
 * needs a few GEMMs and QRs instead. Plus two diagnostics (largest principal angle between two
 * subspaces, distance of a basis from orthonormal) so the approximation can be measured.
 *
 * Matrices are row-major fp32. Only the LAPACK Fortran symbols of the linked OpenBLAS are used
 * (no -llapacke), so the build links exactly one BLAS. Nothing here keeps global state or prints;
 * workspace is malloc'd inside each call and freed before it returns. */
#ifndef OZ_SUBSPACE_H
#define OZ_SUBSPACE_H
#include <stddef.h>

#include "util/err.h"
#include "util/rng.h"

/* side: which singular vectors of G (m, n) make the basis.
 *   LEFT:  P = U[:, :r], stored (m, r), one basis vector per column  (GaLore's P^T G)
 *   RIGHT: Q = Vt[:r, :], stored (r, n), one basis vector per row    (GaLore's G Q^T) */
enum { OZ_SUBSPACE_LEFT = 0, OZ_SUBSPACE_RIGHT = 1 };
/* layout of a basis of r vectors of length dim: COLUMNS = (dim, r), ROWS = (r, dim). LEFT bases
 * are COLUMNS, RIGHT bases are ROWS. */
enum { OZ_SUBSPACE_COLUMNS = 0, OZ_SUBSPACE_ROWS = 1 };
enum { OZ_SUBSPACE_EXACT = 0, OZ_SUBSPACE_RANDOMIZED = 1 };

#define OZ_SUBSPACE_DEFAULT_OVERSAMPLE 8
#define OZ_SUBSPACE_DEFAULT_POWER_ITERS 2

/* The rank actually computed: r clamped to min(m, n) (the thin SVD has no more); 0 if any
 * argument is <= 0. Size `basis` as (m or n) * oz_subspace_rank(m, n, r) floats. */
int oz_subspace_rank(int m, int n, int r);

/* Exact top-r subspace of G (m, n) by LAPACK sgesdd on a copy. basis: (m, rank) for LEFT,
 * (rank, n) for RIGHT, vectors ordered by decreasing singular value. sv (may be NULL): the top
 * `rank` singular values, decreasing. rank_out (may be NULL): the clamped rank.
 * Each basis vector's sign is fixed so its largest-magnitude entry is positive.
 * Errors: OZ_ERR_INPUT (m, n, r <= 0, bad side, NULL pointers, too large for 32-bit LAPACK),
 * OZ_ERR_NUMERIC (G has NaN/Inf, or the SVD did not converge), OZ_ERR_NOMEM. */
oz_status oz_subspace_svd(const float *G, int m, int n, int r, int side, float *basis, float *sv,
                          int *rank_out, oz_err *err);

/* Randomized top-r subspace of G (m, n): range finder with a Gaussian test matrix of
 * rank + oversample columns (clamped to min(m, n)), power_iters subspace iterations re-orthonormalized
 * by Householder QR after every product, then an SVD of the small projected matrix so the result
 * is the best rank-r basis inside the found range, ordered by singular value. oversample < 0 and
 * power_iters < 0 mean the defaults above. The Gaussian test matrix (q x (rank + oversample), q = n
 * for LEFT and m for RIGHT) comes from oz_subspace_gaussian, which takes one draw from rng, so the
 * result is a pure function of G and the rng state (for a fixed BLAS thread count). Output, signs,
 * errors: as oz_subspace_svd. */
oz_status oz_subspace_randomized(const float *G, int m, int n, int r, int side, int oversample,
                                 int power_iters, oz_rng *rng, float *basis, int *rank_out, oz_err *err);

/* The same range finder for G = dY^T X (m, n) given only its factors: dY (rows, m) and X (rows, n),
 * row-major with leading dimensions ldy >= m and ldx >= n (a layer's output gradient and input:
 * the weight gradient of y = x W^T is never formed). Every product with G or G^T is taken as two
 * GEMMs through a (rows, l) intermediate: G M = dY^T (X M), G^T M = X^T (dY M). The Gaussian draws,
 * QRs and small SVD are oz_subspace_randomized's, so the result equals its result on the
 * materialized G up to fp32 rounding of the products. A non-finite factor entry is OZ_ERR_NUMERIC;
 * other errors as oz_subspace_randomized. */
oz_status oz_subspace_randomized_factored(const float *dY, int ldy, const float *X, int ldx, int rows, int m, int n,
                                          int r, int side, int oversample, int power_iters, oz_rng *rng, float *basis,
                                          int *rank_out, oz_err *err);

/* Largest principal angle, in radians in [0, pi/2], between span(A) and span(B), each r
 * orthonormal vectors of length dim in `layout`. Computed in double: the cosine (smallest
 * singular value of A^T B) for large angles and the sine (largest singular value of
 * B - A A^T B) for small ones, where acos of a cosine near 1 would lose all precision.
 * NaN if r <= 0, dim < r, a pointer is NULL, or memory runs out. */
double oz_subspace_principal_angles_max(const float *A, const float *B, int dim, int r, int layout);

/* max |B^T B - I| over the r x r Gram matrix of the basis (computed in double). NaN on bad
 * arguments or out of memory. */
double oz_subspace_orthonormality_error(const float *basis, int dim, int r, int layout);

/* Peak bytes oz_subspace_svd (method EXACT) or oz_subspace_randomized (method RANDOMIZED, with
 * the default oversample; for oversample o pass r + o - 8) mallocs for G (m, n) at rank r, the
 * exact figure those calls allocate (it asks LAPACK for its workspace sizes, which is cheap).
 * Excludes the caller's basis and OpenBLAS's own per-thread buffers. 0 on bad arguments.
 * Examples at 4096 x 11008: exact ~583 MB at any r; randomized ~88 MB at r = 1024, ~18 MB at 256. */
size_t oz_subspace_workspace_bytes(int m, int n, int r, int method);

/* Peak bytes oz_subspace_randomized_factored mallocs (default oversample) for G (m, n) factored
 * over `rows` rows: the randomized workspace plus the (rows, l) intermediate. 0 on bad arguments. */
size_t oz_subspace_factored_workspace_bytes(int m, int n, int r, int rows);

/* The Gaussian test matrix oz_subspace_randomized uses: count standard normals in the order it
 * fills its column-major (q, l) buffer, from substreams of 4096 values seeded by one draw from
 * rng (so they are drawn in parallel, and depend on rng's state only). A GPU port draws it here
 * and uploads it, so both backends start from the same sketch. */
void oz_subspace_gaussian(float *x, size_t count, oz_rng *rng);

/* The GPU subspace's workspace, one buffer of device memory carved at these byte offsets (each
 * 256-byte aligned). Its size depends on m, n, r and the method only (not on a solver query), so
 * the planner predicts it on any machine: the solver's part is an allowance (`lwork` floats) that
 * the CUDA backend checks cuSOLVER's request against, failing with one line if it were short.
 * randomized: p, q, l, rank as oz_subspace_randomized (default oversample); y (p, l), z (q, l),
 *   tau (l), rr (l, l), vt (l, l), s (l), e (l), work (lwork), info.
 * exact: the tall orientation A (rows >= cols, cols = min(m, n)) of G is factored A = Q R and the
 *   square R = Ur S Vt by gesvd, so the solver's SVD workspace grows with cols^2, not rows * cols:
 *   a (rows, cols) (A, then Q), rr (cols, cols), z = Ur (cols, cols), vt (cols, cols),
 *   ua = (Q Ur)[:, :rank] (rows, rank), tau, s, e (cols), work (lwork), info. */
typedef struct {
    int p, q, l, rank, rows, cols;
    size_t lwork;
    size_t off_y, off_z, off_tau, off_r, off_vt, off_s, off_e, off_ua, off_work, off_info, total;
    size_t off_t; /* factored: the (rows, l) intermediate of the two-GEMM products, after the rest */
} oz_subspace_gpu_plan;
/* 0 on bad arguments (as oz_subspace_workspace_bytes); side only swaps p and q. */
int oz_subspace_gpu_layout(int m, int n, int r, int side, int method, oz_subspace_gpu_plan *pl);
/* The randomized layout for the factored range finder (oz_subspace_randomized_factored) over `rows`
 * rows of factors: the randomized one plus t (rows, l) at off_t. 0 on bad arguments. */
int oz_subspace_gpu_layout_factored(int m, int n, int r, int side, int rows, oz_subspace_gpu_plan *pl);

#endif
