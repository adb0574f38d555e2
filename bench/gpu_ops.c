/* Times each CUDA op at one preset's training shapes (default 60m, batch 64 x seq 256) and prints
 * one JSON line per op: milliseconds per call and the FLOP/s or bytes/s it reaches, plus the time
 * one training step spends in it (calls per step x time). Tells where a step's time goes.
 * usage: build-cuda/bench/gpu_ops [PRESET] [BATCH] [SEQ]   (built with make CUDA=1) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"
#include "model/llama.h"

static oz_backend be;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *dalloc(size_t bytes) {
    void *p = be.allocator.alloc(be.allocator.ctx, bytes);
    if (!p) {
        fprintf(stderr, "gpu_ops: out of device memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

/* Median-free and simple: warm up once, then the mean of `reps` calls between two syncs. */
#define TIME(reps, call)                                 \
    ({                                                   \
        oz_err e_ = {0};                                 \
        call;                                            \
        oz_backend_sync(&be, &e_);                       \
        double t0_ = now();                              \
        for (int r_ = 0; r_ < (reps); r_++) call;        \
        if (oz_backend_sync(&be, &e_) != OZ_OK) {        \
            fprintf(stderr, "gpu_ops: %s\n", e_.msg);    \
            exit(1);                                     \
        }                                                \
        (now() - t0_) / (reps) * 1e3;                    \
    })

static void report(const char *op, double ms, double work, const char *unit, double per_step) {
    printf("{\"op\":\"%s\",\"ms\":%.4f,\"%s\":%.1f,\"calls_per_step\":%.0f,\"ms_per_step\":%.2f}\n", op, ms, unit,
           work / (ms * 1e-3) / (unit[0] == 'T' ? 1e12 : 1e9), per_step, ms * per_step);
}

static void gemm_case(const char *name, int ta, int tb, int M, int N, int K, double per_step) {
    float *A = dalloc((size_t)M * K * 4), *B = dalloc((size_t)K * N * 4), *C = dalloc((size_t)M * N * 4);
    int lda = ta ? M : K, ldb = tb ? K : N;
    double ms = TIME(5, be.gemm(&be, ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, N));
    report(name, ms, 2.0 * M * N * K, "TFLOP_s", per_step);
    be.allocator.free(be.allocator.ctx, A);
    be.allocator.free(be.allocator.ctx, B);
    be.allocator.free(be.allocator.ctx, C);
}

int main(int argc, char **argv) {
    const char *preset = argc > 1 ? argv[1] : "60m";
    int Bt = argc > 2 ? atoi(argv[2]) : 64, T = argc > 3 ? atoi(argv[3]) : 256;
    oz_llama_config c;
    if (!oz_llama_preset(preset, &c)) return 2;
    c.vocab_size = 32000;
    oz_err err = {0};
    if (oz_backend_open(&be, "cuda", 0, &err) != OZ_OK) {
        fprintf(stderr, "gpu_ops: %s\n", err.msg);
        return 1;
    }
    const int N = Bt * T, d = c.hidden_size, F = c.intermediate_size, V = c.vocab_size, L = c.num_hidden_layers;
    const int Hq = c.num_attention_heads, Hkv = c.num_key_value_heads, hd = c.head_dim;
    const int qd = Hq * hd, kvd = Hkv * hd;
    for (int tf32 = 0; tf32 < 2; tf32++) {
        oz_backend_cuda_set_tf32(&be, tf32, &err);
        char nm[64];
        /* y = x W^T (forward), dx = dy W (backward), dW += dy^T x (backward) */
        snprintf(nm, sizeof nm, "gemm_fwd_mlp%s", tf32 ? "_tf32" : "");
        gemm_case(nm, 0, 1, N, F, d, 2.0 * L);
        snprintf(nm, sizeof nm, "gemm_dx_mlp%s", tf32 ? "_tf32" : "");
        gemm_case(nm, 0, 0, N, d, F, 2.0 * L);
        snprintf(nm, sizeof nm, "gemm_dw_mlp%s", tf32 ? "_tf32" : "");
        gemm_case(nm, 1, 0, F, d, N, 2.0 * L);
        snprintf(nm, sizeof nm, "gemm_fwd_head%s", tf32 ? "_tf32" : "");
        gemm_case(nm, 0, 1, N, V, d, 1);
        snprintf(nm, sizeof nm, "gemm_dw_head%s", tf32 ? "_tf32" : "");
        gemm_case(nm, 1, 0, V, d, N, 1);
        snprintf(nm, sizeof nm, "gemm_fwd_q%s", tf32 ? "_tf32" : "");
        gemm_case(nm, 0, 1, N, qd, d, 2.0 * L);
    }
    oz_backend_cuda_set_tf32(&be, 0, &err);
    size_t nq = (size_t)N * qd, nkv = (size_t)N * kvd;
    float *q = dalloc(nq * 4), *k = dalloc(nkv * 4), *v = dalloc(nkv * 4), *o = dalloc(nq * 4), *lse = dalloc((size_t)N * Hq * 4);
    float *dq = dalloc(nq * 4), *dk = dalloc(nkv * 4), *dv = dalloc(nkv * 4), *dout = dalloc(nq * 4);
    be.fill(&be, q, 0.01f, nq);
    be.fill(&be, k, 0.02f, nkv);
    be.fill(&be, v, 0.03f, nkv);
    be.fill(&be, dout, 0.01f, nq);
    /* causal: half the T x T scores; fwd 2 GEMM-like products, bwd 5 (dq pass recomputes 2) */
    double att = 2.0 * Bt * Hq * (double)T * T / 2 * hd;
    double ms = TIME(5, be.attention_fwd(&be, o, lse, q, k, v, Bt, T, Hq, Hkv, hd));
    report("attention_fwd", ms, 2 * att, "TFLOP_s", L);
    ms = TIME(3, be.attention_bwd(&be, dq, dk, dv, dout, q, k, v, o, lse, Bt, T, Hq, Hkv, hd));
    report("attention_bwd", ms, 4 * att, "TFLOP_s", L);
    float *logits = dalloc((size_t)N * V * 4), *losses = dalloc((size_t)N * 4);
    int32_t *tg = dalloc((size_t)N * 4);
    be.fill(&be, logits, 0.0f, (size_t)N * V);
    be.fill(&be, (float *)tg, 0.0f, (size_t)N); /* bit pattern 0: target id 0 */
    ms = TIME(5, be.cross_entropy(&be, logits, losses, tg, N, V, 1.0f));
    report("cross_entropy", ms, 2.0 * N * V * 4, "GB_s", 1);
    float *table = dalloc((size_t)V * d * 4), *x = dalloc((size_t)N * F * 4), *y = dalloc((size_t)N * F * 4);
    float *w = dalloc((size_t)F * 4), *r = dalloc((size_t)N * 4);
    /* worst case first (every token the same id: one warp adds every row), then uniform ids */
    ms = TIME(3, be.embedding_bwd(&be, table, x, tg, N, d, V));
    report("embedding_bwd_one_id", ms, (double)N * d * 8, "GB_s", 1);
    int32_t *hid = malloc((size_t)N * sizeof *hid);
    for (int i = 0; i < N; i++) hid[i] = (int32_t)(((uint64_t)i * 2654435761u) % (uint64_t)V);
    be.to_device(&be, tg, hid, (size_t)N * sizeof *hid);
    free(hid);
    ms = TIME(3, be.embedding_bwd(&be, table, x, tg, N, d, V));
    report("embedding_bwd", ms, (double)N * d * 8, "GB_s", 1);
    ms = TIME(5, be.rmsnorm_fwd(&be, y, r, x, w, N, d, 1e-5f));
    report("rmsnorm_fwd", ms, (double)N * d * 8, "GB_s", 2.0 * L + 1);
    ms = TIME(5, be.rmsnorm_bwd(&be, y, w, x, x, w, r, N, d));
    report("rmsnorm_bwd", ms, (double)N * d * 16, "GB_s", 2.0 * L + 1);
    ms = TIME(5, be.swiglu_fwd(&be, y, x, x, (size_t)N * F));
    report("swiglu_fwd", ms, (double)N * F * 12, "GB_s", L);
    ms = TIME(5, be.swiglu_bwd(&be, x, y, x, x, y, (size_t)N * F));
    report("swiglu_bwd", ms, (double)N * F * 20, "GB_s", L);
    ms = TIME(5, be.rope(&be, q, q, q, Bt, T, Hq, hd, 0, 0));
    report("rope", ms, (double)nq * 8, "GB_s", 4.0 * L);
    ms = TIME(5, be.copy(&be, y, x, (size_t)N * d * 4));
    report("copy_hidden", ms, (double)N * d * 8, "GB_s", 2.0 * L);
    size_t np = (size_t)V * d * 2 + (size_t)L * (4 * (size_t)d * d + 3 * (size_t)d * F);
    float *p = dalloc(np * 4), *g = dalloc(np * 4), *m1 = dalloc(np * 4), *m2 = dalloc(np * 4);
    oz_adamw_args a = {1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.1f, 0.05f, 1.0f};
    ms = TIME(5, be.adamw_step(&be, p, g, m1, m2, np, &a));
    report("adamw_all_params", ms, (double)np * 28, "GB_s", 1);
    ms = TIME(5, (void)be.sumsq(&be, g, np));
    report("sumsq_all_grads", ms, (double)np * 4, "GB_s", 1);
    be.destroy(&be);
    return 0;
}
