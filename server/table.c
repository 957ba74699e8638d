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
 * start <= x, and its scope follows from that start and the next one.
 * Lookups are independent of each other, so the CPU overlaps the cache
 * misses of several - unless a mispredicted branch discards the work done
 * ahead. Both searches therefore take the same steps for every address,
 * with no branch on the data in the common path:
 *
 *  - IPv4: a bucket index on the top 16 bits gives the bucket's first key.
 *    A bucket of more than V4_WINDOW keys is split further on its next bits
 *    into slots, each recording its first key (the others all use slot 0,
 *    which adds nothing). The V4_WINDOW keys from there are compared with x
 *    at once; only if all are <= x (a rare, very dense slot) does a loop
 *    go on.
 *  - IPv6: keys are the upper 64 bits of starts, searched with a static
 *    B+ tree of one-cache-line nodes (V6_FANOUT keys), the same height on
 *    every path. IPv6 boundaries cluster too unevenly for a radix index.
 *    Where a /64 holds a boundary, its id has FINE_FLAG set and names a
 *    fine sub-list keyed by the lower 64 bits, binary-searched (rare).
 */
#include "table.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "geosteer/geosteer.h"

#define FINE_FLAG 0x80000000u
#define TABLE_MAX_ANSWERS 65535 /* v4 ids are uint16_t */
#define V4_BUCKET_BITS 16       /* entries keep the other 16 bits */
#define V4_WINDOW 16            /* v4 entries compared per lookup */
#define V6_NODE 16              /* words per v6 tree node: two lines */
#define V6_KEYS 15              /* keys per node: 3 quarter marks + 4 x 3 */
#define V6_LEVELS_MAX 16        /* 16^16 nodes: more than any table */

struct v4_bucket {
  uint32_t first; /* index of the bucket's first entry, for offset 0 */
  uint32_t slots; /* first slot << 5 | shift from offset to slot */
  /* The scope bounds set by the range in force at the bucket's start,
   * which may begin before it, and the one at its end: for every x in
   * the bucket they are the same (see edge_p). */
  uint8_t p_lo, p_hi;
  /* The answer of a bucket that is one range (a single entry), so that
   * a lookup there needs no entry: 41% of the IPv4 space. */
  uint16_t only;
};

/*
 * An entry packs a range start's low 16 bits (its offset in the bucket)
 * over its answer id, so one read yields both. Each bucket's entries begin
 * with one for offset 0, so a lookup never leaves its bucket; p_lo and
 * p_hi keep what the true ends of the ranges cut by that mean for scopes.
 */
struct v4_index {
  uint32_t *entry; /* n + V4_WINDOW: a window never reads past the end */
  uint32_t n, nranges;
  struct v4_bucket *bucket; /* 2^V4_BUCKET_BITS + 1; the last has first n */
  uint16_t *slot; /* first entry of a slot, counted from its bucket's */
  size_t nslots;
};

/*
 * A static B+ tree over the v6 keys, of V6_NODE-word nodes stored level by
 * level from the root. A leaf holds V6_KEYS keys, key i being word
 * i % V6_KEYS of leaf i / V6_KEYS, and then the key after them. In an
 * inner node, word c - 1 is the first key under child c of V6_NODE; the
 * children of node j are nodes V6_NODE * j + c of the next level. Missing
 * keys read UINT64_MAX.
 */
struct v6_index {
  uint64_t *node;
  size_t nnodes;
  uint32_t *id; /* of key i: answer id, or FINE_FLAG | fine block */
  uint32_t n;
  int levels;                               /* inner levels */
  const uint64_t *level[V6_LEVELS_MAX + 1]; /* the leaves come last */
};

/* A /64 holding boundaries: its keys (lower 64 bits of starts) laid out
 * as v6 leaves are, from node `node` of fine_key, key 0 first. */
struct fine_block {
  uint32_t node;
  uint32_t n;
};

struct table {
  struct v4_index v4;
  struct v6_index v6;
  uint64_t *fine_key; /* nfine_nodes of V6_NODE words */
  uint32_t *fine_id;  /* V6_KEYS per node */
  struct fine_block *fine;
  size_t nfine, nfine_keys, nfine_nodes;
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

/* realloc to size bytes (at least 1); on failure sets *rc, keeps p. */
static void *resize(void *p, size_t size, int *rc)
{
  void *q = realloc(p, size ? size : 1);
  if (q == NULL) {
    *rc = GS_ERR_NOMEM;
    return p;
  }
  return q;
}

/* Most of the n entries at e that share one slot, e >> shift. */
static uint32_t most_per_slot(const uint32_t *e, uint32_t n, int shift)
{
  uint32_t most = 0, run = 0;
  for (uint32_t j = 0; j < n; j++) {
    run = j > 0 && e[j] >> shift == e[j - 1] >> shift ? run + 1 : 1;
    if (run > most)
      most = run;
  }
  return most;
}

/*
 * Slot bits for a bucket of n entries: the fewest that leave no slot above
 * V4_WINDOW entries, within one slot per entry (so slots never cost more
 * than 2 bytes an entry); 0 for a bucket that fits one window. A slot
 * still too full after that is left to the slow loop.
 */
static int slot_bits_for(const uint32_t *e, uint32_t n)
{
  int bits = 0;

  if (n <= V4_WINDOW)
    return 0;
  /* Fewer than n / V4_WINDOW slots cannot do. */
  while (((uint64_t)V4_WINDOW << (bits + 1)) <= n)
    bits++;
  while (bits < 32 - V4_BUCKET_BITS && ((uint64_t)2 << bits) <= n) {
    bits++;
    if (most_per_slot(e, n, 32 - bits) <= V4_WINDOW)
      break;
  }
  return bits;
}

/*
 * p_above() for 32-bit keys, as a word whose clz is 31 + p (2^32 for
 * p = 0): the smaller word has the larger p.
 */
static inline uint64_t word_above(uint32_t x, uint32_t lo)
{
  return lo ? (x ^ lo) | (lo & -lo) : (uint64_t)1 << 32;
}

/*
 * The scope bound from a range starting at lo <= x, for x in the bucket
 * starting at bs. lo < bs differs from bs in its upper 16 bits, which
 * alone then decide; lo == bs has its lowest one bit at 16 or above, which
 * decides over x's offset. Either way x's lower bits do not count.
 */
static uint8_t edge_p(uint32_t bs, uint32_t lo)
{
  return (uint8_t)(__builtin_clzll(word_above(bs, lo)) - 31);
}

/* Builds the v4 index from b's first n4 ranges. */
static int build_v4(struct v4_index *k, const struct builder *b, size_t n4)
{
  const uint32_t nb = 1u << V4_BUCKET_BITS, span = 1u << (32 - V4_BUCKET_BITS);
  size_t n = 0, r = 0, nslots = 1; /* slot 0 is shared */
  uint8_t *sbits = malloc(nb);
  int rc = 0;

  k->nranges = (uint32_t)n4;
  k->entry = malloc((n4 + nb + V4_WINDOW) * sizeof(*k->entry));
  k->bucket = malloc((nb + 1) * sizeof(*k->bucket));
  if (sbits == NULL || k->entry == NULL || k->bucket == NULL) {
    free(sbits);
    return GS_ERR_NOMEM;
  }
  for (uint32_t i = 0; i < nb; i++) {
    struct v4_bucket *bk = &k->bucket[i];
    addr128 start = (addr128)i * span, last = start + span - 1;
    while (r < n4 && b->start[r] <= start)
      r++; /* r >= 1: b->start[0] is 0 */
    bk->first = (uint32_t)n;
    bk->p_lo = edge_p((uint32_t)start, (uint32_t)b->start[r - 1]);
    k->entry[n++] = b->id[r - 1];
    for (; r < n4 && b->start[r] <= last; r++)
      k->entry[n++] = (uint32_t)(b->start[r] - start) << 16 | b->id[r];
    /* The same for the end, upside down: ~hi <= ~x. */
    bk->p_hi =
        edge_p(~(uint32_t)last, r < n4 ? ~((uint32_t)b->start[r] - 1) : 0);
    sbits[i] = (uint8_t)slot_bits_for(&k->entry[bk->first], n - bk->first);
    /* The slot number is stored in 27 bits. */
    if (nslots + ((size_t)1 << sbits[i]) >= (size_t)1 << 27)
      sbits[i] = 0;
    nslots += sbits[i] > 0 ? (size_t)1 << sbits[i] : 0;
  }
  k->bucket[nb] = (struct v4_bucket){(uint32_t)n, 0, 0, 0, 0};
  for (uint32_t i = 0; i < nb; i++)
    k->bucket[i].only = (uint16_t)(k->entry[k->bucket[i].first] & 0xffff);
  k->n = (uint32_t)n;
  k->entry = resize(k->entry, (n + V4_WINDOW) * sizeof(*k->entry), &rc);
  k->slot = malloc(nslots * sizeof(*k->slot));
  if (rc != 0 || k->slot == NULL) {
    free(sbits);
    return GS_ERR_NOMEM;
  }
  memset(&k->entry[n], 0, V4_WINDOW * sizeof(*k->entry));
  k->nslots = nslots;
  k->slot[0] = 0;
  size_t s = 1;
  for (uint32_t i = 0; i < nb; i++) {
    uint32_t first = k->bucket[i].first, cnt = k->bucket[i + 1].first - first;
    uint32_t j = 0;
    int bits = sbits[i];
    /* Without slots, the shift sends any offset to slot 0. */
    k->bucket[i].slots = (bits > 0 ? (uint32_t)s << 5 : 0) | (16u - bits);
    for (uint32_t sl = 0; bits > 0 && sl < (1u << bits); sl++) {
      while (j < cnt && k->entry[first + j] >> (32 - bits) < sl)
        j++;
      k->slot[s++] = (uint16_t)j;
    }
  }
  free(sbits);
  return 0;
}

static int index_v6(struct v6_index *k, const uint64_t *key)
{
  size_t level_n[V6_LEVELS_MAX + 1], total = 0;
  size_t span = 1; /* leaves under a child of a node of level l */
  int h = 0, rc = 0;

  k->id = resize(k->id, k->n * sizeof(*k->id), &rc);
  if (rc != 0)
    return rc;
  /* level_n counts up from the leaves, level down from the root */
  level_n[0] = (k->n + V6_KEYS - 1) / V6_KEYS;
  while (level_n[h] > 1) {
    level_n[h + 1] = (level_n[h] + V6_NODE - 1) / V6_NODE;
    h++;
  }
  k->levels = h;
  for (int l = h; l >= 0; l--)
    total += level_n[l];
  k->nnodes = total;
  k->node = malloc(total * V6_NODE * sizeof(*k->node));
  if (k->node == NULL)
    return GS_ERR_NOMEM;
  for (int l = 0; l <= h; l++) {
    uint64_t *w = &k->node[(total -= level_n[l]) * V6_NODE];
    k->level[h - l] = w;
    for (size_t j = 0; j < level_n[l]; j++)
      for (size_t c = 0; c < V6_NODE; c++) {
        /* A leaf's word c is key c; an inner one's, under child c + 1. */
        size_t i =
            l == 0 ? j * V6_KEYS + c : (j * V6_NODE + c + 1) * span * V6_KEYS;
        bool has = i < k->n && (l == 0 || c < V6_KEYS);
        *w++ = has ? key[i] : UINT64_MAX;
      }
    span *= l == 0 ? 1 : V6_NODE;
  }
  return 0;
}

/* Lays out the fine blocks, still one flat list, in nodes. */
static int nodes_fine(struct table *t)
{
  uint64_t *key = t->fine_key;
  uint32_t *id = t->fine_id;
  size_t nodes = 0;

  for (size_t f = 0; f < t->nfine; f++)
    nodes += (t->fine[f].n + V6_KEYS - 1) / V6_KEYS;
  t->nfine_nodes = nodes;
  t->fine_key = malloc((nodes ? nodes : 1) * V6_NODE * sizeof(*key));
  t->fine_id = malloc((nodes ? nodes : 1) * V6_KEYS * sizeof(*id));
  if (t->fine_key != NULL && t->fine_id != NULL) {
    for (size_t f = 0, nd = 0; f < t->nfine; f++) {
      struct fine_block *fb = &t->fine[f];
      size_t first = fb->node;
      fb->node = (uint32_t)nd;
      for (size_t c = 0; c < (fb->n + V6_KEYS - 1) / V6_KEYS * V6_NODE; c++) {
        size_t k = c / V6_NODE * V6_KEYS + c % V6_NODE; /* key k of fb */
        t->fine_key[nd * V6_NODE + c] = k < fb->n ? key[first + k] : UINT64_MAX;
        if (c % V6_NODE < V6_KEYS && k < fb->n)
          t->fine_id[nd * V6_KEYS + c / V6_NODE * V6_KEYS + c % V6_NODE] =
              id[first + k];
      }
      nd += (fb->n + V6_KEYS - 1) / V6_KEYS;
    }
  }
  free(key);
  free(id);
  return t->fine_key && t->fine_id ? 0 : GS_ERR_NOMEM;
}

/* Splits the full range list into the v4 and v6 key lists. */
static int split(struct table *t, struct builder *b)
{
  size_t n4 = 0, i;
  const addr128 v4_end = (addr128)1 << 32;

  /* b->start[0] is 0: the walk tiles the space, so n4 >= 1. */
  while (n4 < b->n && b->start[n4] < v4_end)
    n4++;
  int rc = build_v4(&t->v4, b, n4);
  if (rc != 0)
    return rc;

  /*
   * v6: the ::/96 part is never searched here (IPv4 goes to v4), so the
   * list starts with key 0 carrying the answer in force at ::1:0:0.
   * Worst case every range is its own key plus one fine entry.
   */
  size_t cap = 2 * (b->n - n4) + 2;
  uint64_t *key = malloc(cap * sizeof(uint64_t));
  t->v6.id = malloc(cap * sizeof(uint32_t));
  t->fine_key = malloc(2 * cap * sizeof(uint64_t));
  t->fine_id = malloc(2 * cap * sizeof(uint32_t));
  t->fine = malloc(cap * sizeof(struct fine_block));
  if (!key || !t->v6.id || !t->fine_key || !t->fine_id || !t->fine)
    goto nomem;

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
        key[n6] = h;
        t->v6.id[n6++] = id;
      }
    } else {
      struct fine_block *fb = &t->fine[t->nfine];
      fb->node = (uint32_t)t->nfine_keys; /* the first key, for now */
      if (addr_lo(b->start[i]) != 0) {
        t->fine_key[t->nfine_keys] = 0;
        t->fine_id[t->nfine_keys++] = carry;
      }
      for (size_t k = i; k < j; k++) {
        t->fine_key[t->nfine_keys] = addr_lo(b->start[k]);
        t->fine_id[t->nfine_keys++] = b->id[k];
      }
      fb->n = (uint32_t)t->nfine_keys - fb->node;
      key[n6] = h;
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
  rc = index_v6(&t->v6, key);
  free(key);
  t->fine = resize(t->fine, t->nfine * sizeof(struct fine_block), &rc);
  return rc != 0 ? rc : nodes_fine(t);
nomem:
  free(key);
  return GS_ERR_NOMEM;
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

/* Every byte the table holds, as allocated. */
static size_t table_bytes(const struct table *t)
{
  size_t bytes = sizeof(*t);

  bytes += (t->v4.n + V4_WINDOW) * sizeof(*t->v4.entry) +
           ((1u << V4_BUCKET_BITS) + 1) * sizeof(*t->v4.bucket) +
           t->v4.nslots * sizeof(*t->v4.slot);
  bytes += t->v6.nnodes * V6_NODE * sizeof(*t->v6.node) +
           t->v6.n * sizeof(*t->v6.id);
  /* resize() keeps at least one byte of an empty list */
  bytes +=
      (t->nfine_nodes ? t->nfine_nodes : 1) *
          (V6_NODE * sizeof(*t->fine_key) + V6_KEYS * sizeof(*t->fine_id)) +
      (t->nfine ? t->nfine * sizeof(struct fine_block) : 1);
  bytes += t->nanswers * sizeof(struct answer) + t->ndcs * sizeof(struct dc);
  for (size_t i = 0; i < t->ndcs; i++)
    bytes += strlen(t->dcs[i].endpoint) + 1;
  return bytes;
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
  if ((rc = split(t, &b)) != 0 || (rc = copy_dcs(t, m)) != 0)
    goto fail;

  t->answers = resize(b.answers, b.nanswers * sizeof(struct answer), &rc);
  t->nanswers = b.nanswers;
  b.answers = NULL;
  if (rc != 0)
    goto fail;
  t->stats.ranges_v4 = t->v4.nranges;
  t->stats.ranges_v6 = t->v6.n;
  t->stats.fine_keys = t->nfine_keys;
  t->stats.ranges = t->v4.nranges + t->v6.n + t->nfine_keys - t->nfine;
  t->stats.answers = t->nanswers;
  t->stats.records = nrecords;
  t->stats.bytes = table_bytes(t);
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
  free(t->v4.entry);
  free(t->v4.bucket);
  free(t->v4.slot);
  free(t->v6.node);
  free(t->v6.id);
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

/*
 * The scope: the shortest p such that the p-block around x lies in
 * [lo, hi], taken 64 bits at a time. For the block to start at lo or
 * above, p must take in lo's lowest one bit or the first bit where x is
 * above lo, whichever is higher: clz of their OR, plus 1. p_below() is
 * the same for hi, its zero bits and x below it.
 */
static inline int p_above(uint64_t x, uint64_t lo)
{
  return lo ? __builtin_clzll((x ^ lo) | (lo & -lo)) + 1 : 0;
}

static inline int p_below(uint64_t x, uint64_t hi)
{
  return p_above(~x, ~hi);
}

static inline int max_int(int a, int b)
{
  return a > b ? a : b;
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

#define V4_KEY(i) (k->entry[(i)] >> 16)

/*
 * Entries <= xk among the V4_WINDOW at e, of which the first len (if
 * fewer) are in the bucket: beyond that offsets start again from 0.
 */
static inline unsigned count_le(const uint32_t *e, uint32_t xk, size_t len)
{
  unsigned past = ~0u << (len < V4_WINDOW ? len : V4_WINDOW);
#ifdef __SSE2__
  /* SSE2 compares signed: flip the top bits to compare unsigned. */
  const __m128i flip = _mm_set1_epi32(INT32_MIN);
  const __m128i xv = _mm_xor_si128(_mm_set1_epi32((int)xk), flip);
  const __m128i *v = (const __m128i *)(const void *)e;
#define GT(q) _mm_cmpgt_epi32(_mm_xor_si128(_mm_loadu_si128(v + (q)), flip), xv)
  __m128i gt = _mm_packs_epi16(_mm_packs_epi32(GT(0), GT(1)),
                               _mm_packs_epi32(GT(2), GT(3)));
#undef GT
  unsigned above = past | (unsigned)_mm_movemask_epi8(gt) | 1u << V4_WINDOW;
  return (unsigned)__builtin_ctz(above); /* sorted: the first above x */
#else
  unsigned c = 0;
  for (int j = 0; j < V4_WINDOW; j++)
    c += !(past >> j & 1) && e[j] <= xk;
  return c;
#endif
}

/*
 * Keys <= x among the V6_KEYS at s, without branches. Halving would make
 * four loads that each wait for the one before; instead the node is cut
 * in quarters: three keys pick the quarter, three more the key in it, so
 * only two rounds of loads wait on each other.
 */
static inline size_t search_node(const uint64_t *s, uint64_t x)
{
  size_t q = 4 * ((size_t)(s[3] <= x) + (s[7] <= x) + (s[11] <= x));
  return q + (s[q] <= x) + (s[q + 1] <= x) + (s[q + 2] <= x);
}

/*
 * The IPv4 scope, as a word whose clz is 31 + the scope. For each end the
 * word is p_above()'s OR (or 2^32 for p = 0), and the larger p has the
 * smaller word. Within a bucket, lo and hi share x's upper 16 bits; the
 * words for the ranges cut at its edges come from the bucket's p_lo and
 * p_hi and are ready before the entries are, so that little waits on
 * their load.
 */

/* c ? a : b without a branch, which would be mispredicted often. */
static inline uint64_t pick(bool c, uint64_t a, uint64_t b)
{
  return b ^ ((a ^ b) & -(uint64_t)c);
}

static const struct answer *v4_answer(const struct table *t,
                                      const struct v4_bucket *bk, uint32_t x,
                                      size_t i, uint8_t *scope)
{
  const uint32_t *e = &t->v4.entry[i];
  uint32_t off = x & 0xffff, s = e[0] >> 16, next = e[1] >> 16;
  uint64_t lo_edge = (uint64_t)1 << (32 - bk->p_lo);
  uint64_t hi_edge = (uint64_t)1 << (32 - bk->p_hi);
  /* For hi = next - 1, its lowest zero bit is next's lowest one. */
  uint64_t a = pick(i == bk->first, lo_edge, (off ^ s) | (s & -s));
  uint64_t b =
      pick(i + 1 == bk[1].first, hi_edge, (off ^ (next - 1)) | (next & -next));
  *scope = (uint8_t)(__builtin_clzll(a < b ? a : b) - 31);
  return &t->answers[e[0] & 0xffff];
}

/* x in a slot too dense for one window: search the whole bucket. Out of
 * line, so that the common path need not save registers for it. */
__attribute__((noinline)) static const struct answer *
lookup_v4_dense(const struct table *t, uint32_t x, uint8_t *scope)
{
  const struct v4_index *k = &t->v4;
  const struct v4_bucket *bk = &k->bucket[x >> V4_BUCKET_BITS];
  size_t i;
  LAST_LE(V4_KEY, bk->first, bk[1].first, x & 0xffff, i);
  return v4_answer(t, bk, x, i, scope);
}

/* A bucket that is one range: its answer is in the bucket itself. */
static inline bool one_range(const struct v4_bucket *bk)
{
  return bk[1].first - bk->first == 1;
}

/* The slot of x in its bucket bk: where x's window starts, from first. */
static inline const uint16_t *slot_for_x(const struct v4_index *k,
                                         const struct v4_bucket *bk, uint32_t x)
{
  uint32_t sl = bk->slots;
  return &k->slot[(sl >> 5) + ((x & 0xffff) >> (sl & 31))];
}

static const struct answer *lookup_v4(const struct table *t, uint32_t x,
                                      uint8_t *scope)
{
  const struct v4_index *k = &t->v4;
  const struct v4_bucket *bk = &k->bucket[x >> V4_BUCKET_BITS];
  if (one_range(bk)) {
    *scope = (uint8_t)max_int(bk->p_lo, bk->p_hi);
    return &t->answers[bk->only];
  }
  uint32_t off = x & 0xffff;
  size_t f = bk->first + *slot_for_x(k, bk, x);
  /* Entries past the slot are above x; the bucket's first is not, so
   * it is never passed. All V4_WINDOW at most x: there may be more. */
  unsigned c = count_le(&k->entry[f], off << 16 | 0xffff, bk[1].first - f);
  if (c == V4_WINDOW)
    return lookup_v4_dense(t, x, scope);
  return v4_answer(t, bk, x, f + c - 1, scope);
}

void table_prefetch(const struct table *t, const addr128 *a, size_t n)
{
  const struct v4_index *k = &t->v4;
  const struct v4_bucket *bk[TABLE_PREFETCH_MAX];
  uint32_t x[TABLE_PREFETCH_MAX];
  size_t m = 0;

  /* Level 1: the buckets (plain IPv4 only; see table_lookup). */
  for (size_t i = 0; i < n && m < TABLE_PREFETCH_MAX; i++) {
    if ((addr_hi(a[i]) | addr_lo(a[i]) >> 32) != 0)
      continue;
    x[m] = (uint32_t)a[i];
    bk[m] = &k->bucket[x[m] >> V4_BUCKET_BITS];
    __builtin_prefetch(bk[m]);
    __builtin_prefetch(&bk[m][1].first);
    m++;
  }
  /* One address: the next levels would wait for this one with nothing to
   * overlap; the caller's own work until its lookup overlaps this miss. */
  if (m < 2)
    return;
  /* Level 2: the slots of buckets that are more than one range. */
  for (size_t i = 0; i < m; i++)
    if (!one_range(bk[i]))
      __builtin_prefetch(slot_for_x(k, bk[i], x[i]));
  /* Level 3: their windows. */
  for (size_t i = 0; i < m; i++) {
    if (one_range(bk[i]))
      continue;
    const uint32_t *e = &k->entry[bk[i]->first + *slot_for_x(k, bk[i], x[i])];
    __builtin_prefetch(e);
    __builtin_prefetch(e + V4_WINDOW - 1);
  }
}

/*
 * An IPv6 address whose /64 x holds boundaries: search the block for the
 * lower 64 bits y. The first range of a block runs from its start (key 0)
 * and the last to its end, which the scope takes as lo and hi.
 */
static const struct answer *lookup_fine(const struct table *t, addr128 a,
                                        uint32_t id, uint8_t *scope)
{
  const struct fine_block *fb = &t->fine[id & ~FINE_FLAG];
  uint64_t x = addr_hi(a), y = addr_lo(a);
  size_t nd = fb->node, last = fb->node + (fb->n - 1) / V6_KEYS;
  while (nd < last && t->fine_key[(nd + 1) * V6_NODE] <= y)
    nd++; /* only blocks of more than V6_KEYS keys have several nodes */
  const uint64_t *w = &t->fine_key[nd * V6_NODE];
  size_t k = (nd - fb->node) * V6_KEYS, c = search_node(w, y) - 1;
  if (k + c >= fb->n) /* y = UINT64_MAX counts the padding */
    c = fb->n - k - 1;
  k += c; /* key k of the block */
  int p_lo = w[c] ? 64 + p_above(y, w[c]) : p_above(x, x);
  int p_hi = k + 1 < fb->n ? 64 + p_below(y, w[c + 1] - 1) : p_below(x, x);
  *scope = (uint8_t)max_int(p_lo, p_hi);
  return &t->answers[t->fine_id[nd * V6_KEYS + c]];
}

/* Out of line: the common paths of table_lookup need no registers saved. */
__attribute__((noinline)) static const struct answer *
lookup_v6(const struct table *t, addr128 a, uint8_t *scope)
{
  const struct v6_index *k = &t->v6;
  const uint64_t *leaf = k->level[k->levels];
  uint64_t x = addr_hi(a);
  size_t j = 0, c;

  if (x != UINT64_MAX) {
    /* The same number of levels for every x. */
    for (int l = 0; l < k->levels; l++)
      j = j * V6_NODE + search_node(k->level[l] + j * V6_NODE, x);
    leaf += j * V6_NODE;
    __builtin_prefetch(&k->id[j * V6_KEYS]);
    c = search_node(leaf, x) - 1; /* a leaf's first key is <= x */
  } else { /* the padding would count too: the last key is the one */
    j = (k->n - 1) / V6_KEYS;
    c = (k->n - 1) % V6_KEYS;
    leaf += j * V6_NODE;
  }
  size_t i = j * V6_KEYS + c;
  uint64_t hi = i + 1 < k->n ? leaf[c + 1] - 1 : UINT64_MAX;
  uint32_t id = k->id[i];
  if (id & FINE_FLAG)
    return lookup_fine(t, a, id, scope);
  *scope = (uint8_t)max_int(p_above(x, leaf[c]), p_below(x, hi));
  return &t->answers[id];
}

/* Normalises a and looks it up; out of line, see table_lookup. */
__attribute__((noinline)) static const struct answer *
lookup_alias(const struct table *t, addr128 a, uint8_t *scope)
{
  a = addr_normalize(a);
  if (addr_is_v4(a))
    return lookup_v4(t, (uint32_t)a, scope);
  return lookup_v6(t, a, scope);
}

const struct answer *table_lookup(const struct table *t, addr128 a,
                                  uint8_t *scope)
{
  uint64_t hi = addr_hi(a);

  /*
   * No alias space lies in ::/96, so plain IPv4 skips the normalising.
   * Otherwise addr_normalize() changes only addresses with upper bits 0
   * (IPv4-mapped) or in 2002::/16 and 2001::/32 (6to4, Teredo): the rest
   * skip it too. Keep this in step with addr.c.
   */
  if ((hi | addr_lo(a) >> 32) == 0)
    return lookup_v4(t, (uint32_t)a, scope);
  if (hi != 0 && hi >> 48 != 0x2002 && hi >> 32 != 0x20010000)
    return lookup_v6(t, a, scope);
  return lookup_alias(t, a, scope);
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
