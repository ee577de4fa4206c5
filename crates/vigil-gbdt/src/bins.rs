//! Quantile bins per input: at most `max_bins - 1` bins of present values,
//! then one bin for missing values (`NaN`). A split "bin ≤ b" is "value ≤
//! upper[b]" on raw values, so scoring never bins.

use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Rows read to place the bins of an input: quantiles of a seeded sample
/// this large are as good as those of every row, for far less sorting.
const BIN_SAMPLE: usize = 200_000;

/// The part of the bins placed by distinct values rather than by rows. Rows
/// alone (plain quantiles, as LightGBM and XGBoost start) put few cuts where
/// values are sparse, and the sparse tail is where much fraud is: on raw card
/// payments whose frauds include every amount above a threshold, the top bin
/// of 255 quantiles held a few hundred rows on both sides of it, and boosting
/// could not find the threshold. Measured on validation splits only
/// (benches/RESULTS.md, "Bins for the tails"): 0 -> 0.25 raised average
/// precision from 0.710 to 0.743 on raw payments and left the PCA table and
/// the hard generated table within their noise; 0.5 gave back some of the
/// raw gain. With all values distinct it is plain quantiles.
const DISTINCT_SHARE: f64 = 0.25;

/// The bins of one input.
#[derive(Debug, Clone)]
pub(crate) struct Bins {
    /// The largest training value of each bin of present values, ascending.
    pub(crate) upper: Vec<f64>,
}

impl Bins {
    /// Bins for the present values of `column`, at most `value_bins` of them.
    pub(crate) fn fit(column: &[f64], value_bins: usize, seed: u64) -> Bins {
        let mut present: Vec<f64> = column.iter().copied().filter(|v| !v.is_nan()).collect();
        if present.len() > BIN_SAMPLE {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            present = sample(&mut rng, present.len(), BIN_SAMPLE).into_iter().map(|i| present[i]).collect();
        }
        present.sort_by(f64::total_cmp);
        let mut distinct = present.clone();
        distinct.dedup();
        if distinct.len() <= value_bins {
            return Bins { upper: distinct };
        }
        // Cut at quantiles of a blend of two orders (`DISTINCT_SHARE`): each
        // bin holds about the same share of rows and distinct values together.
        // Each bin's upper bound is a value that occurs, and a value reached
        // by several cuts makes one bin.
        let (n, d) = (present.len() as f64, distinct.len() as f64);
        let mut upper = Vec::with_capacity(value_bins);
        let mut rank = 0usize;
        let mut b = 1usize;
        for (i, &v) in present.iter().enumerate() {
            if i > 0 && v > present[i - 1] {
                rank += 1;
            }
            // Rows up to and including i, and distinct values up to v.
            let share = (1.0 - DISTINCT_SHARE) * (i + 1) as f64 / n + DISTINCT_SHARE * (rank + 1) as f64 / d;
            // The cuts this row reaches (all of them at the last row).
            let reached = if i + 1 == present.len() { value_bins } else { (share * value_bins as f64) as usize };
            if reached >= b {
                // The cut takes every row of the value, so it ends the value's run.
                if upper.last().is_none_or(|u: &f64| v > *u) {
                    upper.push(v);
                }
                b = reached + 1;
            }
        }
        Bins { upper }
    }

    /// Bins of present values (the missing bin is the next index).
    pub(crate) fn len(&self) -> usize {
        self.upper.len()
    }

    /// The bin of `v`: the first whose upper bound is at least `v` (values
    /// above every bound share the last bin), or the missing bin.
    pub(crate) fn of(&self, v: f64) -> u8 {
        if v.is_nan() || self.upper.is_empty() {
            return self.upper.len() as u8;
        }
        self.upper.partition_point(|u| *u < v).min(self.upper.len() - 1) as u8
    }
}

/// The training rows in bins, input by input: `bins[f * rows + i]`.
pub(crate) struct Binned {
    pub(crate) rows: usize,
    pub(crate) inputs: Vec<Bins>,
    pub(crate) bins: Vec<u8>,
}

impl Binned {
    /// `x` is row-major, `rows × features`.
    pub(crate) fn new(x: &[f64], rows: usize, features: usize, max_bins: usize, seed: u64) -> Binned {
        let mut inputs = Vec::with_capacity(features);
        let mut bins = vec![0u8; rows * features];
        let mut column = Vec::with_capacity(rows);
        for f in 0..features {
            column.clear();
            column.extend((0..rows).map(|i| x[i * features + f]));
            let b = Bins::fit(&column, max_bins - 1, seed.wrapping_add(f as u64));
            for (i, v) in column.iter().enumerate() {
                bins[f * rows + i] = b.of(*v);
            }
            inputs.push(b);
        }
        Binned { rows, inputs, bins }
    }

    pub(crate) fn column(&self, f: usize) -> &[u8] {
        &self.bins[f * self.rows..(f + 1) * self.rows]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_values_get_a_bin_each_and_many_get_quantiles() {
        let b = Bins::fit(&[3.0, 1.0, f64::NAN, 2.0, 1.0], 254, 1);
        assert_eq!(b.upper, vec![1.0, 2.0, 3.0]);
        assert_eq!((b.of(1.0), b.of(1.5), b.of(3.0), b.of(9.0), b.of(f64::NAN)), (0, 1, 2, 2, 3));
        let many: Vec<f64> = (0..10_000).map(f64::from).collect();
        let b = Bins::fit(&many, 10, 1);
        assert_eq!(b.len(), 10);
        assert!(b.upper.windows(2).all(|w| w[0] < w[1]));
        // About a tenth of the values in each bin.
        let mut counts = [0usize; 11];
        for v in &many {
            counts[b.of(*v) as usize] += 1;
        }
        assert!(counts[..10].iter().all(|c| (900..=1100).contains(c)), "{counts:?}");
    }

    #[test]
    fn a_sparse_tail_gets_cuts_of_its_own() {
        // 10,000 rows on 100 usual amounts, then 40 rare large ones (all
        // distinct): plain quantiles would leave them inside the last bin with
        // usual ones; the blend cuts among them.
        let mut column: Vec<f64> = (0..10_000).map(|i| f64::from(i % 100)).collect();
        column.extend((0..40).map(|i| 500.0 + f64::from(i) * 10.0));
        let b = Bins::fit(&column, 32, 1);
        let in_tail = b.upper.iter().filter(|u| **u >= 500.0).count();
        // Plain quantiles of 32 bins: 314 rows each, one bin for the whole tail.
        assert!(in_tail >= 3, "{:?}", b.upper);
        assert!(b.len() <= 32 && b.upper.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(*b.upper.last().unwrap(), 890.0, "the last bin ends at the largest value");
    }
}
