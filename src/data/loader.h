/* Training data for the trainer: either a prepared directory (meta.json + train.bin + val.bin) or
 * "random:V", uniform random tokens over a vocabulary of V for throughput benchmarks.
 *
 * Training batches are windows at uniformly random positions of the train split, drawn from the
 * dataset's own seeded RNG. The cursor (RNG state + batches drawn) is a plain struct; restoring it
 * reproduces exactly the same future batches. Validation uses consecutive non-overlapping windows
 * of the val split (window w covers val tokens [w*T, w*T+T], the last one being only a target), so
 * it is identical on every evaluation and independent of the training RNG. */
#ifndef OZ_LOADER_H
#define OZ_LOADER_H
#include <stdint.h>

#include "data/shard.h"
#include "data/tokenizer.h"
#include "util/err.h"
#include "util/rng.h"

typedef enum { OZ_DATA_PREPARED = 0, OZ_DATA_RANDOM } oz_data_kind;

/* Number of validation windows a random:V dataset offers. */
#define OZ_RANDOM_VAL_WINDOWS 64

typedef struct {
    oz_rng rng;
    uint64_t batches; /* batches drawn so far */
} oz_data_cursor;

typedef struct {
    oz_data_kind kind;
    int vocab_size;
    oz_tokenizer tokenizer;  /* from meta.json; meaningful only when has_tokenizer */
    int has_tokenizer;       /* 0 for random:V, which has no text form */
    oz_shard train, val;     /* prepared only */
    uint64_t train_tokens, val_tokens; /* random:V: 0 train (unbounded) and 0 val */
    oz_data_cursor cursor;
} oz_dataset;

/* spec: a directory written by oz_prepare, or "random:V" (2 <= V <= 2^31-1). */
oz_status oz_dataset_open(oz_dataset *ds, const char *spec, uint64_t seed, oz_err *err);
void oz_dataset_close(oz_dataset *ds);

int oz_dataset_vocab_size(const oz_dataset *ds);

/* OZ_ERR_INPUT unless the train split, and the val split if it is not empty, each hold at least
 * T+1 tokens (one window plus its final target). Call it once before training with context T. */
oz_status oz_dataset_check_window(const oz_dataset *ds, int T, oz_err *err);

/* Fills inputs and targets (each B*T, row-major) with B random training windows; targets are the
 * inputs shifted by one. Returns OZ_ERR_INPUT without drawing if B or T is invalid or the train
 * split is shorter than T+1 (oz_dataset_check_window explains why). */
oz_status oz_dataset_next_batch(oz_dataset *ds, int B, int T, int32_t *inputs, int32_t *targets);

void oz_dataset_get_cursor(const oz_dataset *ds, oz_data_cursor *cursor);
void oz_dataset_set_cursor(oz_dataset *ds, const oz_data_cursor *cursor);

/* Number of non-overlapping validation windows of length T (OZ_RANDOM_VAL_WINDOWS for random:V). */
int oz_dataset_val_windows(const oz_dataset *ds, int T);
/* Fills up to B rows with windows first_window, first_window+1, ...; returns the rows filled
 * (fewer than B, possibly 0, when the windows run out). */
int oz_dataset_val_batch(const oz_dataset *ds, int first_window, int B, int T, int32_t *inputs,
                         int32_t *targets);

#endif
