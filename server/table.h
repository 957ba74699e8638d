/*
 * table: the compiled route table, the hot path of every route request.
 *
 * Built once per (map, database) pair: the City database's search tree is
 * walked, every distinct record is ranked once (rank.c), the map's nets are
 * laid over the result, and the 128-bit address space becomes a sorted list
 * of ranges, each pointing at a de-duplicated answer. Neighbouring ranges
 * with the same answer are merged.
 *
 * Storage: IPv4 (::/96) ranges are keyed by 32-bit starts; the rest by the
 * upper 64 bits of their starts, with a "fine" sub-list keyed by the lower
 * 64 bits for the rare /64 block in which a boundary falls (a long map net,
 * for instance). IPv4 has a bucket index on the top 16 bits (split further
 * where a bucket is dense), so a lookup compares one window of 16 keys;
 * IPv6 keys sit in a static B+ tree whose paths all have the same length.
 * Neither search branches on the data, so lookups overlap in the CPU.
 *
 * Invariants: a built table is immutable and self-contained (it copies what
 * it needs from the map); table_lookup() does not allocate, lock, log or
 * call libmaxminddb, and is safe from any number of threads.
 */
#ifndef GS_TABLE_H
#define GS_TABLE_H

#include <stddef.h>
#include <stdint.h>

#include "addr.h"
#include "dcmap.h"
#include "diag.h"
#include "geo.h"
#include "rank.h"

struct table;

struct table_stats {
  size_t ranges; /* v4 + v6 ranges after merging */
  size_t ranges_v4;
  size_t ranges_v6;
  size_t fine_keys; /* keys in the fine (lower 64 bit) sub-lists */
  size_t answers;   /* distinct answers */
  size_t records;   /* distinct database records ranked */
  size_t bytes;     /* memory held by the table */
  double build_seconds;
};

/*
 * Compiles the table for map m and database g. Neither is referenced after
 * the call returns. On success *out owns the table (table_free) and 0 is
 * returned; otherwise a message is appended to d and a negative code
 * returned, *out untouched.
 */
int table_build(const struct dcmap *m, struct geo *g, struct table **out,
                struct diag *d);
void table_free(struct table *t);

/*
 * Looks up the client address a (raw: IPv4-mapped, 6to4 and Teredo are
 * resolved here). Returns the answer, valid as long as t, and sets *scope to
 * the prefix length for which that answer holds, counted in IPv4 bits for
 * addresses resolved as IPv4 and IPv6 bits otherwise.
 */
const struct answer *table_lookup(const struct table *t, addr128 a,
                                  uint8_t *scope);

/* Addresses table_prefetch() takes at once; more are ignored. */
#define TABLE_PREFETCH_MAX 64

/*
 * Warms the cache for table_lookup() of each of a[0..n): the loads of one
 * level of the search are issued for every address before any of the
 * next, so the cache misses of a batch of lookups overlap instead of each
 * lookup waiting for its own. IPv4 addresses only; others are skipped.
 * For a single one only the first level is issued, without waiting for
 * it: the caller's work until the lookup overlaps that miss. Changes
 * nothing but the cache.
 */
void table_prefetch(const struct table *t, const addr128 *a, size_t n);

/* Answer by id (0..answers-1), for listings. */
const struct answer *table_answer(const struct table *t, size_t id);

void table_get_stats(const struct table *t, struct table_stats *out);

/* The map's DC table as copied into t (ids, endpoints, coordinates). */
const struct dc *table_dc(const struct table *t, size_t index);
size_t table_ndcs(const struct table *t);

#endif
