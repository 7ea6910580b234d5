//! webhook -> sidecar contract: the container the webhook injects is one the sidecar
//! accepts and serves as the pod spec says.
//!
//! For each case the pod goes through `mutation::mutate` and the patch is applied; then
//! the injected container's env becomes flags for the sidecar's own clap `Args` (no env
//! var the sidecar ignores, none missing), and the pod spec is checked against what the
//! sidecar does with those flags: loopback listen address, key file inside the credential
//! volume's `api-key` item, config file inside the ConfigMap volume's `config.yaml`,
//! probes and scrape annotations on the admin port paths the sidecar serves (proven by
//! running it), and the apps' base URL on the proxy port.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure should panic"
)]

use std::path::Path;

use holysheep_e2e::kubelet::{Mounted, Objects, mount_holding};
use holysheep_e2e::pod::{self, APP};
use holysheep_e2e::sidecar::{self, Running};
use holysheep_e2e::{http_client, read_workspace_file};
use holysheep_sidecar::config::{Args, Config, DEFAULT_API_KEY_FILE, UpstreamBase};
use holysheep_webhook::settings::Settings;
use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The placeholder the apps get instead of the key.
const PLACEHOLDER: &str = "injected-by-holysheep";

/// Checks every part of the contract that holds for any injection and returns the flags
/// the sidecar parsed from the injected container.
fn check_contract(injected: &Pod) -> Args {
    let (container, _) = pod::sidecar(injected);
    let args = sidecar::args_of(container);

    // Loopback only: another pod reaching the proxy would spend this pod's key.
    assert!(
        args.listen.ip().is_loopback(),
        "HOLYSHEEP_LISTEN {} is not loopback",
        args.listen
    );

    check_key_file(injected, container, &args);
    check_config_file(injected, container, &args);
    check_admin_port(injected, container, &args);
    check_app_env(injected, &args);
    args
}

/// The key file the sidecar reads is the `api-key` item of the credential Secret volume,
/// mounted read-only in the sidecar and in no app container.
fn check_key_file(injected: &Pod, container: &Container, args: &Args) {
    let (mount, relative) = mount_holding(container, &args.api_key_file).unwrap_or_else(|| {
        panic!(
            "the key file {} is in no volume mounted in the sidecar",
            args.api_key_file.display()
        )
    });
    assert_eq!(mount.name, "holysheep-credentials");
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(relative, Path::new("api-key"));
    let volume = pod::volume(injected, &mount.name);
    let secret = volume
        .secret
        .as_ref()
        .expect("credential volume is a Secret");
    let items = secret.items.as_deref().unwrap_or_default();
    assert!(
        items.iter().any(|i| Path::new(&i.path) == relative),
        "the Secret volume has no item with path {relative:?}: {items:?}"
    );
    let spec = pod::spec(injected);
    let apps = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for app in apps.filter(|c| c.name != container.name) {
        let mounts = app.volume_mounts.iter().flatten();
        assert!(
            mounts.clone().all(|m| m.name != mount.name),
            "app container {} mounts the credential volume",
            app.name
        );
        assert!(pod::env(app, "HOLYSHEEP_API_KEY").is_none());
    }
}

/// `HOLYSHEEP_CONFIG`, when set, is the `config.yaml` item of the ConfigMap volume.
fn check_config_file(injected: &Pod, container: &Container, args: &Args) {
    let Some(config) = &args.config else {
        return;
    };
    let (mount, relative) = mount_holding(container, config).unwrap_or_else(|| {
        panic!(
            "the config file {} is in no mounted volume",
            config.display()
        )
    });
    let volume = pod::volume(injected, &mount.name);
    let source = volume
        .config_map
        .as_ref()
        .expect("config volume is a ConfigMap");
    let items = source.items.as_deref().unwrap_or_default();
    assert!(
        items
            .iter()
            .any(|i| i.key == "config.yaml" && Path::new(&i.path) == relative),
        "the ConfigMap volume has no item config.yaml at {relative:?}: {items:?}"
    );
}

/// Probes, the container port and the Prometheus annotations name the admin port; the
/// probe paths are `/readyz` (startup, readiness) and `/healthz` (liveness).
fn check_admin_port(injected: &Pod, container: &Container, args: &Args) {
    let admin = i32::from(args.admin_listen.port());
    let probe_path = |probe: &Option<Probe>, name: &str| {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("the sidecar has no HTTP {name} probe"));
        assert_eq!(get.port, IntOrString::Int(admin), "{name} probe port");
        assert_eq!(get.scheme.as_deref(), Some("HTTP"), "{name} probe scheme");
        get.path.clone().unwrap()
    };
    assert_eq!(probe_path(&container.startup_probe, "startup"), "/readyz");
    assert_eq!(
        probe_path(&container.readiness_probe, "readiness"),
        "/readyz"
    );
    assert_eq!(
        probe_path(&container.liveness_probe, "liveness"),
        "/healthz"
    );
    let ports = container.ports.as_deref().unwrap_or_default();
    assert!(
        ports.iter().any(|p| p.container_port == admin),
        "admin port {admin} is not a containerPort of the sidecar: {ports:?}"
    );
    let annotations = injected.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations["prometheus.io/port"], admin.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    assert_eq!(annotations["prometheus.io/scrape"], "true");
}

/// The apps call the proxy port on loopback, with the placeholder key.
fn check_app_env(injected: &Pod, args: &Args) {
    let base = format!("http://127.0.0.1:{}/v1", args.listen.port());
    let app = pod::container(injected, APP);
    for name in ["OPENAI_BASE_URL", "OPENAI_API_BASE", "HOLYSHEEP_BASE_URL"] {
        assert_eq!(pod::env_value(app, name), base, "{name} of the app");
    }
    assert_eq!(pod::env_value(app, "OPENAI_API_KEY"), PLACEHOLDER);
}

#[test]
fn default_injection_is_what_the_sidecar_parses() {
    let injected = pod::inject(&pod::opted_in_pod(&[]), &Settings::default());
    let args = check_contract(&injected);

    assert_eq!(args.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(args.admin_listen.to_string(), "0.0.0.0:9090");
    // Both sides agree on the key file's path, so either default alone would do.
    assert_eq!(args.api_key_file, Path::new(DEFAULT_API_KEY_FILE));
    assert_eq!(
        args.upstream,
        "https://api.holysheep.ai/v1"
            .parse::<UpstreamBase>()
            .unwrap()
    );
    assert_eq!(args.config, None);
    // Native sidecar: first init container, kept running.
    let (container, is_init) = pod::sidecar(&injected);
    assert!(is_init);
    assert_eq!(container.restart_policy.as_deref(), Some("Always"));
    let first_init = &pod::spec(&injected).init_containers.as_ref().unwrap()[0];
    assert_eq!(first_init.name, container.name);
    assert_eq!(container.args, None);
}

#[test]
fn every_override_still_fits_the_sidecar() {
    let annotations = [
        ("holysheep/port", "18080"),
        ("holysheep/admin-port", "19091"),
        ("holysheep/secret", "team-llm-key"),
        ("holysheep/secret-key", "key"),
        ("holysheep/config", "holysheep-config"),
        (
            "holysheep/upstream",
            "http://llm-gateway.ai.svc:8000/openai/v1",
        ),
        ("holysheep/native-sidecar", "false"),
    ];
    let injected = pod::inject(&pod::opted_in_pod(&annotations), &Settings::default());
    let args = check_contract(&injected);

    assert_eq!(args.listen.to_string(), "127.0.0.1:18080");
    assert_eq!(args.admin_listen.port(), 19091);
    let want: UpstreamBase = "http://llm-gateway.ai.svc:8000/openai/v1".parse().unwrap();
    assert_eq!(args.upstream, want);
    assert_eq!(want.path_prefix, "/openai/v1");
    assert!(args.config.is_some());
    let (container, is_init) = pod::sidecar(&injected);
    assert!(
        !is_init,
        "holysheep/native-sidecar: false gives a plain container"
    );
    assert_eq!(container.restart_policy, None);
    let secret = pod::volume(&injected, "holysheep-credentials")
        .secret
        .as_ref()
        .unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("team-llm-key"));
    let item = &secret.items.as_ref().unwrap()[0];
    assert_eq!((item.key.as_str(), item.path.as_str()), ("key", "api-key"));
}

#[test]
fn webhook_flag_defaults_fit_the_sidecar() {
    let settings = Settings {
        proxy_port: 7001,
        admin_port: 7002,
        upstream: Some("https://eu.api.holysheep.ai/v1".to_owned()),
        ..Settings::default()
    };
    let injected = pod::inject(&pod::opted_in_pod(&[]), &settings);
    let args = check_contract(&injected);
    assert_eq!(args.listen.port(), 7001);
    assert_eq!(args.admin_listen.port(), 7002);
    assert_eq!(args.upstream.authority.as_str(), "eu.api.holysheep.ai");
}

/// The webhook may be stricter than the sidecar, never looser: an upstream it accepts in
/// `holysheep/upstream` must start the sidecar, or the pod crash-loops after a successful
/// admission.
#[test]
fn every_upstream_the_webhook_accepts_starts_the_sidecar() {
    let cases = [
        "https://api.holysheep.ai/v1",
        "https://api.holysheep.ai/v1/",
        "https://api.holysheep.ai",
        "http://gateway.internal:8080/v1",
        "http://10.0.0.7:8000/v1",
        "http://[fd00::7]:8000/v1",
        "https://api.holysheep.ai/v1#frag",
        "ftp://api.holysheep.ai/v1",
        "https://user:pw@api.holysheep.ai/v1",
        "api.holysheep.ai/v1",
        "HTTPS://api.holysheep.ai/v1",
    ];
    // The first ones are plainly valid: the webhook must admit them (else this test
    // would pass by refusing everything).
    const WELL_FORMED: usize = 6;
    let mut mismatches = Vec::new();
    for (index, upstream) in cases.into_iter().enumerate() {
        let pod = pod::opted_in_pod(&[("holysheep/upstream", upstream)]);
        let admitted = holysheep_webhook::mutation::mutate(&pod, &Settings::default()).is_ok();
        assert!(admitted || index >= WELL_FORMED, "{upstream:?} refused");
        let argv = vec![sidecar::BINARY.to_owned(), format!("--upstream={upstream}")];
        if let (true, Err(e)) = (admitted, sidecar::parse(&argv)) {
            mismatches.push(format!("{upstream:?}: admitted, sidecar refuses: {e}"));
        }
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}

/// Both sides must treat a query string in the upstream alike: a value the webhook admits
/// but the sidecar refuses at start would leave an admitted pod crash-looping.
#[test]
fn an_upstream_with_a_query_string_is_refused_by_both_or_neither() {
    let upstream = "https://api.holysheep.ai/v1?tenant=shop";
    let pod = pod::opted_in_pod(&[("holysheep/upstream", upstream)]);
    let admitted = holysheep_webhook::mutation::mutate(&pod, &Settings::default());
    let argv = vec![sidecar::BINARY.to_owned(), format!("--upstream={upstream}")];
    let started = sidecar::parse(&argv);
    assert_eq!(
        admitted.is_ok(),
        started.is_ok(),
        "webhook: {:?}; sidecar: {:?}",
        admitted.err().map(|e| e.to_string()),
        started.err().map(|e| e.to_string())
    );
}

/// The example ConfigMap (`manifests/examples/sidecar-config.yaml`) is what the webhook
/// mounts (name and key), and the sidecar accepts its `config.yaml`.
#[test]
fn example_configmap_is_a_valid_sidecar_config() {
    let objects = Objects::from_manifests(&read_workspace_file(
        "manifests/examples/sidecar-config.yaml",
    ));
    let annotations = [("holysheep/config", "holysheep-config")];
    let injected = pod::inject(&pod::opted_in_pod(&annotations), &Settings::default());
    let (container, _) = pod::sidecar(&injected);
    let args = sidecar::args_of(container);
    // Only the config volume: the example Secret is checked by the full flow.
    let mut with_key = objects.clone();
    with_key.set_secret("holysheep-credentials", "HOLYSHEEP_API_KEY", "k");
    let mounted = Mounted::mount(pod::spec(&injected), container, &with_key).unwrap();
    let path = mounted.host_path(args.config.as_ref().unwrap()).unwrap();
    let config = holysheep_sidecar::config::load_file(&path)
        .unwrap_or_else(|e| panic!("the example config is refused: {e}"));
    assert_ne!(config, Config::default(), "the example changes nothing");
    assert_eq!(config.aliases["fast"], "gemini-2.5-flash");
}

/// The probe and scrape paths the pod spec names are served by the sidecar started from
/// the injected flags, on the port the spec names (moved to an ephemeral one).
#[tokio::test]
async fn probe_and_scrape_paths_are_served() {
    let injected = pod::inject(&pod::opted_in_pod(&[]), &Settings::default());
    let (container, _) = pod::sidecar(&injected);
    let args = sidecar::args_of(container);
    let mut objects = Objects::default();
    objects.set_secret("holysheep-credentials", "HOLYSHEEP_API_KEY", "sk-e2e-probe");
    let mounted = Mounted::mount(pod::spec(&injected), container, &objects).unwrap();
    let running = Running::start(args, &mounted).await;

    let annotations = injected.metadata.annotations.as_ref().unwrap();
    let probes = [
        &container.startup_probe,
        &container.readiness_probe,
        &container.liveness_probe,
    ];
    let paths = probes
        .iter()
        .map(|p| {
            p.as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .clone()
                .unwrap()
        })
        .chain([annotations["prometheus.io/path"].clone()]);
    let http = http_client();
    for path in paths {
        let response = http.get(running.admin_url(&path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {path} on the admin port");
    }
    running.stop().await.unwrap();
}

/// With an empty key in the Secret the sidecar is up but not ready, so the startup probe
/// on `/readyz` holds the app back instead of letting it call a proxy without a key.
#[tokio::test]
async fn readyz_fails_with_an_empty_key() {
    let injected = pod::inject(&pod::opted_in_pod(&[]), &Settings::default());
    let (container, _) = pod::sidecar(&injected);
    let args = sidecar::args_of(container);
    let mut objects = Objects::default();
    objects.set_secret("holysheep-credentials", "HOLYSHEEP_API_KEY", "\n");
    let mounted = Mounted::mount(pod::spec(&injected), container, &objects).unwrap();
    let running = Running::spawn(args, &mounted).await;
    let readyz = http_client()
        .get(running.admin_url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(readyz.status(), 503);
    running.stop().await.unwrap();
}
