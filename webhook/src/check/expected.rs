//! What the webhook would inject now: its sidecar settings, read from its own Deployment,
//! and the stamps a pod would get with them.
//!
//! The settings come from the webhook container's `args` (after `serve`) and its literal
//! `env` values, parsed by the very clap definition of `serve` (the process's own
//! environment is ignored), and the stamps from the same `Overrides::parse`,
//! `SidecarSpec::resolve` and `stamps` functions the mutation uses. So a pod injected by
//! the running webhook always matches, and a pod whose stamps differ really would get
//! another sidecar if it were re-created.
//!
//! What it does not do: read the cluster (`gather`) or decide what a difference means
//! (`analyze`).

use std::collections::BTreeMap;

use clap::{CommandFactory as _, FromArgMatches as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Container;

use crate::annotations::Overrides;
use crate::cli::{Cli, ServeArgs};
use crate::settings::Settings;
use crate::sidecar::SidecarSpec;
use crate::stamps;

/// Name of the webhook's container in the manifests; any other name falls back to the
/// container whose command line says `serve`.
pub const WEBHOOK_CONTAINER: &str = "webhook";

/// The two stamps of an injected pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamps {
    /// `holysheep/sidecar-version`.
    pub sidecar_version: String,
    /// `holysheep/injected-config`.
    pub injected_config: String,
}

/// The stamps the webhook would write on a pod with these annotations, or the reason it
/// would refuse the pod's `holysheep/*` annotations.
pub fn stamps_for(
    annotations: &BTreeMap<String, String>,
    settings: &Settings,
) -> Result<Stamps, crate::annotations::AnnotationError> {
    let overrides = Overrides::parse(annotations)?;
    let spec = SidecarSpec::resolve(settings, overrides);
    Ok(Stamps {
        sidecar_version: stamps::sidecar_version(&spec.image),
        injected_config: stamps::config_hash(&spec),
    })
}

/// Why the webhook's settings could not be read from its Deployment.
#[derive(Debug, thiserror::Error)]
pub enum SettingsSourceError {
    /// No container runs `holysheep-webhook serve`.
    #[error(
        "no container of Deployment {deployment} runs `serve` (looked for container \
         {WEBHOOK_CONTAINER:?} or a command line containing `serve`): pass the right \
         --webhook-deployment"
    )]
    NoServeContainer {
        /// `namespace/name`.
        deployment: String,
    },
    /// The args (plus env) do not parse as `serve` flags.
    #[error(
        "the args of container {container:?} of Deployment {deployment} do not parse as \
         `holysheep-webhook serve` flags: {message}"
    )]
    Args {
        /// `namespace/name`.
        deployment: String,
        /// The container.
        container: String,
        /// clap's message, first line.
        message: String,
    },
    /// The sidecar flags parse but are invalid.
    #[error("the sidecar settings of Deployment {deployment} are invalid: {source}")]
    Settings {
        /// `namespace/name`.
        deployment: String,
        /// Which flag and why.
        #[source]
        source: crate::settings::SettingsError,
    },
}

/// The webhook's settings, and env entries that could not be taken into account.
#[derive(Debug)]
pub struct WebhookSettings {
    /// What `serve` in that Deployment injects.
    pub settings: Settings,
    /// `serve` env twins set from a ConfigMap or Secret (`valueFrom`), which `check`
    /// cannot resolve: their flag keeps its default here.
    pub unresolved_env: Vec<String>,
}

/// Reads the `serve` settings out of the webhook Deployment's pod template.
pub fn from_deployment(deployment: &Deployment) -> Result<WebhookSettings, SettingsSourceError> {
    let name = format!(
        "{}/{}",
        deployment.metadata.namespace.as_deref().unwrap_or_default(),
        deployment.metadata.name.as_deref().unwrap_or_default()
    );
    let containers = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let container = containers
        .iter()
        .find(|c| c.name == WEBHOOK_CONTAINER)
        .or_else(|| containers.iter().find(|c| serve_args(c).is_some()))
        .ok_or_else(|| SettingsSourceError::NoServeContainer {
            deployment: name.clone(),
        })?;
    let args = serve_args(container).ok_or_else(|| SettingsSourceError::NoServeContainer {
        deployment: name.clone(),
    })?;
    parse_serve(container, args).map_err(|e| match e {
        ParseFailure::Args(message) => SettingsSourceError::Args {
            deployment: name.clone(),
            container: container.name.clone(),
            message,
        },
        ParseFailure::Settings(source) => SettingsSourceError::Settings {
            deployment: name.clone(),
            source,
        },
    })
}

/// The words after `serve` in `command` + `args`; `None` when `serve` is absent.
fn serve_args(container: &Container) -> Option<Vec<String>> {
    let words: Vec<String> = container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .cloned()
        .collect();
    // Neither set: the image's default command, `serve --self-signed` (Dockerfile CMD).
    if words.is_empty() {
        return Some(vec!["--self-signed".to_owned()]);
    }
    let at = words.iter().position(|w| w == "serve")?;
    Some(words[at + 1..].to_vec())
}

enum ParseFailure {
    Args(String),
    Settings(crate::settings::SettingsError),
}

fn parse_serve(container: &Container, args: Vec<String>) -> Result<WebhookSettings, ParseFailure> {
    let serve = Cli::command()
        .find_subcommand("serve")
        .cloned()
        .ok_or_else(|| ParseFailure::Args("no serve subcommand".to_owned()))?;
    // Only the Deployment's env counts, never the env of whoever runs `check`; a flag
    // given both ways keeps the command line's value, as clap does.
    let serve = serve
        .mut_args(|arg| arg.env(None::<&str>))
        .args_override_self(true);
    let literal: BTreeMap<&str, &str> = container
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.as_str(), e.value.as_deref()?)))
        .collect();
    let mut words = vec!["serve".to_owned()];
    let mut unresolved_env = Vec::new();
    for arg in Cli::command()
        .find_subcommand("serve")
        .into_iter()
        .flat_map(|c| c.get_arguments())
    {
        let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        let env = env.to_string_lossy();
        match literal.get(env.as_ref()) {
            Some(value) if arg.get_action().takes_values() => {
                words.push(format!("--{long}={value}"));
            }
            Some(value) if matches!(*value, "true" | "1" | "yes" | "on") => {
                words.push(format!("--{long}"));
            }
            Some(_) => {}
            None => {
                let from_ref = container
                    .env
                    .iter()
                    .flatten()
                    .any(|e| e.name == env && e.value_from.is_some());
                if from_ref && long != "namespace" {
                    unresolved_env.push(env.into_owned());
                }
            }
        }
    }
    words.extend(args);
    let matches = serve.try_get_matches_from(words).map_err(|e| {
        let text = e.to_string();
        ParseFailure::Args(text.lines().next().unwrap_or_default().to_owned())
    })?;
    let serve_args =
        ServeArgs::from_arg_matches(&matches).map_err(|e| ParseFailure::Args(e.to_string()))?;
    let settings = serve_args
        .settings
        .into_settings()
        .map_err(ParseFailure::Settings)?;
    Ok(WebhookSettings {
        settings,
        unresolved_env,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(args: &[&str], env: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "holysheep-webhook", "namespace": "holysheep-system"},
            "spec": {"selector": {}, "template": {"spec": {"containers": [
                {"name": "webhook", "image": "w", "args": args, "env": env}
            ]}}}
        }))
        .unwrap()
    }

    #[test]
    fn reads_the_manifest_args_and_ignores_unrelated_flags() {
        let d = deployment(
            &[
                "serve",
                "--self-signed",
                "--listen=0.0.0.0:8443",
                "--cert-dir=/var/run/holysheep-webhook/certs",
                "--sidecar-image=ghcr.io/holysheep/holysheep-sidecar:0.1.0",
            ],
            json!([{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                   {"name": "RUST_LOG", "value": "info"}]),
        );
        let found = from_deployment(&d).unwrap();
        assert_eq!(
            found.settings.image,
            "ghcr.io/holysheep/holysheep-sidecar:0.1.0"
        );
        assert!(
            found.unresolved_env.is_empty(),
            "{:?}",
            found.unresolved_env
        );
    }

    #[test]
    fn env_twins_count_and_args_win_over_them() {
        let d = deployment(
            &[
                "serve",
                "--tls-cert=/c/tls.crt",
                "--tls-key=/c/tls.key",
                "--proxy-port=8181",
            ],
            json!([{"name": "HOLYSHEEP_PROXY_PORT", "value": "7000"},
                   {"name": "HOLYSHEEP_SIDECAR_EGRESS_PROXY", "value": "http://p:3128"},
                   {"name": "HOLYSHEEP_SECRET_NAME", "valueFrom": {"configMapKeyRef": {"name": "x", "key": "y"}}}]),
        );
        let found = from_deployment(&d).unwrap();
        assert_eq!(found.settings.proxy_port, 8181);
        assert_eq!(
            found.settings.egress_proxy.as_deref(),
            Some("http://p:3128")
        );
        assert_eq!(found.unresolved_env, ["HOLYSHEEP_SECRET_NAME"]);
    }

    #[test]
    fn no_command_and_no_args_is_the_images_default_serve() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "holysheep-webhook", "namespace": "holysheep-system"},
            "spec": {"selector": {}, "template": {"spec": {"containers": [
                {"name": "webhook", "image": "w",
                 "env": [{"name": "HOLYSHEEP_SIDECAR_IMAGE", "value": "r.io/s:3"}]}
            ]}}}
        }))
        .unwrap();
        assert_eq!(from_deployment(&d).unwrap().settings.image, "r.io/s:3");
    }

    #[test]
    fn the_self_signed_flag_may_come_from_env() {
        let d = deployment(
            &["serve"],
            json!([{"name": "HOLYSHEEP_SELF_SIGNED", "value": "true"}]),
        );
        assert!(from_deployment(&d).is_ok());
    }

    #[test]
    fn bad_args_and_bad_values_name_the_deployment_and_the_flag() {
        let err = from_deployment(&deployment(
            &["serve", "--self-signed", "--bogus"],
            json!([]),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("holysheep-system/holysheep-webhook"), "{err}");
        assert!(err.contains("--bogus"), "{err}");
        let err = from_deployment(&deployment(
            &["serve", "--self-signed", "--proxy-port=0"],
            json!([]),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("--proxy-port"), "{err}");
        let err = from_deployment(&deployment(&["run"], json!([])))
            .unwrap_err()
            .to_string();
        assert!(err.contains("serve"), "{err}");
    }

    #[test]
    fn a_pod_injected_by_the_mutation_has_exactly_the_expected_stamps() {
        let settings = Settings {
            image: "r.io/hs/sidecar:9.9".into(),
            egress_proxy: Some("http://p:3128".into()),
            ..Settings::default()
        };
        let mut pod = json!({
            "metadata": {"name": "web-5d4b-x", "ownerReferences": [{"apiVersion": "apps/v1",
                "kind": "ReplicaSet", "name": "web-5d4b", "uid": "u", "controller": true}],
              "annotations": {
                "holysheep/inject": "true", "holysheep/port": "8181",
                "holysheep/proxy-memory-limit": "256Mi",
                "holysheep/budget-usd-per-day": "50"}},
            "spec": {"containers": [{"name": "app", "image": "app"}]}
        });
        let typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod.clone()).unwrap();
        let patch = crate::mutation::mutate(&typed, &settings).unwrap().unwrap();
        json_patch::patch(&mut pod, &patch).unwrap();
        let annotations: BTreeMap<String, String> =
            serde_json::from_value(pod["metadata"]["annotations"].clone()).unwrap();
        let want = stamps_for(&annotations, &settings).unwrap();
        assert_eq!(
            annotations["holysheep/sidecar-version"],
            want.sidecar_version
        );
        assert_eq!(
            annotations["holysheep/injected-config"],
            want.injected_config
        );
        assert_eq!(want.sidecar_version, "9.9");
        // Another webhook setting is another hash.
        let other = stamps_for(&annotations, &Settings::default()).unwrap();
        assert_ne!(other.injected_config, want.injected_config);
    }

    #[test]
    fn stamps_follow_the_pod_overrides() {
        let settings = Settings::default();
        let plain = stamps_for(&BTreeMap::new(), &settings).unwrap();
        assert_eq!(plain.sidecar_version, env!("CARGO_PKG_VERSION"));
        let moved: BTreeMap<String, String> =
            [("holysheep/port".to_owned(), "8181".to_owned())].into();
        assert_ne!(
            stamps_for(&moved, &settings).unwrap().injected_config,
            plain.injected_config
        );
        let bad: BTreeMap<String, String> = [("holysheep/port".to_owned(), "x".to_owned())].into();
        assert!(stamps_for(&bad, &settings).is_err());
    }
}
