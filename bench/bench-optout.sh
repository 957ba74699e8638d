#!/usr/bin/env bash
# bench-optout: what geolocation opt-outs cost geosteerd; docs/benchmarks.md
# explains the figures.
#
# In a temporary folder: builds a store of 1,000,000 opt-outs with
# `bench-optout make-store`, then starts two geosteerd (one worker each, the
# real database and examples/dcmap.yaml, route listener on a free loopback
# port): "0" on an empty store and "1m" on that store, and reads the 1m
# daemon's index load from its `event=optouts_loaded` log line. Then it runs
# `bench-optout route` (requests carry a user who has not opted out) against
# 0 and 1m in turn, BENCH_PAIRS times, and last times BENCH_SETS durable
# optout.set calls on the 1m daemon's admin socket. It prints `name: value
# unit` lines; figures are medians, the ratio the median of per-pair ratios.
# Both daemons are stopped and the folder is removed on every exit. A failed
# step stops the benchmark with status 1; a figure outside its floor is only
# reported, on standard error.
#
# Environment:
#   BENCH_N      route requests per run (default 500000)
#   BENCH_PAIRS  0/1m pairs of route runs (default 7: many short pairs
#                resist a busy machine better than a few long ones)
#   BENCH_SETS   optout.set calls (default 2000)
#   BENCH_PIN    0: no pinning (default 1: on a machine with two CPUs or
#                more, the daemons run on CPU 0 and the route load on CPU 1;
#                bench/common.sh)
#   BENCH_OPTOUT, GEOSTEERD  the programs (default build/)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench=${BENCH_OPTOUT:-$root/build/bench-optout}
geosteerd=${GEOSTEERD:-$root/build/geosteerd}
n=${BENCH_N:-500000}
pairs=${BENCH_PAIRS:-7}
sets=${BENCH_SETS:-2000}
optouts=1000000
conns=16 pipeline=16 # route load: connections, requests in flight each
start_timeout=120    # seconds for a daemon to log event=started

# shellcheck source=bench/common.sh
. "$root/bench/common.sh"

dir=$(mktemp -d "${TMPDIR:-/tmp}/bench-optout.XXXXXX")
pids=()
declare -A port pid # route port and process id by daemon name

stop() {
  local p
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  for p in "${pids[@]}"; do
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$dir"
}
trap stop EXIT
trap 'exit 1' INT TERM HUP

say() {
  echo "bench-optout: $*" >&2
}

# Starts geosteerd on the store in $dir/$1; sets port[$1] to its route port
# (port 0 in the config: the kernel picks a free one, the log names it).
start_geosteerd() {
  local name=$1 log=$dir/$1/geosteerd.log tries=$((start_timeout * 10))
  mkdir -p "$dir/$name"
  cat >"$dir/$name/geosteer.yaml" <<EOF
listen:
  route: ["127.0.0.1:0"]
  admin: $dir/$name/admin.sock
geo:
  database: $root/data/GeoLite2-City.mmdb
  map: $root/examples/dcmap.yaml
store:
  path: $dir/$name/geosteer.db
workers: 1
EOF
  "${server_cpu[@]}" "$geosteerd" -c "$dir/$name/geosteer.yaml" 2>"$log" &
  pid[$name]=$!
  pids+=("${pid[$name]}")
  while ((tries-- > 0)); do
    if grep -q 'event=started' "$log"; then
      port[$name]=$(sed -n \
        's/.*event=listening kind=route addr=127\.0\.0\.1:\([0-9]*\).*/\1/p' \
        "$log")
      return 0
    fi
    kill -0 "${pid[$name]}" 2>/dev/null || break
    sleep 0.1
  done
  say "geosteerd ($name) did not start:"
  tail -n 5 "$log" >&2 || true
  return 1
}

# Runs bench-optout (on the client's CPU) with the given arguments; its
# output lands in $dir/out.
run() {
  if ! "${client_cpu[@]}" "$bench" "$@" >"$dir/out" 2>"$dir/err"; then
    say "bench-optout $* failed:"
    cat "$dir/out" "$dir/err" >&2
    return 1
  fi
}

# The value of the line named $1 in $dir/out.
figure() {
  awk -v name="$1:" '$1 == name { print $2 }' "$dir/out"
}

# CPU time the daemon $1 has used, in ns, all threads (schedstat field 1).
cpu_ns() {
  cat /proc/"${pid[$1]}"/task/*/schedstat | awk '{ t += $1 } END { print t }'
}

# route run against daemon $1 ("0" or "1m"), extra arguments after it;
# sets cpu_per_req to the daemon's CPU ns per request of the run.
route() {
  local name=$1 before
  shift
  before=$(cpu_ns "$name")
  run route --port "${port[$name]}" -c "$conns" -p "$pipeline" "$@"
  cpu_per_req=$(awk -v a="$before" -v b="$(cpu_ns "$name")" \
    -v n="$(figure requests)" 'BEGIN { printf "%.0f", (b - a) / n }')
}

# Reports (stderr) when $1 = value $2 is not within `$3 $4` (awk test).
floor() {
  if ! awk -v v="$2" -v f="$4" "BEGIN { exit !(v $3 f) }"; then
    say "floor missed: $1 is $2, must be $3 $4"
  fi
}

if [ ! -x "$bench" ] || [ ! -x "$geosteerd" ]; then
  say "needs $bench and $geosteerd; run 'make bench-optout'"
  exit 1
fi

say "building a store of $optouts opt-outs"
mkdir -p "$dir/1m"
run make-store "$dir/1m" "$optouts" || exit 1
store_seconds=$(figure store_build_seconds)

# One after the other, so that 0 is idle while 1m loads its index.
mkdir -p "$dir/0"
start_geosteerd 0 || exit 1
start_geosteerd 1m || exit 1
loaded=$(grep -o 'event=optouts_loaded .*' "$dir/1m/geosteerd.log" | head -n 1)
count=$(sed -n 's/.* count=\([0-9]*\).*/\1/p' <<<"$loaded")
bytes=$(sed -n 's/.* bytes=\([0-9]*\).*/\1/p' <<<"$loaded")
load_seconds=$(sed -n 's/.* seconds=\([0-9.]*\).*/\1/p' <<<"$loaded")
if [ "$count" != "$optouts" ]; then
  say "the 1m daemon loaded '$count' opt-outs, expected $optouts:"
  tail -n 5 "$dir/1m/geosteerd.log" >&2
  exit 1
fi
say "geosteerd 0 on 127.0.0.1:${port[0]}, 1m on 127.0.0.1:${port[1m]}$(
  pinned_text 'the route load')"

# Checks, and warmup: opted-out users get reason optout from 1m only; the
# users of the timed runs (bench-visitor-*) are geolocated by both.
check="-n 20000 --prefix bench-user- --users $optouts"
# shellcheck disable=SC2086 # $check is words
route 1m $check --expect optout || exit 1
# shellcheck disable=SC2086
route 0 $check --expect geo || exit 1
route 1m -n 20000 --expect geo || exit 1

rps_0=() rps_1m=() p99_0=() p99_1m=() cpu_0=() cpu_1m=() ratio=()
cpu_ratio=()
for ((i = 1; i <= pairs; i++)); do
  say "route: pair $i of $pairs, $n requests each"
  route 0 -n "$n" --expect geo || exit 1
  rps_0+=("$(figure rps)") p99_0+=("$(figure p99_us)") cpu_0+=("$cpu_per_req")
  route 1m -n "$n" --expect geo || exit 1
  rps_1m+=("$(figure rps)") p99_1m+=("$(figure p99_us)")
  cpu_1m+=("$cpu_per_req")
  ratio+=("$(awk -v a="${rps_1m[-1]}" -v b="${rps_0[-1]}" \
    'BEGIN { printf "%.3f", a / b }')")
  cpu_ratio+=("$(awk -v a="${cpu_0[-1]}" -v b="${cpu_1m[-1]}" \
    'BEGIN { printf "%.3f", a / b }')")
done

say "optout.set: $sets calls"
run set "$dir/1m/admin.sock" "$sets" || exit 1

per_entry=$(awk -v b="$bytes" -v c="$count" 'BEGIN { printf "%.1f", b / c }')
ratio_median=$(median "${ratio[@]}")
echo "store_build_seconds_1m: $store_seconds s"
echo "index_load_seconds_1m: $load_seconds s"
echo "index_bytes_1m: $bytes bytes"
echo "index_bytes_per_entry: $per_entry bytes"
echo "route_requests: $n requests"
echo "route_rps_0: $(median "${rps_0[@]}") req/s"
echo "route_rps_1m: $(median "${rps_1m[@]}") req/s"
echo "route_p99_us_0: $(median "${p99_0[@]}") us"
echo "route_p99_us_1m: $(median "${p99_1m[@]}") us"
echo "ratio_1m_vs_0: $ratio_median x"
echo "route_cpu_ns_0: $(median "${cpu_0[@]}") ns"
echo "route_cpu_ns_1m: $(median "${cpu_1m[@]}") ns"
echo "cpu_ratio_1m_vs_0: $(median "${cpu_ratio[@]}") x"
echo "optout_set_per_s: $(figure optout_set_per_s) calls/s"
echo "optout_set_p50_ms: $(figure optout_set_p50_ms) ms"
echo "optout_set_p99_ms: $(figure optout_set_p99_ms) ms"
say "per pair: route_rps_0 ${rps_0[*]}; route_rps_1m ${rps_1m[*]};" \
  "ratios ${ratio[*]}; cpu ratios ${cpu_ratio[*]}"
floor index_load_seconds_1m "$load_seconds" '<=' 2
floor index_bytes_per_entry "$per_entry" '<=' 64
floor ratio_1m_vs_0 "$ratio_median" '>=' 0.97
