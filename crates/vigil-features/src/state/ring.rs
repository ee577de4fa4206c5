//! Window rings: sliding windows of buckets, each a count and an exact sum of
//! amounts (and, where a feature needs them, the sum of squares, min and max).
//!
//! Windows are sliding at a resolution of 1/60 of the window: each window keeps up
//! to 60 buckets (10 s buckets for 10 minutes, 1 min for 1 hour, 24 min for 24
//! hours). A feature read for an event at time `t` sums the buckets that overlap
//! `(t - window, t]`, so it may include events up to one bucket older than the
//! window, and events in `t`'s own bucket that arrived earlier in the stream even
//! if their timestamp is slightly later. Events older than the newest seen by more
//! than the window plus [`LATENESS_S`] are no longer counted.
//!
//! A matured window (a feature with a `delay`) reads `(t - delay - window, t -
//! delay]` from a ring that keeps `window + delay` of history at the window's
//! own resolution: its `window_s` is that span, its `bucket_s` the window's.
//!
//! Label features count confirmed frauds in rings of their own, bucketed by the
//! time each label was reported, or, for a matured window, by the time of the
//! fraudulent transaction.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{BUCKETS_PER_WINDOW, LATENESS_S};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Bucket {
    pub(crate) index: i64,
    pub(crate) count: u32,
    /// `Decimal::serialize()`: exact and fixed-size.
    pub(crate) sum: [u8; 16],
    /// Kept only in rings that a min, max or standard deviation reads.
    pub(crate) stats: Option<Stats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Stats {
    pub(crate) sum_sq: [u8; 16],
    pub(crate) min: [u8; 16],
    pub(crate) max: [u8; 16],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Ring {
    /// The history kept: the window plus its delay.
    pub(crate) window_s: u64,
    pub(crate) bucket_s: u64,
    pub(crate) stats: bool,
    /// Ascending by index. Stored compactly (`compact`).
    #[serde(with = "super::compact")]
    pub(crate) buckets: Vec<Bucket>,
}

/// What a window holds at one time.
#[derive(Clone, Copy)]
pub(crate) struct Window {
    pub(crate) count: i64,
    pub(crate) sum: Decimal,
    /// `None` when a bucket in the window was written without statistics.
    pub(crate) stats: Option<(Decimal, Decimal, Decimal)>,
}

/// The bucket length of a window: a sixtieth of it.
fn bucket_s(window_s: u64) -> u64 {
    window_s.div_ceil(BUCKETS_PER_WINDOW).max(1)
}

impl Ring {
    /// A ring for a window of `window_s` ending `delay_s` before the events read.
    pub(crate) fn new(window_s: u64, delay_s: u64, stats: bool) -> Ring {
        Ring { window_s: window_s + delay_s, bucket_s: bucket_s(window_s), stats, buckets: Vec::new() }
    }

    /// Whether this is the ring of a window of `window_s` with `delay_s`.
    pub(crate) fn fits(&self, window_s: u64, delay_s: u64) -> bool {
        self.window_s == window_s + delay_s && self.bucket_s == bucket_s(window_s)
    }

    /// What the window held for an event at `t`: the buckets that overlap
    /// `(t - window_s, t - delay_s]`.
    pub(crate) fn read(&self, t: i64, delay_s: u64) -> Window {
        let lo = t - self.window_s as i64;
        let t = t - delay_s as i64;
        let bs = self.bucket_s as i64;
        let mut w = Window { count: 0, sum: Decimal::ZERO, stats: None };
        let mut stats: Option<(Decimal, Decimal, Decimal)> = None;
        let mut complete = self.stats;
        for b in &self.buckets {
            if (b.index + 1) * bs > lo && b.index * bs <= t {
                w.count += i64::from(b.count);
                // Saturating, as the buckets' own sums are.
                w.sum = w.sum.saturating_add(Decimal::deserialize(b.sum));
                match &b.stats {
                    Some(st) => {
                        let (sq, min, max) = (
                            Decimal::deserialize(st.sum_sq),
                            Decimal::deserialize(st.min),
                            Decimal::deserialize(st.max),
                        );
                        stats = Some(match stats {
                            None => (sq, min, max),
                            Some((a, lo, hi)) => (a.saturating_add(sq), lo.min(min), hi.max(max)),
                        });
                    }
                    None => complete = false,
                }
            }
        }
        if complete {
            w.stats = stats;
        }
        w
    }

    pub(crate) fn add(&mut self, t: i64, amount: Decimal, max_t: i64) {
        let bs = self.bucket_s as i64;
        let index = t.div_euclid(bs);
        let sq = || amount.checked_mul(amount).unwrap_or(Decimal::MAX);
        match self.buckets.binary_search_by_key(&index, |b| b.index) {
            Ok(i) => {
                let b = &mut self.buckets[i];
                b.count = b.count.saturating_add(1);
                b.sum = Decimal::deserialize(b.sum).saturating_add(amount).serialize();
                if let Some(st) = &mut b.stats {
                    st.sum_sq = Decimal::deserialize(st.sum_sq).saturating_add(sq()).serialize();
                    st.min = Decimal::deserialize(st.min).min(amount).serialize();
                    st.max = Decimal::deserialize(st.max).max(amount).serialize();
                }
            }
            Err(i) => {
                let stats = self.stats.then(|| Stats {
                    sum_sq: sq().serialize(),
                    min: amount.serialize(),
                    max: amount.serialize(),
                });
                self.buckets.insert(i, Bucket { index, count: 1, sum: amount.serialize(), stats })
            }
        }
        let horizon = max_t - self.window_s as i64 - LATENESS_S;
        self.buckets.retain(|b| (b.index + 1) * bs > horizon);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window's sum is the decimals' sum, digits and scale alike; past a
    /// decimal's range it saturates, as a bucket's own sum does.
    #[test]
    fn a_window_sums_as_decimals_do() {
        let cases: [&[&str]; 6] = [
            &[],
            &["10.50", "0.25", "3.00"],
            &["10.50", "-10.50"],
            &["1.5", "2.25", "7"],
            &["79228162514264337593543950335", "1"],
            &["-0.01", "0.01", "0.00"],
        ];
        for amounts in cases {
            let mut ring = Ring::new(600, 0, false);
            for (i, a) in amounts.iter().enumerate() {
                ring.buckets.push(Bucket {
                    index: i as i64,
                    count: 1,
                    sum: a.parse::<Decimal>().unwrap().serialize(),
                    stats: None,
                });
            }
            let expected = amounts.iter().fold(Decimal::ZERO, |s, a| s.saturating_add(a.parse::<Decimal>().unwrap()));
            let sum = ring.read(60, 0).sum;
            assert_eq!((sum, sum.to_string()), (expected, expected.to_string()), "{amounts:?}");
        }
    }
}
