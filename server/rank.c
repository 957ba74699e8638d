/*
 * rank: routing decisions. See rank.h.
 *
 * Distances use unit vectors precomputed per data center (dcmap) and the
 * chord-to-arc formula 2R*asin(c/2), which is exact for the sphere and well
 * conditioned for both near and antipodal points. Selection is a partial
 * selection sort over at most 254 candidates for at most 16 places: this
 * runs once per distinct location at compile time, never per request.
 */
#include "rank.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "geosteer/geosteer.h"

#define EARTH_RADIUS_KM 6371.0088 /* IUGG mean radius */

double rank_distance_km(const struct dc *dc, double lat, double lon)
{
  double la = lat * (M_PI / 180.0), lo = lon * (M_PI / 180.0);
  double dx = cos(la) * cos(lo) - dc->ux;
  double dy = cos(la) * sin(lo) - dc->uy;
  double dz = sin(la) - dc->uz;
  double chord = sqrt(dx * dx + dy * dy + dz * dz);
  if (chord > 2.0)
    chord = 2.0;
  return 2.0 * EARTH_RADIUS_KM * asin(chord / 2.0);
}

static void set_coarse(struct coarse_loc *c, const struct geo_loc *loc)
{
  memcpy(c->continent, loc->continent, 2);
  memcpy(c->country, loc->country, 2);
  memcpy(c->subdivision, loc->subdivision, 3);
  if (loc->has_coords) {
    c->has_cell = 1;
    c->cell_lat = (int8_t)floor(loc->lat);
    c->cell_lon = (int16_t)floor(loc->lon);
  }
}

static void add_list(struct answer *a, const struct dc_list *l, int limit)
{
  for (uint8_t i = 0; i < l->n && a->n < limit; i++)
    a->dc[a->n++] = l->dc[i];
}

/* Ranks every DC by effective distance from loc, ties by file order. */
static int rank_all(const struct dcmap *m, const struct geo_loc *loc,
                    struct rank_step *steps)
{
  int n = (int)m->ndcs;

  for (int i = 0; i < n; i++) {
    steps[i].dc = (uint8_t)i;
    steps[i].km = rank_distance_km(&m->dcs[i], loc->lat, loc->lon);
    steps[i].effective = steps[i].km * m->dcs[i].factor;
  }
  /* Insertion sort: stable, so equal distances keep file order. */
  for (int i = 1; i < n; i++) {
    struct rank_step s = steps[i];
    int j = i - 1;
    while (j >= 0 && steps[j].effective > s.effective) {
      steps[j + 1] = steps[j];
      j--;
    }
    steps[j + 1] = s;
  }
  return n;
}

static bool in_answer(const struct answer *a, uint8_t dc)
{
  for (uint8_t i = 0; i < a->n; i++)
    if (a->dc[i] == dc)
      return true;
  return false;
}

/* Appends the nearest DCs not yet in a, up to limit. */
static void complete_nearest(const struct dcmap *m, const struct geo_loc *loc,
                             struct answer *a)
{
  double best_eff[DCMAP_MAX_DCS];
  uint8_t order[DCMAP_MAX_DCS];
  int n = 0;

  /* Only the best (limit - a->n) are needed: partial selection. */
  for (size_t i = 0; i < m->ndcs; i++) {
    if (in_answer(a, (uint8_t)i))
      continue;
    double eff =
        rank_distance_km(&m->dcs[i], loc->lat, loc->lon) * m->dcs[i].factor;
    int j = n;
    while (j > 0 && best_eff[j - 1] > eff) {
      if (j < DCMAP_MAX_LIMIT) {
        best_eff[j] = best_eff[j - 1];
        order[j] = order[j - 1];
      }
      j--;
    }
    if (j < DCMAP_MAX_LIMIT) {
      best_eff[j] = eff;
      order[j] = (uint8_t)i;
      if (n < DCMAP_MAX_LIMIT)
        n++;
    }
  }
  for (int i = 0; i < n && a->n < m->limit; i++)
    a->dc[a->n++] = order[i];
}

static const struct dc_list *find_override(const struct dcmap *m,
                                           const struct geo_loc *loc,
                                           struct answer *a, char *rule,
                                           size_t rule_size)
{
  const struct dc_list *l;
  char code[8];

  if (loc->city &&
      (l = dcmap_override(m, OVERRIDE_CITY, NULL, loc->city)) != NULL) {
    a->reason = GS_REASON_CITY;
    snprintf(rule, rule_size, "city %u", loc->city);
    return l;
  }
  if (loc->country[0] && loc->subdivision[0]) {
    snprintf(code, sizeof(code), "%s-%s", loc->country, loc->subdivision);
    if ((l = dcmap_override(m, OVERRIDE_SUBDIVISION, code, 0)) != NULL) {
      a->reason = GS_REASON_SUBDIVISION;
      snprintf(rule, rule_size, "subdivision %s", code);
      return l;
    }
  }
  if (loc->country[0] &&
      (l = dcmap_override(m, OVERRIDE_COUNTRY, loc->country, 0)) != NULL) {
    a->reason = GS_REASON_COUNTRY;
    snprintf(rule, rule_size, "country %s", loc->country);
    return l;
  }
  if (loc->continent[0] &&
      (l = dcmap_override(m, OVERRIDE_CONTINENT, loc->continent, 0)) != NULL) {
    a->reason = GS_REASON_CONTINENT;
    snprintf(rule, rule_size, "continent %s", loc->continent);
    return l;
  }
  return NULL;
}

void rank_answer(const struct dcmap *m, const struct net_rule *net,
                 const struct geo_loc *loc, struct answer *out,
                 struct rank_trace *trace)
{
  const struct dc_list *l = NULL;
  char rule[96] = "";
  bool coords = loc && loc->has_coords;

  memset(out, 0, sizeof(*out));
  if (net) {
    out->reason = GS_REASON_NET;
    l = &net->list;
    snprintf(rule, sizeof(rule), "net %s", net->text);
  } else if (loc) {
    l = find_override(m, loc, out, rule, sizeof(rule));
    if (l == NULL && coords) {
      out->reason = GS_REASON_NEAREST;
      snprintf(rule, sizeof(rule), "nearest");
    }
  }
  if (l == NULL && !coords) {
    out->reason = GS_REASON_UNKNOWN;
    l = &m->dflt;
    snprintf(rule, sizeof(rule), "%s",
             loc ? "no coordinates: default" : "not in database: default");
  }
  if (l)
    add_list(out, l, m->limit);
  if (coords && out->n < m->limit && out->reason != GS_REASON_UNKNOWN)
    complete_nearest(m, loc, out);
  /* Net answers reveal nothing; unknown answers know nothing. */
  if (loc && out->reason != GS_REASON_NET && out->reason != GS_REASON_UNKNOWN)
    set_coarse(&out->loc, loc);

  if (trace) {
    memcpy(trace->rule, rule, sizeof(rule));
    if (coords) {
      trace->nsteps = rank_all(m, loc, trace->steps);
    } else {
      trace->nsteps = 0;
    }
  }
}

const struct net_rule *rank_match_net(const struct dcmap *m, addr128 a)
{
  const struct net_rule *best = NULL;

  /* Explain-time only; the table folds nets in at compile time. */
  for (size_t i = 0; i < m->nnets; i++) {
    const struct net_rule *r = &m->nets[i];
    if (((a ^ r->net) & addr_mask(r->plen)) == 0 &&
        (best == NULL || r->plen > best->plen))
      best = r;
  }
  return best;
}

int rank_direct(const struct dcmap *m, struct geo *g, addr128 a,
                struct answer *out, struct geo_loc *loc, bool *found,
                struct rank_trace *trace)
{
  struct geo_loc l;
  bool f;
  int plen, rc;

  a = addr_normalize(a);
  rc = geo_lookup(g, a, &l, &f, &plen);
  if (rc != 0)
    return rc;
  rank_answer(m, rank_match_net(m, a), f ? &l : NULL, out, trace);
  if (loc)
    *loc = l;
  if (found)
    *found = f;
  return 0;
}
