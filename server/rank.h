/*
 * rank: the routing decision for one location, shared by the table compiler
 * and the direct (reference) path.
 *
 * Precedence: nets (chosen by the caller, most specific prefix) > city >
 * subdivision > country > continent > nearest by great-circle distance with
 * bias > the map's default order when there are no coordinates. An override
 * shorter than the map's limit is completed by the nearest remaining data
 * centers when the location has coordinates. Ties go to the data center
 * listed first in the map.
 *
 * The answer also carries the coarse location the provider share may use
 * (continent, country, subdivision, whole-degree cell), and nothing finer.
 */
#ifndef GS_RANK_H
#define GS_RANK_H

#include <stdbool.h>
#include <stdint.h>

#include "dcmap.h"
#include "geo.h"

/* The location an answer may reveal; zero bytes mean "absent". */
struct coarse_loc {
  char continent[2];   /* not NUL-terminated */
  char country[2];     /* not NUL-terminated */
  char subdivision[3]; /* not NUL-terminated, zero-padded */
  uint8_t has_cell;    /* 1 when cell_lat/cell_lon are set */
  int8_t cell_lat;     /* floor(latitude), -90..90 */
  int16_t cell_lon;    /* floor(longitude), -180..180 */
};

/*
 * One routing answer. Compared and hashed as bytes, so it must be built
 * from a zeroed struct (answer_init).
 */
struct answer {
  uint8_t reason;              /* gs_reason */
  uint8_t n;                   /* data centers in dc[] */
  uint8_t dc[DCMAP_MAX_LIMIT]; /* indexes into dcmap.dcs, best first */
  struct coarse_loc loc;       /* all zero for net and unknown answers */
};

/* One data center of an explanation, in ranked order. */
struct rank_step {
  uint8_t dc;
  double km;        /* great-circle distance; 0 without coordinates */
  double effective; /* km after bias */
};

/* The decision path, for `explain`. */
struct rank_trace {
  char rule[96]; /* "country CN", "net 10.0.0.0/8", "nearest", ... */
  int nsteps;
  struct rank_step steps[DCMAP_MAX_DCS]; /* every DC, ranked */
};

/* Great-circle distance in km from (lat, lon) to dc. */
double rank_distance_km(const struct dc *dc, double lat, double lon);

/*
 * Computes the answer for an address with location loc (NULL: not in the
 * database) that matched the map net rule net (NULL: none). trace, when
 * not NULL, receives the decision path. Pure: same inputs, same bytes.
 */
void rank_answer(const struct dcmap *m, const struct net_rule *net,
                 const struct geo_loc *loc, struct answer *out,
                 struct rank_trace *trace);

/*
 * The direct, per-request computation the table is compiled from and
 * checked against: normalise a, look it up in g (MMDB_lookup_sockaddr),
 * match the map's nets, rank. Fills *loc and *found (may be NULL) and the
 * optional trace. Returns 0 or a negative code on a database error.
 */
int rank_direct(const struct dcmap *m, struct geo *g, addr128 a,
                struct answer *out, struct geo_loc *loc, bool *found,
                struct rank_trace *trace);

/* Most specific net rule containing a (engine space), or NULL. */
const struct net_rule *rank_match_net(const struct dcmap *m, addr128 a);

#endif
