/*
 * client.h: the geosteer client library, for session clients (route),
 * ops (map and data-center commands) and support tools (admin methods).
 *
 * A gs_client is one blocking connection (TCP or unix socket) with a
 * timeout per call. Calls are synchronous: one request, one reply. The
 * result of a call is a msgpack_object that stays valid until the next call
 * on the same client or gs_client_close(). Not thread-safe: one client per
 * thread.
 *
 * Every function returns 0 or a negative gs_err / libuv-style code
 * (-errno); a call the server answered with an error returns
 * GS_ERR_REMOTE and fills the gs_remote_error.
 */
#ifndef GEOSTEER_CLIENT_H
#define GEOSTEER_CLIENT_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>

#include "geosteer/geosteer.h"
#include "geosteer/protocol.h"

#define GS_ERR_REMOTE -5100  /* the server replied with an error */
#define GS_ERR_TIMEOUT -5101 /* no reply within the timeout */
#define GS_ERR_CLOSED -5102  /* the server closed the connection */
#define GS_ERR_PROTO -5103   /* the reply is not valid MessagePack-RPC */

typedef struct gs_client gs_client;

typedef struct gs_remote_error {
  int code;          /* gs_code */
  char name[32];     /* "BAD_REQUEST" */
  char message[512]; /* what the server said */
} gs_remote_error;

/* One argument of a call: a string or a boolean. */
typedef struct gs_arg {
  const char *key;
  const char *str; /* used when not NULL */
  bool boolean;    /* used when str is NULL */
} gs_arg;

/*
 * Connects to "host:port", "[v6]:port" or, with a '/' in it, a unix socket
 * path. timeout_ms bounds the connect and every later call.
 */
int gs_client_connect(const char *where, int timeout_ms, gs_client **out);
void gs_client_close(gs_client *c);

/*
 * Calls method with args (nargs may be 0: params []). On success *result
 * points at the reply's result. On GS_ERR_REMOTE, err (if not NULL) holds
 * the server's error.
 */
int gs_client_call(gs_client *c, const char *method, const gs_arg *args,
                   size_t nargs, const msgpack_object **result,
                   gs_remote_error *err);

/*
 * Calls method with {users: [users...], actor, reason?} (reason may be
 * NULL): the batch form used by optout.set_many.
 */
int gs_client_call_users(gs_client *c, const char *method,
                         const char *const *users, size_t n, const char *actor,
                         const char *reason, const msgpack_object **result,
                         gs_remote_error *err);

/* A routing answer, copied out of the reply. */
typedef struct gs_route_answer {
  char dc[33];
  char endpoint[256];
  int nalternates;
  struct {
    char dc[33];
    char endpoint[256];
  } alternates[15];
  char reason[16];
  int scope; /* -1 when the reply has none */
} gs_route_answer;

/*
 * Asks which data center to use. Any of user, ip, hint, session may be
 * NULL. Returns 0 and fills *out, or an error as above.
 */
int gs_route(gs_client *c, const char *user, const char *ip, const char *hint,
             bool no_geo, const char *session, gs_route_answer *out,
             gs_remote_error *err);

/* Text for a client error code (includes the gs_err texts). */
const char *gs_client_strerror(int err);

#endif
