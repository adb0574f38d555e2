/* The training loop: gradient accumulation, global-norm clipping, AdamW with warmup + cosine,
 * periodic validation and checkpoints, bit-exact resume.
 *
 * A checkpoint directory (OUT/step-N) holds model.safetensors + config.json (what Hugging Face
 * reads), optimizer.safetensors (the optimizer's whole state, see optim/optimizer.h) and
 * trainer_state.json (step, every setting, the data cursor). Resume restores all of it, so the
 * continued run computes exactly the numbers the uninterrupted run would have. */
#include "train/trainer.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <inttypes.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "data/loader.h"
#include "io/atomic.h"
#include "model/hf_model.h"
#include "model/llama.h"
#include "optim/optimizer.h"
#include "numeric/subspace.h"
#include "optim/schedule.h"
#include "train/inrank.h"
#include "util/clock.h"

void oz_train_opts_default(oz_train_opts *o) {
    memset(o, 0, sizeof *o);
    snprintf(o->model, sizeof o->model, "demo");
    snprintf(o->optim, sizeof o->optim, "adamw");
    snprintf(o->device, sizeof o->device, "cpu");
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

/* ------------------------------------------------------------------ trainer state (JSON) */

#define OPT_INT_FIELDS(X)                                                                             \
    X(steps) X(batch) X(seq) X(grad_accum) X(warmup) X(eval_every) X(eval_batches) X(save_every)     \
        X(keep) X(log_every) X(threads) X(rank) X(update_gap) X(cos_window) X(max_gap) X(proj_bits)
#define OPT_FLOAT_FIELDS(X) \
    X(lr) X(min_lr_ratio) X(weight_decay) X(clip) X(beta1) X(beta2) X(adam_eps) X(galore_scale) X(cos_threshold) \
        X(gap_growth)
#define OPT_STR_FIELDS(X)                                                                          \
    X(data) X(model) X(out) X(optim) X(device) X(recompute) X(mini_seq) X(proj_type) X(moments_at_switch) \
        X(subspace) X(galore_targets) X(per_layer_update) X(lazy_update)

static cJSON *opts_to_json(const oz_train_opts *o) {
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

static oz_status opts_from_json(const cJSON *j, const char *path, oz_train_opts *o, oz_err *err) {
    oz_train_opts_default(o);
    const cJSON *it;
#define GET_INT(f)                                                                            \
    it = cJSON_GetObjectItemCaseSensitive(j, #f);                                             \
    if (!cJSON_IsNumber(it)) return oz_fail(err, OZ_ERR_INPUT, "%s: missing setting \"%s\"", path, #f); \
    o->f = (int)it->valuedouble;
#define GET_FLOAT(f)                                                                          \
    it = cJSON_GetObjectItemCaseSensitive(j, #f);                                             \
    if (!cJSON_IsNumber(it)) return oz_fail(err, OZ_ERR_INPUT, "%s: missing setting \"%s\"", path, #f); \
    o->f = (float)it->valuedouble;
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
    it = cJSON_GetObjectItemCaseSensitive(j, "init"); /* absent in older states: a run from scratch */
    snprintf(o->init, sizeof o->init, "%s", cJSON_IsString(it) ? it->valuestring : "");
    const cJSON *ir = cJSON_GetObjectItemCaseSensitive(j, "inrank"); /* absent: not an InRank run */
    if (ir) {
        const cJSON *n[6], *tg = cJSON_GetObjectItemCaseSensitive(ir, "targets");
        static const char *const keys[6] = {"init_rank", "buffer", "threshold", "check_every", "warmup", "freeze_after"};
        for (int i = 0; i < 6; i++) {
            n[i] = cJSON_GetObjectItemCaseSensitive(ir, keys[i]);
            if (!cJSON_IsNumber(n[i])) return oz_fail(err, OZ_ERR_INPUT, "%s: missing setting \"inrank.%s\"", path, keys[i]);
        }
        if (!cJSON_IsString(tg)) return oz_fail(err, OZ_ERR_INPUT, "%s: missing setting \"inrank.targets\"", path);
        o->inrank = true;
        o->inrank_init_rank = n[0]->valueint;
        o->inrank_buffer = n[1]->valueint;
        o->inrank_threshold = (float)n[2]->valuedouble;
        o->inrank_check_every = n[3]->valueint;
        o->inrank_warmup = n[4]->valueint;
        o->inrank_freeze_after = n[5]->valueint;
        snprintf(o->inrank_targets, sizeof o->inrank_targets, "%s", tg->valuestring);
    }
    return OZ_OK;
}

typedef struct {
    int step;
    oz_data_cursor cursor;
    double tokens_seen;
} run_position;

static oz_status state_write(const char *path, const oz_train_opts *o, const run_position *pos,
                             const char *tokenizer, cJSON *inrank, oz_err *err) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "format", "ounce-trainer-state");
    cJSON_AddNumberToObject(root, "version", 1);
    cJSON_AddNumberToObject(root, "step", pos->step);
    cJSON_AddNumberToObject(root, "tokens_seen", pos->tokens_seen);
    cJSON_AddStringToObject(root, "tokenizer", tokenizer);
    cJSON_AddItemToObject(root, "options", opts_to_json(o));
    if (inrank) cJSON_AddItemToObject(root, "inrank", inrank);
    cJSON *cur = cJSON_AddObjectToObject(root, "data_cursor");
    char buf[32];
    cJSON *rng = cJSON_AddArrayToObject(cur, "rng");
    for (int i = 0; i < 4; i++) {
        snprintf(buf, sizeof buf, "%" PRIu64, pos->cursor.rng.s[i]);
        cJSON_AddItemToArray(rng, cJSON_CreateString(buf));
    }
    snprintf(buf, sizeof buf, "%" PRIu64, (uint64_t)pos->cursor.batches);
    cJSON_AddStringToObject(cur, "batches", buf);
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return oz_fail(err, OZ_ERR_NOMEM, "out of memory writing %s", path);
    oz_status st = oz_atomic_write(path, text, strlen(text), err);
    free(text);
    return st;
}

static oz_status state_read(const char *path, oz_train_opts *o, run_position *pos, oz_err *err) {
    char *text;
    size_t n;
    OZ_TRY(oz_read_file(path, &text, &n, err));
    cJSON *root = cJSON_ParseWithLength(text, n);
    free(text);
    oz_status st = OZ_OK;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    if (!root || !cJSON_IsString(fmt) || strcmp(fmt->valuestring, "ounce-trainer-state") != 0) {
        st = oz_fail(err, OZ_ERR_INPUT, "%s: not an ounce trainer state file", path);
        goto done;
    }
    const cJSON *step = cJSON_GetObjectItemCaseSensitive(root, "step");
    const cJSON *seen = cJSON_GetObjectItemCaseSensitive(root, "tokens_seen");
    const cJSON *cur = cJSON_GetObjectItemCaseSensitive(root, "data_cursor");
    const cJSON *rng = cJSON_GetObjectItemCaseSensitive(cur, "rng");
    const cJSON *batches = cJSON_GetObjectItemCaseSensitive(cur, "batches");
    if (!cJSON_IsNumber(step) || !cJSON_IsArray(rng) ||
        cJSON_GetArraySize(rng) != 4 || !cJSON_IsString(batches)) {
        st = oz_fail(err, OZ_ERR_INPUT, "%s: trainer state is incomplete", path);
        goto done;
    }
    pos->step = (int)step->valuedouble;
    pos->tokens_seen = cJSON_IsNumber(seen) ? seen->valuedouble : 0;
    for (int i = 0; i < 4; i++) {
        const cJSON *w = cJSON_GetArrayItem(rng, i);
        if (!cJSON_IsString(w)) {
            st = oz_fail(err, OZ_ERR_INPUT, "%s: bad data cursor", path);
            goto done;
        }
        pos->cursor.rng.s[i] = strtoull(w->valuestring, NULL, 10);
    }
    pos->cursor.batches = strtoull(batches->valuestring, NULL, 10);
    st = opts_from_json(cJSON_GetObjectItemCaseSensitive(root, "options"), path, o, err);
done:
    cJSON_Delete(root);
    return st;
}

/* ------------------------------------------------------------------ checkpoints */

typedef struct {
    oz_train_opts opts;
    oz_llama_config cfg;
    char tokenizer[OZ_TOKENIZER_NAME_MAX];
    char tokenizer_dir[OZ_PATH_MAX]; /* where tokenizer.json and friends come from, "" if none */
    oz_backend be;
    bool be_ready;
    oz_arena arena;
    oz_llama *model;
    oz_optimizer *opt;
    bool per_layer;
    bool per_tensor;           /* immediate updates: gradients handed off tensor by tensor */
    int micro;                 /* current micro-batch, for the grad hook */
    oz_status hook_status;     /* first failure inside the grad hook */
    oz_err hook_err;
    oz_dataset data;
    bool data_ready;
    float *host_params;        /* staging for saves when the backend's memory is not host memory */
    int32_t *inputs, *targets;
    FILE *metrics;
    oz_inrank_settings irs;    /* InRank: settings, ranks and stage, the rank log */
    oz_inrank_run ir;
    FILE *rank_log;
    /* progress of long subspace refreshes (minutes at 7b on a CPU), through cb->on_note */
    const oz_train_callbacks *cb;
    int cur_step;
    double step_t0, refresh_last;
} trainer;

/* Host view of the weights for saving: the backend's own memory when it is host memory (CPU),
 * else a staging copy. */
static oz_status host_weights(trainer *t, const float **params, oz_err *err) {
    const oz_param_layout *lay = oz_llama_get_layout(t->model);
    if (t->be.host_visible && oz_llama_params(t->model)) {
        *params = oz_llama_params(t->model);
        return OZ_OK;
    }
    size_t bytes = lay->total * sizeof(float);
    if (!t->host_params) t->host_params = malloc(bytes);
    if (!t->host_params) return oz_fail(err, OZ_ERR_NOMEM, "out of memory staging a checkpoint");
    oz_llama_export_params(t->model, t->host_params);
    *params = t->host_params;
    return OZ_OK;
}

static oz_status save_checkpoint(trainer *t, const char *dir, const run_position *pos, bool with_optimizer,
                                 oz_err *err) {
    const float *params = NULL;
    OZ_TRY(host_weights(t, &params, err));
    OZ_TRY(oz_llama_save(dir, &t->cfg, t->tokenizer, oz_llama_get_layout(t->model), params, err));
    char path[OZ_PATH_MAX + 64];
    if (with_optimizer) {
        snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
        OZ_TRY(oz_optimizer_save(t->opt, path, err));
    }
    OZ_TRY(oz_copy_hf_side_files(t->tokenizer_dir, dir, err));
    snprintf(path, sizeof path, "%s/trainer_state.json", dir);
    return state_write(path, &t->opts, pos, t->tokenizer, t->opts.inrank ? oz_inrank_state_to_json(&t->ir, &t->cfg) : NULL,
                       err);
}

static int step_dir_number(const char *name) {
    if (strncmp(name, "step-", 5) != 0) return -1;
    char *end;
    long n = strtol(name + 5, &end, 10);
    return (*end == '\0' && n >= 0 && n < 1000000000) ? (int)n : -1;
}

/* Removes the oldest step-N directories so that at most `keep` remain. */
static oz_status prune_checkpoints(const char *out, int keep, oz_err *err) {
    if (keep <= 0) return OZ_OK;
    DIR *d = opendir(out);
    if (!d) return OZ_OK;
    int steps[4096], n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 4096) {
        int s = step_dir_number(e->d_name);
        if (s >= 0) steps[n++] = s;
    }
    closedir(d);
    while (n > keep) {
        int oldest = 0;
        for (int i = 1; i < n; i++)
            if (steps[i] < steps[oldest]) oldest = i;
        char path[OZ_PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/step-%d", out, steps[oldest]);
        OZ_TRY(oz_remove_tree(path, err));
        steps[oldest] = steps[--n];
    }
    return OZ_OK;
}

static oz_status save_periodic(trainer *t, const run_position *pos, const oz_train_callbacks *cb,
                               oz_err *err) {
    char tmp[OZ_PATH_MAX + 64], final_dir[OZ_PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s/.step-%d.tmp", t->opts.out, pos->step);
    snprintf(final_dir, sizeof final_dir, "%s/step-%d", t->opts.out, pos->step);
    OZ_TRY(oz_remove_tree(tmp, err));
    oz_status st = save_checkpoint(t, tmp, pos, true, err);
    if (st == OZ_OK) st = oz_replace_dir(tmp, final_dir, err);
    if (st != OZ_OK) {
        oz_err ignored = {0};
        oz_remove_tree(tmp, &ignored);
        return st;
    }
    if (cb && cb->on_save) cb->on_save(cb->user, pos->step, final_dir);
    return prune_checkpoints(t->opts.out, t->opts.keep, err);
}

/* ------------------------------------------------------------------ evaluation */

static oz_status evaluate(trainer *t, double *val_loss, long *val_tokens, oz_err *err) {
    int B = t->opts.batch, T = t->opts.seq;
    int windows = oz_dataset_val_windows(&t->data, T);
    double sum = 0;
    long count = 0;
    for (int b = 0; b < t->opts.eval_batches; b++) {
        int first = b * B;
        if (first >= windows) break;
        int rows = oz_dataset_val_batch(&t->data, first, B, T, t->inputs, t->targets);
        if (rows <= 0) break;
        oz_llama_batch batch = {t->inputs, t->targets, rows, T, NULL};
        double s;
        long c;
        OZ_TRY(oz_llama_forward(t->model, &batch, &s, &c, err));
        sum += s;
        count += c;
    }
    *val_loss = count ? sum / count : NAN;
    *val_tokens = count;
    return OZ_OK;
}

/* ------------------------------------------------------------------ setup */

/* Per-layer mode: a layer's gradients go to the optimizer the moment the layer's backward is done
 * (projected into low-rank accumulators for GaLore matrices), so the full-model gradient buffer
 * never exists. */
static void trainer_grad_hook(void *user, int layer) {
    trainer *t = user;
    if (layer < 0 || t->hook_status != OZ_OK) return;
    const oz_param_layout *lay = oz_llama_get_layout(t->model);
    for (int i = 0; i < lay->n; i++) {
        if (lay->params[i].layer != layer) continue;
        oz_status st = oz_optimizer_consume(t->opt, i, oz_llama_grad(t->model, i), t->micro > 0, &t->hook_err);
        if (st != OZ_OK) {
            t->hook_status = st;
            return;
        }
    }
}

/* outer_grad_blocks: a block of embedding/head gradient rows, updated at once. */
static void trainer_rows_hook(void *user, int index, int row0, int rows, const float *grad) {
    trainer *t = user;
    if (t->hook_status != OZ_OK) return;
    oz_status st = oz_optimizer_consume_rows(t->opt, index, row0, rows, grad, &t->hook_err);
    if (st != OZ_OK) t->hook_status = st;
}

/* Immediate mode: each tensor's gradient goes to the optimizer the moment the backward completes it,
 * and is applied inside consume (nothing later in the step reads that tensor's weights), so its
 * gradient's memory serves the next tensor. */
static void trainer_tensor_hook(void *user, int index) {
    trainer *t = user;
    if (t->hook_status != OZ_OK) return;
    const oz_param_layout *lay = oz_llama_get_layout(t->model);
    float *g = oz_llama_grad(t->model, index);
    /* A layer tensor's gradient is not read again: the optimizer may build its update there. */
    oz_status st = lay->params[index].layer >= 0 ? oz_optimizer_consume_scratch(t->opt, index, g, &t->hook_err)
                                                 : oz_optimizer_consume(t->opt, index, g, false, &t->hook_err);
    if (st != OZ_OK) t->hook_status = st;
}

/* A line every 2 s while a step's subspace refreshes run, once they have taken 2 s, and one at
 * the end of such a refresh; quick refreshes stay silent. */
static void trainer_refresh_progress(void *user, int done, int total) {
    trainer *t = user;
    if (!t->cb || !t->cb->on_note) return;
    double now = oz_now_s(), elapsed = now - t->step_t0;
    if (elapsed < 2.0 || (done < total && now - t->refresh_last < 2.0)) return;
    char line[192];
    if (done < total)
        snprintf(line, sizeof line, "step %d | GaLore subspaces %d/%d refreshed | %.0f s elapsed | ~%.0f s left",
                 t->cur_step + 1, done, total, elapsed, elapsed / done * (total - done));
    else
        snprintf(line, sizeof line, "step %d | GaLore subspaces %d/%d refreshed in %.0f s", t->cur_step + 1, done,
                 total, elapsed);
    t->refresh_last = now;
    t->cb->on_note(t->cb->user, line);
}

/* Factored gradients: a matrix's gradient factors, projected at once (its update follows in the
 * tensor hook, after the backward has read the weight for dX). */
static void trainer_factor_hook(void *user, int index, const float *dy, int ldy, const float *x, int ldx, int rows) {
    trainer *t = user;
    if (t->hook_status != OZ_OK) return;
    oz_status st = oz_optimizer_consume_factors(t->opt, index, dy, ldy, x, ldx, rows, &t->hook_err);
    if (st != OZ_OK) t->hook_status = st;
}

/* The model's hook for the run's mode (again after InRank rebuilds the model). */
static void attach_hooks(trainer *t) {
    oz_optimizer_on_refresh(t->opt, trainer_refresh_progress, t);
    if (t->per_tensor) {
        oz_llama_set_factor_hook(t->model, trainer_factor_hook, t);
        oz_llama_set_tensor_hook(t->model, trainer_tensor_hook, t);
    } else if (t->per_layer) {
        oz_llama_set_grad_hook(t->model, trainer_grad_hook, t);
    }
    oz_llama_set_rows_hook(t->model, trainer_rows_hook, t);
}

oz_status oz_train_optim_config(const oz_train_opts *o, oz_optim_config *c, oz_err *err) {
    memset(c, 0, sizeof *c);
    if (!oz_optim_kind_parse(o->optim, &c->kind))
        return oz_fail(err, OZ_ERR_INPUT,
                       "--optim %s is not available (choose: adamw, adamw8bit, galore, galore8bit, qgalore)", o->optim);
    bool qgalore = c->kind == OZ_OPTIM_QGALORE;
    c->int8_weights = qgalore;
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
    bool galore = c->kind == OZ_OPTIM_GALORE || c->kind == OZ_OPTIM_GALORE8BIT || qgalore;
    if (strcmp(o->per_layer_update, "auto") == 0) c->per_layer = galore;
    else if (strcmp(o->per_layer_update, "on") == 0) c->per_layer = true;
    else if (strcmp(o->per_layer_update, "off") == 0) c->per_layer = false;
    else return oz_fail(err, OZ_ERR_INPUT, "--per-layer-update %s: expected auto, on or off", o->per_layer_update);
    /* Without accumulation or clipping nothing needs the whole step's gradients before an update,
     * so per-layer mode updates inside the hook and keeps no accumulator. */
    c->immediate = c->per_layer && o->grad_accum == 1 && o->clip == 0;
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
    else if (strcmp(o->lazy_update, "auto") == 0) c->lazy = qgalore;
    else if (strcmp(o->lazy_update, "off") != 0)
        return oz_fail(err, OZ_ERR_INPUT, "--lazy-update %s: expected auto, on or off", o->lazy_update);
    c->cos_threshold = o->cos_threshold;
    c->gap_growth = o->gap_growth;
    c->cos_window = o->cos_window;
    c->max_gap = o->max_gap > 0 ? o->max_gap : 8 * o->update_gap;
    c->proj_bits = o->proj_bits ? o->proj_bits : (qgalore ? 4 : 32);
    if (c->proj_bits != 32 && c->proj_bits != 4)
        return oz_fail(err, OZ_ERR_INPUT, "--proj-bits must be 32 or 4 (got %d)", o->proj_bits);
    return OZ_OK;
}

oz_status oz_train_model_shape(const oz_train_opts *o, const oz_llama_config *cfg, oz_llama_shape *shape,
                               oz_err *err) {
    memset(shape, 0, sizeof *shape);
    shape->batch = o->batch;
    shape->seq = o->seq;
    shape->with_grads = true;
    oz_optim_config oc;
    OZ_TRY(oz_train_optim_config(o, &oc, err));
    shape->per_layer_grads = oc.per_layer;
    /* Updates as gradients arrive: the embedding and head take theirs one vocabulary block at a time. */
    shape->outer_grad_blocks = oc.immediate && !cfg->tie_word_embeddings;
    shape->per_tensor_grads = oc.immediate; /* nothing needs a whole layer's gradients at once */
    shape->int8_matrices = oc.int8_weights;
    /* Q-GaLore keeps what it does not quantize in bf16: with its updates in row blocks (which
     * round them back stochastically) the embedding and head take half the bytes. */
    bool vocab_ok = shape->int8_matrices && shape->outer_grad_blocks;
    if (strcmp(o->vocab_bf16, "auto") == 0) shape->bf16_vocab = vocab_ok;
    else if (strcmp(o->vocab_bf16, "on") == 0) shape->bf16_vocab = true;
    else if (strcmp(o->vocab_bf16, "off") != 0)
        return oz_fail(err, OZ_ERR_INPUT, "--vocab-bf16 %s: expected auto, on or off", o->vocab_bf16);
    if (shape->bf16_vocab && !vocab_ok)
        return oz_fail(err, OZ_ERR_INPUT,
                       "--vocab-bf16 on needs --optim qgalore with updates as gradients arrive (--clip 0, no "
                       "--grad-accum, an untied head)");
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
    /* GaLore with immediate updates and randomized subspaces only needs products of a dense
     * matrix's gradient: its factors (the layer's output gradient and input) are projected and
     * the range finder runs on them, so no such gradient is formed. Not for the MLP when its
     * gradients accumulate over mini-sequences, nor for the exact SVD (it needs the matrix). */
    bool galore = oc.kind == OZ_OPTIM_GALORE || oc.kind == OZ_OPTIM_GALORE8BIT || oc.kind == OZ_OPTIM_QGALORE;
    if (strcmp(o->factored_grads, "auto") != 0 && strcmp(o->factored_grads, "off") != 0)
        return oz_fail(err, OZ_ERR_INPUT, "--factored-grads %s: expected auto or off", o->factored_grads);
    if (strcmp(o->factored_grads, "auto") == 0 && galore && oc.immediate && o->rank > 0 &&
        oc.subspace == OZ_SUBSPACE_RANDOMIZED) {
        if (oc.galore_attn) shape->factored_grads |= (1u << OZ_M_Q) | (1u << OZ_M_K) | (1u << OZ_M_V) | (1u << OZ_M_O);
        if (oc.galore_mlp && shape->mlp_chunks <= 1)
            shape->factored_grads |= (1u << OZ_M_GATE) | (1u << OZ_M_UP) | (1u << OZ_M_DOWN);
    }
    return OZ_OK;
}

void oz_train_optim_factored(const oz_llama_shape *shape, oz_optim_config *c) {
    c->factored_matrices = shape->factored_grads;
    c->tokens = shape->batch * shape->seq;
}

static oz_status check_opts(const oz_train_opts *o, oz_err *err) {
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
    NEED(o->adam_eps > 0, "train: --adam-eps must be positive");
    NEED(o->eval_every >= 0 && o->save_every >= 0 && o->log_every >= 0 && o->keep >= 0 && o->eval_batches > 0,
         "train: --eval-every, --save-every, --log-every and --keep must be >= 0, --eval-batches > 0");
    NEED(o->threads >= 0, "train: --threads must be >= 0 (0 = all cores)");
#undef NEED
    return OZ_OK;
}

/* InRank: a resumed run takes its ranks and stage from the trainer state; then the active ranks
 * are set and the rank log opened (OUT/ranks.jsonl, appended to on resume). */
static oz_status inrank_setup(trainer *t, const char *resume_dir, oz_err *err) {
    if (resume_dir) {
        char path[OZ_PATH_MAX + 64], *text;
        size_t n;
        snprintf(path, sizeof path, "%s/trainer_state.json", resume_dir);
        OZ_TRY(oz_read_file(path, &text, &n, err));
        cJSON *root = cJSON_ParseWithLength(text, n);
        free(text);
        oz_status st = oz_inrank_state_from_json(&t->ir, cJSON_GetObjectItemCaseSensitive(root, "inrank"), &t->cfg, path, err);
        cJSON_Delete(root);
        OZ_TRY(st);
    }
    OZ_TRY(oz_inrank_apply(&t->ir, &t->irs, t->model, err));
    char path[OZ_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/ranks.jsonl", t->opts.out);
    t->rank_log = fopen(path, resume_dir ? "a" : "w");
    if (!t->rank_log) return oz_fail(err, OZ_ERR_IO, "cannot write %s", path);
    if (!resume_dir) oz_inrank_log(t->rank_log, 0, &t->ir, &t->cfg);
    return OZ_OK;
}

static oz_status setup(trainer *t, const char *resume_dir, run_position *pos, oz_err *err) {
    const oz_train_opts *o = &t->opts;
    OZ_TRY(check_opts(o, err));
    OZ_TRY(oz_inrank_settings_from_opts(o, &t->irs, err));
    OZ_TRY(oz_dataset_open(&t->data, o->data, o->seed, err));
    t->data_ready = true;
    OZ_TRY(oz_dataset_check_window(&t->data, o->seq, err));

    /* A resumed run takes its exact config from the checkpoint (it records the vocabulary and
     * context the run settled on); --init takes the initial model's. */
    const char *spec = resume_dir ? resume_dir : o->init[0] ? o->init : o->model;
    bool is_preset;
    OZ_TRY(oz_llama_resolve(spec, &t->cfg, t->tokenizer, &is_preset, err));
    int data_vocab = oz_dataset_vocab_size(&t->data);
    if (is_preset) {
        /* Presets are shapes: the vocabulary follows the data, the context follows --seq. */
        t->cfg.vocab_size = data_vocab;
        if (t->cfg.max_position_embeddings < o->seq) t->cfg.max_position_embeddings = o->seq;
    } else {
        if (t->cfg.vocab_size < data_vocab)
            return oz_fail(err, OZ_ERR_INPUT, "model vocab_size %d is smaller than the data's vocabulary (%d)",
                           t->cfg.vocab_size, data_vocab);
        if (o->seq > t->cfg.max_position_embeddings)
            return oz_fail(err, OZ_ERR_INPUT, "--seq %d exceeds the model's max_position_embeddings (%d)",
                           o->seq, t->cfg.max_position_embeddings);
    }
    if (t->data.has_tokenizer) {
        snprintf(t->tokenizer, sizeof t->tokenizer, "%s", oz_tokenizer_name(&t->data.tokenizer));
        t->cfg.bos_token_id = t->data.tokenizer.bos_id;
        t->cfg.eos_token_id = t->data.tokenizer.eos_id;
    } else {
        t->tokenizer[0] = '\0';
    }
    /* Tokenizer files travel with every checkpoint, so each one is a complete Hugging Face model:
     * the data's (prepared with --tokenizer), else the initial model's, else a resumed run's. */
    const char *sources[3] = {o->data, o->init, resume_dir};
    for (int i = 0; i < 3 && !t->tokenizer_dir[0]; i++) {
        if (!sources[i] || !sources[i][0]) continue;
        char path[OZ_PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/tokenizer.json", sources[i]);
        if (access(path, R_OK) == 0) snprintf(t->tokenizer_dir, sizeof t->tokenizer_dir, "%s", sources[i]);
    }

    if (o->inrank && !resume_dir) oz_inrank_factorize_config(&t->cfg, &t->irs);
    OZ_TRY(oz_backend_open(&t->be, o->device, o->threads, err));
    t->be_ready = true;
    oz_arena_init(&t->arena, t->be.allocator);
    OZ_TRY(oz_backend_attach(&t->be, &t->arena, err)); /* the backend's own workspace, accounted */
    oz_llama_shape shape;
    OZ_TRY(oz_train_model_shape(o, &t->cfg, &shape, err));
    if (o->welore && !oz_llama_config_is_low_rank(&t->cfg))
        return oz_fail(err, OZ_ERR_INPUT, "--welore needs a low-rank model (made by `ounce compress`) as --init or --resume");
    OZ_TRY(oz_llama_create(&t->model, &t->cfg, &t->be, &t->arena, shape, err));
    const oz_param_layout *lay = oz_llama_get_layout(t->model);
    oz_optim_config ocfg;
    OZ_TRY(oz_train_optim_config(o, &ocfg, err));
    oz_train_optim_factored(&shape, &ocfg);
    t->per_layer = ocfg.per_layer;
    t->per_tensor = ocfg.immediate;
    OZ_TRY(oz_optimizer_create(&t->opt, &ocfg, lay, &t->be, &t->arena, err));
    oz_optimizer_bind_model(t->opt, t->model);
    attach_hooks(t);

    t->inputs = malloc((size_t)o->batch * o->seq * sizeof(int32_t));
    t->targets = malloc((size_t)o->batch * o->seq * sizeof(int32_t));
    if (!t->inputs || !t->targets) return oz_fail(err, OZ_ERR_NOMEM, "out of memory allocating batch buffers");
    if (resume_dir || o->init[0]) {
        OZ_TRY(oz_llama_load_weights(t->model, &t->be, resume_dir ? resume_dir : o->init, err));
        if (resume_dir) {
            /* The optimizer state holds the exact INT8 codes, which replace the requantized ones. */
            char path[OZ_PATH_MAX + 64];
            snprintf(path, sizeof path, "%s/optimizer.safetensors", resume_dir);
            OZ_TRY(oz_optimizer_load(t->opt, path, err));
            oz_dataset_set_cursor(&t->data, &pos->cursor);
        }
    } else {
        /* Initialised in host memory: the model's own when it is a plain host buffer, else a
         * staging buffer imported from (which quantizes INT8 matrices). */
        bool direct = t->be.host_visible && oz_llama_params(t->model) != NULL;
        float *host = direct ? oz_llama_params(t->model) : malloc(lay->total * sizeof(float));
        if (!host) return oz_fail(err, OZ_ERR_NOMEM, "out of memory staging the weights");
        oz_llama_init_params(&t->cfg, lay, host, o->seed);
        if (o->inrank) {
            oz_inrank_begin(&t->ir, &t->cfg, &t->irs);
            oz_inrank_init_factors(&t->ir, &t->irs, &t->cfg, lay, host, o->seed);
        }
        if (!direct) {
            oz_llama_import_params(t->model, host);
            free(host);
        }
    }

    OZ_TRY(oz_mkdir_p(o->out, err));
    char mpath[OZ_PATH_MAX + 32];
    snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", o->out);
    t->metrics = fopen(mpath, resume_dir ? "a" : "w");
    if (!t->metrics) return oz_fail(err, OZ_ERR_IO, "cannot write %s", mpath);
    if (o->inrank) OZ_TRY(inrank_setup(t, resume_dir, err));
    return OZ_OK;
}

static void teardown(trainer *t) {
    if (t->metrics) fclose(t->metrics);
    if (t->rank_log) fclose(t->rank_log);
    if (t->model) {
        oz_optimizer_destroy(t->opt);
        oz_llama_destroy(t->model);
    }
    if (t->be_ready) {
        oz_arena_destroy(&t->arena);
        t->be.destroy(&t->be);
    }
    if (t->data_ready) oz_dataset_close(&t->data);
    oz_inrank_run_free(&t->ir); /* after the optimizer: a rebuilt one refers to its layout */
    free(t->host_params);
    free(t->inputs);
    free(t->targets);
}

/* ------------------------------------------------------------------ the loop */


static double mib(size_t bytes) { return (double)bytes / 1048576.0; }

/* What InRank stores: the factored matrices, their stored and starting ranks, and the bytes of the
 * factors against the dense matrices they replace. */
static void inrank_note_factors(trainer *t, const oz_train_callbacks *cb) {
    const oz_param_layout *lay = oz_llama_get_layout(t->model);
    size_t factors = 0, dense = 0;
    int n = 0, rmin = 1 << 30, rmax = 0, amin = 1 << 30, amax = 0;
    for (int l = 0; l < t->cfg.num_hidden_layers; l++)
        for (int j = 0; j < OZ_LLAMA_MATRICES; j++) {
            int R = oz_llama_rank(t->model, l, j), a = oz_llama_active_rank(t->model, l, j);
            if (!R) continue;
            int i = oz_llama_matrix_index(lay, l, j);
            factors += (lay->params[i].numel + lay->params[i + 1].numel) * sizeof(float);
            int64_t out, in;
            oz_llama_matrix_dims(&t->cfg, j, &out, &in);
            dense += (size_t)out * (size_t)in * sizeof(float);
            n++;
            rmin = R < rmin ? R : rmin, rmax = R > rmax ? R : rmax;
            amin = a < amin ? a : amin, amax = a > amax ? a : amax;
        }
    char line[512];
    snprintf(line, sizeof line,
             "inrank: %d matrices (%s) as factors, stage %d, stored rank %d..%d, active %d..%d, mean rank %.1f%% of "
             "full; factors %.2f MiB where the dense matrices would be %.2f MiB",
             n, t->opts.inrank_targets, t->ir.stage, rmin, rmax, amin, amax,
             100 * oz_inrank_mean_fraction(&t->ir, &t->cfg), mib(factors), mib(dense));
    if (n) cb->on_start(cb->user, line);
}

/* After optimizer step `step` (1-based): the rank check when one is due, then the freeze. */
static oz_status inrank_after_step(trainer *t, int step, const oz_train_callbacks *cb, oz_err *err) {
    if (oz_inrank_due(&t->ir, &t->irs, step)) {
        int grown;
        OZ_TRY(oz_inrank_check(&t->ir, &t->irs, t->model, &t->arena, &grown, err));
        oz_inrank_log(t->rank_log, step, &t->ir, &t->cfg);
    }
    if (t->ir.stage != 1 || step != t->irs.freeze_after) return OZ_OK;
    oz_llama_shape shape;
    oz_optim_config ocfg;
    OZ_TRY(oz_train_model_shape(&t->opts, &t->cfg, &shape, err));
    OZ_TRY(oz_train_optim_config(&t->opts, &ocfg, err));
    oz_train_optim_factored(&shape, &ocfg);
    size_t before = t->arena.current_total, wbefore = t->arena.current[OZ_MEM_WEIGHTS];
    OZ_TRY(oz_inrank_freeze(&t->ir, step, &t->model, &t->opt, &t->cfg, &t->be, &t->arena, shape, &ocfg, err));
    attach_hooks(t);
    oz_inrank_log(t->rank_log, step, &t->ir, &t->cfg);
    if (cb && cb->on_note) {
        char line[256];
        snprintf(line, sizeof line,
                 "step %d | inrank: frozen at rank k (mean %.1f%% of full), model rebuilt: weights %.2f -> %.2f MiB, "
                 "all buffers %.2f -> %.2f MiB",
                 step, 100 * oz_inrank_mean_fraction(&t->ir, &t->cfg), mib(wbefore),
                 mib(t->arena.current[OZ_MEM_WEIGHTS]), mib(before), mib(t->arena.current_total));
        cb->on_note(cb->user, line);
    }
    return OZ_OK;
}

static oz_status run(trainer *t, run_position *pos, const oz_train_callbacks *cb, oz_train_result *res,
                     oz_err *err) {
    const oz_train_opts *o = &t->opts;
    int warmup = o->warmup >= 0 ? o->warmup : o->steps / 20;
    oz_schedule sched = {o->lr, o->min_lr_ratio, warmup, o->steps};
    int B = o->batch, T = o->seq;
    long tokens_per_step = (long)B * T * o->grad_accum;
    float grad_scale = 1.0f / (float)((double)B * T * o->grad_accum);
    const oz_param_layout *lay = oz_llama_get_layout(t->model);
    if (o->inrank && cb && cb->on_start) inrank_note_factors(t, cb);

    res->params = res->trainable = 0;
    for (int i = 0; i < lay->n; i++) {
        res->params += (long long)lay->params[i].numel;
        if (!lay->params[i].frozen) res->trainable += (long long)lay->params[i].numel;
    }
    if (cb && cb->on_start) {
        char line[1600];
        snprintf(line, sizeof line,
                 "model %s: %lld parameters, %lld trainable (vocab %d, hidden %d, layers %d, heads %d/%d kv); steps %d, "
                 "batch %d x seq %d x accum %d = %ld tokens/step; %s on %s, %d threads%s",
                 o->model, res->params, res->trainable, t->cfg.vocab_size, t->cfg.hidden_size, t->cfg.num_hidden_layers,
                 t->cfg.num_attention_heads, t->cfg.num_key_value_heads, o->steps, B, T, o->grad_accum,
                 tokens_per_step, o->optim, o->device, t->be.threads, pos->step ? " (resumed)" : "");
        cb->on_start(cb->user, line);
    }

    t->cb = cb;
    double t_start = oz_now_s(), train_time = 0;
    int steps_here = 0;
    res->val_loss = NAN;
    res->train_loss = NAN;
    for (int step = pos->step; step < o->steps; step++) {
        double t0 = oz_now_s();
        float lr = oz_schedule_lr(&sched, step);
        oz_llama_zero_grads(t->model);
        oz_optimizer_begin_step(t->opt, step, lr);
        t->cur_step = step;
        t->step_t0 = t->refresh_last = t0;
        double loss_sum = 0;
        long n_targets = 0;
        for (int micro = 0; micro < o->grad_accum; micro++) {
            OZ_TRY(oz_dataset_next_batch(&t->data, B, T, t->inputs, t->targets));
            oz_llama_batch batch = {t->inputs, t->targets, B, T, NULL};
            double s;
            long c;
            t->micro = micro;
            OZ_TRY(oz_llama_forward_backward(t->model, &batch, grad_scale, &s, &c, err));
            if (t->hook_status != OZ_OK) {
                *err = t->hook_err;
                return t->hook_status;
            }
            /* Whole-model mode: a refreshing subspace comes from the first micro-batch's gradient,
             * exactly as in per-layer mode. */
            if (!t->per_layer && micro == 0) OZ_TRY(oz_optimizer_refresh_from(t->opt, t->model, err));
            loss_sum += s;
            n_targets += c;
        }
        OZ_TRY(oz_backend_sync(&t->be, err)); /* a GPU failure, not its NaN, is what gets reported */
        double loss = loss_sum / (double)n_targets;
        if (!isfinite(loss))
            return oz_fail(err, OZ_ERR_NUMERIC,
                           "training loss is %s at step %d: stopping (try a lower --lr); checkpoints "
                           "already written are intact",
                           isnan(loss) ? "NaN" : "infinite", step + 1);
        /* Hand the optimizer what the hooks did not: everything (whole-model mode), or the
         * embedding, final norm and head, whose gradients accumulate in the model (per-layer; the
         * tensor hook took them in per-tensor mode). */
        for (int i = 0; i < lay->n; i++)
            if ((!t->per_layer || (lay->params[i].layer < 0 && !t->per_tensor)) && !oz_llama_grad_in_blocks(t->model, i))
                OZ_TRY(oz_optimizer_consume(t->opt, i, oz_llama_grad(t->model, i), false, err));
        double gnorm = sqrt(oz_optimizer_grad_sumsq(t->opt));
        if (!isfinite(gnorm))
            return oz_fail(err, OZ_ERR_NUMERIC,
                           "gradient norm is not finite at step %d: stopping (try a lower --lr); "
                           "checkpoints already written are intact",
                           step + 1);
        float clip_scale = (o->clip > 0 && gnorm > o->clip) ? (float)(o->clip / (gnorm + 1e-6)) : 1.0f;
        oz_optimizer_apply(t->opt, NULL, lr, clip_scale);
        OZ_TRY(oz_backend_sync(&t->be, err)); /* the step's queued GPU work belongs to its time */
        double dt = oz_now_s() - t0;
        train_time += dt;
        steps_here++;
        pos->step = step + 1;
        pos->tokens_seen += (double)tokens_per_step;
        oz_dataset_get_cursor(&t->data, &pos->cursor);
        if (o->inrank) {
            OZ_TRY(inrank_after_step(t, pos->step, cb, err));
            lay = oz_llama_get_layout(t->model); /* the freeze rebuilds the model */
        }
        res->train_loss = loss;
        res->steps = pos->step;

        double tps = steps_here * (double)tokens_per_step / train_time;
        fprintf(t->metrics,
                "{\"step\":%d,\"loss\":%.6f,\"lr\":%.6g,\"grad_norm\":%.6g,\"tokens_per_s\":%.1f,"
                "\"step_s\":%.4f,\"tokens\":%.0f}\n",
                pos->step, loss, (double)lr, gnorm, tps, dt, pos->tokens_seen);
        bool last = pos->step == o->steps;
        if (cb && cb->on_step && (last || (o->log_every > 0 && pos->step % o->log_every == 0) ||
                                  steps_here == 1)) {
            oz_train_progress p = {pos->step, o->steps, loss, lr, gnorm, tps, oz_now_s() - t_start,
                                   (o->steps - pos->step) * (train_time / steps_here),
                                   t->arena.peak, t->arena.peak_total};
            cb->on_step(cb->user, &p);
        }
        if (o->eval_every > 0 && (pos->step % o->eval_every == 0 || last)) {
            long tokens;
            OZ_TRY(evaluate(t, &res->val_loss, &tokens, err));
            fprintf(t->metrics, "{\"step\":%d,\"val_loss\":%.6f,\"val_tokens\":%ld}\n", pos->step,
                    res->val_loss, tokens);
            if (cb && cb->on_eval) cb->on_eval(cb->user, pos->step, res->val_loss, tokens);
        }
        fflush(t->metrics);
        if (o->save_every > 0 && pos->step % o->save_every == 0 && !last) {
            OZ_TRY(save_periodic(t, pos, cb, err));
        }
    }
    /* The final model goes to OUT itself: weights, config and the state (for the record). */
    if (!o->no_save) OZ_TRY(save_checkpoint(t, o->out, pos, false, err));
    if (o->inrank) {
        char log[OZ_PATH_MAX + 32], svg[OZ_PATH_MAX + 32];
        snprintf(log, sizeof log, "%s/ranks.jsonl", o->out);
        snprintf(svg, sizeof svg, "%s/ranks.svg", o->out);
        fflush(t->rank_log);
        OZ_TRY(oz_inrank_plot(log, svg, err));
    }
    if (cb && cb->on_save && !o->no_save) cb->on_save(cb->user, pos->step, o->out);
    res->tokens_per_s = train_time > 0 ? steps_here * (double)tokens_per_step / train_time : 0;
    memcpy(res->peak_bytes, t->arena.peak, sizeof res->peak_bytes);
    res->peak_total = t->arena.peak_total;
    res->host_bytes = oz_llama_host_bytes(t->model);
    return OZ_OK;
}

oz_status oz_train(const oz_train_opts *opts, const char *resume_dir, const oz_train_callbacks *cb,
                   oz_train_result *result, oz_err *err) {
    trainer t;
    memset(&t, 0, sizeof t);
    memset(result, 0, sizeof *result);
    run_position pos;
    memset(&pos, 0, sizeof pos);
    oz_status st = OZ_OK;
    if (resume_dir) {
        char path[OZ_PATH_MAX + 64];
        snprintf(path, sizeof path, "%s/trainer_state.json", resume_dir);
        st = state_read(path, &t.opts, &pos, err);
        if (st != OZ_OK) return st;
        /* The run continues in the directory that holds the checkpoint. */
        char copy[OZ_PATH_MAX];
        snprintf(copy, sizeof copy, "%s", resume_dir);
        snprintf(t.opts.out, sizeof t.opts.out, "%s", dirname(copy));
        if (pos.step >= t.opts.steps)
            return oz_fail(err, OZ_ERR_INPUT, "%s: this run already finished (step %d of %d)", resume_dir,
                           pos.step, t.opts.steps);
    } else {
        t.opts = *opts;
        /* The run's model is the initial one (its name shows in the summary and the state). */
        if (t.opts.init[0]) snprintf(t.opts.model, sizeof t.opts.model, "%s", t.opts.init);
    }
    st = setup(&t, resume_dir, &pos, err);
    if (st == OZ_OK) st = run(&t, &pos, cb, result, err);
    teardown(&t);
    return st;
}
