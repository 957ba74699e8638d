/*
 * reload: building, publishing and retiring snapshots (map + database +
 * route table), and data-center drain state. See daemon.h for the
 * lifetime rules.
 *
 * A reload builds beside the live snapshot on the libuv thread pool, so no
 * event loop waits on it; the swap happens on the control loop. A failed
 * build keeps the old snapshot. Reload requests that arrive during a build
 * are served by one more build after it, since the files may have changed
 * after the running build read them.
 */
#include <libgen.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "log.h"
#include "store.h"

#define QUIET_MS 1000 /* file changes settle this long before a rebuild */
#define RETIRE_POLL_MS 10

static void snapshot_free(struct snapshot *s)
{
  if (s == NULL)
    return;
  wbuf_free(&s->frags);
  table_free(s->table);
  dcmap_free(s->map);
  geo_close(s->geo);
  free(s->dc_answers);
  free(s);
}

/* Packs the reply pieces route.c copies (see struct snapshot). */
static int encode_fragments(struct snapshot *s)
{
  msgpack_packer pk;
  size_t at;

  msgpack_packer_init(&pk, &s->frags, wbuf_write);
  for (size_t i = 0; i < s->map->ndcs; i++) {
    at = s->frags.len;
    rpc_pack_kv_str(&pk, "dc", s->map->dcs[i].id);
    rpc_pack_kv_str(&pk, "endpoint", s->map->dcs[i].endpoint);
    s->dc_frag[i][0] = (uint32_t)at;
    s->dc_frag[i][1] = (uint32_t)(s->frags.len - at);
  }
  for (int r = 0; r < GS_REASON_COUNT_; r++) {
    at = s->frags.len;
    rpc_pack_kv_str(&pk, "reason", gs_reason_name(r));
    s->reason_frag[r][0] = (uint32_t)at;
    s->reason_frag[r][1] = (uint32_t)(s->frags.len - at);
  }
  return s->frags.failed ? GS_ERR_NOMEM : 0;
}

/* Builds a snapshot from the configured files; thread-safe. */
static int build(const struct config *cfg, struct snapshot **out,
                 struct diag *d)
{
  struct snapshot *s = calloc(1, sizeof(*s));
  struct timespec t0, t1;
  int rc;

  if (s == NULL)
    return GS_ERR_NOMEM;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  if ((rc = dcmap_load(cfg->geo_map, &s->map, d)) != 0 ||
      (rc = geo_open(cfg->geo_database, &s->geo, d)) != 0 ||
      (rc = table_build(s->map, s->geo, &s->table, d)) != 0) {
    snapshot_free(s);
    return rc;
  }
  if ((rc = encode_fragments(s)) != 0) {
    snapshot_free(s);
    return rc;
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  s->build_seconds =
      (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  s->loaded_at = time(NULL);
  *out = s;
  return 0;
}

void snapshot_set_drained(struct snapshot *s, size_t dc, bool on)
{
  uint64_t bit = (uint64_t)1 << (dc % 64);
  if (on)
    atomic_fetch_or(&s->drained[dc / 64], bit);
  else
    atomic_fetch_and(&s->drained[dc / 64], ~bit);
}

bool snapshot_is_drained(const struct snapshot *s, size_t dc)
{
  return (atomic_load_explicit(&s->drained[dc / 64], memory_order_relaxed) >>
          (dc % 64)) &
         1;
}

static void on_retire_poll(uv_timer_t *t)
{
  struct daemon *d = t->data;
  struct retired **p = &d->retired;

  while (*p) {
    struct retired *r = *p;
    bool quiet = true;
    for (int i = 0; i < d->nworkers && quiet; i++)
      quiet = atomic_load(&d->workers[i].seen_epoch) >= r->before;
    if (quiet) {
      *p = r->next;
      r->release(d, r->object);
      free(r);
    } else {
      p = &r->next;
    }
  }
  if (d->retired == NULL)
    uv_timer_stop(t);
}

/*
 * Frees object with release once no worker can still be reading it: the
 * caller has just unpublished it. Control loop only.
 */
void daemon_retire(struct daemon *d, void *object,
                   void (*release)(struct daemon *, void *))
{
  struct retired *r = malloc(sizeof(*r));
  uint64_t epoch = atomic_fetch_add(&d->epoch, 1) + 1;

  if (r == NULL) {
    /* Cannot track it: keeping it is safe, freeing it is not. */
    log_event(LOG_ERROR, "retire_out_of_memory", NULL);
    return;
  }
  r->object = object;
  r->release = release;
  r->before = epoch;
  r->next = d->retired;
  d->retired = r;
  if (atomic_load(&d->stopping))
    return; /* the workers are going; everything is freed at the end */
  for (int i = 0; i < d->nworkers; i++)
    uv_async_send(&d->workers[i].wake);
  uv_timer_start(&d->retire_timer, on_retire_poll, RETIRE_POLL_MS,
                 RETIRE_POLL_MS);
}

void daemon_release_snapshot(struct daemon *d, void *object)
{
  stats_fold_snapshot(d, object);
  snapshot_free(object);
}

/* Makes s current (control loop only). s gets drain bits and counters. */
static int publish(struct daemon *d, struct snapshot *s)
{
  size_t ndcs = s->map->ndcs;

  /* cfg->workers, not d->nworkers: the first table is published before
   * the workers exist. */
  s->dc_answers =
      calloc((size_t)d->cfg->workers * ndcs, sizeof(*s->dc_answers));
  if (s->dc_answers == NULL)
    return GS_ERR_NOMEM;
  share_name_dcs(d, s);
  for (size_t i = 0; i < d->ndrained; i++) {
    int dc = dcmap_find_dc(s->map, d->drained_ids[i]);
    if (dc >= 0)
      snapshot_set_drained(s, (size_t)dc, true);
  }
  s->generation = ++d->generation;
  struct snapshot *old = atomic_exchange(&d->current, s);
  if (old)
    daemon_retire(d, old, daemon_release_snapshot);
  return 0;
}

static void log_snapshot(const char *event, const struct snapshot *s)
{
  struct table_stats st;
  table_get_stats(s->table, &st);
  log_event(LOG_INFO, event,
            "generation=%llu dcs=%zu ranges=%zu answers=%zu bytes=%zu "
            "build_seconds=%.3f",
            (unsigned long long)s->generation, s->map->ndcs, st.ranges,
            st.answers, st.bytes, s->build_seconds);
}

int reload_initial(struct daemon *d, struct diag *diag)
{
  struct snapshot *s;
  int rc = build(d->cfg, &s, diag);

  if (rc != 0)
    return rc;
  uv_timer_init(d->loop, &d->retire_timer);
  d->retire_timer.data = d;
  if ((rc = publish(d, s)) != 0) {
    snapshot_free(s);
    return rc;
  }
  d->last_build_seconds = s->build_seconds;
  log_snapshot("table_loaded", s);
  return 0;
}

static void build_work(uv_work_t *req)
{
  struct daemon *d = req->data;
  struct diag diag = DIAG_INIT;

  d->built = NULL;
  d->build_error[0] = '\0';
  if (build(d->cfg, &d->built, &diag) != 0)
    diag_join(&diag, d->build_error, sizeof(d->build_error));
  diag_free(&diag);
}

static void start_build(struct daemon *d);

static void build_done(uv_work_t *req, int status)
{
  struct daemon *d = req->data;
  struct reload_waiter *w = d->waiters;
  int rc = 0;

  d->building = false;
  d->waiters = NULL;
  if (atomic_load(&d->stopping)) {
    /* Shutting down: workers may be gone; do not publish. */
    snapshot_free(d->built);
    d->built = NULL;
    snprintf(d->build_error, sizeof(d->build_error), "shutting down");
    status = UV_ECANCELED;
  }
  if (status != 0 || d->built == NULL) {
    rc = GS_ERR_INVALID;
    if (d->build_error[0] == '\0')
      snprintf(d->build_error, sizeof(d->build_error), "build cancelled");
  } else if ((rc = publish(d, d->built)) != 0) {
    snapshot_free(d->built);
    snprintf(d->build_error, sizeof(d->build_error), "%s", gs_strerror(rc));
  }
  if (rc == 0) {
    d->reloads_ok++;
    d->last_build_seconds = d->built->build_seconds;
    log_snapshot("reload", d->built);
  } else {
    char q[1100];
    d->reloads_failed++;
    log_event(LOG_ERROR, "reload_failed", "kept_generation=%llu error=%s",
              (unsigned long long)d->generation,
              log_quote(d->build_error, q, sizeof(q)));
  }
  d->built = NULL;
  while (w) {
    struct reload_waiter *next = w->next;
    if (w->done)
      w->done(w->arg, rc, rc ? d->build_error : NULL);
    free(w);
    w = next;
  }
  if (d->build_again && !atomic_load(&d->stopping)) {
    d->build_again = false;
    d->waiters = d->next_waiters;
    d->next_waiters = NULL;
    start_build(d);
  }
}

static void start_build(struct daemon *d)
{
  d->building = true;
  d->build_req.data = d;
  if (uv_queue_work(d->loop, &d->build_req, build_work, build_done) != 0) {
    d->building = false;
    build_done(&d->build_req, UV_ECANCELED);
  }
}

void reload_request(struct daemon *d, void (*done)(void *, int, const char *),
                    void *arg)
{
  struct reload_waiter *w = calloc(1, sizeof(*w));

  if (w == NULL) {
    if (done)
      done(arg, GS_ERR_NOMEM, "out of memory");
    return;
  }
  w->done = done;
  w->arg = arg;
  if (d->building) {
    w->next = d->next_waiters;
    d->next_waiters = w;
    d->build_again = true;
    return;
  }
  w->next = d->waiters;
  d->waiters = w;
  start_build(d);
}

/* ---- file watch ------------------------------------------------------- */

static void on_quiet(uv_timer_t *t)
{
  struct daemon *d = t->data;
  log_event(LOG_INFO, "files_changed", "action=reload");
  reload_request(d, NULL, NULL);
}

static void on_fs_event(uv_fs_event_t *h, const char *filename, int events,
                        int status)
{
  struct daemon *d = h->loop->data;
  const char *watched = h->data;
  (void)events;

  if (status < 0 || filename == NULL || strcmp(filename, watched) != 0)
    return;
  /* Editors and copies write in steps: wait for a quiet period. */
  uv_timer_start(&d->quiet_timer, on_quiet, QUIET_MS, 0);
}

static int watch(struct daemon *d, uv_fs_event_t *h, const char *path)
{
  char *copy1 = strdup(path), *copy2 = strdup(path);
  int rc = UV_ENOMEM;

  if (copy1 && copy2) {
    /* Watch the folder: replacing a file by rename keeps being seen. */
    h->data = strdup(basename(copy1));
    uv_fs_event_init(d->loop, h);
    rc = h->data ? uv_fs_event_start(h, on_fs_event, dirname(copy2), 0)
                 : UV_ENOMEM;
  }
  free(copy1);
  free(copy2);
  return rc;
}

int reload_watch(struct daemon *d)
{
  int rc;

  uv_timer_init(d->loop, &d->quiet_timer);
  d->quiet_timer.data = d;
  d->loop->data = d;
  d->watching = true;
  if ((rc = watch(d, &d->watch_map, d->cfg->geo_map)) != 0 ||
      (rc = watch(d, &d->watch_db, d->cfg->geo_database)) != 0)
    return rc;
  return 0;
}

static void free_watch_name(uv_handle_t *h)
{
  free(h->data);
}

void reload_shutdown_handles(struct daemon *d)
{
  if (d->watching) {
    uv_close((uv_handle_t *)&d->watch_map, free_watch_name);
    uv_close((uv_handle_t *)&d->watch_db, free_watch_name);
    uv_close((uv_handle_t *)&d->quiet_timer, NULL);
    d->watching = false;
  }
  uv_close((uv_handle_t *)&d->retire_timer, NULL);
}

void reload_shutdown(struct daemon *d)
{
  /* Workers have stopped: nothing reads anything any more. */
  while (d->retired) {
    struct retired *r = d->retired;
    d->retired = r->next;
    r->release(d, r->object);
    free(r);
  }
  snapshot_free(atomic_exchange(&d->current, NULL));
}

/* ---- drains ----------------------------------------------------------- */

int daemon_drain(struct daemon *d, const char *dc, bool on, char *why,
                 size_t why_size)
{
  struct snapshot *s = atomic_load(&d->current);
  int idx = dcmap_find_dc(s->map, dc);
  size_t i;

  if (idx < 0) {
    snprintf(why, why_size, "no data center '%s' in the map", dc);
    return GS_CODE_NOT_FOUND;
  }
  if (d->store == NULL || !atomic_load(&d->store_healthy)) {
    snprintf(why, why_size,
             "the store is unavailable; drain state cannot "
             "be recorded");
    return GS_CODE_STORE_UNAVAILABLE;
  }
  if (store_set_drain(d->store, dc, on) != 0) {
    snprintf(why, why_size, "could not record the drain state");
    return GS_CODE_INTERNAL;
  }
  for (i = 0; i < d->ndrained; i++)
    if (strcmp(d->drained_ids[i], dc) == 0)
      break;
  if (on && i == d->ndrained) {
    void *p =
        realloc(d->drained_ids, (d->ndrained + 1) * sizeof(*d->drained_ids));
    if (p == NULL) {
      snprintf(why, why_size, "out of memory");
      return GS_CODE_INTERNAL;
    }
    d->drained_ids = p;
    snprintf(d->drained_ids[d->ndrained++], DCMAP_ID_MAX + 1, "%s", dc);
  } else if (!on && i < d->ndrained) {
    memmove(&d->drained_ids[i], &d->drained_ids[i + 1],
            (d->ndrained - i - 1) * sizeof(*d->drained_ids));
    d->ndrained--;
  }
  snapshot_set_drained(s, (size_t)idx, on);
  log_event(LOG_INFO, on ? "dc_drained" : "dc_undrained", "dc=%s", dc);
  return 0;
}
