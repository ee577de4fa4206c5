//! Vigil's engine: where features, rules and the model meet to make a decision,
//! between the stages (features, rules, model) and the entry points.
//!
//! [`Engine::decide`] is the one path from validated events to decisions: the
//! Kafka stream, the HTTP API and the demo call it online (features read and
//! counted by the store, within a deadline for the API); backtests and
//! evaluations call it with features computed over history, rule tests with
//! features and a model score given ([`Options`]). The decision itself is a
//! pure function ([`policy`]). Rules and models sit behind `ArcSwap`s so that a
//! reload swaps them atomically while decisions keep flowing; a rule set or
//! model that does not load is refused and the last good one keeps serving
//! ([`watch`] reloads them when their files change).
//!
//! The feature store is reached through a circuit breaker ([`breaker`]); when
//! it fails, the pipeline's degraded policy decides without features, or the
//! error is returned for the caller to retry.

pub mod breaker;
mod gate;
pub mod metrics;
pub mod policy;
pub mod ruletest;
pub mod scoring;
pub mod watch;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use vigil_core::pipeline::DegradedPolicy;
use vigil_core::{Decision, Event, FeatureDef, FeatureNames, FeatureValue, FeatureVector, Label, PipelineConfig};
use vigil_features::labels::Recorded;
use vigil_features::{FeatureError, FeatureStore, MemoryStore, Plan};
use vigil_model::ModelError;
use vigil_rules::{RuleErrors, RuleSet, Schema};

use breaker::{Breaker, StoreStats};
use gate::Gate;
pub use policy::{Policy, Scores, DEGRADED_CODE};
pub use scoring::{is_model_input, model_inputs, InputMap, ModelRole, MODEL_FACTORS};
use scoring::{Models, ScoringModel};
pub use vigil_features::LabelOutcome;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Features(#[from] FeatureError),
    #[error("rules do not check:\n{0}")]
    Rules(#[from] RuleErrors),
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Given inputs that do not match the events (a bug in the caller).
    #[error("internal error (a bug): {0}")]
    Inputs(String),
}

/// Where a call's features (and model scores) come from.
#[derive(Debug, Clone, Copy, Default)]
pub enum Inputs<'a> {
    /// Read and counted by the feature store: the live path.
    #[default]
    Store,
    /// Computed elsewhere, one per event (offline, over history): the store
    /// is not touched; the loaded models score them.
    Features(&'a [FeatureVector]),
    /// Features and model scores given, one per event (rule tests): no store,
    /// no model.
    FeaturesAndScores(&'a [FeatureVector], &'a [Option<f64>]),
}

/// How a call to [`Engine::decide`] decides.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options<'a> {
    pub inputs: Inputs<'a>,
    /// When the feature store has not answered by then, the call is abandoned
    /// and the pipeline's degraded policy decides (or, under `fail`, a
    /// timeout error is returned).
    pub deadline: Option<tokio::time::Instant>,
}

impl<'a> Options<'a> {
    /// Online, waiting as long as the store's own timeout allows.
    pub fn online() -> Options<'a> {
        Options::default()
    }

    /// Online, abandoning the store at `deadline`.
    pub fn within(deadline: tokio::time::Instant) -> Options<'a> {
        Options { inputs: Inputs::Store, deadline: Some(deadline) }
    }

    /// Over features in hand, scored by the loaded models.
    pub fn offline(features: &'a [FeatureVector]) -> Options<'a> {
        Options { inputs: Inputs::Features(features), deadline: None }
    }

    /// Over features and model scores in hand.
    pub fn given(features: &'a [FeatureVector], model_scores: &'a [Option<f64>]) -> Options<'a> {
        Options { inputs: Inputs::FeaturesAndScores(features, model_scores), deadline: None }
    }
}

/// A batch's features from [`Engine::gather`], to be decided by
/// [`Engine::finish`].
#[derive(Debug)]
pub struct Gathered {
    features: Vec<FeatureVector>,
    /// The store failed and the degraded policy decides without features.
    degraded: bool,
    /// When the batch was asked for: decisions report their latency from it.
    started: Instant,
}

/// Turns events into decisions.
pub struct Engine {
    gate: Gate,
    schema: Schema,
    /// The features' names in name order, shared by every decision.
    names: FeatureNames,
    rules: ArcSwap<RuleSet>,
    models: Models,
    policy: Policy,
    reloads: Reloads,
}

/// Reloads of the rules and models, by what was reloaded and whether it was
/// taken: every path (file watch, SIGHUP) counts here, for the metrics.
#[derive(Debug, Default)]
pub struct Reloads {
    counts: [[AtomicU64; 2]; 3],
}

/// What a reload reloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    Rules,
    Model,
    Challenger,
}

impl Reloaded {
    pub const ALL: [Reloaded; 3] = [Reloaded::Rules, Reloaded::Model, Reloaded::Challenger];

    pub fn as_str(self) -> &'static str {
        match self {
            Reloaded::Rules => "rules",
            Reloaded::Model => "model",
            Reloaded::Challenger => "challenger",
        }
    }
}

impl Reloads {
    fn count<T, E>(&self, what: Reloaded, result: &Result<T, E>) {
        self.counts[what as usize][usize::from(result.is_err())].fetch_add(1, Ordering::Relaxed);
    }

    /// `(taken, refused)` reloads of `what` so far.
    pub fn of(&self, what: Reloaded) -> (u64, u64) {
        let [ok, refused] = &self.counts[what as usize];
        (ok.load(Ordering::Relaxed), refused.load(Ordering::Relaxed))
    }
}

impl Engine {
    /// Builds an engine for a validated pipeline, connecting the configured
    /// feature store (and failing clearly, not hanging, when it is unreachable).
    pub async fn connect(config: &PipelineConfig) -> Result<Engine, EngineError> {
        let store = vigil_features::connect(&config.store, Plan::new(config.features.clone())).await?;
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
        let models = Models::default();
        if let Some(m) = &config.model {
            models.champion.store(Arc::new(Some(ScoringModel::load(&schema.features, &m.path)?)));
            if let Some(path) = &m.challenger {
                models.challenger.store(Arc::new(Some(ScoringModel::load(&schema.features, path)?)));
            }
        }
        let breaker = Breaker::new(
            config.store.breaker_failures,
            std::time::Duration::from_millis(config.store.breaker_cool_down_ms),
        );
        Ok(Engine {
            gate: Gate { store, breaker, stats: StoreStats::default() },
            rules: ArcSwap::from_pointee(rules),
            models,
            policy: Policy::of(config),
            names: FeatureNames::new(schema.features.iter().map(|f| f.name.as_str())),
            schema,
            reloads: Reloads::default(),
        })
    }

    /// Decides a batch of events, in order. Online, the batch is one
    /// feature-store call and events of a batch see the earlier ones in their
    /// features; a store that fails leaves the decision to the pipeline's
    /// degraded policy (module docs).
    pub async fn decide(&self, events: &[&Event], options: Options<'_>) -> Result<Vec<Decision>, EngineError> {
        let started = Instant::now();
        let given = |what: &str, n: usize| {
            if n == events.len() {
                Ok(())
            } else {
                Err(EngineError::Inputs(format!("{} events but {n} {what}", events.len())))
            }
        };
        match options.inputs {
            Inputs::Store => {
                let gathered = self.gather(events, options.deadline).await?;
                self.finish(events, gathered)
            }
            Inputs::Features(features) => {
                given("feature vectors", features.len())?;
                Ok(self.decide_all(events, features, None, false, started))
            }
            Inputs::FeaturesAndScores(features, scores) => {
                given("feature vectors", features.len())?;
                given("model scores", scores.len())?;
                Ok(self.decide_all(events, features, Some(scores), false, started))
            }
        }
    }

    /// The first half of an online [`Engine::decide`]: the batch's features
    /// read and counted by the store (or, after a store failure the degraded
    /// policy covers, none). [`Engine::finish`] decides them, in another task
    /// if the caller likes: the stream reads and counts the next batch while
    /// this one is scored.
    pub async fn gather(
        &self,
        events: &[&Event],
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Gathered, EngineError> {
        let started = Instant::now();
        match self.gate.features(events, deadline).await {
            Ok(features) => Ok(Gathered { features, degraded: false, started }),
            Err(e) => self.without_features(events, e, started),
        }
    }

    /// The second half of an online [`Engine::decide`]: the policy over the
    /// features [`Engine::gather`] returned for the same `events`.
    pub fn finish(&self, events: &[&Event], gathered: Gathered) -> Result<Vec<Decision>, EngineError> {
        if gathered.features.len() != events.len() {
            return Err(EngineError::Inputs(format!(
                "{} events but {} gathered feature vectors",
                events.len(),
                gathered.features.len()
            )));
        }
        Ok(self.decide_all(events, &gathered.features, None, gathered.degraded, gathered.started))
    }

    /// Gathers `events` without their features, after the feature store
    /// failed with `e`: the pipeline's degraded policy will decide (marking
    /// the decisions degraded), or, under `fail` or for an error a retry
    /// cannot mend, the error is returned.
    fn without_features(&self, events: &[&Event], e: FeatureError, started: Instant) -> Result<Gathered, EngineError> {
        if self.policy.degraded == DegradedPolicy::Fail || !e.is_retryable() {
            return Err(e.into());
        }
        tracing::warn!(error = %e, events = events.len(), "deciding without features (degraded policy)");
        self.gate.stats.degraded_decisions.fetch_add(events.len() as u64, Ordering::Relaxed);
        let missing = FeatureVector {
            values: vec![FeatureValue::Missing; self.schema.features.len()],
            ..FeatureVector::default()
        };
        Ok(Gathered { features: vec![missing; events.len()], degraded: true, started })
    }

    /// The policy over features in hand, scored by the loaded models unless
    /// `given_scores` holds each event's model score.
    fn decide_all(
        &self,
        events: &[&Event],
        features: &[FeatureVector],
        given_scores: Option<&[Option<f64>]>,
        degraded: bool,
        started: Instant,
    ) -> Vec<Decision> {
        let rules = self.rules.load();
        let models = self.models.current();
        events
            .iter()
            .zip(features)
            .enumerate()
            .map(|(i, (event, fv))| {
                let scores = match given_scores {
                    Some(s) => Scores {
                        scored: s[i].map(|score| scoring::Explained {
                            score,
                            baseline: None,
                            factors: Vec::new(),
                            rest: None,
                        }),
                        ..Scores::default()
                    },
                    None => models.scores(event, fv),
                };
                let given = policy::Given { event, features: fv, scores, degraded };
                let mut d = self.policy.decide(&rules, &self.names, given);
                d.latency_us = started.elapsed().as_micros() as u64;
                d
            })
            .collect()
    }

    /// Records checked labels (`vigil_features::labels::read`) for the label
    /// features, once per transaction id. Labels are not held back by the
    /// circuit breaker: the stream retries them.
    pub async fn record_labels(&self, labels: &[&Label]) -> Result<Recorded, EngineError> {
        Ok(vigil_features::labels::record(self.gate.store.as_ref(), labels).await?)
    }

    /// The rule set deciding now.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.load_full()
    }

    /// The engine's feature definitions, in feature-vector order.
    pub fn features(&self) -> &[FeatureDef] {
        &self.schema.features
    }

    /// The version of the model scoring now, when one is configured.
    pub fn model_version(&self) -> Option<String> {
        self.models.version(ModelRole::Champion)
    }

    /// The version of the challenger model, when one is configured.
    pub fn challenger_version(&self) -> Option<String> {
        self.models.version(ModelRole::Challenger)
    }

    /// Loads rules from `path` and swaps them in if they check; otherwise the
    /// current rules keep serving and the errors are returned.
    pub fn reload_rules(&self, path: &Path) -> Result<String, EngineError> {
        let result = RuleSet::load(path, &self.schema).map(|rules| {
            let version = rules.version().to_owned();
            self.rules.store(Arc::new(rules));
            version
        });
        self.reloads.count(Reloaded::Rules, &result);
        Ok(result?)
    }

    /// Loads a model file and swaps it in if it loads and fits the pipeline.
    pub fn reload_model(&self, path: &Path) -> Result<String, EngineError> {
        self.swap_in(ModelRole::Champion, path)
    }

    /// Loads a challenger model file and swaps it in if it loads and fits the
    /// pipeline; otherwise the current challenger keeps being scored.
    pub fn reload_challenger(&self, path: &Path) -> Result<String, EngineError> {
        self.swap_in(ModelRole::Challenger, path)
    }

    fn swap_in(&self, role: ModelRole, path: &Path) -> Result<String, EngineError> {
        let result = ScoringModel::load(&self.schema.features, path).map(|m| {
            let version = m.version().to_owned();
            self.models.slot(role).store(Arc::new(Some(m)));
            version
        });
        let what = match role {
            ModelRole::Champion => Reloaded::Model,
            ModelRole::Challenger => Reloaded::Challenger,
        };
        self.reloads.count(what, &result);
        Ok(result?)
    }

    /// The rule and model reloads tried so far, taken or refused.
    pub fn reloads(&self) -> &Reloads {
        &self.reloads
    }

    /// Whether the feature store answers.
    pub async fn ping(&self) -> Result<(), EngineError> {
        Ok(self.gate.store.ping().await?)
    }

    /// What the engine met at the feature store.
    pub fn store_stats(&self) -> &StoreStats {
        &self.gate.stats
    }

    /// Whether the feature store's circuit breaker is open now.
    pub fn breaker_open(&self) -> bool {
        self.gate.breaker.is_open()
    }
}

#[cfg(test)]
mod tests;
