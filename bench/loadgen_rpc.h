/*
 * loadgen_rpc: MessagePack-RPC for the load generators: the route request
 * and a loadgen_parse_fn for its reply (loadgen_core.h).
 */
#ifndef GS_LOADGEN_RPC_H
#define GS_LOADGEN_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loadgen_core.h"

/*
 * The MessagePack-RPC route request [0, msgid, "route", [{"ip": ADDR}]],
 * or [{"user": USER, "ip": ADDR}] when user is not NULL (user_len < 32),
 * at p; returns its length, at most 71 bytes.
 */
size_t loadgen_rpc_route(char *p, uint32_t msgid, const char *user,
                         size_t user_len, const struct loadgen_addr *addr);

/*
 * A loadgen_parse_fn for MessagePack-RPC: the reply must be
 * [1, msgid, error, result]; it failed when error is not nil.
 */
long loadgen_rpc_reply(const char *p, size_t len, uint32_t msgid, bool *failed,
                       char *why, size_t why_size);

#endif
