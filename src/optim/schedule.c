#include "optim/schedule.h"

#include <math.h>

float oz_schedule_lr(const oz_schedule *s, int step) {
    if (step < s->warmup) return s->lr * (float)(step + 1) / (float)s->warmup;
    double lr_min = (double)s->lr * s->min_lr_ratio;
    int decay_steps = s->total_steps - s->warmup;
    if (decay_steps <= 1) return s->lr;
    double progress = (double)(step - s->warmup) / (double)(decay_steps - 1);
    if (progress > 1.0) progress = 1.0;
    return (float)(lr_min + 0.5 * ((double)s->lr - lr_min) * (1.0 + cos(3.14159265358979323846 * progress)));
}
