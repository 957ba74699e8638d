/*
 * fuzz_scan: libFuzzer target for the MessagePack scanner (make fuzz).
 *
 * Each input is scanned under several size limits at the server's depth
 * limit, and the scanner's promises are checked: a result is one of the
 * known codes; SCAN_OK means a size within both the input and the limit,
 * and msgpack-c decodes exactly that many bytes as one object; a prefix
 * the scanner waits on (under the smaller limits) is one msgpack-c waits
 * on too. Every message the scanner accepts under the server's default
 * limit then goes through the server's request decoder (rpc_decode), as
 * it would on a connection, and a request it gives must be the one
 * msgpack-c's objects hold. Any broken promise traps, which libFuzzer
 * records as a crash with its input.
 */
#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "geosteer/protocol.h"
#include "rpc.h"
#include "scan.h"

#include "../tests/msgpack_same.h"

#define SERVER_MAX_MESSAGE 4096 /* the default limits.max_message */

/* The value of the first key named name in args, or NULL. */
static const msgpack_object *first_value(const msgpack_object *args,
                                         const char *name)
{
  for (uint32_t i = 0; args && i < args->via.map.size; i++) {
    const msgpack_object *k = &args->via.map.ptr[i].key;
    if (k->type == MSGPACK_OBJECT_STR && rpc_str_is(k->via.str, name))
      return &args->via.map.ptr[i].val;
  }
  return NULL;
}

/* A text rpc_peek_route gave is the decoder's string, inside the data. */
static void same_text(const char *text, size_t len, const msgpack_object *o,
                      const uint8_t *data, size_t size)
{
  if (text == NULL) {
    if (o != NULL)
      __builtin_trap();
    return;
  }
  if (o == NULL || o->type != MSGPACK_OBJECT_STR || o->via.str.size != len ||
      (len > 0 && o->via.str.ptr != text) || /* "" may have no ptr */
      text < (const char *)data || text + len > (const char *)data + size)
    __builtin_trap();
}

/*
 * rpc_peek_route reads route requests without decoding them; where it
 * claims one, the decoder must see the same method and the same first
 * "ip" and "user" (or none).
 */
static void peek_agrees(const uint8_t *data, size_t size,
                        const struct rpc_request *req)
{
  struct rpc_peek pk;

  if (!rpc_peek_route((const char *)data, size, &pk))
    return;
  if (req->type != GS_RPC_REQUEST || !rpc_str_is(req->method, "route"))
    __builtin_trap();
  same_text(pk.ip, pk.ip_len, first_value(req->args, "ip"), data, size);
  same_text(pk.user, pk.user_len, first_value(req->args, "user"), data, size);
}

/* rpc_unpack must decode exactly what msgpack_unpack decodes. */
static void unpack_agrees(const uint8_t *data, size_t size)
{
  static msgpack_zone za, zb;
  static int ready;
  msgpack_object a, b;
  size_t off = 0;

  if (!ready) {
    if (!rpc_zone_init(&za, SERVER_MAX_MESSAGE) ||
        !rpc_zone_init(&zb, SERVER_MAX_MESSAGE))
      __builtin_trap();
    ready = 1;
  }
  int ok_a = rpc_unpack((const char *)data, size, &za, &a);
  int ok_b = msgpack_unpack((const char *)data, size, &off, &zb, &b) ==
                 MSGPACK_UNPACK_SUCCESS &&
             off == size;
  if (ok_a != ok_b || (ok_a && !msgpack_same(&a, &b)))
    __builtin_trap();
  msgpack_zone_clear(&za);
  msgpack_zone_clear(&zb);
}

/*
 * A request rpc_decode gave (read in one pass when it has the flat form)
 * is the one msgpack_unpack's objects hold: the same msgid, method and
 * arguments.
 */
static void request_agrees(const uint8_t *data, size_t size,
                           const struct rpc_request *req)
{
  static msgpack_zone zone;
  static int ready;
  msgpack_object o, method = {.type = MSGPACK_OBJECT_STR};
  size_t off = 0;

  if (!ready) {
    if (!rpc_zone_init(&zone, SERVER_MAX_MESSAGE))
      __builtin_trap();
    ready = 1;
  }
  if (msgpack_unpack((const char *)data, size, &off, &zone, &o) !=
          MSGPACK_UNPACK_SUCCESS ||
      o.type != MSGPACK_OBJECT_ARRAY || o.via.array.size != 4)
    __builtin_trap();
  const msgpack_object *e = o.via.array.ptr, *params = &e[3];
  method.via.str = req->method;
  if (e[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
      e[1].via.u64 != req->msgid || !msgpack_same(&e[2], &method) ||
      params->type != MSGPACK_OBJECT_ARRAY ||
      (params->via.array.size == 0) != (req->args == NULL) ||
      (req->args && !msgpack_same(&params->via.array.ptr[0], req->args)))
    __builtin_trap();
  msgpack_zone_clear(&zone);
}

/* Decodes an accepted message the way a connection does. */
static void decode(const uint8_t *data, size_t size)
{
  static msgpack_zone zone;
  static int ready;
  struct rpc_request req;
  bool msgid_known;
  uint32_t msgid;
  char why[256];

  if (!ready) {
    if (!rpc_zone_init(&zone, SERVER_MAX_MESSAGE))
      __builtin_trap();
    ready = 1;
  }
  if (rpc_decode((const char *)data, size, &zone, &req, &msgid_known, &msgid,
                 why, sizeof(why))) {
    /* A decoded request has a method and at most one argument map. */
    if (req.args && req.args->type != MSGPACK_OBJECT_MAP)
      __builtin_trap();
    (void)rpc_check_keys(req.args, (const char *const[]){"ip", "user", NULL},
                         why, sizeof(why));
    if (req.type == GS_RPC_REQUEST)
      request_agrees(data, size, &req);
    peek_agrees(data, size, &req);
  }
  msgpack_zone_clear(&zone);
}

static void check(const uint8_t *data, size_t len, size_t max_size)
{
  size_t size = SIZE_MAX;
  int got = scan_message(data, len, max_size, SCAN_MAX_DEPTH, &size);
  msgpack_unpacked u;
  size_t off = 0;

  switch (got) {
  case SCAN_OK:
    if (size > len || size > max_size || size == 0)
      __builtin_trap();
    msgpack_unpacked_init(&u);
    if (msgpack_unpack_next(&u, (const char *)data, size, &off) !=
            MSGPACK_UNPACK_SUCCESS ||
        off != size)
      __builtin_trap();
    msgpack_unpacked_destroy(&u);
    if (max_size == SERVER_MAX_MESSAGE) {
      unpack_agrees(data, size);
      decode(data, size);
    }
    return;
  case SCAN_NEED_MORE:
    if (len >= max_size)
      __builtin_trap();
    /* Under the 1 MiB limit msgpack-c would allocate for every claimed
     * element of a prefix, megabytes per run: skip it there. */
    if (len > 0 && max_size <= 4096) {
      msgpack_unpacked_init(&u);
      if (msgpack_unpack_next(&u, (const char *)data, len, &off) !=
          MSGPACK_UNPACK_CONTINUE)
        __builtin_trap();
      msgpack_unpacked_destroy(&u);
    }
    break;
  case SCAN_ERR_MALFORMED:
  case SCAN_ERR_DEPTH:
  case SCAN_ERR_TOO_LARGE:
    break;
  default:
    __builtin_trap();
  }
  if (size != SIZE_MAX) /* set only on SCAN_OK */
    __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
  static const size_t limits[] = {16, SERVER_MAX_MESSAGE, 1 << 20};
  uint32_t msgid;

  for (size_t i = 0; i < sizeof(limits) / sizeof(limits[0]); i++)
    check(data, len, limits[i]);
  (void)scan_msgid(data, len, &msgid);
  return 0;
}
