//! The production path to an HTTPS upstream, end to end through the real binary: which
//! CAs it trusts (`--upstream-ca-file`, `SSL_CERT_FILE`, nothing extra), what a refused
//! certificate looks like to the app (a 502 naming the cause, the key never sent), and
//! the egress proxy (`--egress-proxy`, `HOLYSHEEP_EGRESS_PROXY`, `HTTPS_PROXY` either
//! case, `NO_PROXY`, Basic auth from `egress-proxy-auth`) through a real tinyproxy,
//! with HTTP/2 to the upstream chosen by ALPN inside the tunnel (past the HTTP/1.1
//! connections the config allows).
//!
//! Env vars are process-wide, so each case runs the binary as a child with an env of its
//! own. Every case asserts the answer the app got and what the upstream and the proxy saw.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure should panic"
)]

mod support;

use std::future::Future;
use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::ChatCompletionStreamOptions;
use base64::Engine as _;
use http::Version;
use rstest::rstest;
use serde_json::json;
use support::process::{Launch, SidecarProcess};
use support::tinyproxy::Tinyproxy;
use support::tls::{Alpn, CertName, TlsUpstream};
use support::{PLACEHOLDER_KEY, TEST_KEY, chat_request, closed_port, http_client};

/// Bound on one whole case: start-up of a debug binary on a busy machine, retries with
/// backoff on the refused cases, the proxy's start.
const BOUND: Duration = Duration::from_secs(120);
const PROXY_USER: &str = "holysheep-egress";
const PROXY_PASSWORD: &str = "pr0xy-pa55w0rd-never-logged";

async fn bounded<F: Future>(case: F) -> F::Output {
    tokio::time::timeout(BOUND, case)
        .await
        .expect("the case finished in time")
}

/// One chat completion through the sidecar with the placeholder key: status and JSON body.
async fn chat(sidecar: &SidecarProcess) -> (u16, serde_json::Value) {
    let response = http_client()
        .post(sidecar.url("/v1/chat/completions"))
        .bearer_auth(PLACEHOLDER_KEY)
        .json(&json!({"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {text}"));
    (status, body)
}

/// `error.message` of an OpenAI-shaped error body, with the whole body on failure.
fn error_message(body: &serde_json::Value) -> String {
    body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("not an OpenAI error body: {body}"))
        .to_owned()
}

/// Asserts a 200 chat completion whose single upstream request carried the real key.
fn assert_forwarded(status: u16, body: &serde_json::Value, upstream: &TlsUpstream) {
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"], "Hello from the fake upstream.",
        "{body}"
    );
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("Bearer {TEST_KEY}").as_str())
    );
}

/// Asserts the sidecar reached the upstream's port but no request (so no key) got there.
fn assert_key_never_sent(upstream: &TlsUpstream) {
    assert!(
        upstream.connections() >= 1,
        "the sidecar never connected to the upstream"
    );
    assert!(
        upstream.requests().is_empty(),
        "requests reached an upstream the sidecar should have refused: {:?}",
        upstream.requests()
    );
}

#[tokio::test]
async fn without_the_ca_the_answer_is_502_unknown_issuer_and_the_key_is_never_sent() {
    bounded(async {
        let upstream = TlsUpstream::start(CertName::Right, Alpn::H2AndHttp1).await;
        let sidecar =
            SidecarProcess::start(Launch::default().arg("--upstream", upstream.url()), |_| {})
                .await;

        let (status, body) = chat(&sidecar).await;

        assert_eq!(status, 502, "{body}");
        let message = error_message(&body);
        assert!(
            message.contains("UnknownIssuer") || message.contains("unknown issuer"),
            "the message does not name the untrusted CA: {message}"
        );
        assert!(!message.contains(TEST_KEY), "{message}");
        assert_key_never_sent(&upstream);
        assert!(!sidecar.output().contains(TEST_KEY));
    })
    .await;
}

#[tokio::test]
async fn upstream_ca_file_is_trusted_by_the_sdk_plain_and_streamed() {
    bounded(async {
        let upstream = TlsUpstream::start(CertName::Right, Alpn::H2AndHttp1).await;
        let sidecar = SidecarProcess::start(
            Launch::default()
                .arg("--upstream", upstream.url())
                .arg("--upstream-ca-file", &upstream.ca_file),
            |_| {},
        )
        .await;
        let config = OpenAIConfig::new()
            .with_api_base(sidecar.url("/v1"))
            .with_api_key(PLACEHOLDER_KEY);
        let client = Client::build(http_client(), config);

        let reply = client
            .chat()
            .create(chat_request("gpt-4.1", "Say hello."))
            .await
            .unwrap();
        assert_eq!(
            reply.choices[0].message.content.as_deref(),
            Some("Hello from the fake upstream.")
        );

        // Streamed, asking for the usage chunk as cost-aware SDK users do (a client that
        // does not ask never sees it: the sidecar removes the one it requested itself).
        let mut request = chat_request("gpt-4.1", "Say hello.");
        request.stream = Some(true);
        request.stream_options = Some(ChatCompletionStreamOptions {
            include_usage: Some(true),
            include_obfuscation: None,
        });
        let mut stream = client.chat().create_stream(request).await.unwrap();
        let mut text = String::new();
        let usage = support::read_chat_stream(&mut stream, &mut text).await;
        assert_eq!(text, "Hello!");
        assert_eq!(usage.map(|u| u.total_tokens), Some(14));

        let seen = upstream.requests();
        assert_eq!(seen.len(), 2, "{seen:?}");
        for request in &seen {
            assert_eq!(request.path, "/v1/chat/completions");
            assert_eq!(
                request.authorization.as_deref(),
                Some(format!("Bearer {TEST_KEY}").as_str())
            );
        }
    })
    .await;
}

#[tokio::test]
async fn ssl_cert_file_pointing_at_the_ca_is_trusted_without_the_flag() {
    bounded(async {
        let upstream = TlsUpstream::start(CertName::Right, Alpn::H2AndHttp1).await;
        let sidecar = SidecarProcess::start(
            Launch::default()
                .arg("--upstream", upstream.url())
                .env("SSL_CERT_FILE", &upstream.ca_file),
            |_| {},
        )
        .await;

        let (status, body) = chat(&sidecar).await;

        assert_forwarded(status, &body, &upstream);
    })
    .await;
}

#[tokio::test]
async fn a_certificate_for_another_name_is_502_naming_the_mismatch() {
    bounded(async {
        let upstream = TlsUpstream::start(CertName::Wrong, Alpn::H2AndHttp1).await;
        let sidecar = SidecarProcess::start(
            Launch::default()
                .arg("--upstream", upstream.url())
                .arg("--upstream-ca-file", &upstream.ca_file),
            |_| {},
        )
        .await;

        let (status, body) = chat(&sidecar).await;

        assert_eq!(status, 502, "{body}");
        let message = error_message(&body);
        assert!(
            message.contains("NotValidForName") || message.contains("not valid for"),
            "the message does not name the name mismatch: {message}"
        );
        assert_key_never_sent(&upstream);
    })
    .await;
}

/// How the sidecar is told about the egress proxy.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// This env var holds the proxy URL.
    Env(&'static str),
    /// `--egress-proxy`, while `HTTPS_PROXY` points at a closed port.
    FlagOverClosedHttpsProxy,
    /// `HOLYSHEEP_EGRESS_PROXY`, while `HTTPS_PROXY` points at a closed port.
    FlagEnvOverClosedHttpsProxy,
}

#[rstest]
#[case::https_proxy(Via::Env("HTTPS_PROXY"))]
#[case::https_proxy_lowercase(Via::Env("https_proxy"))]
#[case::egress_proxy_flag_wins(Via::FlagOverClosedHttpsProxy)]
#[case::egress_proxy_env_wins(Via::FlagEnvOverClosedHttpsProxy)]
#[tokio::test]
async fn https_upstream_is_tunnelled_through_the_egress_proxy(#[case] via: Via) {
    bounded(async {
        let upstream = TlsUpstream::start(CertName::Right, Alpn::H2AndHttp1).await;
        let proxy = Tinyproxy::start().await;
        let closed = format!("http://{}", closed_port().await);
        let launch = Launch::default()
            .arg("--upstream", upstream.url())
            .arg("--upstream-ca-file", &upstream.ca_file);
        let launch = match via {
            Via::Env(name) => launch.env(name, &proxy.url),
            Via::FlagOverClosedHttpsProxy => launch
                .arg("--egress-proxy", &proxy.url)
                .env("HTTPS_PROXY", &closed),
            Via::FlagEnvOverClosedHttpsProxy => launch
                .env("HOLYSHEEP_EGRESS_PROXY", &proxy.url)
                .env("HTTPS_PROXY", &closed),
        };
        let sidecar = SidecarProcess::start(launch, |_| {}).await;

        let (status, body) = chat(&sidecar).await;

        assert_forwarded(status, &body, &upstream);
        proxy.wait_connects(&upstream.authority(), 1).await;
    })
    .await;
}

#[tokio::test]
async fn no_proxy_naming_the_upstream_host_goes_direct() {
    bounded(async {
        let upstream = TlsUpstream::start(CertName::Right, Alpn::H2AndHttp1).await;
        let closed = format!("http://{}", closed_port().await);
        let sidecar = SidecarProcess::start(
            Launch::default()
                .arg("--upstream", upstream.url())
                .arg("--upstream-ca-file", &upstream.ca_file)
                .env("HTTPS_PROXY", &closed)
                .env("NO_PROXY", support::tls::HOST),
            |_| {},
        )
        .await;

        let (status, body) = chat(&sidecar).await;

        // The only proxy configured is a closed port: a 200 means the sidecar went direct.
        assert_forwarded(status, &body, &upstream);
    })
    .await;
}

#[tokio::test]
async fn a_proxy_demanding_auth_without_the_auth_file_is_502_naming_407() {
    bounded(async {
        let upstream = TlsUpstream::start(CertName::Right, Alpn::H2AndHttp1).await;
        let proxy = Tinyproxy::with_auth(PROXY_USER, PROXY_PASSWORD).await;
        let sidecar = SidecarProcess::start(
            Launch::default()
                .arg("--upstream", upstream.url())
                .arg("--upstream-ca-file", &upstream.ca_file)
                .arg("--egress-proxy", &proxy.url),
            |_| {},
        )
        .await;

        let (status, body) = chat(&sidecar).await;

        assert_eq!(status, 502, "{body}");
        let message = error_message(&body);
        assert!(
            message.contains("407"),
            "the message does not say the proxy wants auth: {message}"
        );
        proxy.wait_connects(&upstream.authority(), 1).await;
        assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
        assert_eq!(upstream.connections(), 0, "the proxy refused the tunnel");
    })
    .await;
}

#[tokio::test]
async fn proxy_auth_from_the_file_beside_the_key_gets_through_and_is_never_logged() {
    bounded(async {
        let upstream = TlsUpstream::start(CertName::Right, Alpn::H2AndHttp1).await;
        let proxy = Tinyproxy::with_auth(PROXY_USER, PROXY_PASSWORD).await;
        let sidecar = SidecarProcess::start(
            Launch::default()
                .arg("--upstream", upstream.url())
                .arg("--upstream-ca-file", &upstream.ca_file)
                .arg("--egress-proxy", &proxy.url),
            |dir| {
                let auth = format!("{PROXY_USER}:{PROXY_PASSWORD}");
                std::fs::write(dir.join("egress-proxy-auth"), auth).unwrap();
            },
        )
        .await;

        let (status, body) = chat(&sidecar).await;

        assert_forwarded(status, &body, &upstream);
        proxy.wait_connects(&upstream.authority(), 1).await;
        let output = sidecar.output();
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{PROXY_USER}:{PROXY_PASSWORD}"));
        assert!(!output.contains(PROXY_PASSWORD), "{output}");
        assert!(!output.contains(&basic), "{output}");
        assert!(!output.contains(TEST_KEY), "{output}");
    })
    .await;
}

/// Through the tunnel, ALPN gives HTTP/1.1 connections first (the default
/// `limits.upstream_http1_connections`), and HTTP/2 when the config sets that limit to 0
/// and the upstream offers h2.
#[rstest]
#[case::upstream_offers_h2(Alpn::H2AndHttp1, None, Version::HTTP_11)]
#[case::upstream_offers_h2_and_h2_comes_first(Alpn::H2AndHttp1, Some(0), Version::HTTP_2)]
#[case::upstream_offers_only_http1(Alpn::Http1Only, Some(0), Version::HTTP_11)]
#[tokio::test]
async fn alpn_through_the_tunnel_picks_the_upstream_http_version(
    #[case] alpn: Alpn,
    #[case] http1_connections: Option<u32>,
    #[case] want: Version,
) {
    bounded(async {
        let upstream = TlsUpstream::start(CertName::Right, alpn).await;
        let proxy = Tinyproxy::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut launch = Launch::default()
            .arg("--upstream", upstream.url())
            .arg("--upstream-ca-file", &upstream.ca_file)
            .arg("--egress-proxy", &proxy.url);
        if let Some(n) = http1_connections {
            let config = dir.path().join("config.yaml");
            std::fs::write(
                &config,
                format!("limits:\n  upstream_http1_connections: {n}\n"),
            )
            .unwrap();
            launch = launch.arg("--config", &config);
        }
        let sidecar = SidecarProcess::start(launch, |_| {}).await;

        for _ in 0..2 {
            let (status, body) = chat(&sidecar).await;
            assert_eq!(status, 200, "{body}");
        }

        proxy.wait_connects(&upstream.authority(), 1).await;
        let versions: Vec<Version> = upstream.requests().iter().map(|s| s.version).collect();
        assert_eq!(versions, vec![want, want]);
    })
    .await;
}

/// A client that trusts the CA and knows the proxy, talking to the fixtures without the
/// sidecar: proves the upstream and tinyproxy behave as the cases above assume (a tunnel
/// is logged, Basic auth is demanded and honoured, ALPN gives HTTP/2), so a failure above
/// is the sidecar's.
#[rstest]
#[case::open_proxy(false)]
#[case::proxy_with_auth(true)]
#[tokio::test]
async fn the_fixtures_serve_a_client_that_trusts_the_ca(#[case] auth: bool) {
    bounded(async {
        let upstream = TlsUpstream::start(CertName::Right, Alpn::H2AndHttp1).await;
        let proxy = if auth {
            Tinyproxy::with_auth(PROXY_USER, PROXY_PASSWORD).await
        } else {
            Tinyproxy::start().await
        };
        let client = |credentials: bool| {
            let pem = std::fs::read(&upstream.ca_file).unwrap();
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
                roots.add(cert.unwrap()).unwrap();
            }
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let mut tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            let mut via = reqwest::Proxy::https(&proxy.url).unwrap();
            if credentials {
                via = via.basic_auth(PROXY_USER, PROXY_PASSWORD);
            }
            reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .proxy(via)
                .build()
                .unwrap()
        };
        let url = format!("{}/models", upstream.url());

        if auth {
            let refused = client(false).get(&url).send().await;
            assert!(refused.is_err(), "{refused:?}");
            assert_eq!(upstream.connections(), 0);
        }
        let response = client(auth).get(&url).send().await.unwrap();

        assert_eq!(response.status(), 200);
        proxy.wait_connects(&upstream.authority(), 1).await;
        let seen = upstream.requests();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].version, Version::HTTP_2);
        assert_eq!(seen[0].path, "/v1/models");
    })
    .await;
}
