/*
 * Tests for addr: parsing, CIDR canonical form, IPv4 alias normalisation.
 */
#include <criterion/criterion.h>

#include "addr.h"
#include "geosteer/geosteer.h"

static addr128 A(const char *text)
{
  addr128 a = 0;
  cr_assert_eq(addr_parse(text, &a, NULL), 0, "parse %s", text);
  return a;
}

Test(addr, parses_ipv4_into_v4_space)
{
  bool v4 = false;
  addr128 a;
  cr_assert_eq(addr_parse("81.2.69.5", &a, &v4), 0);
  cr_assert(v4);
  cr_assert(a == 0x51024505u);
  cr_assert(addr_is_v4(a));
}

Test(addr, rejects_garbage_and_leaves_output_untouched)
{
  const char *bad[] = {"",      "1.2.3",     "1.2.3.256", "::g",
                       "hello", "1.2.3.4/8", " 1.2.3.4",  "1.2.3.4 "};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    addr128 a = 42;
    cr_assert_eq(addr_parse(bad[i], &a, NULL), GS_ERR_ADDR, "%s", bad[i]);
    cr_assert(a == 42);
  }
  cr_assert_eq(addr_parse(NULL, NULL, NULL), GS_ERR_ADDR);
}

Test(addr, normalises_alias_forms_to_embedded_ipv4)
{
  struct {
    const char *in, *out;
  } cases[] = {
      {"::ffff:81.2.69.5", "81.2.69.5"},         /* IPv4-mapped */
      {"2002:5102:4505::1", "81.2.69.5"},        /* 6to4 */
      {"2001:0:1:2:3:4:aefd:bafa", "81.2.69.5"}, /* Teredo, inverted */
      {"2001:db8::1", "2001:db8::1"},            /* documentation: as is */
      {"2a02:1000::1", "2a02:1000::1"},          /* plain IPv6 */
      {"81.2.69.5", "81.2.69.5"},                /* IPv4 */
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
    cr_assert(addr_normalize(A(cases[i].in)) == A(cases[i].out), "%s",
              cases[i].in);
}

Test(addr, cidr_canonical_and_moved_to_v4_space)
{
  addr128 net;
  int plen;
  char why[128];

  cr_assert_eq(addr_parse_cidr("10.0.0.0/8", &net, &plen, why, sizeof(why)), 0);
  cr_assert(net == A("10.0.0.0"));
  cr_assert_eq(plen, 104);
  cr_assert_eq(addr_parse_cidr("2001:db8::/32", &net, &plen, why, sizeof(why)),
               0);
  cr_assert_eq(plen, 32);
}

Test(addr, cidr_errors_explain_the_fix)
{
  struct {
    const char *in, *why;
  } cases[] = {
      {"10.0.0.1/8", "host bits set; did you mean 10.0.0.0/8?"},
      {"2001:db8::1/32", "host bits set; did you mean 2001:db8::/32?"},
      {"10.0.0.0", "expected ADDRESS/LENGTH"},
      {"10.0.0.0/33", "prefix length must be 0..32"},
      {"::/129", "prefix length must be 0..128"},
      {"10.0.0.0/x", "prefix length must be a number"},
      {"foo/8", "'foo' is not an IPv4 or IPv6 address"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    addr128 net = 7;
    int plen = 7;
    char why[128] = "";
    cr_assert_eq(addr_parse_cidr(cases[i].in, &net, &plen, why, sizeof(why)),
                 GS_ERR_ADDR, "%s", cases[i].in);
    cr_assert_str_eq(why, cases[i].why, "%s", cases[i].in);
    cr_assert(net == 7 && plen == 7);
  }
}

Test(addr, alias_spaces)
{
  addr128 net;
  int plen;
  char why[64];
  const char *alias[] = {"::ffff:0:0/96", "2002::/16", "2001::/32",
                         "2001:0:1::/48", "::ffff:10.0.0.0/104"};
  /* Wider nets that contain an alias space are fine. */
  const char *plain[] = {"2001:db8::/32", "2a02::/16", "10.0.0.0/8",
                         "2000::/3",      "::/0",      "2001::/16"};
  for (size_t i = 0; i < sizeof(alias) / sizeof(alias[0]); i++) {
    cr_assert_eq(addr_parse_cidr(alias[i], &net, &plen, why, sizeof(why)), 0);
    cr_assert(addr_in_alias_space(net, plen), "%s", alias[i]);
  }
  for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++) {
    cr_assert_eq(addr_parse_cidr(plain[i], &net, &plen, why, sizeof(why)), 0);
    cr_assert(!addr_in_alias_space(net, plen), "%s", plain[i]);
  }
}

Test(addr, formats_both_families)
{
  char buf[ADDR_TEXT_MAX];
  addr_format(A("81.2.69.5"), buf, sizeof(buf));
  cr_assert_str_eq(buf, "81.2.69.5");
  addr_format(A("2001:db8::1"), buf, sizeof(buf));
  cr_assert_str_eq(buf, "2001:db8::1");
}
