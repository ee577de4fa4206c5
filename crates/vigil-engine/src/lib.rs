//! Vigil's engine: where features, rules and the model meet to make a decision.
//!
//! [`Engine::decide_batch`] is the one path from validated events to decisions;
//! the Kafka stream, the demo and (later) the HTTP API all call it. Rules and model
//! sit behind [`ArcSwap`]s so that a reload swaps them atomically while decisions
//! keep flowing; a rule set or model that does not load is refused and the last
//! good one keeps serving.
//!
//! The decision policy (documented in `docs/rules.md`):
//! 1. the risk score is the sum of the fired rules' scores plus the model score
//!    times the model weight; shadow rules are reported but add nothing;
//! 2. any fired `decline` rule declines;
//! 3. otherwise any fired `approve` rule approves (allow-lists);
//! 4. otherwise a score at or above `decline_score` declines;
//! 5. otherwise a fired `review` rule, or a score at or above `review_score`,
//!    sends to review; anything else is approved.

pub mod breaker;
pub mod ruletest;
pub mod watch;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use rust_decimal::prelude::ToPrimitive;
use vigil_core::pipeline::{DegradedPolicy, StoreBackend, Thresholds};
use vigil_core::{
    Action, ChallengerScore, Decision, Event, FeatureValue, FeatureVector, Label, ModelFactor, PipelineConfig, Reason,
};
pub use vigil_features::LabelOutcome;
use vigil_features::{FeatureError, FeatureStore, MemoryStore, Plan, RedisStore};
use vigil_model::{Model, ModelError, TrainedModel};
use vigil_rules::{Context, RuleErrors, RuleSet, Schema};

use breaker::{Breaker, StoreStats};

/// Reason code of decisions the `review` degraded policy turned from approve.
pub const DEGRADED_CODE: &str = "FEATURES_UNAVAILABLE";

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Features(#[from] FeatureError),
    #[error("rules do not check:\n{0}")]
    Rules(#[from] RuleErrors),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Where a model input comes from.
#[derive(Debug, Clone, Copy)]
enum Input {
    Amount,
    Feature(usize),
}

struct ScoringModel {
    model: TrainedModel,
    inputs: Vec<Input>,
}

/// The model scores behind one decision: the champion's (version, score and
/// factors) and the challenger's (version and score).
struct Scores<'a> {
    model_version: Option<&'a str>,
    scored: Option<(f64, Vec<ModelFactor>)>,
    challenger: Option<(&'a str, f64)>,
}

/// Turns events into decisions.
pub struct Engine {
    store: Arc<dyn FeatureStore>,
    breaker: Breaker,
    store_stats: StoreStats,
    degraded: DegradedPolicy,
    schema: Schema,
    rules: ArcSwap<RuleSet>,
    model: ArcSwap<Option<ScoringModel>>,
    challenger: ArcSwap<Option<ScoringModel>>,
    model_weight: f64,
    thresholds: Thresholds,
}

/// The [`MODEL_FACTORS`] largest positive contributions `parts` visits, largest
/// first, and how many there are; kept in place, since this runs per event.
fn strongest(parts: impl FnOnce(&mut dyn FnMut(usize, f64))) -> ([(usize, f64); MODEL_FACTORS], usize) {
    let mut top = [(0usize, 0.0f64); MODEL_FACTORS];
    let mut n = 0;
    parts(&mut |i, c| {
        if c > 0.0 && (n < MODEL_FACTORS || c > top[MODEL_FACTORS - 1].1) {
            let at = top[..n].partition_point(|(_, t)| *t >= c);
            n = (n + 1).min(MODEL_FACTORS);
            top.copy_within(at..n - 1, at + 1);
            top[at] = (i, c);
        }
    });
    (top, n)
}

/// How many of the model's strongest inputs a decision names.
pub const MODEL_FACTORS: usize = 3;

/// Names a model may take as inputs, in the order training lays them out:
/// `amount`, then the declared features that are numbers ([`is_model_input`]).
pub fn model_inputs(features: &[vigil_core::FeatureDef]) -> Vec<&str> {
    std::iter::once("amount").chain(features.iter().filter(|f| is_model_input(f)).map(|f| f.name.as_str())).collect()
}

/// Whether a feature can be a model input: every one but text (`previous`).
pub fn is_model_input(feature: &vigil_core::FeatureDef) -> bool {
    feature.aggregate.kind() != vigil_core::feature::ValueKind::Text
}

impl Engine {
    /// Builds an engine for a validated pipeline, connecting the configured
    /// feature store (and failing clearly, not hanging, when it is unreachable).
    pub async fn connect(config: &PipelineConfig) -> Result<Engine, EngineError> {
        let plan = Plan::new(config.features.clone());
        let s = &config.store;
        let store: Arc<dyn FeatureStore> = match &s.backend {
            StoreBackend::Memory => Arc::new(MemoryStore::new(plan, s.dedup_ttl_s)),
            StoreBackend::Redis { url } => {
                Arc::new(RedisStore::connect(url, plan, &s.key_prefix, s.dedup_ttl_s, s.timeout_ms).await?)
            }
            StoreBackend::RedisCluster { nodes } => {
                Arc::new(RedisStore::connect_cluster(nodes, plan, &s.key_prefix, s.dedup_ttl_s, s.timeout_ms).await?)
            }
        };
        Engine::new(config, store)
    }

    /// Builds an engine over a fresh in-memory feature store, whatever the
    /// pipeline's backend: for rule tests, backtests and other offline work that
    /// gives features rather than reading them.
    pub fn in_memory(config: &PipelineConfig) -> Result<Engine, EngineError> {
        let plan = Plan::new(config.features.clone());
        Engine::new(config, Arc::new(MemoryStore::new(plan, config.store.dedup_ttl_s)))
    }

    /// Builds an engine for a validated pipeline over a connected feature store.
    pub fn new(config: &PipelineConfig, store: Arc<dyn FeatureStore>) -> Result<Engine, EngineError> {
        let schema = Schema { features: config.features.clone() };
        let rules = RuleSet::load(&config.rules_path, &schema)?;
        let model = match &config.model {
            Some(m) => Some(Self::load_model_for(&schema, &m.path)?),
            None => None,
        };
        let challenger = match config.model.as_ref().and_then(|m| m.challenger.as_deref()) {
            Some(path) => Some(Self::load_model_for(&schema, path)?),
            None => None,
        };
        Ok(Engine {
            store,
            breaker: Breaker::new(
                config.store.breaker_failures,
                std::time::Duration::from_millis(config.store.breaker_cool_down_ms),
            ),
            store_stats: StoreStats::default(),
            degraded: config.store.degraded,
            rules: ArcSwap::from_pointee(rules),
            model: ArcSwap::from_pointee(model),
            challenger: ArcSwap::from_pointee(challenger),
            model_weight: config.model.as_ref().map_or(0.0, |m| m.weight),
            thresholds: config.thresholds,
            schema,
        })
    }

    fn load_model_for(schema: &Schema, path: &Path) -> Result<ScoringModel, EngineError> {
        let model = vigil_model::load(path, &model_inputs(&schema.features))?;
        let inputs = model
            .inputs()
            .iter()
            .map(|name| match schema.features.iter().position(|f| &f.name == name) {
                Some(i) => Input::Feature(i),
                None => Input::Amount,
            })
            .collect();
        Ok(ScoringModel { model, inputs })
    }

    /// The rule set deciding now.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.load_full()
    }

    /// The version of the model scoring now, when one is configured.
    pub fn model_version(&self) -> Option<String> {
        Self::version_in(&self.model)
    }

    fn version_in(slot: &ArcSwap<Option<ScoringModel>>) -> Option<String> {
        slot.load().as_ref().as_ref().map(|m| m.model.version().to_owned())
    }

    /// Loads a model file into `slot` if it loads and fits the pipeline.
    fn swap_in(&self, slot: &ArcSwap<Option<ScoringModel>>, path: &Path) -> Result<String, EngineError> {
        let m = Self::load_model_for(&self.schema, path)?;
        let version = m.model.version().to_owned();
        slot.store(Arc::new(Some(m)));
        Ok(version)
    }

    /// Loads rules from `path` and swaps them in if they check; otherwise the
    /// current rules keep serving and the errors are returned.
    pub fn reload_rules(&self, path: &Path) -> Result<String, EngineError> {
        let rules = RuleSet::load(path, &self.schema)?;
        let version = rules.version().to_owned();
        self.rules.store(Arc::new(rules));
        Ok(version)
    }

    /// The version of the challenger model, when one is configured.
    pub fn challenger_version(&self) -> Option<String> {
        Self::version_in(&self.challenger)
    }

    /// Loads a model file and swaps it in if it loads and fits the pipeline.
    pub fn reload_model(&self, path: &Path) -> Result<String, EngineError> {
        self.swap_in(&self.model, path)
    }

    /// Loads a challenger model file and swaps it in if it loads and fits the
    /// pipeline; otherwise the current challenger keeps being scored.
    pub fn reload_challenger(&self, path: &Path) -> Result<String, EngineError> {
        self.swap_in(&self.challenger, path)
    }

    /// Whether the feature store answers.
    pub async fn ping(&self) -> Result<(), EngineError> {
        Ok(self.store.ping().await?)
    }

    /// Decides a batch: one feature-store call for all, then rules and model per
    /// event. Events of a batch see the earlier ones in their features.
    pub async fn decide_batch(&self, events: &[&Event]) -> Result<Vec<Decision>, EngineError> {
        self.decide_batch_by(events, None).await
    }

    /// [`Engine::decide_batch`] within a deadline: when the feature store has
    /// not answered by then, the call is abandoned and the pipeline's degraded
    /// policy decides (or, under `fail`, a timeout error is returned). An
    /// abandoned call may still have counted the events; a retry then finds
    /// them counted and gets their first features back.
    pub async fn decide_batch_by(
        &self,
        events: &[&Event],
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Vec<Decision>, EngineError> {
        let started = Instant::now();
        match self.features_by(events, deadline).await {
            Ok(features) => Ok(self.decide_features(events, &features, false, started)),
            Err(e) => self.decide_degraded(events, e, started),
        }
    }

    /// Decides `events` without their features, after the feature store
    /// failed with `e`: the pipeline's degraded policy decides (marking the
    /// decisions degraded), or, under `fail` or for an error a retry cannot
    /// mend, the error is returned.
    fn decide_degraded(
        &self,
        events: &[&Event],
        e: FeatureError,
        started: Instant,
    ) -> Result<Vec<Decision>, EngineError> {
        if self.degraded == DegradedPolicy::Fail || !e.is_retryable() {
            return Err(e.into());
        }
        tracing::warn!(error = %e, events = events.len(), "deciding without features (degraded policy)");
        self.store_stats.degraded_decisions.fetch_add(events.len() as u64, Ordering::Relaxed);
        let missing = FeatureVector {
            values: vec![FeatureValue::Missing; self.schema.features.len()],
            ..FeatureVector::default()
        };
        Ok(self.decide_features(events, &vec![missing; events.len()], true, started))
    }

    /// Rules and models over features in hand.
    fn decide_features(
        &self,
        events: &[&Event],
        features: &[FeatureVector],
        degraded: bool,
        started: Instant,
    ) -> Vec<Decision> {
        let rules = self.rules.load();
        let (model, challenger) = (self.model.load(), self.challenger.load());
        events
            .iter()
            .zip(features)
            .map(|(e, fv)| {
                let scores = Self::scores(model.as_ref().as_ref(), challenger.as_ref().as_ref(), e, fv);
                self.decide_with(&rules, scores, e, fv, degraded, started)
            })
            .collect()
    }

    async fn features_by(
        &self,
        events: &[&Event],
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Vec<FeatureVector>, FeatureError> {
        let Some(deadline) = deadline else { return self.features_for(events).await };
        let asked = tokio::time::Instant::now();
        match tokio::time::timeout_at(deadline, self.features_for(events)).await {
            Ok(r) => r,
            Err(_) => {
                self.store_stats.deadline_cut.fetch_add(1, Ordering::Relaxed);
                Err(FeatureError::Timeout(asked.elapsed().as_millis() as u64))
            }
        }
    }

    /// Features from the store, through the circuit breaker.
    async fn features_for(&self, events: &[&Event]) -> Result<Vec<FeatureVector>, FeatureError> {
        if !self.breaker.admit() {
            self.store_stats.short_circuited.fetch_add(1, Ordering::Relaxed);
            return Err(FeatureError::Unavailable("circuit breaker open after repeated failures".into()));
        }
        match self.store.process(events).await {
            Ok(f) => {
                self.breaker.success();
                Ok(f)
            }
            Err(e) => {
                if e.is_retryable() {
                    let counter = match e {
                        FeatureError::Timeout(_) => &self.store_stats.timeouts,
                        _ => &self.store_stats.errors,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if self.breaker.failure() {
                        self.store_stats.breaker_opened.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "feature store circuit breaker opened");
                    }
                }
                Err(e)
            }
        }
    }

    /// Checks that a label carries what the label features need: a fraud label
    /// must name every entity field they count by.
    pub fn check_label(&self, label: &Label) -> Result<(), vigil_core::EventError> {
        label.missing_for(&self.schema.features)
    }

    /// Applies checked labels to the label features, once per transaction id.
    /// Labels are not held back by the circuit breaker: the stream retries them.
    pub async fn apply_labels(&self, labels: &[&Label]) -> Result<Vec<LabelOutcome>, EngineError> {
        Ok(self.store.apply_labels(labels).await?)
    }

    /// What the engine met at the feature store.
    pub fn store_stats(&self) -> &StoreStats {
        &self.store_stats
    }

    /// Whether the feature store's circuit breaker is open now.
    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Decides one event.
    pub async fn decide(&self, event: &Event) -> Result<Decision, EngineError> {
        let mut out = self.decide_batch(&[event]).await?;
        Ok(out.remove(0))
    }

    /// The model's inputs for one event, in the model's order.
    fn inputs_for(m: &ScoringModel, event: &Event, fv: &FeatureVector) -> Vec<f64> {
        m.inputs
            .iter()
            .map(|i| match i {
                Input::Amount => event.amount.to_f64().unwrap_or(f64::NAN),
                Input::Feature(j) => fv.values.get(*j).and_then(|v| v.as_f64()).unwrap_or(f64::NAN),
            })
            .collect()
    }

    /// The model's score alone (the challenger needs no explanation).
    fn score_only(m: &ScoringModel, event: &Event, fv: &FeatureVector) -> f64 {
        m.model.score(&Self::inputs_for(m, event, fv))
    }

    /// The champion's score and factors and the challenger's score, for one event.
    fn scores<'a>(
        model: Option<&'a ScoringModel>,
        challenger: Option<&'a ScoringModel>,
        event: &Event,
        fv: &FeatureVector,
    ) -> Scores<'a> {
        Scores {
            model_version: model.map(|m| m.model.version()),
            scored: model.map(|m| Self::model_score(m, event, fv)),
            challenger: challenger.map(|c| (c.model.version(), Self::score_only(c, event, fv))),
        }
    }

    /// The model's score and the inputs that pushed it up most.
    fn model_score(m: &ScoringModel, event: &Event, fv: &FeatureVector) -> (f64, Vec<ModelFactor>) {
        let inputs = Self::inputs_for(m, event, fv);
        let (top, n) = strongest(|visit| m.model.contributions(&inputs, visit));
        let names = m.model.inputs();
        let factors = top[..n]
            .iter()
            .map(|(i, c)| ModelFactor { input: names[*i].clone(), contribution: (c * 1e4).round() / 1e4 })
            .collect();
        (m.model.score(&inputs), factors)
    }

    /// Decides with given features and model score, touching no store: the
    /// decision policy as rule tests and backtests exercise it.
    pub fn decide_given(&self, event: &Event, features: &FeatureVector, model_score: Option<f64>) -> Decision {
        let rules = self.rules.load();
        let scored = model_score.map(|s| (s, Vec::new()));
        let scores = Scores { model_version: None, scored, challenger: None };
        self.decide_with(&rules, scores, event, features, false, Instant::now())
    }

    /// Decides with given features, scoring them with the loaded model (if any):
    /// what a live decision would have been, for backtests over history.
    pub fn decide_offline(&self, event: &Event, features: &FeatureVector) -> Decision {
        let rules = self.rules.load();
        let (model, challenger) = (self.model.load(), self.challenger.load());
        let scores = Self::scores(model.as_ref().as_ref(), challenger.as_ref().as_ref(), event, features);
        self.decide_with(&rules, scores, event, features, false, Instant::now())
    }

    /// The engine's feature definitions, in feature-vector order.
    pub fn features(&self) -> &[vigil_core::FeatureDef] {
        &self.schema.features
    }

    fn decide_with(
        &self,
        rules: &RuleSet,
        scores: Scores<'_>,
        event: &Event,
        fv: &FeatureVector,
        degraded: bool,
        started: Instant,
    ) -> Decision {
        let Scores { model_version, scored, challenger } = scores;
        let (model_score, model_factors) = match scored {
            Some((s, f)) => (Some(s), f),
            None => (None, Vec::new()),
        };
        let ctx = Context { event, features: &fv.values, model_score };
        let mut reasons = Vec::new();
        rules.evaluate(&ctx, |_, r| {
            reasons.push(Reason {
                rule: r.name.clone(),
                code: r.code.clone(),
                action: r.action,
                score: r.score,
                shadow: r.shadow,
            });
        });
        let live = || reasons.iter().filter(|r| !r.shadow);
        let rules_score = live().map(|r| r.score).sum::<f64>();
        let any = |a: Action| live().any(|r| r.action == a);
        // Decided without features under the `review` policy: never approve.
        let hold = degraded && self.degraded == DegradedPolicy::Review;
        let unheld = |score: f64| {
            if any(Action::Decline) {
                Action::Decline
            } else if any(Action::Approve) {
                Action::Approve
            } else if score >= self.thresholds.decline_score {
                Action::Decline
            } else if any(Action::Review) || score >= self.thresholds.review_score {
                Action::Review
            } else {
                Action::Approve
            }
        };
        let policy = |score: f64| match unheld(score) {
            Action::Approve if hold => Action::Review,
            a => a,
        };
        let score = rules_score + model_score.unwrap_or(0.0) * self.model_weight;
        let decision = policy(score);
        let by_rules = unheld(score);
        let challenger = challenger.map(|(version, s)| ChallengerScore {
            model_version: version.to_owned(),
            score: s,
            decision: policy(rules_score + s * self.model_weight),
        });
        // The rules that made the decision first, then the others by severity,
        // shadow rules last; file order within each (the sort is stable).
        reasons.sort_by_key(|r| (r.shadow, r.action != by_rules, std::cmp::Reverse(r.action)));
        if decision != by_rules {
            reasons.insert(
                0,
                Reason {
                    rule: "degraded_policy".into(),
                    code: DEGRADED_CODE.into(),
                    action: Action::Review,
                    score: 0.0,
                    shadow: false,
                },
            );
        }
        let features: BTreeMap<String, FeatureValue> =
            self.schema.features.iter().zip(&fv.values).map(|(d, v)| (d.name.clone(), v.clone())).collect();
        Decision {
            transaction_id: event.transaction_id.clone(),
            decision,
            score,
            reasons,
            rules_version: rules.version().to_owned(),
            model_version: model_version.map(str::to_owned),
            model_score,
            model_factors,
            challenger,
            features,
            replayed: fv.replayed,
            degraded,
            conflict: fv.replayed && fv.fingerprint != 0 && fv.fingerprint != event.fingerprint(),
            latency_us: started.elapsed().as_micros() as u64,
        }
    }
}

#[cfg(test)]
mod tests;
