//! A real Redis for the shared-budget tests: Debian's `redis-server`, one per test.
//!
//! It runs in the foreground on 127.0.0.1 with no persistence (`--save "" --appendonly
//! no`) in a temp dir, and is killed on drop; the port is chosen as `daemon` describes.
//! [`RedisServer::restart`] starts a fresh (empty) server on the same port, as after a
//! crash. A missing redis-server fails the test with the command that installs it.

use std::path::PathBuf;
use std::process::Command;

use super::daemon::{self, Daemon};

const READY: &str = "Ready to accept connections";

/// The running server; see the module docs.
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    daemon: Daemon,
    _dir: tempfile::TempDir,
}

fn binary() -> PathBuf {
    daemon::binary("redis-server", "redis-server", "the shared budget tests")
}

impl RedisServer {
    /// Starts a server on a free port.
    pub async fn start() -> Self {
        let binary = binary();
        daemon::with_free_port("redis-server", |port| Self::try_start(&binary, port)).await
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
        self.daemon.stop();
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
        let mut command = Command::new(binary);
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path());
        Ok(Self {
            port,
            daemon: Daemon::start(command, READY).await?,
            _dir: dir,
        })
    }
}
