//! The `--upstream` flag at the binary's edge: a bad URL (flag or `HOLYSHEEP_UPSTREAM`)
//! stops the sidecar before it listens, with a message naming the flag, instead of sending
//! the key somewhere else; a good one is logged in full (scheme, host, port, path).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure should panic"
)]

use std::process::Stdio;
use std::time::Duration;

use rstest::rstest;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Upper bound on one run; a refused flag exits in milliseconds.
const BOUND: Duration = Duration::from_secs(30);
/// The startup log line's message.
const LISTENING: &str = "holysheep-sidecar listening";

/// How the upstream reaches the sidecar.
#[derive(Clone, Copy, Debug)]
enum Given {
    Flag,
    Env,
}

/// Starts the binary on ephemeral loopback ports with a key from env and only the
/// variables set here, so the test's own environment cannot change the outcome.
fn start(upstream: &str, given: Given, key_dir: &std::path::Path) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_holysheep-sidecar"));
    cmd.env_clear()
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--api-key-file")
        .arg(key_dir.join("api-key"))
        .env("HOLYSHEEP_API_KEY", "sk-upstream-flag-test")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match given {
        Given::Flag => cmd.arg("--upstream").arg(upstream),
        Given::Env => cmd.env("HOLYSHEEP_UPSTREAM", upstream),
    };
    cmd.spawn().expect("start holysheep-sidecar")
}

/// Reads stderr until the startup line (returned as `Ok`) or its end (all of it, `Err`).
async fn listening_line(child: &mut Child) -> Result<String, String> {
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.contains(LISTENING) {
            return Ok(line);
        }
        seen.push_str(&line);
        seen.push('\n');
    }
    Err(seen)
}

#[rstest]
#[case::port_above_range_flag(
    "http://127.0.0.1:65616/v1",
    Given::Flag,
    "has port 65616, outside 1-65535"
)]
#[case::port_above_range_env(
    "http://127.0.0.1:65616/v1",
    Given::Env,
    "has port 65616, outside 1-65535"
)]
#[case::port_99999(
    "http://127.0.0.1:99999/v1",
    Given::Flag,
    "has port 99999, outside 1-65535"
)]
#[case::empty_port("http://127.0.0.1:/v1", Given::Flag, "has an empty port after `:`")]
#[case::port_zero("http://127.0.0.1:0/v1", Given::Flag, "has port 0, outside 1-65535")]
#[tokio::test]
async fn bad_upstream_stops_the_sidecar_naming_the_flag(
    #[case] upstream: &str,
    #[case] given: Given,
    #[case] problem: &str,
) {
    let key_dir = tempfile::tempdir().unwrap();
    let mut child = start(upstream, given, key_dir.path());
    let run = async {
        let stderr = match listening_line(&mut child).await {
            Ok(line) => panic!("{upstream} ({given:?}): the sidecar started: {line}"),
            Err(stderr) => stderr,
        };
        (child.wait().await.unwrap(), stderr)
    };
    let (status, stderr) = tokio::time::timeout(BOUND, run)
        .await
        .expect("exit in time");
    assert!(!status.success(), "{upstream}: {status}");
    assert!(
        stderr.contains(&format!("--upstream: `{upstream}` {problem}")),
        "{upstream} ({given:?}): {stderr}"
    );
    assert!(
        stderr.contains("use e.g. https://api.holysheep.ai/v1"),
        "{stderr}"
    );
    assert!(!stderr.contains("sk-upstream-flag-test"), "{stderr}");
}

#[tokio::test]
async fn credentials_in_a_refused_upstream_are_not_echoed() {
    let key_dir = tempfile::tempdir().unwrap();
    let mut child = start(
        "http://user:s3cret@127.0.0.1/v1",
        Given::Flag,
        key_dir.path(),
    );
    let run = async {
        let stderr = listening_line(&mut child).await.unwrap_err();
        (child.wait().await.unwrap(), stderr)
    };
    let (status, stderr) = tokio::time::timeout(BOUND, run)
        .await
        .expect("exit in time");
    assert!(!status.success(), "{status}");
    assert!(
        stderr.contains("--upstream: `http://***@127.0.0.1/v1` carries credentials"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[rstest]
#[case::http_default_port("http://127.0.0.1/v1", "http://127.0.0.1:80/v1")]
#[case::https_default_port("https://127.0.0.1/v1/", "https://127.0.0.1:443/v1")]
#[case::explicit_port("http://127.0.0.1:4000/openai/v1", "http://127.0.0.1:4000/openai/v1")]
#[tokio::test]
async fn startup_log_shows_the_full_upstream(#[case] upstream: &str, #[case] logged: &str) {
    let key_dir = tempfile::tempdir().unwrap();
    let mut child = start(upstream, Given::Flag, key_dir.path());
    let line = tokio::time::timeout(BOUND, listening_line(&mut child))
        .await
        .expect("listening in time")
        .unwrap_or_else(|stderr| panic!("{upstream}: no startup line: {stderr}"));
    child.kill().await.unwrap();
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(json["fields"]["upstream"], logged, "{line}");
}
