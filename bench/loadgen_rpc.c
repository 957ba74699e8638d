/*
 * loadgen_rpc: MessagePack-RPC for the load generators: the route request
 * they send and the reading of its reply, loadgen_core's encoder and
 * parser for loadgen and bench-optout's `route`.
 *
 * A reply is read only once it is complete (mp_skip says when, without
 * recursion); then its envelope [1, msgid, error, result] is checked and
 * a non-nil error rendered as text for the messages. Nothing allocates.
 */
#include "loadgen_rpc.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static uint64_t be_read(const unsigned char *p, int n)
{
  uint64_t v = 0;
  for (int i = 0; i < n; i++)
    v = v << 8 | p[i];
  return v;
}

/*
 * What the type byte of an object says of it, one entry a byte value,
 * filled in by mp_table_fill. advance: the bytes up to the end of the
 * object, or of the length or count when it has one (the byte itself, a
 * fixstr's or a fixed-size value's payload, the length or count); delta:
 * the objects that follow as its contents (fixarray, fixmap) less itself.
 * For the types with a length or count (kind not MP_FIXED): hdr, its bytes,
 * big-endian; an ext has its type byte after it. Most objects of a reply
 * are fix types.
 */
enum { MP_FIXED, MP_BYTES, MP_EXT, MP_ITEMS, MP_PAIRS, MP_NEVER };
struct mp_type {
  uint8_t advance;
  int8_t delta;
  uint8_t hdr, kind;
};
static struct mp_type mp_table[256];

/* Types 0xc4..0xdf: hdr, fixed payload bytes, kind. */
static const uint8_t mp_wide[][3] = {
    {1, 0, MP_BYTES}, {2, 0, MP_BYTES},  {4, 0, MP_BYTES}, /* c4: bin */
    {1, 1, MP_EXT},   {2, 1, MP_EXT},    {4, 1, MP_EXT},   /* c7: ext */
    {0, 4, MP_FIXED}, {0, 8, MP_FIXED},                    /* ca: float */
    {0, 1, MP_FIXED}, {0, 2, MP_FIXED},  {0, 4, MP_FIXED}, /* cc: uint */
    {0, 8, MP_FIXED},                                      /* cf */
    {0, 1, MP_FIXED}, {0, 2, MP_FIXED},  {0, 4, MP_FIXED}, /* d0: int */
    {0, 8, MP_FIXED},                                      /* d3 */
    {0, 2, MP_FIXED}, {0, 3, MP_FIXED},  {0, 5, MP_FIXED}, /* d4: fixext */
    {0, 9, MP_FIXED}, {0, 17, MP_FIXED},                   /* d7 */
    {1, 0, MP_BYTES}, {2, 0, MP_BYTES},  {4, 0, MP_BYTES}, /* d9: str */
    {2, 0, MP_ITEMS}, {4, 0, MP_ITEMS},                    /* dc: array */
    {2, 0, MP_PAIRS}, {4, 0, MP_PAIRS},                    /* de: map */
};
_Static_assert(sizeof(mp_wide) / sizeof(mp_wide[0]) == 0xdf - 0xc4 + 1,
               "one entry per type byte 0xc4..0xdf");

static void mp_table_fill(void)
{
  for (int b = 0; b < 256; b++) {
    struct mp_type *t = &mp_table[b];
    *t = (struct mp_type){1, -1, 0, MP_FIXED}; /* fixints, nil, bools */
    if (b >= 0x80 && b <= 0x8f)
      t->delta = (int8_t)(2 * (b & 0x0f) - 1);
    else if (b >= 0x90 && b <= 0x9f)
      t->delta = (int8_t)((b & 0x0f) - 1);
    else if (b >= 0xa0 && b <= 0xbf)
      t->advance = (uint8_t)(1 + (b & 0x1f));
    else if (b == 0xc1)
      t->kind = MP_NEVER;
    else if (b >= 0xc4 && b <= 0xdf && mp_wide[b - 0xc4][2] == MP_FIXED)
      t->advance = (uint8_t)(1 + mp_wide[b - 0xc4][1]);
    else if (b >= 0xc4 && b <= 0xdf)
      *t = (struct mp_type){(uint8_t)(1 + mp_wide[b - 0xc4][0]), -1,
                            mp_wide[b - 0xc4][0], mp_wide[b - 0xc4][2]};
  }
}

/*
 * Length of the complete MessagePack object at p[0..len): 0 while it is
 * incomplete, -1 when the bytes are not MessagePack. No recursion: pending
 * counts the objects still to be skipped. One table entry an object; only
 * the types with a length or count after the type byte take the longer
 * way. pos may pass len on a payload that is not all there yet: then the
 * next object's read or the last check says incomplete.
 */
static long mp_skip(const unsigned char *p, size_t len)
{
  size_t pos = 0;
  int64_t pending = 1;

  if (mp_table[0xc1].kind != MP_NEVER)
    mp_table_fill();
  do {
    if (pos >= len)
      return 0;
    const struct mp_type t = mp_table[p[pos]];
    pos += t.advance;
    pending += t.delta;
    if (t.kind != MP_FIXED) {
      if (t.kind == MP_NEVER)
        return -1;
      if (pos > len)
        return 0;
      uint64_t n = be_read(p + pos - t.hdr, t.hdr);
      if (t.kind == MP_BYTES || t.kind == MP_EXT) {
        n += t.kind == MP_EXT; /* its type byte */
        if (n > len - pos)
          return 0;
        pos += (size_t)n;
      } else {
        pending += (int64_t)(t.kind == MP_ITEMS ? n : 2 * n);
      }
    }
  } while (pending > 0);
  return pos <= len ? (long)pos : 0;
}

/* Reads a non-negative integer at p[*pos] of a complete object. */
static bool mp_read_uint(const unsigned char *p, size_t *pos, uint64_t *v)
{
  unsigned char b = p[(*pos)++];
  int n;

  if (b <= 0x7f) {
    *v = b;
    return true;
  }
  if (b >= 0xcc && b <= 0xcf)
    n = 1 << (b - 0xcc);
  else if (b >= 0xd0 && b <= 0xd3 && !(p[*pos] & 0x80))
    n = 1 << (b - 0xd0);
  else
    return false;
  *v = be_read(p + *pos, n);
  *pos += (size_t)n;
  return true;
}

/*
 * Appends a readable rendering of the complete object at p[0..len) to
 * out (NUL-terminated, truncated at size); for error replies only.
 */
static void mp_render(const unsigned char *p, size_t len, char *out,
                      size_t size, int depth)
{
  size_t used = strlen(out), pos = 0;
  uint64_t u, n = 0;
  bool is_map = false;

  if (len == 0 || used + 1 >= size)
    return;
  unsigned char b = p[0];
  if (b == 0xc0) {
    snprintf(out + used, size - used, "nil");
  } else if (b == 0xc2 || b == 0xc3) {
    snprintf(out + used, size - used, "%s", b == 0xc3 ? "true" : "false");
  } else if (b >= 0xe0) {
    snprintf(out + used, size - used, "%d", (int)(int8_t)b);
  } else if (mp_read_uint(p, &pos, &u)) {
    snprintf(out + used, size - used, "%" PRIu64, u);
  } else if ((b & 0xe0) == 0xa0 || (b >= 0xd9 && b <= 0xdb)) {
    size_t hdr = (b & 0xe0) == 0xa0 ? 1 : 1 + (1u << (b - 0xd9));
    size_t slen = (b & 0xe0) == 0xa0 ? (size_t)(b & 0x1f)
                                     : (size_t)be_read(p + 1, (int)hdr - 1);
    snprintf(out + used, size - used, "\"%.*s\"", (int)slen,
             (const char *)p + hdr);
  } else if ((b & 0xf0) == 0x90 || (b & 0xf0) == 0x80 || b == 0xdc ||
             b == 0xdd || b == 0xde || b == 0xdf) {
    is_map = (b & 0xf0) == 0x80 || b == 0xde || b == 0xdf;
    if (b < 0xa0) {
      n = b & 0x0f;
      pos = 1;
    } else {
      int hdr = (b == 0xdc || b == 0xde) ? 2 : 4;
      n = be_read(p + 1, hdr);
      pos = 1 + (size_t)hdr;
    }
    if (depth > 4) {
      snprintf(out + used, size - used, "%s", is_map ? "{...}" : "[...]");
      return;
    }
    snprintf(out + used, size - used, "%s", is_map ? "{" : "[");
    for (uint64_t i = 0; i < (is_map ? 2 * n : n); i++) {
      long k = mp_skip(p + pos, len - pos);
      if (k <= 0)
        return;
      if (i > 0) {
        used = strlen(out);
        snprintf(out + used, size - used, "%s",
                 is_map && (i % 2) ? ": " : ", ");
      }
      mp_render(p + pos, (size_t)k, out, size, depth + 1);
      pos += (size_t)k;
    }
    used = strlen(out);
    snprintf(out + used, size - used, "%s", is_map ? "}" : "]");
  } else {
    snprintf(out + used, size - used, "<0x%02x>", b);
  }
}

long loadgen_rpc_reply(const char *text, size_t len, uint32_t msgid,
                       bool *failed, char *why, size_t why_size)
{
  const unsigned char *p = (const unsigned char *)text;
  long n = mp_skip(p, len);
  size_t pos = 1;
  uint64_t type, reply_msgid;

  if (n < 0) {
    snprintf(why, why_size, "reply is not MessagePack");
    return -1;
  }
  if (n == 0)
    return 0;
  if (p[0] != 0x94) {
    snprintf(why, why_size,
             "reply is not a 4-element array (first byte 0x%02x)", p[0]);
    return -1;
  }
  if (!mp_read_uint(p, &pos, &type) || type != 1) {
    snprintf(why, why_size, "reply element 0 is not 1 (a response)");
    return -1;
  }
  if (!mp_read_uint(p, &pos, &reply_msgid)) {
    snprintf(why, why_size, "reply msgid is not an unsigned integer");
    return -1;
  }
  if (reply_msgid != msgid) {
    snprintf(why, why_size,
             "reply msgid %" PRIu64 ", expected %" PRIu32
             " (replies must come in request order)",
             reply_msgid, msgid);
    return -1;
  }
  *failed = p[pos] != 0xc0;
  if (*failed) {
    long k = mp_skip(p + pos, (size_t)n - pos);
    why[0] = '\0';
    if (k > 0)
      mp_render(p + pos, (size_t)k, why, why_size, 0);
  }
  return n;
}

size_t loadgen_rpc_route(char *p, uint32_t msgid, const char *user,
                         size_t user_len, const struct loadgen_addr *addr)
{
  char *q = p;

  assert(user == NULL || user_len < 32); /* a fixstr */
  *q++ = (char)0x94;
  *q++ = 0x00;
  *q++ = (char)0xce;
  *q++ = (char)(msgid >> 24);
  *q++ = (char)(msgid >> 16);
  *q++ = (char)(msgid >> 8);
  *q++ = (char)msgid;
  memcpy(q, "\xa5route\x91", 7);
  q += 7;
  *q++ = (char)(user ? 0x82 : 0x81);
  if (user) {
    memcpy(q, "\xa4user", 5);
    q += 5;
    *q++ = (char)(0xa0 | user_len);
    memcpy(q, user, user_len);
    q += user_len;
  }
  memcpy(q, "\xa2ip", 3);
  q += 3;
  *q++ = (char)(0xa0 | addr->len);
  memcpy(q, addr->text, addr->len);
  return (size_t)(q - p) + addr->len;
}
