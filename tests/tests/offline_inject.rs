//! The offline `inject` command against the webhook: `inject_cli` over
//! `manifests/examples/deployment.yaml` must give the Deployment's pod template exactly
//! what `mutation::mutate` gives the equivalent pod (same sidecar, volumes, env,
//! annotations), leave everything else alone, and produce a sidecar that the sidecar's
//! own flag parser accepts and that the example app's hard-coded URL reaches.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure should panic"
)]

use holysheep_e2e::pod::{self, inject_deployment_template};
use holysheep_e2e::{sidecar, workspace_path};
use holysheep_webhook::inject_cli;
use holysheep_webhook::settings::Settings;
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::Value;

const EXAMPLE: &str = "manifests/examples/deployment.yaml";

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap()
}

#[test]
fn inject_example_deployment_like_the_webhook() {
    let path = workspace_path(EXAMPLE);
    let mut out = Vec::new();
    let report = inject_cli::run_path(path.to_str().unwrap(), &mut out, &Settings::default())
        .unwrap_or_else(|e| panic!("inject {EXAMPLE}: {e}"));
    assert_eq!(report.injected, ["deployment/blurb-writer"]);

    let before = documents(&std::fs::read_to_string(&path).unwrap());
    let after = documents(&String::from_utf8(out).unwrap());
    assert_eq!(report.documents, before.len());
    assert_eq!(
        after.iter().map(kind).collect::<Vec<_>>(),
        before.iter().map(kind).collect::<Vec<_>>()
    );

    for (before, after) in before.iter().zip(&after) {
        if kind(before) != "Deployment" {
            assert_eq!(before, after, "{} changed", kind(before));
            continue;
        }
        // What the webhook would do to a pod its ReplicaSet creates from this template.
        let name = before["metadata"]["name"].as_str().unwrap();
        let expected =
            inject_deployment_template(&before["spec"]["template"], name, &Settings::default());
        let got = &after["spec"]["template"];
        let sidecar_of = |template: &Value| {
            let pod: Pod = serde_json::from_value(template.clone()).unwrap();
            let (container, _) = pod::sidecar(&pod);
            serde_json::to_value(container).unwrap()
        };
        // The sidecar first, for a readable failure; then the whole template.
        assert_eq!(sidecar_of(got), sidecar_of(&expected));
        assert_eq!(got, &expected);
        // Outside the template, the Deployment is untouched.
        let strip = |doc: &Value| {
            let mut doc = doc.clone();
            doc["spec"]["template"] = Value::Null;
            doc
        };
        assert_eq!(strip(after), strip(before));
    }
}

/// The injected template fits the sidecar, and the example app's own URL (the curl in its
/// args) is the base URL the webhook gives it, on the proxy port the sidecar listens on.
#[test]
fn injected_example_fits_the_sidecar_and_the_app() {
    let yaml = std::fs::read_to_string(workspace_path(EXAMPLE)).unwrap();
    let out = inject_cli::inject_yaml(&yaml, &Settings::default()).unwrap();
    let deployment = documents(&out)
        .into_iter()
        .find(|d| kind(d) == "Deployment")
        .unwrap();
    let pod: Pod = serde_json::from_value(deployment["spec"]["template"].clone()).unwrap();
    let (container, _) = pod::sidecar(&pod);
    let args = sidecar::args_of(container);
    assert!(args.listen.ip().is_loopback());
    assert!(
        args.config.is_some(),
        "holysheep/config gives HOLYSHEEP_CONFIG"
    );

    let app = pod::container(&pod, "app");
    let base = pod::env_value(app, "OPENAI_BASE_URL");
    assert_eq!(base, format!("http://127.0.0.1:{}/v1", args.listen.port()));
    let script = app.args.iter().flatten().cloned().collect::<String>();
    assert!(
        script.contains(&format!("{base}/chat/completions")),
        "the example app does not call {base}: {script}"
    );
}

/// Pod template of a workload document, by kind.
fn template(doc: &Value) -> Option<&Value> {
    let pointer = match kind(doc) {
        "Pod" => "",
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => "/spec/template",
        "CronJob" => "/spec/jobTemplate/spec/template",
        _ => return None,
    };
    doc.pointer(pointer)
}

/// Every example, through `inject`: each opted-in template (and only those) is injected,
/// into a sidecar whose flags the sidecar accepts; every app URL on loopback in the
/// example's scripts is the base URL the webhook gives it.
#[test]
fn every_example_injects_into_a_sidecar_that_starts() {
    let mut examples: Vec<_> = std::fs::read_dir(workspace_path("manifests/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    examples.sort();
    let mut injected_total = 0;
    for path in examples {
        let yaml = std::fs::read_to_string(&path).unwrap();
        let out = inject_cli::inject_yaml(&yaml, &Settings::default())
            .unwrap_or_else(|e| panic!("inject {}: {e}", path.display()));
        for (before, after) in documents(&yaml).iter().zip(&documents(&out)) {
            let Some(template) = template(after) else {
                assert_eq!(
                    before,
                    after,
                    "{}: {} changed",
                    path.display(),
                    kind(before)
                );
                continue;
            };
            let opted_in = template.pointer("/metadata/annotations/holysheep~1inject")
                == Some(&Value::from("true"));
            let pod: Pod = serde_json::from_value(template.clone()).unwrap();
            if !opted_in {
                assert_eq!(
                    before,
                    after,
                    "{}: not opted in, yet changed",
                    path.display()
                );
                continue;
            }
            injected_total += 1;
            let (container, _) = pod::sidecar(&pod);
            let args = sidecar::args_of(container);
            assert!(args.listen.ip().is_loopback(), "{}", path.display());
            let base = format!("http://127.0.0.1:{}/v1", args.listen.port());
            for app in pod::spec(&pod)
                .containers
                .iter()
                .filter(|c| c.name != container.name)
            {
                assert_eq!(pod::env_value(app, "OPENAI_BASE_URL"), base);
                let script: String = app
                    .command
                    .iter()
                    .chain(&app.args)
                    .flatten()
                    .cloned()
                    .collect();
                for (at, _) in script.match_indices("http://127.0.0.1:") {
                    assert!(
                        script[at..].starts_with(&base),
                        "{}: container {} calls {} instead of {base}",
                        path.display(),
                        app.name,
                        &script[at..(at + 40).min(script.len())]
                    );
                }
            }
        }
    }
    // deployment.yaml, job.yaml and cronjob.yaml each hold one opted-in template.
    assert!(
        injected_total >= 3,
        "only {injected_total} examples injected"
    );
}

/// The rules of the "restricted" Pod Security Standard that a pod spec can break, as the
/// namespace label `pod-security.kubernetes.io/enforce: restricted` checks them; one
/// message per broken rule, naming the container.
fn restricted_violations(spec: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let pod_sc = &spec["securityContext"];
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[host] == true {
            out.push(format!("{host}: true"));
        }
    }
    const VOLUMES: [&str; 8] = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        let obj = volume.as_object().unwrap();
        if !obj
            .keys()
            .filter(|k| *k != "name")
            .all(|k| VOLUMES.contains(&k.as_str()))
        {
            out.push(format!("volume {}: type not allowed", volume["name"]));
        }
    }
    let seccomp_ok = |sc: &Value| {
        matches!(
            sc["seccompProfile"]["type"].as_str(),
            Some("RuntimeDefault" | "Localhost")
        )
    };
    let containers = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec[k].as_array().into_iter().flatten());
    for c in containers {
        let (name, sc) = (&c["name"], &c["securityContext"]);
        if sc["privileged"] == true {
            out.push(format!("{name}: privileged"));
        }
        if sc["allowPrivilegeEscalation"] != false {
            out.push(format!("{name}: allowPrivilegeEscalation is not false"));
        }
        let non_root = sc["runAsNonRoot"] == true
            || (sc["runAsNonRoot"].is_null() && pod_sc["runAsNonRoot"] == true);
        if !non_root || sc["runAsUser"] == 0 {
            out.push(format!("{name}: may run as root"));
        }
        let seccomp = seccomp_ok(sc) || (sc["seccompProfile"].is_null() && seccomp_ok(pod_sc));
        if !seccomp {
            out.push(format!(
                "{name}: no RuntimeDefault/Localhost seccomp profile"
            ));
        }
        let caps = &sc["capabilities"];
        if !caps["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|c| c == "ALL"))
        {
            out.push(format!("{name}: capabilities do not drop ALL"));
        }
        if caps["add"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c != "NET_BIND_SERVICE")
        {
            out.push(format!("{name}: adds capabilities"));
        }
    }
    if pod_sc["runAsUser"] == 0 {
        out.push("pod runAsUser: 0".to_owned());
    }
    out
}

/// The example namespace enforces the restricted profile: every example workload, once
/// injected, must pass it (or the README's steps fail with a PodSecurity refusal), and
/// the probe pod of the README's dry run must be injected at all.
#[test]
fn injected_examples_and_the_probe_pod_satisfy_the_restricted_profile() {
    let mut checked = Vec::new();
    for file in [
        "probe-pod.yaml",
        "deployment.yaml",
        "job.yaml",
        "cronjob.yaml",
    ] {
        let path = workspace_path(&format!("manifests/examples/{file}"));
        let yaml = std::fs::read_to_string(&path).unwrap();
        let out = inject_cli::inject_yaml(&yaml, &Settings::default()).unwrap();
        for doc in documents(&out) {
            let Some(template) = template(&doc) else {
                continue;
            };
            assert_eq!(
                template["metadata"]["annotations"]["holysheep/status"],
                "injected",
                "{file}: {} not injected",
                kind(&doc)
            );
            let violations = restricted_violations(&template["spec"]);
            assert!(violations.is_empty(), "{file}: {violations:#?}");
            checked.push(file);
        }
    }
    assert_eq!(checked.len(), 4, "{checked:?}");

    // The checker itself: the pod `kubectl run --image=busybox` makes fails it.
    let busybox = serde_json::json!({"containers": [{"name": "probe", "image": "busybox"}]});
    assert_eq!(restricted_violations(&busybox).len(), 4);
}
