//! The README's "Try it offline" section, run as written: every `sh` block of the
//! section, taken from README.md at test time and run in order in one bash, as a
//! newcomer would paste them into one terminal. Its output must show what the text
//! around the blocks promises: the alias answered by gpt-4.1, the OpenAI Python SDK's
//! answer, the counted tokens and cost, and a quiet, clear sidecar log.
//!
//! The blocks build the binaries with cargo and call the official `openai` Python
//! package, which must be installed beforehand in `<target>/tmp/openai-venv` (`.ci/run`
//! does it): the test fails, never skips, without it. Free ports reach the blocks only
//! through the variables the README itself reads (`PORT`, `ADMIN_PORT`, `UPSTREAM_PORT`,
//! `VENV`); the text is never rewritten.
//!
//! Not here: the cluster sections (they need a cluster).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure should panic"
)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use holysheep_e2e::workspace_path;

/// The section's heading in README.md.
const SECTION: &str = "## Try it offline";
/// Bound on one run of all blocks (the build is done by then: the test binary's own
/// build compiled the same crates, only the two binaries may link).
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// Runs tried when a picked port was taken in between (it is picked, then bound by the
/// sidecar: another process may win the race).
const ATTEMPTS: usize = 3;

/// The `sh` blocks of the section, in order.
fn offline_blocks(readme: &str) -> Vec<String> {
    let start = readme
        .find(SECTION)
        .expect("README has a 'Try it offline' section");
    let body = &readme[start + SECTION.len()..];
    let end = body.find("\n## ").unwrap_or(body.len());
    let mut blocks = Vec::new();
    let mut rest = &body[..end];
    while let Some(open) = rest.find("```sh\n") {
        let after = &rest[open + "```sh\n".len()..];
        let close = after.find("```").expect("a closed sh block");
        blocks.push(after[..close].to_owned());
        rest = &after[close + 3..];
    }
    blocks
}

fn venv() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("openai-venv")
}

/// A port free at the time of asking.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the script's whole process group (the backgrounded sidecar and fake upstream
/// too) when the run ends, however it ends.
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .stderr(Stdio::null())
            .status();
    }
}

/// One run of `script`, in its own process group, bounded by [`RUN_TIMEOUT`].
fn run(script: &str, ports: [u16; 3]) -> Output {
    let child = Command::new("bash")
        .args(["-e", "-c", script])
        .current_dir(workspace_path(""))
        .env("PORT", ports[0].to_string())
        .env("ADMIN_PORT", ports[1].to_string())
        .env("UPSTREAM_PORT", ports[2].to_string())
        .env("VENV", venv())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("bash runs");
    let _group = Group(child.id());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(RUN_TIMEOUT)
        .expect("the README blocks finished in time")
        .expect("the README blocks ran")
}

#[test]
fn try_it_offline_runs_as_written() {
    let python = venv().join("bin/python");
    let has_openai = Command::new(&python)
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_openai,
        "the openai Python package is missing in {}: run .ci/run, or \
         python3 -m venv {0} && {0}/bin/pip install openai",
        venv().display()
    );

    let readme = std::fs::read_to_string(workspace_path("README.md")).unwrap();
    let blocks = offline_blocks(&readme);
    assert!(blocks.len() >= 5, "only {} sh blocks", blocks.len());
    let script = blocks.join("\n");
    for var in [
        "${PORT:-8080}",
        "${ADMIN_PORT:-9090}",
        "${UPSTREAM_PORT:-8099}",
    ] {
        assert!(script.contains(var), "the blocks no longer read {var}");
    }

    let mut output = None;
    for _ in 0..ATTEMPTS {
        let out = run(&script, [free_port(), free_port(), free_port()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lost_port_race = stderr.contains("failed to bind") && !out.status.success();
        output = Some(out);
        if !lost_port_race {
            break;
        }
    }
    let out = output.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the blocks failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );

    let expect = |what: &str| {
        assert!(
            stdout.lines().any(|l| l.trim_end() == what),
            "no line {what:?} in:\n{stdout}\n--- stderr\n{stderr}"
        );
    };
    // 2. ready; 3. plain curl; 4. the SDK; 5. the counters the text promises.
    expect("ready");
    expect("x-holysheep-model: gpt-4.1");
    expect("gpt-4.1 -> Hello! How can I help you today? (20 tokens)");
    expect(
        r#"holysheep_requests_total{route="chat_completions",model="gpt-4.1",requested_model="gpt-4",status="200"} 2"#,
    );
    expect(r#"holysheep_tokens_total{model="gpt-4.1",type="input"} 22"#);
    expect(r#"holysheep_tokens_total{model="gpt-4.1",type="output"} 18"#);
    // (22 + 18) tokens at $8 per 1M.
    expect(r#"holysheep_cost_usd_total{model="gpt-4.1"} 0.00032"#);

    // The sidecar's log as the text describes it, with nothing to puzzle a newcomer.
    let log: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let message = |m: &str| log.iter().find(|v| v["fields"]["message"] == m);
    let key = message("API key loaded from the environment (no key file)")
        .expect("the key's origin is logged");
    assert_eq!(key["fields"]["from"], "HOLYSHEEP_API_KEY");
    let listening = message("holysheep-sidecar listening").expect("a listening line");
    for field in ["proxy", "admin"] {
        let addr = listening["fields"][field].as_str().unwrap();
        assert!(
            addr.parse::<std::net::SocketAddr>().is_ok(),
            "{field}: {addr}"
        );
    }
    let warnings: Vec<_> = log.iter().filter(|v| v["level"] != "INFO").collect();
    assert!(warnings.is_empty(), "warnings in the demo: {warnings:#?}");
    assert!(!stderr.contains("sk-offline-demo"), "the key was logged");
}
