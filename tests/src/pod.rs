//! Opted-in pods, and what the webhook makes of them: [`inject`] runs
//! `holysheep_webhook::mutation::mutate` and applies its RFC 6902 patch to the pod's JSON
//! as the apiserver does, then reads the result back as a typed `Pod`.
//!
//! It does not check the injection; the tests do.

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec, Volume};
use serde_json::{Value, json};

use holysheep_webhook::mutation;
use holysheep_webhook::settings::Settings;
use holysheep_webhook::sidecar::CONTAINER_NAME;

/// Name of the app container in [`opted_in_pod`].
pub const APP: &str = "app";

/// A pod in namespace `shop` with `holysheep/inject: "true"`, the extra `annotations`,
/// and one app container `app` listening on 3000.
pub fn opted_in_pod(annotations: &[(&str, &str)]) -> Pod {
    let mut map = serde_json::Map::new();
    map.insert("holysheep/inject".into(), json!("true"));
    for (key, value) in annotations {
        map.insert((*key).to_owned(), json!(value));
    }
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "shop-app-0", "namespace": "shop", "annotations": map},
        "spec": {"containers": [{
            "name": APP,
            "image": "example.com/shop/app:1.0",
            "ports": [{"containerPort": 3000}],
        }]},
    });
    serde_json::from_value(pod).unwrap_or_else(|e| panic!("test pod: {e}"))
}

/// Applies the webhook's patch for `pod` and returns the injected pod. Panics when the
/// webhook refuses or skips the pod.
pub fn inject(pod: &Pod, settings: &Settings) -> Pod {
    let patch = mutation::mutate(pod, settings)
        .unwrap_or_else(|e| panic!("the webhook refused the pod: {e}"))
        .unwrap_or_else(|| panic!("the webhook did not inject an opted-in pod"));
    let mut doc = serde_json::to_value(pod).unwrap_or_else(|e| panic!("pod to JSON: {e}"));
    json_patch::patch(&mut doc, &patch)
        .unwrap_or_else(|e| panic!("the webhook's patch does not apply: {e}"));
    serde_json::from_value(doc).unwrap_or_else(|e| panic!("the patched pod is not a Pod: {e}"))
}

/// Applies the webhook's patch to a pod template (`metadata` and `spec`) in JSON form.
pub fn inject_template(template: &Value, settings: &Settings) -> Value {
    let pod: Pod = serde_json::from_value(template.clone())
        .unwrap_or_else(|e| panic!("the template is not a Pod: {e}"));
    let patch = mutation::mutate(&pod, settings)
        .unwrap_or_else(|e| panic!("the webhook refused the template: {e}"))
        .unwrap_or_else(|| panic!("the webhook did not inject an opted-in template"));
    let mut doc = template.clone();
    json_patch::patch(&mut doc, &patch)
        .unwrap_or_else(|e| panic!("the webhook's patch does not apply: {e}"));
    doc
}

/// [`inject_template`] as the webhook sees a Deployment's pods: each is created by a
/// ReplicaSet named `<deployment>-<hash>` that labels it `pod-template-hash: <hash>` and
/// owns it. The patch made for that pod is applied to the template itself, which has the
/// same containers (a Deployment's template always has labels, so the label path exists).
pub fn inject_deployment_template(
    template: &Value,
    deployment: &str,
    settings: &Settings,
) -> Value {
    const HASH: &str = "5d8f7c9b4";
    let mut pod = template.clone();
    pod["metadata"]["labels"]["pod-template-hash"] = Value::from(HASH);
    pod["metadata"]["ownerReferences"] = serde_json::json!([{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{deployment}-{HASH}"),
        "uid": "rs-1", "controller": true, "blockOwnerDeletion": true
    }]);
    let pod: Pod =
        serde_json::from_value(pod).unwrap_or_else(|e| panic!("the template is not a Pod: {e}"));
    let patch = mutation::mutate(&pod, settings)
        .unwrap_or_else(|e| panic!("the webhook refused the template: {e}"))
        .unwrap_or_else(|| panic!("the webhook did not inject an opted-in template"));
    let mut doc = template.clone();
    json_patch::patch(&mut doc, &patch)
        .unwrap_or_else(|e| panic!("the webhook's patch does not apply: {e}"));
    doc
}

/// The pod's spec (panics when absent).
pub fn spec(pod: &Pod) -> &PodSpec {
    pod.spec
        .as_ref()
        .unwrap_or_else(|| panic!("the pod has no spec"))
}

/// The one `holysheep-sidecar` container, among init and app containers, and whether it
/// is an init container. Panics unless there is exactly one.
pub fn sidecar(pod: &Pod) -> (&Container, bool) {
    let spec = spec(pod);
    let init = spec.init_containers.iter().flatten().map(|c| (c, true));
    let app = spec.containers.iter().map(|c| (c, false));
    let found: Vec<_> = init
        .chain(app)
        .filter(|(c, _)| c.name == CONTAINER_NAME)
        .collect();
    assert_eq!(found.len(), 1, "expected one {CONTAINER_NAME} container");
    found[0]
}

/// The container called `name` (app containers only).
pub fn container<'a>(pod: &'a Pod, name: &str) -> &'a Container {
    spec(pod)
        .containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The volume called `name`.
pub fn volume<'a>(pod: &'a Pod, name: &str) -> &'a Volume {
    spec(pod)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// The env var `name` of `container`, if set.
pub fn env<'a>(container: &'a Container, name: &str) -> Option<&'a EnvVar> {
    container.env.iter().flatten().find(|e| e.name == name)
}

/// The literal value of env var `name` (panics when absent or not a literal).
pub fn env_value<'a>(container: &'a Container, name: &str) -> &'a str {
    env(container, name)
        .and_then(|e| e.value.as_deref())
        .unwrap_or_else(|| panic!("container {} has no literal env {name}", container.name))
}
