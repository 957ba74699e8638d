/*
 * dcmap: loading and validating the data-center map. See dcmap.h.
 *
 * The loader makes two passes over the YAML document: data centers first
 * (so that lists can name them in any order in the file), then `default`,
 * `overrides` and `nets`. Each problem is recorded and the pass goes on;
 * the map is handed out only when the diag gained nothing.
 */
#include "dcmap.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "geosteer/geosteer.h"
#include "yamldoc.h"

struct loader {
  struct yamldoc y;
  struct dcmap *m;
  size_t errors_at_start;
};

static bool failed(const struct loader *ld)
{
  return ld->y.diag->count > ld->errors_at_start || ld->y.diag->dropped;
}

static const char *const top_keys[] = {"limit",     "default", "datacenters",
                                       "overrides", "nets",    NULL};
static const char *const dc_keys[] = {"id",  "endpoint", "lat",
                                      "lon", "bias",     NULL};
static const char *const override_keys[] = {"continent", "country",
                                            "subdivision", "city", NULL};
static const char *const continents[] = {"AF", "AN", "AS", "EU",
                                         "NA", "OC", "SA", NULL};

static bool valid_id(const char *s)
{
  size_t n = strlen(s);
  if (n == 0 || n > DCMAP_ID_MAX)
    return false;
  for (; *s; s++)
    if (!(islower((unsigned char)*s) || isdigit((unsigned char)*s) ||
          *s == '-'))
      return false;
  return true;
}

static bool valid_endpoint(const char *s)
{
  size_t n = strlen(s);
  if (n == 0 || n > DCMAP_ENDPOINT_MAX)
    return false;
  for (; *s; s++)
    if ((unsigned char)*s <= ' ' || *s == 0x7f)
      return false;
  return true;
}

int dcmap_find_dc(const struct dcmap *m, const char *id)
{
  for (size_t i = 0; i < m->ndcs; i++)
    if (strcmp(m->dcs[i].id, id) == 0)
      return (int)i;
  return -1;
}

static void load_dc(struct loader *ld, yaml_node_t *n, size_t index)
{
  struct yamldoc *y = &ld->y;
  struct dc *dc = &ld->m->dcs[index];
  char what[48];
  const char *s;
  long long bias = 0;
  yaml_node_t *v;

  snprintf(what, sizeof(what), "datacenters[%zu]", index);
  if (!yamldoc_check_keys(y, n, what, dc_keys))
    if (n->type != YAML_MAPPING_NODE)
      return;

  v = yamldoc_get(y, n, "id");
  if (v == NULL) {
    yamldoc_error(y, n, "id", "missing in %s", what);
  } else if (yamldoc_string(y, v, "id", &s)) {
    if (!valid_id(s)) {
      char found[64];
      yamldoc_describe(v, found, sizeof(found));
      yamldoc_error(y, v, "id",
                    "must be 1..32 characters of a-z, 0-9 and '-', got %s",
                    found);
    } else {
      for (size_t j = 0; j < index; j++)
        if (strcmp(ld->m->dcs[j].id, s) == 0)
          yamldoc_error(y, v, "id", "data center '%s' is defined twice", s);
      strcpy(dc->id, s);
    }
  }

  v = yamldoc_get(y, n, "endpoint");
  if (v == NULL) {
    yamldoc_error(y, n, "endpoint", "missing in %s", what);
  } else if (yamldoc_string(y, v, "endpoint", &s)) {
    if (!valid_endpoint(s)) {
      yamldoc_error(y, v, "endpoint",
                    "must be 1..255 bytes without spaces or control "
                    "characters (\"host:port\")");
    } else if ((dc->endpoint = strdup(s)) == NULL) {
      yamldoc_error(y, v, "endpoint", "out of memory");
    }
  }

  v = yamldoc_get(y, n, "lat");
  if (v == NULL)
    yamldoc_error(y, n, "lat", "missing in %s", what);
  else
    yamldoc_number(y, v, "lat", -90, 90, &dc->lat);
  v = yamldoc_get(y, n, "lon");
  if (v == NULL)
    yamldoc_error(y, n, "lon", "missing in %s", what);
  else
    yamldoc_number(y, v, "lon", -180, 180, &dc->lon);
  v = yamldoc_get(y, n, "bias");
  if (v != NULL)
    yamldoc_int(y, v, "bias", -DCMAP_BIAS_MAX, DCMAP_BIAS_MAX, &bias);

  dc->bias = (int)bias;
  dc->factor = bias >= 0 ? 1.0 - (double)bias / 100.0
                         : 1.0 / (1.0 + (double)bias / 100.0);
  {
    double la = dc->lat * (M_PI / 180.0), lo = dc->lon * (M_PI / 180.0);
    dc->ux = cos(la) * cos(lo);
    dc->uy = cos(la) * sin(lo);
    dc->uz = sin(la);
  }
}

/*
 * Reads a list of DC ids into out. key names the list in messages.
 * Returns false (with messages) on any problem.
 */
static bool load_list(struct loader *ld, yaml_node_t *n, const char *key,
                      struct dc_list *out)
{
  struct yamldoc *y = &ld->y;
  yaml_node_item_t *it;
  size_t count;
  bool ok = true;
  char found[64];

  if (n->type != YAML_SEQUENCE_NODE) {
    yamldoc_describe(n, found, sizeof(found));
    yamldoc_error(y, n, key, "expected a list of data center ids, got %s",
                  found);
    return false;
  }
  count = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
  if (count == 0) {
    yamldoc_error(y, n, key, "must name at least one data center");
    return false;
  }
  if (count > DCMAP_MAX_DCS) {
    yamldoc_error(y, n, key, "names %zu data centers; at most %d", count,
                  DCMAP_MAX_DCS);
    return false;
  }
  out->dc = malloc(count);
  if (out->dc == NULL) {
    yamldoc_error(y, n, key, "out of memory");
    return false;
  }
  out->n = 0;
  for (it = n->data.sequence.items.start; it < n->data.sequence.items.top;
       it++) {
    yaml_node_t *e = yamldoc_node(y, *it);
    const char *id;
    int idx;
    if (!yamldoc_string(y, e, key, &id)) {
      ok = false;
      continue;
    }
    idx = dcmap_find_dc(ld->m, id);
    if (idx < 0) {
      yamldoc_error(y, e, key, "unknown data center '%s' (not in datacenters)",
                    id);
      ok = false;
      continue;
    }
    for (uint8_t j = 0; j < out->n; j++)
      if (out->dc[j] == idx) {
        yamldoc_error(y, e, key, "data center '%s' is listed twice", id);
        ok = false;
      }
    out->dc[out->n++] = (uint8_t)idx;
  }
  return ok;
}

static bool valid_override_code(enum override_kind kind, const char *s)
{
  size_t n = strlen(s);

  switch (kind) {
  case OVERRIDE_CONTINENT:
    for (const char *const *c = continents; *c; c++)
      if (strcmp(*c, s) == 0)
        return true;
    return false;
  case OVERRIDE_COUNTRY:
    return n == 2 && isupper((unsigned char)s[0]) &&
           isupper((unsigned char)s[1]);
  case OVERRIDE_SUBDIVISION:
    if (n < 4 || n > 6 || !isupper((unsigned char)s[0]) ||
        !isupper((unsigned char)s[1]) || s[2] != '-')
      return false;
    for (size_t i = 3; i < n; i++)
      if (!isupper((unsigned char)s[i]) && !isdigit((unsigned char)s[i]))
        return false;
    return true;
  default:
    return false;
  }
}

static const char *const code_expectations[] = {
    [OVERRIDE_CITY] = "a GeoNames city id (1..4294967295)",
    [OVERRIDE_SUBDIVISION] = "COUNTRY-SUBDIVISION iso codes like US-HI",
    [OVERRIDE_COUNTRY] = "two-letter ISO country codes like CN",
    [OVERRIDE_CONTINENT] = "continent codes AF, AN, AS, EU, NA, OC or SA",
};

const char *dcmap_override_name(enum override_kind kind)
{
  static const char *const names[] = {"city", "subdivision", "country",
                                      "continent"};
  return kind < OVERRIDE_KINDS_ ? names[kind] : "?";
}

static int cmp_override(const void *a, const void *b)
{
  const struct override *x = a, *y = b;
  if (x->city != y->city)
    return x->city < y->city ? -1 : 1;
  return strcmp(x->code, y->code);
}

static void load_overrides_kind(struct loader *ld, yaml_node_t *n,
                                enum override_kind kind)
{
  struct yamldoc *y = &ld->y;
  struct dcmap *m = ld->m;
  const char *kname = dcmap_override_name(kind);
  char key[64], found[64];
  yaml_node_pair_t *p;
  size_t count;

  if (yamldoc_is_null(n))
    return;
  if (n->type != YAML_MAPPING_NODE) {
    yamldoc_describe(n, found, sizeof(found));
    snprintf(key, sizeof(key), "overrides.%s", kname);
    yamldoc_error(y, n, key, "expected a mapping of code -> list, got %s",
                  found);
    return;
  }
  count = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
  m->overrides[kind] = calloc(count ? count : 1, sizeof(struct override));
  if (m->overrides[kind] == NULL) {
    yamldoc_error(y, n, NULL, "out of memory");
    return;
  }
  for (p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
    yaml_node_t *k = yamldoc_node(y, p->key);
    yaml_node_t *v = yamldoc_node(y, p->value);
    struct override *o = &m->overrides[kind][m->noverrides[kind]];
    const char *code =
        k->type == YAML_SCALAR_NODE ? (const char *)k->data.scalar.value : "";
    bool ok;

    snprintf(key, sizeof(key), "overrides.%s.%s", kname, code);
    if (kind == OVERRIDE_CITY) {
      long long id;
      char what[64];
      snprintf(what, sizeof(what), "overrides.%s", kname);
      ok = yamldoc_int(y, k, what, 1, UINT32_MAX, &id);
      if (ok)
        o->city = (uint32_t)id;
    } else {
      ok = k->type == YAML_SCALAR_NODE && valid_override_code(kind, code);
      if (!ok) {
        yamldoc_describe(k, found, sizeof(found));
        yamldoc_error(y, k, NULL, "key in overrides.%s: expected %s, got %s",
                      kname, code_expectations[kind], found);
      } else {
        strcpy(o->code, code);
      }
    }
    if (!load_list(ld, v, key, &o->list) || !ok) {
      free(o->list.dc);
      o->list.dc = NULL;
      continue;
    }
    for (size_t j = 0; j < m->noverrides[kind]; j++)
      if (cmp_override(&m->overrides[kind][j], o) == 0) {
        yamldoc_error(y, k, NULL, "overrides.%s: '%s' is given twice", kname,
                      code);
        break;
      }
    m->noverrides[kind]++;
  }
  qsort(m->overrides[kind], m->noverrides[kind], sizeof(struct override),
        cmp_override);
}

static void load_overrides(struct loader *ld, yaml_node_t *n)
{
  if (yamldoc_is_null(n))
    return;
  if (!yamldoc_check_keys(&ld->y, n, "overrides", override_keys) &&
      n->type != YAML_MAPPING_NODE)
    return;
  for (int k = 0; k < OVERRIDE_KINDS_; k++) {
    yaml_node_t *v = yamldoc_get(&ld->y, n, dcmap_override_name(k));
    if (v)
      load_overrides_kind(ld, v, (enum override_kind)k);
  }
}

static int cmp_net(const void *a, const void *b)
{
  const struct net_rule *x = a, *y = b;
  if (x->net != y->net)
    return x->net < y->net ? -1 : 1;
  return x->plen - y->plen;
}

static void load_nets(struct loader *ld, yaml_node_t *n)
{
  struct yamldoc *y = &ld->y;
  struct dcmap *m = ld->m;
  yaml_node_pair_t *p;
  char found[64];
  size_t count;

  if (yamldoc_is_null(n))
    return;
  if (n->type != YAML_MAPPING_NODE) {
    yamldoc_describe(n, found, sizeof(found));
    yamldoc_error(y, n, "nets", "expected a mapping of CIDR -> list, got %s",
                  found);
    return;
  }
  count = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
  m->nets = calloc(count ? count : 1, sizeof(*m->nets));
  if (m->nets == NULL) {
    yamldoc_error(y, n, NULL, "out of memory");
    return;
  }
  for (p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
    yaml_node_t *k = yamldoc_node(y, p->key);
    yaml_node_t *v = yamldoc_node(y, p->value);
    struct net_rule *r = &m->nets[m->nnets];
    const char *text =
        k->type == YAML_SCALAR_NODE ? (const char *)k->data.scalar.value : "";
    char key[ADDR_CIDR_TEXT_MAX + 16], why[128];
    bool ok = true;

    snprintf(key, sizeof(key), "nets.%s", text);
    if (addr_parse_cidr(text, &r->net, &r->plen, why, sizeof(why)) != 0) {
      yamldoc_describe(k, found, sizeof(found));
      yamldoc_error(y, k, NULL, "key in nets: expected a CIDR, got %s: %s",
                    found, why);
      ok = false;
    } else if (addr_in_alias_space(r->net, r->plen)) {
      yamldoc_error(y, k, NULL,
                    "key in nets: %s lies inside an IPv4 alias space "
                    "(::ffff:0:0/96, 2001::/32 or 2002::/16); addresses there "
                    "are routed as their embedded IPv4 address, so write the "
                    "IPv4 network instead",
                    text);
      ok = false;
    } else {
      snprintf(r->text, sizeof(r->text), "%s", text);
    }
    if (!load_list(ld, v, key, &r->list) || !ok) {
      free(r->list.dc);
      r->list.dc = NULL;
      continue;
    }
    for (size_t j = 0; j < m->nnets; j++)
      if (m->nets[j].net == r->net && m->nets[j].plen == r->plen) {
        yamldoc_error(y, k, NULL, "nets: %s is given twice (as %s)", text,
                      m->nets[j].text);
        break;
      }
    m->nnets++;
  }
  qsort(m->nets, m->nnets, sizeof(*m->nets), cmp_net);
}

void dcmap_free(struct dcmap *m)
{
  if (m == NULL)
    return;
  for (size_t i = 0; i < m->ndcs; i++)
    free(m->dcs[i].endpoint);
  free(m->dcs);
  free(m->dflt.dc);
  for (int k = 0; k < OVERRIDE_KINDS_; k++) {
    for (size_t i = 0; i < m->noverrides[k]; i++)
      free(m->overrides[k][i].list.dc);
    free(m->overrides[k]);
  }
  for (size_t i = 0; i < m->nnets; i++)
    free(m->nets[i].list.dc);
  free(m->nets);
  free(m);
}

static void load_all(struct loader *ld, yaml_node_t *root)
{
  struct yamldoc *y = &ld->y;
  struct dcmap *m = ld->m;
  yaml_node_t *v;
  char found[64];
  long long limit = DCMAP_DEFAULT_LIMIT;

  if (root == NULL || yamldoc_is_null(root)) {
    diag_add(y->diag, y->path, 0,
             "the map is empty; expected keys limit, default, datacenters");
    return;
  }
  if (!yamldoc_check_keys(y, root, NULL, top_keys) &&
      root->type != YAML_MAPPING_NODE)
    return;

  v = yamldoc_get(y, root, "limit");
  if (v)
    yamldoc_int(y, v, "limit", 1, DCMAP_MAX_LIMIT, &limit);
  m->limit = (int)limit;

  v = yamldoc_get(y, root, "datacenters");
  if (v == NULL) {
    yamldoc_error(y, root, "datacenters",
                  "missing; the map needs at least "
                  "one data center");
  } else if (v->type != YAML_SEQUENCE_NODE ||
             v->data.sequence.items.top == v->data.sequence.items.start) {
    yamldoc_describe(v, found, sizeof(found));
    yamldoc_error(y, v, "datacenters",
                  "expected a non-empty list of data centers, got %s", found);
  } else {
    size_t count =
        (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
    if (count > DCMAP_MAX_DCS) {
      yamldoc_error(y, v, "datacenters", "has %zu entries; at most %d", count,
                    DCMAP_MAX_DCS);
    } else if ((m->dcs = calloc(count, sizeof(*m->dcs))) == NULL) {
      yamldoc_error(y, v, "datacenters", "out of memory");
    } else {
      m->ndcs = count;
      for (size_t i = 0; i < count; i++)
        load_dc(ld, yamldoc_node(y, v->data.sequence.items.start[i]), i);
    }
  }
  /* Lists can only be checked against a complete set of ids. */
  if (failed(ld))
    return;

  v = yamldoc_get(y, root, "default");
  if (v == NULL)
    yamldoc_error(y, root, "default",
                  "missing; give the order for unknown locations, e.g. "
                  "default: [%s]",
                  m->dcs[0].id);
  else
    load_list(ld, v, "default", &m->dflt);

  v = yamldoc_get(y, root, "overrides");
  if (v)
    load_overrides(ld, v);
  v = yamldoc_get(y, root, "nets");
  if (v)
    load_nets(ld, v);
}

int dcmap_load(const char *path, struct dcmap **out, struct diag *d)
{
  struct loader ld;
  int rc;

  memset(&ld, 0, sizeof(ld));
  ld.errors_at_start = d->count;
  rc = yamldoc_load(&ld.y, path, d);
  if (rc != 0)
    return rc;
  ld.m = calloc(1, sizeof(*ld.m));
  if (ld.m == NULL) {
    yamldoc_free(&ld.y);
    return GS_ERR_NOMEM;
  }
  load_all(&ld, yamldoc_root(&ld.y));
  yamldoc_free(&ld.y);
  if (failed(&ld)) {
    dcmap_free(ld.m);
    return GS_ERR_INVALID;
  }
  *out = ld.m;
  return 0;
}

const struct dc_list *dcmap_override(const struct dcmap *m,
                                     enum override_kind kind, const char *code,
                                     uint32_t city)
{
  struct override key;

  memset(&key, 0, sizeof(key));
  if (code) {
    if (strlen(code) >= sizeof(key.code))
      return NULL;
    strcpy(key.code, code);
  }
  key.city = city;
  if (m->noverrides[kind] == 0)
    return NULL;
  const struct override *o =
      bsearch(&key, m->overrides[kind], m->noverrides[kind],
              sizeof(struct override), cmp_override);
  return o ? &o->list : NULL;
}
