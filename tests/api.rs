//! The HTTP API against the real Redis and broker: signed requests, idempotent
//! retries, conflicts, batches, labels, the audit trail, load shedding and the
//! degraded policy at a request's deadline.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use reqwest::StatusCode;
use serde_json::{json, Value};
use vigil_core::{Event, FeatureVector, Label, PipelineConfig};
use vigil_engine::{Engine, LabelOutcome};
use vigil_features::{FeatureError, FeatureStore, MemoryStore, Plan};

use common::TestPipeline;

const SECRET: &str = "test-secret-0123456789abcdef";
const JWT_SECRET: &str = "jwt-test-secret-0123456789";

/// The local pipeline with this test's topics and prefix, an inline client
/// secret and an HS256 JWT key (tests cannot share environment variables).
fn test_pipeline(test: &str) -> TestPipeline {
    let jwt = common::table(&[("algorithm", "HS256"), ("secret", JWT_SECRET)]);
    TestPipeline::local(test)
        .without("api.clients[0].secrets_env")
        .add("api.clients[0].secrets", vec![SECRET])
        .add("api.jwt", jwt)
}

struct Server {
    base: String,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), vigil_api::ApiError>>,
}

impl Server {
    async fn start(config: &PipelineConfig, engine: Engine) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = config.clone();
        let task = tokio::spawn(async move {
            vigil_api::serve(&config, Arc::new(engine), listener, async {
                let _ = stopped.await;
            })
            .await
        });
        Server { base, http: reqwest::Client::new(), stop: Some(stop), task }
    }

    /// A server over the test pipeline's Redis and broker, with its topics made.
    async fn on_redis_and_kafka(test: &str) -> (PipelineConfig, Server) {
        let config = test_pipeline(test).config();
        vigil_kafka::create_topics(config.kafka.as_ref().unwrap(), 1).await.unwrap();
        let server = Server::start(&config, Engine::connect(&config).await.unwrap()).await;
        (config, server)
    }

    /// A request signed now (a fresh signature each call).
    async fn signed(&self, path: &str, body: &str) -> reqwest::Response {
        let header = sign(path, body, now_ms());
        self.send(path, body, &[("vigil-signature", header)]).await
    }

    async fn send(&self, path: &str, body: &str, headers: &[(&str, String)]) -> reqwest::Response {
        let mut req = self.http.post(format!("{}{path}", self.base)).body(body.to_owned());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        req.send().await.unwrap()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.base)).send().await.unwrap()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn sign(path: &str, body: &str, t: i64) -> String {
    vigil_api::auth::sign("checkout", SECRET.as_bytes(), t, "POST", path, body.as_bytes())
}

fn event(id: &str, minute: u32, amount: &str, card: &str, terminal: &str) -> String {
    json!({
        "transaction_id": id,
        "timestamp": format!("2026-01-05T10:{minute:02}:00Z"),
        "amount": amount,
        "currency": "EUR",
        "card_id": card,
        "merchant_id": "m-api",
        "terminal_id": terminal,
    })
    .to_string()
}

async fn body(r: reqwest::Response) -> Value {
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_requests_decide_once_and_everything_else_is_refused() {
    let (config, server) = Server::on_redis_and_kafka("api").await;
    let kafka = config.kafka.clone().unwrap();
    let path = "/v1/decisions";

    // A signed request gets its decision.
    let e1 = event("api-1", 0, "25.00", "c-api", "t-api");
    let header = sign(path, &e1, now_ms());
    let first = server.send(path, &e1, &[("vigil-signature", header.clone())]).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first = body(first).await;
    assert_eq!(first["transaction_id"], "api-1");
    assert_eq!(first["features"]["card_count_10m"], 0);
    assert!(first["model_version"].as_str().unwrap().starts_with("card-fraud"));

    // Unsigned, tampered, stale, replayed, unknown: 401, and nothing more said.
    let refused = [
        server.send(path, &e1, &[]).await,
        server.send(path, &e1.replace("25.00", "1.00"), &[("vigil-signature", sign(path, &e1, now_ms()))]).await,
        server.send(path, &e1, &[("vigil-signature", sign(path, &e1, now_ms() - 10 * 60_000))]).await,
        server.send(path, &e1, &[("vigil-signature", header.clone())]).await,
        server.send(path, &e1, &[("vigil-signature", sign("/v1/labels", &e1, now_ms()))]).await,
        server.send(path, &e1, &[("authorization", "Bearer not.a.token".into())]).await,
    ];
    for r in refused {
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            body(r).await,
            json!({"error": {"code": "unauthorized", "message": "missing or invalid credentials"}})
        );
    }

    // A retry (signed again) gets the same decision and counts nothing.
    let retry = server.signed(path, &e1).await;
    assert_eq!(retry.status(), StatusCode::OK);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let retry = body(retry).await;
    for field in ["decision", "score", "reasons", "features", "model_score", "rules_version"] {
        assert_eq!(retry[field], first[field], "{field}");
    }
    assert_eq!(retry["replayed"], true);
    let e2 = event("api-2", 1, "30.00", "c-api", "t-api");
    // With W3C trace context: it is carried onto the decision.
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced = [("vigil-signature", sign(path, &e2, now_ms())), ("traceparent", trace.to_owned())];
    let second = body(server.send(path, &e2, &traced).await).await;
    assert_eq!(second["features"]["card_count_10m"], 1, "the retry was counted: {second}");
    assert_eq!(second["traceparent"], trace, "{second}");
    assert!(first.get("traceparent").is_none(), "{first}");

    // The same id with other content: 409.
    let reused = server.signed(path, &e1.replace("25.00", "999.00")).await;
    assert_eq!(reused.status(), StatusCode::CONFLICT);
    assert_eq!(body(reused).await["error"]["code"], "transaction_conflict");

    // A bearer JWT is the other way in.
    let claims = json!({"sub": "ledger", "exp": now_ms() / 1000 + 60});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let e3 = event("api-3", 2, "12.00", "c-api-2", "t-api");
    let by_jwt = server.send(path, &e3, &[("authorization", format!("Bearer {token}"))]).await;
    assert_eq!(by_jwt.status(), StatusCode::OK);

    // Batches: one result per event, in order.
    let batch = format!(
        r#"{{"events": [{}, {}, {}, {}]}}"#,
        event("api-4", 3, "5.00", "c-api", "t-api"),
        r#"{"transaction_id": "api-bad", "timestamp": "2026-01-05T10:03:00Z", "amount": "-1", "currency": "EUR"}"#,
        e1,
        e1.replace("25.00", "26.00"),
    );
    let results = body(server.signed("/v1/decisions/batch", &batch).await).await;
    let statuses: Vec<i64> =
        results["results"].as_array().unwrap().iter().map(|r| r["status"].as_i64().unwrap()).collect();
    assert_eq!(statuses, [200, 400, 200, 409], "{results}");
    assert_eq!(results["results"][0]["decision"]["features"]["card_count_10m"], 2);
    assert_eq!(results["results"][1]["error"]["field"], "amount");
    assert_eq!(results["results"][2]["decision"]["replayed"], true);

    // Bad input says where and why.
    let bad = body(server.signed(path, r#"{"transaction_id": "x"}"#).await).await;
    assert_eq!(bad["error"]["code"], "invalid_event", "{bad}");
    let budget = server
        .send(path, &e2, &[("vigil-signature", sign(path, &e2, now_ms())), ("vigil-budget-ms", "soon".into())])
        .await;
    assert_eq!(budget.status(), StatusCode::BAD_REQUEST);
    let huge = format!(r#"{{"pad": "{}"}}"#, "x".repeat(300 * 1024));
    assert_eq!(server.signed(path, &huge).await.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Operations.
    assert_eq!(server.get("/healthz").await.status(), StatusCode::OK);
    let ready = body(server.get("/readyz").await).await;
    assert_eq!(ready["ready"], true, "{ready}");
    assert!(ready["model_version"].is_string());
    let metrics = server.get("/metrics").await.text().await.unwrap();
    for line in [
        "vigil_decisions_total{decision=\"approve\"}",
        "vigil_auth_failures_total{reason=\"stale\"} 1",
        "vigil_auth_failures_total{reason=\"replayed\"} 1",
        "vigil_auth_failures_total{reason=\"bad_signature\"} 2",
        "vigil_auth_failures_total{reason=\"missing\"} 1",
        "vigil_auth_failures_total{reason=\"bad_token\"} 1",
        "vigil_transaction_conflicts_total 2",
        "vigil_http_request_duration_seconds_count{route=\"/v1/decisions\",status=\"200\"}",
        "vigil_feature_store_errors_total 0",
    ] {
        assert!(metrics.contains(line), "no `{line}` in\n{metrics}");
    }

    // One audit record per decision made (retries and conflicts add none).
    server.stop().await;
    let records = common::read_all(&kafka.decisions_topic, 4, Duration::from_secs(3), Duration::from_secs(60)).await;
    let mut ids: Vec<String> = records
        .iter()
        .map(|m| {
            let d: Value = serde_json::from_slice(rdkafka::Message::payload(m).unwrap()).unwrap();
            d["transaction_id"].as_str().unwrap().to_owned()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["api-1", "api-2", "api-3", "api-4"]);
    common::clean_redis(&config.store.key_prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_reach_the_next_decision_once() {
    let (config, server) = Server::on_redis_and_kafka("api-labels").await;
    let kafka = config.kafka.clone().unwrap();
    let before = body(server.signed("/v1/decisions", &event("lb-1", 0, "40.00", "c-lb", "t-lb")).await).await;
    assert_eq!(before["features"]["terminal_frauds_7d"], 0);

    let label = json!({
        "transaction_id": "lb-1", "label": "fraud", "reported_at": "2026-01-05T10:05:00Z",
        "timestamp": "2026-01-05T10:00:00Z", "source": "chargeback", "terminal_id": "t-lb", "card_id": "c-lb",
    })
    .to_string();
    let recorded = body(server.signed("/v1/labels", &label).await).await;
    assert_eq!(recorded, json!({"labels": [{"transaction_id": "lb-1", "outcome": "counted"}]}));
    let again = body(server.signed("/v1/labels", &format!("[{label}]")).await).await;
    assert_eq!(again["labels"][0]["outcome"], "already_counted");
    let missing_entity = json!({"transaction_id": "lb-2", "label": "fraud", "reported_at": "2026-01-05T10:05:00Z"});
    let refused = server.signed("/v1/labels", &missing_entity.to_string()).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body(refused).await["error"]["field"], "terminal_id");
    // The matured terminal risk counts frauds by when they happened.
    let undated = json!({"transaction_id": "lb-2", "label": "fraud", "reported_at": "2026-01-05T10:05:00Z", "terminal_id": "t-lb"});
    let refused = body(server.signed("/v1/labels", &undated.to_string()).await).await;
    assert_eq!(refused["error"]["field"], "timestamp", "{refused}");

    let after = body(server.signed("/v1/decisions", &event("lb-3", 10, "40.00", "c-lb2", "t-lb")).await).await;
    assert_eq!(after["features"]["terminal_frauds_7d"], 1, "{after}");
    server.stop().await;

    // The label went to the labels topic too, once per request.
    let topic = kafka.labels_topic.clone().unwrap();
    let records = common::read_all(&topic, 2, Duration::from_secs(3), Duration::from_secs(60)).await;
    assert_eq!(records.len(), 2);
    let l = Label::from_json(rdkafka::Message::payload(&records[0]).unwrap()).unwrap();
    assert_eq!(l.transaction_id, "lb-1");
    common::clean_redis(&config.store.key_prefix).await;
}

/// With `[store] mode = "owned"` the server owns the pipeline's feature
/// state: decisions count in its memory and its journal in Redis, retries and
/// reused ids are answered as on the shared store, also by a server that took
/// over; and a server whose state another one took stops being ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owned_pipeline_is_served_idempotently_and_one_owner_at_a_time() {
    let config = test_pipeline("api-owned").add("store.mode", "owned").config();
    vigil_kafka::create_topics(config.kafka.as_ref().unwrap(), 1).await.unwrap();
    let path = "/v1/decisions";
    let server = Server::start(&config, Engine::connect(&config).await.unwrap()).await;
    let e1 = event("own-1", 0, "25.00", "c-own", "t-own");
    let first = body(server.signed(path, &e1).await).await;
    assert_eq!(first["features"]["card_count_10m"], 0, "{first}");
    let retry = server.signed(path, &e1).await;
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(body(retry).await["features"], first["features"]);
    let second = body(server.signed(path, &event("own-2", 1, "30.00", "c-own", "t-own")).await).await;
    assert_eq!(second["features"]["card_count_10m"], 1, "the retry counted nothing: {second}");
    let reused = server.signed(path, &e1.replace("25.00", "999.00")).await;
    assert_eq!(reused.status(), StatusCode::CONFLICT);
    assert_eq!(body(server.get("/readyz").await).await["ready"], true);

    // A second server takes the state over: it answers the retry with the
    // first features and counts on from there; the first is fenced.
    let next = Server::start(&config, Engine::connect(&config).await.unwrap()).await;
    let retry = next.signed(path, &e1).await;
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(body(retry).await["features"], first["features"]);
    let third = body(next.signed(path, &event("own-3", 2, "35.00", "c-own", "t-own")).await).await;
    assert_eq!(third["features"]["card_count_10m"], 2, "{third}");
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready = body(ready).await;
    assert!(ready["feature_store"].as_str().unwrap().contains("another process took the feature state"), "{ready}");
    let fenced = server.signed(path, &event("own-4", 3, "5.00", "c-own", "t-own")).await;
    assert_eq!(fenced.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body(next.get("/readyz").await).await["ready"], true);
    server.stop().await;
    next.stop().await;
    common::clean_redis(&config.store.key_prefix).await;
}

/// A feature store that answers after `delay`: Redis made slow.
struct Slow {
    inner: MemoryStore,
    delay: Duration,
}

#[async_trait]
impl FeatureStore for Slow {
    async fn process(&self, events: &[&Event]) -> Result<Vec<FeatureVector>, FeatureError> {
        tokio::time::sleep(self.delay).await;
        self.inner.process(events).await
    }

    async fn apply_labels(&self, labels: &[&Label]) -> Result<Vec<LabelOutcome>, FeatureError> {
        self.inner.apply_labels(labels).await
    }
}

fn slow_engine(config: &PipelineConfig, delay: Duration) -> Engine {
    let store = Slow { inner: MemoryStore::new(Plan::new(config.features.clone()), 3600), delay };
    Engine::new(config, Arc::new(store)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_and_a_slow_store_meets_the_degraded_policy_at_the_deadline() {
    let slow = test_pipeline("api-slow")
        .set("api.max_concurrency", 1)
        .set("api.deadline_ms", 400)
        .set("store.degraded", "review")
        // No Kafka: nothing to publish to, the API still serves.
        .without("kafka");
    let config = slow.config();
    let server = Server::start(&config, slow_engine(&config, Duration::from_secs(5))).await;

    let e = event("slow-1", 0, "10.00", "c-slow", "t-slow");
    let started = std::time::Instant::now();
    let (held, shed) = tokio::join!(server.signed("/v1/decisions", &e), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.signed("/v1/decisions", &event("slow-2", 1, "10.00", "c-slow", "t-slow")).await
    });
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.headers()["retry-after"], "1");
    assert_eq!(body(shed).await["error"]["code"], "overloaded");
    let held = body(held).await;
    assert!(started.elapsed() < Duration::from_secs(3), "the deadline did not cut the slow store");
    assert_eq!(held["degraded"], true, "{held}");
    assert_eq!(held["decision"], "review");
    assert_eq!(held["reasons"][0]["code"], "FEATURES_UNAVAILABLE");

    // A client's shorter budget.
    let t = std::time::Instant::now();
    let e3 = event("slow-3", 2, "10.00", "c-slow", "t-slow");
    let quick = server
        .send(
            "/v1/decisions",
            &e3,
            &[("vigil-signature", sign("/v1/decisions", &e3, now_ms())), ("vigil-budget-ms", "20".into())],
        )
        .await;
    assert_eq!(body(quick).await["degraded"], true);
    assert!(t.elapsed() < Duration::from_millis(300), "{:?}", t.elapsed());
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("vigil_requests_shed_total 1"), "{metrics}");
    // Line by line: the names are the documented ones, not prefixed twice.
    assert!(metrics.lines().any(|l| l == "vigil_feature_store_deadline_cuts_total 2"), "{metrics}");
    server.stop().await;

    // Under `fail`, no decision without features: 503, retry later.
    let config = slow.set("store.degraded", "fail").config();
    let server = Server::start(&config, slow_engine(&config, Duration::from_secs(5))).await;
    let failed = server.signed("/v1/decisions", &e).await;
    assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body(failed).await["error"]["code"], "dependency_unavailable");
    server.stop().await;
}

/// `[api.tls]`: the API answers over HTTPS with the configured certificate, and
/// `[api] metrics_token` keeps `/metrics` for whoever holds the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_configured_certificate_and_metrics_behind_a_token() {
    let dir = std::env::temp_dir().join(format!("vigil-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, issued.cert.pem()).unwrap();
    std::fs::write(&key, issued.signing_key.serialize_pem()).unwrap();
    let token = "metrics-token-0123456789abcdef";
    let (cert_file, key_file) = (cert.display().to_string(), key.display().to_string());
    let tls = common::table(&[("cert_file", &cert_file), ("key_file", &key_file)]);
    let config = test_pipeline("api-tls").without("kafka").add("api.metrics_token", token).add("api.tls", tls).config();
    let mut server = Server::start(&config, Engine::in_memory(&config).unwrap()).await;
    let port = server.base.rsplit(':').next().unwrap().to_owned();
    let plain = reqwest::Client::new();
    server.base = format!("https://localhost:{port}");
    server.http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(issued.cert.pem().as_bytes()).unwrap())
        .https_only(true)
        .build()
        .unwrap();

    let e = event("tls-1", 0, "12.00", "c-tls", "t-tls");
    let decided = server.signed("/v1/decisions", &e).await;
    assert_eq!(decided.status(), StatusCode::OK);
    assert_eq!(body(decided).await["transaction_id"], "tls-1");
    // Plain HTTP to the same port gets no answer that is a decision.
    let refused = plain.get(format!("http://127.0.0.1:{port}/healthz")).send().await;
    assert!(refused.is_err() || refused.unwrap().status() != StatusCode::OK, "plain HTTP was served");
    // A client that does not trust the certificate does not get through.
    let untrusting = reqwest::Client::builder().tls_built_in_root_certs(false).build().unwrap();
    assert!(untrusting.get(format!("{}/healthz", server.base)).send().await.is_err());

    let metrics = |auth: Option<String>| {
        let mut req = server.http.get(format!("{}/metrics", server.base));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    let none = metrics(None).await.unwrap();
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    assert_eq!(metrics(Some(format!("Bearer {token}x"))).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let read = metrics(Some(format!("Bearer {token}"))).await.unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    let text = read.text().await.unwrap();
    assert!(text.contains(r#"vigil_auth_failures_total{reason="missing"} 1"#), "{text}");
    assert!(text.contains(r#"vigil_auth_failures_total{reason="bad_token"} 1"#), "{text}");
    assert!(server.get("/healthz").await.status().is_success(), "/healthz stays open");
    server.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Brokers that are away: the API keeps deciding and stays ready, `/readyz`
/// says what the brokers answered, `/metrics` counts it, and the log is not
/// flooded (the rate limit itself is a unit test of `vigil-kafka`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_away_are_said_in_readiness_and_counted() {
    let config = test_pipeline("api-no-broker").set("kafka.brokers", "127.0.0.1:1").config();
    let server = Server::start(&config, Engine::in_memory(&config).unwrap()).await;
    let started = std::time::Instant::now();
    let ready = loop {
        let r = server.get("/readyz").await;
        assert_eq!(r.status(), StatusCode::OK, "the API stays ready without its brokers");
        let ready = body(r).await;
        if ready["kafka"] != "ok" || started.elapsed() > Duration::from_secs(20) {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let said = ready["kafka"].as_str().unwrap();
    assert!(said.contains("decisions are still served"), "{ready}");
    let decided = server.signed("/v1/decisions", &event("away-1", 0, "10.00", "c-away", "t-away")).await;
    assert_eq!(decided.status(), StatusCode::OK);
    let metrics = server.get("/metrics").await.text().await.unwrap();
    let errors = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vigil_kafka_errors_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no vigil_kafka_errors_total in {metrics}"));
    assert!(errors >= 1, "{metrics}");
    server.stop().await;
}
