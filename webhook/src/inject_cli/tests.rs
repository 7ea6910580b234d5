//! Unit tests of `inject`: the kind table, pass-through, Lists, errors naming the document,
//! and idempotency of the output.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use rstest::rstest;

use super::*;

const ANNOTATED_TEMPLATE: &str = "
    metadata:
      annotations:
        holysheep/inject: \"true\"
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: web:1";

fn workload(api_version: &str, kind: &str, template_path: &[&str]) -> String {
    // Nest the template under its path with two spaces per level; a Pod is its template.
    let mut yaml = format!("apiVersion: {api_version}\nkind: {kind}\n");
    if template_path.is_empty() {
        let pod = ANNOTATED_TEMPLATE.replace("\n    ", "\n").replacen(
            "metadata:\n",
            "metadata:\n  name: web\n",
            1,
        );
        yaml.push_str(pod.trim_start());
        yaml.push('\n');
        return yaml;
    }
    yaml.push_str("metadata:\n  name: web\n");
    let depth = template_path.len();
    for (level, key) in template_path.iter().enumerate() {
        yaml.push_str(&format!("{}{key}:\n", "  ".repeat(level)));
    }
    for line in ANNOTATED_TEMPLATE.lines().skip(1) {
        let line = line.strip_prefix("    ").unwrap_or(line);
        yaml.push_str(&format!("{}{line}\n", "  ".repeat(depth)));
    }
    yaml
}

fn template_at(yaml: &str, pointer: &str) -> PodTemplateSpec {
    let value: Value = serde_yaml_ng::from_str(yaml).unwrap();
    serde_json::from_value(value.pointer(pointer).unwrap().clone()).unwrap()
}

#[rstest]
#[case::pod("v1", "Pod", &[], "")]
#[case::deployment("apps/v1", "Deployment", &["spec", "template"], "/spec/template")]
#[case::statefulset("apps/v1", "StatefulSet", &["spec", "template"], "/spec/template")]
#[case::daemonset("apps/v1", "DaemonSet", &["spec", "template"], "/spec/template")]
#[case::replicaset("apps/v1", "ReplicaSet", &["spec", "template"], "/spec/template")]
#[case::replication_controller("v1", "ReplicationController", &["spec", "template"], "/spec/template")]
#[case::job("batch/v1", "Job", &["spec", "template"], "/spec/template")]
#[case::cronjob("batch/v1", "CronJob", &["spec", "jobTemplate", "spec", "template"], "/spec/jobTemplate/spec/template")]
fn injects_the_pod_template_of_each_kind(
    #[case] api_version: &str,
    #[case] kind: &str,
    #[case] path: &[&str],
    #[case] pointer: &str,
) {
    let input = workload(api_version, kind, path);
    let mut out = Vec::new();
    let report = run(input.as_bytes(), &mut out, &Settings::default()).unwrap();
    let out = String::from_utf8(out).unwrap();
    let template = template_at(&out, pointer);
    let spec = template.spec.unwrap();
    assert_eq!(
        spec.init_containers.unwrap()[0].name,
        "holysheep-sidecar",
        "{out}"
    );
    assert_eq!(
        template.metadata.unwrap().annotations.unwrap()["holysheep/status"],
        "injected"
    );
    assert_eq!(report.documents, 1);
    assert_eq!(
        report.injected,
        [format!("{}/web", kind.to_ascii_lowercase())]
    );
    // Running inject over its own output changes nothing.
    assert_eq!(inject_yaml(&out, &Settings::default()).unwrap(), out);
}

#[test]
fn other_documents_pass_through_and_order_is_kept() {
    let input = "\
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: cfg
data:
  z: '1'
  a: 'true'
---
apiVersion: example.com/v1
kind: Job
metadata:
  name: not-batch
spec:
  template:
    metadata:
      annotations:
        holysheep/inject: 'true'
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: plain
spec:
  template:
    spec:
      containers:
      - name: web
        image: web:1
";
    let out = inject_yaml(input, &Settings::default()).unwrap();
    assert_eq!(out, input, "nothing annotated: same YAML out");
}

#[test]
fn injected_output_keeps_key_order() {
    let out = inject_yaml(
        &workload("apps/v1", "Deployment", &["spec", "template"]),
        &Settings::default(),
    )
    .unwrap();
    assert!(
        out.starts_with("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n"),
        "{out}"
    );
    let labels = out.find("labels:").unwrap();
    let spec = out.find("    spec:").unwrap();
    assert!(labels < spec, "{out}");
}

#[test]
fn lists_are_injected_item_by_item() {
    let deployment = workload("apps/v1", "Deployment", &["spec", "template"]);
    let item: serde_yaml_ng::Value = serde_yaml_ng::from_str(&deployment).unwrap();
    let list = serde_yaml_ng::to_string(&serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}, item]
    }))
    .unwrap();
    let mut out = Vec::new();
    let report = run(list.as_bytes(), &mut out, &Settings::default()).unwrap();
    assert_eq!(report.injected, ["deployment/web"]);
    let out = String::from_utf8(out).unwrap();
    let template = template_at(&out, "/items/1/spec/template");
    assert_eq!(
        template.spec.unwrap().init_containers.unwrap()[0].name,
        "holysheep-sidecar"
    );
}

#[test]
fn empty_documents_are_dropped() {
    let input = format!("---\n---\n{}---\n", workload("v1", "Pod", &[]));
    let mut out = Vec::new();
    let report = run(input.as_bytes(), &mut out, &Settings::default()).unwrap();
    assert_eq!(report.documents, 1);
    assert!(!String::from_utf8(out).unwrap().starts_with("---"));
}

#[test]
fn errors_name_the_document_and_kind_and_write_nothing() {
    let bad = workload("batch/v1", "Job", &["spec", "template"]).replace(
        "holysheep/inject: \"true\"",
        "holysheep/inject: \"true\"\n        holysheep/port: \"http\"",
    );
    let input = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\n{bad}");
    let mut out = Vec::new();
    let message = run(input.as_bytes(), &mut out, &Settings::default())
        .unwrap_err()
        .to_string();
    assert!(message.contains("document 2 (job/web)"), "{message}");
    assert!(message.contains("holysheep/port=\"http\""), "{message}");
    assert!(out.is_empty(), "nothing written on error");
}

#[test]
fn invalid_yaml_names_the_document() {
    let input = "kind: Service\n---\nkind: [unclosed\n";
    let err = inject_yaml(input, &Settings::default()).unwrap_err();
    assert!(err.to_string().contains("document 2"), "{err}");
}

#[test]
fn template_that_is_not_a_pod_is_a_clear_error() {
    let input = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    holysheep/inject: 'true'\nspec:\n  containers: 7\n";
    let message = inject_yaml(input, &Settings::default())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("document 1 (pod/p)") && message.contains("not a valid Pod"),
        "{message}"
    );
}

#[test]
fn missing_file_names_the_file() {
    let err = run_path("/nonexistent/app.yaml", Vec::new(), &Settings::default()).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/app.yaml"), "{err}");
}

#[test]
fn report_summary() {
    let report = InjectReport {
        documents: 3,
        injected: vec!["deployment/web".into()],
        warnings: vec![],
    };
    assert_eq!(
        report.to_string(),
        "3 document(s), 1 injected: deployment/web"
    );
}

/// The annotated Deployment as JSON (what `kubectl get -o json` or a JSON file gives).
fn deployment_json() -> String {
    let yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&workload("apps/v1", "Deployment", &["spec", "template"])).unwrap();
    serde_json::to_string_pretty(&yaml).unwrap()
}

#[test]
fn json_in_comes_out_as_json() {
    let mut out = Vec::new();
    let report = run(deployment_json().as_bytes(), &mut out, &Settings::default()).unwrap();
    assert_eq!(report.injected, ["deployment/web"]);
    let out = String::from_utf8(out).unwrap();
    let json: Value = serde_json::from_str(&out).expect("the output is JSON");
    let init = &json["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(init["name"], "holysheep-sidecar");
    // Key order is kept in JSON too.
    assert!(
        out.starts_with("{\n  \"apiVersion\": \"apps/v1\",\n  \"kind\""),
        "{out}"
    );
    // Bad JSON names the document.
    let err = run(
        "{\"kind\": ".as_bytes(),
        &mut Vec::new(),
        &Settings::default(),
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "document 1 is not valid JSON");
}

#[test]
fn a_directory_is_injected_file_by_file_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let service = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n";
    std::fs::write(
        dir.path().join("b-web.yaml"),
        workload("apps/v1", "Deployment", &["spec", "template"]),
    )
    .unwrap();
    std::fs::write(dir.path().join("a-svc.yml"), service).unwrap();
    std::fs::write(dir.path().join("c-web.json"), deployment_json()).unwrap();
    std::fs::write(dir.path().join("README.md"), "not a manifest").unwrap();
    std::fs::create_dir(dir.path().join("nested.yaml")).unwrap();

    let mut out = Vec::new();
    let path = dir.path().to_str().unwrap();
    let report = run_path(path, &mut out, &Settings::default()).unwrap();
    assert_eq!(report.documents, 3);
    assert_eq!(report.injected, ["deployment/web", "deployment/web"]);
    let out = String::from_utf8(out).unwrap();
    let parts: Vec<&str> = out.split("---\n").collect();
    assert_eq!(parts.len(), 3, "{out}");
    assert_eq!(parts[0], service);
    assert!(parts[1].contains("name: holysheep-sidecar"), "{}", parts[1]);
    let json: Value = serde_json::from_str(parts[2]).expect("the JSON file stays JSON");
    assert_eq!(json["metadata"]["name"], "web");

    // An error names the file; nothing is written.
    let bad = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {holysheep/inject: \"true\", holysheep/port: \"0\"}\nspec:\n  containers: [{name: a, image: a}]\n";
    std::fs::write(dir.path().join("d-bad.yaml"), bad).unwrap();
    let mut out = Vec::new();
    let err = run_path(path, &mut out, &Settings::default()).unwrap_err();
    let want = format!(
        "{}: document 1 (pod/p): ",
        dir.path().join("d-bad.yaml").display()
    );
    assert!(err.to_string().starts_with(&want), "{err}");
    assert!(out.is_empty());

    let empty = tempfile::tempdir().unwrap();
    let err = run_path(
        empty.path().to_str().unwrap(),
        &mut Vec::new(),
        &Settings::default(),
    );
    assert!(
        err.unwrap_err()
            .to_string()
            .starts_with("no .yaml, .yml or .json file in directory")
    );
}
