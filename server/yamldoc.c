/*
 * yamldoc: libyaml document loading and validating accessors. See yamldoc.h.
 *
 * Scalars are read as plain text and converted here, so "0x10", "1e400" or
 * "north" are reported with the same wording wherever they appear.
 */
#include "yamldoc.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "geosteer/geosteer.h"

int yamldoc_load(struct yamldoc *y, const char *path, struct diag *d)
{
  yaml_parser_t parser;
  FILE *f;
  int rc = 0;

  memset(y, 0, sizeof(*y));
  y->path = path;
  y->diag = d;
  f = fopen(path, "rb");
  if (f == NULL) {
    diag_add(d, path, 0, "cannot open: %s", strerror(errno));
    return GS_ERR_IO;
  }
  if (!yaml_parser_initialize(&parser)) {
    fclose(f);
    return GS_ERR_NOMEM;
  }
  yaml_parser_set_input_file(&parser, f);
  if (!yaml_parser_load(&parser, &y->doc)) {
    diag_add(d, path, (unsigned)parser.problem_mark.line + 1,
             "YAML syntax error: %s%s%s",
             parser.problem ? parser.problem : "unknown problem",
             parser.context ? " " : "", parser.context ? parser.context : "");
    rc = GS_ERR_SYNTAX;
  } else {
    y->loaded = true;
  }
  yaml_parser_delete(&parser);
  fclose(f);
  return rc;
}

void yamldoc_free(struct yamldoc *y)
{
  if (y->loaded)
    yaml_document_delete(&y->doc);
  y->loaded = false;
}

yaml_node_t *yamldoc_root(struct yamldoc *y)
{
  return y->loaded ? yaml_document_get_root_node(&y->doc) : NULL;
}

yaml_node_t *yamldoc_node(struct yamldoc *y, int index)
{
  return yaml_document_get_node(&y->doc, index);
}

unsigned yamldoc_line(const yaml_node_t *n)
{
  return n ? (unsigned)n->start_mark.line + 1 : 0;
}

bool yamldoc_is_null(const yaml_node_t *n)
{
  const char *v;

  if (n == NULL)
    return true;
  if (n->type != YAML_SCALAR_NODE ||
      n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
    return false;
  v = (const char *)n->data.scalar.value;
  return v[0] == '\0' || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 ||
         strcmp(v, "Null") == 0 || strcmp(v, "NULL") == 0;
}

void yamldoc_describe(const yaml_node_t *n, char *buf, size_t size)
{
  if (n == NULL || yamldoc_is_null(n)) {
    snprintf(buf, size, "null");
  } else if (n->type == YAML_MAPPING_NODE) {
    snprintf(buf, size, "a mapping");
  } else if (n->type == YAML_SEQUENCE_NODE) {
    snprintf(buf, size, "a list");
  } else {
    const char *v = (const char *)n->data.scalar.value;
    size_t len = strlen(v);
    if (len > 40)
      snprintf(buf, size, "\"%.37s...\"", v);
    else
      snprintf(buf, size, "\"%s\"", v);
  }
}

void yamldoc_error(struct yamldoc *y, const yaml_node_t *n, const char *key,
                   const char *fmt, ...)
{
  char body[768];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(body, sizeof(body), fmt, ap);
  va_end(ap);
  if (key)
    diag_add(y->diag, y->path, yamldoc_line(n), "key '%s': %s", key, body);
  else
    diag_add(y->diag, y->path, yamldoc_line(n), "%s", body);
}

static bool key_allowed(const char *key, const char *const *allowed)
{
  for (; *allowed; allowed++)
    if (strcmp(key, *allowed) == 0)
      return true;
  return false;
}

bool yamldoc_check_keys(struct yamldoc *y, yaml_node_t *n, const char *what,
                        const char *const *allowed)
{
  yaml_node_pair_t *p, *q;
  bool ok = true;
  char found[64];

  if (n == NULL || n->type != YAML_MAPPING_NODE) {
    yamldoc_describe(n, found, sizeof(found));
    yamldoc_error(y, n, what, "expected a mapping, got %s", found);
    return false;
  }
  for (p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
    yaml_node_t *k = yamldoc_node(y, p->key);
    const char *name;
    if (k->type != YAML_SCALAR_NODE) {
      yamldoc_error(y, k, what, "keys must be plain names");
      ok = false;
      continue;
    }
    name = (const char *)k->data.scalar.value;
    if (!key_allowed(name, allowed)) {
      char list[256] = "";
      size_t used = 0;
      for (const char *const *a = allowed; *a && used < sizeof(list); a++)
        used += (size_t)snprintf(list + used, sizeof(list) - used, "%s%s",
                                 a == allowed ? "" : ", ", *a);
      if (what)
        yamldoc_error(y, k, NULL,
                      "unknown key '%s' in %s (expected one of: %s)", name,
                      what, list);
      else
        yamldoc_error(y, k, NULL, "unknown key '%s' (expected one of: %s)",
                      name, list);
      ok = false;
    }
    for (q = n->data.mapping.pairs.start; q < p; q++) {
      yaml_node_t *k2 = yamldoc_node(y, q->key);
      if (k2->type == YAML_SCALAR_NODE &&
          strcmp((const char *)k2->data.scalar.value, name) == 0) {
        yamldoc_error(y, k, name, "given twice (first on line %u)",
                      yamldoc_line(k2));
        ok = false;
        break;
      }
    }
  }
  return ok;
}

yaml_node_t *yamldoc_get(struct yamldoc *y, yaml_node_t *n, const char *key)
{
  yaml_node_pair_t *p;

  if (n == NULL || n->type != YAML_MAPPING_NODE)
    return NULL;
  for (p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
    yaml_node_t *k = yamldoc_node(y, p->key);
    if (k->type == YAML_SCALAR_NODE &&
        strcmp((const char *)k->data.scalar.value, key) == 0)
      return yamldoc_node(y, p->value);
  }
  return NULL;
}

static const char *scalar(const yaml_node_t *n)
{
  if (n == NULL || n->type != YAML_SCALAR_NODE)
    return NULL;
  return (const char *)n->data.scalar.value;
}

bool yamldoc_string(struct yamldoc *y, yaml_node_t *n, const char *key,
                    const char **out)
{
  const char *v = scalar(n);
  char found[64];

  if (v == NULL || yamldoc_is_null(n)) {
    yamldoc_describe(n, found, sizeof(found));
    yamldoc_error(y, n, key, "expected a string, got %s", found);
    return false;
  }
  if (strlen(v) != n->data.scalar.length) {
    yamldoc_error(y, n, key, "must not contain NUL bytes");
    return false;
  }
  *out = v;
  return true;
}

bool yamldoc_int(struct yamldoc *y, yaml_node_t *n, const char *key,
                 long long min, long long max, long long *out)
{
  const char *v = scalar(n);
  char found[64];
  char *end;
  long long x;

  yamldoc_describe(n, found, sizeof(found));
  if (v == NULL || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE ||
      v[0] == '\0') {
    yamldoc_error(y, n, key, "must be an integer in %lld..%lld, got %s", min,
                  max, found);
    return false;
  }
  errno = 0;
  x = strtoll(v, &end, 10);
  if (*end != '\0' || errno != 0 || x < min || x > max) {
    yamldoc_error(y, n, key, "must be an integer in %lld..%lld, got %s", min,
                  max, found);
    return false;
  }
  *out = x;
  return true;
}

bool yamldoc_number(struct yamldoc *y, yaml_node_t *n, const char *key,
                    double min, double max, double *out)
{
  const char *v = scalar(n);
  char found[64];
  char *end;
  double x;

  yamldoc_describe(n, found, sizeof(found));
  if (v == NULL || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE ||
      v[0] == '\0') {
    yamldoc_error(y, n, key, "must be a number in %g..%g, got %s", min, max,
                  found);
    return false;
  }
  errno = 0;
  x = strtod(v, &end);
  /* strtod takes "nan", "inf" and hex floats; a map wants plain decimals. */
  if (*end != '\0' || errno != 0 || !isfinite(x) || strpbrk(v, "xXnN") ||
      x < min || x > max) {
    yamldoc_error(y, n, key, "must be a number in %g..%g, got %s", min, max,
                  found);
    return false;
  }
  *out = x;
  return true;
}

bool yamldoc_bool(struct yamldoc *y, yaml_node_t *n, const char *key, bool *out)
{
  const char *v = scalar(n);
  char found[64];

  if (v && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
    if (!strcmp(v, "true") || !strcmp(v, "True") || !strcmp(v, "yes")) {
      *out = true;
      return true;
    }
    if (!strcmp(v, "false") || !strcmp(v, "False") || !strcmp(v, "no")) {
      *out = false;
      return true;
    }
  }
  yamldoc_describe(n, found, sizeof(found));
  yamldoc_error(y, n, key, "must be true or false, got %s", found);
  return false;
}
