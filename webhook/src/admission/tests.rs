//! Unit tests of `admission`.

use serde_json::json;

use super::*;

/// The body text of `review`, kept for the whole test: requests borrow from it.
fn body(review: &serde_json::Value) -> &'static [u8] {
    Box::leak(review.to_string().into_bytes().into_boxed_slice())
}

fn request(
    kind: &str,
    resource: &str,
    operation: &str,
    object: serde_json::Value,
) -> AdmissionRequest<'static> {
    let review = json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": resource},
            "requestKind": {"group": "", "version": "v1", "kind": kind},
            "requestResource": {"group": "", "version": "v1", "resource": resource},
            "name": "",
            "namespace": "shop",
            "operation": operation,
            "userInfo": {"username": "admin", "groups": ["system:authenticated"]},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    });
    AdmissionReview::parse(body(&review))
        .unwrap()
        .into_request()
        .unwrap()
}

fn plain_pod() -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-"},
        "spec": {"containers": [{"name": "app", "image": "nginx"}]}
    })
}

#[test]
fn envelope_errors_are_named() {
    let bad = |v: serde_json::Value| {
        AdmissionReview::parse(body(&v))
            .unwrap()
            .into_request()
            .unwrap_err()
    };
    assert!(matches!(
        bad(json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": KIND})),
        ReviewError::ApiVersion(_)
    ));
    assert!(matches!(
        bad(json!({"apiVersion": API_VERSION, "kind": "Pod"})),
        ReviewError::Kind(_)
    ));
    assert_eq!(
        bad(json!({"apiVersion": API_VERSION, "kind": KIND})),
        ReviewError::NoRequest
    );
    let no_uid = json!({"apiVersion": API_VERSION, "kind": KIND, "request": {
        "uid": "", "kind": {"kind": "Pod"}, "resource": {"resource": "pods"}, "operation": "CREATE"}});
    assert_eq!(bad(no_uid), ReviewError::NoUid);
}

#[test]
fn not_a_pod_is_allowed_unchanged() {
    let req = request("ConfigMap", "configmaps", "CREATE", json!({"data": {}}));
    let d = review(&req, &Settings::default());
    assert!(d.response.allowed);
    assert!(d.response.patch.is_none() && d.response.patch_type.is_none());
    assert_eq!(d.result, AdmissionResult::NotPod);
}

#[test]
fn pod_subresources_are_not_pods() {
    let mut req = request("Pod", "pods", "CREATE", plain_pod());
    req.sub_resource = Some("ephemeralcontainers".into());
    assert_eq!(
        review(&req, &Settings::default()).result,
        AdmissionResult::NotPod
    );
}

#[test]
fn update_is_allowed_unchanged() {
    let req = request("Pod", "pods", "UPDATE", plain_pod());
    let d = review(&req, &Settings::default());
    assert!(d.response.allowed);
    assert_eq!(d.result, AdmissionResult::NotCreate);
}

#[test]
fn an_undecodable_pod_is_refused_with_400_not_a_panic() {
    let req = request(
        "Pod",
        "pods",
        "CREATE",
        json!({"spec": {"containers": "nope"}}),
    );
    let d = review(&req, &Settings::default());
    assert!(!d.response.allowed);
    let status = d.response.status.unwrap();
    assert_eq!((status.code, status.reason), (400, "BadRequest"));
    assert!(
        status.message.contains("not a valid Pod"),
        "{}",
        status.message
    );
    assert_eq!(d.result, AdmissionResult::Error);
    let req = request("Pod", "pods", "CREATE", serde_json::Value::Null);
    assert!(!review(&req, &Settings::default()).response.allowed);
}

#[test]
fn a_pod_not_opted_in_is_skipped() {
    let req = request("Pod", "pods", "CREATE", plain_pod());
    let d = review(&req, &Settings::default());
    assert!(d.response.allowed);
    assert_eq!(d.result, AdmissionResult::Skipped);
    let text = serde_json::to_value(d.response.into_review()).unwrap();
    assert_eq!(
        text,
        json!({"apiVersion": API_VERSION, "kind": KIND, "response": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true}})
    );
}

#[test]
fn the_request_namespace_fills_an_empty_pod_namespace() {
    let req = request("Pod", "pods", "CREATE", plain_pod());
    assert_eq!(decode_pod(&req).unwrap().namespace.as_deref(), Some("shop"));
    let mut own = plain_pod();
    own["metadata"]["namespace"] = json!("other");
    let req = request("Pod", "pods", "CREATE", own);
    assert_eq!(
        decode_pod(&req).unwrap().namespace.as_deref(),
        Some("other")
    );
}

#[test]
fn denial_serializes_as_a_failure_status() {
    let r = AdmissionResponse::deny("u", 403, "no".into()).into_review();
    let v = serde_json::to_value(r).unwrap();
    assert_eq!(
        v["response"],
        json!({"uid": "u", "allowed": false, "status": {
            "status": "Failure", "code": 403, "reason": "Forbidden", "message": "no"}})
    );
}

#[test]
fn internal_error_is_a_500_refusal() {
    let d = internal_error("u");
    assert!(!d.response.allowed);
    assert_eq!(d.result, AdmissionResult::Error);
    assert_eq!(d.response.status.unwrap().code, 500);
}

#[test]
fn a_body_that_is_not_json_is_malformed() {
    for body in [&b"{not json"[..], b"[1,2]", b"", b"\xff"] {
        assert!(matches!(
            AdmissionReview::parse(body),
            Err(ReviewError::Malformed(_))
        ));
    }
}

#[test]
fn answer_reads_decides_and_serializes_in_one_step() {
    let review = json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "admin"},
            "object": {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"annotations": {"holysheep/inject": "true"}},
                "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 8080}]}]}},
            "oldObject": null
        }
    });
    let answer = answer(review.to_string().as_bytes(), &Settings::default()).unwrap();
    assert_eq!(answer.result, AdmissionResult::Denied);
    assert_eq!(answer.summary.uid, "u-1");
    assert_eq!(answer.summary.namespace, "shop");
    assert!(answer.summary.message.contains("collides"), "{answer:?}");
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["response"]["uid"], "u-1");
    assert_eq!(body["response"]["status"]["code"], 403);
}

#[test]
fn the_patch_is_base64_of_its_json() {
    let req = request(
        "Pod",
        "pods",
        "CREATE",
        json!({"metadata": {"annotations": {"holysheep/inject": "true"}},
               "spec": {"containers": [{"name": "app"}]}}),
    );
    let d = review(&req, &Settings::default());
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(d.response.patch.unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    assert!(!patch.is_empty());
}

/// Arbitrary JSON, biased toward Pod-ish keys so deserialization gets deep before failing.
fn arb_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    let key = prop_oneof![
        Just("metadata".to_owned()),
        Just("spec".to_owned()),
        Just("annotations".to_owned()),
        Just("containers".to_owned()),
        Just("initContainers".to_owned()),
        Just("name".to_owned()),
        Just("holysheep/inject".to_owned()),
        Just("hostNetwork".to_owned()),
        "[a-z/.~]{0,12}",
    ];
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        prop_oneof![Just("true".to_owned()), ".{0,8}"].prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(key.clone(), inner, 0..5)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

    /// Whatever the object, the answer is an answer: no panic, the uid echoed, a patch only
    /// when allowed.
    #[test]
    fn any_object_gets_an_answer(object in arb_json()) {
        let req = request("Pod", "pods", "CREATE", object);
        let d = review(&req, &Settings::default());
        proptest::prop_assert_eq!(&d.response.uid, &req.uid);
        proptest::prop_assert!(d.response.patch.is_none() || d.response.allowed);
        proptest::prop_assert_eq!(d.response.patch.is_some(), d.response.patch_type.is_some());
    }
}
