//! The admission server end to end: real TLS verified against a CA from holysheep-certs,
//! AdmissionReview v1 requests shaped like kube-apiserver's (fixtures), the base64 patch
//! applied with `json-patch` to the original pod and the result checked as a typed Pod.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "helpers of a test binary: a failed step should fail the test loudly"
)]

mod tls_support;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use tls_support::{TestServer, fixture, start};

use holysheep_webhook::settings::Settings;

const SIDECAR: &str = "holysheep-sidecar";
const CREDENTIALS: &str = "holysheep-credentials";

async fn post_review(server: &TestServer, review: &Value) -> (reqwest::StatusCode, Value) {
    let res = server
        .client()
        .post(server.url("/mutate"))
        .json(review)
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap())
}

/// Sends `review`, checks the envelope, and returns the response and the decoded patch.
async fn admit(server: &TestServer, review: &Value) -> (Value, Option<json_patch::Patch>) {
    let (status, body) = post_review(server, review).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(body["kind"], "AdmissionReview");
    let response = body["response"].clone();
    assert_eq!(response["uid"], review["request"]["uid"], "uid echoed");
    let patch = response.get("patch").map(|p| {
        assert_eq!(response["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(p.as_str().unwrap())
            .unwrap();
        serde_json::from_slice::<json_patch::Patch>(&bytes).unwrap()
    });
    if patch.is_none() {
        assert!(
            response.get("patchType").is_none(),
            "patchType only with a patch: {response}"
        );
    }
    (response, patch)
}

fn apply(object: &Value, patch: &json_patch::Patch) -> Value {
    let mut doc = object.clone();
    json_patch::patch(&mut doc, patch).unwrap();
    doc
}

fn with_object(review: &Value, object: Value) -> Value {
    let mut review = review.clone();
    review["request"]["object"] = object;
    review["request"]["uid"] = json!("c0ffee00-0000-4000-8000-000000000001");
    review
}

fn env_of<'a>(c: &'a k8s_openapi::api::core::v1::Container, name: &str) -> Option<&'a str> {
    c.env
        .as_deref()?
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

fn check_injected(pod: &Pod) {
    let spec = pod.spec.as_ref().unwrap();
    let annotations = pod.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations["holysheep/status"], "injected");
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["holysheep/sidecar-version"],
        env!("CARGO_PKG_VERSION"),
        "the default image is the webhook's own version"
    );
    let hash = &annotations["holysheep/injected-config"];
    assert!(
        hash.len() == 12 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "{hash}"
    );
    assert_eq!(
        pod.metadata.labels.as_ref().unwrap()["holysheep.ai/injected"],
        "true"
    );
    let init = spec.init_containers.as_deref().unwrap();
    let sidecar = &init[0];
    assert_eq!(sidecar.name, SIDECAR, "sidecar is the first initContainer");
    assert_eq!(
        sidecar.restart_policy.as_deref(),
        Some("Always"),
        "native sidecar"
    );
    assert!(sidecar.startup_probe.is_some());
    let sidecar_mounts = sidecar.volume_mounts.as_deref().unwrap();
    assert!(sidecar_mounts.iter().any(|m| m.name == CREDENTIALS
        && m.mount_path == "/var/run/secrets/holysheep"
        && m.read_only == Some(true)));
    let sc = sidecar.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let volumes = spec.volumes.as_deref().unwrap();
    let credentials = volumes.iter().find(|v| v.name == CREDENTIALS).unwrap();
    assert!(credentials.secret.is_some());
    for app in &spec.containers {
        assert_ne!(app.name, SIDECAR);
        assert!(
            app.volume_mounts
                .as_deref()
                .unwrap_or_default()
                .iter()
                .all(|m| m.name != CREDENTIALS),
            "no credential mount in app container {}",
            app.name
        );
        assert_eq!(env_of(app, "OPENAI_API_KEY"), Some("injected-by-holysheep"));
        assert_eq!(
            env_of(app, "HOLYSHEEP_BASE_URL"),
            Some("http://127.0.0.1:8080/v1")
        );
        assert_eq!(
            env_of(app, "OPENAI_API_BASE"),
            Some("http://127.0.0.1:8080/v1")
        );
        assert!(env_of(app, "OPENAI_BASE_URL").is_some());
    }
}

#[tokio::test]
async fn deployment_pod_is_injected_once_over_tls() {
    let server = start(Settings::default()).await;
    let review = fixture("pod_deployment_opted_in.json");
    let original = review["request"]["object"].clone();

    let (response, patch) = admit(&server, &review).await;
    assert_eq!(response["allowed"], true);
    let patch = patch.expect("an opted-in pod gets a patch");
    let patched = apply(&original, &patch);
    let pod: Pod = serde_json::from_value(patched.clone()).unwrap();
    check_injected(&pod);
    let spec = pod.spec.as_ref().unwrap();
    // What the app set itself is kept.
    let app = &spec.containers[0];
    assert_eq!(env_of(app, "LOG_LEVEL"), Some("info"));
    assert_eq!(
        app.env
            .as_deref()
            .unwrap()
            .iter()
            .filter(|e| e.name == "OPENAI_BASE_URL")
            .count(),
        1
    );
    // The ServiceAccount volume the apiserver added is untouched.
    assert!(
        spec.volumes
            .as_deref()
            .unwrap()
            .iter()
            .any(|v| v.name == "kube-api-access-7xk2p")
    );
    assert_eq!(
        pod.metadata.annotations.as_ref().unwrap()["kubectl.kubernetes.io/default-container"],
        "app"
    );
    // The pod has only generateName: no name appears out of nowhere.
    assert!(pod.metadata.name.is_none());
    // Its replicas share budgets under the Deployment's name, not the ReplicaSet's, which
    // changes with every rollout.
    let sidecar = &spec.init_containers.as_deref().unwrap()[0];
    assert_eq!(
        env_of(sidecar, "HOLYSHEEP_BUDGET_KEY"),
        Some("$(POD_NAMESPACE)/chat-api")
    );
    assert_eq!(env_of(sidecar, "HOLYSHEEP_BUDGET_USD_PER_DAY"), None);

    // Reinvocation (reinvocationPolicy: IfNeeded) sees the patched pod: no second patch.
    let (response, patch) = admit(&server, &with_object(&review, patched)).await;
    assert_eq!(response["allowed"], true);
    assert!(patch.is_none(), "second pass must not patch: {response}");
    server.stop().await;
}

/// A Job's pod with a typo, a plain sidecar and apps that set their own OpenAI env: admitted
/// and patched, with one warning line each, short, naming no value.
#[tokio::test]
async fn warnings_reach_kubectl_through_the_review() {
    let server = start(Settings::default()).await;
    let review = fixture("pod_deployment_opted_in.json");
    let mut object = review["request"]["object"].clone();
    object["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "batch/v1", "kind": "Job", "name": "nightly-29", "uid": "j-1",
        "controller": true, "blockOwnerDeletion": true
    }]);
    let annotations = &mut object["metadata"]["annotations"];
    annotations["holysheep/prot"] = json!("8081");
    annotations["holysheep/native-sidecar"] = json!("false");
    object["spec"]["containers"] = json!([
        {"name": "direct", "image": "a", "env": [
            {"name": "OPENAI_BASE_URL", "value": "https://api.openai.com/v1"}]},
        {"name": "keyed", "image": "a", "env": [
            {"name": "OPENAI_API_KEY", "value": "sk-app-own-secret"}]},
        {"name": "plain", "image": "a"}
    ]);
    let review = with_object(&review, object.clone());
    let (response, patch) = admit(&server, &review).await;
    assert_eq!(response["allowed"], true);
    let warnings: Vec<&str> = response["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(
        warnings,
        [
            "unknown annotation holysheep/prot is ignored: did you mean holysheep/port?",
            "holysheep/native-sidecar: \"false\" in a Job's pod: the plain sidecar never exits, \
             so the Job never completes",
            "container \"direct\" sets its own OPENAI_BASE_URL/OPENAI_API_BASE: it bypasses the \
             sidecar",
            "container \"keyed\" sets OPENAI_API_KEY: unused, the sidecar sends the HolySheep key",
        ]
    );
    assert!(
        warnings
            .iter()
            .all(|w| w.len() < 120 && !w.contains("sk-app"))
    );
    let pod: Pod = serde_json::from_value(apply(&object, &patch.unwrap())).unwrap();
    let containers = &pod.spec.as_ref().unwrap().containers;
    // Its own base URL: kept, and no placeholder key to send to that provider.
    assert_eq!(
        env_of(&containers[0], "OPENAI_BASE_URL"),
        Some("https://api.openai.com/v1")
    );
    assert_eq!(env_of(&containers[0], "OPENAI_API_KEY"), None);
    // Its own key: kept; the base URL is the sidecar's.
    assert_eq!(
        env_of(&containers[1], "OPENAI_API_KEY"),
        Some("sk-app-own-secret")
    );
    assert_eq!(
        env_of(&containers[1], "OPENAI_BASE_URL"),
        Some("http://127.0.0.1:8080/v1")
    );
    assert_eq!(
        env_of(&containers[2], "OPENAI_API_KEY"),
        Some("injected-by-holysheep")
    );

    // A pod that is not opted in still hears about a misspelt opt-in.
    let mut object = review["request"]["object"].clone();
    object["metadata"]["annotations"] = json!({"holysheep/injct": "true"});
    let (response, patch) = admit(&server, &with_object(&review, object)).await;
    assert!(patch.is_none());
    assert_eq!(
        response["warnings"],
        json!(["unknown annotation holysheep/injct is ignored: did you mean holysheep/inject?"])
    );
    server.stop().await;
}

#[tokio::test]
async fn bare_pod_gets_arrays_and_maps_created() {
    let server = start(Settings::default()).await;
    let review = fixture("pod_bare_opted_in.json");
    let original = review["request"]["object"].clone();
    assert!(
        original["spec"].get("volumes").is_none()
            && original["spec"].get("initContainers").is_none()
    );
    let (_, patch) = admit(&server, &review).await;
    let pod: Pod = serde_json::from_value(apply(&original, &patch.unwrap())).unwrap();
    check_injected(&pod);
    assert_eq!(pod.metadata.name.as_deref(), Some("bare"));
    server.stop().await;
}

#[tokio::test]
async fn dry_run_gets_the_same_answer() {
    let server = start(Settings::default()).await;
    let review = fixture("pod_deployment_opted_in.json");
    let mut dry = review.clone();
    dry["request"]["dryRun"] = json!(true);
    let (_, wet_patch) = admit(&server, &review).await;
    let (_, dry_patch) = admit(&server, &dry).await;
    assert_eq!(wet_patch, dry_patch);
    server.stop().await;
}

#[tokio::test]
async fn pass_throughs_and_refusals() {
    let server = start(Settings::default()).await;

    // Not a pod: allowed unchanged.
    let (response, patch) = admit(&server, &fixture("configmap_create.json")).await;
    assert_eq!(response["allowed"], true);
    assert!(patch.is_none() && response.get("status").is_none());

    // Not opted in: allowed unchanged.
    let (response, patch) = admit(&server, &fixture("pod_not_opted_in.json")).await;
    assert_eq!(response["allowed"], true);
    assert!(patch.is_none());

    // UPDATE of an opted-in pod: allowed unchanged.
    let mut update = fixture("pod_deployment_opted_in.json");
    update["request"]["operation"] = json!("UPDATE");
    update["request"]["oldObject"] = update["request"]["object"].clone();
    let (response, patch) = admit(&server, &update).await;
    assert_eq!(response["allowed"], true);
    assert!(patch.is_none());

    // Invalid annotation: refused, the message names the annotation.
    let (response, patch) = admit(&server, &fixture("pod_invalid_port_annotation.json")).await;
    assert_eq!(response["allowed"], false);
    assert!(patch.is_none());
    assert_eq!(response["status"]["code"], 400);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(message.contains("holysheep/port"), "{message}");

    // hostNetwork: refused with a clear message.
    let (response, _) = admit(&server, &fixture("pod_host_network.json")).await;
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 403);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(message.contains("hostNetwork"), "{message}");

    // A pod object that does not decode: refused, not a panic, and the server lives on.
    let broken = with_object(
        &fixture("pod_deployment_opted_in.json"),
        json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"annotations": "oops"}, "spec": {}}),
    );
    let (response, _) = admit(&server, &broken).await;
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 400);
    server.stop().await;
}

#[tokio::test]
async fn malformed_bodies_get_400_with_a_message() {
    let server = start(Settings::default()).await;
    let client = server.client();
    let cases: [(&str, &str, &str); 4] = [
        (
            "{\"apiVersion\":",
            "application/json",
            "not an AdmissionReview",
        ),
        ("hello", "text/plain", "Content-Type"),
        (
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u"}}"#,
            "application/json",
            "missing field",
        ),
        (
            r#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#,
            "application/json",
            "admission.k8s.io/v1",
        ),
    ];
    for (body, content_type, needle) in cases {
        let res = client
            .post(server.url("/mutate"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{body}");
        let v: Value = res.json().await.unwrap();
        assert!(
            v["message"].as_str().unwrap().contains(needle),
            "{body}: {v}"
        );
    }
    // Still serving after all that.
    let (status, _) = post_review(&server, &fixture("configmap_create.json")).await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test]
async fn http2_and_http1_both_work() {
    let server = start(Settings::default()).await;
    let review = fixture("pod_deployment_opted_in.json");
    for (alpn, version) in [
        (&[b"h2".as_slice()][..], reqwest::Version::HTTP_2),
        (&[b"http/1.1".as_slice()][..], reqwest::Version::HTTP_11),
    ] {
        let res = server
            .client_alpn(alpn)
            .post(server.url("/mutate"))
            .json(&review)
            .send()
            .await
            .unwrap();
        assert_eq!(res.version(), version);
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["response"]["patchType"], "JSONPatch");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_client_not_trusting_the_ca_is_refused() {
    let server = start(Settings::default()).await;
    let other = tls_support::new_ca();
    let client = tls_support::client_for(&[other.cert_pem()], server.addr, &[b"h2"]);
    assert!(client.get(server.url("/healthz")).send().await.is_err());
    server.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let server = start(Settings::default()).await;
    let client = server.client();
    let res = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let res = client.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 200);

    admit(&server, &fixture("pod_deployment_opted_in.json")).await;
    admit(&server, &fixture("pod_host_network.json")).await;
    admit(&server, &fixture("configmap_create.json")).await;

    let res = client.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    for line in [
        "holysheep_webhook_admissions_total{result=\"injected\"} 1",
        "holysheep_webhook_admissions_total{result=\"denied\"} 1",
        "holysheep_webhook_admissions_total{result=\"not_pod\"} 1",
        "holysheep_webhook_admission_duration_seconds_count 3",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    server.stop().await;
}

#[tokio::test]
async fn shutdown_fails_readiness_and_drains() {
    let server = start(Settings::default()).await;
    let client = server.client();
    // An open HTTP/2 connection with a completed request.
    assert_eq!(
        client
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let state = server.state.clone();
    let addr = server.addr;
    server.stop().await;
    assert_eq!(
        client
            .get(format!(
                "https://{}:{}/readyz",
                tls_support::HOST,
                addr.port()
            ))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16()),
        None,
        "listener is closed after shutdown"
    );
    // The readiness latch flipped before the listener closed.
    let res = tower::ServiceExt::oneshot(
        holysheep_webhook::server::app(state),
        axum::http::Request::get("/readyz")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 503);
}

#[tokio::test]
async fn concurrent_reviews_on_one_http2_connection_keep_their_uids() {
    let server = start(Settings::default()).await;
    let client = server.client_alpn(&[b"h2"]);
    let review = fixture("pod_deployment_opted_in.json");
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..64 {
        let client = client.clone();
        let url = server.url("/mutate");
        let mut review = review.clone();
        let uid = format!("00000000-0000-4000-8000-{i:012}");
        review["request"]["uid"] = json!(uid);
        calls.spawn(async move {
            let res = client.post(url).json(&review).send().await.unwrap();
            assert_eq!(res.version(), reqwest::Version::HTTP_2);
            let body: Value = res.json().await.unwrap();
            (uid, body)
        });
    }
    let mut answered = 0;
    while let Some(joined) = calls.join_next().await {
        let (uid, body) = joined.unwrap();
        assert_eq!(body["response"]["uid"], uid.as_str());
        assert_eq!(body["response"]["patchType"], "JSONPatch");
        answered += 1;
    }
    assert_eq!(answered, 64);
    server.stop().await;
}
