//! Tests of the egress proxy and upstream CA settings: webhook defaults, the
//! `holysheep/egress-proxy` and `holysheep/upstream-ca` overrides, the credential volume
//! with its optional `egress-proxy-auth` item, and the CA volume in the sidecar only.
//! Same method as `tests`: the patch is applied with json-patch and read back typed.

use k8s_openapi::api::core::v1::{Pod, Volume};
use rstest::rstest;

use super::tests::{INJECT, env_value, inject_with, pod_json, run, sidecar_of};
use super::*;

const PROXY: &str = "http://proxy.corp.internal:3128";

fn corporate() -> Settings {
    Settings {
        egress_proxy: Some(PROXY.to_owned()),
        no_proxy: Some(".corp.internal,10.0.0.0/8".to_owned()),
        upstream_ca_config_map: Some("corp-ca".to_owned()),
        ..Settings::default()
    }
}

fn volume<'a>(pod: &'a Pod, name: &str) -> Option<&'a Volume> {
    pod.spec
        .as_ref()?
        .volumes
        .as_ref()?
        .iter()
        .find(|v| v.name == name)
}

#[test]
fn defaults_give_the_sidecar_proxy_no_proxy_and_ca() {
    let injected = inject_with(&pod_json(&[INJECT]), &corporate());
    let sidecar = sidecar_of(&injected);
    assert_eq!(env_value(sidecar, "HOLYSHEEP_EGRESS_PROXY"), Some(PROXY));
    assert_eq!(
        env_value(sidecar, "NO_PROXY"),
        Some(".corp.internal,10.0.0.0/8")
    );
    assert_eq!(
        env_value(sidecar, "HOLYSHEEP_UPSTREAM_CA_FILE"),
        Some("/var/run/holysheep/upstream-ca/ca.crt")
    );
    let ca = volume(&injected, "holysheep-upstream-ca").unwrap();
    let ca = ca.config_map.as_ref().unwrap();
    assert_eq!(ca.name, "corp-ca");
    assert_eq!(
        ca.optional,
        Some(true),
        "a missing CA must not stop the pod"
    );
    let items = ca.items.as_ref().unwrap();
    assert_eq!(
        (items[0].key.as_str(), items[0].path.as_str()),
        ("ca.crt", "ca.crt")
    );
    assert_eq!(ca.default_mode, Some(0o444));
    let mount = sidecar
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "holysheep-upstream-ca")
        .unwrap();
    assert_eq!(mount.mount_path, "/var/run/holysheep/upstream-ca");
    assert_eq!(mount.read_only, Some(true));
}

#[test]
fn with_a_proxy_the_credentials_volume_adds_an_optional_auth_file() {
    let injected = inject_with(&pod_json(&[INJECT]), &corporate());
    let credentials = volume(&injected, "holysheep-credentials").unwrap();
    assert!(credentials.secret.is_none());
    let projected = credentials.projected.as_ref().unwrap();
    assert_eq!(projected.default_mode, Some(0o444));
    let sources: Vec<_> = projected
        .sources
        .iter()
        .flatten()
        .map(|s| s.secret.as_ref().unwrap())
        .collect();
    assert_eq!(sources.len(), 2);
    // The API key stays required; only the proxy's auth may be missing.
    let item = |i: usize| &sources[i].items.as_ref().unwrap()[0];
    assert_eq!(sources[0].name, "holysheep-credentials");
    assert_eq!(sources[0].optional, None);
    assert_eq!(
        (item(0).key.as_str(), item(0).path.as_str(), item(0).mode),
        ("HOLYSHEEP_API_KEY", "api-key", Some(0o444))
    );
    assert_eq!(sources[1].name, "holysheep-credentials");
    assert_eq!(sources[1].optional, Some(true));
    assert_eq!(
        (item(1).key.as_str(), item(1).path.as_str(), item(1).mode),
        ("egress-proxy-auth", "egress-proxy-auth", Some(0o444))
    );
    let mount = sidecar_of(&injected)
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "holysheep-credentials")
        .unwrap();
    assert_eq!(mount.mount_path, "/var/run/secrets/holysheep");
}

#[test]
fn the_secret_overrides_apply_to_both_sources() {
    let pod = pod_json(&[
        INJECT,
        ("holysheep/secret", "team-llm"),
        ("holysheep/secret-key", "key"),
    ]);
    let injected = inject_with(&pod, &corporate());
    let credentials = volume(&injected, "holysheep-credentials").unwrap();
    let sources = credentials
        .projected
        .as_ref()
        .unwrap()
        .sources
        .as_ref()
        .unwrap();
    let names: Vec<_> = sources
        .iter()
        .map(|s| s.secret.as_ref().unwrap().name.as_str())
        .collect();
    assert_eq!(names, ["team-llm", "team-llm"]);
    let key = &sources[0].secret.as_ref().unwrap().items.as_ref().unwrap()[0].key;
    assert_eq!(key, "key");
}

#[test]
fn app_containers_get_neither_the_proxy_nor_the_ca() {
    let injected = inject_with(&pod_json(&[INJECT]), &corporate());
    let app = &injected.spec.as_ref().unwrap().containers[0];
    assert_eq!(app.name, "app");
    assert!(app.volume_mounts.is_none(), "{:?}", app.volume_mounts);
    for name in [
        "HOLYSHEEP_EGRESS_PROXY",
        "NO_PROXY",
        "HOLYSHEEP_UPSTREAM_CA_FILE",
    ] {
        assert_eq!(env_value(app, name), None, "{name}");
    }
}

#[rstest]
#[case::annotation_wins(Some("http://team:8080"), Some(PROXY), Some("http://team:8080"))]
#[case::annotation_alone(Some("http://team:8080"), None, Some("http://team:8080"))]
#[case::none_disables_the_default(Some("none"), Some(PROXY), None)]
#[case::none_without_default(Some("none"), None, None)]
#[case::default(None, Some(PROXY), Some(PROXY))]
#[case::nothing(None, None, None)]
fn egress_proxy_choice(
    #[case] annotation: Option<&str>,
    #[case] default: Option<&str>,
    #[case] want: Option<&str>,
) {
    let settings = Settings {
        egress_proxy: default.map(str::to_owned),
        no_proxy: Some("localhost".to_owned()),
        ..Settings::default()
    };
    let mut annotations = vec![INJECT];
    annotations.extend(annotation.map(|a| ("holysheep/egress-proxy", a)));
    let injected = inject_with(&pod_json(&annotations), &settings);
    let sidecar = sidecar_of(&injected);
    assert_eq!(env_value(sidecar, "HOLYSHEEP_EGRESS_PROXY"), want);
    // NO_PROXY and the auth file only come with a proxy.
    let no_proxy = env_value(sidecar, "NO_PROXY");
    assert_eq!(no_proxy, want.map(|_| "localhost"));
    let credentials = volume(&injected, "holysheep-credentials").unwrap();
    assert_eq!(credentials.projected.is_some(), want.is_some());
    assert_eq!(credentials.secret.is_some(), want.is_none());
}

#[rstest]
#[case::annotation_wins(Some("team-ca"), Some("corp-ca"), Some("team-ca"))]
#[case::annotation_alone(Some("team-ca"), None, Some("team-ca"))]
#[case::default(None, Some("corp-ca"), Some("corp-ca"))]
#[case::nothing(None, None, None)]
fn upstream_ca_choice(
    #[case] annotation: Option<&str>,
    #[case] default: Option<&str>,
    #[case] want: Option<&str>,
) {
    let settings = Settings {
        upstream_ca_config_map: default.map(str::to_owned),
        ..Settings::default()
    };
    let mut annotations = vec![INJECT];
    annotations.extend(annotation.map(|a| ("holysheep/upstream-ca", a)));
    let injected = inject_with(&pod_json(&annotations), &settings);
    let ca = volume(&injected, "holysheep-upstream-ca");
    assert_eq!(
        ca.map(|v| v.config_map.as_ref().unwrap().name.as_str()),
        want
    );
    assert_eq!(
        env_value(sidecar_of(&injected), "HOLYSHEEP_UPSTREAM_CA_FILE").is_some(),
        want.is_some()
    );
}

#[test]
fn a_pod_volume_named_like_the_ca_volume_is_refused() {
    let mut pod = pod_json(&[INJECT]);
    pod["spec"]["volumes"] = serde_json::json!([{"name": "holysheep-upstream-ca", "emptyDir": {}}]);
    let message = run(&pod, &corporate()).unwrap_err().to_string();
    assert!(message.contains("holysheep-upstream-ca"), "{message}");
}

#[test]
fn a_proxy_url_with_credentials_is_refused_without_echoing_them() {
    let pod = pod_json(&[
        INJECT,
        ("holysheep/egress-proxy", "http://me:hunter2@p:3128"),
    ]);
    let message = run(&pod, &Settings::default()).unwrap_err().to_string();
    assert!(message.contains("holysheep/egress-proxy"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}
