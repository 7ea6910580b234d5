//! `mini-proxy`: the smallest hyper forwarding proxy (hyper 1 server, hyper-util legacy
//! pooled client, the same stack the sidecar uses) with none of the sidecar's own work: no
//! JSON, no metrics, no usage tap, no retries. Run as the optional benchmark target
//! `hyper` (`BENCH_TARGETS="direct nginx hyper sidecar"`), it splits the sidecar's cost
//! into "the HTTP stack" and "what the sidecar adds on top".
//!
//! Not a product: it forwards every path as is, only replaces `Authorization`, and keeps
//! no limits. Benchmark use only.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

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
    /// Use a current-thread runtime instead of the multi-thread one the sidecar uses.
    #[arg(long)]
    current_thread: bool,
    /// Exit after this long (a forgotten proxy must not linger).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    max_runtime: Duration,
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
