/* CUDA backend tests (built with `make CUDA=1`, run on a machine with a GPU; tools/gpu_check.sh).
 * Every op against the CPU reference op on the same random inputs (GQA, odd sizes, T not a
 * multiple of any tile, head_dims that need padding); a whole model's loss and every gradient
 * against the CPU backend; training steps through the real trainer on both backends; bit-exact
 * resume on the GPU; and the planner's prediction against the arena's measured peak.
 *
 * Tolerances: fp32 on both sides with different summation orders, so results agree to ~1e-6
 * relative per op; errors are measured as max |a-b| / max(|b|) over a tensor (a norm-wise bound
 * that does not blow up on values near zero). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "harness.h"
#include "model/llama.h"
#include "numeric/quant.h"
#include "numeric/subspace.h"
#include "train/plan.h"
#include "train/trainer.h"

static oz_backend cpu, gpu;

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float frand(float lo, float hi) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (hi - lo) * (float)((double)(rng_state >> 11) / 9007199254740992.0);
}
static int irand(int n) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (int)((rng_state >> 33) % (uint64_t)n);
}

static float *hrand(size_t n, float lo, float hi) {
    float *x = malloc((n ? n : 1) * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = frand(lo, hi);
    return x;
}
static float *hcopy(const float *x, size_t n) {
    float *y = malloc((n ? n : 1) * sizeof *y);
    memcpy(y, x, n * sizeof *x);
    return y;
}

/* A device copy of host data (bytes), and back. */
static void *dev(const void *host, size_t bytes) {
    void *p = gpu.allocator.alloc(gpu.allocator.ctx, bytes);
    if (!p) {
        fprintf(stderr, "test_cuda: device allocation of %zu bytes failed\n", bytes);
        exit(1);
    }
    if (host) gpu.to_device(&gpu, p, host, bytes);
    return p;
}
static float *back(const void *d, size_t n) {
    float *h = malloc((n ? n : 1) * sizeof *h);
    gpu.to_host(&gpu, h, d, n * sizeof *h);
    return h;
}
static void dfree(void *p) { gpu.allocator.free(gpu.allocator.ctx, p); }

/* max |a - b| / max(max |b|, tiny) */
static double rel_err(const float *a, const float *b, size_t n) {
    double num = 0, den = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= num)) num = d; /* NaN counts as the largest error */
        if (fabs((double)b[i]) > den) den = fabs((double)b[i]);
    }
    return num / den;
}

/* Compares a device result with the CPU's, then frees both. */
static void expect_close(const char *what, float *d, float *h, size_t n, double tol) {
    float *g = back(d, n);
    double e = rel_err(g, h, n);
    CHECK(e <= tol, "%s: relative error %.3g > %.3g", what, e, tol);
    free(g);
}

static void gpu_ok(const char *what) {
    oz_err err = {0};
    CHECK(oz_backend_sync(&gpu, &err) == OZ_OK, "%s: %s", what, err.msg);
}

/* ------------------------------------------------------------------ ops */

static void check_gemm(int ta, int tb, int M, int N, int K, int pad, float alpha, float beta) {
    int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
    size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb, nc = (size_t)M * ldc;
    float *A = hrand(na, -1, 1), *B = hrand(nb, -1, 1), *Cc = hrand(nc, -1, 1);
    float *dA = dev(A, na * 4), *dB = dev(B, nb * 4), *dC = dev(Cc, nc * 4);
    cpu.gemm(&cpu, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, Cc, ldc);
    gpu.gemm(&gpu, ta, tb, M, N, K, alpha, dA, lda, dB, ldb, beta, dC, ldc);
    char what[96];
    snprintf(what, sizeof what, "gemm ta=%d tb=%d %dx%dx%d pad %d beta %g", ta, tb, M, N, K, pad, (double)beta);
    expect_close(what, dC, Cc, nc, 1e-5);
    dfree(dA), dfree(dB), dfree(dC);
    free(A), free(B), free(Cc);
}

static void test_gemm(void) {
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            check_gemm(ta, tb, 37, 53, 29, 0, 1.0f, 0.0f);
            check_gemm(ta, tb, 65, 7, 130, 3, 0.5f, 1.0f);
        }
    check_gemm(0, 1, 256, 384, 512, 0, 1.0f, 0.0f);
    check_gemm(0, 0, 5, 6, 0, 1, 1.0f, 0.5f); /* K == 0: C = beta C */
    check_gemm(0, 0, 5, 6, 0, 1, 1.0f, 0.0f);
    gpu_ok("gemm");
}

static void test_elementwise(void) {
    const size_t n = 1000003;
    float *x = hrand(n, -2, 2), *y = hrand(n, -2, 2);
    float *dx = dev(x, n * 4), *dy = dev(y, n * 4);
    /* The GPU contracts y + a*x into one FMA (one rounding instead of two): equal to ~1 ulp. */
    cpu.axpy(&cpu, y, -0.7f, x, n);
    gpu.axpy(&gpu, dy, -0.7f, dx, n);
    expect_close("axpy", dy, y, n, 2e-7);
    gpu.to_device(&gpu, dy, y, n * 4);
    cpu.scale(&cpu, y, 1.3f, n);
    gpu.scale(&gpu, dy, 1.3f, n);
    expect_close("scale", dy, y, n, 0);
    /* Both sum the squares in double, in different orders: equal to double rounding. */
    double sc = cpu.sumsq(&cpu, y, n), sg = gpu.sumsq(&gpu, dy, n);
    CHECK(fabs(sc - sg) <= 1e-12 * sc, "sumsq %.17g vs %.17g", sg, sc);
    CHECK(gpu.sumsq(&gpu, dy, n) == sg, "sumsq is not deterministic");
    CHECK(gpu.sumsq(&gpu, dy, 5) == cpu.sumsq(&cpu, y, 5), "sumsq of 5 values");
    cpu.fill(&cpu, y, 0.25f, 1001);
    gpu.fill(&gpu, dy, 0.25f, 1001);
    expect_close("fill", dy, y, n, 0);
    /* bf16 storage: bitwise the CPU's rounding (x holds random values; add a tie, NaN, Inf, tiny) */
    {
        x[0] = 1.00390625f, x[1] = NAN, x[2] = -INFINITY, x[3] = 1.0e-40f, x[4] = -0.0f;
        uint16_t *hb = malloc(n * 2), *gb = malloc(n * 2);
        float *fb = malloc(n * 4);
        void *db = dev(NULL, n * 2);
        gpu.to_device(&gpu, dx, x, n * 4);
        cpu.to_bf16(&cpu, hb, x, n);
        gpu.to_bf16(&gpu, (uint16_t *)db, dx, n);
        gpu.to_host(&gpu, gb, db, n * 2);
        CHECK(!memcmp(hb, gb, n * 2), "to_bf16 differs from the CPU's rounding");
        gpu.from_bf16(&gpu, dx, (const uint16_t *)db, n);
        cpu.from_bf16(&cpu, fb, hb, n);
        float *gf = back(dx, n);
        CHECK(!memcmp(gf, fb, n * 4), "from_bf16 differs from the CPU's");
        /* stochastic rounding (bf16 weights), a slice starting at element 5, bitwise the CPU's */
        gpu.to_device(&gpu, dx, x, n * 4);
        cpu.to_bf16_sr(&cpu, hb, x + 5, n - 5, 0xABCDull, 5);
        gpu.to_bf16_sr(&gpu, (uint16_t *)db, dx + 5, n - 5, 0xABCDull, 5);
        gpu.to_host(&gpu, gb, db, (n - 5) * 2);
        CHECK(!memcmp(hb, gb, (n - 5) * 2), "to_bf16_sr differs from the CPU's stochastic rounding");
        /* the strided forms: 300 rows of 333 into rows 336 apart (padding poisoned, untouched), and
         * add_2d from those padded rows back into dense ones; bitwise the CPU's */
        {
            const size_t R = 300, Cc = 333, LD = 336;
            uint16_t *h2 = malloc(R * LD * 2), *g2 = malloc(R * LD * 2);
            memset(h2, 0x5A, R * LD * 2);
            uint16_t *d2 = dev(h2, R * LD * 2);
            cpu.to_bf16_2d(&cpu, h2, LD, x, Cc, R, Cc);
            gpu.to_bf16_2d(&gpu, d2, LD, dx, Cc, R, Cc);
            gpu.to_host(&gpu, g2, d2, R * LD * 2);
            CHECK(!memcmp(h2, g2, R * LD * 2), "to_bf16_2d differs from the CPU's (or wrote the padding)");
            float *hf = malloc(R * Cc * 4), *src = malloc(R * LD * 4);
            /* its own values (x's), not frand's: later tests' inputs stay what they were */
            for (size_t i = 0; i < R * LD; i++) src[i] = x[10 + (i * 7919) % (n - 10)] * 0.5f; /* past the NaN and Inf */
            memcpy(hf, x + 10, R * Cc * 4);
            float *dd = dev(hf, R * Cc * 4), *ds = dev(src, R * LD * 4);
            cpu.add_2d(&cpu, hf, Cc, src, LD, R, Cc);
            gpu.add_2d(&gpu, dd, Cc, ds, LD, R, Cc);
            expect_close("add_2d", dd, hf, R * Cc, 0);
            /* from_bf16_2d of the padded rows back to dense, and AdamW on the padded bf16 weights
             * (no FMA contraction on the GPU, the same SR draws): bitwise the CPU's */
            cpu.from_bf16_2d(&cpu, hf, Cc, h2, LD, R, Cc);
            gpu.from_bf16_2d(&gpu, dd, Cc, d2, LD, R, Cc);
            expect_close("from_bf16_2d", dd, hf, R * Cc, 0);
            float *hg = malloc(R * Cc * 4), *hm = malloc(R * Cc * 4), *hv = malloc(R * Cc * 4);
            for (size_t i = 0; i < R * Cc; i++)
                hg[i] = src[i], hm[i] = 0.1f * src[(i + 7) % (R * LD)], hv[i] = 0.01f * fabsf(src[(i + 13) % (R * LD)]);
            float *dg = dev(hg, R * Cc * 4), *dm = dev(hm, R * Cc * 4), *dv = dev(hv, R * Cc * 4);
            /* finite weights (x's rows hold a NaN, whose payload GPU arithmetic does not keep) */
            cpu.to_bf16_2d(&cpu, h2, LD, src, LD, R, Cc);
            gpu.to_bf16_2d(&gpu, d2, LD, ds, LD, R, Cc);
            const oz_adamw_args a = {1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.19f, 0.0975f, 0.8f};
            cpu.adamw_step_bf16(&cpu, h2, LD, hg, hm, hv, R, Cc, &a, 0x5eedull);
            gpu.adamw_step_bf16(&gpu, d2, LD, dg, dm, dv, R, Cc, &a, 0x5eedull);
            gpu.to_host(&gpu, g2, d2, R * LD * 2);
            CHECK(!memcmp(h2, g2, R * LD * 2), "adamw_step_bf16 weights differ from the CPU's");
            expect_close("adamw_step_bf16 m", dm, hm, R * Cc, 0);
            expect_close("adamw_step_bf16 v", dv, hv, R * Cc, 0);
            free(hg), free(hm), free(hv);
            dfree(dg), dfree(dm), dfree(dv);
            free(h2), free(g2), free(hf), free(src);
            dfree(d2), dfree(dd), dfree(ds);
        }
        /* the embedding from a bf16 table: rows of the table just written (n - 5 >= 7 * 100 values) */
        int32_t ids[5] = {6, 0, 6, 2, 1};
        int32_t *dids = dev(ids, sizeof ids);
        float *demb = dev(NULL, 5 * 100 * 4), *cemb = malloc(5 * 100 * 4);
        cpu.embedding_fwd_bf16(&cpu, cemb, hb, ids, 5, 100);
        gpu.embedding_fwd_bf16(&gpu, demb, (const uint16_t *)db, dids, 5, 100);
        expect_close("embedding_fwd_bf16", demb, cemb, 5 * 100, 0);
        free(cemb);
        dfree(demb), dfree(dids);
        free(hb), free(gb), free(fb), free(gf);
        dfree(db);
    }
    /* swiglu, then its backward in place (dgate/dup aliasing gate/up, as the model calls it) */
    float *g = hrand(n, -6, 6), *u = hrand(n, -2, 2), *h = hrand(n, 0, 1), *dh = hrand(n, -1, 1);
    float *dg = dev(g, n * 4), *du = dev(u, n * 4), *dhh = dev(h, n * 4), *ddh = dev(dh, n * 4);
    cpu.swiglu_fwd(&cpu, h, g, u, n);
    gpu.swiglu_fwd(&gpu, dhh, dg, du, n);
    expect_close("swiglu_fwd", dhh, h, n, 2e-6);
    cpu.swiglu_bwd(&cpu, g, u, dh, g, u, n);
    gpu.swiglu_bwd(&gpu, dg, du, ddh, dg, du, n);
    expect_close("swiglu_bwd dgate", dg, g, n, 2e-6);
    expect_close("swiglu_bwd dup", du, u, n, 2e-6);
    /* AdamW with decay and a clipping scale */
    float *p = hrand(n, -1, 1), *gr = hrand(n, -1, 1), *m = hrand(n, -0.1f, 0.1f), *v = hrand(n, 0, 0.01f);
    float *dp = dev(p, n * 4), *dgr = dev(gr, n * 4), *dm = dev(m, n * 4), *dv = dev(v, n * 4);
    oz_adamw_args a = {1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1 - 0.9f * 0.9f * 0.9f, 1 - 0.95f * 0.95f * 0.95f, 0.5f};
    for (int s = 0; s < 3; s++) {
        cpu.adamw_step(&cpu, p, gr, m, v, n, &a);
        gpu.adamw_step(&gpu, dp, dgr, dm, dv, n, &a);
    }
    expect_close("adamw param", dp, p, n, 1e-6);
    expect_close("adamw m", dm, m, n, 1e-6);
    expect_close("adamw v", dv, v, n, 1e-6);
    gpu_ok("elementwise");
    void *ptrs[] = {dx, dy, dg, du, dhh, ddh, dp, dgr, dm, dv};
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) dfree(ptrs[i]);
    float *hp[] = {x, y, g, u, h, dh, p, gr, m, v};
    for (size_t i = 0; i < sizeof hp / sizeof hp[0]; i++) free(hp[i]);
}

static void test_embedding(void) {
    const int N = 3000, d = 70, V = 97;
    int32_t ids[3000];
    for (int i = 0; i < N; i++) ids[i] = i % 7 == 0 ? 5 : irand(V); /* many repeats of one id */
    float *table = hrand((size_t)V * d, -1, 1), *out = hrand((size_t)N * d, 0, 1);
    float *dtable = hrand((size_t)V * d, -1, 1), *dout = hrand((size_t)N * d, -1, 1);
    int32_t *dids = dev(ids, sizeof ids);
    float *dt = dev(table, (size_t)V * d * 4), *dO = dev(out, (size_t)N * d * 4);
    float *ddt = dev(dtable, (size_t)V * d * 4), *ddo = dev(dout, (size_t)N * d * 4);
    cpu.embedding_fwd(&cpu, out, table, ids, N, d);
    gpu.embedding_fwd(&gpu, dO, dt, dids, N, d);
    expect_close("embedding_fwd", dO, out, (size_t)N * d, 0);
    cpu.embedding_bwd(&cpu, dtable, dout, ids, N, d, V);
    gpu.embedding_bwd(&gpu, ddt, ddo, dids, N, d, V);
    /* Same summation order as the CPU (token order per row): equal bit for bit. */
    expect_close("embedding_bwd", ddt, dtable, (size_t)V * d, 0);
    gpu_ok("embedding");
    dfree(dids), dfree(dt), dfree(dO), dfree(ddt), dfree(ddo);
    free(table), free(out), free(dtable), free(dout);
}

static void check_rmsnorm(int N, int d) {
    size_t n = (size_t)N * d;
    float *x = hrand(n, -3, 3), *w = hrand((size_t)d, 0.5f, 1.5f), *out = hrand(n, 0, 1), *rstd = hrand((size_t)N, 0, 1);
    float *dout = hrand(n, -1, 1), *dx = hrand(n, -1, 1), *dw = hrand((size_t)d, -1, 1);
    float *gx = dev(x, n * 4), *gw = dev(w, (size_t)d * 4), *gout = dev(out, n * 4), *grstd = dev(rstd, (size_t)N * 4);
    float *gdout = dev(dout, n * 4), *gdx = dev(dx, n * 4), *gdw = dev(dw, (size_t)d * 4);
    cpu.rmsnorm_fwd(&cpu, out, rstd, x, w, N, d, 1e-5f);
    gpu.rmsnorm_fwd(&gpu, gout, grstd, gx, gw, N, d, 1e-5f);
    char what[64];
    snprintf(what, sizeof what, "rmsnorm_fwd %dx%d", N, d);
    expect_close(what, gout, out, n, 1e-6);
    expect_close("rmsnorm rstd", grstd, rstd, (size_t)N, 1e-6);
    cpu.rmsnorm_bwd(&cpu, dx, dw, dout, x, w, rstd, N, d);
    gpu.rmsnorm_bwd(&gpu, gdx, gdw, gdout, gx, gw, grstd, N, d);
    snprintf(what, sizeof what, "rmsnorm_bwd dx %dx%d", N, d);
    expect_close(what, gdx, dx, n, 2e-6);
    snprintf(what, sizeof what, "rmsnorm_bwd dw %dx%d", N, d);
    expect_close(what, gdw, dw, (size_t)d, 2e-6);
    void *ptrs[] = {gx, gw, gout, grstd, gdout, gdx, gdw};
    for (size_t i = 0; i < 7; i++) dfree(ptrs[i]);
    free(x), free(w), free(out), free(rstd), free(dout), free(dx), free(dw);
}

static void test_rmsnorm(void) {
    check_rmsnorm(77, 300);
    check_rmsnorm(1, 33);
    check_rmsnorm(4099, 1030); /* more rows than reduction chunks */
    gpu_ok("rmsnorm");
}

static void test_rope(void) {
    const int B = 2, T = 37, H = 3, hd = 16, half = hd / 2, maxpos = 64;
    size_t n = (size_t)B * T * H * hd;
    float *cs = malloc((size_t)maxpos * half * 4), *sn = malloc((size_t)maxpos * half * 4);
    for (int p = 0; p < maxpos; p++)
        for (int i = 0; i < half; i++) {
            double a = p * pow(10000.0, -2.0 * i / hd);
            cs[p * half + i] = (float)cos(a);
            sn[p * half + i] = (float)sin(a);
        }
    float *x = hrand(n, -1, 1), *x0 = hcopy(x, n);
    float *gx = dev(x, n * 4), *gc = dev(cs, (size_t)maxpos * half * 4), *gs = dev(sn, (size_t)maxpos * half * 4);
    cpu.rope(&cpu, x, cs, sn, B, T, H, hd, 5, 0);
    gpu.rope(&gpu, gx, gc, gs, B, T, H, hd, 5, 0);
    expect_close("rope", gx, x, n, 1e-6);
    gpu.rope(&gpu, gx, gc, gs, B, T, H, hd, 5, 1);
    expect_close("rope inverse", gx, x0, n, 1e-6);
    gpu_ok("rope");
    dfree(gx), dfree(gc), dfree(gs);
    free(cs), free(sn), free(x), free(x0);
}

static void check_attention(int B, int T, int Hq, int Hkv, int hd) {
    size_t nq = (size_t)B * T * Hq * hd, nkv = (size_t)B * T * Hkv * hd, nl = (size_t)B * Hq * T;
    float *q = hrand(nq, -2, 2), *k = hrand(nkv, -2, 2), *v = hrand(nkv, -1, 1), *dout = hrand(nq, -1, 1);
    float *out = hrand(nq, 0, 1), *lse = hrand(nl, 0, 1);
    float *dq = hrand(nq, 0, 1), *dk = hrand(nkv, 0, 1), *dv = hrand(nkv, 0, 1);
    float *gq = dev(q, nq * 4), *gk = dev(k, nkv * 4), *gv = dev(v, nkv * 4), *gdout = dev(dout, nq * 4);
    float *gout = dev(out, nq * 4), *glse = dev(lse, nl * 4);
    /* Outputs start as garbage: the ops overwrite them. */
    float *gdq = dev(dq, nq * 4), *gdk = dev(dk, nkv * 4), *gdv = dev(dv, nkv * 4);
    cpu.attention_fwd(&cpu, out, lse, q, k, v, B, T, Hq, Hkv, hd);
    gpu.attention_fwd(&gpu, gout, glse, gq, gk, gv, B, T, Hq, Hkv, hd);
    char what[96];
    snprintf(what, sizeof what, "attention_fwd B%d T%d H%d/%d hd%d", B, T, Hq, Hkv, hd);
    expect_close(what, gout, out, nq, 2e-6);
    snprintf(what, sizeof what, "attention lse B%d T%d H%d/%d hd%d", B, T, Hq, Hkv, hd);
    expect_close(what, glse, lse, nl, 1e-6);
    /* Backward from the CPU's forward results on both sides, so only the backward is compared. */
    gpu.to_device(&gpu, gout, out, nq * 4);
    gpu.to_device(&gpu, glse, lse, nl * 4);
    cpu.attention_bwd(&cpu, dq, dk, dv, dout, q, k, v, out, lse, B, T, Hq, Hkv, hd);
    gpu.attention_bwd(&gpu, gdq, gdk, gdv, gdout, gq, gk, gv, gout, glse, B, T, Hq, Hkv, hd);
    snprintf(what, sizeof what, "attention_bwd dq B%d T%d H%d/%d hd%d", B, T, Hq, Hkv, hd);
    expect_close(what, gdq, dq, nq, 1e-5);
    snprintf(what, sizeof what, "attention_bwd dk B%d T%d H%d/%d hd%d", B, T, Hq, Hkv, hd);
    if (T == 1) {
        /* One key: softmax is 1, ds = p (dout.v - dout.out) = 0 up to rounding on both sides, so
         * there is no scale to be relative to; both must be tiny. */
        float *g = back(gdk, nkv);
        double worst = 0;
        for (size_t i = 0; i < nkv; i++) worst = fmax(worst, fabs((double)g[i]) + fabs((double)dk[i]));
        CHECK(worst <= 1e-5, "%s: %.3g, expected ~0", what, worst);
        free(g);
    } else {
        expect_close(what, gdk, dk, nkv, 1e-5);
    }
    snprintf(what, sizeof what, "attention_bwd dv B%d T%d H%d/%d hd%d", B, T, Hq, Hkv, hd);
    expect_close(what, gdv, dv, nkv, 1e-5);
    gpu_ok(what);
    void *ptrs[] = {gq, gk, gv, gdout, gout, glse, gdq, gdk, gdv};
    for (size_t i = 0; i < 9; i++) dfree(ptrs[i]);
    float *hp[] = {q, k, v, dout, out, lse, dq, dk, dv};
    for (size_t i = 0; i < 9; i++) free(hp[i]);
}

static void test_attention(void) {
    check_attention(2, 37, 4, 2, 16);   /* GQA, head_dim padded to 32, T below one tile */
    check_attention(1, 130, 6, 2, 64);  /* T = 2 tiles + 2 */
    check_attention(2, 70, 2, 1, 128);  /* wide heads: two column chunks in the backward */
    check_attention(1, 1, 2, 2, 8);     /* a single position */
    check_attention(1, 97, 5, 5, 40);   /* no GQA, head_dim 40 padded to 64 */
    check_attention(2, 256, 8, 8, 64);  /* the 60m shape */
    check_attention(1, 300, 8, 2, 128); /* Llama-3 style GQA 4:1 */
}

/* Decoding attention: each sequence's query at its own length against a cache with room for cap
 * positions, CUDA against the CPU (which is attention_fwd's row, tests/test_decode.c). */
static void check_attention_decode(int B, int cap, int Hq, int Hkv, int hd) {
    size_t nq = (size_t)B * Hq * hd, nkv = (size_t)B * cap * Hkv * hd;
    float *q = hrand(nq, -2, 2), *k = hrand(nkv, -2, 2), *v = hrand(nkv, -1, 1), *out = hrand(nq, 0, 1);
    int32_t *lens = malloc((size_t)B * sizeof *lens);
    for (int b = 0; b < B; b++) lens[b] = 1 + (int)(((long)b * 7919 + 13) % cap); /* 1 .. cap */
    lens[0] = cap;
    float *gq = dev(q, nq * 4), *gk = dev(k, nkv * 4), *gv = dev(v, nkv * 4), *gout = dev(out, nq * 4);
    float *gscores = dev(NULL, (size_t)B * Hq * cap * 4);
    int32_t *glens = dev(lens, (size_t)B * sizeof *lens);
    cpu.attention_decode(&cpu, out, q, k, v, lens, NULL, B, cap, Hq, Hkv, hd);
    gpu.attention_decode(&gpu, gout, gq, gk, gv, glens, gscores, B, cap, Hq, Hkv, hd);
    char what[96];
    snprintf(what, sizeof what, "attention_decode B%d cap%d H%d/%d hd%d", B, cap, Hq, Hkv, hd);
    expect_close(what, gout, out, nq, 2e-6);
    gpu_ok(what);
    void *ptrs[] = {gq, gk, gv, gout, gscores, glens};
    for (size_t i = 0; i < 6; i++) dfree(ptrs[i]);
    free(q), free(k), free(v), free(out), free(lens);
}

static void test_attention_decode(void) {
    check_attention_decode(1, 1, 2, 2, 8);      /* one position */
    check_attention_decode(3, 150, 4, 2, 16);   /* GQA, lengths across the CPU's key blocks */
    check_attention_decode(2, 300, 9, 3, 64);   /* the 135M shape */
    check_attention_decode(32, 1000, 32, 8, 128); /* Llama-3 style, a batch of 32 */
}

static void check_ce(int N, int V, float grad_scale) {
    size_t n = (size_t)N * V;
    float *logits = hrand(n, -8, 8), *losses = hrand((size_t)N, 0, 1);
    int32_t *tg = malloc((size_t)N * 4);
    for (int i = 0; i < N; i++) tg[i] = i % 5 == 3 ? -1 : irand(V);
    float *gl = dev(logits, n * 4), *gloss = dev(losses, (size_t)N * 4);
    int32_t *gt = dev(tg, (size_t)N * 4);
    cpu.cross_entropy(&cpu, logits, losses, tg, N, V, grad_scale);
    gpu.cross_entropy(&gpu, gl, gloss, gt, N, V, grad_scale);
    char what[96];
    snprintf(what, sizeof what, "cross_entropy losses N%d V%d scale %g", N, V, (double)grad_scale);
    expect_close(what, gloss, losses, (size_t)N, 1e-6);
    snprintf(what, sizeof what, "cross_entropy grad N%d V%d scale %g", N, V, (double)grad_scale);
    expect_close(what, gl, logits, n, 2e-6);
    dfree(gl), dfree(gloss), dfree(gt);
    free(logits), free(losses), free(tg);
}

/* The two-pass loss over vocabulary blocks: row lse, then one block's gradient and losses. */
static void check_ce_block(int N, int V, int v0, int Vb) {
    size_t n = (size_t)N * V, nb = (size_t)N * Vb;
    float *logits = hrand(n, -8, 8), *lse = malloc((size_t)N * 4), *losses = hrand((size_t)N, 0, 1);
    int32_t *tg = malloc((size_t)N * 4);
    for (int i = 0; i < N; i++) tg[i] = i % 5 == 3 ? -1 : irand(V);
    tg[0] = v0; /* at least one target inside the block */
    float *gl = dev(logits, n * 4), *glse = dev(NULL, (size_t)N * 4), *gloss = dev(losses, (size_t)N * 4);
    int32_t *gt = dev(tg, (size_t)N * 4);
    cpu.logsumexp_rows(&cpu, lse, logits, N, V);
    gpu.logsumexp_rows(&gpu, glse, gl, N, V);
    char what[96];
    snprintf(what, sizeof what, "logsumexp_rows N%d V%d", N, V);
    expect_close(what, glse, lse, (size_t)N, 1e-6);
    /* the block's logits, copied out of the full rows, from the same lse on both sides */
    float *blk = malloc(nb * 4);
    for (int i = 0; i < N; i++) memcpy(blk + (size_t)i * Vb, logits + (size_t)i * V + v0, (size_t)Vb * 4);
    float *gb = dev(blk, nb * 4);
    gpu.to_device(&gpu, glse, lse, (size_t)N * 4);
    cpu.cross_entropy_block(&cpu, blk, lse, losses, tg, N, Vb, v0, 0.25f);
    gpu.cross_entropy_block(&gpu, gb, glse, gloss, gt, N, Vb, v0, 0.25f);
    snprintf(what, sizeof what, "cross_entropy_block grad N%d V%d [%d, +%d)", N, V, v0, Vb);
    expect_close(what, gb, blk, nb, 2e-6);
    snprintf(what, sizeof what, "cross_entropy_block losses N%d V%d [%d, +%d)", N, V, v0, Vb);
    expect_close(what, gloss, losses, (size_t)N, 1e-6);
    dfree(gl), dfree(glse), dfree(gloss), dfree(gt), dfree(gb);
    free(logits), free(lse), free(losses), free(tg), free(blk);
}

static void test_cross_entropy(void) {
    check_ce_block(33, 1000, 256, 300);
    check_ce_block(7, 32000, 28000, 4000);
    check_ce(33, 1000, 0.0f);
    check_ce(33, 1000, 0.5f);
    check_ce(6, 32000, 1.0f / 7);
    check_ce(3, 1, 1.0f);
    gpu_ok("cross_entropy");
}

/* ------------------------------------------------------------------ whole model */

static oz_llama_config small_config(bool tie) {
    oz_llama_config c;
    memset(&c, 0, sizeof c);
    c.vocab_size = 301;
    c.hidden_size = 96;
    c.intermediate_size = 200;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 6;
    c.num_key_value_heads = 2;
    c.head_dim = 16;
    c.max_position_embeddings = 64;
    c.rms_norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.tie_word_embeddings = tie;
    c.bos_token_id = c.eos_token_id = -1;
    return c;
}

/* Forward + backward of the same model and batch on both backends: loss and every gradient. */
/* bf16 checkpoints round the residual stream: an fp32 difference between the backends can move a
 * value to the neighbouring bf16 step, so that comparison gets looser bounds. */
static void check_model(bool tie, bool recompute, int chunks, bool bf16) {
    const int B = 2, T = 37;
    oz_llama_config c = small_config(tie);
    oz_llama_shape shape = {.batch = B, .seq = T, .with_grads = true, .recompute = recompute,
                            .bf16_checkpoints = bf16, .mlp_chunks = chunks, .head_chunks = chunks};
    const double loss_tol = bf16 ? 1e-4 : 1e-5, grad_tol = bf16 ? 2e-2 : 1e-4, logit_tol = bf16 ? 1e-2 : 1e-5;
    oz_err err = {0};
    oz_arena ac, ag;
    oz_arena_init(&ac, cpu.allocator);
    oz_arena_init(&ag, gpu.allocator);
    oz_llama *mc = NULL, *mg = NULL;
    CHECK(oz_llama_create(&mc, &c, &cpu, &ac, shape, &err) == OZ_OK, "%s", err.msg);
    CHECK(oz_llama_create(&mg, &c, &gpu, &ag, shape, &err) == OZ_OK, "%s", err.msg);
    if (!mc || !mg) return;
    const oz_param_layout *lay = oz_llama_get_layout(mc);
    float *init = malloc(lay->total * sizeof *init);
    oz_llama_init_params(&c, lay, init, 11);
    for (size_t i = 0; i < lay->total; i++) init[i] *= 10.0f; /* larger weights: a loss that is not flat */
    for (int i = 0; i < lay->n; i++)
        if (lay->params[i].is_norm)
            for (size_t j = 0; j < lay->params[i].numel; j++) init[lay->params[i].offset + j] = frand(0.8f, 1.2f);
    oz_llama_import_params(mc, init);
    oz_llama_import_params(mg, init);
    int32_t ids[2 * 37], tg[2 * 37];
    for (int i = 0; i < B * T; i++) ids[i] = irand(c.vocab_size), tg[i] = i % 9 == 4 ? -1 : irand(c.vocab_size);
    oz_llama_batch b = {ids, tg, B, T, NULL};
    double lc = 0, lg = 0;
    long nc = 0, ng = 0;
    oz_llama_zero_grads(mc);
    oz_llama_zero_grads(mg);
    CHECK(oz_llama_forward_backward(mc, &b, 1.0f / 66, &lc, &nc, &err) == OZ_OK, "%s", err.msg);
    CHECK(oz_llama_forward_backward(mg, &b, 1.0f / 66, &lg, &ng, &err) == OZ_OK, "%s", err.msg);
    gpu_ok("model forward_backward");
    char what[160];
    snprintf(what, sizeof what, "model loss (tie %d, recompute %d, chunks %d)", tie, recompute, chunks);
    CHECK(nc == ng && fabs(lc - lg) <= loss_tol * fabs(lc), "%s: %.9g vs %.9g", what, lg, lc);
    for (int i = 0; i < lay->n; i++) {
        const oz_param_info *p = &lay->params[i];
        float *g = back(oz_llama_grad(mg, i), p->numel);
        double e = rel_err(g, oz_llama_grad(mc, i), p->numel);
        CHECK(e <= grad_tol, "gradient of %s (tie %d, recompute %d, chunks %d, bf16 %d): relative error %.3g", p->name,
              tie, recompute, chunks, bf16, e);
        free(g);
    }
    /* The forward alone, with logits copied out */
    float *logc = malloc((size_t)B * T * c.vocab_size * 4), *logg = malloc((size_t)B * T * c.vocab_size * 4);
    oz_llama_batch bl = {ids, NULL, B, T, logc};
    CHECK(oz_llama_forward(mc, &bl, NULL, NULL, &err) == OZ_OK, "%s", err.msg);
    bl.logits_out = logg;
    CHECK(oz_llama_forward(mg, &bl, NULL, NULL, &err) == OZ_OK, "%s", err.msg);
    double e = rel_err(logg, logc, (size_t)B * T * c.vocab_size);
    CHECK(e <= logit_tol, "logits: relative error %.3g", e);
    free(logc), free(logg), free(init);
    oz_llama_destroy(mc);
    oz_llama_destroy(mg);
    oz_arena_destroy(&ac);
    oz_arena_destroy(&ag);
}

/* --precision bf16 on both backends (the GPU's attention is cuDNN's): loss, every gradient and the
 * logits within the bounds tests/test_model.c holds bf16 to against fp32 (the two bf16 runs differ
 * by summation orders and cuDNN's bf16 probabilities, each within those of fp32); the GPU model's
 * plan (with cuDNN's workspace allowance) equals its arena. */
static void check_model_bf16(bool tie) {
    const int B = 2, T = 37;
    oz_llama_config c = small_config(tie);
    /* untied: an ffn that is not a multiple of 8 (as 1b's 5461), so down_proj's bf16 rows and the
     * MLP's activations are padded on both backends */
    if (!tie) c.intermediate_size = 197;
    oz_llama_shape sc = {.batch = B, .seq = T, .with_grads = true, .precision = OZ_PREC_BF16}, sg = sc;
    sg.cuda = true;
    oz_err err = {0};
    oz_arena ac, ag;
    oz_arena_init(&ac, cpu.allocator);
    oz_arena_init(&ag, gpu.allocator);
    oz_llama *mc = NULL, *mg = NULL;
    CHECK(oz_llama_create(&mc, &c, &cpu, &ac, sc, &err) == OZ_OK, "%s", err.msg);
    CHECK(oz_llama_create(&mg, &c, &gpu, &ag, sg, &err) == OZ_OK, "bf16 model on the GPU: %s", err.msg);
    if (!mc || !mg) {
        oz_llama_destroy(mc);
        oz_llama_destroy(mg);
        oz_arena_destroy(&ac);
        oz_arena_destroy(&ag);
        return;
    }
    oz_llama_plan plan;
    CHECK(oz_llama_plan_memory(&c, sg, &plan, &err) == OZ_OK, "%s", err.msg);
    for (int cat = 0; cat < OZ_MEM_NCATEGORIES; cat++)
        CHECK(plan.bytes[cat] == ag.current[cat], "bf16 GPU model: planned %zu %s bytes, arena %zu", plan.bytes[cat],
              oz_mem_category_name(cat), ag.current[cat]);
    const oz_param_layout *lay = oz_llama_get_layout(mc);
    float *init = malloc(lay->total * sizeof *init);
    oz_llama_init_params(&c, lay, init, 12);
    for (size_t i = 0; i < lay->total; i++) init[i] *= 10.0f;
    for (int i = 0; i < lay->n; i++)
        if (lay->params[i].is_norm)
            for (size_t j = 0; j < lay->params[i].numel; j++) init[lay->params[i].offset + j] = frand(0.8f, 1.2f);
    oz_llama_import_params(mc, init);
    oz_llama_import_params(mg, init);
    int32_t ids[2 * 37], tg[2 * 37];
    for (int i = 0; i < B * T; i++) ids[i] = irand(c.vocab_size), tg[i] = i % 9 == 4 ? -1 : irand(c.vocab_size);
    oz_llama_batch b = {ids, tg, B, T, NULL};
    double lc = 0, lg = 0;
    long nc = 0, ng = 0;
    oz_llama_zero_grads(mc);
    oz_llama_zero_grads(mg);
    CHECK(oz_llama_forward_backward(mc, &b, 1.0f / 66, &lc, &nc, &err) == OZ_OK, "%s", err.msg);
    CHECK(oz_llama_forward_backward(mg, &b, 1.0f / 66, &lg, &ng, &err) == OZ_OK, "%s", err.msg);
    gpu_ok("bf16 model forward_backward");
    CHECK(nc == ng && fabs(lc - lg) <= 2e-3 * fabs(lc), "bf16 model loss (tie %d): %.9g vs %.9g", tie, lg, lc);
    double worst = 0;
    for (int i = 0; i < lay->n; i++) {
        const oz_param_info *p = &lay->params[i];
        float *g = back(oz_llama_grad(mg, i), p->numel);
        double e = rel_err(g, oz_llama_grad(mc, i), p->numel);
        CHECK(e <= 8e-2, "bf16 gradient of %s (tie %d): relative error %.3g", p->name, tie, e);
        if (e > worst) worst = e;
        free(g);
    }
    float *logc = malloc((size_t)B * T * c.vocab_size * 4), *logg = malloc((size_t)B * T * c.vocab_size * 4);
    oz_llama_batch bl = {ids, NULL, B, T, logc};
    CHECK(oz_llama_forward(mc, &bl, NULL, NULL, &err) == OZ_OK, "%s", err.msg);
    bl.logits_out = logg;
    CHECK(oz_llama_forward(mg, &bl, NULL, NULL, &err) == OZ_OK, "%s", err.msg);
    gpu_ok("bf16 model forward");
    double e = rel_err(logg, logc, (size_t)B * T * c.vocab_size);
    CHECK(e <= 3e-2, "bf16 logits: relative error %.3g", e);
    printf("  bf16 model (tie %d): loss %.6f vs %.6f on the CPU, worst gradient %.2e, logits %.2e\n", tie, lg, lc,
           worst, e);
    free(logc), free(logg), free(init);
    oz_llama_destroy(mc);
    oz_llama_destroy(mg);
    oz_arena_destroy(&ac);
    oz_arena_destroy(&ag);
}

static void test_model(void) {
    check_model(false, false, 0, false);
    check_model(true, false, 0, false);
    check_model(false, true, 3, false);
    check_model(false, true, 3, true);
    check_model_bf16(false);
    check_model_bf16(true);
}

/* ------------------------------------------------------------------ quantization and subspace ops */

/* Device bytes equal to host bytes. */
static bool same_bytes(const void *d, const void *h, size_t bytes) {
    void *g = malloc(bytes ? bytes : 1);
    gpu.to_host(&gpu, g, d, bytes);
    bool same = memcmp(g, h, bytes) == 0;
    free(g);
    return same;
}

/* Every quantization op gives the CPU's bytes for the same inputs: codes, scales, zero points,
 * the 8-bit Adam step's parameters and moments, SR codes (same streams). n spans several grid
 * passes and ends in a short block; one block is all zeros. */
static void check_quant(size_t n) {
    const size_t nb = oz_q8_blocks(n), ng = oz_qw_groups(n);
    char what[64];
    float *x = hrand(n, -3, 3), *w = malloc(n * 4);
    for (size_t i = 256; i < 512 && i < n; i++) x[i] = 0.0f;
    uint8_t *c = malloc(n), *z = malloc(ng);
    float *a = malloc(nb * 4), *s = malloc(ng * 4);
    float *dx = dev(x, n * 4), *dw = dev(NULL, n * 4), *da = dev(NULL, nb * 4), *ds = dev(NULL, ng * 4);
    uint8_t *dc = dev(NULL, n), *dz = dev(NULL, ng);
    for (int map = 0; map < 2; map++) {
        if (map) {
            for (size_t i = 0; i < n; i++) x[i] = fabsf(x[i]);
            gpu.to_device(&gpu, dx, x, n * 4);
        }
        cpu.q8_quantize(&cpu, x, n, map, c, a);
        gpu.q8_quantize(&gpu, dx, n, map, dc, da);
        snprintf(what, sizeof what, "q8_quantize map %d n %zu", map, n);
        CHECK(same_bytes(dc, c, n) && same_bytes(da, a, nb * 4), "%s", what);
        cpu.q8_dequantize(&cpu, c, a, n, map, w);
        gpu.q8_dequantize(&gpu, dc, da, n, map, dw);
        CHECK(same_bytes(dw, w, n * 4), "q8_dequantize map %d n %zu", map, n);
        cpu.q8_zero(&cpu, c, a, n, map);
        gpu.q8_zero(&gpu, dc, da, n, map);
        CHECK(same_bytes(dc, c, n) && same_bytes(da, a, nb * 4), "q8_zero map %d n %zu", map, n);
    }
    /* Three fused 8-bit Adam steps from the zero state, with weight decay and a gradient scale. */
    float *p = hrand(n, -1, 1), *g = hrand(n, -0.1f, 0.1f);
    uint8_t *mq = malloc(n), *vq = malloc(n);
    float *ma = malloc(nb * 4), *va = malloc(nb * 4);
    float *dp = dev(p, n * 4), *dg = dev(g, n * 4), *dma = dev(NULL, nb * 4), *dva = dev(NULL, nb * 4);
    uint8_t *dmq = dev(NULL, n), *dvq = dev(NULL, n);
    cpu.q8_zero(&cpu, mq, ma, n, OZ_Q8_MAP_SIGNED), cpu.q8_zero(&cpu, vq, va, n, OZ_Q8_MAP_UNSIGNED);
    gpu.q8_zero(&gpu, dmq, dma, n, OZ_Q8_MAP_SIGNED), gpu.q8_zero(&gpu, dvq, dva, n, OZ_Q8_MAP_UNSIGNED);
    for (int t = 1; t <= 3; t++) {
        oz_adamw_args args = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f,
                              .bias_correction1 = (float)(1 - pow(0.9, t)), .bias_correction2 = (float)(1 - pow(0.95, t)),
                              .grad_scale = 0.7f};
        cpu.adam8bit_step(&cpu, p, g, mq, ma, vq, va, n, &args);
        gpu.adam8bit_step(&gpu, dp, dg, dmq, dma, dvq, dva, n, &args);
    }
    CHECK(same_bytes(dp, p, n * 4) && same_bytes(dmq, mq, n) && same_bytes(dvq, vq, n) && same_bytes(dma, ma, nb * 4) &&
              same_bytes(dva, va, nb * 4),
          "adam8bit_step (3 steps) n %zu", n);
    /* i8: RTN, dequantize, SR update (a slice numbering its groups from 5); i4; square. */
    for (size_t i = 0; i < n; i++) x[i] = frand(-2, 2) + (i % 1024 < 256 ? 3.0f : 0.0f); /* single-signed groups too */
    gpu.to_device(&gpu, dx, x, n * 4);
    cpu.i8_quantize(&cpu, x, n, c, s, z);
    gpu.i8_quantize(&gpu, dx, n, dc, ds, dz);
    CHECK(same_bytes(dc, c, n) && same_bytes(ds, s, ng * 4) && same_bytes(dz, z, ng), "i8_quantize n %zu", n);
    cpu.i8_dequantize(&cpu, c, s, z, n, w);
    gpu.i8_dequantize(&gpu, dc, ds, dz, n, dw);
    CHECK(same_bytes(dw, w, n * 4), "i8_dequantize n %zu", n);
    for (int k = 0; k < 2; k++) {
        cpu.i8_update_sr(&cpu, c, s, z, n, g, 0.999f, 0.5f, 1234, (uint64_t)(7 + k), 5);
        gpu.i8_update_sr(&gpu, dc, ds, dz, n, dg, 0.999f, 0.5f, 1234, (uint64_t)(7 + k), 5);
    }
    CHECK(same_bytes(dc, c, n) && same_bytes(ds, s, ng * 4) && same_bytes(dz, z, ng), "i8_update_sr (2 updates) n %zu", n);
    cpu.i4_quantize(&cpu, x, n, c, s, z);
    gpu.i4_quantize(&gpu, dx, n, dc, ds, dz);
    CHECK(same_bytes(dc, c, (n + 1) / 2) && same_bytes(ds, s, ng * 4) && same_bytes(dz, z, ng), "i4_quantize n %zu", n);
    cpu.i4_dequantize(&cpu, c, s, z, n, w);
    gpu.i4_dequantize(&gpu, dc, ds, dz, n, dw);
    CHECK(same_bytes(dw, w, n * 4), "i4_dequantize n %zu", n);
    cpu.square(&cpu, w, x, n);
    gpu.square(&gpu, dw, dx, n);
    CHECK(same_bytes(dw, w, n * 4), "square n %zu", n);
    gpu_ok("quantization ops");
    dfree(dx), dfree(dw), dfree(da), dfree(ds), dfree(dc), dfree(dz), dfree(dp), dfree(dg), dfree(dma), dfree(dva);
    dfree(dmq), dfree(dvq);
    free(x), free(w), free(c), free(z), free(a), free(s), free(p), free(g), free(mq), free(vq), free(ma), free(va);
}

static void test_quant_ops(void) {
    check_quant(5077);
    check_quant(1200001); /* odd: an i4 byte with one code */
}

/* G (m, n) = A B + noise with A (m, r), B (r, n): a top-r subspace far above the rest (singular
 * value gap ~1000x), so both backends must find the same one; GPU basis vs CPU basis by largest
 * principal angle, orthonormality, and, for the exact method, the vectors themselves (same signs). */
static void check_subspace(int m, int n, int r, int method, bool vectors) {
    float *A = hrand((size_t)m * r, -1, 1), *B = hrand((size_t)r * n, -1, 1), *G = hrand((size_t)m * n, -1e-3f, 1e-3f);
    cpu.gemm(&cpu, 0, 0, m, n, r, 1.0f, A, r, B, n, 1.0f, G, n);
    float *dG = dev(G, (size_t)m * n * 4);
    size_t wsb = oz_backend_subspace_workspace_bytes(&gpu, m, n, r, method);
    void *ws = dev(NULL, wsb);
    for (int side = 0; side < 2; side++) {
        int dim = side ? n : m;
        float *hc = malloc((size_t)dim * r * 4), *dgb = dev(NULL, (size_t)dim * r * 4);
        oz_rng r1, r2;
        oz_rng_seed(&r1, 99);
        oz_rng_seed(&r2, 99);
        oz_err err = {0};
        CHECK(cpu.subspace(&cpu, G, m, n, r, side, method, &r1, NULL, hc, &err) == OZ_OK, "cpu: %s", err.msg);
        CHECK(gpu.subspace(&gpu, dG, m, n, r, side, method, &r2, ws, dgb, &err) == OZ_OK, "cuda subspace (%d, %d) r %d "
              "side %d method %d: %s", m, n, r, side, method, err.msg);
        CHECK(memcmp(&r1, &r2, sizeof r1) == 0, "the GPU drew a different number of normals");
        float *hg = back(dgb, (size_t)dim * r);
        int layout = side ? OZ_SUBSPACE_ROWS : OZ_SUBSPACE_COLUMNS;
        double ang = oz_subspace_principal_angles_max(hg, hc, dim, r, layout);
        double orth = oz_subspace_orthonormality_error(hg, dim, r, layout);
        double diff = 0;
        for (size_t i = 0; i < (size_t)dim * r; i++) diff = fmax(diff, fabs((double)hg[i] - hc[i]));
        fprintf(stderr, "  subspace (%d, %d) r %d side %d %s: angle %.2e, orthonormality %.2e, max |gpu - cpu| %.2e\n",
                m, n, r, side, method ? "randomized" : "exact", ang, orth, diff);
        CHECK(ang < 1e-3, "principal angle %.3g", ang);
        CHECK(orth < 1e-5, "orthonormality error %.3g", orth);
        /* Vectors are only defined where singular values are apart (not in the full-rank case). */
        if (vectors) CHECK(diff < 1e-3, "signs or vectors differ: %.3g", diff);
        free(hc), free(hg), dfree(dgb);
    }
    dfree(dG), dfree(ws);
    free(A), free(B), free(G);
}

/* The factored range finder (G = dY^T X from dY (rows, m) and X (rows, n) with padded leading
 * dimensions, G never formed) on the GPU against the CPU's, on factors whose G has a top-r
 * subspace far above the rest: dY = U diag(s) A^T, X = U B^T plus noise (U rows x r). The workspace
 * must hold the (rows, l) intermediate (oz_backend_subspace_factored_workspace_bytes). */
static void check_subspace_factored(int m, int n, int rows, int r) {
    const int ldy = m + 3, ldx = n + 5;
    float *U = hrand((size_t)rows * r, -1, 1), *A = hrand((size_t)r * m, -1, 1), *B = hrand((size_t)r * n, -1, 1);
    for (int c = 0; c < r; c++)
        for (int i = 0; i < m; i++) A[(size_t)c * m + i] *= 10.0f - 8.0f * c / r; /* distinct singular values */
    float *dy = hrand((size_t)rows * ldy, -1e-3f, 1e-3f), *x = hrand((size_t)rows * ldx, -1e-3f, 1e-3f);
    cpu.gemm(&cpu, 0, 0, rows, m, r, 1.0f, U, r, A, m, 1.0f, dy, ldy);
    cpu.gemm(&cpu, 0, 0, rows, n, r, 1.0f, U, r, B, n, 1.0f, x, ldx);
    float *ddy = dev(dy, (size_t)rows * ldy * 4), *dx = dev(x, (size_t)rows * ldx * 4);
    size_t wsb = oz_backend_subspace_factored_workspace_bytes(&gpu, m, n, r, rows);
    CHECK(wsb > oz_backend_subspace_workspace_bytes(&gpu, m, n, r, OZ_SUBSPACE_RANDOMIZED),
          "the factored workspace holds no intermediate");
    void *ws = dev(NULL, wsb);
    for (int side = 0; side < 2; side++) {
        int dim = side ? n : m, k = m < n ? m : n, rank = r < k ? r : k;
        float *hc = malloc((size_t)dim * rank * 4), *dgb = dev(NULL, (size_t)dim * rank * 4);
        oz_rng r1, r2;
        oz_rng_seed(&r1, 7);
        oz_rng_seed(&r2, 7);
        oz_err err = {0};
        CHECK(cpu.subspace_factored(&cpu, dy, ldy, x, ldx, rows, m, n, r, side, &r1, NULL, hc, &err) == OZ_OK, "cpu: %s",
              err.msg);
        CHECK(gpu.subspace_factored(&gpu, ddy, ldy, dx, ldx, rows, m, n, r, side, &r2, ws, dgb, &err) == OZ_OK,
              "cuda factored subspace (%d, %d) over %d rows r %d side %d: %s", m, n, rows, r, side, err.msg);
        CHECK(memcmp(&r1, &r2, sizeof r1) == 0, "the GPU drew a different number of normals");
        float *hg = back(dgb, (size_t)dim * rank);
        int layout = side ? OZ_SUBSPACE_ROWS : OZ_SUBSPACE_COLUMNS;
        double ang = oz_subspace_principal_angles_max(hg, hc, dim, rank, layout);
        double orth = oz_subspace_orthonormality_error(hg, dim, rank, layout);
        double diff = 0;
        for (size_t i = 0; i < (size_t)dim * rank; i++) diff = fmax(diff, fabs((double)hg[i] - hc[i]));
        fprintf(stderr, "  factored subspace (%d, %d) over %d rows r %d side %d: angle %.2e, orthonormality %.2e, "
                "max |gpu - cpu| %.2e\n", m, n, rows, r, side, ang, orth, diff);
        CHECK(ang < 1e-3, "principal angle %.3g", ang);
        CHECK(orth < 1e-5, "orthonormality error %.3g", orth);
        CHECK(diff < 1e-3, "signs or vectors differ: %.3g", diff);
        free(hc), free(hg), dfree(dgb);
    }
    /* A non-finite factor entry is an OZ_ERR_NUMERIC, as for a materialized gradient. */
    x[ldx + 2] = NAN;
    float *dbad = dev(x, (size_t)rows * ldx * 4), *db = dev(NULL, (size_t)m * r * 4);
    oz_rng rng;
    oz_rng_seed(&rng, 1);
    oz_err err = {0};
    CHECK(gpu.subspace_factored(&gpu, ddy, ldy, dbad, ldx, rows, m, n, r, 0, &rng, ws, db, &err) == OZ_ERR_NUMERIC &&
              strstr(err.msg, "non-finite"),
          "NaN factor: %s", err.msg);
    dfree(ddy), dfree(dx), dfree(dbad), dfree(db), dfree(ws);
    free(U), free(A), free(B), free(dy), free(x);
}

static void test_subspace(void) {
    check_subspace_factored(300, 200, 160, 8);   /* tall */
    check_subspace_factored(96, 700, 512, 16);   /* wide, more rows than either side */
    check_subspace_factored(2048, 512, 1024, 64); /* cuSOLVER's requests against the allowance */
    for (int method = 0; method < 2; method++) {
        check_subspace(300, 200, 8, method, true);  /* tall */
        check_subspace(96, 700, 16, method, true);  /* wide */
        check_subspace(40, 30, 30, method, false);  /* full rank, no oversampling room */
    }
    /* Larger shapes: cuSOLVER's workspace requests against the planned allowance. */
    check_subspace(4096, 1024, 256, OZ_SUBSPACE_RANDOMIZED, false);
    check_subspace(1024, 2752, 128, OZ_SUBSPACE_RANDOMIZED, false);
    check_subspace(2048, 512, 64, OZ_SUBSPACE_EXACT, false);
    check_subspace(1024, 1536, 64, OZ_SUBSPACE_EXACT, false);
    /* A non-finite gradient is an OZ_ERR_NUMERIC with one line, not a solver failure. */
    float *G = hrand(64 * 48, -1, 1);
    G[100] = NAN;
    float *dG = dev(G, 64 * 48 * 4), *db = dev(NULL, 64 * 4 * 4);
    void *ws = dev(NULL, oz_backend_subspace_workspace_bytes(&gpu, 64, 48, 4, OZ_SUBSPACE_RANDOMIZED));
    oz_rng rng;
    oz_rng_seed(&rng, 1);
    oz_err err = {0};
    CHECK(gpu.subspace(&gpu, dG, 64, 48, 4, 0, OZ_SUBSPACE_RANDOMIZED, &rng, ws, db, &err) == OZ_ERR_NUMERIC &&
              strstr(err.msg, "non-finite"),
          "NaN gradient: %s", err.msg);
    gpu_ok("subspace");
    dfree(dG), dfree(db), dfree(ws);
    free(G);
}

/* ------------------------------------------------------------------ training */

static void train_opts(oz_train_opts *o, const char *device, const char *dir, int steps) {
    oz_train_opts_default(o);
    snprintf(o->data, sizeof o->data, "random:258");
    snprintf(o->model, sizeof o->model, "demo");
    snprintf(o->out, sizeof o->out, "%s", dir);
    snprintf(o->device, sizeof o->device, "%s", device);
    o->steps = steps;
    o->batch = 4;
    o->seq = 64;
    o->warmup = 1;
    o->eval_every = steps;
    o->eval_batches = 2;
    o->threads = 2;
    /* fp32 on both devices (auto would pick bf16 on cuda): this compares the two backends' fp32 */
    snprintf(o->precision, sizeof o->precision, "fp32");
}

static bool same_file(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    bool same = fa && fb;
    while (same) {
        int x = fgetc(fa), y = fgetc(fb);
        if (x != y) same = false;
        if (x == EOF || y == EOF) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return same;
}

static void test_training(void) {
    char dc[] = "/tmp/ounce-gpu-cpu-XXXXXX", dg[] = "/tmp/ounce-gpu-cuda-XXXXXX";
    CHECK(mkdtemp(dc) && mkdtemp(dg), "mkdtemp");
    oz_train_opts o;
    oz_train_result rc, rg;
    oz_err err = {0};
    train_opts(&o, "cpu", dc, 8);
    CHECK(oz_train(&o, NULL, NULL, &rc, &err) == OZ_OK, "cpu: %s", err.msg);
    train_opts(&o, "cuda", dg, 8);
    o.save_every = 4;
    CHECK(oz_train(&o, NULL, NULL, &rg, &err) == OZ_OK, "cuda: %s", err.msg);
    fprintf(stderr, "  8 steps of demo: train loss cpu %.7f cuda %.7f, val loss cpu %.7f cuda %.7f\n", rc.train_loss,
            rg.train_loss, rc.val_loss, rg.val_loss);
    CHECK(fabs(rc.train_loss - rg.train_loss) <= 2e-5 * rc.train_loss, "train loss cuda %.9g vs cpu %.9g",
          rg.train_loss, rc.train_loss);
    CHECK(fabs(rc.val_loss - rg.val_loss) <= 2e-5 * rc.val_loss, "val loss cuda %.9g vs cpu %.9g", rg.val_loss,
          rc.val_loss);
    /* Planned == measured on the GPU too (arena peak, the CUDA workspace included). */
    oz_train_plan plan;
    oz_llama_config cfg;
    oz_llama_preset("demo", &cfg);
    cfg.vocab_size = 258;
    CHECK(oz_train_plan_memory(&cfg, &o, &plan, &err) == OZ_OK, "%s", err.msg);
    for (int k = 0; k < OZ_MEM_NCATEGORIES; k++)
        CHECK(plan.bytes[k] == rg.peak_bytes[k], "%s: planned %zu, measured %zu", oz_mem_category_name(k),
              plan.bytes[k], rg.peak_bytes[k]);
    CHECK(plan.total == rg.peak_total, "total: planned %zu, measured %zu", plan.total, rg.peak_total);
    /* Resume from step 4 on the GPU: the same final weights, bit for bit (no atomics anywhere). */
    char path[600], keep[600], step[600];
    snprintf(path, sizeof path, "%s/model.safetensors", dg);
    snprintf(keep, sizeof keep, "%s/final-uninterrupted.safetensors", dg);
    CHECK(rename(path, keep) == 0, "rename %s", path);
    snprintf(step, sizeof step, "%s/step-4", dg);
    CHECK(oz_train(NULL, step, NULL, &rg, &err) == OZ_OK, "resume: %s", err.msg);
    CHECK(same_file(path, keep), "resumed run's weights differ from the uninterrupted run's");
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", dc, dg);
    CHECK(system(cmd) == 0, "cleanup");
}

static void test_errors(void) {
    oz_backend be;
    oz_err err = {0};
    CHECK(oz_backend_open(&be, "cuda:4096", 0, &err) == OZ_ERR_INPUT, "cuda:4096 opened (%s)", err.msg);
    oz_err_clear(&err);
    CHECK(oz_backend_open(&be, "tpu", 0, &err) == OZ_ERR_INPUT, "tpu accepted");
    /* An op the kernels were not built for: reported by sync with a message, not a crash. */
    oz_err_clear(&err);
    CHECK(oz_backend_open(&be, "cuda", 0, &err) == OZ_OK, "%s", err.msg);
    be.attention_fwd(&be, NULL, NULL, NULL, NULL, NULL, 1, 4, 1, 1, 256);
    oz_err_clear(&err);
    CHECK(be.sync(&be, &err) != OZ_OK && strstr(err.msg, "head_dim 256"), "unsupported head_dim not reported (%s)",
          err.msg);
    be.destroy(&be);
    /* The GaLore family runs on cuda now (tools/gpu_optim_check.sh compares it with the CPU). */
    char dir[] = "/tmp/ounce-gpu-galore-XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    oz_train_opts o;
    train_opts(&o, "cuda", dir, 2);
    snprintf(o.optim, sizeof o.optim, "galore");
    oz_train_result r;
    oz_err_clear(&err);
    CHECK(oz_train(&o, NULL, NULL, &r, &err) == OZ_OK, "galore on cuda: %s", err.msg);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "cleanup");
}

int main(void) {
    oz_err err = {0};
    if (oz_backend_cpu_create(&cpu, 0, &err) != OZ_OK || oz_backend_open(&gpu, "cuda", 0, &err) != OZ_OK) {
        fprintf(stderr, "test_cuda: %s\n", err.msg);
        printf("test_cuda: 0 passed, 1 failed\n");
        return 1;
    }
    RUN(test_gemm);
    RUN(test_elementwise);
    RUN(test_embedding);
    RUN(test_rmsnorm);
    RUN(test_rope);
    RUN(test_attention);
    RUN(test_attention_decode);
    RUN(test_cross_entropy);
    RUN(test_model);
    RUN(test_quant_ops);
    RUN(test_subspace);
    RUN(test_training);
    RUN(test_errors);
    gpu.destroy(&gpu);
    cpu.destroy(&cpu);
    return oz_test_finish("test_cuda");
}
