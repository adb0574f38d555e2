/* Cached decoding (model/decode.h) against the full forward: every position's logits, prompts of
 * different lengths batched against one at a time, the memory plan against the arena. */
#include <cjson/cJSON.h>
#include <string.h>

#include "backend/backend.h"
#include "harness.h"
#include "io/atomic.h"
#include "io/safetensors.h"
#include "model/decode.h"
#include "model/hf_model.h"
#include "model/llama.h"
#include "util/rng.h"

/* A tiny grouped-query model: 4 query heads on 2 key/value heads, head_dim 8, 2 layers, a context
 * long enough for attention's key blocks (64 keys at head_dim 8) to be crossed. */
static oz_llama_config tiny_config(bool tie, bool low_rank) {
    oz_llama_config c = {37, 32, 48, 2, 4, 2, 8, 160, 1e-5f, 10000.0f, tie, -1, -1, OZ_ROPE_DEFAULT, 0, 0, 0, 0, {{0}}};
    if (low_rank) {
        c.low_rank[0][OZ_M_Q] = 5;
        c.low_rank[1][OZ_M_V] = 3;
        c.low_rank[1][OZ_M_DOWN] = 7;
    }
    return c;
}

typedef struct {
    oz_backend be;
    oz_arena arena;
    oz_llama *m;
    oz_llama_config cfg;
} model_fx;

/* Weights: HF's initialisation scaled up (so attention is far from uniform and the logits spread),
 * norms around 1. */
static void fx_open(model_fx *f, oz_llama_config c, int seq) {
    oz_err err = {0};
    f->cfg = c;
    oz_backend_cpu_create(&f->be, 0, &err);
    oz_arena_init(&f->arena, f->be.allocator);
    oz_llama_shape shape = {.batch = 1, .seq = seq};
    CHECK(oz_llama_create(&f->m, &c, &f->be, &f->arena, shape, &err) == OZ_OK, "%s", err.msg);
    const oz_param_layout *lay = oz_llama_get_layout(f->m);
    float *p = oz_llama_params(f->m);
    oz_llama_init_params(&c, lay, p, 11);
    oz_rng rng;
    oz_rng_seed(&rng, 5);
    for (int i = 0; i < lay->n; i++) {
        const oz_param_info *pi = &lay->params[i];
        for (size_t j = 0; j < pi->numel; j++)
            p[pi->offset + j] = pi->is_norm ? 1.0f + 0.2f * (float)oz_rng_normal(&rng) : p[pi->offset + j] * 12.0f;
    }
}

static void fx_close(model_fx *f) {
    oz_llama_destroy(f->m);
    oz_arena_destroy(&f->arena);
    f->be.destroy(&f->be);
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* The largest difference of a position's logits, relative to that position's largest |logit|. */
static double worst_row_error(const float *got, const float *want, int rows, int V) {
    double worst = 0;
    for (int t = 0; t < rows; t++) {
        double diff = 0, scale = 0;
        for (int v = 0; v < V; v++) {
            double e = fabs((double)got[(size_t)t * V + v] - want[(size_t)t * V + v]);
            diff = e > diff ? e : diff;
            scale = fabs(want[(size_t)t * V + v]) > scale ? fabs(want[(size_t)t * V + v]) : scale;
        }
        worst = diff / scale > worst ? diff / scale : worst;
    }
    return worst;
}

/* Prefill `prompt` tokens, then decode the rest one at a time; every position's logits against
 * oz_llama_forward over the whole sequence, within 1e-5 of each position's largest logit. Not
 * bitwise: OpenBLAS's sgemm gives a row different bits for different row counts (the full forward
 * over the first 10 tokens already differs from the one over 150 at those positions, in 95% of
 * the logits, by about 1e-6 relative), and decoding runs its GEMMs on one row. Everything else
 * is row by row, and the attention is attention_fwd's arithmetic (backend.h). Measured: 3e-6 at worst;
 * an off-by-one in the cached length or in the RoPE position gives 0.6 to 2. */
static void check_cached_equals_full(bool tie, bool low_rank, int prompt) {
    enum { T = 150 };
    model_fx f;
    oz_llama_config c = tiny_config(tie, low_rank);
    fx_open(&f, c, T);
    oz_err err = {0};
    int V = c.vocab_size;
    int32_t ids[T];
    oz_rng rng;
    oz_rng_seed(&rng, 17 + (uint64_t)prompt);
    for (int i = 0; i < T; i++) ids[i] = (int32_t)oz_rng_below(&rng, (uint64_t)V);
    float *full = malloc(sizeof(float) * T * V), *cached = malloc(sizeof(float) * T * V);
    oz_llama_batch b = {ids, NULL, 1, T, full};
    CHECK(oz_llama_forward(f.m, &b, NULL, NULL, &err) == OZ_OK, "%s", err.msg);

    oz_decode *d = NULL;
    oz_decode_shape s = {1, T, prompt};
    CHECK(oz_decode_create(&d, f.m, &f.arena, s, &err) == OZ_OK, "%s", err.msg);
    if (d) {
        float last[64];
        CHECK(oz_decode_prefill(d, 0, ids, prompt, last, cached, &err) == OZ_OK, "%s", err.msg);
        CHECK(memcmp(last, cached + (size_t)(prompt - 1) * V, sizeof(float) * V) == 0, "prefill's last logits");
        for (int t = prompt; t < T; t++)
            CHECK(oz_decode_step(d, 1, ids + t, cached + (size_t)t * V, &err) == OZ_OK, "%s", err.msg);
        CHECK(oz_decode_len(d, 0) == T, "len %d", oz_decode_len(d, 0));
        double worst = worst_row_error(cached, full, T, V);
        CHECK(worst <= 1e-5, "tie %d low_rank %d prompt %d: worst relative difference %.3g", tie, low_rank, prompt,
              worst);
        /* A full cache refuses another token. */
        oz_err e2 = {0};
        CHECK(oz_decode_step(d, 1, ids, cached, &e2) == OZ_ERR_INTERNAL, "step past the cache");
    }
    oz_decode_destroy(d);
    free(full);
    free(cached);
    fx_close(&f);
}

static void test_cached_logits_gqa_untied(void) {
    check_cached_equals_full(false, false, 1);
    check_cached_equals_full(false, false, 7);
    check_cached_equals_full(false, false, 70); /* a prompt past one key block */
}

static void test_cached_logits_tied(void) {
    check_cached_equals_full(true, false, 1);
    check_cached_equals_full(true, false, 20);
}

static void test_cached_logits_low_rank(void) { check_cached_equals_full(false, true, 9); }

/* Greedy continuations of three prompts of different lengths, decoded together in one state and
 * each alone: the same tokens, and logits within 1e-5 (one GEMM over three rows against three of
 * one row; bitwise here, but a BLAS need not be). The middle one stops early and sits the other
 * steps out, which changes nothing for the others. */
static void test_batched_equals_single(void) {
    enum { NP = 3, STEPS = 40, STOP1 = 10, CAP = 7 + STEPS - 1 }; /* slot 2 ends full */
    const int lens[NP] = {3, 12, 7};
    model_fx f;
    oz_llama_config c = tiny_config(false, false);
    fx_open(&f, c, 1);
    oz_err err = {0};
    int V = c.vocab_size;
    int32_t prompts[NP][12];
    oz_rng rng;
    oz_rng_seed(&rng, 3);
    for (int p = 0; p < NP; p++)
        for (int i = 0; i < lens[p]; i++) prompts[p][i] = (int32_t)oz_rng_below(&rng, (uint64_t)V);
    int32_t single[NP][STEPS], batched[NP][STEPS];
    static float lsingle[NP][STEPS][37], lbatched[NP][STEPS][37];
    for (int p = 0; p < NP; p++) {
        oz_decode *d = NULL;
        oz_decode_shape s = {1, 64, 12};
        CHECK(oz_decode_create(&d, f.m, &f.arena, s, &err) == OZ_OK, "%s", err.msg);
        if (!d) continue;
        CHECK(oz_decode_prefill(d, 0, prompts[p], lens[p], lsingle[p][0], NULL, &err) == OZ_OK, "%s", err.msg);
        single[p][0] = argmax(lsingle[p][0], V);
        for (int t = 1; t < STEPS; t++) {
            CHECK(oz_decode_step(d, 1, &single[p][t - 1], lsingle[p][t], &err) == OZ_OK, "%s", err.msg);
            single[p][t] = argmax(lsingle[p][t], V);
        }
        oz_decode_destroy(d);
    }
    oz_decode *d = NULL;
    oz_decode_shape s = {NP, CAP, 12};
    CHECK(oz_decode_create(&d, f.m, &f.arena, s, &err) == OZ_OK, "%s", err.msg);
    if (d) {
        for (int p = 0; p < NP; p++) {
            CHECK(oz_decode_prefill(d, p, prompts[p], lens[p], lbatched[p][0], NULL, &err) == OZ_OK, "%s", err.msg);
            batched[p][0] = argmax(lbatched[p][0], V);
        }
        float step_logits[NP * 37];
        for (int t = 1; t < STEPS; t++) {
            int32_t in[NP];
            /* slot 1 finishes early and sits the remaining steps out */
            for (int p = 0; p < NP; p++) in[p] = p == 1 && t >= STOP1 ? -1 : batched[p][t - 1];
            CHECK(oz_decode_step(d, NP, in, step_logits, &err) == OZ_OK, "%s", err.msg);
            for (int p = 0; p < NP; p++) {
                if (in[p] < 0) {
                    batched[p][t] = single[p][t]; /* not decoded: the single run stands in */
                    memcpy(lbatched[p][t], lsingle[p][t], sizeof(float) * V);
                    continue;
                }
                memcpy(lbatched[p][t], step_logits + (size_t)p * V, sizeof(float) * V);
                batched[p][t] = argmax(lbatched[p][t], V);
            }
        }
        for (int p = 0; p < NP; p++)
            CHECK(oz_decode_len(d, p) == lens[p] + (p == 1 ? STOP1 : STEPS) - 1, "slot %d len %d", p, oz_decode_len(d, p));
        /* A full slot may sit out but not take a token. */
        oz_err e2 = {0};
        int32_t none[NP] = {-1, -1, -1}, more[NP] = {-1, -1, 0};
        CHECK(oz_decode_len(d, 2) == CAP, "slot 2 is full");
        CHECK(oz_decode_step(d, NP, none, step_logits, &e2) == OZ_OK, "every slot sitting out: %s", e2.msg);
        CHECK(oz_decode_step(d, NP, more, step_logits, &e2) == OZ_ERR_INTERNAL, "a token into a full slot");
        for (int p = 0; p < NP; p++) CHECK(oz_decode_len(d, p) == lens[p] + (p == 1 ? STOP1 : STEPS) - 1, "unchanged");
    }
    oz_decode_destroy(d);
    int same = 1, distinct = 0;
    double worst = 0;
    for (int p = 0; p < NP; p++) {
        for (int t = 0; t < STEPS; t++) {
            same &= single[p][t] == batched[p][t];
            distinct += t > 0 && single[p][t] != single[p][t - 1];
        }
        double e = worst_row_error(&lbatched[p][0][0], &lsingle[p][0][0], STEPS, V);
        worst = e > worst ? e : worst;
    }
    CHECK(same, "batched greedy tokens differ from one prompt at a time");
    CHECK(distinct > 10, "the continuations are not trivial (%d token changes)", distinct);
    CHECK(worst <= 1e-5, "batched logits: worst relative difference %.3g", worst);
    /* The three prompts' continuations differ from one another (the slots are not mixed up). */
    CHECK(memcmp(single[0], single[1], sizeof single[0]) != 0 && memcmp(single[1], single[2], sizeof single[0]) != 0,
          "distinct prompts, distinct continuations");
    fx_close(&f);
}

/* Planned bytes are the arena's; the cache is 2 x L x batch x cap x Hkv x hd floats, nothing sized
 * by max_position_embeddings; bad shapes refused. */
static void test_decode_plan(void) {
    model_fx f;
    oz_llama_config c = tiny_config(true, true);
    fx_open(&f, c, 1);
    oz_err err = {0};
    oz_decode_shape s = {3, 50, 20};
    oz_decode_plan plan;
    CHECK(oz_decode_plan_memory(&c, s, &plan, &err) == OZ_OK, "%s", err.msg);
    CHECK(plan.cache_bytes == (size_t)2 * 2 * 3 * 50 * 2 * 8 * 4, "cache bytes %zu", plan.cache_bytes);
    size_t before[OZ_MEM_NCATEGORIES];
    memcpy(before, f.arena.current, sizeof before);
    size_t total0 = f.arena.current_total;
    oz_decode *d = NULL;
    CHECK(oz_decode_create(&d, f.m, &f.arena, s, &err) == OZ_OK, "%s", err.msg);
    for (int k = 0; k < OZ_MEM_NCATEGORIES; k++)
        CHECK(f.arena.current[k] - before[k] == plan.bytes[k], "category %d: %zu allocated, %zu planned", k,
              f.arena.current[k] - before[k], plan.bytes[k]);
    CHECK(f.arena.current_total - total0 == plan.total, "total");
    oz_decode_destroy(d);
    CHECK(f.arena.current_total == total0, "destroy frees everything");
    oz_decode_shape too_long = {1, c.max_position_embeddings + 1, 1};
    CHECK(oz_decode_plan_memory(&c, too_long, &plan, &err) == OZ_ERR_INPUT, "cap past the context");
    oz_decode_shape bad = {0, 10, 1};
    CHECK(oz_decode_create(&d, f.m, &f.arena, bad, &err) == OZ_ERR_INPUT && !d, "batch 0");
    fx_close(&f);
}

/* The op itself: attention_decode's row for each sequence's last position is attention_fwd's row,
 * bit for bit, across key blocks (64 keys at head_dim 8) and for GQA. */
static void test_attention_decode_op(void) {
    enum { B = 2, T = 140, Hq = 4, Hkv = 2, hd = 8, CAP = 150 };
    oz_backend be;
    oz_err err = {0};
    oz_backend_cpu_create(&be, 0, &err);
    size_t qn = (size_t)B * T * Hq * hd, kn = (size_t)B * T * Hkv * hd;
    float *q = malloc(qn * sizeof *q), *k = malloc(kn * sizeof *k), *v = malloc(kn * sizeof *v);
    float *out = malloc(qn * sizeof *out), *lse = malloc((size_t)B * Hq * T * sizeof *lse);
    float *kc = calloc((size_t)B * CAP * Hkv * hd, sizeof *kc), *vc = calloc((size_t)B * CAP * Hkv * hd, sizeof *vc);
    float *qd = malloc((size_t)B * Hq * hd * sizeof *qd), *od = malloc((size_t)B * Hq * hd * sizeof *od);
    float *scores = malloc((size_t)B * Hq * CAP * sizeof *scores);
    oz_rng rng;
    oz_rng_seed(&rng, 8);
    for (size_t i = 0; i < qn; i++) q[i] = 2.0f * (float)oz_rng_normal(&rng);
    for (size_t i = 0; i < kn; i++) k[i] = (float)oz_rng_normal(&rng), v[i] = (float)oz_rng_normal(&rng);
    be.attention_fwd(&be, out, lse, q, k, v, B, T, Hq, Hkv, hd);
    size_t row = (size_t)Hkv * hd;
    for (int b = 0; b < B; b++)
        memcpy(kc + (size_t)b * CAP * row, k + (size_t)b * T * row, T * row * sizeof *kc),
            memcpy(vc + (size_t)b * CAP * row, v + (size_t)b * T * row, T * row * sizeof *vc);
    int bad = 0;
    for (int t = 0; t < T; t++) {
        int32_t lens[B] = {t + 1, t + 1};
        for (int b = 0; b < B; b++)
            memcpy(qd + (size_t)b * Hq * hd, q + ((size_t)b * T + t) * Hq * hd, (size_t)Hq * hd * sizeof *qd);
        be.attention_decode(&be, od, qd, kc, vc, lens, scores, B, CAP, Hq, Hkv, hd);
        for (int b = 0; b < B; b++)
            bad += memcmp(od + (size_t)b * Hq * hd, out + ((size_t)b * T + t) * Hq * hd, (size_t)Hq * hd * sizeof *od) != 0;
    }
    CHECK(bad == 0, "%d of %d rows differ from attention_fwd's", bad, B * T);
    free(q), free(k), free(v), free(out), free(lse), free(kc), free(vc), free(qd), free(od), free(scores);
    be.destroy(&be);
}

/* Greedy decoding of the Hugging Face fixture models (tests/fixtures/hf/) from fixed prompt ids
 * against transformers' generate() (tests/fixtures/decode/, tools/gen_decode_fixtures.py): the same
 * 24 tokens, and every step's logits within 1e-5 of its largest (transformers' smallest gap
 * between the best and the second logit is 3.4e-3, so greedy is not near a tie). Prompt ids include
 * 0, transformers' pad id there: the fixture passes an explicit attention mask. */
static void test_greedy_equals_transformers(void) {
    char *json = NULL;
    size_t n = 0;
    oz_err err = {0};
    CHECK(oz_read_file("tests/fixtures/decode/greedy.json", &json, &n, &err) == OZ_OK, "%s", err.msg);
    cJSON *root = json ? cJSON_ParseWithLength(json, n) : NULL;
    free(json);
    oz_safetensors st;
    bool have_st = oz_safetensors_open(&st, "tests/fixtures/decode/greedy.safetensors", &err) == OZ_OK;
    CHECK(have_st, "%s", err.msg);
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases"), *c;
    int k = 0;
    cJSON_ArrayForEach(c, cases) {
        char dir[256], name[32];
        snprintf(dir, sizeof dir, "tests/fixtures/hf/%s", cJSON_GetObjectItemCaseSensitive(c, "model")->valuestring);
        snprintf(name, sizeof name, "case%d", k++);
        const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(c, "prompt");
        const cJSON *want = cJSON_GetObjectItemCaseSensitive(c, "tokens");
        int np = cJSON_GetArraySize(prompt), nt = cJSON_GetArraySize(want);
        const oz_st_tensor *lt = have_st ? oz_safetensors_find(&st, name) : NULL;
        CHECK(lt && lt->ndim == 2 && lt->shape[0] == nt, "%s: logits in the fixture", name);
        if (!lt) continue;
        int V = (int)lt->shape[1];
        float *ref = malloc(lt->numel * sizeof *ref), *got = malloc(lt->numel * sizeof *got);
        oz_st_tensor_to_f32(lt, ref, lt->numel, &err);
        oz_backend be;
        oz_arena arena;
        oz_backend_cpu_create(&be, 0, &err);
        oz_arena_init(&arena, be.allocator);
        oz_llama *m = NULL;
        oz_llama_shape shape = {.batch = 1, .seq = 1};
        CHECK(oz_llama_load(&m, dir, &be, &arena, shape, NULL, &err) == OZ_OK, "%s: %s", dir, err.msg);
        oz_decode *d = NULL;
        oz_decode_shape s = {1, np + nt, np};
        if (m) CHECK(oz_decode_create(&d, m, &arena, s, &err) == OZ_OK, "%s", err.msg);
        if (d) {
            int32_t ids[64];
            for (int i = 0; i < np; i++) ids[i] = (int32_t)cJSON_GetArrayItem(prompt, i)->valueint;
            CHECK(oz_decode_prefill(d, 0, ids, np, got, NULL, &err) == OZ_OK, "%s", err.msg);
            int same = 1;
            for (int t = 0; t < nt; t++) {
                int32_t next = argmax(got + (size_t)t * V, V);
                same &= next == cJSON_GetArrayItem(want, t)->valueint;
                if (t + 1 < nt)
                    CHECK(oz_decode_step(d, 1, &next, got + (size_t)(t + 1) * V, &err) == OZ_OK, "%s", err.msg);
            }
            CHECK(same, "%s (%s, prompt of %d): greedy tokens differ from transformers'", name, dir, np);
            double worst = worst_row_error(got, ref, nt, V);
            CHECK(worst <= 1e-5, "%s (%s): logits %.3g from transformers'", name, dir, worst);
        }
        oz_decode_destroy(d);
        oz_llama_destroy(m);
        oz_arena_destroy(&arena);
        be.destroy(&be);
        free(ref);
        free(got);
    }
    CHECK(k == 9, "%d cases", k);
    if (have_st) oz_safetensors_close(&st);
    cJSON_Delete(root);
}

int main(void) {
    RUN(test_attention_decode_op);
    RUN(test_cached_logits_gqa_untied);
    RUN(test_cached_logits_tied);
    RUN(test_cached_logits_low_rank);
    RUN(test_batched_equals_single);
    RUN(test_decode_plan);
    RUN(test_greedy_equals_transformers);
    return oz_test_finish("decode");
}
