//! Which request targets are never forwarded: `CONNECT` (405) and paths with a `.` or
//! `..` segment (400), checked on the raw target before routing.
//!
//! Why: the upstream resolves dot-segments, so `/v1/../admin` would leave the `/v1/`
//! prefix the sidecar promises to forward; and `CONNECT` would make the sidecar an
//! open tunnel that spends nothing but still carries the pod's traffic.
//!
//! What it does not do: normalise paths (a refused path is the client's to fix) or look
//! at the query.

use http::{Method, Uri};

use crate::error::ProxyError;

/// Refuses what is never forwarded, before any other step.
pub(super) fn check(method: &Method, uri: &Uri) -> Result<(), ProxyError> {
    if method == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed {
            method: method.to_string(),
        });
    }
    let path = uri.path();
    if has_dot_segment(path) {
        return Err(ProxyError::DotSegmentPath {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Whether any segment of the raw path is `.` or `..`, with each dot possibly written
/// `%2e`. Encoded slashes and backslashes (`%2f`, `%5c`, `\`) also end a segment, and a
/// segment's `;params` are ignored: some servers decode or drop those before resolving
/// dot-segments, so `..%2f` and `..;x` are as dangerous as `../`.
fn has_dot_segment(path: &str) -> bool {
    let bytes = path.as_bytes();
    // Without a dot, plain or percent-encoded, there is no dot segment: the usual path
    // is settled by one memchr.
    if memchr::memchr2(b'.', b'%', bytes).is_none() {
        return false;
    }
    // Dots seen in the current segment; `None` once it holds anything else.
    let mut dots: Option<u8> = Some(0);
    let mut i = 0;
    while i <= bytes.len() {
        let (separator, dot, width) = match bytes.get(i..) {
            None | Some([]) => (true, false, 1),
            Some([b'/' | b'\\' | b';', ..]) => (true, false, 1),
            Some([b'.', ..]) => (false, true, 1),
            Some([b'%', hi, lo, ..]) => match (hi, lo.to_ascii_lowercase()) {
                (b'2', b'e') => (false, true, 3),
                (b'2', b'f') | (b'5', b'c') => (true, false, 3),
                _ => (false, false, 1),
            },
            Some(_) => (false, false, 1),
        };
        if separator {
            if matches!(dots, Some(1 | 2)) {
                return true;
            }
            // `;params` run to the next slash; the dots before them were checked above.
            dots = (bytes.get(i) != Some(&b';')).then_some(0);
        } else if dot {
            dots = dots.map(|n| n.saturating_add(1));
        } else {
            dots = None;
        }
        i += width;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_found_in_any_spelling() {
        for path in [
            "/v1/..",
            "/v1/../admin",
            "/v1/./models",
            "/v1/models/.",
            "/v1/%2e%2e/x",
            "/v1/%2E%2E/x",
            "/v1/%2E./x",
            "/v1/.%2e/x",
            "/v1/%2e/x",
            "/v1/..%2fadmin",
            "/v1/..%2Fadmin",
            "/v1/..%5cadmin",
            "/v1/..\\admin",
            "/v1/..;jsessionid=1/admin",
            "/v1/.;x/admin",
            "/v1//../x",
        ] {
            assert!(has_dot_segment(path), "{path}");
        }
    }

    #[test]
    fn dots_inside_a_segment_are_ordinary() {
        for path in [
            "/v1/models",
            "/v1/a..b",
            "/v1/...",
            "/v1/..x",
            "/v1/x..",
            "/v1/file-1.jsonl",
            "/v1/.well-known",
            "/v1/%2e%2e%2e",
            "/v1/%2ex",
            "/v1/%2",
            "/v1/%",
            "/v1/x;..",
            "/v1/",
            "",
            "/",
        ] {
            assert!(!has_dot_segment(path), "{path}");
        }
    }

    #[test]
    fn connect_is_refused_and_other_methods_pass() {
        let uri: Uri = "/v1/models".parse().unwrap();
        let err = check(&Method::CONNECT, &uri).unwrap_err();
        assert!(matches!(err, ProxyError::MethodNotAllowed { .. }), "{err}");
        for method in [Method::GET, Method::POST, Method::DELETE, Method::OPTIONS] {
            assert!(check(&method, &uri).is_ok(), "{method}");
        }
        let dotted: Uri = "/v1/%2e%2e/x?a=1".parse().unwrap();
        let err = check(&Method::GET, &dotted).unwrap_err();
        assert!(
            matches!(&err, ProxyError::DotSegmentPath { path } if path == "/v1/%2e%2e/x"),
            "{err}"
        );
    }
}
