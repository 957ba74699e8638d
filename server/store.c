/*
 * store: SQLite persistence. See store.h.
 *
 * Migrations are a list of SQL scripts; migration i takes user_version from
 * i to i + 1 inside one transaction, so a crash mid-migration leaves the
 * previous version intact.
 */
#include "store.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "geosteer/geosteer.h"

#define BUSY_TIMEOUT_MS 5000

static const char *const migrations[] = {
    /* 0 -> 1: drain state */
    "CREATE TABLE dc_drain ("
    "  dc TEXT PRIMARY KEY,"
    "  since INTEGER NOT NULL"
    ") WITHOUT ROWID;",
    /*
     * 1 -> 2: opt-outs and their audit log, keyed by the 16-byte keyed
     * hash of the user id (never the id). The audit log is append-only:
     * triggers refuse UPDATE always and DELETE unless audit_guard allows
     * it, which only the retention purge and erasure do, inside their
     * own transaction.
     */
    "CREATE TABLE optout ("
    "  uid BLOB PRIMARY KEY CHECK (length(uid) = 16),"
    "  since INTEGER NOT NULL"
    ") WITHOUT ROWID;"
    "CREATE TABLE audit ("
    "  id INTEGER PRIMARY KEY,"
    "  uid BLOB NOT NULL CHECK (length(uid) = 16),"
    "  at INTEGER NOT NULL,"
    "  action TEXT NOT NULL CHECK (action IN ('set', 'clear')),"
    "  actor TEXT NOT NULL,"
    "  reason TEXT"
    ");"
    "CREATE INDEX audit_by_uid ON audit(uid, id);"
    "CREATE INDEX audit_by_at ON audit(at);"
    "CREATE TABLE audit_guard (allow_delete INTEGER NOT NULL);"
    "INSERT INTO audit_guard VALUES (0);"
    "CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;"
    "CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit "
    "WHEN (SELECT allow_delete FROM audit_guard) = 0 "
    "BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;",
    /*
     * 2 -> 3: REPLACE deletes the old row without firing DELETE triggers,
     * so an insert that names an existing id is refused as well.
     */
    "CREATE TRIGGER audit_append_only_replace BEFORE INSERT ON audit "
    "WHEN NEW.id IS NOT NULL AND EXISTS (SELECT 1 FROM audit WHERE id = "
    "NEW.id) "
    "BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;",
};

enum stmt {
  ST_DRAIN_ON,
  ST_DRAIN_OFF,
  ST_DRAIN_LIST,
  ST_OPTOUT_INSERT,
  ST_OPTOUT_DELETE,
  ST_OPTOUT_GET,
  ST_OPTOUT_ALL,
  ST_OPTOUT_COUNT,
  ST_AUDIT_ADD,
  ST_AUDIT_HISTORY,
  ST_AUDIT_ERASE,
  ST_AUDIT_PURGE,
  ST_GUARD_OPEN,
  ST_GUARD_CLOSE,
  ST_BEGIN,
  ST_COMMIT,
  ST_ROLLBACK,
  ST_COUNT_
};

static const char *const stmt_sql[ST_COUNT_] = {
    [ST_DRAIN_ON] = "INSERT INTO dc_drain(dc, since) VALUES(?1, ?2) "
                    "ON CONFLICT(dc) DO NOTHING",
    [ST_DRAIN_OFF] = "DELETE FROM dc_drain WHERE dc = ?1",
    [ST_DRAIN_LIST] = "SELECT dc FROM dc_drain ORDER BY dc",
    [ST_OPTOUT_INSERT] = "INSERT INTO optout(uid, since) VALUES(?1, ?2) "
                         "ON CONFLICT(uid) DO NOTHING",
    [ST_OPTOUT_DELETE] = "DELETE FROM optout WHERE uid = ?1",
    [ST_OPTOUT_GET] = "SELECT since FROM optout WHERE uid = ?1",
    [ST_OPTOUT_ALL] = "SELECT uid FROM optout",
    [ST_OPTOUT_COUNT] = "SELECT count(*) FROM optout",
    [ST_AUDIT_ADD] = "INSERT INTO audit(uid, at, action, actor, reason) "
                     "VALUES(?1, ?2, ?3, ?4, ?5)",
    [ST_AUDIT_HISTORY] = "SELECT at, action, actor, reason FROM audit "
                         "WHERE uid = ?1 ORDER BY id",
    [ST_AUDIT_ERASE] = "DELETE FROM audit WHERE uid = ?1",
    [ST_AUDIT_PURGE] = "DELETE FROM audit WHERE at < ?1",
    [ST_GUARD_OPEN] = "UPDATE audit_guard SET allow_delete = 1",
    [ST_GUARD_CLOSE] = "UPDATE audit_guard SET allow_delete = 0",
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
};

struct store {
  sqlite3 *db;
  sqlite3_stmt *st[ST_COUNT_];
};

static int fail(struct diag *d, const char *path, sqlite3 *db, const char *what)
{
  diag_add(d, path, 0, "%s: %s", what, db ? sqlite3_errmsg(db) : "?");
  return GS_ERR_IO;
}

static int migrate(sqlite3 *db, const char *path, struct diag *d)
{
  sqlite3_stmt *st;
  int version = 0;
  const int latest = (int)(sizeof(migrations) / sizeof(migrations[0]));

  if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK)
    return fail(d, path, db, "cannot read schema version");
  if (sqlite3_step(st) == SQLITE_ROW)
    version = sqlite3_column_int(st, 0);
  sqlite3_finalize(st);
  if (version > latest) {
    diag_add(d, path, 0,
             "schema version %d is newer than this geosteerd knows (%d); "
             "upgrade geosteerd",
             version, latest);
    return GS_ERR_INVALID;
  }
  for (; version < latest; version++) {
    char sql[64];
    snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", version + 1);
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(db, migrations[version], NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
      int rc = fail(d, path, db, "schema migration failed");
      sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
      return rc;
    }
  }
  return 0;
}

int store_open(const char *path, struct store **out, struct diag *d)
{
  struct store *s = calloc(1, sizeof(*s));
  int rc;

  if (s == NULL)
    return GS_ERR_NOMEM;
  /*
   * Create the file ourselves, mode 0600: it holds staff names and the
   * keyed hashes, and SQLite gives the -wal and -shm files its mode.
   */
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd >= 0)
    close(fd);
  if (sqlite3_open_v2(path, &s->db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                          SQLITE_OPEN_NOMUTEX,
                      NULL) != SQLITE_OK) {
    rc = fail(d, path, s->db, "cannot open store");
    goto fail;
  }
  sqlite3_busy_timeout(s->db, BUSY_TIMEOUT_MS);
  if (sqlite3_exec(s->db,
                   "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                   "PRAGMA secure_delete=ON; PRAGMA foreign_keys=ON;",
                   NULL, NULL, NULL) != SQLITE_OK) {
    rc = fail(d, path, s->db, "cannot configure store");
    goto fail;
  }
  if ((rc = migrate(s->db, path, d)) != 0)
    goto fail;
  for (int i = 0; i < ST_COUNT_; i++) {
    if (sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
                           &s->st[i], NULL) != SQLITE_OK) {
      rc = fail(d, path, s->db, "cannot prepare statements");
      goto fail;
    }
  }
  *out = s;
  return 0;
fail:
  store_close(s);
  return rc;
}

void store_close(struct store *s)
{
  if (s == NULL)
    return;
  for (int i = 0; i < ST_COUNT_; i++)
    sqlite3_finalize(s->st[i]);
  sqlite3_close(s->db);
  free(s);
}

static int exec_st(sqlite3_stmt *st);

int store_set_drain(struct store *s, const char *dc, bool on)
{
  sqlite3_stmt *st = s->st[on ? ST_DRAIN_ON : ST_DRAIN_OFF];

  sqlite3_bind_text(st, 1, dc, -1, SQLITE_TRANSIENT);
  if (on)
    sqlite3_bind_int64(st, 2, (sqlite3_int64)time(NULL));
  return exec_st(st);
}

int store_each_drain(struct store *s, void (*fn)(void *ctx, const char *dc),
                     void *ctx)
{
  int rc;

  sqlite3_stmt *st = s->st[ST_DRAIN_LIST];
  while ((rc = sqlite3_step(st)) == SQLITE_ROW)
    fn(ctx, (const char *)sqlite3_column_text(st, 0));
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? 0 : GS_ERR_IO;
}

/* ---- opt-outs ------------------------------------------------------------ */

/* Runs a statement that returns no rows; resets it. */
static int exec_st(sqlite3_stmt *st)
{
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return rc == SQLITE_DONE ? 0 : GS_ERR_IO;
}

static int begin(struct store *s)
{
  return exec_st(s->st[ST_BEGIN]);
}

/* Commits, or rolls back when rc says something failed. */
static int finish(struct store *s, int rc)
{
  if (rc == 0)
    rc = exec_st(s->st[ST_COMMIT]);
  if (rc != 0)
    exec_st(s->st[ST_ROLLBACK]);
  return rc;
}

static int set_one(struct store *s, const uint8_t uid[16], bool on,
                   const char *actor, const char *reason, int64_t now,
                   bool *changed)
{
  sqlite3_stmt *st = s->st[on ? ST_OPTOUT_INSERT : ST_OPTOUT_DELETE];
  int rc;

  sqlite3_bind_blob(st, 1, uid, 16, SQLITE_STATIC);
  if (on)
    sqlite3_bind_int64(st, 2, now);
  if ((rc = exec_st(st)) != 0)
    return rc;
  *changed = sqlite3_changes(s->db) > 0;
  if (!*changed)
    return 0; /* nothing happened: nothing to audit */
  st = s->st[ST_AUDIT_ADD];
  sqlite3_bind_blob(st, 1, uid, 16, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, now);
  sqlite3_bind_text(st, 3, on ? "set" : "clear", -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 4, actor, -1, SQLITE_STATIC);
  if (reason)
    sqlite3_bind_text(st, 5, reason, -1, SQLITE_STATIC);
  return exec_st(st);
}

int store_optout_set(struct store *s, const uint8_t uid[16], bool on,
                     const char *actor, const char *reason, bool *changed)
{
  int rc = begin(s);
  if (rc != 0)
    return rc;
  rc = set_one(s, uid, on, actor, reason, (int64_t)time(NULL), changed);
  return finish(s, rc);
}

int store_optout_set_many(struct store *s, const uint8_t (*uids)[16], size_t n,
                          const char *actor, const char *reason, bool *changed)
{
  int64_t now = (int64_t)time(NULL);
  int rc = begin(s);
  if (rc != 0)
    return rc;
  for (size_t i = 0; i < n && rc == 0; i++)
    rc = set_one(s, uids[i], true, actor, reason, now, &changed[i]);
  return finish(s, rc);
}

int store_optout_get(struct store *s, const uint8_t uid[16], bool *opted_out,
                     int64_t *since)
{
  sqlite3_stmt *st = s->st[ST_OPTOUT_GET];
  int rc;

  sqlite3_bind_blob(st, 1, uid, 16, SQLITE_STATIC);
  rc = sqlite3_step(st);
  *opted_out = rc == SQLITE_ROW;
  if (rc == SQLITE_ROW)
    *since = sqlite3_column_int64(st, 0);
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : GS_ERR_IO;
}

int store_optout_history(struct store *s, const uint8_t uid[16],
                         store_event_fn fn, void *ctx)
{
  sqlite3_stmt *st = s->st[ST_AUDIT_HISTORY];
  int rc;

  sqlite3_bind_blob(st, 1, uid, 16, SQLITE_STATIC);
  while ((rc = sqlite3_step(st)) == SQLITE_ROW)
    fn(ctx, sqlite3_column_int64(st, 0),
       (const char *)sqlite3_column_text(st, 1),
       (const char *)sqlite3_column_text(st, 2),
       (const char *)sqlite3_column_text(st, 3));
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return rc == SQLITE_DONE ? 0 : GS_ERR_IO;
}

/* Deletes audit rows with the guard opened inside one transaction. */
static int guarded_delete(struct store *s, sqlite3_stmt *del, int *deleted)
{
  int rc = begin(s);
  if (rc != 0)
    return rc;
  if ((rc = exec_st(s->st[ST_GUARD_OPEN])) == 0) {
    rc = sqlite3_step(del) == SQLITE_DONE ? 0 : GS_ERR_IO;
    *deleted = rc == 0 ? sqlite3_changes(s->db) : 0;
    sqlite3_reset(del);
    sqlite3_clear_bindings(del);
    if (rc == 0)
      rc = exec_st(s->st[ST_GUARD_CLOSE]);
  }
  rc = finish(s, rc);
  /*
   * Erased rows must not linger in the WAL: copy it into the database
   * (secure_delete overwrites the freed pages there) and truncate it.
   */
  if (rc == 0)
    sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL,
                              NULL);
  return rc;
}

int store_optout_erase(struct store *s, const uint8_t uid[16], int *erased)
{
  sqlite3_bind_blob(s->st[ST_AUDIT_ERASE], 1, uid, 16, SQLITE_TRANSIENT);
  return guarded_delete(s, s->st[ST_AUDIT_ERASE], erased);
}

int store_audit_purge(struct store *s, int64_t before, int *purged)
{
  sqlite3_bind_int64(s->st[ST_AUDIT_PURGE], 1, before);
  return guarded_delete(s, s->st[ST_AUDIT_PURGE], purged);
}

int store_optout_each(struct store *s,
                      void (*fn)(void *ctx, const uint8_t uid[16]), void *ctx)
{
  sqlite3_stmt *st = s->st[ST_OPTOUT_ALL];
  int rc;

  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (sqlite3_column_bytes(st, 0) == 16)
      fn(ctx, sqlite3_column_blob(st, 0));
  }
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? 0 : GS_ERR_IO;
}

int store_optout_count(struct store *s, int64_t *count)
{
  sqlite3_stmt *st = s->st[ST_OPTOUT_COUNT];
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW)
    *count = sqlite3_column_int64(st, 0);
  sqlite3_reset(st);
  return rc == SQLITE_ROW ? 0 : GS_ERR_IO;
}

int store_integrity_check(struct store *s, bool *ok)
{
  sqlite3_stmt *st;
  int rc;

  if (sqlite3_prepare_v2(s->db, "PRAGMA integrity_check", -1, &st, NULL) !=
      SQLITE_OK)
    return GS_ERR_IO;
  rc = sqlite3_step(st);
  *ok = rc == SQLITE_ROW &&
        strcmp((const char *)sqlite3_column_text(st, 0), "ok") == 0;
  sqlite3_finalize(st);
  return rc == SQLITE_ROW ? 0 : GS_ERR_IO;
}
