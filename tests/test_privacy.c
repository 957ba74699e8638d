/*
 * Tests for geolocation opt-outs in a running geosteerd: the optout.*
 * admin methods and their results, input validation that writes nothing,
 * routing without geolocation for opted-out users, failing closed while
 * the store is unavailable and recovering from it, changes that take
 * effect at once, raw ids and addresses never reaching disk or the log,
 * the CLI's optout commands, and (when make test provides it) a short run
 * of the kill -9 crash harness.
 *
 * Each test starts its own daemon (server_harness.h, through
 * optout_harness.h) and stops it with SIGTERM at the end, which also
 * checks that it exits 0 without leaks.
 */
#include <criterion/criterion.h>
#include <stdarg.h>

#include "geosteer/geosteer.h"
#include "optout_harness.h"

/* One timeout for the suite (per-test values leak under LeakSanitizer). */
TestSuite(privacy, .fini = harness_fini);

#define LONDON "81.2.69.5"           /* city override: lhr, reason city */
#define FRANKFURT6 "2a02:1000::1234" /* nearest: fra */

/* ---- helpers ------------------------------------------------------------ */

static const msgpack_object *optout(gs_client *a, const char *method,
                                    const char *user, const char *actor,
                                    const char *reason)
{
  gs_arg args[3];
  size_t n = 0;
  if (user)
    args[n++] = (gs_arg){"user", user, false};
  if (actor)
    args[n++] = (gs_arg){"actor", actor, false};
  if (reason)
    args[n++] = (gs_arg){"reason", reason, false};
  return admin_call(a, method, args, n);
}

static const msgpack_object *set(gs_client *a, const char *user)
{
  return optout(a, "optout.set", user, "test-agent", NULL);
}

static const msgpack_object *clear(gs_client *a, const char *user)
{
  return optout(a, "optout.clear", user, "test-agent", NULL);
}

static bool opted_out(gs_client *a, const char *user)
{
  return obj_get_bool(optout(a, "optout.get", user, NULL, NULL), "opted_out");
}

static uint64_t count(gs_client *a)
{
  return obj_get_u64(admin_call(a, "optout.count", NULL, 0), "count");
}

/* Length of user's exported history. */
static uint32_t history_len(gs_client *a, const char *user)
{
  const msgpack_object *h =
      obj_get(optout(a, "optout.export", user, NULL, NULL), "history");
  cr_assert(h && h->type == MSGPACK_OBJECT_ARRAY, "export has no history");
  return h->via.array.size;
}

/* Calls method and requires the error code. */
static void expect_error(gs_client *c, const char *method, const gs_arg *args,
                         size_t n, int code)
{
  gs_remote_error err = {0};
  int got = admin_call_error(c, method, args, n, &err);
  cr_assert_eq(got, code, "%s: expected %s (%d), got %s (%d): %s", method,
               gs_code_name(code), code, err.name, got, err.message);
  cr_assert_str_eq(err.name, gs_code_name(code));
}

/* Routes and requires success. */
static gs_route_answer route(gs_client *r, const char *user, const char *ip,
                             const char *hint, bool no_geo)
{
  gs_route_answer ans;
  gs_remote_error err = {0};
  int rc = gs_route(r, user, ip, hint, no_geo, NULL, &ans, &err);
  cr_assert_eq(rc, 0, "route: %s (%s: %s)", gs_client_strerror(rc), err.name,
               err.message);
  return ans;
}

/* The answer is dc followed by the alternates given (NULL-terminated). */
static void expect_order(const gs_route_answer *a, const char *dc, ...)
{
  va_list ap;
  const char *alt;
  int i = 0;

  cr_assert_str_eq(a->dc, dc, "first dc %s, expected %s", a->dc, dc);
  va_start(ap, dc);
  while ((alt = va_arg(ap, const char *)) != NULL) {
    cr_assert_lt(i, a->nalternates, "alternate %d (%s) missing", i, alt);
    cr_assert_str_eq(a->alternates[i].dc, alt, "alternate %d", i);
    i++;
  }
  va_end(ap);
  cr_assert_eq(a->nalternates, i, "%d alternates, expected %d", a->nalternates,
               i);
}

/* Answered without geolocation: reason, default order, no scope. */
static void expect_not_geolocated(const gs_route_answer *a, const char *reason)
{
  cr_assert_str_eq(a->reason, reason);
  cr_assert_eq(a->scope, -1, "a %s answer carries a scope (/%d)", reason,
               a->scope);
}

/* Waits (bounded) until stats.geo_lookups equals want; fails otherwise. */
static void expect_geo_lookups(gs_client *a, uint64_t want)
{
  int64_t deadline = harness_now_ms() + 2000;
  uint64_t got;
  /* Worker counters are relaxed: the reader may be one request behind. */
  while ((got = oh_geo_lookups(a, NULL)) != want && harness_now_ms() < deadline)
    harness_sleep_ms(10);
  cr_assert_eq(got, want, "geo_lookups %llu, expected %llu",
               (unsigned long long)got, (unsigned long long)want);
}

static bool store_healthy(gs_client *a)
{
  bool healthy;
  oh_geo_lookups(a, &healthy);
  return healthy;
}

static const char *cli_path(void)
{
  static char path[PATH_MAX];
  const char *bin = getenv("GS_CLI");
  if (bin)
    return bin;
  snprintf(path, sizeof(path), "%s", src_path("build/geosteer"));
  return path;
}

/* Runs the CLI against d's admin socket with args; status, output in out. */
static int cli(const struct server *d, const char *args, char *out, size_t size)
{
  char cmd[8192];
  snprintf(cmd, sizeof(cmd), "'%s' --admin '%s' %s", cli_path(), d->admin,
           args);
  return run_command(cmd, out, size);
}

static const char *const keys_set[] = {"opted_out", "changed", "since", NULL};
static const char *const keys_clear[] = {"opted_out", "changed", NULL};
static const char *const keys_get_on[] = {"opted_out", "since", NULL};
static const char *const keys_get_off[] = {"opted_out", NULL};
static const char *const keys_export_on[] = {"opted_out", "since", "history",
                                             NULL};
static const char *const keys_export_off[] = {"opted_out", "history", NULL};
static const char *const keys_erase[] = {"erased_events", "opted_out", NULL};
static const char *const keys_set_many[] = {"added", "already", NULL};
static const char *const keys_event[] = {"at", "action", "actor", NULL};
static const char *const keys_event_reason[] = {"at", "action", "actor",
                                                "reason", NULL};

/* ---- the admin methods -------------------------------------------------- */

Test(privacy, admin_methods_return_their_documented_results)
{
  struct server d;
  server_init(&d, NULL);
  server_start(&d);
  gs_client *a = server_admin(&d);
  int64_t t0 = (int64_t)time(NULL);
  const msgpack_object *r;

  r = optout(a, "optout.set", "alice", "agent-1", "asked by mail");
  cr_assert(obj_has_exactly(r, keys_set), "optout.set keys");
  cr_assert(obj_get_bool(r, "opted_out"));
  cr_assert(obj_get_bool(r, "changed"));
  int64_t since = (int64_t)obj_get_u64(r, "since");
  cr_assert(since >= t0 && since <= (int64_t)time(NULL));

  /* Idempotent: the same state, changed false, the first since kept. */
  r = optout(a, "optout.set", "alice", "agent-2", NULL);
  cr_assert(obj_has_exactly(r, keys_set));
  cr_assert(obj_get_bool(r, "opted_out"));
  cr_assert(!obj_get_bool(r, "changed"), "a second set reports a change");
  cr_assert_eq((int64_t)obj_get_u64(r, "since"), since);

  r = optout(a, "optout.get", "alice", NULL, NULL);
  cr_assert(obj_has_exactly(r, keys_get_on), "optout.get keys (opted out)");
  cr_assert(obj_get_bool(r, "opted_out"));
  cr_assert_eq((int64_t)obj_get_u64(r, "since"), since);
  cr_assert_eq(count(a), 1u);
  cr_assert(obj_has_exactly(admin_call(a, "optout.count", NULL, 0),
                            (const char *const[]){"count", NULL}));

  r = optout(a, "optout.clear", "alice", "agent-3", "changed their mind");
  cr_assert(obj_has_exactly(r, keys_clear), "optout.clear keys");
  cr_assert(!obj_get_bool(r, "opted_out"));
  cr_assert(obj_get_bool(r, "changed"));
  r = optout(a, "optout.clear", "alice", "agent-3", NULL);
  cr_assert(!obj_get_bool(r, "changed"), "a second clear reports a change");
  r = optout(a, "optout.get", "alice", NULL, NULL);
  cr_assert(obj_has_exactly(r, keys_get_off), "optout.get keys (not opted)");
  cr_assert(!obj_get_bool(r, "opted_out"));
  cr_assert_eq(count(a), 0u);

  /* Export: one event per change, oldest first, reason only when given. */
  r = optout(a, "optout.export", "alice", NULL, NULL);
  cr_assert(obj_has_exactly(r, keys_export_off), "optout.export keys");
  const msgpack_object *h = obj_get(r, "history");
  cr_assert_eq(h->type, MSGPACK_OBJECT_ARRAY);
  cr_assert_eq(h->via.array.size, 2u);
  const msgpack_object *e0 = &h->via.array.ptr[0], *e1 = &h->via.array.ptr[1];
  cr_assert(obj_has_exactly(e0, keys_event_reason));
  cr_assert(obj_is_str(obj_get(e0, "action"), "set"));
  cr_assert(obj_is_str(obj_get(e0, "actor"), "agent-1"));
  cr_assert(obj_is_str(obj_get(e0, "reason"), "asked by mail"));
  cr_assert(obj_has_exactly(e1, keys_event_reason));
  cr_assert(obj_is_str(obj_get(e1, "action"), "clear"));
  cr_assert(obj_is_str(obj_get(e1, "actor"), "agent-3"));
  cr_assert((int64_t)obj_get_u64(e0, "at") >= t0);
  cr_assert(obj_get_u64(e1, "at") >= obj_get_u64(e0, "at"));

  r = optout(a, "optout.set", "bob", "agent-1", NULL);
  r = optout(a, "optout.export", "bob", NULL, NULL);
  cr_assert(obj_has_exactly(r, keys_export_on));
  h = obj_get(r, "history");
  cr_assert_eq(h->via.array.size, 1u);
  cr_assert(obj_has_exactly(&h->via.array.ptr[0], keys_event),
            "an event without a reason has no reason key");

  r = optout(a, "optout.erase", "bob", "agent-dpo", NULL);
  cr_assert(obj_has_exactly(r, keys_erase), "optout.erase keys");
  cr_assert_eq(obj_get_u64(r, "erased_events"), 1u);
  cr_assert(obj_get_bool(r, "opted_out"));

  static const char *const batch1[] = {"m1", "m2", "m3"};
  static const char *const batch2[] = {"m1", "m4", "bob", "m4"};
  gs_remote_error err = {0};
  cr_assert_eq(gs_client_call_users(a, "optout.set_many", batch1, 3, "bulk",
                                    NULL, &r, &err),
               0, "%s", err.message);
  cr_assert(obj_has_exactly(r, keys_set_many), "optout.set_many keys");
  cr_assert_eq(obj_get_u64(r, "added"), 3u);
  cr_assert_eq(obj_get_u64(r, "already"), 0u);
  cr_assert_eq(gs_client_call_users(a, "optout.set_many", batch2, 4, "bulk",
                                    "import", &r, &err),
               0, "%s", err.message);
  cr_assert_eq(obj_get_u64(r, "added"), 1u, "m4 only (once)");
  cr_assert_eq(obj_get_u64(r, "already"), 3u);
  cr_assert_eq(count(a), 5u);
  cr_assert(opted_out(a, "m4"));
  cr_assert_eq(history_len(a, "m4"), 1u, "a duplicate made two events");

  expect_error(a, "optout.frobnicate", NULL, 0, GS_CODE_UNKNOWN_METHOD);
  gs_client_close(a);
  server_stop(&d);
  server_destroy(&d);
}

Test(privacy, export_returns_only_that_users_data)
{
  struct server d;
  server_init(&d, NULL);
  server_start(&d);
  gs_client *a = server_admin(&d);

  optout(a, "optout.set", "user-one", "agent-a", "reason-one-a");
  optout(a, "optout.clear", "user-one", "agent-b", NULL);
  optout(a, "optout.set", "user-one", "agent-c", "reason-one-c");
  optout(a, "optout.set", "user-two", "agent-z", "reason-two-z");

  const msgpack_object *r = optout(a, "optout.export", "user-one", NULL, NULL);
  cr_assert(obj_get_bool(r, "opted_out"));
  const msgpack_object *h = obj_get(r, "history");
  cr_assert_eq(h->via.array.size, 3u);
  static const char *const actions[] = {"set", "clear", "set"};
  static const char *const actors[] = {"agent-a", "agent-b", "agent-c"};
  for (uint32_t i = 0; i < 3; i++) {
    const msgpack_object *e = &h->via.array.ptr[i];
    cr_assert(obj_is_str(obj_get(e, "action"), actions[i]), "event %u", i);
    cr_assert(obj_is_str(obj_get(e, "actor"), actors[i]), "event %u", i);
    cr_assert(!obj_is_str(obj_get(e, "reason"), "reason-two-z"));
  }
  cr_assert(
      obj_is_str(obj_get(&h->via.array.ptr[0], "reason"), "reason-one-a"));
  cr_assert_null(obj_get(&h->via.array.ptr[1], "reason"));

  r = optout(a, "optout.export", "user-two", NULL, NULL);
  h = obj_get(r, "history");
  cr_assert_eq(h->via.array.size, 1u);
  cr_assert(obj_is_str(obj_get(&h->via.array.ptr[0], "actor"), "agent-z"));
  cr_assert(
      obj_is_str(obj_get(&h->via.array.ptr[0], "reason"), "reason-two-z"));

  /* Someone never seen: not opted out, empty history. */
  r = optout(a, "optout.export", "user-three", NULL, NULL);
  cr_assert(obj_has_exactly(r, keys_export_off));
  cr_assert(!obj_get_bool(r, "opted_out"));
  cr_assert_eq(obj_get(r, "history")->via.array.size, 0u);
  gs_client_close(a);
  server_stop(&d);
  server_destroy(&d);
}

Test(privacy, erase_removes_history_and_keeps_the_optout)
{
  struct server d;
  server_init(&d, NULL);
  server_start(&d);
  gs_client *a = server_admin(&d), *r = server_client(&d);

  set(a, "keeps-optout");
  set(a, "bystander");
  const msgpack_object *e =
      optout(a, "optout.erase", "keeps-optout", "agent-dpo", NULL);
  cr_assert_eq(obj_get_u64(e, "erased_events"), 1u);
  cr_assert(obj_get_bool(e, "opted_out"));
  cr_assert_eq(history_len(a, "keeps-optout"), 0u);
  cr_assert(opted_out(a, "keeps-optout"));
  cr_assert_eq(history_len(a, "bystander"), 1u, "another user's history went");
  gs_route_answer ans = route(r, "keeps-optout", LONDON, NULL, false);
  expect_not_geolocated(&ans, "optout");

  /* set + clear, then erase: nothing left at all. */
  set(a, "comes-and-goes");
  clear(a, "comes-and-goes");
  e = optout(a, "optout.erase", "comes-and-goes", "agent-dpo", NULL);
  cr_assert_eq(obj_get_u64(e, "erased_events"), 2u);
  cr_assert(!obj_get_bool(e, "opted_out"));
  e = optout(a, "optout.export", "comes-and-goes", NULL, NULL);
  cr_assert(!obj_get_bool(e, "opted_out"));
  cr_assert_eq(obj_get(e, "history")->via.array.size, 0u);
  ans = route(r, "comes-and-goes", LONDON, NULL, false);
  cr_assert_str_eq(ans.reason, "city");
  cr_assert_eq(oh_audit_rows(d.store), 1, "only bystander's event is left");
  gs_client_close(r);
  gs_client_close(a);
  server_stop(&d);
  server_destroy(&d);
}

/* ---- bad input writes nothing ------------------------------------------- */

/* One value of a raw request: what the client library cannot send. */
enum kind { V_STR, V_INT, V_NIL, V_BIN, V_BOOL, V_ARRAY };

struct value {
  const char *key; /* NULL inside arrays */
  enum kind kind;
  const char *str; /* V_STR, V_BIN */
  size_t len;      /* V_STR, V_BIN: bytes; V_ARRAY: items; 0 = strlen */
  const struct value *items;
};

#define STR(k, s)                                                              \
  {                                                                            \
    k, V_STR, s, 0, NULL                                                       \
  }
#define STRN(k, s, n)                                                          \
  {                                                                            \
    k, V_STR, s, n, NULL                                                       \
  }
#define EMPTY(k)                                                               \
  {                                                                            \
    k, V_STR, "", 0, NULL                                                      \
  }

static char user129[130], user128[129], actor65[66], actor64[65],
    reason257[258], reason256[257];
static struct value many_users[GS_BATCH_MAX + 1];
static char many_names[GS_BATCH_MAX + 1][24];

static void fill_long_texts(void)
{
  memset(user129, 'u', 129);
  memset(user128, 'v', 128);
  memset(actor65, 'a', 65);
  memset(actor64, 'b', 64);
  memset(reason257, 'r', 257);
  memset(reason256, 's', 256);
  for (int i = 0; i <= GS_BATCH_MAX; i++) {
    snprintf(many_names[i], sizeof(many_names[i]), "batch-user-%d", i);
    many_users[i] = (struct value){NULL, V_STR, many_names[i], 0, NULL};
  }
}

static void pack_value(msgpack_packer *pk, const struct value *v)
{
  size_t len = v->len ? v->len : (v->str ? strlen(v->str) : 0);
  switch (v->kind) {
  case V_STR:
    msgpack_pack_str_with_body(pk, v->str, len);
    break;
  case V_BIN:
    msgpack_pack_bin_with_body(pk, v->str, len);
    break;
  case V_INT:
    msgpack_pack_int(pk, 42);
    break;
  case V_NIL:
    msgpack_pack_nil(pk);
    break;
  case V_BOOL:
    msgpack_pack_true(pk);
    break;
  case V_ARRAY:
    msgpack_pack_array(pk, v->len);
    for (size_t i = 0; i < v->len; i++)
      pack_value(pk, &v->items[i]);
    break;
  }
}

#define MAX_FIELDS 5

struct bad_case {
  const char *what;
  const char *method;
  struct value args[MAX_FIELDS]; /* ends at the first NULL key */
};

static const struct value good_users[] = {STR(NULL, "sm-good-1"),
                                          STR(NULL, "sm-good-2")};
static const struct value one_bad_utf8[] = {
    STR(NULL, "sm-good-1"), STR(NULL, "sm-good-2"), STR(NULL, "sm-bad-\xff"),
    STR(NULL, "sm-good-3")};
static const struct value one_empty[] = {STR(NULL, "sm-good-1"), EMPTY(NULL),
                                         STR(NULL, "sm-good-3")};
static const struct value one_int[] = {STR(NULL, "sm-good-1"),
                                       {NULL, V_INT, NULL, 0, NULL}};
static const struct value one_too_long[] = {STR(NULL, "sm-good-1"),
                                            STRN(NULL, user129, 129)};
static const struct value one_nul[] = {STRN(NULL, "sm-\0-nul", 8),
                                       STR(NULL, "sm-good-1")};

static const struct bad_case bad_cases[] = {
    /* optout.set */
    {"set: missing user", "optout.set", {STR("actor", "agent")}},
    {"set: empty user", "optout.set", {EMPTY("user"), STR("actor", "agent")}},
    {"set: 129-byte user",
     "optout.set",
     {STRN("user", user129, 129), STR("actor", "agent")}},
    {"set: invalid UTF-8",
     "optout.set",
     {STR("user", "bad-\xff\xfe-user"), STR("actor", "agent")}},
    {"set: overlong UTF-8",
     "optout.set",
     {STR("user", "slash-\xc0\xaf"), STR("actor", "agent")}},
    {"set: UTF-16 surrogate",
     "optout.set",
     {STR("user", "sur-\xed\xa0\x80"), STR("actor", "agent")}},
    {"set: truncated UTF-8",
     "optout.set",
     {STR("user", "cut-\xe2\x82"), STR("actor", "agent")}},
    {"set: NUL inside",
     "optout.set",
     {STRN("user", "nul\0inside", 10), STR("actor", "agent")}},
    {"set: missing actor", "optout.set", {STR("user", "good-user")}},
    {"set: empty actor",
     "optout.set",
     {STR("user", "good-user"), EMPTY("actor")}},
    {"set: 65-byte actor",
     "optout.set",
     {STR("user", "good-user"), STRN("actor", actor65, 65)}},
    {"set: actor invalid UTF-8",
     "optout.set",
     {STR("user", "good-user"), STR("actor", "ag\xff")}},
    {"set: actor not a string",
     "optout.set",
     {STR("user", "good-user"), {"actor", V_INT, NULL, 0, NULL}}},
    {"set: 257-byte reason",
     "optout.set",
     {STR("user", "good-user"), STR("actor", "agent"),
      STRN("reason", reason257, 257)}},
    {"set: empty reason",
     "optout.set",
     {STR("user", "good-user"), STR("actor", "agent"), EMPTY("reason")}},
    {"set: reason not a string",
     "optout.set",
     {STR("user", "good-user"),
      STR("actor", "agent"),
      {"reason", V_BOOL, NULL, 0, NULL}}},
    {"set: unknown argument",
     "optout.set",
     {STR("user", "good-user"), STR("actor", "agent"), STR("colour", "red")}},
    {"set: argument given twice",
     "optout.set",
     {STR("user", "good-user"), STR("user", "other-user"),
      STR("actor", "agent")}},
    {"set: user an integer",
     "optout.set",
     {{"user", V_INT, NULL, 0, NULL}, STR("actor", "agent")}},
    {"set: user nil",
     "optout.set",
     {{"user", V_NIL, NULL, 0, NULL}, STR("actor", "agent")}},
    {"set: user binary",
     "optout.set",
     {{"user", V_BIN, "good-user", 0, NULL}, STR("actor", "agent")}},
    {"set: user a list",
     "optout.set",
     {{"user", V_ARRAY, NULL, 2, good_users}, STR("actor", "agent")}},
    /* optout.clear and optout.erase change state too */
    {"clear: missing actor", "optout.clear", {STR("user", "witness")}},
    {"clear: 129-byte user",
     "optout.clear",
     {STRN("user", user129, 129), STR("actor", "agent")}},
    {"clear: unknown argument",
     "optout.clear",
     {STR("user", "witness"), STR("actor", "agent"), STR("force", "yes")}},
    {"erase: missing actor", "optout.erase", {STR("user", "witness")}},
    {"erase: invalid UTF-8 user",
     "optout.erase",
     {STR("user", "wit\xffness"), STR("actor", "agent")}},
    {"erase: reason is not an argument",
     "optout.erase",
     {STR("user", "witness"), STR("actor", "agent"), STR("reason", "gdpr")}},
    {"erase: 65-byte actor",
     "optout.erase",
     {STR("user", "witness"), STRN("actor", actor65, 65)}},
    {"get: empty user", "optout.get", {EMPTY("user")}},
    {"export: 129-byte user", "optout.export", {STRN("user", user129, 129)}},
    {"export: actor is not an argument",
     "optout.export",
     {STR("user", "witness"), STR("actor", "agent")}},
    {"count: an argument", "optout.count", {STR("user", "witness")}},
    /* optout.set_many: all or nothing */
    {"set_many: one invalid UTF-8 entry among good ones",
     "optout.set_many",
     {{"users", V_ARRAY, NULL, 4, one_bad_utf8}, STR("actor", "agent")}},
    {"set_many: one empty entry",
     "optout.set_many",
     {{"users", V_ARRAY, NULL, 3, one_empty}, STR("actor", "agent")}},
    {"set_many: one integer entry",
     "optout.set_many",
     {{"users", V_ARRAY, NULL, 2, one_int}, STR("actor", "agent")}},
    {"set_many: one 129-byte entry",
     "optout.set_many",
     {{"users", V_ARRAY, NULL, 2, one_too_long}, STR("actor", "agent")}},
    {"set_many: one entry with a NUL",
     "optout.set_many",
     {{"users", V_ARRAY, NULL, 2, one_nul}, STR("actor", "agent")}},
    {"set_many: 1001 users",
     "optout.set_many",
     {{"users", V_ARRAY, NULL, GS_BATCH_MAX + 1, many_users},
      STR("actor", "agent")}},
    {"set_many: empty list",
     "optout.set_many",
     {{"users", V_ARRAY, NULL, 0, NULL}, STR("actor", "agent")}},
    {"set_many: users a string",
     "optout.set_many",
     {STR("users", "sm-good-1"), STR("actor", "agent")}},
    {"set_many: missing users", "optout.set_many", {STR("actor", "agent")}},
    {"set_many: missing actor",
     "optout.set_many",
     {{"users", V_ARRAY, NULL, 2, good_users}}},
    {"set_many: 65-byte actor",
     "optout.set_many",
     {{"users", V_ARRAY, NULL, 2, good_users}, STRN("actor", actor65, 65)}},
    {"set_many: 257-byte reason",
     "optout.set_many",
     {{"users", V_ARRAY, NULL, 2, good_users},
      STR("actor", "agent"),
      STRN("reason", reason257, 257)}},
    {"set_many: unknown argument",
     "optout.set_many",
     {{"users", V_ARRAY, NULL, 2, good_users},
      STR("actor", "agent"),
      STR("user", "sm-good-1")}},
};

/* Packs [0, msgid, method, [{args}]] into sb. */
static void pack_request(msgpack_sbuffer *sb, uint32_t msgid,
                         const char *method, const struct value *args)
{
  msgpack_packer pk;
  size_t n = 0;

  while (n < MAX_FIELDS && args[n].key)
    n++;
  msgpack_sbuffer_clear(sb);
  msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
  msgpack_pack_array(&pk, 4);
  msgpack_pack_uint8(&pk, GS_RPC_REQUEST);
  msgpack_pack_uint32(&pk, msgid);
  msgpack_pack_str_with_body(&pk, method, strlen(method));
  msgpack_pack_array(&pk, 1);
  msgpack_pack_map(&pk, n);
  for (size_t i = 0; i < n; i++) {
    msgpack_pack_str_with_body(&pk, args[i].key, strlen(args[i].key));
    pack_value(&pk, &args[i]);
  }
}

Test(privacy, bad_input_writes_nothing)
{
  struct server d;
  struct oh_raw raw;
  msgpack_sbuffer sb;
  char msg[600];

  fill_long_texts();
  server_init(&d, NULL);
  server_start(&d);
  gs_client *a = server_admin(&d);
  optout(a, "optout.set", "witness", "agent", "first");
  optout(a, "optout.clear", "witness", "agent", NULL);
  optout(a, "optout.set", "witness", "agent", NULL);
  set(a, "bystander");
  uint64_t count0 = count(a);
  uint32_t hist0 = history_len(a, "witness");
  int64_t audit0 = oh_audit_rows(d.store);
  cr_assert_eq(count0, 2u);
  cr_assert_eq(hist0, 3u);
  cr_assert_eq(audit0, 4);

  oh_raw_open(&raw, d.admin);
  msgpack_sbuffer_init(&sb);
  for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
    const struct bad_case *c = &bad_cases[i];
    uint32_t msgid = 100 + (uint32_t)i;
    pack_request(&sb, msgid, c->method, c->args);
    cr_assert(oh_raw_exchange(&raw, sb.data, sb.size, HARNESS_CALL_MS),
              "%s: no reply", c->what);
    int code = oh_reply_error_code(&raw.reply, msgid);
    oh_reply_message(&raw.reply, msg, sizeof(msg));
    cr_expect_eq(code, GS_CODE_BAD_REQUEST,
                 "%s: expected BAD_REQUEST, got code %d (%s)", c->what, code,
                 msg);
    cr_expect_neq(msg[0], '\0', "%s: empty message", c->what);
    /* Messages never repeat a user id. */
    cr_expect(!strstr(msg, "good-user") && !strstr(msg, "witness") &&
                  !strstr(msg, "sm-good") && !strstr(msg, "uuuuuuuu"),
              "%s: the message repeats the user id: %s", c->what, msg);
    cr_expect_eq(count(a), count0, "%s: optout.count changed", c->what);
    cr_expect_eq(history_len(a, "witness"), hist0,
                 "%s: the witness's history changed", c->what);
    cr_expect(opted_out(a, "witness"), "%s: witness no longer opted out",
              c->what);
    cr_expect(!opted_out(a, "good-user") && !opted_out(a, "sm-good-1") &&
                  !opted_out(a, "sm-good-3"),
              "%s: a user was opted out", c->what);
    cr_expect_eq(oh_audit_rows(d.store), audit0, "%s: the audit table changed",
                 c->what);
  }
  /* The connection is still usable: input errors do not close it. */
  cr_assert_eq(count(a), count0);
  msgpack_sbuffer_destroy(&sb);
  oh_raw_close(&raw);
  gs_client_close(a);
  server_stop(&d);
  server_destroy(&d);
}

Test(privacy, limits_are_inclusive)
{
  struct server d;
  struct oh_raw raw;
  msgpack_sbuffer sb;

  fill_long_texts();
  server_init(&d, NULL);
  server_start(&d);
  gs_client *a = server_admin(&d), *r = server_client(&d);

  user128[128] = '\0';
  actor64[64] = '\0';
  reason256[256] = '\0';
  const msgpack_object *res =
      optout(a, "optout.set", user128, actor64, reason256);
  cr_assert(obj_get_bool(res, "changed"));
  cr_assert(opted_out(a, user128));
  gs_route_answer ans = route(r, user128, LONDON, NULL, false);
  expect_not_geolocated(&ans, "optout");
  /* Any valid UTF-8, not just ASCII. */
  set(a, "\xf0\x9f\x98\x80 caf\xc3\xa9 \xe6\x97\xa5");
  cr_assert(opted_out(a, "\xf0\x9f\x98\x80 caf\xc3\xa9 \xe6\x97\xa5"));

  /* Exactly GS_BATCH_MAX users in one set_many. */
  oh_raw_open(&raw, d.admin);
  msgpack_sbuffer_init(&sb);
  const struct value args[MAX_FIELDS] = {
      {"users", V_ARRAY, NULL, GS_BATCH_MAX, many_users},
      STR("actor", "agent")};
  pack_request(&sb, 7, "optout.set_many", args);
  cr_assert(oh_raw_exchange(&raw, sb.data, sb.size, HARNESS_CALL_MS));
  cr_assert_eq(oh_reply_error_code(&raw.reply, 7), 0, "1000 users refused");
  const msgpack_object *result = &raw.reply.via.array.ptr[3];
  cr_assert_eq(obj_get_u64(result, "added"), (uint64_t)GS_BATCH_MAX);
  cr_assert_eq(obj_get_u64(result, "already"), 0u);
  cr_assert_eq(count(a), (uint64_t)GS_BATCH_MAX + 2);
  cr_assert(opted_out(a, "batch-user-999"));
  cr_assert(!opted_out(a, "batch-user-1000"));
  /* The index grew several times during the batch; it has everyone. */
  for (int i = 0; i < GS_BATCH_MAX; i++) {
    ans = route(r, many_names[i], LONDON, NULL, false);
    cr_assert_str_eq(ans.reason, "optout", "%s is geolocated", many_names[i]);
  }
  ans = route(r, many_names[GS_BATCH_MAX], LONDON, NULL, false);
  cr_assert_str_eq(ans.reason, "city");
  msgpack_sbuffer_destroy(&sb);
  oh_raw_close(&raw);
  gs_client_close(r);
  gs_client_close(a);
  server_stop(&d);
  server_destroy(&d);
}

/* ---- routing ------------------------------------------------------------ */

Test(privacy, opted_out_users_are_not_geolocated)
{
  struct server d;
  server_init(&d, NULL);
  server_start(&d);
  gs_client *a = server_admin(&d), *r = server_client(&d);
  gs_route_answer ans;
  uint64_t g = 0;

  expect_geo_lookups(a, 0);
  ans = route(r, "route-user", LONDON, NULL, false);
  cr_assert_str_eq(ans.reason, "city");
  cr_assert_str_eq(ans.dc, "lhr");
  cr_assert_geq(ans.scope, 0);
  expect_geo_lookups(a, ++g);

  set(a, "route-user");
  ans = route(r, "route-user", LONDON, NULL, false);
  expect_not_geolocated(&ans, "optout");
  expect_order(&ans, "ams", "iad", NULL);
  ans = route(r, "route-user", FRANKFURT6, NULL, false);
  expect_not_geolocated(&ans, "optout");
  expect_order(&ans, "ams", "iad", NULL);
  ans = route(r, "route-user", NULL, NULL, false);
  expect_not_geolocated(&ans, "optout");
  /* The hint goes first when it is undrained; unknown hints are ignored. */
  ans = route(r, "route-user", LONDON, "fra", false);
  expect_not_geolocated(&ans, "optout");
  expect_order(&ans, "fra", "ams", "iad", NULL);
  ans = route(r, "route-user", LONDON, "iad", false);
  expect_order(&ans, "iad", "ams", NULL);
  ans = route(r, "route-user", LONDON, "nowhere", false);
  expect_order(&ans, "ams", "iad", NULL);
  /* no_geo does not change an opt-out's reason. */
  ans = route(r, "route-user", LONDON, NULL, true);
  expect_not_geolocated(&ans, "optout");
  expect_geo_lookups(a, g);

  gs_arg fra = {"dc", "fra", false}, ams = {"dc", "ams", false};
  admin_call(a, "dc.drain", &fra, 1);
  ans = route(r, "route-user", LONDON, "fra", false);
  expect_not_geolocated(&ans, "optout");
  expect_order(&ans, "ams", "iad", NULL);
  admin_call(a, "dc.undrain", &fra, 1);
  admin_call(a, "dc.drain", &ams, 1);
  ans = route(r, "route-user", LONDON, NULL, false);
  expect_not_geolocated(&ans, "optout");
  expect_order(&ans, "iad", NULL);
  admin_call(a, "dc.undrain", &ams, 1);
  expect_geo_lookups(a, g);

  /* no_geo for anyone: nogeo, the default order, no lookup. */
  ans = route(r, "someone-else", LONDON, NULL, true);
  expect_not_geolocated(&ans, "nogeo");
  expect_order(&ans, "ams", "iad", NULL);
  ans = route(r, NULL, LONDON, "lhr", true);
  expect_not_geolocated(&ans, "nogeo");
  expect_order(&ans, "lhr", "ams", "iad", NULL);
  expect_geo_lookups(a, g);

  /* Everyone else is geolocated, one lookup each. */
  ans = route(r, "someone-else", LONDON, NULL, false);
  cr_assert_str_eq(ans.reason, "city");
  expect_geo_lookups(a, ++g);
  ans = route(r, NULL, FRANKFURT6, NULL, false);
  cr_assert_str_eq(ans.dc, "fra");
  cr_assert_geq(ans.scope, 0);
  expect_geo_lookups(a, ++g);

  clear(a, "route-user");
  ans = route(r, "route-user", LONDON, NULL, false);
  cr_assert_str_eq(ans.reason, "city");
  cr_assert_geq(ans.scope, 0);
  expect_geo_lookups(a, ++g);

  /* A bad user in a route request is an error, not a silent geolocation. */
  gs_remote_error err = {0};
  char long_user[GS_USER_MAX + 2];
  memset(long_user, 'x', sizeof(long_user) - 1);
  long_user[sizeof(long_user) - 1] = '\0';
  cr_assert_eq(gs_route(r, long_user, LONDON, NULL, false, NULL, &ans, &err),
               GS_ERR_REMOTE);
  cr_assert_eq(err.code, GS_CODE_BAD_REQUEST);
  cr_assert_eq(gs_route(r, "bad\xff", LONDON, NULL, false, NULL, &ans, &err),
               GS_ERR_REMOTE);
  cr_assert_eq(err.code, GS_CODE_BAD_REQUEST);
  expect_geo_lookups(a, g);
  gs_client_close(r);
  gs_client_close(a);
  server_stop(&d);
  server_destroy(&d);
}

/*
 * Pipelined requests have their users hashed ahead of handling (to warm
 * the opt-out index) and reuse those hashes: every request must still get
 * its own user's answer, also around a refused request and one without a
 * user, and whatever position a user takes in the batch.
 */
Test(privacy, pipelined_users_each_get_their_own_answer)
{
  static const char *const users[] = {"p-in-0", "p-out-1", "p-in-2",  "p-out-3",
                                      NULL,     "p-in-5",  "p-out-1", "p-in-0"};
  const size_t n = sizeof(users) / sizeof(users[0]);
  struct server d;
  msgpack_sbuffer sb;
  msgpack_packer pk;
  struct rbuf in = {0};
  struct replies r;
  int fd, end;

  server_init(&d, NULL);
  server_start(&d);
  gs_client *a = server_admin(&d);
  set(a, "p-out-1");
  set(a, "p-out-3");
  fd = raw_connect(&d);
  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  for (size_t i = 0; i < n; i++) {
    bool refused = i == 5; /* a bad session, refused before the user */
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, GS_RPC_REQUEST);
    msgpack_pack_uint32(&pk, (uint32_t)i);
    pack_cstr(&pk, "route");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_map(&pk, 1 + (users[i] != NULL) + refused);
    if (refused) {
      pack_cstr(&pk, "session");
      pack_cstr(&pk, "not a session!");
    }
    if (users[i]) {
      pack_cstr(&pk, "user");
      pack_cstr(&pk, users[i]);
    }
    pack_cstr(&pk, "ip");
    pack_cstr(&pk, LONDON);
  }
  cr_assert_eq(send(fd, sb.data, sb.size, MSG_NOSIGNAL), (ssize_t)sb.size);
  end = raw_exchange(fd, NULL, 0, &in, n, HARNESS_IO_WAIT_MS, NULL);
  cr_assert_eq(end, RAW_REPLIES, "%s after %zu bytes", raw_end_name(end),
               in.len);
  replies_parse(&r, in.data, in.len);
  cr_assert_eq(r.n, n);
  for (size_t i = 0; i < n; i++) {
    if (i == 5) {
      cr_assert_null(error_reply_problem(&r.obj[i], 5, GS_CODE_BAD_REQUEST));
      continue;
    }
    const msgpack_object *res = result_of(&r.obj[i], (uint32_t)i);
    bool out = users[i] && strncmp(users[i], "p-out", 5) == 0;
    cr_assert_not_null(res, "reply %zu", i);
    cr_assert(obj_is_str(obj_get(res, "reason"), out ? "optout" : "city"),
              "reply %zu (user %s)", i, users[i] ? users[i] : "none");
  }
  replies_free(&r);
  close(fd);
  rbuf_free(&in);
  msgpack_sbuffer_destroy(&sb);
  gs_client_close(a);
  server_stop(&d);
  server_destroy(&d);
}

Test(privacy, anonymous_nogeo_skips_geolocation_without_a_user)
{
  struct server d;
  server_init(&d, &(struct server_opts){.extra = "anonymous: nogeo"});
  server_start(&d);
  gs_client *a = server_admin(&d), *r = server_client(&d);
  gs_route_answer ans;

  ans = route(r, NULL, LONDON, NULL, false);
  expect_not_geolocated(&ans, "nogeo");
  expect_order(&ans, "ams", "iad", NULL);
  ans = route(r, NULL, FRANKFURT6, "sjc", false);
  expect_not_geolocated(&ans, "nogeo");
  expect_order(&ans, "sjc", "ams", "iad", NULL);
  expect_geo_lookups(a, 0);

  ans = route(r, "known-user", LONDON, NULL, false);
  cr_assert_str_eq(ans.reason, "city");
  cr_assert_geq(ans.scope, 0);
  expect_geo_lookups(a, 1);

  set(a, "known-user");
  ans = route(r, "known-user", LONDON, NULL, false);
  expect_not_geolocated(&ans, "optout");
  expect_geo_lookups(a, 1);
  gs_client_close(r);
  gs_client_close(a);
  server_stop(&d);
  server_destroy(&d);
}

/* ---- failing closed ----------------------------------------------------- */

/* Every route request answers optout, without a lookup. */
static void expect_fail_closed(struct server *d, gs_client *a, gs_client *r)
{
  gs_route_answer ans;
  gs_arg user = {"user", "closed-user", false};
  gs_arg actor = {"actor", "agent", false};
  gs_arg both[] = {user, actor};
  static const char *const users[] = {"closed-user"};
  const msgpack_object *res;
  gs_remote_error err = {0};
  bool healthy = true;

  cr_assert_eq(oh_geo_lookups(a, &healthy), 0u);
  cr_assert(!healthy, "stats.store.healthy is true");
  ans = route(r, NULL, LONDON, NULL, false);
  expect_not_geolocated(&ans, "optout");
  expect_order(&ans, "ams", "iad", NULL);
  ans = route(r, "closed-user", LONDON, NULL, false);
  expect_not_geolocated(&ans, "optout");
  ans = route(r, "closed-user", FRANKFURT6, "fra", false);
  expect_not_geolocated(&ans, "optout");
  expect_order(&ans, "fra", "ams", "iad", NULL);
  ans = route(r, NULL, NULL, NULL, false);
  expect_not_geolocated(&ans, "optout");
  ans = route(r, NULL, LONDON, NULL, true);
  expect_not_geolocated(&ans, "optout");
  expect_geo_lookups(a, 0);

  expect_error(a, "optout.set", both, 2, GS_CODE_STORE_UNAVAILABLE);
  expect_error(a, "optout.clear", both, 2, GS_CODE_STORE_UNAVAILABLE);
  expect_error(a, "optout.erase", both, 2, GS_CODE_STORE_UNAVAILABLE);
  expect_error(a, "optout.get", &user, 1, GS_CODE_STORE_UNAVAILABLE);
  expect_error(a, "optout.export", &user, 1, GS_CODE_STORE_UNAVAILABLE);
  expect_error(a, "optout.count", NULL, 0, GS_CODE_STORE_UNAVAILABLE);
  cr_assert_eq(gs_client_call_users(a, "optout.set_many", users, 1, "agent",
                                    NULL, &res, &err),
               GS_ERR_REMOTE);
  cr_assert_eq(err.code, GS_CODE_STORE_UNAVAILABLE);

  if (d->metrics_port) {
    char *m = http_get(d->metrics_port, "/metrics");
    cr_assert(strstr(m, "\ngeosteer_store_healthy 0\n"), "%s", m);
    free(m);
  }
}

/* Waits (up to 20 s) for the store to become healthy again. */
static void expect_recovery(struct server *d, gs_client *a, gs_client *r)
{
  int64_t deadline = harness_now_ms() + 20000;
  gs_route_answer ans;

  while (!store_healthy(a)) {
    if (harness_now_ms() > deadline) {
      char *log = server_log(d);
      cr_assert_fail("the store did not recover within 20 s:\n%s", log);
    }
    harness_sleep_ms(100);
  }
  ans = route(r, "closed-user", LONDON, NULL, false);
  cr_assert_str_eq(ans.reason, "city");
  cr_assert_geq(ans.scope, 0);
  expect_geo_lookups(a, 1);
  set(a, "closed-user");
  ans = route(r, "closed-user", LONDON, NULL, false);
  expect_not_geolocated(&ans, "optout");
  cr_assert_eq(count(a), 1u);
  if (d->metrics_port) {
    char *m = http_get(d->metrics_port, "/metrics");
    cr_assert(strstr(m, "\ngeosteer_store_healthy 1\n"), "%s", m);
    free(m);
  }
}

/* geosteerd -t on d's config: its exit status, output in out. */
static int check_config(const struct server *d, char *out, size_t size)
{
  char cmd[1024];
  snprintf(cmd, sizeof(cmd), "'%s' -t -c '%s'", harness_daemon_path(),
           d->config);
  return run_command(cmd, out, size);
}

Test(privacy, missing_store_folder_fails_closed_then_recovers)
{
  struct server d;
  struct server_opts o = {.listen = "  metrics: \"127.0.0.1:0\""};
  char out[8192], folder[HARNESS_PATH_MAX / 2 + 16];

  server_init(&d, &o);
  snprintf(folder, sizeof(folder), "%s/not-yet", d.dir);
  snprintf(d.store, sizeof(d.store), "%s/geosteer.db", folder);
  snprintf(d.key, sizeof(d.key), "%s/geosteer.key", folder);
  server_write_config(&d, &o);

  server_start(&d);
  gs_client *a = server_admin(&d), *r = server_client(&d);
  expect_fail_closed(&d, a, r);
  char *log = server_log(&d);
  cr_assert(strstr(log, "event=store_unavailable"), "%s", log);
  free(log);

  int st = check_config(&d, out, sizeof(out));
  cr_assert_eq(st, 1, "geosteerd -t exited %d:\n%s", st, out);
  cr_assert(strstr(out, "not-yet/geosteer.db"),
            "-t does not name the store:\n%s", out);

  cr_assert_eq(mkdir(folder, 0700), 0);
  expect_recovery(&d, a, r);
  st = check_config(&d, out, sizeof(out));
  cr_assert_eq(st, 0, "geosteerd -t exited %d once the store is back:\n%s", st,
               out);
  gs_client_close(r);
  gs_client_close(a);
  server_stop(&d);
  server_destroy(&d);
}

Test(privacy, store_that_is_not_a_database_fails_closed_then_recovers)
{
  static const char text[] = "this file is not an SQLite database\n"
                             "but a few lines of text\n";
  struct server d;
  struct server_opts o = {.listen = "  metrics: \"127.0.0.1:0\""};
  char out[8192], fresh[HARNESS_PATH_MAX];

  server_init(&d, &o);
  /* A damaged store whose key survived (a key is only made with a new
   * store: with the store present and no key the daemon would wait for
   * the key to be restored instead). */
  harness_write_bytes(d.store, text, sizeof(text) - 1);
  harness_write_bytes(d.key, "00112233445566778899aabbccddeeff\n", 33);
  server_start(&d);
  gs_client *a = server_admin(&d), *r = server_client(&d);
  expect_fail_closed(&d, a, r);

  int st = check_config(&d, out, sizeof(out));
  cr_assert_eq(st, 1, "geosteerd -t exited %d:\n%s", st, out);
  cr_assert(strstr(out, "geosteer.db"), "-t does not name the store:\n%s", out);

  /* Replace the file (atomically) with an empty one: a valid database. */
  snprintf(fresh, sizeof(fresh), "%s/fresh.db", d.dir);
  harness_write_bytes(fresh, "", 0);
  cr_assert_eq(rename(fresh, d.store), 0);
  expect_recovery(&d, a, r);
  gs_client_close(r);
  gs_client_close(a);
  server_stop(&d);
  server_destroy(&d);
}

/*
 * Every request gets exactly one reply, whatever the store's state:
 * optout.count with an argument while the store is down must still be
 * answered (with an error).
 */
Test(privacy, count_with_an_argument_is_answered_while_the_store_is_down)
{
  struct server d;
  struct oh_raw raw;
  msgpack_sbuffer sb;
  char msg[600];

  server_init(&d, NULL);
  snprintf(d.store, sizeof(d.store), "%s/absent/geosteer.db", d.dir);
  snprintf(d.key, sizeof(d.key), "%s/absent/geosteer.key", d.dir);
  server_write_config(&d, NULL);
  server_start(&d);
  oh_raw_open(&raw, d.admin);
  msgpack_sbuffer_init(&sb);
  const struct value args[MAX_FIELDS] = {STR("user", "someone")};
  pack_request(&sb, 5, "optout.count", args);
  bool answered = oh_raw_exchange(&raw, sb.data, sb.size, 3000);
  cr_expect(answered, "optout.count {user} got no reply while the store is "
                      "down");
  if (answered) {
    int code = oh_reply_error_code(&raw.reply, 5);
    oh_reply_message(&raw.reply, msg, sizeof(msg));
    cr_expect(code == GS_CODE_BAD_REQUEST || code == GS_CODE_STORE_UNAVAILABLE,
              "code %d: %s", code, msg);
  }
  msgpack_sbuffer_destroy(&sb);
  oh_raw_close(&raw);
  server_stop(&d);
  server_destroy(&d);
}

/* ---- restarts, the key, retention --------------------------------------- */

/* stats.store.optouts: the size of the daemon's index. */
static uint64_t index_count(gs_client *a)
{
  return obj_get_u64(obj_get(admin_call(a, "stats", NULL, 0), "store"),
                     "optouts");
}

Test(privacy, optouts_survive_a_restart_and_a_lost_key_fails_closed)
{
  struct server d;
  char keys[HARNESS_PATH_MAX / 2 + 16], keyfile[HARNESS_PATH_MAX],
      saved[HARNESS_PATH_MAX], out[8192];
  char lines[HARNESS_PATH_MAX + 32];
  static const char *const batch[] = {"persist-2", "persist-3"};
  const msgpack_object *res;
  gs_remote_error err = {0};
  gs_route_answer ans;
  struct stat st;

  server_init(&d, NULL);
  snprintf(keys, sizeof(keys), "%s/keys", d.dir);
  cr_assert_eq(mkdir(keys, 0700), 0);
  snprintf(keyfile, sizeof(keyfile), "%s/custom.key", keys);
  snprintf(saved, sizeof(saved), "%s/custom.key.saved", d.dir);
  snprintf(lines, sizeof(lines), "  key_file: %s", keyfile);
  struct server_opts o = {.store = lines};
  server_write_config(&d, &o);

  server_start(&d);
  gs_client *a = server_admin(&d), *r = server_client(&d);
  set(a, "persist-1");
  cr_assert_eq(gs_client_call_users(a, "optout.set_many", batch, 2, "agent",
                                    NULL, &res, &err),
               0, "%s", err.message);
  set(a, "persist-4");
  clear(a, "persist-4");
  cr_assert_eq(stat(keyfile, &st), 0, "no key at store.key_file");
  cr_assert_eq(st.st_mode & 0777, 0600, "key mode %o", st.st_mode & 0777);
  cr_assert_neq(access(d.key, F_OK), 0, "a key beside the store as well");
  gs_client_close(r);
  gs_client_close(a);
  server_stop(&d);

  /* Restarted: the index is loaded from the store, with the same key. */
  server_start(&d);
  a = server_admin(&d);
  r = server_client(&d);
  cr_assert(store_healthy(a));
  cr_assert_eq(count(a), 3u);
  cr_assert_eq(index_count(a), 3u);
  for (int i = 1; i <= 3; i++) {
    char user[32];
    snprintf(user, sizeof(user), "persist-%d", i);
    ans = route(r, user, LONDON, NULL, false);
    cr_assert_str_eq(ans.reason, "optout", "%s geolocated after a restart",
                     user);
  }
  ans = route(r, "persist-4", LONDON, NULL, false);
  cr_assert_str_eq(ans.reason, "city");
  gs_client_close(r);
  gs_client_close(a);
  server_stop(&d);

  /* The key is lost: the daemon must not make a new one (it would match
   * none of the stored opt-outs); it fails closed until it is restored. */
  cr_assert_eq(rename(keyfile, saved), 0);
  server_start(&d);
  a = server_admin(&d);
  r = server_client(&d);
  cr_assert(!store_healthy(a), "started healthy without its key");
  ans = route(r, "persist-1", LONDON, NULL, false);
  expect_not_geolocated(&ans, "optout");
  ans = route(r, "someone-else", LONDON, NULL, false);
  expect_not_geolocated(&ans, "optout");
  expect_geo_lookups(a, 0);
  cr_assert_neq(access(keyfile, F_OK), 0, "a new key was made");
  char *log = server_log(&d);
  cr_assert(strstr(log, "custom.key"), "the log does not name the key:\n%s",
            log);
  free(log);
  int rc = check_config(&d, out, sizeof(out));
  cr_assert_eq(rc, 1, "geosteerd -t exited %d without the key:\n%s", rc, out);
  cr_assert(strstr(out, "custom.key"), "-t does not name the key:\n%s", out);

  cr_assert_eq(rename(saved, keyfile), 0);
  int64_t deadline = harness_now_ms() + 20000;
  while (!store_healthy(a)) {
    cr_assert_leq(harness_now_ms(), deadline,
                  "no recovery after the key came back");
    harness_sleep_ms(100);
  }
  ans = route(r, "persist-1", LONDON, NULL, false);
  expect_not_geolocated(&ans, "optout");
  ans = route(r, "someone-else", LONDON, NULL, false);
  cr_assert_str_eq(ans.reason, "city");
  cr_assert_eq(index_count(a), 3u);
  gs_client_close(r);
  gs_client_close(a);
  server_stop(&d);
  server_destroy(&d);
}

/* Runs sql on the (stopped daemon's) store with sqlite3. */
static void store_exec(const char *store, const char *sql)
{
  sqlite3 *db = NULL;
  char *msg = NULL;

  cr_assert_eq(sqlite3_open_v2(store, &db, SQLITE_OPEN_READWRITE, NULL),
               SQLITE_OK);
  int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
  cr_assert_eq(rc, SQLITE_OK, "%s: %s", sql, msg ? msg : "");
  sqlite3_free(msg);
  sqlite3_close(db);
}

Test(privacy, old_audit_events_are_purged_at_start)
{
  struct server d;
  char sql[512];
  int64_t now = (int64_t)time(NULL);

  server_init(&d, NULL);
  server_start(&d);
  gs_client *a = server_admin(&d);
  set(a, "recent-user");
  gs_client_close(a);
  server_stop(&d);
  snprintf(sql, sizeof(sql),
           "INSERT INTO audit(uid, at, action, actor) VALUES "
           "(zeroblob(16), %lld, 'set', 'old'), "
           "(zeroblob(16), %lld, 'clear', 'old'), "
           "(zeroblob(16), %lld, 'set', 'half-a-day')",
           (long long)(now - 3 * 86400), (long long)(now - 2 * 86400),
           (long long)(now - 43200));
  store_exec(d.store, sql);
  cr_assert_eq(oh_audit_rows(d.store), 4);

  server_write_config(
      &d, &(struct server_opts){.store = "  audit_retention_days: 1"});
  server_start(&d);
  cr_assert_eq(oh_audit_rows(d.store), 2, "events older than a day remain");
  char *log = server_log(&d);
  cr_assert(strstr(log, "event=audit_purged events=2 retention_days=1"), "%s",
            log);
  free(log);
  a = server_admin(&d);
  cr_assert_eq(history_len(a, "recent-user"), 1u);
  cr_assert(opted_out(a, "recent-user"), "purging removed an opt-out");
  gs_client_close(a);
  server_stop(&d);
  server_destroy(&d);
}

/* ---- changes take effect at once ---------------------------------------- */

#define IMMEDIACY_ROUNDS 10000
#define IMMEDIACY_USERS 4

Test(privacy, set_and_clear_take_effect_immediately)
{
  struct server d;
  server_init(&d, NULL);
  server_start(&d);
  gs_client *a = server_admin(&d), *r = server_client(&d);
  char users[IMMEDIACY_USERS][32];
  int after_set = 0, after_clear = 0;

  for (int u = 0; u < IMMEDIACY_USERS; u++)
    snprintf(users[u], sizeof(users[u]), "immediate-%d", u);
  for (int i = 0; i < IMMEDIACY_ROUNDS; i++) {
    const char *user = users[i % IMMEDIACY_USERS];
    gs_route_answer ans;
    gs_remote_error err = {0};
    const msgpack_object *res;
    gs_arg args[] = {{"user", user, false}, {"actor", "agent", false}};

    cr_assert_eq(gs_client_call(a, "optout.set", args, 2, &res, &err), 0,
                 "round %d: set: %s", i, err.message);
    cr_assert_eq(gs_route(r, user, LONDON, NULL, false, NULL, &ans, &err), 0);
    after_set += strcmp(ans.reason, "optout") != 0;
    cr_assert_eq(gs_client_call(a, "optout.clear", args, 2, &res, &err), 0,
                 "round %d: clear: %s", i, err.message);
    cr_assert_eq(gs_route(r, user, LONDON, NULL, false, NULL, &ans, &err), 0);
    after_clear += strcmp(ans.reason, "city") != 0;
  }
  cr_assert_eq(after_set + after_clear, 0,
               "%d geolocated after an acknowledged set, %d not geolocated "
               "after an acknowledged clear, in %d rounds",
               after_set, after_clear, IMMEDIACY_ROUNDS);
  cr_assert_eq(count(a), 0u);
  cr_assert_eq(history_len(a, users[0]),
               2u * IMMEDIACY_ROUNDS / IMMEDIACY_USERS);
  gs_client_close(r);
  gs_client_close(a);
  server_stop(&d);
  server_destroy(&d);
}

/* ---- raw ids and addresses stay out of files ---------------------------- */

#define RAW_PREFIX "raw-test-user-7f3a-"
#define RAW_USERS 20

static void raw_id(int n, char *buf, size_t size)
{
  snprintf(buf, size, RAW_PREFIX "%d", n);
}

/* Fails when any raw id, or the prefix, is in the file at path. */
static void expect_no_raw_ids(const char *path, const char *what)
{
  char id[64];
  if (access(path, F_OK) != 0)
    return;
  cr_assert(!oh_file_contains(path, RAW_PREFIX, strlen(RAW_PREFIX)),
            "a raw user id is in the %s (%s)", what, path);
  for (int n = 0; n < RAW_USERS; n++) {
    raw_id(n, id, sizeof(id));
    cr_assert(!oh_file_contains(path, id, strlen(id)), "%s is in the %s", id,
              what);
  }
}

static void expect_store_files_clean(const struct server *d)
{
  char path[HARNESS_PATH_MAX + 8];
  expect_no_raw_ids(d->store, "store");
  snprintf(path, sizeof(path), "%s-wal", d->store);
  expect_no_raw_ids(path, "store's WAL");
  snprintf(path, sizeof(path), "%s-shm", d->store);
  expect_no_raw_ids(path, "store's shared memory file");
  snprintf(path, sizeof(path), "%s-journal", d->store);
  expect_no_raw_ids(path, "store's journal");
}

Test(privacy, raw_ids_and_addresses_never_reach_disk_or_the_log)
{
  struct server d;
  char id[64], out[16384], file[HARNESS_PATH_MAX + 16], args[1024];
  struct oh_raw raw;
  msgpack_sbuffer sb;

  fill_long_texts();
  server_init(&d, NULL);
  server_start(&d);
  gs_client *a = server_admin(&d), *r = server_client(&d);

  for (int n = 0; n < 10; n++) {
    raw_id(n, id, sizeof(id));
    optout(a, "optout.set", id, "grep-agent", "grep reason");
  }
  for (int n = 0; n < 5; n++) {
    raw_id(n, id, sizeof(id));
    clear(a, id);
  }
  for (int n = 0; n < 10; n++) {
    raw_id(n, id, sizeof(id));
    history_len(a, id);
    opted_out(a, id);
  }
  for (int n = 5; n < 8; n++) {
    raw_id(n, id, sizeof(id));
    optout(a, "optout.erase", id, "grep-agent", NULL);
  }
  char names[6][64];
  const char *batch[6];
  for (int i = 0; i < 5; i++) {
    raw_id(10 + i, names[i], sizeof(names[i]));
    batch[i] = names[i];
  }
  batch[5] = names[0];
  const msgpack_object *res;
  gs_remote_error err = {0};
  cr_assert_eq(gs_client_call_users(a, "optout.set_many", batch, 6,
                                    "grep-agent", NULL, &res, &err),
               0, "%s", err.message);
  /* Through the CLI's import too. */
  snprintf(file, sizeof(file), "%s/list.txt", d.dir);
  FILE *f = fopen(file, "w");
  cr_assert_not_null(f);
  for (int n = 15; n < RAW_USERS; n++) {
    raw_id(n, id, sizeof(id));
    fprintf(f, "%s\n", id);
  }
  fclose(f);
  snprintf(args, sizeof(args), "optout import '%s' --actor grep-agent", file);
  cr_assert_eq(cli(&d, args, out, sizeof(out)), 0, "%s", out);
  unlink(file);

  /* Bad requests that carry raw ids. */
  oh_raw_open(&raw, d.admin);
  msgpack_sbuffer_init(&sb);
  raw_id(3, id, sizeof(id));
  const struct value bad_reason[MAX_FIELDS] = {STR("user", id),
                                               STR("actor", "grep-agent"),
                                               STRN("reason", reason257, 257)};
  pack_request(&sb, 1, "optout.set", bad_reason);
  cr_assert(oh_raw_exchange(&raw, sb.data, sb.size, HARNESS_CALL_MS));
  cr_assert_eq(oh_reply_error_code(&raw.reply, 1), GS_CODE_BAD_REQUEST);
  const struct value bad_batch_users[] = {STR(NULL, id),
                                          STR(NULL, RAW_PREFIX "x\xff")};
  const struct value bad_batch[MAX_FIELDS] = {
      {"users", V_ARRAY, NULL, 2, bad_batch_users}, STR("actor", "grep-agent")};
  pack_request(&sb, 2, "optout.set_many", bad_batch);
  cr_assert(oh_raw_exchange(&raw, sb.data, sb.size, HARNESS_CALL_MS));
  cr_assert_eq(oh_reply_error_code(&raw.reply, 2), GS_CODE_BAD_REQUEST);
  msgpack_sbuffer_destroy(&sb);
  oh_raw_close(&raw);

  /* Route every user from both addresses, opted out or not. */
  for (int n = 0; n < RAW_USERS; n++) {
    raw_id(n, id, sizeof(id));
    route(r, id, LONDON, NULL, false);
    route(r, id, FRANKFURT6, NULL, false);
    route(r, id, FRANKFURT6, NULL, true);
  }
  route(r, NULL, LONDON, NULL, false);
  route(r, NULL, FRANKFURT6, NULL, false);
  cr_assert_eq(count(a), 15u, "10 set - 5 cleared + 5 batch + 5 imported");

  /* While running (the WAL goes away at a clean shutdown), then after. */
  expect_store_files_clean(&d);
  gs_client_close(r);
  gs_client_close(a);
  server_stop(&d);
  expect_store_files_clean(&d);
  expect_no_raw_ids(d.log, "daemon's log");
  cr_assert(!oh_file_contains(d.log, LONDON, strlen(LONDON)),
            "81.2.69.5 is in the log");
  cr_assert(!oh_file_contains(d.log, FRANKFURT6, strlen(FRANKFURT6)),
            "2a02:1000::1234 is in the log");
  /* The log is not simply empty: the changes were logged, without ids. */
  cr_assert(oh_file_contains(d.log, "event=optout_set", 16));
  cr_assert(oh_file_contains(d.log, "event=optout_history_erased", 27));
  server_destroy(&d);
}

/* ---- the CLI ------------------------------------------------------------ */

Test(privacy, cli_optout_commands)
{
  struct server d;
  char out[16384];
  int st;

  server_init(&d, NULL);
  server_start(&d);

  st = cli(&d, "optout set cli-user-1 --actor agent-cli --reason 'by phone'",
           out, sizeof(out));
  cr_assert_eq(st, 0, "%s", out);
  cr_assert(strstr(out, "opted_out: true\n"), "%s", out);
  cr_assert(strstr(out, "changed: true\n"), "%s", out);
  cr_assert(strstr(out, "since: "), "%s", out);
  st = cli(&d, "optout set cli-user-1 --actor agent-cli", out, sizeof(out));
  cr_assert_eq(st, 0, "%s", out);
  cr_assert(strstr(out, "changed: false\n"), "%s", out);

  st = cli(&d, "optout get cli-user-1", out, sizeof(out));
  cr_assert_eq(st, 0, "%s", out);
  cr_assert(strstr(out, "opted_out: true\n"), "%s", out);

  st = cli(&d, "optout export cli-user-1 --json", out, sizeof(out));
  cr_assert_eq(st, 0, "%s", out);
  cr_assert(!strncmp(out, "{\"opted_out\":true,\"since\":", 26), "%s", out);
  cr_assert(strstr(out, "\"history\":[{\"at\":"), "%s", out);
  cr_assert(strstr(out, "\"action\":\"set\",\"actor\":\"agent-cli\","
                        "\"reason\":\"by phone\"}]}\n"),
            "%s", out);

  st = cli(&d, "optout count", out, sizeof(out));
  cr_assert_eq(st, 0, "%s", out);
  cr_assert_str_eq(out, "count: 1\n");
  st = cli(&d, "--json optout count", out, sizeof(out));
  cr_assert_str_eq(out, "{\"count\":1}\n");

  st = cli(&d, "optout erase cli-user-1 --actor agent-dpo", out, sizeof(out));
  cr_assert_eq(st, 0, "%s", out);
  cr_assert(strstr(out, "erased_events: 1\n"), "%s", out);
  cr_assert(strstr(out, "opted_out: true\n"), "%s", out);
  st = cli(&d, "optout export cli-user-1 --json", out, sizeof(out));
  cr_assert(strstr(out, "\"history\":[]}"), "%s", out);

  st = cli(&d, "optout clear cli-user-1 --actor agent-cli", out, sizeof(out));
  cr_assert_eq(st, 0, "%s", out);
  cr_assert(strstr(out, "opted_out: false\n"), "%s", out);
  cr_assert(strstr(out, "changed: true\n"), "%s", out);

  /* Usage errors: 2; error replies: 1, without echoing the id. */
  cr_assert_eq(cli(&d, "optout set cli-user-1", out, sizeof(out)), 2, "%s",
               out);
  cr_assert_eq(cli(&d, "optout get", out, sizeof(out)), 2, "%s", out);
  cr_assert_eq(cli(&d, "optout get u --actor x", out, sizeof(out)), 2, "%s",
               out);
  cr_assert_eq(cli(&d, "optout frobnicate u", out, sizeof(out)), 2, "%s", out);
  cr_assert_eq(cli(&d, "optout import", out, sizeof(out)), 2, "%s", out);
  char args[512], long_id[GS_USER_MAX + 2];
  memset(long_id, 'w', sizeof(long_id) - 1);
  long_id[sizeof(long_id) - 1] = '\0';
  snprintf(args, sizeof(args), "optout set %s --actor a", long_id);
  st = cli(&d, args, out, sizeof(out));
  cr_assert_eq(st, 1, "%s", out);
  cr_assert(strstr(out, "BAD_REQUEST (1)"), "%s", out);
  cr_assert(!strstr(out, "wwwwwwww"), "the error echoes the id: %s", out);
  gs_client *a = server_admin(&d);
  cr_assert_eq(count(a), 0u);
  gs_client_close(a);
  server_stop(&d);
  server_destroy(&d);
}

Test(privacy, cli_import_counts_and_reports_bad_lines)
{
  struct server d;
  char out[16384], args[1024], file[HARNESS_PATH_MAX + 16], expect[1024];
  char q200[201];
  int st;

  server_init(&d, NULL);
  server_start(&d);
  memset(q200, 'q', 200);
  q200[200] = '\0';
  /*
   * 1 imp-user-a   2 imp-user-b   3 (blank)   4 imp-user-a (duplicate)
   * 5 200 bytes    6 invalid UTF-8             7 imp-user-c
   * 8 imp-user-d with CRLF
   */
  char content[1024];
  int len = snprintf(content, sizeof(content),
                     "imp-user-a\nimp-user-b\n\nimp-user-a\n%s\n"
                     "imp-\xff\xfe-zz\nimp-user-c\nimp-user-d\r\n",
                     q200);
  snprintf(file, sizeof(file), "%s/users.txt", d.dir);
  harness_write_bytes(file, content, (size_t)len);

  snprintf(args, sizeof(args), "optout import '%s' --actor agent-bulk", file);
  st = cli(&d, args, out, sizeof(out));
  cr_assert_eq(st, 1, "bad lines must make the import exit 1:\n%s", out);
  snprintf(expect, sizeof(expect),
           "%s: 8 lines: 4 opted out now, 1 already opted out, 1 blank, 2 "
           "bad\n",
           file);
  cr_assert(strstr(out, expect), "expected \"%s\" in:\n%s", expect, out);
  snprintf(expect, sizeof(expect), "%s:5: not a user id", file);
  cr_assert(strstr(out, expect), "line 5 not reported:\n%s", out);
  snprintf(expect, sizeof(expect), "%s:6: not a user id", file);
  cr_assert(strstr(out, expect), "line 6 not reported:\n%s", out);
  snprintf(expect, sizeof(expect), "%s:4:", file);
  cr_assert(!strstr(out, expect), "a duplicate reported as bad:\n%s", out);
  cr_assert(!strstr(out, "qqqqqqqq"), "the long line is echoed:\n%s", out);
  cr_assert(!strstr(out, "-zz") && !strstr(out, "\xff"),
            "the invalid line is echoed:\n%s", out);

  gs_client *a = server_admin(&d);
  cr_assert_eq(count(a), 4u);
  cr_assert(opted_out(a, "imp-user-a") && opted_out(a, "imp-user-b") &&
            opted_out(a, "imp-user-c"));
  cr_assert(opted_out(a, "imp-user-d"), "the CR was kept in the id");
  cr_assert_eq(history_len(a, "imp-user-a"), 1u);

  /* Again: idempotent. */
  st = cli(&d, args, out, sizeof(out));
  cr_assert_eq(st, 1, "%s", out);
  snprintf(expect, sizeof(expect),
           "%s: 8 lines: 0 opted out now, 5 already opted out, 1 blank, 2 "
           "bad\n",
           file);
  cr_assert(strstr(out, expect), "expected \"%s\" in:\n%s", expect, out);
  snprintf(args, sizeof(args), "--json optout import '%s' --actor agent-bulk",
           file);
  st = cli(&d, args, out, sizeof(out));
  cr_assert_eq(st, 1, "%s", out);
  cr_assert(strstr(out, "{\"lines\":8,\"added\":0,\"already\":5,\"blank\":1,"
                        "\"bad\":2,\"complete\":true}\n"),
            "%s", out);
  cr_assert_eq(count(a), 4u);
  cr_assert_eq(history_len(a, "imp-user-a"), 1u);

  /* A clean file over several batches, a duplicate across batches: 0. */
  FILE *f = fopen(file, "w");
  cr_assert_not_null(f);
  for (int i = 0; i < 1200; i++)
    fprintf(f, "bulk-%d\n", i);
  fprintf(f, "bulk-0\n");
  fclose(f);
  snprintf(args, sizeof(args), "optout import '%s' --actor agent-bulk", file);
  st = cli(&d, args, out, sizeof(out));
  cr_assert_eq(st, 0, "%s", out);
  snprintf(expect, sizeof(expect),
           "%s: 1201 lines: 1200 opted out now, 1 already opted out, 0 "
           "blank, 0 bad\n",
           file);
  cr_assert(strstr(out, expect), "expected \"%s\" in:\n%s", expect, out);
  cr_assert_eq(count(a), 1204u);

  snprintf(args, sizeof(args), "optout import '%s/nope.txt' --actor x", d.dir);
  cr_assert_eq(cli(&d, args, out, sizeof(out)), 1, "%s", out);
  gs_client_close(a);
  server_stop(&d);
  server_destroy(&d);
}

/* ---- kill -9 ------------------------------------------------------------ */

/* A short run of tests/crash/optout_crash.c; make crash-test runs more. */
Test(privacy, crash_harness_short_run)
{
  const char *crash = getenv("GS_CRASH");
  char db[PATH_MAX], map[PATH_MAX], cmd[4 * PATH_MAX], out[16384];

  if (crash == NULL)
    cr_skip_test("GS_CRASH is not set (make test sets it)");
  harness_fixture("tests/fixtures/city-test.mmdb", db);
  harness_fixture("tests/fixtures/maps/test-map.yaml", map);
  snprintf(cmd, sizeof(cmd),
           "'%s' --acks 200 --kills 3 --daemon '%s' --db '%s' --map '%s'",
           crash, harness_daemon_path(), db, map);
  int st = run_command(cmd, out, sizeof(out));
  cr_assert_eq(st, 0, "crash harness exited %d:\n%s", st, out);
  cr_assert(strstr(out, " lost=0 integrity=ok"), "%s", out);
}
