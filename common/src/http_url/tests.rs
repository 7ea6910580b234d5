//! Named case tables for [`HttpUrl::upstream`]: what is accepted and how it is read, and
//! every refusal with the problem it reports.

use rstest::rstest;

use super::*;

#[rstest]
#[case::default_upstream(
    "https://api.holysheep.ai/v1",
    Scheme::Https,
    "api.holysheep.ai",
    443,
    "api.holysheep.ai",
    "/v1"
)]
#[case::trailing_slash(
    "https://api.holysheep.ai/v1/",
    Scheme::Https,
    "api.holysheep.ai",
    443,
    "api.holysheep.ai",
    "/v1"
)]
#[case::no_path(
    "https://api.holysheep.ai",
    Scheme::Https,
    "api.holysheep.ai",
    443,
    "api.holysheep.ai",
    ""
)]
#[case::root_path("http://127.0.0.1:9/", Scheme::Http, "127.0.0.1", 9, "127.0.0.1:9", "")]
#[case::http_port(
    "http://gateway.internal:8080/v1",
    Scheme::Http,
    "gateway.internal",
    8080,
    "gateway.internal:8080",
    "/v1"
)]
#[case::lowest_port("http://h:1/v1", Scheme::Http, "h", 1, "h:1", "/v1")]
#[case::highest_port("http://h:65535/v1", Scheme::Http, "h", 65535, "h:65535", "/v1")]
#[case::explicit_default_port(
    "https://api.holysheep.ai:443/v1",
    Scheme::Https,
    "api.holysheep.ai",
    443,
    "api.holysheep.ai",
    "/v1"
)]
#[case::http_on_443("http://h:443/v1", Scheme::Http, "h", 443, "h:443", "/v1")]
#[case::ipv6(
    "http://[fd00::7]:8000/v1",
    Scheme::Http,
    "[fd00::7]",
    8000,
    "[fd00::7]:8000",
    "/v1"
)]
#[case::ipv6_default_port("http://[::1]/v1", Scheme::Http, "[::1]", 80, "[::1]", "/v1")]
#[case::uppercase(
    "HTTPS://API.HolySheep.ai/v1",
    Scheme::Https,
    "api.holysheep.ai",
    443,
    "api.holysheep.ai",
    "/v1"
)]
#[case::service_dns(
    "http://llm-gateway.ai.svc:8000/openai/v1",
    Scheme::Http,
    "llm-gateway.ai.svc",
    8000,
    "llm-gateway.ai.svc:8000",
    "/openai/v1"
)]
#[case::dot_segments("http://h:8000/a/../v1", Scheme::Http, "h", 8000, "h:8000", "/v1")]
#[case::idn(
    "https://bücher.example/v1",
    Scheme::Https,
    "xn--bcher-kva.example",
    443,
    "xn--bcher-kva.example",
    "/v1"
)]
fn accepted(
    #[case] text: &str,
    #[case] scheme: Scheme,
    #[case] host: &str,
    #[case] port: u16,
    #[case] authority: &str,
    #[case] path_prefix: &str,
) {
    let url = HttpUrl::upstream(text).unwrap();
    assert_eq!(url.scheme(), scheme, "{text}");
    assert_eq!(url.is_https(), scheme == Scheme::Https, "{text}");
    assert_eq!(url.host(), host, "{text}");
    assert_eq!(url.port(), port, "{text}");
    assert_eq!(url.authority().as_str(), authority, "{text}");
    assert_eq!(url.path_prefix(), path_prefix, "{text}");
}

#[rstest]
#[case::out_of_range_65616("http://127.0.0.1:65616/v1", UrlProblem::PortOutOfRange("65616".into()))]
#[case::out_of_range_99999("http://a:99999/v1", UrlProblem::PortOutOfRange("99999".into()))]
#[case::out_of_range_huge("http://a:99999999999999999999/v1", UrlProblem::PortOutOfRange("99999999999999999999".into()))]
#[case::port_zero("http://a:0/v1", UrlProblem::PortOutOfRange("0".into()))]
#[case::empty_port("http://h:/v1", UrlProblem::EmptyPort)]
#[case::empty_port_no_path("http://h:", UrlProblem::EmptyPort)]
#[case::empty_port_ipv6("http://[::1]:/v1", UrlProblem::EmptyPort)]
#[case::ipv6_port_out_of_range("http://[::1]:70000/v1", UrlProblem::PortOutOfRange("70000".into()))]
#[case::port_plus("http://h:+80/v1", UrlProblem::PortNotNumber("+80".into()))]
#[case::port_word("http://h:http/v1", UrlProblem::PortNotNumber("http".into()))]
#[case::port_leading_zero("http://h:080/v1", UrlProblem::PortLeadingZero("080".into()))]
#[case::ftp("ftp://x/v1", UrlProblem::Scheme)]
#[case::no_scheme("api.holysheep.ai/v1", UrlProblem::Scheme)]
#[case::path_only("/v1", UrlProblem::Scheme)]
#[case::not_a_url("not a url", UrlProblem::Scheme)]
#[case::empty("", UrlProblem::Scheme)]
#[case::single_slash("http:/api.holysheep.ai/v1", UrlProblem::Scheme)]
#[case::no_slashes("http:api.holysheep.ai", UrlProblem::Scheme)]
#[case::leading_space(" https://api.holysheep.ai/v1", UrlProblem::Scheme)]
#[case::trailing_space("https://api.holysheep.ai/v1 ", UrlProblem::Character(' '))]
#[case::inner_space("https://a b/v1", UrlProblem::Character(' '))]
#[case::newline("https://a/v1\n", UrlProblem::Character('\n'))]
#[case::tab("https://a/\tv1", UrlProblem::Character('\t'))]
#[case::backslash("http://a\\v1", UrlProblem::Character('\\'))]
#[case::userinfo("https://user:pw@api.holysheep.ai/v1", UrlProblem::UserInfo)]
#[case::user_only("https://user@api.holysheep.ai/v1", UrlProblem::UserInfo)]
#[case::empty_userinfo("https://@api.holysheep.ai/v1", UrlProblem::UserInfo)]
#[case::no_host("http:///v1", UrlProblem::NoHost)]
#[case::port_without_host("http://:8080/v1", UrlProblem::NoHost)]
#[case::query("https://api.holysheep.ai/v1?tenant=shop", UrlProblem::Query)]
#[case::empty_query("https://api.holysheep.ai/v1?", UrlProblem::Query)]
#[case::fragment("https://api.holysheep.ai/v1#frag", UrlProblem::Fragment)]
#[case::empty_fragment("https://api.holysheep.ai/v1#", UrlProblem::Fragment)]
#[case::odd_host("http://a{b}/v1", UrlProblem::Host("a{b}".into()))]
#[case::bad_ipv6(
    "http://[fd00::zz]/v1",
    UrlProblem::Invalid(url::ParseError::InvalidIpv6Address)
)]
#[case::unclosed_ipv6(
    "http://[fd00::7/v1",
    UrlProblem::Invalid(url::ParseError::InvalidIpv6Address)
)]
fn refused(#[case] text: &str, #[case] problem: UrlProblem) {
    let err = HttpUrl::upstream(text).unwrap_err();
    assert_eq!(err.problem, problem, "{text}");
    let message = err.to_string();
    assert!(
        message.ends_with("; use e.g. https://api.holysheep.ai/v1"),
        "{text}: {message}"
    );
}

#[test]
fn message_names_the_port_and_the_range() {
    let err = HttpUrl::upstream("http://a:99999/v1").unwrap_err();
    assert_eq!(
        err.to_string(),
        "has port 99999, outside 1-65535; use e.g. https://api.holysheep.ai/v1"
    );
}

#[rstest]
#[case::default_port_shown("https://api.holysheep.ai/v1", "https://api.holysheep.ai:443/v1")]
#[case::http_default_port_shown("http://127.0.0.1/v1", "http://127.0.0.1:80/v1")]
#[case::explicit_port("http://127.0.0.1:4000/v1/", "http://127.0.0.1:4000/v1")]
#[case::no_path("https://api.holysheep.ai", "https://api.holysheep.ai:443")]
#[case::ipv6("http://[fd00::7]:8000/v1", "http://[fd00::7]:8000/v1")]
fn display_is_the_full_url_with_its_port(#[case] text: &str, #[case] shown: &str) {
    assert_eq!(HttpUrl::upstream(text).unwrap().to_string(), shown);
}

#[test]
fn http_scheme_conversion() {
    assert_eq!(
        http::uri::Scheme::from(Scheme::Http),
        http::uri::Scheme::HTTP
    );
    assert_eq!(
        http::uri::Scheme::from(Scheme::Https),
        http::uri::Scheme::HTTPS
    );
}

#[rstest]
#[case::user_password("https://user:pw@h/v1", "https://***@h/v1")]
#[case::user_only("http://token@h:8080", "http://***@h:8080")]
#[case::at_in_password("http://u:p@ss@h/v1", "http://***@h/v1")]
#[case::at_in_path_kept("https://h/v1/@me", "https://h/v1/@me")]
#[case::at_in_query_kept("https://h/v1?a=@b", "https://h/v1?a=@b")]
#[case::no_userinfo("https://api.holysheep.ai/v1", "https://api.holysheep.ai/v1")]
#[case::not_a_url("64Mi", "64Mi")]
fn redaction(#[case] text: &str, #[case] redacted: &str) {
    assert_eq!(redact_userinfo(text), redacted);
}

#[rstest]
#[case::host_port("http://proxy.corp.internal:3128", "proxy.corp.internal", 3128)]
#[case::trailing_slash("http://10.0.0.5:8080/", "10.0.0.5", 8080)]
#[case::default_port("http://proxy", "proxy", 80)]
fn egress_proxy_accepted(#[case] text: &str, #[case] host: &str, #[case] port: u16) {
    let url = HttpUrl::egress_proxy(text).expect("accepted");
    assert_eq!(
        (url.host(), url.port(), url.path_prefix()),
        (host, port, "")
    );
}

#[rstest]
#[case::https("https://proxy:3128", UrlProblem::HttpsNotAllowed)]
#[case::path("http://proxy:3128/v1", UrlProblem::PathNotAllowed("/v1".into()))]
#[case::credentials("http://user:pw@proxy:3128", UrlProblem::UserInfo)]
#[case::socks("socks5://proxy:1080", UrlProblem::Scheme)]
#[case::bad_port("http://proxy:99999", UrlProblem::PortOutOfRange("99999".into()))]
fn egress_proxy_refused(#[case] text: &str, #[case] problem: UrlProblem) {
    let err = HttpUrl::egress_proxy(text).expect_err("refused");
    assert_eq!(err.problem, problem);
    assert!(
        err.to_string().contains("http://proxy.corp.internal:3128"),
        "{err}"
    );
}
