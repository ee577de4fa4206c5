//! One descending sort of a model's scores, and every ranking figure drawn
//! from it: AUC-ROC, average precision, recall at a false-positive rate,
//! precision among the top k, and the ROC and precision-recall curves.
//!
//! Tied scores form one step: a threshold can only take a tie whole, so the
//! curves move diagonally through a tie and the AUC counts it as half.

/// Cumulative counts of the events scored at or above one distinct score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub threshold: f64,
    /// Frauds and genuine events at or above `threshold`.
    pub tp: f64,
    pub fp: f64,
}

/// Scores ranked once, highest first.
#[derive(Debug, Clone)]
pub struct Ranking {
    /// Event indices, highest score first.
    pub order: Vec<usize>,
    pub steps: Vec<Step>,
    pub positives: f64,
    pub negatives: f64,
}

impl Ranking {
    pub fn new(scores: &[f64], labels: &[bool]) -> Ranking {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
        let mut steps = Vec::new();
        let (mut tp, mut fp) = (0.0, 0.0);
        let mut i = 0;
        while i < order.len() {
            let threshold = scores[order[i]];
            while i < order.len() && scores[order[i]].total_cmp(&threshold).is_eq() {
                if labels[order[i]] {
                    tp += 1.0;
                } else {
                    fp += 1.0;
                }
                i += 1;
            }
            steps.push(Step { threshold, tp, fp });
        }
        Ranking { order, steps, positives: tp, negatives: fp }
    }

    fn defined(&self) -> bool {
        self.positives > 0.0 && self.negatives > 0.0
    }

    /// Area under the ROC curve (the Mann-Whitney U statistic, ties as half).
    pub fn auc_roc(&self) -> f64 {
        if !self.defined() {
            return f64::NAN;
        }
        let (mut area, mut prev) = (0.0, Step { threshold: f64::INFINITY, tp: 0.0, fp: 0.0 });
        for s in &self.steps {
            area += (s.fp - prev.fp) * (s.tp + prev.tp) / 2.0;
            prev = *s;
        }
        area / (self.positives * self.negatives)
    }

    /// Average precision: precision at each step, weighted by the recall it adds.
    pub fn average_precision(&self) -> f64 {
        if !self.defined() {
            return f64::NAN;
        }
        let (mut ap, mut prev_tp) = (0.0, 0.0);
        for s in &self.steps {
            ap += (s.tp - prev_tp) / self.positives * (s.tp / (s.tp + s.fp));
            prev_tp = s.tp;
        }
        ap
    }

    /// Recall at the lowest threshold whose false-positive rate stays within
    /// `fpr`, and that threshold (infinity when even the top step exceeds it).
    pub fn recall_at_fpr(&self, fpr: f64) -> (f64, f64) {
        let mut best = (0.0, f64::INFINITY);
        for s in &self.steps {
            if s.fp > fpr * self.negatives {
                break;
            }
            best = (if self.positives > 0.0 { s.tp / self.positives } else { f64::NAN }, s.threshold);
        }
        best
    }

    /// Share of frauds among the `k` highest-scored events (ties broken by
    /// position), or `None` when there are fewer than `k` events.
    pub fn precision_at_top(&self, labels: &[bool], k: usize) -> Option<f64> {
        (k > 0 && k <= self.order.len())
            .then(|| self.order[..k].iter().filter(|i| labels[**i]).count() as f64 / k as f64)
    }

    /// ROC curve, (false-positive rate, true-positive rate) from (0, 0) to
    /// (1, 1), thinned to points at least `1 / resolution` apart.
    pub fn roc_points(&self, resolution: usize) -> Vec<(f64, f64)> {
        if !self.defined() {
            return Vec::new();
        }
        let points = std::iter::once((0.0, 0.0))
            .chain(self.steps.iter().map(|s| (s.fp / self.negatives, s.tp / self.positives)));
        thin(points, resolution)
    }

    /// Precision-recall curve, (recall, precision), thinned likewise.
    pub fn pr_points(&self, resolution: usize) -> Vec<(f64, f64)> {
        if !self.defined() {
            return Vec::new();
        }
        let first = self.steps.first().map_or(1.0, |s| s.tp / (s.tp + s.fp));
        let points = std::iter::once((0.0, first))
            .chain(self.steps.iter().map(|s| (s.tp / self.positives, s.tp / (s.tp + s.fp))));
        thin(points, resolution)
    }
}

/// Keeps the first and last points and every point that moved at least
/// `1 / resolution` from the last kept one, so a curve over a million events
/// draws with a few thousand points and the same shape.
fn thin(points: impl Iterator<Item = (f64, f64)>, resolution: usize) -> Vec<(f64, f64)> {
    let step = 1.0 / resolution.max(1) as f64;
    let mut out: Vec<(f64, f64)> = Vec::new();
    let mut pending = None;
    for p in points {
        match out.last() {
            Some(&(x, y)) if (p.0 - x).abs() < step && (p.1 - y).abs() < step => pending = Some(p),
            _ => {
                out.push(p);
                pending = None;
            }
        }
    }
    out.extend(pending);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_from_one_ranking() {
        // Scores 0.9 (fraud), 0.8 (genuine), 0.8 (fraud), 0.1 (genuine).
        let scores = [0.9, 0.8, 0.8, 0.1];
        let labels = [true, false, true, false];
        let r = Ranking::new(&scores, &labels);
        assert_eq!(r.steps.len(), 3);
        // Pairs (fraud, genuine): (0.9, 0.8) 1, (0.9, 0.1) 1, (0.8, 0.8) 0.5, (0.8, 0.1) 1.
        assert_eq!(r.auc_roc(), 3.5 / 4.0);
        // Step 1: tp 1 of 1 (precision 1); step 2: tp 2 of 3 (precision 2/3).
        assert!((r.average_precision() - (0.5 * 1.0 + 0.5 * 2.0 / 3.0)).abs() < 1e-12);
        assert_eq!(r.precision_at_top(&labels, 1), Some(1.0));
        assert_eq!(r.precision_at_top(&labels, 5), None);
        assert_eq!(r.roc_points(1000), vec![(0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0)]);
        assert_eq!(r.pr_points(1000).last(), Some(&(1.0, 0.5)));
    }

    #[test]
    fn thinning_keeps_the_ends_and_the_shape() {
        let points = (0..=100_000).map(|i| (i as f64 / 100_000.0, (i as f64 / 100_000.0).sqrt()));
        let thinned = thin(points, 500);
        assert!(thinned.len() < 1_100, "{} points", thinned.len());
        assert_eq!(thinned.first(), Some(&(0.0, 0.0)));
        assert_eq!(thinned.last(), Some(&(1.0, 1.0)));
    }
}
