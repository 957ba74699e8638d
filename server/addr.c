/*
 * addr: parsing, formatting and normalisation of 128-bit addresses.
 *
 * Everything here is pure arithmetic on addr128; the only libc calls are
 * inet_pton/inet_ntop at the text boundary.
 */
#include "addr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "geosteer/geosteer.h"

static addr128 from_bytes16(const unsigned char *b)
{
  addr128 a = 0;
  for (int i = 0; i < 16; i++)
    a = (a << 8) | b[i];
  return a;
}

static void to_bytes16(addr128 a, unsigned char *b)
{
  for (int i = 15; i >= 0; i--) {
    b[i] = (unsigned char)(a & 0xff);
    a >>= 8;
  }
}

/*
 * Strict dotted-quad IPv4 (what inet_pton accepts: four decimal octets,
 * no leading zeros). Anything else is left to inet_pton, so this fast path
 * never accepts what inet_pton would refuse.
 */
static bool parse_v4_fast(const char *s, uint32_t *out)
{
  uint32_t v = 0;

  for (int part = 0; part < 4; part++) {
    uint32_t octet = 0;
    int digits = 0;
    while (*s >= '0' && *s <= '9') {
      if (digits == 1 && octet == 0)
        return false; /* leading zero */
      octet = octet * 10 + (uint32_t)(*s - '0');
      if (++digits > 3 || octet > 255)
        return false;
      s++;
    }
    if (digits == 0)
      return false;
    v = v << 8 | octet;
    if (part < 3 && *s++ != '.')
      return false;
  }
  if (*s != '\0')
    return false;
  *out = v;
  return true;
}

int addr_parse(const char *text, addr128 *out, bool *is_v4)
{
  unsigned char buf[16];
  uint32_t v4;

  if (text == NULL)
    return GS_ERR_ADDR;
  if (parse_v4_fast(text, &v4)) {
    *out = v4;
    if (is_v4)
      *is_v4 = true;
    return 0;
  }
  if (inet_pton(AF_INET, text, buf) == 1) {
    *out = ((addr128)buf[0] << 24) | ((addr128)buf[1] << 16) |
           ((addr128)buf[2] << 8) | buf[3];
    if (is_v4)
      *is_v4 = true;
    return 0;
  }
  if (inet_pton(AF_INET6, text, buf) == 1) {
    *out = from_bytes16(buf);
    if (is_v4)
      *is_v4 = false;
    return 0;
  }
  return GS_ERR_ADDR;
}

int addr_parse_cidr(const char *text, addr128 *net, int *plen, char *why,
                    size_t why_size)
{
  char host[ADDR_CIDR_TEXT_MAX + 1];
  const char *slash = strchr(text, '/');
  size_t hostlen;
  addr128 a;
  bool v4;
  char *end;
  long len;

  if (slash == NULL) {
    snprintf(why, why_size, "expected ADDRESS/LENGTH");
    return GS_ERR_ADDR;
  }
  hostlen = (size_t)(slash - text);
  if (hostlen == 0 || hostlen >= sizeof(host)) {
    snprintf(why, why_size, "expected ADDRESS/LENGTH");
    return GS_ERR_ADDR;
  }
  memcpy(host, text, hostlen);
  host[hostlen] = '\0';
  if (addr_parse(host, &a, &v4) != 0) {
    snprintf(why, why_size, "'%s' is not an IPv4 or IPv6 address", host);
    return GS_ERR_ADDR;
  }
  if (slash[1] < '0' || slash[1] > '9') {
    snprintf(why, why_size, "prefix length must be a number");
    return GS_ERR_ADDR;
  }
  len = strtol(slash + 1, &end, 10);
  if (*end != '\0' || len < 0 || len > (v4 ? 32 : 128)) {
    snprintf(why, why_size, "prefix length must be 0..%d", v4 ? 32 : 128);
    return GS_ERR_ADDR;
  }
  if (v4)
    len += 96;
  if ((a & ~addr_mask((int)len)) != 0) {
    char fixed[ADDR_TEXT_MAX];
    addr_format(a & addr_mask((int)len), fixed, sizeof(fixed));
    snprintf(why, why_size, "host bits set; did you mean %s/%ld?", fixed,
             v4 ? len - 96 : len);
    return GS_ERR_ADDR;
  }
  *net = a;
  *plen = (int)len;
  return 0;
}

#define MAPPED_PREFIX ((addr128)0xffff << 32) /* ::ffff:0:0/96 */
#define SIX_TO_FOUR_HI 0x2002u                /* 2002::/16 */
#define TEREDO_HI 0x20010000u                 /* 2001::/32 */

addr128 addr_normalize(addr128 a)
{
  uint64_t hi = addr_hi(a);

  if ((a >> 32) == (MAPPED_PREFIX >> 32))
    return a & 0xffffffffu;
  if ((hi >> 48) == SIX_TO_FOUR_HI)
    return (hi >> 16) & 0xffffffffu;
  if ((hi >> 32) == TEREDO_HI)
    return ~a & 0xffffffffu;
  return a;
}

static bool inside(addr128 net, int plen, addr128 space, int space_len)
{
  return plen >= space_len && ((net ^ space) & addr_mask(space_len)) == 0;
}

bool addr_in_alias_space(addr128 net, int plen)
{
  return inside(net, plen, MAPPED_PREFIX, 96) ||
         inside(net, plen, (addr128)SIX_TO_FOUR_HI << 112, 16) ||
         inside(net, plen, (addr128)TEREDO_HI << 96, 32);
}

void addr_format(addr128 a, char *buf, size_t size)
{
  unsigned char b[16];

  if (addr_is_v4(a) && a != 0) {
    uint32_t v = (uint32_t)a;
    snprintf(buf, size, "%u.%u.%u.%u", v >> 24, (v >> 16) & 0xff,
             (v >> 8) & 0xff, v & 0xff);
    return;
  }
  to_bytes16(a, b);
  if (inet_ntop(AF_INET6, b, buf, (socklen_t)size) == NULL && size > 0)
    buf[0] = '\0';
}

int addr_from_sockaddr(const struct sockaddr *sa, addr128 *out)
{
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    *out = ntohl(in->sin_addr.s_addr);
    return 0;
  }
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    *out = from_bytes16(in6->sin6_addr.s6_addr);
    return 0;
  }
  return GS_ERR_ADDR;
}

void addr_to_sockaddr(addr128 a, struct sockaddr *sa, size_t len)
{
  memset(sa, 0, len);
  if (addr_is_v4(a)) {
    struct sockaddr_in *in = (struct sockaddr_in *)sa;
    in->sin_family = AF_INET;
    in->sin_addr.s_addr = htonl((uint32_t)a);
    return;
  }
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;
  in6->sin6_family = AF_INET6;
  to_bytes16(a, in6->sin6_addr.s6_addr);
}
