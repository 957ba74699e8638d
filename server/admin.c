/*
 * admin: the methods of the admin listeners, run on the control loop:
 * map.reload, map.show, dc.drain, dc.undrain, dc.list, stats, explain,
 * ping, and auth (TCP admin only).
 *
 * The unix socket is trusted by its file mode (0660). A TCP admin
 * connection must call auth [ {token} ] first; the token is compared in
 * constant time, and after AUTH_MAX_FAILURES failed calls the connection
 * is closed. map.reload replies only when the rebuild has finished (the
 * reply is deferred; the connection reads nothing else meanwhile).
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon.h"
#include "log.h"
#include "rank.h"

#define AUTH_MAX_FAILURES 3

static bool token_equal(const char *a, size_t alen, const char *b, size_t blen)
{
  unsigned char diff = (unsigned char)(alen != blen);
  size_t n = alen > blen ? alen : blen;
  for (size_t i = 0; i < n; i++) {
    unsigned char x = i < alen ? (unsigned char)a[i] : 0;
    unsigned char y = i < blen ? (unsigned char)b[i] : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

struct pending_reload {
  struct conn *c;
  uint32_t msgid;
};

static void reload_finished(void *arg, int rc, const char *error)
{
  struct pending_reload *p = arg;
  struct conn *c = p->c;
  struct daemon *d = c->srv->ctx;

  if (!c->closing) {
    msgpack_packer pk;
    conn_packer(c, &pk);
    if (rc == 0) {
      struct snapshot *s = atomic_load(&d->current);
      rpc_pack_result_head(&pk, p->msgid);
      msgpack_pack_map(&pk, 2);
      rpc_pack_kv_u64(&pk, "generation", s->generation);
      rpc_pack_kv_double(&pk, "build_seconds", s->build_seconds);
    } else {
      rpc_pack_error(&pk, p->msgid, GS_CODE_RELOAD_FAILED,
                     "reload failed, previous table kept: %s",
                     error ? error : "unknown error");
    }
    conn_deferred_done(c);
  }
  conn_unref(c);
  free(p);
}

static void map_show(struct daemon *d, uint32_t msgid, msgpack_packer *pk)
{
  struct snapshot *s = atomic_load(&d->current);
  struct table_stats st;
  char when[32], built[32];
  time_t epoch = geo_build_epoch(s->geo);
  struct tm tm;

  table_get_stats(s->table, &st);
  strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ",
           gmtime_r(&s->loaded_at, &tm));
  strftime(built, sizeof(built), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&epoch, &tm));
  rpc_pack_result_head(pk, msgid);
  msgpack_pack_map(pk, 11);
  rpc_pack_kv_u64(pk, "generation", s->generation);
  rpc_pack_kv_str(pk, "loaded_at", when);
  rpc_pack_kv_str(pk, "map", d->cfg->geo_map);
  rpc_pack_kv_str(pk, "database", d->cfg->geo_database);
  rpc_pack_kv_str(pk, "database_type", geo_type(s->geo));
  rpc_pack_kv_str(pk, "database_built", built);
  rpc_pack_kv_u64(pk, "datacenters", s->map->ndcs);
  rpc_pack_kv_u64(pk, "ranges", st.ranges);
  rpc_pack_kv_u64(pk, "answers", st.answers);
  rpc_pack_kv_u64(pk, "table_bytes", st.bytes);
  rpc_pack_kv_double(pk, "build_seconds", s->build_seconds);
}

static void dc_list(struct daemon *d, uint32_t msgid, msgpack_packer *pk)
{
  struct snapshot *s = atomic_load(&d->current);
  const struct dcmap *m = s->map;

  rpc_pack_result_head(pk, msgid);
  msgpack_pack_array(pk, m->ndcs);
  for (size_t i = 0; i < m->ndcs; i++) {
    msgpack_pack_map(pk, 6);
    rpc_pack_kv_str(pk, "dc", m->dcs[i].id);
    rpc_pack_kv_str(pk, "endpoint", m->dcs[i].endpoint);
    rpc_pack_kv_double(pk, "lat", m->dcs[i].lat);
    rpc_pack_kv_double(pk, "lon", m->dcs[i].lon);
    rpc_pack_kv_i64(pk, "bias", m->dcs[i].bias);
    rpc_pack_kv_bool(pk, "drained", snapshot_is_drained(s, i));
  }
}

static void pack_dc_ids(msgpack_packer *pk, const struct dcmap *m,
                        const uint8_t *dc, int n)
{
  msgpack_pack_array(pk, (size_t)n);
  for (int i = 0; i < n; i++)
    rpc_pack_str(pk, m->dcs[dc[i]].id);
}

static void explain(struct daemon *d, const struct rpc_request *req,
                    msgpack_packer *pk)
{
  struct snapshot *s = atomic_load(&d->current);
  const msgpack_object *ip = rpc_arg(req->args, "ip");
  struct rank_trace *trace;
  struct answer direct;
  struct geo_loc loc;
  char text[ADDR_TEXT_MAX + 1], resolved[ADDR_TEXT_MAX];
  addr128 a;
  bool found;
  uint8_t scope;

  if (ip == NULL || ip->type != MSGPACK_OBJECT_STR ||
      ip->via.str.size > ADDR_TEXT_MAX ||
      addr_parse(rpc_str_copy(ip->via.str, text, sizeof(text)), &a, NULL) !=
          0) {
    rpc_pack_error(pk, req->msgid, GS_CODE_BAD_ADDRESS,
                   "explain needs {ip: ADDRESS} with a textual IPv4 or IPv6 "
                   "address");
    return;
  }
  trace = malloc(sizeof(*trace));
  if (trace == NULL ||
      rank_direct(s->map, s->geo, a, &direct, &loc, &found, trace) != 0) {
    free(trace);
    rpc_pack_error(pk, req->msgid, GS_CODE_INTERNAL, "database lookup failed");
    return;
  }
  const struct answer *ans = table_lookup(s->table, a, &scope);
  addr_format(addr_normalize(a), resolved, sizeof(resolved));
  rpc_pack_result_head(pk, req->msgid);
  msgpack_pack_map(pk, 8);
  rpc_pack_kv_str(pk, "ip", text);
  rpc_pack_kv_str(pk, "resolved", resolved);
  rpc_pack_str(pk, "location");
  if (!found) {
    msgpack_pack_nil(pk);
  } else {
    msgpack_pack_map(pk, loc.has_coords ? 6 : 4);
    rpc_pack_kv_str(pk, "continent", loc.continent);
    rpc_pack_kv_str(pk, "country", loc.country);
    rpc_pack_kv_str(pk, "subdivision", loc.subdivision);
    rpc_pack_kv_u64(pk, "city", loc.city);
    if (loc.has_coords) {
      rpc_pack_kv_double(pk, "lat", loc.lat);
      rpc_pack_kv_double(pk, "lon", loc.lon);
    }
  }
  rpc_pack_kv_str(pk, "rule", trace->rule);
  rpc_pack_kv_str(pk, "reason", gs_reason_name(ans->reason));
  rpc_pack_str(pk, "answer");
  pack_dc_ids(pk, s->map, ans->dc, ans->n);
  rpc_pack_kv_u64(pk, "scope", scope);
  rpc_pack_str(pk, "ranking");
  msgpack_pack_array(pk, (size_t)trace->nsteps);
  for (int i = 0; i < trace->nsteps; i++) {
    const struct rank_step *st = &trace->steps[i];
    msgpack_pack_map(pk, 4);
    rpc_pack_kv_str(pk, "dc", s->map->dcs[st->dc].id);
    rpc_pack_kv_double(pk, "km", st->km);
    rpc_pack_kv_double(pk, "effective_km", st->effective);
    rpc_pack_kv_bool(pk, "drained", snapshot_is_drained(s, st->dc));
  }
  free(trace);
}

static const char *const no_args[] = {NULL};
static const char *const dc_args[] = {"dc", NULL};
static const char *const ip_args[] = {"ip", NULL};
static const char *const token_args[] = {"token", NULL};

static int drain(struct daemon *d, const struct rpc_request *req, bool on,
                 msgpack_packer *pk)
{
  const msgpack_object *v = rpc_arg(req->args, "dc");
  char id[DCMAP_ID_MAX + 1], why[160];
  int code;

  if (v == NULL || v->type != MSGPACK_OBJECT_STR || v->via.str.size == 0 ||
      v->via.str.size > DCMAP_ID_MAX) {
    rpc_pack_error(pk, req->msgid, GS_CODE_BAD_REQUEST, "%s needs {dc: ID}",
                   on ? "dc.drain" : "dc.undrain");
    return 0;
  }
  code = daemon_drain(d, rpc_str_copy(v->via.str, id, sizeof(id)), on, why,
                      sizeof(why));
  if (code != 0) {
    rpc_pack_error(pk, req->msgid, code, "%s", why);
    return 0;
  }
  rpc_pack_result_head(pk, req->msgid);
  msgpack_pack_map(pk, 2);
  rpc_pack_kv_str(pk, "dc", id);
  rpc_pack_kv_bool(pk, "drained", on);
  return 0;
}

int admin_dispatch(struct conn *c, const struct rpc_request *req,
                   msgpack_packer *pk)
{
  struct daemon *d = c->srv->ctx;
  bool needs_auth = c->srv == &d->admin_tcp;
  const char *const *allowed = no_args;
  char why[256], method[64];
  uint32_t id = req->msgid;

  if (req->type == GS_RPC_NOTIFICATION)
    return 0;
  rpc_str_copy(req->method, method, sizeof(method));

  if (rpc_str_is(req->method, "auth")) {
    const msgpack_object *t = rpc_arg(req->args, "token");
    if (!needs_auth) {
      rpc_pack_result_head(pk, id);
      msgpack_pack_true(pk);
      return 0;
    }
    if (rpc_check_keys(req->args, token_args, why, sizeof(why)) && t &&
        t->type == MSGPACK_OBJECT_STR &&
        token_equal(t->via.str.ptr, t->via.str.size, d->admin_token,
                    d->admin_token_len)) {
      c->authed = true;
      rpc_pack_result_head(pk, id);
      msgpack_pack_true(pk);
      return 0;
    }
    c->auth_failures++;
    log_event(LOG_WARN, "admin_auth_failed", "failures=%d", c->auth_failures);
    rpc_pack_error(pk, id, GS_CODE_UNAUTHORIZED, "wrong token");
    return c->auth_failures >= AUTH_MAX_FAILURES ? -1 : 0;
  }
  if (needs_auth && !c->authed) {
    c->auth_failures++;
    rpc_pack_error(pk, id, GS_CODE_UNAUTHORIZED,
                   "call auth [{token}] first on a TCP admin connection");
    return c->auth_failures >= AUTH_MAX_FAILURES ? -1 : 0;
  }

  if (req->method.size > 7 && memcmp(req->method.ptr, "optout.", 7) == 0) {
    if (!privacy_dispatch(d, req, pk))
      rpc_pack_error(pk, id, GS_CODE_UNKNOWN_METHOD,
                     "unknown admin method '%s' (optout.set, optout.clear, "
                     "optout.get, optout.export, optout.erase, "
                     "optout.set_many, optout.count)",
                     method);
    return 0;
  }
  if (rpc_str_is(req->method, "dc.drain") ||
      rpc_str_is(req->method, "dc.undrain"))
    allowed = dc_args;
  else if (rpc_str_is(req->method, "explain"))
    allowed = ip_args;
  if (!rpc_check_keys(req->args, allowed, why, sizeof(why))) {
    rpc_pack_error(pk, id, GS_CODE_BAD_REQUEST, "%s: %s", method, why);
    return 0;
  }

  if (rpc_str_is(req->method, "ping")) {
    rpc_pack_result_head(pk, id);
    rpc_pack_str(pk, "pong");
  } else if (rpc_str_is(req->method, "map.reload")) {
    struct pending_reload *p = malloc(sizeof(*p));
    if (p == NULL) {
      rpc_pack_error(pk, id, GS_CODE_INTERNAL, "out of memory");
      return 0;
    }
    p->c = c;
    p->msgid = id;
    conn_ref(c);
    log_event(LOG_INFO, "reload_requested", "by=admin");
    reload_request(d, reload_finished, p);
    return CONN_DEFERRED;
  } else if (rpc_str_is(req->method, "map.show")) {
    map_show(d, id, pk);
  } else if (rpc_str_is(req->method, "dc.drain")) {
    return drain(d, req, true, pk);
  } else if (rpc_str_is(req->method, "dc.undrain")) {
    return drain(d, req, false, pk);
  } else if (rpc_str_is(req->method, "dc.list")) {
    dc_list(d, id, pk);
  } else if (rpc_str_is(req->method, "stats")) {
    rpc_pack_result_head(pk, id);
    stats_pack(d, pk);
  } else if (rpc_str_is(req->method, "explain")) {
    explain(d, req, pk);
  } else {
    rpc_pack_error(pk, id, GS_CODE_UNKNOWN_METHOD,
                   "unknown admin method '%s' (map.reload, map.show, dc.drain, "
                   "dc.undrain, dc.list, stats, explain, ping, optout.*)",
                   method);
  }
  return 0;
}
