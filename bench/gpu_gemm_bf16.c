/* TFLOP/s of gemm_bf16 (cuBLASLt: bf16 inputs, fp32 accumulation) at Llama-3-8B training shapes
 * (8,192 tokens, d 4,096, ffn 14,336), next to the fp32 gemm (cuBLAS SGEMM) and the same with TF32,
 * on random inputs. One JSON line per (shape, op): ms per call (the mean of REPS calls between two
 * syncs, after one warm-up call), TFLOP/s (2 M N K), and first_ms, the first call of a shape (for
 * gemm_bf16 that includes building its cuBLASLt plan).
 * usage: build-cuda/bench/gpu_gemm_bf16 [REPS]   (built with make CUDA=1) */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "backend/backend.h"

static oz_backend be;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sync_or_die(void) {
    oz_err err = {0};
    if (oz_backend_sync(&be, &err) != OZ_OK) {
        fprintf(stderr, "gpu_gemm_bf16: %s\n", err.msg);
        exit(1);
    }
}

static void *dalloc(size_t bytes) {
    void *p = be.allocator.alloc(be.allocator.ctx, bytes);
    if (!p) {
        fprintf(stderr, "gpu_gemm_bf16: out of device memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

/* n random fp32 values in [-1, 1) on the device, and their bf16 copy. */
static void random_pair(size_t n, float **f32, uint16_t **bf16, uint64_t seed) {
    float *h = malloc(n * sizeof *h);
    if (!h) {
        fprintf(stderr, "gpu_gemm_bf16: out of host memory\n");
        exit(1);
    }
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        h[i] = (float)((double)(s >> 11) / 4503599627370496.0 - 1.0);
    }
    *f32 = dalloc(n * 4);
    *bf16 = dalloc(n * 2);
    be.to_device(&be, *f32, h, n * 4);
    be.to_bf16(&be, *bf16, *f32, n);
    free(h);
}

typedef struct {
    const char *name;
    int ta, tb, M, N, K;
    float beta;
    int c_bf16; /* gemm_bf16's C: bf16 activations, or fp32 (weight gradients, logits) */
    int bf16_only; /* no SGEMM/TF32 beside it */
} shape;

enum { OP_BF16, OP_FP32, OP_TF32 };

static void run(const shape *s, int op, int reps, const float *A32, const uint16_t *A16, const float *B32,
                const uint16_t *B16, void *Cm) {
    const int lda = s->ta ? s->M : s->K, ldb = s->tb ? s->K : s->N;
    oz_err err = {0};
    if (op != OP_BF16 && oz_backend_cuda_set_tf32(&be, op == OP_TF32, &err) != OZ_OK) {
        fprintf(stderr, "gpu_gemm_bf16: %s\n", err.msg);
        exit(1);
    }
#define CALL()                                                                                                       \
    (op == OP_BF16 ? be.gemm_bf16(&be, s->ta, s->tb, s->M, s->N, s->K, 1.0f, A16, lda, B16, ldb, s->beta, Cm, s->N, \
                                  s->c_bf16)                                                                         \
                   : be.gemm(&be, s->ta, s->tb, s->M, s->N, s->K, 1.0f, A32, lda, B32, ldb, s->beta, (float *)Cm, s->N))
    sync_or_die();
    double t0 = now();
    CALL();
    sync_or_die();
    const double first = (now() - t0) * 1e3;
    t0 = now();
    for (int r = 0; r < reps; r++) CALL();
    sync_or_die();
#undef CALL
    const double ms = (now() - t0) / reps * 1e3, flop = 2.0 * s->M * s->N * s->K;
    static const char *names[] = {"gemm_bf16", "gemm_fp32", "gemm_tf32"};
    printf("{\"bench\":\"gemm\",\"shape\":\"%s\",\"M\":%d,\"N\":%d,\"K\":%d,\"ta\":%d,\"tb\":%d,\"op\":\"%s\","
           "\"c\":\"%s\",\"ms\":%.4f,\"TFLOP_s\":%.1f,\"first_ms\":%.3f}\n",
           s->name, s->M, s->N, s->K, s->ta, s->tb, names[op], op == OP_BF16 && s->c_bf16 ? "bf16" : "fp32", ms,
           flop / (ms * 1e-3) / 1e12, first);
    fflush(stdout);
}

int main(int argc, char **argv) {
    const int reps = argc > 1 ? atoi(argv[1]) : 20;
    oz_err err = {0};
    if (reps < 1 || oz_backend_open(&be, "cuda", 0, &err) != OZ_OK) {
        fprintf(stderr, "gpu_gemm_bf16: %s\n", reps < 1 ? "REPS must be >= 1" : err.msg);
        return 1;
    }
    /* Row-major, as the model calls gemm: x (tokens, d) times a weight stored (out, in). */
    const shape shapes[] = {
        {"square_4096", 0, 0, 4096, 4096, 4096, 0.0f, 1, 0},
        {"mlp_up_fwd", 0, 1, 8192, 14336, 4096, 0.0f, 1, 0},    /* h = x W_up^T */
        {"mlp_down_fwd", 0, 1, 8192, 4096, 14336, 0.0f, 1, 0},  /* y = h W_down^T */
        {"mlp_up_dx", 0, 0, 8192, 4096, 14336, 0.0f, 1, 0},     /* dx = dh W_up */
        {"mlp_up_dw", 1, 0, 14336, 4096, 8192, 1.0f, 0, 0},     /* dW_up += dh^T x, fp32 */
        {"attn_qkv_fwd", 0, 1, 8192, 6144, 4096, 0.0f, 1, 0},   /* q, k, v (GQA: 4096 + 2 x 1024) */
        {"lm_head_chunk", 0, 1, 8192, 16384, 4096, 0.0f, 0, 0}, /* a vocabulary block of fp32 logits */
        /* The 1b preset's MLP (16 x 256 tokens, d 2048) at its ffn 5461, whose rows of 5461 bf16 are
         * not 16-byte aligned, and at 5464, which they are: what an odd hidden size costs. */
#define MLP_1B(F, tag)                                                                                               \
    {"1b_gate_fwd_" tag, 0, 1, 4096, F, 2048, 0.0f, 1, 1}, {"1b_down_fwd_" tag, 0, 1, 4096, 2048, F, 0.0f, 1, 1},     \
        {"1b_down_dx_" tag, 0, 0, 4096, F, 2048, 0.0f, 1, 1}, {"1b_down_dw_" tag, 1, 0, 2048, F, 4096, 1.0f, 0, 1},   \
        {"1b_gate_dx_" tag, 0, 0, 4096, 2048, F, 0.0f, 1, 1}, {"1b_gate_dw_" tag, 1, 0, F, 2048, 4096, 1.0f, 0, 1},   \
        {"1b_down_dw16_" tag, 1, 0, 2048, F, 4096, 0.0f, 1, 1}
        MLP_1B(5461, "f5461"), MLP_1B(5464, "f5464"), MLP_1B(5504, "f5504"),
#undef MLP_1B
    };
    size_t maxa = 0, maxb = 0, maxc = 0;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const shape *s = &shapes[i];
        const size_t a = (size_t)s->M * s->K, b = (size_t)s->K * s->N, c = (size_t)s->M * s->N;
        maxa = a > maxa ? a : maxa, maxb = b > maxb ? b : maxb, maxc = c > maxc ? c : maxc;
    }
    float *A32, *B32;
    uint16_t *A16, *B16;
    random_pair(maxa, &A32, &A16, 1);
    random_pair(maxb, &B32, &B16, 2);
    void *Cm = dalloc(maxc * 4); /* zeroed: beta = 1 accumulates onto zeros */
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int op = OP_BF16; op <= (shapes[i].bf16_only ? OP_BF16 : OP_TF32); op++) run(&shapes[i], op, op == OP_BF16 ? reps : 1 + reps / 4, A32, A16,
                                                         B32, B16, Cm);
    be.destroy(&be);
    return 0;
}
