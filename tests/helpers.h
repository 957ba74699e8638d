/*
 * helpers: small utilities shared by the Criterion tests.
 *
 * Tests run from the source tree (make test sets GS_SOURCE_DIR); fixture
 * paths are relative to it. Temporary files live in a per-process folder
 * under TMPDIR and are removed by the tests that make them.
 */
#ifndef GS_TEST_HELPERS_H
#define GS_TEST_HELPERS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

#endif
