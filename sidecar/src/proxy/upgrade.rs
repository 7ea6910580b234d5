//! Protocol upgrades (WebSocket, e.g. the Realtime API at `/v1/realtime`): the upgrade
//! request goes upstream with our key over its own HTTP/1.1 connection; on `101` both
//! connections are taken over and bytes are copied both ways until either side closes.
//!
//! Only WebSocket is tunnelled. Any other offer (`Upgrade: h2c` from `curl --http2`,
//! TLS/1.0...) is an optional offer the server may ignore (RFC 9110 7.8): the request is
//! served as plain HTTP/1.1 with the offer stripped as hop-by-hop.
//!
//! What it does not do: look inside the frames (no usage counting, no model alias), retry,
//! or keep a tunnel open past shutdown: tunnels are not part of the graceful drain.
//! A refused upgrade (any status but 101) streams back like any other response.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Either, Empty};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::error::{ProxyError, ResponseBody};
use crate::keys::ApiKey;
use crate::upstream::{self, Upstream};

/// Whether the client asks to switch to WebSocket (`Connection: upgrade` and `websocket`
/// among the `Upgrade` protocols, any case, any version suffix).
pub(super) fn requested(headers: &HeaderMap) -> bool {
    let connection_upgrade =
        tokens(headers, header::CONNECTION).any(|token| token.eq_ignore_ascii_case("upgrade"));
    connection_upgrade
        && tokens(headers, header::UPGRADE).any(|protocol| {
            let name = protocol.split('/').next().unwrap_or(protocol);
            name.trim().eq_ignore_ascii_case("websocket")
        })
}

/// The comma-separated tokens of every `name` header, trimmed.
fn tokens(headers: &HeaderMap, name: header::HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Forwards an upgrade request and, on `101`, splices the two connections together.
pub(super) async fn tunnel(
    upstream: &Upstream,
    mut parts: Parts,
    body: Incoming,
    uri: http::Uri,
    key: &ApiKey,
    timeout: Duration,
    idle: Duration,
) -> Result<Response<ResponseBody>, ProxyError> {
    let client_side =
        parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or_else(|| ProxyError::BadRequest {
                reason: "this connection cannot be upgraded (HTTP/1.1 is required)".to_owned(),
            })?;
    // An upgrade request carries no body; drop whatever the client sent.
    drop(body);
    let protocol = parts.headers.get(header::UPGRADE).cloned();
    let mut headers = parts.headers;
    super::strip_hop_by_hop(&mut headers);
    // hyper-util's client writes the upstream's Host.
    super::remove_where(&mut headers, |name| {
        name == "host" || super::is_client_key(name)
    });
    headers.insert(header::AUTHORIZATION, key.authorization());
    // Hop-by-hop headers are gone; an upgrade needs these two back.
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(protocol) = protocol {
        headers.insert(header::UPGRADE, protocol);
    }
    let mut req = Request::new(Either::Left(http_body_util::Full::default()));
    *req.method_mut() = parts.method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;

    let mut resp = upstream::send_upgrade(upstream, req, timeout).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(super::stream_back(
            resp.map(|b| crate::upstream::UpstreamIncoming::new(b, None)),
            idle,
        ));
    }
    let upstream_side = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let (client, upstream) = match tokio::join!(client_side, upstream_side) {
            (Ok(c), Ok(u)) => (c, u),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "protocol upgrade did not complete");
                return;
            }
        };
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
    // 101 keeps its Connection/Upgrade headers: they are the point of the answer.
    let (parts, _) = resp.into_parts();
    let body = Empty::new().map_err(|never| match never {}).boxed_unsync();
    Ok(Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_needs_connection_upgrade_and_an_upgrade_header() {
        let cases = [
            (Some("Upgrade"), Some("websocket"), true),
            (Some("keep-alive, upgrade"), Some("websocket"), true),
            (Some("keep-alive"), Some("websocket"), false),
            (Some("upgrade"), None, false),
            (None, Some("websocket"), false),
            (None, None, false),
        ];
        for (connection, upgrade, want) in cases {
            let mut h = HeaderMap::new();
            if let Some(c) = connection {
                h.insert(header::CONNECTION, c.parse().unwrap());
            }
            if let Some(u) = upgrade {
                h.insert(header::UPGRADE, u.parse().unwrap());
            }
            assert_eq!(requested(&h), want, "{connection:?} {upgrade:?}");
        }
    }

    #[test]
    fn only_websocket_is_an_upgrade() {
        let cases = [
            ("WebSocket", true),
            ("websocket/13", true),
            ("h2c, websocket", true),
            ("h2c", false),
            ("HTTP/2.0", false),
            ("TLS/1.0", false),
            ("websockets", false),
            ("", false),
        ];
        for (upgrade, want) in cases {
            let mut h = HeaderMap::new();
            h.insert(
                header::CONNECTION,
                "Upgrade, HTTP2-Settings".parse().unwrap(),
            );
            h.insert(header::UPGRADE, upgrade.parse().unwrap());
            assert_eq!(requested(&h), want, "{upgrade:?}");
        }
    }
}
