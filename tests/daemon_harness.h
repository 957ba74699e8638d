/*
 * daemon_harness: the process side of running a private geosteerd, shared
 * by the Criterion harness (server_harness.h) and the kill -9 program
 * (crash/optout_crash.c), which is built without Criterion.
 *
 * A daemon runs from a fresh temporary folder holding its config, store,
 * admin socket and log; its stdout and stderr append to the log, whose
 * "event=listening" and "event=started" lines tell when it is up and on
 * which ports. Nothing here asserts or exits: failures come back as
 * NULL, -1 or 0 for the caller to report in its own way.
 *
 * Invariants: a spawned daemon dies with the process that spawned it
 * (PR_SET_PDEATHSIG); every wait is bounded. Header-only: every function
 * is static inline.
 */
#ifndef GS_TEST_DAEMON_HARNESS_H
#define GS_TEST_DAEMON_HARNESS_H

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define HARNESS_POLL_STEP_MS 20
#define HARNESS_SUN_PATH_MAX 107 /* sizeof(sun_path) - 1 on Linux */

/* ---- time and files ----------------------------------------------------- */

static inline int64_t harness_now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void harness_sleep_ms(int ms)
{
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

/*
 * Reads a file from offset from to its end; malloc'd, NUL-terminated, the
 * caller frees it. NULL if unreadable. *len (may be NULL) gets the bytes.
 */
static inline char *harness_read_file(const char *path, long from, long *len)
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
  if (buf == NULL) {
    fclose(f);
    return NULL;
  }
  size = (long)fread(buf, 1, (size_t)(size - from), f);
  buf[size] = '\0';
  fclose(f);
  if (len)
    *len = size;
  return buf;
}

/* Size of the file at path; 0 when it does not exist yet. */
static inline long harness_file_size(const char *path)
{
  struct stat st;
  return stat(path, &st) == 0 ? (long)st.st_size : 0;
}

static inline int harness_remove_cb(const char *path, const struct stat *st,
                                    int flag, struct FTW *ftw)
{
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

/* Removes a folder and everything in it; "" is a no-op. */
static inline void harness_remove_dir(const char *dir)
{
  if (dir[0])
    nftw(dir, harness_remove_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/*
 * Makes a fresh private folder TMPDIR/NAME-XXXXXX (/tmp when TMPDIR is
 * unset or so long that dir/admin.sock would not fit sun_path). Returns
 * dir, or NULL with errno set.
 */
static inline char *harness_temp_dir(char *dir, size_t size, const char *name)
{
  const char *tmp = getenv("TMPDIR");

  if (tmp == NULL || tmp[0] == '\0' ||
      strlen(tmp) + strlen(name) + sizeof("/-XXXXXX/admin.sock") >
          HARNESS_SUN_PATH_MAX)
    tmp = "/tmp";
  snprintf(dir, size, "%s/%s-XXXXXX", tmp, name);
  return mkdtemp(dir);
}

/*
 * Prints the daemon's config: route on 127.0.0.1 port 0, the admin
 * socket, the database and map, the store. listen and store_lines (may
 * be NULL) are YAML lines added inside listen: and store:. The caller
 * may print more top-level sections after it.
 */
static inline void harness_print_config(FILE *f, const char *admin,
                                        const char *listen, const char *db,
                                        const char *map, const char *store,
                                        const char *store_lines)
{
  fprintf(f,
          "listen:\n"
          "  route: [\"127.0.0.1:0\"]\n"
          "  admin: %s\n"
          "%s%s"
          "geo:\n"
          "  database: %s\n"
          "  map: %s\n"
          "store:\n"
          "  path: %s\n",
          admin, listen ? listen : "", listen ? "\n" : "", db, map, store);
  if (store_lines)
    fprintf(f, "%s\n", store_lines);
}

/* ---- the daemon's process ----------------------------------------------- */

/*
 * Forks argv (NULL-terminated, argv[0] a path) with stdin from /dev/null
 * and stdout and stderr appended to log; asan_options (may be NULL) is
 * added to its ASAN_OPTIONS. Returns the child's pid, or -1 (errno set).
 */
static inline pid_t harness_spawn(const char *log, char *const argv[],
                                  const char *asan_options)
{
  pid_t parent = getpid();
  pid_t pid = fork();

  if (pid == 0) {
    sigset_t none;
    int fd;
    /* Dies with its parent, whichever way that ends. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
      _exit(127);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
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
    if (asan_options && asan_options[0]) {
      char opts[1024];
      const char *old = getenv("ASAN_OPTIONS");
      snprintf(opts, sizeof(opts), "%s%s%s", old ? old : "", old ? ":" : "",
               asan_options);
      setenv("ASAN_OPTIONS", opts, 1);
    }
    execv(argv[0], argv);
    dprintf(STDERR_FILENO, "harness: cannot run %s: %s\n", argv[0],
            strerror(errno));
    _exit(127);
  }
  return pid;
}

/* The port of "event=listening kind=KIND addr=127.0.0.1:PORT", or 0. */
static inline uint16_t harness_listen_port(const char *text, const char *kind)
{
  char needle[96];
  const char *p;

  snprintf(needle, sizeof(needle),
           "event=listening kind=%s addr=127.0.0.1:", kind);
  p = strstr(text, needle);
  if (p == NULL)
    return 0;
  return (uint16_t)strtoul(p + strlen(needle), NULL, 10);
}

/*
 * Waits (bounded) for pid to exit; returns its wait status, or -1 after
 * killing it when it did not exit within ms.
 */
static inline int harness_wait_exit(pid_t pid, int ms)
{
  int64_t deadline = harness_now_ms() + ms;
  int status;

  for (;;) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid)
      return status;
    if (r < 0 && errno != EINTR)
      return -1;
    if (harness_now_ms() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    harness_sleep_ms(HARNESS_POLL_STEP_MS);
  }
}

#endif
