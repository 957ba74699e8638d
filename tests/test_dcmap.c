/*
 * Tests for dcmap: a valid map loads completely; every validation error
 * names file:line, the key, the expectation and what was found; a bad map
 * never yields a half-loaded result.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "dcmap.h"
#include "geosteer/geosteer.h"
#include "helpers.h"

#define DC_AMS "  - { id: ams, endpoint: \"a:1\", lat: 52.37, lon: 4.90 }\n"
#define DC_FRA "  - { id: fra, endpoint: \"f:1\", lat: 50.11, lon: 8.68 }\n"
#define HEAD "limit: 2\ndefault: [ams]\ndatacenters:\n" DC_AMS DC_FRA

/* Loads text; returns the result code and fills d. *m freed here. */
static int load_text(const char *text, struct diag *d, char **path_out)
{
  struct dcmap *m = (struct dcmap *)0x1;
  char *path = write_temp(text, ".yaml");
  cr_assert_not_null(path);
  int rc = dcmap_load(path, &m, d);
  if (rc == 0)
    dcmap_free(m);
  else
    cr_assert(m == (struct dcmap *)0x1, "out-param touched on failure");
  unlink(path);
  if (path_out)
    *path_out = path;
  else
    free(path);
  return rc;
}

Test(dcmap, example_map_loads)
{
  struct diag d = DIAG_INIT;
  struct dcmap *m = NULL;
  cr_assert_eq(dcmap_load(src_path("examples/dcmap.yaml"), &m, &d), 0);
  cr_assert_eq(d.count, 0);
  cr_assert_geq(m->ndcs, 15);
  cr_assert_eq(m->limit, 3);
  cr_assert_gt(m->nnets, 0);
  for (int k = 0; k < OVERRIDE_KINDS_; k++)
    cr_assert_gt(m->noverrides[k], 0, "override kind %d shown", k);
  dcmap_free(m);
  diag_free(&d);
}

Test(dcmap, full_map_fields)
{
  struct diag d = DIAG_INIT;
  struct dcmap *m = NULL;
  char *path = write_temp(
      "limit: 2\n"
      "default: [fra, ams]\n"
      "datacenters:\n" DC_AMS
      "  - { id: fra, endpoint: \"f:1\", lat: 50.11, lon: 8.68, bias: -20 }\n"
      "overrides:\n"
      "  continent: { EU: [ams] }\n"
      "  country: { NL: [ams, fra] }\n"
      "  subdivision: { US-HI: [fra] }\n"
      "  city: { 2643743: [fra] }\n"
      "nets:\n"
      "  \"10.0.0.0/8\": [ams]\n"
      "  \"2001:db8::/32\": [fra]\n",
      ".yaml");
  cr_assert_eq(dcmap_load(path, &m, &d), 0);
  cr_assert_eq(m->ndcs, 2);
  cr_assert_eq(m->limit, 2);
  cr_assert_eq(m->dflt.n, 2);
  cr_assert_eq(m->dflt.dc[0], 1);
  cr_assert_eq(m->dcs[1].bias, -20);
  cr_assert_float_eq(m->dcs[1].factor, 1.25, 1e-12);
  cr_assert_not_null(dcmap_override(m, OVERRIDE_CITY, NULL, 2643743));
  cr_assert_not_null(dcmap_override(m, OVERRIDE_SUBDIVISION, "US-HI", 0));
  cr_assert_eq(dcmap_override(m, OVERRIDE_COUNTRY, "NL", 0)->n, 2);
  cr_assert_null(dcmap_override(m, OVERRIDE_COUNTRY, "DE", 0));
  cr_assert_eq(m->nnets, 2);
  cr_assert_eq(m->nets[0].plen, 104);
  dcmap_free(m);
  diag_free(&d);
  unlink(path);
  free(path);
}

Test(dcmap, limit_defaults_to_3)
{
  struct diag d = DIAG_INIT;
  struct dcmap *m = NULL;
  char *path = write_temp("default: [ams]\ndatacenters:\n" DC_AMS, ".yaml");
  cr_assert_eq(dcmap_load(path, &m, &d), 0);
  cr_assert_eq(m->limit, 3);
  dcmap_free(m);
  unlink(path);
  free(path);
}

/*
 * Criterion runs each parameter in a fresh process image, so cases hold
 * their text inline (pointers into this process would not survive).
 */
struct bad_case {
  char name[64];
  char text[512];
  char message[256]; /* expected after "PATH:" */
};

static const struct bad_case bad_cases[] = {
    {"unknown top key", HEAD "limt: 3\n",
     "6: unknown key 'limt' (expected one of: limit, default, datacenters, "
     "overrides, nets)"},
    {"limit too big", "limit: 17\ndefault: [ams]\ndatacenters:\n" DC_AMS,
     "1: key 'limit': must be an integer in 1..16, got \"17\""},
    {"limit not a number",
     "limit: three\ndefault: [ams]\ndatacenters:\n" DC_AMS,
     "1: key 'limit': must be an integer in 1..16, got \"three\""},
    {"lat not a number",
     "default: [ams]\ndatacenters:\n"
     "  - { id: ams, endpoint: \"a:1\", lat: north, lon: 4.90 }\n",
     "3: key 'lat': must be a number in -90..90, got \"north\""},
    {"lat out of range",
     "default: [ams]\ndatacenters:\n"
     "  - { id: ams, endpoint: \"a:1\", lat: 91, lon: 4.90 }\n",
     "3: key 'lat': must be a number in -90..90, got \"91\""},
    {"lon out of range",
     "default: [ams]\ndatacenters:\n"
     "  - { id: ams, endpoint: \"a:1\", lat: 1, lon: -181 }\n",
     "3: key 'lon': must be a number in -180..180, got \"-181\""},
    {"lat nan",
     "default: [ams]\ndatacenters:\n"
     "  - { id: ams, endpoint: \"a:1\", lat: nan, lon: 1 }\n",
     "3: key 'lat': must be a number in -90..90, got \"nan\""},
    {"lat quoted",
     "default: [ams]\ndatacenters:\n"
     "  - { id: ams, endpoint: \"a:1\", lat: \"5\", lon: 1 }\n",
     "3: key 'lat': must be a number in -90..90, got \"5\""},
    {"bias out of range",
     "default: [ams]\ndatacenters:\n"
     "  - { id: ams, endpoint: \"a:1\", lat: 1, lon: 1, bias: 100 }\n",
     "3: key 'bias': must be an integer in -99..99, got \"100\""},
    {"bias fraction",
     "default: [ams]\ndatacenters:\n"
     "  - { id: ams, endpoint: \"a:1\", lat: 1, lon: 1, bias: 1.5 }\n",
     "3: key 'bias': must be an integer in -99..99, got \"1.5\""},
    {"bad id",
     "default: [ams]\ndatacenters:\n"
     "  - { id: AMS_1, endpoint: \"a:1\", lat: 1, lon: 1 }\n",
     "3: key 'id': must be 1..32 characters of a-z, 0-9 and '-', got "
     "\"AMS_1\""},
    {"duplicate id", "default: [ams]\ndatacenters:\n" DC_AMS DC_AMS,
     "4: key 'id': data center 'ams' is defined twice"},
    {"missing id",
     "default: [ams]\ndatacenters:\n"
     "  - { endpoint: \"a:1\", lat: 1, lon: 1 }\n",
     "3: key 'id': missing in datacenters[0]"},
    {"missing lat",
     "default: [ams]\ndatacenters:\n"
     "  - { id: ams, endpoint: \"a:1\", lon: 1 }\n",
     "3: key 'lat': missing in datacenters[0]"},
    {"endpoint with space",
     "default: [ams]\ndatacenters:\n"
     "  - { id: ams, endpoint: \"a b:1\", lat: 1, lon: 1 }\n",
     "3: key 'endpoint': must be 1..255 bytes without spaces or control "
     "characters (\"host:port\")"},
    {"unknown dc key",
     "default: [ams]\ndatacenters:\n"
     "  - { id: ams, endpoint: \"a:1\", lat: 1, lon: 1, weight: 3 }\n",
     "3: unknown key 'weight' in datacenters[0] (expected one of: id, "
     "endpoint, lat, lon, bias)"},
    {"no datacenters", "default: [ams]\n",
     "1: key 'datacenters': missing; the map needs at least one data "
     "center"},
    {"empty datacenters", "default: [ams]\ndatacenters: []\n",
     "2: key 'datacenters': expected a non-empty list of data centers, got "
     "a list"},
    {"missing default", "datacenters:\n" DC_AMS,
     "1: key 'default': missing; give the order for unknown locations, e.g. "
     "default: [ams]"},
    {"empty default", "default: []\ndatacenters:\n" DC_AMS,
     "1: key 'default': must name at least one data center"},
    {"default not a list", "default: ams\ndatacenters:\n" DC_AMS,
     "1: key 'default': expected a list of data center ids, got \"ams\""},
    {"default unknown dc", "default: [ams, xyz]\ndatacenters:\n" DC_AMS,
     "1: key 'default': unknown data center 'xyz' (not in datacenters)"},
    {"default repeats dc", "default: [ams, ams]\ndatacenters:\n" DC_AMS,
     "1: key 'default': data center 'ams' is listed twice"},
    {"override unknown kind", HEAD "overrides:\n  region: { X: [ams] }\n",
     "7: unknown key 'region' in overrides (expected one of: continent, "
     "country, subdivision, city)"},
    {"override bad continent", HEAD "overrides:\n  continent: { XX: [ams] }\n",
     "7: key in overrides.continent: expected continent codes AF, AN, AS, "
     "EU, NA, OC or SA, got \"XX\""},
    {"override bad country", HEAD "overrides:\n  country: { nl: [ams] }\n",
     "7: key in overrides.country: expected two-letter ISO country codes "
     "like CN, got \"nl\""},
    {"override bad subdivision",
     HEAD "overrides:\n  subdivision: { HI: [ams] }\n",
     "7: key in overrides.subdivision: expected COUNTRY-SUBDIVISION iso codes "
     "like US-HI, got \"HI\""},
    {"override bad city", HEAD "overrides:\n  city: { london: [ams] }\n",
     "7: key 'overrides.city': must be an integer in 1..4294967295, got "
     "\"london\""},
    {"override unknown dc", HEAD "overrides:\n  country: { CN: [hkg] }\n",
     "7: key 'overrides.country.CN': unknown data center 'hkg' (not in "
     "datacenters)"},
    {"override twice",
     HEAD "overrides:\n  country:\n    CN: [ams]\n    CN: [fra]\n",
     "9: overrides.country: 'CN' is given twice"},
    {"net host bits", HEAD "nets:\n  \"10.0.0.1/8\": [ams]\n",
     "7: key in nets: expected a CIDR, got \"10.0.0.1/8\": host bits set; did "
     "you mean 10.0.0.0/8?"},
    {"net v6 host bits", HEAD "nets:\n  \"2001:db8::1/32\": [ams]\n",
     "7: key in nets: expected a CIDR, got \"2001:db8::1/32\": host bits "
     "set; did you mean 2001:db8::/32?"},
    {"net not cidr", HEAD "nets:\n  \"office\": [ams]\n",
     "7: key in nets: expected a CIDR, got \"office\": expected "
     "ADDRESS/LENGTH"},
    {"net alias space", HEAD "nets:\n  \"2002::/16\": [ams]\n",
     "7: key in nets: 2002::/16 lies inside an IPv4 alias space"},
    {"net twice",
     HEAD "nets:\n  \"10.0.0.0/8\": [ams]\n  \"10.0.0.0/8\": [fra]\n",
     "8: nets: 10.0.0.0/8 is given twice (as 10.0.0.0/8)"},
    {"net empty list", HEAD "nets:\n  \"10.0.0.0/8\": []\n",
     "7: key 'nets.10.0.0.0/8': must name at least one data center"},
    {"top level not a mapping", "- a\n- b\n",
     "1: expected a mapping, got a list"},
    {"empty file", "",
     " the map is empty; expected keys limit, default, "
     "datacenters"},
    {"yaml syntax", "limit: [1, 2\n",
     "2: YAML syntax error: did not find expected ',' or ']'"},
    {"key twice", "limit: 2\nlimit: 3\ndefault: [ams]\ndatacenters:\n" DC_AMS,
     "2: key 'limit': given twice (first on line 1)"},
};

ParameterizedTestParameters(dcmap, rejects_bad_maps)
{
  return cr_make_param_array(struct bad_case, (void *)bad_cases,
                             sizeof(bad_cases) / sizeof(bad_cases[0]));
}

ParameterizedTest(const struct bad_case *c, dcmap, rejects_bad_maps)
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

Test(dcmap, reports_every_problem_at_once)
{
  struct diag d = DIAG_INIT;
  int rc = load_text("limit: 0\n"
                     "default: [ams]\n"
                     "datacenters:\n"
                     "  - { id: ams, endpoint: \"a:1\", lat: 99, lon: 999 }\n"
                     "colour: blue\n",
                     &d, NULL);
  cr_assert_eq(rc, GS_ERR_INVALID);
  cr_assert_eq(d.count, 4); /* colour, limit, lat, lon */
  diag_free(&d);
}

Test(dcmap, missing_file_is_io_error)
{
  struct diag d = DIAG_INIT;
  struct dcmap *m = NULL;
  cr_assert_eq(dcmap_load("/nonexistent/dcmap.yaml", &m, &d), GS_ERR_IO);
  cr_assert_null(m);
  cr_assert_eq(d.count, 1);
  cr_assert(strstr(d.msgs[0], "/nonexistent/dcmap.yaml: cannot open: "));
  diag_free(&d);
}
