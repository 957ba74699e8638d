/*
 * conn: connection handling for MessagePack-RPC listeners. See conn.h.
 *
 * Reading: alloc_cb hands out the free tail of the fixed input buffer; the
 * scanner guarantees that a message which cannot fit is refused before the
 * buffer fills, so the tail is never empty while reading. With a prefetch
 * hook (route listeners), what a loop iteration reads is queued and handled
 * by the check handle after all the reads (handle_input): read ahead in
 * every queued connection, one prefetch batch, then handle each. A read
 * that fills the buffer is handled at once, so the tail stays non-empty.
 *
 * Writing: replies accumulate in `out`. flush() tries uv_try_write first
 * (the common case: everything goes at once, no request object, no copy);
 * what the kernel does not take moves to `flight` for one uv_write, and
 * replies produced meanwhile wait in `out`.
 *
 * When: the replies to a read are not written from the read callback but
 * queued (queue_flush) and written by a check handle after every read of
 * the loop iteration is handled, one write per connection, back to back.
 * Writing between reads would wake the client for each connection while
 * the next one is still being handled; a client that handles one reply
 * quickly then sleeps again, and each wake-up costs the server more than
 * the write itself. A connection whose unsent replies pass
 * max_pending_bytes is flushed at once, so backpressure starts where it
 * did.
 */
#include "conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "geosteer/geosteer.h"
#include "geosteer/protocol.h"
#include "log.h"
#include "scan.h"

static void start_reading(struct conn *c);
static void stop_reading(struct conn *c);
static void reject_drain(struct conn *c);
static void flush(struct conn *c);
static void process_input(struct conn *c);
static void on_flush_check(uv_check_t *h);
static void on_poll_idle(uv_idle_t *h);
static void handle_input(struct conn_server *srv);

int conn_server_init(struct conn_server *srv, uv_loop_t *loop,
                     const struct config *cfg, size_t max_message,
                     _Atomic size_t *open_conns, conn_dispatch_fn dispatch,
                     void *ctx, const char *kind)
{
  memset(srv, 0, sizeof(*srv));
  srv->loop = loop;
  srv->max_message = max_message ? max_message : cfg->max_message;
  srv->max_pending_bytes = cfg->max_pending_bytes;
  srv->idle_timeout_ms = cfg->idle_timeout_ms;
  srv->max_connections = cfg->max_connections;
  srv->open_conns = open_conns;
  srv->dispatch = dispatch;
  srv->ctx = ctx;
  srv->kind = kind;
  if (!rpc_zone_init(&srv->zone, srv->max_message))
    return GS_ERR_NOMEM;
  uv_check_init(loop, &srv->flusher);
  srv->flusher.data = srv;
  uv_check_start(&srv->flusher, on_flush_check);
  uv_unref((uv_handle_t *)&srv->flusher); /* does not keep the loop alive */
  uv_idle_init(loop, &srv->poller);
  srv->poller.data = srv;
  uv_unref((uv_handle_t *)&srv->poller);
  return 0;
}

void conn_server_free(struct conn_server *srv)
{
  msgpack_zone_destroy(&srv->zone);
}

size_t conn_server_count(const struct conn_server *srv)
{
  size_t n = 0;
  for (const struct conn *c = srv->conns; c; c = c->next)
    n++;
  return n;
}

/* ---- lifetime -------------------------------------------------------- */

static void maybe_free(struct conn *c)
{
  if (c->open_handles > 0 || c->refs > 0)
    return;
  free(c->in);
  wbuf_free(&c->out);
  wbuf_free(&c->flight);
  free(c);
}

static void on_handle_closed(uv_handle_t *h)
{
  struct conn *c = h->data;
  c->open_handles--;
  maybe_free(c);
}

static void conn_close(struct conn *c)
{
  struct conn_server *srv = c->srv;

  if (c->closing)
    return;
  c->closing = true;
  if (c->prev)
    c->prev->next = c->next;
  else
    srv->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  atomic_fetch_sub(srv->open_conns, 1);
  uv_close(&c->h.handle, on_handle_closed);
  uv_close((uv_handle_t *)&c->idle, on_handle_closed);
}

void conn_ref(struct conn *c)
{
  c->refs++;
}

void conn_unref(struct conn *c)
{
  c->refs--;
  maybe_free(c);
}

/* ---- writing --------------------------------------------------------- */

static size_t pending_bytes(const struct conn *c)
{
  return c->out.len + c->flight.len;
}

static void on_write(uv_write_t *req, int status)
{
  struct conn *c = req->data;

  c->writing = false;
  c->flight.len = 0;
  if (status < 0 || c->closing) {
    conn_close(c);
    return;
  }
  flush(c);
}

static void flush(struct conn *c)
{
  if (c->closing)
    return;
  if (c->writing) {
    /*
     * One write is in flight; replies queue in `out` meanwhile. The
     * backpressure check must still run, or a client that never reads
     * makes `out` grow without bound.
     */
    if (pending_bytes(c) > c->srv->max_pending_bytes)
      stop_reading(c);
    return;
  }
  if (c->out.failed) {
    log_event(LOG_ERROR, "conn_out_of_memory", "kind=%s", c->srv->kind);
    conn_close(c);
    return;
  }
  if (c->out.len > 0) {
    uv_buf_t b = uv_buf_init(c->out.data, (unsigned)c->out.len);
    int n = uv_try_write(&c->h.stream, &b, 1);
    if (n == UV_EAGAIN)
      n = 0;
    if (n < 0) {
      conn_close(c);
      return;
    }
    if ((size_t)n < c->out.len) {
      /* Swap buffers: the unsent tail becomes the write in flight. */
      struct wbuf tmp = c->flight;
      c->flight = c->out;
      c->out = tmp;
      c->out.len = 0;
      if (n > 0)
        memmove(c->flight.data, c->flight.data + n, c->flight.len - (size_t)n);
      c->flight.len -= (size_t)n;
      b = uv_buf_init(c->flight.data, (unsigned)c->flight.len);
      c->wreq.data = c;
      if (uv_write(&c->wreq, &c->h.stream, &b, 1, on_write) != 0) {
        conn_close(c);
        return;
      }
      c->writing = true;
    } else {
      c->out.len = 0;
    }
  }
  if (!c->writing && c->close_after_flush) {
    if (c->rejecting)
      reject_drain(c);
    else
      conn_close(c);
    return;
  }
  /* Backpressure: stop reading while the peer does not take replies. */
  size_t pending = pending_bytes(c);
  if (pending > c->srv->max_pending_bytes) {
    stop_reading(c);
  } else if (pending <= c->srv->max_pending_bytes / 2 && !c->reading &&
             !c->deferred && !c->close_after_flush && !c->srv->stopping) {
    start_reading(c);
    /* Input that arrived before the pause may hold whole messages. */
    process_input(c);
  }
}

/* Writes c's replies once this loop iteration's reads are handled. */
static void queue_flush(struct conn *c)
{
  struct conn_server *srv = c->srv;

  if (c->flush_queued)
    return;
  if (srv->stopping || pending_bytes(c) > srv->max_pending_bytes) {
    flush(c);
    return;
  }
  c->flush_queued = true;
  conn_ref(c); /* a close meanwhile must not free it */
  c->flush_next = srv->flush_head;
  srv->flush_head = c;
}

static void on_flush_check(uv_check_t *h)
{
  struct conn_server *srv = h->data;
  struct conn *c;

  handle_input(srv);

  /* Newest first, as Redis writes its clients: in a closed-loop load the
   * 99th percentile came out lower than oldest first, throughput alike.
   * flush() may queue its connection again (input waiting when reading
   * resumes); that one is taken in this same pass. */
  while ((c = srv->flush_head) != NULL) {
    srv->flush_head = c->flush_next;
    c->flush_queued = false;
    flush(c);
    conn_unref(c);
  }
}

/*
 * A rejected connection has its error written; closing now, with the
 * client's request unread, would reset the connection and lose the error.
 * So: half-close, discard what the client sends until it closes, or give
 * up after REJECT_LINGER_MS.
 */
#define REJECT_LINGER_MS 1000

static void on_reject_alloc(uv_handle_t *h, size_t n, uv_buf_t *buf)
{
  struct conn *c = h->data;
  (void)n;
  *buf = uv_buf_init(c->in, (unsigned)c->srv->max_message);
}

static void on_reject_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
  (void)buf;
  if (nread < 0)
    conn_close(s->data);
}

static void on_reject_shutdown(uv_shutdown_t *req, int status)
{
  (void)req;
  (void)status;
}

static void on_reject_linger(uv_timer_t *t)
{
  conn_close(t->data);
}

static void reject_drain(struct conn *c)
{
  if (c->reading || c->closing)
    return;
  c->reading = true;
  c->close_after_flush = false;
  uv_shutdown(&c->sreq, &c->h.stream, on_reject_shutdown);
  uv_read_start(&c->h.stream, on_reject_alloc, on_reject_read);
  uv_timer_start(&c->idle, on_reject_linger, REJECT_LINGER_MS, 0);
}

void conn_packer(struct conn *c, msgpack_packer *pk)
{
  msgpack_packer_init(pk, &c->out, wbuf_write);
}

/* ---- reading --------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
  struct conn *c = h->data;
  (void)suggested;
  *buf = uv_buf_init(c->in + c->in_len,
                     (unsigned)(c->srv->max_message - c->in_len));
}

static void refuse(struct conn *c, int scan_result, const char *why)
{
  msgpack_packer pk;
  uint32_t msgid;
  int code = scan_result == SCAN_ERR_TOO_LARGE || scan_result == SCAN_ERR_DEPTH
                 ? GS_CODE_MESSAGE_TOO_LARGE
                 : GS_CODE_BAD_REQUEST;

  atomic_store_explicit(
      &c->srv->protocol_errors,
      atomic_load_explicit(&c->srv->protocol_errors, memory_order_relaxed) + 1,
      memory_order_relaxed);
  conn_packer(c, &pk);
  if (scan_msgid((const uint8_t *)c->in, c->in_len, &msgid))
    rpc_pack_error(&pk, msgid, code, "%s", why);
  else
    rpc_pack_error_notification(&pk, code, why);
  c->close_after_flush = true;
}

/*
 * Scans up to `most` (<= CONN_BATCH) complete messages of c's input ahead
 * into c->sizes and hands them to the prefetch hook; first starts a batch.
 * False, with nothing called, when c is not to be read now.
 */
static bool read_ahead(struct conn *c, size_t most, bool first)
{
  struct conn_server *srv = c->srv;
  size_t at = 0, n = 0;

  c->nsizes = 0;
  if (srv->prefetch == NULL || c->deferred || c->close_after_flush ||
      c->closing)
    return false;
  while (n < most) {
    size_t size;
    if (scan_message((const uint8_t *)c->in + at, c->in_len - at,
                     srv->max_message, SCAN_MAX_DEPTH, &size) != SCAN_OK)
      break;
    c->sizes[n++] = (uint32_t)size;
    at += size;
  }
  c->nsizes = (uint8_t)n;
  srv->prefetch(c, c->sizes, n, first);
  c->prefetched = true;
  return true;
}

/* Handles every complete message in the input buffer. */
static void process_input(struct conn *c)
{
  struct conn_server *srv = c->srv;
  size_t off = 0, next = 0;

  /* Read ahead, as a batch of its own, unless the check handle did it for
   * this iteration's batch (handle_input). The loop below takes the sizes
   * instead of scanning those messages again. */
  if (!c->prefetched && read_ahead(c, CONN_BATCH, true) &&
      srv->prefetch_done != NULL)
    srv->prefetch_done(srv);
  c->prefetched = false;
  while (!c->deferred && !c->close_after_flush && !c->closing) {
    size_t size;
    int r = next < c->nsizes
                ? (size = c->sizes[next++], SCAN_OK)
                : scan_message((const uint8_t *)c->in + off, c->in_len - off,
                               srv->max_message, SCAN_MAX_DEPTH, &size);
    if (r == SCAN_NEED_MORE)
      break;
    if (r != SCAN_OK) {
      /* Keep only the bad message's bytes so its msgid can be read. */
      memmove(c->in, c->in + off, c->in_len - off);
      c->in_len -= off;
      off = 0;
      refuse(c, r, scan_strerror(r));
      break;
    }

    struct rpc_request req;
    msgpack_packer pk;
    bool msgid_known;
    uint32_t msgid;
    char why[256];

    c->last_message_ms = uv_now(srv->loop);
    if (srv->timed) {
      srv->msg_start_ns = srv->clock_valid ? srv->clock_ns : uv_hrtime();
      srv->clock_valid = false;
    }
    conn_packer(c, &pk);
    if (!rpc_decode(c->in + off, size, &srv->zone, &req, &msgid_known, &msgid,
                    why, sizeof(why))) {
      if (msgid_known)
        rpc_pack_error(&pk, msgid, GS_CODE_BAD_REQUEST, "%s", why);
      else
        rpc_pack_error_notification(&pk, GS_CODE_BAD_REQUEST, why);
      atomic_store_explicit(
          &srv->protocol_errors,
          atomic_load_explicit(&srv->protocol_errors, memory_order_relaxed) + 1,
          memory_order_relaxed);
      c->close_after_flush = true;
    } else {
      int rc = srv->dispatch(c, &req, &pk);
      if (rc == CONN_DEFERRED) {
        c->deferred = true;
      } else if (rc < 0) {
        c->close_after_flush = true;
      }
    }
    msgpack_zone_clear(&srv->zone);
    off += size;
  }
  c->nsizes = 0;
  srv->clock_valid = false; /* the next read starts at its own time */
  if (off > 0) {
    memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
  }
  /* Nothing more is read for a connection that waits on a deferred reply
   * or closes once flushed. Reading must stop here, not at the flush: a
   * refused message may fill the input buffer. */
  if (c->deferred || c->close_after_flush)
    stop_reading(c);
  queue_flush(c);
}

/* Handles c's input in this iteration's check handle (handle_input). */
static void queue_input(struct conn *c)
{
  struct conn_server *srv = c->srv;

  if (c->input_queued)
    return;
  c->input_queued = true;
  conn_ref(c); /* a close meanwhile must not free it */
  c->input_next = NULL;
  if (srv->input_tail != NULL)
    srv->input_tail->input_next = c;
  else
    srv->input_head = c;
  srv->input_tail = c;
}

/*
 * The input of every connection read in this iteration: read ahead in as
 * many as one batch holds, then handle them all in that order.
 * Connections past the batch read ahead on their own when handled.
 */
static void handle_input(struct conn_server *srv)
{
  struct conn *list = srv->input_head, *c, *next;
  size_t room = CONN_PREFETCH_MAX;
  bool first = true;

  if (list == NULL)
    return;
  srv->input_head = srv->input_tail = NULL;
  for (c = list; c != NULL && room > 0; c = c->input_next) {
    if (read_ahead(c, room < CONN_BATCH ? room : CONN_BATCH, first)) {
      first = false;
      room -= c->nsizes;
    }
  }
  if (!first && srv->prefetch_done != NULL)
    srv->prefetch_done(srv);
  for (c = list; c != NULL; c = next) {
    next = c->input_next;
    c->input_queued = false;
    process_input(c);
    conn_unref(c);
  }
}

/*
 * Busy polling. Going to sleep in epoll_wait and being woken costs both
 * sides of a connection more than the request itself on a virtual machine
 * (the sleeping CPU halts; the sender pays for the wake-up), so a loop that
 * has just read something keeps polling with a zero timeout: an active
 * idle handle makes libuv's poll phase return at once. The handle reads
 * the clock only in iterations that read nothing (a busy loop pays no
 * clock read for it) and stops itself once such iterations have gone on for
 * poll_ns; then the loop sleeps as usual. An idle server never spins.
 */
static void poll_after_read(struct conn_server *srv)
{
  srv->poll_read = true;
  if (srv->poll_ns > 0 && !uv_is_active((uv_handle_t *)&srv->poller))
    uv_idle_start(&srv->poller, on_poll_idle);
}

static void on_poll_idle(uv_idle_t *h)
{
  struct conn_server *srv = h->data;

  if (srv->poll_read) { /* the window starts again, at the next quiet pass */
    srv->poll_read = false;
    srv->poll_since_ns = 0;
    return;
  }
  uint64_t now = uv_hrtime();
  if (srv->poll_since_ns == 0)
    srv->poll_since_ns = now;
  else if (now - srv->poll_since_ns >= srv->poll_ns)
    uv_idle_stop(h);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
  struct conn *c = s->data;
  (void)buf;

  if (nread < 0) {
    conn_close(c); /* EOF or error: the peer is gone */
    return;
  }
  if (nread == 0)
    return;
  c->in_len += (size_t)nread;
  poll_after_read(c->srv);
  /* With a prefetch hook the input waits for the check handle, so that
   * one read-ahead batch spans every connection of this iteration. A full
   * buffer is handled now: libuv reads again at once. */
  if (c->srv->prefetch != NULL && c->in_len < c->srv->max_message) {
    queue_input(c);
    return;
  }
  process_input(c);
}

static void start_reading(struct conn *c)
{
  if (c->reading || c->closing)
    return;
  if (uv_read_start(&c->h.stream, on_alloc, on_read) == 0)
    c->reading = true;
}

static void stop_reading(struct conn *c)
{
  if (!c->reading)
    return;
  uv_read_stop(&c->h.stream);
  c->reading = false;
}

void conn_deferred_done(struct conn *c)
{
  c->deferred = false;
  if (c->closing)
    return;
  process_input(c); /* also flushes and resumes reading */
}

/* ---- idle timer ------------------------------------------------------ */

static void on_idle(uv_timer_t *t)
{
  struct conn *c = t->data;
  uint64_t now = uv_now(c->srv->loop);
  uint64_t idle = c->srv->idle_timeout_ms;

  if (c->deferred) {
    uv_timer_start(&c->idle, on_idle, idle, 0);
    return;
  }
  if (now - c->last_message_ms >= idle) {
    conn_close(c);
    return;
  }
  /* Lazy re-arm: messages only stamp the time, the timer checks it. */
  uv_timer_start(&c->idle, on_idle, idle - (now - c->last_message_ms), 0);
}

/* ---- accepting ------------------------------------------------------- */

static void on_connection(uv_stream_t *server, int status)
{
  struct conn_server *srv = server->data;
  struct conn *c;

  if (status < 0 || srv->stopping)
    return;
  c = calloc(1, sizeof(*c));
  if (c)
    c->in = malloc(srv->max_message);
  if (c == NULL || c->in == NULL) {
    free(c);
    log_event(LOG_ERROR, "accept_out_of_memory", "kind=%s", srv->kind);
    return;
  }
  c->srv = srv;
  if (server->type == UV_TCP)
    uv_tcp_init(srv->loop, &c->h.tcp);
  else
    uv_pipe_init(srv->loop, &c->h.pipe, 0);
  c->h.handle.data = c;
  c->open_handles = 1;
  if (uv_accept(server, &c->h.stream) != 0) {
    uv_close(&c->h.handle, on_handle_closed);
    return;
  }
  uv_timer_init(srv->loop, &c->idle);
  c->idle.data = c;
  c->open_handles = 2;
  c->next = srv->conns;
  if (srv->conns)
    srv->conns->prev = c;
  srv->conns = c;
  size_t open = atomic_fetch_add(srv->open_conns, 1) + 1;

  if (server->type == UV_TCP) {
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    uv_tcp_nodelay(&c->h.tcp, 1);
    if (uv_tcp_getpeername(&c->h.tcp, (struct sockaddr *)&ss, &len) == 0 &&
        addr_from_sockaddr((struct sockaddr *)&ss, &c->peer) == 0) {
      c->peer = addr_normalize(c->peer);
      c->peer_known = true;
    }
  }
  c->last_message_ms = uv_now(srv->loop);
  atomic_store_explicit(
      &srv->accepted,
      atomic_load_explicit(&srv->accepted, memory_order_relaxed) + 1,
      memory_order_relaxed);
  if (open > srv->max_connections) {
    msgpack_packer pk;
    atomic_store_explicit(
        &srv->rejected,
        atomic_load_explicit(&srv->rejected, memory_order_relaxed) + 1,
        memory_order_relaxed);
    conn_packer(c, &pk);
    rpc_pack_error_notification(&pk, GS_CODE_UNAVAILABLE,
                                "too many connections; try again later");
    c->close_after_flush = true;
    c->rejecting = true;
    flush(c);
    return;
  }
  uv_timer_start(&c->idle, on_idle, srv->idle_timeout_ms, 0);
  start_reading(c);
}

static int add_listener(struct conn_server *srv, uv_stream_t *s)
{
  if (srv->nlisteners >=
      (int)(sizeof(srv->listeners) / sizeof(srv->listeners[0])))
    return UV_ENOBUFS;
  s->data = srv;
  srv->listeners[srv->nlisteners++] = s;
  return 0;
}

socklen_t conn_sockaddr(const struct listen_addr *la,
                        struct sockaddr_storage *ss)
{
  memset(ss, 0, sizeof(*ss));
  if (la->is_v4) {
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    in->sin_family = AF_INET;
    in->sin_addr.s_addr = htonl((uint32_t)la->addr);
    in->sin_port = htons(la->port);
    return sizeof(*in);
  }
  /* Not addr_to_sockaddr: [::1] lies in ::/96 but is an IPv6 address. */
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
  in6->sin6_family = AF_INET6;
  for (int i = 15; i >= 0; i--)
    in6->sin6_addr.s6_addr[i] = (uint8_t)(la->addr >> (8 * (15 - i)));
  in6->sin6_port = htons(la->port);
  return sizeof(*in6);
}

void conn_format_listen(const struct listen_addr *la, uint16_t port, char *buf,
                        size_t size)
{
  struct sockaddr_storage ss;
  char host[ADDR_TEXT_MAX];

  conn_sockaddr(la, &ss);
  if (ss.ss_family == AF_INET)
    inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, host,
              sizeof(host));
  else
    inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, host,
              sizeof(host));
  snprintf(buf, size, ss.ss_family == AF_INET ? "%s:%u" : "[%s]:%u", host,
           port);
}

int conn_listen_tcp(struct conn_server *srv, const struct listen_addr *la,
                    bool reuseport, uint16_t *bound_port)
{
  struct sockaddr_storage ss;
  socklen_t sslen;
  uv_tcp_t *t;
  int fd, one = 1, rc;

  t = malloc(sizeof(*t));
  if (t == NULL)
    return UV_ENOMEM;
  sslen = conn_sockaddr(la, &ss);
  /*
   * libuv of this vintage has no reuse-port flag, so the socket is made
   * here and handed over with uv_tcp_open.
   */
  fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    free(t);
    return -errno;
  }
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (reuseport)
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  if (ss.ss_family == AF_INET6)
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  if (bind(fd, (struct sockaddr *)&ss, sslen) != 0) {
    rc = -errno;
    close(fd);
    free(t);
    return rc;
  }
  if (bound_port) {
    struct sockaddr_storage got;
    socklen_t gl = sizeof(got);
    getsockname(fd, (struct sockaddr *)&got, &gl);
    *bound_port = ntohs(got.ss_family == AF_INET
                            ? ((struct sockaddr_in *)&got)->sin_port
                            : ((struct sockaddr_in6 *)&got)->sin6_port);
  }
  uv_tcp_init(srv->loop, t);
  if ((rc = uv_tcp_open(t, fd)) != 0 ||
      (rc = uv_listen((uv_stream_t *)t, 1024, on_connection)) != 0 ||
      (rc = add_listener(srv, (uv_stream_t *)t)) != 0) {
    uv_close((uv_handle_t *)t, (uv_close_cb)free);
    return rc;
  }
  return 0;
}

int conn_listen_unix(struct conn_server *srv, const char *path)
{
  uv_pipe_t *p = malloc(sizeof(*p));
  int rc;

  if (p == NULL)
    return UV_ENOMEM;
  uv_pipe_init(srv->loop, p, 0);
  /* Mode 0660 before anyone can connect: the socket's mode is its ACL. */
  if ((rc = uv_pipe_bind(p, path)) != 0 ||
      (rc = chmod(path, 0660) != 0 ? -errno : 0) != 0 ||
      (rc = uv_listen((uv_stream_t *)p, 128, on_connection)) != 0 ||
      (rc = add_listener(srv, (uv_stream_t *)p)) != 0) {
    uv_close((uv_handle_t *)p, (uv_close_cb)free);
    return rc;
  }
  return 0;
}

void conn_server_stop(struct conn_server *srv)
{
  if (srv->stopping)
    return;
  /* Requests read in this iteration and still queued are in flight:
   * answer them before the connections are marked to close. */
  handle_input(srv);
  srv->stopping = true;
  for (int i = 0; i < srv->nlisteners; i++)
    uv_close((uv_handle_t *)srv->listeners[i], (uv_close_cb)free);
  srv->nlisteners = 0;
  /* Finish what is owed, then close; idle ones close now. */
  for (struct conn *c = srv->conns, *next; c; c = next) {
    next = c->next;
    stop_reading(c);
    c->close_after_flush = true;
    if (!c->writing && !c->deferred)
      flush(c);
  }
}

void conn_server_close_all(struct conn_server *srv)
{
  while (srv->conns)
    conn_close(srv->conns);
}
