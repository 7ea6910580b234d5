//! A real CONNECT proxy for the egress tests: Debian's `tinyproxy`, one per test.
//!
//! It runs in the foreground (`-d`) on 127.0.0.1 with a generated config in a temp dir
//! (its own pid file, `Allow 127.0.0.1`, optional `BasicAuth`), logs to a pipe the test
//! reads, and is killed on drop. As root it drops to nobody/nogroup; as a normal user
//! those lines are ignored by tinyproxy itself. Its log is how a test proves traffic went
//! through it: one `Request (...): CONNECT host:port` line per tunnel.
//!
//! tinyproxy cannot listen on port 0 or take a listener: the port is chosen as `daemon`
//! describes. A missing tinyproxy fails the test with the command that installs it.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::daemon::{self, Daemon, START};

const READY: &str = "Accepting connections";

/// The running proxy; see the module docs.
pub struct Tinyproxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    daemon: Daemon,
    _dir: tempfile::TempDir,
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
        let binary = daemon::binary("tinyproxy", "tinyproxy", "the egress proxy tests");
        daemon::with_free_port("tinyproxy", |port| Self::try_start(&binary, port, auth)).await
    }

    /// One start on `port`: `Err` with its output when it exited or never got ready.
    async fn try_start(
        binary: &PathBuf,
        port: u16,
        auth: Option<(&str, &str)>,
    ) -> Result<Self, String> {
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
        let mut command = Command::new(binary);
        command.arg("-d").arg("-c").arg(&conf_path);
        Ok(Self {
            url: format!("http://127.0.0.1:{port}"),
            daemon: Daemon::start(command, READY).await?,
            _dir: dir,
        })
    }

    /// Everything tinyproxy logged so far.
    pub fn log(&self) -> Vec<String> {
        self.daemon.log()
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
