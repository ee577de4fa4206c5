//! Per-entity window state and the batch computation shared by every backend.
//!
//! Both backends load entity states, run [`Plan::compute`] over a batch, and store
//! what changed; so the in-memory store and Redis give the same values by
//! construction, and offline replays can use the same code.
//!
//! Windows are sliding at a resolution of 1/60 of the window: each window keeps up
//! to 60 buckets (10 s buckets for 10 minutes, 1 min for 1 hour, 24 min for 24
//! hours). A feature read for an event at time `t` sums the buckets that overlap
//! `(t - window, t]`, so it may include events up to one bucket older than the
//! window, and events in `t`'s own bucket that arrived earlier in the stream even
//! if their timestamp is slightly later. Events older than the newest seen by more
//! than the window plus [`LATENESS_S`] are no longer counted.

use std::collections::HashMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use vigil_core::feature::{Aggregate, EntityKey, FeatureDef};
use vigil_core::{Event, FeatureValue, FeatureVector};

use crate::FeatureError;

/// How far behind the newest event of an entity a late event may still be counted.
pub const LATENESS_S: i64 = 300;
/// Buckets per window.
pub const BUCKETS_PER_WINDOW: u64 = 60;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Bucket {
    index: i64,
    count: u32,
    /// `Decimal::serialize()`: exact and fixed-size.
    sum: [u8; 16],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ring {
    window_s: u64,
    bucket_s: u64,
    /// Ascending by index.
    buckets: Vec<Bucket>,
}

/// Everything stored for one entity (one card, one terminal...).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EntityState {
    /// Newest event time seen, seconds since the epoch.
    max_t: i64,
    rings: Vec<Ring>,
}

impl Ring {
    fn new(window_s: u64) -> Ring {
        Ring { window_s, bucket_s: window_s.div_ceil(BUCKETS_PER_WINDOW).max(1), buckets: Vec::new() }
    }

    fn read(&self, t: i64) -> (i64, Decimal) {
        let lo = t - self.window_s as i64;
        let bs = self.bucket_s as i64;
        let (mut count, mut sum) = (0i64, Decimal::ZERO);
        for b in &self.buckets {
            if (b.index + 1) * bs > lo && b.index * bs <= t {
                count += i64::from(b.count);
                sum += Decimal::deserialize(b.sum);
            }
        }
        (count, sum)
    }

    fn add(&mut self, t: i64, amount: Decimal, max_t: i64) {
        let bs = self.bucket_s as i64;
        let index = t.div_euclid(bs);
        match self.buckets.binary_search_by_key(&index, |b| b.index) {
            Ok(i) => {
                let b = &mut self.buckets[i];
                b.count = b.count.saturating_add(1);
                b.sum = (Decimal::deserialize(b.sum) + amount).serialize();
            }
            Err(i) => self.buckets.insert(i, Bucket { index, count: 1, sum: amount.serialize() }),
        }
        let horizon = max_t - self.window_s as i64 - LATENESS_S;
        self.buckets.retain(|b| (b.index + 1) * bs > horizon);
    }
}

impl EntityState {
    /// Encodes the state as stored (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<EntityState, FeatureError> {
        postcard::from_bytes(bytes).map_err(|e| FeatureError::Corrupt(format!("entity state: {e}")))
    }

    /// Makes the rings match `windows`, keeping the buckets of windows still declared.
    fn conform(&mut self, windows: &[u64]) {
        if self.rings.len() == windows.len() && self.rings.iter().zip(windows).all(|(r, w)| r.window_s == *w) {
            return;
        }
        let mut old = std::mem::take(&mut self.rings);
        self.rings = windows
            .iter()
            .map(|w| match old.iter().position(|r| r.window_s == *w) {
                Some(i) => old.swap_remove(i),
                None => Ring::new(*w),
            })
            .collect();
    }
}

/// The distinct entities features are kept for, and which windows each needs.
#[derive(Debug, Clone)]
struct EntityPlan {
    key: EntityKey,
    windows: Vec<u64>,
}

/// Where each declared feature reads from.
#[derive(Debug, Clone, Copy)]
struct Output {
    entity: usize,
    ring: usize,
    aggregate: Aggregate,
}

/// The compiled feature definitions of a pipeline.
#[derive(Debug, Clone)]
pub struct Plan {
    defs: Vec<FeatureDef>,
    entities: Vec<EntityPlan>,
    outputs: Vec<Output>,
    max_window_s: u64,
}

/// What a batch computation changed: entity states to store and new markers.
#[derive(Debug, Default)]
pub struct Changes {
    /// Indices into the batch's key list of states that changed.
    pub dirty: Vec<usize>,
    /// Indices into the batch of events seen for the first time: their features
    /// (in the computation's output) are what the de-duplication markers store.
    pub first_seen: Vec<usize>,
}

/// The keys a batch touches.
#[derive(Debug, Default)]
pub struct BatchKeys {
    /// Distinct entity ids (`tag` + value), in first-seen order.
    pub entities: Vec<String>,
    /// Per event, per entity plan: an index into `entities`, or `None` when absent.
    per_event: Vec<Vec<Option<usize>>>,
}

impl Plan {
    pub fn new(defs: Vec<FeatureDef>) -> Plan {
        let mut entities: Vec<EntityPlan> = Vec::new();
        let mut outputs = Vec::with_capacity(defs.len());
        for d in &defs {
            let e = match entities.iter().position(|e| e.key == d.entity) {
                Some(i) => i,
                None => {
                    entities.push(EntityPlan { key: d.entity.clone(), windows: Vec::new() });
                    entities.len() - 1
                }
            };
            if !entities[e].windows.contains(&d.window_s) {
                entities[e].windows.push(d.window_s);
            }
            outputs.push((e, d.window_s, d.aggregate));
        }
        for e in &mut entities {
            e.windows.sort_unstable();
        }
        let outputs = outputs
            .into_iter()
            .map(|(entity, w, aggregate)| Output {
                entity,
                ring: entities[entity].windows.iter().position(|x| *x == w).unwrap_or(0),
                aggregate,
            })
            .collect();
        let max_window_s = defs.iter().map(|d| d.window_s).max().unwrap_or(0);
        Plan { defs, entities, outputs, max_window_s }
    }

    pub fn defs(&self) -> &[FeatureDef] {
        &self.defs
    }

    /// How long an idle entity's state must be kept.
    pub fn state_ttl_s(&self) -> u64 {
        self.max_window_s + LATENESS_S as u64
    }

    /// The entity ids a batch touches, de-duplicated.
    pub fn keys(&self, events: &[&Event]) -> BatchKeys {
        let mut keys = BatchKeys::default();
        let mut index: HashMap<String, usize> = HashMap::new();
        for ev in events {
            let mut row = Vec::with_capacity(self.entities.len());
            for e in &self.entities {
                row.push(e.key.value_of(ev).map(|v| {
                    let id = format!("{}={}", e.key, v);
                    match index.get(&id) {
                        Some(&i) => i,
                        None => {
                            let i = keys.entities.len();
                            keys.entities.push(id.clone());
                            index.insert(id, i);
                            i
                        }
                    }
                }));
            }
            keys.per_event.push(row);
        }
        keys
    }

    /// Computes every event's features as of before it and applies it to the
    /// states, in batch order. `seen[i]` holds the stored features of event `i`
    /// when it was processed before: it then changes nothing.
    pub fn compute(
        &self,
        events: &[&Event],
        keys: &BatchKeys,
        states: &mut [EntityState],
        seen: &[Option<FeatureVector>],
    ) -> (Vec<FeatureVector>, Changes) {
        debug_assert_eq!(states.len(), keys.entities.len());
        let mut changes = Changes::default();
        let mut dirty = vec![false; states.len()];
        let mut first_in_batch: HashMap<&str, usize> = HashMap::new();
        let mut out: Vec<FeatureVector> = Vec::with_capacity(events.len());
        for (i, ev) in events.iter().enumerate() {
            if let Some(stored) = &seen[i] {
                out.push(FeatureVector { values: stored.values.clone(), replayed: true });
                continue;
            }
            if let Some(&j) = first_in_batch.get(ev.transaction_id.as_str()) {
                out.push(FeatureVector { values: out[j].values.clone(), replayed: true });
                continue;
            }
            first_in_batch.insert(&ev.transaction_id, i);
            let row = &keys.per_event[i];
            for (e, slot) in row.iter().enumerate() {
                if let Some(s) = slot {
                    states[*s].conform(&self.entities[e].windows);
                }
            }
            let t = ev.unix_s();
            let values = self
                .outputs
                .iter()
                .map(|o| match row[o.entity] {
                    None => FeatureValue::Missing,
                    Some(s) => {
                        let (count, sum) = states[s].rings[o.ring].read(t);
                        match o.aggregate {
                            Aggregate::Count => FeatureValue::Count(count),
                            Aggregate::SumAmount => FeatureValue::Money(sum),
                        }
                    }
                })
                .collect();
            for s in row.iter().flatten() {
                let st = &mut states[*s];
                st.max_t = st.max_t.max(t);
                let max_t = st.max_t;
                for ring in &mut st.rings {
                    ring.add(t, ev.amount, max_t);
                }
                dirty[*s] = true;
            }
            changes.first_seen.push(i);
            out.push(FeatureVector { values, replayed: false });
        }
        changes.dirty = dirty.iter().enumerate().filter_map(|(i, d)| d.then_some(i)).collect();
        (out, changes)
    }
}

/// Encodes stored features for a de-duplication marker.
pub fn encode_marker(fv: &FeatureVector) -> Vec<u8> {
    serde_json::to_vec(&fv.values).unwrap_or_default()
}

pub fn decode_marker(bytes: &[u8]) -> Result<FeatureVector, FeatureError> {
    let values = serde_json::from_slice(bytes).map_err(|e| FeatureError::Corrupt(format!("marker: {e}")))?;
    Ok(FeatureVector { values, replayed: true })
}
