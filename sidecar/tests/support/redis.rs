//! A real Redis for the shared-budget tests: Debian's `redis-server`, one per test.
//!
//! It runs in the foreground on 127.0.0.1 with no persistence (`--save "" --appendonly
//! no`) in a temp dir, and is killed on drop. Redis cannot listen on port 0, so a free
//! port is found by binding 127.0.0.1:0 and releasing it; if another process takes it
//! first, the server exits without its "Ready to accept connections" line and the start
//! is retried on a new port. [`RedisServer::restart`] starts a fresh (empty) server on
//! the same port, as after a crash. A missing redis-server fails the test with the
//! command that installs it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bound on one start (a fresh redis-server is up in milliseconds).
const START: Duration = Duration::from_secs(20);
const ATTEMPTS: usize = 5;
const READY: &str = "Ready to accept connections";

/// The running server; see the module docs.
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where redis-server is, or a failure that says how to install it.
fn binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/sbin".into()])
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "redis-server is not installed: the shared budget tests need it \
                 (apt-get install redis-server)"
            )
        })
}

impl RedisServer {
    /// Starts a server on a free port.
    pub async fn start() -> Self {
        let binary = binary();
        let mut failures = Vec::new();
        for _ in 0..ATTEMPTS {
            let port = {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                listener.local_addr().unwrap().port()
            };
            match Self::try_start(&binary, port).await {
                Ok(server) => return server,
                Err(log) => failures.push(log),
            }
        }
        panic!("redis-server did not start in {ATTEMPTS} attempts; its output: {failures:#?}");
    }

    /// Kills this server and starts an empty one on the same port.
    pub async fn restart(mut self) -> Self {
        self.stop();
        let port = self.port;
        drop(self);
        Self::try_start(&binary(), port)
            .await
            .unwrap_or_else(|log| panic!("redis-server did not restart on {port}: {log}"))
    }

    /// Kills the server (a crash, as far as clients can tell) and waits for it to exit.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A connection for the test's own reads.
    pub async fn client(&self) -> ::redis::aio::MultiplexedConnection {
        ::redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// One try on `port`: `Err` with its output when it exited or never got ready.
    async fn try_start(binary: &PathBuf, port: u16) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<bool>();
        let stdout = child.stdout.take().unwrap();
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
                ready_tx.take().map(|tx| tx.send(false));
            }
        });
        let mut server = Self {
            port,
            child,
            log,
            reader: Some(reader),
            _dir: dir,
        };
        match tokio::time::timeout(START, ready_rx).await {
            Ok(Ok(true)) => Ok(server),
            _ => {
                server.stop();
                Err(server.log.lock().unwrap().join("\n"))
            }
        }
    }
}
