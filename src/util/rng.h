/* Seeded, serialisable random numbers (xoshiro256**, seeded through splitmix64).
 * The whole state is four words, saved in trainer state so resume is bit-exact. */
#ifndef OZ_RNG_H
#define OZ_RNG_H
#include <stdint.h>

typedef struct { uint64_t s[4]; } oz_rng;

void oz_rng_seed(oz_rng *rng, uint64_t seed);
uint64_t oz_rng_next(oz_rng *rng);
/* Uniform in [0, n), unbiased (n > 0). */
uint64_t oz_rng_below(oz_rng *rng, uint64_t n);
/* Uniform float in [0, 1) with 24 random bits. */
float oz_rng_uniform(oz_rng *rng);
/* Standard normal (Box-Muller; uses two uniforms per call, no cached spare, so the state alone defines the stream). */
double oz_rng_normal(oz_rng *rng);

#endif
