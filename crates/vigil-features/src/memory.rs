//! The in-memory backend: the embedded default, also used offline.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use vigil_core::{Event, FeatureVector};

use crate::state::{EntityState, Plan};
use crate::{FeatureError, FeatureStore};

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
        let keys = self.plan.keys(events);
        let mut states: Vec<EntityState> = keys
            .entities
            .iter()
            .map(|k| match inner.states.get(k) {
                Some(e) if e.expires_at_s > now => e.value.clone(),
                _ => EntityState::default(),
            })
            .collect();
        let seen: Vec<Option<FeatureVector>> = events
            .iter()
            .map(|e| match inner.markers.get(&e.transaction_id) {
                Some(m) if m.expires_at_s > now => Some(m.value.clone()),
                _ => None,
            })
            .collect();
        let (out, changes) = self.plan.compute(events, &keys, &mut states, &seen);
        let state_expiry = now + self.plan.state_ttl_s() as i64;
        for i in changes.dirty {
            let value = std::mem::take(&mut states[i]);
            inner.states.insert(keys.entities[i].clone(), Entry { value, expires_at_s: state_expiry });
        }
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
        }
        Ok(out)
    }
}

#[async_trait]
impl FeatureStore for MemoryStore {
    async fn process(&self, events: &[&Event]) -> Result<Vec<FeatureVector>, FeatureError> {
        self.process_sync(events)
    }
}
