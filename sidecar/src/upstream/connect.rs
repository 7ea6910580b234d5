//! The one way to open an upstream connection: TCP, or a CONNECT tunnel through the egress
//! proxy, then rustls (for an https upstream) with the live config and its ALPN list.
//!
//! What it does: [`Connector::connect`] for the own pool, and the same as a tower
//! `Service<Uri>` for hyper-util's client (upgrades). The whole connect
//! (TCP, CONNECT, handshake) is bounded by `limits.connect_timeout`. Failures become a
//! [`ConnectError`] whose message says what failed and the fix: unknown issuer, a name
//! mismatch, an expired certificate, the proxy's answer to CONNECT (`407` names the auth
//! file), an unreachable proxy. No request byte is written before the handshake succeeds,
//! so a failed handshake cannot leak the key.
//!
//! The CONNECT itself is hyper-util's `Tunnel`. It reports any non-200, non-407 answer as
//! "unsuccessful"; the status line is read back from a small record of the bytes the proxy
//! sent first ([`Recorder`]), so the error can name it. An http:// upstream behind a proxy
//! is tunnelled too: one path for both schemes, and the proxy relays bytes instead of
//! parsing requests (so it has no request headers to log). The cost: a proxy that allows
//! CONNECT only to port 443 must be told about the upstream's port.
//!
//! What it does not do: pool, or choose HTTP/1.1 versus HTTP/2 (the caller reads
//! [`Io::is_h2`]). The byte streams themselves are in `connect/stream.rs`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tower::ServiceExt as _;

mod stream;

pub(crate) use stream::Io;
use stream::{Recorder, Stream};

use super::egress::{EgressProxy, ProxyAuth};
use super::trust::Trust;
use crate::error::{BoxError, ErrorChain};

/// Which ALPN list a connector offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alpn {
    /// `h2, http/1.1`.
    H2OrH1,
    /// `http/1.1` only (protocol upgrades, and the pool's first HTTP/1.1 connections).
    H1Only,
}

/// The egress proxy and its live credentials.
#[derive(Debug, Clone)]
pub(crate) struct ProxyRoute {
    pub(crate) proxy: EgressProxy,
    pub(crate) auth: Arc<ProxyAuth>,
}

/// See the module docs. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    trust: Arc<Trust>,
    proxy: Option<ProxyRoute>,
    timeout: Duration,
    alpn: Alpn,
}

/// Why a connection could not be made. Messages carry the cause and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect to the upstream failed.
    #[error("cannot connect to {target}: {source}")]
    Tcp {
        /// `host:port`.
        target: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The whole connect took longer than `limits.connect_timeout`.
    #[error("connecting to {target} timed out after {after:?} (limits.connect_timeout)")]
    Timeout {
        /// `host:port`.
        target: String,
        /// The timeout.
        after: Duration,
    },
    /// The egress proxy could not be reached.
    #[error("egress proxy {proxy} unreachable: {}", ErrorChain(&**.source))]
    ProxyUnreachable {
        /// The proxy URL, without credentials.
        proxy: String,
        /// The cause.
        source: BoxError,
    },
    /// The proxy wants credentials, or refused the ones sent.
    #[error(
        "egress proxy {proxy} answered 407 Proxy Authentication Required to CONNECT {target}: \
         {fix}"
    )]
    ProxyAuth {
        /// The proxy URL, without credentials.
        proxy: String,
        /// `host:port`.
        target: String,
        /// What to change.
        fix: String,
    },
    /// The proxy answered CONNECT with another status.
    #[error("egress proxy {proxy} refused CONNECT {target}: answered {answer}")]
    ProxyRefused {
        /// The proxy URL, without credentials.
        proxy: String,
        /// `host:port`.
        target: String,
        /// The status line, e.g. `403 Forbidden`.
        answer: String,
    },
    /// The tunnel broke otherwise (closed early, garbled answer).
    #[error("egress proxy {proxy} failed CONNECT {target}: {}", ErrorChain(&**.source))]
    Tunnel {
        /// The proxy URL, without credentials.
        proxy: String,
        /// `host:port`.
        target: String,
        /// hyper-util's error.
        source: BoxError,
    },
    /// The TLS handshake with the upstream failed.
    #[error("TLS handshake with {server} failed: {cause}{hint}")]
    Tls {
        /// The name verified.
        server: String,
        /// rustls's reason, e.g. `invalid peer certificate: UnknownIssuer`.
        cause: String,
        /// What to do about it, with a leading `; `, or empty.
        hint: &'static str,
        /// The server refused every protocol offered by ALPN.
        alpn_refused: bool,
    },
    /// The upstream host cannot be a TLS server name.
    #[error("{host} cannot be used as a TLS server name; check --upstream")]
    ServerName {
        /// The host.
        host: String,
    },
    /// The URI has no host.
    #[error("the upstream URI has no host")]
    NoHost,
}

impl ConnectError {
    /// Whether the TLS server refused every protocol offered by ALPN (e.g. an HTTP/2-only
    /// server offered `http/1.1`).
    pub(crate) fn alpn_refused(&self) -> bool {
        matches!(
            self,
            Self::Tls {
                alpn_refused: true,
                ..
            }
        )
    }
}

impl Connector {
    pub(crate) fn new(
        trust: Arc<Trust>,
        proxy: Option<ProxyRoute>,
        timeout: Duration,
        alpn: Alpn,
    ) -> Self {
        Self {
            trust,
            proxy,
            timeout,
            alpn,
        }
    }

    /// Opens a connection to `dst`'s host and port (TLS when `dst` is https).
    pub(crate) async fn connect(&self, dst: &Uri) -> Result<Io, ConnectError> {
        self.connect_offering(dst, self.alpn).await
    }

    /// [`Connector::connect`] offering `alpn` instead of the connector's own list.
    pub(crate) async fn connect_offering(&self, dst: &Uri, alpn: Alpn) -> Result<Io, ConnectError> {
        let host = dst.host().ok_or(ConnectError::NoHost)?;
        let https = dst.scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = dst.port_u16().unwrap_or(if https { 443 } else { 80 });
        let target = format!("{host}:{port}");
        let opened =
            tokio::time::timeout(self.timeout, self.open(host, port, https, &target, alpn));
        match opened.await {
            Ok(result) => result,
            Err(_elapsed) => Err(ConnectError::Timeout {
                target,
                after: self.timeout,
            }),
        }
    }

    async fn open(
        &self,
        host: &str,
        port: u16,
        https: bool,
        target: &str,
        alpn: Alpn,
    ) -> Result<Io, ConnectError> {
        let tcp = match &self.proxy {
            None => {
                // `host()` keeps the brackets of an IPv6 literal; the socket API wants none.
                let bare = host.trim_start_matches('[').trim_end_matches(']');
                TcpStream::connect((bare, port))
                    .await
                    .map_err(|source| ConnectError::Tcp {
                        target: target.to_owned(),
                        source,
                    })?
            }
            Some(route) => tunnel(route, target).await?,
        };
        // Small request writes: don't wait for Nagle.
        let _ = tcp.set_nodelay(true);
        if !https {
            return Ok(Io::new(Stream::Tcp(tcp), false));
        }
        let configs = self.trust.current();
        let config = match alpn {
            Alpn::H2OrH1 => Arc::clone(&configs.h2_or_h1),
            Alpn::H1Only => Arc::clone(&configs.h1_only),
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(bare.to_owned()).map_err(|_| ConnectError::ServerName {
            host: host.to_owned(),
        })?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| tls_error(host, &e))?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok(Io::new(Stream::Tls(Box::new(tls)), h2))
    }
}

/// CONNECT `target` through the proxy; the TCP stream once the proxy answered 200.
async fn tunnel(route: &ProxyRoute, target: &str) -> Result<TcpStream, ConnectError> {
    let head = Arc::new(Mutex::new(Vec::new()));
    let inner = TcpTo {
        head: Arc::clone(&head),
    };
    let mut tunnel = Tunnel::new(route.proxy.uri.clone(), inner);
    if let Some(auth) = route.auth.header() {
        tunnel = tunnel.with_auth(auth);
    }
    // Always with an explicit port: `Tunnel` would assume 443.
    let dst: Uri = format!("http://{target}/")
        .parse()
        .map_err(|_| ConnectError::NoHost)?;
    match tunnel.oneshot(dst).await {
        Ok(io) => Ok(io.into_inner().inner),
        Err(e) => Err(tunnel_failure(route, target, &head, Box::new(e))),
    }
}

/// Names what went wrong with CONNECT: the proxy not reached, or its answer (read from
/// the recorded bytes: hyper-util's error type is not public, and it drops the status).
fn tunnel_failure(
    route: &ProxyRoute,
    target: &str,
    head: &Mutex<Vec<u8>>,
    source: BoxError,
) -> ConnectError {
    let proxy = route.proxy.display();
    let target = target.to_owned();
    if let Some(unreachable) = source
        .source()
        .and_then(|s| s.downcast_ref::<ProxyConnect>())
    {
        return ConnectError::ProxyUnreachable {
            proxy,
            source: Box::new(io::Error::new(
                unreachable.0.kind(),
                unreachable.0.to_string(),
            )),
        };
    }
    match status_line(head) {
        Some(answer) if answer.starts_with("407") => {
            let file = route.auth.file().display();
            let fix = if route.auth.header().is_some() {
                format!("the proxy refused the credentials sent; check `user:password` in {file}")
            } else {
                format!("no credentials were sent; put `user:password` in {file}")
            };
            ConnectError::ProxyAuth { proxy, target, fix }
        }
        Some(answer) if !answer.starts_with("200") => ConnectError::ProxyRefused {
            proxy,
            target,
            answer,
        },
        _ => ConnectError::Tunnel {
            proxy,
            target,
            source,
        },
    }
}

/// `403 Forbidden` from the recorded start of the proxy's answer.
fn status_line(head: &Mutex<Vec<u8>>) -> Option<String> {
    let head = head.lock().unwrap_or_else(PoisonError::into_inner);
    let line = head.split(|b| *b == b'\n').next()?;
    let line = String::from_utf8_lossy(line);
    let (_version, status) = line.trim_end().split_once(' ')?;
    // Printable ASCII only: the text goes into a log line and a response body.
    let status: String = status
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(80)
        .collect();
    (!status.is_empty()).then_some(status)
}

/// rustls's reason plus what to do about the common ones.
fn tls_error(host: &str, e: &io::Error) -> ConnectError {
    use rustls::CertificateError as C;
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let hint = match rustls_error {
        Some(rustls::Error::InvalidCertificate(cert)) => match cert {
            C::UnknownIssuer => {
                "; the upstream's certificate is not signed by a trusted CA: add that CA \
                 with --upstream-ca-file (or SSL_CERT_FILE)"
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "; the certificate does not name this host: check the --upstream host"
            }
            C::Expired | C::ExpiredContext { .. } => {
                "; the upstream's certificate has expired (or this machine's clock is wrong)"
            }
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "; the upstream's certificate is not valid yet (check this machine's clock)"
            }
            _ => "",
        },
        _ => "",
    };
    let cause = match rustls_error {
        Some(r) => r.to_string(),
        None => ErrorChain(e).to_string(),
    };
    let alpn_refused = matches!(
        rustls_error,
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::NoApplicationProtocol
        ))
    );
    ConnectError::Tls {
        server: host.to_owned(),
        cause,
        hint,
        alpn_refused,
    }
}

/// TCP to the proxy, recording the first bytes it answers (see [`Recorder`]).
#[derive(Clone)]
struct TcpTo {
    head: Arc<Mutex<Vec<u8>>>,
}

impl tower::Service<Uri> for TcpTo {
    type Response = TokioIo<Recorder>;
    type Error = ProxyConnect;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<Recorder>, ProxyConnect>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyConnect>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, proxy: Uri) -> Self::Future {
        let head = Arc::clone(&self.head);
        Box::pin(async move {
            let host = proxy
                .host()
                .ok_or_else(|| ProxyConnect(io::Error::other("the proxy URL has no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = proxy.port_u16().unwrap_or(80);
            let inner = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(ProxyConnect)?;
            Ok(TokioIo::new(Recorder { inner, head }))
        })
    }
}

/// The TCP connect to the proxy failed (told apart from the proxy's answer).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ProxyConnect(io::Error);

impl tower::Service<Uri> for Connector {
    type Response = Io;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Io, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(&dst).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_is_read_back_printable_and_short() {
        let head = |b: &[u8]| status_line(&Mutex::new(b.to_vec()));
        assert_eq!(
            head(b"HTTP/1.1 403 Forbidden\r\nVia: x\r\n\r\n").as_deref(),
            Some("403 Forbidden")
        );
        assert_eq!(
            head(b"HTTP/1.0 502 Bad\x01Gateway\r\n").as_deref(),
            Some("502 BadGateway")
        );
        assert_eq!(head(b"garbage").as_deref(), None);
        assert_eq!(head(b"").as_deref(), None);
    }
}
