/*
 * geosteer: the command-line tool for ops and support.
 *
 * Offline commands work on files and need no server:
 *   geosteer map check MAP [--db DB]      validate a map (and build a table)
 *   geosteer explain IP --map MAP --db DB  show how an address is routed
 * Client commands talk to a running geosteerd:
 *   geosteer route [--server HOST:PORT] [--user U] [--ip IP] ...
 *   geosteer [--admin SOCK] map reload|show, dc drain|undrain|list,
 *            stats, explain IP
 * Output is for people by default; --json prints one JSON value for
 * scripts. Exit status: 0 success, 1 failure (bad input, an error reply,
 * no server), 2 usage error.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <errno.h>
#include <unistd.h>

#include "dcmap.h"
#include "geosteer/client.h"
#include "geo.h"
#include "geosteer/geosteer.h"
#include "rank.h"
#include "table.h"
#include "text.h"

#define EXIT_BAD 1
#define EXIT_USAGE 2

#define DEFAULT_SERVER "127.0.0.1:7400"
#define DEFAULT_ADMIN "var/admin.sock"
#define TIMEOUT_MS 30000 /* map.reload waits for a whole rebuild */

struct opts {
  const char *map;
  const char *db;
  const char *server;
  const char *admin;
  const char *user, *ip, *hint, *session;
  const char *actor, *reason;
  bool no_geo;
  bool json;
  const char *args[4]; /* positional arguments */
  int nargs;
};

static void usage(FILE *out)
{
  fprintf(out,
          "usage: geosteer [--json] COMMAND ...\n"
          "\n"
          "Offline (files only):\n"
          "  map check MAP [--db DB]       validate a data-center map; with\n"
          "                                --db also build the route table\n"
          "  explain IP --map MAP --db DB  show how an address is routed\n"
          "\n"
          "Session clients (route listener, default " DEFAULT_SERVER "):\n"
          "  route [--server HOST:PORT] [--user U] [--ip IP] [--hint DC]\n"
          "        [--no-geo] [--session S]\n"
          "\n"
          "Operations (admin socket, default " DEFAULT_ADMIN "):\n"
          "  [--admin SOCK] map reload | map show\n"
          "  [--admin SOCK] dc drain DC | dc undrain DC | dc list\n"
          "  [--admin SOCK] stats\n"
          "  [--admin SOCK] explain IP\n"
          "\n"
          "Support tools (admin socket): geolocation opt-outs\n"
          "  [--admin SOCK] optout set USER --actor NAME [--reason TEXT]\n"
          "  [--admin SOCK] optout clear USER --actor NAME [--reason TEXT]\n"
          "  [--admin SOCK] optout get USER | optout export USER\n"
          "  [--admin SOCK] optout erase USER --actor NAME\n"
          "  [--admin SOCK] optout import FILE --actor NAME [--reason TEXT]\n"
          "  [--admin SOCK] optout count\n"
          "\n"
          "  --json     print JSON for scripts\n"
          "  --version  print the version\n"
          "\n"
          "Exit status: 0 ok, 1 failure, 2 usage error.\n");
}

static int parse_opts(int argc, char **argv, int first, struct opts *o)
{
  for (int i = first; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--json")) {
      o->json = true;
    } else if (!strcmp(a, "--no-geo")) {
      o->no_geo = true;
    } else if (!strcmp(a, "--map") || !strcmp(a, "--db") ||
               !strcmp(a, "--server") || !strcmp(a, "--admin") ||
               !strcmp(a, "--user") || !strcmp(a, "--ip") ||
               !strcmp(a, "--hint") || !strcmp(a, "--session") ||
               !strcmp(a, "--actor") || !strcmp(a, "--reason")) {
      const char **slot = !strcmp(a, "--map")      ? &o->map
                          : !strcmp(a, "--db")     ? &o->db
                          : !strcmp(a, "--server") ? &o->server
                          : !strcmp(a, "--admin")  ? &o->admin
                          : !strcmp(a, "--user")   ? &o->user
                          : !strcmp(a, "--ip")     ? &o->ip
                          : !strcmp(a, "--hint")   ? &o->hint
                          : !strcmp(a, "--actor")  ? &o->actor
                          : !strcmp(a, "--reason") ? &o->reason
                                                   : &o->session;
      if (i + 1 >= argc) {
        fprintf(stderr, "geosteer: %s needs a value\n", a);
        return -1;
      }
      *slot = argv[++i];
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

/* ---- client commands ---------------------------------------------------- */

static void print_json(const msgpack_object *o)
{
  switch (o->type) {
  case MSGPACK_OBJECT_NIL:
    printf("null");
    break;
  case MSGPACK_OBJECT_BOOLEAN:
    printf(o->via.boolean ? "true" : "false");
    break;
  case MSGPACK_OBJECT_POSITIVE_INTEGER:
    printf("%llu", (unsigned long long)o->via.u64);
    break;
  case MSGPACK_OBJECT_NEGATIVE_INTEGER:
    printf("%lld", (long long)o->via.i64);
    break;
  case MSGPACK_OBJECT_FLOAT32:
  case MSGPACK_OBJECT_FLOAT64:
    printf("%.6g", o->via.f64);
    break;
  case MSGPACK_OBJECT_STR: {
    char *s = strndup(o->via.str.ptr, o->via.str.size);
    json_str(s ? s : "");
    free(s);
    break;
  }
  case MSGPACK_OBJECT_ARRAY:
    putchar('[');
    for (uint32_t i = 0; i < o->via.array.size; i++) {
      if (i)
        putchar(',');
      print_json(&o->via.array.ptr[i]);
    }
    putchar(']');
    break;
  case MSGPACK_OBJECT_MAP:
    putchar('{');
    for (uint32_t i = 0; i < o->via.map.size; i++) {
      if (i)
        putchar(',');
      print_json(&o->via.map.ptr[i].key);
      putchar(':');
      print_json(&o->via.map.ptr[i].val);
    }
    putchar('}');
    break;
  default:
    printf("null");
  }
}

static bool is_scalar(const msgpack_object *o)
{
  return o->type != MSGPACK_OBJECT_ARRAY && o->type != MSGPACK_OBJECT_MAP;
}

/* Indented "key: value" text, one fact per line. */
static void print_human(const msgpack_object *o, int indent, bool in_list)
{
  if (is_scalar(o)) {
    if (o->type == MSGPACK_OBJECT_STR)
      printf("%.*s\n", (int)o->via.str.size, o->via.str.ptr);
    else if (o->type == MSGPACK_OBJECT_FLOAT32 ||
             o->type == MSGPACK_OBJECT_FLOAT64)
      printf("%.6g\n", o->via.f64);
    else {
      print_json(o);
      putchar('\n');
    }
    return;
  }
  if (o->type == MSGPACK_OBJECT_ARRAY) {
    if (o->via.array.size == 0)
      printf("%s(none)\n", in_list ? "" : "");
    for (uint32_t i = 0; i < o->via.array.size; i++) {
      printf("%*s- ", indent, "");
      print_human(&o->via.array.ptr[i], indent + 2, true);
    }
    return;
  }
  for (uint32_t i = 0; i < o->via.map.size; i++) {
    const msgpack_object *k = &o->via.map.ptr[i].key;
    const msgpack_object *v = &o->via.map.ptr[i].val;
    if (!(in_list && i == 0))
      printf("%*s", indent, "");
    printf("%.*s:", k->type == MSGPACK_OBJECT_STR ? (int)k->via.str.size : 1,
           k->type == MSGPACK_OBJECT_STR ? k->via.str.ptr : "?");
    if (is_scalar(v)) {
      putchar(' ');
      print_human(v, 0, false);
    } else if ((v->type == MSGPACK_OBJECT_ARRAY && v->via.array.size == 0) ||
               (v->type == MSGPACK_OBJECT_MAP && v->via.map.size == 0)) {
      printf(" (none)\n");
    } else {
      putchar('\n');
      print_human(v, indent + 2, false);
    }
  }
}

static int report_call_error(const char *where, int rc,
                             const gs_remote_error *err)
{
  if (rc == GS_ERR_REMOTE)
    fprintf(stderr, "geosteer: %s: %s (%d): %s\n", where, err->name, err->code,
            err->message);
  else
    fprintf(stderr, "geosteer: %s: %s\n", where, gs_client_strerror(rc));
  return EXIT_BAD;
}

static int admin_connect(struct opts *o, gs_client **c);

static int cmd_admin(struct opts *o, const char *method, const char *argname)
{
  gs_client *c = NULL;
  gs_remote_error err;
  gs_arg arg;
  const msgpack_object *r;
  int rc;

  if ((argname && o->nargs != 1) || (!argname && o->nargs != 0)) {
    fprintf(stderr, "geosteer: %s takes %s\n", method,
            argname ? "one argument" : "no arguments");
    return EXIT_USAGE;
  }
  if ((rc = admin_connect(o, &c)) != 0)
    return rc;
  arg = (gs_arg){argname, argname ? o->args[0] : NULL, false};
  rc = gs_client_call(c, method, &arg, argname ? 1 : 0, &r, &err);
  if (rc != 0) {
    rc = report_call_error(method, rc, &err);
  } else {
    if (o->json)
      print_json(r), putchar('\n');
    else
      print_human(r, 0, false);
    rc = 0;
  }
  gs_client_close(c);
  return rc;
}

static int admin_connect(struct opts *o, gs_client **c)
{
  const char *where = o->admin ? o->admin : DEFAULT_ADMIN;
  char path[4096];
  int rc;

  /* A bare path without a slash would read as host:port. */
  if (strchr(where, '/') == NULL) {
    snprintf(path, sizeof(path), "./%s", where);
    where = path;
  }
  if ((rc = gs_client_connect(where, TIMEOUT_MS, c)) != 0) {
    fprintf(stderr,
            "geosteer: cannot connect to %s: %s (is geosteerd running? "
            "--admin names its admin socket)\n",
            where, gs_client_strerror(rc));
    return EXIT_BAD;
  }
  return 0;
}

/* optout set|clear|get|export|erase USER, optout count. */
static int cmd_optout(struct opts *o, const char *verb)
{
  static const struct {
    const char *verb, *method;
    bool needs_user, needs_actor, takes_reason;
  } verbs[] = {
      {"set", "optout.set", true, true, true},
      {"clear", "optout.clear", true, true, true},
      {"get", "optout.get", true, false, false},
      {"export", "optout.export", true, false, false},
      {"erase", "optout.erase", true, true, false},
      {"count", "optout.count", false, false, false},
  };
  gs_arg args[3];
  size_t nargs = 0;
  size_t k;
  gs_client *c;
  gs_remote_error err;
  const msgpack_object *r;
  int rc;

  for (k = 0; k < sizeof(verbs) / sizeof(verbs[0]); k++)
    if (!strcmp(verbs[k].verb, verb))
      break;
  if (k == sizeof(verbs) / sizeof(verbs[0])) {
    fprintf(stderr, "geosteer: unknown optout command '%s'\n", verb);
    return EXIT_USAGE;
  }
  if (o->nargs != (verbs[k].needs_user ? 1 : 0) ||
      (verbs[k].needs_actor && o->actor == NULL) ||
      (!verbs[k].needs_actor && o->actor) ||
      (!verbs[k].takes_reason && o->reason)) {
    fprintf(stderr, "usage: geosteer optout %s%s%s%s\n", verb,
            verbs[k].needs_user ? " USER" : "",
            verbs[k].needs_actor ? " --actor NAME" : "",
            verbs[k].takes_reason ? " [--reason TEXT]" : "");
    return EXIT_USAGE;
  }
  if (verbs[k].needs_user)
    args[nargs++] = (gs_arg){"user", o->args[0], false};
  if (o->actor)
    args[nargs++] = (gs_arg){"actor", o->actor, false};
  if (o->reason)
    args[nargs++] = (gs_arg){"reason", o->reason, false};
  if ((rc = admin_connect(o, &c)) != 0)
    return rc;
  rc = gs_client_call(c, verbs[k].method, args, nargs, &r, &err);
  if (rc != 0) {
    rc = report_call_error(verbs[k].method, rc, &err);
  } else {
    if (o->json)
      print_json(r), putchar('\n');
    else
      print_human(r, 0, false);
  }
  gs_client_close(c);
  return rc;
}

#define IMPORT_BATCH 500

struct import_counts {
  size_t lines, blank, bad, added, already;
};

static int send_batch(gs_client *c, struct opts *o, char **users, size_t n,
                      struct import_counts *counts)
{
  gs_remote_error err;
  const msgpack_object *r;
  int rc;

  rc = gs_client_call_users(c, "optout.set_many", (const char **)users, n,
                            o->actor, o->reason, &r, &err);
  if (rc != 0)
    return report_call_error("optout.set_many", rc, &err);
  for (uint32_t i = 0; r->type == MSGPACK_OBJECT_MAP && i < r->via.map.size;
       i++) {
    const msgpack_object *key = &r->via.map.ptr[i].key;
    const msgpack_object *val = &r->via.map.ptr[i].val;
    if (key->type != MSGPACK_OBJECT_STR ||
        val->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
      continue;
    if (key->via.str.size == 5 && !memcmp(key->via.str.ptr, "added", 5))
      counts->added += val->via.u64;
    else if (key->via.str.size == 7 && !memcmp(key->via.str.ptr, "already", 7))
      counts->already += val->via.u64;
  }
  return 0;
}

static void progress(const struct import_counts *c, long done, long total)
{
  int pct = total > 0 ? (int)(100 * done / total) : 100;
  int bar = pct / 4;
  fprintf(stderr, "\rimport [%-25.*s] %3d%%  %zu lines", bar,
          "#########################", pct, c->lines);
  fflush(stderr);
}

/* optout import FILE: one user id per line, batched, idempotent. */
static int cmd_import(struct opts *o)
{
  struct import_counts counts = {0};
  char *users[IMPORT_BATCH];
  size_t n = 0;
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  gs_client *c = NULL;
  FILE *f;
  long total = 0;
  bool tty = isatty(STDERR_FILENO) && !o->json;
  int rc = 0;

  if (o->nargs != 1 || o->actor == NULL) {
    fprintf(stderr, "usage: geosteer optout import FILE --actor NAME "
                    "[--reason TEXT]\n");
    return EXIT_USAGE;
  }
  f = fopen(o->args[0], "rb");
  if (f == NULL) {
    fprintf(stderr, "geosteer: %s: %s\n", o->args[0], strerror(errno));
    return EXIT_BAD;
  }
  if (fseek(f, 0, SEEK_END) == 0) {
    total = ftell(f);
    rewind(f);
  }
  if ((rc = admin_connect(o, &c)) != 0) {
    fclose(f);
    return rc;
  }
  while (rc == 0 && (len = getline(&line, &cap, f)) >= 0) {
    counts.lines++;
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
      line[--len] = '\0';
    if (len == 0) {
      counts.blank++;
      continue;
    }
    /* Never echo the id: only where it is and what is wrong. */
    if ((size_t)len > GS_USER_MAX || !text_valid_utf8(line, (size_t)len)) {
      counts.bad++;
      fprintf(stderr,
              "%s%s:%zu: not a user id (must be 1..%d bytes of "
              "UTF-8 without NUL bytes); skipped\n",
              tty ? "\n" : "", o->args[0], counts.lines, GS_USER_MAX);
      continue;
    }
    users[n] = strdup(line);
    if (users[n] == NULL) {
      rc = EXIT_BAD;
      break;
    }
    if (++n == IMPORT_BATCH) {
      rc = send_batch(c, o, users, n, &counts);
      while (n > 0)
        free(users[--n]);
      if (tty)
        progress(&counts, ftell(f), total);
    }
  }
  if (rc == 0 && n > 0)
    rc = send_batch(c, o, users, n, &counts);
  while (n > 0)
    free(users[--n]);
  if (tty) {
    progress(&counts, total, total);
    fputc('\n', stderr);
  }
  free(line);
  fclose(f);
  gs_client_close(c);
  if (o->json)
    printf("{\"lines\":%zu,\"added\":%zu,\"already\":%zu,\"blank\":%zu,"
           "\"bad\":%zu,\"complete\":%s}\n",
           counts.lines, counts.added, counts.already, counts.blank, counts.bad,
           rc == 0 ? "true" : "false");
  else
    printf("%s: %zu lines: %zu opted out now, %zu already opted out, %zu "
           "blank, %zu bad%s\n",
           o->args[0], counts.lines, counts.added, counts.already, counts.blank,
           counts.bad,
           rc == 0 ? ""
                   : " (stopped early; run the import again: it is "
                     "idempotent)");
  return rc != 0 ? rc : counts.bad > 0 ? EXIT_BAD : 0;
}

static int cmd_route(struct opts *o)
{
  const char *where = o->server ? o->server : DEFAULT_SERVER;
  gs_client *c = NULL;
  gs_remote_error err;
  gs_route_answer a;
  int rc;

  if (o->nargs != 0) {
    fprintf(stderr, "usage: geosteer route [--server HOST:PORT] [--user U] "
                    "[--ip IP] [--hint DC] [--no-geo] [--session S]\n");
    return EXIT_USAGE;
  }
  if ((rc = gs_client_connect(where, TIMEOUT_MS, &c)) != 0) {
    fprintf(stderr,
            "geosteer: cannot connect to %s: %s (is geosteerd "
            "running? `make run` starts it)\n",
            where, gs_client_strerror(rc));
    return EXIT_BAD;
  }
  rc = gs_route(c, o->user, o->ip, o->hint, o->no_geo, o->session, &a, &err);
  gs_client_close(c);
  if (rc != 0)
    return report_call_error("route", rc, &err);
  if (o->json) {
    printf("{\"dc\":");
    json_str(a.dc);
    printf(",\"endpoint\":");
    json_str(a.endpoint);
    printf(",\"alternates\":[");
    for (int i = 0; i < a.nalternates; i++) {
      printf("%s{\"dc\":", i ? "," : "");
      json_str(a.alternates[i].dc);
      printf(",\"endpoint\":");
      json_str(a.alternates[i].endpoint);
      printf("}");
    }
    printf("],\"reason\":");
    json_str(a.reason);
    if (a.scope >= 0)
      printf(",\"scope\":%d", a.scope);
    printf("}\n");
  } else {
    printf("dc          %s  %s\n", a.dc, a.endpoint);
    for (int i = 0; i < a.nalternates; i++)
      printf("%s %s  %s\n", i == 0 ? "alternates " : "           ",
             a.alternates[i].dc, a.alternates[i].endpoint);
    printf("reason      %s\n", a.reason);
    if (a.scope >= 0)
      printf("scope       /%d\n", a.scope);
  }
  return 0;
}

int main(int argc, char **argv)
{
  struct opts o;
  int i = 1;

  memset(&o, 0, sizeof(o));
  while (i < argc && argv[i][0] == '-') {
    if (!strcmp(argv[i], "--json")) {
      o.json = true;
    } else if ((!strcmp(argv[i], "--admin") || !strcmp(argv[i], "--server")) &&
               i + 1 < argc) {
      if (!strcmp(argv[i], "--admin"))
        o.admin = argv[++i];
      else
        o.server = argv[++i];
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
    if (o.map == NULL && o.db == NULL)
      return cmd_admin(&o, "explain", "ip");
    return cmd_explain(&o);
  }
  if (!strcmp(argv[i], "optout") && i + 1 < argc) {
    if (parse_opts(argc, argv, i + 2, &o) != 0)
      return EXIT_USAGE;
    if (!strcmp(argv[i + 1], "import"))
      return cmd_import(&o);
    return cmd_optout(&o, argv[i + 1]);
  }
  if (!strcmp(argv[i], "route")) {
    if (parse_opts(argc, argv, i + 1, &o) != 0)
      return EXIT_USAGE;
    return cmd_route(&o);
  }
  static const struct {
    const char *word1, *word2, *method, *arg;
  } admin_cmds[] = {
      {"map", "reload", "map.reload", NULL},
      {"map", "show", "map.show", NULL},
      {"dc", "drain", "dc.drain", "dc"},
      {"dc", "undrain", "dc.undrain", "dc"},
      {"dc", "list", "dc.list", NULL},
      {"stats", NULL, "stats", NULL},
      {"ping", NULL, "ping", NULL},
  };
  for (size_t k = 0; k < sizeof(admin_cmds) / sizeof(admin_cmds[0]); k++) {
    if (strcmp(argv[i], admin_cmds[k].word1) != 0)
      continue;
    int next = i + 1;
    if (admin_cmds[k].word2) {
      if (next >= argc || strcmp(argv[next], admin_cmds[k].word2) != 0)
        continue;
      next++;
    }
    if (parse_opts(argc, argv, next, &o) != 0)
      return EXIT_USAGE;
    return cmd_admin(&o, admin_cmds[k].method, admin_cmds[k].arg);
  }
  fprintf(stderr, "geosteer: unknown command '%s'\n", argv[i]);
  usage(stderr);
  return EXIT_USAGE;
}
