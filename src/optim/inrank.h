/* InRank's numerics (arXiv 2306.11250, reference/galore_family.md §3): the explained-variance rule
 * that grows a factored matrix's rank, and the spectrum of a factored matrix B_r A_r computed
 * from its factors alone (two thin QRs and an r x r SVD; the out x in product never exists).
 * Pure functions: no model, no state, no printing. */
#ifndef OZ_INRANK_H
#define OZ_INRANK_H
#include <stddef.h>

#include "util/err.h"

/* InRank's largest stored rank for an (out x in) matrix: floor(min(in, out) / 2). */
int oz_inrank_max_rank(int out, int in);

/* The buffer actually used for a matrix of stored rank R: min(b, max(1, floor(R / 3))). The
 * reference's b = 100 is at most R / 3.84 on every model it ran (R >= 384); on smaller ones the
 * buffer would swallow the rank (the rule only grows k while k < R - b), so it is capped at R/3,
 * which leaves k room to grow to 2R/3 and keeps the reference's b wherever R >= 300. */
int oz_inrank_buffer(int b, int R);

/* The rank-growth rule. s: the n nonzero-able singular values of B_r A_r, descending (n = r, the
 * active rank); the reference takes them from the SVD of the in x out product, whose vector has
 * n_full = min(in, out) entries, the rest zero: the variances below run over all n_full entries,
 * as torch.var does there. For idx = k, k+1, ..., min(k + b, R - b) - 1, with tail = s with its
 * first idx entries zeroed, ratio(idx) = 1 - var(tail) / var(s) (unbiased variance); the first
 * idx whose ratio exceeds tau is the new rank, else the last idx tried. Nothing changes when
 * k >= R - b or s is all zero. Never returns less than k. */
int oz_inrank_next_rank(const double *s, int n, int n_full, int k, int b, int R, double tau);

/* Explained ratio 1 - var(tail) / var(s) at idx (as above); 0 when var(s) is 0. For tests and logs. */
double oz_inrank_explained(const double *s, int n, int n_full, int idx);

/* Singular values of B_r A_r, descending, where A (R x in, row-major, row stride in) and
 * B (out x R, row-major, row stride R) are a factored matrix and r <= min(R, in, out) its active
 * rank: QR of B_r (out x r) and of A_r^T (in x r), then the SVD of Rb Ra^T (r x r), all in double.
 * s receives r values. With k > 0 and A_new/B_new non-NULL, also writes the balanced rank-k
 * truncation A_new = S_k^{1/2} V_k^T (k x in) and B_new = U_k S_k^{1/2} (out x k), so
 * B_new A_new is the best rank-k approximation of B_r A_r (equal to it when k >= its rank).
 * Errors: OZ_ERR_INPUT (bad sizes), OZ_ERR_NUMERIC (NaN/Inf, or LAPACK did not converge),
 * OZ_ERR_NOMEM. */
oz_status oz_inrank_factored_svd(const float *A, const float *B, int out, int in, int R, int r, double *s, int k,
                                 float *A_new, float *B_new, oz_err *err);

/* Bytes oz_inrank_factored_svd mallocs for a matrix of stored rank R (its whole workspace, one
 * block, the same at any active rank); the caller notes it in the arena as a transient. 0 on bad
 * sizes. */
size_t oz_inrank_workspace_bytes(int out, int in, int R);

#endif
