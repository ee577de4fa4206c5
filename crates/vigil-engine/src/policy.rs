//! The decision policy, pure: an event, its features, the rules and the model
//! scores in; a decision out, with no IO (documented in `docs/rules.md`):
//! 1. the risk score is the sum of the fired rules' scores plus the model score
//!    times the model weight; shadow rules are reported but add nothing;
//! 2. any fired `decline` rule declines;
//! 3. otherwise any fired `approve` rule approves (allow-lists);
//! 4. otherwise a score at or above `decline_score` declines;
//! 5. otherwise a fired `review` rule, or a score at or above `review_score`,
//!    sends to review; anything else is approved.
//!
//! Decided without features under the `review` degraded policy, a decision is
//! never an approval: it goes to review, saying so ([`DEGRADED_CODE`]).

use vigil_core::pipeline::{DecisionFeatures, DegradedPolicy, Thresholds};
use vigil_core::{Action, ChallengerScore, Decision, Event, FeatureNames, FeatureVector, Features};
use vigil_core::{PipelineConfig, Reason};
use vigil_rules::{Context, RuleSet};

pub use crate::scoring::Explained;

/// Reason code of decisions the `review` degraded policy turned from approve.
pub const DEGRADED_CODE: &str = "FEATURES_UNAVAILABLE";

/// The model scores behind one decision: the champion's (version, score and
/// factors) and the challenger's (version and score).
#[derive(Debug, Default)]
pub struct Scores<'a> {
    pub model_version: Option<&'a str>,
    pub scored: Option<Explained>,
    pub challenger: Option<(&'a str, f64)>,
}

/// What a decision is made of besides the rules.
#[derive(Debug)]
pub struct Given<'a> {
    pub event: &'a Event,
    pub features: &'a FeatureVector,
    pub scores: Scores<'a>,
    /// Decided without features, after the feature store failed.
    pub degraded: bool,
}

/// The pipeline's thresholds, model weight and degraded policy.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub thresholds: Thresholds,
    /// Risk points a model score of 1.0 adds.
    pub model_weight: f64,
    pub degraded: DegradedPolicy,
    /// Which decisions carry the feature values.
    pub features: DecisionFeatures,
}

impl Policy {
    pub fn of(config: &PipelineConfig) -> Policy {
        Policy {
            thresholds: config.thresholds,
            model_weight: config.model.as_ref().map_or(0.0, |m| m.weight),
            degraded: config.store.degraded,
            features: config.decision_features,
        }
    }

    /// Decides one event; `names` names the feature vector's values.
    /// The decision's `latency_us` is left at 0 for the caller to set.
    pub fn decide(&self, rules: &RuleSet, names: &FeatureNames, given: Given<'_>) -> Decision {
        let Given { event, features: fv, scores, degraded } = given;
        let Scores { model_version, scored, challenger } = scores;
        let (model_score, model_baseline, model_factors, model_factors_rest) = match scored {
            Some(e) => (Some(e.score), e.baseline, e.factors, e.rest),
            None => (None, None, Vec::new(), None),
        };
        let mut reasons = fired(rules, &Context { event, features: &fv.values, model_score });
        let rules_score = reasons.iter().filter(|r| !r.shadow).map(|r| r.score).sum::<f64>();
        // Decided without features under the `review` policy: never approve.
        let hold = degraded && self.degraded == DegradedPolicy::Review;
        let score = rules_score + model_score.unwrap_or(0.0) * self.model_weight;
        let by_rules = self.unheld(&reasons, score);
        let decision = held(by_rules, hold);
        let challenger = challenger.map(|(version, s)| {
            let score = rules_score + s * self.model_weight;
            ChallengerScore {
                model_version: version.to_owned(),
                score: s,
                decision: held(self.unheld(&reasons, score), hold),
            }
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
        let features =
            if self.features.carried_by(decision) { names.features(&fv.values) } else { Features::default() };
        Decision {
            transaction_id: event.transaction_id.clone(),
            decision,
            score,
            reasons,
            rules_version: rules.version().to_owned(),
            model_version: model_version.map(str::to_owned),
            model_score,
            model_baseline,
            model_factors,
            model_factors_rest,
            challenger,
            features,
            replayed: fv.replayed,
            degraded,
            conflict: fv.replayed && fv.fingerprint != 0 && fv.fingerprint != event.fingerprint(),
            latency_us: 0,
            traceparent: None,
            event: (decision == Action::Review).then(|| event.clone()),
        }
    }

    /// The action of the fired `reasons` at `score`, before the degraded hold.
    fn unheld(&self, reasons: &[Reason], score: f64) -> Action {
        let any = |a: Action| reasons.iter().any(|r| !r.shadow && r.action == a);
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
    }
}

/// An approval turned to review when decisions are held.
fn held(action: Action, hold: bool) -> Action {
    match action {
        Action::Approve if hold => Action::Review,
        a => a,
    }
}

/// The reasons of every rule that fires on `ctx`, in file order.
fn fired(rules: &RuleSet, ctx: &Context<'_>) -> Vec<Reason> {
    let mut reasons = Vec::new();
    rules.evaluate(ctx, |_, r| {
        reasons.push(Reason {
            rule: r.name.clone(),
            code: r.code.clone(),
            action: r.action,
            score: r.score,
            shadow: r.shadow,
        });
    });
    reasons
}
