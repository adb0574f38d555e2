/* A minimal test harness: CHECK records a failure and goes on, so one run reports every problem.
 * Each test program ends with the line "N passed, N failed" and exits non-zero on any failure. */
#ifndef OZ_TEST_HARNESS_H
#define OZ_TEST_HARNESS_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int oz_test_passed, oz_test_failed;

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (cond) {                                                             \
            oz_test_passed++;                                                   \
        } else {                                                                \
            oz_test_failed++;                                                   \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);     \
            fprintf(stderr, __VA_ARGS__);                                       \
            fprintf(stderr, "\n");                                              \
        }                                                                       \
    } while (0)

/* |a-b| <= atol + rtol*|b| */
#define CHECK_CLOSE(a, b, rtol, atol, what)                                                    \
    do {                                                                                       \
        double oz_a_ = (a), oz_b_ = (b);                                                       \
        CHECK(fabs(oz_a_ - oz_b_) <= (atol) + (rtol) * fabs(oz_b_), "%s: %.9g vs %.9g", (what), \
              oz_a_, oz_b_);                                                                   \
    } while (0)

#define RUN(test_fn)                                  \
    do {                                              \
        int oz_before_ = oz_test_failed;              \
        test_fn();                                    \
        fprintf(stderr, "%s %s\n", oz_test_failed == oz_before_ ? "ok  " : "FAIL", #test_fn); \
    } while (0)

static inline int oz_test_finish(const char *suite) {
    printf("%s: %d passed, %d failed\n", suite, oz_test_passed, oz_test_failed);
    return oz_test_failed ? 1 : 0;
}

#endif
