/*
 * Tests for config: the example config loads with its exact values; a
 * minimal config gets every documented default; paths resolve against the
 * config's folder; every validation error names file:line, the key, the
 * expectation and what was found; a bad config never half-loads; trusted
 * proxies and listen addresses parse as documented.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <sys/stat.h>

#include "config.h"
#include "dcmap.h"
#include "geosteer/geosteer.h"
#include "helpers.h"

#define ROUTE "listen:\n  route: [\"127.0.0.1:7400\"]\n"
#define GEO "geo: { database: city.mmdb, map: dcmap.yaml }\n"
#define MINIMAL ROUTE GEO /* lines 1..3 */

#define V4(a, b, c, d)                                                         \
  ((addr128)(((uint32_t)(a) << 24) | ((uint32_t)(b) << 16) |                   \
             ((uint32_t)(c) << 8) | (uint32_t)(d)))

/* A fresh folder under TMPDIR; malloc'd path. */
static char *make_temp_dir(void)
{
  const char *tmp = getenv("TMPDIR");
  char *dir = malloc(4096);
  cr_assert_not_null(dir);
  snprintf(dir, 4096, "%s/geosteer-config-XXXXXX", tmp ? tmp : "/tmp");
  cr_assert_not_null(mkdtemp(dir));
  return dir;
}

/* Writes text to dir/name; returns the malloc'd path. */
static char *write_file(const char *dir, const char *name, const char *text)
{
  char *path = malloc(4096);
  cr_assert_not_null(path);
  snprintf(path, 4096, "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  cr_assert_not_null(f, "cannot create %s", path);
  fputs(text, f);
  fclose(f);
  return path;
}

/* "%s/%s" into a malloc'd string. */
static char *join(const char *dir, const char *rel)
{
  char *s = malloc(strlen(dir) + strlen(rel) + 2);
  cr_assert_not_null(s);
  sprintf(s, "%s/%s", dir, rel);
  return s;
}

static void assert_str(const char *got, const char *want, const char *what)
{
  cr_assert_not_null(got, "%s: NULL, expected \"%s\"", what, want);
  cr_assert_str_eq(got, want, "%s: got \"%s\", expected \"%s\"", what, got,
                   want);
}

/* Loads text from a temp file; returns the code and fills d. */
static int load_text(const char *text, struct diag *d, char **path_out)
{
  struct config *c = (struct config *)0x1;
  char *path = write_temp(text, ".yaml");
  cr_assert_not_null(path);
  int rc = config_load(path, &c, d);
  if (rc == 0)
    config_free(c);
  else
    cr_assert(c == (struct config *)0x1, "out-param touched on failure");
  unlink(path);
  if (path_out)
    *path_out = path;
  else
    free(path);
  return rc;
}

static void assert_default_limits(const struct config *c)
{
  cr_assert_eq(c->workers, 1);
  cr_assert_eq(c->busy_poll_us, 50);
  cr_assert_eq(c->max_message, 4096);
  cr_assert_eq(c->max_connections, 10000);
  cr_assert_eq(c->idle_timeout_ms, 30000);
  cr_assert_eq(c->max_pending_bytes, 1048576);
}

static void assert_default_trusted(const struct config *c)
{
  cr_assert_eq(c->ntrusted, 2);
  cr_assert(c->trusted[0].net == V4(127, 0, 0, 0));
  cr_assert_eq(c->trusted[0].plen, 96 + 8);
  cr_assert(c->trusted[1].net == (addr128)1); /* ::1 */
  cr_assert_eq(c->trusted[1].plen, 128);
}

Test(config, example_config_loads)
{
  struct diag d = DIAG_INIT;
  struct config *c = NULL;
  char *path = strdup(src_path("examples/geosteer.yaml"));
  char *dir = strdup(src_path("examples"));
  char *want;

  cr_assert_eq(config_load(path, &c, &d), 0, "%s", d.count ? d.msgs[0] : "");
  cr_assert_eq(d.count, 0);
  assert_str(c->path, path, "path");

  cr_assert_eq(c->nroute, 2);
  assert_str(c->route[0].text, "127.0.0.1:7400", "route[0]");
  cr_assert(c->route[0].is_v4);
  cr_assert(c->route[0].addr == V4(127, 0, 0, 1));
  cr_assert_eq(c->route[0].port, 7400);
  assert_str(c->route[1].text, "[::1]:7400", "route[1]");
  cr_assert_not(c->route[1].is_v4);
  cr_assert(c->route[1].addr == (addr128)1);
  cr_assert_eq(c->route[1].port, 7400);

  want = join(dir, "../var/admin.sock");
  assert_str(c->admin_path, want, "admin");
  free(want);
  cr_assert(c->has_metrics);
  assert_str(c->metrics.text, "127.0.0.1:9400", "metrics");
  cr_assert(c->metrics.addr == V4(127, 0, 0, 1));
  cr_assert_eq(c->metrics.port, 9400);
  cr_assert_not(c->has_admin_tcp);
  cr_assert_null(c->admin_token_file);

  want = join(dir, "../data/GeoLite2-City.mmdb");
  assert_str(c->geo_database, want, "geo.database");
  free(want);
  want = join(dir, "dcmap.yaml");
  assert_str(c->geo_map, want, "geo.map");
  free(want);
  want = join(dir, "../var/geosteer.db");
  assert_str(c->store_path, want, "store.path");
  free(want);

  assert_default_trusted(c);
  assert_default_limits(c);

  /* The map it names is the example map, and it loads. */
  struct dcmap *m = NULL;
  cr_assert_eq(dcmap_load(c->geo_map, &m, &d), 0);
  dcmap_free(m);

  config_free(c);
  diag_free(&d);
  free(path);
  free(dir);
}

Test(config, minimal_config_gets_every_default)
{
  struct diag d = DIAG_INIT;
  struct config *c = NULL;
  char *dir = make_temp_dir();
  char *path = write_file(dir, "geosteer.yaml", MINIMAL);
  char *want;

  cr_assert_eq(config_load(path, &c, &d), 0, "%s", d.count ? d.msgs[0] : "");
  cr_assert_eq(c->nroute, 1);
  want = join(dir, "geosteerd.sock");
  assert_str(c->admin_path, want, "admin");
  free(want);
  want = join(dir, "geosteer.db");
  assert_str(c->store_path, want, "store.path");
  free(want);
  cr_assert_not(c->has_metrics);
  cr_assert_not(c->has_admin_tcp);
  cr_assert_null(c->admin_token_file);
  assert_default_trusted(c);
  assert_default_limits(c);

  config_free(c);
  unlink(path);
  rmdir(dir);
  free(path);
  free(dir);
}

Test(config, empty_sections_and_nulls_mean_defaults)
{
  struct diag d = DIAG_INIT;
  struct config *c = NULL;
  char *dir = make_temp_dir();
  char *path = write_file(dir, "geosteer.yaml",
                          "listen:\n"
                          "  route: [\"127.0.0.1:7400\"]\n"
                          "  metrics: null\n"
                          "  admin_tcp: ~\n"
                          "admin_token_file:\n" GEO "store:\n"
                          "limits: {}\n");

  cr_assert_eq(config_load(path, &c, &d), 0, "%s", d.count ? d.msgs[0] : "");
  cr_assert_not(c->has_metrics);
  cr_assert_not(c->has_admin_tcp);
  cr_assert_null(c->admin_token_file);
  cr_assert_not_null(c->store_path);
  assert_default_trusted(c);
  assert_default_limits(c);
  config_free(c);
  unlink(path);
  rmdir(dir);
  free(path);
  free(dir);
}

Test(config, every_key_set)
{
  struct diag d = DIAG_INIT;
  struct config *c = NULL;
  char *dir = make_temp_dir();
  char *path =
      write_file(dir, "geosteer.yaml",
                 "listen:\n"
                 "  route: [\"0.0.0.0:0\", \"[::]:0\", \"10.1.2.3:65535\"]\n"
                 "  admin: /run/geosteer/admin.sock\n"
                 "  metrics: \"[::1]:9400\"\n"
                 "  admin_tcp: \"127.0.0.1:7401\"\n"
                 "admin_token_file: token\n" GEO "store: { path: s.db }\n"
                 "trusted_proxies: [\"10.0.0.0/8\", \"2001:db8::/32\"]\n"
                 "workers: 64\n"
                 "busy_poll_us: 0\n"
                 "limits: { max_message: 16777216, max_connections: 1,\n"
                 "          idle_timeout_ms: 86400000,\n"
                 "          max_pending_bytes: 4096 }\n");
  char *want;

  cr_assert_eq(config_load(path, &c, &d), 0, "%s", d.count ? d.msgs[0] : "");
  cr_assert_eq(c->nroute, 3);
  cr_assert(c->route[0].is_v4 && c->route[0].addr == 0);
  cr_assert(!c->route[1].is_v4 && c->route[1].addr == 0);
  cr_assert_eq(c->route[2].port, 65535);
  assert_str(c->admin_path, "/run/geosteer/admin.sock", "admin");
  cr_assert(c->has_metrics && !c->metrics.is_v4 && c->metrics.port == 9400);
  cr_assert(c->has_admin_tcp && c->admin_tcp.port == 7401);
  want = join(dir, "token");
  assert_str(c->admin_token_file, want, "admin_token_file");
  free(want);
  cr_assert_eq(c->ntrusted, 2);
  cr_assert(c->trusted[0].net == V4(10, 0, 0, 0) && c->trusted[0].plen == 104);
  cr_assert(c->trusted[1].net == addr_make(0x20010db800000000ull, 0));
  cr_assert_eq(c->trusted[1].plen, 32);
  cr_assert_eq(c->workers, 64);
  cr_assert_eq(c->busy_poll_us, 0);
  cr_assert_eq(c->max_message, 16777216);
  cr_assert_eq(c->max_connections, 1);
  cr_assert_eq(c->idle_timeout_ms, 86400000);
  cr_assert_eq(c->max_pending_bytes, 4096);
  config_free(c);
  unlink(path);
  rmdir(dir);
  free(path);
  free(dir);
}

Test(config, paths_resolve_against_the_config_folder)
{
  struct diag d = DIAG_INIT;
  struct config *c = NULL;
  char *dir = make_temp_dir();
  char *sub = join(dir, "etc");
  cr_assert_eq(mkdir(sub, 0700), 0);
  char *path = write_file(sub, "geosteer.yaml",
                          "listen:\n"
                          "  route: [\"127.0.0.1:0\"]\n"
                          "  admin: ../run/admin.sock\n"
                          "admin_token_file: secret/token\n"
                          "geo:\n"
                          "  database: /var/lib/geo/City.mmdb\n"
                          "  map: maps/dcmap.yaml\n"
                          "store: { path: /srv/geosteer.db }\n");
  char *want;

  cr_assert_eq(config_load(path, &c, &d), 0, "%s", d.count ? d.msgs[0] : "");
  want = join(sub, "../run/admin.sock");
  assert_str(c->admin_path, want, "admin");
  free(want);
  want = join(sub, "secret/token");
  assert_str(c->admin_token_file, want, "admin_token_file");
  free(want);
  want = join(sub, "maps/dcmap.yaml");
  assert_str(c->geo_map, want, "geo.map");
  free(want);
  assert_str(c->geo_database, "/var/lib/geo/City.mmdb", "geo.database");
  assert_str(c->store_path, "/srv/geosteer.db", "store.path");
  config_free(c);

  /* A config named without a folder: paths stay as written. */
  cr_assert_eq(chdir(sub), 0);
  cr_assert_eq(config_load("geosteer.yaml", &c, &d), 0);
  assert_str(c->admin_path, "../run/admin.sock", "admin");
  assert_str(c->geo_map, "maps/dcmap.yaml", "geo.map");
  assert_str(c->geo_database, "/var/lib/geo/City.mmdb", "geo.database");
  config_free(c);

  unlink(path);
  rmdir(sub);
  rmdir(dir);
  free(path);
  free(sub);
  free(dir);
  diag_free(&d);
}

/*
 * Criterion runs each parameter in a fresh process image, so cases hold
 * their text inline (pointers into this process would not survive).
 */
struct bad_case {
  char name[64];
  char text[640];
  char message[320]; /* expected after "PATH:" */
};

#define LISTEN_ONE(addr) "listen:\n  route: [\"" addr "\"]\n" GEO
#define ROUTE_ERR(addr, why)                                                   \
  "2: key 'listen.route[0]': expected \"host:port\", got \"" addr "\": " why
#define LITERAL "must be a literal address like 127.0.0.1:7400 or [::1]:7400"
#define R4(p)                                                                  \
  "\"127.0.0.1:" p "1\", \"127.0.0.1:" p "2\", \"127.0.0.1:" p "3\", "         \
  "\"127.0.0.1:" p "4\", "
#define X10 "xxxxxxxxxx"

static const struct bad_case bad_cases[] = {
    /* unknown keys, at every level */
    {"unknown top key", MINIMAL "colour: blue\n",
     "4: unknown key 'colour' (expected one of: listen, admin_token_file, "
     "geo, store, trusted_proxies, workers, busy_poll_us, anonymous, share, "
     "limits)"},
    {"unknown listen key", "listen:\n  rout: [\"127.0.0.1:7400\"]\n" GEO,
     "2: unknown key 'rout' in listen (expected one of: route, admin, "
     "metrics, admin_tcp)"},
    {"unknown geo key", ROUTE "geo: { database: a, map: b, city: c }\n",
     "3: unknown key 'city' in geo (expected one of: database, map)"},
    {"unknown store key", MINIMAL "store: { file: x.db }\n",
     "4: unknown key 'file' in store (expected one of: path, key_file, "
     "audit_retention_days)"},
    {"unknown limits key", MINIMAL "limits: { max_msg: 100 }\n",
     "4: unknown key 'max_msg' in limits (expected one of: max_message, "
     "max_connections, idle_timeout_ms, max_pending_bytes)"},
    {"key twice", MINIMAL "workers: 1\nworkers: 2\n",
     "5: key 'workers': given twice (first on line 4)"},

    /* listen.route */
    {"route a scalar", "listen:\n  route: 7400\n" GEO,
     "2: key 'listen.route': expected a list of \"host:port\" addresses, got "
     "\"7400\""},
    {"route a mapping", "listen:\n  route: { a: 1 }\n" GEO,
     "2: key 'listen.route': expected a list of \"host:port\" addresses, got "
     "a mapping"},
    {"route null", "listen:\n  route:\n" GEO,
     "2: key 'listen.route': expected a list of \"host:port\" addresses, got "
     "null"},
    {"route empty", "listen:\n  route: []\n" GEO,
     "2: key 'listen.route': must list 1..16 addresses, got 0"},
    {"route 17 addresses",
     "listen:\n  route: [" R4("1") R4("2") R4("3")
         R4("4") "\"127.0.0.1:9\"]\n" GEO,
     "2: key 'listen.route': must list 1..16 addresses, got 17"},
    {"route entry a list", "listen:\n  route: [[1, 2]]\n" GEO,
     "2: key 'listen.route[0]': expected a \"host:port\" string, got a list "
     "(quote IPv6 addresses: \"[::1]:7400\")"},
    {"route hostname", LISTEN_ONE("localhost:7400"),
     ROUTE_ERR("localhost:7400", LITERAL)},
    {"route port 70000", LISTEN_ONE("127.0.0.1:70000"),
     ROUTE_ERR("127.0.0.1:70000", "port must be 0..65535, got \"70000\"")},
    {"route port not a number", LISTEN_ONE("127.0.0.1:http"),
     ROUTE_ERR("127.0.0.1:http", "port must be 0..65535, got \"http\"")},
    {"route missing port", LISTEN_ONE("127.0.0.1"),
     ROUTE_ERR("127.0.0.1", "missing port, like 127.0.0.1:7400")},
    {"route empty port", LISTEN_ONE("127.0.0.1:"),
     ROUTE_ERR("127.0.0.1:", "missing port after ':'")},
    {"route v6 missing port", LISTEN_ONE("[::1]"),
     ROUTE_ERR("[::1]", "missing port, like [::1]:7400")},
    {"route v6 without brackets", LISTEN_ONE("::1:7400"),
     ROUTE_ERR("::1:7400",
               "an IPv6 address must be in brackets, like [::1]:7400")},
    {"route v4 in brackets", LISTEN_ONE("[127.0.0.1]:7400"),
     ROUTE_ERR("[127.0.0.1]:7400", "brackets are for IPv6 addresses")},
    {"route port only", LISTEN_ONE("7400"),
     ROUTE_ERR("7400", "missing the address")},
    {"route duplicate",
     "listen:\n  route: [\"[::1]:7400\", \"[0::1]:7400\"]\n" GEO,
     "2: key 'listen.route[1]': [0::1]:7400 is the same address and port as "
     "listen.route[0] ([::1]:7400)"},

    /* other listeners */
    {"metrics hostname", ROUTE "  metrics: \"localhost:9400\"\n" GEO,
     "3: key 'listen.metrics': expected \"host:port\", got "
     "\"localhost:9400\": " LITERAL},
    {"metrics port only", ROUTE "  metrics: 9400\n" GEO,
     "3: key 'listen.metrics': expected \"host:port\", got \"9400\": missing "
     "the address"},
    {"metrics same as route", ROUTE "  metrics: \"127.0.0.1:7400\"\n" GEO,
     "3: key 'listen.metrics': 127.0.0.1:7400 is the same address and port "
     "as listen.route[0] (127.0.0.1:7400)"},
    {"admin_tcp same as metrics",
     ROUTE "  metrics: \"127.0.0.1:9400\"\n"
           "  admin_tcp: \"127.0.0.1:9400\"\n"
           "admin_token_file: token\n" GEO,
     "4: key 'listen.admin_tcp': 127.0.0.1:9400 is the same address and port "
     "as listen.metrics (127.0.0.1:9400)"},
    {"admin_tcp without token file",
     ROUTE "  admin_tcp: \"127.0.0.1:7401\"\n" GEO,
     "3: key 'listen.admin_tcp': needs admin_token_file; set "
     "admin_token_file to a file holding the admin token, or remove "
     "listen.admin_tcp"},
    {"admin_tcp with null token file",
     ROUTE "  admin_tcp: \"127.0.0.1:7401\"\nadmin_token_file: null\n" GEO,
     "3: key 'listen.admin_tcp': needs admin_token_file"},
    {"admin_tcp a list", ROUTE "  admin_tcp: [1]\nadmin_token_file: t\n" GEO,
     "3: key 'listen.admin_tcp': expected a \"host:port\" string, got a list"},

    /* paths */
    {"admin empty", ROUTE "  admin: \"\"\n" GEO,
     "3: key 'listen.admin': must be a non-empty path"},
    {"admin null", ROUTE "  admin: null\n" GEO,
     "3: key 'listen.admin': expected a string, got null"},
    {"admin a list", ROUTE "  admin: [a.sock]\n" GEO,
     "3: key 'listen.admin': expected a string, got a list"},
    {"admin too long for a socket",
     ROUTE "  admin: /" X10 X10 X10 X10 X10 X10 X10 X10 X10 X10 X10 "\n" GEO,
     "3: key 'listen.admin': the socket path \"/xxxxxxxxxx"},
    {"token file empty", MINIMAL "admin_token_file: \"\"\n",
     "4: key 'admin_token_file': must be a non-empty path"},
    {"map with NUL", ROUTE "geo: { database: city.mmdb, map: \"a\\0b\" }\n",
     "3: key 'geo.map': must not contain NUL bytes"},
    {"map null", ROUTE "geo: { database: city.mmdb, map: }\n",
     "3: key 'geo.map': expected a string, got null"},
    {"store path a mapping", MINIMAL "store: { path: { a: b } }\n",
     "4: key 'store.path': expected a string, got a mapping"},

    /* trusted_proxies */
    {"trusted host bits", MINIMAL "trusted_proxies: [\"10.0.0.1/8\"]\n",
     "4: key 'trusted_proxies[0]': expected a CIDR, got \"10.0.0.1/8\": host "
     "bits set; did you mean 10.0.0.0/8?"},
    {"trusted v6 host bits",
     MINIMAL "trusted_proxies: [\"::1/128\", \"2001:db8::1/32\"]\n",
     "4: key 'trusted_proxies[1]': expected a CIDR, got \"2001:db8::1/32\": "
     "host bits set; did you mean 2001:db8::/32?"},
    {"trusted not a CIDR", MINIMAL "trusted_proxies: [\"10.0.0.1\"]\n",
     "4: key 'trusted_proxies[0]': expected a CIDR, got \"10.0.0.1\": "
     "expected ADDRESS/LENGTH"},
    {"trusted alias space",
     MINIMAL "trusted_proxies: [\"::ffff:127.0.0.0/104\"]\n",
     "4: key 'trusted_proxies[0]': ::ffff:127.0.0.0/104 lies inside an IPv4 "
     "alias space"},
    {"trusted twice",
     MINIMAL "trusted_proxies: [\"10.0.0.0/8\", \"10.0.0.0/08\"]\n",
     "4: key 'trusted_proxies[1]': 10.0.0.0/08 is given twice"},
    {"trusted a scalar", MINIMAL "trusted_proxies: \"127.0.0.0/8\"\n",
     "4: key 'trusted_proxies': expected a list of CIDRs like "
     "\"10.0.0.0/8\" ([] for none), got \"127.0.0.0/8\""},
    {"trusted null", MINIMAL "trusted_proxies:\n",
     "4: key 'trusted_proxies': expected a list of CIDRs like "
     "\"10.0.0.0/8\" ([] for none), got null"},

    /* integers */
    {"workers 0", MINIMAL "workers: 0\n",
     "4: key 'workers': must be an integer in 1..64, got \"0\""},
    {"workers 65", MINIMAL "workers: 65\n",
     "4: key 'workers': must be an integer in 1..64, got \"65\""},
    {"workers a list", MINIMAL "workers: [1]\n",
     "4: key 'workers': must be an integer in 1..64, got a list"},
    {"workers quoted", MINIMAL "workers: \"2\"\n",
     "4: key 'workers': must be an integer in 1..64, got \"2\""},
    {"busy_poll_us negative", MINIMAL "busy_poll_us: -1\n",
     "4: key 'busy_poll_us': must be an integer in 0..1000, got \"-1\""},
    {"busy_poll_us too long", MINIMAL "busy_poll_us: 1001\n",
     "4: key 'busy_poll_us': must be an integer in 0..1000, got \"1001\""},
    {"max_message low", MINIMAL "limits: { max_message: 63 }\n",
     "4: key 'limits.max_message': must be an integer in 64..16777216, got "
     "\"63\""},
    {"max_message high", MINIMAL "limits: { max_message: 16777217 }\n",
     "4: key 'limits.max_message': must be an integer in 64..16777216, got "
     "\"16777217\""},
    {"max_connections low", MINIMAL "limits: { max_connections: 0 }\n",
     "4: key 'limits.max_connections': must be an integer in 1..1000000, got "
     "\"0\""},
    {"max_connections high", MINIMAL "limits: { max_connections: 1000001 }\n",
     "4: key 'limits.max_connections': must be an integer in 1..1000000, got "
     "\"1000001\""},
    {"idle_timeout_ms low", MINIMAL "limits: { idle_timeout_ms: 99 }\n",
     "4: key 'limits.idle_timeout_ms': must be an integer in 100..86400000, "
     "got \"99\""},
    {"idle_timeout_ms high", MINIMAL "limits: { idle_timeout_ms: 86400001 }\n",
     "4: key 'limits.idle_timeout_ms': must be an integer in 100..86400000, "
     "got \"86400001\""},
    {"idle_timeout_ms fraction", MINIMAL "limits: { idle_timeout_ms: 1.5 }\n",
     "4: key 'limits.idle_timeout_ms': must be an integer in 100..86400000, "
     "got \"1.5\""},
    {"max_pending_bytes low", MINIMAL "limits: { max_pending_bytes: 4095 }\n",
     "4: key 'limits.max_pending_bytes': must be an integer in "
     "4096..1073741824, got \"4095\""},
    {"max_pending_bytes high",
     MINIMAL "limits: { max_pending_bytes: 1073741825 }\n",
     "4: key 'limits.max_pending_bytes': must be an integer in "
     "4096..1073741824, got \"1073741825\""},

    /* sections of the wrong type, missing required keys */
    {"listen a list", "listen: [\"127.0.0.1:7400\"]\n" GEO,
     "1: key 'listen': expected a mapping, got a list"},
    {"geo a scalar", ROUTE "geo: city.mmdb\n",
     "3: key 'geo': expected a mapping, got \"city.mmdb\""},
    {"limits a scalar", MINIMAL "limits: 5\n",
     "4: key 'limits': expected a mapping, got \"5\""},
    {"missing listen", GEO,
     "1: key 'listen.route': missing; give the addresses to answer routing "
     "requests on, e.g. route: [\"127.0.0.1:7400\", \"[::1]:7400\"]"},
    {"missing route", "listen:\n  admin: a.sock\n" GEO,
     "2: key 'listen.route': missing"},
    {"empty listen", "listen:\n" GEO, "1: key 'listen.route': missing"},
    {"missing geo.map", ROUTE "geo: { database: city.mmdb }\n",
     "3: key 'geo.map': missing; give the data-center map, e.g. map: "
     "dcmap.yaml"},
    {"missing geo.database", ROUTE "geo:\n  map: dcmap.yaml\n",
     "4: key 'geo.database': missing; give the MaxMind City database, e.g. "
     "database: GeoLite2-City.mmdb"},
    {"missing geo", ROUTE, "1: key 'geo.map': missing"},

    /* the document */
    {"top level a list", "- listen\n- geo\n",
     "1: expected a mapping, got a list"},
    {"top level a scalar", "geosteer\n",
     "1: expected a mapping, got \"geosteer\""},
    {"yaml syntax", "listen: [1, 2\n",
     "2: YAML syntax error: did not find expected ',' or ']'"},
    {"empty file", "",
     " the config is empty; it needs at least listen.route, geo.database "
     "and geo.map"},
    {"only comments", "# nothing yet\n", " the config is empty"},
};

ParameterizedTestParameters(config, rejects_bad_configs)
{
  return cr_make_param_array(struct bad_case, (void *)bad_cases,
                             sizeof(bad_cases) / sizeof(bad_cases[0]));
}

ParameterizedTest(const struct bad_case *c, config, rejects_bad_configs)
{
  struct diag d = DIAG_INIT;
  char *path = NULL;
  char expected[1024];
  bool seen = false;

  int rc = load_text(c->text, &d, &path);
  cr_assert_neq(rc, 0, "%s: accepted", c->name);
  snprintf(expected, sizeof(expected), "%s:%s", path, c->message);
  for (size_t i = 0; i < d.count; i++)
    if (strncmp(d.msgs[i], expected, strlen(expected)) == 0)
      seen = true;
  if (!seen) {
    for (size_t i = 0; i < d.count; i++)
      cr_log_error("%s: got: %s", c->name, d.msgs[i]);
  }
  cr_assert(seen, "%s: expected message: %s", c->name, expected);
  diag_free(&d);
  free(path);
}

Test(config, reports_every_problem_at_once)
{
  struct diag d = DIAG_INIT;
  int rc = load_text("listen:\n"
                     "  route: [\"localhost:7400\", \"127.0.0.1:7400\"]\n"
                     "  admin_tcp: \"127.0.0.1:7400\"\n"
                     "geo: { database: city.mmdb }\n"
                     "workers: 0\n"
                     "limits: { max_message: 1 }\n"
                     "colour: blue\n",
                     &d, NULL);
  cr_assert_eq(rc, GS_ERR_INVALID);
  /* colour, route[0], geo.map, workers, max_message, admin_tcp needs a
     token file, admin_tcp clashes with route[1] */
  for (size_t i = 0; i < d.count; i++)
    cr_log_info("%s", d.msgs[i]);
  cr_assert_eq(d.count, 7);
  diag_free(&d);
}

Test(config, missing_file_is_io_error)
{
  struct diag d = DIAG_INIT;
  struct config *c = NULL;
  cr_assert_eq(config_load("/nonexistent/geosteer.yaml", &c, &d), GS_ERR_IO);
  cr_assert_null(c);
  cr_assert_eq(d.count, 1);
  cr_assert(strstr(d.msgs[0], "/nonexistent/geosteer.yaml: cannot open: "));
  diag_free(&d);
}

Test(config, syntax_error_is_syntax_code)
{
  struct diag d = DIAG_INIT;
  cr_assert_eq(load_text("listen: [1, 2\n", &d, NULL), GS_ERR_SYNTAX);
  diag_free(&d);
}

Test(config, free_null_is_a_no_op)
{
  config_free(NULL);
}

/* Loads a config whose trusted_proxies line is given; aborts on error. */
static struct config *load_trusted(const char *line)
{
  struct diag d = DIAG_INIT;
  struct config *c = NULL;
  char text[512];
  snprintf(text, sizeof(text), MINIMAL "%s", line);
  char *path = write_temp(text, ".yaml");
  cr_assert_not_null(path);
  cr_assert_eq(config_load(path, &c, &d), 0, "%s", d.count ? d.msgs[0] : "");
  unlink(path);
  free(path);
  return c;
}

static addr128 ip(const char *text)
{
  addr128 a;
  cr_assert_eq(addr_parse(text, &a, NULL), 0, "%s", text);
  return a;
}

Test(config, trusted_default_is_loopback)
{
  struct config *c = load_trusted("");
  cr_assert(config_is_trusted(c, ip("127.0.0.1")));
  cr_assert(config_is_trusted(c, ip("127.255.255.255")));
  cr_assert(config_is_trusted(c, ip("::1")));
  cr_assert(config_is_trusted(c, addr_normalize(ip("::ffff:127.0.0.1"))));
  cr_assert_not(config_is_trusted(c, ip("128.0.0.1")));
  cr_assert_not(config_is_trusted(c, ip("10.0.0.1")));
  cr_assert_not(config_is_trusted(c, ip("::2")));
  cr_assert_not(config_is_trusted(c, ip("2001:db8::1")));
  config_free(c);
}

Test(config, trusted_ipv4_and_ipv6)
{
  struct config *c = load_trusted("trusted_proxies: [\"10.0.0.0/8\", "
                                  "\"192.0.2.7/32\", \"2001:db8::/32\"]\n");
  cr_assert_eq(c->ntrusted, 3);
  cr_assert(config_is_trusted(c, ip("10.0.0.0")));
  cr_assert(config_is_trusted(c, ip("10.255.255.255")));
  cr_assert_not(config_is_trusted(c, ip("11.0.0.0")));
  cr_assert_not(config_is_trusted(c, ip("9.255.255.255")));
  cr_assert(config_is_trusted(c, ip("192.0.2.7")));
  cr_assert_not(config_is_trusted(c, ip("192.0.2.8")));
  cr_assert(config_is_trusted(c, ip("2001:db8::1")));
  cr_assert(config_is_trusted(c, ip("2001:db8:ffff:ffff::1")));
  cr_assert_not(config_is_trusted(c, ip("2001:db9::1")));
  cr_assert_not(config_is_trusted(c, ip("127.0.0.1")));
  cr_assert_not(config_is_trusted(c, ip("::1")));
  config_free(c);
}

Test(config, trusted_empty_list_trusts_nobody)
{
  struct config *c = load_trusted("trusted_proxies: []\n");
  cr_assert_eq(c->ntrusted, 0);
  cr_assert_not(config_is_trusted(c, ip("127.0.0.1")));
  cr_assert_not(config_is_trusted(c, ip("::1")));
  cr_assert_not(config_is_trusted(c, 0));
  config_free(c);
}

Test(config, trusted_everything)
{
  struct config *c = load_trusted("trusted_proxies: [\"0.0.0.0/0\"]\n");
  cr_assert(config_is_trusted(c, ip("1.2.3.4")));
  cr_assert(config_is_trusted(c, ip("255.255.255.255")));
  cr_assert_not(config_is_trusted(c, ip("2001:db8::1")));
  config_free(c);
  c = load_trusted("trusted_proxies: [\"::/0\"]\n");
  cr_assert(config_is_trusted(c, ip("1.2.3.4")));
  cr_assert(config_is_trusted(c, ip("2001:db8::1")));
  config_free(c);
}

struct listen_case {
  char text[80];
  bool ok;
  char addr[48]; /* when ok: the address, for addr_parse */
  bool is_v4;
  unsigned port;
  char why[96]; /* when !ok: the start of the reason */
};

static const struct listen_case listen_cases[] = {
    {"127.0.0.1:7400", true, "127.0.0.1", true, 7400, ""},
    {"0.0.0.0:0", true, "0.0.0.0", true, 0, ""},
    {"255.255.255.255:65535", true, "255.255.255.255", true, 65535, ""},
    {"10.0.0.1:00080", true, "10.0.0.1", true, 80, ""},
    {"[::1]:7400", true, "::1", false, 7400, ""},
    {"[::]:0", true, "::", false, 0, ""},
    {"[2001:db8::1]:443", true, "2001:db8::1", false, 443, ""},
    {"[::ffff:1.2.3.4]:80", true, "::ffff:1.2.3.4", false, 80, ""},
    {"", false, "", false, 0, "empty"},
    {"7400", false, "", false, 0, "missing the address"},
    {":7400", false, "", false, 0, "missing the address"},
    {"localhost:7400", false, "", false, 0, LITERAL},
    {"example.com:80", false, "", false, 0, LITERAL},
    {"localhost", false, "", false, 0, LITERAL},
    {"1.2.3:80", false, "", false, 0, LITERAL},
    {"[localhost]:80", false, "", false, 0, LITERAL},
    {"[fe80::1%eth0]:80", false, "", false, 0, LITERAL},
    {"127.0.0.1", false, "", false, 0, "missing port"},
    {"127.0.0.1:", false, "", false, 0, "missing port"},
    {"[::1]", false, "", false, 0, "missing port"},
    {"[::1]:", false, "", false, 0, "missing port"},
    {"[::1]7400", false, "", false, 0, "expected ':' and a port after ']'"},
    {"[::1:7400", false, "", false, 0, "missing ']'"},
    {"::1:7400", false, "", false, 0, "an IPv6 address must be in brackets"},
    {"[127.0.0.1]:80", false, "", false, 0, "brackets are for IPv6"},
    {"127.0.0.1:70000", false, "", false, 0, "port must be 0..65535"},
    {"127.0.0.1:65536", false, "", false, 0, "port must be 0..65535"},
    {"127.0.0.1:-1", false, "", false, 0, "port must be 0..65535"},
    {"127.0.0.1:+80", false, "", false, 0, "port must be 0..65535"},
    {"127.0.0.1:0x50", false, "", false, 0, "port must be 0..65535"},
    {"127.0.0.1:99999999999999999999", false, "", false, 0,
     "port must be 0..65535"},
    {"127.0.0.1: 80", false, "", false, 0, "port must be 0..65535"},
    {"[1111:2222:3333:4444:5555:6666:7777:8888]:1234567890123456789012", false,
     "", false, 0, "too long"},
};

ParameterizedTestParameters(config, parse_listen)
{
  return cr_make_param_array(struct listen_case, (void *)listen_cases,
                             sizeof(listen_cases) / sizeof(listen_cases[0]));
}

ParameterizedTest(const struct listen_case *lc, config, parse_listen)
{
  struct listen_addr la, untouched;
  char why[256] = "";

  memset(&la, 0xa5, sizeof(la));
  untouched = la;
  int rc = config_parse_listen(lc->text, &la, why, sizeof(why));
  if (lc->ok) {
    cr_assert_eq(rc, 0, "\"%s\": refused: %s", lc->text, why);
    cr_assert_str_eq(la.text, lc->text);
    cr_assert(la.addr == ip(lc->addr), "\"%s\": address", lc->text);
    cr_assert_eq(la.is_v4, lc->is_v4, "\"%s\": is_v4", lc->text);
    cr_assert_eq(la.port, lc->port, "\"%s\": port", lc->text);
  } else {
    cr_assert_eq(rc, GS_ERR_ADDR, "\"%s\": accepted", lc->text);
    cr_assert(strncmp(why, lc->why, strlen(lc->why)) == 0,
              "\"%s\": reason \"%s\", expected \"%s...\"", lc->text, why,
              lc->why);
    cr_assert(memcmp(&la, &untouched, sizeof(la)) == 0,
              "\"%s\": out touched on failure", lc->text);
  }
}
