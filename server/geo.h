/*
 * geo: the MaxMind City database, read two ways.
 *
 * geo_walk() visits the whole IPv6 search tree once, in address order, and
 * hands every leaf (a network and its location) to a callback; each
 * distinct data record is decoded once and shared by index. This is how the
 * route table is compiled. geo_lookup() is the direct per-address path
 * (MMDB_lookup_sockaddr + MMDB_get_value); it serves `explain` and is the
 * reference the table is checked against. Both decode records with the same
 * function, so both see identical locations.
 *
 * Only these fields are read: continent code, country iso_code, first
 * subdivision iso_code, city geoname_id, latitude, longitude.
 */
#ifndef GS_GEO_H
#define GS_GEO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "addr.h"
#include "diag.h"

struct geo_loc {
  char continent[3];   /* "EU"; "" when absent */
  char country[3];     /* ISO 3166-1 "DE"; "" when absent */
  char subdivision[4]; /* ISO 3166-2 part after the dash, "HE"; "" absent */
  uint32_t city;       /* GeoNames id; 0 when absent */
  bool has_coords;
  double lat, lon; /* degrees; meaningful only with has_coords */
};

struct geo;

/*
 * Opens a City database in mmap mode and checks its metadata (format 2.x,
 * a City database type, an IPv6 tree). On failure appends a message naming
 * path and returns GS_ERR_IO, GS_ERR_DB or GS_ERR_DB_TYPE; *out untouched.
 */
int geo_open(const char *path, struct geo **out, struct diag *d);
void geo_close(struct geo *g);

/* database_type from the metadata, e.g. "GeoLite2-City". */
const char *geo_type(const struct geo *g);
/* build_epoch from the metadata (seconds since 1970). */
time_t geo_build_epoch(const struct geo *g);

/*
 * Direct lookup of an address already passed through addr_normalize().
 * Returns 0 and sets *found (false: no data for it), *loc and *plen (the
 * database network's prefix length in the engine's 128-bit space), or a
 * negative code on a database error.
 */
int geo_lookup(struct geo *g, addr128 a, struct geo_loc *loc, bool *found,
               int *plen);

/*
 * Leaf callback for geo_walk: the network start/plen (engine space) has
 * location loc, or no data when loc is NULL. loc_index numbers the distinct
 * data records 0, 1, 2... in order of first appearance (-1 with NULL), so
 * a caller can cache per record. loc is valid during the walk only. Leaves
 * arrive in ascending order and tile the whole space; the IPv4 alias
 * subtrees (::ffff:0:0/96, 2001::/32, 2002::/16) come as no-data leaves.
 * Returning non-zero stops the walk with that value.
 */
typedef int (*geo_leaf_fn)(void *ctx, addr128 start, int plen,
                           const struct geo_loc *loc, int32_t loc_index);

/*
 * Walks the whole tree. Returns 0 (and the number of distinct records in
 * *nrecords when not NULL), the callback's non-zero value, or a negative
 * code on a database error.
 */
int geo_walk(struct geo *g, geo_leaf_fn fn, void *ctx, size_t *nrecords);

#endif
