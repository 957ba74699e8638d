/*
 * Tests for scan: every MessagePack format to its exact size, prefixes,
 * the depth and size limits against hostile headers, msgids of partial
 * requests, and agreement with msgpack-c on random bytes.
 *
 * Parameter structs hold their bytes inline: Criterion re-executes the
 * process for parameterized tests, so they must not hold pointers.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <msgpack.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "scan.h"

#define MAX 4096 /* max_size of the cases that are not about the limit */
#define DEPTH SCAN_MAX_DEPTH

/* An initializer for a bytes array and its length. */
#define BYTES(...) {__VA_ARGS__}, sizeof((uint8_t[]){__VA_ARGS__})

struct format_case {
  char name[24];
  uint8_t bytes[32]; /* exactly one object */
  size_t len;
};

static struct format_case format_cases[] = {
    {"positive fixint", BYTES(0x05)},
    {"negative fixint", BYTES(0xe0)},
    {"negative fixint -1", BYTES(0xff)},
    {"fixmap", BYTES(0x82, 0x01, 0x02, 0xa1, 'k', 0xc3)},
    {"fixmap empty", BYTES(0x80)},
    {"fixarray", BYTES(0x93, 0x01, 0x02, 0x03)},
    {"fixarray empty", BYTES(0x90)},
    {"fixstr", BYTES(0xa3, 'a', 'b', 'c')},
    {"fixstr empty", BYTES(0xa0)},
    {"nil", BYTES(0xc0)},
    {"false", BYTES(0xc2)},
    {"true", BYTES(0xc3)},
    {"bin8", BYTES(0xc4, 0x03, 1, 2, 3)},
    {"bin8 empty", BYTES(0xc4, 0x00)},
    {"bin16", BYTES(0xc5, 0x00, 0x02, 1, 2)},
    {"bin32", BYTES(0xc6, 0x00, 0x00, 0x00, 0x01, 9)},
    {"ext8", BYTES(0xc7, 0x02, 0x05, 1, 2)},
    {"ext8 empty", BYTES(0xc7, 0x00, 0x05)},
    {"ext16", BYTES(0xc8, 0x00, 0x01, 0x05, 1)},
    {"ext32", BYTES(0xc9, 0x00, 0x00, 0x00, 0x01, 0x05, 1)},
    {"float32", BYTES(0xca, 0x3f, 0x80, 0x00, 0x00)},
    {"float64", BYTES(0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0)},
    {"uint8", BYTES(0xcc, 0xff)},
    {"uint16", BYTES(0xcd, 0x01, 0x00)},
    {"uint32", BYTES(0xce, 0x00, 0x01, 0x00, 0x00)},
    {"uint64", BYTES(0xcf, 0, 0, 0, 1, 0, 0, 0, 0)},
    {"int8", BYTES(0xd0, 0x80)},
    {"int16", BYTES(0xd1, 0x80, 0x00)},
    {"int32", BYTES(0xd2, 0x80, 0x00, 0x00, 0x00)},
    {"int64", BYTES(0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0)},
    {"fixext1", BYTES(0xd4, 0x01, 1)},
    {"fixext2", BYTES(0xd5, 0x01, 1, 2)},
    {"fixext4", BYTES(0xd6, 0x01, 1, 2, 3, 4)},
    {"fixext8", BYTES(0xd7, 0x01, 1, 2, 3, 4, 5, 6, 7, 8)},
    {"fixext16",
     BYTES(0xd8, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)},
    {"str8", BYTES(0xd9, 0x02, 'h', 'i')},
    {"str16", BYTES(0xda, 0x00, 0x01, 'x')},
    {"str32", BYTES(0xdb, 0x00, 0x00, 0x00, 0x01, 'x')},
    {"array16", BYTES(0xdc, 0x00, 0x02, 0x01, 0xc0)},
    {"array16 empty", BYTES(0xdc, 0x00, 0x00)},
    {"array32", BYTES(0xdd, 0x00, 0x00, 0x00, 0x01, 0xc0)},
    {"map16", BYTES(0xde, 0x00, 0x01, 0x01, 0x02)},
    {"map32", BYTES(0xdf, 0x00, 0x00, 0x00, 0x01, 0xa1, 'k', 0xc3)},
    {"map in array in map", BYTES(0x81, 0xa1, 'a', 0x91, 0x81, 0x01, 0xc2)},
};

ParameterizedTestParameters(scan, formats)
{
  return cr_make_param_array(struct format_case, (void *)format_cases,
                             sizeof(format_cases) / sizeof(format_cases[0]));
}

/* Exact size, alone or followed by more bytes; every prefix is short. */
ParameterizedTest(const struct format_case *c, scan, formats)
{
  uint8_t buf[sizeof(c->bytes) + 1];
  size_t size = 0;

  memcpy(buf, c->bytes, c->len);
  buf[c->len] = 0xc1; /* the next message's first byte, even a bad one */
  cr_assert_eq(scan_message(buf, c->len, MAX, DEPTH, &size), SCAN_OK, "%s",
               c->name);
  cr_assert_eq(size, c->len, "%s", c->name);
  size = 0;
  cr_assert_eq(scan_message(buf, c->len + 1, MAX, DEPTH, &size), SCAN_OK, "%s",
               c->name);
  cr_assert_eq(size, c->len, "%s: followed by more", c->name);
  for (size_t n = 0; n < c->len; n++) {
    size = 42;
    cr_assert_eq(scan_message(buf, n, MAX, DEPTH, &size), SCAN_NEED_MORE,
                 "%s: prefix of %zu", c->name, n);
    cr_assert_eq(size, 42, "%s: size set on a prefix", c->name);
  }
}

struct result_case {
  char name[48];
  uint8_t bytes[24]; /* all the bytes present */
  size_t len;
  size_t max_size;
  int max_depth;
  int want;
  size_t want_size; /* when want is SCAN_OK */
};

/* Eight single-element arrays, then the innermost element. */
#define NEST8 0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0x91

static struct result_case result_cases[] = {
    {"0xc1", BYTES(0xc1), MAX, DEPTH, SCAN_ERR_MALFORMED, 0},
    {"0xc1 inside an array", BYTES(0x92, 0x01, 0xc1), MAX, DEPTH,
     SCAN_ERR_MALFORMED, 0},
    {"0xc1 as a map value", BYTES(0x81, 0x01, 0xc1), MAX, DEPTH,
     SCAN_ERR_MALFORMED, 0},
    {"empty buffer", {0}, 0, MAX, DEPTH, SCAN_NEED_MORE, 0},
    {"array32 of 2^26, header only", BYTES(0xdd, 0x04, 0x00, 0x00, 0x00), MAX,
     DEPTH, SCAN_ERR_TOO_LARGE, 0},
    {"map32 of 2^26, header only", BYTES(0xdf, 0x04, 0x00, 0x00, 0x00), MAX,
     DEPTH, SCAN_ERR_TOO_LARGE, 0},
    {"array32 of 2^26, 1 MiB limit", BYTES(0xdd, 0x04, 0x00, 0x00, 0x00),
     1 << 20, DEPTH, SCAN_ERR_TOO_LARGE, 0},
    {"map32 of 2^26, 1 MiB limit", BYTES(0xdf, 0x04, 0x00, 0x00, 0x00), 1 << 20,
     DEPTH, SCAN_ERR_TOO_LARGE, 0},
    {"array32 of 2^32-1", BYTES(0xdd, 0xff, 0xff, 0xff, 0xff), MAX, DEPTH,
     SCAN_ERR_TOO_LARGE, 0},
    {"map32 of 2^32-1", BYTES(0xdf, 0xff, 0xff, 0xff, 0xff), MAX, DEPTH,
     SCAN_ERR_TOO_LARGE, 0},
    {"array32 of 2^32-1, no limit", BYTES(0xdd, 0xff, 0xff, 0xff, 0xff),
     SIZE_MAX, DEPTH, SCAN_NEED_MORE, 0},
    {"str32 of 4 GiB", BYTES(0xdb, 0xff, 0xff, 0xff, 0xff), MAX, DEPTH,
     SCAN_ERR_TOO_LARGE, 0},
    {"str32 of 4 GiB, 1 MiB limit", BYTES(0xdb, 0xff, 0xff, 0xff, 0xff),
     1 << 20, DEPTH, SCAN_ERR_TOO_LARGE, 0},
    {"bin32 of 4 GiB", BYTES(0xc6, 0xff, 0xff, 0xff, 0xff), MAX, DEPTH,
     SCAN_ERR_TOO_LARGE, 0},
    {"ext32 of 4 GiB", BYTES(0xc9, 0xff, 0xff, 0xff, 0xff), MAX, DEPTH,
     SCAN_ERR_TOO_LARGE, 0},
    {"ext32 of 4 GiB, no limit", BYTES(0xc9, 0xff, 0xff, 0xff, 0xff, 0x01),
     SIZE_MAX, DEPTH, SCAN_NEED_MORE, 0},
    {"str32 inside an array", BYTES(0x92, 0x01, 0xdb, 0x00, 0x00, 0x10, 0x00),
     MAX, DEPTH, SCAN_ERR_TOO_LARGE, 0},
    {"array32 header cut short", BYTES(0xdd, 0x00), MAX, DEPTH, SCAN_NEED_MORE,
     0},
    {"array32 header cannot fit", BYTES(0xdd), 4, DEPTH, SCAN_ERR_TOO_LARGE, 0},
    {"depth 8", BYTES(NEST8, 0xc0), MAX, DEPTH, SCAN_OK, 9},
    {"depth 8, empty innermost",
     BYTES(0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0x90), MAX, DEPTH, SCAN_OK,
     8},
    {"depth 8 of maps",
     BYTES(0x81, 0x01, 0x81, 0x01, 0x81, 0x01, 0x81, 0x01, 0x81, 0x01, 0x81,
           0x01, 0x81, 0x01, 0x81, 0x01, 0xc0),
     MAX, DEPTH, SCAN_OK, 17},
    {"depth 9", BYTES(NEST8, 0x91, 0xc0), MAX, DEPTH, SCAN_ERR_DEPTH, 0},
    {"depth 9, empty innermost", BYTES(NEST8, 0x90), MAX, DEPTH, SCAN_ERR_DEPTH,
     0},
    {"depth 9, array16", BYTES(NEST8, 0xdc, 0x00, 0x00), MAX, DEPTH,
     SCAN_ERR_DEPTH, 0},
    {"depth 9, a map", BYTES(NEST8, 0x81, 0x80, 0x01), MAX, DEPTH,
     SCAN_ERR_DEPTH, 0},
    {"depth 9 before its bytes arrive", BYTES(NEST8, 0x91), MAX, DEPTH,
     SCAN_ERR_DEPTH, 0},
    {"max_depth 1: flat array", BYTES(0x92, 0x01, 0x02), MAX, 1, SCAN_OK, 3},
    {"max_depth 1: nested array", BYTES(0x91, 0x90), MAX, 1, SCAN_ERR_DEPTH, 0},
    {"max_depth 0: scalar", BYTES(0x01), MAX, 0, SCAN_OK, 1},
    {"max_depth 0: empty array", BYTES(0x90), MAX, 0, SCAN_ERR_DEPTH, 0},
    {"max_depth above the cap", BYTES(NEST8, 0x91, 0xc0), MAX, 64,
     SCAN_ERR_DEPTH, 0},
    {"fits exactly", BYTES(0x92, 0x01, 0x02), 3, DEPTH, SCAN_OK, 3},
    {"fits exactly, more follows", BYTES(0x92, 0x01, 0x02, 0x03), 3, DEPTH,
     SCAN_OK, 3},
    {"one byte over", BYTES(0x93, 0x01, 0x02), 3, DEPTH, SCAN_ERR_TOO_LARGE, 0},
    {"fills the limit exactly", BYTES(0x93, 0x01, 0x02, 0x03), 4, DEPTH,
     SCAN_OK, 4},
    {"elements cannot fit", BYTES(0x92, 0x01), 2, DEPTH, SCAN_ERR_TOO_LARGE, 0},
    {"nested counts add up", BYTES(0x92, 0x93), 5, DEPTH, SCAN_ERR_TOO_LARGE,
     0},
    {"nested counts just fit", BYTES(0x92, 0x93), 6, DEPTH, SCAN_NEED_MORE, 0},
    {"fixstr too long", BYTES(0xa5, 'a', 'b', 'c'), 4, DEPTH,
     SCAN_ERR_TOO_LARGE, 0},
    {"float64 too long", BYTES(0xcb, 0x00), 8, DEPTH, SCAN_ERR_TOO_LARGE, 0},
    {"no room at all", BYTES(0x01), 0, DEPTH, SCAN_ERR_TOO_LARGE, 0},
    {"one byte limit", BYTES(0x01), 1, DEPTH, SCAN_OK, 1},
};

ParameterizedTestParameters(scan, results)
{
  return cr_make_param_array(struct result_case, (void *)result_cases,
                             sizeof(result_cases) / sizeof(result_cases[0]));
}

ParameterizedTest(const struct result_case *c, scan, results)
{
  size_t size = 42;
  int got = scan_message(c->bytes, c->len, c->max_size, c->max_depth, &size);

  cr_assert_eq(got, c->want, "%s: got %d (%s)", c->name, got,
               scan_strerror(got));
  cr_assert_eq(size, c->want == SCAN_OK ? c->want_size : 42, "%s: size",
               c->name);
}

/* [0, msgid, "route", [{"ip": "1.2.3.4"}]], packed by msgpack-c. */
static void pack_route_request(msgpack_sbuffer *sb, uint32_t msgid)
{
  msgpack_packer pk;

  msgpack_sbuffer_init(sb);
  msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
  msgpack_pack_array(&pk, 4);
  msgpack_pack_uint8(&pk, 0);
  msgpack_pack_uint32(&pk, msgid);
  msgpack_pack_str_with_body(&pk, "route", 5);
  msgpack_pack_array(&pk, 1);
  msgpack_pack_map(&pk, 1);
  msgpack_pack_str_with_body(&pk, "ip", 2);
  msgpack_pack_str_with_body(&pk, "1.2.3.4", 7);
}

Test(scan, route_request_and_every_prefix)
{
  msgpack_sbuffer sb;
  size_t size = 0;
  uint32_t msgid = 0;

  pack_route_request(&sb, 7);
  const uint8_t *buf = (const uint8_t *)sb.data;
  cr_assert_eq(scan_message(buf, sb.size, MAX, DEPTH, &size), SCAN_OK);
  cr_assert_eq(size, sb.size);
  cr_assert(scan_msgid(buf, sb.size, &msgid));
  cr_assert_eq(msgid, 7);
  for (size_t n = 0; n < sb.size; n++)
    cr_assert_eq(scan_message(buf, n, MAX, DEPTH, &size), SCAN_NEED_MORE,
                 "prefix of %zu", n);
  /* request, params, map: depth 3, allowed at 3, refused at 2. */
  cr_assert_eq(scan_message(buf, sb.size, MAX, 3, &size), SCAN_OK);
  cr_assert_eq(scan_message(buf, sb.size, MAX, 2, &size), SCAN_ERR_DEPTH);
  msgpack_sbuffer_destroy(&sb);
}

Test(scan, two_messages_back_to_back)
{
  msgpack_sbuffer first, second;
  uint8_t buf[128];
  size_t size = 0;

  pack_route_request(&first, 7);
  pack_route_request(&second, 70000);
  cr_assert_neq(first.size, second.size);
  cr_assert_leq(first.size + second.size, sizeof(buf));
  memcpy(buf, first.data, first.size);
  memcpy(buf + first.size, second.data, second.size);
  cr_assert_eq(scan_message(buf, first.size + second.size, MAX, DEPTH, &size),
               SCAN_OK);
  cr_assert_eq(size, first.size);
  cr_assert_eq(scan_message(buf + size, second.size, MAX, DEPTH, &size),
               SCAN_OK);
  cr_assert_eq(size, second.size);
  msgpack_sbuffer_destroy(&first);
  msgpack_sbuffer_destroy(&second);
}

Test(scan, one_mib_bin_refused_from_its_header)
{
  enum { BODY = 1 << 20 };
  msgpack_sbuffer sb;
  msgpack_packer pk;
  char *body = calloc(1, BODY);
  size_t size = 0;

  cr_assert_not_null(body);
  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  msgpack_pack_bin_with_body(&pk, body, BODY);
  cr_assert_eq(sb.size, BODY + 5);
  const uint8_t *buf = (const uint8_t *)sb.data;
  cr_assert_eq(scan_message(buf, sb.size, 4096, DEPTH, &size),
               SCAN_ERR_TOO_LARGE);
  cr_assert_eq(scan_message(buf, 5, 4096, DEPTH, &size), SCAN_ERR_TOO_LARGE);
  /* With room for it, only the header: wait; all of it: done. */
  cr_assert_eq(scan_message(buf, 5, 2 << 20, DEPTH, &size), SCAN_NEED_MORE);
  cr_assert_eq(scan_message(buf, sb.size, 2 << 20, DEPTH, &size), SCAN_OK);
  cr_assert_eq(size, sb.size);
  cr_assert_eq(scan_message(buf, sb.size, sb.size - 1, DEPTH, &size),
               SCAN_ERR_TOO_LARGE);
  free(body);
  msgpack_sbuffer_destroy(&sb);
}

Test(scan, incomplete_at_the_limit_is_too_large)
{
  /* A str8 of 200 bytes cut at 100, limit 100: can never complete. */
  uint8_t buf[100] = {0xd9, 200};
  size_t size = 0;

  cr_assert_eq(scan_message(buf, 100, 100, DEPTH, &size), SCAN_ERR_TOO_LARGE);
  cr_assert_eq(scan_message(buf, 100, 1000, DEPTH, &size), SCAN_NEED_MORE);
  /* An array of 200 nils with 100 present and a limit of 100. */
  uint8_t arr[100] = {0xdc, 0x00, 200};
  cr_assert_eq(scan_message(arr, 100, 100, DEPTH, &size), SCAN_ERR_TOO_LARGE);
  cr_assert_eq(scan_message(arr, 100, 1000, DEPTH, &size), SCAN_NEED_MORE);
}

struct msgid_case {
  char name[40];
  uint8_t bytes[24];
  size_t len;
  bool found;
  uint32_t msgid;
};

static struct msgid_case msgid_cases[] = {
    {"fixarray, fixint", BYTES(0x94, 0x00, 0x07, 0xa5), true, 7},
    {"fixarray, fixint 127", BYTES(0x94, 0x00, 0x7f), true, 127},
    {"array16", BYTES(0xdc, 0x00, 0x04, 0x00, 0x09), true, 9},
    {"array32", BYTES(0xdd, 0x00, 0x00, 0x00, 0x04, 0x00, 0x09), true, 9},
    {"uint8", BYTES(0x94, 0x00, 0xcc, 0xc8), true, 200},
    {"uint16", BYTES(0x94, 0x00, 0xcd, 0x12, 0x34), true, 0x1234},
    {"uint32", BYTES(0x94, 0x00, 0xce, 0xff, 0xff, 0xff, 0xff), true,
     0xffffffff},
    {"uint64 fits", BYTES(0x94, 0x00, 0xcf, 0, 0, 0, 0, 0, 0, 0x01, 0x02), true,
     0x102},
    {"uint64 too big", BYTES(0x94, 0x00, 0xcf, 0, 0, 0, 1, 0, 0, 0, 0), false,
     0},
    {"response, not a request", BYTES(0x94, 0x01, 0x07), false, 0},
    {"notification", BYTES(0x93, 0x02, 0xa5), false, 0},
    {"array of 3", BYTES(0x93, 0x00, 0x07), false, 0},
    {"array16 of 5", BYTES(0xdc, 0x00, 0x05, 0x00, 0x07), false, 0},
    {"negative msgid", BYTES(0x94, 0x00, 0xff), false, 0},
    {"signed msgid", BYTES(0x94, 0x00, 0xd0, 0x07), false, 0},
    {"string msgid", BYTES(0x94, 0x00, 0xa1, 'x'), false, 0},
    {"type as uint8", BYTES(0x94, 0xcc, 0x00, 0x07), false, 0},
    {"not an array", BYTES(0x84, 0x00, 0x07), false, 0},
    {"empty", {0}, 0, false, 0},
    {"truncated after header", BYTES(0x94), false, 0},
    {"truncated after type", BYTES(0x94, 0x00), false, 0},
    {"truncated uint16", BYTES(0x94, 0x00, 0xcd, 0x01), false, 0},
    {"truncated uint64", BYTES(0x94, 0x00, 0xcf, 0, 0, 0, 0, 0, 0, 0), false,
     0},
    {"truncated array16", BYTES(0xdc, 0x00), false, 0},
    {"truncated array32", BYTES(0xdd, 0x00, 0x00, 0x00), false, 0},
};

ParameterizedTestParameters(scan, msgid)
{
  return cr_make_param_array(struct msgid_case, (void *)msgid_cases,
                             sizeof(msgid_cases) / sizeof(msgid_cases[0]));
}

ParameterizedTest(const struct msgid_case *c, scan, msgid)
{
  size_t len = c->len;
  uint8_t *buf = malloc(len ? len : 1);
  uint32_t msgid = 42;

  /* An exact-size copy, so reading past len trips AddressSanitizer. */
  cr_assert_not_null(buf);
  memcpy(buf, c->bytes, len);
  cr_assert_eq(scan_msgid(buf, len, &msgid), c->found, "%s", c->name);
  cr_assert_eq(msgid, c->found ? c->msgid : 42, "%s: msgid", c->name);
  free(buf);
}

Test(scan, strerror_texts)
{
  cr_assert_str_eq(scan_strerror(SCAN_OK), "ok");
  cr_assert_str_eq(scan_strerror(SCAN_NEED_MORE), "incomplete message");
  cr_assert_str_eq(scan_strerror(SCAN_ERR_MALFORMED), "malformed MessagePack");
  cr_assert_str_eq(scan_strerror(SCAN_ERR_DEPTH),
                   "message nested deeper than 8 levels");
  cr_assert_str_eq(scan_strerror(SCAN_ERR_TOO_LARGE),
                   "message larger than the limit");
  cr_assert_str_eq(scan_strerror(99), "unknown scan result");
}

/* Lead bytes with small counts and lengths, so random strings nest. */
static const uint8_t interesting[] = {
    0x00, 0x01, 0x7f, 0xe0, 0xff, 0x80, 0x81, 0x82, 0x90, 0x91, 0x92, 0x93,
    0x94, 0xa0, 0xa1, 0xa3, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7,
    0xc8, 0xc9, 0xca, 0xcb, 0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xd3, 0xd4, 0xd8,
    0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0x02, 0x03, 0x04,
};

Test(scan, random_bytes_agree_with_msgpack_c)
{
  static const size_t limits[] = {1, 8, 64, 4096};
  struct rng r = {20240601};
  size_t counts[4] = {0}; /* OK, NEED_MORE, MALFORMED, other errors */

  for (int iter = 0; iter < 100000; iter++) {
    size_t len = rng_next(&r) % 65;
    size_t max_size = limits[rng_next(&r) % 4];
    int max_depth = (int)(rng_next(&r) % (SCAN_MAX_DEPTH + 2));
    bool plain = rng_next(&r) % 2 == 0;
    uint8_t *buf = len ? malloc(len) : NULL;
    size_t size = SIZE_MAX;
    uint32_t msgid;

    for (size_t i = 0; i < len; i++) {
      uint64_t x = rng_next(&r);
      buf[i] = plain || x % 4 == 0
                   ? (uint8_t)(x >> 8)
                   : interesting[(x >> 8) % sizeof(interesting)];
    }
    int got = scan_message(buf, len, max_size, max_depth, &size);
    (void)scan_msgid(buf, len, &msgid);
    if (got == SCAN_OK) {
      msgpack_unpacked u;
      size_t off = 0;
      counts[0]++;
      cr_assert_leq(size, len, "iteration %d", iter);
      cr_assert_leq(size, max_size, "iteration %d", iter);
      msgpack_unpacked_init(&u);
      cr_assert_eq(msgpack_unpack_next(&u, (const char *)buf, size, &off),
                   MSGPACK_UNPACK_SUCCESS, "iteration %d", iter);
      cr_assert_eq(off, size, "iteration %d", iter);
      msgpack_unpacked_destroy(&u);
    } else {
      cr_assert_eq(size, SIZE_MAX, "iteration %d: size set", iter);
      cr_assert(got == SCAN_NEED_MORE || got == SCAN_ERR_MALFORMED ||
                    got == SCAN_ERR_DEPTH || got == SCAN_ERR_TOO_LARGE,
                "iteration %d: %d", iter, got);
      if (got == SCAN_NEED_MORE) {
        counts[1]++;
        cr_assert_lt(len, max_size, "iteration %d", iter);
      } else {
        counts[got == SCAN_ERR_MALFORMED ? 2 : 3]++;
      }
      /* A prefix is one to msgpack-c too; 0xc1 is an error to it too. */
      if (len > 0 && (got == SCAN_NEED_MORE || got == SCAN_ERR_MALFORMED)) {
        msgpack_unpacked u;
        size_t off = 0;
        msgpack_unpacked_init(&u);
        cr_assert_eq(msgpack_unpack_next(&u, (const char *)buf, len, &off),
                     got == SCAN_NEED_MORE ? MSGPACK_UNPACK_CONTINUE
                                           : MSGPACK_UNPACK_PARSE_ERROR,
                     "iteration %d", iter);
        msgpack_unpacked_destroy(&u);
      }
    }
    free(buf);
  }
  /* The generator reaches every outcome often. */
  for (int i = 0; i < 4; i++)
    cr_assert_gt(counts[i], 1000, "outcome %d seen %zu times", i, counts[i]);
}
