//! The API key: Kubernetes Secret rotation through a `..data` symlink swap picked up
//! without restart, a bad rotation (previous key kept, counted as a failed reload), env
//! fallback, and the no-key behaviour (503 + not ready).

#![allow(clippy::unwrap_used, reason = "tests: a failure should panic")]

mod observe;
mod support;

use std::time::Duration;

use secrecy::SecretString;
use support::upstream::FakeUpstream;
use support::{Sidecar, TEST_KEY, eventually, rotate_secret, sdk_error, secret_volume, settings};

const MODELS: &str = r#"{"object":"list","data":[]}"#;

async fn bearer_seen_after_one_call(sidecar: &Sidecar, up: &FakeUpstream) -> String {
    let before = up.requests().len();
    sidecar.openai().models().list().await.unwrap();
    let seen = up.wait_for_requests(before + 1).await;
    seen[before].header("authorization").to_owned()
}

#[tokio::test]
async fn rotated_secret_is_picked_up_without_restart() {
    let up = FakeUpstream::always_json(200, MODELS).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = secret_volume(dir.path(), "2026_a", "sk-first\n");
    let mut s = settings(&up.url());
    s.key_source.file = key_file;
    s.key_source.env_key = None;
    // An hour-long safety-net interval: only the directory watch can make this pass.
    s.key_recheck = Duration::from_secs(3600);
    let sidecar = Sidecar::start_with(s).await;
    assert_eq!(sidecar.readyz().await, 200);
    assert_eq!(
        bearer_seen_after_one_call(&sidecar, &up).await,
        "Bearer sk-first"
    );
    let mut reloads = sidecar.keys().subscribe();
    let before = *reloads.borrow_and_update();

    rotate_secret(dir.path(), "2026_b", "  sk-second  \n");
    tokio::time::timeout(Duration::from_secs(5), reloads.wait_for(|n| *n > before))
        .await
        .expect("the key reload after the ..data swap")
        .unwrap();

    assert_eq!(
        bearer_seen_after_one_call(&sidecar, &up).await,
        "Bearer sk-second"
    );
    assert_eq!(sidecar.readyz().await, 200);

    // A bad rotation (empty key): counted once on /metrics, the previous key stays.
    rotate_secret(dir.path(), "2026_c", "");
    eventually(Duration::from_secs(5), "the failed key reload", || async {
        let (_, s) = observe::scrape(&sidecar).await;
        observe::value(&s, "holysheep_key_reloads_total", &[("result", "failure")]) == Some(1.0)
    })
    .await;
    assert_eq!(
        bearer_seen_after_one_call(&sidecar, &up).await,
        "Bearer sk-second"
    );
    assert_eq!(sidecar.readyz().await, 200);
}

#[tokio::test]
async fn env_key_is_used_when_the_file_is_absent() {
    let up = FakeUpstream::always_json(200, MODELS).await;
    let sidecar = Sidecar::start(&up.url()).await; // file absent, env TEST_KEY
    assert_eq!(
        bearer_seen_after_one_call(&sidecar, &up).await,
        format!("Bearer {TEST_KEY}")
    );
}

#[tokio::test]
async fn no_key_answers_503_and_is_not_ready_until_a_key_appears() {
    let up = FakeUpstream::always_json(200, MODELS).await;
    let dir = tempfile::tempdir().unwrap();
    // The Secret directory does not even exist yet: no watch is possible, so the
    // periodic re-check must find the key once it shows up.
    let secret_dir = dir.path().join("secret");
    let mut s = settings(&up.url());
    s.key_source.file = secret_dir.join("api-key");
    s.key_source.env_key = Some(SecretString::from("   "));
    s.key_recheck = Duration::from_millis(50);
    let sidecar = Sidecar::start_with(s).await;

    assert_eq!(sidecar.readyz().await, 503);
    let err = sidecar.openai().models().list().await.unwrap_err();
    let (status, error) = sdk_error(&err);
    assert_eq!(status, 503);
    assert_eq!(error["code"], "no_api_key");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("HOLYSHEEP_API_KEY"),
        "{error}"
    );
    assert!(up.requests().is_empty(), "nothing forwarded without a key");

    std::fs::create_dir_all(&secret_dir).unwrap();
    secret_volume(&secret_dir, "2026_a", "sk-late");
    eventually(
        Duration::from_secs(5),
        "readiness after the key appeared",
        || async { sidecar.readyz().await == 200 },
    )
    .await;
    assert_eq!(
        bearer_seen_after_one_call(&sidecar, &up).await,
        "Bearer sk-late"
    );
}
