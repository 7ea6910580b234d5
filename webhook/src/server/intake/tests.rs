//! Unit tests of `intake`, through the router: worker slots, the byte budget and the size
//! check before reading.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::Request;
use http_body::{Frame, SizeHint};
use tower::ServiceExt as _;

use super::*;
use crate::server::{AppState, MAX_BODY_BYTES, app};
use crate::settings::Settings;

const WAIT: Duration = Duration::from_secs(10);

fn review() -> Request<Body> {
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "object": {"metadata": {"annotations": {"holysheep/inject": "true"}},
                       "spec": {"containers": [{"name": "app"}]}}
        }
    });
    Request::post("/mutate")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(review.to_string()))
        .unwrap()
}

fn state(limits: Limits) -> AppState {
    AppState::with_limits(Settings::default(), limits)
}

async fn status_of(state: &AppState, request: Request<Body>) -> StatusCode {
    app(state.clone()).oneshot(request).await.unwrap().status()
}

#[tokio::test]
async fn a_review_waits_for_a_worker_and_healthz_does_not() {
    let state = state(Limits {
        concurrent_reviews: 1,
        queue_timeout: WAIT,
        ..Limits::default()
    });
    let busy = state
        .inner
        .intake
        .workers
        .clone()
        .try_acquire_owned()
        .unwrap();
    let mut call = tokio::spawn(app(state.clone()).oneshot(review()));
    // Every worker is taken: the review waits (a bounded look, it cannot finish early)...
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut call)
            .await
            .is_err(),
        "answered without a worker"
    );
    // ... while the health check answers at once.
    let health = Request::get("/healthz").body(Body::empty()).unwrap();
    assert_eq!(status_of(&state, health).await, StatusCode::OK);
    drop(busy);
    let response = tokio::time::timeout(WAIT, call)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_review_without_a_worker_in_time_gets_429() {
    let state = state(Limits {
        concurrent_reviews: 2,
        queue_timeout: Duration::from_millis(50),
        ..Limits::default()
    });
    let _busy = state
        .inner
        .intake
        .workers
        .clone()
        .try_acquire_many_owned(2)
        .unwrap();
    let response = app(state.clone()).oneshot(review()).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["code"], 429);
    assert!(body["message"].as_str().unwrap().contains("busy"), "{body}");
    assert_eq!(state.metrics().admissions(AdmissionResult::Busy), 1);
}

#[tokio::test]
async fn a_response_holds_its_bytes_in_the_budget_until_it_is_dropped() {
    let state = state(Limits::default());
    let budget = &state.inner.intake.budget;
    let all = budget.available_permits();
    let response = app(state.clone()).oneshot(review()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    // The body's bytes still hold their room: they are not written out yet.
    assert_eq!(budget.available_permits(), all - units(body.len()));
    drop(body);
    assert_eq!(budget.available_permits(), all);
}

#[tokio::test]
async fn a_review_that_does_not_fit_the_budget_in_time_gets_429() {
    let state = state(Limits {
        max_body_bytes: 8 * 1024,
        review_bytes_budget: 8 * 1024,
        queue_timeout: Duration::from_millis(50),
        ..Limits::default()
    });
    // Another review's body holds the whole budget.
    let _taken = state
        .inner
        .intake
        .budget
        .clone()
        .try_acquire_many_owned(8)
        .unwrap();
    assert_eq!(
        status_of(&state, review()).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// A body that declares `len` bytes and never sends one.
struct Declared(u64);

impl HttpBody for Declared {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Pending
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0)
    }
}

fn declared(len: usize) -> Request<Body> {
    Request::post("/mutate")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::new(Declared(len as u64)))
        .unwrap()
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_413_without_reading() {
    let state = state(Limits::default());
    let response = tokio::time::timeout(
        WAIT,
        app(state.clone()).oneshot(declared(MAX_BODY_BYTES + 1)),
    )
    .await
    .expect("answered without waiting for the body")
    .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // At the limit, the body is awaited (and cut at the body deadline).
    let state = self::state(Limits {
        body_timeout: Duration::from_millis(50),
        ..Limits::default()
    });
    let response = app(state.clone())
        .oneshot(declared(MAX_BODY_BYTES))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(state.metrics().admissions(AdmissionResult::TimedOut), 1);
}

#[test]
fn json_content_types_are_accepted() {
    let accepted = |value: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
        check_content_type(&headers).is_ok()
    };
    assert!(accepted("application/json"));
    assert!(accepted("application/json; charset=utf-8"));
    assert!(accepted("Application/JSON"));
    assert!(accepted("application/merge-patch+json"));
    assert!(!accepted("text/plain"));
    assert!(!accepted("application/yaml"));
    assert!(!accepted("text/json+json"));
    assert!(check_content_type(&HeaderMap::new()).is_err());
}

#[test]
fn every_refusal_has_its_status() {
    let cases = [
        (Refusal::ContentType, 400),
        (Refusal::TooLarge { limit: 1 }, 413),
        (Refusal::BodyTimeout(Duration::from_secs(1)), 408),
        (Refusal::BodyRead("reset".into()), 400),
        (Refusal::Busy(Duration::from_secs(1)), 429),
        (Refusal::Internal, 500),
    ];
    for (refusal, status) in cases {
        assert_eq!(refusal.status().as_u16(), status, "{refusal}");
    }
}
