//! Property test of the mutation core: arbitrary pods (any mix of missing, null and
//! present fields, many containers, odd annotation values, colliding ports) never make
//! `mutate` panic; every patch it produces applies cleanly to the original JSON, gives a
//! valid Pod with exactly one sidecar whose credentials no app container mounts, and a
//! second pass produces no patch.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failing property must fail loudly"
)]

use holysheep_webhook::mutation::{PodFacts, mutate, plan};
use holysheep_webhook::settings::Settings;
use holysheep_webhook::warnings::{MAX_CHARS, MAX_WARNINGS};
use k8s_openapi::api::core::v1::Pod;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Annotation values: valid ones, near misses, unicode, empty and huge.
fn odd_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("true".to_owned()),
        Just("false".to_owned()),
        Just(String::new()),
        Just("8080".to_owned()),
        Just("9090".to_owned()),
        Just("18080".to_owned()),
        Just("0".to_owned()),
        Just("65536".to_owned()),
        Just("128Mi".to_owned()),
        Just("10m".to_owned()),
        Just("-1".to_owned()),
        Just("https://gw.example/v1".to_owned()),
        Just("http://u:p@proxy:3128".to_owned()),
        Just("team-llm".to_owned()),
        Just("Ünïcødé ✓".to_owned()),
        Just("x".repeat(70_000)),
        "[a-zA-Z0-9./:_-]{0,20}",
        any::<String>(),
    ]
}

/// An annotation key with a value: mostly one valid for that key, else an odd one.
fn annotation() -> impl Strategy<Value = (&'static str, String)> {
    let valid: &[(&'static str, &[&str])] = &[
        ("holysheep/port", &["18080", "3000"]),
        ("holysheep/admin-port", &["19090", "9191"]),
        ("holysheep/secret", &["team-llm"]),
        ("holysheep/secret-key", &["api-key"]),
        ("holysheep/config", &["hs-config"]),
        ("holysheep/image", &["registry.local/hs:dev"]),
        ("holysheep/upstream", &["https://gw.example/v1"]),
        ("holysheep/native-sidecar", &["true", "false"]),
        (
            "holysheep/egress-proxy",
            &["http://proxy.corp.internal:3128", "none"],
        ),
        ("holysheep/upstream-ca", &["corp-ca"]),
        ("holysheep/proxy-cpu-request", &["10m", "250m"]),
        ("holysheep/proxy-memory-request", &["16Mi", "64Mi"]),
        ("holysheep/proxy-cpu-limit", &["1", "500m"]),
        ("holysheep/proxy-memory-limit", &["256Mi", "1Gi"]),
        ("holysheep/status", &["injected", "pending"]),
        ("prometheus.io/port", &["8000"]),
        ("kubectl.kubernetes.io/default-container", &["c0"]),
        ("other/annotation", &["x"]),
    ];
    (
        0..valid.len(),
        any::<prop::sample::Index>(),
        prop::bool::weighted(0.8),
        odd_value(),
    )
        .prop_map(move |(key, pick, use_valid, odd)| {
            let (key, values) = valid[key];
            let value = if use_valid {
                values[pick.index(values.len())].to_owned()
            } else {
                odd
            };
            (key, value)
        })
}

fn annotations() -> impl Strategy<Value = Option<Map<String, Value>>> {
    // The opt-in is mostly "true" so that most cases reach the patch builder.
    let inject = prop_oneof![
        6 => Just(Some("true".to_owned())),
        1 => Just(None),
        1 => odd_value().prop_map(Some),
    ];
    (
        inject,
        proptest::collection::vec(annotation(), 0..5),
        any::<bool>(),
    )
        .prop_map(|(inject, extra, present)| {
            let mut map = Map::new();
            for (key, value) in extra {
                map.insert(key.to_owned(), Value::String(value));
            }
            if let Some(inject) = inject {
                map.insert("holysheep/inject".to_owned(), Value::String(inject));
            }
            (present || !map.is_empty()).then_some(map)
        })
}

fn port() -> impl Strategy<Value = i64> {
    prop_oneof![1 => Just(8080), 1 => Just(9090), 1 => Just(18080), 12 => 1..=65535i64]
}

/// A list that may be missing (None), null, or present.
fn maybe_list<S: Strategy<Value = Value> + 'static>(
    item: S,
    max: usize,
) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        proptest::collection::vec(item, 0..max).prop_map(|v| Some(Value::Array(v))),
    ]
}

fn container(index: usize) -> impl Strategy<Value = Value> {
    let name = prop_oneof![
        10 => Just(format!("c{index}")),
        1 => Just("holysheep-sidecar".to_owned()),
    ];
    let env_name = prop_oneof![
        Just("OPENAI_BASE_URL"),
        Just("OPENAI_API_KEY"),
        Just("HOLYSHEEP_BASE_URL"),
        Just("OTHER"),
    ];
    (
        name,
        maybe_list(env_name.prop_map(|n| json!({"name": n, "value": "v"})), 4),
        maybe_list(port().prop_map(|p| json!({"containerPort": p})), 3),
        maybe_list(Just(json!({"name": "data", "mountPath": "/data"})), 2),
    )
        .prop_map(|(name, env, ports, mounts)| {
            let mut c = json!({"name": name, "image": "app:1"});
            set(&mut c, "env", env);
            set(&mut c, "ports", ports);
            set(&mut c, "volumeMounts", mounts);
            c
        })
}

fn containers(max: usize) -> impl Strategy<Value = Vec<Value>> {
    (0..max).prop_flat_map(|n| (0..n).map(container).collect::<Vec<_>>())
}

fn set(object: &mut Value, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        object[key] = value;
    }
}

fn pod() -> impl Strategy<Value = Value> {
    let volume = prop_oneof![
        Just(json!({"name": "data", "emptyDir": {}})),
        Just(json!({"name": "holysheep-credentials", "emptyDir": {}})),
    ];
    (
        annotations(),
        prop_oneof![Just(None), Just(Some("web")), Just(Some(""))],
        prop_oneof![Just(None), Just(Some(true)), Just(Some(false))],
        containers(6),
        prop_oneof![
            Just(None),
            Just(Some(Value::Null)),
            containers(4).prop_map(|c| Some(Value::Array(c)))
        ],
        maybe_list(volume, 3),
        prop::bool::weighted(0.97),
    )
        .prop_map(
            |(annotations, name, host_network, containers, init, volumes, has_spec)| {
                let mut metadata = json!({"generateName": "p-"});
                if let Some(name) = name {
                    metadata["name"] = json!(name);
                }
                if let Some(annotations) = annotations {
                    metadata["annotations"] = Value::Object(annotations);
                }
                let mut spec = json!({"containers": containers});
                if let Some(host_network) = host_network {
                    spec["hostNetwork"] = json!(host_network);
                }
                set(&mut spec, "initContainers", init);
                set(&mut spec, "volumes", volumes);
                let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata});
                if has_spec {
                    pod["spec"] = spec;
                }
                pod
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn patches_apply_and_are_idempotent(
        pod_json in pod(),
        native in any::<bool>(),
        corporate in any::<bool>(),
    ) {
        // Half the runs with cluster-wide egress proxy and CA defaults.
        let settings = Settings {
            native_sidecar: native,
            egress_proxy: corporate.then(|| "http://proxy.corp.internal:3128".to_owned()),
            no_proxy: corporate.then(|| ".corp.internal".to_owned()),
            upstream_ca_config_map: corporate.then(|| "corp-ca".to_owned()),
            ..Settings::default()
        };
        let pod: Pod = serde_json::from_value(pod_json.clone()).unwrap();
        // The warnings are few and short whatever the pod, and never change the decision.
        let planned = plan(&PodFacts::from_pod(&pod), &settings);
        prop_assert!(planned.warnings.len() <= MAX_WARNINGS);
        for line in &planned.warnings {
            prop_assert!(line.chars().count() <= MAX_CHARS, "{}", line);
        }
        let decided = mutate(&pod, &settings);
        match (&planned.outcome, &decided) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
            _ => prop_assert!(false, "plan and mutate disagree"),
        }
        let patch = match decided {
            Ok(Some(patch)) => patch,
            Ok(None) => return Ok(()),
            Err(error) => {
                let message = error.to_string();
                prop_assert!(!message.is_empty() && message.len() < 1024, "{}", message.len());
                return Ok(());
            }
        };
        let mut patched = pod_json.clone();
        json_patch::patch(&mut patched, &patch)
            .map_err(|e| TestCaseError::fail(format!("patch does not apply: {e}\n{patch}")))?;
        let result: Pod = serde_json::from_value(patched)
            .map_err(|e| TestCaseError::fail(format!("not a Pod: {e}")))?;
        let spec = result.spec.as_ref().unwrap();
        let all: Vec<_> = spec.init_containers.iter().flatten().chain(&spec.containers).collect();
        prop_assert_eq!(all.iter().filter(|c| c.name == "holysheep-sidecar").count(), 1);
        for app in all.iter().filter(|c| c.name != "holysheep-sidecar") {
            let sidecar_only = ["holysheep-credentials", "holysheep-upstream-ca"];
            let mut mounts = app.volume_mounts.iter().flatten();
            prop_assert!(!mounts.any(|m| sidecar_only.contains(&m.name.as_str())));
        }
        // App containers keep their order and every env var they set, value included.
        let before = pod.spec.as_ref().unwrap();
        let apps: Vec<_> = spec.containers.iter().filter(|c| c.name != "holysheep-sidecar").collect();
        prop_assert_eq!(apps.len(), before.containers.len());
        for (old, new) in before.containers.iter().zip(&apps) {
            prop_assert_eq!(&old.name, &new.name);
            let new_env = new.env.as_deref().unwrap_or_default();
            prop_assert_eq!(&new_env[..old.env.as_ref().map_or(0, Vec::len)], old.env.as_deref().unwrap_or_default());
            prop_assert!(new_env.iter().any(|e| e.name == "OPENAI_BASE_URL"));
        }
        // Never a base URL that bypasses the sidecar together with the placeholder key.
        let sidecar = all.iter().find(|c| c.name == "holysheep-sidecar").unwrap();
        let listen = sidecar.env.iter().flatten().find(|e| e.name == "HOLYSHEEP_LISTEN");
        let sidecar_url = format!("http://{}/v1", listen.unwrap().value.as_deref().unwrap());
        for app in all.iter().filter(|c| c.name != "holysheep-sidecar") {
            let env = app.env.as_deref().unwrap_or_default();
            let bypass = env.iter().any(|e| {
                (e.name == "OPENAI_BASE_URL" || e.name == "OPENAI_API_BASE")
                    && e.value.as_deref() != Some(sidecar_url.as_str())
            });
            let placeholder = env.iter().any(|e| {
                e.name == "OPENAI_API_KEY" && e.value.as_deref() == Some("injected-by-holysheep")
            });
            prop_assert!(!(bypass && placeholder), "{} bypasses with the placeholder", app.name);
        }
        let annotations = result.metadata.annotations.as_ref().unwrap();
        prop_assert_eq!(annotations.get("holysheep/status").map(String::as_str), Some("injected"));
        prop_assert!(mutate(&result, &settings).unwrap().is_none(), "second pass patched");
    }
}

/// Guards against a vacuous property: a fair share of the generated pods must reach the
/// patch builder, and some must be refused.
#[test]
fn generator_exercises_patches_and_refusals() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut patched, mut refused) = (0, 0);
    for _ in 0..300 {
        let pod_json = pod().new_tree(&mut runner).unwrap().current();
        let pod: Pod = serde_json::from_value(pod_json).unwrap();
        match mutate(&pod, &Settings::default()) {
            Ok(Some(_)) => patched += 1,
            Ok(None) => {}
            Err(_) => refused += 1,
        }
    }
    assert!(patched >= 60, "only {patched}/300 pods patched");
    assert!(refused >= 30, "only {refused}/300 pods refused");
}
