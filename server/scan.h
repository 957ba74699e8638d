/*
 * scan: finds where one MessagePack message ends, before any decoder sees
 * it, and refuses messages that are too large, too deep or malformed.
 *
 * The scanner walks the bytes with an explicit stack (no recursion, no
 * allocation). Every str/bin/ext length and every array/map element count
 * is checked against the bytes that can still follow within max_size
 * (each element needs at least one byte), so a 5-byte array32 header
 * claiming 2^32 elements is refused at once instead of making anything
 * allocate. Invariant: SCAN_OK means buf[0..*size) is exactly one complete,
 * well-formed object of nesting depth <= max_depth.
 */
#ifndef GS_SCAN_H
#define GS_SCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SCAN_MAX_DEPTH 8 /* arrays/maps nested at most this deep */

enum scan_result {
  SCAN_OK = 0,             /* one complete object; *size set */
  SCAN_NEED_MORE = 1,      /* a valid prefix; wait for more bytes */
  SCAN_ERR_MALFORMED = -1, /* a byte that is not MessagePack (0xc1) */
  SCAN_ERR_DEPTH = -2,     /* nested deeper than max_depth */
  SCAN_ERR_TOO_LARGE = -3, /* cannot fit in max_size bytes */
};

/*
 * Scans the object at buf[0..len). max_size bounds the whole message:
 * SCAN_ERR_TOO_LARGE as soon as a header claims more than can fit in
 * max_size bytes, or len >= max_size without a complete object.
 * max_depth 1 allows one array or map with scalar elements; 0 allows
 * only a scalar. The stack is fixed, so max_depth is capped at
 * SCAN_MAX_DEPTH. Never reads past buf[len), never allocates.
 * *size is set only on SCAN_OK (then *size <= len and *size <= max_size).
 */
int scan_message(const uint8_t *buf, size_t len, size_t max_size, int max_depth,
                 size_t *size);

/*
 * The msgid of a request prefix, if the bytes show one: an array of 4
 * whose first element is 0 and second an unsigned integer that fits in 32
 * bits. Needs only the first few bytes; used to address an error reply to
 * a message that is refused. Returns false when no msgid is known.
 */
bool scan_msgid(const uint8_t *buf, size_t len, uint32_t *msgid);

/* Short text for a scan result ("message nested deeper than 8"). */
const char *scan_strerror(int result);

#endif
