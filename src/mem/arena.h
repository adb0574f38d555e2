/* Every large allocation goes through an arena with a category, so each run can report the peak
 * bytes of weights, gradients, optimizer state, ... and the planner can predict the same table.
 * The arena does not own a heap of its own: it wraps an allocator (host memory for the CPU
 * backend, device memory for CUDA) and keeps the books. */
#ifndef OZ_ARENA_H
#define OZ_ARENA_H
#include <stddef.h>
#include <stdint.h>
#include "util/err.h"

typedef enum {
    OZ_MEM_WEIGHTS = 0,
    OZ_MEM_GRADS,
    OZ_MEM_OPTIM,        /* optimizer states (Adam moments, ...) */
    OZ_MEM_PROJ,         /* low-rank projection matrices */
    OZ_MEM_QSCALES,      /* quantization scales and zero points */
    OZ_MEM_ACTIVATIONS,
    OZ_MEM_SCRATCH,
    OZ_MEM_NCATEGORIES
} oz_mem_category;

/* Name used in progress lines and in the JSON `peak_bytes` object. */
const char *oz_mem_category_name(oz_mem_category cat);

typedef struct {
    void *(*alloc)(void *ctx, size_t bytes);  /* returns NULL on failure */
    void (*free)(void *ctx, void *ptr);
    void *ctx;
} oz_allocator;

typedef struct oz_arena_block oz_arena_block;

typedef struct {
    oz_allocator allocator;
    oz_arena_block *blocks;                    /* live allocations, to find size/category on free */
    size_t current[OZ_MEM_NCATEGORIES];
    size_t peak[OZ_MEM_NCATEGORIES];           /* per-category high-water mark */
    size_t largest[OZ_MEM_NCATEGORIES];        /* largest single allocation ever made */
    size_t current_total, peak_total;          /* total peak is the peak of the sum, not the sum of peaks */
    size_t n_live;
} oz_arena;

/* Host allocator: 64-byte aligned, zero-initialised (calloc semantics keep runs deterministic). */
oz_allocator oz_host_allocator(void);

void oz_arena_init(oz_arena *arena, oz_allocator allocator);
/* Frees every live block. */
void oz_arena_destroy(oz_arena *arena);
/* Allocates `bytes` in `cat`; fails with OZ_ERR_NOMEM and a message naming `what`. */
oz_status oz_arena_alloc(oz_arena *arena, oz_mem_category cat, size_t bytes, const char *what,
                         void **out, oz_err *err);
void oz_arena_free(oz_arena *arena, void *ptr);
/* Records `bytes` of `cat` that something outside the arena (a LAPACK workspace) holds for a
 * moment: the peaks include it, the current usage does not. */
void oz_arena_note_transient(oz_arena *arena, oz_mem_category cat, size_t bytes);

#endif
