//! `vigil serve`: the synchronous scoring API for payment services, an entry
//! point at the end of the data flow beside the Kafka stream, over the engine
//! (and `vigil-kafka` for its audit trail and labels topic).
//!
//! Routes (contract in `docs/openapi.yaml`):
//! - `POST /v1/decisions`: one transaction event in, its decision out, through
//!   the same [`Engine`] as the stream;
//! - `POST /v1/decisions/batch`: `{"events": [...]}` in, one result per event;
//! - `POST /v1/labels`: confirmed outcomes (one label or a list) for the label
//!   features;
//! - `GET /healthz`, `GET /readyz`, `GET /metrics` for operations.
//!
//! Every `/v1` request is authenticated ([`auth`]) and idempotent by
//! `transaction_id`: the feature store remembers each transaction with its
//! first features and its content's fingerprint, so a retry is answered with
//! the same decision and counts nothing again (`Idempotent-Replayed: true`),
//! while the same id with other content gets 409. This holds across restarts
//! and instances sharing a Redis store, for the store's de-duplication TTL.
//!
//! Overload is shed, never queued without bound: beyond `api.max_concurrency`
//! requests in progress the answer is an immediate 503 with `Retry-After`.
//! Each request has a deadline (`api.deadline_ms`, or less when the client
//! sends `Vigil-Budget-Ms`); a feature store that has not answered by then is
//! left behind and the pipeline's degraded policy decides, saying so.

pub mod audit;
pub mod auth;
pub mod metrics;
mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use vigil_core::pipeline::{ApiConfig, KafkaConfig};
use vigil_core::{Decision, Event, Label, PipelineConfig};
use vigil_engine::{Engine, EngineError, LabelOutcome, Options};

use audit::{Audit, AuditStats};
use auth::Verifier;
use metrics::{Metrics, ReasonLabels, RouteLabels};

/// A client may ask for less time than `api.deadline_ms` with this header.
pub const BUDGET_HEADER: &str = "vigil-budget-ms";
/// Set on answers to a retried transaction.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// How long a broker error counts against `/readyz`'s `kafka`.
const BROKER_RECENT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{}: no [api] section: add one to serve decisions over HTTP (see docs/api.md)", .0.display())]
    NotConfigured(std::path::PathBuf),
    #[error(transparent)]
    Setup(#[from] auth::SetupError),
    #[error(transparent)]
    Kafka(#[from] vigil_kafka::Error),
    #[error("cannot listen on {address}: {source}{}", listen_hint(source))]
    Listen { address: String, source: std::io::Error },
    #[error("server: {0}")]
    Serve(std::io::Error),
    #[error("api.tls: {0}")]
    Tls(String),
}

/// What to do when the address cannot be had.
fn listen_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => "; another server holds it: give --listen ADDR, or change api.listen",
        std::io::ErrorKind::PermissionDenied => {
            "; a port below 1024 needs privileges: give --listen with a higher port"
        }
        _ => "",
    }
}

/// The authenticated caller, for handlers and logs.
#[derive(Debug, Clone)]
pub struct Client(pub String);

/// Everything the handlers share.
pub struct Api {
    engine: Arc<Engine>,
    config: ApiConfig,
    kafka: Option<KafkaConfig>,
    verifier: Verifier,
    metrics: Metrics,
    in_flight: Arc<Semaphore>,
    audit: Option<Audit>,
    labels: Option<(vigil_kafka::Producer, String)>,
    /// What the API's Kafka clients (audit trail, labels) met at the brokers.
    broker: Arc<vigil_kafka::BrokerHealth>,
}

fn unix_now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// `{"error": {"code", "message", "field"?}}` with a status.
fn error(status: StatusCode, code: &str, message: impl Into<String>, field: Option<&str>) -> Response {
    let mut e = json!({"code": code, "message": message.into()});
    if let Some(f) = field {
        e["field"] = json!(f);
    }
    (status, axum::Json(json!({ "error": e }))).into_response()
}

fn retry_later(code: &str, message: impl Into<String>) -> Response {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, code, message, None);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

impl Api {
    /// Checks the `[api]` section, resolves secrets and starts the audit
    /// publisher (when the pipeline has Kafka). The returned task finishes the
    /// audit trail once the API is dropped.
    pub fn new(
        pipeline: &PipelineConfig,
        engine: Arc<Engine>,
    ) -> Result<(Arc<Api>, Option<tokio::task::JoinHandle<()>>), ApiError> {
        let config = pipeline.api.clone().ok_or_else(|| ApiError::NotConfigured(pipeline.file.clone()))?;
        let verifier = Verifier::new(&config)?;
        let audit_stats = Arc::new(AuditStats::default());
        let broker = vigil_kafka::BrokerHealth::new();
        let (audit, task) = match &pipeline.kafka {
            Some(k) => {
                let (a, t) = Audit::start(k, config.audit_buffer, audit_stats.clone(), &broker)?;
                (Some(a), Some(t))
            }
            None => {
                tracing::warn!("no [kafka] in the pipeline: decisions made over HTTP are not published");
                (None, None)
            }
        };
        let labels = match pipeline.kafka.as_ref().and_then(|k| k.labels_topic.as_ref().map(|t| (k, t))) {
            Some((k, topic)) => Some((vigil_kafka::producer(k, &broker)?, topic.clone())),
            None => None,
        };
        let api = Api {
            metrics: Metrics::new(engine.clone(), audit_stats, broker.clone()),
            broker,
            in_flight: Arc::new(Semaphore::new(config.max_concurrency)),
            kafka: pipeline.kafka.clone(),
            engine,
            config,
            verifier,
            audit,
            labels,
        };
        Ok((Arc::new(api), task))
    }

    pub fn config(&self) -> &ApiConfig {
        &self.config
    }

    /// The deadline of a request: the server's, or the client's when shorter;
    /// `None` when the client's budget does not parse.
    fn deadline(&self, headers: &HeaderMap, arrived: Instant) -> Option<tokio::time::Instant> {
        let mut ms = self.config.deadline_ms;
        if let Some(v) = headers.get(BUDGET_HEADER) {
            let budget = v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).filter(|b| *b > 0)?;
            ms = ms.min(budget);
        }
        Some(tokio::time::Instant::from_std(arrived) + Duration::from_millis(ms))
    }

    /// Counts and publishes a decision; false (nothing counted or published)
    /// when the transaction id was used before with other content.
    fn settle(&self, event: &Event, d: &Decision) -> bool {
        if d.conflict {
            self.metrics.conflicts.inc();
            return false;
        }
        self.metrics.decided(d);
        if let (Some(audit), Some(k), false) = (&self.audit, &self.kafka, d.replayed) {
            audit.record(vigil_kafka::decision_key(event, &k.decision_key), d.to_json());
        }
        true
    }
}

fn bad_budget() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_budget",
        "Vigil-Budget-Ms must be a whole number of milliseconds, 1 or more",
        None,
    )
}

fn conflict_message(d: &Decision) -> String {
    format!(
        "transaction `{}` was decided before with other content; a retry must send the same event",
        d.transaction_id
    )
}

fn engine_failure(e: &EngineError) -> Response {
    tracing::warn!(error = %e, "no decision: a dependency failed");
    retry_later("dependency_unavailable", format!("no decision could be made now: {e}"))
}

/// The request's valid W3C `traceparent` header, for its decisions.
fn traceparent(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(vigil_core::trace::TRACEPARENT)?.to_str().ok()?;
    vigil_core::trace::traceparent(value).map(str::to_owned)
}

async fn decide_one(State(api): State<Arc<Api>>, headers: HeaderMap, body: Bytes) -> Response {
    let arrived = Instant::now();
    let Some(deadline) = api.deadline(&headers, arrived) else { return bad_budget() };
    let event = match Event::from_json(&body) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_event", e.message, e.field.as_deref()),
    };
    let mut d = match api.engine.decide(&[&event], Options::within(deadline)).await.map(|mut ds| ds.pop()) {
        Ok(Some(d)) => d,
        Ok(None) => return engine_failure(&EngineError::Inputs("no decision for the event".into())),
        Err(e) => return engine_failure(&e),
    };
    d.traceparent = traceparent(&headers);
    if !api.settle(&event, &d) {
        let message = conflict_message(&d);
        return error(StatusCode::CONFLICT, "transaction_conflict", message, Some("transaction_id"));
    }
    let mut r = json_bytes(StatusCode::OK, d.to_json());
    if d.replayed {
        r.headers_mut().insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    r
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

async fn decide_batch(State(api): State<Arc<Api>>, headers: HeaderMap, body: Bytes) -> Response {
    let arrived = Instant::now();
    let Some(deadline) = api.deadline(&headers, arrived) else { return bad_budget() };
    let batch: BatchRequest<'_> = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_batch",
                format!("expected {{\"events\": [...]}}: {e}"),
                None,
            )
        }
    };
    if batch.events.is_empty() || batch.events.len() > api.config.max_batch {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_batch",
            format!("a batch holds 1 to {} events; this one has {}", api.config.max_batch, batch.events.len()),
            Some("events"),
        );
    }
    let trace = traceparent(&headers);
    let parsed: Vec<Result<Event, vigil_core::EventError>> =
        batch.events.iter().map(|raw| Event::from_json(raw.get().as_bytes())).collect();
    let valid: Vec<&Event> = parsed.iter().filter_map(|p| p.as_ref().ok()).collect();
    let mut decided = if valid.is_empty() {
        Vec::new().into_iter()
    } else {
        match api.engine.decide(&valid, Options::within(deadline)).await {
            Ok(ds) => ds.into_iter(),
            Err(e) => return engine_failure(&e),
        }
    };
    let results: Vec<Value> = parsed
        .iter()
        .map(|p| match p {
            Err(e) => {
                json!({"status": 400, "error": {"code": "invalid_event", "message": e.message, "field": e.field}})
            }
            Ok(event) => {
                // One decision per valid event, in order.
                let mut d = decided.next().expect("a decision per valid event");
                d.traceparent = trace.clone();
                if api.settle(event, &d) {
                    json!({"status": 200, "decision": d})
                } else {
                    json!({"status": 409, "error": {
                        "code": "transaction_conflict",
                        "message": conflict_message(&d),
                        "field": "transaction_id",
                    }})
                }
            }
        })
        .collect();
    (StatusCode::OK, axum::Json(json!({ "results": results }))).into_response()
}

async fn labels(State(api): State<Arc<Api>>, body: Bytes) -> Response {
    let trimmed = body.iter().position(|b| !b.is_ascii_whitespace()).map_or(&body[..0], |i| &body[i..]);
    let raws: Vec<&[u8]> = if trimmed.first() == Some(&b'[') {
        match serde_json::from_slice::<Vec<&RawValue>>(trimmed) {
            Ok(list) => list.into_iter().map(|r| r.get().as_bytes()).collect(),
            Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_label", format!("malformed JSON: {e}"), None),
        }
    } else {
        vec![trimmed]
    };
    if raws.is_empty() {
        return error(StatusCode::BAD_REQUEST, "invalid_label", "no label in the request", None);
    }
    let mut checked = Vec::with_capacity(raws.len());
    for (i, raw) in raws.iter().enumerate() {
        match vigil_features::labels::read(raw, api.engine.features()) {
            Ok(l) => checked.push(l),
            Err(e) => {
                let place = if raws.len() > 1 { format!("label {i}: ") } else { String::new() };
                let message = format!("{place}{}; nothing was recorded", e.message);
                return error(StatusCode::BAD_REQUEST, "invalid_label", message, e.field.as_deref());
            }
        }
    }
    let refs: Vec<&Label> = checked.iter().collect();
    let outcomes = match api.engine.record_labels(&refs).await {
        Ok(recorded) => recorded.outcomes,
        Err(e) => return engine_failure(&e),
    };
    if let Some((producer, topic)) = &api.labels {
        // Every label is handed to the producer first, then the deliveries are
        // awaited: a list costs about one broker round trip, not one per label.
        let payloads: Vec<Vec<u8>> = checked.iter().map(Label::to_json).collect();
        let records: Vec<(&[u8], &[u8])> =
            checked.iter().zip(&payloads).map(|(l, p)| (l.transaction_id.as_bytes(), p.as_slice())).collect();
        if vigil_kafka::publish(producer, topic, records).await.is_err() {
            return retry_later(
                "labels_topic_unavailable",
                format!(
                    "the labels were counted but could not be written to `{topic}`; retrying is safe (a label counts \
                     once)"
                ),
            );
        }
    }
    let results: Vec<Value> = checked
        .iter()
        .zip(outcomes)
        .map(|(l, o)| {
            let outcome = match o {
                LabelOutcome::Counted => "counted",
                LabelOutcome::AlreadyCounted => "already_counted",
                LabelOutcome::Recorded => "recorded",
            };
            json!({"transaction_id": l.transaction_id, "outcome": outcome})
        })
        .collect();
    (StatusCode::OK, axum::Json(json!({ "labels": results }))).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(api): State<Arc<Api>>) -> Response {
    let store = match tokio::time::timeout(Duration::from_millis(500), api.engine.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 500 ms".to_owned()),
    };
    let mut body = json!({
        "ready": store.is_ok(),
        "feature_store": store.as_ref().err().map_or("ok", String::as_str),
        "rules_version": api.engine.rules().version(),
        "model_version": api.engine.model_version(),
    });
    // The brokers take the audit trail (and labels), not the decisions: a
    // broker that is away is said here, and the API stays ready.
    if api.kafka.is_some() {
        body["kafka"] = match api.broker.recent_error(BROKER_RECENT) {
            None => json!("ok"),
            Some(e) => json!(format!(
                "{e} (within the last {} s; decisions are still served, and the audit trail waits in the \
                 producer's queue)",
                BROKER_RECENT.as_secs()
            )),
        };
    }
    let status = if store.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}

async fn render_metrics(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Err(reason) = api.verifier.metrics_allowed(authorization) {
        api.metrics.auth_failures.get_or_create(&ReasonLabels { reason: reason.as_str().to_owned() }).inc();
        tracing::info!(reason = reason.as_str(), path = "/metrics", "request refused");
        let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized", "missing or invalid credentials", None);
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let mut r = api.metrics.render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

/// Reads the body (within the size limit) and checks credentials; the handler
/// gets the same bytes back.
async fn authenticate(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, api.config.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body exceeds {} bytes", api.config.max_body_bytes),
                None,
            )
        }
    };
    let text = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let verdict = api.verifier.verify(
        text(auth::SIGNATURE_HEADER),
        text(header::AUTHORIZATION.as_str()),
        parts.method.as_str(),
        path,
        &bytes,
        unix_now_ms(),
    );
    match verdict {
        Ok(client) => {
            let mut req = Request::from_parts(parts, Body::from(bytes));
            req.extensions_mut().insert(Client(client));
            next.run(req).await
        }
        Err(reason) => {
            api.metrics.auth_failures.get_or_create(&ReasonLabels { reason: reason.as_str().to_owned() }).inc();
            tracing::info!(reason = reason.as_str(), path, "request refused");
            let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized", "missing or invalid credentials", None);
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Vigil-Signature, Bearer"));
            r
        }
    }
}

/// Sheds load beyond `api.max_concurrency` requests in progress.
async fn shed(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    match api.in_flight.clone().try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => {
            api.metrics.shed.inc();
            retry_later("overloaded", "too many requests in progress; retry shortly")
        }
    }
}

/// Latency by route and status.
async fn observe(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str()).to_owned();
    let r = next.run(req).await;
    let status = r.status().as_u16();
    let elapsed = started.elapsed();
    if status >= 500 {
        tracing::warn!(status, route = %route, "request failed");
    }
    api.metrics.requests.get_or_create(&RouteLabels { route, status }).observe(elapsed.as_secs_f64());
    r
}

/// The API's routes over a built [`Api`].
pub fn router(api: Arc<Api>) -> Router {
    let v1 = Router::new()
        .route("/v1/decisions", post(decide_one))
        .route("/v1/decisions/batch", post(decide_batch))
        .route("/v1/labels", post(labels))
        .route_layer(middleware::from_fn_with_state(api.clone(), authenticate))
        .route_layer(middleware::from_fn_with_state(api.clone(), shed));
    Router::new()
        .merge(v1)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .route_layer(middleware::from_fn_with_state(api.clone(), observe))
        .with_state(api)
}

/// Serves until `shutdown` completes, then finishes requests in progress and
/// the audit trail.
pub async fn serve(
    pipeline: &PipelineConfig,
    engine: Arc<Engine>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    let (api, audit_task) = Api::new(pipeline, engine)?;
    let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    match api.config.tls.clone() {
        None => {
            tracing::info!(%address, "serving decisions");
            axum::serve(listener, router(api)).with_graceful_shutdown(shutdown).await.map_err(ApiError::Serve)?;
        }
        Some(files) => {
            let tls = tls::load(&files).await?;
            tracing::info!(%address, cert = %files.cert_file.display(), "serving decisions over TLS");
            tls::reload_on_hangup(tls.clone(), files);
            let handle = axum_server::Handle::new();
            let stop = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                stop.graceful_shutdown(Some(Duration::from_secs(10)));
            });
            let listener = listener.into_std().map_err(ApiError::Serve)?;
            axum_server::from_tcp_rustls(listener, tls)
                .map_err(ApiError::Serve)?
                .handle(handle)
                .serve(router(api).into_make_service())
                .await
                .map_err(ApiError::Serve)?;
        }
    }
    if let Some(t) = audit_task {
        if tokio::time::timeout(Duration::from_secs(10), t).await.is_err() {
            tracing::warn!("the audit trail did not finish within 10 s of shutdown");
        }
    }
    Ok(())
}

/// Binds the configured address, with a clear error when it is taken.
pub async fn bind(config: &ApiConfig) -> Result<tokio::net::TcpListener, ApiError> {
    tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|source| ApiError::Listen { address: config.listen.clone(), source })
}
