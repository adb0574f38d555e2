/* The whole Llama model: parity with a float64 PyTorch reference (logits, loss, every parameter
 * gradient), the gradient against finite differences, determinism, gradient accumulation, the
 * parameter layout, and AdamW + the schedule actually lowering a loss. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "harness.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "optim/optimizer.h"
#include "optim/schedule.h"
#include "util/rng.h"

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

static void tiny_setup(tiny_model *tm, bool tie) {
    oz_err err = {0};
    oz_llama_config c = {29, 16, 24, 2, 4, 2, 4, 32, 1e-5f, 10000.0f, tie, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0};
    tm->cfg = c;
    oz_backend_cpu_create(&tm->be, 0, &err);
    oz_arena_init(&tm->arena, tm->be.allocator);
    oz_llama_shape shape = {.batch = 2, .seq = 7, .with_grads = true};
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
static void fd_check(bool tie) {
    tiny_model tm;
    tiny_setup(&tm, tie);
    if (!tm.m) return;
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
        double eps = 2e-2;
        for (size_t j = 0; j < n; j++) w[j] = (float)(saved[j] + eps * v[j]);
        double lp = tiny_loss(&tm) * c;
        for (size_t j = 0; j < n; j++) w[j] = (float)(saved[j] - eps * v[j]);
        double lm = tiny_loss(&tm) * c;
        memcpy(w, saved, n * sizeof *saved);
        double numeric = (lp - lm) / (2 * eps);
        CHECK(fabs(numeric - analytic) <= 2e-3 * fabs(analytic) + 2e-4,
              "%s%s: directional derivative analytic %.6g vs finite difference %.6g", pi->name,
              tie ? " (tied)" : "", analytic, numeric);
        free(v);
        free(saved);
    }
    free(grad);
    tiny_teardown(&tm);
}

static void test_fd_untied(void) { fd_check(false); }
static void test_fd_tied(void) { fd_check(true); }

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
    CHECK(n0 && n0->is_norm && n0->offset == lay.layer_begin, "layer 0 does not start with its norm");
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
    for (int step = 0; step < 60; step++) {
        double s;
        long c;
        oz_llama_zero_grads(tm.m);
        oz_optimizer_begin_step(opt, step, 1e-2f);
        oz_llama_forward_backward(tm.m, &b, 1.0f / 13, &s, &c, &err);
        for (int i = 0; i < lay->n; i++) oz_optimizer_consume(opt, i, oz_llama_grad(tm.m, i), false, &err);
        oz_optimizer_apply(opt, oz_llama_params(tm.m), 1e-2f, 1.0f);
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

/* Loss and every gradient with recompute and mini-sequences (counts 1, 2, 3, 7, auto; uneven
 * chunks; grouped-query heads) against the plain model; no tokens x intermediate or tokens x vocab
 * buffer with mini-sequences on; the planner's bytes equal the arena's. */
static void test_recompute_and_mini_sequences(void) {
    oz_llama_config c = {61, 16, 40, 2, 4, 2, 4, 32, 1e-5f, 10000.0f, false, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0};
    enum { B = 2, T = 9, N = B * T };
    oz_rng rng;
    oz_rng_seed(&rng, 11);
    int32_t ids[N], targets[N];
    for (int i = 0; i < N; i++) {
        ids[i] = (int32_t)oz_rng_below(&rng, (uint64_t)c.vocab_size);
        targets[i] = (int32_t)oz_rng_below(&rng, (uint64_t)c.vocab_size);
    }
    targets[5] = -1;
    oz_param_layout lay;
    oz_err err = {0};
    oz_param_layout_build(&c, &lay, &err);
    float *init = malloc(lay.total * sizeof *init), *ref_grad = malloc(lay.total * sizeof *ref_grad);
    oz_llama_init_params(&c, &lay, init, 3);
    for (size_t i = 0; i < lay.total; i++) init[i] *= 10.0f; /* gradients far from zero */
    for (int i = 0; i < lay.n; i++)
        if (lay.params[i].is_norm)
            for (size_t j = 0; j < lay.params[i].numel; j++) init[lay.params[i].offset + j] = 1.0f;
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
            oz_llama_plan plan;
            CHECK(oz_llama_plan_memory(&c, shape, &plan, &err) == OZ_OK, "%s", err.msg);
            for (int cat = 0; cat < OZ_MEM_NCATEGORIES; cat++)
                CHECK(plan.bytes[cat] == arena.current[cat] && plan.largest[cat] == arena.largest[cat],
                      "plan/arena differ in %s: %zu vs %zu (recompute %d, chunks %d)", oz_mem_category_name(cat),
                      plan.bytes[cat], arena.current[cat], recompute, counts[k][0]);
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

/* The per-layer gradient hook fires once per layer in reverse order, then once for the rest, and
 * each layer's gradients are final when its hook fires. */
typedef struct {
    int calls[8], n;
    oz_llama *m;
    float *snapshot;
} hook_log;

static void record_hook(void *user, int layer) {
    hook_log *h = user;
    if (h->n < 8) h->calls[h->n] = layer;
    h->n++;
    if (layer == 1) {
        const oz_param_layout *lay = oz_llama_get_layout(h->m);
        memcpy(h->snapshot, oz_llama_grads(h->m) + lay->layer_begin + lay->layer_stride,
               lay->layer_stride * sizeof(float));
    }
}

static void test_grad_hook(void) {
    tiny_model tm;
    tiny_setup(&tm, false);
    if (!tm.m) return;
    const oz_param_layout *lay = oz_llama_get_layout(tm.m);
    hook_log h = {{0}, 0, tm.m, malloc(lay->layer_stride * sizeof(float))};
    oz_llama_set_grad_hook(tm.m, record_hook, &h);
    oz_err err = {0};
    oz_llama_batch b = {tm.ids, tm.targets, 2, 7, NULL};
    double s;
    long c;
    oz_llama_zero_grads(tm.m);
    oz_llama_forward_backward(tm.m, &b, 1.0f, &s, &c, &err);
    CHECK(h.n == 3 && h.calls[0] == 1 && h.calls[1] == 0 && h.calls[2] == -1, "hook order %d: %d %d %d", h.n,
          h.calls[0], h.calls[1], h.calls[2]);
    CHECK(memcmp(h.snapshot, oz_llama_grads(tm.m) + lay->layer_begin + lay->layer_stride,
                 lay->layer_stride * sizeof(float)) == 0,
          "layer 1's gradients changed after its hook fired");
    free(h.snapshot);
    tiny_teardown(&tm);
}

int main(void) {
    RUN(test_parity_gqa);
    RUN(test_parity_tied);
    RUN(test_fd_untied);
    RUN(test_fd_tied);
    RUN(test_determinism_and_accumulation);
    RUN(test_layout_and_presets);
    RUN(test_schedule);
    RUN(test_adamw_lowers_loss);
    RUN(test_arena_accounting);
    RUN(test_recompute_and_mini_sequences);
    RUN(test_grad_hook);
    return oz_test_finish("test_model");
}
