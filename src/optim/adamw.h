/* AdamW over the model's flat parameter buffer: decoupled weight decay (never on norms), moments in
 * fp32 in the optimizer-state memory category. */
#ifndef OZ_ADAMW_H
#define OZ_ADAMW_H
#include "backend/backend.h"
#include "model/llama.h"

typedef struct {
    float beta1, beta2, eps, weight_decay;
} oz_adamw_hparams;

typedef struct {
    oz_adamw_hparams hp;
    const oz_param_layout *layout;
    float *m, *v;   /* (layout->total) each, backend memory */
    long step;      /* number of updates applied so far */
} oz_adamw;

oz_status oz_adamw_create(oz_adamw *opt, const oz_param_layout *layout, oz_adamw_hparams hp,
                          oz_backend *be, oz_arena *arena, oz_err *err);
void oz_adamw_destroy(oz_adamw *opt, oz_arena *arena);
/* One update of every parameter: params -= ... using grads * grad_scale. */
void oz_adamw_update(oz_adamw *opt, oz_backend *be, float *params, const float *grads, float lr,
                     float grad_scale);
/* Bytes of optimizer state for `n_params` floats (the analytic figure the planner uses). */
size_t oz_adamw_state_bytes(size_t n_params);

#endif
