/* `ounce sample`: generate text with temperature and nucleus (top-p) sampling. The context is the
 * prompt after an end-of-document token (and, for a tokenizer with a template, its BOS), so
 * generation starts as a fresh document does in training. Text is printed as it grows: the whole
 * continuation is decoded again after each token and only what is new is written, which keeps
 * decoders that look at neighbouring tokens (SentencePiece spaces, byte fallback) right. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "util/rng.h"

typedef struct {
    float p;
    int id;
} prob_id;

static int by_prob_desc(const void *a, const void *b) {
    float pa = ((const prob_id *)a)->p, pb = ((const prob_id *)b)->p;
    return (pa < pb) - (pa > pb);
}

/* Draws a token from logits (V) with temperature and top-p; temperature 0 is greedy. */
static int draw(const float *logits, int V, float temperature, float top_p, oz_rng *rng, prob_id *scratch) {
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (temperature <= 0) return best;
    double total = 0;
    for (int i = 0; i < V; i++) {
        scratch[i].p = (float)exp((logits[i] - logits[best]) / temperature);
        scratch[i].id = i;
        total += scratch[i].p;
    }
    qsort(scratch, (size_t)V, sizeof *scratch, by_prob_desc);
    double keep = 0;
    int n = 0;
    while (n < V && (n == 0 || keep < top_p * total)) keep += scratch[n++].p;
    double r = oz_rng_uniform(rng) * keep;
    for (int i = 0; i < n; i++) {
        r -= scratch[i].p;
        if (r < 0) return scratch[i].id;
    }
    return scratch[n - 1].id;
}

int oz_cmd_sample(int argc, char **argv) {
    char model[4096] = "", prompt[8192] = "", device[32] = "cpu", precision[8] = "fp32";
    int tokens = 200, threads = 0;
    float temperature = 0.8f, top_p = 0.95f;
    uint64_t seed = 1;
    oz_arg args[] = {
        {"model", OZ_ARG_STR, model, sizeof model, "model directory (config.json + model.safetensors) or a .gguf file", 0},
        {"prompt", OZ_ARG_STR, prompt, sizeof prompt, "text to continue [empty]", 0},
        {"tokens", OZ_ARG_INT, &tokens, 0, "tokens to generate [200]", 0},
        {"temperature", OZ_ARG_FLOAT, &temperature, 0, "softmax temperature, 0 = greedy [0.8]", 0},
        {"top-p", OZ_ARG_FLOAT, &top_p, 0, "nucleus sampling: smallest set of tokens with this mass [0.95]", 0},
        {"seed", OZ_ARG_U64, &seed, 0, "sampling seed [1]", 0},
        {"threads", OZ_ARG_INT, &threads, 0, "CPU threads, 0 = all cores [0]", 0},
        {"device", OZ_ARG_STR, device, sizeof device, "cpu | cuda | cuda:N | cuda+tf32 (a CUDA build) [cpu]", 0},
        {"precision", OZ_ARG_STR, precision, sizeof precision,
         "fp32 | bf16 (bf16 activations and weight copies, fp32 logits; on cuda each new context length plans "
         "cuDNN's attention once) [fp32]", 0},
    };
    int rc = oz_args_parse("sample", "Generate text from a model; stops early at end-of-document.", args,
                           (int)(sizeof args / sizeof args[0]), argc, argv);
    if (rc) return rc == 1 ? 0 : 2;
    oz_err err = {0};
    if (!model[0]) oz_fail(&err, OZ_ERR_INPUT, "--model is required");
    else if (tokens <= 0) oz_fail(&err, OZ_ERR_INPUT, "--tokens must be positive (got %d)", tokens);
    else if (temperature < 0) oz_fail(&err, OZ_ERR_INPUT, "--temperature must be >= 0");
    else if (top_p <= 0 || top_p > 1) oz_fail(&err, OZ_ERR_INPUT, "--top-p must be in (0, 1]");
    if (err.status) return oz_cli_report("sample", &err);

    oz_cli_model cm;
    oz_tokens ctx = {0};
    oz_text out = {0};
    size_t prompt_start = 0, printed = 0;
    float *logits = NULL;
    prob_id *scratch = NULL;
    if (oz_cli_model_open(&cm, model, 1, 0, threads, device, precision, &err) == OZ_OK &&
        oz_cli_need_tokenizer(&cm, model, &err) == OZ_OK) {
        const oz_llama_config *cfg = oz_llama_get_config(cm.model);
        int V = cfg->vocab_size, W = cm.seq;
        /* A model may have more rows than its tokenizer has tokens (padded vocabularies): only
         * ids the tokenizer can decode are drawn. */
        int V_draw = cm.tokenizer.vocab_size < V ? cm.tokenizer.vocab_size : V;
        logits = malloc((size_t)W * V * sizeof *logits);
        scratch = malloc((size_t)V * sizeof *scratch);
        if (!logits || !scratch) oz_fail(&err, OZ_ERR_NOMEM, "out of memory");
        if (!err.status && cm.tokenizer.eos_id >= 0) oz_tokens_push(&ctx, cm.tokenizer.eos_id, &err);
        prompt_start = ctx.len;
        if (!err.status) oz_tokenizer_encode_special(&cm.tokenizer, prompt, strlen(prompt), &ctx, &err);
        /* What the prompt decodes to is already on screen (printed as given). */
        if (!err.status)
            oz_tokenizer_decode(&cm.tokenizer, ctx.ids + prompt_start, ctx.len - prompt_start, 0, &out, &err);
        printed = out.len;
        oz_rng rng;
        oz_rng_seed(&rng, seed);
        printf("%s", prompt);
        fflush(stdout);
        for (int i = 0; i < tokens && !err.status; i++) {
            size_t start = ctx.len > (size_t)W ? ctx.len - (size_t)W : 0; /* slide past the context */
            int T = (int)(ctx.len - start);
            oz_llama_batch b = {ctx.ids + start, NULL, 1, T, logits};
            if (oz_llama_forward(cm.model, &b, NULL, NULL, &err) != OZ_OK) break;
            if (oz_backend_sync(&cm.be, &err) != OZ_OK) break; /* a GPU failure, not garbage logits */
            int next = draw(logits + (size_t)(T - 1) * V, V_draw, temperature, top_p, &rng, scratch);
            if (next == cm.tokenizer.eos_id) break;
            if (oz_tokens_push(&ctx, next, &err) != OZ_OK) break;
            out.len = 0;
            if (oz_tokenizer_decode(&cm.tokenizer, ctx.ids + prompt_start, ctx.len - prompt_start, 0, &out, &err) != OZ_OK)
                break;
            /* Hold back while the text ends in U+FFFD: a byte-fallback character still incomplete. */
            int partial = out.len >= 3 && memcmp(out.data + out.len - 3, "\xEF\xBF\xBD", 3) == 0;
            if (out.len > printed && !partial) {
                fwrite(out.data + printed, 1, out.len - printed, stdout);
                printed = out.len;
            }
            fflush(stdout);
        }
        if (!err.status && out.len > printed) fwrite(out.data + printed, 1, out.len - printed, stdout);
        printf("\n");
    }
    free(logits);
    free(scratch);
    oz_tokens_free(&ctx);
    oz_text_free(&out);
    oz_cli_model_close(&cm);
    if (err.status) return oz_cli_report("sample", &err);
    return 0;
}
