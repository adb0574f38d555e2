/* WeLore's one-shot rank reduction (arXiv 2407.11239): the singular values of every attention/MLP
 * matrix, min-max normalised per matrix; one global threshold tau prunes the ranks whose normalised
 * value is below it (heavy-tailed spectra lose many, flat ones few); matrices that lose more than
 * min_ratio of their rank become low-rank components (LRCs, two balanced factors), the others stay
 * dense and untouched (N-LRCs). No data is needed.
 *
 * The ratio that tau is bisected to is the fraction of rank actually removed from the model:
 * sum over LRCs of pruned ranks / sum over ALL matrices of min(out, in). N-LRCs count with 0
 * removed, because they are kept intact. With min_ratio = 0 every matrix is an LRC and this is the
 * reference's ratio exactly; with 0.5 it does not overstate what was compressed (counting only the
 * LRCs, as the reference's report does, would call two matrices pruned by 90% a "90%" model). */
#ifndef OZ_WELORE_H
#define OZ_WELORE_H
#include <stdbool.h>

#include "util/err.h"

/* All min(out, in) singular values of W (out x in, row-major fp32), decreasing, by LAPACK. */
oz_status oz_welore_spectrum(const float *W, int out, int in, float *sv, oz_err *err);

/* Ranks pruned at threshold tau from a decreasing spectrum of r values: #{i : (sv_i - sv_min) /
 * (sv_max - sv_min) < tau}, at most r - 1 (the top direction always stays). A flat spectrum
 * (sv_max == sv_min) prunes nothing. */
int oz_welore_pruned(const float *sv, int r, double tau);

/* The matrices of one model, and the decision for each. */
typedef struct {
    int n;                 /* matrices */
    const float *const *sv;/* n decreasing spectra (NULL for the uniform rule) */
    const int *r;          /* full ranks min(out, in) */
    int *kept;             /* out: kept rank k (LRCs) or r (N-LRCs) */
    bool *lrc;             /* out: stored as factors */
} oz_welore_plan;

/* Classifies every matrix at threshold tau (pruned p, LRC iff p / r > min_ratio) and returns the
 * removed-rank ratio defined above. */
double oz_welore_assign(oz_welore_plan *plan, double tau, double min_ratio);
/* Bisection on tau in [0, 1] for `target` (the ratio is non-decreasing in tau); the plan is left
 * assigned at the tau returned, the one whose ratio is closest to the target (ties: the smaller
 * tau). *achieved gets that ratio: a matrix crossing min_ratio removes many ranks at once, so the
 * exact target is not always reachable. */
double oz_welore_find_tau(oz_welore_plan *plan, double target, double min_ratio, double *achieved);
/* The uniform baseline: every matrix prunes round(ratio * r) ranks (at most r - 1), LRC by the
 * same min_ratio rule; returns the removed-rank ratio. */
double oz_welore_uniform(oz_welore_plan *plan, double ratio, double min_ratio);

/* Balanced factors of W's best rank-k approximation U_k S_k V_k^T: A = S^{1/2} V^T (k x in) and
 * B = U S^{1/2} (out x k), so B A is the truncated SVD of W. */
oz_status oz_welore_factors(const float *W, int out, int in, int k, float *A, float *B, oz_err *err);

#endif
