//! The training load of the sidecar's profile-guided build (`scripts/pgo-build.sh`,
//! binary `pgo-train`): an instrumented sidecar serves what pods send it, to a plain-http
//! and to an HTTPS fake upstream (a private CA, ALPN `h2` and `http/1.1`, as production
//! APIs offer), then stops on SIGTERM, which is when it writes its profile.
//!
//! The mix, per upstream: JSON chat completions over 1, 16 and 64 keep-alive connections,
//! SSE streams over 8, and the model list. Every answer is checked (status 200, a stream
//! ends with `[DONE]`) and the sidecar must exit cleanly: a profile of error paths, or
//! none at all, would steer the optimiser wrong without anyone noticing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::payloads::{CHAT_REQUEST, CHAT_STREAM_REQUEST, SSE_DONE};
use crate::soak::procs::Child;
use crate::upstream::{self, UpstreamConfig};

/// How long the sidecar may take to become ready, to answer a request, and to exit after
/// SIGTERM.
const PATIENCE: Duration = Duration::from_secs(30);

/// Connection counts of the JSON phases: a single client, the benchmark's two loads.
const JSON_CONNECTIONS: [usize; 3] = [1, 16, 64];

/// Concurrent clients of the streaming phase.
const STREAM_CONNECTIONS: usize = 8;

/// What to train.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The sidecar binary (instrumented; `LLVM_PROFILE_FILE` is inherited).
    pub sidecar: PathBuf,
    /// Where the upstream's CA and the sidecar's logs go.
    pub work_dir: PathBuf,
    /// JSON requests of each connection-count phase; streams get a tenth of it.
    pub requests: usize,
}

/// One phase done: `requests` answered as expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    /// `http` or `https`.
    pub upstream: &'static str,
    /// What was sent, e.g. `chat x16`.
    pub name: String,
    /// Requests answered.
    pub requests: usize,
}

/// Runs the training load (see the module docs) and returns its phases.
pub async fn train(plan: &Plan) -> anyhow::Result<Vec<Phase>> {
    ensure!(plan.requests > 0, "--requests must be at least 1");
    std::fs::create_dir_all(&plan.work_dir)
        .with_context(|| format!("creating {}", plan.work_dir.display()))?;
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let config = UpstreamConfig {
        chunk_delay: Duration::from_millis(1),
        stream_words: 4,
    };
    let (plain, shared) = upstream::spawn(any, config).await?;
    let tls_dir = plan.work_dir.join("tls");
    let acceptor = crate::tls::acceptor(&tls_dir, true)?;
    let tls = upstream::spawn_tls(any, Arc::clone(&shared), acceptor).await?;
    let ca = tls_dir.join("ca.crt");
    let mut phases = Vec::new();
    let upstreams = [
        ("http", vec![format!("--upstream=http://{plain}/v1")]),
        (
            "https",
            vec![
                format!("--upstream=https://localhost:{}/v1", tls.port()),
                format!("--upstream-ca-file={}", ca.display()),
            ],
        ),
    ];
    for (name, flags) in upstreams {
        phases.extend(
            train_one(plan, name, &flags)
                .await
                .with_context(|| format!("training against the {name} upstream"))?,
        );
    }
    Ok(phases)
}

async fn train_one(
    plan: &Plan,
    upstream: &'static str,
    flags: &[String],
) -> anyhow::Result<Vec<Phase>> {
    let (listen, admin) = (free_addr()?, free_addr()?);
    let log = plan.work_dir.join(format!("sidecar-{upstream}.log"));
    let mut args = vec![
        format!("--listen={listen}"),
        format!("--admin-listen={admin}"),
    ];
    args.extend_from_slice(flags);
    let env = [
        ("HOLYSHEEP_API_KEY", "sk-pgo-training".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    let mut child = Child::spawn(&plan.sidecar, &args, &env, &log)?;
    let result = drive(plan, upstream, &mut child, listen, admin).await;
    // SIGTERM, as the kubelet stops it: the sidecar drains and returns from main, where
    // the profiling runtime writes the profile.
    let status = tokio::task::spawn_blocking(move || child.terminate(PATIENCE)).await?;
    let phases = result.with_context(|| format!("sidecar log: {}", log.display()))?;
    match status {
        Some(status) if status.success() => Ok(phases),
        Some(status) => bail!("the sidecar exited with {status} (log: {})", log.display()),
        None => bail!("the sidecar did not exit within {PATIENCE:?} of SIGTERM"),
    }
}

async fn drive(
    plan: &Plan,
    upstream: &'static str,
    child: &mut Child,
    listen: SocketAddr,
    admin: SocketAddr,
) -> anyhow::Result<Vec<Phase>> {
    wait_ready(child, admin).await?;
    let mut phases = Vec::new();
    for connections in JSON_CONNECTIONS {
        let requests = load(listen, connections, plan.requests, Kind::Chat).await?;
        phases.push(Phase {
            upstream,
            name: format!("chat x{connections}"),
            requests,
        });
    }
    let streams = (plan.requests / 10).max(STREAM_CONNECTIONS);
    let requests = load(listen, STREAM_CONNECTIONS, streams, Kind::Stream).await?;
    phases.push(Phase {
        upstream,
        name: format!("stream x{STREAM_CONNECTIONS}"),
        requests,
    });
    let requests = load(listen, 1, 20, Kind::Models).await?;
    phases.push(Phase {
        upstream,
        name: "models x1".to_owned(),
        requests,
    });
    Ok(phases)
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Chat,
    Stream,
    Models,
}

/// `total` requests of `kind` spread over `connections` keep-alive connections.
async fn load(
    listen: SocketAddr,
    connections: usize,
    total: usize,
    kind: Kind,
) -> anyhow::Result<usize> {
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..connections {
        let share = total / connections + usize::from(i < total % connections);
        workers.spawn(client(listen, share, kind));
    }
    let mut done = 0;
    while let Some(joined) = workers.join_next().await {
        done += joined??;
    }
    Ok(done)
}

/// One connection sending `count` requests of `kind`, one after the other.
async fn client(listen: SocketAddr, count: usize, kind: Kind) -> anyhow::Result<usize> {
    let stream = TcpStream::connect(listen).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    for _ in 0..count {
        let (method, path, body) = match kind {
            Kind::Chat => (Method::POST, "/v1/chat/completions", CHAT_REQUEST),
            Kind::Stream => (Method::POST, "/v1/chat/completions", CHAT_STREAM_REQUEST),
            Kind::Models => (Method::GET, "/v1/models", ""),
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, listen.to_string())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))?;
        // A sidecar that stops answering fails the training instead of hanging the build.
        let exchange = async {
            sender.ready().await?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        let (status, body) = tokio::time::timeout(PATIENCE, exchange)
            .await
            .with_context(|| format!("{path}: no answer within {PATIENCE:?}"))??;
        if status != StatusCode::OK {
            bail!(
                "{path} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        if matches!(kind, Kind::Stream) && !body.ends_with(SSE_DONE.as_bytes()) {
            bail!("a stream ended without {SSE_DONE:?}");
        }
    }
    drop(sender);
    conn.await??;
    Ok(count)
}

async fn wait_ready(child: &mut Child, admin: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.exited() {
            bail!("the sidecar exited ({status}) before it was ready");
        }
        if let Ok(status) = get_status(admin, "/readyz").await {
            if status == StatusCode::OK {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the sidecar was not ready on {admin} within {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get_status(addr: SocketAddr, path: &str) -> anyhow::Result<StatusCode> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))?;
    let resp = tokio::time::timeout(Duration::from_secs(1), sender.send_request(req)).await??;
    Ok(resp.status())
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    // Bind, read the port, release: the sidecar binds it a moment later. A port taken in
    // between fails the start, which is reported, not hidden.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}
