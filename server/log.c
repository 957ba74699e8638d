/*
 * log: key=value event lines. See log.h.
 */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static _Atomic int min_level = LOG_INFO;

void log_set_level(enum log_level level)
{
  atomic_store(&min_level, level);
}

void log_event(enum log_level level, const char *event, const char *fmt, ...)
{
  static const char *const names[] = {"debug", "info", "warn", "error"};
  char line[2048];
  struct timeval tv;
  struct tm tm;
  size_t used;
  va_list ap;

  if ((int)level < atomic_load(&min_level))
    return;
  gettimeofday(&tv, NULL);
  gmtime_r(&tv.tv_sec, &tm);
  used = strftime(line, sizeof(line), "ts=%Y-%m-%dT%H:%M:%S", &tm);
  used += (size_t)snprintf(line + used, sizeof(line) - used,
                           ".%03ldZ level=%s event=%s",
                           (long)(tv.tv_usec / 1000), names[level], event);
  if (fmt && fmt[0] && used < sizeof(line) - 2) {
    line[used++] = ' ';
    va_start(ap, fmt);
    int n = vsnprintf(line + used, sizeof(line) - used, fmt, ap);
    va_end(ap);
    if (n > 0)
      used +=
          (size_t)n < sizeof(line) - used ? (size_t)n : sizeof(line) - used - 1;
  }
  if (used > sizeof(line) - 2)
    used = sizeof(line) - 2;
  line[used++] = '\n';
  /* One write per line keeps lines whole across threads. */
  ssize_t w = write(STDERR_FILENO, line, used);
  (void)w;
}

void log_client_addr(addr128 a, char *buf, size_t size)
{
  char text[ADDR_TEXT_MAX];

  a = addr_normalize(a);
  if (addr_is_v4(a)) {
    addr_format(a & ~(addr128)0xff, text, sizeof(text));
    snprintf(buf, size, "%s/24", text);
  } else {
    addr_format(a & addr_mask(48), text, sizeof(text));
    snprintf(buf, size, "%s/48", text);
  }
}

const char *log_quote(const char *text, char *buf, size_t size)
{
  bool plain = text[0] != '\0';
  size_t used = 0;

  for (const char *p = text; *p && plain; p++)
    if ((unsigned char)*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' ||
        (unsigned char)*p >= 0x7f)
      plain = false;
  if (plain) {
    snprintf(buf, size, "%s", text);
    return buf;
  }
  if (size < 3) {
    if (size)
      buf[0] = '\0';
    return buf;
  }
  buf[used++] = '"';
  for (const char *p = text; *p && used + 3 < size; p++) {
    unsigned char c = (unsigned char)*p;
    if (c == '"' || c == '\\') {
      buf[used++] = '\\';
      buf[used++] = (char)c;
    } else if (c < ' ' || c == 0x7f) {
      buf[used++] = '?';
    } else {
      buf[used++] = (char)c;
    }
  }
  buf[used++] = '"';
  buf[used] = '\0';
  return buf;
}
