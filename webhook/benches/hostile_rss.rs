//! Peak memory of `holysheep-webhook serve` under hostile load, as its own process: each
//! scenario starts a fresh server on 127.0.0.1 (port 0, read back from its log), drives it
//! over TLS and reports the server's peak resident set (`VmHWM` from `/proc/PID/status`),
//! its resident set after the load, the CPU time it used and the answers it gave.
//!
//! Scenarios: idle; 4 parallel reviews of 3 MiB (one long env value; 3 MiB of minimal
//! volumes); 4 parallel 2.9 MiB reviews declaring every port (a port collision); 16
//! parallel 3 MiB reviews on one connection and 200 on 200 connections (beyond the
//! server's room); 11,000 connections that finish the TLS handshake and then send nothing.
//!
//! Run: `cargo bench -p holysheep-webhook --bench hostile_rss`
//! Another build: `HOLYSHEEP_WEBHOOK_BIN=/path/to/holysheep-webhook cargo bench ...`.
//! The silent-connection scenario opens 11,000 sockets: it needs `ulimit -n` above that
//! (for this process, and for the server when it has no connection cap).

use std::error::Error;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinSet;

mod reviews;
use reviews::MIB;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

const HOST: &str = "holysheep-webhook.holysheep-system.svc";
const SILENT_CONNECTIONS: usize = 11_000;
/// How long silent connections are held open before the peak is read.
const SILENT_HOLD: Duration = Duration::from_secs(25);

struct Server {
    child: Child,
    addr: SocketAddr,
    ca_pem: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(bin: &PathBuf) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = holysheep_certs::generate_ca("bench-ca", Duration::from_secs(3600))?;
        let serving = ca.issue_serving(
            "holysheep-webhook",
            "holysheep-system",
            Duration::from_secs(3600),
        )?;
        let paths = holysheep_certs::write_to_dir(dir.path(), ca.cert_pem(), &serving)?;
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(&paths[1])
            .arg("--tls-key")
            .arg(&paths[2])
            .env("RUST_LOG", "info")
            .env("HOLYSHEEP_LOG_FORMAT", "json")
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines.next().ok_or("the server exited before listening")??;
            if !line.contains("serving admission reviews") {
                continue;
            }
            let log: Value = serde_json::from_str(&line)?;
            let listen = log["listen"]
                .as_str()
                .or(log["fields"]["listen"].as_str())
                .ok_or("no listen field")?;
            break listen.parse::<SocketAddr>()?;
        };
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Self {
            child,
            addr,
            ca_pem: ca.cert_pem().to_owned(),
            _dir: dir,
        })
    }

    /// CPU time (user + system) the server used so far; `/proc` counts clock ticks of
    /// 1/100 s.
    fn cpu(&self) -> Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .ok_or("no command field")?
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields.get(11).ok_or("no utime")?.parse::<u64>()?
            + fields.get(12).ok_or("no stime")?.parse::<u64>()?;
        Ok(Duration::from_millis(ticks * 10))
    }

    /// `VmHWM` and `VmRSS` of the server, in KiB.
    fn memory(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| -> Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .ok_or("no such field")?;
            let kib = line.split_whitespace().nth(1).ok_or("no value")?;
            Ok(kib.parse()?)
        };
        Ok((field("VmHWM:")?, field("VmRSS:")?))
    }

    fn tls_config(&self, alpn: &[&[u8]]) -> Result<rustls::ClientConfig> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for der in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(der?)?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    fn client(&self) -> Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .use_preconfigured_tls(self.tls_config(&[b"h2"])?)
            .resolve(HOST, self.addr)
            .timeout(Duration::from_secs(300))
            .build()?)
    }

    async fn ready(&self) -> Result<()> {
        let client = self.client()?;
        let url = format!("https://{HOST}:{}/readyz", self.addr.port());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(res) = client.get(&url).send().await {
                if res.status() == 200 {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err("server never became ready".into())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `body` `parallel` times at once, over one HTTP/2 connection or each over its
/// own; returns the count of each status.
async fn send(server: &Server, body: Vec<u8>, parallel: usize, shared: bool) -> Result<String> {
    let shared_client = server.client()?;
    let url = format!("https://{HOST}:{}/mutate", server.addr.port());
    let body = bytes::Bytes::from(body);
    let mut calls = JoinSet::new();
    for _ in 0..parallel {
        let client = if shared {
            shared_client.clone()
        } else {
            server.client()?
        };
        let request = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone());
        calls.spawn(async move { request.send().await.map(|r| r.status().as_u16()) });
    }
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    while let Some(joined) = calls.join_next().await {
        let key = match joined? {
            Ok(status) => status.to_string(),
            Err(error) => format!("error({})", error.without_url()),
        };
        *statuses.entry(key).or_default() += 1;
    }
    Ok(format!("{statuses:?}"))
}

/// Opens `count` connections that complete the TLS handshake and send nothing; holds them
/// for `SILENT_HOLD`. Returns how many handshakes completed.
async fn silent(server: &Server, count: usize) -> Result<String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(server.tls_config(&[b"h2"])?));
    let name = rustls_pki_types::ServerName::try_from(HOST)?;
    let addr = server.addr;
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..count {
        let connector = connector.clone();
        let name = name.clone();
        let done = done.clone();
        tasks.spawn(async move {
            let open = async {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                connector.connect(name, tcp).await
            };
            if let Ok(Ok(tls)) = tokio::time::timeout(SILENT_HOLD, open).await {
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Hold it, silent, until the end of the scenario (or until the server
                // closes it, which the held stream does not notice).
                tokio::time::sleep(SILENT_HOLD).await;
                drop(tls);
            }
        });
    }
    tokio::time::sleep(SILENT_HOLD).await;
    let handshakes = done.load(std::sync::atomic::Ordering::Relaxed);
    tasks.abort_all();
    Ok(format!(
        "{handshakes} of {count} handshakes completed within {}s",
        SILENT_HOLD.as_secs()
    ))
}

async fn run(bin: PathBuf) -> Result<()> {
    println!("server: {}", bin.display());
    println!(
        "{:<52} {:>9} {:>9} {:>8}  answers",
        "scenario", "peak MiB", "after MiB", "CPU s"
    );
    let scenarios: [(&str, u8); 7] = [
        ("idle", 0),
        ("4 parallel 3 MiB reviews (one long env value)", 1),
        ("4 parallel 3 MiB reviews (minimal volumes)", 2),
        ("4 parallel 2.9 MiB port-collision reviews", 3),
        ("16 parallel 3 MiB reviews, one connection", 4),
        ("200 parallel 3 MiB reviews, 200 connections", 5),
        ("11,000 silent TLS connections", 6),
    ];
    for (title, which) in scenarios {
        let server = Server::start(&bin)?;
        server.ready().await?;
        let answers = match which {
            0 => String::new(),
            1 => send(&server, reviews::text(3 * MIB)?, 4, true).await?,
            2 => send(&server, reviews::volumes(3 * MIB)?, 4, true).await?,
            3 => send(&server, reviews::ports(3 * MIB * 29 / 30)?, 4, true).await?,
            4 => send(&server, reviews::text(3 * MIB)?, 16, true).await?,
            5 => send(&server, reviews::text(3 * MIB)?, 200, false).await?,
            _ => silent(&server, SILENT_CONNECTIONS).await?,
        };
        let (peak, now) = server.memory()?;
        println!(
            "{title:<52} {:>9.1} {:>9.1} {:>8.2}  {answers}",
            peak as f64 / 1024.0,
            now as f64 / 1024.0,
            server.cpu()?.as_secs_f64()
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let bin = std::env::var_os("HOLYSHEEP_WEBHOOK_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_holysheep-webhook")),
        PathBuf::from,
    );
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(bin))
}
