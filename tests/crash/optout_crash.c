/*
 * optout_crash: kill -9 geosteerd while it records opt-outs, and check
 * that no acknowledged opt-out is lost and the store stays intact.
 *
 *   optout-crash [--acks N] [--kills K] [--daemon PATH] [--db PATH]
 *                [--map PATH] [--seed S] [--keep] [--verbose]
 *
 * It starts the daemon on a private folder, sends optout.set for users
 * crash-user-0, crash-user-1, ... on the admin socket as fast as the acks
 * come, and records every acknowledged user. A second thread kills the
 * daemon with SIGKILL at a pseudo-random moment (a fixed seed, so a run
 * can be replayed): 20..300 ms after it logged event=started, and in every
 * fifth round 0..60 ms after it was spawned, while it opens or migrates
 * the store. Then it restarts the daemon and goes on, until at least N
 * writes were acknowledged over at least K kills. Finally it starts the
 * daemon once more, checks every acknowledged user with optout.get (the
 * store) and a route request (the index loaded from it: reason optout),
 * stops it with SIGTERM (exit status 0 required) and runs PRAGMA
 * integrity_check on the store with sqlite3. The last line is
 *
 *   crash: acked=N kills=K lost=L integrity=ok
 *
 * and the exit status is 0 only when nothing was lost, the store is
 * intact, and every opt-out has exactly its one audit event.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../daemon_harness.h"
#include "geosteer/client.h"

#define START_WAIT_MS 20000   /* daemon start, log polled */
#define STOP_WAIT_MS 20000    /* SIGTERM to exit */
#define CALL_MS 10000         /* one admin call */
#define KILL_MIN_MS 20        /* after event=started */
#define KILL_SPAN_MS 281      /* ... up to 300 ms */
#define EARLY_KILL_SPAN_MS 61 /* every fifth round: 0..60 ms after spawn */
#define EARLY_KILL_EVERY 5

struct opts {
  long acks, kills;
  const char *daemon, *db, *map;
  uint64_t seed;
  bool keep, verbose;
};

struct run {
  struct opts o;
  char dir[128];
  char config[256], admin[256], store[256], log[256];
  uint64_t rng;
  uint8_t *acked; /* acked[n]: crash-user-n was acknowledged */
  size_t cap;     /* of acked */
  long next;      /* next user number to send */
  long nacked, nkills, rounds, refused;
};

/* ---- small utilities ---------------------------------------------------- */

/* splitmix64: the fixed-seed source of every random choice. */
static uint64_t next_random(struct run *r)
{
  uint64_t z = (r->rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void die(const char *fmt, ...)
{
  va_list ap;
  fprintf(stderr, "optout-crash: ");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(1);
}

/* The log from offset from; malloc'd, never NULL. */
static char *read_log(const struct run *r, long from)
{
  char *text = harness_read_file(r->log, from, NULL);
  if (text == NULL && (text = strdup("")) == NULL)
    die("out of memory");
  return text;
}

/* Prints the log from offset from to stderr (for a failure). */
static void dump_log(const struct run *r, long from)
{
  char *text = harness_read_file(r->log, from, NULL);

  if (text == NULL)
    return;
  fprintf(stderr, "--- daemon log ---\n");
  fputs(text, stderr);
  free(text);
}

/* ---- the daemon --------------------------------------------------------- */

static pid_t spawn(const struct run *r)
{
  char *argv[] = {(char *)r->o.daemon, "-c", (char *)r->config, NULL};
  pid_t pid = harness_spawn(r->log, argv, NULL);

  if (pid < 0)
    die("fork: %s", strerror(errno));
  return pid;
}

/*
 * Waits for event=started after from; dies if the daemon exits or does
 * not start in time. Returns the route listener's port.
 */
static uint16_t wait_started(const struct run *r, pid_t pid, long from)
{
  int64_t deadline = harness_now_ms() + START_WAIT_MS;
  int status;

  for (;;) {
    char *text = read_log(r, from);
    if (strstr(text, "event=started")) {
      uint16_t port = harness_listen_port(text, "route");
      free(text);
      return port;
    }
    free(text);
    if (waitpid(pid, &status, WNOHANG) == pid) {
      dump_log(r, from);
      die("geosteerd exited during start (status 0x%x)", (unsigned)status);
    }
    if (harness_now_ms() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, NULL, 0);
      dump_log(r, from);
      die("geosteerd did not start within %d ms", START_WAIT_MS);
    }
    harness_sleep_ms(5);
  }
}

/* Reaps a daemon that was sent SIGKILL; fails if it died otherwise. */
static void reap_killed(const struct run *r, pid_t pid, long from)
{
  int status;

  if (waitpid(pid, &status, 0) != pid)
    die("waitpid: %s", strerror(errno));
  if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL) {
    dump_log(r, from);
    die("geosteerd ended by itself before the kill (status 0x%x)",
        (unsigned)status);
  }
}

struct killer {
  pthread_t thread;
  pid_t pid;
  long delay_ms;
};

static void *killer_main(void *arg)
{
  struct killer *k = arg;
  harness_sleep_ms((int)k->delay_ms);
  kill(k->pid, SIGKILL);
  return NULL;
}

/* ---- writes ------------------------------------------------------------- */

static void mark_acked(struct run *r, long n)
{
  if ((size_t)n >= r->cap) {
    size_t cap = r->cap ? r->cap * 2 : 4096;
    while (cap <= (size_t)n)
      cap *= 2;
    uint8_t *p = realloc(r->acked, cap);
    if (p == NULL)
      die("out of memory");
    memset(p + r->cap, 0, cap - r->cap);
    r->acked = p;
    r->cap = cap;
  }
  if (!r->acked[n]) {
    r->acked[n] = 1;
    r->nacked++;
  }
}

static bool is_true(const msgpack_object *map, const char *key)
{
  size_t n = strlen(key);
  if (map == NULL || map->type != MSGPACK_OBJECT_MAP)
    return false;
  for (uint32_t i = 0; i < map->via.map.size; i++) {
    const msgpack_object *k = &map->via.map.ptr[i].key;
    const msgpack_object *v = &map->via.map.ptr[i].val;
    if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
        memcmp(k->via.str.ptr, key, n) == 0)
      return v->type == MSGPACK_OBJECT_BOOLEAN && v->via.boolean;
  }
  return false;
}

/* Sets users until the connection fails (the kill). */
static void write_until_killed(struct run *r, gs_client *c)
{
  char user[32];
  gs_arg args[2] = {{"user", user, false}, {"actor", "crash-test", false}};

  for (;;) {
    const msgpack_object *res;
    gs_remote_error err;
    long n = r->next++;
    snprintf(user, sizeof(user), "crash-user-%ld", n);
    int rc = gs_client_call(c, "optout.set", args, 2, &res, &err);
    if (rc == 0 && is_true(res, "opted_out")) {
      mark_acked(r, n);
    } else if (rc == GS_ERR_REMOTE) {
      r->refused++; /* e.g. STORE_UNAVAILABLE: not acknowledged */
    } else {
      return; /* killed */
    }
  }
}

/* One start and kill; returns after the daemon is reaped. */
static void round_once(struct run *r)
{
  long from = harness_file_size(r->log);
  bool early = r->rounds % EARLY_KILL_EVERY == EARLY_KILL_EVERY - 1;
  long acked_before = r->nacked;
  struct killer k;
  pid_t pid;

  r->rounds++;
  pid = spawn(r);
  k.pid = pid;
  if (early) {
    k.delay_ms = (long)(next_random(r) % EARLY_KILL_SPAN_MS);
    harness_sleep_ms((int)k.delay_ms);
    kill(pid, SIGKILL);
    reap_killed(r, pid, from);
    r->nkills++;
    if (r->o.verbose)
      fprintf(stderr, "round %ld: killed %ld ms after spawn\n", r->rounds,
              k.delay_ms);
    return;
  }
  wait_started(r, pid, from);
  k.delay_ms = KILL_MIN_MS + (long)(next_random(r) % KILL_SPAN_MS);
  gs_client *c = NULL;
  int rc = gs_client_connect(r->admin, CALL_MS, &c);
  if (rc != 0) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    die("connect %s: %s", r->admin, gs_client_strerror(rc));
  }
  if (pthread_create(&k.thread, NULL, killer_main, &k) != 0)
    die("pthread_create failed");
  write_until_killed(r, c);
  pthread_join(k.thread, NULL);
  gs_client_close(c);
  reap_killed(r, pid, from);
  r->nkills++;
  if (r->o.verbose)
    fprintf(stderr, "round %ld: killed %ld ms after start, %ld acked\n",
            r->rounds, k.delay_ms, r->nacked - acked_before);
}

/* ---- the final check ---------------------------------------------------- */

/*
 * Asks for every acknowledged user, in the store (optout.get) and on the
 * route path (the index loaded at start); returns how many are not opted
 * out in either.
 */
static long count_lost(struct run *r, int64_t *stored)
{
  long from = harness_file_size(r->log);
  pid_t pid = spawn(r);
  gs_client *c = NULL, *route = NULL;
  char user[32], where[80];
  gs_arg arg = {"user", user, false};
  long lost = 0;
  int rc, status;
  uint16_t port = wait_started(r, pid, from);

  if ((rc = gs_client_connect(r->admin, CALL_MS, &c)) != 0)
    die("connect %s: %s", r->admin, gs_client_strerror(rc));
  snprintf(where, sizeof(where), "127.0.0.1:%u", (unsigned)port);
  if ((rc = gs_client_connect(where, CALL_MS, &route)) != 0)
    die("connect to the route listener '%s': %s", where,
        gs_client_strerror(rc));
  for (long n = 0; n < r->next; n++) {
    const msgpack_object *res;
    gs_remote_error err;
    gs_route_answer ans;
    if ((size_t)n >= r->cap || !r->acked[n])
      continue;
    snprintf(user, sizeof(user), "crash-user-%ld", n);
    rc = gs_client_call(c, "optout.get", &arg, 1, &res, &err);
    if (rc != 0)
      die("optout.get: %s%s%s", gs_client_strerror(rc),
          rc == GS_ERR_REMOTE ? ": " : "",
          rc == GS_ERR_REMOTE ? err.message : "");
    bool in_store = is_true(res, "opted_out");
    rc = gs_route(route, user, "81.2.69.5", NULL, false, NULL, &ans, &err);
    if (rc != 0)
      die("route: %s", gs_client_strerror(rc));
    bool in_index = strcmp(ans.reason, "optout") == 0;
    if (!in_store || !in_index) {
      lost++;
      if (lost <= 10)
        fprintf(stderr,
                "lost: crash-user-%ld was acknowledged (store: %s, route "
                "reason: %s)\n",
                n, in_store ? "opted out" : "missing", ans.reason);
    }
  }
  gs_client_close(route);
  *stored = -1;
  const msgpack_object *res;
  gs_remote_error err;
  if (gs_client_call(c, "optout.count", NULL, 0, &res, &err) == 0 &&
      res->type == MSGPACK_OBJECT_MAP && res->via.map.size == 1 &&
      res->via.map.ptr[0].val.type == MSGPACK_OBJECT_POSITIVE_INTEGER)
    *stored = (int64_t)res->via.map.ptr[0].val.via.u64;
  gs_client_close(c);

  kill(pid, SIGTERM);
  status = harness_wait_exit(pid, STOP_WAIT_MS);
  if (status == -1)
    die("geosteerd did not stop within %d ms of SIGTERM", STOP_WAIT_MS);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    dump_log(r, from);
    die("geosteerd exited with status 0x%x after SIGTERM", (unsigned)status);
  }
  return lost;
}

static int64_t query_int(sqlite3 *db, const char *sql)
{
  sqlite3_stmt *st;
  int64_t v = -1;
  if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
    return -1;
  if (sqlite3_step(st) == SQLITE_ROW)
    v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

/*
 * PRAGMA integrity_check on the stopped daemon's store; also whether the
 * opt-outs and their audit events agree (one transaction each).
 */
static bool store_ok(const struct run *r, bool *audit_ok)
{
  sqlite3 *db = NULL;
  sqlite3_stmt *st;
  bool ok = false;

  *audit_ok = false;
  if (sqlite3_open_v2(r->store, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
    fprintf(stderr, "optout-crash: open %s: %s\n", r->store,
            sqlite3_errmsg(db));
    sqlite3_close(db);
    return false;
  }
  if (sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL) ==
      SQLITE_OK) {
    if (sqlite3_step(st) == SQLITE_ROW) {
      const char *text = (const char *)sqlite3_column_text(st, 0);
      ok = text && strcmp(text, "ok") == 0;
      if (!ok)
        fprintf(stderr, "integrity_check: %s\n", text ? text : "(null)");
    }
    sqlite3_finalize(st);
  }
  int64_t optouts = query_int(db, "SELECT count(*) FROM optout");
  int64_t events = query_int(db, "SELECT count(*) FROM audit WHERE action = "
                                 "'set'");
  int64_t orphans = query_int(db, "SELECT count(*) FROM optout WHERE uid NOT "
                                  "IN (SELECT uid FROM audit)");
  *audit_ok = optouts >= 0 && optouts == events && orphans == 0 &&
              query_int(db, "PRAGMA user_version") >= 3;
  if (!*audit_ok)
    fprintf(stderr,
            "optout-crash: %lld opt-outs, %lld set events, %lld opt-outs "
            "without an event\n",
            (long long)optouts, (long long)events, (long long)orphans);
  sqlite3_close(db);
  return ok;
}

/* ---- setup -------------------------------------------------------------- */

static void usage(FILE *out)
{
  fprintf(out, "usage: optout-crash [--acks N] [--kills K] [--daemon PATH]\n"
               "                    [--db PATH] [--map PATH] [--seed S]\n"
               "                    [--keep] [--verbose]\n");
}

static void parse(int argc, char **argv, struct opts *o)
{
  o->acks = 2000;
  o->kills = 20;
  o->daemon = "build/geosteerd";
  o->db = "tests/fixtures/city-test.mmdb";
  o->map = "tests/fixtures/maps/test-map.yaml";
  o->seed = 0x67656f7374656572ull;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    bool has_value = i + 1 < argc;
    if (!strcmp(a, "--keep")) {
      o->keep = true;
    } else if (!strcmp(a, "--verbose") || !strcmp(a, "-v")) {
      o->verbose = true;
    } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      usage(stdout);
      exit(0);
    } else if (has_value && !strcmp(a, "--acks")) {
      o->acks = strtol(argv[++i], NULL, 10);
    } else if (has_value && !strcmp(a, "--kills")) {
      o->kills = strtol(argv[++i], NULL, 10);
    } else if (has_value && !strcmp(a, "--seed")) {
      o->seed = strtoull(argv[++i], NULL, 0);
    } else if (has_value && !strcmp(a, "--daemon")) {
      o->daemon = argv[++i];
    } else if (has_value && !strcmp(a, "--db")) {
      o->db = argv[++i];
    } else if (has_value && !strcmp(a, "--map")) {
      o->map = argv[++i];
    } else {
      fprintf(stderr, "optout-crash: unknown or incomplete option '%s'\n", a);
      usage(stderr);
      exit(2);
    }
  }
  if (o->acks < 1 || o->kills < 1) {
    fprintf(stderr, "optout-crash: --acks and --kills must be at least 1\n");
    exit(2);
  }
}

static void setup(struct run *r)
{
  char db[PATH_MAX], map[PATH_MAX], daemon_path[PATH_MAX];
  FILE *f;

  if (realpath(r->o.db, db) == NULL)
    die("%s: %s", r->o.db, strerror(errno));
  if (realpath(r->o.map, map) == NULL)
    die("%s: %s", r->o.map, strerror(errno));
  if (realpath(r->o.daemon, daemon_path) == NULL)
    die("%s: %s (build it with make)", r->o.daemon, strerror(errno));
  r->o.daemon = strdup(daemon_path);
  if (harness_temp_dir(r->dir, sizeof(r->dir), "gs-crash") == NULL)
    die("mkdtemp: %s", strerror(errno));
  snprintf(r->config, sizeof(r->config), "%s/geosteer.yaml", r->dir);
  snprintf(r->admin, sizeof(r->admin), "%s/admin.sock", r->dir);
  snprintf(r->store, sizeof(r->store), "%s/geosteer.db", r->dir);
  snprintf(r->log, sizeof(r->log), "%s/geosteerd.log", r->dir);
  f = fopen(r->config, "w");
  if (f == NULL)
    die("%s: %s", r->config, strerror(errno));
  harness_print_config(f, r->admin, NULL, db, map, r->store, NULL);
  fclose(f);
}

static void cleanup(const struct run *r)
{
  if (r->o.keep) {
    fprintf(stderr, "optout-crash: kept %s\n", r->dir);
    return;
  }
  harness_remove_dir(r->dir);
}

int main(int argc, char **argv)
{
  struct run r;
  long lost;
  int64_t stored;
  bool integrity, audit_ok;
  long max_rounds;

  memset(&r, 0, sizeof(r));
  parse(argc, argv, &r.o);
  signal(SIGPIPE, SIG_IGN);
  r.rng = r.o.seed;
  setup(&r);
  /* A daemon that never acknowledges anything must not loop forever. */
  max_rounds = 20 * r.o.kills + r.o.acks + 100;
  while (r.nacked < r.o.acks || r.nkills < r.o.kills) {
    if (r.rounds >= max_rounds) {
      fprintf(stderr,
              "optout-crash: %ld rounds and only %ld acknowledged writes; "
              "log in %s\n",
              r.rounds, r.nacked, r.log);
      r.o.keep = true;
      cleanup(&r);
      return 1;
    }
    round_once(&r);
  }
  lost = count_lost(&r, &stored);
  integrity = store_ok(&r, &audit_ok);
  printf("crash: rounds=%ld sent=%ld refused=%ld stored=%lld\n", r.rounds,
         r.next, r.refused, (long long)stored);
  printf("crash: acked=%ld kills=%ld lost=%ld integrity=%s\n", r.nacked,
         r.nkills, lost, integrity ? "ok" : "FAILED");
  if (stored < r.nacked) {
    fprintf(stderr, "optout-crash: optout.count %lld < %ld acknowledged\n",
            (long long)stored, r.nacked);
  }
  bool pass = lost == 0 && integrity && audit_ok && stored >= r.nacked;
  if (!pass)
    r.o.keep = true;
  cleanup(&r);
  free(r.acked);
  free((char *)r.o.daemon);
  return pass ? 0 : 1;
}
