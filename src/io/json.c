#include "io/json.h"

#include <math.h>

bool oz_json_int_in(const cJSON *v, double lo, double hi, int *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= lo && d <= hi) || d != floor(d) || d < -2147483648.0 || d > 2147483647.0) return false;
    *out = (int)d;
    return true;
}

bool oz_json_float(const cJSON *v, float *out) {
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || fabs(v->valuedouble) > 3.4028234663852886e38) return false;
    *out = (float)v->valuedouble;
    return true;
}
