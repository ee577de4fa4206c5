//! `/metrics`, in the Prometheus text format: the decision figures every
//! entry point reports ([`DecisionMetrics`]), and the API's own.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use vigil_core::Decision;
use vigil_engine::metrics::{counter, DecisionMetrics};
use vigil_engine::Engine;

use crate::audit::AuditStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Everything the API counts.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteLabels, Histogram>,
    pub decisions: DecisionMetrics,
    pub auth_failures: Family<ReasonLabels, Counter>,
    pub shed: Counter,
    pub conflicts: Counter,
}

/// Counters kept elsewhere (the audit publisher's, the Kafka clients'), read
/// at each scrape. Their names take the registry's `vigil_` prefix, as every
/// other metric's do.
struct Live {
    audit: Arc<AuditStats>,
    broker: Arc<vigil_kafka::BrokerHealth>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let e = &mut encoder;
        let a = &self.audit;
        counter(e, "audit_published", "Decisions delivered to the decisions topic", g(&a.published))?;
        counter(e, "audit_dropped", "Decisions dropped because the audit buffer was full", g(&a.dropped))?;
        counter(e, "audit_failed", "Decisions the broker did not take", g(&a.failed))?;
        counter(e, "kafka_errors", "Errors the API's Kafka clients met at the brokers", self.broker.errors())
    }
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    // 50 µs to about 1.6 s.
    prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 16)
}

impl Metrics {
    pub fn new(engine: Arc<Engine>, audit: Arc<AuditStats>, broker: Arc<vigil_kafka::BrokerHealth>) -> Metrics {
        let mut registry = Registry::with_prefix("vigil");
        let requests = Family::<RouteLabels, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets()));
        registry.register("http_request_duration_seconds", "Request latency by route and status", requests.clone());
        let decisions = DecisionMetrics::register(&mut registry, engine);
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register("auth_failures", "Refused requests by reason", auth_failures.clone());
        let shed = Counter::default();
        registry.register("requests_shed", "Requests refused with 503 at the concurrency bound", shed.clone());
        let conflicts = Counter::default();
        registry.register(
            "transaction_conflicts",
            "Transaction ids reused with other content (409)",
            conflicts.clone(),
        );
        registry.register_collector(Box::new(Live { audit, broker }));
        Metrics { registry, requests, decisions, auth_failures, shed, conflicts }
    }

    /// Counts a decision's outcome, rules and model score.
    pub fn decided(&self, d: &Decision) {
        self.decisions.decided(d);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
