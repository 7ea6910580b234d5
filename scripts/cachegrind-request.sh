#!/usr/bin/env bash
# Instructions and cache misses per proxied request, under valgrind's cache simulation:
# the method of BENCHMARKS.md's "Where the rest of the gap is". Counts, unlike CPU time on
# a shared machine, repeat between runs, so small changes can be told apart.
#
#   scripts/cachegrind-request.sh NAME='[VAR=value ...] COMMAND with {PORT} {ADMIN} {UP}' ...
#
# e.g. two sidecar builds:
#   S='--listen 127.0.0.1:{PORT} --admin-listen 127.0.0.1:{ADMIN} --upstream http://{UP}/v1 --api-key-file /nonexistent'
#   scripts/cachegrind-request.sh "base=/tmp/sidecar-base $S" "new=target/release/holysheep-sidecar $S"
#
# Each target runs twice under `valgrind --tool=cachegrind --cache-sim=yes` in front of one
# fake upstream (target/release/fake-upstream, or $T/fake-upstream): N requests of the
# benchmark's chat body, then 3N. The difference over 2N is one request, with start-up
# and shutdown cancelled out. One connection (C=1, the default) repeats best; at 16
# connections the instruction count moves by up to 1.5 k between runs of one binary with
# the number of requests served per wake-up. Instruction counts also carry work done
# once a second (hyper's Date header, timers), which a short run spreads over few
# requests: keep N at 1000 or more. The cache misses are the simulated first
# level (valgrind's default geometry), the lever for code whose per-request footprint is
# larger than the instruction cache. Every target runs with the sidecar image's
# GLIBC_TUNABLES unless its leading VAR=value words set it (`GLIBC_TUNABLES= COMMAND`:
# glibc's defaults). LL=size,assoc,line sets the simulated last level, e.g.
# LL=1048576,16,64 for this machine's 1 MiB second level per core: what a request touches
# beyond it is what more connections can push out of the cache. Knobs: N (1000), C (1),
# T (target/release), LL (valgrind's default: the host's last level).
# Needs valgrind (apt-get install valgrind), oha and curl (scripts/bench-proxy.sh
# installs them).
set -euo pipefail
N=${N:-1000}; C=${C:-1}
OUT=$(mktemp -d /tmp/cachegrind-request.XXXX)
# shellcheck source=scripts/bench-common.sh
source "$(dirname "$0")/bench-common.sh"
command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install valgrind" >&2; exit 1; }

"$T/fake-upstream" --addr-file "$OUT/up.addr" --max-runtime 60m >"$OUT/up.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [[ -s $OUT/up.addr ]] && break; sleep 0.05; done
UP=$(<"$OUT/up.addr")

# totals NAME COMMAND REQUESTS: the PROGRAM TOTALS line of one run, as plain numbers.
totals() {
  local n=$1 c=$2 reqs=$3 p a url vp argv
  p=$(port); a=$(port)
  c=${c//\{PORT\}/$p}; c=${c//\{ADMIN\}/$a}; c=${c//\{UP\}/$UP}
  url=http://127.0.0.1:$p/v1/chat/completions
  # Split on spaces, no shell in between: valgrind must start the proxy itself. Leading
  # VAR=value words are the proxy's environment.
  read -r -a argv <<<"$c"
  local envs=()
  while [[ ${argv[0]} =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; do envs+=("${argv[0]}"); argv=("${argv[@]:1}"); done
  GLIBC_TUNABLES=$IMAGE_GLIBC_TUNABLES HOLYSHEEP_API_KEY=bench-key RUST_LOG=warn env "${envs[@]}" \
    valgrind --tool=cachegrind --cache-sim=yes ${LL:+--LL=$LL} \
    --cachegrind-out-file="$OUT/$n.$reqs.out" "${argv[@]}" >"$OUT/$n.$reqs.log" 2>&1 &
  vp=$!
  for _ in $(seq 300); do
    curl -fsS -o /dev/null -X POST -H 'content-type: application/json' -d "$BODY" "$url" 2>/dev/null && break
    sleep 0.1
  done
  oha --no-tui -n "$reqs" -c "$C" -m POST -T application/json -d "$BODY" "$url" >/dev/null
  kill -TERM "$vp"; wait "$vp" || true
  # awk reads to the end: a reader that quits early would fail the pipe (pipefail).
  cg_annotate "$OUT/$n.$reqs.out" | awk '/PROGRAM TOTALS/ && !seen {seen = 1; print}' |
    sed 's/([^)]*)//g; s/,//g; s/PROGRAM TOTALS//'
}

echo "per request (3N - N over 2N; N=$N, $C connection(s); raw files in $OUT):"
for spec in "$@"; do
  n=${spec%%=*}; c=${spec#*=}
  small=$(totals "$n" "$c" "$N"); large=$(totals "$n" "$c" $((3 * N)))
  # Columns: Ir I1mr ILmr Dr D1mr DLmr Dw D1mw DLmw.
  paste <(tr -s ' ' '\n' <<<"$small" | grep .) <(tr -s ' ' '\n' <<<"$large" | grep .) |
    awk -v n="$n" -v d=$((2 * N)) '{v[NR] = ($2 - $1) / d}
      END {printf "%s instructions=%.0f L1i_misses=%.0f L1d_misses=%.0f (read %.0f, write %.0f) LL_misses=%.0f (instr %.0f, data %.0f)\n",
        n, v[1], v[2], v[5] + v[8], v[5], v[8], v[3] + v[6] + v[9], v[3], v[6] + v[9]}'
done
