/*
 * share_sink: a stand-in for the data-center provider's collector, for
 * bench-share. It listens on 127.0.0.1, reads everything every connection
 * sends and throws it away, as fast as it comes.
 *
 * One thread, one poll set. The port it listens on (--port, default 0: a
 * free one) is printed as the first line, `port: N`, once it accepts
 * connections, so a script can start it and read the port back. On SIGTERM
 * or SIGINT it prints `sink_bytes: N bytes` and `sink_connections: N
 * connections` and exits 0.
 *
 * Invariants: no allocation after start; at most MAX_CONNS connections at
 * once (more are accepted and closed at once, and counted).
 */
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>

#define MAX_CONNS 64
#define READ_BUF (256 * 1024)

static volatile sig_atomic_t stopping;

static void on_signal(int sig)
{
  (void)sig;
  stopping = 1;
}

static int listen_on(uint16_t port, uint16_t *bound)
{
  struct sockaddr_in sin = {.sin_family = AF_INET};
  socklen_t len = sizeof(sin);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

  if (fd < 0)
    return -1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sin.sin_port = htons(port);
  if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0 ||
      listen(fd, 64) != 0 ||
      getsockname(fd, (struct sockaddr *)&sin, &len) != 0) {
    close(fd);
    return -1;
  }
  *bound = ntohs(sin.sin_port);
  return fd;
}

int main(int argc, char **argv)
{
  static char buf[READ_BUF];
  struct pollfd p[MAX_CONNS + 1];
  struct sigaction sa = {.sa_handler = on_signal};
  uint64_t bytes = 0, accepted = 0;
  unsigned long port = 0;
  uint16_t bound;
  size_t n = 1;

  if (argc == 3 && strcmp(argv[1], "--port") == 0) {
    char *end;
    port = strtoul(argv[2], &end, 10);
    if (*end != '\0' || port > 65535) {
      fprintf(stderr, "share_sink: bad port %s\n", argv[2]);
      return 2;
    }
  } else if (argc != 1) {
    fprintf(stderr, "usage: share_sink [--port PORT]\n");
    return 2;
  }
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  p[0].fd = listen_on((uint16_t)port, &bound);
  if (p[0].fd < 0) {
    fprintf(stderr, "share_sink: cannot listen on 127.0.0.1:%lu: %s\n", port,
            strerror(errno));
    return 1;
  }
  p[0].events = POLLIN;
  printf("port: %u\n", (unsigned)bound);
  fflush(stdout);

  while (!stopping) {
    if (poll(p, n, -1) < 0) {
      if (errno == EINTR)
        continue;
      perror("share_sink: poll");
      return 1;
    }
    for (size_t i = n; i-- > 1;) {
      if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
        continue;
      ssize_t r = read(p[i].fd, buf, sizeof(buf));
      if (r > 0) {
        bytes += (uint64_t)r;
      } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
        close(p[i].fd);
        p[i] = p[--n];
      }
    }
    if (p[0].revents & POLLIN) {
      int fd = accept4(p[0].fd, NULL, NULL, SOCK_CLOEXEC);
      if (fd >= 0) {
        accepted++;
        if (n < MAX_CONNS + 1)
          p[n++] = (struct pollfd){.fd = fd, .events = POLLIN};
        else
          close(fd);
      }
    }
  }
  printf("sink_bytes: %" PRIu64 " bytes\n", bytes);
  printf("sink_connections: %" PRIu64 " connections\n", accepted);
  return 0;
}
