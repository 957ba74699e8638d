/*
 * bench-lookup: the route table against the direct per-request path.
 *
 * Builds the table for a map and a City database, draws 1,000,000
 * pseudo-random IPv4 addresses and 1,000,000 addresses inside the
 * database's IPv6 networks (fixed seed), and times table_lookup() against
 * rank_direct() (MMDB_lookup_sockaddr, MMDB_get_value, ranking with
 * distances) on the same addresses in the same run. Every address is also
 * compared: agreement_pct is the share of identical answers.
 *
 * Output: `name: value unit` lines, one per figure.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dcmap.h"
#include "geo.h"
#include "geosteer/geosteer.h"
#include "rank.h"
#include "rng.h"
#include "table.h"

#define ROUNDS 3
#define PASSES 5 /* table passes per round, for its median */

static struct rng rng;

static double now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct v6nets {
  addr128 *start;
  uint8_t *plen;
  size_t n, cap;
};

static int collect_v6(void *ctx, addr128 start, int plen,
                      const struct geo_loc *loc, int32_t idx)
{
  struct v6nets *v = ctx;
  (void)idx;
  if (loc == NULL || addr_is_v4(start) || addr_normalize(start) != start)
    return 0;
  if (v->n == v->cap) {
    v->cap = v->cap ? v->cap * 2 : 65536;
    v->start = realloc(v->start, v->cap * sizeof(*v->start));
    v->plen = realloc(v->plen, v->cap);
    if (!v->start || !v->plen)
      return GS_ERR_NOMEM;
  }
  v->start[v->n] = start;
  v->plen[v->n++] = (uint8_t)plen;
  return 0;
}

/* Mean ns per table_lookup over addrs[0..n). */
static double time_table(const struct table *t, const addr128 *addrs, size_t n,
                         uint64_t *sink)
{
  double t0 = now();
  for (size_t i = 0; i < n; i++) {
    uint8_t scope;
    const struct answer *a = table_lookup(t, addrs[i], &scope);
    *sink += a->dc[0] + scope;
  }
  return (now() - t0) * 1e9 / (double)n;
}

/* Mean ns per direct computation (the per-request path) over addrs. */
static double time_direct(const struct dcmap *m, struct geo *g,
                          const addr128 *addrs, size_t n, uint64_t *sink)
{
  double t0 = now();
  for (size_t i = 0; i < n; i++) {
    struct answer a;
    if (rank_direct(m, g, addrs[i], &a, NULL, NULL, NULL) == 0)
      *sink += a.dc[0];
  }
  return (now() - t0) * 1e9 / (double)n;
}

static int cmp_double(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
  const char *db_path = "data/GeoLite2-City.mmdb";
  const char *map_path = "examples/dcmap.yaml";
  size_t n_each = 1000000;
  uint64_t seed = 20261129;
  struct diag d = DIAG_INIT;
  struct dcmap *m = NULL;
  struct geo *g = NULL;
  struct table *t = NULL;
  struct table_stats st;
  struct v6nets v6 = {0};

  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--db") && i + 1 < argc)
      db_path = argv[++i];
    else if (!strcmp(argv[i], "--map") && i + 1 < argc)
      map_path = argv[++i];
    else if (!strcmp(argv[i], "--n") && i + 1 < argc)
      n_each = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--seed") && i + 1 < argc)
      seed = strtoull(argv[++i], NULL, 10);
    else {
      fprintf(stderr,
              "usage: bench-lookup [--db DB] [--map MAP] [--n N] [--seed S]\n");
      return 2;
    }
  }
  if (dcmap_load(map_path, &m, &d) != 0 || geo_open(db_path, &g, &d) != 0) {
    diag_print(&d, stderr);
    return 1;
  }
  if (table_build(m, g, &t, &d) != 0) {
    diag_print(&d, stderr);
    return 1;
  }
  table_get_stats(t, &st);

  if (geo_walk(g, collect_v6, &v6, NULL) != 0 || v6.n == 0) {
    fprintf(stderr, "bench-lookup: no IPv6 networks in %s\n", db_path);
    return 1;
  }
  size_t n = 2 * n_each;
  addr128 *addrs = malloc(n * sizeof(*addrs));
  if (addrs == NULL)
    return 1;
  rng.state = seed;
  for (size_t i = 0; i < n_each; i++)
    addrs[i] = (addr128)(uint32_t)rng_next(&rng);
  for (size_t i = n_each; i < n; i++) {
    size_t k = rng_next(&rng) % v6.n;
    addr128 host =
        addr_make(rng_next(&rng), rng_next(&rng)) & ~addr_mask(v6.plen[k]);
    addrs[i] = v6.start[k] | host;
  }

  /*
   * Timing: ROUNDS rounds, each timing the table over both halves PASSES
   * times (a pass takes a tenth of a second, so a burst of load elsewhere
   * on a shared host can spoil one; the median pass counts) and then the
   * direct path over the same addresses once (some seconds). Figures are
   * medians of the rounds, and the speedup is the median of the per-round
   * ratios, so a machine that slows down between rounds does not skew it.
   */
  double table_ns[ROUNDS], v4_ns[ROUNDS], v6_ns[ROUNDS], naive_ns[ROUNDS];
  double ratio[ROUNDS];
  uint64_t sink = 0;
  for (int r = 0; r < ROUNDS; r++) {
    double p4[PASSES], p6[PASSES];
    for (int p = 0; p < PASSES; p++) {
      p4[p] = time_table(t, addrs, n_each, &sink);
      p6[p] = time_table(t, addrs + n_each, n_each, &sink);
    }
    qsort(p4, PASSES, sizeof(double), cmp_double);
    qsort(p6, PASSES, sizeof(double), cmp_double);
    v4_ns[r] = p4[PASSES / 2];
    v6_ns[r] = p6[PASSES / 2];
    table_ns[r] = (v4_ns[r] + v6_ns[r]) / 2;
    naive_ns[r] = time_direct(m, g, addrs, n, &sink);
    ratio[r] = naive_ns[r] / table_ns[r];
  }
  qsort(table_ns, ROUNDS, sizeof(double), cmp_double);
  qsort(v4_ns, ROUNDS, sizeof(double), cmp_double);
  qsort(v6_ns, ROUNDS, sizeof(double), cmp_double);
  qsort(naive_ns, ROUNDS, sizeof(double), cmp_double);
  qsort(ratio, ROUNDS, sizeof(double), cmp_double);

  /* Agreement: every address, table against direct, byte for byte. */
  size_t agree = 0;
  for (size_t i = 0; i < n; i++) {
    struct answer direct;
    uint8_t scope;
    if (rank_direct(m, g, addrs[i], &direct, NULL, NULL, NULL) != 0)
      continue;
    if (memcmp(table_lookup(t, addrs[i], &scope), &direct, sizeof(direct)) == 0)
      agree++;
  }

  printf("build_seconds: %.3f s\n", st.build_seconds);
  printf("db_records: %zu records\n", st.records);
  printf("table_ranges: %zu ranges\n", st.ranges);
  printf("table_ranges_v4: %zu ranges\n", st.ranges_v4);
  printf("table_ranges_v6: %zu ranges\n", st.ranges_v6);
  printf("table_bytes: %zu bytes\n", st.bytes);
  printf("answers: %zu answers\n", st.answers);
  printf("table_ns_per_lookup: %.1f ns\n", table_ns[ROUNDS / 2]);
  printf("table_ns_per_lookup_v4: %.1f ns\n", v4_ns[ROUNDS / 2]);
  printf("table_ns_per_lookup_v6: %.1f ns\n", v6_ns[ROUNDS / 2]);
  printf("naive_ns_per_lookup: %.1f ns\n", naive_ns[ROUNDS / 2]);
  printf("speedup_vs_naive: %.1f x\n", ratio[ROUNDS / 2]);
  printf("agreement_pct: %.3f %%\n", 100.0 * (double)agree / (double)n);
  fflush(stdout);
  fprintf(stderr, "(checksum %llu)\n", (unsigned long long)sink);

  free(addrs);
  free(v6.start);
  free(v6.plen);
  table_free(t);
  geo_close(g);
  dcmap_free(m);
  diag_free(&d);
  return agree == n ? 0 : 1;
}
