/*
 * Tests for the geosteer CLI's offline commands, run as a person would:
 * as a separate process, checking exit status and output.
 */
#include <criterion/criterion.h>

#include "helpers.h"

/* Runs the CLI with args; captures stdout+stderr into out; returns status. */
static int run_cli(const char *args, char *out, size_t size)
{
  char cmd[8192];
  const char *bin = getenv("GS_CLI");

  snprintf(cmd, sizeof(cmd), "cd '%s' && '%s' %s", src_path(""),
           bin ? bin : "build/geosteer", args);
  return run_command(cmd, out, size);
}

static char out[1 << 16];

Test(cli, map_check_ok)
{
  cr_assert_eq(run_cli("map check tests/fixtures/maps/test-map.yaml --db "
                       "tests/fixtures/city-test.mmdb",
                       out, sizeof(out)),
               0, "%s", out);
  cr_assert(strstr(out, "ok: 10 data centers, limit 3"), "%s", out);
  cr_assert(strstr(out, "route table:"), "%s", out);
}

Test(cli, map_check_reports_every_error_and_exits_1)
{
  char *bad = write_temp("limit: 0\ndefault: [ams]\ndatacenters:\n"
                         "  - { id: ams, endpoint: \"a:1\", lat: north, "
                         "lon: 4.90 }\n",
                         ".yaml");
  char args[4200];
  snprintf(args, sizeof(args), "map check '%s'", bad);
  cr_assert_eq(run_cli(args, out, sizeof(out)), 1, "%s", out);
  cr_assert(strstr(out, ":1: key 'limit': must be an integer in 1..16, got "
                        "\"0\""),
            "%s", out);
  cr_assert(strstr(out, ":4: key 'lat': must be a number in -90..90, got "
                        "\"north\""),
            "%s", out);
  cr_assert(strstr(out, "2 problems found"), "%s", out);
  unlink(bad);
  free(bad);
}

Test(cli, explain_shows_the_decision_path)
{
  cr_assert_eq(run_cli("explain ::ffff:81.2.69.5 --map "
                       "tests/fixtures/maps/test-map.yaml --db "
                       "tests/fixtures/city-test.mmdb",
                       out, sizeof(out)),
               0, "%s", out);
  cr_assert(strstr(out, "resolved as 81.2.69.5"), "%s", out);
  cr_assert(strstr(out, "country GB, subdivision GB-ENG, city 2643743"), "%s",
            out);
  cr_assert(strstr(out, "rule      city 2643743"), "%s", out);
  cr_assert(strstr(out, "answer    lhr ams fra  (reason city)"), "%s", out);
  cr_assert(strstr(out, "  1  lhr"), "%s", out);
}

Test(cli, explain_json)
{
  cr_assert_eq(run_cli("--json explain 100.64.0.1 --map "
                       "tests/fixtures/maps/test-map.yaml --db "
                       "tests/fixtures/city-test.mmdb",
                       out, sizeof(out)),
               0, "%s", out);
  cr_assert(strstr(out, "\"found\":false"), "%s", out);
  cr_assert(strstr(out, "\"reason\":\"net\",\"answer\":[\"iad\",\"ams\"]"),
            "%s", out);
}

Test(cli, usage_errors_exit_2)
{
  cr_assert_eq(run_cli("", out, sizeof(out)), 2);
  cr_assert_eq(run_cli("frobnicate", out, sizeof(out)), 2);
  cr_assert(strstr(out, "unknown command 'frobnicate'"), "%s", out);
  /* Offline explain needs both files; with neither it asks the server. */
  cr_assert_eq(run_cli("explain 1.2.3.4 --map x.yaml", out, sizeof(out)), 2);
  cr_assert_eq(run_cli("explain not-an-ip --map x --db y", out, sizeof(out)),
               1);
  cr_assert(strstr(out, "'not-an-ip' is not an IPv4 or IPv6 address"));
}
