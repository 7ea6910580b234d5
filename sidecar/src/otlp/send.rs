//! One OTLP/HTTP POST on a fresh HTTP/1.1 connection (TLS with the platform roots for
//! `https`). Exports are a minute apart, so no pool is kept: nothing stays open or
//! allocated between them. The caller bounds the whole call with a timeout. It does not
//! retry (the next export carries the same cumulative values).

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, HeaderMap, HeaderValue};
use http::uri::Scheme;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Why an export did not arrive. Messages never hold header values.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The URL has no usable host or port.
    #[error("the OTLP endpoint {0} has no host")]
    NoHost(String),
    /// TCP connect failed.
    #[error("failed to connect to the OTLP endpoint: {0}")]
    Connect(#[source] std::io::Error),
    /// The TLS handshake failed.
    #[error("TLS handshake with the OTLP endpoint failed: {0}")]
    Tls(#[source] std::io::Error),
    /// No TLS client could be set up.
    #[error("no TLS client for the OTLP endpoint: {0}")]
    TlsConfig(#[source] rustls::Error),
    /// HTTP failed.
    #[error("OTLP export request failed: {0}")]
    Http(#[source] hyper::Error),
    /// The request could not be built.
    #[error("OTLP export request could not be built: {0}")]
    Build(#[source] http::Error),
    /// The receiver answered with an error status.
    #[error("the OTLP endpoint answered {0}")]
    Status(http::StatusCode),
    /// It did not finish in time.
    #[error("OTLP export timed out")]
    Timeout,
}

/// POSTs `body` (an encoded `ExportMetricsServiceRequest`) to `url` with `headers`.
pub async fn post(url: &Uri, headers: &HeaderMap, body: Vec<u8>) -> Result<(), SendError> {
    let host = url
        .host()
        .ok_or_else(|| SendError::NoHost(url.to_string()))?;
    let https = url.scheme() == Some(&Scheme::HTTPS);
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    // `[::1]` in a URL is `::1` to connect to.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((bare, port))
        .await
        .map_err(SendError::Connect)?;
    let _ = tcp.set_nodelay(true);
    if https {
        let name = rustls::pki_types::ServerName::try_from(bare.to_owned())
            .map_err(|_| SendError::NoHost(url.to_string()))?;
        let config = tls_config().map_err(SendError::TlsConfig)?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(SendError::Tls)?;
        exchange(tls, url, headers, body).await
    } else {
        exchange(tcp, url, headers, body).await
    }
}

async fn exchange<S>(io: S, url: &Uri, headers: &HeaderMap, body: Vec<u8>) -> Result<(), SendError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(SendError::Http)?;
    // The connection task ends with the exchange: the sender is dropped on return.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let mut req = Request::post(path)
        .body(Full::new(Bytes::from(body)))
        .map_err(SendError::Build)?;
    let h = req.headers_mut();
    for (name, value) in headers {
        h.append(name, value.clone());
    }
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    if let Some(authority) = url.authority() {
        if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
            h.insert(HOST, v);
        }
    }
    let resp = sender.send_request(req).await.map_err(SendError::Http)?;
    let status = resp.status();
    // Read the (small) answer so the receiver sees a clean exchange.
    let _ = resp.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(SendError::Status(status))
    }
}

/// Platform roots (the bundled ones when it has none), HTTP/1.1 only.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let (roots, _) = crate::upstream::trust::platform_roots();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
