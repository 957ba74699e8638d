/*
 * server_harness: runs a private geosteerd for one test, and the socket
 * and MessagePack helpers the server tests share.
 *
 * Each test starts its own daemon (the sanitized build that make test
 * names in GS_DAEMON) in a fresh temporary folder that holds its config,
 * a copy of the test map, the store, the admin socket and the log. Route
 * listeners bind port 0; the harness learns the real ports from the
 * daemon's "event=listening" log lines and waits for "event=started".
 * Criterion runs tests in parallel processes, so nothing is shared.
 *
 * The process side (spawning, the log, the config text, the folder) is in
 * daemon_harness.h, which the crash program shares; this file adds the
 * Criterion assertions, the per-test bookkeeping and the sockets.
 *
 * Invariants: a daemon never outlives its test (PR_SET_PDEATHSIG, and the
 * suite's .fini kills whatever an aborted test left running); every wait
 * is a bounded poll that fails with a message, never a timed assertion;
 * server_stop() requires exit status 0, which with LeakSanitizer also
 * means "no leak". Header-only: every function is static inline.
 */
#ifndef GS_TEST_SERVER_HARNESS_H
#define GS_TEST_SERVER_HARNESS_H

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <msgpack.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>

#include "daemon_harness.h"
#include "geosteer/client.h"
#include "geosteer/protocol.h"
#include "helpers.h"

#define HARNESS_START_WAIT_MS 20000 /* daemon start, log polled */
#define HARNESS_STOP_WAIT_MS 20000  /* SIGTERM to exit (grace is 4 s) */
#define HARNESS_IO_WAIT_MS 10000    /* one exchange on a socket */
#define HARNESS_CALL_MS 10000       /* gs_client timeout */
#define HARNESS_MAX_SERVERS 4       /* daemons alive at once in one test */
#define HARNESS_PATH_MAX 512

/* Per-test configuration: YAML lines added to the harness's config. */
struct server_opts {
  const char *listen; /* lines inside listen:, e.g. "  metrics: ..." */
  const char *store;  /* lines inside store:, e.g. "  key_file: k" */
  const char *limits; /* lines inside limits:, e.g. "  max_connections: 2" */
  const char *extra;  /* top-level lines, e.g. "trusted_proxies: []" */
  const char *asan_options; /* added to the daemon's ASAN_OPTIONS */
};

struct server {
  char dir[HARNESS_PATH_MAX / 2]; /* private folder; removed at the end */
  char config[HARNESS_PATH_MAX];  /* dir/geosteer.yaml */
  char map[HARNESS_PATH_MAX];     /* dir/map.yaml, a copy of test-map.yaml */
  char admin[HARNESS_PATH_MAX];   /* dir/admin.sock */
  char store[HARNESS_PATH_MAX];   /* dir/geosteer.db */
  char key[HARNESS_PATH_MAX];     /* dir/geosteer.key, the store's key file */
  char log[HARNESS_PATH_MAX];     /* dir/geosteerd.log: stdout + stderr */
  char asan_options[256];
  pid_t pid;             /* 0 when not running */
  long log_start;        /* offset of the current run's first log byte */
  uint16_t port;         /* route listener */
  uint16_t metrics_port; /* 0 unless listen.metrics is set */
  uint16_t admin_tcp_port;
  char route_addr[32]; /* "127.0.0.1:PORT" */
};

/* ---- small utilities --------------------------------------------------- */

/*
 * Evaluates cond every HARNESS_POLL_STEP_MS until it holds; fails the test
 * with the printf-style message after ms milliseconds.
 */
#define POLL_UNTIL(cond, ms, ...)                                              \
  do {                                                                         \
    int64_t poll_deadline_ = harness_now_ms() + (ms);                          \
    while (!(cond)) {                                                          \
      if (harness_now_ms() > poll_deadline_)                                   \
        cr_assert_fail(__VA_ARGS__);                                           \
      harness_sleep_ms(HARNESS_POLL_STEP_MS);                                  \
    }                                                                          \
  } while (0)

/* Writes data[0..len) to the file at path, replacing it. */
static inline void harness_write_bytes(const char *path, const void *data,
                                       size_t len)
{
  FILE *f = fopen(path, "wb");
  cr_assert_not_null(f, "cannot write %s: %s", path, strerror(errno));
  cr_assert_eq(fwrite(data, 1, len, f), len);
  cr_assert_eq(fclose(f), 0);
}

static inline void harness_write_file(const char *path, const char *text)
{
  harness_write_bytes(path, text, strlen(text));
}

static inline void harness_copy_file(const char *from, const char *to)
{
  char *text = harness_read_file(from, 0, NULL);
  cr_assert_not_null(text, "cannot read %s", from);
  harness_write_file(to, text);
  free(text);
}

/* The fixture at rel (in the source tree) as an absolute path in out. */
static inline void harness_fixture(const char *rel, char out[PATH_MAX])
{
  cr_assert_not_null(realpath(src_path(rel), out),
                     "fixture %s missing (GS_SOURCE_DIR?)", rel);
}

/* ---- the daemon's lifetime --------------------------------------------- */

/*
 * What the suite's .fini needs to clean up after a test that failed:
 * copies, not pointers, since a failed assertion leaves the test's stack
 * (where its struct server lives) before .fini runs.
 */
struct harness_slot {
  const void *owner; /* the struct server, compared only; NULL: free */
  pid_t pid;         /* running daemon, 0 if none */
  long log_start;
  char dir[HARNESS_PATH_MAX / 2];
  char log[HARNESS_PATH_MAX];
};

static struct harness_slot harness_live[HARNESS_MAX_SERVERS];

/* The slot of s; claims a free one when claim is set. */
static inline struct harness_slot *harness_slot_of(const void *s, bool claim)
{
  for (int i = 0; i < HARNESS_MAX_SERVERS; i++)
    if (harness_live[i].owner == s)
      return &harness_live[i];
  for (int i = 0; i < HARNESS_MAX_SERVERS && claim; i++)
    if (harness_live[i].owner == NULL) {
      harness_live[i].owner = s;
      return &harness_live[i];
    }
  cr_assert(!claim, "more than %d daemons in one test", HARNESS_MAX_SERVERS);
  return NULL;
}

static inline const char *harness_daemon_path(void)
{
  const char *bin = getenv("GS_DAEMON");
  return bin ? bin : "build/geosteerd-san";
}

/*
 * (Re)writes s->config from opts and s's paths (a test may point s->store
 * elsewhere first); the folder and map copy exist.
 */
static inline void server_write_config(struct server *s,
                                       const struct server_opts *o)
{
  char db[PATH_MAX];
  char *text = NULL;
  size_t len = 0;
  FILE *f;

  harness_fixture("tests/fixtures/city-test.mmdb", db);
  f = open_memstream(&text, &len);
  cr_assert_not_null(f);
  harness_print_config(f, s->admin, o ? o->listen : NULL, db, s->map, s->store,
                       o ? o->store : NULL);
  if (o && o->limits)
    fprintf(f, "limits:\n%s\n", o->limits);
  if (o && o->extra)
    fprintf(f, "%s\n", o->extra);
  fclose(f);
  harness_write_file(s->config, text);
  free(text);
}

/*
 * Makes the private folder, copies the test map into it and writes the
 * config. Does not start the daemon.
 */
static inline void server_init(struct server *s, const struct server_opts *o)
{
  memset(s, 0, sizeof(*s));
  cr_assert_not_null(harness_temp_dir(s->dir, sizeof(s->dir), "gs"),
                     "mkdtemp: %s", strerror(errno));
  snprintf(s->config, sizeof(s->config), "%s/geosteer.yaml", s->dir);
  snprintf(s->map, sizeof(s->map), "%s/map.yaml", s->dir);
  snprintf(s->admin, sizeof(s->admin), "%s/admin.sock", s->dir);
  snprintf(s->store, sizeof(s->store), "%s/geosteer.db", s->dir);
  snprintf(s->key, sizeof(s->key), "%s/geosteer.key", s->dir);
  snprintf(s->log, sizeof(s->log), "%s/geosteerd.log", s->dir);
  if (o && o->asan_options)
    snprintf(s->asan_options, sizeof(s->asan_options), "%s", o->asan_options);
  harness_copy_file(src_path("tests/fixtures/maps/test-map.yaml"), s->map);
  server_write_config(s, o);
  {
    struct harness_slot *slot = harness_slot_of(s, true);
    snprintf(slot->dir, sizeof(slot->dir), "%s", s->dir);
    snprintf(slot->log, sizeof(slot->log), "%s", s->log);
  }
}

/* The log of the current (or last) run; malloc'd. */
static inline char *server_log(const struct server *s)
{
  char *text = harness_read_file(s->log, s->log_start, NULL);
  return text ? text : strdup("(no log)");
}

/* Forks argv as harness_spawn does; fails the test if it cannot fork. */
static inline pid_t harness_fork(const char *log, char *const argv[],
                                 const char *asan_options)
{
  pid_t pid = harness_spawn(log, argv, asan_options);
  cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
  return pid;
}

/*
 * Starts the daemon on s->config and waits (bounded) until it logs
 * event=started; fills the ports. Fails the test, with the log, if the
 * daemon exits or does not start in time.
 */
static inline void server_start(struct server *s)
{
  const char *bin = harness_daemon_path();
  char *argv[] = {(char *)bin, "-c", s->config, NULL};
  int64_t deadline = harness_now_ms() + HARNESS_START_WAIT_MS;

  cr_assert_eq(s->pid, 0, "daemon already running");
  s->log_start = harness_file_size(s->log);
  s->pid = harness_fork(s->log, argv, s->asan_options);
  harness_slot_of(s, true)->pid = s->pid;
  harness_slot_of(s, true)->log_start = s->log_start;
  for (;;) {
    char *text = server_log(s);
    int status;
    if (strstr(text, "event=started")) {
      s->port = harness_listen_port(text, "route");
      s->metrics_port = harness_listen_port(text, "metrics");
      s->admin_tcp_port = harness_listen_port(text, "admin_tcp");
      cr_assert_neq(s->port, 0, "no route listening line in:\n%s", text);
      snprintf(s->route_addr, sizeof(s->route_addr), "127.0.0.1:%u",
               (unsigned)s->port);
      free(text);
      return;
    }
    if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
      s->pid = harness_slot_of(s, true)->pid = 0;
      cr_assert_fail("geosteerd exited during start (status 0x%x):\n%s",
                     (unsigned)status, text);
    }
    if (harness_now_ms() > deadline) {
      cr_assert_fail("geosteerd did not log event=started within %d ms:\n%s",
                     HARNESS_START_WAIT_MS, text);
    }
    free(text);
    harness_sleep_ms(HARNESS_POLL_STEP_MS);
  }
}

/* Sends sig to the running daemon. */
static inline void server_signal(const struct server *s, int sig)
{
  cr_assert_neq(s->pid, 0, "daemon not running");
  cr_assert_eq(kill(s->pid, sig), 0, "kill: %s", strerror(errno));
}

/*
 * Waits (bounded) for the daemon, already told to stop, to exit; requires
 * exit status 0 (with LeakSanitizer: no leaks either). The log is in the
 * failure message.
 */
static inline void server_wait_stopped(struct server *s)
{
  int status;

  cr_assert_gt(s->pid, 0, "daemon not running");
  status = harness_wait_exit(s->pid, HARNESS_STOP_WAIT_MS);
  s->pid = harness_slot_of(s, true)->pid = 0;
  if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    char *text = server_log(s);
    cr_assert_fail("geosteerd did not exit 0 after SIGTERM (%s %d):\n%s",
                   status == -1        ? "no exit within the wait, status"
                   : WIFEXITED(status) ? "exit status"
                                       : "killed by signal",
                   status == -1        ? -1
                   : WIFEXITED(status) ? WEXITSTATUS(status)
                                       : WTERMSIG(status),
                   text);
  }
}

/* Stops the daemon with SIGTERM; see server_wait_stopped. */
static inline void server_stop(struct server *s)
{
  server_signal(s, SIGTERM);
  server_wait_stopped(s);
}

/* Kills a slot's daemon if running and removes its folder. */
static inline void harness_clear_slot(struct harness_slot *slot)
{
  if (slot->pid > 0) {
    kill(slot->pid, SIGKILL);
    waitpid(slot->pid, NULL, 0);
  }
  harness_remove_dir(slot->dir);
  memset(slot, 0, sizeof(*slot));
}

/* Stops the daemon if running (status unchecked), removes the folder. */
static inline void server_destroy(struct server *s)
{
  struct harness_slot *slot = harness_slot_of(s, false);

  if (slot)
    harness_clear_slot(slot);
  s->pid = 0;
  s->dir[0] = '\0';
}

/* Suite .fini: whatever a failed test left behind. */
static inline void harness_fini(void)
{
  for (int i = 0; i < HARNESS_MAX_SERVERS; i++)
    if (harness_live[i].owner)
      harness_clear_slot(&harness_live[i]);
}

/*
 * Runs the daemon binary with args to completion (bounded wait), output
 * to dir/check.out; returns the exit status (-1: did not exit normally)
 * and the output in *out (malloc'd).
 */
static inline int harness_run_daemon(const char *dir, char *const args[],
                                     char **out)
{
  char path[HARNESS_PATH_MAX + 16];
  char *argv[16];
  int n = 0, status;

  snprintf(path, sizeof(path), "%s/check.out", dir);
  unlink(path);
  argv[n++] = (char *)harness_daemon_path();
  for (int i = 0; args[i] && n < 15; i++)
    argv[n++] = args[i];
  argv[n] = NULL;
  status =
      harness_wait_exit(harness_fork(path, argv, NULL), HARNESS_START_WAIT_MS);
  *out = harness_read_file(path, 0, NULL);
  if (*out == NULL)
    *out = strdup("");
  return status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* VmRSS of the daemon in KiB. */
static inline long server_rss_kb(const struct server *s)
{
  char path[64], line[256];
  long kb = -1;
  FILE *f;

  snprintf(path, sizeof(path), "/proc/%d/status", (int)s->pid);
  f = fopen(path, "r");
  cr_assert_not_null(f, "cannot read %s", path);
  while (fgets(line, sizeof(line), f))
    if (strncmp(line, "VmRSS:", 6) == 0)
      kb = strtol(line + 6, NULL, 10);
  fclose(f);
  cr_assert_gt(kb, 0, "no VmRSS in %s", path);
  return kb;
}

/*
 * The end of the log of the first daemon this test started, for failure
 * messages of calls that fail because the daemon died; static buffer.
 */
static inline const char *harness_log_tail(void)
{
  static char tail[4096];
  const struct harness_slot *slot = NULL;
  char *text;
  long len = 0;

  for (int i = 0; i < HARNESS_MAX_SERVERS && slot == NULL; i++)
    if (harness_live[i].owner && harness_live[i].log[0])
      slot = &harness_live[i];
  if (slot == NULL ||
      (text = harness_read_file(slot->log, slot->log_start, &len)) == NULL)
    return "(no daemon log)";
  snprintf(
      tail, sizeof(tail), "%s",
      text + (len > (long)sizeof(tail) - 1 ? len - (long)sizeof(tail) + 1 : 0));
  free(text);
  return tail;
}

/* Open file descriptors of the daemon (to see a connection accepted). */
static inline int server_fd_count(const struct server *s)
{
  char path[64];
  struct dirent *e;
  DIR *d;
  int n = 0;

  snprintf(path, sizeof(path), "/proc/%d/fd", (int)s->pid);
  d = opendir(path);
  cr_assert_not_null(d, "cannot read %s", path);
  while ((e = readdir(d)) != NULL)
    n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

/* ---- clients ----------------------------------------------------------- */

/* A client-library connection to the route listener. */
static inline gs_client *server_client(const struct server *s)
{
  gs_client *c = NULL;
  int rc = gs_client_connect(s->route_addr, HARNESS_CALL_MS, &c);
  cr_assert_eq(rc, 0, "connect %s: %s; daemon log:\n%s", s->route_addr,
               gs_client_strerror(rc), harness_log_tail());
  return c;
}

/* A client-library connection to the admin socket. */
static inline gs_client *server_admin(const struct server *s)
{
  gs_client *c = NULL;
  int rc = gs_client_connect(s->admin, HARNESS_CALL_MS, &c);
  cr_assert_eq(rc, 0, "connect %s: %s; daemon log:\n%s", s->admin,
               gs_client_strerror(rc), harness_log_tail());
  return c;
}

/* Calls an admin method that must succeed; the result lives until the
 * next call on c. */
static inline const msgpack_object *admin_call(gs_client *c, const char *method,
                                               const gs_arg *args, size_t n)
{
  const msgpack_object *r = NULL;
  gs_remote_error err = {0};
  int rc = gs_client_call(c, method, args, n, &r, &err);
  cr_assert_eq(rc, 0, "%s: %s (%s: %s); daemon log:\n%s", method,
               gs_client_strerror(rc), err.name, err.message,
               harness_log_tail());
  return r;
}

/* Calls a method that must fail with an error reply; returns its code
 * (err gets the whole error, valid until the next call on c). */
static inline int admin_call_error(gs_client *c, const char *method,
                                   const gs_arg *args, size_t n,
                                   gs_remote_error *err)
{
  const msgpack_object *r = NULL;
  int rc = gs_client_call(c, method, args, n, &r, err);
  cr_assert_eq(rc, GS_ERR_REMOTE, "%s: expected an error reply, got %s", method,
               rc == 0 ? "a result" : gs_client_strerror(rc));
  return err->code;
}

/* Routes and requires success. */
static inline gs_route_answer route_ok(gs_client *c, const char *ip)
{
  gs_route_answer a;
  gs_remote_error err = {0};
  int rc = gs_route(c, NULL, ip, NULL, false, NULL, &a, &err);
  cr_assert_eq(rc, 0, "route %s: %s (%s: %s); daemon log:\n%s",
               ip ? ip : "(peer)", gs_client_strerror(rc), err.name,
               err.message, harness_log_tail());
  return a;
}

/* ---- reading MessagePack objects --------------------------------------- */

/* The value of key in map o, or NULL. */
static inline const msgpack_object *obj_get(const msgpack_object *o,
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

static inline bool obj_is_str(const msgpack_object *o, const char *text)
{
  return o && o->type == MSGPACK_OBJECT_STR &&
         o->via.str.size == strlen(text) &&
         memcmp(o->via.str.ptr, text, o->via.str.size) == 0;
}

/* Copies a string object into buf ("" when not a string). */
static inline const char *obj_str(const msgpack_object *o, char *buf,
                                  size_t size)
{
  size_t n = 0;
  if (o && o->type == MSGPACK_OBJECT_STR) {
    n = o->via.str.size < size - 1 ? o->via.str.size : size - 1;
    memcpy(buf, o->via.str.ptr, n);
  }
  buf[n] = '\0';
  return buf;
}

/* The unsigned integer value of o, or UINT64_MAX when it is none. */
static inline uint64_t obj_u64(const msgpack_object *o)
{
  return o && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? o->via.u64
                                                         : UINT64_MAX;
}

/* The unsigned value at key of map o; fails the test when missing. */
static inline uint64_t obj_get_u64(const msgpack_object *o, const char *key)
{
  uint64_t v = obj_u64(obj_get(o, key));
  cr_assert_neq(v, UINT64_MAX, "no unsigned integer '%s' in the reply", key);
  return v;
}

/* The boolean at key of map o; fails the test when missing. */
static inline bool obj_get_bool(const msgpack_object *o, const char *key)
{
  const msgpack_object *v = obj_get(o, key);
  cr_assert(v && v->type == MSGPACK_OBJECT_BOOLEAN,
            "no boolean '%s' in the reply", key);
  return v->via.boolean;
}

/* True when map o has exactly the keys listed (NULL-terminated). */
static inline bool obj_has_exactly(const msgpack_object *o,
                                   const char *const *keys)
{
  uint32_t n = 0;
  if (o == NULL || o->type != MSGPACK_OBJECT_MAP)
    return false;
  for (const char *const *k = keys; *k; k++, n++)
    if (obj_get(o, *k) == NULL)
      return false;
  return o->via.map.size == n;
}

/*
 * Checks an error map {code, name, message}: exactly those keys, the
 * code, its documented name, a non-empty message. Returns NULL or what is
 * wrong (static text).
 */
static inline const char *error_map_problem(const msgpack_object *e, int code)
{
  static const char *const keys[] = {"code", "name", "message", NULL};
  const msgpack_object *m;

  if (!obj_has_exactly(e, keys))
    return "error is not a map of exactly {code, name, message}";
  if (obj_u64(obj_get(e, "code")) != (uint64_t)code)
    return "wrong error code";
  if (!obj_is_str(obj_get(e, "name"), gs_code_name(code)))
    return "wrong error name";
  m = obj_get(e, "message");
  if (m->type != MSGPACK_OBJECT_STR || m->via.str.size == 0)
    return "error message is not a non-empty string";
  return NULL;
}

/* NULL when o is [1, msgid, {code, name, message}, nil]; else why not. */
static inline const char *error_reply_problem(const msgpack_object *o,
                                              uint32_t msgid, int code)
{
  const msgpack_object *e;
  if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 4)
    return "not an array of 4";
  e = o->via.array.ptr;
  if (obj_u64(&e[0]) != GS_RPC_RESPONSE)
    return "not a response";
  if (obj_u64(&e[1]) != msgid)
    return "wrong msgid";
  if (e[3].type != MSGPACK_OBJECT_NIL)
    return "result is not nil";
  return error_map_problem(&e[2], code);
}

/* NULL when o is [2, "error", [{code, name, message}]]; else why not. */
static inline const char *error_notification_problem(const msgpack_object *o,
                                                     int code)
{
  const msgpack_object *e;
  if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 3)
    return "not an array of 3";
  e = o->via.array.ptr;
  if (obj_u64(&e[0]) != GS_RPC_NOTIFICATION || !obj_is_str(&e[1], "error"))
    return "not an error notification";
  if (e[2].type != MSGPACK_OBJECT_ARRAY || e[2].via.array.size != 1)
    return "params is not an array of one map";
  return error_map_problem(&e[2].via.array.ptr[0], code);
}

/* The result of o if it is [1, msgid, nil, result]; else NULL. */
static inline const msgpack_object *result_of(const msgpack_object *o,
                                              uint32_t msgid)
{
  const msgpack_object *e;
  if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 4)
    return NULL;
  e = o->via.array.ptr;
  if (obj_u64(&e[0]) != GS_RPC_RESPONSE || obj_u64(&e[1]) != msgid ||
      e[2].type != MSGPACK_OBJECT_NIL)
    return NULL;
  return &e[3];
}

/* ---- raw sockets ------------------------------------------------------- */

/* Bytes read from a socket. */
struct rbuf {
  char *data;
  size_t len, cap;
};

static inline void rbuf_free(struct rbuf *b)
{
  free(b->data);
  memset(b, 0, sizeof(*b));
}

/* Complete objects parsed from a byte buffer. */
struct replies {
  msgpack_zone zone;
  msgpack_object *obj;
  size_t n, cap;
  size_t used; /* bytes that form complete objects */
  bool bad;    /* bytes after `used` are not MessagePack */
};

/*
 * Parses every complete object in buf[0..len). The objects stay valid
 * until replies_free (their strings are copied into the zone or point
 * into buf, which must outlive them).
 */
static inline void replies_parse(struct replies *r, const char *buf, size_t len)
{
  memset(r, 0, sizeof(*r));
  msgpack_zone_init(&r->zone, 4096);
  for (;;) {
    msgpack_object o;
    size_t off = r->used;
    msgpack_unpack_return u = r->used < len
                                  ? msgpack_unpack(buf, len, &off, &r->zone, &o)
                                  : MSGPACK_UNPACK_CONTINUE;
    if (u == MSGPACK_UNPACK_CONTINUE)
      return;
    if (u != MSGPACK_UNPACK_SUCCESS && u != MSGPACK_UNPACK_EXTRA_BYTES) {
      r->bad = true;
      return;
    }
    if (r->n == r->cap) {
      r->cap = r->cap ? r->cap * 2 : 64;
      r->obj = realloc(r->obj, r->cap * sizeof(*r->obj));
      if (r->obj == NULL)
        abort();
    }
    r->obj[r->n++] = o;
    r->used = off;
  }
}

static inline void replies_free(struct replies *r)
{
  msgpack_zone_destroy(&r->zone);
  free(r->obj);
  memset(r, 0, sizeof(*r));
}

/* Number of complete objects in buf[0..len) (a prefix may be cut). */
static inline size_t harness_count_objects(const char *buf, size_t len)
{
  struct replies r;
  size_t n;
  replies_parse(&r, buf, len);
  n = r.n;
  replies_free(&r);
  return n;
}

/* A non-blocking TCP connection to 127.0.0.1:port, or -1 (errno set). */
static inline int raw_connect_port(uint16_t port)
{
  struct sockaddr_in sin = {0};
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;

  if (fd < 0)
    return -1;
  sin.sin_family = AF_INET;
  sin.sin_port = htons(port);
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

/* A non-blocking connection to a unix socket, or -1 (errno set). */
static inline int raw_connect_unix(const char *path)
{
  struct sockaddr_un sun = {0};
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

  if (fd < 0)
    return -1;
  if (strlen(path) >= sizeof(sun.sun_path)) {
    close(fd);
    errno = ENAMETOOLONG;
    return -1;
  }
  sun.sun_family = AF_UNIX;
  memcpy(sun.sun_path, path, strlen(path) + 1);
  if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

static inline int raw_connect(const struct server *s)
{
  int fd = raw_connect_port(s->port);
  cr_assert_geq(fd, 0, "connect 127.0.0.1:%u: %s", (unsigned)s->port,
                strerror(errno));
  return fd;
}

enum raw_end {
  RAW_REPLIES, /* the wanted number of objects arrived; still open */
  RAW_EOF,     /* the server closed the connection (FIN) */
  RAW_RESET,   /* the server closed it with unread input (RST) */
  RAW_TIMEOUT, /* neither within the wait */
};

static inline const char *raw_end_name(int end)
{
  static const char *const names[] = {"replies", "EOF", "reset", "timeout"};
  return end >= 0 && end <= RAW_TIMEOUT ? names[end] : "?";
}

/*
 * Sends out[0..out_len) on the non-blocking fd (as much as the server
 * takes) while reading into in, until `want` complete objects have
 * arrived (want > 0), the server closes the connection, or timeout_ms
 * pass. Thread-safe: no assertions. *sent (may be NULL) gets the bytes
 * handed to the kernel.
 */
static inline int raw_exchange(int fd, const void *out, size_t out_len,
                               struct rbuf *in, size_t want, int timeout_ms,
                               size_t *sent)
{
  int64_t deadline = harness_now_ms() + timeout_ms;
  size_t done = 0;
  bool can_send = true;
  int end = RAW_TIMEOUT;

  for (;;) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int64_t left = deadline - harness_now_ms();
    if (want > 0 && harness_count_objects(in->data, in->len) >= want) {
      end = RAW_REPLIES;
      break;
    }
    if (left <= 0)
      break;
    if (can_send && done < out_len)
      p.events |= POLLOUT;
    if (poll(&p, 1, (int)left) < 0) {
      if (errno == EINTR)
        continue;
      break;
    }
    if (p.revents & POLLOUT) {
      ssize_t w =
          send(fd, (const char *)out + done, out_len - done, MSG_NOSIGNAL);
      if (w > 0)
        done += (size_t)w;
      else if (w < 0 && errno != EAGAIN && errno != EINTR)
        can_send = false; /* closed by the server: keep reading */
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      if (in->cap - in->len < 65536) {
        in->cap = in->cap ? in->cap * 2 : 131072;
        in->data = realloc(in->data, in->cap);
        if (in->data == NULL)
          abort();
      }
      ssize_t r = recv(fd, in->data + in->len, in->cap - in->len, 0);
      if (r > 0) {
        in->len += (size_t)r;
      } else if (r == 0) {
        end = RAW_EOF;
        break;
      } else if (errno == ECONNRESET) {
        end = RAW_RESET;
        break;
      } else if (errno != EAGAIN && errno != EINTR) {
        end = RAW_RESET;
        break;
      }
    }
  }
  if (sent)
    *sent = done;
  return end;
}

/*
 * Sends from out on the non-blocking fd without reading, until all is
 * sent or the kernel takes nothing for stall_ms; returns the bytes sent.
 */
static inline size_t raw_send_until_stalled(int fd, const void *out, size_t len,
                                            int stall_ms)
{
  size_t sent = 0;

  while (sent < len) {
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    ssize_t w;
    if (poll(&p, 1, stall_ms) == 0)
      break;
    w = send(fd, (const char *)out + sent, len - sent, MSG_NOSIGNAL);
    if (w < 0 && (errno == EAGAIN || errno == EINTR))
      continue;
    if (w <= 0)
      break;
    sent += (size_t)w;
  }
  return sent;
}

/* GET path from 127.0.0.1:port; returns the whole response (malloc'd). */
static inline char *http_get(uint16_t port, const char *path)
{
  char req[256];
  struct rbuf in = {0};
  int fd = raw_connect_port(port), end;

  cr_assert_geq(fd, 0, "connect to metrics: %s", strerror(errno));
  snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: x\r\n\r\n", path);
  end = raw_exchange(fd, req, strlen(req), &in, 0, HARNESS_IO_WAIT_MS, NULL);
  cr_assert_eq(end, RAW_EOF, "metrics: %s", raw_end_name(end));
  close(fd);
  in.data = realloc(in.data, in.len + 1);
  in.data[in.len] = '\0';
  return in.data;
}

/* ---- packing requests -------------------------------------------------- */

static inline void pack_cstr(msgpack_packer *pk, const char *s)
{
  msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* [0, msgid, "route", [{"ip": ip}]] (no arguments when ip is NULL). */
static inline void pack_route(msgpack_packer *pk, uint32_t msgid,
                              const char *ip)
{
  msgpack_pack_array(pk, 4);
  msgpack_pack_uint8(pk, GS_RPC_REQUEST);
  msgpack_pack_uint32(pk, msgid);
  pack_cstr(pk, "route");
  if (ip == NULL) {
    msgpack_pack_array(pk, 0);
    return;
  }
  msgpack_pack_array(pk, 1);
  msgpack_pack_map(pk, 1);
  pack_cstr(pk, "ip");
  pack_cstr(pk, ip);
}

/* [0, msgid, method, []] */
static inline void pack_call(msgpack_packer *pk, uint32_t msgid,
                             const char *method)
{
  msgpack_pack_array(pk, 4);
  msgpack_pack_uint8(pk, GS_RPC_REQUEST);
  msgpack_pack_uint32(pk, msgid);
  pack_cstr(pk, method);
  msgpack_pack_array(pk, 0);
}

/* [0, msgid, "ping", []] */
static inline void pack_ping(msgpack_packer *pk, uint32_t msgid)
{
  pack_call(pk, msgid, "ping");
}

/* A route answer's validity: NULL, or what is wrong with result r. */
static inline const char *route_result_problem(const msgpack_object *r)
{
  static const char *const keys4[] = {"dc", "endpoint", "alternates", "reason",
                                      NULL};
  static const char *const keys5[] = {"dc",     "endpoint", "alternates",
                                      "reason", "scope",    NULL};
  static const char *const alt_keys[] = {"dc", "endpoint", NULL};
  const msgpack_object *alt;

  if (r == NULL)
    return "not a successful response";
  if (!obj_has_exactly(r, keys4) && !obj_has_exactly(r, keys5))
    return "keys are not {dc, endpoint, alternates, reason, scope?}";
  if (obj_get(r, "dc")->type != MSGPACK_OBJECT_STR ||
      obj_get(r, "endpoint")->type != MSGPACK_OBJECT_STR ||
      obj_get(r, "reason")->type != MSGPACK_OBJECT_STR)
    return "dc, endpoint or reason is not a string";
  if (obj_get(r, "scope") && obj_u64(obj_get(r, "scope")) > 128)
    return "scope is not an integer in 0..128";
  alt = obj_get(r, "alternates");
  if (alt->type != MSGPACK_OBJECT_ARRAY)
    return "alternates is not an array";
  for (uint32_t i = 0; i < alt->via.array.size; i++) {
    const msgpack_object *a = &alt->via.array.ptr[i];
    if (!obj_has_exactly(a, alt_keys) ||
        obj_get(a, "dc")->type != MSGPACK_OBJECT_STR ||
        obj_get(a, "endpoint")->type != MSGPACK_OBJECT_STR)
      return "an alternate is not {dc, endpoint} of strings";
  }
  return NULL;
}

/* Ping on a new client-library connection; the server still answers. */
static inline void server_assert_answers(const struct server *s)
{
  gs_client *c = server_client(s);
  gs_route_answer a = route_ok(c, "81.2.69.5");
  cr_assert_str_eq(a.dc, "lhr");
  gs_client_close(c);
}

#endif
