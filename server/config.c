/*
 * config: loading and validating the server configuration. See config.h.
 *
 * The file is described by tables: one array of `struct key` per mapping
 * (top level, listen, geo, store, limits), each entry naming the key, its
 * reader, its default and where the value goes in struct config. One walker
 * checks a mapping's keys against its table, reports required keys that are
 * missing, and calls each reader, with a NULL node for a key left out so
 * that the reader stores the default. Adding a key is one table line (and a
 * reader when its value is of a new kind). Checks that span keys run after
 * the walk. Every problem goes to the diag and the walk goes on; the config
 * is handed out only when the diag gained nothing.
 */
#include "config.h"

#include <assert.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "geosteer/geosteer.h"
#include "yamldoc.h"

/* A unix socket path must fit sun_path with its NUL. */
#define UNIX_PATH_MAX (sizeof(((struct sockaddr_un *)0)->sun_path) - 1)
#define KEY_NAME_MAX 64 /* dotted names such as "listen.route[15]" */
#define SECTION_KEYS_MAX 16

struct loader {
  struct yamldoc y;
  struct config *c;
  size_t errors_at_start;
  int dropped_at_start;
  bool nomem;
  size_t route_index[CONFIG_MAX_LISTEN]; /* c->route[i] is route[index] */
};

static bool failed(const struct loader *ld)
{
  return ld->y.diag->count > ld->errors_at_start ||
         ld->y.diag->dropped > ld->dropped_at_start || ld->nomem;
}

static void nomem(struct loader *ld, const yaml_node_t *n, const char *name)
{
  ld->nomem = true;
  yamldoc_error(&ld->y, n, name, "out of memory");
}

struct key;

/*
 * Reads the value of key k (dotted name `name`) from v into ld->c. v is
 * NULL when the key is left out, or is null where null means "off"; the
 * reader then stores the default. at is the node to blame in messages
 * about a default (v itself, or the enclosing mapping).
 */
typedef void (*read_fn)(struct loader *ld, yaml_node_t *v, yaml_node_t *at,
                        const struct key *k, const char *name);

struct key {
  const char *name;             /* NULL ends a table */
  read_fn read;                 /* NULL for a section */
  const struct key *section;    /* a nested mapping's keys */
  size_t offset;                /* the field in struct config */
  size_t aux_offset;            /* its has_ flag or element count */
  size_t size;                  /* integers: sizeof the field */
  long long min, max, dflt;     /* integers */
  const char *dflt_text;        /* paths: default, resolved like a value */
  const char *const *dflt_list; /* CIDR lists: default entries */
  bool required;
  bool nullable;    /* null is allowed and means the default ("off") */
  bool unix_socket; /* a path that is bound as a unix socket */
  const char *hint; /* required keys: follows "missing; " */
};

static void *field(struct loader *ld, size_t offset)
{
  return (char *)ld->c + offset;
}

/* --- paths --- */

/*
 * value resolved against the folder of config_path: absolute values and
 * values of a config without a folder part stay as written. Returns a
 * malloc'd string or NULL (out of memory).
 */
static char *resolve(const char *config_path, const char *value)
{
  const char *slash = strrchr(config_path, '/');
  size_t dirlen, len;
  char *out;

  if (value[0] == '/' || slash == NULL)
    return strdup(value);
  dirlen = (size_t)(slash - config_path);
  len = strlen(value);
  out = malloc(dirlen + 1 + len + 1);
  if (out == NULL)
    return NULL;
  memcpy(out, config_path, dirlen);
  out[dirlen] = '/';
  memcpy(out + dirlen + 1, value, len + 1);
  return out;
}

static void read_path(struct loader *ld, yaml_node_t *v, yaml_node_t *at,
                      const struct key *k, const char *name)
{
  char **out = field(ld, k->offset);
  const char *s = k->dflt_text;
  char *path;

  if (v != NULL) {
    if (!yamldoc_string(&ld->y, v, name, &s))
      return;
    if (s[0] == '\0') {
      yamldoc_error(&ld->y, v, name, "must be a non-empty path");
      return;
    }
  }
  if (s == NULL)
    return; /* off: the field stays NULL */
  path = resolve(ld->c->path, s);
  if (path == NULL) {
    nomem(ld, at, name);
    return;
  }
  if (k->unix_socket && strlen(path) > UNIX_PATH_MAX) {
    yamldoc_error(&ld->y, at, name,
                  "the socket path \"%s\" is %zu bytes; a unix socket path "
                  "must be at most %zu (use a shorter or absolute path)",
                  path, strlen(path), (size_t)UNIX_PATH_MAX);
    free(path);
    return;
  }
  *out = path;
}

/* --- integers --- */

static void store_uint(void *out, size_t size, unsigned long long x)
{
  if (size == sizeof(uint32_t)) {
    uint32_t v = (uint32_t)x;
    memcpy(out, &v, sizeof(v));
  } else {
    uint64_t v = x;
    assert(size == sizeof(uint64_t));
    memcpy(out, &v, sizeof(v));
  }
}

static void read_int(struct loader *ld, yaml_node_t *v, yaml_node_t *at,
                     const struct key *k, const char *name)
{
  long long x = k->dflt;

  (void)at;
  assert(k->min >= 0 && k->dflt >= k->min && k->dflt <= k->max);
  if (v != NULL && !yamldoc_int(&ld->y, v, name, k->min, k->max, &x))
    return;
  store_uint(field(ld, k->offset), k->size, (unsigned long long)x);
}

/* --- listen addresses --- */

static bool same_listener(const struct listen_addr *a,
                          const struct listen_addr *b)
{
  /* Port 0 asks for a fresh ephemeral port each time: never a clash. */
  return a->port != 0 && a->port == b->port && a->is_v4 == b->is_v4 &&
         a->addr == b->addr;
}

static int listen_error(char *why, size_t why_size, const char *msg)
{
  snprintf(why, why_size, "%s", msg);
  return GS_ERR_ADDR;
}

static bool all_digits(const char *s)
{
  if (*s == '\0')
    return false;
  for (; *s; s++)
    if (*s < '0' || *s > '9')
      return false;
  return true;
}

int config_parse_listen(const char *text, struct listen_addr *out, char *why,
                        size_t why_size)
{
  struct listen_addr la;
  char host[sizeof(la.text)];
  const char *port_text;
  size_t hostlen;
  bool v4;
  unsigned long port;

  memset(&la, 0, sizeof(la));
  if (text[0] == '\0')
    return listen_error(why, why_size,
                        "empty; expected an address and port like "
                        "127.0.0.1:7400 or [::1]:7400");
  if (strlen(text) >= sizeof(la.text))
    return listen_error(why, why_size, "too long for an address and port");
  if (all_digits(text))
    return listen_error(why, why_size,
                        "missing the address; write 127.0.0.1:PORT, "
                        "[::1]:PORT, or 0.0.0.0:PORT for every IPv4 address");

  if (text[0] == '[') {
    const char *close = strchr(text, ']');
    if (close == NULL)
      return listen_error(why, why_size, "missing ']' after the IPv6 address");
    hostlen = (size_t)(close - text - 1);
    memcpy(host, text + 1, hostlen);
    host[hostlen] = '\0';
    if (addr_parse(host, &la.addr, &v4) != 0)
      return listen_error(why, why_size,
                          "must be a literal address like 127.0.0.1:7400 "
                          "or [::1]:7400");
    if (v4)
      return listen_error(why, why_size,
                          "brackets are for IPv6 addresses; write IPv4 "
                          "without them, like 127.0.0.1:7400");
    if (close[1] == '\0')
      return listen_error(why, why_size, "missing port, like [::1]:7400");
    if (close[1] != ':')
      return listen_error(why, why_size, "expected ':' and a port after ']'");
    port_text = close + 2;
  } else {
    const char *colon = strrchr(text, ':');
    if (colon == NULL) {
      if (addr_parse(text, &la.addr, &v4) == 0 && v4)
        return listen_error(why, why_size, "missing port, like 127.0.0.1:7400");
      return listen_error(why, why_size,
                          "must be a literal address like 127.0.0.1:7400 "
                          "or [::1]:7400");
    }
    if (strchr(text, ':') != colon)
      return listen_error(why, why_size,
                          "an IPv6 address must be in brackets, like "
                          "[::1]:7400");
    hostlen = (size_t)(colon - text);
    if (hostlen == 0)
      return listen_error(why, why_size,
                          "missing the address; write 127.0.0.1:PORT, "
                          "[::1]:PORT, or 0.0.0.0:PORT for every IPv4 "
                          "address");
    memcpy(host, text, hostlen);
    host[hostlen] = '\0';
    if (addr_parse(host, &la.addr, &v4) != 0 || !v4)
      return listen_error(why, why_size,
                          "must be a literal address like 127.0.0.1:7400 "
                          "or [::1]:7400");
    port_text = colon + 1;
  }

  if (*port_text == '\0')
    return listen_error(why, why_size, "missing port after ':'");
  if (!all_digits(port_text) || strlen(port_text) > 5 ||
      (port = strtoul(port_text, NULL, 10)) > 65535) {
    snprintf(why, why_size, "port must be 0..65535, got \"%s\"", port_text);
    return GS_ERR_ADDR;
  }
  la.is_v4 = v4;
  la.port = (uint16_t)port;
  snprintf(la.text, sizeof(la.text), "%s", text);
  *out = la;
  return 0;
}

/* Parses the listen address in node v; false (with a message) if bad. */
static bool parse_listen_node(struct loader *ld, yaml_node_t *v,
                              const char *name, struct listen_addr *out)
{
  char found[64], why[192];
  const char *s;

  if (v->type != YAML_SCALAR_NODE) {
    yamldoc_describe(v, found, sizeof(found));
    yamldoc_error(&ld->y, v, name,
                  "expected a \"host:port\" string, got %s (quote IPv6 "
                  "addresses: \"[::1]:7400\")",
                  found);
    return false;
  }
  if (!yamldoc_string(&ld->y, v, name, &s))
    return false;
  if (config_parse_listen(s, out, why, sizeof(why)) != 0) {
    yamldoc_describe(v, found, sizeof(found));
    yamldoc_error(&ld->y, v, name, "expected \"host:port\", got %s: %s", found,
                  why);
    return false;
  }
  return true;
}

/* One optional listener: the address at offset, its has_ flag at aux. */
static void read_listen(struct loader *ld, yaml_node_t *v, yaml_node_t *at,
                        const struct key *k, const char *name)
{
  bool *has = field(ld, k->aux_offset);

  (void)at;
  *has = v != NULL && parse_listen_node(ld, v, name, field(ld, k->offset));
}

static void read_route(struct loader *ld, yaml_node_t *v, yaml_node_t *at,
                       const struct key *k, const char *name)
{
  struct config *c = ld->c;
  char found[64], elem[KEY_NAME_MAX];
  size_t count;

  (void)at;
  (void)k;
  assert(v != NULL); /* required */
  if (v->type != YAML_SEQUENCE_NODE) {
    yamldoc_describe(v, found, sizeof(found));
    yamldoc_error(&ld->y, v, name,
                  "expected a list of \"host:port\" addresses, got %s", found);
    return;
  }
  count = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
  if (count == 0 || count > CONFIG_MAX_LISTEN) {
    yamldoc_error(&ld->y, v, name, "must list 1..%d addresses, got %zu",
                  CONFIG_MAX_LISTEN, count);
    return;
  }
  for (size_t i = 0; i < count; i++) {
    yaml_node_t *e = yamldoc_node(&ld->y, v->data.sequence.items.start[i]);
    struct listen_addr *la = &c->route[c->nroute];
    bool dup = false;

    snprintf(elem, sizeof(elem), "%s[%zu]", name, i);
    if (!parse_listen_node(ld, e, elem, la))
      continue;
    for (size_t j = 0; j < c->nroute && !dup; j++)
      if (same_listener(&c->route[j], la)) {
        yamldoc_error(&ld->y, e, elem,
                      "%s is the same address and port as %s[%zu] (%s)",
                      la->text, name, ld->route_index[j], c->route[j].text);
        dup = true;
      }
    if (!dup)
      ld->route_index[c->nroute++] = i;
  }
}

/* --- CIDR lists --- */

static const char *const default_trusted[] = {"127.0.0.0/8", "::1/128", NULL};

/*
 * A list of CIDRs: a struct cidr array at offset, its length at aux. An
 * empty list is valid (nobody); a left-out one gets k->dflt_list.
 */
static void read_cidrs(struct loader *ld, yaml_node_t *v, yaml_node_t *at,
                       const struct key *k, const char *name)
{
  struct cidr **out = field(ld, k->offset);
  size_t *nout = field(ld, k->aux_offset);
  char found[64], why[128], elem[KEY_NAME_MAX];
  struct cidr *list;
  size_t count = 0, n = 0;

  if (v == NULL) {
    while (k->dflt_list[count])
      count++;
  } else if (v->type != YAML_SEQUENCE_NODE) {
    yamldoc_describe(v, found, sizeof(found));
    yamldoc_error(&ld->y, v, name,
                  "expected a list of CIDRs like \"10.0.0.0/8\" ([] for "
                  "none), got %s",
                  found);
    return;
  } else {
    count = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
  }
  list = calloc(count ? count : 1, sizeof(*list));
  if (list == NULL) {
    nomem(ld, at, name);
    return;
  }
  for (size_t i = 0; i < count; i++) {
    yaml_node_t *e =
        v ? yamldoc_node(&ld->y, v->data.sequence.items.start[i]) : NULL;
    struct cidr *r = &list[n];
    const char *text;
    bool ok = true;

    snprintf(elem, sizeof(elem), "%s[%zu]", name, i);
    if (e == NULL)
      text = k->dflt_list[i];
    else if (!yamldoc_string(&ld->y, e, elem, &text))
      continue;
    if (addr_parse_cidr(text, &r->net, &r->plen, why, sizeof(why)) != 0) {
      yamldoc_describe(e, found, sizeof(found));
      yamldoc_error(&ld->y, e, elem, "expected a CIDR, got %s: %s", found, why);
      continue;
    }
    if (addr_in_alias_space(r->net, r->plen)) {
      yamldoc_error(&ld->y, e, elem,
                    "%s lies inside an IPv4 alias space (::ffff:0:0/96, "
                    "2001::/32 or 2002::/16); peers there are seen as their "
                    "embedded IPv4 address, so write the IPv4 network instead",
                    text);
      continue;
    }
    for (size_t j = 0; j < n && ok; j++)
      if (list[j].net == r->net && list[j].plen == r->plen) {
        yamldoc_error(&ld->y, e, elem, "%s is given twice", text);
        ok = false;
      }
    if (ok)
      n++;
  }
  *out = list;
  *nout = n;
}

/* --- the tables --- */

#define FIELD(f) offsetof(struct config, f)
#define PATH(n, f, def)                                                        \
  {                                                                            \
    .name = n, .read = read_path, .offset = FIELD(f), .dflt_text = def         \
  }
#define INT(n, f, lo, hi, def)                                                 \
  {                                                                            \
    .name = n, .read = read_int, .offset = FIELD(f),                           \
    .size = sizeof(((struct config *)0)->f), .min = lo, .max = hi, .dflt = def \
  }
#define LISTEN(n, f, has)                                                      \
  {                                                                            \
    .name = n, .read = read_listen, .offset = FIELD(f),                        \
    .aux_offset = FIELD(has), .nullable = true                                 \
  }
#define SECTION(n, keys)                                                       \
  {                                                                            \
    .name = n, .section = keys                                                 \
  }

static const struct key listen_keys[] = {
    {.name = "route",
     .read = read_route,
     .required = true,
     .hint = "give the addresses to answer routing requests on, e.g. "
             "route: [\"127.0.0.1:7400\", \"[::1]:7400\"]"},
    {.name = "admin",
     .read = read_path,
     .offset = FIELD(admin_path),
     .dflt_text = "geosteerd.sock",
     .unix_socket = true},
    LISTEN("metrics", metrics, has_metrics),
    LISTEN("admin_tcp", admin_tcp, has_admin_tcp),
    {NULL},
};

static const struct key geo_keys[] = {
    {.name = "database",
     .read = read_path,
     .offset = FIELD(geo_database),
     .required = true,
     .hint = "give the MaxMind City database, e.g. "
             "database: GeoLite2-City.mmdb"},
    {.name = "map",
     .read = read_path,
     .offset = FIELD(geo_map),
     .required = true,
     .hint = "give the data-center map, e.g. map: dcmap.yaml"},
    {NULL},
};

static const struct key store_keys[] = {
    PATH("path", store_path, "geosteer.db"),
    /* Default computed after loading: beside the database (see load_all). */
    PATH("key_file", store_key_file, NULL),
    INT("audit_retention_days", audit_retention_days, 1, 36500, 400),
    {NULL},
};

/*
 * share.precision: continent | country | subdivision | cell. Anything finer
 * than the whole-degree cell is refused by name, so that a config asking
 * for it fails loudly instead of silently sharing less.
 */
static void read_precision(struct loader *ld, yaml_node_t *v, yaml_node_t *at,
                           const struct key *k, const char *name)
{
  static const char *const names[] = {"continent", "country", "subdivision",
                                      "cell", NULL};
  static const char *const finer[] = {"city",    "coordinates", "location",
                                      "latlon",  "point",       "exact",
                                      "address", "ip",          NULL};
  const char *s;
  char found[64];

  (void)at;
  (void)k;
  ld->c->share_precision = SHARE_COUNTRY;
  if (v == NULL)
    return;
  if (v->type == YAML_SCALAR_NODE && yamldoc_string(&ld->y, v, name, &s)) {
    for (int i = 0; names[i]; i++)
      if (strcmp(s, names[i]) == 0) {
        ld->c->share_precision = (uint32_t)i;
        return;
      }
    for (int i = 0; finer[i]; i++)
      if (strcmp(s, finer[i]) == 0) {
        yamldoc_error(&ld->y, v, name,
                      "\"%s\" is finer than a whole-degree cell; the provider "
                      "may receive at most continent, country, subdivision "
                      "or cell",
                      s);
        return;
      }
  }
  yamldoc_describe(v, found, sizeof(found));
  yamldoc_error(&ld->y, v, name,
                "must be continent, country, subdivision or cell, got %s",
                found);
}

static void read_share_mode(struct loader *ld, yaml_node_t *v, yaml_node_t *at,
                            const struct key *k, const char *name)
{
  const char *s;
  char found[64];

  (void)at;
  (void)k;
  if (v == NULL)
    return; /* events */
  if (v->type == YAML_SCALAR_NODE && yamldoc_string(&ld->y, v, name, &s) &&
      (strcmp(s, "events") == 0 || strcmp(s, "aggregate") == 0)) {
    ld->c->share_aggregate = strcmp(s, "aggregate") == 0;
    return;
  }
  yamldoc_describe(v, found, sizeof(found));
  yamldoc_error(&ld->y, v, name, "must be events or aggregate, got %s", found);
}

static const struct key share_keys[] = {
    {.name = "provider",
     .read = read_listen,
     .offset = offsetof(struct config, share_provider),
     .aux_offset = offsetof(struct config, has_share),
     .nullable = true},
    {.name = "precision", .read = read_precision},
    {.name = "mode", .read = read_share_mode},
    {.name = "min_count",
     .read = read_int,
     .offset = offsetof(struct config, share_min_count),
     .size = sizeof(uint32_t),
     .min = 1,
     .max = 1000000,
     .dflt = 10},
    {.name = "interval_ms",
     .read = read_int,
     .offset = offsetof(struct config, share_interval_ms),
     .size = sizeof(uint32_t),
     .min = 10,
     .max = 3600000,
     .dflt = 1000},
    {.name = "queue_max",
     .read = read_int,
     .offset = offsetof(struct config, share_queue_max),
     .size = sizeof(uint32_t),
     .min = 16,
     .max = 10000000,
     .dflt = 100000},
    {NULL},
};

/* anonymous: geo | nogeo: requests without a user are geolocated or not. */
static void read_anonymous(struct loader *ld, yaml_node_t *v, yaml_node_t *at,
                           const struct key *k, const char *name)
{
  const char *s;
  char found[64];

  (void)at;
  (void)k;
  if (v == NULL)
    return; /* default: geo */
  if (v->type == YAML_SCALAR_NODE && yamldoc_string(&ld->y, v, name, &s) &&
      (strcmp(s, "geo") == 0 || strcmp(s, "nogeo") == 0)) {
    ld->c->anonymous_nogeo = strcmp(s, "nogeo") == 0;
    return;
  }
  yamldoc_describe(v, found, sizeof(found));
  yamldoc_error(&ld->y, v, name, "must be geo or nogeo, got %s", found);
}

static const struct key limits_keys[] = {
    INT("max_message", max_message, 64, 16777216, 4096),
    INT("max_connections", max_connections, 1, 1000000, 10000),
    INT("idle_timeout_ms", idle_timeout_ms, 100, 86400000, 30000),
    INT("max_pending_bytes", max_pending_bytes, 4096, 1073741824, 1048576),
    {NULL},
};

static const struct key top_keys[] = {
    SECTION("listen", listen_keys),
    {.name = "admin_token_file",
     .read = read_path,
     .offset = FIELD(admin_token_file),
     .nullable = true},
    SECTION("geo", geo_keys),
    SECTION("store", store_keys),
    {.name = "trusted_proxies",
     .read = read_cidrs,
     .offset = FIELD(trusted),
     .aux_offset = FIELD(ntrusted),
     .dflt_list = default_trusted},
    INT("workers", workers, 1, CONFIG_MAX_WORKERS, 1),
    INT("busy_poll_us", busy_poll_us, 0, 1000, 50),
    {.name = "anonymous", .read = read_anonymous},
    {.name = "share", .section = share_keys},
    SECTION("limits", limits_keys),
    {NULL},
};

/*
 * Reads the mapping n (NULL when the section is left out or null) against
 * keys. prefix is its dotted name (NULL at the top level); at is the node
 * to blame for missing keys.
 */
static void walk(struct loader *ld, yaml_node_t *n, yaml_node_t *at,
                 const char *prefix, const struct key *keys)
{
  struct yamldoc *y = &ld->y;
  const char *allowed[SECTION_KEYS_MAX + 1];
  size_t nkeys = 0;

  for (const struct key *k = keys; k->name; k++) {
    assert(nkeys < SECTION_KEYS_MAX);
    allowed[nkeys++] = k->name;
  }
  allowed[nkeys] = NULL;
  if (n != NULL && !yamldoc_check_keys(y, n, prefix, allowed) &&
      n->type != YAML_MAPPING_NODE)
    return;

  for (const struct key *k = keys; k->name; k++) {
    char name[KEY_NAME_MAX];
    yaml_node_t *v = yamldoc_get(y, n, k->name);

    if (prefix)
      snprintf(name, sizeof(name), "%s.%s", prefix, k->name);
    else
      snprintf(name, sizeof(name), "%s", k->name);
    if (k->section) {
      if (v == NULL || yamldoc_is_null(v))
        walk(ld, NULL, v ? v : at, name, k->section);
      else
        walk(ld, v, v, name, k->section);
    } else if (v == NULL && k->required) {
      yamldoc_error(y, at, name, "missing; %s", k->hint);
    } else if (v == NULL || (k->nullable && yamldoc_is_null(v))) {
      k->read(ld, NULL, v ? v : at, k, name);
    } else {
      k->read(ld, v, v, k, name);
    }
  }
}

/* Value node of a dotted two-level key ("listen", "metrics"), or NULL. */
static yaml_node_t *node_at(struct loader *ld, yaml_node_t *root,
                            const char *section, const char *key)
{
  return yamldoc_get(&ld->y, yamldoc_get(&ld->y, root, section), key);
}

/*
 * Checks between keys. Only values that loaded are looked at (a listener
 * that failed to parse is not in c), so nothing is reported twice.
 */
static void check_across(struct loader *ld, yaml_node_t *root)
{
  struct config *c = ld->c;
  yaml_node_t *token = yamldoc_get(&ld->y, root, "admin_token_file");
  struct {
    const char *key; /* in listen */
    const struct listen_addr *la;
  } tcp[2] = {{"metrics", c->has_metrics ? &c->metrics : NULL},
              {"admin_tcp", c->has_admin_tcp ? &c->admin_tcp : NULL}};
  char name[KEY_NAME_MAX];

  if (c->has_share && c->share_provider.port == 0)
    yamldoc_error(&ld->y, node_at(ld, root, "share", "provider"),
                  "share.provider",
                  "port must be 1..65535: the provider's collector listens on "
                  "a fixed port");

  if (c->has_admin_tcp && (token == NULL || yamldoc_is_null(token)))
    yamldoc_error(&ld->y, node_at(ld, root, "listen", "admin_tcp"),
                  "listen.admin_tcp",
                  "needs admin_token_file; set admin_token_file to a file "
                  "holding the admin token, or remove listen.admin_tcp");

  for (size_t i = 0; i < 2; i++) {
    yaml_node_t *v;
    if (tcp[i].la == NULL)
      continue;
    v = node_at(ld, root, "listen", tcp[i].key);
    snprintf(name, sizeof(name), "listen.%s", tcp[i].key);
    for (size_t j = 0; j < c->nroute; j++)
      if (same_listener(tcp[i].la, &c->route[j]))
        yamldoc_error(&ld->y, v, name,
                      "%s is the same address and port as listen.route[%zu] "
                      "(%s)",
                      tcp[i].la->text, ld->route_index[j], c->route[j].text);
    if (i == 1 && tcp[0].la && same_listener(tcp[0].la, tcp[1].la))
      yamldoc_error(&ld->y, v, name,
                    "%s is the same address and port as listen.metrics (%s)",
                    tcp[1].la->text, tcp[0].la->text);
  }
}

static void load_all(struct loader *ld, yaml_node_t *root)
{
  struct yamldoc *y = &ld->y;

  if (root == NULL || yamldoc_is_null(root)) {
    diag_add(y->diag, y->path, 0,
             "the config is empty; it needs at least listen.route, "
             "geo.database and geo.map");
    return;
  }
  walk(ld, root, root, NULL, top_keys);
  if (root->type == YAML_MAPPING_NODE)
    check_across(ld, root);
  /* The key lives beside the database unless placed elsewhere. */
  if (ld->c->store_key_file == NULL && ld->c->store_path != NULL) {
    ld->c->store_key_file = resolve(ld->c->store_path, "geosteer.key");
    if (ld->c->store_key_file == NULL)
      nomem(ld, root, "store.key_file");
  }
}

void config_free(struct config *c)
{
  if (c == NULL)
    return;
  free(c->path);
  free(c->admin_path);
  free(c->admin_token_file);
  free(c->geo_database);
  free(c->geo_map);
  free(c->store_path);
  free(c->store_key_file);
  free(c->trusted);
  free(c);
}

int config_load(const char *path, struct config **out, struct diag *d)
{
  struct loader ld;
  int rc;

  memset(&ld, 0, sizeof(ld));
  ld.errors_at_start = d->count;
  ld.dropped_at_start = d->dropped;
  rc = yamldoc_load(&ld.y, path, d);
  if (rc != 0)
    return rc;
  ld.c = calloc(1, sizeof(*ld.c));
  if (ld.c == NULL || (ld.c->path = strdup(path)) == NULL) {
    free(ld.c);
    yamldoc_free(&ld.y);
    return GS_ERR_NOMEM;
  }
  load_all(&ld, yamldoc_root(&ld.y));
  yamldoc_free(&ld.y);
  if (failed(&ld)) {
    rc = ld.nomem ? GS_ERR_NOMEM : GS_ERR_INVALID;
    config_free(ld.c);
    return rc;
  }
  *out = ld.c;
  return 0;
}

bool config_is_trusted(const struct config *c, addr128 a)
{
  for (size_t i = 0; i < c->ntrusted; i++)
    if (((a ^ c->trusted[i].net) & addr_mask(c->trusted[i].plen)) == 0)
      return true;
  return false;
}
