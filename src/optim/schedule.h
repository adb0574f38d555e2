/* Learning-rate schedule: linear warmup, then cosine decay to min_lr_ratio * lr at the last step. */
#ifndef OZ_SCHEDULE_H
#define OZ_SCHEDULE_H

typedef struct {
    float lr;
    float min_lr_ratio;
    int warmup;
    int total_steps;
} oz_schedule;

/* Learning rate for 0-based step `step`. */
float oz_schedule_lr(const oz_schedule *s, int step);

#endif
