#!/usr/bin/env bash
# The proxy benchmark of BENCHMARKS.md, in one command: scripts/bench-proxy.sh
#
# Against ONE fake OpenAI upstream (bench/, fake-upstream) it measures, in the same run,
# the targets (BENCH_TARGETS, in this order by default):
#   direct   calls to the upstream itself (the physical limit);
#   relay    mini-proxy --current-thread --mode relay: tokio copying bytes to a per-client
#            upstream connection, no HTTP at all (the floor of tokio's I/O). It does NOT
#            replace the Authorization header, so it does less than the others;
#   nginx    nginx as a plain keep-alive reverse proxy (the practical floor for one HTTP hop);
#   lean     mini-proxy --current-thread --mode affine: hyper's conn::http1 on both sides,
#            one upstream connection per client connection (the least work hyper can do);
#   hyper    mini-proxy in its default pooled mode ("bare hyper": the sidecar's HTTP stack
#            with none of its own work, to tell the stack's cost from the sidecar's);
#   sidecar  holysheep-sidecar.
# and the HTTPS production path, against the fake upstream's TLS listener (a private CA
# from holysheep-certs written to the run's out dir, ALPN h2 and http/1.1):
#   direct-tls     calls to the TLS listener itself (oha trusting the CA; no TTFB probe:
#                  ttfb-probe speaks plain HTTP only);
#   nginx-tls      nginx with proxy_pass https:// to a keep-alive upstream block, session
#                  reuse, verification against the CA, SNI, HTTP/1.1 upstream;
#   sidecar-tls    holysheep-sidecar --upstream https://localhost:PORT/v1 --upstream-ca-file;
#   sidecar-proxy  the same sidecar tunnelling through tinyproxy (--egress-proxy, CONNECT);
#                  its proxy CPU is the sidecar's alone, tinyproxy's is not counted.
# relay and lean are the floors of the sidecar's prescribed stack (tokio, hyper) on the
# machine at hand. The sidecar and mini-proxy run with the sidecar image's GLIBC_TUNABLES
# (its Dockerfile's ENV line). It measures
# req/s and p50/p99 at 16 and 64 connections, p50/p99 at a fixed 50 req/s, proxy CPU time
# per request (utime+stime from /proc; schedstat ns at 50 req/s), streamed time to first
# byte (ttfb-probe), and RSS idle and after load. Every measurement is repeated BENCH_REPS
# times, the targets interleaved within each repetition so drift hits them all alike; the
# report shows medians.
#
# Installs what it lacks (apt-get: nginx-light, curl, jq, iproute2, tinyproxy; cargo: oha), builds in release mode,
# binds only 127.0.0.1, and stops everything it started on exit. Results and the report go
# to bench/out/<run id>/ (git-ignored). It is not part of the test suite.
#
# Knobs (environment): BENCH_DURATION (s per load run, 5), BENCH_RATE_DURATION (s at
# 50 req/s, 8), BENCH_REPS (3), BENCH_TTFB_REQUESTS (200), BENCH_TARGETS
# ("direct relay nginx lean hyper sidecar direct-tls nginx-tls sidecar-tls sidecar-proxy";
# any subset, the report shows "–" for the others), BENCH_TLS_HTTP1 (1: the TLS listener
# offers only http/1.1 by ALPN; 0, the default: h2 and http/1.1), BENCH_PIN (1: load generators on CPU 0, servers on CPU 1; 0: no pinning), BENCH_SIDECAR_LOG (RUST_LOG for the sidecar, "warn": nginx runs with
# access_log off, so per-request logging is off on both sides), BENCH_PGO (1: the sidecar
# is the shipped, profile-guided build of scripts/pgo-build.sh; 0: a plain release build),
# PGO_PROFDATA (a kept profile for that build instead of a new training run: see
# scripts/pgo-build.sh).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${BENCH_DURATION:-5}
RATE_DURATION=${BENCH_RATE_DURATION:-8}
REPS=${BENCH_REPS:-3}
TTFB_REQUESTS=${BENCH_TTFB_REQUESTS:-200}
TARGETS=${BENCH_TARGETS:-direct relay nginx lean hyper sidecar direct-tls nginx-tls sidecar-tls sidecar-proxy}
TLS_HTTP1=${BENCH_TLS_HTTP1:-0}
PIN=${BENCH_PIN:-1}
SIDECAR_LOG=${BENCH_SIDECAR_LOG:-warn}
PGO=${BENCH_PGO:-1}
WARMUP=2
# Release binaries: cargo's target dir (CARGO_TARGET_DIR when set, as cargo itself does).
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
# The sidecar under test: the shipped build (profile-guided, scripts/pgo-build.sh) unless
# BENCH_PGO=0.
if [[ $PGO == 1 ]]; then
  SIDECAR_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/pgo/release/holysheep-sidecar
else
  SIDECAR_BIN=$BIN/holysheep-sidecar
fi
# The sidecar image's allocator setting (its Dockerfile's ENV GLIBC_TUNABLES), so the sidecar
# runs here as it does in production. mini-proxy gets it too: the lean floor then differs
# from the sidecar by the sidecar's own work, not by allocator settings.
IMAGE_GLIBC_TUNABLES=$(sed -n 's/^ENV GLIBC_TUNABLES=//p' Dockerfile)
RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/bench/out/$RUN_ID
BODY='{"model":"gpt-4.1","messages":[{"role":"user","content":"Say hello."}]}'

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
# wants TARGET: true when TARGET is among BENCH_TARGETS.
wants() { [[ " $TARGETS " == *" $1 "* ]]; }
wants_tls() { wants direct-tls || wants nginx-tls || wants sidecar-tls || wants sidecar-proxy; }

# ---------------------------------------------------------------- tools
ensure_tools() {
  local missing=()
  command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
  command -v curl >/dev/null || missing+=(curl)
  command -v jq >/dev/null || missing+=(jq)
  command -v taskset >/dev/null || missing+=(util-linux)
  command -v ss >/dev/null || missing+=(iproute2)
  if wants sidecar-proxy; then
    command -v tinyproxy >/dev/null || [[ -x /usr/bin/tinyproxy ]] || missing+=(tinyproxy)
  fi
  if ((${#missing[@]})); then
    log "installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # Debian's nginx package starts a system nginx on :80 where services run; it is not ours
  # to stop and it does not disturb us (we use our own prefix and ports).
  export PATH=$HOME/.cargo/bin:/usr/sbin:$PATH
  if ! command -v oha >/dev/null; then
    log "installing oha with cargo (a few minutes, once)"
    cargo install oha --locked --quiet
  fi
}

# ---------------------------------------------------------------- helpers
# A port no socket uses, below the kernel's ephemeral range: a port in that range can be
# the local end of an outgoing connection (the load generator's, a proxy's upstream
# ones), which nobody listens on yet a server cannot bind (seen: tinyproxy failed to
# start). The benchmark is no test: the small window between this check and the
# server's bind is acceptable, and a failed start is reported, not ignored.
free_port() {
  local low port
  read -r low _ </proc/sys/net/ipv4/ip_local_port_range
  ((low > 11000)) || die "the ephemeral port range starts at $low: no room below it"
  for _ in $(seq 1 50); do
    port=$((10000 + RANDOM % (low - 10000)))
    if [[ -z $(ss -Htan "( sport = :$port )") ]]; then
      echo "$port"
      return
    fi
  done
  die "no free port found"
}

# wait_until SECONDS CMD...: polls CMD every 50 ms until it succeeds, bounded.
wait_until() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.05
  done
}

# utime+stime in clock ticks of the processes given (fields 14 and 15 of /proc/PID/stat,
# counted after the ")" that closes the command name, which may contain spaces).
cpu_ticks() {
  local total=0 pid rest
  for pid in "$@"; do
    rest=$(<"/proc/$pid/stat")
    rest=${rest##*) }
    read -r -a f <<<"$rest"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}

# Nanoseconds on CPU of all threads of the processes given (first field of
# /proc/PID/task/TID/schedstat): fine enough for the light 50 req/s run, where clock ticks
# are too coarse. Threads that exit take their time with them; the servers here keep theirs.
cpu_ns() {
  local total=0 pid f run
  for pid in "$@"; do
    for f in /proc/"$pid"/task/*/schedstat; do
      read -r run _ <"$f"
      total=$((total + run))
    done
  done
  echo "$total"
}

# "VmRSS VmHWM" in KiB summed over the processes given.
mem_kib() {
  local rss=0 hwm=0 pid
  for pid in "$@"; do
    rss=$((rss + $(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")))
    hwm=$((hwm + $(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")))
  done
  echo "$rss $hwm"
}

if [[ $PIN == 1 ]]; then
  CLIENT=(taskset -c 0)
  SERVER=(taskset -c 1)
  PINNING="load generator and probe on CPU 0, upstream and proxy on CPU 1"
else
  CLIENT=()
  SERVER=()
  PINNING="none"
fi

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# ---------------------------------------------------------------- servers
# One fake upstream process serves both listeners, so its CPU is counted alike for the
# plain and the TLS targets. The TLS listener's certificate names localhost; its CA is
# $OUT/tls/ca.crt.
start_upstream() {
  local -a tls=()
  rm -f "$OUT/upstream.addr" "$OUT/upstream-tls.addr"
  if wants_tls; then
    tls=(--tls-dir "$OUT/tls" --tls-addr-file "$OUT/upstream-tls.addr")
    [[ $TLS_HTTP1 == 1 ]] && tls+=(--tls-http1-only)
  fi
  "${SERVER[@]}" "$BIN/fake-upstream" --addr-file "$OUT/upstream.addr" \
    --chunk-delay 1ms --stream-words 4 --max-runtime 30m "${tls[@]}" >"$OUT/upstream.log" 2>&1 &
  UPSTREAM_PID=$!
  PIDS+=("$UPSTREAM_PID")
  wait_until 10 test -s "$OUT/upstream.addr" || die "fake-upstream did not start: $(cat "$OUT/upstream.log")"
  UPSTREAM=$(<"$OUT/upstream.addr")
  log "fake upstream on $UPSTREAM (pid $UPSTREAM_PID)"
  if wants_tls; then
    wait_until 10 test -s "$OUT/upstream-tls.addr" || die "fake-upstream has no TLS listener: $(cat "$OUT/upstream.log")"
    UPSTREAM_TLS_PORT=$(<"$OUT/upstream-tls.addr")
    UPSTREAM_TLS_PORT=${UPSTREAM_TLS_PORT##*:}
    UPSTREAM_TLS_URL=https://localhost:$UPSTREAM_TLS_PORT/v1
    CA_FILE=$OUT/tls/ca.crt
    log "fake upstream TLS listener at $UPSTREAM_TLS_URL (CA $CA_FILE)"
  fi
}

# start_nginx_instance NAME SERVERS LOCATION: one nginx under $OUT/NAME whose upstream
# block `fake` holds SERVERS with keep-alive, LOCATION being the proxy_pass line and its
# options; sets INSTANCE_PID, INSTANCE_WORKER, INSTANCE_URL.
start_nginx_instance() {
  local name=$1 servers=$2 location=$3 dir=$OUT/$1 port
  port=$(free_port)
  mkdir -p "$dir/tmp"
  cat >"$dir/nginx.conf" <<EOF
# Keep-alive reverse proxy: the practical floor for one HTTP hop.
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  upstream fake {
    $servers
    keepalive 128;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$port;
    keepalive_requests 1000000;
    location /v1/ {
      $location
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # Same header work as the sidecar: replace the client's key with ours.
      proxy_set_header Authorization "Bearer bench-key";
      proxy_buffering off;
    }
  }
}
EOF
  "${SERVER[@]}" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/stdout.log" 2>&1 &
  INSTANCE_PID=$!
  PIDS+=("$INSTANCE_PID")
  INSTANCE_URL=http://127.0.0.1:$port/v1/chat/completions
  wait_until 10 curl -fsS "http://127.0.0.1:$port/v1/models" || die "$name did not start: $(cat "$dir/error.log")"
  INSTANCE_WORKER=$(pgrep -P "$INSTANCE_PID" | head -1)
  [[ -n $INSTANCE_WORKER ]] || die "$name has no worker process"
  log "$name on 127.0.0.1:$port (master $INSTANCE_PID, worker $INSTANCE_WORKER)"
}

start_nginx() {
  start_nginx_instance nginx "server $UPSTREAM;" "proxy_pass http://fake;"
  NGINX_PID=$INSTANCE_PID NGINX_WORKER=$INSTANCE_WORKER NGINX_URL=$INSTANCE_URL
}

# The upstream is dialled by address (a `localhost` server line would also try ::1, where
# nothing listens); SNI and verification use the certificate's name.
start_nginx_tls() {
  start_nginx_instance nginx-tls "server 127.0.0.1:$UPSTREAM_TLS_PORT;" "proxy_pass https://fake;
      proxy_ssl_server_name on;
      proxy_ssl_name localhost;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $CA_FILE;
      proxy_ssl_session_reuse on;"
  NGINX_TLS_PID=$INSTANCE_PID NGINX_TLS_WORKER=$INSTANCE_WORKER NGINX_TLS_URL=$INSTANCE_URL
}

# start_mini NAME LABEL mini-proxy-args...: starts one mini-proxy and sets MINI_PID and
# MINI_URL. Readiness is a GET /v1/models through it: every mode forwards it to the fake
# upstream (relay included, as bytes), so an answer proves the whole path is up.
start_mini() {
  local name=$1 label=$2 port
  shift 2
  port=$(free_port)
  GLIBC_TUNABLES=$IMAGE_GLIBC_TUNABLES "${SERVER[@]}" "$BIN/mini-proxy" --listen "127.0.0.1:$port" \
    --upstream "$UPSTREAM" "$@" >"$OUT/mini-proxy-$name.log" 2>&1 &
  MINI_PID=$!
  PIDS+=("$MINI_PID")
  MINI_URL=http://127.0.0.1:$port/v1/chat/completions
  wait_until 10 curl -fsS "http://127.0.0.1:$port/v1/models" || die "mini-proxy ($name) did not start: $(cat "$OUT/mini-proxy-$name.log")"
  log "mini-proxy ($label) on 127.0.0.1:$port (pid $MINI_PID)"
}

start_hyper() {
  start_mini hyper "bare hyper, pooled"
  HYPER_PID=$MINI_PID HYPER_URL=$MINI_URL
}

# No HTTP: the client's Authorization header reaches the upstream unchanged.
start_relay() {
  start_mini relay "tokio relay, no HTTP" --current-thread --mode relay
  RELAY_PID=$MINI_PID RELAY_URL=$MINI_URL
}

start_lean() {
  start_mini lean "lean hyper, affine" --current-thread --mode affine
  LEAN_PID=$MINI_PID LEAN_URL=$MINI_URL
}

# start_sidecar_instance NAME sidecar-args...: one holysheep-sidecar logging to
# $OUT/NAME.log; sets INSTANCE_PID, INSTANCE_URL, INSTANCE_ADMIN. Its idle memory is taken
# once it is ready, before the one request that proves the upstream path works.
start_sidecar_instance() {
  local name=$1 port admin
  shift
  port=$(free_port)
  admin=$(free_port)
  [[ $port != "$admin" ]] || admin=$(free_port)
  # The key comes from the environment: the key file named here does not exist.
  GLIBC_TUNABLES=$IMAGE_GLIBC_TUNABLES HOLYSHEEP_API_KEY=bench-key RUST_LOG=$SIDECAR_LOG \
    "${SERVER[@]}" "$SIDECAR_BIN" \
    --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
    --api-key-file "$OUT/no-such-key-file" "$@" \
    >"$OUT/$name.log" 2>&1 &
  INSTANCE_PID=$!
  PIDS+=("$INSTANCE_PID")
  INSTANCE_URL=http://127.0.0.1:$port/v1/chat/completions
  INSTANCE_ADMIN=http://127.0.0.1:$admin
  wait_until 10 curl -fsS "$INSTANCE_ADMIN/readyz" || die "$name not ready: $(tail -5 "$OUT/$name.log")"
  echo "$name idle 1 $(mem_kib "$INSTANCE_PID")" >>"$OUT/rss.tsv"
  # Ready means the key is loaded, not that the upstream path works: one request proves it.
  curl -fsS -o /dev/null -H 'Content-Type: application/json' -d "$BODY" "$INSTANCE_URL" \
    || die "$name does not reach the upstream: $(tail -5 "$OUT/$name.log")"
  log "$name on 127.0.0.1:$port, admin $admin (pid $INSTANCE_PID)"
}

start_sidecar() {
  start_sidecar_instance sidecar --upstream "http://$UPSTREAM/v1"
  SIDECAR_PID=$INSTANCE_PID SIDECAR_URL=$INSTANCE_URL SIDECAR_ADMIN=$INSTANCE_ADMIN
}

start_sidecar_tls() {
  start_sidecar_instance sidecar-tls --upstream "$UPSTREAM_TLS_URL" --upstream-ca-file "$CA_FILE"
  SIDECAR_TLS_PID=$INSTANCE_PID SIDECAR_TLS_URL=$INSTANCE_URL
}

# tinyproxy in the foreground on loopback, logging to stdout (so it needs no writable log
# path after dropping to nobody when run as root), one line per CONNECT.
start_tinyproxy() {
  local dir=$OUT/tinyproxy port
  port=$(free_port)
  mkdir -p "$dir"
  cat >"$dir/tinyproxy.conf" <<EOF
User nobody
Group nogroup
Port $port
Listen 127.0.0.1
Timeout 600
PidFile "$dir/tinyproxy.pid"
LogLevel Connect
MaxClients 1024
Allow 127.0.0.1
EOF
  "${SERVER[@]}" tinyproxy -d -c "$dir/tinyproxy.conf" >"$dir/tinyproxy.log" 2>&1 &
  TINYPROXY_PID=$!
  PIDS+=("$TINYPROXY_PID")
  TINYPROXY_URL=http://127.0.0.1:$port
  # Any HTTP answer (tinyproxy's own error page) means it listens; at LogLevel Connect it
  # does not log its readiness.
  wait_until 10 curl -sS -o /dev/null "$TINYPROXY_URL/" \
    || die "tinyproxy did not start: $(tail -5 "$dir/tinyproxy.log")"
  log "tinyproxy on 127.0.0.1:$port (pid $TINYPROXY_PID)"
}

# The check after the start proves the tunnel: tinyproxy logged the sidecar's CONNECT.
start_sidecar_proxy() {
  start_tinyproxy
  start_sidecar_instance sidecar-proxy --upstream "$UPSTREAM_TLS_URL" --upstream-ca-file "$CA_FILE" \
    --egress-proxy "$TINYPROXY_URL"
  SIDECAR_PROXY_PID=$INSTANCE_PID SIDECAR_PROXY_URL=$INSTANCE_URL
  grep -q "CONNECT localhost:$UPSTREAM_TLS_PORT" "$OUT/tinyproxy/tinyproxy.log" \
    || die "sidecar-proxy answered, but not through tinyproxy: $(tail -5 "$OUT/tinyproxy/tinyproxy.log")"
}

# ---------------------------------------------------------------- measurements
url_of() {
  case $1 in
    direct) echo "http://$UPSTREAM/v1/chat/completions" ;;
    relay) echo "$RELAY_URL" ;;
    nginx) echo "$NGINX_URL" ;;
    lean) echo "$LEAN_URL" ;;
    hyper) echo "$HYPER_URL" ;;
    sidecar) echo "$SIDECAR_URL" ;;
    direct-tls) echo "$UPSTREAM_TLS_URL/chat/completions" ;;
    nginx-tls) echo "$NGINX_TLS_URL" ;;
    sidecar-tls) echo "$SIDECAR_TLS_URL" ;;
    sidecar-proxy) echo "$SIDECAR_PROXY_URL" ;;
  esac
}

proxy_pids() {
  case $1 in
    direct) ;;
    relay) echo "$RELAY_PID" ;;
    nginx) echo "$NGINX_PID $NGINX_WORKER" ;;
    lean) echo "$LEAN_PID" ;;
    hyper) echo "$HYPER_PID" ;;
    sidecar) echo "$SIDECAR_PID" ;;
    direct-tls) ;;
    nginx-tls) echo "$NGINX_TLS_PID $NGINX_TLS_WORKER" ;;
    sidecar-tls) echo "$SIDECAR_TLS_PID" ;;
    sidecar-proxy) echo "$SIDECAR_PROXY_PID" ;;
  esac
}

oha_run() { # oha_run URL OUTFILE oha-args...
  local url=$1 out=$2
  local -a tls=()
  shift 2
  # Only direct-tls is an https URL: oha must trust the private CA for it.
  [[ $url == https://* ]] && tls=(--cacert "$CA_FILE")
  "${CLIENT[@]}" oha --no-tui --output-format json -m POST -T application/json \
    -H "Authorization: Bearer client-placeholder" -d "$BODY" "${tls[@]}" "$@" "$url" >"$out"
}

# measure_load TARGET REP CONNS: proxy and upstream CPU over one window at CONNS
# connections, warmed at that count first (the window then holds no connection set-up);
# after the 64-connection window, the proxy's memory under load.
measure_load() {
  local target=$1 rep=$2 c=$3 url before after up_before up_after
  local -a pids
  url=$(url_of "$target")
  read -r -a pids <<<"$(proxy_pids "$target")"
  oha_run "$url" /dev/null -z "${WARMUP}s" -c "$c"
  before=$(cpu_ticks "${pids[@]}")
  up_before=$(cpu_ticks "$UPSTREAM_PID")
  oha_run "$url" "$OUT/oha/$target-c$c-r$rep.json" -z "${DURATION}s" -c "$c"
  after=$(cpu_ticks "${pids[@]}")
  up_after=$(cpu_ticks "$UPSTREAM_PID")
  echo "$target c$c $rep $((after - before)) $((up_after - up_before))" >>"$OUT/cpu.tsv"
  if ((c == 64 && ${#pids[@]})); then
    echo "$target load $rep $(mem_kib "${pids[@]}")" >>"$OUT/rss.tsv"
  fi
}

# measure_rate TARGET REP: latency and CPU at 50 requests/s, then streamed TTFB.
measure_rate() {
  local target=$1 rep=$2 url before after up_before up_after
  local -a pids
  url=$(url_of "$target")
  read -r -a pids <<<"$(proxy_pids "$target")"
  before=$(cpu_ns "${pids[@]}")
  up_before=$(cpu_ns "$UPSTREAM_PID")
  oha_run "$url" "$OUT/oha/$target-q50-r$rep.json" -z "${RATE_DURATION}s" -q 50 -c 4
  after=$(cpu_ns "${pids[@]}")
  up_after=$(cpu_ns "$UPSTREAM_PID")
  echo "$target q50 $rep $((after - before)) $((up_after - up_before))" >>"$OUT/cpu_ns.tsv"
  if [[ $url == https://* ]]; then
    # ttfb-probe speaks plain HTTP only: no TTFB for a direct https call.
    log "$target rep $rep: $(jq -r '.summary.requestsPerSec|floor' "$OUT/oha/$target-c16-r$rep.json") req/s at 16 conn., TTFB not probed (https)"
    return
  fi
  "${CLIENT[@]}" "$BIN/ttfb-probe" --url "$url" \
    --requests "$TTFB_REQUESTS" --warmup 20 >"$OUT/ttfb/$target-r$rep.json"
  log "$target rep $rep: $(jq -r '.summary.requestsPerSec|floor' "$OUT/oha/$target-c16-r$rep.json") req/s at 16 conn., TTFB p50 $(jq -r '.ttfb_p50_us|floor' "$OUT/ttfb/$target-r$rep.json") µs"
}

# ---------------------------------------------------------------- main
main() {
  ensure_tools
  mkdir -p "$OUT/oha" "$OUT/ttfb"
  : >"$OUT/cpu.tsv"
  : >"$OUT/cpu_ns.tsv"
  : >"$OUT/rss.tsv"
  local packages=(-p holysheep-bench)
  [[ " $TARGETS " == *" sidecar"* ]] && packages+=(-p holysheep-sidecar)
  log "building ${packages[*]} (release)"
  cargo build --release --quiet "${packages[@]}"
  if [[ $PGO == 1 && " $TARGETS " == *" sidecar"* ]]; then
    log "profile-guided sidecar (scripts/pgo-build.sh)"
    bash scripts/pgo-build.sh
  fi

  start_upstream
  [[ " $TARGETS " == *" relay "* ]] && start_relay
  [[ " $TARGETS " == *" nginx "* ]] && start_nginx
  [[ " $TARGETS " == *" lean "* ]] && start_lean
  [[ " $TARGETS " == *" hyper "* ]] && start_hyper
  [[ " $TARGETS " == *" sidecar "* ]] && start_sidecar
  wants nginx-tls && start_nginx_tls
  wants sidecar-tls && start_sidecar_tls
  wants sidecar-proxy && start_sidecar_proxy

  # Idle memory: right after start-up and readiness, before any proxied request (the
  # sidecars' is taken in start_sidecar_instance).
  [[ -n ${RELAY_PID:-} ]] && echo "relay idle 1 $(mem_kib "$RELAY_PID")" >>"$OUT/rss.tsv"
  [[ -n ${NGINX_PID:-} ]] && echo "nginx idle 1 $(mem_kib "$NGINX_PID" "$NGINX_WORKER")" >>"$OUT/rss.tsv"
  [[ -n ${LEAN_PID:-} ]] && echo "lean idle 1 $(mem_kib "$LEAN_PID")" >>"$OUT/rss.tsv"
  [[ -n ${HYPER_PID:-} ]] && echo "hyper idle 1 $(mem_kib "$HYPER_PID")" >>"$OUT/rss.tsv"
  [[ -n ${NGINX_TLS_PID:-} ]] && echo "nginx-tls idle 1 $(mem_kib "$NGINX_TLS_PID" "$NGINX_TLS_WORKER")" >>"$OUT/rss.tsv"

  cat >"$OUT/meta.env" <<EOF
run_id=$RUN_ID
date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
sidecar_tree=$(if git diff --quiet HEAD -- sidecar 2>/dev/null; then echo clean; else echo "uncommitted changes in sidecar/"; fi)
sidecar_build=$(if [[ $PGO == 1 ]]; then echo profile-guided; else echo plain release; fi)
sidecar_profile=$(if [[ $PGO != 1 ]]; then echo none; elif [[ -n ${PGO_PROFDATA:-} ]]; then echo "kept: $PGO_PROFDATA"; else echo "trained in this run"; fi)
loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)
nproc=$(nproc)
cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
kernel=$(uname -r)
clk_tck=$(getconf CLK_TCK)
oha=$(oha --version)
nginx=$(nginx -v 2>&1 | sed 's/^nginx version: //')
rustc=$(rustc --version)
duration_s=$DURATION
rate_duration_s=$RATE_DURATION
reps=$REPS
pinning=$PINNING
sidecar_log=$SIDECAR_LOG
glibc_tunables=${IMAGE_GLIBC_TUNABLES:-unset}
tls_upstream_alpn=$(if [[ $TLS_HTTP1 == 1 ]]; then echo http/1.1; else echo h2,http/1.1; fi)
tinyproxy=$(if wants sidecar-proxy; then tinyproxy -v 2>&1 | head -1; else echo unused; fi)
EOF

  # Per repetition, one phase at a time across the targets: the CPU windows that are
  # compared (a target against nginx, 16 against 64 connections) then lie seconds
  # apart, not minutes, so a change in the shared machine's load between them shows
  # as spread across repetitions rather than as a difference between targets.
  for rep in $(seq 1 "$REPS"); do
    for c in 16 64; do
      for target in $TARGETS; do
        measure_load "$target" "$rep" "$c"
      done
    done
    for target in $TARGETS; do
      measure_rate "$target" "$rep"
    done
  done

  # Metrics count as "on" when the sidecar's /metrics has request samples after the load.
  local metrics=off
  if [[ -n ${SIDECAR_ADMIN:-} ]]; then
    curl -fsS "$SIDECAR_ADMIN/metrics" >"$OUT/sidecar-metrics.txt" 2>/dev/null || true
    grep -q '^holysheep_requests_total' "$OUT/sidecar-metrics.txt" && metrics=on
  fi
  echo "sidecar_metrics=$metrics" >>"$OUT/meta.env"
  echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/meta.env"

  "$BIN/bench-report" --dir "$OUT" | tee "$OUT/report.md"
  log "raw results and report.md in $OUT"
}

main "$@"
