/*
 * optout_harness: what the opt-out tests (tests/test_privacy.c) add to
 * server_harness.h: raw admin requests that the client library cannot
 * express, reading the store's audit table and the daemon's statistics
 * from outside, and looking for bytes in the files the daemon writes.
 *
 * The daemon itself (its folder, config, start, stop and the suite's
 * .fini) is server_harness.h's: a test configures the store's key file
 * or other store lines with server_opts.store, and finds the default key
 * file at struct server's key.
 *
 * Invariants: as in server_harness.h; a raw connection's last reply stays
 * valid until its next exchange. Header-only: every function is static
 * inline.
 */
#ifndef GS_TEST_OPTOUT_HARNESS_H
#define GS_TEST_OPTOUT_HARNESS_H

#include <sqlite3.h>

#include "server_harness.h"

/* True when the file at path holds the bytes needle[0..n). */
static inline bool oh_file_contains(const char *path, const void *needle,
                                    size_t n)
{
  long len = 0;
  char *text = harness_read_file(path, 0, &len);
  bool found = text && memmem(text, (size_t)len, needle, n) != NULL;
  free(text);
  return found;
}

/* ---- raw requests (arguments the client library cannot express) --------- */

/* A raw connection and the last reply read on it. */
struct oh_raw {
  int fd;
  struct rbuf in;         /* every byte read on the connection */
  struct replies replies; /* the objects parsed from in */
  size_t seen;            /* replies already handed out */
  msgpack_object reply;   /* the last one; points into in and replies */
};

static inline void oh_raw_open(struct oh_raw *r, const char *unix_path)
{
  memset(r, 0, sizeof(*r));
  r->fd = raw_connect_unix(unix_path);
  cr_assert_geq(r->fd, 0, "connect %s: %s", unix_path, strerror(errno));
  replies_parse(&r->replies, "", 0);
}

static inline void oh_raw_close(struct oh_raw *r)
{
  close(r->fd);
  rbuf_free(&r->in);
  replies_free(&r->replies);
  memset(r, 0, sizeof(*r));
  r->fd = -1;
}

/*
 * Sends bytes and reads one whole reply into r->reply, which stays valid
 * until the next exchange. Returns false when none arrived within ms.
 */
static inline bool oh_raw_exchange(struct oh_raw *r, const void *out,
                                   size_t len, int ms)
{
  int end = raw_exchange(r->fd, out, len, &r->in, r->seen + 1, ms, NULL);

  if (end != RAW_REPLIES)
    return false;
  replies_free(&r->replies);
  replies_parse(&r->replies, r->in.data, r->in.len);
  cr_assert(!r->replies.bad, "reply is not MessagePack");
  r->reply = r->replies.obj[r->seen++];
  return true;
}

/* The error code of reply [1, msgid, {code,...}, nil]: 0 when it is a
 * result, -1 when it is not a reply to msgid. */
static inline int oh_reply_error_code(const msgpack_object *o, uint32_t msgid)
{
  const msgpack_object *e;
  uint64_t code;

  if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 4)
    return -1;
  e = o->via.array.ptr;
  if (obj_u64(&e[0]) != GS_RPC_RESPONSE || obj_u64(&e[1]) != msgid)
    return -1;
  if (e[2].type == MSGPACK_OBJECT_NIL)
    return 0;
  code = obj_u64(obj_get(&e[2], "code"));
  return code == UINT64_MAX ? -1 : (int)code;
}

/* The error message of an error reply, copied into buf ("" if none). */
static inline const char *oh_reply_message(const msgpack_object *o, char *buf,
                                           size_t size)
{
  const msgpack_object *m = NULL;
  if (o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == 4)
    m = obj_get(&o->via.array.ptr[2], "message");
  return obj_str(m, buf, size);
}

/* ---- the daemon's state, read from outside ------------------------------ */

/* stats.geo_lookups and stats.store.healthy. */
static inline uint64_t oh_geo_lookups(gs_client *admin, bool *healthy)
{
  const msgpack_object *r = admin_call(admin, "stats", NULL, 0);
  if (healthy)
    *healthy = obj_get_bool(obj_get(r, "store"), "healthy");
  return obj_get_u64(r, "geo_lookups");
}

/* Rows of the audit table, read with sqlite3 (read-only) on the file. */
static inline int64_t oh_audit_rows(const char *store)
{
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  int64_t n = -1;

  cr_assert_eq(sqlite3_open_v2(store, &db, SQLITE_OPEN_READONLY, NULL),
               SQLITE_OK, "open %s: %s", store, sqlite3_errmsg(db));
  sqlite3_busy_timeout(db, 5000);
  cr_assert_eq(
      sqlite3_prepare_v2(db, "SELECT count(*) FROM audit", -1, &st, NULL),
      SQLITE_OK, "%s", sqlite3_errmsg(db));
  if (sqlite3_step(st) == SQLITE_ROW)
    n = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
  cr_assert_geq(n, 0, "cannot count audit rows in %s", store);
  return n;
}

#endif
