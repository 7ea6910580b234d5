//! The training load of the profile-guided release build (`scripts/pgo-build.sh`) against
//! the real binary: every phase is answered as expected over both upstreams, and the
//! sidecar exits cleanly on SIGTERM (when an instrumented build writes its profile). A
//! training run that breaks must fail the build, not leave a profile of error paths.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure should panic"
)]

use holysheep_bench::pgo::{self, Phase, Plan};

fn plan(sidecar: &str, dir: &tempfile::TempDir) -> Plan {
    Plan {
        sidecar: sidecar.into(),
        work_dir: dir.path().to_owned(),
        requests: 160,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_training_load_runs_every_phase_over_both_upstreams() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(env!("CARGO_BIN_EXE_holysheep-sidecar"), &dir);
    let phases = pgo::train(&plan).await.expect("training failed");
    let mut want = Vec::new();
    for upstream in ["http", "https"] {
        for (name, requests) in [
            ("chat x1", 160),
            ("chat x16", 160),
            ("chat x64", 160),
            // A tenth of the JSON count, but at least one per stream client.
            ("stream x8", 16),
            ("models x1", 20),
        ] {
            want.push(Phase {
                upstream,
                name: name.to_owned(),
                requests,
            });
        }
    }
    assert_eq!(phases, want);
    // The sidecar's own log has no warning: nothing on the trained path failed.
    for upstream in ["http", "https"] {
        let log =
            std::fs::read_to_string(dir.path().join(format!("sidecar-{upstream}.log"))).unwrap();
        assert!(!log.contains("WARN"), "{upstream}: {log}");
    }
}

#[tokio::test]
async fn a_sidecar_that_exits_at_start_fails_the_training_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let err = pgo::train(&plan("/bin/true", &dir)).await.unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("training against the http upstream")
            && message.contains("exited (exit status: 0) before it was ready"),
        "{message}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
