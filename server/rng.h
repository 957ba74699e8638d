/*
 * rng: splitmix64, the one pseudo-random sequence of the tests and the
 * benchmarks. Small, fast, and the same sequence for a seed on every
 * machine, so a failing case can be replayed. Not for anything secret.
 */
#ifndef GS_RNG_H
#define GS_RNG_H

#include <stdint.h>

struct rng {
  uint64_t state;
};

static inline uint64_t rng_next(struct rng *r)
{
  uint64_t z = (r->state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

#endif
