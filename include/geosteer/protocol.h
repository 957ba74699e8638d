/*
 * protocol.h: the wire constants of geosteer's MessagePack-RPC interface,
 * shared by the server, the client library and the CLI. docs/protocol.md
 * describes every message byte by byte.
 *
 * Error codes are stable: never renumbered, never reused. A client should
 * act on `code`; `name` is the same fact for people and logs; `message`
 * explains this occurrence.
 */
#ifndef GEOSTEER_PROTOCOL_H
#define GEOSTEER_PROTOCOL_H

#define GS_RPC_REQUEST 0
#define GS_RPC_RESPONSE 1
#define GS_RPC_NOTIFICATION 2

#define GS_DEFAULT_ROUTE_PORT 7400
#define GS_USER_MAX 128        /* bytes of UTF-8 */
#define GS_SESSION_MAX 64      /* bytes of [A-Za-z0-9._-] */
#define GS_ACTOR_MAX 64        /* bytes of UTF-8: who made an opt-out change */
#define GS_REASON_TEXT_MAX 256 /* bytes of UTF-8: why */
#define GS_BATCH_MAX 1000      /* users in one optout.set_many */

typedef enum gs_code {
  GS_CODE_BAD_REQUEST = 1,        /* malformed or invalid request */
  GS_CODE_MESSAGE_TOO_LARGE = 2,  /* over max_message, or nested too deep */
  GS_CODE_UNKNOWN_METHOD = 3,     /* no such method on this listener */
  GS_CODE_BAD_ADDRESS = 4,        /* `ip` is not an IPv4/IPv6 address */
  GS_CODE_FORBIDDEN = 5,          /* peer not allowed (ip from untrusted) */
  GS_CODE_NO_DATACENTER = 6,      /* every data center is drained */
  GS_CODE_UNAVAILABLE = 7,        /* at max_connections; retry later */
  GS_CODE_UNAUTHORIZED = 8,       /* admin over TCP without valid auth */
  GS_CODE_NOT_FOUND = 9,          /* named data center does not exist */
  GS_CODE_RELOAD_FAILED = 10,     /* new map/database rejected; old kept */
  GS_CODE_INTERNAL = 11,          /* a server fault; see its log */
  GS_CODE_STORE_UNAVAILABLE = 12, /* the opt-out store cannot be written */
  GS_CODE_COUNT_
} gs_code;

/* "BAD_REQUEST" for GS_CODE_BAD_REQUEST; "UNKNOWN" otherwise. */
const char *gs_code_name(int code);

#endif
