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
//!
//! A composite entity (`card_id+device_id`) is kept inside the record of its
//! first field (the card's), as a member of a nested map keyed by the other
//! fields' values, so that an event touches one stored record per first field
//! rather than one per declared key. A member is dropped when its record has
//! seen no event of it for [`Plan::state_ttl_s`] (as a key of its own would
//! expire), and a record keeps at most [`NEST_LIMIT`] members per composite
//! key: beyond it, the least recently seen member is forgotten and its
//! features start afresh if it comes back.
//!
//! Label features (`fraud_count`, `fraud_rate`) count confirmed frauds in rings
//! of their own, bucketed by the time each label was reported: a read for an
//! event at `t` counts the frauds reported in `(t - window, t]`, so a label
//! reported after an event never reaches that event's features.

use std::collections::HashMap;

use rust_decimal::{Decimal, MathematicalOps};
use serde::{Deserialize, Serialize};
use vigil_core::feature::{Aggregate, EntityKey, FeatureDef};
use vigil_core::{Event, EventField, FeatureValue, FeatureVector, Fields, Label, Verdict};

use crate::FeatureError;

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
const SKETCH_BITS: u32 = 7;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Bucket {
    index: i64,
    count: u32,
    /// `Decimal::serialize()`: exact and fixed-size.
    sum: [u8; 16],
    /// Kept only in rings that a min, max or standard deviation reads.
    stats: Option<Stats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stats {
    sum_sq: [u8; 16],
    min: [u8; 16],
    max: [u8; 16],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ring {
    window_s: u64,
    bucket_s: u64,
    stats: bool,
    /// Ascending by index.
    buckets: Vec<Bucket>,
}

/// Values of one field seen by an entity, for a `distinct` feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Seen {
    field: String,
    window_s: u64,
    /// (stable hash of the value, newest time seen), ascending by hash.
    values: Vec<(u64, i64)>,
    /// The newest time of a value forgotten from `values` to keep the bound:
    /// windows that start before it are counted by `sketch`.
    forgot_t: i64,
    /// Every value since the first one was forgotten, while that matters.
    sketch: Option<Sketch>,
}

/// A sliding HyperLogLog (after Chabchoub and Hébrail): per register, the
/// (time, rank) pairs that can still be the register's maximum for a window
/// ending now, so that any window's estimate reads the pairs newer than its
/// start. Times ascend and ranks strictly descend within a register.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sketch {
    registers: Vec<Vec<(i64, u8)>>,
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
    fn new() -> Sketch {
        Sketch { registers: vec![Vec::new(); SKETCH_REGISTERS] }
    }

    /// Adds a value (its stable hash) last seen at `t`.
    fn add(&mut self, hash: u64, t: i64) {
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
    fn expire(&mut self, horizon: i64) -> bool {
        for r in &mut self.registers {
            r.retain(|&(pt, _)| pt > horizon);
        }
        self.registers.iter().any(|r| !r.is_empty())
    }

    /// Estimated distinct values seen after `lo`.
    fn estimate(&self, lo: i64) -> i64 {
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

/// Everything stored for one entity (one card, one terminal...).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EntityState {
    /// Newest event time seen, seconds since the epoch.
    max_t: i64,
    rings: Vec<Ring>,
    /// Up to [`RECENT_EVENTS`] newest events, ascending by time.
    recent: Vec<Recent>,
    /// The fields `changed` features compare, by name, in the order of each
    /// recent event's `fields`.
    tracked: Vec<String>,
    /// The fields `previous` features give, by name, in the order of each
    /// recent event's `texts`.
    kept: Vec<String>,
    distinct: Vec<Seen>,
    /// Confirmed frauds by report time, one ring per label-feature window.
    frauds: Vec<Ring>,
    /// Composite entities kept in this record (module docs), by key.
    nests: Vec<Nest>,
}

/// The members of one composite key (`card_id+device_id`) in the record of
/// its first field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Nest {
    /// The composite key's name.
    key: String,
    /// Ascending by id: the values of the key's other fields.
    members: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Member {
    id: String,
    state: EntityState,
}

/// One of an entity's newest events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Recent {
    t: i64,
    amount: [u8; 16],
    /// Stable hashes of the `tracked` fields' values (0: absent or unknown).
    fields: Vec<u64>,
    /// The `kept` fields' values (`None`: absent or unknown).
    texts: Vec<Option<String>>,
}

/// What a window holds at one time.
#[derive(Clone, Copy)]
struct Window {
    count: i64,
    sum: Decimal,
    /// `None` when a bucket in the window was written without statistics.
    stats: Option<(Decimal, Decimal, Decimal)>,
}

impl Ring {
    fn new(window_s: u64, stats: bool) -> Ring {
        Ring { window_s, bucket_s: window_s.div_ceil(BUCKETS_PER_WINDOW).max(1), stats, buckets: Vec::new() }
    }

    fn read(&self, t: i64) -> Window {
        let lo = t - self.window_s as i64;
        let bs = self.bucket_s as i64;
        let mut w = Window { count: 0, sum: Decimal::ZERO, stats: None };
        let mut stats: Option<(Decimal, Decimal, Decimal)> = None;
        let mut complete = self.stats;
        for b in &self.buckets {
            if (b.index + 1) * bs > lo && b.index * bs <= t {
                w.count += i64::from(b.count);
                w.sum += Decimal::deserialize(b.sum);
                match &b.stats {
                    Some(st) => {
                        let (sq, min, max) = (
                            Decimal::deserialize(st.sum_sq),
                            Decimal::deserialize(st.min),
                            Decimal::deserialize(st.max),
                        );
                        stats = Some(match stats {
                            None => (sq, min, max),
                            Some((a, lo, hi)) => (a + sq, lo.min(min), hi.max(max)),
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

    fn add(&mut self, t: i64, amount: Decimal, max_t: i64) {
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

impl Seen {
    fn new(field: &str, window_s: u64) -> Seen {
        Seen { field: field.to_owned(), window_s, values: Vec::new(), forgot_t: i64::MIN, sketch: None }
    }

    fn count(&self, t: i64) -> i64 {
        let lo = t - self.window_s as i64;
        match &self.sketch {
            // The exact set lost values inside this window: estimate.
            Some(sketch) if self.forgot_t > lo => sketch.estimate(lo),
            _ => self.values.iter().filter(|(_, last)| *last > lo && *last <= t).count() as i64,
        }
    }

    fn add(&mut self, value: &str, t: i64, max_t: i64) {
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

impl EntityState {
    /// Encodes the state as stored (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<EntityState, FeatureError> {
        postcard::from_bytes(bytes).map_err(|e| FeatureError::Corrupt(format!("entity state: {e}")))
    }

    /// Makes the state match its plan, keeping what is still declared.
    fn conform(&mut self, plan: &EntityPlan) {
        let rings_match = self.rings.len() == plan.windows.len()
            && self.rings.iter().zip(&plan.windows).all(|(r, (w, st))| r.window_s == *w && r.stats == *st);
        if !rings_match {
            let mut old = std::mem::take(&mut self.rings);
            self.rings = plan
                .windows
                .iter()
                .map(|(w, st)| match old.iter().position(|r| r.window_s == *w) {
                    Some(i) => {
                        let mut r = old.swap_remove(i);
                        // Buckets written without statistics make min, max and
                        // standard deviation missing until they age out.
                        r.stats = *st;
                        r
                    }
                    None => Ring::new(*w, *st),
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
        if self.frauds.len() != plan.frauds.len() || self.frauds.iter().zip(&plan.frauds).any(|(r, w)| r.window_s != *w)
        {
            let mut old = std::mem::take(&mut self.frauds);
            self.frauds = plan
                .frauds
                .iter()
                .map(|w| match old.iter().position(|r| r.window_s == *w) {
                    Some(i) => old.swap_remove(i),
                    None => Ring::new(*w, false),
                })
                .collect();
        }
    }

    /// The member `id` of the composite key `key`, made (empty) when new:
    /// its (nest, member) position. A full nest forgets its least recently
    /// seen member first.
    fn member(&mut self, key: &str, id: &str) -> (usize, usize) {
        let n = match self.nests.iter().position(|n| n.key == key) {
            Some(n) => n,
            None => {
                self.nests.push(Nest { key: key.to_owned(), members: Vec::new() });
                self.nests.len() - 1
            }
        };
        let members = &mut self.nests[n].members;
        let m = match members.binary_search_by(|m| m.id.as_str().cmp(id)) {
            Ok(m) => m,
            Err(_) => {
                if members.len() >= NEST_LIMIT {
                    let oldest = members.iter().enumerate().min_by_key(|(_, m)| m.state.max_t).map(|(i, _)| i);
                    if let Some(i) = oldest {
                        members.remove(i);
                    }
                }
                let at = members.partition_point(|m| m.id.as_str() < id);
                members.insert(at, Member { id: id.to_owned(), state: EntityState::default() });
                at
            }
        };
        (n, m)
    }

    /// Forgets members not seen for `keep_s` before the record's newest
    /// event, and composite keys left without members.
    fn prune_nests(&mut self, keep_s: u64) {
        let horizon = self.max_t.saturating_sub(keep_s as i64);
        for nest in &mut self.nests {
            nest.members.retain(|m| m.state.last_seen() >= horizon);
        }
        self.nests.retain(|n| !n.members.is_empty());
    }

    /// The newest time this state was written for: its newest event, or the
    /// bucket of its newest fraud report (a label does not move `max_t`).
    fn last_seen(&self) -> i64 {
        let reported = self.frauds.iter().filter_map(|r| r.buckets.last().map(|b| b.index * r.bucket_s as i64));
        reported.fold(self.max_t, i64::max)
    }

    /// Counts one confirmed fraud reported at `t`.
    fn add_fraud(&mut self, t: i64) {
        let horizon_t = self.max_t.max(t);
        for ring in &mut self.frauds {
            ring.add(t, Decimal::ZERO, horizon_t);
        }
    }

    /// The newest earlier event at or before `t`: its index in `recent`.
    fn previous(&self, t: i64) -> Option<usize> {
        self.recent.iter().rposition(|r| r.t <= t)
    }

    fn add(&mut self, plan: &EntityPlan, ev: &Event, t: i64) {
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
fn field_hash(ev: &Event, field: EventField) -> u64 {
    ev.text(field).map_or(0, |v| vigil_core::stable_hash(v).max(1))
}

/// The distinct entities features are kept for, and what each needs.
#[derive(Debug, Clone)]
struct EntityPlan {
    key: EntityKey,
    /// The key of the record this entity's state is kept in ([`record_of`]).
    record: EntityKey,
    /// For a composite key: its name among the record's nests.
    nest: Option<String>,
    /// Windows and whether each keeps amount statistics, ascending by window.
    windows: Vec<(u64, bool)>,
    /// Whether the newest events are kept (`time_since_last`,
    /// `previous_amount`, `changed`).
    recent: bool,
    /// The fields `changed` features compare, kept with the newest events.
    changed: Vec<EventField>,
    /// The fields `previous` features give, kept with the newest events.
    previous: Vec<EventField>,
    /// (field, window) of each `distinct` feature.
    distinct: Vec<(EventField, u64)>,
    /// Windows of label features, ascending.
    frauds: Vec<u64>,
}

/// The key of the record an entity key's state is kept in: its first field's
/// (itself, for a key of one field).
fn record_of(key: &EntityKey) -> EntityKey {
    EntityKey::of(key.fields()[0])
}

/// A composite key's member id in its record: the values of its other fields.
fn member_id<T: Fields>(key: &EntityKey, item: &T) -> Option<String> {
    let mut out = String::new();
    for (i, f) in key.fields()[1..].iter().enumerate() {
        if i > 0 {
            out.push('\u{1f}');
        }
        out.push_str(item.text(*f)?);
    }
    Some(out)
}

/// An entity's state in its record: the record itself, or the member at
/// (nest, member).
fn within(record: &EntityState, at: Option<(usize, usize)>) -> &EntityState {
    match at {
        None => record,
        Some((n, m)) => &record.nests[n].members[m].state,
    }
}

fn within_mut(record: &mut EntityState, at: Option<(usize, usize)>) -> &mut EntityState {
    match at {
        None => record,
        Some((n, m)) => &mut record.nests[n].members[m].state,
    }
}

/// Where each declared feature reads from.
#[derive(Debug, Clone, Copy)]
struct Output {
    entity: usize,
    /// Index into the entity's rings, or its distinct sets for `distinct`.
    slot: usize,
    /// For windowed aggregates: the ring's index among all entities' rings, where
    /// an event's read of it is kept so that features sharing a ring read it once.
    ring: usize,
    /// For `fraud_count` and `fraud_rate`: the index of the entity's fraud ring.
    frauds: usize,
    aggregate: Aggregate,
    window_s: u64,
    /// For `changed`: the field it compares.
    of: Option<EventField>,
}

/// The compiled feature definitions of a pipeline.
#[derive(Debug, Clone)]
pub struct Plan {
    defs: Vec<FeatureDef>,
    entities: Vec<EntityPlan>,
    outputs: Vec<Output>,
    /// Rings over all entities: the size of an event's window-read cache.
    rings: usize,
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
#[derive(Debug, Default, PartialEq)]
pub struct BatchKeys {
    /// Distinct entity ids (`tag` + value), in first-seen order.
    pub entities: Vec<String>,
    /// Per event, per entity plan: an index into `entities`, or `None` when absent.
    per_event: Vec<Vec<Option<usize>>>,
}

impl BatchKeys {
    /// Keys for `n` items that touch no entity.
    pub fn none(n: usize) -> BatchKeys {
        BatchKeys { entities: Vec::new(), per_event: vec![Vec::new(); n] }
    }

    /// The keys of the items at `members`, as a batch of their own over
    /// entity `k` alone (a cluster unit's: a part of [`Plan::by_entity`]
    /// keeps one record per item, so this is what the part's keys of those
    /// items would be).
    pub fn of_entity(&self, k: usize, members: &[usize]) -> BatchKeys {
        BatchKeys {
            entities: vec![self.entities[k].clone()],
            per_event: members
                .iter()
                .map(|&i| self.per_event[i].iter().map(|s| (*s == Some(k)).then_some(0)).collect())
                .collect(),
        }
    }

    /// The keys of items `at..at + n` (a chunk's); every entity is kept.
    pub fn slice(&self, at: usize, n: usize) -> BatchKeys {
        BatchKeys { entities: self.entities.clone(), per_event: self.per_event[at..at + n].to_vec() }
    }

    /// For each entity (in `entities` order), the items that touch it, in order.
    /// An entity id names its key (`card_id=...`), so a row never holds the
    /// same entity twice.
    pub fn items_by_entity(&self) -> Vec<Vec<usize>> {
        let mut by = vec![Vec::new(); self.entities.len()];
        for (i, row) in self.per_event.iter().enumerate() {
            for &k in row.iter().flatten() {
                by[k].push(i);
            }
        }
        by
    }
}

impl Plan {
    /// The plan split by stored record: one plan per record key (an entity
    /// key, with the composite keys kept in its record), each with the
    /// positions of its features in this plan's feature vector. Every feature
    /// reads one record only, so the parts together compute what the whole
    /// plan does.
    pub fn by_entity(&self) -> Vec<(Plan, Vec<usize>)> {
        let mut records: Vec<EntityKey> = Vec::new();
        for e in &self.entities {
            if !records.contains(&e.record) {
                records.push(e.record.clone());
            }
        }
        records
            .iter()
            .map(|r| {
                let positions: Vec<usize> =
                    (0..self.defs.len()).filter(|&i| record_of(&self.defs[i].entity) == *r).collect();
                let defs = positions.iter().map(|&i| self.defs[i].clone()).collect();
                (Plan::new(defs), positions)
            })
            .collect()
    }

    pub fn new(defs: Vec<FeatureDef>) -> Plan {
        let mut entities: Vec<EntityPlan> = Vec::new();
        for d in &defs {
            let e = match entities.iter().position(|e| e.key == d.entity) {
                Some(i) => i,
                None => {
                    entities.push(EntityPlan {
                        key: d.entity.clone(),
                        record: record_of(&d.entity),
                        nest: (d.entity.fields().len() > 1).then(|| d.entity.to_string()),
                        windows: Vec::new(),
                        recent: false,
                        changed: Vec::new(),
                        previous: Vec::new(),
                        distinct: Vec::new(),
                        frauds: Vec::new(),
                    });
                    entities.len() - 1
                }
            };
            let plan = &mut entities[e];
            if d.aggregate.is_label() && !plan.frauds.contains(&d.window_s) {
                plan.frauds.push(d.window_s);
            }
            match (d.aggregate, d.of) {
                (Aggregate::TimeSinceLast | Aggregate::PreviousAmount, _) => plan.recent = true,
                (Aggregate::Changed, Some(field)) => {
                    plan.recent = true;
                    if !plan.changed.contains(&field) {
                        plan.changed.push(field);
                    }
                }
                (Aggregate::Previous, Some(field)) => {
                    plan.recent = true;
                    if !plan.previous.contains(&field) {
                        plan.previous.push(field);
                    }
                }
                (Aggregate::FraudCount, _) => {}
                (Aggregate::Distinct, Some(field)) => {
                    if !plan.distinct.contains(&(field, d.window_s)) {
                        plan.distinct.push((field, d.window_s));
                    }
                }
                _ => {
                    let stats = d.aggregate.needs_amount_stats();
                    match plan.windows.iter_mut().find(|(w, _)| *w == d.window_s) {
                        Some((_, st)) => *st |= stats,
                        None => plan.windows.push((d.window_s, stats)),
                    }
                }
            }
        }
        for e in &mut entities {
            e.windows.sort_unstable();
            e.frauds.sort_unstable();
        }
        let ring_base: Vec<usize> = entities
            .iter()
            .scan(0, |next, e| {
                let base = *next;
                *next += e.windows.len();
                Some(base)
            })
            .collect();
        let rings = entities.iter().map(|e| e.windows.len()).sum();
        let outputs = defs
            .iter()
            .map(|d| {
                let entity = entities.iter().position(|e| e.key == d.entity).unwrap_or(0);
                let plan = &entities[entity];
                // The slot, and the read-cache entry of the window it reads;
                // aggregates that read no window share the spare entry past the last.
                let (slot, ring) = match (d.aggregate, d.of) {
                    (Aggregate::Distinct, Some(f)) => (plan.distinct.iter().position(|x| *x == (f, d.window_s)), None),
                    (Aggregate::Changed, Some(f)) => (plan.changed.iter().position(|x| *x == f), None),
                    (Aggregate::Previous, Some(f)) => (plan.previous.iter().position(|x| *x == f), None),
                    (Aggregate::TimeSinceLast | Aggregate::PreviousAmount | Aggregate::FraudCount, _) => (None, None),
                    _ => {
                        let w = plan.windows.iter().position(|(w, _)| *w == d.window_s);
                        (w, w.map(|w| ring_base[entity] + w))
                    }
                };
                let (slot, ring) = (slot.unwrap_or(0), ring.unwrap_or(rings));
                let frauds = plan.frauds.iter().position(|w| *w == d.window_s).unwrap_or(0);
                Output { entity, slot, ring, frauds, aggregate: d.aggregate, window_s: d.window_s, of: d.of }
            })
            .collect();
        let max_window_s = defs.iter().map(|d| d.window_s).max().unwrap_or(0);
        Plan { defs, entities, outputs, rings, max_window_s }
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
        self.keys_of(events, false)
    }

    /// The entity ids a batch of labels touches: those of label features.
    pub fn label_keys(&self, labels: &[&Label]) -> BatchKeys {
        self.keys_of(labels, true)
    }

    /// Whether any declared feature counts labels.
    pub fn has_label_features(&self) -> bool {
        self.entities.iter().any(|e| !e.frauds.is_empty())
    }

    fn keys_of<T: Fields>(&self, items: &[&T], labels_only: bool) -> BatchKeys {
        let mut keys = BatchKeys::default();
        let mut index: HashMap<String, usize> = HashMap::new();
        for ev in items {
            let mut row = Vec::with_capacity(self.entities.len());
            for e in &self.entities {
                if labels_only && e.frauds.is_empty() {
                    row.push(None);
                    continue;
                }
                let id = match &e.nest {
                    None => e.key.value_of(*ev).map(|v| format!("{}={}", e.key, v)),
                    // Kept in the first field's record, when every field is there.
                    Some(_) if e.key.fields()[1..].iter().all(|f| ev.text(*f).is_some()) => {
                        ev.text(e.record.fields()[0]).map(|v| format!("{}={}", e.record, v))
                    }
                    Some(_) => None,
                };
                row.push(id.map(|id| match index.get(&id) {
                    Some(&i) => i,
                    None => {
                        let i = keys.entities.len();
                        keys.entities.push(id.clone());
                        index.insert(id, i);
                        i
                    }
                }));
            }
            keys.per_event.push(row);
        }
        keys
    }

    /// Conforms entity `e`'s state in `record` to its plan: the record
    /// itself, or for a composite key the member `item` names (made when
    /// new), whose position it gives.
    fn locate<T: Fields>(&self, e: usize, record: &mut EntityState, item: &T) -> Option<(usize, usize)> {
        let plan = &self.entities[e];
        let Some(name) = &plan.nest else {
            record.conform(plan);
            return None;
        };
        // The keys list a composite entity only when all its fields are there.
        let id = member_id(&plan.key, item).unwrap_or_default();
        let (n, m) = record.member(name, &id);
        record.nests[n].members[m].state.conform(plan);
        Some((n, m))
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
        // One spare slot: outputs that read no ring may point one past the last.
        let mut reads: Vec<Option<Window>> = vec![None; self.rings + 1];
        let mut located: Vec<Option<(usize, usize)>> = Vec::with_capacity(self.entities.len());
        let keep_s = self.state_ttl_s();
        for (i, ev) in events.iter().enumerate() {
            if let Some(stored) = &seen[i] {
                out.push(FeatureVector { replayed: true, ..stored.clone() });
                continue;
            }
            if let Some(&j) = first_in_batch.get(ev.transaction_id.as_str()) {
                out.push(FeatureVector { replayed: true, ..out[j].clone() });
                continue;
            }
            first_in_batch.insert(&ev.transaction_id, i);
            let row = &keys.per_event[i];
            located.clear();
            for (e, slot) in row.iter().enumerate() {
                located.push(slot.and_then(|s| self.locate(e, &mut states[s], *ev)));
            }
            let t = ev.unix_s();
            reads.fill(None);
            let values = self
                .outputs
                .iter()
                .map(|o| match row[o.entity] {
                    None => FeatureValue::Missing,
                    Some(s) => value(o, within(&states[s], located[o.entity]), ev, t, &mut reads[o.ring]),
                })
                .collect();
            for (e, slot) in row.iter().enumerate() {
                if let Some(s) = slot {
                    let record = &mut states[*s];
                    if located[e].is_some() {
                        // A member's event is also its record's newest.
                        record.max_t = record.max_t.max(t);
                    }
                    within_mut(record, located[e]).add(&self.entities[e], ev, t);
                    dirty[*s] = true;
                }
            }
            // After the adds (forgetting members moves the positions in
            // `located`), once per record the event touched.
            for (e, slot) in row.iter().enumerate() {
                if let Some(s) = *slot {
                    if !states[s].nests.is_empty() && !row[..e].contains(&Some(s)) {
                        states[s].prune_nests(keep_s);
                    }
                }
            }
            changes.first_seen.push(i);
            out.push(FeatureVector { values, replayed: false, fingerprint: ev.fingerprint() });
        }
        changes.dirty = dirty.iter().enumerate().filter_map(|(i, d)| d.then_some(i)).collect();
        (out, changes)
    }

    /// Counts the fraud labels of a batch in their entities' fraud rings.
    /// `seen[i]` is true when label `i`'s transaction was counted before: it then
    /// changes nothing. `first_seen` in the result lists the labels to mark.
    pub fn apply_labels(
        &self,
        labels: &[&Label],
        keys: &BatchKeys,
        states: &mut [EntityState],
        seen: &[bool],
    ) -> (Vec<LabelOutcome>, Changes) {
        let mut changes = Changes::default();
        let mut dirty = vec![false; states.len()];
        let mut counted: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(labels.len());
        let counts_labels = self.has_label_features();
        for (i, label) in labels.iter().enumerate() {
            if label.verdict == Verdict::Genuine || !counts_labels {
                out.push(LabelOutcome::Recorded);
                continue;
            }
            if seen[i] || !counted.insert(&label.transaction_id) {
                out.push(LabelOutcome::AlreadyCounted);
                continue;
            }
            let t = label.unix_s();
            for (e, slot) in keys.per_event[i].iter().enumerate() {
                if let Some(s) = slot {
                    let at = self.locate(e, &mut states[*s], *label);
                    within_mut(&mut states[*s], at).add_fraud(t);
                    dirty[*s] = true;
                }
            }
            changes.first_seen.push(i);
            out.push(LabelOutcome::Counted);
        }
        changes.dirty = dirty.iter().enumerate().filter_map(|(i, d)| d.then_some(i)).collect();
        (out, changes)
    }
}

/// What applying a label did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelOutcome {
    /// A fraud, now counted by every label feature of its entities.
    Counted,
    /// A fraud whose transaction was counted before (a redelivery): nothing changed.
    AlreadyCounted,
    /// Accepted without changing features: a genuine verdict, or a pipeline
    /// without label features.
    Recorded,
}

/// One feature's value for an event at `t`, from its entity's state before it.
/// `read` keeps this event's read of the feature's ring, for the other features
/// on the same ring.
fn value(o: &Output, state: &EntityState, ev: &Event, t: i64, read: &mut Option<Window>) -> FeatureValue {
    let money = |d: Option<Decimal>| d.map_or(FeatureValue::Missing, FeatureValue::Money);
    match o.aggregate {
        Aggregate::TimeSinceLast | Aggregate::PreviousAmount | Aggregate::Changed | Aggregate::Previous => {
            let Some(i) = state.previous(t) else { return FeatureValue::Missing };
            let previous = &state.recent[i];
            let pt = previous.t;
            if t - pt > o.window_s as i64 {
                return FeatureValue::Missing;
            }
            match o.aggregate {
                Aggregate::TimeSinceLast => FeatureValue::Seconds(t - pt),
                Aggregate::PreviousAmount => FeatureValue::Money(Decimal::deserialize(previous.amount)),
                Aggregate::Previous => match previous.texts.get(o.slot) {
                    Some(Some(text)) => FeatureValue::Text(text.clone()),
                    _ => FeatureValue::Missing,
                },
                _ => {
                    let before = previous.fields.get(o.slot).copied().unwrap_or(0);
                    let now = o.of.map_or(0, |f| field_hash(ev, f));
                    match (before, now) {
                        (0, _) | (_, 0) => FeatureValue::Missing,
                        (b, n) => FeatureValue::Count(i64::from(b != n)),
                    }
                }
            }
        }
        Aggregate::Distinct => FeatureValue::Count(state.distinct[o.slot].count(t)),
        Aggregate::FraudCount => FeatureValue::Count(state.frauds[o.frauds].read(t).count),
        Aggregate::FraudRate => {
            let frauds = state.frauds[o.frauds].read(t).count;
            let w = *read.get_or_insert_with(|| state.rings[o.slot].read(t));
            match w.count {
                0 => FeatureValue::Missing,
                n => Decimal::from(frauds)
                    .checked_div(Decimal::from(n))
                    .map_or(FeatureValue::Missing, FeatureValue::Number),
            }
        }
        _ => {
            let w = *read.get_or_insert_with(|| state.rings[o.slot].read(t));
            let mean = (w.count > 0).then(|| w.sum.checked_div(Decimal::from(w.count))).flatten();
            match o.aggregate {
                Aggregate::Count => FeatureValue::Count(w.count),
                Aggregate::SumAmount => FeatureValue::Money(w.sum),
                Aggregate::MeanAmount => money(mean),
                Aggregate::MinAmount => money(w.stats.filter(|_| w.count > 0).map(|(_, min, _)| min)),
                Aggregate::MaxAmount => money(w.stats.filter(|_| w.count > 0).map(|(_, _, max)| max)),
                Aggregate::StdAmount => money(std_dev(w.count, mean, w.stats.map(|(sq, _, _)| sq))),
                _ => match mean {
                    Some(m) if !m.is_zero() => {
                        ev.amount.checked_div(m).map_or(FeatureValue::Missing, FeatureValue::Number)
                    }
                    _ => FeatureValue::Missing,
                },
            }
        }
    }
}

/// Population standard deviation from a count, mean and sum of squares.
fn std_dev(count: i64, mean: Option<Decimal>, sum_sq: Option<Decimal>) -> Option<Decimal> {
    let (mean, sum_sq) = (mean?, sum_sq?);
    let variance = sum_sq.checked_div(Decimal::from(count))?.checked_sub(mean.checked_mul(mean)?)?;
    // Rounding can leave a tiny negative variance for equal amounts.
    variance.max(Decimal::ZERO).sqrt()
}

/// How a feature value is stored in a de-duplication marker: tagged, so that a
/// count, a number of seconds and an amount read back as what they were.
#[derive(Serialize, Deserialize)]
enum Stored {
    C(i64),
    M(Decimal),
    N(Decimal),
    S(i64),
    X,
    T(String),
}

/// A de-duplication marker: the first features of a transaction and the
/// fingerprint of its event. Markers written before fingerprints were kept are
/// bare lists of values, read back with fingerprint 0 (unknown).
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Marker {
    Fingerprinted { v: Vec<Stored>, h: u64 },
    Bare(Vec<Stored>),
}

/// Encodes stored features for a de-duplication marker.
pub fn encode_marker(fv: &FeatureVector) -> Vec<u8> {
    let stored: Vec<Stored> = fv
        .values
        .iter()
        .map(|v| match v {
            FeatureValue::Count(c) => Stored::C(*c),
            FeatureValue::Money(m) => Stored::M(*m),
            FeatureValue::Number(n) => Stored::N(*n),
            FeatureValue::Seconds(s) => Stored::S(*s),
            FeatureValue::Text(t) => Stored::T(t.clone()),
            FeatureValue::Missing => Stored::X,
        })
        .collect();
    serde_json::to_vec(&Marker::Fingerprinted { v: stored, h: fv.fingerprint }).unwrap_or_default()
}

pub fn decode_marker(bytes: &[u8]) -> Result<FeatureVector, FeatureError> {
    let marker: Marker = serde_json::from_slice(bytes).map_err(|e| FeatureError::Corrupt(format!("marker: {e}")))?;
    let (stored, fingerprint) = match marker {
        Marker::Fingerprinted { v, h } => (v, h),
        Marker::Bare(v) => (v, 0),
    };
    let values = stored
        .into_iter()
        .map(|v| match v {
            Stored::C(c) => FeatureValue::Count(c),
            Stored::M(m) => FeatureValue::Money(m),
            Stored::N(n) => FeatureValue::Number(n),
            Stored::S(s) => FeatureValue::Seconds(s),
            Stored::T(t) => FeatureValue::Text(t),
            Stored::X => FeatureValue::Missing,
        })
        .collect();
    Ok(FeatureVector { values, replayed: true, fingerprint })
}

#[cfg(test)]
mod split_tests {
    use super::*;
    use vigil_core::feature::{Aggregate, EntityKey};

    /// What a cluster unit assumes: the items of one record, under its part
    /// of the plan, have exactly the keys `BatchKeys::of_entity` gives, and
    /// composite keys share their first field's record.
    #[test]
    fn a_part_sees_one_entity_per_unit() {
        let f = |name: &str, entity: &str, aggregate| FeatureDef {
            name: name.into(),
            entity: EntityKey::parse(entity).unwrap(),
            aggregate,
            window_s: 3600,
            of: None,
        };
        let plan = Plan::new(vec![
            f("card", "card_id", Aggregate::Count),
            f("card_terminal", "card_id+terminal_id", Aggregate::Count),
            f("terminal_frauds", "terminal_id", Aggregate::FraudCount),
        ]);
        let event = |id: &str, card: Option<&str>, terminal: &str| {
            let card = card.map_or(String::new(), |c| format!(r#","card_id":"{c}""#));
            let json = format!(
                r#"{{"transaction_id":"{id}","timestamp":"2026-01-01T00:00:00Z","amount":"1","currency":"EUR"{card},"terminal_id":"{terminal}"}}"#
            );
            Event::from_json(json.as_bytes()).unwrap()
        };
        let events = [
            event("a", Some("c1"), "t1"),
            event("b", None, "t1"),
            event("c", Some("c2"), "t2"),
            event("d", Some("c1"), "t2"),
        ];
        let refs: Vec<&Event> = events.iter().collect();
        let label = |id: &str, terminal: &str| {
            let json = format!(
                r#"{{"transaction_id":"{id}","label":"fraud","reported_at":"2026-01-02T00:00:00Z","terminal_id":"{terminal}"}}"#
            );
            Label::from_json(json.as_bytes()).unwrap()
        };
        let labels = [label("a", "t1"), label("c", "t2"), label("b", "t1")];
        let label_refs: Vec<&Label> = labels.iter().collect();
        let mut units = 0;
        for (part, _) in plan.by_entity() {
            let keys = part.keys(&refs);
            for (k, members) in keys.items_by_entity().into_iter().enumerate() {
                let mine: Vec<&Event> = members.iter().map(|&i| refs[i]).collect();
                assert_eq!(part.keys(&mine), keys.of_entity(k, &members), "{}", keys.entities[k]);
                units += 1;
            }
            let keys = part.label_keys(&label_refs);
            for (k, members) in keys.items_by_entity().into_iter().enumerate() {
                let mine: Vec<&Label> = members.iter().map(|&i| label_refs[i]).collect();
                assert_eq!(part.label_keys(&mine), keys.of_entity(k, &members), "{}", keys.entities[k]);
                units += 1;
            }
        }
        // Cards c1, c2 (each with its card+terminal pairs); terminals t1, t2 for
        // events, and again for labels.
        assert_eq!(units, 2 + 2 + 2);
    }
}

#[cfg(test)]
mod sketch_tests {
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

#[cfg(test)]
mod nest_tests {
    use super::*;
    use vigil_core::feature::{Aggregate, EntityKey};

    fn def(name: &str, entity: &str, aggregate: Aggregate) -> FeatureDef {
        FeatureDef { name: name.into(), entity: EntityKey::parse(entity).unwrap(), aggregate, window_s: 3600, of: None }
    }

    fn event(id: &str, secs: i64, card: &str, device: &str) -> Event {
        let t = chrono::DateTime::from_timestamp(1_767_225_600 + secs, 0).unwrap().to_rfc3339();
        let json = format!(
            r#"{{"transaction_id":"{id}","timestamp":"{t}","amount":"5","currency":"EUR","card_id":"{card}","device_id":"{device}","country":"FR"}}"#
        );
        Event::from_json(json.as_bytes()).unwrap()
    }

    /// Runs events one at a time over `records`, as a store would.
    fn run(plan: &Plan, records: &mut HashMap<String, EntityState>, events: &[Event]) -> Vec<Vec<FeatureValue>> {
        let mut out = Vec::new();
        for ev in events {
            let keys = plan.keys(&[ev]);
            let mut states: Vec<EntityState> =
                keys.entities.iter().map(|k| records.get(k).cloned().unwrap_or_default()).collect();
            let (fv, changes) = plan.compute(&[ev], &keys, &mut states, &[None]);
            for i in changes.dirty {
                records.insert(keys.entities[i].clone(), states[i].clone());
            }
            out.push(fv[0].values.clone());
        }
        out
    }

    fn plan() -> Plan {
        Plan::new(vec![
            def("card", "card_id", Aggregate::Count),
            def("card_device", "card_id+device_id", Aggregate::Count),
            def("card_country", "card_id+country", Aggregate::Count),
        ])
    }

    #[test]
    fn composite_keys_live_in_their_first_fields_record() {
        let plan = plan();
        let events = [event("a", 0, "c1", "d1"), event("b", 10, "c1", "d2"), event("c", 20, "c1", "d1")];
        let refs: Vec<&Event> = events.iter().collect();
        assert_eq!(plan.keys(&refs).entities, ["card_id=c1"], "one record for the card and its pairs");
        let mut records = HashMap::new();
        let c = FeatureValue::Count;
        assert_eq!(
            run(&plan, &mut records, &events),
            [vec![c(0), c(0), c(0)], vec![c(1), c(0), c(1)], vec![c(2), c(1), c(2)]]
        );
        let card = &records["card_id=c1"];
        assert_eq!(card.nests.len(), 2);
        assert_eq!(card.nests[0].members.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["d1", "d2"]);
        // Alone, a composite key still keeps its first field's record, and an
        // event without its second field touches nothing.
        let alone = Plan::new(vec![def("card_device", "card_id+device_id", Aggregate::Count)]);
        let mut no_device = event("d", 30, "c1", "d1");
        no_device.device_id = None;
        assert_eq!(alone.keys(&[&events[0]]).entities, ["card_id=c1"]);
        assert!(alone.keys(&[&no_device]).entities.is_empty());
        assert_eq!(alone.by_entity().len(), 1);
        assert_eq!(plan.by_entity().len(), 1, "one part per record");
    }

    #[test]
    fn a_fraud_reported_late_keeps_its_member() {
        let frauds =
            FeatureDef { window_s: 7 * 86_400, ..def("pair_frauds", "card_id+terminal_id", Aggregate::FraudCount) };
        let plan = Plan::new(vec![def("card", "card_id", Aggregate::Count), frauds]);
        let at = |id: &str, secs: i64, terminal: &str| {
            let mut e = event(id, secs, "c1", "d1");
            e.terminal_id = Some(terminal.into());
            e
        };
        let mut records = HashMap::new();
        run(&plan, &mut records, &[at("a", 0, "t1")]);
        // Reported long after the pair's last event, past the state's lifetime.
        let late = plan.state_ttl_s() as i64 + 1_000;
        let t = chrono::DateTime::from_timestamp(1_767_225_600 + late, 0).unwrap().to_rfc3339();
        let json = format!(
            r#"{{"transaction_id":"a","label":"fraud","reported_at":"{t}","card_id":"c1","terminal_id":"t1"}}"#
        );
        let label = Label::from_json(json.as_bytes()).unwrap();
        let keys = plan.label_keys(&[&label]);
        let mut states: Vec<EntityState> =
            keys.entities.iter().map(|k| records.get(k).cloned().unwrap_or_default()).collect();
        let (outcome, changes) = plan.apply_labels(&[&label], &keys, &mut states, &[false]);
        assert_eq!(outcome, [LabelOutcome::Counted]);
        for i in changes.dirty {
            records.insert(keys.entities[i].clone(), states[i].clone());
        }
        // Another terminal's event prunes the record; the reported pair stays.
        let out = run(&plan, &mut records, &[at("b", late + 10, "t2"), at("c", late + 20, "t1")]);
        assert_eq!(out[1][1], FeatureValue::Count(1), "the fraud still counts for the pair");
    }

    #[test]
    fn members_expire_and_stay_bounded() {
        let plan = plan();
        let mut records = HashMap::new();
        let c = FeatureValue::Count;
        // NEST_LIMIT + 1 devices: the first one seen is forgotten.
        let events: Vec<Event> =
            (0..=NEST_LIMIT).map(|i| event(&format!("e{i}"), i as i64, "c1", &format!("d{i}"))).collect();
        run(&plan, &mut records, &events);
        assert_eq!(records["card_id=c1"].nests[0].members.len(), NEST_LIMIT);
        let again = [event("x", 100, "c1", "d0"), event("y", 101, "c1", &format!("d{NEST_LIMIT}"))];
        let out = run(&plan, &mut records, &again);
        assert_eq!(out[0][1], c(0), "the least recently seen device was forgotten");
        assert_eq!(out[1][1], c(1), "a recent device still counts");
        // A member unseen for the state's lifetime goes, as its own key would expire.
        let later = plan.state_ttl_s() as i64 + 200;
        run(&plan, &mut records, &[event("z", later, "c1", "fresh")]);
        let card = &records["card_id=c1"];
        assert_eq!(card.nests[0].members.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["fresh"]);
        assert_eq!(card.nests[1].members.len(), 1, "the country pair was seen at this event");
    }
}
