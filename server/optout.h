/*
 * optout: who has opted out of location-based routing, in memory, for the
 * route path; and the keyed hash that is the only form in which a user id
 * is ever kept.
 *
 * A user id becomes a 128-bit SipHash-2-4 (libsodium's
 * crypto_shorthash_siphashx24) under a secret key kept in store.key_file;
 * without the key the stored hashes cannot be linked back to ids.
 *
 * The index is an open-addressing table of those hashes with linear
 * probing. One writer (the control loop) and any number of readers (the
 * workers) share it without locks: a slot's low word is written before its
 * high word (release), readers load the high word (acquire) first, so a
 * reader sees a slot either whole or empty, never torn. Removal leaves a
 * tombstone. When the table passes its load limit the writer builds a
 * larger copy and publishes it; the old one is retired like a snapshot.
 */
#ifndef GS_OPTOUT_H
#define GS_OPTOUT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "diag.h"

#define OPTOUT_KEY_BYTES 16  /* crypto_shorthash_siphashx24_KEYBYTES */
#define OPTOUT_HASH_BYTES 16 /* crypto_shorthash_siphashx24_BYTES */

struct optout_uid {
  uint64_t hi, lo; /* the keyed hash; hi never 0 or 1 (reserved) */
};

/*
 * Loads the hash key from path. When the file does not exist and may_create
 * is true, creates it (mode 0600, random); when may_create is false (the
 * store already exists, so its hashes were made with a key that is now
 * missing) that is an error: a new key would silently match nobody.
 * Returns 0 or a negative code with a message.
 */
int optout_load_key(const char *path, bool may_create,
                    uint8_t key[OPTOUT_KEY_BYTES], struct diag *d);

/* The keyed hash of a user id. Allocation-free; safe from any thread. */
void optout_hash(const uint8_t key[OPTOUT_KEY_BYTES], const char *user,
                 size_t len, struct optout_uid *out);

/* 16 bytes for storage (big-endian hi, lo) and back. */
void optout_uid_bytes(const struct optout_uid *u, uint8_t out[16]);
void optout_uid_from_bytes(const uint8_t in[16], struct optout_uid *out);

struct optout_index;

/* An empty index sized for at least n entries. NULL on OOM. */
struct optout_index *optout_index_new(size_t n);
void optout_index_free(struct optout_index *ix);

/* Reader side: no allocation, no lock, no system call. */
bool optout_index_contains(const struct optout_index *ix,
                           const struct optout_uid *u);
/* Warms the cache for optout_index_contains(ix, u); changes nothing else. */
void optout_index_prefetch(const struct optout_index *ix,
                           const struct optout_uid *u);

/*
 * Writer side (one thread). add returns 1 when added, 0 when present, or
 * GS_ERR_LIMIT when the table must grow first (optout_index_grown).
 */
int optout_index_add(struct optout_index *ix, const struct optout_uid *u);
/* Returns true when u was present. */
bool optout_index_remove(struct optout_index *ix, const struct optout_uid *u);
/* True when one more add would pass the load limit. */
bool optout_index_full(const struct optout_index *ix);
/* A copy with room for twice the entries; NULL on OOM. */
struct optout_index *optout_index_grown(const struct optout_index *ix);

size_t optout_index_count(const struct optout_index *ix);
size_t optout_index_bytes(const struct optout_index *ix);

#endif
