//! Golden tests of `holysheep-webhook inject`: `fixtures/inject/<case>.input.yaml` gives
//! `<case>.golden.yaml`, or `<case>.error.txt` when the run must fail, and
//! `<case>.warnings.txt` when it warns (what stderr shows); `<case>.flags`, when
//! present, holds `inject` flags (one per line) giving the webhook defaults. Regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p holysheep-webhook --test inject_golden` and review the
//! diff. Also runs inject over every file in `manifests/examples/`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on broken fixtures"
)]

use std::path::{Path, PathBuf};

use clap::Parser as _;
use holysheep_webhook::cli::{Cli, Command};
use holysheep_webhook::inject_cli::{inject_yaml, inject_yaml_report, run_path};
use holysheep_webhook::settings::Settings;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, Pod, PodTemplateSpec, ReplicationController, Secret, Service,
};
use serde::Deserialize;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject")
}

/// Pinned image so the goldens do not change with the crate version.
const GOLDEN_IMAGE: &str = "ghcr.io/holysheep/holysheep-sidecar:golden";

fn settings() -> Settings {
    Settings {
        image: GOLDEN_IMAGE.to_owned(),
        ..Settings::default()
    }
}

/// The defaults of case `name`: its `.flags` file parsed by the real `inject` command
/// line, or [`settings`].
fn case_settings(name: &str) -> Settings {
    let Ok(flags) = std::fs::read_to_string(fixtures().join(format!("{name}.flags"))) else {
        return settings();
    };
    let image = format!("--sidecar-image={GOLDEN_IMAGE}");
    let argv = ["holysheep-webhook", "inject", image.as_str()]
        .into_iter()
        .chain(
            flags
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#')),
        );
    let Command::Inject(args) = Cli::try_parse_from(argv).unwrap().command else {
        panic!("{name}.flags: not inject flags")
    };
    args.settings.into_settings().unwrap()
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Decodes a document into its k8s-openapi type (which checks apiVersion and kind too)
/// and returns its pod templates, typed.
fn typed_templates(doc: &Value) -> Vec<PodTemplateSpec> {
    fn de<T: serde::de::DeserializeOwned>(doc: &Value) -> T {
        serde_json::from_value(doc.clone())
            .unwrap_or_else(|e| panic!("{e}: {}", serde_json::to_string_pretty(doc).unwrap()))
    }
    let kind = doc["kind"].as_str().unwrap_or_default();
    match kind {
        "Pod" => {
            let pod: Pod = de(doc);
            vec![PodTemplateSpec {
                metadata: Some(pod.metadata),
                spec: pod.spec,
            }]
        }
        "Deployment" => vec![de::<Deployment>(doc).spec.unwrap().template],
        "StatefulSet" => vec![de::<StatefulSet>(doc).spec.unwrap().template],
        "DaemonSet" => vec![de::<DaemonSet>(doc).spec.unwrap().template],
        "ReplicaSet" => vec![de::<ReplicaSet>(doc).spec.unwrap().template.unwrap()],
        "ReplicationController" => {
            vec![
                de::<ReplicationController>(doc)
                    .spec
                    .unwrap()
                    .template
                    .unwrap(),
            ]
        }
        "Job" => vec![de::<Job>(doc).spec.unwrap().template],
        "CronJob" => vec![
            de::<CronJob>(doc)
                .spec
                .unwrap()
                .job_template
                .spec
                .unwrap()
                .template,
        ],
        "List" => doc["items"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(typed_templates)
            .collect(),
        "Service" => {
            de::<Service>(doc);
            vec![]
        }
        "ConfigMap" => {
            de::<ConfigMap>(doc);
            vec![]
        }
        "Secret" => {
            de::<Secret>(doc);
            vec![]
        }
        "Namespace" => {
            de::<Namespace>(doc);
            vec![]
        }
        // Other objects (NetworkPolicy, Kustomization...) are not inject's business.
        _ => vec![],
    }
}

fn opted_in(template: &PodTemplateSpec) -> bool {
    template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get("holysheep/inject"))
        .is_some_and(|v| v == "true")
}

/// An opted-in template carries the sidecar, the marker and the credential volume,
/// mounted in the sidecar only; other templates carry none of it.
fn check_template(template: &PodTemplateSpec, context: &str) {
    let spec = template.spec.as_ref().unwrap();
    let all: Vec<_> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .collect();
    let sidecars = all.iter().filter(|c| c.name == "holysheep-sidecar").count();
    let annotations = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    if !opted_in(template) {
        assert_eq!(sidecars, 0, "{context}: injected without opt-in");
        return;
    }
    assert_eq!(sidecars, 1, "{context}: exactly one sidecar");
    assert_eq!(
        annotations.get("holysheep/status").map(String::as_str),
        Some("injected"),
        "{context}"
    );
    for container in all.iter().filter(|c| c.name != "holysheep-sidecar") {
        let mounts_credentials = container
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "holysheep-credentials" || m.name == "holysheep-upstream-ca");
        assert!(
            !mounts_credentials,
            "{context}: {} mounts the credentials",
            container.name
        );
    }
    let volumes = spec.volumes.as_ref().unwrap();
    assert!(
        volumes.iter().any(|v| v.name == "holysheep-credentials"),
        "{context}"
    );
}

#[test]
fn golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".input.yaml"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 5, "fixtures missing: {inputs:?}");
    let mut mismatches = Vec::new();
    for input in inputs {
        let name = input
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".input.yaml", "");
        let golden = fixtures().join(format!("{name}.golden.yaml"));
        let error = fixtures().join(format!("{name}.error.txt"));
        let warnings = fixtures().join(format!("{name}.warnings.txt"));
        let text = std::fs::read_to_string(&input).unwrap();
        let settings = case_settings(&name);
        let (path, got) = match inject_yaml_report(&text, &settings) {
            Ok((yaml, report)) => {
                let got_warnings: String =
                    report.warnings.iter().map(|w| format!("{w}\n")).collect();
                if update && !got_warnings.is_empty() {
                    std::fs::write(&warnings, &got_warnings).unwrap();
                } else {
                    let want = std::fs::read_to_string(&warnings).unwrap_or_default();
                    if want != got_warnings {
                        mismatches.push(format!("{}:\n{got_warnings}", warnings.display()));
                    }
                }
                for (i, doc) in documents(&yaml).iter().enumerate() {
                    for template in typed_templates(doc) {
                        check_template(&template, &format!("{name} document {}", i + 1));
                    }
                }
                assert_eq!(
                    inject_yaml(&yaml, &settings).unwrap(),
                    yaml,
                    "{name}: not idempotent"
                );
                assert!(
                    !error.exists() || update,
                    "{name}: expected an error, see {error:?}"
                );
                (golden, yaml)
            }
            Err(e) => {
                assert!(!golden.exists() || update, "{name}: unexpected error: {e}");
                (error, format!("{e}\n"))
            }
        };
        if update {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("{path:?} missing: run with UPDATE_GOLDEN=1 and review"));
        if want != got {
            mismatches.push(format!("{}:\n{got}", path.display()));
        }
    }
    assert!(
        mismatches.is_empty(),
        "golden mismatch (UPDATE_GOLDEN=1 to accept):\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn examples_inject_into_valid_objects() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    let mut injected = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let mut out = Vec::new();
        let report = run_path(path.to_str().unwrap(), &mut out, &Settings::default())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let out = String::from_utf8(out).unwrap();
        for doc in documents(&out) {
            if doc["kind"] == "Kustomization" {
                continue;
            }
            for template in typed_templates(&doc) {
                check_template(&template, &path.display().to_string());
                injected += usize::from(opted_in(&template));
            }
        }
        assert_eq!(
            inject_yaml(&out, &Settings::default()).unwrap(),
            out,
            "{}",
            path.display()
        );
        assert!(report.documents >= 1, "{}", path.display());
    }
    assert!(
        injected >= 3,
        "the examples hold a Deployment, a Job and a CronJob to inject"
    );
}

#[test]
fn bad_annotation_message_names_document_kind_annotation_and_form() {
    let text = std::fs::read_to_string(fixtures().join("bad-annotation.input.yaml")).unwrap();
    let message = inject_yaml(&text, &settings()).unwrap_err().to_string();
    for part in [
        "document 2",
        "job/bad",
        "holysheep/port=\"eighty\"",
        "1 to 65535",
    ] {
        assert!(message.contains(part), "{part:?} not in {message}");
    }
}
