/* `ounce report RUN [RUN...] --out report.html`: one self-contained HTML page of the runs' curves
 * (or, with --format svg, one chart), read from their metrics.jsonl while they run or after. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "io/atomic.h"
#include "report/report.h"

#define MAX_RUNS 32

int oz_cmd_report(int argc, char **argv) {
    char out[4096] = "", format[16] = "html", metric[32] = "loss";
    oz_arg args[] = {
        {"out", OZ_ARG_STR, out, sizeof out, "the file to write (required)", 0},
        {"format", OZ_ARG_STR, format, sizeof format, "html (every chart, a settings table) | svg (one chart) [html]", 0},
        {"metric", OZ_ARG_STR, metric, sizeof metric, "with --format svg: " OZ_REPORT_METRICS " [loss]", 0},
    };
    const int n_args = (int)(sizeof args / sizeof args[0]);
    const char *summary = "Draw run directories' curves (loss, validation, lr, gradient norm, throughput, memory) "
                          "as one HTML file with inline SVG: ounce report RUN [RUN...] --out report.html";
    /* Runs anywhere among the flags: every flag here takes a value, so a word that is neither a
     * flag nor a flag's value is a run. */
    char *runs_arg[MAX_RUNS], **flags = malloc((size_t)(argc + 1) * sizeof *flags);
    if (!flags) {
        fprintf(stderr, "ounce report: out of memory\n");
        return 1;
    }
    int nruns = 0, nflags = 0;
    for (int i = 0; i < argc; i++) {
        if (argv[i][0] == '-') {
            flags[nflags++] = argv[i];
            if (strchr(argv[i], '=') == NULL && i + 1 < argc && strcmp(argv[i], "--help") != 0 &&
                strcmp(argv[i], "-h") != 0)
                flags[nflags++] = argv[++i];
        } else if (nruns < MAX_RUNS) {
            runs_arg[nruns++] = argv[i];
        } else {
            free(flags);
            fprintf(stderr, "ounce report: more than %d runs; at most %d fit one report\n", MAX_RUNS, MAX_RUNS);
            return 2;
        }
    }
    int rc = oz_args_parse("report", summary, args, n_args, nflags, flags);
    free(flags);
    if (rc) return rc == 1 ? 0 : 2;
    if (nruns == 0) {
        fprintf(stderr, "ounce report: name at least one run directory (ounce report RUN [RUN...] --out FILE)\n");
        return 2;
    }
    if (!out[0]) {
        fprintf(stderr, "ounce report: --out is required\n");
        return 2;
    }
    if (strcmp(format, "html") != 0 && strcmp(format, "svg") != 0) {
        fprintf(stderr, "ounce report: --format %s: html or svg\n", format);
        return 2;
    }
    oz_report_run *runs[MAX_RUNS] = {0};
    oz_err err = {0};
    oz_status st = OZ_OK;
    for (int i = 0; i < nruns && st == OZ_OK; i++) st = oz_report_load(&runs[i], runs_arg[i], &err);
    char *text = NULL;
    size_t len = 0;
    if (st == OZ_OK)
        st = strcmp(format, "svg") == 0 ? oz_report_svg(runs, nruns, metric, &text, &len, &err)
                                         : oz_report_html(runs, nruns, &text, &len, &err);
    if (st == OZ_OK) st = oz_atomic_write(out, text, len, &err);
    size_t steps = 0;
    for (int i = 0; i < nruns; i++) {
        if (runs[i]) steps += oz_report_run_steps(runs[i]);
        oz_report_run_free(runs[i]);
    }
    free(text);
    if (st != OZ_OK) return oz_cli_report("report", &err);
    printf("wrote %s (%d run%s, %zu steps)\n", out, nruns, nruns == 1 ? "" : "s", steps);
    return 0;
}
