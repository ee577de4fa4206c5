//! The preprocessing a model file records and serving applies again.

use serde::{Deserialize, Serialize};

/// The preprocessing training applied, which serving applies again.
///
/// The model's columns are the inputs, in order, then one missing-value
/// indicator (1 when the input is missing, else 0) per input listed in
/// `missing_indicators`. Each input is first compressed with the signed
/// logarithm `sign(x) · ln(1 + |x|)` when `log` says so (counts and amounts are
/// heavy-tailed), then every column is standardised with `mean` and `std`; a
/// missing input's own column takes its mean (it adds nothing), its indicator
/// says it was missing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    /// Per column.
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Per input, whether it is compressed first; empty when none is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<bool>,
    /// Inputs (ascending indices) that have an indicator column.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_indicators: Vec<usize>,
}

/// `sign(x) · ln(1 + |x|)`: the logarithm's compression, defined for every
/// number and equal to `ln(1 + x)` for the non-negative ones.
pub fn signed_log(x: f64) -> f64 {
    x.signum() * x.abs().ln_1p()
}

impl Scaler {
    /// Plain standardisation of `mean.len()` inputs.
    pub fn standard(mean: Vec<f64>, std: Vec<f64>) -> Scaler {
        Scaler { mean, std, log: Vec::new(), missing_indicators: Vec::new() }
    }

    /// Fits the preprocessing on training rows of `n` inputs (`NaN` is
    /// missing). With `compress`, inputs that are never negative are
    /// compressed and inputs that are ever missing get an indicator; without,
    /// inputs are only standardised. Deviations are over present values; a
    /// constant column keeps a deviation of 1.
    pub fn fit(rows: &[Vec<f64>], n: usize, compress: bool) -> Scaler {
        let present = |c: usize| rows.iter().map(move |r| r[c]).filter(|v| v.is_finite());
        let log: Vec<bool> = if compress {
            (0..n).map(|c| present(c).next().is_some() && present(c).all(|v| v >= 0.0)).collect()
        } else {
            Vec::new()
        };
        let log = if log.iter().any(|l| *l) { log } else { Vec::new() };
        let missing_indicators: Vec<usize> =
            if compress { (0..n).filter(|&c| rows.iter().any(|r| !r[c].is_finite())).collect() } else { Vec::new() };
        let mut scaler = Scaler { mean: Vec::new(), std: Vec::new(), log, missing_indicators };
        let deviation = |var: f64| if var.sqrt() > 1e-9 { var.sqrt() } else { 1.0 };
        for c in 0..n {
            let vals: Vec<f64> = present(c).map(|v| scaler.transform(c, v)).collect();
            let m = if vals.is_empty() { 0.0 } else { vals.iter().sum::<f64>() / vals.len() as f64 };
            let var = if vals.is_empty() {
                0.0
            } else {
                vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / vals.len() as f64
            };
            scaler.mean.push(m);
            scaler.std.push(deviation(var));
        }
        for k in 0..scaler.missing_indicators.len() {
            let c = scaler.missing_indicators[k];
            let p = rows.iter().filter(|r| !r[c].is_finite()).count() as f64 / rows.len().max(1) as f64;
            scaler.mean.push(p);
            scaler.std.push(deviation(p * (1.0 - p)));
        }
        scaler
    }

    /// The model's standardised columns for one row of `n` inputs, into `out`
    /// (cleared first): what training fits and serving scores.
    pub fn columns_of(&self, inputs: &[f64], n: usize, out: &mut Vec<f64>) {
        out.clear();
        out.resize(self.columns(n), 0.0);
        self.each(inputs, n, |i, own, flag| {
            out[i] = own;
            if let Some((c, v)) = flag {
                out[c] = v;
            }
        });
    }

    /// Whether inputs are transformed beyond standardisation.
    pub fn transforms(&self) -> bool {
        !self.log.is_empty() || !self.missing_indicators.is_empty()
    }

    /// Inputs the scaler was fitted over.
    pub fn inputs(&self) -> usize {
        self.mean.len().saturating_sub(self.missing_indicators.len())
    }

    /// Columns the model sees: the inputs, then the indicators.
    pub fn columns(&self, inputs: usize) -> usize {
        inputs + self.missing_indicators.len()
    }

    /// Input `i`'s value before standardisation (compressed when `log` says).
    pub fn transform(&self, i: usize, x: f64) -> f64 {
        if self.log.get(i).copied().unwrap_or(false) {
            signed_log(x)
        } else {
            x
        }
    }

    /// Calls `visit(input, its own column's standardised value, its indicator
    /// column and that column's standardised value)` for every input, in
    /// order. A missing input's own value is 0 (it takes the mean). No
    /// allocation: this runs per event.
    pub(crate) fn each(&self, inputs: &[f64], n: usize, mut visit: impl FnMut(usize, f64, Option<(usize, f64)>)) {
        let mut next = self.missing_indicators.iter().enumerate().peekable();
        for i in 0..n {
            let x = inputs.get(i).copied().unwrap_or(f64::NAN);
            let present = x.is_finite();
            let own = if present { (self.transform(i, x) - self.mean[i]) / self.std[i] } else { 0.0 };
            let flag = match next.peek() {
                Some(&(k, &j)) if j == i => {
                    next.next();
                    let c = n + k;
                    Some((c, (if present { 0.0 } else { 1.0 } - self.mean[c]) / self.std[c]))
                }
                _ => None,
            };
            visit(i, own, flag);
        }
    }

    /// Checks the shape against `n` inputs.
    pub(crate) fn check(&self, n: usize) -> Result<(), String> {
        let columns = self.columns(n);
        if self.mean.len() != columns || self.std.len() != columns {
            return Err(format!(
                "{n} inputs and {} indicators but {} means and {} deviations",
                self.missing_indicators.len(),
                self.mean.len(),
                self.std.len()
            ));
        }
        if !self.log.is_empty() && self.log.len() != n {
            return Err(format!("{n} inputs but {} `log` flags", self.log.len()));
        }
        if self.missing_indicators.windows(2).any(|w| w[0] >= w[1]) || self.missing_indicators.iter().any(|&i| i >= n) {
            return Err(format!("missing_indicators must be ascending input indices below {n}"));
        }
        Ok(())
    }
}
