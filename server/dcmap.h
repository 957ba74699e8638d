/*
 * dcmap: the ops-edited data-center map (dcmap.yaml), validated and loaded.
 *
 * dcmap_load() reads the whole file, reports every problem it finds with
 * file:line, key, expected and found, and returns a map only when there
 * were none: a bad map never half-loads. A loaded map is immutable; the
 * route table built from it refers to data centers by index (uint8_t), in
 * file order, which is also the tie-break order of the ranking.
 */
#ifndef GS_DCMAP_H
#define GS_DCMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "addr.h"
#include "diag.h"

#define DCMAP_MAX_DCS 254      /* ids fit uint8_t with room for "none" */
#define DCMAP_MAX_LIMIT 16     /* most DCs in one answer */
#define DCMAP_DEFAULT_LIMIT 3  /* when `limit` is left out */
#define DCMAP_ID_MAX 32        /* [a-z0-9-]{1,32} */
#define DCMAP_ENDPOINT_MAX 255 /* bytes */
#define DCMAP_BIAS_MAX 99      /* bias is -99..99 */
#define DCMAP_NO_DC 255        /* "no data center" in uint8_t slots */

struct dc {
  char id[DCMAP_ID_MAX + 1];
  char *endpoint;
  double lat, lon;   /* degrees */
  int bias;          /* -99..99; positive attracts traffic */
  double factor;     /* effective distance = km * factor (from bias) */
  double ux, uy, uz; /* unit vector of (lat, lon), for distances */
};

/* An ordered list of distinct data centers (indexes into dcmap.dcs). */
struct dc_list {
  uint8_t n;
  uint8_t *dc;
};

enum override_kind {
  OVERRIDE_CITY,
  OVERRIDE_SUBDIVISION,
  OVERRIDE_COUNTRY,
  OVERRIDE_CONTINENT,
  OVERRIDE_KINDS_
};

struct override {
  char code[8];  /* "OC", "CN", "US-HI"; empty for city */
  uint32_t city; /* geoname_id for OVERRIDE_CITY */
  struct dc_list list;
};

struct net_rule {
  addr128 net; /* in the engine's space: IPv4 at ::/96 */
  int plen;    /* 0..128 in that space */
  struct dc_list list;
  char text[ADDR_CIDR_TEXT_MAX]; /* as written in the map */
};

struct dcmap {
  int limit; /* 1..16 */
  struct dc_list dflt;
  struct dc *dcs;
  size_t ndcs;
  struct override *overrides[OVERRIDE_KINDS_]; /* sorted by code/city */
  size_t noverrides[OVERRIDE_KINDS_];
  struct net_rule *nets; /* sorted by (net, plen) */
  size_t nnets;
};

/*
 * Loads and validates path. On success *out owns a new map (free with
 * dcmap_free) and 0 is returned; otherwise every problem is in d, *out is
 * untouched and the result is GS_ERR_IO, GS_ERR_SYNTAX, GS_ERR_INVALID or
 * GS_ERR_NOMEM.
 */
int dcmap_load(const char *path, struct dcmap **out, struct diag *d);
void dcmap_free(struct dcmap *m);

/* Index of the DC named id, or -1. */
int dcmap_find_dc(const struct dcmap *m, const char *id);

/*
 * The override list for a code ("US-HI") or city (code NULL), or NULL.
 * Borrowed from m.
 */
const struct dc_list *dcmap_override(const struct dcmap *m,
                                     enum override_kind kind, const char *code,
                                     uint32_t city);

/* Name of an override kind as written in the map ("subdivision"). */
const char *dcmap_override_name(enum override_kind kind);

#endif
