/* InRank in a training run (see inrank.h): ranks, checks, the freeze, the rank log and its plot. */
#include "train/inrank.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "io/atomic.h"
#include "optim/inrank.h"
#include "util/rng.h"

static bool is_mlp(int j) { return j == OZ_M_GATE || j == OZ_M_UP || j == OZ_M_DOWN; }

bool oz_inrank_targets_parse(const char *text, bool *attn, bool *mlp) {
    if (strcmp(text, "mlp") == 0) *attn = false, *mlp = true;
    else if (strcmp(text, "attn,mlp") == 0 || strcmp(text, "mlp,attn") == 0) *attn = *mlp = true;
    else return false;
    return true;
}

oz_status oz_inrank_settings_from_opts(const oz_train_opts *o, oz_inrank_settings *s, oz_err *err) {
    memset(s, 0, sizeof *s);
    if (!o->inrank) return OZ_OK;
    if (!oz_inrank_targets_parse(o->inrank_targets, &s->attn, &s->mlp))
        return oz_fail(err, OZ_ERR_INPUT, "--inrank-targets %s: expected mlp or attn,mlp", o->inrank_targets);
    if (o->inrank_init_rank < 1) return oz_fail(err, OZ_ERR_INPUT, "--inrank-init-rank must be at least 1 (got %d)", o->inrank_init_rank);
    if (o->inrank_buffer < 1) return oz_fail(err, OZ_ERR_INPUT, "--inrank-buffer must be at least 1 (got %d)", o->inrank_buffer);
    if (!(o->inrank_threshold > 0 && o->inrank_threshold < 1))
        return oz_fail(err, OZ_ERR_INPUT, "--inrank-threshold must be in (0, 1) (got %g)", (double)o->inrank_threshold);
    if (o->inrank_check_every < 1)
        return oz_fail(err, OZ_ERR_INPUT, "--inrank-check-every must be at least 1 (got %d)", o->inrank_check_every);
    if (o->inrank_warmup < 0) return oz_fail(err, OZ_ERR_INPUT, "--inrank-warmup must be >= 0 (got %d)", o->inrank_warmup);
    if (o->inrank_freeze_after < 0)
        return oz_fail(err, OZ_ERR_INPUT, "--inrank-freeze-after must be >= 0 (0 = never; got %d)", o->inrank_freeze_after);
    oz_optim_kind kind;
    if (oz_optim_kind_parse(o->optim, &kind) && oz_optim_traits_of(kind)->galore)
        return oz_fail(err, OZ_ERR_INPUT, "--inrank trains with --optim adamw or adamw8bit (got %s)", o->optim);
    if (o->init[0] || o->welore)
        return oz_fail(err, OZ_ERR_INPUT, "--inrank trains from scratch: it cannot start from --init or train --welore");
    s->init_rank = o->inrank_init_rank;
    s->buffer = o->inrank_buffer;
    s->threshold = o->inrank_threshold;
    s->check_every = o->inrank_check_every;
    s->warmup = o->inrank_warmup;
    s->freeze_after = o->inrank_freeze_after;
    return OZ_OK;
}

bool oz_inrank_owns(const oz_inrank_settings *s, int j) { return is_mlp(j) ? s->mlp : s->attn; }

void oz_inrank_factorize_config(oz_llama_config *cfg, const oz_inrank_settings *s) {
    if (oz_llama_config_is_low_rank(cfg)) return;
    for (int l = 0; l < cfg->num_hidden_layers && l < OZ_LLAMA_MAX_LAYERS; l++)
        for (int j = 0; j < OZ_LLAMA_MATRICES; j++) {
            if (!oz_inrank_owns(s, j)) continue;
            int64_t out, in;
            oz_llama_matrix_dims(cfg, j, &out, &in);
            cfg->low_rank[l][j] = oz_inrank_max_rank((int)out, (int)in);
        }
}

int oz_inrank_active(const oz_inrank_run *run, const oz_inrank_settings *s, int k, int R) {
    if (run->stage == 2) return k;
    int a = k + oz_inrank_buffer(s->buffer, R);
    return a < R ? a : R;
}

void oz_inrank_begin(oz_inrank_run *run, const oz_llama_config *cfg, const oz_inrank_settings *s) {
    memset(run->k, 0, sizeof run->k);
    run->stage = 1;
    run->froze_at = 0;
    run->n_layers = cfg->num_hidden_layers;
    for (int l = 0; l < run->n_layers; l++)
        for (int j = 0; j < OZ_LLAMA_MATRICES; j++) {
            int R = oz_llama_config_rank(cfg, l, j);
            if (R) run->k[l][j] = s->init_rank < R ? s->init_rank : R;
        }
}

void oz_inrank_init_factors(const oz_inrank_run *run, const oz_inrank_settings *s, const oz_llama_config *cfg,
                            const oz_param_layout *lay, float *params, uint64_t seed) {
    for (int l = 0; l < run->n_layers; l++)
        for (int j = 0; j < OZ_LLAMA_MATRICES; j++) {
            int R = oz_llama_config_rank(cfg, l, j), k = run->k[l][j];
            if (!R || !k) continue;
            int r0 = oz_inrank_active(run, s, k, R);
            double sigma = sqrt(0.02 / sqrt((double)r0));
            int ia = oz_llama_matrix_index(lay, l, j);
            const oz_param_info *pa = &lay->params[ia], *pb = &lay->params[ia + 1];
            /* Streams of their own (the dense init's are seed * 1000003 + index): a factor's
             * values depend on nothing but the seed and its place. */
            oz_rng rng;
            oz_rng_seed(&rng, (seed ^ 0x1a4b7c9d2e3f5061ull) * 1000003u + (uint64_t)ia);
            float *A = params + pa->offset, *B = params + pb->offset;
            for (size_t i = 0; i < pa->numel; i++) A[i] = (float)(sigma * oz_rng_normal(&rng));
            oz_rng_seed(&rng, (seed ^ 0x1a4b7c9d2e3f5061ull) * 1000003u + (uint64_t)ia + 1);
            int64_t out = pb->shape[0];
            for (int64_t o = 0; o < out; o++)
                for (int c = 0; c < R; c++) B[o * R + c] = c < r0 ? (float)(sigma * oz_rng_normal(&rng)) : 0.0f;
        }
}

oz_status oz_inrank_apply(const oz_inrank_run *run, const oz_inrank_settings *s, oz_llama *model, oz_err *err) {
    for (int l = 0; l < run->n_layers; l++)
        for (int j = 0; j < OZ_LLAMA_MATRICES; j++) {
            int R = oz_llama_rank(model, l, j), k = run->k[l][j];
            if (!R || !k) continue;
            OZ_TRY(oz_llama_set_active_rank(model, l, j, oz_inrank_active(run, s, k, R), err));
        }
    return OZ_OK;
}

bool oz_inrank_due(const oz_inrank_run *run, const oz_inrank_settings *s, int step) {
    return run->stage == 1 && s->check_every > 0 && step >= s->warmup && (step - s->warmup) % s->check_every == 0;
}

static size_t matrix_check_bytes(int out, int in, int R) {
    return (size_t)R * (size_t)(out + in) * sizeof(float) + oz_inrank_workspace_bytes(out, in, R);
}

size_t oz_inrank_check_bytes(const oz_llama_config *cfg) {
    size_t most = 0;
    for (int l = 0; l < cfg->num_hidden_layers && l < OZ_LLAMA_MAX_LAYERS; l++)
        for (int j = 0; j < OZ_LLAMA_MATRICES; j++) {
            int R = oz_llama_config_rank(cfg, l, j);
            if (!R) continue;
            int64_t out, in;
            oz_llama_matrix_dims(cfg, j, &out, &in);
            size_t b = matrix_check_bytes((int)out, (int)in, R);
            if (b > most) most = b;
        }
    return most;
}

/* Host copies of a factored matrix's A (R x in) and B (out x R), in one block. */
static oz_status read_factors(oz_llama *model, int l, int j, float **block, float **A, float **B, oz_err *err) {
    const oz_param_layout *lay = oz_llama_get_layout(model);
    int ia = oz_llama_matrix_index(lay, l, j);
    size_t na = lay->params[ia].numel, nb = lay->params[ia + 1].numel;
    *block = malloc((na + nb) * sizeof(float));
    if (!*block) return oz_fail(err, OZ_ERR_NOMEM, "out of memory reading %s", lay->params[ia].name);
    *A = *block;
    *B = *block + na;
    oz_llama_read_param(model, ia, *A);
    oz_llama_read_param(model, ia + 1, *B);
    return OZ_OK;
}

oz_status oz_inrank_check(oz_inrank_run *run, const oz_inrank_settings *s, oz_llama *model, oz_arena *arena,
                          int *grown, oz_err *err) {
    const oz_llama_config *cfg = oz_llama_get_config(model);
    *grown = 0;
    /* The workspace is malloc'd matrix by matrix; the arena's peak records the largest, which
     * is what the planner adds (oz_inrank_check_bytes) once any check has run on that matrix. */
    size_t noted = 0;
    for (int l = 0; l < run->n_layers; l++)
        for (int j = 0; j < OZ_LLAMA_MATRICES; j++) {
            int R = oz_llama_rank(model, l, j), k = run->k[l][j];
            if (!R || !k) continue;
            int b = oz_inrank_buffer(s->buffer, R);
            if (k >= R - b) continue; /* the rule cannot grow it any more */
            int r = oz_inrank_active(run, s, k, R);
            int64_t out, in;
            oz_llama_matrix_dims(cfg, j, &out, &in);
            size_t bytes = matrix_check_bytes((int)out, (int)in, R);
            if (bytes > noted) {
                oz_arena_note_transient(arena, OZ_MEM_SCRATCH, bytes);
                noted = bytes;
            }
            float *block, *A, *B;
            OZ_TRY(read_factors(model, l, j, &block, &A, &B, err));
            double *sv = malloc((size_t)r * sizeof *sv);
            oz_status st = sv ? oz_inrank_factored_svd(A, B, (int)out, (int)in, R, r, sv, 0, NULL, NULL, err)
                              : oz_fail(err, OZ_ERR_NOMEM, "out of memory in the rank check");
            if (st == OZ_OK) {
                int nk = oz_inrank_next_rank(sv, r, (int)(out < in ? out : in), k, b, R, s->threshold);
                if (nk > k) {
                    run->k[l][j] = nk;
                    (*grown)++;
                    st = oz_llama_set_active_rank(model, l, j, oz_inrank_active(run, s, nk, R), err);
                }
            }
            free(sv);
            free(block);
            OZ_TRY(st);
        }
    return OZ_OK;
}

/* ------------------------------------------------------------------ the freeze */

oz_status oz_inrank_freeze(oz_inrank_run *run, int step, oz_llama **model, oz_optimizer **opt, oz_llama_config *cfg,
                           oz_backend *be, oz_arena *arena, oz_llama_shape shape, const oz_optim_config *ocfg,
                           oz_err *err) {
    oz_llama *old = *model;
    oz_optimizer *old_opt = *opt, *nopt = NULL;
    const oz_param_layout *olay = oz_llama_get_layout(old);
    oz_llama_config ncfg = *cfg;
    for (int l = 0; l < run->n_layers; l++)
        for (int j = 0; j < OZ_LLAMA_MATRICES; j++)
            if (run->k[l][j]) ncfg.low_rank[l][j] = run->k[l][j];
    oz_param_layout nl;
    oz_status st = oz_param_layout_build(&ncfg, &nl, err);
    if (st != OZ_OK) goto fail_early;
    oz_param_layout_freeze(&nl, shape.freeze);
    /* The new weights are assembled on the host first (the truncated factors, everything else
     * copied by name), so the old model can go before the new one is allocated: the two never
     * coexist, only the old optimizer and the new one do, for the state transfer. */
    size_t host_bytes = nl.total * sizeof(float);
    float *host = calloc(nl.total ? nl.total : 1, sizeof(float));
    if (!host) {
        oz_param_layout_free(&nl);
        st = oz_fail(err, OZ_ERR_NOMEM, "out of memory assembling the frozen InRank model");
        goto fail_early;
    }
    for (int i = 0; i < nl.n && st == OZ_OK; i++) {
        const oz_param_info *p = &nl.params[i];
        if (p->factor == 2) continue; /* written with its A */
        if (p->factor == 1 && p->layer >= 0 && run->k[p->layer][p->matrix]) {
            int l = p->layer, j = p->matrix, k = run->k[l][j], R = oz_llama_rank(old, l, j);
            int r = oz_llama_active_rank(old, l, j);
            int64_t out, in;
            oz_llama_matrix_dims(cfg, j, &out, &in);
            if (k > r) k = r;
            oz_arena_note_transient(arena, OZ_MEM_SCRATCH, host_bytes + matrix_check_bytes((int)out, (int)in, R));
            float *block, *A, *B;
            st = read_factors(old, l, j, &block, &A, &B, err);
            if (st != OZ_OK) break;
            double *sv = malloc((size_t)r * sizeof *sv);
            st = sv ? oz_inrank_factored_svd(A, B, (int)out, (int)in, R, r, sv, k, host + p->offset,
                                             host + nl.params[i + 1].offset, err)
                    : oz_fail(err, OZ_ERR_NOMEM, "out of memory truncating %s", p->name);
            free(sv);
            free(block);
            continue;
        }
        const oz_param_info *src = oz_param_layout_find(olay, p->name);
        if (!src || src->numel != p->numel) {
            st = oz_fail(err, OZ_ERR_INPUT, "InRank freeze: %s has no counterpart in the model", p->name);
            break;
        }
        oz_llama_read_param(old, (int)(src - olay->params), host + p->offset);
    }
    if (st == OZ_OK) st = oz_optimizer_create(&nopt, ocfg, &nl, be, arena, err);
    if (st == OZ_OK) st = oz_optimizer_copy_state(nopt, old_opt, true, err);
    if (st != OZ_OK) {
        if (nopt) oz_optimizer_destroy(nopt);
        oz_param_layout_free(&nl);
        free(host);
        return st; /* the old model and optimizer are untouched */
    }
    oz_optimizer_destroy(old_opt);
    oz_llama_destroy(old);
    *model = NULL;
    *opt = NULL;
    oz_llama *nm = NULL;
    st = oz_llama_create(&nm, &ncfg, be, arena, shape, err);
    if (st == OZ_OK) {
        oz_llama_import_params(nm, host);
        /* The optimizer refers to tensors by index; both layouts come from the same config and
         * freeze flags, so the indexes agree. */
        oz_optimizer_bind_weights(nopt, oz_llama_weights(nm));
        oz_llama_set_grad_sink(nm, oz_optimizer_sink(nopt));
        *model = nm;
        *opt = nopt;
        *cfg = ncfg;
        if (run->has_layout) oz_param_layout_free(&run->layout);
        run->layout = nl;
        run->has_layout = true;
        run->stage = 2;
        run->froze_at = step;
    } else {
        oz_optimizer_destroy(nopt);
        oz_param_layout_free(&nl);
    }
    free(host);
    return st;
fail_early:
    return st;
}

void oz_inrank_run_free(oz_inrank_run *run) {
    if (run->has_layout) oz_param_layout_free(&run->layout);
    run->has_layout = false;
}

/* ------------------------------------------------------------------ state and log */

static void matrix_key(char *buf, size_t cap, int l, int j) {
    snprintf(buf, cap, "model.layers.%d.%s", l, oz_llama_matrix_path(j));
}

static cJSON *ranks_json(const oz_inrank_run *run) {
    cJSON *m = cJSON_CreateObject();
    char key[96];
    for (int l = 0; l < run->n_layers; l++)
        for (int j = 0; j < OZ_LLAMA_MATRICES; j++) {
            if (!run->k[l][j]) continue;
            matrix_key(key, sizeof key, l, j);
            cJSON_AddNumberToObject(m, key, run->k[l][j]);
        }
    return m;
}

cJSON *oz_inrank_state_to_json(const oz_inrank_run *run, const oz_llama_config *cfg) {
    (void)cfg;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "stage", run->stage);
    cJSON_AddNumberToObject(j, "froze_at", run->froze_at);
    cJSON_AddItemToObject(j, "ranks", ranks_json(run));
    return j;
}

oz_status oz_inrank_state_from_json(oz_inrank_run *run, const cJSON *j, const oz_llama_config *cfg, const char *path,
                                    oz_err *err) {
    memset(run->k, 0, sizeof run->k);
    run->n_layers = cfg->num_hidden_layers;
    const cJSON *stage = cJSON_GetObjectItemCaseSensitive(j, "stage");
    const cJSON *froze = cJSON_GetObjectItemCaseSensitive(j, "froze_at");
    const cJSON *ranks = cJSON_GetObjectItemCaseSensitive(j, "ranks");
    if (!cJSON_IsNumber(stage) || (stage->valueint != 1 && stage->valueint != 2) || !cJSON_IsObject(ranks))
        return oz_fail(err, OZ_ERR_INPUT, "%s: the InRank state is missing or malformed", path);
    run->stage = stage->valueint;
    run->froze_at = cJSON_IsNumber(froze) ? froze->valueint : 0;
    char key[96];
    for (int l = 0; l < run->n_layers; l++)
        for (int jj = 0; jj < OZ_LLAMA_MATRICES; jj++) {
            int R = oz_llama_config_rank(cfg, l, jj);
            if (!R) continue;
            matrix_key(key, sizeof key, l, jj);
            const cJSON *k = cJSON_GetObjectItemCaseSensitive(ranks, key);
            if (!cJSON_IsNumber(k) || k->valueint < 1 || k->valueint > R)
                return oz_fail(err, OZ_ERR_INPUT, "%s: InRank rank of %s is missing or not in 1..%d", path, key, R);
            run->k[l][jj] = k->valueint;
        }
    return OZ_OK;
}

double oz_inrank_mean_fraction(const oz_inrank_run *run, const oz_llama_config *cfg) {
    double sum = 0;
    int n = 0;
    for (int l = 0; l < run->n_layers; l++)
        for (int j = 0; j < OZ_LLAMA_MATRICES; j++) {
            if (!run->k[l][j]) continue;
            int64_t out, in;
            oz_llama_matrix_dims(cfg, j, &out, &in);
            sum += (double)run->k[l][j] / (double)(out < in ? out : in);
            n++;
        }
    return n ? sum / n : 0.0;
}

void oz_inrank_log(FILE *f, int step, const oz_inrank_run *run, const oz_llama_config *cfg) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "step", step);
    cJSON_AddNumberToObject(j, "stage", run->stage);
    cJSON_AddNumberToObject(j, "mean_fraction", oz_inrank_mean_fraction(run, cfg));
    cJSON_AddItemToObject(j, "ranks", ranks_json(run));
    char *text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (text) fprintf(f, "%s\n", text);
    free(text);
    fflush(f);
}

/* ------------------------------------------------------------------ plot */

#define PLOT_MAX_POINTS 100000

typedef struct {
    int step;
    double mean[OZ_LLAMA_MATRICES]; /* NaN where the type is not factored */
} plot_point;

static int matrix_of_key(const char *key) {
    const char *dot = strstr(key, "model.layers.");
    if (!dot) return -1;
    const char *mod = strchr(dot + 13, '.');
    if (!mod) return -1;
    for (int j = 0; j < OZ_LLAMA_MATRICES; j++)
        if (strcmp(mod + 1, oz_llama_matrix_path(j)) == 0) return j;
    return -1;
}

/* Appends to *buf (grown as needed); false on out of memory. */
static bool appendf(char **buf, size_t *len, size_t *cap, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
#include <stdarg.h>
static bool appendf(char **buf, size_t *len, size_t *cap, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(*buf + *len, *cap - *len, fmt, ap);
        va_end(ap);
        if (n < 0) return false;
        if (*len + (size_t)n < *cap) {
            *len += (size_t)n;
            return true;
        }
        size_t ncap = (*cap + (size_t)n) * 2;
        char *nb = realloc(*buf, ncap);
        if (!nb) return false;
        *buf = nb;
        *cap = ncap;
    }
}

oz_status oz_inrank_plot(const char *log_path, const char *svg_path, oz_err *err) {
    char *text;
    size_t n;
    OZ_TRY(oz_read_file(log_path, &text, &n, err));
    plot_point *pts = malloc(sizeof *pts * 64);
    int np = 0, cap = 64;
    oz_status st = OZ_OK;
    if (!pts) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory plotting %s", log_path);
    for (char *line = text; st == OZ_OK && line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = '\0';
        cJSON *j = cJSON_Parse(line);
        const cJSON *step = cJSON_GetObjectItemCaseSensitive(j, "step");
        const cJSON *ranks = cJSON_GetObjectItemCaseSensitive(j, "ranks");
        if (cJSON_IsNumber(step) && cJSON_IsObject(ranks)) {
            plot_point p;
            p.step = step->valueint;
            double sum[OZ_LLAMA_MATRICES] = {0};
            int cnt[OZ_LLAMA_MATRICES] = {0};
            const cJSON *e;
            cJSON_ArrayForEach(e, ranks) {
                int m = matrix_of_key(e->string);
                if (m >= 0 && cJSON_IsNumber(e)) sum[m] += e->valuedouble, cnt[m]++;
            }
            for (int m = 0; m < OZ_LLAMA_MATRICES; m++) p.mean[m] = cnt[m] ? sum[m] / cnt[m] : NAN;
            /* A resumed run logs again from its checkpoint's step: the later lines win. */
            while (np > 0 && pts[np - 1].step >= p.step) np--;
            if (np == cap && cap < PLOT_MAX_POINTS) {
                plot_point *g = realloc(pts, sizeof *pts * (size_t)cap * 2);
                if (!g) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory plotting %s", log_path);
                else pts = g, cap *= 2;
            }
            if (st == OZ_OK && np < cap) pts[np++] = p;
        }
        cJSON_Delete(j);
        line = nl ? nl + 1 : NULL;
    }
    free(text);
    if (st != OZ_OK) {
        free(pts);
        return st;
    }
    /* Axes: steps 0..last, ranks 0..the largest mean seen (rounded up to a tidy number). */
    int xmax = np ? pts[np - 1].step : 1;
    if (xmax < 1) xmax = 1;
    double ymax = 1;
    for (int i = 0; i < np; i++)
        for (int m = 0; m < OZ_LLAMA_MATRICES; m++)
            if (!isnan(pts[i].mean[m]) && pts[i].mean[m] > ymax) ymax = pts[i].mean[m];
    double unit = pow(10, floor(log10(ymax)));
    ymax = ceil(ymax / unit * 2) * unit / 2;
    const double W = 720, H = 420, L = 60, Rm = 150, T = 40, Bm = 50, pw = W - L - Rm, ph = H - T - Bm;
    static const char *const colors[OZ_LLAMA_MATRICES] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728",
                                                          "#9467bd", "#8c564b", "#e377c2"};
    char *svg = NULL;
    size_t len = 0, scap = 0;
    bool ok = true;
#define OUT(...) ok = ok && appendf(&svg, &len, &scap, __VA_ARGS__)
    scap = 4096;
    svg = malloc(scap);
    ok = svg != NULL;
    if (ok) svg[0] = '\0';
    OUT("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" "
        "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
        W, H);
    OUT("<text x=\"%.0f\" y=\"22\" font-size=\"14\">InRank: rank k (mean over layers) against step</text>\n", L);
    OUT("<path d=\"M%.1f %.1f V%.1f H%.1f\" stroke=\"black\" fill=\"none\"/>\n", L, T, T + ph, L + pw);
    for (int t = 0; t <= 4; t++) {
        double x = L + pw * t / 4, y = T + ph - ph * t / 4;
        OUT("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%d</text>\n", x, T + ph + 16, xmax * t / 4);
        OUT("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n", L - 6, y + 4, ymax * t / 4);
        OUT("<path d=\"M%.1f %.1f H%.1f\" stroke=\"#ddd\"/>\n", L, y, L + pw);
    }
    OUT("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">optimizer step</text>\n", L + pw / 2, H - 12);
    int legend = 0;
    for (int m = 0; m < OZ_LLAMA_MATRICES; m++) {
        bool any = false;
        for (int i = 0; i < np; i++) any = any || !isnan(pts[i].mean[m]);
        if (!any) continue;
        /* Ranks hold between checks: a step line. */
        OUT("<path stroke=\"%s\" stroke-width=\"2\" fill=\"none\" d=\"", colors[m]);
        bool first = true;
        for (int i = 0; i < np; i++) {
            if (isnan(pts[i].mean[m])) continue;
            double x = L + pw * pts[i].step / xmax, y = T + ph - ph * pts[i].mean[m] / ymax;
            if (first) OUT("M%.1f %.1f", x, y);
            else OUT(" H%.1f V%.1f", x, y);
            first = false;
        }
        OUT("\"/>\n");
        double ly = T + 10 + 18 * legend++;
        OUT("<path d=\"M%.1f %.1f h20\" stroke=\"%s\" stroke-width=\"2\"/><text x=\"%.1f\" y=\"%.1f\">%s</text>\n",
            L + pw + 12, ly, colors[m], L + pw + 38, ly + 4, oz_llama_matrix_path(m));
    }
    OUT("</svg>\n");
#undef OUT
    free(pts);
    if (!ok) {
        free(svg);
        return oz_fail(err, OZ_ERR_NOMEM, "out of memory plotting %s", log_path);
    }
    st = oz_atomic_write(svg_path, svg, len, err);
    free(svg);
    return st;
}
