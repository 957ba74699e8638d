/*
 * loadgen: a closed-loop load generator for the route listener
 * (MessagePack-RPC `route`) and, as the yardstick, for Redis (`GET`).
 *
 * One thread and one epoll set drive C connections. Each connection keeps
 * P requests in flight: it sends P at start and one more for every reply,
 * until N replies have come back across all connections. Replies come in
 * request order on a connection, so a reply belongs to the oldest request
 * outstanding there; its latency, send to reply on CLOCK_MONOTONIC, goes
 * into a log-linear histogram (128 linear sub-buckets per power of two, so
 * a reported value is at most 0.8 % above the true one, up to 10 s). The
 * first W replies (--warmup) are checked but left out of the figures.
 *
 * Invariants: every buffer is allocated before the first request, so the
 * loop never allocates; a connection has at most P requests outstanding,
 * so its send buffer of P requests cannot overflow; a reply is parsed only
 * once it is complete in the receive buffer, which bounds a reply to
 * RECV_BUF bytes.
 *
 * Output: `name: value unit` lines. Exit status 0 when every reply was a
 * success; 1 on error replies, a protocol error, a refused or closed
 * connection, or the timeout; 2 on bad usage.
 */
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "rng.h"

#define ADDR_COUNT 65536       /* pre-drawn client addresses, cycled */
#define MAX_CONNECTIONS 4096   /* -c */
#define MAX_PIPELINE 1024      /* -p */
#define MAX_KEY 256            /* --key, bytes */
#define REQ_MAX (MAX_KEY + 32) /* largest encoded request, either mode */
#define RECV_BUF 16384         /* per connection; also the largest reply */
#define MAX_EVENTS 256         /* epoll_wait batch */
#define ERROR_TEXT_MAX 200     /* rendering of the first error reply */

/*
 * Histogram of nanoseconds. Values below HIST_SUB have a bucket each; above,
 * each power of two [2^k, 2^(k+1)) is cut into HIST_SUB equal buckets.
 * 2^HIST_TOP_BIT ns exceeds 10 s; longer latencies land in the last bucket.
 */
#define HIST_SUB_BITS 7
#define HIST_SUB (1 << HIST_SUB_BITS)
#define HIST_TOP_BIT 34
#define HIST_BUCKETS (HIST_SUB * (1 + HIST_TOP_BIT - HIST_SUB_BITS))
#define HIST_MAX_NS ((UINT64_C(1) << HIST_TOP_BIT) - 1)

enum mode { MODE_MSGPACK, MODE_RESP };

struct conn {
  int fd;
  bool connected;
  bool want_out;         /* EPOLLOUT is registered */
  uint32_t next_msgid;   /* msgid of the next request (msgpack) */
  uint32_t oldest_msgid; /* msgid the next reply must carry */
  uint64_t *sent_ns;     /* ring of P send times, oldest at head */
  uint32_t head, inflight;
  uint32_t unstamped; /* newest ring entries not yet given a send time */
  char *out;          /* encoded requests; [out_off, out_len) unsent */
  size_t out_off, out_len;
  char *in; /* received bytes, [0, in_len) not yet parsed */
  size_t in_len;
};

struct addr_text {
  uint8_t len;
  char text[15]; /* "255.255.255.255" without NUL */
};

/* Settings, then run state; one run per process. */
static const char *host = "127.0.0.1";
static const char *port = "7400";
static enum mode mode = MODE_MSGPACK;
static uint32_t nconns = 1, pipeline = 1;
static uint64_t total = 100000, warmup = UINT64_MAX, seed = 20261129;
static const char *key = "k";
static double timeout_s = 60;

static char peer[300]; /* "host:port" for messages */
static char resp_req[REQ_MAX];
static size_t resp_req_len;
static struct addr_text *addrs;
static struct conn *conns;
static int epfd = -1;
static uint64_t issued, replied, errors;
static uint64_t measure_start_ns, last_reply_ns;
static uint64_t hist[HIST_BUCKETS];
static uint64_t lat_max_ns;
static char first_error[ERROR_TEXT_MAX + 1];

static uint64_t now_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- histogram ------------------------------------------------------- */

static size_t hist_index(uint64_t ns)
{
  if (ns > HIST_MAX_NS)
    ns = HIST_MAX_NS;
  if (ns < HIST_SUB)
    return (size_t)ns;
  int top = 63 - __builtin_clzll(ns);
  int shift = top - HIST_SUB_BITS;
  return (size_t)HIST_SUB * (size_t)(1 + shift) +
         (size_t)((ns >> shift) - HIST_SUB);
}

/* Largest value that falls into bucket i. */
static uint64_t hist_bucket_high(size_t i)
{
  if (i < HIST_SUB)
    return i;
  int shift = (int)(i / HIST_SUB) - 1;
  uint64_t low = (uint64_t)(HIST_SUB + i % HIST_SUB) << shift;
  return low + (UINT64_C(1) << shift) - 1;
}

static void hist_record(uint64_t ns)
{
  hist[hist_index(ns)]++;
  if (ns > lat_max_ns)
    lat_max_ns = ns;
}

/* The value at quantile q (0..1] of count recorded values, in ns. */
static uint64_t hist_quantile(double q, uint64_t count)
{
  uint64_t rank = (uint64_t)(q * (double)count + 0.999999);
  uint64_t seen = 0;
  if (rank == 0)
    rank = 1;
  for (size_t i = 0; i < HIST_BUCKETS; i++) {
    seen += hist[i];
    if (seen >= rank) {
      uint64_t high = hist_bucket_high(i);
      return high < lat_max_ns ? high : lat_max_ns;
    }
  }
  return lat_max_ns;
}

/* ---- MessagePack ------------------------------------------------------ */

static uint64_t be_read(const unsigned char *p, int n)
{
  uint64_t v = 0;
  for (int i = 0; i < n; i++)
    v = v << 8 | p[i];
  return v;
}

/*
 * Types 0xc4..0xdf (0xc1 is never used): bytes of the big-endian length or
 * count after the type byte, fixed bytes after those, and what the length
 * or count measures.
 */
enum { MP_FIXED, MP_BYTES, MP_ITEMS, MP_PAIRS };
static const struct {
  uint8_t hdr, fixed, kind;
} mp_types[] = {
    {1, 0, MP_BYTES}, {2, 0, MP_BYTES},  {4, 0, MP_BYTES}, /* c4: bin */
    {1, 1, MP_BYTES}, {2, 1, MP_BYTES},  {4, 1, MP_BYTES}, /* c7: ext */
    {0, 4, MP_FIXED}, {0, 8, MP_FIXED},                    /* ca: float */
    {0, 1, MP_FIXED}, {0, 2, MP_FIXED},  {0, 4, MP_FIXED}, /* cc: uint */
    {0, 8, MP_FIXED},                                      /* cf */
    {0, 1, MP_FIXED}, {0, 2, MP_FIXED},  {0, 4, MP_FIXED}, /* d0: int */
    {0, 8, MP_FIXED},                                      /* d3 */
    {0, 2, MP_FIXED}, {0, 3, MP_FIXED},  {0, 5, MP_FIXED}, /* d4: fixext */
    {0, 9, MP_FIXED}, {0, 17, MP_FIXED},                   /* d7 */
    {1, 0, MP_BYTES}, {2, 0, MP_BYTES},  {4, 0, MP_BYTES}, /* d9: str */
    {2, 0, MP_ITEMS}, {4, 0, MP_ITEMS},                    /* dc: array */
    {2, 0, MP_PAIRS}, {4, 0, MP_PAIRS},                    /* de: map */
};
_Static_assert(sizeof(mp_types) / sizeof(mp_types[0]) == 0xdf - 0xc4 + 1,
               "one entry per type byte 0xc4..0xdf");

/*
 * Length of the complete MessagePack object at p[0..len): 0 while it is
 * incomplete, -1 when the bytes are not MessagePack. No recursion: pending
 * counts the objects still to be skipped.
 */
static long mp_skip(const unsigned char *p, size_t len)
{
  size_t pos = 0;
  uint64_t pending = 1;

  while (pending > 0) {
    if (pos >= len)
      return 0;
    unsigned char b = p[pos++];
    uint64_t skip = 0; /* bytes after the type byte and its header */
    pending--;
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
      continue;
    if ((b & 0xe0) == 0xa0) {
      skip = b & 0x1f;
    } else if ((b & 0xf0) == 0x90) {
      pending += b & 0x0f;
    } else if ((b & 0xf0) == 0x80) {
      pending += 2u * (b & 0x0f);
    } else if (b >= 0xc4) {
      int hdr = mp_types[b - 0xc4].hdr, kind = mp_types[b - 0xc4].kind;
      uint64_t n = 0;
      if (len - pos < (size_t)hdr)
        return 0;
      n = be_read(p + pos, hdr);
      pos += (size_t)hdr;
      skip = mp_types[b - 0xc4].fixed + (kind == MP_BYTES ? n : 0);
      pending += kind == MP_ITEMS ? n : kind == MP_PAIRS ? 2 * n : 0;
    } else {
      return -1;
    }
    if (skip > len - pos)
      return 0;
    pos += (size_t)skip;
  }
  return (long)pos;
}

/* Reads a non-negative integer at p[*pos] of a complete object. */
static bool mp_read_uint(const unsigned char *p, size_t *pos, uint64_t *v)
{
  unsigned char b = p[(*pos)++];
  int n;

  if (b <= 0x7f) {
    *v = b;
    return true;
  }
  if (b >= 0xcc && b <= 0xcf)
    n = 1 << (b - 0xcc);
  else if (b >= 0xd0 && b <= 0xd3 && !(p[*pos] & 0x80))
    n = 1 << (b - 0xd0);
  else
    return false;
  *v = be_read(p + *pos, n);
  *pos += (size_t)n;
  return true;
}

/*
 * Appends a readable rendering of the complete object at p[0..len) to
 * out (NUL-terminated, truncated at size); for the first error reply only.
 */
static void mp_render(const unsigned char *p, size_t len, char *out,
                      size_t size, int depth)
{
  size_t used = strlen(out), pos = 0;
  uint64_t u, n = 0;
  bool is_map = false;

  if (len == 0 || used + 1 >= size)
    return;
  unsigned char b = p[0];
  if (b == 0xc0) {
    snprintf(out + used, size - used, "nil");
  } else if (b == 0xc2 || b == 0xc3) {
    snprintf(out + used, size - used, "%s", b == 0xc3 ? "true" : "false");
  } else if (b >= 0xe0) {
    snprintf(out + used, size - used, "%d", (int)(int8_t)b);
  } else if (mp_read_uint(p, &pos, &u)) {
    snprintf(out + used, size - used, "%" PRIu64, u);
  } else if ((b & 0xe0) == 0xa0 || (b >= 0xd9 && b <= 0xdb)) {
    size_t hdr = (b & 0xe0) == 0xa0 ? 1 : 1 + (1u << (b - 0xd9));
    size_t slen = (b & 0xe0) == 0xa0 ? (size_t)(b & 0x1f)
                                     : (size_t)be_read(p + 1, (int)hdr - 1);
    snprintf(out + used, size - used, "\"%.*s\"", (int)slen,
             (const char *)p + hdr);
  } else if ((b & 0xf0) == 0x90 || (b & 0xf0) == 0x80 || b == 0xdc ||
             b == 0xdd || b == 0xde || b == 0xdf) {
    is_map = (b & 0xf0) == 0x80 || b == 0xde || b == 0xdf;
    if (b < 0xa0) {
      n = b & 0x0f;
      pos = 1;
    } else {
      int hdr = (b == 0xdc || b == 0xde) ? 2 : 4;
      n = be_read(p + 1, hdr);
      pos = 1 + (size_t)hdr;
    }
    if (depth > 4) {
      snprintf(out + used, size - used, "%s", is_map ? "{...}" : "[...]");
      return;
    }
    snprintf(out + used, size - used, "%s", is_map ? "{" : "[");
    for (uint64_t i = 0; i < (is_map ? 2 * n : n); i++) {
      long k = mp_skip(p + pos, len - pos);
      if (k <= 0)
        return;
      if (i > 0) {
        used = strlen(out);
        snprintf(out + used, size - used, "%s",
                 is_map && (i % 2) ? ": " : ", ");
      }
      mp_render(p + pos, (size_t)k, out, size, depth + 1);
      pos += (size_t)k;
    }
    used = strlen(out);
    snprintf(out + used, size - used, "%s", is_map ? "}" : "]");
  } else {
    snprintf(out + used, size - used, "<0x%02x>", b);
  }
}

/*
 * Parses one reply `[1, msgid, error, result]` at p[0..len): its length,
 * 0 while incomplete, -1 on a protocol error (why filled). *failed is set
 * when error is not nil.
 */
static long msgpack_reply(const struct conn *c, const unsigned char *p,
                          size_t len, bool *failed, char *why, size_t why_size)
{
  long n = mp_skip(p, len);
  size_t pos = 1;
  uint64_t type, msgid;

  if (n < 0) {
    snprintf(why, why_size, "reply is not MessagePack");
    return -1;
  }
  if (n == 0)
    return 0;
  if (p[0] != 0x94) {
    snprintf(why, why_size,
             "reply is not a 4-element array (first byte 0x%02x)", p[0]);
    return -1;
  }
  if (!mp_read_uint(p, &pos, &type) || type != 1) {
    snprintf(why, why_size, "reply element 0 is not 1 (a response)");
    return -1;
  }
  if (!mp_read_uint(p, &pos, &msgid)) {
    snprintf(why, why_size, "reply msgid is not an unsigned integer");
    return -1;
  }
  if (msgid != c->oldest_msgid) {
    snprintf(why, why_size,
             "reply msgid %" PRIu64 ", expected %" PRIu32
             " (replies must come in request order)",
             msgid, c->oldest_msgid);
    return -1;
  }
  *failed = p[pos] != 0xc0;
  if (*failed && first_error[0] == '\0') {
    long k = mp_skip(p + pos, (size_t)n - pos);
    if (k > 0)
      mp_render(p + pos, (size_t)k, first_error, sizeof(first_error), 0);
  }
  return n;
}

/* ---- RESP ------------------------------------------------------------- */

/*
 * Parses one reply to GET (bulk, simple, integer or error) at p[0..len):
 * its length, 0 while incomplete, -1 on a protocol error (why filled).
 * *failed is set for an error or a nil bulk reply.
 */
static long resp_reply(const char *p, size_t len, bool *failed, char *why,
                       size_t why_size)
{
  const char *nl = memchr(p, '\n', len);
  if (nl == NULL)
    return 0;
  size_t line = (size_t)(nl - p) + 1;
  if (line < 3 || nl[-1] != '\r') {
    snprintf(why, why_size, "reply line does not end in CRLF");
    return -1;
  }
  *failed = false;
  switch (p[0]) {
  case '+':
  case ':':
    return (long)line;
  case '-':
    *failed = true;
    if (first_error[0] == '\0')
      snprintf(first_error, sizeof(first_error), "%.*s", (int)line - 2, p);
    return (long)line;
  case '$': {
    char *end;
    long blen = strtol(p + 1, &end, 10);
    if (end != nl - 1 || blen < -1) {
      snprintf(why, why_size, "bad bulk length in reply");
      return -1;
    }
    if (blen == -1) {
      *failed = true;
      if (first_error[0] == '\0')
        snprintf(first_error, sizeof(first_error), "nil (no key '%s')", key);
      return (long)line;
    }
    if ((size_t)blen > RECV_BUF || line + 2 + (size_t)blen > RECV_BUF) {
      snprintf(why, why_size, "bulk reply of %ld bytes exceeds %d bytes", blen,
               RECV_BUF);
      return -1;
    }
    if (len - line < (size_t)blen + 2)
      return 0;
    if (p[line + (size_t)blen] != '\r' || p[line + (size_t)blen + 1] != '\n') {
      snprintf(why, why_size, "bulk reply does not end in CRLF");
      return -1;
    }
    return (long)(line + (size_t)blen + 2);
  }
  default:
    snprintf(why, why_size, "unexpected reply type '%c'", p[0]);
    return -1;
  }
}

/* ---- connections ------------------------------------------------------ */

static void draw_addresses(void)
{
  struct rng r = {seed};
  for (size_t i = 0; i < ADDR_COUNT; i++) {
    uint32_t a = (uint32_t)rng_next(&r);
    char text[16];
    int n = snprintf(text, sizeof(text), "%u.%u.%u.%u", a >> 24,
                     (a >> 16) & 0xff, (a >> 8) & 0xff, a & 0xff);
    addrs[i].len = (uint8_t)n;
    memcpy(addrs[i].text, text, (size_t)n);
  }
}

/* [0, 0, "route", [{"ip": addr}]] with msgid as uint32: 19..34 bytes. */
static size_t encode_route(char *p, uint32_t msgid, const struct addr_text *a)
{
  static const char route_ip[] = "\xa5route\x91\x81\xa2ip";
  p[0] = (char)0x94;
  p[1] = 0x00;
  p[2] = (char)0xce;
  p[3] = (char)(msgid >> 24);
  p[4] = (char)(msgid >> 16);
  p[5] = (char)(msgid >> 8);
  p[6] = (char)msgid;
  memcpy(p + 7, route_ip, sizeof(route_ip) - 1);
  p[18] = (char)(0xa0 | a->len);
  memcpy(p + 19, a->text, a->len);
  return 19 + (size_t)a->len;
}

/* Appends the next request to c's send buffer; flush() sends it. */
static void enqueue(struct conn *c)
{
  if (c->out_len + REQ_MAX > (size_t)pipeline * REQ_MAX) {
    memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
    c->out_len -= c->out_off;
    c->out_off = 0;
  }
  char *p = c->out + c->out_len;
  if (mode == MODE_MSGPACK) {
    c->out_len += encode_route(p, c->next_msgid, &addrs[issued % ADDR_COUNT]);
  } else {
    memcpy(p, resp_req, resp_req_len);
    c->out_len += resp_req_len;
  }
  c->next_msgid++;
  c->inflight++;
  c->unstamped++;
  issued++;
}

static int set_events(struct conn *c, bool want_out)
{
  struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0),
                           .data.ptr = c};
  if (want_out == c->want_out)
    return 0;
  if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0) {
    fprintf(stderr, "loadgen: epoll_ctl: %s\n", strerror(errno));
    return -1;
  }
  c->want_out = want_out;
  return 0;
}

/*
 * Stamps the requests enqueued since the last flush with the time of this
 * write and sends what the socket takes; EPOLLOUT covers the rest.
 */
static int flush(struct conn *c)
{
  if (c->unstamped > 0) {
    uint64_t t = now_ns();
    for (uint32_t k = c->inflight - c->unstamped; k < c->inflight; k++)
      c->sent_ns[(c->head + k) % pipeline] = t;
    c->unstamped = 0;
  }
  while (c->out_off < c->out_len) {
    ssize_t n =
        send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      break;
    if (n < 0) {
      fprintf(stderr, "loadgen: send to %s: %s\n", peer, strerror(errno));
      return -1;
    }
    c->out_off += (size_t)n;
  }
  if (c->out_off == c->out_len)
    c->out_off = c->out_len = 0;
  return set_events(c, c->out_off < c->out_len);
}

/* One reply received at t: latency, warmup boundary, error count. */
static void complete(struct conn *c, uint64_t t, bool failed)
{
  uint64_t sent = c->sent_ns[c->head];
  c->head = (c->head + 1) % pipeline;
  c->inflight--;
  c->oldest_msgid++;
  replied++;
  if (failed)
    errors++;
  if (replied > warmup)
    hist_record(t - sent);
  else if (replied == warmup)
    measure_start_ns = t;
  last_reply_ns = t;
}

/* Reads what is there, settles every complete reply, refills the pipe. */
static int on_readable(struct conn *c)
{
  ssize_t n = recv(c->fd, c->in + c->in_len, RECV_BUF - c->in_len, 0);
  uint64_t t = now_ns();
  uint32_t done = 0;
  size_t off = 0;
  char why[160];

  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
      return 0;
    fprintf(stderr, "loadgen: receive from %s: %s\n", peer, strerror(errno));
    return -1;
  }
  if (n == 0) {
    fprintf(stderr,
            "loadgen: %s closed the connection with %" PRIu32
            " requests outstanding\n",
            peer, c->inflight);
    return -1;
  }
  c->in_len += (size_t)n;
  while (off < c->in_len) {
    bool failed = false;
    long k;
    if (c->inflight == 0) {
      fprintf(stderr, "loadgen: %s sent a reply nobody asked for\n", peer);
      return -1;
    }
    if (mode == MODE_MSGPACK)
      k = msgpack_reply(c, (const unsigned char *)c->in + off, c->in_len - off,
                        &failed, why, sizeof(why));
    else
      k = resp_reply(c->in + off, c->in_len - off, &failed, why, sizeof(why));
    if (k < 0) {
      fprintf(stderr, "loadgen: %s: protocol error: %s\n", peer, why);
      return -1;
    }
    if (k == 0)
      break;
    complete(c, t, failed);
    off += (size_t)k;
    done++;
  }
  memmove(c->in, c->in + off, c->in_len - off);
  c->in_len -= off;
  if (c->in_len == RECV_BUF) {
    fprintf(stderr, "loadgen: %s: a reply exceeds %d bytes\n", peer, RECV_BUF);
    return -1;
  }
  for (uint32_t i = 0; i < done && issued < total; i++)
    enqueue(c);
  return flush(c);
}

/* Starts a non-blocking connect to ai for every connection. */
static int open_connections(const struct addrinfo *ai)
{
  for (uint32_t i = 0; i < nconns; i++) {
    struct conn *c = &conns[i];
    int one = 1;
    c->fd =
        socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
               ai->ai_protocol);
    if (c->fd < 0) {
      fprintf(stderr, "loadgen: socket: %s\n", strerror(errno));
      return -1;
    }
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) != 0 &&
        errno != EINPROGRESS) {
      fprintf(stderr, "loadgen: cannot connect to %s: %s\n", peer,
              strerror(errno));
      return -1;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    c->want_out = true;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
      fprintf(stderr, "loadgen: epoll_ctl: %s\n", strerror(errno));
      return -1;
    }
  }
  return 0;
}

/* Waits until t_end for epoll events; -1 and a message on timeout. */
static int wait_events(struct epoll_event *evs, uint64_t t_end)
{
  for (;;) {
    uint64_t t = now_ns();
    if (t >= t_end) {
      fprintf(stderr,
              "loadgen: timed out after %g s with %" PRIu64 " of %" PRIu64
              " replies\n",
              timeout_s, replied, total);
      return -1;
    }
    int ms = (int)((t_end - t + 999999) / 1000000);
    int n = epoll_wait(epfd, evs, MAX_EVENTS, ms);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      fprintf(stderr, "loadgen: epoll_wait: %s\n", strerror(errno));
    if (n != 0)
      return n;
  }
}

static int run(const struct addrinfo *ai, uint64_t t_end)
{
  struct epoll_event evs[MAX_EVENTS];
  uint32_t connected = 0;

  if (open_connections(ai) != 0)
    return -1;
  /* All connections first, so that the load starts on all at once. */
  while (connected < nconns) {
    int n = wait_events(evs, t_end);
    if (n < 0)
      return -1;
    for (int i = 0; i < n; i++) {
      struct conn *c = evs[i].data.ptr;
      int err = 0;
      socklen_t len = sizeof(err);
      if (c->connected)
        continue;
      if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
      if (err != 0) {
        fprintf(stderr, "loadgen: cannot connect to %s: %s\n", peer,
                strerror(err));
        return -1;
      }
      c->connected = true;
      if (set_events(c, false) != 0)
        return -1;
      connected++;
    }
  }

  measure_start_ns = now_ns();
  for (uint32_t i = 0; i < nconns; i++) {
    for (uint32_t k = 0; k < pipeline && issued < total; k++)
      enqueue(&conns[i]);
    if (flush(&conns[i]) != 0)
      return -1;
  }
  while (replied < total) {
    int n = wait_events(evs, t_end);
    if (n < 0)
      return -1;
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

/* ---- options and main ------------------------------------------------- */

static void usage(void)
{
  fprintf(stderr,
          "usage: loadgen [--host HOST] [--port PORT] [--mode msgpack|resp]\n"
          "               [-c CONNECTIONS] [-p PIPELINE] [-n REQUESTS]\n"
          "               [--seed S] [--warmup N] [--key KEY] [--timeout S]\n"
          "\n"
          "  --host, --port  server (default 127.0.0.1 7400)\n"
          "  --mode          msgpack: `route` with an \"ip\" per request;\n"
          "                  resp: Redis `GET KEY` (default msgpack)\n"
          "  -c              connections, 1..%d (default 1)\n"
          "  -p              requests in flight per connection, 1..%d "
          "(default 1)\n"
          "  -n              replies in all (default 100000)\n"
          "  --warmup        first replies left out of the figures "
          "(default n/10)\n"
          "  --seed          seed of the client addresses (default 20261129)\n"
          "  --key           key for resp mode, 1..%d bytes (default k)\n"
          "  --timeout       seconds before giving up (default 60)\n",
          MAX_CONNECTIONS, MAX_PIPELINE, MAX_KEY);
}

/* Parses a decimal in [lo, hi] into *v; false (and *v untouched) if not. */
static bool parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *v)
{
  char *end;
  if (*s < '0' || *s > '9')
    return false;
  errno = 0;
  unsigned long long x = strtoull(s, &end, 10);
  if (errno != 0 || *end != '\0' || x < lo || x > hi)
    return false;
  *v = x;
  return true;
}

static bool parse_options(int argc, char **argv)
{
  for (int i = 1; i < argc; i++) {
    const char *opt = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
    static const char *const known[] = {
        "--host", "--port", "--mode",   "-c",    "-p",
        "-n",     "--seed", "--warmup", "--key", "--timeout"};
    bool is_known = false;
    uint64_t v;
    for (size_t k = 0; k < sizeof(known) / sizeof(known[0]); k++)
      is_known = is_known || !strcmp(opt, known[k]);
    if (!is_known) {
      if (strcmp(opt, "-h") && strcmp(opt, "--help"))
        fprintf(stderr, "loadgen: unknown option %s\n", opt);
      return false;
    }
    if (val == NULL) {
      fprintf(stderr, "loadgen: %s needs a value\n", opt);
      return false;
    }
    i++;
    if (!strcmp(opt, "--host")) {
      host = val;
    } else if (!strcmp(opt, "--port") && parse_u64(val, 1, 65535, &v)) {
      port = val;
    } else if (!strcmp(opt, "--mode") &&
               (!strcmp(val, "msgpack") || !strcmp(val, "resp"))) {
      mode = strcmp(val, "resp") ? MODE_MSGPACK : MODE_RESP;
    } else if (!strcmp(opt, "-c") && parse_u64(val, 1, MAX_CONNECTIONS, &v)) {
      nconns = (uint32_t)v;
    } else if (!strcmp(opt, "-p") && parse_u64(val, 1, MAX_PIPELINE, &v)) {
      pipeline = (uint32_t)v;
    } else if (!strcmp(opt, "-n") && parse_u64(val, 1, UINT64_MAX / 2, &v)) {
      total = v;
    } else if (!strcmp(opt, "--warmup") &&
               parse_u64(val, 0, UINT64_MAX / 2, &v)) {
      warmup = v;
    } else if (!strcmp(opt, "--seed") && parse_u64(val, 0, UINT64_MAX, &v)) {
      seed = v;
    } else if (!strcmp(opt, "--key") && val[0] != '\0' &&
               strlen(val) <= MAX_KEY) {
      key = val;
    } else if (!strcmp(opt, "--timeout") && parse_u64(val, 1, 86400, &v)) {
      timeout_s = (double)v;
    } else {
      fprintf(stderr, "loadgen: bad value for %s: %s\n", opt, val);
      return false;
    }
  }
  if (warmup == UINT64_MAX)
    warmup = total / 10;
  if (warmup >= total) {
    fprintf(stderr,
            "loadgen: --warmup %" PRIu64 " leaves nothing of -n %" PRIu64
            " to measure\n",
            warmup, total);
    return false;
  }
  return true;
}

/* Allocates every buffer of the run up front. */
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

static void report(void)
{
  uint64_t measured = total - warmup;
  double secs = (double)(last_reply_ns - measure_start_ns) / 1e9;
  printf("rps: %.0f req/s\n", secs > 0 ? (double)measured / secs : 0.0);
  printf("p50_us: %.1f us\n", (double)hist_quantile(0.50, measured) / 1e3);
  printf("p90_us: %.1f us\n", (double)hist_quantile(0.90, measured) / 1e3);
  printf("p99_us: %.1f us\n", (double)hist_quantile(0.99, measured) / 1e3);
  printf("p999_us: %.1f us\n", (double)hist_quantile(0.999, measured) / 1e3);
  printf("max_us: %.1f us\n", (double)lat_max_ns / 1e3);
  printf("errors: %" PRIu64 " replies\n", errors);
  printf("requests: %" PRIu64 " requests\n", replied);
  printf("warmup: %" PRIu64 " requests\n", warmup);
}

int main(int argc, char **argv)
{
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_NUMERICSERV};
  struct addrinfo *ai = NULL;
  int status = 1;

  if (!parse_options(argc, argv)) {
    usage();
    return 2;
  }
  if (strchr(host, ':') != NULL)
    snprintf(peer, sizeof(peer), "[%s]:%s", host, port);
  else
    snprintf(peer, sizeof(peer), "%s:%s", host, port);
  resp_req_len =
      (size_t)snprintf(resp_req, sizeof(resp_req),
                       "*2\r\n$3\r\nGET\r\n$%zu\r\n%s\r\n", strlen(key), key);
  int gai = getaddrinfo(host, port, &hints, &ai);
  if (gai != 0) {
    fprintf(stderr, "loadgen: cannot connect to %s: %s\n", peer,
            gai_strerror(gai));
    return 1;
  }
  epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0 || !allocate()) {
    fprintf(stderr, "loadgen: out of memory or descriptors\n");
    goto out_release;
  }
  draw_addresses();
  if (run(ai, now_ns() + (uint64_t)(timeout_s * 1e9)) != 0)
    goto out_release;
  report();
  if (errors > 0) {
    fprintf(stderr, "loadgen: %" PRIu64 " error replies; the first: %s\n",
            errors, first_error);
    goto out_release;
  }
  status = 0;

out_release:
  release();
  freeaddrinfo(ai);
  return status;
}
