//! `vigil run`'s operations endpoint, for scrapers and orchestrators:
//! - `/metrics` (behind a bearer token when one is given): the decision figures every entry point reports
//!   ([`vigil_engine::metrics::DecisionMetrics`], the names `vigil serve`
//!   uses), and the stream's own: events read, decided, dead-lettered and
//!   replayed (dead letters by input, reason and field), store retries, deliveries, committed batches, labels, broker
//!   errors, rebalances by kind, revoke drains, records let go at a revoke,
//!   partitions held, consumer lag per partition, and
//!   the event-to-decision and batch latency histograms;
//! - `/healthz`: the process answers;
//! - `/readyz`: 200 when the consumer holds partitions and the feature store's
//!   breaker is closed, else 503, each part named in the JSON body.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use vigil_engine::metrics::{counter, gauge, DecisionMetrics, MetricsToken};
use vigil_engine::Engine;

use crate::{DeadLetter, Stats};

/// What the stream counts into the registry as it decides: the decision
/// figures every entry point reports, and the latency histograms (seconds).
#[derive(Debug)]
pub struct Metrics {
    pub decisions: DecisionMetrics,
    /// From each event's record timestamp (its producer's, or the broker's
    /// with `LogAppendTime`) to its decision, before the decision is produced.
    pub event_to_decision: Histogram,
    /// From a batch's first look to its decisions (features, rules, model).
    pub batch: Histogram,
}

/// A registry with [`Metrics`] in it, and the [`Stats`] that count into them.
pub fn stats_with_metrics(engine: &Arc<Engine>) -> (Stats, Registry) {
    let mut registry = Registry::with_prefix("vigil");
    let decisions = DecisionMetrics::register(&mut registry, engine.clone());
    // 1 ms to about 65 s.
    let event_to_decision = Histogram::new(exponential_buckets(0.001, 2.0, 17));
    registry.register(
        "stream_event_to_decision_seconds",
        "From an event's record timestamp to its decision",
        event_to_decision.clone(),
    );
    // 100 µs to about 3 s.
    let batch = Histogram::new(exponential_buckets(0.000_1, 2.0, 15));
    registry.register("stream_batch_seconds", "From a batch's first look to its decisions", batch.clone());
    let metrics = Some(Arc::new(Metrics { decisions, event_to_decision, batch }));
    (Stats { metrics, ..Stats::default() }, registry)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: i32,
}

/// The stream's counters, read at each scrape.
struct Stream(Arc<Stats>);

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stream")
    }
}

impl Collector for Stream {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let e = &mut encoder;
        counter(e, "stream_events_read", "Records read from the input and labels topics", g(&s.consumed))?;
        counter(e, "stream_events_decided", "Events decided (redeliveries included)", g(&s.decided))?;
        counter(e, "stream_replayed", "Redelivered events given their first decision again", g(&s.replayed))?;
        counter(e, "stream_store_retries", "Batches retried after a feature-store failure", g(&s.store_retries))?;
        counter(e, "stream_records_delivered", "Decisions and dead letters the broker acknowledged", g(&s.delivered))?;
        counter(e, "stream_batches_committed", "Batches whose offsets were stored", g(&s.committed_batches))?;
        counter(e, "stream_labels_counted", "Fraud labels counted by the label features", g(&s.labels_counted))?;
        counter(e, "stream_labels_unchanged", "Labels that changed nothing", g(&s.labels_unchanged))?;
        counter(e, "kafka_errors", "Errors the stream's Kafka clients met at the brokers", s.broker.errors())?;
        counter(
            e,
            "stream_released",
            "Records let go undecided at a revoke (their next owner reads them)",
            g(&s.released),
        )?;
        let mut family = e.encode_descriptor(
            "stream_dead_letters",
            "Records sent to the dead-letter topic, by what they were read as, why, and the field at fault",
            None,
            MetricType::Counter,
        )?;
        let mut dead = s.dead_letters();
        // The usual ones from the start, so that a first dead letter is an increase.
        for input in ["event", "label"] {
            for reason in ["malformed_json", "invalid"] {
                let key = DeadLetter { input, reason, field: "" };
                if !dead.iter().any(|(k, _)| *k == key) {
                    dead.push((key, 0));
                }
            }
        }
        dead.sort();
        for (k, n) in dead {
            let labels = [("input", k.input), ("reason", k.reason), ("field", k.field)];
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        let (assigns, revokes, failed) = s.broker.rebalances_by_kind();
        let mut family = e.encode_descriptor(
            "stream_rebalances",
            "Consumer-group rebalances this consumer went through, by kind",
            None,
            MetricType::Counter,
        )?;
        for (kind, n) in [("assign", assigns), ("revoke", revokes), ("error", failed)] {
            ConstCounter::new(n).encode(family.encode_family(&[("kind", kind)])?)?;
        }
        let (drained, timed_out) = s.drain.outcomes();
        let mut family = e.encode_descriptor(
            "stream_revoke_drains",
            "Revokes that waited for the in-flight batches: drained, or timed out (the next owner then replays)",
            None,
            MetricType::Counter,
        )?;
        for (outcome, n) in [("drained", drained), ("timed_out", timed_out)] {
            ConstCounter::new(n).encode(family.encode_family(&[("outcome", outcome)])?)?;
        }
        let held = i64::try_from(s.broker.assigned()).unwrap_or(i64::MAX);
        gauge(e, "stream_partitions_assigned", "Partitions this consumer holds", held)?;
        let lag = s.broker.lag();
        let mut family = e.encode_descriptor(
            "stream_consumer_lag",
            "Records behind the end of each held partition (librdkafka's statistics, every second)",
            None,
            MetricType::Gauge,
        )?;
        for (topic, partition, records) in lag {
            let labels = PartitionLabels { topic, partition };
            ConstGauge::new(records).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

struct Ops {
    registry: Registry,
    token: Option<MetricsToken>,
    stats: Arc<Stats>,
    engine: Arc<Engine>,
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the process
/// ends; `registry` is [`stats_with_metrics`]'s, `stats` the run's. With a
/// `token`, `/metrics` answers only `Authorization: Bearer TOKEN` (the
/// orchestrator's probes stay open).
pub fn serve(
    listener: tokio::net::TcpListener,
    mut registry: Registry,
    token: Option<MetricsToken>,
    stats: Arc<Stats>,
    engine: Arc<Engine>,
) {
    registry.register_collector(Box::new(Stream(stats.clone())));
    let ops = Arc::new(Ops { registry, token, stats, engine });
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(ops);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the operations endpoint stopped");
        }
    });
}

async fn metrics(State(ops): State<Arc<Ops>>, headers: HeaderMap) -> Response {
    if let Some(token) = &ops.token {
        let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if let Err(why) = token.check(authorization) {
            tracing::info!(reason = ?why, path = "/metrics", "request refused");
            let mut r = (StatusCode::UNAUTHORIZED, "missing or invalid credentials\n").into_response();
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &ops.registry);
    let mut r = out.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    let assigned = ops.stats.broker.assigned();
    let breaker_open = ops.engine.breaker_open();
    let ready = assigned > 0 && !breaker_open;
    let body = serde_json::json!({
        "ready": ready,
        "partitions_assigned": assigned,
        "feature_store": if breaker_open { "breaker open" } else { "ok" },
        "model": ops.engine.model_version(),
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}
