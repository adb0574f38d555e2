/* A minimal test harness: CHECK records a failure and goes on, so one run reports every problem.
 * SKIP counts checks this machine cannot make, with the reason. Each test program ends with the
 * line "suite: N passed, M failed, K skipped" and exits non-zero on any failure. */
#ifndef OZ_TEST_HARNESS_H
#define OZ_TEST_HARNESS_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int oz_test_passed, oz_test_failed, oz_test_skipped;

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

/* SKIP(n, reason): stands for the n CHECKs of a case this machine cannot make, e.g.
 * SKIP(2, "running as root") where root ignores the permissions a case needs. tests/run.sh adds
 * skips up by reason, so one cause has one wording everywhere (tests/e2e.sh prints the same lines). */
#define SKIP(n, reason)                                                                           \
    do {                                                                                          \
        oz_test_skipped += (n);                                                                   \
        fprintf(stderr, "skip: %d check%s (%s) at %s:%d\n", (n), (n) == 1 ? "" : "s", (reason), \
                __FILE__, __LINE__);                                                              \
    } while (0)

#define RUN(test_fn)                                  \
    do {                                              \
        int oz_before_ = oz_test_failed;              \
        test_fn();                                    \
        fprintf(stderr, "%s %s\n", oz_test_failed == oz_before_ ? "ok  " : "FAIL", #test_fn); \
    } while (0)

static inline int oz_test_finish(const char *suite) {
    printf("%s: %d passed, %d failed, %d skipped\n", suite, oz_test_passed, oz_test_failed, oz_test_skipped);
    return oz_test_failed ? 1 : 0;
}

#endif
