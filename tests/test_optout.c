/*
 * Tests for optout.c (keyed hashing, the key file, the lock-free index)
 * and store.c (the SQLite store of opt-outs and their audit log), without
 * a daemon.
 *
 * Store tests work on a store file in a private temporary folder; the
 * append-only audit log is checked with sqlite3 directly on that file, as
 * someone with access to the file would try it.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <ftw.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "geosteer/geosteer.h"
#include "optout.h"
#include "store.h"

/* ---- a private folder per test ------------------------------------------ */

static char tmpdir[256];

static int unlink_cb(const char *path, const struct stat *st, int flag,
                     struct FTW *ftw)
{
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static void make_tmpdir(void)
{
  const char *tmp = getenv("TMPDIR");
  snprintf(tmpdir, sizeof(tmpdir), "%s/gs-optout-XXXXXX",
           tmp && tmp[0] ? tmp : "/tmp");
  cr_assert_not_null(mkdtemp(tmpdir), "mkdtemp: %s", strerror(errno));
}

static void remove_tmpdir(void)
{
  if (tmpdir[0])
    nftw(tmpdir, unlink_cb, 16, FTW_DEPTH | FTW_PHYS);
  tmpdir[0] = '\0';
}

/* tmpdir/name in a static buffer (one of four, round robin). */
static const char *tmp_path(const char *name)
{
  static char bufs[4][512];
  static int next;
  char *b = bufs[next++ % 4];
  snprintf(b, sizeof(bufs[0]), "%s/%s", tmpdir, name);
  return b;
}

static void write_bytes(const char *path, const void *data, size_t len)
{
  FILE *f = fopen(path, "wb");
  cr_assert_not_null(f, "%s: %s", path, strerror(errno));
  cr_assert_eq(fwrite(data, 1, len, f), len);
  cr_assert_eq(fclose(f), 0);
}

TestSuite(optout, .init = make_tmpdir, .fini = remove_tmpdir);
TestSuite(store, .init = make_tmpdir, .fini = remove_tmpdir);

static const uint8_t key_a[OPTOUT_KEY_BYTES] = {1, 2,  3,  4,  5,  6,  7,  8,
                                                9, 10, 11, 12, 13, 14, 15, 16};
static const uint8_t key_b[OPTOUT_KEY_BYTES] = {1, 2,  3,  4,  5,  6,  7,  8,
                                                9, 10, 11, 12, 13, 14, 15, 17};

static bool uid_eq(const struct optout_uid *a, const struct optout_uid *b)
{
  return a->hi == b->hi && a->lo == b->lo;
}

static struct optout_uid hash_of(const uint8_t *key, const char *user)
{
  struct optout_uid u;
  optout_hash(key, user, strlen(user), &u);
  return u;
}

/* ---- hashing ------------------------------------------------------------ */

Test(optout, hash_is_deterministic_per_key)
{
  struct optout_uid a1 = hash_of(key_a, "alice"), a2 = hash_of(key_a, "alice");
  struct optout_uid b = hash_of(key_a, "bob");
  struct optout_uid a_other_key = hash_of(key_b, "alice");

  cr_assert(uid_eq(&a1, &a2), "same key and id must give the same hash");
  cr_assert(!uid_eq(&a1, &b), "different ids must give different hashes");
  cr_assert(!uid_eq(&a1, &a_other_key),
            "a different key must give a different hash");
  /* Length is part of the input: a prefix is a different id. */
  struct optout_uid prefix;
  optout_hash(key_a, "alice", 4, &prefix);
  cr_assert(!uid_eq(&a1, &prefix));
}

Test(optout, hash_is_siphashx24_of_the_id)
{
  uint8_t expect[crypto_shorthash_siphashx24_BYTES], got[16];
  struct optout_uid u;

  cr_assert_eq(sodium_init() >= 0, true);
  cr_assert_eq(sizeof(expect), (size_t)OPTOUT_HASH_BYTES);
  crypto_shorthash_siphashx24(expect, (const unsigned char *)"user-42", 7,
                              key_a);
  optout_hash(key_a, "user-42", 7, &u);
  optout_uid_bytes(&u, got);
  /* The high word of this hash is not 0 or 1, so nothing was folded. */
  cr_assert_arr_eq(got, expect, 16);
}

Test(optout, uid_bytes_round_trip_and_reserved_words_fold)
{
  static const uint8_t raw[16] = {0x80, 1, 2,  3,  4,  5,  6,  7,
                                  8,    9, 10, 11, 12, 13, 14, 15};
  uint8_t back[16];
  struct optout_uid u;

  optout_uid_from_bytes(raw, &u);
  cr_assert_eq(u.hi, 0x8001020304050607ull);
  cr_assert_eq(u.lo, 0x08090a0b0c0d0e0full);
  optout_uid_bytes(&u, back);
  cr_assert_arr_eq(back, raw, 16);

  /* High words 0 and 1 mark empty and removed slots: never a uid's. */
  uint8_t zero[16] = {0}, one[16] = {0};
  one[7] = 1;
  optout_uid_from_bytes(zero, &u);
  cr_assert_gt(u.hi, 1);
  optout_uid_from_bytes(one, &u);
  cr_assert_gt(u.hi, 1);
  /* Folding is stable: a folded uid survives a store round trip. */
  struct optout_uid again;
  optout_uid_bytes(&u, back);
  optout_uid_from_bytes(back, &again);
  cr_assert(uid_eq(&u, &again));
}

Test(optout, hash_high_word_is_never_reserved)
{
  char id[32];
  for (int i = 0; i < 100000; i++) {
    snprintf(id, sizeof(id), "u%d", i);
    struct optout_uid u = hash_of(key_a, id);
    cr_assert_gt(u.hi, 1, "reserved high word for %s", id);
  }
}

/* ---- the key file ------------------------------------------------------- */

Test(optout, load_key_creates_a_0600_key_and_reloads_it)
{
  const char *path = tmp_path("geosteer.key");
  uint8_t k1[OPTOUT_KEY_BYTES], k2[OPTOUT_KEY_BYTES], zero[OPTOUT_KEY_BYTES];
  struct diag d = DIAG_INIT;
  struct stat st;
  char text[64] = {0};
  mode_t old = umask(0);

  cr_assert_eq(optout_load_key(path, true, k1, &d), 0);
  umask(old);
  cr_assert_eq(d.count, 0u);
  cr_assert_eq(stat(path, &st), 0);
  cr_assert_eq(st.st_mode & 0777, 0600, "key file mode %o", st.st_mode & 0777);
  FILE *f = fopen(path, "rb");
  cr_assert_not_null(f);
  size_t n = fread(text, 1, sizeof(text) - 1, f);
  fclose(f);
  cr_assert_eq(n, 2u * OPTOUT_KEY_BYTES + 1, "key file is %zu bytes", n);
  cr_assert_eq(text[2 * OPTOUT_KEY_BYTES], '\n');
  for (int i = 0; i < 2 * OPTOUT_KEY_BYTES; i++)
    cr_assert(strchr("0123456789abcdef", text[i]) && text[i], "not hex at %d",
              i);
  memset(zero, 0, sizeof(zero));
  cr_assert(memcmp(k1, zero, sizeof(zero)) != 0, "the key is all zero");

  cr_assert_eq(optout_load_key(path, false, k2, &d), 0);
  cr_assert_arr_eq(k1, k2, OPTOUT_KEY_BYTES, "reloaded key differs");
  /* Reloading never rewrites the file. */
  struct stat st2;
  cr_assert_eq(stat(path, &st2), 0);
  cr_assert_eq(st2.st_ino, st.st_ino);
  cr_assert_eq(st2.st_size, st.st_size);
  diag_free(&d);
}

Test(optout, load_key_reads_a_written_key)
{
  const char *path = tmp_path("k");
  uint8_t k[OPTOUT_KEY_BYTES];
  struct diag d = DIAG_INIT;

  write_bytes(path, "000102030405060708090A0b0c0d0e0f\n", 33);
  cr_assert_eq(optout_load_key(path, false, k, &d), 0);
  for (int i = 0; i < OPTOUT_KEY_BYTES; i++)
    cr_assert_eq(k[i], i);
  /* No trailing newline is fine too. */
  write_bytes(path, "0f0e0d0c0b0a09080706050403020100", 32);
  cr_assert_eq(optout_load_key(path, false, k, &d), 0);
  for (int i = 0; i < OPTOUT_KEY_BYTES; i++)
    cr_assert_eq(k[i], 15 - i);
  diag_free(&d);
}

/* Key file contents that must be refused, and the key left untouched. */
struct bad_key {
  const char *what;
  const char *text;
  size_t len;
};

static const struct bad_key short_or_not_hex[] = {
    {"empty file", "", 0},
    {"a newline only", "\n", 1},
    {"too short", "0011223344556677\n", 17},
    {"31 hex digits", "0011223344556677889900aabbccdde\n", 32},
    {"not hex", "zz112233445566778899aabbccddeeff\n", 33},
    {"a space inside", "00112233 4556677889900aabbccddee\n", 33},
    {"a NUL inside",
     "0011223344556677\0"
     "899aabbccddeeff00\n",
     34},
};

/*
 * A key file is 32 hex digits and an optional newline. Anything after
 * them means the file is not the key this daemon wrote (a 32-byte key from
 * another tool, a concatenation, a wrong file restored): taking its first
 * 32 digits would silently hash every user differently, so stored
 * opt-outs would no longer match and opted-out users would be geolocated.
 */
static const struct bad_key too_long[] = {
    {"33 hex digits", "00112233445566778899aabbccddeeff0\n", 34},
    {"64 hex digits (a 32-byte key)",
     "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n", 65},
    {"trailing text", "00112233445566778899aabbccddeeff junk\n", 38},
    {"two lines",
     "00112233445566778899aabbccddeeff\nffeeddccbbaa99887766554433221100\n",
     66},
};

static void expect_refused(const struct bad_key *cases, size_t n)
{
  const char *path = tmp_path("bad.key");

  for (size_t i = 0; i < n; i++) {
    uint8_t k[OPTOUT_KEY_BYTES], before[OPTOUT_KEY_BYTES];
    struct diag d = DIAG_INIT;
    memset(k, 0xa5, sizeof(k));
    memcpy(before, k, sizeof(k));
    write_bytes(path, cases[i].text, cases[i].len);
    int rc = optout_load_key(path, true, k, &d);
    cr_expect_eq(rc, GS_ERR_INVALID, "%s: accepted (rc %d)", cases[i].what, rc);
    if (rc != 0) {
      cr_expect_geq(d.count, 1u, "%s: no message", cases[i].what);
      cr_expect(d.count == 0 || strstr(d.msgs[0], "bad.key"),
                "%s: message does not name the file: %s", cases[i].what,
                d.count ? d.msgs[0] : "");
    }
    /* The file is never replaced by a new key. */
    FILE *f = fopen(path, "rb");
    char buf[128];
    cr_assert_not_null(f);
    size_t len = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    cr_expect(len == cases[i].len && !memcmp(buf, cases[i].text, len),
              "%s: the key file was rewritten", cases[i].what);
    diag_free(&d);
  }
}

Test(optout, load_key_refuses_short_or_non_hex_contents)
{
  expect_refused(short_or_not_hex,
                 sizeof(short_or_not_hex) / sizeof(short_or_not_hex[0]));
}

Test(optout, load_key_refuses_anything_after_the_32_hex_digits)
{
  expect_refused(too_long, sizeof(too_long) / sizeof(too_long[0]));
}

/*
 * Out-params stay untouched on failure (STYLE.md): a key file that turns
 * out bad halfway must not leave half of its digits in the caller's key.
 */
Test(optout, load_key_leaves_the_key_untouched_on_failure)
{
  const char *path = tmp_path("half.key");
  uint8_t k[OPTOUT_KEY_BYTES], before[OPTOUT_KEY_BYTES];
  struct diag d = DIAG_INIT;

  memset(k, 0xa5, sizeof(k));
  memcpy(before, k, sizeof(k));
  write_bytes(path, "00112233445566778899aabbccddeeXX\n", 33);
  cr_assert_eq(optout_load_key(path, false, k, &d), GS_ERR_INVALID);
  cr_expect_arr_eq(k, before, sizeof(k), "the key was partly overwritten");
  diag_free(&d);
}

/*
 * Without may_create (the store exists), a missing key is an error and no
 * key is made: a new key would match none of the stored opt-outs.
 */
Test(optout, load_key_never_creates_a_key_for_an_existing_store)
{
  const char *path = tmp_path("lost.key");
  uint8_t k[OPTOUT_KEY_BYTES], before[OPTOUT_KEY_BYTES];
  struct diag d = DIAG_INIT;

  memset(k, 0x5a, sizeof(k));
  memcpy(before, k, sizeof(k));
  cr_assert_eq(optout_load_key(path, false, k, &d), GS_ERR_INVALID);
  cr_assert_arr_eq(k, before, sizeof(k), "key written on failure");
  cr_assert_geq(d.count, 1u);
  cr_assert(strstr(d.msgs[0], "lost.key"), "%s", d.msgs[0]);
  cr_assert(strstr(d.msgs[0], "restore"), "%s", d.msgs[0]);
  cr_assert_neq(access(path, F_OK), 0, "a key was created");
  diag_free(&d);
}

Test(optout, load_key_reports_a_folder_that_does_not_exist)
{
  uint8_t k[OPTOUT_KEY_BYTES];
  struct diag d = DIAG_INIT;
  const char *path = tmp_path("missing/geosteer.key");

  cr_assert_eq(optout_load_key(path, true, k, &d), GS_ERR_IO);
  cr_assert_geq(d.count, 1u);
  cr_assert(strstr(d.msgs[0], "missing/geosteer.key"), "%s", d.msgs[0]);
  cr_assert(strstr(d.msgs[0], "cannot create the opt-out key"), "%s",
            d.msgs[0]);
  cr_assert_neq(access(path, F_OK), 0);
  diag_free(&d);
}

/* ---- the index ---------------------------------------------------------- */

static struct optout_uid uid(uint64_t hi, uint64_t lo)
{
  return (struct optout_uid){hi, lo};
}

Test(optout, index_add_contains_remove)
{
  struct optout_index *ix = optout_index_new(0);
  struct optout_uid a = hash_of(key_a, "a"), b = hash_of(key_a, "b");

  cr_assert_not_null(ix);
  cr_assert_eq(optout_index_count(ix), 0u);
  cr_assert(!optout_index_contains(ix, &a));
  cr_assert_eq(optout_index_add(ix, &a), 1);
  cr_assert_eq(optout_index_add(ix, &a), 0, "a second add is a no-op");
  cr_assert_eq(optout_index_count(ix), 1u);
  cr_assert(optout_index_contains(ix, &a));
  cr_assert(!optout_index_contains(ix, &b));
  cr_assert(!optout_index_remove(ix, &b));
  cr_assert(optout_index_remove(ix, &a));
  cr_assert(!optout_index_remove(ix, &a), "a second remove finds nothing");
  cr_assert(!optout_index_contains(ix, &a));
  cr_assert_eq(optout_index_count(ix), 0u);
  cr_assert_geq(optout_index_bytes(ix), 16u * 16u);
  optout_index_free(ix);
  optout_index_free(NULL);
}

Test(optout, index_same_low_word_different_high_word)
{
  struct optout_index *ix = optout_index_new(0);
  struct optout_uid a = uid(2, 7), b = uid(3, 7), c = uid(2, 8);

  cr_assert_eq(optout_index_add(ix, &a), 1);
  cr_assert(!optout_index_contains(ix, &b));
  cr_assert(!optout_index_contains(ix, &c));
  cr_assert_eq(optout_index_add(ix, &b), 1);
  cr_assert_eq(optout_index_add(ix, &c), 1);
  cr_assert_eq(optout_index_count(ix), 3u);
  cr_assert(optout_index_contains(ix, &a) && optout_index_contains(ix, &b) &&
            optout_index_contains(ix, &c));
  optout_index_free(ix);
}

Test(optout, index_tombstones_keep_probe_chains_and_are_reused)
{
  struct optout_index *ix = optout_index_new(0); /* 16 slots */
  /* Three uids on one probe chain (same low bits), starting at slot 5. */
  struct optout_uid a = uid(10, 5), b = uid(11, 5 + 16), c = uid(12, 5 + 32);

  cr_assert_eq(optout_index_add(ix, &a), 1);
  cr_assert_eq(optout_index_add(ix, &b), 1);
  cr_assert(optout_index_remove(ix, &a));
  /* b is behind a's tombstone: still found, and not added twice. */
  cr_assert(optout_index_contains(ix, &b));
  cr_assert_eq(optout_index_add(ix, &b), 0);
  cr_assert_eq(optout_index_count(ix), 1u);
  /* c takes the tombstone; b stays reachable. */
  cr_assert_eq(optout_index_add(ix, &c), 1);
  cr_assert(optout_index_contains(ix, &b) && optout_index_contains(ix, &c));
  cr_assert(!optout_index_contains(ix, &a));
  cr_assert(optout_index_remove(ix, &b));
  cr_assert(optout_index_contains(ix, &c));
  cr_assert_eq(optout_index_count(ix), 1u);

  /* Add and remove the same uid many times: the tombstone is reused, the
   * table never fills up. */
  for (int i = 0; i < 10000; i++) {
    cr_assert_eq(optout_index_add(ix, &a), 1, "round %d", i);
    cr_assert(optout_index_remove(ix, &a), "round %d", i);
  }
  cr_assert(!optout_index_full(ix));
  optout_index_free(ix);
}

Test(optout, index_probe_wraps_around_the_end)
{
  struct optout_index *ix = optout_index_new(0); /* 16 slots */
  struct optout_uid a = uid(20, 15), b = uid(21, 31), c = uid(22, 47);

  cr_assert_eq(optout_index_add(ix, &a), 1);
  cr_assert_eq(optout_index_add(ix, &b), 1); /* wraps to slot 0 */
  cr_assert_eq(optout_index_add(ix, &c), 1); /* slot 1 */
  cr_assert(optout_index_contains(ix, &a) && optout_index_contains(ix, &b) &&
            optout_index_contains(ix, &c));
  cr_assert(optout_index_remove(ix, &b));
  cr_assert(optout_index_contains(ix, &c));
  optout_index_free(ix);
}

Test(optout, index_reports_full_and_grows)
{
  struct optout_index *ix = optout_index_new(0), *g;
  struct optout_uid u[32];
  int added = 0;

  for (int i = 0; i < 32; i++)
    u[i] = uid(100 + (uint64_t)i, (uint64_t)i * 7919);
  /* 16 slots at a 70 % load limit: 11 fit. */
  while (added < 32 && optout_index_add(ix, &u[added]) == 1)
    added++;
  cr_assert_eq(added, 11, "%d entries fit in 16 slots", added);
  cr_assert(optout_index_full(ix));
  cr_assert_eq(optout_index_add(ix, &u[added]), GS_ERR_LIMIT);
  cr_assert(!optout_index_contains(ix, &u[added]), "a refused add leaked");
  /* Present entries are still reported present when full. */
  cr_assert_eq(optout_index_add(ix, &u[0]), 0);

  g = optout_index_grown(ix);
  cr_assert_not_null(g);
  cr_assert_eq(optout_index_count(g), 11u);
  cr_assert_gt(optout_index_bytes(g), optout_index_bytes(ix));
  for (int i = 0; i < added; i++)
    cr_assert(optout_index_contains(g, &u[i]));
  cr_assert_eq(optout_index_add(g, &u[added]), 1);
  cr_assert(optout_index_contains(g, &u[added]));
  optout_index_free(ix);
  optout_index_free(g);
}

Test(optout, index_grown_drops_tombstones)
{
  struct optout_index *ix = optout_index_new(0), *g;
  int i = 0, rc;

  /* Distinct uids added and removed: tombstones fill the table. */
  do {
    struct optout_uid u = uid(1000 + (uint64_t)i, (uint64_t)i * 104729);
    rc = optout_index_add(ix, &u);
    if (rc == 1)
      cr_assert(optout_index_remove(ix, &u));
    i++;
  } while (rc == 1 && i < 1000);
  cr_assert_eq(rc, GS_ERR_LIMIT, "tombstones never filled the table");
  cr_assert_eq(optout_index_count(ix), 0u);
  g = optout_index_grown(ix);
  cr_assert_not_null(g);
  cr_assert_eq(optout_index_count(g), 0u);
  cr_assert(!optout_index_full(g));
  optout_index_free(ix);
  optout_index_free(g);
}

/* A fixed-seed generator, so a failure can be replayed. */
static uint64_t splitmix(uint64_t *state)
{
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Random uid; members have the top bit of hi clear, others set. */
static struct optout_uid random_uid(uint64_t *state, bool member)
{
  uint64_t hi = splitmix(state), lo = splitmix(state);
  hi = member ? hi & ~(1ull << 63) : hi | (1ull << 63);
  if (hi <= 1)
    hi += 2;
  return uid(hi, lo);
}

/* Adds u, growing the index the way the daemon does. */
static void add_growing(struct optout_index **ix, const struct optout_uid *u)
{
  int rc = optout_index_add(*ix, u);
  if (rc == GS_ERR_LIMIT) {
    struct optout_index *g = optout_index_grown(*ix);
    cr_assert_not_null(g);
    optout_index_free(*ix);
    *ix = g;
    rc = optout_index_add(*ix, u);
  }
  cr_assert_eq(rc, 1);
}

#define MILLION 1000000

Test(optout, index_a_million_random_uids)
{
  struct optout_index *ix = optout_index_new(0);
  uint64_t seed = 0x67656f7374656572ull;
  uint64_t state = seed;
  size_t missing = 0, false_hits = 0;

  for (int i = 0; i < MILLION; i++) {
    struct optout_uid u = random_uid(&state, true);
    add_growing(&ix, &u);
  }
  cr_assert_eq(optout_index_count(ix), (size_t)MILLION);
  /* Same sequence again: every member is found. */
  state = seed;
  for (int i = 0; i < MILLION; i++) {
    struct optout_uid u = random_uid(&state, true);
    missing += !optout_index_contains(ix, &u);
  }
  cr_assert_eq(missing, 0u, "%zu of a million members not found", missing);
  /* A different sequence: none of a million others is found. */
  state = ~seed;
  for (int i = 0; i < MILLION; i++) {
    struct optout_uid u = random_uid(&state, false);
    false_hits += optout_index_contains(ix, &u);
  }
  cr_assert_eq(false_hits, 0u, "%zu non-members found", false_hits);
  /*
   * Growing doubles the room and rounds up to a power of two, so a grown
   * table is 2 to 4 times larger than its load limit needs: 16-byte slots,
   * at most about 96 bytes per entry.
   */
  cr_assert_leq(optout_index_bytes(ix), (size_t)MILLION * 96);

  /* Remove every other member; the rest are still found. */
  state = seed;
  for (int i = 0; i < MILLION; i++) {
    struct optout_uid u = random_uid(&state, true);
    if (i % 2)
      cr_assert(optout_index_remove(ix, &u));
  }
  cr_assert_eq(optout_index_count(ix), (size_t)MILLION / 2);
  state = seed;
  for (int i = 0; i < MILLION; i++) {
    struct optout_uid u = random_uid(&state, true);
    cr_assert_eq(optout_index_contains(ix, &u), i % 2 == 0, "member %d", i);
  }
  optout_index_free(ix);
}

/* ---- the store ---------------------------------------------------------- */

static struct store *open_store(const char *name)
{
  struct store *s = NULL;
  struct diag d = DIAG_INIT;
  int rc = store_open(tmp_path(name), &s, &d);
  char msg[512] = "";
  diag_join(&d, msg, sizeof(msg));
  diag_free(&d);
  cr_assert_eq(rc, 0, "store_open: %s", msg);
  cr_assert_not_null(s);
  return s;
}

static void uid_of(const char *user, uint8_t out[16])
{
  struct optout_uid u = hash_of(key_a, user);
  optout_uid_bytes(&u, out);
}

struct event {
  int64_t at;
  char action[8], actor[80], reason[300];
  bool has_reason;
};

struct events {
  struct event e[16];
  int n;
};

static void collect(void *ctx, int64_t at, const char *action,
                    const char *actor, const char *reason)
{
  struct events *ev = ctx;
  cr_assert_lt(ev->n, 16);
  struct event *e = &ev->e[ev->n++];
  e->at = at;
  snprintf(e->action, sizeof(e->action), "%s", action);
  snprintf(e->actor, sizeof(e->actor), "%s", actor);
  e->has_reason = reason != NULL;
  snprintf(e->reason, sizeof(e->reason), "%s", reason ? reason : "");
}

static struct events history(struct store *s, const uint8_t uid[16])
{
  struct events ev = {0};
  cr_assert_eq(store_optout_history(s, uid, collect, &ev), 0);
  return ev;
}

Test(store, set_clear_get_history)
{
  struct store *s = open_store("s.db");
  uint8_t alice[16], bob[16];
  bool changed = true, opted = true;
  int64_t since = -1, count = -1;
  int64_t t0 = (int64_t)time(NULL);

  uid_of("alice", alice);
  uid_of("bob", bob);
  cr_assert_eq(store_optout_get(s, alice, &opted, &since), 0);
  cr_assert(!opted);
  cr_assert_eq(since, -1, "since written although not opted out");

  cr_assert_eq(
      store_optout_set(s, alice, true, "agent-1", "asked by mail", &changed),
      0);
  cr_assert(changed);
  cr_assert_eq(store_optout_get(s, alice, &opted, &since), 0);
  cr_assert(opted);
  cr_assert(since >= t0 && since <= (int64_t)time(NULL), "since %lld",
            (long long)since);

  /* Idempotent: no change, no audit event. */
  cr_assert_eq(store_optout_set(s, alice, true, "agent-2", NULL, &changed), 0);
  cr_assert(!changed);
  cr_assert_eq(history(s, alice).n, 1);

  cr_assert_eq(store_optout_set(s, alice, false, "agent-3", NULL, &changed), 0);
  cr_assert(changed);
  cr_assert_eq(store_optout_get(s, alice, &opted, &since), 0);
  cr_assert(!opted);
  cr_assert_eq(store_optout_set(s, alice, false, "agent-3", NULL, &changed), 0);
  cr_assert(!changed);

  cr_assert_eq(store_optout_set(s, bob, true, "agent-9", NULL, &changed), 0);
  cr_assert_eq(store_optout_count(s, &count), 0);
  cr_assert_eq(count, 1);

  struct events ev = history(s, alice);
  cr_assert_eq(ev.n, 2);
  cr_assert_str_eq(ev.e[0].action, "set");
  cr_assert_str_eq(ev.e[0].actor, "agent-1");
  cr_assert(ev.e[0].has_reason);
  cr_assert_str_eq(ev.e[0].reason, "asked by mail");
  cr_assert_str_eq(ev.e[1].action, "clear");
  cr_assert_str_eq(ev.e[1].actor, "agent-3");
  cr_assert(!ev.e[1].has_reason);
  cr_assert(ev.e[0].at >= t0 && ev.e[1].at >= ev.e[0].at);
  /* Histories are per user. */
  ev = history(s, bob);
  cr_assert_eq(ev.n, 1);
  cr_assert_str_eq(ev.e[0].actor, "agent-9");
  store_close(s);
  store_close(NULL);
}

Test(store, set_many_is_one_transaction_with_per_user_changes)
{
  struct store *s = open_store("s.db");
  uint8_t uids[4][16];
  bool changed[4] = {false, true, false, false}, c;
  int64_t count;

  uid_of("a", uids[0]);
  uid_of("b", uids[1]);
  uid_of("a", uids[2]); /* a duplicate inside the batch */
  uid_of("c", uids[3]);
  cr_assert_eq(store_optout_set(s, uids[1], true, "x", NULL, &c), 0);
  cr_assert_eq(store_optout_set_many(s, (const uint8_t(*)[16])uids, 4, "bulk",
                                     "import", changed),
               0);
  cr_assert(changed[0]);
  cr_assert(!changed[1], "b was already opted out");
  cr_assert(!changed[2], "the duplicate changed nothing");
  cr_assert(changed[3]);
  cr_assert_eq(store_optout_count(s, &count), 0);
  cr_assert_eq(count, 3);
  cr_assert_eq(history(s, uids[0]).n, 1, "one event for a, not two");
  cr_assert_str_eq(history(s, uids[3]).e[0].reason, "import");
  store_close(s);
}

static void count_uid(void *ctx, const uint8_t uid[16])
{
  struct {
    uint8_t (*uids)[16];
    int n, seen[8], other;
  } *c = ctx;
  for (int i = 0; i < c->n; i++)
    if (memcmp(c->uids[i], uid, 16) == 0) {
      c->seen[i]++;
      return;
    }
  c->other++;
}

Test(store, each_visits_every_opted_out_uid_once)
{
  struct store *s = open_store("s.db");
  uint8_t uids[8][16];
  struct {
    uint8_t (*uids)[16];
    int n, seen[8], other;
  } ctx = {uids, 8, {0}, 0};
  bool c;
  char name[16];

  for (int i = 0; i < 8; i++) {
    snprintf(name, sizeof(name), "user%d", i);
    uid_of(name, uids[i]);
    cr_assert_eq(store_optout_set(s, uids[i], true, "a", NULL, &c), 0);
  }
  cr_assert_eq(store_optout_set(s, uids[3], false, "a", NULL, &c), 0);
  cr_assert_eq(store_optout_each(s, count_uid, &ctx), 0);
  for (int i = 0; i < 8; i++)
    cr_assert_eq(ctx.seen[i], i == 3 ? 0 : 1, "user%d seen %d times", i,
                 ctx.seen[i]);
  cr_assert_eq(ctx.other, 0);
  store_close(s);
}

Test(store, erase_removes_history_but_keeps_the_optout)
{
  struct store *s = open_store("s.db");
  uint8_t a[16], b[16];
  bool c, opted;
  int64_t since;
  int erased = -1;

  uid_of("a", a);
  uid_of("b", b);
  cr_assert_eq(store_optout_set(s, a, true, "x", NULL, &c), 0);
  cr_assert_eq(store_optout_set(s, a, false, "x", NULL, &c), 0);
  cr_assert_eq(store_optout_set(s, a, true, "x", "again", &c), 0);
  cr_assert_eq(store_optout_set(s, b, true, "y", NULL, &c), 0);
  cr_assert_eq(store_optout_erase(s, a, &erased), 0);
  cr_assert_eq(erased, 3);
  cr_assert_eq(history(s, a).n, 0);
  cr_assert_eq(history(s, b).n, 1, "another user's history was erased");
  cr_assert_eq(store_optout_get(s, a, &opted, &since), 0);
  cr_assert(opted, "erasure must not clear the opt-out");
  cr_assert_eq(store_optout_erase(s, a, &erased), 0);
  cr_assert_eq(erased, 0);
  /* Nobody: nothing to erase, not an error. */
  uint8_t nobody[16];
  uid_of("nobody", nobody);
  cr_assert_eq(store_optout_erase(s, nobody, &erased), 0);
  cr_assert_eq(erased, 0);
  store_close(s);
}

/* Runs sql on the store file with sqlite3 directly; the sqlite3 code. */
static int direct_exec(const char *path, const char *sql, char *err,
                       size_t size)
{
  sqlite3 *db = NULL;
  char *msg = NULL;
  int rc;

  cr_assert_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL),
               SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
  snprintf(err, size, "%s", msg ? msg : "");
  sqlite3_free(msg);
  sqlite3_close(db);
  return rc;
}

static int64_t direct_int(const char *path, const char *sql)
{
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  int64_t v = -1;

  cr_assert_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL),
               SQLITE_OK);
  cr_assert_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK, "%s: %s",
               sql, sqlite3_errmsg(db));
  if (sqlite3_step(st) == SQLITE_ROW)
    v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
  return v;
}

Test(store, audit_log_refuses_update_and_delete_from_outside)
{
  struct store *s = open_store("s.db");
  const char *path = tmp_path("s.db");
  uint8_t a[16];
  bool c;
  char err[256];
  int erased, purged;

  uid_of("a", a);
  cr_assert_eq(store_optout_set(s, a, true, "x", "r", &c), 0);
  cr_assert_eq(store_optout_set(s, a, false, "x", NULL, &c), 0);
  store_close(s);
  cr_assert_eq(direct_int(path, "SELECT count(*) FROM audit"), 2);

  static const char *const refused[] = {
      "UPDATE audit SET actor = 'someone else'",
      "UPDATE audit SET at = 0 WHERE action = 'set'",
      "UPDATE audit SET uid = zeroblob(16)",
      "DELETE FROM audit",
      "DELETE FROM audit WHERE action = 'clear'",
      "INSERT INTO audit(id, uid, at, action, actor) "
      "SELECT id, uid, at, action, 'forged' FROM audit WHERE true "
      "ON CONFLICT(id) DO UPDATE SET actor = excluded.actor",
  };
  for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
    int rc = direct_exec(path, refused[i], err, sizeof(err));
    cr_expect_neq(rc, SQLITE_OK, "'%s' was allowed", refused[i]);
    cr_expect(strstr(err, "append-only") != NULL, "'%s': %s", refused[i], err);
  }
  cr_assert_eq(direct_int(path, "SELECT count(*) FROM audit"), 2);
  cr_assert_eq(direct_int(path, "SELECT count(*) FROM audit WHERE actor = "
                                "'x'"),
               2);
  cr_assert_eq(direct_int(path, "SELECT allow_delete FROM audit_guard"), 0);

  /* The store's own erase and purge work, and close the guard again. */
  s = open_store("s.db");
  cr_assert_eq(store_optout_erase(s, a, &erased), 0);
  cr_assert_eq(erased, 2);
  cr_assert_eq(store_optout_set(s, a, true, "x", NULL, &c), 0);
  cr_assert_eq(store_audit_purge(s, 0, &purged), 0);
  cr_assert_eq(purged, 0);
  store_close(s);
  cr_assert_eq(direct_int(path, "SELECT allow_delete FROM audit_guard"), 0);
  cr_assert_neq(direct_exec(path, "DELETE FROM audit", err, sizeof(err)),
                SQLITE_OK, "the guard stayed open after erase/purge");
  cr_assert_eq(direct_int(path, "SELECT count(*) FROM audit"), 1);
}

/*
 * REPLACE deletes the conflicting row without firing DELETE triggers
 * (unless recursive_triggers is on, which is a per-connection setting), so
 * it is an UPDATE the audit triggers do not see.
 */
Test(store, audit_log_refuses_replace_from_outside)
{
  struct store *s = open_store("s.db");
  const char *path = tmp_path("s.db");
  uint8_t a[16];
  bool c;
  char err[256];

  uid_of("a", a);
  cr_assert_eq(store_optout_set(s, a, true, "x", "r", &c), 0);
  store_close(s);

  static const char *const refused[] = {
      "INSERT OR REPLACE INTO audit(id, uid, at, action, actor) "
      "SELECT id, uid, at, 'clear', 'forged' FROM audit",
      "REPLACE INTO audit(id, uid, at, action, actor) "
      "SELECT id, uid, 0, action, 'forged' FROM audit",
  };
  for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
    int rc = direct_exec(path, refused[i], err, sizeof(err));
    cr_expect_neq(rc, SQLITE_OK, "'%s' was allowed", refused[i]);
  }
  cr_assert_eq(direct_int(path, "SELECT count(*) FROM audit WHERE actor = 'x' "
                                "AND action = 'set' AND at > 0"),
               1, "the audit event was rewritten");
}

/* True when the file at path holds needle (a missing file holds nothing). */
static bool file_has(const char *path, const char *needle)
{
  FILE *f = fopen(path, "rb");
  char *buf;
  long size;
  bool found;

  if (f == NULL)
    return false;
  fseek(f, 0, SEEK_END);
  size = ftell(f);
  rewind(f);
  buf = malloc((size_t)size + 1);
  cr_assert_not_null(buf);
  cr_assert_eq(fread(buf, 1, (size_t)size, f), (size_t)size);
  fclose(f);
  found = memmem(buf, (size_t)size, needle, strlen(needle)) != NULL;
  free(buf);
  return found;
}

/*
 * Erasure is physical: the erased events' text is neither in the database
 * file (secure_delete) nor left behind in the WAL.
 */
Test(store, erased_history_leaves_no_trace_in_the_files)
{
  struct store *s = open_store("s.db");
  const char *path = tmp_path("s.db"), *wal = tmp_path("s.db-wal");
  static const char reason[] = "erase-me-reason-5c1d";
  static const char actor[] = "erase-me-actor-5c1d";
  uint8_t a[16], b[16];
  bool c;
  int erased;

  uid_of("a", a);
  uid_of("b", b);
  cr_assert_eq(store_optout_set(s, a, true, actor, reason, &c), 0);
  cr_assert_eq(store_optout_set(s, b, true, "kept-actor-5c1d", NULL, &c), 0);
  cr_assert(file_has(wal, reason) || file_has(path, reason),
            "the event was not written where the test looks");
  cr_assert_eq(store_optout_erase(s, a, &erased), 0);
  cr_assert_eq(erased, 1);
  /* While the store is open (the WAL exists), then after closing it. */
  cr_expect(!file_has(path, reason) && !file_has(path, actor),
            "the erased event is still in the database file");
  cr_expect(!file_has(wal, reason) && !file_has(wal, actor),
            "the erased event is still in the WAL");
  store_close(s);
  cr_expect(!file_has(path, reason) && !file_has(path, actor),
            "the erased event is in the database file after closing");
  cr_expect(!file_has(wal, reason), "the erased event is in the WAL");
  cr_assert(file_has(path, "kept-actor-5c1d"), "another user's event went");
}

Test(store, files_are_private_to_the_daemon)
{
  struct store *s;
  struct stat st;
  bool c;
  uint8_t a[16];
  mode_t old = umask(022);

  s = open_store("mode.db");
  umask(old);
  uid_of("a", a);
  cr_assert_eq(store_optout_set(s, a, true, "x", NULL, &c), 0);
  cr_assert_eq(stat(tmp_path("mode.db"), &st), 0);
  cr_expect_eq(st.st_mode & 0777, 0600, "store mode %o", st.st_mode & 0777);
  if (stat(tmp_path("mode.db-wal"), &st) == 0)
    cr_expect_eq(st.st_mode & 0777, 0600, "WAL mode %o", st.st_mode & 0777);
  store_close(s);
}

Test(store, purge_deletes_only_old_events)
{
  struct store *s = open_store("s.db");
  const char *path = tmp_path("s.db");
  uint8_t a[16];
  bool c;
  char err[256];
  int purged = -1;
  int64_t now = (int64_t)time(NULL);

  uid_of("a", a);
  cr_assert_eq(store_optout_set(s, a, true, "x", NULL, &c), 0);
  store_close(s);
  /* Inserting is what an append-only log allows: two old events. */
  char sql[512];
  snprintf(sql, sizeof(sql),
           "INSERT INTO audit(uid, at, action, actor) VALUES "
           "(zeroblob(16), %lld, 'set', 'old'), "
           "(zeroblob(16), %lld, 'clear', 'old')",
           (long long)(now - 500 * 86400), (long long)(now - 401 * 86400));
  cr_assert_eq(direct_exec(path, sql, err, sizeof(err)), SQLITE_OK, "%s", err);

  s = open_store("s.db");
  cr_assert_eq(store_audit_purge(s, now - 400 * 86400, &purged), 0);
  cr_assert_eq(purged, 2);
  cr_assert_eq(history(s, a).n, 1, "a recent event was purged");
  cr_assert_eq(store_audit_purge(s, now - 400 * 86400, &purged), 0);
  cr_assert_eq(purged, 0);
  store_close(s);
}

Test(store, schema_is_version_2_and_keeps_no_user_ids)
{
  struct store *s = open_store("s.db");
  const char *path = tmp_path("s.db");
  uint8_t a[16];
  bool c;

  uid_of("plain-user-id-1234", a);
  cr_assert_eq(store_optout_set(s, a, true, "x", NULL, &c), 0);
  store_close(s);
  cr_assert_eq(direct_int(path, "PRAGMA user_version"), 3);
  cr_assert_eq(direct_int(path, "SELECT count(*) FROM sqlite_master WHERE "
                                "type = 'table' AND name IN ('dc_drain', "
                                "'optout', 'audit', 'audit_guard')"),
               4);
  cr_assert_eq(direct_int(path, "SELECT count(*) FROM sqlite_master WHERE "
                                "type = 'trigger'"),
               3);
  cr_assert_eq(direct_int(path, "SELECT length(uid) FROM optout"), 16);
  cr_assert_eq(direct_int(path, "SELECT typeof(uid) = 'blob' FROM audit"), 1);
  /* Reopening runs no migration again and keeps the data. */
  s = open_store("s.db");
  bool opted;
  int64_t since;
  cr_assert_eq(store_optout_get(s, a, &opted, &since), 0);
  cr_assert(opted);
  bool ok = false;
  cr_assert_eq(store_integrity_check(s, &ok), 0);
  cr_assert(ok);
  store_close(s);
  cr_assert_eq(direct_int(path, "PRAGMA user_version"), 3);
  cr_assert_eq(direct_int(path, "SELECT count(*) FROM audit"), 1);
}

Test(store, refuses_a_newer_schema)
{
  const char *path = tmp_path("new.db");
  static char marker;
  struct store *const before = (struct store *)&marker;
  struct store *s = before; /* must stay untouched */
  struct diag d = DIAG_INIT;
  char err[256];

  store_close(open_store("new.db"));
  cr_assert_eq(direct_exec(path, "PRAGMA user_version = 4", err, sizeof(err)),
               SQLITE_OK);
  cr_assert_eq(store_open(path, &s, &d), GS_ERR_INVALID);
  cr_assert_eq(s, before, "*out written on failure");
  cr_assert_geq(d.count, 1u);
  cr_assert(strstr(d.msgs[0], "schema version 4 is newer"), "%s", d.msgs[0]);
  diag_free(&d);
}

Test(store, refuses_a_file_that_is_not_a_database)
{
  const char *path = tmp_path("text.db");
  static const char text[] = "this is a text file, not a database\n"
                             "it has several lines of text in it\n";
  struct store *s = NULL;
  struct diag d = DIAG_INIT;

  write_bytes(path, text, sizeof(text) - 1);
  cr_assert_neq(store_open(path, &s, &d), 0);
  cr_assert_null(s);
  cr_assert_geq(d.count, 1u);
  cr_assert(strstr(d.msgs[0], "text.db"), "%s", d.msgs[0]);
  diag_free(&d);
  /* The file is left as it was. */
  FILE *f = fopen(path, "rb");
  char buf[sizeof(text)] = {0};
  cr_assert_not_null(f);
  cr_assert_eq(fread(buf, 1, sizeof(buf), f), sizeof(text) - 1);
  fclose(f);
  cr_assert_str_eq(buf, text);
}

Test(store, refuses_a_folder_that_does_not_exist)
{
  struct store *s = NULL;
  struct diag d = DIAG_INIT;

  cr_assert_neq(store_open(tmp_path("no/such/folder.db"), &s, &d), 0);
  cr_assert_null(s);
  cr_assert_geq(d.count, 1u);
  cr_assert(strstr(d.msgs[0], "cannot open store"), "%s", d.msgs[0]);
  diag_free(&d);
}

static void collect_dc(void *ctx, const char *dc)
{
  char(*got)[16] = ctx;
  int i = 0;
  while (i < 3 && got[i][0])
    i++;
  cr_assert_lt(i, 3, "too many drained data centers");
  snprintf(got[i], sizeof(got[i]), "%s", dc);
}

Test(store, drain_state_persists)
{
  struct store *s = open_store("s.db");
  char got[4][16] = {{0}};

  cr_assert_eq(store_set_drain(s, "fra", true), 0);
  cr_assert_eq(store_set_drain(s, "ams", true), 0);
  cr_assert_eq(store_set_drain(s, "ams", true), 0);
  cr_assert_eq(store_set_drain(s, "lhr", true), 0);
  cr_assert_eq(store_set_drain(s, "lhr", false), 0);
  store_close(s);
  s = open_store("s.db");
  cr_assert_eq(store_each_drain(s, collect_dc, got), 0);
  cr_assert_str_eq(got[0], "ams");
  cr_assert_str_eq(got[1], "fra");
  cr_assert_str_eq(got[2], "");
  store_close(s);
}
