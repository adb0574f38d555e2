/* How gradients leave the model: the mode a run's gradients flow in, decided once (train/options.c)
 * and read by both the model and the optimizer, and the events the backward emits to one sink.
 * docs/design.md ("The gradient path") has the picture. */
#ifndef OZ_GRAD_SINK_H
#define OZ_GRAD_SINK_H
#include <stdbool.h>

typedef struct {
    /* No full gradient buffer: a layer's gradients are emitted when its backward ends (or sooner,
     * with immediate) and their memory is reused by the next layer. */
    bool per_layer;
    /* With per_layer: each tensor is emitted the moment its gradient is complete, its weight no
     * longer read by this backward, and updated there (no clipping, no accumulation). */
    bool immediate;
    /* With immediate and an untied head: the embedding's and head's gradients exist one block of
     * vocabulary rows at a time (oz_llama_vocab_block_rows) and are emitted as OZ_GRAD_ROWS. */
    bool vocab_blocks;
    /* With immediate: bitmask over OZ_M_* (1u << matrix) of the dense layer matrices whose gradient
     * G = dy^T x is never formed but emitted as its factors (OZ_GRAD_FACTORS). */
    unsigned factored;
    int tokens; /* the most rows an OZ_GRAD_FACTORS event has (batch x seq) */
} oz_grad_mode;

typedef enum {
    OZ_GRAD_TENSOR,  /* grad: parameter `index`'s gradient (numel floats); NULL after its factors */
    OZ_GRAD_ROWS,    /* grad: rows [row0, row0 + rows) of a 2-D parameter's gradient, blocks in order */
    OZ_GRAD_FACTORS, /* G = dy^T x: dy (rows, out) and x (rows, in), leading dimensions ldy, ldx */
} oz_grad_form;

/* Every pointer is backend memory, valid only during the take call. */
typedef struct {
    oz_grad_form form;
    int index;           /* parameter, layout order */
    float *grad;         /* TENSOR, ROWS */
    /* TENSOR: this backward reads neither the buffer nor the weight again, so the sink may build
     * its update in the buffer and apply it at once (immediate layer tensors). */
    bool scratch;
    /* TENSOR: the gradient accumulated so far in a step of several micro-batches (emitted after the
     * first one): for what needs the first micro-batch's gradient (a subspace refresh), not an update. */
    bool partial;
    int row0, rows;      /* ROWS; FACTORS: rows is the factors' row count */
    const float *dy, *x; /* FACTORS: the weight is still read after this event (for dX) */
    int ldy, ldx;
} oz_grad_event;

/* The model calls take once per event, in backward order; the sink keeps its own first error. */
typedef struct {
    void (*take)(void *self, const oz_grad_event *ev);
    void *self;
} oz_grad_sink;

#endif
