/* The quantization ops of backend.h on the GPU: q8 moments (zero, quantize, dequantize, the fused
 * 8-bit Adam step), i8 weights (RTN quantize, dequantize, the stochastic-rounding update) and i4
 * bases, plus the elementwise square. They follow numeric/quant.h to the bit, so a run on cuda keeps
 * the CPU's codes for the same inputs:
 *  - this file is compiled with -fmad=false (Makefile): quant.h evaluates a*b + c with two
 *    roundings, and nvcc would otherwise contract it into one FMA;
 *  - division and sqrtf are IEEE (nvcc's default -prec-div/-prec-sqrt; never --use_fast_math);
 *  - the q8 maps are the host tables the backend built with oz_q8_map_* (be->q8_map), passed by
 *    value to each launch and staged in shared memory, so no device copy can drift from them;
 *  - min, max and absmax reductions do not depend on order, and SR draws are the same
 *    counter-based splitmix64 uniforms as oz_i8_update_sr (numeric/quant.h: element i of a group
 *    takes output i of the group's stream), so every thread draws its own element's.
 * One block of 256 threads handles one q8 block / one i8-i4 group at a time (grid-stride over
 * blocks), so a group's elements are one thread each and loads are coalesced. */
#include "backend/cuda/cuda_internal.h"

extern "C" {
#include "numeric/quant.h"
}

static_assert(OZ_Q8_BLOCK == 256 && OZ_QW_GROUP == 256, "the kernels map one 256-element block to 256 threads");
#define QT 256

static oz_cuda *C(oz_backend *be) { return (oz_cuda *)be->impl; }

/* Blocks for a per-block kernel over nb blocks: several per SM, the kernels loop over the rest. */
static unsigned blocks_for(size_t nb) { return nb < 132 * 16 ? (unsigned)(nb ? nb : 1) : 132u * 16u; }
static unsigned grid_for(size_t n) {
    size_t b = (n + QT - 1) / QT;
    return b < 132 * 32 ? (unsigned)(b ? b : 1) : 132u * 32u;
}

struct q8map {
    float v[256];
};

/* ------------------------------------------------------------------ shared pieces */

/* Block-wide max / min (256 threads); every thread gets the result. Order-free operations, so
 * the result is the CPU loop's. `sh` holds 8 floats. */
__device__ float block_max256(float v, float *sh) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    __syncthreads(); /* sh may still be read from the previous call */
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    float t = sh[0];
    for (int w = 1; w < QT / 32; w++) t = fmaxf(t, sh[w]);
    return t;
}

__device__ float block_min256(float v, float *sh) {
    for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_down_sync(0xffffffffu, v, o));
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    float t = sh[0];
    for (int w = 1; w < QT / 32; w++) t = fminf(t, sh[w]);
    return t;
}

/* oz_q8_nearest and oz_q8_encode, statement for statement. */
__device__ unsigned q8_nearest(float y, const float *map) {
    unsigned lo = 0, hi = 255;
    while (lo < hi) {
        const unsigned mid = (lo + hi) / 2;
        if (map[mid] < y) lo = mid + 1;
        else hi = mid;
    }
    unsigned j = lo;
    if (j > 0 && (y - map[j - 1]) <= (map[j] - y)) j--;
    return j;
}

__device__ unsigned q8_encode(float y, const float *map) {
    unsigned c = q8_nearest(y, map);
    if (map[c] == 0.0f && y != 0.0f) {
        if (y > 0.0f)
            while (c < 255 && map[c] <= 0.0f) c++;
        else
            while (c > 0 && map[c] >= 0.0f) c--;
    }
    return c;
}

/* quant.c's q8_block for the element this thread holds (x = 0 past len): absmax, then the code. */
__device__ void q8_block_store(float x, bool live, const float *map, uint8_t *code, float *absmax, float *sh) {
    const float a = block_max256(live ? fabsf(x) : 0.0f, sh);
    if (threadIdx.x == 0) *absmax = a;
    if (live) *code = (uint8_t)(a > 0.0f ? q8_encode(x / a, map) : q8_nearest(0.0f, map));
}


/* minmax_params for the group whose element this thread holds. */
__device__ void minmax_params(float w, bool live, float qmax, float *s_out, float *z_out, float *sh) {
    const float lo = block_min256(live ? fminf(0.0f, w) : 0.0f, sh);
    const float hi = block_max256(live ? fmaxf(0.0f, w) : 0.0f, sh);
    const float s = fmaxf(hi - lo, 1e-8f) / qmax;
    *s_out = s;
    *z_out = fminf(fmaxf(rintf(-lo / s), 0.0f), qmax);
}

__device__ uint8_t rtn_code(float w, float s, float z, float qmax) {
    return (uint8_t)fminf(fmaxf(rintf(w / s) + z, 0.0f), qmax);
}

/* i8_group_sr: new scale and zero point, then SR codes from the group's own stream (this thread's
 * element is element threadIdx.x of the group: blocks are groups). */
__device__ void i8_group_sr(float w, bool live, uint64_t seed, uint64_t step, uint64_t g, uint8_t *q, float *s,
                            uint8_t *z, float *sh) {
    float sc, zf;
    minmax_params(w, live, 255.0f, &sc, &zf, sh);
    if (threadIdx.x == 0) {
        *s = sc;
        *z = (uint8_t)zf;
    }
    if (live) {
        /* Counter-based: this element's draw from the group's splitmix64 stream, as quant.c. */
        const uint64_t key = mix64(mix64(mix64(seed) ^ step) ^ g);
        const float un = (float)(mix64(key + (uint64_t)threadIdx.x * 0x9E3779B97F4A7C15ull) >> 40) * (1.0f / 16777216.0f);
        const float x = w / sc;
        const float fl = floorf(x);
        const float up = un < x - fl ? 1.0f : 0.0f;
        *q = (uint8_t)fminf(fmaxf(fl + zf + up, 0.0f), 255.0f);
    }
    __syncthreads(); /* sh is reused by the next group's reductions */
}

#define FOR_BLOCKS(b, nb) for (size_t b = blockIdx.x; b < (nb); b += gridDim.x)

/* ------------------------------------------------------------------ q8 */

__global__ void q8_quantize_k(const float *x, size_t n, q8map map, uint8_t *codes, float *absmax) {
    __shared__ float smap[256], sh[QT / 32];
    smap[threadIdx.x] = map.v[threadIdx.x];
    __syncthreads();
    FOR_BLOCKS(b, (n + QT - 1) / QT) {
        const size_t i = b * QT + threadIdx.x;
        const bool live = i < n;
        q8_block_store(live ? x[i] : 0.0f, live, smap, codes + i, absmax + b, sh);
    }
}

__global__ void q8_dequantize_k(const uint8_t *codes, const float *absmax, size_t n, q8map map, float *x) {
    __shared__ float smap[256];
    smap[threadIdx.x] = map.v[threadIdx.x];
    __syncthreads();
    for (size_t i = (size_t)blockIdx.x * QT + threadIdx.x; i < n; i += (size_t)gridDim.x * QT)
        x[i] = smap[codes[i]] * absmax[i / OZ_Q8_BLOCK];
}

/* oz_adam8bit_step: the fp32 step on dequantized moments, then both moments requantized with the
 * block's new absmax. */
__global__ void adam8bit_k(float *param, const float *grad, uint8_t *mq, float *ma, uint8_t *vq, float *va, size_t n,
                           q8map ms, q8map mu, float b1, float b2, float eps, float decay, float gs, float step_size,
                           float bc2_sqrt) {
    __shared__ float smap_s[256], smap_u[256], sh[QT / 32];
    smap_s[threadIdx.x] = ms.v[threadIdx.x];
    smap_u[threadIdx.x] = mu.v[threadIdx.x];
    __syncthreads();
    FOR_BLOCKS(b, (n + QT - 1) / QT) {
        const size_t k = b * QT + threadIdx.x;
        const bool live = k < n;
        const float mab = ma[b], vab = va[b]; /* read by every thread before thread 0 rewrites them */
        float mi = 0.0f, vi = 0.0f;
        if (live) {
            const float g = grad[k] * gs;
            float p = param[k] * decay;
            mi = b1 * (smap_s[mq[k]] * mab) + (1 - b1) * g;
            vi = b2 * (smap_u[vq[k]] * vab) + (1 - b2) * g * g;
            const float denom = sqrtf(vi) / bc2_sqrt + eps;
            p -= step_size * (mi / denom);
            param[k] = p;
        }
        q8_block_store(mi, live, smap_s, mq + k, ma + b, sh);
        q8_block_store(vi, live, smap_u, vq + k, va + b, sh);
    }
}

static q8map map_of(oz_backend *be, int map) {
    q8map m;
    memcpy(m.v, be->q8_map[map ? 1 : 0], sizeof m.v);
    return m;
}

static void cuda_q8_zero(oz_backend *be, uint8_t *codes, float *absmax, size_t n, int map) {
    oz_cuda *c = C(be);
    if (!n) return;
    /* The zero code is a host-table lookup; the state is then two memsets (absmax 0.0f is all-zero bytes). */
    const uint8_t zero = oz_q8_nearest(0.0f, be->q8_map[map ? 1 : 0]);
    OZ_CUDA_CHECK(c, cudaMemsetAsync(codes, zero, n, c->stream));
    OZ_CUDA_CHECK(c, cudaMemsetAsync(absmax, 0, oz_q8_blocks(n) * sizeof(float), c->stream));
}

static void cuda_q8_quantize(oz_backend *be, const float *x, size_t n, int map, uint8_t *codes, float *absmax) {
    oz_cuda *c = C(be);
    if (!n) return;
    q8_quantize_k<<<blocks_for(oz_q8_blocks(n)), QT, 0, c->stream>>>(x, n, map_of(be, map), codes, absmax);
    OZ_CUDA_LAUNCHED(c);
}

static void cuda_q8_dequantize(oz_backend *be, const uint8_t *codes, const float *absmax, size_t n, int map,
                               float *x) {
    oz_cuda *c = C(be);
    if (!n) return;
    q8_dequantize_k<<<grid_for(n), QT, 0, c->stream>>>(codes, absmax, n, map_of(be, map), x);
    OZ_CUDA_LAUNCHED(c);
}

static void cuda_adam8bit_step(oz_backend *be, float *param, const float *grad, uint8_t *mq, float *ma, uint8_t *vq,
                               float *va, size_t n, const oz_adamw_args *a) {
    oz_cuda *c = C(be);
    if (!n) return;
    /* The host computes the per-step constants with quant.c's expressions, so they are its bits. */
    const float decay = 1 - a->lr * a->weight_decay;
    const float step_size = a->lr / a->bias_correction1;
    const float bc2_sqrt = sqrtf(a->bias_correction2);
    adam8bit_k<<<blocks_for(oz_q8_blocks(n)), QT, 0, c->stream>>>(param, grad, mq, ma, vq, va, n,
                                                                    map_of(be, OZ_Q8_MAP_SIGNED),
                                                                    map_of(be, OZ_Q8_MAP_UNSIGNED), a->beta1, a->beta2,
                                                                    a->eps, decay, a->grad_scale, step_size, bc2_sqrt);
    OZ_CUDA_LAUNCHED(c);
}

/* ------------------------------------------------------------------ i8 / i4 */

__global__ void i8_quantize_k(const float *w, size_t n, uint8_t *q, float *s, uint8_t *z) {
    __shared__ float sh[QT / 32];
    FOR_BLOCKS(g, (n + QT - 1) / QT) {
        const size_t i = g * QT + threadIdx.x;
        const bool live = i < n;
        const float x = live ? w[i] : 0.0f;
        float sc, zf;
        minmax_params(x, live, 255.0f, &sc, &zf, sh);
        if (threadIdx.x == 0) s[g] = sc, z[g] = (uint8_t)zf;
        if (live) q[i] = rtn_code(x, sc, zf, 255.0f);
    }
}

__global__ void i8_dequantize_k(const uint8_t *q, const float *s, const uint8_t *z, size_t n, float *w) {
    for (size_t i = (size_t)blockIdx.x * QT + threadIdx.x; i < n; i += (size_t)gridDim.x * QT) {
        const size_t g = i / OZ_QW_GROUP;
        w[i] = ((float)q[i] - (float)z[g]) * s[g];
    }
}

__global__ void i8_update_sr_k(uint8_t *q, float *s, uint8_t *z, size_t n, const float *delta, float decay,
                               float alpha, uint64_t seed, uint64_t step, uint64_t group0) {
    __shared__ float sh[QT / 32];
    FOR_BLOCKS(g, (n + QT - 1) / QT) {
        const size_t i = g * QT + threadIdx.x;
        const bool live = i < n;
        float wb = 0.0f;
        if (live) {
            const float w = ((float)q[i] - (float)z[g]) * s[g];
            wb = w * decay + alpha * delta[i];
        }
        __syncthreads(); /* every thread has read s[g], z[g] before thread 0 replaces them */
        i8_group_sr(wb, live, seed, step, group0 + g, q + i, s + g, z + g, sh);
    }
}

__global__ void i4_quantize_k(const float *w, size_t n, uint8_t *packed, float *s, uint8_t *z) {
    __shared__ float sh[QT / 32];
    __shared__ uint8_t codes[QT];
    FOR_BLOCKS(g, (n + QT - 1) / QT) {
        const size_t i0 = g * QT, i = i0 + threadIdx.x;
        const bool live = i < n;
        const size_t len = n - i0 < QT ? n - i0 : QT;
        const float x = live ? w[i] : 0.0f;
        float sc, zf;
        minmax_params(x, live, 15.0f, &sc, &zf, sh);
        if (threadIdx.x == 0) s[g] = sc, z[g] = (uint8_t)zf;
        codes[threadIdx.x] = live ? rtn_code(x, sc, zf, 15.0f) : 0;
        __syncthreads();
        /* i0 is even: this group's bytes start at i0 / 2; the high nibble past an odd end is 0. */
        const size_t j = 2 * (size_t)threadIdx.x;
        if (j < len) packed[i0 / 2 + threadIdx.x] = (uint8_t)(codes[j] | (j + 1 < len ? codes[j + 1] << 4 : 0));
        __syncthreads(); /* codes is refilled for the next group */
    }
}

__global__ void i4_dequantize_k(const uint8_t *packed, const float *s, const uint8_t *z, size_t n, float *w) {
    for (size_t i = (size_t)blockIdx.x * QT + threadIdx.x; i < n; i += (size_t)gridDim.x * QT) {
        const size_t g = i / OZ_QW_GROUP;
        const unsigned byte = packed[i / 2];
        const unsigned code = (i & 1) ? byte >> 4 : byte & 15u;
        w[i] = ((float)code - (float)z[g]) * s[g];
    }
}

__global__ void square_k(float *y, const float *x, size_t n) {
    for (size_t i = (size_t)blockIdx.x * QT + threadIdx.x; i < n; i += (size_t)gridDim.x * QT) y[i] = x[i] * x[i];
}

static void cuda_i8_quantize(oz_backend *be, const float *w, size_t n, uint8_t *q, float *s, uint8_t *z) {
    oz_cuda *c = C(be);
    if (!n) return;
    i8_quantize_k<<<blocks_for(oz_qw_groups(n)), QT, 0, c->stream>>>(w, n, q, s, z);
    OZ_CUDA_LAUNCHED(c);
}

static void cuda_i8_dequantize(oz_backend *be, const uint8_t *q, const float *s, const uint8_t *z, size_t n,
                               float *w) {
    oz_cuda *c = C(be);
    if (!n) return;
    i8_dequantize_k<<<grid_for(n), QT, 0, c->stream>>>(q, s, z, n, w);
    OZ_CUDA_LAUNCHED(c);
}

static void cuda_i8_update_sr(oz_backend *be, uint8_t *q, float *s, uint8_t *z, size_t n, const float *delta,
                              float decay, float alpha, uint64_t seed, uint64_t step, uint64_t group0) {
    oz_cuda *c = C(be);
    if (!n) return;
    i8_update_sr_k<<<blocks_for(oz_qw_groups(n)), QT, 0, c->stream>>>(q, s, z, n, delta, decay, alpha, seed, step,
                                                                        group0);
    OZ_CUDA_LAUNCHED(c);
}

static void cuda_i4_quantize(oz_backend *be, const float *w, size_t n, uint8_t *packed, float *s, uint8_t *z) {
    oz_cuda *c = C(be);
    if (!n) return;
    i4_quantize_k<<<blocks_for(oz_qw_groups(n)), QT, 0, c->stream>>>(w, n, packed, s, z);
    OZ_CUDA_LAUNCHED(c);
}

static void cuda_i4_dequantize(oz_backend *be, const uint8_t *packed, const float *s, const uint8_t *z, size_t n,
                               float *w) {
    oz_cuda *c = C(be);
    if (!n) return;
    i4_dequantize_k<<<grid_for(n), QT, 0, c->stream>>>(packed, s, z, n, w);
    OZ_CUDA_LAUNCHED(c);
}

static void cuda_square(oz_backend *be, float *y, const float *x, size_t n) {
    oz_cuda *c = C(be);
    if (!n) return;
    square_k<<<grid_for(n), QT, 0, c->stream>>>(y, x, n);
    OZ_CUDA_LAUNCHED(c);
}

/* oz_bf16_sr per element, in integer arithmetic: bitwise the CPU's. */
__global__ void bf16_sr_k(uint16_t *dst, const float *src, size_t n, uint64_t key, uint64_t i0) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = oz_cuda_bf16_sr(src[i], key, i0 + i);
}

static void cuda_to_bf16_sr(oz_backend *be, uint16_t *dst, const float *src, size_t n, uint64_t key, uint64_t i0) {
    oz_cuda *c = C(be);
    if (!n) return;
    bf16_sr_k<<<grid_for(n), QT, 0, c->stream>>>(dst, src, n, key, i0);
    OZ_CUDA_LAUNCHED(c);
}

void oz_cuda_quant_ops(oz_backend *be) {
    be->to_bf16_sr = cuda_to_bf16_sr;
    oz_q8_map_signed(be->q8_map[OZ_Q8_MAP_SIGNED]);
    oz_q8_map_unsigned(be->q8_map[OZ_Q8_MAP_UNSIGNED]);
    be->q8_zero = cuda_q8_zero;
    be->q8_quantize = cuda_q8_quantize;
    be->q8_dequantize = cuda_q8_dequantize;
    be->adam8bit_step = cuda_adam8bit_step;
    be->i8_quantize = cuda_i8_quantize;
    be->i8_dequantize = cuda_i8_dequantize;
    be->i8_update_sr = cuda_i8_update_sr;
    be->i4_quantize = cuda_i4_quantize;
    be->i4_dequantize = cuda_i4_dequantize;
    be->square = cuda_square;
}
