/* The CPU backend's bf16 ops (cpu_bf16.c), the reference for backend.h's "bf16 ops" group. */
#ifndef OZ_CPU_BF16_H
#define OZ_CPU_BF16_H
#include "backend/backend.h"

/* Fills in gemm_bf16, rmsnorm_{fwd,bwd}_bf16, rope_bf16, swiglu_{fwd,bwd}_bf16,
 * embedding_fwd_bf16out, add_bf16 and attention_{bf16_plan,fwd_bf16,bwd_bf16}. */
void oz_cpu_bf16_ops(oz_backend *be);

#endif
