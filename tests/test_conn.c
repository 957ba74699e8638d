/*
 * test_conn: the connection layer on its own loop, for what the daemon
 * tests cannot time: events that land in one loop iteration.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

#include "conn.h"

static struct conn_server srv;
static int dispatched;

static int answer_pong(struct conn *c, const struct rpc_request *req,
                       msgpack_packer *pk)
{
  (void)c;
  dispatched++;
  rpc_pack_result_head(pk, req->msgid);
  rpc_pack_str(pk, "pong");
  return 0;
}

static void prefetch_nothing(struct conn *c, const uint32_t *sizes, size_t n,
                             bool first)
{
  (void)c;
  (void)sizes;
  (void)n;
  (void)first;
}

/* What a worker does on SIGTERM. */
static void on_stop(uv_poll_t *p, int status, int events)
{
  (void)status;
  (void)events;
  conn_server_stop(&srv);
  uv_poll_stop(p);
}

static void close_handle(uv_handle_t *h, void *arg)
{
  (void)arg;
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

/*
 * A request and the stop arrive in one loop iteration: the request was
 * read, so it is in flight and gets its reply before the close. With
 * prefetch (route listeners queue what they read) and without (admin).
 */
static void stop_answers_what_was_read(bool with_prefetch)
{
  uv_loop_t loop;
  struct config cfg;
  _Atomic size_t open = 0;
  struct listen_addr la = {
      .text = "127.0.0.1", .addr = 0x7f000001, .is_v4 = true};
  uint16_t port = 0;
  int stop_pipe[2], fd;
  uv_poll_t stop;
  const char ping[] = "\x94\x00\x01\xa4ping\x90"; /* [0, 1, "ping", []] */
  const char pong[] = "\x94\x01\x01\xc0\xa4pong"; /* [1, 1, nil, "pong"] */
  char buf[64];

  dispatched = 0;
  cr_assert_eq(uv_loop_init(&loop), 0);
  memset(&cfg, 0, sizeof(cfg));
  cfg.max_message = 4096;
  cfg.max_pending_bytes = 1 << 20;
  cfg.idle_timeout_ms = 10000;
  cfg.max_connections = 10;
  cr_assert_eq(
      conn_server_init(&srv, &loop, &cfg, 0, &open, answer_pong, NULL, "route"),
      0);
  if (with_prefetch)
    srv.prefetch = prefetch_nothing;
  cr_assert_eq(conn_listen_tcp(&srv, &la, false, &port), 0);
  fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sin = {.sin_family = AF_INET,
                            .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  cr_assert_eq(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
  for (int i = 0; i < 50 && conn_server_count(&srv) == 0; i++)
    uv_run(&loop, UV_RUN_NOWAIT);
  cr_assert_eq(conn_server_count(&srv), 1, "not accepted");

  cr_assert_eq(pipe(stop_pipe), 0);
  uv_poll_init(&loop, &stop, stop_pipe[0]);
  uv_poll_start(&stop, UV_READABLE, on_stop);
  uv_run(&loop, UV_RUN_NOWAIT);
  /* Both before the loop polls again: the request first, then the stop. */
  cr_assert_eq(write(fd, ping, sizeof(ping) - 1), (ssize_t)sizeof(ping) - 1);
  usleep(20000);
  cr_assert_eq(write(stop_pipe[1], "x", 1), 1);
  for (int i = 0; i < 20; i++)
    uv_run(&loop, UV_RUN_NOWAIT);

  struct pollfd p = {.fd = fd, .events = POLLIN};
  cr_assert_eq(poll(&p, 1, 1000), 1, "no reply and no close");
  ssize_t n = read(fd, buf, sizeof(buf));
  cr_assert_eq(dispatched, 1, "the request was not handled");
  cr_assert_eq(n, (ssize_t)sizeof(pong) - 1, "read %zd bytes", n);
  cr_assert_eq(memcmp(buf, pong, sizeof(pong) - 1), 0);
  cr_assert_eq(read(fd, buf, sizeof(buf)), 0, "not closed after the reply");

  close(fd);
  close(stop_pipe[0]);
  close(stop_pipe[1]);
  conn_server_close_all(&srv);
  uv_walk(&loop, close_handle, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  cr_assert_eq(uv_loop_close(&loop), 0);
  conn_server_free(&srv);
}

Test(conn, stop_answers_input_read_in_the_same_iteration)
{
  stop_answers_what_was_read(true);
}

Test(conn, stop_answers_input_read_in_the_same_iteration_admin)
{
  stop_answers_what_was_read(false);
}
