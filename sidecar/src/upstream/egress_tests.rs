//! Proxy resolution (flag, env of either case, NO_PROXY), redaction, and the auth file.

use std::collections::HashMap;

use rstest::rstest;

use super::*;

fn upstream(url: &str) -> UpstreamBase {
    url.parse().unwrap()
}

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| map.get(name).cloned()
}

/// `(proxy URL, origin)` of a proxied route, or `None` when direct.
fn proxied(route: &Route) -> Option<(String, ProxyOrigin)> {
    match route {
        Route::Proxy(p) => Some((p.display(), p.origin)),
        Route::Direct { .. } => None,
    }
}

const HTTPS_UP: &str = "https://api.holysheep.ai/v1";
const HTTP_UP: &str = "http://gateway.internal:8080/v1";

#[rstest]
#[case::nothing_set(None, HTTPS_UP, &[], None)]
#[case::https_proxy_for_https(None, HTTPS_UP, &[("HTTPS_PROXY", "http://p:3128")],
    Some(("http://p:3128", ProxyOrigin::Env("HTTPS_PROXY"))))]
#[case::lower_case(None, HTTPS_UP, &[("https_proxy", "http://p:3128")],
    Some(("http://p:3128", ProxyOrigin::Env("https_proxy"))))]
#[case::upper_case_first(None, HTTPS_UP, &[("https_proxy", "http://low:1"), ("HTTPS_PROXY", "http://up:2")],
    Some(("http://up:2", ProxyOrigin::Env("HTTPS_PROXY"))))]
#[case::http_proxy_ignored_for_https(None, HTTPS_UP, &[("HTTP_PROXY", "http://p:3128")], None)]
#[case::http_proxy_for_http(None, HTTP_UP, &[("HTTP_PROXY", "http://p:3128")],
    Some(("http://p:3128", ProxyOrigin::Env("HTTP_PROXY"))))]
#[case::lower_http_proxy(None, HTTP_UP, &[("http_proxy", "http://p:3128")],
    Some(("http://p:3128", ProxyOrigin::Env("http_proxy"))))]
#[case::https_proxy_ignored_for_http(None, HTTP_UP, &[("HTTPS_PROXY", "http://p:3128")], None)]
#[case::no_scheme_means_http(None, HTTPS_UP, &[("HTTPS_PROXY", "p:3128")],
    Some(("http://p:3128", ProxyOrigin::Env("HTTPS_PROXY"))))]
#[case::empty_is_unset(None, HTTPS_UP, &[("HTTPS_PROXY", ""), ("https_proxy", "http://p:1")],
    Some(("http://p:1", ProxyOrigin::Env("https_proxy"))))]
#[case::flag_wins(Some("http://flag:3128"), HTTPS_UP, &[("HTTPS_PROXY", "http://env:1")],
    Some(("http://flag:3128", ProxyOrigin::Flag)))]
#[case::flag_for_http(Some("http://flag:3128"), HTTP_UP, &[],
    Some(("http://flag:3128", ProxyOrigin::Flag)))]
#[case::no_proxy_elsewhere(None, HTTPS_UP, &[("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", "example.com,10.0.0.0/8")],
    Some(("http://p:1", ProxyOrigin::Env("HTTPS_PROXY"))))]
fn the_proxy_in_use(
    #[case] flag: Option<&str>,
    #[case] up: &str,
    #[case] vars: &[(&str, &str)],
    #[case] want: Option<(&str, ProxyOrigin)>,
) {
    let flag = flag.map(|f| HttpUrl::egress_proxy(f).unwrap());
    let route = resolve(flag.as_ref(), &upstream(up), env(vars)).unwrap();
    let want = want.map(|(url, origin)| (url.to_owned(), origin));
    assert_eq!(proxied(&route), want, "{route:?}");
}

#[rstest]
#[case::domain_suffix(None, &[("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", ".holysheep.ai")], "NO_PROXY")]
#[case::exact_host_lower(None, &[("HTTPS_PROXY", "http://p:1"), ("no_proxy", "api.holysheep.ai")], "no_proxy")]
#[case::star(None, &[("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", "*")], "NO_PROXY")]
#[case::applies_to_the_flag(Some("http://flag:3128"), &[("NO_PROXY", "holysheep.ai")], "NO_PROXY")]
fn no_proxy_bypasses_and_says_which(
    #[case] flag: Option<&str>,
    #[case] vars: &[(&str, &str)],
    #[case] var: &str,
) {
    let flag = flag.map(|f| HttpUrl::egress_proxy(f).unwrap());
    let route = resolve(flag.as_ref(), &upstream(HTTPS_UP), env(vars)).unwrap();
    let Route::Direct {
        why: DirectReason::Bypassed { no_proxy, .. },
    } = route
    else {
        panic!("not bypassed: {route:?}");
    };
    assert_eq!(no_proxy, var);
}

#[test]
fn no_proxy_matches_an_ip_upstream_by_cidr() {
    let vars = [("HTTP_PROXY", "http://p:1"), ("NO_PROXY", "10.0.0.0/8")];
    let route = resolve(None, &upstream("http://10.1.2.3:8080"), env(&vars)).unwrap();
    assert!(proxied(&route).is_none(), "{route:?}");
}

#[test]
fn env_credentials_are_used_but_never_shown() {
    let vars = [("HTTPS_PROXY", "http://alice:s3cr3t@p:3128")];
    let route = resolve(None, &upstream(HTTPS_UP), env(&vars)).unwrap();
    let Route::Proxy(proxy) = &route else {
        panic!("{route:?}");
    };
    assert_eq!(proxy.display(), "http://p:3128");
    // base64("alice:s3cr3t")
    assert_eq!(proxy.url_auth.as_ref().unwrap(), "Basic YWxpY2U6czNjcjN0");
    assert!(proxy.url_auth.as_ref().unwrap().is_sensitive());
    let shown = format!("{route:?} {}", proxy.display());
    assert!(
        !shown.contains("s3cr3t") && !shown.contains("YWxp"),
        "{shown}"
    );
}

#[rstest]
#[case::socks("socks5://alice:s3cr3t@p:1080")]
#[case::https_proxy_scheme("https://alice:s3cr3t@p:443")]
#[case::not_a_url("http://bad host:1")]
fn unusable_env_values_name_the_variable_and_hide_credentials(#[case] value: &str) {
    let vars = [("https_proxy", value)];
    let err = resolve(None, &upstream(HTTPS_UP), env(&vars)).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("https_proxy: "), "{text}");
    assert!(text.contains("http://host:port"), "{text}");
    assert!(!text.contains("s3cr3t"), "{text}");
}

#[test]
fn the_auth_file_sits_beside_the_key_file() {
    assert_eq!(
        auth_file_beside(Path::new("/var/run/secrets/holysheep/api-key")),
        Path::new("/var/run/secrets/holysheep/egress-proxy-auth")
    );
}

#[test]
fn the_auth_file_wins_over_the_url_and_bad_content_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(AUTH_FILE_NAME);
    let url_auth = HeaderValue::from_static("Basic dXJsOnVybA==");
    let auth = ProxyAuth::new(file.clone(), Some(url_auth.clone()));
    assert_eq!(auth.header().unwrap(), url_auth, "no file: the URL's");
    assert_eq!(auth.describe(), "from the proxy URL's userinfo");

    std::fs::write(&file, "bob:pa:ss\n").unwrap();
    auth.check();
    // base64("bob:pa:ss"): only the first colon separates the user.
    assert_eq!(auth.header().unwrap(), "Basic Ym9iOnBhOnNz");
    assert!(auth.header().unwrap().is_sensitive());
    assert!(auth.describe().contains(AUTH_FILE_NAME));

    for bad in ["no-colon", ":nouser", "two\nlines:x", ""] {
        std::fs::write(&file, bad).unwrap();
        auth.check();
        assert_eq!(auth.header().unwrap(), "Basic Ym9iOnBhOnNz", "{bad:?}");
    }
    std::fs::remove_file(&file).unwrap();
    auth.check();
    assert_eq!(
        auth.header().unwrap(),
        "Basic Ym9iOnBhOnNz",
        "briefly missing"
    );
}

#[test]
fn refusals_never_echo_the_content() {
    for bad in ["hunter2-no-colon", ":hunter2"] {
        let problem = basic_header(bad.as_bytes()).unwrap_err();
        assert!(!problem.contains("hunter2"), "{problem}");
    }
}

#[test]
fn debug_never_shows_the_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(AUTH_FILE_NAME);
    std::fs::write(&file, "bob:hunter2").unwrap();
    let auth = ProxyAuth::new(file, Some(HeaderValue::from_static("Basic dXJsOnVybA==")));
    let shown = format!("{auth:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    // base64("bob:hunter2") and the URL's value
    assert!(!shown.contains("Ym9iOmh1bnRlcjI="), "{shown}");
    assert!(!shown.contains("dXJsOnVybA=="), "{shown}");
}
