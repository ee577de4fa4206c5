//! What is stored for one record (one card, one terminal...): the same bytes in
//! every backend, read and updated by the computation that every backend shares
//! ([`crate::Plan::compute`]), so the in-memory store and Redis give the same
//! values by construction, and offline replays can use the same code.
//!
//! A record holds, per declared need of its entity: window rings (`ring`),
//! its newest events (for `time_since_last`, `previous_amount`, `changed`,
//! `previous`), distinct-value sets (`distinct`), fraud rings fed by labels,
//! and the composite entities kept inside it (`nest`). Records are encoded
//! with postcard (a ring's buckets compactly, `compact`); the Redis key names
//! the layout's version (`s6`), so that a
//! record of an older layout is left to expire rather than misread.

mod compact;
mod distinct;
mod nest;
mod ring;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use vigil_core::{Event, EventField};

use crate::plan::EntityPlan;
use crate::FeatureError;

pub(crate) use distinct::Seen;
use distinct::SKETCH_BITS;
use nest::Nest;
pub(crate) use nest::{member_id, record_of, within, within_mut};
pub(crate) use ring::{Ring, Window};

/// How far behind the newest event of an entity a late event may still be counted.
pub const LATENESS_S: i64 = 300;
/// Buckets per window.
pub const BUCKETS_PER_WINDOW: u64 = 60;
/// Newest events kept per entity for `time_since_last` and `previous_amount`:
/// an event up to this many places out of order still finds its predecessor.
pub const RECENT_EVENTS: usize = 4;
/// Distinct values tracked exactly per entity and `distinct` feature. Beyond
/// it, the least recently seen values are forgotten and a sketch (a sliding
/// HyperLogLog of [`SKETCH_REGISTERS`] registers) counts for the windows that
/// reach back past the newest forgotten value.
pub const DISTINCT_LIMIT: usize = 128;
/// Members per composite key kept in one record (module docs): a card seen on
/// more devices than this within its longest window forgets the least recently
/// seen.
pub const NEST_LIMIT: usize = 64;
/// Registers of a distinct-count sketch: a standard error of about
/// 1.04 / sqrt(128), 9%.
pub const SKETCH_REGISTERS: usize = 1 << SKETCH_BITS;

/// Everything stored for one entity (one card, one terminal...).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EntityState {
    /// Newest event time seen, seconds since the epoch.
    pub(crate) max_t: i64,
    pub(crate) rings: Vec<Ring>,
    /// Up to [`RECENT_EVENTS`] newest events, ascending by time.
    pub(crate) recent: Vec<Recent>,
    /// The fields `changed` features compare, by name, in the order of each
    /// recent event's `fields`.
    pub(crate) tracked: Vec<String>,
    /// The fields `previous` features give, by name, in the order of each
    /// recent event's `texts`.
    pub(crate) kept: Vec<String>,
    pub(crate) distinct: Vec<Seen>,
    /// Confirmed frauds by report time, one ring per label-feature window.
    pub(crate) frauds: Vec<Ring>,
    /// Composite entities kept in this record (module docs), by key.
    pub(crate) nests: Vec<Nest>,
}

/// One of an entity's newest events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Recent {
    pub(crate) t: i64,
    pub(crate) amount: [u8; 16],
    /// Stable hashes of the `tracked` fields' values (0: absent or unknown).
    pub(crate) fields: Vec<u64>,
    /// The `kept` fields' values (`None`: absent or unknown).
    pub(crate) texts: Vec<Option<String>>,
}

impl EntityState {
    /// Encodes the state as stored (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<EntityState, FeatureError> {
        postcard::from_bytes(bytes).map_err(|e| FeatureError::Corrupt(format!("entity state: {e}")))
    }

    /// Makes the state match its plan, keeping what is still declared.
    pub(crate) fn conform(&mut self, plan: &EntityPlan) {
        let rings_match = self.rings.len() == plan.windows.len()
            && self.rings.iter().zip(&plan.windows).all(|(r, w)| r.fits(w.window_s, w.delay_s) && r.stats == w.stats);
        if !rings_match {
            let mut old = std::mem::take(&mut self.rings);
            self.rings = plan
                .windows
                .iter()
                .map(|w| match old.iter().position(|r| r.fits(w.window_s, w.delay_s)) {
                    Some(i) => {
                        let mut r = old.swap_remove(i);
                        // Buckets written without statistics make min, max and
                        // standard deviation missing until they age out.
                        r.stats = w.stats;
                        r
                    }
                    None => Ring::new(w.window_s, w.delay_s, w.stats),
                })
                .collect();
        }
        let distinct_match = self.distinct.len() == plan.distinct.len()
            && self.distinct.iter().zip(&plan.distinct).all(|(d, (f, w))| d.field == f.name() && d.window_s == *w);
        if !distinct_match {
            let mut old = std::mem::take(&mut self.distinct);
            self.distinct = plan
                .distinct
                .iter()
                .map(|(f, w)| match old.iter().position(|d| d.field == f.name() && d.window_s == *w) {
                    Some(i) => old.swap_remove(i),
                    None => Seen::new(f.name(), *w),
                })
                .collect();
        }
        if !plan.recent {
            self.recent.clear();
        }
        let tracked_match = self.tracked.len() == plan.changed.len()
            && self.tracked.iter().zip(&plan.changed).all(|(t, f)| t == f.name());
        if !tracked_match {
            // Values of newly tracked fields are unknown for earlier events.
            self.tracked = plan.changed.iter().map(|f| f.name().to_owned()).collect();
            for r in &mut self.recent {
                r.fields = vec![0; plan.changed.len()];
            }
        }
        let kept_match =
            self.kept.len() == plan.previous.len() && self.kept.iter().zip(&plan.previous).all(|(k, f)| k == f.name());
        if !kept_match {
            self.kept = plan.previous.iter().map(|f| f.name().to_owned()).collect();
            for r in &mut self.recent {
                r.texts = vec![None; plan.previous.len()];
            }
        }
        if self.frauds.len() != plan.frauds.len()
            || self.frauds.iter().zip(&plan.frauds).any(|(r, (w, d))| !r.fits(*w, *d))
        {
            let mut old = std::mem::take(&mut self.frauds);
            self.frauds = plan
                .frauds
                .iter()
                .map(|(w, d)| match old.iter().position(|r| r.fits(*w, *d)) {
                    Some(i) => old.swap_remove(i),
                    None => Ring::new(*w, *d, false),
                })
                .collect();
        }
    }

    /// The newest time this state was written for: its newest event, or the
    /// bucket of its newest fraud report (a label does not move `max_t`).
    pub(crate) fn last_seen(&self) -> i64 {
        let reported = self.frauds.iter().filter_map(|r| r.buckets.last().map(|b| b.index * r.bucket_s as i64));
        reported.fold(self.max_t, i64::max)
    }

    /// Counts one confirmed fraud reported at `t`, of a transaction at
    /// `occurred` when the label says: rings of matured windows count it at
    /// the transaction's time (a label without it is not theirs to count).
    pub(crate) fn add_fraud(&mut self, plan: &EntityPlan, t: i64, occurred: Option<i64>) {
        let horizon_t = self.max_t.max(t);
        for (ring, (_, delay_s)) in self.frauds.iter_mut().zip(&plan.frauds) {
            match (*delay_s, occurred) {
                (0, _) => ring.add(t, Decimal::ZERO, horizon_t),
                (_, Some(at)) => ring.add(at, Decimal::ZERO, horizon_t),
                (_, None) => {}
            }
        }
    }

    /// The newest earlier event at or before `t`: its index in `recent`.
    pub(crate) fn previous(&self, t: i64) -> Option<usize> {
        self.recent.iter().rposition(|r| r.t <= t)
    }

    pub(crate) fn add(&mut self, plan: &EntityPlan, ev: &Event, t: i64) {
        self.max_t = self.max_t.max(t);
        let max_t = self.max_t;
        for ring in &mut self.rings {
            ring.add(t, ev.amount, max_t);
        }
        if plan.recent {
            let at = self.recent.partition_point(|r| r.t <= t);
            let fields = plan.changed.iter().map(|f| field_hash(ev, *f)).collect();
            let texts = plan.previous.iter().map(|f| ev.text(*f).map(str::to_owned)).collect();
            self.recent.insert(at, Recent { t, amount: ev.amount.serialize(), fields, texts });
            if self.recent.len() > RECENT_EVENTS {
                self.recent.remove(0);
            }
        }
        for (seen, (field, _)) in self.distinct.iter_mut().zip(&plan.distinct) {
            if let Some(v) = ev.text(*field) {
                seen.add(v, t, max_t);
            }
        }
    }
}

/// A field's value as `changed` compares it: a stable hash, 0 when absent.
pub(crate) fn field_hash(ev: &Event, field: EventField) -> u64 {
    ev.text(field).map_or(0, |v| vigil_core::stable_hash(v).max(1))
}
