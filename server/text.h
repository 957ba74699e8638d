/*
 * text: validation of text that crosses the wire (user ids, actors,
 * reasons), shared by the server and the CLI so both accept exactly the
 * same strings.
 */
#ifndef GS_TEXT_H
#define GS_TEXT_H

#include <stdbool.h>
#include <stddef.h>

/*
 * True when s[0..n) is valid UTF-8 without NUL bytes: no overlong forms,
 * no surrogates, nothing above U+10FFFF.
 */
bool text_valid_utf8(const char *s, size_t n);

#endif
