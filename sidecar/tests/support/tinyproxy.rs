//! A real CONNECT proxy for the egress tests: Debian's `tinyproxy`, one per test.
//!
//! It runs in the foreground (`-d`) on 127.0.0.1 with a generated config in a temp dir
//! (its own pid file, `Allow 127.0.0.1`, optional `BasicAuth`), logs to a pipe the test
//! reads, and is killed on drop. As root it drops to nobody/nogroup; as a normal user
//! those lines are ignored by tinyproxy itself. Its log is how a test proves traffic went
//! through it: one `Request (...): CONNECT host:port` line per tunnel.
//!
//! tinyproxy cannot listen on port 0 or take a listener, so a free port is found by
//! binding 127.0.0.1:0 and releasing it; if another process takes it first, tinyproxy
//! exits without its "Accepting connections" line and the start is retried on a new port.
//! A missing tinyproxy fails the test with the command that installs it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bound on one start (a fresh tinyproxy is up in milliseconds).
const START: Duration = Duration::from_secs(20);
const ATTEMPTS: usize = 5;
const READY: &str = "Accepting connections";

/// The running proxy; see the module docs.
pub struct Tinyproxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Where tinyproxy is, or a failure that says how to install it.
fn binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/sbin".into()])
        .map(|dir| dir.join("tinyproxy"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "tinyproxy is not installed: the egress proxy tests need it \
                 (apt-get install tinyproxy)"
            )
        })
}

impl Tinyproxy {
    /// Starts a proxy that lets anyone on 127.0.0.1 through.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Starts a proxy that demands Basic auth `user`/`password`.
    pub async fn with_auth(user: &str, password: &str) -> Self {
        Self::start_with(Some((user, password))).await
    }

    async fn start_with(auth: Option<(&str, &str)>) -> Self {
        let binary = binary();
        let mut failures = Vec::new();
        for _ in 0..ATTEMPTS {
            match Self::try_start(&binary, auth).await {
                Ok(proxy) => return proxy,
                Err(log) => failures.push(log),
            }
        }
        panic!("tinyproxy did not start in {ATTEMPTS} attempts; its output: {failures:#?}");
    }

    /// One start on a fresh port: `Err` with its output when it exited or never got ready.
    async fn try_start(binary: &PathBuf, auth: Option<(&str, &str)>) -> Result<Self, String> {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let dir = tempfile::tempdir().unwrap();
        let mut conf = format!(
            "User nobody\nGroup nogroup\nPort {port}\nListen 127.0.0.1\nTimeout 30\n\
             PidFile \"{}\"\nLogLevel Info\nMaxClients 64\nAllow 127.0.0.1\n",
            dir.path().join("tinyproxy.pid").display()
        );
        if let Some((user, password)) = auth {
            conf.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        let conf_path = dir.path().join("tinyproxy.conf");
        std::fs::write(&conf_path, conf).unwrap();

        // Without `LogFile` tinyproxy logs to stdout; its own errors go to stderr.
        let mut child = Command::new(binary)
            .arg("-d")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<bool>();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn({
            let log = Arc::clone(&log);
            move || {
                let mut ready_tx = Some(ready_tx);
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line.contains(READY) {
                        ready_tx.take().map(|tx| tx.send(true));
                    }
                    log.lock().unwrap().push(line);
                }
                // stdout closed: the process is gone. Its stderr says why.
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
                ready_tx.take().map(|tx| tx.send(false));
            }
        });
        let mut proxy = Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
            log,
            reader: Some(reader),
            _dir: dir,
        };
        match tokio::time::timeout(START, ready_rx).await {
            Ok(Ok(true)) => Ok(proxy),
            _ => {
                let _ = proxy.child.kill();
                let _ = proxy.child.wait();
                if let Some(reader) = proxy.reader.take() {
                    let _ = reader.join();
                }
                Err(proxy.log().join("\n"))
            }
        }
    }

    /// Everything tinyproxy logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits (bounded) until it has logged at least `n` tunnels to `authority`: a line is
    /// logged before the tunnel opens, but the reader thread may not have taken it in yet.
    pub async fn wait_connects(&self, authority: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + START;
        while self.connects_to(authority) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "tinyproxy logged fewer than {n} CONNECT {authority}: {:#?}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// How many tunnels to `authority` (`host:port`) it was asked for.
    pub fn connects_to(&self, authority: &str) -> usize {
        let request = format!(": CONNECT {authority} HTTP/");
        self.log()
            .iter()
            .filter(|line| line.contains("Request (") && line.contains(&request))
            .count()
    }
}
