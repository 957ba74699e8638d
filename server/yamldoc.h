/*
 * yamldoc: a YAML file loaded as a libyaml document, with the typed,
 * validating accessors that the map and config loaders share.
 *
 * Every accessor that finds a problem appends a diag message naming the
 * file, the line, the key, what was expected and what was found, and
 * returns false; the caller carries on to report further problems and
 * discards the result at the end (a bad file never half-loads).
 */
#ifndef GS_YAMLDOC_H
#define GS_YAMLDOC_H

#include <stdbool.h>
#include <stdint.h>
#include <yaml.h>

#include "diag.h"

struct yamldoc {
  yaml_document_t doc;
  const char *path; /* borrowed; must outlive the yamldoc */
  struct diag *diag;
  bool loaded;
};

/* Loads path. Returns 0, GS_ERR_IO or GS_ERR_SYNTAX (with a diag). */
int yamldoc_load(struct yamldoc *y, const char *path, struct diag *d);
void yamldoc_free(struct yamldoc *y);

/* Root node, or NULL for an empty document. */
yaml_node_t *yamldoc_root(struct yamldoc *y);
yaml_node_t *yamldoc_node(struct yamldoc *y, int index);
/* 1-based line of a node. */
unsigned yamldoc_line(const yaml_node_t *n);

/* "mapping", "list", "null" or the quoted scalar, for messages. */
void yamldoc_describe(const yaml_node_t *n, char *buf, size_t size);
bool yamldoc_is_null(const yaml_node_t *n);

/*
 * Checks that n is a mapping whose keys are scalars, all in allowed (a NULL
 * terminated list), none repeated. what names the mapping in messages
 * ("datacenters[2]"); NULL for the top level.
 */
bool yamldoc_check_keys(struct yamldoc *y, yaml_node_t *n, const char *what,
                        const char *const *allowed);
/* Value node of key in mapping n, or NULL. */
yaml_node_t *yamldoc_get(struct yamldoc *y, yaml_node_t *n, const char *key);

/* Typed scalar readers; key names the value in messages. */
bool yamldoc_string(struct yamldoc *y, yaml_node_t *n, const char *key,
                    const char **out);
bool yamldoc_int(struct yamldoc *y, yaml_node_t *n, const char *key,
                 long long min, long long max, long long *out);
bool yamldoc_number(struct yamldoc *y, yaml_node_t *n, const char *key,
                    double min, double max, double *out);
bool yamldoc_bool(struct yamldoc *y, yaml_node_t *n, const char *key,
                  bool *out);

/* Appends "file:line: key 'K': MSG" for node n. */
void yamldoc_error(struct yamldoc *y, const yaml_node_t *n, const char *key,
                   const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif
