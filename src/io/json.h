/* Numbers read from JSON files, checked before any cast: a double outside an int's range, or one
 * that is not finite as a float, is undefined behaviour to convert, so every reader goes through
 * these. */
#ifndef OZ_JSON_H
#define OZ_JSON_H
#include <stdbool.h>
#include <cjson/cJSON.h>

/* True, with *out set, when v is a number with no fractional part in [lo, hi]. */
bool oz_json_int_in(const cJSON *v, double lo, double hi, int *out);
/* True, with *out set, when v is a number that is finite as a float. */
bool oz_json_float(const cJSON *v, float *out);

#endif
