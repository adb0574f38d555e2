/* The subspace op on the GPU: GaLore's top-r singular basis of a gradient that stays in device
 * memory. The algorithms are subspace.c's, with cuBLAS for the products and cuSOLVER for the
 * factorizations, in the same column-major reading of the row-major G (G's bytes are the
 * column-major (n, m) G^T):
 *  - randomized: the Gaussian test matrix is drawn on the host by oz_subspace_gaussian from the
 *    caller's rng (exactly the CPU's draws) and uploaded; Y = X Omega, QR after every product,
 *    power iterations, then the small SVD of R from B^T = Qb R (cusolverDnSgesvd), basis = Y VTr^T;
 *  - factored randomized: the same, for G = dY^T X given only dY and X; each product with G or
 *    G^T is two GEMMs through the workspace's (rows, l) intermediate (subspace.c's gprod);
 *  - exact: the tall orientation A of G (gesvd takes rows >= cols only) is factored A = Q R
 *    (cusolverDnSgeqrf), the square R = Ur S VT by cusolverDnSgesvd, and U_A = Q Ur (Sorgqr, a
 *    GEMM) only where the basis needs it: gesvd's workspace then grows with min(m, n)^2.
 * Every buffer is carved from the caller's workspace (oz_subspace_gpu_layout: the planner's
 * figure); cuSOLVER's own request is checked against the layout's allowance. Results match the CPU
 * up to fp32 rounding of different algorithms (tested by principal angles), and each vector's sign
 * is fixed as on the CPU (largest-magnitude entry positive, the first such entry on ties). */
#include <stdlib.h>

#include "backend/cuda/cuda_internal.h"

extern "C" {
#include "numeric/subspace.h"
}

static oz_cuda *C(oz_backend *be) { return (oz_cuda *)be->impl; }

static int check_solver(oz_cuda *c, cusolverStatus_t s, const char *what, int line) {
    if (s == CUSOLVER_STATUS_SUCCESS) return 1;
    oz_cuda_fail(c, __FILE__, line, "cuSOLVER: %s failed with status %d", what, (int)s);
    return 0;
}
#define OZ_CUSOLVER_CHECK(c, call) check_solver((c), (call), #call, __LINE__)

/* The solver handle, made on first use so runs without GaLore never create one. */
static int solver_of(oz_cuda *c) {
    if (c->solver) return 1;
    if (!OZ_CUSOLVER_CHECK(c, cusolverDnCreate(&c->solver))) return 0;
    return OZ_CUSOLVER_CHECK(c, cusolverDnSetStream(c->solver, c->stream));
}

__global__ void nonfinite_k(const float *x, size_t n, int *flag) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        if (!isfinite(x[i])) *flag = 1; /* every writer writes the same value */
}

/* rr (l, l) = the upper triangle of z's leading (l, l) block (ld q), zeros below. */
__global__ void upper_k(float *rr, const float *z, int l, int q) {
    for (size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x; t < (size_t)l * l; t += (size_t)gridDim.x * blockDim.x) {
        const size_t i = t % l, j = t / l;
        rr[t] = i <= j ? z[i + j * q] : 0.0f;
    }
}

/* dst (cols, rows), ld_dst = the transpose of column-major src (rows, cols), ld_src. Exact copies. */
__global__ void transpose_k(float *dst, int ld_dst, const float *src, int ld_src, int rows, int cols) {
    for (size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x; t < (size_t)rows * cols;
         t += (size_t)gridDim.x * blockDim.x) {
        const size_t i = t % rows, j = t / rows;
        dst[j + i * (size_t)ld_dst] = src[i + j * (size_t)ld_src];
    }
}

/* subspace.c's fix_signs: one block per vector; the largest |x| wins, the lower index on ties. */
__global__ void fix_signs_k(float *basis, int dim, int rank, int left) {
    __shared__ float sv[256];
    __shared__ int si[256];
    const int j = blockIdx.x;
    const size_t stride = left ? (size_t)rank : 1;
    float *v = left ? basis + j : basis + (size_t)j * dim;
    float best = 0.0f;
    int at = -1;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float x = v[i * stride];
        if (fabsf(x) > fabsf(best)) best = x, at = i; /* i grows: the first maximum stays */
    }
    sv[threadIdx.x] = best;
    si[threadIdx.x] = at;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o) {
            const float a = fabsf(sv[threadIdx.x]), b = fabsf(sv[threadIdx.x + o]);
            const int ia = si[threadIdx.x], ib = si[threadIdx.x + o];
            if (b > a || (b == a && ib >= 0 && (ia < 0 || ib < ia))) sv[threadIdx.x] = sv[threadIdx.x + o], si[threadIdx.x] = ib;
        }
        __syncthreads();
    }
    if (sv[0] < 0.0f)
        for (int i = threadIdx.x; i < dim; i += blockDim.x) v[i * stride] = -v[i * stride];
}

static unsigned grid_for(size_t n) {
    size_t b = (n + 255) / 256;
    return b < 132 * 32 ? (unsigned)(b ? b : 1) : 132u * 32u;
}

/* cuSOLVER's request for this call, which must fit the planned allowance. */
static int fits(oz_cuda *c, int lwork, size_t allowance, const char *what) {
    if (lwork >= 0 && (size_t)lwork <= allowance) return 1;
    oz_cuda_fail(c, __FILE__, __LINE__, "cuSOLVER's %s asks for %d floats of workspace, the plan allows %zu", what,
                 lwork, allowance);
    return 0;
}

/* Y (rows, l) <- an orthonormal basis of its range: Householder QR, then Q formed in place. */
static int orthonormalize(oz_cuda *c, float *y, int rows, int l, float *tau, float *work, int lwork, int *info) {
    return OZ_CUSOLVER_CHECK(c, cusolverDnSgeqrf(c->solver, rows, l, y, rows, tau, work, lwork, info)) &&
           OZ_CUSOLVER_CHECK(c, cusolverDnSorgqr(c->solver, rows, l, l, y, rows, tau, work, lwork, info));
}

/* Where the products come from: G (row-major (m, n)), or its factors G = dY^T X (dY (rows, m),
 * X (rows, n), row-major, leading dimensions ldy, ldx) through t (rows, l), column-major. */
typedef struct {
    const float *G;
    const float *dy, *x;
    int ldy, ldx, rows;
    float *t;
} gsource;

/* subspace.c's gprod: out (column-major, ld_out) = X_side in, or X_side^T in (transpose), X_side = G
 * for LEFT and G^T for RIGHT. */
static int gprod(oz_cuda *c, const gsource *g, int m, int n, int side, int transpose, const float *in, int ld_in,
                 float *out, int ld_out, int cols) {
    const float one = 1.0f, zero = 0.0f;
    const int with_g = (side == OZ_SUBSPACE_LEFT) != (transpose != 0);
    if (g->G) /* G's bytes are the column-major (n, m) G^T */
        return with_g ? OZ_CUBLAS_CHECK(c, cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, m, cols, n, &one, g->G, n, in,
                                                       ld_in, &zero, out, ld_out))
                      : OZ_CUBLAS_CHECK(c, cublasSgemm(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, n, cols, m, &one, g->G, n, in,
                                                       ld_in, &zero, out, ld_out));
    const int R = g->rows;
    if (with_g) /* G in = dY^T (X in) */
        return OZ_CUBLAS_CHECK(c, cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, R, cols, n, &one, g->x, g->ldx, in, ld_in,
                                              &zero, g->t, R)) &&
               OZ_CUBLAS_CHECK(c, cublasSgemm(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, m, cols, R, &one, g->dy, g->ldy, g->t, R,
                                              &zero, out, ld_out));
    /* G^T in = X^T (dY in) */
    return OZ_CUBLAS_CHECK(c, cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, R, cols, m, &one, g->dy, g->ldy, in, ld_in,
                                          &zero, g->t, R)) &&
           OZ_CUBLAS_CHECK(c, cublasSgemm(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, n, cols, R, &one, g->x, g->ldx, g->t, R,
                                          &zero, out, ld_out));
}

static int randomized(oz_cuda *c, const gsource *g, int m, int n, int side, oz_rng *rng, char *ws,
                      const oz_subspace_gpu_plan *pl, float *basis, float *omega) {
    const int p = pl->p, q = pl->q, l = pl->l, rank = pl->rank;
    float *y = (float *)(ws + pl->off_y), *z = (float *)(ws + pl->off_z), *tau = (float *)(ws + pl->off_tau);
    float *rr = (float *)(ws + pl->off_r), *vt = (float *)(ws + pl->off_vt), *s = (float *)(ws + pl->off_s);
    float *e = (float *)(ws + pl->off_e), *work = (float *)(ws + pl->off_work);
    int *info = (int *)(ws + pl->off_info);
    int lw[5] = {0};
    if (!OZ_CUSOLVER_CHECK(c, cusolverDnSgeqrf_bufferSize(c->solver, p, l, y, p, &lw[0])) ||
        !OZ_CUSOLVER_CHECK(c, cusolverDnSgeqrf_bufferSize(c->solver, q, l, z, q, &lw[1])) ||
        !OZ_CUSOLVER_CHECK(c, cusolverDnSorgqr_bufferSize(c->solver, p, l, l, y, p, tau, &lw[2])) ||
        !OZ_CUSOLVER_CHECK(c, cusolverDnSorgqr_bufferSize(c->solver, q, l, l, z, q, tau, &lw[3])) ||
        !OZ_CUSOLVER_CHECK(c, cusolverDnSgesvd_bufferSize(c->solver, l, l, &lw[4])))
        return 0;
    int lwork = 0;
    for (int i = 0; i < 5; i++) lwork = lw[i] > lwork ? lw[i] : lwork;
    if (!fits(c, lwork, pl->lwork, "randomized subspace")) return 0;

    /* X = G for LEFT, G^T for RIGHT (gprod). */
    const float one = 1.0f, zero = 0.0f;
    oz_subspace_gaussian(omega, (size_t)q * l, rng); /* Omega (q, l), the CPU's draws */
    if (!OZ_CUDA_CHECK(c, cudaMemcpyAsync(z, omega, (size_t)q * l * sizeof(float), cudaMemcpyHostToDevice, c->stream)))
        return 0;
    int ok = gprod(c, g, m, n, side, 0, z, q, y, p, l) && orthonormalize(c, y, p, l, tau, work, lwork, info);
    for (int it = 0; ok && it < OZ_SUBSPACE_DEFAULT_POWER_ITERS; it++)
        ok = gprod(c, g, m, n, side, 1, y, p, z, q, l) && orthonormalize(c, z, q, l, tau, work, lwork, info) &&
             gprod(c, g, m, n, side, 0, z, q, y, p, l) && orthonormalize(c, y, p, l, tau, work, lwork, info);
    /* B^T = X^T Y = Qb R; the left singular vectors of X are Y VTr^T with R = Ur S VTr. */
    ok = ok && gprod(c, g, m, n, side, 1, y, p, z, q, l) &&
         OZ_CUSOLVER_CHECK(c, cusolverDnSgeqrf(c->solver, q, l, z, q, tau, work, lwork, info));
    if (!ok) return 0;
    upper_k<<<grid_for((size_t)l * l), 256, 0, c->stream>>>(rr, z, l, q);
    if (!OZ_CUDA_LAUNCHED(c)) return 0;
    /* U is not computed (jobu 'N'); vt stands in for its pointer, which gesvd does not touch. */
    ok = OZ_CUSOLVER_CHECK(c, cusolverDnSgesvd(c->solver, 'N', 'A', l, l, rr, l, s, vt, l, vt, l, work, lwork, e,
                                                info + 1));
    if (side == OZ_SUBSPACE_LEFT)
        ok = ok && OZ_CUBLAS_CHECK(c, cublasSgemm(c->blas, CUBLAS_OP_N, CUBLAS_OP_T, rank, p, l, &one, vt, l, y, p,
                                                  &zero, basis, rank));
    else
        ok = ok && OZ_CUBLAS_CHECK(c, cublasSgemm(c->blas, CUBLAS_OP_N, CUBLAS_OP_T, p, rank, l, &one, y, p, vt, l,
                                                  &zero, basis, p));
    return ok;
}

static int exact(oz_cuda *c, const float *G, int m, int n, int side, char *ws, const oz_subspace_gpu_plan *pl,
                 float *basis) {
    const int rows = pl->rows, cols = pl->cols, rank = pl->rank;
    float *a = (float *)(ws + pl->off_y), *rr = (float *)(ws + pl->off_r), *ur = (float *)(ws + pl->off_z);
    float *vt = (float *)(ws + pl->off_vt), *ua = (float *)(ws + pl->off_ua), *tau = (float *)(ws + pl->off_tau);
    float *s = (float *)(ws + pl->off_s), *e = (float *)(ws + pl->off_e), *work = (float *)(ws + pl->off_work);
    int *info = (int *)(ws + pl->off_info);
    int lw[3] = {0};
    if (!OZ_CUSOLVER_CHECK(c, cusolverDnSgeqrf_bufferSize(c->solver, rows, cols, a, rows, &lw[0])) ||
        !OZ_CUSOLVER_CHECK(c, cusolverDnSorgqr_bufferSize(c->solver, rows, cols, cols, a, rows, tau, &lw[1])) ||
        !OZ_CUSOLVER_CHECK(c, cusolverDnSgesvd_bufferSize(c->solver, cols, cols, &lw[2])))
        return 0;
    int lwork = lw[0] > lw[1] ? lw[0] : lw[1];
    lwork = lw[2] > lwork ? lw[2] : lwork;
    if (!fits(c, lwork, pl->lwork, "exact subspace")) return 0;
    /* The tall orientation A: n >= m: G's bytes are G^T (n, m), U_A = V and VT_A = U^T; else the
     * transposed copy is G (m, n) itself, U_A = U and VT_A = V^T. */
    const bool swap = n >= m;
    if (swap) {
        if (!OZ_CUDA_CHECK(c, cudaMemcpyAsync(a, G, (size_t)m * n * sizeof(float), cudaMemcpyDeviceToDevice, c->stream)))
            return 0;
    } else {
        transpose_k<<<grid_for((size_t)m * n), 256, 0, c->stream>>>(a, m, G, n, n, m);
        if (!OZ_CUDA_LAUNCHED(c)) return 0;
    }
    /* A = Q R, R = Ur S VT: U_A = Q Ur, VT_A = VT; only the square R goes through gesvd. */
    if (!OZ_CUSOLVER_CHECK(c, cusolverDnSgeqrf(c->solver, rows, cols, a, rows, tau, work, lwork, info))) return 0;
    upper_k<<<grid_for((size_t)cols * cols), 256, 0, c->stream>>>(rr, a, cols, rows);
    if (!OZ_CUDA_LAUNCHED(c) ||
        !OZ_CUSOLVER_CHECK(c, cusolverDnSgesvd(c->solver, 'S', 'S', cols, cols, rr, cols, s, ur, cols, vt, cols, work,
                                               lwork, e, info + 1)))
        return 0;
    const bool need_u = (side == OZ_SUBSPACE_LEFT) != swap; /* U_A's columns are the basis */
    const float one = 1.0f, zero = 0.0f;
    if (need_u &&
        (!OZ_CUSOLVER_CHECK(c, cusolverDnSorgqr(c->solver, rows, cols, cols, a, rows, tau, work, lwork, info)) ||
         !OZ_CUBLAS_CHECK(c, cublasSgemm(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, rows, rank, cols, &one, a, rows, ur, cols,
                                         &zero, ua, rows))))
        return 0;
    const size_t f = sizeof(float);
    /* Four cases, each a copy or a transpose of U_A[:, :r] (ua, ld rows) or VT_A[:r, :] (vt, ld cols):
     *  LEFT wants U[:, :r] row-major (m, r) = column-major (r, m); RIGHT wants V[:, :r] column-major (n, r). */
    if (side == OZ_SUBSPACE_LEFT && swap) /* U^T's first r rows = VT_A[:r, :] */
        return OZ_CUDA_CHECK(c, cudaMemcpy2DAsync(basis, rank * f, vt, cols * f, rank * f, m, cudaMemcpyDeviceToDevice,
                                                  c->stream));
    if (side == OZ_SUBSPACE_RIGHT && swap) /* V = U_A: its first r columns */
        return OZ_CUDA_CHECK(c, cudaMemcpyAsync(basis, ua, (size_t)n * rank * f, cudaMemcpyDeviceToDevice, c->stream));
    if (side == OZ_SUBSPACE_LEFT) /* U = U_A (m, r): transposed */
        transpose_k<<<grid_for((size_t)m * rank), 256, 0, c->stream>>>(basis, rank, ua, rows, m, rank);
    else /* V = VT_A^T: VT_A's first r rows transposed */
        transpose_k<<<grid_for((size_t)rank * n), 256, 0, c->stream>>>(basis, n, vt, cols, rank, n);
    return OZ_CUDA_LAUNCHED(c);
}

/* The end of a subspace call: the basis's signs fixed (if it ran), the solver's info read back
 * (which also waits for omega's upload before omega is freed), failures named; `what` names the
 * input in messages ("matrix", "gradient"). */
static oz_status finish_subspace(oz_cuda *c, const char *fn, const char *what, int ok, int rank, int m, int n, int side,
                                 float *basis, const int *info, float *omega, oz_err *err) {
    if (ok) {
        const int dim = side == OZ_SUBSPACE_LEFT ? m : n;
        fix_signs_k<<<rank, 256, 0, c->stream>>>(basis, dim, rank, side == OZ_SUBSPACE_LEFT);
        OZ_CUDA_LAUNCHED(c);
    }
    int host_info[4] = {0, 0, 0, 0};
    if (OZ_CUDA_CHECK(c, cudaMemcpyAsync(host_info, info, sizeof host_info, cudaMemcpyDeviceToHost, c->stream)))
        OZ_CUDA_CHECK(c, cudaStreamSynchronize(c->stream));
    free(omega);
    if (c->status != OZ_OK) return oz_fail(err, c->status, "%s", c->msg);
    if (host_info[1] > 0)
        return oz_fail(err, OZ_ERR_NUMERIC, "%s: the SVD did not converge on the (%d, %d) %s", fn, m, n, what);
    if (host_info[0] < 0 || host_info[1] < 0)
        return oz_fail(err, OZ_ERR_INTERNAL, "%s: cuSOLVER rejected argument %d", fn,
                       host_info[0] < 0 ? -host_info[0] : -host_info[1]);
    return OZ_OK;
}

static oz_status cuda_subspace(oz_backend *be, const float *G, int m, int n, int r, int side, int method, oz_rng *rng,
                               void *workspace, float *basis, oz_err *err) {
    oz_cuda *c = C(be);
    const char *fn = method == OZ_SUBSPACE_RANDOMIZED ? "subspace_randomized" : "subspace_svd";
    if (!G || !basis || !workspace) return oz_fail(err, OZ_ERR_INPUT, "%s: NULL matrix, basis or workspace", fn);
    if (method == OZ_SUBSPACE_RANDOMIZED && !rng) return oz_fail(err, OZ_ERR_INPUT, "%s: NULL rng", fn);
    oz_subspace_gpu_plan pl;
    if (!oz_subspace_gpu_layout(m, n, r, side, method, &pl))
        return oz_fail(err, OZ_ERR_INPUT, "%s: bad shape (%d, %d), rank %d, side %d or method %d", fn, m, n, r, side,
                       method);
    if ((size_t)m * n > (size_t)INT32_MAX || pl.lwork > (size_t)INT32_MAX)
        return oz_fail(err, OZ_ERR_INPUT, "%s: (%d, %d) is too large for 32-bit cuSOLVER", fn, m, n);
    char *ws = (char *)workspace;
    int *info = (int *)(ws + pl.off_info);
    /* A non-finite gradient would make the solver loop or fail obscurely: name the real culprit. */
    if (OZ_CUDA_CHECK(c, cudaMemsetAsync(info, 0, 4 * sizeof(int), c->stream))) {
        nonfinite_k<<<grid_for((size_t)m * n), 256, 0, c->stream>>>(G, (size_t)m * n, info + 2);
        OZ_CUDA_LAUNCHED(c);
    }
    int host_info[4] = {0, 0, 0, 0};
    if (OZ_CUDA_CHECK(c, cudaMemcpyAsync(host_info, info, sizeof host_info, cudaMemcpyDeviceToHost, c->stream)))
        OZ_CUDA_CHECK(c, cudaStreamSynchronize(c->stream));
    if (c->status != OZ_OK) return oz_fail(err, c->status, "%s", c->msg);
    if (host_info[2]) return oz_fail(err, OZ_ERR_NUMERIC, "%s: the (%d, %d) matrix has a non-finite entry", fn, m, n);
    if (!solver_of(c)) return oz_fail(err, c->status, "%s", c->msg);
    float *omega = NULL;
    if (method == OZ_SUBSPACE_RANDOMIZED) {
        omega = (float *)malloc((size_t)pl.q * pl.l * sizeof(float));
        if (!omega) return oz_fail(err, OZ_ERR_NOMEM, "%s: cannot allocate the %d x %d test matrix", fn, pl.q, pl.l);
    }
    gsource g = {G, NULL, NULL, 0, 0, 0, NULL};
    int ok = method == OZ_SUBSPACE_RANDOMIZED ? randomized(c, &g, m, n, side, rng, ws, &pl, basis, omega)
                                              : exact(c, G, m, n, side, ws, &pl, basis);
    return finish_subspace(c, fn, "matrix", ok, pl.rank, m, n, side, basis, info, omega, err);
}

/* Non-finite entries of the (rows, cols) row-major matrix of leading dimension ld set *flag. */
__global__ void nonfinite2d_k(const float *x, int rows, int cols, int ld, int *flag) {
    for (size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x; t < (size_t)rows * cols;
         t += (size_t)gridDim.x * blockDim.x)
        if (!isfinite(x[(t / cols) * (size_t)ld + t % cols])) *flag = 1;
}

static oz_status cuda_subspace_factored(oz_backend *be, const float *dY, int ldy, const float *X, int ldx, int rows,
                                        int m, int n, int r, int side, oz_rng *rng, void *workspace, float *basis,
                                        oz_err *err) {
    oz_cuda *c = C(be);
    const char *fn = "subspace_randomized_factored";
    if (!dY || !X || !basis || !workspace || !rng)
        return oz_fail(err, OZ_ERR_INPUT, "%s: NULL factor, basis, workspace or rng", fn);
    oz_subspace_gpu_plan pl;
    if (ldy < m || ldx < n || !oz_subspace_gpu_layout_factored(m, n, r, side, rows, &pl))
        return oz_fail(err, OZ_ERR_INPUT, "%s: bad shape (%d, %d) over %d rows (ld %d, %d), rank %d or side %d", fn, m,
                       n, rows, ldy, ldx, r, side);
    if ((size_t)rows * (ldy > ldx ? ldy : ldx) > (size_t)INT32_MAX || pl.lwork > (size_t)INT32_MAX)
        return oz_fail(err, OZ_ERR_INPUT, "%s: (%d, %d) over %d rows is too large for 32-bit cuSOLVER", fn, m, n, rows);
    char *ws = (char *)workspace;
    int *info = (int *)(ws + pl.off_info);
    if (OZ_CUDA_CHECK(c, cudaMemsetAsync(info, 0, 4 * sizeof(int), c->stream))) {
        nonfinite2d_k<<<grid_for((size_t)rows * m), 256, 0, c->stream>>>(dY, rows, m, ldy, info + 2);
        nonfinite2d_k<<<grid_for((size_t)rows * n), 256, 0, c->stream>>>(X, rows, n, ldx, info + 2);
        OZ_CUDA_LAUNCHED(c);
    }
    int host_info[4] = {0, 0, 0, 0};
    if (OZ_CUDA_CHECK(c, cudaMemcpyAsync(host_info, info, sizeof host_info, cudaMemcpyDeviceToHost, c->stream)))
        OZ_CUDA_CHECK(c, cudaStreamSynchronize(c->stream));
    if (c->status != OZ_OK) return oz_fail(err, c->status, "%s", c->msg);
    if (host_info[2])
        return oz_fail(err, OZ_ERR_NUMERIC, "%s: a factor of the (%d, %d) gradient has a non-finite entry", fn, m, n);
    if (!solver_of(c)) return oz_fail(err, c->status, "%s", c->msg);
    float *omega = (float *)malloc((size_t)pl.q * pl.l * sizeof(float));
    if (!omega) return oz_fail(err, OZ_ERR_NOMEM, "%s: cannot allocate the %d x %d test matrix", fn, pl.q, pl.l);
    gsource g = {NULL, dY, X, ldy, ldx, rows, (float *)(ws + pl.off_t)};
    int ok = randomized(c, &g, m, n, side, rng, ws, &pl, basis, omega);
    return finish_subspace(c, fn, "gradient", ok, pl.rank, m, n, side, basis, info, omega, err);
}

void oz_cuda_subspace_ops(oz_backend *be) {
    be->subspace = cuda_subspace;
    be->subspace_factored = cuda_subspace_factored;
}
