//! Table-driven tests of `mutate`: each applies the patch with the json-patch crate to the
//! original pod JSON, reads the result back as a typed `Pod`, checks one rule, and feeds
//! the patched pod back in to check that no second patch comes.

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use rstest::rstest;
use serde_json::{Value, json};

use super::*;

pub(super) const INJECT: (&str, &str) = ("holysheep/inject", "true");

/// A pod JSON with the given annotations (none when empty) and one app container.
pub(super) fn pod_json(annotations: &[(&str, &str)]) -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "app-", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}
    });
    if !annotations.is_empty() {
        let map: serde_json::Map<String, Value> = annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        pod["metadata"]["annotations"] = Value::Object(map);
    }
    pod
}

fn typed(pod: &Value) -> Pod {
    serde_json::from_value(pod.clone()).unwrap()
}

/// Runs the mutation both ways, on a typed `Pod` (the `inject` path) and on the facts
/// decoded from the JSON text (the admission path), and checks they decide alike.
pub(super) fn run(pod: &Value, settings: &Settings) -> Result<Option<Patch>, MutationError> {
    let from_typed = mutate(&typed(pod), settings);
    let facts: PodFacts = serde_json::from_str(&pod.to_string()).unwrap();
    assert_eq!(facts, PodFacts::from_pod(&typed(pod)), "facts differ");
    let from_json = mutate_facts(&facts, settings);
    assert_eq!(
        from_json.as_ref().map_err(ToString::to_string),
        from_typed.as_ref().map_err(ToString::to_string),
        "the admission and inject paths decide differently"
    );
    from_typed
}

/// Injects, returns the patched pod, and checks that a second pass is a no-op.
pub(super) fn inject_with(pod: &Value, settings: &Settings) -> Pod {
    let patch = run(pod, settings).unwrap().expect("a patch");
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    let result = typed(&patched);
    assert!(
        mutate(&result, settings).unwrap().is_none(),
        "second pass patched again"
    );
    result
}

fn inject(pod: &Value) -> Pod {
    inject_with(pod, &Settings::default())
}

pub(super) fn sidecar_of(pod: &Pod) -> &Container {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == "holysheep-sidecar")
        .expect("sidecar present")
}

pub(super) fn env_value<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

#[rstest]
#[case::no_annotations(&[])]
#[case::other_annotations(&[("team", "shop")])]
#[case::inject_false(&[("holysheep/inject", "false")])]
#[case::already_marked(&[INJECT, ("holysheep/status", "injected")])]
fn leaves_pod_untouched(#[case] annotations: &[(&str, &str)]) {
    assert!(
        run(&pod_json(annotations), &Settings::default())
            .unwrap()
            .is_none()
    );
}

#[rstest]
#[case::in_containers("containers")]
#[case::in_init_containers("initContainers")]
fn existing_sidecar_container_is_not_injected_twice(#[case] list: &str) {
    let mut pod = pod_json(&[INJECT]);
    pod["spec"][list] =
        json!([{"name": "holysheep-sidecar", "image": "x"}, {"name": "app", "image": "a"}]);
    assert!(run(&pod, &Settings::default()).unwrap().is_none());
}

#[rstest]
#[case::word("yes")]
#[case::capital("True")]
#[case::empty("")]
#[case::unicode("✓")]
fn invalid_inject_value_names_the_annotation(#[case] value: &str) {
    let message = run(
        &pod_json(&[("holysheep/inject", value)]),
        &Settings::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        message.contains("holysheep/inject") && message.contains("\"true\" or \"false\""),
        "{message}"
    );
}

#[test]
fn native_sidecar_is_the_first_init_container_with_probes() {
    let mut pod = pod_json(&[INJECT]);
    pod["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m:1"}]);
    let injected = inject(&pod);
    let init = injected
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .as_ref()
        .unwrap();
    assert_eq!(
        init.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["holysheep-sidecar", "migrate"]
    );
    let sidecar = &init[0];
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    let probe_target = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let get = p.as_ref().unwrap().http_get.as_ref().unwrap();
        (get.path.clone().unwrap(), get.port.clone())
    };
    let admin = IntOrString::Int(9090);
    assert_eq!(
        probe_target(&sidecar.startup_probe),
        ("/readyz".to_owned(), admin.clone())
    );
    assert_eq!(
        probe_target(&sidecar.readiness_probe),
        ("/readyz".to_owned(), admin.clone())
    );
    assert_eq!(
        probe_target(&sidecar.liveness_probe),
        ("/healthz".to_owned(), admin)
    );
    let port = &sidecar.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.container_port),
        (Some("hs-metrics"), 9090)
    );
    assert_eq!(
        injected.spec.unwrap().containers.len(),
        1,
        "no plain container in native mode"
    );
}

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

#[rstest]
#[case::by_annotation(&[INJECT, ("holysheep/native-sidecar", "false")], true)]
#[case::by_setting(&[INJECT], false)]
fn plain_container_mode(#[case] annotations: &[(&str, &str)], #[case] native_default: bool) {
    let settings = Settings {
        native_sidecar: native_default,
        ..Settings::default()
    };
    let mut pod = pod_json(annotations);
    pod["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m:1"}]);
    let injected = inject_with(&pod, &settings);
    let spec = injected.spec.as_ref().unwrap();
    let names: Vec<_> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["app", "holysheep-sidecar"]);
    assert_eq!(spec.containers[1].restart_policy, None);
    let init = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(init.name, "migrate");
    assert_eq!(
        init.env, None,
        "init containers run before a plain sidecar: no proxy env"
    );
}

#[test]
fn annotation_true_wins_over_plain_default() {
    let settings = Settings {
        native_sidecar: false,
        ..Settings::default()
    };
    let injected = inject_with(
        &pod_json(&[INJECT, ("holysheep/native-sidecar", "true")]),
        &settings,
    );
    assert_eq!(
        injected.spec.unwrap().init_containers.unwrap()[0].name,
        "holysheep-sidecar"
    );
}

#[test]
fn credential_volume_is_mounted_read_only_in_the_sidecar_only() {
    let mut pod = pod_json(&[INJECT]);
    pod["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
    pod["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    let injected = inject(&pod);
    let spec = injected.spec.as_ref().unwrap();
    let volumes = spec.volumes.as_ref().unwrap();
    assert_eq!(volumes[0].name, "data");
    let secret = volumes[1].secret.as_ref().unwrap();
    assert_eq!(volumes[1].name, "holysheep-credentials");
    assert_eq!(secret.secret_name.as_deref(), Some("holysheep-credentials"));
    assert_eq!(secret.default_mode, Some(0o444));
    let item = &secret.items.as_ref().unwrap()[0];
    assert_eq!(
        (item.key.as_str(), item.path.as_str(), item.mode),
        ("HOLYSHEEP_API_KEY", "api-key", Some(0o444))
    );
    let mount = sidecar_of(&injected).volume_mounts.as_ref().unwrap();
    assert_eq!(mount[0].mount_path, "/var/run/secrets/holysheep");
    assert_eq!(mount[0].read_only, Some(true));
    let app_mounts: Vec<_> = spec.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(app_mounts, ["data"]);
    assert_eq!(
        env_value(sidecar_of(&injected), "HOLYSHEEP_API_KEY_FILE"),
        Some("/var/run/secrets/holysheep/api-key")
    );
}

#[test]
fn secret_and_key_overrides() {
    let injected = inject(&pod_json(&[
        INJECT,
        ("holysheep/secret", "team-llm"),
        ("holysheep/secret-key", "key"),
    ]));
    let volumes = injected.spec.unwrap().volumes.unwrap();
    let secret = volumes[0].secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("team-llm"));
    assert_eq!(secret.items.as_ref().unwrap()[0].key, "key");
}

#[test]
fn config_map_is_mounted_and_pointed_at() {
    let injected = inject(&pod_json(&[INJECT, ("holysheep/config", "hs-config")]));
    let sidecar = sidecar_of(&injected).clone();
    let volumes = injected.spec.unwrap().volumes.unwrap();
    let config = volumes
        .iter()
        .find(|v| v.name == "holysheep-config")
        .unwrap();
    assert_eq!(config.config_map.as_ref().unwrap().name, "hs-config");
    // Optional: without the ConfigMap the sidecar starts on its built-in defaults.
    assert_eq!(config.config_map.as_ref().unwrap().optional, Some(true));
    assert_eq!(
        env_value(&sidecar, "HOLYSHEEP_CONFIG"),
        Some("/etc/holysheep/config.yaml")
    );
    let mounts = sidecar.volume_mounts.unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m.name == "holysheep-config" && m.mount_path == "/etc/holysheep")
    );
}

#[test]
fn no_config_means_no_config_volume_or_env() {
    let injected = inject(&pod_json(&[INJECT]));
    assert_eq!(env_value(sidecar_of(&injected), "HOLYSHEEP_CONFIG"), None);
    assert_eq!(injected.spec.unwrap().volumes.unwrap().len(), 1);
}

#[test]
fn sidecar_env_listens_on_loopback_and_knows_its_pod() {
    let injected = inject(&pod_json(&[INJECT]));
    let sidecar = sidecar_of(&injected);
    assert_eq!(
        env_value(sidecar, "HOLYSHEEP_LISTEN"),
        Some("127.0.0.1:8080")
    );
    assert_eq!(
        env_value(sidecar, "HOLYSHEEP_ADMIN_LISTEN"),
        Some("0.0.0.0:9090")
    );
    assert_eq!(
        env_value(sidecar, "HOLYSHEEP_UPSTREAM"),
        None,
        "sidecar default kept"
    );
    let field = |name: &str| {
        let var = sidecar
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .unwrap();
        var.value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path
            .clone()
    };
    assert_eq!(field("POD_NAME"), "metadata.name");
    assert_eq!(field("POD_NAMESPACE"), "metadata.namespace");
}

#[rstest]
#[case::annotation(Some("http://gw.internal:8080/v1"), None, "http://gw.internal:8080/v1")]
#[case::setting(None, Some("https://eu.example/v1"), "https://eu.example/v1")]
#[case::annotation_wins(Some("http://a/v1"), Some("http://b/v1"), "http://a/v1")]
fn upstream_override(
    #[case] annotation: Option<&str>,
    #[case] setting: Option<&str>,
    #[case] want: &str,
) {
    let settings = Settings {
        upstream: setting.map(str::to_owned),
        ..Settings::default()
    };
    let mut annotations = vec![INJECT];
    annotations.extend(annotation.map(|a| ("holysheep/upstream", a)));
    let injected = inject_with(&pod_json(&annotations), &settings);
    assert_eq!(
        env_value(sidecar_of(&injected), "HOLYSHEEP_UPSTREAM"),
        Some(want)
    );
}

#[test]
fn apps_and_init_containers_get_sdk_env_without_overrides() {
    let mut pod = pod_json(&[INJECT, ("holysheep/port", "18080")]);
    pod["spec"]["containers"] = json!([
        {"name": "app", "image": "a", "env": [{"name": "OPENAI_API_KEY", "value": "mine"}]},
        {"name": "worker", "image": "w", "env": []},
        {"name": "tool", "image": "t"}
    ]);
    pod["spec"]["initContainers"] = json!([{"name": "warmup", "image": "w"}]);
    let injected = inject(&pod);
    let spec = injected.spec.as_ref().unwrap();
    let base = Some("http://127.0.0.1:18080/v1");
    for container in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten().skip(1))
    {
        assert_eq!(
            env_value(container, "OPENAI_BASE_URL"),
            base,
            "{}",
            container.name
        );
        assert_eq!(
            env_value(container, "OPENAI_API_BASE"),
            base,
            "{}",
            container.name
        );
        assert_eq!(
            env_value(container, "HOLYSHEEP_BASE_URL"),
            base,
            "{}",
            container.name
        );
    }
    assert_eq!(
        env_value(&spec.containers[0], "OPENAI_API_KEY"),
        Some("mine")
    );
    assert_eq!(
        env_value(&spec.containers[1], "OPENAI_API_KEY"),
        Some("injected-by-holysheep")
    );
    assert_eq!(
        spec.containers[0].env.as_ref().unwrap().len(),
        4,
        "no duplicate names"
    );
    assert_eq!(
        env_value(sidecar_of(&injected), "HOLYSHEEP_LISTEN"),
        Some("127.0.0.1:18080")
    );
    assert_eq!(
        env_value(sidecar_of(&injected), "OPENAI_BASE_URL"),
        None,
        "sidecar gets no app env"
    );
}

#[test]
fn pod_annotations_are_added_only_when_absent() {
    let mut pod = pod_json(&[
        INJECT,
        ("prometheus.io/port", "8000"),
        ("kubectl.kubernetes.io/default-container", "tool"),
    ]);
    pod["spec"]["containers"] =
        json!([{"name": "web", "image": "a"}, {"name": "tool", "image": "t"}]);
    let injected = inject(&pod);
    assert_eq!(annotation(&injected, "holysheep/status"), Some("injected"));
    assert_eq!(annotation(&injected, "prometheus.io/scrape"), Some("true"));
    assert_eq!(annotation(&injected, "prometheus.io/port"), Some("8000"));
    assert_eq!(
        annotation(&injected, "prometheus.io/path"),
        Some("/metrics")
    );
    assert_eq!(
        annotation(&injected, "kubectl.kubernetes.io/default-container"),
        Some("tool")
    );
}

#[test]
fn default_annotations_on_a_bare_pod() {
    let injected = inject(&pod_json(&[INJECT]));
    assert_eq!(annotation(&injected, "prometheus.io/port"), Some("9090"));
    assert_eq!(
        annotation(&injected, "kubectl.kubernetes.io/default-container"),
        Some("app")
    );
}

#[test]
fn marker_path_is_escaped_per_rfc_6901() {
    let patch = run(&pod_json(&[INJECT]), &Settings::default())
        .unwrap()
        .unwrap();
    let paths: Vec<String> = patch.iter().map(|op| op.path().to_string()).collect();
    assert!(
        paths.contains(&"/metadata/annotations/holysheep~1status".to_owned()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/metadata/annotations/prometheus.io~1scrape".to_owned()),
        "{paths:?}"
    );
}

#[test]
fn hardened_security_context() {
    let injected = inject(&pod_json(&[INJECT]));
    let sc = sidecar_of(&injected).security_context.clone().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(
        (sc.run_as_user, sc.run_as_group),
        (Some(65532), Some(65532))
    );
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
}

type Pairs = Vec<(String, String)>;

fn resources(pod: &Pod) -> (Pairs, Pairs) {
    let r = sidecar_of(pod).resources.clone().unwrap();
    let flat =
        |m: Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
            m.unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect::<Vec<_>>()
        };
    (flat(r.requests), flat(r.limits))
}

fn pairs(p: &[(&str, &str)]) -> Pairs {
    p.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[rstest]
#[case::defaults(&[], &[("cpu", "10m"), ("memory", "32Mi")], &[("memory", "128Mi")])]
#[case::overrides(
    &[("holysheep/proxy-cpu-request", "100m"), ("holysheep/proxy-memory-request", "64Mi"),
      ("holysheep/proxy-cpu-limit", "1"), ("holysheep/proxy-memory-limit", "256Mi")],
    &[("cpu", "100m"), ("memory", "64Mi")], &[("cpu", "1"), ("memory", "256Mi")])]
#[case::limit_only(&[("holysheep/proxy-memory-limit", "1Gi")], &[("cpu", "10m"), ("memory", "32Mi")], &[("memory", "1Gi")])]
fn resources_with_overrides(
    #[case] extra: &[(&str, &str)],
    #[case] requests: &[(&str, &str)],
    #[case] limits: &[(&str, &str)],
) {
    let mut annotations = vec![INJECT];
    annotations.extend_from_slice(extra);
    let injected = inject(&pod_json(&annotations));
    assert_eq!(resources(&injected), (pairs(requests), pairs(limits)));
}

#[test]
fn image_override() {
    let injected = inject(&pod_json(&[
        INJECT,
        ("holysheep/image", "registry.local/hs:dev"),
    ]));
    assert_eq!(
        sidecar_of(&injected).image.as_deref(),
        Some("registry.local/hs:dev")
    );
    let default = inject(&pod_json(&[INJECT]));
    assert_eq!(
        sidecar_of(&default).image.as_deref(),
        Some(crate::settings::DEFAULT_IMAGE)
    );
    assert_eq!(
        sidecar_of(&default).image_pull_policy.as_deref(),
        Some("IfNotPresent")
    );
}

#[rstest]
#[case::host_network(json!({"hostNetwork": true}), &[], "hostNetwork")]
#[case::proxy_port_taken(json!({"containers": [{"name": "web", "image": "a", "ports": [{"containerPort": 8080}]}]}), &[], "holysheep/port: \"8081\"")]
#[case::admin_port_taken(json!({"containers": [{"name": "web", "image": "a", "ports": [{"containerPort": 9090}]}]}), &[], "holysheep/admin-port: \"9091\"")]
#[case::init_port_taken(json!({"initContainers": [{"name": "db", "image": "a", "restartPolicy": "Always", "ports": [{"containerPort": 8080}]}]}), &[], "container \"db\"")]
#[case::annotated_port_taken(json!({"containers": [{"name": "web", "image": "a", "ports": [{"containerPort": 3000}]}]}), &[("holysheep/port", "3000")], "holysheep/port")]
#[case::same_ports(json!({}), &[("holysheep/port", "9090")], "different ports")]
#[case::request_above_limit(json!({}), &[("holysheep/proxy-memory-request", "256Mi")], "raise holysheep/proxy-memory-limit")]
#[case::cpu_above_limit(json!({}), &[("holysheep/proxy-cpu-request", "2"), ("holysheep/proxy-cpu-limit", "500m")], "cpu request 2")]
#[case::volume_taken(json!({"volumes": [{"name": "holysheep-credentials", "emptyDir": {}}]}), &[], "rename that volume")]
#[case::bad_port(json!({}), &[("holysheep/port", "80800")], "holysheep/port=\"80800\"")]
#[case::bad_quantity(json!({}), &[("holysheep/proxy-cpu-limit", "fast")], "holysheep/proxy-cpu-limit")]
#[case::upstream_port_out_of_range(json!({}), &[("holysheep/upstream", "http://a:99999/v1")], "invalid annotation holysheep/upstream=\"http://a:99999/v1\": has port 99999, outside 1-65535; use e.g. https://api.holysheep.ai/v1")]
#[case::upstream_empty_port(json!({}), &[("holysheep/upstream", "http://h:/v1")], "holysheep/upstream=\"http://h:/v1\": has an empty port")]
#[case::upstream_credentials_redacted(json!({}), &[("holysheep/upstream", "https://u:s3cret@h/v1")], "holysheep/upstream=\"https://***@h/v1\": carries credentials")]
#[case::port_with_plus(json!({}), &[("holysheep/port", "+80")], "holysheep/port=\"+80\"")]
#[case::port_leading_zero(json!({}), &[("holysheep/admin-port", "080")], "holysheep/admin-port=\"080\"")]
#[case::absurd_cpu(json!({}), &[("holysheep/proxy-cpu-limit", "1e100")], "holysheep/proxy-cpu-limit=\"1e100\": more than 64 cores")]
#[case::absurd_memory(json!({}), &[("holysheep/proxy-memory-limit", "1e100")], "holysheep/proxy-memory-limit=\"1e100\": more than 64Gi")]
fn refusals_name_the_cause_and_the_fix(
    #[case] spec_patch: Value,
    #[case] extra: &[(&str, &str)],
    #[case] expected: &str,
) {
    let mut annotations = vec![INJECT];
    annotations.extend_from_slice(extra);
    let mut pod = pod_json(&annotations);
    json_patch::merge(&mut pod["spec"], &spec_patch);
    let message = run(&pod, &Settings::default()).unwrap_err().to_string();
    assert!(message.contains(expected), "{message}");
}

#[test]
fn suggested_port_is_free() {
    let mut pod = pod_json(&[INJECT]);
    pod["spec"]["containers"][0]["ports"] =
        json!([{"containerPort": 8080}, {"containerPort": 8081}]);
    let message = run(&pod, &Settings::default()).unwrap_err().to_string();
    assert!(message.contains("holysheep/port: \"8082\""), "{message}");
}

#[test]
fn works_on_a_minimal_pod() {
    // Only generateName and the opt-in annotation: no volumes, initContainers or env.
    let injected = inject(&pod_json(&[INJECT]));
    assert_eq!(injected.metadata.name, None);
    let spec = injected.spec.unwrap();
    assert_eq!(spec.init_containers.unwrap().len(), 1);
    assert_eq!(spec.volumes.unwrap().len(), 1);
    assert_eq!(spec.containers[0].env.as_ref().unwrap().len(), 4);
}

#[test]
fn null_lists_are_replaced_not_appended_to() {
    let mut pod = pod_json(&[INJECT]);
    pod["spec"]["volumes"] = Value::Null;
    pod["spec"]["initContainers"] = Value::Null;
    pod["spec"]["containers"][0]["env"] = Value::Null;
    let injected = inject(&pod);
    assert_eq!(
        injected.spec.unwrap().containers[0]
            .env
            .as_ref()
            .unwrap()
            .len(),
        4
    );
}

#[test]
fn app_env_helper_matches_design() {
    let spec = SidecarSpec::resolve(&Settings::default(), Overrides::default());
    let env: Vec<EnvVar> = spec.app_env();
    let names: Vec<_> = env.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "OPENAI_BASE_URL",
            "OPENAI_API_BASE",
            "HOLYSHEEP_BASE_URL",
            "OPENAI_API_KEY"
        ]
    );
    assert_eq!(env[0].value.as_deref(), Some("http://127.0.0.1:8080/v1"));
}

#[test]
fn app_env_names_are_the_ones_the_sidecar_gives() {
    let spec = SidecarSpec::resolve(&Settings::default(), Overrides::default());
    let names: Vec<_> = spec.app_env().into_iter().map(|e| e.name).collect();
    assert_eq!(names, APP_ENV_NAMES);
}

#[test]
fn facts_keep_only_what_the_mutation_reads() {
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": "shop", "name": "web-1", "generateName": "web-",
            "labels": {"a": "b", "pod-template-hash": "5d8f7c9b4", "z": "y"},
            "annotations": {"k": "v"},
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": "n", "uid": "n-1"},
                {"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "j-1",
                 "controller": true, "blockOwnerDeletion": true}
            ]},
        "spec": {
            "hostNetwork": false,
            "containers": [{
                "name": "app",
                "image": "a",
                "env": [
                    {"name": "LOG", "value": "1"},
                    {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                    {"name": "OPENAI_BASE_URL", "value": format!("https://{}/v1", "a".repeat(100))},
                    {"name": "OPENAI_API_BASE", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}
                ],
                "ports": [{"containerPort": 80}, {"containerPort": 70000}, {"name": "x"}],
                "resources": {"limits": {"cpu": "1"}}
            }],
            "initContainers": null,
            "volumes": [{"name": "data"}, {"name": "holysheep-config"}, {"name": "holysheep-credentials"}]
        }
    });
    let facts: PodFacts = serde_json::from_str(&pod.to_string()).unwrap();
    let expected = PodFacts {
        namespace: Some("shop".into()),
        name: Some("web-1".into()),
        generate_name: Some("web-".into()),
        template_hash: Some("5d8f7c9b4".into()),
        annotations: Some([("k".to_owned(), "v".to_owned())].into()),
        has_labels: true,
        owner: Some(OwnerRef {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            name: "j".into(),
            uid: "j-1".into(),
        }),
        spec: Some(SpecFacts {
            host_network: false,
            containers: Containers {
                kept: vec![ContainerFacts {
                    name: "app".into(),
                    env: Some(vec![
                        "OPENAI_API_KEY".into(),
                        "OPENAI_BASE_URL".into(),
                        "OPENAI_API_BASE".into(),
                    ]),
                    ports: vec![80, 0],
                    // Cut to 64 bytes: longer than any sidecar URL, so still not one.
                    base_urls: vec![Some(format!("https://{}", "a".repeat(56))), None],
                }],
                len: 1,
            },
            init_containers: None,
            volumes: Some(Volumes {
                reserved: Some("holysheep-config"),
            }),
        }),
    };
    assert_eq!(facts, expected);
    assert_eq!(PodFacts::from_pod(&typed(&pod)), expected);
}

#[rstest]
#[case::api_version(json!({"apiVersion": "v2", "kind": "Pod"}), "apiVersion")]
#[case::kind(json!({"apiVersion": "v1", "kind": "Service"}), "kind")]
#[case::containers(json!({"spec": {"containers": {"name": "a"}}}), "a list of containers")]
#[case::annotations(json!({"metadata": {"annotations": {"a": 1}}}), "invalid type")]
fn facts_refuse_what_a_typed_pod_refuses(#[case] pod: Value, #[case] needle: &str) {
    assert!(serde_json::from_value::<Pod>(pod.clone()).is_err());
    let error = serde_json::from_str::<PodFacts>(&pod.to_string()).unwrap_err();
    assert!(error.to_string().contains(needle), "{error}");
}

#[test]
fn oversized_annotations_are_refused_while_they_are_read() {
    let mut pod = pod_json(&[INJECT]);
    pod["metadata"]["annotations"]["big"] = json!("x".repeat(MAX_ANNOTATION_BYTES));
    let error = serde_json::from_str::<PodFacts>(&pod.to_string()).unwrap_err();
    assert!(
        error.to_string().contains("metadata.annotations"),
        "{error}"
    );
    // At the limit exactly, they are read.
    let room = MAX_ANNOTATION_BYTES - "holysheep/inject".len() - "true".len() - "big".len();
    pod["metadata"]["annotations"]["big"] = json!("x".repeat(room));
    assert!(serde_json::from_str::<PodFacts>(&pod.to_string()).is_ok());
}

#[test]
fn long_container_lists_are_counted_not_kept() {
    let containers: Vec<Value> = (0..MAX_CONTAINERS + 5)
        .map(|i| json!({"name": format!("c{i}")}))
        .collect();
    let mut pod = pod_json(&[INJECT]);
    pod["spec"]["containers"] = Value::Array(containers);
    let facts: PodFacts = serde_json::from_str(&pod.to_string()).unwrap();
    let spec = facts.spec.as_ref().unwrap();
    assert_eq!(spec.containers.kept.len(), MAX_CONTAINERS);
    assert_eq!(spec.containers.len, MAX_CONTAINERS + 5);
    let message = run(&pod, &Settings::default()).unwrap_err().to_string();
    assert!(
        message.contains("1005 containers") && message.contains("holysheep/inject"),
        "{message}"
    );
}

#[test]
fn a_pod_with_the_most_containers_handled_is_injected() {
    let mut pod = pod_json(&[INJECT]);
    pod["spec"]["containers"] = (0..MAX_CONTAINERS - 1)
        .map(|i| json!({"name": format!("c{i}")}))
        .collect();
    pod["spec"]["initContainers"] = json!([{"name": "init"}]);
    let injected = inject(&pod);
    let spec = injected.spec.unwrap();
    assert!(
        spec.containers
            .iter()
            .all(|c| env_value(c, "OPENAI_API_KEY").is_some())
    );
}

#[test]
fn a_pod_declaring_every_port_gets_a_suggestion_or_the_port_itself() {
    let mut pod = pod_json(&[INJECT]);
    // Every port from 8080 up: the suggestion wraps around to 1024.
    pod["spec"]["containers"][0]["ports"] = (8080..=u16::MAX)
        .map(|p| json!({"containerPort": p}))
        .collect();
    let message = run(&pod, &Settings::default()).unwrap_err().to_string();
    assert!(message.contains("holysheep/port: \"1024\""), "{message}");
    // Every unprivileged port: nothing is free, the port itself is named.
    pod["spec"]["containers"][0]["ports"] = (1024..=u16::MAX)
        .map(|p| json!({"containerPort": p}))
        .collect();
    let message = run(&pod, &Settings::default()).unwrap_err().to_string();
    assert!(
        message.contains("collides with containerPort 8080 of container \"app\""),
        "{message}"
    );
}

#[rstest]
#[case::by_annotation(true, &[INJECT, (annotations::NATIVE_SIDECAR, "false")], Some("holysheep/native-sidecar: \"false\""))]
#[case::by_flag(true, &[INJECT], Some("--native-sidecar=false"))]
#[case::not_a_job(false, &[INJECT, (annotations::NATIVE_SIDECAR, "false")], None)]
#[case::native_job(true, &[INJECT, (annotations::NATIVE_SIDECAR, "true")], None)]
fn plain_sidecar_in_a_job_is_warned(
    #[case] job: bool,
    #[case] annotations: &[(&str, &str)],
    #[case] want: Option<&str>,
) {
    let mut pod = pod_json(annotations);
    let kind = if job { "Job" } else { "ReplicaSet" };
    let group = if job { "batch/v1" } else { "apps/v1" };
    pod["metadata"]["ownerReferences"] =
        json!([{"apiVersion": group, "kind": kind, "name": "o", "uid": "u", "controller": true}]);
    let facts: PodFacts = serde_json::from_str(&pod.to_string()).unwrap();
    let settings = Settings {
        native_sidecar: false,
        ..Settings::default()
    };
    let planned = plan(&facts, &settings);
    assert!(planned.outcome.unwrap().is_some());
    match want {
        Some(start) => {
            assert_eq!(planned.warnings.len(), 1, "{:?}", planned.warnings);
            assert!(
                planned.warnings[0].starts_with(start),
                "{:?}",
                planned.warnings
            );
            assert!(planned.warnings[0].contains("never exits"));
        }
        None => assert!(planned.warnings.is_empty(), "{:?}", planned.warnings),
    }
}

/// Facts of a pod with the given controller (`kind`, `name`), template hash label, name
/// and generateName.
fn owned_by(
    owner: Option<(&str, &str, &str)>,
    hash: Option<&str>,
    name: Option<&str>,
    generate_name: Option<&str>,
) -> PodFacts {
    PodFacts {
        owner: owner.map(|(api_version, kind, name)| OwnerRef {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            uid: "u".into(),
        }),
        template_hash: hash.map(Into::into),
        name: name.map(Into::into),
        generate_name: generate_name.map(Into::into),
        ..PodFacts::default()
    }
}

#[rstest]
#[case::deployment(Some(("apps/v1", "ReplicaSet", "web-5d8f7c9b4")), Some("5d8f7c9b4"), None, Some("web-5d8f7c9b4-"), Some("web"))]
#[case::bare_replicaset(Some(("apps/v1", "ReplicaSet", "web-rs")), None, None, None, Some("web-rs"))]
#[case::hash_not_the_suffix(Some(("apps/v1", "ReplicaSet", "web-rs")), Some("abc"), None, None, Some("web-rs"))]
#[case::cronjob(Some(("batch/v1", "Job", "nightly-report-29412345")), None, None, None, Some("nightly-report"))]
#[case::job_short_number(Some(("batch/v1", "Job", "migrate-2")), None, None, None, Some("migrate-2"))]
#[case::statefulset(Some(("apps/v1", "StatefulSet", "db")), None, Some("db-0"), None, Some("db"))]
#[case::offline_deployment(Some(("apps/v1", "Deployment", "web")), None, None, None, Some("web"))]
#[case::bare_pod(None, None, Some("debug"), None, Some("debug"))]
#[case::generated_pod(None, None, None, Some("debug-"), Some("debug"))]
#[case::nameless(None, None, None, None, None)]
fn workload_name_is_stable_across_rollouts(
    #[case] owner: Option<(&str, &str, &str)>,
    #[case] hash: Option<&str>,
    #[case] name: Option<&str>,
    #[case] generate_name: Option<&str>,
    #[case] expected: Option<&str>,
) {
    let facts = owned_by(owner, hash, name, generate_name);
    assert_eq!(facts.workload_name().as_deref(), expected);
}
