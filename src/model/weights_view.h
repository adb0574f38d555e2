/* What an optimizer needs of the weights it updates, without the model: where each parameter is
 * stored (fp32, INT8 codes, or bf16 rows reached through a row window). Pointers are backend memory.
 * A model gives one with oz_llama_weights; oz_weights_flat wraps a plain fp32 buffer (layout order). */
#ifndef OZ_WEIGHTS_VIEW_H
#define OZ_WEIGHTS_VIEW_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    void *owner;
    float *flat; /* when set: every parameter is fp32 at its layout offset here (the functions are unused) */
    /* Parameter i's fp32 weights; NULL when it is stored as INT8 codes or in bf16. */
    float *(*f32)(void *owner, int i);
    /* INT8 parameter i: its codes (numel), per-group scales and zero points; false otherwise. */
    bool (*int8)(void *owner, int i, uint8_t **q, float **scale, uint8_t **zero);
    /* Rows [row0, row0 + rows) of the embedding or head as fp32 to update in place (a bf16 tensor's
     * widened into a scratch valid until the next model call); rows_store rounds them back with
     * stochastic rounding from stream `key` (a no-op for fp32). */
    float *(*rows_load)(void *owner, int i, int row0, int rows);
    void (*rows_store)(void *owner, int i, int row0, int rows, uint64_t key);
    /* bf16 weights (no fp32 master): parameter i's bf16 values, rows *ld apart; false otherwise. */
    bool (*bf16)(void *owner, int i, uint16_t **w, size_t *ld);
} oz_weights_view;

static inline oz_weights_view oz_weights_flat(float *params) {
    oz_weights_view v = {0};
    v.flat = params;
    return v;
}

#endif
