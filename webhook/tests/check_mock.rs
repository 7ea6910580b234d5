//! `holysheep-webhook check` against the fake kube-apiserver on 127.0.0.1:0, through the
//! real binary and a kubeconfig written by the test: every finding (namespace not
//! labelled or not selected, opted out by label, created before the webhook or while it
//! was down, annotation on the workload only, stale stamps grouped by workload, webhook
//! replicas, caBundle and certificate expiry), the `-o json` shape, the exit codes, clear
//! errors for a missing kubeconfig and an RBAC refusal, and that only GETs are sent.
//!
//! The webhook objects are the shipped manifests (`manifests/base/`), so `check` is tested
//! on the Deployment args and selectors users really have.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] fns fail loudly"
)]

#[path = "bootstrap_mock/fake_apiserver.rs"]
#[allow(
    dead_code,
    reason = "shared with the bootstrap tests, which use all of it"
)]
mod fake_apiserver;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fake_apiserver::FakeApiServer;
use holysheep_certs::{Ca, ServingCert, bundle, generate_ca};
use holysheep_webhook::settings::Settings;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const NS: &str = "holysheep-system";
const DAY: Duration = Duration::from_secs(86_400);
/// The sidecar image of the shipped Deployment (`--sidecar-image`).
const SHIPPED_IMAGE: &str = "ghcr.io/holysheep/holysheep-sidecar:0.1.0";

fn ago(days: i64) -> String {
    (OffsetDateTime::now_utc() - time::Duration::days(days))
        .replace_nanosecond(0)
        .unwrap()
        .format(&Rfc3339)
        .unwrap()
}

fn manifest(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/base")
        .join(name);
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn namespace(name: &str, labelled: bool) -> Value {
    let mut labels = json!({"kubernetes.io/metadata.name": name});
    if labelled {
        labels["holysheep-injection"] = json!("enabled");
    }
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": labels, "creationTimestamp": ago(100)}})
}

/// The webhook as installed 10 days ago (configuration) and 5 days ago (Deployment),
/// Available for the last 2 days, with `ready` of 2 replicas ready.
struct Webhook {
    ca: Ca,
    serving: ServingCert,
    ca_bundle_pem: String,
    ready: i32,
}

impl Webhook {
    fn healthy() -> Self {
        let ca = generate_ca("holysheep-webhook-ca", 3650 * DAY).unwrap();
        let serving = ca
            .issue_serving("holysheep-webhook", NS, 365 * DAY)
            .unwrap();
        let ca_bundle_pem = ca.cert_pem().to_owned();
        Self {
            ca,
            serving,
            ca_bundle_pem,
            ready: 2,
        }
    }

    fn install(&self, server: &FakeApiServer) {
        let mut config = manifest("mutatingwebhookconfiguration.yaml");
        config["metadata"]["creationTimestamp"] = json!(ago(10));
        config["webhooks"][0]["clientConfig"]["caBundle"] =
            json!(bundle::encode(&self.ca_bundle_pem));
        server.insert_webhook_config(config);
        let mut deployment = manifest("deployment.yaml");
        deployment["metadata"]["creationTimestamp"] = json!(ago(5));
        deployment["status"] = json!({
            "replicas": 2, "readyReplicas": self.ready,
            "conditions": [{"type": "Available", "status": "True",
                            "lastTransitionTime": ago(2), "reason": "MinimumReplicasAvailable"}]
        });
        server.insert_object("deployments", deployment);
        let e = |s: &str| bundle::encode(s);
        server.insert_secret(
            NS,
            "holysheep-webhook-tls",
            json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                   "metadata": {"name": "holysheep-webhook-tls", "namespace": NS},
                   "data": {"ca.crt": e(self.ca.cert_pem()), "ca.key": e(self.ca.key_pem()),
                            "tls.crt": e(self.serving.cert_pem()), "tls.key": e(self.serving.key_pem())}}),
        );
        server.insert_object("namespaces", namespace(NS, false));
    }
}

fn owner(kind: &str, name: &str) -> Value {
    let api_version = if kind == "Job" { "batch/v1" } else { "apps/v1" };
    json!([{"apiVersion": api_version, "kind": kind, "name": name, "uid": format!("uid-{name}"), "controller": true}])
}

/// A pod annotated for injection, created `days` ago; injected by the real mutation with
/// `injected_with` when given.
fn pod(
    ns: &str,
    name: &str,
    days: i64,
    owner: Option<Value>,
    injected_with: Option<&Settings>,
) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": ago(days),
                     "labels": {"app": name}, "annotations": {"holysheep/inject": "true"}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
        "status": {"phase": "Running"}
    });
    if let Some(owner) = owner {
        pod["metadata"]["ownerReferences"] = owner;
    }
    if let Some(settings) = injected_with {
        let typed = serde_json::from_value(pod.clone()).unwrap();
        let patch = holysheep_webhook::mutation::mutate(&typed, settings)
            .unwrap()
            .unwrap();
        json_patch::patch(&mut pod, &patch).unwrap();
    }
    pod
}

fn replica_set(ns: &str, name: &str, deployment: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
           "metadata": {"name": name, "namespace": ns, "ownerReferences": owner("Deployment", deployment)},
           "spec": {"selector": {}}})
}

fn workload(kind: &str, ns: &str, name: &str, on_self: bool, on_template: bool) -> Value {
    let inject = json!({"holysheep/inject": "true"});
    let mut meta = json!({"name": name, "namespace": ns});
    if on_self {
        meta["annotations"] = inject.clone();
    }
    let mut template =
        json!({"metadata": {}, "spec": {"containers": [{"name": "app", "image": "app:1"}]}});
    if on_template {
        template["metadata"]["annotations"] = inject;
    }
    let api_version = if kind == "Job" { "batch/v1" } else { "apps/v1" };
    json!({"apiVersion": api_version, "kind": kind, "metadata": meta,
           "spec": {"selector": {}, "template": template}})
}

fn shipped() -> Settings {
    Settings {
        image: SHIPPED_IMAGE.to_owned(),
        ..Settings::default()
    }
}

fn kubeconfig(dir: &Path, server: &FakeApiServer) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters: [{{name: fake, cluster: {{server: 'http://{}'}}}}]\n\
             users: [{{name: fake, user: {{token: not-a-real-token}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: shop}}}},\n\
                        {{name: other, context: {{cluster: fake, user: fake, namespace: plain}}}}]\n",
            server.addr
        ),
    )
    .unwrap();
    path
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", self.stdout, self.stderr))
    }
}

/// Runs the binary with `args`, `KUBECONFIG` = `kubeconfig`, HOME in a temp dir and no
/// in-cluster env, bounded to 60 s.
async fn check(kubeconfig: &Path, args: &[&str]) -> Run {
    let home = kubeconfig.parent().unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_holysheep-webhook"))
        .arg("check")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("check finished within 60 s")
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

fn assert_only_gets(server: &FakeApiServer) {
    let requests = server.requests();
    assert!(!requests.is_empty());
    let writes: Vec<_> = requests.iter().filter(|r| !r.starts_with("GET ")).collect();
    assert!(writes.is_empty(), "check wrote: {writes:?}");
    let methods: Vec<_> = server
        .lock()
        .queries
        .iter()
        .filter(|(m, _)| m != http::Method::GET)
        .map(|(m, q)| format!("{m} {q}"))
        .collect();
    assert!(methods.is_empty(), "check sent: {methods:?}");
}

/// One namespace `shop`, one Deployment `web` whose pod the shipped webhook injected.
async fn healthy_cluster() -> FakeApiServer {
    let server = FakeApiServer::start(None).await;
    Webhook::healthy().install(&server);
    server.insert_object("namespaces", namespace("shop", true));
    server.insert_object(
        "deployments",
        workload("Deployment", "shop", "web", false, true),
    );
    server.insert_object("replicasets", replica_set("shop", "web-7f9c", "web"));
    server.insert_object(
        "pods",
        pod(
            "shop",
            "web-7f9c-a",
            1,
            Some(owner("ReplicaSet", "web-7f9c")),
            Some(&shipped()),
        ),
    );
    server
}

#[tokio::test]
async fn a_healthy_fleet_exits_0_with_only_gets() {
    let server = healthy_cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &server);

    let run = check(&config, &["-A", "-o", "json"]).await;

    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["apiVersion"], "holysheep.ai/check/v1");
    assert_eq!(report["needsAction"], false);
    assert_eq!(report["namespace"], Value::Null);
    let webhook = &report["webhook"];
    assert_eq!(webhook["problems"], json!([]));
    assert_eq!(webhook["deployment"]["readyReplicas"], 2);
    assert_eq!(webhook["deployment"]["desiredReplicas"], 2);
    assert_eq!(webhook["configuration"]["caBundle"], "matches");
    let serving_days = webhook["tlsSecret"]["servingDaysLeft"].as_i64().unwrap();
    assert!((363..=365).contains(&serving_days), "{serving_days}");
    assert!(webhook["tlsSecret"]["caDaysLeft"].as_i64().unwrap() > 3600);
    assert_eq!(webhook["expected"]["sidecarImage"], SHIPPED_IMAGE);
    assert_eq!(webhook["expected"]["sidecarVersion"], "0.1.0");
    assert_eq!(
        report["namespaces"],
        json!([{"name": "shop", "selected": true, "annotatedPods": 1, "injectedPods": 1, "stalePods": 0}])
    );
    for section in ["notInjected", "workloadOnly", "stale"] {
        assert_eq!(report[section], json!([]), "{section}");
    }
    assert_only_gets(&server);

    let text = check(&config, &["-A"]).await;
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout.contains("2/2 replicas ready"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("caBundle matches"), "{}", text.stdout);
    assert!(
        text.stdout.contains("nothing needs action"),
        "{}",
        text.stdout
    );
    assert_only_gets(&server);
}

#[tokio::test]
async fn every_finding_is_reported_with_its_reason_and_fix_and_exit_1() {
    let server = healthy_cluster().await;
    for (name, labelled) in [("plain", false), ("kube-system", true)] {
        server.insert_object("namespaces", namespace(name, labelled));
    }
    // Annotated pods without the sidecar, one per reason.
    let not_injected = [
        pod("plain", "plain-pod", 1, None, None),
        pod("kube-system", "sys-pod", 1, None, None),
        pod("shop", "early-pod", 20, None, None),
        pod("shop", "reinstalled-pod", 7, None, None),
        pod("shop", "downtime-pod", 3, None, None),
        pod("shop", "unknown-pod", 1, None, None),
    ];
    for p in not_injected {
        server.insert_object("pods", p);
    }
    let mut opted_out = pod("shop", "opted-out-pod", 1, None, None);
    opted_out["metadata"]["labels"]["holysheep-injection"] = json!("disabled");
    server.insert_object("pods", opted_out);
    // A finished Job pod is not judged.
    let mut done = pod("shop", "done-pod", 1, Some(owner("Job", "batch")), None);
    done["status"]["phase"] = json!("Succeeded");
    server.insert_object("pods", done);
    // Annotation on the workload only.
    server.insert_object(
        "deployments",
        workload("Deployment", "shop", "self-only", true, false),
    );
    server.insert_object(
        "statefulsets",
        workload("StatefulSet", "shop", "db", true, false),
    );
    server.insert_object("jobs", workload("Job", "shop", "once", true, false));
    server.insert_object(
        "daemonsets",
        workload("DaemonSet", "shop", "agent", true, true),
    );
    // "false" on the workload asks for nothing: not a finding.
    let mut says_false = workload("Deployment", "shop", "says-false", true, false);
    says_false["metadata"]["annotations"]["holysheep/inject"] = json!("false");
    server.insert_object("deployments", says_false);
    // Stale: two pods of Deployment `old` on an older sidecar, one StatefulSet pod on the
    // same version with other settings.
    let older = Settings {
        image: "ghcr.io/holysheep/holysheep-sidecar:0.0.9".to_owned(),
        ..Settings::default()
    };
    server.insert_object("replicasets", replica_set("shop", "old-5d4b", "old"));
    for name in ["old-5d4b-a", "old-5d4b-b"] {
        server.insert_object(
            "pods",
            pod(
                "shop",
                name,
                30,
                Some(owner("ReplicaSet", "old-5d4b")),
                Some(&older),
            ),
        );
    }
    let other_settings = Settings {
        egress_proxy: Some("http://proxy:3128".to_owned()),
        ..shipped()
    };
    server.insert_object(
        "pods",
        pod(
            "shop",
            "db-0",
            30,
            Some(owner("StatefulSet", "db")),
            Some(&other_settings),
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &server);

    let run = check(&config, &["-A", "-o", "json"]).await;

    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["needsAction"], true);
    let by_pod: BTreeMap<&str, &Value> = report["notInjected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["pod"].as_str().unwrap(), f))
        .collect();
    let reasons: BTreeMap<&str, &str> = by_pod
        .iter()
        .map(|(pod, f)| (*pod, f["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        reasons,
        BTreeMap::from([
            ("plain-pod", "namespace-not-labelled"),
            ("sys-pod", "namespace-not-selected"),
            ("opted-out-pod", "opted-out-by-label"),
            ("early-pod", "created-before-webhook"),
            ("reinstalled-pod", "created-before-webhook"),
            ("downtime-pod", "created-while-webhook-unavailable"),
            ("unknown-pod", "unknown"),
        ])
    );
    let plain = by_pod["plain-pod"];
    assert_eq!(
        plain["workload"],
        json!({"kind": "Pod", "name": "plain-pod"})
    );
    let pods: Vec<&str> = report["notInjected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["pod"].as_str().unwrap())
        .collect();
    assert_eq!(
        pods,
        [
            "sys-pod",
            "plain-pod",
            "downtime-pod",
            "early-pod",
            "opted-out-pod",
            "reinstalled-pod",
            "unknown-pod"
        ],
        "sorted by namespace and pod"
    );
    assert!(
        plain["fix"]
            .as_str()
            .unwrap()
            .contains("kubectl label namespace plain holysheep-injection=enabled"),
        "{plain}"
    );
    let evidence = |pod: &str| {
        by_pod[pod]["evidence"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        evidence("early-pod")
            .contains("MutatingWebhookConfiguration holysheep-sidecar-injector created"),
        "{}",
        evidence("early-pod")
    );
    assert!(
        evidence("reinstalled-pod")
            .contains("Deployment holysheep-system/holysheep-webhook created"),
        "{}",
        evidence("reinstalled-pod")
    );
    assert!(
        evidence("downtime-pod").contains("Available=True since"),
        "{}",
        evidence("downtime-pod")
    );
    assert!(by_pod["unknown-pod"]["evidence"].is_null());

    let only: Vec<String> = report["workloadOnly"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            format!(
                "{}/{}",
                f["workload"]["kind"].as_str().unwrap(),
                f["workload"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(only, ["Deployment/self-only", "Job/once", "StatefulSet/db"]);
    let fix = report["workloadOnly"][0]["fix"].as_str().unwrap();
    assert!(
        fix.starts_with("kubectl patch deployment/self-only -n shop"),
        "{fix}"
    );

    let stale = report["stale"].as_array().unwrap();
    assert_eq!(stale.len(), 2, "{stale:?}");
    let old = stale
        .iter()
        .find(|s| s["workload"]["name"] == "old")
        .unwrap();
    assert_eq!(old["workload"]["kind"], "Deployment");
    assert_eq!(old["fix"], "kubectl rollout restart deployment/old -n shop");
    let pods: Vec<&str> = old["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(pods, ["old-5d4b-a", "old-5d4b-b"]);
    assert_eq!(old["pods"][0]["sidecarVersion"], "0.0.9");
    assert_eq!(old["pods"][0]["expectedSidecarVersion"], "0.1.0");
    let db = stale
        .iter()
        .find(|s| s["workload"]["name"] == "db")
        .unwrap();
    assert_eq!(db["fix"], "kubectl rollout restart statefulset/db -n shop");
    assert_eq!(
        db["pods"][0]["sidecarVersion"],
        db["pods"][0]["expectedSidecarVersion"]
    );
    assert_ne!(
        db["pods"][0]["injectedConfig"],
        db["pods"][0]["expectedInjectedConfig"]
    );

    let namespaces = report["namespaces"].as_array().unwrap();
    let shop = namespaces.iter().find(|n| n["name"] == "shop").unwrap();
    assert_eq!(shop["stalePods"], 3);
    assert_eq!(shop["injectedPods"], 4);
    let system = namespaces
        .iter()
        .find(|n| n["name"] == "kube-system")
        .unwrap();
    assert_eq!(system["selected"], false);
    assert!(
        namespaces.iter().all(|n| n["name"] != "plain"),
        "only labelled namespaces"
    );
    assert_only_gets(&server);

    let text = check(&config, &["-A"]).await;
    assert_eq!(text.code, 1);
    for want in [
        "kubectl rollout restart deployment/old -n shop",
        "namespace-not-labelled",
        "created-before-webhook",
        "deployment/self-only",
        "finding(s) need action",
    ] {
        assert!(
            text.stdout.contains(want),
            "{want} missing:\n{}",
            text.stdout
        );
    }
}

#[tokio::test]
async fn one_namespace_reads_only_that_namespace() {
    let server = healthy_cluster().await;
    server.insert_object("namespaces", namespace("plain", false));
    server.insert_object("pods", pod("plain", "plain-pod", 1, None, None));
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &server);

    // The kubeconfig context's namespace (shop) by default, like kubectl.
    for args in [&["-o", "json"][..], &["-n", "shop", "-o", "json"]] {
        server.clear_log();
        let run = check(&config, args).await;
        assert_eq!(run.code, 0, "{args:?}: {}\n{}", run.stdout, run.stderr);
        assert_eq!(run.json()["namespace"], "shop");
        let requests = server.requests();
        assert!(
            requests
                .iter()
                .any(|r| r.starts_with("GET /api/v1/namespaces/shop/pods ")),
            "{requests:?}"
        );
        assert!(
            !requests.iter().any(|r| r.starts_with("GET /api/v1/pods ")),
            "{requests:?}"
        );
    }
    let run = check(&config, &["-n", "plain", "-o", "json"]).await;
    assert_eq!(run.code, 1);
    assert_eq!(run.json()["notInjected"][0]["pod"], "plain-pod");
    // --context picks another context (and its namespace); --kubeconfig beats KUBECONFIG.
    let run = check(&config, &["--context", "other", "-o", "json"]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.json()["namespace"], "plain");
    let flag = config.to_str().unwrap();
    let nowhere = dir.path().join("no-such-kubeconfig");
    let run = check(
        &nowhere,
        &["--kubeconfig", flag, "-n", "shop", "-o", "json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = check(&config, &["-n", "nope"]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("namespace \"nope\" not found"),
        "{}",
        run.stderr
    );
    assert_only_gets(&server);
}

#[tokio::test]
async fn an_unhealthy_webhook_is_a_finding() {
    let server = FakeApiServer::start(None).await;
    let mut webhook = Webhook::healthy();
    webhook.ready = 1;
    webhook.serving = webhook
        .ca
        .issue_serving("holysheep-webhook", NS, 5 * DAY)
        .unwrap();
    // The caBundle trusts another CA than the one in the Secret.
    let other = generate_ca("someone-else", 3650 * DAY).unwrap();
    webhook.ca_bundle_pem = other.cert_pem().to_owned();
    webhook.install(&server);
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &server);

    let run = check(&config, &["-A", "-o", "json"]).await;

    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    let codes: Vec<&str> = report["webhook"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        [
            "replicas-not-ready",
            "ca-bundle-mismatch",
            "certificate-expiring"
        ]
    );
    assert_eq!(report["webhook"]["configuration"]["caBundle"], "differs");
    let days = report["webhook"]["tlsSecret"]["servingDaysLeft"]
        .as_i64()
        .unwrap();
    assert!((4..=5).contains(&days), "{days}");
    let text = check(&config, &["-A"]).await;
    assert!(
        text.stdout.contains("1/2 replicas ready"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("caBundle differs from"),
        "{}",
        text.stdout
    );

    // No webhook at all: every part is reported missing, pods cannot be judged stale.
    let empty = FakeApiServer::start(None).await;
    empty.insert_object("namespaces", namespace("shop", true));
    empty.insert_object("pods", pod("shop", "p", 1, None, None));
    let config = kubeconfig(dir.path(), &empty);
    let report = check(&config, &["-A", "-o", "json"]).await;
    assert_eq!(report.code, 1);
    let report = report.json();
    let codes: Vec<&str> = report["webhook"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        [
            "deployment-missing",
            "configuration-missing",
            "tls-secret-missing"
        ]
    );
    assert_eq!(report["notInjected"][0]["reason"], "webhook-not-installed");
    assert!(report["webhook"]["expected"].is_null());
}

#[tokio::test]
async fn rbac_refusals_and_a_missing_kubeconfig_exit_2_with_a_clear_message() {
    let server = healthy_cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &server);
    server
        .lock()
        .fail_next
        .push((http::Method::GET, "/api/v1/pods", 403, "Forbidden"));

    let run = check(&config, &["-A"]).await;

    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.is_empty(), "no half report: {}", run.stdout);
    assert!(
        run.stderr
            .contains("forbidden: cannot list pods cluster-wide"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("grant list on pods"), "{}", run.stderr);

    server.lock().fail_next.push((
        http::Method::GET,
        "/secrets/holysheep-webhook-tls",
        403,
        "Forbidden",
    ));
    let run = check(&config, &["-A"]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains(
            r#"cannot get secrets "holysheep-webhook-tls" in namespace holysheep-system"#
        ),
        "{}",
        run.stderr
    );
    assert_only_gets(&server);

    let missing = dir.path().join("no-such-kubeconfig");
    let run = check(&missing, &["-A"]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot configure a Kubernetes client"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("KUBECONFIG"), "{}", run.stderr);
}

/// `verb group resource namespace name` of one request as the fake API server logged it
/// (`GET /path STATUS`).
fn access(request: &str) -> (String, String, String, Option<String>, Option<String>) {
    let path = request.split(' ').nth(1).unwrap();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts[0] {
        "api" => ("", &parts[2..]),
        "apis" => (parts[1], &parts[3..]),
        other => panic!("not an API path: {other} in {request}"),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let name = rest.get(1).map(|n| (*n).to_owned());
    let verb = if name.is_some() { "get" } else { "list" };
    (
        verb.to_owned(),
        group.to_owned(),
        rest[0].to_owned(),
        namespace,
        name,
    )
}

/// The rules of `manifests/check-rbac/rbac.yaml`: (the Role's namespace, or `None` for the
/// ClusterRole, rule), each role checked to be bound to the shipped group.
fn check_rbac_rules() -> Vec<(Option<String>, Value)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/check-rbac/rbac.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .collect();
    let bound = |kind: &str, ns: Option<&str>| {
        docs.iter().any(|d| {
            d["kind"] == kind
                && d["roleRef"]["name"] == "holysheep-check"
                && d["metadata"]["namespace"].as_str() == ns
                && d["subjects"][0]["name"] == "holysheep:check"
        })
    };
    let mut rules = Vec::new();
    for doc in &docs {
        let ns = doc["metadata"]["namespace"].as_str();
        match doc["kind"].as_str().unwrap() {
            "ClusterRole" => assert!(bound("ClusterRoleBinding", None)),
            "Role" => assert!(bound("RoleBinding", ns)),
            _ => continue,
        }
        for rule in doc["rules"].as_array().unwrap() {
            rules.push((ns.map(str::to_owned), rule.clone()));
        }
    }
    rules
}

fn allows(rule: &Value, verb: &str, group: &str, resource: &str, name: Option<&str>) -> bool {
    let has = |key: &str, want: &str| {
        rule[key]
            .as_array()
            .is_some_and(|list| list.iter().any(|v| v == want))
    };
    let names_ok = match rule["resourceNames"].as_array() {
        None => true,
        Some(names) => name.is_some_and(|n| names.iter().any(|v| v == n)),
    };
    has("apiGroups", group) && has("resources", resource) && has("verbs", verb) && names_ok
}

/// The shipped read-only RBAC for `check` allows every request it makes, over all
/// namespaces and over one, and grants nothing but get and list (the only Secret being the
/// webhook's TLS Secret, by name).
#[tokio::test]
async fn the_shipped_check_rbac_allows_every_request_check_makes_and_only_reads() {
    let rules = check_rbac_rules();
    for (_, rule) in &rules {
        for verb in rule["verbs"].as_array().unwrap() {
            assert!(verb == "get" || verb == "list", "{rule}");
        }
        if rule["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "secrets")
        {
            assert_eq!(
                rule["resourceNames"],
                json!(["holysheep-webhook-tls"]),
                "{rule}"
            );
        }
    }

    let server = healthy_cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &server);
    let mut seen = BTreeSet::new();
    for args in [&["-A", "-o", "json"][..], &["-n", "shop", "-o", "json"]] {
        server.clear_log();
        let run = check(&config, args).await;
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        seen.extend(server.requests().iter().map(|r| access(r)));
    }
    // Namespaces (list and get), pods (all and one namespace), 4 apps kinds, jobs, and the
    // webhook's Deployment, configuration and Secret.
    assert!(seen.len() >= 15, "{seen:?}");
    for (verb, group, resource, ns, name) in &seen {
        let allowed = rules.iter().any(|(role_ns, rule)| {
            (role_ns.is_none() || role_ns == ns)
                && allows(rule, verb, group, resource, name.as_deref())
        });
        assert!(
            allowed,
            "not allowed: {verb} {group}/{resource} in {ns:?} named {name:?}"
        );
    }
}
