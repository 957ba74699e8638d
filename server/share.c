/*
 * share: provider records, from the route path to the provider's
 * collector. See share.h for the design and the allow-list.
 */
#include "share.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon.h"
#include "log.h"
#include "rng.h"

#define RING_SIZE 16384u /* records per worker between drains */
#define DRAIN_MS 20 /* rings are emptied this often, whatever interval_ms */
#define MAX_PENDING_WRITE (1u << 20) /* bytes unsent before we stop writing */
#define BATCH_MAX 10000              /* records in one notification */
#define BACKOFF_MIN_MS 250
#define BACKOFF_MAX_MS 30000

/*
 * 20 bytes: under load the rings and the queue take in every answer and
 * the queue bound drops most, so what is copied per record should be
 * small, or that copying alone pushes the route table out of the cache.
 * The session, up to 64 bytes and mostly absent, lies in a parallel array
 * whose pages are touched only when sessions are given.
 */
struct share_record {
  uint32_t at;           /* unix seconds */
  uint16_t dc;           /* into share.names */
  uint8_t session_len;   /* 0: none */
  struct coarse_loc loc; /* cut to the precision when sent */
};

typedef char share_session[GS_SESSION_MAX];

struct share_ring {
  _Atomic uint64_t head; /* next write; the worker's */
  _Atomic uint64_t tail; /* next read; the drainer's */
  _Atomic uint64_t dropped;
  struct share_record rec[RING_SIZE];
  share_session session[RING_SIZE];
};

enum conn_state { SHARE_OFF, SHARE_CONNECTING, SHARE_CONNECTED, SHARE_BACKOFF };

struct share {
  struct daemon *d;
  const struct config *cfg;
  struct share_ring **rings;  /* one per worker */
  struct share_record *queue; /* circular, cfg->share_queue_max */
  share_session *qsession;    /* beside queue */
  size_t qhead, qlen;
  /* Every data-center id seen in a published map, never removed, so a
   * record names its DC by index whatever reload comes between. */
  char (*names)[DCMAP_ID_MAX + 1];
  size_t nnames;
  uv_timer_t flush_timer, retry_timer, drain_timer;
  uv_tcp_t *tcp; /* NULL while not connected */
  uv_connect_t connect_req;
  enum conn_state state;
  int attempt;
  struct rng rng;
  uint64_t sent, dropped, suppressed, reconnects;
  bool stopping;
};

static struct share *share_of(struct daemon *d)
{
  return d->share;
}

int share_init(struct daemon *d)
{
  struct share *s;

  if (!d->cfg->has_share)
    return 0;
  s = calloc(1, sizeof(*s));
  if (s == NULL)
    return GS_ERR_NOMEM;
  s->d = d;
  s->cfg = d->cfg;
  s->rings = calloc((size_t)d->nworkers, sizeof(*s->rings));
  s->queue = malloc((size_t)d->cfg->share_queue_max * sizeof(*s->queue));
  s->qsession = malloc((size_t)d->cfg->share_queue_max * sizeof(*s->qsession));
  s->names = malloc(SHARE_DC_NONE * sizeof(*s->names));
  if (s->rings == NULL || s->queue == NULL || s->qsession == NULL ||
      s->names == NULL)
    goto nomem;
  for (int i = 0; i < d->nworkers; i++) {
    s->rings[i] = calloc(1, sizeof(struct share_ring));
    if (s->rings[i] == NULL)
      goto nomem;
    d->workers[i].share = s->rings[i];
  }
  s->rng.state = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)s;
  d->share = s;
  /* The first snapshot was published before sharing existed. */
  struct snapshot *cur =
      atomic_load_explicit(&d->current, memory_order_acquire);
  if (cur != NULL)
    share_name_dcs(d, cur);
  return 0;
nomem:
  for (int i = 0; s->rings && i < d->nworkers; i++)
    free(s->rings[i]);
  free(s->rings);
  free(s->queue);
  free(s->qsession);
  free(s->names);
  free(s);
  return GS_ERR_NOMEM;
}

static uint16_t name_index(struct share *s, const char *id)
{
  size_t i;

  for (i = 0; i < s->nnames; i++)
    if (strcmp(s->names[i], id) == 0)
      return (uint16_t)i;
  if (s->nnames == SHARE_DC_NONE)
    return SHARE_DC_NONE; /* its records are dropped and counted */
  snprintf(s->names[s->nnames], sizeof(s->names[0]), "%s", id);
  return (uint16_t)s->nnames++;
}

void share_name_dcs(struct daemon *d, struct snapshot *snap)
{
  struct share *s = share_of(d);

  for (size_t i = 0; i < snap->map->ndcs; i++)
    snap->share_dc[i] = s ? name_index(s, snap->map->dcs[i].id) : SHARE_DC_NONE;
}

void share_offer(struct share_ring *r, uint16_t dc,
                 const struct coarse_loc *loc, const char *session,
                 size_t session_len)
{
  uint64_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
  uint64_t t = atomic_load_explicit(&r->tail, memory_order_acquire);
  struct share_record *rec;

  if (h - t >= RING_SIZE || dc == SHARE_DC_NONE) {
    STAT_ADD(r->dropped, 1);
    return;
  }
  rec = &r->rec[h % RING_SIZE];
  rec->dc = dc;
  rec->at = (uint32_t)time(NULL); /* vDSO: no system call */
  rec->loc = *loc;
  rec->session_len = (uint8_t)session_len;
  if (session_len)
    memcpy(r->session[h % RING_SIZE], session, session_len);
  atomic_store_explicit(&r->head, h + 1, memory_order_release);
}

/* Appends to the bounded queue, dropping the oldest record when full. */
static void enqueue(struct share *s, const struct share_record *rec,
                    const char *session)
{
  size_t cap = s->cfg->share_queue_max, at;
  if (s->qlen == cap) {
    s->qhead = s->qhead + 1 == cap ? 0 : s->qhead + 1;
    s->qlen--;
    s->dropped++;
  }
  at = s->qhead + s->qlen;
  if (at >= cap)
    at -= cap;
  s->queue[at] = *rec;
  if (rec->session_len)
    memcpy(s->qsession[at], session, rec->session_len);
  s->qlen++;
}

/*
 * Moves what the workers offered into the queue. Records the queue bound
 * would drop at once (more arrived than it holds) are counted as dropped
 * without being copied: under heavy load that is most of them.
 */
static void drain_rings(struct share *s)
{
  size_t cap = s->cfg->share_queue_max;

  for (int i = 0; i < s->d->nworkers; i++) {
    struct share_ring *r = s->rings[i];
    uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
    uint64_t h = atomic_load_explicit(&r->head, memory_order_acquire);
    if (h - t > cap) {
      s->dropped += h - t - cap;
      t = h - cap;
    }
    for (; t < h; t++)
      enqueue(s, &r->rec[t % RING_SIZE], r->session[t % RING_SIZE]);
    atomic_store_explicit(&r->tail, t, memory_order_release);
  }
}

/* ---- the allow-list --------------------------------------------------- */

static const char *const precision_key[] = {"continent", "country",
                                            "subdivision", "cell"};

/*
 * Records are encoded by hand, straight into space reserved in the
 * notification, as msgpack-c would encode them: msgpack_pack_* calls its
 * writer once per item, which at a few hundred thousand records a second
 * was most of what sharing cost. RECORD_MAX bounds one record.
 */
#define RECORD_MAX 160

/* A string of n < 256 bytes. */
static char *put_str(char *p, const char *str, size_t n)
{
  if (n < 32) {
    *p++ = (char)(0xa0 | n);
  } else {
    *p++ = (char)0xd9;
    *p++ = (char)n;
  }
  memcpy(p, str, n);
  return p + n;
}

static char *put_be(char *p, uint64_t v, int bytes)
{
  for (int i = bytes - 1; i >= 0; i--)
    *p++ = (char)(v >> (8 * i));
  return p;
}

static char *put_uint(char *p, uint64_t v)
{
  if (v < 128) {
    *p++ = (char)v;
    return p;
  }
  if (v < 256) {
    *p++ = (char)0xcc;
    return put_be(p, v, 1);
  }
  if (v < 65536) {
    *p++ = (char)0xcd;
    return put_be(p, v, 2);
  }
  if (v < ((uint64_t)1 << 32)) {
    *p++ = (char)0xce;
    return put_be(p, v, 4);
  }
  *p++ = (char)0xcf;
  return put_be(p, v, 8);
}

/* A whole degree, -180..180. */
static char *put_degree(char *p, int v)
{
  if (v >= 0)
    return put_uint(p, (uint64_t)v);
  if (v >= -32) {
    *p++ = (char)(int8_t)v; /* negative fixint */
    return p;
  }
  if (v >= -128) {
    *p++ = (char)0xd0;
    *p++ = (char)(int8_t)v;
    return p;
  }
  *p++ = (char)0xd1;
  return put_be(p, (uint16_t)(int16_t)v, 2);
}

static char *put_key(char *p, const char *key)
{
  return put_str(p, key, strlen(key));
}

/* The location key and value at the configured precision. */
static char *put_location(char *p, uint32_t precision,
                          const struct coarse_loc *loc)
{
  static const char nil = (char)0xc0;

  p = put_key(p, precision_key[precision]);
  switch (precision) {
  case SHARE_CONTINENT:
  case SHARE_COUNTRY: {
    const char *code =
        precision == SHARE_CONTINENT ? loc->continent : loc->country;
    if (code[0] == '\0') {
      *p++ = nil;
      return p;
    }
    return put_str(p, code, 2);
  }
  case SHARE_SUBDIVISION: {
    size_t n = strnlen(loc->subdivision, sizeof(loc->subdivision));
    if (loc->country[0] == '\0' || n == 0) {
      *p++ = nil;
      return p;
    }
    char text[2 + 1 + sizeof(loc->subdivision)];
    memcpy(text, loc->country, 2);
    text[2] = '-';
    memcpy(text + 3, loc->subdivision, n);
    return put_str(p, text, 3 + n);
  }
  default:
    if (!loc->has_cell) {
      *p++ = nil;
      return p;
    }
    *p++ = (char)0x92; /* fixarray of 2 */
    p = put_degree(p, loc->cell_lat);
    return put_degree(p, loc->cell_lon);
  }
}

/*
 * Starts a record of `keys` keys in w: room for RECORD_MAX bytes, the map
 * header and the dc pair, which every record has. Returns where the next
 * key goes, NULL on OOM; end_record() takes the record in.
 */
static char *begin_record(struct wbuf *w, const struct share *s,
                          const struct share_record *r, unsigned keys)
{
  const char *dc = s->names[r->dc];
  char *p;

  if (!wbuf_reserve(w, RECORD_MAX))
    return NULL;
  p = w->data + w->len;
  *p++ = (char)(0x80 | keys); /* fixmap */
  p = put_key(p, "dc");
  return put_str(p, dc, strlen(dc));
}

static void end_record(struct wbuf *w, const char *p)
{
  w->len = (size_t)(p - w->data);
}

/* Appends queue record i as an event: {dc, at, location, session?}. */
static void put_event(struct wbuf *w, const struct share *s, size_t i)
{
  const struct share_record *r = &s->queue[i];
  char *p = begin_record(w, s, r, r->session_len ? 4 : 3);

  if (p == NULL)
    return;
  p = put_key(p, "at");
  p = put_uint(p, r->at);
  p = put_location(p, s->cfg->share_precision, &r->loc);
  if (r->session_len) {
    p = put_key(p, "session");
    p = put_str(p, s->qsession[i], r->session_len);
  }
  end_record(w, p);
}

/* Appends an aggregate bucket: {dc, location, count}. */
static void put_bucket(struct wbuf *w, const struct share *s,
                       const struct share_record *r, uint64_t count)
{
  char *p = begin_record(w, s, r, 3);

  if (p == NULL)
    return;
  p = put_location(p, s->cfg->share_precision, &r->loc);
  p = put_key(p, "count");
  p = put_uint(p, count);
  end_record(w, p);
}

/* Two records fall in the same bucket: same dc and same cut location. */
static bool same_bucket(uint32_t precision, const struct share_record *a,
                        const struct share_record *b)
{
  if (a->dc != b->dc)
    return false;
  switch (precision) {
  case SHARE_CONTINENT:
    return memcmp(a->loc.continent, b->loc.continent, 2) == 0;
  case SHARE_COUNTRY:
    return memcmp(a->loc.country, b->loc.country, 2) == 0;
  case SHARE_SUBDIVISION:
    return memcmp(a->loc.country, b->loc.country, 2) == 0 &&
           memcmp(a->loc.subdivision, b->loc.subdivision, 3) == 0;
  default:
    return a->loc.has_cell == b->loc.has_cell &&
           a->loc.cell_lat == b->loc.cell_lat &&
           a->loc.cell_lon == b->loc.cell_lon;
  }
}

/* ---- transport -------------------------------------------------------- */

static void connect_now(struct share *s);
static void on_retry(uv_timer_t *t);

static void on_closed(uv_handle_t *h)
{
  free(h);
}

static void disconnect(struct share *s, const char *why)
{
  if (s->tcp) {
    uv_close((uv_handle_t *)s->tcp, on_closed);
    s->tcp = NULL;
  }
  if (s->stopping)
    return;
  /* Exponential backoff with jitter: 50..100% of the capped delay. */
  uint64_t delay = BACKOFF_MIN_MS;
  for (int i = 0; i < s->attempt && delay < BACKOFF_MAX_MS; i++)
    delay *= 2;
  if (delay > BACKOFF_MAX_MS)
    delay = BACKOFF_MAX_MS;
  delay = delay / 2 + rng_next(&s->rng) % (delay / 2 + 1);
  s->attempt++;
  s->state = SHARE_BACKOFF;
  log_event(LOG_WARN, "share_disconnected", "why=%s retry_ms=%llu", why,
            (unsigned long long)delay);
  uv_timer_start(&s->retry_timer, on_retry, delay, 0);
}

static void on_retry(uv_timer_t *t)
{
  connect_now(t->data);
}

static void on_alloc(uv_handle_t *h, size_t n, uv_buf_t *buf)
{
  static char sink[512]; /* the provider has nothing to tell us */
  (void)h;
  (void)n;
  *buf = uv_buf_init(sink, sizeof(sink));
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
  struct share *s = st->data;
  (void)buf;
  if (n < 0)
    disconnect(s, n == UV_EOF ? "closed_by_provider" : uv_err_name((int)n));
}

static void on_connect(uv_connect_t *req, int status)
{
  struct share *s = req->data;

  if (status < 0 || s->stopping) {
    if (status != UV_ECANCELED)
      disconnect(s, uv_err_name(status));
    return;
  }
  if (s->attempt > 0)
    s->reconnects++;
  /* attempt is reset by the first completed write, not here: a provider
   * that accepts and hangs up at once must still be backed off from. */
  s->state = SHARE_CONNECTED;
  uv_tcp_nodelay(s->tcp, 1);
  uv_read_start((uv_stream_t *)s->tcp, on_alloc, on_read);
  log_event(LOG_INFO, "share_connected", "provider=%s",
            s->cfg->share_provider.text);
}

static void connect_now(struct share *s)
{
  struct sockaddr_storage ss;

  if (s->stopping)
    return;
  s->tcp = malloc(sizeof(*s->tcp));
  if (s->tcp == NULL) {
    disconnect(s, "out_of_memory");
    return;
  }
  uv_tcp_init(s->d->loop, s->tcp);
  s->tcp->data = s;
  s->connect_req.data = s;
  s->state = SHARE_CONNECTING;
  conn_sockaddr(&s->cfg->share_provider, &ss);
  if (uv_tcp_connect(&s->connect_req, s->tcp, (struct sockaddr *)&ss,
                     on_connect) != 0)
    disconnect(s, "connect_failed");
}

struct write_req {
  uv_write_t req;
  struct wbuf buf;
};

static void on_written(uv_write_t *req, int status)
{
  struct write_req *w = (struct write_req *)req;
  uv_stream_t *handle = req->handle;
  struct share *s = handle->data;
  wbuf_free(&w->buf);
  free(w);
  if (status == 0 && s)
    s->attempt = 0;
  if (status < 0 && status != UV_ECANCELED && s && s->tcp &&
      (uv_stream_t *)s->tcp == handle)
    disconnect(s, uv_err_name(status));
}

/* True when a notification could be written now. */
static bool can_send(struct share *s)
{
  return s->state == SHARE_CONNECTED && s->tcp != NULL &&
         uv_stream_get_write_queue_size((uv_stream_t *)s->tcp) <=
             MAX_PENDING_WRITE;
}

/*
 * A notification of count records: its header is packed, the caller packs
 * the records into pk (straight into the buffer that is written), then
 * calls send_notification. NULL when out of memory.
 */
static struct write_req *new_notification(msgpack_packer *pk, size_t count)
{
  struct write_req *w = calloc(1, sizeof(*w));

  if (w == NULL)
    return NULL;
  msgpack_packer_init(pk, &w->buf, wbuf_write);
  msgpack_pack_array(pk, 3);
  msgpack_pack_uint8(pk, GS_RPC_NOTIFICATION);
  rpc_pack_str(pk, "share");
  msgpack_pack_array(pk, count);
  return w;
}

/* Writes w, or frees it; false if it was not sent. */
static bool send_notification(struct share *s, struct write_req *w)
{
  if (w->buf.failed || !can_send(s)) {
    wbuf_free(&w->buf);
    free(w);
    return false;
  }
  uv_buf_t b = uv_buf_init(w->buf.data, (unsigned)w->buf.len);
  if (uv_write(&w->req, (uv_stream_t *)s->tcp, &b, 1, on_written) != 0) {
    wbuf_free(&w->buf);
    free(w);
    disconnect(s, "write_failed");
    return false;
  }
  return true;
}

static void flush_events(struct share *s)
{
  /* Pack nothing that cannot go out; the queue keeps it meanwhile. */
  while (s->qlen > 0 && can_send(s)) {
    msgpack_packer pk;
    size_t n = s->qlen < BATCH_MAX ? s->qlen : BATCH_MAX;
    struct write_req *w = new_notification(&pk, n);

    if (w == NULL)
      return;
    for (size_t i = 0; i < n; i++)
      put_event(&w->buf, s, (s->qhead + i) % s->cfg->share_queue_max);
    if (!send_notification(s, w))
      return; /* keep them; the queue bound decides what is lost */
    s->qhead = (s->qhead + n) % s->cfg->share_queue_max;
    s->qlen -= n;
    s->sent += n;
  }
}

static void flush_aggregate(struct share *s)
{
  uint32_t precision = s->cfg->share_precision;
  size_t cap = s->cfg->share_queue_max, nb = 0;
  struct bucket {
    size_t first; /* queue index of a record of this bucket */
    uint64_t count;
  } *b = calloc(s->qlen ? s->qlen : 1, sizeof(*b));
  size_t nsend = 0;

  if (b == NULL)
    return;
  /* Buckets by linear search: fine for the handful of (dc, place) pairs
   * an interval holds; the queue bound caps the worst case. */
  for (size_t i = 0; i < s->qlen; i++) {
    const struct share_record *r = &s->queue[(s->qhead + i) % cap];
    size_t k;
    for (k = 0; k < nb; k++)
      if (same_bucket(precision, r, &s->queue[b[k].first]))
        break;
    if (k == nb)
      b[nb++].first = (s->qhead + i) % cap;
    b[k].count++;
  }
  uint64_t records = 0;
  for (size_t k = 0; k < nb; k++) {
    if (b[k].count < s->cfg->share_min_count) {
      s->suppressed += b[k].count; /* never sent, not even later */
      continue;
    }
    records += b[k].count;
    nsend++;
  }
  if (nsend > 0) {
    msgpack_packer pk;
    struct write_req *w = new_notification(&pk, nsend);
    for (size_t k = 0; w != NULL && k < nb; k++) {
      if (b[k].count < s->cfg->share_min_count)
        continue;
      put_bucket(&w->buf, s, &s->queue[b[k].first], b[k].count);
    }
    if (w != NULL && send_notification(s, w))
      s->sent += nsend;
    else
      s->dropped += records; /* an interval's counts cannot wait */
  }
  s->qhead = 0;
  s->qlen = 0;
  free(b);
}

static void on_drain(uv_timer_t *t)
{
  drain_rings(t->data);
}

static void on_flush(uv_timer_t *t)
{
  struct share *s = t->data;
  drain_rings(s);
  if (s->cfg->share_aggregate)
    flush_aggregate(s);
  else
    flush_events(s);
}

void share_start(struct daemon *d)
{
  struct share *s = share_of(d);
  if (s == NULL)
    return;
  uv_timer_init(d->loop, &s->flush_timer);
  uv_timer_init(d->loop, &s->retry_timer);
  uv_timer_init(d->loop, &s->drain_timer);
  s->flush_timer.data = s->retry_timer.data = s->drain_timer.data = s;
  uv_timer_start(&s->flush_timer, on_flush, s->cfg->share_interval_ms,
                 s->cfg->share_interval_ms);
  /* Empty the rings often so that only queue_max bounds what is held. */
  if (s->cfg->share_interval_ms > DRAIN_MS)
    uv_timer_start(&s->drain_timer, on_drain, DRAIN_MS, DRAIN_MS);
  connect_now(s);
}

void share_stop(struct daemon *d)
{
  struct share *s = share_of(d);
  if (s == NULL)
    return;
  s->stopping = true;
  uv_close((uv_handle_t *)&s->flush_timer, NULL);
  uv_close((uv_handle_t *)&s->retry_timer, NULL);
  uv_close((uv_handle_t *)&s->drain_timer, NULL);
  if (s->tcp) {
    uv_close((uv_handle_t *)s->tcp, on_closed);
    s->tcp = NULL;
  }
}

void share_free(struct daemon *d)
{
  struct share *s = share_of(d);
  if (s == NULL)
    return;
  for (int i = 0; i < d->nworkers; i++)
    free(s->rings[i]);
  free(s->rings);
  free(s->queue);
  free(s->qsession);
  free(s->names);
  free(s);
  d->share = NULL;
}

static uint64_t ring_drops(struct share *s)
{
  uint64_t n = 0;
  for (int i = 0; i < s->d->nworkers; i++)
    n += atomic_load_explicit(&s->rings[i]->dropped, memory_order_relaxed);
  return n;
}

static const char *state_name(const struct share *s)
{
  static const char *const names[] = {"off", "connecting", "connected",
                                      "backoff"};
  return s ? names[s->state] : "off";
}

void share_pack_stats(struct daemon *d, msgpack_packer *pk)
{
  struct share *s = share_of(d);

  msgpack_pack_map(pk, 6);
  rpc_pack_kv_str(pk, "provider", state_name(s));
  rpc_pack_kv_u64(pk, "sent", s ? s->sent : 0);
  rpc_pack_kv_u64(pk, "dropped", s ? s->dropped + ring_drops(s) : 0);
  rpc_pack_kv_u64(pk, "suppressed", s ? s->suppressed : 0);
  rpc_pack_kv_u64(pk, "reconnects", s ? s->reconnects : 0);
  rpc_pack_kv_u64(pk, "queued", s ? s->qlen : 0);
}

size_t share_prometheus(struct daemon *d, char *buf, size_t size)
{
  struct share *s = share_of(d);
  int n = snprintf(
      buf, size,
      "# HELP geosteer_share_records_total Provider share records by "
      "outcome.\n# TYPE geosteer_share_records_total counter\n"
      "geosteer_share_records_total{outcome=\"sent\"} %llu\n"
      "geosteer_share_records_total{outcome=\"dropped\"} %llu\n"
      "geosteer_share_records_total{outcome=\"suppressed\"} %llu\n"
      "# HELP geosteer_share_connected 1 when connected to the provider.\n"
      "# TYPE geosteer_share_connected gauge\ngeosteer_share_connected %d\n"
      "# HELP geosteer_share_reconnects_total Reconnections to the provider.\n"
      "# TYPE geosteer_share_reconnects_total counter\n"
      "geosteer_share_reconnects_total %llu\n",
      (unsigned long long)(s ? s->sent : 0),
      (unsigned long long)(s ? s->dropped + ring_drops(s) : 0),
      (unsigned long long)(s ? s->suppressed : 0),
      s && s->state == SHARE_CONNECTED ? 1 : 0,
      (unsigned long long)(s ? s->reconnects : 0));
  return n < 0 ? 0 : (size_t)n < size ? (size_t)n : size - 1;
}
