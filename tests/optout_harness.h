/*
 * optout_harness: a private geosteerd per test for the opt-out tests
 * (tests/test_privacy.c), and the small socket, MessagePack and file
 * helpers they share.
 *
 * Each test makes a fresh temporary folder holding the config, the store,
 * its key, the admin socket and the daemon's log, and starts the daemon
 * named by GS_DAEMON (the sanitized build under make test) on it. Route
 * and metrics listeners bind port 0; the real ports come from the daemon's
 * "event=listening" lines, and start waits for "event=started".
 *
 * Invariants: a daemon never outlives its test (PR_SET_PDEATHSIG, and the
 * suite's .fini kills what a failed test left running and removes the
 * folder); every wait is a bounded poll that fails with a message; oh_stop
 * requires exit status 0, which with LeakSanitizer also means "no leak".
 * Header-only: every function is static inline.
 */
#ifndef GS_TEST_OPTOUT_HARNESS_H
#define GS_TEST_OPTOUT_HARNESS_H

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <msgpack.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>

#include "geosteer/client.h"
#include "geosteer/protocol.h"
#include "helpers.h"

#define OH_START_WAIT_MS 20000 /* daemon start, log polled */
#define OH_STOP_WAIT_MS 20000  /* SIGTERM to exit (grace is 4 s) */
#define OH_CALL_MS 10000       /* one call on a client */
#define OH_POLL_STEP_MS 20
#define OH_PATH 256

struct oh_opts {
  const char *store_path;  /* NULL: DIR/geosteer.db */
  const char *store_lines; /* lines inside store:, e.g. "  key_file: k" */
  const char *extra;       /* top-level YAML lines */
  bool metrics;            /* listen.metrics on a free port */
};

struct oh_daemon {
  char dir[OH_PATH / 2];
  char config[OH_PATH];
  char admin[OH_PATH];
  char store[OH_PATH]; /* the store path written in the config */
  char key[OH_PATH];   /* its default key file, beside the store */
  char log[OH_PATH];
  pid_t pid;      /* 0 when not running */
  long log_start; /* offset of the current run's first log byte */
  uint16_t port, metrics_port;
  char route_addr[32];
};

/* The daemon of the running test, for the suite's .fini. */
static struct oh_daemon *oh_live;

static inline int64_t oh_now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void oh_sleep_ms(int ms)
{
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

/* Reads a whole file from offset from; malloc'd, NUL-terminated; *len. */
static inline char *oh_read_file(const char *path, long from, size_t *len)
{
  FILE *f = fopen(path, "rb");
  char *buf;
  long size;

  if (f == NULL)
    return NULL;
  fseek(f, 0, SEEK_END);
  size = ftell(f);
  if (from > size)
    from = size;
  fseek(f, from, SEEK_SET);
  buf = malloc((size_t)(size - from) + 1);
  cr_assert_not_null(buf);
  size = (long)fread(buf, 1, (size_t)(size - from), f);
  buf[size] = '\0';
  fclose(f);
  if (len)
    *len = (size_t)size;
  return buf;
}

static inline void oh_write_file(const char *path, const void *data, size_t len)
{
  FILE *f = fopen(path, "wb");
  cr_assert_not_null(f, "cannot write %s: %s", path, strerror(errno));
  cr_assert_eq(fwrite(data, 1, len, f), len);
  cr_assert_eq(fclose(f), 0);
}

/* True when the file at path holds the bytes needle[0..n). */
static inline bool oh_file_contains(const char *path, const void *needle,
                                    size_t n)
{
  size_t len = 0;
  char *text = oh_read_file(path, 0, &len);
  bool found = text && memmem(text, len, needle, n) != NULL;
  free(text);
  return found;
}

static inline int oh_unlink_cb(const char *path, const struct stat *st,
                               int flag, struct FTW *ftw)
{
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static inline void oh_remove_tree(const char *dir)
{
  if (dir[0])
    nftw(dir, oh_unlink_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* The fixture at rel (in the source tree) as an absolute path in out. */
static inline void oh_fixture(const char *rel, char *out)
{
  cr_assert_not_null(realpath(src_path(rel), out),
                     "fixture %s missing (GS_SOURCE_DIR?)", rel);
}

/* (Re)writes d->config. */
static inline void oh_write_config(struct oh_daemon *d, const struct oh_opts *o)
{
  char db[PATH_MAX], map[PATH_MAX];
  char *text = NULL;
  size_t len = 0;
  FILE *f;

  oh_fixture("tests/fixtures/city-test.mmdb", db);
  oh_fixture("tests/fixtures/maps/test-map.yaml", map);
  f = open_memstream(&text, &len);
  cr_assert_not_null(f);
  fprintf(f,
          "listen:\n"
          "  route: [\"127.0.0.1:0\"]\n"
          "  admin: %s\n"
          "%s"
          "geo:\n"
          "  database: %s\n"
          "  map: %s\n"
          "store:\n"
          "  path: %s\n"
          "%s%s%s%s",
          d->admin, o && o->metrics ? "  metrics: \"127.0.0.1:0\"\n" : "", db,
          map, d->store, o && o->store_lines ? o->store_lines : "",
          o && o->store_lines ? "\n" : "", o && o->extra ? o->extra : "",
          o && o->extra ? "\n" : "");
  fclose(f);
  oh_write_file(d->config, text, len);
  free(text);
}

/* Makes the private folder and the config; does not start the daemon. */
static inline void oh_init(struct oh_daemon *d, const struct oh_opts *o)
{
  const char *tmp = getenv("TMPDIR");
  char *slash;

  memset(d, 0, sizeof(*d));
  /* The admin socket path must fit sun_path (108 bytes). */
  if (tmp == NULL || tmp[0] == '\0' || strlen(tmp) > 60)
    tmp = "/tmp";
  snprintf(d->dir, sizeof(d->dir), "%s/gsp-XXXXXX", tmp);
  cr_assert_not_null(mkdtemp(d->dir), "mkdtemp: %s", strerror(errno));
  snprintf(d->config, sizeof(d->config), "%s/geosteer.yaml", d->dir);
  snprintf(d->admin, sizeof(d->admin), "%s/admin.sock", d->dir);
  snprintf(d->log, sizeof(d->log), "%s/geosteerd.log", d->dir);
  if (o && o->store_path)
    snprintf(d->store, sizeof(d->store), "%s", o->store_path);
  else
    snprintf(d->store, sizeof(d->store), "%s/geosteer.db", d->dir);
  snprintf(d->key, sizeof(d->key), "%s", d->store);
  slash = strrchr(d->key, '/');
  cr_assert_not_null(slash);
  snprintf(slash + 1, sizeof(d->key) - (size_t)(slash + 1 - d->key),
           "geosteer.key");
  oh_write_config(d, o);
  oh_live = d;
}

/* The log of the current (or last) run; malloc'd. */
static inline char *oh_log(const struct oh_daemon *d)
{
  char *text = oh_read_file(d->log, d->log_start, NULL);
  return text ? text : strdup("(no log)");
}

/* Forks argv with stdout and stderr appended to log. */
static inline pid_t oh_spawn(const char *log, char *const argv[])
{
  pid_t parent = getpid();
  pid_t pid = fork();

  cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
  if (pid == 0) {
    sigset_t none;
    int fd;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
      _exit(127);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0)
      _exit(127);
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    fd = open("/dev/null", O_RDONLY);
    if (fd >= 0)
      dup2(fd, STDIN_FILENO);
    for (int i = 3; i < 1024; i++)
      close(i);
    execv(argv[0], argv);
    _exit(127);
  }
  return pid;
}

static inline const char *oh_daemon_path(void)
{
  const char *bin = getenv("GS_DAEMON");
  return bin ? bin : "build/geosteerd-san";
}

/* "event=listening kind=KIND addr=127.0.0.1:PORT" in text, or 0. */
static inline uint16_t oh_listen_port(const char *text, const char *kind)
{
  char needle[96];
  const char *p;

  snprintf(needle, sizeof(needle),
           "event=listening kind=%s addr=127.0.0.1:", kind);
  p = strstr(text, needle);
  return p ? (uint16_t)strtoul(p + strlen(needle), NULL, 10) : 0;
}

/* Starts the daemon and waits (bounded) for event=started. */
static inline void oh_start(struct oh_daemon *d)
{
  char *argv[] = {(char *)oh_daemon_path(), "-c", d->config, NULL};
  struct stat st;
  int64_t deadline = oh_now_ms() + OH_START_WAIT_MS;

  cr_assert_eq(d->pid, 0, "daemon already running");
  d->log_start = stat(d->log, &st) == 0 ? (long)st.st_size : 0;
  d->pid = oh_spawn(d->log, argv);
  for (;;) {
    char *text = oh_log(d);
    int status;
    if (strstr(text, "event=started")) {
      d->port = oh_listen_port(text, "route");
      d->metrics_port = oh_listen_port(text, "metrics");
      cr_assert_neq(d->port, 0, "no route listening line in:\n%s", text);
      snprintf(d->route_addr, sizeof(d->route_addr), "127.0.0.1:%u",
               (unsigned)d->port);
      free(text);
      return;
    }
    if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
      d->pid = 0;
      cr_assert_fail("geosteerd exited during start (status 0x%x):\n%s",
                     (unsigned)status, text);
    }
    if (oh_now_ms() > deadline)
      cr_assert_fail("geosteerd did not log event=started within %d ms:\n%s",
                     OH_START_WAIT_MS, text);
    free(text);
    oh_sleep_ms(OH_POLL_STEP_MS);
  }
}

/* Waits (bounded) for pid; its wait status, or -1 after killing it. */
static inline int oh_wait_exit(pid_t pid, int ms)
{
  int64_t deadline = oh_now_ms() + ms;
  int status;

  for (;;) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid)
      return status;
    if (r < 0 && errno != EINTR)
      return -1;
    if (oh_now_ms() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    oh_sleep_ms(OH_POLL_STEP_MS);
  }
}

/* SIGTERM, then requires exit status 0 (the log is in the message). */
static inline void oh_stop(struct oh_daemon *d)
{
  int status;

  cr_assert_neq(d->pid, 0, "daemon not running");
  kill(d->pid, SIGTERM);
  status = oh_wait_exit(d->pid, OH_STOP_WAIT_MS);
  d->pid = 0;
  if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    char *text = oh_log(d);
    cr_assert_fail("geosteerd did not exit 0 after SIGTERM (status 0x%x):\n%s",
                   (unsigned)status, text);
  }
}

/* Kills a daemon still running and removes the folder. */
static inline void oh_destroy(struct oh_daemon *d)
{
  if (d->pid > 0) {
    kill(d->pid, SIGKILL);
    waitpid(d->pid, NULL, 0);
    d->pid = 0;
  }
  oh_remove_tree(d->dir);
  d->dir[0] = '\0';
  if (oh_live == d)
    oh_live = NULL;
}

/* Suite .fini: whatever a failed test left behind. */
static inline void oh_fini(void)
{
  if (oh_live)
    oh_destroy(oh_live);
}

/*
 * Runs a shell command to completion; output (stdout and stderr) in out;
 * returns the exit status, or -1 when it did not exit normally.
 */
static inline int oh_run(const char *cmd, char *out, size_t size)
{
  char full[8192];
  size_t used = 0;
  FILE *p;
  int status;

  snprintf(full, sizeof(full), "%s 2>&1", cmd);
  p = popen(full, "r");
  cr_assert_not_null(p);
  while (used + 1 < size) {
    size_t n = fread(out + used, 1, size - used - 1, p);
    if (n == 0)
      break;
    used += n;
  }
  out[used] = '\0';
  status = pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* ---- clients ------------------------------------------------------------ */

static inline gs_client *oh_connect(const char *where)
{
  gs_client *c = NULL;
  int rc = gs_client_connect(where, OH_CALL_MS, &c);
  cr_assert_eq(rc, 0, "connect %s: %s", where, gs_client_strerror(rc));
  return c;
}

static inline gs_client *oh_admin(const struct oh_daemon *d)
{
  return oh_connect(d->admin);
}

static inline gs_client *oh_router(const struct oh_daemon *d)
{
  return oh_connect(d->route_addr);
}

/* Calls a method that must succeed; the result lives until the next call. */
static inline const msgpack_object *oh_call(gs_client *c, const char *method,
                                            const gs_arg *args, size_t n)
{
  const msgpack_object *r = NULL;
  gs_remote_error err = {0};
  int rc = gs_client_call(c, method, args, n, &r, &err);
  cr_assert_eq(rc, 0, "%s: %s (%s: %s)", method, gs_client_strerror(rc),
               err.name, err.message);
  return r;
}

/* Calls a method that must fail with an error reply; returns its code. */
static inline int oh_call_error(gs_client *c, const char *method,
                                const gs_arg *args, size_t n,
                                gs_remote_error *err)
{
  const msgpack_object *r = NULL;
  int rc = gs_client_call(c, method, args, n, &r, err);
  cr_assert_eq(rc, GS_ERR_REMOTE, "%s: expected an error reply, got %s", method,
               rc == 0 ? "a result" : gs_client_strerror(rc));
  return err->code;
}

/* ---- reading MessagePack objects ---------------------------------------- */

static inline const msgpack_object *oh_get(const msgpack_object *o,
                                           const char *key)
{
  size_t n = strlen(key);
  if (o == NULL || o->type != MSGPACK_OBJECT_MAP)
    return NULL;
  for (uint32_t i = 0; i < o->via.map.size; i++) {
    const msgpack_object *k = &o->via.map.ptr[i].key;
    if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
        memcmp(k->via.str.ptr, key, n) == 0)
      return &o->via.map.ptr[i].val;
  }
  return NULL;
}

static inline bool oh_is_str(const msgpack_object *o, const char *text)
{
  return o && o->type == MSGPACK_OBJECT_STR &&
         o->via.str.size == strlen(text) &&
         memcmp(o->via.str.ptr, text, o->via.str.size) == 0;
}

/* The boolean at key; fails the test when missing. */
static inline bool oh_bool(const msgpack_object *o, const char *key)
{
  const msgpack_object *v = oh_get(o, key);
  cr_assert(v && v->type == MSGPACK_OBJECT_BOOLEAN, "no boolean '%s'", key);
  return v->via.boolean;
}

/* The non-negative integer at key; fails the test when missing. */
static inline uint64_t oh_u64(const msgpack_object *o, const char *key)
{
  const msgpack_object *v = oh_get(o, key);
  cr_assert(v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER,
            "no unsigned integer '%s'", key);
  return v->via.u64;
}

/* True when map o has exactly the keys listed (NULL-terminated). */
static inline bool oh_has_exactly(const msgpack_object *o,
                                  const char *const *keys)
{
  uint32_t n = 0;
  if (o == NULL || o->type != MSGPACK_OBJECT_MAP)
    return false;
  for (const char *const *k = keys; *k; k++, n++)
    if (oh_get(o, *k) == NULL)
      return false;
  return o->via.map.size == n;
}

/* ---- raw requests (arguments the client library cannot express) --------- */

/* A raw connection and the last reply read on it. */
struct oh_raw {
  int fd;
  char *in;
  size_t in_len, in_cap;
  size_t used; /* bytes of in that r->reply was read from */
  msgpack_zone zone;
  msgpack_object reply;
};

static inline void oh_raw_open(struct oh_raw *r, const char *unix_path)
{
  struct sockaddr_un sun = {0};

  memset(r, 0, sizeof(*r));
  r->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  cr_assert_geq(r->fd, 0);
  sun.sun_family = AF_UNIX;
  snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", unix_path);
  cr_assert_eq(connect(r->fd, (struct sockaddr *)&sun, sizeof(sun)), 0,
               "connect %s: %s", unix_path, strerror(errno));
  msgpack_zone_init(&r->zone, 4096);
}

static inline void oh_raw_close(struct oh_raw *r)
{
  close(r->fd);
  free(r->in);
  msgpack_zone_destroy(&r->zone);
  memset(r, 0, sizeof(*r));
  r->fd = -1;
}

/*
 * Sends bytes and reads one whole reply into r->reply, which points into
 * r->in and stays valid until the next exchange. Returns false when none
 * arrived within ms.
 */
static inline bool oh_raw_exchange(struct oh_raw *r, const void *out,
                                   size_t len, int ms)
{
  int64_t deadline = oh_now_ms() + ms;
  const char *p = out;

  /* The previous reply is no longer needed: drop its bytes. */
  if (r->used > 0) {
    memmove(r->in, r->in + r->used, r->in_len - r->used);
    r->in_len -= r->used;
    r->used = 0;
  }
  msgpack_zone_clear(&r->zone);
  while (len > 0) {
    ssize_t w = send(r->fd, p, len, MSG_NOSIGNAL);
    cr_assert_gt(w, 0, "send: %s", strerror(errno));
    p += w;
    len -= (size_t)w;
  }
  for (;;) {
    size_t off = 0;
    msgpack_unpack_return u =
        r->in_len ? msgpack_unpack(r->in, r->in_len, &off, &r->zone, &r->reply)
                  : MSGPACK_UNPACK_CONTINUE;
    if (u == MSGPACK_UNPACK_SUCCESS || u == MSGPACK_UNPACK_EXTRA_BYTES) {
      r->used = off;
      return true;
    }
    cr_assert_eq(u, MSGPACK_UNPACK_CONTINUE, "reply is not MessagePack");
    if (r->in_cap - r->in_len < 4096) {
      r->in_cap = r->in_cap ? r->in_cap * 2 : 65536;
      r->in = realloc(r->in, r->in_cap);
      cr_assert_not_null(r->in);
    }
    struct pollfd pf = {.fd = r->fd, .events = POLLIN};
    int64_t left = deadline - oh_now_ms();
    if (left <= 0 || poll(&pf, 1, (int)left) <= 0)
      return false;
    ssize_t n = recv(r->fd, r->in + r->in_len, r->in_cap - r->in_len, 0);
    if (n <= 0)
      return false;
    r->in_len += (size_t)n;
  }
}

/* The error code of reply [1, msgid, {code,...}, nil], or 0 when none. */
static inline int oh_reply_error_code(const msgpack_object *o, uint32_t msgid)
{
  const msgpack_object *e;
  if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 4)
    return -1;
  e = o->via.array.ptr;
  if (e[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER || e[0].via.u64 != 1 ||
      e[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER || e[1].via.u64 != msgid)
    return -1;
  if (e[2].type == MSGPACK_OBJECT_NIL)
    return 0;
  const msgpack_object *code = oh_get(&e[2], "code");
  return code && code->type == MSGPACK_OBJECT_POSITIVE_INTEGER
             ? (int)code->via.u64
             : -1;
}

/* The error message of an error reply, copied into buf. */
static inline const char *oh_reply_message(const msgpack_object *o, char *buf,
                                           size_t size)
{
  const msgpack_object *m = NULL;
  size_t n = 0;
  if (o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == 4)
    m = oh_get(&o->via.array.ptr[2], "message");
  if (m && m->type == MSGPACK_OBJECT_STR) {
    n = m->via.str.size < size - 1 ? m->via.str.size : size - 1;
    memcpy(buf, m->via.str.ptr, n);
  }
  buf[n] = '\0';
  return buf;
}

/* ---- the daemon's state, read from outside ------------------------------ */

/* stats.geo_lookups and stats.store.healthy. */
static inline uint64_t oh_geo_lookups(gs_client *admin, bool *healthy)
{
  const msgpack_object *r = oh_call(admin, "stats", NULL, 0);
  if (healthy)
    *healthy = oh_bool(oh_get(r, "store"), "healthy");
  return oh_u64(r, "geo_lookups");
}

/* Rows of the audit table, read with sqlite3 (read-only) on the file. */
static inline int64_t oh_audit_rows(const char *store)
{
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  int64_t n = -1;

  cr_assert_eq(sqlite3_open_v2(store, &db, SQLITE_OPEN_READONLY, NULL),
               SQLITE_OK, "open %s: %s", store, sqlite3_errmsg(db));
  sqlite3_busy_timeout(db, 5000);
  cr_assert_eq(
      sqlite3_prepare_v2(db, "SELECT count(*) FROM audit", -1, &st, NULL),
      SQLITE_OK, "%s", sqlite3_errmsg(db));
  if (sqlite3_step(st) == SQLITE_ROW)
    n = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
  cr_assert_geq(n, 0, "cannot count audit rows in %s", store);
  return n;
}

/* GET path from 127.0.0.1:port; the whole response, malloc'd. */
static inline char *oh_http_get(uint16_t port, const char *path)
{
  struct sockaddr_in sin = {0};
  char req[256], *buf = NULL;
  size_t len = 0, cap = 0;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

  cr_assert_geq(fd, 0);
  sin.sin_family = AF_INET;
  sin.sin_port = htons(port);
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  cr_assert_eq(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0,
               "connect metrics: %s", strerror(errno));
  snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\n\r\n", path);
  cr_assert_eq(send(fd, req, strlen(req), MSG_NOSIGNAL), (ssize_t)strlen(req));
  for (;;) {
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    cr_assert_gt(poll(&pf, 1, OH_CALL_MS), 0, "metrics: no answer");
    if (cap - len < 4096) {
      cap = cap ? cap * 2 : 65536;
      buf = realloc(buf, cap);
      cr_assert_not_null(buf);
    }
    ssize_t n = recv(fd, buf + len, cap - len - 1, 0);
    if (n <= 0)
      break;
    len += (size_t)n;
  }
  close(fd);
  cr_assert_not_null(buf);
  buf[len] = '\0';
  return buf;
}

#endif
