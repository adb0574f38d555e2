/* ggml's tensor types, as GGUF files store them: the type ids, their block sizes, decoding to fp32
 * (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K) and encoding from fp32 (F32, F16, BF16,
 * Q8_0, Q4_0). Blocks are little-endian byte layouts with no alignment, so every field is read
 * with memcpy.
 *
 * The block formats, as the ggml documentation describes them (d, dmin: f16 scales):
 *   Q8_0  32 values  {d, int8 q[32]}                       x = d q
 *   Q4_0  32 values  {d, u8 qs[16]}                        x[j] = d ((qs[j] & 15) - 8), x[j+16] = d ((qs[j] >> 4) - 8)
 *   Q4_1  32 values  {d, m, u8 qs[16]}                     x[j] = d (qs[j] & 15) + m, x[j+16] = d (qs[j] >> 4) + m
 *   Q4_K 256 values  {d, dmin, u8 scales[12], u8 qs[128]}  8 sub-blocks of 32 with a 6-bit scale
 *                    and a 6-bit min each (packed in scales[12]); x = d sc q - dmin mn
 *   Q5_K 256 values  {d, dmin, u8 scales[12], u8 qh[32], u8 qs[128]}  as Q4_K, plus a fifth bit
 *   Q6_K 256 values  {u8 ql[128], u8 qh[64], int8 scales[16], d}  16 sub-blocks of 16 with an int8
 *                    scale; x = d sc (q - 32), q 6 bits (4 low in ql, 2 high in qh) */
#ifndef OZ_NUMERIC_GGML_QUANT_H
#define OZ_NUMERIC_GGML_QUANT_H
#include <stddef.h>
#include <stdint.h>

enum {
    OZ_GGML_F32 = 0,
    OZ_GGML_F16 = 1,
    OZ_GGML_Q4_0 = 2,
    OZ_GGML_Q4_1 = 3,
    OZ_GGML_Q8_0 = 8,
    OZ_GGML_Q4_K = 12,
    OZ_GGML_Q5_K = 13,
    OZ_GGML_Q6_K = 14,
    OZ_GGML_BF16 = 30,
};

/* The ggml name of any type id the spec lists ("Q4_K", "IQ2_XXS", ...), NULL for an id it does not. */
const char *oz_ggml_type_name(uint32_t type);
/* The id for a name ounce can write, case-insensitive ("q8_0", "F16"); -1 when not one. */
int oz_ggml_type_from_name(const char *name);
/* Whether ounce decodes this type (and so knows its block size). */
int oz_ggml_type_readable(uint32_t type);
/* Whether ounce encodes it: F32, F16, BF16, Q8_0, Q4_0. */
int oz_ggml_type_writable(uint32_t type);
/* Values per block and bytes per block of a readable type; 0 otherwise. */
size_t oz_ggml_block_elems(uint32_t type);
size_t oz_ggml_block_bytes(uint32_t type);
/* Bytes of n values (n a multiple of the block size), 0 on overflow or for other types. */
size_t oz_ggml_row_bytes(uint32_t type, uint64_t n);

/* Decodes n values (a multiple of the type's block size) of a readable type. */
void oz_ggml_dequantize(uint32_t type, const void *src, float *dst, size_t n);
/* Encodes n values (a multiple of the block size) in a writable type: halves round to nearest
 * even; Q8_0 takes d = max|x| / 127 and q = x / d rounded to nearest (halves away from zero);
 * Q4_0 takes d = -m / 8, m the value of largest magnitude, and q = x / d + 8.5 truncated, at most
 * 15 (ggml's reference rounding, so a block encodes as llama.cpp's quantizer would). */
void oz_ggml_quantize(uint32_t type, const float *src, void *dst, size_t n);

#endif
