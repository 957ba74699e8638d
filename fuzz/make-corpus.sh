#!/bin/sh
# make-corpus.sh: writes the seed corpus of the scan fuzzer into
# fuzz/corpus/scan/ (run from anywhere; the outputs are committed). Seeds
# are small and cover each shape the scanner must tell apart: complete
# requests, nesting, cut-short messages, hostile headers, a bad byte.
set -eu

out="$(dirname "$0")/corpus/scan"
mkdir -p "$out"

seed() { # seed NAME BYTES: BYTES is a printf format of octal escapes
  # shellcheck disable=SC2059 # the escapes are the point
  printf "$2" >"$out/$1"
}

# [0, 7, "route", [{"ip": "1.2.3.4"}]]
seed route-request '\224\000\007\245route\221\201\242ip\2471.2.3.4'
# [0, 1000, "route", ["2001:db8::1"]] with a uint16 msgid
seed route-uint16-msgid '\224\000\315\003\350\245route\221\2532001:db8::1'
# [0, 9, "stats", []] in an array16 header
seed request-array16 '\334\000\004\000\011\245stats\220'
# [2, "reload", [nil]]: a notification
seed notification '\223\002\246reload\221\300'
# {"a": [1, {"b": [true, false]}], "c": 1.5 (float64)}
seed nested-map '\202\241a\222\001\201\241b\222\303\302\241c\313\077\370\000\000\000\000\000\000'
# [[[[[[[[nil]]]]]]]]: depth 8, the limit
seed depth-8 '\221\221\221\221\221\221\221\221\300'
# depth 9: one too many
seed depth-9 '\221\221\221\221\221\221\221\221\221\300'
# the route request cut after the method name
seed truncated-request '\224\000\007\245route'
# a str8 of 16 bytes with 3 present
seed truncated-str8 '\331\020abc'
# array32 claiming 2^26 elements
seed array32-header '\335\004\000\000\000'
# map32 claiming 2^32 - 1 entries
seed map32-header '\337\377\377\377\377'
# str32 claiming 4 GiB
seed str32-header '\333\377\377\377\377'
# ext8, fixext4, bin16, int64: the remaining formats
seed ext-and-bin '\224\307\002\001ab\326\377\000\000\000\001\305\000\001z\323\200\000\000\000\000\000\000\000'
# 0xc1, never used
seed never-used '\222\001\301'

# Regression: an empty method and an empty argument name (msgpack-c gives
# empty strings a NULL pointer; found by the fuzzer).
seed empty-method-and-key '\224\000\007\240\221\201\240\160'

# route requests as rpc_peek_route reads them: an IPv4 "ip", and a user
# then an IPv6 "ip"
seed route-ip '\224\000\007\245route\221\201\242ip\2471.2.3.4'
seed route-user-ip6 '\224\000\010\245route\221\202\244user\241u\242ip\2512001:db8::'
# Regression: an empty "ip", whose decoded text has no pointer.
seed route-empty-ip '\224\000\007\245route\221\201\242ip\240'
