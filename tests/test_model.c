/* The whole Llama model: parity with a float64 PyTorch reference (logits, loss, every parameter
 * gradient), the gradient against finite differences, determinism, gradient accumulation, the
 * parameter layout, and AdamW + the schedule actually lowering a loss. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "grad_events.h"
#include "harness.h"
#include "io/atomic.h"
#include "io/safetensors.h"
#include "model/hf_model.h"
#include "model/llama.h"
#include "numeric/quant.h"
#include "optim/optimizer.h"
#include "optim/schedule.h"
#include "util/rng.h"

/* bf16 against fp32 on the same weights (test_bf16_against_fp32), per tensor max|err| / max|ref|.
 * Measured on its three tiny configs (weights x10, two layers): loss 0.9-3.8e-4 relative, logits
 * 1.2-1.4e-2, the worst gradient 2.3-4.1e-2 (a few bf16 ulps of 2^-8, compounded through both
 * layers; the first layer's MLP and norms are worst). The bounds are about twice that. A wrong
 * gradient is far above them: dropping the residual in a norm's backward, up_proj's dX overwriting
 * gate's, no inverse RoPE on dk, or no head gradient each gave 0.38-1.4. */
#define BF16_LOSS_TOL 2e-3
#define BF16_LOGITS_TOL 3e-2
#define BF16_GRAD_TOL 8e-2
/* test_bf16_training: the largest difference between a bf16 and an fp32 step's loss over 40 AdamW
 * steps, as a share of the first loss; measured 1.3e-3 (5.3e-3 of 4.07). */
#define BF16_TRAIN_TOL 1e-2

#ifndef FIXTURE_DIR
#define FIXTURE_DIR "tests/fixtures"
#endif

static int meta_int(const oz_safetensors *st, const char *key) {
    const char *v = oz_safetensors_metadata(st, key);
    return v ? atoi(v) : -1;
}

static double meta_double(const oz_safetensors *st, const char *key) {
    const char *v = oz_safetensors_metadata(st, key);
    return v ? atof(v) : NAN;
}

/* max |a - b| / max |b| over a tensor: the relative error the issue asks to be within 1e-4. */
static double rel_error_f32_f64(const float *a, const double *b, size_t n) {
    double max_diff = 0, max_ref = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > max_diff) max_diff = d;
        if (fabs(b[i]) > max_ref) max_ref = fabs(b[i]);
    }
    return max_ref > 0 ? max_diff / max_ref : max_diff;
}

static void parity_fixture(const char *file) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", FIXTURE_DIR, file);
    oz_err err = {0};
    oz_safetensors st;
    if (oz_safetensors_open(&st, path, &err) != OZ_OK) {
        CHECK(0, "cannot open fixture: %s", err.msg);
        return;
    }
    oz_llama_config cfg = {0};
    cfg.vocab_size = meta_int(&st, "vocab_size");
    cfg.hidden_size = meta_int(&st, "hidden_size");
    cfg.intermediate_size = meta_int(&st, "intermediate_size");
    cfg.num_hidden_layers = meta_int(&st, "num_hidden_layers");
    cfg.num_attention_heads = meta_int(&st, "num_attention_heads");
    cfg.num_key_value_heads = meta_int(&st, "num_key_value_heads");
    cfg.head_dim = meta_int(&st, "head_dim");
    cfg.max_position_embeddings = meta_int(&st, "max_position_embeddings");
    cfg.rms_norm_eps = (float)meta_double(&st, "rms_norm_eps");
    cfg.rope_theta = (float)meta_double(&st, "rope_theta");
    const char *tie = oz_safetensors_metadata(&st, "tie_word_embeddings");
    cfg.tie_word_embeddings = tie && strcmp(tie, "true") == 0;
    cfg.bos_token_id = cfg.eos_token_id = -1;
    int B = meta_int(&st, "batch"), T = meta_int(&st, "seq");

    oz_backend be;
    CHECK(oz_backend_cpu_create(&be, 0, &err) == OZ_OK, "%s", err.msg);
    oz_arena arena;
    oz_arena_init(&arena, be.allocator);
    oz_llama *m = NULL;
    oz_llama_shape shape = {.batch = B, .seq = T, .with_grads = true};
    CHECK(oz_llama_create(&m, &cfg, &be, &arena, shape, &err) == OZ_OK, "%s", err.msg);
    if (!m) goto out;
    const oz_param_layout *lay = oz_llama_get_layout(m);
    float *params = oz_llama_params(m);
    for (int i = 0; i < lay->n; i++) {
        const oz_st_tensor *t = oz_safetensors_find(&st, lay->params[i].name);
        CHECK(t != NULL, "fixture lacks %s", lay->params[i].name);
        if (t) CHECK(oz_st_tensor_to_f32(t, params + lay->params[i].offset, lay->params[i].numel, &err) == OZ_OK,
                     "%s", err.msg);
    }
    size_t N = (size_t)B * T, V = (size_t)cfg.vocab_size;
    int32_t *ids = malloc(N * sizeof *ids), *targets = malloc(N * sizeof *targets);
    float *logits = malloc(N * V * sizeof *logits);
    double *ref = malloc(N * V * sizeof *ref);
    const oz_st_tensor *t_ids = oz_safetensors_find(&st, "input_ids"), *t_tg = oz_safetensors_find(&st, "targets");
    memcpy(ids, t_ids->data, N * sizeof *ids);
    memcpy(targets, t_tg->data, N * sizeof *targets);
    long valid = 0;
    for (size_t i = 0; i < N; i++) valid += targets[i] >= 0;

    oz_llama_batch batch = {ids, targets, B, T, logits};
    double loss_sum;
    long count;
    oz_llama_zero_grads(m);
    CHECK(oz_llama_forward_backward(m, &batch, 1.0f / (float)valid, &loss_sum, &count, &err) == OZ_OK, "%s", err.msg);
    CHECK(count == valid, "%ld targets counted, %ld valid", count, valid);

    double ref_loss;
    oz_st_tensor_to_f64(oz_safetensors_find(&st, "loss"), &ref_loss, 1, &err);
    CHECK_CLOSE(loss_sum / count, ref_loss, 1e-5, 0, "loss");
    oz_st_tensor_to_f64(oz_safetensors_find(&st, "logits"), ref, N * V, &err);
    double e = rel_error_f32_f64(logits, ref, N * V);
    CHECK(e < 1e-5, "%s logits relative error %.3g", file, e);

    float *grads = oz_llama_grads(m);
    double worst = 0;
    for (int i = 0; i < lay->n; i++) {
        const oz_param_info *p = &lay->params[i];
        char name[160];
        snprintf(name, sizeof name, "grad.%s", p->name);
        const oz_st_tensor *t = oz_safetensors_find(&st, name);
        CHECK(t != NULL, "fixture lacks %s", name);
        if (!t) continue;
        double *g = malloc(p->numel * sizeof *g);
        oz_st_tensor_to_f64(t, g, p->numel, &err);
        double ge = rel_error_f32_f64(grads + p->offset, g, p->numel);
        CHECK(ge < 1e-4, "%s: gradient of %s relative error %.3g", file, p->name, ge);
        if (ge > worst) worst = ge;
        free(g);
    }
    fprintf(stderr, "     %s: loss %.6f vs %.6f, logits rel err %.2g, worst gradient rel err %.2g\n", file,
            loss_sum / count, ref_loss, e, worst);
    free(ids);
    free(targets);
    free(logits);
    free(ref);
out:
    oz_llama_destroy(m);
    oz_arena_destroy(&arena);
    be.destroy(&be);
    oz_safetensors_close(&st);
}

static void test_parity_gqa(void) { parity_fixture("parity_gqa.safetensors"); }
static void test_parity_tied(void) { parity_fixture("parity_tied.safetensors"); }

/* A small model whose weights are large enough that gradients are far from zero. */
typedef struct {
    oz_backend be;
    oz_arena arena;
    oz_llama *m;
    oz_llama_config cfg;
    int32_t ids[2 * 7], targets[2 * 7];
} tiny_model;

/* Ranks of the low-rank tiny model: a mix of attention and MLP matrices, one at full rank
 * (v of layer 1: min(8, 16) = 8), the rest dense. */
static void tiny_low_rank(oz_llama_config *c) {
    c->low_rank[0][OZ_M_Q] = 3;
    c->low_rank[0][OZ_M_GATE] = 5;
    c->low_rank[0][OZ_M_DOWN] = 4;
    c->low_rank[1][OZ_M_K] = 2;
    c->low_rank[1][OZ_M_V] = 8;
    c->low_rank[1][OZ_M_O] = 6;
    c->low_rank[1][OZ_M_UP] = 7;
}

static void tiny_setup_ex(tiny_model *tm, bool tie, bool low_rank, unsigned freeze) {
    oz_err err = {0};
    oz_llama_config c = {29, 16, 24, 2, 4, 2, 4, 32, 1e-5f, 10000.0f, tie, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0, {{0}}};
    if (low_rank) tiny_low_rank(&c);
    tm->cfg = c;
    oz_backend_cpu_create(&tm->be, 0, &err);
    oz_arena_init(&tm->arena, tm->be.allocator);
    oz_llama_shape shape = {.batch = 2, .seq = 7, .with_grads = true, .freeze = freeze};
    CHECK(oz_llama_create(&tm->m, &c, &tm->be, &tm->arena, shape, &err) == OZ_OK, "%s", err.msg);
    const oz_param_layout *lay = oz_llama_get_layout(tm->m);
    float *p = oz_llama_params(tm->m);
    oz_llama_init_params(&c, lay, p, 7);
    oz_rng rng;
    oz_rng_seed(&rng, 99);
    for (int i = 0; i < lay->n; i++) {
        const oz_param_info *pi = &lay->params[i];
        for (size_t j = 0; j < pi->numel; j++)
            p[pi->offset + j] = pi->is_norm ? 1.0f + 0.2f * (float)oz_rng_normal(&rng) : p[pi->offset + j] * 15.0f;
    }
    for (int i = 0; i < 14; i++) {
        tm->ids[i] = (int32_t)oz_rng_below(&rng, (uint64_t)c.vocab_size);
        tm->targets[i] = (int32_t)oz_rng_below(&rng, (uint64_t)c.vocab_size);
    }
    tm->targets[3] = -1; /* an ignored position */
}

static void tiny_setup(tiny_model *tm, bool tie) { tiny_setup_ex(tm, tie, false, 0); }

static void tiny_teardown(tiny_model *tm) {
    oz_llama_destroy(tm->m);
    oz_arena_destroy(&tm->arena);
    tm->be.destroy(&tm->be);
}

static double tiny_loss(tiny_model *tm) {
    oz_err err = {0};
    oz_llama_batch b = {tm->ids, tm->targets, 2, 7, NULL};
    double s;
    long c;
    oz_llama_forward(tm->m, &b, &s, &c, &err);
    return s / c;
}

/* Directional finite differences per tensor: for a direction v mixing the gradient and noise,
 * (L(w + eps v) - L(w - eps v)) / 2 eps must equal <grad, v>. Directions that include the gradient
 * keep the signal far above fp32 rounding, and the noise part catches a wrong direction. */
static void fd_check_ex(bool tie, bool low_rank, bool partial) {
    tiny_model tm;
    tiny_setup_ex(&tm, tie, low_rank, 0);
    if (!tm.m) return;
    /* Active ranks below the stored ones: the inactive rows of A / columns of B get no gradient. */
    if (partial) {
        oz_err e2 = {0};
        CHECK(oz_llama_set_active_rank(tm.m, 0, OZ_M_GATE, 2, &e2) == OZ_OK, "%s", e2.msg);
        CHECK(oz_llama_set_active_rank(tm.m, 1, OZ_M_O, 1, &e2) == OZ_OK, "%s", e2.msg);
        CHECK(oz_llama_set_active_rank(tm.m, 1, OZ_M_O, 7, &e2) == OZ_ERR_INPUT, "rank 7 above R = 6 accepted");
        CHECK(oz_llama_set_active_rank(tm.m, 0, OZ_M_K, 1, &e2) == OZ_ERR_INPUT, "active rank of a dense matrix set");
    }
    oz_err err = {0};
    oz_llama_batch b = {tm.ids, tm.targets, 2, 7, NULL};
    double s;
    long c;
    oz_llama_zero_grads(tm.m);
    oz_llama_forward_backward(tm.m, &b, 1.0f, &s, &c, &err);
    const oz_param_layout *lay = oz_llama_get_layout(tm.m);
    float *p = oz_llama_params(tm.m), *g = oz_llama_grads(tm.m);
    float *grad = malloc(lay->total * sizeof *grad);
    memcpy(grad, g, lay->total * sizeof *grad);
    oz_rng rng;
    oz_rng_seed(&rng, 5);
    for (int i = 0; i < lay->n; i++) {
        const oz_param_info *pi = &lay->params[i];
        size_t n = pi->numel;
        double gnorm = 0;
        for (size_t j = 0; j < n; j++) gnorm += (double)grad[pi->offset + j] * grad[pi->offset + j];
        gnorm = sqrt(gnorm);
        double *v = malloc(n * sizeof *v), vnorm = 0, analytic = 0;
        for (size_t j = 0; j < n; j++) {
            v[j] = 0.8 * grad[pi->offset + j] / (gnorm + 1e-30) + 0.6 * oz_rng_normal(&rng) / sqrt((double)n);
            vnorm += v[j] * v[j];
        }
        vnorm = sqrt(vnorm);
        for (size_t j = 0; j < n; j++) {
            v[j] /= vnorm;
            analytic += v[j] * grad[pi->offset + j];
        }
        float *w = p + pi->offset, *saved = malloc(n * sizeof *saved);
        memcpy(saved, w, n * sizeof *saved);
        double eps = low_rank ? 1e-2 : 2e-2; /* factored layers curve more: a smaller step */
        for (size_t j = 0; j < n; j++) w[j] = (float)(saved[j] + eps * v[j]);
        double lp = tiny_loss(&tm) * c;
        for (size_t j = 0; j < n; j++) w[j] = (float)(saved[j] - eps * v[j]);
        double lm = tiny_loss(&tm) * c;
        memcpy(w, saved, n * sizeof *saved);
        double numeric = (lp - lm) / (2 * eps);
        CHECK(fabs(numeric - analytic) <= 2e-3 * fabs(analytic) + 2e-4,
              "%s%s%s: directional derivative analytic %.6g vs finite difference %.6g", pi->name,
              tie ? " (tied)" : "", partial ? " (partial rank)" : "", analytic, numeric);
        if (partial && pi->factor) {
            int r = oz_llama_active_rank(tm.m, pi->layer, pi->matrix);
            int R = oz_llama_rank(tm.m, pi->layer, pi->matrix);
            double inactive = 0;
            for (int64_t row = 0; row < pi->shape[0]; row++)
                for (int64_t col = 0; col < pi->shape[1]; col++) {
                    bool active = pi->factor == 1 ? row < r : col < r;
                    if (!active) inactive += fabs(grad[pi->offset + (size_t)(row * pi->shape[1] + col)]);
                }
            CHECK(inactive == 0, "%s: inactive part (rank %d of %d) has gradient %g", pi->name, r, R, inactive);
        }
        free(v);
        free(saved);
    }
    free(grad);
    tiny_teardown(&tm);
}

static void test_fd_untied(void) { fd_check_ex(false, false, false); }
static void test_fd_tied(void) { fd_check_ex(true, false, false); }
/* Factored layers: dX through both factors and dA, dB, against finite differences, at full and
 * at partial active rank. */
static void test_fd_low_rank(void) {
    fd_check_ex(false, true, false);
    fd_check_ex(true, true, true);
}

static void test_determinism_and_accumulation(void) {
    tiny_model tm;
    tiny_setup(&tm, false);
    if (!tm.m) return;
    oz_err err = {0};
    const oz_param_layout *lay = oz_llama_get_layout(tm.m);
    size_t n = lay->total;
    float *g1 = malloc(n * sizeof *g1), *g2 = malloc(n * sizeof *g2);
    double s;
    long c;
    oz_llama_batch full = {tm.ids, tm.targets, 2, 7, NULL};
    oz_llama_zero_grads(tm.m);
    oz_llama_forward_backward(tm.m, &full, 1.0f / 13, &s, &c, &err);
    memcpy(g1, oz_llama_grads(tm.m), n * sizeof *g1);
    oz_llama_zero_grads(tm.m);
    oz_llama_forward_backward(tm.m, &full, 1.0f / 13, &s, &c, &err);
    CHECK(memcmp(g1, oz_llama_grads(tm.m), n * sizeof *g1) == 0, "two identical backward passes differ");

    /* The same batch as two accumulated micro-batches of one row each. */
    oz_llama_zero_grads(tm.m);
    oz_llama_batch row0 = {tm.ids, tm.targets, 1, 7, NULL}, row1 = {tm.ids + 7, tm.targets + 7, 1, 7, NULL};
    oz_llama_forward_backward(tm.m, &row0, 1.0f / 13, &s, &c, &err);
    oz_llama_forward_backward(tm.m, &row1, 1.0f / 13, &s, &c, &err);
    memcpy(g2, oz_llama_grads(tm.m), n * sizeof *g2);
    double max_diff = 0, max_ref = 0;
    for (size_t i = 0; i < n; i++) {
        max_diff = fmax(max_diff, fabs((double)g1[i] - g2[i]));
        max_ref = fmax(max_ref, fabs((double)g1[i]));
    }
    CHECK(max_diff <= 1e-5 * max_ref, "accumulated gradients differ from the full batch: %.3g of %.3g", max_diff,
          max_ref);
    free(g1);
    free(g2);
    tiny_teardown(&tm);
}

static void test_layout_and_presets(void) {
    oz_llama_config c;
    CHECK(oz_llama_preset("60m", &c), "60m preset missing");
    oz_param_layout lay;
    oz_err err = {0};
    CHECK(oz_param_layout_build(&c, &lay, &err) == OZ_OK, "%s", err.msg);
    long long total = 0;
    for (int i = 0; i < lay.n; i++) total += (long long)lay.params[i].numel;
    /* 2 * 32000 * 512 (embedding + head) + 8 * (4 * 512^2 + 3 * 512 * 1376 + 2 * 512) + 512 */
    CHECK(total == 58073600LL, "60m preset has %lld parameters", total);
    CHECK(lay.n == 2 + 9 * 8 + 1, "60m preset has %d tensors", lay.n);
    const oz_param_info *q = oz_param_layout_find(&lay, "model.layers.3.self_attn.q_proj.weight");
    CHECK(q && q->shape[0] == 512 && q->shape[1] == 512 && q->layer == 3, "q_proj of layer 3 misplaced");
    const oz_param_info *n0 = oz_param_layout_find(&lay, "model.layers.0.input_layernorm.weight");
    CHECK(n0 && n0->is_norm && n0->offset == lay.layer_offset[0], "layer 0 does not start with its norm");
    oz_param_layout_free(&lay);

    CHECK(oz_llama_preset("llama3-8b", &c) && c.num_key_value_heads == 8 && c.vocab_size == 128256,
          "llama3-8b preset is wrong");
    CHECK(oz_param_layout_build(&c, &lay, &err) == OZ_OK, "%s", err.msg);
    total = 0;
    for (int i = 0; i < lay.n; i++) total += (long long)lay.params[i].numel;
    CHECK(total == 8030261248LL, "llama3-8b has %lld parameters (expected 8030261248)", total);
    oz_param_layout_free(&lay);
    CHECK(!oz_llama_preset("nonsense", &c), "unknown preset accepted");
    c.num_key_value_heads = 5;
    CHECK(oz_llama_config_validate(&c, &err) == OZ_ERR_INPUT, "heads not divisible by kv heads accepted");
}

static void test_schedule(void) {
    oz_schedule s = {1e-3f, 0.1f, 10, 110};
    CHECK_CLOSE(oz_schedule_lr(&s, 0), 1e-4, 1e-6, 0, "first warmup step");
    CHECK_CLOSE(oz_schedule_lr(&s, 9), 1e-3, 1e-6, 0, "end of warmup");
    CHECK_CLOSE(oz_schedule_lr(&s, 10), 1e-3, 1e-6, 0, "start of cosine");
    CHECK_CLOSE(oz_schedule_lr(&s, 109), 1e-4, 1e-5, 0, "last step reaches min lr");
    CHECK(oz_schedule_lr(&s, 60) < 6e-4 && oz_schedule_lr(&s, 60) > 5e-4, "mid-cosine lr %g",
          (double)oz_schedule_lr(&s, 60));
}

/* AdamW on the tiny model memorises a fixed batch: the loss must fall a lot. */
static void test_adamw_lowers_loss(void) {
    tiny_model tm;
    tiny_setup(&tm, false);
    if (!tm.m) return;
    oz_err err = {0};
    oz_optim_config oc = {.kind = OZ_OPTIM_ADAMW, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f};
    oz_optimizer *opt = NULL;
    const oz_param_layout *lay = oz_llama_get_layout(tm.m);
    CHECK(oz_optimizer_create(&opt, &oc, lay, &tm.be, &tm.arena, &err) == OZ_OK, "%s", err.msg);
    if (!opt) return;
    size_t numel = 0;
    for (int i = 0; i < lay->n; i++) numel += lay->params[i].numel;
    CHECK(tm.arena.current[OZ_MEM_OPTIM] == 2 * numel * sizeof(float),
          "AdamW state is %zu bytes, the formula 2 x 4 x %zu", tm.arena.current[OZ_MEM_OPTIM], numel);
    double first = tiny_loss(&tm), last = first;
    oz_llama_batch b = {tm.ids, tm.targets, 2, 7, NULL};
    connect_model(opt, tm.m);
    for (int step = 0; step < 60; step++) {
        double s;
        long c;
        CHECK(train_step(tm.m, opt, &b, step, 1e-2f, 1.0f / 13, &s, &c, &err) == OZ_OK, "%s", err.msg);
        last = s / c;
    }
    CHECK(last < 0.3 * first, "loss went from %.4f to only %.4f", first, last);
    oz_optimizer_destroy(opt);
    tiny_teardown(&tm);
}

static void test_arena_accounting(void) {
    oz_arena a;
    oz_arena_init(&a, oz_host_allocator());
    oz_err err = {0};
    void *x, *y;
    CHECK(oz_arena_alloc(&a, OZ_MEM_WEIGHTS, 1000, "x", &x, &err) == OZ_OK, "%s", err.msg);
    CHECK(oz_arena_alloc(&a, OZ_MEM_ACTIVATIONS, 3000, "y", &y, &err) == OZ_OK, "%s", err.msg);
    oz_arena_free(&a, y);
    CHECK(oz_arena_alloc(&a, OZ_MEM_ACTIVATIONS, 500, "y2", &y, &err) == OZ_OK, "%s", err.msg);
    CHECK(a.peak[OZ_MEM_ACTIVATIONS] == 3000 && a.current[OZ_MEM_ACTIVATIONS] == 500, "activation books wrong");
    CHECK(a.peak_total == 4000 && a.current_total == 1500, "total books wrong: peak %zu", a.peak_total);
    CHECK(a.largest[OZ_MEM_ACTIVATIONS] == 3000, "largest allocation not recorded");
    CHECK(oz_arena_alloc(&a, OZ_MEM_SCRATCH, (size_t)1 << 62, "huge", &x, &err) == OZ_ERR_NOMEM,
          "a 4 EiB allocation succeeded");
    oz_arena_destroy(&a);
    CHECK(a.current_total == 0, "destroy left %zu bytes", a.current_total);
}

/* Random ids and targets (below vocab) for the multi-mode model tests. */
static void random_tokens(int32_t *ids, int32_t *targets, int n, int vocab, uint64_t seed) {
    oz_rng rng;
    oz_rng_seed(&rng, seed);
    for (int i = 0; i < n; i++) {
        ids[i] = (int32_t)oz_rng_below(&rng, (uint64_t)vocab);
        targets[i] = (int32_t)oz_rng_below(&rng, (uint64_t)vocab);
    }
}

/* The planner's bytes for (c, shape) against the arena the model was just created in: equal in
 * every category, the largest buffer of each too. The plan goes to *out when wanted. */
static void check_plan(const oz_llama_config *c, oz_llama_shape shape, const oz_arena *arena, const char *what,
                       oz_llama_plan *out) {
    oz_llama_plan plan;
    oz_err err = {0};
    CHECK(oz_llama_plan_memory(c, shape, &plan, &err) == OZ_OK, "%s: %s", what, err.msg);
    for (int cat = 0; cat < OZ_MEM_NCATEGORIES; cat++)
        CHECK(plan.bytes[cat] == arena->current[cat] && plan.largest[cat] == arena->largest[cat],
              "%s: plan/arena differ in %s: %zu vs %zu bytes (largest %zu vs %zu)", what, oz_mem_category_name(cat),
              plan.bytes[cat], arena->current[cat], plan.largest[cat], arena->largest[cat]);
    if (out) *out = plan;
}

/* The layout's initial weights times 10 (gradients far from zero) with norms at 1; malloc'd. */
static float *scaled_init(const oz_llama_config *c, const oz_param_layout *lay, uint64_t seed) {
    float *init = malloc(lay->total * sizeof *init);
    oz_llama_init_params(c, lay, init, seed);
    for (size_t i = 0; i < lay->total; i++) init[i] *= 10.0f;
    for (int i = 0; i < lay->n; i++)
        if (lay->params[i].is_norm)
            for (size_t j = 0; j < lay->params[i].numel; j++) init[lay->params[i].offset + j] = 1.0f;
    return init;
}

/* Loss and every gradient with recompute and mini-sequences (counts 1, 2, 3, 7, auto; uneven
 * chunks; grouped-query heads) against the plain model; no tokens x intermediate or tokens x vocab
 * buffer with mini-sequences on; the planner's bytes equal the arena's. */
static void test_recompute_and_mini_sequences(void) {
    oz_llama_config c = {61, 16, 40, 2, 4, 2, 4, 32, 1e-5f, 10000.0f, false, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0, {{0}}};
    enum { B = 2, T = 9, N = B * T };
    int32_t ids[N], targets[N];
    random_tokens(ids, targets, N, c.vocab_size, 11);
    targets[5] = -1;
    oz_param_layout lay;
    oz_err err = {0};
    oz_param_layout_build(&c, &lay, &err);
    float *init = scaled_init(&c, &lay, 3), *ref_grad = malloc(lay.total * sizeof *ref_grad);
    int auto_mlp, auto_head;
    oz_llama_mini_seq_auto(&c, N, &auto_mlp, &auto_head);
    CHECK(auto_mlp == 1 && auto_head == 1, "auto rule gave %d MLP / %d head chunks for 18 tokens", auto_mlp, auto_head);
    oz_llama_config big;
    oz_llama_preset("llama3-8b", &big);
    int m8, h8;
    oz_llama_mini_seq_auto(&big, 60000, &m8, &h8);
    CHECK(m8 == 15 && h8 == 32, "auto rule for llama3-8b at 60K tokens gave %d / %d (MsT: 15 / 32)", m8, h8);
    oz_llama_mini_seq_auto(&big, 1024, &m8, &h8);
    CHECK(m8 == 1 && h8 == 4, "auto rule for 1024 tokens gave %d / %d (floor of 256 rows: 1 / 4)", m8, h8);
    const int counts[][2] = {{0, 0}, {1, 1}, {2, 2}, {3, 3}, {7, 7}, {4, 5}, {auto_mlp, auto_head}};
    double ref_loss = 0;
    for (int recompute = 0; recompute <= 1; recompute++) {
        for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++) {
            oz_backend be;
            oz_backend_cpu_create(&be, 0, &err);
            oz_arena arena;
            oz_arena_init(&arena, be.allocator);
            oz_llama_shape shape = {.batch = B, .seq = T, .with_grads = true, .recompute = recompute,
                                    .mlp_chunks = counts[k][0], .head_chunks = counts[k][1]};
            oz_llama *m = NULL;
            CHECK(oz_llama_create(&m, &c, &be, &arena, shape, &err) == OZ_OK, "%s", err.msg);
            if (!m) continue;
            char what[64];
            snprintf(what, sizeof what, "recompute %d, chunks %d/%d", recompute, counts[k][0], counts[k][1]);
            check_plan(&c, shape, &arena, what, NULL);
            if (counts[k][0] >= 2) {
                size_t limit = (size_t)N * c.intermediate_size * sizeof(float);
                for (int cat = OZ_MEM_ACTIVATIONS; cat <= OZ_MEM_SCRATCH; cat++)
                    CHECK(arena.largest[cat] < limit, "a %zu-byte %s buffer exists with %d mini-sequences",
                          arena.largest[cat], oz_mem_category_name(cat), counts[k][0]);
            }
            memcpy(oz_llama_params(m), init, lay.total * sizeof *init);
            oz_llama_batch b = {ids, targets, B, T, NULL};
            double s;
            long n;
            oz_llama_zero_grads(m);
            CHECK(oz_llama_forward_backward(m, &b, 1.0f / 17, &s, &n, &err) == OZ_OK, "%s", err.msg);
            float *g = oz_llama_grads(m);
            if (!recompute && counts[k][0] == 0) {
                ref_loss = s / n;
                memcpy(ref_grad, g, lay.total * sizeof *g);
            } else {
                CHECK_CLOSE(s / n, ref_loss, 1e-6, 0, "loss with recompute/mini-sequences");
                for (int i = 0; i < lay.n; i++) {
                    const oz_param_info *p = &lay.params[i];
                    double diff = 0, ref = 0;
                    for (size_t j = 0; j < p->numel; j++) {
                        diff = fmax(diff, fabs((double)g[p->offset + j] - ref_grad[p->offset + j]));
                        ref = fmax(ref, fabs((double)ref_grad[p->offset + j]));
                    }
                    CHECK(diff <= 1e-5 * ref, "%s differs by %.3g (of %.3g) with recompute %d, chunks %d/%d",
                          p->name, diff, ref, recompute, counts[k][0], counts[k][1]);
                }
            }
            /* A forward-only pass (evaluation) agrees too. */
            double s2;
            long n2;
            CHECK(oz_llama_forward(m, &b, &s2, &n2, &err) == OZ_OK && fabs(s2 / n2 - ref_loss) <= 1e-6 * ref_loss,
                  "forward-only loss %.9g vs %.9g", s2 / n2, ref_loss);
            oz_llama_destroy(m);
            CHECK(arena.current_total == 0, "destroy left %zu bytes", arena.current_total);
            oz_arena_destroy(&arena);
            be.destroy(&be);
        }
    }
    free(init);
    free(ref_grad);
    oz_param_layout_free(&lay);
}

/* bf16 checkpoints (recompute layer-bf16): the planner equals the arena, the saved inputs take
 * half the bytes, losses and gradients stay close to fp32 recomputation without being equal (the
 * rounding happens), mini-sequences change nothing beyond fp32 rounding, runs are deterministic,
 * and the option is refused without recompute. Offloaded checkpoints (layer-offload) give the bf16
 * run's loss and gradients bit for bit, with one staging checkpoint on the backend and the rest in
 * the planned host memory. */
static void test_bf16_checkpoints(void) {
    oz_llama_config c = {61, 16, 40, 3, 4, 2, 4, 32, 1e-5f, 10000.0f, false, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0, {{0}}};
    enum { B = 2, T = 9, N = B * T };
    int32_t ids[N], targets[N];
    random_tokens(ids, targets, N, c.vocab_size, 12);
    oz_param_layout lay;
    oz_err err = {0};
    oz_param_layout_build(&c, &lay, &err);
    float *init = scaled_init(&c, &lay, 5), *grad[6];
    /* runs: fp32 recompute; bf16; bf16 again; bf16 with 3 mini-sequences; offloaded; offloaded
     * with 3 mini-sequences */
    const bool bf16[6] = {false, true, true, true, true, true}, offload[6] = {false, false, false, false, true, true};
    const int chunks[6] = {0, 0, 0, 3, 0, 3};
    double loss[6];
    size_t acts[6], host[6];
    for (int r = 0; r < 6; r++) {
        grad[r] = calloc(lay.total, sizeof(float));
        oz_backend be;
        oz_backend_cpu_create(&be, 0, &err);
        oz_arena arena;
        oz_arena_init(&arena, be.allocator);
        oz_llama_shape shape = {.batch = B, .seq = T, .with_grads = true, .recompute = true,
                                .bf16_checkpoints = bf16[r], .offload_checkpoints = offload[r],
                                .mlp_chunks = chunks[r], .head_chunks = chunks[r]};
        oz_llama *m = NULL;
        CHECK(oz_llama_create(&m, &c, &be, &arena, shape, &err) == OZ_OK, "%s", err.msg);
        if (!m) continue;
        oz_llama_plan plan;
        check_plan(&c, shape, &arena, "bf16 checkpoints", &plan);
        host[r] = oz_llama_host_bytes(m);
        CHECK(plan.host_bytes == host[r], "offload: planned %zu host bytes, model holds %zu", plan.host_bytes, host[r]);
        acts[r] = arena.current[OZ_MEM_ACTIVATIONS];
        memcpy(oz_llama_params(m), init, lay.total * sizeof *init);
        oz_llama_batch b = {ids, targets, B, T, NULL};
        double s;
        long n;
        oz_llama_zero_grads(m);
        CHECK(oz_llama_forward_backward(m, &b, 1.0f / 17, &s, &n, &err) == OZ_OK, "%s", err.msg);
        loss[r] = s / n;
        memcpy(grad[r], oz_llama_grads(m), lay.total * sizeof(float));
        oz_llama_destroy(m);
        oz_arena_destroy(&arena);
        be.destroy(&be);
    }
    /* (L+1) fp32 inputs become L bf16 ones plus one fp32 work copy; the final residual's bf16 copy
     * lives in a layer buffer (it only passes through between the last layer and the head). */
    size_t nd = (size_t)N * c.hidden_size, L = (size_t)c.num_hidden_layers;
    CHECK(acts[0] - acts[1] == (L + 1) * nd * 4 - L * nd * 2 - nd * 4, "activations: %zu fp32 vs %zu bf16", acts[0],
          acts[1]);
    CHECK(loss[1] != loss[0] && fabs(loss[1] - loss[0]) < 1e-2 * loss[0], "bf16 loss %.9g vs fp32 %.9g", loss[1],
          loss[0]);
    CHECK(loss[2] == loss[1] && !memcmp(grad[2], grad[1], lay.total * sizeof(float)), "bf16 run not deterministic");
    CHECK_CLOSE(loss[3], loss[1], 1e-6, 0, "bf16 loss with mini-sequences");
    /* Offloaded: the same numbers as on the backend, L bf16 inputs moved to the host, one staging
     * buffer left. */
    for (int r = 4; r < 6; r++) {
        int same = r == 4 ? 1 : 3;
        CHECK(loss[r] == loss[same] && !memcmp(grad[r], grad[same], lay.total * sizeof(float)),
              "offloaded checkpoints changed the loss or gradients (%.9g vs %.9g, chunks %d)", loss[r], loss[same],
              chunks[r]);
        CHECK(host[r] == L * nd * 2 && acts[same] - acts[r] == (L - 1) * nd * 2,
              "offload: %zu host bytes, activations %zu vs %zu on the backend", host[r], acts[r], acts[same]);
    }
    CHECK(host[1] == 0, "bf16 checkpoints without offload hold %zu host bytes", host[1]);
    for (int i = 0; i < lay.n; i++) {
        const oz_param_info *p = &lay.params[i];
        double dot = 0, n0 = 0, n1 = 0, diff = 0, ref = 0;
        for (size_t j = 0; j < p->numel; j++) {
            double a = grad[0][p->offset + j], g = grad[1][p->offset + j], h = grad[3][p->offset + j];
            dot += a * g, n0 += a * a, n1 += g * g;
            diff = fmax(diff, fabs(h - g));
            ref = fmax(ref, fabs(g));
        }
        double cosv = dot / sqrt(n0 * n1 + 1e-300);
        CHECK(cosv > 0.999, "%s: bf16-checkpoint gradient's cosine with fp32 is %.6f", p->name, cosv);
        CHECK(diff <= 1e-5 * ref, "%s: bf16 gradient with mini-sequences differs by %.3g (of %.3g)", p->name, diff, ref);
    }
    /* Refused without recomputation (nothing would be saved in bf16). */
    oz_llama_plan plan;
    oz_llama_shape bad = {.batch = B, .seq = T, .with_grads = true, .bf16_checkpoints = true};
    CHECK(oz_llama_plan_memory(&c, bad, &plan, &err) == OZ_ERR_INPUT && strstr(err.msg, "recompute"),
          "bf16 checkpoints without recompute: %s", err.msg);
    oz_llama_shape bad_offload = {.batch = B, .seq = T, .with_grads = true, .recompute = true, .offload_checkpoints = true};
    CHECK(oz_llama_plan_memory(&c, bad_offload, &plan, &err) == OZ_ERR_INPUT && strstr(err.msg, "bf16"),
          "offload without bf16 checkpoints: %s", err.msg);
    for (int r = 0; r < 6; r++) free(grad[r]);
    free(init);
    oz_param_layout_free(&lay);
}

/* Embedding/head gradients in vocabulary blocks (grads.vocab_blocks): the OZ_GRAD_ROWS events, in
 * order and covering every row once, are the full-buffer gradients to fp32 rounding, and so are
 * the loss, dX (seen through the layers' gradients) and the final norm's gradient; with and
 * without mini-sequences; the planner equals the arena, whose largest gradient buffer is a block. */

typedef struct {
    float *grad[2]; /* embedding, head */
    int next[2], calls, bad;
    int head, d;
    oz_backend *be;
} rows_log;

static void record_rows(rows_log *r, const oz_grad_event *ev) {
    int k = ev->index == 0 ? 0 : ev->index == r->head ? 1 : -1;
    if (k < 0 || ev->row0 != r->next[k]) {
        r->bad++;
        return;
    }
    r->be->to_host(r->be, r->grad[k] + (size_t)ev->row0 * r->d, ev->grad, (size_t)ev->rows * r->d * sizeof(float));
    r->next[k] += ev->rows;
    r->calls++;
}

static void take_rows_only(void *user, const oz_grad_event *ev) {
    if (ev->form == OZ_GRAD_ROWS) record_rows(user, ev);
}

/* The row blocks, and a copy of layer 0's gradients (one buffer) when the layer is emitted. */
typedef struct {
    rows_log *rows;
    int layer0_first;
    float *layer0;
    size_t layer0_n;
} blocks_log;

static void take_blocks(void *user, const oz_grad_event *ev) {
    blocks_log *l = user;
    if (ev->form == OZ_GRAD_ROWS) record_rows(l->rows, ev);
    else if (ev->form == OZ_GRAD_TENSOR && ev->index == l->layer0_first)
        memcpy(l->layer0, ev->grad, l->layer0_n * sizeof(float));
}

static void test_outer_grad_blocks(void) {
    oz_llama_config c = {61, 16, 40, 2, 4, 2, 4, 32, 1e-5f, 10000.0f, false, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0, {{0}}};
    enum { B = 2, T = 9, N = B * T };
    int32_t ids[N], targets[N];
    random_tokens(ids, targets, N, c.vocab_size, 21);
    targets[3] = -1;
    ids[4] = ids[5] = 60; /* a repeated id in the last (short) block */
    oz_param_layout lay;
    oz_err err = {0};
    oz_param_layout_build(&c, &lay, &err);
    float *init = scaled_init(&c, &lay, 8);
    int head = lay.n - 1, block = oz_llama_vocab_block_rows(&c);
    CHECK(block == 16, "61 x 16 vocabulary: %d-row blocks (expected 4 blocks of 16)", block);
    for (int chunks = 0; chunks <= 3; chunks += 3) {
        double loss[2];
        size_t grads[2] = {0, 0};
        float *ref[3] = {NULL, NULL, NULL}; /* embedding, head, final norm */
        float *lay_ref = NULL;
        for (int blocks = 0; blocks <= 1; blocks++) {
            oz_backend be;
            oz_backend_cpu_create(&be, 0, &err);
            oz_arena arena;
            oz_arena_init(&arena, be.allocator);
            oz_llama_shape shape = {.batch = B, .seq = T, .with_grads = true, .grads.per_layer = true,
                                    .grads.vocab_blocks = blocks, .mlp_chunks = chunks, .head_chunks = chunks};
            oz_llama *m = NULL;
            CHECK(oz_llama_create(&m, &c, &be, &arena, shape, &err) == OZ_OK, "%s", err.msg);
            if (!m) return;
            check_plan(&c, shape, &arena, blocks ? "outer blocks" : "outer gradients whole", NULL);
            grads[blocks] = arena.current[OZ_MEM_GRADS];
            if (blocks) /* two V x d gradients and the norm's become the norm's and one block */
                CHECK(grads[0] - grads[1] == (lay.outer_grad - (size_t)c.hidden_size * (1 + block)) * sizeof(float),
                      "gradient bytes %zu without blocks, %zu with", grads[0], grads[1]);
            memcpy(oz_llama_params(m), init, lay.total * sizeof *init);
            rows_log rl = {{calloc((size_t)c.vocab_size * c.hidden_size, 4), calloc((size_t)c.vocab_size * c.hidden_size, 4)},
                           {0, 0}, 0, 0, head, c.hidden_size, &be};
            /* layer 0's gradients are copied when emitted (they flow from dX of the head) */
            float *l0 = malloc(lay.max_layer_grad * sizeof *l0);
            blocks_log bl = {&rl, lay.layer_first[0], l0, lay.max_layer_grad};
            oz_llama_set_grad_sink(m, (oz_grad_sink){take_blocks, &bl});
            oz_llama_batch b = {ids, targets, B, T, NULL};
            double s;
            long n;
            oz_llama_zero_grads(m);
            CHECK(oz_llama_forward_backward(m, &b, 1.0f / 17, &s, &n, &err) == OZ_OK, "%s", err.msg);
            loss[blocks] = s / n;
            float *norm = oz_llama_grad(m, head - 1);
            if (!blocks) {
                ref[0] = malloc(lay.params[0].numel * 4);
                ref[1] = malloc(lay.params[head].numel * 4);
                ref[2] = malloc(lay.params[head - 1].numel * 4);
                memcpy(ref[0], oz_llama_grad(m, 0), lay.params[0].numel * 4);
                memcpy(ref[1], oz_llama_grad(m, head), lay.params[head].numel * 4);
                memcpy(ref[2], norm, lay.params[head - 1].numel * 4);
                lay_ref = l0;
                l0 = NULL;
                CHECK(rl.calls == 0, "row blocks emitted without blocks");
            } else {
                CHECK(oz_llama_grad(m, 0) == NULL && oz_llama_grad(m, head) == NULL && oz_llama_grad_in_blocks(m, 0) &&
                          oz_llama_grad_in_blocks(m, head) && !oz_llama_grad_in_blocks(m, head - 1),
                      "embedding/head gradients should only come as row blocks");
                CHECK(rl.bad == 0 && rl.calls == 8 && rl.next[0] == c.vocab_size && rl.next[1] == c.vocab_size,
                      "row blocks: %d events, %d out of order, rows %d / %d", rl.calls, rl.bad, rl.next[0], rl.next[1]);
                CHECK_CLOSE(loss[1], loss[0], 1e-6, 0, "loss with vocabulary blocks");
                const float *got[3] = {rl.grad[0], rl.grad[1], norm};
                const size_t cnt[3] = {lay.params[0].numel, lay.params[head].numel, lay.params[head - 1].numel};
                const char *names[3] = {"embedding", "head", "final norm"};
                for (int t = 0; t < 3; t++) {
                    double diff = 0, mx = 0;
                    for (size_t j = 0; j < cnt[t]; j++) {
                        diff = fmax(diff, fabs((double)got[t][j] - ref[t][j]));
                        mx = fmax(mx, fabs((double)ref[t][j]));
                    }
                    CHECK(mx > 0 && diff <= 1e-5 * mx, "%s gradient in blocks differs by %.3g (of %.3g), chunks %d",
                          names[t], diff, mx, chunks);
                }
                double diff = 0, mx = 0;
                for (size_t j = 0; j < lay.max_layer_grad; j++) {
                    diff = fmax(diff, fabs((double)l0[j] - lay_ref[j]));
                    mx = fmax(mx, fabs((double)lay_ref[j]));
                }
                CHECK(mx > 0 && diff <= 1e-5 * mx, "layer 0 gradients with blocks differ by %.3g (of %.3g)", diff, mx);
                for (int t = 0; t < 3; t++) free(ref[t]);
                free(lay_ref);
            }
            free(l0);
            free(rl.grad[0]);
            free(rl.grad[1]);
            oz_llama_destroy(m);
            oz_arena_destroy(&arena);
            be.destroy(&be);
        }
    }
    /* A tied head has one gradient from two places: blocks are refused. */
    oz_llama_config tied = c;
    tied.tie_word_embeddings = true;
    oz_llama_plan plan;
    oz_llama_shape bad = {.batch = B, .seq = T, .with_grads = true, .grads.per_layer = true, .grads.vocab_blocks = true};
    CHECK(oz_llama_plan_memory(&tied, bad, &plan, &err) == OZ_ERR_INPUT, "blocks with a tied head were accepted");
    free(init);
    oz_param_layout_free(&lay);
}

/* The events of a backward, in order: whole-model mode emits nothing until the first backward after
 * zero_grads has finished, then every trainable tensor once as partial (its final gradient, the
 * buffer's); a second micro-batch emits nothing, and emit_accumulated every tensor once, not partial.
 * Per-layer mode emits layer 1's tensors, then layer 0's, each final when emitted (the whole-model
 * gradients bit for bit), and emit_accumulated the embedding, final norm and head. */
typedef struct {
    oz_llama *m;
    int index[64], n, partial, bad;
    float *copy;  /* grad_offset layout: each gradient as it was when emitted */
} event_log;

static void log_event(void *user, const oz_grad_event *ev) {
    event_log *l = user;
    const oz_param_info *p = &oz_llama_get_layout(l->m)->params[ev->index];
    l->bad += ev->form != OZ_GRAD_TENSOR || ev->grad != oz_llama_grad(l->m, ev->index) || ev->scratch;
    if (l->n < 64) l->index[l->n] = ev->index;
    l->n++;
    l->partial += ev->partial;
    memcpy(l->copy + p->grad_offset, ev->grad, p->numel * sizeof(float));
}

static void test_grad_events(void) {
    tiny_model tm;
    tiny_setup(&tm, false);
    if (!tm.m) return;
    const oz_param_layout *lay = oz_llama_get_layout(tm.m);
    oz_err err = {0};
    oz_llama_batch b = {tm.ids, tm.targets, 2, 7, NULL};
    double s;
    long c;
    float *whole = calloc(lay->grad_total, sizeof *whole);
    event_log h = {tm.m, {0}, 0, 0, 0, calloc(lay->grad_total, sizeof(float))};
    oz_llama_set_grad_sink(tm.m, (oz_grad_sink){log_event, &h});
    oz_llama_zero_grads(tm.m);
    CHECK(oz_llama_forward_backward(tm.m, &b, 1.0f, &s, &c, &err) == OZ_OK, "%s", err.msg);
    memcpy(whole, oz_llama_grads(tm.m), lay->grad_total * sizeof(float));
    CHECK(h.n == lay->n && h.partial == lay->n && h.bad == 0, "first backward: %d events, %d partial, %d bad", h.n,
          h.partial, h.bad);
    for (int k = 0; k < h.n && k < 64; k++) CHECK(h.index[k] == k, "event %d is tensor %d", k, h.index[k]);
    CHECK(memcmp(h.copy, whole, lay->grad_total * sizeof(float)) == 0, "a partial gradient was not final");
    h.n = h.partial = 0;
    CHECK(oz_llama_forward_backward(tm.m, &b, 1.0f, &s, &c, &err) == OZ_OK, "%s", err.msg);
    CHECK(h.n == 0, "a second micro-batch emitted %d events", h.n);
    oz_llama_emit_accumulated(tm.m);
    CHECK(h.n == lay->n && h.partial == 0 && h.bad == 0, "emit_accumulated: %d events, %d partial, %d bad", h.n,
          h.partial, h.bad);
    /* Per-layer mode, from the same weights. */
    oz_llama *m = NULL;
    oz_llama_shape shape = {.batch = 2, .seq = 7, .with_grads = true, .grads.per_layer = true};
    CHECK(oz_llama_create(&m, &tm.cfg, &tm.be, &tm.arena, shape, &err) == OZ_OK, "%s", err.msg);
    if (m) {
        memcpy(oz_llama_params(m), oz_llama_params(tm.m), lay->total * sizeof(float));
        event_log p = {m, {0}, 0, 0, 0, calloc(lay->grad_total, sizeof(float))};
        oz_llama_set_grad_sink(m, (oz_grad_sink){log_event, &p});
        oz_llama_zero_grads(m);
        CHECK(oz_llama_forward_backward(m, &b, 1.0f, &s, &c, &err) == OZ_OK, "%s", err.msg);
        int per_layer = lay->layer_first[2] - lay->layer_first[0], k = 0;
        CHECK(p.n == per_layer && p.partial == 0 && p.bad == 0, "per-layer backward: %d events for %d layer tensors",
              p.n, per_layer);
        for (int l = 1; l >= 0; l--)
            for (int i = lay->layer_first[l]; i < lay->layer_first[l + 1]; i++, k++)
                CHECK(k < p.n && p.index[k] == i, "per-layer event %d is tensor %d, expected %d", k, p.index[k], i);
        oz_llama_emit_accumulated(m);
        CHECK(p.n == lay->n && p.bad == 0, "per-layer emit_accumulated: %d events in all", p.n);
        for (int i = 0; i < lay->n; i++) {
            const oz_param_info *q = &lay->params[i];
            CHECK(memcmp(p.copy + q->grad_offset, whole + q->grad_offset, q->numel * sizeof(float)) == 0,
                  "%s: per-layer gradient differs from the whole-model one", q->name);
        }
        free(p.copy);
        oz_llama_destroy(m);
    }
    free(h.copy);
    free(whole);
    tiny_teardown(&tm);
}

/* Copies every tensor of `src` whose name `dst` also has (same shape) into dst. */
static void copy_by_name(oz_llama *dst, oz_llama *src) {
    const oz_param_layout *ld = oz_llama_get_layout(dst), *ls = oz_llama_get_layout(src);
    for (int i = 0; i < ld->n; i++) {
        const oz_param_info *q = oz_param_layout_find(ls, ld->params[i].name);
        if (q && q->numel == ld->params[i].numel)
            memcpy(oz_llama_param(dst, i), oz_llama_param(src, (int)(q - ls->params)), q->numel * sizeof(float));
    }
}

static double max_rel_diff(const float *a, const double *b, size_t n) {
    double diff = 0, ref = 0;
    for (size_t i = 0; i < n; i++) {
        diff = fmax(diff, fabs((double)a[i] - b[i]));
        ref = fmax(ref, fabs(b[i]));
    }
    return ref > 0 ? diff / ref : diff;
}

/* A factored model whose B A equals a dense model's W gives the dense model's loss, the same
 * gradients for every shared tensor, and dB = dW A^T, dA = B^T dW for the factors. */
static void test_low_rank_equals_dense(void) {
    tiny_model dn, lr;
    tiny_setup(&dn, false);
    tiny_setup_ex(&lr, false, true, 0);
    if (!dn.m || !lr.m) return;
    copy_by_name(lr.m, dn.m);
    const oz_param_layout *ld = oz_llama_get_layout(dn.m), *ll = oz_llama_get_layout(lr.m);
    for (int l = 0; l < 2; l++)
        for (int j = 0; j < OZ_LLAMA_MATRICES; j++) {
            float *A, *B;
            int R;
            if (!oz_llama_factors(lr.m, l, j, &A, &B, &R)) continue;
            const oz_param_info *w = &ld->params[oz_llama_matrix_index(ld, l, j)];
            float *W = oz_llama_param(dn.m, oz_llama_matrix_index(ld, l, j));
            int64_t out = w->shape[0], in = w->shape[1];
            for (int64_t o = 0; o < out; o++)
                for (int64_t i = 0; i < in; i++) {
                    double acc = 0;
                    for (int k = 0; k < R; k++) acc += (double)B[o * R + k] * A[k * in + i];
                    W[o * in + i] = (float)acc;
                }
        }
    oz_err err = {0};
    oz_llama_batch b = {dn.ids, dn.targets, 2, 7, NULL};
    double s1, s2;
    long c1, c2;
    oz_llama_zero_grads(dn.m);
    oz_llama_zero_grads(lr.m);
    CHECK(oz_llama_forward_backward(dn.m, &b, 1.0f, &s1, &c1, &err) == OZ_OK, "%s", err.msg);
    CHECK(oz_llama_forward_backward(lr.m, &b, 1.0f, &s2, &c2, &err) == OZ_OK, "%s", err.msg);
    CHECK_CLOSE(s2 / c2, s1 / c1, 1e-5, 0, "factored loss vs dense loss");
    for (int i = 0; i < ll->n; i++) {
        const oz_param_info *p = &ll->params[i];
        const float *g = oz_llama_grad(lr.m, i);
        double *want = malloc(p->numel * sizeof *want);
        if (!p->factor) {
            const oz_param_info *q = oz_param_layout_find(ld, p->name);
            const float *gd = oz_llama_grad(dn.m, (int)(q - ld->params));
            for (size_t k = 0; k < p->numel; k++) want[k] = gd[k];
        } else {
            int di = oz_llama_matrix_index(ld, p->layer, p->matrix);
            const float *dW = oz_llama_grad(dn.m, di);
            int64_t out = ld->params[di].shape[0], in = ld->params[di].shape[1];
            int R = oz_llama_rank(lr.m, p->layer, p->matrix);
            int ai = oz_llama_matrix_index(ll, p->layer, p->matrix);
            const float *A = oz_llama_param(lr.m, ai), *B = oz_llama_param(lr.m, ai + 1);
            for (int64_t r0 = 0; r0 < p->shape[0]; r0++)
                for (int64_t c0 = 0; c0 < p->shape[1]; c0++) {
                    double acc = 0;
                    if (p->factor == 1) /* dA (R, in) = B^T dW */
                        for (int64_t o = 0; o < out; o++) acc += (double)B[o * R + r0] * dW[o * in + c0];
                    else /* dB (out, R) = dW A^T */
                        for (int64_t i = 0; i < in; i++) acc += (double)dW[r0 * in + i] * A[c0 * in + i];
                    want[r0 * p->shape[1] + c0] = acc;
                }
        }
        double e = max_rel_diff(g, want, p->numel);
        CHECK(e < 2e-4, "%s: gradient differs from the dense model's by %.3g", p->name, e);
        free(want);
    }
    tiny_teardown(&dn);
    tiny_teardown(&lr);
}

/* A model at stored ranks R with active ranks r < R computes what a model built at ranks r with
 * A's first r rows and B's first r columns computes, gradients included. */
static void test_active_rank_equals_smaller_model(void) {
    tiny_model big, small;
    tiny_setup_ex(&big, false, true, 0);
    if (!big.m) return;
    oz_err err = {0};
    static const int act[][3] = {{0, OZ_M_GATE, 2}, {1, OZ_M_O, 4}, {1, OZ_M_UP, 3}, {0, OZ_M_Q, 1}};
    for (size_t k = 0; k < sizeof act / sizeof act[0]; k++)
        CHECK(oz_llama_set_active_rank(big.m, act[k][0], act[k][1], act[k][2], &err) == OZ_OK, "%s", err.msg);
    /* The smaller model: same config with the active ranks as stored ranks. */
    oz_llama_config c = big.cfg;
    for (size_t k = 0; k < sizeof act / sizeof act[0]; k++) c.low_rank[act[k][0]][act[k][1]] = act[k][2];
    small = big;
    small.m = NULL;
    oz_backend_cpu_create(&small.be, 0, &err);
    oz_arena_init(&small.arena, small.be.allocator);
    oz_llama_shape shape = {.batch = 2, .seq = 7, .with_grads = true};
    CHECK(oz_llama_create(&small.m, &c, &small.be, &small.arena, shape, &err) == OZ_OK, "%s", err.msg);
    if (!small.m) return;
    const oz_param_layout *lb = oz_llama_get_layout(big.m), *ls = oz_llama_get_layout(small.m);
    for (int i = 0; i < ls->n; i++) {
        const oz_param_info *p = &ls->params[i], *q = oz_param_layout_find(lb, p->name);
        const float *src = oz_llama_param(big.m, (int)(q - lb->params));
        float *dst = oz_llama_param(small.m, i);
        for (int64_t r0 = 0; r0 < p->shape[0]; r0++)
            for (int64_t c0 = 0; c0 < (p->ndim > 1 ? p->shape[1] : 1); c0++)
                dst[r0 * (p->ndim > 1 ? p->shape[1] : 1) + c0] = src[r0 * (q->ndim > 1 ? q->shape[1] : 1) + c0];
    }
    oz_llama_batch b = {big.ids, big.targets, 2, 7, NULL};
    double s1, s2;
    long c1, c2;
    oz_llama_zero_grads(big.m);
    oz_llama_zero_grads(small.m);
    CHECK(oz_llama_forward_backward(big.m, &b, 1.0f, &s1, &c1, &err) == OZ_OK, "%s", err.msg);
    CHECK(oz_llama_forward_backward(small.m, &b, 1.0f, &s2, &c2, &err) == OZ_OK, "%s", err.msg);
    CHECK_CLOSE(s1 / c1, s2 / c2, 1e-6, 0, "loss at active rank r vs a model built at rank r");
    double worst = 0;
    for (int i = 0; i < ls->n; i++) {
        const oz_param_info *p = &ls->params[i], *q = oz_param_layout_find(lb, p->name);
        const float *gb = oz_llama_grad(big.m, (int)(q - lb->params)), *gs = oz_llama_grad(small.m, i);
        int64_t cols = p->ndim > 1 ? p->shape[1] : 1, qcols = q->ndim > 1 ? q->shape[1] : 1;
        double *want = malloc(p->numel * sizeof *want);
        for (int64_t r0 = 0; r0 < p->shape[0]; r0++)
            for (int64_t c0 = 0; c0 < cols; c0++) want[r0 * cols + c0] = gb[r0 * qcols + c0];
        double e = max_rel_diff(gs, want, p->numel);
        if (e > worst) worst = e;
        CHECK(e < 1e-5, "%s: gradient at active rank vs smaller model differs by %.3g", p->name, e);
        free(want);
    }
    tiny_teardown(&big);
    tiny_teardown(&small);
}

/* WeLore's freezing (embedding, head, dense matrices): no gradient buffer, no state, the frozen
 * tensors never change over steps with weight decay on, the trainable ones get exactly the
 * gradients of the unfrozen model (dX flows through the frozen ones), and per-layer gradients
 * (one layer-sized buffer, layers of different sizes) give the same weights as whole-model ones. */
static void test_frozen(void) {
    unsigned freeze = OZ_FREEZE_EMBED | OZ_FREEZE_HEAD | OZ_FREEZE_DENSE;
    tiny_model ref;
    tiny_setup_ex(&ref, false, true, 0);
    if (!ref.m) return;
    oz_err err = {0};
    oz_llama_batch b = {ref.ids, ref.targets, 2, 7, NULL};
    double s;
    long c;
    oz_llama_zero_grads(ref.m);
    oz_llama_forward_backward(ref.m, &b, 1.0f / 13, &s, &c, &err);
    const oz_param_layout *lr = oz_llama_get_layout(ref.m);
    float *final[2] = {NULL, NULL};
    for (int per_layer = 0; per_layer <= 1; per_layer++) {
        oz_backend be;
        oz_backend_cpu_create(&be, 0, &err);
        oz_arena arena;
        oz_arena_init(&arena, be.allocator);
        oz_llama *m = NULL;
        oz_llama_shape shape = {.batch = 2, .seq = 7, .with_grads = true, .grads.per_layer = per_layer, .freeze = freeze};
        CHECK(oz_llama_create(&m, &ref.cfg, &be, &arena, shape, &err) == OZ_OK, "%s", err.msg);
        if (!m) continue;
        const oz_param_layout *lay = oz_llama_get_layout(m);
        memcpy(oz_llama_params(m), oz_llama_params(ref.m), lay->total * sizeof(float));
        size_t trainable = 0, trainable_aligned = 0;
        for (int i = 0; i < lay->n; i++) {
            const oz_param_info *p = &lay->params[i];
            bool want_frozen = !p->is_norm && !p->factor;
            CHECK(p->frozen == want_frozen, "%s: frozen %d", p->name, p->frozen);
            if (!p->frozen) trainable += p->numel, trainable_aligned += (p->numel + 15) & ~(size_t)15;
        }
        if (!per_layer) {
            CHECK(arena.current[OZ_MEM_GRADS] == trainable_aligned * sizeof(float),
                  "gradient buffer %zu bytes for %zu trainable floats", arena.current[OZ_MEM_GRADS], trainable_aligned);
            oz_llama_zero_grads(m);
            oz_llama_forward_backward(m, &b, 1.0f / 13, &s, &c, &err);
            for (int i = 0; i < lay->n; i++) {
                const oz_param_info *p = &lay->params[i];
                const float *g = oz_llama_grad(m, i);
                CHECK((g == NULL) == p->frozen, "%s: gradient pointer %p, frozen %d", p->name, (void *)g, p->frozen);
                if (!g) continue;
                const float *gr = oz_llama_grad(ref.m, i);
                double *want = malloc(p->numel * sizeof *want);
                for (size_t k = 0; k < p->numel; k++) want[k] = gr[k];
                double e = max_rel_diff(g, want, p->numel);
                CHECK(e == 0, "%s: gradient with frozen tensors differs by %.3g", p->name, e);
                free(want);
            }
        }
        (void)lr;
        oz_optim_config oc = {.kind = OZ_OPTIM_ADAMW, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f,
                              .grads = shape.grads};
        oz_optimizer *opt = NULL;
        CHECK(oz_optimizer_create(&opt, &oc, lay, &be, &arena, &err) == OZ_OK, "%s", err.msg);
        if (!opt) continue;
        connect_model(opt, m);
        size_t state = arena.current[OZ_MEM_OPTIM];
        CHECK(state == 2 * trainable * sizeof(float), "optimizer state %zu bytes for %zu trainable", state, trainable);
        float *before = malloc(lay->total * sizeof *before);
        memcpy(before, oz_llama_params(m), lay->total * sizeof *before);
        for (int step = 0; step < 4; step++)
            CHECK(train_step(m, opt, &b, step, 1e-2f, 1.0f / 13, &s, &c, &err) == OZ_OK, "%s", err.msg);
        const float *after = oz_llama_params(m);
        for (int i = 0; i < lay->n; i++) {
            const oz_param_info *p = &lay->params[i];
            bool same = memcmp(before + p->offset, after + p->offset, p->numel * sizeof(float)) == 0;
            CHECK(same == p->frozen, "%s (frozen %d) %s", p->name, p->frozen, same ? "did not change" : "changed");
        }
        final[per_layer] = malloc(lay->total * sizeof(float));
        memcpy(final[per_layer], after, lay->total * sizeof(float));
        free(before);
        oz_optimizer_destroy(opt);
        oz_llama_destroy(m);
        oz_arena_destroy(&arena);
        be.destroy(&be);
    }
    if (final[0] && final[1])
        CHECK(memcmp(final[0], final[1], lr->total * sizeof(float)) == 0,
              "per-layer and whole-model updates differ with frozen tensors and low-rank layers");
    free(final[0]);
    free(final[1]);
    tiny_teardown(&ref);
}

/* Q-GaLore on a WeLore model: factors and frozen dense matrices are INT8 in the model; over steps
 * the frozen matrices' codes, scales and zero points never change, the factors' do, and the
 * embedding and head (frozen, fp32) stay bit for bit. */
static void test_frozen_qgalore(void) {
    unsigned freeze = OZ_FREEZE_EMBED | OZ_FREEZE_HEAD | OZ_FREEZE_DENSE;
    tiny_model ref;
    tiny_setup_ex(&ref, false, true, 0);
    if (!ref.m) return;
    oz_err err = {0};
    oz_backend be;
    oz_backend_cpu_create(&be, 0, &err);
    oz_arena arena;
    oz_arena_init(&arena, be.allocator);
    oz_llama *m = NULL;
    oz_llama_shape shape = {.batch = 2, .seq = 7, .with_grads = true, .freeze = freeze, .int8_matrices = true};
    CHECK(oz_llama_create(&m, &ref.cfg, &be, &arena, shape, &err) == OZ_OK, "%s", err.msg);
    if (!m) {
        oz_arena_destroy(&arena);
        be.destroy(&be);
        tiny_teardown(&ref);
        return;
    }
    const oz_param_layout *lay = oz_llama_get_layout(m);
    float *host = malloc(lay->total * sizeof *host);
    oz_llama_export_params(ref.m, host);
    oz_llama_import_params(m, host);
    oz_optim_config oc = {.kind = OZ_OPTIM_QGALORE, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .rank = 2,
                          .update_gap = 2, .scale = 0.25f, .proj = OZ_PROJ_STD, .galore_attn = true,
                          .galore_mlp = true, .proj_bits = 4, .lazy = true, .cos_threshold = 0.4f, .gap_growth = 2,
                          .cos_window = 5, .max_gap = 16, .int8_weights = true};
    oz_optimizer *opt = NULL;
    CHECK(oz_optimizer_create(&opt, &oc, lay, &be, &arena, &err) == OZ_OK, "%s", err.msg);
    if (opt) {
        connect_model(opt, m);
        /* Snapshot every tensor: INT8 ones as codes + scales + zero points, the rest as floats. */
        size_t *snap_off = calloc((size_t)lay->n + 1, sizeof *snap_off);
        for (int i = 0; i < lay->n; i++) {
            const oz_param_info *p = &lay->params[i];
            size_t bytes = p->numel * sizeof(float);
            uint8_t *q, *z;
            float *sc;
            if (model_int8(m, i, &q, &sc, &z)) bytes = p->numel + oz_qw_groups(p->numel) * 5;
            snap_off[i + 1] = snap_off[i] + bytes;
        }
        unsigned char *before = malloc(snap_off[lay->n]), *after = malloc(snap_off[lay->n]);
        for (int pass = 0; pass < 2; pass++) {
            unsigned char *dst = pass ? after : before;
            for (int i = 0; i < lay->n; i++) {
                const oz_param_info *p = &lay->params[i];
                uint8_t *q, *z;
                float *sc;
                unsigned char *d = dst + snap_off[i];
                if (model_int8(m, i, &q, &sc, &z)) {
                    size_t g = oz_qw_groups(p->numel);
                    memcpy(d, q, p->numel);
                    memcpy(d + p->numel, sc, g * sizeof(float));
                    memcpy(d + p->numel + g * sizeof(float), z, g);
                } else {
                    memcpy(d, oz_llama_param(m, i), p->numel * sizeof(float));
                }
            }
            if (pass) break;
            oz_llama_batch b = {ref.ids, ref.targets, 2, 7, NULL};
            double s;
            long c;
            for (int step = 0; step < 4; step++)
                CHECK(train_step(m, opt, &b, step, 1e-2f, 1.0f / 13, &s, &c, &err) == OZ_OK, "%s", err.msg);
        }
        int int8_frozen = 0, int8_factors = 0;
        for (int i = 0; i < lay->n; i++) {
            const oz_param_info *p = &lay->params[i];
            uint8_t *q, *z;
            float *sc;
            bool int8 = model_int8(m, i, &q, &sc, &z);
            if (int8 && p->frozen) int8_frozen++;
            if (int8 && p->factor) int8_factors++;
            bool same = memcmp(before + snap_off[i], after + snap_off[i], snap_off[i + 1] - snap_off[i]) == 0;
            CHECK(same == p->frozen, "%s (frozen %d, int8 %d) %s", p->name, p->frozen, int8,
                  same ? "did not change" : "changed");
        }
        CHECK(int8_frozen > 0 && int8_factors > 0, "INT8 frozen matrices %d, INT8 factors %d", int8_frozen, int8_factors);
        free(before);
        free(after);
        free(snap_off);
        oz_optimizer_destroy(opt);
    }
    free(host);
    oz_llama_destroy(m);
    oz_arena_destroy(&arena);
    be.destroy(&be);
    tiny_teardown(&ref);
}

/* The planner equals the arena byte for byte for low-rank models, with and without WeLore's
 * freezing, recompute, mini-sequences and per-layer gradients; losses and gradients match the plain
 * run. */
static void test_low_rank_plan(void) {
    oz_llama_config c = {61, 16, 40, 2, 4, 2, 4, 32, 1e-5f, 10000.0f, false, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0, {{0}}};
    c.low_rank[0][OZ_M_Q] = 5;
    c.low_rank[0][OZ_M_UP] = 9;
    c.low_rank[0][OZ_M_DOWN] = 3;
    c.low_rank[1][OZ_M_V] = 2;
    c.low_rank[1][OZ_M_GATE] = 12;
    c.low_rank[1][OZ_M_DOWN] = 7;
    enum { B = 2, T = 9, N = B * T };
    int32_t ids[N], targets[N];
    random_tokens(ids, targets, N, c.vocab_size, 12);
    oz_param_layout lay;
    oz_err err = {0};
    CHECK(oz_param_layout_build(&c, &lay, &err) == OZ_OK, "%s", err.msg);
    float *init = scaled_init(&c, &lay, 4), *ref_grad = malloc(lay.total * sizeof *ref_grad);
    double ref_loss = 0;
    bool have_ref = false;
    for (int freeze = 0; freeze <= 1; freeze++)
        for (int recompute = 0; recompute <= 1; recompute++)
            for (int chunks = 0; chunks <= 3; chunks += 3)
                for (int per_layer = 0; per_layer <= 1; per_layer++) {
                    oz_backend be;
                    oz_backend_cpu_create(&be, 0, &err);
                    oz_arena arena;
                    oz_arena_init(&arena, be.allocator);
                    oz_llama_shape shape = {.batch = B, .seq = T, .with_grads = true, .recompute = recompute,
                                            .mlp_chunks = chunks, .head_chunks = chunks, .grads.per_layer = per_layer,
                                            .freeze = freeze ? OZ_FREEZE_EMBED | OZ_FREEZE_HEAD | OZ_FREEZE_DENSE : 0};
                    oz_llama *m = NULL;
                    CHECK(oz_llama_create(&m, &c, &be, &arena, shape, &err) == OZ_OK, "%s", err.msg);
                    if (!m) continue;
                    char what[96];
                    snprintf(what, sizeof what, "low-rank, freeze %d, recompute %d, chunks %d, per-layer %d", freeze,
                             recompute, chunks, per_layer);
                    check_plan(&c, shape, &arena, what, NULL);
                    memcpy(oz_llama_params(m), init, lay.total * sizeof *init);
                    oz_llama_batch b = {ids, targets, B, T, NULL};
                    double s;
                    long n;
                    oz_llama_zero_grads(m);
                    CHECK(oz_llama_forward_backward(m, &b, 1.0f / N, &s, &n, &err) == OZ_OK, "%s", err.msg);
                    if (!have_ref) {
                        have_ref = true;
                        ref_loss = s / n;
                        memcpy(ref_grad, oz_llama_grads(m), lay.total * sizeof(float));
                    } else {
                        CHECK_CLOSE(s / n, ref_loss, 1e-6, 0, "low-rank loss with recompute/mini-sequences/freezing");
                        if (!per_layer) {
                            const oz_param_layout *ml = oz_llama_get_layout(m);
                            for (int i = 0; i < ml->n; i++) {
                                const float *g = oz_llama_grad(m, i);
                                if (!g) continue;
                                const oz_param_info *p = &ml->params[i];
                                double *want = malloc(p->numel * sizeof *want);
                                for (size_t k = 0; k < p->numel; k++) want[k] = ref_grad[p->offset + k];
                                double e = max_rel_diff(g, want, p->numel);
                                CHECK(e < 1e-5, "%s differs by %.3g (freeze %d, recompute %d, chunks %d)", p->name, e,
                                      freeze, recompute, chunks);
                                free(want);
                            }
                        }
                    }
                    oz_llama_destroy(m);
                    CHECK(arena.current_total == 0, "destroy left %zu bytes", arena.current_total);
                    oz_arena_destroy(&arena);
                    be.destroy(&be);
                }
    free(init);
    free(ref_grad);
    oz_param_layout_free(&lay);
}

/* Per-tensor events (oz_grad_mode.immediate). One forward_backward per case, against the
 * whole-model gradient buffer of the same model: every trainable tensor is emitted exactly once, an
 * untied head and the final norm before any layer tensor and the embedding last (tied: embedding
 * and final norm last), layer tensors as scratch; each emitted gradient equals the whole-model one
 * bit for bit even though the sink poisons that tensor's weights with NaN right away (so nothing
 * after its event reads them: the premise of updating inside the sink); the planner equals the
 * arena. Then immediate updates give bit for bit the weights of per-layer updates applied at the
 * end of the step. Dense and INT8 matrices, untied, tied, low-rank and WeLore-frozen models,
 * recompute, and 0/1/2/3 MLP chunks (3 uneven). */
typedef struct {
    oz_llama *m;
    float *grads; /* layout->grad_total floats, at grad_offset */
    int *order, n, max;
    int bad;      /* an event not a whole tensor, or a layer tensor not scratch */
} tensor_log;

static void poison_param(oz_llama *m, int i) {
    const oz_param_info *p = &oz_llama_get_layout(m)->params[i];
    uint8_t *q, *z;
    float *sc;
    if (model_int8(m, i, &q, &sc, &z)) {
        memset(sc, 0xff, oz_qw_groups(p->numel) * sizeof *sc); /* NaN scales: any dequantized value is NaN */
        memset(q, 0xff, p->numel);
    } else {
        memset(oz_llama_param(m, i), 0xff, p->numel * sizeof(float));
    }
}

static void log_tensor(void *user, const oz_grad_event *ev) {
    tensor_log *t = user;
    const oz_param_info *p = &oz_llama_get_layout(t->m)->params[ev->index];
    if (t->n < t->max) t->order[t->n] = ev->index;
    t->n++;
    t->bad += ev->form != OZ_GRAD_TENSOR || ev->scratch != (p->layer >= 0) || ev->partial;
    memcpy(t->grads + p->grad_offset, ev->grad, p->numel * sizeof(float));
    poison_param(t->m, ev->index);
}

/* GaLore (8-bit; Q-GaLore with int8) taking model m's gradients as `grads` says. */
static oz_optimizer *galore_optimizer(oz_llama *m, oz_backend *be, oz_arena *arena, bool int8, oz_grad_mode grads) {
    oz_optim_config oc = {.kind = int8 ? OZ_OPTIM_QGALORE : OZ_OPTIM_GALORE8BIT, .beta1 = 0.9f, .beta2 = 0.95f,
                          .eps = 1e-8f, .weight_decay = 0.1f, .rank = 2, .update_gap = 2, .scale = 0.25f,
                          .proj = OZ_PROJ_STD, .galore_attn = true, .galore_mlp = true, .proj_bits = int8 ? 4 : 32,
                          .grads = grads, .int8_weights = int8};
    oz_optimizer *opt = NULL;
    oz_err err = {0};
    CHECK(oz_optimizer_create(&opt, &oc, oz_llama_get_layout(m), be, arena, &err) == OZ_OK, "%s", err.msg);
    if (opt) connect_model(opt, m);
    return opt;
}

typedef struct {
    oz_backend be;
    oz_arena arena;
    oz_llama *m;
} model_fixture;

static oz_llama *fixture_model(model_fixture *f, const oz_llama_config *c, oz_llama_shape shape, const float *init) {
    oz_err err = {0};
    oz_backend_cpu_create(&f->be, 0, &err);
    oz_arena_init(&f->arena, f->be.allocator);
    f->m = NULL;
    CHECK(oz_llama_create(&f->m, c, &f->be, &f->arena, shape, &err) == OZ_OK, "%s", err.msg);
    if (f->m) oz_llama_import_params(f->m, init);
    return f->m;
}

static void fixture_drop(model_fixture *f) {
    oz_llama_destroy(f->m);
    oz_arena_destroy(&f->arena);
    f->be.destroy(&f->be);
}

/* INT8 matrices dequantized in blocks of rows inside their GEMMs: many small blocks (every matrix
 * split, down_proj's 96 columns giving 8-row blocks) give the one-block run's loss and gradients to
 * fp32 rounding (dX sums the blocks), with and without recompute and mini-sequences; plan = arena. */
static void test_int8_row_blocks(void) {
    oz_llama_config c = {61, 64, 96, 2, 4, 2, 16, 32, 1e-5f, 10000.0f, false, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0, {{0}}};
    enum { B = 2, T = 9, N = B * T };
    int32_t ids[N], targets[N];
    random_tokens(ids, targets, N, c.vocab_size, 31);
    oz_param_layout lay;
    oz_err err = {0};
    oz_param_layout_build(&c, &lay, &err);
    float *init = scaled_init(&c, &lay, 6), *ref = malloc(lay.grad_total * sizeof *ref);
    oz_llama_batch b = {ids, targets, B, T, NULL};
    for (int mode = 0; mode < 2; mode++) {
        double loss[2];
        size_t scratch[2];
        for (int tiny = 0; tiny <= 1; tiny++) {
            oz_llama_shape shape = {.batch = B, .seq = T, .with_grads = true, .int8_matrices = true,
                                    .recompute = mode == 1, .mlp_chunks = mode ? 3 : 0, .head_chunks = mode ? 3 : 0,
                                    .int8_block_floats = tiny ? 1 : 0};
            model_fixture f;
            if (!fixture_model(&f, &c, shape, init)) {
                fixture_drop(&f);
                continue;
            }
            check_plan(&c, shape, &f.arena, tiny ? "INT8 blocks of one row unit" : "INT8 blocks", NULL);
            scratch[tiny] = f.arena.current[OZ_MEM_SCRATCH];
            double sum;
            long n;
            oz_llama_zero_grads(f.m);
            CHECK(oz_llama_forward_backward(f.m, &b, 1.0f / N, &sum, &n, &err) == OZ_OK, "%s", err.msg);
            loss[tiny] = sum / n;
            const float *g = oz_llama_grads(f.m);
            if (!tiny) {
                memcpy(ref, g, lay.grad_total * sizeof *ref);
            } else {
                CHECK_CLOSE(loss[1], loss[0], 1e-6, 0, "loss with small INT8 row blocks");
                for (int i = 0; i < lay.n; i++) {
                    const oz_param_info *p = &lay.params[i];
                    double diff = 0, mx = 0;
                    for (size_t j = 0; j < p->numel; j++) {
                        diff = fmax(diff, fabs((double)g[p->grad_offset + j] - ref[p->grad_offset + j]));
                        mx = fmax(mx, fabs((double)ref[p->grad_offset + j]));
                    }
                    CHECK(diff <= 1e-5 * mx, "%s: gradient with small INT8 row blocks differs by %.3g (of %.3g)",
                          p->name, diff, mx);
                }
                CHECK(scratch[1] < scratch[0], "small blocks should shrink the scratch (%zu vs %zu)", scratch[1],
                      scratch[0]);
            }
            fixture_drop(&f);
        }
    }
    free(init);
    free(ref);
    oz_param_layout_free(&lay);
}

/* bf16 embedding/head (Q-GaLore's format beside INT8 matrices): plan = arena, the two tensors take
 * half the bytes; weights written round to nearest and read back exactly; loss, forward-only loss
 * and the embedding/head row gradients equal those of an fp32 model holding the same (rounded)
 * values, with and without mini-sequences (frozen: the final norm's gradient, through the head's
 * dX in blocks); rows loaded for an update are the stored values, and
 * stored back stochastically they land on a bf16 neighbour; refused without INT8 matrices and
 * vocabulary blocks. */
static void test_bf16_vocab(void) {
    oz_llama_config c = {61, 16, 40, 2, 4, 2, 4, 32, 1e-5f, 10000.0f, false, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0, {{0}}};
    enum { B = 2, T = 9, N = B * T };
    int32_t ids[N], targets[N];
    random_tokens(ids, targets, N, c.vocab_size, 41);
    targets[2] = -1;
    oz_param_layout lay;
    oz_err err = {0};
    oz_param_layout_build(&c, &lay, &err);
    float *init = scaled_init(&c, &lay, 9), *rounded = malloc(lay.total * sizeof *rounded);
    memcpy(rounded, init, lay.total * sizeof *init);
    int head = lay.n - 1;
    const size_t Vd = (size_t)c.vocab_size * c.hidden_size;
    for (int t = 0; t < 2; t++) {
        const oz_param_info *p = &lay.params[t ? head : 0];
        for (size_t j = 0; j < p->numel; j++) rounded[p->offset + j] = oz_bf16_to_f32(oz_f32_to_bf16(init[p->offset + j]));
    }
    oz_llama_batch b = {ids, targets, B, T, NULL};
    for (int variant = 0; variant < 3; variant++) { /* no chunks; 3 chunks; 3 chunks, embedding/head frozen */
        int chunks = variant ? 3 : 0;
        bool frozen = variant == 2;
        double loss[2], fwd[2];
        size_t weights[2], scratch[2];
        float *rg[2][2], norm_grad[2][16];
        for (int bf16 = 0; bf16 <= 1; bf16++) {
            oz_llama_shape shape = {.batch = B, .seq = T, .with_grads = true, .grads.per_layer = true,
                                    .grads.vocab_blocks = true, .int8_matrices = true, .bf16_vocab = bf16,
                                    .mlp_chunks = chunks, .head_chunks = chunks,
                                    .freeze = frozen ? OZ_FREEZE_EMBED | OZ_FREEZE_HEAD : 0u};
            model_fixture f;
            if (!fixture_model(&f, &c, shape, bf16 ? init : rounded)) {
                fixture_drop(&f);
                continue;
            }
            check_plan(&c, shape, &f.arena, bf16 ? "bf16 embedding/head" : "fp32 embedding/head", NULL);
            weights[bf16] = f.arena.current[OZ_MEM_WEIGHTS];
            scratch[bf16] = f.arena.current[OZ_MEM_SCRATCH];
            CHECK((oz_llama_param_bf16(f.m, 0) != NULL) == bf16 && (oz_llama_param(f.m, 0) == NULL) == bf16 &&
                      oz_llama_param(f.m, head - 1) != NULL,
                  "bf16 vocab %d: tensor pointers (embedding bf16 %p)", bf16, (void *)oz_llama_param_bf16(f.m, 0));
            float *back = malloc(lay.params[head].numel * sizeof *back);
            oz_llama_read_param(f.m, head, back);
            CHECK(!memcmp(back, rounded + lay.params[head].offset, lay.params[head].numel * sizeof *back),
                  "bf16 vocab %d: the head does not read back as its rounded values", bf16);
            free(back);
            rows_log rl = {{calloc(Vd, 4), calloc(Vd, 4)}, {0, 0}, 0, 0, head, c.hidden_size, &f.be};
            oz_llama_set_grad_sink(f.m, (oz_grad_sink){take_rows_only, &rl});
            double s;
            long n;
            oz_llama_zero_grads(f.m);
            CHECK(oz_llama_forward_backward(f.m, &b, 1.0f / 17, &s, &n, &err) == OZ_OK, "%s", err.msg);
            loss[bf16] = s / n;
            memcpy(norm_grad[bf16], oz_llama_grad(f.m, head - 1), sizeof norm_grad[bf16]);
            CHECK(oz_llama_forward(f.m, &b, &s, &n, &err) == OZ_OK, "%s", err.msg);
            fwd[bf16] = s / n;
            CHECK(rl.bad == 0 && rl.calls == (frozen ? 0 : 8), "bf16 vocab %d: %d row blocks, %d out of order",
                  bf16, rl.calls, rl.bad);
            rg[bf16][0] = rl.grad[0], rg[bf16][1] = rl.grad[1];
            if (bf16 && !frozen) {
                /* rows 16..31 of the head: loaded as stored; nudged and stored back stochastically */
                const int d = c.hidden_size;
                oz_weights_view v = oz_llama_weights(f.m);
                float *w = v.rows_load(v.owner, head, 16, 16), orig[16 * 16], want[16 * 16];
                CHECK(!memcmp(w, rounded + lay.params[head].offset + 16 * d, sizeof orig), "rows_load: not the stored rows");
                memcpy(orig, w, sizeof orig);
                for (int j = 0; j < 16 * d; j++) w[j] = want[j] = orig[j] * 1.001f + 1e-4f;
                v.rows_store(v.owner, head, 16, 16, 77);
                uint16_t *h16 = oz_llama_param_bf16(f.m, head) + 16 * d;
                int off = 0;
                for (int j = 0; j < 16 * d; j++) {
                    uint32_t bits;
                    memcpy(&bits, &want[j], 4);
                    off += h16[j] != oz_bf16_sr(want[j], 77, (uint64_t)(16 * d + j)) ||
                           (h16[j] != (uint16_t)(bits >> 16) && h16[j] != (uint16_t)((bits >> 16) + 1));
                }
                CHECK(off == 0, "rows_store: %d values are not the stream's stochastic rounding", off);
            }
            fixture_drop(&f);
        }
        CHECK(weights[0] - weights[1] == 2 * Vd * 2, "bf16 vocab: %zu weight bytes vs %zu in fp32", weights[1], weights[0]);
        double nd = 0, nm = 0;
        for (int j = 0; j < c.hidden_size; j++) {
            nd = fmax(nd, fabs((double)norm_grad[1][j] - norm_grad[0][j]));
            nm = fmax(nm, fabs((double)norm_grad[0][j]));
        }
        CHECK(nm > 0 && nd <= 1e-5 * nm, "final norm gradient with a bf16 head differs by %.3g (of %.3g), variant %d",
              nd, nm, variant);
        CHECK(scratch[1] - scratch[0] == (size_t)oz_llama_vocab_block_rows(&c) * c.hidden_size * 4,
              "bf16 vocab: scratch %zu vs %zu (one fp32 vocabulary block more)", scratch[1], scratch[0]);
        CHECK_CLOSE(loss[1], loss[0], 1e-6, 0, "loss with a bf16 embedding/head");
        CHECK_CLOSE(fwd[1], fwd[0], 1e-6, 0, "forward-only loss with a bf16 embedding/head");
        for (int t = 0; t < 2; t++) {
            double diff = 0, mx = 0;
            for (size_t j = 0; j < Vd; j++) {
                diff = fmax(diff, fabs((double)rg[1][t][j] - rg[0][t][j]));
                mx = fmax(mx, fabs((double)rg[0][t][j]));
            }
            CHECK((frozen ? mx == 0 : mx > 0) && diff <= 1e-5 * mx,
                  "%s row gradients with bf16 storage differ by %.3g (of %.3g)", t ? "head" : "embedding", diff, mx);
            free(rg[0][t]), free(rg[1][t]);
        }
    }
    oz_llama_plan plan;
    oz_llama_shape bad = {.batch = B, .seq = T, .with_grads = true, .grads.per_layer = true, .bf16_vocab = true};
    CHECK(oz_llama_plan_memory(&c, bad, &plan, &err) == OZ_ERR_INPUT && strstr(err.msg, "bf16"),
          "bf16 embedding/head without INT8 matrices and blocks: %s", err.msg);
    free(init);
    free(rounded);
    oz_param_layout_free(&lay);
}

static void test_per_tensor_grads(void) {
    enum { B = 2, T = 9, N = B * T, STEPS = 3 };
    oz_rng rng;
    oz_rng_seed(&rng, 13);
    int32_t ids[N], targets[N];
    for (int i = 0; i < N; i++) {
        ids[i] = (int32_t)oz_rng_below(&rng, 61);
        targets[i] = (int32_t)oz_rng_below(&rng, 61);
    }
    targets[4] = -1;
    oz_llama_batch b = {ids, targets, B, T, NULL};
    for (int variant = 0; variant < 4; variant++) { /* untied, tied, low-rank, low-rank + WeLore freeze */
        oz_llama_config c = {61, 16, 40, 2, 4, 2, 4, 32, 1e-5f, 10000.0f, variant == 1, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0, {{0}}};
        if (variant >= 2) {
            c.low_rank[0][OZ_M_Q] = 5;
            c.low_rank[0][OZ_M_UP] = 9;
            c.low_rank[1][OZ_M_GATE] = 12;
            c.low_rank[1][OZ_M_DOWN] = 7;
        }
        unsigned freeze = variant == 3 ? OZ_FREEZE_EMBED | OZ_FREEZE_HEAD | OZ_FREEZE_DENSE : 0;
        oz_param_layout lay;
        oz_err err = {0};
        CHECK(oz_param_layout_build(&c, &lay, &err) == OZ_OK, "%s", err.msg);
        oz_param_layout_freeze(&lay, freeze);
        float *init = malloc(lay.total * sizeof *init);
        float *want = calloc(lay.grad_total, sizeof *want), *got = calloc(lay.grad_total, sizeof *got);
        float *w1 = malloc(lay.total * sizeof *w1), *w2 = malloc(lay.total * sizeof *w2);
        int *order = malloc((size_t)lay.n * sizeof *order);
        oz_llama_init_params(&c, &lay, init, 5);
        for (size_t i = 0; i < lay.total; i++) init[i] *= 10.0f; /* gradients far from zero */
        for (int int8 = 0; int8 <= 1; int8++)
            for (int recompute = 0; recompute <= 1; recompute++)
                for (int chunks = 0; chunks <= 3; chunks++) {
                    oz_llama_shape whole = {.batch = B, .seq = T, .with_grads = true, .recompute = recompute,
                                            .mlp_chunks = chunks, .head_chunks = chunks, .int8_matrices = int8,
                                            .freeze = freeze};
                    oz_llama_shape per = whole;
                    per.grads.per_layer = per.grads.immediate = true;
                    char what[96];
                    snprintf(what, sizeof what, "variant %d, int8 %d, recompute %d, chunks %d", variant, int8, recompute,
                             chunks);
                    /* The reference: the whole-model buffer. */
                    model_fixture fw, fp;
                    double s1 = 0, s2 = 0;
                    long n1 = 0, n2 = 0;
                    if (fixture_model(&fw, &c, whole, init)) {
                        oz_llama_zero_grads(fw.m);
                        CHECK(oz_llama_forward_backward(fw.m, &b, 1.0f / N, &s1, &n1, &err) == OZ_OK, "%s", err.msg);
                        memcpy(want, oz_llama_grads(fw.m), lay.grad_total * sizeof(float));
                    }
                    fixture_drop(&fw);
                    if (!fixture_model(&fp, &c, per, init)) {
                        fixture_drop(&fp);
                        continue;
                    }
                    check_plan(&c, per, &fp.arena, what, NULL);
                    tensor_log log = {fp.m, got, order, 0, lay.n, 0};
                    memset(got, 0, lay.grad_total * sizeof *got);
                    oz_llama_set_grad_sink(fp.m, (oz_grad_sink){log_tensor, &log});
                    CHECK(oz_llama_forward_backward(fp.m, &b, 1.0f / N, &s2, &n2, &err) == OZ_OK, "%s", err.msg);
                    CHECK(s1 == s2 && n1 == n2, "per-tensor loss %.9g vs %.9g (%s)", s2, s1, what);
                    int trainable = 0, first_layer_call = lay.n, seen_twice = 0;
                    int *calls = calloc((size_t)lay.n, sizeof *calls);
                    for (int k = 0; k < log.n && k < lay.n; k++) {
                        if (calls[order[k]]++) seen_twice++;
                        if (lay.params[order[k]].layer >= 0 && k < first_layer_call) first_layer_call = k;
                    }
                    for (int i = 0; i < lay.n; i++) {
                        const oz_param_info *p = &lay.params[i];
                        trainable += !p->frozen;
                        CHECK(calls[i] == !p->frozen, "%s handed off %d times (frozen %d; %s)", p->name, calls[i],
                              p->frozen, what);
                        if (p->frozen) continue;
                        CHECK(memcmp(got + p->grad_offset, want + p->grad_offset, p->numel * sizeof(float)) == 0,
                              "%s: handed-off gradient differs from the whole-model one (%s)", p->name, what);
                    }
                    CHECK(log.n == trainable && !seen_twice && log.bad == 0,
                          "%d events for %d trainable tensors, %d not whole scratch layer tensors (%s)", log.n,
                          trainable, log.bad, what);
                    int fn = lay.layer_first[lay.n_layers];
                    int outer_first = (int)!lay.params[fn].frozen + (int)(!c.tie_word_embeddings && !lay.params[lay.n - 1].frozen);
                    if (!c.tie_word_embeddings)
                        CHECK(first_layer_call == outer_first && (lay.params[0].frozen || order[log.n - 1] == 0),
                              "untied: head/final norm not first or embedding not last (%s)", what);
                    else
                        CHECK(order[log.n - 2] == 0 && order[log.n - 1] == fn,
                              "tied: embedding and final norm not handed off last (%s)", what);
                    free(calls);
                    fixture_drop(&fp);
                    /* Immediate updates against per-layer ones applied at the end, bit for bit. */
                    for (int mode = 0; mode <= 1; mode++) {
                        oz_llama_shape shape = mode ? per : whole;
                        shape.grads.per_layer = true;
                        model_fixture f;
                        if (!fixture_model(&f, &c, shape, init)) {
                            fixture_drop(&f);
                            continue;
                        }
                        oz_optimizer *opt = galore_optimizer(f.m, &f.be, &f.arena, int8, shape.grads);
                        for (int step = 0; opt && step < STEPS; step++) {
                            double s;
                            long n;
                            CHECK(train_step(f.m, opt, &b, step, 1e-2f, 1.0f / N, &s, &n, &err) == OZ_OK, "%s", err.msg);
                        }
                        oz_llama_export_params(f.m, mode ? w2 : w1);
                        oz_optimizer_destroy(opt);
                        fixture_drop(&f);
                    }
                    CHECK(memcmp(w1, w2, lay.total * sizeof(float)) == 0,
                          "immediate updates differ from per-layer updates applied at the end (%s)", what);
                    CHECK(memcmp(w1, init, lay.total * sizeof(float)) != 0, "nothing trained (%s)", what);
                }
        free(init);
        free(want);
        free(got);
        free(w1);
        free(w2);
        free(order);
        oz_param_layout_free(&lay);
    }
}

/* Factored gradients: for every factored matrix the OZ_GRAD_FACTORS event's dy^T x is the gradient
 * the whole-model buffer gets (to fp32 rounding: a different summation), it comes before that
 * tensor's OZ_GRAD_TENSOR event (grad NULL) and before anything could overwrite x, oz_llama_grad is NULL for it, the rest of the
 * gradients are handed off unchanged, and the plan equals the arena (with fewer gradient bytes).
 * Untied, tied and low-rank configs (low-rank matrices stay materialized), INT8 or fp32 matrices,
 * with and without recompute, MLP chunks 0, 1 (all matrices factored) and 2 (attention only). */
typedef struct {
    oz_llama *m;
    float *grads;    /* grad_offset layout: what each tensor's gradient was */
    int *factored;   /* per index: OZ_GRAD_FACTORS events */
    int *handed;     /* per index: OZ_GRAD_TENSOR events */
    int bad;         /* factors after the tensor event, or a gradient buffer for a factored tensor */
} factor_log;

static void log_factor(factor_log *f, const oz_grad_event *ev) {
    int index = ev->index;
    const oz_param_info *p = &oz_llama_get_layout(f->m)->params[index];
    f->bad += f->handed[index] != 0 || oz_llama_grad(f->m, index) != NULL || !oz_llama_grad_factored(f->m, index);
    f->factored[index]++;
    int out = (int)p->shape[0], in = (int)p->shape[1];
    for (int i = 0; i < out; i++)
        for (int j = 0; j < in; j++) {
            double v = 0;
            for (int t = 0; t < ev->rows; t++) v += (double)ev->dy[(size_t)t * ev->ldy + i] * ev->x[(size_t)t * ev->ldx + j];
            f->grads[p->grad_offset + (size_t)i * in + j] = (float)v;
        }
}

static void log_handed(factor_log *f, const oz_grad_event *ev) {
    const oz_param_info *p = &oz_llama_get_layout(f->m)->params[ev->index];
    f->handed[ev->index]++;
    f->bad += ev->grad != oz_llama_grad(f->m, ev->index);
    if (ev->grad) memcpy(f->grads + p->grad_offset, ev->grad, p->numel * sizeof(float));
    else f->bad += f->factored[ev->index] != 1;
}

static void take_factored(void *user, const oz_grad_event *ev) {
    if (ev->form == OZ_GRAD_FACTORS) log_factor(user, ev);
    else if (ev->form == OZ_GRAD_TENSOR) log_handed(user, ev);
    else ((factor_log *)user)->bad++;
}

static void test_factored_grads(void) {
    enum { B = 2, T = 9, N = B * T };
    oz_rng rng;
    oz_rng_seed(&rng, 17);
    int32_t ids[N], targets[N];
    for (int i = 0; i < N; i++) {
        ids[i] = (int32_t)oz_rng_below(&rng, 61);
        targets[i] = (int32_t)oz_rng_below(&rng, 61);
    }
    oz_llama_batch b = {ids, targets, B, T, NULL};
    const unsigned all = (1u << OZ_LLAMA_MATRICES) - 1;
    const unsigned attn = (1u << OZ_M_Q) | (1u << OZ_M_K) | (1u << OZ_M_V) | (1u << OZ_M_O);
    for (int variant = 0; variant < 3; variant++) { /* untied, tied, low-rank */
        oz_llama_config c = {61, 16, 40, 2, 4, 2, 4, 32, 1e-5f, 10000.0f, variant == 1, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0, {{0}}};
        if (variant == 2) c.low_rank[0][OZ_M_Q] = 5, c.low_rank[1][OZ_M_DOWN] = 7;
        oz_param_layout lay;
        oz_err err = {0};
        CHECK(oz_param_layout_build(&c, &lay, &err) == OZ_OK, "%s", err.msg);
        float *init = malloc(lay.total * sizeof *init);
        float *want = calloc(lay.grad_total, sizeof *want), *got = calloc(lay.grad_total, sizeof *got);
        int *fcalls = calloc((size_t)lay.n, sizeof *fcalls), *hcalls = calloc((size_t)lay.n, sizeof *hcalls);
        oz_llama_init_params(&c, &lay, init, 9);
        for (size_t i = 0; i < lay.total; i++) init[i] *= 10.0f;
        for (int int8 = 0; int8 <= 1; int8++)
            for (int recompute = 0; recompute <= 1; recompute++)
                for (int chunks = 0; chunks <= 2; chunks++) {
                    oz_llama_shape whole = {.batch = B, .seq = T, .with_grads = true, .recompute = recompute,
                                            .mlp_chunks = chunks, .head_chunks = chunks, .int8_matrices = int8};
                    oz_llama_shape per = whole, fac;
                    per.grads.per_layer = per.grads.immediate = true;
                    fac = per;
                    fac.grads.factored = chunks > 1 ? attn : all;
                    char what[96];
                    snprintf(what, sizeof what, "variant %d, int8 %d, recompute %d, chunks %d", variant, int8, recompute,
                             chunks);
                    model_fixture fw, fp;
                    double s1 = 0, s2 = 0;
                    long n1 = 0, n2 = 0;
                    if (fixture_model(&fw, &c, whole, init)) {
                        oz_llama_zero_grads(fw.m);
                        CHECK(oz_llama_forward_backward(fw.m, &b, 1.0f / N, &s1, &n1, &err) == OZ_OK, "%s", err.msg);
                        memcpy(want, oz_llama_grads(fw.m), lay.grad_total * sizeof(float));
                    }
                    fixture_drop(&fw);
                    oz_llama_plan pp, pf;
                    CHECK(oz_llama_plan_memory(&c, per, &pp, &err) == OZ_OK, "%s", err.msg);
                    if (!fixture_model(&fp, &c, fac, init)) {
                        fixture_drop(&fp);
                        continue;
                    }
                    check_plan(&c, fac, &fp.arena, what, &pf);
                    CHECK(chunks > 1 ? pf.bytes[OZ_MEM_GRADS] <= pp.bytes[OZ_MEM_GRADS]
                                     : pf.bytes[OZ_MEM_GRADS] < pp.bytes[OZ_MEM_GRADS],
                          "factored gradients: %zu gradient bytes vs %zu (%s)", pf.bytes[OZ_MEM_GRADS],
                          pp.bytes[OZ_MEM_GRADS], what);
                    memset(fcalls, 0, (size_t)lay.n * sizeof *fcalls);
                    memset(hcalls, 0, (size_t)lay.n * sizeof *hcalls);
                    memset(got, 0, lay.grad_total * sizeof *got);
                    factor_log fl = {fp.m, got, fcalls, hcalls, 0};
                    oz_llama_set_grad_sink(fp.m, (oz_grad_sink){take_factored, &fl});
                    CHECK(oz_llama_forward_backward(fp.m, &b, 1.0f / N, &s2, &n2, &err) == OZ_OK, "%s", err.msg);
                    CHECK(s1 == s2 && n1 == n2, "factored loss %.9g vs %.9g (%s)", s2, s1, what);
                    CHECK(fl.bad == 0, "%d factor events out of order or with a gradient buffer (%s)", fl.bad, what);
                    int nf = 0;
                    for (int i = 0; i < lay.n; i++) {
                        const oz_param_info *p = &lay.params[i];
                        bool f = oz_param_factored(p, fac.grads.factored);
                        nf += f;
                        CHECK(hcalls[i] == 1 && fcalls[i] == (int)f, "%s: %d tensor events, %d factor events (%s)", p->name,
                              hcalls[i], fcalls[i], what);
                        double d = 0, mx = 0;
                        for (size_t e = 0; e < p->numel; e++) {
                            d = fmax(d, fabs((double)got[p->grad_offset + e] - want[p->grad_offset + e]));
                            mx = fmax(mx, fabs((double)want[p->grad_offset + e]));
                        }
                        CHECK(f ? d <= 1e-5 * mx && mx > 0 : d == 0, "%s: gradient differs by %.3g of %.3g (factored %d; %s)",
                              p->name, d, mx, (int)f, what);
                    }
                    CHECK(nf >= (chunks > 1 ? 4 : 7), "only %d factored tensors (%s)", nf, what);
                    fixture_drop(&fp);
                }
        oz_llama_shape bad = {.batch = B, .seq = T, .with_grads = true, .grads.per_layer = true, .grads.immediate = true,
                              .mlp_chunks = 2, .head_chunks = 2, .grads.factored = all};
        oz_llama_plan plan;
        CHECK(oz_llama_plan_memory(&c, bad, &plan, &err) != OZ_OK, "factored MLP gradients over 2 chunks were accepted");
        free(init);
        free(want);
        free(got);
        free(fcalls);
        free(hcalls);
        oz_param_layout_free(&lay);
    }
}

/* A low-rank model's structure travels in config.json (its ranks, a model_type transformers
 * refuses) and the model loads back from its directory with the same loss. */
static void test_low_rank_checkpoint(void) {
    tiny_model tm;
    tiny_setup_ex(&tm, false, true, 0);
    if (!tm.m) return;
    char dir[] = "/tmp/ounce-lowrank-XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK(0, "mkdtemp failed");
        return;
    }
    oz_err err = {0};
    const oz_param_layout *lay = oz_llama_get_layout(tm.m);
    CHECK(oz_llama_save(dir, &tm.cfg, "byte", lay, oz_llama_params(tm.m), &err) == OZ_OK, "%s", err.msg);
    char path[128];
    snprintf(path, sizeof path, "%s/config.json", dir);
    oz_llama_config back;
    CHECK(oz_config_read(path, &back, NULL, &err) == OZ_OK, "%s", err.msg);
    CHECK(memcmp(back.low_rank, tm.cfg.low_rank, sizeof back.low_rank) == 0, "ranks did not survive config.json");
    char *text;
    size_t n;
    CHECK(oz_read_file(path, &text, &n, &err) == OZ_OK, "%s", err.msg);
    if (text) {
        CHECK(strstr(text, "\"ounce_lowrank_llama\"") && strstr(text, "\"model.layers.1.mlp.up_proj\":\t7"),
              "config.json lacks the low-rank model type or map: %s", text);
        free(text);
    }
    oz_llama *m2 = NULL;
    oz_llama_shape shape = {.batch = 2, .seq = 7};
    CHECK(oz_llama_load(&m2, dir, &tm.be, &tm.arena, shape, NULL, &err) == OZ_OK, "%s", err.msg);
    if (m2) {
        oz_llama_batch b = {tm.ids, tm.targets, 2, 7, NULL};
        double s1, s2;
        long c1, c2;
        oz_llama_forward(tm.m, &b, &s1, &c1, &err);
        oz_llama_forward(m2, &b, &s2, &c2, &err);
        CHECK(s1 == s2, "reloaded low-rank model's loss %.9g vs %.9g", s2, s1);
        oz_llama_destroy(m2);
    }
    /* A rank map on a plain llama config is refused, as is a rank above min(out, in). */
    const char *plain = "{\"model_type\":\"llama\",\"vocab_size\":29,\"hidden_size\":16,\"intermediate_size\":24,"
                        "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"ounce_low_rank\":{}}";
    oz_atomic_write(path, plain, strlen(plain), &err);
    CHECK(oz_config_read(path, &back, NULL, &err) == OZ_ERR_INPUT && strstr(err.msg, "needs model_type"),
          "rank map accepted on model_type llama: %s", err.msg);
    const char *big = "{\"model_type\":\"ounce_lowrank_llama\",\"vocab_size\":29,\"hidden_size\":16,\"intermediate_size\":24,"
                      "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"ounce_low_rank\":{\"model.layers.0.mlp.up_proj\":17}}";
    oz_err_clear(&err);
    oz_atomic_write(path, big, strlen(big), &err);
    CHECK(oz_config_read(path, &back, NULL, &err) == OZ_ERR_INPUT && strstr(err.msg, "between 1 and"),
          "rank 17 of a 24 x 16 matrix accepted: %s", err.msg);
    oz_remove_tree(dir, &err);
    tiny_teardown(&tm);
}

/* ---- bf16 precision (oz_llama_shape.precision) */

/* A bf16 model and an fp32 one on the same weights and batch (fp32 master weights both), their
 * losses, logits and gradients. The bf16 model's weights are rounded for its GEMMs, every
 * activation and activation gradient is rounded once per op, and the logits' gradient once more:
 * per tensor, errors are a few bf16 ulps (2^-8 relative each) compounded through two layers. */
typedef struct {
    double loss_rel, logits_rel, grad_rel; /* |loss| relative error; max|err|/max|ref| of logits, worst gradient */
    char worst[96];                         /* the tensor of the worst gradient */
} bf16_errors;

static bf16_errors bf16_against_fp32(const oz_llama_config *c, const float *init, const int32_t *ids,
                                     const int32_t *targets, int B, int T, bool print) {
    bf16_errors e = {0, 0, 0, {0}};
    oz_err err = {0};
    size_t N = (size_t)B * T, V = (size_t)c->vocab_size;
    float *logits[2] = {malloc(N * V * sizeof(float)), malloc(N * V * sizeof(float))}, *grads[2] = {NULL, NULL};
    double loss[2] = {0, 0};
    oz_param_layout lay;
    oz_param_layout_build(c, &lay, &err);
    for (int r = 0; r < 2; r++) {
        oz_llama_shape shape = {.batch = B, .seq = T, .with_grads = true, .precision = r ? OZ_PREC_BF16 : OZ_PREC_FP32};
        model_fixture f;
        if (!fixture_model(&f, c, shape, init)) {
            fixture_drop(&f);
            continue;
        }
        check_plan(c, shape, &f.arena, r ? "bf16 model" : "fp32 model", NULL);
        oz_llama_batch b = {ids, targets, B, T, logits[r]};
        double s;
        long n;
        CHECK(oz_llama_forward(f.m, &b, &s, &n, &err) == OZ_OK, "%s", err.msg);
        b.logits_out = NULL;
        oz_llama_zero_grads(f.m);
        double s2;
        CHECK(oz_llama_forward_backward(f.m, &b, 1.0f / (float)n, &s2, &n, &err) == OZ_OK, "%s", err.msg);
        CHECK(s == s2, "forward-only loss %.9g vs training forward %.9g (precision %d)", s, s2, r);
        loss[r] = s / n;
        grads[r] = malloc(lay.grad_total * sizeof(float));
        memcpy(grads[r], oz_llama_grads(f.m), lay.grad_total * sizeof(float));
        fixture_drop(&f);
    }
    if (grads[0] && grads[1]) {
        e.loss_rel = fabs(loss[1] - loss[0]) / fabs(loss[0]);
        double dmax = 0, rmax = 0;
        for (size_t i = 0; i < N * V; i++) {
            dmax = fmax(dmax, fabs((double)logits[1][i] - logits[0][i]));
            rmax = fmax(rmax, fabs((double)logits[0][i]));
        }
        e.logits_rel = dmax / rmax;
        for (int i = 0; i < lay.n; i++) {
            const oz_param_info *p = &lay.params[i];
            double diff = 0, ref = 0;
            for (size_t j = 0; j < p->numel; j++) {
                diff = fmax(diff, fabs((double)grads[1][p->grad_offset + j] - grads[0][p->grad_offset + j]));
                ref = fmax(ref, fabs((double)grads[0][p->grad_offset + j]));
            }
            double rel = ref > 0 ? diff / ref : diff;
            if (print) fprintf(stderr, "       %-48s %.2e\n", p->name, rel);
            if (!(rel <= e.grad_rel)) {
                e.grad_rel = rel;
                snprintf(e.worst, sizeof e.worst, "%s", p->name);
            }
        }
    }
    free(logits[0]);
    free(logits[1]);
    free(grads[0]);
    free(grads[1]);
    oz_param_layout_free(&lay);
    return e;
}

/* The bf16 model against the fp32 model (the fp32 model on the same fp32 weights is the
 * reference): loss, logits and every parameter's gradient within bf16 tolerances, untied and tied,
 * grouped-query and multi-head, and a shape where no backward gradient fits an alias; the plan
 * equals the arena in both precisions. */
static void test_bf16_against_fp32(void) {
    const oz_llama_config cfgs[] = {
        {61, 32, 48, 2, 4, 2, 8, 32, 1e-5f, 10000.0f, false, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0, {{0}}},
        {61, 32, 48, 2, 4, 2, 8, 32, 1e-5f, 10000.0f, true, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0, {{0}}},
        /* q heads wider than hidden (qd 64 > d 32) and kv wider than the MLP (kvd 32 > F 24): the
         * backward's gradients get buffers of their own */
        {53, 32, 24, 2, 4, 2, 16, 32, 1e-5f, 10000.0f, false, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0, {{0}}},
        /* an ffn that is not a multiple of 8 (as 1b's 5461): down_proj's bf16 rows and the MLP's
         * activations are padded to 48, its dW formed padded and added in */
        {61, 32, 45, 2, 4, 2, 8, 32, 1e-5f, 10000.0f, false, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0, {{0}}},
    };
    enum { B = 2, T = 9, N = B * T };
    for (size_t k = 0; k < sizeof cfgs / sizeof cfgs[0]; k++) {
        const oz_llama_config *c = &cfgs[k];
        int32_t ids[N], targets[N];
        random_tokens(ids, targets, N, c->vocab_size, 21 + k);
        targets[5] = -1;
        oz_param_layout lay;
        oz_err err = {0};
        oz_param_layout_build(c, &lay, &err);
        float *init = scaled_init(c, &lay, 9 + k);
        bf16_errors e = bf16_against_fp32(c, init, ids, targets, B, T, getenv("OZ_BF16_PRINT") != NULL);
        fprintf(stderr, "     config %zu: loss rel %.2e, logits %.2e, worst gradient %.2e (%s)\n", k, e.loss_rel,
                e.logits_rel, e.grad_rel, e.worst);
        CHECK(e.loss_rel < BF16_LOSS_TOL, "config %zu: bf16 loss differs by %.3g (relative)", k, e.loss_rel);
        CHECK(e.logits_rel < BF16_LOGITS_TOL, "config %zu: bf16 logits differ by %.3g of their largest", k, e.logits_rel);
        CHECK(e.grad_rel < BF16_GRAD_TOL, "config %zu: bf16 gradient of %s differs by %.3g of its largest", k, e.worst,
              e.grad_rel);
        free(init);
        oz_param_layout_free(&lay);
    }
}

/* The bf16 head in chunks of rows (a vocabulary of 66,000 gives 256-row chunks: 400 tokens are two
 * chunks, the second short): loss, logits and gradients against the fp32 model within bf16's
 * bounds, as one chunk is. */
static void test_bf16_head_chunks(void) {
    const oz_llama_config c = {66000, 32, 48, 1, 4, 2, 8, 256, 1e-5f, 10000.0f, false, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0, {{0}}};
    enum { B = 2, T = 200, N = B * T };
    int32_t *ids = malloc(N * sizeof *ids), *targets = malloc(N * sizeof *targets);
    random_tokens(ids, targets, N, c.vocab_size, 77);
    targets[300] = -1;
    oz_param_layout lay;
    oz_err err = {0};
    oz_param_layout_build(&c, &lay, &err);
    float *init = scaled_init(&c, &lay, 5);
    bf16_errors e = bf16_against_fp32(&c, init, ids, targets, B, T, false);
    fprintf(stderr, "     2 head chunks: loss rel %.2e, logits %.2e, worst gradient %.2e (%s)\n", e.loss_rel, e.logits_rel,
            e.grad_rel, e.worst);
    CHECK(e.loss_rel < BF16_LOSS_TOL, "bf16 loss in head chunks differs by %.3g (relative)", e.loss_rel);
    CHECK(e.logits_rel < BF16_LOGITS_TOL, "bf16 logits in head chunks differ by %.3g of their largest", e.logits_rel);
    CHECK(e.grad_rel < BF16_GRAD_TOL, "bf16 gradient of %s in head chunks differs by %.3g", e.worst, e.grad_rel);
    free(init), free(ids), free(targets);
    oz_param_layout_free(&lay);
}

/* AdamW memorising a fixed batch in bf16 lowers the loss as fp32 does (each of 40 steps' losses
 * close to fp32's, the last well below the first), and a bf16 run repeats bit for bit: the same
 * losses and the same final weights. */
static void test_bf16_training(void) {
    const oz_llama_config c = {61, 32, 48, 2, 4, 2, 8, 32, 1e-5f, 10000.0f, false, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0, {{0}}};
    enum { B = 2, T = 9, N = B * T, STEPS = 40 };
    int32_t ids[N], targets[N];
    random_tokens(ids, targets, N, c.vocab_size, 31);
    oz_param_layout lay;
    oz_err err = {0};
    oz_param_layout_build(&c, &lay, &err);
    float *init = malloc(lay.total * sizeof *init), *w[3];
    oz_llama_init_params(&c, &lay, init, 3);
    double loss[3][STEPS];
    const int precision[3] = {OZ_PREC_FP32, OZ_PREC_BF16, OZ_PREC_BF16};
    for (int r = 0; r < 3; r++) {
        w[r] = calloc(lay.total, sizeof(float));
        oz_llama_shape shape = {.batch = B, .seq = T, .with_grads = true, .precision = precision[r]};
        model_fixture f;
        oz_optimizer *opt = NULL;
        oz_optim_config oc = {.kind = OZ_OPTIM_ADAMW, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f};
        if (fixture_model(&f, &c, shape, init))
            CHECK(oz_optimizer_create(&opt, &oc, &lay, &f.be, &f.arena, &err) == OZ_OK, "%s", err.msg);
        if (opt) {
            connect_model(opt, f.m);
            oz_llama_batch b = {ids, targets, B, T, NULL};
            for (int step = 0; step < STEPS; step++) {
                double sum;
                long n;
                CHECK(train_step(f.m, opt, &b, step, 1e-2f, 1.0f / N, &sum, &n, &err) == OZ_OK, "%s", err.msg);
                loss[r][step] = sum / n;
            }
            oz_llama_export_params(f.m, w[r]);
        }
        oz_optimizer_destroy(opt);
        fixture_drop(&f);
    }
    double worst = 0;
    for (int step = 0; step < STEPS; step++) worst = fmax(worst, fabs(loss[1][step] - loss[0][step]));
    fprintf(stderr, "     fp32 loss %.4f -> %.4f, bf16 %.4f -> %.4f, largest per-step difference %.2e\n", loss[0][0],
            loss[0][STEPS - 1], loss[1][0], loss[1][STEPS - 1], worst);
    CHECK(loss[1][STEPS - 1] < 0.3 * loss[1][0], "bf16 training: loss went from %.4f to only %.4f", loss[1][0],
          loss[1][STEPS - 1]);
    CHECK(worst < BF16_TRAIN_TOL * loss[0][0], "bf16 losses drift %.3g from fp32's", worst);
    CHECK(!memcmp(loss[1], loss[2], sizeof loss[1]) && !memcmp(w[1], w[2], lay.total * sizeof(float)),
          "two bf16 runs differ");
    for (int r = 0; r < 3; r++) free(w[r]);
    free(init);
    oz_param_layout_free(&lay);
}

/* bf16 weights without fp32 masters (shape.bf16_weights): the weights read back are the imported
 * ones rounded to nearest (and a second import of those is exact); a forward and backward give the
 * master-weights model's loss, logits and gradients bit for bit (both run on the same bf16
 * values), padded ffn included; AdamW on them (stochastic rounding) trains as the master model
 * does, repeats bit for bit, and the plan equals the arena. */
static void test_bf16_weights(void) {
    const oz_llama_config cfgs[] = {
        {61, 32, 48, 2, 4, 2, 8, 32, 1e-5f, 10000.0f, false, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0, {{0}}},
        {61, 32, 45, 2, 4, 2, 8, 32, 1e-5f, 10000.0f, true, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0, {{0}}},
    };
    enum { B = 2, T = 9, N = B * T, STEPS = 40 };
    for (size_t k = 0; k < sizeof cfgs / sizeof cfgs[0]; k++) {
        const oz_llama_config *c = &cfgs[k];
        int32_t ids[N], targets[N];
        random_tokens(ids, targets, N, c->vocab_size, 51 + k);
        oz_param_layout lay;
        oz_err err = {0};
        oz_param_layout_build(c, &lay, &err);
        float *init = scaled_init(c, &lay, 19 + k), *back = calloc(lay.total, sizeof(float));
        float *logits[2] = {malloc(N * c->vocab_size * sizeof(float)), malloc(N * c->vocab_size * sizeof(float))};
        float *grads[2] = {malloc(lay.grad_total * sizeof(float)), malloc(lay.grad_total * sizeof(float))};
        double loss[2] = {0, 0}, curve[3][STEPS];
        for (int r = 0; r < 2; r++) {
            oz_llama_shape shape = {.batch = B, .seq = T, .with_grads = true, .precision = OZ_PREC_BF16,
                                    .bf16_weights = r == 1};
            model_fixture f;
            if (!fixture_model(&f, c, shape, init)) {
                fixture_drop(&f);
                continue;
            }
            if (r == 1) {
                check_plan(c, shape, &f.arena, "bf16-weights model", NULL);
                CHECK(oz_llama_param(f.m, 1) == NULL, "a bf16-weights model handed out fp32 weights");
                oz_llama_export_params(f.m, back);
                size_t bad = 0;
                for (int i = 0; i < lay.n; i++)
                    for (size_t j = 0; j < lay.params[i].numel; j++) {
                        const size_t at = lay.params[i].offset + j;
                        bad += back[at] != oz_bf16_to_f32(oz_f32_to_bf16(init[at]));
                    }
                CHECK(bad == 0, "config %zu: %zu bf16 weights are not the imported ones rounded to nearest", k, bad);
                float *again = calloc(lay.total, sizeof(float));
                oz_llama_import_params(f.m, back);
                oz_llama_export_params(f.m, again);
                CHECK(!memcmp(again, back, lay.total * sizeof(float)), "config %zu: bf16 weights not exact on reimport", k);
                free(again);
            }
            oz_llama_batch b = {ids, targets, B, T, logits[r]};
            long n;
            oz_llama_zero_grads(f.m);
            CHECK(oz_llama_forward_backward(f.m, &b, 1.0f / N, &loss[r], &n, &err) == OZ_OK, "%s", err.msg);
            b.logits_out = logits[r];
            double s;
            CHECK(oz_llama_forward(f.m, &b, &s, &n, &err) == OZ_OK, "%s", err.msg);
            memcpy(grads[r], oz_llama_grads(f.m), lay.grad_total * sizeof(float));
            fixture_drop(&f);
        }
        CHECK(loss[0] == loss[1], "config %zu: bf16-weights loss %.9g vs master weights' %.9g", k, loss[1], loss[0]);
        CHECK(!memcmp(logits[0], logits[1], N * c->vocab_size * sizeof(float)), "config %zu: logits differ", k);
        CHECK(!memcmp(grads[0], grads[1], lay.grad_total * sizeof(float)), "config %zu: gradients differ", k);
        /* training: master weights, bf16 weights twice */
        float *final[3];
        for (int r = 0; r < 3; r++) {
            final[r] = calloc(lay.total, sizeof(float));
            oz_llama_shape shape = {.batch = B, .seq = T, .with_grads = true, .precision = OZ_PREC_BF16,
                                    .bf16_weights = r > 0};
            model_fixture f;
            oz_optimizer *opt = NULL;
            oz_optim_config oc = {.kind = OZ_OPTIM_ADAMW, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f};
            if (fixture_model(&f, c, shape, init))
                CHECK(oz_optimizer_create(&opt, &oc, &lay, &f.be, &f.arena, &err) == OZ_OK, "%s", err.msg);
            if (opt) {
                connect_model(opt, f.m);
                oz_llama_batch b = {ids, targets, B, T, NULL};
                for (int step = 0; step < STEPS; step++) {
                    double sum;
                    long n;
                    CHECK(train_step(f.m, opt, &b, step, 1e-2f, 1.0f / N, &sum, &n, &err) == OZ_OK, "%s", err.msg);
                    curve[r][step] = sum / n;
                }
                oz_llama_export_params(f.m, final[r]);
            }
            oz_optimizer_destroy(opt);
            fixture_drop(&f);
        }
        double worst = 0;
        for (int step = 0; step < STEPS; step++) worst = fmax(worst, fabs(curve[1][step] - curve[0][step]));
        fprintf(stderr, "     config %zu: master %.4f -> %.4f, bf16 weights %.4f -> %.4f, largest difference %.2e\n", k,
                curve[0][0], curve[0][STEPS - 1], curve[1][0], curve[1][STEPS - 1], worst);
        CHECK(curve[1][STEPS - 1] < 0.3 * curve[1][0], "config %zu: bf16 weights: loss %.4f -> only %.4f", k,
              curve[1][0], curve[1][STEPS - 1]);
        CHECK(worst < BF16_TRAIN_TOL * curve[0][0], "config %zu: bf16-weights losses drift %.3g from master's", k, worst);
        CHECK(!memcmp(curve[1], curve[2], sizeof curve[1]) && !memcmp(final[1], final[2], lay.total * sizeof(float)),
              "config %zu: two bf16-weights runs differ", k);
        for (int r = 0; r < 3; r++) free(final[r]);
        free(init), free(back), free(logits[0]), free(logits[1]), free(grads[0]), free(grads[1]);
        oz_param_layout_free(&lay);
    }
}

/* Gradients as events in bf16: per-layer and per-tensor (immediate) modes emit the whole-model
 * run's gradients bit for bit (the same bf16 computation, only where they land differs), each
 * trainable tensor once, with frozen norms and embedding too; the plan equals the arena in every
 * mode, a forward-only model's included. */
typedef struct {
    const oz_param_layout *lay;
    float *grads;
    int *calls;
} grad_capture;

static void capture_grad(void *user, const oz_grad_event *ev) {
    grad_capture *g = user;
    const oz_param_info *p = &g->lay->params[ev->index];
    if (ev->form != OZ_GRAD_TENSOR || ev->partial) return;
    g->calls[ev->index]++;
    memcpy(g->grads + p->grad_offset, ev->grad, p->numel * sizeof(float));
}

static void test_bf16_grad_modes(void) {
    enum { B = 2, T = 9, N = B * T };
    int32_t ids[N], targets[N];
    random_tokens(ids, targets, N, 61, 41);
    targets[2] = -1;
    oz_llama_batch b = {ids, targets, B, T, NULL};
    for (int variant = 0; variant < 3; variant++) { /* untied, tied, untied with frozen norms and embedding */
        oz_llama_config c = {61, 32, 48, 2, 4, 2, 8, 32, 1e-5f, 10000.0f, variant == 1, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0, {{0}}};
        unsigned freeze = variant == 2 ? OZ_FREEZE_NORMS | OZ_FREEZE_EMBED : 0;
        oz_param_layout lay;
        oz_err err = {0};
        oz_param_layout_build(&c, &lay, &err);
        oz_param_layout_freeze(&lay, freeze);
        float *init = scaled_init(&c, &lay, 17), *want = calloc(lay.grad_total + 1, sizeof(float));
        float *got = calloc(lay.grad_total + 1, sizeof(float));
        int *calls = calloc((size_t)lay.n, sizeof *calls);
        for (int mode = 0; mode < 3; mode++) { /* whole model, per layer, per tensor */
            oz_llama_shape shape = {.batch = B, .seq = T, .with_grads = true, .precision = OZ_PREC_BF16, .freeze = freeze};
            shape.grads.per_layer = mode >= 1;
            shape.grads.immediate = mode == 2;
            char what[64];
            snprintf(what, sizeof what, "bf16, variant %d, mode %d", variant, mode);
            model_fixture f;
            if (!fixture_model(&f, &c, shape, init)) {
                fixture_drop(&f);
                continue;
            }
            check_plan(&c, shape, &f.arena, what, NULL);
            memset(got, 0, lay.grad_total * sizeof(float));
            memset(calls, 0, (size_t)lay.n * sizeof *calls);
            grad_capture cap = {&lay, got, calls};
            oz_llama_set_grad_sink(f.m, (oz_grad_sink){capture_grad, &cap});
            oz_llama_zero_grads(f.m);
            double sum;
            long n;
            CHECK(oz_llama_forward_backward(f.m, &b, 1.0f / N, &sum, &n, &err) == OZ_OK, "%s: %s", what, err.msg);
            oz_llama_emit_accumulated(f.m);
            if (mode == 0) memcpy(want, got, lay.grad_total * sizeof(float));
            for (int i = 0; i < lay.n; i++) {
                const oz_param_info *p = &lay.params[i];
                CHECK(calls[i] == !p->frozen, "%s: %s emitted %d times", what, p->name, calls[i]);
                if (!p->frozen && mode > 0)
                    CHECK(!memcmp(got + p->grad_offset, want + p->grad_offset, p->numel * sizeof(float)),
                          "%s: %s differs from the whole-model gradient", what, p->name);
            }
            fixture_drop(&f);
        }
        /* A forward-only bf16 model: no gradient buffers, plan = arena, the training model's loss. */
        oz_llama_shape eval = {.batch = B, .seq = T, .precision = OZ_PREC_BF16};
        model_fixture f;
        if (fixture_model(&f, &c, eval, init)) {
            check_plan(&c, eval, &f.arena, "bf16 forward only", NULL);
            CHECK(f.arena.current[OZ_MEM_GRADS] == 0, "a forward-only bf16 model holds gradients");
        }
        fixture_drop(&f);
        free(init);
        free(want);
        free(got);
        free(calls);
        oz_param_layout_free(&lay);
    }
}

/* What bf16 does not cover yet is refused by the planner and by create, one line naming it; a
 * shape planned for CUDA's attention workspace is refused on the CPU; the CUDA plan differs from
 * the CPU's by the attention workspaces' difference only. */
static void test_bf16_refusals(void) {
    oz_llama_config c = {61, 32, 48, 2, 4, 2, 8, 32, 1e-5f, 10000.0f, false, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0, {{0}}};
    oz_llama_config lr = c;
    lr.low_rank[0][OZ_M_Q] = 4;
    const oz_llama_shape base = {.batch = 2, .seq = 9, .with_grads = true, .precision = OZ_PREC_BF16};
    oz_llama_shape refused[6];
    for (int i = 0; i < 6; i++) refused[i] = base;
    refused[0].int8_matrices = true;
    refused[1].recompute = true;
    refused[2].mlp_chunks = refused[2].head_chunks = 2;
    refused[3].grads.per_layer = refused[3].grads.immediate = true;
    refused[3].grads.factored = 1u << OZ_M_Q;
    refused[4].grads.per_layer = refused[4].grads.immediate = refused[4].grads.vocab_blocks = true;
    /* [5]: the low-rank config */
    oz_backend be;
    oz_err err = {0};
    oz_backend_cpu_create(&be, 0, &err);
    oz_arena arena;
    oz_arena_init(&arena, be.allocator);
    for (int i = 0; i < 6; i++) {
        const oz_llama_config *cc = i == 5 ? &lr : &c;
        oz_llama_plan plan;
        oz_err e1 = {0}, e2 = {0};
        oz_llama *m = NULL;
        CHECK(oz_llama_plan_memory(cc, refused[i], &plan, &e1) == OZ_ERR_INPUT &&
                  strstr(e1.msg, "--precision bf16 does not support"),
              "refusal %d: the planner said \"%s\"", i, e1.msg);
        CHECK(oz_llama_create(&m, cc, &be, &arena, refused[i], &e2) == OZ_ERR_INPUT && !strcmp(e1.msg, e2.msg),
              "refusal %d: create said \"%s\"", i, e2.msg);
        oz_llama_destroy(m);
    }
    oz_llama_shape cuda = base, odd = base;
    cuda.cuda = true;
    odd.precision = 7;
    oz_llama *m = NULL;
    CHECK(oz_llama_create(&m, &c, &be, &arena, cuda, &err) == OZ_ERR_INTERNAL, "a CUDA-planned shape created on the CPU");
    oz_llama_destroy(m);
    m = NULL;
    CHECK(oz_llama_create(&m, &c, &be, &arena, odd, &err) == OZ_ERR_INTERNAL, "precision 7 accepted");
    oz_llama_destroy(m);
    CHECK(arena.current_total == 0, "refused models left %zu bytes", arena.current_total);
    oz_llama_plan pc, pg;
    CHECK(oz_llama_plan_memory(&c, base, &pc, &err) == OZ_OK && oz_llama_plan_memory(&c, cuda, &pg, &err) == OZ_OK,
          "%s", err.msg);
    size_t wc = oz_attention_bf16_device_workspace_bytes(0, 2, 9, 4, 2, 8);
    size_t wg = oz_attention_bf16_device_workspace_bytes(1, 2, 9, 4, 2, 8);
    /* More of the head's buffers may fit inside the larger workspace, so the totals differ by at
     * most the workspaces' difference. */
    size_t tc = 0, tg = 0;
    for (int cat = 0; cat < OZ_MEM_NCATEGORIES; cat++) tc += pc.bytes[cat], tg += pg.bytes[cat];
    CHECK(wg > wc && pg.largest[OZ_MEM_SCRATCH] == wg && tg > tc && tg - tc <= wg - wc,
          "CUDA plan: %zu bytes (largest scratch %zu) vs %zu on the CPU, workspaces %zu vs %zu", tg,
          pg.largest[OZ_MEM_SCRATCH], tc, wg, wc);
    oz_arena_destroy(&arena);
    be.destroy(&be);
}

int main(void) {
    RUN(test_parity_gqa);
    RUN(test_parity_tied);
    RUN(test_fd_untied);
    RUN(test_fd_tied);
    RUN(test_fd_low_rank);
    RUN(test_low_rank_equals_dense);
    RUN(test_active_rank_equals_smaller_model);
    RUN(test_frozen);
    RUN(test_frozen_qgalore);
    RUN(test_low_rank_plan);
    RUN(test_per_tensor_grads);
    RUN(test_factored_grads);
    RUN(test_low_rank_checkpoint);
    RUN(test_determinism_and_accumulation);
    RUN(test_layout_and_presets);
    RUN(test_schedule);
    RUN(test_adamw_lowers_loss);
    RUN(test_arena_accounting);
    RUN(test_recompute_and_mini_sequences);
    RUN(test_bf16_checkpoints);
    RUN(test_outer_grad_blocks);
    RUN(test_bf16_vocab);
    RUN(test_int8_row_blocks);
    RUN(test_grad_events);
    RUN(test_bf16_against_fp32);
    RUN(test_bf16_head_chunks);
    RUN(test_bf16_training);
    RUN(test_bf16_weights);
    RUN(test_bf16_grad_modes);
    RUN(test_bf16_refusals);
    return oz_test_finish("test_model");
}
