//! A real server from the system's packages (redis-server, tinyproxy) run by a test: found
//! on the PATH or in /usr/{bin,sbin} (else the test fails with the install command),
//! started in the foreground with its output collected line by line, ready when a given
//! line appears, and killed on drop.
//!
//! Such servers cannot listen on port 0, so the callers pick a free port by binding
//! 127.0.0.1:0 and releasing it, and [`with_free_port`] retries on a new port when
//! another process took it first (the server then exits without its ready line).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bound on one start (a fresh server is up in milliseconds).
pub const START: Duration = Duration::from_secs(20);

/// Starts tried on new ports before giving up.
const ATTEMPTS: usize = 5;

/// A running server; see the module docs.
pub struct Daemon {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where `name` is installed, or a failure naming the Debian package and the tests that
/// need it.
pub fn binary(name: &str, package: &str, needed_by: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is not installed: {needed_by} need it (apt-get install {package})")
        })
}

/// A free port on 127.0.0.1 (free when this returns; see the module docs).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Calls `start` with a fresh free port until it succeeds, at most a few times; `what`
/// names the server in the failure, which shows every attempt's output.
pub async fn with_free_port<T, F>(what: &str, mut start: impl FnMut(u16) -> F) -> T
where
    F: std::future::Future<Output = Result<T, String>>,
{
    let mut failures = Vec::new();
    for _ in 0..ATTEMPTS {
        match start(free_port()).await {
            Ok(server) => return server,
            Err(log) => failures.push(log),
        }
    }
    panic!("{what} did not start in {ATTEMPTS} attempts; its output: {failures:#?}");
}

impl Daemon {
    /// Spawns `command` and waits (bounded by [`START`]) for a stdout line containing
    /// `ready`; `Err` with its output when it exited or never got ready.
    pub async fn start(mut command: Command, ready: &'static str) -> Result<Self, String> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
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
                    if line.contains(ready) {
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
        let mut daemon = Self {
            child,
            log,
            reader: Some(reader),
        };
        match tokio::time::timeout(START, ready_rx).await {
            Ok(Ok(true)) => Ok(daemon),
            _ => {
                daemon.stop();
                Err(daemon.log().join("\n"))
            }
        }
    }

    /// Kills the server (a crash, as far as clients can tell) and waits for it to exit.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    /// Everything it logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}
