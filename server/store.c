/*
 * store: SQLite persistence. See store.h.
 *
 * Migrations are a list of SQL scripts; migration i takes user_version from
 * i to i + 1 inside one transaction, so a crash mid-migration leaves the
 * previous version intact.
 */
#include "store.h"

#include <sqlite3.h>
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
};

struct store {
  sqlite3 *db;
  sqlite3_stmt *drain_on, *drain_off, *drain_list;
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
  if (sqlite3_prepare_v2(s->db,
                         "INSERT INTO dc_drain(dc, since) VALUES(?1, ?2) "
                         "ON CONFLICT(dc) DO NOTHING",
                         -1, &s->drain_on, NULL) != SQLITE_OK ||
      sqlite3_prepare_v2(s->db, "DELETE FROM dc_drain WHERE dc = ?1", -1,
                         &s->drain_off, NULL) != SQLITE_OK ||
      sqlite3_prepare_v2(s->db, "SELECT dc FROM dc_drain ORDER BY dc", -1,
                         &s->drain_list, NULL) != SQLITE_OK) {
    rc = fail(d, path, s->db, "cannot prepare statements");
    goto fail;
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
  sqlite3_finalize(s->drain_on);
  sqlite3_finalize(s->drain_off);
  sqlite3_finalize(s->drain_list);
  sqlite3_close(s->db);
  free(s);
}

int store_set_drain(struct store *s, const char *dc, bool on)
{
  sqlite3_stmt *st = on ? s->drain_on : s->drain_off;
  int rc;

  sqlite3_bind_text(st, 1, dc, -1, SQLITE_TRANSIENT);
  if (on)
    sqlite3_bind_int64(st, 2, (sqlite3_int64)time(NULL));
  rc = sqlite3_step(st);
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return rc == SQLITE_DONE ? 0 : GS_ERR_IO;
}

int store_each_drain(struct store *s, void (*fn)(void *ctx, const char *dc),
                     void *ctx)
{
  int rc;

  while ((rc = sqlite3_step(s->drain_list)) == SQLITE_ROW)
    fn(ctx, (const char *)sqlite3_column_text(s->drain_list, 0));
  sqlite3_reset(s->drain_list);
  return rc == SQLITE_DONE ? 0 : GS_ERR_IO;
}
