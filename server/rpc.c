/*
 * rpc: request decoding and reply encoding. See rpc.h.
 */
#include "rpc.h"

#include "scan.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "geosteer/protocol.h"
#include "text.h"

void wbuf_free(struct wbuf *w)
{
  free(w->data);
  memset(w, 0, sizeof(*w));
}

bool wbuf_reserve(struct wbuf *w, size_t len)
{
  if (w->failed)
    return false;
  if (w->len + len > w->cap) {
    size_t cap = w->cap ? w->cap : 4096;
    while (cap < w->len + len)
      cap *= 2;
    char *d = realloc(w->data, cap);
    if (d == NULL) {
      w->failed = true;
      return false;
    }
    w->data = d;
    w->cap = cap;
  }
  return true;
}

int wbuf_write(void *data, const char *buf, size_t len)
{
  struct wbuf *w = data;

  if (!wbuf_reserve(w, len))
    return -1;
  if (len > 0)
    memcpy(w->data + w->len, buf, len);
  w->len += len;
  return 0;
}

bool rpc_zone_init(msgpack_zone *zone, size_t max_message)
{
  /* Worst case every byte is an element: one msgpack_object each. */
  return msgpack_zone_init(zone,
                           (max_message + 16) * sizeof(msgpack_object) + 4096);
}

bool rpc_str_is(msgpack_object_str s, const char *lit)
{
  size_t n = strlen(lit);
  /* msgpack-c gives an empty string a NULL ptr: never pass it on. */
  return s.size == n && (n == 0 || memcmp(s.ptr, lit, n) == 0);
}

char *rpc_str_copy(msgpack_object_str s, char *buf, size_t size)
{
  size_t n = s.size < size - 1 ? s.size : size - 1;
  if (n > 0) /* an empty string's ptr may be NULL */
    memcpy(buf, s.ptr, n);
  buf[n] = '\0';
  return buf;
}

static bool as_u32(const msgpack_object *o, uint32_t *out)
{
  if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > UINT32_MAX)
    return false;
  *out = (uint32_t)o->via.u64;
  return true;
}

/* Makes o the string of the n bytes at p (all in the input); the end. */
static const uint8_t *str_object(msgpack_object *o, const uint8_t *p, size_t n)
{
  o->type = MSGPACK_OBJECT_STR;
  o->via.str.size = (uint32_t)n;
  o->via.str.ptr = n ? (const char *)p : NULL; /* as msgpack_unpack */
  return p + n;
}

/*
 * A decoder for the forms requests take: nil, booleans, integers,
 * strings, arrays and maps (not floats, bin or ext: then false, and
 * msgpack_unpack decodes it). It builds the same objects msgpack_unpack
 * builds, in the same zone, strings pointing into the input, but without
 * its general machinery, which costs more than the rest of a route
 * request's handling. The input has passed the scanner, so it is one
 * complete object no deeper than SCAN_MAX_DEPTH; every read is still
 * bounded by end. Returns the byte after the object, or NULL.
 */
static const uint8_t *unpack_simple(const uint8_t *p, const uint8_t *end,
                                    msgpack_zone *zone, msgpack_object *o,
                                    int depth)
{
  uint8_t b;
  uint64_t n = 0;
  int w; /* bytes of a length or value after the type byte */

  if (p >= end || depth > SCAN_MAX_DEPTH)
    return NULL;
  b = *p++;
  if (b <= 0x7f) {
    o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
    o->via.u64 = b;
    return p;
  }
  if (b >= 0xe0) {
    o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
    o->via.i64 = (int8_t)b;
    return p;
  }
  if (b == 0xc0 || b == 0xc2 || b == 0xc3) {
    o->type = b == 0xc0 ? MSGPACK_OBJECT_NIL : MSGPACK_OBJECT_BOOLEAN;
    o->via.boolean = b == 0xc3;
    return p;
  }
  /* The width of what follows the type byte, and what kind it is. */
  if (b >= 0xcc && b <= 0xd3)
    w = 1 << ((b - 0xcc) & 3); /* uint8..64, int8..64 */
  else if (b == 0xd9 || b == 0xda || b == 0xdb)
    w = 1 << (b - 0xd9); /* str8..32 */
  else if (b == 0xdc || b == 0xde)
    w = 2; /* array16, map16 */
  else if (b == 0xdd || b == 0xdf)
    w = 4; /* array32, map32 */
  else
    w = 0; /* fixstr, fixarray, fixmap; anything else is not handled */
  if ((size_t)(end - p) < (size_t)w)
    return NULL;
  for (int i = 0; i < w; i++)
    n = n << 8 | *p++;
  if (b >= 0xcc && b <= 0xcf) {
    o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
    o->via.u64 = n;
    return p;
  }
  if (b >= 0xd0 && b <= 0xd3) {
    int64_t v = w == 1   ? (int8_t)n
                : w == 2 ? (int16_t)n
                : w == 4 ? (int32_t)n
                         : (int64_t)n;
    o->type = v < 0 ? MSGPACK_OBJECT_NEGATIVE_INTEGER
                    : MSGPACK_OBJECT_POSITIVE_INTEGER;
    o->via.i64 = v; /* u64 alike for v >= 0 */
    return p;
  }
  if ((b & 0xe0) == 0xa0 || (b >= 0xd9 && b <= 0xdb)) {
    if ((b & 0xe0) == 0xa0)
      n = b & 0x1f;
    if ((uint64_t)(end - p) < n)
      return NULL;
    return str_object(o, p, (size_t)n);
  }
  bool is_map = (b & 0xf0) == 0x80 || b == 0xde || b == 0xdf;
  if ((b & 0xf0) == 0x90 || (b & 0xf0) == 0x80)
    n = b & 0x0f;
  else if (!(b >= 0xdc && b <= 0xdf))
    return NULL; /* float, bin, ext, never-used */
  if (n > (uint64_t)(end - p))
    return NULL; /* every element takes a byte at least */
  if (is_map) {
    msgpack_object_kv *kv =
        n ? msgpack_zone_malloc(zone, n * sizeof(*kv)) : NULL;
    if (n && kv == NULL)
      return NULL;
    for (uint64_t i = 0; i < n && p; i++) {
      p = unpack_simple(p, end, zone, &kv[i].key, depth + 1);
      if (p)
        p = unpack_simple(p, end, zone, &kv[i].val, depth + 1);
    }
    o->type = MSGPACK_OBJECT_MAP;
    o->via.map.size = (uint32_t)n;
    o->via.map.ptr = kv;
    return p;
  }
  msgpack_object *a = n ? msgpack_zone_malloc(zone, n * sizeof(*a)) : NULL;
  if (n && a == NULL)
    return NULL;
  for (uint64_t i = 0; i < n && p; i++)
    p = unpack_simple(p, end, zone, &a[i], depth + 1);
  o->type = MSGPACK_OBJECT_ARRAY;
  o->via.array.size = (uint32_t)n;
  o->via.array.ptr = a;
  return p;
}

bool rpc_unpack(const char *msg, size_t len, msgpack_zone *zone,
                msgpack_object *o)
{
  const uint8_t *end = (const uint8_t *)msg + len;
  size_t off = 0;

  if (unpack_simple((const uint8_t *)msg, end, zone, o, 0) == end)
    return true;
  return msgpack_unpack(msg, len, &off, zone, o) == MSGPACK_UNPACK_SUCCESS &&
         off == len;
}

/*
 * The flat form almost every request takes: [0, msgid, method, params]
 * with a positive fixint 0, a msgid that is a positive fixint, uint8,
 * uint16 or uint32, a fixstr method and params [] or [fixmap] whose keys
 * are fixstr and whose values are nil, booleans, fixints, fixstr or
 * str8/str16. flat_head() and flat_value() read it without recursion or
 * allocation; anything else makes them return NULL and is left to the
 * general decoder, which gives the same objects for these bytes.
 */

/* One flat value (or, with key set, a fixstr key) into *o. */
static const uint8_t *flat_value(const uint8_t *p, const uint8_t *end,
                                 msgpack_object *o, bool key)
{
  uint8_t b;
  size_t n;

  if (p >= end)
    return NULL;
  b = *p++;
  if ((b & 0xe0) == 0xa0) {
    n = b & 0x1f;
  } else if (key) {
    return NULL;
  } else if (b <= 0x7f || b >= 0xe0) {
    o->type = b <= 0x7f ? MSGPACK_OBJECT_POSITIVE_INTEGER
                        : MSGPACK_OBJECT_NEGATIVE_INTEGER;
    o->via.i64 = (int8_t)b; /* for a positive fixint, u64 alike */
    return p;
  } else if (b == 0xc0 || b == 0xc2 || b == 0xc3) {
    o->type = b == 0xc0 ? MSGPACK_OBJECT_NIL : MSGPACK_OBJECT_BOOLEAN;
    o->via.boolean = b == 0xc3;
    return p;
  } else if (b == 0xd9 && p < end) {
    n = *p++;
  } else if (b == 0xda && end - p >= 2) {
    n = (size_t)p[0] << 8 | p[1];
    p += 2;
  } else {
    return NULL;
  }
  if ((size_t)(end - p) < n)
    return NULL;
  return str_object(o, p, n);
}

/*
 * Reads the envelope up to the first key: the msgid, the method and the
 * number of pairs (-1 for params []). Every read is bounded by end.
 */
static const uint8_t *flat_head(const uint8_t *p, const uint8_t *end,
                                uint32_t *msgid, msgpack_object_str *method,
                                int *pairs)
{
  size_t n;

  if (end - p < 5 || p[0] != 0x94 || p[1] != 0x00)
    return NULL;
  p += 2;
  switch (*p) {
  case 0xcc:
    n = 1;
    break;
  case 0xcd:
    n = 2;
    break;
  case 0xce:
    n = 4;
    break;
  default:
    if (*p > 0x7f)
      return NULL;
    n = 0;
  }
  if ((size_t)(end - p) < n + 1)
    return NULL;
  uint32_t v = n ? 0 : *p; /* a positive fixint is its own value */
  for (size_t i = 1; i <= n; i++)
    v = v << 8 | p[i];
  *msgid = v;
  p += 1 + n;
  msgpack_object m;
  p = flat_value(p, end, &m, true); /* the method, a fixstr */
  if (p == NULL || p == end)
    return NULL;
  *method = m.via.str;
  if (*p == 0x90) {
    *pairs = -1;
    return p + 1;
  }
  if (*p != 0x91 || end - p < 2 || (p[1] & 0xf0) != 0x80)
    return NULL;
  *pairs = p[1] & 0x0f;
  return p + 2;
}

/*
 * Decodes a request of the flat form into *req, its arguments in zone;
 * false, with *req untouched, for any other form.
 */
static bool decode_flat(const uint8_t *p, const uint8_t *end,
                        msgpack_zone *zone, struct rpc_request *req)
{
  msgpack_object *map = NULL;
  msgpack_object_str method;
  uint32_t msgid;
  int pairs;

  p = flat_head(p, end, &msgid, &method, &pairs);
  if (p == NULL)
    return false;
  if (pairs >= 0) {
    /* The same layout msgpack_unpack gives: a map object, its pairs. */
    msgpack_object_kv *kv =
        pairs ? msgpack_zone_malloc(zone, (size_t)pairs * sizeof(*kv)) : NULL;
    map = msgpack_zone_malloc(zone, sizeof(*map));
    if (map == NULL || (pairs && kv == NULL))
      return false;
    for (int i = 0; i < pairs && p != NULL; i++) {
      p = flat_value(p, end, &kv[i].key, true);
      if (p != NULL)
        p = flat_value(p, end, &kv[i].val, false);
    }
    map->type = MSGPACK_OBJECT_MAP;
    map->via.map.size = (uint32_t)pairs;
    map->via.map.ptr = kv;
  }
  if (p != end)
    return false;
  const msgpack_object *args = map;
  req->type = GS_RPC_REQUEST;
  req->msgid = msgid;
  req->method = method;
  req->args = args;
  return true;
}

bool rpc_decode(const char *msg, size_t len, msgpack_zone *zone,
                struct rpc_request *req, bool *msgid_known, uint32_t *msgid,
                char *why, size_t why_size)
{
  msgpack_object o;
  const msgpack_object *e, *params;

  *msgid_known = false;
  if (decode_flat((const uint8_t *)msg, (const uint8_t *)msg + len, zone,
                  req)) {
    *msgid_known = true;
    *msgid = req->msgid;
    return true;
  }
  if (!rpc_unpack(msg, len, zone, &o)) {
    snprintf(why, why_size, "malformed MessagePack");
    return false;
  }
  if (o.type != MSGPACK_OBJECT_ARRAY || o.via.array.size < 3 ||
      o.via.array.size > 4) {
    snprintf(why, why_size,
             "expected [0, msgid, method, params] or [2, method, params]");
    return false;
  }
  e = o.via.array.ptr;
  if (e[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
      (e[0].via.u64 != GS_RPC_REQUEST && e[0].via.u64 != GS_RPC_NOTIFICATION)) {
    snprintf(why, why_size,
             "message type must be 0 (request) or 2 "
             "(notification)");
    return false;
  }
  if (e[0].via.u64 == GS_RPC_REQUEST) {
    if (o.via.array.size != 4) {
      snprintf(why, why_size, "a request is [0, msgid, method, params]");
      return false;
    }
    if (!as_u32(&e[1], &req->msgid)) {
      snprintf(why, why_size, "msgid must be an unsigned 32-bit integer");
      return false;
    }
    *msgid_known = true;
    *msgid = req->msgid;
    req->type = GS_RPC_REQUEST;
    e++;
  } else {
    if (o.via.array.size != 3) {
      snprintf(why, why_size, "a notification is [2, method, params]");
      return false;
    }
    req->type = GS_RPC_NOTIFICATION;
    req->msgid = 0;
  }
  if (e[1].type != MSGPACK_OBJECT_STR) {
    snprintf(why, why_size, "method must be a string");
    return false;
  }
  req->method = e[1].via.str;
  params = &e[2];
  if (params->type != MSGPACK_OBJECT_ARRAY || params->via.array.size > 1 ||
      (params->via.array.size == 1 &&
       params->via.array.ptr[0].type != MSGPACK_OBJECT_MAP)) {
    snprintf(why, why_size,
             "params must be [] or an array holding one map of arguments");
    return false;
  }
  req->args = params->via.array.size ? &params->via.array.ptr[0] : NULL;
  return true;
}

bool rpc_check_keys(const msgpack_object *args, const char *const *allowed,
                    char *why, size_t why_size)
{
  if (args == NULL)
    return true;
  for (uint32_t i = 0; i < args->via.map.size; i++) {
    const msgpack_object *k = &args->via.map.ptr[i].key;
    bool ok = false;
    if (k->type != MSGPACK_OBJECT_STR) {
      snprintf(why, why_size, "argument names must be strings");
      return false;
    }
    for (const char *const *a = allowed; *a && !ok; a++)
      ok = rpc_str_is(k->via.str, *a);
    for (uint32_t j = 0; j < i && ok; j++) {
      const msgpack_object *k2 = &args->via.map.ptr[j].key;
      if (k2->via.str.size == k->via.str.size &&
          (k->via.str.size == 0 ||
           memcmp(k2->via.str.ptr, k->via.str.ptr, k->via.str.size) == 0)) {
        char name[40];
        snprintf(why, why_size, "argument '%s' given twice",
                 rpc_str_copy(k->via.str, name, sizeof(name)));
        return false;
      }
    }
    if (!ok && allowed[0] == NULL) {
      char name[40];
      snprintf(why, why_size, "takes no arguments, got '%s'",
               rpc_str_copy(k->via.str, name, sizeof(name)));
      return false;
    }
    if (!ok) {
      char name[40];
      size_t used =
          (size_t)snprintf(why, why_size, "unknown argument '%s' (expected:",
                           rpc_str_copy(k->via.str, name, sizeof(name)));
      for (const char *const *a = allowed; *a && used < why_size; a++)
        used += (size_t)snprintf(why + used, why_size - used, " %s", *a);
      if (used < why_size)
        snprintf(why + used, why_size - used, ")");
      return false;
    }
  }
  return true;
}

const msgpack_object *rpc_arg(const msgpack_object *args, const char *key)
{
  if (args == NULL)
    return NULL;
  for (uint32_t i = 0; i < args->via.map.size; i++)
    if (rpc_str_is(args->via.map.ptr[i].key.via.str, key))
      return &args->via.map.ptr[i].val;
  return NULL;
}

void rpc_pack_str(msgpack_packer *pk, const char *s)
{
  size_t n = strlen(s);
  msgpack_pack_str(pk, n);
  msgpack_pack_str_body(pk, s, n);
}

void rpc_pack_kv_str(msgpack_packer *pk, const char *key, const char *val)
{
  rpc_pack_str(pk, key);
  rpc_pack_str(pk, val);
}

void rpc_pack_kv_u64(msgpack_packer *pk, const char *key, uint64_t val)
{
  rpc_pack_str(pk, key);
  msgpack_pack_uint64(pk, val);
}

void rpc_pack_kv_i64(msgpack_packer *pk, const char *key, int64_t val)
{
  rpc_pack_str(pk, key);
  msgpack_pack_int64(pk, val);
}

void rpc_pack_kv_double(msgpack_packer *pk, const char *key, double val)
{
  rpc_pack_str(pk, key);
  msgpack_pack_double(pk, val);
}

void rpc_pack_kv_bool(msgpack_packer *pk, const char *key, bool val)
{
  rpc_pack_str(pk, key);
  if (val)
    msgpack_pack_true(pk);
  else
    msgpack_pack_false(pk);
}

void rpc_pack_result_head(msgpack_packer *pk, uint32_t msgid)
{
  msgpack_pack_array(pk, 4);
  msgpack_pack_uint8(pk, GS_RPC_RESPONSE);
  msgpack_pack_uint32(pk, msgid);
  msgpack_pack_nil(pk);
}

static void pack_error_map(msgpack_packer *pk, int code, const char *message)
{
  msgpack_pack_map(pk, 3);
  rpc_pack_kv_u64(pk, "code", (uint64_t)code);
  rpc_pack_kv_str(pk, "name", gs_code_name(code));
  rpc_pack_kv_str(pk, "message", message);
}

void rpc_pack_error(msgpack_packer *pk, uint32_t msgid, int code,
                    const char *fmt, ...)
{
  char message[512];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(message, sizeof(message), fmt, ap);
  va_end(ap);
  msgpack_pack_array(pk, 4);
  msgpack_pack_uint8(pk, GS_RPC_RESPONSE);
  msgpack_pack_uint32(pk, msgid);
  pack_error_map(pk, code, message);
  msgpack_pack_nil(pk);
}

void rpc_pack_error_notification(msgpack_packer *pk, int code,
                                 const char *message)
{
  msgpack_pack_array(pk, 3);
  msgpack_pack_uint8(pk, GS_RPC_NOTIFICATION);
  rpc_pack_str(pk, "error");
  msgpack_pack_array(pk, 1);
  pack_error_map(pk, code, message);
}

bool rpc_valid_text(const msgpack_object *o, size_t max)
{
  return o != NULL && o->type == MSGPACK_OBJECT_STR && o->via.str.size > 0 &&
         o->via.str.size <= max &&
         text_valid_utf8(o->via.str.ptr, o->via.str.size);
}

bool rpc_peek_route(const char *msg, size_t size, struct rpc_peek *out)
{
  const uint8_t *p = (const uint8_t *)msg, *end = p + size;
  msgpack_object_str method;
  uint32_t msgid;
  int pairs;

  memset(out, 0, sizeof(*out));
  p = flat_head(p, end, &msgid, &method, &pairs);
  if (p == NULL || pairs < 0 || !rpc_str_is(method, "route"))
    return false;
  for (int i = 0; i < pairs; i++) {
    msgpack_object k, v;
    if ((p = flat_value(p, end, &k, true)) == NULL ||
        (p = flat_value(p, end, &v, false)) == NULL)
      return false;
    const char **text = NULL;
    size_t *text_len = NULL;
    if (rpc_str_is(k.via.str, "ip") && out->ip == NULL) {
      text = &out->ip;
      text_len = &out->ip_len;
    } else if (rpc_str_is(k.via.str, "user") && out->user == NULL) {
      text = &out->user;
      text_len = &out->user_len;
    }
    if (text == NULL)
      continue;
    if (v.type != MSGPACK_OBJECT_STR)
      return false; /* leave it to the decoder to refuse */
    /* An empty text has no ptr: then where it ends, so that it is there. */
    *text = v.via.str.size ? v.via.str.ptr : (const char *)p;
    *text_len = v.via.str.size;
  }
  return p == end;
}
