/*
 * bench-optout: what geolocation opt-outs cost. bench/bench-optout.sh
 * runs the daemons and calls this program's three commands:
 *
 *   make-store DIR N   creates DIR/geosteer.key and DIR/geosteer.db holding
 *                      N opt-outs, users "bench-user-0" .. "bench-user-<N-1>",
 *                      through the store API (store_optout_set_many), as the
 *                      daemon itself would have written them.
 *   set SOCKET N       N optout.set calls over the admin unix socket, one
 *                      client, each waiting for its (durable) reply.
 *   route ...          a closed-loop load generator for the route listener
 *                      whose requests carry a `user`, so that every request
 *                      goes through the opt-out index.
 *
 * route is loadgen's load (loadgen_core.h: C connections with P requests
 * in flight each, N replies; loadgen_rpc.h: the route request and the
 * check of its reply) with a user in every request. Request k
 * is [0, msgid, "route", [{"user": "<prefix><u>", "ip": ADDR}]] where u is
 * the k-th draw of splitmix64 (server/rng.h; `--users` draws from
 * 0..count-1) and ADDR cycles through the core's 65,536 pre-drawn IPv4
 * addresses, so two runs with the same seed send the same bytes. Replies
 * must be successes with the msgid of the oldest request outstanding on
 * their connection; --expect geo fails the run if any reply has reason
 * "optout", --expect optout if any does not.
 *
 * Output: `name: value unit` lines. Exit status 0 on success, 1 on a
 * failure (message on standard error), 2 on bad usage.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "geosteer/client.h"
#include "loadgen_core.h"
#include "loadgen_rpc.h"
#include "optout.h"
#include "rng.h"
#include "store.h"

#define STORE_BATCH 10000 /* opt-outs per transaction in make-store */
#define USER_MAX 64       /* bytes of "<prefix><u>" */
#define PREFIX_MAX 21     /* bytes of --prefix: with 10 digits, a fixstr */
#define ADMIN_TIMEOUT_MS 10000
#define ADDR_SEED_SALT 0x5eed /* addresses: another sequence than users */

/* Writes the decimal digits of v at p; returns the count. */
static size_t put_decimal(char *p, uint64_t v)
{
  char digits[20];
  size_t n = 0;
  do {
    digits[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v > 0);
  for (size_t i = 0; i < n; i++)
    p[i] = digits[n - 1 - i];
  return n;
}

static int cmp_uid(const void *a, const void *b)
{
  return memcmp(a, b, 16);
}

static int cmp_u64(const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* ---- make-store ------------------------------------------------------- */

/*
 * The uids are sorted before they are inserted: the table is keyed by uid,
 * and inserting in key order keeps the build to seconds. The store's
 * contents do not depend on the order.
 */
static int make_store(const char *dir, size_t n)
{
  char key_path[4096], db_path[4096];
  uint8_t key[OPTOUT_KEY_BYTES];
  uint8_t(*uids)[16] = NULL;
  bool *changed = NULL;
  struct store *s = NULL;
  struct diag d = DIAG_INIT;
  int status = 1;
  uint64_t t0 = loadgen_now_ns();

  if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
    fprintf(stderr, "bench-optout: cannot create %s: %s\n", dir,
            strerror(errno));
    return 1;
  }
  snprintf(key_path, sizeof(key_path), "%s/geosteer.key", dir);
  snprintf(db_path, sizeof(db_path), "%s/geosteer.db", dir);
  /* As the daemon does: a key may only be created with a new store. */
  if (optout_load_key(key_path, access(db_path, F_OK) != 0, key, &d) != 0 ||
      store_open(db_path, &s, &d) != 0) {
    diag_print(&d, stderr);
    goto done;
  }
  uids = malloc(n * sizeof(*uids));
  changed = calloc(STORE_BATCH, sizeof(*changed));
  if (uids == NULL || changed == NULL) {
    fprintf(stderr, "bench-optout: out of memory for %zu uids\n", n);
    goto done;
  }
  for (size_t i = 0; i < n; i++) {
    char user[USER_MAX];
    struct optout_uid u;
    int len = snprintf(user, sizeof(user), "bench-user-%zu", i);
    optout_hash(key, user, (size_t)len, &u);
    optout_uid_bytes(&u, uids[i]);
  }
  qsort(uids, n, sizeof(*uids), cmp_uid);
  for (size_t i = 0; i < n; i += STORE_BATCH) {
    size_t m = n - i < STORE_BATCH ? n - i : STORE_BATCH;
    int rc = store_optout_set_many(s, (const uint8_t(*)[16])(uids + i), m,
                                   "bench-optout", NULL, changed);
    if (rc != 0) {
      fprintf(stderr, "bench-optout: %s: writing opt-outs failed: %s\n",
              db_path, gs_strerror(rc));
      goto done;
    }
  }
  int64_t count = 0;
  if (store_optout_count(s, &count) != 0 || count != (int64_t)n) {
    fprintf(stderr,
            "bench-optout: %s holds %" PRId64 " opt-outs, expected %zu; "
            "make-store needs an empty folder\n",
            db_path, count, n);
    goto done;
  }
  printf("store_rows: %" PRId64 " rows\n", count);
  printf("store_build_seconds: %.3f s\n",
         (double)(loadgen_now_ns() - t0) / 1e9);
  status = 0;
done:
  store_close(s);
  free(uids);
  free(changed);
  diag_free(&d);
  return status;
}

/* ---- set -------------------------------------------------------------- */

/* True when the map m has key set to true. */
static bool map_true(const msgpack_object *m, const char *key)
{
  size_t len = strlen(key);
  if (m->type != MSGPACK_OBJECT_MAP)
    return false;
  for (uint32_t i = 0; i < m->via.map.size; i++) {
    const msgpack_object_kv *kv = &m->via.map.ptr[i];
    if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == len &&
        memcmp(kv->key.via.str.ptr, key, len) == 0)
      return kv->val.type == MSGPACK_OBJECT_BOOLEAN && kv->val.via.boolean;
  }
  return false;
}

static int set_calls(const char *socket_path, size_t n, const char *prefix)
{
  gs_client *c = NULL;
  uint64_t *lat = calloc(n, sizeof(*lat));
  int status = 1, rc;

  if (lat == NULL)
    return 1;
  if ((rc = gs_client_connect(socket_path, ADMIN_TIMEOUT_MS, &c)) != 0) {
    fprintf(stderr, "bench-optout: cannot connect to %s: %s\n", socket_path,
            gs_client_strerror(rc));
    goto done;
  }
  uint64_t t0 = loadgen_now_ns();
  for (size_t i = 0; i < n; i++) {
    char user[USER_MAX];
    const msgpack_object *result;
    gs_remote_error err;
    snprintf(user, sizeof(user), "%s%zu", prefix, i);
    gs_arg args[] = {{"user", user, false},
                     {"actor", "bench-optout", false},
                     {"reason", "benchmark", false}};
    uint64_t t = loadgen_now_ns();
    rc = gs_client_call(c, "optout.set", args, 3, &result, &err);
    lat[i] = loadgen_now_ns() - t;
    if (rc == GS_ERR_REMOTE) {
      fprintf(stderr, "bench-optout: optout.set failed: %s: %s\n", err.name,
              err.message);
      goto done;
    }
    if (rc != 0) {
      fprintf(stderr, "bench-optout: optout.set over %s: %s\n", socket_path,
              gs_client_strerror(rc));
      goto done;
    }
    /* An unchanged user costs no write: every call must be a new one. */
    if (!map_true(result, "changed")) {
      fprintf(stderr,
              "bench-optout: optout.set of %s changed nothing: the user was "
              "already opted out; use a fresh --prefix\n",
              user);
      goto done;
    }
  }
  double secs = (double)(loadgen_now_ns() - t0) / 1e9;
  qsort(lat, n, sizeof(*lat), cmp_u64);
  printf("optout_set_calls: %zu calls\n", n);
  printf("optout_set_per_s: %.0f calls/s\n", (double)n / secs);
  printf("optout_set_p50_ms: %.3f ms\n", (double)lat[(n - 1) / 2] / 1e6);
  printf("optout_set_p99_ms: %.3f ms\n", (double)lat[(n * 99 - 1) / 100] / 1e6);
  printf("optout_set_max_ms: %.3f ms\n", (double)lat[n - 1] / 1e6);
  status = 0;
done:
  gs_client_close(c);
  free(lat);
  return status;
}

/* ---- route ------------------------------------------------------------ */

enum expect { EXPECT_ANY, EXPECT_GEO, EXPECT_OPTOUT };

static struct loadgen_settings route = {
    .prog = "bench-optout",
    .conns = 16,
    .pipeline = 16,
    .total = 1000000,
    LOADGEN_DEFAULTS,
};
static uint64_t user_count; /* 0: any 32-bit number */
static const char *user_prefix = "bench-visitor-";
static size_t user_prefix_len;
static enum expect expect = EXPECT_GEO;
static struct rng user_rng;
static uint64_t optout_replies;

/* The route request with the next user: [{"user": user, "ip": addr}]. */
static size_t encode_request(char *p, uint32_t msgid,
                             const struct loadgen_addr *addr)
{
  char user[USER_MAX];
  uint64_t u = rng_next(&user_rng);
  uint64_t number = user_count ? u % user_count : (uint32_t)u;

  memcpy(user, user_prefix, user_prefix_len);
  size_t len = user_prefix_len + put_decimal(user + user_prefix_len, number);
  return loadgen_rpc_route(p, msgid, user, len, addr);
}

/* A loadgen_parse_fn: loadgen_rpc_reply, counting reason "optout". */
static long route_reply(const char *p, size_t len, uint32_t msgid, bool *failed,
                        char *why, size_t why_size)
{
  static const char optout[] = "\xa6reason\xa6optout"; /* "reason": "optout" */
  long n = loadgen_rpc_reply(p, len, msgid, failed, why, why_size);

  if (n > 0 && !*failed && memmem(p, (size_t)n, optout, sizeof(optout) - 1))
    optout_replies++;
  return n;
}

static bool route_option(const char *opt, const char *val)
{
  uint64_t v;

  if (!strcmp(opt, "--prefix") && val[0] != '\0' && strlen(val) <= PREFIX_MAX)
    user_prefix = val;
  else if (!strcmp(opt, "--users") && loadgen_parse_u64(val, 1, UINT32_MAX, &v))
    user_count = v;
  else if (!strcmp(opt, "--expect") && !strcmp(val, "geo"))
    expect = EXPECT_GEO;
  else if (!strcmp(opt, "--expect") && !strcmp(val, "optout"))
    expect = EXPECT_OPTOUT;
  else if (!strcmp(opt, "--expect") && !strcmp(val, "any"))
    expect = EXPECT_ANY;
  else
    return false;
  return true;
}

static int route_load(int argc, char **argv)
{
  struct loadgen_result r;

  if (!loadgen_options(&route, argc, argv, route_option))
    return 2;
  if (route.port == NULL) {
    fprintf(stderr, "bench-optout: route needs --port\n");
    return 2;
  }
  user_prefix_len = strlen(user_prefix);
  /* Users follow the sequence of --seed, addresses another one. */
  user_rng.state = route.seed;
  route.seed ^= ADDR_SEED_SALT;
  route.encode = encode_request;
  route.parse = route_reply;
  if (loadgen_run(&route, &r) != 0)
    return 1;
  if (r.errors > 0) {
    fprintf(stderr, "bench-optout: %" PRIu64 " error replies; the first: %s\n",
            r.errors, r.first_error);
    return 1;
  }
  if ((expect == EXPECT_GEO && optout_replies > 0) ||
      (expect == EXPECT_OPTOUT && optout_replies < r.replies)) {
    fprintf(stderr,
            "bench-optout: %" PRIu64 " of %" PRIu64
            " replies have reason optout; --expect %s\n",
            optout_replies, r.replies, expect == EXPECT_GEO ? "geo" : "optout");
    return 1;
  }
  printf("rps: %.0f req/s\n", r.rps);
  printf("p50_us: %.1f us\n", r.p50_us);
  printf("p99_us: %.1f us\n", r.p99_us);
  printf("optout_replies: %" PRIu64 " replies\n", optout_replies);
  printf("requests: %" PRIu64 " requests\n", r.replies);
  return 0;
}

/* ---- main --------------------------------------------------------------- */

static void usage(void)
{
  fprintf(stderr,
          "usage: bench-optout make-store DIR N\n"
          "       bench-optout set SOCKET N [--prefix P]\n"
          "       bench-optout route --port PORT [-c C] [-p P] [-n N] "
          "[--warmup W]\n"
          "                    [--seed S] [--prefix P] [--users U]\n"
          "                    [--expect geo|optout|any] [--timeout S]\n"
          "\n"
          "  make-store  DIR/geosteer.key and DIR/geosteer.db with N opt-outs\n"
          "              (users bench-user-0 .. bench-user-<N-1>)\n"
          "  set         N sequential optout.set calls on the admin socket\n"
          "              (users <P>0 .. <P><N-1>, default P bench-set-)\n"
          "  route       closed-loop route load on 127.0.0.1:PORT: C "
          "connections\n"
          "              (default 16), P in flight each (16), N replies\n"
          "              (1000000), user <P><u> (default P bench-visitor-)\n"
          "              with u drawn from 0..U-1 (default any 32-bit "
          "number)\n");
}

int main(int argc, char **argv)
{
  uint64_t n;

  if (argc >= 4 && !strcmp(argv[1], "make-store") &&
      loadgen_parse_u64(argv[3], 1, 100000000, &n) && argc == 4)
    return make_store(argv[2], (size_t)n);
  if (argc >= 4 && !strcmp(argv[1], "set") &&
      loadgen_parse_u64(argv[3], 1, 10000000, &n)) {
    const char *prefix = "bench-set-";
    if (argc == 6 && !strcmp(argv[4], "--prefix") && argv[5][0] != '\0' &&
        strlen(argv[5]) <= PREFIX_MAX)
      prefix = argv[5];
    else if (argc != 4)
      goto bad;
    return set_calls(argv[2], (size_t)n, prefix);
  }
  if (argc >= 2 && !strcmp(argv[1], "route"))
    return route_load(argc - 2, argv + 2);
bad:
  usage();
  return 2;
}
