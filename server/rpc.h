/*
 * rpc: MessagePack-RPC framing on top of msgpack-c: decoding one scanned
 * message into a request, and encoding replies into a growable buffer.
 *
 * Decoding uses a caller-owned msgpack_zone whose first chunk is sized for
 * the largest message (rpc_zone_init), so once warm it never allocates:
 * strings in the decoded objects point into the input bytes. Encoding uses
 * msgpack_packer with a writer that appends to a wbuf, which grows by
 * doubling and is reused for the connection's life.
 */
#ifndef GS_RPC_H
#define GS_RPC_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A growable output buffer. failed is set (and writes dropped) on OOM. */
struct wbuf {
  char *data;
  size_t len, cap;
  bool failed;
};

void wbuf_free(struct wbuf *w);
/* Makes room for n more bytes; false (and failed set) on OOM. */
bool wbuf_reserve(struct wbuf *w, size_t n);
/* msgpack_packer writer callback appending to a struct wbuf. */
int wbuf_write(void *data, const char *buf, size_t len);

struct rpc_request {
  int type;       /* GS_RPC_REQUEST or GS_RPC_NOTIFICATION */
  uint32_t msgid; /* requests only */
  msgpack_object_str method;
  const msgpack_object *args; /* the one map of params, or NULL for [] */
};

/* What rpc_peek_route read: texts inside the message, NULL when absent. */
struct rpc_peek {
  const char *ip, *user;
  size_t ip_len, user_len;
};

/*
 * Reads a scanned message's bytes, without decoding them, for what warms
 * the caches a route request will need: true when it is
 * [0, msgid, "route", [map]] in the flat form (see rpc_decode), and then
 * out holds the texts of its first "ip" and "user", which must be
 * strings. False for anything else, including what rpc_decode would
 * accept in other forms; only a hint, never a decision.
 */
bool rpc_peek_route(const char *m, size_t size, struct rpc_peek *out);

/*
 * Decodes one whole scanned message into o (allocating from zone), as
 * msgpack_unpack does but faster for the forms requests take; false if it
 * is not exactly one well-formed object.
 */
bool rpc_unpack(const char *msg, size_t len, msgpack_zone *zone,
                msgpack_object *o);

/* Sizes zone for messages of up to max_message bytes. */
bool rpc_zone_init(msgpack_zone *zone, size_t max_message);

/*
 * Decodes the scanned message msg[0..len) into *req (objects live in zone
 * until msgpack_zone_clear). On failure returns false, fills why and sets
 * *msgid_known and *msgid when the msgid could be read.
 *
 * The flat form, which almost every request takes, is read in one pass
 * without building the whole object tree: [0, msgid, method, params] with
 * a msgid that is a positive fixint, uint8, uint16 or uint32, a fixstr
 * method, and params [] or [fixmap] of fixstr keys whose values are nil,
 * booleans, fixints, fixstr, str8 or str16. It gives the same *req as the
 * general decoder.
 */
bool rpc_decode(const char *msg, size_t len, msgpack_zone *zone,
                struct rpc_request *req, bool *msgid_known, uint32_t *msgid,
                char *why, size_t why_size);

/* True when s equals the C string lit. */
bool rpc_str_is(msgpack_object_str s, const char *lit);
/* Copies s into buf as a C string (truncating); returns buf. */
char *rpc_str_copy(msgpack_object_str s, char *buf, size_t size);

/*
 * Checks that every key of args is one of allowed (NULL-terminated) and a
 * string; fills why on failure. args NULL is fine (no arguments).
 */
bool rpc_check_keys(const msgpack_object *args, const char *const *allowed,
                    char *why, size_t why_size);
/* Value of key in args, or NULL. */
const msgpack_object *rpc_arg(const msgpack_object *args, const char *key);

/*
 * True when o is a string of 1..max bytes of valid UTF-8 without NUL
 * bytes (overlong forms and surrogates refused).
 */
bool rpc_valid_text(const msgpack_object *o, size_t max);

/* Packing helpers. */
void rpc_pack_str(msgpack_packer *pk, const char *s);
void rpc_pack_kv_str(msgpack_packer *pk, const char *key, const char *val);
void rpc_pack_kv_u64(msgpack_packer *pk, const char *key, uint64_t val);
void rpc_pack_kv_i64(msgpack_packer *pk, const char *key, int64_t val);
void rpc_pack_kv_double(msgpack_packer *pk, const char *key, double val);
void rpc_pack_kv_bool(msgpack_packer *pk, const char *key, bool val);

/* Starts [1, msgid, nil, ...]; the caller packs the result next. */
void rpc_pack_result_head(msgpack_packer *pk, uint32_t msgid);
/* Packs a whole error response [1, msgid, {code,name,message}, nil]. */
void rpc_pack_error(msgpack_packer *pk, uint32_t msgid, int code,
                    const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Packs [2, "error", [{code,name,message}]] for a message with no msgid. */
void rpc_pack_error_notification(msgpack_packer *pk, int code,
                                 const char *message);

#endif
