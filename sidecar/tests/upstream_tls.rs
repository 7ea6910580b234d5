//! The upstream client over TLS against an in-test HTTPS server with a private CA:
//! HTTP/2 is chosen by ALPN when the upstream offers it, HTTP/1.1 otherwise, and an
//! untrusted certificate is a clean 502 (unreachable), never a panic.

#![allow(clippy::unwrap_used, reason = "tests: a failure should panic")]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use holysheep_sidecar::config::Limits;
use holysheep_sidecar::error::ProxyError;
use holysheep_sidecar::upstream::{Upstream, send_once};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// What the TLS upstream saw of one request.
struct Seen {
    version: Version,
    authorization: Option<String>,
}

/// Starts an HTTPS server for `localhost` offering `alpn`; returns its port, the
/// certificate to trust, the channel of what it saw, and its task (aborted on drop).
async fn tls_upstream(
    alpn: &[&[u8]],
) -> (
    u16,
    CertificateDer<'static>,
    mpsc::UnboundedReceiver<Seen>,
    AbortOnDrop,
) {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = key.cert.der().clone();
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], private)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            conns.spawn(async move {
                // A client that refuses our certificate ends the handshake: nothing to serve.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
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
                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    (port, cert, rx, AbortOnDrop(task))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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

async fn call(up: &Upstream) -> Result<Response<hyper::body::Incoming>, ProxyError> {
    let mut req = Request::new(Either::Left(Full::new(Bytes::from_static(b"{}"))));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = up.uri_for("/chat/completions", None).unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer sk-tls".parse().unwrap());
    send_once(up, req, Duration::from_secs(5), 1024).await
}

#[tokio::test]
async fn https_upstream_offering_h2_gets_http2() {
    let (port, cert, mut seen, _server) = tls_upstream(&[b"h2", b"http/1.1"]).await;
    let base = format!("https://localhost:{port}/v1").parse().unwrap();
    let up = Upstream::with_tls(base, &Limits::default(), trusting(cert));

    for _ in 0..2 {
        let resp = call(&up).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), Version::HTTP_2);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"{\"ok\":true}");
        let s = seen.recv().await.unwrap();
        assert_eq!(s.version, Version::HTTP_2);
        assert_eq!(s.authorization.as_deref(), Some("Bearer sk-tls"));
    }
}

#[tokio::test]
async fn https_upstream_without_h2_gets_http1() {
    let (port, cert, mut seen, _server) = tls_upstream(&[b"http/1.1"]).await;
    let base = format!("https://localhost:{port}/v1").parse().unwrap();
    let up = Upstream::with_tls(base, &Limits::default(), trusting(cert));

    let resp = call(&up).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(seen.recv().await.unwrap().version, Version::HTTP_11);
}

#[tokio::test]
async fn untrusted_certificate_is_unreachable_not_a_panic() {
    let (port, _cert, _seen, _server) = tls_upstream(&[b"h2", b"http/1.1"]).await;
    let base = format!("https://localhost:{port}/v1").parse().unwrap();
    // The production client trusts only the public (webpki) roots.
    let up = Upstream::new(base, &Limits::default()).unwrap();

    let err = call(&up).await.unwrap_err();
    assert!(
        matches!(err, ProxyError::UpstreamUnreachable { .. }),
        "{err:?}"
    );
    assert_eq!(err.status_and_kind().0, StatusCode::BAD_GATEWAY);
}
