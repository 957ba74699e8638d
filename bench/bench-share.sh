#!/bin/sh
# bench-share: what the provider share costs the route path.
# docs/benchmarks.md explains the figures.
#
# Starts four optimised geosteerd (one worker each, the real database, the
# example map) from a temporary folder: share off; share in events mode to
# share_sink, which reads and discards; share on with the provider's port
# closed (nothing listening); and, for reference, events mode with
# interval_ms 10, so that every record reaches the sink instead of most
# being dropped at the worker's ring. Only the daemon under test runs: the
# others are stopped (SIGSTOP), so their timers and queues cost nothing
# meanwhile. Each round runs loadgen against all four, in a rotated order;
# each figure is the median of its runs and each ratio the median of the
# per-round ratios to `off`. Prints `name: value unit` lines. A ratio below
# BENCH_SHARE_FLOOR is reported on standard error ("floor missed") without
# changing the exit status, since on a small shared machine one run can
# miss it by noise alone; exit status 1 when a run fails, 2 on bad
# settings.
#
# Environment:
#   BENCH_ROUNDS   rounds (default 15, at least 3)
#   BENCH_N        requests per run (default 500000)
#   BENCH_C, BENCH_P  connections and requests in flight each (8, 32)
#   BENCH_SHARE_FLOOR  smallest acceptable ratio (default 0.97)
#   GEOSTEERD, LOADGEN, SHARE_SINK, GEOSTEER  the programs (default build/)
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
geosteerd=${GEOSTEERD:-$root/build/geosteerd}
loadgen=${LOADGEN:-$root/build/loadgen}
sink=${SHARE_SINK:-$root/build/share-sink}
cli=${GEOSTEER:-$root/build/geosteer}
rounds=${BENCH_ROUNDS:-15}
requests=${BENCH_N:-500000}
conns=${BENCH_C:-8}
pipeline=${BENCH_P:-32}
floor=${BENCH_SHARE_FLOOR:-0.97}
db=$root/data/GeoLite2-City.mmdb
map=$root/examples/dcmap.yaml
start_tries=600 # tenths of a second for a daemon or the sink to start

say() {
  echo "bench-share: $*" >&2
}

case $rounds in
'' | *[!0-9]*) say "BENCH_ROUNDS must be a number"; exit 2 ;;
esac
if [ "$rounds" -lt 3 ]; then
  say "BENCH_ROUNDS must be at least 3"
  exit 2
fi
for f in "$geosteerd" "$loadgen" "$sink" "$cli" "$db" "$map"; do
  if [ ! -e "$f" ]; then
    say "$f is missing (make bench-share builds and fetches everything)"
    exit 2
  fi
done

dir=$(mktemp -d "${TMPDIR:-/tmp}/bench-share.XXXXXX")
configs="off events sink_down events_all"
sink_pid=""
pids="" # the daemons, in the order of $configs

cleanup() {
  for pid in $pids $sink_pid; do
    kill -CONT "$pid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
  done
  for pid in $pids $sink_pid; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# Waits until file $2 holds a line matching $3, while process $1 lives.
wait_for_line() {
  tries=$start_tries
  while ! grep -q "$3" "$2" 2>/dev/null; do
    if ! kill -0 "$1" 2>/dev/null || [ "$tries" -eq 0 ]; then
      return 1
    fi
    tries=$((tries - 1))
    sleep 0.1
  done
}

# Starts share_sink with its output in $dir/$1.out; sets started_pid and
# started_port.
start_sink() {
  "$sink" >"$dir/$1.out" 2>&1 &
  started_pid=$!
  if ! wait_for_line "$started_pid" "$dir/$1.out" '^port: '; then
    say "share_sink did not start:"
    cat "$dir/$1.out" >&2
    exit 1
  fi
  started_port=$(sed -n 's/^port: //p' "$dir/$1.out")
}

# Writes $dir/$1.yaml; $2 is the provider ("" for no share section), $3
# the share.interval_ms.
write_config() {
  {
    echo "listen:"
    echo "  route: [\"127.0.0.1:0\"]"
    echo "  admin: $dir/$1.sock"
    echo "geo:"
    echo "  database: $db"
    echo "  map: $map"
    echo "store:"
    echo "  path: $dir/$1.db"
    echo "workers: 1"
    if [ -n "$2" ]; then
      echo "share:"
      echo "  provider: \"$2\""
      echo "  mode: events"
      echo "  precision: country"
      echo "  interval_ms: $3"
    fi
  } >"$dir/$1.yaml"
}

# The n-th word ($1, from 1) of the rest of the arguments.
nth() {
  shift "$1"
  echo "$1"
}

# Index (from 1) of config $1 in $configs.
index_of() {
  i=1
  for c in $configs; do
    if [ "$c" = "$1" ]; then
      echo "$i"
      return
    fi
    i=$((i + 1))
  done
}

# Starts the daemon of config $1 and leaves it stopped; appends its pid.
start_daemon() {
  "$geosteerd" -c "$dir/$1.yaml" >"$dir/$1.log" 2>&1 &
  pid=$!
  pids="$pids $pid"
  if ! wait_for_line "$pid" "$dir/$1.log" 'event=started'; then
    say "geosteerd ($1) did not start:"
    cat "$dir/$1.log" >&2
    exit 1
  fi
  sed -n 's/.*event=listening kind=route addr=127\.0\.0\.1:\([0-9]*\).*/\1/p' \
    "$dir/$1.log" | head -n 1 >"$dir/$1.port"
  kill -STOP "$pid"
}

# CPU time of process $1 so far, all threads, in nanoseconds.
cpu_ns() {
  cat "/proc/$1/task/"*/schedstat | awk '{ ns += $1 } END { print ns }'
}

# One loadgen run against config $1 (continued for it); appends the rps
# to $dir/$1.rps and the daemon's CPU time per request to $dir/$1.cpu.
run() {
  # shellcheck disable=SC2086 # $pids is a list of words
  pid=$(nth "$(index_of "$1")" $pids)
  kill -CONT "$pid"
  sleep 0.2
  cpu0=$(cpu_ns "$pid")
  if ! "$loadgen" --port "$(cat "$dir/$1.port")" -c "$conns" -p "$pipeline" \
    -n "$requests" >"$dir/run.out" 2>&1; then
    say "loadgen failed against $1:"
    cat "$dir/run.out" >&2
    exit 1
  fi
  cpu1=$(cpu_ns "$pid")
  kill -STOP "$pid"
  sed -n 's/^rps: \([0-9.]*\) .*/\1/p' "$dir/run.out" >>"$dir/$1.rps"
  awk -v a="$cpu0" -v b="$cpu1" -v n="$requests" \
    'BEGIN { printf "%.1f\n", (b - a) / n }' >>"$dir/$1.cpu"
}

# Appends to $dir/$1.$2 the ratio of config $1's last figure in file
# suffix $2 to off's: rps / rps_off, or for cpu, cpu_off / cpu (so both
# are below 1 when sharing costs something).
add_ratio() {
  last=$(tail -n 1 "$dir/$1.$2")
  base=$(tail -n 1 "$dir/off.$2")
  if [ "$2" = rps ]; then
    awk -v a="$last" -v o="$base" 'BEGIN { print a / o }'
  else
    awk -v a="$last" -v o="$base" 'BEGIN { print o / a }'
  fi >>"$dir/$1.$2_ratio"
}

# Median of the numbers in file $1, one a line.
median() {
  sort -g "$1" | awk '{ v[NR] = $1 }
    END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Share counter $2 ("sent", "dropped", "queued") of config $1.
counter() {
  sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p" "$dir/$1.share"
}

# Percentage of config $1's records that reached the provider.
shared_pct() {
  awk -v s="$(counter "$1" sent)" -v d="$(counter "$1" dropped)" \
    -v q="$(counter "$1" queued)" \
    'BEGIN { t = s + d + q; printf "%.1f", t ? 100 * s / t : 0 }'
}

start_sink sink
sink_pid=$started_pid
port=$started_port
start_sink probe
down_port=$started_port
kill "$started_pid"
wait "$started_pid" || true # now nothing listens on $down_port
write_config off "" 0
write_config events "127.0.0.1:$port" 1000
write_config sink_down "127.0.0.1:$down_port" 1000
write_config events_all "127.0.0.1:$port" 10
for config in $configs; do
  start_daemon "$config"
done
say "$rounds rounds of $configs; $requests requests per run," \
  "$conns connections x $pipeline in flight"

round=0
while [ "$round" -lt "$rounds" ]; do
  case $((round % 4)) in
  0) order="off events sink_down events_all" ;;
  1) order="events sink_down events_all off" ;;
  2) order="sink_down events_all off events" ;;
  *) order="events_all off events sink_down" ;;
  esac
  for config in $order; do
    run "$config"
  done
  line="round $((round + 1)):"
  for config in $configs; do
    line="$line $config $(tail -n 1 "$dir/$config.rps")"
    add_ratio "$config" rps
    add_ratio "$config" cpu
  done
  say "$line req/s"
  round=$((round + 1))
done

# Every daemon flushes what it still holds, then reports and stops.
for pid in $pids; do
  kill -CONT "$pid"
done
sleep 1.5
for config in $configs; do
  "$cli" --json --admin "$dir/$config.sock" stats |
    sed -n 's/.*"share":{\([^}]*\)}.*/\1/p' >"$dir/$config.share"
done
for pid in $pids; do
  kill "$pid"
done
for pid in $pids; do
  if ! wait "$pid"; then
    say "a geosteerd did not exit 0"
    exit 1
  fi
done
pids=""
kill "$sink_pid"
wait "$sink_pid" || true
sink_pid=""

ratio() {
  printf '%.3f' "$(median "$dir/$1.$2_ratio")"
}

echo "route_rps_off: $(median "$dir/off.rps") req/s"
echo "route_rps_events: $(median "$dir/events.rps") req/s"
echo "route_rps_sink_down: $(median "$dir/sink_down.rps") req/s"
echo "ratio_events_vs_off: $(ratio events rps) ratio"
echo "ratio_down_vs_off: $(ratio sink_down rps) ratio"
echo "route_rps_events_all: $(median "$dir/events_all.rps") req/s"
echo "ratio_events_all_vs_off: $(ratio events_all rps) ratio"
for config in $configs; do
  echo "route_cpu_ns_$config: $(median "$dir/$config.cpu") ns"
done
echo "cpu_ratio_events_vs_off: $(ratio events cpu) ratio"
echo "cpu_ratio_down_vs_off: $(ratio sink_down cpu) ratio"
echo "cpu_ratio_events_all_vs_off: $(ratio events_all cpu) ratio"
echo "events_shared: $(shared_pct events) %"
echo "events_all_shared: $(shared_pct events_all) %"
echo "sink_received: $(sed -n 's/^sink_bytes: //p' "$dir/sink.out")"

for name in events:events sink_down:down; do
  r=$(ratio "${name%%:*}" rps)
  if awk -v r="$r" -v f="$floor" 'BEGIN { exit !(r < f) }'; then
    say "floor missed: ratio_${name#*:}_vs_off $r < $floor"
  fi
done
exit 0
