/*
 * errors: names and texts for geosteer's error codes and routing reasons.
 * libuv codes (negative errno values) are passed through to libuv.
 */
#include <uv.h>

#include "geosteer/geosteer.h"
#include "geosteer/protocol.h"

static const struct {
  int code;
  const char *name;
  const char *text;
} errors[] = {
    {GS_OK, "GS_OK", "success"},
    {GS_ERR_NOMEM, "GS_ERR_NOMEM", "out of memory"},
    {GS_ERR_IO, "GS_ERR_IO", "file could not be opened or read"},
    {GS_ERR_SYNTAX, "GS_ERR_SYNTAX", "YAML syntax error"},
    {GS_ERR_INVALID, "GS_ERR_INVALID", "invalid value"},
    {GS_ERR_DB, "GS_ERR_DB", "database corrupt or unreadable"},
    {GS_ERR_DB_TYPE, "GS_ERR_DB_TYPE", "not an IPv6 City database"},
    {GS_ERR_ADDR, "GS_ERR_ADDR", "not an IPv4 or IPv6 address"},
    {GS_ERR_LIMIT, "GS_ERR_LIMIT", "a hard limit would be exceeded"},
};

const char *gs_strerror(int err)
{
  for (size_t i = 0; i < sizeof(errors) / sizeof(errors[0]); i++)
    if (errors[i].code == err)
      return errors[i].text;
  if (err < 0 && err > -5000)
    return uv_strerror(err);
  return "unknown error";
}

const char *gs_err_name(int err)
{
  for (size_t i = 0; i < sizeof(errors) / sizeof(errors[0]); i++)
    if (errors[i].code == err)
      return errors[i].name;
  if (err < 0 && err > -5000)
    return uv_err_name(err);
  return "GS_ERR_UNKNOWN";
}

const char *gs_reason_name(int reason)
{
  static const char *const names[GS_REASON_COUNT_] = {
      [GS_REASON_NET] = "net",
      [GS_REASON_CITY] = "city",
      [GS_REASON_SUBDIVISION] = "subdivision",
      [GS_REASON_COUNTRY] = "country",
      [GS_REASON_CONTINENT] = "continent",
      [GS_REASON_NEAREST] = "nearest",
      [GS_REASON_UNKNOWN] = "unknown",
      [GS_REASON_NOGEO] = "nogeo",
      [GS_REASON_OPTOUT] = "optout",
  };
  return reason >= 0 && reason < GS_REASON_COUNT_ ? names[reason] : "?";
}

const char *gs_code_name(int code)
{
  static const char *const names[GS_CODE_COUNT_] = {
      [GS_CODE_BAD_REQUEST] = "BAD_REQUEST",
      [GS_CODE_MESSAGE_TOO_LARGE] = "MESSAGE_TOO_LARGE",
      [GS_CODE_UNKNOWN_METHOD] = "UNKNOWN_METHOD",
      [GS_CODE_BAD_ADDRESS] = "BAD_ADDRESS",
      [GS_CODE_FORBIDDEN] = "FORBIDDEN",
      [GS_CODE_NO_DATACENTER] = "NO_DATACENTER",
      [GS_CODE_UNAVAILABLE] = "UNAVAILABLE",
      [GS_CODE_UNAUTHORIZED] = "UNAUTHORIZED",
      [GS_CODE_NOT_FOUND] = "NOT_FOUND",
      [GS_CODE_RELOAD_FAILED] = "RELOAD_FAILED",
      [GS_CODE_INTERNAL] = "INTERNAL",
      [GS_CODE_STORE_UNAVAILABLE] = "STORE_UNAVAILABLE",
  };
  return code > 0 && code < GS_CODE_COUNT_ ? names[code] : "UNKNOWN";
}
