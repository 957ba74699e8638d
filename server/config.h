/*
 * config: the server configuration file (geosteer.yaml), validated and
 * loaded with every default filled in.
 *
 * Paths in the file are relative to the file's own folder; the loaded
 * config holds them resolved (relative to the current directory or
 * absolute; defaults are resolved the same way, as if written in the
 * file). Every problem is reported with file:line, key, expected and
 * found; unknown keys are errors; a bad config never half-loads. Only
 * listen.route, geo.database and geo.map are required. docs/config.md is
 * the reference for every key.
 */
#ifndef GS_CONFIG_H
#define GS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "addr.h"
#include "diag.h"

#define CONFIG_MAX_LISTEN 16 /* route listeners */
#define CONFIG_MAX_WORKERS 64

struct cidr {
  addr128 net; /* engine space: IPv4 at ::/96 */
  int plen;    /* 0..128 in that space */
};

/*
 * A "host:port" or "[v6]:port" listen address, parsed. To bind, build the
 * sockaddr from is_v4: addr_to_sockaddr() alone would turn [::1] and [::]
 * (which lie in ::/96) into the IPv4 addresses 0.0.0.1 and 0.0.0.0.
 */
struct listen_addr {
  char text[64]; /* as written, for logs */
  addr128 addr;  /* engine space */
  bool is_v4;    /* written as IPv4 */
  uint16_t port; /* 0 = ephemeral (tests) */
};

/* How coarse the location shared with the provider is. */
enum share_precision {
  SHARE_CONTINENT,
  SHARE_COUNTRY,
  SHARE_SUBDIVISION,
  SHARE_CELL /* whole-degree grid: [floor(lat), floor(lon)] */
};

struct config {
  char *path; /* the config file, as given */
  struct listen_addr route[CONFIG_MAX_LISTEN];
  size_t nroute;    /* >= 1 */
  char *admin_path; /* unix socket; default "geosteerd.sock" */
  bool has_metrics;
  struct listen_addr metrics; /* when has_metrics */
  bool has_admin_tcp;
  struct listen_addr admin_tcp; /* when has_admin_tcp */
  char *admin_token_file;       /* NULL unless set; required by admin_tcp */
  char *geo_database;
  char *geo_map;
  char *store_path;              /* default "geosteer.db" */
  char *store_key_file;          /* default "geosteer.key" beside store_path */
  uint32_t audit_retention_days; /* 1..36500, default 400 */
  bool anonymous_nogeo;          /* anonymous: nogeo (default geo) */
  /* share: the provider channel; off unless share.provider is set */
  bool has_share;
  struct listen_addr share_provider;
  uint32_t share_precision; /* enum share_precision, default country */
  bool share_aggregate;     /* mode: aggregate (default events) */
  uint32_t share_min_count; /* aggregate: smaller buckets are not sent */
  uint32_t share_interval_ms;
  uint32_t share_queue_max; /* records held while the provider is slow */
  struct cidr *trusted;     /* trusted_proxies */
  size_t ntrusted;
  int workers;              /* 1..64, default 1 */
  int busy_poll_us;         /* 0..1000, default 50; 0: off */
  size_t max_message;       /* bytes, default 4096 */
  size_t max_connections;   /* default 10000 */
  uint64_t idle_timeout_ms; /* default 30000 */
  size_t max_pending_bytes; /* default 1048576 */
};

/*
 * Loads and validates path. On success *out owns the config (config_free)
 * and 0 is returned; otherwise every problem is in d, *out is untouched and
 * a negative code is returned.
 */
int config_load(const char *path, struct config **out, struct diag *d);
void config_free(struct config *c);

/* True when a (engine space) lies in one of c's trusted_proxies. */
bool config_is_trusted(const struct config *c, addr128 a);

/*
 * Parses "host:port" / "[v6]:port" (host a literal address, port 0..65535;
 * hostnames are refused). Returns 0, or GS_ERR_ADDR with a reason for a
 * person in why ("port must be 0..65535, got \"70000\"") and *out
 * untouched.
 */
int config_parse_listen(const char *text, struct listen_addr *out, char *why,
                        size_t why_size);

#endif
