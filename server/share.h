/*
 * share: the channel that tells the data-center provider where sessions
 * come from, at a coarse precision and nothing finer.
 *
 * The route path only appends a record to its worker's ring (single
 * producer, single consumer, fixed size: no allocation, no lock, no system
 * call). Every 20 ms the control loop drains the rings into a queue
 * bounded by share.queue_max (the oldest records go first when it is
 * full); every share.interval_ms it sends them to the provider as
 * MessagePack-RPC notifications [2, "share", [records...]] over one TCP
 * connection, or, in aggregate mode, sends per-(dc, location) counts and drops
 * buckets below share.min_count. The connection reconnects with exponential
 * backoff and jitter, capped at 30 s; a provider that does not read stops being
 * written to once 1 MiB is pending, so memory stays bounded.
 *
 * What a record can hold is decided here, by an allow-list: dc, at, the
 * location cut to the configured precision, and session. The client
 * address, the user id, coordinates and scope never enter a record.
 */
#ifndef GS_SHARE_H
#define GS_SHARE_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

#include "rank.h"

struct daemon;
struct worker;
struct share_ring;
struct snapshot;

/* Creates one ring per worker; before the workers start. 0 or negative. */
int share_init(struct daemon *d);
/* Starts the flush timer and the provider connection (control loop). */
void share_start(struct daemon *d);
void share_stop(struct daemon *d);
void share_free(struct daemon *d);

/* No index: share_dc() could not take another name. */
#define SHARE_DC_NONE 65535

/*
 * Sets snap->share_dc, the index by which records name each data center,
 * before snap is published (control loop). SHARE_DC_NONE when sharing is
 * off or, after 65535 distinct ids in one run, when no room is left.
 */
void share_name_dcs(struct daemon *d, struct snapshot *snap);

/*
 * Route path: records that the DC of index dc (share_dc) answered a
 * session from loc. session may be NULL. Never blocks; a full ring drops
 * the record and counts it.
 */
void share_offer(struct share_ring *r, uint16_t dc,
                 const struct coarse_loc *loc, const char *session,
                 size_t session_len);

/* stats and metrics */
void share_pack_stats(struct daemon *d, msgpack_packer *pk);
size_t share_prometheus(struct daemon *d, char *buf, size_t size);

#endif
