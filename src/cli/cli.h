/* The commands of the `ounce` binary. Each returns the process exit code: 0 ok, 2 user error,
 * 1 anything else. */
#ifndef OZ_CLI_H
#define OZ_CLI_H
#include <stdbool.h>

#include "backend/backend.h"
#include "data/tokenizer.h"
#include "model/hf_model.h"
#include "mem/arena.h"
#include "model/llama.h"
#include "util/err.h"

int oz_cmd_prepare(int argc, char **argv);
int oz_cmd_train(int argc, char **argv);
int oz_cmd_eval(int argc, char **argv);
int oz_cmd_sample(int argc, char **argv);
int oz_cmd_tokenize(int argc, char **argv);
int oz_cmd_memory(int argc, char **argv);
int oz_cmd_tokenizer(int argc, char **argv);
int oz_cmd_compress(int argc, char **argv);
int oz_cmd_convert(int argc, char **argv);
int oz_cmd_report(int argc, char **argv);

/* Prints "ounce CMD: message" to stderr and returns the exit code for the status. */
int oz_cli_report(const char *command, const oz_err *err);

/* A saved model opened for inference on the backend --device names. */
typedef struct {
    oz_backend be;
    bool be_ready;
    oz_arena arena;
    oz_llama *model;
    int seq;                                   /* the activation buffers' sequence length */
    char tokenizer_name[OZ_TOKENIZER_NAME_MAX];
    oz_tokenizer tokenizer;
    bool has_tokenizer;
} oz_cli_model;

/* seq <= 0 or beyond the model's context means max_position_embeddings. */
/* device: "cpu", "cuda", "cuda:N", "cuda+tf32" (NULL = cpu); precision: "fp32", "bf16" (NULL =
 * fp32). Forward passes on a GPU queue their work: call oz_backend_sync(&cm->be, err) before
 * trusting results. */
oz_status oz_cli_model_open(oz_cli_model *cm, const char *dir, int batch, int seq, int threads, const char *device,
                            const char *precision, oz_err *err);
oz_status oz_cli_need_tokenizer(const oz_cli_model *cm, const char *dir, oz_err *err);
void oz_cli_model_close(oz_cli_model *cm);

#endif
