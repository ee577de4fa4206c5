//! Vigil's feature store: the stage between validated events and the rules.
//!
//! For each event the store returns the declared features as of before the event
//! (counts and sums of earlier events per entity over sliding windows) and then
//! counts the event, exactly once per `transaction_id`: a redelivered event gets
//! back the features computed the first time and changes nothing.
//!
//! Two backends keep one contract: [`MemoryStore`] (the embedded default) and
//! [`RedisStore`] (a server or a cluster); [`connect`] builds the one a
//! pipeline's `[store]` names. Both run the same computation ([`Plan::compute`])
//! on the same encoded state, so they agree by construction; the conformance
//! tests check it. The crate's rooms:
//! - [`plan`]: feature definitions compiled into a [`Plan`], and the records a
//!   batch touches;
//! - [`compute`](Plan::compute) and the aggregate semantics, over the stored
//!   records of [`state`] (window rings, distinct sets and their sketch,
//!   composite keys nested in their first field's record);
//! - the de-duplication marker codec, the backends, and [`labels`], the one
//!   path by which confirmed outcomes reach the label features.

mod aggregate;
mod compute;
pub mod labels;
mod marker;
mod memory;
pub mod owned;
pub mod plan;
mod redis_store;
pub mod state;

use std::sync::Arc;

use async_trait::async_trait;
use vigil_core::pipeline::{StoreBackend, StoreConfig, StoreMode};
use vigil_core::{Event, FeatureVector, Label};

pub use compute::{Changes, LabelOutcome};
pub use memory::MemoryStore;
pub use owned::OwnedStore;
pub use plan::{BatchKeys, Plan};
pub use redis_store::layout;
pub use redis_store::{KeyLayout, RedisStore, CHUNK};

/// Why the feature store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FeatureError {
    /// The backend is unreachable or refused the call; retrying later may work.
    #[error("feature store unavailable: {0}")]
    Unavailable(String),
    /// The backend did not answer within the configured timeout.
    #[error("feature store timed out after {0} ms")]
    Timeout(u64),
    /// Other writers kept changing the same entities; retrying may work.
    #[error("feature store contention: gave up after {0} attempts")]
    Contention(usize),
    /// Another process took ownership of the feature state (`mode = "owned"`):
    /// this one may no longer write it.
    #[error("feature state fenced: {0}")]
    Fenced(String),
    /// Stored data could not be decoded: a bug or a foreign writer.
    #[error("corrupt feature state: {0}")]
    Corrupt(String),
}

impl FeatureError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, FeatureError::Corrupt(_) | FeatureError::Fenced(_))
    }
}

/// Reads and updates velocity features, idempotent by transaction id.
#[async_trait]
pub trait FeatureStore: Send + Sync {
    /// For each event, in order: its features as of before it, then counts it.
    /// Events of one batch see the ones before them in the batch.
    async fn process(&self, events: &[&Event]) -> Result<Vec<FeatureVector>, FeatureError>;

    /// Counts confirmed frauds for the label features, once per transaction id:
    /// a redelivered label changes nothing. Labels must carry the entity fields
    /// that label features count by (`Label::missing_for`); an entity a label
    /// lacks is not counted.
    async fn apply_labels(&self, labels: &[&Label]) -> Result<Vec<LabelOutcome>, FeatureError>;

    /// Whether the backend is reachable.
    async fn ping(&self) -> Result<(), FeatureError> {
        Ok(())
    }
}

/// Connects the feature store a pipeline's `[store]` names, computing `plan`;
/// an unreachable Redis fails clearly within seconds rather than hanging. In
/// `mode = "owned"` this takes ownership of the state (fencing any earlier
/// owner) and loads it: only the one process that owns a pipeline's state
/// (`vigil run`) may call it so.
pub async fn connect(config: &StoreConfig, plan: Plan) -> Result<Arc<dyn FeatureStore>, FeatureError> {
    let s = config;
    if let StoreMode::Owned { snapshot_events, snapshot_interval_s } = s.mode {
        let journal: Arc<dyn owned::Journal> = match &s.backend {
            StoreBackend::Memory => return Ok(Arc::new(MemoryStore::new(plan, s.dedup_ttl_s))),
            StoreBackend::Redis { url } => {
                Arc::new(owned::RedisJournal::connect(url, &s.key_prefix, s.timeout_ms).await?)
            }
            StoreBackend::RedisCluster { nodes } => {
                Arc::new(owned::RedisJournal::connect_cluster(nodes, &s.key_prefix, s.timeout_ms).await?)
            }
        };
        let policy = owned::SnapshotPolicy {
            events: snapshot_events as usize,
            interval: std::time::Duration::from_secs(snapshot_interval_s),
        };
        return Ok(Arc::new(OwnedStore::open(plan, s.dedup_ttl_s, journal, policy).await?));
    }
    Ok(match &s.backend {
        StoreBackend::Memory => Arc::new(MemoryStore::new(plan, s.dedup_ttl_s)),
        StoreBackend::Redis { url } => {
            Arc::new(RedisStore::connect(url, plan, &s.key_prefix, s.dedup_ttl_s, s.timeout_ms).await?)
        }
        StoreBackend::RedisCluster { nodes } => {
            Arc::new(RedisStore::connect_cluster(nodes, plan, &s.key_prefix, s.dedup_ttl_s, s.timeout_ms).await?)
        }
    })
}

/// Why a helper process may not open a pipeline's feature store: in
/// `mode = "owned"` the one process that decides (`vigil run` or `vigil
/// serve`) owns it, and opening it would fence that owner. `what` names the
/// caller (`vigil label`...).
pub fn refuse_owned(config: &StoreConfig, what: &str) -> Result<(), FeatureError> {
    match config.mode {
        StoreMode::Shared => Ok(()),
        StoreMode::Owned { .. } => Err(FeatureError::Fenced(format!(
            "{what} cannot open this pipeline's feature store: [store] mode = \"owned\" gives it to the one process that \
             decides (`vigil run` or `vigil serve`); send labels through the labels topic, or to the HTTP API's POST /v1/labels"
        ))),
    }
}

/// One step of replaying a history with its labels in time order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Decide these events (a range of the history), in order.
    Events(std::ops::Range<usize>),
    /// Apply these labels (a range of the labels, in report-time order).
    Labels(std::ops::Range<usize>),
}

/// Interleaves a history (in its order) with labels sorted by report time, as
/// the live stream would meet them: every label reported at or before an
/// event's time is applied before that event. Event runs are at most `batch` long.
pub fn interleave(events: &[&Event], labels: &[&Label], batch: usize) -> Vec<Step> {
    let mut steps = Vec::new();
    let (mut start, mut next_label) = (0, 0);
    for (i, e) in events.iter().enumerate() {
        let t = e.timestamp;
        let due = labels[next_label..].partition_point(|l| l.reported_at <= t);
        if due > 0 || i - start == batch.max(1) {
            if i > start {
                steps.push(Step::Events(start..i));
                start = i;
            }
            if due > 0 {
                steps.push(Step::Labels(next_label..next_label + due));
                next_label += due;
            }
        }
    }
    if start < events.len() {
        steps.push(Step::Events(start..events.len()));
    }
    steps
}

#[cfg(test)]
mod conformance;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_before_the_first_event_at_or_after_their_report() {
        let at = |s: i64| {
            let t = chrono::DateTime::from_timestamp(1_767_225_600 + s, 0).unwrap().to_rfc3339();
            format!(r#""timestamp":"{t}""#)
        };
        let events: Vec<Event> = [0, 10, 20, 30, 40]
            .iter()
            .map(|s| {
                let json = format!(r#"{{"transaction_id":"e{s}",{},"amount":"1","currency":"EUR"}}"#, at(*s));
                Event::from_json(json.as_bytes()).unwrap()
            })
            .collect();
        let labels: Vec<Label> = [10, 10, 35, 99]
            .iter()
            .map(|s| {
                let t = chrono::DateTime::from_timestamp(1_767_225_600 + s, 0).unwrap().to_rfc3339();
                let json = format!(r#"{{"transaction_id":"l{s}","label":"fraud","reported_at":"{t}"}}"#);
                Label::from_json(json.as_bytes()).unwrap()
            })
            .collect();
        let (e, l): (Vec<&Event>, Vec<&Label>) = (events.iter().collect(), labels.iter().collect());
        use Step::*;
        assert_eq!(interleave(&e, &l, 100), [Events(0..1), Labels(0..2), Events(1..4), Labels(2..3), Events(4..5)]);
        assert_eq!(interleave(&e, &[], 2), [Events(0..2), Events(2..4), Events(4..5)]);
    }
}
