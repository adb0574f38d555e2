/* TensorBoard event files: scalars a run logs, in the format TensorBoard (and tf.data's
 * TFRecordDataset) reads. A file is a sequence of records:
 *
 *     uint64 length (LE) | uint32 masked CRC-32C of those 8 bytes | data | uint32 masked CRC-32C of data
 *
 * where data is a serialized tensorflow.Event protobuf: wall_time (1, double), step (2, int64),
 * file_version (3, string; the first record says "brain.Event:2") or summary (5, a Summary of
 * Value {tag (1, string), simple_value (2, float)}). The protobuf is written by hand: five field
 * types, no library. Nothing here prints or keeps global state. */
#ifndef OZ_TFEVENTS_H
#define OZ_TFEVENTS_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "util/err.h"

/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78); crc32c("123456789") = 0xE3069283. */
uint32_t oz_crc32c(const void *data, size_t n);
/* TFRecord's masking: ((crc >> 15) | (crc << 17)) + 0xa282ead8. */
uint32_t oz_crc32c_masked(const void *data, size_t n);

/* One scalar of an event. */
typedef struct {
    const char *tag;
    float value;
} oz_tf_scalar;

/* Encodes one Event into buf (cap bytes): with version != NULL a file_version event, else a
 * summary of the n scalars. Returns the bytes written, or 0 when cap is too small. */
size_t oz_tf_event_encode(uint8_t *buf, size_t cap, double wall_time, int64_t step, const char *version,
                          const oz_tf_scalar *scalars, int n);
/* Frames an encoded event as a record: the 12-byte header, data, the 4-byte footer. Returns the
 * record's bytes, or 0 when cap is too small. */
size_t oz_tf_record_frame(uint8_t *out, size_t cap, const uint8_t *data, size_t n);

/* A decoded event (what the test reader and the resume cut need). Tags point into the record's
 * data, which must outlive the event; at most OZ_TF_MAX_VALUES values are kept. */
#define OZ_TF_MAX_VALUES 32
typedef struct {
    double wall_time;
    int64_t step;
    int has_version;
    int n;
    struct {
        const char *tag;
        size_t tag_len;
        float value;
    } values[OZ_TF_MAX_VALUES];
} oz_tf_event;

/* Reads the record at buf[0..n): checks both CRCs, and sets *data, *data_len and *record_len
 * (header + data + footer). OZ_ERR_INPUT on a short or corrupt record. */
oz_status oz_tf_record_read(const uint8_t *buf, size_t n, const uint8_t **data, size_t *data_len,
                            size_t *record_len, oz_err *err);
/* Decodes an Event (fields it does not know are skipped); OZ_ERR_INPUT on malformed bytes. */
oz_status oz_tf_event_decode(const uint8_t *data, size_t n, oz_tf_event *ev, oz_err *err);

/* A writer of one event file. */
typedef struct {
    FILE *f;
    char path[4096];
} oz_tfevents;

/* Opens DIR/events.out.tfevents.<unix time>.<host> for appending; a new (empty) file gets the
 * file_version record first. */
oz_status oz_tfevents_open(oz_tfevents *w, const char *dir, oz_err *err);
/* Appends one event of n scalars at step; flushed, so TensorBoard sees a run in progress. */
oz_status oz_tfevents_scalars(oz_tfevents *w, int64_t step, const oz_tf_scalar *scalars, int n, oz_err *err);
void oz_tfevents_close(oz_tfevents *w);

/* For a resumed run: cuts every events.out.tfevents.* file in dir back to its last record of step
 * <= step (the file_version record is step 0), so no step is logged twice. A corrupt tail (a killed
 * writer's half record) is cut too. */
oz_status oz_tfevents_cut(const char *dir, int64_t step, oz_err *err);

#endif
