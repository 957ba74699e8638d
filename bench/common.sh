# shellcheck shell=bash
# common.sh: sourced by bench-load.sh and bench-optout.sh.

# The median of the numbers given as arguments.
median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
    END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Commands that pin the servers under test to CPU 0 and the load generator
# to CPU 1 (taskset), on a machine with two CPUs or more unless BENCH_PIN
# is 0; empty otherwise. Left to the scheduler, a server swung between two
# speeds about a third apart from one run to the next, depending on where
# it and the client landed.
server_cpu=() client_cpu=()
# shellcheck disable=SC2034 # used by the scripts that source this
if [ "${BENCH_PIN:-1}" != 0 ] && command -v taskset >/dev/null 2>&1 &&
  [ "$(nproc)" -ge 2 ]; then
  server_cpu=(taskset -c 0) client_cpu=(taskset -c 1)
fi

# ", servers on CPU 0, $1 on CPU 1" when pinned, for a start message.
pinned_text() {
  if [ ${#server_cpu[@]} -gt 0 ]; then
    echo ", servers on CPU 0, $1 on CPU 1"
  fi
}
