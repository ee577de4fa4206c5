//! `[decision]`: the risk-score thresholds of the decision policy.

use serde::Deserialize;
use toml::Spanned;

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDecision {
    review_score: Spanned<f64>,
    decline_score: Spanned<f64>,
}

pub(super) fn validate(raw: Option<&RawDecision>, p: &mut Diagnostics<'_>) -> Thresholds {
    let Some(d) = raw else { return Thresholds::default() };
    let (r, dc) = (*d.review_score.get_ref(), *d.decline_score.get_ref());
    if !r.is_finite() {
        p.on(&d.review_score, "decision.review_score", "must be a finite number");
    }
    if !dc.is_finite() {
        p.on(&d.decline_score, "decision.decline_score", "must be a finite number");
    } else if r.is_finite() && dc < r {
        p.on(
            &d.decline_score,
            "decision.decline_score",
            format!("{dc} is below review_score {r}; declining must need at least as much risk as review"),
        );
    }
    Thresholds { review_score: r, decline_score: dc }
}
