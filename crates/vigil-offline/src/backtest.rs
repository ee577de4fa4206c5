//! Backtests: what a rule set would have decided on history, rule by rule,
//! against the labels, and what would change against a baseline rule set.
//! Features are computed with the live code, in history order, once, and shared
//! by both rule sets.

use std::collections::BTreeMap;

use serde::Serialize;
use vigil_core::{Action, Decision, Event};
use vigil_engine::{Engine, Options};

use crate::history::History;
use crate::OfflineError;

/// Figures for one rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RuleFigures {
    pub rule: String,
    pub code: String,
    pub action: Option<Action>,
    pub shadow: bool,
    pub hits: u64,
    /// Hits on labelled fraud.
    pub fraud_hits: u64,
    /// `fraud_hits / hits`, when labelled and hit.
    pub precision: Option<f64>,
    /// `fraud_hits / all labelled fraud`, when labelled.
    pub recall: Option<f64>,
}

/// A backtest's outcome.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Events reported on: all of the history's, or those `selection` chose.
    pub events: u64,
    /// The `--where` predicate that chose them, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selection: Option<String>,
    pub invalid_records: u64,
    pub labelled_fraud: Option<u64>,
    pub rules_version: String,
    /// The pipeline whose features, thresholds and model the replay used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// The model that scored the events, when the pipeline has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// Why precision and recall are missing, when the history has no labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unlabelled: Option<String>,
    pub decisions: BTreeMap<Action, u64>,
    /// Labelled frauds sent to review or declined.
    pub fraud_flagged: Option<u64>,
    /// Genuine payments sent to review or declined.
    pub genuine_flagged: Option<u64>,
    pub rules: Vec<RuleFigures>,
    pub baseline: Option<BaselineComparison>,
}

/// How the candidate's decisions differ from the baseline's.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BaselineComparison {
    pub rules_version: String,
    pub decisions: BTreeMap<Action, u64>,
    /// Events whose decision differs.
    pub changed: u64,
    /// `"from -> to"` counts.
    pub transitions: BTreeMap<String, u64>,
    /// Labelled frauds flagged by the candidate and not by the baseline, and back.
    pub fraud_newly_flagged: Option<u64>,
    pub fraud_no_longer_flagged: Option<u64>,
}

/// Events decided per engine call.
const DECIDE_BATCH: usize = 1_000;

/// Runs `candidate` (and `baseline`) over the history. `progress` is called with
/// the number of events done, now and then.
pub async fn run(
    candidate: &Engine,
    baseline: Option<&Engine>,
    history: &History,
    mut progress: impl FnMut(u64),
) -> Result<Report, OfflineError> {
    let events: Vec<&Event> = history.events.iter().collect();
    let labels = history.fraud_labels();
    let label_refs: Vec<&vigil_core::Label> = labels.iter().collect();
    let features = crate::features_over_history(candidate.features(), &events, &label_refs)?;
    let rules = candidate.rules();
    let mut tally = Tally {
        figures: rules
            .rules()
            .iter()
            .map(|r| RuleFigures {
                rule: r.name.clone(),
                code: r.code.clone(),
                action: Some(r.action),
                shadow: r.shadow,
                ..RuleFigures::default()
            })
            .collect(),
        index: rules.rules().iter().enumerate().map(|(i, r)| (r.name.clone(), i)).collect(),
        report: Report {
            events: history.selected_count() as u64,
            selection: history.selection.as_ref().map(|s| s.predicate.clone()),
            invalid_records: history.invalid as u64,
            rules_version: rules.version().to_owned(),
            model_version: candidate.model_version(),
            unlabelled: (!history.labelled()).then(|| history.no_labels("precision and recall are unknown")),
            ..Report::default()
        },
        base: baseline
            .map(|b| BaselineComparison { rules_version: b.rules().version().to_owned(), ..Default::default() }),
        counts: Counts::default(),
    };
    let mut done = 0;
    for (events, features) in events.chunks(DECIDE_BATCH).zip(features.chunks(DECIDE_BATCH)) {
        let decisions = candidate.decide(events, Options::offline(features)).await?;
        let base = match baseline {
            Some(b) => Some(b.decide(events, Options::offline(features)).await?),
            None => None,
        };
        for (j, d) in decisions.iter().enumerate() {
            let i = done + j;
            if history.selected(i) {
                tally.add(history.labels[i], d, base.as_ref().map(|b| &b[j]));
            }
            if i % 10_000 == 0 {
                progress(i as u64);
            }
        }
        done += events.len();
    }
    progress(events.len() as u64);
    Ok(tally.finish(history.labelled()))
}

/// A backtest's figures as they are counted.
struct Tally {
    figures: Vec<RuleFigures>,
    index: BTreeMap<String, usize>,
    report: Report,
    base: Option<BaselineComparison>,
    counts: Counts,
}

#[derive(Default)]
struct Counts {
    fraud: u64,
    fraud_flagged: u64,
    genuine_flagged: u64,
    newly: u64,
    no_longer: u64,
}

impl Tally {
    /// Counts one chosen event's decision (and the baseline's), given its label.
    fn add(&mut self, label: Option<bool>, d: &Decision, bd: Option<&Decision>) {
        let c = &mut self.counts;
        let is_fraud = label == Some(true);
        c.fraud += u64::from(is_fraud);
        *self.report.decisions.entry(d.decision).or_default() += 1;
        let flagged = d.decision != Action::Approve;
        if flagged {
            if is_fraud {
                c.fraud_flagged += 1;
            } else if label == Some(false) {
                c.genuine_flagged += 1;
            }
        }
        for r in &d.reasons {
            if let Some(&j) = self.index.get(r.rule.as_str()) {
                self.figures[j].hits += 1;
                self.figures[j].fraud_hits += u64::from(is_fraud);
            }
        }
        if let (Some(bd), Some(cmp)) = (bd, self.base.as_mut()) {
            *cmp.decisions.entry(bd.decision).or_default() += 1;
            if bd.decision != d.decision {
                cmp.changed += 1;
                *cmp.transitions.entry(format!("{} -> {}", bd.decision, d.decision)).or_default() += 1;
            }
            let base_flagged = bd.decision != Action::Approve;
            if is_fraud && flagged && !base_flagged {
                c.newly += 1;
            }
            if is_fraud && !flagged && base_flagged {
                c.no_longer += 1;
            }
        }
    }

    /// The report, with the label figures when the history is labelled.
    fn finish(self, labelled: bool) -> Report {
        let Tally { mut figures, mut report, mut base, counts: c, .. } = self;
        if labelled {
            report.labelled_fraud = Some(c.fraud);
            report.fraud_flagged = Some(c.fraud_flagged);
            report.genuine_flagged = Some(c.genuine_flagged);
            for f in &mut figures {
                f.precision = (f.hits > 0).then(|| f.fraud_hits as f64 / f.hits as f64);
                f.recall = (c.fraud > 0).then(|| f.fraud_hits as f64 / c.fraud as f64);
            }
            if let Some(cmp) = base.as_mut() {
                cmp.fraud_newly_flagged = Some(c.newly);
                cmp.fraud_no_longer_flagged = Some(c.no_longer);
            }
        }
        report.rules = figures;
        report.baseline = base;
        report
    }
}

impl Report {
    /// A table for people.
    pub fn to_table(&self) -> String {
        let pct = |x: Option<f64>| x.map_or("-".to_owned(), percent);
        let mut out = format!("backtest of rules {} over {} events", self.rules_version, self.events);
        if let Some(p) = &self.selection {
            out.push_str(&format!(" where {p}"));
        }
        if self.invalid_records > 0 {
            out.push_str(&format!(" ({} invalid records skipped)", self.invalid_records));
        }
        if let Some(p) = &self.pipeline {
            out.push_str(&format!("\npipeline {p}"));
            if let Some(m) = &self.model_version {
                out.push_str(&format!(", model {m}"));
            }
        }
        if let Some(why) = &self.unlabelled {
            out.push_str(&format!("\n{why}"));
        }
        out.push_str("\n\n");
        out.push_str(&format!(
            "{:<32} {:<8} {:>9} {:>9} {:>10} {:>8}\n",
            "rule", "action", "hits", "on fraud", "precision", "recall"
        ));
        for r in &self.rules {
            let name = if r.shadow { format!("{} (shadow)", r.rule) } else { r.rule.clone() };
            let action = r.action.map_or("", |a| a.as_str());
            out.push_str(&format!(
                "{:<32} {:<8} {:>9} {:>9} {:>10} {:>8}\n",
                name,
                action,
                r.hits,
                r.fraud_hits,
                pct(r.precision),
                pct(r.recall)
            ));
        }
        out.push_str("\ndecisions\n");
        for a in Action::ALL {
            let n = self.decisions.get(&a).copied().unwrap_or(0);
            out.push_str(&format!(
                "  {:<8} {:>9}  {:>6.2}%\n",
                a.as_str(),
                n,
                100.0 * n as f64 / (self.events.max(1)) as f64
            ));
        }
        if let (Some(f), Some(caught), Some(genuine)) = (self.labelled_fraud, self.fraud_flagged, self.genuine_flagged)
        {
            out.push_str(&format!(
                "\nlabelled fraud flagged (review or decline): {caught} of {f}; genuine flagged: {genuine} of {}\n",
                self.events - f
            ));
        }
        if let Some(b) = &self.baseline {
            out.push_str(&format!("\nagainst baseline rules {}: {} decisions change\n", b.rules_version, b.changed));
            for (t, n) in &b.transitions {
                out.push_str(&format!("  {t:<20} {n:>9}\n"));
            }
            if let (Some(newly), Some(lost)) = (b.fraud_newly_flagged, b.fraud_no_longer_flagged) {
                out.push_str(&format!("  fraud newly flagged: {newly}; fraud no longer flagged: {lost}\n"));
            }
        }
        out
    }
}

/// A share as a percentage, with enough digits that a small one does not read
/// as zero: 12.5%, 0.42%, 0.042%.
pub fn percent(share: f64) -> String {
    let p = 100.0 * share;
    if p == 0.0 || p >= 1.0 || !p.is_finite() {
        return format!("{p:.1}%");
    }
    // Two significant digits below 1%.
    let digits = (1.0 - p.log10().floor()).clamp(1.0, 8.0) as usize;
    format!("{p:.digits$}%")
}

#[cfg(test)]
mod tests {
    #[test]
    fn small_shares_do_not_read_as_zero() {
        assert_eq!(super::percent(5.0 / 11_975.0), "0.042%");
        assert_eq!(super::percent(0.0042), "0.42%");
        assert_eq!(super::percent(0.125), "12.5%");
        assert_eq!(super::percent(0.0), "0.0%");
        assert_eq!(super::percent(1.0), "100.0%");
    }
}
