//! The decision contract (see `docs/events.md`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::event::Event;

mod features;

pub use features::{FeatureNames, Features};

/// What Vigil tells the payment system to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Approve,
    Review,
    Decline,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Approve, Action::Review, Action::Decline];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Approve => "approve",
            Action::Review => "review",
            Action::Decline => "decline",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule that fired for an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// The rule's name.
    pub rule: String,
    /// The rule's reason code, stable across rule edits, for downstream systems.
    pub code: String,
    /// The action the rule asks for.
    pub action: Action,
    /// The rule's contribution to the risk score.
    pub score: f64,
    /// Shadow rules are reported but never change the outcome.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
}

/// One model input's part in a score: for a logistic regression, its weight
/// times its standardised value (log-odds added to the score).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFactor {
    pub input: String,
    pub contribution: f64,
}

/// A challenger model's view of one event: scored beside the champion and
/// reported, never deciding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChallengerScore {
    pub model_version: String,
    /// The challenger's score in [0, 1].
    pub score: f64,
    /// What the pipeline would have decided with the challenger in the
    /// champion's place (same rules, weight and thresholds).
    pub decision: Action,
}

/// Vigil's answer for one transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub transaction_id: String,
    pub decision: Action,
    /// Risk score: the sum of fired rules' scores plus the weighted model score.
    pub score: f64,
    pub reasons: Vec<Reason>,
    /// Content hash of the rule set that decided.
    pub rules_version: String,
    /// Version of the model that scored, when a model is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// The model's score in [0, 1], when a model is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_score: Option<f64>,
    /// The model's score with every input at its training average: what
    /// `model_factors` are measured against (models that explain their score:
    /// the logistic regression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_baseline: Option<f64>,
    /// The model inputs that moved the score most from the baseline, up
    /// (positive) or down (negative), largest in size first, in log-odds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_factors: Vec<ModelFactor>,
    /// What every other input moved the score by, together (log-odds): the
    /// baseline's log-odds, the factors and this add up to the score's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_factors_rest: Option<f64>,
    /// The challenger model's score and would-be decision, when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenger: Option<ChallengerScore>,
    /// Feature values as of before this event; none on the decisions the
    /// pipeline leaves them out of (`[decision] features = "flagged"`:
    /// approvals), and then absent from the JSON.
    #[serde(default, skip_serializing_if = "Features::is_empty")]
    pub features: Features,
    /// True when this transaction had been seen before (a redelivery): its features
    /// are the ones computed the first time and nothing was counted again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    /// True when the feature store was unavailable and the pipeline's degraded
    /// policy decided without features (they are all missing, and this event
    /// was not counted in them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub degraded: bool,
    /// True when this transaction id had been seen before with other content
    /// (another amount, card, time...): a reused id, not a retry. The features
    /// are those of the first event, and nothing was counted again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub conflict: bool,
    /// Time spent deciding, from the start of the engine call to the decision.
    pub latency_us: u64,
    /// The W3C `traceparent` the event came with (a Kafka record header or an
    /// HTTP header), when it was a valid one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The event itself, on `review` decisions only: what a review case
    /// freezes beside the features and reasons (the payment, and the entity
    /// that owns the case). Approvals and declines leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Event>,
}

impl Decision {
    pub fn to_json(&self) -> Vec<u8> {
        // Plain data with string keys: serialisation cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}
