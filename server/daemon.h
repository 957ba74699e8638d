/*
 * daemon: the shared state of geosteerd's threads.
 *
 * One control loop (main thread) owns the configuration, the store, the
 * admin and metrics listeners, signals, file watches and reloads. N worker
 * loops (threads) each own their route connections and share the route
 * listening ports (SO_REUSEPORT). What workers read is published by the
 * control loop through one atomic pointer: the current snapshot.
 *
 * Lifetime of what workers read (quiescent-state reclamation): workers
 * load the snapshot and opt-out index pointers per request and never keep
 * them across callbacks. After a swap the control loop bumps the epoch and
 * wakes every worker (uv_async); a worker's wake callback records the
 * epoch it has seen. A retired object is freed once every worker has seen
 * a later epoch. No lock on the route path.
 */
#ifndef GS_DAEMON_H
#define GS_DAEMON_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include <uv.h>

#include "config.h"
#include "conn.h"
#include "dcmap.h"
#include "geo.h"
#include "geosteer/geosteer.h"
#include "geosteer/protocol.h"
#include "optout.h"
#include "share.h"
#include "table.h"

#define DRAIN_WORDS 4 /* 4 x 64 bits >= DCMAP_MAX_DCS */
#define LATENCY_BUCKETS 14

/* Counters of one worker; written by that worker only (relaxed). */
struct worker_stats {
  _Atomic uint64_t route, ping, other; /* requests by method */
  _Atomic uint64_t geo_lookups;        /* route requests that used the table */
  _Atomic uint64_t reasons[GS_REASON_COUNT_];    /* route answers by reason */
  _Atomic uint64_t errors[GS_CODE_COUNT_];       /* error replies by code */
  _Atomic uint64_t latency[LATENCY_BUCKETS + 1]; /* last: +Inf */
  _Atomic uint64_t latency_sum_ns;
};

/* Upper bounds of the latency buckets, in nanoseconds. */
extern const uint64_t latency_bounds_ns[LATENCY_BUCKETS];

/* Adds one to a single-writer counter without a locked instruction. */
#define STAT_ADD(counter, n)                                                   \
  atomic_store_explicit(                                                       \
      &(counter),                                                              \
      atomic_load_explicit(&(counter), memory_order_relaxed) + (n),            \
      memory_order_relaxed)

struct daemon;

/* Something workers may still read, freed once they cannot. */
struct retired {
  void *object;
  void (*release)(struct daemon *d, void *object);
  uint64_t before; /* freed once every worker has seen this epoch */
  struct retired *next;
};

struct snapshot {
  struct table *table;
  struct dcmap *map; /* for explain, hint and fallbacks */
  struct geo *geo;   /* for explain */
  uint64_t generation;
  time_t loaded_at;
  double build_seconds;
  _Atomic uint64_t drained[DRAIN_WORDS]; /* bit i: map->dcs[i] drained */
  _Atomic uint64_t *dc_answers;          /* [worker * ndcs + dc] */
  /*
   * Pre-encoded reply pieces, so a route reply is a few memcpy calls:
   * per DC the map entries "dc": id, "endpoint": endpoint; per reason the
   * entry "reason": name.
   */
  struct wbuf frags;
  uint32_t dc_frag[DCMAP_MAX_DCS][2];        /* offset, length */
  uint32_t reason_frag[GS_REASON_COUNT_][2]; /* offset, length */
  uint16_t share_dc[DCMAP_MAX_DCS];          /* see share_dc() */
};

/* Texts read ahead from a batch's input (see struct worker). */
struct peek_list {
  const char *text[CONN_PREFETCH_MAX];
  size_t len[CONN_PREFETCH_MAX];
  size_t n, next;
};

struct worker {
  struct daemon *d;
  int index;
  uv_loop_t loop;
  uv_thread_t thread;
  uv_async_t wake;
  uv_timer_t deadline;      /* shutdown: closes what is still open */
  struct share_ring *share; /* NULL when sharing is off */
  struct conn_server srv;
  /*
   * What route_prefetch read from the batch being handled, so that route()
   * need not work it out again: "ip" texts with their addresses and
   * "user" texts with their opt-out ids, each list in request order, each
   * text pointing into its connection's input; and the addresses the
   * batch will look up, for route_prefetch_done.
   */
  struct peek_list peek_ip, peek_user;
  addr128 peek_addr[CONN_PREFETCH_MAX];
  struct optout_uid peek_uid[CONN_PREFETCH_MAX];
  addr128 lookups[CONN_PREFETCH_MAX];
  size_t nlookups;
  _Atomic uint64_t seen_epoch;
  struct worker_stats stats;
};

struct reload_waiter {
  void (*done)(void *arg, int rc, const char *error);
  void *arg;
  struct reload_waiter *next;
};

struct daemon {
  struct config *cfg;
  uv_loop_t *loop; /* control */
  struct store *store;
  _Atomic(struct snapshot *) current;
  uint64_t generation;    /* of the current snapshot */
  _Atomic uint64_t epoch; /* bumped by every swap workers must see */
  struct retired *retired;
  uv_timer_t retire_timer;

  /* opt-outs */
  uint8_t optout_key[16];
  _Atomic(struct optout_index *) optouts; /* NULL while the store is down */
  _Atomic bool store_healthy;
  char store_problem[256];
  uv_timer_t store_timer; /* recovery retries, then the daily purge */

  struct worker *workers;
  int nworkers;
  _Atomic size_t open_conns;  /* route connections, all workers */
  _Atomic size_t admin_conns; /* admin connections: their own budget, so a
                                 route flood cannot lock operators out */
  _Atomic bool stopping;
  _Atomic bool force_close;

  /* reload */
  bool building, build_again;
  struct reload_waiter *waiters, *next_waiters;
  uv_work_t build_req;
  struct snapshot *built;
  char build_error[1024];
  uint64_t reloads_ok, reloads_failed;
  double last_build_seconds;
  uv_fs_event_t watch_map, watch_db;
  bool watching;
  uv_timer_t quiet_timer;

  /* drained data-center ids, the source of every snapshot's bitmap */
  char (*drained_ids)[DCMAP_ID_MAX + 1];
  size_t ndrained;

  /* totals of freed snapshots' per-DC answers, by id */
  struct dc_total {
    char id[DCMAP_ID_MAX + 1];
    uint64_t count;
  } * dc_totals;
  size_t ndc_totals;

  /* admin */
  struct conn_server admin, admin_tcp;
  bool has_admin_tcp;
  char admin_token[256];
  size_t admin_token_len;
  uint16_t route_port; /* bound port of the first route listener */
  struct share *share; /* NULL when sharing is off */
};

/* reload.c */
void daemon_retire(struct daemon *d, void *object,
                   void (*release)(struct daemon *, void *));
/* Folds a snapshot's counters into the totals and frees it. */
void daemon_release_snapshot(struct daemon *d, void *object);
int reload_initial(struct daemon *d, struct diag *diag);
void reload_request(struct daemon *d, void (*done)(void *, int, const char *),
                    void *arg);
int reload_watch(struct daemon *d);
void reload_shutdown_handles(struct daemon *d);
void reload_shutdown(struct daemon *d);
void snapshot_set_drained(struct snapshot *s, size_t dc, bool on);
bool snapshot_is_drained(const struct snapshot *s, size_t dc);
int daemon_drain(struct daemon *d, const char *dc, bool on, char *why,
                 size_t why_size);

/* route.c: dispatch for route listeners (ctx: struct worker) */
int route_dispatch(struct conn *c, const struct rpc_request *req,
                   msgpack_packer *pk);
/* route.c: conn_server.prefetch for route listeners */
void route_prefetch(struct conn *c, const uint32_t *sizes, size_t n,
                    bool first);
void route_prefetch_done(struct conn_server *srv);

/* admin.c: dispatch for admin listeners (ctx: struct daemon) */
int admin_dispatch(struct conn *c, const struct rpc_request *req,
                   msgpack_packer *pk);

/* privacy.c: the opt-out store, index and admin methods */
void privacy_start(struct daemon *d);
void privacy_stop(struct daemon *d);
/* Handles optout.* methods; returns false when method is not one. */
bool privacy_dispatch(struct daemon *d, const struct rpc_request *req,
                      msgpack_packer *pk);

/* stats.c */
void stats_pack(struct daemon *d, msgpack_packer *pk);
char *stats_prometheus(struct daemon *d, size_t *len);
int metrics_listen(struct daemon *d, const struct listen_addr *la,
                   uint16_t *bound_port);
void metrics_stop(void);
void stats_fold_snapshot(struct daemon *d, struct snapshot *s);

#endif
