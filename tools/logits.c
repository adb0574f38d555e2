/* Development helper for tools/check_transformers.py: ounce's fp32 logits for given token ids.
 * usage: build/tools/logits MODEL_DIR IDS.safetensors OUT.safetensors
 * IDS holds "input_ids" (B, T) I32 or I64; OUT gets "logits" (B, T, V) F32. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "model/hf_model.h"
#include "io/safetensors.h"
#include "model/llama.h"

static int fail(const oz_err *err) {
    fprintf(stderr, "logits: %s\n", err->msg);
    return 2;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: logits MODEL_DIR IDS.safetensors OUT.safetensors\n");
        return 2;
    }
    oz_err err = {0};
    oz_safetensors st;
    if (oz_safetensors_open(&st, argv[2], &err) != OZ_OK) return fail(&err);
    const oz_st_tensor *t = oz_safetensors_find(&st, "input_ids");
    if (!t || t->ndim != 2 || (t->dtype != OZ_DT_I32 && t->dtype != OZ_DT_I64)) {
        fprintf(stderr, "logits: %s needs input_ids (B, T) I32/I64\n", argv[2]);
        return 2;
    }
    int B = (int)t->shape[0], T = (int)t->shape[1];
    int32_t *ids = malloc((size_t)B * T * sizeof *ids);
    for (size_t i = 0; i < (size_t)B * T; i++) {
        if (t->dtype == OZ_DT_I32) {
            memcpy(&ids[i], (const char *)t->data + 4 * i, 4);
        } else {
            int64_t v;
            memcpy(&v, (const char *)t->data + 8 * i, 8);
            ids[i] = (int32_t)v;
        }
    }
    oz_safetensors_close(&st);
    oz_backend be;
    if (oz_backend_cpu_create(&be, 0, &err) != OZ_OK) return fail(&err);
    oz_arena arena;
    oz_arena_init(&arena, be.allocator);
    oz_llama *m;
    oz_llama_shape shape = {.batch = B, .seq = T};
    if (oz_llama_load(&m, argv[1], &be, &arena, shape, NULL, &err) != OZ_OK) return fail(&err);
    int V = oz_llama_get_config(m)->vocab_size;
    float *logits = malloc((size_t)B * T * V * sizeof *logits);
    oz_llama_batch batch = {ids, NULL, B, T, logits};
    if (oz_llama_forward(m, &batch, NULL, NULL, &err) != OZ_OK) return fail(&err);
    oz_st_entry e = {"logits", OZ_DT_F32, 3, {B, T, V}, logits};
    if (oz_safetensors_write(argv[3], &e, 1, NULL, &err) != OZ_OK) return fail(&err);
    oz_llama_destroy(m);
    oz_arena_destroy(&arena);
    be.destroy(&be);
    free(ids);
    free(logits);
    return 0;
}
