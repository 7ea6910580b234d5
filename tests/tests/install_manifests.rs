//! The install manifests (`manifests/base`, what `kubectl apply -k manifests/` applies)
//! against the code: the webhook Deployment's args and env are accepted by the webhook's
//! own clap `Cli`; the port it listens on is the one the Service targets and the
//! MutatingWebhookConfiguration calls; `--self-signed` names that very Service, namespace
//! and webhook configuration, so the serving certificate covers the name the apiserver
//! dials; the sidecar image it injects is the one this release builds; and the example
//! namespace carries the label the namespaceSelector wants.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure should panic"
)]

use std::collections::BTreeMap;

use clap::{Command, CommandFactory, FromArgMatches};
use holysheep_e2e::{read_workspace_file, workspace_path};
use holysheep_webhook::cli::{self, Cli};
use holysheep_webhook::settings::Settings;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Namespace, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde_json::Value;

/// Every object of `manifests/base`, by kind, read through `kustomization.yaml`.
fn base_objects() -> BTreeMap<String, Vec<Value>> {
    #[derive(Deserialize)]
    struct Kustomization {
        resources: Vec<String>,
    }
    let kustomization: Kustomization =
        serde_yaml_ng::from_str(&read_workspace_file("manifests/base/kustomization.yaml")).unwrap();
    // Every YAML file in base is listed, so nothing is silently left out of an install.
    let mut on_disk: Vec<String> = std::fs::read_dir(workspace_path("manifests/base"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    on_disk.sort();
    let mut listed = kustomization.resources.clone();
    listed.sort();
    assert_eq!(listed, on_disk, "kustomization.yaml resources vs files");

    let mut objects: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for file in kustomization.resources {
        let text = read_workspace_file(&format!("manifests/base/{file}"));
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap();
            if value.is_null() {
                continue;
            }
            let kind = value["kind"].as_str().unwrap().to_owned();
            objects.entry(kind).or_default().push(value);
        }
    }
    objects
}

/// The one object of `kind`, typed.
fn one<T: serde::de::DeserializeOwned>(objects: &BTreeMap<String, Vec<Value>>, kind: &str) -> T {
    let all = objects.get(kind).map(Vec::as_slice).unwrap_or_default();
    assert_eq!(all.len(), 1, "expected one {kind} in manifests/base");
    serde_json::from_value(all[0].clone()).unwrap()
}

/// The command with every env twin switched off, here and in every subcommand, so only
/// the given argv counts (whatever this process's env holds).
fn without_env(command: Command) -> Command {
    let names: Vec<String> = command
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    let mut command = command.mut_args(|arg| arg.env(None));
    for name in names {
        command = command.mut_subcommand(name, without_env);
    }
    command
}

/// The webhook's argv from its container: `args`, then one flag per env var a flag of
/// the `serve` subcommand reads; a downward-API `metadata.namespace` becomes `namespace`.
fn webhook_argv(container: &Container, namespace: &str) -> Vec<String> {
    let serve = Cli::command()
        .find_subcommand("serve")
        .expect("a serve subcommand")
        .clone();
    let mut argv = vec!["holysheep-webhook".to_owned()];
    argv.extend(container.args.iter().flatten().cloned());
    for var in container.env.iter().flatten() {
        let Some(long) = serve
            .get_arguments()
            .find(|a| {
                a.get_env()
                    .is_some_and(|e| e.to_str() == Some(var.name.as_str()))
            })
            .and_then(|a| a.get_long())
        else {
            continue;
        };
        let field = var
            .value_from
            .as_ref()
            .and_then(|f| f.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        let value = match (&var.value, field) {
            (Some(value), _) => value.clone(),
            (None, Some("metadata.namespace")) => namespace.to_owned(),
            other => panic!(
                "env {} has no value this test can resolve: {other:?}",
                var.name
            ),
        };
        argv.push(format!("--{long}={value}"));
    }
    argv
}

#[test]
fn webhook_deployment_service_and_webhook_configuration_agree() {
    let objects = base_objects();
    let deployment: Deployment = one(&objects, "Deployment");
    let service: Service = one(&objects, "Service");
    let mwc: MutatingWebhookConfiguration = one(&objects, "MutatingWebhookConfiguration");

    let namespace = deployment.metadata.namespace.clone().unwrap();
    let pod_spec = deployment.spec.unwrap().template.spec.unwrap();
    let container = &pod_spec.containers[0];
    let argv = webhook_argv(container, &namespace);
    let matches = without_env(Cli::command())
        .try_get_matches_from(&argv)
        .unwrap_or_else(|e| panic!("the webhook refuses its manifest args {argv:?}: {e}"));
    let cli = Cli::from_arg_matches(&matches).unwrap();
    let cli::Command::Serve(serve) = cli.command else {
        panic!("the Deployment does not run `serve`: {argv:?}")
    };

    // Listen port == the container port the Service targets.
    let ports = container.ports.as_deref().unwrap_or_default();
    let service_port = &service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    let target = match service_port.target_port.as_ref().unwrap() {
        IntOrString::String(name) => {
            ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("no container port named {name}"))
                .container_port
        }
        IntOrString::Int(port) => *port,
    };
    assert_eq!(
        i32::from(serve.listen.port()),
        target,
        "--listen vs Service targetPort"
    );

    // The webhook configuration calls that Service, on its port, at /mutate.
    let hook = &mwc.webhooks.as_ref().unwrap()[0];
    let called = hook.client_config.service.as_ref().unwrap();
    assert_eq!(Some(&called.name), service.metadata.name.as_ref());
    assert_eq!(Some(&called.namespace), service.metadata.namespace.as_ref());
    assert_eq!(called.port, Some(service_port.port));
    assert_eq!(called.path.as_deref(), Some("/mutate"));
    assert!(hook.admission_review_versions.iter().any(|v| v == "v1"));

    // --self-signed names the same Service, namespace and configuration, so the
    // certificate it issues covers `S.N.svc` (what the apiserver dials) and the caBundle
    // lands on the configuration that calls it.
    assert!(
        serve.self_signed.enabled,
        "the base install bootstraps its certificate"
    );
    assert_eq!(
        &serve.self_signed.service,
        service.metadata.name.as_ref().unwrap()
    );
    assert_eq!(
        serve.self_signed.namespace.as_deref(),
        Some(namespace.as_str())
    );
    assert_eq!(
        Some(&serve.self_signed.webhook_config),
        mwc.metadata.name.as_ref()
    );
    let names = holysheep_certs::serving_dns_names(&serve.self_signed.service, &namespace).unwrap();
    assert!(names.contains(&format!("{}.{}.svc", called.name, called.namespace)));
    // The cert dir is a writable volume: the root filesystem is read-only.
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| serve.self_signed.cert_dir.starts_with(&m.mount_path))
        .expect("--cert-dir is on a mounted volume");
    let volume = pod_spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap();
    assert!(
        volume.empty_dir.is_some(),
        "--cert-dir volume is not an emptyDir"
    );

    // The sidecar it injects is this release's (webhook and sidecar ship together).
    let settings = serve.settings.into_settings().unwrap();
    assert_eq!(settings.image, Settings::default().image);

    // Probes on the TLS port, on paths the webhook serves (see admission_tls).
    for (probe, path) in [
        (&container.startup_probe, "/readyz"),
        (&container.readiness_probe, "/readyz"),
        (&container.liveness_probe, "/healthz"),
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
        assert_eq!(get.port, IntOrString::String("https".to_owned()));
    }
}

/// Pods are sent on CREATE only from namespaces labelled `holysheep-injection=enabled`,
/// and the example namespace is labelled so.
#[test]
fn namespace_selector_matches_the_example_namespace() {
    let objects = base_objects();
    let mwc: MutatingWebhookConfiguration = one(&objects, "MutatingWebhookConfiguration");
    let hook = &mwc.webhooks.as_ref().unwrap()[0];
    let rules = hook.rules.as_deref().unwrap_or_default();
    assert!(rules.iter().any(|r| {
        r.resources.iter().flatten().any(|x| x == "pods")
            && r.operations.iter().flatten().any(|o| o == "CREATE")
    }));
    let selector = hook.namespace_selector.as_ref().unwrap();
    let wants = selector.match_expressions.iter().flatten().any(|e| {
        e.key == "holysheep-injection"
            && e.operator == "In"
            && e.values.iter().flatten().any(|v| v == "enabled")
    });
    assert!(
        wants,
        "namespaceSelector does not select holysheep-injection=enabled"
    );

    let example: Namespace =
        serde_yaml_ng::from_str(&read_workspace_file("manifests/examples/namespace.yaml")).unwrap();
    let labels = example.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("holysheep-injection").map(String::as_str),
        Some("enabled")
    );
    // The example workloads live in that namespace.
    let deployment = read_workspace_file("manifests/examples/deployment.yaml");
    let name = example.metadata.name.unwrap();
    assert!(deployment.contains(&format!("namespace: {name}")));
}
