#!/usr/bin/env bash
# Same-run A/B of proxy builds, the method of BENCHMARKS.md's optimisation log:
#
#   scripts/bench-ab.sh NAME='[VAR=value ...] COMMAND with {PORT} {ADMIN} {UP}' ... [nginx=x]
#
# e.g. two sidecar builds:
#   S='--listen 127.0.0.1:{PORT} --admin-listen 127.0.0.1:{ADMIN} --upstream http://{UP}/v1 --api-key-file /nonexistent'
#   REPS=5 scripts/bench-ab.sh "base=/tmp/sidecar-base $S" "new=target/release/holysheep-sidecar $S"
# The metering share: build a copy of the tree with `git apply bench/patches/no-metering.patch`
# and compare the two binaries the same way.
#
# One fake upstream (target/release/fake-upstream, or $T/fake-upstream) and every target on
# CPU 1, oha on CPU 0. Per repetition and target, interleaved: 1 s warm-up, DUR s at CONNS
# connections (proxy CPU per request from /proc utime+stime, user part separately), RDUR s
# at 50 req/s (p50). Prints medians. The special name `nginx` starts the bench script's
# nginx configuration. Every other target runs with the sidecar image's GLIBC_TUNABLES
# unless its leading VAR=value words set it (`GLIBC_TUNABLES= COMMAND`: glibc's defaults).
# OPEN=N first sends N streamed requests at once to each target, so its upstream pool holds
# about N connections, as after a burst of long requests (the sidecar's pool keeps them
# for 90 s of idleness). Knobs: REPS (3), DUR (4), RDUR (6), CONNS (16), OPEN (0),
# T (target/release), LOGLVL (warn).
# Needs oha, jq, bc, taskset, curl (scripts/bench-proxy.sh installs them).
set -euo pipefail
REPS=${REPS:-3}; DUR=${DUR:-4}; RDUR=${RDUR:-6}; CONNS=${CONNS:-16}
OUT=$(mktemp -d /tmp/bench-ab.XXXX)
# shellcheck source=scripts/bench-common.sh
source "$(dirname "$0")/bench-common.sh"
stat_field() { # stat_field FIELD PID...: sum of /proc/PID/stat fields (0-based after the comm)
  local field=$1 t=0 r p
  shift
  for p in "$@"; do
    r=$(<"/proc/$p/stat"); r=${r##*) }
    read -r -a f <<<"$r"
    t=$((t + f[field]))
  done
  echo "$t"
}
ticks() { echo $(($(stat_field 11 "$@") + $(stat_field 12 "$@"))); }
uticks() { stat_field 11 "$@"; }

taskset -c 1 "$T/fake-upstream" --addr-file "$OUT/up.addr" --chunk-delay 1ms --stream-words 4 \
  --max-runtime 30m >"$OUT/up.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [[ -s $OUT/up.addr ]] && break; sleep 0.05; done
UP=$(<"$OUT/up.addr")
declare -A URL PID
NAMES=(direct)
URL[direct]=http://$UP/v1/chat/completions
for spec in "$@"; do
  n=${spec%%=*}; c=${spec#*=}; p=$(port); a=$(port)
  if [[ $n == nginx ]]; then
    d=$OUT/nginx; mkdir -p "$d/tmp"
    cat >"$d/nginx.conf" <<NG
worker_processes 1; daemon off; pid $d/nginx.pid; error_log $d/error.log warn;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $d/tmp/body; proxy_temp_path $d/tmp/proxy; fastcgi_temp_path $d/tmp/f; uwsgi_temp_path $d/tmp/u; scgi_temp_path $d/tmp/s;
  upstream fake { server $UP; keepalive 128; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$p; keepalive_requests 1000000;
    location /v1/ { proxy_pass http://fake; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Authorization "Bearer bench-key"; proxy_buffering off; } } }
NG
    taskset -c 1 nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log" >"$d/out.log" 2>&1 &
    m=$!; PIDS+=("$m"); sleep 0.5; PID[$n]="$m $(pgrep -P "$m" | head -1)"
  else
    c=${c//\{PORT\}/$p}; c=${c//\{ADMIN\}/$a}; c=${c//\{UP\}/$UP}
    GLIBC_TUNABLES=$IMAGE_GLIBC_TUNABLES HOLYSHEEP_API_KEY=bench-key RUST_LOG=${LOGLVL:-warn} taskset -c 1 bash -c "exec env $c" >"$OUT/$n.log" 2>&1 &
    PID[$n]=$!; PIDS+=($!)
  fi
  URL[$n]=http://127.0.0.1:$p/v1/chat/completions; NAMES+=("$n")
  for _ in $(seq 200); do
    curl -fsS -o /dev/null -X POST -H 'content-type: application/json' -d "$BODY" "${URL[$n]}" 2>/dev/null && break
    sleep 0.05
  done
  if [[ ${OPEN:-0} -gt 0 ]]; then
    stream=${BODY/\"messages\"/\"stream\":true,\"messages\"}
    taskset -c 0 oha --no-tui -n "$OPEN" -c "$OPEN" -m POST -T application/json -d "$stream" "${URL[$n]}" >/dev/null
  fi
done
oh() { taskset -c 0 oha --no-tui --output-format json -m POST -T application/json -H "Authorization: Bearer x" -d "$BODY" "$@"; }
for r in $(seq "$REPS"); do
  for n in "${NAMES[@]}"; do
    u=${URL[$n]}
    oh -z 1s -c "$CONNS" "$u" >/dev/null
    cpu=0; ucpu=0; reqs=0
    if [[ $n != direct ]]; then
      read -r -a pp <<<"${PID[$n]}"
      b=$(ticks "${pp[@]}"); bu=$(uticks "${pp[@]}")
      oh -z "${DUR}s" -c "$CONNS" "$u" >"$OUT/$n-c$CONNS-$r.json"
      a=$(ticks "${pp[@]}"); au=$(uticks "${pp[@]}")
      reqs=$(jq '[.statusCodeDistribution[]]|add' "$OUT/$n-c$CONNS-$r.json")
      hz=$(getconf CLK_TCK)
      cpu=$(echo "($a-$b)*1000000/$hz/$reqs" | bc -l); ucpu=$(echo "($au-$bu)*1000000/$hz/$reqs" | bc -l)
    fi
    oh -z "${RDUR}s" -q 50 -c 4 "$u" >"$OUT/$n-q50-$r.json"
    p50=$(jq '.latencyPercentiles.p50*1e6' "$OUT/$n-q50-$r.json")
    printf '%s rep%s cpu_us=%.1f user_us=%.1f reqs=%s p50_us=%.0f\n' "$n" "$r" "$cpu" "$ucpu" "$reqs" "$p50" | tee -a "$OUT/res.txt"
  done
done
echo "--- medians ($OUT)"
med() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
for n in "${NAMES[@]}"; do
  c=$(grep "^$n " "$OUT/res.txt" | sed 's/.*cpu_us=\([0-9.]*\).*/\1/' | med)
  u=$(grep "^$n " "$OUT/res.txt" | sed 's/.*user_us=\([0-9.]*\).*/\1/' | med)
  l=$(grep "^$n " "$OUT/res.txt" | sed 's/.*p50_us=\([0-9]*\).*/\1/' | med)
  echo "$n cpu_us/req=$c user_us/req=$u p50_us=$l"
done
