//! Refusal Events against the fake kube-apiserver on 127.0.0.1:0: a refused pod's owner
//! gets one Warning Event with the denial's message and nothing else is written; dry runs
//! and repeats post nothing; an apiserver that never answers delays no admission answer
//! and a full queue drops Events and counts them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] fns fail loudly"
)]

#[path = "bootstrap_mock/fake_apiserver.rs"]
#[allow(
    dead_code,
    reason = "shared with the bootstrap tests, which use all of it"
)]
mod fake_apiserver;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use fake_apiserver::FakeApiServer;
use holysheep_webhook::events::{EventSink, QUEUE};
use holysheep_webhook::metrics::EventResult;
use holysheep_webhook::server::{AppState, app};
use holysheep_webhook::settings::Settings;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

fn review() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/admission/pod_host_network.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The review of a hostNetwork pod owned by ReplicaSet `owner`.
fn refused(owner: &str, uid: &str) -> Value {
    let mut review = review();
    review["request"]["object"]["metadata"]["ownerReferences"][0]["name"] = json!(owner);
    review["request"]["object"]["metadata"]["ownerReferences"][0]["uid"] = json!(uid);
    review
}

async fn post(state: &AppState, review: &Value) -> Value {
    let request = Request::builder()
        .method(Method::POST)
        .uri("/mutate")
        .header("content-type", "application/json")
        .body(Body::from(review.to_string()))
        .unwrap();
    let response = app(state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice::<Value>(&body).unwrap()["response"].clone()
}

async fn wait_for_events(server: &FakeApiServer, count: usize) {
    let mut created = server.events_created.subscribe();
    tokio::time::timeout(Duration::from_secs(10), created.wait_for(|n| *n >= count))
        .await
        .expect("Events not created within 10s")
        .unwrap();
}

#[tokio::test]
async fn a_refused_pod_gets_one_warning_event_on_its_owner_and_nothing_else_is_written() {
    let server = FakeApiServer::start(None).await;
    let state = AppState::new(Settings::default());
    state.set_event_sink(EventSink::spawn(
        server.client(),
        "holysheep-webhook-7c9-abcde".to_owned(),
        state.metrics().clone(),
    ));

    let response = post(&state, &refused("chat-api-6d5f7c9b8d", "rs-1")).await;
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("hostNetwork"), "{message}");
    // A dry run has no side effects, and a repeat of the same refusal is not posted again.
    let mut dry = refused("chat-api-6d5f7c9b8d", "rs-1");
    dry["request"]["dryRun"] = json!(true);
    assert_eq!(post(&state, &dry).await["allowed"], false);
    assert_eq!(
        post(&state, &refused("chat-api-6d5f7c9b8d", "rs-1")).await["allowed"],
        false
    );
    // Another owner: posted. The queue is served in order, so once it is there, the
    // repeat above has been handled.
    post(&state, &refused("chat-api-other", "rs-2")).await;
    wait_for_events(&server, 2).await;

    let inner = server.lock();
    let (namespace, event) = &inner.events[0];
    assert_eq!(namespace, "shop");
    assert_eq!(
        event["regarding"],
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "chat-api-6d5f7c9b8d",
               "namespace": "shop", "uid": "rs-1"})
    );
    assert_eq!(event["apiVersion"], "events.k8s.io/v1");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "InjectionRefused");
    assert_eq!(event["action"], "Inject");
    assert_eq!(event["reportingController"], "holysheep-webhook");
    assert_eq!(event["reportingInstance"], "holysheep-webhook-7c9-abcde");
    assert_eq!(event["note"], message.as_str());
    assert!(event["eventTime"].is_string(), "{event}");
    assert_eq!(inner.events[1].1["regarding"]["name"], "chat-api-other");
    assert_eq!(inner.events.len(), 2);
    // Two creates of Events, and no other request of any kind.
    let requests: Vec<String> = inner
        .log
        .iter()
        .map(|s| format!("{} {} {}", s.method, s.path, s.status))
        .collect();
    assert_eq!(
        requests, ["POST /apis/events.k8s.io/v1/namespaces/shop/events 201"; 2],
        "{requests:?}"
    );
    assert_eq!(inner.queries.len(), 2, "{:?}", inner.queries);
    drop(inner);
    // The repeat was counted before the second Event went out (the second one's own count
    // may still be on its way back from the fake).
    assert_eq!(state.metrics().events(EventResult::Repeated), 1);
    assert!(state.metrics().events(EventResult::Posted) >= 1);
}

#[tokio::test]
async fn an_apiserver_that_never_answers_delays_no_admission_and_a_full_queue_drops() {
    // Accepts connections (the kernel backlog does) and never answers a byte.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let state = AppState::new(Settings::default());
    state.set_event_sink(EventSink::spawn(
        client,
        "w".to_owned(),
        state.metrics().clone(),
    ));
    let total = QUEUE + 16;
    for i in 0..total {
        // Each answer comes back while the post of the first Event hangs.
        let response = post(&state, &refused(&format!("rs-{i}"), &format!("u-{i}"))).await;
        assert_eq!(response["allowed"], false);
        assert_eq!(response["status"]["code"], 403);
    }
    // One Event in flight at most, QUEUE waiting: the rest were dropped and counted.
    let dropped = state.metrics().events(EventResult::Dropped);
    assert!(dropped >= 15, "dropped {dropped} of {total}");
    assert_eq!(state.metrics().events(EventResult::Posted), 0);
    drop(silent);
}
