//! The in-memory backend: the embedded default, also used offline.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use vigil_core::{Event, FeatureVector, Label};

use crate::state::EntityState;
use crate::{FeatureError, FeatureStore};
use crate::{LabelOutcome, Plan};

/// Seconds since the epoch; injectable so tests can move time.
pub type Clock = Box<dyn Fn() -> i64 + Send + Sync>;

struct Entry<T> {
    value: T,
    expires_at_s: i64,
}

#[derive(Default)]
struct Inner {
    states: HashMap<String, Entry<EntityState>>,
    markers: HashMap<String, Entry<FeatureVector>>,
    /// Transaction ids whose fraud label was counted.
    label_markers: HashMap<String, Entry<()>>,
    writes_since_sweep: usize,
}

/// Features kept in this process, lost on exit. Expiry follows the same rules as
/// Redis: states live for the longest window plus lateness after their last
/// write, markers for the de-duplication TTL.
pub struct MemoryStore {
    plan: Plan,
    dedup_ttl_s: i64,
    clock: Clock,
    inner: Mutex<Inner>,
}

fn wall_clock_s() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl MemoryStore {
    pub fn new(plan: Plan, dedup_ttl_s: u64) -> MemoryStore {
        Self::with_clock(plan, dedup_ttl_s, Box::new(wall_clock_s))
    }

    pub fn with_clock(plan: Plan, dedup_ttl_s: u64, clock: Clock) -> MemoryStore {
        MemoryStore { plan, dedup_ttl_s: dedup_ttl_s as i64, clock, inner: Mutex::new(Inner::default()) }
    }

    /// Processes a batch synchronously (the store never waits on IO).
    pub fn process_sync(&self, events: &[&Event]) -> Result<Vec<FeatureVector>, FeatureError> {
        let now = (self.clock)();
        let mut inner = self.inner.lock().map_err(|_| FeatureError::Corrupt("memory store lock poisoned".into()))?;
        let mut keys = self.plan.keys(events);
        let (mut states, expiries) = take_states(&mut inner, &keys.records, now);
        let seen: Vec<Option<FeatureVector>> = events
            .iter()
            .map(|e| match inner.markers.get(&e.transaction_id) {
                Some(m) if m.expires_at_s > now => Some(m.value.clone()),
                _ => None,
            })
            .collect();
        let (out, changes) = self.plan.compute(events, &keys, &mut states, &seen);
        put_states(
            &mut inner,
            &mut keys.records,
            (states, expiries),
            &changes.dirty,
            now + self.plan.state_ttl_s() as i64,
        );
        let n = changes.first_seen.len();
        for i in changes.first_seen {
            let entry = Entry { value: out[i].clone(), expires_at_s: now + self.dedup_ttl_s };
            inner.markers.insert(events[i].transaction_id.clone(), entry);
        }
        inner.writes_since_sweep += n;
        if inner.writes_since_sweep > 100_000 {
            inner.writes_since_sweep = 0;
            inner.states.retain(|_, e| e.expires_at_s > now);
            inner.markers.retain(|_, e| e.expires_at_s > now);
            inner.label_markers.retain(|_, e| e.expires_at_s > now);
        }
        Ok(out)
    }

    /// Applies a batch of labels synchronously.
    pub fn apply_labels_sync(&self, labels: &[&Label]) -> Result<Vec<LabelOutcome>, FeatureError> {
        let now = (self.clock)();
        let mut inner = self.inner.lock().map_err(|_| FeatureError::Corrupt("memory store lock poisoned".into()))?;
        let mut keys = self.plan.label_keys(labels);
        let (mut states, expiries) = take_states(&mut inner, &keys.records, now);
        let seen: Vec<bool> = labels
            .iter()
            .map(|l| inner.label_markers.get(&l.transaction_id).is_some_and(|m| m.expires_at_s > now))
            .collect();
        let (out, changes) = self.plan.apply_labels(labels, &keys, &mut states, &seen);
        let state_expiry = now + self.plan.state_ttl_s() as i64;
        put_states(&mut inner, &mut keys.records, (states, expiries), &changes.dirty, state_expiry);
        for i in changes.first_seen {
            let entry = Entry { value: (), expires_at_s: state_expiry };
            inner.label_markers.insert(labels[i].transaction_id.clone(), entry);
        }
        Ok(out)
    }
}

/// Moves a batch's states out of the store (no copies); expired ones read as new.
/// The lock is held until [`put_states`] moves them back.
fn take_states(inner: &mut Inner, entities: &[String], now: i64) -> (Vec<EntityState>, Vec<i64>) {
    entities
        .iter()
        .map(|k| match inner.states.remove(k) {
            Some(e) if e.expires_at_s > now => (e.value, e.expires_at_s),
            _ => (EntityState::default(), i64::MIN),
        })
        .unzip()
}

/// Moves a batch's states back: changed ones with a fresh expiry, the others
/// as they were (never-stored ones that did not change are dropped).
fn put_states(
    inner: &mut Inner,
    entities: &mut [String],
    (states, expiries): (Vec<EntityState>, Vec<i64>),
    dirty: &[usize],
    expiry: i64,
) {
    let mut dirty = dirty.iter().peekable();
    for (i, ((key, value), mut expires_at_s)) in entities.iter_mut().zip(states).zip(expiries).enumerate() {
        if dirty.next_if_eq(&&i).is_some() {
            expires_at_s = expiry;
        } else if expires_at_s == i64::MIN {
            continue;
        }
        inner.states.insert(std::mem::take(key), Entry { value, expires_at_s });
    }
}

#[async_trait]
impl FeatureStore for MemoryStore {
    async fn process(&self, events: &[&Event]) -> Result<Vec<FeatureVector>, FeatureError> {
        self.process_sync(events)
    }

    async fn apply_labels(&self, labels: &[&Label]) -> Result<Vec<LabelOutcome>, FeatureError> {
        self.apply_labels_sync(labels)
    }
}
