//! `vigil evaluate`: how a model file ranks the frauds of a labelled history,
//! and what the pipeline would decide with it.
//!
//! Features are computed over the history with the live code (fraud labels
//! applied from their report times when the history has them), every event is
//! scored by the model and decided by the pipeline (rules, model weight,
//! thresholds), and the scores are compared with the labels.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use vigil_core::{Action, Event, Label};
use vigil_engine::Engine;

use vigil_model::{Model, TrainedModel};

use crate::history::History;
use crate::tabular::Table;
use crate::{auc_and_ap, OfflineError};

/// The evaluation of one model over one history.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub model_version: String,
    pub events: usize,
    pub frauds: usize,
    pub auc_roc: f64,
    pub average_precision: f64,
    /// Share of frauds above the score threshold that flags 1% of genuine events.
    pub recall_at_1pct_fpr: f64,
    /// The score threshold that flags 1% of genuine events.
    pub threshold_at_1pct_fpr: f64,
    /// (k, share of frauds among the k highest scores).
    pub precision_at_top: Vec<(usize, f64)>,
    /// Decisions of the pipeline with this model, by action.
    pub decisions: BTreeMap<Action, u64>,
    /// Frauds reviewed or declined, and genuine events reviewed or declined.
    pub frauds_flagged: u64,
    pub genuine_flagged: u64,
    /// Scores and labels, for curves.
    #[serde(skip)]
    pub scores: Vec<f64>,
    #[serde(skip)]
    pub labels: Vec<bool>,
}

/// Recall at the lowest threshold whose false-positive rate stays within `fpr`,
/// and that threshold. Ties are taken whole.
pub fn recall_at_fpr(scores: &[f64], labels: &[bool], fpr: f64) -> (f64, f64) {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
    let pos = labels.iter().filter(|l| **l).count() as f64;
    let neg = labels.len() as f64 - pos;
    let (mut tp, mut fp, mut best) = (0.0, 0.0, (0.0, f64::INFINITY));
    let mut i = 0;
    while i < idx.len() {
        let s = scores[idx[i]];
        while i < idx.len() && scores[idx[i]] == s {
            if labels[idx[i]] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            i += 1;
        }
        if fp > fpr * neg {
            break;
        }
        best = (if pos > 0.0 { tp / pos } else { f64::NAN }, s);
    }
    best
}

/// Scores and decides every event of `history` with `engine` (whose model is
/// the one under evaluation).
pub fn run(engine: &Engine, history: &History) -> Result<Evaluation, OfflineError> {
    if !history.labelled() {
        return Err(OfflineError::Data("the history has no labels to evaluate against".into()));
    }
    let events: Vec<&Event> = history.events.iter().collect();
    let labels = history.fraud_labels();
    let label_refs: Vec<&Label> = labels.iter().collect();
    let features = crate::features_over_history(engine.features(), &events, &label_refs)?;
    let mut eval = Evaluation::empty("");
    for ((e, fv), label) in events.iter().zip(&features).zip(&history.labels) {
        let Some(fraud) = *label else { continue };
        let d = engine.decide_offline(e, fv);
        let Some(score) = d.model_score else {
            return Err(OfflineError::Data("the pipeline has no model to evaluate".into()));
        };
        if eval.model_version.is_empty() {
            eval.model_version = d.model_version.clone().unwrap_or_default();
        }
        *eval.decisions.entry(d.decision).or_default() += 1;
        if d.decision != Action::Approve {
            if fraud {
                eval.frauds_flagged += 1;
            } else {
                eval.genuine_flagged += 1;
            }
        }
        eval.scores.push(score);
        eval.labels.push(fraud);
    }
    eval.rank();
    Ok(eval)
}

/// Scores the rows of a table (`vigil train --features ...` data) with `model`,
/// whose inputs must be the table's columns; no pipeline, so no decision mix.
pub fn run_table(model: &TrainedModel, table: &Table) -> Result<Evaluation, OfflineError> {
    if model.inputs() != table.columns.as_slice() {
        return Err(OfflineError::Data(format!(
            "the model takes [{}], the table gives [{}]",
            model.inputs().join(", "),
            table.columns.join(", ")
        )));
    }
    let mut eval = Evaluation::empty(model.version());
    eval.scores = table.rows.iter().map(|r| model.score(r)).collect();
    eval.labels = table.labels.clone();
    eval.rank();
    Ok(eval)
}

impl Evaluation {
    fn empty(model_version: &str) -> Evaluation {
        Evaluation {
            model_version: model_version.to_owned(),
            events: 0,
            frauds: 0,
            auc_roc: f64::NAN,
            average_precision: f64::NAN,
            recall_at_1pct_fpr: f64::NAN,
            threshold_at_1pct_fpr: f64::NAN,
            precision_at_top: Vec::new(),
            decisions: BTreeMap::new(),
            frauds_flagged: 0,
            genuine_flagged: 0,
            scores: Vec::new(),
            labels: Vec::new(),
        }
    }

    /// The ranking figures, from the scores and labels.
    fn rank(&mut self) {
        self.events = self.scores.len();
        self.frauds = self.labels.iter().filter(|l| **l).count();
        (self.auc_roc, self.average_precision) = auc_and_ap(&self.scores, &self.labels);
        (self.recall_at_1pct_fpr, self.threshold_at_1pct_fpr) = recall_at_fpr(&self.scores, &self.labels, 0.01);
        let mut order: Vec<usize> = (0..self.events).collect();
        order.sort_by(|a, b| self.scores[*b].total_cmp(&self.scores[*a]));
        for k in [100, 1_000, 10_000] {
            if k <= self.events {
                let hits = order[..k].iter().filter(|i| self.labels[**i]).count();
                self.precision_at_top.push((k, hits as f64 / k as f64));
            }
        }
    }

    /// The evaluation as a plain-text table.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let pct = |x: f64| format!("{:.2}%", x * 100.0);
        let _ = writeln!(out, "model {}: {} labelled events, {} frauds", self.model_version, self.events, self.frauds);
        let _ = writeln!(out, "  AUC-ROC                 {:.4}", self.auc_roc);
        let _ = writeln!(out, "  average precision       {:.4}", self.average_precision);
        let _ = writeln!(
            out,
            "  recall at 1% FPR        {} (score >= {:.4})",
            pct(self.recall_at_1pct_fpr),
            self.threshold_at_1pct_fpr
        );
        for (k, p) in &self.precision_at_top {
            let _ = writeln!(out, "  precision, top {k:<7}  {}", pct(*p));
        }
        if self.decisions.is_empty() {
            return out;
        }
        let _ = writeln!(out, "decisions with the pipeline's rules and thresholds");
        for (a, n) in &self.decisions {
            let _ = writeln!(out, "  {:<8} {n:>9}  {}", a.to_string(), pct(*n as f64 / self.events.max(1) as f64));
        }
        let genuine = (self.events - self.frauds).max(1) as f64;
        let _ = writeln!(
            out,
            "  frauds flagged {} of {} ({}), genuine flagged {} ({})",
            self.frauds_flagged,
            self.frauds,
            pct(self.frauds_flagged as f64 / self.frauds.max(1) as f64),
            self.genuine_flagged,
            pct(self.genuine_flagged as f64 / genuine)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_at_a_false_positive_rate() {
        // 2 frauds, 100 genuine: one fraud above every genuine, one in the middle.
        let mut scores: Vec<f64> = (0..100).map(|i| i as f64 / 100.0).collect();
        let mut labels = vec![false; 100];
        scores.extend([2.0, 0.5]);
        labels.extend([true, true]);
        let (recall, threshold) = recall_at_fpr(&scores, &labels, 0.01);
        // At 1% FPR one genuine (0.99) may be flagged: only the top fraud is caught.
        assert_eq!((recall, threshold), (0.5, 0.99));
        let (recall, _) = recall_at_fpr(&scores, &labels, 0.5);
        assert_eq!(recall, 1.0);
    }
}
