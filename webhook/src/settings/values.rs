//! Value checks shared by the webhook flags (`settings`) and the per-pod annotations
//! (`annotations`). Each returns the reason a value is wrong, including the expected form;
//! the caller adds which flag or annotation it came from.
//!
//! These are syntax checks only: whether the Secret or ConfigMap exists is the kubelet's
//! business, and it reports a missing one as a pod event.

/// Image pull policy of the sidecar container, as Kubernetes spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    /// `Always`
    Always,
    /// `IfNotPresent`
    IfNotPresent,
    /// `Never`
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// `Always`, `IfNotPresent` or `Never`.
pub fn pull_policy(text: &str) -> Result<PullPolicy, String> {
    match text {
        "Always" => Ok(PullPolicy::Always),
        "IfNotPresent" => Ok(PullPolicy::IfNotPresent),
        "Never" => Ok(PullPolicy::Never),
        _ => Err("expected Always, IfNotPresent or Never".to_owned()),
    }
}

/// A TCP port, 1 to 65535, written as plain decimal digits without a sign or leading
/// zeros (`+80` and `080` are refused: Rust's integer parsing would take them).
pub fn port(text: &str) -> Result<u16, String> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && !(text.len() > 1 && text.starts_with('0'));
    match text.parse::<u16>() {
        Ok(port) if canonical && port > 0 => Ok(port),
        _ => Err(
            "expected a port number from 1 to 65535, plain digits without sign or leading \
             zeros, e.g. 8080"
                .to_owned(),
        ),
    }
}

/// `"true"` or `"false"`, exactly (as Kubernetes annotations are usually written).
pub fn boolean(text: &str) -> Result<bool, String> {
    match text {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected \"true\" or \"false\"".to_owned()),
    }
}

/// A Secret or ConfigMap name: an RFC 1123 DNS subdomain (lowercase letters, digits,
/// `-` and `.`, starting and ending with a letter or digit, at most 253 characters).
pub fn object_name(text: &str) -> Result<String, String> {
    const FORM: &str = "expected a Kubernetes object name: lowercase letters, digits, '-' and \
                        '.', starting and ending with a letter or digit, at most 253 characters";
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let body_ok = text
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if text.len() <= 253 && body_ok && edge_ok(text.chars().next()) && edge_ok(text.chars().last())
    {
        Ok(text.to_owned())
    } else {
        Err(FORM.to_owned())
    }
}

/// A key in a Secret or ConfigMap: letters, digits, `-`, `_` and `.`, at most 253
/// characters, not `.` or `..`.
pub fn data_key(text: &str) -> Result<String, String> {
    let chars_ok = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !text.is_empty() && text.len() <= 253 && chars_ok && text != "." && text != ".." {
        Ok(text.to_owned())
    } else {
        Err(
            "expected a Secret key: letters, digits, '-', '_' and '.', at most 253 characters"
                .to_owned(),
        )
    }
}

/// A container image reference: non-empty, no whitespace or control characters.
pub fn image(text: &str) -> Result<String, String> {
    let chars_ok = !text.chars().any(|c| c.is_whitespace() || c.is_control());
    if !text.is_empty() && text.len() <= 1024 && chars_ok {
        Ok(text.to_owned())
    } else {
        Err(
            "expected an image reference such as ghcr.io/holysheep/holysheep-sidecar:0.1.0"
                .to_owned(),
        )
    }
}

/// An upstream base URL, checked with the very rules the sidecar applies to `--upstream`
/// (`holysheep_common::HttpUrl`), so an admitted pod never crash-loops on it. The text is
/// kept as written: the sidecar parses it again.
pub fn upstream(text: &str) -> Result<String, String> {
    match holysheep_common::HttpUrl::upstream(text) {
        Ok(_) => Ok(text.to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// An egress proxy URL, checked with the very rules the sidecar applies to
/// `--egress-proxy` (`http://host:port`, no path, no credentials). Kept as written.
pub fn egress_proxy(text: &str) -> Result<String, String> {
    match holysheep_common::HttpUrl::egress_proxy(text) {
        Ok(_) => Ok(text.to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// Value of `holysheep/egress-proxy` that turns the webhook's default proxy off for a pod.
pub const EGRESS_PROXY_NONE: &str = "none";

/// A pod's egress proxy choice: a proxy URL, or `none` for direct connections.
pub fn egress_proxy_choice(text: &str) -> Result<Option<String>, String> {
    if text == EGRESS_PROXY_NONE {
        return Ok(None);
    }
    egress_proxy(text)
        .map(Some)
        .map_err(|reason| format!("{reason}; or \"{EGRESS_PROXY_NONE}\" to connect directly"))
}

/// Longest `--no-proxy` list accepted (an env value; NO_PROXY lists are short).
const MAX_NO_PROXY: usize = 4096;

/// A `NO_PROXY` list: comma-separated hosts, domains (`.corp.internal`), IPs or CIDRs.
/// Checked lightly, as the sidecar reads it: no whitespace or control characters, no
/// empty entry.
pub fn no_proxy(text: &str) -> Result<String, String> {
    const FORM: &str = "expected comma-separated hosts, domains, IPs or CIDRs without spaces, \
                        e.g. .corp.internal,10.0.0.0/8,localhost";
    let chars_ok = !text.chars().any(|c| c.is_whitespace() || c.is_control());
    let entries_ok = text.split(',').all(|entry| !entry.is_empty());
    if text.len() <= MAX_NO_PROXY && chars_ok && entries_ok {
        Ok(text.to_owned())
    } else {
        Err(FORM.to_owned())
    }
}

/// Largest `holysheep/budget-usd-per-day`: a typo's extra zeros are refused, not obeyed.
pub const MAX_BUDGET_USD: f64 = 1_000_000.0;

/// A daily spend limit in USD: plain decimal digits with an optional fraction of up to 6
/// digits (micro-USD), above 0 and at most [`MAX_BUDGET_USD`]. Kept as written, since the
/// sidecar parses the same text; exponents, signs and `inf` are refused here rather than
/// there, where a refusal would stop the pod.
pub fn budget_usd(text: &str) -> Result<String, String> {
    let form = format!(
        "expected US dollars as a plain decimal above 0 and at most {MAX_BUDGET_USD:.0}, \
         e.g. \"50\" or \"12.50\""
    );
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    let shape_ok = !whole.is_empty()
        && whole.len() <= 7
        && digits(whole)
        && fraction.len() <= 6
        && digits(fraction)
        && !(text.contains('.') && fraction.is_empty());
    match text.parse::<f64>() {
        Ok(usd) if shape_ok && usd > 0.0 && usd <= MAX_BUDGET_USD => Ok(text.to_owned()),
        _ => Err(form),
    }
}

/// Longest `holysheep/budget-key`; Kubernetes label values have the same bound.
const MAX_BUDGET_KEY: usize = 63;

/// The name under which replicas share a budget: letters, digits, `-`, `_` and `.`, at
/// most 63 characters. No `$`, `/` or `:`, since the webhook writes it after
/// `$(POD_NAMESPACE)/` into the sidecar's env and the sidecar into a store key.
pub fn budget_key(text: &str) -> Result<String, String> {
    let chars_ok = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !text.is_empty() && text.len() <= MAX_BUDGET_KEY && chars_ok {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "expected a budget key: letters, digits, '-', '_' and '.', at most \
             {MAX_BUDGET_KEY} characters, e.g. \"checkout\""
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::zero("0", false)]
    #[case::low("1", true)]
    #[case::high("65535", true)]
    #[case::too_high("65536", false)]
    #[case::negative("-1", false)]
    #[case::word("http", false)]
    #[case::empty("", false)]
    #[case::plus("+80", false)]
    #[case::leading_zero("080", false)]
    #[case::leading_zero_high("08080", false)]
    #[case::leading_space(" 80", false)]
    #[case::trailing_space("80 ", false)]
    #[case::far_too_high("99999999999999999999", false)]
    #[case::typical("8080", true)]
    fn ports(#[case] text: &str, #[case] ok: bool) {
        assert_eq!(port(text).is_ok(), ok, "{text}");
    }

    #[rstest]
    #[case::simple("holysheep-credentials", true)]
    #[case::dotted("a.b-c", true)]
    #[case::upper("Creds", false)]
    #[case::leading_dash("-a", false)]
    #[case::trailing_dot("a.", false)]
    #[case::underscore("a_b", false)]
    #[case::empty("", false)]
    #[case::too_long(&"a".repeat(254), false)]
    fn object_names(#[case] text: &str, #[case] ok: bool) {
        assert_eq!(object_name(text).is_ok(), ok, "{text}");
    }

    #[rstest]
    #[case::env_style("HOLYSHEEP_API_KEY", true)]
    #[case::file_style("api-key.txt", true)]
    #[case::dot(".", false)]
    #[case::slash("a/b", false)]
    #[case::empty("", false)]
    fn data_keys(#[case] text: &str, #[case] ok: bool) {
        assert_eq!(data_key(text).is_ok(), ok, "{text}");
    }

    #[rstest]
    #[case::https("https://api.holysheep.ai/v1", true)]
    #[case::http_port("http://gateway.internal:8080/v1", true)]
    #[case::ftp("ftp://x/v1", false)]
    #[case::no_scheme("api.holysheep.ai/v1", false)]
    #[case::credentials("https://user:pw@api.holysheep.ai/v1", false)]
    #[case::empty("", false)]
    #[case::space("https://a b", false)]
    #[case::query("https://api.holysheep.ai/v1?tenant=shop", false)]
    #[case::port_99999("http://a:99999/v1", false)]
    #[case::port_65616("http://127.0.0.1:65616/v1", false)]
    #[case::empty_port("http://h:/v1", false)]
    #[case::port_zero("http://h:0/v1", false)]
    #[case::fragment("https://api.holysheep.ai/v1#frag", false)]
    #[case::ipv6("http://[fd00::7]:8000/v1", true)]
    fn upstreams(#[case] text: &str, #[case] ok: bool) {
        assert_eq!(upstream(text).is_ok(), ok, "{text}");
    }

    #[rstest]
    #[case::tagged("ghcr.io/holysheep/holysheep-sidecar:0.1.0", true)]
    #[case::digest("r.io/x@sha256:abc", true)]
    #[case::empty("", false)]
    #[case::space("a b", false)]
    #[case::newline("a\nb", false)]
    fn images(#[case] text: &str, #[case] ok: bool) {
        assert_eq!(image(text).is_ok(), ok, "{text}");
    }

    #[rstest]
    #[case::plain("http://proxy.corp.internal:3128", true)]
    #[case::trailing_slash("http://proxy.corp.internal:3128/", true)]
    #[case::ip("http://10.0.0.7:3128", true)]
    #[case::https("https://proxy.corp.internal:3128", false)]
    #[case::credentials("http://user:pw@proxy.corp.internal:3128", false)]
    #[case::path("http://proxy.corp.internal:3128/x", false)]
    #[case::no_scheme("proxy.corp.internal:3128", false)]
    #[case::empty("", false)]
    #[case::none_word("none", false)]
    fn egress_proxies(#[case] text: &str, #[case] ok: bool) {
        assert_eq!(egress_proxy(text).is_ok(), ok, "{text}");
    }

    #[test]
    fn egress_proxy_choices() {
        assert_eq!(egress_proxy_choice("none"), Ok(None));
        assert_eq!(
            egress_proxy_choice("http://p:3128"),
            Ok(Some("http://p:3128".to_owned()))
        );
        let reason = egress_proxy_choice("").unwrap_err();
        assert!(reason.contains("\"none\""), "{reason}");
    }

    #[rstest]
    #[case::one("localhost", true)]
    #[case::mixed(".corp.internal,10.0.0.0/8,127.0.0.1,[::1],*", true)]
    #[case::empty("", false)]
    #[case::empty_entry("a,,b", false)]
    #[case::trailing_comma("a,", false)]
    #[case::space("a, b", false)]
    #[case::newline("a\nb", false)]
    #[case::too_long(&"a".repeat(4097), false)]
    fn no_proxy_lists(#[case] text: &str, #[case] ok: bool) {
        assert_eq!(no_proxy(text).is_ok(), ok, "{text:?}");
    }

    #[test]
    fn booleans_and_pull_policies() {
        assert_eq!(boolean("true"), Ok(true));
        assert_eq!(boolean("false"), Ok(false));
        assert!(boolean("True").is_err());
        assert_eq!(pull_policy("Never"), Ok(PullPolicy::Never));
        assert!(pull_policy("never").is_err());
    }
}
