/*
 * Tests for the load generator's reply parsers (bench/loadgen_rpc.c,
 * bench/loadgen_resp.c): a benchmark is only as true as its client, so the
 * client must find the end of every reply, wait for the rest of one that
 * is incomplete, and refuse what is not a reply. MessagePack replies are
 * checked against msgpack-c's packer on random objects of every type.
 */
#include <criterion/criterion.h>
#include <msgpack.h>
#include <string.h>

#include "../bench/loadgen_core.h"
#include "../bench/loadgen_resp.h"
#include "../bench/loadgen_rpc.h"
#include "rng.h"

/* A random object of any MessagePack type, nested at most depth deep. */
static void rand_object(struct rng *r, msgpack_packer *pk, int depth)
{
  static const char text[300] = "geosteer";
  uint64_t v = rng_next(r);
  uint32_t n;

  switch (v % (depth > 0 ? 12 : 9)) {
  case 0:
    msgpack_pack_nil(pk);
    break;
  case 1:
    (v >> 8) & 1 ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    break;
  case 2: { /* every integer width, either sign */
    int64_t x = (int64_t)((v >> 1) >> ((v >> 8) % 64));
    msgpack_pack_int64(pk, (v >> 14) & 1 ? -x - 1 : x);
    break;
  }
  case 3:
    msgpack_pack_uint64(pk, (v >> 2) >> ((v >> 8) % 64));
    break;
  case 4:
    (v >> 8) & 1 ? msgpack_pack_float(pk, 1.5f) : msgpack_pack_double(pk, 2.5);
    break;
  case 5: /* fixstr, str8, str16 */
    n = (uint32_t)((v >> 8) % 300);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, text, n);
    break;
  case 6: /* bin8, bin16 */
    n = (uint32_t)((v >> 8) % 300);
    msgpack_pack_bin(pk, n);
    msgpack_pack_bin_body(pk, text, n);
    break;
  case 7:
  case 8: /* fixext 1..16, ext8, ext16 */
    n = (v >> 8) & 1 ? 1u << ((v >> 9) % 5) : (uint32_t)((v >> 9) % 300);
    msgpack_pack_ext(pk, n, 7);
    msgpack_pack_ext_body(pk, text, n);
    break;
  case 9:
  case 10: /* fixarray, array16 */
    n = (v >> 8) & 7 ? (uint32_t)((v >> 11) % 4) : 16 + (uint32_t)(v >> 11) % 4;
    msgpack_pack_array(pk, n);
    for (uint32_t i = 0; i < n; i++)
      rand_object(r, pk, depth - 1);
    break;
  default: /* fixmap, map16 */
    n = (v >> 8) & 7 ? (uint32_t)((v >> 11) % 4) : 16 + (uint32_t)(v >> 11) % 4;
    msgpack_pack_map(pk, n);
    for (uint32_t i = 0; i < 2 * n; i++)
      rand_object(r, pk, depth - 1);
    break;
  }
}

/*
 * Checks loadgen_rpc_reply on the reply p[0..len) (msgid 9): the whole
 * reply and anything after it give its length, every shorter part 0.
 */
static void check_reply(const char *p, size_t len, bool want_failed)
{
  char buf[8192 + 3], why[LOADGEN_TEXT_MAX + 1];
  bool failed = !want_failed;

  cr_assert(len + 3 <= sizeof(buf));
  memcpy(buf, p, len);
  memcpy(buf + len, "\x94\x01\x09", 3); /* the start of the next reply */
  long got = loadgen_rpc_reply(buf, len, 9, &failed, why, sizeof(why));
  cr_assert_eq(got, (long)len, "%ld of %zu: %s", got, len, why);
  cr_assert_eq(failed, want_failed);
  cr_assert_eq(loadgen_rpc_reply(buf, len + 3, 9, &failed, why, sizeof(why)),
               (long)len);
  for (size_t k = 0; k < len; k++)
    cr_assert_eq(loadgen_rpc_reply(buf, k, 9, &failed, why, sizeof(why)), 0,
                 "a reply of %zu bytes cut at %zu", len, k);
}

Test(loadgen, rpc_reply_ends_where_msgpack_c_packed_it)
{
  struct rng r = {20261206};
  msgpack_sbuffer sb;
  msgpack_packer pk;

  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  for (int i = 0; i < 2000; i++) {
    bool error = i % 5 == 0;
    msgpack_sbuffer_clear(&sb);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_uint32(&pk, 9);
    if (error) {
      rand_object(&r, &pk, 3);
      msgpack_pack_nil(&pk);
    } else {
      msgpack_pack_nil(&pk);
      rand_object(&r, &pk, 3);
    }
    if (sb.size > 8192)
      continue;
    /* A nil error object is no error: only a non-nil one fails. */
    check_reply(sb.data, sb.size, error && sb.data[3] != (char)0xc0);
  }
  msgpack_sbuffer_destroy(&sb);
}

Test(loadgen, rpc_reply_reads_the_32_bit_forms)
{
  /* [1, 9, nil, X] with X in a form msgpack-c packs only for large sizes. */
  static const struct {
    const char *x;
    size_t len;
  } forms[] = {
      {"\xdb\x00\x00\x00\x03"
       "abc",
       8},                                           /* str32 */
      {"\xc6\x00\x00\x00\x02xy", 7},                 /* bin32 */
      {"\xc9\x00\x00\x00\x02\x05xy", 8},             /* ext32 */
      {"\xdd\x00\x00\x00\x02\x01\xa1z", 8},          /* array32 */
      {"\xdf\x00\x00\x00\x01\xa1k\xcd\x01\x00", 10}, /* map32 */
      {"\xd9\x00", 2},                               /* empty str8 */
      {"\xdc\x00\x00", 3},                           /* empty array16 */
  };

  for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
    char reply[32] = "\x94\x01\x09\xc0";
    memcpy(reply + 4, forms[i].x, forms[i].len);
    check_reply(reply, 4 + forms[i].len, false);
  }
}

Test(loadgen, rpc_reply_refuses_what_is_not_a_reply)
{
  char why[LOADGEN_TEXT_MAX + 1];
  bool failed;

  /* The never-used type byte 0xc1, inside the result. */
  cr_assert_eq(loadgen_rpc_reply("\x94\x01\x09\xc0\x91\xc1", 6, 9, &failed, why,
                                 sizeof(why)),
               -1);
  cr_assert_eq(
      loadgen_rpc_reply("\x93\x01\x09\xc0", 4, 9, &failed, why, sizeof(why)),
      -1);
  cr_assert(strstr(why, "4-element"), "%s", why);
  /* A request, not a response. */
  cr_assert_eq(loadgen_rpc_reply("\x94\x00\x09\xc0\xc0", 5, 9, &failed, why,
                                 sizeof(why)),
               -1);
  /* Out of order. */
  cr_assert_eq(loadgen_rpc_reply("\x94\x01\x08\xc0\xc0", 5, 9, &failed, why,
                                 sizeof(why)),
               -1);
  cr_assert(strstr(why, "request order"), "%s", why);
}

Test(loadgen, rpc_reply_renders_an_error)
{
  /* [1, 9, {"code": 3, "name": "bad_request"}, nil] */
  static const char reply[] = "\x94\x01\x09\x82\xa4"
                              "code\x03\xa4name\xab"
                              "bad_request\xc0";
  char why[LOADGEN_TEXT_MAX + 1];
  bool failed = false;

  cr_assert_eq(
      loadgen_rpc_reply(reply, sizeof(reply) - 1, 9, &failed, why, sizeof(why)),
      (long)sizeof(reply) - 1);
  cr_assert(failed);
  cr_assert_str_eq(why, "{\"code\": 3, \"name\": \"bad_request\"}");
}

/* loadgen_resp_reply on text: its result, *failed and why. */
static long resp(const char *text, bool *failed, char *why)
{
  return loadgen_resp_reply(text, strlen(text), 0, failed, why,
                            LOADGEN_TEXT_MAX + 1);
}

Test(loadgen, resp_reply_ends_each_kind_of_reply)
{
  char bulk[128], why[LOADGEN_TEXT_MAX + 1];
  bool failed = true;

  snprintf(bulk, sizeof(bulk), "$60\r\n%060d\r\n+OK\r\n", 0);
  cr_assert_eq(resp(bulk, &failed, why), 67);
  cr_assert(!failed);
  for (size_t k = 0; k < 67; k++)
    cr_assert_eq(loadgen_resp_reply(bulk, k, 0, &failed, why, sizeof(why)), 0,
                 "cut at %zu", k);
  cr_assert_eq(resp("$0\r\n\r\n", &failed, why), 6);
  cr_assert_eq(resp("+OK\r\n", &failed, why), 5);
  cr_assert(!failed);
  cr_assert_eq(resp(":12\r\n", &failed, why), 5);
  cr_assert(!failed);
  cr_assert_eq(resp("$-1\r\n", &failed, why), 5);
  cr_assert(failed);
  cr_assert_eq(resp("-ERR unknown\r\n", &failed, why), 14);
  cr_assert(failed);
  cr_assert_str_eq(why, "-ERR unknown");
}

Test(loadgen, resp_reply_refuses_bad_replies)
{
  char why[LOADGEN_TEXT_MAX + 1];
  bool failed;

  cr_assert_eq(resp("$abc\r\n", &failed, why), -1);
  cr_assert_eq(resp("$\r\n", &failed, why), -1);
  cr_assert_eq(resp("$-2\r\n", &failed, why), -1);
  cr_assert_eq(resp("$1234567890\r\n", &failed, why), -1);
  cr_assert_eq(resp("$99999\r\n", &failed, why), -1);
  cr_assert(strstr(why, "exceeds"), "%s", why);
  cr_assert_eq(resp("+OK\n", &failed, why), -1);
  cr_assert_eq(resp("$2\r\nabcd", &failed, why), -1);
  cr_assert(strstr(why, "CRLF"), "%s", why);
  cr_assert_eq(resp("*1\r\n", &failed, why), -1);
  cr_assert(strstr(why, "unexpected"), "%s", why);
}
