/* `ounce compress`: WeLore's data-free rank reduction of a model (see model/welore.h). Every
 * attention/MLP matrix's spectrum, one global threshold on min-max-normalised singular values
 * (given, or bisected to a removed-rank ratio), LRCs written as balanced factors, N-LRCs kept
 * dense and untouched. Writes a low-rank model directory (config.json with "ounce_low_rank",
 * model.safetensors with lrc_A/lrc_B factors), compress.json (the per-matrix table) and ranks.svg,
 * atomically. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "io/atomic.h"
#include "model/welore.h"
#include "util/clock.h"

typedef struct {
    int L, n;              /* layers, matrices (L * 7) */
    float **sv;            /* spectra */
    int *r, *kept;
    bool *lrc;
    long long before, after; /* attention/MLP parameters before and after */
} ranks;

static void ranks_free(ranks *rk) {
    for (int i = 0; rk->sv && i < rk->n; i++) free(rk->sv[i]);
    free(rk->sv);
    free(rk->r);
    free(rk->kept);
    free(rk->lrc);
}

static const char *const short_names[OZ_LLAMA_MATRICES] = {"q", "k", "v", "o", "gate", "up", "down"};

/* The per-matrix table as JSON (also the --json line). */
static char *report_json(const ranks *rk, double tau, double target, double achieved, bool uniform,
                         double min_ratio) {
    size_t cap = 512 + (size_t)rk->n * 96, used = 0;
    char *s = malloc(cap);
    if (!s) return NULL;
    int n_lrc = 0;
    for (int i = 0; i < rk->n; i++) n_lrc += rk->lrc[i];
    char tau_text[32] = "null", target_text[32] = "null"; /* the uniform rule has no tau; --threshold no target */
    if (!uniform) snprintf(tau_text, sizeof tau_text, "%.9g", tau);
    if (target >= 0) snprintf(target_text, sizeof target_text, "%.6g", target);
    used += (size_t)snprintf(s + used, cap - used,
                             "{\"method\":\"%s\",\"tau\":%s,\"target_ratio\":%s,\"achieved_ratio\":%.6g,"
                             "\"min_ratio\":%.6g,\"matrix_params_before\":%lld,\"matrix_params_after\":%lld,"
                             "\"lrc\":%d,\"matrices\":[",
                             uniform ? "uniform" : "welore", tau_text, target_text, achieved, min_ratio, rk->before,
                             rk->after, n_lrc);
    for (int i = 0; i < rk->n; i++)
        used += (size_t)snprintf(s + used, cap - used, "%s{\"name\":\"model.layers.%d.%s\",\"rank\":%d,\"kept\":%d,\"lrc\":%s}",
                                 i ? "," : "", i / OZ_LLAMA_MATRICES, oz_llama_matrix_path(i % OZ_LLAMA_MATRICES),
                                 rk->r[i], rk->kept[i], rk->lrc[i] ? "true" : "false");
    snprintf(s + used, cap - used, "]}");
    return s;
}

/* Kept-rank fraction per layer, one line per matrix type; hollow markers for N-LRCs (dense). No
 * dependencies: an SVG any browser shows. */
static char *ranks_svg(const ranks *rk, const char *title) {
    static const char *const colors[OZ_LLAMA_MATRICES] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728",
                                                          "#9467bd", "#8c564b", "#e377c2"};
    const double W = 760, H = 400, x0 = 60, y0 = 40, pw = 560, ph = 300;
    size_t cap = 8192 + (size_t)rk->n * 200, used = 0;
    char *s = malloc(cap);
    if (!s) return NULL;
#define OUT(...) used += (size_t)snprintf(s + used, used < cap ? cap - used : 0, __VA_ARGS__)
    OUT("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" "
        "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
        W, H);
    OUT("<text x=\"%.0f\" y=\"22\" font-size=\"14\">%s</text>\n", x0, title);
    for (int t = 0; t <= 4; t++) {
        double y = y0 + ph - ph * t / 4.0;
        OUT("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", x0, y, x0 + pw, y);
        OUT("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.2f</text>\n", x0 - 6, y + 4, t / 4.0);
    }
    int L = rk->L;
    double dx = L > 1 ? pw / (L - 1) : 0;
    for (int l = 0; l < L; l++)
        OUT("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%d</text>\n", x0 + (L > 1 ? l * dx : pw / 2),
            y0 + ph + 18, l);
    OUT("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">layer</text>\n", x0 + pw / 2, y0 + ph + 36);
    OUT("<text transform=\"translate(16 %.1f) rotate(-90)\" text-anchor=\"middle\">kept rank / full rank</text>\n",
        y0 + ph / 2);
    for (int j = 0; j < OZ_LLAMA_MATRICES; j++) {
        OUT("<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", colors[j]);
        for (int l = 0; l < L; l++) {
            int i = l * OZ_LLAMA_MATRICES + j;
            OUT("%.1f,%.1f ", x0 + (L > 1 ? l * dx : pw / 2), y0 + ph - ph * rk->kept[i] / (double)rk->r[i]);
        }
        OUT("\"/>\n");
        for (int l = 0; l < L; l++) {
            int i = l * OZ_LLAMA_MATRICES + j;
            OUT("<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" stroke=\"%s\" fill=\"%s\"><title>layer %d %s: %d of %d%s</title>"
                "</circle>\n",
                x0 + (L > 1 ? l * dx : pw / 2), y0 + ph - ph * rk->kept[i] / (double)rk->r[i], colors[j],
                rk->lrc[i] ? colors[j] : "white", l, short_names[j], rk->kept[i], rk->r[i], rk->lrc[i] ? "" : " (dense)");
        }
        double ly = y0 + 10 + j * 20;
        OUT("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"/>", x0 + pw + 20, ly,
            x0 + pw + 44, ly, colors[j]);
        OUT("<text x=\"%.1f\" y=\"%.1f\">%s</text>\n", x0 + pw + 50, ly + 4, short_names[j]);
    }
    OUT("<text x=\"%.1f\" y=\"%.1f\" fill=\"#555\">filled: factored (LRC); hollow: dense (N-LRC)</text>\n", x0,
        H - 8);
    OUT("</svg>\n");
#undef OUT
    return s;
}

typedef struct {
    const char *in, *out;
    double ratio, threshold, min_ratio;
    bool uniform, json;
    int threads;
} compress_opts;

/* A progress line on stderr at most every 2 seconds (and for the last item): an SVD per matrix of
 * a 7B model takes hours on a laptop, and the user should see it move. */
typedef struct {
    double start, last;
} progress;

static void progress_line(progress *pg, const char *what, int done, int total) {
    double t = oz_now_s();
    if (done < total && t - pg->last < 2.0) return;
    pg->last = t;
    double elapsed = t - pg->start, left = done > 0 ? elapsed * (total - done) / done : 0;
    fprintf(stderr, "compress: %s %d/%d matrices, %.0f s elapsed, about %.0f s left\n", what, done, total, elapsed,
            left);
}

static oz_status compress(const compress_opts *o, oz_err *err) {
    oz_backend be;
    OZ_TRY(oz_backend_cpu_create(&be, o->threads, err));
    oz_arena arena;
    oz_arena_init(&arena, be.allocator);
    char path[4200], tokenizer[OZ_TOKENIZER_NAME_MAX] = "";
    oz_llama *m = NULL;
    ranks rk = {0};
    float *W = NULL, *host = NULL;
    char *json = NULL, *svg = NULL, tmp[4200] = "";
    oz_param_layout nl = {0};
    oz_llama_config cfg;
    oz_status st = OZ_OK;
    snprintf(path, sizeof path, "%s/config.json", o->in);
    if ((st = oz_config_read(path, &cfg, tokenizer, err))) goto done;
    if (oz_llama_config_is_low_rank(&cfg)) {
        st = oz_fail(err, OZ_ERR_INPUT, "%s is already a low-rank model: compress its dense original (or `ounce convert` it first)",
                     o->in);
        goto done;
    }
    oz_llama_shape shape = {.batch = 1, .seq = 1};
    if ((st = oz_llama_load(&m, o->in, &be, &arena, shape, NULL, err))) goto done;
    const oz_param_layout *lay = oz_llama_get_layout(m);
    rk.L = cfg.num_hidden_layers;
    rk.n = rk.L * OZ_LLAMA_MATRICES;
    rk.sv = calloc((size_t)rk.n, sizeof *rk.sv);
    rk.r = calloc((size_t)rk.n, sizeof *rk.r);
    rk.kept = calloc((size_t)rk.n, sizeof *rk.kept);
    rk.lrc = calloc((size_t)rk.n, sizeof *rk.lrc);
    size_t biggest = 0;
    for (int i = 0; i < rk.n; i++) {
        const oz_param_info *p = &lay->params[oz_llama_matrix_index(lay, i / OZ_LLAMA_MATRICES, i % OZ_LLAMA_MATRICES)];
        if (p->numel > biggest) biggest = p->numel;
    }
    W = malloc(biggest * sizeof *W);
    if (!rk.sv || !rk.r || !rk.kept || !rk.lrc || !W) {
        st = oz_fail(err, OZ_ERR_NOMEM, "out of memory compressing");
        goto done;
    }
    /* Pass 1: every spectrum (the uniform rule needs none). */
    progress pg = {oz_now_s(), oz_now_s()};
    for (int i = 0; i < rk.n; i++) {
        int l = i / OZ_LLAMA_MATRICES, j = i % OZ_LLAMA_MATRICES;
        const oz_param_info *p = &lay->params[oz_llama_matrix_index(lay, l, j)];
        int out = (int)p->shape[0], in = (int)p->shape[1];
        rk.r[i] = out < in ? out : in;
        if (o->uniform) continue;
        rk.sv[i] = malloc((size_t)rk.r[i] * sizeof **rk.sv);
        if (!rk.sv[i]) {
            st = oz_fail(err, OZ_ERR_NOMEM, "out of memory compressing");
            goto done;
        }
        oz_llama_read_param(m, (int)(p - lay->params), W);
        if ((st = oz_welore_spectrum(W, out, in, rk.sv[i], err))) goto done;
        progress_line(&pg, "spectra", i + 1, rk.n);
    }
    oz_welore_plan plan = {rk.n, (const float *const *)rk.sv, rk.r, rk.kept, rk.lrc};
    double tau = o->threshold, achieved;
    if (o->uniform) achieved = oz_welore_uniform(&plan, o->ratio, o->min_ratio);
    else if (o->threshold >= 0) achieved = oz_welore_assign(&plan, tau, o->min_ratio);
    else tau = oz_welore_find_tau(&plan, o->ratio, o->min_ratio, &achieved);

    oz_llama_config ncfg = cfg;
    for (int i = 0; i < rk.n; i++) {
        int l = i / OZ_LLAMA_MATRICES, j = i % OZ_LLAMA_MATRICES;
        int64_t out, in;
        oz_llama_matrix_dims(&cfg, j, &out, &in);
        ncfg.low_rank[l][j] = rk.lrc[i] ? rk.kept[i] : 0;
        rk.before += out * in;
        rk.after += rk.lrc[i] ? (long long)rk.kept[i] * (out + in) : out * in;
    }
    /* Pass 2: the new model's tensors, factors from a rank-k SVD of each LRC. */
    if ((st = oz_param_layout_build(&ncfg, &nl, err))) goto done;
    host = calloc(nl.total, sizeof *host);
    if (!host) {
        st = oz_fail(err, OZ_ERR_NOMEM, "out of memory compressing");
        goto done;
    }
    int n_factored = 0, factored = 0;
    for (int i = 0; i < rk.n; i++) n_factored += rk.lrc[i];
    pg = (progress){oz_now_s(), oz_now_s()};
    for (int i = 0; i < nl.n && st == OZ_OK; i++) {
        const oz_param_info *p = &nl.params[i];
        if (p->factor == 2) continue; /* written with its A */
        if (p->factor == 0) {
            const oz_param_info *q = oz_param_layout_find(lay, p->name);
            oz_llama_read_param(m, (int)(q - lay->params), host + p->offset);
            continue;
        }
        int src = oz_llama_matrix_index(lay, p->layer, p->matrix);
        const oz_param_info *q = &lay->params[src];
        oz_llama_read_param(m, src, W);
        st = oz_welore_factors(W, (int)q->shape[0], (int)q->shape[1], (int)p->shape[0], host + p->offset,
                               host + nl.params[i + 1].offset, err);
        progress_line(&pg, "factors", ++factored, n_factored);
    }
    if (st) goto done;
    /* Assembled aside, swapped in: an existing OUT is replaced only by a complete model. */
    snprintf(tmp, sizeof tmp, "%s.compress-tmp", o->out);
    oz_err ignored = {0};
    oz_remove_tree(tmp, &ignored);
    if ((st = oz_llama_save(tmp, &ncfg, tokenizer, &nl, host, err))) goto done;
    st = oz_copy_hf_side_files(o->in, tmp, err);
    json = report_json(&rk, tau, o->ratio, achieved, o->uniform, o->min_ratio);
    char title[256];
    if (o->uniform) snprintf(title, sizeof title, "uniform rank reduction: %.1f%% of rank removed", 100 * achieved);
    else snprintf(title, sizeof title, "WeLore: tau %.4f, %.1f%% of rank removed, min-ratio %.2f", tau, 100 * achieved,
                  o->min_ratio);
    svg = ranks_svg(&rk, title);
    if (!json || !svg) st = oz_fail(err, OZ_ERR_NOMEM, "out of memory writing the report");
    if (st == OZ_OK) {
        snprintf(path, sizeof path, "%s/compress.json", tmp);
        st = oz_atomic_write(path, json, strlen(json), err);
    }
    if (st == OZ_OK) {
        snprintf(path, sizeof path, "%s/ranks.svg", tmp);
        st = oz_atomic_write(path, svg, strlen(svg), err);
    }
    if (st == OZ_OK) st = oz_replace_dir(tmp, o->out, err);
    if (st) goto done;
    tmp[0] = '\0';

    /* The table: kept rank per layer and matrix, '=' marking a dense (N-LRC) matrix. */
    printf("%-6s", "layer");
    for (int j = 0; j < OZ_LLAMA_MATRICES; j++) printf(" %10s", short_names[j]);
    printf("\n");
    for (int l = 0; l < rk.L; l++) {
        printf("%-6d", l);
        for (int j = 0; j < OZ_LLAMA_MATRICES; j++) {
            int i = l * OZ_LLAMA_MATRICES + j;
            char cell[32];
            if (rk.lrc[i]) snprintf(cell, sizeof cell, "%d/%d", rk.kept[i], rk.r[i]);
            else snprintf(cell, sizeof cell, "=%d", rk.r[i]);
            printf(" %10s", cell);
        }
        printf("\n");
    }
    int n_lrc = 0;
    for (int i = 0; i < rk.n; i++) n_lrc += rk.lrc[i];
    if (o->uniform) printf("uniform: ");
    else printf("tau %.6f: ", tau);
    printf("%.2f%% of rank removed", 100 * achieved);
    if (o->threshold < 0) printf(" (asked %.2f%%)", 100 * o->ratio);
    printf("; %d of %d matrices factored (N/M = kept/full rank, =R dense); attention/MLP parameters %lld -> %lld "
           "(%.1f%%)\nwrote %s (config.json, model.safetensors, compress.json, ranks.svg)\n",
           n_lrc, rk.n, rk.before, rk.after, 100.0 * rk.after / (double)rk.before, o->out);
    if (o->json) printf("%s\n", json);
done:
    if (tmp[0]) {
        oz_err ignored2 = {0};
        oz_remove_tree(tmp, &ignored2);
    }
    free(json);
    free(svg);
    free(host);
    free(W);
    oz_param_layout_free(&nl);
    ranks_free(&rk);
    oz_llama_destroy(m);
    oz_arena_destroy(&arena);
    be.destroy(&be);
    return st;
}

int oz_cmd_compress(int argc, char **argv) {
    char in[4096] = "", out[4096] = "";
    float ratio = -1, threshold = -1, min_ratio = 0.5f;
    bool uniform = false, json = false;
    int threads = 0;
    oz_arg args[] = {
        {"model", OZ_ARG_STR, in, sizeof in, "dense model directory (config.json + weights) (required)", 0},
        {"out", OZ_ARG_STR, out, sizeof out, "directory for the low-rank model (required)", 0},
        {"ratio", OZ_ARG_FLOAT, &ratio, 0,
         "fraction of all attention/MLP rank to remove, in (0, 1): tau is found by bisection", 0},
        {"threshold", OZ_ARG_FLOAT, &threshold, 0, "or the threshold tau on min-max-normalised singular values, in [0, 1]", 0},
        {"uniform", OZ_ARG_FLAG, &uniform, 0, "baseline: remove --ratio of every matrix's rank instead", 0},
        {"min-ratio", OZ_ARG_FLOAT, &min_ratio, 0,
         "a matrix losing more than this fraction of its rank is factored (LRC); others stay dense [0.5]", 0},
        {"threads", OZ_ARG_INT, &threads, 0, "CPU threads, 0 = all cores [0]", 0},
        {"json", OZ_ARG_FLAG, &json, 0, "end with one JSON line: tau, ratios, per-matrix ranks", 0},
    };
    int rc = oz_args_parse("compress",
                           "WeLore: reduce the rank of every attention/MLP matrix by one global threshold on "
                           "normalised singular values; write a low-rank model.",
                           args, (int)(sizeof args / sizeof args[0]), argc, argv);
    if (rc) return rc == 1 ? 0 : 2;
    oz_err err = {0};
    bool has_ratio = args[2].seen, has_tau = args[3].seen;
    if (!in[0] || !out[0]) oz_fail(&err, OZ_ERR_INPUT, "--model and --out are required");
    else if (has_ratio == has_tau) oz_fail(&err, OZ_ERR_INPUT, "give exactly one of --ratio and --threshold");
    else if (has_ratio && !(ratio > 0 && ratio < 1)) oz_fail(&err, OZ_ERR_INPUT, "--ratio must be in (0, 1) (got %g)", (double)ratio);
    else if (has_tau && !(threshold >= 0 && threshold <= 1))
        oz_fail(&err, OZ_ERR_INPUT, "--threshold must be in [0, 1] (got %g)", (double)threshold);
    else if (uniform && !has_ratio) oz_fail(&err, OZ_ERR_INPUT, "--uniform needs --ratio");
    else if (!(min_ratio >= 0 && min_ratio < 1)) oz_fail(&err, OZ_ERR_INPUT, "--min-ratio must be in [0, 1) (got %g)", (double)min_ratio);
    else if (threads < 0) oz_fail(&err, OZ_ERR_INPUT, "--threads must be >= 0");
    if (err.status) return oz_cli_report("compress", &err);
    char real_in[4096], real_out[4096];
    if (realpath(in, real_in) && realpath(out, real_out) && strcmp(real_in, real_out) == 0) {
        oz_fail(&err, OZ_ERR_INPUT, "--out must differ from --model (%s)", in);
        return oz_cli_report("compress", &err);
    }
    compress_opts o = {in, out, has_ratio ? ratio : -1, has_tau ? threshold : -1, min_ratio, uniform, json, threads};
    if (compress(&o, &err) != OZ_OK) return oz_cli_report("compress", &err);
    return 0;
}
