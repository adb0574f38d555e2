/* ounce report (report/): the page is well-formed (every element it emits opens and closes in
 * order), has one chart per metric and one series per run, draws a memory chart per run, reads a
 * run still being written (a half line at the end), escapes names, and the SVG format is one
 * standalone chart. */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "harness.h"
#include "io/atomic.h"
#include "report/report.h"

/* A small well-formedness check: tags balance, in order, quotes close, and nothing but the HTML
 * void elements goes unclosed. Returns 0 when well-formed, else writes why to msg. */
static int check_tags(const char *s, char *msg, size_t cap) {
    static const char *const voids[] = {"meta", "br", "hr", "img", "input", "link"};
    char stack[256][32];
    int depth = 0;
    for (const char *p = s; *p; p++) {
        if (*p == '>') {
            snprintf(msg, cap, "a stray '>' at byte %ld", (long)(p - s));
            return 1;
        }
        if (*p != '<') continue;
        if (!strncmp(p, "<!--", 4)) {
            const char *e = strstr(p, "-->");
            if (!e) return snprintf(msg, cap, "an unclosed comment"), 1;
            p = e + 2;
            continue;
        }
        if (p[1] == '!' || p[1] == '?') { /* <!DOCTYPE html>, <?xml ...?> */
            p = strchr(p, '>');
            if (!p) return snprintf(msg, cap, "an unclosed declaration"), 1;
            continue;
        }
        int closing = p[1] == '/';
        const char *n = p + 1 + closing;
        size_t len = strspn(n, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-");
        if (!len || len >= 32) return snprintf(msg, cap, "a bad tag name at byte %ld", (long)(p - s)), 1;
        char name[32];
        memcpy(name, n, len);
        name[len] = '\0';
        const char *q = n + len;
        char quote = 0;
        for (; *q && (quote || *q != '>'); q++) {
            if (*q == '<' && !quote) return snprintf(msg, cap, "'<' inside the tag %s", name), 1;
            if (*q == '"') quote = quote ? 0 : '"';
        }
        if (!*q) return snprintf(msg, cap, "an unclosed tag %s", name), 1;
        int self = q[-1] == '/';
        p = q;
        if (closing) {
            if (!depth || strcmp(stack[depth - 1], name) != 0)
                return snprintf(msg, cap, "</%s> closes %s", name, depth ? stack[depth - 1] : "nothing"), 1;
            depth--;
            continue;
        }
        int is_void = 0;
        for (size_t i = 0; i < sizeof voids / sizeof voids[0]; i++) is_void |= strcmp(name, voids[i]) == 0;
        if (self || is_void) continue;
        if (depth == 256) return snprintf(msg, cap, "nested too deep"), 1;
        snprintf(stack[depth++], 32, "%s", name);
        /* style's text is CSS, never markup */
        if (!strcmp(name, "style")) {
            const char *e = strstr(p, "</style>");
            if (!e) return snprintf(msg, cap, "an unclosed style"), 1;
            p = e - 1;
        }
    }
    if (depth) return snprintf(msg, cap, "<%s> never closed", stack[depth - 1]), 1;
    return 0;
}

static int count(const char *s, const char *what) {
    int n = 0;
    for (const char *p = strstr(s, what); p; p = strstr(p + 1, what)) n++;
    return n;
}

/* The text of the svg element with this id (a pointer to "<svg" and its length). */
static const char *chart(const char *html, const char *id, size_t *len) {
    char key[96];
    snprintf(key, sizeof key, "id=\"chart-%s\"", id);
    const char *p = strstr(html, key);
    if (!p) return NULL;
    while (p > html && strncmp(p, "<svg", 4) != 0) p--;
    const char *e = strstr(p, "</svg>");
    *len = e ? (size_t)(e - p) : 0;
    return p;
}

static void write_run(const char *dir, int steps, double base, int half_line, const char *optim) {
    mkdir(dir, 0755);
    char path[512], *buf = malloc(1 << 20);
    size_t n = 0;
    for (int s = 1; s <= steps; s++) {
        n += (size_t)snprintf(buf + n, (1 << 20) - n,
                              "{\"step\":%d,\"loss\":%.6f,\"lr\":%.6g,\"grad_norm\":%.4f,\"tokens_per_s\":%.1f,\"step_s\":0.5,"
                              "\"tokens\":%d,\"peak_bytes\":{\"weights\":%d,\"grads\":1048576,\"optimizer\":2097152,"
                              "\"projections\":0,\"quant_scales\":0,\"activations\":4194304,\"scratch\":0,\"total\":9000000}}\n",
                              s, base - 0.01 * s + 0.05 * (s % 3), 1e-3 * s / steps, 1.0 + 0.1 * (s % 5), 1000.0 + s, 256 * s,
                              1048576 + 1024 * s);
        if (s % 10 == 0) n += (size_t)snprintf(buf + n, (1 << 20) - n, "{\"step\":%d,\"val_loss\":%.6f,\"val_tokens\":1024}\n", s, base - 0.012 * s);
        if (s == 7) n += (size_t)snprintf(buf + n, (1 << 20) - n, "{\"step\":8,\"skipped\":true,\"lr\":0.001,\"tokens\":2048}\n");
    }
    if (half_line) n += (size_t)snprintf(buf + n, (1 << 20) - n, "{\"step\":%d,\"loss\":3.1", steps + 1);
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    oz_err err = {0};
    CHECK(oz_atomic_write(path, buf, n, &err) == OZ_OK, "%s", err.msg);
    snprintf(path, sizeof path, "%s/trainer_state.json", dir);
    n = (size_t)snprintf(buf, 1 << 20, "{\"step\":%d,\"options\":{\"steps\":%d,\"optim\":\"%s\",\"lr\":0.0010000000474974513}}",
                         steps, steps, optim);
    CHECK(oz_atomic_write(path, buf, n, &err) == OZ_OK, "%s", err.msg);
    free(buf);
}

static const char *const metrics[] = {"loss", "loss_time", "val_loss", "lr", "grad_norm", "tokens_per_s"};
#define NMETRICS (int)(sizeof metrics / sizeof metrics[0])

static void test_page(void) {
    char root[] = "/tmp/ounce-report.XXXXXX";
    if (!mkdtemp(root)) return;
    char a[300], b[300], c[300];
    snprintf(a, sizeof a, "%s/adamw", root);
    snprintf(b, sizeof b, "%s/galore<&>", root); /* a name that needs escaping */
    snprintf(c, sizeof c, "%s/running", root);
    write_run(a, 40, 5.5, 0, "adamw");
    write_run(b, 30, 5.3, 0, "galore");
    write_run(c, 12, 5.4, 1, "adamw");
    oz_report_run *runs[3] = {0};
    oz_err err = {0};
    CHECK(oz_report_load(&runs[0], a, &err) == OZ_OK, "%s", err.msg);
    CHECK(oz_report_load(&runs[1], b, &err) == OZ_OK, "%s", err.msg);
    CHECK(oz_report_load(&runs[2], c, &err) == OZ_OK, "%s", err.msg);
    if (!runs[0] || !runs[1] || !runs[2]) return;
    CHECK(oz_report_run_steps(runs[0]) == 40, "a skipped line is no step: %zu", oz_report_run_steps(runs[0]));
    CHECK(oz_report_run_steps(runs[2]) == 12, "the half-written last line of a running run is ignored: %zu",
          oz_report_run_steps(runs[2]));
    for (int nr = 1; nr <= 3; nr++) {
        char *html = NULL;
        size_t len = 0;
        CHECK(oz_report_html(runs, nr, &html, &len, &err) == OZ_OK, "%s", err.msg);
        if (!html) continue;
        char why[200] = "";
        CHECK(check_tags(html, why, sizeof why) == 0, "%d runs: the page is not well-formed: %s", nr, why);
        CHECK(strlen(html) == len, "length");
        CHECK(count(html, "<svg") == NMETRICS + nr, "%d runs: %d charts", nr, count(html, "<svg"));
        for (int m = 0; m < NMETRICS; m++) {
            size_t cl = 0;
            const char *ch = chart(html, metrics[m], &cl);
            CHECK(ch != NULL, "chart %s", metrics[m]);
            if (!ch) continue;
            char *copy = strndup(ch, cl);
            CHECK(copy && count(copy, "<g class=\"series\"") == nr, "%s: %d series for %d runs", metrics[m],
                  copy ? count(copy, "<g class=\"series\"") : -1, nr);
            if (m == 0) CHECK(copy && count(copy, "class=\"val\"") == (nr >= 1 ? 4 : 0) + (nr >= 2 ? 3 : 0) + (nr >= 3 ? 1 : 0),
                              "loss: validation dots: %d", copy ? count(copy, "class=\"val\"") : -1);
            if (m == 0) CHECK(copy && count(copy, "class=\"smoothed\"") == nr && count(copy, "class=\"raw\"") == nr,
                              "loss: raw and smoothed lines per run");
            free(copy);
        }
        CHECK(count(html, "class=\"chart memory\"") == nr, "a memory chart per run");
        CHECK(count(html, "class=\"area\"") == 4 * nr, "4 categories used, stacked: %d", count(html, "class=\"area\""));
        CHECK(!strstr(html, "galore<&>"), "names are escaped");
        CHECK(nr < 2 || strstr(html, "galore&lt;&amp;&gt;"), "escaped name present");
        CHECK(!strstr(html, "http://") && !strstr(html, "https://") && !strstr(html, "<script"),
              "self-contained: no links, no scripts");
        CHECK(strstr(html, "<table class=\"settings\">") != NULL, "settings table");
        CHECK(nr < 2 || strstr(html, "<tr class=\"differs\"><td>optim</td><td>adamw</td><td>galore</td>"),
              "the settings that differ are marked");
        CHECK(strstr(html, "<td>0.001</td>") != NULL, "floats shown short");
        free(html);
    }
    /* one chart as SVG */
    char *svg = NULL;
    size_t len = 0;
    CHECK(oz_report_svg(runs, 2, "loss", &svg, &len, &err) == OZ_OK, "%s", err.msg);
    if (svg) {
        char why[200] = "";
        CHECK(check_tags(svg, why, sizeof why) == 0, "svg: %s", why);
        CHECK(count(svg, "<svg") == 1 && strstr(svg, "xmlns=\"http://www.w3.org/2000/svg\""), "a standalone svg");
        CHECK(count(svg, "<g class=\"series\"") == 2, "two series");
        free(svg);
    }
    svg = NULL;
    CHECK(oz_report_svg(runs, 1, "memory", &svg, &len, &err) == OZ_OK && svg && count(svg, "class=\"area\"") == 4, "memory svg");
    free(svg);
    oz_err e2 = {0};
    CHECK(oz_report_svg(runs, 1, "nonsense", &svg, &len, &e2) == OZ_ERR_INPUT && strstr(e2.msg, "nonsense"), "unknown metric");
    for (int i = 0; i < 3; i++) oz_report_run_free(runs[i]);
    oz_report_run *none = NULL;
    oz_err e3 = {0};
    CHECK(oz_report_load(&none, "/nonexistent/run", &e3) == OZ_ERR_INPUT && !none, "missing run");
    oz_err e4 = {0};
    CHECK(oz_report_load(&none, root, &e4) == OZ_ERR_INPUT && strstr(e4.msg, "metrics.jsonl"), "a directory without metrics");
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    CHECK(system(cmd) == 0, "cleanup");
}

/* The checker itself must catch what it is for. */
static void test_checker_fails(void) {
    char why[200];
    CHECK(check_tags("<svg><g></svg></g>", why, sizeof why) != 0, "crossed tags");
    CHECK(check_tags("<div><p>text</div>", why, sizeof why) != 0, "an unclosed p");
    CHECK(check_tags("<a href=\"x>\">", why, sizeof why) != 0, "unclosed a");
    CHECK(check_tags("<p>a > b</p>", why, sizeof why) != 0, "a stray >");
    CHECK(check_tags("<!DOCTYPE html><html><head><meta charset=\"utf-8\"></head><body><br></body></html>", why,
                     sizeof why) == 0, "void elements: %s", why);
}

int main(void) {
    RUN(test_checker_fails);
    RUN(test_page);
    return oz_test_finish("test_report");
}
