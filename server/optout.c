/*
 * optout: keyed hashing and the lock-free opt-out index. See optout.h.
 */
#include "optout.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "geosteer/geosteer.h"

#define EMPTY 0
#define TOMBSTONE 1
#define MAX_LOAD_PCT 70 /* entries + tombstones per 100 slots */

struct slot {
  _Atomic uint64_t hi; /* EMPTY, TOMBSTONE or a hash's high word */
  _Atomic uint64_t lo;
};

/*
 * In front of the slots sits a blocked Bloom filter: one 64-byte block per
 * FILTER_SLOTS_PER_BLOCK slots, two bits per entry in one word of a block,
 * chosen by the high word. Most route requests come from users who have
 * not opted out; the filter answers them from one cache line of a table
 * a sixteenth the size of the slots. Removal leaves the bits set (the
 * filter only ever errs towards probing the slots).
 */
#define FILTER_SLOTS_PER_BLOCK 32 /* 512 filter bits per 32 slots */

struct optout_index {
  size_t mask;              /* slots - 1 */
  size_t count, used;       /* entries; entries + tombstones */
  _Atomic uint64_t *filter; /* 8 words (one cache line) per block */
  size_t filter_blocks_mask;
  struct slot slots[];
};

static size_t slot_of(const struct optout_index *ix, const struct optout_uid *u)
{
  return (size_t)u->lo & ix->mask;
}

/*
 * The filter word and the two bits of an entry, from the high word (the
 * slot comes from the low word, so the two choices are independent).
 */
static _Atomic uint64_t *filter_word(const struct optout_index *ix, uint64_t hi,
                                     uint64_t *bits)
{
  size_t block = (size_t)hi & ix->filter_blocks_mask;
  unsigned b1 = (unsigned)(hi >> 40) & 511, b2 = (unsigned)(hi >> 49) & 511;
  /* Both bits in one word: the word from b1, the positions from both. */
  *bits = ((uint64_t)1 << (b1 & 63)) | ((uint64_t)1 << (b2 & 63));
  return &ix->filter[block * 8 + (b1 >> 6)];
}

static int hexval(int c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

int optout_load_key(const char *path, bool may_create,
                    uint8_t key[OPTOUT_KEY_BYTES], struct diag *d)
{
  char text[2 * OPTOUT_KEY_BYTES + 8]; /* room to see excess content */
  int fd;
  ssize_t n;

  if (sodium_init() < 0) {
    diag_add(d, path, 0, "cannot initialise libsodium");
    return GS_ERR_IO;
  }
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT && !may_create) {
    diag_add(d, path, 0,
             "the opt-out key is missing but the store exists: restore the "
             "key from the backup taken with the database (a new key would "
             "match none of the stored opt-outs)");
    return GS_ERR_INVALID;
  }
  if (fd < 0 && errno == ENOENT) {
    /* First start: make the key. O_EXCL: never overwrite a key. */
    randombytes_buf(key, OPTOUT_KEY_BYTES);
    for (int i = 0; i < OPTOUT_KEY_BYTES; i++)
      snprintf(text + 2 * i, 3, "%02x", key[i]);
    text[2 * OPTOUT_KEY_BYTES] = '\n';
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
      diag_add(d, path, 0, "cannot create the opt-out key: %s",
               strerror(errno));
      return GS_ERR_IO;
    }
    n = write(fd, text, 2 * OPTOUT_KEY_BYTES + 1);
    if (n != 2 * OPTOUT_KEY_BYTES + 1 || fsync(fd) != 0) {
      diag_add(d, path, 0, "cannot write the opt-out key: %s", strerror(errno));
      close(fd);
      unlink(path);
      return GS_ERR_IO;
    }
    close(fd);
    sodium_memzero(text, sizeof(text));
    /* The key must survive a power loss as surely as the store. */
    char *dir = strdup(path);
    char *slash = dir ? strrchr(dir, '/') : NULL;
    if (slash)
      *slash = '\0';
    int dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      fsync(dfd);
      close(dfd);
    }
    free(dir);
    return 0;
  }
  if (fd < 0) {
    diag_add(d, path, 0, "cannot read the opt-out key: %s", strerror(errno));
    return GS_ERR_IO;
  }
  n = read(fd, text, sizeof(text));
  close(fd);
  /* Exactly 32 hex digits, then nothing but one line end. */
  size_t len = n > 0 ? (size_t)n : 0;
  if (len > 0 && text[len - 1] == '\n')
    len--;
  if (len > 0 && text[len - 1] == '\r')
    len--;
  uint8_t parsed[OPTOUT_KEY_BYTES];
  bool ok = len == 2 * OPTOUT_KEY_BYTES;
  for (int i = 0; ok && i < OPTOUT_KEY_BYTES; i++) {
    int h = hexval(text[2 * i]), l = hexval(text[2 * i + 1]);
    ok = h >= 0 && l >= 0;
    if (ok)
      parsed[i] = (uint8_t)((unsigned)h << 4 | (unsigned)l);
  }
  sodium_memzero(text, sizeof(text));
  if (!ok) {
    sodium_memzero(parsed, sizeof(parsed));
    diag_add(d, path, 0,
             "the opt-out key must be exactly %d hex digits on one line; "
             "restore it from the backup taken with the database",
             2 * OPTOUT_KEY_BYTES);
    return GS_ERR_INVALID;
  }
  memcpy(key, parsed, sizeof(parsed));
  sodium_memzero(parsed, sizeof(parsed));
  return 0;
}

void optout_uid_from_bytes(const uint8_t in[16], struct optout_uid *out)
{
  uint64_t hi = 0, lo = 0;
  for (int i = 0; i < 8; i++) {
    hi = hi << 8 | in[i];
    lo = lo << 8 | in[8 + i];
  }
  /* 0 and 1 mark empty and removed slots: fold them away. */
  if (hi <= TOMBSTONE)
    hi += 2;
  out->hi = hi;
  out->lo = lo;
}

void optout_uid_bytes(const struct optout_uid *u, uint8_t out[16])
{
  for (int i = 0; i < 8; i++) {
    out[i] = (uint8_t)(u->hi >> (56 - 8 * i));
    out[8 + i] = (uint8_t)(u->lo >> (56 - 8 * i));
  }
}

void optout_hash(const uint8_t key[OPTOUT_KEY_BYTES], const char *user,
                 size_t len, struct optout_uid *out)
{
  uint8_t h[OPTOUT_HASH_BYTES];
  crypto_shorthash_siphashx24(h, (const unsigned char *)user, len, key);
  optout_uid_from_bytes(h, out);
}

/* An empty index of exactly `slots` slots (a power of two >= 16). */
static struct optout_index *index_alloc(size_t slots)
{
  struct optout_index *ix =
      calloc(1, sizeof(*ix) + slots * sizeof(struct slot));
  size_t blocks = slots / FILTER_SLOTS_PER_BLOCK;

  if (ix == NULL)
    return NULL;
  if (blocks == 0)
    blocks = 1;
  ix->filter = aligned_alloc(64, blocks * 64);
  if (ix->filter == NULL) {
    free(ix);
    return NULL;
  }
  memset(ix->filter, 0, blocks * 64);
  ix->filter_blocks_mask = blocks - 1;
  ix->mask = slots - 1;
  return ix;
}

struct optout_index *optout_index_new(size_t n)
{
  size_t slots = 16;
  while (slots * MAX_LOAD_PCT / 100 < n + 1)
    slots *= 2;
  return index_alloc(slots);
}

void optout_index_free(struct optout_index *ix)
{
  if (ix)
    free(ix->filter);
  free(ix);
}

bool optout_index_contains(const struct optout_index *ix,
                           const struct optout_uid *u)
{
  uint64_t bits;
  _Atomic uint64_t *w = filter_word(ix, u->hi, &bits);
  if ((atomic_load_explicit(w, memory_order_acquire) & bits) != bits)
    return false; /* certainly not opted out */
  size_t i = slot_of(ix, u);
  for (;;) {
    uint64_t hi = atomic_load_explicit(&((struct slot *)&ix->slots[i])->hi,
                                       memory_order_acquire);
    if (hi == EMPTY)
      return false;
    if (hi == u->hi && atomic_load_explicit(&((struct slot *)&ix->slots[i])->lo,
                                            memory_order_relaxed) == u->lo)
      return true;
    i = (i + 1) & ix->mask;
  }
}

void optout_index_prefetch(const struct optout_index *ix,
                           const struct optout_uid *u)
{
  uint64_t bits;
  __builtin_prefetch((const void *)filter_word(ix, u->hi, &bits));
}

bool optout_index_full(const struct optout_index *ix)
{
  return (ix->used + 1) * 100 > (ix->mask + 1) * MAX_LOAD_PCT;
}

int optout_index_add(struct optout_index *ix, const struct optout_uid *u)
{
  size_t i = slot_of(ix, u);
  size_t tomb = SIZE_MAX;

  for (;;) {
    uint64_t hi = atomic_load_explicit(&ix->slots[i].hi, memory_order_relaxed);
    if (hi == EMPTY)
      break;
    if (hi == TOMBSTONE && tomb == SIZE_MAX)
      tomb = i;
    if (hi == u->hi &&
        atomic_load_explicit(&ix->slots[i].lo, memory_order_relaxed) == u->lo)
      return 0;
    i = (i + 1) & ix->mask;
  }
  if (tomb == SIZE_MAX) {
    if (optout_index_full(ix))
      return GS_ERR_LIMIT;
    ix->used++;
  } else {
    i = tomb; /* reuse: `used` already counts it */
  }
  /* Filter bits first: a reader that passes the filter may then probe. */
  uint64_t bits;
  _Atomic uint64_t *w = filter_word(ix, u->hi, &bits); /* sets bits */
  atomic_fetch_or_explicit(w, bits, memory_order_release);
  atomic_store_explicit(&ix->slots[i].lo, u->lo, memory_order_relaxed);
  atomic_store_explicit(&ix->slots[i].hi, u->hi, memory_order_release);
  ix->count++;
  return 1;
}

bool optout_index_remove(struct optout_index *ix, const struct optout_uid *u)
{
  size_t i = slot_of(ix, u);
  for (;;) {
    uint64_t hi = atomic_load_explicit(&ix->slots[i].hi, memory_order_relaxed);
    if (hi == EMPTY)
      return false;
    if (hi == u->hi &&
        atomic_load_explicit(&ix->slots[i].lo, memory_order_relaxed) == u->lo) {
      atomic_store_explicit(&ix->slots[i].hi, TOMBSTONE, memory_order_release);
      ix->count--;
      return true;
    }
    i = (i + 1) & ix->mask;
  }
}

struct optout_index *optout_index_grown(const struct optout_index *ix)
{
  /* Twice the slots: tombstones are dropped, so the load halves at least. */
  struct optout_index *g = index_alloc(2 * (ix->mask + 1));
  if (g == NULL)
    return NULL;
  for (size_t i = 0; i <= ix->mask; i++) {
    uint64_t hi = atomic_load_explicit(&ix->slots[i].hi, memory_order_relaxed);
    if (hi > TOMBSTONE) {
      struct optout_uid u = {
          hi, atomic_load_explicit(&ix->slots[i].lo, memory_order_relaxed)};
      optout_index_add(g, &u);
    }
  }
  return g;
}

size_t optout_index_count(const struct optout_index *ix)
{
  return ix->count;
}

size_t optout_index_bytes(const struct optout_index *ix)
{
  return sizeof(*ix) + (ix->mask + 1) * sizeof(struct slot) +
         (ix->filter_blocks_mask + 1) * 64;
}
