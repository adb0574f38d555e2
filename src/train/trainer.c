/* The training loop: any --optim with warmup + cosine, gradient accumulation, global-norm
 * clipping, periodic validation and checkpoints, bit-exact resume, one run per OUT.
 *
 * A checkpoint directory (OUT/step-N) holds model.safetensors + config.json (what Hugging Face
 * reads), optimizer.safetensors (the optimizer's whole state, see optim/optimizer.h) and
 * trainer_state.json (step, every setting, the data cursor). Resume restores all of it, so the
 * continued run computes exactly the numbers the uninterrupted run would have. */
#include "train/trainer.h"

#include "train/options.h"

#include <cjson/cJSON.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "data/loader.h"
#include "data/tokenizer_gguf.h"
#include "io/atomic.h"
#include "io/gguf.h"
#include "model/hf_model.h"
#include "model/llama.h"
#include "numeric/subspace.h"
#include "optim/optimizer.h"
#include "optim/schedule.h"
#include "train/events.h"
#include "train/inrank.h"
#include "train/run_dir.h"
#include "util/clock.h"

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
    oz_dataset data;
    bool data_ready;
    float *host_params;        /* staging for saves when the backend's memory is not host memory */
    int32_t *inputs, *targets;
    FILE *metrics;
    int out_lock;              /* the flock on OUT (oz_dir_lock); -1 when not held */
    oz_inrank_settings irs;    /* InRank: settings, ranks and stage, the rank log */
    oz_inrank_run ir;
    FILE *rank_log;
    /* progress of long subspace refreshes (minutes at 7b on a CPU), through cb->on_note */
    const oz_train_callbacks *cb;
    int cur_step;
    double step_t0, refresh_last;
    double refresh_s;          /* this step's subspace refreshes ended this far into it; NAN: none */
    oz_tfevents events;        /* OUT/events.out.tfevents.*, a line of metrics.jsonl as one event */
    int precision;              /* the model's (OZ_PREC_*): --precision auto resolved */
    bool bf16_weights;          /* the model keeps bf16 weights only: checkpoints are saved in bf16 */
    bool clip_running;          /* clipping inside immediate updates (oz_optim_config.clip_running) */
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

static oz_status save_checkpoint(trainer *t, const char *dir, const oz_train_position *pos, bool with_optimizer,
                                 oz_err *err) {
    const float *params = NULL;
    OZ_TRY(host_weights(t, &params, err));
    if (t->bf16_weights) OZ_TRY(oz_llama_save_bf16(dir, &t->cfg, t->tokenizer, oz_llama_get_layout(t->model), params, err));
    else OZ_TRY(oz_llama_save(dir, &t->cfg, t->tokenizer, oz_llama_get_layout(t->model), params, err));
    char path[OZ_PATH_MAX + 64];
    if (with_optimizer) {
        snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
        OZ_TRY(oz_optimizer_save(t->opt, path, err));
    }
    OZ_TRY(oz_copy_hf_side_files(t->tokenizer_dir, dir, err));
    snprintf(path, sizeof path, "%s/trainer_state.json", dir);
    return oz_run_state_write(path, &t->opts, pos, t->tokenizer, t->opts.inrank ? oz_inrank_state_to_json(&t->ir, &t->cfg) : NULL,
                       err);
}

static oz_status save_periodic(trainer *t, const oz_train_position *pos, const oz_train_callbacks *cb,
                               oz_err *err) {
    char tmp[OZ_PATH_MAX + 64], final_dir[OZ_PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s/.step-%d.tmp.%ld", t->opts.out, pos->step, (long)getpid());
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
    return oz_run_prune(t->opts.out, t->opts.keep, err);
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

/* A line every 2 s while a step's subspace refreshes run, once they have taken 2 s, and one at
 * the end of such a refresh; quick refreshes stay silent. */
static void trainer_refresh_progress(void *user, int done, int total) {
    trainer *t = user;
    double now = oz_now_s(), elapsed = now - t->step_t0;
    if (done == total) t->refresh_s = elapsed;
    if (!t->cb || !t->cb->on_note) return;
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

/* The model's gradients go to the optimizer (again after InRank rebuilds both). */
static void connect(trainer *t) {
    oz_optimizer_bind_weights(t->opt, oz_llama_weights(t->model));
    oz_optimizer_on_refresh(t->opt, trainer_refresh_progress, t);
    oz_llama_set_grad_sink(t->model, oz_optimizer_sink(t->opt));
}

/* InRank: a resumed run takes its ranks and stage from the trainer state; then the active ranks
 * are set and the rank log opened (OUT/ranks.jsonl, continued on resume from the checkpoint's step). */
static oz_status inrank_setup(trainer *t, const char *resume_dir, int step, oz_err *err) {
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
    if (resume_dir) OZ_TRY(oz_run_log_truncate(path, step, err));
    t->rank_log = fopen(path, resume_dir ? "a" : "w");
    if (!t->rank_log) return oz_fail(err, OZ_ERR_IO, "cannot write %s", path);
    if (!resume_dir) oz_inrank_log(t->rank_log, 0, &t->ir, &t->cfg);
    return OZ_OK;
}

/* An --init or resumed model directory's vocabulary against the data's: its tokenizer.json, or the
 * byte tokenizer its config.json names, must be the data's (a model trained on other ids learns
 * nothing and samples garbage). Unknown (no tokenizer files) or random data: nothing to compare.
 * --force trains anyway, with a note. */
static oz_status check_vocabulary(trainer *t, const char *model_dir, const char *model_tokenizer, oz_err *err) {
    if (!model_dir || !model_dir[0] || !t->data.has_tokenizer) return OZ_OK;
    char path[OZ_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/tokenizer.json", model_dir);
    oz_tokenizer mt;
    if (oz_gguf_is_file(model_dir)) {
        if (!model_tokenizer[0]) return OZ_OK; /* a GGUF without a tokenizer: nothing to compare */
        OZ_TRY(oz_tokenizer_load(&mt, model_dir, err));
    } else if (access(path, R_OK) == 0) OZ_TRY(oz_tokenizer_load(&mt, model_dir, err));
    else if (strcmp(model_tokenizer, "byte") == 0) oz_tokenizer_byte(&mt);
    else return OZ_OK;
    uint64_t fm = oz_tokenizer_fingerprint(&mt), fd = oz_tokenizer_fingerprint(&t->data.tokenizer);
    char what[2 * OZ_PATH_MAX + 256];
    snprintf(what, sizeof what, "the model in %s (%s tokenizer, %d ids, vocabulary %016llx) and the data in %s (%s, %d ids, "
             "%016llx) use different vocabularies", model_dir, oz_tokenizer_name(&mt), mt.vocab_size,
             (unsigned long long)fm, t->opts.data, oz_tokenizer_name(&t->data.tokenizer), t->data.tokenizer.vocab_size,
             (unsigned long long)fd);
    oz_tokenizer_free(&mt);
    if (fm == fd) return OZ_OK;
    if (!t->opts.force) return oz_fail(err, OZ_ERR_INPUT, "%.700s: prepare the data with the model's tokenizer, or --force", what);
    if (t->cb && t->cb->on_note) {
        char line[sizeof what + 32];
        snprintf(line, sizeof line, "warning: %s (--force)", what);
        t->cb->on_note(t->cb->user, line);
    }
    return OZ_OK;
}

static oz_status setup(trainer *t, const char *resume_dir, oz_train_position *pos, oz_err *err) {
    const oz_train_opts *o = &t->opts;
    OZ_TRY(oz_train_opts_check(o, err));
    /* One run per output directory, from before anything in it is read or written. */
    OZ_TRY(oz_mkdir_p(o->out, err));
    OZ_TRY(oz_dir_lock(o->out, &t->out_lock, err));
    OZ_TRY(oz_run_dir_sweep(o->out, err));
    OZ_TRY(oz_inrank_settings_from_opts(o, &t->irs, err));
    OZ_TRY(oz_dataset_open(&t->data, o->data, o->seed, err));
    t->data_ready = true;
    OZ_TRY(oz_dataset_check_window(&t->data, o->seq, err));

    /* A resumed run takes its exact config from the checkpoint (it records the vocabulary and
     * context the run settled on); --init takes the initial model's. */
    const char *spec = resume_dir ? resume_dir : o->init[0] ? o->init : o->model;
    bool is_preset;
    OZ_TRY(oz_llama_resolve(spec, &t->cfg, t->tokenizer, &is_preset, err));
    if (!is_preset) OZ_TRY(check_vocabulary(t, resume_dir ? resume_dir : o->init, t->tokenizer, err));
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
        /* A GGUF's tokenizer is written out as tokenizer.json (oz_copy_hf_side_files). */
        int gguf_tok = 0;
        if (oz_gguf_is_file(sources[i])) {
            oz_gguf g;
            oz_err ignored = {0};
            if (oz_gguf_open(&g, sources[i], &ignored) == OZ_OK) {
                gguf_tok = oz_gguf_has_tokenizer(&g) && !oz_gguf_is_byte_tokenizer(&g);
                oz_gguf_close(&g);
            }
        }
        if (gguf_tok || access(path, R_OK) == 0) snprintf(t->tokenizer_dir, sizeof t->tokenizer_dir, "%s", sources[i]);
    }

    if (o->inrank && !resume_dir) oz_inrank_factorize_config(&t->cfg, &t->irs);
    OZ_TRY(oz_backend_open(&t->be, o->device, o->threads, err));
    t->be_ready = true;
    oz_arena_init(&t->arena, t->be.allocator);
    OZ_TRY(oz_backend_attach(&t->be, &t->arena, err)); /* the backend's own workspace, accounted */
    oz_llama_shape shape;
    oz_optim_config ocfg;
    OZ_TRY(oz_train_configure(o, &t->cfg, &shape, &ocfg, err));
    if (o->welore && !oz_llama_config_is_low_rank(&t->cfg))
        return oz_fail(err, OZ_ERR_INPUT, "--welore needs a low-rank model (made by `ounce compress`) as --init or --resume");
    OZ_TRY(oz_llama_create(&t->model, &t->cfg, &t->be, &t->arena, shape, err));
    t->precision = shape.precision;
    t->bf16_weights = shape.bf16_weights;
    t->clip_running = ocfg.clip_running;
    const oz_param_layout *lay = oz_llama_get_layout(t->model);
    OZ_TRY(oz_optimizer_create(&t->opt, &ocfg, lay, &t->be, &t->arena, err));
    connect(t);

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

    char mpath[OZ_PATH_MAX + 32];
    snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", o->out);
    if (resume_dir) OZ_TRY(oz_run_log_truncate(mpath, pos->step, err));
    t->metrics = fopen(mpath, resume_dir ? "a" : "w");
    if (!t->metrics) return oz_fail(err, OZ_ERR_IO, "cannot write %s", mpath);
    OZ_TRY(oz_train_events_open(&t->events, o->out, resume_dir ? pos->step : 0, err));
    if (o->inrank) OZ_TRY(inrank_setup(t, resume_dir, pos->step, err));
    return OZ_OK;
}

static void teardown(trainer *t) {
    if (t->metrics) fclose(t->metrics);
    oz_tfevents_close(&t->events);
    oz_dir_unlock(t->out_lock);
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
    OZ_TRY(oz_train_configure(&t->opts, &t->cfg, &shape, &ocfg, err));
    size_t before = t->arena.current_total, wbefore = t->arena.current[OZ_MEM_WEIGHTS];
    OZ_TRY(oz_inrank_freeze(&t->ir, step, &t->model, &t->opt, &t->cfg, &t->be, &t->arena, shape, &ocfg, err));
    connect(t);
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

static oz_status run(trainer *t, oz_train_position *pos, const oz_train_callbacks *cb, oz_train_result *res,
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
                 "batch %d x seq %d x accum %d = %ld tokens/step; %s%s on %s, %d threads%s",
                 o->model, res->params, res->trainable, t->cfg.vocab_size, t->cfg.hidden_size, t->cfg.num_hidden_layers,
                 t->cfg.num_attention_heads, t->cfg.num_key_value_heads, o->steps, B, T, o->grad_accum,
                 tokens_per_step, o->optim, t->precision != OZ_PREC_BF16 ? ""
                 : t->bf16_weights                ? " in bf16 (bf16 weights)"
                                                  : " in bf16 (fp32 master weights)", o->device, t->be.threads,
                 pos->step ? " (resumed)" : "");
        cb->on_start(cb->user, line);
    }
    if (cb && cb->on_note && t->clip_running)
        cb->on_note(cb->user, "clipping: each update made as its gradient arrives, by a running estimate of the global "
                              "norm (--clip-mode running; exact clipping would hold every gradient until the step's "
                              "end: --clip-mode exact)");

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
        t->refresh_s = NAN;
        double loss_sum = 0;
        long n_targets = 0;
        for (int micro = 0; micro < o->grad_accum; micro++) {
            OZ_TRY(oz_dataset_next_batch(&t->data, B, T, t->inputs, t->targets));
            oz_llama_batch batch = {t->inputs, t->targets, B, T, NULL};
            double s;
            long c;
            OZ_TRY(oz_llama_forward_backward(t->model, &batch, grad_scale, &s, &c, err));
            oz_err why = {0};
            oz_status ost = oz_optimizer_status(t->opt, &why);
            if (ost == OZ_ERR_NUMERIC) /* immediate updates refuse a NaN gradient before applying it */
                return oz_fail(err, ost, "%.400s at step %d: stopping (try a lower --lr); checkpoints already written "
                               "are intact", why.msg, step + 1);
            if (ost != OZ_OK) {
                *err = why;
                return ost;
            }
            loss_sum += s;
            n_targets += c;
        }
        OZ_TRY(oz_backend_sync(&t->be, err)); /* a GPU failure, not its NaN, is what gets reported */
        double loss = loss_sum / (double)n_targets;
        char fault[sizeof err->msg] = "";
        if (!isfinite(loss)) snprintf(fault, sizeof fault, "the training loss is %s", isnan(loss) ? "NaN" : "infinite");
        double gnorm = NAN;
        if (!fault[0]) {
            oz_llama_emit_accumulated(t->model); /* what the backward did not emit */
            OZ_TRY(oz_optimizer_status(t->opt, err));
            gnorm = sqrt(oz_optimizer_grad_sumsq(t->opt));
            if (!isfinite(gnorm)) {
                int bad = oz_optimizer_first_nonfinite(t->opt);
                const oz_param_info *p = bad >= 0 ? &lay->params[bad] : NULL;
                if (p && p->layer >= 0)
                    snprintf(fault, sizeof fault, "the gradient of %s (layer %d) is not finite", p->name, p->layer);
                else if (p) snprintf(fault, sizeof fault, "the gradient of %s is not finite", p->name);
                else snprintf(fault, sizeof fault, "the gradient norm is not finite");
            }
        }
        if (fault[0] && strcmp(o->on_nonfinite, "skip") != 0)
            return oz_fail(err, OZ_ERR_NUMERIC,
                           "%s at step %d: stopping (try a lower --lr, or --on-nonfinite skip); checkpoints "
                           "already written are intact",
                           fault, step + 1);
        if (fault[0]) { /* skip: nothing of this step is applied; its batches are consumed */
            res->skipped_steps++;
            if (cb && cb->on_note) {
                char line[sizeof err->msg + 64];
                snprintf(line, sizeof line, "step %d skipped: %s", step + 1, fault);
                cb->on_note(cb->user, line);
            }
        } else {
            float clip_scale = (o->clip > 0 && gnorm > o->clip) ? (float)(o->clip / (gnorm + 1e-6)) : 1.0f;
            oz_optimizer_apply(t->opt, lr, clip_scale);
        }
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
        if (!fault[0]) res->train_loss = loss; /* the last step that was applied */
        res->steps = pos->step;

        double tps = steps_here * (double)tokens_per_step / train_time;
        if (fault[0]) /* no loss or norm to log: JSON has no NaN */
            fprintf(t->metrics, "{\"step\":%d,\"skipped\":true,\"lr\":%.6g,\"tokens\":%.0f", pos->step, (double)lr,
                    pos->tokens_seen);
        else
            fprintf(t->metrics,
                    "{\"step\":%d,\"loss\":%.6f,\"lr\":%.6g,\"grad_norm\":%.6g,\"tokens_per_s\":%.1f,"
                    "\"step_s\":%.4f,\"tokens\":%.0f",
                    pos->step, loss, (double)lr, gnorm, tps, dt, pos->tokens_seen);
        /* GaLore: how far this step's refreshes moved their subspaces (none at the first refresh) */
        double change = fault[0] ? NAN : oz_optimizer_subspace_change(t->opt);
        if (isfinite(change)) fprintf(t->metrics, ",\"subspace_change\":%.6g", change);
        oz_train_metrics_peak(t->metrics, t->arena.peak, t->arena.peak_total); /* ends the line */
        oz_train_event_step ev = {pos->step, fault[0] != 0, loss, lr, gnorm, tps, t->arena.peak, t->arena.peak_total,
                                  t->refresh_s, o->inrank ? oz_inrank_mean_fraction(&t->ir, &t->cfg) : NAN, change};
        OZ_TRY(oz_train_events_step(&t->events, &ev, err));
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
            OZ_TRY(oz_train_events_val(&t->events, pos->step, res->val_loss, err));
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
    t.out_lock = -1;
    memset(result, 0, sizeof *result);
    oz_train_position pos;
    memset(&pos, 0, sizeof pos);
    oz_status st = OZ_OK;
    if (resume_dir) {
        char path[OZ_PATH_MAX + 64];
        snprintf(path, sizeof path, "%s/trainer_state.json", resume_dir);
        st = oz_run_state_read(path, &t.opts, &pos, err);
        if (st != OZ_OK) return st;
        /* The run continues in the directory that holds the checkpoint. */
        char copy[OZ_PATH_MAX];
        snprintf(copy, sizeof copy, "%s", resume_dir);
        snprintf(t.opts.out, sizeof t.opts.out, "%s", dirname(copy));
        t.opts.force = opts && opts->force; /* this invocation's choice, not the saved run's */
        if (pos.step >= t.opts.steps)
            return oz_fail(err, OZ_ERR_INPUT, "%s: this run already finished (step %d of %d)", resume_dir,
                           pos.step, t.opts.steps);
    } else {
        t.opts = *opts;
        /* The run's model is the initial one (its name shows in the summary and the state). */
        if (t.opts.init[0]) snprintf(t.opts.model, sizeof t.opts.model, "%s", t.opts.init);
    }
    t.cb = cb; /* setup's notes (a --force warning) */
    st = setup(&t, resume_dir, &pos, err);
    if (st == OZ_OK) st = run(&t, &pos, cb, result, err);
    teardown(&t);
    return st;
}
