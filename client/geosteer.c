/*
 * geosteer: the command-line tool for ops and support.
 *
 * Offline commands work on files and need no server:
 *   geosteer map check MAP [--db DB]      validate a map (and build a table)
 *   geosteer explain IP --map MAP --db DB  show how an address is routed
 * Output is for people by default; --json prints one JSON object for
 * scripts. Exit status: 0 success, 1 the input is bad, 2 usage error.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dcmap.h"
#include "geo.h"
#include "geosteer/geosteer.h"
#include "rank.h"
#include "table.h"

#define EXIT_BAD 1
#define EXIT_USAGE 2

struct opts {
  const char *map;
  const char *db;
  bool json;
  const char *args[4]; /* positional arguments */
  int nargs;
};

static void usage(FILE *out)
{
  fprintf(out,
          "usage: geosteer [--json] COMMAND ...\n"
          "\n"
          "  map check MAP [--db DB]       validate a data-center map; with\n"
          "                                --db also build the route table\n"
          "  explain IP --map MAP --db DB  show how an address is routed\n"
          "  --version                     print the version\n"
          "\n"
          "Exit status: 0 ok, 1 bad input, 2 usage error.\n");
}

static int parse_opts(int argc, char **argv, int first, struct opts *o)
{
  for (int i = first; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--json")) {
      o->json = true;
    } else if (!strcmp(a, "--map") || !strcmp(a, "--db")) {
      if (i + 1 >= argc) {
        fprintf(stderr, "geosteer: %s needs a file\n", a);
        return -1;
      }
      if (!strcmp(a, "--map"))
        o->map = argv[++i];
      else
        o->db = argv[++i];
    } else if (a[0] == '-' && a[1] != '\0') {
      fprintf(stderr, "geosteer: unknown option '%s'\n", a);
      return -1;
    } else if (o->nargs < 4) {
      o->args[o->nargs++] = a;
    } else {
      fprintf(stderr, "geosteer: too many arguments\n");
      return -1;
    }
  }
  return 0;
}

/* Prints s as a JSON string. */
static void json_str(const char *s)
{
  putchar('"');
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\')
      printf("\\%c", c);
    else if (c < 0x20)
      printf("\\u%04x", c);
    else
      putchar(c);
  }
  putchar('"');
}

static void print_diag_json(const struct diag *d)
{
  printf("\"errors\":[");
  for (size_t i = 0; i < d->count; i++) {
    if (i)
      putchar(',');
    json_str(d->msgs[i]);
  }
  printf("]");
}

static int cmd_map_check(struct opts *o)
{
  struct diag d = DIAG_INIT;
  struct dcmap *m = NULL;
  struct geo *g = NULL;
  struct table *t = NULL;
  struct table_stats st;
  int rc;

  if (o->nargs != 1) {
    fprintf(stderr, "usage: geosteer map check MAP [--db DB]\n");
    return EXIT_USAGE;
  }
  rc = dcmap_load(o->args[0], &m, &d);
  if (rc == 0 && o->db) {
    rc = geo_open(o->db, &g, &d);
    if (rc == 0)
      rc = table_build(m, g, &t, &d);
  }
  if (o->json) {
    printf("{\"ok\":%s,", rc == 0 ? "true" : "false");
    if (m)
      printf("\"datacenters\":%zu,\"limit\":%d,\"nets\":%zu,", m->ndcs,
             m->limit, m->nnets);
    if (t) {
      table_get_stats(t, &st);
      printf("\"ranges\":%zu,\"answers\":%zu,\"table_bytes\":%zu,"
             "\"build_seconds\":%.3f,",
             st.ranges, st.answers, st.bytes, st.build_seconds);
    }
    print_diag_json(&d);
    printf("}\n");
  } else if (rc != 0) {
    diag_print(&d, stderr);
    fprintf(stderr, "%s: %zu problem%s found\n", o->args[0], d.count,
            d.count == 1 ? "" : "s");
  } else {
    size_t nover = 0;
    for (int k = 0; k < OVERRIDE_KINDS_; k++)
      nover += m->noverrides[k];
    printf("%s: ok: %zu data centers, limit %d, %zu overrides, %zu nets\n",
           o->args[0], m->ndcs, m->limit, nover, m->nnets);
    if (t) {
      char date[32];
      time_t epoch = geo_build_epoch(g);
      table_get_stats(t, &st);
      strftime(date, sizeof(date), "%Y-%m-%d", gmtime(&epoch));
      printf("%s: ok: %s of %s; route table: %zu ranges, %zu answers, "
             "%.1f MiB, built in %.2f s\n",
             o->db, geo_type(g), date, st.ranges, st.answers,
             (double)st.bytes / (1 << 20), st.build_seconds);
    }
  }
  table_free(t);
  geo_close(g);
  dcmap_free(m);
  diag_free(&d);
  return rc == 0 ? 0 : EXIT_BAD;
}

static void loc_text(const struct geo_loc *l, char *buf, size_t size)
{
  size_t used = 0;
#define PART(...)                                                              \
  do {                                                                         \
    int n_ = snprintf(buf + used, size - used, __VA_ARGS__);                   \
    if (n_ > 0 && (size_t)n_ < size - used)                                    \
      used += (size_t)n_;                                                      \
  } while (0)
  buf[0] = '\0';
  PART("continent %s, country %s", l->continent[0] ? l->continent : "-",
       l->country[0] ? l->country : "-");
  if (l->subdivision[0])
    PART(", subdivision %s-%s", l->country, l->subdivision);
  if (l->city)
    PART(", city %u", l->city);
  if (l->has_coords)
    PART(", coordinates %.4f, %.4f", l->lat, l->lon);
  else
    PART(", no coordinates");
#undef PART
}

static int cmd_explain(struct opts *o)
{
  struct diag d = DIAG_INIT;
  struct dcmap *m = NULL;
  struct geo *g = NULL;
  struct answer ans;
  struct geo_loc loc;
  struct rank_trace *trace = NULL;
  char resolved[ADDR_TEXT_MAX], where[256];
  addr128 a, norm;
  bool found;
  int rc = EXIT_BAD, plen;

  if (o->nargs != 1 || o->map == NULL || o->db == NULL) {
    fprintf(stderr, "usage: geosteer explain IP --map MAP --db DB\n");
    return EXIT_USAGE;
  }
  if (addr_parse(o->args[0], &a, NULL) != 0) {
    fprintf(stderr, "geosteer: '%s' is not an IPv4 or IPv6 address\n",
            o->args[0]);
    return EXIT_BAD;
  }
  if (dcmap_load(o->map, &m, &d) != 0 || geo_open(o->db, &g, &d) != 0) {
    diag_print(&d, stderr);
    goto done;
  }
  trace = malloc(sizeof(*trace));
  if (trace == NULL)
    goto done;
  norm = addr_normalize(a);
  if (geo_lookup(g, norm, &loc, &found, &plen) != 0 ||
      rank_direct(m, g, a, &ans, NULL, NULL, trace) != 0) {
    fprintf(stderr, "geosteer: %s: database lookup failed\n", o->db);
    goto done;
  }
  addr_format(norm, resolved, sizeof(resolved));
  if (found)
    loc_text(&loc, where, sizeof(where));
  else
    snprintf(where, sizeof(where), "not in the database");
  /* Database networks of IPv4 addresses are counted in IPv4 bits. */
  int db_plen = addr_is_v4(norm) ? plen - 96 : plen;

  if (o->json) {
    printf("{\"address\":");
    json_str(o->args[0]);
    printf(",\"resolved\":");
    json_str(resolved);
    printf(",\"found\":%s,\"db_prefix\":%d", found ? "true" : "false", db_plen);
    if (found) {
      printf(",\"location\":{\"continent\":");
      json_str(loc.continent);
      printf(",\"country\":");
      json_str(loc.country);
      printf(",\"subdivision\":");
      json_str(loc.subdivision);
      printf(",\"city\":%u", loc.city);
      if (loc.has_coords)
        printf(",\"lat\":%.4f,\"lon\":%.4f", loc.lat, loc.lon);
      printf("}");
    }
    printf(",\"rule\":");
    json_str(trace->rule);
    printf(",\"reason\":\"%s\",\"answer\":[", gs_reason_name(ans.reason));
    for (int i = 0; i < ans.n; i++)
      printf("%s\"%s\"", i ? "," : "", m->dcs[ans.dc[i]].id);
    printf("],\"ranking\":[");
    for (int i = 0; i < trace->nsteps; i++) {
      const struct rank_step *s = &trace->steps[i];
      printf("%s{\"dc\":\"%s\",\"km\":%.1f,\"effective_km\":%.1f}",
             i ? "," : "", m->dcs[s->dc].id, s->km, s->effective);
    }
    printf("]}\n");
  } else {
    printf("address   %s", o->args[0]);
    if (norm != a)
      printf(" (resolved as %s)", resolved);
    printf("\nlocation  %s", where);
    if (found)
      printf(" (database network /%d)", db_plen);
    printf("\nrule      %s\nanswer   ", trace->rule);
    for (int i = 0; i < ans.n; i++)
      printf(" %s", m->dcs[ans.dc[i]].id);
    printf("  (reason %s)\n", gs_reason_name(ans.reason));
    if (trace->nsteps > 0) {
      printf("ranking   great-circle km, effective km after bias:\n");
      for (int i = 0; i < trace->nsteps; i++) {
        const struct rank_step *s = &trace->steps[i];
        const struct dc *dc = &m->dcs[s->dc];
        printf("  %3d  %-12s %8.0f km  %8.0f", i + 1, dc->id, s->km,
               s->effective);
        if (dc->bias)
          printf("  (bias %+d)", dc->bias);
        printf("\n");
      }
    }
  }
  rc = 0;
done:
  free(trace);
  geo_close(g);
  dcmap_free(m);
  diag_free(&d);
  return rc;
}

int main(int argc, char **argv)
{
  struct opts o;
  int i = 1;

  memset(&o, 0, sizeof(o));
  while (i < argc && argv[i][0] == '-') {
    if (!strcmp(argv[i], "--json")) {
      o.json = true;
    } else if (!strcmp(argv[i], "--version")) {
      printf("geosteer %s\n", GS_VERSION);
      return 0;
    } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      usage(stdout);
      return 0;
    } else {
      fprintf(stderr, "geosteer: unknown option '%s'\n", argv[i]);
      usage(stderr);
      return EXIT_USAGE;
    }
    i++;
  }
  if (i >= argc) {
    usage(stderr);
    return EXIT_USAGE;
  }
  if (!strcmp(argv[i], "map") && i + 1 < argc &&
      !strcmp(argv[i + 1], "check")) {
    if (parse_opts(argc, argv, i + 2, &o) != 0)
      return EXIT_USAGE;
    return cmd_map_check(&o);
  }
  if (!strcmp(argv[i], "explain")) {
    if (parse_opts(argc, argv, i + 1, &o) != 0)
      return EXIT_USAGE;
    return cmd_explain(&o);
  }
  fprintf(stderr, "geosteer: unknown command '%s'\n", argv[i]);
  usage(stderr);
  return EXIT_USAGE;
}
