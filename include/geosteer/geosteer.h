/*
 * geosteer.h: public constants shared by the server, the client library and
 * the CLI: error codes, routing reasons and the version.
 *
 * Error codes are negative and never renumbered; 0 is success. libuv's codes
 * (negative errno values, all above -5000) pass through unchanged, so a
 * geosteer code and a libuv code never collide. gs_strerror() and
 * gs_err_name() accept both.
 */
#ifndef GEOSTEER_H
#define GEOSTEER_H

#define GS_VERSION "0.1.0"

typedef enum gs_err {
  GS_OK = 0,
  GS_ERR_NOMEM = -5001,   /* out of memory */
  GS_ERR_IO = -5002,      /* a file could not be opened or read */
  GS_ERR_SYNTAX = -5003,  /* a YAML file is not well-formed */
  GS_ERR_INVALID = -5004, /* a map or config value fails validation */
  GS_ERR_DB = -5005,      /* the database is corrupt or unreadable */
  GS_ERR_DB_TYPE = -5006, /* the database is not an IPv6 City database */
  GS_ERR_ADDR = -5007,    /* not an IPv4 or IPv6 address */
  GS_ERR_LIMIT = -5008,   /* a hard limit would be exceeded */
} gs_err;

/* Why an answer was chosen. Values are stable; names are wire strings. */
typedef enum gs_reason {
  GS_REASON_NET = 0,         /* a `nets` entry of the map */
  GS_REASON_CITY = 1,        /* a city override (geoname_id) */
  GS_REASON_SUBDIVISION = 2, /* a subdivision override (CC-SUB) */
  GS_REASON_COUNTRY = 3,     /* a country override */
  GS_REASON_CONTINENT = 4,   /* a continent override */
  GS_REASON_NEAREST = 5,     /* nearest by great-circle distance and bias */
  GS_REASON_UNKNOWN = 6,     /* no location: the map's default order */
  GS_REASON_NOGEO = 7,       /* the client asked for no geolocation */
  GS_REASON_OPTOUT = 8,      /* the user opted out (or the store is down) */
  GS_REASON_COUNT_
} gs_reason;

/* Human text for a gs_err or libuv code; never NULL, static storage. */
const char *gs_strerror(int err);
/* Symbolic name ("GS_ERR_INVALID", "ECONNREFUSED"); never NULL, static. */
const char *gs_err_name(int err);
/* Wire name of a reason ("nearest"); "?" for an unknown value. */
const char *gs_reason_name(int reason);

#endif
