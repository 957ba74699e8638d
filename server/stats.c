/*
 * stats: counters of every worker, summed on demand for the admin `stats`
 * method and for Prometheus text at GET /metrics.
 *
 * Workers write their own counters without locked instructions (one
 * writer per counter, relaxed atomics); readers on the control loop may
 * see a count one request behind, never a torn value. Per-DC answer counts
 * live in each snapshot (its DC indexes) and are folded into totals by DC
 * id when the snapshot is freed, so counters stay monotonic across map
 * reloads.
 *
 * The metrics listener is a deliberately small HTTP/1.0 responder: one
 * request per connection, GET /metrics only, requests over 8 KiB refused.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "log.h"
#include "optout.h"

const uint64_t latency_bounds_ns[LATENCY_BUCKETS] = {
    5000,    10000,   25000,   50000,    100000,   250000,   500000,
    1000000, 2500000, 5000000, 10000000, 25000000, 50000000, 100000000};

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

struct totals {
  uint64_t route, ping, other;
  uint64_t reasons[GS_REASON_COUNT_];
  uint64_t errors[GS_CODE_COUNT_];
  uint64_t latency[LATENCY_BUCKETS + 1];
  uint64_t latency_sum_ns;
  uint64_t accepted, rejected, protocol_errors;
  uint64_t geo_lookups;
};

static void sum(struct daemon *d, struct totals *t)
{
  memset(t, 0, sizeof(*t));
  for (int i = 0; i < d->nworkers; i++) {
    struct worker_stats *s = &d->workers[i].stats;
    t->route += LOAD(s->route);
    t->ping += LOAD(s->ping);
    t->other += LOAD(s->other);
    for (int k = 0; k < GS_REASON_COUNT_; k++)
      t->reasons[k] += LOAD(s->reasons[k]);
    for (int k = 0; k < GS_CODE_COUNT_; k++)
      t->errors[k] += LOAD(s->errors[k]);
    for (int k = 0; k <= LATENCY_BUCKETS; k++)
      t->latency[k] += LOAD(s->latency[k]);
    t->latency_sum_ns += LOAD(s->latency_sum_ns);
    t->geo_lookups += LOAD(s->geo_lookups);
    t->accepted += LOAD(d->workers[i].srv.accepted);
    t->rejected += LOAD(d->workers[i].srv.rejected);
    t->protocol_errors += LOAD(d->workers[i].srv.protocol_errors);
  }
}

static struct dc_total *total_for(struct daemon *d, const char *id)
{
  for (size_t i = 0; i < d->ndc_totals; i++)
    if (strcmp(d->dc_totals[i].id, id) == 0)
      return &d->dc_totals[i];
  void *p = realloc(d->dc_totals, (d->ndc_totals + 1) * sizeof(*d->dc_totals));
  if (p == NULL)
    return NULL;
  d->dc_totals = p;
  struct dc_total *t = &d->dc_totals[d->ndc_totals++];
  snprintf(t->id, sizeof(t->id), "%s", id);
  t->count = 0;
  return t;
}

static void fold(struct daemon *d, struct snapshot *s, struct dc_total *out,
                 size_t nout)
{
  size_t ndcs = s->map->ndcs;
  for (size_t dc = 0; dc < ndcs; dc++) {
    uint64_t n = 0;
    for (int w = 0; w < d->nworkers; w++)
      n += LOAD(s->dc_answers[(size_t)w * ndcs + dc]);
    if (out == NULL) {
      struct dc_total *t = total_for(d, s->map->dcs[dc].id);
      if (t)
        t->count += n;
    } else {
      for (size_t i = 0; i < nout; i++)
        if (strcmp(out[i].id, s->map->dcs[dc].id) == 0)
          out[i].count += n;
    }
  }
}

void stats_fold_snapshot(struct daemon *d, struct snapshot *s)
{
  fold(d, s, NULL, 0);
}

/* Answers per DC id: folded totals + live snapshots. Caller frees. */
static struct dc_total *dc_counts(struct daemon *d, size_t *n)
{
  struct snapshot *cur = atomic_load(&d->current);
  /* Make sure every id of the current map has a row. */
  for (size_t i = 0; i < cur->map->ndcs; i++)
    total_for(d, cur->map->dcs[i].id);
  struct dc_total *out = malloc((d->ndc_totals + 1) * sizeof(*out));
  if (out == NULL) {
    *n = 0;
    return NULL;
  }
  memcpy(out, d->dc_totals, d->ndc_totals * sizeof(*out));
  fold(d, cur, out, d->ndc_totals);
  for (struct retired *r = d->retired; r; r = r->next)
    if (r->release == daemon_release_snapshot)
      fold(d, r->object, out, d->ndc_totals);
  *n = d->ndc_totals;
  return out;
}

void stats_pack(struct daemon *d, msgpack_packer *pk)
{
  struct totals t;
  size_t ndc;
  struct dc_total *dcs = dc_counts(d, &ndc);
  int nerr = 0;

  sum(d, &t);
  msgpack_pack_map(pk, 10);
  rpc_pack_kv_u64(pk, "geo_lookups", t.geo_lookups);
  rpc_pack_str(pk, "share");
  share_pack_stats(d, pk);
  rpc_pack_str(pk, "store");
  msgpack_pack_map(pk, 2);
  rpc_pack_kv_bool(pk, "healthy", atomic_load(&d->store_healthy));
  {
    struct optout_index *ix = atomic_load(&d->optouts);
    rpc_pack_kv_u64(pk, "optouts", ix ? optout_index_count(ix) : 0);
  }
  rpc_pack_str(pk, "requests");
  msgpack_pack_map(pk, 3);
  rpc_pack_kv_u64(pk, "route", t.route);
  rpc_pack_kv_u64(pk, "ping", t.ping);
  rpc_pack_kv_u64(pk, "other", t.other);

  rpc_pack_str(pk, "reasons");
  msgpack_pack_map(pk, GS_REASON_COUNT_);
  for (int k = 0; k < GS_REASON_COUNT_; k++)
    rpc_pack_kv_u64(pk, gs_reason_name(k), t.reasons[k]);

  for (int k = 1; k < GS_CODE_COUNT_; k++)
    nerr++;
  rpc_pack_str(pk, "errors");
  msgpack_pack_map(pk, (size_t)nerr + 1);
  for (int k = 1; k < GS_CODE_COUNT_; k++)
    rpc_pack_kv_u64(pk, gs_code_name(k), t.errors[k]);
  rpc_pack_kv_u64(pk, "protocol", t.protocol_errors);

  rpc_pack_str(pk, "answers");
  msgpack_pack_map(pk, ndc);
  for (size_t i = 0; i < ndc; i++)
    rpc_pack_kv_u64(pk, dcs[i].id, dcs[i].count);
  free(dcs);

  rpc_pack_str(pk, "connections");
  msgpack_pack_map(pk, 3);
  rpc_pack_kv_u64(pk, "open", atomic_load(&d->open_conns));
  rpc_pack_kv_u64(pk, "accepted", t.accepted);
  rpc_pack_kv_u64(pk, "rejected", t.rejected);

  rpc_pack_str(pk, "reloads");
  msgpack_pack_map(pk, 4);
  rpc_pack_kv_u64(pk, "ok", d->reloads_ok);
  rpc_pack_kv_u64(pk, "failed", d->reloads_failed);
  rpc_pack_kv_u64(pk, "generation", d->generation);
  rpc_pack_kv_double(pk, "last_build_seconds", d->last_build_seconds);

  rpc_pack_str(pk, "latency");
  msgpack_pack_map(pk, 2);
  rpc_pack_str(pk, "buckets_us");
  msgpack_pack_map(pk, LATENCY_BUCKETS + 1);
  for (int k = 0; k <= LATENCY_BUCKETS; k++) {
    char le[32];
    if (k < LATENCY_BUCKETS)
      snprintf(le, sizeof(le), "%llu",
               (unsigned long long)(latency_bounds_ns[k] / 1000));
    else
      snprintf(le, sizeof(le), "+Inf");
    rpc_pack_kv_u64(pk, le, t.latency[k]);
  }
  rpc_pack_kv_u64(pk, "sum_us", t.latency_sum_ns / 1000);
}

/* ---- Prometheus text --------------------------------------------------- */

struct text {
  char *buf;
  size_t len, cap;
};

__attribute__((format(printf, 2, 3))) static void put(struct text *t,
                                                      const char *fmt, ...)
{
  va_list ap;
  for (;;) {
    size_t room = t->cap - t->len;
    va_start(ap, fmt);
    int n =
        vsnprintf(t->buf ? t->buf + t->len : NULL, t->buf ? room : 0, fmt, ap);
    va_end(ap);
    if (n < 0)
      return;
    if (t->buf && (size_t)n < room) {
      t->len += (size_t)n;
      return;
    }
    size_t cap = t->cap ? t->cap * 2 : 8192;
    while (cap < t->len + (size_t)n + 1)
      cap *= 2;
    char *b = realloc(t->buf, cap);
    if (b == NULL)
      return;
    t->buf = b;
    t->cap = cap;
  }
}

char *stats_prometheus(struct daemon *d, size_t *len)
{
  struct text t = {0};
  struct totals s;
  size_t ndc;
  struct dc_total *dcs = dc_counts(d, &ndc);
  uint64_t cumulative = 0, count = 0;

  sum(d, &s);
  put(&t, "# HELP geosteer_requests_total Route-listener requests by "
          "method.\n# TYPE geosteer_requests_total counter\n");
  put(&t, "geosteer_requests_total{method=\"route\"} %llu\n",
      (unsigned long long)s.route);
  put(&t, "geosteer_requests_total{method=\"ping\"} %llu\n",
      (unsigned long long)s.ping);
  put(&t, "geosteer_requests_total{method=\"other\"} %llu\n",
      (unsigned long long)s.other);
  put(&t, "# HELP geosteer_route_answers_total Route answers by reason.\n"
          "# TYPE geosteer_route_answers_total counter\n");
  for (int k = 0; k < GS_REASON_COUNT_; k++)
    put(&t, "geosteer_route_answers_total{reason=\"%s\"} %llu\n",
        gs_reason_name(k), (unsigned long long)s.reasons[k]);
  put(&t, "# HELP geosteer_errors_total Error replies by code.\n"
          "# TYPE geosteer_errors_total counter\n");
  for (int k = 1; k < GS_CODE_COUNT_; k++)
    put(&t, "geosteer_errors_total{code=\"%s\"} %llu\n", gs_code_name(k),
        (unsigned long long)s.errors[k]);
  put(&t,
      "# HELP geosteer_protocol_errors_total Messages refused by the "
      "scanner or decoder.\n# TYPE geosteer_protocol_errors_total "
      "counter\ngeosteer_protocol_errors_total %llu\n",
      (unsigned long long)s.protocol_errors);
  put(&t,
      "# HELP geosteer_geo_lookups_total Route requests answered from "
      "the geolocation table.\n# TYPE geosteer_geo_lookups_total counter\n"
      "geosteer_geo_lookups_total %llu\n",
      (unsigned long long)s.geo_lookups);
  {
    struct optout_index *ix = atomic_load(&d->optouts);
    put(&t,
        "# HELP geosteer_store_healthy 1 when the opt-out store is usable; 0 "
        "means routing fails closed (no geolocation).\n"
        "# TYPE geosteer_store_healthy gauge\ngeosteer_store_healthy %d\n"
        "# HELP geosteer_optouts Users opted out of geolocation.\n"
        "# TYPE geosteer_optouts gauge\ngeosteer_optouts %zu\n",
        atomic_load(&d->store_healthy) ? 1 : 0,
        ix ? optout_index_count(ix) : 0);
  }
  {
    char share_text[1024];
    share_prometheus(d, share_text, sizeof(share_text));
    put(&t, "%s", share_text);
  }
  put(&t, "# HELP geosteer_dc_answers_total Route answers by first data "
          "center.\n# TYPE geosteer_dc_answers_total counter\n");
  for (size_t i = 0; i < ndc; i++)
    put(&t, "geosteer_dc_answers_total{dc=\"%s\"} %llu\n", dcs[i].id,
        (unsigned long long)dcs[i].count);
  free(dcs);
  put(&t,
      "# HELP geosteer_connections_open Open route connections.\n"
      "# TYPE geosteer_connections_open gauge\n"
      "geosteer_connections_open %zu\n",
      (size_t)atomic_load(&d->open_conns));
  put(&t,
      "# HELP geosteer_connections_total Accepted and rejected "
      "connections.\n# TYPE geosteer_connections_total counter\n"
      "geosteer_connections_total{result=\"accepted\"} %llu\n"
      "geosteer_connections_total{result=\"rejected\"} %llu\n",
      (unsigned long long)s.accepted, (unsigned long long)s.rejected);
  put(&t,
      "# HELP geosteer_reloads_total Table rebuilds by result.\n"
      "# TYPE geosteer_reloads_total counter\n"
      "geosteer_reloads_total{result=\"ok\"} %llu\n"
      "geosteer_reloads_total{result=\"failed\"} %llu\n",
      (unsigned long long)d->reloads_ok, (unsigned long long)d->reloads_failed);
  put(&t,
      "# HELP geosteer_reload_last_build_seconds Duration of the last "
      "successful build.\n# TYPE geosteer_reload_last_build_seconds "
      "gauge\ngeosteer_reload_last_build_seconds %.3f\n",
      d->last_build_seconds);
  put(&t,
      "# HELP geosteer_table_generation Generation of the live table.\n"
      "# TYPE geosteer_table_generation gauge\n"
      "geosteer_table_generation %llu\n",
      (unsigned long long)d->generation);
  put(&t, "# HELP geosteer_route_latency_seconds Time to answer a route "
          "request inside the server.\n# TYPE geosteer_route_latency_seconds "
          "histogram\n");
  for (int k = 0; k < LATENCY_BUCKETS; k++) {
    cumulative += s.latency[k];
    put(&t, "geosteer_route_latency_seconds_bucket{le=\"%g\"} %llu\n",
        (double)latency_bounds_ns[k] / 1e9, (unsigned long long)cumulative);
  }
  count = cumulative + s.latency[LATENCY_BUCKETS];
  put(&t,
      "geosteer_route_latency_seconds_bucket{le=\"+Inf\"} %llu\n"
      "geosteer_route_latency_seconds_sum %.9f\n"
      "geosteer_route_latency_seconds_count %llu\n",
      (unsigned long long)count, (double)s.latency_sum_ns / 1e9,
      (unsigned long long)count);
  *len = t.len;
  return t.buf;
}

/* ---- the metrics listener ---------------------------------------------- */

#define HTTP_REQUEST_MAX 8192

struct http_conn {
  uv_tcp_t tcp;
  struct http_conn *prev, *next; /* open connections, for shutdown */
  uv_write_t wreq;
  char in[HTTP_REQUEST_MAX];
  size_t in_len;
  char *out;
  struct daemon *d;
};

static uv_tcp_t *metrics_server;
static struct http_conn *http_conns;

static void http_closed(uv_handle_t *h)
{
  struct http_conn *hc = h->data;
  if (hc->prev)
    hc->prev->next = hc->next;
  else
    http_conns = hc->next;
  if (hc->next)
    hc->next->prev = hc->prev;
  free(hc->out);
  free(hc);
}

static void http_written(uv_write_t *req, int status)
{
  struct http_conn *hc = req->data;
  (void)status;
  if (!uv_is_closing((uv_handle_t *)&hc->tcp))
    uv_close((uv_handle_t *)&hc->tcp, http_closed);
}

static void http_reply(struct http_conn *hc, const char *status,
                       const char *body, size_t body_len)
{
  char head[256];
  int n = snprintf(head, sizeof(head),
                   "HTTP/1.0 %s\r\nContent-Type: text/plain; version=0.0.4; "
                   "charset=utf-8\r\nContent-Length: %zu\r\nConnection: "
                   "close\r\n\r\n",
                   status, body_len);
  hc->out = malloc((size_t)n + body_len);
  if (hc->out == NULL) {
    uv_close((uv_handle_t *)&hc->tcp, http_closed);
    return;
  }
  memcpy(hc->out, head, (size_t)n);
  memcpy(hc->out + n, body, body_len);
  uv_buf_t b = uv_buf_init(hc->out, (unsigned)((size_t)n + body_len));
  hc->wreq.data = hc;
  uv_read_stop((uv_stream_t *)&hc->tcp);
  if (uv_write(&hc->wreq, (uv_stream_t *)&hc->tcp, &b, 1, http_written) != 0)
    uv_close((uv_handle_t *)&hc->tcp, http_closed);
}

static void http_alloc(uv_handle_t *h, size_t s, uv_buf_t *buf)
{
  struct http_conn *hc = h->data;
  (void)s;
  *buf = uv_buf_init(hc->in + hc->in_len,
                     (unsigned)(sizeof(hc->in) - hc->in_len - 1));
}

static void http_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
  struct http_conn *hc = st->data;
  (void)buf;
  if (nread < 0) {
    uv_close((uv_handle_t *)&hc->tcp, http_closed);
    return;
  }
  hc->in_len += (size_t)nread;
  hc->in[hc->in_len] = '\0';
  if (strstr(hc->in, "\r\n\r\n") == NULL && strstr(hc->in, "\n\n") == NULL) {
    if (hc->in_len >= sizeof(hc->in) - 1)
      http_reply(hc, "431 Request Header Fields Too Large", "too large\n", 10);
    return;
  }
  if (strncmp(hc->in, "GET /metrics ", 13) == 0 ||
      strncmp(hc->in, "GET /metrics\r", 13) == 0) {
    size_t len;
    char *body = stats_prometheus(hc->d, &len);
    if (body == NULL) {
      http_reply(hc, "500 Internal Server Error", "out of memory\n", 14);
      return;
    }
    http_reply(hc, "200 OK", body, len);
    free(body);
  } else {
    http_reply(hc, "404 Not Found", "try GET /metrics\n", 17);
  }
}

static void http_connection(uv_stream_t *server, int status)
{
  struct http_conn *hc;
  if (status < 0 || (hc = calloc(1, sizeof(*hc))) == NULL)
    return;
  hc->d = server->data;
  uv_tcp_init(server->loop, &hc->tcp);
  hc->tcp.data = hc;
  hc->next = http_conns;
  if (http_conns)
    http_conns->prev = hc;
  http_conns = hc;
  if (uv_accept(server, (uv_stream_t *)&hc->tcp) != 0 ||
      uv_read_start((uv_stream_t *)&hc->tcp, http_alloc, http_read) != 0)
    uv_close((uv_handle_t *)&hc->tcp, http_closed);
}

int metrics_listen(struct daemon *d, const struct listen_addr *la,
                   uint16_t *bound_port)
{
  struct sockaddr_storage ss;
  int rc;

  metrics_server = malloc(sizeof(*metrics_server));
  if (metrics_server == NULL)
    return UV_ENOMEM;
  conn_sockaddr(la, &ss);
  uv_tcp_init(d->loop, metrics_server);
  metrics_server->data = d;
  if ((rc = uv_tcp_bind(metrics_server, (struct sockaddr *)&ss, 0)) != 0 ||
      (rc = uv_listen((uv_stream_t *)metrics_server, 64, http_connection)) !=
          0) {
    uv_close((uv_handle_t *)metrics_server, (uv_close_cb)free);
    metrics_server = NULL;
    return rc;
  }
  struct sockaddr_storage got;
  int len = sizeof(got);
  *bound_port = la->port;
  if (uv_tcp_getsockname(metrics_server, (struct sockaddr *)&got, &len) == 0)
    *bound_port = ntohs(got.ss_family == AF_INET
                            ? ((struct sockaddr_in *)&got)->sin_port
                            : ((struct sockaddr_in6 *)&got)->sin6_port);
  return 0;
}

void metrics_stop(void)
{
  if (metrics_server)
    uv_close((uv_handle_t *)metrics_server, (uv_close_cb)free);
  metrics_server = NULL;
  /* An idle scraper connection must not hold the process open. */
  for (struct http_conn *hc = http_conns; hc; hc = hc->next)
    if (!uv_is_closing((uv_handle_t *)&hc->tcp))
      uv_close((uv_handle_t *)&hc->tcp, http_closed);
}
