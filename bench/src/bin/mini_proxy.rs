//! `mini-proxy`: the smallest hyper forwarding proxy (hyper 1 server, hyper-util legacy
//! pooled client, the same stack the sidecar uses) with none of the sidecar's own work: no
//! JSON, no metrics, no usage tap, no retries. Run as the optional benchmark target
//! `hyper` (`BENCH_TARGETS="direct nginx hyper sidecar"`), it splits the sidecar's cost
//! into "the HTTP stack" and "what the sidecar adds on top".
//!
//! `--mode` picks how lean the stack is, to find the floor of a tokio/hyper proxy on the
//! machine at hand: `pooled` (default; hyper-util's pooled client), `affine` (hyper's
//! low-level `conn::http1` on both sides, one upstream connection per client connection,
//! both driven by one task: the least work hyper can do per request) and `relay` (no HTTP at
//! all: tokio copies bytes between the client and its own upstream connection, so the
//! `Authorization` header is NOT replaced; the floor of tokio's I/O alone).
//!
//! Not a product: it forwards every path as is, only replaces `Authorization`, and keeps
//! no limits. Benchmark use only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

/// Minimal hyper reverse proxy, the baseline for the sidecar's HTTP stack.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Upstream `host:port` (plain HTTP).
    #[arg(long)]
    upstream: String,
    /// Use a current-thread runtime (as the sidecar does) instead of a multi-thread one.
    #[arg(long)]
    current_thread: bool,
    /// How much of the stack to use (see the module docs).
    #[arg(long, value_enum, default_value_t = Mode::Pooled)]
    mode: Mode,
    /// Exit after this long (a forgotten proxy must not linger).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    max_runtime: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Pooled,
    Affine,
    Relay,
}

type Body = UnsyncBoxBody<bytes::Bytes, hyper::Error>;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut builder = if args.current_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("failed to bind --listen {}", args.listen))?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .build(connector);
    let upstream = args.upstream.clone();
    let serve = async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            match args.mode {
                Mode::Pooled => {}
                Mode::Affine => {
                    tokio::spawn(serve_affine(stream, upstream.clone()));
                    continue;
                }
                Mode::Relay => {
                    tokio::spawn(serve_relay(stream, upstream.clone()));
                    continue;
                }
            }
            let client = client.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| forward(client.clone(), upstream.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    };
    tokio::select! {
        () = serve => {}
        () = tokio::time::sleep(args.max_runtime) => {}
        result = tokio::signal::ctrl_c() => result.context("failed to wait for ctrl-c")?,
    }
    Ok(())
}

/// One client connection, one upstream connection, both hyper connections polled by this
/// one task: no pool, no executor hop between the two.
async fn serve_affine(stream: TcpStream, upstream: String) {
    let Ok(up) = TcpStream::connect(&upstream).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let Ok((sender, client_conn)) = http1::handshake::<_, Incoming>(TokioIo::new(up)).await else {
        return;
    };
    // The server handles one request at a time per connection, so the lock never waits.
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let service = service_fn(move |mut req: Request<Incoming>| {
        let sender = Arc::clone(&sender);
        async move {
            req.headers_mut().insert(
                header::AUTHORIZATION,
                HeaderValue::from_static("Bearer bench-key"),
            );
            let mut sender = sender.lock().await;
            if sender.ready().await.is_err() {
                return Ok::<_, hyper::Error>(status(http::StatusCode::BAD_GATEWAY));
            }
            match sender.send_request(req).await {
                Ok(resp) => Ok(resp.map(BodyExt::boxed_unsync)),
                Err(_) => Ok(status(http::StatusCode::BAD_GATEWAY)),
            }
        }
    });
    let server_conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = server_conn => {}
        _ = client_conn => {}
    }
}

/// Bytes only, no HTTP: what tokio's I/O costs with nothing on top.
async fn serve_relay(mut stream: TcpStream, upstream: String) {
    let Ok(mut up) = TcpStream::connect(&upstream).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut stream, &mut up).await;
}

async fn forward(
    client: Client<HttpConnector, Incoming>,
    upstream: String,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, hyper::Error> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("http://{upstream}{path}").parse::<Uri>() else {
        return Ok(status(http::StatusCode::BAD_REQUEST));
    };
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    headers.remove(header::HOST);
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Bearer bench-key"),
    );
    match client.request(req).await {
        Ok(resp) => Ok(resp.map(BodyExt::boxed_unsync)),
        Err(_) => Ok(status(http::StatusCode::BAD_GATEWAY)),
    }
}

fn status(code: http::StatusCode) -> Response<Body> {
    let mut resp = Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = code;
    resp
}
