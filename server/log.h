/*
 * log: one line per event on stderr, as key=value pairs:
 *   ts=2026-11-29T05:01:02.345Z level=info event=reload ok=1 ranges=1996034
 *
 * Values with spaces, quotes or '=' are quoted. Client addresses are never
 * logged in full: log_client_addr() cuts IPv4 to /24 and IPv6 to /48.
 * User ids are never passed to the logger at all. Thread-safe: each line is
 * formatted into a local buffer and written with one write(2).
 */
#ifndef GS_LOG_H
#define GS_LOG_H

#include <stddef.h>

#include "addr.h"

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Lines below level are dropped. Default LOG_INFO. */
void log_set_level(enum log_level level);

/*
 * Logs event with pairs given as a printf format of " key=value" items:
 *   log_event(LOG_INFO, "reload", "ok=%d ranges=%zu", 1, n);
 * Values must already be safe (use log_quote for free text).
 */
void log_event(enum log_level level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The client address a (engine space), truncated: "81.2.69.0/24". */
void log_client_addr(addr128 a, char *buf, size_t size);

/* Copies text into buf as a log value, quoted and escaped when needed. */
const char *log_quote(const char *text, char *buf, size_t size);

#endif
