#!/usr/bin/env bash
# bench-load: geosteerd's route listener against Redis under the same
# closed-loop load; docs/benchmarks.md explains the figures.
#
# Starts redis-server and geosteerd (one worker) on free loopback ports,
# from a temporary folder that holds their config, store and logs; stores a
# 60-byte value under key k in Redis. Then for each row (C connections,
# P requests in flight each) it runs loadgen against geosteerd and Redis in
# turn, BENCH_PAIRS times (geosteerd first in odd pairs, Redis first in
# even ones), and prints the medians as `name: value unit` lines
# prefixed c<C>_p<P>_. Both servers are stopped and the folder is
# removed on every exit, failed or not. A failed run (error replies, a
# refused connection, the timeout) stops the benchmark with status 1.
#
# On a machine with two CPUs or more, each server runs on CPU 0 and loadgen
# on CPU 1 (bench/common.sh).
#
# Environment:
#   BENCH_N      requests per run, for every row (default: per row, below)
#   BENCH_PAIRS  geosteerd/Redis pairs per row (default 7)
#   BENCH_PIN    0: no pinning (default 1)
#   LOADGEN, GEOSTEERD, REDIS_SERVER  the programs (default build/ and PATH)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
loadgen=${LOADGEN:-$root/build/loadgen}
geosteerd=${GEOSTEERD:-$root/build/geosteerd}
redis_server=${REDIS_SERVER:-redis-server}
pairs=${BENCH_PAIRS:-7}
# C, P and the default requests per run, sized for a few seconds each.
rows="1:1:100000 16:1:200000 64:1:200000 50:16:2000000"
start_timeout=30 # seconds for a server to accept connections

# shellcheck source=bench/common.sh
. "$root/bench/common.sh"

dir=$(mktemp -d "${TMPDIR:-/tmp}/bench-load.XXXXXX")
redis_pid=""
geosteerd_pid=""

stop() {
  local pid
  for pid in $geosteerd_pid $redis_pid; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in $geosteerd_pid $redis_pid; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$dir"
}
trap stop EXIT
trap 'exit 1' INT TERM HUP

say() {
  echo "bench-load: $*" >&2
}

# True when something accepts TCP connections on 127.0.0.1:$1.
accepts() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# A high port that nothing listens on now. The server may still lose it to
# another process before it binds; start_redis and start_geosteerd then try
# another one.
pick_port() {
  local port
  while :; do
    port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
    if ! accepts "$port"; then
      echo "$port"
      return
    fi
  done
}

# Waits until the process $1 accepts on port $2; fails if it exits first
# or takes longer than start_timeout.
wait_accepting() {
  local pid=$1 port=$2 tries=$((start_timeout * 10))
  while ((tries-- > 0)); do
    kill -0 "$pid" 2>/dev/null || return 1
    accepts "$port" && return 0
    sleep 0.1
  done
  return 1
}

# True when the server's log $1 says another process took its port, the
# one failure that trying another port fixes.
lost_port() {
  grep -qi 'address already in use' "$1" 2>/dev/null
}

start_redis() {
  local attempt
  for ((attempt = 1; attempt <= 5; attempt++)); do
    redis_port=$(pick_port)
    "${server_cpu[@]}" "$redis_server" --port "$redis_port" --bind 127.0.0.1 --save '' \
      --appendonly no --daemonize no --dir "$dir" \
      --logfile "$dir/redis.log" &
    redis_pid=$!
    wait_accepting "$redis_pid" "$redis_port" && return 0
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
    redis_pid=""
    lost_port "$dir/redis.log" || break
  done
  say "redis-server did not start on 127.0.0.1:$redis_port:"
  tail -n 5 "$dir/redis.log" >&2 || true
  return 1
}

start_geosteerd() {
  local attempt
  for ((attempt = 1; attempt <= 5; attempt++)); do
    geosteerd_port=$(pick_port)
    cat >"$dir/geosteer.yaml" <<EOF
listen:
  route: ["127.0.0.1:$geosteerd_port"]
  admin: $dir/admin.sock
geo:
  database: $root/data/GeoLite2-City.mmdb
  map: $root/examples/dcmap.yaml
store:
  path: $dir/geosteer.db
workers: 1
EOF
    "${server_cpu[@]}" "$geosteerd" -c "$dir/geosteer.yaml" 2>"$dir/geosteerd.log" &
    geosteerd_pid=$!
    wait_accepting "$geosteerd_pid" "$geosteerd_port" && return 0
    kill "$geosteerd_pid" 2>/dev/null || true
    wait "$geosteerd_pid" 2>/dev/null || true
    geosteerd_pid=""
    lost_port "$dir/geosteerd.log" || break
  done
  say "geosteerd did not start on 127.0.0.1:$geosteerd_port:"
  tail -n 5 "$dir/geosteerd.log" >&2 || true
  return 1
}

# SET k to a 60-byte value, with redis-cli when there is one, else in RESP
# over bash's /dev/tcp.
set_value() {
  local value reply
  value=$(printf '%060d' 0)
  if command -v redis-cli >/dev/null 2>&1; then
    reply=$(redis-cli -h 127.0.0.1 -p "$redis_port" SET k "$value")
  else
    exec 3<>"/dev/tcp/127.0.0.1/$redis_port"
    # shellcheck disable=SC2016 # the $ are RESP, not the shell's
    printf '*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$60\r\n%s\r\n' "$value" >&3
    IFS= read -r reply <&3
    exec 3<&-
    reply=${reply%$'\r'}
    reply=${reply#+}
  fi
  if [ "$reply" != OK ]; then
    say "SET k failed: $reply"
    return 1
  fi
}

# Runs loadgen; its output lines land in $dir/out. $1: mode, $2: port,
# $3: C, $4: P, $5: N.
run_loadgen() {
  if ! "${client_cpu[@]}" "$loadgen" --mode "$1" --port "$2" -c "$3" -p "$4" -n "$5" \
    >"$dir/out" 2>"$dir/err"; then
    say "loadgen --mode $1 --port $2 -c $3 -p $4 -n $5 failed:"
    cat "$dir/out" "$dir/err" >&2
    return 1
  fi
}

# The value of the line named $1 in $dir/out.
figure() {
  awk -v name="$1:" '$1 == name { print $2 }' "$dir/out"
}

# One run against $1 (geosteerd or redis), its figures appended to the
# row's arrays: rps, p50, p99, p999 and cpu (loadgen's own) for geosteerd,
# the same with r_ for Redis. $2: C, $3: P, $4: N.
run_server() {
  local mode=msgpack port=$geosteerd_port pre=""
  if [ "$1" = redis ]; then
    mode=resp port=$redis_port pre=r_
  fi
  run_loadgen "$mode" "$port" "$2" "$3" "$4" || return 1
  local -n to_rps=${pre}rps to_p50=${pre}p50 to_p99=${pre}p99 to_p999=${pre}p999
  local -n to_cpu=${pre}cpu
  to_rps+=("$(figure rps)") to_p50+=("$(figure p50_us)")
  to_p99+=("$(figure p99_us)") to_p999+=("$(figure p999_us)")
  to_cpu+=("$(figure client_cpu)")
}

# Warns when loadgen was busy nearly all the time in $1's runs (median
# $2 %): then the client, not only the server, set the pace and the tail.
client_bound() {
  if awk -v c="$2" 'BEGIN { exit !(c >= 95) }'; then
    say "$name: loadgen used $2 % of its CPU in $1's runs:" \
      "the row measures the client as much as the server"
  fi
}

if [ ! -x "$loadgen" ] || [ ! -x "$geosteerd" ]; then
  say "needs $loadgen and $geosteerd; run 'make bench-load'"
  exit 1
fi
start_redis || exit 1
set_value || exit 1
start_geosteerd || exit 1
say "redis-server on 127.0.0.1:$redis_port, geosteerd on" \
  "127.0.0.1:$geosteerd_port$(pinned_text loadgen)"

for row in $rows; do
  IFS=: read -r c p n <<<"$row"
  n=${BENCH_N:-$n}
  name="c${c}_p${p}"
  rps=() p50=() p99=() p999=() cpu=() r_rps=() r_p50=() r_p99=() r_p999=()
  r_cpu=()
  ratio=() p99_ratio=()
  for ((i = 1; i <= pairs; i++)); do
    say "$name: pair $i of $pairs, $n requests each"
    # Odd pairs run geosteerd first, even pairs Redis: neither server
    # always runs on the heels of the other.
    order="geosteerd redis"
    ((i % 2)) || order="redis geosteerd"
    for server in $order; do
      run_server "$server" "$c" "$p" "$n" || exit 1
    done
    ratio+=("$(awk -v a="${rps[-1]}" -v b="${r_rps[-1]}" \
      'BEGIN { printf "%.3f", a / b }')")
    p99_ratio+=("$(awk -v a="${p99[-1]}" -v b="${r_p99[-1]}" \
      'BEGIN { printf "%.3f", a / b }')")
  done
  say "$name: per pair: rps ${rps[*]}; redis_rps ${r_rps[*]};" \
    "p99_us ${p99[*]}; redis_p99_us ${r_p99[*]};" \
    "ratios ${ratio[*]}; p99 ratios ${p99_ratio[*]};" \
    "loadgen cpu % ${cpu[*]}; with redis ${r_cpu[*]}"
  echo "${name}_requests: $n requests"
  echo "${name}_rps: $(median "${rps[@]}") req/s"
  echo "${name}_p50_us: $(median "${p50[@]}") us"
  echo "${name}_p99_us: $(median "${p99[@]}") us"
  echo "${name}_p999_us: $(median "${p999[@]}") us"
  echo "${name}_redis_rps: $(median "${r_rps[@]}") req/s"
  echo "${name}_redis_p50_us: $(median "${r_p50[@]}") us"
  echo "${name}_redis_p99_us: $(median "${r_p99[@]}") us"
  echo "${name}_redis_p999_us: $(median "${r_p999[@]}") us"
  echo "${name}_ratio_vs_redis: $(median "${ratio[@]}") x"
  echo "${name}_p99_vs_redis: $(median "${p99_ratio[@]}") x"
  cpu_median=$(median "${cpu[@]}") r_cpu_median=$(median "${r_cpu[@]}")
  echo "${name}_client_cpu: $cpu_median %"
  echo "${name}_redis_client_cpu: $r_cpu_median %"
  client_bound geosteerd "$cpu_median"
  client_bound Redis "$r_cpu_median"
done
