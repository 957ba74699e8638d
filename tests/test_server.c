/*
 * Tests for geosteerd as a whole, driven from outside like a client, an
 * operator and a supervisor would: the route and ping methods, every
 * error code a peer can cause, pipelining, the admin methods, reloads
 * (admin, SIGHUP, file edits) under load, shutdown with requests in
 * flight, the admin socket's single-owner rule, what the log leaves out,
 * and the -t / --version command lines.
 *
 * Each test starts its own daemon (server_harness.h) on the fixture
 * database and a copy of the test map, and stops it with SIGTERM at the
 * end, which also checks that it exits 0 without leaks.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>

#include "geosteer/geosteer.h"
#include "server_harness.h"

/* One timeout for the suite; Criterion applies it to every test. */
TestSuite(server, .fini = harness_fini);

#define MSGID 9 /* msgid of the single raw requests */

/* ---- helpers ------------------------------------------------------------ */

/* Generation of the live table, from map.show. */
static uint64_t admin_generation(gs_client *a)
{
  return obj_get_u64(admin_call(a, "map.show", NULL, 0), "generation");
}

/* Calls method, expecting the error code; returns the remote error. */
static gs_remote_error call_fails(gs_client *c, const char *method,
                                  const gs_arg *args, size_t n, int code)
{
  gs_remote_error err = {0};
  const msgpack_object *r;
  int rc = gs_client_call(c, method, args, n, &r, &err);

  cr_assert_eq(rc, GS_ERR_REMOTE, "%s: expected error %s, got %s", method,
               gs_code_name(code), gs_client_strerror(rc));
  cr_assert_eq(err.code, code, "%s: expected %s (%d), got %s (%d): %s", method,
               gs_code_name(code), code, err.name, err.code, err.message);
  cr_assert_str_eq(err.name, gs_code_name(code));
  cr_assert_neq(err.message[0], '\0', "%s: empty error message", method);
  return err;
}

/* Routes with the given arguments, expecting the error code. */
static void route_fails(gs_client *c, const char *ip, bool no_geo, int code)
{
  gs_arg args[2];
  size_t n = 0;

  if (ip)
    args[n++] = (gs_arg){"ip", ip, false};
  if (no_geo)
    args[n++] = (gs_arg){"no_geo", NULL, true};
  call_fails(c, "route", args, n, code);
}

static void drain(gs_client *a, const char *dc, bool on)
{
  gs_arg arg = {"dc", dc, false};
  const msgpack_object *r =
      admin_call(a, on ? "dc.drain" : "dc.undrain", &arg, 1);
  const msgpack_object *drained = obj_get(r, "drained");

  cr_assert(obj_is_str(obj_get(r, "dc"), dc));
  cr_assert(drained && drained->type == MSGPACK_OBJECT_BOOLEAN &&
            drained->via.boolean == on);
}

/* The drained flag of dc in dc.list. */
static bool listed_drained(gs_client *a, const char *dc)
{
  const msgpack_object *r = admin_call(a, "dc.list", NULL, 0);

  cr_assert_eq(r->type, MSGPACK_OBJECT_ARRAY);
  for (uint32_t i = 0; i < r->via.array.size; i++) {
    const msgpack_object *e = &r->via.array.ptr[i];
    if (obj_is_str(obj_get(e, "dc"), dc)) {
      const msgpack_object *d = obj_get(e, "drained");
      cr_assert(d && d->type == MSGPACK_OBJECT_BOOLEAN);
      return d->via.boolean;
    }
  }
  cr_assert_fail("dc.list has no '%s'", dc);
  return false;
}

static void start_default(struct server *s, const struct server_opts *o)
{
  server_init(s, o);
  server_start(s);
}

static void finish(struct server *s)
{
  server_stop(s);
  server_destroy(s);
}

/* ---- ping and route ---------------------------------------------------- */

Test(server, ping_answers_pong)
{
  struct server s;
  const msgpack_object *r;
  gs_client *c;

  start_default(&s, NULL);
  c = server_client(&s);
  cr_assert_eq(gs_client_call(c, "ping", NULL, 0, &r, NULL), 0);
  cr_assert(obj_is_str(r, "pong"));
  gs_client_close(c);
  finish(&s);
}

struct route_case {
  const char *ip;   /* NULL: the peer's address */
  const char *hint; /* NULL: none */
  bool no_geo;
  const char *dc, *reason;
  int scope;          /* -1: the reply has no scope key */
  const char *alt[3]; /* alternates in order, NULL-terminated */
};

static const struct route_case route_cases[] = {
    {"81.2.69.5", NULL, false, "lhr", "city", 24, {"ams", "fra"}},
    {"::ffff:81.2.69.5", NULL, false, "lhr", "city", 24, {"ams", "fra"}},
    {"12.12.12.1", NULL, false, "nrt", "net", 24, {"hkg", "sin"}},
    {"12.12.13.1", NULL, false, "sin", "net", 24, {"hkg", "nrt"}},
    {"100.128.0.1", NULL, false, "ams", "unknown", -1, {"iad"}},
    {"2001:db8:1::5", NULL, false, "syd", "net", 128, {"lhr", "ams"}},
    {"9.9.0.1", NULL, false, "ams", "country", 16, {"lhr", "fra"}},
    {"5.5.0.1", NULL, false, "sjc", "subdivision", 16, {"nrt", "iad"}},
    {"7.7.0.1", NULL, false, "syd", "continent", 16, {"sin", "hkg"}},
    {"2.16.0.1", NULL, false, "lhr", "nearest", 16, {"ams", "fra"}},
    {"2a02:1000::1234", NULL, false, "fra", "nearest", 32, {"ams", "lhr"}},
    {NULL, "syd", true, "syd", "nogeo", -1, {"ams", "iad"}},
    {NULL, "zzz", true, "ams", "nogeo", -1, {"iad"}},
    {"81.2.69.5", NULL, true, "ams", "nogeo", -1, {"iad"}},
    {NULL, NULL, false, "ams", "unknown", -1, {"iad"}}, /* peer 127.0.0.1 */
};

static void check_route_case(gs_client *c, const struct route_case *rc)
{
  gs_arg args[3];
  size_t n = 0;
  const msgpack_object *r, *alt;
  gs_remote_error err = {0};
  char buf[64];
  int got;
  const char *what = rc->ip ? rc->ip : rc->hint ? rc->hint : "(peer)";

  if (rc->ip)
    args[n++] = (gs_arg){"ip", rc->ip, false};
  if (rc->hint)
    args[n++] = (gs_arg){"hint", rc->hint, false};
  if (rc->no_geo)
    args[n++] = (gs_arg){"no_geo", NULL, true};
  got = gs_client_call(c, "route", args, n, &r, &err);
  cr_assert_eq(got, 0, "%s: %s (%s)", what, gs_client_strerror(got),
               err.message);
  cr_assert_null(route_result_problem(r), "%s: %s", what,
                 route_result_problem(r));
  cr_assert(obj_is_str(obj_get(r, "dc"), rc->dc), "%s: dc %s, expected %s",
            what, obj_str(obj_get(r, "dc"), buf, sizeof(buf)), rc->dc);
  cr_assert(obj_is_str(obj_get(r, "reason"), rc->reason),
            "%s: reason %s, expected %s", what,
            obj_str(obj_get(r, "reason"), buf, sizeof(buf)), rc->reason);
  cr_assert(obj_is_str(obj_get(r, "endpoint"),
                       strcat(strcpy(buf, rc->dc), ".test:443")),
            "%s: endpoint", what);
  if (rc->scope < 0)
    cr_assert_null(obj_get(r, "scope"), "%s: unexpected scope key", what);
  else
    cr_assert_eq(obj_u64(obj_get(r, "scope")), (uint64_t)rc->scope,
                 "%s: scope %llu, expected %d", what,
                 (unsigned long long)obj_u64(obj_get(r, "scope")), rc->scope);
  alt = obj_get(r, "alternates");
  n = 0;
  while (n < 3 && rc->alt[n])
    n++;
  cr_assert_eq(alt->via.array.size, n, "%s: %u alternates, expected %zu", what,
               alt->via.array.size, n);
  for (size_t i = 0; i < n; i++) {
    const msgpack_object *a = &alt->via.array.ptr[i];
    cr_assert(obj_is_str(obj_get(a, "dc"), rc->alt[i]),
              "%s: alternate %zu is %s, expected %s", what, i,
              obj_str(obj_get(a, "dc"), buf, sizeof(buf)), rc->alt[i]);
    cr_assert(obj_is_str(obj_get(a, "endpoint"),
                         strcat(strcpy(buf, rc->alt[i]), ".test:443")));
  }
}

Test(server, route_answers_every_reason_class)
{
  struct server s;
  gs_client *c;

  start_default(&s, NULL);
  c = server_client(&s);
  for (size_t i = 0; i < sizeof(route_cases) / sizeof(route_cases[0]); i++)
    check_route_case(c, &route_cases[i]);
  gs_client_close(c);
  finish(&s);
}

Test(server, route_through_the_client_library)
{
  struct server s;
  gs_client *c;
  gs_route_answer a;

  start_default(&s, NULL);
  c = server_client(&s);
  /* Without ip, from 127.0.0.1: the peer's own address (no data). */
  a = route_ok(c, NULL);
  cr_assert_str_eq(a.dc, "ams");
  cr_assert_str_eq(a.reason, "unknown");
  cr_assert_eq(a.scope, -1);
  cr_assert_eq(a.nalternates, 1);
  cr_assert_str_eq(a.alternates[0].dc, "iad");
  cr_assert_str_eq(a.alternates[0].endpoint, "iad.test:443");
  a = route_ok(c, "81.2.69.5");
  cr_assert_str_eq(a.dc, "lhr");
  cr_assert_str_eq(a.endpoint, "lhr.test:443");
  cr_assert_eq(a.scope, 24);
  /* user and session are accepted and do not change the answer. */
  cr_assert_eq(
      gs_route(c, "alice", "12.12.12.1", NULL, false, "s-1.x_Y", &a, NULL), 0);
  cr_assert_str_eq(a.dc, "nrt");
  gs_client_close(c);
  finish(&s);
}

/* ---- errors ------------------------------------------------------------ */

enum outcome {
  OK_ROUTE,   /* a route answer */
  OK_PONG,    /* "pong" */
  ERR_REPLY,  /* an error response with the msgid; the connection stays */
  ERR_CLOSE,  /* an error response with the msgid, then the server closes */
  ERR_NOTIFY, /* an error notification (no msgid known), then close */
};

enum value { STR, REPEAT, INT, TRUE, WHOLE };

/*
 * A request [0, MSGID, "route", [{key: value}]] with one argument, or
 * (type WHOLE) a whole message given as MessagePack bytes. REPEAT is
 * `len` copies of bytes[0].
 */
struct bad_case {
  const char *name;
  const char *key;
  enum value type;
  const char *bytes;
  size_t len;
  enum outcome outcome;
  int code;
  uint32_t msgid;
};

#define S(lit) STR, lit, sizeof(lit) - 1
#define W(lit) NULL, WHOLE, lit, sizeof(lit) - 1
#define BAD GS_CODE_BAD_REQUEST

static const struct bad_case bad_cases[] = {
    {"unknown argument", "bogus", S("x"), ERR_REPLY, BAD, MSGID},
    {"user empty", "user", S(""), ERR_REPLY, BAD, MSGID},
    {"user 128 bytes", "user", REPEAT, "u", 128, OK_ROUTE, 0, MSGID},
    {"user 129 bytes", "user", REPEAT, "u", 129, ERR_REPLY, BAD, MSGID},
    {"user UTF-8", "user", S("Zo\xc3\xab \xe6\x9d\xb1 \xf0\x9f\x99\x82"),
     OK_ROUTE, 0, MSGID},
    {"user invalid UTF-8", "user", S("ab\xc3\x28"), ERR_REPLY, BAD, MSGID},
    {"user overlong UTF-8", "user", S("\xc0\xaf"), ERR_REPLY, BAD, MSGID},
    {"user surrogate", "user", S("\xed\xa0\x80"), ERR_REPLY, BAD, MSGID},
    {"user cut UTF-8", "user", S("ab\xe6\x9d"), ERR_REPLY, BAD, MSGID},
    {"user with NUL", "user", S("ab\0cd"), ERR_REPLY, BAD, MSGID},
    {"user not a string", "user", INT, NULL, 5, ERR_REPLY, BAD, MSGID},
    {"session with a space", "session", S("a b"), ERR_REPLY, BAD, MSGID},
    {"session 64 bytes", "session", REPEAT, "s", 64, OK_ROUTE, 0, MSGID},
    {"session 65 bytes", "session", REPEAT, "s", 65, ERR_REPLY, BAD, MSGID},
    {"no_geo not bool", "no_geo", S("yes"), ERR_REPLY, BAD, MSGID},
    {"hint not a string", "hint", TRUE, NULL, 0, ERR_REPLY, BAD, MSGID},
    {"ip 999.1.1.1", "ip", S("999.1.1.1"), ERR_REPLY, GS_CODE_BAD_ADDRESS,
     MSGID},
    {"ip not a string", "ip", INT, NULL, 5, ERR_REPLY, GS_CODE_BAD_ADDRESS,
     MSGID},
    /* [0, 9, "route", [{"ip": "1.2.3.4", "ip": "1.2.3.4"}]] */
    {"argument twice",
     W("\x94\x00\x09\xa5route\x91\x82\xa2ip\xa7\x31.2.3.4\xa2ip\xa7\x31.2.3.4"),
     ERR_REPLY, BAD, MSGID},
    /* [0, 9, "route", [{1: "x"}]] */
    {"argument name not a string", W("\x94\x00\x09\xa5route\x91\x81\x01\xa1x"),
     ERR_REPLY, BAD, MSGID},
    /* [0, 9, "map.reload", []]: an admin method */
    {"admin method on the route listener", W("\x94\x00\x09\xaamap.reload\x90"),
     ERR_REPLY, GS_CODE_UNKNOWN_METHOD, MSGID},
    /* [0, 9, "route", ["x"]] */
    {"params not [map]", W("\x94\x00\x09\xa5route\x91\xa1x"), ERR_CLOSE, BAD,
     MSGID},
    /* [0, 9, "route", {}] */
    {"params a map", W("\x94\x00\x09\xa5route\x80"), ERR_CLOSE, BAD, MSGID},
    /* [0, 9, "route", [{}, {}]] */
    {"params two maps", W("\x94\x00\x09\xa5route\x92\x80\x80"), ERR_CLOSE, BAD,
     MSGID},
    /* [0, 9, 42, []] */
    {"method not a string", W("\x94\x00\x09\x2a\x90"), ERR_CLOSE, BAD, MSGID},
    /* [0, 2^32-1, "ping", []] */
    {"msgid 2^32-1", W("\x94\x00\xce\xff\xff\xff\xff\xa4ping\x90"), OK_PONG, 0,
     UINT32_MAX},
    /* [0, 2^32, "route", []] */
    {"msgid 2^32", W("\x94\x00\xcf\0\0\0\x01\0\0\0\0\xa5route\x90"), ERR_NOTIFY,
     BAD, 0},
    /* [0, -1, "route", []] */
    {"msgid -1", W("\x94\x00\xff\xa5route\x90"), ERR_NOTIFY, BAD, 0},
    /* [0, 9, "route"] */
    {"request of 3", W("\x93\x00\x09\xa5route"), ERR_NOTIFY, BAD, 0},
    /* "route" */
    {"not an array", W("\xa5route"), ERR_NOTIFY, BAD, 0},
    /* [1, 9, nil, nil] */
    {"a response sent to the server", W("\x94\x01\x09\xc0\xc0"), ERR_NOTIFY,
     BAD, 0},
};

/* Packs the message of a bad case. */
static void pack_bad_case(msgpack_packer *pk, msgpack_sbuffer *sb,
                          const struct bad_case *bc)
{
  char repeat[512];

  if (bc->type == WHOLE) {
    msgpack_sbuffer_write(sb, bc->bytes, bc->len);
    return;
  }
  msgpack_pack_array(pk, 4);
  msgpack_pack_uint8(pk, GS_RPC_REQUEST);
  msgpack_pack_uint32(pk, MSGID);
  pack_cstr(pk, "route");
  msgpack_pack_array(pk, 1);
  msgpack_pack_map(pk, 1);
  pack_cstr(pk, bc->key);
  switch (bc->type) {
  case STR:
    msgpack_pack_str_with_body(pk, bc->bytes, bc->len);
    break;
  case REPEAT:
    cr_assert_leq(bc->len, sizeof(repeat));
    memset(repeat, bc->bytes[0], bc->len);
    msgpack_pack_str_with_body(pk, repeat, bc->len);
    break;
  case INT:
    msgpack_pack_uint64(pk, bc->len);
    break;
  default:
    msgpack_pack_true(pk);
    break;
  }
}

/* Sends one case on a new connection and checks reply and connection. */
static void check_bad_case(const struct server *s, const struct bad_case *bc)
{
  msgpack_sbuffer sb;
  msgpack_packer pk;
  struct rbuf in = {0};
  struct replies r;
  const char *problem = NULL;
  int fd = raw_connect(s), end;

  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  pack_bad_case(&pk, &sb, bc);
  end = raw_exchange(fd, sb.data, sb.size, &in, 1, HARNESS_IO_WAIT_MS, NULL);
  cr_assert(end == RAW_REPLIES || end == RAW_EOF || end == RAW_RESET,
            "%s: no reply (%s)", bc->name, raw_end_name(end));
  replies_parse(&r, in.data, in.len);
  cr_assert_geq(r.n, 1, "%s: no reply before %s", bc->name, raw_end_name(end));
  switch (bc->outcome) {
  case OK_ROUTE:
    problem = route_result_problem(result_of(&r.obj[0], bc->msgid));
    break;
  case OK_PONG:
    problem = obj_is_str(result_of(&r.obj[0], bc->msgid), "pong")
                  ? NULL
                  : "not a pong";
    break;
  case ERR_REPLY:
  case ERR_CLOSE:
    problem = error_reply_problem(&r.obj[0], bc->msgid, bc->code);
    break;
  case ERR_NOTIFY:
    problem = error_notification_problem(&r.obj[0], bc->code);
    break;
  }
  cr_assert_null(problem, "%s: %s (expected %s)", bc->name, problem,
                 gs_code_name(bc->code));
  replies_free(&r);
  if (bc->outcome == ERR_CLOSE || bc->outcome == ERR_NOTIFY) {
    if (end == RAW_REPLIES)
      end = raw_exchange(fd, NULL, 0, &in, 0, HARNESS_IO_WAIT_MS, NULL);
    cr_assert(end == RAW_EOF || end == RAW_RESET,
              "%s: the server did not close the connection (%s)", bc->name,
              raw_end_name(end));
    cr_assert_eq(harness_count_objects(in.data, in.len), 1,
                 "%s: more than one reply before the close", bc->name);
  } else {
    /* The connection stays usable. */
    msgpack_sbuffer_clear(&sb);
    pack_ping(&pk, MSGID + 1);
    cr_assert_eq(end, RAW_REPLIES, "%s: closed after a %s reply", bc->name,
                 bc->code ? "request error" : "good");
    end = raw_exchange(fd, sb.data, sb.size, &in, 2, HARNESS_IO_WAIT_MS, NULL);
    cr_assert_eq(end, RAW_REPLIES, "%s: no pong after it (%s)", bc->name,
                 raw_end_name(end));
    replies_parse(&r, in.data, in.len);
    cr_assert(obj_is_str(result_of(&r.obj[1], MSGID + 1), "pong"), "%s",
              bc->name);
    replies_free(&r);
  }
  close(fd);
  rbuf_free(&in);
  msgpack_sbuffer_destroy(&sb);
}

Test(server, request_errors_reach_the_client)
{
  struct server s;

  start_default(&s, NULL);
  for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++)
    check_bad_case(&s, &bad_cases[i]);
  server_assert_answers(&s);
  finish(&s);
}

Test(server, notifications_get_no_reply)
{
  struct server s;
  msgpack_sbuffer sb;
  msgpack_packer pk;
  struct rbuf in = {0};
  struct replies r;
  int fd;

  start_default(&s, NULL);
  fd = raw_connect(&s);
  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  /* [2, "route", [{ip}]] and [2, "nosuch", []], then a ping. */
  msgpack_pack_array(&pk, 3);
  msgpack_pack_uint8(&pk, GS_RPC_NOTIFICATION);
  pack_cstr(&pk, "route");
  msgpack_pack_array(&pk, 1);
  msgpack_pack_map(&pk, 1);
  pack_cstr(&pk, "ip");
  pack_cstr(&pk, "81.2.69.5");
  msgpack_pack_array(&pk, 3);
  msgpack_pack_uint8(&pk, GS_RPC_NOTIFICATION);
  pack_cstr(&pk, "nosuch");
  msgpack_pack_array(&pk, 0);
  pack_ping(&pk, 77);
  cr_assert_eq(
      raw_exchange(fd, sb.data, sb.size, &in, 1, HARNESS_IO_WAIT_MS, NULL),
      RAW_REPLIES);
  replies_parse(&r, in.data, in.len);
  cr_assert_eq(r.n, 1);
  cr_assert(obj_is_str(result_of(&r.obj[0], 77), "pong"),
            "the first reply is not the ping's");
  replies_free(&r);
  close(fd);
  rbuf_free(&in);
  msgpack_sbuffer_destroy(&sb);
  finish(&s);
}

Test(server, message_too_large_is_refused_with_its_msgid)
{
  struct server s;
  msgpack_sbuffer sb;
  msgpack_packer pk;
  struct rbuf in = {0};
  struct replies r;
  static char user[5000]; /* over max_message */
  int fd, end;

  start_default(&s, &(struct server_opts){.limits = "  max_message: 4096"});
  fd = raw_connect(&s);
  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  memset(user, 'u', sizeof(user));
  msgpack_pack_array(&pk, 4);
  msgpack_pack_uint8(&pk, GS_RPC_REQUEST);
  msgpack_pack_uint32(&pk, MSGID);
  pack_cstr(&pk, "route");
  msgpack_pack_array(&pk, 1);
  msgpack_pack_map(&pk, 1);
  pack_cstr(&pk, "user");
  msgpack_pack_str_with_body(&pk, user, sizeof(user));
  end = raw_exchange(fd, sb.data, sb.size, &in, 0, HARNESS_IO_WAIT_MS, NULL);
  cr_assert(end == RAW_EOF || end == RAW_RESET,
            "the server did not close the connection (%s)", raw_end_name(end));
  replies_parse(&r, in.data, in.len);
  cr_assert_eq(r.n, 1, "%zu replies", r.n);
  cr_assert_null(
      error_reply_problem(&r.obj[0], MSGID, GS_CODE_MESSAGE_TOO_LARGE), "%s",
      error_reply_problem(&r.obj[0], MSGID, GS_CODE_MESSAGE_TOO_LARGE));
  replies_free(&r);
  close(fd);
  rbuf_free(&in);
  msgpack_sbuffer_destroy(&sb);
  server_assert_answers(&s);
  finish(&s);
}

Test(server, unknown_method_and_bad_address)
{
  struct server s;
  gs_client *c;
  gs_remote_error e;

  start_default(&s, NULL);
  c = server_client(&s);
  e = call_fails(c, "frobnicate", NULL, 0, GS_CODE_UNKNOWN_METHOD);
  cr_assert(strstr(e.message, "frobnicate"), "%s", e.message);
  route_fails(c, "999.1.1.1", false, GS_CODE_BAD_ADDRESS);
  route_fails(c, "81.2.69.5/24", false, GS_CODE_BAD_ADDRESS);
  route_fails(c, "", false, GS_CODE_BAD_ADDRESS);
  /* The connection stays usable after request errors. */
  cr_assert_str_eq(route_ok(c, "81.2.69.5").dc, "lhr");
  gs_client_close(c);
  finish(&s);
}

Test(server, ip_from_an_untrusted_peer_is_forbidden)
{
  struct server s;
  gs_client *c;

  start_default(&s, &(struct server_opts){.extra = "trusted_proxies: []"});
  c = server_client(&s);
  route_fails(c, "81.2.69.5", false, GS_CODE_FORBIDDEN);
  route_fails(c, "2001:db8:1::5", false, GS_CODE_FORBIDDEN);
  /* Without ip the peer is routed as itself. */
  cr_assert_str_eq(route_ok(c, NULL).dc, "ams");
  gs_client_close(c);
  finish(&s);
}

Test(server, no_datacenter_when_every_dc_is_drained)
{
  static const char *const ids[] = {"ams", "fra", "lhr", "sjc", "iad",
                                    "hkg", "sin", "syd", "gru", "nrt"};
  struct server s;
  gs_client *c, *a;
  gs_route_answer ans;

  start_default(&s, NULL);
  c = server_client(&s);
  a = server_admin(&s);
  for (size_t i = 0; i < 10; i++)
    drain(a, ids[i], true);
  route_fails(c, NULL, false, GS_CODE_NO_DATACENTER);
  route_fails(c, "81.2.69.5", false, GS_CODE_NO_DATACENTER);
  route_fails(c, "100.128.0.1", false, GS_CODE_NO_DATACENTER);
  route_fails(c, NULL, true, GS_CODE_NO_DATACENTER);
  /* One back: every answer falls back to it. */
  drain(a, "syd", false);
  ans = route_ok(c, "81.2.69.5");
  cr_assert_str_eq(ans.dc, "syd");
  cr_assert_eq(ans.nalternates, 0);
  cr_assert_str_eq(route_ok(c, NULL).dc, "syd");
  gs_client_close(a);
  gs_client_close(c);
  finish(&s);
}

/* Reads until the server closes; expects one UNAVAILABLE notification. */
static void expect_unavailable(const struct server *s)
{
  struct rbuf in = {0};
  struct replies r;
  int fd = raw_connect(s);
  int end = raw_exchange(fd, NULL, 0, &in, 0, HARNESS_IO_WAIT_MS, NULL);

  cr_assert_eq(end, RAW_EOF, "connection past the limit: %s, expected EOF",
               raw_end_name(end));
  replies_parse(&r, in.data, in.len);
  cr_assert_eq(r.n, 1, "%zu objects before EOF", r.n);
  cr_assert_null(error_notification_problem(&r.obj[0], GS_CODE_UNAVAILABLE),
                 "%s",
                 error_notification_problem(&r.obj[0], GS_CODE_UNAVAILABLE));
  replies_free(&r);
  rbuf_free(&in);
  close(fd);
}

/* True when a new connection answers a ping (not refused). */
static bool new_connection_answers(const struct server *s)
{
  gs_client *c = NULL;
  const msgpack_object *r;
  bool ok;

  if (gs_client_connect(s->route_addr, HARNESS_CALL_MS, &c) != 0)
    return false;
  ok = gs_client_call(c, "ping", NULL, 0, &r, NULL) == 0 &&
       obj_is_str(r, "pong");
  gs_client_close(c);
  return ok;
}

Test(server, unavailable_past_max_connections)
{
  struct server s;
  gs_client *c[2];
  const msgpack_object *r;
  gs_remote_error err = {0};
  gs_client *admin;

  start_default(&s, &(struct server_opts){.limits = "  max_connections: 2"});
  for (int i = 0; i < 2; i++) {
    c[i] = server_client(&s);
    cr_assert_eq(gs_client_call(c[i], "ping", NULL, 0, &r, NULL), 0);
  }
  expect_unavailable(&s);
  /* The client library reports it as the server's error. */
  {
    gs_client *third = server_client(&s);
    int rc = gs_client_call(third, "ping", NULL, 0, &r, &err);
    cr_assert(rc == GS_ERR_REMOTE || rc == GS_ERR_CLOSED, "%s",
              gs_client_strerror(rc));
    if (rc == GS_ERR_REMOTE)
      cr_assert_eq(err.code, GS_CODE_UNAVAILABLE);
    gs_client_close(third);
  }
  /* The admin socket has its own budget. */
  admin = server_admin(&s);
  cr_assert(obj_is_str(admin_call(admin, "ping", NULL, 0), "pong"));
  gs_client_close(admin);
  gs_client_close(c[0]);
  POLL_UNTIL(new_connection_answers(&s), 10000,
             "no connection accepted after one of two closed");
  gs_client_close(c[1]);
  finish(&s);
}

#define TOKEN "0123456789abcdefFEDCBA9876543210" /* 32 bytes */

static gs_client *admin_tcp(const struct server *s)
{
  char where[32];
  gs_client *c = NULL;
  int rc;

  snprintf(where, sizeof(where), "127.0.0.1:%u", (unsigned)s->admin_tcp_port);
  rc = gs_client_connect(where, HARNESS_CALL_MS, &c);
  cr_assert_eq(rc, 0, "connect %s: %s", where, gs_client_strerror(rc));
  return c;
}

Test(server, admin_tcp_requires_the_token)
{
  struct server s;
  char path[HARNESS_PATH_MAX + 16];
  gs_client *c;
  gs_arg wrong = {"token", "0123456789abcdefFEDCBA987654321X", false};
  gs_arg shorter = {"token", "0123456789abcdef", false};
  gs_arg right = {"token", TOKEN, false};
  const msgpack_object *r;
  int rc;

  server_init(&s,
              &(struct server_opts){.listen = "  admin_tcp: \"127.0.0.1:0\"",
                                    .extra = "admin_token_file: admin.token"});
  snprintf(path, sizeof(path), "%s/admin.token", s.dir);
  harness_write_file(path, TOKEN);
  server_start(&s);
  cr_assert_neq(s.admin_tcp_port, 0, "no admin_tcp listening line");

  /* Any call before auth. */
  c = admin_tcp(&s);
  call_fails(c, "map.show", NULL, 0, GS_CODE_UNAUTHORIZED);
  call_fails(c, "dc.drain", &(gs_arg){"dc", "lhr", false}, 1,
             GS_CODE_UNAUTHORIZED);
  gs_client_close(c);

  /* Three wrong tokens close the connection. */
  c = admin_tcp(&s);
  call_fails(c, "auth", &wrong, 1, GS_CODE_UNAUTHORIZED);
  call_fails(c, "auth", &shorter, 1, GS_CODE_UNAUTHORIZED);
  call_fails(c, "auth", &wrong, 1, GS_CODE_UNAUTHORIZED);
  rc = gs_client_call(c, "auth", &right, 1, &r, NULL);
  cr_assert_eq(rc, GS_ERR_CLOSED, "after three failures: %s",
               gs_client_strerror(rc));
  gs_client_close(c);

  /* The right token opens the admin methods. */
  c = admin_tcp(&s);
  r = admin_call(c, "auth", &right, 1);
  cr_assert(r->type == MSGPACK_OBJECT_BOOLEAN && r->via.boolean);
  cr_assert_eq(obj_get_u64(admin_call(c, "map.show", NULL, 0), "datacenters"),
               10);
  drain(c, "lhr", true);
  drain(c, "lhr", false);
  gs_client_close(c);

  /* The unix socket needs no token (auth is a no-op there). */
  c = server_admin(&s);
  r = admin_call(c, "auth", NULL, 0);
  cr_assert(r->type == MSGPACK_OBJECT_BOOLEAN && r->via.boolean);
  cr_assert_eq(admin_generation(c), 1);
  gs_client_close(c);
  finish(&s);
}

Test(server, admin_errors)
{
  struct server s;
  gs_client *a;
  gs_remote_error e;

  start_default(&s, NULL);
  a = server_admin(&s);
  e = call_fails(a, "dc.drain", &(gs_arg){"dc", "zzz", false}, 1,
                 GS_CODE_NOT_FOUND);
  cr_assert(strstr(e.message, "zzz"), "%s", e.message);
  call_fails(a, "dc.undrain", &(gs_arg){"dc", "zzz", false}, 1,
             GS_CODE_NOT_FOUND);
  call_fails(a, "dc.drain", NULL, 0, GS_CODE_BAD_REQUEST);
  call_fails(a, "dc.drain", &(gs_arg){"name", "lhr", false}, 1,
             GS_CODE_BAD_REQUEST);
  call_fails(a, "map.show", &(gs_arg){"x", "y", false}, 1, GS_CODE_BAD_REQUEST);
  call_fails(a, "explain", &(gs_arg){"ip", "not-an-ip", false}, 1,
             GS_CODE_BAD_ADDRESS);
  call_fails(a, "explain", NULL, 0, GS_CODE_BAD_ADDRESS);
  call_fails(a, "route", NULL, 0, GS_CODE_UNKNOWN_METHOD);
  cr_assert(obj_is_str(admin_call(a, "ping", NULL, 0), "pong"));
  gs_client_close(a);
  finish(&s);
}

Test(server, admin_requests_after_a_reload_wait_for_it)
{
  struct server s;
  msgpack_sbuffer sb;
  msgpack_packer pk;
  struct rbuf in = {0};
  struct replies r;
  const msgpack_object *res;
  uint64_t gen;
  int fd, end;

  start_default(&s, NULL);
  fd = raw_connect_unix(s.admin);
  cr_assert_geq(fd, 0, "connect %s: %s", s.admin, strerror(errno));
  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  pack_call(&pk, 1, "map.reload");
  pack_call(&pk, 2, "map.show");
  pack_call(&pk, 3, "map.reload");
  pack_call(&pk, 4, "ping");
  end = raw_exchange(fd, sb.data, sb.size, &in, 4, HARNESS_IO_WAIT_MS, NULL);
  cr_assert_eq(end, RAW_REPLIES, "%s", raw_end_name(end));
  replies_parse(&r, in.data, in.len);
  cr_assert_eq(r.n, 4);
  res = result_of(&r.obj[0], 1);
  cr_assert_not_null(res, "map.reload failed");
  gen = obj_get_u64(res, "generation");
  cr_assert_eq(gen, 2);
  res = result_of(&r.obj[1], 2);
  cr_assert_not_null(res, "map.show is not the second reply");
  cr_assert_eq(obj_get_u64(res, "generation"), gen,
               "map.show ran before the reload finished");
  res = result_of(&r.obj[2], 3);
  cr_assert_not_null(res);
  cr_assert_eq(obj_get_u64(res, "generation"), gen + 1);
  cr_assert(obj_is_str(result_of(&r.obj[3], 4), "pong"));
  replies_free(&r);
  close(fd);
  rbuf_free(&in);
  msgpack_sbuffer_destroy(&sb);
  finish(&s);
}

Test(server, admin_client_gone_during_a_reload)
{
  struct server s;
  msgpack_sbuffer sb;
  msgpack_packer pk;
  gs_client *a;

  start_default(&s, NULL);
  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  pack_call(&pk, 1, "map.reload");
  pack_call(&pk, 2, "map.show");
  for (int i = 0; i < 20; i++) {
    int fd = raw_connect_unix(s.admin);
    cr_assert_geq(fd, 0, "connect %s: %s", s.admin, strerror(errno));
    cr_assert_eq(send(fd, sb.data, sb.size, MSG_NOSIGNAL), (ssize_t)sb.size);
    close(fd);
  }
  a = server_admin(&s);
  /* Every reload happened or was folded into a later one. */
  POLL_UNTIL(obj_get_u64(obj_get(admin_call(a, "stats", NULL, 0), "reloads"),
                         "ok") >= 1,
             10000, "no reload finished");
  admin_call(a, "map.reload", NULL, 0);
  gs_client_close(a);
  server_assert_answers(&s);
  msgpack_sbuffer_destroy(&sb);
  finish(&s);
}

/* A map with one bad value on line 4. */
static const char broken_map[] =
    "limit: 3\n"
    "default: [ams]\n"
    "datacenters:\n"
    "  - { id: ams, endpoint: \"ams.test:443\", lat: north, lon: 4.90 }\n";

Test(server, failed_reload_keeps_the_old_table)
{
  struct server s;
  gs_client *a, *c;
  gs_remote_error e;
  uint64_t gen0, gen1;
  const msgpack_object *r;

  start_default(&s, NULL);
  a = server_admin(&s);
  c = server_client(&s);
  gen0 = admin_generation(a);
  harness_write_file(s.map, broken_map);
  e = call_fails(a, "map.reload", NULL, 0, GS_CODE_RELOAD_FAILED);
  cr_assert(strstr(e.message, "map.yaml:4:"),
            "the message does not name file:line: %s", e.message);
  cr_assert(strstr(e.message, "lat"), "%s", e.message);
  /* The old table still answers. */
  cr_assert_str_eq(route_ok(c, "81.2.69.5").dc, "lhr");
  cr_assert_str_eq(route_ok(c, "12.12.12.1").dc, "nrt");
  cr_assert_eq(admin_generation(a), gen0);
  cr_assert_eq(obj_get_u64(admin_call(a, "map.show", NULL, 0), "datacenters"),
               10);
  /* Fixed: the reload goes through. */
  harness_copy_file(src_path("tests/fixtures/maps/test-map.yaml"), s.map);
  r = admin_call(a, "map.reload", NULL, 0);
  gen1 = obj_get_u64(r, "generation");
  cr_assert_gt(gen1, gen0);
  cr_assert_geq(admin_generation(a), gen1);
  r = obj_get(admin_call(a, "stats", NULL, 0), "reloads");
  cr_assert_geq(obj_get_u64(r, "failed"), 1);
  cr_assert_geq(obj_get_u64(r, "ok"), 1);
  cr_assert_str_eq(route_ok(c, "81.2.69.5").dc, "lhr");
  gs_client_close(c);
  gs_client_close(a);
  finish(&s);
}

/* ---- pipelining -------------------------------------------------------- */

struct ip_dc {
  const char *ip, *dc;
};

static const struct ip_dc load_ips[] = {
    {"81.2.69.5", "lhr"},     {"12.12.12.1", "nrt"}, {"100.128.0.1", "ams"},
    {"2001:db8:1::5", "syd"}, {"9.9.0.1", "ams"},    {"5.5.0.1", "sjc"},
    {"7.7.0.1", "syd"},       {"6.6.0.1", "hkg"},    {"2a02:1000::1234", "fra"},
    {"11.1.2.3", "gru"},
};
#define NLOAD_IPS (sizeof(load_ips) / sizeof(load_ips[0]))

/*
 * Checks replies to route requests with msgids first..first+n-1 (ips from
 * load_ips by msgid): NULL or what is wrong, with details in why.
 */
static const char *check_route_batch(const struct rbuf *in, uint32_t first,
                                     size_t n, char *why, size_t why_size)
{
  struct replies r;
  const char *problem = NULL;

  replies_parse(&r, in->data, in->len);
  if (r.n != n || r.used != in->len) {
    snprintf(why, why_size, "%zu complete replies in %zu bytes, expected %zu",
             r.n, in->len, n);
    problem = why;
  }
  for (size_t i = 0; i < r.n && i < n && !problem; i++) {
    uint32_t id = first + (uint32_t)i;
    const msgpack_object *res = result_of(&r.obj[i], id);
    const char *p = route_result_problem(res);
    const char *dc = load_ips[id % NLOAD_IPS].dc;
    if (p == NULL && !obj_is_str(obj_get(res, "dc"), dc))
      p = "wrong dc";
    if (p) {
      snprintf(why, why_size, "reply %zu (msgid %u, ip %s, dc %s): %s", i, id,
               load_ips[id % NLOAD_IPS].ip, dc, p);
      problem = why;
    }
  }
  replies_free(&r);
  return problem;
}

static void pack_route_batch(msgpack_sbuffer *sb, uint32_t first, size_t n)
{
  msgpack_packer pk;

  msgpack_sbuffer_clear(sb);
  msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
  for (size_t i = 0; i < n; i++) {
    uint32_t id = first + (uint32_t)i;
    pack_route(&pk, id, load_ips[id % NLOAD_IPS].ip);
  }
}

Test(server, pipelined_requests_are_answered_in_order)
{
  struct server s;
  msgpack_sbuffer sb;
  struct rbuf in = {0};
  char why[256];
  const char *problem;
  ssize_t w;
  int fd, end;

  start_default(&s, NULL);
  fd = raw_connect(&s);
  msgpack_sbuffer_init(&sb);
  pack_route_batch(&sb, 1, 100);
  /* One write of all 100 (it fits the socket buffer). */
  w = send(fd, sb.data, sb.size, MSG_NOSIGNAL);
  cr_assert_eq(w, (ssize_t)sb.size, "send: %zd of %zu", w, sb.size);
  end = raw_exchange(fd, NULL, 0, &in, 100, HARNESS_IO_WAIT_MS, NULL);
  cr_assert_eq(end, RAW_REPLIES, "%s after %zu bytes", raw_end_name(end),
               in.len);
  problem = check_route_batch(&in, 1, 100, why, sizeof(why));
  cr_assert_null(problem, "%s", problem);
  close(fd);
  rbuf_free(&in);
  msgpack_sbuffer_destroy(&sb);
  finish(&s);
}

/*
 * Many connections that send at once: the route listener reads ahead
 * across connections (64 messages at most, the rest on their own), so
 * each reply must still be its own connection's. 24 connections of 5
 * requests each, every connection starting at another address.
 */
Test(server, concurrent_connections_each_get_their_own_answers)
{
  enum { NCONN = 24, PER = 5 };
  struct server s;
  msgpack_sbuffer sb;
  int fd[NCONN];

  start_default(&s, NULL);
  msgpack_sbuffer_init(&sb);
  for (int k = 0; k < NCONN; k++)
    fd[k] = raw_connect(&s);
  for (int k = 0; k < NCONN; k++) {
    pack_route_batch(&sb, 1 + (uint32_t)k * PER, PER);
    cr_assert_eq(send(fd[k], sb.data, sb.size, MSG_NOSIGNAL), (ssize_t)sb.size);
  }
  for (int k = 0; k < NCONN; k++) {
    struct rbuf in = {0};
    char why[256];
    int end = raw_exchange(fd[k], NULL, 0, &in, PER, HARNESS_IO_WAIT_MS, NULL);
    cr_assert_eq(end, RAW_REPLIES, "connection %d: %s after %zu bytes", k,
                 raw_end_name(end), in.len);
    const char *problem =
        check_route_batch(&in, 1 + (uint32_t)k * PER, PER, why, sizeof(why));
    cr_assert_null(problem, "connection %d: %s", k, problem);
    close(fd[k]);
    rbuf_free(&in);
  }
  msgpack_sbuffer_destroy(&sb);
  finish(&s);
}

/* [0, msgid, "route", [{ then nargs key/value pairs for the caller. */
static void pack_route_head(msgpack_packer *pk, uint32_t msgid, uint32_t nargs)
{
  msgpack_pack_array(pk, 4);
  msgpack_pack_uint8(pk, GS_RPC_REQUEST);
  msgpack_pack_uint32(pk, msgid);
  pack_cstr(pk, "route");
  msgpack_pack_array(pk, 1);
  msgpack_pack_map(pk, nargs);
}

/*
 * A pipelined batch that mixes route requests with a refused one (its ip
 * read ahead, but the request rejected before the ip), a bad ip, one
 * with no arguments, a ping and an ip given as the second argument: every
 * reply belongs to its own request.
 */
Test(server, mixed_pipelined_batch_answers_each_request)
{
  struct server s;
  msgpack_sbuffer sb;
  msgpack_packer pk;
  struct rbuf in = {0};
  struct replies r;
  const msgpack_object *res;
  int fd, end;

  start_default(&s, NULL);
  fd = raw_connect(&s);
  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  pack_route(&pk, 1, load_ips[0].ip);
  /* 2: a bad session is refused before the ip is looked at */
  pack_route_head(&pk, 2, 2);
  pack_cstr(&pk, "ip");
  pack_cstr(&pk, load_ips[1].ip);
  pack_cstr(&pk, "session");
  pack_cstr(&pk, "not a session!");
  pack_route(&pk, 3, load_ips[3].ip);
  pack_route(&pk, 4, "300.1.2.3");
  pack_route(&pk, 5, NULL);
  pack_call(&pk, 6, "ping");
  /* 7: the ip after another argument */
  pack_route_head(&pk, 7, 2);
  pack_cstr(&pk, "no_geo");
  msgpack_pack_false(&pk);
  pack_cstr(&pk, "ip");
  pack_cstr(&pk, load_ips[8].ip);
  pack_route(&pk, 8, load_ips[5].ip);

  cr_assert_eq(send(fd, sb.data, sb.size, MSG_NOSIGNAL), (ssize_t)sb.size);
  end = raw_exchange(fd, NULL, 0, &in, 8, HARNESS_IO_WAIT_MS, NULL);
  cr_assert_eq(end, RAW_REPLIES, "%s after %zu bytes", raw_end_name(end),
               in.len);
  replies_parse(&r, in.data, in.len);
  cr_assert_eq(r.n, 8);
  res = result_of(&r.obj[0], 1);
  cr_assert(res && obj_is_str(obj_get(res, "dc"), load_ips[0].dc));
  cr_assert_null(error_reply_problem(&r.obj[1], 2, GS_CODE_BAD_REQUEST));
  res = result_of(&r.obj[2], 3);
  cr_assert(res && obj_is_str(obj_get(res, "dc"), load_ips[3].dc));
  cr_assert_null(error_reply_problem(&r.obj[3], 4, GS_CODE_BAD_ADDRESS));
  res = result_of(&r.obj[4], 5);
  cr_assert_not_null(res, "a route without arguments uses the peer");
  res = result_of(&r.obj[5], 6);
  cr_assert(res && obj_is_str(res, "pong"));
  res = result_of(&r.obj[6], 7);
  cr_assert(res && obj_is_str(obj_get(res, "dc"), load_ips[8].dc));
  res = result_of(&r.obj[7], 8);
  cr_assert(res && obj_is_str(obj_get(res, "dc"), load_ips[5].dc));
  replies_free(&r);
  close(fd);
  rbuf_free(&in);
  msgpack_sbuffer_destroy(&sb);

  /* The latency histogram holds each of the 7 route requests once (a
   * request's start may be the previous one's end in a batch). */
  gs_client *a = server_admin(&s);
  const msgpack_object *b = obj_get(
      obj_get(admin_call(a, "stats", NULL, 0), "latency"), "buckets_us");
  uint64_t timed = 0;
  cr_assert(b && b->type == MSGPACK_OBJECT_MAP);
  for (uint32_t i = 0; i < b->via.map.size; i++)
    timed += obj_u64(&b->via.map.ptr[i].val);
  cr_assert_eq(timed, 7);
  gs_client_close(a);
  finish(&s);
}

/* ---- admin ------------------------------------------------------------- */

Test(server, map_show_and_dc_list)
{
  static const char *const ids[] = {"ams", "fra", "lhr", "sjc", "iad",
                                    "hkg", "sin", "syd", "gru", "nrt"};
  struct server s;
  gs_client *a;
  const msgpack_object *r;
  char buf[64];

  start_default(&s, NULL);
  a = server_admin(&s);
  r = admin_call(a, "map.show", NULL, 0);
  cr_assert_eq(obj_get_u64(r, "generation"), 1);
  cr_assert_eq(obj_get_u64(r, "datacenters"), 10);
  cr_assert_gt(obj_get_u64(r, "ranges"), 0);
  cr_assert_gt(obj_get_u64(r, "answers"), 0);
  cr_assert_gt(obj_get_u64(r, "table_bytes"), 0);
  cr_assert(obj_is_str(obj_get(r, "database_built"), "2023-11-14T22:13:20Z"),
            "database_built %s",
            obj_str(obj_get(r, "database_built"), buf, sizeof(buf)));
  cr_assert(obj_is_str(obj_get(r, "database_type"), "GeoLite2-City"));
  cr_assert(obj_is_str(obj_get(r, "map"), s.map));
  obj_str(obj_get(r, "loaded_at"), buf, sizeof(buf));
  cr_assert_eq(strlen(buf), 20, "loaded_at %s", buf);
  cr_assert(buf[4] == '-' && buf[10] == 'T' && buf[19] == 'Z', "%s", buf);

  r = admin_call(a, "dc.list", NULL, 0);
  cr_assert_eq(r->type, MSGPACK_OBJECT_ARRAY);
  cr_assert_eq(r->via.array.size, 10);
  for (uint32_t i = 0; i < 10; i++) {
    const msgpack_object *e = &r->via.array.ptr[i], *d = obj_get(e, "drained");
    cr_assert(obj_is_str(obj_get(e, "dc"), ids[i]), "entry %u", i);
    cr_assert(obj_is_str(obj_get(e, "endpoint"),
                         strcat(strcpy(buf, ids[i]), ".test:443")));
    cr_assert(d && d->type == MSGPACK_OBJECT_BOOLEAN && !d->via.boolean);
    cr_assert_not_null(obj_get(e, "lat"));
    cr_assert_not_null(obj_get(e, "lon"));
  }
  gs_client_close(a);
  finish(&s);
}

Test(server, drain_skips_the_dc_and_survives_a_restart)
{
  struct server s;
  gs_client *a, *c;
  gs_route_answer ans;

  start_default(&s, NULL);
  a = server_admin(&s);
  c = server_client(&s);
  drain(a, "lhr", true);
  drain(a, "lhr", true); /* twice is fine */
  cr_assert(listed_drained(a, "lhr"));
  cr_assert_not(listed_drained(a, "ams"));
  ans = route_ok(c, "81.2.69.5");
  cr_assert_str_eq(ans.dc, "ams");
  cr_assert_eq(ans.nalternates, 1);
  cr_assert_str_eq(ans.alternates[0].dc, "fra");
  ans = route_ok(c, "2.16.0.1"); /* nearest: lhr ams fra */
  cr_assert_str_eq(ans.dc, "ams");
  gs_client_close(c);
  gs_client_close(a);

  server_stop(&s);
  server_start(&s);
  a = server_admin(&s);
  c = server_client(&s);
  cr_assert(listed_drained(a, "lhr"), "drain state lost in the restart");
  cr_assert_str_eq(route_ok(c, "81.2.69.5").dc, "ams");
  drain(a, "lhr", false);
  cr_assert_not(listed_drained(a, "lhr"));
  ans = route_ok(c, "81.2.69.5");
  cr_assert_str_eq(ans.dc, "lhr");
  cr_assert_eq(ans.nalternates, 2);
  gs_client_close(c);
  gs_client_close(a);

  /* Undrained state persists too. */
  server_stop(&s);
  server_start(&s);
  a = server_admin(&s);
  cr_assert_not(listed_drained(a, "lhr"));
  gs_client_close(a);
  finish(&s);
}

Test(server, drain_survives_a_reload)
{
  struct server s;
  gs_client *a, *c;

  start_default(&s, NULL);
  a = server_admin(&s);
  c = server_client(&s);
  drain(a, "nrt", true);
  admin_call(a, "map.reload", NULL, 0);
  cr_assert(listed_drained(a, "nrt"));
  cr_assert_str_eq(route_ok(c, "12.12.12.1").dc, "hkg");
  gs_client_close(c);
  gs_client_close(a);
  finish(&s);
}

Test(server, stats_count_requests)
{
  struct server s;
  gs_client *a, *c;
  const msgpack_object *st, *m;
  const msgpack_object *r;
  gs_route_answer ans;
  struct bad_case method_not_str = {
      "method not a string", W("\x94\x00\x09\x2a\x90"), ERR_CLOSE, BAD, MSGID};

  start_default(&s, NULL);
  c = server_client(&s);
  for (int i = 0; i < 3; i++)
    route_ok(c, "81.2.69.5"); /* city, lhr */
  for (int i = 0; i < 2; i++)
    route_ok(c, "12.12.12.1"); /* net, nrt */
  cr_assert_eq(gs_route(c, NULL, NULL, "syd", true, NULL, &ans, NULL), 0);
  route_fails(c, "999.1.1.1", false, GS_CODE_BAD_ADDRESS);
  route_fails(c, "999.1.1.2", false, GS_CODE_BAD_ADDRESS);
  call_fails(c, "frobnicate", NULL, 0, GS_CODE_UNKNOWN_METHOD);
  for (int i = 0; i < 2; i++)
    cr_assert_eq(gs_client_call(c, "ping", NULL, 0, &r, NULL), 0);
  gs_client_close(c);
  check_bad_case(&s, &method_not_str); /* a protocol error */

  a = server_admin(&s);
  st = admin_call(a, "stats", NULL, 0);
  m = obj_get(st, "requests");
  cr_assert_eq(obj_get_u64(m, "route"), 8);
  cr_assert_eq(obj_get_u64(m, "ping"), 2);
  cr_assert_eq(obj_get_u64(m, "other"), 1);
  m = obj_get(st, "reasons");
  cr_assert_eq(obj_get_u64(m, "city"), 3);
  cr_assert_eq(obj_get_u64(m, "net"), 2);
  cr_assert_eq(obj_get_u64(m, "nogeo"), 1);
  cr_assert_eq(obj_get_u64(m, "unknown"), 0);
  cr_assert_eq(obj_get_u64(m, "nearest"), 0);
  m = obj_get(st, "errors");
  cr_assert_eq(obj_get_u64(m, "BAD_ADDRESS"), 2);
  cr_assert_eq(obj_get_u64(m, "UNKNOWN_METHOD"), 1);
  cr_assert_eq(obj_get_u64(m, "BAD_REQUEST"), 0);
  cr_assert_eq(obj_get_u64(m, "protocol"), 1);
  cr_assert_eq(obj_get_u64(m, "INTERNAL"), 0);
  for (int code = 1; code < GS_CODE_COUNT_; code++)
    cr_assert_not_null(obj_get(m, gs_code_name(code)), "no errors.%s",
                       gs_code_name(code));
  m = obj_get(st, "answers");
  cr_assert_eq(obj_get_u64(m, "lhr"), 3);
  cr_assert_eq(obj_get_u64(m, "nrt"), 2);
  cr_assert_eq(obj_get_u64(m, "syd"), 1);
  cr_assert_eq(obj_get_u64(m, "ams"), 0);
  m = obj_get(st, "connections");
  cr_assert_eq(obj_get_u64(m, "accepted"), 2);
  cr_assert_eq(obj_get_u64(m, "rejected"), 0);
  m = obj_get(st, "reloads");
  cr_assert_eq(obj_get_u64(m, "generation"), 1);

  /* Answers per DC stay counted across a reload. */
  admin_call(a, "map.reload", NULL, 0);
  c = server_client(&s);
  route_ok(c, "81.2.69.5");
  gs_client_close(c);
  st = admin_call(a, "stats", NULL, 0);
  cr_assert_eq(obj_get_u64(obj_get(st, "answers"), "lhr"), 4);
  cr_assert_eq(obj_get_u64(obj_get(st, "requests"), "route"), 9);
  gs_client_close(a);
  finish(&s);
}

/* Routes ip n times, each on a new connection (they spread over the
 * workers); checks each answer is dc unless dc is NULL. */
static void route_on_new_connections(const struct server *s, const char *ip,
                                     const char *dc, int n)
{
  for (int i = 0; i < n; i++) {
    gs_client *c = server_client(s);
    gs_route_answer ans = route_ok(c, ip);
    if (dc != NULL)
      cr_assert_str_eq(ans.dc, dc);
    gs_client_close(c);
  }
}

/*
 * Several workers: answers per data center are counted per worker, and
 * folded into totals when a reload retires the snapshot that held them.
 */
Test(server, stats_with_four_workers_survive_a_reload)
{
  struct server s;
  gs_client *a;
  const msgpack_object *st;

  start_default(&s, &(struct server_opts){.extra = "workers: 4"});
  route_on_new_connections(&s, "81.2.69.5", "lhr", 20);
  a = server_admin(&s);
  st = admin_call(a, "stats", NULL, 0);
  cr_assert_eq(obj_get_u64(obj_get(st, "answers"), "lhr"), 20);
  cr_assert_eq(admin_generation(a), 1);
  admin_call(a, "map.reload", NULL, 0);
  admin_call(a, "map.reload", NULL, 0);
  /* Retired snapshots are freed once every worker has moved on. */
  POLL_UNTIL(obj_get_u64(obj_get(admin_call(a, "stats", NULL, 0), "reloads"),
                         "ok") == 2,
             10000, "reloads not counted");
  route_on_new_connections(&s, "12.12.12.1", NULL, 20);
  st = admin_call(a, "stats", NULL, 0);
  cr_assert_eq(obj_get_u64(obj_get(st, "answers"), "lhr"), 20);
  cr_assert_eq(obj_get_u64(obj_get(st, "answers"), "nrt"), 20);
  cr_assert_eq(obj_get_u64(obj_get(st, "requests"), "route"), 40);
  gs_client_close(a);
  finish(&s);
}

Test(server, explain_shows_rule_answer_and_ranking)
{
  struct server s;
  gs_client *a;
  const msgpack_object *r, *rank, *ans;

  start_default(&s, NULL);
  a = server_admin(&s);
  drain(a, "fra", true);
  r = admin_call(a, "explain", &(gs_arg){"ip", "::ffff:81.2.69.5", false}, 1);
  cr_assert(obj_is_str(obj_get(r, "resolved"), "81.2.69.5"));
  cr_assert(obj_is_str(obj_get(r, "rule"), "city 2643743"));
  cr_assert(obj_is_str(obj_get(r, "reason"), "city"));
  cr_assert_eq(obj_get_u64(r, "scope"), 24);
  cr_assert(obj_is_str(obj_get(obj_get(r, "location"), "country"), "GB"));
  ans = obj_get(r, "answer");
  cr_assert(ans && ans->type == MSGPACK_OBJECT_ARRAY &&
            ans->via.array.size == 3);
  cr_assert(obj_is_str(&ans->via.array.ptr[0], "lhr"));
  cr_assert(obj_is_str(&ans->via.array.ptr[1], "ams"));
  cr_assert(obj_is_str(&ans->via.array.ptr[2], "fra"));
  rank = obj_get(r, "ranking");
  cr_assert(rank && rank->type == MSGPACK_OBJECT_ARRAY);
  cr_assert_eq(rank->via.array.size, 10);
  cr_assert(obj_is_str(obj_get(&rank->via.array.ptr[0], "dc"), "lhr"));
  for (uint32_t i = 0; i < 10; i++) {
    const msgpack_object *e = &rank->via.array.ptr[i];
    const msgpack_object *d = obj_get(e, "drained");
    cr_assert_not_null(obj_get(e, "km"));
    cr_assert_not_null(obj_get(e, "effective_km"));
    cr_assert(d && d->type == MSGPACK_OBJECT_BOOLEAN);
    cr_assert_eq(d->via.boolean, obj_is_str(obj_get(e, "dc"), "fra"));
  }
  /* No data: location nil, the default order. */
  r = admin_call(a, "explain", &(gs_arg){"ip", "100.128.0.1", false}, 1);
  cr_assert_eq(obj_get(r, "location")->type, MSGPACK_OBJECT_NIL);
  cr_assert(obj_is_str(obj_get(r, "reason"), "unknown"));
  gs_client_close(a);
  finish(&s);
}

Test(server, metrics_serve_prometheus_text)
{
  struct server s;
  gs_client *c;
  char *text;

  start_default(&s,
                &(struct server_opts){.listen = "  metrics: \"127.0.0.1:0\""});
  cr_assert_neq(s.metrics_port, 0, "no metrics listening line");
  c = server_client(&s);
  for (int i = 0; i < 5; i++)
    route_ok(c, "81.2.69.5");
  route_fails(c, "999.1.1.1", false, GS_CODE_BAD_ADDRESS);
  gs_client_close(c);
  text = http_get(s.metrics_port, "/metrics");
  cr_assert(strncmp(text, "HTTP/1.0 200 OK\r\n", 17) == 0, "%.200s", text);
  cr_assert(strstr(text, "Content-Type: text/plain; version=0.0.4"), "%.300s",
            text);
  cr_assert(strstr(text, "\ngeosteer_requests_total{method=\"route\"} 6\n"),
            "%s", text);
  cr_assert(strstr(text, "\ngeosteer_route_answers_total{reason=\"city\"} 5\n"),
            "%s", text);
  cr_assert(strstr(text, "\ngeosteer_errors_total{code=\"BAD_ADDRESS\"} 1\n"),
            "%s", text);
  cr_assert(strstr(text, "\ngeosteer_dc_answers_total{dc=\"lhr\"} 5\n"), "%s",
            text);
  cr_assert(strstr(text, "\ngeosteer_table_generation 1\n"), "%s", text);
  cr_assert(strstr(text, "# TYPE geosteer_route_latency_seconds histogram"),
            "%s", text);
  cr_assert(strstr(text, "geosteer_route_latency_seconds_count 6\n"), "%s",
            text);
  free(text);
  text = http_get(s.metrics_port, "/other");
  cr_assert(strncmp(text, "HTTP/1.0 404", 12) == 0, "%.200s", text);
  free(text);
  finish(&s);
}

/* ---- reloads ----------------------------------------------------------- */

#define LOAD_BATCH 100
#define LOAD_MIN_REQUESTS 2000
#define RELOADS 20

struct load {
  uint16_t port;
  atomic_bool stop;
  atomic_long answered; /* valid replies */
  atomic_long failed;   /* requests without a valid reply */
  char failure[512];    /* the first failure */
};

/* Sends route batches on one connection until told to stop. */
static void *load_main(void *arg)
{
  struct load *l = arg;
  msgpack_sbuffer sb;
  uint32_t next = 1;
  int fd = raw_connect_port(l->port);

  if (fd < 0) {
    snprintf(l->failure, sizeof(l->failure), "connect: %s", strerror(errno));
    atomic_fetch_add(&l->failed, 1);
    return NULL;
  }
  msgpack_sbuffer_init(&sb);
  while (!atomic_load(&l->stop) ||
         atomic_load(&l->answered) < LOAD_MIN_REQUESTS) {
    struct rbuf in = {0};
    char why[400];
    const char *problem;
    int end;

    pack_route_batch(&sb, next, LOAD_BATCH);
    end = raw_exchange(fd, sb.data, sb.size, &in, LOAD_BATCH,
                       HARNESS_IO_WAIT_MS, NULL);
    problem = check_route_batch(&in, next, LOAD_BATCH, why, sizeof(why));
    if (end != RAW_REPLIES || problem) {
      snprintf(l->failure, sizeof(l->failure), "batch at msgid %u: %s (%s)",
               next, problem ? problem : "incomplete", raw_end_name(end));
      atomic_fetch_add(&l->failed, LOAD_BATCH);
      rbuf_free(&in);
      break;
    }
    atomic_fetch_add(&l->answered, LOAD_BATCH);
    next += LOAD_BATCH;
    rbuf_free(&in);
  }
  msgpack_sbuffer_destroy(&sb);
  close(fd);
  return NULL;
}

/*
 * RELOADS map.reload calls while `threads` connections keep sending route
 * batches; every request must get a valid answer.
 */
static void reloads_under_load(const char *extra, int threads)
{
  struct server s;
  struct load l[4] = {{0}};
  pthread_t thread[4];
  gs_client *a;
  uint64_t gen0, prev;
  long during = 0;

  cr_assert_leq(threads, 4);
  start_default(&s, &(struct server_opts){.extra = extra});
  a = server_admin(&s);
  gen0 = prev = admin_generation(a);
  for (int t = 0; t < threads; t++) {
    l[t].port = s.port;
    cr_assert_eq(pthread_create(&thread[t], NULL, load_main, &l[t]), 0);
  }
  for (int t = 0; t < threads; t++) {
    POLL_UNTIL(atomic_load(&l[t].answered) > 0 || atomic_load(&l[t].failed) > 0,
               HARNESS_IO_WAIT_MS, "no route answers before the reloads");
    during -= atomic_load(&l[t].answered);
  }
  for (int i = 0; i < RELOADS; i++) {
    uint64_t gen =
        obj_get_u64(admin_call(a, "map.reload", NULL, 0), "generation");
    cr_assert_gt(gen, prev, "reload %d: generation %llu after %llu", i,
                 (unsigned long long)gen, (unsigned long long)prev);
    prev = gen;
  }
  for (int t = 0; t < threads; t++) {
    during += atomic_load(&l[t].answered);
    atomic_store(&l[t].stop, true);
  }
  for (int t = 0; t < threads; t++) {
    pthread_join(thread[t], NULL);
    cr_assert_eq(atomic_load(&l[t].failed), 0, "connection %d: %ld failed: %s",
                 t, atomic_load(&l[t].failed), l[t].failure);
    cr_assert_geq(atomic_load(&l[t].answered), LOAD_MIN_REQUESTS);
  }
  cr_assert_eq(admin_generation(a), gen0 + RELOADS);
  cr_log_info("%d reloads, %d connections; %ld route answers during the "
              "reloads",
              RELOADS, threads, during);
  gs_client_close(a);
  finish(&s);
}

Test(server, reloads_under_load_lose_no_request)
{
  reloads_under_load(NULL, 1);
}

Test(server, reloads_under_load_with_four_workers)
{
  reloads_under_load("workers: 4", 4);
}

Test(server, sighup_reloads)
{
  struct server s;
  gs_client *a;
  uint64_t gen0;

  start_default(&s, NULL);
  a = server_admin(&s);
  gen0 = admin_generation(a);
  server_signal(&s, SIGHUP);
  POLL_UNTIL(admin_generation(a) > gen0, 10000,
             "generation still %llu 10 s after SIGHUP",
             (unsigned long long)gen0);
  server_assert_answers(&s);
  gs_client_close(a);
  finish(&s);
}

Test(server, editing_the_map_reloads_it)
{
  struct server s;
  gs_client *a, *c;
  uint64_t gen0;
  FILE *f;

  start_default(&s, NULL);
  a = server_admin(&s);
  gen0 = admin_generation(a);
  /* Send 12.12.12.0/24 to gru instead. */
  f = fopen(s.map, "a");
  cr_assert_not_null(f);
  fputs("  \"12.12.12.128/25\": [gru]\n", f);
  fclose(f);
  POLL_UNTIL(admin_generation(a) > gen0, 10000,
             "generation still %llu 10 s after the map was edited",
             (unsigned long long)gen0);
  c = server_client(&s);
  cr_assert_str_eq(route_ok(c, "12.12.12.200").dc, "gru");
  cr_assert_str_eq(route_ok(c, "12.12.12.1").dc, "nrt");
  gs_client_close(c);
  gs_client_close(a);
  finish(&s);
}

/* ---- shutdown ---------------------------------------------------------- */

/* Pings on fd and waits for the pong: the connection is accepted. */
static void raw_ping(int fd, uint32_t msgid)
{
  msgpack_sbuffer sb;
  msgpack_packer pk;
  struct rbuf in = {0};
  struct replies r;
  int end;

  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  pack_ping(&pk, msgid);
  end = raw_exchange(fd, sb.data, sb.size, &in, 1, HARNESS_IO_WAIT_MS, NULL);
  cr_assert_eq(end, RAW_REPLIES, "ping: %s", raw_end_name(end));
  replies_parse(&r, in.data, in.len);
  cr_assert(obj_is_str(result_of(&r.obj[0], msgid), "pong"));
  replies_free(&r);
  rbuf_free(&in);
  msgpack_sbuffer_destroy(&sb);
}

Test(server, sigterm_with_requests_in_flight)
{
  struct server s;
  msgpack_sbuffer sb;
  struct rbuf in = {0};
  struct replies r;
  ssize_t w;
  int fd, end;

  start_default(&s, NULL);
  fd = raw_connect(&s);
  raw_ping(fd, 1000);
  msgpack_sbuffer_init(&sb);
  pack_route_batch(&sb, 1, 200);
  w = send(fd, sb.data, sb.size, MSG_NOSIGNAL);
  cr_assert_eq(w, (ssize_t)sb.size);
  server_signal(&s, SIGTERM);
  end = raw_exchange(fd, NULL, 0, &in, 0, HARNESS_IO_WAIT_MS, NULL);
  cr_assert(end == RAW_EOF || end == RAW_RESET,
            "the connection was not closed (%s)", raw_end_name(end));
  replies_parse(&r, in.data, in.len);
  cr_assert_not(r.bad, "the replies are not MessagePack");
  cr_assert_eq(r.used, in.len, "a reply was cut: %zu of %zu bytes complete",
               r.used, in.len);
  for (size_t i = 0; i < r.n; i++) {
    const msgpack_object *res = result_of(&r.obj[i], (uint32_t)i + 1);
    cr_assert_null(route_result_problem(res), "reply %zu: %s", i,
                   route_result_problem(res));
    cr_assert(obj_is_str(obj_get(res, "dc"), load_ips[(i + 1) % NLOAD_IPS].dc));
  }
  cr_log_info("%zu of 200 requests answered before the close (%s)", r.n,
              raw_end_name(end));
  replies_free(&r);
  close(fd);
  rbuf_free(&in);
  msgpack_sbuffer_destroy(&sb);
  server_wait_stopped(&s);
  server_destroy(&s);
}

/*
 * Busy polling off, and at its longest with two workers: the same
 * answers, pipelined replies in order, and a clean stop with a batch in
 * flight (the polling handle must not keep a worker's loop alive).
 */
static void busy_poll_setting(const char *extra, const char *logged)
{
  struct server s;
  msgpack_sbuffer sb;
  struct rbuf in = {0};
  struct replies r;
  char *log;
  int fd, end;

  start_default(&s, &(struct server_opts){.extra = extra});
  log = server_log(&s);
  cr_assert(strstr(log, logged), "no '%s' in the log:\n%s", logged, log);
  free(log);
  route_on_new_connections(&s, "81.2.69.5", "lhr", 10);
  fd = raw_connect(&s);
  msgpack_sbuffer_init(&sb);
  pack_route_batch(&sb, 1, 100);
  end = raw_exchange(fd, sb.data, sb.size, &in, 100, HARNESS_IO_WAIT_MS, NULL);
  cr_assert_eq(end, RAW_REPLIES, "%s", raw_end_name(end));
  replies_parse(&r, in.data, in.len);
  cr_assert_eq(r.n, 100);
  for (size_t i = 0; i < r.n; i++)
    cr_assert(obj_is_str(obj_get(result_of(&r.obj[i], (uint32_t)i + 1), "dc"),
                         load_ips[(i + 1) % NLOAD_IPS].dc));
  replies_free(&r);
  cr_assert_eq(send(fd, sb.data, sb.size, MSG_NOSIGNAL), (ssize_t)sb.size);
  server_signal(&s, SIGTERM);
  server_wait_stopped(&s);
  close(fd);
  rbuf_free(&in);
  msgpack_sbuffer_destroy(&sb);
  server_destroy(&s);
}

Test(server, busy_poll_off)
{
  busy_poll_setting("busy_poll_us: 0", "workers=1 busy_poll_us=0");
}

Test(server, busy_poll_longest_with_two_workers)
{
  busy_poll_setting("busy_poll_us: 1000\nworkers: 2",
                    "workers=2 busy_poll_us=1000");
}

Test(server, sigterm_closes_idle_connections)
{
  struct server s;
  struct rbuf in = {0};
  gs_client *c;
  int fd, end;

  start_default(&s, NULL);
  c = server_client(&s);
  route_ok(c, NULL);
  fd = raw_connect(&s);
  raw_ping(fd, 1);
  server_signal(&s, SIGTERM);
  end = raw_exchange(fd, NULL, 0, &in, 0, HARNESS_IO_WAIT_MS, NULL);
  cr_assert_eq(end, RAW_EOF, "%s", raw_end_name(end));
  cr_assert_eq(in.len, 0);
  rbuf_free(&in);
  close(fd);
  gs_client_close(c);
  server_wait_stopped(&s);
  server_destroy(&s);
}

/*
 * The daemon promises to exit within its grace period whatever its peers
 * do; these peers hold a connection that the daemon cannot finish.
 */
Test(server, sigterm_exits_despite_an_idle_metrics_connection)
{
  struct server s;
  int fd, fds;

  start_default(&s,
                &(struct server_opts){.listen = "  metrics: \"127.0.0.1:0\""});
  fds = server_fd_count(&s);
  fd = raw_connect_port(s.metrics_port);
  cr_assert_geq(fd, 0);
  cr_assert_eq(send(fd, "GET /met", 8, MSG_NOSIGNAL), 8);
  POLL_UNTIL(server_fd_count(&s) > fds, 10000,
             "the metrics connection was not accepted");
  server_signal(&s, SIGTERM);
  server_wait_stopped(&s);
  close(fd);
  server_destroy(&s);
}

/* Sends n calls of method on fd without reading a reply. */
static void flood_without_reading(int fd, const char *method, uint32_t n)
{
  msgpack_sbuffer sb;
  msgpack_packer pk;

  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  for (uint32_t i = 1; i <= n; i++)
    pack_call(&pk, i, method);
  raw_send_until_stalled(fd, sb.data, sb.size, 1000);
  msgpack_sbuffer_destroy(&sb);
}

Test(server, sigterm_exits_despite_an_admin_client_that_does_not_read)
{
  struct server s;
  int fd;

  start_default(&s, NULL);
  fd = raw_connect_unix(s.admin);
  cr_assert_geq(fd, 0, "connect %s: %s", s.admin, strerror(errno));
  flood_without_reading(fd, "dc.list", 20000);
  server_signal(&s, SIGTERM);
  server_wait_stopped(&s);
  close(fd);
  server_destroy(&s);
}

Test(server, sigterm_exits_despite_a_route_client_that_does_not_read)
{
  struct server s;
  int fd;

  start_default(&s, NULL);
  fd = raw_connect(&s);
  flood_without_reading(fd, "ping", 200000);
  server_signal(&s, SIGTERM);
  server_wait_stopped(&s);
  close(fd);
  server_destroy(&s);
}

Test(server, idle_connections_are_closed)
{
  struct server s;
  msgpack_sbuffer sb;
  msgpack_packer pk;
  struct rbuf in = {0};
  int fd, end;

  start_default(&s, &(struct server_opts){.limits = "  idle_timeout_ms: 300"});
  fd = raw_connect(&s);
  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  pack_ping(&pk, 1);
  end = raw_exchange(fd, sb.data, sb.size, &in, 1, HARNESS_IO_WAIT_MS, NULL);
  cr_assert_eq(end, RAW_REPLIES, "%s", raw_end_name(end));
  end = raw_exchange(fd, NULL, 0, &in, 0, HARNESS_IO_WAIT_MS, NULL);
  cr_assert_eq(end, RAW_EOF, "an idle connection was not closed: %s",
               raw_end_name(end));
  cr_assert_eq(harness_count_objects(in.data, in.len), 1);
  close(fd);
  rbuf_free(&in);
  msgpack_sbuffer_destroy(&sb);
  server_assert_answers(&s);
  finish(&s);
}

/* ---- the admin socket -------------------------------------------------- */

Test(server, second_daemon_on_the_same_admin_socket_refuses)
{
  struct server s, other;
  char *out;
  gs_client *a;
  int status;

  start_default(&s, NULL);
  server_init(&other, NULL);
  snprintf(other.admin, sizeof(other.admin), "%s", s.admin);
  server_write_config(&other, NULL);
  status =
      harness_run_daemon(other.dir, (char *[]){"-c", other.config, NULL}, &out);
  cr_assert_eq(status, 1, "second daemon: status %d:\n%s", status, out);
  cr_assert(strstr(out, s.admin), "the message does not name %s:\n%s", s.admin,
            out);
  free(out);
  /* The first one still owns its socket. */
  a = server_admin(&s);
  cr_assert(obj_is_str(admin_call(a, "ping", NULL, 0), "pong"));
  gs_client_close(a);
  server_destroy(&other);
  finish(&s);
}

Test(server, stale_admin_socket_is_replaced)
{
  struct server s;
  struct sockaddr_un sun = {0};
  struct stat st;
  gs_client *a;
  char *log;
  int fd;

  server_init(&s, NULL);
  /* A socket file nobody listens on, as a crashed daemon leaves it. */
  fd = socket(AF_UNIX, SOCK_STREAM, 0);
  cr_assert_geq(fd, 0);
  sun.sun_family = AF_UNIX;
  cr_assert_lt(strlen(s.admin), sizeof(sun.sun_path));
  memcpy(sun.sun_path, s.admin, strlen(s.admin) + 1);
  cr_assert_eq(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0, "bind: %s",
               strerror(errno));
  close(fd);
  cr_assert(stat(s.admin, &st) == 0 && S_ISSOCK(st.st_mode));
  server_start(&s);
  log = server_log(&s);
  cr_assert(strstr(log, "event=stale_admin_socket_replaced"), "%s", log);
  free(log);
  a = server_admin(&s);
  cr_assert(obj_is_str(admin_call(a, "ping", NULL, 0), "pong"));
  gs_client_close(a);
  finish(&s);
}

Test(server, a_file_on_the_admin_path_is_not_replaced)
{
  struct server s;
  char *out, *text;
  int status;

  server_init(&s, NULL);
  harness_write_file(s.admin, "keep me\n");
  status = harness_run_daemon(s.dir, (char *[]){"-c", s.config, NULL}, &out);
  cr_assert_eq(status, 1, "status %d:\n%s", status, out);
  cr_assert(strstr(out, "not a socket"), "%s", out);
  text = harness_read_file(s.admin, 0, NULL);
  cr_assert_str_eq(text, "keep me\n");
  free(text);
  free(out);
  server_destroy(&s);
}

/* ---- logs and command line --------------------------------------------- */

Test(server, log_holds_no_client_address_or_user)
{
  static const char *const secrets[] = {"81.2.69.5", "2a02:1000::1234",
                                        "alice-test-user"};
  struct server s;
  gs_client *c, *a;
  gs_route_answer ans;
  char *log;

  start_default(&s, NULL);
  c = server_client(&s);
  a = server_admin(&s);
  cr_assert_eq(gs_route(c, "alice-test-user", "81.2.69.5", NULL, false, NULL,
                        &ans, NULL),
               0);
  cr_assert_eq(gs_route(c, "alice-test-user", "2a02:1000::1234", NULL, false,
                        "sess-1", &ans, NULL),
               0);
  cr_assert_eq(
      gs_route(c, "alice-test-user", NULL, NULL, true, NULL, &ans, NULL), 0);
  /* Errors and admin calls about those addresses. */
  cr_assert_eq(gs_route(c, "alice-test-user", "81.2.69.5", NULL, false,
                        "bad session", &ans, NULL),
               GS_ERR_REMOTE);
  admin_call(a, "explain", &(gs_arg){"ip", "2a02:1000::1234", false}, 1);
  admin_call(a, "map.reload", NULL, 0);
  gs_client_close(a);
  gs_client_close(c);
  server_stop(&s);
  log = server_log(&s);
  for (size_t i = 0; i < 3; i++)
    cr_assert_null(strstr(log, secrets[i]), "the log holds %s:\n%s", secrets[i],
                   log);
  cr_assert(strstr(log, "event=stopped"), "%s", log);
  free(log);
  server_destroy(&s);
}

Test(server, check_mode_and_version)
{
  struct server s;
  char *out;
  char version[64];

  server_init(&s, NULL);
  cr_assert_eq(
      harness_run_daemon(s.dir, (char *[]){"-t", "-c", s.config, NULL}, &out),
      0, "%s", out);
  cr_assert(strstr(out, "are ok"), "%s", out);
  free(out);

  harness_write_file(s.map, broken_map);
  cr_assert_eq(
      harness_run_daemon(s.dir, (char *[]){"-t", "-c", s.config, NULL}, &out),
      1, "%s", out);
  cr_assert(strstr(out, "map.yaml:4: key 'lat'"), "%s", out);
  free(out);
  /* Without -t the same config does not start. */
  cr_assert_eq(
      harness_run_daemon(s.dir, (char *[]){"-c", s.config, NULL}, &out), 1,
      "%s", out);
  cr_assert(strstr(out, "map.yaml:4: key 'lat'"), "%s", out);
  cr_assert_null(strstr(out, "event=started"), "%s", out);
  free(out);

  snprintf(version, sizeof(version), "geosteerd %s\n", GS_VERSION);
  cr_assert_eq(harness_run_daemon(s.dir, (char *[]){"--version", NULL}, &out),
               0);
  cr_assert_str_eq(out, version);
  free(out);
  cr_assert_eq(
      harness_run_daemon(s.dir, (char *[]){"--frobnicate", NULL}, &out), 2,
      "%s", out);
  free(out);
  server_destroy(&s);
}
