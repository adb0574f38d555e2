/* cuDNN fused attention (backend/cuda/cuda_sdpa.h) against a CPU reference in double precision on
 * the same bf16 inputs: forward (out, stats) and backward (dq, dk, dv), for GQA and MHA, T = 1,
 * odd T, head dims 8 to 128, causal and not, a custom scale; the causal mask checked on its own
 * (changing future keys and values must not move earlier rows); the deterministic backward repeated
 * bit for bit; contract violations rejected. Built with `make CUDA=1`, run on a GPU
 * (tools/gpu_check.sh).
 *
 * Tolerances are for bf16, tensor-wise: err = max |gpu - ref| / max |ref| (a norm-wise bound that
 * values near zero cannot blow up) and the cosine of the two tensors. Outputs are rounded to bf16
 * (relative step 2^-8) and the kernels round the probabilities and dS to bf16 before their
 * matmuls, so err sits near 1e-3..1e-2; a wrong mask, head mapping or scale moves it to ~0.1..1.
 * A reference that is exactly zero (dq and dk at T = 1: the softmax of one score is constant)
 * has no scale, so there the GPU's values must be zero too. Output buffers are poisoned (all bits
 * set: bf16/fp32 NaN) before each call, so an element never written fails. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_sdpa.h"
#include "harness.h"
#include "numeric/half.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float frand(float lo, float hi) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (hi - lo) * (float)((double)(rng_state >> 11) / 9007199254740992.0);
}

/* ------------------------------------------------------------------ host and device buffers */

/* A bf16 tensor: its bits (what the GPU gets) and their exact values as doubles. */
typedef struct {
    size_t n;
    uint16_t *bits;
    double *val;
} hb16;

static int hb16_rand(hb16 *t, size_t n, float lo, float hi) {
    t->n = n;
    t->bits = malloc((n ? n : 1) * sizeof *t->bits);
    t->val = malloc((n ? n : 1) * sizeof *t->val);
    if (!t->bits || !t->val) return 0;
    for (size_t i = 0; i < n; i++) {
        t->bits[i] = oz_f32_to_bf16(frand(lo, hi));
        t->val[i] = oz_bf16_to_f32(t->bits[i]);
    }
    return 1;
}
static void hb16_free(hb16 *t) { free(t->bits), free(t->val); }

static int cuda_ok(cudaError_t e, const char *what) {
    CHECK(e == cudaSuccess, "%s: %s", what, cudaGetErrorString(e));
    return e == cudaSuccess;
}

/* Device buffers of one case; any may be NULL after a failed allocation (the case is skipped). */
typedef struct {
    uint16_t *q, *k, *v, *out, *dout, *dq, *dk, *dv;
    float *stats;
    void *ws;
    size_t ws_bytes;
} dbufs;

static void *dalloc(size_t bytes) {
    void *p = NULL;
    if (!cuda_ok(cudaMalloc(&p, bytes ? bytes : 16), "cudaMalloc")) return NULL;
    return p;
}
static void dfree_all(dbufs *d) {
    void *p[] = {d->q, d->k, d->v, d->out, d->dout, d->dq, d->dk, d->dv, d->stats, d->ws};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) cudaFree(p[i]);
    memset(d, 0, sizeof *d);
}
static int upload(void *dst, const void *src, size_t bytes) {
    return cuda_ok(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy to device");
}
/* Back as doubles: bf16 bits, or fp32. */
static double *back_bf16(const uint16_t *d, size_t n) {
    uint16_t *h = malloc((n ? n : 1) * sizeof *h);
    double *x = malloc((n ? n : 1) * sizeof *x);
    if (!h || !x || !cuda_ok(cudaMemcpy(h, d, n * sizeof *h, cudaMemcpyDeviceToHost), "cudaMemcpy to host")) {
        free(h), free(x);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) x[i] = oz_bf16_to_f32(h[i]);
    free(h);
    return x;
}
static double *back_f32(const float *d, size_t n) {
    float *h = malloc((n ? n : 1) * sizeof *h);
    double *x = malloc((n ? n : 1) * sizeof *x);
    if (!h || !x || !cuda_ok(cudaMemcpy(h, d, n * sizeof *h, cudaMemcpyDeviceToHost), "cudaMemcpy to host")) {
        free(h), free(x);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) x[i] = h[i];
    free(h);
    return x;
}
static int poison(void *d, size_t bytes) { return cuda_ok(cudaMemset(d, 0xFF, bytes), "cudaMemset"); }

/* ------------------------------------------------------------------ the reference */

typedef struct {
    int B, T, Hq, Hkv, hd, causal;
    double scale;
} refshape;

/* Row-major (B, T, H, hd) element. */
static size_t at(const refshape *s, int H, int b, int t, int h) { return (((size_t)b * s->T + t) * H + h) * s->hd; }

static double dot(const double *a, const double *b, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}
static int sees(const refshape *s, int i, int j) { return !s->causal || j <= i; }

/* out = softmax(scale q k^T [masked]) v; lse = log-sum-exp of each row's scores. */
static void ref_fwd(const refshape *s, const double *q, const double *k, const double *v, double *out, double *lse) {
    const int G = s->Hq / s->Hkv;
#pragma omp parallel for collapse(3) schedule(dynamic, 4)
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < s->Hq; h++)
            for (int i = 0; i < s->T; i++) {
                const double *qi = q + at(s, s->Hq, b, i, h);
                double m = -INFINITY;
                for (int j = 0; j < s->T; j++)
                    if (sees(s, i, j)) m = fmax(m, s->scale * dot(qi, k + at(s, s->Hkv, b, j, h / G), s->hd));
                double l = 0;
                double *o = out + at(s, s->Hq, b, i, h);
                for (int d = 0; d < s->hd; d++) o[d] = 0;
                for (int j = 0; j < s->T; j++) {
                    if (!sees(s, i, j)) continue;
                    const double p = exp(s->scale * dot(qi, k + at(s, s->Hkv, b, j, h / G), s->hd) - m);
                    const double *vj = v + at(s, s->Hkv, b, j, h / G);
                    l += p;
                    for (int d = 0; d < s->hd; d++) o[d] += p * vj[d];
                }
                for (int d = 0; d < s->hd; d++) o[d] /= l;
                lse[((size_t)b * s->Hq + h) * s->T + i] = m + log(l);
            }
}

/* The gradients from the reference forward's out and lse: P = exp(S - lse), D = rowsum(dout*out),
 * dS = P (dout v^T - D); dq = scale dS k, dk = scale dS^T q, dv = P^T dout. dq in one pass over
 * query rows, dk and dv in one over key rows, so each output has one writer. */
static void ref_bwd(const refshape *s, const double *q, const double *k, const double *v, const double *out,
                    const double *lse, const double *dout, double *dq, double *dk, double *dv) {
    const int G = s->Hq / s->Hkv;
    const size_t rows = (size_t)s->B * s->Hq * s->T;
    double *D = malloc(rows * sizeof *D);
    if (!D) return;
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < s->Hq; h++)
            for (int i = 0; i < s->T; i++)
                D[((size_t)b * s->Hq + h) * s->T + i] =
                    dot(dout + at(s, s->Hq, b, i, h), out + at(s, s->Hq, b, i, h), s->hd);
#pragma omp parallel for collapse(3) schedule(dynamic, 4)
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < s->Hq; h++)
            for (int i = 0; i < s->T; i++) {
                const size_t r = ((size_t)b * s->Hq + h) * s->T + i;
                const double *qi = q + at(s, s->Hq, b, i, h), *doi = dout + at(s, s->Hq, b, i, h);
                double *g = dq + at(s, s->Hq, b, i, h);
                for (int d = 0; d < s->hd; d++) g[d] = 0;
                for (int j = 0; j < s->T; j++) {
                    if (!sees(s, i, j)) continue;
                    const double *kj = k + at(s, s->Hkv, b, j, h / G), *vj = v + at(s, s->Hkv, b, j, h / G);
                    const double p = exp(s->scale * dot(qi, kj, s->hd) - lse[r]);
                    const double ds = p * (dot(doi, vj, s->hd) - D[r]);
                    for (int d = 0; d < s->hd; d++) g[d] += s->scale * ds * kj[d];
                }
            }
#pragma omp parallel for collapse(3) schedule(dynamic, 4)
    for (int b = 0; b < s->B; b++)
        for (int gk = 0; gk < s->Hkv; gk++)
            for (int j = 0; j < s->T; j++) {
                const double *kj = k + at(s, s->Hkv, b, j, gk), *vj = v + at(s, s->Hkv, b, j, gk);
                double *gk_ = dk + at(s, s->Hkv, b, j, gk), *gv = dv + at(s, s->Hkv, b, j, gk);
                for (int d = 0; d < s->hd; d++) gk_[d] = gv[d] = 0;
                for (int h = gk * G; h < (gk + 1) * G; h++)
                    for (int i = 0; i < s->T; i++) {
                        if (!sees(s, i, j)) continue;
                        const size_t r = ((size_t)b * s->Hq + h) * s->T + i;
                        const double *qi = q + at(s, s->Hq, b, i, h), *doi = dout + at(s, s->Hq, b, i, h);
                        const double p = exp(s->scale * dot(qi, kj, s->hd) - lse[r]);
                        const double ds = p * (dot(doi, vj, s->hd) - D[r]);
                        for (int d = 0; d < s->hd; d++) {
                            gv[d] += p * doi[d];
                            gk_[d] += s->scale * ds * qi[d];
                        }
                    }
            }
    free(D);
}

/* ------------------------------------------------------------------ metrics */

typedef struct {
    double err, cos, ref_max, got_max;
} cmp;

static cmp compare(const double *got, const double *ref, size_t n) {
    double num = 0, den = 0, gmax = 0, ab = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs(got[i] - ref[i]);
        if (!(d <= num)) num = d; /* NaN counts as the largest error */
        if (!(fabs(got[i]) <= gmax)) gmax = fabs(got[i]);
        den = fmax(den, fabs(ref[i]));
        ab += got[i] * ref[i], aa += got[i] * got[i], bb += ref[i] * ref[i];
    }
    cmp c = {num / fmax(den, 1e-300), ab / sqrt(fmax(aa * bb, 1e-300)), den, gmax};
    return c;
}

/* Checks one tensor; a reference that is all zero must be matched by zeros. */
static void expect(const char *label, const char *what, const double *got, const double *ref, size_t n, double tol,
                   double min_cos) {
    if (!got) {
        CHECK(0, "%s %s: no result", label, what);
        return;
    }
    cmp c = compare(got, ref, n);
    if (c.ref_max == 0) {
        CHECK(c.got_max <= 1e-6, "%s %s: reference is zero, GPU max |x| %.3g", label, what, c.got_max);
        fprintf(stderr, "  %-44s %-5s zero ref, max |gpu| %.2g\n", label, what, c.got_max);
        return;
    }
    CHECK(c.err <= tol, "%s %s: err %.3g > %.3g", label, what, c.err, tol);
    CHECK(c.cos >= min_cos, "%s %s: cosine %.6f < %.6f", label, what, c.cos, min_cos);
    fprintf(stderr, "  %-44s %-5s err %.2e cos %.7f\n", label, what, c.err, c.cos);
}

/* ------------------------------------------------------------------ cases */

typedef struct {
    int B, T, Hq, Hkv, hd, causal;
    float scale; /* 0: 1/sqrt(hd) */
} tcase;

/* Forward and backward of one shape against the reference. */
static void check_case(oz_sdpa *sd, const tcase *tc) {
    const oz_sdpa_shape sh = {tc->B, tc->T, tc->Hq, tc->Hkv, tc->hd, tc->causal, tc->scale};
    const refshape rs = {tc->B, tc->T, tc->Hq, tc->Hkv, tc->hd, tc->causal,
                         tc->scale ? (double)tc->scale : (double)(1.0f / sqrtf((float)tc->hd))};
    char label[96];
    snprintf(label, sizeof label, "B%d T%d H%d/%d hd%d%s%s", tc->B, tc->T, tc->Hq, tc->Hkv, tc->hd,
             tc->causal ? " causal" : " full", tc->scale ? " scale" : "");
    const size_t nq = (size_t)tc->B * tc->T * tc->Hq * tc->hd, nkv = (size_t)tc->B * tc->T * tc->Hkv * tc->hd;
    const size_t nl = (size_t)tc->B * tc->Hq * tc->T;
    hb16 q, k, v, dout;
    dbufs d;
    memset(&d, 0, sizeof d);
    double *rout = malloc(nq * sizeof *rout), *rlse = malloc(nl * sizeof *rlse);
    double *rdq = malloc(nq * sizeof *rdq), *rdk = malloc(nkv * sizeof *rdk), *rdv = malloc(nkv * sizeof *rdv);
    double *gout = NULL, *glse = NULL, *gdq = NULL, *gdk = NULL, *gdv = NULL;
    if (!hb16_rand(&q, nq, -2, 2) || !hb16_rand(&k, nkv, -2, 2) || !hb16_rand(&v, nkv, -1, 1) ||
        !hb16_rand(&dout, nq, -1, 1) || !rout || !rlse || !rdq || !rdk || !rdv) {
        CHECK(0, "%s: out of host memory", label);
        goto done;
    }
    oz_err err = {0};
    oz_sdpa_info info;
    oz_status st = oz_sdpa_plan(sd, &sh, &info, &err);
    CHECK(st == OZ_OK, "%s: plan: %s", label, err.msg);
    if (st != OZ_OK) goto done;
    fprintf(stderr, "  %-44s plan: fwd engine %lld ws %zu, bwd engine %lld ws %zu (cuDNN %zu)%s\n", label,
            (long long)info.fwd_engine, info.fwd_workspace, (long long)info.bwd_engine, info.bwd_workspace,
            info.cudnn_bwd_workspace, info.bwd_deterministic ? "" : " nondeterministic");
    d.ws_bytes = info.fwd_workspace > info.bwd_workspace ? info.fwd_workspace : info.bwd_workspace;
    if (!(d.q = dalloc(nq * 2)) || !(d.k = dalloc(nkv * 2)) || !(d.v = dalloc(nkv * 2)) || !(d.out = dalloc(nq * 2)) ||
        !(d.dout = dalloc(nq * 2)) || !(d.dq = dalloc(nq * 2)) || !(d.dk = dalloc(nkv * 2)) ||
        !(d.dv = dalloc(nkv * 2)) || !(d.stats = dalloc(nl * 4)) || !(d.ws = dalloc(d.ws_bytes)))
        goto done;
    if (!upload(d.q, q.bits, nq * 2) || !upload(d.k, k.bits, nkv * 2) || !upload(d.v, v.bits, nkv * 2) ||
        !upload(d.dout, dout.bits, nq * 2) || !poison(d.out, nq * 2) || !poison(d.stats, nl * 4) ||
        !poison(d.dq, nq * 2) || !poison(d.dk, nkv * 2) || !poison(d.dv, nkv * 2))
        goto done;

    st = oz_sdpa_fwd(sd, &sh, d.out, d.stats, d.q, d.k, d.v, d.ws, d.ws_bytes, &err);
    CHECK(st == OZ_OK, "%s: fwd: %s", label, err.msg);
    if (st == OZ_OK) st = oz_sdpa_bwd(sd, &sh, d.dq, d.dk, d.dv, d.dout, d.q, d.k, d.v, d.out, d.stats, d.ws,
                                      d.ws_bytes, &err);
    CHECK(st == OZ_OK, "%s: bwd: %s", label, err.msg);
    if (st != OZ_OK || !cuda_ok(cudaDeviceSynchronize(), label)) goto done;

    ref_fwd(&rs, q.val, k.val, v.val, rout, rlse);
    ref_bwd(&rs, q.val, k.val, v.val, rout, rlse, dout.val, rdq, rdk, rdv);
    gout = back_bf16(d.out, nq), glse = back_f32(d.stats, nl);
    gdq = back_bf16(d.dq, nq), gdk = back_bf16(d.dk, nkv), gdv = back_bf16(d.dv, nkv);
    expect(label, "out", gout, rout, nq, 1.5e-2, 0.9999);
    expect(label, "stats", glse, rlse, nl, 1e-3, 0.99999);
    expect(label, "dq", gdq, rdq, nq, 3e-2, 0.999);
    expect(label, "dk", gdk, rdk, nkv, 3e-2, 0.999);
    expect(label, "dv", gdv, rdv, nkv, 3e-2, 0.999);
done:
    free(gout), free(glse), free(gdq), free(gdk), free(gdv);
    free(rout), free(rlse), free(rdq), free(rdk), free(rdv);
    hb16_free(&q), hb16_free(&k), hb16_free(&v), hb16_free(&dout);
    dfree_all(&d);
}

static void test_shapes(oz_sdpa *sd) {
    static const tcase cases[] = {
        {1, 1, 4, 2, 64, 1, 0},      /* one position, GQA: our own kernels */
        {2, 1, 8, 8, 128, 1, 0},     /* one position, MHA, hd 128 */
        {1, 2, 2, 1, 64, 1, 0},      /* the smallest T cuDNN runs, MQA */
        {2, 37, 4, 2, 64, 1, 0},     /* odd T below one tile, GQA 2:1 */
        {1, 97, 5, 5, 128, 1, 0},    /* odd T, MHA, an odd head count */
        {1, 65, 3, 3, 40, 1, 0},     /* hd 40 (a multiple of 8, not a power of 2) */
        {1, 64, 2, 1, 8, 1, 0},      /* the smallest hd */
        {2, 256, 8, 8, 64, 1, 0},    /* the 60m shape */
        {1, 300, 8, 2, 128, 1, 0},   /* Llama-3 style GQA 4:1 */
        {1, 130, 6, 2, 64, 0, 0},    /* not causal */
        {1, 128, 4, 2, 64, 1, 0.3f}, /* a scale other than 1/sqrt(hd) */
        {1, 1000, 8, 2, 128, 1, 0},  /* several tiles, T not a multiple of any */
        {1, 2048, 4, 1, 128, 1, 0},  /* long, MQA */
        {1, 8192, 2, 1, 64, 1, 0},   /* the longest reference check */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_case(sd, &cases[i]);
}

/* The mask on its own: keys and values at positions >= T/2 replaced; with a causal mask the rows
 * before T/2 must not move at all (a masked score is exactly -inf, so its weight is exactly 0),
 * the rows after must (or the check proves nothing). And the causal output must be far from the
 * non-causal reference, which the non-causal graph must match. */
static void test_mask(oz_sdpa *sd) {
    const int B = 1, T = 256, Hq = 4, Hkv = 2, hd = 64, half = T / 2;
    const oz_sdpa_shape causal = {B, T, Hq, Hkv, hd, 1, 0}, full = {B, T, Hq, Hkv, hd, 0, 0};
    const size_t nq = (size_t)B * T * Hq * hd, nkv = (size_t)B * T * Hkv * hd, nl = (size_t)B * Hq * T;
    hb16 q, k, v;
    dbufs d;
    memset(&d, 0, sizeof d);
    double *o1 = NULL, *o2 = NULL, *l1 = NULL, *l2 = NULL, *of = NULL;
    double *rout = malloc(nq * sizeof *rout), *rlse = malloc(nl * sizeof *rlse);
    oz_err err = {0};
    oz_sdpa_info ic, ifu;
    if (!hb16_rand(&q, nq, -2, 2) || !hb16_rand(&k, nkv, -2, 2) || !hb16_rand(&v, nkv, -1, 1) || !rout || !rlse) {
        CHECK(0, "mask: out of host memory");
        goto done;
    }
    CHECK(oz_sdpa_plan(sd, &causal, &ic, &err) == OZ_OK && oz_sdpa_plan(sd, &full, &ifu, &err) == OZ_OK,
          "mask: plan: %s", err.msg);
    if (err.msg[0]) goto done;
    d.ws_bytes = ic.fwd_workspace > ifu.fwd_workspace ? ic.fwd_workspace : ifu.fwd_workspace;
    if (!(d.q = dalloc(nq * 2)) || !(d.k = dalloc(nkv * 2)) || !(d.v = dalloc(nkv * 2)) || !(d.out = dalloc(nq * 2)) ||
        !(d.stats = dalloc(nl * 4)) || !(d.ws = dalloc(d.ws_bytes)))
        goto done;
    if (!upload(d.q, q.bits, nq * 2) || !upload(d.k, k.bits, nkv * 2) || !upload(d.v, v.bits, nkv * 2)) goto done;
    CHECK(oz_sdpa_fwd(sd, &causal, d.out, d.stats, d.q, d.k, d.v, d.ws, d.ws_bytes, &err) == OZ_OK, "mask fwd: %s",
          err.msg);
    o1 = back_bf16(d.out, nq), l1 = back_f32(d.stats, nl);
    /* The future changed: new keys and values from position T/2 on. */
    for (size_t i = (size_t)half * Hkv * hd; i < nkv; i++) {
        k.bits[i] = oz_f32_to_bf16(frand(-2, 2));
        v.bits[i] = oz_f32_to_bf16(frand(-1, 1));
    }
    if (!upload(d.k, k.bits, nkv * 2) || !upload(d.v, v.bits, nkv * 2) || !poison(d.out, nq * 2)) goto done;
    CHECK(oz_sdpa_fwd(sd, &causal, d.out, d.stats, d.q, d.k, d.v, d.ws, d.ws_bytes, &err) == OZ_OK, "mask fwd: %s",
          err.msg);
    o2 = back_bf16(d.out, nq), l2 = back_f32(d.stats, nl);
    if (!o1 || !o2 || !l1 || !l2) goto done;
    double past = 0, future = 0; /* a NaN counts as an infinite move */
    for (size_t i = 0; i < nq; i++) {
        const double dd = isnan(o1[i] - o2[i]) ? INFINITY : fabs(o1[i] - o2[i]);
        if ((int)(i / ((size_t)Hq * hd)) < half) past = fmax(past, dd);
        else future = fmax(future, dd);
    }
    for (size_t r = 0; r < nl; r++)
        if ((int)(r % T) < half) past = fmax(past, isnan(l1[r] - l2[r]) ? INFINITY : fabs(l1[r] - l2[r]));
    /* Exactly 0 is expected (a masked weight is exactly 0); a leak would move rows by ~1e-2..1. */
    CHECK(past <= 1e-6, "mask: rows before the change moved by %.3g (the mask lets the future in)", past);
    CHECK(future > 0.05, "mask: rows after the change moved by only %.3g (the check would prove nothing)", future);
    fprintf(stderr, "  mask: rows before the changed keys moved %.3g, rows after %.3g\n", past, future);

    /* Causal against the full reference: far; the full graph against it: close. */
    for (size_t i = 0; i < nkv; i++) k.val[i] = oz_bf16_to_f32(k.bits[i]), v.val[i] = oz_bf16_to_f32(v.bits[i]);
    const refshape rfull = {B, T, Hq, Hkv, hd, 0, 1.0 / sqrt((double)hd)};
    ref_fwd(&rfull, q.val, k.val, v.val, rout, rlse);
    cmp far = compare(o2, rout, nq);
    CHECK(far.err > 0.1, "mask: the causal output is within %.3g of the non-causal reference", far.err);
    if (!poison(d.out, nq * 2)) goto done;
    CHECK(oz_sdpa_fwd(sd, &full, d.out, d.stats, d.q, d.k, d.v, d.ws, d.ws_bytes, &err) == OZ_OK, "mask fwd: %s",
          err.msg);
    of = back_bf16(d.out, nq);
    expect("mask: B1 T256 H4/2 hd64 full", "out", of, rout, nq, 1.5e-2, 0.9999);
    fprintf(stderr, "  mask: causal output vs the non-causal reference: err %.3g (must be large)\n", far.err);
done:
    free(o1), free(o2), free(l1), free(l2), free(of), free(rout), free(rlse);
    hb16_free(&q), hb16_free(&k), hb16_free(&v);
    dfree_all(&d);
}

/* The deterministic backward twice on the same inputs: the same bits. The default backward is
 * timed against it by bench/gpu_sdpa.c; here whether it repeats is only reported. */
static void repeat_bwd(oz_sdpa *sd, const char *name, int must_repeat) {
    const int B = 2, T = 1024, Hq = 8, Hkv = 2, hd = 128;
    const oz_sdpa_shape sh = {B, T, Hq, Hkv, hd, 1, 0};
    const size_t nq = (size_t)B * T * Hq * hd, nkv = (size_t)B * T * Hkv * hd, nl = (size_t)B * Hq * T;
    hb16 q, k, v, dout;
    dbufs d;
    memset(&d, 0, sizeof d);
    uint16_t *h1 = malloc((nq + 2 * nkv) * 2), *h2 = malloc((nq + 2 * nkv) * 2);
    oz_err err = {0};
    oz_sdpa_info info;
    if (!hb16_rand(&q, nq, -2, 2) || !hb16_rand(&k, nkv, -2, 2) || !hb16_rand(&v, nkv, -1, 1) ||
        !hb16_rand(&dout, nq, -1, 1) || !h1 || !h2) {
        CHECK(0, "%s: out of host memory", name);
        goto done;
    }
    CHECK(oz_sdpa_plan(sd, &sh, &info, &err) == OZ_OK, "%s: plan: %s", name, err.msg);
    if (err.msg[0]) goto done;
    d.ws_bytes = info.fwd_workspace > info.bwd_workspace ? info.fwd_workspace : info.bwd_workspace;
    if (!(d.q = dalloc(nq * 2)) || !(d.k = dalloc(nkv * 2)) || !(d.v = dalloc(nkv * 2)) || !(d.out = dalloc(nq * 2)) ||
        !(d.dout = dalloc(nq * 2)) || !(d.dq = dalloc(nq * 2)) || !(d.dk = dalloc(nkv * 2)) ||
        !(d.dv = dalloc(nkv * 2)) || !(d.stats = dalloc(nl * 4)) || !(d.ws = dalloc(d.ws_bytes)))
        goto done;
    if (!upload(d.q, q.bits, nq * 2) || !upload(d.k, k.bits, nkv * 2) || !upload(d.v, v.bits, nkv * 2) ||
        !upload(d.dout, dout.bits, nq * 2))
        goto done;
    CHECK(oz_sdpa_fwd(sd, &sh, d.out, d.stats, d.q, d.k, d.v, d.ws, d.ws_bytes, &err) == OZ_OK, "%s fwd: %s", name,
          err.msg);
    uint16_t *h[2] = {h1, h2};
    for (int rep = 0; rep < 2; rep++) {
        if (!poison(d.dq, nq * 2) || !poison(d.dk, nkv * 2) || !poison(d.dv, nkv * 2)) goto done;
        CHECK(oz_sdpa_bwd(sd, &sh, d.dq, d.dk, d.dv, d.dout, d.q, d.k, d.v, d.out, d.stats, d.ws, d.ws_bytes, &err) ==
                  OZ_OK,
              "%s bwd: %s", name, err.msg);
        if (!cuda_ok(cudaMemcpy(h[rep], d.dq, nq * 2, cudaMemcpyDeviceToHost), name) ||
            !cuda_ok(cudaMemcpy(h[rep] + nq, d.dk, nkv * 2, cudaMemcpyDeviceToHost), name) ||
            !cuda_ok(cudaMemcpy(h[rep] + nq + nkv, d.dv, nkv * 2, cudaMemcpyDeviceToHost), name))
            goto done;
    }
    size_t differ = 0;
    for (size_t i = 0; i < nq + 2 * nkv; i++) differ += h1[i] != h2[i];
    if (must_repeat)
        CHECK(differ == 0, "%s: %zu of %zu gradient elements differ between two runs", name, differ, nq + 2 * nkv);
    fprintf(stderr, "  %s backward B%d T%d H%d/%d hd%d run twice: %zu of %zu elements differ (workspace %zu bytes)\n",
            name, B, T, Hq, Hkv, hd, differ, nq + 2 * nkv, info.bwd_workspace);
done:
    free(h1), free(h2);
    hb16_free(&q), hb16_free(&k), hb16_free(&v), hb16_free(&dout);
    dfree_all(&d);
}

/* Contract violations come back as OZ_ERR_INPUT with a message, before any work is queued. */
static void test_contract(oz_sdpa *sd) {
    const oz_sdpa_shape bad[] = {
        {1, 16, 6, 4, 64, 1, 0},  /* Hkv does not divide Hq */
        {1, 16, 2, 1, 100, 1, 0}, /* hd not a multiple of 8 */
        {1, 16, 2, 1, 256, 1, 0}, /* hd above 128 */
        {1, 0, 2, 1, 64, 1, 0},   /* T = 0 */
        {1, 16, 2, 1, 64, 2, 0},  /* causal not 0/1 */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        oz_err err = {0};
        oz_sdpa_info info;
        CHECK(oz_sdpa_plan(sd, &bad[i], &info, &err) == OZ_ERR_INPUT && err.msg[0], "bad shape %zu accepted", i);
    }
    /* Too little workspace. */
    const oz_sdpa_shape sh = {1, 64, 2, 1, 64, 1, 0};
    oz_err err = {0};
    oz_sdpa_info info;
    CHECK(oz_sdpa_plan(sd, &sh, &info, &err) == OZ_OK, "contract plan: %s", err.msg);
    dbufs d;
    memset(&d, 0, sizeof d);
    const size_t nq = 64 * 2 * 64, nkv = 64 * 64;
    if ((d.q = dalloc(nq * 2)) && (d.k = dalloc(nkv * 2)) && (d.v = dalloc(nkv * 2)) && (d.out = dalloc(nq * 2)) &&
        (d.dout = dalloc(nq * 2)) && (d.dq = dalloc(nq * 2)) && (d.dk = dalloc(nkv * 2)) && (d.dv = dalloc(nkv * 2)) &&
        (d.stats = dalloc(128 * 4)) && (d.ws = dalloc(info.bwd_workspace))) {
        oz_err e2 = {0};
        CHECK(info.bwd_workspace > 0, "the backward needs workspace (its row sums at least)");
        CHECK(oz_sdpa_bwd(sd, &sh, d.dq, d.dk, d.dv, d.dout, d.q, d.k, d.v, d.out, d.stats, d.ws,
                          info.bwd_workspace - 1, &e2) == OZ_ERR_INPUT,
              "a short workspace was accepted");
        oz_err e3 = {0};
        CHECK(oz_sdpa_fwd(sd, &sh, (uint16_t *)((char *)d.out + 2), d.stats, d.q, d.k, d.v, d.ws, info.bwd_workspace,
                          &e3) == OZ_ERR_INPUT,
              "a misaligned output was accepted");
        fprintf(stderr, "  contract: %s | %s\n", e2.msg, e3.msg);
    }
    dfree_all(&d);
}

int main(void) {
    int dev = 0;
    struct cudaDeviceProp prop;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
        fprintf(stderr, "test_sdpa: no CUDA device\n");
        printf("test_sdpa: 0 passed, 1 failed\n");
        return 1;
    }
    fprintf(stderr, "test_sdpa: %s, cuDNN %zu\n", prop.name, oz_sdpa_cudnn_version());
    oz_sdpa *sd = NULL, *det = NULL;
    oz_err err = {0};
    if (oz_sdpa_create(&sd, 0, 0, &err) != OZ_OK || oz_sdpa_create(&det, 0, 1, &err) != OZ_OK) {
        fprintf(stderr, "test_sdpa: %s\n", err.msg);
        oz_sdpa_destroy(sd);
        printf("test_sdpa: 0 passed, 1 failed\n");
        return 1;
    }
    fprintf(stderr, "shapes (default backward):\n");
    test_shapes(sd);
    fprintf(stderr, "causal mask:\n");
    test_mask(sd);
    fprintf(stderr, "deterministic backward:\n");
    {
        static const tcase dcases[] = {{2, 37, 4, 2, 64, 1, 0}, {1, 300, 8, 2, 128, 1, 0}, {1, 130, 6, 2, 64, 0, 0}};
        for (size_t i = 0; i < sizeof dcases / sizeof dcases[0]; i++) check_case(det, &dcases[i]);
    }
    repeat_bwd(det, "deterministic", 1);
    repeat_bwd(sd, "default", 0);
    fprintf(stderr, "contract:\n");
    test_contract(sd);
    oz_sdpa_destroy(sd);
    oz_sdpa_destroy(det);
    return oz_test_finish("test_sdpa");
}
