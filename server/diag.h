/*
 * diag: a list of messages for a person, each naming its place
 * ("dcmap.yaml:14: key 'lat': must be a number in -90..90, got \"north\"").
 *
 * Loaders append every problem they find instead of stopping at the first,
 * so `geosteerd -t` and `geosteer map check` can print them all. The list
 * owns its strings; diag_free() releases them.
 */
#ifndef GS_DIAG_H
#define GS_DIAG_H

#include <stddef.h>
#include <stdio.h>

struct diag {
  char **msgs;
  size_t count;
  size_t cap;
  int dropped; /* messages lost to allocation failure */
};

#define DIAG_INIT                                                              \
  {                                                                            \
    NULL, 0, 0, 0                                                              \
  }

/* Appends "file:line: message" (no ":line" when line is 0). */
void diag_add(struct diag *d, const char *file, unsigned line, const char *fmt,
              ...) __attribute__((format(printf, 4, 5)));
/* Prints every message on its own line, then clears nothing. */
void diag_print(const struct diag *d, FILE *out);
/* Joins the messages with "; " into buf (truncating); returns buf. */
char *diag_join(const struct diag *d, char *buf, size_t size);
void diag_free(struct diag *d);

/* Base name of a path, for messages ("dcmap.yaml"); points into path. */
const char *diag_basename(const char *path);

#endif
