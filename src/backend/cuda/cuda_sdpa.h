/* Fused attention in bf16 on the tensor cores: cuDNN 9's flash-attention engines, reached through
 * its graph API (cudnnBackend*). Forward and backward, causal or not, grouped-query heads. No
 * T x T tensor is ever stored (except the deterministic backward's workspace, below). Standalone:
 * the bf16 path of issue 14 is to call it; the fp32 backend does not.
 *
 * Layouts are the fp32 backend's (backend.h), with bf16 elements (uint16_t bit patterns):
 *   q, out, dq, dout   (B, T, Hq, hd)        k, v, dk, dv   (B, T, Hkv, hd)
 *   stats              (B, Hq, T) fp32: each query row's natural log-sum-exp of scale * q.k over
 *                      the keys it sees (the fp32 backend's lse), written by fwd, read by bwd.
 * Query head h reads key/value head h / (Hq / Hkv). Causal: query t sees keys 0..t.
 * Contract: B, T >= 1; Hkv >= 1 divides Hq; hd a multiple of 8 in [8, 128]; every pointer 16-byte
 * aligned and on the device; outputs do not alias inputs. bwd overwrites dq, dk, dv.
 *
 * Plans: the first call for a shape (B, T, Hq, Hkv, hd, causal, scale) builds the cuDNN graphs of
 * both directions and picks an engine for each (this can take a second: cuDNN may compile a kernel
 * at run time); later calls reuse them. The caller owns the workspace (so an arena can count it):
 * oz_sdpa_plan reports how many bytes fwd and bwd need; passing fewer is an error.
 *
 * Determinism: the forward is deterministic. The default backward accumulates dq in fp32 with
 * atomics (fast; not guaranteed to repeat bit for bit). oz_sdpa_create(..., deterministic = 1) builds the
 * backward that cuDNN runs deterministically on Hopper, which keeps dP in its workspace: about
 * B * Hq * T^2 * 2 bytes (cuDNN 9.19 on an H200: 4.4 GB for B 1, Hq 32, T 8192; 69 GB at T 32768).
 *
 * T == 1 runs on small kernels of ours (cuDNN's backward rejects one query and one key): out = v of
 * the head's group, stats = scale * q.k, dq = dk = 0 (the softmax of one score is constant), dv =
 * the sum of dout over the group's query heads.
 *
 * Errors: every call returns a status and fills err (the cuDNN call, file:line, cuDNN's own last
 * message). Work is queued on the stream given at create; nothing waits for it. An oz_sdpa is used
 * by one host thread at a time. */
#ifndef OZ_CUDA_SDPA_H
#define OZ_CUDA_SDPA_H
#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "util/err.h"

typedef struct oz_sdpa oz_sdpa;

typedef struct {
    int B, T, Hq, Hkv, hd;
    int causal;  /* 1: causal mask; 0: every query sees every key */
    float scale; /* scores are scale * q.k; 0 means 1 / sqrt(hd) */
} oz_sdpa_shape;

typedef struct {
    size_t fwd_workspace; /* bytes fwd needs from the caller (may be 0) */
    size_t bwd_workspace; /* bytes bwd needs: cuDNN's own, the fp32 row sums of dout * out, the fp32
                           * dq accumulator unless deterministic, and 8 * B bytes of sequence
                           * lengths on cuDNN <= 9.15.0 when T % 128 != 0 */
    size_t cudnn_fwd_workspace, cudnn_bwd_workspace; /* cuDNN's part of the two above */
    int64_t fwd_engine, bwd_engine;  /* cuDNN's global engine index; -1 on the T == 1 kernels */
    int fwd_deterministic, bwd_deterministic; /* 0 where cuDNN marks the engine nondeterministic */
} oz_sdpa_info;

/* A plan cache and a cuDNN handle on `stream` of the current device. deterministic != 0 asks for
 * the bitwise-reproducible backward (large workspace, see above). Needs cuDNN 9.10.2 or newer. */
oz_status oz_sdpa_create(oz_sdpa **out, cudaStream_t stream, int deterministic, oz_err *err);
void oz_sdpa_destroy(oz_sdpa *s); /* NULL is fine; waits for nothing */
/* cuDNN's version as cudnnGetVersion() reports it (e.g. 91900). */
size_t oz_sdpa_cudnn_version(void);

/* Builds (or finds) the plans for `shape` and reports them. */
oz_status oz_sdpa_plan(oz_sdpa *s, const oz_sdpa_shape *shape, oz_sdpa_info *info, oz_err *err);

oz_status oz_sdpa_fwd(oz_sdpa *s, const oz_sdpa_shape *shape, uint16_t *out, float *stats, const uint16_t *q,
                      const uint16_t *k, const uint16_t *v, void *workspace, size_t workspace_bytes, oz_err *err);
oz_status oz_sdpa_bwd(oz_sdpa *s, const oz_sdpa_shape *shape, uint16_t *dq, uint16_t *dk, uint16_t *dv,
                      const uint16_t *dout, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                      const uint16_t *out, const float *stats, void *workspace, size_t workspace_bytes,
                      oz_err *err);

#ifdef __cplusplus
}
#endif
#endif
