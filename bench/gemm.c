/* GEMM throughput through the CPU backend for the shapes a 60m training step runs (N = 1024
 * tokens): forward (x W^T), input gradient (dy W) and weight gradient (dy^T x). Prints one JSON
 * line per shape with GFLOP/s, so the BLAS choice is measured rather than assumed. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "backend/backend.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 0;
    oz_backend be;
    oz_err err = {0};
    if (oz_backend_cpu_create(&be, threads, &err) != OZ_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    const struct { const char *what; int ta, tb, M, N, K; } shapes[] = {
        {"mlp_up_fwd", 0, 1, 1024, 1376, 512},   {"mlp_down_fwd", 0, 1, 1024, 512, 1376},
        {"mlp_up_dgrad", 0, 0, 1024, 512, 1376}, {"mlp_up_wgrad", 1, 0, 1376, 512, 1024},
        {"attn_proj_fwd", 0, 1, 1024, 512, 512}, {"lm_head_fwd", 0, 1, 1024, 32000, 512},
        {"lm_head_wgrad", 1, 0, 32000, 512, 1024},
    };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s].M, N = shapes[s].N, K = shapes[s].K;
        float *A = calloc((size_t)M * K, 4), *B = calloc((size_t)K * N, 4), *C = calloc((size_t)M * N, 4);
        for (size_t i = 0; i < (size_t)M * K; i++) A[i] = (float)(i % 7) * 0.1f;
        for (size_t i = 0; i < (size_t)K * N; i++) B[i] = (float)(i % 5) * 0.1f;
        int lda = shapes[s].ta ? M : K, ldb = shapes[s].tb ? K : N;
        be.gemm(&be, shapes[s].ta, shapes[s].tb, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, N);
        int iters = 0;
        double t0 = now_s(), t;
        do {
            be.gemm(&be, shapes[s].ta, shapes[s].tb, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, N);
            iters++;
        } while ((t = now_s() - t0) < 1.0);
        printf("{\"bench\":\"gemm\",\"shape\":\"%s\",\"M\":%d,\"N\":%d,\"K\":%d,\"threads\":%d,\"gflops\":%.1f}\n",
               shapes[s].what, M, N, K, be.threads, 2.0 * M * N * K * iters / t / 1e9);
        free(A);
        free(B);
        free(C);
    }
    be.destroy(&be);
    return 0;
}
