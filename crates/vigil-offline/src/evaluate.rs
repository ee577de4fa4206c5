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
use vigil_core::{Action, Decision, Event, FeatureVector, Label};
use vigil_engine::{Engine, Options};

use vigil_model::{Model, TrainedModel};

use crate::history::History;
use crate::ranking::Ranking;
use crate::tabular::Table;
use crate::OfflineError;

/// The evaluation of one model over one history.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub model_version: String,
    /// The `--where` predicate that chose the events, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selection: Option<String>,
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
    /// Table mode: the mean wall time of one `score` call (one event at a
    /// time, as the engine scores), over every row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score_ns_per_event: Option<f64>,
    /// History mode: the share of frauds among the [`CARD_PRECISION_K`] cards
    /// scored highest each day (fraud teams staff by it; [`card_precision`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub card_precision_at_k: Option<CardPrecision>,
    /// History mode, per scored event: its transaction, time and card, for
    /// the scores file and the per-card figures.
    #[serde(skip)]
    pub scored: Vec<ScoredEvent>,
    /// Scores and labels, for curves.
    #[serde(skip)]
    pub scores: Vec<f64>,
    #[serde(skip)]
    pub labels: Vec<bool>,
    /// ROC curve, (false-positive rate, recall), thinned for drawing.
    #[serde(skip)]
    pub roc: Vec<(f64, f64)>,
    /// Precision-recall curve, (recall, precision), thinned for drawing.
    #[serde(skip)]
    pub pr: Vec<(f64, f64)>,
}

/// Curves keep points at least 1/2000 apart: smooth at any history size.
const CURVE_RESOLUTION: usize = 2_000;

/// Recall at the lowest threshold whose false-positive rate stays within `fpr`,
/// and that threshold. Ties are taken whole.
pub fn recall_at_fpr(scores: &[f64], labels: &[bool], fpr: f64) -> (f64, f64) {
    Ranking::new(scores, labels).recall_at_fpr(fpr)
}

/// Scores and decides every event of `history` with `engine` (whose model is
/// the one under evaluation), reporting the feature computation as step `features`.
pub async fn run(engine: &Engine, history: &History, progress: &crate::Progress) -> Result<Evaluation, OfflineError> {
    if !history.labelled() {
        return Err(OfflineError::NoLabels(history.no_labels("there is nothing to evaluate the model against")));
    }
    let events: Vec<&Event> = history.events.iter().collect();
    let labels = history.fraud_labels();
    let label_refs: Vec<&Label> = labels.iter().collect();
    let features = crate::features_over_history_with(engine.features(), &events, &label_refs, progress)?;
    let mut eval = Evaluation::empty("");
    eval.selection = history.selection.as_ref().map(|s| s.predicate.clone());
    // The events scored: labelled and chosen.
    let scored: Vec<usize> =
        (0..events.len()).filter(|&i| history.labels[i].is_some() && history.selected(i)).collect();
    for chunk in scored.chunks(DECIDE_BATCH) {
        let batch: Vec<&Event> = chunk.iter().map(|&i| events[i]).collect();
        let given: Vec<FeatureVector> = chunk.iter().map(|&i| features[i].clone()).collect();
        let decisions = engine.decide(&batch, Options::offline(&given)).await?;
        for (&i, d) in chunk.iter().zip(&decisions) {
            let fraud = history.labels[i] == Some(true);
            eval.add(fraud, d)?;
            let e = events[i];
            eval.scored.push(ScoredEvent {
                transaction_id: e.transaction_id.clone(),
                timestamp: e.timestamp,
                card_id: e.card_id.clone(),
            });
        }
    }
    eval.rank();
    eval.card_precision_at_k = card_precision(&eval.scores, &eval.labels, &eval.scored, CARD_PRECISION_K);
    Ok(eval)
}

/// Events decided per engine call.
const DECIDE_BATCH: usize = 1_000;

impl Evaluation {
    /// Counts one scored event's decision.
    fn add(&mut self, fraud: bool, d: &Decision) -> Result<(), OfflineError> {
        let eval = self;
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
        Ok(())
    }
}

/// Cards a day's investigators look at, for [`card_precision`].
pub const CARD_PRECISION_K: usize = 100;

/// Card precision at k over a history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CardPrecision {
    pub k: usize,
    /// Days with at least one card to rank.
    pub days: usize,
    /// The mean over those days of the share of frauds among the day's k cards.
    pub precision: f64,
}

/// One scored event of a history.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredEvent {
    pub transaction_id: String,
    pub timestamp: chrono::DateTime<chrono::Utc>,
    pub card_id: Option<String>,
}

/// Card precision at `k`: each day (UTC), each card's highest score that day
/// ranks it; of the `k` cards ranked highest, the share that had a fraud that
/// day, over `k`. A card found fraudulent among a day's `k` is known from then
/// on and leaves the later days' rankings (it is blocked, not scored again).
/// The mean over the days that had cards. Events without a card are left out.
pub fn card_precision(scores: &[f64], labels: &[bool], events: &[ScoredEvent], k: usize) -> Option<CardPrecision> {
    use std::collections::{BTreeMap, HashMap, HashSet};
    let mut by_day: BTreeMap<chrono::NaiveDate, HashMap<&str, (f64, bool)>> = BTreeMap::new();
    for ((s, l), e) in scores.iter().zip(labels).zip(events) {
        let Some(card) = e.card_id.as_deref() else { continue };
        let entry =
            by_day.entry(e.timestamp.date_naive()).or_default().entry(card).or_insert((f64::NEG_INFINITY, false));
        entry.0 = entry.0.max(*s);
        entry.1 |= *l;
    }
    let mut known: HashSet<&str> = HashSet::new();
    let (mut sum, mut days) = (0.0, 0usize);
    for cards in by_day.values() {
        let mut ranked: Vec<(&str, f64, bool)> =
            cards.iter().filter(|(c, _)| !known.contains(**c)).map(|(c, (s, f))| (*c, *s, *f)).collect();
        if ranked.is_empty() {
            continue;
        }
        // Highest first; ties by card id, so the figure does not depend on hashing.
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
        ranked.truncate(k);
        let frauds = ranked.iter().filter(|(_, _, f)| *f).count();
        sum += frauds as f64 / k as f64;
        days += 1;
        known.extend(ranked.iter().filter(|(_, _, f)| *f).map(|(c, _, _)| *c));
    }
    (days > 0).then(|| CardPrecision { k, days, precision: sum / days as f64 })
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
    let started = std::time::Instant::now();
    eval.scores = table.rows.iter().map(|r| model.score(std::hint::black_box(r))).collect();
    eval.score_ns_per_event = Some(started.elapsed().as_nanos() as f64 / table.rows.len().max(1) as f64);
    eval.labels = table.labels.clone();
    eval.rank();
    Ok(eval)
}

impl Evaluation {
    /// The ranking figures and curves of given scores and labels (no decisions).
    pub fn from_scores(model_version: &str, scores: Vec<f64>, labels: Vec<bool>) -> Evaluation {
        let mut eval = Evaluation::empty(model_version);
        eval.scores = scores;
        eval.labels = labels;
        eval.rank();
        eval
    }

    fn empty(model_version: &str) -> Evaluation {
        Evaluation {
            model_version: model_version.to_owned(),
            selection: None,
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
            score_ns_per_event: None,
            card_precision_at_k: None,
            scored: Vec::new(),
            scores: Vec::new(),
            labels: Vec::new(),
            roc: Vec::new(),
            pr: Vec::new(),
        }
    }

    /// The ranking figures and curves, from one sort of the scores.
    fn rank(&mut self) {
        self.events = self.scores.len();
        self.frauds = self.labels.iter().filter(|l| **l).count();
        let r = Ranking::new(&self.scores, &self.labels);
        (self.auc_roc, self.average_precision) = (r.auc_roc(), r.average_precision());
        (self.recall_at_1pct_fpr, self.threshold_at_1pct_fpr) = r.recall_at_fpr(0.01);
        self.precision_at_top =
            [100, 1_000, 10_000].into_iter().filter_map(|k| Some((k, r.precision_at_top(&self.labels, k)?))).collect();
        self.roc = r.roc_points(CURVE_RESOLUTION);
        self.pr = r.pr_points(CURVE_RESOLUTION);
    }

    /// The evaluation as a plain-text table.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let pct = |x: f64| format!("{:.2}%", x * 100.0);
        let _ = write!(out, "model {}: {} labelled events, {} frauds", self.model_version, self.events, self.frauds);
        let _ = match &self.selection {
            Some(p) => writeln!(out, " (where {p})"),
            None => writeln!(out),
        };
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
        if let Some(c) = &self.card_precision_at_k {
            let _ =
                writeln!(out, "  card precision, top {:<3} {} (per day, over {} days)", c.k, pct(c.precision), c.days);
        }
        if let Some(ns) = self.score_ns_per_event {
            let _ = writeln!(out, "  scoring                 {ns:.0} ns per event, one at a time");
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

impl Evaluation {
    /// Every scored event's score and label, as CSV, for outside tools: in
    /// history mode `transaction_id,timestamp,card_id,score,label`, in table
    /// mode `row,score,label`.
    pub fn write_scores(&self, out: impl std::io::Write) -> Result<(), OfflineError> {
        let io = |e: csv::Error| OfflineError::Report(format!("cannot write the scores: {e}"));
        let mut w = csv::Writer::from_writer(out);
        let label = |l: bool| if l { "1" } else { "0" };
        if self.scored.len() == self.scores.len() && !self.scored.is_empty() {
            w.write_record(["transaction_id", "timestamp", "card_id", "score", "label"]).map_err(io)?;
            for ((e, s), l) in self.scored.iter().zip(&self.scores).zip(&self.labels) {
                let t = e.timestamp.to_rfc3339();
                w.write_record([
                    e.transaction_id.as_str(),
                    &t,
                    e.card_id.as_deref().unwrap_or(""),
                    &s.to_string(),
                    label(*l),
                ])
                .map_err(io)?;
            }
        } else {
            w.write_record(["row", "score", "label"]).map_err(io)?;
            for (i, (s, l)) in self.scores.iter().zip(&self.labels).enumerate() {
                w.write_record([i.to_string().as_str(), &s.to_string(), label(*l)]).map_err(io)?;
            }
        }
        w.flush().map_err(|e| OfflineError::Report(format!("cannot write the scores: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_precision_ranks_cards_per_day_and_drops_the_ones_found() {
        let at = |day: u32, hour: u32| {
            chrono::DateTime::parse_from_rfc3339(&format!("2026-01-0{day}T{hour:02}:00:00Z")).unwrap().to_utc()
        };
        let e = |id: &str, day, hour, card: &str| ScoredEvent {
            transaction_id: id.into(),
            timestamp: at(day, hour),
            card_id: Some(card.into()),
        };
        // Day 1: card a (fraud, 0.9 then 0.2), b (0.8), c (0.1, fraud). Day 2: a
        // again (0.95, fraud: known since day 1, dropped), d (0.7, fraud), e (0.6).
        let events = [
            e("1", 1, 1, "a"),
            e("2", 1, 2, "a"),
            e("3", 1, 3, "b"),
            e("4", 1, 4, "c"),
            e("5", 2, 1, "a"),
            e("6", 2, 2, "d"),
            e("7", 2, 3, "e"),
        ];
        let scores = [0.9, 0.2, 0.8, 0.1, 0.95, 0.7, 0.6];
        let labels = [true, false, false, true, true, true, false];
        let c = card_precision(&scores, &labels, &events, 2).unwrap();
        // Day 1: a and b, one fraud of 2; day 2: d and e (a is known), one of 2.
        assert_eq!((c.days, c.precision), (2, 0.5));
        // With k = 3, day 1 takes c too: 2 of 3.
        let c = card_precision(&scores, &labels, &events, 3).unwrap();
        assert!((c.precision - (2.0 / 3.0 + 1.0 / 3.0) / 2.0).abs() < 1e-12, "{c:?}");
    }

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
