//! Large AdmissionReview bodies for the benches: an opted-in pod padded to an exact size
//! in four shapes (one long env value, many minimal volumes, every port declared, many
//! minimal containers).

#![allow(dead_code, reason = "each bench uses a different subset")]

use serde_json::{Value, json};

pub const MIB: usize = 1024 * 1024;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// An AdmissionReview (CREATE of a Pod) carrying `object`.
pub fn envelope(object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0b1c2d3e-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "oldObject": null
        }
    })
}

/// An AdmissionReview of an opted-in pod with `spec` as given.
pub fn review(spec: Value) -> Value {
    envelope(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "big-", "annotations": {"holysheep/inject": "true"}},
        "spec": spec
    }))
}

/// `review` padded to exactly `size` bytes with a long env value in the first container.
pub fn padded(mut review: Value, size: usize) -> Result<Vec<u8>> {
    review["request"]["object"]["spec"]["containers"][0]["env"] =
        json!([{"name": "PADDING", "value": ""}]);
    let unpadded = serde_json::to_vec(&review)?.len();
    let room = size
        .checked_sub(unpadded)
        .ok_or("review larger than the target")?;
    review["request"]["object"]["spec"]["containers"][0]["env"][0]["value"] =
        json!("x".repeat(room));
    Ok(serde_json::to_vec(&review)?)
}

/// One container whose env value fills the review: injected.
pub fn text(size: usize) -> Result<Vec<u8>> {
    padded(
        review(json!({"containers": [{"name": "app", "image": "app:1"}]})),
        size,
    )
}

/// Volumes `{"name": "v1"}`, ... filling the review: injected.
pub fn volumes(size: usize) -> Result<Vec<u8>> {
    let mut volumes = Vec::new();
    let mut bytes = 0;
    while bytes + 1024 < size {
        let name = format!("v{}", volumes.len());
        bytes += name.len() + 12;
        volumes.push(json!({"name": name}));
    }
    padded(
        review(json!({"containers": [{"name": "app", "image": "app:1"}], "volumes": volumes})),
        size,
    )
}

/// An app container declaring every port from 1024 up: a port collision, refused.
pub fn ports(size: usize) -> Result<Vec<u8>> {
    let ports: Vec<Value> = (1024..=u16::MAX)
        .map(|p| json!({"containerPort": p, "protocol": "TCP"}))
        .collect();
    padded(
        review(json!({"containers": [{"name": "app", "image": "app:1", "ports": ports}]})),
        size,
    )
}

/// Containers `{"name": "c1"}`, ... filling the review: too many, refused.
pub fn containers(size: usize) -> Result<Vec<u8>> {
    let mut containers = vec![json!({"name": "app", "image": "app:1"})];
    let mut bytes = 0;
    while bytes + 1024 < size {
        let name = format!("c{}", containers.len());
        bytes += name.len() + 12;
        containers.push(json!({"name": name}));
    }
    padded(review(json!({"containers": containers})), size)
}
