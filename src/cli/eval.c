/* `ounce eval`: mean cross-entropy of a saved model on the validation split of prepared data, or
 * on a text file in windows (model/score.h): consecutive ones, or with --stride sliding ones, each
 * token scored once. For a text the model's buffers are sized to the windows the text needs, not
 * to the model's context. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "data/loader.h"
#include "io/atomic.h"
#include "model/score.h"

/* A progress line on stderr while a long text is scored, when stderr is a terminal (a log or a
 * pipe gets only the result, and an error stays one line). */
static void show_progress(void *ctx, long done, long total) {
    (void)ctx;
    if (total < 8 || !isatty(2)) return;
    fprintf(stderr, "\reval: %ld/%ld windows", done, total);
    if (done == total) fprintf(stderr, "\n");
    fflush(stderr);
}

int oz_cmd_eval(int argc, char **argv) {
    char model[4096] = "", data[4096] = "", text_path[4096] = "", device[32] = "cpu", precision[8] = "fp32";
    int seq = 0, window = 0, stride = 0, batch = 4, threads = 0, max_batches = 0;
    bool json = false, force = false;
    oz_arg args[] = {
        {"model", OZ_ARG_STR, model, sizeof model, "model directory (config.json + model.safetensors) or a .gguf file", 0},
        {"data", OZ_ARG_STR, data, sizeof data, "prepared data directory: evaluate its validation split", 0},
        {"text", OZ_ARG_STR, text_path, sizeof text_path, "or a text file, tokenized with the model's tokenizer (its template, e.g. BOS, included)", 0},
        {"window", OZ_ARG_INT, &window, 0, "window length in tokens [the model's max_position_embeddings, at most 1024]", 0},
        {"seq", OZ_ARG_INT, &seq, 0, "the same as --window", 0},
        {"stride", OZ_ARG_INT, &stride, 0,
         "--text: a window every N tokens, only its last N tokens scored (sliding-window perplexity: each token "
         "scored once with at least window - N tokens of context); 0 = the window, consecutive windows [0]", 0},
        {"batch", OZ_ARG_INT, &batch, 0, "windows per forward pass [4]", 0},
        {"max-batches", OZ_ARG_INT, &max_batches, 0, "stop after N batches of --data, 0 = all [0]", 0},
        {"force", OZ_ARG_FLAG, &force, 0, "evaluate although the model's tokenizer is not the data's", 0},
        {"threads", OZ_ARG_INT, &threads, 0, "CPU threads, 0 = all cores [0]", 0},
        {"device", OZ_ARG_STR, device, sizeof device, "cpu | cuda | cuda:N | cuda+tf32 (a CUDA build) [cpu]", 0},
        {"precision", OZ_ARG_STR, precision, sizeof precision,
         "fp32 | bf16 (bf16 activations and weight copies, fp32 logits and loss) [fp32]", 0},
        {"json", OZ_ARG_FLAG, &json, 0, "end with one JSON line {\"loss\", \"tokens\", \"perplexity\"}", 0},
    };
    int rc = oz_args_parse("eval", "Mean cross-entropy (nats/token) of a model on data or text.", args,
                           (int)(sizeof args / sizeof args[0]), argc, argv);
    if (rc) return rc == 1 ? 0 : 2;
    oz_err err = {0};
    if (!model[0]) oz_fail(&err, OZ_ERR_INPUT, "--model is required");
    else if (!data[0] == !text_path[0]) oz_fail(&err, OZ_ERR_INPUT, "give exactly one of --data and --text");
    else if (seq < 0 || window < 0 || stride < 0 || batch <= 0 || threads < 0 || max_batches < 0)
        oz_fail(&err, OZ_ERR_INPUT, "--window, --stride, --batch, --threads and --max-batches must be positive");
    else if (seq && window && seq != window) oz_fail(&err, OZ_ERR_INPUT, "--seq and --window differ (%d, %d)", seq, window);
    else if (stride && data[0]) oz_fail(&err, OZ_ERR_INPUT, "--stride applies to --text (--data has its own windows)");
    else if (stride && (window || seq) && stride > (window ? window : seq))
        oz_fail(&err, OZ_ERR_INPUT, "--stride %d is longer than the window (%d): tokens would go unscored", stride,
                window ? window : seq);
    if (err.status) return oz_cli_report("eval", &err);

    oz_cli_model cm;
    double sum = 0;
    long count = 0;
    if (window) seq = window;
    if (seq == 0) seq = 1024;
    /* A text opens the model twice: once with one-token buffers to encode it, then with buffers for
     * the windows it needs (a short text, short windows). */
    int open_batch = data[0] ? batch : 1, open_seq = data[0] ? seq : 1;
    if (oz_cli_model_open(&cm, model, open_batch, open_seq, threads, device, precision, &err) == OZ_OK) {
        if (data[0]) seq = cm.seq;
        if (data[0]) {
            oz_dataset ds;
            if (oz_dataset_open(&ds, data, 0, &err) == OZ_OK) {
                if (oz_dataset_vocab_size(&ds) > oz_llama_get_config(cm.model)->vocab_size)
                    oz_fail(&err, OZ_ERR_INPUT, "%s has a vocabulary of %d but the model only %d", data,
                            oz_dataset_vocab_size(&ds), oz_llama_get_config(cm.model)->vocab_size);
                /* The loss of a model on ids from another vocabulary means nothing. */
                if (!err.status && cm.has_tokenizer && ds.has_tokenizer &&
                    oz_tokenizer_fingerprint(&cm.tokenizer) != oz_tokenizer_fingerprint(&ds.tokenizer)) {
                    if (!force)
                        oz_fail(&err, OZ_ERR_INPUT, "the model in %s (%s tokenizer) and the data in %s (%s) use different "
                                "vocabularies: prepare the data with the model's tokenizer, or --force", model,
                                oz_tokenizer_name(&cm.tokenizer), data, oz_tokenizer_name(&ds.tokenizer));
                    else
                        fprintf(stderr, "eval: warning: the model's and the data's vocabularies differ (--force)\n");
                }
                int windows = oz_dataset_val_windows(&ds, seq);
                if (!err.status && windows == 0)
                    oz_fail(&err, OZ_ERR_INPUT, "%s: the validation split is shorter than one window of %d tokens",
                            data, seq + 1);
                int32_t *in = malloc((size_t)batch * seq * sizeof *in), *tg = malloc((size_t)batch * seq * sizeof *tg);
                for (int w = 0, b = 0; !err.status && w < windows && (!max_batches || b < max_batches); w += batch, b++) {
                    int rows = oz_dataset_val_batch(&ds, w, batch, seq, in, tg);
                    if (rows <= 0) break;
                    oz_llama_batch bt = {in, tg, rows, seq, NULL};
                    double s;
                    long c;
                    if (oz_llama_forward(cm.model, &bt, &s, &c, &err) != OZ_OK) break;
                    sum += s;
                    count += c;
                }
                free(in);
                free(tg);
                oz_dataset_close(&ds);
            }
        } else if (oz_cli_need_tokenizer(&cm, model, &err) == OZ_OK) {
            char *text = NULL;
            size_t n = 0;
            oz_tokens ids = {0};
            int ctx = oz_llama_get_config(cm.model)->max_position_embeddings;
            if (seq > ctx) seq = ctx;
            if (stride > seq) oz_fail(&err, OZ_ERR_INPUT, "--stride %d is longer than the window (%d)", stride, seq);
            if (!err.status && oz_read_file(text_path, &text, &n, &err) == OZ_OK &&
                oz_tokenizer_encode_special(&cm.tokenizer, text, n, &ids, &err) == OZ_OK) {
                if (ids.len < 2) oz_fail(&err, OZ_ERR_INPUT, "%s: too short to evaluate (needs 2 tokens)", text_path);
            }
            if (!err.status) {
                int W = ids.len - 1 < (size_t)seq ? (int)(ids.len - 1) : seq, S = stride ? stride : W;
                if (S > W) S = W;
                long windows = oz_score_window_count(ids.len, W, S);
                int B = windows < batch ? (int)windows : batch;
                oz_cli_model_close(&cm);
                if (oz_cli_model_open(&cm, model, B, W, threads, device, precision, &err) == OZ_OK) {
                    oz_score_opts o = {W, S, B, show_progress, NULL};
                    oz_llama_score_tokens(cm.model, ids.ids, ids.len, &o, &sum, &count, &err);
                }
            }
            free(text);
            oz_tokens_free(&ids);
        }
    }
    if (!err.status && cm.be_ready) oz_backend_sync(&cm.be, &err);
    oz_cli_model_close(&cm);
    if (err.status) return oz_cli_report("eval", &err);
    double loss = sum / (double)count;
    printf("loss %.4f nats/token (perplexity %.3f) over %ld tokens\n", loss, exp(loss), count);
    if (json) printf("{\"loss\":%.6f,\"tokens\":%ld,\"perplexity\":%.6f}\n", loss, count, exp(loss));
    return 0;
}
