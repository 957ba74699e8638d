/*
 * gsclient: the blocking MessagePack-RPC client behind client.h.
 *
 * Replies are read into a buffer that grows as needed (admin replies such
 * as dc.list can be large) and unpacked with msgpack-c into a zone owned
 * by the client; the zone is cleared at the next call, which is when the
 * previous result stops being valid.
 */
#include "geosteer/client.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>

#define REPLY_MAX (64u << 20) /* refuse replies over 64 MiB */

struct gs_client {
  int fd;
  int timeout_ms;
  uint32_t next_msgid;
  msgpack_sbuffer out;
  msgpack_zone zone;
  char *in;
  size_t in_len, in_cap;
  size_t consumed; /* bytes of `in` the last result still points into */
  msgpack_object result;
};

const char *gs_client_strerror(int err)
{
  switch (err) {
  case GS_ERR_REMOTE:
    return "the server replied with an error";
  case GS_ERR_TIMEOUT:
    return "no reply within the timeout";
  case GS_ERR_CLOSED:
    return "the server closed the connection";
  case GS_ERR_PROTO:
    return "the reply is not valid MessagePack-RPC";
  default:
    if (err < 0 && err > -5000)
      return strerror(-err);
    return gs_strerror(err);
  }
}

static int parse_hostport(const char *where, struct sockaddr_storage *ss,
                          socklen_t *len)
{
  char host[64];
  const char *colon, *h = where;
  size_t hl;

  if (where[0] == '[') {
    const char *close = strchr(where, ']');
    if (close == NULL || close[1] != ':')
      return GS_ERR_ADDR;
    h = where + 1;
    hl = (size_t)(close - h);
    colon = close + 1;
  } else {
    colon = strrchr(where, ':');
    if (colon == NULL)
      return GS_ERR_ADDR;
    hl = (size_t)(colon - where);
  }
  if (hl == 0 || hl >= sizeof(host))
    return GS_ERR_ADDR;
  memcpy(host, h, hl);
  host[hl] = '\0';
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (*end != '\0' || port <= 0 || port > 65535)
    return GS_ERR_ADDR;
  memset(ss, 0, sizeof(*ss));
  struct sockaddr_in *in = (struct sockaddr_in *)ss;
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
  if (inet_pton(AF_INET, host, &in->sin_addr) == 1) {
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)port);
    *len = sizeof(*in);
    return 0;
  }
  if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port);
    *len = sizeof(*in6);
    return 0;
  }
  /* A name: resolve it (the CLI may be given "localhost:7400"). */
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host, NULL, &hints, &res) != 0 || res == NULL)
    return GS_ERR_ADDR;
  memcpy(ss, res->ai_addr, res->ai_addrlen);
  *len = res->ai_addrlen;
  if (ss->ss_family == AF_INET)
    in->sin_port = htons((uint16_t)port);
  else
    in6->sin6_port = htons((uint16_t)port);
  freeaddrinfo(res);
  return 0;
}

static int wait_fd(int fd, short events, int timeout_ms)
{
  struct pollfd p = {.fd = fd, .events = events};
  int n;
  do
    n = poll(&p, 1, timeout_ms);
  while (n < 0 && errno == EINTR);
  if (n < 0)
    return -errno;
  return n == 0 ? GS_ERR_TIMEOUT : 0;
}

int gs_client_connect(const char *where, int timeout_ms, gs_client **out)
{
  struct sockaddr_storage ss;
  socklen_t len;
  int fd, rc;

  if (strchr(where, '/')) {
    struct sockaddr_un *sun = (struct sockaddr_un *)&ss;
    if (strlen(where) >= sizeof(sun->sun_path))
      return GS_ERR_ADDR;
    memset(&ss, 0, sizeof(ss));
    sun->sun_family = AF_UNIX;
    strcpy(sun->sun_path, where);
    len = sizeof(*sun);
  } else if ((rc = parse_hostport(where, &ss, &len)) != 0) {
    return rc;
  }
  fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  if (connect(fd, (struct sockaddr *)&ss, len) != 0) {
    if (errno != EINPROGRESS) {
      rc = -errno;
      close(fd);
      return rc;
    }
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    if ((rc = wait_fd(fd, POLLOUT, timeout_ms)) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr) {
      close(fd);
      return rc ? rc : -soerr;
    }
  }
  if (ss.ss_family != AF_UNIX) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  gs_client *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    close(fd);
    return GS_ERR_NOMEM;
  }
  c->fd = fd;
  c->timeout_ms = timeout_ms;
  c->next_msgid = 1;
  msgpack_sbuffer_init(&c->out);
  msgpack_zone_init(&c->zone, 4096);
  *out = c;
  return 0;
}

void gs_client_close(gs_client *c)
{
  if (c == NULL)
    return;
  close(c->fd);
  msgpack_sbuffer_destroy(&c->out);
  msgpack_zone_destroy(&c->zone);
  free(c->in);
  free(c);
}

static int send_all(gs_client *c, const char *p, size_t n)
{
  while (n > 0) {
    ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
      int rc = wait_fd(c->fd, POLLOUT, c->timeout_ms);
      if (rc != 0)
        return rc;
      continue;
    }
    if (w < 0)
      return -errno;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static void copy_str(char *dst, size_t size, const msgpack_object *o)
{
  size_t n = 0;
  if (o && o->type == MSGPACK_OBJECT_STR) {
    n = o->via.str.size < size - 1 ? o->via.str.size : size - 1;
    if (n > 0) /* an empty string's ptr may be NULL */
      memcpy(dst, o->via.str.ptr, n);
  }
  dst[n] = '\0';
}

static const msgpack_object *map_get(const msgpack_object *m, const char *k)
{
  size_t n = strlen(k);
  if (m == NULL || m->type != MSGPACK_OBJECT_MAP)
    return NULL;
  for (uint32_t i = 0; i < m->via.map.size; i++) {
    const msgpack_object *key = &m->via.map.ptr[i].key;
    if (key->type == MSGPACK_OBJECT_STR && key->via.str.size == n &&
        memcmp(key->via.str.ptr, k, n) == 0)
      return &m->via.map.ptr[i].val;
  }
  return NULL;
}

/* Reads until one whole reply is buffered, then unpacks it. */
static int read_reply(gs_client *c, uint32_t msgid, gs_remote_error *err)
{
  /* The previous result is no longer valid: its bytes may go now. */
  if (c->consumed > 0) {
    memmove(c->in, c->in + c->consumed, c->in_len - c->consumed);
    c->in_len -= c->consumed;
    c->consumed = 0;
  }
  for (;;) {
    msgpack_object o;
    size_t off = c->consumed;
    msgpack_unpack_return r =
        c->in_len > off ? msgpack_unpack(c->in, c->in_len, &off, &c->zone, &o)
                        : MSGPACK_UNPACK_CONTINUE;
    if (r == MSGPACK_UNPACK_SUCCESS || r == MSGPACK_UNPACK_EXTRA_BYTES) {
      /*
       * The result's strings point into `in`: leave the bytes in place
       * until the next call (bytes after it stay for that call too).
       */
      c->consumed = off;
      if (o.type != MSGPACK_OBJECT_ARRAY || o.via.array.size < 3)
        return GS_ERR_PROTO;
      const msgpack_object *e = o.via.array.ptr;
      if (e[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER && e[0].via.u64 == 2) {
        /* A notification: the server says why it is closing. */
        const msgpack_object *p = &e[2];
        if (err && p->type == MSGPACK_OBJECT_ARRAY && p->via.array.size == 1) {
          const msgpack_object *m = &p->via.array.ptr[0];
          const msgpack_object *code = map_get(m, "code");
          err->code = code && code->type == MSGPACK_OBJECT_POSITIVE_INTEGER
                          ? (int)code->via.u64
                          : 0;
          copy_str(err->name, sizeof(err->name), map_get(m, "name"));
          copy_str(err->message, sizeof(err->message), map_get(m, "message"));
          return GS_ERR_REMOTE;
        }
        continue;
      }
      if (o.via.array.size != 4 ||
          e[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER || e[1].via.u64 != msgid)
        return GS_ERR_PROTO;
      if (e[2].type != MSGPACK_OBJECT_NIL) {
        if (err) {
          const msgpack_object *code = map_get(&e[2], "code");
          err->code = code && code->type == MSGPACK_OBJECT_POSITIVE_INTEGER
                          ? (int)code->via.u64
                          : 0;
          copy_str(err->name, sizeof(err->name), map_get(&e[2], "name"));
          copy_str(err->message, sizeof(err->message),
                   map_get(&e[2], "message"));
        }
        return GS_ERR_REMOTE;
      }
      c->result = e[3];
      return 0;
    }
    if (r != MSGPACK_UNPACK_CONTINUE)
      return GS_ERR_PROTO;
    if (c->in_len == c->in_cap) {
      size_t cap = c->in_cap ? c->in_cap * 2 : 65536;
      if (cap > REPLY_MAX)
        return GS_ERR_PROTO;
      char *p = realloc(c->in, cap);
      if (p == NULL)
        return GS_ERR_NOMEM;
      c->in = p;
      c->in_cap = cap;
    }
    int rc = wait_fd(c->fd, POLLIN, c->timeout_ms);
    if (rc != 0)
      return rc;
    ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
    if (n == 0)
      return GS_ERR_CLOSED;
    if (n < 0 && errno != EAGAIN && errno != EINTR)
      return errno == ECONNRESET ? GS_ERR_CLOSED : -errno;
    if (n > 0)
      c->in_len += (size_t)n;
  }
}

/* Starts [0, msgid, method, ...] in c->out; returns the msgid. */
static uint32_t begin_request(gs_client *c, msgpack_packer *pk,
                              const char *method)
{
  uint32_t msgid = c->next_msgid++;

  msgpack_zone_clear(&c->zone);
  msgpack_sbuffer_clear(&c->out);
  msgpack_packer_init(pk, &c->out, msgpack_sbuffer_write);
  msgpack_pack_array(pk, 4);
  msgpack_pack_uint8(pk, GS_RPC_REQUEST);
  msgpack_pack_uint32(pk, msgid);
  msgpack_pack_str_with_body(pk, method, strlen(method));
  return msgid;
}

/* Sends c->out and waits for the reply to msgid. */
static int exchange(gs_client *c, uint32_t msgid, const msgpack_object **result,
                    gs_remote_error *err)
{
  int rc;

  if ((rc = send_all(c, c->out.data, c->out.size)) != 0)
    return rc == -EPIPE || rc == -ECONNRESET ? GS_ERR_CLOSED : rc;
  if ((rc = read_reply(c, msgid, err)) != 0)
    return rc;
  if (result)
    *result = &c->result;
  return 0;
}

int gs_client_call_users(gs_client *c, const char *method,
                         const char *const *users, size_t n, const char *actor,
                         const char *reason, const msgpack_object **result,
                         gs_remote_error *err)
{
  msgpack_packer pk;
  uint32_t msgid = begin_request(c, &pk, method);

  msgpack_pack_array(&pk, 1);
  msgpack_pack_map(&pk, reason ? 3 : 2);
  msgpack_pack_str_with_body(&pk, "users", 5);
  msgpack_pack_array(&pk, n);
  for (size_t i = 0; i < n; i++)
    msgpack_pack_str_with_body(&pk, users[i], strlen(users[i]));
  msgpack_pack_str_with_body(&pk, "actor", 5);
  msgpack_pack_str_with_body(&pk, actor, strlen(actor));
  if (reason) {
    msgpack_pack_str_with_body(&pk, "reason", 6);
    msgpack_pack_str_with_body(&pk, reason, strlen(reason));
  }
  return exchange(c, msgid, result, err);
}

int gs_client_call(gs_client *c, const char *method, const gs_arg *args,
                   size_t nargs, const msgpack_object **result,
                   gs_remote_error *err)
{
  msgpack_packer pk;
  uint32_t msgid = begin_request(c, &pk, method);

  if (nargs == 0) {
    msgpack_pack_array(&pk, 0);
  } else {
    msgpack_pack_array(&pk, 1);
    msgpack_pack_map(&pk, nargs);
    for (size_t i = 0; i < nargs; i++) {
      msgpack_pack_str_with_body(&pk, args[i].key, strlen(args[i].key));
      if (args[i].str)
        msgpack_pack_str_with_body(&pk, args[i].str, strlen(args[i].str));
      else if (args[i].boolean)
        msgpack_pack_true(&pk);
      else
        msgpack_pack_false(&pk);
    }
  }
  return exchange(c, msgid, result, err);
}

int gs_route(gs_client *c, const char *user, const char *ip, const char *hint,
             bool no_geo, const char *session, gs_route_answer *out,
             gs_remote_error *err)
{
  gs_arg args[5];
  size_t n = 0;
  const msgpack_object *r;
  int rc;

  if (user)
    args[n++] = (gs_arg){"user", user, false};
  if (ip)
    args[n++] = (gs_arg){"ip", ip, false};
  if (hint)
    args[n++] = (gs_arg){"hint", hint, false};
  if (no_geo)
    args[n++] = (gs_arg){"no_geo", NULL, true};
  if (session)
    args[n++] = (gs_arg){"session", session, false};
  if ((rc = gs_client_call(c, "route", args, n, &r, err)) != 0)
    return rc;
  if (r->type != MSGPACK_OBJECT_MAP)
    return GS_ERR_PROTO;
  memset(out, 0, sizeof(*out));
  copy_str(out->dc, sizeof(out->dc), map_get(r, "dc"));
  copy_str(out->endpoint, sizeof(out->endpoint), map_get(r, "endpoint"));
  copy_str(out->reason, sizeof(out->reason), map_get(r, "reason"));
  const msgpack_object *scope = map_get(r, "scope");
  out->scope = scope && scope->type == MSGPACK_OBJECT_POSITIVE_INTEGER
                   ? (int)scope->via.u64
                   : -1;
  const msgpack_object *alt = map_get(r, "alternates");
  if (alt && alt->type == MSGPACK_OBJECT_ARRAY) {
    for (uint32_t i = 0; i < alt->via.array.size && i < 15; i++) {
      copy_str(out->alternates[i].dc, sizeof(out->alternates[i].dc),
               map_get(&alt->via.array.ptr[i], "dc"));
      copy_str(out->alternates[i].endpoint, sizeof(out->alternates[i].endpoint),
               map_get(&alt->via.array.ptr[i], "endpoint"));
      out->nalternates++;
    }
  }
  return 0;
}
