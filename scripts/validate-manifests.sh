#!/usr/bin/env bash
# Validates every Kubernetes manifest of the repository against the official Kubernetes
# OpenAPI schemas (strict: unknown fields are errors), offline:
#   - every YAML document under manifests/ (base, overlays, examples, observability);
#   - `kubectl kustomize` of manifests/ and of each overlay, when kubectl is installed;
#   - `holysheep-webhook inject` over each file of manifests/examples/ (what users pipe
#     into kubectl apply), built with cargo first (a no-op when up to date).
#
# Validator: the PyPI package kubernetes-validate (pinned below), installed into
# .venv/validate-manifests. It bundles the JSON schemas generated from the Kubernetes
# OpenAPI specs for 1.25 to 1.37 inside the wheel, so after `pip install` it needs no
# network; the machine and CI reach PyPI but no GitHub downloads, which rules out
# kubeconform/kubeval (not packaged in Debian) and schema-fetching validators.
#
# CRDs have no official schema: documents of the kinds in SKIP_KINDS are skipped by kind,
# with a message. Any other kind without a schema is an error, so a new CRD must be
# listed here on purpose. kustomization.yaml files and *-patch.yaml files (partial
# objects merged by kustomize) are not objects: they are checked through the rendering.
#
# Usage: scripts/validate-manifests.sh        (K8S_VERSION=1.33.0 by default)
# Exits non-zero on any invalid document, on a rendering or inject failure, or if it
# validated nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION="${K8S_VERSION:-1.33.0}"
VALIDATOR="kubernetes-validate==1.37.0"
VENV=".venv/validate-manifests"

# 1. The validator, in a venv (Debian's python3 needs python3-venv for `-m venv`).
if ! "$VENV/bin/python" -c 'import kubernetes_validate, yaml' 2>/dev/null ||
    [ "$("$VENV/bin/pip" show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p')" != "${VALIDATOR#*==}" ]; then
    echo "validate-manifests: installing $VALIDATOR into $VENV"
    if ! python3 -m venv "$VENV"; then
        echo "validate-manifests: python3 -m venv failed; install python3-venv (apt-get install -y python3-venv)" >&2
        exit 1
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$VALIDATOR"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
targets=()

# 2. Raw files.
while IFS= read -r f; do
    case "$(basename "$f")" in
        kustomization.yaml | kustomization.yml)
            echo "skip $f: kustomize configuration, checked by rendering" ;;
        *-patch.yaml | *-patch.yml)
            echo "skip $f: kustomize patch (partial object), checked by rendering" ;;
        *) targets+=("$f") ;;
    esac
done < <(find manifests -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)

# 3. Rendered kustomizations.
if command -v kubectl >/dev/null 2>&1; then
    while IFS= read -r k; do
        dir="$(dirname "$k")"
        out="$work/rendered-$(echo "$dir" | tr '/' '_').yaml"
        echo "render kubectl kustomize $dir"
        kubectl kustomize "$dir" >"$out"
        targets+=("$out")
    done < <(find manifests -type f -name kustomization.yaml | sort)
else
    echo "kubectl not found: skipping kustomize rendering (raw files are still validated)"
fi

# 4. `holysheep-webhook inject` over the examples.
# The binary is where cargo puts it: CARGO_TARGET_DIR (absolute or relative to the
# repository), a target-dir from cargo's config, or target/. cargo itself says which.
bin="${CARGO_TARGET_DIR:-target}/debug/holysheep-webhook"
if [ -d manifests/examples ]; then
    # Always through cargo when present (a no-op when up to date), so a stale binary is
    # never what gets validated.
    if command -v cargo >/dev/null 2>&1; then
        echo "build cargo build -p holysheep-webhook --bin holysheep-webhook"
        bin="$(cargo build --quiet -p holysheep-webhook --bin holysheep-webhook \
            --message-format=json-render-diagnostics |
            "$VENV/bin/python" -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
        print(msg["executable"])')"
        if [ ! -x "$bin" ]; then
            echo "validate-manifests: cargo built no holysheep-webhook executable" >&2
            exit 1
        fi
    elif [ ! -x "$bin" ]; then
        echo "validate-manifests: neither cargo nor $bin found" >&2
        exit 1
    fi
    while IFS= read -r f; do
        out="$work/injected-$(basename "$f")"
        echo "inject $bin inject -f $f"
        if ! "$bin" inject -f "$f" >"$out" 2>"$work/inject.log"; then
            cat "$work/inject.log" >&2
            echo "FAIL inject -f $f" >&2
            exit 1
        fi
        targets+=("$out")
    done < <(find manifests/examples -maxdepth 1 -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
fi

# 5. Validate every document.
"$VENV/bin/python" - "$K8S_VERSION" "${targets[@]}" <<'PY'
import sys

import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

# CRDs without an official schema, skipped on purpose: (API group, kind).
SKIP_KINDS = {
    ("cert-manager.io", "Certificate"),
    ("cert-manager.io", "Issuer"),
    ("cert-manager.io", "ClusterIssuer"),
    ("monitoring.coreos.com", "PrometheusRule"),
    ("monitoring.coreos.com", "ServiceMonitor"),
    ("monitoring.coreos.com", "PodMonitor"),
}

version, files = sys.argv[1], sys.argv[2:]

# Guard against a validator that accepts everything (broken install, schema not strict):
# a typo'd field must be refused, or no result below would mean anything.
canary = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "canary"},
          "spec": {"portz": []}}
try:
    kubernetes_validate.validate(canary, version, strict=True)
    sys.exit("validate-manifests: the validator accepted an unknown field; broken install?")
except ValidationError:
    pass
checked = failed = skipped = 0
for path in files:
    try:
        with open(path) as fh:
            docs = list(yaml.safe_load_all(fh))
    except yaml.YAMLError as e:
        print(f"FAIL {path}: not valid YAML: {e}")
        failed += 1
        continue
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        where = f"{path} doc {i}"
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            print(f"FAIL {where}: not a Kubernetes object (no apiVersion/kind)")
            failed += 1
            continue
        group = doc["apiVersion"].rpartition("/")[0]
        name = (doc.get("metadata") or {}).get("name", "?")
        label = f"{doc['kind']}/{name}"
        if (group, doc["kind"]) in SKIP_KINDS:
            print(f"skip {where} {label}: CRD {doc['apiVersion']} has no official schema")
            skipped += 1
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
            checked += 1
        except ValidationError as e:
            field = ".".join(str(p) for p in e.path) or "(root)"
            print(f"FAIL {where} {label}: {field}: {e.message}")
            failed += 1
        except SchemaNotFoundError:
            print(f"FAIL {where} {label}: no Kubernetes {version} schema for "
                  f"{doc['apiVersion']} {doc['kind']} (a CRD? list it in SKIP_KINDS)")
            failed += 1
print(f"validate-manifests: Kubernetes {version} strict: {checked} valid, "
      f"{failed} invalid, {skipped} skipped CRD documents in {len(files)} files")
if failed or not checked:
    sys.exit(1)
PY

# 6. The PrometheusRule's rules: `promtool check rules` (syntax, PromQL, templates) and
# `promtool test rules` on the alerts that must fire. promtool comes with Debian's
# prometheus package (apt-get install -y prometheus); without it this step is skipped
# with a message. The PodMonitor and ServiceMonitor are checked only as YAML objects
# (kind, apiVersion, metadata) above: no package on the registries this project uses
# carries the Prometheus Operator's CRD schemas in a form the validator reads.
rule="manifests/observability/prometheusrule.yaml"
if command -v promtool >/dev/null 2>&1; then
    "$VENV/bin/python" - "$rule" "$work/rules.yaml" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
assert doc["kind"] == "PrometheusRule", doc["kind"]
yaml.safe_dump({"groups": doc["spec"]["groups"]}, open(sys.argv[2], "w"))
PY
    echo "promtool check rules $rule"
    promtool check rules "$work/rules.yaml"
    cat >"$work/rules-test.yaml" <<'TEST'
rule_files: [rules.yaml]
evaluation_interval: 15s
# The ALERTS series, not alert_rule_test: the latter compares the rendered annotations too.
tests:
  # 775 of 776 calls get 429 for 100 s (15 s scrapes): the alert fires within the burst.
  - interval: 15s
    input_series:
      - series: 'holysheep_requests_total{namespace="shop",pod="chat-1",route="chat_completions",model="gpt-4.1",status="429"}'
        values: '0+116x7'
      - series: 'holysheep_requests_total{namespace="shop",pod="chat-1",route="chat_completions",model="gpt-4.1",status="200"}'
        values: '1x7'
    promql_expr_test:
      - eval_time: 90s
        expr: ALERTS{alertname="HolySheepRateLimited", alertstate="firing"}
        exp_samples:
          - labels: 'ALERTS{alertname="HolySheepRateLimited", alertstate="firing", namespace="shop", severity="warning"}'
            value: 1
  # Pods on 0.1.0 while the webhook is 0.2.0 fire after an hour; pods on 0.2.0 never.
  - interval: 5m
    input_series:
      - series: 'holysheep_build_info{holysheep_component="webhook",namespace="holysheep-system",pod="wh-0",version="0.2.0"}'
        values: '1x20'
      - series: 'holysheep_build_info{holysheep_component="sidecar",namespace="shop",pod="chat-1",version="0.1.0"}'
        values: '1x20'
      - series: 'holysheep_build_info{holysheep_component="sidecar",namespace="other",pod="web-1",version="0.2.0"}'
        values: '1x20'
    promql_expr_test:
      - eval_time: 30m
        expr: ALERTS{alertname="HolySheepOldSidecar", alertstate="firing"}
        exp_samples: []
      - eval_time: 70m
        expr: ALERTS{alertname="HolySheepOldSidecar", alertstate="firing"}
        exp_samples:
          - labels: 'ALERTS{alertname="HolySheepOldSidecar", alertstate="firing", namespace="shop", severity="info", version="0.1.0"}'
            value: 1
TEST
    echo "promtool test rules (429 share, old sidecar)"
    (cd "$work" && promtool test rules rules-test.yaml)
else
    echo "promtool not found: skipping the PrometheusRule checks (apt-get install -y prometheus)"
fi
