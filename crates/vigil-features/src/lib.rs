//! Vigil's feature store: the stage between validated events and the rules.
//!
//! For each event the store returns the declared features as of before the event
//! (counts and sums of earlier events per entity over sliding windows) and then
//! counts the event, exactly once per `transaction_id`: a redelivered event gets
//! back the features computed the first time and changes nothing.
//!
//! Two backends keep one contract: [`MemoryStore`] (the embedded default) and
//! [`RedisStore`]. Both run the same computation ([`Plan::compute`]) on the same
//! encoded state, so they agree by construction; the conformance tests check it.

mod memory;
mod redis_store;
pub mod state;

use async_trait::async_trait;
use vigil_core::{Event, FeatureVector};

pub use memory::MemoryStore;
pub use redis_store::RedisStore;
pub use state::Plan;

/// Why the feature store could not answer.
#[derive(Debug, thiserror::Error)]
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
    /// Stored data could not be decoded: a bug or a foreign writer.
    #[error("corrupt feature state: {0}")]
    Corrupt(String),
}

impl FeatureError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, FeatureError::Corrupt(_))
    }
}

/// Reads and updates velocity features, idempotent by transaction id.
#[async_trait]
pub trait FeatureStore: Send + Sync {
    /// For each event, in order: its features as of before it, then counts it.
    /// Events of one batch see the ones before them in the batch.
    async fn process(&self, events: &[&Event]) -> Result<Vec<FeatureVector>, FeatureError>;

    /// Whether the backend is reachable.
    async fn ping(&self) -> Result<(), FeatureError> {
        Ok(())
    }
}

#[cfg(test)]
mod conformance;
