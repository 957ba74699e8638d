/*
 * loadgen: a closed-loop load generator for the route listener
 * (MessagePack-RPC `route`) and, as the yardstick, for Redis (`GET`).
 *
 * The load itself is loadgen_core's (loadgen_core.h: C connections with P
 * requests in flight each, N replies, latency histogram, warmup); this file
 * brings the two kinds of request and the reading of Redis replies. Every
 * route request carries an "ip" from the core's pre-drawn addresses; every
 * Redis request is the same `GET KEY`.
 *
 * Output: `name: value unit` lines. Exit status 0 when every reply was a
 * success; 1 on error replies, a protocol error, a refused or closed
 * connection, or the timeout; 2 on bad usage.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loadgen_core.h"
#include "loadgen_resp.h"
#include "loadgen_rpc.h"

#define MAX_KEY (LOADGEN_REQ_MAX - 32) /* --key, bytes; GET adds 21 at most */

static struct loadgen_settings settings = {
    .prog = "loadgen",
    .port = "7400",
    .conns = 1,
    .pipeline = 1,
    .total = 100000,
    LOADGEN_DEFAULTS,
};
static bool resp; /* --mode resp */
static const char *key = "k";
static char resp_req[LOADGEN_REQ_MAX];
static size_t resp_req_len;

/* [0, msgid, "route", [{"ip": addr}]]: 19..34 bytes. */
static size_t encode_route(char *p, uint32_t msgid,
                           const struct loadgen_addr *addr)
{
  return loadgen_rpc_route(p, msgid, NULL, 0, addr);
}

/* GET KEY, the same for every request. */
static size_t encode_get(char *p, uint32_t msgid,
                         const struct loadgen_addr *addr)
{
  (void)msgid;
  (void)addr;
  memcpy(p, resp_req, resp_req_len);
  return resp_req_len;
}

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
          LOADGEN_MAX_CONNECTIONS, LOADGEN_MAX_PIPELINE, MAX_KEY);
}

/* loadgen's own options, next to the shared ones. */
static bool own_option(const char *opt, const char *val)
{
  if (!strcmp(opt, "--host"))
    settings.host = val;
  else if (!strcmp(opt, "--mode") &&
           (!strcmp(val, "msgpack") || !strcmp(val, "resp")))
    resp = !strcmp(val, "resp");
  else if (!strcmp(opt, "--key") && val[0] != '\0' && strlen(val) <= MAX_KEY)
    key = val;
  else
    return false;
  return true;
}

int main(int argc, char **argv)
{
  struct loadgen_result r;

  if (!loadgen_options(&settings, argc - 1, argv + 1, own_option)) {
    usage();
    return 2;
  }
  resp_req_len =
      (size_t)snprintf(resp_req, sizeof(resp_req),
                       "*2\r\n$3\r\nGET\r\n$%zu\r\n%s\r\n", strlen(key), key);
  settings.encode = resp ? encode_get : encode_route;
  settings.parse = resp ? loadgen_resp_reply : loadgen_rpc_reply;
  if (loadgen_run(&settings, &r) != 0)
    return 1;
  printf("rps: %.0f req/s\n", r.rps);
  printf("p50_us: %.1f us\n", r.p50_us);
  printf("p90_us: %.1f us\n", r.p90_us);
  printf("p99_us: %.1f us\n", r.p99_us);
  printf("p999_us: %.1f us\n", r.p999_us);
  printf("max_us: %.1f us\n", r.max_us);
  printf("client_cpu: %.1f %%\n", 100 * r.client_cpu);
  printf("errors: %" PRIu64 " replies\n", r.errors);
  printf("requests: %" PRIu64 " requests\n", r.replies);
  printf("warmup: %" PRIu64 " requests\n", settings.warmup);
  if (r.errors > 0) {
    fprintf(stderr, "loadgen: %" PRIu64 " error replies; the first: %s\n",
            r.errors, r.first_error);
    return 1;
  }
  return 0;
}
