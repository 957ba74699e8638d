/*
 * geo: reading the City database. See geo.h.
 *
 * The walk is an explicit-stack depth-first traversal of the search tree,
 * left before right, so leaves come out in address order. The IPv4 subtree
 * sits at ::/96; MaxMind trees alias it from ::ffff:0:0/96, 2001::/32 and
 * 2002::/16 by pointing those records at the same node. The walk recognises
 * the alias by node number and reports the aliased prefix as one no-data
 * leaf: the engine routes such addresses by their embedded IPv4 address
 * (addr_normalize), never by these subtrees.
 *
 * Data records are keyed by their offset in the data section; a small
 * open-addressing hash maps offset -> index of the decoded location, so each
 * distinct record is decoded exactly once per walk.
 */
#include "geo.h"

#include <errno.h>
#include <maxminddb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "geosteer/geosteer.h"

struct geo {
  MMDB_s mmdb;
  uint32_t v4_node; /* node at ::/96, or UINT32_MAX when it is a leaf */
  char path[];
};

int geo_open(const char *path, struct geo **out, struct diag *d)
{
  struct geo *g;
  const MMDB_metadata_s *md;
  int status;
  uint32_t node = 0;

  g = calloc(1, sizeof(*g) + strlen(path) + 1);
  if (g == NULL)
    return GS_ERR_NOMEM;
  strcpy(g->path, path);
  status = MMDB_open(path, MMDB_MODE_MMAP, &g->mmdb);
  if (status != MMDB_SUCCESS) {
    int err = status == MMDB_FILE_OPEN_ERROR ? errno : 0;
    if (status == MMDB_FILE_OPEN_ERROR)
      diag_add(d, path, 0, "cannot open database: %s",
               err ? strerror(err) : MMDB_strerror(status));
    else
      diag_add(d, path, 0, "not a valid MaxMind database: %s",
               MMDB_strerror(status));
    free(g);
    return status == MMDB_FILE_OPEN_ERROR ? GS_ERR_IO : GS_ERR_DB;
  }
  md = &g->mmdb.metadata;
  if (md->binary_format_major_version != 2) {
    diag_add(d, path, 0, "database format %u.%u is not supported (need 2.x)",
             md->binary_format_major_version, md->binary_format_minor_version);
    goto bad_type;
  }
  if (md->database_type == NULL || strstr(md->database_type, "City") == NULL) {
    diag_add(d, path, 0,
             "database type is \"%s\"; geosteer needs a City database "
             "(GeoLite2-City or GeoIP2-City)",
             md->database_type ? md->database_type : "");
    goto bad_type;
  }
  if (md->ip_version != 6) {
    diag_add(d, path, 0,
             "database has an IPv%u-only tree; geosteer needs an IPv6 tree "
             "(which also holds IPv4)",
             md->ip_version);
    goto bad_type;
  }
  /* Find the ::/96 node by following 96 left branches. */
  for (int depth = 0; depth < 96; depth++) {
    MMDB_search_node_s sn;
    if (MMDB_read_node(&g->mmdb, node, &sn) != MMDB_SUCCESS) {
      diag_add(d, path, 0, "corrupt search tree at node %u", node);
      MMDB_close(&g->mmdb);
      free(g);
      return GS_ERR_DB;
    }
    if (sn.left_record_type != MMDB_RECORD_TYPE_SEARCH_NODE) {
      node = UINT32_MAX;
      break;
    }
    node = (uint32_t)sn.left_record;
  }
  g->v4_node = node;
  *out = g;
  return 0;

bad_type:
  MMDB_close(&g->mmdb);
  free(g);
  return GS_ERR_DB_TYPE;
}

void geo_close(struct geo *g)
{
  if (g == NULL)
    return;
  MMDB_close(&g->mmdb);
  free(g);
}

const char *geo_type(const struct geo *g)
{
  return g->mmdb.metadata.database_type;
}

time_t geo_build_epoch(const struct geo *g)
{
  return (time_t)g->mmdb.metadata.build_epoch;
}

static void copy_code(char *dst, size_t size, const MMDB_entry_data_s *ed)
{
  if (ed->has_data && ed->type == MMDB_DATA_TYPE_UTF8_STRING &&
      ed->data_size < size) {
    memcpy(dst, ed->utf8_string, ed->data_size);
    dst[ed->data_size] = '\0';
  } else {
    dst[0] = '\0';
  }
}

static bool get_double(MMDB_entry_s *e, const char *field, double *out)
{
  MMDB_entry_data_s ed;
  if (MMDB_get_value(e, &ed, "location", field, NULL) != MMDB_SUCCESS ||
      !ed.has_data)
    return false;
  if (ed.type == MMDB_DATA_TYPE_DOUBLE)
    *out = ed.double_value;
  else if (ed.type == MMDB_DATA_TYPE_FLOAT)
    *out = ed.float_value;
  else
    return false;
  return true;
}

/* Decodes the fields the engine uses; the one decoder of both paths. */
static void decode(MMDB_entry_s *e, struct geo_loc *loc)
{
  MMDB_entry_data_s ed;

  memset(loc, 0, sizeof(*loc));
  if (MMDB_get_value(e, &ed, "continent", "code", NULL) == MMDB_SUCCESS)
    copy_code(loc->continent, sizeof(loc->continent), &ed);
  if (MMDB_get_value(e, &ed, "country", "iso_code", NULL) == MMDB_SUCCESS)
    copy_code(loc->country, sizeof(loc->country), &ed);
  if (MMDB_get_value(e, &ed, "subdivisions", "0", "iso_code", NULL) ==
      MMDB_SUCCESS)
    copy_code(loc->subdivision, sizeof(loc->subdivision), &ed);
  if (MMDB_get_value(e, &ed, "city", "geoname_id", NULL) == MMDB_SUCCESS &&
      ed.has_data && ed.type == MMDB_DATA_TYPE_UINT32)
    loc->city = ed.uint32;
  if (get_double(e, "latitude", &loc->lat) &&
      get_double(e, "longitude", &loc->lon) && loc->lat >= -90 &&
      loc->lat <= 90 && loc->lon >= -180 && loc->lon <= 180)
    loc->has_coords = true;
  else
    loc->lat = loc->lon = 0;
}

int geo_lookup(struct geo *g, addr128 a, struct geo_loc *loc, bool *found,
               int *plen)
{
  struct sockaddr_storage ss;
  MMDB_lookup_result_s r;
  int mmdb_error;

  addr_to_sockaddr(a, (struct sockaddr *)&ss, sizeof(ss));
  r = MMDB_lookup_sockaddr(&g->mmdb, (struct sockaddr *)&ss, &mmdb_error);
  if (mmdb_error != MMDB_SUCCESS)
    return GS_ERR_DB;
  /* In an IPv6 tree the netmask counts IPv6 bits, IPv4 lookups included. */
  *plen = r.netmask;
  if (!r.found_entry) {
    *found = false;
    return 0;
  }
  decode(&r.entry, loc);
  *found = true;
  return 0;
}

/* offset -> location index, open addressing, power-of-two capacity. */
struct record_cache {
  uint32_t *keys; /* offset + 1; 0 is empty */
  int32_t *vals;
  size_t cap, count;
  struct geo_loc *locs;
  size_t nlocs, locs_cap;
};

static size_t slot_of(uint32_t key, size_t cap)
{
  return (size_t)((key * 2654435761u) & (cap - 1));
}

static int cache_grow(struct record_cache *c)
{
  size_t cap = c->cap ? c->cap * 2 : 1u << 16;
  uint32_t *keys = calloc(cap, sizeof(*keys));
  int32_t *vals = calloc(cap, sizeof(*vals));

  if (keys == NULL || vals == NULL) {
    free(keys);
    free(vals);
    return GS_ERR_NOMEM;
  }
  for (size_t i = 0; i < c->cap; i++) {
    if (c->keys[i] == 0)
      continue;
    size_t s = slot_of(c->keys[i], cap);
    while (keys[s])
      s = (s + 1) & (cap - 1);
    keys[s] = c->keys[i];
    vals[s] = c->vals[i];
  }
  free(c->keys);
  free(c->vals);
  c->keys = keys;
  c->vals = vals;
  c->cap = cap;
  return 0;
}

/* Index of the location for entry e, decoding it on first sight. */
static int32_t cache_get(struct record_cache *c, MMDB_entry_s *e)
{
  uint32_t key = e->offset + 1;
  size_t s;

  if (c->count * 2 >= c->cap && cache_grow(c) != 0)
    return GS_ERR_NOMEM;
  s = slot_of(key, c->cap);
  while (c->keys[s]) {
    if (c->keys[s] == key)
      return c->vals[s];
    s = (s + 1) & (c->cap - 1);
  }
  if (c->nlocs == c->locs_cap) {
    size_t cap = c->locs_cap ? c->locs_cap * 2 : 4096;
    struct geo_loc *locs = realloc(c->locs, cap * sizeof(*locs));
    if (locs == NULL)
      return GS_ERR_NOMEM;
    c->locs = locs;
    c->locs_cap = cap;
  }
  decode(e, &c->locs[c->nlocs]);
  c->keys[s] = key;
  c->vals[s] = (int32_t)c->nlocs;
  c->count++;
  return (int32_t)c->nlocs++;
}

struct walk_item {
  uint64_t record; /* node number, or data record value */
  uint32_t offset; /* data offset for data records */
  uint8_t type;    /* MMDB_RECORD_TYPE_* */
  uint8_t depth;   /* prefix length of this subtree */
  addr128 prefix;
};

int geo_walk(struct geo *g, geo_leaf_fn fn, void *ctx, size_t *nrecords)
{
  struct walk_item stack[130];
  struct record_cache cache;
  int sp = 0, rc = 0;

  memset(&cache, 0, sizeof(cache));
  stack[sp++] = (struct walk_item){0, 0, MMDB_RECORD_TYPE_SEARCH_NODE, 0, 0};
  while (sp > 0 && rc == 0) {
    struct walk_item it = stack[--sp];
    MMDB_search_node_s sn;

    if (it.type == MMDB_RECORD_TYPE_SEARCH_NODE) {
      bool alias =
          it.record == g->v4_node && !(it.depth == 96 && it.prefix == 0);
      if (alias) {
        rc = fn(ctx, it.prefix, it.depth, NULL, -1);
        continue;
      }
      if (it.depth >= 128 ||
          MMDB_read_node(&g->mmdb, (uint32_t)it.record, &sn) != MMDB_SUCCESS) {
        rc = GS_ERR_DB;
        break;
      }
      if (sn.left_record_type == MMDB_RECORD_TYPE_INVALID ||
          sn.right_record_type == MMDB_RECORD_TYPE_INVALID) {
        rc = GS_ERR_DB;
        break;
      }
      /* Right first so that left is popped (and emitted) first. */
      stack[sp++] =
          (struct walk_item){sn.right_record, sn.right_record_entry.offset,
                             sn.right_record_type, (uint8_t)(it.depth + 1),
                             it.prefix | ((addr128)1 << (127 - it.depth))};
      stack[sp++] = (struct walk_item){
          sn.left_record, sn.left_record_entry.offset, sn.left_record_type,
          (uint8_t)(it.depth + 1), it.prefix};
    } else if (it.type == MMDB_RECORD_TYPE_DATA) {
      MMDB_entry_s e = {.mmdb = &g->mmdb, .offset = it.offset};
      int32_t idx = cache_get(&cache, &e);
      if (idx < 0) {
        rc = idx;
        break;
      }
      rc = fn(ctx, it.prefix, it.depth, &cache.locs[idx], idx);
    } else {
      rc = fn(ctx, it.prefix, it.depth, NULL, -1);
    }
  }
  if (nrecords)
    *nrecords = cache.nlocs;
  free(cache.keys);
  free(cache.vals);
  free(cache.locs);
  return rc;
}
