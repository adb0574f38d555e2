/* The arguments of one AdamW step, shared by the reference implementations (numeric/) and every
 * backend's fused kernels. */
#ifndef OZ_NUMERIC_ADAMW_H
#define OZ_NUMERIC_ADAMW_H

typedef struct {
    float lr;
    float beta1, beta2, eps;
    float weight_decay;      /* decoupled: p <- p * (1 - lr * weight_decay) before the Adam step */
    float bias_correction1;  /* 1 - beta1^t */
    float bias_correction2;  /* 1 - beta2^t */
    float grad_scale;        /* gradients are multiplied by this first (global-norm clipping) */
} oz_adamw_args;

#endif
