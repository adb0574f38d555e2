/* ggml's block formats (see ggml_quant.h), written from their description in the GGUF/ggml
 * documentation. */
#include "numeric/ggml_quant.h"

#include <ctype.h>
#include <math.h>
#include <string.h>

#include "numeric/half.h"

/* The spec's ggml_type ids 0..39; NULL where an id was retired. */
static const char *const type_names[40] = {
    "F32",   "F16",   "Q4_0",    "Q4_1",   NULL,    NULL,   "Q5_0",  "Q5_1",   "Q8_0",   "Q8_1",
    "Q2_K",  "Q3_K",  "Q4_K",    "Q5_K",   "Q6_K",  "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
    "IQ4_NL", "IQ3_S", "IQ2_S",  "IQ4_XS", "I8",    "I16",  "I32",   "I64",    "F64",    "IQ1_M",
    "BF16",  NULL,    NULL,      NULL,     "TQ1_0", "TQ2_0", NULL,   NULL,     NULL,     "MXFP4",
};

const char *oz_ggml_type_name(uint32_t type) {
    return type < sizeof type_names / sizeof type_names[0] ? type_names[type] : NULL;
}

int oz_ggml_type_readable(uint32_t type) { return oz_ggml_block_elems(type) != 0; }

int oz_ggml_type_writable(uint32_t type) {
    return type == OZ_GGML_F32 || type == OZ_GGML_F16 || type == OZ_GGML_BF16 || type == OZ_GGML_Q8_0 ||
           type == OZ_GGML_Q4_0;
}

int oz_ggml_type_from_name(const char *name) {
    static const uint32_t writable[] = {OZ_GGML_F32, OZ_GGML_F16, OZ_GGML_BF16, OZ_GGML_Q8_0, OZ_GGML_Q4_0};
    for (size_t i = 0; i < sizeof writable / sizeof writable[0]; i++) {
        const char *n = type_names[writable[i]];
        size_t k = 0;
        while (n[k] && name[k] && toupper((unsigned char)name[k]) == n[k]) k++;
        if (!n[k] && !name[k]) return (int)writable[i];
    }
    return -1;
}

size_t oz_ggml_block_elems(uint32_t type) {
    switch (type) {
    case OZ_GGML_F32:
    case OZ_GGML_F16:
    case OZ_GGML_BF16: return 1;
    case OZ_GGML_Q4_0:
    case OZ_GGML_Q4_1:
    case OZ_GGML_Q8_0: return 32;
    case OZ_GGML_Q4_K:
    case OZ_GGML_Q5_K:
    case OZ_GGML_Q6_K: return 256;
    default: return 0;
    }
}

size_t oz_ggml_block_bytes(uint32_t type) {
    switch (type) {
    case OZ_GGML_F32: return 4;
    case OZ_GGML_F16:
    case OZ_GGML_BF16: return 2;
    case OZ_GGML_Q4_0: return 2 + 16;
    case OZ_GGML_Q4_1: return 2 + 2 + 16;
    case OZ_GGML_Q8_0: return 2 + 32;
    case OZ_GGML_Q4_K: return 2 + 2 + 12 + 128;
    case OZ_GGML_Q5_K: return 2 + 2 + 12 + 32 + 128;
    case OZ_GGML_Q6_K: return 128 + 64 + 16 + 2;
    default: return 0;
    }
}

size_t oz_ggml_row_bytes(uint32_t type, uint64_t n) {
    size_t be = oz_ggml_block_elems(type), bb = oz_ggml_block_bytes(type), out;
    if (!be || n % be != 0 || n / be > SIZE_MAX) return 0;
    if (__builtin_mul_overflow((size_t)(n / be), bb, &out)) return 0;
    return out;
}

static float f16_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return oz_f16_to_f32(h);
}

static void put_f16(uint8_t *p, float v) {
    uint16_t h = oz_f32_to_f16(v);
    memcpy(p, &h, 2);
}

/* Sub-block j's (0..7) 6-bit scale and min in a K-quant's 12 packed bytes: the first four
 * sub-blocks keep theirs in the low 6 bits of bytes 0..3 (scales) and 4..7 (mins); the last four
 * keep their low 4 bits in the nibbles of bytes 8..11 and their top 2 bits in the spare top bits
 * of bytes 0..3 (scales) and 4..7 (mins). */
static void k_scale_min(const uint8_t *s, int j, float *sc, float *mn) {
    if (j < 4) {
        *sc = (float)(s[j] & 63);
        *mn = (float)(s[j + 4] & 63);
    } else {
        *sc = (float)((s[j + 4] & 15) | ((s[j - 4] >> 6) << 4));
        *mn = (float)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

static void deq_q8_0(const uint8_t *b, float *y) {
    float d = f16_at(b);
    for (int j = 0; j < 32; j++) y[j] = d * (float)(int8_t)b[2 + j];
}

static void deq_q4_0(const uint8_t *b, float *y) {
    float d = f16_at(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)((qs[j] & 15) - 8);
        y[j + 16] = d * (float)((qs[j] >> 4) - 8);
    }
}

static void deq_q4_1(const uint8_t *b, float *y) {
    float d = f16_at(b), m = f16_at(b + 2);
    const uint8_t *qs = b + 4;
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)(qs[j] & 15) + m;
        y[j + 16] = d * (float)(qs[j] >> 4) + m;
    }
}

/* Q4_K: 4 chunks of 64 values; chunk c's 32 bytes hold sub-block 2c in their low nibbles and
 * sub-block 2c+1 in their high nibbles. */
static void deq_q4_k(const uint8_t *b, float *y) {
    float d = f16_at(b), dmin = f16_at(b + 2);
    const uint8_t *sc = b + 4, *qs = b + 16;
    for (int c = 0; c < 4; c++, qs += 32, y += 64) {
        float s0, m0, s1, m1;
        k_scale_min(sc, 2 * c, &s0, &m0);
        k_scale_min(sc, 2 * c + 1, &s1, &m1);
        float d0 = d * s0, o0 = dmin * m0, d1 = d * s1, o1 = dmin * m1;
        for (int l = 0; l < 32; l++) {
            y[l] = d0 * (float)(qs[l] & 15) - o0;
            y[l + 32] = d1 * (float)(qs[l] >> 4) - o1;
        }
    }
}

/* Q5_K: Q4_K's nibbles plus a fifth bit: value l of chunk c takes bit 2c (low sub-block) or
 * bit 2c+1 (high) of qh[l] as 16. */
static void deq_q5_k(const uint8_t *b, float *y) {
    float d = f16_at(b), dmin = f16_at(b + 2);
    const uint8_t *sc = b + 4, *qh = b + 16, *qs = b + 48;
    for (int c = 0; c < 4; c++, qs += 32, y += 64) {
        float s0, m0, s1, m1;
        k_scale_min(sc, 2 * c, &s0, &m0);
        k_scale_min(sc, 2 * c + 1, &s1, &m1);
        float d0 = d * s0, o0 = dmin * m0, d1 = d * s1, o1 = dmin * m1;
        uint8_t lo = (uint8_t)(1u << (2 * c)), hi = (uint8_t)(2u << (2 * c));
        for (int l = 0; l < 32; l++) {
            y[l] = d0 * (float)((qs[l] & 15) + ((qh[l] & lo) ? 16 : 0)) - o0;
            y[l + 32] = d1 * (float)((qs[l] >> 4) + ((qh[l] & hi) ? 16 : 0)) - o1;
        }
    }
}

/* Q6_K: two halves of 128 values; in each, 64 ql bytes and 32 qh bytes. Value l (0..31) of the
 * four quarters takes: quarter 0 the low nibble of ql[l], 1 the low nibble of ql[l+32], 2 the
 * high nibble of ql[l], 3 the high nibble of ql[l+32]; and bits 0-1, 2-3, 4-5, 6-7 of qh[l] as its
 * top two bits. Each 16 values share an int8 scale. */
static void deq_q6_k(const uint8_t *b, float *y) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = f16_at(b + 208);
    for (int half = 0; half < 2; half++, ql += 64, qh += 32, sc += 8, y += 128) {
        for (int l = 0; l < 32; l++) {
            int s = l / 16;
            int q0 = ((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32;
            int q1 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
            int q2 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            int q3 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = d * (float)sc[s] * (float)q0;
            y[l + 32] = d * (float)sc[s + 2] * (float)q1;
            y[l + 64] = d * (float)sc[s + 4] * (float)q2;
            y[l + 96] = d * (float)sc[s + 6] * (float)q3;
        }
    }
}

void oz_ggml_dequantize(uint32_t type, const void *src, float *dst, size_t n) {
    const uint8_t *s = src;
    size_t be = oz_ggml_block_elems(type), bb = oz_ggml_block_bytes(type);
    if (!be) return;
    switch (type) {
    case OZ_GGML_F32: memcpy(dst, s, n * sizeof *dst); return;
    case OZ_GGML_F16:
        for (size_t i = 0; i < n; i++) dst[i] = f16_at(s + 2 * i);
        return;
    case OZ_GGML_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = oz_bf16_to_f32(h);
        }
        return;
    default: break;
    }
    for (size_t k = 0; k < n / be; k++, s += bb, dst += be) {
        switch (type) {
        case OZ_GGML_Q8_0: deq_q8_0(s, dst); break;
        case OZ_GGML_Q4_0: deq_q4_0(s, dst); break;
        case OZ_GGML_Q4_1: deq_q4_1(s, dst); break;
        case OZ_GGML_Q4_K: deq_q4_k(s, dst); break;
        case OZ_GGML_Q5_K: deq_q5_k(s, dst); break;
        case OZ_GGML_Q6_K: deq_q6_k(s, dst); break;
        default: return;
        }
    }
}

static void quant_q8_0(const float *x, uint8_t *b) {
    float amax = 0;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
    float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
    put_f16(b, d);
    for (int j = 0; j < 32; j++) b[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
}

static void quant_q4_0(const float *x, uint8_t *b) {
    float amax = 0, m = 0;
    for (int j = 0; j < 32; j++)
        if (fabsf(x[j]) > amax) {
            amax = fabsf(x[j]);
            m = x[j];
        }
    float d = m / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
    put_f16(b, d);
    for (int j = 0; j < 16; j++) {
        int lo = (int)(x[j] * id + 8.5f), hi = (int)(x[j + 16] * id + 8.5f);
        lo = lo > 15 ? 15 : lo < 0 ? 0 : lo;
        hi = hi > 15 ? 15 : hi < 0 ? 0 : hi;
        b[2 + j] = (uint8_t)(lo | (hi << 4));
    }
}

void oz_ggml_quantize(uint32_t type, const float *src, void *dst, size_t n) {
    uint8_t *d = dst;
    switch (type) {
    case OZ_GGML_F32: memcpy(d, src, n * sizeof *src); return;
    case OZ_GGML_F16:
        for (size_t i = 0; i < n; i++) put_f16(d + 2 * i, src[i]);
        return;
    case OZ_GGML_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = oz_f32_to_bf16(src[i]);
            memcpy(d + 2 * i, &h, 2);
        }
        return;
    case OZ_GGML_Q8_0:
        for (size_t k = 0; k < n / 32; k++) quant_q8_0(src + 32 * k, d + 34 * k);
        return;
    case OZ_GGML_Q4_0:
        for (size_t k = 0; k < n / 32; k++) quant_q4_0(src + 32 * k, d + 18 * k);
        return;
    default: return;
    }
}
