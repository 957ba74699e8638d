/*
 * Tests for geosteerd against hostile peers: headers that claim huge
 * sizes, deep nesting, oversized and truncated messages, random bytes,
 * connection floods and a client that never reads its replies.
 *
 * Each hostile input is sent on fresh raw connections, many times over.
 * Every time the server must answer with an error (a reply when the
 * msgid is known, else an error notification) and close the connection;
 * afterwards it must still route on a new connection, and its resident
 * memory may not grow by more than a small bound between a warm-up round
 * and the end (a leak per connection becomes visible that way; the exit
 * status at SIGTERM covers what LeakSanitizer finds).
 */
#include <criterion/criterion.h>

#include "rng.h"
#include "server_harness.h"

/* One timeout for the suite; Criterion applies it to every test. */
TestSuite(hostile, .fini = harness_fini);

#define WARMUP_ROUNDS 20
#define ROUNDS 100
#define BATCH 10 /* connections open at once */
#define RSS_GROWTH_MAX_KB 1024
#define MIB (1u << 20)

/*
 * The daemon's allocator must reuse freed memory for RSS to mean
 * anything: ASan's quarantine would otherwise keep every freed buffer.
 * Leaks are still reported at exit.
 */
#define RSS_ASAN_OPTIONS                                                       \
  "quarantine_size_mb=0:thread_local_quarantine_size_kb=0"

enum expect {
  NOTIFY,    /* an error notification with `code`, then close */
  REPLY,     /* an error reply with `msgid` and `code`, then close */
  NOTHING,   /* no reply; closed when idle */
  ANY_ERROR, /* an error reply or notification, BAD_REQUEST or TOO_LARGE */
};

struct hostile {
  const char *name;
  void (*make)(struct rbuf *b, unsigned round); /* the bytes to send */
  enum expect expect;
  int code;
  uint32_t msgid;
};

static void put(struct rbuf *b, const void *p, size_t n)
{
  if (b->len + n > b->cap) {
    b->cap = (b->len + n) * 2;
    b->data = realloc(b->data, b->cap);
    cr_assert_not_null(b->data);
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
}

#define PUT(b, lit) put(b, lit, sizeof(lit) - 1)

static void zeros(struct rbuf *b, size_t n)
{
  static const char z[4096];
  for (; n > 0; n -= n < sizeof(z) ? n : sizeof(z))
    put(b, z, n < sizeof(z) ? n : sizeof(z));
}

static void make_array32(struct rbuf *b, unsigned round)
{
  (void)round;
  PUT(b, "\xdd\x04\x00\x00\x00"); /* array of 2^26 */
}

static void make_map32(struct rbuf *b, unsigned round)
{
  (void)round;
  PUT(b, "\xdf\x04\x00\x00\x00"); /* map of 2^26 pairs */
}

static void make_depth9(struct rbuf *b, unsigned round)
{
  (void)round;
  PUT(b,
      "\x91\x91\x91\x91\x91\x91\x91\x91\x91\x00"); /* [[[[[[[[[nil]]]]]]]]] */
}

static void make_depth9_request(struct rbuf *b, unsigned round)
{
  (void)round;
  /* [0, 7, "route", [[[[[[[[nil]]]]]]]]]: nine levels with the outer one */
  PUT(b, "\x94\x00\x07\xa5route\x91\x91\x91\x91\x91\x91\x91\x91\xc0");
}

static void make_notification_1mib(struct rbuf *b, unsigned round)
{
  (void)round;
  /* [2, "route", [{"user": bin32 of 1 MiB}]] */
  PUT(b, "\x93\x02\xa5route\x91\x81\xa4user\xc6\x00\x10\x00\x00");
  zeros(b, MIB);
}

static void make_request_1mib(struct rbuf *b, unsigned round)
{
  (void)round;
  /* [0, 7, "route", [{"user": bin32 of 1 MiB}]] */
  PUT(b, "\x94\x00\x07\xa5route\x91\x81\xa4user\xc6\x00\x10\x00\x00");
  zeros(b, MIB);
}

static void make_str32(struct rbuf *b, unsigned round)
{
  (void)round;
  PUT(b, "\xdb\xff\xff\xff\xff"); /* a string of 4 GiB - 1 */
  zeros(b, 64);
}

static void make_truncated(struct rbuf *b, unsigned round)
{
  (void)round;
  /* [0, 7, "route", [{"ip": "81.2.69.5"}]] cut inside the string */
  PUT(b, "\x94\x00\x07\xa5route\x91\x81\xa2ip\xa9\x38\x31.2");
}

static void make_random(struct rbuf *b, unsigned round)
{
  struct rng r = {0x6765736f + round}; /* fixed seed per round */
  for (int i = 0; i < 64 * 1024 / 8; i++) {
    uint64_t v = rng_next(&r);
    put(b, &v, sizeof(v));
  }
}

static void make_c1(struct rbuf *b, unsigned round)
{
  (void)round;
  PUT(b, "\xc1");
}

static void make_c1_in_request(struct rbuf *b, unsigned round)
{
  (void)round;
  PUT(b, "\x94\x00\x07\xc1"); /* [0, 7, <never used byte> */
}

/* NULL when the replies in `in` and the way it ended fit h; else why. */
static const char *outcome_problem(const struct hostile *h,
                                   const struct rbuf *in, int end)
{
  struct replies r;
  const char *problem = NULL;

  if (end != RAW_EOF && end != RAW_RESET)
    return end == RAW_TIMEOUT ? "the connection was not closed"
                              : "unexpected end";
  replies_parse(&r, in->data, in->len);
  if (r.bad || r.used != in->len)
    problem = "the bytes received are not whole MessagePack objects";
  else if (h->expect == NOTHING)
    problem = r.n == 0 ? NULL : "a reply to an incomplete message";
  else if (r.n != 1)
    problem = r.n == 0 ? "no reply before the close"
                       : "more than one reply before the close";
  else if (h->expect == NOTIFY)
    problem = error_notification_problem(&r.obj[0], h->code);
  else if (h->expect == REPLY)
    problem = error_reply_problem(&r.obj[0], h->msgid, h->code);
  else if (error_notification_problem(&r.obj[0], GS_CODE_BAD_REQUEST) &&
           error_notification_problem(&r.obj[0], GS_CODE_MESSAGE_TOO_LARGE)) {
    const msgpack_object *e = r.obj[0].via.array.ptr;
    uint32_t msgid = (uint32_t)obj_u64(&e[1]);
    if (error_reply_problem(&r.obj[0], msgid, GS_CODE_BAD_REQUEST) &&
        error_reply_problem(&r.obj[0], msgid, GS_CODE_MESSAGE_TOO_LARGE))
      problem = "not an error reply or notification (BAD_REQUEST or "
                "MESSAGE_TOO_LARGE)";
  }
  replies_free(&r);
  return problem;
}

/* Sends what the kernel takes now without blocking; returns the bytes. */
static size_t send_some(int fd, const struct rbuf *b)
{
  size_t done = 0;
  while (done < b->len) {
    ssize_t w = send(fd, b->data + done, b->len - done, MSG_NOSIGNAL);
    if (w <= 0)
      break;
    done += (size_t)w;
  }
  return done;
}

/*
 * Sends h's bytes on n new connections at once, then reads each until the
 * server closes it, and checks what came back.
 */
static void hostile_batch(const struct server *s, const struct hostile *h,
                          unsigned first_round, int n)
{
  int fd[BATCH];
  struct rbuf bytes[BATCH] = {{0}};
  size_t sent[BATCH];

  cr_assert_leq(n, BATCH);
  for (int i = 0; i < n; i++) {
    h->make(&bytes[i], first_round + (unsigned)i);
    fd[i] = raw_connect(s);
    sent[i] = send_some(fd[i], &bytes[i]);
  }
  for (int i = 0; i < n; i++) {
    struct rbuf in = {0};
    struct rbuf rest = bytes[i];
    const char *problem;
    int end;

    rest.data += sent[i];
    rest.len -= sent[i];
    end = raw_exchange(fd[i], rest.data, rest.len, &in, 0, HARNESS_IO_WAIT_MS,
                       NULL);
    problem = outcome_problem(h, &in, end);
    cr_assert_null(problem, "%s (round %u): %s; %zu bytes back, %s", h->name,
                   first_round + (unsigned)i, problem, in.len,
                   raw_end_name(end));
    close(fd[i]);
    rbuf_free(&in);
    rbuf_free(&bytes[i]);
  }
}

static void run_hostile(const struct hostile *h, const char *limits)
{
  struct server s;
  unsigned round = 0;
  long before, after;

  server_init(&s, &(struct server_opts){.limits = limits,
                                        .asan_options = RSS_ASAN_OPTIONS});
  server_start(&s);
  hostile_batch(&s, h, round++, 1);
  server_assert_answers(&s);
  for (int i = 0; i < WARMUP_ROUNDS; i += BATCH, round += BATCH)
    hostile_batch(&s, h, round, BATCH);
  before = server_rss_kb(&s);
  for (int i = 0; i < ROUNDS; i += BATCH, round += BATCH)
    hostile_batch(&s, h, round, BATCH);
  after = server_rss_kb(&s);
  cr_log_info("%s: RSS %ld KiB -> %ld KiB over %d connections", h->name, before,
              after, ROUNDS);
  cr_assert_lt(after - before, RSS_GROWTH_MAX_KB,
               "%s: RSS grew from %ld KiB to %ld KiB over %d connections",
               h->name, before, after, ROUNDS);
  server_assert_answers(&s);
  server_stop(&s);
  server_destroy(&s);
}

Test(hostile, array32_claiming_2_26_elements)
{
  run_hostile(&(struct hostile){"array32 of 2^26", make_array32, NOTIFY,
                                GS_CODE_MESSAGE_TOO_LARGE, 0},
              NULL);
}

Test(hostile, map32_claiming_2_26_pairs)
{
  run_hostile(&(struct hostile){"map32 of 2^26", make_map32, NOTIFY,
                                GS_CODE_MESSAGE_TOO_LARGE, 0},
              NULL);
}

Test(hostile, nesting_depth_9)
{
  run_hostile(&(struct hostile){"depth 9", make_depth9, NOTIFY,
                                GS_CODE_MESSAGE_TOO_LARGE, 0},
              NULL);
}

Test(hostile, nesting_depth_9_in_a_request)
{
  run_hostile(&(struct hostile){"depth 9 request", make_depth9_request, REPLY,
                                GS_CODE_MESSAGE_TOO_LARGE, 7},
              NULL);
}

Test(hostile, one_mib_message)
{
  run_hostile(&(struct hostile){"1 MiB notification", make_notification_1mib,
                                NOTIFY, GS_CODE_MESSAGE_TOO_LARGE, 0},
              NULL);
}

Test(hostile, one_mib_request_gets_its_msgid)
{
  run_hostile(&(struct hostile){"1 MiB request", make_request_1mib, REPLY,
                                GS_CODE_MESSAGE_TOO_LARGE, 7},
              NULL);
}

Test(hostile, str32_claiming_4_gib)
{
  run_hostile(&(struct hostile){"str32 of 4 GiB", make_str32, NOTIFY,
                                GS_CODE_MESSAGE_TOO_LARGE, 0},
              NULL);
}

Test(hostile, truncated_message_then_silence)
{
  run_hostile(&(struct hostile){"truncated", make_truncated, NOTHING, 0, 0},
              "  idle_timeout_ms: 300");
}

Test(hostile, random_bytes)
{
  run_hostile(&(struct hostile){"64 KiB random", make_random, ANY_ERROR, 0, 0},
              NULL);
}

Test(hostile, never_used_byte_c1)
{
  run_hostile(
      &(struct hostile){"0xc1", make_c1, NOTIFY, GS_CODE_BAD_REQUEST, 0}, NULL);
}

Test(hostile, never_used_byte_in_a_request)
{
  run_hostile(&(struct hostile){"0xc1 in a request", make_c1_in_request, REPLY,
                                GS_CODE_BAD_REQUEST, 7},
              NULL);
}

/* ---- connection limits ------------------------------------------------- */

/* Reads until the server closes; NULL if it sent one UNAVAILABLE. */
static const char *refused_problem(const struct server *s)
{
  static const struct hostile refused = {"refused", NULL, NOTIFY,
                                         GS_CODE_UNAVAILABLE, 0};
  struct rbuf in = {0};
  int fd = raw_connect(s);
  int end = raw_exchange(fd, NULL, 0, &in, 0, HARNESS_IO_WAIT_MS, NULL);
  const char *problem = outcome_problem(&refused, &in, end);

  if (problem == NULL && end != RAW_EOF)
    problem = "closed with a reset";
  close(fd);
  rbuf_free(&in);
  return problem;
}

/* True when a new connection answers a route request. */
static bool new_connection_routes(const struct server *s)
{
  gs_client *c = NULL;
  gs_route_answer a;
  bool ok;

  if (gs_client_connect(s->route_addr, HARNESS_CALL_MS, &c) != 0)
    return false;
  ok = gs_route(c, NULL, "81.2.69.5", NULL, false, NULL, &a, NULL) == 0;
  gs_client_close(c);
  return ok;
}

Test(hostile, connections_past_max_connections_are_refused)
{
  struct server s;
  gs_client *c[5];
  const msgpack_object *r;
  const char *problem;
  long before, after;

  server_init(&s, &(struct server_opts){.limits = "  max_connections: 5",
                                        .asan_options = RSS_ASAN_OPTIONS});
  server_start(&s);
  for (int i = 0; i < 5; i++) {
    c[i] = server_client(&s);
    cr_assert_eq(gs_client_call(c[i], "ping", NULL, 0, &r, NULL), 0);
  }
  problem = refused_problem(&s);
  cr_assert_null(problem, "6th connection: %s", problem);
  for (int i = 0; i < WARMUP_ROUNDS; i++)
    refused_problem(&s);
  before = server_rss_kb(&s);
  for (int i = 0; i < ROUNDS; i++) {
    problem = refused_problem(&s);
    cr_assert_null(problem, "connection %d past the limit: %s", i, problem);
  }
  after = server_rss_kb(&s);
  cr_assert_lt(after - before, RSS_GROWTH_MAX_KB,
               "RSS grew from %ld KiB to %ld KiB over %d refused connections",
               before, after, ROUNDS);
  /* The open ones still work; after one closes, a new one is accepted. */
  for (int i = 0; i < 5; i++)
    cr_assert_eq(gs_client_call(c[i], "ping", NULL, 0, &r, NULL), 0);
  gs_client_close(c[0]);
  POLL_UNTIL(new_connection_routes(&s), 10000,
             "no new connection accepted after one of five closed");
  for (int i = 1; i < 5; i++)
    gs_client_close(c[i]);
  server_stop(&s);
  server_destroy(&s);
}

/* ---- a client that never reads ----------------------------------------- */

/*
 * 200,000 requests: their replies (about 20 MB) cannot all hide in the
 * kernel's socket buffers (tcp_wmem allows a few MB), so whether the
 * server itself stops reading shows. With 20,000 they can.
 */
#define FLOOD_REQUESTS 200000
#define FLOOD_STALL_MS 1000   /* send "would block for a while" */
#define FLOOD_SETTLE_POLLS 10 /* stats unchanged this many polls: settled */
#define FLOOD_RSS_GROWTH_MAX_KB (8 * 1024)

/* requests.route from the admin stats. */
static uint64_t routes_answered(const struct server *s)
{
  gs_client *a = server_admin(s);
  uint64_t n = obj_get_u64(obj_get(admin_call(a, "stats", NULL, 0), "requests"),
                           "route");
  gs_client_close(a);
  return n;
}

static uint64_t open_route_connections(const struct server *s)
{
  gs_client *a = server_admin(s);
  uint64_t n = obj_get_u64(
      obj_get(admin_call(a, "stats", NULL, 0), "connections"), "open");
  gs_client_close(a);
  return n;
}

Test(hostile, client_that_never_reads)
{
  struct server s;
  msgpack_sbuffer sb;
  msgpack_packer pk;
  size_t sent = 0, total;
  long before, after;
  size_t next_check = 0;
  uint64_t base, answered = 0;
  int fd, small = 4096;
  struct sockaddr_in sin = {0};

  server_init(&s, &(struct server_opts){.limits = "  max_pending_bytes: 65536",
                                        .asan_options = RSS_ASAN_OPTIONS});
  server_start(&s);
  for (int i = 0; i < 50; i++)
    cr_assert(new_connection_routes(&s));
  before = server_rss_kb(&s);
  base = routes_answered(&s);

  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  for (uint32_t i = 1; i <= FLOOD_REQUESTS; i++)
    pack_route(&pk, i, "81.2.69.5");
  /* A small receive window, so replies back up in the server quickly. */
  fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  cr_assert_geq(fd, 0);
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  sin.sin_family = AF_INET;
  sin.sin_port = htons(s.port);
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  cr_assert(connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 ||
                errno == EINPROGRESS,
            "connect: %s", strerror(errno));
  while (sent < sb.size) {
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    ssize_t w;
    if (poll(&p, 1, FLOOD_STALL_MS) == 0)
      break; /* the server stopped taking requests */
    w = send(fd, sb.data + sent, sb.size - sent, MSG_NOSIGNAL);
    if (w < 0 && (errno == EAGAIN || errno == EINTR))
      continue;
    cr_assert_gt(w, 0, "send: %s", strerror(errno));
    sent += (size_t)w;
    if (sent >= next_check) {
      /* Meanwhile others are served. */
      cr_assert(new_connection_routes(&s),
                "another connection got no answer during the flood");
      base++;
      next_check += sb.size / 8;
    }
  }
  total = sb.size;
  msgpack_sbuffer_destroy(&sb); /* 6 MB: not kept past a failed assertion */
  /* Let the server work through what it took (bounded). */
  {
    uint64_t last = UINT64_MAX;
    int same = 0;
    int64_t deadline = harness_now_ms() + 30000;
    while (same < FLOOD_SETTLE_POLLS && harness_now_ms() < deadline) {
      answered = routes_answered(&s);
      same = answered == last ? same + 1 : 0;
      last = answered;
      harness_sleep_ms(50);
    }
  }
  answered -= base; /* the flood's requests only */
  after = server_rss_kb(&s);
  cr_log_info("never-reading client: %zu of %zu bytes sent, %llu requests "
              "handled, RSS %ld KiB -> %ld KiB",
              sent, total, (unsigned long long)answered, before, after);
  cr_assert_lt(after - before, FLOOD_RSS_GROWTH_MAX_KB,
               "RSS grew from %ld KiB to %ld KiB while a client did not read "
               "(%llu of its %d requests handled, max_pending_bytes 65536)",
               before, after, (unsigned long long)answered, FLOOD_REQUESTS);
  /* Backpressure: the server stopped reading well before the end. */
  cr_assert_lt(answered, FLOOD_REQUESTS,
               "the server handled all %d requests of a client that reads "
               "nothing (max_pending_bytes 65536)",
               FLOOD_REQUESTS);
  for (int i = 0; i < 20; i++)
    cr_assert(new_connection_routes(&s), "another connection got no answer");
  close(fd);
  /* The server notices and frees the connection. */
  POLL_UNTIL(open_route_connections(&s) == 0, 10000,
             "the connection of the client that never read is still open");
  cr_assert(new_connection_routes(&s));
  server_stop(&s);
  server_destroy(&s);
}
