/*
 * store: the server's durable state in one SQLite file (store.path).
 *
 * Opened once, in WAL mode with synchronous=FULL, so a write that returned
 * is on disk. The schema is versioned with PRAGMA user_version and migrated
 * forward at open. Today it holds the data-center drain state; statements
 * are prepared once and reused. Not thread-safe: the control loop owns it.
 */
#ifndef GS_STORE_H
#define GS_STORE_H

#include <stdbool.h>

#include "diag.h"

struct store;

/* Opens (creating) path. Returns 0 or a negative code with a message. */
int store_open(const char *path, struct store **out, struct diag *d);
void store_close(struct store *s);

/* Records dc as drained (on) or not. Returns 0 or a negative code. */
int store_set_drain(struct store *s, const char *dc, bool on);

/* Calls fn for each drained data center id. Returns 0 or negative. */
int store_each_drain(struct store *s, void (*fn)(void *ctx, const char *dc),
                     void *ctx);

#endif
