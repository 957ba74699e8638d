/*
 * loadgen_core: the closed-loop load generator behind loadgen and
 * bench-optout's `route`; loadgen_core.h describes the design.
 *
 * The run's state lives in this file's statics, set up afresh by each
 * loadgen_run; the programs run one load per process.
 */
#include "loadgen_core.h"

#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "rng.h"

#define ADDR_COUNT 65536 /* pre-drawn client addresses, cycled */
#define MAX_EVENTS 256   /* epoll_wait batch */

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

struct conn {
  int fd;
  bool connected;
  bool want_out;         /* EPOLLOUT is registered */
  uint32_t next_msgid;   /* msgid of the next request */
  uint32_t oldest_msgid; /* msgid the next reply must carry */
  uint64_t *sent_ns;     /* ring of P send times, oldest at head */
  uint32_t head, inflight;
  uint32_t unstamped; /* newest ring entries not yet given a send time */
  char *out;          /* encoded requests; [out_off, out_len) unsent */
  size_t out_off, out_len;
  char *in; /* received bytes, [0, in_len) not yet parsed */
  size_t in_len;
};

/* The run: its settings, then its state. */
static const struct loadgen_settings *settings;
static char peer[300]; /* "host:port" for messages */
static struct loadgen_addr *addrs;
static struct conn *conns;
static int epfd = -1;
static uint64_t issued, replied, errors;
static uint64_t measure_start_ns, last_reply_ns;
static uint64_t measure_start_cpu_ns; /* this process's CPU time then */
static uint64_t hist[HIST_BUCKETS];
static uint64_t lat_max_ns;
static char first_error[LOADGEN_TEXT_MAX + 1];

uint64_t loadgen_now_ns(void)
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

/* The value at quantile q (0..1] of count recorded values, in us. */
static double hist_quantile_us(double q, uint64_t count)
{
  uint64_t rank = (uint64_t)(q * (double)count + 0.999999);
  uint64_t seen = 0, ns = lat_max_ns;
  if (rank == 0)
    rank = 1;
  for (size_t i = 0; i < HIST_BUCKETS; i++) {
    seen += hist[i];
    if (seen >= rank) {
      uint64_t high = hist_bucket_high(i);
      ns = high < lat_max_ns ? high : lat_max_ns;
      break;
    }
  }
  return (double)ns / 1e3;
}

/* ---- connections ------------------------------------------------------ */

static void draw_addresses(void)
{
  struct rng r = {settings->seed};
  for (size_t i = 0; i < ADDR_COUNT; i++) {
    uint32_t a = (uint32_t)rng_next(&r);
    char text[16];
    int n = snprintf(text, sizeof(text), "%u.%u.%u.%u", a >> 24,
                     (a >> 16) & 0xff, (a >> 8) & 0xff, a & 0xff);
    addrs[i].len = (uint8_t)n;
    memcpy(addrs[i].text, text, (size_t)n);
  }
}

/* Appends the next request to c's send buffer; flush() sends it. */
static void enqueue(struct conn *c)
{
  if (c->out_len + LOADGEN_REQ_MAX >
      (size_t)settings->pipeline * LOADGEN_REQ_MAX) {
    memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
    c->out_len -= c->out_off;
    c->out_off = 0;
  }
  c->out_len += settings->encode(c->out + c->out_len, c->next_msgid,
                                 &addrs[issued % ADDR_COUNT]);
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
    fprintf(stderr, "%s: epoll_ctl: %s\n", settings->prog, strerror(errno));
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
    uint64_t t = loadgen_now_ns();
    uint32_t k = c->head + c->inflight - c->unstamped;
    for (uint32_t i = 0; i < c->unstamped; i++, k++) {
      if (k >= settings->pipeline)
        k -= settings->pipeline;
      c->sent_ns[k] = t;
    }
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
      fprintf(stderr, "%s: send to %s: %s\n", settings->prog, peer,
              strerror(errno));
      return -1;
    }
    c->out_off += (size_t)n;
  }
  if (c->out_off == c->out_len)
    c->out_off = c->out_len = 0;
  return set_events(c, c->out_off < c->out_len);
}

/* CPU time of this process, user and system, in nanoseconds. */
static uint64_t process_cpu_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The measured part of the run starts at t. */
static void start_measuring(uint64_t t)
{
  measure_start_ns = t;
  measure_start_cpu_ns = process_cpu_ns();
}

/* One reply received at t: latency, warmup boundary, error count. */
static void complete(struct conn *c, uint64_t t, bool failed, const char *why)
{
  uint64_t sent = c->sent_ns[c->head];
  if (++c->head == settings->pipeline)
    c->head = 0;
  c->inflight--;
  c->oldest_msgid++;
  replied++;
  if (failed && errors++ == 0)
    snprintf(first_error, sizeof(first_error), "%s", why);
  if (replied > settings->warmup)
    hist_record(t - sent);
  else if (replied == settings->warmup)
    start_measuring(t);
  last_reply_ns = t;
}

/* Reads what is there, settles every complete reply, refills the pipe. */
static int on_readable(struct conn *c)
{
  ssize_t n = recv(c->fd, c->in + c->in_len, LOADGEN_RECV_BUF - c->in_len, 0);
  uint64_t t = loadgen_now_ns();
  uint32_t done = 0;
  size_t off = 0;
  char why[LOADGEN_TEXT_MAX + 1];

  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
      return 0;
    fprintf(stderr, "%s: receive from %s: %s\n", settings->prog, peer,
            strerror(errno));
    return -1;
  }
  if (n == 0) {
    fprintf(stderr,
            "%s: %s closed the connection with %" PRIu32
            " requests outstanding\n",
            settings->prog, peer, c->inflight);
    return -1;
  }
  c->in_len += (size_t)n;
  while (off < c->in_len) {
    bool failed = false;
    if (c->inflight == 0) {
      fprintf(stderr, "%s: %s sent a reply nobody asked for\n", settings->prog,
              peer);
      return -1;
    }
    long k = settings->parse(c->in + off, c->in_len - off, c->oldest_msgid,
                             &failed, why, sizeof(why));
    if (k < 0) {
      fprintf(stderr, "%s: %s: protocol error: %s\n", settings->prog, peer,
              why);
      return -1;
    }
    if (k == 0)
      break;
    complete(c, t, failed, why);
    off += (size_t)k;
    done++;
  }
  memmove(c->in, c->in + off, c->in_len - off);
  c->in_len -= off;
  if (c->in_len == LOADGEN_RECV_BUF) {
    fprintf(stderr, "%s: %s: a reply exceeds %d bytes\n", settings->prog, peer,
            LOADGEN_RECV_BUF);
    return -1;
  }
  for (uint32_t i = 0; i < done && issued < settings->total; i++)
    enqueue(c);
  return flush(c);
}

/* Starts a non-blocking connect to ai for every connection. */
static int open_connections(const struct addrinfo *ai)
{
  for (uint32_t i = 0; i < settings->conns; i++) {
    struct conn *c = &conns[i];
    int one = 1;
    c->fd =
        socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
               ai->ai_protocol);
    if (c->fd < 0) {
      fprintf(stderr, "%s: socket: %s\n", settings->prog, strerror(errno));
      return -1;
    }
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) != 0 &&
        errno != EINPROGRESS) {
      fprintf(stderr, "%s: cannot connect to %s: %s\n", settings->prog, peer,
              strerror(errno));
      return -1;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    c->want_out = true;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
      fprintf(stderr, "%s: epoll_ctl: %s\n", settings->prog, strerror(errno));
      return -1;
    }
  }
  return 0;
}

/* Waits until t_end for epoll events; -1 and a message on timeout. */
static int wait_events(struct epoll_event *evs, uint64_t t_end)
{
  for (;;) {
    uint64_t t = loadgen_now_ns();
    if (t >= t_end) {
      fprintf(stderr,
              "%s: timed out after %g s with %" PRIu64 " of %" PRIu64
              " replies\n",
              settings->prog, settings->timeout_s, replied, settings->total);
      return -1;
    }
    int ms = (int)((t_end - t + 999999) / 1000000);
    int n = epoll_wait(epfd, evs, MAX_EVENTS, ms);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      fprintf(stderr, "%s: epoll_wait: %s\n", settings->prog, strerror(errno));
    if (n != 0)
      return n;
  }
}

/* c's non-blocking connect has ended: -1 and a message if it failed. */
static int on_connected(struct conn *c)
{
  int err = 0;
  socklen_t len = sizeof(err);

  if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
    err = errno;
  if (err != 0) {
    fprintf(stderr, "%s: cannot connect to %s: %s\n", settings->prog, peer,
            strerror(err));
    return -1;
  }
  c->connected = true;
  return set_events(c, false);
}

/* Sends the first P requests on every connection; the clock starts. */
static int start_load(void)
{
  if (settings->warmup == 0)
    start_measuring(loadgen_now_ns());
  for (uint32_t i = 0; i < settings->conns; i++) {
    for (uint32_t k = 0; k < settings->pipeline && issued < settings->total;
         k++)
      enqueue(&conns[i]);
    if (flush(&conns[i]) != 0)
      return -1;
  }
  return 0;
}

static int drive(const struct addrinfo *ai, uint64_t t_end)
{
  struct epoll_event evs[MAX_EVENTS];
  uint32_t connected = 0;

  if (open_connections(ai) != 0)
    return -1;
  while (replied < settings->total) {
    int n = wait_events(evs, t_end);
    if (n < 0)
      return -1;
    for (int i = 0; i < n; i++) {
      struct conn *c = evs[i].data.ptr;
      uint32_t events = evs[i].events;
      if (!c->connected) {
        /* All connections first, so that the load starts on all at once. */
        if (on_connected(c) != 0 ||
            (++connected == settings->conns && start_load() != 0))
          return -1;
      } else if (((events & EPOLLOUT) && flush(c) != 0) ||
                 ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) &&
                  on_readable(c) != 0)) {
        return -1;
      }
    }
  }
  return 0;
}

/* Allocates every buffer of the run up front. */
static bool allocate(void)
{
  addrs = calloc(ADDR_COUNT, sizeof(*addrs));
  conns = calloc(settings->conns, sizeof(*conns));
  if (addrs == NULL || conns == NULL)
    return false;
  for (uint32_t i = 0; i < settings->conns; i++) {
    conns[i].fd = -1;
    conns[i].sent_ns = calloc(settings->pipeline, sizeof(*conns[i].sent_ns));
    conns[i].out = malloc((size_t)settings->pipeline * LOADGEN_REQ_MAX);
    conns[i].in = malloc(LOADGEN_RECV_BUF);
    if (!conns[i].sent_ns || !conns[i].out || !conns[i].in)
      return false;
  }
  return true;
}

static void release(void)
{
  for (uint32_t i = 0; conns != NULL && i < settings->conns; i++) {
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
  conns = NULL;
  addrs = NULL;
  epfd = -1;
}

int loadgen_run(const struct loadgen_settings *s, struct loadgen_result *r)
{
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_NUMERICSERV};
  struct addrinfo *ai = NULL;
  int status = -1;

  settings = s;
  issued = replied = errors = lat_max_ns = 0;
  memset(hist, 0, sizeof(hist));
  first_error[0] = '\0';
  if (strchr(s->host, ':') != NULL)
    snprintf(peer, sizeof(peer), "[%s]:%s", s->host, s->port);
  else
    snprintf(peer, sizeof(peer), "%s:%s", s->host, s->port);
  int gai = getaddrinfo(s->host, s->port, &hints, &ai);
  if (gai != 0) {
    fprintf(stderr, "%s: cannot connect to %s: %s\n", s->prog, peer,
            gai_strerror(gai));
    return -1;
  }
  epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0 || !allocate()) {
    fprintf(stderr, "%s: out of memory or descriptors\n", s->prog);
    goto out_release;
  }
  draw_addresses();
  if (drive(ai, loadgen_now_ns() + (uint64_t)(s->timeout_s * 1e9)) != 0)
    goto out_release;

  uint64_t cpu_ns = process_cpu_ns() - measure_start_cpu_ns;
  uint64_t wall_ns = loadgen_now_ns() - measure_start_ns;
  uint64_t measured = s->total - s->warmup;
  double secs = (double)(last_reply_ns - measure_start_ns) / 1e9;
  r->client_cpu = wall_ns > 0 ? (double)cpu_ns / (double)wall_ns : 0.0;
  r->replies = replied;
  r->errors = errors;
  r->rps = secs > 0 ? (double)measured / secs : 0.0;
  r->p50_us = hist_quantile_us(0.50, measured);
  r->p90_us = hist_quantile_us(0.90, measured);
  r->p99_us = hist_quantile_us(0.99, measured);
  r->p999_us = hist_quantile_us(0.999, measured);
  r->max_us = (double)lat_max_ns / 1e3;
  memcpy(r->first_error, first_error, sizeof(first_error));
  status = 0;

out_release:
  release();
  freeaddrinfo(ai);
  return status;
}

/* ---- options ---------------------------------------------------------- */

bool loadgen_parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *v)
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

/* Applies opt val to s when it is one of the shared options; else false. */
static bool shared_option(struct loadgen_settings *s, const char *opt,
                          const char *val)
{
  uint64_t v;

  if (!strcmp(opt, "--port") && loadgen_parse_u64(val, 1, 65535, &v))
    s->port = val;
  else if (!strcmp(opt, "-c") &&
           loadgen_parse_u64(val, 1, LOADGEN_MAX_CONNECTIONS, &v))
    s->conns = (uint32_t)v;
  else if (!strcmp(opt, "-p") &&
           loadgen_parse_u64(val, 1, LOADGEN_MAX_PIPELINE, &v))
    s->pipeline = (uint32_t)v;
  else if (!strcmp(opt, "-n") && loadgen_parse_u64(val, 1, UINT64_MAX / 2, &v))
    s->total = v;
  else if (!strcmp(opt, "--warmup") &&
           loadgen_parse_u64(val, 0, UINT64_MAX / 2, &v))
    s->warmup = v;
  else if (!strcmp(opt, "--seed") && loadgen_parse_u64(val, 0, UINT64_MAX, &v))
    s->seed = v;
  else if (!strcmp(opt, "--timeout") && loadgen_parse_u64(val, 1, 86400, &v))
    s->timeout_s = (double)v;
  else
    return false;
  return true;
}

bool loadgen_options(struct loadgen_settings *s, int argc, char **argv,
                     bool (*own)(const char *opt, const char *val))
{
  for (int i = 0; i < argc; i += 2) {
    const char *opt = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(opt, "-h") || !strcmp(opt, "--help"))
      return false;
    if (val == NULL) {
      fprintf(stderr, "%s: %s needs a value\n", s->prog, opt);
      return false;
    }
    if (!shared_option(s, opt, val) && !own(opt, val)) {
      fprintf(stderr, "%s: bad option or value: %s %s\n", s->prog, opt, val);
      return false;
    }
  }
  if (s->warmup == UINT64_MAX)
    s->warmup = s->total / 10;
  if (s->warmup >= s->total) {
    fprintf(stderr,
            "%s: --warmup %" PRIu64 " leaves nothing of -n %" PRIu64
            " to measure\n",
            s->prog, s->warmup, s->total);
    return false;
  }
  return true;
}
