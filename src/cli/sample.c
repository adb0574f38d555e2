/* `ounce sample`: generate text. The prompt runs through the model once (prefill) and each new
 * token alone against a key/value cache (model/decode.h), sized to the longest prompt + --tokens;
 * several prompts (--prompts FILE) decode together, --batch at a time. --precision bf16 has no
 * cached path yet: it recomputes the whole context for every token, as sample did before.
 *
 * A prompt is encoded as transformers encodes it for generate() (the tokenizer's template: BOS
 * where its post-processor adds one); ounce's byte-level models get an end-of-document token first,
 * as every document follows one in their training data. Sampling is
 * Hugging Face's order: repetition penalty on the logits, then temperature, top-k, top-p, min-p.
 * Text is printed as it grows (one sequence at a time: streamed; a batch: each text when its batch
 * ends): the whole continuation is decoded again after each token and only what is new is written,
 * which keeps decoders that look at neighbouring tokens (SentencePiece spaces, byte fallback) right;
 * text that may still turn out to start a --stop string is held back until it cannot. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "model/decode.h"
#include "util/clock.h"
#include "util/rng.h"

typedef struct {
    float p;
    int id;
} prob_id;

static int by_prob_desc(const void *a, const void *b) {
    float pa = ((const prob_id *)a)->p, pb = ((const prob_id *)b)->p;
    return (pa < pb) - (pa > pb);
}

typedef struct {
    float temperature, top_p, min_p, repetition_penalty;
    int top_k;
} sampler;

/* One sequence being generated. */
typedef struct {
    const char *prompt;   /* as given, printed before the continuation */
    oz_tokens ctx;        /* prefix (end-of-document, BOS) + prompt + generated ids */
    size_t text_from;     /* ctx ids from here on are decoded for the output (after the prefix) */
    size_t prompt_ids;    /* ctx.len after the prompt */
    oz_text out;          /* decode of ctx[text_from..] */
    size_t prompt_text;   /* bytes of out that the prompt decodes to */
    size_t shown;         /* bytes of out already written (streaming) */
    size_t end;           /* bytes of out that belong to the result (a stop string cuts it) */
    oz_rng rng;
    int generated;
    const char *why;      /* NULL while running; "eos", "stop", "length", "context" */
} sequence;

/* Applies the penalty and the warpers to logits (V, changed in place) and draws an id; temperature
 * 0 is greedy (argmax after the penalty). The penalty (CTRL's, as transformers applies it) divides a
 * positive logit of every id already in the context by `repetition_penalty` and multiplies a
 * negative one. */
static int draw(float *logits, int V, const sampler *s, sequence *q, prob_id *scratch) {
    if (s->repetition_penalty != 1.0f)
        for (size_t i = 0; i < q->ctx.len; i++) {
            int32_t id = q->ctx.ids[i];
            if (id < 0 || id >= V) continue;
            /* an id seen twice is penalized once: mark it by the sign bit of scratch's id slot */
            if (scratch[id].id == -1 - id) continue;
            scratch[id].id = -1 - id;
            logits[id] = logits[id] > 0 ? logits[id] / s->repetition_penalty : logits[id] * s->repetition_penalty;
        }
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (s->temperature <= 0) {
        for (size_t i = 0; i < q->ctx.len; i++)
            if (q->ctx.ids[i] >= 0 && q->ctx.ids[i] < V) scratch[q->ctx.ids[i]].id = 0;
        return best;
    }
    for (int i = 0; i < V; i++) {
        scratch[i].p = (float)exp((logits[i] - logits[best]) / s->temperature);
        scratch[i].id = i;
    }
    qsort(scratch, (size_t)V, sizeof *scratch, by_prob_desc);
    int n = s->top_k > 0 && s->top_k < V ? s->top_k : V;
    /* top-p over what top-k kept, as transformers renormalizes between warpers */
    double kept = 0;
    for (int i = 0; i < n; i++) kept += scratch[i].p;
    double keep = 0;
    int m = 0;
    while (m < n && (m == 0 || keep < s->top_p * kept)) keep += scratch[m++].p;
    /* min-p: drop what is less likely than min_p times the most likely (scratch[0].p is 1) */
    while (m > 1 && scratch[m - 1].p < s->min_p * scratch[0].p) keep -= scratch[--m].p;
    double r = oz_rng_uniform(&q->rng) * keep;
    int pick = scratch[m - 1].id;
    for (int i = 0; i < m; i++) {
        r -= scratch[i].p;
        if (r < 0) {
            pick = scratch[i].id;
            break;
        }
    }
    return pick;
}

/* Bytes at the end of text[0..n) that could begin one of the stop strings. */
static size_t stop_prefix_len(const char *text, size_t n, const oz_arg_list *stops) {
    size_t hold = 0;
    for (int s = 0; s < stops->n; s++) {
        size_t k = strlen(stops->items[s]);
        for (size_t len = k > 0 ? k - 1 : 0; len > hold; len--)
            if (len <= n && memcmp(text + n - len, stops->items[s], len) == 0) {
                hold = len;
                break;
            }
    }
    return hold;
}

/* Takes token `id` into q: end-of-sequence ends it; otherwise the text is decoded again, cut at a
 * stop string, and (streaming) what is new and settled is written. */
static oz_status accept(sequence *q, int id, const oz_tokenizer *tok, const oz_arg_list *stops, int tokens,
                        bool stream, oz_err *err) {
    if (id == tok->eos_id) {
        q->why = "eos";
        return OZ_OK;
    }
    OZ_TRY(oz_tokens_push(&q->ctx, id, err));
    q->generated++;
    q->out.len = 0;
    OZ_TRY(oz_tokenizer_decode(tok, q->ctx.ids + q->text_from, q->ctx.len - q->text_from, 0, &q->out, err));
    q->end = q->out.len;
    const char *cont = q->out.data + q->prompt_text;
    size_t cont_len = q->out.len - q->prompt_text;
    for (int s = 0; s < stops->n; s++) {
        const char *hit = memmem(cont, cont_len, stops->items[s], strlen(stops->items[s]));
        if (hit && (size_t)(hit - q->out.data) < q->end) q->end = (size_t)(hit - q->out.data), q->why = "stop";
    }
    if (!q->why && q->generated >= tokens) q->why = "length";
    if (!stream) return OZ_OK;
    size_t upto = q->end;
    if (!q->why) {
        /* Hold back an incomplete byte-fallback character (U+FFFD at the end) and a possible
         * beginning of a stop string. */
        if (upto >= 3 && memcmp(q->out.data + upto - 3, "\xEF\xBF\xBD", 3) == 0) upto -= 3;
        size_t hold = stop_prefix_len(q->out.data + q->prompt_text, upto - q->prompt_text, stops);
        upto -= hold;
    }
    if (upto > q->shown) {
        fwrite(q->out.data + q->shown, 1, upto - q->shown, stdout);
        q->shown = upto;
    }
    fflush(stdout);
    return OZ_OK;
}

/* The continuation so far, after the prompt's own text. */
static void print_result(const sequence *q) {
    size_t from = q->prompt_text < q->end ? q->prompt_text : q->end;
    printf("%s", q->prompt);
    fwrite(q->out.data + from, 1, q->end - from, stdout);
    printf("\n");
}

/* The ids the model sees for a prompt (oz_tokenizer_encode_prompt: the tokenizer's template, or
 * for ounce's byte-level models an end-of-document token first). */
static oz_status encode_prompt(const oz_tokenizer *tok, sequence *q, oz_err *err) {
    OZ_TRY(oz_tokenizer_encode_prompt(tok, q->prompt, strlen(q->prompt), &q->ctx, &q->text_from, err));
    /* An empty prompt without a template: start from BOS, else from end-of-text (GPT-2's
     * <|endoftext|>), as a document would. */
    int32_t start = tok->bos_id >= 0 ? tok->bos_id : tok->eos_id;
    if (q->ctx.len == 0 && start >= 0) {
        OZ_TRY(oz_tokens_push(&q->ctx, start, err));
        q->text_from = 1;
    }
    q->prompt_ids = q->ctx.len;
    OZ_TRY(oz_tokenizer_decode(tok, q->ctx.ids + q->text_from, q->ctx.len - q->text_from, 0, &q->out, err));
    q->prompt_text = q->shown = q->end = q->out.len;
    if (q->ctx.len == 0)
        return oz_fail(err, OZ_ERR_INPUT, "the prompt \"%.40s\" encodes to no tokens and the tokenizer has no BOS or EOS to "
                                          "start from: give a non-empty --prompt", q->prompt);
    return OZ_OK;
}

/* Reads FILE's lines (without their newline) into *lines; an empty file is an error. */
static oz_status read_prompts(const char *path, char ***lines, int *n, char **buf, oz_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return oz_fail(err, OZ_ERR_INPUT, "--prompts %s: cannot open it", path);
    size_t cap = 0, len = 0;
    char *data = NULL;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = (len + 4096 + 1) * 2;
            char *p = realloc(data, cap);
            if (!p) {
                free(data);
                fclose(f);
                return oz_fail(err, OZ_ERR_NOMEM, "out of memory reading %s", path);
            }
            data = p;
        }
        size_t got = fread(data + len, 1, 4096, f);
        len += got;
        if (got < 4096) break;
    }
    bool bad = ferror(f);
    fclose(f);
    if (bad) {
        free(data);
        return oz_fail(err, OZ_ERR_INPUT, "--prompts %s: cannot read it", path);
    }
    data[len] = '\0';
    int count = 0;
    for (size_t i = 0; i < len; i++) count += data[i] == '\n';
    char **out = calloc((size_t)count + 1, sizeof *out);
    if (!out) {
        free(data);
        return oz_fail(err, OZ_ERR_NOMEM, "out of memory reading %s", path);
    }
    int k = 0;
    for (char *p = data; p < data + len;) {
        char *nl = memchr(p, '\n', (size_t)(data + len - p));
        char *e = nl ? nl : data + len;
        if (e > p && e[-1] == '\r') e[-1] = '\0';
        *e = '\0';
        out[k++] = p;
        p = e + 1;
    }
    if (k == 0) {
        free(out);
        free(data);
        return oz_fail(err, OZ_ERR_INPUT, "--prompts %s: the file has no lines", path);
    }
    *lines = out, *n = k, *buf = data;
    return OZ_OK;
}

static bool given(const oz_arg *args, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(args[i].name, name)) return args[i].seen;
    return false;
}

typedef struct {
    double prefill_s, decode_s;
    long prefill_tokens, decode_tokens;
} timings;

/* Sequences q[0 .. n) in one decode state: prefill each, then step them together until each ends. */
static oz_status run_cached(oz_cli_model *cm, oz_decode *dec, sequence *q, int n, const sampler *s,
                            const oz_arg_list *stops, int tokens, int V_draw, float *logits, prob_id *scratch,
                            int32_t *ids, timings *tm, oz_err *err) {
    int V = oz_llama_get_config(cm->model)->vocab_size, cap = oz_decode_get_shape(dec).cap;
    bool stream = oz_decode_get_shape(dec).batch == 1;
    if (stream) {
        printf("%s", q[0].prompt);
        fflush(stdout);
    }
    double t0 = oz_now_s();
    for (int b = 0; b < n; b++) {
        OZ_TRY(oz_decode_prefill(dec, b, q[b].ctx.ids, (int)q[b].ctx.len, logits + (size_t)b * V, NULL, err));
        tm->prefill_tokens += (long)q[b].ctx.len;
    }
    OZ_TRY(oz_backend_sync(&cm->be, err)); /* a GPU failure, not garbage logits */
    tm->prefill_s += oz_now_s() - t0;
    for (;;) {
        int last = -1;
        for (int b = 0; b < n; b++) {
            ids[b] = -1;
            if (q[b].why) continue;
            int next = draw(logits + (size_t)b * V, V_draw, s, &q[b], scratch);
            OZ_TRY(accept(&q[b], next, &cm->tokenizer, stops, tokens, stream, err));
            if (q[b].why) continue;
            if (oz_decode_len(dec, b) >= cap) {
                q[b].why = "context";
                continue;
            }
            ids[b] = next, last = b;
        }
        if (last < 0) break;
        t0 = oz_now_s();
        OZ_TRY(oz_decode_step(dec, last + 1, ids, logits, err));
        OZ_TRY(oz_backend_sync(&cm->be, err));
        tm->decode_s += oz_now_s() - t0;
        for (int b = 0; b <= last; b++) tm->decode_tokens += ids[b] >= 0;
    }
    return OZ_OK;
}

/* --precision bf16: the whole context again for every token (the model's buffers hold cm->seq
 * positions; a longer context slides). */
static oz_status run_full(oz_cli_model *cm, sequence *q, const sampler *s, const oz_arg_list *stops, int tokens,
                          int V_draw, float *logits, prob_id *scratch, bool stream, timings *tm, oz_err *err) {
    int V = oz_llama_get_config(cm->model)->vocab_size, W = cm->seq;
    if (stream) {
        printf("%s", q->prompt);
        fflush(stdout);
    }
    while (!q->why) {
        size_t start = q->ctx.len > (size_t)W ? q->ctx.len - (size_t)W : 0;
        int T = (int)(q->ctx.len - start);
        oz_llama_batch b = {q->ctx.ids + start, NULL, 1, T, logits};
        double t0 = oz_now_s();
        OZ_TRY(oz_llama_forward(cm->model, &b, NULL, NULL, err));
        OZ_TRY(oz_backend_sync(&cm->be, err));
        tm->decode_s += oz_now_s() - t0;
        tm->decode_tokens++;
        OZ_TRY(accept(q, draw(logits + (size_t)(T - 1) * V, V_draw, s, q, scratch), &cm->tokenizer, stops, tokens,
                      stream, err));
    }
    return OZ_OK;
}

static void finish_stream(sequence *q) {
    if (q->end > q->shown) fwrite(q->out.data + q->shown, 1, q->end - q->shown, stdout);
    printf("\n");
    fflush(stdout);
}

int oz_cmd_sample(int argc, char **argv) {
    char model[4096] = "", prompt[8192] = "", prompts_file[4096] = "", device[32] = "cpu", precision[8] = "fp32";
    int tokens = 200, threads = 0, batch = 8, top_k = 0;
    float temperature = 0.8f, top_p = 0.95f, min_p = 0.0f, rep = 1.0f;
    uint64_t seed = 1;
    bool json = false;
    oz_arg_list stops = {0};
    oz_arg args[] = {
        {"model", OZ_ARG_STR, model, sizeof model, "model directory (config.json + model.safetensors) or a .gguf file", 0},
        {"prompt", OZ_ARG_STR, prompt, sizeof prompt, "text to continue [empty]", 0},
        {"prompts", OZ_ARG_STR, prompts_file, sizeof prompts_file,
         "a file of prompts, one a line, decoded --batch at a time; each result printed as one text (instead of "
         "--prompt)", 0},
        {"batch", OZ_ARG_INT, &batch, 0, "sequences decoded together with --prompts [8]", 0},
        {"tokens", OZ_ARG_INT, &tokens, 0, "tokens to generate per prompt [200]", 0},
        {"temperature", OZ_ARG_FLOAT, &temperature, 0, "softmax temperature, 0 = greedy [0.8]", 0},
        {"top-k", OZ_ARG_INT, &top_k, 0, "draw among the k most likely tokens only, 0 = all [0]", 0},
        {"top-p", OZ_ARG_FLOAT, &top_p, 0, "nucleus sampling: smallest set of tokens with this mass [0.95]", 0},
        {"min-p", OZ_ARG_FLOAT, &min_p, 0, "drop tokens less likely than this times the most likely, 0 = off [0]", 0},
        {"repetition-penalty", OZ_ARG_FLOAT, &rep, 0,
         "divide positive logits (multiply negative ones) of tokens already in the context by this, 1 = off [1]", 0},
        {"stop", OZ_ARG_LIST, &stops, 0, "stop a sequence when its continuation contains one of these strings", 0},
        {"seed", OZ_ARG_U64, &seed, 0, "sampling seed [1]", 0},
        {"threads", OZ_ARG_INT, &threads, 0, "CPU threads, 0 = all cores [0]", 0},
        {"device", OZ_ARG_STR, device, sizeof device, "cpu | cuda | cuda:N | cuda+tf32 (a CUDA build) [cpu]", 0},
        {"precision", OZ_ARG_STR, precision, sizeof precision,
         "fp32 (with a key/value cache) | bf16 (bf16 activations and weight copies, fp32 logits, no cache yet: the "
         "whole context for every token; on cuda each new context length plans cuDNN's attention once) [fp32]", 0},
        {"json", OZ_ARG_FLAG, &json, 0,
         "end with one JSON line: tokens, prefill and decode tokens/s, the cache's bytes, peak bytes", 0},
    };
    int n_args = (int)(sizeof args / sizeof args[0]);
    int rc = oz_args_parse("sample", "Generate text from a model with a key/value cache; stops at end-of-document, "
                           "a --stop string or --tokens.", args, n_args, argc, argv);
    if (rc) {
        oz_args_free_lists(args, n_args);
        return rc == 1 ? 0 : 2;
    }
    oz_err err = {0};
    if (!model[0]) oz_fail(&err, OZ_ERR_INPUT, "--model is required");
    else if (tokens <= 0) oz_fail(&err, OZ_ERR_INPUT, "--tokens must be positive (got %d)", tokens);
    else if (temperature < 0) oz_fail(&err, OZ_ERR_INPUT, "--temperature must be >= 0");
    else if (top_p <= 0 || top_p > 1) oz_fail(&err, OZ_ERR_INPUT, "--top-p must be in (0, 1]");
    else if (top_k < 0) oz_fail(&err, OZ_ERR_INPUT, "--top-k must be >= 0 (got %d)", top_k);
    else if (!(min_p >= 0 && min_p < 1)) oz_fail(&err, OZ_ERR_INPUT, "--min-p must be in [0, 1)");
    else if (!(rep > 0)) oz_fail(&err, OZ_ERR_INPUT, "--repetition-penalty must be positive");
    else if (batch <= 0) oz_fail(&err, OZ_ERR_INPUT, "--batch must be positive (got %d)", batch);
    else if (prompts_file[0] && given(args, n_args, "prompt")) oz_fail(&err, OZ_ERR_INPUT, "give --prompt or --prompts, not both");
    for (int i = 0; i < stops.n && !err.status; i++)
        if (!stops.items[i][0]) oz_fail(&err, OZ_ERR_INPUT, "--stop: an empty string would stop at once");
    if (given(args, n_args, "stop") && stops.n == 0 && !err.status) oz_fail(&err, OZ_ERR_INPUT, "--stop needs a string");
    if (err.status) {
        oz_args_free_lists(args, n_args);
        return oz_cli_report("sample", &err);
    }
    sampler smp = {temperature, top_p, min_p, rep, top_k};

    char **lines = NULL, *line_buf = NULL, *single[1] = {prompt};
    int n_prompts = 1;
    if (prompts_file[0] && read_prompts(prompts_file, &lines, &n_prompts, &line_buf, &err) != OZ_OK) {
        oz_args_free_lists(args, n_args);
        return oz_cli_report("sample", &err);
    }
    char **texts = lines ? lines : single;
    if (batch > n_prompts) batch = n_prompts;

    oz_cli_model cm;
    memset(&cm, 0, sizeof cm);
    bool cached = strcmp(precision, "bf16") != 0;
    sequence *q = calloc((size_t)n_prompts, sizeof *q);
    float *logits = NULL;
    prob_id *scratch = NULL;
    int32_t *ids = NULL;
    oz_decode *dec = NULL;
    timings tm = {0};
    oz_decode_plan plan = {0};
    int maxp = 0, cap = 0, ctx_max = 0;
    if (!q) oz_fail(&err, OZ_ERR_NOMEM, "out of memory");
    /* The model's own buffers need one position on the cached path; the bf16 path reopens it sized
     * to the context once the prompts are encoded. */
    if (!err.status && oz_cli_model_open(&cm, model, 1, 1, threads, device, cached ? precision : "fp32", &err) == OZ_OK &&
        oz_cli_need_tokenizer(&cm, model, &err) == OZ_OK) {
        const oz_llama_config *cfg = oz_llama_get_config(cm.model);
        ctx_max = cfg->max_position_embeddings;
        for (int i = 0; i < n_prompts && !err.status; i++) {
            q[i].prompt = texts[i];
            /* Each sequence draws from its own stream, keyed by its line: batching changes nothing. */
            oz_rng_seed(&q[i].rng, seed + (uint64_t)i * 0x9E3779B97F4A7C15ull);
            if (encode_prompt(&cm.tokenizer, &q[i], &err) == OZ_OK && (int)q[i].ctx.len > maxp) maxp = (int)q[i].ctx.len;
        }
        if (!err.status && maxp >= ctx_max)
            oz_fail(&err, OZ_ERR_INPUT, "a prompt of %d tokens leaves no room in the model's context of %d positions",
                    maxp, ctx_max);
        cap = maxp + tokens < ctx_max ? maxp + tokens : ctx_max;
        if (!err.status && !cached) {
            oz_cli_model_close(&cm);
            if (oz_cli_model_open(&cm, model, 1, cap, threads, device, precision, &err) == OZ_OK)
                oz_cli_need_tokenizer(&cm, model, &err);
        }
    }
    if (!err.status) {
        const oz_llama_config *cfg = oz_llama_get_config(cm.model);
        int V = cfg->vocab_size;
        if (cached) {
            oz_decode_shape shape = {batch, cap, maxp};
            if (oz_decode_plan_memory(cfg, shape, &plan, &err) == OZ_OK)
                oz_decode_create(&dec, cm.model, &cm.arena, shape, &err);
        }
        size_t rows = cached ? (size_t)batch : (size_t)cap;
        logits = malloc(rows * V * sizeof *logits);
        scratch = calloc((size_t)V, sizeof *scratch);
        ids = calloc((size_t)batch, sizeof *ids);
        if (!err.status && (!logits || !scratch || !ids)) oz_fail(&err, OZ_ERR_NOMEM, "out of memory");
        if (!err.status && cached) {
            size_t weights = cm.arena.current[OZ_MEM_WEIGHTS];
            fprintf(stderr,
                    "ounce sample: memory %.2f MiB: weights %.2f MiB, key/value cache %.2f MiB (%zu bytes: %d "
                    "sequence%s x %d positions x %d layers x %d kv heads x %d x 2), decode buffers %.2f MiB\n",
                    (double)cm.arena.current_total / 1048576.0, (double)weights / 1048576.0,
                    (double)plan.cache_bytes / 1048576.0, plan.cache_bytes, batch, batch == 1 ? "" : "s", cap,
                    cfg->num_hidden_layers, cfg->num_key_value_heads, cfg->head_dim,
                    (double)(plan.total - plan.cache_bytes) / 1048576.0);
        }
        int V_draw = cm.tokenizer.vocab_size < V ? cm.tokenizer.vocab_size : V;
        for (int i0 = 0; i0 < n_prompts && !err.status; i0 += batch) {
            int n = n_prompts - i0 < batch ? n_prompts - i0 : batch;
            if (cached) {
                if (run_cached(&cm, dec, q + i0, n, &smp, &stops, tokens, V_draw, logits, scratch, ids, &tm, &err) != OZ_OK)
                    break;
                if (batch == 1) finish_stream(&q[i0]);
                else
                    for (int b = 0; b < n; b++) print_result(&q[i0 + b]);
            } else {
                for (int b = 0; b < n && !err.status; b++) {
                    if (run_full(&cm, &q[i0 + b], &smp, &stops, tokens, V_draw, logits, scratch, batch == 1, &tm, &err) != OZ_OK)
                        break;
                    if (batch == 1) finish_stream(&q[i0 + b]);
                    else print_result(&q[i0 + b]);
                }
            }
        }
        bool context_hit = false;
        long generated = 0;
        for (int i = 0; i < n_prompts; i++) {
            context_hit |= q[i].why && strcmp(q[i].why, "context") == 0;
            generated += q[i].generated;
        }
        if (!err.status && context_hit)
            fprintf(stderr, "ounce sample: stopped at the model's context of %d positions\n", ctx_max);
        if (!err.status && json)
            printf("{\"prompts\":%d,\"generated\":%ld,\"prefill_tokens\":%ld,\"prefill_s\":%.6f,"
                   "\"prefill_tokens_per_s\":%.3f,\"decode_tokens\":%ld,\"decode_s\":%.6f,\"decode_tokens_per_s\":%.3f,"
                   "\"kv_cache_bytes\":%zu,\"peak_bytes\":%zu}\n",
                   n_prompts, generated, tm.prefill_tokens, tm.prefill_s,
                   tm.prefill_s > 0 ? tm.prefill_tokens / tm.prefill_s : 0.0, tm.decode_tokens, tm.decode_s,
                   tm.decode_s > 0 ? tm.decode_tokens / tm.decode_s : 0.0, plan.cache_bytes, cm.arena.peak_total);
    }
    oz_decode_destroy(dec);
    free(logits);
    free(scratch);
    free(ids);
    for (int i = 0; q && i < n_prompts; i++) {
        oz_tokens_free(&q[i].ctx);
        oz_text_free(&q[i].out);
    }
    free(q);
    free(lines);
    free(line_buf);
    oz_args_free_lists(args, n_args);
    oz_cli_model_close(&cm);
    if (err.status) return oz_cli_report("sample", &err);
    return 0;
}
