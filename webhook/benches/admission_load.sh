#!/usr/bin/env bash
# Admission throughput and latency of `holysheep-webhook serve` over TLS on loopback.
#
# Starts the release binary with certificates from `holysheep-webhook certs`, drives
# POST /mutate with `oha` at a fixed rate (HTTP/2, like kube-apiserver, CA-verified), and
# reports the median of RUNS runs: achieved requests/s, p50/p99 latency, and the server's
# RSS (VmRSS after the runs and VmHWM peak). Needs `oha` (cargo install oha) and python3.
#
#   webhook/benches/admission_load.sh [RATE] [DURATION] [RUNS]   # defaults: 200 20s 3
#
# The request is tests/fixtures/admission/pod_deployment_opted_in.json: an opted-in
# Deployment pod, so every request computes and returns a full injection patch.
set -euo pipefail

RATE=${1:-200}
DURATION=${2:-20s}
RUNS=${3:-3}
CONNS=${CONNS:-4}
PORT=${PORT:-18443}
HOST=holysheep-webhook.holysheep-system.svc
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$ROOT/target/release/holysheep-webhook}
FIXTURE=$ROOT/webhook/tests/fixtures/admission/pod_deployment_opted_in.json
OHA=${OHA:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}
WORK=$(mktemp -d)
PID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT

[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release -p holysheep-webhook --bin holysheep-webhook)
"$BIN" certs --service holysheep-webhook --namespace holysheep-system --out "$WORK/certs" 2>/dev/null
RUST_LOG=${RUST_LOG:-info} "$BIN" serve --listen "127.0.0.1:$PORT" \
  --tls-cert "$WORK/certs/tls.crt" --tls-key "$WORK/certs/tls.key" 2>"$WORK/server.log" &
PID=$!
for _ in $(seq 1 100); do
  curl -sf --cacert "$WORK/certs/ca.crt" --connect-to "$HOST:$PORT:127.0.0.1:$PORT" \
    "https://$HOST:$PORT/readyz" >/dev/null && break
  sleep 0.1
done

for i in $(seq 1 "$RUNS"); do
  "$OHA" --no-tui --output-format json -z "$DURATION" -q "$RATE" -c "$CONNS" --http2 \
    --latency-correction -m POST -D "$FIXTURE" -H 'content-type: application/json' \
    --cacert "$WORK/certs/ca.crt" --connect-to "$HOST:$PORT:127.0.0.1:$PORT" \
    "https://$HOST:$PORT/mutate" >"$WORK/run$i.json"
done
grep -E '^(VmRSS|VmHWM)' "/proc/$PID/status" >"$WORK/rss.txt"

python3 - "$WORK" "$RUNS" <<'PY'
import json, statistics, sys
work, runs = sys.argv[1], int(sys.argv[2])
rows = []
for i in range(1, runs + 1):
    d = json.load(open(f"{work}/run{i}.json"))
    s, p = d["summary"], d["latencyPercentiles"]
    codes = d.get("statusCodeDistribution", {})
    rows.append((s["requestsPerSec"], p["p50"] * 1000, p["p99"] * 1000, s["successRate"], codes))
for n, r in enumerate(rows, 1):
    print(f"run {n}: {r[0]:.1f} req/s  p50 {r[1]:.3f} ms  p99 {r[2]:.3f} ms  success {r[3]:.4f}  status {r[4]}")
med = lambda k: statistics.median(r[k] for r in rows)
print(f"median: {med(0):.1f} req/s  p50 {med(1):.3f} ms  p99 {med(2):.3f} ms")
rss = dict(l.split(":", 1) for l in open(f"{work}/rss.txt").read().splitlines())
print("server RSS after runs:", rss["VmRSS"].strip(), " peak (VmHWM):", rss["VmHWM"].strip())
PY
