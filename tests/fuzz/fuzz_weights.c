/* A model directory's weights (io/weights.c: the shard index; model/hf_model.c: the checks against
 * the layout and loading into a model). The input holds the directory's files, cut at OZ_FUZZ_SEP:
 *
 *     config.json | model.safetensors.index.json | model.safetensors | model-1 | model-2 | model-3
 *
 * (shards model-K.safetensors; an empty part is an absent file). Every accepted set of files must
 * find each tensor it lists; when config.json describes a small model the weights are checked
 * against its layout and loaded into a CPU model, so the loader's conversions run on them. */
#include "fuzz.h"

#include "backend/backend.h"
#include "io/weights.h"
#include "mem/arena.h"
#include "model/hf_model.h"
#include "model/llama.h"

static const char *const files[] = {"config.json",         "model.safetensors.index.json", "model.safetensors",
                                    "model-1.safetensors", "model-2.safetensors",          "model-3.safetensors",
                                    NULL};
#define N_FILES 6

/* Models loaded per input stay below this many parameters (the files are what is fuzzed). */
#define LOAD_MAX_PARAMS ((size_t)1 << 18)

static oz_backend be;
static int be_ready;

static void check_error(oz_status s, const oz_err *err) {
    OZ_FUZZ_CHECK(s == OZ_ERR_INPUT && err->msg[0], "bad files must be OZ_ERR_INPUT with a message (got %d: %s)",
                  (int)s, err->msg);
    OZ_FUZZ_CHECK(!strchr(err->msg, '\n'), "the message is one line: %s", err->msg);
    oz_fuzz_note("weights", err->msg);
}

static void load_model(const char *dir, const oz_weight_files *w) {
    oz_llama_config cfg;
    oz_err err = {0};
    if (oz_config_read(oz_fuzz_path("config.json", 1), &cfg, NULL, &err) != OZ_OK) return;
    oz_param_layout lay;
    if (cfg.num_hidden_layers > 4 || oz_param_layout_build(&cfg, &lay, &err) != OZ_OK) return;
    size_t total = lay.total;
    oz_status s = oz_weight_files_check(w, &lay, &cfg, &err);
    oz_param_layout_free(&lay);
    if (s != OZ_OK) {
        check_error(s, &err);
        return;
    }
    if (total > LOAD_MAX_PARAMS || (size_t)cfg.vocab_size * (size_t)cfg.hidden_size > LOAD_MAX_PARAMS) return;
    if (!be_ready) {
        if (oz_backend_cpu_create(&be, 1, &err) != OZ_OK) abort();
        be_ready = 1;
    }
    oz_arena arena;
    oz_arena_init(&arena, be.allocator);
    oz_llama *m = NULL;
    oz_llama_shape shape = {.batch = 1, .seq = 1};
    s = oz_llama_load(&m, dir, &be, &arena, shape, NULL, &err);
    OZ_FUZZ_CHECK(s == OZ_OK, "checked weights do not load: %s", err.msg);
    /* The weights are the files' values, converted: the embedding's first element, for one. */
    const oz_st_tensor *t = oz_weight_files_find(w, "model.embed_tokens.weight");
    float first, got;
    OZ_FUZZ_CHECK(t && t->numel >= 1, "no embedding");
    float *all = malloc(t->numel * sizeof *all);
    if (!all) abort();
    OZ_FUZZ_CHECK(oz_st_tensor_to_f32(t, all, t->numel, &err) == OZ_OK, "%s", err.msg);
    first = all[0];
    free(all);
    float *host = malloc(oz_llama_get_layout(m)->total * sizeof *host);
    if (!host) abort();
    oz_llama_export_params(m, host);
    got = host[oz_llama_get_layout(m)->params[0].offset];
    free(host);
    OZ_FUZZ_CHECK(!memcmp(&first, &got, sizeof got) || (first != first && got != got),
                  "embedding[0] %g loaded as %g", (double)first, (double)got);
    oz_llama_destroy(m);
    oz_arena_destroy(&arena);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *dir = oz_fuzz_dir(files);
    oz_fuzz_part parts[N_FILES];
    int n = oz_fuzz_split(data, size, parts, N_FILES);
    for (int i = 0; i < N_FILES; i++) {
        if (i < n && parts[i].n) oz_fuzz_write(files[i], parts[i].p, parts[i].n, 0);
        else oz_fuzz_remove(files[i]);
    }
    oz_weight_files w;
    oz_err err = {0};
    oz_status s = oz_weight_files_open(&w, dir, &err);
    if (s != OZ_OK) {
        check_error(s, &err);
        return 0;
    }
    OZ_FUZZ_CHECK(w.n_files >= 1, "opened with no file");
    for (int f = 0; f < w.n_files; f++)
        for (int t = 0; t < w.files[f].n_tensors; t++) {
            const oz_st_tensor *a = &w.files[f].tensors[t], *b = oz_weight_files_find(&w, a->name);
            OZ_FUZZ_CHECK(b && !strcmp(b->name, a->name), "tensor '%s' not found", a->name);
        }
    load_model(dir, &w);
    oz_weight_files_close(&w);
    return 0;
}
