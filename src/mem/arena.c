/* Arena bookkeeping. Blocks are tracked in a singly linked list: allocations are few and large
 * (one per tensor group), so a list is simpler than a hash and plenty fast. */
#include "mem/arena.h"

#include <stdlib.h>
#include <string.h>

struct oz_arena_block {
    void *ptr;
    size_t bytes;
    oz_mem_category cat;
    oz_arena_block *next;
};

static const char *const category_names[OZ_MEM_NCATEGORIES] = {
    "weights", "grads", "optimizer", "projections", "quant_scales", "activations", "scratch",
};

const char *oz_mem_category_name(oz_mem_category cat) {
    return (unsigned)cat < OZ_MEM_NCATEGORIES ? category_names[cat] : "unknown";
}

static void *host_alloc(void *ctx, size_t bytes) {
    (void)ctx;
    size_t rounded = (bytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (p) memset(p, 0, rounded ? rounded : 64);
    return p;
}

static void host_free(void *ctx, void *ptr) {
    (void)ctx;
    free(ptr);
}

oz_allocator oz_host_allocator(void) { return (oz_allocator){host_alloc, host_free, NULL}; }

void oz_arena_init(oz_arena *arena, oz_allocator allocator) {
    memset(arena, 0, sizeof *arena);
    arena->allocator = allocator;
}

void oz_arena_destroy(oz_arena *arena) {
    oz_arena_block *b = arena->blocks;
    while (b) {
        oz_arena_block *next = b->next;
        arena->allocator.free(arena->allocator.ctx, b->ptr);
        free(b);
        b = next;
    }
    arena->blocks = NULL;
    memset(arena->current, 0, sizeof arena->current);
    arena->current_total = 0;
    arena->n_live = 0;
}

oz_status oz_arena_alloc(oz_arena *arena, oz_mem_category cat, size_t bytes, const char *what,
                         void **out, oz_err *err) {
    *out = NULL;
    if ((unsigned)cat >= OZ_MEM_NCATEGORIES)
        return oz_fail(err, OZ_ERR_INTERNAL, "arena: bad memory category %d for %s", (int)cat, what);
    oz_arena_block *b = malloc(sizeof *b);
    void *p = b ? arena->allocator.alloc(arena->allocator.ctx, bytes) : NULL;
    if (!p) {
        free(b);
        return oz_fail(err, OZ_ERR_NOMEM, "out of memory allocating %.1f MiB for %s (%s)",
                       (double)bytes / (1 << 20), what, oz_mem_category_name(cat));
    }
    b->ptr = p;
    b->bytes = bytes;
    b->cat = cat;
    b->next = arena->blocks;
    arena->blocks = b;
    arena->n_live++;
    arena->current[cat] += bytes;
    arena->current_total += bytes;
    if (arena->current[cat] > arena->peak[cat]) arena->peak[cat] = arena->current[cat];
    if (arena->current_total > arena->peak_total) arena->peak_total = arena->current_total;
    if (bytes > arena->largest[cat]) arena->largest[cat] = bytes;
    *out = p;
    return OZ_OK;
}

void oz_arena_free(oz_arena *arena, void *ptr) {
    if (!ptr) return;
    for (oz_arena_block **link = &arena->blocks; *link; link = &(*link)->next) {
        oz_arena_block *b = *link;
        if (b->ptr != ptr) continue;
        arena->current[b->cat] -= b->bytes;
        arena->current_total -= b->bytes;
        arena->n_live--;
        *link = b->next;
        arena->allocator.free(arena->allocator.ctx, b->ptr);
        free(b);
        return;
    }
}


void oz_arena_note_transient(oz_arena *arena, oz_mem_category cat, size_t bytes) {
    if ((unsigned)cat >= OZ_MEM_NCATEGORIES) return;
    if (arena->current[cat] + bytes > arena->peak[cat]) arena->peak[cat] = arena->current[cat] + bytes;
    if (arena->current_total + bytes > arena->peak_total) arena->peak_total = arena->current_total + bytes;
}
