//! `[model]`: the champion model file, its weight, and an optional challenger.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::diagnostic::Diagnostics;

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub path: PathBuf,
    /// Risk-score points a model score of 1.0 adds.
    pub weight: f64,
    /// A challenger model scored beside the champion on every decision and
    /// reported with it, never deciding.
    pub challenger: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    path: Spanned<String>,
    weight: Option<Spanned<f64>>,
    challenger: Option<Spanned<String>>,
}

pub(super) fn validate(m: &RawModel, p: &mut Diagnostics<'_>, resolve: &dyn Fn(&str) -> PathBuf) -> ModelConfig {
    let weight = m.weight.as_ref().map_or(100.0, |w| *w.get_ref());
    if let Some(w) = &m.weight {
        if !w.get_ref().is_finite() || *w.get_ref() < 0.0 {
            p.on(w, "model.weight", "must be a finite number, zero or more");
        }
    }
    if let Some(c) = &m.challenger {
        if c.get_ref().trim().is_empty() {
            p.on(c, "model.challenger", "must not be empty (leave the key out for no challenger)");
        }
    }
    ModelConfig {
        path: resolve(m.path.get_ref()),
        weight,
        challenger: m.challenger.as_ref().map(|c| resolve(c.get_ref())),
    }
}
