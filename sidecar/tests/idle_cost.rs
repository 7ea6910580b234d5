//! Idle cost of the real `holysheep-sidecar` binary: with no traffic, in every key and
//! config file layout, the process uses no measurable CPU, and a bad file is logged once,
//! not at every read.
//!
//! Each case runs the binary on ephemeral loopback ports with its stderr captured; all
//! cases run at once to save wall time. A case waits until the sidecar is ready (or only
//! healthy, when it has no key on purpose), applies its change (a rewrite, a `..data`
//! swap as the kubelet does it, an emptied or invalid file, a removed directory), waits
//! on `/metrics` until the sidecar has taken the change in, and only then is the process
//! CPU time (utime + stime from /proc/<pid>/stat) sampled over a window with no traffic.
//! Linux only, like the /proc it reads.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure should panic"
)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{eventually, http_client, rotate_secret, secret_volume};

/// How long each idle window lasts.
const WINDOW: Duration = Duration::from_secs(10);
/// Clock ticks per second in /proc/<pid>/stat: USER_HZ, 100 on x86, arm and riscv Linux.
const TICKS_PER_SECOND: u64 = 100;
/// The most CPU an idle sidecar may use over [`WINDOW`]: 0.5 % of one core. A watcher
/// spinning on its own reads uses close to 100 %.
const MAX_IDLE_TICKS: u64 = WINDOW.as_secs() * TICKS_PER_SECOND / 200;
/// Bound on startup, reloads and readiness (debug builds on a busy machine).
const SETUP: Duration = Duration::from_secs(60);
/// Stderr lines kept per process for failure messages (the rest are only counted).
const KEPT_LINES: usize = 50;

const GOOD_CONFIG: &str = "retry:\n  max_attempts: 2\n";
const OTHER_CONFIG: &str = "retry:\n  max_attempts: 4\n";
const BAD_CONFIG: &str = "retry:\n  max_attemps: 4\n";
const BAD_KEY: &str = "sk-\u{1}bad";

/// What a sidecar wrote on stderr: a count of every line, the first few kept.
#[derive(Default)]
struct Stderr {
    lines: AtomicUsize,
    kept: Mutex<Vec<String>>,
}

impl Stderr {
    fn count(&self) -> usize {
        self.lines.load(Ordering::SeqCst)
    }

    fn kept(&self) -> Vec<String> {
        self.kept.lock().unwrap().clone()
    }

    /// Kept lines whose message is `message`.
    fn with_message(&self, message: &str) -> usize {
        self.kept()
            .iter()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .is_ok_and(|v| v["fields"]["message"] == message)
            })
            .count()
    }
}

/// A running sidecar process; dropping it kills it.
struct Proc {
    name: &'static str,
    child: Child,
    admin: SocketAddr,
    stderr: Arc<Stderr>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The pipe closed with the process, so the reader ends.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Proc {
    /// Starts the binary with `--api-key-file key` and `--config config` (listeners on
    /// ephemeral ports, a loopback upstream that is never called, only `env_key` in its
    /// environment) and waits for its "listening" line, which names the admin address.
    async fn start(
        name: &'static str,
        key: &Path,
        config: Option<&Path>,
        env_key: Option<&str>,
    ) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_holysheep-sidecar"));
        cmd.env_clear()
            .env("RUST_LOG", "info")
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--upstream", "http://127.0.0.1:9/v1"])
            .arg("--api-key-file")
            .arg(key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        if let Some(key) = env_key {
            cmd.env("HOLYSHEEP_API_KEY", key);
        }
        let mut child = cmd.spawn().unwrap();
        let pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Stderr::default());
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A thread drains the pipe all the time: a full pipe would block the sidecar's
        // writes and hide a log flood (and the CPU it burns).
        let reader = std::thread::spawn({
            let stderr = Arc::clone(&stderr);
            move || {
                let mut tx = Some(tx);
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = admin_addr(&line) {
                        tx.take().map(|tx| tx.send(addr));
                    }
                    let mut kept = stderr.kept.lock().unwrap();
                    if kept.len() < KEPT_LINES {
                        kept.push(line);
                    }
                    drop(kept);
                    stderr.lines.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        let mut proc = Self {
            name,
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr,
            reader: Some(reader),
        };
        proc.admin = match tokio::time::timeout(SETUP, rx).await {
            Ok(Ok(addr)) => addr,
            _ => panic!(
                "{name}: no listening line; stderr: {:?}",
                proc.stderr.kept()
            ),
        };
        proc
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Waits until `path` (`/readyz` or `/healthz`) answers 200.
    async fn wait_ok(&self, path: &str) {
        let http = http_client();
        let url = self.url(path);
        eventually(SETUP, &format!("{}: {path}", self.name), || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                http.get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
    }

    async fn readyz(&self) -> u16 {
        let response = http_client().get(self.url("/readyz")).send().await.unwrap();
        response.status().as_u16()
    }

    /// Waits until the counter `series` (name and labels as on `/metrics`) reads `want`.
    async fn wait_metric(&self, series: &str, want: f64) {
        let http = http_client();
        let url = self.url("/metrics");
        let what = format!("{}: {series} = {want}", self.name);
        eventually(SETUP, &what, || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let Ok(response) = http.get(&url).send().await else {
                    return false;
                };
                let text = response.text().await.unwrap_or_default();
                metric(&text, series) == Some(want)
            }
        })
        .await;
    }

    /// utime + stime of the process so far, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the `(comm)`, which may hold spaces: state is the first, then
        // utime and stime are the 12th and 13th.
        let after_comm = &stat[stat.rfind(')').unwrap() + 1..];
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }
}

/// The admin address from the sidecar's "listening" log line.
fn admin_addr(line: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["fields"]["message"] != "holysheep-sidecar listening" {
        return None;
    }
    // Logged as a plain `127.0.0.1:PORT`.
    v["fields"]["admin"].as_str()?.parse().ok()
}

/// The value of `series` in a Prometheus text exposition.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

const KEY_OK: &str = r#"holysheep_key_reloads_total{result="success"}"#;
const KEY_FAILED: &str = r#"holysheep_key_reloads_total{result="failure"}"#;
const CONFIG_OK: &str = r#"holysheep_config_reloads_total{result="success"}"#;
const CONFIG_FAILED: &str = r#"holysheep_config_reloads_total{result="failure"}"#;

/// A ConfigMap volume as the kubelet lays it out: `..<version>/config.yaml`,
/// `..data -> ..<version>`, `config.yaml -> ..data/config.yaml`.
fn configmap_volume(dir: &Path, version: &str, text: &str) -> PathBuf {
    let versioned = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&versioned).unwrap();
    std::fs::write(versioned.join("config.yaml"), text).unwrap();
    symlink(format!("..{version}"), dir.join("..data")).unwrap();
    symlink("..data/config.yaml", dir.join("config.yaml")).unwrap();
    dir.join("config.yaml")
}

/// Updates a ConfigMap volume like the kubelet: a new versioned dir, a `..data_tmp`
/// symlink renamed over `..data`, then the old version removed.
fn swap_configmap(dir: &Path, old: &str, version: &str, text: &str) {
    let versioned = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&versioned).unwrap();
    std::fs::write(versioned.join("config.yaml"), text).unwrap();
    symlink(format!("..{version}"), dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join(format!("..{old}"))).unwrap();
}

/// Starts every layout at once; each is up, changed and settled when it returns, with
/// the `/readyz` status it must keep.
async fn idle_fleet(root: &Path) -> Vec<(Proc, u16)> {
    let dir = |name: &str| {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    };
    let (plain, secret, configmap, env_only, emptied, invalid, gone, no_key) = (
        dir("plain"),
        dir("secret"),
        dir("configmap"),
        dir("env-only"),
        dir("emptied"),
        dir("invalid"),
        dir("gone"),
        dir("no-key"),
    );
    let (a, b, c, d, e, f, g) = tokio::join!(
        // Key and config side by side as plain files (subPath mount, CSI, local run),
        // the key rewritten in place once.
        async {
            let (key, config) = (plain.join("api-key"), plain.join("config.yaml"));
            std::fs::write(&key, "sk-plain-1\n").unwrap();
            std::fs::write(&config, GOOD_CONFIG).unwrap();
            let p = Proc::start("plain files", &key, Some(&config), None).await;
            p.wait_ok("/readyz").await;
            std::fs::write(&key, "sk-plain-2\n").unwrap();
            std::fs::write(&config, OTHER_CONFIG).unwrap();
            p.wait_metric(KEY_OK, 1.0).await;
            p.wait_metric(CONFIG_OK, 1.0).await;
            (p, 200)
        },
        // The Secret and ConfigMap `..data` layout, both swapped once by the kubelet.
        async {
            let key = secret_volume(&secret, "2026_a", "sk-k8s-1");
            let config = configmap_volume(&configmap, "2026_a", GOOD_CONFIG);
            let p = Proc::start(
                "kubernetes ..data layout, swapped",
                &key,
                Some(&config),
                None,
            )
            .await;
            p.wait_ok("/readyz").await;
            rotate_secret(&secret, "2026_b", "sk-k8s-2");
            swap_configmap(&configmap, "2026_a", "2026_b", OTHER_CONFIG);
            p.wait_metric(KEY_OK, 1.0).await;
            p.wait_metric(CONFIG_OK, 1.0).await;
            (p, 200)
        },
        // The env key only: no key file in the (existing, watched) directory.
        async {
            let config = env_only.join("config.yaml");
            std::fs::write(&config, GOOD_CONFIG).unwrap();
            let key = env_only.join("api-key");
            let p = Proc::start("env key only", &key, Some(&config), Some("sk-env")).await;
            p.wait_ok("/readyz").await;
            (p, 200)
        },
        // Both files emptied after start: the key is refused (the old one stays), the
        // empty config is the defaults.
        async {
            let (key, config) = (emptied.join("api-key"), emptied.join("config.yaml"));
            std::fs::write(&key, "sk-emptied").unwrap();
            std::fs::write(&config, GOOD_CONFIG).unwrap();
            let p = Proc::start("emptied files", &key, Some(&config), None).await;
            p.wait_ok("/readyz").await;
            std::fs::write(&key, "").unwrap();
            std::fs::write(&config, "").unwrap();
            p.wait_metric(KEY_FAILED, 1.0).await;
            p.wait_metric(CONFIG_OK, 1.0).await;
            (p, 200)
        },
        // Both files made invalid after start: a control character in the key, an
        // unknown field in the config.
        async {
            let (key, config) = (invalid.join("api-key"), invalid.join("config.yaml"));
            std::fs::write(&key, "sk-invalid").unwrap();
            std::fs::write(&config, GOOD_CONFIG).unwrap();
            let p = Proc::start("invalid files", &key, Some(&config), None).await;
            p.wait_ok("/readyz").await;
            std::fs::write(&key, BAD_KEY).unwrap();
            std::fs::write(&config, BAD_CONFIG).unwrap();
            p.wait_metric(KEY_FAILED, 1.0).await;
            p.wait_metric(CONFIG_FAILED, 1.0).await;
            (p, 200)
        },
        // No key directory at all (nothing to watch), and the config's directory
        // removed after start.
        async {
            let key = gone.join("absent/api-key");
            let config_dir = gone.join("config");
            std::fs::create_dir_all(&config_dir).unwrap();
            let config = config_dir.join("config.yaml");
            std::fs::write(&config, GOOD_CONFIG).unwrap();
            let p = Proc::start("missing directories", &key, Some(&config), None).await;
            p.wait_ok("/healthz").await;
            std::fs::remove_dir_all(&config_dir).unwrap();
            p.wait_metric(CONFIG_FAILED, 1.0).await;
            (p, 503)
        },
        // An empty key file from the start and no env key: never ready.
        async {
            let key = no_key.join("api-key");
            std::fs::write(&key, "").unwrap();
            let p = Proc::start("empty key file at start", &key, None, None).await;
            p.wait_ok("/healthz").await;
            p.wait_metric(KEY_FAILED, 1.0).await;
            (p, 503)
        },
    );
    vec![a, b, c, d, e, f, g]
}

#[tokio::test]
async fn an_idle_sidecar_uses_no_cpu_in_any_layout() {
    let root = tempfile::tempdir().unwrap();
    let fleet = idle_fleet(root.path()).await;
    let before: Vec<u64> = fleet.iter().map(|(p, _)| p.cpu_ticks()).collect();
    // The measurement itself: no traffic, nothing to wait for.
    tokio::time::sleep(WINDOW).await;
    let used: Vec<(&str, u64)> = fleet
        .iter()
        .zip(before)
        .map(|((p, _), before)| (p.name, p.cpu_ticks() - before))
        .collect();
    eprintln!("CPU ticks over {WINDOW:?}: {used:?}");
    let busy: Vec<_> = used
        .iter()
        .filter(|(_, ticks)| *ticks > MAX_IDLE_TICKS)
        .collect();
    assert!(
        busy.is_empty(),
        "CPU ticks over {WINDOW:?} (at most {MAX_IDLE_TICKS}): {used:?}"
    );
    // A refused file kept the key in force; no key never made a sidecar ready.
    for (p, ready) in &fleet {
        assert_eq!(p.readyz().await, *ready, "{}", p.name);
    }
}

#[tokio::test]
async fn bad_key_and_config_files_are_logged_once_not_per_read() {
    let root = tempfile::tempdir().unwrap();
    let (key, config) = (root.path().join("api-key"), root.path().join("config.yaml"));
    std::fs::write(&key, "").unwrap();
    std::fs::write(&config, GOOD_CONFIG).unwrap();
    let p = Proc::start("bad files", &key, Some(&config), None).await;
    p.wait_ok("/healthz").await;
    p.wait_metric(KEY_FAILED, 1.0).await;

    // An emptied key file, left alone: the window spans a periodic re-check.
    let before = p.stderr.count();
    tokio::time::sleep(WINDOW).await;
    let during = p.stderr.count() - before;
    assert!(
        during <= 3,
        "{during} lines logged over {WINDOW:?} with no change; the first: {:#?}",
        p.stderr.kept()
    );

    // A different bad key and a bad config: each new refusal is logged once more.
    std::fs::write(&key, BAD_KEY).unwrap();
    std::fs::write(&config, BAD_CONFIG).unwrap();
    p.wait_metric(CONFIG_FAILED, 1.0).await;
    eventually(SETUP, "the second key refusal logged", || {
        let stderr = Arc::clone(&p.stderr);
        async move { stderr.with_message("key file refused") >= 2 }
    })
    .await;
    let kept = p.stderr.kept();
    assert_eq!(p.stderr.with_message("key file refused"), 2, "{kept:#?}");
    assert_eq!(
        p.stderr
            .with_message("config reload refused; keeping the previous config"),
        1,
        "{kept:#?}"
    );
    assert!(p.stderr.count() <= 10, "{kept:#?}");
}
