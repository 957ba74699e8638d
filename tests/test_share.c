/*
 * Tests for the provider share, driven from outside: a private geosteerd
 * (server_harness.h) sends its records to a capture sink, a thread of the
 * test that listens on loopback and keeps every byte it receives.
 *
 * What is checked is what the provider can learn: the capture never holds
 * a client address (text, 4-byte, 16-byte, mapped or Teredo-inverted) or
 * a user id; every record has only the allow-listed keys and whole-degree
 * values at the configured precision; opted-out users, no_geo requests,
 * net and unknown answers produce nothing; aggregate mode withholds small
 * buckets for good. Then the channel itself: records from every worker, an
 * IPv6 provider, a provider that is down at start, killed mid-run, never
 * reads or never completes the connect, while routing keeps answering and
 * memory stays bounded; the share metrics; and the share section of the
 * config, checked with geosteerd -t.
 *
 * Requests whose records are looked for carry a session unique to the
 * request, so a record is matched to its request by it. Every wait is a
 * bounded poll; the sink thread makes no assertions.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <time.h>

#include "geosteer/geosteer.h"
#include "server_harness.h"

/* One timeout for the suite (see test_server.c on per-test timeouts). */
TestSuite(share, .fini = harness_fini);

#define SINK_MAX_CONNS 16       /* provider connections one sink keeps */
#define SINK_SMALL_RCVBUF 4096  /* receive buffer of a sink that never reads */
#define FAST_INTERVAL_MS 50     /* share.interval_ms of most tests */
#define ARRIVAL_WAIT_MS 20000   /* records to reach the sink */
#define RECONNECT_WAIT_MS 60000 /* backoff is capped at 30 s */
#define RSS_GROWTH_MAX_KB (16 * 1024)

/* ---- the capture sink --------------------------------------------------- */

/* One provider connection, and every byte received on it. */
struct sink_conn {
  int fd; /* -1 once closed */
  struct rbuf bytes;
};

struct sink {
  int listen_fd;
  uint16_t port;
  bool reads;  /* false: accepts connections but never reads them */
  bool v6;     /* listens on [::1] instead of 127.0.0.1 */
  int wake[2]; /* a byte on wake[1] stops the thread */
  pthread_t thread;
  pthread_mutex_t lock; /* guards conns and nconns */
  struct sink_conn conns[SINK_MAX_CONNS];
  size_t nconns;
  bool running;
};

static void sink_append(struct sink *k, struct sink_conn *sc, const char *p,
                        size_t n)
{
  pthread_mutex_lock(&k->lock);
  if (sc->bytes.cap - sc->bytes.len < n) {
    size_t cap = sc->bytes.cap ? sc->bytes.cap : 65536;
    while (cap - sc->bytes.len < n)
      cap *= 2;
    sc->bytes.data = realloc(sc->bytes.data, cap);
    if (sc->bytes.data == NULL)
      abort();
    sc->bytes.cap = cap;
  }
  memcpy(sc->bytes.data + sc->bytes.len, p, n);
  sc->bytes.len += n;
  pthread_mutex_unlock(&k->lock);
}

static void *sink_main(void *arg)
{
  struct sink *k = arg;
  char buf[65536];

  for (;;) {
    struct pollfd p[SINK_MAX_CONNS + 2];
    size_t idx[SINK_MAX_CONNS + 2], n = 0;

    p[n++] = (struct pollfd){.fd = k->wake[0], .events = POLLIN};
    p[n++] = (struct pollfd){.fd = k->listen_fd, .events = POLLIN};
    pthread_mutex_lock(&k->lock);
    for (size_t i = 0; i < k->nconns; i++)
      if (k->conns[i].fd >= 0 && k->reads) {
        idx[n] = i;
        p[n++] = (struct pollfd){.fd = k->conns[i].fd, .events = POLLIN};
      }
    pthread_mutex_unlock(&k->lock);
    if (poll(p, n, -1) < 0) {
      if (errno == EINTR)
        continue;
      break;
    }
    if (p[0].revents)
      break;
    if (p[1].revents & POLLIN) {
      int fd = accept4(k->listen_fd, NULL, NULL, SOCK_CLOEXEC);
      if (fd >= 0) {
        pthread_mutex_lock(&k->lock);
        if (k->nconns < SINK_MAX_CONNS)
          k->conns[k->nconns++] = (struct sink_conn){.fd = fd};
        else
          close(fd);
        pthread_mutex_unlock(&k->lock);
      }
    }
    for (size_t j = 2; j < n; j++) {
      struct sink_conn *sc = &k->conns[idx[j]];
      if (!(p[j].revents & (POLLIN | POLLHUP | POLLERR)))
        continue;
      ssize_t r = recv(sc->fd, buf, sizeof(buf), 0);
      if (r > 0) {
        sink_append(k, sc, buf, (size_t)r);
      } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
        pthread_mutex_lock(&k->lock);
        close(sc->fd);
        sc->fd = -1;
        pthread_mutex_unlock(&k->lock);
      }
    }
  }
  return NULL;
}

/* A loopback socket bound to port (0: any free one); *bound gets the port.
 * Returns -1 with errno set when the address cannot be bound. */
static int loopback_socket(bool v6, uint16_t port, uint16_t *bound)
{
  struct sockaddr_storage ss = {0};
  struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
  struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
  socklen_t len = v6 ? sizeof(*sin6) : sizeof(*sin);
  int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;

  cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (v6) {
    sin6->sin6_family = AF_INET6;
    sin6->sin6_addr = in6addr_loopback;
    sin6->sin6_port = htons(port);
  } else {
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin->sin_port = htons(port);
  }
  if (bind(fd, (struct sockaddr *)&ss, len) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  cr_assert_eq(getsockname(fd, (struct sockaddr *)&ss, &len), 0);
  *bound = ntohs(v6 ? sin6->sin6_port : sin->sin_port);
  return fd;
}

/*
 * Listens on 127.0.0.1:port, or [::1]:port when v6 (0: any free port;
 * k->port gets the real one) and starts the thread. The bytes of an
 * earlier run of k are dropped. False when the address cannot be bound.
 */
static bool sink_start_at(struct sink *k, bool v6, uint16_t port, bool reads)
{
  memset(k, 0, sizeof(*k));
  k->reads = reads;
  k->v6 = v6;
  k->listen_fd = loopback_socket(v6, port, &k->port);
  if (k->listen_fd < 0)
    return false;
  if (!reads) {
    /* Accepted sockets inherit it: the daemon's writes back up sooner. */
    int size = SINK_SMALL_RCVBUF;
    setsockopt(k->listen_fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
  }
  cr_assert_eq(listen(k->listen_fd, 16), 0, "listen: %s", strerror(errno));
  cr_assert_eq(pipe2(k->wake, O_CLOEXEC), 0);
  pthread_mutex_init(&k->lock, NULL);
  cr_assert_eq(pthread_create(&k->thread, NULL, sink_main, k), 0);
  k->running = true;
  return true;
}

static void sink_start(struct sink *k, uint16_t port, bool reads)
{
  cr_assert(sink_start_at(k, false, port, reads), "sink bind 127.0.0.1:%u: %s",
            (unsigned)port, strerror(errno));
}

/* Stops the thread and closes every socket (the provider "dies"); the
 * bytes received stay readable until sink_free. */
static void sink_stop(struct sink *k)
{
  if (!k->running)
    return;
  cr_assert_eq(write(k->wake[1], "x", 1), 1);
  pthread_join(k->thread, NULL);
  close(k->wake[0]);
  close(k->wake[1]);
  close(k->listen_fd);
  for (size_t i = 0; i < k->nconns; i++)
    if (k->conns[i].fd >= 0) {
      close(k->conns[i].fd);
      k->conns[i].fd = -1;
    }
  k->running = false;
}

static void sink_free(struct sink *k)
{
  sink_stop(k);
  for (size_t i = 0; i < k->nconns; i++)
    rbuf_free(&k->conns[i].bytes);
  pthread_mutex_destroy(&k->lock);
  k->nconns = 0;
}

/* Connections the sink has accepted so far. */
static size_t sink_accepted(struct sink *k)
{
  size_t n;
  pthread_mutex_lock(&k->lock);
  n = k->nconns;
  pthread_mutex_unlock(&k->lock);
  return n;
}

/* A port with nothing listening on it (it was free a moment ago). */
static uint16_t closed_port(void)
{
  uint16_t port;
  int fd = loopback_socket(false, 0, &port);

  cr_assert_geq(fd, 0, "bind: %s", strerror(errno));
  close(fd);
  return port;
}

/* ---- decoding the capture ----------------------------------------------- */

/*
 * The capture, decoded: a copy of each connection's bytes, parsed as a
 * stream of [2, "share", [records...]]. Records point into the copies.
 */
struct capture {
  struct rbuf bytes[SINK_MAX_CONNS];
  struct replies parsed[SINK_MAX_CONNS];
  size_t nconns;
  const msgpack_object **rec;
  size_t nrec, notifications;
  char problem[256]; /* "" when every object is a share notification */
};

static void capture_take(struct sink *k, struct capture *c)
{
  memset(c, 0, sizeof(*c));
  pthread_mutex_lock(&k->lock);
  c->nconns = k->nconns;
  for (size_t i = 0; i < c->nconns; i++) {
    const struct rbuf *b = &k->conns[i].bytes;
    c->bytes[i].data = malloc(b->len ? b->len : 1);
    cr_assert_not_null(c->bytes[i].data);
    if (b->len)
      memcpy(c->bytes[i].data, b->data, b->len);
    c->bytes[i].len = c->bytes[i].cap = b->len;
  }
  pthread_mutex_unlock(&k->lock);
  for (size_t i = 0; i < c->nconns; i++) {
    struct replies *r = &c->parsed[i];
    replies_parse(r, c->bytes[i].data, c->bytes[i].len);
    if (r->bad)
      snprintf(c->problem, sizeof(c->problem),
               "connection %zu: bytes after offset %zu are not MessagePack", i,
               r->used);
    for (size_t j = 0; j < r->n; j++) {
      const msgpack_object *o = &r->obj[j], *e;
      if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 3 ||
          obj_u64(&o->via.array.ptr[0]) != GS_RPC_NOTIFICATION ||
          !obj_is_str(&o->via.array.ptr[1], "share") ||
          o->via.array.ptr[2].type != MSGPACK_OBJECT_ARRAY) {
        snprintf(c->problem, sizeof(c->problem),
                 "connection %zu, object %zu is not [2, \"share\", [...]]", i,
                 j);
        continue;
      }
      e = &o->via.array.ptr[2];
      c->notifications++;
      c->rec =
          realloc(c->rec, (c->nrec + e->via.array.size + 1) * sizeof(*c->rec));
      cr_assert_not_null(c->rec);
      for (uint32_t m = 0; m < e->via.array.size; m++)
        c->rec[c->nrec++] = &e->via.array.ptr[m];
    }
  }
}

static void capture_free(struct capture *c)
{
  for (size_t i = 0; i < c->nconns; i++) {
    replies_free(&c->parsed[i]);
    rbuf_free(&c->bytes[i]);
  }
  free(c->rec);
  memset(c, 0, sizeof(*c));
}

/* Records received so far (each poll decodes the capture afresh). */
static size_t sink_records(struct sink *k)
{
  struct capture c;
  size_t n;
  capture_take(k, &c);
  n = c.nrec;
  capture_free(&c);
  return n;
}

/* The record with this session, or NULL; fails if there are several. */
static const msgpack_object *record_with_session(const struct capture *c,
                                                 const char *session)
{
  const msgpack_object *found = NULL;
  for (size_t i = 0; i < c->nrec; i++)
    if (obj_is_str(obj_get(c->rec[i], "session"), session)) {
      cr_assert_null(found, "two records for session %s", session);
      found = c->rec[i];
    }
  return found;
}

/* Polls until a record with session arrives. */
static bool sink_has_session(struct sink *k, const char *session)
{
  struct capture c;
  bool found;
  capture_take(k, &c);
  found = record_with_session(&c, session) != NULL;
  capture_free(&c);
  return found;
}

/* True when the capture holds n bytes equal to needle, on any connection. */
static bool capture_contains(const struct capture *c, const void *needle,
                             size_t n)
{
  for (size_t i = 0; i < c->nconns; i++)
    if (c->bytes[i].len >= n &&
        memmem(c->bytes[i].data, c->bytes[i].len, needle, n) != NULL)
      return true;
  return false;
}

/* ---- what a record may hold --------------------------------------------- */

enum precision { P_CONTINENT, P_COUNTRY, P_SUBDIVISION, P_CELL };

static const char *const precision_name[] = {"continent", "country",
                                             "subdivision", "cell"};

static bool obj_int(const msgpack_object *o, int64_t *v)
{
  if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX) {
    *v = (int64_t)o->via.u64;
    return true;
  }
  if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
    *v = o->via.i64;
    return true;
  }
  return false;
}

/* True when o or anything inside it is a float. */
static bool has_float(const msgpack_object *o)
{
  switch (o->type) {
  case MSGPACK_OBJECT_FLOAT32:
  case MSGPACK_OBJECT_FLOAT64:
    return true;
  case MSGPACK_OBJECT_ARRAY:
    for (uint32_t i = 0; i < o->via.array.size; i++)
      if (has_float(&o->via.array.ptr[i]))
        return true;
    return false;
  case MSGPACK_OBJECT_MAP:
    for (uint32_t i = 0; i < o->via.map.size; i++)
      if (has_float(&o->via.map.ptr[i].key) ||
          has_float(&o->via.map.ptr[i].val))
        return true;
    return false;
  default:
    return false;
  }
}

static bool is_upper_code(const char *p, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (!((p[i] >= 'A' && p[i] <= 'Z') || (p[i] >= '0' && p[i] <= '9')))
      return false;
  return true;
}

/* NULL when the location value v is well formed for precision p. */
static const char *location_problem(const msgpack_object *v, enum precision p)
{
  int64_t lat, lon;

  if (v->type == MSGPACK_OBJECT_NIL)
    return NULL; /* the database did not know it */
  switch (p) {
  case P_CONTINENT:
  case P_COUNTRY:
    if (v->type != MSGPACK_OBJECT_STR || v->via.str.size != 2 ||
        !is_upper_code(v->via.str.ptr, 2))
      return "location is not a two-letter code";
    return NULL;
  case P_SUBDIVISION:
    if (v->type != MSGPACK_OBJECT_STR || v->via.str.size < 4 ||
        v->via.str.size > 6 || v->via.str.ptr[2] != '-' ||
        !is_upper_code(v->via.str.ptr, 2) ||
        !is_upper_code(v->via.str.ptr + 3, v->via.str.size - 3))
      return "subdivision is not \"CC-XXX\"";
    return NULL;
  case P_CELL:
    if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size != 2)
      return "cell is not [lat, lon]";
    if (!obj_int(&v->via.array.ptr[0], &lat) ||
        !obj_int(&v->via.array.ptr[1], &lon))
      return "cell values are not whole degrees (integers)";
    if (lat < -90 || lat > 90 || lon < -180 || lon > 180)
      return "cell values out of range";
    return NULL;
  }
  return "unknown precision";
}

/*
 * NULL when r is an allowed record: events {dc, at, <location>, session?}
 * or aggregate {dc, <location>, count}, nothing else, no floats.
 */
static const char *record_problem(const msgpack_object *r, enum precision p,
                                  bool aggregate)
{
  const char *loc_key = precision_name[p];
  const msgpack_object *dc = obj_get(r, "dc"), *loc = obj_get(r, loc_key);
  uint32_t want;

  if (r->type != MSGPACK_OBJECT_MAP)
    return "record is not a map";
  if (has_float(r))
    return "record holds a float";
  if (dc == NULL || dc->type != MSGPACK_OBJECT_STR || dc->via.str.size == 0)
    return "record has no dc string";
  if (loc == NULL)
    return "record lacks the location key of the configured precision";
  if (aggregate) {
    if (obj_u64(obj_get(r, "count")) == UINT64_MAX)
      return "bucket has no count";
    want = 3;
  } else {
    const msgpack_object *s = obj_get(r, "session");
    if (obj_u64(obj_get(r, "at")) == UINT64_MAX)
      return "event has no at";
    if (s && s->type != MSGPACK_OBJECT_STR)
      return "session is not a string";
    want = s ? 4 : 3;
  }
  if (r->via.map.size != want)
    return "record has keys beyond the allow-list";
  return location_problem(loc, p);
}

/* ---- the fixture's places ----------------------------------------------- */

/* An address the share may report, and what it must report for it. */
struct place {
  const char *ip;
  const char *dc; /* the answer on the test map */
  const char *continent, *country, *subdivision;
  int lat, lon; /* the whole-degree cell */
};

static const struct place located[] = {
    {"81.2.69.5", "lhr", "EU", "GB", "GB-ENG", 51, -1},
    {"::ffff:81.2.69.5", "lhr", "EU", "GB", "GB-ENG", 51, -1},
    {"2002:5102:4505::1", "lhr", "EU", "GB", "GB-ENG", 51, -1}, /* 6to4 */
    /* Teredo: the client is the last 32 bits inverted (81.2.69.5). */
    {"2001:0:4136:e378:8000:63bf:aefd:bafa", "lhr", "EU", "GB", "GB-ENG", 51,
     -1},
    {"2a02:2000::1", "lhr", "EU", "GB", "GB-ENG", 51, -1},
    {"5.6.0.1", "sjc", "NA", "US", "US-CA", 37, -123},
    {"2600:1000::1", "sjc", "NA", "US", "US-CA", 37, -123},
    {"7.7.0.1", "syd", "OC", "AU", "AU-NSW", -34, 151},
    {"6.6.0.1", "hkg", "AS", "CN", "CN-BJ", 39, 116},
    {"2a02:1000::1", "fra", "EU", "DE", "DE-HE", 50, 8},
    {"11.0.0.1", "gru", "SA", "BR", "BR-SP", -24, -47},
};
#define NLOCATED (sizeof(located) / sizeof(located[0]))

/* Answers that must never be shared: nets, and unknown addresses. */
static const char *const unshared_ips[] = {
    "12.12.12.1",  /* net 12.12.12.0/24 (in the database: Tokyo) */
    "12.12.13.1",  /* net 12.12.0.0/16 (in the database: Singapore) */
    "100.64.0.1",  /* net 100.64.0.0/10, not in the database */
    "100.128.0.1", /* unknown */
    "10.2.0.1",    /* continent only, no coordinates: unknown */
};
#define NUNSHARED (sizeof(unshared_ips) / sizeof(unshared_ips[0]))

static const char *expected_location(const struct place *pl, enum precision p,
                                     char *buf, size_t size)
{
  switch (p) {
  case P_CONTINENT:
    return pl->continent;
  case P_COUNTRY:
    return pl->country;
  case P_SUBDIVISION:
    return pl->subdivision;
  default:
    snprintf(buf, size, "[%d, %d]", pl->lat, pl->lon);
    return buf;
  }
}

/* Fails unless record r reports place pl at precision p, answered by dc. */
static void assert_record_is(const msgpack_object *r, const struct place *pl,
                             enum precision p, const char *dc)
{
  const msgpack_object *v = obj_get(r, precision_name[p]);
  char want[32], got[64];
  int64_t lat, lon;

  cr_assert(obj_is_str(obj_get(r, "dc"), dc),
            "%s: record dc is %s, the answer was %s", pl->ip,
            obj_str(obj_get(r, "dc"), got, sizeof(got)), dc);
  const char *expected = expected_location(pl, p, want, sizeof(want));
  if (p != P_CELL) {
    cr_assert(obj_is_str(v, expected), "%s: %s is \"%s\", expected \"%s\"",
              pl->ip, precision_name[p], obj_str(v, got, sizeof(got)),
              expected);
    return;
  }
  cr_assert(v->type == MSGPACK_OBJECT_ARRAY && v->via.array.size == 2 &&
                obj_int(&v->via.array.ptr[0], &lat) &&
                obj_int(&v->via.array.ptr[1], &lon) && lat == pl->lat &&
                lon == pl->lon,
            "%s: cell is not %s", pl->ip, want);
}

/*
 * Every form in which addr could leak: its text, its 16-byte form, and
 * for an address with an IPv4 inside (plain, mapped, 6to4, Teredo) that
 * IPv4 as 4 bytes, as ::ffff:a.b.c.d and as ::a.b.c.d (16 bytes), and the
 * inverted 4 bytes Teredo carries.
 */
static void assert_address_absent(const struct capture *c, const char *ip)
{
  unsigned char a6[16], v4[4], form[16];
  bool has_v4 = false;

  cr_assert(!capture_contains(c, ip, strlen(ip)), "capture holds text %s", ip);
  if (inet_pton(AF_INET, ip, v4) == 1) {
    has_v4 = true;
  } else {
    cr_assert_eq(inet_pton(AF_INET6, ip, a6), 1, "bad test address %s", ip);
    cr_assert(!capture_contains(c, a6, 16), "capture holds %s (16 bytes)", ip);
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0,    0,
                                             0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(a6, mapped, 12) == 0) {
      memcpy(v4, a6 + 12, 4);
      has_v4 = true;
    } else if (a6[0] == 0x20 && a6[1] == 0x02) {
      memcpy(v4, a6 + 2, 4);
      has_v4 = true;
    } else if (a6[0] == 0x20 && a6[1] == 0x01 && a6[2] == 0 && a6[3] == 0) {
      cr_assert(!capture_contains(c, a6 + 12, 4),
                "capture holds %s's Teredo client bytes", ip);
      for (int i = 0; i < 4; i++)
        v4[i] = (unsigned char)~a6[12 + i];
      has_v4 = true;
    }
  }
  if (!has_v4)
    return;
  char text[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, v4, text, sizeof(text));
  cr_assert(!capture_contains(c, text, strlen(text)),
            "capture holds text %s (from %s)", text, ip);
  cr_assert(!capture_contains(c, v4, 4), "capture holds %s as 4 bytes", text);
  memset(form, 0, sizeof(form));
  memcpy(form + 12, v4, 4);
  cr_assert(!capture_contains(c, form, 16), "capture holds ::%s (16 bytes)",
            text);
  form[10] = form[11] = 0xff;
  cr_assert(!capture_contains(c, form, 16),
            "capture holds ::ffff:%s (16 bytes)", text);
}

/* ---- the daemon --------------------------------------------------------- */

/* Provider-share settings of one test. */
struct share_cfg {
  uint16_t port;
  const char *host;         /* NULL: 127.0.0.1 */
  const char *precision;    /* NULL: left out (country) */
  const char *mode;         /* NULL: left out (events) */
  unsigned interval_ms;     /* 0: FAST_INTERVAL_MS */
  unsigned min_count;       /* 0: left out */
  unsigned queue_max;       /* 0: left out */
  const char *asan_options; /* added to the daemon's ASAN_OPTIONS */
  const char *top;          /* top-level YAML lines, e.g. "workers: 4" */
};

static void start_sharing(struct server *s, const struct share_cfg *sc,
                          const char *listen)
{
  char extra[512];
  int n = snprintf(extra, sizeof(extra), "%s%s", sc->top ? sc->top : "",
                   sc->top ? "\n" : "");
  n += snprintf(extra + n, sizeof(extra) - (size_t)n,
                "share:\n  provider: \"%s:%u\"\n  interval_ms: %u",
                sc->host ? sc->host : "127.0.0.1", (unsigned)sc->port,
                sc->interval_ms ? sc->interval_ms : FAST_INTERVAL_MS);
  if (sc->precision)
    n += snprintf(extra + n, sizeof(extra) - (size_t)n, "\n  precision: %s",
                  sc->precision);
  if (sc->mode)
    n += snprintf(extra + n, sizeof(extra) - (size_t)n, "\n  mode: %s",
                  sc->mode);
  if (sc->min_count)
    n += snprintf(extra + n, sizeof(extra) - (size_t)n, "\n  min_count: %u",
                  sc->min_count);
  if (sc->queue_max)
    n += snprintf(extra + n, sizeof(extra) - (size_t)n, "\n  queue_max: %u",
                  sc->queue_max);
  cr_assert_lt((size_t)n, sizeof(extra));
  server_init(s, &(struct server_opts){.extra = extra,
                                       .listen = listen,
                                       .asan_options = sc->asan_options});
  server_start(s);
}

static void finish(struct server *s)
{
  server_stop(s);
  server_destroy(s);
}

/* stats.share, from the admin socket. */
struct share_stats {
  char provider[16];
  uint64_t sent, dropped, suppressed, reconnects, queued;
};

static struct share_stats share_stats(const struct server *s)
{
  static const char *const keys[] = {"provider",   "sent",       "dropped",
                                     "suppressed", "reconnects", "queued",
                                     NULL};
  struct share_stats st;
  gs_client *a = server_admin(s);
  const msgpack_object *sh = obj_get(admin_call(a, "stats", NULL, 0), "share");

  cr_assert(obj_has_exactly(sh, keys),
            "stats.share is not {provider, sent, dropped, suppressed, "
            "reconnects, queued}");
  obj_str(obj_get(sh, "provider"), st.provider, sizeof(st.provider));
  st.sent = obj_get_u64(sh, "sent");
  st.dropped = obj_get_u64(sh, "dropped");
  st.suppressed = obj_get_u64(sh, "suppressed");
  st.reconnects = obj_get_u64(sh, "reconnects");
  st.queued = obj_get_u64(sh, "queued");
  gs_client_close(a);
  return st;
}

/* Routes and requires success; returns the answer. */
static gs_route_answer route_as(gs_client *c, const char *user, const char *ip,
                                bool no_geo, const char *session)
{
  gs_route_answer a;
  gs_remote_error err = {0};
  int rc = gs_route(c, user, ip, NULL, no_geo, session, &a, &err);
  cr_assert_eq(rc, 0, "route %s: %s (%s: %s)", ip, gs_client_strerror(rc),
               err.name, err.message);
  return a;
}

/* [0, msgid, "route", [{ip, session?}]] */
static void pack_route_session(msgpack_packer *pk, uint32_t msgid,
                               const char *ip, const char *session)
{
  msgpack_pack_array(pk, 4);
  msgpack_pack_uint8(pk, GS_RPC_REQUEST);
  msgpack_pack_uint32(pk, msgid);
  pack_cstr(pk, "route");
  msgpack_pack_array(pk, 1);
  msgpack_pack_map(pk, session ? 2 : 1);
  pack_cstr(pk, "ip");
  pack_cstr(pk, ip);
  if (session) {
    pack_cstr(pk, "session");
    pack_cstr(pk, session);
  }
}

/* A route request for the i-th pipelined request of a batch. */
typedef void (*batch_fn)(msgpack_packer *pk, uint32_t msgid, uint64_t i);

/*
 * Sends n route requests pipelined on fd in one write and requires n
 * successful answers; in is reused between batches.
 */
static void route_batch(const struct server *s, int fd, struct rbuf *in,
                        uint64_t first, size_t n, batch_fn fn)
{
  msgpack_sbuffer out;
  msgpack_packer pk;
  struct replies r;
  size_t sent = 0;
  int end;

  msgpack_sbuffer_init(&out);
  msgpack_packer_init(&pk, &out, msgpack_sbuffer_write);
  for (size_t i = 0; i < n; i++)
    fn(&pk, (uint32_t)i, first + i);
  in->len = 0;
  end = raw_exchange(fd, out.data, out.size, in, n, HARNESS_IO_WAIT_MS * 3,
                     &sent);
  if (end != RAW_REPLIES) {
    char *log = server_log(s);
    cr_assert_fail("batch at %llu: %s after %zu of %zu bytes; the daemon's "
                   "log:\n%s",
                   (unsigned long long)first, raw_end_name(end), sent, out.size,
                   log);
  }
  replies_parse(&r, in->data, in->len);
  cr_assert_eq(r.n, n);
  for (size_t i = 0; i < n; i++)
    cr_assert_null(route_result_problem(result_of(&r.obj[i], (uint32_t)i)),
                   "batch at %llu: reply %zu is not a route answer",
                   (unsigned long long)first, i);
  replies_free(&r);
  msgpack_sbuffer_destroy(&out);
}

/* Plain located IPv4 addresses, cycled by the pipelined tests. */
static const char *const busy_ips[] = {"81.2.69.5", "5.6.0.1", "7.7.0.1",
                                       "6.6.0.1"};

static void pack_busy(msgpack_packer *pk, uint32_t msgid, uint64_t i)
{
  char session[32];
  snprintf(session, sizeof(session), "q-%llu", (unsigned long long)i);
  pack_route_session(pk, msgid, busy_ips[i % 4], session);
}

/* ---- privacy and precision ---------------------------------------------- */

/*
 * Routes every place twice (with a user and a session; with a user and
 * no session) and every unshared address, with users share-user-N, then
 * checks the capture record by record and byte by byte.
 */
static void check_events(enum precision p)
{
  struct sink k;
  struct server s;
  struct capture c;
  char dcs[NLOCATED][33];
  char user[32], session[32];
  size_t want = 2 * NLOCATED;
  time_t t0 = time(NULL), t1;
  gs_client *cl;
  int user_n = 0;

  sink_start(&k, 0, true);
  start_sharing(
      &s, &(struct share_cfg){.port = k.port, .precision = precision_name[p]},
      NULL);
  cl = server_client(&s);
  for (size_t i = 0; i < NLOCATED; i++) {
    snprintf(user, sizeof(user), "share-user-%d", user_n++);
    snprintf(session, sizeof(session), "sess-%zu", i);
    gs_route_answer a = route_as(cl, user, located[i].ip, false, session);
    cr_assert_str_eq(a.dc, located[i].dc, "%s answered by %s", located[i].ip,
                     a.dc);
    memcpy(dcs[i], a.dc, sizeof(dcs[i]));
    snprintf(user, sizeof(user), "share-user-%d", user_n++);
    route_as(cl, user, located[i].ip, false, NULL);
  }
  for (size_t i = 0; i < NUNSHARED; i++) {
    snprintf(user, sizeof(user), "share-user-%d", user_n++);
    snprintf(session, sizeof(session), "unshared-%zu", i);
    route_as(cl, user, unshared_ips[i], false, session);
  }
  POLL_UNTIL(sink_records(&k) >= want, ARRIVAL_WAIT_MS,
             "%zu records expected, %zu arrived", want, sink_records(&k));
  /* Anything more (an unshared answer) would come in the same flushes. */
  harness_sleep_ms(4 * FAST_INTERVAL_MS);
  t1 = time(NULL);

  capture_take(&k, &c);
  cr_assert_str_empty(c.problem, "%s", c.problem);
  cr_assert_eq(c.nrec, want, "%zu records, expected %zu", c.nrec, want);
  for (size_t i = 0; i < c.nrec; i++) {
    const char *why = record_problem(c.rec[i], p, false);
    uint64_t at = obj_u64(obj_get(c.rec[i], "at"));
    cr_assert_null(why, "record %zu: %s", i, why);
    cr_assert(at + 1 >= (uint64_t)t0 && at <= (uint64_t)t1 + 1,
              "record %zu: at %llu is not the time of the request", i,
              (unsigned long long)at);
  }
  for (size_t i = 0; i < NLOCATED; i++) {
    snprintf(session, sizeof(session), "sess-%zu", i);
    const msgpack_object *r = record_with_session(&c, session);
    cr_assert_not_null(r, "no record for %s (session %s)", located[i].ip,
                       session);
    assert_record_is(r, &located[i], p, dcs[i]);
  }
  for (size_t i = 0; i < NUNSHARED; i++) {
    snprintf(session, sizeof(session), "unshared-%zu", i);
    cr_assert_null(record_with_session(&c, session),
                   "%s (a net or unknown answer) was shared", unshared_ips[i]);
  }
  for (size_t i = 0; i < NLOCATED; i++)
    assert_address_absent(&c, located[i].ip);
  for (size_t i = 0; i < NUNSHARED; i++)
    assert_address_absent(&c, unshared_ips[i]);
  cr_assert(!capture_contains(&c, "share-user", 10), "a user id was shared");
  capture_free(&c);

  struct share_stats st = share_stats(&s);
  cr_assert_str_eq(st.provider, "connected");
  cr_assert_eq(st.sent, want);
  cr_assert_eq(st.dropped, 0);
  cr_assert_eq(st.queued, 0);
  gs_client_close(cl);
  finish(&s);
  sink_free(&k);
}

Test(share, continent_records_hold_no_address_or_user)
{
  check_events(P_CONTINENT);
}

Test(share, country_records_hold_no_address_or_user)
{
  check_events(P_COUNTRY);
}

Test(share, subdivision_records_hold_no_address_or_user)
{
  check_events(P_SUBDIVISION);
}

Test(share, cell_records_hold_whole_degrees_only)
{
  check_events(P_CELL);
}

/* ---- what is never shared ----------------------------------------------- */

Test(share, optout_nogeo_net_and_unknown_are_not_shared)
{
  struct sink k;
  struct server s;
  struct capture c;
  gs_client *cl, *adm;
  char session[32];
  const msgpack_object *r;

  sink_start(&k, 0, true);
  start_sharing(&s, &(struct share_cfg){.port = k.port}, NULL);
  adm = server_admin(&s);
  admin_call(adm, "optout.set",
             (gs_arg[]){{"user", "share-user-opted", false},
                        {"actor", "share-test", false}},
             2);
  cl = server_client(&s);
  for (size_t i = 0; i < NLOCATED; i++) {
    snprintf(session, sizeof(session), "opted-%zu", i);
    gs_route_answer a =
        route_as(cl, "share-user-opted", located[i].ip, false, session);
    cr_assert_str_eq(a.reason, "optout", "%s: reason %s", located[i].ip,
                     a.reason);
    snprintf(session, sizeof(session), "nogeo-%zu", i);
    route_as(cl, "share-user-1", located[i].ip, true, session);
  }
  for (size_t i = 0; i < NUNSHARED; i++) {
    snprintf(session, sizeof(session), "unshared-%zu", i);
    route_as(cl, "share-user-2", unshared_ips[i], false, session);
  }
  /* One ring, drained in order: once this arrives, the rest had its turn. */
  route_as(cl, "share-user-3", "81.2.69.5", false, "marker");
  POLL_UNTIL(sink_has_session(&k, "marker"), ARRIVAL_WAIT_MS,
             "the marker record did not arrive");

  /* A record's dc is the answered dc, also when the best one is drained. */
  admin_call(adm, "dc.drain", (gs_arg[]){{"dc", "lhr", false}}, 1);
  gs_route_answer drained = route_as(cl, NULL, "81.2.69.5", false, "drained");
  cr_assert_str_neq(drained.dc, "lhr");
  admin_call(adm, "dc.undrain", (gs_arg[]){{"dc", "lhr", false}}, 1);
  POLL_UNTIL(sink_has_session(&k, "drained"), ARRIVAL_WAIT_MS,
             "the record of the drained answer did not arrive");
  harness_sleep_ms(4 * FAST_INTERVAL_MS);

  capture_take(&k, &c);
  cr_assert_str_empty(c.problem, "%s", c.problem);
  cr_assert_eq(c.nrec, 2,
               "only the marker and the drained answer may be "
               "shared; %zu records arrived",
               c.nrec);
  r = record_with_session(&c, "drained");
  cr_assert_null(record_problem(r, P_COUNTRY, false));
  cr_assert(obj_is_str(obj_get(r, "dc"), drained.dc),
            "the record's dc is not the answered %s", drained.dc);
  cr_assert(obj_is_str(obj_get(r, "country"), "GB"));
  cr_assert_null(
      record_problem(record_with_session(&c, "marker"), P_COUNTRY, false));
  cr_assert(!capture_contains(&c, "share-user", 10), "a user id was shared");
  capture_free(&c);

  cr_assert_eq(share_stats(&s).sent, 2);
  gs_client_close(cl);
  gs_client_close(adm);
  finish(&s);
  sink_free(&k);
}

Test(share, anonymous_nogeo_requests_are_not_shared)
{
  struct sink k;
  struct server s;
  char extra[256];
  gs_client *cl;

  sink_start(&k, 0, true);
  snprintf(extra, sizeof(extra),
           "anonymous: nogeo\nshare:\n  provider: \"127.0.0.1:%u\"\n"
           "  interval_ms: %d",
           (unsigned)k.port, FAST_INTERVAL_MS);
  server_init(&s, &(struct server_opts){.extra = extra});
  server_start(&s);
  cl = server_client(&s);
  route_as(cl, NULL, "81.2.69.5", false, "anonymous");
  route_as(cl, "share-user-1", "81.2.69.5", false, "marker");
  POLL_UNTIL(sink_has_session(&k, "marker"), ARRIVAL_WAIT_MS,
             "the marker record did not arrive");
  harness_sleep_ms(4 * FAST_INTERVAL_MS);
  cr_assert(!sink_has_session(&k, "anonymous"),
            "an anonymous request under anonymous: nogeo was shared");
  cr_assert_eq(sink_records(&k), 1);
  gs_client_close(cl);
  finish(&s);
  sink_free(&k);
}

/* ---- aggregate mode ----------------------------------------------------- */

/* Buckets with this dc and country, and their total count. */
static size_t buckets_of(const struct capture *c, const char *dc,
                         const char *country, uint64_t *total)
{
  size_t n = 0;
  *total = 0;
  for (size_t i = 0; i < c->nrec; i++)
    if ((dc == NULL || obj_is_str(obj_get(c->rec[i], "dc"), dc)) &&
        (country == NULL ||
         obj_is_str(obj_get(c->rec[i], "country"), country))) {
      n++;
      *total += obj_u64(obj_get(c->rec[i], "count"));
    }
  return n;
}

static bool sink_has_bucket(struct sink *k, const char *dc)
{
  struct capture c;
  uint64_t total;
  size_t n;
  capture_take(k, &c);
  n = buckets_of(&c, dc, NULL, &total);
  capture_free(&c);
  return n > 0;
}

static void pack_sync(msgpack_packer *pk, uint32_t msgid, uint64_t i)
{
  (void)i;
  pack_route_session(pk, msgid, "2.17.0.1", NULL); /* Frankfurt */
}

static void pack_london_sydney(msgpack_packer *pk, uint32_t msgid, uint64_t i)
{
  pack_route_session(pk, msgid, i < 7 ? "81.2.69.5" : "7.7.0.1", "agg");
}

Test(share, aggregate_withholds_buckets_below_min_count_for_good)
{
  enum { INTERVAL = 1000 };
  struct sink k;
  struct server s;
  struct capture c;
  struct rbuf in = {0};
  uint64_t total, suppressed0;
  int fd;

  sink_start(&k, 0, true);
  start_sharing(&s,
                &(struct share_cfg){.port = k.port,
                                    .mode = "aggregate",
                                    .min_count = 5,
                                    .interval_ms = INTERVAL},
                NULL);
  fd = raw_connect(&s);
  /*
   * Line up with the flush timer: once a bucket of 5 has arrived, a whole
   * interval lies ahead, and 10 pipelined requests take far less.
   */
  for (int tries = 0;; tries++) {
    cr_assert_lt(tries, 5, "the 5 synchronising requests never arrived");
    route_batch(&s, fd, &in, 0, 5, pack_sync);
    int64_t deadline = harness_now_ms() + 3 * INTERVAL;
    while (!sink_has_bucket(&k, "fra") && harness_now_ms() < deadline)
      harness_sleep_ms(5);
    if (sink_has_bucket(&k, "fra"))
      break;
  }
  suppressed0 = share_stats(&s).suppressed;
  route_batch(&s, fd, &in, 0, 10, pack_london_sydney);
  POLL_UNTIL(sink_has_bucket(&k, "lhr"), 4 * INTERVAL,
             "the London bucket did not arrive");
  struct share_stats st = share_stats(&s);
  cr_assert_eq(st.suppressed - suppressed0, 3,
               "suppressed grew by %llu, expected the 3 Sydney requests",
               (unsigned long long)(st.suppressed - suppressed0));

  /* Later intervals must not send the 3 either. */
  harness_sleep_ms(3 * INTERVAL + INTERVAL / 2);
  capture_take(&k, &c);
  cr_assert_str_empty(c.problem, "%s", c.problem);
  for (size_t i = 0; i < c.nrec; i++) {
    const char *why = record_problem(c.rec[i], P_COUNTRY, true);
    cr_assert_null(why, "bucket %zu: %s", i, why);
    cr_assert_geq(obj_u64(obj_get(c.rec[i], "count")), 5,
                  "a bucket below min_count was sent");
  }
  cr_assert_eq(buckets_of(&c, "lhr", "GB", &total), 1);
  cr_assert_eq(total, 7, "London bucket count %llu, expected 7",
               (unsigned long long)total);
  cr_assert_eq(buckets_of(&c, NULL, "AU", &total), 0,
               "a Sydney bucket (3 < min_count) was sent");
  cr_assert_eq(buckets_of(&c, "syd", NULL, &total), 0,
               "a Sydney bucket (3 < min_count) was sent");
  cr_assert(!capture_contains(&c, "agg", 3), "a session reached a bucket");
  assert_address_absent(&c, "81.2.69.5");
  assert_address_absent(&c, "7.7.0.1");
  assert_address_absent(&c, "2.17.0.1");
  capture_free(&c);
  cr_assert_eq(share_stats(&s).suppressed, st.suppressed);

  rbuf_free(&in);
  close(fd);
  finish(&s);
  sink_free(&k);
}

/* ---- the provider fails ------------------------------------------------- */

/* True when n records went through the rings: queued or dropped. */
static bool all_drained(const struct server *s, struct share_stats *st,
                        uint64_t n)
{
  *st = share_stats(s);
  return st->dropped + st->queued + st->sent >= n;
}

Test(share, provider_down_at_start_keeps_newest_then_resumes)
{
  enum { QUEUE_MAX = 100, SENT = 300 };
  struct sink k;
  struct server s;
  struct capture c;
  struct rbuf in = {0};
  struct share_stats st;
  uint16_t port = closed_port();
  char session[32];
  int fd;

  start_sharing(&s, &(struct share_cfg){.port = port, .queue_max = QUEUE_MAX},
                NULL);
  st = share_stats(&s);
  cr_assert(strcmp(st.provider, "backoff") == 0 ||
                strcmp(st.provider, "connecting") == 0,
            "provider is %s with nothing listening", st.provider);

  fd = raw_connect(&s);
  route_batch(&s, fd, &in, 0, SENT, pack_busy);
  POLL_UNTIL(all_drained(&s, &st, SENT), ARRIVAL_WAIT_MS,
             "records not drained: dropped %llu queued %llu",
             (unsigned long long)st.dropped, (unsigned long long)st.queued);
  cr_assert_geq(st.dropped, SENT - QUEUE_MAX);
  cr_assert_leq(st.queued, QUEUE_MAX);
  cr_assert_eq(st.sent, 0);

  sink_start(&k, port, true);
  POLL_UNTIL(sink_records(&k) >= QUEUE_MAX, RECONNECT_WAIT_MS,
             "the queued records did not arrive after the provider came up "
             "(%zu arrived)",
             sink_records(&k));
  /* The queue kept the newest records: the oldest went first. */
  capture_take(&k, &c);
  cr_assert_str_empty(c.problem, "%s", c.problem);
  for (int i = 0; i < SENT; i++) {
    snprintf(session, sizeof(session), "q-%d", i);
    bool has = record_with_session(&c, session) != NULL;
    cr_assert_eq(has, i >= SENT - QUEUE_MAX, "record %s %s", session,
                 has ? "arrived but should have been dropped" : "was lost");
  }
  capture_free(&c);
  st = share_stats(&s);
  cr_assert_str_eq(st.provider, "connected");
  cr_assert_geq(st.reconnects, 1);
  cr_assert_geq(st.sent, QUEUE_MAX);

  /* And new records flow. */
  route_batch(&s, fd, &in, SENT, 1, pack_busy);
  snprintf(session, sizeof(session), "q-%d", SENT);
  POLL_UNTIL(sink_has_session(&k, session), ARRIVAL_WAIT_MS,
             "a new record did not arrive after the provider came up");
  server_assert_answers(&s);

  rbuf_free(&in);
  close(fd);
  finish(&s);
  sink_free(&k);
}

Test(share, provider_killed_mid_run_then_a_new_one_receives)
{
  struct sink k, k2;
  struct server s;
  struct capture c;
  gs_client *cl;
  char session[32];
  uint16_t port;

  sink_start(&k, 0, true);
  port = k.port;
  start_sharing(&s, &(struct share_cfg){.port = port}, NULL);
  cl = server_client(&s);
  route_as(cl, "share-user-1", "81.2.69.5", false, "before");
  POLL_UNTIL(sink_has_session(&k, "before"), ARRIVAL_WAIT_MS,
             "the first record did not arrive");

  sink_stop(&k); /* the provider dies: listener and connection closed */
  for (int i = 0; i < 50; i++) {
    snprintf(session, sizeof(session), "down-%d", i);
    gs_route_answer a =
        route_as(cl, "share-user-1", busy_ips[i % 4], false, session);
    cr_assert_str_neq(a.dc, "");
  }
  POLL_UNTIL(strcmp(share_stats(&s).provider, "connected") != 0,
             ARRIVAL_WAIT_MS, "the daemon did not notice the provider died");

  sink_start(&k2, port, true);
  int i = 0;
  int64_t deadline = harness_now_ms() + RECONNECT_WAIT_MS;
  for (;; i++) {
    snprintf(session, sizeof(session), "after-%d", i);
    route_as(cl, "share-user-1", "5.6.0.1", false, session);
    if (sink_has_session(&k2, "after-0"))
      break;
    cr_assert_lt(harness_now_ms(), deadline,
                 "the new provider received nothing (%zu connections)",
                 sink_accepted(&k2));
    harness_sleep_ms(100);
  }
  capture_take(&k2, &c);
  cr_assert_str_empty(c.problem, "%s", c.problem);
  for (size_t j = 0; j < c.nrec; j++)
    cr_assert_null(record_problem(c.rec[j], P_COUNTRY, false));
  capture_free(&c);
  cr_assert_geq(share_stats(&s).reconnects, 1);

  gs_client_close(cl);
  finish(&s);
  sink_free(&k2);
  sink_free(&k);
}

/*
 * Sessions of the full 64 bytes make records of about 100 bytes: 100,000
 * of them are 10 MB, far more than the daemon's 1 MiB of pending writes
 * plus what the kernel buffers on loopback (a send buffer grows to 4 MiB).
 */
static void pack_padded(msgpack_packer *pk, uint32_t msgid, uint64_t i)
{
  char session[GS_SESSION_MAX + 1];
  snprintf(session, sizeof(session), "padded-%057llu", (unsigned long long)i);
  pack_route_session(pk, msgid, busy_ips[i % 4], session);
}

Test(share, provider_that_never_reads_costs_bounded_memory)
{
  enum { BATCH = 1000, WARMUP = 5000, TOTAL = 100000, QUEUE_MAX = 2000 };
  struct sink k;
  struct server s;
  struct rbuf in = {0};
  struct share_stats mid, end;
  long rss0, rss1;
  uint64_t i = 0;
  int fd;

  sink_start(&k, 0, false);
  /*
   * ASan keeps freed blocks (each notification's buffers) in a quarantine
   * of up to 256 MiB to catch use after free; that is the sanitizer's
   * memory, not the daemon's, so it is capped well below the bound.
   */
  start_sharing(&s,
                &(struct share_cfg){.port = k.port,
                                    .queue_max = QUEUE_MAX,
                                    .asan_options = "quarantine_size_mb=4"},
                NULL);
  POLL_UNTIL(sink_accepted(&k) == 1, ARRIVAL_WAIT_MS,
             "the daemon did not connect to the sink");
  fd = raw_connect(&s);
  for (; i < WARMUP; i += BATCH)
    route_batch(&s, fd, &in, i, BATCH, pack_padded);
  harness_sleep_ms(4 * FAST_INTERVAL_MS);
  rss0 = server_rss_kb(&s);
  for (; i < WARMUP + TOTAL / 2; i += BATCH)
    route_batch(&s, fd, &in, i, BATCH, pack_padded);
  harness_sleep_ms(4 * FAST_INTERVAL_MS);
  mid = share_stats(&s);
  for (; i < WARMUP + TOTAL; i += BATCH)
    route_batch(&s, fd, &in, i, BATCH, pack_padded);
  harness_sleep_ms(4 * FAST_INTERVAL_MS);
  rss1 = server_rss_kb(&s);
  end = share_stats(&s);

  cr_assert_lt(rss1 - rss0, RSS_GROWTH_MAX_KB,
               "RSS grew by %ld KiB (from %ld KiB) with a provider that never "
               "reads",
               rss1 - rss0, rss0);
  cr_assert_gt(end.dropped, mid.dropped,
               "dropped did not grow (%llu then %llu): the provider's "
               "backlog is not bounded",
               (unsigned long long)mid.dropped,
               (unsigned long long)end.dropped);
  cr_assert_leq(end.queued, QUEUE_MAX);
  cr_assert_str_eq(end.provider, "connected");
  server_assert_answers(&s);

  rbuf_free(&in);
  close(fd);
  finish(&s);
  sink_free(&k);
}

Test(share, provider_on_ipv6_loopback_receives)
{
  struct sink k;
  struct server s;
  gs_client *cl;

  if (!sink_start_at(&k, true, 0, true))
    cr_skip_test("no IPv6 loopback here: %s", strerror(errno));
  start_sharing(&s, &(struct share_cfg){.port = k.port, .host = "[::1]"}, NULL);
  cl = server_client(&s);
  route_as(cl, NULL, "2a02:1000::1", false, "over-ipv6");
  POLL_UNTIL(sink_has_session(&k, "over-ipv6"), ARRIVAL_WAIT_MS,
             "nothing arrived at a provider on [::1] (provider %s)",
             share_stats(&s).provider);
  gs_client_close(cl);
  finish(&s);
  sink_free(&k);
}

/*
 * Connections spread over several workers: each worker's ring is drained
 * and every record arrives exactly once. The routes also touch each
 * worker's own counters, which the sanitized daemon checks.
 */
static void pack_worker_session(msgpack_packer *pk, uint32_t msgid, uint64_t i)
{
  char session[32];
  snprintf(session, sizeof(session), "w-%llu", (unsigned long long)i);
  pack_route_session(pk, msgid, busy_ips[i % 4], session);
}

Test(share, records_from_every_worker_arrive_once)
{
  enum { CONNS = 8, PER_CONN = 200 };
  struct sink k;
  struct server s;
  struct capture c;
  struct rbuf in = {0};
  char session[32];
  int fd[CONNS];

  sink_start(&k, 0, true);
  start_sharing(&s, &(struct share_cfg){.port = k.port, .top = "workers: 4"},
                NULL);
  for (int i = 0; i < CONNS; i++)
    fd[i] = raw_connect(&s);
  for (int i = 0; i < CONNS; i++)
    route_batch(&s, fd[i], &in, (uint64_t)i * PER_CONN, PER_CONN,
                pack_worker_session);
  POLL_UNTIL(sink_records(&k) >= CONNS * PER_CONN, ARRIVAL_WAIT_MS,
             "%d records expected, %zu arrived", CONNS * PER_CONN,
             sink_records(&k));
  harness_sleep_ms(4 * FAST_INTERVAL_MS);
  capture_take(&k, &c);
  cr_assert_str_empty(c.problem, "%s", c.problem);
  cr_assert_eq(c.nrec, CONNS * PER_CONN);
  for (int i = 0; i < CONNS * PER_CONN; i++) {
    snprintf(session, sizeof(session), "w-%d", i);
    cr_assert_not_null(record_with_session(&c, session), "%s lost", session);
  }
  capture_free(&c);
  for (int i = 0; i < CONNS; i++)
    close(fd[i]);
  rbuf_free(&in);
  finish(&s);
  sink_free(&k);
}

Test(share, stops_cleanly_while_connecting)
{
  struct server s;
  uint16_t port;
  int lfd = loopback_socket(false, 0, &port), filler[4], nfill = 0;

  /*
   * A listener that accepts nothing, its queue filled by our own
   * connections: the kernel drops the daemon's SYN, so its connect stays
   * pending until SIGTERM cancels it.
   */
  cr_assert_geq(lfd, 0);
  cr_assert_eq(listen(lfd, 0), 0);
  for (int i = 0; i < 4; i++) {
    filler[nfill] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons(port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    connect(filler[nfill], (struct sockaddr *)&sin, sizeof(sin));
    nfill++;
  }
  harness_sleep_ms(100);
  start_sharing(&s, &(struct share_cfg){.port = port}, NULL);
  gs_client *cl = server_client(&s);
  route_as(cl, NULL, "81.2.69.5", false, NULL);
  gs_client_close(cl);
  harness_sleep_ms(2 * FAST_INTERVAL_MS);
  cr_assert_str_eq(share_stats(&s).provider, "connecting",
                   "the connect did not stay pending (is "
                   "net.ipv4.tcp_abort_on_overflow set?)");
  finish(&s); /* exit status 0, no leak */
  for (int i = 0; i < nfill; i++)
    close(filler[i]);
  close(lfd);
}

Test(share, a_null_provider_shares_nothing)
{
  struct server s;
  gs_client *cl;
  struct share_stats st;

  server_init(&s, &(struct server_opts){
                      .extra = "share:\n  provider: null\n  precision: cell\n"
                               "  interval_ms: 10"});
  server_start(&s);
  cl = server_client(&s);
  route_as(cl, NULL, "81.2.69.5", false, "nobody");
  gs_client_close(cl);
  harness_sleep_ms(100);
  st = share_stats(&s);
  cr_assert_str_eq(st.provider, "off");
  cr_assert_eq(st.sent + st.dropped + st.queued, 0);
  finish(&s);
}

/* ---- metrics ------------------------------------------------------------ */

Test(share, metrics_count_what_was_sent)
{
  struct sink k;
  struct server s;
  struct rbuf in = {0};
  char line[128];
  gs_client *cl;
  int fd, end;

  sink_start(&k, 0, true);
  start_sharing(&s, &(struct share_cfg){.port = k.port},
                "  metrics: \"127.0.0.1:0\"");
  cl = server_client(&s);
  for (int i = 0; i < 3; i++)
    route_as(cl, NULL, busy_ips[i], false, NULL);
  POLL_UNTIL(share_stats(&s).sent == 3, ARRIVAL_WAIT_MS,
             "3 records were not sent");
  fd = raw_connect_port(s.metrics_port);
  cr_assert_geq(fd, 0);
  static const char get[] = "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n";
  end = raw_exchange(fd, get, strlen(get), &in, 0, HARNESS_IO_WAIT_MS, NULL);
  cr_assert_eq(end, RAW_EOF, "metrics: %s", raw_end_name(end));
  close(fd);
  in.data = realloc(in.data, in.len + 1);
  in.data[in.len] = '\0';
  static const char *const want[] = {
      "geosteer_share_records_total{outcome=\"sent\"} 3\n",
      "geosteer_share_records_total{outcome=\"dropped\"} 0\n",
      "geosteer_share_records_total{outcome=\"suppressed\"} 0\n",
      "geosteer_share_connected 1\n", "geosteer_share_reconnects_total 0\n"};
  for (size_t j = 0; j < sizeof(want) / sizeof(want[0]); j++) {
    snprintf(line, sizeof(line), "%s", want[j]);
    cr_assert_not_null(strstr(in.data, line), "/metrics lacks %s", line);
  }
  rbuf_free(&in);
  gs_client_close(cl);
  finish(&s);
  sink_free(&k);
}

/* ---- the share section of the config ------------------------------------ */

struct config_case {
  const char *lines; /* inside share:, after a valid provider */
  const char *says;  /* in geosteerd -t's output; NULL: the config is valid */
};

static const struct config_case config_cases[] = {
    {"  precision: city", "finer than a whole-degree cell"},
    {"  precision: coordinates", "finer than a whole-degree cell"},
    {"  precision: latlon", "finer than a whole-degree cell"},
    {"  precision: planet", "share.precision"},
    {"  precision: 3", "share.precision"},
    {"  mode: stream", "share.mode"},
    {"  mode: [events]", "share.mode"},
    {"  min_count: 0", "share.min_count"},
    {"  min_count: many", "share.min_count"},
    {"  min_count: -5", "share.min_count"},
    {"  interval_ms: 0", "share.interval_ms"},
    {"  queue_max: 0", "share.queue_max"},
    {"  recipients: all", "recipients"},
    {"  precision: continent", NULL},
    {"  precision: country\n  mode: events", NULL},
    {"  precision: subdivision\n  mode: aggregate\n  min_count: 1", NULL},
    {"  precision: cell\n  mode: aggregate\n  interval_ms: 60000\n"
     "  queue_max: 16",
     NULL},
};

static int check_config(struct server *s, const char *share, char **out)
{
  char *args[] = {"-t", "-c", s->config, NULL};
  server_write_config(s, &(struct server_opts){.extra = share});
  return harness_run_daemon(s->dir, args, out);
}

Test(share, config_refuses_finer_precisions_and_bad_values)
{
  struct server s;
  char share[256], *out;

  server_init(&s, NULL);
  for (size_t i = 0; i < sizeof(config_cases) / sizeof(config_cases[0]); i++) {
    const struct config_case *cc = &config_cases[i];
    snprintf(share, sizeof(share), "share:\n  provider: \"127.0.0.1:7999\"\n%s",
             cc->lines);
    int status = check_config(&s, share, &out);
    if (cc->says == NULL) {
      cr_assert_eq(status, 0, "geosteerd -t refused\n%s\n:\n%s", share, out);
    } else {
      cr_assert_eq(status, 1, "geosteerd -t exit %d for\n%s\n:\n%s", status,
                   share, out);
      cr_assert_not_null(strstr(out, cc->says),
                         "for\n%s\nthe message does not say \"%s\":\n%s", share,
                         cc->says, out);
    }
    free(out);
  }
  server_destroy(&s);
}

Test(share, config_refuses_a_provider_that_is_not_an_address)
{
  static const char *const providers[] = {
      "\"collector.example:7000\"", "\"127.0.0.1\"", "\"127.0.0.1:70000\"",
      "7000", "[1, 2]"};
  struct server s;
  char share[256], *out;

  server_init(&s, NULL);
  for (size_t i = 0; i < sizeof(providers) / sizeof(providers[0]); i++) {
    snprintf(share, sizeof(share), "share:\n  provider: %s", providers[i]);
    int status = check_config(&s, share, &out);
    cr_assert_eq(status, 1, "geosteerd -t exit %d for provider %s:\n%s", status,
                 providers[i], out);
    cr_assert_not_null(strstr(out, "share.provider"),
                       "the message does not name share.provider:\n%s", out);
    free(out);
  }
  server_destroy(&s);
}

/*
 * Port 0 means "any free port" to a listener; nothing can be connected to
 * on it, so a daemon started with it retries forever and shares nothing.
 */
Test(share, config_refuses_a_provider_on_port_0)
{
  static const char *const providers[] = {"\"127.0.0.1:0\"", "\"[::1]:0\""};
  struct server s;
  char share[256], *out;

  server_init(&s, NULL);
  for (size_t i = 0; i < sizeof(providers) / sizeof(providers[0]); i++) {
    snprintf(share, sizeof(share), "share:\n  provider: %s", providers[i]);
    int status = check_config(&s, share, &out);
    cr_assert_eq(status, 1, "geosteerd -t exit %d for provider %s:\n%s", status,
                 providers[i], out);
    cr_assert_not_null(strstr(out, "share.provider"),
                       "the message does not name share.provider:\n%s", out);
    free(out);
  }
  server_destroy(&s);
}
