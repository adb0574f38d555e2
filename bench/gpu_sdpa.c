/* Times the fused bf16 attention (backend/cuda/cuda_sdpa.h: cuDNN's flash-attention engines),
 * causal with grouped-query heads, forward and backward, and prints one JSON line per shape:
 * milliseconds per call (CUDA events around ITERS calls after two warm-up calls), TFLOP/s at the
 * causal FLOP count (forward 2 * 2 * B * Hq * T^2 * hd / 2, backward 2.5 times that), the workspace
 * each needs, and the deterministic backward's time where its workspace fits in free memory (its
 * workspace is reported either way). bench/torch_sdpa.py times PyTorch's SDPA on the same shapes.
 * Inputs are a random bf16 block tiled over each buffer: the values do not change the work.
 * usage: build-cuda/bench/gpu_sdpa [ITERS] [B,T,Hq,Hkv,hd ...]   (built with make CUDA=1) */
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_sdpa.h"
#include "numeric/half.h"
#include "util/clock.h"

typedef struct {
    int B, T, Hq, Hkv, hd;
} bshape;

static const bshape default_shapes[] = {
    {1, 2048, 32, 8, 128}, {8, 2048, 32, 8, 128}, {1, 8192, 32, 8, 128}, {4, 8192, 32, 8, 128},
    {1, 32768, 32, 8, 128}, {2, 32768, 32, 8, 128}, {8, 2048, 32, 8, 64},
};

#define FILL_BLOCK ((size_t)1 << 22) /* bf16 values generated on the host, then tiled */

typedef struct {
    char msg[600];
} failure;

static int rt(cudaError_t e, const char *what, failure *f) {
    if (e == cudaSuccess) return 1;
    if (!f->msg[0]) snprintf(f->msg, sizeof f->msg, "%s: %s", what, cudaGetErrorString(e));
    return 0;
}

/* Fills n bf16 elements of dst with `block` repeated. */
static int fill(uint16_t *dst, size_t n, const uint16_t *block, failure *f) {
    for (size_t at = 0; at < n; at += FILL_BLOCK) {
        const size_t len = n - at < FILL_BLOCK ? n - at : FILL_BLOCK;
        if (!rt(cudaMemcpy(dst + at, block, len * sizeof *block, cudaMemcpyHostToDevice), "fill", f)) return 0;
    }
    return 1;
}

/* ms per call of `call` over iters calls (after the caller's warm-up). */
#define TIME_MS(iters, call, out_ms)                                                          \
    do {                                                                                      \
        cudaEvent_t e0_, e1_;                                                                 \
        float ms_ = 0;                                                                        \
        if (!rt(cudaEventCreate(&e0_), "cudaEventCreate", &f) || !rt(cudaEventCreate(&e1_), "cudaEventCreate", &f)) \
            goto done;                                                                        \
        rt(cudaEventRecord(e0_, 0), "cudaEventRecord", &f);                                   \
        for (int i_ = 0; i_ < (iters) && ok; i_++) ok = (call) == OZ_OK;                      \
        rt(cudaEventRecord(e1_, 0), "cudaEventRecord", &f);                                   \
        rt(cudaEventSynchronize(e1_), "cudaEventSynchronize", &f);                            \
        rt(cudaEventElapsedTime(&ms_, e0_, e1_), "cudaEventElapsedTime", &f);                 \
        cudaEventDestroy(e0_), cudaEventDestroy(e1_);                                         \
        (out_ms) = ms_ / (iters);                                                             \
    } while (0)

static void run_shape(const bshape *b, int iters, const uint16_t *block) {
    const oz_sdpa_shape sh = {b->B, b->T, b->Hq, b->Hkv, b->hd, 1, 0};
    const size_t nq = (size_t)b->B * b->T * b->Hq * b->hd, nkv = (size_t)b->B * b->T * b->Hkv * b->hd;
    const size_t nl = (size_t)b->B * b->Hq * b->T;
    const double fwd_flop = 2.0 * b->B * b->Hq * (double)b->T * b->T * b->hd, bwd_flop = 2.5 * fwd_flop;
    failure f = {{0}};
    oz_err err = {0};
    oz_sdpa *sd = NULL, *det = NULL;
    uint16_t *q = NULL, *k = NULL, *v = NULL, *o = NULL, *dout = NULL, *dq = NULL, *dk = NULL, *dv = NULL;
    float *stats = NULL;
    void *ws = NULL, *dws = NULL;
    oz_sdpa_info info, dinfo;
    double fwd_ms = 0, bwd_ms = 0, det_ms = -1, plan_s = 0, det_plan_s = 0;
    int ok = 1, det_ok = 0;
    memset(&dinfo, 0, sizeof dinfo);

    if (oz_sdpa_create(&sd, 0, 0, &err) != OZ_OK || oz_sdpa_create(&det, 0, 1, &err) != OZ_OK) goto done;
    double t0 = oz_now_s();
    if (oz_sdpa_plan(sd, &sh, &info, &err) != OZ_OK) goto done;
    plan_s = oz_now_s() - t0;
    const size_t ws_bytes = info.fwd_workspace > info.bwd_workspace ? info.fwd_workspace : info.bwd_workspace;
    if (!rt(cudaMalloc((void **)&q, nq * 2), "cudaMalloc q", &f) ||
        !rt(cudaMalloc((void **)&k, nkv * 2), "cudaMalloc k", &f) ||
        !rt(cudaMalloc((void **)&v, nkv * 2), "cudaMalloc v", &f) ||
        !rt(cudaMalloc((void **)&o, nq * 2), "cudaMalloc out", &f) ||
        !rt(cudaMalloc((void **)&dout, nq * 2), "cudaMalloc dout", &f) ||
        !rt(cudaMalloc((void **)&dq, nq * 2), "cudaMalloc dq", &f) ||
        !rt(cudaMalloc((void **)&dk, nkv * 2), "cudaMalloc dk", &f) ||
        !rt(cudaMalloc((void **)&dv, nkv * 2), "cudaMalloc dv", &f) ||
        !rt(cudaMalloc((void **)&stats, nl * 4), "cudaMalloc stats", &f) ||
        !rt(cudaMalloc(&ws, ws_bytes ? ws_bytes : 256), "cudaMalloc workspace", &f))
        goto done;
    if (!fill(q, nq, block, &f) || !fill(k, nkv, block + 1, &f) || !fill(v, nkv, block + 2, &f) ||
        !fill(dout, nq, block + 3, &f))
        goto done;

#define FWD oz_sdpa_fwd(sd, &sh, o, stats, q, k, v, ws, ws_bytes, &err)
#define BWD(s, w, wb) oz_sdpa_bwd((s), &sh, dq, dk, dv, dout, q, k, v, o, stats, (w), (wb), &err)
    for (int i = 0; i < 2 && ok; i++) ok = FWD == OZ_OK && BWD(sd, ws, ws_bytes) == OZ_OK;
    if (!ok || !rt(cudaDeviceSynchronize(), "warm-up", &f)) goto done;
    TIME_MS(iters, FWD, fwd_ms);
    TIME_MS(iters, BWD(sd, ws, ws_bytes), bwd_ms);
    if (!ok) goto done;

    /* The deterministic backward: its workspace grows as T^2; run it only where that fits. */
    t0 = oz_now_s();
    if (oz_sdpa_plan(det, &sh, &dinfo, &err) != OZ_OK) goto done;
    det_plan_s = oz_now_s() - t0;
    det_ok = 1;
    size_t free_b = 0, total_b = 0;
    if (!rt(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo", &f)) goto done;
    if (dinfo.bwd_workspace + ((size_t)2 << 30) < free_b &&
        rt(cudaMalloc(&dws, dinfo.bwd_workspace), "cudaMalloc deterministic workspace", &f)) {
        ok = BWD(det, dws, dinfo.bwd_workspace) == OZ_OK && BWD(det, dws, dinfo.bwd_workspace) == OZ_OK;
        if (!ok || !rt(cudaDeviceSynchronize(), "warm-up", &f)) goto done;
        TIME_MS(iters, BWD(det, dws, dinfo.bwd_workspace), det_ms);
        if (!ok) goto done;
    }
#undef FWD
#undef BWD
done:
    if (!f.msg[0] && err.msg[0]) snprintf(f.msg, sizeof f.msg, "%s", err.msg);
    if (!f.msg[0]) rt(cudaDeviceSynchronize(), "sync", &f);
    printf("{\"impl\":\"ounce-cudnn\",\"cudnn\":%zu,\"B\":%d,\"T\":%d,\"Hq\":%d,\"Hkv\":%d,\"hd\":%d,\"iters\":%d",
           oz_sdpa_cudnn_version(), b->B, b->T, b->Hq, b->Hkv, b->hd, iters);
    if (f.msg[0]) {
        for (char *c = f.msg; *c; c++)
            if (*c == '"' || *c == '\\' || *c == '\n') *c = '\'';
        printf(",\"error\":\"%s\"", f.msg);
    }
    if (fwd_ms > 0 && bwd_ms > 0)
        printf(",\"fwd_ms\":%.4f,\"bwd_ms\":%.4f,\"fwd_tflops\":%.1f,\"bwd_tflops\":%.1f,\"fwd_bwd_tflops\":%.1f,"
               "\"fwd_workspace\":%zu,\"bwd_workspace\":%zu,\"fwd_engine\":%lld,\"bwd_engine\":%lld,\"plan_s\":%.2f",
               fwd_ms, bwd_ms, fwd_flop / fwd_ms * 1e-9, bwd_flop / bwd_ms * 1e-9,
               (fwd_flop + bwd_flop) / (fwd_ms + bwd_ms) * 1e-9, info.fwd_workspace, info.bwd_workspace,
               (long long)info.fwd_engine, (long long)info.bwd_engine, plan_s);
    if (det_ok) {
        printf(",\"det_bwd_workspace\":%zu,\"det_plan_s\":%.2f", dinfo.bwd_workspace, det_plan_s);
        if (det_ms > 0) printf(",\"det_bwd_ms\":%.4f,\"det_bwd_tflops\":%.1f", det_ms, bwd_flop / det_ms * 1e-9);
    }
    printf("}\n");
    fflush(stdout);
    void *p[] = {q, k, v, o, dout, dq, dk, dv, stats, ws, dws};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) cudaFree(p[i]);
    oz_sdpa_destroy(sd);
    oz_sdpa_destroy(det);
}

int main(int argc, char **argv) {
    int iters = argc > 1 ? atoi(argv[1]) : 10;
    if (iters < 1) iters = 10;
    uint16_t *block = malloc((FILL_BLOCK + 4) * sizeof *block);
    if (!block) {
        fprintf(stderr, "gpu_sdpa: out of host memory\n");
        return 1;
    }
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < FILL_BLOCK + 4; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        block[i] = oz_f32_to_bf16((float)((double)(s >> 11) / 9007199254740992.0) * 4.0f - 2.0f);
    }
    if (argc > 2) {
        for (int a = 2; a < argc; a++) {
            bshape b;
            if (sscanf(argv[a], "%d,%d,%d,%d,%d", &b.B, &b.T, &b.Hq, &b.Hkv, &b.hd) != 5) {
                fprintf(stderr, "gpu_sdpa: shape '%s' is not B,T,Hq,Hkv,hd\n", argv[a]);
                free(block);
                return 2;
            }
            run_shape(&b, iters, block);
        }
    } else {
        for (size_t i = 0; i < sizeof default_shapes / sizeof default_shapes[0]; i++)
            run_shape(&default_shapes[i], iters, block);
    }
    free(block);
    return 0;
}
