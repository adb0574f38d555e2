/* AdamW: one backend call per tensor, so norms can skip weight decay. */
#include "optim/adamw.h"

#include <math.h>

oz_status oz_adamw_create(oz_adamw *opt, const oz_param_layout *layout, oz_adamw_hparams hp,
                          oz_backend *be, oz_arena *arena, oz_err *err) {
    opt->hp = hp;
    opt->layout = layout;
    opt->step = 0;
    opt->m = opt->v = NULL;
    void *p;
    OZ_TRY(oz_arena_alloc(arena, OZ_MEM_OPTIM, layout->total * sizeof(float), "AdamW first moment", &p, err));
    opt->m = p;
    OZ_TRY(oz_arena_alloc(arena, OZ_MEM_OPTIM, layout->total * sizeof(float), "AdamW second moment", &p, err));
    opt->v = p;
    be->fill(be, opt->m, 0.0f, layout->total);
    be->fill(be, opt->v, 0.0f, layout->total);
    return OZ_OK;
}

void oz_adamw_destroy(oz_adamw *opt, oz_arena *arena) {
    oz_arena_free(arena, opt->m);
    oz_arena_free(arena, opt->v);
    opt->m = opt->v = NULL;
}

void oz_adamw_update(oz_adamw *opt, oz_backend *be, float *params, const float *grads, float lr,
                     float grad_scale) {
    opt->step++;
    oz_adamw_args args = {
        .lr = lr,
        .beta1 = opt->hp.beta1,
        .beta2 = opt->hp.beta2,
        .eps = opt->hp.eps,
        .bias_correction1 = (float)(1.0 - pow(opt->hp.beta1, (double)opt->step)),
        .bias_correction2 = (float)(1.0 - pow(opt->hp.beta2, (double)opt->step)),
        .grad_scale = grad_scale,
    };
    for (int i = 0; i < opt->layout->n; i++) {
        const oz_param_info *p = &opt->layout->params[i];
        args.weight_decay = p->is_norm ? 0.0f : opt->hp.weight_decay;
        be->adamw_step(be, params + p->offset, grads + p->offset, opt->m + p->offset, opt->v + p->offset,
                       p->numel, &args);
    }
}

size_t oz_adamw_state_bytes(size_t n_params) { return 2 * n_params * sizeof(float); }
