/*
 * scan: finds the end of one MessagePack message and refuses hostile ones
 * before any decoder sees them. See scan.h.
 *
 * The walk is iterative: pending[d] counts the elements still to read in
 * the container open at depth d (pending[0] is the one top-level object),
 * and needed is the sum of pending[], a lower bound on the bytes still to
 * come since every element takes at least one byte. Invariant at the top
 * of each step: pos + needed <= max_size. Each header is checked against
 * room = max_size - pos - needed before anything moves, so a length or an
 * element count that cannot fit is refused as soon as its header bytes are
 * present, and SCAN_NEED_MORE is only ever returned for a prefix that can
 * still complete within max_size. Lengths are widened to uint64_t before
 * any addition, so 32-bit lengths near 4 GiB cannot wrap.
 */
#include "scan.h"

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

enum kind { SCALAR, ARRAY, MAP, INVALID };

/* How a lead byte in 0xc0..0xdf continues. */
struct format {
  uint8_t kind;      /* enum kind */
  uint8_t len_bytes; /* big-endian length or count after the lead byte */
  uint8_t fixed;     /* payload bytes that do not depend on that length */
};

static const struct format formats[32] = {
    [0x00] = {SCALAR, 0, 0},  /* nil */
    [0x01] = {INVALID, 0, 0}, /* never used */
    [0x02] = {SCALAR, 0, 0},  /* false */
    [0x03] = {SCALAR, 0, 0},  /* true */
    [0x04] = {SCALAR, 1, 0},  /* bin8 */
    [0x05] = {SCALAR, 2, 0},  /* bin16 */
    [0x06] = {SCALAR, 4, 0},  /* bin32 */
    [0x07] = {SCALAR, 1, 1},  /* ext8: length, type, data */
    [0x08] = {SCALAR, 2, 1},  /* ext16 */
    [0x09] = {SCALAR, 4, 1},  /* ext32 */
    [0x0a] = {SCALAR, 0, 4},  /* float32 */
    [0x0b] = {SCALAR, 0, 8},  /* float64 */
    [0x0c] = {SCALAR, 0, 1},  /* uint8 */
    [0x0d] = {SCALAR, 0, 2},  /* uint16 */
    [0x0e] = {SCALAR, 0, 4},  /* uint32 */
    [0x0f] = {SCALAR, 0, 8},  /* uint64 */
    [0x10] = {SCALAR, 0, 1},  /* int8 */
    [0x11] = {SCALAR, 0, 2},  /* int16 */
    [0x12] = {SCALAR, 0, 4},  /* int32 */
    [0x13] = {SCALAR, 0, 8},  /* int64 */
    [0x14] = {SCALAR, 0, 2},  /* fixext1: type, data */
    [0x15] = {SCALAR, 0, 3},  /* fixext2 */
    [0x16] = {SCALAR, 0, 5},  /* fixext4 */
    [0x17] = {SCALAR, 0, 9},  /* fixext8 */
    [0x18] = {SCALAR, 0, 17}, /* fixext16 */
    [0x19] = {SCALAR, 1, 0},  /* str8 */
    [0x1a] = {SCALAR, 2, 0},  /* str16 */
    [0x1b] = {SCALAR, 4, 0},  /* str32 */
    [0x1c] = {ARRAY, 2, 0},   /* array16 */
    [0x1d] = {ARRAY, 4, 0},   /* array32 */
    [0x1e] = {MAP, 2, 0},     /* map16 */
    [0x1f] = {MAP, 4, 0},     /* map32 */
};

static uint32_t read_be(const uint8_t *p, int n)
{
  uint32_t v = 0;
  for (int i = 0; i < n; i++)
    v = (v << 8) | p[i];
  return v;
}

/* The object is cut short at len: wait for more unless len is the limit. */
static int incomplete(size_t len, size_t max_size)
{
  return len >= max_size ? SCAN_ERR_TOO_LARGE : SCAN_NEED_MORE;
}

/*
 * Decodes the lead byte b into its format; for the fix* forms the count or
 * length lives in b itself and comes back in *inline_n.
 */
static struct format lead(uint8_t b, uint32_t *inline_n)
{
  *inline_n = 0;
  if (b <= 0x7f || b >= 0xe0) /* positive and negative fixint */
    return (struct format){SCALAR, 0, 0};
  if (b <= 0x8f) {
    *inline_n = b & 0x0f;
    return (struct format){MAP, 0, 0};
  }
  if (b <= 0x9f) {
    *inline_n = b & 0x0f;
    return (struct format){ARRAY, 0, 0};
  }
  if (b <= 0xbf) {
    *inline_n = b & 0x1f;
    return (struct format){SCALAR, 0, 0};
  }
  return formats[b - 0xc0];
}

int scan_message(const uint8_t *buf, size_t len, size_t max_size, int max_depth,
                 size_t *size)
{
  size_t pending[SCAN_MAX_DEPTH + 1];
  size_t pos = 0, needed = 1;
  int depth = 0;

  if (max_depth > SCAN_MAX_DEPTH)
    max_depth = SCAN_MAX_DEPTH;
  if (max_size == 0)
    return SCAN_ERR_TOO_LARGE;
  pending[0] = 1;
  for (;;) {
    uint32_t n;
    size_t room = max_size - pos - needed;

    if (pos >= len)
      return incomplete(len, max_size);
    struct format f = lead(buf[pos], &n);
    if (f.kind == INVALID)
      return SCAN_ERR_MALFORMED;
    /* The element's lower bound grows from 1 byte to its full header. */
    if (f.len_bytes > room)
      return SCAN_ERR_TOO_LARGE;
    if (f.len_bytes >= len - pos)
      return incomplete(len, max_size);
    if (f.len_bytes > 0)
      n = read_be(buf + pos + 1, f.len_bytes);
    pos += 1 + (size_t)f.len_bytes;
    pending[depth]--;
    needed--;
    room = max_size - pos - needed;

    if (f.kind == SCALAR) {
      uint64_t payload = (uint64_t)f.fixed + n;
      if (payload > room)
        return SCAN_ERR_TOO_LARGE;
      pos += (size_t)payload;
      if (pos > len)
        return incomplete(len, max_size);
    } else {
      uint64_t elements = f.kind == MAP ? 2 * (uint64_t)n : n;
      if (depth >= max_depth)
        return SCAN_ERR_DEPTH;
      if (elements > room)
        return SCAN_ERR_TOO_LARGE;
      pending[++depth] = (size_t)elements;
      needed += (size_t)elements;
    }

    while (pending[depth] == 0) {
      if (depth == 0) {
        *size = pos;
        return SCAN_OK;
      }
      depth--;
    }
  }
}

bool scan_msgid(const uint8_t *buf, size_t len, uint32_t *msgid)
{
  size_t pos;
  int id_bytes;

  if (len < 1)
    return false;
  if (buf[0] == 0x94) {
    pos = 1;
  } else if (buf[0] == 0xdc) {
    if (len < 3 || read_be(buf + 1, 2) != 4)
      return false;
    pos = 3;
  } else if (buf[0] == 0xdd) {
    if (len < 5 || read_be(buf + 1, 4) != 4)
      return false;
    pos = 5;
  } else {
    return false;
  }
  /* The type (0, a request), then the msgid's lead byte. */
  if (len - pos < 2 || buf[pos] != 0x00)
    return false;
  pos++;
  switch (buf[pos++]) {
  case 0xcc:
    id_bytes = 1;
    break;
  case 0xcd:
    id_bytes = 2;
    break;
  case 0xce:
    id_bytes = 4;
    break;
  case 0xcf:
    /* uint64: only when the upper half is zero. */
    if (len - pos < 8 || read_be(buf + pos, 4) != 0)
      return false;
    pos += 4;
    id_bytes = 4;
    break;
  default:
    if (buf[pos - 1] > 0x7f)
      return false;
    *msgid = buf[pos - 1];
    return true;
  }
  if (len - pos < (size_t)id_bytes)
    return false;
  *msgid = read_be(buf + pos, id_bytes);
  return true;
}

const char *scan_strerror(int result)
{
  switch (result) {
  case SCAN_OK:
    return "ok";
  case SCAN_NEED_MORE:
    return "incomplete message";
  case SCAN_ERR_MALFORMED:
    return "malformed MessagePack";
  case SCAN_ERR_DEPTH:
    return "message nested deeper than " STRINGIFY(SCAN_MAX_DEPTH) " levels";
  case SCAN_ERR_TOO_LARGE:
    return "message larger than the limit";
  }
  return "unknown scan result";
}
