/*
 * loadgen_core: the closed-loop load generator that loadgen and
 * bench-optout's `route` share; each program brings its requests (an
 * encoder) and its reading of a reply (a parser), the core does the rest.
 *
 * One thread and one epoll set drive C connections. Each connection keeps
 * P requests in flight: it sends P at start and one more for every reply,
 * until N replies have come back across all connections. Replies come in
 * request order on a connection, so a reply belongs to the oldest request
 * outstanding there; its latency, send to reply on CLOCK_MONOTONIC, goes
 * into a log-linear histogram (128 linear sub-buckets per power of two, so
 * a reported value is at most 0.8 % above the true one, up to 10 s). The
 * first W replies (warmup) are checked but left out of the figures.
 *
 * Invariants: every buffer is allocated before the first request, so the
 * loop never allocates; a connection has at most P requests outstanding,
 * so its send buffer of P requests of LOADGEN_REQ_MAX bytes cannot
 * overflow; a reply is parsed only once it is complete in the receive
 * buffer, which bounds a reply to LOADGEN_RECV_BUF bytes.
 */
#ifndef GS_LOADGEN_CORE_H
#define GS_LOADGEN_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LOADGEN_MAX_CONNECTIONS 4096 /* C */
#define LOADGEN_MAX_PIPELINE 1024    /* P */
#define LOADGEN_REQ_MAX 288 /* bytes: the largest request an encoder writes */
#define LOADGEN_RECV_BUF 16384 /* per connection; also the largest reply */
#define LOADGEN_TEXT_MAX 200   /* rendering of an error reply, bytes */

/* One of the 65,536 pre-drawn client addresses that requests cycle through. */
struct loadgen_addr {
  uint8_t len;
  char text[15]; /* "255.255.255.255" without NUL */
};

/*
 * Writes the request with this msgid for the client address addr at p, at
 * most LOADGEN_REQ_MAX bytes; returns its length.
 */
typedef size_t loadgen_encode_fn(char *p, uint32_t msgid,
                                 const struct loadgen_addr *addr);

/*
 * Reads the reply at p[0..len) that must carry msgid: returns its length,
 * 0 while it is incomplete, or -1 on a protocol error, which ends the run
 * (why holds the reason). On success *failed says whether the server
 * answered with an error, and if so why holds a rendering of it. why has
 * room for LOADGEN_TEXT_MAX bytes and a NUL.
 */
typedef long loadgen_parse_fn(const char *p, size_t len, uint32_t msgid,
                              bool *failed, char *why, size_t why_size);

/* The settings both programs default alike, for an initializer. */
#define LOADGEN_DEFAULTS                                                       \
  .host = "127.0.0.1", .warmup = UINT64_MAX, .seed = 20261129, .timeout_s = 60

struct loadgen_settings {
  const char *prog; /* names the program in messages */
  const char *host, *port;
  uint32_t conns, pipeline; /* C, and P in flight on each */
  uint64_t total;           /* N, replies in all */
  uint64_t warmup;          /* first replies left out; UINT64_MAX: total / 10 */
  uint64_t seed;            /* of the client addresses */
  double timeout_s;
  loadgen_encode_fn *encode;
  loadgen_parse_fn *parse;
};

struct loadgen_result {
  uint64_t replies; /* warmup included */
  uint64_t errors;  /* replies the parser marked failed */
  double rps;       /* measured replies over their time */
  double p50_us, p90_us, p99_us, p999_us, max_us; /* measured latency */
  /* The load generator's own CPU time over the measured part, as a share
   * of one CPU: near 1, the client rather than the server sets the pace. */
  double client_cpu;
  char first_error[LOADGEN_TEXT_MAX + 1]; /* "" when errors is 0 */
};

/*
 * Reads argv[0..argc) as pairs of option and value into s: the options
 * both programs take (--port, -c, -p, -n, --warmup, --seed, --timeout),
 * and any other through own, which applies it and returns true, or returns
 * false when it does not know it or its value. Then fills in the default
 * warmup. False, with a message unless the option was -h or --help, on a
 * bad option or value or when warmup leaves nothing to measure.
 */
bool loadgen_options(struct loadgen_settings *s, int argc, char **argv,
                     bool (*own)(const char *opt, const char *val));

/*
 * Runs the load s describes and fills *r. Returns 0 when all N replies
 * came back (error replies included, counted in r->errors); -1, with a
 * message on standard error and *r untouched, on a refused or closed
 * connection, a protocol error or the timeout. s must outlive the call;
 * the run frees all it allocates before it returns.
 */
int loadgen_run(const struct loadgen_settings *s, struct loadgen_result *r);

/* Parses a decimal in [lo, hi] into *v; false (and *v untouched) if not. */
bool loadgen_parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *v);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t loadgen_now_ns(void);

#endif
