/* Quantization primitives for memory-light training (fp32 CPU reference; a CUDA port is tested
 * against these, so every format below is specified down to the rounding rule).
 *
 *  1. q8: 8-bit block-wise dynamic quantization of the Adam moments (bitsandbytes-style, built
 *     from the description): per block of OZ_Q8_BLOCK elements one fp32 absmax, and per element
 *     one uint8 code = index into a sorted 256-entry code map of values in [-1, 1] ([0, 1] for the
 *     unsigned map), dense near 0. Element value = map[code] * absmax.
 *  2. i8: Q-GaLore INT8 weights. Groups of OZ_QW_GROUP consecutive elements (flattened row-major,
 *     the last group may be shorter), asymmetric unsigned with a zero point, range always
 *     containing 0; round-to-nearest or stochastic rounding.
 *  3. i4: the same quantizer with 4 bits (levels 0..15) for GaLore projection matrices, two codes
 *     per byte.
 *
 * Common rules. Inputs must be finite (the trainer rejects NaN/Inf gradients before any step; a
 * NaN here gives some valid code, never undefined behaviour). "rint" is round-half-to-even in
 * fp32 (C rintf / CUDA rintf in the default rounding mode). All arithmetic is fp32, evaluated
 * exactly as written, without FMA contraction (gcc in -std=c11 mode does not contract; a CUDA
 * port that wants bitwise agreement must use __fmul_rn/__fadd_rn or -fmad=false). Nothing here
 * allocates, prints or keeps state; every function may run OpenMP threads over blocks/groups and
 * its result never depends on the thread count. A pointer argument may be NULL only when n == 0.
 *
 * ---- q8 code maps (built at runtime into a caller-owned table; the CUDA port should upload the
 * table built here rather than rebuild it) ----
 * A code's magnitude field k of B bits (B = 7 for the signed map, 8 for the unsigned one) is read
 * as: e = number of leading zero bits of k within B bits (a decimal exponent), then one indicator
 * 1-bit, then f = B - 1 - e linear fraction bits holding F (0 <= F < 2^f):
 *     k == 0  -> 0
 *     k != 0  -> 10^-e * (0.1 + 0.9 * (F + 1) / 2^f)    (computed in double, rounded to float)
 * So each decade [10^-(e+1), 10^-e] is split linearly into 2^f steps of 0.9*10^-e / 2^f, decades
 * join without a gap, the largest value is exactly 1, and the smallest nonzero is 10^-(B-1).
 *  - unsigned map (second moment, values >= 0): map[k] = value(k), k = 0..255, strictly
 *    increasing; 0 -> code 0, 1 -> code 255. Largest gap 0.9/128 (the top decade).
 *  - signed map (first moment): sign bit + 7-bit magnitude field k. Sorted by value:
 *    map[127 - k] = -value(k) and map[128 + k] = +value(k), k = 0..127, so map[0] = -1,
 *    map[255] = +1 and both map[127] and map[128] are 0 (the "-0" code). The quantizer emits 127
 *    for 0 and never emits 128 (which still decodes to 0). Largest gap 0.9/64.
 * Quantize: per block absmax = max |x| (0 for an all-zero block); y = x / absmax (y = 0 when
 * absmax == 0); code = oz_q8_encode(y, map), which is
 *   c = oz_q8_nearest(y, map): the index of the map value nearest to y, found by binary search
 *       for j = the first index with map[j] >= y (255 if none), then taking j - 1 when j > 0 and
 *       (y - map[j-1]) <= (map[j] - y) in fp32: ties go to the lower index;
 *   then, if map[c] == 0 but y != 0, c moves to the nonzero code of y's sign closest to 0
 *       (signed: 129 or 126; unsigned: 1). So zero is stored only for zero, and a nonzero second
 *       moment is never read back as 0: with m != 0 that would make the next step divide by eps
 *       alone (measured: parameters jumping by 100 x lr on a quadratic). The error stays within
 *       half the largest gap, since the smallest nonzero magnitude (1e-6, 1e-7) is below it.
 * Dequantize: x = map[code] * absmax.
 * Storage for n elements: n code bytes + oz_q8_blocks(n) floats of absmax.
 *
 * ---- i8 / i4 min-max quantizer (QMAX = 255 for i8, 15 for i4) ----
 * Per group: lo = min(min_g, 0), hi = max(max_g, 0)  (0 always in range: a single-signed group
 * must not clamp its zero point and saturate, the bug the Q-GaLore/AWQ quantizer has)
 *     s = max(hi - lo, 1e-8) / QMAX                         (fp32, stored in float s[])
 *     z = clamp(rint(-lo / s), 0, QMAX)                     (integer, stored in uint8_t z[])
 *  RTN: q = clamp(rint(w / s) + z, 0, QMAX)
 *  SR:  x = w / s; q = clamp(floor(x) + z + (u < x - floor(x)), 0, QMAX), u uniform in [0,1)
 *  dequantize: w = ((float)q - (float)z) * s                (so w == 0 decodes to exactly 0)
 * RTN error <= s/2 and SR error < s per element (up to fp32 rounding); SR is unbiased:
 * E[dequantize] = w for every w inside [lo, hi].
 * SR randomness, so results are independent of the thread count and of how the groups are
 * split: element i (0-based) of group g (0-based) of a call with (seed, step) uses
 *     u = (mix(key + i * 0x9E3779B97F4A7C15) >> 40) * 2^-24,
 *     key = oz_qw_stream_key(seed, step, g) = mix(mix(mix(seed) ^ step) ^ g),
 *     mix(x) = the splitmix64 output function of x + 0x9E3779B97F4A7C15: z = (z ^ z>>30) *
 *     0xBF58476D1CE4E5B9; z = (z ^ z>>27) * 0x94D049BB133111EB; z ^ z>>31
 * i.e. the group's splitmix64 stream from state key, its i-th output for element i: counter-based,
 * so every element's draw is computed directly (a GPU thread per element, no serial stream). The
 * caller must pass a different step (or seed) each time it requantizes, or the same noise repeats.
 *
 * i8 storage: n code bytes (element i in byte i) + groups floats s + groups bytes z.
 * i4 storage: (n + 1) / 2 code bytes, element 2i in the low nibble and 2i+1 in the high nibble
 * of byte i (the high nibble of the last byte is 0 when n is odd) + groups floats s + groups
 * bytes z. OZ_QW_GROUP is even, so groups never share a byte.
 */
#ifndef OZ_QUANT_H
#define OZ_QUANT_H
#include <stddef.h>
#include <stdint.h>

#include "numeric/adamw.h"

#define OZ_Q8_BLOCK 256     /* elements per absmax block of the 8-bit moments */
#define OZ_Q8_MIN_SIZE 4096 /* tensors with fewer elements keep fp32 moments: the absmax and the
                               quantization noise are not worth it there (caller's choice) */
#define OZ_QW_GROUP 256     /* elements per (scale, zero point) group of the i8 / i4 formats */

/* ---- q8: dynamic 8-bit moments ---- */
void oz_q8_map_signed(float map[256]);
void oz_q8_map_unsigned(float map[256]);
/* Index of the map value nearest to y (rule in the file comment). */
uint8_t oz_q8_nearest(float y, const float map[256]);
/* The code the quantizer stores: oz_q8_nearest, except that a nonzero y never gets a zero code
 * (it takes the nonzero code of its sign closest to 0). */
uint8_t oz_q8_encode(float y, const float map[256]);
size_t oz_q8_blocks(size_t n); /* ceil(n / OZ_Q8_BLOCK) */
/* codes: (n), absmax: (oz_q8_blocks(n)) */
void oz_q8_quantize(const float *x, size_t n, const float map[256], uint8_t *codes, float *absmax);
void oz_q8_dequantize(const uint8_t *codes, const float *absmax, size_t n, const float map[256],
                      float *x);
/* The all-zero state (fresh Adam moments) without an fp32 buffer of zeros. */
void oz_q8_zero(uint8_t *codes, float *absmax, size_t n, const float map[256]);
/* Bytes of both Adam moments of n elements in q8: 2 * (n + 4 * oz_q8_blocks(n)). */
size_t oz_q8_state_bytes(size_t n);
/* One fused AdamW step with q8 moments: per block, dequantize m (signed map) and v (unsigned map),
 * apply exactly the update of the fp32 backend's adamw_step (torch.optim.AdamW order):
 *     g = grad * grad_scale; p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g g;
 *     p -= (lr / bc1) * (m / (sqrt(v) / sqrt(bc2) + eps))
 * using the fresh fp32 m and v, then requantize them with the block's new absmax. Only one
 * block of fp32 moments per thread ever exists. From the zero state the first step therefore
 * equals the fp32 step bitwise. */
void oz_adam8bit_step(float *param /* (n) */, const float *grad /* (n) */, uint8_t *m_codes /* (n) */,
                      float *m_absmax /* (blocks) */, uint8_t *v_codes /* (n) */,
                      float *v_absmax /* (blocks) */, size_t n, const float map_signed[256],
                      const float map_unsigned[256], const oz_adamw_args *args);

/* ---- i8 / i4 weights and projections ---- */
size_t oz_qw_groups(size_t n); /* ceil(n / OZ_QW_GROUP) */
/* Rows of a row-major tensor with `cols` columns that hold whole groups of OZ_QW_GROUP elements
 * (also whole 8-bit blocks: OZ_Q8_BLOCK is the same 256), so a block of a multiple of them starts
 * on a group: OZ_QW_GROUP / gcd(cols, OZ_QW_GROUP). */
size_t oz_qw_row_unit(size_t cols);
/* Rows per block of a (rows x cols) tensor processed in blocks of about `target` elements: the
 * most multiples of oz_qw_row_unit(cols) that fit (at least one unit), never more than rows. */
size_t oz_qw_block_rows(size_t rows, size_t cols, size_t target);
uint64_t oz_qw_stream_key(uint64_t seed, uint64_t step, uint64_t group);

/* q: (n), s: (groups), z: (groups) */
void oz_i8_quantize(const float *w, size_t n, uint8_t *q, float *s, uint8_t *z);
void oz_i8_quantize_sr(const float *w, size_t n, uint64_t seed, uint64_t step, uint8_t *q, float *s,
                       uint8_t *z);
void oz_i8_dequantize(const uint8_t *q, const float *s, const uint8_t *z, size_t n, float *w);
/* In place, per group: w = dequantize(q); w = w * decay + alpha * delta (fp32, in that order);
 * then new s, z from the updated group and SR requantization with (seed, step). Bitwise the same
 * as dequantize + that arithmetic + oz_i8_quantize_sr, without an fp32 copy of the weight.
 * decay = 1 - lr * weight_decay gives decoupled weight decay applied before the update.
 * group0 is the index of the first group in the SR stream numbering: updating a tensor slice by
 * slice (slices starting at multiples of OZ_QW_GROUP elements, with q, s, z, delta pointing at the
 * slice and group0 = its first element / OZ_QW_GROUP) gives bitwise the whole-tensor result. */
void oz_i8_update_sr(uint8_t *q, float *s, uint8_t *z, size_t n, const float *delta /* (n) */,
                     float decay, float alpha, uint64_t seed, uint64_t step, uint64_t group0);
/* n + 5 * oz_qw_groups(n) */
size_t oz_i8_bytes(size_t n);

/* ---- bf16 weights updated with stochastic rounding (qgalore's embedding and LM head) ----
 * Element i of a tensor (0-based over the whole tensor) rounds x with stream key `key` as
 *     b = x's fp32 bits; r = mix(key + i * 0x9E3779B97F4A7C15) >> 48 (16 random bits);
 *     bf16 = (b + r) >> 16
 * so the magnitude rounds up with probability (b & 0xFFFF) / 65536: unbiased, E[bf16] = x.
 * NaN becomes a quiet NaN (as the round-to-nearest conversion), +-Inf stays. Counter-based like
 * the INT8 draws: any split of a tensor into slices (passing each slice's first index) gives the
 * whole tensor's result. */
uint16_t oz_bf16_sr(float x, uint64_t key, uint64_t i);
void oz_bf16_round_sr(const float *x, size_t n, uint64_t key, uint64_t i0, uint16_t *out);

/* packed: ((n + 1) / 2), s: (groups), z: (groups) */
void oz_i4_quantize(const float *w, size_t n, uint8_t *packed, float *s, uint8_t *z);
void oz_i4_dequantize(const uint8_t *packed, const float *s, const uint8_t *z, size_t n, float *w);
/* (n + 1) / 2 + 5 * oz_qw_groups(n) */
size_t oz_i4_bytes(size_t n);

#endif
