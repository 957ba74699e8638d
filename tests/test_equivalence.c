/*
 * Equivalence: for 200,000 pseudo-random addresses (fixed seed) the
 * compiled table gives exactly the answer of the direct computation
 * (MMDB_lookup_sockaddr + the same ranking), byte for byte, and the scope
 * it reports is a prefix whose every address gets that same answer.
 *
 * Runs on the real GeoLite2-City database with the example map, and on the
 * fixture database with the test map (whose nets put boundaries inside
 * /64 blocks).
 */
#include <criterion/criterion.h>

#include "dcmap.h"
#include "geo.h"
#include "geosteer/geosteer.h"
#include "helpers.h"
#include "rank.h"
#include "rng.h"
#include "table.h"

#define N_ADDRESSES 200000

static struct rng rng;

struct nets {
  addr128 start[1 << 16];
  uint8_t plen[1 << 16];
  size_t n, seen;
};

/* Reservoir-samples up to 65536 networks that have data. */
static int sample_net(void *ctx, addr128 start, int plen,
                      const struct geo_loc *loc, int32_t idx)
{
  struct nets *s = ctx;
  (void)idx;
  if (loc == NULL)
    return 0;
  size_t slot = s->seen < (1 << 16) ? s->seen : rng_next(&rng) % (s->seen + 1);
  s->seen++;
  if (slot < (1 << 16)) {
    s->start[slot] = start;
    s->plen[slot] = (uint8_t)plen;
    if (slot >= s->n)
      s->n = slot + 1;
  }
  return 0;
}

static addr128 random_address(const struct nets *s, int kind)
{
  uint32_t v4 = (uint32_t)rng_next(&rng);
  size_t k;

  switch (kind) {
  case 0: /* any IPv4 address */
    return v4;
  case 1: /* inside a database network (either family) */
    k = rng_next(&rng) % s->n;
    return s->start[k] |
           (addr_make(rng_next(&rng), rng_next(&rng)) & ~addr_mask(s->plen[k]));
  case 2: /* IPv4-mapped */
    return ((addr128)0xffff << 32) | v4;
  case 3: /* 6to4 */
    return addr_make(0x2002000000000000ull | ((uint64_t)v4 << 16),
                     rng_next(&rng));
  case 4: /* Teredo: client address inverted in the last 32 bits */
    return addr_make(0x2001000000000000ull | (rng_next(&rng) & 0xffffffffull),
                     (rng_next(&rng) << 32) | (uint32_t)~v4);
  default: /* anywhere in global unicast */
    return addr_make(0x2000000000000000ull | (rng_next(&rng) >> 3),
                     rng_next(&rng));
  }
}

static void check_equivalence(const char *map_rel, const char *db_rel,
                              uint64_t seed)
{
  struct diag d = DIAG_INIT;
  struct dcmap *m = NULL;
  struct geo *g = NULL;
  struct table *t = NULL;
  static struct nets s;
  char map[4096], db[4096];
  size_t mismatches = 0, scope_errors = 0;

  snprintf(map, sizeof(map), "%s", src_path(map_rel));
  snprintf(db, sizeof(db), "%s", src_path(db_rel));
  cr_assert_eq(dcmap_load(map, &m, &d), 0);
  cr_assert_eq(geo_open(db, &g, &d), 0, "%s (run scripts/fetch-geodb)", db);
  cr_assert_eq(table_build(m, g, &t, &d), 0);
  rng.state = seed;
  memset(&s, 0, sizeof(s));
  cr_assert_eq(geo_walk(g, sample_net, &s, NULL), 0);
  cr_assert_gt(s.n, 0);

  for (int i = 0; i < N_ADDRESSES; i++) {
    addr128 a = random_address(&s, i % 6);
    struct answer direct;
    uint8_t scope;
    const struct answer *ans = table_lookup(t, a, &scope);

    cr_assert_eq(rank_direct(m, g, a, &direct, NULL, NULL, NULL), 0);
    if (memcmp(ans, &direct, sizeof(direct)) != 0) {
      char text[ADDR_TEXT_MAX];
      addr_format(a, text, sizeof(text));
      if (mismatches++ < 5)
        cr_log_error("mismatch at %s", text);
    }
    /* The first and last address of the scope block route the same. */
    addr128 norm = addr_normalize(a);
    int bits = addr_is_v4(norm) ? 96 + scope : scope;
    addr128 first = norm & addr_mask(bits), last = addr_last(norm, bits);
    uint8_t s2;
    if (table_lookup(t, first, &s2) != ans || table_lookup(t, last, &s2) != ans)
      scope_errors++;
  }
  cr_assert_eq(mismatches, 0, "%zu of %d answers differ", mismatches,
               N_ADDRESSES);
  cr_assert_eq(scope_errors, 0, "%zu scopes too wide", scope_errors);
  table_free(t);
  geo_close(g);
  dcmap_free(m);
  diag_free(&d);
}

Test(equivalence, real_database_example_map)
{
  check_equivalence("examples/dcmap.yaml", "data/GeoLite2-City.mmdb", 1);
}

Test(equivalence, fixture_database_test_map)
{
  check_equivalence("tests/fixtures/maps/test-map.yaml",
                    "tests/fixtures/city-test.mmdb", 2);
}
