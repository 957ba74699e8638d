/*
 * conn: MessagePack-RPC connections on a libuv loop, shared by the route
 * listeners (worker loops) and the admin listeners (control loop).
 *
 * Each connection has a fixed input buffer of max_message bytes. After
 * every read (on listeners with a prefetch hook, after all the reads of a
 * loop iteration) the scanner (scan.c) finds complete messages; each is
 * decoded and handed to the server's dispatch function, which packs its
 * reply into the connection's output buffer, so replies leave in request
 * order and a pipelined batch goes out in one write, made once the loop
 * iteration's input is handled. A message that is too large, too deep or
 * malformed gets an error reply (when its msgid is known) and the
 * connection is closed once that reply is flushed.
 *
 * Limits: the idle timer is reset only by a complete message; past
 * max_connections a new connection gets an UNAVAILABLE error and is closed;
 * a connection whose unsent replies exceed max_pending_bytes is not read
 * until they drain below half of it. libuv handles are freed only in their
 * close callbacks; buffers live until the write callback.
 */
#ifndef GS_CONN_H
#define GS_CONN_H

#include <msgpack.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "addr.h"
#include "config.h"
#include "rpc.h"

#define CONN_DEFERRED 1      /* dispatch result: the reply comes later */
#define CONN_BATCH 32        /* messages of one connection read ahead */
#define CONN_PREFETCH_MAX 64 /* messages of one prefetch batch, in all */

struct conn;

/*
 * Handles one request or notification. Packs the reply (for requests)
 * into pk and returns 0, or returns CONN_DEFERRED and later calls
 * conn_deferred_done(). Returning a negative value closes the connection
 * after the output is flushed.
 */
typedef int (*conn_dispatch_fn)(struct conn *c, const struct rpc_request *req,
                                msgpack_packer *pk);

struct conn_server {
  uv_loop_t *loop;
  size_t max_message;
  size_t max_pending_bytes;
  uint64_t idle_timeout_ms;
  size_t max_connections;
  _Atomic size_t *open_conns; /* shared by every listener of the process */
  conn_dispatch_fn dispatch;
  /*
   * Optional read-ahead. prefetch is called before c's messages are
   * handled, with the sizes of its first complete ones (at most
   * CONN_BATCH, in order from c->in; n may be 0); it may only warm caches
   * and note what it read. Calls form batches of at most CONN_PREFETCH_MAX
   * messages in all: first starts one (what earlier calls noted is
   * forgotten), prefetch_done ends it, and then the connections are
   * handled in the order of the calls. With a prefetch hook, the input a
   * loop iteration reads is handled after all its reads, so one batch
   * spans the connections that sent something.
   */
  void (*prefetch)(struct conn *c, const uint32_t *sizes, size_t n, bool first);
  void (*prefetch_done)(struct conn_server *srv);
  /*
   * Timing, for listeners that set timed: before each message is decoded,
   * msg_start_ns is set to the time its handling starts. A dispatch that
   * reads the clock when it is done may leave that reading in clock_ns
   * and set clock_valid; the next message of the same read then starts at
   * that time instead of reading the clock again.
   */
  bool timed, clock_valid;
  uint64_t msg_start_ns, clock_ns;
  void *ctx;          /* for dispatch */
  const char *kind;   /* "route", "admin": for logs */
  msgpack_zone zone;  /* decoding; cleared after every message */
  struct conn *conns; /* open connections, for shutdown */
  /* Connections with replies to write once this loop iteration's reads
   * are handled (see queue_flush in conn.c), newest first. */
  struct conn *flush_head;
  /* Connections with input to handle in this iteration's check (see
   * on_read in conn.c), in the order they were read. Their replies are
   * then written newest first, as before this queue. */
  struct conn *input_head, *input_tail;
  uv_check_t flusher;
  /*
   * Busy polling, when poll_ns > 0 (set after init): once a loop iteration
   * has read something, the loop polls without sleeping until poll_ns have
   * passed with nothing read (see on_poll_idle in conn.c).
   */
  uv_idle_t poller;
  uint64_t poll_ns;
  uint64_t poll_since_ns; /* start of the quiet iterations; 0: none yet */
  bool poll_read;         /* something was read since the poller last looked */
  uv_stream_t *listeners[CONFIG_MAX_LISTEN + 2];
  int nlisteners;
  bool stopping;
  /* counters, single writer (this loop's thread) */
  _Atomic uint64_t accepted, rejected, protocol_errors;
};

struct conn {
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } h;
  uv_timer_t idle;
  uv_write_t wreq;
  uv_shutdown_t sreq; /* rejected connections: half-close, then drain */
  struct conn_server *srv;
  struct conn *prev, *next;
  struct conn *flush_next; /* in srv's flush queue when flush_queued */
  struct conn *input_next; /* in srv's input queue when input_queued */
  addr128 peer;            /* engine space, normalised; 0 for unix sockets */
  bool peer_known;         /* false for unix sockets */
  bool reading, writing, closing, deferred, close_after_flush;
  bool flush_queued, input_queued;
  bool prefetched; /* sizes[0..nsizes) went to prefetch in this batch */
  uint8_t nsizes;
  uint32_t sizes[CONN_BATCH]; /* of the first messages in `in` */
  bool authed;                /* admin over TCP: auth succeeded */
  bool rejecting;             /* over max_connections: say why, then close */
  int auth_failures;
  int open_handles; /* freed when this reaches 0 */
  int refs; /* holders besides the loop: deferred replies, srv's queues */
  uint64_t last_message_ms;
  char *in;
  size_t in_len;
  struct wbuf out;    /* replies not yet handed to the kernel */
  struct wbuf flight; /* bytes of the write in progress */
};

/*
 * Initialises srv (zone included) with cfg's limits; max_message 0 takes
 * cfg's. Returns 0 or GS_ERR_NOMEM.
 */
int conn_server_init(struct conn_server *srv, uv_loop_t *loop,
                     const struct config *cfg, size_t max_message,
                     _Atomic size_t *open_conns, conn_dispatch_fn dispatch,
                     void *ctx, const char *kind);
/* Frees what init allocated. srv's check handle belongs to the loop: it
 * is closed with the loop's other handles (uv_walk), before the loop is
 * closed and this is called. */
void conn_server_free(struct conn_server *srv);

/*
 * Starts listening on a TCP address. reuseport lets several loops share
 * the port (SO_REUSEPORT). Returns 0 or a libuv error code; *bound_port
 * (may be NULL) receives the port actually bound.
 */
int conn_listen_tcp(struct conn_server *srv, const struct listen_addr *la,
                    bool reuseport, uint16_t *bound_port);
/* Fills ss for a listen address; returns its length. */
socklen_t conn_sockaddr(const struct listen_addr *la,
                        struct sockaddr_storage *ss);

/* Writes "127.0.0.1:7400" or "[::1]:7400" for la with port. */
void conn_format_listen(const struct listen_addr *la, uint16_t port, char *buf,
                        size_t size);

/* Listens on a unix socket at path (created with mode 0660). */
int conn_listen_unix(struct conn_server *srv, const char *path);

/*
 * Stops accepting, lets connections flush what they owe, then closes them
 * (at the latest when conn_server_close_all is called).
 */
void conn_server_stop(struct conn_server *srv);
void conn_server_close_all(struct conn_server *srv);
/* Number of open connections of srv. */
size_t conn_server_count(const struct conn_server *srv);

/* A packer appending to c's output buffer (for deferred replies). */
void conn_packer(struct conn *c, msgpack_packer *pk);
/* Ends a deferred reply: flushes and resumes processing input. */
void conn_deferred_done(struct conn *c);
void conn_ref(struct conn *c);
void conn_unref(struct conn *c);

#endif
