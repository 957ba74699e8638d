/*
 * addr: 128-bit addresses and prefixes, the one address form the engine
 * uses. IPv4 lives at ::/96 (::a.b.c.d), as in a MaxMind IPv6 tree.
 *
 * addr_normalize() maps the IPv6 forms that carry an IPv4 client address
 * (IPv4-mapped ::ffff:0:0/96, 6to4 2002::/16, Teredo 2001::/32) to that
 * IPv4 address, so that every part of the engine resolves them alike.
 */
#ifndef GS_ADDR_H
#define GS_ADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sockaddr;

typedef unsigned __int128 addr128;

#define ADDR_V4_BASE ((addr128)0) /* ::/96 holds IPv4 */
#define ADDR_TEXT_MAX 46          /* INET6_ADDRSTRLEN */
#define ADDR_CIDR_TEXT_MAX (46 + 4)

static inline addr128 addr_make(uint64_t hi, uint64_t lo)
{
  return ((addr128)hi << 64) | lo;
}

static inline uint64_t addr_hi(addr128 a)
{
  return (uint64_t)(a >> 64);
}

static inline uint64_t addr_lo(addr128 a)
{
  return (uint64_t)a;
}

/* True when a is in ::/96, i.e. an IPv4 address in the engine's space. */
static inline bool addr_is_v4(addr128 a)
{
  return (a >> 32) == 0;
}

/* Mask with the first plen bits set (plen 0..128). */
static inline addr128 addr_mask(int plen)
{
  return plen == 0 ? 0 : ~(addr128)0 << (128 - plen);
}

/* Last address of the prefix net/plen. */
static inline addr128 addr_last(addr128 net, int plen)
{
  return net | ~addr_mask(plen);
}

/*
 * Parses textual IPv4 or IPv6. IPv4 becomes ::a.b.c.d. On success sets *out
 * (and *is_v4 when not NULL) and returns 0; otherwise GS_ERR_ADDR and the
 * out-params are untouched.
 */
int addr_parse(const char *text, addr128 *out, bool *is_v4);

/*
 * Parses "addr/len". IPv4 prefixes are moved to ::/96 (len + 96). A prefix
 * with host bits set is refused. On failure returns GS_ERR_ADDR and writes a
 * reason ("host bits set; did you mean 10.0.0.0/8?") into why.
 */
int addr_parse_cidr(const char *text, addr128 *net, int *plen, char *why,
                    size_t why_size);

/*
 * Returns the address the engine resolves: the embedded IPv4 address of an
 * IPv4-mapped, 6to4 or Teredo address (Teredo client = last 32 bits
 * inverted), otherwise a itself.
 */
addr128 addr_normalize(addr128 a);

/*
 * True when net/plen lies inside an IPv4 alias space (mapped, 6to4,
 * Teredo): no address routed by it would ever match, since such addresses
 * are resolved as their embedded IPv4 address. A wider net that merely
 * contains an alias space is fine.
 */
bool addr_in_alias_space(addr128 net, int plen);

/* Writes the text form (IPv4 dotted for ::/96 except ::); buf >= 46. */
void addr_format(addr128 a, char *buf, size_t size);

/* Converts a sockaddr_in/sockaddr_in6; returns 0 or GS_ERR_ADDR. */
int addr_from_sockaddr(const struct sockaddr *sa, addr128 *out);

/* Fills a sockaddr_in (for ::/96) or sockaddr_in6; len >= 28. */
void addr_to_sockaddr(addr128 a, struct sockaddr *sa, size_t len);

#endif
