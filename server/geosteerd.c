/*
 * geosteerd: the route server.
 *
 *   geosteerd -c FILE       run in the foreground, logging to stderr
 *   geosteerd -t -c FILE    check config, map, database and store; exit 0/1
 *   geosteerd --version
 *
 * Start-up order: config, store (drain state), first table build, worker
 * loops with their route listeners, then the control loop's admin and
 * metrics listeners, signals and file watches. Anything that fails before
 * the first "listening" line ends the process with status 1 and a message.
 *
 * Shutdown (SIGTERM/SIGINT): listeners close, connections flush the
 * replies they owe and close; whatever is still open after
 * SHUTDOWN_GRACE_MS is closed; workers are joined; the process exits 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon.h"
#include "log.h"
#include "store.h"

#define SHUTDOWN_GRACE_MS 4000  /* under the 5 s promised to operators */
#define ADMIN_MAX_MESSAGE 65536 /* admin batches (optout.set_many) */

static struct daemon daemon_state;
static uv_signal_t sig_term, sig_int, sig_hup;
static uv_timer_t admin_deadline;

static void usage(FILE *out)
{
  fprintf(out,
          "usage: geosteerd -c FILE [-t]\n"
          "       geosteerd --version\n"
          "\n"
          "  -c FILE    configuration (see docs/config.md)\n"
          "  -t         check the configuration, map, database and store,\n"
          "             print every problem, exit 0 (ok) or 1\n");
}

/* ---- workers ------------------------------------------------------------ */

static void on_worker_deadline(uv_timer_t *t)
{
  struct worker *w = t->data;
  conn_server_close_all(&w->srv);
  uv_close((uv_handle_t *)t, NULL);
}

static void on_worker_wake(uv_async_t *a)
{
  struct worker *w = a->data;
  struct daemon *d = w->d;
  /* A quiescent point: this worker holds no snapshot or index now. */
  atomic_store(&w->seen_epoch, atomic_load(&d->epoch));
  if (atomic_load(&d->stopping)) {
    conn_server_stop(&w->srv);
    uv_timer_init(&w->loop, &w->deadline);
    w->deadline.data = w;
    uv_timer_start(&w->deadline, on_worker_deadline, SHUTDOWN_GRACE_MS, 0);
    uv_unref((uv_handle_t *)&w->deadline); /* does not keep the loop alive */
    uv_close((uv_handle_t *)a, NULL);
  }
}

static void close_handle(uv_handle_t *h, void *arg)
{
  (void)arg;
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

static void worker_main(void *arg)
{
  struct worker *w = arg;
  uv_run(&w->loop, UV_RUN_DEFAULT);
  /* Only unreferenced handles (the deadline timer) can remain. */
  uv_walk(&w->loop, close_handle, NULL);
  uv_run(&w->loop, UV_RUN_DEFAULT);
}

static int start_workers(struct daemon *d, struct diag *diag)
{
  struct config *cfg = d->cfg;

  d->nworkers = cfg->workers;
  d->workers = calloc((size_t)d->nworkers, sizeof(*d->workers));
  if (d->workers == NULL)
    return GS_ERR_NOMEM;
  /* Ports bound as 0 (tests) are fixed by the first worker for the rest. */
  uint16_t ports[CONFIG_MAX_LISTEN] = {0};
  for (int i = 0; i < d->nworkers; i++) {
    struct worker *w = &d->workers[i];
    w->d = d;
    w->index = i;
    uv_loop_init(&w->loop);
    uv_async_init(&w->loop, &w->wake, on_worker_wake);
    w->wake.data = w;
    if (conn_server_init(&w->srv, &w->loop, cfg, 0, &d->open_conns,
                         route_dispatch, w, "route") != 0)
      return GS_ERR_NOMEM;
    w->srv.prefetch = route_prefetch;
    w->srv.prefetch_done = route_prefetch_done;
    w->srv.timed = true; /* the route latency histogram */
    w->srv.poll_ns = (uint64_t)cfg->busy_poll_us * 1000;
    for (size_t k = 0; k < cfg->nroute; k++) {
      struct listen_addr la = cfg->route[k];
      if (i > 0)
        la.port = ports[k];
      int rc = conn_listen_tcp(&w->srv, &la, true, i == 0 ? &ports[k] : NULL);
      if (rc != 0) {
        diag_add(diag, cfg->path, 0, "cannot listen on %s: %s", la.text,
                 uv_strerror(rc));
        return rc;
      }
    }
  }
  d->route_port = ports[0];
  if (share_init(d) != 0)
    return GS_ERR_NOMEM;
  for (size_t k = 0; k < cfg->nroute; k++) {
    char text[80];
    conn_format_listen(&cfg->route[k], ports[k], text, sizeof(text));
    log_event(LOG_INFO, "listening",
              "kind=route addr=%s workers=%d busy_poll_us=%d", text,
              d->nworkers, cfg->busy_poll_us);
  }
  for (int i = 0; i < d->nworkers; i++)
    if (uv_thread_create(&d->workers[i].thread, worker_main, &d->workers[i]) !=
        0)
      return GS_ERR_NOMEM;
  return 0;
}

/* ---- admin socket ------------------------------------------------------- */

/*
 * A socket file left by a crashed geosteerd is replaced; one that answers
 * belongs to a live geosteerd, and this one must not start.
 */
static int prepare_unix_path(const char *path, struct diag *diag)
{
  struct sockaddr_un sun;
  struct stat st;
  int fd, rc;

  if (strlen(path) >= sizeof(sun.sun_path)) {
    diag_add(diag, path, 0, "admin socket path is longer than %zu bytes",
             sizeof(sun.sun_path) - 1);
    return GS_ERR_INVALID;
  }
  if (lstat(path, &st) != 0)
    return 0;
  if (!S_ISSOCK(st.st_mode)) {
    diag_add(diag, path, 0, "exists and is not a socket; not replacing it");
    return GS_ERR_INVALID;
  }
  memset(&sun, 0, sizeof(sun));
  sun.sun_family = AF_UNIX;
  strcpy(sun.sun_path, path);
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  rc = connect(fd, (struct sockaddr *)&sun, sizeof(sun));
  close(fd);
  if (rc == 0) {
    diag_add(diag, path, 0,
             "another geosteerd is serving this admin socket; stop it first");
    return GS_ERR_INVALID;
  }
  unlink(path);
  log_event(LOG_WARN, "stale_admin_socket_replaced", "path=%s", path);
  return 0;
}

static int read_token(const char *path, char *buf, size_t size, size_t *len,
                      struct diag *diag)
{
  FILE *f = fopen(path, "rb");
  size_t n;

  if (f == NULL) {
    diag_add(diag, path, 0, "cannot read admin token: %s", strerror(errno));
    return GS_ERR_IO;
  }
  n = fread(buf, 1, size - 1, f);
  fclose(f);
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
    n--;
  buf[n] = '\0';
  if (n < 16) {
    diag_add(diag, path, 0, "admin token must be at least 16 bytes (one line)");
    return GS_ERR_INVALID;
  }
  *len = n;
  return 0;
}

/* ---- control loop ------------------------------------------------------- */

static void on_admin_deadline(uv_timer_t *t)
{
  struct daemon *d = t->data;
  conn_server_close_all(&d->admin);
  if (d->has_admin_tcp)
    conn_server_close_all(&d->admin_tcp);
  uv_close((uv_handle_t *)t, NULL);
}

static void shutdown_daemon(struct daemon *d)
{
  if (atomic_exchange(&d->stopping, true))
    return;
  /* Admin clients get the same grace as route clients, no more. */
  uv_timer_init(d->loop, &admin_deadline);
  admin_deadline.data = d;
  uv_timer_start(&admin_deadline, on_admin_deadline, SHUTDOWN_GRACE_MS, 0);
  uv_unref((uv_handle_t *)&admin_deadline);
  log_event(LOG_INFO, "stopping", "grace_ms=%d", SHUTDOWN_GRACE_MS);
  conn_server_stop(&d->admin);
  if (d->has_admin_tcp)
    conn_server_stop(&d->admin_tcp);
  metrics_stop();
  uv_close((uv_handle_t *)&sig_term, NULL);
  uv_close((uv_handle_t *)&sig_int, NULL);
  uv_close((uv_handle_t *)&sig_hup, NULL);
  reload_shutdown_handles(d);
  privacy_stop(d);
  share_stop(d);
  for (int i = 0; i < d->nworkers; i++)
    uv_async_send(&d->workers[i].wake);
}

static void on_signal(uv_signal_t *h, int signum)
{
  struct daemon *d = h->data;
  if (signum == SIGHUP) {
    log_event(LOG_INFO, "reload_requested", "by=SIGHUP");
    reload_request(d, NULL, NULL);
  } else {
    shutdown_daemon(d);
  }
}

/* -t: everything start-up would check, without binding or changing state. */
static int check_only(const char *path)
{
  struct diag diag = DIAG_INIT;
  struct config *cfg = NULL;
  struct dcmap *m = NULL;
  struct geo *g = NULL;
  struct table *t = NULL;
  char token[256];
  size_t token_len;
  int rc;

  rc = config_load(path, &cfg, &diag);
  if (rc == 0) {
    if (dcmap_load(cfg->geo_map, &m, &diag) == 0 &&
        geo_open(cfg->geo_database, &g, &diag) == 0)
      table_build(m, g, &t, &diag);
    if (cfg->has_admin_tcp)
      read_token(cfg->admin_token_file, token, sizeof(token), &token_len,
                 &diag);
    struct stat st;
    if (stat(cfg->store_path, &st) == 0) {
      struct store *s;
      bool ok = false;
      if (store_open(cfg->store_path, &s, &diag) == 0) {
        if (store_integrity_check(s, &ok) != 0 || !ok)
          diag_add(&diag, cfg->store_path, 0,
                   "PRAGMA integrity_check failed: the store is damaged");
        store_close(s);
      }
      if (stat(cfg->store_key_file, &st) != 0)
        diag_add(&diag, cfg->store_key_file, 0,
                 "the opt-out key is missing while the store exists: "
                 "restore it from the backup taken with the database "
                 "(without it, stored opt-outs cannot be matched)");
    } else {
      char *dir = strdup(cfg->store_path);
      char *slash = dir ? strrchr(dir, '/') : NULL;
      if (slash)
        *slash = '\0';
      if (dir && access(slash ? dir : ".", W_OK) != 0)
        diag_add(&diag, cfg->store_path, 0,
                 "store does not exist and its folder is not writable");
      free(dir);
    }
  }
  diag_print(&diag, stderr);
  if (diag.count == 0)
    fprintf(stderr,
            "geosteerd: %s: configuration, map, database and store "
            "are ok\n",
            path);
  rc = diag.count == 0 ? 0 : 1;
  table_free(t);
  geo_close(g);
  dcmap_free(m);
  config_free(cfg);
  diag_free(&diag);
  return rc;
}

static int run(const char *path)
{
  struct daemon *d = &daemon_state;
  struct diag diag = DIAG_INIT;
  uv_loop_t *loop = uv_default_loop();
  int rc;

  signal(SIGPIPE, SIG_IGN);
  d->loop = loop;
  if ((rc = config_load(path, &d->cfg, &diag)) != 0)
    goto fail;
  if (d->cfg->has_admin_tcp &&
      (rc = read_token(d->cfg->admin_token_file, d->admin_token,
                       sizeof(d->admin_token), &d->admin_token_len, &diag)) !=
          0)
    goto fail;
  if ((rc = reload_initial(d, &diag)) != 0)
    goto fail;
  /* Opt-outs and drains; a store problem fails closed, not fatally. */
  privacy_start(d);
  if ((rc = prepare_unix_path(d->cfg->admin_path, &diag)) != 0)
    goto fail;
  if ((rc = conn_server_init(&d->admin, loop, d->cfg, ADMIN_MAX_MESSAGE,
                             &d->admin_conns, admin_dispatch, d, "admin")) !=
          0 ||
      (rc = conn_listen_unix(&d->admin, d->cfg->admin_path)) != 0) {
    diag_add(&diag, d->cfg->admin_path, 0, "cannot listen: %s",
             rc < 0 && rc > -5000 ? uv_strerror(rc) : gs_strerror(rc));
    goto fail;
  }
  log_event(LOG_INFO, "listening", "kind=admin path=%s", d->cfg->admin_path);
  if (d->cfg->has_admin_tcp) {
    d->has_admin_tcp = true;
    uint16_t port;
    char text[80];
    if ((rc = conn_server_init(&d->admin_tcp, loop, d->cfg, ADMIN_MAX_MESSAGE,
                               &d->admin_conns, admin_dispatch, d,
                               "admin_tcp")) != 0 ||
        (rc = conn_listen_tcp(&d->admin_tcp, &d->cfg->admin_tcp, false,
                              &port)) != 0) {
      diag_add(&diag, d->cfg->path, 0, "cannot listen on %s: %s",
               d->cfg->admin_tcp.text, uv_strerror(rc));
      goto fail;
    }
    conn_format_listen(&d->cfg->admin_tcp, port, text, sizeof(text));
    log_event(LOG_INFO, "listening", "kind=admin_tcp addr=%s", text);
  }
  if (d->cfg->has_metrics) {
    uint16_t port;
    char text[80];
    if ((rc = metrics_listen(d, &d->cfg->metrics, &port)) != 0) {
      diag_add(&diag, d->cfg->path, 0, "cannot listen on %s: %s",
               d->cfg->metrics.text, uv_strerror(rc));
      goto fail;
    }
    conn_format_listen(&d->cfg->metrics, port, text, sizeof(text));
    log_event(LOG_INFO, "listening", "kind=metrics addr=%s path=/metrics",
              text);
  }
  if ((rc = reload_watch(d)) != 0)
    log_event(LOG_WARN, "file_watch_unavailable", "error=%s", uv_err_name(rc));
  uv_signal_init(loop, &sig_term);
  uv_signal_init(loop, &sig_int);
  uv_signal_init(loop, &sig_hup);
  sig_term.data = sig_int.data = sig_hup.data = d;
  uv_signal_start(&sig_term, on_signal, SIGTERM);
  uv_signal_start(&sig_int, on_signal, SIGINT);
  uv_signal_start(&sig_hup, on_signal, SIGHUP);
  if ((rc = start_workers(d, &diag)) != 0)
    goto fail;
  share_start(d);
  log_event(LOG_INFO, "started", "version=%s pid=%d", GS_VERSION,
            (int)getpid());

  uv_run(loop, UV_RUN_DEFAULT);
  /* Only unreferenced handles (the admin deadline) can remain. */
  uv_walk(loop, close_handle, NULL);
  uv_run(loop, UV_RUN_DEFAULT);

  for (int i = 0; i < d->nworkers; i++) {
    uv_thread_join(&d->workers[i].thread);
    if (uv_loop_close(&d->workers[i].loop) != 0)
      log_event(LOG_ERROR, "worker_loop_not_closed", "worker=%d", i);
    conn_server_free(&d->workers[i].srv);
  }
  reload_shutdown(d);
  share_free(d);
  conn_server_free(&d->admin);
  if (d->has_admin_tcp)
    conn_server_free(&d->admin_tcp);
  unlink(d->cfg->admin_path);
  store_close(d->store);
  free(d->workers);
  free(d->drained_ids);
  free(d->dc_totals);
  config_free(d->cfg);
  if (uv_loop_close(loop) != 0)
    log_event(LOG_ERROR, "control_loop_not_closed", NULL);
  log_event(LOG_INFO, "stopped", NULL);
  return 0;

fail:
  diag_print(&diag, stderr);
  log_event(LOG_ERROR, "start_failed", "problems=%zu", diag.count);
  diag_free(&diag);
  return 1;
}

int main(int argc, char **argv)
{
  const char *path = NULL;
  bool test = false;

  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-c") && i + 1 < argc) {
      path = argv[++i];
    } else if (!strcmp(argv[i], "-t")) {
      test = true;
    } else if (!strcmp(argv[i], "--version") || !strcmp(argv[i], "-v")) {
      printf("geosteerd %s\n", GS_VERSION);
      return 0;
    } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      usage(stdout);
      return 0;
    } else {
      fprintf(stderr, "geosteerd: unknown argument '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  if (path == NULL) {
    usage(stderr);
    return 2;
  }
  return test ? check_only(path) : run(path);
}
