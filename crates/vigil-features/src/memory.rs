//! The in-memory backend: the embedded default, also used offline. Its
//! states and markers ([`Local`]) are also what the owned store keeps.

use std::collections::{HashSet, VecDeque};

use foldhash::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use vigil_core::{Event, FeatureVector, Label};

use crate::state::EntityState;
use crate::{FeatureError, FeatureStore};
use crate::{LabelOutcome, Plan};

/// Seconds since the epoch; injectable so tests can move time.
pub type Clock = Box<dyn Fn() -> i64 + Send + Sync>;

pub(crate) struct Entry<T> {
    pub(crate) value: T,
    pub(crate) expires_at_s: i64,
}

/// Entity states and markers kept in this process, with the expiry rules of
/// Redis: states live for the longest window plus lateness after their last
/// write, markers for the de-duplication TTL (and, when `marker_limit` is
/// set, only the newest that many).
#[derive(Default)]
pub(crate) struct Local {
    /// Shared so that a snapshot can hold the states of a moment while calls
    /// go on: a call that changes one a snapshot holds works on a copy.
    pub(crate) states: HashMap<String, Entry<Arc<EntityState>>>,
    pub(crate) markers: HashMap<String, Entry<FeatureVector>>,
    /// Transaction ids of `markers`, oldest first (kept only with a limit).
    pub(crate) marker_order: VecDeque<String>,
    pub(crate) marker_limit: Option<usize>,
    /// Transaction ids whose fraud label was counted.
    pub(crate) label_markers: HashMap<String, Entry<()>>,
    /// Records changed or removed since the owner last took them (`None`:
    /// not tracked).
    pub(crate) touched: Option<HashSet<String>>,
    pub(crate) writes_since_sweep: usize,
}

impl Local {
    /// Features of `events` as of before each, then counted (module docs of
    /// the crate); returns them with the indices of the events seen for the
    /// first time. `kept` holds, by event, markers found outside this memory
    /// (the owned store's journal), read where memory has none; it may be
    /// empty.
    pub(crate) fn process(
        &mut self,
        plan: &Plan,
        events: &[&Event],
        now: i64,
        dedup_ttl_s: i64,
        mut kept: Vec<Option<FeatureVector>>,
    ) -> (Vec<FeatureVector>, Vec<usize>) {
        let mut keys = plan.keys(events);
        let (mut states, expiries) = self.take_states(&keys.records, now);
        let seen: Vec<Option<FeatureVector>> = events
            .iter()
            .enumerate()
            .map(|(i, e)| match self.markers.get(&e.transaction_id) {
                Some(m) if m.expires_at_s > now => Some(m.value.clone()),
                _ => kept.get_mut(i).and_then(Option::take),
            })
            .collect();
        let (out, changes) = plan.compute(events, &keys, &mut states, &seen);
        self.put_states(&mut keys.records, (states, expiries), &changes.dirty, now + plan.state_ttl_s() as i64);
        for &i in &changes.first_seen {
            let entry = Entry { value: out[i].clone(), expires_at_s: now + dedup_ttl_s };
            let id = events[i].transaction_id.clone();
            if let Some(limit) = self.marker_limit {
                self.marker_order.push_back(id.clone());
                while self.marker_order.len() > limit {
                    if let Some(old) = self.marker_order.pop_front() {
                        self.markers.remove(&old);
                    }
                }
            }
            self.markers.insert(id, entry);
        }
        self.writes_since_sweep += changes.first_seen.len();
        if self.writes_since_sweep > 100_000 {
            self.writes_since_sweep = 0;
            self.sweep(now);
        }
        (out, changes.first_seen)
    }

    /// Counts a batch of labels; returns the outcomes with the indices of the
    /// labels counted for the first time.
    pub(crate) fn apply_labels(&mut self, plan: &Plan, labels: &[&Label], now: i64) -> (Vec<LabelOutcome>, Vec<usize>) {
        let mut keys = plan.label_keys(labels);
        let (mut states, expiries) = self.take_states(&keys.records, now);
        let seen: Vec<bool> = labels
            .iter()
            .map(|l| self.label_markers.get(&l.transaction_id).is_some_and(|m| m.expires_at_s > now))
            .collect();
        let (out, changes) = plan.apply_labels(labels, &keys, &mut states, &seen);
        let state_expiry = now + plan.state_ttl_s() as i64;
        self.put_states(&mut keys.records, (states, expiries), &changes.dirty, state_expiry);
        for &i in &changes.first_seen {
            let entry = Entry { value: (), expires_at_s: state_expiry };
            self.label_markers.insert(labels[i].transaction_id.clone(), entry);
        }
        (out, changes.first_seen)
    }

    /// Forgets what has expired by `now` (expired entries already read as
    /// absent; this frees their memory).
    pub(crate) fn sweep(&mut self, now: i64) {
        let touched = &mut self.touched;
        self.states.retain(|k, e| {
            let keep = e.expires_at_s > now;
            if !keep {
                if let Some(t) = touched.as_mut() {
                    t.insert(k.clone());
                }
            }
            keep
        });
        self.markers.retain(|_, e| e.expires_at_s > now);
        if self.marker_limit.is_some() {
            let markers = &self.markers;
            self.marker_order.retain(|id| markers.contains_key(id));
        }
        self.label_markers.retain(|_, e| e.expires_at_s > now);
    }

    /// Moves a batch's states out of their entries, which stay in place
    /// (no copies, unless a snapshot holds one); expired ones read as new.
    fn take_states(&mut self, entities: &[String], now: i64) -> (Vec<EntityState>, Vec<i64>) {
        entities
            .iter()
            .map(|k| match self.states.get_mut(k) {
                Some(e) if e.expires_at_s > now => {
                    let state = match Arc::get_mut(&mut e.value) {
                        Some(state) => std::mem::take(state),
                        None => EntityState::clone(&e.value),
                    };
                    (state, e.expires_at_s)
                }
                _ => (EntityState::default(), i64::MIN),
            })
            .unzip()
    }

    /// Moves a batch's states back: changed ones with a fresh expiry, the
    /// others as they were (never-stored or expired ones that did not change
    /// are dropped).
    fn put_states(
        &mut self,
        entities: &mut [String],
        (states, expiries): (Vec<EntityState>, Vec<i64>),
        dirty: &[usize],
        expiry: i64,
    ) {
        let mut dirty = dirty.iter().peekable();
        for (i, ((key, value), mut expires_at_s)) in entities.iter_mut().zip(states).zip(expiries).enumerate() {
            if dirty.next_if_eq(&&i).is_some() {
                expires_at_s = expiry;
                if let Some(t) = self.touched.as_mut().filter(|t| !t.contains(key.as_str())) {
                    t.insert(key.clone());
                }
            } else if expires_at_s == i64::MIN {
                self.states.remove(key.as_str());
                continue;
            }
            match self.states.get_mut(key.as_str()) {
                Some(e) => {
                    e.expires_at_s = expires_at_s;
                    match Arc::get_mut(&mut e.value) {
                        // The entry `take_states` emptied.
                        Some(state) => *state = value,
                        // A snapshot holds the state as it was: this is the copy.
                        None => e.value = Arc::new(value),
                    }
                }
                None => {
                    self.states.insert(std::mem::take(key), Entry { value: Arc::new(value), expires_at_s });
                }
            }
        }
    }
}

/// Features kept in this process, lost on exit ([`Local`]'s expiry rules).
pub struct MemoryStore {
    plan: Plan,
    dedup_ttl_s: i64,
    clock: Clock,
    inner: Mutex<Local>,
}

pub(crate) fn wall_clock_s() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl MemoryStore {
    pub fn new(plan: Plan, dedup_ttl_s: u64) -> MemoryStore {
        Self::with_clock(plan, dedup_ttl_s, Box::new(wall_clock_s))
    }

    pub fn with_clock(plan: Plan, dedup_ttl_s: u64, clock: Clock) -> MemoryStore {
        MemoryStore { plan, dedup_ttl_s: dedup_ttl_s as i64, clock, inner: Mutex::new(Local::default()) }
    }

    fn local(&self) -> Result<std::sync::MutexGuard<'_, Local>, FeatureError> {
        self.inner.lock().map_err(|_| FeatureError::Corrupt("memory store lock poisoned".into()))
    }

    /// Processes a batch synchronously (the store never waits on IO).
    pub fn process_sync(&self, events: &[&Event]) -> Result<Vec<FeatureVector>, FeatureError> {
        let now = (self.clock)();
        Ok(self.local()?.process(&self.plan, events, now, self.dedup_ttl_s, Vec::new()).0)
    }

    /// Applies a batch of labels synchronously.
    pub fn apply_labels_sync(&self, labels: &[&Label]) -> Result<Vec<LabelOutcome>, FeatureError> {
        let now = (self.clock)();
        Ok(self.local()?.apply_labels(&self.plan, labels, now).0)
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
