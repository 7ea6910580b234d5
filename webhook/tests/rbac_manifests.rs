//! The webhook's API rights, as `kubectl apply -k manifests/` installs them: exactly the
//! caBundle patch, the TLS Secret, and `create` on events.k8s.io Events, one grant per
//! (role, group, resource, name, verb). A new right fails here until it is listed.
//!
//! Renders with `kubectl kustomize` when kubectl is installed; without it, reads the
//! files the base kustomization lists (the base has no RBAC patches, so they are what
//! the rendering holds).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on broken manifests"
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// Every document of the rendered kustomization at `dir`.
fn render(dir: &Path) -> Vec<Value> {
    let text = match Command::new("kubectl").arg("kustomize").arg(dir).output() {
        Ok(out) if out.status.success() => String::from_utf8(out.stdout).unwrap(),
        Ok(out) => panic!(
            "kubectl kustomize {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => {
            eprintln!("kubectl not found: reading the base's resources instead");
            let base = manifests().join("base");
            let kustomization: Value = serde_yaml_ng::from_str(
                &std::fs::read_to_string(base.join("kustomization.yaml")).unwrap(),
            )
            .unwrap();
            kustomization["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| std::fs::read_to_string(base.join(f.as_str().unwrap())).unwrap())
                .collect::<Vec<_>>()
                .join("\n---\n")
        }
    };
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

/// `kind group resource name verb`, one line per grant (`*` when no resourceNames).
fn grants(documents: &[Value]) -> BTreeSet<String> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };
    let mut out = BTreeSet::new();
    for doc in documents {
        let kind = doc["kind"].as_str().unwrap_or_default();
        if kind != "Role" && kind != "ClusterRole" {
            continue;
        }
        assert!(doc.get("aggregationRule").is_none(), "{doc}");
        for rule in doc["rules"].as_array().unwrap() {
            assert!(rule.get("nonResourceURLs").is_none(), "{rule}");
            let names = strings(&rule["resourceNames"]);
            let names = if names.is_empty() {
                vec!["*".to_owned()]
            } else {
                names
            };
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    for name in &names {
                        for verb in strings(&rule["verbs"]) {
                            let group = if group.is_empty() { "core" } else { &group };
                            out.insert(format!("{kind} {group} {resource} {name} {verb}"));
                        }
                    }
                }
            }
        }
    }
    out
}

#[test]
fn the_default_install_grants_exactly_these_rights() {
    let got = grants(&render(&manifests()));
    let want: BTreeSet<String> = [
        "ClusterRole admissionregistration.k8s.io mutatingwebhookconfigurations holysheep-sidecar-injector get",
        "ClusterRole admissionregistration.k8s.io mutatingwebhookconfigurations holysheep-sidecar-injector patch",
        "ClusterRole events.k8s.io events * create",
        "Role core secrets holysheep-webhook-tls get",
        "Role core secrets holysheep-webhook-tls update",
        "Role core secrets * create",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(got, want);
}
