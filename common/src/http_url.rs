//! [`HttpUrl`]: a validated `http://` or `https://` base URL with a host, an explicit or
//! default port in 1-65535, and no credentials, query or fragment.
//!
//! What it does: parses with the `url` crate (WHATWG rules: lowercase host, IDNA, dot
//! segments resolved) after a few checks on the raw text that the `url` crate cannot make
//! because it normalizes them away: an explicit empty port (`http://h:/v1`), a port with
//! leading zeros, a missing `//`, whitespace or a backslash, and credentials before `@`.
//! The port is checked before anything connects: a port the HTTP stack cannot represent
//! must never fall back silently to the scheme's default (and send the key elsewhere).
//!
//! What it does not do: resolve the host, or decide which flag or annotation a value came
//! from. Errors say what is wrong and the fix; the caller names the input. Each kind of
//! URL is a constructor with its own [`Rules`]: an upstream base ([`HttpUrl::upstream`])
//! and an egress proxy ([`HttpUrl::egress_proxy`]).

use std::borrow::Cow;
use std::fmt;

use http::uri::Authority;

/// HolySheep's OpenAI-compatible API: the sidecar's default upstream, and the example
/// in upstream errors.
pub const DEFAULT_UPSTREAM: &str = "https://api.holysheep.ai/v1";

/// `http` or `https`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP, default port 80.
    Http,
    /// HTTP over TLS, default port 443.
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    /// The port used when the URL names none.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

impl From<Scheme> for http::uri::Scheme {
    fn from(scheme: Scheme) -> Self {
        match scheme {
            Scheme::Http => Self::HTTP,
            Scheme::Https => Self::HTTPS,
        }
    }
}

/// A validated base URL. [`fmt::Display`] writes it in full, port included
/// (`https://api.holysheep.ai:443/v1`), so a log line shows where requests really go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    scheme: Scheme,
    /// As the `url` crate normalizes it: lowercase, IDNA, IPv6 in brackets.
    host: String,
    /// The port connected to: the explicit one or the scheme's default.
    port: u16,
    /// `host[:port]`, the port left out when it is the scheme's default (as HTTP clients
    /// write the `Host` header).
    authority: Authority,
    /// Empty or starting with `/`, never ending with `/`.
    path_prefix: String,
}

/// What is wrong with a URL. The text names the offending part; [`UrlError`] adds the fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlProblem {
    /// Not `http://...` or `https://...`.
    #[error("must start with http:// or https://")]
    Scheme,
    /// Whitespace, a control character or a backslash anywhere.
    #[error("contains {0:?}, which is not allowed in the URL")]
    Character(char),
    /// `user:password@` before the host.
    #[error(
        "carries credentials before `@`, which would be readable by anyone who can read the \
         pod spec or the logs; remove them"
    )]
    UserInfo,
    /// No host after `//`.
    #[error("has no host")]
    NoHost,
    /// A `:` after the host with nothing behind it.
    #[error(
        "has an empty port after `:`; give a port from 1-65535, or leave out the `:` for \
         the scheme's default"
    )]
    EmptyPort,
    /// Port text that is not plain digits.
    #[error("has port `{0}`, not a decimal number from 1-65535")]
    PortNotNumber(String),
    /// Digits with a leading zero (`080`).
    #[error("has port {0} with a leading zero; write the port without it")]
    PortLeadingZero(String),
    /// `0` or above 65535.
    #[error("has port {0}, outside 1-65535")]
    PortOutOfRange(String),
    /// A host that is not a DNS name or an IP address.
    #[error("has host `{0}`, which is not a DNS name or an IP address")]
    Host(String),
    /// `?...`: the client's query is appended to the base, so the base may carry none.
    #[error("carries a query string (`?...`), which the base URL may not have")]
    Query,
    /// `#...`: never sent, so almost certainly a mistake.
    #[error("carries a fragment (`#...`), which is never sent; remove it")]
    Fragment,
    /// `https://` where only plain `http://` is supported (an egress proxy).
    #[error(
        "uses https://, but the proxy is reached over plain http:// (TLS to the upstream \
         still runs end to end inside the CONNECT tunnel)"
    )]
    HttpsNotAllowed,
    /// A path where only `scheme://host[:port]` is meaningful (an egress proxy).
    #[error("has path `{0}`, but a proxy URL is only scheme, host and port")]
    PathNotAllowed(String),
    /// Refused by the `url` crate for another reason.
    #[error("is not a valid URL ({0})")]
    Invalid(url::ParseError),
}

/// Why a URL was refused: the problem and an example of a good value. The caller prefixes
/// the flag or annotation and the (redacted, see [`redact_userinfo`]) value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{problem}; use e.g. {example}")]
pub struct UrlError {
    /// What is wrong.
    pub problem: UrlProblem,
    /// A valid value of the same kind.
    pub example: &'static str,
}

/// What one kind of URL may carry, beyond what every [`HttpUrl`] must satisfy.
struct Rules {
    /// A good value, shown in errors.
    example: &'static str,
    /// Whether `https://` is allowed.
    https: bool,
    /// Whether a path other than `/` is allowed.
    path: bool,
}

/// An upstream base URL: any path prefix.
const UPSTREAM: Rules = Rules {
    example: DEFAULT_UPSTREAM,
    https: true,
    path: true,
};

/// An egress proxy: plain `http://host:port`. TLS to the upstream runs inside the
/// proxy's `CONNECT` tunnel, so the hop to the proxy itself is plain HTTP (as with
/// curl's and Go's `HTTPS_PROXY=http://...`).
const EGRESS_PROXY: Rules = Rules {
    example: "http://proxy.corp.internal:3128",
    https: false,
    path: false,
};

impl HttpUrl {
    /// Parses an upstream base URL (`https://api.holysheep.ai/v1`): any path prefix,
    /// trailing `/` trimmed.
    pub fn upstream(text: &str) -> Result<Self, UrlError> {
        Self::parse_with(text, &UPSTREAM)
    }

    /// Parses an egress proxy URL (`http://proxy.corp.internal:3128`): `http://` only,
    /// no path (a trailing `/` is fine), no credentials (they come from a Secret, never
    /// from a flag, an annotation or a log line).
    pub fn egress_proxy(text: &str) -> Result<Self, UrlError> {
        Self::parse_with(text, &EGRESS_PROXY)
    }

    fn parse_with(text: &str, rules: &Rules) -> Result<Self, UrlError> {
        let checked = parse(text).and_then(|url| {
            if !rules.https && url.is_https() {
                return Err(UrlProblem::HttpsNotAllowed);
            }
            if !rules.path && !url.path_prefix.is_empty() {
                return Err(UrlProblem::PathNotAllowed(url.path_prefix.clone()));
            }
            Ok(url)
        });
        checked.map_err(|problem| UrlError {
            problem,
            example: rules.example,
        })
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Whether connections use TLS.
    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::Https
    }

    /// The host, normalized (lowercase, IDNA, IPv6 in brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port connected to: the explicit one, else the scheme's default.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host[:port]`, without the port when it is the scheme's default.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The path, empty or starting with `/`, never ending with `/`.
    pub fn path_prefix(&self) -> &str {
        &self.path_prefix
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            scheme,
            host,
            port,
            path_prefix,
            ..
        } = self;
        write!(f, "{}://{host}:{port}{path_prefix}", scheme.as_str())
    }
}

fn parse(text: &str) -> Result<HttpUrl, UrlProblem> {
    // The `url` crate would accept `http:host`, `http:\\host` and ` http://host`, and
    // forget an empty port or leading zeros: decide those on the raw text first.
    let (scheme_text, rest) = text.split_once("://").ok_or(UrlProblem::Scheme)?;
    let scheme = if scheme_text.eq_ignore_ascii_case("http") {
        Scheme::Http
    } else if scheme_text.eq_ignore_ascii_case("https") {
        Scheme::Https
    } else {
        return Err(UrlProblem::Scheme);
    };
    if let Some(c) = text
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '\\')
    {
        return Err(UrlProblem::Character(c));
    }
    let raw_authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if raw_authority.contains('@') {
        return Err(UrlProblem::UserInfo);
    }
    let (raw_host, raw_port) = split_port(raw_authority);
    if raw_host.is_empty() {
        return Err(UrlProblem::NoHost);
    }
    let explicit_port = raw_port.map(check_port).transpose()?;

    let url = url::Url::parse(text).map_err(|e| match e {
        url::ParseError::EmptyHost => UrlProblem::NoHost,
        other => UrlProblem::Invalid(other),
    })?;
    if url.query().is_some() {
        return Err(UrlProblem::Query);
    }
    if url.fragment().is_some() {
        return Err(UrlProblem::Fragment);
    }
    let host = match url.host() {
        None => return Err(UrlProblem::NoHost),
        Some(url::Host::Domain(name)) if !is_dns_name(name) => {
            return Err(UrlProblem::Host(name.to_owned()));
        }
        Some(host) => host.to_string(),
    };
    let port = explicit_port.unwrap_or(scheme.default_port());
    let authority_text = if port == scheme.default_port() {
        host.clone()
    } else {
        format!("{host}:{port}")
    };
    let authority =
        Authority::try_from(authority_text.as_str()).map_err(|_| UrlProblem::Host(host.clone()))?;
    Ok(HttpUrl {
        scheme,
        host,
        port,
        authority,
        path_prefix: url.path().trim_end_matches('/').to_owned(),
    })
}

/// Splits `host[:port]` (the host possibly a bracketed IPv6 literal) into host and port
/// text; `None` when there is no `:` after the host.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => {
                let (host, after) = authority.split_at(end + 1);
                (host, after.strip_prefix(':'))
            }
            // Unclosed bracket: the `url` crate refuses it with its own message.
            None => (authority, None),
        };
    }
    match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    }
}

/// A port written as canonical decimal digits, 1-65535.
fn check_port(text: &str) -> Result<u16, UrlProblem> {
    if text.is_empty() {
        return Err(UrlProblem::EmptyPort);
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UrlProblem::PortNotNumber(text.to_owned()));
    }
    if text.len() > 1 && text.starts_with('0') {
        return Err(UrlProblem::PortLeadingZero(text.to_owned()));
    }
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(UrlProblem::PortOutOfRange(text.to_owned())),
    }
}

/// Letters, digits, `-`, `_` and `.`: what DNS names (and the `Host` header) carry. The
/// `url` crate lets through more (`{`, `!`, `'`...) that no resolver would find.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `text` with anything between `://` and an `@` in the authority replaced by `***`, so a
/// refused URL can be echoed in an error or a log without its credentials. Text that is
/// not such a URL comes back unchanged.
pub fn redact_userinfo(text: &str) -> Cow<'_, str> {
    let Some((scheme, rest)) = text.split_once("://") else {
        return Cow::Borrowed(text);
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => Cow::Owned(format!("{scheme}://***{}", &rest[at..])),
        None => Cow::Borrowed(text),
    }
}

#[cfg(test)]
mod tests;
