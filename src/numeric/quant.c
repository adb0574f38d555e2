/* Quantization primitives: q8 dynamic moments with a fused 8-bit AdamW step, i8/i4 min-max
 * weight formats with round-to-nearest and stochastic rounding. Formats and rounding rules are
 * specified in quant.h; this file must follow them to the bit, since the CUDA port is compared
 * against it. Every loop is parallel over whole blocks/groups and each block's result depends
 * only on that block's inputs, so the thread count never changes a bit. */
#include "numeric/quant.h"

#include <math.h>
#include <string.h>


/* Below this many elements the OpenMP fork/join costs more than the loop. */
#define OZ_QUANT_PAR_MIN 32768

_Static_assert(OZ_QW_GROUP % 2 == 0, "i4 groups must not share a byte");
_Static_assert(OZ_Q8_BLOCK > 0 && OZ_QW_GROUP > 0, "block sizes must be positive");

/* ---------------------------------------------------------------- q8 maps */

/* Exact decimal literals so the table is the same on every compiler (no pow()). */
static const double oz_pow10_neg[8] = {1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7};

/* value(k) for a B-bit magnitude field (see quant.h). */
static float dyn_value(unsigned k, int bits) {
    if (k == 0) return 0.0f;
    int e = 0;
    while (!(k & (1u << (bits - 1 - e)))) e++;
    const int f = bits - 1 - e;
    const unsigned frac = k & ((1u << f) - 1u);
    return (float)(oz_pow10_neg[e] * (0.1 + 0.9 * (double)(frac + 1u) / (double)(1u << f)));
}

void oz_q8_map_unsigned(float map[256]) {
    for (unsigned k = 0; k < 256; k++) map[k] = dyn_value(k, 8);
}

void oz_q8_map_signed(float map[256]) {
    for (unsigned k = 0; k < 128; k++) {
        const float v = dyn_value(k, 7);
        map[127 - k] = -v;
        map[128 + k] = v;
    }
    /* -value(0) would be -0.0f; keep the table free of signed zeros so that ports comparing
     * tables bitwise, or printing them, see one zero. */
    map[127] = 0.0f;
}

uint8_t oz_q8_nearest(float y, const float map[256]) {
    unsigned lo = 0, hi = 255; /* first j with map[j] >= y lies in [lo, hi] (255 when none) */
    while (lo < hi) {
        const unsigned mid = (lo + hi) / 2;
        if (map[mid] < y)
            lo = mid + 1;
        else
            hi = mid;
    }
    unsigned j = lo;
    if (j > 0 && (y - map[j - 1]) <= (map[j] - y)) j--;
    return (uint8_t)j;
}

uint8_t oz_q8_encode(float y, const float map[256]) {
    unsigned c = oz_q8_nearest(y, map);
    /* A second moment stored as 0 under a nonzero first moment makes the next step divide by
     * eps alone (the "zero-point problem" of low-bit Adam states): keep nonzero values off the
     * zero code. The loops stop within two steps for the maps built here. */
    if (map[c] == 0.0f && y != 0.0f) {
        if (y > 0.0f)
            while (c < 255 && map[c] <= 0.0f) c++;
        else
            while (c > 0 && map[c] >= 0.0f) c--;
    }
    return (uint8_t)c;
}

size_t oz_q8_blocks(size_t n) { return (n + OZ_Q8_BLOCK - 1) / OZ_Q8_BLOCK; }

size_t oz_q8_state_bytes(size_t n) { return 2 * (n + sizeof(float) * oz_q8_blocks(n)); }

static float absmax_of(const float *x, size_t len) {
    float a = 0.0f;
    for (size_t i = 0; i < len; i++) a = fmaxf(a, fabsf(x[i]));
    return a;
}

/* One block: shared by quantize and the Adam step so both follow the same rule. */
static void q8_block(const float *x, size_t len, const float map[256], uint8_t *codes, float *absmax) {
    const float a = absmax_of(x, len);
    *absmax = a;
    if (a > 0.0f) {
        for (size_t i = 0; i < len; i++) codes[i] = oz_q8_encode(x[i] / a, map);
    } else {
        /* 0/0 would be NaN; an all-zero block is the zero code everywhere. */
        memset(codes, oz_q8_nearest(0.0f, map), len);
    }
}

void oz_q8_quantize(const float *x, size_t n, const float map[256], uint8_t *codes, float *absmax) {
    const size_t nb = oz_q8_blocks(n);
#pragma omp parallel for schedule(static) if (n > OZ_QUANT_PAR_MIN)
    for (size_t b = 0; b < nb; b++) {
        const size_t i0 = b * OZ_Q8_BLOCK;
        const size_t len = n - i0 < OZ_Q8_BLOCK ? n - i0 : OZ_Q8_BLOCK;
        q8_block(x + i0, len, map, codes + i0, absmax + b);
    }
}

void oz_q8_dequantize(const uint8_t *codes, const float *absmax, size_t n, const float map[256],
                      float *x) {
#pragma omp parallel for schedule(static) if (n > OZ_QUANT_PAR_MIN)
    for (size_t i = 0; i < n; i++) x[i] = map[codes[i]] * absmax[i / OZ_Q8_BLOCK];
}

void oz_q8_zero(uint8_t *codes, float *absmax, size_t n, const float map[256]) {
    if (n == 0) return;
    memset(codes, oz_q8_nearest(0.0f, map), n);
    const size_t nb = oz_q8_blocks(n);
    for (size_t b = 0; b < nb; b++) absmax[b] = 0.0f;
}

void oz_adam8bit_step(float *param, const float *grad, uint8_t *m_codes, float *m_absmax,
                      uint8_t *v_codes, float *v_absmax, size_t n, const float map_signed[256],
                      const float map_unsigned[256], const oz_adamw_args *a) {
    /* Same constants and operation order as the fp32 backend's adamw_step, so a zero-state first
     * step agrees bitwise and later differences are the quantization alone. */
    const float lr = a->lr, b1 = a->beta1, b2 = a->beta2, eps = a->eps;
    const float decay = 1 - lr * a->weight_decay;
    const float gs = a->grad_scale;
    const float step_size = lr / a->bias_correction1;
    const float bc2_sqrt = sqrtf(a->bias_correction2);
    const size_t nb = oz_q8_blocks(n);
#pragma omp parallel for schedule(static) if (n > OZ_QUANT_PAR_MIN)
    for (size_t b = 0; b < nb; b++) {
        const size_t i0 = b * OZ_Q8_BLOCK;
        const size_t len = n - i0 < OZ_Q8_BLOCK ? n - i0 : OZ_Q8_BLOCK;
        float mb[OZ_Q8_BLOCK], vb[OZ_Q8_BLOCK];
        const float ma = m_absmax[b], va = v_absmax[b];
        for (size_t i = 0; i < len; i++) {
            const size_t k = i0 + i;
            const float g = grad[k] * gs;
            float p = param[k] * decay;
            const float mi = b1 * (map_signed[m_codes[k]] * ma) + (1 - b1) * g;
            const float vi = b2 * (map_unsigned[v_codes[k]] * va) + (1 - b2) * g * g;
            const float denom = sqrtf(vi) / bc2_sqrt + eps;
            p -= step_size * (mi / denom);
            mb[i] = mi;
            vb[i] = vi;
            param[k] = p;
        }
        q8_block(mb, len, map_signed, m_codes + i0, m_absmax + b);
        q8_block(vb, len, map_unsigned, v_codes + i0, v_absmax + b);
    }
}

/* ---------------------------------------------------------------- i8 / i4 */

size_t oz_qw_groups(size_t n) { return (n + OZ_QW_GROUP - 1) / OZ_QW_GROUP; }

size_t oz_qw_row_unit(size_t cols) {
    size_t g = OZ_QW_GROUP;
    for (size_t x = cols % g; x;) { /* g = gcd(cols, OZ_QW_GROUP) */
        size_t t = g % x;
        g = x;
        x = t;
    }
    return OZ_QW_GROUP / g;
}

size_t oz_qw_block_rows(size_t rows, size_t cols, size_t target) {
    size_t unit = oz_qw_row_unit(cols), n = target / cols / unit * unit;
    if (n < unit) n = unit;
    return n < rows ? n : rows;
}

size_t oz_i8_bytes(size_t n) { return n + (sizeof(float) + 1) * oz_qw_groups(n); }

size_t oz_i4_bytes(size_t n) { return (n + 1) / 2 + (sizeof(float) + 1) * oz_qw_groups(n); }

static uint64_t mix64(uint64_t x) {
    uint64_t z = x + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint64_t oz_qw_stream_key(uint64_t seed, uint64_t step, uint64_t group) {
    return mix64(mix64(mix64(seed) ^ step) ^ group);
}

uint16_t oz_bf16_sr(float x, uint64_t key, uint64_t i) {
    uint32_t b;
    memcpy(&b, &x, sizeof b);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((b >> 16) | 0x0040u); /* quiet NaN */
    const uint32_t r = (uint32_t)(mix64(key + i * 0x9E3779B97F4A7C15ull) >> 48);
    return (uint16_t)((b + r) >> 16);
}

void oz_bf16_round_sr(const float *x, size_t n, uint64_t key, uint64_t i0, uint16_t *out) {
#pragma omp parallel for schedule(static) if (n > OZ_QUANT_PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = oz_bf16_sr(x[i], key, i0 + i);
}

/* Scale and zero point of one group; qmax = 255 or 15. */
static void minmax_params(const float *w, size_t len, float qmax, float *s_out, uint8_t *z_out) {
    float lo = 0.0f, hi = 0.0f; /* starting at 0 is what puts 0 inside the range */
    for (size_t i = 0; i < len; i++) {
        lo = fminf(lo, w[i]);
        hi = fmaxf(hi, w[i]);
    }
    const float s = fmaxf(hi - lo, 1e-8f) / qmax;
    const float z = fminf(fmaxf(rintf(-lo / s), 0.0f), qmax);
    *s_out = s;
    *z_out = (uint8_t)z;
}

/* Clamping in float before the cast keeps a NaN or a huge quotient from being undefined. */
static inline uint8_t rtn_code(float w, float s, float z, float qmax) {
    return (uint8_t)fminf(fmaxf(rintf(w / s) + z, 0.0f), qmax);
}

static inline uint8_t sr_code(float w, float s, float z, float qmax, float u) {
    const float x = w / s;
    const float fl = floorf(x);
    const float up = u < x - fl ? 1.0f : 0.0f;
    return (uint8_t)fminf(fmaxf(fl + z + up, 0.0f), qmax);
}

/* Element i's uniform in [0, 1) of the group whose stream key is key (the file comment's rule). */
static inline float sr_uniform(uint64_t key, size_t i) {
    return (float)(mix64(key + (uint64_t)i * 0x9E3779B97F4A7C15ull) >> 40) * (1.0f / 16777216.0f);
}

static void i8_group_rtn(const float *w, size_t len, uint8_t *q, float *s, uint8_t *z) {
    minmax_params(w, len, 255.0f, s, z);
    const float sc = *s, zf = (float)*z;
    for (size_t i = 0; i < len; i++) q[i] = rtn_code(w[i], sc, zf, 255.0f);
}

static void i8_group_sr(const float *w, size_t len, uint64_t seed, uint64_t step, size_t g, uint8_t *q,
                        float *s, uint8_t *z) {
    minmax_params(w, len, 255.0f, s, z);
    const uint64_t key = oz_qw_stream_key(seed, step, (uint64_t)g);
    const float sc = *s, zf = (float)*z;
    for (size_t i = 0; i < len; i++) q[i] = sr_code(w[i], sc, zf, 255.0f, sr_uniform(key, i));
}

void oz_i8_quantize(const float *w, size_t n, uint8_t *q, float *s, uint8_t *z) {
    const size_t ng = oz_qw_groups(n);
#pragma omp parallel for schedule(static) if (n > OZ_QUANT_PAR_MIN)
    for (size_t g = 0; g < ng; g++) {
        const size_t i0 = g * OZ_QW_GROUP;
        const size_t len = n - i0 < OZ_QW_GROUP ? n - i0 : OZ_QW_GROUP;
        i8_group_rtn(w + i0, len, q + i0, s + g, z + g);
    }
}

void oz_i8_quantize_sr(const float *w, size_t n, uint64_t seed, uint64_t step, uint8_t *q, float *s,
                       uint8_t *z) {
    const size_t ng = oz_qw_groups(n);
#pragma omp parallel for schedule(static) if (n > OZ_QUANT_PAR_MIN)
    for (size_t g = 0; g < ng; g++) {
        const size_t i0 = g * OZ_QW_GROUP;
        const size_t len = n - i0 < OZ_QW_GROUP ? n - i0 : OZ_QW_GROUP;
        i8_group_sr(w + i0, len, seed, step, g, q + i0, s + g, z + g);
    }
}

void oz_i8_dequantize(const uint8_t *q, const float *s, const uint8_t *z, size_t n, float *w) {
#pragma omp parallel for schedule(static) if (n > OZ_QUANT_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        const size_t g = i / OZ_QW_GROUP;
        w[i] = ((float)q[i] - (float)z[g]) * s[g];
    }
}

void oz_i8_update_sr(uint8_t *q, float *s, uint8_t *z, size_t n, const float *delta, float decay,
                     float alpha, uint64_t seed, uint64_t step, uint64_t group0) {
    const size_t ng = oz_qw_groups(n);
#pragma omp parallel for schedule(static) if (n > OZ_QUANT_PAR_MIN)
    for (size_t g = 0; g < ng; g++) {
        const size_t i0 = g * OZ_QW_GROUP;
        const size_t len = n - i0 < OZ_QW_GROUP ? n - i0 : OZ_QW_GROUP;
        float wb[OZ_QW_GROUP];
        const float sc = s[g], zf = (float)z[g];
        for (size_t i = 0; i < len; i++) {
            const float w = ((float)q[i0 + i] - zf) * sc;
            wb[i] = w * decay + alpha * delta[i0 + i];
        }
        i8_group_sr(wb, len, seed, step, group0 + g, q + i0, s + g, z + g);
    }
}

void oz_i4_quantize(const float *w, size_t n, uint8_t *packed, float *s, uint8_t *z) {
    const size_t ng = oz_qw_groups(n);
#pragma omp parallel for schedule(static) if (n > OZ_QUANT_PAR_MIN)
    for (size_t g = 0; g < ng; g++) {
        const size_t i0 = g * OZ_QW_GROUP;
        const size_t len = n - i0 < OZ_QW_GROUP ? n - i0 : OZ_QW_GROUP;
        minmax_params(w + i0, len, 15.0f, s + g, z + g);
        const float sc = s[g], zf = (float)z[g];
        /* i0 is even, so this group's bytes start at i0 / 2 and belong to it alone. */
        for (size_t i = 0; i < len; i += 2) {
            const uint8_t lo = rtn_code(w[i0 + i], sc, zf, 15.0f);
            const uint8_t hi = i + 1 < len ? rtn_code(w[i0 + i + 1], sc, zf, 15.0f) : 0;
            packed[(i0 + i) / 2] = (uint8_t)(lo | (hi << 4));
        }
    }
}

void oz_i4_dequantize(const uint8_t *packed, const float *s, const uint8_t *z, size_t n, float *w) {
#pragma omp parallel for schedule(static) if (n > OZ_QUANT_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        const size_t g = i / OZ_QW_GROUP;
        const unsigned byte = packed[i / 2];
        const unsigned code = (i & 1) ? byte >> 4 : byte & 15u;
        w[i] = ((float)code - (float)z[g]) * s[g];
    }
}
