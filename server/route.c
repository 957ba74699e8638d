/*
 * route: the `route` and `ping` methods of the route listeners: the hot
 * path.
 *
 * route validates its arguments, picks the address (the peer's, or `ip`
 * from a trusted proxy), looks it up in the current snapshot's table,
 * skips drained data centers and packs {dc, endpoint, alternates, reason,
 * scope}. Nothing here allocates, locks, logs or calls libmaxminddb; the
 * slow fallbacks (every answer drained) only rank the map's own list.
 */
#include <math.h>
#include <string.h>

#include "daemon.h"
#include "optout.h"
#include "rank.h"

static const char *const route_args[] = {"user",   "ip",      "hint",
                                         "no_geo", "session", NULL};

static bool valid_session(msgpack_object_str s)
{
  if (s.size == 0 || s.size > GS_SESSION_MAX)
    return false;
  for (uint32_t i = 0; i < s.size; i++) {
    char c = s.ptr[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
      return false;
  }
  return true;
}

struct route_args {
  bool has_ip, no_geo;
  addr128 ip;
  int hint;            /* DC index, -1 none */
  const char *session; /* points into the request; NULL when absent */
  size_t session_len;
  const char *user; /* points into the request; NULL when absent */
  size_t user_len;
};

/* Returns 0 or a protocol error code with why filled. */
/* The route arguments, found in one pass over the map. */
struct route_values {
  const msgpack_object *user, *ip, *hint, *no_geo, *session;
};

static const msgpack_object **slot_for(struct route_values *rv,
                                       msgpack_object_str k)
{
  switch (k.size) {
  case 2:
    return memcmp(k.ptr, "ip", 2) == 0 ? &rv->ip : NULL;
  case 4:
    if (memcmp(k.ptr, "user", 4) == 0)
      return &rv->user;
    return memcmp(k.ptr, "hint", 4) == 0 ? &rv->hint : NULL;
  case 6:
    return memcmp(k.ptr, "no_geo", 6) == 0 ? &rv->no_geo : NULL;
  case 7:
    return memcmp(k.ptr, "session", 7) == 0 ? &rv->session : NULL;
  default:
    return NULL;
  }
}

/*
 * Index in l of text, if route_prefetch read these very bytes, else -1.
 * The texts come in request order, so the search starts after the last
 * one found and usually ends at once; those passed over belong to
 * requests route() never asked about (refused first).
 */
static int peek_find(struct peek_list *l, const char *text, size_t len)
{
  for (size_t k = l->next; len > 0 && k < l->n; k++)
    if (l->text[k] == text && l->len[k] == len) {
      l->next = k + 1;
      return (int)k;
    }
  return -1;
}

static void peek_add(struct peek_list *l, const char *text, size_t len)
{
  l->text[l->n] = text;
  l->len[l->n++] = len;
}

/* Parses the address text of an "ip" value; 0 or an error. */
static int parse_ip_text(msgpack_object_str str, addr128 *out)
{
  char text[ADDR_TEXT_MAX + 1];
  if (str.size > ADDR_TEXT_MAX)
    return GS_ERR_INVALID;
  return addr_parse(rpc_str_copy(str, text, sizeof(text)), out, NULL);
}

/* The address route_prefetch parsed from these very bytes, if it did. */
static bool peeked_address(struct conn *c, msgpack_object_str text,
                           addr128 *out)
{
  struct worker *w = c->srv->ctx;
  int k = peek_find(&w->peek_ip, text.ptr, text.size);
  if (k >= 0)
    *out = w->peek_addr[k];
  return k >= 0;
}

/* Returns 0 or a protocol error code with why filled. */
static int parse_args(struct conn *c, const struct snapshot *s,
                      const msgpack_object *args, struct route_args *ra,
                      char *why, size_t why_size)
{
  struct route_values rv = {0};
  const msgpack_object *v;

  memset(ra, 0, sizeof(*ra));
  ra->hint = -1;
  for (uint32_t i = 0; args && i < args->via.map.size; i++) {
    const msgpack_object *k = &args->via.map.ptr[i].key;
    const msgpack_object **slot =
        k->type == MSGPACK_OBJECT_STR ? slot_for(&rv, k->via.str) : NULL;
    if (slot == NULL || *slot != NULL) {
      /* Unknown or repeated: let the general checker word the error. */
      rpc_check_keys(args, route_args, why, why_size);
      return GS_CODE_BAD_REQUEST;
    }
    *slot = &args->via.map.ptr[i].val;
  }
  if ((v = rv.user) != NULL) {
    if (!rpc_valid_text(v, GS_USER_MAX)) {
      snprintf(why, why_size,
               "user must be 1..%d bytes of UTF-8 without NUL bytes",
               GS_USER_MAX);
      return GS_CODE_BAD_REQUEST;
    }
    ra->user = v->via.str.ptr;
    ra->user_len = v->via.str.size;
  }
  if ((v = rv.session) != NULL) {
    if (v->type != MSGPACK_OBJECT_STR || !valid_session(v->via.str)) {
      snprintf(why, why_size, "session must be 1..%d bytes of [A-Za-z0-9._-]",
               GS_SESSION_MAX);
      return GS_CODE_BAD_REQUEST;
    }
    ra->session = v->via.str.ptr;
    ra->session_len = v->via.str.size;
  }
  if ((v = rv.no_geo) != NULL) {
    if (v->type != MSGPACK_OBJECT_BOOLEAN) {
      snprintf(why, why_size, "no_geo must be true or false");
      return GS_CODE_BAD_REQUEST;
    }
    ra->no_geo = v->via.boolean;
  }
  if ((v = rv.hint) != NULL) {
    char id[DCMAP_ID_MAX + 1];
    if (v->type != MSGPACK_OBJECT_STR || v->via.str.size == 0 ||
        v->via.str.size > DCMAP_ID_MAX) {
      snprintf(why, why_size, "hint must be a data center id");
      return GS_CODE_BAD_REQUEST;
    }
    /* An unknown hint is not an error: maps change under clients. */
    ra->hint = dcmap_find_dc(s->map, rpc_str_copy(v->via.str, id, sizeof(id)));
  }
  if ((v = rv.ip) != NULL) {
    if (v->type != MSGPACK_OBJECT_STR ||
        (!peeked_address(c, v->via.str, &ra->ip) &&
         parse_ip_text(v->via.str, &ra->ip) != 0)) {
      snprintf(why, why_size, "ip must be a textual IPv4 or IPv6 address");
      return GS_CODE_BAD_ADDRESS;
    }
    if (!c->peer_known ||
        !config_is_trusted(((struct worker *)c->srv->ctx)->d->cfg, c->peer)) {
      snprintf(why, why_size,
               "ip may only be given by a trusted proxy (trusted_proxies)");
      return GS_CODE_FORBIDDEN;
    }
    ra->has_ip = true;
  }
  return 0;
}

static bool in_list(const uint8_t *list, int n, uint8_t dc)
{
  for (int i = 0; i < n; i++)
    if (list[i] == dc)
      return true;
  return false;
}

/* Appends the undrained DCs of src (in order) to out, up to limit. */
static int add_undrained(const struct snapshot *s, const uint8_t *src, int n,
                         uint8_t *out, int count, int limit)
{
  for (int i = 0; i < n && count < limit; i++)
    if (!snapshot_is_drained(s, src[i]) && !in_list(out, count, src[i]))
      out[count++] = src[i];
  return count;
}

/*
 * Every DC of the answer is drained: the nearest undrained ones to the
 * answer's cell, else the default order, else file order.
 */
static int fallback(const struct snapshot *s, const struct answer *a,
                    uint8_t *out, int limit)
{
  const struct dcmap *m = s->map;
  int count = 0;

  if (a && a->loc.has_cell) {
    double lat = a->loc.cell_lat + 0.5, lon = a->loc.cell_lon + 0.5;
    while (count < limit) {
      int best = -1;
      double best_eff = INFINITY;
      for (size_t i = 0; i < m->ndcs; i++) {
        if (snapshot_is_drained(s, i) || in_list(out, count, (uint8_t)i))
          continue;
        double eff = rank_distance_km(&m->dcs[i], lat, lon) * m->dcs[i].factor;
        if (eff < best_eff) {
          best_eff = eff;
          best = (int)i;
        }
      }
      if (best < 0)
        break;
      out[count++] = (uint8_t)best;
    }
    return count;
  }
  count = add_undrained(s, m->dflt.dc, m->dflt.n, out, 0, limit);
  for (size_t i = 0; i < m->ndcs && count < limit; i++)
    if (!snapshot_is_drained(s, i) && !in_list(out, count, (uint8_t)i))
      out[count++] = (uint8_t)i;
  return count;
}

static char *put(char *p, const void *src, size_t n)
{
  memcpy(p, src, n);
  return p + n;
}

/*
 * Appends [1, msgid, nil, {dc, endpoint, alternates, reason, scope?}] from
 * the snapshot's pre-encoded pieces: the same bytes msgpack-c would pack,
 * in a handful of copies. n <= DCMAP_MAX_LIMIT, so the alternates fit a
 * fixarray.
 */
static void pack_reply(struct wbuf *o, const struct snapshot *s, uint32_t msgid,
                       const uint8_t *dcs, int n, int reason, int scope)
{
  static const char alternates[] = "\xaa"
                                   "alternates";
  static const char scope_key[] = "\xa5"
                                  "scope";
  const char *f = s->frags.data;
  size_t need = 16 + sizeof(alternates) + sizeof(scope_key) + 2 +
                s->reason_frag[reason][1];
  char *p;

  for (int i = 0; i < n; i++)
    need += 1 + s->dc_frag[dcs[i]][1];
  if (!wbuf_reserve(o, need))
    return; /* conn.c closes the connection on a failed buffer */
  p = o->data + o->len;
  *p++ = (char)0x94; /* [1, msgid, nil, result] */
  *p++ = 0x01;
  /* The msgid in its shortest form, as msgpack-c packs it. */
  if (msgid < 0x80) {
    *p++ = (char)msgid;
  } else if (msgid <= 0xff) {
    *p++ = (char)0xcc;
    *p++ = (char)msgid;
  } else if (msgid <= 0xffff) {
    *p++ = (char)0xcd;
    *p++ = (char)(msgid >> 8);
    *p++ = (char)msgid;
  } else {
    *p++ = (char)0xce;
    *p++ = (char)(msgid >> 24);
    *p++ = (char)(msgid >> 16);
    *p++ = (char)(msgid >> 8);
    *p++ = (char)msgid;
  }
  *p++ = (char)0xc0;
  *p++ = (char)(0x80 | (scope >= 0 ? 5 : 4));
  p = put(p, f + s->dc_frag[dcs[0]][0], s->dc_frag[dcs[0]][1]);
  p = put(p, alternates, sizeof(alternates) - 1);
  *p++ = (char)(0x90 | (n - 1));
  for (int i = 1; i < n; i++) {
    *p++ = (char)0x82;
    p = put(p, f + s->dc_frag[dcs[i]][0], s->dc_frag[dcs[i]][1]);
  }
  p = put(p, f + s->reason_frag[reason][0], s->reason_frag[reason][1]);
  if (scope >= 0) {
    p = put(p, scope_key, sizeof(scope_key) - 1);
    if (scope > 127)
      *p++ = (char)0xcc; /* uint8 */
    *p++ = (char)scope;
  }
  o->len = (size_t)(p - o->data);
}

static void route(struct worker *w, struct conn *c,
                  const struct rpc_request *req, msgpack_packer *pk)
{
  struct snapshot *s =
      atomic_load_explicit(&w->d->current, memory_order_acquire);
  const struct dcmap *m = s->map;
  struct route_args ra;
  uint8_t dcs[DCMAP_MAX_LIMIT];
  int n = 0, reason, scope = -1;
  const struct coarse_loc *share_loc = NULL;
  char why[256];
  int code = parse_args(c, s, req->args, &ra, why, sizeof(why));

  if (code != 0) {
    STAT_ADD(w->stats.errors[code], 1);
    rpc_pack_error(pk, req->msgid, code, "%s", why);
    return;
  }
  reason = -1;
  if (!atomic_load_explicit(&w->d->store_healthy, memory_order_acquire)) {
    /* Fail closed: opt-out state unknown, so nobody is geolocated. */
    reason = GS_REASON_OPTOUT;
  } else if (ra.user) {
    struct optout_uid uid;
    int k = peek_find(&w->peek_user, ra.user, ra.user_len);
    if (k >= 0)
      uid = w->peek_uid[k];
    else
      optout_hash(w->d->optout_key, ra.user, ra.user_len, &uid);
    if (optout_index_contains(
            atomic_load_explicit(&w->d->optouts, memory_order_acquire), &uid))
      reason = GS_REASON_OPTOUT;
  }
  if (reason < 0 &&
      (ra.no_geo || (ra.user == NULL && w->d->cfg->anonymous_nogeo)))
    reason = GS_REASON_NOGEO;
  if (reason >= 0) {
    /*
     * No geolocation at all: neither the table nor the database is
     * touched. The hint, then the map's default order.
     */
    if (ra.hint >= 0 && !snapshot_is_drained(s, (size_t)ra.hint))
      dcs[n++] = (uint8_t)ra.hint;
    n = add_undrained(s, m->dflt.dc, m->dflt.n, dcs, n, m->limit);
    if (n == 0)
      n = fallback(s, NULL, dcs, m->limit);
  } else {
    addr128 a = ra.has_ip ? ra.ip : c->peer;
    uint8_t sc;
    const struct answer *ans = table_lookup(s->table, a, &sc);
    STAT_ADD(w->stats.geo_lookups, 1);
    reason = ans->reason;
    if (reason != GS_REASON_UNKNOWN)
      scope = sc;
    /* Only answers that came from a location are shared; nets are not. */
    if (reason >= GS_REASON_CITY && reason <= GS_REASON_NEAREST)
      share_loc = &ans->loc;
    n = add_undrained(s, ans->dc, ans->n, dcs, 0, m->limit);
    if (n == 0)
      n = fallback(s, ans, dcs, m->limit);
  }
  if (n == 0) {
    STAT_ADD(w->stats.errors[GS_CODE_NO_DATACENTER], 1);
    rpc_pack_error(pk, req->msgid, GS_CODE_NO_DATACENTER,
                   "every data center is drained");
    return;
  }
  STAT_ADD(w->stats.reasons[reason], 1);
  if (share_loc && w->share)
    share_offer(w->share, s->share_dc[dcs[0]], share_loc, ra.session,
                ra.session_len);
  STAT_ADD(s->dc_answers[(size_t)w->index * m->ndcs + dcs[0]], 1);

  (void)pk;
  pack_reply(&c->out, s, req->msgid, dcs, n, reason, scope);
}

static void record_latency(struct worker *w, uint64_t ns)
{
  int b = 0;
  while (b < LATENCY_BUCKETS && ns > latency_bounds_ns[b])
    b++;
  STAT_ADD(w->stats.latency[b], 1);
  STAT_ADD(w->stats.latency_sum_ns, ns);
}

static size_t max_size(size_t a, size_t b)
{
  return a > b ? a : b;
}

void route_prefetch(struct conn *c, const uint32_t *sizes, size_t n, bool first)
{
  struct worker *w = c->srv->ctx;
  addr128 *a = w->lookups;
  size_t off = 0;

  /* What the last batch noted points into some buffer: forget it. */
  if (first) {
    w->peek_ip.n = w->peek_ip.next = w->peek_user.n = w->peek_user.next = 0;
    w->nlookups = 0;
  }
  const struct optout_index *ix =
      atomic_load_explicit(&w->d->optouts, memory_order_acquire);
  /* conn.c keeps a batch within CONN_PREFETCH_MAX messages, each adding
   * at most one entry to each list; the bound here only makes that local. */
  size_t used = max_size(w->nlookups, w->peek_user.n);
  if (n > CONN_PREFETCH_MAX - used)
    n = CONN_PREFETCH_MAX - used;
  for (size_t i = 0; i < n; off += sizes[i++]) {
    struct rpc_peek pk;
    if (!rpc_peek_route(c->in + off, sizes[i], &pk))
      continue;
    /* The opt-out check: hash the user now, warm its filter word. */
    if (pk.user != NULL && pk.user_len > 0 && pk.user_len <= GS_USER_MAX) {
      struct optout_uid *uid = &w->peek_uid[w->peek_user.n];
      optout_hash(w->d->optout_key, pk.user, pk.user_len, uid);
      if (ix != NULL)
        optout_index_prefetch(ix, uid);
      peek_add(&w->peek_user, pk.user, pk.user_len);
    }
    if (pk.ip == NULL) {
      if (c->peer_known)
        a[w->nlookups++] = c->peer;
    } else if (parse_ip_text((msgpack_object_str){(uint32_t)pk.ip_len, pk.ip},
                             &a[w->nlookups]) == 0) {
      w->peek_addr[w->peek_ip.n] = a[w->nlookups++];
      peek_add(&w->peek_ip, pk.ip, pk.ip_len);
    }
  }
}

void route_prefetch_done(struct conn_server *srv)
{
  struct worker *w = srv->ctx;

  if (w->nlookups > 0) {
    struct snapshot *s =
        atomic_load_explicit(&w->d->current, memory_order_acquire);
    table_prefetch(s->table, w->lookups, w->nlookups);
  }
}

int route_dispatch(struct conn *c, const struct rpc_request *req,
                   msgpack_packer *pk)
{
  struct conn_server *srv = c->srv;
  struct worker *w = srv->ctx;

  if (req->type == GS_RPC_NOTIFICATION)
    return 0; /* nothing here takes notifications; nothing to answer */
  if (rpc_str_is(req->method, "route")) {
    STAT_ADD(w->stats.route, 1);
    route(w, c, req, pk);
    /* One clock read per request: its end is the next one's start. */
    srv->clock_ns = uv_hrtime();
    srv->clock_valid = true;
    record_latency(w, srv->clock_ns - srv->msg_start_ns);
  } else if (rpc_str_is(req->method, "ping")) {
    STAT_ADD(w->stats.ping, 1);
    rpc_pack_result_head(pk, req->msgid);
    rpc_pack_str(pk, "pong");
  } else {
    char name[64];
    STAT_ADD(w->stats.other, 1);
    STAT_ADD(w->stats.errors[GS_CODE_UNKNOWN_METHOD], 1);
    rpc_pack_error(pk, req->msgid, GS_CODE_UNKNOWN_METHOD,
                   "unknown method '%s' (route listeners serve: route, ping)",
                   rpc_str_copy(req->method, name, sizeof(name)));
  }
  return 0;
}
