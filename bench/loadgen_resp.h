/*
 * loadgen_resp: Redis's RESP for loadgen, the yardstick: a loadgen_parse_fn
 * for the replies to GET (loadgen_core.h).
 */
#ifndef GS_LOADGEN_RESP_H
#define GS_LOADGEN_RESP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * A loadgen_parse_fn for a reply to GET: a bulk string, a simple string or
 * an integer succeeded; an error or a nil bulk string failed. msgid is not
 * used: RESP replies carry none.
 */
long loadgen_resp_reply(const char *p, size_t len, uint32_t msgid, bool *failed,
                        char *why, size_t why_size);

#endif
