//! `[decision]`: the risk-score thresholds of the decision policy, and which
//! decisions carry the feature values.

use serde::Deserialize;
use toml::Spanned;

use crate::decision::Action;
use crate::diagnostic::Diagnostics;

/// Risk-score thresholds of the decision policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub review_score: f64,
    pub decline_score: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { review_score: 50.0, decline_score: 100.0 }
    }
}

/// Which decisions carry every feature value (`[decision] features`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecisionFeatures {
    /// Every decision.
    #[default]
    All,
    /// Review and decline decisions only: the ones a person looks at (a
    /// review case, a disputed decline). Approvals leave them out (about 500
    /// bytes of JSON instead of 1,350 with the local pipeline's 34 features).
    Flagged,
}

impl DecisionFeatures {
    pub const NAMES: [&'static str; 2] = ["all", "flagged"];

    pub fn parse(s: &str) -> Option<DecisionFeatures> {
        match s {
            "all" => Some(DecisionFeatures::All),
            "flagged" => Some(DecisionFeatures::Flagged),
            _ => None,
        }
    }

    /// Whether a decision of this action carries the feature values.
    pub fn carried_by(self, action: Action) -> bool {
        match self {
            DecisionFeatures::All => true,
            DecisionFeatures::Flagged => action != Action::Approve,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDecision {
    review_score: Option<Spanned<f64>>,
    decline_score: Option<Spanned<f64>>,
    features: Option<Spanned<String>>,
}

pub(super) fn validate(raw: Option<&RawDecision>, p: &mut Diagnostics<'_>) -> (Thresholds, DecisionFeatures) {
    let Some(d) = raw else { return Default::default() };
    let defaults = Thresholds::default();
    let r = d.review_score.as_ref().map_or(defaults.review_score, |s| *s.get_ref());
    let dc = d.decline_score.as_ref().map_or(defaults.decline_score, |s| *s.get_ref());
    if let (false, Some(s)) = (r.is_finite(), &d.review_score) {
        p.on(s, "decision.review_score", "must be a finite number");
    }
    if let (false, Some(s)) = (dc.is_finite(), &d.decline_score) {
        p.on(s, "decision.decline_score", "must be a finite number");
    } else if r.is_finite() && dc.is_finite() && dc < r {
        match (&d.decline_score, &d.review_score) {
            (Some(s), _) => p.on(
                s,
                "decision.decline_score",
                format!("{dc} is below review_score {r}; declining must need at least as much risk as review"),
            ),
            (None, Some(s)) => p.on(
                s,
                "decision.review_score",
                format!("{r} is above the default decline_score {dc}; set decline_score as well"),
            ),
            (None, None) => {}
        }
    }
    let mut features = DecisionFeatures::default();
    if let Some(f) = &d.features {
        match DecisionFeatures::parse(f.get_ref()) {
            Some(which) => features = which,
            None => {
                let hint = crate::suggest::hint(f.get_ref(), DecisionFeatures::NAMES);
                let known = DecisionFeatures::NAMES.join(", ");
                p.on(f, "decision.features", format!("unknown choice `{}` (known: {known}){hint}", f.get_ref()));
            }
        }
    }
    (Thresholds { review_score: r, decline_score: dc }, features)
}
