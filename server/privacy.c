/*
 * privacy: geolocation opt-outs in the daemon: the store's health, the
 * in-memory index the route path reads, and the optout.* admin methods.
 *
 * Acknowledge only what is durable and visible: optout.set and
 * optout.clear reply after COMMIT returned and after the shared index
 * shows the change (one index, written by this loop with release stores,
 * so a route request that starts after the reply sees it).
 *
 * Fail closed: while the store is not healthy (cannot be opened or read
 * at start, or a write failed), store_healthy is false and every route
 * request is answered without geolocation. Recovery reopens the store and
 * reloads the index from it, retrying every STORE_RETRY_MS.
 *
 * Audit events older than store.audit_retention_days are purged at start
 * and daily. Nothing here logs or returns a user id.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "log.h"
#include "optout.h"
#include "store.h"

#define STORE_RETRY_MS 5000
#define PURGE_INTERVAL_MS (24u * 3600u * 1000u)

static void release_index(struct daemon *d, void *object)
{
  (void)d;
  optout_index_free(object);
}

static void add_loaded(void *ctx, const uint8_t uid[16])
{
  struct optout_index **ix = ctx;
  struct optout_uid u;

  if (*ix == NULL)
    return;
  optout_uid_from_bytes(uid, &u);
  if (optout_index_add(*ix, &u) == GS_ERR_LIMIT) {
    struct optout_index *g = optout_index_grown(*ix);
    optout_index_free(*ix);
    *ix = g;
    if (g)
      optout_index_add(g, &u);
  }
}

static void add_drained(void *ctx, const char *dc)
{
  struct daemon *d = ctx;
  struct snapshot *s = atomic_load(&d->current);
  void *p;

  for (size_t i = 0; i < d->ndrained; i++)
    if (strcmp(d->drained_ids[i], dc) == 0)
      return;
  p = realloc(d->drained_ids, (d->ndrained + 1) * sizeof(*d->drained_ids));
  if (p == NULL)
    return;
  d->drained_ids = p;
  snprintf(d->drained_ids[d->ndrained++], DCMAP_ID_MAX + 1, "%s", dc);
  int idx = s ? dcmap_find_dc(s->map, dc) : -1;
  if (idx >= 0)
    snapshot_set_drained(s, (size_t)idx, true);
}

static void purge(struct daemon *d)
{
  int purged = 0;
  int64_t before =
      (int64_t)time(NULL) - (int64_t)d->cfg->audit_retention_days * 86400;
  if (store_audit_purge(d->store, before, &purged) != 0)
    log_event(LOG_ERROR, "audit_purge_failed", NULL);
  else if (purged > 0)
    log_event(LOG_INFO, "audit_purged", "events=%d retention_days=%u", purged,
              d->cfg->audit_retention_days);
}

static void unhealthy(struct daemon *d, const char *problem);

/* Opens the store and loads the index; true when healthy afterwards. */
static bool recover(struct daemon *d)
{
  struct diag diag = DIAG_INIT;
  struct optout_index *ix;
  int64_t count = 0;
  struct timespec t0, t1;

  clock_gettime(CLOCK_MONOTONIC, &t0);
  /* A key may only be created together with a new store. */
  bool new_store = access(d->cfg->store_path, F_OK) != 0;
  if (d->store == NULL &&
      (optout_load_key(d->cfg->store_key_file, new_store, d->optout_key,
                       &diag) != 0 ||
       store_open(d->cfg->store_path, &d->store, &diag) != 0)) {
    diag_join(&diag, d->store_problem, sizeof(d->store_problem));
    diag_free(&diag);
    return false;
  }
  diag_free(&diag);
  if (store_optout_count(d->store, &count) != 0 ||
      (ix = optout_index_new((size_t)count)) == NULL) {
    snprintf(d->store_problem, sizeof(d->store_problem),
             "cannot read the opt-out store");
    return false;
  }
  if (store_optout_each(d->store, add_loaded, &ix) != 0 || ix == NULL) {
    optout_index_free(ix);
    snprintf(d->store_problem, sizeof(d->store_problem),
             "cannot read the opt-out store");
    return false;
  }
  if (store_each_drain(d->store, add_drained, d) != 0)
    log_event(LOG_ERROR, "drain_state_unreadable", NULL);
  struct optout_index *old = atomic_exchange(&d->optouts, ix);
  if (old)
    daemon_retire(d, old, release_index);
  d->store_problem[0] = '\0';
  atomic_store_explicit(&d->store_healthy, true, memory_order_release);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  log_event(LOG_INFO, "optouts_loaded", "count=%zu bytes=%zu seconds=%.3f",
            optout_index_count(ix), optout_index_bytes(ix),
            (double)(t1.tv_sec - t0.tv_sec) +
                (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
  purge(d);
  return true;
}

static void on_store_timer(uv_timer_t *t)
{
  struct daemon *d = t->data;

  if (atomic_load(&d->store_healthy)) {
    purge(d);
    return;
  }
  if (recover(d)) {
    uv_timer_start(t, on_store_timer, PURGE_INTERVAL_MS, PURGE_INTERVAL_MS);
    return;
  }
  char q[300];
  log_event(LOG_ERROR, "store_unavailable", "problem=%s retry_ms=%d",
            log_quote(d->store_problem, q, sizeof(q)), STORE_RETRY_MS);
}

/* Fails closed and schedules recovery. */
static void unhealthy(struct daemon *d, const char *problem)
{
  char q[300];

  atomic_store_explicit(&d->store_healthy, false, memory_order_release);
  snprintf(d->store_problem, sizeof(d->store_problem), "%s", problem);
  log_event(LOG_ERROR, "store_unavailable", "problem=%s routing=nogeo",
            log_quote(problem, q, sizeof(q)));
  /* Reopen from scratch: the index may now differ from the store. */
  store_close(d->store);
  d->store = NULL;
  uv_timer_start(&d->store_timer, on_store_timer, STORE_RETRY_MS,
                 STORE_RETRY_MS);
}

void privacy_start(struct daemon *d)
{
  uv_timer_init(d->loop, &d->store_timer);
  d->store_timer.data = d;
  if (recover(d)) {
    uv_timer_start(&d->store_timer, on_store_timer, PURGE_INTERVAL_MS,
                   PURGE_INTERVAL_MS);
  } else {
    char q[300];
    log_event(LOG_ERROR, "store_unavailable", "problem=%s routing=nogeo",
              log_quote(d->store_problem, q, sizeof(q)));
    uv_timer_start(&d->store_timer, on_store_timer, STORE_RETRY_MS,
                   STORE_RETRY_MS);
  }
}

void privacy_stop(struct daemon *d)
{
  uv_close((uv_handle_t *)&d->store_timer, NULL);
}

/* ---- admin methods ------------------------------------------------------ */

/* Validated arguments of an optout.* call. */
struct optout_args {
  struct optout_uid uid;
  uint8_t uid_bytes[16];
  char actor[GS_ACTOR_MAX + 1];
  char reason[GS_REASON_TEXT_MAX + 1];
  bool has_reason;
};

static bool parse(struct daemon *d, const struct rpc_request *req,
                  const char *const *allowed, bool need_actor,
                  struct optout_args *a, char *why, size_t why_size)
{
  const msgpack_object *user = rpc_arg(req->args, "user");
  const msgpack_object *actor = rpc_arg(req->args, "actor");
  const msgpack_object *reason = rpc_arg(req->args, "reason");

  memset(a, 0, sizeof(*a));
  if (!rpc_check_keys(req->args, allowed, why, why_size))
    return false;
  /* Messages never repeat the user id: it must not reach logs either. */
  if (user == NULL) {
    snprintf(why, why_size, "user is required");
    return false;
  }
  if (!rpc_valid_text(user, GS_USER_MAX)) {
    snprintf(why, why_size,
             "user must be 1..%d bytes of UTF-8 without NUL bytes",
             GS_USER_MAX);
    return false;
  }
  if (need_actor && actor == NULL) {
    snprintf(why, why_size, "actor is required: who makes this change");
    return false;
  }
  if (actor && !rpc_valid_text(actor, GS_ACTOR_MAX)) {
    snprintf(why, why_size,
             "actor must be 1..%d bytes of UTF-8 without NUL bytes",
             GS_ACTOR_MAX);
    return false;
  }
  if (reason && !rpc_valid_text(reason, GS_REASON_TEXT_MAX)) {
    snprintf(why, why_size,
             "reason must be 1..%d bytes of UTF-8 without NUL bytes",
             GS_REASON_TEXT_MAX);
    return false;
  }
  optout_hash(d->optout_key, user->via.str.ptr, user->via.str.size, &a->uid);
  optout_uid_bytes(&a->uid, a->uid_bytes);
  if (actor)
    rpc_str_copy(actor->via.str, a->actor, sizeof(a->actor));
  if (reason) {
    rpc_str_copy(reason->via.str, a->reason, sizeof(a->reason));
    a->has_reason = true;
  }
  return true;
}

/* Makes the index show uid as opted out (on) or not; grows it if needed. */
static int index_apply(struct daemon *d, const struct optout_uid *uid, bool on)
{
  struct optout_index *ix = atomic_load(&d->optouts);

  if (!on) {
    optout_index_remove(ix, uid);
    return 0;
  }
  if (optout_index_add(ix, uid) != GS_ERR_LIMIT)
    return 0;
  struct optout_index *g = optout_index_grown(ix);
  if (g == NULL)
    return GS_ERR_NOMEM;
  optout_index_add(g, uid);
  atomic_store_explicit(&d->optouts, g, memory_order_release);
  daemon_retire(d, ix, release_index);
  return 0;
}

static bool store_ready(struct daemon *d, uint32_t msgid, msgpack_packer *pk)
{
  if (atomic_load(&d->store_healthy))
    return true;
  rpc_pack_error(pk, msgid, GS_CODE_STORE_UNAVAILABLE,
                 "the opt-out store is unavailable (%s); routing fails "
                 "closed meanwhile",
                 d->store_problem[0] ? d->store_problem : "recovering");
  return false;
}

static void set_or_clear(struct daemon *d, const struct rpc_request *req,
                         bool on, msgpack_packer *pk)
{
  static const char *const allowed[] = {"user", "actor", "reason", NULL};
  struct optout_args a;
  char why[256];
  bool changed = false;
  int64_t since = 0;

  if (!parse(d, req, allowed, true, &a, why, sizeof(why))) {
    rpc_pack_error(pk, req->msgid, GS_CODE_BAD_REQUEST, "%s", why);
    return;
  }
  if (!store_ready(d, req->msgid, pk))
    return;
  if (store_optout_set(d->store, a.uid_bytes, on, a.actor,
                       a.has_reason ? a.reason : NULL, &changed) != 0) {
    unhealthy(d, "a write to the opt-out store failed");
    rpc_pack_error(pk, req->msgid, GS_CODE_STORE_UNAVAILABLE,
                   "the change was not recorded: the opt-out store failed");
    return;
  }
  if (index_apply(d, &a.uid, on) != 0) {
    unhealthy(d, "out of memory updating the opt-out index");
    rpc_pack_error(pk, req->msgid, GS_CODE_STORE_UNAVAILABLE,
                   "recorded, but the index could not be updated; routing "
                   "fails closed until it is reloaded");
    return;
  }
  bool opted;
  store_optout_get(d->store, a.uid_bytes, &opted, &since);
  log_event(LOG_INFO, on ? "optout_set" : "optout_cleared", "changed=%d",
            changed);
  rpc_pack_result_head(pk, req->msgid);
  msgpack_pack_map(pk, on ? 3 : 2);
  rpc_pack_kv_bool(pk, "opted_out", on);
  rpc_pack_kv_bool(pk, "changed", changed);
  if (on)
    rpc_pack_kv_i64(pk, "since", since);
}

struct history_ctx {
  msgpack_packer *pk;
  size_t n;
  bool count_only;
};

static void on_event(void *ctx, int64_t at, const char *action,
                     const char *actor, const char *reason)
{
  struct history_ctx *h = ctx;
  h->n++;
  if (h->count_only)
    return;
  msgpack_pack_map(h->pk, reason ? 4 : 3);
  rpc_pack_kv_i64(h->pk, "at", at);
  rpc_pack_kv_str(h->pk, "action", action);
  rpc_pack_kv_str(h->pk, "actor", actor);
  if (reason)
    rpc_pack_kv_str(h->pk, "reason", reason);
}

static void get_or_export(struct daemon *d, const struct rpc_request *req,
                          bool export, msgpack_packer *pk)
{
  static const char *const allowed[] = {"user", NULL};
  struct optout_args a;
  char why[256];
  bool opted = false;
  int64_t since = 0;

  if (!parse(d, req, allowed, false, &a, why, sizeof(why))) {
    rpc_pack_error(pk, req->msgid, GS_CODE_BAD_REQUEST, "%s", why);
    return;
  }
  if (!store_ready(d, req->msgid, pk))
    return;
  struct history_ctx h = {pk, 0, true};
  if (store_optout_get(d->store, a.uid_bytes, &opted, &since) != 0 ||
      (export && store_optout_history(d->store, a.uid_bytes, on_event, &h))) {
    rpc_pack_error(pk, req->msgid, GS_CODE_STORE_UNAVAILABLE,
                   "cannot read the opt-out store");
    return;
  }
  rpc_pack_result_head(pk, req->msgid);
  msgpack_pack_map(pk, (opted ? 2 : 1) + (export ? 1 : 0));
  rpc_pack_kv_bool(pk, "opted_out", opted);
  if (opted)
    rpc_pack_kv_i64(pk, "since", since);
  if (export) {
    rpc_pack_str(pk, "history");
    msgpack_pack_array(pk, h.n);
    h.count_only = false;
    h.n = 0;
    store_optout_history(d->store, a.uid_bytes, on_event, &h);
  }
}

static void erase(struct daemon *d, const struct rpc_request *req,
                  msgpack_packer *pk)
{
  static const char *const allowed[] = {"user", "actor", NULL};
  struct optout_args a;
  char why[256];
  int erased = 0;
  bool opted = false;
  int64_t since;

  if (!parse(d, req, allowed, true, &a, why, sizeof(why))) {
    rpc_pack_error(pk, req->msgid, GS_CODE_BAD_REQUEST, "%s", why);
    return;
  }
  if (!store_ready(d, req->msgid, pk))
    return;
  if (store_optout_erase(d->store, a.uid_bytes, &erased) != 0) {
    unhealthy(d, "a write to the opt-out store failed");
    rpc_pack_error(pk, req->msgid, GS_CODE_STORE_UNAVAILABLE,
                   "nothing was erased: the opt-out store failed");
    return;
  }
  if (store_optout_get(d->store, a.uid_bytes, &opted, &since) != 0) {
    rpc_pack_error(pk, req->msgid, GS_CODE_STORE_UNAVAILABLE,
                   "the history was erased, but the opt-out state could not "
                   "be read back; ask again with optout.get");
    return;
  }
  char q[200];
  log_event(LOG_INFO, "optout_history_erased", "events=%d actor=%s", erased,
            log_quote(a.actor, q, sizeof(q)));
  rpc_pack_result_head(pk, req->msgid);
  msgpack_pack_map(pk, 2);
  rpc_pack_kv_u64(pk, "erased_events", (uint64_t)erased);
  rpc_pack_kv_bool(pk, "opted_out", opted);
}

static void set_many(struct daemon *d, const struct rpc_request *req,
                     msgpack_packer *pk)
{
  static const char *const allowed[] = {"users", "actor", "reason", NULL};
  const msgpack_object *users = rpc_arg(req->args, "users");
  const msgpack_object *actor = rpc_arg(req->args, "actor");
  const msgpack_object *reason = rpc_arg(req->args, "reason");
  char why[256], actor_text[GS_ACTOR_MAX + 1],
      reason_text[GS_REASON_TEXT_MAX + 1];
  uint8_t(*uids)[16] = NULL;
  struct optout_uid *parsed = NULL;
  bool *changed = NULL;
  uint32_t n;
  size_t added = 0;

  if (!rpc_check_keys(req->args, allowed, why, sizeof(why))) {
    rpc_pack_error(pk, req->msgid, GS_CODE_BAD_REQUEST, "%s", why);
    return;
  }
  if (users == NULL || users->type != MSGPACK_OBJECT_ARRAY ||
      users->via.array.size == 0 || users->via.array.size > GS_BATCH_MAX) {
    rpc_pack_error(pk, req->msgid, GS_CODE_BAD_REQUEST,
                   "users must be a list of 1..%d user ids", GS_BATCH_MAX);
    return;
  }
  if (!rpc_valid_text(actor, GS_ACTOR_MAX) ||
      (reason && !rpc_valid_text(reason, GS_REASON_TEXT_MAX))) {
    rpc_pack_error(pk, req->msgid, GS_CODE_BAD_REQUEST,
                   "actor (1..%d bytes) is required; reason is 1..%d bytes",
                   GS_ACTOR_MAX, GS_REASON_TEXT_MAX);
    return;
  }
  n = users->via.array.size;
  for (uint32_t i = 0; i < n; i++)
    if (!rpc_valid_text(&users->via.array.ptr[i], GS_USER_MAX)) {
      rpc_pack_error(pk, req->msgid, GS_CODE_BAD_REQUEST,
                     "users[%u] must be 1..%d bytes of UTF-8 without NUL "
                     "bytes; nothing was recorded",
                     i, GS_USER_MAX);
      return;
    }
  if (!store_ready(d, req->msgid, pk))
    return;
  uids = malloc(n * sizeof(*uids));
  parsed = malloc(n * sizeof(*parsed));
  changed = calloc(n, sizeof(*changed));
  if (uids == NULL || parsed == NULL || changed == NULL) {
    rpc_pack_error(pk, req->msgid, GS_CODE_INTERNAL, "out of memory");
    goto done;
  }
  for (uint32_t i = 0; i < n; i++) {
    const msgpack_object *u = &users->via.array.ptr[i];
    optout_hash(d->optout_key, u->via.str.ptr, u->via.str.size, &parsed[i]);
    optout_uid_bytes(&parsed[i], uids[i]);
  }
  rpc_str_copy(actor->via.str, actor_text, sizeof(actor_text));
  if (reason)
    rpc_str_copy(reason->via.str, reason_text, sizeof(reason_text));
  if (store_optout_set_many(d->store, (const uint8_t(*)[16])uids, n, actor_text,
                            reason ? reason_text : NULL, changed) != 0) {
    unhealthy(d, "a write to the opt-out store failed");
    rpc_pack_error(pk, req->msgid, GS_CODE_STORE_UNAVAILABLE,
                   "nothing was recorded: the opt-out store failed");
    goto done;
  }
  for (uint32_t i = 0; i < n; i++) {
    if (index_apply(d, &parsed[i], true) != 0) {
      unhealthy(d, "out of memory updating the opt-out index");
      rpc_pack_error(pk, req->msgid, GS_CODE_STORE_UNAVAILABLE,
                     "recorded, but the index could not be updated");
      goto done;
    }
    added += changed[i];
  }
  log_event(LOG_INFO, "optout_set_many", "users=%u added=%zu", n, added);
  rpc_pack_result_head(pk, req->msgid);
  msgpack_pack_map(pk, 2);
  rpc_pack_kv_u64(pk, "added", added);
  rpc_pack_kv_u64(pk, "already", n - added);
done:
  free(uids);
  free(parsed);
  free(changed);
}

bool privacy_dispatch(struct daemon *d, const struct rpc_request *req,
                      msgpack_packer *pk)
{
  if (rpc_str_is(req->method, "optout.set")) {
    set_or_clear(d, req, true, pk);
  } else if (rpc_str_is(req->method, "optout.clear")) {
    set_or_clear(d, req, false, pk);
  } else if (rpc_str_is(req->method, "optout.get")) {
    get_or_export(d, req, false, pk);
  } else if (rpc_str_is(req->method, "optout.export")) {
    get_or_export(d, req, true, pk);
  } else if (rpc_str_is(req->method, "optout.erase")) {
    erase(d, req, pk);
  } else if (rpc_str_is(req->method, "optout.set_many")) {
    set_many(d, req, pk);
  } else if (rpc_str_is(req->method, "optout.count")) {
    char why[128];
    int64_t count = 0;
    if (!rpc_check_keys(req->args, (const char *const[]){NULL}, why,
                        sizeof(why)))
      rpc_pack_error(pk, req->msgid, GS_CODE_BAD_REQUEST, "optout.count: %s",
                     why);
    else if (!store_ready(d, req->msgid, pk))
      ; /* store_ready packed the error */
    else if (store_optout_count(d->store, &count) != 0)
      rpc_pack_error(pk, req->msgid, GS_CODE_STORE_UNAVAILABLE,
                     "cannot read the opt-out store");
    else {
      rpc_pack_result_head(pk, req->msgid);
      msgpack_pack_map(pk, 1);
      rpc_pack_kv_i64(pk, "count", count);
    }
  } else {
    return false;
  }
  return true;
}
