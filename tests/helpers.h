/*
 * helpers: small utilities shared by the Criterion tests.
 *
 * Tests run from the source tree (make test sets GS_SOURCE_DIR); fixture
 * paths are relative to it. Temporary files live in a per-process folder
 * under TMPDIR and are removed by the tests that make them.
 */
#ifndef GS_TEST_HELPERS_H
#define GS_TEST_HELPERS_H

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* Path of a file in the source tree; static buffer, one call at a time. */
static inline const char *src_path(const char *rel)
{
  static char buf[4096];
  const char *root = getenv("GS_SOURCE_DIR");
  snprintf(buf, sizeof(buf), "%s/%s", root ? root : ".", rel);
  return buf;
}

/* Writes text to a new temporary file; returns its malloc'd path. */
static inline char *write_temp(const char *text, const char *suffix)
{
  const char *dir = getenv("TMPDIR");
  char *path = malloc(4096);
  int fd;

  snprintf(path, 4096, "%s/geosteer-test-XXXXXX%s", dir ? dir : "/tmp", suffix);
  fd = mkstemps(path, (int)strlen(suffix));
  if (fd < 0) {
    free(path);
    return NULL;
  }
  size_t len = strlen(text);
  if (write(fd, text, len) != (ssize_t)len) {
    close(fd);
    unlink(path);
    free(path);
    return NULL;
  }
  close(fd);
  return path;
}

/*
 * Runs a shell command to completion with stderr joined to stdout; the
 * output goes to out (truncated to size - 1 bytes, NUL-terminated).
 * Returns the exit status, or -1 when it did not exit normally.
 */
static inline int run_command(const char *cmd, char *out, size_t size)
{
  char *full = NULL;
  size_t used = 0;
  FILE *p;
  int status;

  cr_assert_geq(asprintf(&full, "%s 2>&1", cmd), 0);
  p = popen(full, "r");
  free(full);
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

#endif
