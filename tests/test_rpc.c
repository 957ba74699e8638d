/*
 * Tests for rpc: request decoding edge cases. Regression: msgpack-c gives
 * an empty string a NULL pointer, which must never reach memcmp/memcpy
 * (found by the fuzzer; UBSan aborts this test if it does).
 */
#include <criterion/criterion.h>

#include "geosteer/protocol.h"
#include "rpc.h"

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
                              "\xa4user\xa1u\xa6no_geo\xc2\xa2ip\xa9"
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
  cr_assert_eq(pk.ip_len, 9u);
  cr_assert(memcmp(pk.ip, "2001:db8::", 9) == 0);
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
