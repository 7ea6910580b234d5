//! Unit tests of `server`.

use axum::body::Body;
use tower::ServiceExt as _;

use super::*;
use crate::metrics::AdmissionResult;

async fn call(state: &AppState, req: Request) -> (StatusCode, String) {
    let res = app(state.clone()).oneshot(req).await.unwrap();
    let status = res.status();
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

fn post(body: impl Into<Body>, content_type: &str) -> Request {
    Request::post("/mutate")
        .header(header::CONTENT_TYPE, content_type)
        .body(body.into())
        .unwrap()
}

#[tokio::test]
async fn malformed_bodies_are_400_with_a_message() {
    let state = AppState::new(Settings::default());
    let cases = [
        ("{not json", "application/json", "not an AdmissionReview"),
        ("{}", "text/plain", "Content-Type"),
        ("[1,2]", "application/json", "not an AdmissionReview"),
        (
            r#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#,
            "application/json",
            "admissionReviewVersions",
        ),
        (
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            "application/json",
            "no request",
        ),
        (
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x"}}"#,
            "application/json",
            "missing field",
        ),
    ];
    for (body, ct, needle) in cases {
        let (status, text) = call(&state, post(body, ct)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["code"], 400);
        assert!(
            v["message"].as_str().unwrap().contains(needle),
            "{body}: {text}"
        );
    }
    assert_eq!(
        state.metrics().admissions(AdmissionResult::InvalidRequest),
        6
    );
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let state = AppState::new(Settings::default());
    let body = vec![b' '; MAX_BODY_BYTES + 1];
    let (status, text) = call(&state, post(body, "application/json")).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
}

#[tokio::test]
async fn readyz_follows_the_latch_and_healthz_does_not() {
    let state = AppState::new(Settings::default());
    let get = |p: &str| Request::get(p).body(Body::empty()).unwrap();
    assert_eq!(call(&state, get("/readyz")).await.0, StatusCode::OK);
    state.set_ready(false);
    assert_eq!(
        call(&state, get("/readyz")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(call(&state, get("/healthz")).await.0, StatusCode::OK);
    assert_eq!(call(&state, get("/nope")).await.0, StatusCode::NOT_FOUND);
}
