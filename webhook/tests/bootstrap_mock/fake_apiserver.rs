//! A scripted fake kube-apiserver for the bootstrap and Event tests: Secrets,
//! MutatingWebhookConfigurations and created events.k8s.io/v1 Events in memory, answered
//! the way the real apiserver answers.
//!
//! - create of an existing object: 409 `AlreadyExists`; update or patch carrying a stale
//!   `metadata.resourceVersion`: 409 `Conflict`; missing object: 404 `NotFound`; every
//!   error body is a `Status` object;
//! - every write bumps a global `resourceVersion`;
//! - PATCH accepts `application/merge-patch+json` (RFC 7386);
//! - GET list (all namespaces or one) and GET of namespaces, pods, and apps/v1 and
//!   batch/v1 workloads seeded with `insert_object`, for the read-only `check`;
//! - one-shot injected failures (`fail_next`) and a creation barrier that holds the first
//!   N creates until all have arrived, to replay a replica race deterministically.
//!
//! It binds `127.0.0.1:0` and stops when the test's runtime ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::Barrier;

const SECRETS: &str = "/api/v1/namespaces/{ns}/secrets";
const SECRET: &str = "/api/v1/namespaces/{ns}/secrets/{name}";
const MWC: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/{ns}/events";
const NAMESPACES: &str = "/api/v1/namespaces";
const NAMESPACE: &str = "/api/v1/namespaces/{name}";
const PODS: &str = "/api/v1/pods";
const NS_PODS: &str = "/api/v1/namespaces/{ns}/pods";
const GROUP_ALL: &str = "/apis/{group}/{version}/{resource}";
const GROUP_NS: &str = "/apis/{group}/{version}/namespaces/{ns}/{resource}";
const GROUP_ONE: &str = "/apis/{group}/{version}/namespaces/{ns}/{resource}/{name}";

/// One request as the fake saw it, and what it answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub status: u16,
}

#[derive(Default)]
pub struct Inner {
    pub secrets: HashMap<(String, String), Value>,
    /// Read-only objects by resource (`pods`, `deployments`...), in insertion order.
    pub objects: HashMap<String, Vec<Value>>,
    pub webhook_configs: HashMap<String, Value>,
    /// Events created, in order, with the namespace of the URL they were posted to.
    pub events: Vec<(String, Value)>,
    pub resource_version: u64,
    pub log: Vec<Seen>,
    /// `(method, query string)` of every request, in order.
    pub queries: Vec<(Method, String)>,
    /// Injected answers: the first entry whose method matches and whose path contains
    /// the fragment is used once, instead of the normal behaviour.
    pub fail_next: Vec<(Method, &'static str, u16, &'static str)>,
}

#[derive(Clone)]
pub struct FakeApiServer {
    pub inner: Arc<Mutex<Inner>>,
    /// The number of Events created so far, to wait on.
    pub events_created: Arc<tokio::sync::watch::Sender<usize>>,
    create_barrier: Option<Arc<Barrier>>,
    pub addr: SocketAddr,
}

impl FakeApiServer {
    /// Starts the fake. With `racing_creates = Some(n)`, Secret creates wait until `n` of
    /// them have arrived before any is applied.
    pub async fn start(racing_creates: Option<usize>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Self {
            inner: Arc::default(),
            events_created: Arc::default(),
            create_barrier: racing_creates.map(|n| Arc::new(Barrier::new(n))),
            addr,
        };
        let app = server.router();
        tokio::spawn(async move { axum::serve(listener, app).await });
        server
    }

    /// Like [`start`](Self::start) without racing, but serving HTTPS with `tls`, as the
    /// in-cluster apiserver does.
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> Self {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Self {
            inner: Arc::default(),
            events_created: Arc::default(),
            create_barrier: None,
            addr,
        };
        let app = server.router();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        server
    }

    fn router(&self) -> Router {
        Router::new()
            .route(SECRETS, axum::routing::post(create_secret))
            .route(SECRET, get(get_secret).put(replace_secret))
            .route(MWC, get(get_mwc).patch(patch_mwc))
            .route(EVENTS, axum::routing::post(create_event))
            .route(NAMESPACES, get(list_namespaces))
            .route(NAMESPACE, get(get_namespace))
            .route(PODS, get(list_all_pods))
            .route(NS_PODS, get(list_ns_pods))
            .route(GROUP_ALL, get(list_group_all))
            .route(GROUP_NS, get(list_group_ns))
            .route(GROUP_ONE, get(get_group_one))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                record_query,
            ))
            .with_state(self.clone())
    }

    /// A kube client talking plain HTTP to this fake.
    pub fn client(&self) -> kube::Client {
        let url = format!("http://{}", self.addr).parse().unwrap();
        let mut config = kube::Config::new(url);
        config.default_namespace = "holysheep-system".to_owned();
        config.read_timeout = Some(Duration::from_secs(10));
        kube::Client::try_from(config).unwrap()
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    pub fn insert_secret(&self, ns: &str, name: &str, mut secret: Value) {
        let mut inner = self.lock();
        inner.resource_version += 1;
        secret["metadata"]["resourceVersion"] = json!(inner.resource_version.to_string());
        inner
            .secrets
            .insert((ns.to_owned(), name.to_owned()), secret);
    }

    pub fn insert_webhook_config(&self, mut config: Value) {
        let mut inner = self.lock();
        inner.resource_version += 1;
        config["metadata"]["resourceVersion"] = json!(inner.resource_version.to_string());
        let name = config["metadata"]["name"].as_str().unwrap().to_owned();
        inner.webhook_configs.insert(name, config);
    }

    /// Seeds a read-only object of `resource` (plural, e.g. `pods`, `replicasets`).
    #[allow(dead_code, reason = "only the check tests seed read-only objects")]
    pub fn insert_object(&self, resource: &str, mut object: Value) {
        let mut inner = self.lock();
        stamp(&mut inner, &mut object);
        inner
            .objects
            .entry(resource.to_owned())
            .or_default()
            .push(object);
    }

    pub fn secret(&self, ns: &str, name: &str) -> Option<Value> {
        self.lock()
            .secrets
            .get(&(ns.to_owned(), name.to_owned()))
            .cloned()
    }

    pub fn webhook_config(&self, name: &str) -> Option<Value> {
        self.lock().webhook_configs.get(name).cloned()
    }

    /// Requests seen, as `"METHOD path status"` strings.
    pub fn requests(&self) -> Vec<String> {
        self.lock()
            .log
            .iter()
            .map(|s| format!("{} {} {}", s.method, s.path, s.status))
            .collect()
    }

    pub fn clear_log(&self) {
        self.lock().log.clear();
    }
}

async fn record_query(
    State(s): State<FakeApiServer>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let query = request.uri().query().unwrap_or_default().to_owned();
    s.lock().queries.push((request.method().clone(), query));
    next.run(request).await
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    let code = StatusCode::from_u16(code).unwrap();
    (code, axum::Json(body)).into_response()
}

/// Records the request; returns an injected failure if one matches.
fn record(inner: &mut Inner, method: Method, path: String) -> Option<Response> {
    let hit = inner
        .fail_next
        .iter()
        .position(|(m, frag, _, _)| *m == method && path.contains(frag));
    let injected = hit.map(|i| inner.fail_next.remove(i));
    let code = injected.as_ref().map_or(0, |f| f.2);
    inner.log.push(Seen {
        method,
        path,
        status: code,
    });
    injected.map(|(_, _, code, reason)| status(code, reason, format!("injected {reason}")))
}

/// Sets the status code of the last logged request.
fn answered(inner: &mut Inner, response: Response) -> Response {
    if let Some(last) = inner.log.last_mut()
        && last.status == 0
    {
        last.status = response.status().as_u16();
    }
    response
}

fn stamp(inner: &mut Inner, obj: &mut Value) {
    inner.resource_version += 1;
    obj["metadata"]["resourceVersion"] = json!(inner.resource_version.to_string());
}

fn stale(obj: &Value, current: &Value) -> bool {
    match obj["metadata"]["resourceVersion"].as_str() {
        Some(rv) => Some(rv) != current["metadata"]["resourceVersion"].as_str(),
        None => false,
    }
}

async fn get_secret(
    State(s): State<FakeApiServer>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let mut inner = s.lock();
    let path = format!("/api/v1/namespaces/{ns}/secrets/{name}");
    if let Some(r) = record(&mut inner, Method::GET, path) {
        return r;
    }
    let response = match inner.secrets.get(&(ns, name.clone())) {
        Some(secret) => axum::Json(secret.clone()).into_response(),
        None => status(404, "NotFound", format!("secrets \"{name}\" not found")),
    };
    answered(&mut inner, response)
}

async fn create_secret(
    State(s): State<FakeApiServer>,
    Path(ns): Path<String>,
    axum::Json(mut secret): axum::Json<Value>,
) -> Response {
    if let Some(barrier) = &s.create_barrier {
        // Bounded: a test that sends fewer creates than promised fails instead of hanging.
        let waited = tokio::time::timeout(Duration::from_secs(10), barrier.wait()).await;
        if waited.is_err() {
            return status(500, "InternalError", "create barrier timed out".to_owned());
        }
    }
    let mut inner = s.lock();
    if let Some(r) = record(
        &mut inner,
        Method::POST,
        format!("/api/v1/namespaces/{ns}/secrets"),
    ) {
        return r;
    }
    let name = secret["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let key = (ns.clone(), name.clone());
    let response = if inner.secrets.contains_key(&key) {
        status(
            409,
            "AlreadyExists",
            format!("secrets \"{name}\" already exists"),
        )
    } else {
        secret["metadata"]["namespace"] = json!(ns);
        secret["metadata"]["uid"] = json!(format!("uid-{}", inner.resource_version));
        stamp(&mut inner, &mut secret);
        inner.secrets.insert(key, secret.clone());
        (StatusCode::CREATED, axum::Json(secret)).into_response()
    };
    answered(&mut inner, response)
}

async fn create_event(
    State(s): State<FakeApiServer>,
    Path(ns): Path<String>,
    axum::Json(mut event): axum::Json<Value>,
) -> Response {
    let response = {
        let mut inner = s.lock();
        let path = format!("/apis/events.k8s.io/v1/namespaces/{ns}/events");
        if let Some(r) = record(&mut inner, Method::POST, path) {
            return r;
        }
        // What the apiserver does with generateName.
        let count = inner.events.len();
        if let Some(prefix) = event["metadata"]["generateName"].as_str() {
            event["metadata"]["name"] = json!(format!("{prefix}{count:05}"));
        }
        stamp(&mut inner, &mut event);
        inner.events.push((ns, event.clone()));
        let response = (StatusCode::CREATED, axum::Json(event)).into_response();
        answered(&mut inner, response)
    };
    s.events_created.send_modify(|n| *n += 1);
    response
}

async fn replace_secret(
    State(s): State<FakeApiServer>,
    Path((ns, name)): Path<(String, String)>,
    axum::Json(mut secret): axum::Json<Value>,
) -> Response {
    let mut inner = s.lock();
    let path = format!("/api/v1/namespaces/{ns}/secrets/{name}");
    if let Some(r) = record(&mut inner, Method::PUT, path) {
        return r;
    }
    let key = (ns, name.clone());
    let response = match inner.secrets.get(&key).cloned() {
        None => status(404, "NotFound", format!("secrets \"{name}\" not found")),
        Some(current) if stale(&secret, &current) => status(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on secrets \"{name}\": the object has been \
                 modified; please apply your changes to the latest version and try again"
            ),
        ),
        Some(current) if current["type"] != secret["type"] => status(
            422,
            "Invalid",
            format!("Secret \"{name}\" is invalid: type: field is immutable"),
        ),
        Some(_) => {
            stamp(&mut inner, &mut secret);
            inner.secrets.insert(key, secret.clone());
            axum::Json(secret).into_response()
        }
    };
    answered(&mut inner, response)
}

async fn get_mwc(State(s): State<FakeApiServer>, Path(name): Path<String>) -> Response {
    let mut inner = s.lock();
    let path =
        format!("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}");
    if let Some(r) = record(&mut inner, Method::GET, path) {
        return r;
    }
    let response = match inner.webhook_configs.get(&name) {
        Some(config) => axum::Json(config.clone()).into_response(),
        None => status(
            404,
            "NotFound",
            format!(
                "mutatingwebhookconfigurations.admissionregistration.k8s.io \"{name}\" not found"
            ),
        ),
    };
    answered(&mut inner, response)
}

async fn patch_mwc(
    State(s): State<FakeApiServer>,
    Path(name): Path<String>,
    headers: HeaderMap,
    axum::Json(patch): axum::Json<Value>,
) -> Response {
    let mut inner = s.lock();
    let path =
        format!("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}");
    if let Some(r) = record(&mut inner, Method::PATCH, path) {
        return r;
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let response = match inner.webhook_configs.get(&name).cloned() {
        _ if content_type != "application/merge-patch+json" => status(
            415,
            "UnsupportedMediaType",
            format!("the fake only speaks merge patch, got {content_type:?}"),
        ),
        None => status(
            404,
            "NotFound",
            format!("mutatingwebhookconfigurations \"{name}\" not found"),
        ),
        Some(current) if stale(&patch, &current) => status(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on mutatingwebhookconfigurations \"{name}\": the object has been modified"
            ),
        ),
        Some(mut current) => {
            json_patch::merge(&mut current, &patch);
            stamp(&mut inner, &mut current);
            inner.webhook_configs.insert(name, current.clone());
            axum::Json(current).into_response()
        }
    };
    answered(&mut inner, response)
}

/// Answers a list of `resource`, in namespace `ns` or all, as a `<Kind>List`.
fn list(s: &FakeApiServer, path: String, resource: &str, ns: Option<&str>) -> Response {
    let mut inner = s.lock();
    if let Some(r) = record(&mut inner, Method::GET, path) {
        return r;
    }
    let items: Vec<Value> = inner
        .objects
        .get(resource)
        .into_iter()
        .flatten()
        .filter(|o| ns.is_none_or(|ns| o["metadata"]["namespace"] == ns))
        .cloned()
        .collect();
    let body = json!({
        "kind": "List", "apiVersion": "v1",
        "metadata": {"resourceVersion": inner.resource_version.to_string()},
        "items": items,
    });
    let response = axum::Json(body).into_response();
    answered(&mut inner, response)
}

/// Answers one object of `resource` by namespace (`None` for cluster objects) and name.
fn get_one(
    s: &FakeApiServer,
    path: String,
    resource: &str,
    ns: Option<&str>,
    name: &str,
) -> Response {
    let mut inner = s.lock();
    if let Some(r) = record(&mut inner, Method::GET, path) {
        return r;
    }
    let found = inner.objects.get(resource).into_iter().flatten().find(|o| {
        o["metadata"]["name"] == name && ns.is_none_or(|ns| o["metadata"]["namespace"] == ns)
    });
    let response = match found {
        Some(object) => axum::Json(object.clone()).into_response(),
        None => status(404, "NotFound", format!("{resource} \"{name}\" not found")),
    };
    answered(&mut inner, response)
}

async fn list_namespaces(State(s): State<FakeApiServer>) -> Response {
    list(&s, NAMESPACES.to_owned(), "namespaces", None)
}

async fn get_namespace(State(s): State<FakeApiServer>, Path(name): Path<String>) -> Response {
    get_one(
        &s,
        format!("/api/v1/namespaces/{name}"),
        "namespaces",
        None,
        &name,
    )
}

async fn list_all_pods(State(s): State<FakeApiServer>) -> Response {
    list(&s, PODS.to_owned(), "pods", None)
}

async fn list_ns_pods(State(s): State<FakeApiServer>, Path(ns): Path<String>) -> Response {
    list(
        &s,
        format!("/api/v1/namespaces/{ns}/pods"),
        "pods",
        Some(&ns),
    )
}

async fn list_group_all(
    State(s): State<FakeApiServer>,
    Path((group, version, resource)): Path<(String, String, String)>,
) -> Response {
    let path = format!("/apis/{group}/{version}/{resource}");
    list(&s, path, &resource, None)
}

async fn list_group_ns(
    State(s): State<FakeApiServer>,
    Path((group, version, ns, resource)): Path<(String, String, String, String)>,
) -> Response {
    let path = format!("/apis/{group}/{version}/namespaces/{ns}/{resource}");
    list(&s, path, &resource, Some(&ns))
}

async fn get_group_one(
    State(s): State<FakeApiServer>,
    Path((group, version, ns, resource, name)): Path<(String, String, String, String, String)>,
) -> Response {
    let path = format!("/apis/{group}/{version}/namespaces/{ns}/{resource}/{name}");
    get_one(&s, path, &resource, Some(&ns), &name)
}
