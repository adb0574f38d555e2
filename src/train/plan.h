/* The memory planner: the peak bytes by category that a training run would allocate, computed
 * from the same buffer list the model allocates from plus the optimizer's state formula, without
 * allocating anything. It lives beside the trainer (not in mem/) because it needs the model and
 * the optimizers, which sit above mem/ in the layering. */
#ifndef OZ_PLAN_H
#define OZ_PLAN_H
#include <stddef.h>

#include "mem/arena.h"
#include "model/llama.h"
#include "train/trainer.h"
#include "util/err.h"

typedef struct {
    size_t bytes[OZ_MEM_NCATEGORIES];
    size_t total;
    size_t host_bytes;    /* host memory outside the total: offloaded checkpoints */
    oz_llama_shape shape; /* the resolved shape (chunk counts after --mini-seq auto) */
} oz_train_plan;

/* Plans a run of `o` (batch, seq, optim, recompute, mini_seq, device) on a model `cfg`. */
oz_status oz_train_plan_memory(const oz_llama_config *cfg, const oz_train_opts *o, oz_train_plan *plan,
                               oz_err *err);
/* Longest sequence (<= limit) whose planned total fits `budget` bytes, or 0 if none does. */
int oz_train_plan_max_seq(const oz_llama_config *cfg, const oz_train_opts *o, size_t budget, int limit);
/* Parses "16GiB", "1.5G", "512MiB", "2e9" (bytes) ...; returns 0 on failure, and for sizes of
 * 2^64 bytes or more. */
size_t oz_parse_bytes(const char *text);

#endif
