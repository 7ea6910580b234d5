//! The forwarding pipeline for one request, as named steps.
//!
//! `handle` = refuse unforwardable targets -> route -> require key -> bound body -> remap
//! model -> check the model lists and the budgets (maybe downgrading the model) -> set
//! key -> send -> stream back (a `/v1/models` list filtered by the model lists). Each step
//! is a small function below, read top to bottom, except send, which is
//! `Resilience::send`. A WebSocket upgrade (the Realtime API) branches off after the key
//! check to `upgrade`.
//!
//! What it does not do: retry or fall back (the send step is `resilience`'s, which runs
//! the attempts under the `retry` policy), count tokens (a `metrics::RequestMeter`
//! follows each request and wraps the response body in the usage tap), or buffer
//! responses: upstream bodies stream back frame by frame, and dropping the client
//! connection drops the upstream request.
//!
//! A response body is layered, innermost first: the upstream body, the idle limit
//! (`limits.stream_idle_timeout`), the usage tap (which sees how the body ended), and
//! the SSE error tail (which turns a failed event stream into a final error event).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use hyper::body::Incoming;

use crate::budget::{BudgetReservation, Budgets};
use crate::config::Config;
use crate::error::{BoxError, ProxyError, ResponseBody};
use crate::joined::Joined;
use crate::keys::{ApiKey, KeyStore};
use crate::metrics::{Metrics, RateLimitKind, RequestMeter, Route};
use crate::models::{self, ModelField};
use crate::resilience::{Answer, IdleTimeout, Resilience, SseErrorTail};
use crate::upstream::{ClientBody, ReadFailure, Upstream, UpstreamBody, UpstreamIncoming};
use crate::usage::{self, MediaKind, StreamUsage, UsageBody};

mod target;
mod upgrade;

/// Everything a request needs, shared by all connections.
#[derive(Debug)]
pub struct AppState {
    /// The live config; swapped whole when the `--config` file changes.
    pub config: Arc<ArcSwap<Config>>,
    /// The live API key.
    pub keys: Arc<KeyStore>,
    /// The upstream client.
    pub upstream: Upstream,
    /// Retry budget and local rate limits.
    pub resilience: Resilience,
    /// Request, token and cost metrics (registered in the admin registry).
    pub metrics: Metrics,
    /// Spend per budget window (and the budget metrics).
    pub budgets: Budgets,
}

/// The client path prefix that is forwarded.
const ROUTE_PREFIX: &str = "/v1";

/// The body of every proxied response: the SSE error tail around the usage tap around
/// the answer (upstream or our own error); one box in all.
pub type ProxyBody = SseErrorTail<UsageBody<ResponseBody>>;

/// Handles one proxied request; never fails: errors become OpenAI-shaped responses.
pub fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> impl Future<Output = Response<ProxyBody>> {
    let mut meter = RequestMeter::start(&state.metrics, req.uri().path(), req.headers());
    // One config for the whole request: a reload mid-request cannot mix two.
    let config = state.config.load_full();
    // hyper keeps a connection's request future in place, and each level of it holds its
    // callee's whole: a request passed by value stays in every level's state (twice in
    // an `async fn` that rebinds or borrows it first), so each request wrote it several
    // times into memory that, over 64 connections, has left the cache. Boxed, the
    // levels hold a pointer, and the box is a small allocation reused warm.
    let req = Box::new(req);
    async move {
        let resp = match forward(&state, &config, req, &mut meter).await {
            Ok(resp) => resp,
            Err(err) => {
                // The one place a failed request is logged (no key, no body, no query).
                let (status, _, code) = err.status_and_kind();
                tracing::warn!(status = status.as_u16(), code, error = %err, "request failed");
                if let ProxyError::RateLimited { limit, .. } = &err {
                    state
                        .metrics
                        .record_rate_limited(RateLimitKind::from_field(limit));
                }
                err.into_response()
            }
        };
        let media = MediaKind::of(resp.headers());
        // Metrics and the request log line are written when the body ends; a handler
        // dropped before this point (the client left) is recorded when `meter` drops.
        meter
            .finish(resp, media, config)
            .map(|body| SseErrorTail::new(body, media == MediaKind::EventStream))
    }
}

async fn forward(
    state: &AppState,
    config: &Config,
    req: Box<Request<Incoming>>,
    meter: &mut RequestMeter,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (parts, body) = req.into_parts();
    target::check(&parts.method, &parts.uri)?;
    let uri = route(&state.upstream, &parts.uri)?;
    let key = state.keys.current().ok_or(ProxyError::NoKey)?;
    if upgrade::requested(&parts.headers) {
        let timeout = config.retry.attempt_timeout;
        let idle = config.limits.stream_idle_timeout;
        // Boxed, as the other rare paths: their state and code stay out of every request's.
        let tunnel = upgrade::tunnel(&state.upstream, parts, body, uri, &key, timeout, idle);
        return Box::pin(tunnel).await;
    }
    let buffer = buffers_body(&parts.method, &parts.headers, meter.route());
    let (body, read_failure) =
        bound_body(buffer, &parts.headers, body, config.limits.max_body_bytes).await?;
    let (body, model, requested) = remap_model(body, config);
    check_model_allowed(config, model.as_ref())?;
    if let Some(id) = parts.uri.path().strip_prefix("/v1/models/") {
        // Retrieving one model by id: the lists hide it as they hide it from the list.
        config.models.check(id)?;
    }
    let (body, model, reservation) = check_budgets(&state.budgets, config, body, model).await?;
    if reservation.downgraded {
        check_model_allowed(config, model.as_ref())?;
    }
    // After a downgrade, fallbacks follow the model actually sent.
    let chain_from = match (&model, &reservation.downgraded) {
        (Some(field), true) => Some(field.name.clone()),
        _ => requested.clone(),
    };
    let reservation = reservation.reservation;
    meter.set_models(
        requested.clone(),
        model.as_ref().map(|m| Arc::clone(&m.name)),
    );
    let (body, model) = ask_for_usage(body, model, meter);
    let tokens = state.resilience.admit(config, &body)?;
    // Tokens over the estimate are charged once the response reported its usage.
    if tokens.counts_tokens() {
        meter.on_tokens(move |used| tokens.settle(used));
    }
    // Spend is charged at the cost the meter reports (the one in holysheep_cost_usd_total).
    if reservation.charges_anything() {
        meter.on_cost(move |usd| reservation.settle(usd));
    }
    let filter_models = meter.route() == Route::Models && config.models.is_active();
    let mut headers = set_key(parts.headers, &key, &body, state.upstream.host_header());
    if filter_models {
        // The list is read and filtered here.
        ask_uncompressed(&mut headers);
    }
    let outgoing = Outgoing {
        method: parts.method,
        uri,
        headers,
        body,
    };
    // Send upstream: `resilience` adds attempts, backoff and fallbacks (buffered bodies
    // replay through [`Outgoing::try_clone_request`]); the meter learns of each attempt.
    let answer = state
        .resilience
        .send(
            &state.upstream,
            config,
            outgoing,
            model.as_ref(),
            chain_from.as_deref(),
            meter,
        )
        .await
        .map_err(|err| blame_client_body(err, read_failure.as_ref()))?;
    if let Some(model) = &answer.model {
        meter.set_upstream_model(model);
    }
    let idle = config.limits.stream_idle_timeout;
    let mut resp = if filter_models {
        Box::pin(filter_model_list(answer.response, config, idle)).await?
    } else {
        stream_back(answer.response, idle)
    };
    Answer::mark(answer.model.as_deref(), answer.gave_up, &mut resp);
    Ok(resp)
}

/// A request ready to go upstream (key set, model remapped).
#[derive(Debug)]
pub struct Outgoing {
    /// Client method, unchanged.
    pub method: Method,
    /// Upstream URI: base + rest of the path + client query.
    pub uri: Uri,
    /// Client headers minus hop-by-hop, Host and key headers, plus our Authorization.
    pub headers: HeaderMap,
    /// The body.
    pub body: OutBody,
}

/// A request body: buffered JSON (replayable for retries) or a size-bounded stream.
#[derive(Debug)]
pub enum OutBody {
    /// A JSON body read whole (up to `limits.max_body_bytes`), model remapped.
    Buffered(Bytes),
    /// Any other body, streamed with the size limit enforced as it flows.
    Streamed(Limited<ClientBody>),
}

impl Outgoing {
    /// A copy of the request for another attempt; `None` when the body is streamed
    /// (already consumed by the first attempt, so it cannot be replayed). Boxed for the
    /// reason in [`handle`].
    pub fn try_clone_request(&self) -> Option<Box<Request<UpstreamBody>>> {
        match &self.body {
            OutBody::Buffered(bytes) => {
                Some(self.request_with(Either::Left(Full::new(bytes.clone()))))
            }
            OutBody::Streamed(_) => None,
        }
    }

    /// Replaces a buffered body (a fallback rewrote its `model`). The length may change,
    /// so a `Content-Length` kept from the client goes and hyper sets the right one.
    pub fn replace_body(&mut self, body: Bytes) {
        if !content_length_is(&self.headers, body.len()) {
            self.headers.remove(header::CONTENT_LENGTH);
        }
        self.body = OutBody::Buffered(body);
    }

    /// The request itself (consumes the body).
    pub fn into_request(self) -> Box<Request<UpstreamBody>> {
        let body = match self.body {
            OutBody::Buffered(bytes) => Either::Left(Full::new(bytes)),
            OutBody::Streamed(stream) => Either::Right(Box::pin(stream)),
        };
        let mut req = Box::new(Request::new(body));
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.headers_mut() = self.headers;
        req
    }

    fn request_with(&self, body: UpstreamBody) -> Box<Request<UpstreamBody>> {
        let mut req = Box::new(Request::new(body));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Step: only `/v1/...` is forwarded, onto `<upstream>/...` with the query kept.
fn route(upstream: &Upstream, uri: &Uri) -> Result<Uri, ProxyError> {
    let path = uri.path();
    match path.strip_prefix(ROUTE_PREFIX) {
        Some(rest) if rest.starts_with('/') => match uri.path_and_query() {
            // The upstream's prefix is ours (the default, `.../v1`): the client's target
            // is the upstream's as it is, already parsed.
            Some(pq) if upstream.base().path_prefix == ROUTE_PREFIX => {
                upstream.uri_with(pq.clone())
            }
            _ => upstream.uri_for(rest, uri.query()),
        },
        _ => Err(ProxyError::NotFound {
            path: path.to_owned(),
        }),
    }
}

/// Whether the body is read whole (JSON: remapped, counted, replayable) or streamed.
///
/// A JSON media type always is. On the OpenAI JSON routes a POST body is too, whatever
/// its `Content-Type` says: `curl -d` sends `application/x-www-form-urlencoded` and some
/// clients send none, yet the body is the JSON object the route takes, and its model
/// must still be remapped and its tokens counted and priced. A body there that is not a
/// JSON object passes unchanged (the model lookup finds nothing in it).
fn buffers_body(method: &Method, headers: &HeaderMap, route: Route) -> bool {
    let json_route = matches!(
        route,
        Route::ChatCompletions
            | Route::Completions
            | Route::Embeddings
            | Route::Responses
            | Route::Moderations
    );
    is_json(headers) || (json_route && method == Method::POST && !is_multipart(headers))
}

/// `multipart/*`: an upload, never a JSON object, so it keeps streaming.
fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .get(..10)
                .is_some_and(|p| p.eq_ignore_ascii_case("multipart/"))
        })
}

/// Step: refuse an over-limit body up front (Content-Length), buffer it up to the limit
/// when `buffer` (see [`buffers_body`]), else stream it through a limit that trips
/// mid-stream. A streamed body comes with the handle that tells whether reading it
/// failed (see [`ClientBody`]).
async fn bound_body(
    buffer: bool,
    headers: &HeaderMap,
    body: Incoming,
    limit: u64,
) -> Result<(OutBody, Option<ReadFailure>), ProxyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    if !buffer {
        let body = ClientBody::new(body);
        let failure = body.failure();
        return Ok((
            OutBody::Streamed(Limited::new(body, limit_usize)),
            Some(failure),
        ));
    }
    match read_whole(Limited::new(body, limit_usize)).await {
        Ok(bytes) => Ok((OutBody::Buffered(bytes), None)),
        Err(e) if e.is::<LengthLimitError>() => Err(ProxyError::BodyTooLarge { limit }),
        Err(e) => Err(ProxyError::BodyUnreadable {
            reason: crate::upstream::describe_read_error(&*e),
        }),
    }
}

/// A body's data read to its end (see [`Joined`]: one frame is kept as it is).
/// `collect` would queue the frames in a list allocated per body.
async fn read_whole<B>(body: B) -> Result<Bytes, B::Error>
where
    B: http_body::Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    let mut joined = Joined::default();
    while let Some(frame) = body.frame().await {
        // Trailers carry no body bytes.
        if let Ok(data) = frame?.into_data() {
            joined.push(data);
        }
    }
    Ok(joined.into_bytes())
}

/// A send that failed because the client's own streamed body broke (bad chunked
/// encoding, fewer bytes than Content-Length) is the client's fault (400), whatever the
/// upstream client made of it.
fn blame_client_body(err: ProxyError, read_failure: Option<&ReadFailure>) -> ProxyError {
    match read_failure.and_then(ReadFailure::get) {
        Some(reason) => ProxyError::BodyUnreadable {
            reason: reason.to_owned(),
        },
        None => err,
    }
}

/// `application/json` or any `+json` media type.
fn is_json(headers: &HeaderMap) -> bool {
    MediaKind::of(headers) == MediaKind::Json
}

/// Step: rewrite the JSON `model` through the alias table; returns the model sent and
/// the one the client asked for.
fn remap_model(body: OutBody, config: &Config) -> (OutBody, Option<ModelField>, Option<Arc<str>>) {
    match body {
        OutBody::Buffered(bytes) => {
            let remapped = models::remap(bytes, &config.aliases);
            if let (Some(from), Some(to)) = (&remapped.requested, &remapped.sent) {
                if *from != to.name {
                    tracing::debug!(requested = %from, sent = %to.name, "model alias applied");
                }
            }
            (
                OutBody::Buffered(remapped.body),
                remapped.sent,
                remapped.requested,
            )
        }
        streamed @ OutBody::Streamed(_) => (streamed, None, None),
    }
}

/// Step: refuse a model the `models` lists do not allow (it never goes upstream).
fn check_model_allowed(config: &Config, model: Option<&ModelField>) -> Result<(), ProxyError> {
    match model {
        Some(field) => Ok(config.models.check(&field.name)?),
        None => Ok(()),
    }
}

/// Step: a successful `/v1/models` answer lists only the models the `models` lists
/// allow. The list is small; it is read whole (up to `limits.max_body_bytes`).
async fn filter_model_list(
    resp: Response<UpstreamIncoming>,
    config: &Config,
    idle: Duration,
) -> Result<Response<ResponseBody>, ProxyError> {
    if !resp.status().is_success() {
        return Ok(stream_back(resp, idle));
    }
    let (mut parts, body) = resp.into_parts();
    let limit = usize::try_from(config.limits.max_body_bytes).unwrap_or(usize::MAX);
    // Read whole here, so the idle limit guards the read.
    let body = IdleTimeout::new(body.map_err(box_error), idle);
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(source) => return Err(ProxyError::UpstreamFailed { source }),
    };
    let bytes = config.models.filter_list(&bytes).unwrap_or(bytes);
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.version = Version::HTTP_11;
    let body = Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync();
    Ok(Response::from_parts(parts, body))
}

/// The budget check's outcome for one request.
struct Budgeted {
    reservation: BudgetReservation,
    downgraded: bool,
}

/// Step: refuse the request when a `reject` budget is spent, or send it to the
/// `downgrade_to` model of a spent `downgrade` budget; reserves its estimated cost
/// (in the shared store when one is configured and answering).
async fn check_budgets(
    budgets: &Budgets,
    config: &Config,
    body: OutBody,
    model: Option<ModelField>,
) -> Result<(OutBody, Option<ModelField>, Budgeted), ProxyError> {
    let json = match &body {
        OutBody::Buffered(bytes) => Some(&bytes[..]),
        OutBody::Streamed(_) => None,
    };
    let admission = budgets
        .admit_shared(config, model.as_ref().map(|m| &*m.name), json)
        .await?;
    let reservation = admission.reservation;
    match (admission.downgrade_to, body, model) {
        (Some(to), OutBody::Buffered(bytes), Some(field)) if *field.name != *to => {
            tracing::info!(from = %field.name, to = %to, "budget spent: model downgraded");
            let (bytes, field) = models::set_model(&bytes, &field, &to);
            let downgraded = true;
            let out = Budgeted {
                reservation,
                downgraded,
            };
            Ok((OutBody::Buffered(bytes), Some(field), out))
        }
        (_, body, model) => Ok((
            body,
            model,
            Budgeted {
                reservation,
                downgraded: false,
            },
        )),
    }
}

/// Step: a streamed chat/completions request that does not ask for usage is made to,
/// so tokens can be counted; the meter's usage tap removes what that adds to the stream.
fn ask_for_usage(
    body: OutBody,
    model: Option<ModelField>,
    meter: &mut RequestMeter,
) -> (OutBody, Option<ModelField>) {
    match body {
        OutBody::Buffered(bytes) => {
            let prepared = usage::prepare_stream_usage(meter.route(), bytes, model);
            meter.set_stream_usage(prepared.stream_usage);
            (OutBody::Buffered(prepared.body), prepared.model)
        }
        streamed @ OutBody::Streamed(_) => {
            meter.set_stream_usage(StreamUsage::NotApplicable);
            (streamed, model)
        }
    }
}

/// Step: drop hop-by-hop headers, `Expect` and every client key header; add our key and
/// the upstream's `Host`.
fn set_key(mut headers: HeaderMap, key: &ApiKey, body: &OutBody, host: &HeaderValue) -> HeaderMap {
    remove_connection_named(&mut headers);
    remove_where(&mut headers, |name| {
        is_hop_by_hop(name) || is_client_key(name) || name == "expect"
    });
    if let OutBody::Buffered(bytes) = body {
        // A JSON answer is read by the usage tap.
        ask_uncompressed(&mut headers);
        // The remapped body may differ in length: hyper sets it from the exact body. The
        // client's own value is kept when it still holds (saves hyper an allocation).
        if !content_length_is(&headers, bytes.len()) {
            headers.remove(header::CONTENT_LENGTH);
        }
    }
    headers.insert(header::AUTHORIZATION, key.authorization());
    // Set here, over the client's own (no removal, no growth), rather than on each
    // attempt's copy, whose map is full: that insert reallocated the map per request.
    // HTTP/2 leaves it out (`:authority` says it).
    headers.insert(header::HOST, host.clone());
    headers
}

/// Asks for an uncompressed answer (the usage tap and the model-list filter read it):
/// `identity` over the client's `Accept-Encoding`, in place. Removing the header moved
/// entries around the map, the dearest edit of the request's headers (callgrind), and
/// left the server free to pick any coding. A request without one stays without.
fn ask_uncompressed(headers: &mut HeaderMap) {
    if let Entry::Occupied(mut entry) = headers.entry(header::ACCEPT_ENCODING) {
        entry.insert(HeaderValue::from_static("identity"));
    }
}

/// The client key headers (ours replaces them): never forwarded.
fn is_client_key(name: &str) -> bool {
    matches!(name, "api-key" | "x-api-key")
}

/// Whether `headers` carry exactly one `Content-Length`, equal to `len`.
fn content_length_is(headers: &HeaderMap, len: usize) -> bool {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = values.next().and_then(|v| v.to_str().ok());
    values.next().is_none() && first.and_then(|v| v.parse::<usize>().ok()) == Some(len)
}

/// Headers that describe one connection, never forwarded (RFC 9110 7.6.1), plus the
/// settings of an ignored `Upgrade: h2c` offer (RFC 7540 3.2.1). Names are lowercase.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "http2-settings"
    )
}

/// [`is_hop_by_hop`] for a name as a client wrote it, lowered on the stack: no hop-by-hop
/// name is longer than `proxy-authorization` (a longer one added there would only lose
/// this shortcut: its header is still removed, by name).
fn is_hop_by_hop_ignoring_case(name: &str) -> bool {
    let mut lower = [0_u8; "proxy-authorization".len()];
    let Some(lower) = lower.get_mut(..name.len()) else {
        return false;
    };
    for (to, from) in lower.iter_mut().zip(name.bytes()) {
        *to = from.to_ascii_lowercase();
    }
    std::str::from_utf8(lower).is_ok_and(is_hop_by_hop)
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    remove_connection_named(headers);
    remove_where(headers, is_hop_by_hop);
}

/// Removes the headers the `Connection` header names (not `Connection` itself).
fn remove_connection_named(headers: &mut HeaderMap) {
    if let Some(conn) = headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
    {
        // A hop-by-hop name goes anyway: for `keep-alive`, what clients send, no name is
        // built and no list allocated.
        let named: Vec<HeaderName> = conn
            .split(',')
            .map(str::trim)
            .filter(|n| !is_hop_by_hop_ignoring_case(n))
            .filter_map(|n| HeaderName::try_from(n).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
}

/// Removes every header whose (lowercase) name `unwanted` picks. The names present are
/// compared first and only those found are removed: a removal hashes its name, and a
/// message carries few of the names removed here, so hashing each of them was the
/// larger cost (callgrind).
fn remove_where(headers: &mut HeaderMap, unwanted: impl Fn(&str) -> bool) {
    while let Some(name) = headers.keys().find(|name| unwanted(name.as_str())).cloned() {
        headers.remove(&name);
    }
}

/// Step: stream the upstream response back unchanged but for hop-by-hop headers, ended
/// if the upstream stays idle for `idle` (`limits.stream_idle_timeout`). The seam where
/// the usage tap wraps the body (it must forward frames unchanged).
fn stream_back(resp: Response<UpstreamIncoming>, idle: Duration) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The client connection has its own version; hyper frames the body for it.
    parts.version = Version::HTTP_11;
    let body = IdleTimeout::new(body.map_err(box_error), idle);
    Response::from_parts(parts, body.boxed_unsync())
}

/// A named function, not a closure: a closure held across an `.await` made the future's
/// `Send` proof fail to unify the error's object lifetime.
fn box_error(e: hyper::Error) -> BoxError {
    Box::new(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_read_whole_keeps_one_frame_and_joins_several() {
        use http_body::Frame;
        let body = |frames: Vec<Result<Frame<Bytes>, &'static str>>| {
            http_body_util::StreamBody::new(futures_util::stream::iter(frames))
        };
        let one = Bytes::from_static(b"{\"model\":\"m\"}");
        let read = read_whole(body(vec![Ok(Frame::data(one.clone()))]))
            .await
            .unwrap();
        assert_eq!(read.as_ptr(), one.as_ptr(), "one frame is not copied");
        let mut trailers = HeaderMap::new();
        trailers.insert("x-t", HeaderValue::from_static("1"));
        let frames = vec![
            Ok(Frame::data(Bytes::new())),
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::data(Bytes::from_static(b"c"))),
            Ok(Frame::trailers(trailers)),
            Ok(Frame::data(Bytes::from_static(b"d"))),
        ];
        assert_eq!(read_whole(body(frames)).await.unwrap(), "abcd");
        assert_eq!(read_whole(body(vec![])).await.unwrap(), "");
        let failed = vec![Ok(Frame::data(Bytes::from_static(b"a"))), Err("cut")];
        assert_eq!(read_whole(body(failed)).await.unwrap_err(), "cut");
    }

    /// The size of a future an `fn(A, B) -> F` returns, without making one.
    fn future_size<A, B, F: Future>(_: impl FnOnce(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_request_future_stays_small() {
        // hyper holds one per connection and it is written through on every request: at
        // 64 connections what it touches no longer fits a core's cache (BENCHMARKS.md).
        // 5,176 bytes before the request went boxed down the levels, 2,456 after.
        let handle = future_size(|s: Arc<AppState>, r: Request<Incoming>| handle(s, r));
        assert!(handle <= 3072, "the request future grew to {handle} bytes");
    }

    #[test]
    fn routes_onto_the_upstream_base_with_the_query_kept() {
        let cases = [
            (
                "https://api.holysheep.ai/v1",
                "/v1/chat/completions",
                "https://api.holysheep.ai/v1/chat/completions",
            ),
            (
                "https://api.holysheep.ai/v1",
                "/v1/models?a=1&b=%20",
                "https://api.holysheep.ai/v1/models?a=1&b=%20",
            ),
            (
                "http://127.0.0.1:4000/openai/v1",
                "/v1/models?x=%2F",
                "http://127.0.0.1:4000/openai/v1/models?x=%2F",
            ),
            (
                "http://127.0.0.1:9/",
                "/v1/files/f-1/content",
                "http://127.0.0.1:9/files/f-1/content",
            ),
        ];
        for (base, client, want) in cases {
            let upstream =
                Upstream::new(base.parse().unwrap(), &crate::config::Limits::default()).unwrap();
            let uri = route(&upstream, &client.parse().unwrap()).unwrap();
            assert_eq!(uri, want, "{base} {client}");
        }
        let upstream = Upstream::new(
            "https://api.holysheep.ai/v1".parse().unwrap(),
            &crate::config::Limits::default(),
        )
        .unwrap();
        for outside in ["/v2/x", "/v1", "/v1x/models", "/"] {
            let err = route(&upstream, &outside.parse().unwrap()).unwrap_err();
            assert!(
                matches!(err, ProxyError::NotFound { .. }),
                "{outside}: {err:?}"
            );
        }
    }

    #[test]
    fn openai_json_routes_buffer_posts_whatever_the_content_type() {
        let ct = |v: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = v {
                h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            }
            h
        };
        let form = Some("application/x-www-form-urlencoded");
        let cases = [
            (Method::POST, None, Route::ChatCompletions, true),
            (Method::POST, form, Route::ChatCompletions, true),
            (Method::POST, Some("text/plain"), Route::Embeddings, true),
            (Method::POST, None, Route::Responses, true),
            (
                Method::POST,
                Some("Multipart/form-data; b=x"),
                Route::Completions,
                false,
            ),
            (Method::GET, None, Route::Responses, false),
            (Method::POST, None, Route::Audio, false),
            (Method::POST, form, Route::Other, false),
            (Method::POST, Some("application/json"), Route::Other, true),
        ];
        for (method, content_type, route, want) in cases {
            let got = buffers_body(&method, &ct(content_type), route);
            assert_eq!(got, want, "{method} {content_type:?} {route:?}");
        }
    }

    #[test]
    fn json_media_types() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        for (ct, want) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/vnd.api+json", true),
            ("multipart/form-data; boundary=x", false),
            ("application/octet-stream", false),
            ("json", false),
        ] {
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            assert_eq!(is_json(&h), want, "{ct}");
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "keep-alive, x-secret-hop".parse().unwrap(),
        );
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert("openai-organization", "org".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("openai-organization"));
    }

    #[test]
    fn content_length_is_kept_only_when_it_matches_the_body() {
        let key = ApiKey::new("sk-real").unwrap();
        let body = OutBody::Buffered(Bytes::from_static(b"{\"model\":\"m\"}"));
        let with = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::CONTENT_LENGTH, v.parse().unwrap());
            }
            set_key(h, &key, &body, &HeaderValue::from_static("up"))
        };
        assert_eq!(with(&["13"])[header::CONTENT_LENGTH], "13");
        // Remapped body (other length), duplicates or garbage: removed, hyper sets it.
        for values in [&["99"][..], &["13", "13"], &["x"]] {
            let out = with(values);
            assert!(!out.contains_key(header::CONTENT_LENGTH), "{values:?}");
        }
    }

    #[test]
    fn key_headers_are_replaced() {
        let key = ApiKey::new("sk-real").unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            "Bearer injected-by-holysheep".parse().unwrap(),
        );
        h.insert("api-key", "a".parse().unwrap());
        h.insert("x-api-key", "b".parse().unwrap());
        h.insert(header::HOST, "127.0.0.1:8080".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "10".parse().unwrap());
        h.insert("x-custom", "kept".parse().unwrap());
        let up = HeaderValue::from_static("api.holysheep.ai");
        let out = set_key(h, &key, &OutBody::Buffered(Bytes::new()), &up);
        assert_eq!(out.get_all(header::AUTHORIZATION).iter().count(), 1);
        assert_eq!(out[header::AUTHORIZATION], "Bearer sk-real");
        assert!(out[header::AUTHORIZATION].is_sensitive());
        for gone in ["api-key", "x-api-key", "content-length"] {
            assert!(!out.contains_key(gone), "{gone}");
        }
        assert_eq!(out.get_all(header::HOST).iter().collect::<Vec<_>>(), [&up]);
        assert_eq!(out["x-custom"], "kept");
    }

    #[test]
    fn hop_by_hop_names_are_told_in_any_case() {
        let names = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "http2-settings",
        ];
        for name in names {
            assert!(is_hop_by_hop(name), "{name}");
            assert!(is_hop_by_hop_ignoring_case(name), "{name}");
            assert!(
                is_hop_by_hop_ignoring_case(&name.to_ascii_uppercase()),
                "{name}"
            );
        }
        for name in [
            "",
            "x-hop",
            "Content-Type",
            "proxy-authorizationx",
            "kéep-alive",
        ] {
            assert!(!is_hop_by_hop_ignoring_case(name), "{name}");
        }
    }

    #[test]
    fn connection_options_remove_the_headers_they_name_and_no_other() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Keep-Alive".parse().unwrap());
        h.insert("x-other", "kept".parse().unwrap());
        remove_connection_named(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        // Any option names a header to remove, `close` included (RFC 9110 7.6.1).
        h.insert(header::CONNECTION, "close, X-Other".parse().unwrap());
        h.insert("close", "named".parse().unwrap());
        remove_connection_named(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), [header::CONNECTION]);
    }

    #[test]
    fn hop_by_hop_host_key_and_expect_headers_go_and_encoding_is_identity_whatever_their_case() {
        let key = ApiKey::new("sk-real").unwrap();
        let headers = {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, "Keep-Alive, X-Hop".parse().unwrap());
            h.insert("X-Hop", "1".parse().unwrap());
            h.insert("Keep-Alive", "timeout=5".parse().unwrap());
            h.insert(header::EXPECT, "100-continue".parse().unwrap());
            h.insert(header::HOST, "127.0.0.1:8080".parse().unwrap());
            h.append("API-Key", "a".parse().unwrap());
            h.append("api-key", "b".parse().unwrap());
            h.insert(header::ACCEPT_ENCODING, "gzip".parse().unwrap());
            h.append(header::ACCEPT_ENCODING, "br".parse().unwrap());
            h.insert(header::UPGRADE, "h2c".parse().unwrap());
            h.insert(
                "http2-settings",
                "AAMAAABkAAQAoAAAAAIAAAAA".parse().unwrap(),
            );
            h.insert("openai-beta", "assistants=v2".parse().unwrap());
            h
        };
        let up = HeaderValue::from_static("up");
        let buffered = set_key(headers, &key, &OutBody::Buffered(Bytes::new()), &up);
        let names: Vec<&str> = buffered.keys().map(HeaderName::as_str).collect();
        assert_eq!(names.len(), 4, "{names:?}");
        let encodings: Vec<_> = buffered.get_all(header::ACCEPT_ENCODING).iter().collect();
        assert_eq!(encodings, ["identity"]);
        assert_eq!(buffered[header::HOST], "up");
        assert_eq!(buffered["openai-beta"], "assistants=v2");
        assert_eq!(buffered[header::AUTHORIZATION], "Bearer sk-real");
    }
}
