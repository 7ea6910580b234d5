#!/usr/bin/env bash
# The soak run of BENCHMARKS.md, in one command: scripts/soak.sh
#
# Builds the sidecar, the webhook and the soak driver in release mode, then runs `soak`
# (bench/src/bin/soak.rs) for SOAK_DURATION (10m): mixed traffic through the sidecar
# (chat, streams, embeddings, models, oversized bodies, clients that leave before headers
# or mid-stream) against an upstream that answers 5xx/429, cuts streams mid-event and
# stalls streams on a schedule; key rotations every 30 s and config edits every 45 s in
# the kubelet's `..data` layout (every third edit refused); three bursts of SOAK_BURST
# (1000) concurrent streams; and, through the webhook over TLS, ordinary reviews at 10/s
# plus a hostile storm every minute (silent TCP and TLS connections, a trickling body,
# parallel 2.7-2.9 MB reviews with and without port collisions, a 4.5 MB review). RSS,
# CPU time and open descriptors of both processes are sampled every 5 s. The sidecar gets
# the image's environment (the Dockerfile's ENV lines of its stage), as in production.
#
# Extra flags go to `soak`: `--tls` serves the fake upstream over HTTPS offering h2 (the
# production path).
#
# Output: bench/out/soak-<run id>/ (samples.csv, summary.md, both logs), git-ignored.
# Binds only 127.0.0.1 and stops everything it started on exit. Not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${SOAK_DURATION:-10m}
WARMUP=${SOAK_WARMUP:-2m}
BURST=${SOAK_BURST:-1000}
WORKERS=${SOAK_WORKERS:-8}
OUT=bench/out/soak-$(date -u +%Y%m%dT%H%M%SZ)

cargo build --release --locked -p holysheep-sidecar -p holysheep-webhook -p holysheep-bench --bin holysheep-sidecar --bin holysheep-webhook --bin soak
# Cargo's target dir (CARGO_TARGET_DIR when set, as cargo itself does).
BIN=${CARGO_TARGET_DIR:-target}/release
# The bursts hold about 4 descriptors per stream across the driver and the sidecar.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
mkdir -p "$OUT"
"$BIN/soak" --sidecar "$BIN/holysheep-sidecar" --webhook "$BIN/holysheep-webhook" \
  --duration "$DURATION" --warmup "$WARMUP" --burst-streams "$BURST" \
  --workers "$WORKERS" --out "$OUT" "$@"
echo "samples and logs in $OUT" >&2
