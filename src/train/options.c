/* Training options: their defaults, their JSON form in trainer_state.json, their validation, and
 * what they configure (the model's shape, the optimizer, the gradient mode). */
#include "train/options.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "io/json.h"
#include "numeric/subspace.h"

void oz_train_opts_default(oz_train_opts *o) {
    memset(o, 0, sizeof *o);
    snprintf(o->model, sizeof o->model, "demo");
    snprintf(o->optim, sizeof o->optim, "adamw");
    snprintf(o->device, sizeof o->device, "cpu");
    snprintf(o->precision, sizeof o->precision, "auto");
    snprintf(o->master_weights, sizeof o->master_weights, "auto");
    snprintf(o->recompute, sizeof o->recompute, "none");
    snprintf(o->mini_seq, sizeof o->mini_seq, "off");
    o->rank = 128;
    o->update_gap = 200;
    o->galore_scale = 0.25f;
    snprintf(o->proj_type, sizeof o->proj_type, "std");
    snprintf(o->moments_at_switch, sizeof o->moments_at_switch, "keep");
    snprintf(o->subspace, sizeof o->subspace, "randomized");
    snprintf(o->galore_targets, sizeof o->galore_targets, "attn,mlp");
    snprintf(o->per_layer_update, sizeof o->per_layer_update, "auto");
    snprintf(o->lazy_update, sizeof o->lazy_update, "auto");
    snprintf(o->vocab_bf16, sizeof o->vocab_bf16, "auto");
    snprintf(o->factored_grads, sizeof o->factored_grads, "auto");
    snprintf(o->on_nonfinite, sizeof o->on_nonfinite, "stop");
    o->cos_threshold = 0.4f;
    o->gap_growth = 2.0f;
    o->cos_window = 5;
    o->max_gap = 0;
    o->proj_bits = 0;
    o->steps = 1000;
    o->batch = 8;
    o->seq = 256;
    o->grad_accum = 1;
    o->lr = 1e-3f;
    o->min_lr_ratio = 0.1f;
    o->warmup = -1; /* -1: 5% of the steps */
    o->weight_decay = 0.1f;
    o->clip = 1.0f;
    snprintf(o->clip_mode, sizeof o->clip_mode, "auto");
    o->beta1 = 0.9f;
    o->beta2 = 0.95f;
    o->adam_eps = 1e-8f;
    o->seed = 1;
    o->eval_every = 100;
    o->eval_batches = 8;
    o->save_every = 0;
    o->keep = 2;
    o->log_every = 10;
    o->threads = 0;
    o->inrank_init_rank = 2;      /* InRank's defaults (the reference's) */
    o->inrank_buffer = 100;
    o->inrank_threshold = 0.9f;
    o->inrank_check_every = 25;
    o->inrank_warmup = 200;
    o->inrank_freeze_after = 0;
    snprintf(o->inrank_targets, sizeof o->inrank_targets, "mlp");
}

/* ------------------------------------------------------------------ JSON (trainer_state.json) */

#define OPT_INT_FIELDS(X)                                                                             \
    X(steps) X(batch) X(seq) X(grad_accum) X(warmup) X(eval_every) X(eval_batches) X(save_every)     \
        X(keep) X(log_every) X(threads) X(rank) X(update_gap) X(cos_window) X(max_gap) X(proj_bits)
#define OPT_FLOAT_FIELDS(X) \
    X(lr) X(min_lr_ratio) X(weight_decay) X(clip) X(beta1) X(beta2) X(adam_eps) X(galore_scale) X(cos_threshold) \
        X(gap_growth)
#define OPT_STR_FIELDS(X)                                                                          \
    X(data) X(model) X(out) X(optim) X(device) X(recompute) X(mini_seq) X(proj_type) X(moments_at_switch) \
        X(subspace) X(galore_targets) X(per_layer_update) X(lazy_update)

cJSON *oz_train_opts_to_json(const oz_train_opts *o) {
    cJSON *j = cJSON_CreateObject();
#define ADD_NUM(f) cJSON_AddNumberToObject(j, #f, (double)o->f);
#define ADD_STR(f) cJSON_AddStringToObject(j, #f, o->f);
    OPT_INT_FIELDS(ADD_NUM)
    OPT_FLOAT_FIELDS(ADD_NUM)
    OPT_STR_FIELDS(ADD_STR)
#undef ADD_NUM
#undef ADD_STR
    char seed[32];
    snprintf(seed, sizeof seed, "%" PRIu64, o->seed);
    cJSON_AddStringToObject(j, "seed", seed); /* as a string: JSON numbers lose 64-bit integers */
    cJSON_AddStringToObject(j, "init", o->init);
    cJSON_AddStringToObject(j, "factored_grads", o->factored_grads);
    cJSON_AddStringToObject(j, "vocab_bf16", o->vocab_bf16);
    cJSON_AddStringToObject(j, "on_nonfinite", o->on_nonfinite);
    cJSON_AddStringToObject(j, "precision", o->precision);
    cJSON_AddStringToObject(j, "master_weights", o->master_weights);
    cJSON_AddStringToObject(j, "clip_mode", o->clip_mode);
    cJSON_AddBoolToObject(j, "welore", o->welore);
    if (o->inrank) {
        cJSON *ir = cJSON_AddObjectToObject(j, "inrank");
        cJSON_AddNumberToObject(ir, "init_rank", o->inrank_init_rank);
        cJSON_AddNumberToObject(ir, "buffer", o->inrank_buffer);
        cJSON_AddNumberToObject(ir, "threshold", o->inrank_threshold);
        cJSON_AddNumberToObject(ir, "check_every", o->inrank_check_every);
        cJSON_AddNumberToObject(ir, "warmup", o->inrank_warmup);
        cJSON_AddNumberToObject(ir, "freeze_after", o->inrank_freeze_after);
        cJSON_AddStringToObject(ir, "targets", o->inrank_targets);
    }
    return j;
}

oz_status oz_train_opts_from_json(const cJSON *j, const char *path, oz_train_opts *o, oz_err *err) {
    oz_train_opts_default(o);
    const cJSON *it;
#define GET_INT(f)                                                                            \
    it = cJSON_GetObjectItemCaseSensitive(j, #f);                                             \
    if (!oz_json_int_in(it, -2147483648.0, 2147483647.0, &o->f))                              \
        return oz_fail(err, OZ_ERR_INPUT, "%s: setting \"%s\" is missing or not an integer", path, #f);
#define GET_FLOAT(f)                                                                          \
    it = cJSON_GetObjectItemCaseSensitive(j, #f);                                             \
    if (!oz_json_float(it, &o->f))                                                            \
        return oz_fail(err, OZ_ERR_INPUT, "%s: setting \"%s\" is missing or not a finite number", path, #f);
#define GET_STR(f)                                                                            \
    it = cJSON_GetObjectItemCaseSensitive(j, #f);                                             \
    if (!cJSON_IsString(it)) return oz_fail(err, OZ_ERR_INPUT, "%s: missing setting \"%s\"", path, #f); \
    snprintf(o->f, sizeof o->f, "%s", it->valuestring);
    OPT_INT_FIELDS(GET_INT)
    OPT_FLOAT_FIELDS(GET_FLOAT)
    OPT_STR_FIELDS(GET_STR)
#undef GET_INT
#undef GET_FLOAT
#undef GET_STR
    it = cJSON_GetObjectItemCaseSensitive(j, "seed");
    if (!cJSON_IsString(it)) return oz_fail(err, OZ_ERR_INPUT, "%s: missing setting \"seed\"", path);
    o->seed = strtoull(it->valuestring, NULL, 10);
    o->welore = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "welore")); /* absent in older states: off */
    /* Absent in states written before these options existed: off, as those runs trained. */
    it = cJSON_GetObjectItemCaseSensitive(j, "factored_grads");
    snprintf(o->factored_grads, sizeof o->factored_grads, "%s", cJSON_IsString(it) ? it->valuestring : "off");
    it = cJSON_GetObjectItemCaseSensitive(j, "vocab_bf16");
    snprintf(o->vocab_bf16, sizeof o->vocab_bf16, "%s", cJSON_IsString(it) ? it->valuestring : "off");
    it = cJSON_GetObjectItemCaseSensitive(j, "on_nonfinite"); /* absent before it existed: those runs stopped */
    snprintf(o->on_nonfinite, sizeof o->on_nonfinite, "%s", cJSON_IsString(it) ? it->valuestring : "stop");
    it = cJSON_GetObjectItemCaseSensitive(j, "precision"); /* absent in older states: fp32 */
    snprintf(o->precision, sizeof o->precision, "%s", cJSON_IsString(it) ? it->valuestring : "fp32");
    it = cJSON_GetObjectItemCaseSensitive(j, "clip_mode"); /* absent before running clipping: exact */
    snprintf(o->clip_mode, sizeof o->clip_mode, "%s", cJSON_IsString(it) ? it->valuestring : "exact");
    it = cJSON_GetObjectItemCaseSensitive(j, "master_weights"); /* absent before bf16 weights: bf16 kept masters */
    snprintf(o->master_weights, sizeof o->master_weights, "%s", cJSON_IsString(it) ? it->valuestring : "on");
    it = cJSON_GetObjectItemCaseSensitive(j, "init"); /* absent in older states: a run from scratch */
    snprintf(o->init, sizeof o->init, "%s", cJSON_IsString(it) ? it->valuestring : "");
    const cJSON *ir = cJSON_GetObjectItemCaseSensitive(j, "inrank"); /* absent: not an InRank run */
    if (ir) {
        const cJSON *tg = cJSON_GetObjectItemCaseSensitive(ir, "targets");
        static const char *const keys[5] = {"init_rank", "buffer", "check_every", "warmup", "freeze_after"};
        int *ints[5] = {&o->inrank_init_rank, &o->inrank_buffer, &o->inrank_check_every, &o->inrank_warmup,
                        &o->inrank_freeze_after};
        for (int i = 0; i < 5; i++)
            if (!oz_json_int_in(cJSON_GetObjectItemCaseSensitive(ir, keys[i]), 0, 2147483647.0, ints[i]))
                return oz_fail(err, OZ_ERR_INPUT, "%s: setting \"inrank.%s\" is missing or not an integer >= 0", path,
                               keys[i]);
        if (!oz_json_float(cJSON_GetObjectItemCaseSensitive(ir, "threshold"), &o->inrank_threshold))
            return oz_fail(err, OZ_ERR_INPUT, "%s: setting \"inrank.threshold\" is missing or not a finite number", path);
        if (!cJSON_IsString(tg)) return oz_fail(err, OZ_ERR_INPUT, "%s: missing setting \"inrank.targets\"", path);
        o->inrank = true;
        snprintf(o->inrank_targets, sizeof o->inrank_targets, "%s", tg->valuestring);
    }
    return OZ_OK;
}

/* ------------------------------------------------------------------ what the options configure */

static oz_status optim_config(const oz_train_opts *o, oz_optim_config *c, oz_err *err) {
    memset(c, 0, sizeof *c);
    if (!oz_optim_kind_parse(o->optim, &c->kind))
        return oz_fail(err, OZ_ERR_INPUT,
                       "--optim %s is not available (choose: " OZ_OPTIM_KIND_NAMES ")", o->optim);
    const oz_optim_traits *traits = oz_optim_traits_of(c->kind);
    c->int8_weights = traits->int8_weights;
    if (!oz_proj_type_parse(o->proj_type, &c->proj))
        return oz_fail(err, OZ_ERR_INPUT, "--proj-type %s is not known (choose: std, reverse_std, left, right, full)",
                       o->proj_type);
    if (!oz_switch_mode_parse(o->moments_at_switch, &c->at_switch))
        return oz_fail(err, OZ_ERR_INPUT, "--moments-at-switch %s is not known (choose: keep, reset, rotate)",
                       o->moments_at_switch);
    if (strcmp(o->subspace, "svd") == 0) c->subspace = OZ_SUBSPACE_EXACT;
    else if (strcmp(o->subspace, "randomized") == 0) c->subspace = OZ_SUBSPACE_RANDOMIZED;
    else return oz_fail(err, OZ_ERR_INPUT, "--subspace %s is not known (choose: svd, randomized)", o->subspace);
    c->galore_attn = strstr(o->galore_targets, "attn") != NULL;
    c->galore_mlp = strstr(o->galore_targets, "mlp") != NULL;
    if (!c->galore_attn && !c->galore_mlp)
        return oz_fail(err, OZ_ERR_INPUT, "--galore-targets %s: expected attn, mlp or attn,mlp", o->galore_targets);
    bool galore = traits->galore;
    if (galore && (o->rank <= 0 || o->update_gap <= 0 || !(o->galore_scale > 0)))
        return oz_fail(err, OZ_ERR_INPUT, "--rank, --update-gap and --galore-scale must be positive");
    c->beta1 = o->beta1;
    c->beta2 = o->beta2;
    c->eps = o->adam_eps;
    c->weight_decay = o->weight_decay;
    c->rank = o->rank;
    c->update_gap = o->update_gap;
    c->scale = o->galore_scale;
    c->seed = o->seed;
    if (strcmp(o->lazy_update, "on") == 0) c->lazy = true;
    else if (strcmp(o->lazy_update, "auto") == 0) c->lazy = traits->lazy_default;
    else if (strcmp(o->lazy_update, "off") != 0)
        return oz_fail(err, OZ_ERR_INPUT, "--lazy-update %s: expected auto, on or off", o->lazy_update);
    c->cos_threshold = o->cos_threshold;
    c->gap_growth = o->gap_growth;
    c->cos_window = o->cos_window;
    c->max_gap = o->max_gap > 0 ? o->max_gap : 8 * o->update_gap;
    c->proj_bits = o->proj_bits ? o->proj_bits : traits->proj_bits;
    if (c->proj_bits != 32 && c->proj_bits != 4)
        return oz_fail(err, OZ_ERR_INPUT, "--proj-bits must be 32 or 4 (got %d)", o->proj_bits);
    return OZ_OK;
}

/* The step's gradient mode, decided once: the model emits by it and the optimizer takes by it. */
static oz_status grad_mode(const oz_train_opts *o, const oz_optim_config *oc, const oz_llama_config *cfg,
                           int mlp_chunks, int precision, oz_grad_mode *mode, oz_err *err) {
    bool galore = oz_optim_traits_of(oc->kind)->galore;
    memset(mode, 0, sizeof *mode);
    if (strcmp(o->per_layer_update, "auto") == 0) mode->per_layer = galore;
    else if (strcmp(o->per_layer_update, "on") == 0) mode->per_layer = true;
    else if (strcmp(o->per_layer_update, "off") != 0)
        return oz_fail(err, OZ_ERR_INPUT, "--per-layer-update %s: expected auto, on or off", o->per_layer_update);
    /* Without accumulation nothing needs the whole step's gradients before an update, so per-layer
     * mode updates as each tensor's gradient arrives and keeps no accumulator, unless clipping is
     * exact (the global norm needs every gradient first). Running clipping (oz_optim_config) works
     * inside those updates: auto takes it wherever they are possible. */
    const bool running = strcmp(o->clip_mode, "running") == 0, exact = strcmp(o->clip_mode, "exact") == 0;
    if (!running && !exact && strcmp(o->clip_mode, "auto") != 0)
        return oz_fail(err, OZ_ERR_INPUT, "--clip-mode %s: expected auto, exact or running", o->clip_mode);
    const bool can_immediate = mode->per_layer && o->grad_accum == 1;
    if (running && o->clip > 0 && !can_immediate)
        return oz_fail(err, OZ_ERR_INPUT, "--clip-mode running clips updates made as gradients arrive: it needs "
                       "per-layer updates (--per-layer-update on, the GaLore family's default) and no --grad-accum");
    const bool skip = strcmp(o->on_nonfinite, "skip") == 0;
    mode->immediate = can_immediate && (o->clip == 0 || running || (!exact && !skip));
    if (mode->immediate && strcmp(o->on_nonfinite, "skip") == 0)
        return oz_fail(err, OZ_ERR_INPUT, "--on-nonfinite skip needs the step's updates applied at its end, not as "
                       "gradients arrive (use --clip-mode exact with --clip > 0, --grad-accum > 1 or --per-layer-update off)");
    /* Updates as gradients arrive: the embedding and head take theirs one vocabulary block at a time. */
    mode->vocab_blocks = mode->immediate && !cfg->tie_word_embeddings;
    /* bf16 does not take gradients in vocabulary blocks or as factors yet: its immediate updates
     * get the embedding's and head's whole (more gradient memory, the same updates). */
    bool bf16 = precision == OZ_PREC_BF16;
    if (bf16) mode->vocab_blocks = false;
    mode->tokens = o->batch * o->seq;
    /* GaLore with immediate updates and randomized subspaces only needs products of a dense
     * matrix's gradient: its factors (the layer's output gradient and input) are projected and
     * the range finder runs on them, so no such gradient is formed. Not for the MLP when its
     * gradients accumulate over mini-sequences, nor for the exact SVD (it needs the matrix). */
    if (strcmp(o->factored_grads, "auto") != 0 && strcmp(o->factored_grads, "off") != 0)
        return oz_fail(err, OZ_ERR_INPUT, "--factored-grads %s: expected auto or off", o->factored_grads);
    if (strcmp(o->factored_grads, "auto") == 0 && galore && mode->immediate && !bf16 && o->rank > 0 &&
        oc->subspace == OZ_SUBSPACE_RANDOMIZED) {
        if (oc->galore_attn) mode->factored |= (1u << OZ_M_Q) | (1u << OZ_M_K) | (1u << OZ_M_V) | (1u << OZ_M_O);
        if (oc->galore_mlp && mlp_chunks <= 1) mode->factored |= (1u << OZ_M_GATE) | (1u << OZ_M_UP) | (1u << OZ_M_DOWN);
    }
    return OZ_OK;
}

oz_status oz_train_configure(const oz_train_opts *o, const oz_llama_config *cfg, oz_llama_shape *shape,
                             oz_optim_config *oc, oz_err *err) {
    memset(shape, 0, sizeof *shape);
    /* Token counts are ints in the model and the kernels (train and memory both come here). */
    if (o->batch <= 0 || o->seq <= 0 || (long long)o->batch * o->seq > OZ_TRAIN_MAX_TOKENS)
        return oz_fail(err, OZ_ERR_INPUT, "--batch x --seq must be between 1 and %d tokens (got %lld)",
                       OZ_TRAIN_MAX_TOKENS, (long long)o->batch * o->seq);
    OZ_TRY(optim_config(o, oc, err));
    /* auto: decided at the end, once the rest of the shape is known */
    const bool auto_precision = strcmp(o->precision, "auto") == 0;
    if (!auto_precision && !oz_precision_parse(o->precision, &shape->precision))
        return oz_fail(err, OZ_ERR_INPUT, "--precision %s is not known (choose: auto, " OZ_PRECISION_NAMES ")",
                       o->precision);
    shape->cuda = oz_backend_is_cuda(o->device); /* bf16 plans the attention workspace for it */
    shape->batch = o->batch;
    shape->seq = o->seq;
    shape->with_grads = true;
    shape->int8_matrices = oc->int8_weights;
    if (o->welore) shape->freeze = OZ_FREEZE_EMBED | OZ_FREEZE_HEAD | OZ_FREEZE_DENSE;
    if (strcmp(o->recompute, "layer") == 0) shape->recompute = true;
    else if (strcmp(o->recompute, "layer-bf16") == 0) shape->recompute = shape->bf16_checkpoints = true;
    else if (strcmp(o->recompute, "layer-offload") == 0)
        shape->recompute = shape->bf16_checkpoints = shape->offload_checkpoints = true;
    else if (strcmp(o->recompute, "none") != 0)
        return oz_fail(err, OZ_ERR_INPUT, "--recompute %s is not known (choose: none, layer, layer-bf16, layer-offload)",
                       o->recompute);
    int tokens = o->batch * o->seq;
    if (strcmp(o->mini_seq, "auto") == 0) {
        oz_llama_mini_seq_auto(cfg, tokens, &shape->mlp_chunks, &shape->head_chunks);
    } else if (strcmp(o->mini_seq, "off") != 0) {
        char *end;
        long n = strtol(o->mini_seq, &end, 10);
        if (*o->mini_seq == '\0' || *end != '\0' || n < 1 || n > tokens)
            return oz_fail(err, OZ_ERR_INPUT, "--mini-seq %s: expected off, auto, or a chunk count from 1 to %d",
                           o->mini_seq, tokens);
        shape->mlp_chunks = shape->head_chunks = (int)n;
    }
    OZ_TRY(grad_mode(o, oc, cfg, shape->mlp_chunks, shape->precision, &shape->grads, err));
    oc->grads = shape->grads;
    oc->clip = o->clip;
    oc->clip_running = shape->grads.immediate && o->clip > 0;
    /* Q-GaLore keeps what it does not quantize in bf16: with its updates in row blocks (which
     * round them back stochastically) the embedding and head take half the bytes. */
    bool vocab_ok = shape->int8_matrices && shape->grads.vocab_blocks;
    if (strcmp(o->vocab_bf16, "auto") == 0) shape->bf16_vocab = vocab_ok;
    else if (strcmp(o->vocab_bf16, "on") == 0) shape->bf16_vocab = true;
    else if (strcmp(o->vocab_bf16, "off") != 0)
        return oz_fail(err, OZ_ERR_INPUT, "--vocab-bf16 %s: expected auto, on or off", o->vocab_bf16);
    if (shape->bf16_vocab && !vocab_ok)
        return oz_fail(err, OZ_ERR_INPUT,
                       "--vocab-bf16 on needs --optim qgalore with updates as gradients arrive (--clip 0, no "
                       "--grad-accum, an untied head)");
    /* auto: bf16 on CUDA wherever the bf16 model takes the run exactly as planned in fp32 (the same
     * gradient mode: a shape with factored gradients or vocabulary blocks stays fp32, as do the
     * modes bf16 does not cover yet); fp32 on the CPU, where bf16 is only slower. */
    if (auto_precision)
        shape->precision = shape->cuda && !oz_llama_bf16_unsupported(cfg, shape) ? OZ_PREC_BF16 : OZ_PREC_FP32;
    /* bf16 weights (no fp32 master) where the optimizer's update takes them: AdamW's fused step
     * (adamw_step_bf16). The 8-bit and GaLore updates still write fp32 weights. */
    const bool takes_bf16 = oc->kind == OZ_OPTIM_ADAMW;
    if (strcmp(o->master_weights, "auto") == 0) shape->bf16_weights = shape->precision == OZ_PREC_BF16 && takes_bf16;
    else if (strcmp(o->master_weights, "off") == 0) shape->bf16_weights = shape->precision == OZ_PREC_BF16;
    else if (strcmp(o->master_weights, "on") != 0)
        return oz_fail(err, OZ_ERR_INPUT, "--master-weights %s: expected auto, on or off", o->master_weights);
    if (shape->bf16_weights && !takes_bf16)
        return oz_fail(err, OZ_ERR_INPUT, "--master-weights off (bf16 weights) takes --optim adamw only so far; %s "
                       "keeps fp32 master weights (--master-weights auto or on)", o->optim);
    return OZ_OK;
}

oz_status oz_train_opts_check(const oz_train_opts *o, oz_err *err) {
#define NEED(cond, ...) \
    if (!(cond)) return oz_fail(err, OZ_ERR_INPUT, __VA_ARGS__)
    NEED(o->data[0], "train: --data is required (a directory made by `ounce prepare`, or random:VOCAB)");
    NEED(o->out[0], "train: --out is required");
    NEED(strcmp(o->device, "cpu") == 0 || oz_backend_is_cuda(o->device),
         "train: --device %s is not known (choose: cpu, cuda, cuda:N, cuda+tf32)", o->device);
    NEED(o->steps > 0, "train: --steps must be positive (got %d)", o->steps);
    NEED(o->batch > 0, "train: --batch must be positive (got %d)", o->batch);
    NEED(o->seq > 1, "train: --seq must be at least 2 (got %d)", o->seq);
    NEED(o->grad_accum > 0, "train: --grad-accum must be positive (got %d)", o->grad_accum);
    NEED(o->lr > 0 && isfinite(o->lr), "train: --lr must be a positive number (got %g)", (double)o->lr);
    NEED(o->min_lr_ratio >= 0 && o->min_lr_ratio <= 1, "train: --min-lr-ratio must be in [0, 1] (got %g)",
         (double)o->min_lr_ratio);
    NEED(o->warmup >= -1, "train: --warmup must be >= 0 (got %d)", o->warmup);
    NEED(o->weight_decay >= 0, "train: --weight-decay must be >= 0 (got %g)", (double)o->weight_decay);
    NEED(o->clip >= 0, "train: --clip must be >= 0 (0 disables clipping; got %g)", (double)o->clip);
    NEED(o->beta1 >= 0 && o->beta1 < 1 && o->beta2 >= 0 && o->beta2 < 1,
         "train: --beta1/--beta2 must be in [0, 1)");
    NEED(o->adam_eps > 0 && o->adam_eps < 1, "train: --adam-eps must be in (0, 1) (got %g)", (double)o->adam_eps);
    NEED(isfinite(o->weight_decay) && isfinite(o->clip) && isfinite(o->galore_scale) && isfinite(o->cos_threshold) &&
             isfinite(o->gap_growth) && isfinite(o->inrank_threshold),
         "train: every number must be finite");
    NEED(o->eval_every >= 0 && o->save_every >= 0 && o->log_every >= 0 && o->keep >= 0 && o->eval_batches > 0,
         "train: --eval-every, --save-every, --log-every and --keep must be >= 0, --eval-batches > 0");
    NEED(o->threads >= 0, "train: --threads must be >= 0 (0 = all cores)");
    NEED(strcmp(o->on_nonfinite, "stop") == 0 || strcmp(o->on_nonfinite, "skip") == 0,
         "train: --on-nonfinite %s: expected stop or skip", o->on_nonfinite);
#undef NEED
    return OZ_OK;
}

