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
 * route: one thread, one epoll set, C connections with P requests in
 * flight each; each reply is answered with the next request until N
 * replies have come back. Request k is
 * [0, msgid, "route", [{"user": "<prefix><u>", "ip": ADDR}]] where u is the
 * k-th draw of splitmix64 (server/rng.h; `--users` draws from 0..count-1)
 * and ADDR cycles through 65,536 pre-drawn IPv4 addresses, so two runs with
 * the same seed send the same bytes. Replies must be successes with the
 * msgid of the oldest request outstanding on their connection; --expect
 * geo fails the run if any reply has reason "optout", --expect optout if
 * any does not.
 *
 * Invariants: route allocates every buffer before the first request; a
 * connection has at most P requests outstanding, so its send buffer of P
 * requests cannot overflow; a reply is parsed only when complete.
 *
 * Output: `name: value unit` lines. Exit status 0 on success, 1 on a
 * failure (message on standard error), 2 on bad usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>

#include "geosteer/client.h"
#include "optout.h"
#include "rng.h"
#include "store.h"

#define STORE_BATCH 10000    /* opt-outs per transaction in make-store */
#define USER_MAX 64          /* bytes of "<prefix><u>" */
#define PREFIX_MAX 21        /* bytes of --prefix: with 10 digits, a fixstr */
#define ADDR_COUNT 65536     /* pre-drawn client addresses, cycled */
#define MAX_CONNECTIONS 1024 /* -c */
#define MAX_PIPELINE 256     /* -p */
#define REQ_MAX 96           /* largest encoded route request */
#define RECV_BUF 16384       /* per connection; also the largest reply */
#define MAX_EVENTS 256       /* epoll_wait batch */
#define ADMIN_TIMEOUT_MS 10000

/*
 * Latency histogram: HIST_SUB linear buckets per power of two of
 * nanoseconds, so a percentile is at most 1/HIST_SUB above the true value;
 * 2^HIST_TOP_BIT ns (17 s) and above land in the last bucket.
 */
#define HIST_SUB_BITS 6
#define HIST_SUB (1 << HIST_SUB_BITS)
#define HIST_TOP_BIT 34
#define HIST_BUCKETS (HIST_SUB * (1 + HIST_TOP_BIT - HIST_SUB_BITS))

static uint64_t now_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Parses a decimal in [lo, hi] into *v; false (and *v untouched) if not. */
static bool parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *v)
{
  char *end;
  if (s == NULL || *s < '0' || *s > '9')
    return false;
  errno = 0;
  unsigned long long x = strtoull(s, &end, 10);
  if (errno != 0 || *end != '\0' || x < lo || x > hi)
    return false;
  *v = x;
  return true;
}

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
  uint64_t t0 = now_ns();

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
  printf("store_build_seconds: %.3f s\n", (double)(now_ns() - t0) / 1e9);
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
  uint64_t t0 = now_ns();
  for (size_t i = 0; i < n; i++) {
    char user[USER_MAX];
    const msgpack_object *result;
    gs_remote_error err;
    snprintf(user, sizeof(user), "%s%zu", prefix, i);
    gs_arg args[] = {{"user", user, false},
                     {"actor", "bench-optout", false},
                     {"reason", "benchmark", false}};
    uint64_t t = now_ns();
    rc = gs_client_call(c, "optout.set", args, 3, &result, &err);
    lat[i] = now_ns() - t;
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
  double secs = (double)(now_ns() - t0) / 1e9;
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

/* ---- route: MessagePack ----------------------------------------------- */

static uint64_t be_read(const unsigned char *p, int n)
{
  uint64_t v = 0;
  for (int i = 0; i < n; i++)
    v = v << 8 | p[i];
  return v;
}

/*
 * Length of the complete MessagePack object at p[0..len): 0 while it is
 * incomplete, -1 when the bytes are not MessagePack. pending counts the
 * objects still to skip, so nesting needs no recursion.
 */
static long mp_skip(const unsigned char *p, size_t len)
{
  size_t pos = 0;
  uint64_t pending = 1;

  while (pending > 0) {
    uint64_t body = 0; /* bytes after the type byte and its length */
    int hdr = 0;       /* bytes of the length or count */
    if (pos >= len)
      return 0;
    unsigned char b = p[pos++];
    pending--;
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
      continue;
    if ((b & 0xe0) == 0xa0) {
      body = b & 0x1f;
    } else if ((b & 0xf0) == 0x90) {
      pending += b & 0x0f;
    } else if ((b & 0xf0) == 0x80) {
      pending += 2u * (b & 0x0f);
    } else if (b >= 0xca && b <= 0xd3) { /* float, uint, int */
      static const uint8_t size[] = {4, 8, 1, 2, 4, 8, 1, 2, 4, 8};
      body = size[b - 0xca];
    } else if (b >= 0xd4 && b <= 0xd8) { /* fixext */
      body = 1 + (1u << (b - 0xd4));
    } else if (b == 0xc4 || b == 0xd9) { /* bin8, str8 */
      hdr = 1;
    } else if (b == 0xc5 || b == 0xda) {
      hdr = 2;
    } else if (b == 0xc6 || b == 0xdb) {
      hdr = 4;
    } else if (b == 0xdc || b == 0xdd || b == 0xde || b == 0xdf) {
      hdr = b == 0xdc || b == 0xde ? 2 : 4;
      if (len - pos < (size_t)hdr)
        return 0;
      uint64_t n = be_read(p + pos, hdr);
      pending += b >= 0xde ? 2 * n : n;
      pos += (size_t)hdr;
      continue;
    } else { /* ext8..32 and 0xc1: never sent by geosteerd */
      return -1;
    }
    if (hdr > 0) {
      if (len - pos < (size_t)hdr)
        return 0;
      body = be_read(p + pos, hdr);
      pos += (size_t)hdr;
    }
    if (body > len - pos)
      return 0;
    pos += (size_t)body;
  }
  return (long)pos;
}

/* Reads a non-negative integer at p[*pos]; false if it is not one. */
static bool mp_read_uint(const unsigned char *p, size_t len, size_t *pos,
                         uint64_t *v)
{
  unsigned char b = p[(*pos)++];
  int n;

  if (b <= 0x7f) {
    *v = b;
    return true;
  }
  if (b >= 0xcc && b <= 0xcf)
    n = 1 << (b - 0xcc);
  else
    return false;
  if (len - *pos < (size_t)n)
    return false;
  *v = be_read(p + *pos, n);
  *pos += (size_t)n;
  return true;
}

/* ---- route: connections ----------------------------------------------- */

enum expect { EXPECT_ANY, EXPECT_GEO, EXPECT_OPTOUT };

struct conn {
  int fd;
  bool want_out;         /* EPOLLOUT is registered */
  uint32_t next_msgid;   /* msgid of the next request */
  uint32_t oldest_msgid; /* msgid the next reply must carry */
  uint64_t *sent_ns;     /* ring of P send times, oldest at head */
  uint32_t head, inflight;
  char *out; /* encoded requests; [out_off, out_len) unsent */
  size_t out_off, out_len;
  char *in; /* received bytes, [0, in_len) not yet parsed */
  size_t in_len;
};

struct addr_text {
  uint8_t len;
  char text[15]; /* "255.255.255.255" without NUL */
};

/* Settings, then run state; one run per process. */
static uint16_t port;
static uint32_t nconns = 16, pipeline = 16;
static uint64_t total = 1000000, warmup = UINT64_MAX, seed = 20261129;
static uint64_t user_count; /* 0: any 32-bit number */
static const char *user_prefix = "bench-visitor-";
static size_t user_prefix_len;
static enum expect expect = EXPECT_GEO;
static uint64_t timeout_s = 60;

static struct rng user_rng;
static struct addr_text *addrs;
static struct conn *conns;
static int epfd = -1;
static uint64_t issued, replied, optout_replies, measure_start_ns,
    last_reply_ns;
static uint64_t hist[HIST_BUCKETS];

static size_t hist_index(uint64_t ns)
{
  if (ns < HIST_SUB)
    return (size_t)ns;
  int top = 63 - __builtin_clzll(ns);
  if (top >= HIST_TOP_BIT)
    return HIST_BUCKETS - 1;
  int shift = top - HIST_SUB_BITS;
  return (size_t)HIST_SUB * (size_t)(1 + shift) +
         (size_t)((ns >> shift) - HIST_SUB);
}

/* The upper bound of the bucket holding quantile q of count values, ns. */
static uint64_t hist_quantile(double q, uint64_t count)
{
  uint64_t rank = (uint64_t)(q * (double)count + 0.999999), seen = 0;
  size_t i = 0;
  for (; i < HIST_BUCKETS - 1; i++) {
    seen += hist[i];
    if (seen >= rank)
      break;
  }
  if (i < HIST_SUB)
    return i;
  int shift = (int)(i / HIST_SUB) - 1;
  return ((uint64_t)(HIST_SUB + i % HIST_SUB) << shift) +
         (UINT64_C(1) << shift) - 1;
}

static void draw_addresses(void)
{
  struct rng r = {seed ^ 0x5eed};
  for (size_t i = 0; i < ADDR_COUNT; i++) {
    uint32_t a = (uint32_t)rng_next(&r);
    char text[16];
    int n = snprintf(text, sizeof(text), "%u.%u.%u.%u", a >> 24,
                     (a >> 16) & 0xff, (a >> 8) & 0xff, a & 0xff);
    addrs[i].len = (uint8_t)n;
    memcpy(addrs[i].text, text, (size_t)n);
  }
}

/* [0, msgid, "route", [{"user": user, "ip": addr}]] at p; its length. */
static size_t encode_route(char *p, uint32_t msgid, const struct addr_text *a)
{
  static const char head[] = "\xa5route\x91\x82\xa4user";
  uint64_t u = rng_next(&user_rng);
  char *q = p;

  *q++ = (char)0x94;
  *q++ = 0x00;
  *q++ = (char)0xce;
  *q++ = (char)(msgid >> 24);
  *q++ = (char)(msgid >> 16);
  *q++ = (char)(msgid >> 8);
  *q++ = (char)msgid;
  memcpy(q, head, sizeof(head) - 1);
  q += sizeof(head) - 1;
  char *len = q++; /* fixstr: user_prefix_len + 10 digits < 32 */
  memcpy(q, user_prefix, user_prefix_len);
  uint64_t number = user_count ? u % user_count : (uint32_t)u;
  size_t n = user_prefix_len + put_decimal(q + user_prefix_len, number);
  *len = (char)(0xa0 | n);
  q += n;
  memcpy(q, "\xa2ip", 3);
  q += 3;
  *q++ = (char)(0xa0 | a->len);
  memcpy(q, a->text, a->len);
  return (size_t)(q + a->len - p);
}

/* Appends the next request to c's send buffer; flush() sends it. */
static void enqueue(struct conn *c)
{
  if (c->out_len + REQ_MAX > (size_t)pipeline * REQ_MAX) {
    memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
    c->out_len -= c->out_off;
    c->out_off = 0;
  }
  c->out_len += encode_route(c->out + c->out_len, c->next_msgid,
                             &addrs[issued % ADDR_COUNT]);
  c->sent_ns[(c->head + c->inflight) % pipeline] = 0; /* stamped at send */
  c->next_msgid++;
  c->inflight++;
  issued++;
}

static int set_events(struct conn *c, bool want_out)
{
  struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0),
                           .data.ptr = c};
  if (want_out == c->want_out)
    return 0;
  if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0) {
    fprintf(stderr, "bench-optout: epoll_ctl: %s\n", strerror(errno));
    return -1;
  }
  c->want_out = want_out;
  return 0;
}

/* Stamps unstamped requests with now, sends what the socket takes. */
static int flush(struct conn *c)
{
  uint64_t t = now_ns();
  for (uint32_t k = c->inflight; k > 0; k--) {
    uint64_t *s = &c->sent_ns[(c->head + k - 1) % pipeline];
    if (*s != 0)
      break;
    *s = t;
  }
  while (c->out_off < c->out_len) {
    ssize_t n =
        send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      break;
    if (n < 0) {
      fprintf(stderr, "bench-optout: send to 127.0.0.1:%u: %s\n", port,
              strerror(errno));
      return -1;
    }
    c->out_off += (size_t)n;
  }
  if (c->out_off == c->out_len)
    c->out_off = c->out_len = 0;
  return set_events(c, c->out_off < c->out_len);
}

/*
 * Checks the complete reply at p[0..n): success, the expected msgid and
 * the expected reason. Returns false with a message if not.
 */
static bool check_reply(const struct conn *c, const unsigned char *p, size_t n)
{
  static const char reason_key[] = "\xa6reason";
  size_t pos = 1;
  uint64_t type, msgid;

  if (p[0] != 0x94 || !mp_read_uint(p, n, &pos, &type) || type != 1 ||
      !mp_read_uint(p, n, &pos, &msgid)) {
    fprintf(stderr, "bench-optout: a reply is not [1, msgid, error, result]\n");
    return false;
  }
  if (msgid != c->oldest_msgid) {
    fprintf(stderr,
            "bench-optout: reply msgid %" PRIu64 ", expected %" PRIu32 "\n",
            msgid, c->oldest_msgid);
    return false;
  }
  if (pos >= n || p[pos] != 0xc0) {
    char text[200];
    size_t len = 0;
    /* The printable bytes of the error: its name and message show. */
    for (size_t i = pos; i < n && len < sizeof(text) - 1; i++)
      if (p[i] >= 0x20 && p[i] < 0x7f)
        text[len++] = (char)p[i];
    text[len] = '\0';
    fprintf(stderr, "bench-optout: error reply: %s\n", text);
    return false;
  }
  const unsigned char *k =
      memmem(p + pos, n - pos, reason_key, sizeof(reason_key) - 1);
  k = k ? k + sizeof(reason_key) - 1 : NULL;
  bool optout = k && k < p + n && (*k & 0xe0) == 0xa0 &&
                (size_t)(*k & 0x1f) == 6 && k + 7 <= p + n &&
                memcmp(k + 1, "optout", 6) == 0;
  optout_replies += optout;
  if ((expect == EXPECT_GEO && optout) ||
      (expect == EXPECT_OPTOUT && !optout)) {
    fprintf(stderr,
            "bench-optout: reply %" PRIu64 " %s reason optout; --expect %s\n",
            replied + 1, optout ? "has" : "lacks",
            expect == EXPECT_GEO ? "geo" : "optout");
    return false;
  }
  return true;
}

/* Reads what is there, settles every complete reply, refills the pipe. */
static int on_readable(struct conn *c)
{
  ssize_t n = recv(c->fd, c->in + c->in_len, RECV_BUF - c->in_len, 0);
  uint64_t t = now_ns();
  uint32_t done = 0;
  size_t off = 0;

  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
    return 0;
  if (n < 0) {
    fprintf(stderr, "bench-optout: receive from 127.0.0.1:%u: %s\n", port,
            strerror(errno));
    return -1;
  }
  if (n == 0) {
    fprintf(stderr,
            "bench-optout: the server closed a connection with %" PRIu32
            " requests outstanding\n",
            c->inflight);
    return -1;
  }
  c->in_len += (size_t)n;
  while (off < c->in_len) {
    long k = mp_skip((const unsigned char *)c->in + off, c->in_len - off);
    if (k < 0 || (k > 0 && c->inflight == 0)) {
      fprintf(stderr, "bench-optout: protocol error in a reply\n");
      return -1;
    }
    if (k == 0)
      break;
    if (!check_reply(c, (const unsigned char *)c->in + off, (size_t)k))
      return -1;
    uint64_t sent = c->sent_ns[c->head];
    c->head = (c->head + 1) % pipeline;
    c->inflight--;
    c->oldest_msgid++;
    replied++;
    if (replied > warmup)
      hist[hist_index(t - sent)]++;
    else if (replied == warmup)
      measure_start_ns = t;
    last_reply_ns = t;
    off += (size_t)k;
    done++;
  }
  memmove(c->in, c->in + off, c->in_len - off);
  c->in_len -= off;
  if (c->in_len == RECV_BUF) {
    fprintf(stderr, "bench-optout: a reply exceeds %d bytes\n", RECV_BUF);
    return -1;
  }
  for (uint32_t i = 0; i < done && issued < total; i++)
    enqueue(c);
  return flush(c);
}

static int open_connections(void)
{
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (uint32_t i = 0; i < nconns; i++) {
    struct conn *c = &conns[i];
    int one = 1;
    /* Blocking connect over loopback, then non-blocking for the run. */
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
      fprintf(stderr, "bench-optout: cannot connect to 127.0.0.1:%u: %s\n",
              port, strerror(errno));
      return -1;
    }
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK) != 0) {
      fprintf(stderr, "bench-optout: fcntl: %s\n", strerror(errno));
      return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
      fprintf(stderr, "bench-optout: epoll_ctl: %s\n", strerror(errno));
      return -1;
    }
  }
  return 0;
}

static int run(void)
{
  struct epoll_event evs[MAX_EVENTS];
  uint64_t t_end = now_ns() + timeout_s * 1000000000u;

  if (open_connections() != 0)
    return -1;
  measure_start_ns = now_ns();
  for (uint32_t i = 0; i < nconns; i++) {
    for (uint32_t k = 0; k < pipeline && issued < total; k++)
      enqueue(&conns[i]);
    if (flush(&conns[i]) != 0)
      return -1;
  }
  while (replied < total) {
    uint64_t t = now_ns();
    if (t >= t_end) {
      fprintf(stderr,
              "bench-optout: timed out after %" PRIu64 " s with %" PRIu64
              " of %" PRIu64 " replies\n",
              timeout_s, replied, total);
      return -1;
    }
    int n = epoll_wait(epfd, evs, MAX_EVENTS,
                       (int)((t_end - t + 999999) / 1000000));
    if (n < 0 && errno != EINTR) {
      fprintf(stderr, "bench-optout: epoll_wait: %s\n", strerror(errno));
      return -1;
    }
    for (int i = 0; i < n; i++) {
      struct conn *c = evs[i].data.ptr;
      if ((evs[i].events & EPOLLOUT) && flush(c) != 0)
        return -1;
      if ((evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) &&
          on_readable(c) != 0)
        return -1;
    }
  }
  return 0;
}

static bool allocate(void)
{
  addrs = calloc(ADDR_COUNT, sizeof(*addrs));
  conns = calloc(nconns, sizeof(*conns));
  if (addrs == NULL || conns == NULL)
    return false;
  for (uint32_t i = 0; i < nconns; i++) {
    conns[i].fd = -1;
    conns[i].sent_ns = calloc(pipeline, sizeof(*conns[i].sent_ns));
    conns[i].out = malloc((size_t)pipeline * REQ_MAX);
    conns[i].in = malloc(RECV_BUF);
    if (!conns[i].sent_ns || !conns[i].out || !conns[i].in)
      return false;
  }
  return true;
}

static void release(void)
{
  for (uint32_t i = 0; conns != NULL && i < nconns; i++) {
    if (conns[i].fd >= 0)
      close(conns[i].fd);
    free(conns[i].sent_ns);
    free(conns[i].out);
    free(conns[i].in);
  }
  free(conns);
  free(addrs);
  if (epfd >= 0)
    close(epfd);
}

static bool route_options(int argc, char **argv)
{
  for (int i = 0; i < argc; i += 2) {
    const char *opt = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
    uint64_t v;
    if (val == NULL) {
      fprintf(stderr, "bench-optout: %s needs a value\n", opt);
      return false;
    }
    if (!strcmp(opt, "--port") && parse_u64(val, 1, 65535, &v)) {
      port = (uint16_t)v;
    } else if (!strcmp(opt, "-c") && parse_u64(val, 1, MAX_CONNECTIONS, &v)) {
      nconns = (uint32_t)v;
    } else if (!strcmp(opt, "-p") && parse_u64(val, 1, MAX_PIPELINE, &v)) {
      pipeline = (uint32_t)v;
    } else if (!strcmp(opt, "-n") && parse_u64(val, 1, UINT32_MAX, &v)) {
      total = v;
    } else if (!strcmp(opt, "--warmup") && parse_u64(val, 0, UINT32_MAX, &v)) {
      warmup = v;
    } else if (!strcmp(opt, "--seed") && parse_u64(val, 0, UINT64_MAX, &v)) {
      seed = v;
    } else if (!strcmp(opt, "--prefix") && val[0] != '\0' &&
               strlen(val) <= PREFIX_MAX) {
      user_prefix = val;
    } else if (!strcmp(opt, "--users") && parse_u64(val, 1, UINT32_MAX, &v)) {
      user_count = v;
    } else if (!strcmp(opt, "--expect") &&
               (!strcmp(val, "geo") || !strcmp(val, "optout") ||
                !strcmp(val, "any"))) {
      expect = !strcmp(val, "geo")      ? EXPECT_GEO
               : !strcmp(val, "optout") ? EXPECT_OPTOUT
                                        : EXPECT_ANY;
    } else if (!strcmp(opt, "--timeout") && parse_u64(val, 1, 3600, &v)) {
      timeout_s = v;
    } else {
      fprintf(stderr, "bench-optout: bad option or value: %s %s\n", opt, val);
      return false;
    }
  }
  if (port == 0) {
    fprintf(stderr, "bench-optout: route needs --port\n");
    return false;
  }
  if (warmup == UINT64_MAX)
    warmup = total / 10;
  if (warmup >= total) {
    fprintf(stderr, "bench-optout: --warmup leaves nothing of -n to measure\n");
    return false;
  }
  user_prefix_len = strlen(user_prefix);
  return true;
}

static int route_load(int argc, char **argv)
{
  int status = 1;

  if (!route_options(argc, argv))
    return 2;
  user_rng.state = seed;
  epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0 || !allocate()) {
    fprintf(stderr, "bench-optout: out of memory or descriptors\n");
    goto done;
  }
  draw_addresses();
  if (run() != 0)
    goto done;
  uint64_t measured = total - warmup;
  double secs = (double)(last_reply_ns - measure_start_ns) / 1e9;
  printf("rps: %.0f req/s\n", secs > 0 ? (double)measured / secs : 0.0);
  printf("p50_us: %.1f us\n", (double)hist_quantile(0.50, measured) / 1e3);
  printf("p99_us: %.1f us\n", (double)hist_quantile(0.99, measured) / 1e3);
  printf("optout_replies: %" PRIu64 " replies\n", optout_replies);
  printf("requests: %" PRIu64 " requests\n", replied);
  status = 0;
done:
  release();
  return status;
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
      parse_u64(argv[3], 1, 100000000, &n) && argc == 4)
    return make_store(argv[2], (size_t)n);
  if (argc >= 4 && !strcmp(argv[1], "set") &&
      parse_u64(argv[3], 1, 10000000, &n)) {
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
