#!/usr/bin/env bash
# The README's "Try it offline" in one go: builds once, starts the repository's fake
# OpenAI upstream and the sidecar on free loopback ports, makes a plain curl call and a
# real OpenAI Python SDK call through the sidecar, shows the /metrics lines they
# produced, then stops what it started (also on Ctrl-C or an error).
#
# Needs cargo, curl and python3 with venv; the openai package is installed into
# .venv/openai (VENV=... to use another venv) on first use, from PyPI.
#
# Usage: scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv/openai}"
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n==> %s\n' "$*"; }

step "build the sidecar and the fake upstream (cargo build; minutes the first time)"
# The executables' paths as cargo reports them, whatever the target dir is.
cargo build --quiet -p holysheep-sidecar -p holysheep-bench --bins \
    --message-format=json-render-diagnostics >"$work/build.json"
exe() {
    python3 -c '
import json, sys
for line in open(sys.argv[1]):
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == sys.argv[2] and msg.get("executable"):
        print(msg["executable"])' "$work/build.json" "$1"
}
fake="$(exe fake-upstream)"
sidecar="$(exe holysheep-sidecar)"

step "the openai Python SDK in $VENV"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check openai

step "start the fake upstream and the sidecar on free loopback ports"
"$fake" --listen 127.0.0.1:0 --addr-file "$work/upstream.addr" --max-runtime 10m \
    >"$work/upstream.log" &
pids+=($!)
# Readiness by the files the processes write, bounded; no fixed sleeps.
wait_for() { # wait_for FILE PATTERN WHAT
    for _ in $(seq 100); do
        if grep -q "$2" "$1" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "quickstart: $3 did not start; its log:" >&2
    cat "$1" >&2 || true
    exit 1
}
wait_for "$work/upstream.log" "listening" "the fake upstream"
upstream="$(cat "$work/upstream.addr")"
HOLYSHEEP_API_KEY=sk-offline-demo "$sidecar" --listen 127.0.0.1:0 \
    --admin-listen 127.0.0.1:0 --upstream "http://$upstream/v1" 2>"$work/sidecar.log" &
pids+=($!)
wait_for "$work/sidecar.log" "holysheep-sidecar listening" "the sidecar"
addr() { # the proxy or admin address from the sidecar's listening line
    python3 -c '
import json, sys
for line in open(sys.argv[1]):
    v = json.loads(line)
    if v["fields"].get("message") == "holysheep-sidecar listening":
        print(v["fields"][sys.argv[2]])' "$work/sidecar.log" "$1"
}
proxy="$(addr proxy)"
admin="$(addr admin)"
echo "fake upstream  http://$upstream/v1"
echo "sidecar        http://$proxy/v1   (admin http://$admin: /metrics /readyz /healthz)"
curl -sS --retry 30 --retry-connrefused --retry-delay 1 "http://$admin/readyz"

step "plain curl, no key, alias gpt-4: look at x-holysheep-model (the model that answered)"
curl -sS -i -w '\n' "http://$proxy/v1/chat/completions" \
    -d '{"model":"gpt-4","messages":[{"role":"user","content":"Say hi"}]}'

step "the official OpenAI Python SDK, base URL from OPENAI_BASE_URL, any key"
OPENAI_BASE_URL="http://$proxy/v1" OPENAI_API_KEY=injected-by-holysheep \
    "$VENV/bin/python" -c '
from openai import OpenAI
client = OpenAI(max_retries=0, timeout=130)
r = client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
print(r.model, "->", r.choices[0].message.content, f"({r.usage.total_tokens} tokens)")'

step "what the sidecar counted: requests, tokens and cost under the model sent (gpt-4.1)"
curl -sS "http://$admin/metrics" | grep -E '^holysheep_(requests|tokens|cost_usd)_total\{.*gpt-4\.1'

step "the sidecar's log (JSON lines): the key's origin, the addresses, one line per request"
cut -c1-220 "$work/sidecar.log"

step "done: stopping the sidecar and the fake upstream"
