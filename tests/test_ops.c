/* CPU op tests. The ops of cpu_ops.inc are instantiated here in double precision so every backward
 * can be checked against central finite differences to ~1e-6 relative; the fp32 backend is then
 * checked against those double ops on identical inputs, and for bitwise run-to-run determinism.
 * Each gradient check is paired with a plausibly wrong gradient that must be rejected, so the
 * tolerances are known to have teeth. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "harness.h"
#include "numeric/half.h"
#include "numeric/quant.h"
#include "util/rng.h"

#define OZ_REAL double
#define OZ_SFX(name) name##_f64
#define OZ_GEMM cblas_dgemm
#include "backend/cpu/cpu_ops.inc"
#undef OZ_REAL
#undef OZ_SFX
#undef OZ_GEMM

#define FD_EPS 1e-5 /* at 1e-6 the rounding of the summed loss (T=70 case) eats half the tolerance */
#define FD_RTOL 1e-6
#define FD_ATOL 1e-8
#define F32_TOL 1e-5

/* ---- helpers ---- */

static uint64_t rng_state = 0x243F6A8885A308D3ull;

/* Values are rounded to float so the fp32 backend and the double ops see identical inputs. */
static double urand(double lo, double hi) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    const double u = (double)(rng_state >> 11) / 9007199254740992.0;
    return (double)(float)(lo + (hi - lo) * u);
}

static void *xalloc(size_t bytes) {
    void *p = calloc(bytes ? bytes : 1, 1);
    if (!p) {
        fprintf(stderr, "test_ops: out of memory\n");
        exit(2);
    }
    return p;
}

static double *dalloc(size_t n) { return xalloc(n * sizeof(double)); }
static float *falloc(size_t n) { return xalloc(n * sizeof(float)); }

static double *drand(size_t n, double lo, double hi) {
    double *x = dalloc(n);
    for (size_t i = 0; i < n; i++) x[i] = urand(lo, hi);
    return x;
}

static double *dcopy(const double *x, size_t n) {
    double *y = dalloc(n);
    memcpy(y, x, n * sizeof *x);
    return y;
}

static float *to_f32(const double *x, size_t n) {
    float *y = falloc(n);
    for (size_t i = 0; i < n; i++) y[i] = (float)x[i];
    return y;
}

static double dot_n(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Worst ratio |a-ref| / (atol + rtol |ref|) over the tensor: <= 1 means every element passes. */
static double violation(const double *a, const double *ref, size_t n, double rtol, double atol,
                        size_t *worst) {
    double v = 0;
    *worst = 0;
    for (size_t i = 0; i < n; i++) {
        const double diff = fabs(a[i] - ref[i]);
        double r = diff == 0 ? 0 : diff / (atol + rtol * fabs(ref[i]));
        if (isnan(r)) r = INFINITY;
        if (r > v) v = r, *worst = i;
    }
    return v;
}

static void check_all(const char *what, const double *a, const double *ref, size_t n, double rtol,
                      double atol) {
    size_t w;
    const double v = violation(a, ref, n, rtol, atol, &w);
    CHECK(v <= 1, "%s: element %zu: %.12g vs %.12g (%.3g x tolerance)", what, w, a[w], ref[w], v);
}

/* A wrong candidate must fail the same tolerance the right one passes. */
static void check_rejects(const char *what, const double *wrong, const double *ref, size_t n,
                          double rtol, double atol) {
    size_t w;
    CHECK(violation(wrong, ref, n, rtol, atol, &w) > 1, "%s: a wrong gradient passed the check", what);
}

/* fp32 vs double, scaled by the largest reference value so cancellation in small elements does
 * not dominate. */
static void check_f32(const char *what, const float *a, const double *ref, size_t n, double tol) {
    double maxref = 0, maxdiff = 0;
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        if (fabs(ref[i]) > maxref) maxref = fabs(ref[i]);
        double d = fabs((double)a[i] - ref[i]);
        if (isnan(d)) d = INFINITY;
        if (d > maxdiff) maxdiff = d, w = i;
    }
    CHECK(maxdiff <= tol * maxref + 1e-30, "%s (fp32 vs fp64): element %zu: %.9g vs %.9g, max |ref| %.3g",
          what, w, (double)a[w], ref[w], maxref);
}

typedef double (*loss_fn)(void *ctx);

/* Central differences of loss(ctx) with respect to each element of x (perturbed in place). */
static void fd_grad(loss_fn loss, void *ctx, double *x, size_t n, double *grad) {
    for (size_t i = 0; i < n; i++) {
        const double x0 = x[i];
        x[i] = x0 + FD_EPS;
        const double lp = loss(ctx);
        x[i] = x0 - FD_EPS;
        const double lm = loss(ctx);
        x[i] = x0;
        grad[i] = (lp - lm) / (2 * FD_EPS);
    }
}

/* Gradient check at every stride-th element only, for tensors too large for a full sweep. */
static void check_fd_sampled(const char *what, loss_fn loss, void *ctx, double *x, size_t n,
                             const double *analytic, size_t stride) {
    const size_t m = (n + stride - 1) / stride;
    double *a = dalloc(m), *g = dalloc(m);
    for (size_t s = 0; s < m; s++) {
        a[s] = analytic[s * stride];
        fd_grad(loss, ctx, x + s * stride, 1, g + s);
    }
    check_all(what, a, g, m, FD_RTOL, FD_ATOL);
    free(a), free(g);
}

static oz_backend be;

/* ---- gemm ---- */

static void test_gemm(void) {
    const int M = 5, N = 7, K = 3;
    const double alpha = 0.7, beta = -0.3;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            /* Leading dimensions wider than the rows, to catch ld mix-ups. */
            const int arows = ta ? K : M, acols = ta ? M : K, lda = acols + 2;
            const int brows = tb ? N : K, bcols = tb ? K : N, ldb = bcols + 1;
            const int ldc = N + 3;
            double *A = drand((size_t)arows * lda, -1, 1), *B = drand((size_t)brows * ldb, -1, 1);
            double *C = drand((size_t)M * ldc, -1, 1), *ref = dcopy(C, (size_t)M * ldc);
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    double s = 0;
                    for (int p = 0; p < K; p++)
                        s += (ta ? A[p * lda + i] : A[i * lda + p]) * (tb ? B[j * ldb + p] : B[p * ldb + j]);
                    ref[i * ldc + j] = alpha * s + beta * ref[i * ldc + j];
                }
            float *Af = to_f32(A, (size_t)arows * lda), *Bf = to_f32(B, (size_t)brows * ldb);
            float *Cf = to_f32(C, (size_t)M * ldc);
            oz_cpu_gemm_f64(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
            char what[64];
            snprintf(what, sizeof what, "gemm ta=%d tb=%d", ta, tb);
            check_all(what, C, ref, (size_t)M * ldc, 1e-14, 1e-14); /* includes untouched padding */
            be.gemm(&be, ta, tb, M, N, K, (float)alpha, Af, lda, Bf, ldb, (float)beta, Cf, ldc);
            check_f32(what, Cf, ref, (size_t)M * ldc, F32_TOL);
            free(A), free(B), free(C), free(ref), free(Af), free(Bf), free(Cf);
        }
    /* beta == 0 overwrites C even when it holds NaN; K == 0 leaves beta * C. */
    double A[6] = {1, 2, 3, 4, 5, 6}, B[6] = {1, 0, 0, 1, 1, 1}, C[4] = {NAN, NAN, NAN, NAN};
    oz_cpu_gemm_f64(0, 0, 2, 2, 3, 1.0, A, 3, B, 2, 0.0, C, 2);
    CHECK(C[0] == 4 && C[1] == 5 && C[2] == 10 && C[3] == 11, "gemm beta=0: %g %g %g %g", C[0], C[1], C[2],
          C[3]);
    oz_cpu_gemm_f64(0, 0, 2, 2, 0, 1.0, A, 1, B, 2, 0.5, C, 2);
    CHECK(C[0] == 2 && C[3] == 5.5, "gemm K=0: %g %g", C[0], C[3]);
}

/* ---- elementwise and reductions ---- */

static void test_elementwise(void) {
    const size_t sizes[2] = {1001, 100003}; /* below and above the parallel threshold */
    for (int s = 0; s < 2; s++) {
        const size_t n = sizes[s];
        double *x = drand(n, -2, 2), *y = drand(n, -2, 2), *ref = dalloc(n);
        float *xf = to_f32(x, n), *yf = to_f32(y, n);
        for (size_t i = 0; i < n; i++) ref[i] = y[i] + 0.375 * x[i];
        oz_cpu_axpy_f64(y, 0.375, x, n);
        check_all("axpy", y, ref, n, 1e-15, 0);
        be.axpy(&be, yf, 0.375f, xf, n);
        check_f32("axpy", yf, ref, n, F32_TOL);
        for (size_t i = 0; i < n; i++) ref[i] = y[i] * -1.25;
        oz_cpu_scale_f64(y, -1.25, n);
        check_all("scale", y, ref, n, 1e-15, 0);
        be.scale(&be, yf, -1.25f, n);
        check_f32("scale", yf, ref, n, F32_TOL);

        double naive = 0;
        for (size_t i = 0; i < n; i++) naive += x[i] * x[i];
        CHECK_CLOSE(oz_cpu_sumsq_f64(x, n), naive, 1e-12, 0, "sumsq");
        /* Products of floats are exact in double, so the fp32 backend matches to rounding of the sum. */
        CHECK_CLOSE(be.sumsq(&be, xf, n), naive, 1e-12, 0, "sumsq fp32");

        oz_cpu_fill_f64(y, 0.5, n);
        be.fill(&be, yf, 0.5f, n);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) bad += y[i] != 0.5 || yf[i] != 0.5f;
        CHECK(bad == 0, "fill: %zu wrong elements", bad);

        x[n / 2] = NAN;
        xf[n / 2] = NAN;
        CHECK(isnan(oz_cpu_sumsq_f64(x, n)) && isnan(be.sumsq(&be, xf, n)), "sumsq must propagate NaN");
        x[n / 2] = INFINITY;
        xf[n / 2] = INFINITY;
        CHECK(isinf(oz_cpu_sumsq_f64(x, n)) && isinf(be.sumsq(&be, xf, n)), "sumsq must propagate Inf");
        free(x), free(y), free(ref), free(xf), free(yf);
    }
    CHECK(oz_cpu_sumsq_f64(NULL, 0) == 0, "sumsq of nothing");
}

/* bf16 storage: round to nearest even, checked against the rule computed in double (the nearest
 * of the two bf16 neighbours, ties to an even mantissa), NaN kept as a NaN, and exact round trips. */
static void test_bf16_storage(void) {
    const float special[] = {0.0f, -0.0f, 1.0f, -2.5f, INFINITY, -INFINITY, NAN, 3.0e38f, 1.0e-40f,
                             1.00390625f /* tie: 1 + 2^-8, rounds to even (1.0) */,
                             1.01171875f /* tie: 1 + 3 * 2^-8, rounds to even (1 + 2^-6) */};
    const size_t ns = sizeof special / sizeof special[0], n = 100003 + ns;
    float *x = malloc(n * sizeof *x), *back = malloc(n * sizeof *back);
    uint16_t *h = malloc(n * sizeof *h);
    /* Values from their own generator, not the file's shared one, whose sequence later tests'
     * sampled finite-difference checks depend on. */
    oz_rng own;
    oz_rng_seed(&own, 7);
    for (size_t i = ns; i < n; i++)
        x[i] = (float)((6.0 * oz_rng_uniform(&own) - 3.0) * pow(10.0, (double)(i % 13) - 6));
    memcpy(x, special, sizeof special);
    be.to_bf16(&be, h, x, n);
    be.from_bf16(&be, back, h, n);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(x[i])) {
            bad += !isnan(back[i]);
            continue;
        }
        if (isinf(x[i]) || x[i] == 0.0f) {
            bad += back[i] != x[i] || signbit(back[i]) != signbit(x[i]);
            continue;
        }
        /* The two bf16 values around x: truncation and the next one away from zero. */
        uint32_t bits;
        memcpy(&bits, &x[i], 4);
        uint32_t lo_bits = bits & 0xffff0000u, hi_bits = lo_bits + 0x10000u;
        float lo, hi;
        memcpy(&lo, &lo_bits, 4);
        memcpy(&hi, &hi_bits, 4);
        double dl = fabs((double)x[i] - lo), dh = fabs((double)hi - x[i]);
        float want = dl < dh ? lo : dh < dl ? hi : ((lo_bits >> 16) & 1u) ? hi : lo;
        bad += back[i] != want;
    }
    CHECK(bad == 0, "bf16 rounding: %zu of %zu values wrong", bad, n);
    CHECK(back[9] == 1.0f && back[10] == 1.015625f, "ties must go to even (%.9g, %.9g)", back[9], back[10]);
    /* A bf16 value survives the trip unchanged. */
    be.to_bf16(&be, h, back, n);
    float *again = malloc(n * sizeof *again);
    be.from_bf16(&be, again, h, n);
    bad = 0;
    for (size_t i = 0; i < n; i++) bad += memcmp(&again[i], &back[i], 4) != 0 && !isnan(back[i]);
    CHECK(bad == 0, "bf16 round trip not exact for %zu values", bad);
    free(x), free(back), free(h), free(again);
}

/* The strided forms (a matrix with padded rows on one side): each element of the rows x cols block
 * rounded (to_bf16_2d) or added (add_2d) exactly as the flat op does, the padding untouched. */
static void test_strided_storage(void) {
    enum { ROWS = 7, COLS = 13, LD = 16 };
    float src[ROWS * COLS], pad_f[ROWS * LD], want_f[ROWS * LD];
    uint16_t dst[ROWS * LD], flat[ROWS * COLS];
    oz_rng own; /* not the shared generator, whose sequence later tests depend on */
    oz_rng_seed(&own, 11);
    for (int i = 0; i < ROWS * COLS; i++) src[i] = (float)(oz_rng_uniform(&own) * 8.0 - 4.0);
    memset(dst, 0xAB, sizeof dst);
    be.to_bf16_2d(&be, dst, LD, src, COLS, ROWS, COLS);
    be.to_bf16(&be, flat, src, ROWS * COLS);
    int bad = 0;
    for (int r = 0; r < ROWS; r++)
        for (int c = 0; c < LD; c++) bad += dst[r * LD + c] != (c < COLS ? flat[r * COLS + c] : 0xABABu);
    CHECK(bad == 0, "to_bf16_2d: %d of %d elements wrong or padding written", bad, ROWS * LD);
    /* add_2d the other way: a padded source into dense rows (as dW's padded form is added in) */
    for (int i = 0; i < ROWS * LD; i++) pad_f[i] = (float)(oz_rng_uniform(&own) * 2.0 - 1.0);
    float dense[ROWS * COLS];
    memcpy(dense, src, sizeof dense);
    be.add_2d(&be, dense, COLS, pad_f, LD, ROWS, COLS);
    bad = 0;
    for (int r = 0; r < ROWS; r++)
        for (int c = 0; c < COLS; c++) bad += dense[r * COLS + c] != src[r * COLS + c] + pad_f[r * LD + c];
    CHECK(bad == 0, "add_2d: %d of %d sums wrong", bad, ROWS * COLS);
    /* and into padded rows: the padding keeps its value */
    for (int i = 0; i < ROWS * LD; i++) want_f[i] = pad_f[i];
    be.add_2d(&be, pad_f, LD, src, COLS, ROWS, COLS);
    bad = 0;
    for (int r = 0; r < ROWS; r++)
        for (int c = 0; c < LD; c++)
            bad += pad_f[r * LD + c] != (c < COLS ? want_f[r * LD + c] + src[r * COLS + c] : want_f[r * LD + c]);
    CHECK(bad == 0, "add_2d into padded rows: %d elements wrong", bad);
}

/* AdamW on bf16 weights (no master): the fp32 op on the widened weights, then oz_bf16_sr with
 * element (r, c) drawing index r * cols + c, to the bit; the rows' padding untouched; the
 * rounding is unbiased (the mean of many draws of one update lands on the fp32 update). */
static void test_adamw_bf16(void) {
    enum { ROWS = 5, COLS = 11, LD = 16 };
    oz_rng own;
    oz_rng_seed(&own, 23);
    uint16_t w16[ROWS * LD];
    float w[ROWS * COLS], g[ROWS * COLS], m[ROWS * COLS], v[ROWS * COLS], m2[ROWS * COLS], v2[ROWS * COLS];
    for (int i = 0; i < ROWS * LD; i++) w16[i] = oz_f32_to_bf16((float)(oz_rng_uniform(&own) * 2 - 1));
    for (int i = 0; i < ROWS * COLS; i++) {
        g[i] = (float)(oz_rng_uniform(&own) * 2 - 1);
        m[i] = m2[i] = (float)(oz_rng_uniform(&own) * 0.1 - 0.05);
        v[i] = v2[i] = (float)(oz_rng_uniform(&own) * 0.01);
    }
    uint16_t pad_before[ROWS * LD];
    memcpy(pad_before, w16, sizeof w16);
    for (int r = 0; r < ROWS; r++)
        for (int c = 0; c < COLS; c++) w[r * COLS + c] = oz_bf16_to_f32(w16[r * LD + c]);
    const oz_adamw_args a = {1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 1 - 0.9f * 0.9f, 1 - 0.95f * 0.95f, 0.7f};
    const uint64_t key = 0x1234abcdull;
    be.adamw_step_bf16(&be, w16, LD, g, m, v, ROWS, COLS, &a, key);
    be.adamw_step(&be, w, g, m2, v2, ROWS * COLS, &a);
    int bad = 0, moved = 0;
    for (int r = 0; r < ROWS; r++)
        for (int c = 0; c < LD; c++) {
            if (c >= COLS) {
                bad += w16[r * LD + c] != pad_before[r * LD + c];
                continue;
            }
            const int i = r * COLS + c;
            bad += w16[r * LD + c] != oz_bf16_sr(w[i], key, (uint64_t)i);
            moved += w16[r * LD + c] != pad_before[r * LD + c];
        }
    CHECK(bad == 0, "adamw_step_bf16: %d elements differ from adamw_step + oz_bf16_sr (or padding written)", bad);
    CHECK(!memcmp(m, m2, sizeof m) && !memcmp(v, v2, sizeof v), "adamw_step_bf16: moments differ from adamw_step's");
    CHECK(moved > ROWS * COLS / 2, "adamw_step_bf16 moved only %d of %d weights", moved, ROWS * COLS);
    /* unbiased: one weight, one small update, 4096 keys: the mean lands within 4 sigma of fp32's */
    uint16_t one;
    const float w0 = 1.0f;
    float gone = 1.0f, mz, vz, want = w0;
    double sum = 0;
    const oz_adamw_args b = {1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 0.1f, 0.001f, 1.0f};
    {
        float mm = 0, vv = 0;
        be.adamw_step(&be, &want, &gone, &mm, &vv, 1, &b);
    }
    for (uint64_t k = 0; k < 4096; k++) {
        one = oz_f32_to_bf16(w0), mz = 0, vz = 0;
        be.adamw_step_bf16(&be, &one, 1, &gone, &mz, &vz, 1, 1, &b, k * 7919 + 1);
        sum += oz_bf16_to_f32(one);
    }
    const double ulp = 1.0 / 256, sigma = ulp * 0.5 / sqrt(4096.0);
    CHECK(fabs(sum / 4096 - want) < 4 * sigma + 1e-7, "stochastic rounding biased: mean %.8f, fp32 update %.8f",
          sum / 4096, (double)want);
}

/* ---- embedding ---- */

static void test_embedding(void) {
    enum { V = 7, d = 37, N = 9 }; /* d spans two column blocks */
    const int32_t ids[N] = {3, 1, 3, 0, 6, 3, 1, 2, 6};
    double *table = drand((size_t)V * d, -1, 1), *out = dalloc((size_t)N * d);
    double *dout = drand((size_t)N * d, -1, 1), *dtable = drand((size_t)V * d, -1, 1);
    double *ref = dcopy(dtable, (size_t)V * d);
    oz_cpu_embedding_fwd_f64(out, table, ids, N, d);
    size_t bad = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < d; j++) bad += out[i * d + j] != table[ids[i] * d + j];
    CHECK(bad == 0, "embedding_fwd: %zu wrong elements", bad);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < d; j++) ref[ids[i] * d + j] += dout[i * d + j];
    float *dtf = to_f32(dtable, (size_t)V * d), *doutf = to_f32(dout, (size_t)N * d);
    float *tf = to_f32(table, (size_t)V * d), *outf = falloc((size_t)N * d);
    oz_cpu_embedding_bwd_f64(dtable, dout, ids, N, d, V);
    check_all("embedding_bwd (repeated ids accumulate onto the initial dtable)", dtable, ref,
              (size_t)V * d, 1e-15, 1e-15);
    be.embedding_fwd(&be, outf, tf, ids, N, d);
    check_f32("embedding_fwd", outf, out, (size_t)N * d, 0);
    be.embedding_bwd(&be, dtf, doutf, ids, N, d, V);
    check_f32("embedding_bwd", dtf, ref, (size_t)V * d, F32_TOL);
    free(table), free(out), free(dout), free(dtable), free(ref), free(dtf), free(doutf), free(tf), free(outf);
}

/* ---- rmsnorm ---- */

typedef struct {
    double *x, *w, *G, *out, *rstd;
    int N, d;
    double eps;
} rms_ctx;

static double rms_loss(void *p) {
    rms_ctx *c = p;
    oz_cpu_rmsnorm_fwd_f64(c->out, c->rstd, c->x, c->w, c->N, c->d, c->eps);
    return dot_n(c->out, c->G, (size_t)c->N * c->d);
}

static void test_rmsnorm(void) {
    enum { N = 3, d = 37 };
    const size_t nd = (size_t)N * d;
    rms_ctx c = {drand(nd, -2, 2), drand(d, 0.5, 1.5), drand(nd, -1, 1), dalloc(nd), dalloc(N), N, d, 1e-5};
    /* forward vs the definition */
    rms_loss(&c);
    double *ref = dalloc(nd), *rref = dalloc(N);
    for (int i = 0; i < N; i++) {
        double ms = 0;
        for (int j = 0; j < d; j++) ms += c.x[i * d + j] * c.x[i * d + j] / d;
        rref[i] = 1 / sqrt(ms + c.eps);
        for (int j = 0; j < d; j++) ref[i * d + j] = c.x[i * d + j] * rref[i] * c.w[j];
    }
    check_all("rmsnorm_fwd out", c.out, ref, nd, 1e-14, 1e-14);
    check_all("rmsnorm_fwd rstd", c.rstd, rref, N, 1e-14, 0);

    /* backward accumulates onto nonzero dx, dw */
    double *dx0 = drand(nd, -1, 1), *dw0 = drand(d, -1, 1);
    double *dx = dcopy(dx0, nd), *dw = dcopy(dw0, d);
    oz_cpu_rmsnorm_bwd_f64(dx, dw, c.G, c.x, c.w, c.rstd, N, d);
    for (size_t i = 0; i < nd; i++) dx[i] -= dx0[i];
    for (int j = 0; j < d; j++) dw[j] -= dw0[j];
    double *gx = dalloc(nd), *gw = dalloc(d);
    fd_grad(rms_loss, &c, c.x, nd, gx);
    fd_grad(rms_loss, &c, c.w, d, gw);
    check_all("rmsnorm dx vs FD (accumulated)", dx, gx, nd, FD_RTOL, FD_ATOL);
    check_all("rmsnorm dw vs FD (accumulated)", dw, gw, d, FD_RTOL, FD_ATOL);
    /* wrong: dropping the normaliser's own derivative (dx = rstd * w * g) */
    rms_loss(&c);
    double *wrong = dalloc(nd);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < d; j++) wrong[i * d + j] = c.rstd[i] * c.w[j] * c.G[i * d + j];
    check_rejects("rmsnorm dx without the rstd term", wrong, gx, nd, FD_RTOL, FD_ATOL);
    /* wrong: a 1e-4 relative error in one element of dw */
    memcpy(wrong, dw, d * sizeof *dw);
    wrong[d / 2] *= 1 + 1e-4;
    check_rejects("rmsnorm dw off by 1e-4", wrong, gw, d, FD_RTOL, FD_ATOL);

    /* fp32 backend on the same inputs, same nonzero initial dx/dw */
    float *xf = to_f32(c.x, nd), *wf = to_f32(c.w, d), *Gf = to_f32(c.G, nd), *outf = falloc(nd);
    float *rf = falloc(N), *dxf = to_f32(dx0, nd), *dwf = to_f32(dw0, d);
    be.rmsnorm_fwd(&be, outf, rf, xf, wf, N, d, (float)c.eps);
    check_f32("rmsnorm_fwd", outf, c.out, nd, F32_TOL);
    be.rmsnorm_bwd(&be, dxf, dwf, Gf, xf, wf, rf, N, d);
    for (size_t i = 0; i < nd; i++) dx[i] += dx0[i];
    for (int j = 0; j < d; j++) dw[j] += dw0[j];
    check_f32("rmsnorm_bwd dx", dxf, dx, nd, F32_TOL);
    check_f32("rmsnorm_bwd dw", dwf, dw, d, F32_TOL);
    free(c.x), free(c.w), free(c.G), free(c.out), free(c.rstd), free(ref), free(rref), free(dx0), free(dw0);
    free(dx), free(dw), free(gx), free(gw), free(wrong), free(xf), free(wf), free(Gf), free(outf), free(rf);
    free(dxf), free(dwf);
}

/* ---- rope ---- */

typedef struct {
    double *x, *W, *tmp, *cs, *sn;
    int B, T, H, hd, pos0;
} rope_ctx;

static double rope_loss(void *p) {
    rope_ctx *c = p;
    const size_t n = (size_t)c->B * c->T * c->H * c->hd;
    memcpy(c->tmp, c->x, n * sizeof *c->x);
    oz_cpu_rope_f64(c->tmp, c->cs, c->sn, c->B, c->T, c->H, c->hd, c->pos0, 0);
    return dot_n(c->tmp, c->W, n);
}

static void test_rope(void) {
    enum { B = 2, T = 3, H = 3, hd = 8, pos0 = 2, max_pos = 8, half = hd / 2 };
    const size_t n = (size_t)B * T * H * hd;
    double inv_freq[half], cs[max_pos * half], sn[max_pos * half];
    for (int i = 0; i < half; i++) inv_freq[i] = pow(10000.0, -2.0 * i / hd);
    for (int p = 0; p < max_pos; p++)
        for (int i = 0; i < half; i++) {
            cs[p * half + i] = cos(p * inv_freq[i]);
            sn[p * half + i] = sin(p * inv_freq[i]);
        }
    double *x = drand(n, -1, 1), *y = drand(n, -1, 1), *ref = dalloc(n);
    /* naive rotate-half, angle computed directly */
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++) {
                const double *xr = x + (((size_t)b * T + t) * H + h) * hd;
                double *rr = ref + (((size_t)b * T + t) * H + h) * hd;
                for (int i = 0; i < half; i++) {
                    const double a = (pos0 + t) * inv_freq[i];
                    rr[i] = xr[i] * cos(a) - xr[i + half] * sin(a);
                    rr[i + half] = xr[i + half] * cos(a) + xr[i] * sin(a);
                }
            }
    double *rx = dcopy(x, n), *ry = dcopy(y, n);
    oz_cpu_rope_f64(rx, cs, sn, B, T, H, hd, pos0, 0);
    check_all("rope vs naive formula (pos0 = 2)", rx, ref, n, 1e-13, 1e-14);
    /* a rope that ignores pos0 must not pass */
    double *wrong = dcopy(x, n);
    oz_cpu_rope_f64(wrong, cs, sn, B, T, H, hd, 0, 0);
    check_rejects("rope with pos0 ignored", wrong, ref, n, 1e-13, 1e-14);
    double *back = dcopy(rx, n);
    oz_cpu_rope_f64(back, cs, sn, B, T, H, hd, pos0, 1);
    check_all("rope inverse undoes forward", back, x, n, 1e-13, 1e-14);
    oz_cpu_rope_f64(ry, cs, sn, B, T, H, hd, pos0, 1);
    CHECK_CLOSE(dot_n(rx, y, n), dot_n(x, ry, n), 1e-13, 1e-14, "<rope(x),y> == <x,rope_inv(y)>");
    /* the backward of L = <rope(x), W> is rope_inv(W) */
    rope_ctx c = {x, y, dalloc(n), cs, sn, B, T, H, hd, pos0};
    double *g = dalloc(n);
    fd_grad(rope_loss, &c, x, n, g);
    check_all("rope backward (inverse) vs FD", ry, g, n, FD_RTOL, FD_ATOL);
    memcpy(wrong, y, n * sizeof *y);
    oz_cpu_rope_f64(wrong, cs, sn, B, T, H, hd, pos0, 0);
    check_rejects("rope backward using +angle", wrong, g, n, FD_RTOL, FD_ATOL);

    float *xf = to_f32(x, n), *csf = to_f32(cs, max_pos * half), *snf = to_f32(sn, max_pos * half);
    be.rope(&be, xf, csf, snf, B, T, H, hd, pos0, 0);
    check_f32("rope", xf, ref, n, F32_TOL);
    be.rope(&be, xf, csf, snf, B, T, H, hd, pos0, 1);
    check_f32("rope inverse", xf, x, n, F32_TOL);
    free(x), free(y), free(ref), free(rx), free(ry), free(wrong), free(back), free(c.tmp), free(g);
    free(xf), free(csf), free(snf);
}

/* ---- attention ---- */

static void naive_attention(double *out, double *lse, const double *q, const double *k, const double *v,
                            int B, int T, int Hq, int Hkv, int hd) {
    double *s = dalloc(T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < Hq; h++) {
            const int g = h / (Hq / Hkv);
            for (int t = 0; t < T; t++) {
                const double *qr = q + (((size_t)b * T + t) * Hq + h) * hd;
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j <= t; j++) {
                    s[j] = dot_n(qr, k + (((size_t)b * T + j) * Hkv + g) * hd, hd) / sqrt((double)hd);
                    mx = fmax(mx, s[j]);
                }
                for (int j = 0; j <= t; j++) sum += exp(s[j] - mx);
                double *o = out + (((size_t)b * T + t) * Hq + h) * hd;
                for (int i = 0; i < hd; i++) {
                    double acc = 0;
                    for (int j = 0; j <= t; j++)
                        acc += exp(s[j] - mx) / sum * v[(((size_t)b * T + j) * Hkv + g) * hd + i];
                    o[i] = acc;
                }
                lse[((size_t)b * Hq + h) * T + t] = mx + log(sum);
            }
        }
    free(s);
}

typedef struct {
    double *q, *k, *v, *W, *out, *lse;
    int B, T, Hq, Hkv, hd;
} att_ctx;

static double att_loss(void *p) {
    att_ctx *c = p;
    oz_cpu_attention_fwd_f64(c->out, c->lse, c->q, c->k, c->v, c->B, c->T, c->Hq, c->Hkv, c->hd);
    return dot_n(c->out, c->W, (size_t)c->B * c->T * c->Hq * c->hd);
}

static void check_attention(int B, int T, int Hq, int Hkv, int hd) {
    char what[160];
    const size_t nq = (size_t)B * T * Hq * hd, nk = (size_t)B * T * Hkv * hd, nl = (size_t)B * Hq * T;
    att_ctx c = {drand(nq, -1.5, 1.5), drand(nk, -1.5, 1.5), drand(nk, -1, 1), drand(nq, -1, 1),
                 dalloc(nq), dalloc(nl), B, T, Hq, Hkv, hd};
    double *ref = dalloc(nq), *lref = dalloc(nl);
    naive_attention(ref, lref, c.q, c.k, c.v, B, T, Hq, Hkv, hd);
    att_loss(&c);
    snprintf(what, sizeof what, "attention_fwd B=%d T=%d Hq=%d Hkv=%d hd=%d", B, T, Hq, Hkv, hd);
    check_all(what, c.out, ref, nq, 1e-12, 1e-13);
    check_all("attention_fwd lse", c.lse, lref, nl, 1e-12, 1e-13);

    /* causality: changing position p may only change rows t >= p */
    const int p = T / 2;
    double *q2 = dcopy(c.q, nq), *k2 = dcopy(c.k, nk), *v2 = dcopy(c.v, nk);
    for (int b = 0; b < B; b++)
        for (int t = p; t < T; t++) {
            for (int i = 0; i < Hq * hd; i++) q2[((size_t)b * T + t) * Hq * hd + i] += 0.5;
            for (int i = 0; i < Hkv * hd; i++) {
                k2[((size_t)b * T + t) * Hkv * hd + i] -= 0.7;
                v2[((size_t)b * T + t) * Hkv * hd + i] += 0.9;
            }
        }
    double *out2 = dalloc(nq), *lse2 = dalloc(nl);
    oz_cpu_attention_fwd_f64(out2, lse2, q2, k2, v2, B, T, Hq, Hkv, hd);
    size_t leaked = 0, changed = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int i = 0; i < Hq * hd; i++) {
                const size_t at = ((size_t)b * T + t) * Hq * hd + i;
                if (t < p) leaked += out2[at] != c.out[at];
                else changed += out2[at] != c.out[at];
            }
    CHECK(leaked == 0 && changed > 0, "attention causality: %zu earlier outputs changed, %zu later", leaked,
          changed);

    /* backward vs FD of L = sum(out * W); dq/dk/dv start as garbage to check they are overwritten */
    double *dq = drand(nq, 5, 6), *dk = drand(nk, 5, 6), *dv = drand(nk, 5, 6);
    att_loss(&c);
    oz_cpu_attention_bwd_f64(dq, dk, dv, c.W, c.q, c.k, c.v, c.out, c.lse, B, T, Hq, Hkv, hd);
    double *gq = dalloc(nq), *gk = dalloc(nk), *gv = dalloc(nk), *wrong = NULL;
    if (nq > 4096) {
        check_fd_sampled("attention dq vs FD (sampled, wide head)", att_loss, &c, c.q, nq, dq, 101);
        check_fd_sampled("attention dk vs FD (sampled, wide head)", att_loss, &c, c.k, nk, dk, 101);
        check_fd_sampled("attention dv vs FD (sampled, wide head)", att_loss, &c, c.v, nk, dv, 101);
    } else {
        fd_grad(att_loss, &c, c.q, nq, gq);
        fd_grad(att_loss, &c, c.k, nk, gk);
        fd_grad(att_loss, &c, c.v, nk, gv);
        snprintf(what, sizeof what, "attention dq vs FD (T=%d Hq=%d Hkv=%d)", T, Hq, Hkv);
        check_all(what, dq, gq, nq, FD_RTOL, FD_ATOL);
        snprintf(what, sizeof what, "attention dk vs FD (T=%d Hq=%d Hkv=%d)", T, Hq, Hkv);
        check_all(what, dk, gk, nk, FD_RTOL, FD_ATOL);
        snprintf(what, sizeof what, "attention dv vs FD (T=%d Hq=%d Hkv=%d)", T, Hq, Hkv);
        check_all(what, dv, gv, nk, FD_RTOL, FD_ATOL);
        /* wrong: a small error in one dk element (additive too: with T = 1 dk is exactly 0), and a dq
         * missing its 1/sqrt(hd) (only meaningful when dq is nonzero, i.e. T > 1) */
        wrong = dcopy(dk, nk);
        wrong[nk / 3] += 1e-4 * fabs(wrong[nk / 3]) + 1e-6;
        check_rejects("attention dk off by 1e-4", wrong, gk, nk, FD_RTOL, FD_ATOL);
        free(wrong);
        wrong = dcopy(dq, nq);
        for (size_t i = 0; i < nq; i++) wrong[i] *= sqrt((double)hd);
        if (T > 1) check_rejects("attention dq without scale", wrong, gq, nq, FD_RTOL, FD_ATOL);
    }
    /* fp32 backend on the same inputs */
    att_loss(&c);
    float *qf = to_f32(c.q, nq), *kf = to_f32(c.k, nk), *vf = to_f32(c.v, nk), *Wf = to_f32(c.W, nq);
    float *of = falloc(nq), *lf = falloc(nl), *dqf = falloc(nq), *dkf = falloc(nk), *dvf = falloc(nk);
    be.attention_fwd(&be, of, lf, qf, kf, vf, B, T, Hq, Hkv, hd);
    check_f32("attention_fwd out", of, c.out, nq, F32_TOL);
    check_f32("attention_fwd lse", lf, c.lse, nl, F32_TOL);
    be.attention_bwd(&be, dqf, dkf, dvf, Wf, qf, kf, vf, of, lf, B, T, Hq, Hkv, hd);
    check_f32("attention_bwd dq", dqf, dq, nq, F32_TOL);
    check_f32("attention_bwd dk", dkf, dk, nk, F32_TOL);
    check_f32("attention_bwd dv", dvf, dv, nk, F32_TOL);

    free(c.q), free(c.k), free(c.v), free(c.W), free(c.out), free(c.lse), free(ref), free(lref);
    free(q2), free(k2), free(v2), free(out2), free(lse2), free(dq), free(dk), free(dv), free(gq), free(gk);
    free(gv), free(wrong), free(qf), free(kf), free(vf), free(Wf), free(of), free(lf), free(dqf), free(dkf);
    free(dvf);
}

/* Scores far beyond exp's range, placed mid-block and in a later key block: only a correct running
 * max (within and across blocks) keeps the online softmax finite. */
static void check_attention_large_scores(void) {
    enum { T = 70, hd = 4 };
    const size_t n = (size_t)T * hd;
    double *q = dalloc(n), *k = drand(n, -1, 1), *v = drand(n, -1, 1), *out = dalloc(n), *lse = dalloc(T);
    double *ref = dalloc(n), *lref = dalloc(T);
    for (size_t i = 0; i < n; i++) q[i] = 1;
    for (int i = 0; i < hd; i++) k[3 * hd + i] = 400, k[66 * hd + i] = 1000; /* scores 800 and 2000 */
    naive_attention(ref, lref, q, k, v, 1, T, 1, 1, hd);
    oz_cpu_attention_fwd_f64(out, lse, q, k, v, 1, T, 1, 1, hd);
    check_all("attention_fwd with scores ~1e3", out, ref, n, 1e-12, 1e-13);
    check_all("attention_fwd lse with scores ~1e3", lse, lref, T, 1e-12, 1e-13);
    float *qf = to_f32(q, n), *kf = to_f32(k, n), *vf = to_f32(v, n), *of = falloc(n), *lf = falloc(T);
    be.attention_fwd(&be, of, lf, qf, kf, vf, 1, T, 1, 1, hd);
    check_f32("attention_fwd with scores ~1e3", of, ref, n, F32_TOL);
    free(q), free(k), free(v), free(out), free(lse), free(ref), free(lref), free(qf), free(kf), free(vf);
    free(of), free(lf);
}

static void test_attention(void) {
    check_attention(2, 5, 4, 2, 6); /* GQA */
    check_attention(1, 7, 3, 3, 5); /* plain multi-head, odd head_dim */
    check_attention(1, 70, 2, 1, 4); /* crosses the forward's 64-key block */
    check_attention(1, 1, 2, 2, 3); /* a single position */
    check_attention(1, 3, 2, 1, 4099); /* too wide for the transposed key tile: the dot-product path */
    check_attention_large_scores();
}

/* ---- swiglu ---- */

typedef struct {
    double *g, *u, *W, *h;
    size_t n;
} swiglu_ctx;

static double swiglu_loss(void *p) {
    swiglu_ctx *c = p;
    oz_cpu_swiglu_fwd_f64(c->h, c->g, c->u, c->n);
    return dot_n(c->h, c->W, c->n);
}

static void test_swiglu(void) {
    enum { n = 11 };
    swiglu_ctx c = {drand(n, -4, 4), drand(n, -2, 2), drand(n, -1, 1), dalloc(n), n};
    swiglu_loss(&c);
    double ref[n];
    for (int i = 0; i < n; i++) ref[i] = c.g[i] / (1 + exp(-c.g[i])) * c.u[i];
    check_all("swiglu_fwd", c.h, ref, n, 1e-14, 1e-15);
    double dg[n], du[n], fg[n], fu[n];
    oz_cpu_swiglu_bwd_f64(dg, du, c.W, c.g, c.u, n);
    fd_grad(swiglu_loss, &c, c.g, n, fg);
    fd_grad(swiglu_loss, &c, c.u, n, fu);
    check_all("swiglu dgate vs FD", dg, fg, n, FD_RTOL, FD_ATOL);
    check_all("swiglu dup vs FD", du, fu, n, FD_RTOL, FD_ATOL);
    double wrong[n]; /* wrong: d silu/dg taken as sigmoid(g) */
    for (int i = 0; i < n; i++) wrong[i] = c.W[i] * c.u[i] / (1 + exp(-c.g[i]));
    check_rejects("swiglu dgate = dh * up * sigmoid", wrong, fg, n, FD_RTOL, FD_ATOL);
    /* in place: dgate aliases gate, dup aliases up */
    double *ga = dcopy(c.g, n), *ua = dcopy(c.u, n);
    oz_cpu_swiglu_bwd_f64(ga, ua, c.W, ga, ua, n);
    check_all("swiglu_bwd in place dgate", ga, dg, n, 0, 0);
    check_all("swiglu_bwd in place dup", ua, du, n, 0, 0);

    float *gf = to_f32(c.g, n), *uf = to_f32(c.u, n), *Wf = to_f32(c.W, n), *hf = falloc(n);
    be.swiglu_fwd(&be, hf, gf, uf, n);
    check_f32("swiglu_fwd", hf, c.h, n, F32_TOL);
    be.swiglu_bwd(&be, gf, uf, Wf, gf, uf, n);
    check_f32("swiglu_bwd dgate (in place)", gf, dg, n, F32_TOL);
    check_f32("swiglu_bwd dup (in place)", uf, du, n, F32_TOL);
    free(c.g), free(c.u), free(c.W), free(c.h), free(ga), free(ua), free(gf), free(uf), free(Wf), free(hf);
}

/* ---- cross entropy ---- */

typedef struct {
    double *logits, *tmp, *losses;
    const int32_t *targets;
    int N, V;
    double gs;
} ce_ctx;

static double ce_loss(void *p) {
    ce_ctx *c = p;
    memcpy(c->tmp, c->logits, (size_t)c->N * c->V * sizeof(double));
    oz_cpu_cross_entropy_f64(c->tmp, c->losses, c->targets, c->N, c->V, 0);
    double s = 0;
    for (int i = 0; i < c->N; i++) s += c->losses[i];
    return c->gs * s;
}

static void test_cross_entropy(void) {
    enum { N = 5, V = 7 };
    const int32_t targets[N] = {3, -1, 0, 6, 3};
    const size_t nv = (size_t)N * V;
    ce_ctx c = {drand(nv, -3, 3), dalloc(nv), dalloc(N), targets, N, V, 0.37};
    double ref[N];
    for (int i = 0; i < N; i++) {
        double s = 0;
        for (int j = 0; j < V; j++) s += exp(c.logits[i * V + j]);
        ref[i] = targets[i] < 0 ? 0 : log(s) - c.logits[i * V + targets[i]];
    }
    ce_loss(&c);
    check_all("cross_entropy losses", c.losses, ref, N, 1e-14, 1e-15);
    CHECK(memcmp(c.tmp, c.logits, nv * sizeof(double)) == 0, "grad_scale 0 must leave logits untouched");

    double *grad = dcopy(c.logits, nv), losses[N], *fd = dalloc(nv);
    oz_cpu_cross_entropy_f64(grad, losses, targets, N, V, c.gs);
    check_all("cross_entropy losses with gradient", losses, ref, N, 1e-14, 1e-15);
    fd_grad(ce_loss, &c, c.logits, nv, fd);
    check_all("cross_entropy gradient vs FD", grad, fd, nv, FD_RTOL, FD_ATOL);
    size_t nonzero = 0;
    for (int j = 0; j < V; j++) nonzero += grad[1 * V + j] != 0;
    CHECK(nonzero == 0, "ignored target: %zu nonzero gradient entries", nonzero);
    double *wrong = dcopy(grad, nv); /* wrong: forgetting grad_scale on the one-hot term */
    for (int i = 0; i < N; i++)
        if (targets[i] >= 0) wrong[i * V + targets[i]] += c.gs - 1;
    check_rejects("cross_entropy gradient with unscaled one-hot", wrong, fd, nv, FD_RTOL, FD_ATOL);

    /* large logits must not overflow */
    double big[V], bl;
    const int32_t t0 = 2;
    for (int j = 0; j < V; j++) big[j] = 1000 + j;
    oz_cpu_cross_entropy_f64(big, &bl, &t0, 1, V, 1);
    CHECK(isfinite(bl) && isfinite(big[0]) && bl > 0, "cross_entropy at logits ~1000: loss %g", bl);
    /* a target past the vocabulary is reported as NaN, not read out of bounds */
    const int32_t tbad = V;
    double row[V] = {0};
    oz_cpu_cross_entropy_f64(row, &bl, &tbad, 1, V, 1);
    CHECK(isnan(bl), "cross_entropy target >= V: loss %g", bl);

    /* fp32 backend with a wider vocabulary */
    enum { N2 = 9, V2 = 1001 };
    int32_t t2[N2];
    for (int i = 0; i < N2; i++) t2[i] = i == 4 ? -1 : (i * 97) % V2;
    double *l2 = drand((size_t)N2 * V2, -4, 4), loss2[N2];
    float *l2f = to_f32(l2, (size_t)N2 * V2), loss2f[N2];
    oz_cpu_cross_entropy_f64(l2, loss2, t2, N2, V2, 0.25);
    be.cross_entropy(&be, l2f, loss2f, t2, N2, V2, 0.25f);
    check_f32("cross_entropy losses", loss2f, loss2, N2, F32_TOL);
    check_f32("cross_entropy gradient", l2f, l2, (size_t)N2 * V2, F32_TOL);
    free(c.logits), free(c.tmp), free(c.losses), free(grad), free(fd), free(wrong), free(l2), free(l2f);
}

/* ---- AdamW ---- */

static void test_adamw(void) {
    enum { n = 9 };
    double *p = drand(n, -1, 1), *m = dalloc(n), *v = dalloc(n);
    double pr[n], mr[n], vr[n];
    memcpy(pr, p, sizeof pr);
    memset(mr, 0, sizeof mr), memset(vr, 0, sizeof vr);
    float *pf = to_f32(p, n), *mf = falloc(n), *vf = falloc(n);
    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gs = 0.5f;
    for (int step = 1; step <= 3; step++) {
        double *g = drand(n, -1, 1);
        if (step == 2) g[0] = 0; /* a zero gradient still decays and moves with momentum */
        const oz_adamw_args a = {lr, b1, b2, eps, wd, 1 - powf(b1, (float)step), 1 - powf(b2, (float)step), gs};
        /* torch.optim.AdamW, single-tensor path, in double */
        for (int i = 0; i < n; i++) {
            const double gi = g[i] * (double)gs;
            pr[i] *= 1 - (double)lr * (double)wd;
            mr[i] = (double)b1 * mr[i] + (1 - (double)b1) * gi;
            vr[i] = (double)b2 * vr[i] + (1 - (double)b2) * gi * gi;
            const double denom = sqrt(vr[i]) / sqrt((double)a.bias_correction2) + (double)eps;
            pr[i] -= (double)lr / (double)a.bias_correction1 * (mr[i] / denom);
        }
        oz_cpu_adamw_step_f64(p, g, m, v, n, &a);
        float *gf = to_f32(g, n);
        be.adamw_step(&be, pf, gf, mf, vf, n, &a);
        char what[64];
        snprintf(what, sizeof what, "adamw param step %d", step);
        check_all(what, p, pr, n, 1e-14, 1e-15);
        check_f32(what, pf, pr, n, F32_TOL);
        snprintf(what, sizeof what, "adamw m step %d", step);
        check_all(what, m, mr, n, 1e-14, 1e-15);
        check_f32(what, mf, mr, n, F32_TOL);
        snprintf(what, sizeof what, "adamw v step %d", step);
        check_all(what, v, vr, n, 1e-14, 1e-16);
        check_f32(what, vf, vr, n, F32_TOL);
        free(g), free(gf);
    }
    /* the tolerance above separates parameters half a step apart */
    double wrong[n];
    for (int i = 0; i < n; i++) wrong[i] = p[i] + 1e-2 * 0.5;
    check_rejects("adamw param shifted by half a step", wrong, pr, n, 1e-14, 1e-15);
    free(p), free(m), free(v), free(pf), free(mf), free(vf);
}

/* ---- the fp32 backend's vectorisable exp ---- */

static void test_expf(void) {
    double worst = 0, at = 0;
    for (double x = -87.0; x < 88.3; x += 1.37e-3) {
        const float xf = (float)x;
        const double e = exp((double)xf), r = fabs((double)oz_cpu_expf(xf) - e) / e;
        if (r > worst) worst = r, at = xf;
    }
    CHECK(worst < 2.5e-7, "oz_cpu_expf: relative error %.3g at %g", worst, at);
    CHECK(oz_cpu_expf(-INFINITY) == 0 && oz_cpu_expf(-1000) == 0 && oz_cpu_expf(0) == 1, "oz_cpu_expf low end");
    CHECK(isinf(oz_cpu_expf(INFINITY)) && isinf(oz_cpu_expf(1000)) && isnan(oz_cpu_expf(NAN)),
          "oz_cpu_expf: inf and NaN");
    /* SiLU at extreme gates stays finite */
    float g[2] = {-1000, 1000}, u[2] = {1, 1}, h[2];
    be.swiglu_fwd(&be, h, g, u, 2);
    CHECK(h[0] == 0 && h[1] == 1000, "silu(-1000) = %g, silu(1000) = %g", h[0], h[1]);
}

/* ---- bf16 ops ----
 * Each bf16 op against its fp32 op on the same inputs widened: equal to the fp32 result rounded
 * once (gemm_bf16: within that rounding plus fp32 summation order). Odd sizes throughout. Inputs
 * come from their own generator: the shared one's sequence feeds the sampled FD checks above. */

static oz_rng bf_rng;

static uint16_t *bf_rand(size_t n, float lo, float hi) {
    uint16_t *x = xalloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = oz_f32_to_bf16(lo + (hi - lo) * oz_rng_uniform(&bf_rng));
    return x;
}

static float *bf_widen(const uint16_t *x, size_t n) {
    float *y = falloc(n);
    for (size_t i = 0; i < n; i++) y[i] = oz_bf16_to_f32(x[i]);
    return y;
}

/* Elements where got is not ref rounded to bf16 (compared as values: -0 equals +0). */
static size_t bf_mismatches(const uint16_t *got, const float *ref, size_t n) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        const float g = oz_bf16_to_f32(got[i]), r = oz_bf16_to_f32(oz_f32_to_bf16(ref[i]));
        bad += !(g == r || (isnan(g) && isnan(r)));
    }
    return bad;
}

/* Worst |got - ref| / (2^-8 |ref| + 1e-5 max|ref|) over an (M,N) matrix with leading dimension ld:
 * <= 1 when each element is within the one bf16 rounding (half an ulp, at most 2^-8 relative) of
 * the fp32 reference, give or take fp32 summation order. */
static double bf_violation(const void *got, int got_bf16, const float *ref, int M, int N, int ld) {
    double maxref = 0, v = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) maxref = fmax(maxref, fabs(ref[(size_t)i * ld + j]));
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            const size_t at = (size_t)i * ld + j;
            const double g = got_bf16 ? oz_bf16_to_f32(((const uint16_t *)got)[at]) : ((const float *)got)[at];
            const double r = ref[at], tol = got_bf16 ? 0x1p-8 * fabs(r) + 1e-5 * maxref : 1e-5 * maxref + 1e-30;
            double e = g == r ? 0 : fabs(g - r) / tol;
            if (isnan(e)) e = INFINITY;
            v = fmax(v, e);
        }
    return v;
}

static void check_gemm_bf16(int ta, int tb, int M, int N, int K, int pad, float alpha, float beta, int c_bf16) {
    const int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
    const size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb, nc = (size_t)M * ldc;
    uint16_t *A = bf_rand(na ? na : 1, -1, 1), *B = bf_rand(nb ? nb : 1, -1, 1), *C16 = bf_rand(nc, -1, 1);
    float *Af = bf_widen(A, na), *Bf = bf_widen(B, nb), *ref = bf_widen(C16, nc), *C32 = bf_widen(C16, nc);
    float *wrong = bf_widen(C16, nc);
    void *Cg = c_bf16 ? (void *)C16 : (void *)C32;
    /* beta == 0 overwrites: C starts as NaN there, and so does its padding, which must stay. */
    const size_t esz = c_bf16 ? 2 : 4;
    if (beta == 0) memset(Cg, 0xff, nc * esz);
    unsigned char *before = xalloc(nc * esz);
    memcpy(before, Cg, nc * esz);
    be.gemm(&be, ta, tb, M, N, K, alpha, Af, lda, Bf, ldb, beta, ref, ldc);
    be.gemm_bf16(&be, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, Cg, ldc, c_bf16);
    char what[128];
    snprintf(what, sizeof what, "gemm_bf16 ta=%d tb=%d %dx%dx%d pad %d beta %g C %s", ta, tb, M, N, K, pad,
             (double)beta, c_bf16 ? "bf16" : "fp32");
    const double v = bf_violation(Cg, c_bf16, ref, M, N, ldc);
    CHECK(v <= 1, "%s: %.3g x tolerance", what, v);
    size_t pad_bad = 0;
    for (int i = 0; i < M; i++)
        pad_bad += memcmp((const unsigned char *)Cg + ((size_t)i * ldc + N) * esz, before + ((size_t)i * ldc + N) * esz,
                          (size_t)(ldc - N) * esz) != 0;
    CHECK(pad_bad == 0, "%s: padding written in %zu rows", what, pad_bad);
    /* Negative controls: results that ignored beta, or the leading dimensions, must fail the same
     * tolerance. */
    if (beta != 0 && K > 0) {
        be.gemm(&be, ta, tb, M, N, K, alpha, Af, lda, Bf, ldb, 0.0f, wrong, ldc);
        CHECK(bf_violation(wrong, 0, ref, M, N, ldc) > 1, "%s: ignoring beta passes the check", what);
    }
    if (pad > 0 && K > 1 && M > 1) {
        memcpy(wrong, C32, nc * sizeof *wrong);
        be.gemm(&be, ta, tb, M, N, K, alpha, Af, lda - pad, Bf, ldb - pad, beta, wrong, ldc);
        CHECK(bf_violation(wrong, 0, ref, M, N, ldc) > 1, "%s: ignoring lda/ldb passes the check", what);
    }
    free(A), free(B), free(C16), free(Af), free(Bf), free(ref), free(C32), free(wrong), free(before);
}

static void test_bf16_gemm(void) {
    static const int shapes[][3] = {{1, 1, 1}, {7, 129, 1000}, {1000, 7, 129}, {129, 1000, 7}, {1, 1000, 129},
                                    {65, 64, 300}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int c16 = 0; c16 < 2; c16++) {
                    const int pad = (int)(s + ta + tb) % 2 ? 3 : 0;
                    check_gemm_bf16(ta, tb, shapes[s][0], shapes[s][1], shapes[s][2], pad, 0.75f,
                                    (ta + tb + c16) % 2 ? -0.5f : 0.0f, c16);
                }
    check_gemm_bf16(0, 0, 129, 70, 100, 2, 1.0f, 1.0f, 1); /* beta = 1: accumulate into bf16 */
    check_gemm_bf16(1, 0, 64, 70, 300, 1, 1.0f, 1.0f, 0);  /* a weight gradient accumulating in fp32 */
    for (int c16 = 0; c16 < 2; c16++) {
        check_gemm_bf16(0, 1, 5, 6, 0, 1, 1.0f, 0.5f, c16); /* K == 0: beta * C */
        check_gemm_bf16(0, 1, 5, 6, 0, 1, 1.0f, 0.0f, c16);
    }
}

static void test_bf16_rows(void) {
    static const int shapes[][2] = {{1, 1}, {7, 129}, {3, 1000}, {40, 257}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int N = shapes[s][0], d = shapes[s][1];
        const size_t nd = (size_t)N * d;
        uint16_t *x = bf_rand(nd, -2, 2), *w = bf_rand(d, 0.5f, 1.5f), *g = bf_rand(nd, -1, 1), *out = bf_rand(nd, 0, 1);
        float *xf = bf_widen(x, nd), *wf = bf_widen(w, d), *gf = bf_widen(g, nd), *ref = falloc(nd);
        float *rs = falloc(N), *rsref = falloc(N);
        char what[96];
        snprintf(what, sizeof what, "rmsnorm_fwd_bf16 %dx%d", N, d);
        be.rmsnorm_fwd(&be, ref, rsref, xf, wf, N, d, 1e-5f);
        be.rmsnorm_fwd_bf16(&be, out, rs, x, w, N, d, 1e-5f);
        CHECK(bf_mismatches(out, ref, nd) == 0, "%s: %zu outputs differ from the fp32 op's rounded", what,
              bf_mismatches(out, ref, nd));
        CHECK(memcmp(rs, rsref, N * sizeof *rs) == 0, "%s: rstd differs from the fp32 op's", what);
        for (int acc = 0; acc < 2; acc++) {
            uint16_t *dx = bf_rand(nd, -1, 1);
            float *dxref = acc ? bf_widen(dx, nd) : falloc(nd), *dw = falloc(d), *dwref = falloc(d);
            for (int j = 0; j < d; j++) dw[j] = dwref[j] = 0.25f * (float)j;
            be.rmsnorm_bwd(&be, dxref, dwref, gf, xf, wf, rsref, N, d);
            be.rmsnorm_bwd_bf16(&be, dx, dw, g, x, w, rs, N, d, acc);
            snprintf(what, sizeof what, "rmsnorm_bwd_bf16 %dx%d accumulate %d", N, d, acc);
            CHECK(bf_mismatches(dx, dxref, nd) == 0, "%s: %zu dx differ from the fp32 op's rounded", what,
                  bf_mismatches(dx, dxref, nd));
            CHECK(memcmp(dw, dwref, d * sizeof *dw) == 0, "%s: dw differs from the fp32 op's", what);
            free(dx), free(dxref), free(dw), free(dwref);
        }
        /* embedding rows out of a (V, d) table */
        enum { V = 11 };
        uint16_t *table = bf_rand((size_t)V * d, -1, 1), *emb = bf_rand(nd, 0, 1);
        int32_t *ids = xalloc((size_t)N * sizeof *ids);
        for (int i = 0; i < N; i++) ids[i] = (int32_t)((i * 7 + 3) % V);
        be.embedding_fwd_bf16out(&be, emb, table, ids, N, d);
        size_t bad = 0;
        for (int i = 0; i < N; i++) bad += memcmp(emb + (size_t)i * d, table + (size_t)ids[i] * d, (size_t)d * 2) != 0;
        CHECK(bad == 0, "embedding_fwd_bf16out %dx%d: %zu rows differ", N, d, bad);
        free(x), free(w), free(g), free(out), free(xf), free(wf), free(gf), free(ref), free(rs), free(rsref);
        free(table), free(emb), free(ids);
    }
}

static void test_bf16_rope(void) {
    static const int shapes[][4] = {{1, 1, 1, 2}, {2, 7, 3, 6}, {2, 9, 2, 64}, {1, 5, 3, 128}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int B = shapes[s][0], T = shapes[s][1], H = shapes[s][2], hd = shapes[s][3], half = hd / 2;
        const int pos0 = 3, max_pos = pos0 + T;
        const size_t n = (size_t)B * T * H * hd;
        float *cs = falloc((size_t)max_pos * half), *sn = falloc((size_t)max_pos * half);
        for (int p = 0; p < max_pos; p++)
            for (int i = 0; i < half; i++) {
                const double a = p * pow(10000.0, -2.0 * i / hd);
                cs[p * half + i] = (float)cos(a), sn[p * half + i] = (float)sin(a);
            }
        for (int inv = 0; inv < 2; inv++) {
            uint16_t *x = bf_rand(n, -1, 1);
            float *ref = bf_widen(x, n);
            be.rope(&be, ref, cs, sn, B, T, H, hd, pos0, inv);
            be.rope_bf16(&be, x, cs, sn, B, T, H, hd, pos0, inv);
            CHECK(bf_mismatches(x, ref, n) == 0, "rope_bf16 (%d,%d,%d,%d) inverse %d: %zu differ", B, T, H, hd, inv,
                  bf_mismatches(x, ref, n));
            free(x), free(ref);
        }
        free(cs), free(sn);
    }
}

static void test_bf16_elementwise(void) {
    const size_t sizes[] = {1, 7, 1001, 100003};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        const size_t n = sizes[s];
        uint16_t *g = bf_rand(n, -6, 6), *u = bf_rand(n, -2, 2), *dh = bf_rand(n, -1, 1), *h = bf_rand(n, 0, 1);
        float *gf = bf_widen(g, n), *uf = bf_widen(u, n), *dhf = bf_widen(dh, n), *ref = falloc(n);
        be.swiglu_fwd(&be, ref, gf, uf, n);
        be.swiglu_fwd_bf16(&be, h, g, u, n);
        CHECK(bf_mismatches(h, ref, n) == 0, "swiglu_fwd_bf16 n=%zu: %zu differ", n, bf_mismatches(h, ref, n));
        /* the backward in place, as the model calls it, and into separate buffers */
        uint16_t *dg = bf_rand(n, 0, 1), *du = bf_rand(n, 0, 1);
        be.swiglu_bwd_bf16(&be, dg, du, dh, g, u, n);
        be.swiglu_bwd(&be, gf, uf, dhf, gf, uf, n);
        be.swiglu_bwd_bf16(&be, g, u, dh, g, u, n);
        CHECK(bf_mismatches(g, gf, n) == 0 && bf_mismatches(u, uf, n) == 0, "swiglu_bwd_bf16 in place n=%zu differs",
              n);
        CHECK(!memcmp(g, dg, n * 2) && !memcmp(u, du, n * 2), "swiglu_bwd_bf16 n=%zu: in place differs", n);
        /* the residual add: into a third buffer, then in place */
        uint16_t *a = bf_rand(n, -3, 3), *b = bf_rand(n, -0.1f, 0.1f), *o = bf_rand(n, 0, 1);
        float *af = bf_widen(a, n), *bf = bf_widen(b, n);
        for (size_t i = 0; i < n; i++) ref[i] = af[i] + bf[i];
        be.add_bf16(&be, o, a, b, n);
        be.add_bf16(&be, a, a, b, n);
        CHECK(bf_mismatches(o, ref, n) == 0, "add_bf16 n=%zu: %zu differ", n, bf_mismatches(o, ref, n));
        CHECK(!memcmp(o, a, n * 2), "add_bf16 n=%zu: in place differs", n);
        free(g), free(u), free(dh), free(h), free(gf), free(uf), free(dhf), free(ref), free(dg), free(du);
        free(a), free(b), free(o), free(af), free(bf);
    }
}

/* Attention in bf16: exactly the fp32 op on the widened inputs, rounded (the op runs a batch
 * element at a time; the reference here runs the whole batch at once); lse bit for bit; the
 * planned workspace is the op's; with too little workspace every output is NaN. */
static void test_bf16_attention(void) {
    const int shapes[][5] = {{2, 37, 4, 2, 16}, {1, 5, 3, 3, 8}, {3, 70, 8, 1, 32}, {2, 1, 2, 1, 8}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int B = shapes[s][0], T = shapes[s][1], Hq = shapes[s][2], Hkv = shapes[s][3], hd = shapes[s][4];
        const size_t nq = (size_t)B * T * Hq * hd, nk = (size_t)B * T * Hkv * hd, nl = (size_t)B * Hq * T;
        uint16_t *q = bf_rand(nq, -2, 2), *k = bf_rand(nk, -2, 2), *v = bf_rand(nk, -1, 1), *dout = bf_rand(nq, -1, 1);
        float *qf = bf_widen(q, nq), *kf = bf_widen(k, nk), *vf = bf_widen(v, nk), *dof = bf_widen(dout, nq);
        float *of = falloc(nq), *lf = falloc(nl), *dqf = falloc(nq), *dkf = falloc(nk), *dvf = falloc(nk);
        uint16_t *o = bf_rand(nq, 0, 1), *dq = bf_rand(nq, 0, 1), *dk = bf_rand(nk, 0, 1), *dv = bf_rand(nk, 0, 1);
        float *l = falloc(nl);
        size_t ws_bytes = 0;
        oz_err err = {0};
        CHECK(be.attention_bf16_plan(&be, B, T, Hq, Hkv, hd, &ws_bytes, &err) == OZ_OK, "%s", err.msg);
        CHECK(ws_bytes == oz_attention_bf16_device_workspace_bytes(0, B, T, Hq, Hkv, hd) &&
                  ws_bytes == (size_t)T * (4 * Hq + 4 * Hkv) * hd * sizeof(float),
              "attention_bf16_plan: %zu workspace bytes", ws_bytes);
        void *ws = xalloc(ws_bytes);
        be.attention_fwd(&be, of, lf, qf, kf, vf, B, T, Hq, Hkv, hd);
        be.attention_fwd_bf16(&be, o, l, q, k, v, B, T, Hq, Hkv, hd, ws, ws_bytes);
        /* the backward from the bf16 forward's output, as the model runs it */
        float *ow = bf_widen(o, nq);
        be.attention_bwd(&be, dqf, dkf, dvf, dof, qf, kf, vf, ow, lf, B, T, Hq, Hkv, hd);
        be.attention_bwd_bf16(&be, dq, dk, dv, dout, q, k, v, o, l, B, T, Hq, Hkv, hd, ws, ws_bytes);
        CHECK(bf_mismatches(o, of, nq) == 0 && !memcmp(l, lf, nl * sizeof *l),
              "attention_fwd_bf16 (%d,%d,%d,%d,%d): %zu outputs differ, lse %s", B, T, Hq, Hkv, hd,
              bf_mismatches(o, of, nq), memcmp(l, lf, nl * sizeof *l) ? "differs" : "equal");
        CHECK(bf_mismatches(dq, dqf, nq) == 0 && bf_mismatches(dk, dkf, nk) == 0 && bf_mismatches(dv, dvf, nk) == 0,
              "attention_bwd_bf16 (%d,%d,%d,%d,%d): dq %zu, dk %zu, dv %zu differ", B, T, Hq, Hkv, hd,
              bf_mismatches(dq, dqf, nq), bf_mismatches(dk, dkf, nk), bf_mismatches(dv, dvf, nk));
        /* one byte short: refused, loudly */
        be.attention_fwd_bf16(&be, o, l, q, k, v, B, T, Hq, Hkv, hd, ws, ws_bytes - 1);
        be.attention_bwd_bf16(&be, dq, dk, dv, dout, q, k, v, o, l, B, T, Hq, Hkv, hd, ws, ws_bytes - 1);
        size_t finite = 0;
        for (size_t i = 0; i < nq; i++) finite += !isnan(oz_bf16_to_f32(o[i])) + !isnan(oz_bf16_to_f32(dq[i]));
        for (size_t i = 0; i < nk; i++) finite += !isnan(oz_bf16_to_f32(dk[i])) + !isnan(oz_bf16_to_f32(dv[i]));
        for (size_t i = 0; i < nl; i++) finite += !isnan(l[i]);
        CHECK(finite == 0, "attention_bf16 with too little workspace left %zu finite outputs", finite);
        free(q), free(k), free(v), free(dout), free(qf), free(kf), free(vf), free(dof), free(of), free(lf);
        free(dqf), free(dkf), free(dvf), free(o), free(dq), free(dk), free(dv), free(l), free(ws), free(ow);
    }
    size_t ws = 0;
    oz_err err = {0};
    CHECK(be.attention_bf16_plan(&be, 1, 4, 3, 2, 8, &ws, &err) == OZ_ERR_INPUT, "3 query heads over 2 kv heads planned");
}

/* ---- fp32 backend: plumbing and determinism ---- */

static void test_backend_plumbing(void) {
    CHECK(be.name && strcmp(be.name, "cpu") == 0, "backend name");
    CHECK(be.threads >= 1, "threads = %d", be.threads);
    float src[5] = {1, 2, 3, 4, 5}, *dev = be.allocator.alloc(be.allocator.ctx, sizeof src), back[5];
    CHECK(dev != NULL, "allocator");
    if (!dev) return;
    be.to_device(&be, dev, src, sizeof src);
    be.copy(&be, dev + 1, dev, 3 * sizeof(float)); /* overlapping */
    be.to_host(&be, back, dev, sizeof back);
    CHECK(back[0] == 1 && back[1] == 1 && back[2] == 2 && back[3] == 3 && back[4] == 5, "copy: %g %g %g %g %g",
          back[0], back[1], back[2], back[3], back[4]);
    be.allocator.free(be.allocator.ctx, dev);
}

static float *frand(size_t n, double lo, double hi) {
    float *x = falloc(n);
    for (size_t i = 0; i < n; i++) x[i] = (float)urand(lo, hi);
    return x;
}

#define SAME(a, b, n, what) CHECK(memcmp((a), (b), (n) * sizeof *(a)) == 0, "%s differs between two runs", what)

static void test_determinism(void) {
    /* sizes large enough that every op takes its parallel path */
    enum { B = 2, T = 67, Hq = 4, Hkv = 2, hd = 16, N = 300, d = 257, V = 503 };
    const size_t nq = (size_t)B * T * Hq * hd, nk = (size_t)B * T * Hkv * hd, nl = (size_t)B * Hq * T;
    float *q = frand(nq, -1, 1), *k = frand(nk, -1, 1), *v = frand(nk, -1, 1), *dout = frand(nq, -1, 1);
    float *out = falloc(nq), *lse = falloc(nl);
    float *dq[2] = {falloc(nq), falloc(nq)}, *dk[2] = {falloc(nk), falloc(nk)}, *dv[2] = {falloc(nk), falloc(nk)};
    be.attention_fwd(&be, out, lse, q, k, v, B, T, Hq, Hkv, hd);
    for (int r = 0; r < 2; r++) be.attention_bwd(&be, dq[r], dk[r], dv[r], dout, q, k, v, out, lse, B, T, Hq, Hkv, hd);
    SAME(dq[0], dq[1], nq, "attention dq");
    SAME(dk[0], dk[1], nk, "attention dk");
    SAME(dv[0], dv[1], nk, "attention dv");

    const size_t nd = (size_t)N * d;
    float *x = frand(nd, -1, 1), *w = frand(d, 0.5, 1.5), *g = frand(nd, -1, 1), *y = falloc(nd), *rs = falloc(N);
    float *dx[2] = {falloc(nd), falloc(nd)}, *dw[2] = {falloc(d), falloc(d)}, *dt[2] = {falloc((size_t)V * d), falloc((size_t)V * d)};
    int32_t *ids = xalloc(N * sizeof *ids);
    for (int i = 0; i < N; i++) ids[i] = (int32_t)((i * 7919) % 31); /* heavy repetition */
    be.rmsnorm_fwd(&be, y, rs, x, w, N, d, 1e-5f);
    for (int r = 0; r < 2; r++) {
        be.rmsnorm_bwd(&be, dx[r], dw[r], g, x, w, rs, N, d);
        be.embedding_bwd(&be, dt[r], g, ids, N, d, V);
    }
    SAME(dx[0], dx[1], nd, "rmsnorm dx");
    SAME(dw[0], dw[1], (size_t)d, "rmsnorm dw");
    SAME(dt[0], dt[1], (size_t)V * d, "embedding dtable");

    const size_t big = 3000017;
    float *s = frand(big, -1, 1);
    const double s1 = be.sumsq(&be, s, big), s2 = be.sumsq(&be, s, big);
    CHECK(memcmp(&s1, &s2, sizeof s1) == 0, "sumsq differs between two runs");

    free(q), free(k), free(v), free(dout), free(out), free(lse), free(x), free(w), free(g), free(y), free(rs);
    free(ids), free(s);
    for (int r = 0; r < 2; r++) free(dq[r]), free(dk[r]), free(dv[r]), free(dx[r]), free(dw[r]), free(dt[r]);
}

int main(void) {
    oz_err err = {0};
    if (oz_backend_cpu_create(&be, 0, &err) != OZ_OK) {
        fprintf(stderr, "oz_backend_cpu_create: %s\n", err.msg);
        return 1;
    }
    RUN(test_backend_plumbing);
    RUN(test_expf);
    RUN(test_gemm);
    RUN(test_elementwise);
    RUN(test_bf16_storage);
    RUN(test_strided_storage);
    RUN(test_embedding);
    RUN(test_rmsnorm);
    RUN(test_rope);
    RUN(test_attention);
    RUN(test_swiglu);
    RUN(test_cross_entropy);
    RUN(test_adamw);
    RUN(test_adamw_bf16);
    RUN(test_determinism);
    oz_rng_seed(&bf_rng, 14);
    RUN(test_bf16_gemm);
    RUN(test_bf16_rows);
    RUN(test_bf16_rope);
    RUN(test_bf16_elementwise);
    RUN(test_bf16_attention);
    be.destroy(&be);
    return oz_test_finish("test_ops");
}
