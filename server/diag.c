/*
 * diag: collecting human-readable problems. See diag.h.
 */
#include "diag.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

void diag_add(struct diag *d, const char *file, unsigned line, const char *fmt,
              ...)
{
  char body[1024];
  char *msg;
  size_t need;
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(body, sizeof(body), fmt, ap);
  va_end(ap);
  if (d->count == d->cap) {
    size_t cap = d->cap ? d->cap * 2 : 8;
    char **msgs = realloc(d->msgs, cap * sizeof(*msgs));
    if (msgs == NULL) {
      d->dropped++;
      return;
    }
    d->msgs = msgs;
    d->cap = cap;
  }
  need = strlen(body) + (file ? strlen(file) : 0) + 32;
  msg = malloc(need);
  if (msg == NULL) {
    d->dropped++;
    return;
  }
  if (file && line)
    snprintf(msg, need, "%s:%u: %s", file, line, body);
  else if (file)
    snprintf(msg, need, "%s: %s", file, body);
  else
    snprintf(msg, need, "%s", body);
  d->msgs[d->count++] = msg;
}

void diag_print(const struct diag *d, FILE *out)
{
  for (size_t i = 0; i < d->count; i++)
    fprintf(out, "%s\n", d->msgs[i]);
  if (d->dropped)
    fprintf(out, "(%d more messages lost: out of memory)\n", d->dropped);
}

char *diag_join(const struct diag *d, char *buf, size_t size)
{
  size_t used = 0;

  if (size == 0)
    return buf;
  buf[0] = '\0';
  for (size_t i = 0; i < d->count && used + 1 < size; i++) {
    int n =
        snprintf(buf + used, size - used, "%s%s", i ? "; " : "", d->msgs[i]);
    if (n < 0)
      break;
    used += (size_t)n;
  }
  return buf;
}

void diag_free(struct diag *d)
{
  for (size_t i = 0; i < d->count; i++)
    free(d->msgs[i]);
  free(d->msgs);
  d->msgs = NULL;
  d->count = d->cap = 0;
  d->dropped = 0;
}

const char *diag_basename(const char *path)
{
  const char *slash = strrchr(path, '/');
  return slash ? slash + 1 : path;
}
