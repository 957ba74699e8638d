/*
 * table: compiling and searching the route table. See table.h.
 *
 * Compile. geo_walk() yields the database's leaves in address order. Each
 * leaf's answer comes from a per-record cache (rank_answer once per distinct
 * record). The map's nets are flattened beforehand into disjoint intervals
 * (most specific prefix wins) and laid over the leaves with a two-pointer
 * sweep; an overlaid piece is ranked with the net rule and the leaf's
 * location (for completion), interned, and emitted. emit() merges a range
 * into its predecessor when the answer is the same.
 *
 * Search. keys are sorted range starts; the answer of x is that of the last
 * start <= x. A bucket index over the keys' high bits narrows that to one
 * bucket, searched branch-free. IPv6 keys are the upper 64 bits of starts;
 * where a /64 holds a boundary, its id has FINE_FLAG set and names a fine
 * sub-list keyed by the lower 64 bits.
 */
#include "table.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "geosteer/geosteer.h"

#define FINE_FLAG 0x80000000u
#define TABLE_MAX_ANSWERS 65535 /* v4 ids are uint16_t */
#define BUCKET_TARGET 8         /* keys per bucket aimed for */
#define BUCKET_BITS_MAX 20
#define SUB_THRESHOLD 32 /* keys in a v6 bucket before it gets a level 2 */

/* IPv4 range start and its answer, packed: 6 bytes, one cache line
 * holds ten, and the id arrives with the key that selects it. */
struct v4_entry {
  uint32_t key;
  uint16_t id;
} __attribute__((packed));

struct bucketed32 {
  struct v4_entry *e;
  uint32_t n;
  uint32_t *bucket; /* nbuckets + 1 entries: first key index of bucket */
  uint32_t nbuckets;
  int shift;
};

struct bucketed64 {
  uint64_t *key;
  uint32_t *id;
  uint32_t n;
  uint32_t *bucket;
  uint32_t nbuckets;
  int shift;
  uint64_t base; /* keys below base live in bucket 0's prefix */
  /*
   * IPv6 boundaries cluster (a few RIR blocks hold most of them), so a
   * bucket that holds more than SUB_THRESHOLD keys gets its own second
   * level: sub_of[b] is 1 + its index in subs, or 0.
   */
  uint32_t *sub_of;
  struct sub_index *subs;
  uint32_t *sub_slots; /* first key index per second-level slot */
  size_t nsubs, nsub_slots;
};

struct sub_index {
  uint32_t first_slot; /* into sub_slots; 2^bits + 1 entries */
  int shift;           /* slot = (x - bucket start) >> shift */
};

struct fine_block {
  uint32_t first; /* index into fine_key/fine_id */
  uint32_t n;
};

struct table {
  struct bucketed32 v4;
  struct bucketed64 v6;
  uint64_t *fine_key;
  uint32_t *fine_id;
  struct fine_block *fine;
  size_t nfine, nfine_keys;
  struct answer *answers;
  size_t nanswers;
  struct dc *dcs; /* copy of the map's data centers */
  size_t ndcs;
  struct table_stats stats;
};

/* ---- compile ---------------------------------------------------------- */

struct net_iv {
  addr128 start, end;
  uint32_t rule; /* index into dcmap.nets */
};

struct builder {
  const struct dcmap *m;
  int err;
  /* answers, interned */
  struct answer *answers;
  size_t nanswers, answers_cap;
  uint32_t *ahash; /* slot -> answer id + 1 */
  size_t ahash_cap;
  /* per distinct record answer id + 1 (0 = not computed) */
  uint32_t *rec_answer;
  size_t rec_cap;
  uint32_t unknown_answer;
  /* nets flattened */
  struct net_iv *ivs;
  size_t nivs, iv_pos;
  /* output ranges (full 128-bit space) */
  addr128 *start;
  uint32_t *id;
  size_t n, cap;
};

static uint64_t hash_bytes(const void *p, size_t len)
{
  const unsigned char *b = p;
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < len; i++)
    h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

static int ahash_grow(struct builder *b)
{
  size_t cap = b->ahash_cap ? b->ahash_cap * 2 : 1024;
  uint32_t *slots = calloc(cap, sizeof(*slots));
  if (slots == NULL)
    return GS_ERR_NOMEM;
  for (size_t i = 0; i < b->nanswers; i++) {
    size_t s = hash_bytes(&b->answers[i], sizeof(struct answer)) & (cap - 1);
    while (slots[s])
      s = (s + 1) & (cap - 1);
    slots[s] = (uint32_t)i + 1;
  }
  free(b->ahash);
  b->ahash = slots;
  b->ahash_cap = cap;
  return 0;
}

/* Id of answer a, adding it on first sight; negative on failure. */
static int64_t intern(struct builder *b, const struct answer *a)
{
  size_t s;

  if ((b->nanswers + 1) * 2 > b->ahash_cap && ahash_grow(b) != 0)
    return GS_ERR_NOMEM;
  s = hash_bytes(a, sizeof(*a)) & (b->ahash_cap - 1);
  while (b->ahash[s]) {
    uint32_t id = b->ahash[s] - 1;
    if (memcmp(&b->answers[id], a, sizeof(*a)) == 0)
      return id;
    s = (s + 1) & (b->ahash_cap - 1);
  }
  if (b->nanswers >= TABLE_MAX_ANSWERS)
    return GS_ERR_LIMIT;
  if (b->nanswers == b->answers_cap) {
    size_t cap = b->answers_cap ? b->answers_cap * 2 : 1024;
    struct answer *as = realloc(b->answers, cap * sizeof(*as));
    if (as == NULL)
      return GS_ERR_NOMEM;
    b->answers = as;
    b->answers_cap = cap;
  }
  b->answers[b->nanswers] = *a;
  b->ahash[s] = (uint32_t)b->nanswers + 1;
  return (int64_t)b->nanswers++;
}

static int emit(struct builder *b, addr128 start, uint32_t id)
{
  if (b->n > 0 && b->id[b->n - 1] == id)
    return 0;
  if (b->n == b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 1u << 16;
    addr128 *st = realloc(b->start, cap * sizeof(*st));
    if (st == NULL)
      return GS_ERR_NOMEM;
    b->start = st;
    uint32_t *ids = realloc(b->id, cap * sizeof(*ids));
    if (ids == NULL)
      return GS_ERR_NOMEM;
    b->id = ids;
    b->cap = cap;
  }
  b->start[b->n] = start;
  b->id[b->n] = id;
  b->n++;
  return 0;
}

static int add_iv(struct builder *b, size_t *cap, addr128 s, addr128 e,
                  uint32_t rule)
{
  if (b->nivs == *cap) {
    size_t c = *cap ? *cap * 2 : 16;
    struct net_iv *ivs = realloc(b->ivs, c * sizeof(*ivs));
    if (ivs == NULL)
      return GS_ERR_NOMEM;
    b->ivs = ivs;
    *cap = c;
  }
  b->ivs[b->nivs++] = (struct net_iv){s, e, rule};
  return 0;
}

/*
 * Flattens the (sorted, nested-or-disjoint) net rules into disjoint
 * intervals, each owned by the most specific rule covering it.
 */
static int flatten_nets(struct builder *b)
{
  const struct dcmap *m = b->m;
  uint32_t stack[129];
  int sp = 0;
  size_t cap = 0;
  addr128 pos = 0;
  bool full = false; /* pos has passed the last address */
  int rc = 0;

  for (size_t i = 0; i <= m->nnets && rc == 0; i++) {
    const struct net_rule *r = i < m->nnets ? &m->nets[i] : NULL;
    /* Close the enclosing rules that end before r starts. */
    while (sp > 0 && rc == 0) {
      const struct net_rule *top = &m->nets[stack[sp - 1]];
      addr128 end = addr_last(top->net, top->plen);
      if (r && end >= r->net)
        break;
      if (!full && pos <= end)
        rc = add_iv(b, &cap, pos, end, stack[sp - 1]);
      if (end == ~(addr128)0)
        full = true;
      else
        pos = end + 1;
      sp--;
    }
    if (r == NULL || rc != 0)
      break;
    if (sp > 0 && !full && pos < r->net)
      rc = add_iv(b, &cap, pos, r->net - 1, stack[sp - 1]);
    pos = r->net;
    stack[sp++] = (uint32_t)i;
  }
  return rc;
}

static int64_t answer_for(struct builder *b, const struct net_rule *net,
                          const struct geo_loc *loc, int32_t loc_index)
{
  struct answer a;
  int64_t id;

  if (net == NULL && loc == NULL)
    return b->unknown_answer;
  if (net == NULL && b->rec_answer[loc_index])
    return b->rec_answer[loc_index] - 1;
  rank_answer(b->m, net, loc, &a, NULL);
  id = intern(b, &a);
  if (id >= 0 && net == NULL)
    b->rec_answer[loc_index] = (uint32_t)id + 1;
  return id;
}

static int on_leaf(void *ctx, addr128 s, int plen, const struct geo_loc *loc,
                   int32_t loc_index)
{
  struct builder *b = ctx;
  addr128 e = addr_last(s, plen), cursor = s;
  bool done = false;
  int64_t leaf_id;
  int rc;

  if (loc_index >= 0 && (size_t)loc_index >= b->rec_cap) {
    size_t cap = b->rec_cap * 2;
    uint32_t *ra = realloc(b->rec_answer, cap * sizeof(*ra));
    if (ra == NULL)
      return GS_ERR_NOMEM;
    memset(ra + b->rec_cap, 0, (cap - b->rec_cap) * sizeof(*ra));
    b->rec_answer = ra;
    b->rec_cap = cap;
  }
  leaf_id = answer_for(b, NULL, loc, loc_index);
  if (leaf_id < 0)
    return (int)leaf_id;

  while (b->iv_pos < b->nivs && b->ivs[b->iv_pos].end < s)
    b->iv_pos++;
  for (size_t i = b->iv_pos; i < b->nivs && !done; i++) {
    const struct net_iv *iv = &b->ivs[i];
    if (iv->start > e)
      break;
    if (iv->start > cursor) {
      if ((rc = emit(b, cursor, (uint32_t)leaf_id)) != 0)
        return rc;
      cursor = iv->start;
    }
    int64_t id = answer_for(b, &b->m->nets[iv->rule], loc, loc_index);
    if (id < 0)
      return (int)id;
    if ((rc = emit(b, cursor, (uint32_t)id)) != 0)
      return rc;
    if (iv->end >= e)
      done = true;
    else
      cursor = iv->end + 1;
  }
  if (!done)
    return emit(b, cursor, (uint32_t)leaf_id);
  return 0;
}

static int bucket_bits_for(size_t n)
{
  int bits = 4;
  while (bits < BUCKET_BITS_MAX && ((size_t)1 << bits) * BUCKET_TARGET < n)
    bits++;
  return bits;
}

static int index32(struct bucketed32 *k)
{
  int bits = bucket_bits_for(k->n);

  k->shift = 32 - bits;
  k->nbuckets = 1u << bits;
  k->bucket = malloc((k->nbuckets + 1) * sizeof(*k->bucket));
  if (k->bucket == NULL)
    return GS_ERR_NOMEM;
  uint32_t i = 0;
  for (uint32_t b = 0; b < k->nbuckets; b++) {
    uint64_t first = (uint64_t)b << k->shift;
    while (i < k->n && k->e[i].key < first)
      i++;
    k->bucket[b] = i;
  }
  k->bucket[k->nbuckets] = k->n;
  return 0;
}

static int index64_level2(struct bucketed64 *k)
{
  size_t slots = 0;

  k->sub_of = calloc(k->nbuckets, sizeof(*k->sub_of));
  if (k->sub_of == NULL)
    return GS_ERR_NOMEM;
  for (uint32_t b = 0; b < k->nbuckets; b++) {
    uint32_t count = k->bucket[b + 1] - k->bucket[b];
    if (count > SUB_THRESHOLD && k->shift > 0) {
      int bits = bucket_bits_for(count);
      if (bits > k->shift)
        bits = k->shift;
      slots += ((size_t)1 << bits) + 1;
      k->nsubs++;
    }
  }
  if (k->nsubs == 0)
    return 0;
  k->subs = malloc(k->nsubs * sizeof(*k->subs));
  k->sub_slots = malloc(slots * sizeof(*k->sub_slots));
  if (k->subs == NULL || k->sub_slots == NULL)
    return GS_ERR_NOMEM;
  k->nsub_slots = slots;
  size_t si = 0, slot = 0;
  for (uint32_t b = 0; b < k->nbuckets; b++) {
    uint32_t lo = k->bucket[b], hi = k->bucket[b + 1];
    if (hi - lo <= SUB_THRESHOLD || k->shift == 0)
      continue;
    int bits = bucket_bits_for(hi - lo);
    if (bits > k->shift)
      bits = k->shift;
    struct sub_index *sub = &k->subs[si];
    uint64_t start = k->base + ((uint64_t)b << k->shift);
    sub->first_slot = (uint32_t)slot;
    sub->shift = k->shift - bits;
    uint32_t i = lo;
    for (uint64_t sl = 0; sl < ((uint64_t)1 << bits); sl++) {
      while (i < hi && ((k->key[i] - start) >> sub->shift) < sl)
        i++;
      k->sub_slots[slot++] = i;
    }
    k->sub_slots[slot++] = hi;
    k->sub_of[b] = (uint32_t)++si;
  }
  return 0;
}

static int index64(struct bucketed64 *k)
{
  int bits = bucket_bits_for(k->n);
  uint64_t span;

  /* key[0] is 0 (the start of the space); index from the next key on. */
  k->base = k->n > 1 ? k->key[1] : 0;
  span = k->n > 1 ? k->key[k->n - 1] - k->base : 0;
  k->shift = 0;
  while (k->shift < 64 && (span >> k->shift) >= ((uint64_t)1 << bits))
    k->shift++;
  k->nbuckets = 1u << bits;
  k->bucket = malloc((k->nbuckets + 1) * sizeof(*k->bucket));
  if (k->bucket == NULL)
    return GS_ERR_NOMEM;
  uint32_t i = k->n > 1 ? 1 : k->n;
  for (uint32_t b = 0; b < k->nbuckets; b++) {
    while (i < k->n && ((k->key[i] - k->base) >> k->shift) < b)
      i++;
    k->bucket[b] = i;
  }
  k->bucket[k->nbuckets] = k->n;
  return index64_level2(k);
}

/* Splits the full range list into the v4 and v6 key lists. */
static int split(struct table *t, struct builder *b)
{
  size_t n4 = 0, i;
  const addr128 v4_end = (addr128)1 << 32;

  while (n4 < b->n && b->start[n4] < v4_end)
    n4++;
  t->v4.n = (uint32_t)n4;
  t->v4.e = malloc((n4 ? n4 : 1) * sizeof(struct v4_entry));
  if (t->v4.e == NULL)
    return GS_ERR_NOMEM;
  for (i = 0; i < n4; i++) {
    t->v4.e[i].key = (uint32_t)b->start[i];
    t->v4.e[i].id = (uint16_t)b->id[i];
  }

  /*
   * v6: the ::/96 part is never searched here (IPv4 goes to v4), so the
   * list starts with key 0 carrying the answer in force at ::1:0:0.
   * Worst case every range is its own key plus one fine entry.
   */
  size_t cap = 2 * (b->n - n4) + 2;
  t->v6.key = malloc(cap * sizeof(uint64_t));
  t->v6.id = malloc(cap * sizeof(uint32_t));
  t->fine_key = malloc(2 * cap * sizeof(uint64_t));
  t->fine_id = malloc(2 * cap * sizeof(uint32_t));
  t->fine = malloc(cap * sizeof(struct fine_block));
  if (!t->v6.key || !t->v6.id || !t->fine_key || !t->fine_id || !t->fine)
    return GS_ERR_NOMEM;

  uint32_t n6 = 0;
  uint32_t carry = b->id[n4 - 1]; /* answer in force entering block h */
  uint64_t h = 0;
  i = n4;
  for (;;) {
    /* Block h: the ranges that start in [h << 64, (h + 1) << 64). */
    size_t j = i;
    bool fine;
    while (j < b->n && addr_hi(b->start[j]) == h)
      j++;
    fine = j > i + 1 || (j == i + 1 && addr_lo(b->start[i]) != 0);
    if (!fine) {
      uint32_t id = j == i ? carry : b->id[i];
      if (n6 == 0 || t->v6.id[n6 - 1] != id) {
        t->v6.key[n6] = h;
        t->v6.id[n6++] = id;
      }
    } else {
      struct fine_block *fb = &t->fine[t->nfine];
      fb->first = (uint32_t)t->nfine_keys;
      if (addr_lo(b->start[i]) != 0) {
        t->fine_key[t->nfine_keys] = 0;
        t->fine_id[t->nfine_keys++] = carry;
      }
      for (size_t k = i; k < j; k++) {
        t->fine_key[t->nfine_keys] = addr_lo(b->start[k]);
        t->fine_id[t->nfine_keys++] = b->id[k];
      }
      fb->n = (uint32_t)t->nfine_keys - fb->first;
      t->v6.key[n6] = h;
      t->v6.id[n6++] = FINE_FLAG | (uint32_t)t->nfine++;
    }
    if (j > i)
      carry = b->id[j - 1];
    i = j;
    /* After a fine block, block h + 1 needs its own key for `carry`. */
    if (fine && h != UINT64_MAX &&
        (i >= b->n || addr_hi(b->start[i]) != h + 1)) {
      h++;
      continue;
    }
    if (i >= b->n)
      break;
    h = addr_hi(b->start[i]);
  }
  t->v6.n = n6;
  return 0;
}

static int build_index(struct table *t)
{
  int rc = index32(&t->v4);
  if (rc == 0)
    rc = index64(&t->v6);
  return rc;
}

static int copy_dcs(struct table *t, const struct dcmap *m)
{
  t->dcs = calloc(m->ndcs, sizeof(*t->dcs));
  if (t->dcs == NULL)
    return GS_ERR_NOMEM;
  t->ndcs = m->ndcs;
  for (size_t i = 0; i < m->ndcs; i++) {
    t->dcs[i] = m->dcs[i];
    t->dcs[i].endpoint = strdup(m->dcs[i].endpoint);
    if (t->dcs[i].endpoint == NULL)
      return GS_ERR_NOMEM;
  }
  return 0;
}

static double now_seconds(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int table_build(const struct dcmap *m, struct geo *g, struct table **out,
                struct diag *d)
{
  struct builder b;
  struct table *t;
  struct answer unknown;
  double t0 = now_seconds();
  size_t nrecords = 0;
  int64_t id;
  int rc;

  memset(&b, 0, sizeof(b));
  b.m = m;
  t = calloc(1, sizeof(*t));
  b.rec_cap = 1u << 16;
  b.rec_answer = calloc(b.rec_cap, sizeof(*b.rec_answer));
  if (t == NULL || b.rec_answer == NULL) {
    rc = GS_ERR_NOMEM;
    goto fail;
  }
  rank_answer(m, NULL, NULL, &unknown, NULL);
  if ((id = intern(&b, &unknown)) < 0) {
    rc = (int)id;
    goto fail;
  }
  b.unknown_answer = (uint32_t)id;
  if ((rc = flatten_nets(&b)) != 0)
    goto fail;
  rc = geo_walk(g, on_leaf, &b, &nrecords);
  if (rc != 0)
    goto fail;
  if ((rc = split(t, &b)) != 0 || (rc = build_index(t)) != 0 ||
      (rc = copy_dcs(t, m)) != 0)
    goto fail;

  t->answers = b.answers;
  t->nanswers = b.nanswers;
  b.answers = NULL;
  t->stats.ranges_v4 = t->v4.n;
  t->stats.ranges_v6 = t->v6.n;
  t->stats.fine_keys = t->nfine_keys;
  t->stats.ranges = t->v4.n + t->v6.n + t->nfine_keys - t->nfine;
  t->stats.answers = t->nanswers;
  t->stats.records = nrecords;
  t->stats.bytes =
      sizeof(*t) + t->v4.n * sizeof(struct v4_entry) +
      (t->v4.nbuckets + 1) * 4 + t->v6.n * 12 + (t->v6.nbuckets + 1) * 4 +
      t->v6.nbuckets * 4 + t->v6.nsubs * sizeof(struct sub_index) +
      t->v6.nsub_slots * 4 + t->nfine_keys * 12 +
      t->nfine * sizeof(struct fine_block) +
      t->nanswers * sizeof(struct answer) + t->ndcs * sizeof(struct dc);
  for (size_t i = 0; i < t->ndcs; i++)
    t->stats.bytes += strlen(t->dcs[i].endpoint) + 1;
  t->stats.build_seconds = now_seconds() - t0;
  rc = 0;
  *out = t;
  t = NULL;
fail:
  if (rc == GS_ERR_LIMIT)
    diag_add(d, NULL, 0,
             "building the route table failed: the map and database yield "
             "more than %d distinct answers; lower `limit` or merge "
             "overrides",
             TABLE_MAX_ANSWERS);
  else if (rc == GS_ERR_DB)
    diag_add(d, NULL, 0,
             "building the route table failed: the database's search tree "
             "is corrupt");
  else if (rc != 0)
    diag_add(d, NULL, 0, "building the route table failed: %s",
             gs_strerror(rc));
  table_free(t);
  free(b.answers);
  free(b.ahash);
  free(b.rec_answer);
  free(b.ivs);
  free(b.start);
  free(b.id);
  return rc;
}

void table_free(struct table *t)
{
  if (t == NULL)
    return;
  free(t->v4.e);
  free(t->v4.bucket);
  free(t->v6.key);
  free(t->v6.id);
  free(t->v6.bucket);
  free(t->v6.sub_of);
  free(t->v6.subs);
  free(t->v6.sub_slots);
  free(t->fine_key);
  free(t->fine_id);
  free(t->fine);
  free(t->answers);
  for (size_t i = 0; i < t->ndcs; i++)
    free(t->dcs[i].endpoint);
  free(t->dcs);
  free(t);
}

/* ---- search ----------------------------------------------------------- */

static inline int clz128(addr128 x)
{
  uint64_t hi = addr_hi(x), lo = addr_lo(x);
  if (hi)
    return __builtin_clzll(hi);
  return lo ? 64 + __builtin_clzll(lo) : 128;
}

static inline int ctz128(addr128 x)
{
  uint64_t hi = addr_hi(x), lo = addr_lo(x);
  if (lo)
    return __builtin_ctzll(lo);
  return hi ? 64 + __builtin_ctzll(hi) : 128;
}

/*
 * Shortest prefix length p such that the whole p-block around a lies in
 * [lo, hi]. At p <= common(a, lo) the block starts at lo's prefix, which is
 * >= lo only if lo's remaining bits are zero; past that it is > lo.
 * Likewise for hi with one bits.
 */
static inline int scope_of(addr128 a, addr128 lo, addr128 hi)
{
  int p0 = clz128(a ^ lo), cand_lo = 128 - ctz128(lo);
  int q0 = clz128(a ^ hi), cand_hi = 128 - ctz128(~hi);
  int p_lo = cand_lo <= p0 ? cand_lo : p0 + 1;
  int p_hi = cand_hi <= q0 ? cand_hi : q0 + 1;
  return p_lo > p_hi ? p_lo : p_hi;
}

/*
 * Index of the last key <= x among indexes [lo, hi), or lo - 1 if none;
 * KEY(i) reads key i. Branch-free halving: the compiler emits cmov.
 */
#define LAST_LE(KEY, lo, hi, x, out)                                           \
  do {                                                                         \
    size_t len_ = (hi) - (lo);                                                 \
    size_t at_ = (lo);                                                         \
    if (len_ == 0 || KEY(at_) > (x)) {                                         \
      (out) = at_ - 1;                                                         \
      break;                                                                   \
    }                                                                          \
    while (len_ > 1) {                                                         \
      size_t half_ = len_ / 2;                                                 \
      at_ = KEY(at_ + half_) <= (x) ? at_ + half_ : at_;                       \
      len_ -= half_;                                                           \
    }                                                                          \
    (out) = at_;                                                               \
  } while (0)

#define V4_KEY(i) (k->e[(i)].key)
#define V6_KEY(i) (k->key[(i)])
#define FINE_KEY(i) (t->fine_key[(i)])

const struct answer *table_lookup(const struct table *t, addr128 a,
                                  uint8_t *scope)
{
  a = addr_normalize(a);
  if (addr_is_v4(a)) {
    const struct bucketed32 *k = &t->v4;
    uint32_t x = (uint32_t)a, b = x >> k->shift;
    size_t i;
    LAST_LE(V4_KEY, k->bucket[b], k->bucket[b + 1], x, i);
    addr128 lo = (addr128)k->e[i].key << 96;
    addr128 hi = i + 1 < k->n ? ((addr128)(k->e[i + 1].key - 1) << 96)
                              : ((addr128)UINT32_MAX << 96);
    *scope =
        (uint8_t)scope_of((addr128)x << 96, lo, hi | (((addr128)1 << 96) - 1));
    return &t->answers[k->e[i].id];
  }

  const struct bucketed64 *k = &t->v6;
  uint64_t x = addr_hi(a);
  size_t i;
  if (x < k->base) {
    i = 0;
  } else {
    uint64_t b = (x - k->base) >> k->shift;
    if (b >= k->nbuckets)
      b = k->nbuckets - 1;
    uint32_t sub = k->sub_of[b];
    if (sub == 0) {
      LAST_LE(V6_KEY, k->bucket[b], k->bucket[b + 1], x, i);
    } else {
      const struct sub_index *si = &k->subs[sub - 1];
      uint64_t off = x - k->base - (b << k->shift);
      const uint32_t *slot = &k->sub_slots[si->first_slot + (off >> si->shift)];
      LAST_LE(V6_KEY, slot[0], slot[1], x, i);
    }
  }
  uint32_t id = k->id[i];
  if (!(id & FINE_FLAG)) {
    addr128 lo = (addr128)k->key[i] << 64;
    addr128 hi =
        i + 1 < k->n ? ((addr128)k->key[i + 1] << 64) - 1 : ~(addr128)0;
    *scope = (uint8_t)scope_of(a, lo, hi);
    return &t->answers[id];
  }
  const struct fine_block *fb = &t->fine[id & ~FINE_FLAG];
  uint64_t y = addr_lo(a);
  size_t j;
  LAST_LE(FINE_KEY, fb->first, fb->first + fb->n, y, j);
  addr128 base = (addr128)x << 64;
  addr128 lo = base | t->fine_key[j];
  addr128 hi = j + 1 < fb->first + fb->n ? (base | t->fine_key[j + 1]) - 1
                                         : base | UINT64_MAX;
  *scope = (uint8_t)scope_of(a, lo, hi);
  return &t->answers[t->fine_id[j]];
}

const struct answer *table_answer(const struct table *t, size_t id)
{
  return id < t->nanswers ? &t->answers[id] : NULL;
}

void table_get_stats(const struct table *t, struct table_stats *out)
{
  *out = t->stats;
}

const struct dc *table_dc(const struct table *t, size_t index)
{
  return index < t->ndcs ? &t->dcs[index] : NULL;
}

size_t table_ndcs(const struct table *t)
{
  return t->ndcs;
}
