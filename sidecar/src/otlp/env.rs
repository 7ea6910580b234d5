//! The standard `OTEL_*` variables that switch the OTLP push on and shape it, parsed once
//! at start into [`OtlpSettings`]. Errors name the variable and never echo a header value
//! (headers carry credentials). It does not send anything.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::{Scheme, Uri};

/// Base endpoint; `/v1/metrics` is appended. Setting it (or the metrics one) turns OTLP on.
pub const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// Full metrics URL, used as it is; wins over [`ENDPOINT`].
pub const METRICS_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
/// Only `http/protobuf` is supported.
pub const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// Metrics-specific protocol; wins over [`PROTOCOL`].
pub const METRICS_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL";
/// `key=value,key2=value2` (values percent-encoded) sent with every export.
pub const HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
/// Metrics-specific headers; win over [`HEADERS`].
pub const METRICS_HEADERS: &str = "OTEL_EXPORTER_OTLP_METRICS_HEADERS";
/// Milliseconds between exports.
pub const INTERVAL: &str = "OTEL_METRIC_EXPORT_INTERVAL";
/// `key=value,...` resource attributes.
pub const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
/// `service.name`, over any in [`RESOURCE_ATTRIBUTES`].
pub const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";

/// The one protocol spoken.
pub const HTTP_PROTOBUF: &str = "http/protobuf";
/// Export interval when [`INTERVAL`] is not set (the OpenTelemetry default).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// `service.name` when neither [`SERVICE_NAME`] nor [`RESOURCE_ATTRIBUTES`] name one.
pub const DEFAULT_SERVICE_NAME: &str = "holysheep-sidecar";

/// Where and how to push, from the environment.
#[derive(Debug, Clone)]
pub struct OtlpSettings {
    /// `http` or `https` URL the export is POSTed to.
    pub url: Uri,
    /// Extra request headers (e.g. an auth token); never logged.
    pub headers: HeaderMap,
    /// Time between periodic exports.
    pub interval: Duration,
    /// Resource attributes, `service.name` included.
    pub resource: Vec<(String, String)>,
}

/// A variable that cannot be used as it is.
#[derive(Debug, thiserror::Error)]
pub enum OtlpEnvError {
    /// Not `http/protobuf`.
    #[error(
        "{var}={value:?} is not supported: the sidecar pushes OTLP metrics over \
         http/protobuf only; set {var}=http/protobuf (and an http endpoint, usually port \
         4318) or unset it"
    )]
    Protocol {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// Not an http(s) URL.
    #[error(
        "{var} must be an http:// or https:// URL such as http://otel-collector:4318 \
         ({reason})"
    )]
    Endpoint {
        /// The variable.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Not a positive number of milliseconds.
    #[error("{INTERVAL} must be a positive number of milliseconds, e.g. 60000")]
    Interval,
    /// A header entry that is not `name=value` with a valid name and value.
    #[error(
        "{var}: entry {index} is not a valid `name=value` header (names are tokens, \
         values percent-encoded); fix or remove it"
    )]
    Header {
        /// The variable.
        var: &'static str,
        /// 1-based entry number (the value itself may be a secret).
        index: usize,
    },
}

impl OtlpSettings {
    /// Reads the variables through `get`; `Ok(None)` when no endpoint is set (OTLP off).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, OtlpEnvError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let url = match (get(METRICS_ENDPOINT), get(ENDPOINT)) {
            (Some(url), _) => parse_url(METRICS_ENDPOINT, url.trim())?,
            (None, Some(base)) => {
                let full = format!("{}/v1/metrics", base.trim().trim_end_matches('/'));
                parse_url(ENDPOINT, &full)?
            }
            (None, None) => return Ok(None),
        };
        for var in [METRICS_PROTOCOL, PROTOCOL] {
            if let Some(value) = get(var) {
                if value.trim() != HTTP_PROTOBUF {
                    return Err(OtlpEnvError::Protocol { var, value });
                }
                break;
            }
        }
        let interval = match get(INTERVAL) {
            None => DEFAULT_INTERVAL,
            Some(ms) => match ms.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => return Err(OtlpEnvError::Interval),
            },
        };
        let headers = match (get(METRICS_HEADERS), get(HEADERS)) {
            (Some(list), _) => parse_headers(METRICS_HEADERS, &list)?,
            (None, Some(list)) => parse_headers(HEADERS, &list)?,
            (None, None) => HeaderMap::new(),
        };
        let mut resource: Vec<(String, String)> = get(RESOURCE_ATTRIBUTES)
            .map(|list| key_values(&list).filter_map(Result::ok).collect())
            .unwrap_or_default();
        let service = get(SERVICE_NAME).or_else(|| {
            resource
                .iter()
                .find(|(k, _)| k == "service.name")
                .map(|(_, v)| v.clone())
        });
        resource.retain(|(k, _)| k != "service.name" && k != "service.version");
        resource.insert(
            0,
            (
                "service.name".to_owned(),
                service.unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned()),
            ),
        );
        resource.insert(
            1,
            (
                "service.version".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            ),
        );
        Ok(Some(Self {
            url,
            headers,
            interval,
            resource,
        }))
    }
}

fn parse_url(var: &'static str, text: &str) -> Result<Uri, OtlpEnvError> {
    let err = |reason: &str| OtlpEnvError::Endpoint {
        var,
        reason: reason.to_owned(),
    };
    let uri: Uri = text.parse().map_err(|_| err("not a URL"))?;
    match uri.scheme() {
        Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => {}
        _ => return Err(err("the scheme is not http or https")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(err("no host"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(err(
            "credentials in the URL: use OTEL_EXPORTER_OTLP_HEADERS",
        ));
    }
    Ok(uri)
}

fn parse_headers(var: &'static str, list: &str) -> Result<HeaderMap, OtlpEnvError> {
    let mut headers = HeaderMap::new();
    for (i, entry) in key_values(list).enumerate() {
        let bad = OtlpEnvError::Header { var, index: i + 1 };
        let (name, value) = entry.map_err(|()| bad)?;
        let name = HeaderName::from_bytes(name.as_bytes());
        let value = HeaderValue::from_str(&value);
        let (Ok(name), Ok(mut value)) = (name, value) else {
            return Err(OtlpEnvError::Header { var, index: i + 1 });
        };
        value.set_sensitive(true);
        headers.append(name, value);
    }
    Ok(headers)
}

/// `k=v,k2=v2` (W3C baggage style, as the OpenTelemetry variables use): trimmed keys,
/// percent-decoded values; empty entries skipped, an entry without `=` is an error.
fn key_values(list: &str) -> impl Iterator<Item = Result<(String, String), ()>> + '_ {
    list.split(',')
        .filter(|entry| !entry.trim().is_empty())
        .map(|entry| {
            let (k, v) = entry.split_once('=').ok_or(())?;
            let k = k.trim();
            if k.is_empty() {
                return Err(());
            }
            Ok((k.to_owned(), percent_decode(v.trim()).ok_or(())?))
        })
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Option<OtlpSettings>, OtlpEnvError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        OtlpSettings::from_env(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    #[test]
    fn off_without_an_endpoint() {
        assert!(env(&[]).unwrap().is_none());
        assert!(
            env(&[(INTERVAL, "1000"), (PROTOCOL, "grpc")])
                .unwrap()
                .is_none()
        );
        assert!(env(&[(ENDPOINT, " ")]).unwrap().is_none());
    }

    #[test]
    fn endpoint_gets_the_metrics_path_and_the_metrics_endpoint_is_used_as_is() {
        let s = env(&[(ENDPOINT, "http://collector:4318/")])
            .unwrap()
            .unwrap();
        assert_eq!(s.url, "http://collector:4318/v1/metrics");
        assert_eq!(s.interval, DEFAULT_INTERVAL);
        let s = env(&[
            (ENDPOINT, "http://collector:4318"),
            (METRICS_ENDPOINT, "https://push.example/otlp/metrics"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.url, "https://push.example/otlp/metrics");
    }

    #[test]
    fn other_protocols_are_refused_naming_the_variable() {
        let err = env(&[(ENDPOINT, "http://c:4317"), (PROTOCOL, "grpc")]).unwrap_err();
        assert!(err.to_string().contains(PROTOCOL), "{err}");
        let err = env(&[
            (ENDPOINT, "http://c:4318"),
            (PROTOCOL, "http/protobuf"),
            (METRICS_PROTOCOL, "http/json"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains(METRICS_PROTOCOL), "{err}");
        assert!(
            env(&[(ENDPOINT, "http://c:4318"), (PROTOCOL, "http/protobuf")])
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn bad_values_name_the_variable_and_hide_header_values() {
        let err = env(&[(ENDPOINT, "collector:4318")]).unwrap_err();
        assert!(err.to_string().contains(ENDPOINT), "{err}");
        let err = env(&[(ENDPOINT, "http://c:4318"), (INTERVAL, "0")]).unwrap_err();
        assert!(err.to_string().contains(INTERVAL), "{err}");
        let err = env(&[
            (ENDPOINT, "http://c:4318"),
            (HEADERS, "ok=1,no-equals-secret-token"),
        ])
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains(HEADERS) && text.contains("entry 2"), "{text}");
        assert!(!text.contains("secret-token"), "{text}");
    }

    #[test]
    fn headers_interval_and_resource() {
        let s = env(&[
            (ENDPOINT, "http://c:4318"),
            (HEADERS, "authorization=Bearer%20abc, x-tenant = shop"),
            (INTERVAL, "1500"),
            (
                RESOURCE_ATTRIBUTES,
                "k8s.pod.name=p-1,service.name=from-attrs",
            ),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.headers["authorization"], "Bearer abc");
        assert_eq!(s.headers["x-tenant"], "shop");
        assert_eq!(s.interval, Duration::from_millis(1500));
        let attr = |k: &str| {
            s.resource
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(attr("service.name"), Some("from-attrs"));
        assert_eq!(attr("k8s.pod.name"), Some("p-1"));
        let s = env(&[(ENDPOINT, "http://c:4318"), (SERVICE_NAME, "billing-job")])
            .unwrap()
            .unwrap();
        assert_eq!(s.resource[0], ("service.name".into(), "billing-job".into()));
    }
}
