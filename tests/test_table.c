/*
 * Tests for geo, rank and table on the fixture City database
 * (tests/fixtures/city-test.mmdb, described in tests/fixtures/README.md)
 * and the test map (tests/fixtures/maps/test-map.yaml): every precedence
 * level, nested nets, bias, ties, limit, every address form, records
 * without coordinates and addresses absent from the database. Each case is
 * checked on the compiled table and on the direct path.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "dcmap.h"
#include "geo.h"
#include "geosteer/geosteer.h"
#include "helpers.h"
#include "rank.h"
#include "table.h"

#define FIXTURE_DB "tests/fixtures/city-test.mmdb"
#define TEST_MAP "tests/fixtures/maps/test-map.yaml"

struct engine {
  struct dcmap *m;
  struct geo *g;
  struct table *t;
};

static void engine_open(struct engine *e, const char *map_path)
{
  struct diag d = DIAG_INIT;
  char db[4096];
  snprintf(db, sizeof(db), "%s", src_path(FIXTURE_DB));
  cr_assert_eq(dcmap_load(map_path, &e->m, &d), 0, "map %s", map_path);
  cr_assert_eq(geo_open(db, &e->g, &d), 0);
  cr_assert_eq(table_build(e->m, e->g, &e->t, &d), 0);
  diag_free(&d);
}

static void engine_close(struct engine *e)
{
  table_free(e->t);
  geo_close(e->g);
  dcmap_free(e->m);
}

/* "lhr ams fra" for an answer. */
static void answer_text(const struct dcmap *m, const struct answer *a,
                        char *buf, size_t size)
{
  size_t used = 0;
  buf[0] = '\0';
  for (int i = 0; i < a->n && used < size; i++)
    used += (size_t)snprintf(buf + used, size - used, "%s%s", i ? " " : "",
                             m->dcs[a->dc[i]].id);
}

/*
 * Routes text through the table and the direct path; both must agree and
 * match the expected reason and DC list. Returns the table's scope.
 */
static int check_route(struct engine *e, const char *text, const char *reason,
                       const char *dcs)
{
  addr128 a;
  uint8_t scope = 255;
  struct answer direct;
  char got[256];

  cr_assert_eq(addr_parse(text, &a, NULL), 0, "%s", text);
  const struct answer *ans = table_lookup(e->t, a, &scope);
  answer_text(e->m, ans, got, sizeof(got));
  cr_assert_str_eq(gs_reason_name(ans->reason), reason, "%s: reason", text);
  cr_assert_str_eq(got, dcs, "%s: data centers", text);
  cr_assert_eq(rank_direct(e->m, e->g, a, &direct, NULL, NULL, NULL), 0);
  cr_assert(memcmp(&direct, ans, sizeof(direct)) == 0,
            "%s: table and direct path differ", text);
  return scope;
}

struct route_case {
  char addr[64];
  char reason[16];
  char dcs[64];
  int scope; /* -1: not checked */
};

static const struct route_case route_cases[] = {
    /* precedence: city > subdivision > country > continent > nearest */
    {"81.2.69.5", "city", "lhr ams fra", 24},
    {"5.5.0.1", "subdivision", "sjc nrt iad", 16},
    {"6.6.0.1", "country", "hkg sin nrt", 16},
    {"7.7.0.1", "continent", "syd sin hkg", 16},
    {"5.6.0.1", "nearest", "sjc iad nrt", 16},
    {"11.0.0.1", "nearest", "gru iad lhr", 8},
    {"81.2.70.9", "nearest", "lhr ams fra", 24}, /* Manchester */
    /* nets: most specific wins; /24 inside /16 with other DCs */
    {"12.12.12.1", "net", "nrt hkg sin", 24},
    {"12.12.13.1", "net", "sin hkg nrt", 24},
    {"12.12.200.1", "net", "sin hkg nrt", 17},
    {"12.12.0.1", "net", "sin hkg nrt", 21},
    /* a net over addresses the database does not know: no completion */
    {"100.64.0.1", "net", "iad ams", 10},
    /* absent from the database: default order */
    {"100.128.0.1", "unknown", "ams iad", 9},
    {"203.0.113.7", "unknown", "ams iad", -1},
    /* records without coordinates: override as is, or default */
    {"10.1.0.1", "country", "ams", 16},
    {"10.2.0.1", "unknown", "ams iad", -1},
    {"2a03:5000::1", "unknown", "ams iad", -1},
    /* IPv6 */
    {"2a02:1000::1", "nearest", "fra ams lhr", 32},
    {"2a02:2000::1", "city", "lhr ams fra", 32},
    {"2400:1000::1", "continent", "syd sin hkg", 32},
    {"2600:1000::1", "nearest", "sjc iad nrt", 28},
    /* a /128 net inside a /48 net: boundaries inside one /64 */
    {"2001:db8:1::1", "net", "fra lhr ams", 126},
    {"2001:db8:1::4", "net", "fra lhr ams", 128},
    {"2001:db8:1::5", "net", "syd lhr ams", 128},
    {"2001:db8:1::6", "net", "fra lhr ams", 127},
    {"2001:db8:1:0:1::", "net", "fra lhr ams", 80},
    {"2001:db8:1:1::1", "net", "fra lhr ams", 64},
    /* IPv4 alias forms route as the embedded IPv4 address */
    {"::ffff:81.2.69.5", "city", "lhr ams fra", 24},
    {"2002:5102:4505::1", "city", "lhr ams fra", 24},
    {"2001:0:1:2:3:4:aefd:bafa", "city", "lhr ams fra", 24},
    {"::ffff:12.12.12.1", "net", "nrt hkg sin", 24},
};

ParameterizedTestParameters(table, routes)
{
  return cr_make_param_array(struct route_case, (void *)route_cases,
                             sizeof(route_cases) / sizeof(route_cases[0]));
}

ParameterizedTest(const struct route_case *c, table, routes)
{
  struct engine e;
  char map[4096];
  snprintf(map, sizeof(map), "%s", src_path(TEST_MAP));
  engine_open(&e, map);
  int scope = check_route(&e, c->addr, c->reason, c->dcs);
  if (c->scope >= 0)
    cr_assert_eq(scope, c->scope, "%s: scope", c->addr);
  engine_close(&e);
}

/* A small map around the Belgian point (50.0, 5.0), ~263 km from both. */
static void with_map(const char *text, void (*fn)(struct engine *))
{
  struct engine e;
  char *path = write_temp(text, ".yaml");
  cr_assert_not_null(path);
  engine_open(&e, path);
  fn(&e);
  engine_close(&e);
  unlink(path);
  free(path);
}

#define DC(id, lat, lon, extra)                                                \
  "  - { id: " id ", endpoint: \"" id ":1\", lat: " lat ", lon: " lon extra    \
  " }\n"

static void expect_fra_first(struct engine *e)
{
  check_route(e, "9.10.0.1", "nearest", "fra ams");
}

static void expect_ams_first(struct engine *e)
{
  check_route(e, "9.10.0.1", "nearest", "ams fra");
}

Test(table, bias_changes_the_winner)
{
  /* Unbiased, Frankfurt is a few hundred metres nearer. */
  with_map("limit: 2\ndefault: [ams]\ndatacenters:\n" DC(
               "ams", "52.37", "4.90", "") DC("fra", "50.11", "8.68", ""),
           expect_fra_first);
  /* A positive bias on Amsterdam attracts the point. */
  with_map("limit: 2\ndefault: [ams]\ndatacenters:\n" DC("ams", "52.37", "4.90",
                                                         ", bias: 1")
               DC("fra", "50.11", "8.68", ""),
           expect_ams_first);
  /* A negative bias on Frankfurt repels it. */
  with_map(
      "limit: 2\ndefault: [ams]\ndatacenters:\n" DC("ams", "52.37", "4.90", "")
          DC("fra", "50.11", "8.68", ", bias: -5"),
      expect_ams_first);
}

static void expect_first_listed(struct engine *e)
{
  check_route(e, "9.10.0.1", "nearest", "aaa zzz");
}

static void expect_first_listed_reversed(struct engine *e)
{
  check_route(e, "9.10.0.1", "nearest", "zzz aaa");
}

Test(table, ties_go_to_the_dc_listed_first)
{
  with_map("limit: 2\ndefault: [aaa]\ndatacenters:\n" DC(
               "aaa", "50.0", "6.0", "") DC("zzz", "50.0", "6.0", ""),
           expect_first_listed);
  with_map("limit: 2\ndefault: [aaa]\ndatacenters:\n" DC(
               "zzz", "50.0", "6.0", "") DC("aaa", "50.0", "6.0", ""),
           expect_first_listed_reversed);
}

static void expect_limit_1(struct engine *e)
{
  check_route(e, "81.2.69.5", "nearest", "lhr");
  check_route(e, "100.128.0.1", "unknown", "ams");
}

static void expect_limit_16(struct engine *e)
{
  check_route(e, "81.2.69.5", "nearest", "lhr ams fra");
}

Test(table, limit_caps_every_answer)
{
  with_map("limit: 1\ndefault: [ams, fra]\ndatacenters:\n" DC("ams", "52.37",
                                                              "4.90", "")
               DC("fra", "50.11", "8.68", "") DC("lhr", "51.51", "-0.13", ""),
           expect_limit_1);
  /* limit above the number of DCs: every DC, ranked. */
  with_map(
      "limit: 16\ndefault: [ams]\ndatacenters:\n" DC("ams", "52.37", "4.90", "")
          DC("fra", "50.11", "8.68", "") DC("lhr", "51.51", "-0.13", ""),
      expect_limit_16);
}

Test(table, answers_keep_only_the_coarse_location)
{
  struct engine e;
  addr128 a;
  uint8_t scope;
  char map[4096];

  snprintf(map, sizeof(map), "%s", src_path(TEST_MAP));
  engine_open(&e, map);
  cr_assert_eq(addr_parse("81.2.69.5", &a, NULL), 0);
  const struct answer *ans = table_lookup(e.t, a, &scope);
  cr_assert(memcmp(ans->loc.continent, "EU", 2) == 0);
  cr_assert(memcmp(ans->loc.country, "GB", 2) == 0);
  cr_assert(memcmp(ans->loc.subdivision, "ENG", 3) == 0);
  cr_assert_eq(ans->loc.has_cell, 1);
  cr_assert_eq(ans->loc.cell_lat, 51); /* floor(51.5142) */
  cr_assert_eq(ans->loc.cell_lon, -1); /* floor(-0.0931) */

  /* Net and unknown answers carry no location at all. */
  struct coarse_loc none;
  memset(&none, 0, sizeof(none));
  cr_assert_eq(addr_parse("12.12.12.1", &a, NULL), 0);
  cr_assert(memcmp(&table_lookup(e.t, a, &scope)->loc, &none, sizeof(none)) ==
            0);
  cr_assert_eq(addr_parse("203.0.113.7", &a, NULL), 0);
  cr_assert(memcmp(&table_lookup(e.t, a, &scope)->loc, &none, sizeof(none)) ==
            0);
  engine_close(&e);
}

Test(table, stats_describe_the_table)
{
  struct engine e;
  struct table_stats st;
  char map[4096];

  snprintf(map, sizeof(map), "%s", src_path(TEST_MAP));
  engine_open(&e, map);
  table_get_stats(e.t, &st);
  /* 21 networks; Frankfurt, London, San Francisco, Sydney and Paris appear
   * in both families with identical data, stored once. */
  cr_assert_eq(st.records, 16);
  cr_assert_gt(st.ranges, 20);
  cr_assert_gt(st.answers, 10);
  cr_assert_gt(st.fine_keys, 0); /* the /128 net */
  cr_assert_gt(st.bytes, 0);
  cr_assert_eq(table_ndcs(e.t), 10);
  cr_assert_str_eq(table_dc(e.t, 0)->endpoint, "ams.test:443");
  cr_assert_null(table_dc(e.t, 10));
  engine_close(&e);
}

Test(geo, rejects_non_city_and_missing_databases)
{
  struct diag d = DIAG_INIT;
  struct geo *g = NULL;
  char *junk = write_temp("not a database\n", ".mmdb");

  cr_assert_eq(geo_open("/nonexistent.mmdb", &g, &d), GS_ERR_IO);
  cr_assert_eq(geo_open(junk, &g, &d), GS_ERR_DB);
  cr_assert_null(g);
  cr_assert_eq(d.count, 2);
  cr_assert(strstr(d.msgs[1], "not a valid MaxMind database"));
  unlink(junk);
  free(junk);
  diag_free(&d);
}

/*
 * table_prefetch only warms the cache: over every kind of address, the
 * edges of the IPv4 space and more addresses than it takes, it reads
 * nothing out of bounds (ASan) and the lookups after it are unchanged.
 */
Test(table, prefetch_changes_nothing)
{
  struct engine e;
  addr128 a[TABLE_PREFETCH_MAX + 8];
  const struct answer *before[TABLE_PREFETCH_MAX + 8];
  uint8_t scope_before[TABLE_PREFETCH_MAX + 8], scope;
  const char *const text[] = {"0.0.0.0",
                              "255.255.255.255",
                              "81.2.69.160",
                              "10.1.2.3",
                              "::ffff:1.2.3.4",
                              "2001:db8::1",
                              "2002:5102:45a0::",
                              "2001:0:4136:e378:8000:63bf:3fff:fdd2",
                              "::",
                              "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"};
  const size_t nt = sizeof(text) / sizeof(text[0]);
  const size_t n = sizeof(a) / sizeof(a[0]);
  char map[4096];

  snprintf(map, sizeof(map), "%s", src_path(TEST_MAP));
  engine_open(&e, map);
  for (size_t i = 0; i < n; i++) {
    if (i < nt)
      cr_assert_eq(addr_parse(text[i], &a[i], NULL), 0, "%s", text[i]);
    else
      a[i] = (addr128)(uint32_t)(i * 0x9e3779b9u); /* spread over IPv4 */
    before[i] = table_lookup(e.t, a[i], &scope_before[i]);
  }
  table_prefetch(e.t, a, n);
  table_prefetch(e.t, a, 0);
  for (size_t i = 0; i < n; i++) {
    cr_assert_eq(table_lookup(e.t, a[i], &scope), before[i], "address %zu", i);
    cr_assert_eq(scope, scope_before[i], "address %zu", i);
  }
  engine_close(&e);
}
