//! `/metrics`, in the Prometheus text format.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use vigil_core::Decision;
use vigil_engine::Engine;

use crate::audit::AuditStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: String,
    pub shadow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DisagreementLabels {
    pub decision: String,
    pub challenger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Everything the API counts.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteLabels, Histogram>,
    pub decisions: Family<OutcomeLabels, Counter>,
    pub rule_hits: Family<RuleLabels, Counter>,
    pub model_score: Histogram,
    pub challenger_score: Histogram,
    /// Decisions the challenger would have made otherwise, by (champion, challenger) outcome.
    pub challenger_disagreements: Family<DisagreementLabels, Counter>,
    pub auth_failures: Family<ReasonLabels, Counter>,
    pub shed: Counter,
    pub conflicts: Counter,
}

/// Counters kept elsewhere (the engine's feature-store counters, the audit
/// publisher's, the Kafka clients'), read at each scrape. Their names take
/// the registry's `vigil_` prefix, as every other metric's do.
struct Live {
    engine: Arc<Engine>,
    audit: Arc<AuditStats>,
    broker: Arc<vigil_kafka::BrokerHealth>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.engine.store_stats();
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let e = &mut encoder;
        counter(e, "feature_store_errors", "Feature-store calls that failed", g(&s.errors))?;
        counter(e, "feature_store_timeouts", "Feature-store calls that timed out", g(&s.timeouts))?;
        counter(e, "feature_store_deadline_cuts", "Feature-store calls cut at a request deadline", g(&s.deadline_cut))?;
        counter(e, "feature_store_breaker_opened", "Times the circuit breaker opened", g(&s.breaker_opened))?;
        counter(e, "feature_store_short_circuited", "Calls refused by the open breaker", g(&s.short_circuited))?;
        counter(e, "degraded_decisions", "Decisions made without features", g(&s.degraded_decisions))?;
        let a = &self.audit;
        counter(e, "audit_published", "Decisions delivered to the decisions topic", g(&a.published))?;
        counter(e, "audit_dropped", "Decisions dropped because the audit buffer was full", g(&a.dropped))?;
        counter(e, "audit_failed", "Decisions the broker did not take", g(&a.failed))?;
        counter(e, "kafka_errors", "Errors the API's Kafka clients met at the brokers", self.broker.errors())?;
        let breaker = ConstGauge::new(i64::from(self.engine.breaker_open()));
        breaker.encode(e.encode_descriptor(
            "feature_store_breaker_open",
            "1 while the feature store's circuit breaker is open",
            None,
            breaker.metric_type(),
        )?)?;
        Ok(())
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
        let decisions = Family::<OutcomeLabels, Counter>::default();
        registry.register("decisions", "Decisions by outcome", decisions.clone());
        let rule_hits = Family::<RuleLabels, Counter>::default();
        registry.register("rule_hits", "Rules that fired, by rule", rule_hits.clone());
        let model_score = Histogram::new((1..=20).map(|i| f64::from(i) * 0.05));
        registry.register("model_score", "Distribution of model scores", model_score.clone());
        let challenger_score = Histogram::new((1..=20).map(|i| f64::from(i) * 0.05));
        registry.register(
            "challenger_score",
            "Distribution of the challenger model's scores (reported, never deciding)",
            challenger_score.clone(),
        );
        let challenger_disagreements = Family::<DisagreementLabels, Counter>::default();
        registry.register(
            "challenger_disagreements",
            "Decisions the challenger model would have made otherwise",
            challenger_disagreements.clone(),
        );
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
        registry.register_collector(Box::new(Live { engine, audit, broker }));
        Metrics {
            registry,
            requests,
            decisions,
            rule_hits,
            model_score,
            challenger_score,
            challenger_disagreements,
            auth_failures,
            shed,
            conflicts,
        }
    }

    /// Counts a decision's outcome, rules and model score.
    pub fn decided(&self, d: &Decision) {
        self.decisions.get_or_create(&OutcomeLabels { decision: d.decision.as_str().to_owned() }).inc();
        for r in &d.reasons {
            let labels = RuleLabels { rule: r.rule.clone(), shadow: r.shadow.to_string() };
            self.rule_hits.get_or_create(&labels).inc();
        }
        if let Some(s) = d.model_score {
            self.model_score.observe(s);
        }
        if let Some(c) = &d.challenger {
            self.challenger_score.observe(c.score);
            if c.decision != d.decision {
                let labels = DisagreementLabels {
                    decision: d.decision.as_str().to_owned(),
                    challenger: c.decision.as_str().to_owned(),
                };
                self.challenger_disagreements.get_or_create(&labels).inc();
            }
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
