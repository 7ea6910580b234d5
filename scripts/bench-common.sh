# Sourced by the proxy benchmark scripts (bench-ab.sh, cachegrind-request.sh): the
# release binaries' directory ($T), the image's GLIBC_TUNABLES, the benchmark's request
# body, child processes (collected in PIDS) stopped on exit, and a free loopback port.
export PATH=$HOME/.cargo/bin:/usr/sbin:$PATH
T=${T:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/release}
# The sidecar image's allocator setting (the Dockerfile's ENV GLIBC_TUNABLES), which the
# scripts give every proxy they start.
IMAGE_GLIBC_TUNABLES=$(sed -n 's/^ENV GLIBC_TUNABLES=//p' "$(dirname "${BASH_SOURCE[0]}")/../Dockerfile")
BODY='{"model":"gpt-4.1","messages":[{"role":"user","content":"Say hello."}]}'
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
