/*
 * msgpack_same: whether two decoded MessagePack objects hold the same
 * value, as far as any reader can tell (pointers aside), for the tests and
 * the fuzz target that compare the server's decoders with msgpack-c's.
 * Unlike msgpack_object_equal it never passes an empty string's NULL
 * pointer to memcmp. Floats and ext count as equal: the decoders under
 * test leave them to msgpack_unpack.
 */
#ifndef GS_TEST_MSGPACK_SAME_H
#define GS_TEST_MSGPACK_SAME_H

#include <msgpack.h>
#include <stdbool.h>
#include <string.h>

static inline bool msgpack_same(const msgpack_object *a,
                                const msgpack_object *b)
{
  if (a->type != b->type)
    return false;
  switch (a->type) {
  case MSGPACK_OBJECT_NIL:
    return true;
  case MSGPACK_OBJECT_BOOLEAN:
    return a->via.boolean == b->via.boolean;
  case MSGPACK_OBJECT_POSITIVE_INTEGER:
    return a->via.u64 == b->via.u64;
  case MSGPACK_OBJECT_NEGATIVE_INTEGER:
    return a->via.i64 == b->via.i64;
  case MSGPACK_OBJECT_STR:
  case MSGPACK_OBJECT_BIN:
    return a->via.str.size == b->via.str.size &&
           (a->via.str.size == 0 ||
            memcmp(a->via.str.ptr, b->via.str.ptr, a->via.str.size) == 0);
  case MSGPACK_OBJECT_ARRAY:
    if (a->via.array.size != b->via.array.size)
      return false;
    for (uint32_t i = 0; i < a->via.array.size; i++)
      if (!msgpack_same(&a->via.array.ptr[i], &b->via.array.ptr[i]))
        return false;
    return true;
  case MSGPACK_OBJECT_MAP:
    if (a->via.map.size != b->via.map.size)
      return false;
    for (uint32_t i = 0; i < a->via.map.size; i++)
      if (!msgpack_same(&a->via.map.ptr[i].key, &b->via.map.ptr[i].key) ||
          !msgpack_same(&a->via.map.ptr[i].val, &b->via.map.ptr[i].val))
        return false;
    return true;
  default: /* floats, ext */
    return true;
  }
}

#endif
