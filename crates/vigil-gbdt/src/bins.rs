//! Quantile bins per input: at most `max_bins - 1` bins of present values,
//! then one bin for missing values (`NaN`). A split "bin ≤ b" is "value ≤
//! upper[b]" on raw values, so scoring never bins.

use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Rows read to place the bins of an input: quantiles of a seeded sample
/// this large are as good as those of every row, for far less sorting.
const BIN_SAMPLE: usize = 200_000;

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
        // Cut at quantiles: each bin's upper bound is a value that occurs, and
        // a value repeated across several cuts makes one bin.
        let mut upper = Vec::with_capacity(value_bins);
        for b in 1..=value_bins {
            let at = (b * present.len()).div_ceil(value_bins).clamp(1, present.len()) - 1;
            let v = present[at];
            if upper.last().is_none_or(|last: &f64| v > *last) {
                upper.push(v);
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
}
