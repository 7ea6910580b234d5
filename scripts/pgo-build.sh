#!/usr/bin/env bash
# The shipped sidecar: a release build optimised with a profile of its own hot path
# (profile-guided optimisation). The sidecar's cost per request is mostly fetching its
# code again (the code one request runs is larger than the instruction cache; see
# BENCHMARKS.md); the profile lets the compiler lay the hot code out together and inline
# by measured use.
#
#   scripts/pgo-build.sh        # -> $CARGO_TARGET_DIR/pgo/release/holysheep-sidecar
#
# Steps: an instrumented build (-Cprofile-generate), the training load (`pgo-train`:
# JSON chat completions at 1, 16 and 64 connections, streams and the model list, to a
# plain-http and an HTTPS fake upstream; every answer checked), the profile merged with
# the toolchain's own llvm-profdata (rustup component llvm-tools, added when missing: an
# LLVM of another version cannot read rustc's profiles), and the final build
# (-Cprofile-use), which then serves a short run of the same load. Each build has its
# own target directory, so the plain `cargo build --release` one is left alone. Knobs:
# PGO_REQUESTS (20000 per phase); PGO_PROFDATA=FILE builds with a profile kept from an
# earlier run (printed at its end; copy it out of pgo-data/, which the next training run
# clears) instead of training anew: two builds of one profile lay the code out alike,
# while each training run's profile differs a little, so benchmark runs that must
# compare machines rather than builds share one (made from the same code: a function
# changed since the training gets no profile).
set -euo pipefail
cd "$(dirname "$0")/.."
TGT=${CARGO_TARGET_DIR:-target}
mkdir -p "$TGT"
TGT=$(cd "$TGT" && pwd)
DATA=$TGT/pgo-data
HOST=$(rustc -vV | sed -n 's/^host: //p')
PROFDATA=$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata
if [[ ! -x $PROFDATA ]]; then
  rustup component add llvm-tools
fi
[[ -x $PROFDATA ]] || { echo "pgo-build: $PROFDATA is missing (rustup component add llvm-tools)" >&2; exit 1; }

log() { printf '[pgo-build] %s\n' "$*" >&2; }

log "training driver (release)"
cargo build --release --locked -p holysheep-bench --bin pgo-train --target-dir "$TGT"

if [[ -n ${PGO_PROFDATA:-} ]]; then
  [[ -f $PGO_PROFDATA ]] || { echo "pgo-build: PGO_PROFDATA=$PGO_PROFDATA is not a file" >&2; exit 1; }
  PROFILE=$(cd "$(dirname "$PGO_PROFDATA")" && pwd)/$(basename "$PGO_PROFDATA")
  log "kept profile $PROFILE (no training)"
else
  log "instrumented sidecar"
  # An earlier profile goes too (some 25 MB each): keep one by copying it elsewhere.
  rm -rf "$DATA"
  mkdir -p "$DATA/raw"
  RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$DATA/raw" \
    cargo build --release --locked -p holysheep-sidecar --bin holysheep-sidecar \
    --target-dir "$TGT/pgo-generate"

  log "training"
  LLVM_PROFILE_FILE="$DATA/raw/sidecar-%p-%m.profraw" "$TGT/release/pgo-train" \
    --sidecar "$TGT/pgo-generate/release/holysheep-sidecar" --work-dir "$DATA/train" \
    --requests "${PGO_REQUESTS:-20000}"
  compgen -G "$DATA/raw/*.profraw" >/dev/null || { echo "pgo-build: the training wrote no profile" >&2; exit 1; }
  "$PROFDATA" merge -o "$DATA/merged.profdata" "$DATA"/raw/*.profraw
  # Named by its content: cargo rebuilds when RUSTFLAGS change, not when a file they name
  # does, and every crate of the build must be optimised with the new profile.
  PROFILE=$DATA/sidecar-$(sha256sum "$DATA/merged.profdata" | cut -c1-16).profdata
  mv "$DATA/merged.profdata" "$PROFILE"
fi

log "optimised sidecar"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$PROFILE" \
  cargo build --release --locked -p holysheep-sidecar --bin holysheep-sidecar \
  --target-dir "$TGT/pgo"
log "check: the optimised sidecar serves the training load"
"$TGT/release/pgo-train" --sidecar "$TGT/pgo/release/holysheep-sidecar" \
  --work-dir "$DATA/check" --requests 1000 >/dev/null
log "done: $TGT/pgo/release/holysheep-sidecar (profile $PROFILE)"
