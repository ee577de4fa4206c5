//! The review settings, from the pipeline's `[review]` section: which entity
//! owns a case, how long money is held and what the deadline does, the claim
//! lease, the four-eyes policy and the queues, whose conditions are checked
//! here against the pipeline's features, each error placed in the file.

use std::sync::Arc;
use std::time::Duration;

use rust_decimal::Decimal;
use vigil_core::pipeline::{CaseEntity, HoldAction, PipelineConfig, ReviewConfig, WebhookDef, DEFAULT_QUEUE};
use vigil_core::{Action, Decision, Event, FeatureValue, Verdict};
use vigil_rules::{Condition, Context, Lists, RuleErrors, Schema};

/// A queue, its condition checked.
#[derive(Debug, Clone)]
pub struct Queue {
    pub name: String,
    pub priority: i32,
    when: Option<Condition>,
    /// One of these reason codes must have fired, when any are given.
    pub reasons: Vec<String>,
    pub min_score: Option<f64>,
    /// The pipeline's feature names in its order, the order `when` reads
    /// them in (one list shared by every queue).
    features: Arc<[String]>,
}

/// When a verdict needs a second analyst before it moves the money.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FourEyes {
    /// Any verdict on a payment above this amount.
    pub above: Option<Decimal>,
    /// A `genuine` verdict on a payment that a rule wanted declined.
    pub release_of_decline: bool,
}

impl FourEyes {
    /// Whether this verdict on this payment needs a second analyst.
    pub fn needed(&self, amount: Decimal, wanted_decline: bool, verdict: Verdict) -> bool {
        self.above.is_some_and(|limit| amount > limit)
            || (self.release_of_decline && wanted_decline && verdict == Verdict::Genuine)
    }
}

/// How review decisions become cases and how cases are worked.
#[derive(Debug, Clone)]
pub struct ReviewSettings {
    /// The entity that owns a case. A payment without it gets a case of its
    /// own (`entity_kind` `transaction`).
    pub entity: CaseEntity,
    /// How long a payment's money is held for review, from when the review
    /// store first receives it.
    pub hold: Duration,
    /// What happens to a payment whose hold runs out before its verdict.
    pub on_deadline: HoldAction,
    /// How long a claim holds a case unless renewed.
    pub lease: Duration,
    pub four_eyes: FourEyes,
    /// Highest priority first.
    pub queues: Vec<Queue>,
    /// Who is told when a case opens or is resolved (the outbox's rows are
    /// written per receiver, in the change's own transaction).
    pub webhooks: Vec<WebhookDef>,
}

impl Default for ReviewSettings {
    fn default() -> ReviewSettings {
        let c = ReviewConfig::default();
        ReviewSettings {
            entity: c.entity,
            hold: Duration::from_secs(c.hold_s),
            on_deadline: c.on_deadline,
            lease: Duration::from_secs(c.lease_s),
            four_eyes: FourEyes::default(),
            queues: Vec::new(),
            webhooks: Vec::new(),
        }
    }
}

impl ReviewSettings {
    /// The settings of a pipeline's `[review]` section, its queues' conditions
    /// checked against the pipeline's features (every error at once, each
    /// placed in the pipeline file).
    pub fn from_pipeline(config: &PipelineConfig) -> Result<ReviewSettings, RuleErrors> {
        let r = &config.review;
        let schema = Schema { features: config.features.clone() };
        // The rule set's lists (`@name`), when a queue's condition needs them.
        let lists = if r.queues.iter().any(|q| q.when.is_some()) {
            vigil_rules::load_lists(&config.rules_path)?
        } else {
            Lists::new()
        };
        let mut errors = Vec::new();
        let mut queues = Vec::with_capacity(r.queues.len());
        let features: Arc<[String]> = config.features.iter().map(|f| f.name.clone()).collect();
        for q in &r.queues {
            let when = match &q.when {
                Some(w) => match Condition::compile(&config.file, w.line, w.column, &w.text, &schema, &lists) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        errors.extend(e.0);
                        None
                    }
                },
                None => None,
            };
            queues.push(Queue {
                name: q.name.clone(),
                priority: q.priority,
                when,
                reasons: q.reasons.clone(),
                min_score: q.min_score,
                features: features.clone(),
            });
        }
        if !errors.is_empty() {
            return Err(RuleErrors(errors));
        }
        Ok(ReviewSettings {
            entity: r.entity,
            hold: Duration::from_secs(r.hold_s),
            on_deadline: r.on_deadline,
            lease: Duration::from_secs(r.lease_s),
            four_eyes: FourEyes { above: r.four_eyes_above, release_of_decline: r.four_eyes_release_of_decline },
            queues,
            webhooks: r.webhooks.clone(),
        })
    }

    /// The queue of highest priority whose every criterion holds for this
    /// decision, with its priority; `default` and 0 when none does.
    pub fn queue_of(&self, d: &Decision, event: &Event) -> (&str, i32) {
        let mut features: Option<Vec<FeatureValue>> = None;
        for q in &self.queues {
            if q.min_score.is_some_and(|min| d.score < min) {
                continue;
            }
            if !q.reasons.is_empty() && !d.reasons.iter().any(|r| q.reasons.contains(&r.code)) {
                continue;
            }
            if let Some(when) = &q.when {
                let values = features.get_or_insert_with(|| {
                    q.features.iter().map(|n| d.features.get(n).cloned().unwrap_or(FeatureValue::Missing)).collect()
                });
                let ctx = Context { event, features: values, model_score: d.model_score };
                if !when.holds(&ctx) {
                    continue;
                }
            }
            return (&q.name, q.priority);
        }
        (DEFAULT_QUEUE, 0)
    }
}

/// Whether a rule that decides (not a shadow) asked for `decline`.
pub(crate) fn wanted_decline(d: &Decision) -> bool {
    d.reasons.iter().any(|r| r.action == Action::Decline && !r.shadow)
}
