/* Backend selection by name (--device) and the calls every caller makes on any backend. */
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "numeric/subspace.h"

int oz_backend_is_cuda(const char *device) { return device && strncmp(device, "cuda", 4) == 0; }

oz_status oz_backend_open(oz_backend *be, const char *device, int threads, oz_err *err) {
    if (!device || strcmp(device, "cpu") == 0) return oz_backend_cpu_create(be, threads, err);
    if (!oz_backend_is_cuda(device))
        return oz_fail(err, OZ_ERR_INPUT, "--device %s is not known (choose: cpu, cuda, cuda:N, cuda+tf32)", device);
    const char *p = device + 4;
    int index = 0, tf32 = 0;
    if (*p == ':') {
        char *end;
        long v = strtol(p + 1, &end, 10);
        if (end == p + 1 || v < 0 || v > 1024)
            return oz_fail(err, OZ_ERR_INPUT, "--device %s: expected cuda:N with N a GPU index", device);
        index = (int)v;
        p = end;
    }
    if (strcmp(p, "+tf32") == 0) tf32 = 1, p += 5;
    if (*p) return oz_fail(err, OZ_ERR_INPUT, "--device %s is not known (choose: cpu, cuda, cuda:N, cuda+tf32)", device);
    OZ_TRY(oz_backend_cuda_create(be, index, err));
    if (tf32) {
        oz_status st = oz_backend_cuda_set_tf32(be, 1, err);
        if (st != OZ_OK) {
            be->destroy(be);
            return st;
        }
    }
    return OZ_OK;
}

oz_status oz_backend_attach(oz_backend *be, oz_arena *arena, oz_err *err) {
    return be->attach_arena ? be->attach_arena(be, arena, err) : OZ_OK;
}

oz_status oz_backend_sync(oz_backend *be, oz_err *err) { return be->sync ? be->sync(be, err) : OZ_OK; }

size_t oz_subspace_device_workspace_bytes(int cuda, int m, int n, int r, int method) {
    if (!cuda) return 0;
    oz_subspace_gpu_plan pl; /* the total does not depend on the side (p and q swap) */
    return oz_subspace_gpu_layout(m, n, r, OZ_SUBSPACE_LEFT, method, &pl) ? pl.total : 0;
}

size_t oz_backend_subspace_workspace_bytes(const oz_backend *be, int m, int n, int r, int method) {
    return oz_subspace_device_workspace_bytes(!be->host_visible, m, n, r, method);
}

size_t oz_subspace_device_factored_workspace_bytes(int cuda, int m, int n, int r, int rows) {
    if (!cuda) return 0;
    oz_subspace_gpu_plan pl;
    return oz_subspace_gpu_layout_factored(m, n, r, OZ_SUBSPACE_LEFT, rows, &pl) ? pl.total : 0;
}

size_t oz_backend_subspace_factored_workspace_bytes(const oz_backend *be, int m, int n, int r, int rows) {
    return oz_subspace_device_factored_workspace_bytes(!be->host_visible, m, n, r, rows);
}

static size_t align256(size_t n) { return (n + 255) & ~(size_t)255; }

size_t oz_attention_bf16_device_workspace_bytes(int cuda, int B, int T, int Hq, int Hkv, int hd) {
    if (B <= 0 || T <= 0 || Hq <= 0 || Hkv <= 0 || hd <= 0) return 0;
    if (!cuda) return (size_t)T * (4 * (size_t)Hq + 4 * (size_t)Hkv) * hd * sizeof(float);
    /* cuda_sdpa's backward layout: cuDNN | row sums | dq accumulator | sequence lengths, each part
     * 256-byte aligned; the forward's needs (cuDNN's alone) are far below. */
    const size_t rows = (size_t)B * Hq * T, cudnn = 2 * rows * hd * sizeof(float) + ((size_t)1 << 20);
    return align256(cudnn) + align256(rows * sizeof(float)) + align256(rows * hd * sizeof(float)) +
           2 * (size_t)B * sizeof(int32_t);
}
