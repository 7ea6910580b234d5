//! The real `holysheep-sidecar` binary as a child process with a controlled environment.
//!
//! Proxy and trust settings come from process-wide env vars (`HTTPS_PROXY`, `NO_PROXY`,
//! `SSL_CERT_FILE`...), which a test cannot set for an in-process sidecar without leaking
//! them into the others. Here the child starts from an empty environment plus what the
//! test gives, on ephemeral loopback ports (read back from its "listening" log line), with
//! the key in an `api-key` file in its own temp dir (where `egress-proxy-auth` can sit
//! beside it). Its stdout and stderr are kept in full for assertions. It is killed on drop.
//!
//! It does not wait for readiness of the upstream path: only `/readyz` (the key is loaded).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{TEST_KEY, eventually, http_client};

/// Bound on startup and readiness (debug build on a busy machine).
const SETUP: Duration = Duration::from_secs(60);
const LISTENING: &str = "holysheep-sidecar listening";

/// How to run the binary: extra flags and env vars on top of the listeners and key file.
#[derive(Default)]
pub struct Launch {
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl Launch {
    /// Adds a flag and its value.
    pub fn arg(mut self, flag: &str, value: impl Into<OsString>) -> Self {
        self.args.push(flag.into());
        self.args.push(value.into());
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, name: &str, value: impl Into<OsString>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }
}

/// The running process; see the module docs.
pub struct SidecarProcess {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// The directory of the `api-key` file.
    pub key_dir: tempfile::TempDir,
    child: Child,
    output: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

/// An address of the startup line, logged as a plain `127.0.0.1:PORT`.
fn logged_addr(value: &serde_json::Value) -> Option<SocketAddr> {
    value.as_str()?.parse().ok()
}

/// The proxy and admin addresses of the startup line, if `line` is it.
fn listening(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["fields"]["message"] != LISTENING {
        return None;
    }
    Some((
        logged_addr(&v["fields"]["proxy"])?,
        logged_addr(&v["fields"]["admin"])?,
    ))
}

impl SidecarProcess {
    /// Starts the binary with `launch` and waits until `/readyz` answers 200. `prepare`
    /// may add files beside the key file before the process starts.
    pub async fn start(launch: Launch, prepare: impl FnOnce(&Path)) -> Self {
        let key_dir = tempfile::tempdir().unwrap();
        std::fs::write(key_dir.path().join("api-key"), TEST_KEY).unwrap();
        prepare(key_dir.path());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_holysheep-sidecar"));
        cmd.env_clear()
            .env("RUST_LOG", "debug")
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--api-key-file")
            .arg(key_dir.path().join("api-key"))
            .args(&launch.args)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = tokio::sync::oneshot::channel::<(SocketAddr, SocketAddr)>();
        let stderr = child.stderr.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        // Both pipes are drained all the time: a full pipe would block the sidecar.
        let err_reader = std::thread::spawn({
            let output = Arc::clone(&output);
            move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addrs) = listening(&line) {
                        tx.take().map(|tx| tx.send(addrs));
                    }
                    let mut out = output.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
            }
        });
        let out_reader = std::thread::spawn({
            let output = Arc::clone(&output);
            move || {
                let mut text = String::new();
                let _ = BufReader::new(stdout).read_to_string(&mut text);
                output.lock().unwrap().push_str(&text);
            }
        });
        let addrs = tokio::time::timeout(SETUP, rx).await;
        let mut process = Self {
            proxy: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            key_dir,
            child,
            output,
            readers: vec![err_reader, out_reader],
        };
        match addrs {
            Ok(Ok((proxy, admin))) => (process.proxy, process.admin) = (proxy, admin),
            _ => {
                let _ = process.child.kill();
                let _ = process.child.wait();
                for reader in process.readers.drain(..) {
                    let _ = reader.join();
                }
                panic!("the sidecar did not start; output:\n{}", process.output());
            }
        }
        let http = http_client();
        let url = format!("http://{}/readyz", process.admin);
        eventually(SETUP, "sidecar /readyz", || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                http.get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        process
    }

    /// `http://127.0.0.1:PORT` + `path` on the proxy listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    /// Its `/metrics`, as text and parsed.
    pub async fn scrape(&self) -> (String, prometheus_parse::Scrape) {
        super::scrape_metrics(&format!("http://{}/metrics", self.admin)).await
    }

    /// The path of its key file.
    pub fn key_file(&self) -> PathBuf {
        self.key_dir.path().join("api-key")
    }

    /// Sends SIGTERM (as the kubelet does) and waits for the process to exit; blocking,
    /// so call it from `block_in_place` on a multi-thread runtime.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal_term();
        self.wait_exit()
    }

    /// Sends SIGTERM (as the kubelet does) without waiting.
    pub fn signal_term(&self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid} failed");
    }

    /// Waits for the process to exit; blocking, as [`SidecarProcess::terminate`].
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let status = self.child.wait().unwrap();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        status
    }

    /// Everything it wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}
