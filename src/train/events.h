/* Inside train/: a run's scalars as a TensorBoard event file (io/tfevents.h) in OUT, next to
 * metrics.jsonl: one event per logged step, one per evaluation. Tags: train/loss,
 * train/perplexity, train/lr, train/grad_norm, train/tokens_per_s, memory/peak_mib/<category> and
 * memory/peak_mib/total, galore/refresh_s and galore/subspace_change (steps that refreshed subspaces), inrank/mean_rank_fraction
 * (InRank runs), train/skipped (--on-nonfinite skip), val/loss and val/perplexity. */
#ifndef OZ_TRAIN_EVENTS_H
#define OZ_TRAIN_EVENTS_H
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "io/tfevents.h"
#include "mem/arena.h"
#include "util/err.h"

/* One training step's numbers; NAN for what this step does not have. */
typedef struct {
    int step;
    bool skipped;
    double loss, lr, grad_norm, tokens_per_s;
    const size_t *peak_bytes; /* OZ_MEM_NCATEGORIES entries */
    size_t peak_total;
    double refresh_s;          /* seconds into the step when its subspace refreshes ended */
    double rank_fraction;      /* InRank: mean rank as a fraction of full */
    double subspace_change;    /* GaLore: oz_optimizer_subspace_change of this step's refreshes */
} oz_train_event_step;

/* Opens a new event file in out. A resumed run (resumed_from > 0) first cuts the run's earlier
 * event files back to that step, so TensorBoard reads every step once (see docs/report.md). */
oz_status oz_train_events_open(oz_tfevents *w, const char *out, int resumed_from, oz_err *err);
oz_status oz_train_events_step(oz_tfevents *w, const oz_train_event_step *s, oz_err *err);
oz_status oz_train_events_val(oz_tfevents *w, int step, double val_loss, oz_err *err);

/* Ends a metrics.jsonl step line with ,"peak_bytes":{"weights":N,...,"total":N}} and a newline:
 * the arena's high-water marks so far, what `ounce report` stacks by category. */
void oz_train_metrics_peak(FILE *f, const size_t *peak_bytes, size_t peak_total);

#endif
