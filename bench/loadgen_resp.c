/*
 * loadgen_resp: the reading of RESP replies to GET for loadgen. A reply is
 * a line ending in CRLF (`+OK`, `:1`, `-ERR ...`, `$-1`) or a bulk string
 * `$LEN` CRLF, LEN bytes, CRLF. The length is read digit by digit, as
 * loadgen_rpc reads MessagePack by hand: the client's own work per reply
 * should be as small for one server as for the other.
 */
#include "loadgen_resp.h"

#include <stdio.h>
#include <string.h>

#include "loadgen_core.h"

/*
 * The bulk length in p[0..n), the text between `$` and CRLF: a decimal
 * number of at most 9 digits, or -1. -2 when it is neither.
 */
static long bulk_length(const char *p, size_t n)
{
  long v = 0;

  if (n == 2 && p[0] == '-' && p[1] == '1')
    return -1;
  if (n == 0 || n > 9)
    return -2;
  for (size_t i = 0; i < n; i++) {
    if (p[i] < '0' || p[i] > '9')
      return -2;
    v = v * 10 + (p[i] - '0');
  }
  return v;
}

long loadgen_resp_reply(const char *p, size_t len, uint32_t msgid, bool *failed,
                        char *why, size_t why_size)
{
  const char *nl = memchr(p, '\n', len);

  (void)msgid;
  if (nl == NULL)
    return 0;
  size_t line = (size_t)(nl - p) + 1;
  if (line < 3 || nl[-1] != '\r') {
    snprintf(why, why_size, "reply line does not end in CRLF");
    return -1;
  }
  *failed = false;
  switch (p[0]) {
  case '+':
  case ':':
    return (long)line;
  case '-':
    *failed = true;
    snprintf(why, why_size, "%.*s", (int)line - 2, p);
    return (long)line;
  case '$': {
    long blen = bulk_length(p + 1, line - 3);
    if (blen == -2) {
      snprintf(why, why_size, "bad bulk length in reply");
      return -1;
    }
    if (blen == -1) {
      *failed = true;
      snprintf(why, why_size, "nil (no such key)");
      return (long)line;
    }
    if (line + 2 + (size_t)blen > LOADGEN_RECV_BUF) {
      snprintf(why, why_size, "bulk reply of %ld bytes exceeds %d bytes", blen,
               LOADGEN_RECV_BUF);
      return -1;
    }
    if (len - line < (size_t)blen + 2)
      return 0;
    if (p[line + (size_t)blen] != '\r' || p[line + (size_t)blen + 1] != '\n') {
      snprintf(why, why_size, "bulk reply does not end in CRLF");
      return -1;
    }
    return (long)(line + (size_t)blen + 2);
  }
  default:
    snprintf(why, why_size, "unexpected reply type '%c'", p[0]);
    return -1;
  }
}
