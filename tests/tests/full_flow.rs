//! The full flow, as in a pod: the webhook injects the sidecar, the kubelet's part lays
//! the example Secret and ConfigMap out as volumes, the sidecar starts from the injected
//! container's flags, and an app using the real OpenAI SDK (`async-openai`) with only the
//! env the webhook gave it (`OPENAI_BASE_URL`, placeholder `OPENAI_API_KEY`) calls it.
//!
//! The fake upstream must see the key from the Secret file (never the placeholder) and the
//! aliased models (a built-in alias and one only the example ConfigMap defines, which
//! proves `HOLYSHEEP_CONFIG` was read), and `/metrics` must count exactly the upstream's
//! tokens and their cost.
//!
//! The only rewrites are the ones a test needs: ports become ephemeral, the app's base
//! URL follows the proxy's ephemeral port, and volume paths move under a temp dir.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure should panic"
)]

use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs,
};
use holysheep_e2e::kubelet::{Mounted, Objects};
use holysheep_e2e::metrics::{scrape, value, wait_for_requests};
use holysheep_e2e::pod::{self, APP};
use holysheep_e2e::sidecar::{self, Running};
use holysheep_e2e::upstream::{COMPLETION_TOKENS, FakeOpenAi, PROMPT_TOKENS};
use holysheep_e2e::{eventually, http_client, read_workspace_file};
use holysheep_webhook::settings::Settings;

/// The key the test puts in the example Secret instead of its placeholder.
const KEY: &str = "sk-holysheep-e2e-4f1c9a";
/// Built-in price of gpt-4.1 and of gemini-2.5-flash, USD per 1M tokens.
const GPT41_PRICE: f64 = 8.0;
const FLASH25_PRICE: f64 = 2.5;

fn chat(model: &str) -> CreateChatCompletionRequest {
    let message = ChatCompletionRequestUserMessageArgs::default()
        .content("Write a one-line blurb for a ceramic teapot.")
        .build()
        .unwrap();
    CreateChatCompletionRequestArgs::default()
        .model(model)
        .messages([message.into()])
        .build()
        .unwrap()
}

/// `base` (`http://127.0.0.1:<port>/v1`, port from the pod spec) with the port the proxy
/// really got; the host and path are kept, and the port must be the flag's port.
fn follow_port(base: &str, flag_port: u16, real: std::net::SocketAddr) -> String {
    let uri: http::Uri = base.parse().unwrap();
    assert_eq!(uri.scheme_str(), Some("http"), "{base}");
    assert_eq!(uri.host(), Some("127.0.0.1"), "{base}");
    assert_eq!(
        uri.port_u16(),
        Some(flag_port),
        "{base} vs HOLYSHEEP_LISTEN"
    );
    format!("http://{real}{}", uri.path())
}

/// One injected pod, running: the fake upstream, the namespace's objects (the examples,
/// with [`KEY`] in the Secret), the kubelet's volumes, the sidecar, and the app's SDK.
struct Flow {
    upstream: FakeOpenAi,
    objects: Objects,
    mounted: Mounted,
    running: Running,
    client: Client<OpenAIConfig>,
}

async fn start_flow() -> Flow {
    let upstream = FakeOpenAi::start().await;
    let annotations = [
        ("holysheep/upstream", upstream.url()),
        ("holysheep/config", "holysheep-config".to_owned()),
    ];
    let annotations: Vec<(&str, &str)> =
        annotations.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let injected = pod::inject(&pod::opted_in_pod(&annotations), &Settings::default());

    // The namespace's objects: the examples, with a real-looking key in the Secret.
    let manifests = [
        read_workspace_file("manifests/examples/secret.yaml"),
        read_workspace_file("manifests/examples/sidecar-config.yaml"),
    ]
    .join("\n---\n");
    let mut objects = Objects::from_manifests(&manifests);
    assert!(
        objects
            .secret("holysheep-credentials", "HOLYSHEEP_API_KEY")
            .is_some(),
        "the example Secret is not the one the webhook mounts by default"
    );
    objects.set_secret("holysheep-credentials", "HOLYSHEEP_API_KEY", KEY);

    let (container, _) = pod::sidecar(&injected);
    let args = sidecar::args_of(container);
    let flag_port = args.listen.port();
    let mounted = Mounted::mount(pod::spec(&injected), container, &objects).unwrap();
    let running = Running::start(args, &mounted).await;

    // The app: the SDK configured from its injected env only.
    let app = pod::container(&injected, APP);
    let base = pod::env_value(app, "OPENAI_BASE_URL");
    let config = OpenAIConfig::new()
        .with_api_base(follow_port(base, flag_port, running.proxy_addr))
        .with_api_key(pod::env_value(app, "OPENAI_API_KEY"));
    let client = Client::build(http_client(), config);

    Flow {
        upstream,
        objects,
        mounted,
        running,
        client,
    }
}

#[tokio::test]
async fn app_sdk_through_injected_sidecar_to_upstream() {
    // Held whole: the volumes must outlive the sidecar reading them.
    let flow = start_flow().await;
    let (upstream, running, client) = (&flow.upstream, &flow.running, &flow.client);
    let first = client.chat().create(chat("gpt-4")).await.unwrap();
    assert_eq!(first.model, "gpt-4.1");
    let second = client.chat().create(chat("fast")).await.unwrap();
    assert_eq!(second.model, "gemini-2.5-flash");

    let seen = upstream.requests();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    for (request, model) in seen.iter().zip(["gpt-4.1", "gemini-2.5-flash"]) {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/v1/chat/completions");
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
        assert_eq!(request.json()["model"], model);
        let headers = format!("{:?}", request.headers);
        assert!(!headers.contains("injected-by-holysheep"), "{headers}");
    }

    let (text, scrape) = wait_for_requests(&running.admin_url("/metrics"), 2.0).await;
    let tokens = |model, kind| {
        value(
            &scrape,
            "holysheep_tokens_total",
            &[("model", model), ("type", kind)],
        )
    };
    for model in ["gpt-4.1", "gemini-2.5-flash"] {
        assert_eq!(
            tokens(model, "input"),
            Some(PROMPT_TOKENS as f64),
            "{model}"
        );
        assert_eq!(
            tokens(model, "output"),
            Some(COMPLETION_TOKENS as f64),
            "{model}"
        );
    }
    let total = (PROMPT_TOKENS + COMPLETION_TOKENS) as f64;
    for (model, price) in [
        ("gpt-4.1", GPT41_PRICE),
        ("gemini-2.5-flash", FLASH25_PRICE),
    ] {
        let cost = value(&scrape, "holysheep_cost_usd_total", &[("model", model)]).unwrap();
        let want = total * price / 1e6;
        assert!(
            (cost - want).abs() < 1e-12,
            "{model}: cost {cost} != {want}"
        );
    }
    assert!(!text.contains(KEY), "the key is in /metrics");

    flow.running.stop().await.unwrap();
}

/// Rotating the Secret and editing the ConfigMap (as the kubelet refreshes the volumes:
/// a new `..<version>` directory and an atomic `..data` swap) reach the running sidecar
/// at the injected paths, without a restart.
#[tokio::test]
async fn secret_rotation_and_configmap_edit_reach_the_running_sidecar() {
    let mut flow = start_flow().await;
    flow.client.chat().create(chat("fast")).await.unwrap();
    let metrics_url = flow.running.admin_url("/metrics");
    let (_, before) = scrape(&metrics_url).await;
    let reloads = |s: &prometheus_parse::Scrape, name| {
        value(s, name, &[("result", "success")]).unwrap_or(0.0)
    };
    let (keys_before, configs_before) = (
        reloads(&before, "holysheep_key_reloads_total"),
        reloads(&before, "holysheep_config_reloads_total"),
    );

    const NEW_KEY: &str = "sk-holysheep-e2e-rotated-77b2";
    flow.objects
        .set_secret("holysheep-credentials", "HOLYSHEEP_API_KEY", NEW_KEY);
    let config = flow
        .objects
        .config_map("holysheep-config", "config.yaml")
        .unwrap()
        .to_owned();
    let edited = config.replace("fast: gemini-2.5-flash", "fast: deepseek-v3.2");
    assert_ne!(edited, config, "the example config no longer maps fast");
    flow.objects
        .set_config_map("holysheep-config", "config.yaml", &edited);
    flow.mounted.refresh(&flow.objects).unwrap();

    eventually(
        Duration::from_secs(15),
        "key and config reloads",
        || async {
            let (_, s) = scrape(&metrics_url).await;
            reloads(&s, "holysheep_key_reloads_total") > keys_before
                && reloads(&s, "holysheep_config_reloads_total") > configs_before
        },
    )
    .await;
    let answer = flow.client.chat().create(chat("fast")).await.unwrap();
    assert_eq!(answer.model, "deepseek-v3.2");
    let last = flow.upstream.requests().pop().unwrap();
    assert_eq!(
        last.header("authorization"),
        Some(format!("Bearer {NEW_KEY}").as_str())
    );
    assert_eq!(last.json()["model"], "deepseek-v3.2");

    flow.running.stop().await.unwrap();
}
