/* Helpers shared by the commands: error reporting and opening a saved model for inference. */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "io/gguf.h"
#include "model/gguf_model.h"

int oz_cli_report(const char *command, const oz_err *err) {
    fprintf(stderr, "ounce %s: %s\n", command, err->msg[0] ? err->msg : oz_status_name(err->status));
    switch (err->status) {
    case OZ_OK: return 0;
    case OZ_ERR_INPUT:
    case OZ_ERR_NUMERIC: return 2;
    default: return 1;
    }
}

oz_status oz_cli_model_open(oz_cli_model *cm, const char *dir, int batch, int seq, int threads, const char *device,
                            const char *precision, oz_err *err) {
    memset(cm, 0, sizeof *cm);
    int prec = OZ_PREC_FP32;
    if (precision && !oz_precision_parse(precision, &prec))
        return oz_fail(err, OZ_ERR_INPUT, "--precision %s is not known (choose: " OZ_PRECISION_NAMES ")", precision);
    OZ_TRY(oz_backend_open(&cm->be, device, threads, err));
    cm->be_ready = true;
    oz_arena_init(&cm->arena, cm->be.allocator);
    OZ_TRY(oz_backend_attach(&cm->be, &cm->arena, err));
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    oz_llama_config cfg;
    bool gguf = oz_gguf_is_file(dir);
    if (gguf) OZ_TRY(oz_gguf_config_read(dir, &cfg, cm->tokenizer_name, err));
    else OZ_TRY(oz_config_read(path, &cfg, cm->tokenizer_name, err));
    if (seq <= 0 || seq > cfg.max_position_embeddings) seq = cfg.max_position_embeddings;
    oz_llama_shape shape = {.batch = batch, .seq = seq, .precision = prec, .cuda = oz_backend_is_cuda(device)};
    OZ_TRY(oz_llama_load(&cm->model, dir, &cm->be, &cm->arena, shape, NULL, err));
    cm->seq = seq;
    if (gguf && cm->tokenizer_name[0]) {
        /* A GGUF carries its tokenizer in its metadata (or says it is ounce's byte tokenizer). */
        OZ_TRY(oz_tokenizer_load(&cm->tokenizer, dir, err));
        cm->has_tokenizer = true;
        if (cm->tokenizer.vocab_size > cfg.vocab_size)
            return oz_fail(err, OZ_ERR_INPUT, "%s has %d tokens but the model's vocabulary only %d", dir,
                           cm->tokenizer.vocab_size, cfg.vocab_size);
        return OZ_OK;
    }
    if (gguf) return OZ_OK;
    /* A tokenizer.json beside the weights (copied from the data by the trainer, or an HF
     * checkpoint's own) wins; otherwise the tokenizer config.json records (byte). */
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    struct stat st;
    if (stat(path, &st) == 0) {
        OZ_TRY(oz_tokenizer_load(&cm->tokenizer, dir, err));
        cm->has_tokenizer = true;
        snprintf(cm->tokenizer_name, sizeof cm->tokenizer_name, "%s", OZ_TOKENIZER_HF_NAME);
        if (cm->tokenizer.vocab_size > cfg.vocab_size)
            return oz_fail(err, OZ_ERR_INPUT, "%s has %d tokens but the model's vocabulary only %d", path,
                           cm->tokenizer.vocab_size, cfg.vocab_size);
        return OZ_OK;
    }
    cm->has_tokenizer = cm->tokenizer_name[0] != '\0';
    if (cm->has_tokenizer) OZ_TRY(oz_tokenizer_from_name(&cm->tokenizer, cm->tokenizer_name, err));
    return OZ_OK;
}

oz_status oz_cli_need_tokenizer(const oz_cli_model *cm, const char *dir, oz_err *err) {
    if (cm->has_tokenizer) return OZ_OK;
    return oz_fail(err, OZ_ERR_INPUT,
                   "%s has no tokenizer recorded (it was trained on random tokens?): text cannot be encoded",
                   dir);
}

void oz_cli_model_close(oz_cli_model *cm) {
    if (cm->has_tokenizer) oz_tokenizer_free(&cm->tokenizer);
    oz_llama_destroy(cm->model);
    if (cm->be_ready) {
        oz_arena_destroy(&cm->arena);
        cm->be.destroy(&cm->be);
    }
    memset(cm, 0, sizeof *cm);
}
