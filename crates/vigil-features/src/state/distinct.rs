//! Distinct values of a field per entity (`distinct` features): exact up to
//! [`DISTINCT_LIMIT`] values, then a sliding HyperLogLog for the windows that
//! reach back past a forgotten value.

use serde::{Deserialize, Serialize};

use super::{DISTINCT_LIMIT, LATENESS_S, SKETCH_REGISTERS};

/// Bits of a hash that choose a sketch's register.
pub(super) const SKETCH_BITS: u32 = 7;

/// Values of one field seen by an entity, for a `distinct` feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Seen {
    pub(crate) field: String,
    pub(crate) window_s: u64,
    /// (stable hash of the value, newest time seen), ascending by hash.
    pub(crate) values: Vec<(u64, i64)>,
    /// The newest time of a value forgotten from `values` to keep the bound:
    /// windows that start before it are counted by `sketch`.
    pub(crate) forgot_t: i64,
    /// Every value since the first one was forgotten, while that matters.
    pub(crate) sketch: Option<Sketch>,
}

/// A sliding HyperLogLog (after Chabchoub and Hébrail): per register, the
/// (time, rank) pairs that can still be the register's maximum for a window
/// ending now, so that any window's estimate reads the pairs newer than its
/// start. Times ascend and ranks strictly descend within a register.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Sketch {
    pub(crate) registers: Vec<Vec<(i64, u8)>>,
}

/// Spreads a stable hash's bits (FNV-1a's high bits are weak on short ids);
/// MurmurHash3's 64-bit finaliser, the same everywhere.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl Sketch {
    pub(crate) fn new() -> Sketch {
        Sketch { registers: vec![Vec::new(); SKETCH_REGISTERS] }
    }

    /// Adds a value (its stable hash) last seen at `t`.
    pub(crate) fn add(&mut self, hash: u64, t: i64) {
        let h = mix(hash);
        let register = &mut self.registers[(h >> (64 - SKETCH_BITS)) as usize];
        // Rank: position of the first set bit among the remaining bits, from 1.
        let rank = ((h << SKETCH_BITS).leading_zeros().min(64 - SKETCH_BITS) + 1) as u8;
        // A pair at least as new with at least this rank makes this one useless.
        if register.iter().any(|&(pt, pr)| pt >= t && pr >= rank) {
            return;
        }
        register.retain(|&(pt, pr)| !(pt <= t && pr <= rank));
        let at = register.partition_point(|&(pt, _)| pt < t);
        register.insert(at, (t, rank));
    }

    /// Forgets pairs at or before `horizon`; whether any is left.
    pub(crate) fn expire(&mut self, horizon: i64) -> bool {
        for r in &mut self.registers {
            r.retain(|&(pt, _)| pt > horizon);
        }
        self.registers.iter().any(|r| !r.is_empty())
    }

    /// Estimated distinct values seen after `lo`.
    pub(crate) fn estimate(&self, lo: i64) -> i64 {
        let m = SKETCH_REGISTERS as f64;
        let (mut sum, mut zeros) = (0.0, 0usize);
        for r in &self.registers {
            // Ranks descend with time: the first pair after `lo` is the maximum.
            let rank = r.iter().find(|&&(pt, _)| pt > lo).map_or(0, |&(_, pr)| pr);
            sum += 2f64.powi(-i32::from(rank));
            zeros += usize::from(rank == 0);
        }
        let raw = 0.7213 / (1.0 + 1.079 / m) * m * m / sum;
        let estimate = if raw <= 2.5 * m && zeros > 0 { m * (m / zeros as f64).ln() } else { raw };
        estimate.round() as i64
    }
}

impl Seen {
    pub(crate) fn new(field: &str, window_s: u64) -> Seen {
        Seen { field: field.to_owned(), window_s, values: Vec::new(), forgot_t: i64::MIN, sketch: None }
    }

    pub(crate) fn count(&self, t: i64) -> i64 {
        let lo = t - self.window_s as i64;
        match &self.sketch {
            // The exact set lost values inside this window: estimate.
            Some(sketch) if self.forgot_t > lo => sketch.estimate(lo),
            _ => self.values.iter().filter(|(_, last)| *last > lo && *last <= t).count() as i64,
        }
    }

    pub(crate) fn add(&mut self, value: &str, t: i64, max_t: i64) {
        // Stable across processes: sets written by one Vigil are read by another.
        let h = vigil_core::stable_hash(value);
        match self.values.binary_search_by_key(&h, |(k, _)| *k) {
            Ok(i) => self.values[i].1 = self.values[i].1.max(t),
            Err(i) => self.values.insert(i, (h, t)),
        }
        if let Some(sketch) = &mut self.sketch {
            sketch.add(h, t);
        }
        let horizon = max_t - self.window_s as i64 - LATENESS_S;
        self.values.retain(|(_, last)| *last > horizon);
        while self.values.len() > DISTINCT_LIMIT {
            let oldest = self.values.iter().enumerate().min_by_key(|(_, (_, last))| *last).map(|(i, _)| i);
            let Some(i) = oldest else { break };
            if self.sketch.is_none() {
                // From the first value forgotten on, the sketch sees every value.
                let mut sketch = Sketch::new();
                for &(vh, last) in &self.values {
                    sketch.add(vh, last);
                }
                self.sketch = Some(sketch);
            }
            let (_, last) = self.values.remove(i);
            self.forgot_t = self.forgot_t.max(last);
        }
        // Once no window can reach back to a forgotten value, the exact set
        // is complete again and the sketch goes.
        let needed = self.forgot_t > horizon;
        if let Some(sketch) = &mut self.sketch {
            if !sketch.expire(horizon) || !needed {
                self.sketch = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sketch_estimates_within_its_error_and_slides() {
        let mut worst: f64 = 0.0;
        for (n, prefix) in [(200, "card"), (1_000, "c-"), (10_000, "4000 1234 "), (100_000, "x")] {
            let mut sk = Sketch::new();
            for i in 0..n {
                sk.add(vigil_core::stable_hash(&format!("{prefix}{i}")), i);
            }
            let est = sk.estimate(-1);
            let error = (est as f64 - n as f64).abs() / n as f64;
            worst = worst.max(error);
            // The newest half alone, read from the same sketch.
            let half = sk.estimate(n / 2 - 1);
            assert!((half as f64 - (n / 2) as f64).abs() / ((n / 2) as f64) < 0.3, "{n}: half {half}");
            // Registers keep only pairs that can still be a maximum: a few each.
            let pairs: usize = sk.registers.iter().map(Vec::len).sum();
            assert!(postcard::to_stdvec(&sk).unwrap().len() < 4_000, "{n}: stored size");
            assert!(pairs < SKETCH_REGISTERS * 20, "{n}: {pairs} pairs");
            assert!(!sk.expire(n), "every pair is at or before {n}");
        }
        assert!(worst < 0.25, "worst error {worst}");
    }
}
