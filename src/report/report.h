/* Pictures of runs: reads run directories (metrics.jsonl, trainer_state.json's options) and draws
 * their curves as inline SVG, either one self-contained HTML page (no scripts, no network) or
 * one chart as a standalone SVG. Works on a run still in progress: it reads what is there, and
 * a half-written last line is ignored. Nothing here prints or keeps global state. */
#ifndef OZ_REPORT_H
#define OZ_REPORT_H
#include <stddef.h>

#include "util/err.h"

typedef struct oz_report_run oz_report_run;

/* The charts of a page, in order; --metric takes one name. "memory" is one chart per run (its
 * categories stacked); every other chart has one series per run. */
#define OZ_REPORT_METRICS "loss, loss_time, val_loss, lr, grad_norm, tokens_per_s, memory"

/* Reads DIR/metrics.jsonl and the newest trainer_state.json (DIR's own, else the newest
 * step-N's; none is fine). A missing directory or metrics.jsonl is OZ_ERR_INPUT. */
oz_status oz_report_load(oz_report_run **run, const char *dir, oz_err *err);
void oz_report_run_free(oz_report_run *run);
/* Training lines read (skipped steps not counted). */
size_t oz_report_run_steps(const oz_report_run *run);

/* The page for n >= 1 runs, malloc'd and NUL-terminated in *out (*len bytes). */
oz_status oz_report_html(oz_report_run *const *runs, int n, char **out, size_t *len, oz_err *err);
/* One chart (a name of OZ_REPORT_METRICS; "memory" draws the first run's) as a standalone SVG;
 * an unknown name is OZ_ERR_INPUT. */
oz_status oz_report_svg(oz_report_run *const *runs, int n, const char *metric, char **out, size_t *len,
                        oz_err *err);

#endif
