//! The figures every entry point reports about its decisions and its feature
//! store, under one set of names and labels: `vigil serve`'s `/metrics` and
//! `vigil run`'s register the same [`DecisionMetrics`] in their registries
//! (prefixed `vigil_`), then add their own (routes, consumer lag...).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use vigil_core::Decision;

use crate::{Engine, Reloaded};

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

/// Decisions by outcome, rule hits, model and challenger scores; and, read at
/// each scrape, the engine's feature-store counters and breaker.
pub struct DecisionMetrics {
    pub decisions: Family<OutcomeLabels, Counter>,
    pub rule_hits: Family<RuleLabels, Counter>,
    pub model_score: Histogram,
    pub challenger_score: Histogram,
    /// Decisions the challenger would have made otherwise, by (champion, challenger) outcome.
    pub challenger_disagreements: Family<DisagreementLabels, Counter>,
}

impl std::fmt::Debug for DecisionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DecisionMetrics")
    }
}

/// The bearer token a `/metrics` endpoint asks for, kept as a digest: a token
/// sent is compared in constant time, whatever its length.
#[derive(Clone)]
pub struct MetricsToken(Vec<u8>);

impl std::fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsToken(..)")
    }
}

/// Why a `/metrics` request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A bearer token that is not the one configured.
    Wrong,
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn token_digest(token: &[u8]) -> HmacSha256 {
    use hmac::Mac as _;
    let mut m = HmacSha256::new_from_slice(b"vigil-metrics-token").expect("HMAC accepts any key length");
    m.update(token);
    m
}

impl MetricsToken {
    pub fn new(token: &[u8]) -> MetricsToken {
        use hmac::Mac as _;
        MetricsToken(token_digest(token).finalize().into_bytes().to_vec())
    }

    /// Whether a request with this `Authorization` header value may read.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), TokenRefusal> {
        use hmac::Mac as _;
        let token = authorization.and_then(|a| a.strip_prefix("Bearer ")).ok_or(TokenRefusal::Missing)?;
        token_digest(token.trim().as_bytes()).verify_slice(&self.0).map_err(|_| TokenRefusal::Wrong)
    }
}

/// The engine's own counters, read at each scrape.
struct Store(Arc<Engine>);

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// Encodes a counter kept elsewhere, under `name` (the registry adds its prefix).
pub fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

/// Encodes a gauge kept elsewhere, under `name`.
pub fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for Store {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.store_stats();
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let e = &mut encoder;
        counter(e, "feature_store_errors", "Feature-store calls that failed", g(&s.errors))?;
        counter(e, "feature_store_timeouts", "Feature-store calls that timed out", g(&s.timeouts))?;
        counter(e, "feature_store_deadline_cuts", "Feature-store calls cut at a request deadline", g(&s.deadline_cut))?;
        counter(e, "feature_store_breaker_opened", "Times the circuit breaker opened", g(&s.breaker_opened))?;
        counter(e, "feature_store_short_circuited", "Calls refused by the open breaker", g(&s.short_circuited))?;
        counter(e, "degraded_decisions", "Decisions made without features", g(&s.degraded_decisions))?;
        let open = i64::from(self.0.breaker_open());
        gauge(e, "feature_store_breaker_open", "1 while the feature store's circuit breaker is open", open)?;
        let mut family = e.encode_descriptor(
            "reloads",
            "Rule and model reloads (file changes and SIGHUP), taken (`ok`) or refused while the last good one serves",
            None,
            MetricType::Counter,
        )?;
        for what in Reloaded::ALL {
            let (ok, refused) = self.0.reloads().of(what);
            for (outcome, n) in [("ok", ok), ("refused", refused)] {
                ConstCounter::new(n).encode(family.encode_family(&[("what", what.as_str()), ("outcome", outcome)])?)?;
            }
        }
        Ok(())
    }
}

impl DecisionMetrics {
    /// Registers the decision figures and the engine's store counters in `registry`.
    pub fn register(registry: &mut Registry, engine: Arc<Engine>) -> DecisionMetrics {
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
        registry.register_collector(Box::new(Store(engine)));
        DecisionMetrics { decisions, rule_hits, model_score, challenger_score, challenger_disagreements }
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
}
