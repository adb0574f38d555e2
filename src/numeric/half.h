/* bf16 and f16 <-> f32 conversions on bit patterns (uint16_t), round to nearest even. */
#ifndef OZ_NUMERIC_HALF_H
#define OZ_NUMERIC_HALF_H
#include <stdint.h>
#include <string.h>

static inline float oz_bits_to_f32(uint32_t x) {
    float f;
    memcpy(&f, &x, sizeof f);
    return f;
}

static inline uint32_t oz_f32_to_bits(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    return x;
}

static inline float oz_bf16_to_f32(uint16_t h) { return oz_bits_to_f32((uint32_t)h << 16); }

/* Round to nearest, ties to even; NaN stays a (quiet) NaN rather than rounding into Inf. */
static inline uint16_t oz_f32_to_bf16(float f) {
    uint32_t x = oz_f32_to_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x0040u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

static inline float oz_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) return oz_bits_to_f32(sign | 0x7f800000u | (m << 13));
    if (e != 0) return oz_bits_to_f32(sign | ((e + 112u) << 23) | (m << 13));
    if (m == 0) return oz_bits_to_f32(sign);
    /* Subnormal m * 2^-24: shift the leading one into the implicit-bit position. */
    e = 113;
    while (!(m & 0x400u)) {
        m <<= 1;
        e--;
    }
    return oz_bits_to_f32(sign | (e << 23) | ((m & 0x3ffu) << 13));
}

/* Round to nearest, ties to even, including into and out of the subnormal range; values at or
 * beyond 65520 become Inf; NaN stays a quiet NaN. */
static inline uint16_t oz_f32_to_f16(float f) {
    uint32_t x = oz_f32_to_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);
    if (ax >= 0x38800000u) { /* normal in f16: rebias the exponent, round away 13 bits */
        uint32_t r = ax - 0x38000000u, h = r >> 13, rem = r & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
        return (uint16_t)(sign | h);
    }
    if (ax <= 0x33000000u) return sign; /* at most 2^-25: ties to even go to zero */
    /* Subnormal result: the value in units of 2^-24 is the 24-bit significand >> (126 - e).
     * A carry out of the top lands exactly on the smallest normal encoding 0x0400. */
    uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u, shift = 126u - e;
    uint32_t h = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

#endif
