//! Reads the upstream's retry hints: `retry-after-ms` (milliseconds, as OpenAI sends
//! it), `Retry-After` (seconds or an HTTP-date, RFC 9110 §10.2.3) and `x-should-retry`.
//! Values are returned as they are; capping them is the policy's job.

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use http::header::RETRY_AFTER;

/// OpenAI's millisecond twin of `Retry-After`, preferred when present (as the SDKs do).
pub const RETRY_AFTER_MS: &str = "retry-after-ms";
/// The header the OpenAI SDKs obey to decide whether to retry.
pub const X_SHOULD_RETRY: &str = "x-should-retry";

/// The pause the upstream asked for, if it asked in a form we understand. A date in
/// the past means "now" (zero); negative, non-finite or garbled values are ignored.
pub fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let ms = header_str(headers, RETRY_AFTER_MS).and_then(non_negative_f64);
    if let Some(ms) = ms {
        return Duration::try_from_secs_f64(ms / 1000.0).ok();
    }
    let value = header_str(headers, RETRY_AFTER.as_str())?;
    if let Some(secs) = non_negative_f64(value) {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The upstream's `x-should-retry` verdict: `Some(true)`/`Some(false)` for the literal
/// values, `None` when absent or anything else.
pub fn parse_should_retry(headers: &HeaderMap) -> Option<bool> {
    match header_str(headers, X_SHOULD_RETRY)? {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn non_negative_f64(value: &str) -> Option<f64> {
    value
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        Option<Duration>,
    );

    #[test]
    fn retry_after_forms() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let cases: &[Case] = &[
            ("absent", &[], None),
            (
                "seconds",
                &[("retry-after", "1")],
                Some(Duration::from_secs(1)),
            ),
            (
                "fractional seconds",
                &[("retry-after", "0.5")],
                Some(Duration::from_millis(500)),
            ),
            (
                "padded",
                &[("retry-after", " 2 ")],
                Some(Duration::from_secs(2)),
            ),
            (
                "milliseconds",
                &[("retry-after-ms", "250")],
                Some(Duration::from_millis(250)),
            ),
            (
                "ms wins over seconds",
                &[("retry-after-ms", "20"), ("retry-after", "7")],
                Some(Duration::from_millis(20)),
            ),
            (
                "bad ms falls back to seconds",
                &[("retry-after-ms", "soon"), ("retry-after", "7")],
                Some(Duration::from_secs(7)),
            ),
            (
                "http date",
                &[("retry-after", "Sun, 06 Nov 1994 08:49:40 GMT")],
                Some(Duration::from_secs(3)),
            ),
            (
                "http date in the past",
                &[("retry-after", "Sun, 06 Nov 1994 08:00:00 GMT")],
                Some(Duration::ZERO),
            ),
            ("negative", &[("retry-after", "-3")], None),
            ("nan", &[("retry-after", "NaN")], None),
            ("infinite", &[("retry-after", "inf")], None),
            ("huge", &[("retry-after", "1e300")], None),
            ("garbage", &[("retry-after", "tomorrow")], None),
        ];
        for (name, pairs, want) in cases {
            assert_eq!(
                parse_retry_after(&headers(pairs), now),
                *want,
                "case {name}"
            );
        }
    }

    #[test]
    fn should_retry_values() {
        assert_eq!(
            parse_should_retry(&headers(&[("x-should-retry", "false")])),
            Some(false)
        );
        assert_eq!(
            parse_should_retry(&headers(&[("x-should-retry", "true")])),
            Some(true)
        );
        assert_eq!(
            parse_should_retry(&headers(&[("x-should-retry", "maybe")])),
            None
        );
        assert_eq!(parse_should_retry(&HeaderMap::new()), None);
    }
}
