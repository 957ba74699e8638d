/*
 * Tests for rpc: request decoding edge cases. Regression: msgpack-c gives
 * an empty string a NULL pointer, which must never reach memcmp/memcpy
 * (found by the fuzzer; UBSan aborts this test if it does).
 */
#include <criterion/criterion.h>

#include "geosteer/protocol.h"
#include "msgpack_same.h"
#include "rng.h"
#include "rpc.h"
#include "scan.h"

Test(rpc, empty_method_and_empty_argument_name)
{
  /* [0, 7, "", [{"": "p"}]] */
  static const char msg[] = "\x94\x00\x07\xa0\x91\x81\xa0\xa1p";
  msgpack_zone zone;
  struct rpc_request req;
  bool known;
  uint32_t msgid = 0;
  char why[256], copy[8];
  static const char *const allowed[] = {"ip", "user", NULL};
  static const char *const none[] = {NULL};

  cr_assert(rpc_zone_init(&zone, 4096));
  cr_assert(rpc_decode(msg, sizeof(msg) - 1, &zone, &req, &known, &msgid, why,
                       sizeof(why)),
            "%s", why);
  cr_assert(known);
  cr_assert_eq(msgid, 7u);
  cr_assert(rpc_str_is(req.method, ""));
  cr_assert(!rpc_str_is(req.method, "route"));
  cr_assert_str_eq(rpc_str_copy(req.method, copy, sizeof(copy)), "");
  cr_assert(!rpc_check_keys(req.args, allowed, why, sizeof(why)));
  cr_assert(strstr(why, "unknown argument ''"), "%s", why);
  cr_assert(!rpc_check_keys(req.args, none, why, sizeof(why)));
  cr_assert(strstr(why, "takes no arguments"), "%s", why);
  msgpack_zone_destroy(&zone);
}

Test(rpc, repeated_empty_argument_names)
{
  /* [0, 1, "route", [{"": 1, "": 2}]] */
  static const char msg[] = "\x94\x00\x01\xa5route\x91\x82\xa0\x01\xa0\x02";
  msgpack_zone zone;
  struct rpc_request req;
  bool known;
  uint32_t msgid;
  char why[256];
  static const char *const allowed[] = {"", NULL};

  cr_assert(rpc_zone_init(&zone, 4096));
  cr_assert(rpc_decode(msg, sizeof(msg) - 1, &zone, &req, &known, &msgid, why,
                       sizeof(why)));
  cr_assert(!rpc_check_keys(req.args, allowed, why, sizeof(why)));
  cr_assert(strstr(why, "given twice"), "%s", why);
  msgpack_zone_destroy(&zone);
}

Test(rpc, refuses_responses_and_bad_envelopes)
{
  static const struct {
    const char *bytes;
    size_t len;
  } cases[] = {
      {"\x94\x01\x01\xc0\xc0", 5}, /* a response */
      {"\x93\x00\x01\xa4ping", 8}, /* request of 3 */
      {"\x94\x00\xcf\x00\x00\x00\x01\x00\x00\x00\x00\xa4ping\x90", 16},
      {"\x94\x00\x01\x01\x90", 5},              /* method not a string */
      {"\x94\x00\x01\xa4ping\x92\x80\x80", 10}, /* two maps */
      {"\x94\x00\x01\xa4ping\x91\x01", 9},      /* params [1] */
  };
  msgpack_zone zone;
  cr_assert(rpc_zone_init(&zone, 4096));
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    struct rpc_request req;
    bool known;
    uint32_t msgid;
    char why[256];
    cr_assert(!rpc_decode(cases[i].bytes, cases[i].len, &zone, &req, &known,
                          &msgid, why, sizeof(why)),
              "case %zu accepted", i);
    msgpack_zone_clear(&zone);
  }
  msgpack_zone_destroy(&zone);
}

/* rpc_peek_route: what it reads from a route request's bytes, and what it
 * leaves alone. sizeof - 1: the literals' NUL is not part of a message. */
#define PEEK(lit, out) rpc_peek_route(lit, sizeof(lit) - 1, out)

Test(rpc, peek_route_finds_the_ip_and_user_texts)
{
  /* [0, 7, "route", [{"ip": "1.2.3.4"}]] */
  static const char one[] = "\x94\x00\x07\xa5route\x91\x81\xa2ip\xa7"
                            "1.2.3.4";
  /* msgid 70000 (uint32), then {"user": "u", "no_geo": false, "ip": v6} */
  static const char later[] = "\x94\x00\xce\x00\x01\x11\x70\xa5route\x91\x83"
                              "\xa4user\xa1u\xa6no_geo\xc2\xa2ip\xaa"
                              "2001:db8::";
  /* an ip of 39 characters, as str8, and a user after it */
  static const char str8[] =
      "\x94\x00\x01\xa5route\x91\x82\xa2ip\xd9\x27"
      "2001:0db8:0000:0000:0000:0000:0000:0001\xa4user\xa2uv";
  struct rpc_peek pk;

  cr_assert(PEEK(one, &pk));
  cr_assert_eq(pk.ip_len, 7u);
  cr_assert(memcmp(pk.ip, "1.2.3.4", 7) == 0);
  cr_assert_eq(pk.ip, one + 15, "the text lies in the message");
  cr_assert_null(pk.user);
  cr_assert(PEEK(later, &pk));
  cr_assert_eq(pk.ip_len, 10u);
  cr_assert(memcmp(pk.ip, "2001:db8::", 10) == 0);
  cr_assert_eq(pk.user_len, 1u);
  cr_assert_eq(pk.user, later + 21);
  cr_assert(PEEK(str8, &pk));
  cr_assert_eq(pk.ip_len, 39u);
  cr_assert(memcmp(pk.ip, "2001:0db8:", 10) == 0);
  cr_assert_eq(pk.user_len, 2u);
  cr_assert(memcmp(pk.user, "uv", 2) == 0);
}

Test(rpc, peek_route_without_ip_means_the_peer)
{
  static const char no_args[] = "\x94\x00\x01\xa5route\x91\x80";
  static const char user[] = "\x94\x00\x01\xa5route\x91\x81\xa4user\xa1u";
  struct rpc_peek pk;

  cr_assert(PEEK(no_args, &pk));
  cr_assert_null(pk.ip);
  cr_assert_null(pk.user);
  cr_assert_eq(pk.ip_len, 0u);
  cr_assert(PEEK(user, &pk));
  cr_assert_null(pk.ip);
  cr_assert_not_null(pk.user);
}

Test(rpc, peek_route_leaves_everything_else)
{
  static const char *const others[] = {
      /* ping */
      "\x94\x00\x01\xa4ping\x90",
      /* a notification */
      "\x93\x02\xa5route\x91\x81\xa2ip\xa7"
      "1.2.3.4",
      /* params not an array of one map */
      "\x94\x00\x01\xa5route\x92\x80\x80",
      /* a key that is not a fixstr */
      "\x94\x00\x01\xa5route\x91\x81\xd9\x02ip\xa7"
      "1.2.3.4",
      /* an ip that is not a string */
      "\x94\x00\x01\xa5route\x91\x81\xa2ip\x07",
      /* a user that is not a string */
      "\x94\x00\x01\xa5route\x91\x81\xa4user\x90",
      /* cut short inside the map */
      "\x94\x00\x01\xa5route\x91\x82\xa4user\xa1u\xa2",
      /* an ip string longer than what is left */
      "\x94\x00\x01\xa5route\x91\x81\xa2ip\xd9\x30"
      "1.2.3.4",
  };
  struct rpc_peek pk;

  for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++)
    cr_assert(!rpc_peek_route(others[i], strlen(others[i]), &pk), "case %zu",
              i);
}

/*
 * rpc_decode reads the flat form in one pass (decode_flat) and everything
 * else through the general decoder. Both must give the same request for
 * the same bytes: random messages, mostly of the flat form and some just
 * outside it (wider integers, str8 methods, map16, non-string keys, nested
 * values, a byte too few or too many) that pass the scanner go through
 * rpc_decode and, as the reference, through rpc_unpack and the envelope's
 * rules.
 */

/* One random value, sometimes outside the flat form (then *flat = false). */
static size_t rand_value(struct rng *r, uint8_t *p, bool key, bool *flat)
{
  static const char *const keys[] = {"ip",      "user", "hint", "no_geo",
                                     "session", "",     "x"};
  uint64_t v = rng_next(r);
  size_t n = 0, len;

  switch (v % (key ? 9 : 12)) {
  case 0: /* a non-string key or an array value: general decoder only */
    *flat = false;
    if (key) {
      p[n++] = 0x05;
    } else {
      p[n++] = 0x92;
      p[n++] = 0xc3;
      p[n++] = 0xa1;
      p[n++] = 'z';
    }
    return n;
  case 1: /* str8 */
    *flat = !key && *flat;
    len = v >> 8 & 7;
    p[n++] = 0xd9;
    p[n++] = (uint8_t)len;
    break;
  case 2: /* str16 */
    *flat = !key && *flat;
    len = v >> 8 & 7;
    p[n++] = 0xda;
    p[n++] = 0;
    p[n++] = (uint8_t)len;
    break;
  case 9: /* nil, never-used (refused by both), booleans */
    p[n++] = (uint8_t)(0xc0 + (v >> 8) % 4);
    *flat = *flat && p[0] != 0xc1;
    return n;
  case 10: /* a fixint, or another lead byte: a bad message then */
    p[n++] = (uint8_t)(v >> 8);
    *flat = *flat && (p[0] <= 0x7f || p[0] >= 0xe0);
    return n;
  case 11:
    *flat = false;
    p[n++] = 0xcc; /* uint8 */
    p[n++] = (uint8_t)(v >> 16);
    return n;
  default: { /* fixstr, a name the route method knows most of the time */
    const char *k = keys[(v >> 8) % 7];
    len = strlen(k);
    p[n++] = (uint8_t)(0xa0 | len);
    memcpy(p + n, k, len);
    return n + len;
  }
  }
  for (size_t i = 0; i < len; i++)
    p[n++] = (uint8_t)('a' + (v >> (16 + i)) % 26);
  return n;
}

/* One random request, mostly of the flat form (then *flat = true). */
static size_t rand_request(struct rng *r, uint8_t *p, bool *flat)
{
  uint64_t v = rng_next(r);
  size_t n = 0;
  uint32_t id = (uint32_t)(v >> 32);

  *flat = v % 16 != 0;
  p[n++] = 0x94;
  p[n++] = *flat ? 0x00 : 0xcc; /* the type, sometimes as uint8 */
  if (!*flat)
    p[n++] = 0x00;
  switch (v >> 4 & 7) {
  case 0:
    p[n++] = (uint8_t)(id & 0x7f);
    break;
  case 1:
    p[n++] = 0xcc;
    p[n++] = (uint8_t)id;
    break;
  case 2:
    p[n++] = 0xcd;
    p[n++] = (uint8_t)(id >> 8);
    p[n++] = (uint8_t)id;
    break;
  case 3: /* uint64: general decoder only */
    *flat = false;
    p[n++] = 0xcf;
    for (int i = 0; i < 4; i++)
      p[n++] = 0;
    for (int i = 24; i >= 0; i -= 8)
      p[n++] = (uint8_t)(id >> i);
    break;
  default:
    p[n++] = 0xce;
    for (int i = 24; i >= 0; i -= 8)
      p[n++] = (uint8_t)(id >> i);
  }
  if (v >> 8 & 1) {
    p[n++] = 0xa5;
    memcpy(p + n, "route", 5);
    n += 5;
  } else {
    *flat = false;
    p[n++] = 0xd9; /* str8: general decoder only */
    p[n++] = 4;
    memcpy(p + n, "ping", 4);
    n += 4;
  }
  if ((v >> 9) % 8 == 0) {
    p[n++] = 0x90;
    return n;
  }
  if ((v >> 20) % 16 == 0)
    *flat = false; /* params a bare map: refused by both */
  else
    p[n++] = 0x91;
  size_t pairs = (v >> 12) % 6;
  if ((v >> 16) % 16 == 0) {
    *flat = false;
    p[n++] = 0xde; /* map16: general decoder only */
    p[n++] = 0;
    p[n++] = (uint8_t)pairs;
  } else {
    p[n++] = (uint8_t)(0x80 | pairs);
  }
  for (size_t i = 0; i < pairs; i++) {
    n += rand_value(r, p + n, true, flat);
    n += rand_value(r, p + n, false, flat);
  }
  return n;
}

Test(rpc, flat_form_decodes_as_the_general_decoder)
{
  struct rng r = {20261206};
  msgpack_zone zone, ref_zone;
  size_t flat_ok = 0, other_ok = 0;

  cr_assert(rpc_zone_init(&zone, 4096));
  cr_assert(rpc_zone_init(&ref_zone, 4096));
  for (int t = 0; t < 50000; t++) {
    uint8_t msg[512];
    bool flat;
    size_t len = rand_request(&r, msg, &flat);
    uint64_t cut = rng_next(&r) % 32;
    if (cut == 0 && len > 1)
      len--; /* one byte short */
    else if (cut == 1)
      msg[len++] = 0xc0; /* one byte too many */
    flat = flat && cut > 1;
    /* The server decodes only what the scanner passed as one message. */
    size_t size;
    if (scan_message(msg, len, 4096, SCAN_MAX_DEPTH, &size) != SCAN_OK ||
        size != len) {
      cr_assert(!flat, "message %d: a flat message the scanner refused", t);
      continue;
    }

    struct rpc_request req;
    bool known;
    uint32_t msgid = 0;
    char why[256];
    bool ok = rpc_decode((const char *)msg, len, &zone, &req, &known, &msgid,
                         why, sizeof(why));

    /* The reference: the general decoder and the envelope's rules. */
    msgpack_object o;
    bool ref_ok = rpc_unpack((const char *)msg, len, &ref_zone, &o) &&
                  o.type == MSGPACK_OBJECT_ARRAY && o.via.array.size == 4;
    const msgpack_object *e = ref_ok ? o.via.array.ptr : NULL;
    ref_ok = ref_ok && e[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
             e[0].via.u64 == 0 &&
             e[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
             e[1].via.u64 <= UINT32_MAX && e[2].type == MSGPACK_OBJECT_STR &&
             e[3].type == MSGPACK_OBJECT_ARRAY && e[3].via.array.size <= 1 &&
             (e[3].via.array.size == 0 ||
              e[3].via.array.ptr[0].type == MSGPACK_OBJECT_MAP);
    cr_assert_eq(ok, ref_ok, "message %d: decoded %d, reference %d (%s)", t, ok,
                 ref_ok, why);
    if (ok) {
      const msgpack_object *ref_args =
          e[3].via.array.size ? &e[3].via.array.ptr[0] : NULL;
      flat_ok += flat;
      other_ok += !flat;
      cr_assert_eq(req.type, GS_RPC_REQUEST);
      cr_assert(known);
      cr_assert_eq(req.msgid, (uint32_t)e[1].via.u64, "message %d", t);
      cr_assert_eq(msgid, req.msgid);
      msgpack_object method = {.type = MSGPACK_OBJECT_STR};
      method.via.str = req.method;
      cr_assert(msgpack_same(&method, &e[2]), "message %d: method", t);
      cr_assert_eq(req.args == NULL, ref_args == NULL, "message %d", t);
      if (ref_args != NULL)
        cr_assert(msgpack_same(req.args, ref_args), "message %d: arguments", t);
    }
    msgpack_zone_clear(&zone);
    msgpack_zone_clear(&ref_zone);
  }
  /* Both forms were decoded many times over. */
  cr_assert_gt(flat_ok, 5000u, "%zu flat messages decoded", flat_ok);
  cr_assert_gt(other_ok, 2000u, "%zu others decoded", other_ok);
  msgpack_zone_destroy(&zone);
  msgpack_zone_destroy(&ref_zone);
}
