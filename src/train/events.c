/* A run's scalars as TensorBoard events (see events.h). */
#include "train/events.h"

#include <math.h>
#include <stdio.h>

oz_status oz_train_events_open(oz_tfevents *w, const char *out, int resumed_from, oz_err *err) {
    if (resumed_from > 0) OZ_TRY(oz_tfevents_cut(out, resumed_from, err));
    return oz_tfevents_open(w, out, err);
}

/* exp(loss) overflows a float past ~88 nats; TensorBoard shows inf, which is the truth. */
static float perplexity(double loss) { return (float)exp(loss); }

oz_status oz_train_events_step(oz_tfevents *w, const oz_train_event_step *s, oz_err *err) {
    if (!w->f) return OZ_OK;
    oz_tf_scalar v[10 + OZ_MEM_NCATEGORIES];
    char tags[OZ_MEM_NCATEGORIES][48];
    int n = 0;
    if (s->skipped) {
        v[n++] = (oz_tf_scalar){"train/skipped", 1.0f};
    } else {
        v[n++] = (oz_tf_scalar){"train/loss", (float)s->loss};
        v[n++] = (oz_tf_scalar){"train/perplexity", perplexity(s->loss)};
        v[n++] = (oz_tf_scalar){"train/grad_norm", (float)s->grad_norm};
        v[n++] = (oz_tf_scalar){"train/tokens_per_s", (float)s->tokens_per_s};
    }
    v[n++] = (oz_tf_scalar){"train/lr", (float)s->lr};
    if (s->peak_bytes) {
        for (int c = 0; c < OZ_MEM_NCATEGORIES; c++) {
            if (!s->peak_bytes[c]) continue;
            snprintf(tags[c], sizeof tags[c], "memory/peak_mib/%s", oz_mem_category_name(c));
            v[n++] = (oz_tf_scalar){tags[c], (float)(s->peak_bytes[c] / 1048576.0)};
        }
        v[n++] = (oz_tf_scalar){"memory/peak_mib/total", (float)(s->peak_total / 1048576.0)};
    }
    if (isfinite(s->refresh_s)) v[n++] = (oz_tf_scalar){"galore/refresh_s", (float)s->refresh_s};
    if (isfinite(s->subspace_change)) v[n++] = (oz_tf_scalar){"galore/subspace_change", (float)s->subspace_change};
    if (isfinite(s->rank_fraction)) v[n++] = (oz_tf_scalar){"inrank/mean_rank_fraction", (float)s->rank_fraction};
    return oz_tfevents_scalars(w, s->step, v, n, err);
}

oz_status oz_train_events_val(oz_tfevents *w, int step, double val_loss, oz_err *err) {
    if (!w->f) return OZ_OK;
    oz_tf_scalar v[2] = {{"val/loss", (float)val_loss}, {"val/perplexity", perplexity(val_loss)}};
    return oz_tfevents_scalars(w, step, v, 2, err);
}

void oz_train_metrics_peak(FILE *f, const size_t *peak_bytes, size_t peak_total) {
    fputs(",\"peak_bytes\":{", f);
    for (int c = 0; c < OZ_MEM_NCATEGORIES; c++)
        fprintf(f, "\"%s\":%zu,", oz_mem_category_name(c), peak_bytes[c]);
    fprintf(f, "\"total\":%zu}}\n", peak_total);
}
