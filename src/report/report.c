/* ounce report (see report.h): metrics.jsonl -> tables of numbers -> SVG paths. */
#include "report/report.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/atomic.h"
#include "mem/arena.h"

/* ------------------------------------------------------------------ a run's numbers */

enum { C_STEP, C_TOKENS, C_TIME, C_LOSS, C_LR, C_GNORM, C_TPS, C_MEM, C_MEMTOTAL = C_MEM + OZ_MEM_NCATEGORIES, NCOLS };
enum { V_STEP, V_TOKENS, V_TIME, V_LOSS, NVCOLS };

struct oz_report_run {
    char dir[4096], name[256];
    double (*rows)[NCOLS];
    size_t n, cap;
    double (*val)[NVCOLS];
    size_t nval, capval;
    cJSON *options; /* trainer_state.json's "options", or NULL */
};

static double num(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 1;
    size_t c = *cap ? *cap * 2 : 256;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return 0;
    *p = q;
    *cap = c;
    return 1;
}

/* One metrics line into the run's tables; 0 when out of memory. */
static int add_line(oz_report_run *r, const cJSON *o, double *time_s) {
    double step = num(o, "step");
    if (!isfinite(step)) return 1;
    if (cJSON_GetObjectItemCaseSensitive(o, "val_loss")) {
        if (!grow((void **)&r->val, &r->capval, r->nval + 1, sizeof *r->val)) return 0;
        double *v = r->val[r->nval++];
        v[V_STEP] = step;
        v[V_LOSS] = num(o, "val_loss");
        v[V_TOKENS] = v[V_TIME] = NAN;
        /* Its step's training line comes just before it. */
        for (size_t i = r->n; i-- > 0;)
            if (r->rows[i][C_STEP] == step) {
                v[V_TOKENS] = r->rows[i][C_TOKENS];
                v[V_TIME] = r->rows[i][C_TIME];
                break;
            }
        return 1;
    }
    double step_s = num(o, "step_s");
    if (isfinite(step_s)) *time_s += step_s;
    if (!cJSON_GetObjectItemCaseSensitive(o, "loss")) return 1; /* a skipped step */
    if (!grow((void **)&r->rows, &r->cap, r->n + 1, sizeof *r->rows)) return 0;
    double *row = r->rows[r->n++];
    row[C_STEP] = step;
    row[C_TOKENS] = num(o, "tokens");
    row[C_TIME] = *time_s;
    row[C_LOSS] = num(o, "loss");
    row[C_LR] = num(o, "lr");
    row[C_GNORM] = num(o, "grad_norm");
    row[C_TPS] = num(o, "tokens_per_s");
    const cJSON *peak = cJSON_GetObjectItemCaseSensitive(o, "peak_bytes");
    for (int c = 0; c < OZ_MEM_NCATEGORIES; c++) row[C_MEM + c] = num(peak, oz_mem_category_name(c)) / 1048576.0;
    row[C_MEMTOTAL] = num(peak, "total") / 1048576.0;
    return 1;
}

/* The newest trainer_state.json: the run's own (written at its end), else its newest checkpoint's. */
static void load_options(oz_report_run *r) {
    char path[4200];
    snprintf(path, sizeof path, "%s/trainer_state.json", r->dir);
    struct stat sb;
    if (stat(path, &sb) != 0) {
        int best = -1;
        DIR *d = opendir(r->dir);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            int s;
            char tail;
            if (sscanf(e->d_name, "step-%d%c", &s, &tail) == 1 && s > best) best = s;
        }
        if (d) closedir(d);
        if (best < 0) return;
        snprintf(path, sizeof path, "%s/step-%d/trainer_state.json", r->dir, best);
    }
    char *text;
    size_t n;
    oz_err ignored = {0};
    if (oz_read_file(path, &text, &n, &ignored) != OZ_OK) return;
    cJSON *root = cJSON_ParseWithLength(text, n);
    free(text);
    cJSON *opts = cJSON_DetachItemFromObjectCaseSensitive(root, "options");
    cJSON_Delete(root);
    if (cJSON_IsObject(opts)) r->options = opts;
    else cJSON_Delete(opts);
}

oz_status oz_report_load(oz_report_run **out, const char *dir, oz_err *err) {
    *out = NULL;
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) return oz_fail(err, OZ_ERR_INPUT, "%s: no such run directory", dir);
    char path[4200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    if (stat(path, &sb) != 0)
        return oz_fail(err, OZ_ERR_INPUT, "%s: no metrics.jsonl (not a run directory of `ounce train`)", dir);
    char *text;
    size_t n;
    OZ_TRY(oz_read_file(path, &text, &n, err));
    oz_report_run *r = calloc(1, sizeof *r);
    if (!r) {
        free(text);
        return oz_fail(err, OZ_ERR_NOMEM, "out of memory reading %s", path);
    }
    snprintf(r->dir, sizeof r->dir, "%s", dir);
    size_t k = strlen(r->dir);
    while (k > 1 && r->dir[k - 1] == '/') r->dir[--k] = '\0';
    const char *base = strrchr(r->dir, '/');
    snprintf(r->name, sizeof r->name, "%s", base && base[1] ? base + 1 : r->dir);
    double time_s = 0;
    int oom = 0;
    for (char *line = text; line < text + n && !oom;) {
        char *end = memchr(line, '\n', (size_t)(text + n - line));
        if (!end) break; /* a line still being written */
        cJSON *o = cJSON_ParseWithLength(line, (size_t)(end - line));
        if (o && !add_line(r, o, &time_s)) oom = 1;
        cJSON_Delete(o);
        line = end + 1;
    }
    free(text);
    if (oom) {
        oz_report_run_free(r);
        return oz_fail(err, OZ_ERR_NOMEM, "out of memory reading %s", path);
    }
    load_options(r);
    *out = r;
    return OZ_OK;
}

void oz_report_run_free(oz_report_run *r) {
    if (!r) return;
    free(r->rows);
    free(r->val);
    cJSON_Delete(r->options);
    free(r);
}

size_t oz_report_run_steps(const oz_report_run *r) { return r->n; }

/* ------------------------------------------------------------------ text output */

typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} sb;

__attribute__((format(printf, 2, 3))) static void sbf(sb *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) {
            b->oom = 1;
            return;
        }
        if (b->p && (size_t)k < b->cap - b->n) {
            b->n += (size_t)k;
            return;
        }
        size_t c = b->cap ? b->cap * 2 : 65536;
        while (c < b->n + (size_t)k + 1) c *= 2;
        char *q = realloc(b->p, c);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = c;
    }
}

/* Text for HTML and SVG: & < > " escaped. */
static void sbesc(sb *b, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '&': sbf(b, "&amp;"); break;
        case '<': sbf(b, "&lt;"); break;
        case '>': sbf(b, "&gt;"); break;
        case '"': sbf(b, "&quot;"); break;
        default: sbf(b, "%c", *s);
        }
    }
}

static oz_status sb_done(sb *b, char **out, size_t *len, oz_err *err) {
    if (b->oom || !b->p) {
        free(b->p);
        return oz_fail(err, OZ_ERR_NOMEM, "out of memory drawing the report");
    }
    *out = b->p;
    *len = b->n;
    return OZ_OK;
}

/* ------------------------------------------------------------------ charts */

static const char *const palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                      "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};
#define NPAL (int)(sizeof palette / sizeof palette[0])

typedef struct {
    const char *id, *title, *xlabel, *ylabel;
    int xcol, ycol;
    int smooth;  /* a smoothed line over the faint raw one */
    int val;     /* validation points (V_* columns) */
} chart_def;

static const chart_def charts[] = {
    {"loss", "Training loss vs tokens (validation as dots)", "tokens", "loss (nats/token)", C_TOKENS, C_LOSS, 1, 1},
    {"loss_time", "Training loss vs training time", "training time (s)", "loss (nats/token)", C_TIME, C_LOSS, 1, 0},
    {"val_loss", "Validation loss vs tokens", "tokens", "validation loss (nats/token)", V_TOKENS, V_LOSS, 0, 2},
    {"lr", "Learning rate", "step", "learning rate", C_STEP, C_LR, 0, 0},
    {"grad_norm", "Gradient norm (before clipping)", "step", "global gradient norm", C_STEP, C_GNORM, 1, 0},
    {"tokens_per_s", "Throughput", "step", "tokens/s (mean over the process)", C_STEP, C_TPS, 0, 0},
};
#define NCHARTS (int)(sizeof charts / sizeof charts[0])

enum { W = 560, H = 320, ML = 64, MR = 16, MT = 40, MB = 44 };

typedef struct {
    double x0, x1, y0, y1;
} box;

static void extend(box *b, double x, double y) {
    if (!isfinite(x) || !isfinite(y)) return;
    if (x < b->x0) b->x0 = x;
    if (x > b->x1) b->x1 = x;
    if (y < b->y0) b->y0 = y;
    if (y > b->y1) b->y1 = y;
}

static double px(const box *b, double x) { return ML + (x - b->x0) / (b->x1 - b->x0) * (W - ML - MR); }
static double py(const box *b, double y) { return H - MB - (y - b->y0) / (b->y1 - b->y0) * (H - MT - MB); }

static double nice_step(double range) {
    double raw = range / 5, mag = pow(10, floor(log10(raw))), f = raw / mag;
    return mag * (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10);
}

static void fmt_tick(char *buf, size_t cap, double v, double step) {
    double a = fabs(v);
    if (fabs(v) < step * 1e-6) snprintf(buf, cap, "0");
    else if (a >= 1e6) snprintf(buf, cap, "%.3gM", v / 1e6);
    else if (a >= 1e4) snprintf(buf, cap, "%.4gk", v / 1e3);
    else snprintf(buf, cap, "%.4g", v);
}

/* An empty box gets a unit range, a flat one a little room, then both axes are padded to ticks. */
static void finish_box(box *b, int from_zero_y) {
    if (!(b->x0 <= b->x1)) *b = (box){0, 1, 0, 1};
    if (b->x1 - b->x0 <= 0) b->x1 = b->x0 + 1;
    if (from_zero_y && b->y0 > 0) b->y0 = 0;
    if (b->y1 - b->y0 <= 0) {
        double d = fabs(b->y0) > 0 ? fabs(b->y0) * 0.1 : 1;
        b->y0 -= d;
        b->y1 += d;
    }
    double s = nice_step(b->y1 - b->y0);
    b->y0 = floor(b->y0 / s) * s;
    b->y1 = ceil(b->y1 / s) * s;
}

static void axes(sb *b, const box *bx, const char *title, const char *xlabel, const char *ylabel) {
    sbf(b, "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"#fff\"/>\n", W, H);
    sbf(b, "<text x=\"%d\" y=\"16\" class=\"title\" font-size=\"14\" font-weight=\"bold\">", ML);
    sbesc(b, title);
    sbf(b, "</text>\n<g class=\"axes\" font-size=\"11\" fill=\"#444\">\n");
    char t[32];
    double s = nice_step(bx->y1 - bx->y0);
    for (double v = bx->y0; v <= bx->y1 + s * 1e-9; v += s) {
        double y = py(bx, v);
        fmt_tick(t, sizeof t, v, s);
        sbf(b, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>", ML, y, W - MR, y);
        sbf(b, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", ML - 5, y + 4, t);
    }
    s = nice_step(bx->x1 - bx->x0);
    for (double v = ceil(bx->x0 / s) * s; v <= bx->x1 + s * 1e-9; v += s) {
        double x = px(bx, v);
        fmt_tick(t, sizeof t, v, s);
        sbf(b, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#e4e4e4\"/>", x, MT, x, H - MB);
        sbf(b, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%s</text>\n", x, H - MB + 15, t);
    }
    sbf(b, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#999\"/>\n", ML, MT, W - ML - MR,
        H - MT - MB);
    sbf(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">", (ML + W - MR) / 2, H - 8);
    sbesc(b, xlabel);
    sbf(b, "</text>\n<text transform=\"translate(14,%d) rotate(-90)\" text-anchor=\"middle\">", (MT + H - MB) / 2);
    sbesc(b, ylabel);
    sbf(b, "</text>\n</g>\n");
}

/* A legend entry at slot i of the line under the title. */
static void legend(sb *b, int *x, const char *color, const char *name) {
    sbf(b, "<g class=\"legend\"><rect x=\"%d\" y=\"24\" width=\"12\" height=\"8\" fill=\"%s\"/>", *x, color);
    sbf(b, "<text x=\"%d\" y=\"32\" font-size=\"11\">", *x + 16);
    sbesc(b, name);
    sbf(b, "</text></g>\n");
    *x += 26 + 6 * (int)strlen(name);
}

/* A polyline through finite points, broken at missing ones; long series are thinned. */
static void path(sb *b, const box *bx, const double *xs, const double *ys, size_t n, size_t stride, const char *attrs) {
    size_t every = n > 3000 ? n / 1500 : 1;
    sbf(b, "<path %s d=\"", attrs);
    int pen = 0;
    for (size_t i = 0; i < n; i += (i + every < n || i + 1 == n) ? every : n - 1 - i) {
        double x = xs[i * stride], y = ys[i * stride];
        if (!isfinite(x) || !isfinite(y)) {
            pen = 0;
            if (i + 1 == n) break;
            continue;
        }
        sbf(b, "%c%.1f %.1f", pen ? 'L' : 'M', px(bx, x), py(bx, y));
        pen = 1;
        if (i + 1 == n) break;
    }
    sbf(b, "\"/>\n");
}

/* TensorBoard's smoothing: an exponential moving average, debiased at the start. Its lag is about
 * w / (1 - w) points: here 1% of the series, so a short run's fast early fall is not smeared. */
static void smooth(const double *ys, size_t stride, size_t n, double *out) {
    double w = 1 - 1 / (1 + n / 100.0), acc = 0, norm = 0;
    w = w < 0.6 ? 0.6 : w > 0.98 ? 0.98 : w;
    for (size_t i = 0; i < n; i++) {
        double y = ys[i * stride];
        if (!isfinite(y)) {
            out[i] = NAN;
            continue;
        }
        acc = acc * w + (1 - w) * y;
        norm = norm * w + (1 - w);
        out[i] = acc / norm;
    }
}

static void chart_svg(sb *b, const chart_def *c, oz_report_run *const *runs, int n, int standalone) {
    box bx = {INFINITY, -INFINITY, INFINITY, -INFINITY};
    int from_zero = c->ycol == C_LR || c->ycol == C_TPS || c->ycol == C_GNORM;
    for (int r = 0; r < n; r++) {
        if (c->val != 2)
            for (size_t i = 0; i < runs[r]->n; i++) extend(&bx, runs[r]->rows[i][c->xcol], runs[r]->rows[i][c->ycol]);
        if (c->val)
            for (size_t i = 0; i < runs[r]->nval; i++) extend(&bx, runs[r]->val[i][V_TOKENS], runs[r]->val[i][V_LOSS]);
    }
    finish_box(&bx, from_zero);
    sbf(b, "<svg %sclass=\"chart\" id=\"chart-%s\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
           "font-family=\"sans-serif\">\n",
        standalone ? "xmlns=\"http://www.w3.org/2000/svg\" " : "", c->id, W, H, W, H);
    axes(b, &bx, c->title, c->xlabel, c->ylabel);
    int lx = ML;
    for (int r = 0; r < n; r++) legend(b, &lx, palette[r % NPAL], runs[r]->name);
    for (int r = 0; r < n; r++) {
        const oz_report_run *run = runs[r];
        const char *col = palette[r % NPAL];
        char attrs[160];
        sbf(b, "<g class=\"series\" data-run=\"");
        sbesc(b, run->name);
        sbf(b, "\" fill=\"none\">\n");
        if (c->val == 2) {
            snprintf(attrs, sizeof attrs, "stroke=\"%s\" stroke-width=\"1.8\"", col);
            if (run->nval) path(b, &bx, &run->val[0][V_TOKENS], &run->val[0][V_LOSS], run->nval, NVCOLS, attrs);
        } else if (run->n) {
            const double *xs = &run->rows[0][c->xcol], *ys = &run->rows[0][c->ycol];
            double *sm = c->smooth ? malloc(run->n * sizeof *sm) : NULL;
            if (c->smooth && !sm) b->oom = 1;
            if (sm) {
                smooth(ys, NCOLS, run->n, sm);
                snprintf(attrs, sizeof attrs, "class=\"raw\" stroke=\"%s\" stroke-opacity=\"0.25\" stroke-width=\"1\"", col);
                path(b, &bx, xs, ys, run->n, NCOLS, attrs);
                /* the smoothed line shares the raw one's x values */
                double *sx = malloc(run->n * sizeof *sx);
                if (!sx) b->oom = 1;
                else {
                    for (size_t i = 0; i < run->n; i++) sx[i] = xs[i * NCOLS];
                    snprintf(attrs, sizeof attrs, "class=\"smoothed\" stroke=\"%s\" stroke-width=\"1.8\"", col);
                    path(b, &bx, sx, sm, run->n, 1, attrs);
                    free(sx);
                }
                free(sm);
            } else {
                snprintf(attrs, sizeof attrs, "stroke=\"%s\" stroke-width=\"1.6\"", col);
                path(b, &bx, xs, ys, run->n, NCOLS, attrs);
            }
        }
        if (c->val)
            for (size_t i = 0; i < run->nval; i++) {
                double x = run->val[i][V_TOKENS], y = run->val[i][V_LOSS];
                if (!isfinite(x) || !isfinite(y)) continue;
                sbf(b, "<circle class=\"val\" cx=\"%.1f\" cy=\"%.1f\" r=\"3.2\" fill=\"%s\" stroke=\"#fff\"/>\n",
                    px(&bx, x), py(&bx, y), col);
            }
        sbf(b, "</g>\n");
    }
    if (n && !runs[0]->n && !runs[0]->nval)
        sbf(b, "<text x=\"%d\" y=\"%d\" font-size=\"12\" fill=\"#888\">no steps logged yet</text>\n", ML + 10, MT + 20);
    sbf(b, "</svg>\n");
}

/* One run's peak memory by category, stacked (MiB against step). */
static void memory_svg(sb *b, const oz_report_run *run, int standalone) {
    int used[OZ_MEM_NCATEGORIES] = {0};
    box bx = {INFINITY, -INFINITY, 0, -INFINITY};
    for (size_t i = 0; i < run->n; i++) {
        double total = 0;
        for (int c = 0; c < OZ_MEM_NCATEGORIES; c++) {
            double v = run->rows[i][C_MEM + c];
            if (isfinite(v) && v > 0) used[c] = 1, total += v;
        }
        extend(&bx, run->rows[i][C_STEP], total);
    }
    finish_box(&bx, 1);
    char title[320];
    snprintf(title, sizeof title, "Peak memory by category: %s", run->name);
    sbf(b, "<svg %sclass=\"chart memory\" id=\"chart-memory-", standalone ? "xmlns=\"http://www.w3.org/2000/svg\" " : "");
    sbesc(b, run->name);
    sbf(b, "\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" font-family=\"sans-serif\">\n", W, H, W, H);
    axes(b, &bx, title, "step", "MiB (arena high-water mark, stacked)");
    int lx = ML, any = 0;
    for (int c = 0; c < OZ_MEM_NCATEGORIES; c++)
        if (used[c]) legend(b, &lx, palette[c % NPAL], oz_mem_category_name(c)), any = 1;
    double *below = calloc(run->n ? run->n : 1, sizeof *below);
    if (!below) b->oom = 1;
    for (int c = 0; c < OZ_MEM_NCATEGORIES && below && run->n; c++) {
        if (!used[c]) continue;
        sbf(b, "<path class=\"area\" data-category=\"%s\" fill=\"%s\" fill-opacity=\"0.75\" d=\"", oz_mem_category_name(c),
            palette[c % NPAL]);
        size_t every = run->n > 3000 ? run->n / 1500 : 1;
        for (size_t i = 0; i < run->n; i += every) {
            double v = run->rows[i][C_MEM + c];
            sbf(b, "%c%.1f %.1f", i ? 'L' : 'M', px(&bx, run->rows[i][C_STEP]), py(&bx, below[i] + (isfinite(v) ? v : 0)));
        }
        for (size_t i = (run->n - 1) / every * every + 1; i-- > 0;) {
            if (i % every) continue;
            sbf(b, "L%.1f %.1f", px(&bx, run->rows[i][C_STEP]), py(&bx, below[i]));
        }
        sbf(b, "Z\"/>\n");
        for (size_t i = 0; i < run->n; i++) {
            double v = run->rows[i][C_MEM + c];
            below[i] += isfinite(v) ? v : 0;
        }
    }
    free(below);
    if (!any)
        sbf(b, "<text x=\"%d\" y=\"%d\" font-size=\"12\" fill=\"#888\">no peak_bytes in metrics.jsonl (a run of an "
               "older ounce)</text>\n", ML + 10, MT + 20);
    sbf(b, "</svg>\n");
}

/* ------------------------------------------------------------------ the page */

static void option_text(char *buf, size_t cap, const cJSON *v) {
    if (!v) snprintf(buf, cap, "-");
    else if (cJSON_IsString(v)) snprintf(buf, cap, "%s", v->valuestring);
    else if (cJSON_IsBool(v)) snprintf(buf, cap, "%s", cJSON_IsTrue(v) ? "true" : "false");
    else if (cJSON_IsNumber(v)) snprintf(buf, cap, "%.6g", v->valuedouble); /* floats were saved as doubles */
    else snprintf(buf, cap, "?");
}

static void settings_table(sb *b, oz_report_run *const *runs, int n) {
    sbf(b, "<h2>Settings</h2>\n<table class=\"settings\">\n<thead><tr><th>option</th>");
    for (int r = 0; r < n; r++) {
        sbf(b, "<th>");
        sbesc(b, runs[r]->name);
        sbf(b, "</th>");
    }
    sbf(b, "</tr></thead>\n<tbody>\n");
    /* The first run's keys, then any others' keys it lacks. */
    for (int r0 = 0; r0 < n; r0++) {
        const cJSON *item;
        cJSON_ArrayForEach(item, runs[r0]->options) {
            int seen = 0;
            for (int q = 0; q < r0; q++) seen |= cJSON_GetObjectItemCaseSensitive(runs[q]->options, item->string) != NULL;
            if (seen) continue;
            char first[512], t[512];
            option_text(first, sizeof first, cJSON_GetObjectItemCaseSensitive(runs[0]->options, item->string));
            int differs = 0;
            for (int r = 1; r < n; r++) {
                option_text(t, sizeof t, cJSON_GetObjectItemCaseSensitive(runs[r]->options, item->string));
                differs |= strcmp(t, first) != 0;
            }
            sbf(b, "<tr%s><td>", differs ? " class=\"differs\"" : "");
            sbesc(b, item->string);
            sbf(b, "</td>");
            for (int r = 0; r < n; r++) {
                option_text(t, sizeof t, cJSON_GetObjectItemCaseSensitive(runs[r]->options, item->string));
                sbf(b, "<td>");
                sbesc(b, t);
                sbf(b, "</td>");
            }
            sbf(b, "</tr>\n");
        }
    }
    sbf(b, "</tbody>\n</table>\n");
    int any = 0;
    for (int r = 0; r < n; r++) any |= runs[r]->options != NULL;
    if (!any)
        sbf(b, "<p class=\"note\">No trainer_state.json yet: a run writes one with each checkpoint and at its end.</p>\n");
}

static void summary_table(sb *b, oz_report_run *const *runs, int n) {
    sbf(b, "<table class=\"summary\">\n<thead><tr><th>run</th><th>directory</th><th>steps logged</th><th>tokens</th>"
           "<th>training time</th><th>last loss</th><th>last val loss</th><th>peak MiB</th></tr></thead>\n<tbody>\n");
    for (int r = 0; r < n; r++) {
        const oz_report_run *run = runs[r];
        const double *last = run->n ? run->rows[run->n - 1] : NULL;
        sbf(b, "<tr><td><span class=\"swatch\" style=\"background:%s\"></span>", palette[r % NPAL]);
        sbesc(b, run->name);
        sbf(b, "</td><td>");
        sbesc(b, run->dir);
        if (last)
            sbf(b, "</td><td>%.0f</td><td>%.0f</td><td>%.1f s</td><td>%.4f</td>", last[C_STEP], last[C_TOKENS],
                last[C_TIME], last[C_LOSS]);
        else sbf(b, "</td><td>0</td><td>-</td><td>-</td><td>-</td>");
        if (run->nval) sbf(b, "<td>%.4f</td>", run->val[run->nval - 1][V_LOSS]);
        else sbf(b, "<td>-</td>");
        if (last && isfinite(last[C_MEMTOTAL])) sbf(b, "<td>%.1f</td></tr>\n", last[C_MEMTOTAL]);
        else sbf(b, "<td>-</td></tr>\n");
    }
    sbf(b, "</tbody>\n</table>\n");
}

static const char css[] =
    "body{font-family:sans-serif;margin:24px;color:#222;background:#f6f6f6}"
    "h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:24px 0 8px}"
    ".charts{display:flex;flex-wrap:wrap;gap:12px;margin-top:14px}"
    ".charts svg{background:#fff;border:1px solid #ddd;border-radius:4px}"
    "table{border-collapse:collapse;background:#fff;font-size:13px}"
    "td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}"
    "tr.differs td{background:#fff4d6}.note{color:#666;font-size:13px}"
    ".swatch{display:inline-block;width:10px;height:10px;margin-right:6px}";

oz_status oz_report_html(oz_report_run *const *runs, int n, char **out, size_t *len, oz_err *err) {
    sb b = {0};
    sbf(&b, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>ounce report: ");
    for (int r = 0; r < n; r++) {
        if (r) sbf(&b, ", ");
        sbesc(&b, runs[r]->name);
    }
    sbf(&b, "</title>\n<style>%s</style>\n</head>\n<body>\n<h1>ounce report</h1>\n", css);
    sbf(&b, "<p class=\"note\">%d run%s, read from metrics.jsonl; smoothed lines are a debiased "
            "exponential moving average (as TensorBoard's) over the faint raw ones. Training time is the sum of the steps' times "
            "(evaluations and saves excluded).</p>\n",
        n, n == 1 ? "" : "s");
    summary_table(&b, runs, n);
    sbf(&b, "<div class=\"charts\">\n");
    for (int c = 0; c < NCHARTS; c++) chart_svg(&b, &charts[c], runs, n, 0);
    for (int r = 0; r < n; r++) memory_svg(&b, runs[r], 0);
    sbf(&b, "</div>\n");
    settings_table(&b, runs, n);
    sbf(&b, "</body>\n</html>\n");
    return sb_done(&b, out, len, err);
}

oz_status oz_report_svg(oz_report_run *const *runs, int n, const char *metric, char **out, size_t *len, oz_err *err) {
    sb b = {0};
    sbf(&b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    if (strcmp(metric, "memory") == 0) {
        memory_svg(&b, runs[0], 1);
        return sb_done(&b, out, len, err);
    }
    for (int c = 0; c < NCHARTS; c++)
        if (strcmp(metric, charts[c].id) == 0) {
            chart_svg(&b, &charts[c], runs, n, 1);
            return sb_done(&b, out, len, err);
        }
    free(b.p);
    return oz_fail(err, OZ_ERR_INPUT, "--metric %s: not a chart (one of %s)", metric, OZ_REPORT_METRICS);
}
