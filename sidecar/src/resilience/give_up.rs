//! The error a request ends with when the sidecar stops trying the upstream: which limit
//! stopped it (attempts, retry budget, deadline, a body that cannot be replayed), the
//! upstream URL it went to and how many attempts were sent, with the last failure as its
//! source. Deciding when to stop is the policy's (retry.rs); this only words it.

use http::Uri;

use crate::config::Config;
use crate::error::{ProxyError, RetryLimit};
use crate::retry::GiveUpReason;

/// The error a request ends with when the policy gave up after `last` failed: which
/// limit stopped it, where it went, how many attempts were sent.
pub(super) fn gave_up(
    reason: GiveUpReason,
    config: &Config,
    uri: &Uri,
    attempts: u32,
    last: ProxyError,
) -> ProxyError {
    let limit = match reason {
        GiveUpReason::Deadline => return deadline(config, uri, attempts, Some(Box::new(last))),
        GiveUpReason::BudgetExhausted => RetryLimit::Budget {
            ratio: config.retry.budget_ratio,
        },
        GiveUpReason::NotReplayable => RetryLimit::NotReplayable,
        // The other reasons come only with an upstream response, which is handed on as
        // it is; attempts on the model are what ran out.
        GiveUpReason::AttemptsExhausted
        | GiveUpReason::RetryAfterTooLong
        | GiveUpReason::UpstreamSaidNo
        | GiveUpReason::AlreadySent => RetryLimit::Attempts {
            max: config.retry.max_attempts,
        },
    };
    ProxyError::RetriesExhausted {
        limit,
        upstream: upstream_url(uri),
        attempts,
        source: Box::new(last),
    }
}

pub(super) fn deadline(
    config: &Config,
    uri: &Uri,
    attempts: u32,
    last: Option<Box<ProxyError>>,
) -> ProxyError {
    ProxyError::DeadlineExceeded {
        after: config.retry.deadline,
        upstream: upstream_url(uri),
        attempts,
        last,
    }
}

/// `scheme://host:port/path` of an upstream request for messages: the port always shown
/// (the default one too, so there is no guessing), never the query (it may carry data).
/// The key is in a header, never in the URL.
fn upstream_url(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let host = uri.host().unwrap_or("");
    format!("{scheme}://{host}:{port}{}", uri.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_show_the_port_and_never_the_query() {
        for (uri, want) in [
            (
                "https://api.holysheep.ai/v1/chat/completions?key=sk-x",
                "https://api.holysheep.ai:443/v1/chat/completions",
            ),
            ("http://gw/v1/models", "http://gw:80/v1/models"),
            (
                "http://[::1]:8081/v1/embeddings",
                "http://[::1]:8081/v1/embeddings",
            ),
        ] {
            assert_eq!(upstream_url(&uri.parse().unwrap()), want);
        }
    }
}
