/*
 * store: the server's durable state in one SQLite file (store.path).
 *
 * Opened once, in WAL mode with synchronous=FULL and secure_delete=ON, so
 * a write that returned is on disk and deleted rows are overwritten. The
 * schema is versioned with PRAGMA user_version and migrated forward at
 * open; statements are prepared once and reused. It holds data-center
 * drain state, opt-outs and their audit log. Users appear only as the
 * 16-byte keyed hash of their id (optout.h), never as the id.
 *
 * This header is the store interface: open, set, get, history, erase,
 * iterate, close. A replicated engine can implement it in place of SQLite
 * without the route path noticing, since the route path reads only the
 * in-memory index. Not thread-safe: the control loop owns the store.
 */
#ifndef GS_STORE_H
#define GS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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

/*
 * Records uid as opted out (on) or not, with an audit event naming actor
 * (and reason, may be NULL) when the state changed. One transaction;
 * returns after COMMIT. *changed tells whether the state changed.
 */
int store_optout_set(struct store *s, const uint8_t uid[16], bool on,
                     const char *actor, const char *reason, bool *changed);
/* Opts n users out in one transaction; changed[i] per user. */
int store_optout_set_many(struct store *s, const uint8_t (*uids)[16], size_t n,
                          const char *actor, const char *reason, bool *changed);
int store_optout_get(struct store *s, const uint8_t uid[16], bool *opted_out,
                     int64_t *since);

typedef void (*store_event_fn)(void *ctx, int64_t at, const char *action,
                               const char *actor, const char *reason);
/* Calls fn for each audit event of uid, oldest first. */
int store_optout_history(struct store *s, const uint8_t uid[16],
                         store_event_fn fn, void *ctx);
/* Deletes uid's audit events (its opt-out stays); *erased counts them. */
int store_optout_erase(struct store *s, const uint8_t uid[16], int *erased);
/* Deletes audit events older than before (unix seconds). */
int store_audit_purge(struct store *s, int64_t before, int *purged);
/* Calls fn for every opted-out uid. */
int store_optout_each(struct store *s,
                      void (*fn)(void *ctx, const uint8_t uid[16]), void *ctx);
int store_optout_count(struct store *s, int64_t *count);
/* PRAGMA integrity_check == "ok". */
int store_integrity_check(struct store *s, bool *ok);

#endif
