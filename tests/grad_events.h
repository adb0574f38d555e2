/* Tests hand gradients to an optimizer the way the model's backward does: as events
 * (model/grad_sink.h). */
#ifndef OZ_TEST_GRAD_EVENTS_H
#define OZ_TEST_GRAD_EVENTS_H
#include "optim/optimizer.h"

/* Parameter i's whole gradient (g: its numel floats). */
static inline oz_status take_tensor(oz_optimizer *opt, int i, float *g, oz_err *err) {
    oz_grad_event ev = {.form = OZ_GRAD_TENSOR, .index = i, .grad = g};
    return oz_optimizer_take(opt, &ev, err);
}

/* Rows [row0, row0 + rows) of parameter i's gradient (g: those rows). */
static inline oz_status take_rows(oz_optimizer *opt, int i, int row0, int rows, float *g, oz_err *err) {
    oz_grad_event ev = {.form = OZ_GRAD_ROWS, .index = i, .grad = g, .row0 = row0, .rows = rows};
    return oz_optimizer_take(opt, &ev, err);
}

/* Every parameter's gradient from a buffer in layout order (g + offset). */
static inline oz_status take_all(oz_optimizer *opt, const oz_param_layout *lay, float *g, oz_err *err) {
    for (int i = 0; i < lay->n; i++) OZ_TRY(take_tensor(opt, i, g + lay->params[i].offset, err));
    return OZ_OK;
}

/* Model m's INT8 parameter i (codes, scales, zero points) through the optimizer's weights view. */
static inline bool model_int8(oz_llama *m, int i, uint8_t **q, float **scale, uint8_t **zero) {
    oz_weights_view v = oz_llama_weights(m);
    return v.int8 && v.int8(v.owner, i, q, scale, zero);
}

/* The model's gradients go to the optimizer, whose updates go to the model's weights. */
static inline void connect_model(oz_optimizer *opt, oz_llama *m) {
    oz_optimizer_bind_weights(opt, oz_llama_weights(m));
    oz_llama_set_grad_sink(m, oz_optimizer_sink(opt));
}

/* One training step on one batch as the trainer takes it (connect_model first): zero, begin,
 * forward + backward (events to the optimizer), what the backward left, apply at lr. */
static inline oz_status train_step(oz_llama *m, oz_optimizer *opt, const oz_llama_batch *b, int step, float lr,
                                   float grad_scale, double *loss_sum, long *n_targets, oz_err *err) {
    oz_llama_zero_grads(m);
    oz_optimizer_begin_step(opt, step, lr);
    OZ_TRY(oz_llama_forward_backward(m, b, grad_scale, loss_sum, n_targets, err));
    oz_llama_emit_accumulated(m);
    OZ_TRY(oz_optimizer_status(opt, err));
    oz_optimizer_apply(opt, lr, 1.0f);
    return OZ_OK;
}

#endif
