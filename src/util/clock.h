/* A monotonic clock for elapsed times (progress lines, ETAs, timings). */
#ifndef OZ_CLOCK_H
#define OZ_CLOCK_H

/* Seconds on CLOCK_MONOTONIC: only differences mean anything. */
double oz_now_s(void);

#endif
