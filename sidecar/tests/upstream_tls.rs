//! The upstream client over TLS and through an egress proxy, against in-test servers on
//! ephemeral loopback ports: HTTP/1.1 connections first (the own pool, connections
//! reused), then HTTP/2 by ALPN past `limits.upstream_http1_connections` when the upstream
//! offers it (multiplexed connections), HTTP/2 at once for an HTTP/2-only server, the
//! `--upstream-ca-file` bundle is trusted and re-read, CONNECT tunnels carry https and
//! http upstreams, and every TLS or proxy failure is a 502 whose message names the cause.
//! A failed handshake never lets the key reach the upstream.

#![allow(clippy::unwrap_used, reason = "tests: a failure should panic")]

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use holysheep_common::HttpUrl;
use holysheep_sidecar::config::{Limits, UpstreamBase};
use holysheep_sidecar::error::ProxyError;
use holysheep_sidecar::reload::ReloadOptions;
use holysheep_sidecar::upstream::egress::{self, Route};
use holysheep_sidecar::upstream::trust::Trust;
use holysheep_sidecar::upstream::{Upstream, UpstreamIncoming, UpstreamOptions, send_once};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What the upstream saw of one request.
struct Seen {
    version: Version,
    authorization: Option<String>,
}

/// An in-test upstream on an ephemeral port.
struct TestUpstream {
    port: u16,
    /// The certificate to trust (TLS upstreams only).
    cert: Option<CertificateDer<'static>>,
    seen: mpsc::UnboundedReceiver<Seen>,
    /// TCP connections accepted.
    accepted: Arc<AtomicUsize>,
    _task: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A certificate for `localhost`, valid now or expired since 2020.
fn localhost_cert(expired: bool) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    }
    let cert = params.self_signed(&key).unwrap();
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (cert.der().clone(), private)
}

fn pem(cert: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// Starts an HTTPS server for `localhost` offering `alpn`.
async fn tls_upstream(alpn: &[&[u8]]) -> TestUpstream {
    tls_upstream_with(localhost_cert(false), alpn).await
}

async fn tls_upstream_with(
    (cert, private): (CertificateDer<'static>, PrivateKeyDer<'static>),
    alpn: &[&[u8]],
) -> TestUpstream {
    let acceptor = acceptor(cert.clone(), private, alpn);
    serve(Some(acceptor), Some(cert)).await
}

/// A TLS acceptor serving `cert` and offering `alpn`.
fn acceptor(
    cert: CertificateDer<'static>,
    private: PrivateKeyDer<'static>,
    alpn: &[&[u8]],
) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], private)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Starts a plain-http upstream.
async fn http_upstream() -> TestUpstream {
    serve(None, None).await
}

async fn serve(
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    cert: Option<CertificateDer<'static>>,
) -> TestUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            conns.spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let authorization = req
                            .headers()
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_owned());
                        let _ = tx.send(Seen {
                            version: req.version(),
                            authorization,
                        });
                        async {
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                b"{\"ok\":true}",
                            ))))
                        }
                    });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match acceptor {
                    Some(acceptor) => {
                        // A client that refuses our certificate ends the handshake.
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                    }
                }
            });
        }
    });
    TestUpstream {
        port,
        cert,
        seen: rx,
        accepted,
        _task: AbortOnDrop(task),
    }
}

fn trusting(cert: CertificateDer<'static>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

fn base(url: &str) -> UpstreamBase {
    url.parse().unwrap()
}

async fn call(up: &Upstream) -> Result<Response<UpstreamIncoming>, ProxyError> {
    let mut req = Request::new(Either::Left(Full::new(Bytes::from_static(b"{}"))));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = up.uri_for("/chat/completions", None).unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer sk-tls".parse().unwrap());
    send_once(
        up,
        Box::new(req),
        Duration::from_secs(5),
        Instant::now(),
        1024,
    )
    .await
}

/// Status and `error.message` of the response the sidecar answers for `err`.
async fn answer(err: ProxyError) -> (StatusCode, String) {
    let resp = err.into_response();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    (status, v["error"]["message"].as_str().unwrap().to_owned())
}

/// Limits under which every connection offers h2, as the pool did before it kept
/// HTTP/1.1 connections first.
fn h2_first() -> Limits {
    Limits {
        upstream_http1_connections: 0,
        ..Limits::default()
    }
}

#[tokio::test]
async fn https_upstream_offering_h2_gets_http1_by_default() {
    let mut server = tls_upstream(&[b"h2", b"http/1.1"]).await;
    let up = Upstream::with_tls(
        base(&format!("https://localhost:{}/v1", server.port)),
        &Limits::default(),
        trusting(server.cert.clone().unwrap()),
    )
    .unwrap();

    for _ in 0..2 {
        let resp = call(&up).await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_11);
        resp.into_body().collect().await.unwrap();
        assert_eq!(server.seen.recv().await.unwrap().version, Version::HTTP_11);
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn https_upstream_offering_h2_gets_http2_when_the_http1_limit_is_0() {
    let mut server = tls_upstream(&[b"h2", b"http/1.1"]).await;
    let up = Upstream::with_tls(
        base(&format!("https://localhost:{}/v1", server.port)),
        &h2_first(),
        trusting(server.cert.clone().unwrap()),
    )
    .unwrap();

    for _ in 0..2 {
        let resp = call(&up).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), Version::HTTP_2);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"{\"ok\":true}");
        let s = server.seen.recv().await.unwrap();
        assert_eq!(s.version, Version::HTTP_2);
        assert_eq!(s.authorization.as_deref(), Some("Bearer sk-tls"));
    }
}

#[tokio::test]
async fn https_upstream_without_h2_gets_http1() {
    let mut server = tls_upstream(&[b"http/1.1"]).await;
    let up = Upstream::with_tls(
        base(&format!("https://localhost:{}/v1", server.port)),
        &Limits::default(),
        trusting(server.cert.clone().unwrap()),
    )
    .unwrap();

    let resp = call(&up).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(server.seen.recv().await.unwrap().version, Version::HTTP_11);
}

#[tokio::test]
async fn buffered_requests_over_tls_http1_reuse_one_pooled_connection() {
    let server = tls_upstream(&[b"http/1.1"]).await;
    let up = Upstream::with_tls(
        base(&format!("https://localhost:{}/v1", server.port)),
        &Limits::default(),
        trusting(server.cert.clone().unwrap()),
    )
    .unwrap();
    for _ in 0..5 {
        let resp = call(&up).await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_11);
        resp.into_body().collect().await.unwrap();
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrent_requests_over_h2_share_one_multiplexed_connection() {
    let server = tls_upstream(&[b"h2", b"http/1.1"]).await;
    let up = Upstream::with_tls(
        base(&format!("https://localhost:{}/v1", server.port)),
        &h2_first(),
        trusting(server.cert.clone().unwrap()),
    )
    .unwrap();
    // The first request opens the connection; the next ones ride it at once.
    call(&up)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    let answers = futures_util::future::join_all((0..8).map(|_| call(&up))).await;
    for resp in answers {
        let resp = resp.unwrap();
        assert_eq!(resp.version(), Version::HTTP_2);
        resp.into_body().collect().await.unwrap();
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

/// A TLS upstream offering `alpn` (HTTP/2 and HTTP/1.1 served alike) that lets
/// `max_streams` streams be open at once per HTTP/2 connection and answers every request
/// with headers and a body that never ends (a long chat stream).
struct LongStreams {
    up: Upstream,
    /// TCP connections accepted (a refused ALPN offer counts).
    accepted: Arc<AtomicUsize>,
    /// TLS handshakes completed: the connections that carried requests.
    handshakes: Arc<AtomicUsize>,
    /// The version of every request seen.
    versions: Arc<Mutex<Vec<Version>>>,
    /// Connections open now, after their handshake.
    live: Arc<AtomicUsize>,
    _server: AbortOnDrop,
}

impl LongStreams {
    fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }

    /// How many requests came over HTTP/1.1 and how many over HTTP/2.
    fn versions(&self) -> (usize, usize) {
        let seen = self.versions.lock().unwrap();
        let h1 = seen.iter().filter(|v| **v == Version::HTTP_11).count();
        (h1, seen.len() - h1)
    }
}

async fn long_streams_upstream(max_streams: u32, alpn: &[&[u8]], limits: &Limits) -> LongStreams {
    let (cert, private) = localhost_cert(false);
    let acceptor = acceptor(cert.clone(), private, alpn);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let versions = Arc::new(Mutex::new(Vec::new()));
    let live = Arc::new(AtomicUsize::new(0));
    let (count, done, seen, open) = (
        Arc::clone(&accepted),
        Arc::clone(&handshakes),
        Arc::clone(&versions),
        Arc::clone(&live),
    );
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let (acceptor, done, seen, open) = (
                acceptor.clone(),
                Arc::clone(&done),
                Arc::clone(&seen),
                Arc::clone(&open),
            );
            conns.spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                done.fetch_add(1, Ordering::SeqCst);
                open.fetch_add(1, Ordering::SeqCst);
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        seen.lock().unwrap().push(req.version());
                        let never = futures_util::stream::pending::<
                            Result<hyper::body::Frame<Bytes>, Infallible>,
                        >();
                        async move {
                            Ok::<_, Infallible>(Response::new(http_body_util::StreamBody::new(
                                never,
                            )))
                        }
                    });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder.http2().max_concurrent_streams(max_streams);
                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    let up = Upstream::with_tls(
        base(&format!("https://localhost:{port}/v1")),
        limits,
        trusting(cert),
    )
    .unwrap();
    LongStreams {
        up,
        accepted,
        handshakes,
        versions,
        live,
        _server: AbortOnDrop(task),
    }
}

/// `n` concurrent calls, every response kept (its stream stays open).
async fn open_streams(up: &Upstream, n: usize) -> Vec<Response<UpstreamIncoming>> {
    let answers = futures_util::future::join_all((0..n).map(|_| call(up))).await;
    let failed: Vec<String> = answers
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {n} failed: {:?}",
        failed.len(),
        failed.first()
    );
    answers.into_iter().map(Result::unwrap).collect()
}

/// A server caps the streams open at once on one HTTP/2 connection, and a client queues
/// requests past that cap until a stream ends: behind chat streams that last minutes.
/// Against a server allowing the 100 streams RFC 9113 recommends, 250 long streams on a
/// warm pool all get their headers, on 3 connections, and the slots freed by ended
/// streams are used again. The server speaks only HTTP/2: the pool's first `http/1.1`
/// offer is refused, and every connection offers h2 from then on.
#[tokio::test]
async fn streams_past_a_connections_cap_open_another_connection_instead_of_queueing() {
    let server = long_streams_upstream(100, &[b"h2"], &Limits::default()).await;
    drop(open_streams(&server.up, 1).await);
    assert_eq!(
        server.accepted.load(Ordering::SeqCst),
        2,
        "one refused offer"
    );
    assert_eq!(server.handshakes(), 1);
    let held = open_streams(&server.up, 250).await;
    assert_eq!(server.handshakes(), 3);
    drop(held);
    // The reset streams free their slots: the next ones go on the open connections.
    let _again = open_streams(&server.up, 150).await;
    assert_eq!(server.handshakes(), 3);
    assert_eq!(server.versions(), (0, 401));
}

/// A burst on a cold pool opens the HTTP/2 connections one at a time, each taking its
/// share of streams, instead of one TLS connection per request.
#[tokio::test]
async fn a_cold_burst_opens_as_many_connections_as_its_streams_need() {
    let server = long_streams_upstream(100, &[b"h2", b"http/1.1"], &h2_first()).await;
    let _held = open_streams(&server.up, 250).await;
    assert_eq!(server.accepted.load(Ordering::SeqCst), 3);
    assert_eq!(server.versions(), (0, 250));
}

/// Under `limits.upstream_http1_connections` each request in flight gets an HTTP/1.1
/// connection; the requests past it share an HTTP/2 connection, opened once. A cold burst
/// opens 2 + 1 connections, and a later request with every HTTP/1.1 connection busy rides
/// the HTTP/2 one. Once the HTTP/1.1 connections are gone (their streams were cut, so
/// they close), the next request opens an HTTP/1.1 connection again instead of riding
/// the HTTP/2 one that has room.
#[tokio::test]
async fn past_the_http1_limit_requests_share_an_http2_connection() {
    let limits = Limits {
        upstream_http1_connections: 2,
        ..Limits::default()
    };
    let server = long_streams_upstream(100, &[b"h2", b"http/1.1"], &limits).await;
    let held = open_streams(&server.up, 5).await;
    assert_eq!(server.handshakes(), 3);
    assert_eq!(server.versions(), (2, 3));
    let open = server.up.open_connections();
    assert_eq!(open(), (2, 1), "the metrics' reading");
    let versions: Vec<Version> = held.iter().map(Response::version).collect();
    assert_eq!(
        versions.iter().filter(|v| **v == Version::HTTP_2).count(),
        3,
        "{versions:?}"
    );
    let one_more = open_streams(&server.up, 1).await;
    assert_eq!(one_more[0].version(), Version::HTTP_2);
    assert_eq!(server.handshakes(), 3);

    drop(held);
    tokio::time::timeout(Duration::from_secs(5), async {
        while server.live.load(Ordering::SeqCst) > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the cut HTTP/1.1 connections close");
    let after = open_streams(&server.up, 1).await;
    assert_eq!(after[0].version(), Version::HTTP_11);
    assert_eq!(server.handshakes(), 4);
    assert_eq!(open(), (1, 1));
}

/// An upstream whose TLS handshake never completes (a black hole): while connects fail,
/// concurrent requests do not queue behind one another's connect but each fails within
/// its connect timeout as unreachable, well before its attempt timeout.
#[tokio::test]
async fn while_connects_fail_requests_do_not_wait_for_one_another() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let _silent = AbortOnDrop(tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    }));
    let limits = Limits {
        connect_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let (cert, _) = localhost_cert(false);
    let up = Upstream::with_tls(
        base(&format!("https://localhost:{port}/v1")),
        &limits,
        trusting(cert),
    )
    .unwrap();
    // One after another these 20 connects would take 4 s, twice the attempt timeout.
    let answers = futures_util::future::join_all((0..20).map(|_| {
        let mut req = Request::new(Either::Left(Full::new(Bytes::from_static(b"{}"))));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = up.uri_for("/chat/completions", None).unwrap();
        send_once(
            &up,
            Box::new(req),
            Duration::from_secs(2),
            Instant::now(),
            1024,
        )
    }))
    .await;
    for answer in answers {
        let err = answer.unwrap_err();
        assert!(
            matches!(err, ProxyError::UpstreamUnreachable { .. }),
            "{err}"
        );
    }
}

#[tokio::test]
async fn untrusted_certificate_is_a_502_naming_the_unknown_issuer_and_the_key_stays() {
    let mut server = tls_upstream(&[b"h2", b"http/1.1"]).await;
    // The production client trusts only the platform's (or the bundled) roots.
    let up = Upstream::new(
        base(&format!("https://localhost:{}/v1", server.port)),
        &Limits::default(),
    )
    .unwrap();

    let err = call(&up).await.unwrap_err();
    assert!(
        matches!(err, ProxyError::UpstreamUnreachable { .. }),
        "{err:?}"
    );
    let (status, message) = answer(err).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(message.contains("UnknownIssuer"), "{message}");
    assert!(message.contains("--upstream-ca-file"), "{message}");
    assert!(server.seen.try_recv().is_err(), "no request reached it");
}

#[tokio::test]
async fn name_mismatch_is_a_502_naming_it() {
    let mut server = tls_upstream(&[b"http/1.1"]).await;
    // The certificate names `localhost`, the upstream is the IP.
    let up = Upstream::with_tls(
        base(&format!("https://127.0.0.1:{}/v1", server.port)),
        &Limits::default(),
        trusting(server.cert.clone().unwrap()),
    )
    .unwrap();
    let (status, message) = answer(call(&up).await.unwrap_err()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        message.contains("NotValidForName") || message.contains("not valid for"),
        "{message}"
    );
    assert!(message.contains("--upstream host"), "{message}");
    assert!(server.seen.try_recv().is_err());
}

#[tokio::test]
async fn expired_certificate_is_a_502_naming_it() {
    let mut server = tls_upstream_with(localhost_cert(true), &[b"http/1.1"]).await;
    let up = Upstream::with_tls(
        base(&format!("https://localhost:{}/v1", server.port)),
        &Limits::default(),
        trusting(server.cert.clone().unwrap()),
    )
    .unwrap();
    let (status, message) = answer(call(&up).await.unwrap_err()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(message.contains("expired"), "{message}");
    assert!(server.seen.try_recv().is_err());
}

#[tokio::test]
async fn the_ca_file_is_trusted_once_it_appears_without_a_restart() {
    let mut server = tls_upstream(&[b"h2", b"http/1.1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    let options = UpstreamOptions {
        ca_file: Some(ca_file.clone()),
        ..UpstreamOptions::default()
    };
    let up = Upstream::with_options(
        base(&format!("https://localhost:{}/v1", server.port)),
        &Limits::default(),
        options,
    )
    .unwrap();
    // Not there yet (an optional ConfigMap): the platform's roots alone do not do.
    let (status, message) = answer(call(&up).await.unwrap_err()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(message.contains("UnknownIssuer"), "{message}");

    let _watchers = up.spawn_watchers(ReloadOptions {
        // An hour-long safety net: only the directory watch can make this pass.
        poll_interval: Duration::from_secs(3600),
        settle: Duration::from_millis(20),
    });
    let applied = up.trust().applied();
    std::fs::write(&ca_file, pem(server.cert.as_ref().unwrap())).unwrap();
    tokio::time::timeout(Duration::from_secs(10), up.trust().wait_applied(applied))
        .await
        .unwrap();

    let resp = call(&up).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = server.seen.recv().await.unwrap();
    assert_eq!(seen.authorization.as_deref(), Some("Bearer sk-tls"));
}

/// How the in-test egress proxy answers CONNECT.
#[derive(Clone)]
enum ProxyMode {
    /// 200 and a tunnel, after checking `Proxy-Authorization` when `Some`.
    Tunnel(Option<&'static str>),
    /// This status line, then close.
    Refuse(&'static str),
}

/// An in-test CONNECT proxy; returns its URL and the request heads it received.
async fn connect_proxy(mode: ProxyMode) -> (String, Arc<Mutex<Vec<String>>>, AbortOnDrop) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&heads);
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut client, _)) = listener.accept().await {
            let (mode, seen) = (mode.clone(), Arc::clone(&seen));
            conns.spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                // Byte by byte: nothing past the head may be read (the TLS hello follows).
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8(head).unwrap();
                seen.lock().unwrap().push(head.clone());
                let refuse = match mode {
                    ProxyMode::Refuse(status) => Some(status),
                    ProxyMode::Tunnel(Some(auth))
                        if !head.to_ascii_lowercase().contains(&format!(
                            "proxy-authorization: {}\r\n",
                            auth.to_ascii_lowercase()
                        )) =>
                    {
                        Some("407 Proxy Authentication Required")
                    }
                    ProxyMode::Tunnel(_) => None,
                };
                if let Some(status) = refuse {
                    let _ = client
                        .write_all(
                            format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                    return;
                }
                let target = head.split(' ').nth(1).unwrap().to_owned();
                let Ok(mut upstream) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (url, heads, AbortOnDrop(task))
}

/// An upstream client routed through the proxy at `proxy_url` (as `--egress-proxy`),
/// with its auth file at `auth_file`.
fn through_proxy(
    upstream: &str,
    proxy_url: &str,
    trust: Option<CertificateDer<'static>>,
    auth_file: PathBuf,
) -> Upstream {
    let base = base(upstream);
    let flag = HttpUrl::egress_proxy(proxy_url).unwrap();
    let route = egress::resolve(Some(&flag), &base, |_| None).unwrap();
    assert!(matches!(route, Route::Proxy(_)), "{route:?}");
    let trust = match trust {
        Some(cert) => Trust::fixed(trusting(cert)),
        None => Trust::fixed(trusting(localhost_cert(false).0)),
    };
    Upstream::build(base, &Limits::default(), Arc::new(trust), route, auth_file).unwrap()
}

#[tokio::test]
async fn https_tunnels_through_the_proxy_with_the_auth_file_credentials() {
    let mut server = tls_upstream(&[b"h2", b"http/1.1"]).await;
    // base64("proxyuser:proxypass")
    let want = "Basic cHJveHl1c2VyOnByb3h5cGFzcw==";
    let (proxy, heads, _proxy) = connect_proxy(ProxyMode::Tunnel(Some(want))).await;
    let dir = tempfile::tempdir().unwrap();
    let auth_file = dir.path().join("egress-proxy-auth");
    std::fs::write(&auth_file, "proxyuser:proxypass\n").unwrap();
    let up = through_proxy(
        &format!("https://localhost:{}/v1", server.port),
        &proxy,
        server.cert.clone(),
        auth_file,
    );

    let resp = call(&up).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_11);
    let seen = server.seen.recv().await.unwrap();
    assert_eq!(seen.authorization.as_deref(), Some("Bearer sk-tls"));
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0].starts_with(&format!("CONNECT localhost:{} HTTP/1.1\r\n", server.port)),
        "{heads:?}"
    );
    assert!(
        !heads[0].contains("sk-tls"),
        "the key is inside the tunnel only"
    );
}

#[tokio::test]
async fn an_http_upstream_is_tunnelled_too() {
    let mut server = http_upstream().await;
    let (proxy, heads, _proxy) = connect_proxy(ProxyMode::Tunnel(None)).await;
    let dir = tempfile::tempdir().unwrap();
    let up = through_proxy(
        &format!("http://127.0.0.1:{}/v1", server.port),
        &proxy,
        None,
        dir.path().join("egress-proxy-auth"),
    );
    let resp = call(&up).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(server.seen.recv().await.is_some());
    let heads = heads.lock().unwrap().clone();
    assert!(
        heads[0].starts_with(&format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n", server.port)),
        "{heads:?}"
    );
    assert!(!heads[0].contains("sk-tls"), "{heads:?}");
}

#[tokio::test]
async fn a_proxy_asking_for_credentials_is_a_502_naming_407_and_the_auth_file() {
    let mut server = tls_upstream(&[b"http/1.1"]).await;
    let (proxy, _heads, _proxy) = connect_proxy(ProxyMode::Tunnel(Some("Basic eDp5"))).await;
    let dir = tempfile::tempdir().unwrap();
    let auth_file = dir.path().join("egress-proxy-auth");
    let up = through_proxy(
        &format!("https://localhost:{}/v1", server.port),
        &proxy,
        server.cert.clone(),
        auth_file.clone(),
    );
    let (status, message) = answer(call(&up).await.unwrap_err()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(message.contains("407"), "{message}");
    assert!(
        message.contains(&auth_file.display().to_string()),
        "{message}"
    );
    assert!(server.seen.try_recv().is_err());
}

#[tokio::test]
async fn wrong_credentials_are_a_407_that_never_shows_them() {
    let server = tls_upstream(&[b"http/1.1"]).await;
    let (proxy, _heads, _proxy) = connect_proxy(ProxyMode::Tunnel(Some("Basic eDp5"))).await;
    let dir = tempfile::tempdir().unwrap();
    let auth_file = dir.path().join("egress-proxy-auth");
    std::fs::write(&auth_file, "someone:hunter2").unwrap();
    let up = through_proxy(
        &format!("https://localhost:{}/v1", server.port),
        &proxy,
        server.cert.clone(),
        auth_file,
    );
    let (_, message) = answer(call(&up).await.unwrap_err()).await;
    assert!(message.contains("407"), "{message}");
    assert!(message.contains("refused the credentials"), "{message}");
    assert!(
        !message.contains("hunter2") && !message.contains("someone"),
        "{message}"
    );
}

#[tokio::test]
async fn other_proxy_answers_are_named() {
    let server = tls_upstream(&[b"http/1.1"]).await;
    let (proxy, _heads, _proxy) = connect_proxy(ProxyMode::Refuse("403 Forbidden")).await;
    let dir = tempfile::tempdir().unwrap();
    let up = through_proxy(
        &format!("https://localhost:{}/v1", server.port),
        &proxy,
        server.cert.clone(),
        dir.path().join("egress-proxy-auth"),
    );
    let (status, message) = answer(call(&up).await.unwrap_err()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(message.contains("answered 403 Forbidden"), "{message}");
    assert!(message.contains(&proxy), "{message}");
}

#[tokio::test]
async fn an_unreachable_proxy_is_named() {
    let server = tls_upstream(&[b"http/1.1"]).await;
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("http://{}", gone.local_addr().unwrap());
    drop(gone);
    let dir = tempfile::tempdir().unwrap();
    let up = through_proxy(
        &format!("https://localhost:{}/v1", server.port),
        &proxy,
        server.cert.clone(),
        dir.path().join("egress-proxy-auth"),
    );
    let (status, message) = answer(call(&up).await.unwrap_err()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        message.contains(&format!("egress proxy {proxy} unreachable")),
        "{message}"
    );
}
